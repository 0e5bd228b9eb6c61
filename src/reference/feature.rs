//! f64 references for the feature-based losses (`shaders/feature.wgsl`): `hint` and `at`, as
//! `docs/losses.md` defines them (RepDistiller's FitNet and AT). Each returns the loss and its
//! gradient with respect to the student; the teacher is a constant.

use super::LossGrad;

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
    let (a_s, m_s, n_s) = attention(s, batch, cs, hw, p);
    let (a_t, _, _) = attention(t, batch, ct, hw, p);
    let count = (batch * hw) as f64;
    let loss = a_s
        .iter()
        .zip(&a_t)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        / count;
    let mut grad = vec![0.0; s.len()];
    for b in 0..batch {
        let g: Vec<f64> = (0..hw)
            .map(|i| 2.0 * (a_s[b * hw + i] - a_t[b * hw + i]) / count)
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
                grad[k] = dm * p * powf(s[k], p - 1.0) / cs as f64;
            }
        }
    }
    LossGrad { loss, grad }
}
