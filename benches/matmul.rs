//! Matmul GFLOP/s for both kernel styles against a single-threaded CPU sgemm (the
//! `matrixmultiply` crate) measured in the same run; the ratio is the figure that travels between
//! machines. GPU time comes from timestamp queries where available.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wgdistill::gpu::{Gpu, KernelStyle, measure};
use wgdistill::kernels::matmul::{MatmulOptions, matmul};
use wgdistill::rng::sample;

fn cpu_sgemm(a: &[f32], b: &[f32], c: &mut [f32], n: usize) {
    // SAFETY: a, b and c are n×n row-major slices of exactly n·n elements.
    unsafe {
        matrixmultiply::sgemm(
            n,
            n,
            n,
            1.0,
            a.as_ptr(),
            n as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

fn bench(c: &mut Criterion) {
    let gpu = match Gpu::from_env() {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("no GPU adapter, nothing to bench: {e}");
            return;
        }
    };
    eprintln!(
        "adapter: {} (default style {})",
        gpu.caps().label(),
        gpu.caps().kernel_style
    );
    let mut group = c.benchmark_group("matmul");
    let sizes: &[usize] = if gpu.caps().device_type == "cpu" {
        &[256, 1024]
    } else {
        &[256, 1024, 4096]
    };
    for &n in sizes {
        let flops = 2.0 * (n as f64).powi(3);
        let (av, bv) = (sample(n * n, 1), sample(n * n, 2));
        let (a, b) = (
            gpu.upload(&[n, n], &av).expect("upload"),
            gpu.upload(&[n, n], &bv).expect("upload"),
        );
        group.throughput(Throughput::Elements(flops as u64));
        let mut cpu_c = vec![0.0f32; n * n];
        let reps = if n >= 1024 { 3 } else { 20 };
        let start = Instant::now();
        for _ in 0..reps {
            cpu_sgemm(&av, &bv, &mut cpu_c, n);
        }
        let cpu_seconds = start.elapsed().as_secs_f64() / f64::from(reps);
        eprintln!(
            "matmul {n}³ cpu sgemm (1 thread): {:.1} GFLOP/s",
            flops / cpu_seconds * 1e-9
        );
        group.bench_function(format!("cpu_sgemm/{n}"), |bch| {
            bch.iter(|| cpu_sgemm(&av, &bv, &mut cpu_c, n))
        });
        let mut variants = vec![
            (
                "register_blocked",
                KernelStyle::RegisterBlocked,
                Some(false),
            ),
            ("workgroup_tiled", KernelStyle::WorkgroupTiled, Some(false)),
        ];
        if gpu.caps().subgroup_matmul() {
            variants.push(("subgroup", KernelStyle::RegisterBlocked, Some(true)));
        }
        for (variant, style, subgroups) in variants {
            let options = MatmulOptions {
                style: Some(style),
                subgroups,
                ..Default::default()
            };
            let (dispatch, _out) = matmul(&gpu, &a, &b, None, options).expect("plan");
            let bound = gpu.bind_plan(&[dispatch]).expect("bind");
            let m = measure(&gpu, reps as u32, |pass| bound.record(pass)).expect("measure");
            eprintln!(
                "matmul {n}³ {variant}: {:.1} GFLOP/s = {:.2}× cpu sgemm ({:?})",
                flops / m.seconds * 1e-9,
                cpu_seconds / m.seconds,
                m.source
            );
            group.bench_function(format!("{variant}/{n}"), |bch| {
                bch.iter_custom(|iters| {
                    let m = measure(&gpu, iters.clamp(1, 50) as u32, |pass| bound.record(pass))
                        .expect("measure");
                    Duration::from_secs_f64(m.seconds * iters as f64)
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(300));
    targets = bench
}
criterion_main!(benches);
