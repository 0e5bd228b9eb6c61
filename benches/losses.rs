//! Every distillation loss's bench cases from the loss registry, timed on the GPU through
//! criterion (timestamp queries where available). Memory-bound losses report throughput in
//! bytes of their minimum traffic; the relation losses time per call.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wgdistill::catalogue::{Suite, Work};
use wgdistill::gpu::{Gpu, measure};
use wgdistill::kernels::losses;

fn bench(c: &mut Criterion) {
    let gpu = match Gpu::from_env() {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("no GPU adapter, nothing to bench: {e}");
            return;
        }
    };
    eprintln!("adapter: {}", gpu.caps().label());
    let defs: Vec<_> = losses::registry().collect();
    let mut group = c.benchmark_group("losses");
    for case in losses::cases(&defs, Suite::bench_for(&gpu)) {
        let prepared = case.prepare(&gpu).expect("prepare");
        let bound = gpu.bind_plan(&prepared.plan).expect("bind");
        match case.work {
            Work::Bytes(b) => group.throughput(Throughput::Bytes(b as u64)),
            _ => group.throughput(Throughput::Elements(1)),
        };
        group.bench_function(case.key(), |b| {
            b.iter_custom(|iters| {
                let m = measure(&gpu, iters.clamp(1, 200) as u32, |pass| bound.record(pass))
                    .expect("measure");
                Duration::from_secs_f64(m.seconds * iters as f64)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(1)).warm_up_time(Duration::from_millis(200));
    targets = bench
}
criterion_main!(benches);
