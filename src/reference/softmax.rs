//! f64 references for softmax and log-softmax with a temperature, over the last axis.

use super::losses::{log_softmax as log_softmax_row, softmax as softmax_row};

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
