// 2-D convolution over NCHW tensors with weight [Cout, Cin / groups, KH, KW] (PyTorch's layout),
// stride, zero padding and channel groups (output channel co reads the Cin / groups input
// channels of its group, g = co / (Cout / groups)); forward, gradient of the input and gradient
// of the weight; and the three for depthwise layers (groups = Cin = Cout: one input channel per
// output), which the general kernels would run one live channel in eight.
// The bias gradient is a reduction of dy (reduce.wgsl).
//
// conv_forward is an implicit GEMM: rows are output positions, columns output channels, and the
// inner dimension runs over (ci, kh, kw) with the input patch read in place (no im2col buffer).
// Each invocation keeps a 4-position × 8-channel block in registers; a block's channels belong
// to one group, so its inner dimension is that group's (ci, kh, kw).
//
// quot and covering come from shaders/common/index.wgsl, prepended.
//
// Every index is in bounds by construction (input reads clamped and masked, weight rows clamped,
// stores guarded, backward indices derived from valid positions), tested at odd shapes, so this
// family is compiled without naga's runtime bounds checks.

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
    // Images per chunk (conv_backward_weight, conv_backward_weight_depthwise).
    images: u32,
    groups: u32,
}

const WG: u32 = 64u;
const POS: u32 = 4u;
const CH: u32 = 8u;

@group(0) @binding(0) var<uniform> params: Params;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// The taps t in [0, k) with o·s + t − pad inside [0, n_in) for output index o, as [first, end).
fn tap_range(o: u32, k: u32, s: u32, pad: u32, n_in: u32) -> vec2<u32> {
    let start = i32(o * s) - i32(pad);
    return vec2<u32>(u32(max(-start, 0)), u32(clamp(i32(n_in) - start, 0, i32(k))));
}

@group(0) @binding(1) var<storage, read> fw_x: array<f32>;
@group(0) @binding(2) var<storage, read> fw_w: array<f32>;
@group(0) @binding(3) var<storage, read> fw_bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> fw_y: array<f32>;

@compute @workgroup_size(64)
fn conv_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid);
    let per_image = params.ho * params.wo;
    let pos_blocks = (per_image + POS - 1u) / POS;
    let cin_g = params.cin / params.groups;
    let cout_g = params.cout / params.groups;
    let group_blocks = (cout_g + CH - 1u) / CH;
    let ch_blocks = params.groups * group_blocks;
    if (t >= params.n * pos_blocks * ch_blocks) {
        return;
    }
    // Channel blocks vary fastest, so neighbouring invocations share the same input patch.
    let cb = t % ch_blocks;
    let pb = (t / ch_blocks) % pos_blocks;
    let img = t / (ch_blocks * pos_blocks);
    let g = cb / group_blocks;
    let co0 = g * cout_g + (cb % group_blocks) * CH;
    let co_end = (g + 1u) * cout_g;
    var ih0: array<i32, 4>;
    var iw0: array<i32, 4>;
    for (var p = 0u; p < POS; p = p + 1u) {
        let pos = min(pb * POS + p, per_image - 1u);
        ih0[p] = i32((pos / params.wo) * params.sh) - i32(params.ph);
        iw0[p] = i32((pos % params.wo) * params.sw) - i32(params.pw);
    }
    var acc: array<array<f32, 8>, 4>;
    let ksize = cin_g * params.kh * params.kw;
    for (var cl = 0u; cl < cin_g; cl = cl + 1u) {
        let plane = (img * params.cin + g * cin_g + cl) * params.h * params.w;
        for (var i = 0u; i < params.kh; i = i + 1u) {
            for (var j = 0u; j < params.kw; j = j + 1u) {
                var xv: array<f32, 4>;
                for (var p = 0u; p < POS; p = p + 1u) {
                    let ih = ih0[p] + i32(i);
                    let iw = iw0[p] + i32(j);
                    let inside = ih >= 0 && ih < i32(params.h) && iw >= 0 && iw < i32(params.w);
                    let idx = plane + u32(clamp(ih, 0, i32(params.h) - 1)) * params.w + u32(clamp(iw, 0, i32(params.w) - 1));
                    xv[p] = select(0.0, fw_x[idx], inside);
                }
                let kidx = (cl * params.kh + i) * params.kw + j;
                for (var q = 0u; q < CH; q = q + 1u) {
                    let wv = fw_w[min(co0 + q, co_end - 1u) * ksize + kidx];
                    for (var p = 0u; p < POS; p = p + 1u) {
                        acc[p][q] = fma(xv[p], wv, acc[p][q]);
                    }
                }
            }
        }
    }
    for (var p = 0u; p < POS; p = p + 1u) {
        let pos = pb * POS + p;
        for (var q = 0u; q < CH; q = q + 1u) {
            let co = co0 + q;
            if (pos < per_image && co < co_end) {
                let b = select(0.0, fw_bias[co], params.bias == 1u);
                fw_y[(img * params.cout + co) * per_image + pos] = acc[p][q] + b;
            }
        }
    }
}

