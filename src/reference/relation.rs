//! f64 references for the relation-based losses (`shaders/relation.wgsl`): `sp`, `rkd_distance`,
//! `rkd_angle`, `pkt`, as `docs/losses.md` defines them (RepDistiller's). Inputs are flattened to
//! (B, D) row-major; each returns the loss and its gradient with respect to the student.

use super::{LossGrad, LossGrads};

fn gram(f: &[f64], batch: usize) -> Vec<f64> {
    let d = f.len() / batch;
    let mut g = vec![0.0; batch * batch];
    for i in 0..batch {
        for j in 0..batch {
            g[i * batch + j] = (0..d).map(|k| f[i * d + k] * f[j * d + k]).sum();
        }
    }
    g
}

/// `(M + Mᵀ) F` for a B×B matrix M and F of shape (B, D).
fn sym_times(m: &[f64], f: &[f64], batch: usize) -> Vec<f64> {
    let d = f.len() / batch;
    let mut out = vec![0.0; f.len()];
    for i in 0..batch {
        for j in 0..batch {
            let w = m[i * batch + j] + m[j * batch + i];
            for k in 0..d {
                out[i * d + k] += w * f[j * d + k];
            }
        }
    }
    out
}

/// Similarity preserving: `Σ (G_s − G_t)² / B²`, `G = normalize(F Fᵀ)` row-wise.
pub fn sp(s: &[f64], t: &[f64], batch: usize) -> LossGrad {
    let norm_rows = |g: Vec<f64>| -> (Vec<f64>, Vec<f64>) {
        let n: Vec<f64> = g
            .chunks(batch)
            .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
            .collect();
        let gn = g
            .iter()
            .enumerate()
            .map(|(k, v)| v / n[k / batch].max(1e-12))
            .collect();
        (gn, n)
    };
    let (gs, ns) = norm_rows(gram(s, batch));
    let (gt, _) = norm_rows(gram(t, batch));
    let bb = (batch * batch) as f64;
    let loss = gs
        .iter()
        .zip(&gt)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        / bb;
    let mut dg = vec![0.0; batch * batch];
    for i in 0..batch {
        let h: Vec<f64> = (0..batch)
            .map(|j| 2.0 * (gs[i * batch + j] - gt[i * batch + j]) / bb)
            .collect();
        let dot: f64 = (0..batch).map(|j| gs[i * batch + j] * h[j]).sum();
        for j in 0..batch {
            dg[i * batch + j] = if ns[i] > 1e-12 {
                (h[j] - gs[i * batch + j] * dot) / ns[i]
            } else {
                h[j] / 1e-12
            };
        }
    }
    LossGrad {
        loss,
        grad: sym_times(&dg, s, batch),
    }
}

fn smooth_l1(x: f64) -> f64 {
    if x.abs() < 1.0 {
        0.5 * x * x
    } else {
        x.abs() - 0.5
    }
}

fn smooth_l1_grad(x: f64) -> f64 {
    if x.abs() < 1.0 { x } else { x.signum() }
}

/// Pairwise distances `sqrt(max(|e_i|²+|e_j|²−2e_i·e_j, 1e-12))` with a zero diagonal, and whether
/// each entry was clamped.
fn pdist(e: &[f64], batch: usize) -> (Vec<f64>, Vec<bool>) {
    let g = gram(e, batch);
    let mut d = vec![0.0; batch * batch];
    let mut clamped = vec![true; batch * batch];
    for i in 0..batch {
        for j in 0..batch {
            if i == j {
                continue;
            }
            let q = g[i * batch + i] + g[j * batch + j] - 2.0 * g[i * batch + j];
            clamped[i * batch + j] = q <= 1e-12;
            d[i * batch + j] = q.max(1e-12).sqrt();
        }
    }
    (d, clamped)
}

