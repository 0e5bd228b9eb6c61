//! Planning one stage: its models' graphs and weights (fresh, carried from earlier stages,
//! loaded from checkpoints, or resumed), its teacher (one model, an ensemble, or the replay of its
//! cached outputs), its method's loss terms, and the compiled steps: one at the batch size, a
//! sibling for the smaller last batch, and an evaluation step per model.

use std::collections::BTreeMap;

use crate::Result;
use crate::data::{self, Dataset, NegativeSampler};
use crate::error::input_error;
use crate::gpu::Gpu;
use crate::graph::{
    EvalStep, Graph, LossSpec, OptimizerSpec, PEER, StepSpec, TrainStep, Weights, low_rank, qat,
};
use crate::kernels::optimizer::{AdamW, Sgd};

use super::checkpoint::{Progress, RunFolder};
use super::config::{Config, OptimizerConfig, OptimizerKind, ScheduleKind, StageConfig};
use super::pretrain;
use super::run::{RunOptions, default_teacher_cache};
use super::summary::{ModelResult, StageSummary};
use super::teacher_cache::{self, TeacherOutputs};

/// The shapes every stage shares: the batch, the smaller last batch, an image and the classes.
#[derive(Clone, Copy, Debug)]
pub struct Shapes {
    /// Samples per step.
    pub batch: usize,
    /// Samples in the last step of an epoch (0 when the batches divide the data).
    pub tail: usize,
    /// One image, (C, H, W).
    pub image: [usize; 3],
    /// Classes.
    pub classes: usize,
}

impl Shapes {
    /// The shapes of `config` on `train`.
    pub fn of(config: &Config, train: &Dataset) -> Shapes {
        Shapes::of_epoch(config, train, train.len())
    }

    /// The shapes of `config` on epochs of `samples` of `train`'s images.
    pub fn of_epoch(config: &Config, train: &Dataset, samples: usize) -> Shapes {
        let batch = config.data.batch_size;
        Shapes {
            batch,
            tail: samples % batch,
            image: train.shape,
            classes: train.classes,
        }
    }

    /// A batch of `b` images.
    pub fn input(&self, b: usize) -> [usize; 4] {
        let [c, h, w] = self.image;
        [b, c, h, w]
    }
}

