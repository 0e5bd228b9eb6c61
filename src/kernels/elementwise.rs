//! Elementwise kernels (`shaders/elementwise.wgsl`): add, scale, axpy, mul, fill.

use crate::Result;
use crate::catalogue::{
    Case, ODD_SIZES, Prepared, Suite, Work, sample_f64, sample_tensor, stream_len,
};
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::reference::elementwise as cpu;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    alpha: f32,
    pad: [u32; 2],
}

use Binding::{Output as W, ReadOnly as R, ReadWrite as RW, Uniform as U};

/// `out = a + b`.
pub const ADD: KernelSpec = KernelSpec::new::<Params>("elementwise", "add", &[U, R, R, W]);
/// `out = alpha · x`.
pub const SCALE: KernelSpec = KernelSpec::new::<Params>("elementwise", "scale", &[U, R, W]);
/// `y += alpha · x`.
pub const AXPY: KernelSpec = KernelSpec::new::<Params>("elementwise", "axpy", &[U, R, RW]);
/// `y *= x`.
pub const MUL: KernelSpec = KernelSpec::new::<Params>("elementwise", "mul", &[U, R, RW]);
/// `out = alpha`.
pub const FILL: KernelSpec = KernelSpec::new::<Params>("elementwise", "fill", &[U, W]);

/// The same kernels over vec4, for element counts that are multiples of 4 (see the shader).
pub const ADD_VEC4: KernelSpec =
    KernelSpec::new::<Params>("elementwise", "add_vec4", &[U, R, R, W]);
/// [`SCALE`] over vec4.
pub const SCALE_VEC4: KernelSpec =
    KernelSpec::new::<Params>("elementwise", "scale_vec4", &[U, R, W]);
/// [`AXPY`] over vec4.
pub const AXPY_VEC4: KernelSpec =
    KernelSpec::new::<Params>("elementwise", "axpy_vec4", &[U, R, RW]);
/// [`MUL`] over vec4.
pub const MUL_VEC4: KernelSpec = KernelSpec::new::<Params>("elementwise", "mul_vec4", &[U, R, RW]);
/// [`FILL`] over vec4.
pub const FILL_VEC4: KernelSpec = KernelSpec::new::<Params>("elementwise", "fill_vec4", &[U, W]);

/// Byte offset of `alpha` in the parameters, for a scale whose factor a bound plan rewrites (a
/// scheduled loss weight).
pub const ALPHA_OFFSET: u64 = std::mem::offset_of!(Params, alpha) as u64;

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[
    ADD, SCALE, AXPY, MUL, FILL, ADD_VEC4, SCALE_VEC4, AXPY_VEC4, MUL_VEC4, FILL_VEC4,
];

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

/// Prepares `out = a + b` into a new tensor.
pub fn add_plan(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<(Dispatch, Tensor)> {
    same_f32("add", ["a", "b"], a, b)?;
    let out = gpu.empty(a.shape(), DType::F32)?;
    let d = super::dispatch_per_element(
        gpu,
        &ADD,
        Some(&ADD_VEC4),
        &params("add", a.numel(), 0.0)?,
        &[a, b, &out],
        a.numel(),
    )?;
    Ok((d, out))
}

/// Prepares `alpha · x` into a new tensor.
pub fn scale_plan(gpu: &Gpu, x: &Tensor, alpha: f32) -> Result<(Dispatch, Tensor)> {
    x.expect("scale", "x", DType::F32, x.shape())?;
    let out = gpu.empty(x.shape(), DType::F32)?;
    let d = super::dispatch_per_element(
        gpu,
        &SCALE,
        Some(&SCALE_VEC4),
        &params("scale", x.numel(), alpha)?,
        &[x, &out],
        x.numel(),
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
    super::dispatch_per_element(
        gpu,
        &AXPY,
        Some(&AXPY_VEC4),
        &params("axpy", x.numel(), alpha)?,
        &[x, y],
        x.numel(),
    )
}

/// Prepares `y *= x` in place (elementwise).
pub fn mul_plan(gpu: &Gpu, x: &Tensor, y: &Tensor) -> Result<Dispatch> {
    same_f32("mul", ["x", "y"], x, y)?;
    if x.shares_buffer_with(y) {
        return Err(shape_error(
            "mul",
            "x and y must not share a buffer (y is written while x is read)",
        ));
    }
    super::dispatch_per_element(
        gpu,
        &MUL,
        Some(&MUL_VEC4),
        &params("mul", x.numel(), 1.0)?,
        &[x, y],
        x.numel(),
    )
}

/// Prepares setting every element of `out` to `value`.
pub fn fill_plan(gpu: &Gpu, out: &Tensor, value: f32) -> Result<Dispatch> {
    out.expect("fill", "out", DType::F32, out.shape())?;
    super::dispatch_per_element(
        gpu,
        &FILL,
        Some(&FILL_VEC4),
        &params("fill", out.numel(), value)?,
        &[out],
        out.numel(),
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

/// The family's catalogue: add, scale and axpy at odd sizes; the `stream` copy that memory-bound
/// benchmarks are related to.
pub fn cases(_: &Gpu, suite: Suite) -> Vec<Case> {
    if let Suite::Bench { .. } = suite {
        let n = stream_len(suite);
        return vec![Case::new(
            "stream",
            format!("[{n}]"),
            Work::Bytes(8.0 * n as f64),
            move |gpu| {
                let (d, out) = scale_plan(gpu, &sample_tensor(gpu, &[n], 3)?, 1.0)?;
                Ok(Prepared::new(vec![d], vec![out]))
            },
        )];
    }
    let mut cases = Vec::new();
    for &n in ODD_SIZES {
        let shape = format!("[{n}]");
        let work = Work::Bytes(12.0 * n as f64);
        cases.push(
            Case::new("add", shape.clone(), work, move |gpu| {
                let (a, b) = (sample_tensor(gpu, &[n], 1)?, sample_tensor(gpu, &[n], 2)?);
                let (d, out) = add_plan(gpu, &a, &b)?;
                Ok(Prepared::new(vec![d], vec![out]))
            })
            .reference(move || cpu::add(&sample_f64(n, 1), &sample_f64(n, 2))),
        );
        cases.push(
            Case::new("scale", shape.clone(), work, move |gpu| {
                let (d, out) = scale_plan(gpu, &sample_tensor(gpu, &[n], 1)?, -1.5)?;
                Ok(Prepared::new(vec![d], vec![out]))
            })
            .reference(move || cpu::scale(&sample_f64(n, 1), -1.5)),
        );
        cases.push(
            Case::new("axpy", shape.clone(), work, move |gpu| {
                let y = sample_tensor(gpu, &[n], 2)?;
                let d = axpy_plan(gpu, 0.25, &sample_tensor(gpu, &[n], 1)?, &y)?;
                Ok(Prepared::new(vec![d], vec![y]))
            })
            .reference(move || cpu::axpy(0.25, &sample_f64(n, 1), &sample_f64(n, 2))),
        );
        cases.push(
            Case::new("mul", shape, work, move |gpu| {
                let y = sample_tensor(gpu, &[n], 2)?;
                let d = mul_plan(gpu, &sample_tensor(gpu, &[n], 1)?, &y)?;
                Ok(Prepared::new(vec![d], vec![y]))
            })
            .reference(move || cpu::mul(&sample_f64(n, 1), &sample_f64(n, 2))),
        );
    }
    cases
}
