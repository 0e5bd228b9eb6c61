// Contrastive representation distillation (CRD) against memory banks. Each anchor b (a student
// or teacher embedding, (B, D)) is scored against n = K + 1 rows of the other side's bank
// (N, D), picked by the loader's indices idx (B, n): its own sample first, then K negatives.
// The rows are read where they lie in the bank, so no (B, n, D) copy is ever made; the op runner
// passes already gathered rows as a bank of B·n rows with idx[b, k] = b·n + k.
//
// With l = bank[idx[b, k]]·anchor[b] / T, x = exp(l) / Z and c = K / N, the NCE loss is
//   (1/B) Σ_b [log1p((c + ε)/x_b0) + Σ_{k≥1} log1p((x_bk + ε)/c)]
// (RepDistiller's ContrastLoss, rewritten without the cancellation of log(x + c) − log c), and
// its derivative with respect to l is −(c + ε)/(x + c + ε) at k = 0 and x/(x + c + ε) after.
// Z is a constant: set once from the first batch (N · mean exp(l)) when it is still 0.

struct Params {
    batch: u32,
    // Rows scored per anchor: K + 1.
    rows: u32,
    dim: u32,
    // Which slot of the Z buffer this side uses (0: student anchors, 1: teacher anchors).
    side: u32,
    inv_t: f32,
    n_data: f32,
    momentum: f32,
    pad: u32,
}

const WG: u32 = 64u;
const Z_WG: u32 = 256u;
const NCE_EPS: f32 = 1e-7;

@group(0) @binding(0) var<uniform> params: Params;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

var<workgroup> partial: array<f32, Z_WG>;

// The sum of every invocation's `v` in a workgroup of `size` invocations, in a fixed order
// (call from uniform control flow).
fn workgroup_sum(lid: u32, v: f32, size: u32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var stride = size / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    // Nobody overwrites the slots before everyone has read the total.
    workgroupBarrier();
    return total;
}

// log(1 + u) for u ≥ 0, accurate when u is tiny (WGSL has no log1p).
fn log1p(u: f32) -> f32 {
    let w = 1.0 + u;
    if (w == 1.0) {
        return u;
    }
    return log(w) * u / (w - 1.0);
}

// ---- scores: l[b, k] = bank[idx[b, k]]·anchor[b] / T -------------------------------------------
// One invocation per row. (Splitting a row over 8 invocations, or walking an anchor's rows in a
// workgroup with the offsets in workgroup memory, measured slower on lavapipe.)
@group(0) @binding(1) var<storage, read> sc_anchor: array<f32>;
@group(0) @binding(2) var<storage, read> sc_bank: array<f32>;
@group(0) @binding(3) var<storage, read> sc_idx: array<i32>;
@group(0) @binding(4) var<storage, read_write> sc_out: array<f32>;

@compute @workgroup_size(64)
fn crd_scores(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let e = linear_index(wid, nwg, lid);
    if (e >= params.batch * params.rows) {
        return;
    }
    let b = e / params.rows;
    let row = u32(sc_idx[e]) * params.dim;
    let a = b * params.dim;
    var dot = 0.0;
    for (var d = 0u; d < params.dim; d = d + 1u) {
        dot = dot + sc_bank[row + d] * sc_anchor[a + d];
    }
    sc_out[e] = dot * params.inv_t;
}

// The same reading four elements at a time (D a multiple of 4).
@group(0) @binding(1) var<storage, read> sc4_anchor: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> sc4_bank: array<vec4<f32>>;

@compute @workgroup_size(64)
fn crd_scores_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let e = linear_index(wid, nwg, lid);
    if (e >= params.batch * params.rows) {
        return;
    }
    let quads = params.dim / 4u;
    let row = u32(sc_idx[e]) * quads;
    let a = (e / params.rows) * quads;
    var acc = vec4<f32>(0.0);
    for (var q = 0u; q < quads; q = q + 1u) {
        acc = acc + sc4_bank[row + q] * sc4_anchor[a + q];
    }
    sc_out[e] = (acc.x + acc.y + acc.z + acc.w) * params.inv_t;
}

// ---- Z: set from this batch while it is 0, in one workgroup (a fixed summation order) ---------
@group(0) @binding(1) var<storage, read> z_scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> z_value: array<f32>;

var<workgroup> z_known: f32;

@compute @workgroup_size(256)
fn crd_z(@builtin(local_invocation_index) lid: u32) {
    // Once the first batch has set Z, every later step skips the B·(K+1) exponentials.
    if (lid == 0u) {
        z_known = z_value[params.side];
    }
    if (workgroupUniformLoad(&z_known) != 0.0) {
        return;
    }
    let n = params.batch * params.rows;
    var s = 0.0;
    for (var e = lid; e < n; e = e + Z_WG) {
        s = s + exp(z_scores[e]);
    }
    let total = workgroup_sum(lid, s, Z_WG);
    if (lid == 0u) {
        z_value[params.side] = params.n_data * total / f32(n);
    }
}

// ---- per anchor: the loss of its row and the coefficients of its gradient -------------------
// coef[b, k] = dL/dl[b, k] / (B·T), so grad[b] = Σ_k coef[b, k]·bank[idx[b, k]].
@group(0) @binding(1) var<storage, read> cf_scores: array<f32>;
@group(0) @binding(2) var<storage, read> cf_z: array<f32>;
@group(0) @binding(3) var<storage, read_write> cf_coef: array<f32>;
@group(0) @binding(4) var<storage, read_write> cf_loss: array<f32>;

