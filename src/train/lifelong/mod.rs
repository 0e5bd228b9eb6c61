//! Lifelong (continual) distillation: a `lifelong` stage trains its one model on the classes in
//! tasks (Fashion-MNIST's ten in five tasks of two, in label order), one task after another,
//! testing it after each on every task seen so far.
//!
//! The classifier grows with the tasks: its output keeps a row per class, but the label terms
//! read the logits through [`Graph::class_offsets`], which take the classes not yet seen out of
//! every softmax, so an unseen class's row gets no gradient until its task starts (weight decay
//! aside). The configured terms make the method:
//!
//! - **fine-tuning**: label terms only (the forgetting baseline);
//! - **Learning without Forgetting** (Li & Hoiem 2016): plus a logits term (`kd`), whose teacher
//!   is the model as the previous task left it (frozen) and which compares the old classes'
//!   logits only, on the new task's images;
//! - **iCaRL-style rehearsal** (Rebuffi et al. 2017): plus `memory` exemplars of the earlier
//!   tasks' training images, chosen by herding ([`herding`]), trained on with the new task's;
//!   the model's own classifier predicts (iCaRL's nearest-mean classifier is not used);
//! - **joint training** (`joint = true`): each task trains on the data of every task so far,
//!   the upper bound.
//!
//! Scores ([`scores`]): the accuracy on each task seen after each task, class-incremental
//! (argmax over every class seen) and task-incremental (argmax over the task's own classes), the
//! average over the tasks seen, and the average forgetting; in `summary.json` and drawn in
//! `lifelong.svg`. The stage commits after each task: an interrupted run resumes at the start of
//! the task it was training.

pub mod herding;
pub mod scores;

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::data::{self, Dataset};
use crate::error::input_error;
use crate::gpu::Gpu;
use crate::graph::{CLASS_OFF, EvalStep, Graph, LossSpec, Op, StepSpec, TrainStep, Weights};
use crate::io::{HostTensor, TensorMap};

use super::checkpoint::{EpochFiles, Progress, export};
use super::config::{Config, StageConfig};
use super::method::Fault;
use super::run::StageRun;
use super::stage::{learning_rate, optimizer, seed_of};
use super::summary::{ModelResult, StageSummary};
use herding::Memory;
use scores::{LifelongSummary, Scores};

/// `lifelong = { … }` of a `lifelong` stage.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LifelongConfig {
    /// Tasks the classes are split into, of equal size in label order.
    #[serde(default = "five")]
    pub tasks: usize,
    /// Exemplars of the earlier tasks' training images kept for rehearsal, chosen by herding and
    /// shared equally by the classes seen (0: none).
    #[serde(default)]
    pub memory: usize,
    /// Each task trains on the data of every task so far (the upper bound).
    #[serde(default)]
    pub joint: bool,
    /// The classes the label terms compare: `seen` (every class so far, the class-incremental
    /// convention) or `task` (the current task's only, as LwF's multi-head original).
    #[serde(default)]
    pub labels: LabelScope,
}

fn five() -> usize {
    5
}

impl Default for LifelongConfig {
    fn default() -> Self {
        Self {
            tasks: five(),
            memory: 0,
            joint: false,
            labels: LabelScope::Seen,
        }
    }
}

/// The classes a lifelong stage's label terms compare.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LabelScope {
    /// Every class seen so far.
    #[default]
    Seen,
    /// The current task's classes.
    Task,
}

/// The split of the classes into tasks: task `t` owns classes `t·k .. (t+1)·k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tasks {
    /// How many tasks.
    pub count: usize,
    /// Classes per task (k).
    pub per_task: usize,
}

impl Tasks {
    /// `classes` in `count` tasks, or why they do not split evenly.
    pub fn split(classes: usize, count: usize) -> std::result::Result<Tasks, String> {
        if count < 2 || !classes.is_multiple_of(count) {
            let divisors: Vec<String> = (2..=classes)
                .filter(|&d| classes.is_multiple_of(d))
                .map(|d| d.to_string())
                .collect();
            return Err(format!(
                "must split the {classes} classes into at least two tasks of equal size ({}), got {count}",
                divisors.join(", ")
            ));
        }
        Ok(Tasks {
            count,
            per_task: classes / count,
        })
    }

