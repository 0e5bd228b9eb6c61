//! f64 reference for `shaders/matmul.wgsl` and `shaders/matmul_subgroup.wgsl`: matmul with
//! transposes, and the Linear layer's forward and backward pair (the matmul with its bias and
//! activation epilogue; llm.c style: explicit, no autograd).

use super::activation::Act;
use super::reduce::reduce_axis;

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
