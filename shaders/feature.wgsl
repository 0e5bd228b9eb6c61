// Feature-based losses: FitNet hint (elementwise MSE; with q = 1 the mean absolute difference,
// the `l1` loss between logits), attention transfer and factor transfer
// (one kernel set: FT is AT with another distance), activation boundaries (elementwise),
// neuron selectivity transfer (per-sample Gram matrices of channel-normalised maps), FSP, and
// variational information distillation (elementwise, per-channel variances); and the image
// priors data-free distillation optimises inputs with: total variation (DeepInversion's four
// neighbour differences).
// Each writes the gradient and per-element, per-entry or per-sample loss partials; reduce.wgsl
// sums them.

struct Params {
    batch: u32,
    // hint, tv: element count; at: student channels.
    n: u32,
    // tv: the width W.
    teacher_channels: u32,
    hw: u32,
    p: f32,
    grad_scale: f32,
    // hint: 2 (squared) or 1 (absolute). at/ft: the distance's exponent (2 for AT; FT's p2, 1
    // or 2). ab: unused.
    q: f32,
    // nst: where a Gram launch writes its loss partials.
    offset: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// ---- hint: (s − t)², gradient 2(s − t)/N; with q = 1, |s − t|, gradient sign(s − t)/N ---------
// (grad_scale carries the 2/N or 1/N; sign(0) = 0, as PyTorch's l1_loss gradient).
@group(0) @binding(1) var<storage, read> hint_student: array<f32>;
@group(0) @binding(2) var<storage, read> hint_teacher: array<f32>;
@group(0) @binding(3) var<storage, read_write> hint_grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> hint_partial: array<f32>;

@compute @workgroup_size(256)
fn hint(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= params.n) {
        return;
    }
    let d = hint_student[i] - hint_teacher[i];
    if (params.q == 1.0) {
        hint_grad[i] = sign(d) * params.grad_scale;
        hint_partial[i] = abs(d);
    } else {
        hint_grad[i] = d * params.grad_scale;
        hint_partial[i] = d * d;
    }
}

// ---- at / ft: a(f) = normalize(mean_c f^p) per sample; loss mean(dist(a_s − a_t)) ------------
// dist(d) = d² (AT, q = 2) or |d| (FT's p2 = 1, q = 1). Three passes: channel means per
// (sample, position); norms and the normalisation's dot product per sample; the gradient per
// student element.

fn distance(d: f32) -> f32 {
    return select(d * d, abs(d), params.q == 1.0);
}

// d dist / d d; |d| has slope 0 at 0 (sign(0) = 0), as PyTorch's l1_loss.
fn distance_slope(d: f32) -> f32 {
    return select(2.0 * d, sign(d), params.q == 1.0);
}

// x^p as PyTorch's pow: exact for integer p (sign kept for odd p), pow() otherwise.
fn pow_p(x: f32, p: f32) -> f32 {
    if (p == 2.0) {
        return x * x;
    }
    if (p == 1.0) {
        return x;
    }
    if (p == 0.0) {
        return 1.0;
    }
    let ip = round(p);
    if (abs(p - ip) < 1e-6) {
        let mag = pow(abs(x), p);
        let odd = (i32(ip) & 1) == 1;
        return select(mag, -mag, odd && x < 0.0);
    }
    return pow(x, p);
}

@group(0) @binding(1) var<storage, read> maps_student: array<f32>;
@group(0) @binding(2) var<storage, read> maps_teacher: array<f32>;
@group(0) @binding(3) var<storage, read_write> maps_ms: array<f32>;
@group(0) @binding(4) var<storage, read_write> maps_mt: array<f32>;

