//! The default KD training step (MLP teacher [512, 512] → MLP student [32], batch 128, 28×28
//! inputs, 10 classes; CE 0.1 + KD 0.9 at T = 4): time per step, samples per second, and the
//! host's share (writing the batch, encoding and submitting, on an idle queue) measured
//! separately. Then a CNN's training step (conv-bn-relu-pool ×2, widths 32 and 64, CE), and where
//! each step's time goes, kernel by kernel ([`TrainStep::profile`]).

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use wgdistill::bench::by_kernel;
use wgdistill::gpu::Gpu;
use wgdistill::graph::{LossSpec, OptimizerSpec, StepSpec, TrainStep, Weights};
use wgdistill::kernels::losses::Loss;
use wgdistill::kernels::optimizer::Sgd;
use wgdistill::models;
use wgdistill::rng::sample;

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
            LossSpec::logits(Loss::new("ce").expect("ce"), 0.1),
            LossSpec::logits(Loss::new("kd").expect("kd"), 0.9),
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
    let steps = if gpu.caps().device_type == "cpu" {
        20
    } else {
        200
    };
    let per_step = seconds_per_step(&gpu, &step, &x, &y, steps);
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
    print_profile(&gpu, "kd step", &step, &x, &y);
    bench_steps(c, "kd_step/mlp512x512-to-mlp32/b128", &gpu, &step, &x, &y);

    let cnn = models::cnn(input, &[32, 64], 10).expect("cnn");
    let cw = Weights::init(&gpu, &cnn, 4).expect("weights");
    let spec = StepSpec {
        student: &cnn,
        student_weights: &cw,
        teacher: None,
        losses: vec![LossSpec::logits(Loss::new("ce").expect("ce"), 1.0)],
        ..spec
    };
    let step = TrainStep::compile(&gpu, &spec).expect("compile");
    let steps = if gpu.caps().device_type == "cpu" {
        5
    } else {
        100
    };
    let per_step = seconds_per_step(&gpu, &step, &x, &y, steps);
    eprintln!(
        "cnn [32, 64] ce step (batch {BATCH}): {:.1} ms/step, {:.0} samples/s",
        per_step * 1e3,
        BATCH as f64 / per_step
    );
    print_profile(&gpu, "cnn step", &step, &x, &y);
    bench_steps(c, "ce_step/cnn32x64/b128", &gpu, &step, &x, &y);
}

/// A criterion bench of back-to-back steps, timed to the GPU's completion.
fn bench_steps(c: &mut Criterion, name: &str, gpu: &Gpu, step: &TrainStep, x: &[f32], y: &[i32]) {
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                step.run(gpu, x, y).expect("step");
            }
            step.total_loss(gpu).expect("sync");
            start.elapsed()
        })
    });
}

/// Seconds per step over `steps` back-to-back steps, after one warm-up step.
fn seconds_per_step(gpu: &Gpu, step: &TrainStep, x: &[f32], y: &[i32], steps: u32) -> f64 {
    step.run(gpu, x, y).expect("warm-up");
    step.total_loss(gpu).expect("sync");
    let start = Instant::now();
    for _ in 0..steps {
        step.run(gpu, x, y).expect("step");
    }
    step.total_loss(gpu).expect("sync");
    start.elapsed().as_secs_f64() / f64::from(steps)
}

/// The step's time by kernel, largest first (launches of the same kernel added up).
fn print_profile(gpu: &Gpu, what: &str, step: &TrainStep, x: &[f32], y: &[i32]) {
    let kernels = by_kernel(step.profile(gpu, x, y, 3).expect("profile"));
    let total: f64 = kernels.iter().map(|k| k.seconds).sum();
    eprintln!("{what}: {:.2} ms in its launches, by kernel:", total * 1e3);
    for k in kernels.iter().take(8) {
        eprintln!(
            "  {:>5.1}%  {:>8.3} ms  {:>3}×  {}",
            100.0 * k.seconds / total,
            k.seconds * 1e3,
            k.launches,
            k.kernel
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(300));
    targets = bench
}
criterion_main!(benches);
