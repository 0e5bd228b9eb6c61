//! f64 references for softmax and log-softmax with a temperature, over the last axis.

/// Stable softmax of a row.
pub fn softmax_row(z: &[f64]) -> Vec<f64> {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Stable log-softmax of a row.
pub fn log_softmax_row(z: &[f64]) -> Vec<f64> {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    z.iter().map(|v| v - lse).collect()
}

fn map_rows(x: &[f64], cols: usize, f: impl Fn(&[f64]) -> Vec<f64>) -> Vec<f64> {
    x.chunks(cols).flat_map(f).collect()
}

/// `softmax(x/T)` per row (or `log_softmax` when `log`).
pub fn forward(x: &[f64], cols: usize, temperature: f64, log: bool) -> Vec<f64> {
    map_rows(x, cols, |r| {
        let z: Vec<f64> = r.iter().map(|v| v / temperature).collect();
        if log {
            log_softmax_row(&z)
        } else {
            softmax_row(&z)
        }
    })
}

/// The backward pass from the forward's output `y` and the upstream gradient `dy`.
pub fn backward(y: &[f64], dy: &[f64], cols: usize, temperature: f64, log: bool) -> Vec<f64> {
    y.chunks(cols)
        .zip(dy.chunks(cols))
        .flat_map(|(y, dy)| {
            if log {
                let total: f64 = dy.iter().sum();
                y.iter()
                    .zip(dy)
                    .map(|(y, g)| (g - y.exp() * total) / temperature)
                    .collect::<Vec<_>>()
            } else {
                let dot: f64 = y.iter().zip(dy).map(|(y, g)| y * g).sum();
                y.iter()
                    .zip(dy)
                    .map(|(y, g)| y * (g - dot) / temperature)
                    .collect()
            }
        })
        .collect()
}

/// `T · log(Σ_k w_k softmax(t_k / T))` per row: the teachers' mixture as logits.
pub fn mixture_logits(
    teachers: &[Vec<f64>],
    weights: &[f64],
    cols: usize,
    temperature: f64,
) -> Vec<f64> {
    let probs: Vec<Vec<f64>> = teachers
        .iter()
        .map(|t| forward(t, cols, temperature, false))
        .collect();
    (0..teachers[0].len())
        .map(|i| {
            let p: f64 = probs.iter().zip(weights).map(|(p, w)| w * p[i]).sum();
            temperature * p.ln()
        })
        .collect()
}