/// RKD distance: smooth-L1 between mean-normalised pairwise distance matrices, mean over B².
pub fn rkd_distance(s: &[f64], t: &[f64], batch: usize) -> LossGrad {
    let normalise = |d: &[f64]| -> (Vec<f64>, f64, f64) {
        let positive: Vec<f64> = d.iter().copied().filter(|&v| v > 0.0).collect();
        let mean = positive.iter().sum::<f64>() / positive.len() as f64;
        (
            d.iter().map(|v| v / mean).collect(),
            mean,
            positive.len() as f64,
        )
    };
    let (ds_raw, clamped) = pdist(s, batch);
    let (dt_raw, _) = pdist(t, batch);
    let (ds, mean, count) = normalise(&ds_raw);
    let (dt, _, _) = normalise(&dt_raw);
    let bb = (batch * batch) as f64;
    let loss = ds
        .iter()
        .zip(&dt)
        .map(|(a, b)| smooth_l1(a - b))
        .sum::<f64>()
        / bb;
    let h: Vec<f64> = ds
        .iter()
        .zip(&dt)
        .map(|(a, b)| smooth_l1_grad(a - b) / bb)
        .collect();
    // Through d / mean, where the mean is over the positive entries.
    let hd: f64 = h.iter().zip(&ds_raw).map(|(h, d)| h * d).sum::<f64>() / (mean * mean);
    let dd: Vec<f64> = (0..batch * batch)
        .map(|k| {
            if ds_raw[k] > 0.0 {
                h[k] / mean - hd / count
            } else {
                0.0
            }
        })
        .collect();
    let dcols = s.len() / batch;
    let mut grad = vec![0.0; s.len()];
    for i in 0..batch {
        for j in 0..batch {
            let k = i * batch + j;
            if i == j || clamped[k] {
                continue;
            }
            // d_ij = sqrt(|e_i − e_j|²): d d_ij / d e_i = (e_i − e_j) / d_ij.
            let w = dd[k] / ds_raw[k];
            for c in 0..dcols {
                let diff = s[i * dcols + c] - s[j * dcols + c];
                grad[i * dcols + c] += w * diff;
                grad[j * dcols + c] -= w * diff;
            }
        }
    }
    LossGrad { loss, grad }
}

/// Unit difference vectors `u_ij = normalize(e_j − e_i)` (zero for j = i) and the norms used.
fn unit_differences(e: &[f64], batch: usize) -> (Vec<Vec<f64>>, Vec<f64>) {
    let d = e.len() / batch;
    let mut u = vec![vec![0.0; d]; batch * batch];
    let mut n = vec![1e-12; batch * batch];
    for i in 0..batch {
        for j in 0..batch {
            if i == j {
                continue;
            }
            let v: Vec<f64> = (0..d).map(|k| e[j * d + k] - e[i * d + k]).collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            n[i * batch + j] = norm;
            u[i * batch + j] = v.iter().map(|x| x / norm).collect();
        }
    }
    (u, n)
}

/// RKD angle: smooth-L1 between angle tensors `A_ijk = u_ij · u_ik`, mean over B³. The reference
/// materialises every u_ij (O(B²D)); the GPU kernel does not.
pub fn rkd_angle(s: &[f64], t: &[f64], batch: usize) -> LossGrad {
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let (us, ns) = unit_differences(s, batch);
    let (ut, _) = unit_differences(t, batch);
    let bbb = (batch * batch * batch) as f64;
    let d = s.len() / batch;
    let mut loss = 0.0;
    // dL/du_ij accumulated as D-vectors.
    let mut du = vec![vec![0.0; d]; batch * batch];
    for i in 0..batch {
        for j in 0..batch {
            for k in 0..batch {
                let (ij, ik) = (i * batch + j, i * batch + k);
                let a_s = dot(&us[ij], &us[ik]);
                let a_t = dot(&ut[ij], &ut[ik]);
                loss += smooth_l1(a_s - a_t) / bbb;
                let h = smooth_l1_grad(a_s - a_t) / bbb;
                for c in 0..d {
                    du[ij][c] += h * us[ik][c];
                    du[ik][c] += h * us[ij][c];
                }
            }
        }
    }
    let mut grad = vec![0.0; s.len()];
    for i in 0..batch {
        for j in 0..batch {
            let ij = i * batch + j;
            if i == j {
                continue;
            }
            // Through u = v / max(|v|, eps): (du − u (u·du)) / |v|, or du / eps when clamped.
            let proj = if ns[ij] > 1e-12 {
                dot(&us[ij], &du[ij])
            } else {
                0.0
            };
            for c in 0..d {
                let dv = (du[ij][c] - us[ij][c] * proj) / ns[ij];
                grad[j * d + c] += dv;
                grad[i * d + c] -= dv;
            }
        }
    }
    LossGrad { loss, grad }
}