@compute @workgroup_size(256)
fn at_maps(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let k = linear_index(wid, nwg, lid);
    let hw = params.hw;
    if (k >= params.batch * hw) {
        return;
    }
    let b = k / hw;
    let i = k % hw;
    var ms = 0.0;
    for (var c = 0u; c < params.n; c = c + 1u) {
        ms = ms + pow_p(maps_student[(b * params.n + c) * hw + i], params.p);
    }
    var mt = 0.0;
    for (var c = 0u; c < params.teacher_channels; c = c + 1u) {
        mt = mt + pow_p(maps_teacher[(b * params.teacher_channels + c) * hw + i], params.p);
    }
    maps_ms[k] = ms / f32(params.n);
    maps_mt[k] = mt / f32(params.teacher_channels);
}

@group(0) @binding(1) var<storage, read> rows_ms: array<f32>;
@group(0) @binding(2) var<storage, read> rows_mt: array<f32>;
// Per sample: [‖m_s‖, max(‖m_s‖, eps), max(‖m_t‖, eps), a_s · g].
@group(0) @binding(3) var<storage, read_write> rows_stats: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> rows_loss: array<f32>;

@compute @workgroup_size(256)
fn at_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let b = linear_index(wid, nwg, lid);
    if (b >= params.batch) {
        return;
    }
    let hw = params.hw;
    var ss = 0.0;
    var st = 0.0;
    for (var i = 0u; i < hw; i = i + 1u) {
        ss = ss + rows_ms[b * hw + i] * rows_ms[b * hw + i];
        st = st + rows_mt[b * hw + i] * rows_mt[b * hw + i];
    }
    let ns = sqrt(ss);
    let ns_c = max(ns, 1e-12);
    let nt_c = max(sqrt(st), 1e-12);
    var loss = 0.0;
    var dot = 0.0;
    for (var i = 0u; i < hw; i = i + 1u) {
        let a_s = rows_ms[b * hw + i] / ns_c;
        let d = a_s - rows_mt[b * hw + i] / nt_c;
        loss = loss + distance(d);
        dot = dot + a_s * distance_slope(d) * params.grad_scale;
    }
    rows_stats[b] = vec4<f32>(ns, ns_c, nt_c, dot);
    rows_loss[b] = loss;
}

@group(0) @binding(1) var<storage, read> grad_student: array<f32>;
@group(0) @binding(2) var<storage, read> grad_ms: array<f32>;
@group(0) @binding(3) var<storage, read> grad_mt: array<f32>;
@group(0) @binding(4) var<storage, read> grad_stats: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> grad_out: array<f32>;

@compute @workgroup_size(256)
fn at_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let k = linear_index(wid, nwg, lid);
    let hw = params.hw;
    let cs = params.n;
    if (k >= params.batch * cs * hw) {
        return;
    }
    let b = k / (cs * hw);
    let i = k % hw;
    let stats = grad_stats[b];
    let a_s = grad_ms[b * hw + i] / stats.y;
    let g = distance_slope(a_s - grad_mt[b * hw + i] / stats.z) * params.grad_scale;
    // Through normalize: (g − a (a·g)) / ‖m‖, or g / eps where the norm was clamped.
    let dm = select(g / stats.y, (g - a_s * stats.w) / stats.y, stats.x > 1e-12);
    grad_out[k] = dm * params.p * pow_p(grad_student[k], params.p - 1.0) / f32(cs);
}

// ---- ab: activation boundaries, elementwise ------------------------------------------------
// (s + m)² where s > −m and t ≤ 0, (s − m)² where s ≤ m and t > 0; m = params.p.
@group(0) @binding(1) var<storage, read> ab_student: array<f32>;
@group(0) @binding(2) var<storage, read> ab_teacher: array<f32>;
@group(0) @binding(3) var<storage, read_write> ab_grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> ab_partial: array<f32>;

@compute @workgroup_size(256)
fn ab(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
      @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= params.n) {
        return;
    }
    let s = ab_student[i];
    let t = ab_teacher[i];
    let m = params.p;
    let below = s > -m && t <= 0.0;
    let above = s <= m && t > 0.0;
    let lo = select(0.0, s + m, below);
    let hi = select(0.0, s - m, above);
    ab_partial[i] = lo * lo + hi * hi;
    ab_grad[i] = 2.0 * (lo + hi) * params.grad_scale;
}

