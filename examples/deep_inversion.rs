//! DeepInversion: images synthesised from a trained teacher alone. Trains a small CNN teacher on
//! Fashion-MNIST (or takes one: `--teacher T.safetensors`, a `cnn` with channels 16,32 in
//! PyTorch names), then optimises batches of 50 images (5 per class) from noise so that the frozen
//! teacher classifies them as their classes while its BatchNorm layers see their running
//! statistics, and writes them as `wgdistill-inversion/images.safetensors` (images, labels) and a
//! PNG grid of the first batch (one row per class). With `--distil EPOCHS`, a small student
//! learns from the synthesised images by KD alone and is tested on the real test set, beside the
//! same student distilled on as many real training images.
//!
//! `cargo run --release --example deep_inversion -- [--teacher T.safetensors] [--batches K]
//! [--iterations N] [--distil EPOCHS]`

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
const CHANNELS: [usize; 2] = [16, 32];
const STUDENT_CHANNELS: [usize; 2] = [8, 16];
const OUT: &str = "wgdistill-inversion";

/// The command line: `--teacher PATH`, `--batches K`, `--iterations N`, `--distil EPOCHS`.
struct Options {
    teacher: Option<String>,
    batches: usize,
    iterations: usize,
    distil: usize,
}

fn options() -> Result<Options, Error> {
    let mut o = Options {
        teacher: None,
        batches: 1,
        iterations: 2000,
        distil: 0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let bad = |message: String| Error::Input {
            what: format!("deep_inversion {}", pair[0]),
            message,
        };
        let value = pair.get(1).ok_or_else(|| bad("needs a value".into()))?;
        let number = || {
            value
                .parse::<usize>()
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| bad(format!("expected a whole number ≥ 1, got '{value}'")))
        };
        match pair[0].as_str() {
            "--teacher" => o.teacher = Some(value.clone()),
            "--batches" => o.batches = number()?,
            "--iterations" => o.iterations = number()?,
            "--distil" => o.distil = number()?,
            _ => {
                return Err(bad(
                    "unknown option (--teacher, --batches, --iterations, --distil)".into(),
                ));
            }
        }
    }
    Ok(o)
}

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

/// AdamW at 2e-3 with a little weight decay, for the teacher and the students.
fn adamw() -> OptimizerSpec {
    OptimizerSpec::AdamW(AdamW {
        lr: 2e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 1e-4,
    })
}

