//! f64 references for the feature-based losses (`shaders/feature.wgsl`): `hint`, `at`, `ft`,
//! `ab`, `nst`, `fsp` and `vid`, as `docs/losses.md` defines them (RepDistiller's FitNet, AT, FT,
//! AB, NST, FSP and VID), and DeepInversion's image priors `tv` and `l2_norm` and its
//! batch-statistic term `bn_match`. Each returns the loss and its gradients with respect to the student
//! inputs (and VID's `log_scale`); the teacher is a constant.

use super::{LossGrad, LossGrads};

/// FitNet hint: `mean((s − t)²)`.
pub fn hint(s: &[f64], t: &[f64]) -> LossGrad {
    let n = s.len() as f64;
    let loss = s.iter().zip(t).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / n;
    let grad = s.iter().zip(t).map(|(a, b)| 2.0 * (a - b) / n).collect();
    LossGrad { loss, grad }
}

/// `x^p` as PyTorch's `pow` computes it for real `p`.
fn powf(x: f64, p: f64) -> f64 {
    x.powf(p)
}

/// Attention maps `normalize(mean_c(f^p))` per sample, for `f` of shape (B, C, HW); also returns
/// the unnormalised maps and their norms.
fn attention(
    f: &[f64],
    batch: usize,
    channels: usize,
    hw: usize,
    p: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut m = vec![0.0; batch * hw];
    for b in 0..batch {
        for c in 0..channels {
            for i in 0..hw {
                m[b * hw + i] += powf(f[(b * channels + c) * hw + i], p) / channels as f64;
            }
        }
    }
    let norms: Vec<f64> = m
        .chunks(hw)
        .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12))
        .collect();
    let a = m
        .iter()
        .enumerate()
        .map(|(k, v)| v / norms[k / hw])
        .collect();
    (a, m, norms)
}

/// Attention transfer: `mean((a(s) − a(t))²)` over B·H·W. Shapes (B, Cs, HW) and (B, Ct, HW).
pub fn at(s: &[f64], t: &[f64], batch: usize, cs: usize, ct: usize, hw: usize, p: f64) -> LossGrad {
    ft(s, t, batch, cs, ct, hw, p, 2.0)
}

/// Factor transfer: with `f(x) = normalize(mean_c(x^p1))` per sample, `mean(|f(s) − f(t)|)` for
/// `p2 = 1`, else `mean((f(s) − f(t))^p2)`, over B·H·W. The gradient of |d| at d = 0 is 0.
#[allow(clippy::too_many_arguments)]
pub fn ft(
    s: &[f64],
    t: &[f64],
    batch: usize,
    cs: usize,
    ct: usize,
    hw: usize,
    p1: f64,
    p2: f64,
) -> LossGrad {
    let (a_s, m_s, n_s) = attention(s, batch, cs, hw, p1);
    let (a_t, _, _) = attention(t, batch, ct, hw, p1);
    let count = (batch * hw) as f64;
    let distance = |d: f64| if p2 == 1.0 { d.abs() } else { d.powf(p2) };
    let slope = |d: f64| {
        if p2 == 1.0 {
            if d == 0.0 { 0.0 } else { d.signum() }
        } else {
            p2 * d.powf(p2 - 1.0)
        }
    };
    let loss = a_s
        .iter()
        .zip(&a_t)
        .map(|(x, y)| distance(x - y))
        .sum::<f64>()
        / count;
    let mut grad = vec![0.0; s.len()];
    for b in 0..batch {
        let g: Vec<f64> = (0..hw)
            .map(|i| slope(a_s[b * hw + i] - a_t[b * hw + i]) / count)
            .collect();
        let row_norm = m_s[b * hw..(b + 1) * hw]
            .iter()
            .map(|v| v * v)
            .sum::<f64>()
            .sqrt();
        let dot: f64 = (0..hw).map(|i| a_s[b * hw + i] * g[i]).sum();
        for i in 0..hw {
            // Through normalize: (g − a (a·g)) / n, or g / eps when the norm was clamped.
            let dm = if row_norm > 1e-12 {
                (g[i] - a_s[b * hw + i] * dot) / n_s[b]
            } else {
                g[i] / n_s[b]
            };
            for c in 0..cs {
                let k = (b * cs + c) * hw + i;
                grad[k] = dm * p1 * powf(s[k], p1 - 1.0) / cs as f64;
            }
        }
    }
    LossGrad { loss, grad }
}

