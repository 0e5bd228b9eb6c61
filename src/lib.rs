//! # wgdistill
//!
//! Knowledge distillation on the GPU with hand-written WGSL compute kernels, portable through
//! wgpu to Vulkan, Metal, DX12 and GL.
//!
//! The crate is layered: [`gpu`] is the runtime (adapter choice, tensors, buffer pool, shader
//! registry, pipeline cache, timing); [`kernels`] launches the WGSL kernels in `shaders/`;
//! [`reference`](mod@reference) holds their f64 CPU twins.
//!
//! ```no_run
//! use wgdistill::gpu::{AdapterQuery, Gpu};
//! use wgdistill::kernels::elementwise;
//!
//! let gpu = Gpu::new(&AdapterQuery::from_env()?)?;
//! let x = gpu.upload(&[3], &[1.0f32, 2.0, 3.0])?;
//! let y = elementwise::scale(&gpu, &x, 2.0)?;
//! assert_eq!(gpu.read::<f32>(&y)?, vec![2.0, 4.0, 6.0]);
//! # Ok::<(), wgdistill::Error>(())
//! ```
#![warn(missing_docs)]

pub mod bench;
pub mod catalogue;
pub mod data;
pub mod error;
pub mod gpu;
pub mod graph;
pub mod io;
pub mod kernels;
pub mod models;
pub mod ops;
pub mod reference;
pub mod rng;
pub mod train;
pub mod tune;

pub use error::{Error, Result};
