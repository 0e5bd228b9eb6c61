// 2-D convolution for CPU-like drivers that have subgroups (lavapipe on Vulkan): the forward
// pass and both gradients of conv.wgsl (NCHW input, weight [Cout, Cin, KH, KW], stride, zero
// padding). The reasoning is matmul_subgroup.wgsl's: on such drivers a load whose address differs
// per lane is a loop over the lanes, so the operand every lane needs is loaded once per workgroup
// (one channel per lane, twice) and handed to every lane with subgroupBroadcast, while each lane
// loads only the values of its own positions.
//
// A workgroup is one subgroup of 8 lanes; each lane keeps 8 positions × 16 channels of
// accumulators:
// - conv_forward_sg: 64 output positions (flattened over images) × 16 output channels;
//   reduction over (ci, kh, kw), weights shared.
// - conv_backward_input_sg: 64 input positions × 16 input channels; reduction over
//   (co, kh, kw), weights shared, dy gathered where the window lands on an output position.
// - conv_backward_weight_sg: 64 weight columns (ci, kh, kw) × 16 output channels; reduction over
//   one chunk of output positions (dy shared), written as a partial sum per chunk that a
//   reduction adds up, so that the long reduction is spread over many workgroups.
// No alignment is needed. Every index is in bounds by construction (reads clamped and masked,
// stores guarded), so the family is compiled without bounds checks.

// Stride 1 in both directions: the gradient of the input then needs no integer division per
// element (which CPU drivers cannot vectorise); launchers set it where it holds.
override UNIT_STRIDE: bool = false;

struct Params {
    n: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    bias: u32,
    // Output positions per chunk (conv_backward_weight_sg).
    chunk: u32,
    // Always 1: grouped convolutions run on conv.wgsl's kernels.
    groups: u32,
}

@group(0) @binding(0) var<uniform> params: Params;

const LANES: u32 = 8u;
// Positions (or weight columns) per lane.
const POS: u32 = 8u;
// Channels per workgroup (two per lane, shared).
const CH: u32 = 16u;

// The 16 channels' values from two per lane, lane l holding channel l (lo) and 8 + l (hi).
// Broadcast lanes must be constants, hence the spelled-out list.
fn share_channels(lo: f32, hi: f32) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(
        vec4<f32>(subgroupBroadcast(lo, 0u), subgroupBroadcast(lo, 1u),
                  subgroupBroadcast(lo, 2u), subgroupBroadcast(lo, 3u)),
        vec4<f32>(subgroupBroadcast(lo, 4u), subgroupBroadcast(lo, 5u),
                  subgroupBroadcast(lo, 6u), subgroupBroadcast(lo, 7u)),
        vec4<f32>(subgroupBroadcast(hi, 0u), subgroupBroadcast(hi, 1u),
                  subgroupBroadcast(hi, 2u), subgroupBroadcast(hi, 3u)),
        vec4<f32>(subgroupBroadcast(hi, 4u), subgroupBroadcast(hi, 5u),
                  subgroupBroadcast(hi, 6u), subgroupBroadcast(hi, 7u)));
}

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(8)
fn conv_forward_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let per_image = params.ho * params.wo;
    let rows = params.n * per_image;
    let plane = params.h * params.w;
    let ksize = params.cin * params.kh * params.kw;
    let r0 = wid.x * (LANES * POS) + lid.x;
    let co0 = wid.y * CH;
    // Per position: where its image starts in x, and its window's top-left corner.
    var image_at: array<u32, 8>;
    var ih0: array<i32, 8>;
    var iw0: array<i32, 8>;
    for (var p = 0u; p < POS; p++) {
        let r = min(r0 + p * LANES, rows - 1u);
        let pos = r % per_image;
        image_at[p] = (r / per_image) * params.cin * plane;
        ih0[p] = i32((pos / params.wo) * params.sh) - i32(params.ph);
        iw0[p] = i32((pos % params.wo) * params.sw) - i32(params.pw);
    }
    let w_lo = min(co0 + lid.x, params.cout - 1u) * ksize;
    let w_hi = min(co0 + LANES + lid.x, params.cout - 1u) * ksize;
    var acc: array<array<vec4<f32>, 4>, 8>;
    for (var ci = 0u; ci < params.cin; ci++) {
        for (var i = 0u; i < params.kh; i++) {
            for (var j = 0u; j < params.kw; j++) {
                let kidx = (ci * params.kh + i) * params.kw + j;
                let wv = share_channels(weight[w_lo + kidx], weight[w_hi + kidx]);
                for (var p = 0u; p < POS; p++) {
                    let ih = ih0[p] + i32(i);
                    let iw = iw0[p] + i32(j);
                    let inside = ih >= 0 && ih < i32(params.h) && iw >= 0 && iw < i32(params.w);
                    let at = image_at[p] + ci * plane
                        + u32(clamp(ih, 0, i32(params.h) - 1)) * params.w
                        + u32(clamp(iw, 0, i32(params.w) - 1));
                    let xv = vec4<f32>(select(0.0, x[at], inside));
                    for (var c = 0u; c < 4u; c++) {
                        acc[p][c] = fma(xv, wv[c], acc[p][c]);
                    }
                }
            }
        }
    }
    for (var p = 0u; p < POS; p++) {
        let r = r0 + p * LANES;
        if (r >= rows) {
            continue;
        }
        let img = r / per_image;
        let pos = r % per_image;
        for (var c = 0u; c < CH; c++) {
            let co = co0 + c;
            if (co < params.cout) {
                let b = select(0.0, bias[co], params.bias == 1u);
                y[(img * params.cout + co) * per_image + pos] = acc[p][c / 4u][c % 4u] + b;
            }
        }
    }
}