// dx[n, ci, ih, iw] = Σ_{co of ci's group, kh, kw} dy[n, co, oh, ow] · w[co, ci mod (Cin / groups),
// kh, kw], where oh·sh = ih + ph − kh (and likewise for columns) must land on an output position.
@group(0) @binding(1) var<storage, read> bi_dy: array<f32>;
@group(0) @binding(2) var<storage, read> bi_w: array<f32>;
@group(0) @binding(3) var<storage, read_write> bi_dx: array<f32>;

@compute @workgroup_size(64)
fn conv_backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let x = linear_index(wid, nwg, lid);
    let per_plane = params.h * params.w;
    if (x >= params.n * params.cin * per_plane) {
        return;
    }
    let img = x / (params.cin * per_plane);
    let ci = (x / per_plane) % params.cin;
    let ih = i32((x % per_plane) / params.w) + i32(params.ph);
    let iw = i32(x % params.w) + i32(params.pw);
    let cin_g = params.cin / params.groups;
    let cout_g = params.cout / params.groups;
    let g = ci / cin_g;
    let ksize = cin_g * params.kh * params.kw;
    var acc = 0.0;
    for (var i = 0u; i < params.kh; i = i + 1u) {
        let th = ih - i32(i);
        if (th < 0 || th % i32(params.sh) != 0 || th / i32(params.sh) >= i32(params.ho)) {
            continue;
        }
        let oh = u32(th) / params.sh;
        for (var j = 0u; j < params.kw; j = j + 1u) {
            let tw = iw - i32(j);
            if (tw < 0 || tw % i32(params.sw) != 0 || tw / i32(params.sw) >= i32(params.wo)) {
                continue;
            }
            let ow = u32(tw) / params.sw;
            let kidx = ((ci % cin_g) * params.kh + i) * params.kw + j;
            for (var co = g * cout_g; co < (g + 1u) * cout_g; co = co + 1u) {
                acc = acc + bi_dy[((img * params.cout + co) * params.ho + oh) * params.wo + ow] * bi_w[co * ksize + kidx];
            }
        }
    }
    bi_dx[x] = acc;
}

// partial[z, co, c, kh, kw] = Σ over the images of chunk z, and their (oh, ow), of
// dy[n, co, oh, ow] · x[n, ci, oh·sh + kh − ph, ow·sw + kw − pw], where ci is input channel c of
// co's group; a reduction over z gives dw.
// Chunks spread the long reduction over many invocations and keep each invocation's loops short
// (llvmpipe stops an invocation's loops after 65535 iterations in all).
@group(0) @binding(1) var<storage, read> bw_dy: array<f32>;
@group(0) @binding(2) var<storage, read> bw_x: array<f32>;
@group(0) @binding(3) var<storage, read_write> bw_partial: array<f32>;

