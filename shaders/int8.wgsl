// Integer inference: the kernels of an int8 model (src/graph/int8.rs), portable to every WGSL
// implementation. Activations are unsigned 8-bit (PyTorch's quint8) and weights signed 8-bit,
// four to a u32 (element 4j + b in byte b). An activation map is NHWC: a convolution's input or
// output has its channels padded to a multiple of four (pixel p of sample n starts at word
// (n·H·W + p)·words); a linear layer's input may be packed tight (pixel_channels = C).
//
// A layer accumulates acc = Σ (q_x − zp_x)·q_w in i32 and turns it back into a real value,
//   real = m_c · acc + bias_c        (m_c = input scale · weight scale of output channel c),
// then either writes it as f32 (the logits) or requantises it onto the next activation's grid,
//   q = clamp(round(real / s_out) + zp_out, lo, hi),
// where [lo, hi] is [0, 255] or, with a ReLU fused, [zp_out, 255] (ReLU6: hi = zp_out +
// round(6 / s_out)). Both the float reference and PyTorch round half to even.
//
// acc is computed as Σ (q_x − 128)·q_w, a product of two signed bytes (x XOR 0x80 in each byte),
// plus a per-channel correction (128 − zp_x)·Σ q_w that the host folds in beforehand: with it the
// four-byte dot product is the signed one, dot4I8Packed's (int8_dot4.wgsl uses the built-in; here
// it is unpacked by hand). Padding taps read zp_x, a real zero, so the correction holds for them.
// Each layer's epilogue is a u32 array of four words per output channel: m_c and bias_c as f32
// bits, the correction as i32 bits, one unused.

struct Params {
    batch: u32,
    channels: u32,
    in_h: u32,
    in_w: u32,
    in_words: u32,
    out_h: u32,
    out_w: u32,
    out_words: u32,
    kernel: u32,
    stride: u32,
    padding: u32,
    // Channels a pixel holds in the packed order: C, or C rounded up to 4 in an activation map.
    pixel_channels: u32,
    zp_in: i32,
    zp_out: i32,
    lo: i32,
    hi: i32,
    // quantize: 1 / s; dequantize: s; layers: 1 / s_out.
    scale: f32,
    out_float: u32,
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 64u;
const FLIP: u32 = 0x80808080u;

@group(0) @binding(0) var<uniform> params: Params;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// Byte b of a word as a signed value.
fn signed_byte(word: u32, b: u32) -> i32 {
    return extractBits(bitcast<i32>(word), 8u * b, 8u);
}

// Byte b of a word as an unsigned value.
fn unsigned_byte(word: u32, b: u32) -> i32 {
    return i32(extractBits(word, 8u * b, 8u));
}

// The four signed bytes of a word, unpacked once and reused across a block.
fn unpack_i8(word: u32) -> vec4<i32> {
    return vec4<i32>(signed_byte(word, 0u), signed_byte(word, 1u), signed_byte(word, 2u),
                     signed_byte(word, 3u));
}

// An activation's four bytes against four output channels' (dot4I8Packed four times, by hand).
fn products(a: vec4<i32>, w0: vec4<i32>, w1: vec4<i32>, w2: vec4<i32>, w3: vec4<i32>) -> vec4<i32> {
    return vec4<i32>(dot(a, w0), dot(a, w1), dot(a, w2), dot(a, w3));
}

// A byte onto the activation grid: round half to even, clamped.
fn to_grid(real: f32, inv_scale: f32, zero_point: i32, lo: i32, hi: i32) -> u32 {
    return u32(clamp(i32(round(real * inv_scale)) + zero_point, lo, hi));
}

fn replicate(byte: i32) -> u32 {
    return u32(byte) * 0x01010101u;
}

// quantize: f32 NCHW → packed bytes, one word per invocation. Element e of a sample's packed
// order is pixel e / pixel_channels, channel e % pixel_channels; channels past C and the words'
// tail hold the zero point.
@group(0) @binding(1) var<storage, read> q_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> q_out: array<u32>;

@compute @workgroup_size(64)
fn quantize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= params.batch * params.out_words) {
        return;
    }
    let n = i / params.out_words;
    let pixels = params.in_h * params.in_w;
    var word = 0u;
    for (var b = 0u; b < 4u; b++) {
        let e = (i % params.out_words) * 4u + b;
        let pixel = e / params.pixel_channels;
        let c = e % params.pixel_channels;
        var q = u32(params.zp_in);
        if (pixel < pixels && c < params.channels) {
            let v = q_x[(n * params.channels + c) * pixels + pixel];
            q = to_grid(v, params.scale, params.zp_in, 0, 255);
        }
        word |= q << (8u * b);
    }
    q_out[i] = word;
}

