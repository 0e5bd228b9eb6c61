//! The crate's deterministic pseudo-random numbers: initial weights, the synthetic data set and
//! the inputs of `check`, the tests and the benches, reproducible across runs and machines.

/// A xorshift64 generator: the crate's one source of pseudo-random bits.
#[derive(Clone, Copy, Debug)]
pub struct Xorshift(u64);

impl Xorshift {
    /// A generator whose state is mixed from `seed` (never zero).
    pub fn new(seed: u64) -> Xorshift {
        Xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n` (`n` ≥ 1; the modulo's bias is below 2⁻⁴⁰ for the small `n` it serves).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// `n` deterministic pseudo-random values in [-1, 1) from `seed` (xorshift).
pub fn sample(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Xorshift::new(seed);
    (0..n)
        .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        .collect()
}

/// `n` deterministic standard-normal values from `seed` (Box–Muller over xorshift uniforms).
pub fn normal_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Xorshift::new(seed);
    // A uniform in (0, 1]: never 0, whose logarithm would be infinite.
    let mut uniform = || ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
    (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect()
}