// ---- nst: neuron selectivity transfer -------------------------------------------------------
// Rows are (sample, channel) maps of H·W values. Each row is normalised (F.normalize); per
// sample the Gram matrices ŝŝᵀ, ŝt̂ᵀ and t̂t̂ᵀ are formed one entry per invocation, each entry
// also writing its weighted square (the loss's terms); the gradient with respect to ŝ reads the
// Gram rows back, and the normalisation's backward pass finishes it.

// Rows of hw values: out = x / max(‖x‖, eps), norms = (‖x‖, max(‖x‖, eps)). batch = rows.
@group(0) @binding(1) var<storage, read> nrm_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> nrm_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> nrm_norms: array<vec2<f32>>;

@compute @workgroup_size(64)
fn normalize_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let r = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (r >= params.batch) {
        return;
    }
    let hw = params.hw;
    var ss = 0.0;
    for (var k = 0u; k < hw; k = k + 1u) {
        let v = nrm_in[r * hw + k];
        ss = ss + v * v;
    }
    let n = sqrt(ss);
    let nc = max(n, 1e-12);
    for (var k = 0u; k < hw; k = k + 1u) {
        nrm_out[r * hw + k] = nrm_in[r * hw + k] / nc;
    }
    nrm_norms[r] = vec2<f32>(n, nc);
}

// g[n, i, j] = a[n, i, :] · b[n, j, :] for a (B, n, hw) and b (B, teacher_channels, hw);
// partial[offset + entry] = p · g².
@group(0) @binding(1) var<storage, read> gram_a: array<f32>;
@group(0) @binding(2) var<storage, read> gram_b: array<f32>;
@group(0) @binding(3) var<storage, read_write> gram_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> gram_partial: array<f32>;

@compute @workgroup_size(64)
fn row_grams(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let e = (wid.x + wid.y * nwg.x) * 64u + lid;
    let ca = params.n;
    let cb = params.teacher_channels;
    if (e >= params.batch * ca * cb) {
        return;
    }
    let j = e % cb;
    let i = (e / cb) % ca;
    let b = e / (ca * cb);
    let hw = params.hw;
    let x = (b * ca + i) * hw;
    let y = (b * cb + j) * hw;
    var g = 0.0;
    for (var k = 0u; k < hw; k = k + 1u) {
        g = fma(gram_a[x + k], gram_b[y + k], g);
    }
    gram_out[e] = g;
    gram_partial[params.offset + e] = params.p * g * g;
}

// d loss / d ŝ[n, i, x] = p · Σ_j G_ss[n,i,j] ŝ[n,j,x] + grad_scale · Σ_j G_st[n,i,j] t̂[n,j,x]
// (p = 4·w_ss, grad_scale = 2·w_st; n = Cs, teacher_channels = Ct).
@group(0) @binding(1) var<storage, read> ng_s: array<f32>;
@group(0) @binding(2) var<storage, read> ng_t: array<f32>;
@group(0) @binding(3) var<storage, read> ng_gss: array<f32>;
@group(0) @binding(4) var<storage, read> ng_gst: array<f32>;
@group(0) @binding(5) var<storage, read_write> ng_out: array<f32>;

@compute @workgroup_size(256)
fn nst_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let k = linear_index(wid, nwg, lid);
    let cs = params.n;
    let ct = params.teacher_channels;
    let hw = params.hw;
    if (k >= params.batch * cs * hw) {
        return;
    }
    let x = k % hw;
    let i = (k / hw) % cs;
    let b = k / (cs * hw);
    var own = 0.0;
    for (var j = 0u; j < cs; j = j + 1u) {
        own = fma(ng_gss[(b * cs + i) * cs + j], ng_s[(b * cs + j) * hw + x], own);
    }
    var cross = 0.0;
    for (var j = 0u; j < ct; j = j + 1u) {
        cross = fma(ng_gst[(b * cs + i) * ct + j], ng_t[(b * ct + j) * hw + x], cross);
    }
    ng_out[k] = params.p * own + params.grad_scale * cross;
}