// dequantize: packed bytes → f32 NCHW, (q − zp)·s, one element per invocation.
@group(0) @binding(1) var<storage, read> dq_q: array<u32>;
@group(0) @binding(2) var<storage, read_write> dq_out: array<f32>;

@compute @workgroup_size(64)
fn dequantize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    let pixels = params.in_h * params.in_w;
    if (i >= params.batch * params.channels * pixels) {
        return;
    }
    let n = i / (params.channels * pixels);
    let c = (i / pixels) % params.channels;
    let e = (i % pixels) * params.pixel_channels + c;
    let q = unsigned_byte(dq_q[n * params.in_words + e / 4u], e % 4u);
    dq_out[i] = f32(q - params.zp_in) * params.scale;
}

// The epilogue of output channel o: real = m·(acc + correction) + bias.
fn epilogue_real(acc: i32, m: u32, bias: u32, correction: u32) -> f32 {
    return bitcast<f32>(m) * f32(acc + bitcast<i32>(correction)) + bitcast<f32>(bias);
}

// linear: x [B, in_words] · w [N, in_words]ᵀ, four rows × four output channels (one output word)
// per invocation.
@group(0) @binding(1) var<storage, read> li_x: array<u32>;
@group(0) @binding(2) var<storage, read> li_w: array<u32>;
@group(0) @binding(3) var<storage, read> li_ep: array<u32>;
@group(0) @binding(4) var<storage, read_write> li_out: array<u32>;

// One linear invocation's block: output word j (channels 4j..4j+3), rows r0..r0+3, and the
// first words of its four weight rows and four input rows (clamped to the last channel and row,
// whose extra results the stores leave out).
struct LinearBlock {
    j: u32,
    r0: u32,
    w: vec4<u32>,
    x: vec4<u32>,
}

fn linear_blocks() -> u32 {
    return (params.batch + 3u) / 4u * params.out_words;
}

fn linear_block(i: u32) -> LinearBlock {
    let j = i % params.out_words;
    let r0 = (i / params.out_words) * 4u;
    let lanes = vec4<u32>(0u, 1u, 2u, 3u);
    let w = min(vec4<u32>(4u * j) + lanes, vec4<u32>(params.channels - 1u)) * params.in_words;
    let x = min(vec4<u32>(r0) + lanes, vec4<u32>(params.batch - 1u)) * params.in_words;
    return LinearBlock(j, r0, w, x);
}

// The block's accumulators (one per row, four channels each) through the epilogue: f32 reals,
// or bytes on the output grid.
fn linear_store(b: LinearBlock, accs: array<vec4<i32>, 4>) {
    var acc = accs;
    for (var r = 0u; r < 4u; r++) {
        let row = b.r0 + r;
        if (row >= params.batch) {
            break;
        }
        var word = 0u;
        for (var c = 0u; c < 4u; c++) {
            let o = 4u * b.j + c;
            var q = u32(params.zp_out);
            if (o < params.channels) {
                let real = epilogue_real(acc[r][c], li_ep[4u * o], li_ep[4u * o + 1u], li_ep[4u * o + 2u]);
                if (params.out_float != 0u) {
                    li_out[row * params.channels + o] = bitcast<u32>(real);
                }
                q = to_grid(real, params.scale, params.zp_out, params.lo, params.hi);
            }
            word |= q << (8u * c);
        }
        if (params.out_float == 0u) {
            li_out[row * params.out_words + b.j] = word;
        }
    }
}

@compute @workgroup_size(64)
fn linear(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
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
        let wa = unpack_i8(li_w[b.w.x + k]);
        let wb = unpack_i8(li_w[b.w.y + k]);
        let wc = unpack_i8(li_w[b.w.z + k]);
        let wd = unpack_i8(li_w[b.w.w + k]);
        acc0 += products(unpack_i8(li_x[b.x.x + k] ^ FLIP), wa, wb, wc, wd);
        acc1 += products(unpack_i8(li_x[b.x.y + k] ^ FLIP), wa, wb, wc, wd);
        acc2 += products(unpack_i8(li_x[b.x.z + k] ^ FLIP), wa, wb, wc, wd);
        acc3 += products(unpack_i8(li_x[b.x.w + k] ^ FLIP), wa, wb, wc, wd);
    }
    linear_store(b, array<vec4<i32>, 4>(acc0, acc1, acc2, acc3));
}

