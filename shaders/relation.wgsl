// Relation-based losses over (B, D) embeddings: similarity preserving (SP), RKD distance and
// angle, PKT and correlation congruence (CC). Everything is built from B×B Gram matrices (computed by matmul.wgsl), so no
// kernel ever holds a B×B×D tensor: RKD angle's A_ijk = (e_j − e_i)·(e_k − e_i) /
// (‖e_j − e_i‖‖e_k − e_i‖) is read off the Gram matrix of the centred embeddings, and every
// gradient ends as C·E for a B×B coefficient matrix C (again a matmul).

struct Params {
    batch: u32,
    dim: u32,
    // cc: γ of the Gaussian kernel and the Taylor series' order; normalize_rows: ε in gamma.
    gamma: f32,
    order: u32,
}

const WG: u32 = 64u;
const EPS_CLAMP: f32 = 1e-12;
const PKT_EPS: f32 = 1e-7;

@group(0) @binding(0) var<uniform> params: Params;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

fn smooth_l1(x: f32) -> f32 {
    return select(abs(x) - 0.5, 0.5 * x * x, abs(x) < 1.0);
}

fn smooth_l1_grad(x: f32) -> f32 {
    return select(sign(x), x, abs(x) < 1.0);
}

// ---- shared building blocks -----------------------------------------------------------------

// out = f − mean over rows (per column). RKD is translation-invariant; centring first keeps the
// Gram-matrix differences well conditioned in f32.
@group(0) @binding(1) var<storage, read> center_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> center_out: array<f32>;

@compute @workgroup_size(64)
fn center(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let d = linear_index(wid, nwg, lid);
    let dim = params.dim;
    if (d >= dim) {
        return;
    }
    var sum = 0.0;
    for (var i = 0u; i < params.batch; i = i + 1u) {
        sum = sum + center_in[i * dim + d];
    }
    let mean = sum / f32(params.batch);
    for (var i = 0u; i < params.batch; i = i + 1u) {
        center_out[i * dim + d] = center_in[i * dim + d] - mean;
    }
}

// out = C + Cᵀ for a B×B matrix (the Gram matrix's gradient flows to both of its factors).
@group(0) @binding(1) var<storage, read> sym_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> sym_out: array<f32>;

@compute @workgroup_size(64)
fn symmetrize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let k = linear_index(wid, nwg, lid);
    let b = params.batch;
    if (k >= b * b) {
        return;
    }
    sym_out[k] = sym_in[k] + sym_in[(k % b) * b + k / b];
}

// ---- SP: G = normalize(F Fᵀ) row-wise; loss Σ (G_s − G_t)² / B² -----------------------------
@group(0) @binding(1) var<storage, read> sp_gs: array<f32>;
@group(0) @binding(2) var<storage, read> sp_gt: array<f32>;
@group(0) @binding(3) var<storage, read_write> sp_dg: array<f32>;
@group(0) @binding(4) var<storage, read_write> sp_row_loss: array<f32>;

@compute @workgroup_size(64)
fn sp_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    let b = params.batch;
    if (i >= b) {
        return;
    }
    var ss = 0.0;
    var st = 0.0;
    for (var j = 0u; j < b; j = j + 1u) {
        ss = ss + sp_gs[i * b + j] * sp_gs[i * b + j];
        st = st + sp_gt[i * b + j] * sp_gt[i * b + j];
    }
    let ns = sqrt(ss);
    let ns_c = max(ns, EPS_CLAMP);
    let nt_c = max(sqrt(st), EPS_CLAMP);
    let scale = 2.0 / f32(b * b);
    var loss = 0.0;
    var dot = 0.0;
    for (var j = 0u; j < b; j = j + 1u) {
        let gs = sp_gs[i * b + j] / ns_c;
        let d = gs - sp_gt[i * b + j] / nt_c;
        loss = loss + d * d;
        dot = dot + gs * d * scale;
    }
    for (var j = 0u; j < b; j = j + 1u) {
        let gs = sp_gs[i * b + j] / ns_c;
        let h = (gs - sp_gt[i * b + j] / nt_c) * scale;
        sp_dg[i * b + j] = select(h / ns_c, (h - gs * dot) / ns_c, ns > EPS_CLAMP);
    }
    sp_row_loss[i] = loss;
}

