//! The default KD training step (MLP teacher [512, 512] → MLP student [32], batch 128, 28×28
//! inputs, 10 classes; CE 0.1 + KD 0.9 at T = 4): time per step, samples per second, and the
//! host's share (writing the batch, encoding and submitting, on an idle queue) measured
//! separately.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use wgdistill::gpu::Gpu;
use wgdistill::graph::{LossKind, LossSpec, OptimizerSpec, StepSpec, TrainStep, Weights};
use wgdistill::kernels::optimizer::Sgd;
use wgdistill::models;
use wgdistill::reference::sample;

const BATCH: usize = 128;

fn bench(c: &mut Criterion) {
    let gpu = match Gpu::from_env() {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("no GPU adapter, nothing to bench: {e}");
            return;
        }
    };
    eprintln!("adapter: {}", gpu.caps().label());
    let input = [BATCH, 1, 28, 28];
    let teacher = models::mlp(input, &[512, 512], 10).expect("teacher");
    let tw = Weights::init(&gpu, &teacher, 1).expect("weights");
    let student = models::mlp(input, &[32], 10).expect("student");
    let sw = Weights::init(&gpu, &student, 2).expect("weights");
    let spec = StepSpec {
        student: &student,
        student_weights: &sw,
        teacher: Some((&teacher, &tw)),
        losses: vec![
            LossSpec::logits(LossKind::Ce, 0.1),
            LossSpec::logits(LossKind::Kd { temperature: 4.0 }, 0.9),
        ],
        optimizer: OptimizerSpec::Sgd(Sgd {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }),
        seed: 0,
    };
    let step = TrainStep::compile(&gpu, &spec).expect("compile");
    let x = sample(BATCH * 784, 3);
    let y: Vec<i32> = (0..BATCH as i32).map(|i| i % 10).collect();
    step.run(&gpu, &x, &y).expect("warm-up");
    step.total_loss(&gpu).expect("sync");

    let steps = if gpu.caps().device_type == "cpu" {
        20
    } else {
        200
    };
    let start = Instant::now();
    for _ in 0..steps {
        step.run(&gpu, &x, &y).expect("step");
    }
    step.total_loss(&gpu).expect("sync");
    let per_step = start.elapsed().as_secs_f64() / f64::from(steps);
    // The host's share, on an idle queue (back to back, a submission can wait for earlier ones).
    let host_steps = steps.min(20);
    let mut host = Duration::ZERO;
    for _ in 0..host_steps {
        let t = Instant::now();
        step.run(&gpu, &x, &y).expect("step");
        host += t.elapsed();
        step.total_loss(&gpu).expect("sync");
    }
    eprintln!(
        "kd step (batch {BATCH}): {:.3} ms/step, {:.0} samples/s; host encode+submit {:.3} ms/step",
        per_step * 1e3,
        BATCH as f64 / per_step,
        host.as_secs_f64() * 1e3 / f64::from(steps.min(20))
    );
    c.bench_function("kd_step/mlp512x512-to-mlp32/b128", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                step.run(&gpu, &x, &y).expect("step");
            }
            step.total_loss(&gpu).expect("sync");
            start.elapsed()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(300));
    targets = bench
}
criterion_main!(benches);
