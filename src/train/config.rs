//! The staged training configuration (TOML): named models and a list of stages. Parsing rejects
//! unknown keys and wrong types with the key's path; [`Config::check`] then rejects unknown
//! models, taps and loss settings, all before any GPU work.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::Result;
use crate::error::input_error;
use crate::graph::Graph;
use crate::models;

/// The example configuration, run by `wgdistill` with no arguments.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// A whole run.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Seed for initialisation, shuffling and augmentation.
    #[serde(default)]
    pub seed: u64,
    /// The data set and batching.
    pub data: DataConfig,
    /// Models by name.
    pub models: BTreeMap<String, ModelConfig>,
    /// Stages, run in order.
    pub stages: Vec<StageConfig>,
}

/// Which data set.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// Fashion-MNIST from IDX files.
    FashionMnist,
    /// The built-in synthetic set.
    Synthetic,
}

/// `[data]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `fashion-mnist` or `synthetic`.
    pub dataset: DatasetKind,
    /// Samples per step.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Use only the first N training samples.
    pub train_limit: Option<usize>,
    /// Use only the first N test samples.
    pub test_limit: Option<usize>,
    /// Random crop with padding and horizontal flips.
    #[serde(default)]
    pub augment: bool,
    /// Compute each frozen teacher's outputs once, store them in the teacher-output cache and
    /// replay them in every epoch and later runs (needs `augment = false`).
    #[serde(default)]
    pub teacher_cache: bool,
}

fn default_batch() -> usize {
    128
}

/// `[models.NAME]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase", deny_unknown_fields)]
pub enum ModelConfig {
    /// A multi-layer perceptron.
    Mlp {
        /// Hidden widths.
        hidden: Vec<usize>,
        /// Weights to load instead of training from scratch.
        checkpoint: Option<String>,
    },
    /// conv-bn-relu-pool stacks and a linear classifier.
    Cnn {
        /// Channels per block.
        #[serde(default = "default_channels")]
        channels: Vec<usize>,
        /// Weights to load.
        checkpoint: Option<String>,
    },
    /// A CIFAR-style ResNet.
    Resnet {
        /// 6n + 2.
        depth: usize,
        /// Stage widths.
        #[serde(default = "default_widths")]
        widths: [usize; 3],
        /// Weights to load.
        checkpoint: Option<String>,
    },
}

fn default_channels() -> Vec<usize> {
    vec![32, 64]
}

fn default_widths() -> [usize; 3] {
    [16, 32, 64]
}

impl ModelConfig {
    /// The checkpoint to load, if any.
    pub fn checkpoint(&self) -> Option<&str> {
        match self {
            ModelConfig::Mlp { checkpoint, .. }
            | ModelConfig::Cnn { checkpoint, .. }
            | ModelConfig::Resnet { checkpoint, .. } => checkpoint.as_deref(),
        }
    }

    /// The model's graph for inputs of `input` shape and `classes` outputs.
    pub fn graph(&self, input: [usize; 4], classes: usize) -> Result<Graph> {
        match self {
            ModelConfig::Mlp { hidden, .. } => models::mlp(input, hidden, classes),
            ModelConfig::Cnn { channels, .. } => models::cnn(input, channels, classes),
            ModelConfig::Resnet { depth, widths, .. } => {
                models::resnet(input, *depth, *widths, classes)
            }
        }
    }
}

/// `[[stages]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Name, for reports.
    pub name: String,
    /// Models trained in this stage.
    pub train: Vec<String>,
    /// Frozen teachers. With several, KD terms target the weighted mixture of their softened
    /// outputs and feature terms name their teacher (`teacher_tap = "t1.hidden.1"`).
    #[serde(default)]
    pub teachers: Vec<String>,
    /// The teachers' weights in the KD target (equal when absent; normalised to sum to one).
    pub teacher_weights: Option<Vec<f32>>,
    /// Passes over the training data.
    pub epochs: usize,
    /// The optimizer.
    pub optimizer: OptimizerConfig,
    /// Loss terms.
    pub losses: Vec<LossConfig>,
    /// Self-distillation (Be Your Own Teacher): auxiliary classifier heads on these taps of the
    /// one model trained. `ce` then applies to the model's logits and every head's; `kd`/`dkd`
    /// pull each head toward the model's own (detached) logits; feature terms pull each head's
    /// tap toward their `teacher_tap`, a deeper tap of the same model (detached). Heads train
    /// with the model and are not exported.
    #[serde(default)]
    pub heads: Vec<String>,
    /// Overrides `data.augment` for this stage (say, augmentation for a teacher trained from
    /// scratch, none for the students that use the teacher-output cache).
    pub augment: Option<bool>,
    /// With `--seeds N`, train this stage in the first seed only; the other seeds start from its
    /// models (the usual protocol for distillation results: one teacher, students over seeds).
    /// Only leading stages can be `once`.
    #[serde(default)]
    pub once: bool,
}

