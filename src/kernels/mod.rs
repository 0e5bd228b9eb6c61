//! Launchers: the Rust side of each kernel family. Each checks shapes, sizes the dispatch and
//! records or runs the kernel; its WGSL lives in `shaders/` and its CPU twin in `reference/`.

pub mod activation;
pub mod batchnorm;
pub mod conv;
pub mod dropout;
pub mod elementwise;
pub mod losses;
pub mod matmul;
pub mod optimizer;
pub mod pool;
pub mod reduce;
pub mod softmax;

use crate::Result;
use crate::error::shape_error;
use crate::gpu::{Gpu, KernelSpec, KernelStyle};

/// Whether `op` launches its subgroup variant (`*_subgroup.wgsl`). `requested`: `Some(true)`
/// insists (an error saying why when it cannot run), `Some(false)` forbids, `None` takes it
/// wherever it can run with the register-blocked style. It can run on adapters with subgroups of
/// at least 8 lanes, when the launch itself has no `blocker` (an alignment or a grid limit).
pub(crate) fn use_subgroup_variant(
    gpu: &Gpu,
    op: &str,
    requested: Option<bool>,
    style: KernelStyle,
    blocker: Option<String>,
) -> Result<bool> {
    let caps = gpu.caps();
    let why_not = if caps.subgroup_matmul() {
        blocker
    } else {
        Some("it needs subgroups of at least 8 lanes, which this adapter does not offer".into())
    };
    match (requested, why_not) {
        (Some(true), Some(why)) => Err(shape_error(op, format!("no subgroup kernel: {why}"))),
        (Some(forced), _) => Ok(forced),
        (None, why_not) => Ok(style == KernelStyle::RegisterBlocked && why_not.is_none()),
    }
}

/// Every kernel the launchers use, for the portability and binding tests.
pub fn all_kernels() -> Vec<KernelSpec> {
    let mut all = reduce::KERNELS.to_vec();
    all.extend_from_slice(elementwise::KERNELS);
    all.extend_from_slice(activation::KERNELS);
    all.extend_from_slice(matmul::KERNELS);
    all.extend_from_slice(softmax::KERNELS);
    all.extend_from_slice(dropout::KERNELS);
    all.extend_from_slice(optimizer::KERNELS);
    all.extend_from_slice(pool::KERNELS);
    all.extend_from_slice(batchnorm::KERNELS);
    all.extend_from_slice(conv::KERNELS);
    all.extend_from_slice(losses::KERNELS);
    all
}
