//! Elementwise kernels (`shaders/elementwise.wgsl`): add, scale, axpy, fill.

use crate::Result;
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};

/// Invocations per workgroup in `elementwise.wgsl`.
const WORKGROUP: u64 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    alpha: f32,
    pad: [u32; 2],
}

use Binding::{Output as W, ReadOnly as R, ReadWrite as RW, Uniform as U};

/// `out = a + b`.
pub const ADD: KernelSpec = KernelSpec {
    family: "elementwise",
    entry: "add",
    bindings: &[U, R, R, W],
};
/// `out = alpha · x`.
pub const SCALE: KernelSpec = KernelSpec {
    family: "elementwise",
    entry: "scale",
    bindings: &[U, R, W],
};
/// `y += alpha · x`.
pub const AXPY: KernelSpec = KernelSpec {
    family: "elementwise",
    entry: "axpy",
    bindings: &[U, R, RW],
};
/// `out = alpha`.
pub const FILL: KernelSpec = KernelSpec {
    family: "elementwise",
    entry: "fill",
    bindings: &[U, W],
};

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[ADD, SCALE, AXPY, FILL];

fn params(op: &str, n: usize, alpha: f32) -> Result<Params> {
    let n = u32::try_from(n)
        .map_err(|_| shape_error(op, format!("{n} elements exceed u32 indexing")))?;
    Ok(Params {
        n,
        alpha,
        pad: [0; 2],
    })
}

fn same_f32(op: &str, names: [&str; 2], a: &Tensor, b: &Tensor) -> Result<()> {
    a.expect(op, names[0], DType::F32, a.shape())?;
    b.expect(op, names[1], DType::F32, a.shape())
}

fn workgroups(n: usize) -> u64 {
    (n as u64).div_ceil(WORKGROUP)
}

/// Prepares `out = a + b` into a new tensor.
pub fn add_plan(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<(Dispatch, Tensor)> {
    same_f32("add", ["a", "b"], a, b)?;
    let out = gpu.empty(a.shape(), DType::F32)?;
    let d = gpu.dispatch(
        &ADD,
        &params("add", a.numel(), 0.0)?,
        &[a, b, &out],
        workgroups(a.numel()),
    )?;
    Ok((d, out))
}

/// Prepares `alpha · x` into a new tensor.
pub fn scale_plan(gpu: &Gpu, x: &Tensor, alpha: f32) -> Result<(Dispatch, Tensor)> {
    x.expect("scale", "x", DType::F32, x.shape())?;
    let out = gpu.empty(x.shape(), DType::F32)?;
    let d = gpu.dispatch(
        &SCALE,
        &params("scale", x.numel(), alpha)?,
        &[x, &out],
        workgroups(x.numel()),
    )?;
    Ok((d, out))
}

/// Prepares `y += alpha · x` in place.
pub fn axpy_plan(gpu: &Gpu, alpha: f32, x: &Tensor, y: &Tensor) -> Result<Dispatch> {
    same_f32("axpy", ["x", "y"], x, y)?;
    if x.shares_buffer_with(y) {
        return Err(shape_error(
            "axpy",
            "x and y must not share a buffer (y is written while x is read)",
        ));
    }
    gpu.dispatch(
        &AXPY,
        &params("axpy", x.numel(), alpha)?,
        &[x, y],
        workgroups(x.numel()),
    )
}

/// Prepares setting every element of `out` to `value`.
pub fn fill_plan(gpu: &Gpu, out: &Tensor, value: f32) -> Result<Dispatch> {
    out.expect("fill", "out", DType::F32, out.shape())?;
    gpu.dispatch(
        &FILL,
        &params("fill", out.numel(), value)?,
        &[out],
        workgroups(out.numel()),
    )
}

/// `out = a + b` into a new tensor, now.
pub fn add(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (d, out) = add_plan(gpu, a, b)?;
    gpu.execute(&[d])?;
    Ok(out)
}

/// `alpha · x` into a new tensor, now.
pub fn scale(gpu: &Gpu, x: &Tensor, alpha: f32) -> Result<Tensor> {
    let (d, out) = scale_plan(gpu, x, alpha)?;
    gpu.execute(&[d])?;
    Ok(out)
}

/// `y += alpha · x` in place, now.
pub fn axpy(gpu: &Gpu, alpha: f32, x: &Tensor, y: &Tensor) -> Result<()> {
    gpu.execute(&[axpy_plan(gpu, alpha, x, y)?])
}

/// Sets every element of `out` to `value`, now.
pub fn fill(gpu: &Gpu, out: &Tensor, value: f32) -> Result<()> {
    gpu.execute(&[fill_plan(gpu, out, value)?])
}