// ---- RKD distance -------------------------------------------------------------------------------
// d_ij = sqrt(max(G_ii + G_jj − 2 G_ij, 1e-12)), d_ii = 0, divided by the mean positive entry.

fn squared_distance(g: f32, gii: f32, gjj: f32) -> f32 {
    return gii + gjj - 2.0 * g;
}

// Four launches, so that no invocation loops over all B² pairs (llvmpipe stops an invocation
// after 65535 loop iterations; B = 256 has 65536 pairs): per row, the sums behind the means; one
// invocation adds the rows up; per row, the loss and the gradient's mean term; one invocation
// adds those up. Sums run in a fixed order, so results are deterministic.
@group(0) @binding(1) var<storage, read> rd_gs: array<f32>;
@group(0) @binding(2) var<storage, read> rd_gt: array<f32>;

fn rd_distance_s(i: u32, j: u32) -> f32 {
    let b = params.batch;
    if (i == j) {
        return 0.0;
    }
    return sqrt(max(squared_distance(rd_gs[i * b + j], rd_gs[i * b + i], rd_gs[j * b + j]), EPS_CLAMP));
}

fn rd_distance_t(i: u32, j: u32) -> f32 {
    let b = params.batch;
    if (i == j) {
        return 0.0;
    }
    return sqrt(max(squared_distance(rd_gt[i * b + j], rd_gt[i * b + i], rd_gt[j * b + j]), EPS_CLAMP));
}

// Per row i: [Σ_j d_s, #{d_s > 0}, Σ_j d_t, #{d_t > 0}].
@group(0) @binding(3) var<storage, read_write> rd_row_sums: array<f32>;

@compute @workgroup_size(64)
fn rkd_distance_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    let b = params.batch;
    if (i >= b) {
        return;
    }
    var acc = vec4<f32>(0.0);
    for (var j = 0u; j < b; j = j + 1u) {
        let ds = rd_distance_s(i, j);
        let dt = rd_distance_t(i, j);
        acc = acc + vec4<f32>(ds, select(0.0, 1.0, ds > 0.0), dt, select(0.0, 1.0, dt > 0.0));
    }
    for (var k = 0u; k < 4u; k = k + 1u) {
        rd_row_sums[4u * i + k] = acc[k];
    }
}

// [mean_s, count_s, Σ h·d_s / mean_s², mean_t]; the third entry is written by rkd_distance_finish.
@group(0) @binding(1) var<storage, read> rm_row_sums: array<f32>;
@group(0) @binding(2) var<storage, read_write> rm_stats: array<f32>;

@compute @workgroup_size(1)
fn rkd_distance_means() {
    var acc = vec4<f32>(0.0);
    for (var i = 0u; i < params.batch; i = i + 1u) {
        acc = acc + vec4<f32>(rm_row_sums[4u * i], rm_row_sums[4u * i + 1u],
                              rm_row_sums[4u * i + 2u], rm_row_sums[4u * i + 3u]);
    }
    rm_stats[0] = acc.x / acc.y;
    rm_stats[1] = acc.y;
    rm_stats[3] = acc.z / acc.w;
}

// Per row i: [Σ_j smoothL1(x_ij), Σ_j smoothL1'(x_ij)·d_s,ij / B²], x = d_s/mean_s − d_t/mean_t.
@group(0) @binding(3) var<storage, read> rl_stats: array<f32>;
@group(0) @binding(4) var<storage, read_write> rl_row_loss: array<f32>;

@compute @workgroup_size(64)
fn rkd_distance_row_loss(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    let b = params.batch;
    if (i >= b) {
        return;
    }
    let mean_s = rl_stats[0];
    let mean_t = rl_stats[3];
    let inv_bb = 1.0 / f32(b * b);
    var loss = 0.0;
    var hd = 0.0;
    for (var j = 0u; j < b; j = j + 1u) {
        let ds = rd_distance_s(i, j);
        let x = ds / mean_s - rd_distance_t(i, j) / mean_t;
        loss = loss + smooth_l1(x);
        hd = hd + smooth_l1_grad(x) * inv_bb * ds;
    }
    rl_row_loss[2u * i] = loss;
    rl_row_loss[2u * i + 1u] = hd;
}

@group(0) @binding(1) var<storage, read> rf_row_loss: array<f32>;
@group(0) @binding(2) var<storage, read_write> rf_stats: array<f32>;
@group(0) @binding(3) var<storage, read_write> rf_loss: array<f32>;