// conv2d (groups = 1): NHWC maps, weights [O, k, k, in_words]; four horizontally adjacent output
// pixels × four output channels (one word each) per invocation.
@group(0) @binding(1) var<storage, read> cv_x: array<u32>;
@group(0) @binding(2) var<storage, read> cv_w: array<u32>;
@group(0) @binding(3) var<storage, read> cv_ep: array<u32>;
@group(0) @binding(4) var<storage, read_write> cv_out: array<u32>;

// The input word at (n, iy, ix, c4), or the zero point's where the tap is padding.
fn conv_tap(n: u32, iy: i32, ix: i32, c4: u32, pad: u32) -> u32 {
    if (iy < 0 || ix < 0 || iy >= i32(params.in_h) || ix >= i32(params.in_w)) {
        return pad;
    }
    return cv_x[((n * params.in_h + u32(iy)) * params.in_w + u32(ix)) * params.in_words + c4];
}

// Four channels' reals as one word on the output grid (channels past C hold the zero point).
fn requantise(ep: ptr<function, array<u32, 16>>, acc: vec4<i32>, j: u32) -> u32 {
    var word = 0u;
    for (var c = 0u; c < 4u; c++) {
        var q = u32(params.zp_out);
        if (4u * j + c < params.channels) {
            let real = epilogue_real(acc[c], (*ep)[4u * c], (*ep)[4u * c + 1u], (*ep)[4u * c + 2u]);
            q = to_grid(real, params.scale, params.zp_out, params.lo, params.hi);
        }
        word |= q << (8u * c);
    }
    return word;
}

// One conv2d invocation's block: sample n, output row oy, output columns ox0..ox0+3, output word
// j, and the first words of its four output channels' weights (clamped to the last channel).
struct ConvBlock {
    n: u32,
    oy: u32,
    ox0: u32,
    j: u32,
    w: vec4<u32>,
}

fn conv_blocks() -> u32 {
    return params.batch * params.out_h * ((params.out_w + 3u) / 4u) * params.out_words;
}

fn conv_block(i: u32) -> ConvBlock {
    let x_blocks = (params.out_w + 3u) / 4u;
    let j = i % params.out_words;
    let ox0 = ((i / params.out_words) % x_blocks) * 4u;
    let oy = (i / (params.out_words * x_blocks)) % params.out_h;
    let n = i / (params.out_words * x_blocks * params.out_h);
    let lanes = vec4<u32>(0u, 1u, 2u, 3u);
    let per_channel = params.kernel * params.kernel * params.in_words;
    let w = min(vec4<u32>(4u * j) + lanes, vec4<u32>(params.channels - 1u)) * per_channel;
    return ConvBlock(n, oy, ox0, j, w);
}

// The block's accumulators (one per output pixel, four channels each) requantised and stored.
fn conv_store(b: ConvBlock, accs: array<vec4<i32>, 4>) {
    var acc = accs;
    var ep: array<u32, 16>;
    let last = params.channels - 1u;
    for (var e = 0u; e < 16u; e++) {
        ep[e] = cv_ep[min(4u * b.j + e / 4u, last) * 4u + e % 4u];
    }
    for (var p = 0u; p < 4u; p++) {
        let ox = b.ox0 + p;
        if (ox >= params.out_w) {
            break;
        }
        cv_out[((b.n * params.out_h + b.oy) * params.out_w + ox) * params.out_words + b.j] =
            requantise(&ep, acc[p], b.j);
    }
}

@compute @workgroup_size(64)
fn conv2d(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
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
                let wa = unpack_i8(cv_w[b.w.x + t + c4]);
                let wb = unpack_i8(cv_w[b.w.y + t + c4]);
                let wc = unpack_i8(cv_w[b.w.z + t + c4]);
                let wd = unpack_i8(cv_w[b.w.w + t + c4]);
                acc0 += products(unpack_i8(conv_tap(b.n, iy, ix, c4, pad) ^ FLIP), wa, wb, wc, wd);
                acc1 += products(unpack_i8(conv_tap(b.n, iy, ix + s, c4, pad) ^ FLIP), wa, wb, wc, wd);
                acc2 += products(unpack_i8(conv_tap(b.n, iy, ix + 2 * s, c4, pad) ^ FLIP), wa, wb, wc, wd);
                acc3 += products(unpack_i8(conv_tap(b.n, iy, ix + 3 * s, c4, pad) ^ FLIP), wa, wb, wc, wd);
            }
        }
    }
    conv_store(b, array<vec4<i32>, 4>(acc0, acc1, acc2, acc3));
}

// Output word i of a map, one word per invocation: (sample, row, column, word in the pixel).
fn output_word(i: u32) -> vec4<u32> {
    let j = i % params.out_words;
    let ox = (i / params.out_words) % params.out_w;
    let oy = (i / (params.out_words * params.out_w)) % params.out_h;
    return vec4<u32>(i / (params.out_words * params.out_w * params.out_h), oy, ox, j);
}

