//! Distillation-loss throughput, timed on the GPU (timestamp queries where available).
//! `kd` is reported as GB/s of its minimum traffic (read student and teacher once, write the
//! gradient once); the relation losses as time per call at B = 256.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wgdistill::gpu::{Gpu, measure};
use wgdistill::kernels::losses;
use wgdistill::reference::sample as data;

fn time(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    gpu: &Gpu,
    name: String,
    plan: losses::LossPlan,
) {
    let bound = gpu.bind_plan(&plan.dispatches).expect("bind");
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let m = measure(gpu, iters.clamp(1, 200) as u32, |pass| bound.record(pass))
                .expect("measure");
            Duration::from_secs_f64(m.seconds * iters as f64)
        })
    });
}

fn bench(c: &mut Criterion) {
    let gpu = match Gpu::from_env() {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("no GPU adapter, nothing to bench: {e}");
            return;
        }
    };
    eprintln!("adapter: {}", gpu.caps().label());
    let mut group = c.benchmark_group("losses");
    for (b, classes) in [(256usize, 10usize), (256, 1000), (4096, 10), (4096, 1000)] {
        let s = gpu
            .upload(&[b, classes], &data(b * classes, 1))
            .expect("upload");
        let t = gpu
            .upload(&[b, classes], &data(b * classes, 2))
            .expect("upload");
        group.throughput(Throughput::Bytes(12 * (b * classes) as u64));
        time(
            &mut group,
            &gpu,
            format!("kd/{b}x{classes}"),
            losses::kd(&gpu, &s, &t, 4.0).expect("plan"),
        );
    }
    for dim in [128usize, 2048] {
        let b = 256;
        let s = gpu.upload(&[b, dim], &data(b * dim, 3)).expect("upload");
        let t = gpu.upload(&[b, dim], &data(b * dim, 4)).expect("upload");
        group.throughput(Throughput::Elements(b as u64));
        time(
            &mut group,
            &gpu,
            format!("sp/{b}x{dim}"),
            losses::sp(&gpu, &s, &t).expect("plan"),
        );
        time(
            &mut group,
            &gpu,
            format!("rkd_distance/{b}x{dim}"),
            losses::rkd_distance(&gpu, &s, &t).expect("plan"),
        );
        time(
            &mut group,
            &gpu,
            format!("rkd_angle/{b}x{dim}"),
            losses::rkd_angle(&gpu, &s, &t).expect("plan"),
        );
        time(
            &mut group,
            &gpu,
            format!("pkt/{b}x{dim}"),
            losses::pkt(&gpu, &s, &t).expect("plan"),
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(300));
    targets = bench
}
criterion_main!(benches);
