//! The staged training configuration (TOML): named models and a list of stages. Parsing rejects
//! unknown keys and wrong types with the key's path; [`Config::check`] then rejects unknown
//! models, taps and loss settings, all before any GPU work.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::error::input_error;
use crate::graph::{Adapter, Graph, adapter_graph, paraphraser_graph};
use crate::kernels::losses::{self, Loss, LossDef};
use crate::models;

use super::adversarial::{self, DiscriminatorConfig};
use super::data_free::{self, GeneratorConfig, SynthesisConfig};
use super::method::{Fault, Method};

/// The example configuration, run by `wgdistill` with no arguments.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// A whole run.
#[derive(Clone, Debug, Deserialize, Serialize)]
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
    /// `wgdistill search`: an architecture search for a student of the teacher the stages
    /// train (or a checkpoint holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<super::search::SearchConfig>,
}

/// Which data set.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// Fashion-MNIST from IDX files.
    FashionMnist,
    /// The built-in synthetic set.
    Synthetic,
}

/// `[data]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
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

fn is_image(m: &models::Modality) -> bool {
    *m == models::Modality::Image
}

fn default_batch() -> usize {
    128
}

/// `[models.NAME]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "arch", rename_all = "lowercase", deny_unknown_fields)]
pub enum ModelConfig {
    /// A multi-layer perceptron.
    Mlp {
        /// Hidden widths.
        hidden: Vec<usize>,
        /// What it sees of each image: `image` (the default), `thumbnail` or `profiles`
        /// (cross-modal distillation; see [`models::Modality`]).
        #[serde(default, skip_serializing_if = "is_image")]
        modality: models::Modality,
        /// Weights to load instead of training from scratch.
        checkpoint: Option<String>,
        /// Layers factorised to low rank: layer name → rank (see [`ModelConfig::low_rank`]).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        low_rank: BTreeMap<String, usize>,
        /// Quantisation-aware training (see [`ModelConfig::qat`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        qat: bool,
        /// Export as int8 after training (see [`ModelConfig::int8`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        int8: bool,
    },
    /// conv-bn-relu-pool stacks and a linear classifier.
    Cnn {
        /// Channels per block.
        #[serde(default = "default_channels")]
        channels: Vec<usize>,
        /// The convolutions' kernel size (odd; 3 by default).
        #[serde(default = "three", skip_serializing_if = "is_three")]
        kernel: usize,
        /// What it sees of each image: `image` (the default) or `thumbnail`.
        #[serde(default, skip_serializing_if = "is_image")]
        modality: models::Modality,
        /// Weights to load.
        checkpoint: Option<String>,
        /// Layers factorised to low rank: layer name → rank (see [`ModelConfig::low_rank`]).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        low_rank: BTreeMap<String, usize>,
        /// Quantisation-aware training (see [`ModelConfig::qat`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        qat: bool,
        /// Export as int8 after training (see [`ModelConfig::int8`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        int8: bool,
    },
    /// A MobileNet-style network of depthwise-separable blocks.
    Mobilenet {
        /// Width multiplier on every channel count.
        #[serde(default = "default_width")]
        width: f64,
        /// `relu` (the default) or `relu6` after every batch norm.
        #[serde(default)]
        activation: models::Activation,
        /// Weights to load.
        checkpoint: Option<String>,
        /// Layers factorised to low rank: layer name → rank (see [`ModelConfig::low_rank`]).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        low_rank: BTreeMap<String, usize>,
        /// Quantisation-aware training (see [`ModelConfig::qat`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        qat: bool,
        /// Export as int8 after training (see [`ModelConfig::int8`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        int8: bool,
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
        /// Layers factorised to low rank: layer name → rank (see [`ModelConfig::low_rank`]).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        low_rank: BTreeMap<String, usize>,
        /// Quantisation-aware training (see [`ModelConfig::qat`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        qat: bool,
        /// Export as int8 after training (see [`ModelConfig::int8`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        int8: bool,
    },
    /// ONE's multi-branch network on the cnn's blocks (see [`models::one`]): trained online,
    /// its gated ensemble the teacher of every branch; one branch is deployed.
    One {
        /// Channels per block; the last block is each branch's own.
        #[serde(default = "default_channels")]
        channels: Vec<usize>,
        /// Branches (2 to 8).
        #[serde(default = "default_branches")]
        branches: usize,
        /// Weights to load.
        checkpoint: Option<String>,
        /// Layers factorised to low rank: layer name → rank (see [`ModelConfig::low_rank`]).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        low_rank: BTreeMap<String, usize>,
        /// Quantisation-aware training (see [`ModelConfig::qat`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        qat: bool,
        /// Export as int8 after training (see [`ModelConfig::int8`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        int8: bool,
    },
}

fn default_branches() -> usize {
    3
}

fn three() -> usize {
    3
}

fn is_three(k: &usize) -> bool {
    *k == 3
}

fn default_channels() -> Vec<usize> {
    vec![32, 64]
}

fn default_width() -> f64 {
    1.0
}

fn default_widths() -> [usize; 3] {
    [16, 32, 64]
}

impl ModelConfig {
    /// Its branches (ONE), 0 for a single-branch model.
    pub fn branches(&self) -> usize {
        match self {
            ModelConfig::One { branches, .. } => *branches,
            _ => 0,
        }
    }

    /// The same model, loaded from `file`.
    pub fn with_checkpoint(mut self, file: String) -> ModelConfig {
        match &mut self {
            ModelConfig::Mlp { checkpoint, .. }
            | ModelConfig::Cnn { checkpoint, .. }
            | ModelConfig::Mobilenet { checkpoint, .. }
            | ModelConfig::Resnet { checkpoint, .. }
            | ModelConfig::One { checkpoint, .. } => *checkpoint = Some(file),
        }
        self
    }

    /// The checkpoint to load, if any.
    pub fn checkpoint(&self) -> Option<&str> {
        match self {
            ModelConfig::Mlp { checkpoint, .. }
            | ModelConfig::Cnn { checkpoint, .. }
            | ModelConfig::Mobilenet { checkpoint, .. }
            | ModelConfig::Resnet { checkpoint, .. }
            | ModelConfig::One { checkpoint, .. } => checkpoint.as_deref(),
        }
    }

