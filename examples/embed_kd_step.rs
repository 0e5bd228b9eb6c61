//! Embedding wgdistill as a library: build a teacher and a student, train the teacher, compile a
//! knowledge-distillation step (KD on the logits plus a FitNet hint through a trainable adapter),
//! train the student with it, and compare it with the same student trained from scratch.
//!
//! `cargo run --release --example embed_kd_step` (pick the adapter with WGPU_BACKEND /
//! WGPU_ADAPTER_NAME). The data is a small synthetic 10-class problem made here.

use wgdistill::Error;
use wgdistill::gpu::Gpu;
use wgdistill::graph::{
    Adapter, EvalStep, Graph, LossSpec, OptimizerSpec, StepSpec, TrainStep, Weights,
};
use wgdistill::kernels::losses::Loss;
use wgdistill::kernels::optimizer::Sgd;
use wgdistill::models;
use wgdistill::rng::sample;
use wgdistill::train::run::predicted_class;

const BATCH: usize = 64;
const CLASSES: usize = 10;
const PIXELS: usize = 64;

/// 8×8 images: each class lights up its own pair of rows and columns, under heavy noise.
fn synthetic(n: usize, seed: u64) -> (Vec<f32>, Vec<i32>) {
    let noise = sample(n * PIXELS, seed);
    let mut x = Vec::with_capacity(n * PIXELS);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let class = (i * 7 + seed as usize) % CLASSES;
        for p in 0..PIXELS {
            let (r, c) = (p / 8, p % 8);
            let lit = r == class % 8 || c == (class * 3) % 8;
            x.push(if lit { 0.8 } else { 0.0 } + 0.9 * noise[i * PIXELS + p]);
        }
        y.push(class as i32);
    }
    (x, y)
}

fn train(gpu: &Gpu, step: &TrainStep, x: &[f32], y: &[i32], epochs: usize) -> Result<f32, Error> {
    for _ in 0..epochs {
        for (xb, yb) in x.chunks(BATCH * PIXELS).zip(y.chunks(BATCH)) {
            step.run(gpu, xb, yb)?;
        }
    }
    step.total_loss(gpu)
}

fn accuracy(
    gpu: &Gpu,
    graph: &Graph,
    weights: &Weights,
    x: &[f32],
    y: &[i32],
) -> Result<f64, Error> {
    let eval = EvalStep::compile(gpu, graph, weights)?;
    let mut correct = 0;
    for (xb, yb) in x.chunks(BATCH * PIXELS).zip(y.chunks(BATCH)) {
        let logits = eval.run(gpu, xb)?;
        for (row, &label) in logits.chunks(CLASSES).zip(yb) {
            correct += usize::from(predicted_class(row) as i32 == label);
        }
    }
    Ok(correct as f64 / y.len() as f64)
}

fn main() -> Result<(), Error> {
    let gpu = Gpu::from_env()?;
    println!("adapter: {}", gpu.caps().label());
    let (train_x, train_y) = synthetic(1024, 1);
    let (test_x, test_y) = synthetic(512, 2);
    let input = [BATCH, 1, 8, 8];
    let sgd = |lr| {
        OptimizerSpec::Sgd(Sgd {
            lr,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 5e-4,
            nesterov: false,
        })
    };
    let ce = LossSpec::logits(Loss::new("ce")?, 1.0);

    // The teacher: a wide MLP trained with cross-entropy.
    let teacher = models::mlp(input, &[256, 256], CLASSES)?;
    let teacher_w = Weights::init(&gpu, &teacher, 10)?;
    let spec = StepSpec {
        student: &teacher,
        student_weights: &teacher_w,
        teacher: None,
        losses: vec![ce.clone()],
        optimizer: sgd(0.05),
        seed: 0,
    };
    let loss = train(
        &gpu,
        &TrainStep::compile(&gpu, &spec)?,
        &train_x,
        &train_y,
        8,
    )?;
    println!(
        "teacher: loss {loss:.3}, test accuracy {:.3}",
        accuracy(&gpu, &teacher, &teacher_w, &test_x, &test_y)?
    );

    // The same small student twice: from scratch, and distilled.
    let student = models::mlp(input, &[16], CLASSES)?;
    let scratch_w = Weights::init(&gpu, &student, 11)?;
    let spec = StepSpec {
        student: &student,
        student_weights: &scratch_w,
        teacher: None,
        losses: vec![ce.clone()],
        optimizer: sgd(0.05),
        seed: 0,
    };
    train(
        &gpu,
        &TrainStep::compile(&gpu, &spec)?,
        &train_x,
        &train_y,
        8,
    )?;
    println!(
        "student from scratch: test accuracy {:.3}",
        accuracy(&gpu, &student, &scratch_w, &test_x, &test_y)?
    );

    let kd_w = Weights::init(&gpu, &student, 11)?;
    let hint = LossSpec {
        loss: Loss::new("hint")?,
        weight: 1.0,
        student_taps: vec!["hidden.0".into()],
        teacher_taps: vec!["hidden.1".into()],
        adapter: Some(Adapter::Linear),
        paraphraser: None,
    };
    let losses = vec![
        LossSpec::logits(Loss::new("ce")?, 0.1),
        LossSpec::logits(Loss::new("kd")?.with("temperature", 4.0)?, 0.9),
        hint,
    ];
    let spec = StepSpec {
        student: &student,
        student_weights: &kd_w,
        teacher: Some((&teacher, &teacher_w)),
        losses,
        optimizer: sgd(0.05),
        seed: 1,
    };
    let step = TrainStep::compile(&gpu, &spec)?;
    train(&gpu, &step, &train_x, &train_y, 8)?;
    for (name, weight, value) in step.losses(&gpu)? {
        println!("  last step {name}: {value:.4} (weight {weight})");
    }
    println!(
        "student with KD + hint: test accuracy {:.3}",
        accuracy(&gpu, &student, &kd_w, &test_x, &test_y)?
    );
    Ok(())
}