@compute @workgroup_size(64)
fn conv_backward_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid);
    let cin_g = params.cin / params.groups;
    let cout_g = params.cout / params.groups;
    let ksize = cin_g * params.kh * params.kw;
    let weights = params.cout * ksize;
    let chunks = (params.n + params.images - 1u) / params.images;
    if (t >= weights * chunks) {
        return;
    }
    let k = t % weights;
    let z = t / weights;
    let co = k / ksize;
    let ci = (co / cout_g) * cin_g + (k / (params.kh * params.kw)) % cin_g;
    let i = (k / params.kw) % params.kh;
    let j = k % params.kw;
    // The output rows whose tap i lands inside the map (o·sh + i − ph in [0, h)) are those whose
    // h-row window holds padded row h − 1 + ph − i (none when i is past it); columns likewise.
    let last_row = params.h - 1u + params.ph;
    let last_col = params.w - 1u + params.pw;
    let none = vec2<u32>(0u, 0u);
    let rows = select(none, covering(last_row - i, params.h, params.sh, params.ho), i <= last_row);
    let cols = select(none, covering(last_col - j, params.w, params.sw, params.wo), j <= last_col);
    var acc = 0.0;
    let img_end = min((z + 1u) * params.images, params.n);
    for (var img = z * params.images; img < img_end; img = img + 1u) {
        let plane = (img * params.cin + ci) * params.h * params.w;
        let out_plane = (img * params.cout + co) * params.ho * params.wo;
        for (var oh = rows.x; oh < rows.y; oh = oh + 1u) {
            // Inside the map by the bounds, so these never wrap below 0.
            let x_row = plane + (oh * params.sh + i - params.ph) * params.w + j - params.pw;
            let dy_row = out_plane + oh * params.wo;
            for (var ow = cols.x; ow < cols.y; ow = ow + 1u) {
                acc = fma(bw_dy[dy_row + ow], bw_x[x_row + ow * params.sw], acc);
            }
        }
    }
    bw_partial[t] = acc;
}

// Depthwise kernels (groups = Cin = Cout: each output plane reads one input plane). A lane
// computes SEG neighbouring values of one row of one plane, as a vec4, so the tap loops, their
// bounds and the weight reads are shared by four outputs and a small plane still fills its
// workgroup: the grid is (blocks of 64 segments over channels × rows × segments per row, 1,
// images). Columns outside the map are clamped reads masked to zero, not branches, so a lane's
// four outputs run in lockstep.

const SEG: u32 = 4u;

// The segment of lane t of an image: (channel, row, first column) over `rows` rows of `cols`
// columns; the channel is past the last for the lanes past the image's last segment.
fn segment(t: u32, rows: u32, cols: u32) -> vec3<u32> {
    let segs = (cols + SEG - 1u) / SEG;
    let row = quot(t, segs);
    let c = quot(row, rows);
    return vec3<u32>(c, row - c * rows, (t - row * segs) * SEG);
}

// Which of a segment's columns `col` lie in [0, n), and those columns clamped into it (the
// address of a read whose value the mask then drops).
fn inside(col: vec4<i32>, n: u32) -> vec4<bool> {
    return (col >= vec4<i32>(0)) & (col < vec4<i32>(i32(n)));
}
fn clamped(col: vec4<i32>, n: u32) -> vec4<u32> {
    return vec4<u32>(clamp(col, vec4<i32>(0), vec4<i32>(i32(n) - 1)));
}

@group(0) @binding(1) var<storage, read> dw_x: array<f32>;
@group(0) @binding(2) var<storage, read> dw_w: array<f32>;
@group(0) @binding(3) var<storage, read> dw_bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> dw_y: array<f32>;