/// PKT: KL-like divergence between row-normalised cosine-similarity distributions.
pub fn pkt(s: &[f64], t: &[f64], batch: usize) -> LossGrad {
    const EPS: f64 = 1e-7;
    let unit = |f: &[f64]| -> (Vec<f64>, Vec<f64>) {
        let d = f.len() / batch;
        let n: Vec<f64> = f
            .chunks(d)
            .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
            .collect();
        (
            f.iter()
                .enumerate()
                .map(|(k, v)| v / (n[k / d] + EPS))
                .collect(),
            n,
        )
    };
    let probs = |xh: &[f64]| -> (Vec<f64>, Vec<f64>) {
        let k = gram(xh, batch);
        let sim: Vec<f64> = k.iter().map(|v| (v + 1.0) / 2.0).collect();
        let sums: Vec<f64> = sim.chunks(batch).map(|r| r.iter().sum()).collect();
        (
            sim.iter()
                .enumerate()
                .map(|(k, v)| v / sums[k / batch])
                .collect(),
            sums,
        )
    };
    let (xs, norms) = unit(s);
    let (xt, _) = unit(t);
    let (ps, sums) = probs(&xs);
    let (pt, _) = probs(&xt);
    let bb = (batch * batch) as f64;
    let loss = pt
        .iter()
        .zip(&ps)
        .map(|(t, s)| t * ((t + EPS) / (s + EPS)).ln())
        .sum::<f64>()
        / bb;
    let mut dk = vec![0.0; batch * batch];
    for i in 0..batch {
        let g: Vec<f64> = (0..batch)
            .map(|j| -pt[i * batch + j] / (ps[i * batch + j] + EPS) / bb)
            .collect();
        let gp: f64 = (0..batch).map(|j| g[j] * ps[i * batch + j]).sum();
        for j in 0..batch {
            // Through P = S / rowsum(S), then S = (K + 1) / 2.
            dk[i * batch + j] = (g[j] - gp) / sums[i] / 2.0;
        }
    }
    let dxh = sym_times(&dk, &xs, batch);
    let d = s.len() / batch;
    let mut grad = vec![0.0; s.len()];
    for i in 0..batch {
        let n = norms[i];
        if n == 0.0 {
            continue;
        }
        let xg: f64 = (0..d).map(|c| s[i * d + c] * dxh[i * d + c]).sum();
        for c in 0..d {
            // x̂ = x / (|x| + eps).
            grad[i * d + c] =
                dxh[i * d + c] / (n + EPS) - s[i * d + c] * xg / (n * (n + EPS) * (n + EPS));
        }
    }
    LossGrad { loss, grad }
}

/// The correlation kernel of CC: the `max_p`-order Taylor series of the Gaussian RBF,
/// `e^(−2γ) Σ_{p=0..P} (2γ)^p / p! · g^p`, and its derivative in `g`.
pub fn cc_kernel(g: f64, gamma: f64, max_p: usize) -> (f64, f64) {
    let scale = (-2.0 * gamma).exp();
    let (mut value, mut slope) = (0.0, 0.0);
    let mut coef = 1.0; // (2γ)^p / p!
    for p in 0..=max_p {
        value += coef * g.powi(p as i32);
        if p >= 1 {
            // (2γ)^p/(p−1)! = p·(2γ)^p/p!
            slope += p as f64 * coef * g.powi(p as i32 - 1);
        }
        coef *= 2.0 * gamma / (p + 1) as f64;
    }
    (scale * value, scale * slope)
}