/// A seed per model (or stage) name, so that adding a model leaves the others' weights alone.
pub fn seed_of(config_seed: u64, name: &str) -> u64 {
    name.bytes()
        .fold(config_seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
}

/// The step's optimizer from the stage's settings (PyTorch's defaults where unset).
pub fn optimizer(o: &OptimizerConfig) -> OptimizerSpec {
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

/// The teacher taps a stage's loss terms read (peers excluded), `logits` always among them.
fn teacher_taps(losses: &[(usize, LossSpec)]) -> Vec<String> {
    let mut taps = vec!["logits".to_string()];
    for (_, l) in losses {
        for k in 0..l.loss.def().teacher_inputs().count() {
            let tap = l.teacher_tap(k);
            if !tap.starts_with(PEER) && !taps.iter().any(|t| t == tap) {
                taps.push(tap.to_string());
            }
        }
    }
    taps
}

/// Sets each memory-bank term's size (CRD's `n_data`) to the training set's size `n` (its banks
/// hold a row per sample); a configured value must agree.
pub fn with_bank_size(
    terms: Vec<(usize, LossSpec)>,
    stage: &str,
    n: usize,
) -> Result<Vec<(usize, LossSpec)>> {
    terms
        .into_iter()
        .map(|(source, mut spec)| {
            if let Some(memory) = &spec.loss.def().memory {
                let key = memory.size_attr;
                let given = spec.loss.attr(key);
                if given != 0.0 && given != n as f64 {
                    return Err(input_error(
                        format!("stage '{stage}': losses[{source}].{key}"),
                        format!("must be the training set's size {n} (or left out), got {given}"),
                    ));
                }
                spec.loss = spec.loss.with(key, n as f64)?;
            }
            Ok((source, spec))
        })
        .collect()
}

/// A stage compiled for training.
pub struct StagePlan<'a> {
    /// The stage's index in the configuration.
    pub index: usize,
    /// The stage.
    pub stage: &'a StageConfig,
    /// Its models' graphs at the batch size, in `stage.train` order.
    pub graphs: Vec<Graph>,
    /// Their weights, updated in place by the steps.
    pub weights: Vec<Weights>,
    /// Self-distillation's heads, trained with the model and saved apart.
    pub heads: Option<Weights>,
    /// The step's loss terms, each with the configured term it came from.
    pub terms: Vec<(usize, LossSpec)>,
    /// The step at the batch size.
    pub step: TrainStep,
    /// Its sibling for the smaller last batch (none for a last batch under two samples, which
    /// is dropped: batch statistics need two).
    pub tail_step: Option<TrainStep>,
    /// An evaluation step per model.
    pub evals: Vec<EvalStep>,
    /// Per contrastive term (by index), the sampler of its negatives.
    pub samplers: Vec<(usize, NegativeSampler)>,
    /// The teacher's stored outputs, replayed instead of running it.
    pub cached: Option<TeacherOutputs>,
    /// With `labelled`, the labels the stage sees, per training image: its own where it keeps
    /// it, −1 (unlabelled) elsewhere; the batches take them in place of the data set's.
    pub known_labels: Option<Vec<i32>>,
    /// The images the epochs go over, when not the whole set ([`training_pool`]).
    pub pool: Option<Vec<usize>>,
    /// The first epoch to train (after a resumed run's completed ones).
    pub start_epoch: usize,
    /// Each model's best test accuracy so far.
    pub best: Vec<f64>,
    /// Each model's last test accuracy.
    pub accuracy: Vec<f64>,
}

impl<'a> StagePlan<'a> {
    /// Plans stage `index` of `config`: `models` holds the models trained in earlier stages or
    /// loaded from checkpoints; `resume` is the progress of this stage when a run resumes it
    /// after some epochs.
    #[allow(clippy::too_many_arguments)]
    pub fn compile(
        gpu: &Gpu,
        config: &'a Config,
        index: usize,
        models: &BTreeMap<String, Weights>,
        resume: Option<&Progress>,
        opts: &RunOptions,
        folder: &RunFolder,
        shapes: &Shapes,
        train: &Dataset,
        log: &mut dyn FnMut(&str),
    ) -> Result<StagePlan<'a>> {
        let stage = &config.stages[index];
        let names = &stage.train;
        let graph_of =
            |name: &str, b: usize| config.models[name].graph(shapes.input(b), shapes.classes);
        let graphs: Vec<Graph> = names
            .iter()
            .map(|n| graph_of(n, shapes.batch))
            .collect::<Result<_>>()?;
        // A stage resumed after some epochs goes on from its checkpoints; one whose first epoch
        // had not finished (progress written as the previous stage ended) starts afresh.
        let (start_epoch, best, accuracy) = match resume {
            Some(p) => (p.epoch, p.best.clone(), p.accuracy.clone()),
            None => (0, vec![0.0; names.len()], vec![0.0; names.len()]),
        };
        let weights: Vec<Weights> = names
            .iter()
            .zip(&graphs)
            .map(|(name, graph)| match (resume, models.get(name)) {
                (Some(p), _) => folder.load_model(gpu, index, p.epoch, name, graph),
                (None, Some(w)) => Ok(w.clone()),
                (None, None) => match stage.start_from.as_ref().and_then(|s| models.get(s)) {
                    // A copy: the source keeps its own weights.
                    Some(source) => {
                        let what = format!("stage '{}': start_from", stage.name);
                        let ranks = config.models[name].low_rank();
                        let (mut host, split) =
                            low_rank::factorise_weights(&what, &source.to_host(gpu)?, ranks)?;
                        qat::add_fresh_observers(graph, &mut host);
                        for f in split {
                            log(&format!(
                                "{what}: {} factorised at rank {} keeps {:.1}% of its weight's energy",
                                f.layer,
                                f.rank,
                                100.0 * f.kept_energy
                            ));
                        }
                        Weights::load(gpu, graph, &what, &host)
                    }
                    None => Weights::init(gpu, graph, seed_of(config.seed, name)),
                },
            })
            .collect::<Result<_>>()?;
        let method = stage.method(config)?;
        let mut terms = with_bank_size(method.terms(stage)?, &stage.name, train.len())?;

        // One model as it is; several (online distillation) as one graph of peers; with heads,
        // the model and its heads.
        let heads: Vec<&str> = stage.heads.iter().map(String::as_str).collect();
        let student_at = |b: usize| -> Result<Graph> {
            let g = if let [n] = names.as_slice() {
                graph_of(n, b)?
            } else {
                let gs: Vec<Graph> = names
                    .iter()
                    .map(|n| graph_of(n, b))
                    .collect::<Result<_>>()?;
                let parts: Vec<(&str, &Graph)> =
                    names.iter().map(String::as_str).zip(&gs).collect();
                Graph::peers(&parts)?
            };
            if heads.is_empty() {
                Ok(g)
            } else {
                g.with_heads(&heads, shapes.classes)
            }
        };
        let student = student_at(shapes.batch)?;
        let key = names.join("+");
        let head_weights = if heads.is_empty() {
            None
        } else {
            let fresh =
                Weights::init_prefixed(gpu, &student, seed_of(config.seed, &stage.name), "aux.")?;
            Some(if start_epoch > 0 {
                let (what, saved) =
                    folder.read_state(index, start_epoch, &format!("{key}.heads"))?;
                fresh.reload(gpu, &what, &saved)?
            } else {
                fresh
            })
        };
        let student_weights = match (names.as_slice(), &head_weights) {
            ([_], Some(h)) => weights[0].merged(h),
            ([_], None) => weights[0].clone(),
            (_, _) => Weights::ensemble(
                &names
                    .iter()
                    .map(String::as_str)
                    .zip(&weights)
                    .collect::<Vec<_>>(),
            ),
        };

        // One teacher as it is; several as one ensemble whose logits are their KD mixture; with
        // the cache, a replay of their stored outputs.
        let teacher_at = |b: usize| teacher_graph(config, stage, shapes, b);
        let teacher_w = teacher_weights(stage, models);
        // Paraphrasers train on the teacher's maps first; a resumed stage reloads them with the
        // step's state.
        if let (Some(w), 0) = (&teacher_w, start_epoch) {
            let g = teacher_at(shapes.batch)?;
            pretrain::paraphrasers(gpu, config, stage, (&g, w), &mut terms, train, log)?;
        }
        let cached = match &teacher_w {
            Some(w) if config.data.teacher_cache => {
                let g = teacher_at(shapes.batch)?;
                Some(cached_outputs(gpu, stage, &terms, &g, w, opts, train, log)?)
            }
            _ => None,
        };
        let teacher_graphs = match (&cached, teacher_w) {
            (Some(outputs), _) => {
                let g = replay(outputs, shapes.batch)?;
                let w = Weights::init(gpu, &g, 0)?;
                Some((g, replay(outputs, shapes.tail.max(2))?, w))
            }
            (None, Some(w)) => Some((
                teacher_at(shapes.batch)?,
                teacher_at(shapes.tail.max(2))?,
                w,
            )),
            (None, None) => None,
        };
        let spec = StepSpec {
            student: &student,
            student_weights: &student_weights,
            teacher: teacher_graphs.as_ref().map(|(g, _, w)| (g, w)),
            losses: terms.iter().map(|(_, l)| l.clone()).collect(),
            optimizer: optimizer(stage.optimizer()?),
            seed: seed_of(config.seed, &stage.name),
        };
        let discriminator = stage
            .discriminator
            .as_ref()
            .map(|d| d.spec(config.seed, &stage.name));
        // A pruned stage trains one model (its heads, if any, stay dense).
        let pruned = match &stage.prune {
            Some(_) => super::prune::prunable(&graphs[0]),
            None => Vec::new(),
        };
        let step = TrainStep::compile_masked(gpu, &spec, discriminator.as_ref(), &pruned)?;
        if start_epoch > 0 {
            let file = format!("{key}.train-state");
            let (what, saved) = folder.read_state(index, start_epoch, &file)?;
            step.load_state(gpu, &what, &saved)?;
        }
        let tail_step = if shapes.tail >= 2 {
            let tail_student = student_at(shapes.tail)?;
            let spec = StepSpec {
                student: &tail_student,
                teacher: teacher_graphs.as_ref().map(|(_, g, w)| (g, w)),
                ..spec
            };
            Some(TrainStep::compile_sibling(gpu, &spec, &step)?)
        } else {
            None
        };
        let evals = graphs
            .iter()
            .zip(&weights)
            .map(|(g, w)| EvalStep::compile(gpu, g, w))
            .collect::<Result<_>>()?;
        let known_labels =
            labelled_images(stage, train)?.map(|keep| hide_labels(&train.labels, &keep));
        let pool = training_pool(stage, train)?;
        let samplers = step
            .sample_rows()
            .map(|(term, rows, _)| {
                let labels = known_labels.as_deref().unwrap_or(&train.labels);
                let sampler = NegativeSampler::new(labels, train.classes, rows - 1);
                (term, sampler)
            })
            .collect();
        Ok(StagePlan {
            index,
            stage,
            graphs,
            weights,
            heads: head_weights,
            terms,
            step,
            tail_step,
            evals,
            samplers,
            cached,
            known_labels,
            pool,
            start_epoch,
            best,
            accuracy,
        })
    }

    /// The file stem of the step state of the models trained together.
    pub fn key(&self) -> String {
        self.stage.train.join("+")
    }

    /// The stage's summary after training.
    pub fn summary(&self, wall_seconds: f64, trained_samples: usize) -> StageSummary {
        StageSummary {
            name: self.stage.name.clone(),
            epochs: self.stage.epochs,
            wall_seconds,
            samples_per_second: trained_samples as f64 / wall_seconds,
            models: self
                .stage
                .train
                .iter()
                .enumerate()
                .map(|(k, name)| ModelResult::new(name, self.accuracy[k], self.best[k]))
                .collect(),
            lifelong: None,
        }
    }
}

