// Batch normalisation over x viewed as [N, C, S] (S = H·W for 2-D maps, 1 for features), as
// PyTorch's BatchNorm: training normalises with the batch's mean and biased variance and moves
// the running statistics by `momentum` (the running variance is unbiased); evaluation uses the
// running statistics. Per-channel sums are done in order by one invocation per channel.
//
// stats is [4, C]: mean, 1/sqrt(var + eps), and (after backward_reduce) dgamma, dbeta.

struct Params {
    n: u32,
    c: u32,
    s: u32,
    _pad: u32,
    eps: f32,
    momentum: f32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, wg: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * wg + lid;
}

fn at(n: u32, c: u32, s: u32) -> u32 {
    return (n * params.c + c) * params.s + s;
}

// ---- training statistics ----------------------------------------------------------------------
@group(0) @binding(1) var<storage, read> st_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> st_stats: array<f32>;
@group(0) @binding(3) var<storage, read_write> st_running_mean: array<f32>;
@group(0) @binding(4) var<storage, read_write> st_running_var: array<f32>;

@compute @workgroup_size(64)
fn batch_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let c = linear_index(wid, nwg, lid, WG);
    if (c >= params.c) {
        return;
    }
    let count = f32(params.n * params.s);
    var sum = 0.0;
    for (var n = 0u; n < params.n; n = n + 1u) {
        for (var s = 0u; s < params.s; s = s + 1u) {
            sum = sum + st_x[at(n, c, s)];
        }
    }
    let mean = sum / count;
    var sq = 0.0;
    for (var n = 0u; n < params.n; n = n + 1u) {
        for (var s = 0u; s < params.s; s = s + 1u) {
            let d = st_x[at(n, c, s)] - mean;
            sq = sq + d * d;
        }
    }
    let var_biased = sq / count;
    st_stats[c] = mean;
    st_stats[params.c + c] = 1.0 / sqrt(var_biased + params.eps);
    let unbiased = select(var_biased, sq / (count - 1.0), count > 1.0);
    st_running_mean[c] = (1.0 - params.momentum) * st_running_mean[c] + params.momentum * mean;
    st_running_var[c] = (1.0 - params.momentum) * st_running_var[c] + params.momentum * unbiased;
}

// ---- normalise with batch statistics: y = (x − mean)·invstd·gamma + beta --------------------
@group(0) @binding(1) var<storage, read> tr_x: array<f32>;
@group(0) @binding(2) var<storage, read> tr_stats: array<f32>;
@group(0) @binding(3) var<storage, read> tr_gamma: array<f32>;
@group(0) @binding(4) var<storage, read> tr_beta: array<f32>;
@group(0) @binding(5) var<storage, read_write> tr_y: array<f32>;

@compute @workgroup_size(256)
fn normalize_train(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= params.n * params.c * params.s) {
        return;
    }
    let c = (i / params.s) % params.c;
    tr_y[i] = (tr_x[i] - tr_stats[c]) * tr_stats[params.c + c] * tr_gamma[c] + tr_beta[c];
}

// ---- evaluation: running statistics ---------------------------------------------------------
@group(0) @binding(1) var<storage, read> ev_x: array<f32>;
@group(0) @binding(2) var<storage, read> ev_running_mean: array<f32>;
@group(0) @binding(3) var<storage, read> ev_running_var: array<f32>;
@group(0) @binding(4) var<storage, read> ev_gamma: array<f32>;
@group(0) @binding(5) var<storage, read> ev_beta: array<f32>;
@group(0) @binding(6) var<storage, read_write> ev_y: array<f32>;

@compute @workgroup_size(256)
fn normalize_eval(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= params.n * params.c * params.s) {
        return;
    }
    let c = (i / params.s) % params.c;
    let invstd = 1.0 / sqrt(ev_running_var[c] + params.eps);
    ev_y[i] = (ev_x[i] - ev_running_mean[c]) * invstd * ev_gamma[c] + ev_beta[c];
}

// ---- backward (training): dgamma = Σ dy·x̂, dbeta = Σ dy per channel ------------------------
@group(0) @binding(1) var<storage, read> br_x: array<f32>;
@group(0) @binding(2) var<storage, read> br_dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> br_stats: array<f32>;
@group(0) @binding(4) var<storage, read_write> br_dgamma: array<f32>;
@group(0) @binding(5) var<storage, read_write> br_dbeta: array<f32>;

@compute @workgroup_size(64)
fn backward_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let c = linear_index(wid, nwg, lid, WG);
    if (c >= params.c) {
        return;
    }
    let mean = br_stats[c];
    let invstd = br_stats[params.c + c];
    var dg = 0.0;
    var db = 0.0;
    for (var n = 0u; n < params.n; n = n + 1u) {
        for (var s = 0u; s < params.s; s = s + 1u) {
            let k = at(n, c, s);
            dg = dg + br_dy[k] * (br_x[k] - mean) * invstd;
            db = db + br_dy[k];
        }
    }
    br_dgamma[c] = dg;
    br_dbeta[c] = db;
    br_stats[2u * params.c + c] = dg;
    br_stats[3u * params.c + c] = db;
}

// dx = gamma·invstd/M · (M·dy − dbeta − x̂·dgamma), M = N·S.
@group(0) @binding(1) var<storage, read> bx_x: array<f32>;
@group(0) @binding(2) var<storage, read> bx_dy: array<f32>;
@group(0) @binding(3) var<storage, read> bx_stats: array<f32>;
@group(0) @binding(4) var<storage, read> bx_gamma: array<f32>;
@group(0) @binding(5) var<storage, read_write> bx_dx: array<f32>;

@compute @workgroup_size(256)
fn backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 256u);
    if (i >= params.n * params.c * params.s) {
        return;
    }
    let c = (i / params.s) % params.c;
    let cc = params.c;
    let m = f32(params.n * params.s);
    let invstd = bx_stats[cc + c];
    let xhat = (bx_x[i] - bx_stats[c]) * invstd;
    bx_dx[i] = bx_gamma[c] * invstd / m * (m * bx_dy[i] - bx_stats[3u * cc + c] - xhat * bx_stats[2u * cc + c]);
}
