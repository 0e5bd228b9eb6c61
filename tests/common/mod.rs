//! Shared helpers for GPU tests: one device per test binary, and the CI rule that a missing
//! adapter fails rather than skips.
#![allow(dead_code)]

use std::sync::OnceLock;

use wgdistill::gpu::Gpu;

static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();

/// Whether this run is CI, where a missing adapter is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The adapter chosen by `WGPU_BACKEND`/`WGPU_ADAPTER_NAME`, shared by the binary's tests.
/// Without one: panics in CI, otherwise prints a visible SKIP line and returns `None`.
pub fn gpu() -> Option<&'static Gpu> {
    match GPU.get_or_init(|| Gpu::from_env().map_err(|e| e.to_string())) {
        Ok(gpu) => Some(gpu),
        Err(e) if in_ci() => panic!("CI requires a GPU adapter: {e}"),
        Err(e) => {
            eprintln!("SKIP (no GPU adapter; CI would fail here): {e}");
            None
        }
    }
}

/// Deterministic data in [-1, 1).
pub fn data(n: usize, seed: u64) -> Vec<f32> {
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

/// f32 to f64.
pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// Shapes that are not multiples of any workgroup or tile size.
pub const ODD_SIZES: &[usize] = &[1, 7, 33, 129, 1000, 65_537];