// dx[n, ci, ih, iw] = Σ_{co, kh, kw} dy[n, co, oh, ow] · w[co, ci, kh, kw] where
// oh·sh = ih + ph − kh (and likewise for columns) lands on an output position.
@group(0) @binding(1) var<storage, read> bi_dy: array<f32>;
@group(0) @binding(2) var<storage, read> bi_w: array<f32>;
@group(0) @binding(3) var<storage, read_write> bi_dx: array<f32>;

@compute @workgroup_size(8)
fn conv_backward_input_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let plane = params.h * params.w;
    let rows = params.n * plane;
    let per_image = params.ho * params.wo;
    let r0 = wid.x * (LANES * POS) + lid.x;
    let ci0 = wid.y * CH;
    // Per input position: where its image starts in dy, and its padded coordinates. With a
    // stride, also their quotients and remainders by it, divided once here: tap (i, j) lands on
    // an output position exactly where its own remainders match (and then at quotient − i / sh),
    // so the loop below divides only the taps, which every lane shares, not each position (CPU
    // drivers divide one lane at a time: strided convolutions' dx ran 7× their forward).
    var dy_at: array<u32, 8>;
    var ihp: array<i32, 8>;
    var iwp: array<i32, 8>;
    var quot_h: array<i32, 8>;
    var quot_w: array<i32, 8>;
    var rem_h: array<u32, 8>;
    var rem_w: array<u32, 8>;
    for (var p = 0u; p < POS; p++) {
        let r = min(r0 + p * LANES, rows - 1u);
        let pos = r % plane;
        dy_at[p] = (r / plane) * params.cout * per_image;
        let hp = pos / params.w + params.ph;
        let wp = pos % params.w + params.pw;
        ihp[p] = i32(hp);
        iwp[p] = i32(wp);
        if (!UNIT_STRIDE) {
            quot_h[p] = i32(hp / params.sh);
            quot_w[p] = i32(wp / params.sw);
            rem_h[p] = hp % params.sh;
            rem_w[p] = wp % params.sw;
        }
    }
    let ci_lo = min(ci0 + lid.x, params.cin - 1u);
    let ci_hi = min(ci0 + LANES + lid.x, params.cin - 1u);
    let window = params.kh * params.kw;
    var acc: array<array<vec4<f32>, 4>, 8>;
    for (var co = 0u; co < params.cout; co++) {
        for (var i = 0u; i < params.kh; i++) {
            let ti = i32(i / params.sh);
            let ri = i % params.sh;
            for (var j = 0u; j < params.kw; j++) {
                let tj = i32(j / params.sw);
                let rj = j % params.sw;
                let tap = i * params.kw + j;
                let wv = share_channels(bi_w[(co * params.cin + ci_lo) * window + tap],
                                        bi_w[(co * params.cin + ci_hi) * window + tap]);
                for (var p = 0u; p < POS; p++) {
                    var th = ihp[p] - i32(i);
                    var tw = iwp[p] - i32(j);
                    var on_grid = th >= 0 && tw >= 0;
                    if (!UNIT_STRIDE) {
                        th = quot_h[p] - ti;
                        tw = quot_w[p] - tj;
                        on_grid = rem_h[p] == ri && rem_w[p] == rj && th >= 0 && tw >= 0;
                    }
                    let oh = u32(max(th, 0));
                    let ow = u32(max(tw, 0));
                    let hits = on_grid && oh < params.ho && ow < params.wo;
                    let at = dy_at[p] + co * per_image
                        + min(oh, params.ho - 1u) * params.wo + min(ow, params.wo - 1u);
                    let dv = vec4<f32>(select(0.0, bi_dy[at], hits));
                    for (var c = 0u; c < 4u; c++) {
                        acc[p][c] = fma(dv, wv[c], acc[p][c]);
                    }
                }
            }
        }
    }
    for (var p = 0u; p < POS; p++) {
        let r = r0 + p * LANES;
        if (r >= rows) {
            continue;
        }
        let img = r / plane;
        let pos = r % plane;
        for (var c = 0u; c < CH; c++) {
            let ci = ci0 + c;
            if (ci < params.cin) {
                bi_dx[(img * params.cin + ci) * plane + pos] = acc[p][c / 4u][c % 4u];
            }
        }
    }
}