impl StageConfig {
    /// The teachers' mixture weights, normalised.
    pub fn teacher_mixture(&self) -> Vec<f32> {
        let raw = self
            .teacher_weights
            .clone()
            .unwrap_or_else(|| vec![1.0; self.teachers.len()]);
        let sum: f32 = raw.iter().sum();
        raw.iter().map(|w| w / sum).collect()
    }

    /// The temperature of the stage's KD terms (4 when none sets one); several teachers need one
    /// temperature for their mixture.
    pub fn kd_temperature(&self) -> std::result::Result<f32, String> {
        let ts: Vec<f32> = self
            .losses
            .iter()
            .filter(|l| matches!(l.kind, LossName::Kd | LossName::Dkd))
            .map(|l| l.temperature.unwrap_or(4.0))
            .collect();
        match ts.first() {
            None => Ok(4.0),
            Some(&t) if ts.iter().all(|&u| u == t) => Ok(t),
            Some(_) => Err(format!(
                "with several teachers every kd/dkd term needs the same temperature, got {ts:?}"
            )),
        }
    }
}

/// Which optimizer.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// `torch.optim.SGD`.
    Sgd,
    /// `torch.optim.AdamW`.
    Adamw,
}

/// The learning-rate schedule over epochs.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Constant.
    #[default]
    Constant,
    /// Multiplied by `gamma` every `step_size` epochs.
    Step,
    /// Cosine annealing to zero over the stage.
    Cosine,
}

/// `optimizer = { … }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// `sgd` or `adamw`.
    pub kind: OptimizerKind,
    /// Learning rate.
    pub lr: f32,
    /// SGD momentum.
    #[serde(default)]
    pub momentum: f32,
    /// SGD Nesterov momentum.
    #[serde(default)]
    pub nesterov: bool,
    /// Weight decay (L2 for SGD, decoupled for AdamW).
    pub weight_decay: Option<f32>,
    /// AdamW (β₁, β₂).
    pub betas: Option<[f64; 2]>,
    /// AdamW ε.
    pub eps: Option<f32>,
    /// `constant`, `step` or `cosine`.
    #[serde(default)]
    pub schedule: ScheduleKind,
    /// Step schedule: epochs between decays.
    pub step_size: Option<usize>,
    /// Step schedule: decay factor.
    pub gamma: Option<f32>,
    /// Linear warm-up of the learning rate over the first epochs.
    #[serde(default)]
    pub warmup_epochs: usize,
}

/// Loss kinds by their config names.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LossName {
    /// Cross-entropy.
    Ce,
    /// Hinton KD.
    Kd,
    /// Decoupled KD.
    Dkd,
    /// FitNet hint.
    Hint,
    /// Attention transfer.
    At,
    /// Similarity preserving.
    Sp,
    /// RKD distance.
    RkdDistance,
    /// RKD angle.
    RkdAngle,
    /// PKT.
    Pkt,
}

/// Adapter names.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AdapterName {
    /// A Linear regressor.
    Linear,
    /// A 1×1 convolution.
    Conv1x1,
}

/// One entry of `losses = [ … ]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    /// Which loss.
    pub kind: LossName,
    /// Weight in the total.
    #[serde(default = "one")]
    pub weight: f32,
    /// kd, dkd: temperature.
    pub temperature: Option<f32>,
    /// dkd: TCKD weight.
    pub alpha: Option<f32>,
    /// dkd: NCKD weight.
    pub beta: Option<f32>,
    /// at: exponent.
    pub p: Option<f32>,
    /// Student tap (logits when absent).
    pub student_tap: Option<String>,
    /// Teacher tap (logits when absent).
    pub teacher_tap: Option<String>,
    /// A trainable regressor from the student tap to the teacher's.
    pub adapter: Option<AdapterName>,
    /// Linear warm-up of the weight over the first epochs (as DKD uses).
    #[serde(default)]
    pub warmup_epochs: usize,
}

fn one() -> f32 {
    1.0
}

/// Parses a configuration; `what` names it in errors, which give the key path and line.
pub fn parse(what: &str, text: &str) -> Result<Config> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| located(what, text, &e, None))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        located(what, text, e.inner(), Some(path))
    })
}

fn located(what: &str, text: &str, e: &toml::de::Error, path: Option<String>) -> crate::Error {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
    let at = match (line, path.filter(|p| p != ".")) {
        (Some(l), Some(p)) => format!("{what}:{l}: {p}"),
        (Some(l), None) => format!("{what}:{l}"),
        (None, Some(p)) => format!("{what}: {p}"),
        (None, None) => what.to_string(),
    };
    input_error(
        at,
        e.message().split_whitespace().collect::<Vec<_>>().join(" "),
    )
}

