//! Elementwise kernel throughput (GB/s of compulsory traffic), timed on the GPU with
//! `gpu::measure` (timestamp queries where available) and reported through criterion.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wgdistill::gpu::{DType, Gpu, measure};
use wgdistill::kernels::elementwise;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    alpha: f32,
    pad: [u32; 2],
}

fn bench(c: &mut Criterion) {
    let gpu = match Gpu::from_env() {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("no GPU adapter, nothing to bench: {e}");
            return;
        }
    };
    // Figures are only comparable with the adapter and driver named beside them.
    eprintln!("adapter: {}", gpu.caps().label());
    let mut group = c.benchmark_group("elementwise");
    for n in [1usize << 16, 1 << 22] {
        let x = gpu.zeros(&[n], DType::F32).expect("alloc");
        let y = gpu.zeros(&[n], DType::F32).expect("alloc");
        let kernel = gpu.kernel(&elementwise::AXPY, &[]).expect("pipeline");
        let uniform = gpu.uniform(&Params {
            n: n as u32,
            alpha: 0.5,
            pad: [0; 2],
        });
        let bind = gpu
            .bind_group(&kernel, Some(&uniform), &[&x, &y])
            .expect("bind group");
        let grid = gpu.grid("axpy", (n as u64).div_ceil(256)).expect("grid");
        // axpy reads x and y and writes y: 12 bytes per element.
        group.throughput(Throughput::Bytes(12 * n as u64));
        group.bench_function(format!("axpy/{n}"), |b| {
            b.iter_custom(|iters| {
                let m = measure(&gpu, iters.clamp(1, 1000) as u32, |pass| {
                    pass.set_pipeline(&kernel.pipeline);
                    pass.set_bind_group(0, &bind, &[]);
                    pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
                })
                .expect("measure");
                Duration::from_secs_f64(m.seconds * iters as f64)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
