//! Batch normalisation (`shaders/batchnorm.wgsl`) over (N, C) features or (N, C, H, W) maps, as
//! PyTorch's BatchNorm1d/2d: batch statistics and running-stat updates in training, running
//! statistics in evaluation; the training backward pass.

use crate::Result;
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};

use Binding::{Output as W, ReadOnly as R, ReadWrite as RW, Uniform as U};

/// Per chunk of a channel: its mean and sum of squared deviations.
pub const STATS_PARTIAL: KernelSpec = KernelSpec {
    family: "batchnorm",
    entry: "stats_partial",
    bindings: &[U, R, W],
};
/// Per channel: the chunks merged into mean and inverse std; running-stat update.
pub const STATS_MERGE: KernelSpec = KernelSpec {
    family: "batchnorm",
    entry: "stats_merge",
    bindings: &[U, R, W, RW, RW],
};
/// Normalise with batch statistics.
pub const NORMALIZE_TRAIN: KernelSpec = KernelSpec {
    family: "batchnorm",
    entry: "normalize_train",
    bindings: &[U, R, R, R, R, W],
};
/// Normalise with running statistics.
pub const NORMALIZE_EVAL: KernelSpec = KernelSpec {
    family: "batchnorm",
    entry: "normalize_eval",
    bindings: &[U, R, R, R, R, R, W],
};
/// Per chunk of a channel: Σ dy·x̂ and Σ dy.
pub const GRAD_PARTIAL: KernelSpec = KernelSpec {
    family: "batchnorm",
    entry: "grad_partial",
    bindings: &[U, R, R, R, W],
};
/// Per channel: dgamma and dbeta from the chunks.
pub const GRAD_MERGE: KernelSpec = KernelSpec {
    family: "batchnorm",
    entry: "grad_merge",
    bindings: &[U, R, RW, W, W],
};
/// dx.
pub const BACKWARD_INPUT: KernelSpec = KernelSpec {
    family: "batchnorm",
    entry: "backward_input",
    bindings: &[U, R, R, R, R, W],
};

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[
    STATS_PARTIAL,
    STATS_MERGE,
    NORMALIZE_TRAIN,
    NORMALIZE_EVAL,
    GRAD_PARTIAL,
    GRAD_MERGE,
    BACKWARD_INPUT,
];

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    s: u32,
    chunk: u32,
    chunks: u32,
    eps: f32,
    momentum: f32,
    pad: u32,
}

/// Values per chunk and chunks per channel for the per-channel reductions over `len` values:
/// about 64 chunks (parallelism), each of 256 to 4096 values, so that no invocation loops more
/// than 8192 times (llvmpipe stops an invocation's loops after 65535 iterations in all).
pub fn chunking(len: usize) -> (usize, usize) {
    let chunk = len.div_ceil(64).clamp(256, 4096).min(len.max(1));
    (chunk, len.div_ceil(chunk).max(1))
}

/// A BatchNorm layer's tensors: affine parameters and running statistics, each `[C]`.
pub struct BatchNormState<'a> {
    /// Scale γ.
    pub gamma: &'a Tensor,
    /// Shift β.
    pub beta: &'a Tensor,
    /// Running mean (updated in place in training).
    pub running_mean: &'a Tensor,
    /// Running variance (updated in place in training).
    pub running_var: &'a Tensor,
    /// ε.
    pub eps: f32,
    /// Running-stat momentum (PyTorch's default 0.1).
    pub momentum: f32,
}

/// What a training forward pass leaves for its backward pass.
pub struct BatchNormSaved {
    /// `[4, C]`: mean, 1/sqrt(var + eps); rows 2 and 3 are filled by the backward pass.
    pub stats: Tensor,
}

fn params(op: &str, x: &Tensor, st: &BatchNormState<'_>) -> Result<Params> {
    let (n, c, s) = match (x.dtype(), x.shape()) {
        (DType::F32, &[n, c]) => (n, c, 1),
        (DType::F32, &[n, c, h, w]) => (n, c, h * w),
        _ => {
            return Err(shape_error(
                op,
                format!(
                    "x must be f32 (N, C) or (N, C, H, W), got {}{:?}",
                    x.dtype().name(),
                    x.shape()
                ),
            ));
        }
    };
    if n * c * s == 0 {
        return Err(shape_error(op, format!("x {:?} is empty", x.shape())));
    }
    for (what, t) in [
        ("gamma", st.gamma),
        ("beta", st.beta),
        ("running_mean", st.running_mean),
        ("running_var", st.running_var),
    ] {
        t.expect(op, what, DType::F32, &[c])?;
    }
    let (chunk, chunks) = chunking(n * s);
    Ok(Params {
        n: n as u32,
        c: c as u32,
        s: s as u32,
        chunk: chunk as u32,
        chunks: chunks as u32,
        eps: st.eps,
        momentum: st.momentum,
        pad: 0,
    })
}

