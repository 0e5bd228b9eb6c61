//! Running a configuration: data, stages (compile, epochs, evaluation), checkpoints after every
//! epoch (written to a temporary file, then renamed), `metrics.jsonl` and `summary.json`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::Result;
use crate::data::{self, Dataset};
use crate::error::input_error;
use crate::gpu::Gpu;
use crate::graph::{EvalStep, Graph, LossSpec, Op, OptimizerSpec, StepSpec, TrainStep, Weights};
use crate::io::{self, HostTensor, TensorMap};
use crate::kernels::optimizer::{AdamW, Sgd};

use super::config::{Config, DatasetKind, OptimizerConfig, OptimizerKind, ScheduleKind};
use super::teacher_cache;

/// Where the data comes from and where results go.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Output folder (created if missing).
    pub out: PathBuf,
    /// Fashion-MNIST folder (else `WGDISTILL_DATA`, else the Debian package's).
    pub data_dir: Option<PathBuf>,
    /// Use the synthetic set, saying so, when Fashion-MNIST is not found (the main job does).
    pub fallback_to_synthetic: bool,
    /// Continue an interrupted run in `out` from its last completed epoch.
    pub resume: bool,
    /// Stop (as if interrupted) after this many epochs of this stage: (stage index, epochs).
    /// For testing resumption.
    pub stop_after: Option<(usize, usize)>,
    /// Show a progress bar per epoch (on standard error, and only when it is a terminal).
    pub progress: bool,
    /// Root of the teacher-output cache (`data.teacher_cache`); `None` picks
    /// [`default_teacher_cache`].
    pub teacher_cache: Option<PathBuf>,
}

/// A model's checkpoint as PyTorch's `state_dict()` holds it: every parameter and buffer, plus
/// each BatchNorm's `num_batches_tracked` (the training steps of the stage that produced it; an
/// i32 scalar, which `load_state_dict` copies into its int64 buffer), so that PyTorch loads it
/// with `strict=True`.
pub fn export(gpu: &Gpu, graph: &Graph, weights: &Weights, steps: u32) -> Result<TensorMap> {
    let mut out = weights.to_host(gpu)?;
    for node in &graph.nodes {
        if let Op::BatchNorm { running_mean, .. } = node.op {
            let mean = &graph.nodes[running_mean.0].name;
            if let Some(prefix) = mean.strip_suffix(".running_mean") {
                let count = i32::try_from(steps).unwrap_or(i32::MAX);
                out.insert(
                    format!("{prefix}.num_batches_tracked"),
                    HostTensor::i32(&[], vec![count]),
                );
            }
        }
    }
    Ok(out)
}

impl RunOptions {
    /// Options writing to `out`: the configured data only (no synthetic fallback), a fresh run,
    /// no progress bars, the default teacher-output cache.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            data_dir: None,
            fallback_to_synthetic: false,
            resume: false,
            stop_after: None,
            progress: false,
            teacher_cache: None,
        }
    }
}

/// Where the teacher-output cache lives unless a run says otherwise: `WGDISTILL_CACHE`, else
/// `$XDG_CACHE_HOME/wgdistill/teacher-outputs`, else `~/.cache/wgdistill/teacher-outputs`, else
/// `teacher-cache` in the run's output folder.
pub fn default_teacher_cache(out: &Path) -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("WGDISTILL_CACHE") {
        return dir;
    }
    match env("XDG_CACHE_HOME").or_else(|| env("HOME").map(|h| h.join(".cache"))) {
        Some(base) => base.join("wgdistill").join("teacher-outputs"),
        None => out.join("teacher-cache"),
    }
}

/// The teacher taps a stage's loss terms read (peers excluded), `logits` always among them.
fn teacher_taps(losses: &[(usize, LossSpec)]) -> Vec<String> {
    let mut taps = vec!["logits".to_string()];
    for (_, l) in losses {
        let tap = l.teacher_tap.as_deref().unwrap_or("logits");
        if l.loss.def().needs_teacher()
            && !tap.starts_with(crate::graph::PEER)
            && !taps.iter().any(|t| t == tap)
        {
            taps.push(tap.to_string());
        }
    }
    taps
}

