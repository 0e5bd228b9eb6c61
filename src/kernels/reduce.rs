//! Deterministic sums (`shaders/reduce.wgsl`): fixed-order chunk sums, repeated until one value
//! is left, so the same inputs give the same bits on every run.

use crate::Result;
use crate::catalogue::{
    Case, Prepared, Suite, Work, memory_case, sample_f64, sample_tensor, stream_len,
};
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::reference::reduce as cpu;

/// Elements one workgroup sums.
const CHUNK: usize = 4096;

/// `output[w] = scale · Σ input[w·4096 ..][..4096]`.
pub const SUM_CHUNKS: KernelSpec = KernelSpec::new::<Params>(
    "reduce",
    "sum_chunks",
    &[Binding::Uniform, Binding::ReadOnly, Binding::Output],
);

/// Sum, mean or max over the middle axis of `[outer, len, inner]`.
pub const REDUCE_AXIS: KernelSpec = KernelSpec::new::<AxisParams>(
    "reduce",
    "reduce_axis",
    &[Binding::Uniform, Binding::ReadOnly, Binding::Output],
);

/// The same with a workgroup per output, for few outputs along a long axis on a GPU.
pub const REDUCE_AXIS_WIDE: KernelSpec = KernelSpec::new::<AxisParams>(
    "reduce",
    "reduce_axis_wide",
    &[Binding::Uniform, Binding::ReadOnly, Binding::Output],
);

/// The family's kernels.
pub const KERNELS: &[KernelSpec] = &[SUM_CHUNKS, REDUCE_AXIS, REDUCE_AXIS_WIDE];

/// What an axis reduction computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AxisOp {
    /// Sum.
    Sum,
    /// Mean.
    Mean,
    /// Maximum.
    Max,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AxisParams {
    outer: u32,
    len: u32,
    inner: u32,
    op: u32,
}

/// Prepares the reduction of `input` over `axis` into a new tensor without that axis (a bias
/// gradient is `reduce_axis(dy, 0, Sum)`). Deterministic: each output is reduced in a fixed
/// order (along the axis; on a GPU, few outputs along a long axis by fixed strides and a tree).
pub fn reduce_axis(
    gpu: &Gpu,
    input: &Tensor,
    axis: usize,
    op: AxisOp,
) -> Result<(Dispatch, Tensor)> {
    reduce_axis_with(gpu, input, axis, op, None)
}

/// [`reduce_axis`], with `wide` forcing (`Some(true)`) or refusing the workgroup-per-output
/// kernel instead of choosing by the adapter and the shape (tests run both).
pub fn reduce_axis_with(
    gpu: &Gpu,
    input: &Tensor,
    axis: usize,
    op: AxisOp,
    wide: Option<bool>,
) -> Result<(Dispatch, Tensor)> {
    let shape = input.shape();
    if axis >= shape.len() || shape[axis] == 0 {
        return Err(crate::error::shape_error(
            "reduce_axis",
            format!("axis {axis} is not a non-empty axis of {shape:?}"),
        ));
    }
    input.expect("reduce_axis", "input", DType::F32, shape)?;
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let out_shape: Vec<usize> = shape
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != axis)
        .map(|(_, d)| *d)
        .collect();
    let out = gpu.empty(&out_shape, DType::F32)?;
    let params = AxisParams {
        outer: outer as u32,
        len: shape[axis] as u32,
        inner: inner as u32,
        op: match op {
            AxisOp::Sum => 0,
            AxisOp::Mean => 1,
            AxisOp::Max => 2,
        },
    };
    // Few outputs on a long axis leave most of a GPU idle with a lane per output: there a
    // workgroup per output (a CPU-like driver runs its lanes in turn anyway, and pays for the
    // barriers).
    let outputs = outer * inner;
    let wide = wide.unwrap_or(
        gpu.caps().kernel_style == crate::gpu::KernelStyle::WorkgroupTiled
            && outputs < 16384
            && shape[axis] >= 256,
    );
    let d = if wide {
        gpu.check_loops(&REDUCE_AXIS_WIDE, shape[axis].div_ceil(256) as u64 + 8)?;
        gpu.dispatch(&REDUCE_AXIS_WIDE, &params, &[input, &out], outputs as u64)?
    } else {
        // One invocation per output walks the whole axis.
        gpu.check_loops(&REDUCE_AXIS, shape[axis] as u64)?;
        gpu.dispatch_over(&REDUCE_AXIS, &params, &[input, &out], outputs)?
    };
    Ok((d, out))
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    groups: u32,
    scale: f32,
    pad: u32,
}