    /// `low_rank = { LAYER = RANK, … }`: each named Linear or Conv2d layer replaced by two thin
    /// ones (`LAYER.0` to RANK outputs, `LAYER.1` back to the layer's outputs), filled from a
    /// truncated SVD of a trained model's layer when a stage starts from it (`start_from`).
    pub fn low_rank(&self) -> &BTreeMap<String, usize> {
        match self {
            ModelConfig::Mlp { low_rank, .. }
            | ModelConfig::Cnn { low_rank, .. }
            | ModelConfig::Mobilenet { low_rank, .. }
            | ModelConfig::Resnet { low_rank, .. }
            | ModelConfig::One { low_rank, .. } => low_rank,
        }
    }

    /// `qat = true`: the model trains with fake quantisers on its input, weights and
    /// activations, as PyTorch's quantisation-aware training ([`crate::graph::qat`]).
    pub fn qat(&self) -> bool {
        match self {
            ModelConfig::Mlp { qat, .. }
            | ModelConfig::Cnn { qat, .. }
            | ModelConfig::Mobilenet { qat, .. }
            | ModelConfig::Resnet { qat, .. }
            | ModelConfig::One { qat, .. } => *qat,
        }
    }

    /// `int8 = true` (with `qat = true`): after each stage that trains the model, its int8
    /// export ([`crate::graph::int8`]) is written beside its checkpoint
    /// (`checkpoints/NAME.int8.safetensors`) and evaluated with the integer kernels.
    pub fn int8(&self) -> bool {
        match self {
            ModelConfig::Mlp { int8, .. }
            | ModelConfig::Cnn { int8, .. }
            | ModelConfig::Mobilenet { int8, .. }
            | ModelConfig::Resnet { int8, .. }
            | ModelConfig::One { int8, .. } => *int8,
        }
    }

    /// The model's graph for inputs of `input` shape and `classes` outputs, factorised where
    /// [`Self::low_rank`] says and quantisation-aware where [`Self::qat`] says.
    pub fn graph(&self, input: [usize; 4], classes: usize) -> Result<Graph> {
        let whole = self.whole_graph(input, classes)?;
        let split = match self.low_rank() {
            ranks if ranks.is_empty() => whole,
            ranks => whole.factorised(ranks)?,
        };
        if self.qat() {
            split.quantization_aware(crate::graph::qat::DEFAULT_AVERAGING)
        } else {
            Ok(split)
        }
    }

    /// The architecture's graph before any factorisation.
    fn whole_graph(&self, input: [usize; 4], classes: usize) -> Result<Graph> {
        match self {
            ModelConfig::Mlp {
                hidden, modality, ..
            } => models::mlp_seeing(input, hidden, classes, *modality),
            ModelConfig::Cnn {
                channels,
                kernel,
                modality,
                ..
            } => models::cnn_with_kernel(input, channels, *kernel, classes, *modality),
            ModelConfig::Mobilenet {
                width, activation, ..
            } => models::mobilenet(input, *width, *activation, classes),
            ModelConfig::Resnet { depth, widths, .. } => {
                models::resnet(input, *depth, *widths, classes)
            }
            ModelConfig::One {
                channels, branches, ..
            } => models::one(input, channels, *branches, classes),
        }
    }
}

/// What a stage does.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// Trains its models on the training set (or a synthesised `transfer` set) with its loss
    /// terms.
    #[default]
    Train,
    /// Synthesises a transfer set from its one teacher (DeepInversion; settings in
    /// `synthesis`), for later stages' `transfer`.
    DeepInversion,
    /// Trains its one model against a generator, from its one teacher and no data
    /// (data-free adversarial distillation; settings in `generator`).
    Dfad,
    /// Trains its one model on the classes in tasks, one task after another, the model after
    /// each task the teacher of the next (lifelong distillation; settings in `lifelong`).
    Lifelong,
}

/// `[[stages]]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[derive(Default)]
pub struct StageConfig {
    /// Name, for reports.
    pub name: String,
    /// `train` (the default), `deep_inversion`, `dfad` or `lifelong`.
    #[serde(default)]
    pub kind: StageKind,
    /// Models trained in this stage.
    #[serde(default)]
    pub train: Vec<String>,
    /// Frozen teachers. With several, KD terms target the weighted mixture of their softened
    /// outputs and feature terms name their teacher (`teacher_tap = "t1.hidden.1"`).
    #[serde(default)]
    pub teachers: Vec<String>,
    /// The teachers' weights in the KD target (equal when absent; normalised to sum to one).
    pub teacher_weights: Option<Vec<f32>>,
    /// Passes over the training data (for `dfad`, rounds of `generator.iterations`; for
    /// `lifelong`, passes over each task's data).
    #[serde(default)]
    pub epochs: usize,
    /// The optimizer of the trained models (required by `train` and `dfad` stages).
    pub optimizer: Option<OptimizerConfig>,
    /// Loss terms.
    #[serde(default)]
    pub losses: Vec<LossConfig>,
    /// `deep_inversion`: how the transfer set is synthesised.
    pub synthesis: Option<SynthesisConfig>,
    /// `dfad`: the generator and its schedule.
    pub generator: Option<GeneratorConfig>,
    /// `lifelong`: the tasks, the exemplar memory, joint training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifelong: Option<super::lifelong::LifelongConfig>,
    /// Train on the images the named earlier `deep_inversion` stage synthesised (labelled with
    /// the classes they were made for) instead of the data set's training images.
    pub transfer: Option<String>,
    /// A discriminator the trained model plays against (adversarial distillation).
    pub discriminator: Option<DiscriminatorConfig>,
    /// Magnitude pruning of the trained model's weights, to a sparsity reached gradually.
    pub prune: Option<super::prune::PruneConfig>,
    /// The one model trained starts as a copy of this model's weights (the same architecture)
    /// as the earlier stages left them or its checkpoint holds them: a trained network to prune
    /// or compress, say, while the original stays as it is (a dense teacher).
    pub start_from: Option<String>,
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
    /// Hides the labels of all but this many training images from the stage's label terms
    /// (`ce`, `dkd`: their mean runs over each batch's labelled rows), while the terms that need
    /// no labels (KD, feature and relation terms) see every image: Hinton et al.'s setting of a
    /// small labelled set beside a large unlabelled transfer set. The labelled images are a
    /// class-balanced subset, the same in every seed ([`crate::data::labelled_subset`]); a stage
    /// of label terms alone trains on them only ([`super::stage::training_pool`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labelled: Option<usize>,
    /// With `labelled`, `false` keeps the whole stage on its labelled images, terms that need no
    /// labels included (default `true`: they see every image). For methods without a teacher
    /// (mutual learning, self-distillation), which on an unlabelled image have only their own
    /// predictions to agree with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_unlabelled: Option<bool>,
    /// Measures test accuracy every this many epochs and after the last (default 1): a stage of
    /// many short epochs, such as one on a small labelled subset, would otherwise spend most of
    /// its time on the test set. The epochs between leave `test_accuracy` out of
    /// `metrics.jsonl`, and the best accuracy is over the epochs measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_every: Option<usize>,
}

