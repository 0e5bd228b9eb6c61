//! Inverted dropout with a counter-based RNG (`shaders/dropout.wgsl`): the mask is a pure
//! function of (seed, element index), so forward and backward agree without storing it and a
//! step is reproducible from its seed.

use crate::catalogue::{
    Case, Prepared, Suite, Work, memory_case, sample_f64, sample_tensor, stream_len,
};
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::reference::dropout as cpu;
use crate::{Error, Result};

/// `out = mask ⊙ x / (1 − p)`; also the backward map.
pub const DROPOUT: KernelSpec = KernelSpec::new::<Params>(
    "dropout",
    "dropout",
    &[Binding::Uniform, Binding::ReadOnly, Binding::Output],
);

/// The same with the seed mixed with an on-GPU step counter (for compiled training steps).
pub const DROPOUT_STEP: KernelSpec = KernelSpec::new::<Params>(
    "dropout",
    "dropout_step",
    &[
        Binding::Uniform,
        Binding::ReadOnly,
        Binding::ReadOnly,
        Binding::Output,
    ],
);

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
        gpu.dispatch_over(&DROPOUT, &params, &[x, &out], params.n as usize)?,
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
        gpu.dispatch_over(&DROPOUT_STEP, &params, &[step, x, &out], params.n as usize)?,
        out,
    ))
}

/// The family's catalogue: the mask and scaling at odd sizes, the step-seeded variant at step 3.
pub fn cases(_: &Gpu, suite: Suite) -> Vec<Case> {
    if let Suite::Bench { .. } = suite {
        let n = stream_len(suite);
        return vec![memory_case(
            suite,
            "dropout",
            format!("[{n}]"),
            8.0 * n as f64,
            move |gpu| {
                let (d, y) = dropout(gpu, &sample_tensor(gpu, &[n], 18)?, 0.5, 1)?;
                Ok(Prepared::new(vec![d], vec![y]))
            },
        )];
    }
    let mut cases = Vec::new();
    for (n, p) in [(7usize, 0.5f32), (1000, 0.1), (65_537, 0.9)] {
        cases.push(
            Case::new(
                format!("dropout (p={p})"),
                format!("[{n}]"),
                Work::Bytes(8.0 * n as f64),
                move |gpu| {
                    let (d, y) = dropout(gpu, &sample_tensor(gpu, &[n], 40)?, p, 11)?;
                    Ok(Prepared::new(vec![d], vec![y]))
                },
            )
            .reference(move || cpu::dropout(&sample_f64(n, 40), f64::from(p), 11, threshold(p))),
        );
    }
    let (n, p) = (1031usize, 0.3f32);
    cases.push(
        Case::new(
            "dropout_step (p=0.3, step 3)",
            format!("[{n}]"),
            Work::Bytes(8.0 * n as f64),
            move |gpu| {
                let step = gpu.upload(&[1], &[3u32])?;
                let (d, y) = dropout_step(gpu, &sample_tensor(gpu, &[n], 41)?, p, 5, &step)?;
                Ok(Prepared::new(vec![d], vec![y]))
            },
        )
        .reference(move || {
            let x = sample_f64(n, 41);
            let t = threshold(p);
            let keep = |i: usize| cpu::dropout_step_keeps(5, 3, i as u32, t);
            (0..n)
                .map(|i| {
                    if keep(i) {
                        x[i] / (1.0 - f64::from(p))
                    } else {
                        0.0
                    }
                })
                .collect()
        }),
    );
    cases
}
