//! The data-free stage kinds: their configuration sections, the rules they add to a stage, and
//! how they run.
//!
//! - `kind = "deep_inversion"` synthesises a transfer set from its one teacher (DeepInversion,
//!   [`Inversion`]): `synthesis.images` images, optimised `synthesis.batch` at a time from noise,
//!   labelled evenly over the classes; written to `synthetic/STAGE.safetensors` (`images`,
//!   `labels`) with a PNG grid `synthetic/STAGE.png` (one column per class). A later `train`
//!   stage reads it with `transfer = "STAGE"`.
//! - `kind = "dfad"` trains its one model from its one teacher with no data at all ([`Dfad`]):
//!   each epoch is `generator.iterations` generator steps, each followed by
//!   `generator.student_steps` student steps; the real test set only measures the student. Its
//!   epochs are committed like a `train` stage's (the generator and both optimizers in the state),
//!   so `--resume` continues exactly.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::data::{Dataset, FASHION_MNIST_MEAN, FASHION_MNIST_STD};
use crate::error::input_error;
use crate::graph::{Dfad, DfadSpec, EvalStep, Graph, Inversion, InversionSpec, Op, Weights};
use crate::io::{self, HostTensor, TensorMap};
use crate::models;

use super::checkpoint::{EpochFiles, Progress, export};
use super::config::{Config, OptimizerConfig, StageConfig, StageKind};
use super::epoch::progress_bar;
use super::method::Fault;
use super::run::{StageRun, accuracy};
use super::stage::{learning_rate, optimizer, seed_of};
use super::summary::{ModelResult, StageSummary};

/// `synthesis = { … }`: DeepInversion's settings (NVlabs' names and defaults where they apply).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SynthesisConfig {
    /// Images to synthesise, a multiple of `batch`; image k is made for class k mod classes.
    pub images: usize,
    /// Images optimised together (their BatchNorm statistics are matched as one batch).
    #[serde(default = "default_synthesis_batch")]
    pub batch: usize,
    /// Adam iterations per batch.
    #[serde(default = "default_synthesis_iterations")]
    pub iterations: usize,
    /// Adam's learning rate on the images.
    #[serde(default = "default_synthesis_lr")]
    pub lr: f32,
    /// Adam's (β₁, β₂).
    #[serde(default = "default_synthesis_betas")]
    pub betas: [f64; 2],
    /// α_bn: weight of the BatchNorm-statistics terms.
    #[serde(default = "default_bn_weight")]
    pub bn_weight: f32,
    /// The first BatchNorm layer's multiplier on its term.
    #[serde(default = "default_first_bn_multiplier")]
    pub first_bn_multiplier: f32,
    /// α_tv: weight of the total variation prior.
    #[serde(default = "default_tv_weight")]
    pub tv_weight: f32,
    /// α_l2: weight of the images' L2 norm.
    #[serde(default = "default_l2_weight")]
    pub l2_weight: f32,
    /// The most pixels the teacher's view of the images is shifted by (circularly, a new shift
    /// per iteration); 0 for none.
    #[serde(default)]
    pub jitter: usize,
    /// Flip the teacher's view left–right in half the iterations.
    #[serde(default)]
    pub flip: bool,
    /// Adaptive DeepInversion: a model trained in an earlier stage (or loaded) that the images
    /// are made to challenge, through `competition`.
    pub competitor: Option<String>,
    /// The weight of the competition term `1 − JS(S(x), T(x))` against `competitor`.
    #[serde(default)]
    pub competition: f32,
}

fn default_synthesis_batch() -> usize {
    50
}
fn default_synthesis_iterations() -> usize {
    2000
}
fn default_synthesis_lr() -> f32 {
    0.05
}
fn default_synthesis_betas() -> [f64; 2] {
    [0.5, 0.9]
}
fn default_bn_weight() -> f32 {
    0.05
}
fn default_first_bn_multiplier() -> f32 {
    10.0
}
fn default_tv_weight() -> f32 {
    1e-4
}
fn default_l2_weight() -> f32 {
    1e-5
}