@compute @workgroup_size(64)
fn crd_coef(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let b = group_index(wid, nwg);
    // b is the same for the whole workgroup, so this return keeps the barriers uniform.
    if (b >= params.batch) {
        return;
    }
    let z = cf_z[params.side];
    let c = f32(params.rows - 1u) / params.n_data;
    let inv_bt = params.inv_t / f32(params.batch);
    var l = 0.0;
    for (var k = lid; k < params.rows; k = k + WG) {
        let e = b * params.rows + k;
        let x = exp(cf_scores[e]) / z;
        let denom = x + c + NCE_EPS;
        if (k == 0u) {
            l = l + log1p((c + NCE_EPS) / x);
            cf_coef[e] = -(c + NCE_EPS) / denom * inv_bt;
        } else {
            l = l + log1p((x + NCE_EPS) / c);
            cf_coef[e] = x / denom * inv_bt;
        }
    }
    let total = workgroup_sum(lid, l, WG);
    if (lid == 0u) {
        cf_loss[b] = total / f32(params.batch);
    }
}

// ---- gradient: grad[b, d] = Σ_k coef[b, k]·bank[idx[b, k], d] ---------------------------------
// Neighbouring invocations read neighbouring elements of one bank row at a time.
@group(0) @binding(1) var<storage, read> gr_coef: array<f32>;
@group(0) @binding(2) var<storage, read> gr_bank: array<f32>;
@group(0) @binding(3) var<storage, read> gr_idx: array<i32>;
@group(0) @binding(4) var<storage, read_write> gr_out: array<f32>;

@compute @workgroup_size(64)
fn crd_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let o = linear_index(wid, nwg, lid);
    if (o >= params.batch * params.dim) {
        return;
    }
    let b = o / params.dim;
    let d = o % params.dim;
    var g = 0.0;
    for (var k = 0u; k < params.rows; k = k + 1u) {
        let e = b * params.rows + k;
        g = g + gr_coef[e] * gr_bank[u32(gr_idx[e]) * params.dim + d];
    }
    gr_out[o] = g;
}

// The same with four neighbouring elements per invocation (D a multiple of 4).
@group(0) @binding(2) var<storage, read> gr4_bank: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> gr4_out: array<vec4<f32>>;

@compute @workgroup_size(64)
fn crd_grad_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let o = linear_index(wid, nwg, lid);
    let quads = params.dim / 4u;
    if (o >= params.batch * quads) {
        return;
    }
    let b = o / quads;
    let q = o % quads;
    var g = vec4<f32>(0.0);
    for (var k = 0u; k < params.rows; k = k + 1u) {
        let e = b * params.rows + k;
        g = g + gr_coef[e] * gr4_bank[u32(gr_idx[e]) * quads + q];
    }
    gr4_out[o] = g;
}

// ---- the loss: both sides' rows, summed in order --------------------------------------------
@group(0) @binding(1) var<storage, read> tot_student: array<f32>;
@group(0) @binding(2) var<storage, read> tot_teacher: array<f32>;
@group(0) @binding(3) var<storage, read_write> tot_loss: array<f32>;

@compute @workgroup_size(1)
fn crd_total() {
    var s = 0.0;
    for (var b = 0u; b < params.batch; b = b + 1u) {
        s = s + tot_student[b] + tot_teacher[b];
    }
    tot_loss[0] = s;
}

// ---- the bank update: new[b] = l2(m·bank[idx[b, 0]] + (1 − m)·anchor[b]) -----------------------
@group(0) @binding(1) var<storage, read> up_anchor: array<f32>;
@group(0) @binding(2) var<storage, read> up_bank: array<f32>;
@group(0) @binding(3) var<storage, read> up_idx: array<i32>;
@group(0) @binding(4) var<storage, read_write> up_out: array<f32>;

@compute @workgroup_size(64)
fn crd_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let b = group_index(wid, nwg);
    if (b >= params.batch) {
        return;
    }
    let row = u32(up_idx[b * params.rows]) * params.dim;
    let m = params.momentum;
    var sq = 0.0;
    for (var d = lid; d < params.dim; d = d + WG) {
        let v = m * up_bank[row + d] + (1.0 - m) * up_anchor[b * params.dim + d];
        sq = sq + v * v;
    }
    let inv = 1.0 / sqrt(workgroup_sum(lid, sq, WG));
    for (var d = lid; d < params.dim; d = d + WG) {
        let v = m * up_bank[row + d] + (1.0 - m) * up_anchor[b * params.dim + d];
        up_out[b * params.dim + d] = v * inv;
    }
}

// ---- writing the updated rows back into the bank (training steps) --------------------------
@group(0) @binding(1) var<storage, read> sct_rows: array<f32>;
@group(0) @binding(2) var<storage, read> sct_idx: array<i32>;
@group(0) @binding(3) var<storage, read_write> sct_bank: array<f32>;

@compute @workgroup_size(64)
fn crd_scatter(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let o = linear_index(wid, nwg, lid);
    if (o >= params.batch * params.dim) {
        return;
    }
    let b = o / params.dim;
    let d = o % params.dim;
    sct_bank[u32(sct_idx[b * params.rows]) * params.dim + d] = sct_rows[o];
}