/// One epoch of cross-entropy with AdamW on the training set.
fn train_teacher(gpu: &Gpu, graph: &Graph, train: &Dataset) -> Result<Weights, Error> {
    let weights = Weights::init(gpu, graph, 1)?;
    let spec = StepSpec {
        student: graph,
        student_weights: &weights,
        teacher: None,
        losses: vec![LossSpec::logits(Loss::new("ce")?, 1.0)],
        optimizer: adamw(),
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

/// A student distilled by KD (T = 4) alone from the teacher's logits on `images`, in batches of
/// the synthesis batch; returns its test accuracy.
fn distil(
    gpu: &Gpu,
    teacher: (&Graph, &Weights),
    images: &[f32],
    epochs: usize,
    test: &Dataset,
) -> Result<f64, Error> {
    let n = PER_CLASS * CLASSES;
    let student = models::cnn([n, 1, 28, 28], &STUDENT_CHANNELS, CLASSES)?;
    let weights = Weights::init(gpu, &student, 5)?;
    let spec = StepSpec {
        student: &student,
        student_weights: &weights,
        teacher: Some(teacher),
        losses: vec![LossSpec::logits(
            Loss::new("kd")?.with("temperature", 4.0)?,
            1.0,
        )],
        optimizer: adamw(),
        seed: 0,
    };
    let step = TrainStep::compile(gpu, &spec)?;
    let unused = vec![0i32; n];
    for _ in 0..epochs {
        for batch in images.chunks(n * 28 * 28) {
            step.run(gpu, batch, &unused)?;
        }
    }
    let eval = models::cnn([BATCH, 1, 28, 28], &STUDENT_CHANNELS, CLASSES)?;
    accuracy(gpu, &eval, &weights, test)
}

fn main() -> Result<(), Error> {
    let o = options()?;
    let gpu = Gpu::from_env()?;
    println!("adapter: {}", gpu.caps().label());
    let dir = Path::new(data::DEBIAN_FASHION_MNIST);
    let (train, test) = (
        data::load_idx_split(dir, true)?,
        data::load_idx_split(dir, false)?,
    );
    let teacher = models::cnn([BATCH, 1, 28, 28], &CHANNELS, CLASSES)?;
    let weights = match &o.teacher {
        Some(path) => Weights::upload(&gpu, path, &io::read_safetensors(Path::new(path))?)?,
        None => {
            let w = train_teacher(&gpu, &teacher, &train)?;
            // Kept for later runs (`--teacher wgdistill-inversion/teacher.safetensors`).
            std::fs::create_dir_all(OUT).map_err(|e| Error::Input {
                what: OUT.into(),
                message: format!("cannot create ({e})"),
            })?;
            io::write_safetensors(
                &Path::new(OUT).join("teacher.safetensors"),
                &w.to_host(&gpu)?,
            )?;
            w
        }
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
        jitter: 0,
        flip: false,
        competition: 0.0,
    };
    let mut inversion = Inversion::compile(&gpu, &frozen, &weights, &spec)?;
    let judge = EvalStep::compile(&gpu, &frozen, &weights)?;
    let start = Instant::now();
    let (mut images, mut hits) = (Vec::new(), 0);
    for batch in 0..o.batches {
        if batch > 0 {
            inversion.restart(&gpu, &labels, spec.seed + batch as u64)?;
        }
        inversion.run(&gpu, o.iterations)?;
        let l = inversion.losses(&gpu)?;
        println!(
            "batch {batch}: total {:.4} (ce {:.4}, bn {:.4}, tv {:.4}, l2 {:.4})",
            l.total(),
            l.ce,
            l.bn,
            l.tv,
            l.l2
        );
        // The teacher's verdict on the images as saved (after the last update).
        let batch_images = inversion.images(&gpu)?;
        hits += judge
            .run(&gpu, &batch_images)?
            .chunks(CLASSES)
            .zip(&labels)
            .filter(|(row, y)| argmax(row) == **y as usize)
            .count();
        images.extend(batch_images);
    }
    let seconds = start.elapsed().as_secs_f64();
    let total = n * o.batches;
    println!(
        "{total} images in {seconds:.1} s ({:.2} images/s at {} iterations); the teacher \
         classifies {hits} of {total} as their labels",
        total as f64 / seconds,
        o.iterations
    );
    if o.distil > 0 {
        let synthetic = distil(&gpu, (&frozen, &weights), &images, o.distil, &test)?;
        let real = &train.images[..images.len()];
        let with_data = distil(&gpu, (&frozen, &weights), real, o.distil, &test)?;
        println!(
            "student CNN {STUDENT_CHANNELS:?}, KD only, {} epochs: test accuracy {synthetic:.4} on \
             the {total} synthesised images, {with_data:.4} on {total} real training images",
            o.distil
        );
    }

    let out = Path::new(OUT);
    std::fs::create_dir_all(out).map_err(|e| Error::Input {
        what: OUT.into(),
        message: format!("cannot create ({e})"),
    })?;
    let mut set = TensorMap::new();
    let all_labels: Vec<i32> = labels.iter().cycle().take(total).copied().collect();
    set.insert(
        "images".into(),
        HostTensor::f32(&[total, 1, 28, 28], images.clone()),
    );
    set.insert("labels".into(), HostTensor::i32(&[total], all_labels));
    io::write_safetensors(&out.join("images.safetensors"), &set)?;
    io::write_png_grid(
        &out.join("grid.png"),
        &images[..n * 28 * 28],
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
