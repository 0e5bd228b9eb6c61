//! f64 references for dense layers: matmul with transposes, activations, axis reductions and the
//! Linear layer's forward and backward pair (llm.c style: explicit, no autograd).

/// `op(a)·op(b)`: op(a) is m×k (a stored k×m when `trans_a`), op(b) is k×n (b stored n×k when
/// `trans_b`). Row-major.
pub fn matmul(
    a: &[f64],
    b: &[f64],
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
) -> Vec<f64> {
    let at = |i: usize, p: usize| if trans_a { a[p * m + i] } else { a[i * k + p] };
    let bt = |p: usize, j: usize| if trans_b { b[j * k + p] } else { b[p * n + j] };
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
        }
    }
    c
}

/// ReLU.
pub fn relu(x: f64) -> f64 {
    x.max(0.0)
}

/// ReLU's derivative (0 at 0, as PyTorch).
pub fn relu_grad(x: f64) -> f64 {
    if x > 0.0 { 1.0 } else { 0.0 }
}

/// Exact GELU `x·Φ(x)`.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// GELU's derivative `Φ(x) + x·φ(x)`.
pub fn gelu_grad(x: f64) -> f64 {
    let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    cdf + x * pdf
}

/// Sum, mean or max over `axis` of a row-major tensor of `shape`.
pub fn reduce_axis(x: &[f64], shape: &[usize], axis: usize, op: &str) -> Vec<f64> {
    let outer: usize = shape[..axis].iter().product();
    let len = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let vals = (0..len).map(|l| x[(o * len + l) * inner + i]);
            out.push(match op {
                "max" => vals.fold(f64::NEG_INFINITY, f64::max),
                "mean" => vals.sum::<f64>() / len as f64,
                _ => vals.sum(),
            });
        }
    }
    out
}

/// Which activation a Linear layer applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// None.
    Identity,
    /// ReLU.
    Relu,
    /// Exact GELU.
    Gelu,
}

impl Act {
    /// f(z).
    pub fn apply(self, z: f64) -> f64 {
        match self {
            Act::Identity => z,
            Act::Relu => relu(z),
            Act::Gelu => gelu(z),
        }
    }

    /// f'(z).
    pub fn grad(self, z: f64) -> f64 {
        match self {
            Act::Identity => 1.0,
            Act::Relu => relu_grad(z),
            Act::Gelu => gelu_grad(z),
        }
    }
}

/// A Linear layer's sizes: `m` rows (batch), `n` outputs, `k` inputs.
#[derive(Clone, Copy, Debug)]
pub struct LinearShape {
    /// Rows of x.
    pub m: usize,
    /// Output features.
    pub n: usize,
    /// Input features.
    pub k: usize,
}

/// Linear layer forward: `z = x·Wᵀ + b`, `y = f(z)`, with x `[m, k]`, W `[n, k]` (PyTorch layout),
/// b `[n]`. Returns (z, y).
pub fn linear_forward(
    x: &[f64],
    w: &[f64],
    b: &[f64],
    shape: LinearShape,
    act: Act,
) -> (Vec<f64>, Vec<f64>) {
    let LinearShape { m, n, k } = shape;
    let mut z = matmul(x, w, m, n, k, false, true);
    for (i, v) in z.iter_mut().enumerate() {
        *v += b[i % n];
    }
    let y = z.iter().map(|&v| act.apply(v)).collect();
    (z, y)
}

/// Gradients of a Linear layer.
#[derive(Clone, Debug)]
pub struct LinearGrads {
    /// dL/dx, `[m, k]`.
    pub dx: Vec<f64>,
    /// dL/dW, `[n, k]`.
    pub dw: Vec<f64>,
    /// dL/db, `[n]`.
    pub db: Vec<f64>,
}

/// Linear layer backward from dL/dy and the forward's pre-activation z.
pub fn linear_backward(
    x: &[f64],
    w: &[f64],
    z: &[f64],
    dy: &[f64],
    shape: LinearShape,
    act: Act,
) -> LinearGrads {
    let LinearShape { m, n, k } = shape;
    let dz: Vec<f64> = dy.iter().zip(z).map(|(g, &z)| g * act.grad(z)).collect();
    LinearGrads {
        dx: matmul(&dz, w, m, k, n, false, false),
        dw: matmul(&dz, x, n, k, m, true, false),
        db: reduce_axis(&dz, &[m, n], 0, "sum"),
    }
}