    /// The classes of task `t`.
    pub fn classes(&self, t: usize) -> Range<usize> {
        t * self.per_task..(t + 1) * self.per_task
    }

    /// The task a class belongs to.
    pub fn task_of(&self, class: usize) -> usize {
        class / self.per_task
    }

    /// The classes of tasks `0..t` (those learnt before task `t`).
    pub fn before(&self, t: usize) -> Range<usize> {
        0..t * self.per_task
    }
}

/// Offsets for [`Graph::class_offsets`] over `classes` that keep `kept` and take out the rest.
pub fn offsets(classes: usize, kept: Range<usize>) -> Vec<f32> {
    (0..classes)
        .map(|c| if kept.contains(&c) { 0.0 } else { CLASS_OFF })
        .collect()
}

/// The taps the terms read: the logits as the label terms see them, and the old classes'.
const LABEL_TAP: &str = "lifelong.labels";
const OLD_TAP: &str = "lifelong.old";
/// The classifier's input, which herding reads.
const FEATURE_TAP: &str = "lifelong.features";

/// A lifelong stage's settings (the defaults when the table is left out).
pub fn settings(stage: &StageConfig) -> LifelongConfig {
    stage.lifelong.clone().unwrap_or_default()
}

/// The model's classifier input: the `x` of the linear layer that makes its output.
fn classifier_input(graph: &Graph) -> Option<crate::graph::Value> {
    match &graph.nodes[graph.output?.0].op {
        Op::Linear { x, .. } => Some(*x),
        _ => None,
    }
}

/// Checks a `lifelong` stage whose models exist; errors name keys relative to the stage.
pub(super) fn check(
    stage: &StageConfig,
    graphs: &BTreeMap<&str, Graph>,
) -> std::result::Result<(), Fault> {
    let s = settings(stage);
    Tasks::split(crate::data::CLASSES, s.tasks).map_err(|m| ("lifelong.tasks".to_string(), m))?;
    let [model] = stage.train.as_slice() else {
        return Err((
            "train".into(),
            "a lifelong stage trains one model through its tasks".into(),
        ));
    };
    for (key, set) in [
        ("teachers", !stage.teachers.is_empty()),
        ("teacher_weights", stage.teacher_weights.is_some()),
        ("heads", !stage.heads.is_empty()),
    ] {
        if set {
            return Err((
                key.into(),
                "a lifelong stage's teacher is its own model as the previous task left it: no teachers or heads".into(),
            ));
        }
    }
    if stage.epochs == 0 {
        return Err(("epochs".into(), "must be at least 1 (per task)".into()));
    }
    stage.check_optimizer()?;
    if s.memory > 0 {
        if s.joint {
            return Err((
                "lifelong.memory".into(),
                "joint training already sees every task's data: no memory".into(),
            ));
        }
        if s.memory < crate::data::CLASSES {
            return Err((
                "lifelong.memory".into(),
                format!(
                    "keeps at least one exemplar per class: 0 or at least {}, got {}",
                    crate::data::CLASSES,
                    s.memory
                ),
            ));
        }
        if classifier_input(&graphs[model.as_str()]).is_none() {
            return Err((
                "lifelong.memory".into(),
                format!(
                    "herding reads the input of the model's classifier, and '{model}''s output is not a linear layer"
                ),
            ));
        }
    }
    if s.labels == LabelScope::Task && (s.memory > 0 || s.joint) {
        return Err((
            "lifelong.labels".into(),
            "\"task\" compares the current task's classes only, and rehearsal or joint training also shows earlier classes' labels: use \"seen\"".into(),
        ));
    }
    let mut labelled = false;
    for (j, term) in stage.losses.iter().enumerate() {
        let at = |key: &str| format!("losses[{j}]{key}");
        term.check_weight()
            .and_then(|()| term.check_ramp(false))
            .map_err(|(key, m)| (at(&format!(".{key}")), m))?;
        let def = term.loss().map_err(|(key, m)| (at(&key), m))?.def();
        if !term.student_taps().is_empty()
            || !term.teacher_taps().is_empty()
            || term.adapter.is_some()
            || term.paraphraser.is_some()
        {
            return Err((
                at(""),
                "a lifelong stage picks the taps: label terms read the seen classes' logits, distillation terms the old classes'; no taps, adapters or paraphrasers".into(),
            ));
        }
        let label_term = !def.needs_teacher() && def.reads_logits();
        let old_logits = def.distils_logits()
            && !def.needs_labels()
            && def.memory.is_none()
            && def.parameters.is_none();
        if !(label_term || old_logits) {
            return Err((
                at(".kind"),
                format!(
                    "{} does not fit a lifelong stage, whose terms are label terms on the logits (ce) or compare the old classes' logits with the previous model's (kd)",
                    def.name
                ),
            ));
        }
        if old_logits && s.joint {
            return Err((
                at(".kind"),
                "joint training sees every task's data: it takes no distillation term".into(),
            ));
        }
        labelled |= label_term;
    }
    if !labelled {
        return Err((
            "losses".into(),
            "a lifelong stage learns each task from its labels: add a label term (ce)".into(),
        ));
    }
    Ok(())
}