/// The stage's frozen teacher at batch `b`: one model as it is, several as one ensemble whose
/// logits are their KD mixture.
fn teacher_graph(config: &Config, stage: &StageConfig, shapes: &Shapes, b: usize) -> Result<Graph> {
    let graph_of = |t: &str| config.models[t].graph(shapes.input(b), shapes.classes);
    if let [t] = stage.teachers.as_slice() {
        return graph_of(t);
    }
    let graphs: Vec<Graph> = stage
        .teachers
        .iter()
        .map(|t| graph_of(t))
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
}

/// The teacher's weights (the ensemble's, for several).
fn teacher_weights(stage: &StageConfig, models: &BTreeMap<String, Weights>) -> Option<Weights> {
    match stage.teachers.as_slice() {
        [] => None,
        [t] => Some(models[t].clone()),
        many => Some(Weights::ensemble(
            &many
                .iter()
                .map(|t| (t.as_str(), &models[t]))
                .collect::<Vec<_>>(),
        )),
    }
}

/// The teacher's outputs on the training set at the taps the terms read, from the cache (or
/// computed into it).
#[allow(clippy::too_many_arguments)]
fn cached_outputs(
    gpu: &Gpu,
    stage: &StageConfig,
    terms: &[(usize, LossSpec)],
    teacher: &Graph,
    weights: &Weights,
    opts: &RunOptions,
    train: &Dataset,
    log: &mut dyn FnMut(&str),
) -> Result<TeacherOutputs> {
    let taps = teacher_taps(terms);
    let tap_refs: Vec<&str> = taps.iter().map(String::as_str).collect();
    let root = opts
        .teacher_cache
        .clone()
        .unwrap_or_else(|| default_teacher_cache(&opts.out));
    let key = teacher_cache::key(gpu, teacher, weights, &tap_refs, train)?;
    let outputs =
        teacher_cache::load_or_compute(gpu, &root, &key, teacher, weights, &tap_refs, train)?;
    let how = if outputs.reused {
        "read from"
    } else {
        "computed into"
    };
    log(&format!(
        "{}: teacher outputs {how} {} ({:.1} s)",
        stage.name,
        outputs.dir.display(),
        outputs.seconds
    ));
    Ok(outputs)
}

