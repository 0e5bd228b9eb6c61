//! CPU reference for `shaders/gate.wgsl`: ONE's gated ensemble, forward and backward.

use super::softmax;

/// `y = Σ_b softmax(gate)[:, b] ⊙ parts[b]` for gate logits (N, B) and B parts (N, C).
pub fn ensemble(gate: &[f64], parts: &[Vec<f64>], c: usize) -> Vec<f64> {
    let b = parts.len();
    let w = softmax::forward(gate, b, 1.0, false);
    let n = gate.len() / b;
    (0..n * c)
        .map(|i| (0..b).map(|k| w[i / c * b + k] * parts[k][i]).sum())
        .collect()
}

/// Gradients of [`ensemble`] given dy (N, C): the gate logits' and each part's.
pub fn ensemble_backward(
    gate: &[f64],
    parts: &[Vec<f64>],
    dy: &[f64],
    c: usize,
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let b = parts.len();
    let n = gate.len() / b;
    let w = softmax::forward(gate, b, 1.0, false);
    let dparts = (0..b)
        .map(|k| (0..n * c).map(|i| w[i / c * b + k] * dy[i]).collect())
        .collect();
    // dL/dw[n, k] = ⟨dy_n, z_k,n⟩; through the softmax, dg = w ⊙ (dw − Σ_k w_k dw_k).
    let dw: Vec<f64> = (0..n * b)
        .map(|j| {
            let (row, k) = (j / b, j % b);
            (0..c)
                .map(|col| dy[row * c + col] * parts[k][row * c + col])
                .sum()
        })
        .collect();
    let dgate = (0..n * b)
        .map(|j| {
            let row = j / b;
            let mean: f64 = (0..b).map(|k| w[row * b + k] * dw[row * b + k]).sum();
            w[j] * (dw[j] - mean)
        })
        .collect();
    (dgate, dparts)
}