// partial[chunk, co, k] = Σ over the chunk's output positions (n, oh, ow) of
// dy[n, co, oh, ow] · x[n, ci, oh·sh + kh − ph, ow·sw + kw − pw], with k = (ci, kh, kw).
@group(0) @binding(1) var<storage, read> bw_dy: array<f32>;
@group(0) @binding(2) var<storage, read> bw_x: array<f32>;
@group(0) @binding(3) var<storage, read_write> bw_partial: array<f32>;

@compute @workgroup_size(8)
fn conv_backward_weight_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let per_image = params.ho * params.wo;
    let rows = params.n * per_image;
    let plane = params.h * params.w;
    let window = params.kh * params.kw;
    let ksize = params.cin * window;
    let k0 = wid.x * (LANES * POS) + lid.x;
    let co0 = wid.y * CH;
    // Per weight column: its input channel's offset and its tap's offset from the window corner.
    var ci_at: array<u32, 8>;
    var dh: array<i32, 8>;
    var dw: array<i32, 8>;
    for (var p = 0u; p < POS; p++) {
        let k = min(k0 + p * LANES, ksize - 1u);
        ci_at[p] = (k / window) * plane;
        dh[p] = i32((k / params.kw) % params.kh) - i32(params.ph);
        dw[p] = i32(k % params.kw) - i32(params.pw);
    }
    let co_lo = min(co0 + lid.x, params.cout - 1u);
    let co_hi = min(co0 + LANES + lid.x, params.cout - 1u);
    let r_begin = wid.z * params.chunk;
    let r_end = min(r_begin + params.chunk, rows);
    // The position (img, oh, ow) advances by counting, not dividing, in the loop.
    var img = r_begin / per_image;
    var oh = (r_begin % per_image) / params.wo;
    var ow = r_begin % params.wo;
    var acc: array<array<vec4<f32>, 4>, 8>;
    for (var r = r_begin; r < r_end; r++) {
        let pos = oh * params.wo + ow;
        let g = share_channels(bw_dy[(img * params.cout + co_lo) * per_image + pos],
                               bw_dy[(img * params.cout + co_hi) * per_image + pos]);
        let image_at = img * params.cin * plane;
        let ih0 = i32(oh * params.sh);
        let iw0 = i32(ow * params.sw);
        ow++;
        if (ow == params.wo) {
            ow = 0u;
            oh++;
            if (oh == params.ho) {
                oh = 0u;
                img++;
            }
        }
        for (var p = 0u; p < POS; p++) {
            let ih = ih0 + dh[p];
            let iw = iw0 + dw[p];
            let inside = ih >= 0 && ih < i32(params.h) && iw >= 0 && iw < i32(params.w);
            let at = image_at + ci_at[p]
                + u32(clamp(ih, 0, i32(params.h) - 1)) * params.w
                + u32(clamp(iw, 0, i32(params.w) - 1));
            let xv = vec4<f32>(select(0.0, bw_x[at], inside));
            for (var c = 0u; c < 4u; c++) {
                acc[p][c] = fma(xv, g[c], acc[p][c]);
            }
        }
    }
    for (var p = 0u; p < POS; p++) {
        let k = k0 + p * LANES;
        if (k >= ksize) {
            continue;
        }
        for (var c = 0u; c < CH; c++) {
            let co = co0 + c;
            if (co < params.cout) {
                bw_partial[(wid.z * params.cout + co) * ksize + k] = acc[p][c / 4u][c % 4u];
            }
        }
    }
}

