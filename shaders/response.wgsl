// Response-based losses, fused: one invocation per row reads the row's logits, keeps running
// log-sum-exp states (max, Σ exp(z − max)) in registers, then writes the gradient and the row's
// loss partial in a second sweep over the same row. No probability tensor is ever written.
// The batch sum of the partials is done by reduce.wgsl, deterministically.
//
// grad_scale is 1/B for ce, T/B for kd and dkd, 1/(B·T) for js; the loss scale (1/B or T²/B)
// is applied by the reduction. The row kernels multiply their whole gradient, and nothing else,
// by grad_scale: a compiled step folds a term's weight into it (LossPlan::grad_scale). bce is
// elementwise (one invocation per element).
// balance couples the rows through the batch's mean softmax, so it takes three launches: each
// row's log-sum-exp, each class's mean probability, then each row's gradient.

struct Params {
    rows: u32,
    cols: u32,
    temperature: f32,
    alpha: f32,
    beta: f32,
    grad_scale: f32,
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 64u;
const LOWEST: f32 = -3.402823e38;
// DKD pushes the target logit out of the non-target softmax by this much (mdistiller).
const DKD_MASK: f32 = 1000.0;

@group(0) @binding(0) var<uniform> params: Params;

fn row_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// A quiet NaN, built at run time: WGSL forbids a constant expression whose value is NaN (Tint
// rejects `bitcast<f32>(0x7fc00000u)` written as a constant; a variable's value is not one).
fn nan() -> f32 {
    var bits = 0x7fc00000u;
    return bitcast<f32>(bits);
}

// Adds z to a running log-sum-exp state (max, Σ exp(z − max)).
fn lse_push(state: vec2<f32>, z: f32) -> vec2<f32> {
    if (z <= state.x) {
        return vec2<f32>(state.x, state.y + exp(z - state.x));
    }
    return vec2<f32>(z, state.y * exp(state.x - z) + 1.0);
}

fn lse_value(state: vec2<f32>) -> f32 {
    return state.x + log(state.y);
}

fn lse_empty() -> vec2<f32> {
    return vec2<f32>(LOWEST, 0.0);
}

// p (log p − log q), with 0 log 0 = 0.
fn kl_term(log_p: f32, log_q: f32) -> f32 {
    let p = exp(log_p);
    return select(0.0, p * (log_p - log_q), p > 0.0);
}

// ---- labelled rows ------------------------------------------------------------------------
// A negative label marks an unlabelled row (PyTorch's ignore_index): ce and dkd give it no loss
// and no gradient and take their mean over the batch's labelled rows. Every workgroup counts
// them (each lane a stride of the labels, then a tree in workgroup memory) and each row scales
// its loss and gradient by rows / labelled, so the launcher's 1/rows mean becomes 1/labelled;
// with every row labelled the factor is exactly 1.
var<workgroup> labelled_part: array<u32, WG>;

// The sum over the workgroup of each lane's `count`; every lane calls it (it has barriers).
fn workgroup_count(lid: u32, count: u32) -> u32 {
    labelled_part[lid] = count;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            labelled_part[lid] = labelled_part[lid] + labelled_part[lid + half];
        }
        workgroupBarrier();
    }
    return labelled_part[0];
}

// rows / (labelled rows) for a labelled row, 0 for an unlabelled one or a batch without labels.
fn labelled_share(label: i32, labelled: u32) -> f32 {
    return select(0.0, f32(params.rows) / f32(max(labelled, 1u)), label >= 0);
}

// ---- ce: −log_softmax(s)[y]; gradient softmax(s) − onehot(y) -------------------------------
@group(0) @binding(1) var<storage, read> ce_student: array<f32>;
@group(0) @binding(2) var<storage, read> ce_labels: array<i32>;
@group(0) @binding(3) var<storage, read_write> ce_grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> ce_row_loss: array<f32>;