fn groups(n: usize, wg: u64) -> u64 {
    (n as u64).div_ceil(wg)
}

/// Prepares the training forward pass: batch statistics (and the running-stat update), then
/// normalisation. Returns the launches, y and what the backward pass needs.
pub fn forward_train(
    gpu: &Gpu,
    x: &Tensor,
    st: &BatchNormState<'_>,
) -> Result<(Vec<Dispatch>, Tensor, BatchNormSaved)> {
    let p = params("batch_norm", x, st)?;
    let (c, chunks) = (p.c as usize, p.chunks as usize);
    // Two passes over a chunk; the merge walks the chunks.
    gpu.check_loops(&STATS_PARTIAL, 2 * u64::from(p.chunk))?;
    gpu.check_loops(&STATS_MERGE, u64::from(p.chunks))?;
    let stats = gpu.zeros(&[4, c], DType::F32)?;
    let partial = gpu.empty(&[c, chunks, 2], DType::F32)?;
    let y = gpu.empty(x.shape(), DType::F32)?;
    let plan = vec![
        gpu.dispatch(&STATS_PARTIAL, &p, &[x, &partial], groups(c * chunks, 64))?,
        gpu.dispatch(
            &STATS_MERGE,
            &p,
            &[&partial, &stats, st.running_mean, st.running_var],
            groups(c, 64),
        )?,
        gpu.dispatch(
            &NORMALIZE_TRAIN,
            &p,
            &[x, &stats, st.gamma, st.beta, &y],
            groups(x.numel(), 256),
        )?,
    ];
    Ok((plan, y, BatchNormSaved { stats }))
}

/// Prepares the evaluation forward pass with the running statistics.
pub fn forward_eval(gpu: &Gpu, x: &Tensor, st: &BatchNormState<'_>) -> Result<(Dispatch, Tensor)> {
    let p = params("batch_norm", x, st)?;
    let y = gpu.empty(x.shape(), DType::F32)?;
    let tensors = [x, st.running_mean, st.running_var, st.gamma, st.beta, &y];
    Ok((
        gpu.dispatch(&NORMALIZE_EVAL, &p, &tensors, groups(x.numel(), 256))?,
        y,
    ))
}

/// Gradients of a training-mode BatchNorm.
pub struct BatchNormGrads {
    /// dL/dx.
    pub dx: Tensor,
    /// dL/dγ.
    pub dgamma: Tensor,
    /// dL/dβ.
    pub dbeta: Tensor,
}

/// Prepares the training backward pass from x, dy and the forward's saved statistics.
pub fn backward(
    gpu: &Gpu,
    x: &Tensor,
    dy: &Tensor,
    st: &BatchNormState<'_>,
    saved: &BatchNormSaved,
) -> Result<(Vec<Dispatch>, BatchNormGrads)> {
    let p = params("batch_norm_backward", x, st)?;
    let (c, chunks) = (p.c as usize, p.chunks as usize);
    gpu.check_loops(&GRAD_PARTIAL, u64::from(p.chunk))?;
    gpu.check_loops(&GRAD_MERGE, u64::from(p.chunks))?;
    dy.expect("batch_norm_backward", "dy", DType::F32, x.shape())?;
    saved
        .stats
        .expect("batch_norm_backward", "stats", DType::F32, &[4, c])?;
    let dgamma = gpu.empty(&[c], DType::F32)?;
    let dbeta = gpu.empty(&[c], DType::F32)?;
    let dx = gpu.empty(x.shape(), DType::F32)?;
    let partial = gpu.empty(&[c, chunks, 2], DType::F32)?;
    let plan = vec![
        gpu.dispatch(
            &GRAD_PARTIAL,
            &p,
            &[x, dy, &saved.stats, &partial],
            groups(c * chunks, 64),
        )?,
        gpu.dispatch(
            &GRAD_MERGE,
            &p,
            &[&partial, &saved.stats, &dgamma, &dbeta],
            groups(c, 64),
        )?,
        gpu.dispatch(
            &BACKWARD_INPUT,
            &p,
            &[x, dy, &saved.stats, st.gamma, &dx],
            groups(x.numel(), 256),
        )?,
    ];
    Ok((plan, BatchNormGrads { dx, dgamma, dbeta }))
}