// The weight gradient of a convolution with few weight columns (Cin·KH·KW = KS ≤ 16, a first
// layer on one input channel: 9). conv_backward_weight_sg gives a workgroup 64 columns, so with
// 9 of them 86% of its multiply-adds were wasted. Here every lane takes all KS columns for 4
// output channels, over its own run of the chunk's positions, and writes its own partial sums:
// partial[(chunk·8 + lane), co, k], added up by the same reduction as the kernel above (so the
// result does not depend on how a driver sums across lanes).
override KS: u32 = 16u;

@group(0) @binding(1) var<storage, read> nw_dy: array<f32>;
@group(0) @binding(2) var<storage, read> nw_x: array<f32>;
@group(0) @binding(3) var<storage, read_write> nw_partial: array<f32>;

@compute @workgroup_size(8)
fn conv_backward_weight_narrow(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let per_image = params.ho * params.wo;
    let rows = params.n * per_image;
    let plane = params.h * params.w;
    let window = params.kh * params.kw;
    let co0 = wid.y * 4u;
    // Per column: its input channel's offset and its tap's offset from the window's corner.
    var ci_at: array<u32, 16>;
    var dh: array<i32, 16>;
    var dw: array<i32, 16>;
    for (var k = 0u; k < KS; k++) {
        ci_at[k] = (k / window) * plane;
        dh[k] = i32((k / params.kw) % params.kh) - i32(params.ph);
        dw[k] = i32(k % params.kw) - i32(params.pw);
    }
    var co_at: array<u32, 4>;
    for (var c = 0u; c < 4u; c++) {
        co_at[c] = min(co0 + c, params.cout - 1u) * per_image;
    }
    // This lane's run of the chunk: chunk/8 positions (rounded up).
    let run = (params.chunk + LANES - 1u) / LANES;
    let chunk_end = min(wid.z * params.chunk + params.chunk, rows);
    let r_begin = min(wid.z * params.chunk + lid.x * run, chunk_end);
    let r_end = min(r_begin + run, chunk_end);
    // The position (img, oh, ow) advances by counting, not dividing, in the loop.
    var img = r_begin / per_image;
    var oh = (r_begin % per_image) / params.wo;
    var ow = r_begin % params.wo;
    var acc: array<vec4<f32>, 16>;
    for (var r = r_begin; r < r_end; r++) {
        let at_dy = img * params.cout * per_image + oh * params.wo + ow;
        let g = vec4<f32>(nw_dy[at_dy + co_at[0]], nw_dy[at_dy + co_at[1]],
                          nw_dy[at_dy + co_at[2]], nw_dy[at_dy + co_at[3]]);
        let image_at = img * params.cin * plane;
        let ih0 = i32(oh * params.sh);
        let iw0 = i32(ow * params.sw);
        ow++;
        if (ow == params.wo) {
            ow = 0u;
            oh++;
            if (oh == params.ho) {
                oh = 0u;
                img++;
            }
        }
        for (var k = 0u; k < KS; k++) {
            let ih = ih0 + dh[k];
            let iw = iw0 + dw[k];
            let inside = ih >= 0 && ih < i32(params.h) && iw >= 0 && iw < i32(params.w);
            let at = image_at + ci_at[k]
                + u32(clamp(ih, 0, i32(params.h) - 1)) * params.w
                + u32(clamp(iw, 0, i32(params.w) - 1));
            acc[k] = fma(vec4<f32>(select(0.0, nw_x[at], inside)), g, acc[k]);
        }
    }
    let row = (wid.z * LANES + lid.x) * params.cout;
    for (var c = 0u; c < 4u; c++) {
        let co = co0 + c;
        if (co < params.cout) {
            for (var k = 0u; k < KS; k++) {
                nw_partial[(row + co) * KS + k] = acc[k][c];
            }
        }
    }
}
