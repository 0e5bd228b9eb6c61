//! Softmax and log-softmax over the last axis with a temperature (`shaders/softmax.wgsl`).

use crate::gpu::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, GpuError, KernelSpec, Result, Tensor};

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

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[
    SOFTMAX_FORWARD,
    LOG_SOFTMAX_FORWARD,
    SOFTMAX_BACKWARD,
    LOG_SOFTMAX_BACKWARD,
];

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
        return Err(GpuError::Input {
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
    dy.expect(spec.entry, "dy", DType::F32, y.shape())?;
    let dx = gpu.empty(y.shape(), DType::F32)?;
    Ok((
        gpu.dispatch(spec, &p, &[y, dy, &dx], u64::from(p.rows).div_ceil(64))?,
        dx,
    ))
}
