//! f64 reference for `shaders/batchnorm.wgsl`: training-mode batch normalisation over (N, C, HW)
//! and its gradients, the evaluation-mode input gradient, and the channel moments with theirs.

/// Batch-norm training forward over x viewed as [n, c, s]: y, batch mean, biased variance.
pub fn batch_norm(
    x: &[f64],
    n: usize,
    c: usize,
    s: usize,
    gamma: &[f64],
    beta: &[f64],
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let idx = |b: usize, ch: usize, i: usize| (b * c + ch) * s + i;
    let m = (n * s) as f64;
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    for ch in 0..c {
        let vals: Vec<f64> = (0..n)
            .flat_map(|b| (0..s).map(move |i| idx(b, ch, i)))
            .map(|k| x[k])
            .collect();
        mean[ch] = vals.iter().sum::<f64>() / m;
        var[ch] = vals.iter().map(|v| (v - mean[ch]).powi(2)).sum::<f64>() / m;
    }
    let y = (0..x.len())
        .map(|k| {
            let ch = (k / s) % c;
            (x[k] - mean[ch]) / (var[ch] + eps).sqrt() * gamma[ch] + beta[ch]
        })
        .collect();
    (y, mean, var)
}

/// Batch-norm training backward: (dx, dgamma, dbeta).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    x: &[f64],
    dy: &[f64],
    n: usize,
    c: usize,
    s: usize,
    gamma: &[f64],
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (_, mean, var) = batch_norm(x, n, c, s, gamma, &vec![0.0; c], eps);
    let m = (n * s) as f64;
    let xhat = |k: usize| {
        let ch = (k / s) % c;
        (x[k] - mean[ch]) / (var[ch] + eps).sqrt()
    };
    let mut dgamma = vec![0.0; c];
    let mut dbeta = vec![0.0; c];
    for (k, g) in dy.iter().enumerate() {
        let ch = (k / s) % c;
        dgamma[ch] += g * xhat(k);
        dbeta[ch] += g;
    }
    let dx = (0..x.len())
        .map(|k| {
            let ch = (k / s) % c;
            let invstd = 1.0 / (var[ch] + eps).sqrt();
            gamma[ch] * invstd / m * (m * dy[k] - dbeta[ch] - xhat(k) * dgamma[ch])
        })
        .collect();
    (dx, dgamma, dbeta)
}

/// Evaluation-mode backward: `dx = dy·γ/sqrt(running_var + ε)` over x viewed as [n, c, s].
pub fn batch_norm_eval_backward(
    dy: &[f64],
    c: usize,
    s: usize,
    gamma: &[f64],
    running_var: &[f64],
    eps: f64,
) -> Vec<f64> {
    dy.iter()
        .enumerate()
        .map(|(k, g)| {
            let ch = (k / s) % c;
            g * gamma[ch] / (running_var[ch] + eps).sqrt()
        })
        .collect()
}

/// Per-channel moments of x viewed as [n, c, s]: the means, then the biased variances.
pub fn moments(x: &[f64], n: usize, c: usize, s: usize) -> Vec<f64> {
    let (_, mean, var) = batch_norm(x, n, c, s, &vec![1.0; c], &vec![0.0; c], 0.0);
    mean.into_iter().chain(var).collect()
}

/// The moments' backward pass: `dx = (dmean + 2·dvar·(x − mean))/M`, M = n·s.
pub fn moments_backward(x: &[f64], n: usize, c: usize, s: usize, dmoments: &[f64]) -> Vec<f64> {
    let m = moments(x, n, c, s);
    let count = (n * s) as f64;
    (0..x.len())
        .map(|k| {
            let ch = (k / s) % c;
            (dmoments[ch] + 2.0 * dmoments[c + ch] * (x[k] - m[ch])) / count
        })
        .collect()
}