/// Correlation congruence (torchdistill's CCKDLoss, Gaussian kernel, batchmean):
/// `‖C(s) − C(t)‖_F / B²` with `C(f)_ij` the kernel of `f_i · f_j` (the norm, not its square; its
/// gradient is 0 where the two agree).
pub fn cc(s: &[f64], t: &[f64], batch: usize, gamma: f64, max_p: usize) -> LossGrad {
    let (gs, gt) = (gram(s, batch), gram(t, batch));
    let d: Vec<f64> = gs
        .iter()
        .zip(&gt)
        .map(|(&a, &b)| cc_kernel(a, gamma, max_p).0 - cc_kernel(b, gamma, max_p).0)
        .collect();
    let norm = d.iter().map(|v| v * v).sum::<f64>().sqrt();
    let b2 = (batch * batch) as f64;
    let dim = s.len() / batch;
    let mut grad = vec![0.0; s.len()];
    if norm > 0.0 {
        for i in 0..batch {
            for j in 0..batch {
                let c = 2.0 * d[i * batch + j] * cc_kernel(gs[i * batch + j], gamma, max_p).1
                    / (b2 * norm);
                for k in 0..dim {
                    grad[i * dim + k] += c * s[j * dim + k];
                }
            }
        }
    }
    LossGrad {
        loss: norm / b2,
        grad,
    }
}