/// Where a run stands, written after every epoch (`progress.json`) so `--resume` can go on.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
struct Progress {
    /// The stage in progress.
    stage: usize,
    /// Its completed epochs.
    epoch: usize,
    /// Its models' best test accuracies so far.
    best: Vec<f64>,
    /// Its models' last test accuracies.
    accuracy: Vec<f64>,
    /// Completed stages.
    done: Vec<StageSummary>,
}

/// Prepares the folder `out` of a later seed to start from the first seed's `once` stages
/// (`first` is that seed's folder, complete): their models' checkpoints are copied and a
/// `progress.json` marks those stages done, so that resuming `out` trains the rest.
pub fn start_from_first_seed(config: &Config, first: &Path, out: &Path) -> Result<()> {
    let once = config.once_stages();
    let summary_path = first.join("summary.json");
    let text = std::fs::read_to_string(&summary_path).map_err(|e| {
        input_error(
            summary_path.display().to_string(),
            format!("the first seed's summary is needed for its once stages ({e})"),
        )
    })?;
    let first_summary: Summary = serde_json::from_str(&text)
        .map_err(|e| input_error(summary_path.display().to_string(), e.to_string()))?;
    if first_summary.stages.len() < once {
        return Err(input_error(
            summary_path.display().to_string(),
            format!(
                "has {} stages, the once stages are {once}",
                first_summary.stages.len()
            ),
        ));
    }
    let ckpt = out.join("checkpoints");
    std::fs::create_dir_all(&ckpt)
        .map_err(|e| input_error(ckpt.display().to_string(), format!("cannot create ({e})")))?;
    for model in config.stages[..once].iter().flat_map(|s| &s.train) {
        let name = format!("{model}.safetensors");
        let (from, to) = (first.join("checkpoints").join(&name), ckpt.join(&name));
        std::fs::copy(&from, &to).map_err(|e| {
            input_error(
                from.display().to_string(),
                format!("cannot copy to {} ({e})", to.display()),
            )
        })?;
    }
    let progress = Progress {
        stage: once,
        epoch: 0,
        best: vec![],
        accuracy: vec![],
        done: first_summary.stages[..once].to_vec(),
    };
    let _ = std::fs::remove_file(out.join("metrics.jsonl"));
    write_json(&out.join("progress.json"), &progress)
}

/// The adapter a run used.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct AdapterSummary {
    /// Adapter name.
    pub name: String,
    /// Backend.
    pub backend: String,
    /// Driver and version.
    pub driver: String,
}

/// One model's result in a stage.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ModelResult {
    /// Model name.
    pub model: String,
    /// Test accuracy after the last epoch.
    pub test_accuracy: f64,
    /// Best test accuracy over the epochs.
    pub best_test_accuracy: f64,
    /// With several seeds: the mean of the final test accuracies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_accuracy_mean: Option<f64>,
    /// With several seeds: their sample standard deviation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_accuracy_std: Option<f64>,
    /// With several seeds: each seed's final test accuracy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_accuracy_per_seed: Option<Vec<f64>>,
}

/// One stage's result.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct StageSummary {
    /// Stage name.
    pub name: String,
    /// Epochs run.
    pub epochs: usize,
    /// Wall time of the stage, compile and evaluation included.
    pub wall_seconds: f64,
    /// Training samples per second.
    pub samples_per_second: f64,
    /// Models trained.
    pub models: Vec<ModelResult>,
}

/// `summary.json`.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Summary {
    /// The adapter.
    pub adapter: AdapterSummary,
    /// Where the data came from.
    pub data: String,
    /// Stages in order.
    pub stages: Vec<StageSummary>,
}

/// A configuration's training and test sets.
pub type LoadedData = (Dataset, Dataset);