@compute @workgroup_size(1)
fn rkd_distance_finish() {
    var loss = 0.0;
    var hd = 0.0;
    for (var i = 0u; i < params.batch; i = i + 1u) {
        loss = loss + rf_row_loss[2u * i];
        hd = hd + rf_row_loss[2u * i + 1u];
    }
    let mean_s = rf_stats[0];
    rf_stats[2] = hd / (mean_s * mean_s);
    rf_loss[0] = loss / f32(params.batch * params.batch);
}

@group(0) @binding(1) var<storage, read> rc_gs: array<f32>;
@group(0) @binding(2) var<storage, read> rc_gt: array<f32>;
@group(0) @binding(3) var<storage, read> rc_stats: array<f32>;
@group(0) @binding(4) var<storage, read_write> rc_coef: array<f32>;

// Row x of C with grad = C·E: grad_x = Σ_j W_xj (e_x − e_j), W symmetric.
@compute @workgroup_size(64)
fn rkd_distance_coef(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let x = linear_index(wid, nwg, lid);
    let b = params.batch;
    if (x >= b) {
        return;
    }
    let mean_s = rc_stats[0];
    let count_s = rc_stats[1];
    let hd = rc_stats[2];
    let mean_t = rc_stats[3];
    let inv_bb = 1.0 / f32(b * b);
    var diag = 0.0;
    for (var j = 0u; j < b; j = j + 1u) {
        var w = 0.0;
        let q = squared_distance(rc_gs[x * b + j], rc_gs[x * b + x], rc_gs[j * b + j]);
        if (j != x && q > EPS_CLAMP) {
            let ds = sqrt(q);
            let qt = squared_distance(rc_gt[x * b + j], rc_gt[x * b + x], rc_gt[j * b + j]);
            let dt = sqrt(max(qt, EPS_CLAMP));
            let h = smooth_l1_grad(ds / mean_s - dt / mean_t) * inv_bb;
            let dd = h / mean_s - hd / count_s;
            // Both (x, j) and (j, x) entries of the distance matrix depend on this pair.
            w = 2.0 * dd / ds;
        }
        rc_coef[x * b + j] = -w;
        diag = diag + w;
    }
    rc_coef[x * b + x] = diag;
}

// ---- RKD angle ----------------------------------------------------------------------------------

fn pair_norm(g_ij: f32, g_ii: f32, g_jj: f32) -> f32 {
    return max(sqrt(max(squared_distance(g_ij, g_ii, g_jj), 0.0)), EPS_CLAMP);
}

@group(0) @binding(1) var<storage, read> ap_gs: array<f32>;
@group(0) @binding(2) var<storage, read> ap_gt: array<f32>;
@group(0) @binding(3) var<storage, read_write> ap_r: array<f32>;
@group(0) @binding(4) var<storage, read_write> ap_b: array<f32>;
@group(0) @binding(5) var<storage, read_write> ap_loss: array<f32>;

// A_ijk for a Gram matrix (zero when j = i or k = i is handled by the callers).
fn angle_s(i: u32, j: u32, k: u32) -> f32 {
    let b = params.batch;
    let gii = ap_gs[i * b + i];
    let num = ap_gs[j * b + k] - ap_gs[i * b + j] - ap_gs[i * b + k] + gii;
    return num / (pair_norm(ap_gs[i * b + j], gii, ap_gs[j * b + j]) * pair_norm(ap_gs[i * b + k], gii, ap_gs[k * b + k]));
}

fn angle_t(i: u32, j: u32, k: u32) -> f32 {
    let b = params.batch;
    let gii = ap_gt[i * b + i];
    let num = ap_gt[j * b + k] - ap_gt[i * b + j] - ap_gt[i * b + k] + gii;
    return num / (pair_norm(ap_gt[i * b + j], gii, ap_gt[j * b + j]) * pair_norm(ap_gt[i * b + k], gii, ap_gt[k * b + k]));
}

