//! Running a configuration: its data, then every stage (planned by [`stage`](super::stage),
//! trained epoch by epoch by [`epoch`](super::epoch)), with the run folder written after every
//! epoch ([`checkpoint`](super::checkpoint)) and `summary.json` at the end
//! ([`summary`](super::summary)); several seeds by [`seeds`](super::seeds).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::Result;
use crate::data::{self, Dataset};
use crate::error::input_error;
use crate::gpu::Gpu;
use crate::graph::{EvalStep, Graph, Weights};
use crate::io;

use super::checkpoint::{EpochFiles, Progress, RunFolder, export};
use super::config::{Config, DatasetKind, StageKind};
use super::data_free::load_synthetic;
use super::epoch::train_epoch;
use super::prune::prune_for_epoch;
use super::stage::{Shapes, StagePlan, learning_rate, with_bank_size};
use super::summary::{AdapterSummary, StageSummary, Summary};

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
    /// With `resume`, the configuration may have changed since the run began: keep the finished
    /// stages whose fingerprint is unchanged and train the others (else such a run is refused).
    pub update: bool,
    /// Stop (as if interrupted) after this many epochs of this stage: (stage index, epochs).
    /// For testing resumption.
    pub stop_after: Option<(usize, usize)>,
    /// Show a progress bar per epoch (on standard error, and only when it is a terminal).
    pub progress: bool,
    /// Root of the teacher-output cache (`data.teacher_cache`); `None` picks
    /// [`default_teacher_cache`].
    pub teacher_cache: Option<PathBuf>,
    /// Fail the run's `n`th file write (1-based) as a full disk would. For testing that a
    /// crash at any write costs at most the epoch in progress.
    pub fail_write: Option<usize>,
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
            update: false,
            stop_after: None,
            progress: false,
            teacher_cache: None,
            fail_write: None,
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

/// Test accuracy of a model: batches of the compiled size, the last one padded. Compiles an
/// evaluation step; [`accuracy`] reuses one.
pub fn evaluate(gpu: &Gpu, graph: &Graph, weights: &Weights, test: &Dataset) -> Result<f64> {
    accuracy(gpu, &EvalStep::compile(gpu, graph, weights)?, graph, test)
}

/// Test accuracy with a compiled evaluation step of `graph`.
pub fn accuracy(gpu: &Gpu, eval: &EvalStep, graph: &Graph, test: &Dataset) -> Result<f64> {
    let (Some(x), Some(out)) = (graph.find("x"), graph.output) else {
        return Err(input_error(
            "evaluation",
            "the model needs an input x and an output",
        ));
    };
    let (batch, classes) = (graph.shape(x)[0], graph.shape(out)[1]);
    accuracy_with(test, batch, classes, |x| eval.run(gpu, x))
}

/// The logits of every image of `test`, row by row, where `logits` maps a batch of `batch`
/// images (the last one padded with zeros) to `batch × classes` logits.
pub fn logits_with(
    test: &Dataset,
    batch: usize,
    classes: usize,
    mut logits: impl FnMut(&[f32]) -> Result<Vec<f32>>,
) -> Result<Vec<f32>> {
    let len = test.sample_len();
    let mut out = Vec::with_capacity(test.len() * classes);
    let mut x = vec![0.0f32; batch * len];
    for start in (0..test.len()).step_by(batch) {
        let n = batch.min(test.len() - start);
        x[..n * len].copy_from_slice(&test.images[start * len..(start + n) * len]);
        x[n * len..].fill(0.0);
        out.extend_from_slice(&logits(&x)?[..n * classes]);
    }
    Ok(out)
}