// depthwise: groups = channels; weights [k, k, words] with four channels' bytes per word; one
// output word (four channels of one pixel) per invocation.
@group(0) @binding(1) var<storage, read> dw_x: array<u32>;
@group(0) @binding(2) var<storage, read> dw_w: array<u32>;
@group(0) @binding(3) var<storage, read> dw_ep: array<u32>;
@group(0) @binding(4) var<storage, read_write> dw_out: array<u32>;

@compute @workgroup_size(64)
fn depthwise(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= params.batch * params.out_h * params.out_w * params.out_words) {
        return;
    }
    let at = output_word(i);
    let n = at.x;
    let oy = at.y;
    let ox = at.z;
    let j = at.w;
    let k = params.kernel;
    let pad = replicate(params.zp_in);
    var acc = vec4<i32>();
    for (var ky = 0u; ky < k; ky++) {
        let iy = i32(oy * params.stride + ky) - i32(params.padding);
        for (var kx = 0u; kx < k; kx++) {
            let ix = i32(ox * params.stride + kx) - i32(params.padding);
            var a = pad;
            if (iy >= 0 && ix >= 0 && iy < i32(params.in_h) && ix < i32(params.in_w)) {
                a = dw_x[((n * params.in_h + u32(iy)) * params.in_w + u32(ix)) * params.in_words + j];
            }
            let w = dw_w[(ky * k + kx) * params.out_words + j];
            acc += unpack_i8(a ^ FLIP) * unpack_i8(w);
        }
    }
    var ep: array<u32, 16>;
    let last = params.channels - 1u;
    for (var e = 0u; e < 16u; e++) {
        ep[e] = dw_ep[min(4u * j + e / 4u, last) * 4u + e % 4u];
    }
    dw_out[i] = requantise(&ep, acc, j);
}

// max_pool: the largest byte of each channel over the window (padding taps never win); the grid
// is monotone, so this is the float max pool's value on it.
@group(0) @binding(1) var<storage, read> mp_x: array<u32>;
@group(0) @binding(2) var<storage, read_write> mp_out: array<u32>;

@compute @workgroup_size(64)
fn max_pool(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= params.batch * params.out_h * params.out_w * params.out_words) {
        return;
    }
    let at = output_word(i);
    let n = at.x;
    let oy = at.y;
    let ox = at.z;
    let j = at.w;
    var best = vec4<i32>(-1);
    for (var ky = 0u; ky < params.kernel; ky++) {
        let iy = i32(oy * params.stride + ky) - i32(params.padding);
        for (var kx = 0u; kx < params.kernel; kx++) {
            let ix = i32(ox * params.stride + kx) - i32(params.padding);
            if (iy >= 0 && ix >= 0 && iy < i32(params.in_h) && ix < i32(params.in_w)) {
                let a = mp_x[((n * params.in_h + u32(iy)) * params.in_w + u32(ix)) * params.in_words + j];
                best = max(best, vec4<i32>(unsigned_byte(a, 0u), unsigned_byte(a, 1u),
                                           unsigned_byte(a, 2u), unsigned_byte(a, 3u)));
            }
        }
    }
    let q = vec4<u32>(max(best, vec4<i32>(0)));
    mp_out[i] = q.x | (q.y << 8u) | (q.z << 16u) | (q.w << 24u);
}

// global_avg_pool: each channel's mean over the map, rounded half to even onto the same grid.
@group(0) @binding(1) var<storage, read> ap_x: array<u32>;
@group(0) @binding(2) var<storage, read_write> ap_out: array<u32>;

@compute @workgroup_size(64)
fn global_avg_pool(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= params.batch * params.in_words) {
        return;
    }
    let j = i % params.in_words;
    let n = i / params.in_words;
    let pixels = params.in_h * params.in_w;
    var sum = vec4<i32>();
    for (var p = 0u; p < pixels; p++) {
        let a = ap_x[(n * pixels + p) * params.in_words + j];
        sum += vec4<i32>(unsigned_byte(a, 0u), unsigned_byte(a, 1u), unsigned_byte(a, 2u),
                         unsigned_byte(a, 3u));
    }
    // In integers, since a float quotient may miss an exact half: floor, then half to even.
    let count = i32(pixels);
    var word = 0u;
    for (var b = 0u; b < 4u; b++) {
        var q = sum[b] / count;
        let twice_rest = 2 * (sum[b] % count);
        if (twice_rest > count || (twice_rest == count && (q & 1) == 1)) {
            q += 1;
        }
        word |= u32(q) << (8u * b);
    }
    ap_out[i] = word;
}
