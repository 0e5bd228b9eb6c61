//! f64 references for the response-based losses (`shaders/response.wgsl`): `ce`, `kd`, `dkd`,
//! `js`, `bce`, `l1` and `balance`, as `docs/losses.md` defines them (RepDistiller's KD, mdistiller's DKD,
//! PyTorch's `binary_cross_entropy_with_logits` and `l1_loss`). Each returns the loss and
//! its gradient with respect to the student; the teacher is a constant.

use super::LossGrad;
use super::softmax::{log_softmax_row as log_softmax, softmax_row as softmax};

fn rows(x: &[f64], cols: usize) -> impl Iterator<Item = &[f64]> {
    x.chunks(cols.max(1))
}
/// `Σ p (log p − log q)` with `0 log 0 = 0`.
fn kl(p: &[f64], log_p: &[f64], log_q: &[f64]) -> f64 {
    p.iter()
        .zip(log_p)
        .zip(log_q)
        .map(|((&p, &lp), &lq)| if p > 0.0 { p * (lp - lq) } else { 0.0 })
        .sum()
}

/// Cross-entropy: `−(1/B) Σ_b log_softmax(s)_b[y_b]`.
pub fn ce(s: &[f64], labels: &[usize], classes: usize) -> LossGrad {
    ce_partly_labelled(s, &all_labelled(labels), classes)
}

/// Every row labelled.
fn all_labelled(labels: &[usize]) -> Vec<Option<usize>> {
    labels.iter().map(|&y| Some(y)).collect()
}

/// The labelled rows' count, at least 1 (a batch without labels has loss 0 and no gradient).
fn labelled_rows(labels: &[Option<usize>]) -> f64 {
    labels.iter().filter(|y| y.is_some()).count().max(1) as f64
}

/// Cross-entropy over the labelled rows (`None`: unlabelled, PyTorch's `ignore_index`):
/// `−(1/L) Σ_{b labelled} log_softmax(s)_b[y_b]`, L the labelled rows; an unlabelled row has no
/// gradient.
pub fn ce_partly_labelled(s: &[f64], labels: &[Option<usize>], classes: usize) -> LossGrad {
    let b = labelled_rows(labels);
    let mut loss = 0.0;
    let mut grad = Vec::with_capacity(s.len());
    for (row, &y) in rows(s, classes).zip(labels) {
        let Some(y) = y else {
            grad.extend(std::iter::repeat_n(0.0, row.len()));
            continue;
        };
        let ls = log_softmax(row);
        loss -= ls[y] / b;
        grad.extend(
            ls.iter()
                .enumerate()
                .map(|(c, l)| (l.exp() - f64::from(c == y)) / b),
        );
    }
    LossGrad { loss, grad }
}

/// Hinton KD: `T²/B Σ KL(softmax(t/T) ‖ softmax(s/T))`.
pub fn kd(s: &[f64], t: &[f64], classes: usize, temperature: f64) -> LossGrad {
    let b = (s.len() / classes) as f64;
    let mut loss = 0.0;
    let mut grad = Vec::with_capacity(s.len());
    for (rs, rt) in rows(s, classes).zip(rows(t, classes)) {
        let zs: Vec<f64> = rs.iter().map(|v| v / temperature).collect();
        let zt: Vec<f64> = rt.iter().map(|v| v / temperature).collect();
        let (ls, lt) = (log_softmax(&zs), log_softmax(&zt));
        let pt: Vec<f64> = lt.iter().map(|v| v.exp()).collect();
        loss += temperature * temperature / b * kl(&pt, &lt, &ls);
        grad.extend(
            ls.iter()
                .zip(&pt)
                .map(|(l, p)| temperature / b * (l.exp() - p)),
        );
    }
    LossGrad { loss, grad }
}

/// Jensen–Shannon divergence of `softmax(s/T)` and `softmax(t/T)`, mean over rows; the gradient
/// in `s`.
pub fn js(s: &[f64], t: &[f64], classes: usize, temperature: f64) -> LossGrad {
    let b = (s.len() / classes) as f64;
    let mut loss = 0.0;
    let mut grad = Vec::with_capacity(s.len());
    for (rs, rt) in rows(s, classes).zip(rows(t, classes)) {
        let soft = |r: &[f64]| -> Vec<f64> {
            let z: Vec<f64> = r.iter().map(|v| v / temperature).collect();
            log_softmax(&z).iter().map(|l| l.exp()).collect()
        };
        let (p, q) = (soft(rs), soft(rt));
        let m: Vec<f64> = p.iter().zip(&q).map(|(a, b)| 0.5 * (a + b)).collect();
        let kl_to_m = |x: &[f64]| -> f64 {
            x.iter()
                .zip(&m)
                .filter(|(v, _)| **v > 0.0)
                .map(|(v, mm)| v * (v / mm).ln())
                .sum::<f64>()
        };
        loss += 0.5 * (kl_to_m(&p) + kl_to_m(&q)) / b;
        // dJS/dp_c = ½ log(p_c / m_c); back through the softmax at temperature T.
        let g: Vec<f64> = p
            .iter()
            .zip(&m)
            // (A probability that underflowed to 0 contributes 0, as its loss term does.)
            .map(|(a, mm)| if *a > 0.0 { 0.5 * (a / mm).ln() } else { 0.0 })
            .collect();
        let mean: f64 = p.iter().zip(&g).map(|(a, gg)| a * gg).sum();
        grad.extend(
            p.iter()
                .zip(&g)
                .map(|(a, gg)| a * (gg - mean) / (temperature * b)),
        );
    }
    LossGrad { loss, grad }
}

