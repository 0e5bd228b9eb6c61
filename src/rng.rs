//! The crate's deterministic pseudo-random numbers: initial weights, the synthetic data set and
//! the inputs of `check`, the tests and the benches, reproducible across runs and machines.

/// `n` deterministic pseudo-random values in [-1, 1) from `seed` (xorshift).
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
