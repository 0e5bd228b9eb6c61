// Index arithmetic shared by the window kernels (conv, pool), prepended to their files: WGSL has
// no includes, and this is the one home of these rules.

// a / b, exact, without an integer division: CPU drivers divide integers one lane at a time but
// vectorise f32 division, which is within a few ulps, so its truncation is off by at most one
// for a < 2^22, and the two integer tests correct it. Hosts keep indices below 2^22.
fn quot(a: u32, b: u32) -> u32 {
    var q = u32((f32(a) + 0.5) / f32(b));
    q = q - select(0u, 1u, q * b > a);
    return q + select(0u, 1u, (q + 1u) * b <= a);
}

// quot for four numerators at once.
fn quot4(a: vec4<u32>, b: u32) -> vec4<u32> {
    var q = vec4<u32>((vec4<f32>(a) + 0.5) / f32(b));
    q = q - select(vec4<u32>(0u), vec4<u32>(1u), q * b > a);
    return q + select(vec4<u32>(0u), vec4<u32>(1u), (q + 1u) * b <= a);
}

// The outputs o in [0, out) whose window [o·stride, o·stride + k) holds the padded index ip
// (o·stride + t = ip for a tap t in [0, k)): from ceil((ip + 1 − k) / stride), or 0, to
// floor(ip / stride), as [first, end), empty when first ≥ end.
fn covering(ip: u32, k: u32, stride: u32, out: u32) -> vec2<u32> {
    return vec2<u32>(quot(max(ip + stride, k) - k, stride), min(quot(ip, stride) + 1u, out));
}