/// The class a row of logits predicts: the index of its largest value, the first on ties (as
/// PyTorch's `argmax`); 0 for an empty row.
pub fn predicted_class(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

/// The share of `test` whose largest logit is its label, where `logits` maps a batch of `batch`
/// images (the last one padded with zeros) to `batch × classes` logits.
pub fn accuracy_with(
    test: &Dataset,
    batch: usize,
    classes: usize,
    logits: impl FnMut(&[f32]) -> Result<Vec<f32>>,
) -> Result<f64> {
    let all = logits_with(test, batch, classes, logits)?;
    let mut correct = 0usize;
    for (row, &label) in all.chunks(classes).zip(&test.labels) {
        correct += usize::from(predicted_class(row) as i32 == label);
    }
    Ok(correct as f64 / test.len().max(1) as f64)
}

/// Runs every stage of a checked configuration on `gpu`; `log` receives one line per epoch.
/// After every epoch the trained models, the step's state and `progress.json` are written, so
/// that [`RunOptions::resume`] continues exactly where an interrupted run stopped.
pub fn run(
    gpu: &Gpu,
    config: &Config,
    opts: &RunOptions,
    train: &Dataset,
    test: &Dataset,
    log: &mut dyn FnMut(&str),
) -> Result<Summary> {
    let folder = RunFolder::create(&opts.out)?.failing_write(opts.fail_write);
    let _lock = folder.lock()?;
    let resumed = if opts.resume {
        let progress = folder.read_progress(config, opts.update)?;
        folder.trim_metrics(config, &progress)?;
        Some(progress)
    } else {
        folder.clear_metrics();
        None
    };
    let shapes = Shapes::of(config, train);
    // Models loaded from checkpoints, then each stage's trained models, by name.
    let mut models: BTreeMap<String, Weights> = BTreeMap::new();
    for (name, m) in &config.models {
        if let Some(file) = m.checkpoint() {
            let graph = m.graph(shapes.input(shapes.batch), shapes.classes)?;
            let host = io::read_safetensors(Path::new(file))?;
            models.insert(name.clone(), Weights::load(gpu, &graph, file, &host)?);
        }
    }
    // Memory banks hold a row per training sample: their sizes are checked before any stage
    // trains (a stage on a synthesised set: against its size).
    for stage in &config.stages {
        let n = match stage
            .transfer
            .as_ref()
            .and_then(|t| synthesis_size(config, t))
        {
            Some(n) => n,
            None => train.len(),
        };
        with_bank_size(stage.method(config)?.terms(stage)?, &stage.name, n)?;
    }
    let mut stages: Vec<StageSummary> = Vec::new();
    // The transfer sets synthesised so far, by stage name.
    let mut synthesised: BTreeMap<String, Dataset> = BTreeMap::new();
    let finished = resumed.as_ref().map(|p| p.finished(config));
    let in_progress = resumed.as_ref().and_then(|p| p.in_progress(config));
    if let Some(p) = resumed
        .as_ref()
        .filter(|p| p.config != config.fingerprint())
    {
        let kept = finished.iter().flatten().filter(|&&f| f).count();
        log(&format!(
            "the configuration changed since the run began: {kept} of its {} finished stages \
             unchanged and kept; the others train",
            p.done.len()
        ));
    }
    // Whether a stage has trained in this run: the finished stages kept after it are then
    // recorded again, so that progress.json counts them (a later `--update` keeps them too).
    let mut trained = false;
    for (index, stage) in config.stages.iter().enumerate() {
        let done_before = resumed
            .as_ref()
            .filter(|_| finished.as_ref().is_some_and(|f| f[index]));
        if let Some(p) = done_before {
            // Completed before the interruption: its models are in their checkpoints, its
            // synthesised set in its file.
            for name in &stage.train {
                let graph =
                    config.models[name].graph(shapes.input(shapes.batch), shapes.classes)?;
                let weights = folder.load_model(gpu, index, stage.total_epochs(), name, &graph)?;
                models.insert(name.clone(), weights);
            }
            if stage.kind == StageKind::DeepInversion {
                let set = load_synthetic(&opts.out, &stage.name, shapes.classes)?;
                synthesised.insert(stage.name.clone(), set);
            }
            stages.push(p.done[index].clone());
            if trained {
                folder.write_progress(&Progress::between_stages(config, index + 1, &stages))?;
            }
            continue;
        }
        // The stage's training set: the data set's, or a synthesised one.
        let stage_train = match &stage.transfer {
            Some(source) => synthesised.get(source).ok_or_else(|| {
                input_error(
                    format!("stage '{}': transfer", stage.name),
                    format!("no set was synthesised by a stage '{source}'"),
                )
            })?,
            None => train,
        };
        let samples = super::stage::training_pool(stage, stage_train)?
            .map_or(stage_train.len(), |pool| pool.len());
        let stage_shapes = Shapes::of_epoch(config, stage_train, samples);
        let run = StageRun {
            gpu,
            config,
            opts,
            folder: &folder,
            shapes: &stage_shapes,
        };
        // A stage whose first epoch had not finished starts afresh.
        let resume = resumed.as_ref().filter(|_| in_progress == Some(index));
        let summary = match stage.kind {
            StageKind::Train => {
                run.train(index, resume, &mut models, &stages, stage_train, test, log)?
            }
            StageKind::Dfad => run.train_dfad(index, resume, &mut models, &stages, test, log)?,
            StageKind::Lifelong => {
                run.train_lifelong(index, resume, &mut models, &stages, stage_train, test, log)?
            }
            StageKind::DeepInversion => {
                let (summary, set) = run.synthesise(index, &models, log)?;
                synthesised.insert(stage.name.clone(), set);
                summary
            }
        };
        stages.push(summary);
        trained = true;
        folder.write_progress(&Progress::between_stages(config, index + 1, &stages))?;
    }
    let summary = Summary {
        adapter: AdapterSummary::of(gpu),
        data: train.source.clone(),
        stages,
    };
    folder.write_json(&opts.out.join("summary.json"), &summary)?;
    Ok(summary)
}

/// The size of the set `deep_inversion` stage `name` synthesises.
fn synthesis_size(config: &Config, name: &str) -> Option<usize> {
    config
        .stages
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| s.synthesis.as_ref())
        .map(|s| s.images)
}

