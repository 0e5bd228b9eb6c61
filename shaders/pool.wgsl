// 2-D pooling over NCHW tensors, forward and backward, as PyTorch computes it (floor mode;
// max pooling ignores padding, average pooling counts it: count_include_pad = true).
// quot and covering come from shaders/common/index.wgsl, prepended.
// Backward passes gather rather than scatter: each input element sums over the output windows
// that contain it, so no atomics are needed and results are deterministic.

struct Params {
    planes: u32,
    h: u32,
    w: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    // Max pooling backward: 1 when the pooled input is a ReLU's output whose backward pass is
    // fused here: the gradient passes only where the window's maximum (the pooled value) is
    // positive, where the ReLU's did.
    relu_mask: u32,
}

const WG: u32 = 256u;
const LOWEST: f32 = -3.402823e38;

@group(0) @binding(0) var<uniform> params: Params;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// Max pooling runs on a grid of (chunks of 64 positions within a plane, planes folded over y and
// z): the plane is the same for every lane, and the position's row and column come from quot.
// Returns (plane, position), or NONE past the end.
const NONE: u32 = 0xffffffffu;

fn plane_position(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, per_plane: u32) -> vec2<u32> {
    let plane = wid.y + wid.z * nwg.y;
    let pos = wid.x * 64u + lid;
    if (plane >= params.planes || pos >= per_plane) {
        return vec2<u32>(NONE, NONE);
    }
    return vec2<u32>(plane, pos);
}

// ---- max pooling ----------------------------------------------------------------------------
@group(0) @binding(1) var<storage, read> max_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> max_y: array<f32>;
// Index of the maximum within its plane (ih·W + iw), for the backward pass.
@group(0) @binding(3) var<storage, read_write> max_arg: array<i32>;

@compute @workgroup_size(64)
fn max_pool_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let per_plane = params.ho * params.wo;
    let at = plane_position(wid, nwg, lid, per_plane);
    if (at.x == NONE) {
        return;
    }
    let plane = at.x;
    let o = plane * per_plane + at.y;
    let oh = quot(at.y, params.wo);
    let ow = at.y - oh * params.wo;
    var best = LOWEST;
    var arg = -1;
    for (var i = 0u; i < params.kh; i = i + 1u) {
        let ih = i32(oh * params.sh + i) - i32(params.ph);
        if (ih < 0 || ih >= i32(params.h)) {
            continue;
        }
        for (var j = 0u; j < params.kw; j = j + 1u) {
            let iw = i32(ow * params.sw + j) - i32(params.pw);
            if (iw < 0 || iw >= i32(params.w)) {
                continue;
            }
            let idx = ih * i32(params.w) + iw;
            let v = max_x[plane * params.h * params.w + u32(idx)];
            // Strictly greater keeps the first maximum, as PyTorch does.
            if (v > best || arg < 0) {
                best = v;
                arg = idx;
            }
        }
    }
    max_y[o] = best;
    max_arg[o] = arg;
}

// 2 × 2 windows at stride 2 without padding on maps of even width: each window is two aligned
// pairs, read as two vec2 (two loads, not four: on lavapipe a lane's loads, each at its own
// address, are what this kernel waits on). The same maximum and argmax as max_pool_forward: the
// first maximum in row-major order, strictly greater replacing it.
@group(0) @binding(1) var<storage, read> max2_x: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> max2_y: array<f32>;
@group(0) @binding(3) var<storage, read_write> max2_arg: array<i32>;

@compute @workgroup_size(64)
fn max_pool_forward_2x2(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let per_plane = params.ho * params.wo;
    let at = plane_position(wid, nwg, lid, per_plane);
    if (at.x == NONE) {
        return;
    }
    let o = at.x * per_plane + at.y;
    let oh = quot(at.y, params.wo);
    let ow = at.y - oh * params.wo;
    let idx = 2u * oh * params.w + 2u * ow;
    let pair = (at.x * params.h * params.w + idx) / 2u;
    let top = max2_x[pair];
    let bottom = max2_x[pair + params.w / 2u];
    var best = top.x;
    var arg = idx;
    if (top.y > best) {
        best = top.y;
        arg = idx + 1u;
    }
    if (bottom.x > best) {
        best = bottom.x;
        arg = idx + params.w;
    }
    if (bottom.y > best) {
        best = bottom.y;
        arg = idx + params.w + 1u;
    }
    max2_y[o] = best;
    max2_arg[o] = i32(arg);
}