/// Appends to `plan` the launches that write `scale · Σ input` into `out` (shape `[1]`).
pub fn sum_into(
    gpu: &Gpu,
    plan: &mut Vec<Dispatch>,
    input: &Tensor,
    out: &Tensor,
    scale: f32,
) -> Result<()> {
    out.expect("sum", "out", DType::F32, &[1])?;
    let mut src = input.clone();
    let mut n = input.numel();
    loop {
        let groups = n.div_ceil(CHUNK).max(1);
        let last = groups == 1;
        let dst = if last {
            out.clone()
        } else {
            gpu.empty(&[groups], DType::F32)?
        };
        let params = Params {
            n: n as u32,
            groups: groups as u32,
            scale: if last { scale } else { 1.0 },
            pad: 0,
        };
        plan.push(gpu.dispatch(&SUM_CHUNKS, &params, &[&src, &dst], groups as u64)?);
        if last {
            return Ok(());
        }
        src = dst;
        n = groups;
    }
}

/// The family's catalogue: axis reductions of each kind on odd shapes, and whole-tensor sums
/// spanning several chunks.
pub fn cases(_: &Gpu, suite: Suite) -> Vec<Case> {
    if let Suite::Bench { .. } = suite {
        let n = stream_len(suite);
        let (rows, cols) = (n / 256, 256);
        return vec![memory_case(
            suite,
            "sum",
            format!("[{rows}, {cols}] axis 0"),
            4.0 * n as f64,
            move |gpu| {
                let x = sample_tensor(gpu, &[rows, cols], 19)?;
                let (d, out) = reduce_axis(gpu, &x, 0, AxisOp::Sum)?;
                Ok(Prepared::new(vec![d], vec![out]))
            },
        )];
    }
    let mut cases = Vec::new();
    // The lane-per-output kernel, then the workgroup-per-output one (an axis shorter than, and
    // several times, its 256 lanes).
    for (shape, axis, wide) in [
        (vec![7usize, 33, 5], 1usize, false),
        (vec![129, 3], 0, false),
        (vec![2, 1000], 1, false),
        (vec![2, 1000, 3], 1, true),
        (vec![129, 3], 0, true),
    ] {
        for (op, name) in [
            (AxisOp::Sum, "sum"),
            (AxisOp::Mean, "mean"),
            (AxisOp::Max, "max"),
        ] {
            let n: usize = shape.iter().product();
            let s = shape.clone();
            let kernel = if wide {
                "reduce_axis_wide"
            } else {
                "reduce_axis"
            };
            cases.push(
                Case::new(
                    format!("{kernel} ({name})"),
                    format!("{shape:?} axis {axis}"),
                    Work::Bytes(4.0 * n as f64),
                    move |gpu| {
                        let x = sample_tensor(gpu, &s, 20)?;
                        let (d, out) = reduce_axis_with(gpu, &x, axis, op, Some(wide))?;
                        Ok(Prepared::new(vec![d], vec![out]))
                    },
                )
                .reference({
                    let shape = shape.clone();
                    move || cpu::reduce_axis(&sample_f64(n, 20), &shape, axis, name)
                }),
            );
        }
    }
    for n in [1usize, 4097, 3 * CHUNK * CHUNK / 1024 + 5] {
        cases.push(
            Case::new(
                "sum",
                format!("[{n}]"),
                Work::Bytes(4.0 * n as f64),
                move |gpu| {
                    let (x, out) = (sample_tensor(gpu, &[n], 21)?, gpu.empty(&[1], DType::F32)?);
                    let mut plan = Vec::new();
                    sum_into(gpu, &mut plan, &x, &out, 0.5)?;
                    Ok(Prepared::new(plan, vec![out]))
                },
            )
            .reference(move || vec![0.5 * sample_f64(n, 21).iter().sum::<f64>()])
            .tolerance(1e-5, 1e-5),
        );
    }
    cases
}