// The normalisation's backward pass per row: (g − x̂ (x̂·g)) / ‖x‖, or g / eps where clamped.
@group(0) @binding(1) var<storage, read> nb_xhat: array<f32>;
@group(0) @binding(2) var<storage, read> nb_norms: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> nb_g: array<f32>;
@group(0) @binding(4) var<storage, read_write> nb_out: array<f32>;

@compute @workgroup_size(64)
fn normalize_rows_backward(@builtin(workgroup_id) wid: vec3<u32>,
                           @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let r = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (r >= params.batch) {
        return;
    }
    let hw = params.hw;
    var dot = 0.0;
    for (var k = 0u; k < hw; k = k + 1u) {
        dot = fma(nb_xhat[r * hw + k], nb_g[r * hw + k], dot);
    }
    let norms = nb_norms[r];
    let clamped = norms.x <= 1e-12;
    for (var k = 0u; k < hw; k = k + 1u) {
        let g = nb_g[r * hw + k];
        nb_out[r * hw + k] = select((g - nb_xhat[r * hw + k] * dot) / norms.y, g / norms.y, clamped);
    }
}

// ---- fsp: flow of solution procedure -------------------------------------------------------
// G(a, b)[n, j, i] = (1/HW) Σ_x b[n, j, x] a[n, i, x], from row_grams of (b, a); the loss is
// mean((G_s − G_t)²) over B·C2·C1, and the gradients contract dG with each side's other map.

// Per entry e of (B, C2, C1): d = gs·p − gt·q (p, q: each side's 1/HW); partial = d²;
// dG = d · grad_scale (grad_scale = 2 / (B·C1·C2) · the student's 1/HW). n: entries.
@group(0) @binding(1) var<storage, read> fd_gs: array<f32>;
@group(0) @binding(2) var<storage, read> fd_gt: array<f32>;
@group(0) @binding(3) var<storage, read_write> fd_dg: array<f32>;
@group(0) @binding(4) var<storage, read_write> fd_partial: array<f32>;

@compute @workgroup_size(256)
fn fsp_diff(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let e = linear_index(wid, nwg, lid);
    if (e >= params.n) {
        return;
    }
    let d = fd_gs[e] * params.p - fd_gt[e] * params.q;
    fd_partial[e] = d * d;
    fd_dg[e] = d * params.grad_scale;
}

// out[n, r, x] = Σ_k M(n, r, k) · X[n, k, x] over rows of hw values, M(n, r, k) = m[n, r, k]
// (offset = 0) or m[n, k, r] (offset = 1, transposed). n: R rows out, teacher_channels: K.
@group(0) @binding(1) var<storage, read> mix_m: array<f32>;
@group(0) @binding(2) var<storage, read> mix_x: array<f32>;
@group(0) @binding(3) var<storage, read_write> mix_out: array<f32>;

@compute @workgroup_size(256)
fn row_mix(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid);
    let rows = params.n;
    let inner = params.teacher_channels;
    let hw = params.hw;
    if (t >= params.batch * rows * hw) {
        return;
    }
    let x = t % hw;
    let r = (t / hw) % rows;
    let b = t / (rows * hw);
    var acc = 0.0;
    for (var k = 0u; k < inner; k = k + 1u) {
        let m = select(mix_m[(b * rows + r) * inner + k], mix_m[(b * inner + k) * rows + r], params.offset == 1u);
        acc = fma(m, mix_x[(b * inner + k) * hw + x], acc);
    }
    mix_out[t] = acc;
}