@compute @workgroup_size(64)
fn ce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
      @builtin(local_invocation_index) lid: u32) {
    var mine = 0u;
    for (var k = lid; k < params.rows; k = k + WG) {
        mine = mine + select(0u, 1u, ce_labels[k] >= 0);
    }
    let labelled = workgroup_count(lid, mine);
    let r = row_index(wid, nwg, lid);
    if (r >= params.rows) {
        return;
    }
    let cols = params.cols;
    let base = r * cols;
    let label = ce_labels[r];
    // Launchers check labels on the host; one past the classes still never reads out of
    // bounds, and poisons the loss rather than giving a plausible wrong answer.
    let valid = label < 0 || u32(label) < cols;
    let y = select(0u, u32(label), label >= 0 && valid);
    let share = labelled_share(label, labelled);
    var st = lse_empty();
    for (var c = 0u; c < cols; c = c + 1u) {
        st = lse_push(st, ce_student[base + c]);
    }
    let lse = lse_value(st);
    ce_row_loss[r] = select(nan(), (lse - ce_student[base + y]) * share, valid);
    let scale = params.grad_scale * share;
    for (var c = 0u; c < cols; c = c + 1u) {
        let onehot = select(0.0, 1.0, c == y);
        ce_grad[base + c] = (exp(ce_student[base + c] - lse) - onehot) * scale;
    }
}

// ---- kd: Σ p_t (log p_t − log p_s) at temperature T; gradient p_s − p_t ----------------------
@group(0) @binding(1) var<storage, read> kd_student: array<f32>;
@group(0) @binding(2) var<storage, read> kd_teacher: array<f32>;
@group(0) @binding(3) var<storage, read_write> kd_grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> kd_row_loss: array<f32>;

@compute @workgroup_size(64)
fn kd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
      @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= params.rows) {
        return;
    }
    let base = r * params.cols;
    let inv_t = 1.0 / params.temperature;
    var ss = lse_empty();
    var st = lse_empty();
    for (var c = 0u; c < params.cols; c = c + 1u) {
        ss = lse_push(ss, kd_student[base + c] * inv_t);
        st = lse_push(st, kd_teacher[base + c] * inv_t);
    }
    let lse_s = lse_value(ss);
    let lse_t = lse_value(st);
    var loss = 0.0;
    for (var c = 0u; c < params.cols; c = c + 1u) {
        let log_ps = kd_student[base + c] * inv_t - lse_s;
        let log_pt = kd_teacher[base + c] * inv_t - lse_t;
        loss = loss + kl_term(log_pt, log_ps);
        kd_grad[base + c] = (exp(log_ps) - exp(log_pt)) * params.grad_scale;
    }
    kd_row_loss[r] = loss;
}

// ---- js: Jensen–Shannon divergence ½ KL(p‖m) + ½ KL(q‖m), m = (p + q)/2, of the softmaxes at
// temperature T; gradient in the first input's logits p_j (g_j − Σ_c p_c g_c) / T with
// g_c = ½ log(p_c / m_c) (the divergence is symmetric: swap the inputs for the other side's).
@group(0) @binding(1) var<storage, read> js_student: array<f32>;
@group(0) @binding(2) var<storage, read> js_teacher: array<f32>;
@group(0) @binding(3) var<storage, read_write> js_grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> js_row_loss: array<f32>;

// log m = log((p + q)/2) from the two log-probabilities, without forming p + q by exp of a
// large number.
fn log_mid(log_p: f32, log_q: f32) -> f32 {
    let hi = max(log_p, log_q);
    return hi + log(0.5 * (exp(log_p - hi) + exp(log_q - hi)));
}

@compute @workgroup_size(64)
fn js(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
      @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= params.rows) {
        return;
    }
    let base = r * params.cols;
    let inv_t = 1.0 / params.temperature;
    var sp = lse_empty();
    var sq = lse_empty();
    for (var c = 0u; c < params.cols; c = c + 1u) {
        sp = lse_push(sp, js_student[base + c] * inv_t);
        sq = lse_push(sq, js_teacher[base + c] * inv_t);
    }
    let lse_p = lse_value(sp);
    let lse_q = lse_value(sq);
    var loss = 0.0;
    // Σ_c p_c g_c, for the softmax's Jacobian.
    var mean_g = 0.0;
    for (var c = 0u; c < params.cols; c = c + 1u) {
        let log_p = js_student[base + c] * inv_t - lse_p;
        let log_q = js_teacher[base + c] * inv_t - lse_q;
        let log_m = log_mid(log_p, log_q);
        loss = loss + 0.5 * (kl_term(log_p, log_m) + kl_term(log_q, log_m));
        mean_g = mean_g + exp(log_p) * 0.5 * (log_p - log_m);
    }
    for (var c = 0u; c < params.cols; c = c + 1u) {
        let log_p = js_student[base + c] * inv_t - lse_p;
        let log_q = js_teacher[base + c] * inv_t - lse_q;
        let g = 0.5 * (log_p - log_mid(log_p, log_q));
        js_grad[base + c] = exp(log_p) * (g - mean_g) * params.grad_scale;
    }
    js_row_loss[r] = loss;
}