/// A graph whose outputs are the cached teacher taps at batch `b`, read from inputs the step
/// writes per batch.
fn replay(outputs: &TeacherOutputs, b: usize) -> Result<Graph> {
    let shapes: Vec<Vec<usize>> = outputs
        .taps
        .iter()
        .map(|(_, s)| std::iter::once(b).chain(s.iter().copied()).collect())
        .collect();
    let taps: Vec<(&str, &[usize])> = outputs
        .taps
        .iter()
        .zip(&shapes)
        .map(|((n, _), s)| (n.as_str(), s.as_slice()))
        .collect();
    Graph::replay(&taps)
}

/// With `labelled`, which of `train`'s images keep their label (refused beyond its size).
fn labelled_images(stage: &StageConfig, train: &Dataset) -> Result<Option<Vec<bool>>> {
    match stage.labelled {
        Some(n) if n > train.len() => Err(input_error(
            format!("stage '{}': labelled", stage.name),
            format!("{n} is more than the {} training images", train.len()),
        )),
        Some(n) => Ok(Some(data::labelled_subset(&train.labels, n))),
        None => Ok(None),
    }
}

/// The images a stage's epochs go over, when not all of `train`: with `labelled`, a stage whose
/// every term needs labels (`ce`, `dkd`) learns nothing from an unlabelled image, so it trains on
/// the labelled ones alone (the baseline of the small-labelled-set setting), and so does a stage
/// told `use_unlabelled = false`.
pub fn training_pool(stage: &StageConfig, train: &Dataset) -> Result<Option<Vec<usize>>> {
    let label_terms_only = stage
        .losses
        .iter()
        .all(|term| term.loss().is_ok_and(|l| l.def().needs_labels()));
    let labelled_only = label_terms_only || stage.use_unlabelled == Some(false);
    let keep = labelled_images(stage, train)?.filter(|_| labelled_only);
    let pool: Option<Vec<usize>> = keep.map(|keep| (0..keep.len()).filter(|&i| keep[i]).collect());
    if pool.as_ref().is_some_and(|p| p.len() < 2) {
        return Err(input_error(
            format!("stage '{}': labelled", stage.name),
            "a stage of label terms alone (or with use_unlabelled = false) trains on its labelled \
             images only, and needs at least 2 of them (a batch)",
        ));
    }
    Ok(pool)
}

/// `labels` with those of the images that do not keep theirs (`keep[i]` false) hidden: −1.
fn hide_labels(labels: &[i32], keep: &[bool]) -> Vec<i32> {
    labels
        .iter()
        .zip(keep)
        .map(|(&y, &k)| if k { y } else { -1 })
        .collect()
}