@group(0) @binding(1) var<storage, read> maxb_arg: array<i32>;
@group(0) @binding(2) var<storage, read> maxb_dy: array<f32>;
// The pooled output (read when relu_mask is 1).
@group(0) @binding(3) var<storage, read> maxb_y: array<f32>;
@group(0) @binding(4) var<storage, read_write> maxb_dx: array<f32>;

// dy[o], or 0 where the fused ReLU mask stops it.
fn pooled_grad(o: u32) -> f32 {
    let g = maxb_dy[o];
    if (params.relu_mask == 1u && !(maxb_y[o] > 0.0)) {
        return 0.0;
    }
    return g;
}

@compute @workgroup_size(64)
fn max_pool_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let per_plane = params.h * params.w;
    let at = plane_position(wid, nwg, lid, per_plane);
    if (at.x == NONE) {
        return;
    }
    let plane = at.x;
    let x = plane * per_plane + at.y;
    let ih = quot(at.y, params.w);
    let iw = at.y - ih * params.w;
    let rows = covering(ih + params.ph, params.kh, params.sh, params.ho);
    let cols = covering(iw + params.pw, params.kw, params.sw, params.wo);
    let me = i32(ih * params.w + iw);
    var acc = 0.0;
    for (var oh = rows.x; oh < rows.y; oh = oh + 1u) {
        for (var ow = cols.x; ow < cols.y; ow = ow + 1u) {
            let o = plane * params.ho * params.wo + oh * params.wo + ow;
            if (maxb_arg[o] == me) {
                acc = acc + pooled_grad(o);
            }
        }
    }
    maxb_dx[x] = acc;
}

// max_pool_backward_tiled for 2 × 2 windows: the window's two pairs written as two vec2 (the
// other bindings are max_pool_backward's).
@group(0) @binding(4) var<storage, read_write> max2b_dx: array<vec2<f32>>;

@compute @workgroup_size(64)
fn max_pool_backward_2x2(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let per_plane = params.ho * params.wo;
    let at = plane_position(wid, nwg, lid, per_plane);
    if (at.x == NONE) {
        return;
    }
    let o = at.x * per_plane + at.y;
    let oh = quot(at.y, params.wo);
    let ow = at.y - oh * params.wo;
    let g = pooled_grad(o);
    // The argmax's place in the window: 0, 1 (top row), 2, 3 (bottom row).
    let arg = u32(maxb_arg[o]);
    let idx = 2u * oh * params.w + 2u * ow;
    let k = select(0u, 2u, arg >= idx + params.w) + (arg & 1u);
    let pair = (at.x * params.h * params.w + idx) / 2u;
    max2b_dx[pair] = vec2<f32>(select(0.0, g, k == 0u), select(0.0, g, k == 1u));
    max2b_dx[pair + params.w / 2u] = vec2<f32>(select(0.0, g, k == 2u), select(0.0, g, k == 3u));
}

// Windows that tile the input exactly (stride = window, no padding, H = Ho·kh, W = Wo·kw): each
// input lies in one window, so one invocation per output writes its whole window, the gradient
// at the argmax and zeros elsewhere, with no search over covering windows (twice as fast on
// lavapipe as the gather above for 2×2 pooling). Still deterministic: every dx is written once.
@compute @workgroup_size(64)
fn max_pool_backward_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let per_plane = params.ho * params.wo;
    let at = plane_position(wid, nwg, lid, per_plane);
    if (at.x == NONE) {
        return;
    }
    let plane = at.x;
    let o = plane * per_plane + at.y;
    let oh = quot(at.y, params.wo);
    let ow = at.y - oh * params.wo;
    let arg = maxb_arg[o];
    let g = pooled_grad(o);
    let base = plane * params.h * params.w;
    for (var i = 0u; i < params.kh; i = i + 1u) {
        let row = (oh * params.kh + i) * params.w + ow * params.kw;
        for (var j = 0u; j < params.kw; j = j + 1u) {
            maxb_dx[base + row + j] = select(0.0, g, i32(row + j) == arg);
        }
    }
}

// ---- average pooling ------------------------------------------------------------------------
@group(0) @binding(1) var<storage, read> avg_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> avg_out: array<f32>;

@compute @workgroup_size(256)
fn avg_pool_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let o = linear_index(wid, nwg, lid);
    let per_plane = params.ho * params.wo;
    if (o >= params.planes * per_plane) {
        return;
    }
    let plane = o / per_plane;
    let oh = (o % per_plane) / params.wo;
    let ow = o % params.wo;
    var acc = 0.0;
    for (var i = 0u; i < params.kh; i = i + 1u) {
        let ih = i32(oh * params.sh + i) - i32(params.ph);
        for (var j = 0u; j < params.kw; j = j + 1u) {
            let iw = i32(ow * params.sw + j) - i32(params.pw);
            if (ih >= 0 && ih < i32(params.h) && iw >= 0 && iw < i32(params.w)) {
                acc = acc + avg_in[plane * params.h * params.w + u32(ih) * params.w + u32(iw)];
            }
        }
    }
    avg_out[o] = acc / f32(params.kh * params.kw);
}