// ---- dkd: alpha·TCKD + beta·NCKD (decoupled KD) ---------------------------------------------
// It splits each row at its label, so unlabelled rows (negative labels) are left out as in ce.
@group(0) @binding(1) var<storage, read> dkd_student: array<f32>;
@group(0) @binding(2) var<storage, read> dkd_teacher: array<f32>;
@group(0) @binding(3) var<storage, read> dkd_labels: array<i32>;
@group(0) @binding(4) var<storage, read_write> dkd_grad: array<f32>;
@group(0) @binding(5) var<storage, read_write> dkd_row_loss: array<f32>;

@compute @workgroup_size(64)
fn dkd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    var mine = 0u;
    for (var k = lid; k < params.rows; k = k + WG) {
        mine = mine + select(0u, 1u, dkd_labels[k] >= 0);
    }
    let labelled = workgroup_count(lid, mine);
    let r = row_index(wid, nwg, lid);
    if (r >= params.rows) {
        return;
    }
    let cols = params.cols;
    let base = r * cols;
    let label = dkd_labels[r];
    let valid = label < 0 || u32(label) < cols;
    let y = select(0u, u32(label), label >= 0 && valid);
    let share = labelled_share(label, labelled);
    let inv_t = 1.0 / params.temperature;
    // Non-target log-sum-exp states; the full and masked states add the target back.
    var nts = lse_empty();
    var ntt = lse_empty();
    for (var c = 0u; c < cols; c = c + 1u) {
        if (c != y) {
            nts = lse_push(nts, dkd_student[base + c] * inv_t);
            ntt = lse_push(ntt, dkd_teacher[base + c] * inv_t);
        }
    }
    let zs_y = dkd_student[base + y] * inv_t;
    let zt_y = dkd_teacher[base + y] * inv_t;
    let lse_nt_s = lse_value(nts);
    let lse_nt_t = lse_value(ntt);
    let lse_s = lse_value(lse_push(nts, zs_y));
    let lse_t = lse_value(lse_push(ntt, zt_y));
    let lse_mask_s = lse_value(lse_push(nts, zs_y - DKD_MASK));
    let lse_mask_t = lse_value(lse_push(ntt, zt_y - DKD_MASK));

    // TCKD over the binary masses [target, rest], each in log space.
    let log_bs = vec2<f32>(zs_y - lse_s, lse_nt_s - lse_s);
    let log_bt = vec2<f32>(zt_y - lse_t, lse_nt_t - lse_t);
    let tckd = kl_term(log_bt.x, log_bs.x) + kl_term(log_bt.y, log_bs.y);
    let bt = exp(log_bt);

    var nckd = 0.0;
    for (var c = 0u; c < cols; c = c + 1u) {
        let is_y = c == y;
        let zs = dkd_student[base + c] * inv_t;
        let zt = dkd_teacher[base + c] * inv_t;
        let shift = select(0.0, DKD_MASK, is_y);
        let log_qs = zs - shift - lse_mask_s;
        let log_qt = zt - shift - lse_mask_t;
        nckd = nckd + kl_term(log_qt, log_qs);
        let ps = exp(zs - lse_s);
        // d TCKD / dz: p_s − b_t[0] at the target; p_s − b_t[1]·softmax_non-target(s) elsewhere.
        let d_tckd = select(ps - bt.y * exp(zs - lse_nt_s), ps - bt.x, is_y);
        let d_nckd = exp(log_qs) - exp(log_qt);
        dkd_grad[base + c] = (params.alpha * d_tckd + params.beta * d_nckd) * params.grad_scale * share;
    }
    dkd_row_loss[r] = select(nan(), (params.alpha * tckd + params.beta * nckd) * share, valid);
}