/// The training and test sets for a configuration.
pub fn load_data(config: &Config, opts: &RunOptions) -> Result<LoadedData> {
    let d = &config.data;
    let synthetic = |note: &str| {
        let mut train = data::synthetic(d.train_limit.unwrap_or(6000), config.seed);
        let mut test = data::synthetic(d.test_limit.unwrap_or(1000), config.seed.wrapping_add(1));
        train.source = format!("{}{note}", train.source);
        test.source = format!("{}{note}", test.source);
        (train, test)
    };
    let (train, test) = match d.dataset {
        DatasetKind::Synthetic => synthetic(""),
        DatasetKind::FashionMnist => {
            let dir = opts
                .data_dir
                .clone()
                .or_else(|| std::env::var_os("WGDISTILL_DATA").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(data::DEBIAN_FASHION_MNIST));
            match (
                data::load_idx_split(&dir, true),
                data::load_idx_split(&dir, false),
            ) {
                (Ok(train), Ok(test)) => (train, test),
                (Err(e), _) | (_, Err(e)) => {
                    if !opts.fallback_to_synthetic {
                        return Err(input_error(
                            "data.dataset",
                            format!(
                                "Fashion-MNIST not found ({e}); install it with `apt-get install dataset-fashion-mnist` or pass --data DIR"
                            ),
                        ));
                    }
                    synthetic(&format!(" (Fashion-MNIST not found in {})", dir.display()))
                }
            }
        }
    };
    Ok((train.truncated(d.train_limit), test.truncated(d.test_limit)))
}

fn optimizer(o: &OptimizerConfig) -> OptimizerSpec {
    match o.kind {
        OptimizerKind::Sgd => OptimizerSpec::Sgd(Sgd {
            lr: o.lr,
            momentum: o.momentum,
            dampening: 0.0,
            weight_decay: o.weight_decay.unwrap_or(0.0),
            nesterov: o.nesterov,
        }),
        OptimizerKind::Adamw => {
            let [beta1, beta2] = o.betas.unwrap_or([0.9, 0.999]);
            OptimizerSpec::AdamW(AdamW {
                lr: o.lr,
                beta1,
                beta2,
                eps: o.eps.unwrap_or(1e-8),
                weight_decay: o.weight_decay.unwrap_or(0.01),
            })
        }
    }
}

/// The learning rate of `epoch` (0-based) of `epochs`.
pub fn learning_rate(o: &OptimizerConfig, epoch: usize, epochs: usize) -> f32 {
    let base = match o.schedule {
        ScheduleKind::Constant => o.lr,
        ScheduleKind::Step => {
            o.lr * o
                .gamma
                .unwrap_or(0.1)
                .powi((epoch / o.step_size.unwrap_or(30).max(1)) as i32)
        }
        ScheduleKind::Cosine => {
            o.lr * 0.5 * (1.0 + (std::f32::consts::PI * epoch as f32 / epochs.max(1) as f32).cos())
        }
    };
    if epoch < o.warmup_epochs {
        base * (epoch + 1) as f32 / (o.warmup_epochs + 1) as f32
    } else {
        base
    }
}

/// Test accuracy of a model: batches of the compiled size, the last one padded. Compiles an
/// evaluation step; [`accuracy`] reuses one.
pub fn evaluate(gpu: &Gpu, graph: &Graph, weights: &Weights, test: &Dataset) -> Result<f64> {
    accuracy(gpu, &EvalStep::compile(gpu, graph, weights)?, graph, test)
}

/// Test accuracy with a compiled evaluation step of `graph`.
pub fn accuracy(gpu: &Gpu, eval: &EvalStep, graph: &Graph, test: &Dataset) -> Result<f64> {
    let batch = graph.shape(graph.find("x").expect("an input x"))[0];
    let len = test.sample_len();
    let classes = graph.shape(graph.output.expect("an output"))[1];
    let mut correct = 0usize;
    let mut x = vec![0.0f32; batch * len];
    for start in (0..test.len()).step_by(batch) {
        let n = batch.min(test.len() - start);
        x[..n * len].copy_from_slice(&test.images[start * len..(start + n) * len]);
        x[n * len..].fill(0.0);
        let logits = eval.run(gpu, &x)?;
        for (row, &label) in logits
            .chunks(classes)
            .take(n)
            .zip(&test.labels[start..start + n])
        {
            let pred = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |p| p.0);
            correct += usize::from(pred as i32 == label);
        }
    }
    Ok(correct as f64 / test.len().max(1) as f64)
}

