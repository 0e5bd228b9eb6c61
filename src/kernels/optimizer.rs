//! Optimizer updates (`shaders/optimizer.wgsl`): PyTorch's SGD (momentum, dampening, Nesterov,
//! weight decay) and AdamW as fused elementwise kernels, the on-GPU step counter they read, and
//! global gradient-norm clipping.

use crate::Result;
use crate::catalogue::{
    Case, Prepared, Suite, Work, memory_case, sample_f64, sample_tensor, stream_len,
};
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::kernels::reduce;
use crate::reference::optimizer as cpu;

use Binding::{Output as W, ReadOnly as R, ReadWrite as RW, Uniform as U};

/// `step += 1`.
pub const ADVANCE_STEP: KernelSpec =
    KernelSpec::new::<Params>("optimizer", "advance_step", &[U, RW]);
/// SGD update.
pub const SGD: KernelSpec = KernelSpec::new::<Params>("optimizer", "sgd", &[U, RW, R, RW, R]);
/// AdamW update.
pub const ADAMW: KernelSpec =
    KernelSpec::new::<Params>("optimizer", "adamw", &[U, RW, R, RW, RW, R]);
/// Elementwise square (for the gradient norm).
pub const SQUARE: KernelSpec = KernelSpec::new::<Params>("optimizer", "square", &[U, R, W]);
/// Gradient scaling by the clip coefficient.
pub const CLIP: KernelSpec = KernelSpec::new::<Params>("optimizer", "clip", &[U, RW, R]);

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[ADVANCE_STEP, SGD, ADAMW, SGD_VEC4, ADAMW_VEC4, SQUARE, CLIP];

/// [`SGD`] four elements per lane (n a multiple of 4).
pub const SGD_VEC4: KernelSpec =
    KernelSpec::new::<Params>("optimizer", "sgd_vec4", &[U, RW, R, RW, R]);
/// [`ADAMW`] four elements per lane (n a multiple of 4).
pub const ADAMW_VEC4: KernelSpec =
    KernelSpec::new::<Params>("optimizer", "adamw_vec4", &[U, RW, R, RW, RW, R]);

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
    super::dispatch_per_element(
        gpu,
        &SGD,
        Some(&SGD_VEC4),
        &p,
        &[param, grad, momentum_buf, step],
        n as usize,
    )
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
    super::dispatch_per_element(
        gpu,
        &ADAMW,
        Some(&ADAMW_VEC4),
        &p,
        &[param, grad, m, v, step],
        n as usize,
    )
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
    let mut plan = vec![gpu.dispatch_over(&SQUARE, &p, &[grad, &squares], n as usize)?];
    reduce::sum_into(gpu, &mut plan, &squares, &norm_sq, 1.0)?;
    plan.push(gpu.dispatch_over(&CLIP, &p, &[grad, &norm_sq], n as usize)?);
    Ok((plan, norm_sq))
}

/// Byte offset of the learning rate in every update's parameters, for schedules that rewrite it
/// in a bound plan.
pub const LR_OFFSET: u64 = std::mem::offset_of!(Params, lr) as u64;

