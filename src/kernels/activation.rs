//! ReLU and GELU forward and backward (`shaders/activation.wgsl`).

use crate::Result;
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};

use Binding::{Output as W, ReadOnly as R, Uniform as U};

/// `y = max(x, 0)`.
pub const RELU_FORWARD: KernelSpec = KernelSpec {
    family: "activation",
    entry: "relu_forward",
    bindings: &[U, R, W],
};
/// `y = x·Φ(x)`.
pub const GELU_FORWARD: KernelSpec = KernelSpec {
    family: "activation",
    entry: "gelu_forward",
    bindings: &[U, R, W],
};
/// `dx = dy·[x > 0]`.
pub const RELU_BACKWARD: KernelSpec = KernelSpec {
    family: "activation",
    entry: "relu_backward",
    bindings: &[U, R, R, W],
};
/// `dx = dy·(Φ(x) + x·φ(x))`.
pub const GELU_BACKWARD: KernelSpec = KernelSpec {
    family: "activation",
    entry: "gelu_backward",
    bindings: &[U, R, R, W],
};

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[RELU_FORWARD, GELU_FORWARD, RELU_BACKWARD, GELU_BACKWARD];

/// Which activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// ReLU.
    Relu,
    /// Exact GELU.
    Gelu,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    pad: [u32; 3],
}

fn params(op: &str, t: &Tensor) -> Result<Params> {
    t.expect(op, "x", DType::F32, t.shape())?;
    let n = u32::try_from(t.numel())
        .map_err(|_| shape_error(op, "too many elements for u32 indexing"))?;
    Ok(Params { n, pad: [0; 3] })
}

/// Prepares `y = f(x)` into a new tensor.
pub fn forward(gpu: &Gpu, kind: Kind, x: &Tensor) -> Result<(Dispatch, Tensor)> {
    let spec = match kind {
        Kind::Relu => &RELU_FORWARD,
        Kind::Gelu => &GELU_FORWARD,
    };
    let y = gpu.empty(x.shape(), DType::F32)?;
    let d = gpu.dispatch(
        spec,
        &params(spec.entry, x)?,
        &[x, &y],
        (x.numel() as u64).div_ceil(256),
    )?;
    Ok((d, y))
}

/// Prepares `dx = dy·f'(x)` into a new tensor; `x` is the activation's input.
pub fn backward(gpu: &Gpu, kind: Kind, x: &Tensor, dy: &Tensor) -> Result<(Dispatch, Tensor)> {
    let spec = match kind {
        Kind::Relu => &RELU_BACKWARD,
        Kind::Gelu => &GELU_BACKWARD,
    };
    dy.expect(spec.entry, "dy", DType::F32, x.shape())?;
    let dx = gpu.empty(x.shape(), DType::F32)?;
    let d = gpu.dispatch(
        spec,
        &params(spec.entry, x)?,
        &[x, dy, &dx],
        (x.numel() as u64).div_ceil(256),
    )?;
    Ok((d, dx))
}