fn seed_of(config_seed: u64, name: &str) -> u64 {
    name.bytes()
        .fold(config_seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
}

fn append_line(path: &Path, line: &str) -> Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| writeln!(f, "{line}"))
        .map_err(|e| input_error(path.display().to_string(), format!("cannot write ({e})")))
}

/// A progress bar for one epoch: hidden unless asked for and standard error is a terminal.
fn progress_bar(show: bool, batches: usize, prefix: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(batches as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{prefix:>22} [{bar:30}] {pos}/{len} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(prefix.to_string());
    bar
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| input_error(path.display().to_string(), e.to_string()))?;
    io::write_atomic(path, text.as_bytes())
}

/// Runs every stage of a checked configuration on `gpu`; `log` receives one line per epoch.
/// After every epoch the trained model, the step's optimizer state and `progress.json` are
/// written, so that [`RunOptions::resume`] continues exactly where an interrupted run stopped.
pub fn run(
    gpu: &Gpu,
    config: &Config,
    opts: &RunOptions,
    train: &Dataset,
    test: &Dataset,
    log: &mut dyn FnMut(&str),
) -> Result<Summary> {
    let out = &opts.out;
    let ckpt_dir = out.join("checkpoints");
    std::fs::create_dir_all(&ckpt_dir).map_err(|e| {
        input_error(
            ckpt_dir.display().to_string(),
            format!("cannot create ({e})"),
        )
    })?;
    let metrics = out.join("metrics.jsonl");
    let progress_path = out.join("progress.json");
    let resumed: Option<Progress> = if opts.resume {
        let text = std::fs::read_to_string(&progress_path).map_err(|e| {
            input_error(
                progress_path.display().to_string(),
                format!("nothing to resume ({e})"),
            )
        })?;
        Some(
            serde_json::from_str(&text)
                .map_err(|e| input_error(progress_path.display().to_string(), e.to_string()))?,
        )
    } else {
        let _ = std::fs::remove_file(&metrics);
        None
    };
    let batch = config.data.batch_size;
    let tail = train.len() % batch;
    let [c, h, w] = train.shape;
    let input = |b: usize| [b, c, h, w];
    let classes = train.classes;
    let checkpoint = |name: &str| ckpt_dir.join(format!("{name}.safetensors"));

    // Models loaded from checkpoints, then each stage's trained model, by name.
    let mut weights: BTreeMap<String, Weights> = BTreeMap::new();
    for (name, m) in &config.models {
        if let Some(file) = m.checkpoint() {
            let graph = m.graph(input(batch), classes)?;
            let host = io::read_safetensors(Path::new(file))?;
            weights.insert(name.clone(), Weights::load(gpu, &graph, file, &host)?);
        }
    }
    let mut stages: Vec<StageSummary> = Vec::new();
    for (si, stage) in config.stages.iter().enumerate() {
        let names = &stage.train;
        let graphs: Vec<Graph> = names
            .iter()
            .map(|n| config.models[n].graph(input(batch), classes))
            .collect::<Result<_>>()?;
        let resuming = resumed.as_ref().filter(|p| p.stage >= si);
        let load =
            |weights: &mut BTreeMap<String, Weights>, name: &str, graph: &Graph| -> Result<()> {
                let path = checkpoint(name);
                let host = io::read_safetensors(&path)?;
                weights.insert(
                    name.to_string(),
                    Weights::load(gpu, graph, &path.display().to_string(), &host)?,
                );
                Ok(())
            };
        if let Some(p) = resuming.filter(|p| p.stage > si) {
            // Completed before the interruption: its models are in their checkpoints.
            for (name, graph) in names.iter().zip(&graphs) {
                load(&mut weights, name, graph)?;
            }
            stages.push(p.done[si].clone());
            continue;
        }
        let started = Instant::now();
        // A stage resumed after some epochs goes on from its checkpoints; one whose first epoch
        // had not finished (progress written as the previous stage ended) starts afresh.
        let (start_epoch, mut best, mut accuracy) = match resuming.filter(|p| p.epoch > 0) {
            Some(p) => {
                for (name, graph) in names.iter().zip(&graphs) {
                    load(&mut weights, name, graph)?;
                }
                (p.epoch, p.best.clone(), p.accuracy.clone())
            }
            None => (0, vec![0.0; names.len()], vec![0.0; names.len()]),
        };
        let model_weights: Vec<Weights> = names
            .iter()
            .zip(&graphs)
            .map(|(name, graph)| match weights.get(name) {
                Some(w) => Ok(w.clone()),
                None => Weights::init(gpu, graph, seed_of(config.seed, name)),
            })
            .collect::<Result<_>>()?;
        // One model as it is; several (online distillation) as one graph of peers.
        let student_at = |b: usize| -> Result<Graph> {
            if let [n] = names.as_slice() {
                return config.models[n].graph(input(b), classes);
            }
            let gs: Vec<Graph> = names
                .iter()
                .map(|n| config.models[n].graph(input(b), classes))
                .collect::<Result<_>>()?;
            Graph::peers(
                &names
                    .iter()
                    .map(String::as_str)
                    .zip(&gs)
                    .collect::<Vec<_>>(),
            )
        };
        // Self-distillation's heads: part of the trained graph, saved apart from the model.
        let heads: Vec<&str> = stage.heads.iter().map(String::as_str).collect();
        let with_heads = |g: Graph| -> Result<Graph> {
            if heads.is_empty() {
                Ok(g)
            } else {
                g.with_heads(&heads, classes)
            }
        };
        let graph = with_heads(student_at(batch)?)?;
        let heads_path = ckpt_dir.join(format!("{}.heads.safetensors", names.join("+")));
        let head_weights = if heads.is_empty() {
            None
        } else {
            let fresh =
                Weights::init(gpu, &graph, seed_of(config.seed, &stage.name))?.with_prefix("aux.");
            Some(if start_epoch > 0 {
                let what = heads_path.display().to_string();
                fresh.reload(gpu, &what, &io::read_safetensors(&heads_path)?)?
            } else {
                fresh
            })
        };
        let student_w = match (names.as_slice(), &head_weights) {
            ([_], Some(h)) => model_weights[0].merged(h),
            ([_], None) => model_weights[0].clone(),
            (_, _) => Weights::ensemble(
                &names
                    .iter()
                    .map(String::as_str)
                    .zip(&model_weights)
                    .collect::<Vec<_>>(),
            ),
        };
        // One teacher as it is; several as one ensemble whose logits are their KD mixture.
        let teacher_at = |b: usize| -> Result<Graph> {
            if let [t] = stage.teachers.as_slice() {
                return config.models[t].graph(input(b), classes);
            }
            let graphs: Vec<Graph> = stage
                .teachers
                .iter()
                .map(|t| config.models[t].graph(input(b), classes))
                .collect::<Result<_>>()?;
            let parts: Vec<(&str, &Graph)> = stage
                .teachers
                .iter()
                .map(String::as_str)
                .zip(&graphs)
                .collect();
            let temperature = stage
                .kd_temperature()
                .map_err(|m| input_error(&stage.name, m))?;
            Graph::ensemble(&parts, &stage.teacher_mixture(), temperature)
        };
        let teacher = if stage.teachers.is_empty() {
            None
        } else {
            let w = match stage.teachers.as_slice() {
                [t] => weights[t].clone(),
                many => Weights::ensemble(
                    &many
                        .iter()
                        .map(|t| (t.as_str(), &weights[t]))
                        .collect::<Vec<_>>(),
                ),
            };
            Some((teacher_at(batch)?, teacher_at(tail.max(2))?, w))
        };
        let loss_terms = stage.method()?.terms(stage)?;
        // With the cache, the step replays the teacher's stored outputs instead of running it.
        let cached = match &teacher {
            Some((tg, _, tw)) if config.data.teacher_cache => {
                let taps = teacher_taps(&loss_terms);
                let tap_refs: Vec<&str> = taps.iter().map(String::as_str).collect();
                let root = opts
                    .teacher_cache
                    .clone()
                    .unwrap_or_else(|| default_teacher_cache(out));
                let key = teacher_cache::key(gpu, tg, tw, &tap_refs, train)?;
                let outputs =
                    teacher_cache::load_or_compute(gpu, &root, &key, tg, tw, &tap_refs, train)?;
                log(&format!(
                    "{}: teacher outputs {} {} ({:.1} s)",
                    stage.name,
                    if outputs.reused {
                        "read from"
                    } else {
                        "computed into"
                    },
                    outputs.dir.display(),
                    outputs.seconds
                ));
                let replay_at = |b: usize| -> Result<Graph> {
                    let shapes: Vec<Vec<usize>> = outputs
                        .taps
                        .iter()
                        .map(|(_, s)| std::iter::once(b).chain(s.iter().copied()).collect())
                        .collect();
                    Graph::replay(
                        &outputs
                            .taps
                            .iter()
                            .zip(&shapes)
                            .map(|((n, _), s)| (n.as_str(), s.as_slice()))
                            .collect::<Vec<_>>(),
                    )
                };
                let (g, g_tail) = (replay_at(batch)?, replay_at(tail.max(2))?);
                let no_weights = Weights::init(gpu, &g, 0)?;
                Some((outputs, g, g_tail, no_weights))
            }
            _ => None,
        };
        let step_teacher = match (&cached, &teacher) {
            (Some((_, g, g_tail, w)), _) => Some((g, g_tail, w)),
            (None, Some((g, g_tail, w))) => Some((g, g_tail, w)),
            (None, None) => None,
        };
        let spec = StepSpec {
            student: &graph,
            student_weights: &student_w,
            teacher: step_teacher.map(|(g, _, w)| (g, w)),
            losses: loss_terms.iter().map(|(_, l)| l.clone()).collect(),
            optimizer: optimizer(&stage.optimizer),
            seed: seed_of(config.seed, &stage.name),
        };
        let mut step = TrainStep::compile(gpu, &spec)?;
        let state_path = ckpt_dir.join(format!("{}.train-state.safetensors", names.join("+")));
        if start_epoch > 0 {
            step.load_state(
                gpu,
                &state_path.display().to_string(),
                &io::read_safetensors(&state_path)?,
            )?;
        }
        // The last, smaller batch gets a sibling step sharing the optimizer state (a batch of one
        // is dropped: batch statistics need two samples).
        let tail_graph = if tail >= 2 {
            Some(with_heads(student_at(tail)?)?)
        } else {
            None
        };
        let mut tail_step = match &tail_graph {
            Some(tg) => {
                let spec = StepSpec {
                    student: tg,
                    teacher: step_teacher.map(|(_, g, w)| (g, w)),
                    ..spec
                };
                Some(TrainStep::compile_sibling(gpu, &spec, &step)?)
            }
            None => None,
        };
        // Evaluation steps are compiled once per stage, not per epoch.
        let evals: Vec<EvalStep> = graphs
            .iter()
            .zip(&model_weights)
            .map(|(g, w)| EvalStep::compile(gpu, g, w))
            .collect::<Result<_>>()?;
        let (mut xb, mut yb, mut tb) = (Vec::new(), Vec::new(), Vec::new());
        let mut trained_samples = 0usize;
        for epoch in start_epoch..stage.epochs {
            if opts.stop_after == Some((si, epoch)) {
                return Err(input_error(
                    out.display().to_string(),
                    format!(
                        "interrupted before epoch {} of stage {}",
                        epoch + 1,
                        stage.name
                    ),
                ));
            }
            let epoch_start = Instant::now();
            let lr = learning_rate(&stage.optimizer, epoch, stage.epochs);
            for s in std::iter::once(&mut step).chain(tail_step.as_mut()) {
                s.set_learning_rate(gpu, lr);
                for (i, (source, l)) in loss_terms.iter().enumerate() {
                    let w = &stage.losses[*source];
                    let ramp = if w.warmup_epochs > 0 {
                        ((epoch + 1) as f32 / w.warmup_epochs as f32).min(1.0)
                    } else {
                        1.0
                    };
                    s.set_loss_weight(gpu, i, l.weight * ramp);
                }
            }
            let order = data::epoch_order(train.len(), config.seed ^ si as u64, epoch as u64);
            let bar = progress_bar(
                opts.progress,
                order.len().div_ceil(batch),
                &format!("{} {}/{}", stage.name, epoch + 1, stage.epochs),
            );
            let mut samples = 0;
            for (bi, idx) in order.chunks(batch).enumerate() {
                let augment = stage
                    .augment
                    .unwrap_or(config.data.augment)
                    .then_some((2, config.seed ^ ((epoch as u64) << 32) ^ bi as u64));
                data::fill_batch(train, idx, augment, &mut xb, &mut yb);
                if let Some((outputs, ..)) = &cached {
                    let target = match (idx.len() == batch, &tail_step) {
                        (true, _) => Some(&step),
                        (false, t) => t.as_ref(),
                    };
                    for (k, (tap, _)) in outputs.taps.iter().enumerate() {
                        outputs.gather(k, idx, &mut tb);
                        if let Some(s) = target {
                            s.write_teacher_input(gpu, tap, &tb)?;
                        }
                    }
                }
                match (idx.len() == batch, &tail_step) {
                    // Every tenth step also fetches its losses, collected later without a stall.
                    (true, _) if opts.progress && bi % 10 == 0 => {
                        step.run_fetching_losses(gpu, &xb, &yb)?;
                    }
                    (true, _) => step.run(gpu, &xb, &yb)?,
                    (false, Some(t)) => t.run(gpu, &xb, &yb)?,
                    (false, None) => continue,
                }
                samples += idx.len();
                if opts.progress {
                    if let Some(losses) = step.poll_losses(gpu)? {
                        let total: f32 = losses.iter().map(|(_, w, l)| w * l).sum();
                        let rate = samples as f64 / epoch_start.elapsed().as_secs_f64();
                        let acc = if epoch > 0 {
                            format!(", test accuracy {:.4} after epoch {epoch}", accuracy[0])
                        } else {
                            String::new()
                        };
                        bar.set_message(format!("loss {total:.4}, {rate:.0} samples/s{acc}"));
                    }
                }
                bar.inc(1);
            }
            bar.finish_and_clear();
            let loss = step.total_loss(gpu)?;
            let train_seconds = epoch_start.elapsed().as_secs_f64();
            trained_samples += samples;
            let steps = step.steps_taken(gpu)?;
            for (k, ((name, g), w)) in names.iter().zip(&graphs).zip(&model_weights).enumerate() {
                accuracy[k] = self::accuracy(gpu, &evals[k], g, test)?;
                best[k] = best[k].max(accuracy[k]);
                io::write_safetensors(&checkpoint(name), &export(gpu, g, w, steps)?)?;
                let line = serde_json::json!({
                    "stage": stage.name, "model": name, "epoch": epoch + 1, "lr": lr, "train_loss": loss,
                    "test_accuracy": accuracy[k], "seconds": train_seconds, "samples_per_second": samples as f64 / train_seconds,
                });
                append_line(&metrics, &line.to_string())?;
            }
            io::write_safetensors(&state_path, &step.save_state(gpu)?)?;
            if let Some(h) = &head_weights {
                io::write_safetensors(&heads_path, &h.to_host(gpu)?)?;
            }
            let progress = Progress {
                stage: si,
                epoch: epoch + 1,
                best: best.clone(),
                accuracy: accuracy.clone(),
                done: stages.clone(),
            };
            write_json(&progress_path, &progress)?;
            super::curves::write_curves(out)?;
            if !loss.is_finite() {
                log(&format!(
                    "{}: the loss is not finite: training diverged (lower the learning rate or the loss weights)",
                    stage.name
                ));
            }
            let accs: Vec<String> = accuracy.iter().map(|a| format!("{a:.4}")).collect();
            log(&format!(
                "{} epoch {}/{}: loss {loss:.4}, test accuracy {}, {:.0} samples/s",
                stage.name,
                epoch + 1,
                stage.epochs,
                accs.join(" / "),
                samples as f64 / train_seconds
            ));
        }
        let wall = started.elapsed().as_secs_f64();
        stages.push(StageSummary {
            name: stage.name.clone(),
            epochs: stage.epochs,
            wall_seconds: wall,
            samples_per_second: trained_samples as f64 / wall,
            models: names
                .iter()
                .enumerate()
                .map(|(k, name)| ModelResult {
                    model: name.clone(),
                    test_accuracy: accuracy[k],
                    best_test_accuracy: best[k],
                    test_accuracy_mean: None,
                    test_accuracy_std: None,
                    test_accuracy_per_seed: None,
                })
                .collect(),
        });
        write_json(
            &progress_path,
            &Progress {
                stage: si + 1,
                epoch: 0,
                best: vec![],
                accuracy: vec![],
                done: stages.clone(),
            },
        )?;
        for (name, w) in names.iter().zip(model_weights) {
            weights.insert(name.clone(), w);
        }
    }
    let caps = gpu.caps();
    let summary = Summary {
        adapter: AdapterSummary {
            name: caps.name.clone(),
            backend: caps.backend.to_string(),
            driver: format!("{} {}", caps.driver, caps.driver_info)
                .trim()
                .to_string(),
        },
        data: train.source.clone(),
        stages,
    };
    write_summary(out, &summary)?;
    Ok(summary)
}