/// The family's catalogue: SGD (momentum, Nesterov, weight decay) and AdamW over two steps each,
/// global-norm clipping, at an odd size.
pub fn cases(_: &Gpu, suite: Suite) -> Vec<Case> {
    if let Suite::Bench { .. } = suite {
        let n = stream_len(suite);
        // Reads p, g, m, v; writes p, m, v.
        return vec![memory_case(
            suite,
            "adamw",
            format!("[{n}]"),
            28.0 * n as f64,
            move |gpu| {
                let (p, g) = (sample_tensor(gpu, &[n], 16)?, sample_tensor(gpu, &[n], 17)?);
                let (m, v) = (gpu.zeros(&[n], DType::F32)?, gpu.zeros(&[n], DType::F32)?);
                let step = gpu.upload(&[1], &[1u32])?;
                let d = adamw(gpu, &ADAMW_CASE, &p, &g, &m, &v, &step)?;
                Ok(Prepared::new(vec![d], vec![p]))
            },
        )];
    }
    let n = 1031usize;
    let shape = format!("[{n}]");
    let mut cases = vec![
        Case::new(
            "adamw (2 steps)",
            shape.clone(),
            Work::Bytes(56.0 * n as f64),
            move |gpu| {
                let (p, g) = (sample_tensor(gpu, &[n], 35)?, sample_tensor(gpu, &[n], 36)?);
                let (m, v) = (gpu.zeros(&[n], DType::F32)?, gpu.zeros(&[n], DType::F32)?);
                let step = gpu.zeros(&[1], DType::U32)?;
                let mut plan = Vec::new();
                for _ in 0..2 {
                    plan.push(advance_step(gpu, &step)?);
                    plan.push(adamw(gpu, &ADAMW_CASE, &p, &g, &m, &v, &step)?);
                }
                Ok(Prepared::new(plan, vec![p, m, v]))
            },
        )
        .reference(move || {
            let (mut p, g) = (sample_f64(n, 35), sample_f64(n, 36));
            let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
            let a = ADAMW_CASE;
            for t in 1..=2 {
                let (lr, eps, wd) = (a.lr.into(), a.eps.into(), a.weight_decay.into());
                cpu::adamw(&mut p, &g, &mut m, &mut v, t, lr, a.beta1, a.beta2, eps, wd);
            }
            p.extend(m);
            p.extend(v);
            p
        })
        .tolerance(2e-6, 1e-7),
    ];
    for nesterov in [false, true] {
        let s = Sgd {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 1e-3,
            nesterov,
        };
        let name = if nesterov {
            "sgd nesterov (2 steps)"
        } else {
            "sgd momentum (2 steps)"
        };
        cases.push(
            Case::new(
                name,
                shape.clone(),
                Work::Bytes(40.0 * n as f64),
                move |gpu| {
                    let (p, g) = (sample_tensor(gpu, &[n], 37)?, sample_tensor(gpu, &[n], 38)?);
                    let buf = gpu.zeros(&[n], DType::F32)?;
                    let step = gpu.zeros(&[1], DType::U32)?;
                    let mut plan = Vec::new();
                    for _ in 0..2 {
                        plan.push(advance_step(gpu, &step)?);
                        plan.push(sgd(gpu, &s, &p, &g, &buf, &step)?);
                    }
                    Ok(Prepared::new(plan, vec![p, buf]))
                },
            )
            .reference(move || {
                let (mut p, g) = (sample_f64(n, 37), sample_f64(n, 38));
                let mut buf = vec![0.0; n];
                for t in 1..=2 {
                    let (lr, m, wd) = (s.lr.into(), s.momentum.into(), s.weight_decay.into());
                    cpu::sgd(&mut p, &g, &mut buf, t, lr, m, 0.0, wd, nesterov);
                }
                p.extend(buf);
                p
            })
            .tolerance(2e-6, 1e-7),
        );
    }
    for max_norm in [0.5f32, 1e3] {
        cases.push(
            Case::new(
                format!("clip_grad_norm (max {max_norm})"),
                shape.clone(),
                Work::Bytes(12.0 * n as f64),
                move |gpu| {
                    let g = sample_tensor(gpu, &[n], 39)?;
                    let (plan, norm_sq) = clip_grad_norm(gpu, &g, max_norm)?;
                    Ok(Prepared::new(plan, vec![g, norm_sq]))
                },
            )
            .reference(move || {
                let mut g = sample_f64(n, 39);
                let norm = cpu::clip_grad_norm(&mut g, max_norm.into());
                g.push(norm * norm);
                g
            })
            .tolerance(1e-5, 1e-6),
        );
    }
    cases
}

/// The AdamW settings of the catalogue's cases.
const ADAMW_CASE: AdamW = AdamW {
    lr: 1e-2,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 0.01,
};
