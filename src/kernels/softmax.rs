//! Softmax and log-softmax over the last axis with a temperature (`shaders/softmax.wgsl`).

use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::{Error, Result};

use Binding::{Output as W, ReadOnly as R, Uniform as U};

/// `softmax(x/T)`.
pub const SOFTMAX_FORWARD: KernelSpec = KernelSpec {
    family: "softmax",
    entry: "softmax_forward",
    bindings: &[U, R, W],
};
/// `log_softmax(x/T)`.
pub const LOG_SOFTMAX_FORWARD: KernelSpec = KernelSpec {
    family: "softmax",
    entry: "log_softmax_forward",
    bindings: &[U, R, W],
};
/// Softmax backward from its output.
pub const SOFTMAX_BACKWARD: KernelSpec = KernelSpec {
    family: "softmax",
    entry: "softmax_backward",
    bindings: &[U, R, R, W],
};
/// Log-softmax backward from its output.
pub const LOG_SOFTMAX_BACKWARD: KernelSpec = KernelSpec {
    family: "softmax",
    entry: "log_softmax_backward",
    bindings: &[U, R, R, W],
};

/// `acc += weight · softmax(t/T)` (multi-teacher targets).
pub const MIXTURE_ACCUMULATE: KernelSpec = KernelSpec {
    family: "softmax",
    entry: "mixture_accumulate",
    bindings: &[U, R, Binding::ReadWrite],
};
/// `out = T · log(acc)`.
pub const TEMPERATURE_LOG: KernelSpec = KernelSpec {
    family: "softmax",
    entry: "temperature_log",
    bindings: &[U, R, W],
};

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[
    SOFTMAX_FORWARD,
    LOG_SOFTMAX_FORWARD,
    SOFTMAX_BACKWARD,
    LOG_SOFTMAX_BACKWARD,
    MIXTURE_ACCUMULATE,
    TEMPERATURE_LOG,
];

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MixParams {
    rows: u32,
    cols: u32,
    temperature: f32,
    weight: f32,
    first: u32,
    pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    temperature: f32,
    pad: u32,
}

fn params(op: &str, x: &Tensor, temperature: f32) -> Result<Params> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::Input {
            what: format!("{op}: temperature"),
            message: format!("must be a finite number > 0, got {temperature}"),
        });
    }
    let cols = *x.shape().last().unwrap_or(&0);
    if x.dtype() != DType::F32 || cols == 0 {
        return Err(shape_error(
            op,
            format!(
                "x must be f32 with a non-empty last axis, got {}{:?}",
                x.dtype().name(),
                x.shape()
            ),
        ));
    }
    let rows = x.numel() / cols;
    let u = |v: usize| u32::try_from(v).map_err(|_| shape_error(op, "too large for u32 indexing"));
    Ok(Params {
        rows: u(rows)?,
        cols: u(cols)?,
        temperature,
        pad: 0,
    })
}

/// Prepares `softmax(x/T)` (or `log_softmax` when `log`) over the last axis.
pub fn forward(gpu: &Gpu, x: &Tensor, temperature: f32, log: bool) -> Result<(Dispatch, Tensor)> {
    let spec = if log {
        &LOG_SOFTMAX_FORWARD
    } else {
        &SOFTMAX_FORWARD
    };
    let p = params(spec.entry, x, temperature)?;
    gpu.check_loops(spec, 3 * u64::from(p.cols))?;
    let y = gpu.empty(x.shape(), DType::F32)?;
    Ok((
        gpu.dispatch(spec, &p, &[x, &y], u64::from(p.rows).div_ceil(64))?,
        y,
    ))
}

/// Prepares the backward pass from the forward's output `y` and `dy`.
pub fn backward(
    gpu: &Gpu,
    y: &Tensor,
    dy: &Tensor,
    temperature: f32,
    log: bool,
) -> Result<(Dispatch, Tensor)> {
    let spec = if log {
        &LOG_SOFTMAX_BACKWARD
    } else {
        &SOFTMAX_BACKWARD
    };
    let p = params(spec.entry, y, temperature)?;
    gpu.check_loops(spec, 2 * u64::from(p.cols))?;
    dy.expect(spec.entry, "dy", DType::F32, y.shape())?;
    let dx = gpu.empty(y.shape(), DType::F32)?;
    Ok((
        gpu.dispatch(spec, &p, &[y, dy, &dx], u64::from(p.rows).div_ceil(64))?,
        dx,
    ))
}

/// Prepares multi-teacher KD logits: `T · log(Σ_k w_k softmax(t_k / T))`, so that a KD term at
/// temperature `T` on them targets the weighted mixture of the teachers' softened outputs.
/// `weights` must be positive and sum to one.
pub fn mixture_logits(
    gpu: &Gpu,
    teachers: &[&Tensor],
    weights: &[f32],
    temperature: f32,
) -> Result<(Vec<Dispatch>, Tensor)> {
    let first = teachers
        .first()
        .ok_or_else(|| shape_error("mixture", "no teachers"))?;
    let p = params("mixture", first, temperature)?;
    let sum: f32 = weights.iter().sum();
    if weights.len() != teachers.len()
        || weights.iter().any(|w| w.is_nan() || *w <= 0.0)
        || (sum - 1.0).abs() > 1e-4
    {
        return Err(Error::Input {
            what: "mixture: weights".into(),
            message: format!("need one positive weight per teacher, summing to 1; got {weights:?}"),
        });
    }
    gpu.check_loops(&MIXTURE_ACCUMULATE, 3 * u64::from(p.cols))?;
    let acc = gpu.zeros(first.shape(), DType::F32)?;
    let groups = u64::from(p.rows).div_ceil(64);
    let mut plan = Vec::new();
    for (k, (t, &weight)) in teachers.iter().zip(weights).enumerate() {
        t.expect("mixture", "teacher logits", DType::F32, first.shape())?;
        let mp = MixParams {
            rows: p.rows,
            cols: p.cols,
            temperature,
            weight,
            first: u32::from(k == 0),
            pad: [0; 3],
        };
        plan.push(gpu.dispatch(&MIXTURE_ACCUMULATE, &mp, &[t, &acc], groups)?);
    }
    let out = gpu.empty(first.shape(), DType::F32)?;
    let mp = MixParams {
        rows: p.rows,
        cols: p.cols,
        temperature,
        weight: 0.0,
        first: 0,
        pad: [0; 3],
    };
    plan.push(gpu.dispatch(&TEMPERATURE_LOG, &mp, &[&acc, &out], groups)?);
    Ok((plan, out))
}