// ---- vid: variational information distillation, elementwise ----------------------------------
// With v_c = softplus(log_scale_c) + eps (params.p = eps) and N = B·C·H·W (params.grad_scale =
// 1/N): the term 0.5·((s − t)²/v_c + log v_c), the gradient (s − t)/(v_c·N), and each element's
// share of d/d log_scale_c, 0.5·(1/v_c − (s − t)²/v_c²)·sigmoid(log_scale_c)/N, which two axis
// reductions sum per channel. params.teacher_channels = C, params.hw = H·W, params.n = N.
@group(0) @binding(1) var<storage, read> vid_mean: array<f32>;
@group(0) @binding(2) var<storage, read> vid_target: array<f32>;
@group(0) @binding(3) var<storage, read> vid_log_scale: array<f32>;
@group(0) @binding(4) var<storage, read_write> vid_grad: array<f32>;
@group(0) @binding(5) var<storage, read_write> vid_partial: array<f32>;
@group(0) @binding(6) var<storage, read_write> vid_scale_share: array<f32>;

// log(1 + eˣ) without overflow, and without losing e^(−|x|) where it is below f32's epsilon
// next to 1.
fn softplus(x: f32) -> f32 {
    let y = exp(-abs(x));
    let log1p_y = select(log(1.0 + y), y * (1.0 - 0.5 * y), y < 1e-4);
    return max(x, 0.0) + log1p_y;
}

@compute @workgroup_size(256)
fn vid(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= params.n) {
        return;
    }
    let c = (i / params.hw) % params.teacher_channels;
    let a = vid_log_scale[c];
    let v = softplus(a) + params.p;
    let d = vid_mean[i] - vid_target[i];
    let d2_v = d * d / v;
    vid_partial[i] = 0.5 * (d2_v + log(v));
    vid_grad[i] = d / v * params.grad_scale;
    let sigmoid = 1.0 / (1.0 + exp(-a));
    vid_scale_share[i] = 0.5 * (1.0 - d2_v) / v * sigmoid * params.grad_scale;
}

// ---- tv: total variation over the four neighbour differences of (planes, H, W) images --------
// D1 = x[h, w] − x[h, w+1], D2 = x[h, w] − x[h+1, w], D3 = x[h+1, w] − x[h, w+1],
// D4 = x[h, w] − x[h+1, w+1] (DeepInversion's diff1…diff4, each over the positions where both
// neighbours exist). p = 2: Σ_d ‖D_d‖₂ over the whole batch; p = 1: Σ_d mean |D_d|. tv_terms
// writes |D_d|^p for the differences an element starts, one partial array per direction (0
// where the difference does not exist); reduce.wgsl sums each; tv_finish turns the four sums
// into the loss and a coefficient per direction; tv_grad adds each difference's derivative to
// both of its elements.
fn tv_at(i: u32) -> vec3<u32> {
    let w = params.teacher_channels;
    return vec3<u32>(i / params.hw, (i % params.hw) / w, i % w);
}

fn tv_diffs(i: u32, hh: u32, ww: u32) -> array<f32, 4> {
    let w = params.teacher_channels;
    let h = params.hw / w;
    var d = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    if (ww + 1u < w) {
        d[0] = tv_x[i] - tv_x[i + 1u];
    }
    if (hh + 1u < h) {
        d[1] = tv_x[i] - tv_x[i + w];
    }
    if (ww + 1u < w && hh + 1u < h) {
        d[2] = tv_x[i + w] - tv_x[i + 1u];
        d[3] = tv_x[i] - tv_x[i + w + 1u];
    }
    return d;
}

@group(0) @binding(1) var<storage, read> tv_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> tv_partial1: array<f32>;
@group(0) @binding(3) var<storage, read_write> tv_partial2: array<f32>;
@group(0) @binding(4) var<storage, read_write> tv_partial3: array<f32>;
@group(0) @binding(5) var<storage, read_write> tv_partial4: array<f32>;

fn tv_power(d: f32) -> f32 {
    return select(abs(d), d * d, params.p == 2.0);
}

@compute @workgroup_size(256)
fn tv_terms(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= params.n) {
        return;
    }
    let at = tv_at(i);
    let d = tv_diffs(i, at.y, at.z);
    tv_partial1[i] = tv_power(d[0]);
    tv_partial2[i] = tv_power(d[1]);
    tv_partial3[i] = tv_power(d[2]);
    tv_partial4[i] = tv_power(d[3]);
}

