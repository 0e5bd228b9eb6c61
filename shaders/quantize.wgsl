// Fake quantisation for quantisation-aware training, as PyTorch's FakeQuantize does it:
//   observe             an observer per channel (or one per tensor) tracks the range of what it
//                       sees with a moving average, min ← min + c·(batch min − min) (the first
//                       batch sets it), and turns it into a scale and a zero point: symmetric
//                       (weights: scale = max(|min|, |max|) / ((qmax − qmin) / 2), zero point 0,
//                       or 128 for an unsigned range) or affine (activations: the range widened
//                       to hold 0, scale = (max − min) / (qmax − qmin), zero point
//                       qmin − round(min / scale), clamped). Scales never fall below f32's
//                       epsilon.
//   fake_quant          y = (clamp(round(x / scale) + zp, qmin, qmax) − zp) · scale, rounding half
//                       to even (PyTorch's nearbyint), through x · (1 / scale) as PyTorch does;
//   fake_quant_backward the straight-through estimator: dy where round(x / scale) + zp lies in
//                       [qmin, qmax], 0 where the forward pass clamped.
// Element i belongs to channel (i / inner) % channels: a weight [out, in, k, k] quantised per
// output channel has channels = out and inner = in·k·k; a tensor quantised as a whole has one.
// The observer's state is (min, max) per channel, starting at (f32 max, −f32 max): min > max
// marks a channel that has seen nothing yet. Scale and zero point are stored as f32 pairs.

struct Params {
    n: u32,
    channels: u32,
    inner: u32,
    qmin: i32,
    qmax: i32,
    symmetric: u32,
    averaging: f32,
    // observe_partial/observe_finish: workgroups (chunks of CHUNK elements) per channel.
    chunks: u32,
}

const WG: u32 = 256u;
// Elements one workgroup of observe_partial folds: 16 per invocation.
const CHUNK: u32 = 4096u;
const EPS: f32 = 1.1920929e-7;

@group(0) @binding(0) var<uniform> params: Params;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// The grid point of x: round(x / scale) + zero point, before clamping.
fn grid_point(x: f32, scale: f32, zero_point: f32) -> f32 {
    return round(x * (1.0 / scale)) + zero_point;
}

// observe: one workgroup per channel (channels with few elements each: weights).
@group(0) @binding(1) var<storage, read> obs_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> obs_range: array<f32>;
@group(0) @binding(3) var<storage, read_write> obs_qparams: array<f32>;

var<workgroup> lo: array<f32, WG>;
var<workgroup> hi: array<f32, WG>;

// The workgroup's min of every invocation's mn and max of its mx, in lo[0] and hi[0].
fn reduce_workgroup(lid: u32, mn: f32, mx: f32) {
    lo[lid] = mn;
    hi[lid] = mx;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            lo[lid] = min(lo[lid], lo[lid + stride]);
            hi[lid] = max(hi[lid], hi[lid + stride]);
        }
        workgroupBarrier();
    }
}

// Folds a batch's range into channel c's moving average and writes its scale and zero point.
fn update_channel(c: u32, batch_min: f32, batch_max: f32) {
    var new_min = batch_min;
    var new_max = batch_max;
    let old_min = obs_range[2u * c];
    let old_max = obs_range[2u * c + 1u];
    if (old_min <= old_max) {
        new_min = old_min + params.averaging * (new_min - old_min);
        new_max = old_max + params.averaging * (new_max - old_max);
    }
    obs_range[2u * c] = new_min;
    obs_range[2u * c + 1u] = new_max;
    let min_neg = min(new_min, 0.0);
    let max_pos = max(new_max, 0.0);
    let levels = f32(params.qmax - params.qmin);
    var scale: f32;
    var zero_point: i32;
    if (params.symmetric != 0u) {
        scale = max(max(-min_neg, max_pos) / (levels / 2.0), EPS);
        zero_point = select(0, 128, params.qmin >= 0);
    } else {
        scale = max((max_pos - min_neg) / levels, EPS);
        zero_point = clamp(params.qmin - i32(round(min_neg / scale)), params.qmin, params.qmax);
    }
    obs_qparams[2u * c] = scale;
    obs_qparams[2u * c + 1u] = f32(zero_point);
}