// ---- bce: binary cross-entropy with logits, per element: max(z, 0) − z·y + log(1 + e^−|z|);
// gradient σ(z) − y. Stable for any z: exp only of −|z|. log(1 + e): for e < 1/16 its series to
// e⁶ (relative error under 3e-8), since WGSL promises log only to an absolute 2⁻²¹ near 1,
// which would swamp a term of e^−|z|; above, log(1 + e) itself.
// Here `rows` counts elements and grad_scale is 1/N.
@group(0) @binding(1) var<storage, read> bce_logits: array<f32>;
@group(0) @binding(2) var<storage, read> bce_target: array<f32>;
@group(0) @binding(3) var<storage, read_write> bce_grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> bce_loss: array<f32>;

@compute @workgroup_size(64)
fn bce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = row_index(wid, nwg, lid);
    if (i >= params.rows) {
        return;
    }
    let z = bce_logits[i];
    let y = bce_target[i];
    let e = exp(-abs(z));
    let u = 1.0 + e;
    let series = e * (1.0 - e * (0.5 - e * (1.0 / 3.0 - e * (0.25 - e * (0.2 - e / 6.0)))));
    let log1p_e = select(log(u), series, e < 0.0625);
    let sigmoid = select(e / u, 1.0 / u, z >= 0.0);
    bce_grad[i] = (sigmoid - y) * params.grad_scale;
    bce_loss[i] = max(z, 0.0) - z * y + log1p_e;
}

// ---- balance: KL(p̄ ‖ uniform) = Σ_j p̄_j log(C p̄_j), p̄ = the batch mean of softmax(s) -------
// (DAFL's information-entropy term up to the constant log C: zero when the batch's predictions
// spread evenly over the classes.) Gradient in s[b, j]: p_bj (log p̄_j − Σ_k p_bk log p̄_k) / B.
// Launch 1, one invocation per row: lse[r] = log Σ_j exp(s[r, j]).
@group(0) @binding(1) var<storage, read> balance_rows_logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> balance_rows_lse: array<f32>;

@compute @workgroup_size(64)
fn balance_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= params.rows) {
        return;
    }
    let base = r * params.cols;
    var st = lse_empty();
    for (var c = 0u; c < params.cols; c = c + 1u) {
        st = lse_push(st, balance_rows_logits[base + c]);
    }
    balance_rows_lse[r] = lse_value(st);
}

// Launch 2, one invocation per class: log p̄_j (LOWEST where p̄_j underflowed to 0, so that
// p_bj · log p̄_j stays 0) and the class's loss term.
@group(0) @binding(1) var<storage, read> balance_mean_logits: array<f32>;
@group(0) @binding(2) var<storage, read> balance_mean_lse: array<f32>;
@group(0) @binding(3) var<storage, read_write> balance_mean_log: array<f32>;
@group(0) @binding(4) var<storage, read_write> balance_mean_loss: array<f32>;

@compute @workgroup_size(64)
fn balance_mean(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let j = row_index(wid, nwg, lid);
    if (j >= params.cols) {
        return;
    }
    var sum = 0.0;
    for (var r = 0u; r < params.rows; r = r + 1u) {
        sum = sum + exp(balance_mean_logits[r * params.cols + j] - balance_mean_lse[r]);
    }
    let mean = sum / f32(params.rows);
    let log_mean = select(LOWEST, log(mean), mean > 0.0);
    balance_mean_log[j] = log_mean;
    balance_mean_loss[j] = select(0.0, mean * (log_mean + log(f32(params.cols))), mean > 0.0);
}

// Launch 3, one invocation per row: the gradient (grad_scale is 1/B).
@group(0) @binding(1) var<storage, read> balance_grad_logits: array<f32>;
@group(0) @binding(2) var<storage, read> balance_grad_lse: array<f32>;
@group(0) @binding(3) var<storage, read> balance_grad_log_mean: array<f32>;
@group(0) @binding(4) var<storage, read_write> balance_grad_out: array<f32>;

@compute @workgroup_size(64)
fn balance_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= params.rows) {
        return;
    }
    let base = r * params.cols;
    let lse = balance_grad_lse[r];
    var expected = 0.0;
    for (var c = 0u; c < params.cols; c = c + 1u) {
        expected = expected + exp(balance_grad_logits[base + c] - lse) * balance_grad_log_mean[c];
    }
    for (var c = 0u; c < params.cols; c = c + 1u) {
        let p = exp(balance_grad_logits[base + c] - lse);
        balance_grad_out[base + c] = p * (balance_grad_log_mean[c] - expected) * params.grad_scale;
    }
}