/// Writes `summary.json` into `out` (through a temporary file).
pub fn write_summary(out: &Path, summary: &Summary) -> Result<()> {
    let text = serde_json::to_string_pretty(summary)
        .map_err(|e| input_error("summary.json", e.to_string()))?;
    io::write_atomic(&out.join("summary.json"), text.as_bytes())
}

/// Combines the summaries of runs that differ only in their seed: each model gets the mean,
/// sample standard deviation and per-seed values of its final test accuracy; times are means.
pub fn aggregate(runs: &[Summary]) -> Summary {
    let mut out = runs[0].clone();
    let n = runs.len() as f64;
    for (i, stage) in out.stages.iter_mut().enumerate() {
        stage.wall_seconds = runs.iter().map(|r| r.stages[i].wall_seconds).sum::<f64>() / n;
        stage.samples_per_second = runs
            .iter()
            .map(|r| r.stages[i].samples_per_second)
            .sum::<f64>()
            / n;
        for (j, m) in stage.models.iter_mut().enumerate() {
            let values: Vec<f64> = runs
                .iter()
                .map(|r| r.stages[i].models[j].test_accuracy)
                .collect();
            let mean = values.iter().sum::<f64>() / n;
            let var = if values.len() > 1 {
                values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
            } else {
                0.0
            };
            m.test_accuracy = mean;
            m.best_test_accuracy = runs
                .iter()
                .map(|r| r.stages[i].models[j].best_test_accuracy)
                .fold(0.0, f64::max);
            m.test_accuracy_mean = Some(mean);
            m.test_accuracy_std = Some(var.sqrt());
            m.test_accuracy_per_seed = Some(values);
        }
    }
    out
}