/// What every stage of a run shares, and the shapes of the stage's data.
pub(super) struct StageRun<'a> {
    pub(super) gpu: &'a Gpu,
    pub(super) config: &'a Config,
    pub(super) opts: &'a RunOptions,
    pub(super) folder: &'a RunFolder,
    pub(super) shapes: &'a Shapes,
}

impl StageRun<'_> {
    /// Writes a trained quantisation-aware model's int8 export beside its checkpoint and returns
    /// the export's test accuracy with the integer kernels. Derived from the stage's last epoch,
    /// it is written again whenever the stage ends (a resumed run included).
    fn export_int8(
        &self,
        gpu: &Gpu,
        name: &str,
        graph: &crate::graph::Graph,
        weights: &Weights,
        test: &Dataset,
    ) -> Result<f64> {
        use crate::graph::int8::{Int8Program, export};
        let tensors = export(graph, &weights.to_host(gpu)?)?;
        let path = self.folder.int8_model(name);
        self.folder.write_tensors(&path, &tensors)?;
        let what = path.display().to_string();
        let dot = crate::kernels::int8::DotPath::for_gpu(gpu);
        let program = Int8Program::compile(gpu, graph, &tensors, &what, dot)?;
        let (batch, classes) = (program.batch(), program.classes());
        accuracy_with(test, batch, classes, |x| program.run(gpu, x))
    }

    /// Trains stage `index` to its last epoch, writing the folder after each, and leaves its
    /// trained models in `models`.
    #[allow(clippy::too_many_arguments)]
    fn train(
        &self,
        index: usize,
        resume: Option<&Progress>,
        models: &mut BTreeMap<String, Weights>,
        done: &[StageSummary],
        train: &Dataset,
        test: &Dataset,
        log: &mut dyn FnMut(&str),
    ) -> Result<StageSummary> {
        let (gpu, config, opts) = (self.gpu, self.config, self.opts);
        let started = Instant::now();
        let stage = &config.stages[index];
        let mut plan = StagePlan::compile(
            gpu,
            config,
            index,
            models,
            resume,
            opts,
            self.folder,
            self.shapes,
            train,
            log,
        )?;
        let mut trained = 0usize;
        for epoch in plan.start_epoch..stage.epochs {
            if opts.stop_after == Some((index, epoch)) {
                return Err(input_error(
                    opts.out.display().to_string(),
                    format!(
                        "interrupted before epoch {} of stage {}",
                        epoch + 1,
                        stage.name
                    ),
                ));
            }
            let lr = learning_rate(stage.optimizer()?, epoch, stage.epochs);
            let sparsity = match &stage.prune {
                Some(p) => Some(prune_for_epoch(
                    gpu,
                    p,
                    &plan.step,
                    &plan.weights[0],
                    epoch,
                    stage.epochs,
                )?),
                None => None,
            };
            let stats = train_epoch(gpu, config, epoch, lr, &mut plan, train, opts)?;
            trained += stats.samples;
            let steps = plan.step.steps_taken(gpu)?;
            let mut exports = Vec::new();
            let mut metrics = Vec::new();
            let tested = stage.tests_after(epoch + 1);
            for k in 0..stage.train.len() {
                if tested {
                    plan.accuracy[k] = accuracy(gpu, &plan.evals[k], &plan.graphs[k], test)?;
                    plan.best[k] = plan.best[k].max(plan.accuracy[k]);
                }
                let name = &stage.train[k];
                exports.push((
                    name.clone(),
                    export(gpu, &plan.graphs[k], &plan.weights[k], steps)?,
                ));
                let mut line = serde_json::json!({
                    "stage": stage.name, "model": name, "epoch": epoch + 1, "lr": lr, "train_loss": stats.loss, "train_loss_mean": stats.mean_loss,
                    "seconds": stats.seconds, "samples": stats.samples, "samples_per_second": stats.samples as f64 / stats.seconds,
                });
                if tested {
                    line["test_accuracy"] = plan.accuracy[k].into();
                }
                if let Some(s) = sparsity {
                    line["sparsity"] = s.into();
                }
                if let Some([real, fake]) = stats.discriminator {
                    line["discriminator_loss_real"] = real.into();
                    line["discriminator_loss_fake"] = fake.into();
                }
                metrics.push(line);
            }
            let files = EpochFiles {
                models: exports,
                state: (plan.key(), plan.step.save_state(gpu)?),
                heads: plan.heads.as_ref().map(|h| h.to_host(gpu)).transpose()?,
                metrics,
                progress: Progress::after_epoch(
                    config,
                    index,
                    epoch + 1,
                    (plan.best.clone(), plan.accuracy.clone()),
                    done,
                ),
            };
            self.folder.commit_epoch(index, epoch + 1, &files)?;
            let accs: Vec<String> = match tested {
                true => plan.accuracy.iter().map(|a| format!("{a:.4}")).collect(),
                false => vec!["not measured".into()],
            };
            log(&format!(
                "{} epoch {}/{}: loss {:.4}, test accuracy {}, {:.0} samples/s",
                stage.name,
                epoch + 1,
                stage.epochs,
                stats.loss,
                accs.join(" / "),
                stats.samples as f64 / stats.seconds
            ));
        }
        if plan.start_epoch == stage.epochs {
            // Resumed after the last epoch was recorded: its exports may not all have been
            // written before the interruption.
            let steps = plan.step.steps_taken(gpu)?;
            let exports = (0..stage.train.len())
                .map(|k| {
                    let e = export(gpu, &plan.graphs[k], &plan.weights[k], steps)?;
                    Ok((stage.train[k].clone(), e))
                })
                .collect::<Result<Vec<_>>>()?;
            let heads = plan.heads.as_ref().map(|h| h.to_host(gpu)).transpose()?;
            let key = plan.key();
            self.folder
                .rewrite_exports(&exports, heads.as_ref().map(|h| (key.as_str(), h)))?;
        }
        let mut summary = plan.summary(started.elapsed().as_secs_f64(), trained);
        if stage.prune.is_some() {
            let mut params = BTreeMap::new();
            for name in plan.step.masked() {
                if let Some(t) = plan.weights[0].get(name) {
                    params.insert(name.to_string(), gpu.read::<f32>(t)?);
                }
            }
            summary.models[0].sparsity = Some(super::prune::report(&params));
        }
        for (k, name) in stage.train.iter().enumerate() {
            if config.models[name].int8() {
                let acc = self.export_int8(gpu, name, &plan.graphs[k], &plan.weights[k], test)?;
                summary.models[k].int8_test_accuracy = Some(acc);
                log(&format!(
                    "{} {name}: int8 export {}, test accuracy {acc:.4}",
                    stage.name,
                    self.folder.int8_model(name).display()
                ));
            }
        }
        for (k, name) in stage.train.iter().enumerate() {
            if let super::config::ModelConfig::One { channels, .. } = &config.models[name] {
                let accs = self.export_branches(gpu, name, channels, &plan.weights[k], test)?;
                let shown: Vec<String> = accs.iter().map(|a| format!("{a:.4}")).collect();
                log(&format!(
                    "{} {name}: branches alone, test accuracy {}",
                    stage.name,
                    shown.join(" / ")
                ));
                summary.models[k].branch_test_accuracy = Some(accs);
            }
        }
        for (name, w) in stage.train.iter().zip(plan.weights) {
            models.insert(name.clone(), w);
        }
        Ok(summary)
    }

    /// Writes each branch of a trained multi-branch model as the cnn it deploys as, beside its
    /// checkpoint, and returns their test accuracies. Written again whenever the stage ends.
    fn export_branches(
        &self,
        gpu: &Gpu,
        name: &str,
        channels: &[usize],
        weights: &Weights,
        test: &Dataset,
    ) -> Result<Vec<f64>> {
        let shapes = self.shapes;
        let graph = crate::models::cnn(shapes.input(shapes.batch), channels, shapes.classes)?;
        let host = weights.to_host(gpu)?;
        let mut accs = Vec::new();
        for b in 0..self.config.models[name].branches() {
            let tensors = crate::models::one_branch(&host, b);
            let path = self.folder.branch_model(name, b);
            self.folder.write_tensors(&path, &tensors)?;
            let branch = Weights::load(gpu, &graph, &path.display().to_string(), &tensors)?;
            accs.push(evaluate(gpu, &graph, &branch, test)?);
        }
        Ok(accs)
    }
}