/// One side's inputs of IRG: the logits (B, K), the feature (B, D) and two maps (B, C, H, W).
pub struct IrgSide<'a> {
    /// Logits.
    pub logits: &'a [f64],
    /// The pooled feature, flattened.
    pub feat: &'a [f64],
    /// The earlier map and its shape.
    pub fm1: (&'a [f64], [usize; 4]),
    /// The later map and its shape.
    pub fm2: (&'a [f64], [usize; 4]),
}

/// A graph compared by IRG: values clamped at 1e-12 (entries on `zero`'s list kept at 0),
/// normalised by their maximum.
struct IrgGraph {
    raw: Vec<f64>,
    value: Vec<f64>,
    max: f64,
    arg: usize,
    fixed: Vec<bool>,
}

impl IrgGraph {
    fn new(raw: Vec<f64>, fixed: Vec<bool>) -> IrgGraph {
        let value: Vec<f64> = raw
            .iter()
            .zip(&fixed)
            .map(|(&r, &f)| if f { 0.0 } else { r.max(1e-12) })
            .collect();
        let (mut arg, mut max) = (0, f64::NEG_INFINITY);
        for (k, &v) in value.iter().enumerate() {
            if v > max {
                (arg, max) = (k, v);
            }
        }
        IrgGraph {
            raw,
            value,
            max,
            arg,
            fixed,
        }
    }

    /// `scale·Σ (a/m_a − b/m_b)²` and its gradient with respect to `self`'s raw values.
    fn compare(&self, other: &IrgGraph, scale: f64) -> (f64, Vec<f64>) {
        let d: Vec<f64> = self
            .value
            .iter()
            .zip(&other.value)
            .map(|(a, b)| a / self.max - b / other.max)
            .collect();
        let loss = scale * d.iter().map(|d| d * d).sum::<f64>();
        let s: f64 = d
            .iter()
            .zip(&self.value)
            .map(|(d, a)| 2.0 * scale * d * a)
            .sum();
        let mut grad: Vec<f64> = d.iter().map(|d| 2.0 * scale * d / self.max).collect();
        grad[self.arg] -= s / (self.max * self.max);
        for (k, g) in grad.iter_mut().enumerate() {
            if self.fixed[k] || self.raw[k] < 1e-12 {
                *g = 0.0;
            }
        }
        (loss, grad)
    }
}

/// IRG's edge graph of `x` viewed as (B, D): squared distances, diagonal 0.
fn irg_edges(x: &[f64], batch: usize) -> IrgGraph {
    let g = gram(x, batch);
    let raw = (0..batch * batch)
        .map(|e| {
            let (i, j) = (e / batch, e % batch);
            g[i * batch + i] + g[j * batch + j] - 2.0 * g[i * batch + j]
        })
        .collect();
    let fixed = (0..batch * batch).map(|e| e / batch == e % batch).collect();
    IrgGraph::new(raw, fixed)
}

/// `w·mean((E(s) − E(t))²)` of two edge graphs and the gradient with respect to `s`.
fn irg_edge_term(s: &[f64], t: &[f64], batch: usize, w: f64) -> (f64, Vec<f64>) {
    let (es, et) = (irg_edges(s, batch), irg_edges(t, batch));
    let (loss, de) = es.compare(&et, w / (batch * batch) as f64);
    let d = s.len() / batch;
    let mut grad = vec![0.0; s.len()];
    for i in 0..batch {
        for j in 0..batch {
            // E_ij = |x_i|² + |x_j|² − 2 x_i·x_j.
            let g = de[i * batch + j];
            for k in 0..d {
                let diff = 2.0 * g * (s[i * d + k] - s[j * d + k]);
                grad[i * d + k] += diff;
                grad[j * d + k] -= diff;
            }
        }
    }
    (loss, grad)
}

/// IRG's transformation of one side: fm1 pooled to fm2's size when larger, fm2's channels
/// averaged in adjacent pairs when it has twice fm1's; the squared distance per sample, and the
/// difference (B, C1, H2·W2) it came from.
fn irg_transform(side: &IrgSide) -> (IrgGraph, Vec<f64>, bool, bool) {
    let ((fm1, [b, c1, h1, w1]), (fm2, [_, c2, h2, w2])) = (side.fm1, side.fm2);
    let pooled = h1 > h2;
    let p = if pooled {
        super::pool::adaptive_avg_pool(fm1, [b, c1, h1, w1], [h2, w2])
    } else {
        fm1.to_vec()
    };
    let halved = c1 < c2;
    let plane = h2 * w2;
    let diff: Vec<f64> = (0..b * c1 * plane)
        .map(|e| {
            let (n, c, x) = (e / (c1 * plane), (e / plane) % c1, e % plane);
            let q = if halved {
                let base = (n * c2 + 2 * c) * plane + x;
                0.5 * (fm2[base] + fm2[base + plane])
            } else {
                fm2[e]
            };
            p[e] - q
        })
        .collect();
    let raw = diff
        .chunks(c1 * plane)
        .map(|r| r.iter().map(|d| d * d).sum())
        .collect();
    (IrgGraph::new(raw, vec![false; b]), diff, pooled, halved)
}

/// Instance relationship graph (Knowledge-Distillation-Zoo `IRG`): `w_vert·mean((s − t)²)` on the
/// logits, plus `w_edge` times the mean over the feature and both maps of the edge graphs' MSE,
/// plus `w_tran` times the transformation vectors' MSE. Gradients for the student's logits,
/// feature, fm1 and fm2.
pub fn irg(s: &IrgSide, t: &IrgSide, batch: usize, weights: [f64; 3]) -> LossGrads {
    let [w_vert, w_edge, w_tran] = weights;
    let vertex = super::feature::hint(s.logits, t.logits);
    let grad_logits = vertex.grad.iter().map(|g| w_vert * g).collect();
    let (l_feat, grad_feat) = irg_edge_term(s.feat, t.feat, batch, w_edge / 3.0);
    let (l_fm1, mut grad_fm1) = irg_edge_term(s.fm1.0, t.fm1.0, batch, w_edge / 3.0);
    let (l_fm2, mut grad_fm2) = irg_edge_term(s.fm2.0, t.fm2.0, batch, w_edge / 3.0);
    let (ts, diff, pooled, halved) = irg_transform(s);
    let (tt, ..) = irg_transform(t);
    let (l_tran, dt) = ts.compare(&tt, w_tran / batch as f64);
    let ([_, c1, h1, w1], [_, c2, h2, w2]) = (s.fm1.1, s.fm2.1);
    let per_sample = diff.len() / batch;
    let dp: Vec<f64> = diff
        .iter()
        .enumerate()
        .map(|(e, d)| 2.0 * d * dt[e / per_sample])
        .collect();
    let dfm1 = if pooled {
        super::pool::adaptive_avg_pool_backward(&dp, [batch, c1, h1, w1], [h2, w2])
    } else {
        dp.clone()
    };
    let plane = h2 * w2;
    for (g, d) in grad_fm1.iter_mut().zip(dfm1) {
        *g += d;
    }
    for (e, g) in grad_fm2.iter_mut().enumerate() {
        let (n, c, x) = (e / (c2 * plane), (e / plane) % c2, e % plane);
        *g -= if halved {
            0.5 * dp[(n * c1 + c / 2) * plane + x]
        } else {
            dp[e]
        };
    }
    LossGrads {
        loss: w_vert * vertex.loss + l_feat + l_fm1 + l_fm2 + l_tran,
        grads: vec![grad_logits, grad_feat, grad_fm1, grad_fm2],
        updated: Vec::new(),
    }
}