/// `generator = { … }`: DFAD's generator and schedule (the paper's defaults where they apply).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Size of the latent noise `z`.
    #[serde(default = "default_latent")]
    pub latent: usize,
    /// The generator's `ngf`: its last hidden maps' channels (twice that before).
    #[serde(default = "default_generator_width")]
    pub width: usize,
    /// Generator steps per epoch.
    #[serde(default = "default_generator_iterations")]
    pub iterations: usize,
    /// Student steps after each generator step.
    #[serde(default = "default_student_steps")]
    pub student_steps: usize,
    /// Images generated per step (the data's batch size when absent).
    pub batch: Option<usize>,
    /// The weight β of the class-balance term (the registry's `balance` on the teacher's logits,
    /// DAFL's information entropy) the generator descends beside the negated discrepancy; 0, the
    /// default, is DFAD as published.
    #[serde(default)]
    pub balance: f32,
    /// The generator's optimizer (its schedule runs over the stage's epochs).
    pub optimizer: OptimizerConfig,
}

fn default_latent() -> usize {
    256
}
fn default_generator_width() -> usize {
    64
}
fn default_generator_iterations() -> usize {
    50
}
fn default_student_steps() -> usize {
    5
}

/// The most images a synthesis stage may ask for, and the most iterations per batch.
const MAX_SYNTHESIS: usize = 1 << 20;