impl StageConfig {
    /// The optimizer of a `train` or `dfad` stage (present after [`Config::check`]).
    pub fn optimizer(&self) -> Result<&OptimizerConfig> {
        self.optimizer.as_ref().ok_or_else(|| {
            input_error(
                format!("stage '{}': optimizer", self.name),
                "this stage trains models and needs an optimizer",
            )
        })
    }

    /// Whether test accuracy is measured after epoch `epoch` (1-based): every `test_every`
    /// epochs, and after the last.
    pub fn tests_after(&self, epoch: usize) -> bool {
        epoch.is_multiple_of(self.test_every.unwrap_or(1).max(1)) || epoch == self.epochs
    }

    /// The last epoch up to `epoch` (1-based) after which test accuracy was measured, if any.
    pub fn last_tested(&self, epoch: usize) -> Option<usize> {
        (1..=epoch).rev().find(|&e| self.tests_after(e))
    }

    /// The epochs the stage runs in all: a lifelong stage's for every task.
    pub fn total_epochs(&self) -> usize {
        match (&self.kind, &self.lifelong) {
            (StageKind::Lifelong, Some(l)) => self.epochs * l.tasks,
            (StageKind::Lifelong, None) => {
                self.epochs * super::lifelong::LifelongConfig::default().tasks
            }
            _ => self.epochs,
        }
    }

    /// The teachers' mixture weights, normalised.
    pub fn teacher_mixture(&self) -> Vec<f32> {
        let raw = self
            .teacher_weights
            .clone()
            .unwrap_or_else(|| vec![1.0; self.teachers.len()]);
        let sum: f32 = raw.iter().sum();
        raw.iter().map(|w| w / sum).collect()
    }

    /// The temperature of the stage's terms that compare logits with a teacher (the registry's
    /// default when none sets one): several teachers are mixed at one temperature.
    pub fn kd_temperature(&self) -> std::result::Result<f32, String> {
        let ts: Vec<f32> = self
            .losses
            .iter()
            .filter_map(|l| l.loss().ok())
            .filter(|l| l.def().distils_logits())
            .filter(|l| l.def().attr("temperature").is_some())
            .map(|l| l.attr_f32("temperature"))
            .collect();
        match ts.first() {
            None => Ok(Loss::of(&crate::kernels::response::KD).attr_f32("temperature")),
            Some(&t) if ts.iter().all(|&u| u == t) => Ok(t),
            Some(_) => Err(format!(
                "with several teachers every term on the teachers' logits needs the same temperature, got {ts:?}"
            )),
        }
    }
}

/// Which optimizer.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// `torch.optim.SGD`.
    Sgd,
    /// `torch.optim.AdamW`.
    Adamw,
}

/// The learning-rate schedule over epochs.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
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
#[derive(Clone, Debug, Deserialize, Serialize)]
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

/// One entry of `losses = [ … ]`. Besides the keys below, an entry sets the attributes of its
/// loss by name (`temperature = 4.0`, `alpha = 1.0`, …: the loss registry's, with their
/// defaults and ranges); any other key is an error naming it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct LossConfig {
    /// Which loss: a name from the loss registry (`ce`, `kd`, `dkd`, `hint`, …).
    pub kind: String,
    /// Weight in the total.
    #[serde(default = "one")]
    pub weight: f32,
    /// Student tap (logits when absent).
    pub student_tap: Option<String>,
    /// Teacher tap (logits when absent).
    pub teacher_tap: Option<String>,
    /// Student taps, one per student input, for losses that read several (FSP's pair).
    pub student_taps: Option<Vec<String>>,
    /// Teacher taps, one per teacher input, likewise.
    pub teacher_taps: Option<Vec<String>>,
    /// A trainable regressor from the student tap to the teacher's.
    pub adapter: Option<Adapter>,
    /// Linear warm-up of the weight over the first epochs (as DKD uses), a step per epoch.
    #[serde(default)]
    pub warmup_epochs: usize,
    /// A smooth ramp of the weight from 0, written before every step (as ONE's code ramps its
    /// consistency weight): `rampup = { epochs = 0.5, shape = "sigmoid" }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rampup: Option<Rampup>,
    /// A paraphraser on the teacher side (FT), pretrained by reconstruction before the stage.
    pub paraphraser: Option<ParaphraserConfig>,
    /// The loss's attributes, by name.
    #[serde(flatten)]
    pub attrs: BTreeMap<String, toml::Value>,
}

/// FT's paraphraser of a term's teacher map (`paraphraser = { epochs = 1, rate = 0.5 }`): trained
/// to reconstruct the map (mean squared error, the stage's optimizer at its base learning rate)
/// before the stage's first epoch, then frozen; its encoder's factor is the term's target.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ParaphraserConfig {
    /// Epochs of reconstruction training (RepDistiller's `init_epochs`), at least 1.
    pub epochs: usize,
    /// The factor's channels as a fraction of the teacher map's (RepDistiller's k).
    #[serde(default = "half")]
    pub rate: f64,
}

fn half() -> f64 {
    0.5
}