/// Activation boundaries (RepDistiller's ABLoss): `3/(1000·B) · Σ [(s + m)²·1(s > −m ∧ t ≤ 0) +
/// (s − m)²·1(s ≤ m ∧ t > 0)]` over every element.
pub fn ab(s: &[f64], t: &[f64], batch: usize, margin: f64) -> LossGrad {
    let scale = 3.0 / (1000.0 * batch as f64);
    let mut loss = 0.0;
    let grad = s
        .iter()
        .zip(t)
        .map(|(&x, &y)| {
            let mut g = 0.0;
            if x > -margin && y <= 0.0 {
                loss += (x + margin) * (x + margin);
                g += 2.0 * (x + margin);
            }
            if x <= margin && y > 0.0 {
                loss += (x - margin) * (x - margin);
                g += 2.0 * (x - margin);
            }
            scale * g
        })
        .collect();
    LossGrad {
        loss: scale * loss,
        grad,
    }
}

/// Rows of (R, HW) normalised as `F.normalize` does, with each row's clamped norm.
fn normalize_rows(x: &[f64], hw: usize) -> (Vec<f64>, Vec<f64>) {
    let norms: Vec<f64> = x
        .chunks(hw)
        .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12))
        .collect();
    let out = x
        .iter()
        .enumerate()
        .map(|(k, v)| v / norms[k / hw])
        .collect();
    (out, norms)
}

/// Per sample, `G[i][j] = a_i · b_j` for rows of (B, Ca, HW) and (B, Cb, HW): (B, Ca, Cb).
fn row_grams(a: &[f64], b: &[f64], batch: usize, ca: usize, cb: usize, hw: usize) -> Vec<f64> {
    let mut g = vec![0.0; batch * ca * cb];
    for n in 0..batch {
        for i in 0..ca {
            for j in 0..cb {
                let (x, y) = ((n * ca + i) * hw, (n * cb + j) * hw);
                g[(n * ca + i) * cb + j] = (0..hw).map(|k| a[x + k] * b[y + k]).sum();
            }
        }
    }
    g
}

/// Neuron selectivity transfer (RepDistiller's NSTLoss): with each channel normalised over its
/// H·W positions and `K(a, b)_ij = (a_i · b_j)²`, `mean K(t̂, t̂) + mean K(ŝ, ŝ) − 2·mean K(ŝ, t̂)`.
pub fn nst(s: &[f64], t: &[f64], batch: usize, cs: usize, ct: usize, hw: usize) -> LossGrad {
    let (sn, norms) = normalize_rows(s, hw);
    let (tn, _) = normalize_rows(t, hw);
    let gss = row_grams(&sn, &sn, batch, cs, cs, hw);
    let gst = row_grams(&sn, &tn, batch, cs, ct, hw);
    let gtt = row_grams(&tn, &tn, batch, ct, ct, hw);
    let b = batch as f64;
    let sq = |g: &[f64]| g.iter().map(|v| v * v).sum::<f64>();
    let (wss, wst, wtt) = (
        1.0 / (b * (cs * cs) as f64),
        -2.0 / (b * (cs * ct) as f64),
        1.0 / (b * (ct * ct) as f64),
    );
    let loss = wtt * sq(&gtt) + wss * sq(&gss) + wst * sq(&gst);
    let mut grad = vec![0.0; s.len()];
    for n in 0..batch {
        for i in 0..cs {
            let row = (n * cs + i) * hw;
            // d/dŝ_i: 4·wss Σ_j G_ss[i,j] ŝ_j + 2·wst Σ_j G_st[i,j] t̂_j.
            let g: Vec<f64> = (0..hw)
                .map(|k| {
                    let own: f64 = (0..cs)
                        .map(|j| gss[(n * cs + i) * cs + j] * sn[(n * cs + j) * hw + k])
                        .sum();
                    let cross: f64 = (0..ct)
                        .map(|j| gst[(n * cs + i) * ct + j] * tn[(n * ct + j) * hw + k])
                        .sum();
                    4.0 * wss * own + 2.0 * wst * cross
                })
                .collect();
            let norm = norms[n * cs + i];
            let raw = s[row..row + hw].iter().map(|v| v * v).sum::<f64>().sqrt();
            let dot: f64 = (0..hw).map(|k| sn[row + k] * g[k]).sum();
            for k in 0..hw {
                grad[row + k] = if raw > 1e-12 {
                    (g[k] - sn[row + k] * dot) / norm
                } else {
                    g[k] / norm
                };
            }
        }
    }
    LossGrad { loss, grad }
}

