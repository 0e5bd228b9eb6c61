//! Inverted dropout with a counter-based RNG (`shaders/dropout.wgsl`): the mask is a pure
//! function of (seed, element index), so forward and backward agree without storing it and a
//! step is reproducible from its seed.

use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::{Error, Result};

/// `out = mask ⊙ x / (1 − p)`; also the backward map.
pub const DROPOUT: KernelSpec = KernelSpec {
    family: "dropout",
    entry: "dropout",
    bindings: &[Binding::Uniform, Binding::ReadOnly, Binding::Output],
};

/// The same with the seed mixed with an on-GPU step counter (for compiled training steps).
pub const DROPOUT_STEP: KernelSpec = KernelSpec {
    family: "dropout",
    entry: "dropout_step",
    bindings: &[
        Binding::Uniform,
        Binding::ReadOnly,
        Binding::ReadOnly,
        Binding::Output,
    ],
};

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[DROPOUT, DROPOUT_STEP];

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    seed: u32,
    threshold: u32,
    scale: f32,
}

/// The drop threshold for probability `p` on the 32-bit hash.
pub fn threshold(p: f32) -> u32 {
    (f64::from(p) * 4_294_967_296.0).min(f64::from(u32::MAX)) as u32
}

fn params(x: &Tensor, p: f32, seed: u32) -> Result<Params> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::Input {
            what: "dropout: p".into(),
            message: format!("must be in [0, 1), got {p}"),
        });
    }
    x.expect("dropout", "x", DType::F32, x.shape())?;
    let n = u32::try_from(x.numel())
        .map_err(|_| shape_error("dropout", "too many elements for u32 indexing"))?;
    Ok(Params {
        n,
        seed,
        threshold: threshold(p),
        scale: 1.0 / (1.0 - p),
    })
}

/// Prepares dropout of `x` with drop probability `p` (0 ≤ p < 1) under `seed`. Apply the same call
/// to the upstream gradient for the backward pass.
pub fn dropout(gpu: &Gpu, x: &Tensor, p: f32, seed: u32) -> Result<(Dispatch, Tensor)> {
    let params = params(x, p, seed)?;
    let out = gpu.empty(x.shape(), DType::F32)?;
    Ok((
        gpu.dispatch(
            &DROPOUT,
            &params,
            &[x, &out],
            u64::from(params.n).div_ceil(256),
        )?,
        out,
    ))
}

/// Prepares dropout whose seed also mixes in `step` (u32 `[1]`, the training step counter):
/// a new mask each step, the same mask for a step's forward and backward passes.
pub fn dropout_step(
    gpu: &Gpu,
    x: &Tensor,
    p: f32,
    salt: u32,
    step: &Tensor,
) -> Result<(Dispatch, Tensor)> {
    let params = params(x, p, salt)?;
    step.expect("dropout", "step", DType::U32, &[1])?;
    let out = gpu.empty(x.shape(), DType::F32)?;
    Ok((
        gpu.dispatch(
            &DROPOUT_STEP,
            &params,
            &[step, x, &out],
            u64::from(params.n).div_ceil(256),
        )?,
        out,
    ))
}
