//! Launchers: the Rust side of each kernel family. Each checks shapes, sizes the dispatch and
//! records or runs the kernel; its WGSL lives in `shaders/` and its CPU twin in `reference/`.

pub mod elementwise;