/// Flow of solution procedure (RepDistiller's FSP): with `G(a, b)[n,j,i] = (1/HW) Σ_x
/// b[n,j,x]·a[n,i,x]` per side, `mean((G(s_a, s_b) − G(t_a, t_b))²)` over B·C2·C1; the sides'
/// H·W may differ. Returns the gradients with respect to `s_a` and `s_b`.
#[allow(clippy::too_many_arguments)]
pub fn fsp(
    sa: &[f64],
    sb: &[f64],
    ta: &[f64],
    tb: &[f64],
    batch: usize,
    c1: usize,
    c2: usize,
    hw_s: usize,
    hw_t: usize,
) -> super::LossGrads {
    let flow = |a: &[f64], b: &[f64], hw: usize| -> Vec<f64> {
        row_grams(b, a, batch, c2, c1, hw)
            .into_iter()
            .map(|g| g / hw as f64)
            .collect()
    };
    let (gs, gt) = (flow(sa, sb, hw_s), flow(ta, tb, hw_t));
    let count = (batch * c1 * c2) as f64;
    let d: Vec<f64> = gs.iter().zip(&gt).map(|(x, y)| x - y).collect();
    let loss = d.iter().map(|v| v * v).sum::<f64>() / count;
    let (mut ga, mut gb) = (vec![0.0; sa.len()], vec![0.0; sb.len()]);
    for n in 0..batch {
        for j in 0..c2 {
            for i in 0..c1 {
                let dg = 2.0 * d[(n * c2 + j) * c1 + i] / (count * hw_s as f64);
                for x in 0..hw_s {
                    ga[(n * c1 + i) * hw_s + x] += dg * sb[(n * c2 + j) * hw_s + x];
                    gb[(n * c2 + j) * hw_s + x] += dg * sa[(n * c1 + i) * hw_s + x];
                }
            }
        }
    }
    super::LossGrads {
        loss,
        grads: vec![ga, gb],
        updated: Vec::new(),
    }
}

/// VID on (B, C, H·W) maps `s` (the predicted mean) and `t`, with per-channel `log_scale`:
/// `mean(0.5·((s − t)²/v_c + log v_c))`, `v_c = softplus(log_scale_c) + eps`; gradients for `s`
/// and `log_scale`.
pub fn vid(
    s: &[f64],
    t: &[f64],
    log_scale: &[f64],
    batch: usize,
    channels: usize,
    hw: usize,
    eps: f64,
) -> LossGrads {
    let n = (batch * channels * hw) as f64;
    let softplus = |x: f64| x.max(0.0) + (-x.abs()).exp().ln_1p();
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let mut loss = 0.0;
    let mut grad_s = vec![0.0; s.len()];
    let mut grad_scale = vec![0.0; channels];
    for (i, (&x, &y)) in s.iter().zip(t).enumerate() {
        let c = (i / hw) % channels;
        let v = softplus(log_scale[c]) + eps;
        let d = x - y;
        loss += 0.5 * (d * d / v + v.ln());
        grad_s[i] = d / (v * n);
        grad_scale[c] += 0.5 * (1.0 / v - d * d / (v * v)) * sigmoid(log_scale[c]) / n;
    }
    LossGrads {
        loss: loss / n,
        grads: vec![grad_s, grad_scale],
        updated: Vec::new(),
    }
}