// Per pair (i, j): r_ij = Σ_k M_ijk, b_ij = (Σ_k 2h_ijk A_ijk) / n_ij² and the loss over k,
// where h = smoothl1'(A_s − A_t)/B³ and M_ijk = 2h_ijk / (n_ij n_ik).
@compute @workgroup_size(64)
fn rkd_angle_pairs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let p = linear_index(wid, nwg, lid);
    let b = params.batch;
    if (p >= b * b) {
        return;
    }
    let i = p / b;
    let j = p % b;
    var r = 0.0;
    var c = 0.0;
    var loss = 0.0;
    let inv_bbb = 1.0 / (f32(b) * f32(b) * f32(b));
    let gii = ap_gs[i * b + i];
    let q_ij = squared_distance(ap_gs[i * b + j], gii, ap_gs[j * b + j]);
    let n_ij = pair_norm(ap_gs[i * b + j], gii, ap_gs[j * b + j]);
    if (i != j) {
        for (var k = 0u; k < b; k = k + 1u) {
            if (k == i) {
                continue;
            }
            let a_s = angle_s(i, j, k);
            let x = a_s - angle_t(i, j, k);
            loss = loss + smooth_l1(x);
            let h2 = 2.0 * smooth_l1_grad(x) * inv_bbb;
            r = r + h2 / (n_ij * pair_norm(ap_gs[i * b + k], gii, ap_gs[k * b + k]));
            c = c + h2 * a_s;
        }
    }
    ap_r[p] = r;
    // A clamped norm has no projection term (u = v / eps).
    ap_b[p] = select(0.0, c / (n_ij * n_ij), sqrt(max(q_ij, 0.0)) > EPS_CLAMP);
    ap_loss[p] = loss;
}

@group(0) @binding(1) var<storage, read> ac_gs: array<f32>;
@group(0) @binding(2) var<storage, read> ac_gt: array<f32>;
@group(0) @binding(3) var<storage, read> ac_r: array<f32>;
@group(0) @binding(4) var<storage, read> ac_b: array<f32>;
@group(0) @binding(5) var<storage, read_write> ac_coef: array<f32>;

fn angle_from(g: u32, i: u32, j: u32, k: u32) -> f32 {
    let b = params.batch;
    if (g == 0u) {
        let gii = ac_gs[i * b + i];
        let num = ac_gs[j * b + k] - ac_gs[i * b + j] - ac_gs[i * b + k] + gii;
        return num / (pair_norm(ac_gs[i * b + j], gii, ac_gs[j * b + j]) * pair_norm(ac_gs[i * b + k], gii, ac_gs[k * b + k]));
    }
    let gii = ac_gt[i * b + i];
    let num = ac_gt[j * b + k] - ac_gt[i * b + j] - ac_gt[i * b + k] + gii;
    return num / (pair_norm(ac_gt[i * b + j], gii, ac_gt[j * b + j]) * pair_norm(ac_gt[i * b + k], gii, ac_gt[k * b + k]));
}

// C[x, y] = Σ_i M_ixy − r_yx + b_yx − r_xy + b_xy, plus on the diagonal
// Σ_j r_xj − Σ_i b_ix − Σ_j b_xj; the gradient is C·E.
@compute @workgroup_size(64)
fn rkd_angle_coef(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let p = linear_index(wid, nwg, lid);
    let b = params.batch;
    if (p >= b * b) {
        return;
    }
    let x = p / b;
    let y = p % b;
    let inv_bbb = 1.0 / (f32(b) * f32(b) * f32(b));
    var acc = 0.0;
    for (var i = 0u; i < b; i = i + 1u) {
        if (i == x || i == y) {
            continue;
        }
        let xa = angle_from(0u, i, x, y) - angle_from(1u, i, x, y);
        let gii = ac_gs[i * b + i];
        let n_ix = pair_norm(ac_gs[i * b + x], gii, ac_gs[x * b + x]);
        let n_iy = pair_norm(ac_gs[i * b + y], gii, ac_gs[y * b + y]);
        acc = acc + 2.0 * smooth_l1_grad(xa) * inv_bbb / (n_ix * n_iy);
    }
    acc = acc - ac_r[y * b + x] + ac_b[y * b + x] - ac_r[x * b + y] + ac_b[x * b + y];
    if (x == y) {
        for (var j = 0u; j < b; j = j + 1u) {
            acc = acc + ac_r[x * b + j] - ac_b[j * b + x] - ac_b[x * b + j];
        }
    }
    ac_coef[p] = acc;
}

// ---- row normalisation (PKT, CRD's embedding heads) ---------------------------------------------

// x̂ = x / (‖x‖ + ε) per row (ε = params.gamma: 1e-7 in PKT, 0 in CRD's heads), keeping ‖x‖ for
// the backward pass.
@group(0) @binding(1) var<storage, read> nr_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> nr_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> nr_norms: array<f32>;

