//! The smallest embedding of wgdistill: open the adapter chosen by `WGPU_BACKEND` /
//! `WGPU_ADAPTER_NAME`, run two kernels, read the result back.
//!
//! `cargo run --release --example hello_gpu`

use wgdistill::Error;
use wgdistill::gpu::Gpu;
use wgdistill::kernels::elementwise;

fn main() -> Result<(), Error> {
    let gpu = Gpu::from_env()?;
    println!("adapter: {}", gpu.caps().label());
    let x = gpu.upload(&[4], &[1.0f32, 2.0, 3.0, 4.0])?;
    let y = gpu.upload(&[4], &[10.0f32, 20.0, 30.0, 40.0])?;
    elementwise::axpy(&gpu, 0.5, &x, &y)?; // y += 0.5 x
    let doubled = elementwise::scale(&gpu, &y, 2.0)?;
    println!("2 (y + x/2) = {:?}", gpu.read::<f32>(&doubled)?);
    Ok(())
}