/// Draws `lifelong.svg` in `out` from a summary's lifelong stages (none: nothing is written).
pub fn write_summary_plot(out: &std::path::Path, summary: &super::summary::Summary) -> Result<()> {
    let stages: Vec<(String, LifelongSummary)> = summary
        .stages
        .iter()
        .filter_map(|s| s.lifelong.clone().map(|l| (s.name.clone(), l)))
        .collect();
    if stages.is_empty() {
        return Ok(());
    }
    scores::write_plot(&out.join("lifelong.svg"), &stages)
}

/// The model at batch `b` with the lifelong taps: the logits as the label terms and as the
/// distillation terms see them, and the classifier's input.
fn with_taps(config: &Config, model: &str, input: [usize; 4], classes: usize) -> Result<Graph> {
    let mut g = config.models[model].graph(input, classes)?;
    let logits = g
        .output
        .ok_or_else(|| input_error(model, "the model has no output"))?;
    for tap in [LABEL_TAP, OLD_TAP] {
        let v = g.class_offsets(tap, logits)?;
        g.tap(tap, v)?;
    }
    if let Some(x) = classifier_input(&g) {
        g.tap(FEATURE_TAP, x)?;
    }
    Ok(g)
}

/// The training samples of task `t`: its classes' (every task's so far when joint), then the
/// memory's exemplars.
fn task_samples(
    train: &Dataset,
    tasks: &Tasks,
    t: usize,
    joint: bool,
    memory: &Memory,
) -> Vec<usize> {
    let from = if joint { 0 } else { t };
    let mut idx: Vec<usize> = (0..train.len())
        .filter(|&i| (from..=t).contains(&tasks.task_of(train.labels[i] as usize)))
        .collect();
    idx.extend(memory.indices());
    idx
}

/// The model's logits on every test image, row by row (batches of the compiled size, the last
/// one padded).
fn test_logits(gpu: &Gpu, eval: &EvalStep, batch: usize, test: &Dataset) -> Result<Vec<f32>> {
    super::run::logits_with(test, batch, test.classes, |x| eval.run(gpu, x))
}

/// The classifier inputs of training samples `idx`, one row each (batches of the compiled
/// size).
fn features(
    gpu: &Gpu,
    eval: &EvalStep,
    batch: usize,
    train: &Dataset,
    idx: &[usize],
) -> Result<(Vec<f32>, usize)> {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut out = Vec::new();
    let mut width = 0;
    for chunk in idx.chunks(batch) {
        let mut padded = chunk.to_vec();
        padded.resize(batch, chunk[0]);
        data::fill_batch(train, &padded, None, &mut x, &mut y);
        let f = eval.run_taps(gpu, &x)?.remove(0);
        width = f.len() / batch;
        out.extend_from_slice(&f[..chunk.len() * width]);
    }
    Ok((out, width))
}

