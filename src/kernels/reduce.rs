//! Deterministic sums (`shaders/reduce.wgsl`): fixed-order chunk sums, repeated until one value
//! is left, so the same inputs give the same bits on every run.

use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Result, Tensor};

/// Elements one workgroup sums.
const CHUNK: usize = 4096;

/// `output[w] = scale · Σ input[w·4096 ..][..4096]`.
pub const SUM_CHUNKS: KernelSpec = KernelSpec {
    family: "reduce",
    entry: "sum_chunks",
    bindings: &[Binding::Uniform, Binding::ReadOnly, Binding::ReadWrite],
};

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