@compute @workgroup_size(64)
fn normalize_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    let dim = params.dim;
    if (i >= params.batch) {
        return;
    }
    var ss = 0.0;
    for (var d = 0u; d < dim; d = d + 1u) {
        ss = ss + nr_in[i * dim + d] * nr_in[i * dim + d];
    }
    let n = sqrt(ss);
    for (var d = 0u; d < dim; d = d + 1u) {
        nr_out[i * dim + d] = nr_in[i * dim + d] / (n + params.gamma);
    }
    nr_norms[i] = n;
}

@group(0) @binding(1) var<storage, read> pk_ks: array<f32>;
@group(0) @binding(2) var<storage, read> pk_kt: array<f32>;
@group(0) @binding(3) var<storage, read_write> pk_dk: array<f32>;
@group(0) @binding(4) var<storage, read_write> pk_row_loss: array<f32>;

// Row i: P = S / Σ_row S with S = (K + 1)/2; the loss and dL/dK.
@compute @workgroup_size(64)
fn pkt_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    let b = params.batch;
    if (i >= b) {
        return;
    }
    var sum_s = 0.0;
    var sum_t = 0.0;
    for (var j = 0u; j < b; j = j + 1u) {
        sum_s = sum_s + (pk_ks[i * b + j] + 1.0) * 0.5;
        sum_t = sum_t + (pk_kt[i * b + j] + 1.0) * 0.5;
    }
    let inv_bb = 1.0 / f32(b * b);
    var loss = 0.0;
    var gp = 0.0;
    for (var j = 0u; j < b; j = j + 1u) {
        let ps = (pk_ks[i * b + j] + 1.0) * 0.5 / sum_s;
        let pt = (pk_kt[i * b + j] + 1.0) * 0.5 / sum_t;
        loss = loss + pt * log((pt + PKT_EPS) / (ps + PKT_EPS));
        gp = gp - pt / (ps + PKT_EPS) * inv_bb * ps;
    }
    for (var j = 0u; j < b; j = j + 1u) {
        let ps = (pk_ks[i * b + j] + 1.0) * 0.5 / sum_s;
        let pt = (pk_kt[i * b + j] + 1.0) * 0.5 / sum_t;
        let g = -pt / (ps + PKT_EPS) * inv_bb;
        pk_dk[i * b + j] = (g - gp) / sum_s * 0.5;
    }
    pk_row_loss[i] = loss;
}

@group(0) @binding(1) var<storage, read> nb_x: array<f32>;
@group(0) @binding(2) var<storage, read> nb_norms: array<f32>;
@group(0) @binding(3) var<storage, read> nb_dxh: array<f32>;
@group(0) @binding(4) var<storage, read_write> nb_grad: array<f32>;

// Backward of normalize_rows: dx = dx̂/(n + ε) − x (x·dx̂) / (n (n + ε)²).
@compute @workgroup_size(64)
fn normalize_rows_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    let dim = params.dim;
    if (i >= params.batch) {
        return;
    }
    let n = nb_norms[i];
    var xg = 0.0;
    for (var d = 0u; d < dim; d = d + 1u) {
        xg = xg + nb_x[i * dim + d] * nb_dxh[i * dim + d];
    }
    let ne = n + params.gamma;
    for (var d = 0u; d < dim; d = d + 1u) {
        let g = nb_dxh[i * dim + d] / ne - nb_x[i * dim + d] * xg / (n * ne * ne);
        nb_grad[i * dim + d] = select(0.0, g, n > 0.0);
    }
}

// ---- cc: correlation congruence --------------------------------------------------------------
// C(f)_ij = e^(−2γ) Σ_{p=0..P} (2γ)^p / p! (f_i·f_j)^p from the Gram matrices; the loss is the
// Frobenius norm of C_s − C_t over B², and the gradient (C_s − C_t) ∘ C_s' times F_s, scaled
// by 2 / (B² ‖C_s − C_t‖) once the norm is known.

// (value, slope) of the kernel at g.
fn cc_kernel(g: f32) -> vec2<f32> {
    var value = 0.0;
    var slope = 0.0;
    var coef = 1.0;
    var power = 1.0;
    var below = 0.0;
    for (var p = 0u; p <= params.order; p = p + 1u) {
        value = fma(coef, power, value);
        slope = slope + f32(p) * coef * below;
        below = power;
        power = power * g;
        coef = coef * 2.0 * params.gamma / f32(p + 1u);
    }
    let scale = exp(-2.0 * params.gamma);
    return vec2<f32>(scale * value, scale * slope);
}