@compute @workgroup_size(256)
fn observe(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let c = wid.x + wid.y * nwg.x;
    if (c >= params.channels) {
        return;
    }
    // The channel's elements: outer blocks of `inner` consecutive values, `channels·inner` apart.
    let per_channel = params.n / params.channels;
    // f32's largest finite value, by its bits: a decimal literal of it rounds past f32 in Tint.
    let largest = bitcast<f32>(0x7f7fffffu);
    var mn = largest;
    var mx = -largest;
    for (var k = lid; k < per_channel; k += WG) {
        let outer = k / params.inner;
        let i = (outer * params.channels + c) * params.inner + k % params.inner;
        let v = obs_x[i];
        mn = min(mn, v);
        mx = max(mx, v);
    }
    reduce_workgroup(lid, mn, mx);
    if (lid == 0u) {
        update_channel(c, lo[0], hi[0]);
    }
}

// observe_partial then observe_finish: the same for channels with many elements each (a whole
// activation tensor), in two passes so that the first spreads over many workgroups. Pass one:
// workgroup (c, j) writes the min and max of chunk j of channel c.
@group(0) @binding(1) var<storage, read> part_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> part_out: array<f32>;

@compute @workgroup_size(256)
fn observe_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= params.channels * params.chunks) {
        return;
    }
    let c = g / params.chunks;
    let start = (g % params.chunks) * CHUNK;
    let per_channel = params.n / params.channels;
    let end = min(start + CHUNK, per_channel);
    let largest = bitcast<f32>(0x7f7fffffu);
    var mn = largest;
    var mx = -largest;
    for (var k = start + lid; k < end; k += WG) {
        let v = part_x[((k / params.inner) * params.channels + c) * params.inner + k % params.inner];
        mn = min(mn, v);
        mx = max(mx, v);
    }
    reduce_workgroup(lid, mn, mx);
    if (lid == 0u) {
        part_out[2u * g] = lo[0];
        part_out[2u * g + 1u] = hi[0];
    }
}

// Pass two: one workgroup per channel folds its chunks' extremes and updates the observer.
// (update_channel writes obs_range and obs_qparams, bindings 2 and 3.)
@group(0) @binding(1) var<storage, read> fin_parts: array<f32>;

@compute @workgroup_size(256)
fn observe_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let c = wid.x + wid.y * nwg.x;
    if (c >= params.channels) {
        return;
    }
    let largest = bitcast<f32>(0x7f7fffffu);
    var mn = largest;
    var mx = -largest;
    for (var j = lid; j < params.chunks; j += WG) {
        mn = min(mn, fin_parts[2u * (c * params.chunks + j)]);
        mx = max(mx, fin_parts[2u * (c * params.chunks + j) + 1u]);
    }
    reduce_workgroup(lid, mn, mx);
    if (lid == 0u) {
        update_channel(c, lo[0], hi[0]);
    }
}

@group(0) @binding(1) var<storage, read> fq_x: array<f32>;
@group(0) @binding(2) var<storage, read> fq_qparams: array<f32>;
@group(0) @binding(3) var<storage, read_write> fq_y: array<f32>;

@compute @workgroup_size(256)
fn fake_quant(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= params.n) {
        return;
    }
    let c = (i / params.inner) % params.channels;
    let scale = fq_qparams[2u * c];
    let zero_point = fq_qparams[2u * c + 1u];
    let q = clamp(grid_point(fq_x[i], scale, zero_point), f32(params.qmin), f32(params.qmax));
    fq_y[i] = (q - zero_point) * scale;
}

@group(0) @binding(1) var<storage, read> fqb_x: array<f32>;
@group(0) @binding(2) var<storage, read> fqb_qparams: array<f32>;
@group(0) @binding(3) var<storage, read> fqb_dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> fqb_dx: array<f32>;

@compute @workgroup_size(256)
fn fake_quant_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= params.n) {
        return;
    }
    let c = (i / params.inner) % params.channels;
    let q = grid_point(fqb_x[i], fqb_qparams[2u * c], fqb_qparams[2u * c + 1u]);
    let inside = q >= f32(params.qmin) && q <= f32(params.qmax);
    fqb_dx[i] = select(0.0, fqb_dy[i], inside);
}
