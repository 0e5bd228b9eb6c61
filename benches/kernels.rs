//! Every family's bench cases in the catalogue (the same cases `wgdistill bench` runs), timed on the GPU through criterion. `cargo bench --bench kernels -- NAME` filters.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use wgdistill::bench::catalogue;
use wgdistill::gpu::{Gpu, measure};

fn bench(c: &mut Criterion) {
    let gpu = match Gpu::from_env() {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("no GPU adapter, nothing to bench: {e}");
            return;
        }
    };
    eprintln!("adapter: {}", gpu.caps().label());
    let cases = catalogue(&gpu, None);
    let mut group = c.benchmark_group("kernels");
    for case in &cases {
        let prepared = case.prepare(&gpu).expect("prepare");
        let bound = gpu.bind_plan(&prepared.plan).expect("bind");
        group.bench_function(case.key(), |b| {
            b.iter_custom(|iters| {
                let m = measure(&gpu, iters.clamp(1, 100) as u32, |pass| bound.record(pass))
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
