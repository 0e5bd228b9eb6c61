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

use crate::gpu::KernelSpec;

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
