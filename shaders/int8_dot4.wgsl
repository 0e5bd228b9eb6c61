// The int8 family's two hot kernels with the packed dot product built in: dot4I8Packed, WGSL's
// packed_4x8_integer_dot_product language extension (one instruction where the hardware has it,
// naga's or Tint's polyfill where it does not). This file is compiled after int8.wgsl (see
// gpu::shaders), whose bindings, blocks, epilogue and stores it shares: only the accumulation
// loops differ from int8.wgsl's linear and conv2d, which a test compares bit for bit. An
// implementation without the extension uses those.

@compute @workgroup_size(64)
fn linear_dot4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= linear_blocks()) {
        return;
    }
    let b = linear_block(i);
    var acc0 = vec4<i32>();
    var acc1 = vec4<i32>();
    var acc2 = vec4<i32>();
    var acc3 = vec4<i32>();
    for (var k = 0u; k < params.in_words; k++) {
        let w = vec4<u32>(li_w[b.w.x + k], li_w[b.w.y + k], li_w[b.w.z + k], li_w[b.w.w + k]);
        let a0 = li_x[b.x.x + k] ^ FLIP;
        let a1 = li_x[b.x.y + k] ^ FLIP;
        let a2 = li_x[b.x.z + k] ^ FLIP;
        let a3 = li_x[b.x.w + k] ^ FLIP;
        acc0 += vec4<i32>(dot4I8Packed(a0, w.x), dot4I8Packed(a0, w.y), dot4I8Packed(a0, w.z), dot4I8Packed(a0, w.w));
        acc1 += vec4<i32>(dot4I8Packed(a1, w.x), dot4I8Packed(a1, w.y), dot4I8Packed(a1, w.z), dot4I8Packed(a1, w.w));
        acc2 += vec4<i32>(dot4I8Packed(a2, w.x), dot4I8Packed(a2, w.y), dot4I8Packed(a2, w.z), dot4I8Packed(a2, w.w));
        acc3 += vec4<i32>(dot4I8Packed(a3, w.x), dot4I8Packed(a3, w.y), dot4I8Packed(a3, w.z), dot4I8Packed(a3, w.w));
    }
    linear_store(b, array<vec4<i32>, 4>(acc0, acc1, acc2, acc3));
}

@compute @workgroup_size(64)
fn conv2d_dot4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= conv_blocks()) {
        return;
    }
    let b = conv_block(i);
    let k = params.kernel;
    let cw = params.in_words;
    let pad = replicate(params.zp_in);
    let s = i32(params.stride);
    var acc0 = vec4<i32>();
    var acc1 = vec4<i32>();
    var acc2 = vec4<i32>();
    var acc3 = vec4<i32>();
    for (var ky = 0u; ky < k; ky++) {
        let iy = i32(b.oy * params.stride + ky) - i32(params.padding);
        for (var kx = 0u; kx < k; kx++) {
            let ix = i32(b.ox0 * params.stride + kx) - i32(params.padding);
            let t = (ky * k + kx) * cw;
            for (var c4 = 0u; c4 < cw; c4++) {
                let w = vec4<u32>(cv_w[b.w.x + t + c4], cv_w[b.w.y + t + c4], cv_w[b.w.z + t + c4],
                                  cv_w[b.w.w + t + c4]);
                let a0 = conv_tap(b.n, iy, ix, c4, pad) ^ FLIP;
                let a1 = conv_tap(b.n, iy, ix + s, c4, pad) ^ FLIP;
                let a2 = conv_tap(b.n, iy, ix + 2 * s, c4, pad) ^ FLIP;
                let a3 = conv_tap(b.n, iy, ix + 3 * s, c4, pad) ^ FLIP;
                acc0 += vec4<i32>(dot4I8Packed(a0, w.x), dot4I8Packed(a0, w.y), dot4I8Packed(a0, w.z), dot4I8Packed(a0, w.w));
                acc1 += vec4<i32>(dot4I8Packed(a1, w.x), dot4I8Packed(a1, w.y), dot4I8Packed(a1, w.z), dot4I8Packed(a1, w.w));
                acc2 += vec4<i32>(dot4I8Packed(a2, w.x), dot4I8Packed(a2, w.y), dot4I8Packed(a2, w.z), dot4I8Packed(a2, w.w));
                acc3 += vec4<i32>(dot4I8Packed(a3, w.x), dot4I8Packed(a3, w.y), dot4I8Packed(a3, w.z), dot4I8Packed(a3, w.w));
            }
        }
    }
    conv_store(b, array<vec4<i32>, 4>(acc0, acc1, acc2, acc3));
}