/// A term's weight ramp: over its first `epochs` (fractional epochs allowed, so a short run can
/// ramp over part of one), the factor on its weight climbs from 0 to 1 along `shape`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rampup {
    /// Epochs of training the ramp spans, > 0.
    pub epochs: f32,
    /// `sigmoid` (the default) or `linear`.
    #[serde(default)]
    pub shape: RampShape,
}

/// How a [`Rampup`] climbs with the fraction `t` of it done.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RampShape {
    /// exp(−5 (1 − t)²): the "sigmoid-shaped" ramp of Laine & Aila's and Tarvainen & Valpola's
    /// consistency weights, which ONE's code uses; near 0 for the first third, then quickly up.
    #[default]
    Sigmoid,
    /// t.
    Linear,
}

/// A term's paraphraser and adapter fit its taps (one student, one teacher tap of an offline
/// stage): they are built here, so a shape they cannot take is an error before any training.
fn check_heads(
    j: usize,
    term: &LossConfig,
    def: &LossDef,
    student: &Graph,
    teacher: &Graph,
) -> std::result::Result<(), Fault> {
    let (s_taps, t_taps) = (term.student_taps(), term.teacher_taps());
    let one = |taps: &[String], n: usize| match (taps, n) {
        ([tap], 1) => Some(tap.clone()),
        ([], 1) => Some("logits".to_string()),
        _ => None,
    };
    let (Some(s_tap), Some(t_tap)) = (
        one(&s_taps, def.student_inputs().count()),
        one(&t_taps, def.teacher_inputs().count()),
    ) else {
        return Ok(());
    };
    let at = |key: &str| format!("losses[{j}].{key}");
    let shape_of = |g: &Graph, tap: &str| g.tapped(tap).map(|v| g.shape(v).to_vec());
    let (Ok(from), Ok(mut to)) = (shape_of(student, &s_tap), shape_of(teacher, &t_tap)) else {
        return Ok(());
    };
    if let Some(p) = &term.paraphraser {
        let g = paraphraser_graph(j, "x", &to, p.rate, false)
            .map_err(|e| (at("paraphraser"), e.to_string()))?;
        if let Some(out) = g.output {
            to = g.shape(out).to_vec();
        }
    }
    match term.adapter {
        Some(kind) if kind != Adapter::Pool && !def.has_embedding_heads() => {
            adapter_graph(kind, j, &from, &to).map_err(|e| (at("adapter"), e.to_string()))?;
        }
        _ => {}
    }
    Ok(())
}

impl LossConfig {
    /// The factor on the term's weight after `progress` epochs of its stage (fractional: the
    /// share of the current epoch's steps done counts).
    pub fn ramp(&self, progress: f32) -> f32 {
        if let Some(r) = self.rampup {
            let t = (progress / r.epochs).clamp(0.0, 1.0);
            match r.shape {
                RampShape::Sigmoid => (-5.0 * (1.0 - t).powi(2)).exp(),
                RampShape::Linear => t,
            }
        } else if self.warmup_epochs > 0 {
            ((progress.floor() + 1.0) / self.warmup_epochs as f32).min(1.0)
        } else {
            1.0
        }
    }

    /// Whether the term's weight changes during epoch `epoch` (0-based), so that it is written
    /// before every step rather than once per epoch.
    pub fn ramps_during(&self, epoch: usize) -> bool {
        self.rampup.is_some_and(|r| (epoch as f32) < r.epochs)
    }

    /// The weight is a number ≥ 0.
    pub(super) fn check_weight(&self) -> std::result::Result<(), (String, String)> {
        if self.weight.is_finite() && self.weight >= 0.0 {
            Ok(())
        } else {
            Err((
                "weight".into(),
                format!("must be a number ≥ 0, got {}", self.weight),
            ))
        }
    }

    /// The ramp settings are in range; `per_step` says whether the stage's kind writes the
    /// weights before every step (otherwise a ramp is refused rather than ignored).
    pub(super) fn check_ramp(&self, per_step: bool) -> std::result::Result<(), (String, String)> {
        let Some(r) = self.rampup else {
            return Ok(());
        };
        if self.warmup_epochs > 0 {
            return Err((
                "rampup".into(),
                "give either warmup_epochs (a linear step per epoch) or rampup, not both".into(),
            ));
        }
        if !per_step {
            return Err((
                "rampup".into(),
                "this kind of stage writes its weights once per epoch; use warmup_epochs".into(),
            ));
        }
        if !(r.epochs.is_finite() && r.epochs > 0.0 && r.epochs <= 1e4) {
            return Err((
                "rampup.epochs".into(),
                format!("must be a number of epochs in (0, 10000], got {}", r.epochs),
            ));
        }
        Ok(())
    }

    /// The student taps as written (`student_tap` or `student_taps`; none means logits).
    pub fn student_taps(&self) -> Vec<String> {
        self.student_taps
            .clone()
            .unwrap_or_else(|| self.student_tap.iter().cloned().collect())
    }

    /// The teacher taps as written (`teacher_tap` or `teacher_taps`; none means logits).
    pub fn teacher_taps(&self) -> Vec<String> {
        self.teacher_taps
            .clone()
            .unwrap_or_else(|| self.teacher_tap.iter().cloned().collect())
    }

