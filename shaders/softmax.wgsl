// Softmax and log-softmax over the last axis with a temperature, forward and backward.
// One invocation per row; the row maximum is subtracted before exponentiating.
//   softmax:      y = softmax(x / T);     dx = y ⊙ (dy − Σ dy ⊙ y) / T
//   log-softmax:  y = log_softmax(x / T); dx = (dy − exp(y) Σ dy) / T

struct Params {
    rows: u32,
    cols: u32,
    temperature: f32,
    _pad: u32,
}

const WG: u32 = 64u;
const LOWEST: f32 = -3.402823e38;

@group(0) @binding(0) var<uniform> params: Params;

fn row_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

@group(0) @binding(1) var<storage, read> fwd_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> fwd_y: array<f32>;

// The row's max of x/T and log Σ exp(x/T − max).
fn row_stats(base: u32) -> vec2<f32> {
    let inv_t = 1.0 / params.temperature;
    var m = LOWEST;
    for (var c = 0u; c < params.cols; c = c + 1u) {
        m = max(m, fwd_x[base + c] * inv_t);
    }
    var s = 0.0;
    for (var c = 0u; c < params.cols; c = c + 1u) {
        s = s + exp(fwd_x[base + c] * inv_t - m);
    }
    return vec2<f32>(m, log(s));
}

@compute @workgroup_size(64)
fn softmax_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= params.rows) {
        return;
    }
    let base = r * params.cols;
    let st = row_stats(base);
    let inv_t = 1.0 / params.temperature;
    for (var c = 0u; c < params.cols; c = c + 1u) {
        fwd_y[base + c] = exp(fwd_x[base + c] * inv_t - st.x - st.y);
    }
}

@compute @workgroup_size(64)
fn log_softmax_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= params.rows) {
        return;
    }
    let base = r * params.cols;
    let st = row_stats(base);
    let inv_t = 1.0 / params.temperature;
    for (var c = 0u; c < params.cols; c = c + 1u) {
        fwd_y[base + c] = fwd_x[base + c] * inv_t - st.x - st.y;
    }
}

@group(0) @binding(1) var<storage, read> bwd_y: array<f32>;
@group(0) @binding(2) var<storage, read> bwd_dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> bwd_dx: array<f32>;

@compute @workgroup_size(64)
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= params.rows) {
        return;
    }
    let base = r * params.cols;
    var dot = 0.0;
    for (var c = 0u; c < params.cols; c = c + 1u) {
        dot = dot + bwd_dy[base + c] * bwd_y[base + c];
    }
    let inv_t = 1.0 / params.temperature;
    for (var c = 0u; c < params.cols; c = c + 1u) {
        bwd_dx[base + c] = bwd_y[base + c] * (bwd_dy[base + c] - dot) * inv_t;
    }
}

@compute @workgroup_size(64)
fn log_softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= params.rows) {
        return;
    }
    let base = r * params.cols;
    var total = 0.0;
    for (var c = 0u; c < params.cols; c = c + 1u) {
        total = total + bwd_dy[base + c];
    }
    let inv_t = 1.0 / params.temperature;
    for (var c = 0u; c < params.cols; c = c + 1u) {
        bwd_dx[base + c] = (bwd_dy[base + c] - exp(bwd_y[base + c]) * total) * inv_t;
    }
}

// ---- multi-teacher targets: acc += weight · softmax(t / T), then out = T · log(acc) ----------
// A KD term at temperature T on `out` then sees exactly the weighted mixture of the teachers'
// softened distributions: softmax(T·log(acc) / T) = acc (acc sums to one).
struct MixParams {
    rows: u32,
    cols: u32,
    temperature: f32,
    weight: f32,
    // 1 for the first teacher: overwrite rather than add, so every step starts afresh.
    first: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> mix: MixParams;
@group(0) @binding(1) var<storage, read> mix_logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> mix_acc: array<f32>;

@compute @workgroup_size(64)
fn mixture_accumulate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= mix.rows) {
        return;
    }
    let base = r * mix.cols;
    let inv_t = 1.0 / mix.temperature;
    var m = LOWEST;
    for (var c = 0u; c < mix.cols; c = c + 1u) {
        m = max(m, mix_logits[base + c] * inv_t);
    }
    var s = 0.0;
    for (var c = 0u; c < mix.cols; c = c + 1u) {
        s = s + exp(mix_logits[base + c] * inv_t - m);
    }
    for (var c = 0u; c < mix.cols; c = c + 1u) {
        let before = select(mix_acc[base + c], 0.0, mix.first == 1u);
        mix_acc[base + c] = before + mix.weight * exp(mix_logits[base + c] * inv_t - m) / s;
    }
}

@group(0) @binding(1) var<storage, read> tl_acc: array<f32>;
@group(0) @binding(2) var<storage, read_write> tl_out: array<f32>;

@compute @workgroup_size(64)
fn temperature_log(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= mix.rows) {
        return;
    }
    for (var c = 0u; c < mix.cols; c = c + 1u) {
        let k = r * mix.cols + c;
        // A zero probability stays finite: the KD kernel treats exp(−huge) as a zero target.
        tl_out[k] = mix.temperature * log(max(tl_acc[k], 1e-30));
    }
}