/// What a lifelong stage carries from task to task: the scores so far, the exemplars and the
/// training steps taken (BatchNorm's `num_batches_tracked`).
struct Carried {
    scores: Scores,
    memory: Memory,
    steps: u32,
}

impl Carried {
    fn to_tensors(&self) -> TensorMap {
        let mut t = self.scores.to_tensors();
        t.extend(self.memory.to_tensors());
        t.insert(
            "steps".into(),
            HostTensor::i32(&[1], vec![self.steps as i32]),
        );
        t
    }

    fn from_tensors(what: &str, t: &TensorMap, tasks: &Tasks, classes: usize) -> Result<Self> {
        let steps = t
            .get("steps")
            .and_then(HostTensor::as_i32)
            .and_then(|s| s.first().copied())
            .ok_or_else(|| input_error(what, "no 'steps' entry: not a lifelong stage's state"))?;
        Ok(Carried {
            scores: Scores::from_tensors(what, t, tasks.count)?,
            memory: Memory::from_tensors(what, t, classes)?,
            steps: steps.max(0) as u32,
        })
    }
}

impl StageRun<'_> {
    /// Runs `lifelong` stage `index` from its first task or, resuming, from the task after
    /// `resume`'s; leaves the trained model in `models`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn train_lifelong(
        &self,
        index: usize,
        resume: Option<&Progress>,
        models: &mut BTreeMap<String, Weights>,
        done: &[StageSummary],
        train: &Dataset,
        test: &Dataset,
        log: &mut dyn FnMut(&str),
    ) -> Result<StageSummary> {
        let (gpu, config, folder, opts) = (self.gpu, self.config, self.folder, self.opts);
        let stage = &config.stages[index];
        let started = Instant::now();
        let s = settings(stage);
        let classes = self.shapes.classes;
        let tasks = Tasks::split(classes, s.tasks)
            .map_err(|m| input_error(format!("stage '{}': lifelong.tasks", stage.name), m))?;
        let name = stage.train[0].as_str();
        let batch = self.shapes.batch;
        let graph = config.models[name].graph(self.shapes.input(batch), classes)?;
        let epochs = stage.epochs;
        let state_file = format!("{name}.train-state");
        let (weights, mut carried, start_task) = match resume {
            Some(p) => {
                let w = folder.load_model(gpu, index, p.epoch, name, &graph)?;
                let (what, saved) = folder.read_state(index, p.epoch, &state_file)?;
                let c = Carried::from_tensors(&what, &saved, &tasks, classes)?;
                (w, c, p.epoch / epochs)
            }
            None => {
                let w = match models.get(name) {
                    Some(w) => w.clone(),
                    None => Weights::init(gpu, &graph, seed_of(config.seed, name))?,
                };
                let c = Carried {
                    scores: Scores::default(),
                    memory: Memory::new(classes),
                    steps: 0,
                };
                (w, c, 0)
            }
        };
        let tapped = |b: usize| with_taps(config, name, self.shapes.input(b), classes);
        let student = tapped(batch)?;
        // The offsets are frozen buffers beside the model's weights, written per task.
        let offset_buffers = Weights::init_prefixed(gpu, &student, 0, "lifelong.")?;
        let student_weights = weights.merged(&offset_buffers);
        let eval = EvalStep::compile(gpu, &graph, &weights)?;
        let herd = if s.memory > 0 {
            Some(EvalStep::compile_taps(
                gpu,
                &student,
                &student_weights,
                &[FEATURE_TAP],
            )?)
        } else {
            None
        };
        let augment_images = stage.augment.unwrap_or(config.data.augment);
        let opt = stage.optimizer()?;
        let mut trained = 0usize;
        let mut last_accuracy = 0.0;
        let mut best = resume.map_or(0.0, |p| p.best.first().copied().unwrap_or(0.0));
        for t in start_task..tasks.count {
            if opts.stop_after == Some((index, t * epochs)) {
                return Err(input_error(
                    opts.out.display().to_string(),
                    format!("interrupted before task {} of stage {}", t + 1, stage.name),
                ));
            }
            let task_started = Instant::now();
            let seen = 0..tasks.classes(t).end;
            let labelled = match s.labels {
                LabelScope::Seen => seen.clone(),
                LabelScope::Task => tasks.classes(t),
            };
            let write = |tap: &str, kept: Range<usize>| -> Result<()> {
                let bias = student_weights
                    .get(&format!("{tap}.bias"))
                    .ok_or_else(|| input_error(tap, "the class offsets are missing"))?;
                gpu.write(bias, &offsets(classes, kept))
            };
            write(LABEL_TAP, labelled)?;
            write(OLD_TAP, tasks.before(t))?;
            // The terms: label terms on the logits the task trains; after the first task,
            // distillation terms on the old classes' logits against the previous model.
            let mut terms = Vec::new();
            for (i, term) in stage.losses.iter().enumerate() {
                let loss = term.loss().map_err(|(key, m)| {
                    input_error(format!("{}: losses[{i}]{key}", stage.name), m)
                })?;
                let spec = if loss.def().needs_teacher() {
                    if t == 0 {
                        continue;
                    }
                    LossSpec::taps(loss, term.weight, OLD_TAP, OLD_TAP)
                } else {
                    LossSpec {
                        student_taps: vec![LABEL_TAP.into()],
                        ..LossSpec::logits(loss, term.weight)
                    }
                };
                terms.push((i, spec));
            }
            let distils = terms.iter().any(|(_, l)| l.loss.def().needs_teacher());
            // The previous model: a frozen copy, with the same offsets.
            let previous = if distils {
                let host = student_weights.to_host(gpu)?;
                Some(Weights::load(
                    gpu,
                    &student,
                    "the previous task's model",
                    &host,
                )?)
            } else {
                None
            };
            let samples = task_samples(train, &tasks, t, s.joint, &carried.memory);
            let tail = samples.len() % batch;
            let spec = StepSpec {
                student: &student,
                student_weights: &student_weights,
                teacher: previous.as_ref().map(|w| (&student, w)),
                losses: terms.iter().map(|(_, l)| l.clone()).collect(),
                optimizer: optimizer(opt),
                seed: seed_of(config.seed, &format!("{}/task{t}", stage.name)),
            };
            let mut step = TrainStep::compile(gpu, &spec)?;
            let tail_graph = if tail >= 2 { Some(tapped(tail)?) } else { None };
            let mut tail_step = match &tail_graph {
                Some(g) => {
                    let spec = StepSpec {
                        student: g,
                        teacher: previous.as_ref().map(|w| (g, w)),
                        ..spec
                    };
                    Some(TrainStep::compile_sibling(gpu, &spec, &step)?)
                }
                None => None,
            };
            let mut lines = Vec::new();
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for epoch in 0..epochs {
                let epoch_started = Instant::now();
                let lr = learning_rate(opt, epoch, epochs);
                let steps = std::iter::once(&mut step).chain(tail_step.as_mut());
                super::epoch::write_schedule(gpu, steps, stage, &terms, epoch as f32, lr);
                let seed = config.seed ^ ((index as u64) << 48) ^ ((t as u64) << 32);
                let order = data::epoch_order(samples.len(), seed, epoch as u64);
                let mut count = 0;
                let mut last = &step;
                for (bi, chunk) in order.chunks(batch).enumerate() {
                    let Some(st) = (if chunk.len() == batch {
                        Some(&step)
                    } else {
                        tail_step.as_ref()
                    }) else {
                        continue;
                    };
                    let idx: Vec<usize> = chunk.iter().map(|&k| samples[k]).collect();
                    let augment =
                        augment_images.then_some((2, seed ^ ((epoch as u64) << 20) ^ bi as u64));
                    data::fill_batch(train, &idx, augment, &mut x, &mut y);
                    st.run(gpu, &x, &y)?;
                    last = st;
                    count += idx.len();
                }
                let loss = last.total_loss(gpu)?;
                if !loss.is_finite() {
                    let at = format!("task {}, epoch {}", t + 1, epoch + 1);
                    let kept = (t > 0).then_some(t * epochs);
                    return Err(super::epoch::diverged(&stage.name, &at, kept));
                }
                trained += count;
                let seconds = epoch_started.elapsed().as_secs_f64();
                let logits = test_logits(gpu, &eval, batch, test)?;
                let (class_il, task_il) = scores::seen_accuracy(&logits, test, &tasks, t);
                lines.push(serde_json::json!({
                    "stage": stage.name, "model": name, "epoch": t * epochs + epoch + 1,
                    "task": t + 1, "lr": lr, "train_loss": loss,
                    "test_accuracy": class_il, "task_il_accuracy": task_il,
                    "seconds": seconds, "samples_per_second": count as f64 / seconds,
                }));
                last_accuracy = class_il;
            }
            // The sibling shares the main step's counter.
            carried.steps += step.steps_taken(gpu)?;
            let logits = test_logits(gpu, &eval, batch, test)?;
            carried.scores.record(&logits, test, &tasks, t);
            best = best.max(last_accuracy);
            if let Some(herd) = &herd {
                let per_class = s.memory / seen.len();
                for class in tasks.classes(t) {
                    let idx: Vec<usize> = (0..train.len())
                        .filter(|&i| train.labels[i] as usize == class)
                        .collect();
                    if idx.is_empty() {
                        continue;
                    }
                    let (f, width) = features(gpu, herd, batch, train, &idx)?;
                    let picked = herding::herding(&f, width, per_class);
                    carried
                        .memory
                        .set(class, picked.iter().map(|&k| idx[k]).collect());
                }
                carried.memory.shrink(per_class);
            }
            let epoch_done = (t + 1) * epochs;
            let files = EpochFiles {
                models: vec![(
                    name.to_string(),
                    export(gpu, &graph, &weights, carried.steps)?,
                )],
                state: (name.to_string(), carried.to_tensors()),
                heads: None,
                metrics: lines,
                progress: Progress::after_epoch(
                    config,
                    index,
                    epoch_done,
                    (vec![best], vec![last_accuracy]),
                    done,
                ),
            };
            folder.commit_epoch(index, epoch_done, &files)?;
            if t > 0 {
                // The previous task's state is no longer needed.
                let _ = std::fs::remove_dir_all(folder.state(index, t * epochs));
            }
            let summary = carried.scores.summary(&tasks, s.memory);
            let mut drawn: Vec<(String, LifelongSummary)> = done
                .iter()
                .filter_map(|d| d.lifelong.clone().map(|l| (d.name.clone(), l)))
                .collect();
            drawn.push((stage.name.clone(), summary));
            scores::write_plot(&opts.out.join("lifelong.svg"), &drawn)?;
            let row: Vec<String> = carried.scores.class_il[t]
                .iter()
                .map(|a| format!("{a:.3}"))
                .collect();
            log(&format!(
                "{} task {}/{}: class-IL accuracy per task [{}], average {:.4} (task-IL {:.4}), {} samples, {:.1} s",
                stage.name,
                t + 1,
                tasks.count,
                row.join(", "),
                scores::mean(&carried.scores.class_il[t]),
                scores::mean(&carried.scores.task_il[t]),
                samples.len(),
                task_started.elapsed().as_secs_f64()
            ));
        }
        let final_accuracy = crate::train::run::evaluate(gpu, &graph, &weights, test)?;
        models.insert(name.to_string(), weights);
        Ok(StageSummary {
            name: stage.name.clone(),
            epochs: stage.total_epochs(),
            wall_seconds: started.elapsed().as_secs_f64(),
            samples_per_second: trained as f64 / started.elapsed().as_secs_f64(),
            models: vec![ModelResult::new(
                name,
                final_accuracy,
                best.max(final_accuracy),
            )],
            lifelong: Some(carried.scores.summary(&tasks, s.memory)),
        })
    }
}