@compute @workgroup_size(256)
fn avg_pool_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let x = linear_index(wid, nwg, lid);
    let per_plane = params.h * params.w;
    if (x >= params.planes * per_plane) {
        return;
    }
    let plane = x / per_plane;
    let ih = (x % per_plane) / params.w;
    let iw = x % params.w;
    let rows = covering(ih + params.ph, params.kh, params.sh, params.ho);
    let cols = covering(iw + params.pw, params.kw, params.sw, params.wo);
    var acc = 0.0;
    for (var oh = rows.x; oh < rows.y; oh = oh + 1u) {
        for (var ow = cols.x; ow < cols.y; ow = ow + 1u) {
            acc = acc + avg_in[plane * params.ho * params.wo + oh * params.wo + ow];
        }
    }
    avg_out[x] = acc / f32(params.kh * params.kw);
}

// ---- global average pooling backward: dx[plane, i] = dy[plane] / (H·W) ----------------------
// (The forward pass is a mean over the last axis: reduce.wgsl's reduce_axis.)
@compute @workgroup_size(256)
fn global_avg_pool_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let x = linear_index(wid, nwg, lid);
    let per_plane = params.h * params.w;
    if (x < params.planes * per_plane) {
        avg_out[x] = avg_in[x / per_plane] / f32(per_plane);
    }
}

// ---- adaptive average pooling (PyTorch's adaptive_avg_pool2d) --------------------------------
// Output cell (i, j) of an (ho, wo) grid averages input rows ⌊i·h/ho⌋ … ⌈(i+1)·h/ho⌉ − 1 and the
// columns likewise; windows overlap when ho does not divide h. The backward pass gathers: input
// row y lies in the windows of output rows ⌊y·ho/h⌋ … ⌈(y+1)·ho/h⌉ − 1.
fn window_start(i: u32, n: u32, out: u32) -> u32 {
    return i * n / out;
}

fn window_end(i: u32, n: u32, out: u32) -> u32 {
    return ((i + 1u) * n + out - 1u) / out;
}

@compute @workgroup_size(256)
fn adaptive_avg_pool_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let o = linear_index(wid, nwg, lid);
    let per_plane = params.ho * params.wo;
    if (o >= params.planes * per_plane) {
        return;
    }
    let plane = o / per_plane;
    let oh = (o % per_plane) / params.wo;
    let ow = o % params.wo;
    let h0 = window_start(oh, params.h, params.ho);
    let h1 = window_end(oh, params.h, params.ho);
    let w0 = window_start(ow, params.w, params.wo);
    let w1 = window_end(ow, params.w, params.wo);
    var acc = 0.0;
    for (var ih = h0; ih < h1; ih = ih + 1u) {
        for (var iw = w0; iw < w1; iw = iw + 1u) {
            acc = acc + avg_in[(plane * params.h + ih) * params.w + iw];
        }
    }
    avg_out[o] = acc / f32((h1 - h0) * (w1 - w0));
}

@compute @workgroup_size(256)
fn adaptive_avg_pool_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(local_invocation_index) lid: u32) {
    let x = linear_index(wid, nwg, lid);
    let per_plane = params.h * params.w;
    if (x >= params.planes * per_plane) {
        return;
    }
    let plane = x / per_plane;
    let ih = (x % per_plane) / params.w;
    let iw = x % params.w;
    let rows = vec2<u32>(window_start(ih, params.ho, params.h), window_end(ih, params.ho, params.h));
    let cols = vec2<u32>(window_start(iw, params.wo, params.w), window_end(iw, params.wo, params.w));
    var acc = 0.0;
    for (var oh = rows.x; oh < rows.y; oh = oh + 1u) {
        let area_h = window_end(oh, params.h, params.ho) - window_start(oh, params.h, params.ho);
        for (var ow = cols.x; ow < cols.y; ow = ow + 1u) {
            let area_w = window_end(ow, params.w, params.wo) - window_start(ow, params.w, params.wo);
            acc = acc + avg_in[(plane * params.ho + oh) * params.wo + ow] / f32(area_h * area_w);
        }
    }
    avg_out[x] = acc;
}
