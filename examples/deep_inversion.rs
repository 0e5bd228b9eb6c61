//! DeepInversion: images synthesised from a trained teacher alone. Trains a small CNN teacher on
//! Fashion-MNIST (or takes one: `-- TEACHER.safetensors`, a `cnn` with channels 16,32 in
//! PyTorch names), then optimises 50 images (5 per class) from noise so that the frozen teacher
//! classifies them as their classes while its BatchNorm layers see their running statistics, and
//! writes them as `wgdistill-inversion/images.safetensors` (images, labels) and a PNG grid (one
//! row per class).
//!
//! `cargo run --release --example deep_inversion [-- TEACHER.safetensors]`

use std::path::Path;
use std::time::Instant;

use wgdistill::Error;
use wgdistill::data::{self, CLASSES, Dataset, FASHION_MNIST_MEAN, FASHION_MNIST_STD};
use wgdistill::gpu::Gpu;
use wgdistill::graph::{
    EvalStep, Graph, Inversion, InversionSpec, LossSpec, OptimizerSpec, StepSpec, TrainStep,
    Weights,
};
use wgdistill::io::{self, HostTensor, TensorMap};
use wgdistill::kernels::losses::Loss;
use wgdistill::kernels::optimizer::AdamW;
use wgdistill::models;

const BATCH: usize = 128;
const PER_CLASS: usize = 5;
const ITERATIONS: usize = 2000;
const CHANNELS: [usize; 2] = [16, 32];

fn accuracy(gpu: &Gpu, graph: &Graph, weights: &Weights, set: &Dataset) -> Result<f64, Error> {
    let eval = EvalStep::compile(gpu, graph, weights)?;
    let per = set.sample_len();
    let mut correct = 0;
    let batches = set.len() / BATCH;
    for b in 0..batches {
        let x = &set.images[b * BATCH * per..(b + 1) * BATCH * per];
        let logits = eval.run(gpu, x)?;
        for (row, &y) in logits.chunks(CLASSES).zip(&set.labels[b * BATCH..]) {
            correct += usize::from(argmax(row) == y as usize);
        }
    }
    Ok(correct as f64 / (batches * BATCH) as f64)
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .unwrap_or(0)
}

/// One epoch of cross-entropy with AdamW on the training set.
fn train_teacher(gpu: &Gpu, graph: &Graph, train: &Dataset) -> Result<Weights, Error> {
    let weights = Weights::init(gpu, graph, 1)?;
    let spec = StepSpec {
        student: graph,
        student_weights: &weights,
        teacher: None,
        losses: vec![LossSpec::logits(Loss::new("ce")?, 1.0)],
        optimizer: OptimizerSpec::AdamW(AdamW {
            lr: 2e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
        }),
        seed: 0,
    };
    let step = TrainStep::compile(gpu, &spec)?;
    let per = train.sample_len();
    let start = Instant::now();
    for b in 0..train.len() / BATCH {
        let x = &train.images[b * BATCH * per..(b + 1) * BATCH * per];
        step.run(gpu, x, &train.labels[b * BATCH..(b + 1) * BATCH])?;
    }
    println!(
        "teacher: one epoch in {:.1} s, last loss {:.3}",
        start.elapsed().as_secs_f64(),
        step.total_loss(gpu)?
    );
    Ok(weights)
}

fn main() -> Result<(), Error> {
    let gpu = Gpu::from_env()?;
    println!("adapter: {}", gpu.caps().label());
    let dir = Path::new(data::DEBIAN_FASHION_MNIST);
    let (train, test) = (
        data::load_idx_split(dir, true)?,
        data::load_idx_split(dir, false)?,
    );
    let teacher = models::cnn([BATCH, 1, 28, 28], &CHANNELS, CLASSES)?;
    let weights = match std::env::args().nth(1) {
        Some(path) => Weights::upload(&gpu, &path, &io::read_safetensors(Path::new(&path))?)?,
        None => train_teacher(&gpu, &teacher, &train)?,
    };
    println!(
        "teacher: test accuracy {:.4}",
        accuracy(&gpu, &teacher, &weights, &test)?
    );

    // The synthesis batch: PER_CLASS images of each class, through the same architecture.
    let n = PER_CLASS * CLASSES;
    let frozen = models::cnn([n, 1, 28, 28], &CHANNELS, CLASSES)?;
    let labels: Vec<i32> = (0..n).map(|i| (i / PER_CLASS) as i32).collect();
    let spec = InversionSpec {
        labels: labels.clone(),
        lr: 0.05,
        betas: (0.5, 0.9),
        bn_weight: 0.05,
        first_bn_multiplier: 10.0,
        tv_weight: 1e-4,
        l2_weight: 1e-5,
        seed: 3,
    };
    let inversion = Inversion::compile(&gpu, &frozen, &weights, &spec)?;
    let start = Instant::now();
    for chunk in 0..ITERATIONS / 500 {
        inversion.run(&gpu, 500)?;
        let l = inversion.losses(&gpu)?;
        println!(
            "iteration {:>4}: total {:.4} (ce {:.4}, bn {:.4}, tv {:.4}, l2 {:.4})",
            (chunk + 1) * 500,
            l.total(),
            l.ce,
            l.bn,
            l.tv,
            l.l2
        );
    }
    let seconds = start.elapsed().as_secs_f64();
    let logits = inversion.logits(&gpu)?;
    let hits = logits
        .chunks(CLASSES)
        .zip(&labels)
        .filter(|(row, y)| argmax(row) == **y as usize)
        .count();
    println!(
        "{n} images in {seconds:.1} s ({:.1} images/s for {ITERATIONS} iterations); the teacher \
         classifies {hits} of {n} as their labels",
        n as f64 / seconds
    );

    let out = Path::new("wgdistill-inversion");
    std::fs::create_dir_all(out).map_err(|e| Error::Input {
        what: out.display().to_string(),
        message: format!("cannot create ({e})"),
    })?;
    let images = inversion.images(&gpu)?;
    let mut set = TensorMap::new();
    set.insert(
        "images".into(),
        HostTensor::f32(&[n, 1, 28, 28], images.clone()),
    );
    set.insert("labels".into(), HostTensor::i32(&[n], labels));
    io::write_safetensors(&out.join("images.safetensors"), &set)?;
    io::write_png_grid(
        &out.join("grid.png"),
        &images,
        [28, 28],
        PER_CLASS,
        2,
        |v| v * FASHION_MNIST_STD + FASHION_MNIST_MEAN,
    )?;
    println!(
        "wrote {0}/images.safetensors and {0}/grid.png",
        out.display()
    );
    Ok(())
}