// Per row i: Σ_j (C_s − C_t)²_ij, and coef_ij = (C_s − C_t)_ij · C_s'(G_s,ij).
@group(0) @binding(1) var<storage, read> cc_gs: array<f32>;
@group(0) @binding(2) var<storage, read> cc_gt: array<f32>;
@group(0) @binding(3) var<storage, read_write> cc_coef: array<f32>;
@group(0) @binding(4) var<storage, read_write> cc_row_sq: array<f32>;

@compute @workgroup_size(64)
fn cc_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    let b = params.batch;
    if (i >= b) {
        return;
    }
    var sq = 0.0;
    for (var j = 0u; j < b; j = j + 1u) {
        let ks = cc_kernel(cc_gs[i * b + j]);
        let d = ks.x - cc_kernel(cc_gt[i * b + j]).x;
        sq = fma(d, d, sq);
        cc_coef[i * b + j] = d * ks.y;
    }
    cc_row_sq[i] = sq;
}

// grad = raw · 2 / (B² ‖D‖) (0 where ‖D‖ = 0, as PyTorch's norm), loss = ‖D‖ / B²; dim is the
// number of gradient elements.
@group(0) @binding(1) var<storage, read> ccs_total: array<f32>;
@group(0) @binding(2) var<storage, read> ccs_raw: array<f32>;
@group(0) @binding(3) var<storage, read_write> ccs_loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> ccs_grad: array<f32>;

@compute @workgroup_size(64)
fn cc_scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let k = linear_index(wid, nwg, lid);
    if (k >= params.dim) {
        return;
    }
    let b2 = f32(params.batch) * f32(params.batch);
    let norm = sqrt(ccs_total[0]);
    let factor = select(0.0, 2.0 / (b2 * norm), norm > 0.0);
    ccs_grad[k] = ccs_raw[k] * factor;
    if (k == 0u) {
        ccs_loss[0] = norm / b2;
    }
}

// ---- irg: instance relationship graph ----------------------------------------------------------
// Edges: E[i,j] = max(G_ii + G_jj − 2·G_ij, 1e-12), zero on the diagonal, read from a Gram
// matrix (symmetric by construction: entry (i, j) and (j, i) read the same G entry; the clamp is
// applied by the comparison).
// Graph comparison (edges and the transformation vector alike): with a = the student's values
// clamped at 1e-12, b = the teacher's, m_a, m_b their maxima, L = scale·Σ (a/m_a − b/m_b)²; the
// gradient with respect to a is 2·scale·d/m_a, plus −S/m_a² at a's (first) maximum,
// S = Σ 2·scale·d·a, and 0 where a was clamped or on an edge matrix's diagonal.
struct IrgParams {
    // Entries compared (B² for edges, B for the transformation vector).
    n: u32,
    // Edge matrices: B (the diagonal is fixed at 0); 0 for a vector.
    diagonal: u32,
    scale: f32,
    // Which 8-float slot of the statistics buffer a comparison writes.
    slot: u32,
    // The transformation: C1 (channels after halving), H2·W2, whether fm2's channels are
    // averaged in adjacent pairs (C2 = 2·C1), and the batch.
    channels: u32,
    plane: u32,
    halved: u32,
    batch: u32,
}

@group(0) @binding(0) var<uniform> irg: IrgParams;

@group(0) @binding(1) var<storage, read> irg_gram: array<f32>;
@group(0) @binding(2) var<storage, read_write> irg_edges_out: array<f32>;

@compute @workgroup_size(64)
fn irg_edges(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let e = linear_index(wid, nwg, lid);
    let b = irg.diagonal;
    if (e >= b * b) {
        return;
    }
    let i = e / b;
    let j = e % b;
    if (i == j) {
        irg_edges_out[e] = 0.0;
        return;
    }
    let lo = min(i, j);
    let hi = max(i, j);
    // Unclamped: the comparison clamps, and its gradient needs to know where it did.
    irg_edges_out[e] = squared_distance(irg_gram[lo * b + hi], irg_gram[i * b + i], irg_gram[j * b + j]);
}