/// Total variation of `planes` images of `h × w` (DeepInversion's four neighbour differences):
/// `p = 2` gives `Σ_d ‖D_d‖₂`, `p = 1` gives `Σ_d mean |D_d|`; the gradient is each difference's
/// derivative added to its first element and subtracted from its second (a zero norm's is 0).
pub fn tv(x: &[f64], [planes, h, w]: [usize; 3], p: f64) -> LossGrad {
    let at = |n: usize, r: usize, c: usize| (n * h + r) * w + c;
    // Each direction: the (first, second) element pairs of its differences.
    let mut dirs: [Vec<(usize, usize)>; 4] = Default::default();
    for n in 0..planes {
        for r in 0..h {
            for c in 0..w {
                if c + 1 < w {
                    dirs[0].push((at(n, r, c), at(n, r, c + 1)));
                }
                if r + 1 < h {
                    dirs[1].push((at(n, r, c), at(n, r + 1, c)));
                }
                if r + 1 < h && c + 1 < w {
                    dirs[2].push((at(n, r + 1, c), at(n, r, c + 1)));
                    dirs[3].push((at(n, r, c), at(n, r + 1, c + 1)));
                }
            }
        }
    }
    let mut loss = 0.0;
    let mut grad = vec![0.0; x.len()];
    for pairs in &dirs {
        let d: Vec<f64> = pairs.iter().map(|&(a, b)| x[a] - x[b]).collect();
        let slopes: Vec<f64> = if p == 2.0 {
            let norm = d.iter().map(|v| v * v).sum::<f64>().sqrt();
            loss += norm;
            d.iter()
                .map(|v| if norm > 0.0 { v / norm } else { 0.0 })
                .collect()
        } else {
            let count = d.len() as f64;
            loss += d.iter().map(|v| v.abs()).sum::<f64>() / count;
            let sign = |v: f64| if v == 0.0 { 0.0 } else { v.signum() };
            d.iter().map(|&v| sign(v) / count).collect()
        };
        for (&(a, b), s) in pairs.iter().zip(slopes) {
            grad[a] += s;
            grad[b] -= s;
        }
    }
    LossGrad { loss, grad }
}

/// `mean_b ‖x_b‖₂` over `batch` samples, gradient `x_b/(B·‖x_b‖)` (0 for a zero sample).
pub fn l2_norm(x: &[f64], batch: usize) -> LossGrad {
    let d = x.len() / batch;
    let b = batch as f64;
    let mut loss = 0.0;
    let mut grad = Vec::with_capacity(x.len());
    for row in x.chunks(d) {
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        loss += norm / b;
        grad.extend(
            row.iter()
                .map(|v| if norm > 0.0 { v / (b * norm) } else { 0.0 }),
        );
    }
    LossGrad { loss, grad }
}

/// DeepInversion's term for one BatchNorm layer: `‖s₀ − t₀‖₂ + ‖s₁ − t₁‖₂` over the two rows of
/// `(2, C)` moments `s` and running statistics `t`; gradient each row's difference over its norm.
pub fn bn_match(s: &[f64], t: &[f64]) -> LossGrad {
    let c = s.len() / 2;
    let mut loss = 0.0;
    let mut grad = Vec::with_capacity(s.len());
    for (rs, rt) in s.chunks(c).zip(t.chunks(c)) {
        let d: Vec<f64> = rs.iter().zip(rt).map(|(a, b)| a - b).collect();
        let norm = d.iter().map(|v| v * v).sum::<f64>().sqrt();
        loss += norm;
        grad.extend(d.iter().map(|v| if norm > 0.0 { v / norm } else { 0.0 }));
    }
    LossGrad { loss, grad }
}