impl SynthesisConfig {
    fn check(&self, max_batch: usize) -> std::result::Result<(), Fault> {
        let at = |key: &str| format!("synthesis.{key}");
        if !(2..=max_batch).contains(&self.batch) {
            return Err((
                at("batch"),
                format!(
                    "must be from 2 to {max_batch} (batch statistics need two images), got {}",
                    self.batch
                ),
            ));
        }
        if self.images == 0
            || self.images > MAX_SYNTHESIS
            || !self.images.is_multiple_of(self.batch)
        {
            return Err((
                at("images"),
                format!(
                    "must be a multiple of batch ({}) from 1 to {MAX_SYNTHESIS}, got {}",
                    self.batch, self.images
                ),
            ));
        }
        if !(1..=MAX_SYNTHESIS).contains(&self.iterations) {
            return Err((
                at("iterations"),
                format!("must be from 1 to {MAX_SYNTHESIS}, got {}", self.iterations),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err((at("lr"), format!("must be a number > 0, got {}", self.lr)));
        }
        for (i, b) in self.betas.iter().enumerate() {
            if !(0.0..1.0).contains(b) {
                return Err((
                    at(&format!("betas[{i}]")),
                    format!("must be a number ≥ 0 and < 1, got {b}"),
                ));
            }
        }
        if !(self.competition.is_finite() && self.competition >= 0.0) {
            return Err((
                at("competition"),
                format!("must be a number ≥ 0, got {}", self.competition),
            ));
        }
        match (&self.competitor, self.competition > 0.0) {
            (Some(_), false) => {
                return Err((
                    at("competition"),
                    "a competitor needs a competition weight > 0 (Adaptive DeepInversion)".into(),
                ));
            }
            (None, true) => {
                return Err((
                    at("competitor"),
                    "a competition weight needs a competitor: a model trained earlier".into(),
                ));
            }
            _ => {}
        }
        if self.jitter > 64 {
            return Err((
                at("jitter"),
                format!("must be from 0 to 64 pixels, got {}", self.jitter),
            ));
        }
        for (key, v) in [
            ("bn_weight", self.bn_weight),
            ("first_bn_multiplier", self.first_bn_multiplier),
            ("tv_weight", self.tv_weight),
            ("l2_weight", self.l2_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err((at(key), format!("must be a number ≥ 0, got {v}")));
            }
        }
        Ok(())
    }

    /// The synthesis of batch `b` of a stage seeded `seed`, labelled for `classes` classes.
    fn spec(&self, b: usize, classes: usize, seed: u64) -> InversionSpec {
        InversionSpec {
            labels: (0..self.batch)
                .map(|i| ((b * self.batch + i) % classes) as i32)
                .collect(),
            lr: self.lr,
            betas: (self.betas[0], self.betas[1]),
            bn_weight: self.bn_weight,
            first_bn_multiplier: self.first_bn_multiplier,
            tv_weight: self.tv_weight,
            l2_weight: self.l2_weight,
            seed: seed.wrapping_add(b as u64),
            jitter: self.jitter,
            flip: self.flip,
            competition: self.competition,
        }
    }
}

impl GeneratorConfig {
    fn check(&self, data_batch: usize) -> std::result::Result<(), Fault> {
        let at = |key: &str| format!("generator.{key}");
        let batch = self.batch.unwrap_or(data_batch);
        if !(2..=crate::train::config::MAX_BATCH).contains(&batch) {
            return Err((
                at("batch"),
                format!(
                    "must be from 2 to {} (batch statistics need two images), got {batch}",
                    crate::train::config::MAX_BATCH
                ),
            ));
        }
        for (key, v) in [
            ("latent", self.latent),
            ("iterations", self.iterations),
            ("student_steps", self.student_steps),
        ] {
            if !(1..=MAX_SYNTHESIS).contains(&v) {
                return Err((
                    at(key),
                    format!("must be from 1 to {MAX_SYNTHESIS}, got {v}"),
                ));
            }
        }
        models::check_generator_width(self.width).map_err(|m| (at("width"), m))?;
        if !(self.balance.is_finite() && (0.0..=1e6).contains(&self.balance)) {
            return Err((
                at("balance"),
                format!("must be from 0 to 1e6, got {}", self.balance),
            ));
        }
        self.optimizer
            .check()
            .map_err(|(key, m)| (at(&format!("optimizer{key}")), m))?;
        self.graph(batch, crate::data::IMAGE)
            .map(|_| ())
            .map_err(|e| ("generator".into(), e.to_string()))
    }

    fn graph(&self, batch: usize, image: [usize; 3]) -> Result<Graph> {
        models::generator(batch, self.latent, image, self.width)
    }
}

/// The rules a stage's kind adds, checked before the rules every training stage follows. Returns
/// whether the stage is fully checked (a synthesis stage trains nothing, so the rest do not
/// apply). Errors name keys relative to the stage.
pub(super) fn check_kind(
    stage: &StageConfig,
    config: &Config,
    graphs: &BTreeMap<&str, Graph>,
    earlier: &[StageConfig],
) -> std::result::Result<bool, Fault> {
    let misplaced = |key: &str, kinds: &str| {
        Err((
            key.to_string(),
            format!(
                "belongs to {kinds} stages, not to a {} stage",
                kind_name(stage.kind)
            ),
        ))
    };
    if stage.synthesis.is_some() && stage.kind != StageKind::DeepInversion {
        return misplaced("synthesis", "deep_inversion");
    }
    if stage.generator.is_some() && stage.kind != StageKind::Dfad {
        return misplaced("generator", "dfad");
    }
    if stage.transfer.is_some() && stage.kind != StageKind::Train {
        return misplaced("transfer", "train");
    }
    if stage.discriminator.is_some() && stage.kind != StageKind::Train {
        return misplaced("discriminator", "train");
    }
    if stage.prune.is_some() && stage.kind != StageKind::Train {
        return misplaced("prune", "train");
    }
    if stage.start_from.is_some() && stage.kind != StageKind::Train {
        return misplaced("start_from", "train");
    }
    if stage.lifelong.is_some() && stage.kind != StageKind::Lifelong {
        return misplaced("lifelong", "lifelong");
    }
    let one_teacher = || -> std::result::Result<&str, Fault> {
        match stage.teachers.as_slice() {
            [t] if config.models.contains_key(t) => Ok(t.as_str()),
            _ => Err((
                "teachers".into(),
                format!(
                    "a {} stage learns from one teacher (a model of this configuration), got {:?}",
                    kind_name(stage.kind),
                    stage.teachers
                ),
            )),
        }
    };
    match stage.kind {
        StageKind::Train => {
            let Some(source) = &stage.transfer else {
                return Ok(false);
            };
            let found = earlier
                .iter()
                .any(|s| s.kind == StageKind::DeepInversion && &s.name == source);
            if !found {
                return Err((
                    "transfer".into(),
                    format!("'{source}' is not an earlier deep_inversion stage"),
                ));
            }
            let images = earlier
                .iter()
                .find(|s| &s.name == source)
                .and_then(|s| s.synthesis.as_ref())
                .map_or(0, |s| s.images);
            if images < config.data.batch_size {
                return Err((
                    "transfer".into(),
                    format!(
                        "'{source}' synthesises {images} images, fewer than one batch of data.batch_size = {}",
                        config.data.batch_size
                    ),
                ));
            }
            if config.data.teacher_cache {
                return Err((
                    "transfer".into(),
                    "data.teacher_cache replays the teacher's outputs on the data set; a stage on a synthesised set cannot use it (turn the cache off)".into(),
                ));
            }
            Ok(false)
        }
        StageKind::DeepInversion => {
            let teacher = one_teacher()?;
            for (key, set) in [
                ("train", !stage.train.is_empty()),
                ("epochs", stage.epochs != 0),
                ("optimizer", stage.optimizer.is_some()),
                ("losses", !stage.losses.is_empty()),
                ("heads", !stage.heads.is_empty()),
                ("teacher_weights", stage.teacher_weights.is_some()),
            ] {
                if set {
                    return Err((
                        key.into(),
                        "a deep_inversion stage trains no model: its settings are in `synthesis`"
                            .into(),
                    ));
                }
            }
            let synthesis = stage.synthesis.as_ref().ok_or_else(|| {
                (
                    "synthesis".to_string(),
                    "a deep_inversion stage needs synthesis = { images = N, … }".to_string(),
                )
            })?;
            synthesis.check(crate::train::config::MAX_BATCH)?;
            if let Some(c) = &synthesis.competitor {
                let ready = config
                    .models
                    .get(c)
                    .is_some_and(|m| m.checkpoint().is_some())
                    || earlier.iter().any(|s| s.train.contains(c));
                if !ready {
                    return Err((
                        "synthesis.competitor".into(),
                        format!(
                            "'{c}' must be a model trained in an earlier stage or loaded from a checkpoint"
                        ),
                    ));
                }
            }
            let has_bn = graphs[teacher]
                .nodes
                .iter()
                .any(|n| matches!(n.op, Op::BatchNorm { .. }));
            if !has_bn {
                return Err((
                    "teachers[0]".into(),
                    format!(
                        "'{teacher}' has no BatchNorm layer, whose statistics DeepInversion matches"
                    ),
                ));
            }
            Ok(true)
        }
        StageKind::Dfad => {
            one_teacher()?;
            if stage.train.len() != 1 || !stage.heads.is_empty() {
                return Err((
                    "train".into(),
                    "a dfad stage trains one model, without heads".into(),
                ));
            }
            let generator = stage.generator.as_ref().ok_or_else(|| {
                (
                    "generator".to_string(),
                    "a dfad stage needs generator = { optimizer = { … }, … }".to_string(),
                )
            })?;
            generator.check(config.data.batch_size)?;
            match stage.losses.as_slice() {
                [term] if term.kind == "l1" && term.warmup_epochs == 0 && term.rampup.is_none() => {
                    Ok(false)
                }
                _ => Err((
                    "losses".into(),
                    "a dfad stage has one term, l1, at a constant weight: the teacher–student discrepancy its generator maximises and its student minimises (losses = [{ kind = \"l1\" }])".into(),
                )),
            }
        }
        // Checked by the lifelong module.
        StageKind::Lifelong => Ok(false),
    }
}

fn kind_name(kind: StageKind) -> &'static str {
    match kind {
        StageKind::Train => "train",
        StageKind::DeepInversion => "deep_inversion",
        StageKind::Dfad => "dfad",
        StageKind::Lifelong => "lifelong",
    }
}

/// `synthetic/STAGE.safetensors` of the run folder `out`.
pub fn synthetic_set(out: &Path, stage: &str) -> std::path::PathBuf {
    out.join("synthetic").join(format!("{stage}.safetensors"))
}

/// The run folder's `synthetic/`, created if missing.
pub fn synthetic_dir(out: &Path) -> Result<std::path::PathBuf> {
    let dir = out.join("synthetic");
    std::fs::create_dir_all(&dir)
        .map_err(|e| input_error(dir.display().to_string(), format!("cannot create ({e})")))?;
    Ok(dir)
}

/// Reads a synthesised set back (a resumed run, or a later seed's): `images` (N, C, H, W) and
/// `labels` (N), for `classes` classes.
pub fn load_synthetic(out: &Path, stage: &str, classes: usize) -> Result<Dataset> {
    let path = synthetic_set(out, stage);
    let what = path.display().to_string();
    let set = io::read_safetensors(&path)?;
    let images = set.get("images").filter(|t| t.shape.len() == 4);
    let labels = set.get("labels").and_then(HostTensor::as_i32);
    let (Some(images), Some(labels)) = (images, labels) else {
        return Err(input_error(
            &what,
            "needs f32 images (N, C, H, W) and i32 labels (N)",
        ));
    };
    let shape = [images.shape[1], images.shape[2], images.shape[3]];
    let values = images
        .as_f32()
        .ok_or_else(|| input_error(&what, "images must be f32"))?;
    if labels.len() != images.shape[0] || labels.iter().any(|&y| y < 0 || y as usize >= classes) {
        return Err(input_error(
            &what,
            format!("needs one label in 0..{classes} per image"),
        ));
    }
    Ok(Dataset {
        images: values.to_vec(),
        labels: labels.to_vec(),
        shape,
        classes,
        source: format!("images synthesised by stage '{stage}' ({what})"),
    })
}

/// A grid of (standardised) single-channel images, one column per class.
fn write_grid(path: &Path, images: &[f32], image: [usize; 3], classes: usize) -> Result<()> {
    let per = image.iter().product::<usize>();
    let rows = (images.len() / per / classes).clamp(1, 10);
    let shown = (rows * classes).min(images.len() / per);
    // Only the first channel is drawn (the data here is greyscale).
    let first: Vec<f32> = images
        .chunks(per)
        .take(shown)
        .flat_map(|img| img[..image[1] * image[2]].to_vec())
        .collect();
    io::write_png_grid(path, &first, [image[1], image[2]], classes, 2, |v| {
        v * FASHION_MNIST_STD + FASHION_MNIST_MEAN
    })
}

impl StageRun<'_> {
    /// Runs `deep_inversion` stage `index`: synthesises its set, writes it and its grid, and
    /// returns the stage's summary with the set.
    pub(super) fn synthesise(
        &self,
        index: usize,
        models: &BTreeMap<String, Weights>,
        log: &mut dyn FnMut(&str),
    ) -> Result<(StageSummary, Dataset)> {
        let (gpu, config) = (self.gpu, self.config);
        let stage = &config.stages[index];
        let started = Instant::now();
        let s = stage
            .synthesis
            .as_ref()
            .ok_or_else(|| input_error(&stage.name, "needs synthesis settings"))?;
        let teacher = &stage.teachers[0];
        let graph =
            config.models[teacher].graph(self.shapes.input(s.batch), self.shapes.classes)?;
        let weights = models.get(teacher).ok_or_else(|| {
            input_error(&stage.name, format!("teacher '{teacher}' has no weights"))
        })?;
        let classes = self.shapes.classes;
        let seed = seed_of(config.seed, &stage.name);
        let competitor = match &s.competitor {
            Some(name) => {
                let g = config.models[name].graph(self.shapes.input(s.batch), classes)?;
                let w = models.get(name).ok_or_else(|| {
                    input_error(&stage.name, format!("competitor '{name}' has no weights"))
                })?;
                Some((g, w))
            }
            None => None,
        };
        let mut inversion = Inversion::compile_competing(
            gpu,
            &graph,
            weights,
            competitor.as_ref().map(|(g, w)| (g, *w)),
            &s.spec(0, classes, seed),
        )?;
        let judge = EvalStep::compile(gpu, &graph, weights)?;
        let (mut images, mut labels, mut agree) = (Vec::new(), Vec::new(), 0usize);
        let batches = s.images / s.batch;
        let bar = progress_bar(self.opts.progress, batches, &stage.name);
        for b in 0..batches {
            let spec = s.spec(b, classes, seed);
            if b > 0 {
                inversion.restart(gpu, &spec.labels, spec.seed)?;
            }
            inversion.run(gpu, s.iterations)?;
            let l = inversion.losses(gpu)?;
            let batch_images = inversion.images(gpu)?;
            let seen = judge.run(gpu, &batch_images)?;
            let hits = seen
                .chunks(classes)
                .zip(&spec.labels)
                .filter(|(row, y)| argmax(row) == **y as usize)
                .count();
            agree += hits;
            bar.inc(1);
            log(&format!(
                "{} batch {}/{batches}: objective {:.4} (ce {:.4}, bn {:.4}, tv {:.4}, l2 {:.4}, competition {:.4}); the teacher sees {hits}/{} as their classes",
                stage.name,
                b + 1,
                l.total(),
                l.ce,
                l.bn,
                l.tv,
                l.l2,
                l.competition,
                s.batch
            ));
            images.extend(batch_images);
            labels.extend(spec.labels);
        }
        bar.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        let [c, h, w] = self.shapes.image;
        let mut set = TensorMap::new();
        set.insert(
            "images".into(),
            HostTensor::f32(&[s.images, c, h, w], images.clone()),
        );
        set.insert(
            "labels".into(),
            HostTensor::i32(&[s.images], labels.clone()),
        );
        let out = &self.opts.out;
        let path = synthetic_set(out, &stage.name);
        synthetic_dir(out)?;
        self.folder.write_tensors(&path, &set)?;
        write_grid(
            &path.with_extension("png"),
            &images,
            self.shapes.image,
            classes,
        )?;
        log(&format!(
            "{}: {} images in {seconds:.1} s ({:.2} images/s); the teacher sees {agree} as their classes; wrote {}",
            stage.name,
            s.images,
            s.images as f64 / seconds,
            path.display()
        ));
        let summary = StageSummary {
            name: stage.name.clone(),
            epochs: 0,
            wall_seconds: seconds,
            samples_per_second: s.images as f64 / seconds,
            models: Vec::new(),
            lifelong: None,
        };
        let set = Dataset {
            images,
            labels,
            shape: self.shapes.image,
            classes,
            source: format!("images synthesised by stage '{}'", stage.name),
        };
        Ok((summary, set))
    }