// Statistics of one comparison in one workgroup of 256, in a fixed order: slot = (m_a, m_b,
// index of a's first maximum, L, S).
const IRG_WG: u32 = 256u;
var<workgroup> irg_max_a: array<f32, IRG_WG>;
var<workgroup> irg_arg_a: array<u32, IRG_WG>;
var<workgroup> irg_max_b: array<f32, IRG_WG>;
var<workgroup> irg_sum_l: array<f32, IRG_WG>;
var<workgroup> irg_sum_s: array<f32, IRG_WG>;

@group(0) @binding(1) var<storage, read> irg_a: array<f32>;
@group(0) @binding(2) var<storage, read> irg_b: array<f32>;
@group(0) @binding(3) var<storage, read_write> irg_stats: array<f32>;

fn irg_value(raw: f32, k: u32) -> f32 {
    if (irg.diagonal > 0u && k % (irg.diagonal + 1u) == 0u) {
        return 0.0;
    }
    return max(raw, EPS_CLAMP);
}

@compute @workgroup_size(256)
fn irg_compare(@builtin(local_invocation_index) lid: u32) {
    var ma = -1.0;
    var arg = 0u;
    var mb = -1.0;
    for (var k = lid; k < irg.n; k = k + IRG_WG) {
        let a = irg_value(irg_a[k], k);
        if (a > ma) {
            ma = a;
            arg = k;
        }
        mb = max(mb, irg_value(irg_b[k], k));
    }
    irg_max_a[lid] = ma;
    irg_arg_a[lid] = arg;
    irg_max_b[lid] = mb;
    workgroupBarrier();
    for (var stride = IRG_WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            let other = irg_max_a[lid + stride];
            let other_arg = irg_arg_a[lid + stride];
            // The first maximum: ties go to the lower index.
            if (other > irg_max_a[lid] || (other == irg_max_a[lid] && other_arg < irg_arg_a[lid])) {
                irg_max_a[lid] = other;
                irg_arg_a[lid] = other_arg;
            }
            irg_max_b[lid] = max(irg_max_b[lid], irg_max_b[lid + stride]);
        }
        workgroupBarrier();
    }
    let m_a = irg_max_a[0];
    let m_b = irg_max_b[0];
    var l = 0.0;
    var s = 0.0;
    for (var k = lid; k < irg.n; k = k + IRG_WG) {
        let a = irg_value(irg_a[k], k);
        let d = a / m_a - irg_value(irg_b[k], k) / m_b;
        l = l + d * d;
        s = s + d * a;
    }
    irg_sum_l[lid] = l;
    irg_sum_s[lid] = s;
    workgroupBarrier();
    for (var stride = IRG_WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            irg_sum_l[lid] = irg_sum_l[lid] + irg_sum_l[lid + stride];
            irg_sum_s[lid] = irg_sum_s[lid] + irg_sum_s[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let o = irg.slot * 8u;
        irg_stats[o] = m_a;
        irg_stats[o + 1u] = m_b;
        // The index's bits, not its value: an f32 holds integers exactly only below 2^24.
        irg_stats[o + 2u] = bitcast<f32>(irg_arg_a[0]);
        irg_stats[o + 3u] = irg.scale * irg_sum_l[0];
        irg_stats[o + 4u] = 2.0 * irg.scale * irg_sum_s[0];
    }
}

// d L / d a per entry (0 where a was clamped or on the diagonal).
@group(0) @binding(1) var<storage, read> irg_ga: array<f32>;
@group(0) @binding(2) var<storage, read> irg_gb: array<f32>;
@group(0) @binding(3) var<storage, read> irg_gstats: array<f32>;
@group(0) @binding(4) var<storage, read_write> irg_grad: array<f32>;

@compute @workgroup_size(64)
fn irg_compare_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let k = linear_index(wid, nwg, lid);
    if (k >= irg.n) {
        return;
    }
    let o = irg.slot * 8u;
    let m_a = irg_gstats[o];
    let raw = irg_ga[k];
    let a = irg_value(raw, k);
    let on_diagonal = irg.diagonal > 0u && k % (irg.diagonal + 1u) == 0u;
    if (on_diagonal || raw < EPS_CLAMP) {
        irg_grad[k] = 0.0;
        return;
    }
    let d = a / m_a - irg_value(irg_gb[k], k) / irg_gstats[o + 1u];
    var g = 2.0 * irg.scale * d / m_a;
    if (k == bitcast<u32>(irg_gstats[o + 2u])) {
        g = g - irg_gstats[o + 4u] / (m_a * m_a);
    }
    irg_grad[k] = g;
}