    /// The taps fit the loss: one spelling each, and as many taps as it has inputs of that role
    /// (none for a loss of one input, which then reads the logits).
    pub fn check_taps(&self, def: &LossDef) -> std::result::Result<(), (String, String)> {
        let sides = [
            (
                "student",
                self.student_tap.is_some(),
                &self.student_taps,
                def.student_inputs().count(),
            ),
            (
                "teacher",
                self.teacher_tap.is_some(),
                &self.teacher_taps,
                def.teacher_inputs().count(),
            ),
        ];
        for (side, single, list, inputs) in sides {
            if single && list.is_some() {
                return Err((
                    format!(".{side}_taps"),
                    format!("set {side}_tap or {side}_taps, not both"),
                ));
            }
            let given = list.as_ref().map_or(usize::from(single), Vec::len);
            if given != inputs && !(given == 0 && inputs == 1) {
                let key = if list.is_some() {
                    format!(".{side}_taps")
                } else {
                    format!(".{side}_tap")
                };
                return Err((
                    key,
                    format!(
                        "{} reads {inputs} {side} input(s) ({}): give {side}_taps = [one tap each]",
                        def.name,
                        def.inputs
                            .iter()
                            .filter(|i| (side == "student")
                                == (i.role == crate::kernels::losses::Role::Student)
                                && i.role != crate::kernels::losses::Role::Labels)
                            .map(|i| i.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The registry's loss with this entry's attributes, or the key at fault (relative to the
    /// entry: `.kind`, `.temperature`) and what is wrong.
    pub fn loss(&self) -> std::result::Result<Loss, (String, String)> {
        let def = losses::find(&self.kind).map_err(|_| {
            let names: Vec<&str> = losses::registry().map(|d| d.name).collect();
            (
                ".kind".to_string(),
                format!(
                    "unknown loss '{}'; known losses: {}",
                    self.kind,
                    names.join(", ")
                ),
            )
        })?;
        let mut loss = Loss::of(def);
        for (key, value) in &self.attrs {
            let at = format!(".{key}");
            if def.attr(key).is_none() {
                let message = format!(
                    "{} takes no {key} (its attributes: {})",
                    def.name,
                    def.attr_names()
                );
                return Err((at, message));
            }
            let number = match value {
                toml::Value::Float(v) => *v,
                toml::Value::Integer(v) => *v as f64,
                other => {
                    return Err((at, format!("expected a number, got {}", other.type_str())));
                }
            };
            loss = loss.with(key, number).map_err(|e| {
                let message = match e {
                    crate::Error::Input { message, .. } => message,
                    other => other.to_string(),
                };
                (at.clone(), message)
            })?;
        }
        Ok(loss)
    }
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

/// The largest batch a configuration may ask for.
pub const MAX_BATCH: usize = 1 << 16;
/// The largest parameter tensor a model may hold (2 GiB: beyond what a storage binding holds on
/// most adapters, and beyond the kernels' 32-bit indexing).
pub const MAX_PARAMETER_BYTES: u64 = 1 << 31;
/// The most parameter bytes a model may hold in all.
pub const MAX_MODEL_BYTES: u64 = 8 << 30;
/// The most layers (MLP hidden layers, ResNet depth) a configuration may ask for.
pub const MAX_DEPTH: usize = 1202;
/// The widest layer (MLP width, CNN or ResNet channels).
pub const MAX_WIDTH: usize = 1 << 16;

/// Model names become file names: they must be identifiers.
fn check_model_name(name: &str) -> std::result::Result<(), Fault> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err((
            format!("models.{name}"),
            "a model name must be 1 to 64 letters, digits, '_' or '-' (it names the model's files), not starting with '.' or '-'".into(),
        ))
    }
}

/// Every parameter tensor's size, and the model's, within the limits, before anything is
/// allocated for them.
fn check_parameter_sizes(graph: &Graph) -> std::result::Result<(), String> {
    let mut total = 0u64;
    for (_, node) in graph.params() {
        let bytes = node
            .shape
            .iter()
            .try_fold(4u64, |acc, &d| acc.checked_mul(d as u64))
            .unwrap_or(u64::MAX);
        if bytes > MAX_PARAMETER_BYTES {
            return Err(format!(
                "parameter {} of shape {:?} needs {bytes} bytes; a tensor may hold at most {MAX_PARAMETER_BYTES}",
                node.name, node.shape
            ));
        }
        total = total.saturating_add(bytes);
    }
    if total > MAX_MODEL_BYTES {
        return Err(format!(
            "{total} bytes of parameters; a model may hold at most {MAX_MODEL_BYTES}"
        ));
    }
    Ok(())
}

impl ModelConfig {
    /// The sizes are within the limits; errors name keys relative to the model (`.kernel`,
    /// `.channels[1]`), as a (key, message) pair.
    pub fn check(&self) -> std::result::Result<(), (String, String)> {
        let widths =
            |key: &str, list: &[usize], max_len: usize| -> std::result::Result<(), Fault> {
                if list.len() > max_len {
                    return Err((
                        format!(".{key}"),
                        format!("at most {max_len} entries, got {}", list.len()),
                    ));
                }
                match list.iter().position(|&w| !(1..=MAX_WIDTH).contains(&w)) {
                    Some(i) => Err((
                        format!(".{key}[{i}]"),
                        format!("must be from 1 to {MAX_WIDTH}, got {}", list[i]),
                    )),
                    None => Ok(()),
                }
            };
        match self {
            ModelConfig::Mlp { hidden, .. } => widths("hidden", hidden, MAX_DEPTH),
            // Each block halves the 28×28 map: four leave 1×1.
            ModelConfig::Cnn {
                channels,
                kernel,
                modality,
                ..
            } => {
                if channels.is_empty() {
                    return Err((".channels".into(), "needs at least one block".into()));
                }
                if !matches!(kernel, 1 | 3 | 5 | 7) {
                    return Err((
                        ".kernel".into(),
                        format!(
                            "must be 1, 3, 5 or 7 (odd: its padding keeps the map's size), got {kernel}"
                        ),
                    ));
                }
                match modality {
                    models::Modality::Profiles => Err((
                        ".modality".into(),
                        "profiles are vectors, not maps: use arch = \"mlp\" for them".into(),
                    )),
                    // The 7×7 thumbnail takes two halvings.
                    models::Modality::Thumbnail => widths("channels", channels, 2),
                    models::Modality::Image => widths("channels", channels, 4),
                }
            }
            ModelConfig::Mobilenet { width, .. } => {
                models::check_mobilenet_width(*width).map_err(|m| (".width".into(), m))
            }
            ModelConfig::One {
                channels, branches, ..
            } => {
                if !(2..=8).contains(branches) {
                    return Err((
                        ".branches".into(),
                        format!("must be from 2 to 8, got {branches}"),
                    ));
                }
                if channels.len() < 2 {
                    return Err((
                        ".channels".into(),
                        "needs at least two blocks: shared ones and each branch's last".into(),
                    ));
                }
                widths("channels", channels, 4)
            }
            ModelConfig::Resnet {
                depth, widths: w, ..
            } => {
                if *depth > MAX_DEPTH {
                    return Err((
                        ".depth".into(),
                        format!("must be at most {MAX_DEPTH}, got {depth}"),
                    ));
                }
                widths("widths", w, 3)
            }
        }
    }
}

impl Config {
    /// A fingerprint of everything in the configuration (SHA-256 of its canonical JSON): a run
    /// records it, and `--resume` refuses to continue under another one.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let json = serde_json::to_string(self).unwrap_or_default();
        let digest = sha2::Sha256::digest(json.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Per stage, a fingerprint of everything its results depend on: the data settings and the
    /// seed, the stage, the models it trains and reads (teachers, `start_from`), and the
    /// fingerprints of the earlier stages that trained those models or synthesised its
    /// transfer set. A resumed run whose configuration changed keeps the finished stages whose
    /// fingerprint did not (a results table's rows, each trained once).
    pub fn stage_fingerprints(&self) -> Vec<String> {
        use sha2::Digest;
        let mut prints: Vec<String> = Vec::with_capacity(self.stages.len());
        // The stage that last trained each model, so far.
        let mut trained_by: BTreeMap<&str, usize> = BTreeMap::new();
        for stage in &self.stages {
            let read: std::collections::BTreeSet<&str> = stage
                .train
                .iter()
                .chain(&stage.teachers)
                .chain(&stage.start_from)
                .map(String::as_str)
                .collect();
            let models: BTreeMap<&str, Option<&ModelConfig>> =
                read.iter().map(|&m| (m, self.models.get(m))).collect();
            let transfer = stage
                .transfer
                .as_ref()
                .and_then(|t| self.stages.iter().position(|s| &s.name == t));
            let upstream: Vec<&str> = read
                .iter()
                .filter_map(|m| trained_by.get(m))
                .chain(&transfer)
                .filter_map(|&s| prints.get(s).map(String::as_str))
                .collect();
            let inputs = serde_json::json!({
                "seed": self.seed,
                "data": self.data,
                "stage": stage,
                "models": models,
                "upstream": upstream,
            });
            let digest = sha2::Sha256::digest(inputs.to_string().as_bytes());
            prints.push(digest.iter().map(|b| format!("{b:02x}")).collect());
            for m in &stage.train {
                trained_by.insert(m, prints.len() - 1);
            }
        }
        prints
    }

    /// How many leading stages are `once`: trained in the first seed only.
    pub fn once_stages(&self) -> usize {
        self.stages.iter().take_while(|s| s.once).count()
    }

    /// Checks names, taps and settings across the whole configuration, before any GPU work;
    /// `what` names it in errors, which give the key's path.
    pub fn check(&self, what: &str) -> Result<()> {
        self.check_fault()
            .map_err(|(path, message)| input_error(format!("{what}: {path}"), message))
    }

    fn check_fault(&self) -> std::result::Result<(), Fault> {
        self.check_data()?;
        self.check_stage_order()?;
        for (name, m) in &self.models {
            check_model_name(name)?;
            m.check()
                .map_err(|(key, msg)| (format!("models.{name}{key}"), msg))?;
        }
        let [c, h, w] = crate::data::IMAGE;
        let input = [self.data.batch_size, c, h, w];
        let mut graphs = BTreeMap::new();
        for (name, m) in &self.models {
            let whole = m
                .whole_graph(input, crate::data::CLASSES)
                .map_err(|e| (format!("models.{name}"), e.to_string()))?;
            crate::graph::low_rank::check(&whole, m.low_rank())
                .map_err(|(layer, msg)| (format!("models.{name}.low_rank.{layer}"), msg))?;
            let graph = m
                .graph(input, crate::data::CLASSES)
                .map_err(|e| (format!("models.{name}"), e.to_string()))?;
            check_parameter_sizes(&graph).map_err(|m| (format!("models.{name}"), m))?;
            if m.int8() {
                let key = format!("models.{name}.int8");
                if !m.qat() {
                    return Err((
                        key,
                        "an int8 export comes from quantisation-aware training: set qat = true"
                            .into(),
                    ));
                }
                crate::graph::int8::check(&graph).map_err(|e| (key.clone(), e.to_string()))?;
                // Only training stages write the export (a DFAD stage's summary has no test
                // pass to measure it with).
                if self
                    .stages
                    .iter()
                    .any(|s| s.kind == StageKind::Dfad && s.train.contains(name))
                {
                    return Err((
                        key,
                        "int8 exports are written by training stages, and a dfad stage trains this model: export it with wgdistill eval --qat --export-int8".into(),
                    ));
                }
            }
            graphs.insert(name.as_str(), graph);
        }
        // Models a stage can use as teachers: loaded from checkpoints, or trained earlier.
        let mut available: Vec<&str> = self
            .models
            .iter()
            .filter(|(_, m)| m.checkpoint().is_some())
            .map(|(n, _)| n.as_str())
            .collect();
        for (i, stage) in self.stages.iter().enumerate() {
            stage
                .check(self, &graphs, &available, &self.stages[..i])
                .map_err(|(key, message)| (format!("stages[{i}].{key}"), message))?;
            available.extend(stage.train.iter().map(String::as_str));
        }
        if let Some(s) = &self.search {
            s.check(self, &available)
                .map_err(|(key, message)| (format!("search.{key}"), message))?;
        }
        Ok(())
    }

    fn check_data(&self) -> std::result::Result<(), Fault> {
        let d = &self.data;
        if d.batch_size < 2 || d.batch_size > MAX_BATCH {
            let bound = if d.batch_size < 2 {
                "at least 2".to_string()
            } else {
                format!("at most {MAX_BATCH}")
            };
            return Err((
                "data.batch_size".into(),
                format!("must be {bound}, got {}", d.batch_size),
            ));
        }
        // A last batch of one is dropped (batch statistics need two samples), so a training
        // set needs at least two.
        if let Some(n) = d.train_limit.filter(|&n| n < 2) {
            return Err((
                "data.train_limit".into(),
                format!("must be at least 2 (a batch of one is dropped), got {n}"),
            ));
        }
        if d.test_limit == Some(0) {
            return Err(("data.test_limit".into(), "must be at least 1".into()));
        }
        if !self.data.teacher_cache {
            return Ok(());
        }
        // Augmented images differ every epoch, so a teacher's outputs cannot be reused.
        for (i, stage) in self.stages.iter().enumerate() {
            if !stage.teachers.is_empty() && stage.augment.unwrap_or(self.data.augment) {
                let key = if stage.augment.is_some() {
                    format!("stages[{i}].augment")
                } else {
                    "data.teacher_cache".into()
                };
                return Err((
                    key,
                    format!(
                        "data.teacher_cache needs augmentation off in stages with teachers ('{}'): set augment = false there or in [data]",
                        stage.name
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_stage_order(&self) -> std::result::Result<(), Fault> {
        if self.stages.is_empty() {
            return Err(("stages".into(), "at least one stage is needed".into()));
        }
        let leading = self.once_stages();
        if let Some(i) = self.stages.iter().skip(leading).position(|s| s.once) {
            return Err((
                format!("stages[{}].once", leading + i),
                "only the leading stages can be trained once (move it before the others)".into(),
            ));
        }
        Ok(())
    }
}

impl StageConfig {
    /// The stage's distillation method (after [`Config::check`], never an error).
    pub fn method(&self, config: &Config) -> Result<Method> {
        Method::of(self, self.branches(config))
            .map_err(|(key, m)| input_error(format!("{}: {key}", self.name), m))
    }

    /// The branches of the one model this stage trains (ONE), 0 otherwise.
    pub fn branches(&self, config: &Config) -> usize {
        match self.train.as_slice() {
            [one] => config.models.get(one).map_or(0, ModelConfig::branches),
            _ => 0,
        }
    }

    /// Checks one stage; errors name keys relative to it.
    fn check(
        &self,
        config: &Config,
        graphs: &BTreeMap<&str, Graph>,
        available: &[&str],
        earlier: &[StageConfig],
    ) -> std::result::Result<(), Fault> {
        let ordinary = self.kind == StageKind::Train;
        if self.labelled.is_some() && (!ordinary || self.transfer.is_some()) {
            let message = "hides labels of the data set's training images: only in a `train` \
                           stage on them (not lifelong, data-free or on a transfer set)";
            return Err(("labelled".into(), message.into()));
        }
        if self.labelled == Some(0) {
            return Err(("labelled".into(), "must be at least 1".into()));
        }
        if self.use_unlabelled.is_some() && self.labelled.is_none() {
            return Err((
                "use_unlabelled".into(),
                "says whether the stage sees the images whose labels `labelled` hides: set \
                 `labelled` too"
                    .into(),
            ));
        }
        if self.test_every == Some(0) {
            return Err(("test_every".into(), "must be at least 1 (epochs)".into()));
        }
        if self.test_every.is_some() && !ordinary {
            let message = "spaces the test evaluations of a `train` stage's epochs: only there";
            return Err(("test_every".into(), message.into()));
        }
        if data_free::check_kind(self, config, graphs, earlier)? {
            return self.check_teachers_ready(available);
        }
        if self.kind == StageKind::Lifelong {
            self.check_models(config, available)?;
            return super::lifelong::check(self, graphs);
        }
        self.check_models(config, available)?;
        if self.epochs == 0 {
            return Err(("epochs".into(), "must be at least 1".into()));
        }
        self.check_optimizer()?;
        if self.losses.is_empty() {
            return Err(("losses".into(), "at least one loss term is needed".into()));
        }
        adversarial::check(self, config, graphs)?;
        super::prune::check(self, config)?;
        self.check_start_from(config, graphs, available)?;
        let method = Method::of(self, self.branches(config))?;
        if method == Method::SelfDistillation {
            self.check_heads(&graphs[self.train[0].as_str()])?;
        }
        let ensemble = if self.teachers.len() > 1 {
            let parts: Vec<(&str, &Graph)> = self
                .teachers
                .iter()
                .map(|t| (t.as_str(), &graphs[t.as_str()]))
                .collect();
            let t = self
                .kd_temperature()
                .map_err(|m| ("losses".to_string(), m))?;
            let ensemble = Graph::ensemble(&parts, &self.teacher_mixture(), t)
                .map_err(|e| ("teachers".to_string(), e.to_string()))?;
            Some(ensemble)
        } else {
            None
        };
        // Where the terms' targets are tapped: the teacher (or ensemble), or with heads the
        // model itself.
        let target = ensemble
            .as_ref()
            .or_else(|| self.teachers.first().map(|t| &graphs[t.as_str()]))
            .or_else(|| {
                matches!(method, Method::SelfDistillation | Method::Branches(_))
                    .then(|| &graphs[self.train[0].as_str()])
            });
        for (j, term) in self.losses.iter().enumerate() {
            let at = |key: &str| format!("losses[{j}].{key}");
            term.check_weight().map_err(|(key, m)| (at(&key), m))?;
            method.check_term(j, term, !self.teachers.is_empty())?;
            term.check_ramp(true).map_err(|(key, m)| (at(&key), m))?;
            let def = term.loss().map_err(|(key, m)| (at(&key[1..]), m))?.def();
            let student_key = if term.student_taps.is_some() {
                "student_taps"
            } else {
                "student_tap"
            };
            for k in 0..def.student_inputs().count() {
                let tap = term
                    .student_taps()
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| "logits".into());
                for m in &self.train {
                    graphs[m.as_str()]
                        .tapped(&tap)
                        .map_err(|e| (at(student_key), e.to_string()))?;
                }
            }
            if let Some(t) = target {
                let teacher_key = if term.teacher_taps.is_some() {
                    "teacher_taps"
                } else {
                    "teacher_tap"
                };
                for k in 0..def.teacher_inputs().count() {
                    let tap = term
                        .teacher_taps()
                        .get(k)
                        .cloned()
                        .unwrap_or_else(|| "logits".into());
                    t.tapped(&tap)
                        .map_err(|e| (at(teacher_key), e.to_string()))?;
                }
                if method == Method::Offline {
                    check_heads(j, term, def, &graphs[self.train[0].as_str()], t)?;
                }
            }
        }
        Ok(())
    }

    /// It has an optimizer, in range (a stage that trains models).
    pub(super) fn check_optimizer(&self) -> std::result::Result<(), Fault> {
        self.optimizer
            .as_ref()
            .ok_or_else(|| {
                (
                    "optimizer".to_string(),
                    "this stage trains models: give optimizer = { kind = …, lr = … }".to_string(),
                )
            })?
            .check()
            .map_err(|(key, m)| (format!("optimizer{key}"), m))
    }

    /// The models it trains and learns from exist, are distinct, and the teachers are ready.
    fn check_models(&self, config: &Config, available: &[&str]) -> std::result::Result<(), Fault> {
        let mut seen = std::collections::BTreeSet::new();
        if self.train.is_empty() || !self.train.iter().all(|m| seen.insert(m)) {
            return Err((
                "train".into(),
                format!("needs one or more distinct models, got {:?}", self.train),
            ));
        }
        if let Some(w) = &self.teacher_weights
            && (w.len() != self.teachers.len() || w.iter().any(|v| !(v.is_finite() && *v > 0.0)))
        {
            return Err((
                "teacher_weights".into(),
                format!(
                    "need one positive weight per teacher ({}), got {w:?}",
                    self.teachers.len()
                ),
            ));
        }
        let model_names = || config.models.keys().cloned().collect::<Vec<_>>().join(", ");
        for (j, m) in self.train.iter().chain(&self.teachers).enumerate() {
            if !config.models.contains_key(m) {
                let key = if j < self.train.len() {
                    format!("train[{j}]")
                } else {
                    format!("teachers[{}]", j - self.train.len())
                };
                return Err((
                    key,
                    format!("unknown model '{m}'; models are {}", model_names()),
                ));
            }
        }
        self.check_teachers_ready(available)
    }

    /// `start_from` names a model that exists before this stage, with the trained model's
    /// parameters (names and shapes), for one trained model that has no weights yet.
    fn check_start_from(
        &self,
        config: &Config,
        graphs: &BTreeMap<&str, Graph>,
        available: &[&str],
    ) -> std::result::Result<(), Fault> {
        let Some(source) = &self.start_from else {
            return Ok(());
        };
        let fault = |m: String| Err(("start_from".to_string(), m));
        let [model] = self.train.as_slice() else {
            return fault("copies one model into the one model a stage trains".into());
        };
        if !available.contains(&source.as_str()) {
            return fault(format!(
                "'{source}' is neither trained in an earlier stage nor loaded from a checkpoint"
            ));
        }
        if available.contains(&model.as_str()) {
            return fault(format!(
                "'{model}' already has weights (an earlier stage or a checkpoint) to start from"
            ));
        }
        // The same learnt tensors (fake quantisers' observers start afresh), or the source's
        // with the layers `model` factorises split.
        let learnt = crate::graph::qat::learnt_tensors;
        let ranks = config.models[model].low_rank();
        let split = graphs[source.as_str()]
            .factorised(ranks)
            .map(|g| learnt(&g));
        let (from, to) = (
            learnt(&graphs[source.as_str()]),
            learnt(&graphs[model.as_str()]),
        );
        if from != to && split.ok() != Some(to) {
            return fault(format!(
                "'{source}' and '{model}' have different parameters (names or shapes): give them the same architecture (a low_rank table may factorise some of its layers)"
            ));
        }
        Ok(())
    }

    /// Every teacher is trained in an earlier stage or loaded from a checkpoint.
    fn check_teachers_ready(&self, available: &[&str]) -> std::result::Result<(), Fault> {
        for (j, t) in self.teachers.iter().enumerate() {
            if !available.contains(&t.as_str()) {
                return Err((
                    format!("teachers[{j}]"),
                    format!(
                        "'{t}' is neither trained in an earlier stage nor loaded from a checkpoint"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Self-distillation's heads name distinct taps of the model, other than its output.
    fn check_heads(&self, model: &Graph) -> std::result::Result<(), Fault> {
        for (j, h) in self.heads.iter().enumerate() {
            let key = format!("heads[{j}]");
            model.tapped(h).map_err(|e| (key.clone(), e.to_string()))?;
            if h == "logits" || self.heads[..j].contains(h) {
                return Err((
                    key,
                    format!("'{h}' is the model's output or already has a head"),
                ));
            }
        }
        Ok(())
    }
}

impl OptimizerConfig {
    /// Checks the settings; errors name keys relative to `optimizer` (`.lr`, or `` for the
    /// table).
    pub(super) fn check(&self) -> std::result::Result<(), Fault> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err((
                ".lr".into(),
                format!("must be a number > 0, got {}", self.lr),
            ));
        }
        let within = |key: &str, v: f64, ok: bool, what: &str| {
            if ok && v.is_finite() {
                Ok(())
            } else {
                Err((format!(".{key}"), format!("must be {what}, got {v}")))
            }
        };
        let m = f64::from(self.momentum);
        within(
            "momentum",
            m,
            (0.0..1.0).contains(&m),
            "a number ≥ 0 and < 1",
        )?;
        if let Some(wd) = self.weight_decay.map(f64::from) {
            within("weight_decay", wd, wd >= 0.0, "a number ≥ 0")?;
        }
        for (i, &b) in self.betas.iter().flatten().enumerate() {
            let ok = (0.0..1.0).contains(&b);
            within(&format!("betas[{i}]"), b, ok, "a number ≥ 0 and < 1")?;
        }
        if let Some(eps) = self.eps.map(f64::from) {
            within("eps", eps, eps > 0.0, "a number > 0")?;
        }
        if let Some(g) = self.gamma.map(f64::from) {
            within("gamma", g, g > 0.0, "a number > 0")?;
        }
        if self.step_size == Some(0) {
            return Err((".step_size".into(), "must be at least 1".into()));
        }
        if self.kind == OptimizerKind::Sgd && (self.betas.is_some() || self.eps.is_some()) {
            return Err(("".into(), "betas and eps belong to adamw, not sgd".into()));
        }
        if self.kind == OptimizerKind::Adamw && (self.momentum != 0.0 || self.nesterov) {
            return Err((
                "".into(),
                "momentum and nesterov belong to sgd, not adamw".into(),
            ));
        }
        if self.schedule != ScheduleKind::Step && (self.step_size.is_some() || self.gamma.is_some())
        {
            return Err((
                "".into(),
                "step_size and gamma need schedule = \"step\"".into(),
            ));
        }
        Ok(())
    }
}