    /// Runs `dfad` stage `index` from its first epoch or, resuming, after `resume`'s; leaves the
    /// trained model in `models`.
    pub(super) fn train_dfad(
        &self,
        index: usize,
        resume: Option<&Progress>,
        models: &mut BTreeMap<String, Weights>,
        done: &[StageSummary],
        test: &Dataset,
        log: &mut dyn FnMut(&str),
    ) -> Result<StageSummary> {
        let (gpu, config, folder) = (self.gpu, self.config, self.folder);
        let stage = &config.stages[index];
        let started = Instant::now();
        let (Some(g), [student_name], [teacher_name]) = (
            stage.generator.as_ref(),
            stage.train.as_slice(),
            stage.teachers.as_slice(),
        ) else {
            return Err(input_error(
                &stage.name,
                "a dfad stage needs a generator, one model and one teacher",
            ));
        };
        let batch = g.batch.unwrap_or(self.shapes.batch);
        let graph_of =
            |name: &str| config.models[name].graph(self.shapes.input(batch), self.shapes.classes);
        let (student, teacher) = (graph_of(student_name)?, graph_of(teacher_name)?);
        let generator = g.graph(batch, self.shapes.image)?;
        let teacher_weights = models.get(teacher_name).ok_or_else(|| {
            input_error(
                &stage.name,
                format!("teacher '{teacher_name}' has no weights"),
            )
        })?;
        let (start_epoch, mut best, mut last) = match resume {
            Some(p) => (p.epoch, p.best[0], p.accuracy[0]),
            None => (0, 0.0, 0.0),
        };
        let student_weights = match (resume, models.get(student_name)) {
            (Some(p), _) => folder.load_model(gpu, index, p.epoch, student_name, &student)?,
            (None, Some(w)) => w.clone(),
            (None, None) => Weights::init(gpu, &student, seed_of(config.seed, student_name))?,
        };
        let seed = seed_of(config.seed, &format!("{}/generator", stage.name));
        let generator_weights = Weights::init(gpu, &generator, seed)?;
        let term = &stage.losses[0];
        let dfad = Dfad::compile(
            gpu,
            &DfadSpec {
                generator: &generator,
                generator_weights: &generator_weights,
                teacher: (&teacher, teacher_weights),
                student: &student,
                student_weights: &student_weights,
                loss: term.loss().map_err(|(key, m)| {
                    input_error(format!("{}: losses[0]{key}", stage.name), m)
                })?,
                weight: term.weight,
                balance: g.balance,
                generator_optimizer: optimizer(&g.optimizer),
                student_optimizer: optimizer(stage.optimizer()?),
            },
        )?;
        let key = student_name.clone();
        if let Some(p) = resume {
            let (what, state) = folder.read_state(index, p.epoch, &format!("{key}.train-state"))?;
            dfad.load_state(gpu, &what, &state)?;
        }
        let eval = EvalStep::compile(gpu, &student, &student_weights)?;
        let images_per_epoch = g.iterations * (1 + g.student_steps) * batch;
        let mut trained = 0usize;
        for epoch in start_epoch..stage.epochs {
            if self.opts.stop_after == Some((index, epoch)) {
                return Err(input_error(
                    self.opts.out.display().to_string(),
                    format!(
                        "interrupted before epoch {} of stage {}",
                        epoch + 1,
                        stage.name
                    ),
                ));
            }
            let lr = learning_rate(stage.optimizer()?, epoch, stage.epochs);
            dfad.set_student_learning_rate(gpu, lr);
            dfad.set_generator_learning_rate(gpu, learning_rate(&g.optimizer, epoch, stage.epochs));
            let bar = progress_bar(
                self.opts.progress,
                g.iterations,
                &format!("{} {}/{}", stage.name, epoch + 1, stage.epochs),
            );
            let epoch_start = Instant::now();
            // Every step's noise from (stage, epoch, step): a resumed epoch draws the same.
            let draw = |i: usize, k: usize| seed_of(seed, &format!("{epoch}/{i}/{k}"));
            for i in 0..g.iterations {
                dfad.generator_step(gpu, draw(i, 0))?;
                for k in 0..g.student_steps {
                    dfad.student_step(gpu, draw(i, k + 1))?;
                }
                bar.inc(1);
            }
            let [g_loss, s_loss] = dfad.discrepancies(gpu)?;
            let balance = dfad.balance(gpu)?;
            bar.finish_and_clear();
            let seconds = epoch_start.elapsed().as_secs_f64();
            trained += images_per_epoch;
            if !(g_loss.is_finite() && s_loss.is_finite()) {
                return Err(input_error(
                    format!("stage '{}'", stage.name),
                    format!(
                        "diverged in epoch {} (discrepancy {s_loss}): lower optimizer.lr or generator.optimizer.lr",
                        epoch + 1
                    ),
                ));
            }
            last = accuracy(gpu, &eval, &student, test)?;
            best = best.max(last);
            let (steps_g, steps_s) = dfad.steps_taken(gpu)?;
            let metrics = vec![serde_json::json!({
                "stage": stage.name, "model": student_name, "epoch": epoch + 1, "lr": lr,
                "train_loss": s_loss, "train_loss_mean": s_loss, "generator_discrepancy": g_loss,
                "test_accuracy": last, "seconds": seconds, "samples_per_second": images_per_epoch as f64 / seconds,
                "generator_steps": steps_g, "generator_balance": balance,
            })];
            let files = EpochFiles {
                models: vec![(
                    student_name.clone(),
                    export(gpu, &student, &student_weights, steps_s)?,
                )],
                state: (key.clone(), dfad.save_state(gpu)?),
                heads: None,
                metrics,
                progress: Progress::after_epoch(
                    config,
                    index,
                    epoch + 1,
                    (vec![best], vec![last]),
                    done,
                ),
            };
            folder.commit_epoch(index, epoch + 1, &files)?;
            log(&format!(
                "{} epoch {}/{}: discrepancy {s_loss:.4} (generator's {g_loss:.4}, class balance {balance:.3}), test accuracy {last:.4}, {:.0} generated images/s",
                stage.name,
                epoch + 1,
                stage.epochs,
                images_per_epoch as f64 / seconds
            ));
        }
        if start_epoch == stage.epochs {
            let (_, steps) = dfad.steps_taken(gpu)?;
            let e = export(gpu, &student, &student_weights, steps)?;
            folder.rewrite_exports(&[(student_name.clone(), e)], None)?;
        }
        // What the generator makes at the end, one column per class the teacher sees in it (when
        // this run stepped: one resumed after the last epoch has no images of its own).
        if start_epoch < stage.epochs {
            let images = dfad.images(gpu)?;
            let by_class =
                sorted_by_teacher(gpu, &teacher, teacher_weights, &images, self.shapes.classes)?;
            let grid = synthetic_dir(&self.opts.out)?.join(format!("{}.png", stage.name));
            write_grid(&grid, &by_class, self.shapes.image, self.shapes.classes)?;
        }
        models.insert(student_name.clone(), student_weights);
        let wall = started.elapsed().as_secs_f64();
        Ok(StageSummary {
            name: stage.name.clone(),
            epochs: stage.epochs,
            wall_seconds: wall,
            samples_per_second: trained as f64 / wall,
            models: vec![ModelResult::new(student_name, last, best)],
            lifelong: None,
        })
    }
}

/// The images laid out for a per-class grid: row r holds, in column c, the r-th image the
/// teacher classifies as c (a blank where there are fewer).
fn sorted_by_teacher(
    gpu: &crate::gpu::Gpu,
    teacher: &Graph,
    weights: &Weights,
    images: &[f32],
    classes: usize,
) -> Result<Vec<f32>> {
    let logits = EvalStep::compile(gpu, teacher, weights)?.run(gpu, images)?;
    let n = logits.len() / classes;
    let per = images.len() / n.max(1);
    let mut by: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, row) in logits.chunks(classes).enumerate() {
        by[argmax(row)].push(i);
    }
    let rows = by.iter().map(Vec::len).max().unwrap_or(0).clamp(1, 10);
    let blank = vec![-FASHION_MNIST_MEAN / FASHION_MNIST_STD; per];
    let mut out = Vec::with_capacity(rows * classes * per);
    for r in 0..rows {
        for class in &by {
            match class.get(r) {
                Some(&i) => out.extend_from_slice(&images[i * per..(i + 1) * per]),
                None => out.extend_from_slice(&blank),
            }
        }
    }
    Ok(out)
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .unwrap_or(0)
}