/// Decoupled KD: `alpha·TCKD + beta·NCKD` (mdistiller).
pub fn dkd(
    s: &[f64],
    t: &[f64],
    labels: &[usize],
    classes: usize,
    alpha: f64,
    beta: f64,
    temperature: f64,
) -> LossGrad {
    let labels = all_labelled(labels);
    dkd_partly_labelled(s, t, &labels, classes, [alpha, beta], temperature)
}

/// Decoupled KD over the labelled rows (it splits each row at its label), the mean over them as
/// [`ce_partly_labelled`]'s; `weights` are alpha and beta.
pub fn dkd_partly_labelled(
    s: &[f64],
    t: &[f64],
    labels: &[Option<usize>],
    classes: usize,
    [alpha, beta]: [f64; 2],
    temperature: f64,
) -> LossGrad {
    let b = labelled_rows(labels);
    let scale = temperature * temperature / b;
    let mut loss = 0.0;
    let mut grad = Vec::with_capacity(s.len());
    for ((rs, rt), &y) in rows(s, classes).zip(rows(t, classes)).zip(labels) {
        let Some(y) = y else {
            grad.extend(std::iter::repeat_n(0.0, rs.len()));
            continue;
        };
        let zs: Vec<f64> = rs.iter().map(|v| v / temperature).collect();
        let zt: Vec<f64> = rt.iter().map(|v| v / temperature).collect();
        let (ps, pt) = (softmax(&zs), softmax(&zt));
        // Binary masses [target, rest].
        let bs = [ps[y], 1.0 - ps[y]];
        let bt = [pt[y], 1.0 - pt[y]];
        let tckd: f64 = (0..2)
            .map(|k| {
                if bt[k] > 0.0 {
                    bt[k] * (bt[k].ln() - bs[k].ln())
                } else {
                    0.0
                }
            })
            .sum();
        // Non-target distributions: the target logit pushed out by 1000 before the softmax.
        let mask = |z: &[f64]| -> Vec<f64> {
            z.iter()
                .enumerate()
                .map(|(c, v)| v - 1000.0 * f64::from(c == y))
                .collect()
        };
        let (lqs, lqt) = (log_softmax(&mask(&zs)), log_softmax(&mask(&zt)));
        let qt: Vec<f64> = lqt.iter().map(|v| v.exp()).collect();
        let nckd = kl(&qt, &lqt, &lqs);
        loss += scale * (alpha * tckd + beta * nckd);
        // d TCKD / dz_c = ps_c − bt0 [c = y] − bt1 [c ≠ y] qs'_c, qs' = softmax over non-targets.
        for c in 0..classes {
            let d_tckd = if c == y {
                ps[c] - bt[0]
            } else {
                ps[c] - bt[1] * ps[c] / bs[1]
            };
            let d_nckd = lqs[c].exp() - qt[c];
            grad.push(temperature / b * (alpha * d_tckd + beta * d_nckd));
        }
    }
    LossGrad { loss, grad }
}

/// Binary cross-entropy with logits, mean over all elements: `max(z, 0) − z·y + log(1 + e^−|z|)`,
/// gradient `(σ(z) − y)/N` (PyTorch's `binary_cross_entropy_with_logits`).
pub fn bce(z: &[f64], y: &[f64]) -> LossGrad {
    let n = z.len() as f64;
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    let loss = z
        .iter()
        .zip(y)
        .map(|(&z, &y)| z.max(0.0) - z * y + (-z.abs()).exp().ln_1p())
        .sum::<f64>()
        / n;
    let grad = z
        .iter()
        .zip(y)
        .map(|(&z, &y)| (sigmoid(z) - y) / n)
        .collect();
    LossGrad { loss, grad }
}

/// Mean absolute difference `mean|s − t|`, gradient `sign(s − t)/N` (0 where equal), PyTorch's
/// `l1_loss`.
pub fn l1(s: &[f64], t: &[f64]) -> LossGrad {
    let n = s.len() as f64;
    let loss = s.iter().zip(t).map(|(a, b)| (a - b).abs()).sum::<f64>() / n;
    let sign = |d: f64| if d == 0.0 { 0.0 } else { d.signum() };
    let grad = s.iter().zip(t).map(|(a, b)| sign(a - b) / n).collect();
    LossGrad { loss, grad }
}

/// Class balance: `KL(p̄ ‖ uniform) = Σ_j p̄_j log(C p̄_j)` with `p̄ = (1/B) Σ_b softmax(s_b)`; the
/// gradient in `s`.
pub fn balance(s: &[f64], classes: usize) -> LossGrad {
    let p: Vec<Vec<f64>> = rows(s, classes).map(softmax).collect();
    let b = p.len() as f64;
    let mean: Vec<f64> = (0..classes)
        .map(|j| p.iter().map(|row| row[j]).sum::<f64>() / b)
        .collect();
    let c = classes as f64;
    let loss = mean
        .iter()
        .map(|&m| if m > 0.0 { m * (c * m).ln() } else { 0.0 })
        .sum();
    // dL/dp̄_j = log p̄_j + 1 + log C; the constants cancel through each row's softmax.
    let log_mean: Vec<f64> = mean
        .iter()
        .map(|&m| if m > 0.0 { m.ln() } else { 0.0 })
        .collect();
    let mut grad = Vec::with_capacity(s.len());
    for row in &p {
        let expected: f64 = row.iter().zip(&log_mean).map(|(a, l)| a * l).sum();
        grad.extend(
            row.iter()
                .zip(&log_mean)
                .map(|(a, l)| a * (l - expected) / b),
        );
    }
    LossGrad { loss, grad }
}
