//! f64 CPU twins of every kernel family, one module per `shaders/` stem: what the catalogue
//! (`wgdistill check`, the tests) compares the GPU against.

pub mod activation;
pub mod augment;
pub mod batchnorm;
pub mod contrast;
pub mod conv;
pub mod dropout;
pub mod elementwise;
pub mod feature;
pub mod gate;
pub mod int8;
pub mod matmul;
pub mod optimizer;
pub mod pool;
pub mod quantize;
pub mod reduce;
pub mod relation;
pub mod response;
pub mod softmax;

/// A loss's value and its gradient with respect to the student, from an f64 reference.
#[derive(Clone, Debug)]
pub struct LossGrad {
    /// The scalar loss.
    pub loss: f64,
    /// `dL/d student`, shaped like the student.
    pub grad: Vec<f64>,
}

/// A loss's value and its gradients with respect to each of its student inputs, in order.
#[derive(Clone, Debug)]
pub struct LossGrads {
    /// The scalar loss.
    pub loss: f64,
    /// `dL/d input` for each trainable input.
    pub grads: Vec<Vec<f64>>,
    /// The updated bank rows for each memory input (empty for losses without a memory).
    pub updated: Vec<Vec<f64>>,
}

impl From<LossGrad> for LossGrads {
    fn from(g: LossGrad) -> LossGrads {
        LossGrads {
            loss: g.loss,
            grads: vec![g.grad],
            updated: Vec::new(),
        }
    }
}

/// f32 values widened to f64, for the references.
pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// Whether `got` is within `atol + rtol·|want|` of `want` everywhere; on failure, the first index
/// that is not and both values.
pub fn allclose(got: &[f32], want: &[f64], rtol: f64, atol: f64) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("length {} != {}", got.len(), want.len()));
    }
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = f64::from(g);
        // Written so that NaN on either side fails.
        let close = (g - w).abs() <= atol + rtol * w.abs();
        if !close {
            return Err(format!("index {i}: got {g}, want {w}"));
        }
    }
    Ok(())
}

/// Largest absolute and relative error of `got` against `want`.
pub fn max_errors(got: &[f32], want: &[f64]) -> (f64, f64) {
    got.iter()
        .zip(want)
        .fold((0.0, 0.0), |(abs, rel), (&g, &w)| {
            let e = (f64::from(g) - w).abs();
            (f64::max(abs, e), f64::max(rel, e / w.abs().max(1e-30)))
        })
}
