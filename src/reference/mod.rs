//! f64 CPU twins of every kernel: what the tests and `wgdistill check` compare the GPU against.

pub mod conv;
pub mod dense;
pub mod elementwise;
pub mod graph;
pub mod losses;
pub mod optim;
pub mod softmax;

/// Deterministic pseudo-random values in [-1, 1) (xorshift): the inputs of `check`, the tests
/// and the benches, reproducible across runs and machines.
pub fn sample(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
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