@group(0) @binding(1) var<storage, read> tvf_sum1: array<f32>;
@group(0) @binding(2) var<storage, read> tvf_sum2: array<f32>;
@group(0) @binding(3) var<storage, read> tvf_sum3: array<f32>;
@group(0) @binding(4) var<storage, read> tvf_sum4: array<f32>;
@group(0) @binding(5) var<storage, read_write> tvf_loss: array<f32>;
@group(0) @binding(6) var<storage, read_write> tvf_coef: array<f32>;

@compute @workgroup_size(1)
fn tv_finish() {
    let w = params.teacher_channels;
    let h = params.hw / w;
    let planes = f32(params.batch);
    let counts = array<f32, 4>(
        planes * f32(h) * f32(w - 1u),
        planes * f32(h - 1u) * f32(w),
        planes * f32(h - 1u) * f32(w - 1u),
        planes * f32(h - 1u) * f32(w - 1u),
    );
    let sums = array<f32, 4>(tvf_sum1[0], tvf_sum2[0], tvf_sum3[0], tvf_sum4[0]);
    var loss = 0.0;
    for (var k = 0u; k < 4u; k++) {
        let s = sums[k];
        if (params.p == 2.0) {
            let norm = sqrt(s);
            loss += norm;
            // d‖D‖/dD = D/‖D‖; 0 where D is 0 everywhere, as PyTorch's norm gradient.
            tvf_coef[k] = select(0.0, 1.0 / norm, norm > 0.0);
        } else {
            loss += s / counts[k];
            tvf_coef[k] = 1.0 / counts[k];
        }
    }
    tvf_loss[0] = loss;
}

@group(0) @binding(1) var<storage, read> tvg_x: array<f32>;
@group(0) @binding(2) var<storage, read> tvg_coef: array<f32>;
@group(0) @binding(3) var<storage, read_write> tvg_grad: array<f32>;

// The derivative of |D|^p's contribution for one difference value.
fn tv_slope(k: u32, d: f32) -> f32 {
    return tvg_coef[k] * select(sign(d), d, params.p == 2.0);
}

@compute @workgroup_size(256)
fn tv_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= params.n) {
        return;
    }
    let w = params.teacher_channels;
    let h = params.hw / w;
    let at = tv_at(i);
    let hh = at.y;
    let ww = at.z;
    var g = 0.0;
    // D1 at (h, w) with +1, at (h, w−1) with −1.
    if (ww + 1u < w) {
        g += tv_slope(0u, tvg_x[i] - tvg_x[i + 1u]);
    }
    if (ww >= 1u) {
        g -= tv_slope(0u, tvg_x[i - 1u] - tvg_x[i]);
    }
    // D2 at (h, w) with +1, at (h−1, w) with −1.
    if (hh + 1u < h) {
        g += tv_slope(1u, tvg_x[i] - tvg_x[i + w]);
    }
    if (hh >= 1u) {
        g -= tv_slope(1u, tvg_x[i - w] - tvg_x[i]);
    }
    // D3(a, b) = x[a+1, b] − x[a, b+1]: this element is x[a+1, b] at (h−1, w) with +1, and
    // x[a, b+1] at (h, w−1) with −1.
    if (hh >= 1u && ww + 1u < w) {
        g += tv_slope(2u, tvg_x[i] - tvg_x[i - w + 1u]);
    }
    if (hh + 1u < h && ww >= 1u) {
        g -= tv_slope(2u, tvg_x[i + w - 1u] - tvg_x[i]);
    }
    // D4(a, b) = x[a, b] − x[a+1, b+1]: at (h, w) with +1, at (h−1, w−1) with −1.
    if (hh + 1u < h && ww + 1u < w) {
        g += tv_slope(3u, tvg_x[i] - tvg_x[i + w + 1u]);
    }
    if (hh >= 1u && ww >= 1u) {
        g -= tv_slope(3u, tvg_x[i - w - 1u] - tvg_x[i]);
    }
    tvg_grad[i] = g * params.grad_scale;
}