@compute @workgroup_size(64)
fn conv_forward_depthwise(@builtin(workgroup_id) wid: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let seg = segment(wid.x * WG + lid, params.ho, params.wo);
    let c = seg.x;
    if (c >= params.cout) {
        return;
    }
    let oh = seg.y;
    let rows = tap_range(oh, params.kh, params.sh, params.ph, params.h);
    let top = oh * params.sh - params.ph;
    // Each output's first input column (negative inside the left padding).
    let ow = vec4<u32>(seg.z) + vec4<u32>(0u, 1u, 2u, 3u);
    let left = vec4<i32>(ow * params.sw) - vec4<i32>(i32(params.pw));
    let plane = (wid.z * params.cin + c) * params.h * params.w;
    var acc = vec4<f32>(select(0.0, dw_bias[c], params.bias == 1u));
    for (var i = rows.x; i < rows.y; i = i + 1u) {
        // top + i wraps around u32 only for rows outside the map, never taken.
        let x_row = plane + (top + i) * params.w;
        let w_row = (c * params.kh + i) * params.kw;
        for (var j = 0u; j < params.kw; j = j + 1u) {
            let col = left + vec4<i32>(i32(j));
            let at = clamped(col, params.w) + vec4<u32>(x_row);
            let x = vec4<f32>(dw_x[at.x], dw_x[at.y], dw_x[at.z], dw_x[at.w]);
            acc = fma(select(vec4<f32>(0.0), x, inside(col, params.w)), vec4<f32>(dw_w[w_row + j]), acc);
        }
    }
    let out = ((wid.z * params.cout + c) * params.ho + oh) * params.wo + seg.z;
    let valid = params.wo - seg.z;
    dw_y[out] = acc.x;
    if (valid > 1u) { dw_y[out + 1u] = acc.y; }
    if (valid > 2u) { dw_y[out + 2u] = acc.z; }
    if (valid > 3u) { dw_y[out + 3u] = acc.w; }
}

// dx[n, c, ih, iw] = Σ dy[n, c, oh, ow] · w[c, 0, ih + ph − oh·sh, iw + pw − ow·sw] over the
// output positions whose window covers (ih, iw): the rows from covering, the columns per tap j,
// ow = (iw + pw − j) / sw where that divides exactly and lands in [0, wo).
@group(0) @binding(1) var<storage, read> dbi_dy: array<f32>;
@group(0) @binding(2) var<storage, read> dbi_w: array<f32>;
@group(0) @binding(3) var<storage, read_write> dbi_dx: array<f32>;

@compute @workgroup_size(64)
fn conv_backward_input_depthwise(@builtin(workgroup_id) wid: vec3<u32>,
                                 @builtin(local_invocation_index) lid: u32) {
    let seg = segment(wid.x * WG + lid, params.h, params.w);
    let c = seg.x;
    if (c >= params.cin) {
        return;
    }
    // Padded row and columns.
    let ih = seg.y + params.ph;
    let iw = vec4<i32>(vec4<u32>(seg.z + params.pw) + vec4<u32>(0u, 1u, 2u, 3u));
    let rows = covering(ih, params.kh, params.sh, params.ho);
    let out_plane = (wid.z * params.cout + c) * params.ho * params.wo;
    var acc = vec4<f32>(0.0);
    // Columns outside: the division and the mask are per tap column, the same on every row.
    for (var j = 0u; j < params.kw; j = j + 1u) {
        let num = iw - vec4<i32>(i32(j));
        let ow = vec4<i32>(quot4(vec4<u32>(max(num, vec4<i32>(0))), params.sw));
        let hit = inside(num, params.wo * params.sw) & (ow * i32(params.sw) == num);
        let at = clamped(ow, params.wo) + vec4<u32>(out_plane);
        for (var oh = rows.x; oh < rows.y; oh = oh + 1u) {
            let dy_row = oh * params.wo;
            let dy = vec4<f32>(dbi_dy[at.x + dy_row], dbi_dy[at.y + dy_row], dbi_dy[at.z + dy_row],
                               dbi_dy[at.w + dy_row]);
            let w = dbi_w[(c * params.kh + ih - oh * params.sh) * params.kw + j];
            acc = fma(select(vec4<f32>(0.0), dy, hit), vec4<f32>(w), acc);
        }
    }
    let out = ((wid.z * params.cin + c) * params.h + seg.y) * params.w + seg.z;
    let valid = params.w - seg.z;
    dbi_dx[out] = acc.x;
    if (valid > 1u) { dbi_dx[out + 1u] = acc.y; }
    if (valid > 2u) { dbi_dx[out + 2u] = acc.z; }
    if (valid > 3u) { dbi_dx[out + 3u] = acc.w; }
}