impl LossName {
    fn needs_teacher(self) -> bool {
        self != LossName::Ce
    }
}

impl Config {
    /// How many leading stages are `once`: trained in the first seed only.
    pub fn once_stages(&self) -> usize {
        self.stages.iter().take_while(|s| s.once).count()
    }

    /// Checks names, taps and settings across the whole configuration; `what` names it in errors.
    pub fn check(&self, what: &str) -> Result<()> {
        let err = |path: String, message: String| input_error(format!("{what}: {path}"), message);
        if self.data.batch_size < 2 {
            return Err(err(
                "data.batch_size".into(),
                format!("must be at least 2, got {}", self.data.batch_size),
            ));
        }
        if self.stages.is_empty() {
            return Err(err("stages".into(), "at least one stage is needed".into()));
        }
        let leading = self.once_stages();
        if let Some(i) = self.stages.iter().skip(leading).position(|s| s.once) {
            return Err(err(
                format!("stages[{}].once", leading + i),
                "only the leading stages can be trained once (move it before the others)".into(),
            ));
        }
        if self.data.teacher_cache {
            // Augmented images differ every epoch, so a teacher's outputs cannot be reused.
            for (i, stage) in self.stages.iter().enumerate() {
                if !stage.teachers.is_empty() && stage.augment.unwrap_or(self.data.augment) {
                    let key = if stage.augment.is_some() {
                        format!("stages[{i}].augment")
                    } else {
                        "data.teacher_cache".into()
                    };
                    return Err(err(
                        key,
                        format!(
                            "data.teacher_cache needs augmentation off in stages with teachers ('{}'): set augment = false there or in [data]",
                            stage.name
                        ),
                    ));
                }
            }
        }
        let input = [self.data.batch_size, 1, 28, 28];
        let mut graphs = BTreeMap::new();
        for (name, m) in &self.models {
            graphs.insert(
                name.as_str(),
                m.graph(input, 10)
                    .map_err(|e| err(format!("models.{name}"), e.to_string()))?,
            );
        }
        let model_names = || self.models.keys().cloned().collect::<Vec<_>>().join(", ");
        let mut available: Vec<&str> = self
            .models
            .iter()
            .filter(|(_, m)| m.checkpoint().is_some())
            .map(|(n, _)| n.as_str())
            .collect();
        for (i, stage) in self.stages.iter().enumerate() {
            let at = |key: &str| format!("stages[{i}].{key}");
            let mut seen = std::collections::BTreeSet::new();
            if stage.train.is_empty() || !stage.train.iter().all(|m| seen.insert(m)) {
                return Err(err(
                    at("train"),
                    format!("needs one or more distinct models, got {:?}", stage.train),
                ));
            }
            if let Some(w) = &stage.teacher_weights {
                if w.len() != stage.teachers.len() || w.iter().any(|v| !(v.is_finite() && *v > 0.0))
                {
                    return Err(err(
                        at("teacher_weights"),
                        format!(
                            "need one positive weight per teacher ({}), got {w:?}",
                            stage.teachers.len()
                        ),
                    ));
                }
            }
            for (j, m) in stage.train.iter().chain(&stage.teachers).enumerate() {
                if !self.models.contains_key(m) {
                    let key = if j < stage.train.len() {
                        format!("train[{j}]")
                    } else {
                        format!("teachers[{}]", j - stage.train.len())
                    };
                    return Err(err(
                        at(&key),
                        format!("unknown model '{m}'; models are {}", model_names()),
                    ));
                }
            }
            for (j, t) in stage.teachers.iter().enumerate() {
                if !available.contains(&t.as_str()) {
                    return Err(err(
                        at(&format!("teachers[{j}]")),
                        format!(
                            "'{t}' is neither trained in an earlier stage nor loaded from a checkpoint"
                        ),
                    ));
                }
            }
            if stage.epochs == 0 {
                return Err(err(at("epochs"), "must be at least 1".into()));
            }
            let o = &stage.optimizer;
            if !(o.lr.is_finite() && o.lr > 0.0) {
                return Err(err(
                    at("optimizer.lr"),
                    format!("must be a number > 0, got {}", o.lr),
                ));
            }
            if o.kind == OptimizerKind::Sgd && (o.betas.is_some() || o.eps.is_some()) {
                return Err(err(
                    at("optimizer"),
                    "betas and eps belong to adamw, not sgd".into(),
                ));
            }
            if o.kind == OptimizerKind::Adamw && (o.momentum != 0.0 || o.nesterov) {
                return Err(err(
                    at("optimizer"),
                    "momentum and nesterov belong to sgd, not adamw".into(),
                ));
            }
            if o.schedule != ScheduleKind::Step && (o.step_size.is_some() || o.gamma.is_some()) {
                return Err(err(
                    at("optimizer"),
                    "step_size and gamma need schedule = \"step\"".into(),
                ));
            }
            if stage.losses.is_empty() {
                return Err(err(at("losses"), "at least one loss term is needed".into()));
            }
            if !stage.heads.is_empty() {
                if stage.train.len() != 1 || !stage.teachers.is_empty() {
                    return Err(err(
                        at("heads"),
                        "self-distillation trains one model by itself: one model in train, no teachers".into(),
                    ));
                }
                let model = &graphs[stage.train[0].as_str()];
                for (j, h) in stage.heads.iter().enumerate() {
                    model
                        .tapped(h)
                        .map_err(|e| err(at(&format!("heads[{j}]")), e.to_string()))?;
                    if h == "logits" || stage.heads[..j].contains(h) {
                        return Err(err(
                            at(&format!("heads[{j}]")),
                            format!("'{h}' is the model's output or already has a head"),
                        ));
                    }
                }
                if let Some((j, _)) = stage
                    .losses
                    .iter()
                    .enumerate()
                    .find(|(_, l)| l.kind != LossName::Ce && l.student_tap.is_some())
                {
                    return Err(err(
                        at(&format!("losses[{j}].student_tap")),
                        "with heads, the student side of each term is the head (its logits, or its tap for feature terms)".into(),
                    ));
                }
            }
            let ensemble = if stage.teachers.len() > 1 {
                let parts: Vec<(&str, &Graph)> = stage
                    .teachers
                    .iter()
                    .map(|t| (t.as_str(), &graphs[t.as_str()]))
                    .collect();
                let weights = stage.teacher_mixture();
                let t = stage.kd_temperature().map_err(|m| err(at("losses"), m))?;
                Some(
                    Graph::ensemble(&parts, &weights, t)
                        .map_err(|e| err(at("teachers"), e.to_string()))?,
                )
            } else {
                None
            };
            let teacher = ensemble
                .as_ref()
                .or_else(|| stage.teachers.first().map(|t| &graphs[t.as_str()]));
            for (j, l) in stage.losses.iter().enumerate() {
                let lat = |key: &str| at(&format!("losses[{j}]{key}"));
                let allowed: &[&str] = match l.kind {
                    LossName::Kd => &["temperature"],
                    LossName::Dkd => &["temperature", "alpha", "beta"],
                    LossName::At => &["p"],
                    _ => &[],
                };
                for (key, set) in [
                    ("temperature", l.temperature.is_some()),
                    ("alpha", l.alpha.is_some()),
                    ("beta", l.beta.is_some()),
                    ("p", l.p.is_some()),
                ] {
                    if set && !allowed.contains(&key) {
                        return Err(err(
                            lat(&format!(".{key}")),
                            format!("{:?} takes no {key}", l.kind).to_lowercase(),
                        ));
                    }
                }
                if l.temperature.is_some_and(|t| !(t.is_finite() && t > 0.0)) {
                    return Err(err(lat(".temperature"), "must be a number > 0".into()));
                }
                let peers = stage.train.len() > 1 && matches!(l.kind, LossName::Kd | LossName::Dkd);
                let own = !stage.heads.is_empty();
                if l.kind.needs_teacher() && teacher.is_none() && !peers && !own {
                    return Err(err(
                        lat(".kind"),
                        format!(
                            "{:?} needs a teacher: add teachers = [\"…\"] to the stage",
                            l.kind
                        )
                        .to_lowercase(),
                    ));
                }
                if l.kind == LossName::Ce && (l.teacher_tap.is_some() || l.adapter.is_some()) {
                    return Err(err(
                        lat(""),
                        "ce uses the labels: it takes no teacher_tap or adapter".into(),
                    ));
                }
                let tap = l.student_tap.as_deref().unwrap_or("logits");
                for m in &stage.train {
                    graphs[m.as_str()]
                        .tapped(tap)
                        .map_err(|e| err(lat(".student_tap"), e.to_string()))?;
                }
                // With heads the model is its own teacher.
                let teacher = teacher.or_else(|| own.then(|| &graphs[stage.train[0].as_str()]));
                if let Some(t) = teacher {
                    let tap = l.teacher_tap.as_deref().unwrap_or("logits");
                    t.tapped(tap)
                        .map_err(|e| err(lat(".teacher_tap"), e.to_string()))?;
                }
            }
            available.extend(stage.train.iter().map(String::as_str));
        }
        Ok(())
    }
}
