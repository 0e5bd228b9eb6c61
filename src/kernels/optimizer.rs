//! Optimizer updates (`shaders/optimizer.wgsl`): PyTorch's SGD (momentum, dampening, Nesterov,
//! weight decay) and AdamW as fused elementwise kernels, the on-GPU step counter they read, and
//! global gradient-norm clipping.

use crate::Result;
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::kernels::reduce;

use Binding::{Output as W, ReadOnly as R, ReadWrite as RW, Uniform as U};

/// `step += 1`.
pub const ADVANCE_STEP: KernelSpec = KernelSpec {
    family: "optimizer",
    entry: "advance_step",
    bindings: &[U, RW],
};
/// SGD update.
pub const SGD: KernelSpec = KernelSpec {
    family: "optimizer",
    entry: "sgd",
    bindings: &[U, RW, R, RW, R],
};
/// AdamW update.
pub const ADAMW: KernelSpec = KernelSpec {
    family: "optimizer",
    entry: "adamw",
    bindings: &[U, RW, R, RW, RW, R],
};
/// Elementwise square (for the gradient norm).
pub const SQUARE: KernelSpec = KernelSpec {
    family: "optimizer",
    entry: "square",
    bindings: &[U, R, W],
};
/// Gradient scaling by the clip coefficient.
pub const CLIP: KernelSpec = KernelSpec {
    family: "optimizer",
    entry: "clip",
    bindings: &[U, RW, R],
};

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[ADVANCE_STEP, SGD, ADAMW, SQUARE, CLIP];

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    nesterov: u32,
    lr: f32,
    weight_decay: f32,
    a: f32,
    b: f32,
    eps: f32,
    pad0: u32,
    ln_a: f32,
    ln_b: f32,
    one_minus_a: f32,
    one_minus_b: f32,
}

/// SGD settings, as `torch.optim.SGD`.
#[derive(Clone, Copy, Debug)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f32,
    /// Momentum (0 disables the buffer).
    pub momentum: f32,
    /// Dampening.
    pub dampening: f32,
    /// L2 weight decay, added to the gradient.
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
}

/// AdamW settings, as `torch.optim.AdamW`.
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f32,
    /// β₁ (f64, as PyTorch keeps it: the bias corrections 1 − β^t need the precision).
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
}

fn count(op: &str, t: &Tensor) -> Result<u32> {
    t.expect(op, "param", DType::F32, t.shape())?;
    u32::try_from(t.numel()).map_err(|_| shape_error(op, "too many elements for u32 indexing"))
}

fn groups(n: u32) -> u64 {
    u64::from(n).div_ceil(256).max(1)
}

/// Prepares `step += 1` on a u32 `[1]` counter; run it once per training step before the updates.
pub fn advance_step(gpu: &Gpu, step: &Tensor) -> Result<Dispatch> {
    step.expect("advance_step", "step", DType::U32, &[1])?;
    gpu.dispatch(
        &ADVANCE_STEP,
        &Params {
            n: 1,
            ..Params::default()
        },
        &[step],
        1,
    )
}

/// Prepares an in-place SGD update of `param` (with `momentum_buf` shaped like it) at the step in
/// `step` (1 on the first update).
pub fn sgd(
    gpu: &Gpu,
    s: &Sgd,
    param: &Tensor,
    grad: &Tensor,
    momentum_buf: &Tensor,
    step: &Tensor,
) -> Result<Dispatch> {
    let n = count("sgd", param)?;
    grad.expect("sgd", "grad", DType::F32, param.shape())?;
    momentum_buf.expect("sgd", "momentum_buf", DType::F32, param.shape())?;
    step.expect("sgd", "step", DType::U32, &[1])?;
    let p = Params {
        n,
        nesterov: u32::from(s.nesterov),
        lr: s.lr,
        weight_decay: s.weight_decay,
        a: s.momentum,
        b: s.dampening,
        ..Params::default()
    };
    gpu.dispatch(&SGD, &p, &[param, grad, momentum_buf, step], groups(n))
}

/// Prepares an in-place AdamW update of `param` with its moment buffers `m` and `v`.
pub fn adamw(
    gpu: &Gpu,
    s: &AdamW,
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    step: &Tensor,
) -> Result<Dispatch> {
    let n = count("adamw", param)?;
    for (what, t) in [("grad", grad), ("m", m), ("v", v)] {
        t.expect("adamw", what, DType::F32, param.shape())?;
    }
    step.expect("adamw", "step", DType::U32, &[1])?;
    let p = Params {
        n,
        lr: s.lr,
        weight_decay: s.weight_decay,
        a: s.beta1 as f32,
        b: s.beta2 as f32,
        eps: s.eps,
        ln_a: s.beta1.ln() as f32,
        ln_b: s.beta2.ln() as f32,
        one_minus_a: (1.0 - s.beta1) as f32,
        one_minus_b: (1.0 - s.beta2) as f32,
        ..Params::default()
    };
    gpu.dispatch(&ADAMW, &p, &[param, grad, m, v, step], groups(n))
}

/// Prepares global-norm clipping of `grad` in place (as `clip_grad_norm_` over one buffer holding
/// every gradient): `grad *= min(1, max_norm / (‖grad‖ + 1e-6))`. Returns the launches and the
/// squared norm (shape `[1]`), which can be read back for logging.
pub fn clip_grad_norm(gpu: &Gpu, grad: &Tensor, max_norm: f32) -> Result<(Vec<Dispatch>, Tensor)> {
    let n = count("clip_grad_norm", grad)?;
    let squares = gpu.empty(&[n as usize], DType::F32)?;
    let norm_sq = gpu.empty(&[1], DType::F32)?;
    let p = Params {
        n,
        eps: max_norm,
        ..Params::default()
    };
    let mut plan = vec![gpu.dispatch(&SQUARE, &p, &[grad, &squares], groups(n))?];
    reduce::sum_into(gpu, &mut plan, &squares, &norm_sq, 1.0)?;
    plan.push(gpu.dispatch(&CLIP, &p, &[grad, &norm_sq], groups(n))?);
    Ok((plan, norm_sq))
}
