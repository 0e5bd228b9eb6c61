//! f64 reference for `shaders/dropout.wgsl`: which elements the counter-based RNG keeps.

fn mix32(v: u32) -> u32 {
    let mut x = v;
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// Whether dropout keeps element `i` under `seed` for drop threshold `threshold` (= p·2³²).
pub fn dropout_keeps(seed: u32, i: u32, threshold: u32) -> bool {
    mix32(i ^ mix32(seed)) >= threshold
}

/// Whether the training-graph dropout (`dropout_step`) keeps element `i` at step `step` with
/// salt `salt` for drop threshold `threshold`.
pub fn dropout_step_keeps(salt: u32, step: u32, i: u32, threshold: u32) -> bool {
    let seed = mix32(salt ^ mix32(step.wrapping_add(0x9e37_79b9)));
    mix32(i ^ seed) >= threshold
}

/// Inverted dropout of `x` under `seed` with drop probability `p`.
pub fn dropout(x: &[f64], p: f64, seed: u32, threshold: u32) -> Vec<f64> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            if dropout_keeps(seed, i as u32, threshold) {
                v / (1.0 - p)
            } else {
                0.0
            }
        })
        .collect()
}