// The edge gradient dE (B×B) as the coefficients C of dx = C·x: off the diagonal
// C_ij = −2·(dE_ij + dE_ji), on it C_ii = −Σ_{j≠i} C_ij.
@group(0) @binding(1) var<storage, read> irg_de: array<f32>;
@group(0) @binding(2) var<storage, read_write> irg_coef: array<f32>;

@compute @workgroup_size(64)
fn irg_edge_coef(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let e = linear_index(wid, nwg, lid);
    let b = irg.diagonal;
    if (e >= b * b) {
        return;
    }
    let i = e / b;
    let j = e % b;
    if (i != j) {
        irg_coef[e] = -2.0 * (irg_de[i * b + j] + irg_de[j * b + i]);
        return;
    }
    var sum = 0.0;
    for (var k = 0u; k < b; k = k + 1u) {
        if (k != i) {
            sum = sum + irg_de[i * b + k] + irg_de[k * b + i];
        }
    }
    irg_coef[e] = 2.0 * sum;
}

// The transformation's difference per element of the (pooled) fm1, (B, C1, H2·W2): fm1 − fm2,
// fm2's channels averaged in adjacent pairs when halved; also its square.
@group(0) @binding(1) var<storage, read> irg_fm1: array<f32>;
@group(0) @binding(2) var<storage, read> irg_fm2: array<f32>;
@group(0) @binding(3) var<storage, read_write> irg_diff: array<f32>;
@group(0) @binding(4) var<storage, read_write> irg_diff_sq: array<f32>;

@compute @workgroup_size(64)
fn irg_transform(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let e = linear_index(wid, nwg, lid);
    let per_sample = irg.channels * irg.plane;
    if (e >= irg.batch * per_sample) {
        return;
    }
    let n = e / per_sample;
    let c = (e % per_sample) / irg.plane;
    let x = e % irg.plane;
    var q: f32;
    if (irg.halved == 1u) {
        let base = (n * 2u * irg.channels + 2u * c) * irg.plane + x;
        q = 0.5 * (irg_fm2[base] + irg_fm2[base + irg.plane]);
    } else {
        q = irg_fm2[e];
    }
    let d = irg_fm1[e] - q;
    irg_diff[e] = d;
    irg_diff_sq[e] = d * d;
}

// Gradients of the transformation term: with dT (B) from irg_compare_grad, d(pooled fm1) =
// 2·diff·dT_n (n = 0 … B·C1·H2·W2), and d fm2 = −2·diff·dT_n, halved onto both channels of a
// pair (n over B·C2·H2·W2).
@group(0) @binding(1) var<storage, read> irg_tdiff: array<f32>;
@group(0) @binding(2) var<storage, read> irg_dt: array<f32>;
@group(0) @binding(3) var<storage, read_write> irg_dfm1: array<f32>;
@group(0) @binding(4) var<storage, read_write> irg_dfm2: array<f32>;

@compute @workgroup_size(64)
fn irg_transform_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let e = linear_index(wid, nwg, lid);
    let per_sample = irg.channels * irg.plane;
    let factor = select(1u, 2u, irg.halved == 1u);
    if (e < irg.batch * per_sample) {
        irg_dfm1[e] = 2.0 * irg_tdiff[e] * irg_dt[e / per_sample];
    }
    if (e < irg.batch * per_sample * factor) {
        let per_sample2 = per_sample * factor;
        let n = e / per_sample2;
        let c2 = (e % per_sample2) / irg.plane;
        let x = e % irg.plane;
        let d = irg_tdiff[(n * irg.channels + c2 / factor) * irg.plane + x];
        irg_dfm2[e] = -2.0 * d * irg_dt[n] / f32(factor);
    }
}

// The total: w_vert·(vertex MSE) + the edge and transformation comparisons' losses (slots 0–3).
@group(0) @binding(1) var<storage, read> irg_vertex: array<f32>;
@group(0) @binding(2) var<storage, read> irg_parts: array<f32>;
@group(0) @binding(3) var<storage, read_write> irg_total_out: array<f32>;

@compute @workgroup_size(1)
fn irg_total() {
    irg_total_out[0] = irg.scale * irg_vertex[0] + irg_parts[3] + irg_parts[11] + irg_parts[19]
        + irg_parts[27];
}
