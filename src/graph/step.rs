//! Compiled steps. A training step (teacher forward, student forward, every loss term, student
//! backward, optimizer update) is planned and bound once; each call then writes the batch,
//! records the bound launches into one compute pass and submits once: no buffer, bind-group or
//! pipeline is created per step, and nothing is read back unless asked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::input_error;
use crate::error::shape_error;
use crate::gpu::pool::PooledBuffer;
use crate::gpu::{BoundPlan, DType, Dispatch, Gpu, Tensor};
use crate::io::{HostTensor, TensorMap};
use crate::kernels::losses::{GradScale, Loss, LossPlan, MemoryDef, Role};
use crate::kernels::{elementwise, optimizer, pool};
use crate::{Error, Result};

use super::deferred::defer_value_launches;
use super::discriminator::{DiscriminatorSpec, DiscriminatorState, plan_discriminator};
use super::exec::{Forward, Mode, plan_backward, plan_forward};
use super::ir::{ConvLayer, Graph, Op, Value};
use super::memory::{MemoryReport, plan_memory};
use super::update::{
    OptimizerState, named_updates, plan_updates, side_state, state_from_host, state_to_host,
};
use super::weights::{Arena, Weights};

/// A trainable regressor between a student tap and the teacher's (FitNet): it trains with the
/// student and is not part of the student's exported weights. A config's `adapter` key names one
/// (`linear`, `conv1x1`, `vid_regressor`, `translator`, `pool`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Adapter {
    /// `nn.Linear` for (B, D) taps.
    Linear,
    /// 1×1 `nn.Conv2d` for (B, C, H, W) taps.
    Conv1x1,
    /// VID's regressor of the teacher map's mean, for (B, C, H, W) taps: 1×1 convolutions
    /// `Cs → Ct`, ReLU, `Ct → Ct`, ReLU, `Ct → Ct`, without biases (RepDistiller's `VIDLoss`;
    /// parameters `adapters.I.0.weight`, `.2.weight`, `.4.weight` as in its `nn.Sequential`).
    VidRegressor,
    /// FT's translator of the student map into the teacher's factor, for (B, C, H, W) taps of
    /// one H × W: 3×3 convolutions `Cs → Cs → Ct → Ct`, each followed by batch norm and leaky
    /// ReLU (0.1) (RepDistiller's `Translator`; modules `adapters.I.encoder.0`, `.1`, `.3`, `.4`,
    /// `.6`, `.7` as in its `nn.Sequential`).
    Translator,
    /// Adaptive average pooling of the larger of two (B, C, H, W) maps to the smaller one's
    /// H × H (RepDistiller's reconciliation of a size mismatch): the student's with its backward
    /// pass, the teacher's as a constant. No parameters; channels are left to the loss.
    Pool,
}

/// Prefix of a student graph's input that reads a teacher tap instead of the images: a module
/// over the teacher's features (FT's paraphraser, pretrained by reconstruction), whose input
/// `teacher:TAP` is bound to the step's teacher forward pass.
pub const TEACHER_INPUT: &str = "teacher:";

/// The negative slope of FT's leaky ReLUs (RepDistiller's `nn.LeakyReLU(0.1)`).
const FT_SLOPE: f32 = 0.1;

/// Prefix of a teacher tap that names a tap of the student graph itself, read detached: the
/// target of online (mutual) distillation between peers trained in one step, and of
/// self-distillation.
pub const PEER: &str = "peer:";

/// One weighted loss term over taps.
#[derive(Clone, Debug)]
pub struct LossSpec {
    /// What to compute: a registry loss with its attributes.
    pub loss: Loss,
    /// Its weight in the total.
    pub weight: f32,
    /// The student's taps, one per student input of the loss, in order (`logits` for any not
    /// given).
    pub student_taps: Vec<String>,
    /// The target's taps, one per teacher input of the loss (`logits` for any not given).
    pub teacher_taps: Vec<String>,
    /// A regressor from the student tap to the teacher tap's shape (losses of one student and
    /// one teacher input).
    pub adapter: Option<Adapter>,
    /// A frozen paraphraser whose encoder turns the teacher tap into the factor the loss reads
    /// (FT; losses of one teacher input).
    pub paraphraser: Option<Paraphraser>,
}

/// FT's paraphraser on a term's teacher map (RepDistiller's `Paraphraser`, without batch norm as
/// its FT uses it): an encoder of 3×3 convolutions `C → C → ⌊rate·C⌋ → ⌊rate·C⌋` with leaky
/// ReLU (0.1) after each, and a decoder back to `C` channels for its reconstruction training.
/// In a training step only the encoder runs, frozen.
#[derive(Clone)]
pub struct Paraphraser {
    /// The factor's channels as a fraction of the teacher map's (RepDistiller's k = 0.5).
    pub rate: f64,
    /// Its trained weights (`terms.I.paraphraser.…`, see [`paraphraser_graph`]); none: freshly
    /// initialised.
    pub weights: Option<Weights>,
}

impl std::fmt::Debug for Paraphraser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paraphraser")
            .field("rate", &self.rate)
            .field("trained", &self.weights.is_some())
            .finish()
    }
}

impl LossSpec {
    /// A term on the logits.
    pub fn logits(loss: Loss, weight: f32) -> Self {
        Self {
            loss,
            weight,
            student_taps: Vec::new(),
            teacher_taps: Vec::new(),
            adapter: None,
            paraphraser: None,
        }
    }

    /// A term between one student tap and one teacher tap.
    pub fn taps(loss: Loss, weight: f32, student: &str, teacher: &str) -> Self {
        Self {
            student_taps: vec![student.to_string()],
            teacher_taps: vec![teacher.to_string()],
            ..Self::logits(loss, weight)
        }
    }

    /// The tap of student input `k`.
    pub fn student_tap(&self, k: usize) -> &str {
        self.student_taps.get(k).map_or("logits", String::as_str)
    }

    /// The tap of teacher input `k`.
    pub fn teacher_tap(&self, k: usize) -> &str {
        self.teacher_taps.get(k).map_or("logits", String::as_str)
    }
}

/// The optimizer of a step.
#[derive(Clone, Copy, Debug)]
pub enum OptimizerSpec {
    /// SGD.
    Sgd(optimizer::Sgd),
    /// AdamW.
    AdamW(optimizer::AdamW),
}

/// Everything a training step is made of.
pub struct StepSpec<'a> {
    /// The model being trained; its input is `x`.
    pub student: &'a Graph,
    /// Its weights, updated in place by each step.
    pub student_weights: &'a Weights,
    /// A frozen teacher (forward only, evaluation mode), reading the same `x`.
    pub teacher: Option<(&'a Graph, &'a Weights)>,
    /// The loss terms.
    pub losses: Vec<LossSpec>,
    /// The optimizer.
    pub optimizer: OptimizerSpec,
    /// Seed for the adapters' initial weights.
    pub seed: u64,
}

/// A compiled training step.
pub struct TrainStep {
    // The launches of every step; then those that only sum the losses, run when they are read.
    bound: BoundPlan,
    value_launches: BoundPlan,
    x: Tensor,
    teacher_inputs: Vec<(String, Tensor)>,
    sample_rows: Vec<SampleRows>,
    labels: Tensor,
    logits: Tensor,
    losses: Vec<(String, f32, Tensor)>,
    state: Arc<TrainState>,
    fetch: LossFetch,
    memory: MemoryReport,
    // Per term, where its weight lies: its scale or axpy launches, or its loss's own launch.
    weight_launches: Vec<Vec<GradScale>>,
    optimizer_launches: Vec<usize>,
    // The discriminator's losses on the teacher's and the student's tap, when it has one.
    discriminator_losses: Option<[Tensor; 2]>,
}

/// A term's weight in a compiled step lies in a gradient factor (a launch of the plan, the
/// factor's offset, its unweighted value): the `alpha` of a scale or an axpy, whose value is 1,
/// or the loss's own `grad_scale` where the weight is folded into its launch.
fn alpha_factor(launch: usize) -> GradScale {
    GradScale {
        launch,
        offset: elementwise::ALPHA_OFFSET,
        value: 1.0,
    }
}

/// The bytes of `factor` weighted by `weight`, as its launch's parameters hold them.
fn weighted(factor: &GradScale, weight: f32) -> [u8; 4] {
    (factor.value * weight).to_ne_bytes()
}

/// What successive steps share: the step counter, the optimizer's state per parameter, the
/// adapters' weights, the loss terms' own parameters and their frozen modules (paraphrasers). A
/// step compiled for a smaller last batch shares these with the main one.
pub struct TrainState {
    step: Tensor,
    optimizer: OptimizerState,
    adapters: Vec<Weights>,
    parameters: Vec<Weights>,
    frozen: Vec<Weights>,
    discriminator: Option<DiscriminatorState>,
    /// Pruning masks (1 kept, 0 pruned) by parameter name, each applied to its parameter after
    /// every update.
    masks: BTreeMap<String, Tensor>,
}

/// A staging buffer the losses are copied into every so often, mapped without waiting.
struct LossFetch {
    staging: PooledBuffer,
    // 0 idle, 1 copy submitted and mapping requested, 2 mapped and ready to read.
    phase: Arc<AtomicU8>,
}

fn input_value(graph: &Graph, name: &str) -> Result<Value> {
    graph
        .find(name)
        .filter(|v| graph.nodes[v.0].op == Op::Input)
        .ok_or_else(|| shape_error(name, "the model has no input with this name"))
}

/// A mask of ones per named parameter of `weights` (which must have it, trainable).
fn masks_for(gpu: &Gpu, weights: &Weights, names: &[String]) -> Result<BTreeMap<String, Tensor>> {
    names
        .iter()
        .map(|name| {
            let p = weights.get(name).ok_or_else(|| {
                shape_error(name, "cannot be pruned: the student has no such parameter")
            })?;
            let mask = gpu.zeros(p.shape(), DType::F32)?;
            gpu.write(&mask, &vec![1.0f32; p.numel()])?;
            Ok((name.clone(), mask))
        })
        .collect()
}

/// A 1×1 convolution to `out` channels.
fn conv1x1(g: &mut Graph, prefix: &str, x: Value, out: usize, bias: bool) -> Result<Value> {
    let layer = ConvLayer::same(out, 1);
    g.conv2d(prefix, x, ConvLayer { bias, ..layer })
}

/// FT's block of three 3×3 convolutions (`C → widths[0] → widths[1] → widths[2]`), each followed
/// by batch norm when `bn` and leaky ReLU (0.1); modules `PREFIX.0`, `.3`, `.6` (and `.1`, `.4`,
/// `.7` for batch norm), the indices of RepDistiller's `nn.Sequential`.
fn ft_block(
    g: &mut Graph,
    prefix: &str,
    mut x: Value,
    widths: [usize; 3],
    bn: bool,
) -> Result<Value> {
    for (k, out) in widths.into_iter().enumerate() {
        let layer = ConvLayer::same(out, 3).with_bias();
        x = g.conv2d(&format!("{prefix}.{}", 3 * k), x, layer)?;
        if bn {
            x = g.batch_norm(&format!("{prefix}.{}", 3 * k + 1), x)?;
        }
        x = g.leaky_relu(x, FT_SLOPE)?;
    }
    Ok(x)
}

/// The graph of term `index`'s paraphraser on a teacher map of `shape` (B, C, H, W), reading the
/// input `input`: the encoder's factor (B, ⌊rate·C⌋, H, W) as its output, or with `decoder` the
/// reconstruction (B, C, H, W), the factor then tapped as `factor`. Parameters
/// `terms.I.paraphraser.encoder.{0,3,6}` and `.decoder.{0,3,6}`. RepDistiller's decoder is made
/// of stride-1 transposed convolutions, the same functions as these 3×3 convolutions with
/// padding 1 (the kernel flipped and its channels swapped); it only serves the pretraining.
pub fn paraphraser_graph(
    index: usize,
    input: &str,
    shape: &[usize],
    rate: f64,
    decoder: bool,
) -> Result<Graph> {
    let prefix = format!("terms.{index}.paraphraser");
    let &[_, c, _, _] = shape else {
        return Err(shape_error(
            &prefix,
            format!("a paraphraser reads a (B, C, H, W) teacher map, got {shape:?}"),
        ));
    };
    let factor = (rate * c as f64) as usize;
    if !(rate > 0.0 && rate <= 1.0) || factor == 0 {
        return Err(shape_error(
            &prefix,
            format!("rate {rate} of {c} channels leaves no factor (want 0 < rate ≤ 1, rate·C ≥ 1)"),
        ));
    }
    let mut g = Graph::new();
    let x = g.input(input, shape, DType::F32)?;
    let f = ft_block(
        &mut g,
        &format!("{prefix}.encoder"),
        x,
        [c, factor, factor],
        false,
    )?;
    if decoder {
        g.tap("factor", f)?;
        let r = ft_block(
            &mut g,
            &format!("{prefix}.decoder"),
            f,
            [factor, c, c],
            false,
        )?;
        g.set_output(r)?;
    } else {
        g.set_output(f)?;
    }
    Ok(g)
}

/// Builds the regressor graph of an adapter from a student tap's shape to the teacher's (not
/// for [`Adapter::Pool`], which the step plans itself).
pub fn adapter_graph(kind: Adapter, index: usize, from: &[usize], to: &[usize]) -> Result<Graph> {
    let mut g = Graph::new();
    let x = g.input("x", from, DType::F32)?;
    let prefix = format!("adapters.{index}");
    let y = match (kind, from, to) {
        (Adapter::Linear, &[_, _], &[_, out]) => g.linear(&prefix, x, out, true)?,
        (Adapter::Conv1x1, &[_, _, _, _], &[_, out, _, _]) => {
            conv1x1(&mut g, &prefix, x, out, true)?
        }
        (Adapter::Translator, &[_, cs, h, w], &[_, out, th, tw]) if (h, w) == (th, tw) => ft_block(
            &mut g,
            &format!("{prefix}.encoder"),
            x,
            [cs, out, out],
            true,
        )?,
        (Adapter::VidRegressor, &[_, _, _, _], &[_, out, _, _]) => {
            let h = conv1x1(&mut g, &format!("{prefix}.0"), x, out, false)?;
            let h = g.relu(h)?;
            let h = conv1x1(&mut g, &format!("{prefix}.2"), h, out, false)?;
            let h = g.relu(h)?;
            conv1x1(&mut g, &format!("{prefix}.4"), h, out, false)?
        }
        _ => {
            return Err(shape_error(
                &prefix,
                format!(
                    "a {kind:?} adapter cannot map {from:?} to {to:?} (linear: 2-D taps, conv1x1 and vid_regressor: 4-D taps, translator: 4-D taps of one height and width)"
                ),
            ));
        }
    };
    if g.shape(y) != to {
        return Err(shape_error(
            &prefix,
            format!(
                "the adapter gives {:?} but the teacher tap is {to:?}",
                g.shape(y)
            ),
        ));
    }
    g.set_output(y)?;
    Ok(g)
}

/// Adaptive average pooling of a `from` map to `h × h`.
fn pool_graph(from: &[usize], h: usize) -> Result<Graph> {
    let mut g = Graph::new();
    let x = g.input("x", from, DType::F32)?;
    let y = g.adaptive_avg_pool(x, [h, h])?;
    g.set_output(y)?;
    Ok(g)
}

/// An embedding head of a contrastive term on a tap: flatten, `nn.Linear` to `dim`, divide by
/// the norm (RepDistiller's `Embed`); parameters `adapters.I.NAME.linear.weight` and `.bias`.
fn embed_graph(index: usize, name: &str, from: &[usize], dim: usize) -> Result<Graph> {
    let mut g = Graph::new();
    let x = g.input("x", from, DType::F32)?;
    let flat = if from.len() > 2 { g.flatten(x)? } else { x };
    let h = g.linear(&format!("adapters.{index}.{name}.linear"), flat, dim, true)?;
    let y = g.l2_normalize(h, 0.0)?;
    g.set_output(y)?;
    Ok(g)
}

/// The memory of a loss term with memory inputs (`terms.I.NAME` for each of its
/// [`MemoryDef::names`]: CRD's two N×D banks and its normalisers), for `n` rows of width `d`.
fn term_memory(
    gpu: &Gpu,
    index: usize,
    l: &Loss,
    memory: &MemoryDef,
    (n, d): (usize, usize),
    seed: u64,
) -> Result<Weights> {
    let host: TensorMap = memory
        .names
        .iter()
        .zip((memory.init)(l, n, d, seed))
        .map(|(k, v)| (format!("terms.{index}.{k}"), v))
        .collect();
    Weights::upload(gpu, &format!("{index}:{}", l.name()), &host)
}

/// The rows a memory term reads in its banks, written by the loader before each step.
struct SampleRows {
    term: usize,
    // (B, rows): each sample's own index, then its negatives.
    indices: Tensor,
    // The banks' rows N.
    bank_rows: usize,
}

/// Plans a memory term: the loss and gradients from the banks read in place, then the updated
/// rows written back after every read (the registry's [`MemoryDef::banked`]). Its launches go
/// into `plan`; returns the indices the loader writes per step and the loss's tensors.
fn banked_term(
    gpu: &Gpu,
    index: usize,
    term: &LossSpec,
    memory: (&MemoryDef, &Weights),
    inputs: &[&Tensor],
    plan: &mut Vec<Dispatch>,
) -> Result<(SampleRows, LossPlan)> {
    let (def, weights) = memory;
    let tensors: Vec<&Tensor> = def
        .names
        .iter()
        .map(|k| {
            let name = format!("terms.{index}.{k}");
            weights
                .get(&name)
                .ok_or_else(|| shape_error(&name, "missing from the term's memory"))
        })
        .collect::<Result<_>>()?;
    let batch = inputs[0].shape()[0];
    let indices = gpu.zeros(&[batch, (def.rows)(&term.loss)], DType::I32)?;
    let lp = (def.banked)(gpu, &term.loss, inputs, &tensors, &indices)?;
    plan.extend(lp.dispatches);
    let rows = SampleRows {
        term: index,
        bank_rows: tensors[0].shape()[0],
        indices,
    };
    // Its launches lie in the plan now; a factor of theirs would need its place there too.
    let lp = LossPlan {
        dispatches: Vec::new(),
        grad_scale: None,
        ..lp
    };
    Ok((rows, lp))
}

/// The taps a step reads, of the student (its terms' student sides, the taps of the student itself
/// its terms read as targets, the discriminator's) and of the teacher (the terms' other targets,
/// the discriminator's, and those the student's `teacher:` inputs read).
fn read_taps(
    spec: &StepSpec<'_>,
    discriminator: Option<&DiscriminatorSpec>,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut student, mut teacher) = (BTreeSet::new(), BTreeSet::new());
    for term in &spec.losses {
        let def = term.loss.def();
        for k in 0..def.student_inputs().count() {
            student.insert(term.student_tap(k).to_string());
        }
        for k in 0..def.teacher_inputs().count() {
            let tap = term.teacher_tap(k);
            match tap.strip_prefix(PEER) {
                Some(own) => student.insert(own.to_string()),
                None => teacher.insert(tap.to_string()),
            };
        }
    }
    if let Some(d) = discriminator {
        student.insert(d.tap.clone());
        teacher.insert(d.tap.clone());
    }
    for node in spec.student.nodes.iter().filter(|n| n.op == Op::Input) {
        if let Some(tap) = node.name.strip_prefix(TEACHER_INPUT) {
            teacher.insert(tap.to_string());
        }
    }
    (student, teacher)
}

/// The initial parameters of loss term `index` (named `terms.INDEX.NAME`), from the shapes of its
/// other inputs.
fn term_parameters(
    gpu: &Gpu,
    index: usize,
    term: &LossSpec,
    students: &[Tensor],
    targets: &[Tensor],
    labels: &Tensor,
) -> Result<Weights> {
    let def = term.loss.def();
    let (mut s, mut t) = (students.iter(), targets.iter());
    let shapes: Vec<&[usize]> = def
        .inputs
        .iter()
        .filter_map(|input| match input.role {
            Role::Student => s.next().map(Tensor::shape),
            Role::Teacher | Role::TeacherEmbedding => t.next().map(Tensor::shape),
            Role::Labels => Some(labels.shape()),
            Role::Parameter | Role::Memory | Role::Target => None,
        })
        .collect();
    let host: TensorMap = def
        .parameter_inputs()
        .zip(term.loss.initial_parameters(&shapes))
        .map(|(p, v)| (format!("terms.{index}.{}", p.name), v))
        .collect();
    Weights::upload_trained(gpu, &format!("{index}:{}", def.name), &host)
}

impl Drop for LossFetch {
    fn drop(&mut self) {
        // The staging buffer goes back to the pool: never leave it mapped (or mapping).
        if self.phase.load(Ordering::Acquire) != 0 {
            self.staging.raw().unmap();
        }
    }
}

impl TrainStep {
    /// Plans, allocates and binds everything once.
    pub fn compile(gpu: &Gpu, spec: &StepSpec<'_>) -> Result<TrainStep> {
        Self::compile_sharing(gpu, spec, None, None, &[])
    }

    /// Compiles a step that keeps the named student parameters pruned: each has a mask (all
    /// ones until [`TrainStep::set_mask`] writes one) that multiplies the parameter after every
    /// update, in the same submission. With a discriminator too when one is given.
    pub fn compile_masked(
        gpu: &Gpu,
        spec: &StepSpec<'_>,
        discriminator: Option<&DiscriminatorSpec>,
        masked: &[String],
    ) -> Result<TrainStep> {
        Self::compile_sharing(gpu, spec, None, discriminator, masked)
    }

    /// Compiles a step whose student also plays against a discriminator on one tap (adversarial
    /// distillation, see [`super::discriminator`]): one submission runs the student's update,
    /// its adversarial term included, and the discriminator's.
    pub fn compile_adversarial(
        gpu: &Gpu,
        spec: &StepSpec<'_>,
        discriminator: &DiscriminatorSpec,
    ) -> Result<TrainStep> {
        Self::compile_sharing(gpu, spec, None, Some(discriminator), &[])
    }

    /// Compiles a step that shares `other`'s counter, optimizer state and adapters: the same
    /// model at another batch size (the smaller last batch of an epoch), built over the same
    /// [`Weights`].
    pub fn compile_sibling(gpu: &Gpu, spec: &StepSpec<'_>, other: &TrainStep) -> Result<TrainStep> {
        Self::compile_sharing(gpu, spec, Some(other.state.clone()), None, &[])
    }

    fn compile_sharing(
        gpu: &Gpu,
        spec: &StepSpec<'_>,
        shared: Option<Arc<TrainState>>,
        discriminator: Option<&DiscriminatorSpec>,
        masked: &[String],
    ) -> Result<TrainStep> {
        // The discriminator: a sibling's, or the one asked for.
        let shared_discriminator = shared.as_ref().and_then(|s| s.discriminator.as_ref());
        let discriminator = shared_discriminator
            .map(|d| d.spec.clone())
            .or_else(|| discriminator.cloned());
        // Both models are planned with only the taps this step reads.
        let (student_taps, teacher_taps) = read_taps(spec, discriminator.as_ref());
        let student = &spec.student.keeping_taps(&student_taps);
        let teacher = spec
            .teacher
            .map(|(tg, tw)| (tg.keeping_taps(&teacher_taps), tw));
        // The images, read by the student, or only by the teacher when the student is a module
        // over the teacher's features.
        let reads_teacher = student
            .nodes
            .iter()
            .any(|n| n.op == Op::Input && n.name.starts_with(TEACHER_INPUT));
        let x_shape = match (reads_teacher, &teacher) {
            (false, _) => student.shape(input_value(student, "x")?).to_vec(),
            (true, Some((tg, _))) => tg.shape(input_value(tg, "x")?).to_vec(),
            (true, None) => {
                return Err(shape_error(
                    "student",
                    "reads teacher taps but the step has no teacher",
                ));
            }
        };
        let batch = x_shape[0];
        let x = gpu.empty(&x_shape, DType::F32)?;
        let labels = gpu.zeros(&[batch], DType::I32)?;
        let mut plan: Vec<Dispatch> = Vec::new();
        let step = match &shared {
            Some(st) => st.step.clone(),
            None => gpu.zeros(&[1], DType::U32)?,
        };

        // The teacher reads the step's x; any other input it has (a replayed teacher's cached
        // outputs, see Graph::replay) gets a tensor of its own, written from the host per step.
        let mut teacher_inputs: Vec<(String, Tensor)> = Vec::new();
        let teacher_fwd = match &teacher {
            Some((tg, tw)) => {
                let mut t_inputs = BTreeMap::new();
                for node in tg.nodes.iter().filter(|n| n.op == Op::Input) {
                    if node.name == "x" {
                        if node.shape != x_shape {
                            return Err(shape_error(
                                "teacher",
                                format!(
                                    "input x is {:?} but the student's is {x_shape:?}",
                                    node.shape
                                ),
                            ));
                        }
                        t_inputs.insert("x".to_string(), x.clone());
                    } else {
                        if node.shape.first() != Some(&batch) {
                            return Err(shape_error(
                                &format!("teacher input '{}'", node.name),
                                format!("is {:?}, not a batch of {batch}", node.shape),
                            ));
                        }
                        let t = gpu.empty(&node.shape, node.dtype)?;
                        teacher_inputs.push((node.name.clone(), t.clone()));
                        t_inputs.insert(node.name.clone(), t);
                    }
                }
                Some((
                    tg,
                    plan_forward(gpu, tg, tw, &t_inputs, Mode::Eval, None, &mut plan)?,
                ))
            }
            None => None,
        };
        let mut inputs: BTreeMap<String, Tensor> = BTreeMap::new();
        for node in student.nodes.iter().filter(|n| n.op == Op::Input) {
            let t = match (node.name.strip_prefix(TEACHER_INPUT), &teacher_fwd) {
                (None, _) if node.name == "x" => x.clone(),
                // Any other input is the planner's to refuse.
                (None, _) => continue,
                (Some(tap), Some((tg, tf))) => tf.get(tg.tapped(tap)?).clone(),
                (Some(_), None) => return Err(shape_error(&node.name, "the step has no teacher")),
            };
            if t.shape() != node.shape {
                return Err(shape_error(
                    &format!("student input '{}'", node.name),
                    format!("is {:?} but what it reads is {:?}", node.shape, t.shape()),
                ));
            }
            inputs.insert(node.name.clone(), t);
        }
        let fwd = plan_forward(
            gpu,
            student,
            spec.student_weights,
            &inputs,
            Mode::Train,
            Some(&step),
            &mut plan,
        )?;
        let logits_value = student
            .output
            .ok_or_else(|| shape_error("student", "the model has no output"))?;

        let mut seeds: Vec<(Value, Tensor)> = Vec::new();
        // The seeds the terms made, weighted (by value: their index in `seeds`), which a later
        // term on the same value adds into instead of seeding again.
        let mut own_seeds: BTreeMap<Value, usize> = BTreeMap::new();
        let mut weight_launches = Vec::new();
        let mut optimizer_launches = Vec::new();
        let mut loss_values = Vec::new();
        let mut adapter_parts = Vec::new();
        let mut parameter_parts: Vec<(Weights, BTreeMap<String, Tensor>)> = Vec::new();
        let mut frozen_parts: Vec<Weights> = Vec::new();
        let mut sample_rows: Vec<SampleRows> = Vec::new();
        for (i, term) in spec.losses.iter().enumerate() {
            let label = format!("{i}:{}", term.loss.name());
            let def = term.loss.def();
            // The student side: a tap per student input.
            let svs: Vec<Value> = (0..def.student_inputs().count())
                .map(|k| student.tapped(term.student_tap(k)))
                .collect::<Result<_>>()?;
            // The target side: a tap per teacher input, of the teacher, or of this step's own
            // graph (peers, deeper taps), detached: no gradient is seeded into it here.
            let targets: Vec<Tensor> = (0..def.teacher_inputs().count())
                .map(|k| {
                    let tap = term.teacher_tap(k);
                    if let Some(own) = tap.strip_prefix(PEER) {
                        return Ok(fwd.get(student.tapped(own)?).clone());
                    }
                    let (tg, tf) = teacher_fwd
                        .as_ref()
                        .ok_or_else(|| shape_error(&label, "this loss needs a teacher"))?;
                    Ok(tf.get(tg.tapped(tap)?).clone())
                })
                .collect::<Result<_>>()?;
            // A paraphraser turns the teacher map into its factor, frozen.
            let mut targets = targets;
            if let Some(p) = &term.paraphraser {
                let [target] = targets.as_mut_slice() else {
                    return Err(shape_error(&label, "a paraphraser reads one teacher tap"));
                };
                let g = paraphraser_graph(i, "x", target.shape(), p.rate, false)?;
                let shared_w = shared
                    .as_ref()
                    .and_then(|s| s.frozen.get(frozen_parts.len()));
                let w = match (shared_w, &p.weights) {
                    (Some(w), _) | (None, Some(w)) => w.clone(),
                    (None, None) => Weights::init(gpu, &g, spec.seed.wrapping_add(i as u64))?,
                };
                let ins: BTreeMap<String, Tensor> = [("x".to_string(), target.clone())].into();
                let f = plan_forward(gpu, &g, &w, &ins, Mode::Eval, None, &mut plan)?;
                let out = g
                    .output
                    .ok_or_else(|| shape_error(&label, "the paraphraser has no output"))?;
                *target = f.get(out).clone();
                frozen_parts.push(w);
            }
            // A head runs on a tap before the loss: a FitNet regressor from the student tap to
            // the teacher's shape, or a contrastive term's two embedding heads (one per side).
            // Each is (graph, weights, forward pass, whether it sits on the student side).
            let mut heads: Vec<(Graph, Weights, Forward, bool)> = Vec::new();
            let mut head = |g: Graph, on: &Tensor, student_side: bool, plan: &mut Vec<Dispatch>| {
                let k = adapter_parts.len() + heads.len();
                let w = match shared.as_ref().and_then(|s| s.adapters.get(k)) {
                    Some(existing) => existing.clone(),
                    None => Weights::init(gpu, &g, spec.seed.wrapping_add((i + k) as u64))?,
                };
                let ins: BTreeMap<String, Tensor> = [("x".to_string(), on.clone())].into();
                let f = plan_forward(gpu, &g, &w, &ins, Mode::Train, Some(&step), plan)?;
                let out_value = g
                    .output
                    .ok_or_else(|| shape_error(&label, "the head has no output"))?;
                let out = f.get(out_value).clone();
                heads.push((g, w, f, student_side));
                Ok::<Tensor, Error>(out)
            };
            let student_sides: Vec<Tensor> = match (term.adapter, svs.as_slice()) {
                (None, _) if def.has_embedding_heads() => {
                    let (&[sv], [target]) = (svs.as_slice(), targets.as_mut_slice()) else {
                        return Err(shape_error(
                            &label,
                            "embedding heads need one student and one teacher input",
                        ));
                    };
                    let dim = term.loss.attr("feat_dim") as usize;
                    let sg = embed_graph(i, "embed_s", student.shape(sv), dim)?;
                    let tg = embed_graph(i, "embed_t", target.shape(), dim)?;
                    let s_out = head(sg, fwd.get(sv), true, &mut plan)?;
                    let t_out = head(tg, target, false, &mut plan)?;
                    *target = t_out;
                    vec![s_out]
                }
                (None, _) => svs.iter().map(|v| fwd.get(*v).clone()).collect(),
                (Some(_), _) if def.has_embedding_heads() => {
                    return Err(shape_error(
                        &label,
                        "this loss has its own embedding heads: leave out `adapter`",
                    ));
                }
                (Some(Adapter::Pool), &[sv]) if targets.len() == 1 => {
                    let (s, t) = (student.shape(sv).to_vec(), targets[0].shape().to_vec());
                    let (&[_, _, hs, _], &[_, _, ht, _]) = (s.as_slice(), t.as_slice()) else {
                        return Err(shape_error(
                            &label,
                            format!("a pool adapter needs (B, C, H, W) taps, got {s:?} and {t:?}"),
                        ));
                    };
                    if ht > hs {
                        let (d, y) = pool::adaptive_avg_pool_forward(gpu, &targets[0], [hs, hs])?;
                        plan.push(d);
                        targets[0] = y;
                    }
                    if hs > ht {
                        vec![head(pool_graph(&s, ht)?, fwd.get(sv), true, &mut plan)?]
                    } else {
                        vec![fwd.get(sv).clone()]
                    }
                }
                (Some(kind), &[sv]) if targets.len() == 1 => {
                    let g = adapter_graph(kind, i, student.shape(sv), targets[0].shape())?;
                    vec![head(g, fwd.get(sv), true, &mut plan)?]
                }
                (Some(_), _) => {
                    return Err(shape_error(
                        &label,
                        "an adapter maps one student tap to one teacher tap; this loss reads several",
                    ));
                }
            };
            if def.memory.is_some() && def.parameter_inputs().next().is_some() {
                return Err(shape_error(
                    &label,
                    "a loss cannot own both parameters and banks",
                ));
            }
            // The term's own tensors, made once and shared with a sibling step like the
            // adapters: trainable parameters (VID's variance), or a memory term's banks.
            let existing = shared
                .as_ref()
                .and_then(|s| s.parameters.get(parameter_parts.len()));
            let params = if def.parameter_inputs().next().is_some() {
                Some(match existing {
                    Some(w) => w.clone(),
                    None => term_parameters(gpu, i, term, &student_sides, &targets, &labels)?,
                })
            } else if let Some(memory) = &def.memory {
                let n = term.loss.attr(memory.size_attr) as usize;
                let d = student_sides[0].shape().iter().skip(1).product();
                Some(match existing {
                    Some(w) => w.clone(),
                    None => term_memory(gpu, i, &term.loss, memory, (n, d), spec.seed ^ i as u64)?,
                })
            } else {
                None
            };
            let param_names: Vec<String> = def
                .parameter_inputs()
                .map(|p| format!("terms.{i}.{}", p.name))
                .collect();
            // The loss's inputs in its own order, by role.
            let (mut students, mut teachers) = (student_sides.iter(), targets.iter());
            let mut own = param_names
                .iter()
                .map(|n| params.as_ref().and_then(|w| w.get(n)));
            let inputs: Vec<&Tensor> = def
                .inputs
                .iter()
                .filter(|input| input.role != Role::Memory)
                .map(|input| match input.role {
                    Role::Student => students.next(),
                    Role::Teacher | Role::TeacherEmbedding => teachers.next(),
                    Role::Labels => Some(&labels),
                    Role::Parameter => own.next().flatten(),
                    Role::Memory | Role::Target => None,
                })
                .collect::<Option<_>>()
                .ok_or_else(|| shape_error(&label, "inputs do not match the loss's roles"))?;
            let lp = match (&params, &def.memory) {
                (Some(weights), Some(memory)) => {
                    let (rows, lp) =
                        banked_term(gpu, i, term, (memory, weights), &inputs, &mut plan)?;
                    sample_rows.push(rows);
                    lp
                }
                _ => {
                    let lp = term.loss.launch(gpu, &inputs)?;
                    let first = plan.len();
                    plan.extend(lp.dispatches);
                    LossPlan {
                        dispatches: Vec::new(),
                        // Its launch, by its place in the step's plan.
                        grad_scale: lp.grad_scale.map(|s| GradScale {
                            launch: first + s.launch,
                            ..s
                        }),
                        ..lp
                    }
                }
            };
            // The weight is applied where a schedule can rewrite it without recompiling: in the
            // loss's own launch when it scales its gradient by a parameter (then that gradient
            // is the seed), else by a launch per gradient (a scale into a seed of its own, or
            // an axpy into an earlier term's seed on the same value).
            let mut launches = Vec::new();
            let mut student_grads: Vec<Option<Tensor>> = Vec::new();
            let mut param_grads = Vec::new();
            let mut student_values = svs.iter();
            for (g, input) in lp.grads.iter().zip(def.trainable_inputs()) {
                let value = match input.role {
                    Role::Parameter => None,
                    _ => student_values.next(),
                };
                let earlier = value
                    .filter(|_| heads.is_empty())
                    .and_then(|v| own_seeds.get(v));
                if let Some(&i) = earlier {
                    let seed: &Tensor = &seeds[i].1;
                    launches.push(alpha_factor(plan.len()));
                    plan.push(elementwise::axpy_plan(gpu, term.weight, g, seed)?);
                    student_grads.push(None);
                    continue;
                }
                if let (Some(s), Role::Student, 1) = (lp.grad_scale, input.role, lp.grads.len()) {
                    let at = s.offset as usize;
                    plan[s.launch].params[at..at + 4].copy_from_slice(&weighted(&s, term.weight));
                    launches.push(s);
                    student_grads.push(Some(g.clone()));
                    continue;
                }
                launches.push(alpha_factor(plan.len()));
                let (d, s) = elementwise::scale_plan(gpu, g, term.weight)?;
                plan.push(d);
                match input.role {
                    Role::Parameter => param_grads.push(s),
                    _ => student_grads.push(Some(s)),
                }
            }
            weight_launches.push(launches);
            loss_values.push((label.clone(), term.weight, lp.loss));
            if let Some(w) = params {
                parameter_parts.push((w, param_names.into_iter().zip(param_grads).collect()));
            }
            if heads.is_empty() {
                for (&v, s) in svs.iter().zip(student_grads.drain(..)) {
                    if let Some(s) = s {
                        own_seeds.insert(v, seeds.len());
                        seeds.push((v, s));
                    }
                }
            }
            // Back through each head: the student side's into the student's tap, the teacher
            // side's into the head alone (the teacher stays frozen).
            // (With heads, every student gradient is a tensor of its own: scaled into one, or the
            // loss's own gradient with the weight folded in.)
            let student_grads = student_grads.into_iter().flatten();
            for ((g, w, f, student_side), grad) in heads.into_iter().zip(student_grads) {
                let (Some(gx), Some(out)) = (g.find("x"), g.output) else {
                    return Err(shape_error(&label, "the head has no input or output"));
                };
                let want: &[Value] = if student_side { &[gx] } else { &[] };
                let grads = plan_backward(gpu, &g, &f, vec![(out, grad)], want, &mut plan)?;
                if let (true, Some(dx)) = (student_side, grads.get("x")) {
                    seeds.push((svs[0], dx.clone()));
                }
                adapter_parts.push((w, grads));
            }
        }
        // The discriminator, after the terms: its gradient joins theirs in the student's tap.
        let discriminator = match discriminator {
            Some(ds) => {
                let sv = student.tapped(&ds.tap)?;
                let (tg, tf) = teacher_fwd
                    .as_ref()
                    .ok_or_else(|| shape_error("discriminator", "needs a teacher"))?;
                let t = tf.get(tg.tapped(&ds.tap)?).clone();
                let d =
                    plan_discriminator(gpu, &ds, fwd.get(sv), &t, shared_discriminator, &mut plan)?;
                seeds.push((sv, d.student_seed.clone()));
                loss_values.push((
                    "adversarial".to_string(),
                    ds.weight,
                    d.adversarial_loss.clone(),
                ));
                Some(d)
            }
            None => None,
        };
        let grads = plan_backward(gpu, student, &fwd, seeds, &[], &mut plan)?;

        // Optimizer: advance the step counter (read by dropout and the updates), then one fused
        // update per arena of parameters (see update.rs), or per parameter where one cannot be.
        plan.push(optimizer::advance_step(gpu, &step)?);
        let mut updates = named_updates(spec.student_weights, &grads)?;
        let mut arenas: Vec<&Arena> = spec.student_weights.arenas().iter().collect();
        for (w, grads) in adapter_parts.iter().chain(&parameter_parts) {
            for (name, g) in grads {
                if let Some(p) = w.get(name) {
                    updates.push((name.clone(), p, g));
                }
            }
            arenas.extend(w.arenas());
        }
        let updated = plan_updates(
            gpu,
            &spec.optimizer,
            updates,
            arenas,
            shared.as_ref().map(|s| &s.optimizer),
            &step,
            &mut plan,
        )?;
        optimizer_launches.extend(updated.launches);
        let opt_state = updated.state;
        // Pruned parameters: masked after their update (a sibling applies its main step's).
        let masks = match &shared {
            Some(st) => st.masks.clone(),
            None => masks_for(gpu, spec.student_weights, masked)?,
        };
        for (name, mask) in &masks {
            let p = spec
                .student_weights
                .get(name)
                .ok_or_else(|| shape_error(name, "a masked parameter the student lacks"))?;
            plan.push(elementwise::mul_plan(gpu, mask, p)?);
        }
        let state = Arc::new(TrainState {
            step,
            optimizer: opt_state,
            adapters: adapter_parts.into_iter().map(|(w, _)| w).collect(),
            parameters: parameter_parts.into_iter().map(|(w, _)| w).collect(),
            frozen: frozen_parts,
            discriminator: discriminator.as_ref().map(|d| d.state.clone()),
            masks,
        });
        let fetch = LossFetch {
            staging: gpu.pool().acquire(
                gpu.device(),
                4 * loss_values.len().max(1) as u64,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                gpu.limits().max_buffer_size,
            ),
            phase: Arc::new(AtomicU8::new(0)),
        };
        // Fold intermediate buffers by liveness, then give the ones they replaced back.
        let logits = fwd.get(logits_value).clone();
        drop((fwd, teacher_fwd, grads));
        let mut pinned: Vec<&Tensor> = vec![&logits];
        pinned.extend(&updated.gradients);
        let discriminator_gradients: Vec<Tensor> = discriminator
            .as_ref()
            .map(|d| d.gradients.clone())
            .unwrap_or_default();
        pinned.extend(&discriminator_gradients);
        pinned.extend(loss_values.iter().map(|(_, _, t)| t));
        let discriminator_losses = discriminator.map(|d| d.discriminator_losses);
        pinned.extend(discriminator_losses.iter().flatten());
        // The launches that only sum the terms' losses run when they are fetched (deferred.rs).
        let (mut plan, values_from, moved) = {
            let values: Vec<&Tensor> = loss_values.iter().map(|(_, _, t)| t).collect();
            defer_value_launches(plan, &values, &pinned)
        };
        for launch in weight_launches
            .iter_mut()
            .flatten()
            .map(|factor| &mut factor.launch)
            .chain(&mut optimizer_launches)
        {
            *launch = moved[*launch];
            // The backward pass reads their seeds and the optimizer's updates are read-modify-
            // writes, so the rules never defer them.
            if *launch >= values_from {
                return Err(Error::Kernel {
                    kernel: "graph::deferred".into(),
                    message: "a loss weight's or the optimizer's launch was deferred".into(),
                });
            }
        }
        // The deferred launches may run again on the same step (fetched, then read), so none of
        // their buffers may be shared with another: they keep their own (a few small ones).
        let deferred_tensors: Vec<Tensor> = plan[values_from..]
            .iter()
            .flat_map(|d| d.tensors.iter().cloned())
            .collect();
        pinned.extend(&deferred_tensors);
        let memory = plan_memory(gpu, &mut plan, &pinned)?;
        let bound = gpu.bind_plan(&plan[..values_from])?;
        let value_launches = gpu.bind_plan(&plan[values_from..])?;
        drop(plan);
        gpu.pool().trim();
        Ok(TrainStep {
            bound,
            value_launches,
            x,
            teacher_inputs,
            sample_rows,
            labels,
            logits,
            losses: loss_values,
            state,
            fetch,
            memory,
            weight_launches,
            optimizer_launches,
            discriminator_losses,
        })
    }

    /// The parameters this step keeps pruned, by name.
    pub fn masked(&self) -> impl Iterator<Item = &str> {
        self.state.masks.keys().map(String::as_str)
    }

    /// Writes the pruning mask of `name` (1 keeps a weight, 0 prunes it; as many values as the
    /// parameter has). Later updates apply it; the caller zeroes the pruned weights now if they
    /// must read as pruned before the next step.
    pub fn set_mask(&self, gpu: &Gpu, name: &str, mask: &[f32]) -> Result<()> {
        let t = self
            .state
            .masks
            .get(name)
            .ok_or_else(|| input_error(name, "is not a pruned parameter of this step"))?;
        if mask.len() != t.numel() {
            return Err(shape_error(
                name,
                format!("a mask of {} values for {} weights", mask.len(), t.numel()),
            ));
        }
        gpu.write(t, mask)
    }

    /// Sets every parameter's learning rate (a schedule's step): rewrites the optimizer
    /// launches' uniforms, so later steps use it.
    pub fn set_learning_rate(&self, gpu: &Gpu, lr: f32) {
        for &i in &self.optimizer_launches {
            let lr_bytes = bytemuck::bytes_of(&lr);
            self.bound
                .write_uniform(gpu, i, optimizer::LR_OFFSET, lr_bytes);
        }
    }

    /// Sets loss term `index`'s weight (a schedule's step).
    pub fn set_loss_weight(&mut self, gpu: &Gpu, index: usize, weight: f32) {
        if let (Some(launches), Some(term)) =
            (self.weight_launches.get(index), self.losses.get_mut(index))
        {
            for factor in launches {
                let bytes = weighted(factor, weight);
                self.bound
                    .write_uniform(gpu, factor.launch, factor.offset, &bytes);
            }
            term.1 = weight;
        }
    }

    /// The step's bound launches, for timing them alone (the batch is whatever the buffers
    /// hold): those every step runs, without the loss sums that run when the losses are read.
    pub fn into_bound(self) -> BoundPlan {
        self.bound
    }

    /// What the memory planner saved for this step.
    pub fn memory(&self) -> MemoryReport {
        self.memory
    }

    /// Times each launch of the step on a batch, alone and repeated `reps` times (timestamp
    /// queries where available): the time per launch, with its kernel, in plan order (the
    /// launches every step runs: the loss sums, run only when the losses are read, aside). For
    /// finding where a step's time goes; it updates the weights many times over, so profile a
    /// model you do not mean to keep training.
    pub fn profile(
        &self,
        gpu: &Gpu,
        x: &[f32],
        labels: &[i32],
        reps: u32,
    ) -> Result<Vec<(String, f64)>> {
        gpu.write(&self.x, x)?;
        gpu.write(&self.labels, labels)?;
        let names = self.bound.kernel_names();
        let mut out = Vec::with_capacity(names.len());
        for (i, name) in names.into_iter().enumerate() {
            let m = crate::gpu::measure(gpu, reps, |pass| self.bound.record_one(pass, i))?;
            out.push((name, m.seconds));
        }
        Ok(out)
    }

    /// The inputs of a replayed teacher ([`Graph::replay`]) that each step reads from the host:
    /// name and shape (batch first).
    pub fn teacher_inputs(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.teacher_inputs
            .iter()
            .map(|(n, t)| (n.as_str(), t.shape()))
    }

    /// Writes a replayed teacher's input for the next step (a batch of its cached outputs, in
    /// the batch's order). Like x, it travels with the next submission.
    pub fn write_teacher_input(&self, gpu: &Gpu, name: &str, data: &[f32]) -> Result<()> {
        let (_, t) = self
            .teacher_inputs
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| shape_error(name, "the step's teacher has no such input"))?;
        gpu.write(t, data)
    }

    /// The contrastive terms that read bank rows per sample: each term's index, `K + 1` (the
    /// rows per sample) and the banks' size N.
    pub fn sample_rows(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        self.sample_rows
            .iter()
            .map(|r| (r.term, r.indices.shape()[1], r.bank_rows))
    }

    /// Writes term `term`'s bank rows for the next step: `(B, K+1)` indices below N, each
    /// sample's own index first (see [`crate::data::NegativeSampler`]). Like x, they travel with
    /// the next submission.
    pub fn write_sample_rows(&self, gpu: &Gpu, term: usize, rows: &[i32]) -> Result<()> {
        let r = self
            .sample_rows
            .iter()
            .find(|r| r.term == term)
            .ok_or_else(|| shape_error(&format!("term {term}"), "reads no bank rows"))?;
        if rows.len() != r.indices.numel() {
            return Err(shape_error(
                &format!("term {term}"),
                format!(
                    "needs {:?} bank rows, got {}",
                    r.indices.shape(),
                    rows.len()
                ),
            ));
        }
        if let Some(bad) = rows.iter().find(|&&i| i < 0 || i as usize >= r.bank_rows) {
            return Err(shape_error(
                &format!("term {term}"),
                format!("bank row {bad} is outside the {} rows", r.bank_rows),
            ));
        }
        gpu.write(&r.indices, rows)
    }

    /// Runs one step on a batch: one upload of x and the labels, one command buffer, one submit.
    /// Returns without waiting for the GPU.
    pub fn run(&self, gpu: &Gpu, x: &[f32], labels: &[i32]) -> Result<()> {
        self.run_inner(gpu, x, labels, false).map(|_| ())
    }

    /// Like [`TrainStep::run`], and also copies this step's losses into a staging buffer that is
    /// mapped in the background; [`TrainStep::poll_losses`] returns them once the GPU is done,
    /// without ever stalling the steps. Returns false (and fetches nothing) while an earlier
    /// fetch has not been collected.
    pub fn run_fetching_losses(&self, gpu: &Gpu, x: &[f32], labels: &[i32]) -> Result<bool> {
        self.run_inner(gpu, x, labels, true)
    }

    fn run_inner(&self, gpu: &Gpu, x: &[f32], labels: &[i32], fetch: bool) -> Result<bool> {
        gpu.write(&self.x, x)?;
        gpu.write(&self.labels, labels)?;
        let fetching = fetch
            && self
                .fetch
                .phase
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        let mut encoder = gpu.encoder("train step");
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("train step"),
                timestamp_writes: None,
            });
            self.bound.record(&mut pass);
            if fetching {
                self.value_launches.record(&mut pass);
            }
        }
        if fetching {
            for (i, (_, _, t)) in self.losses.iter().enumerate() {
                encoder.copy_buffer_to_buffer(
                    t.buffer(),
                    t.offset(),
                    self.fetch.staging.raw(),
                    4 * i as u64,
                    4,
                );
            }
        }
        gpu.submit(encoder)?;
        if fetching {
            let phase = self.fetch.phase.clone();
            self.fetch
                .staging
                .raw()
                .slice(..)
                .map_async(wgpu::MapMode::Read, move |r| {
                    phase.store(if r.is_ok() { 2 } else { 0 }, Ordering::Release);
                });
        }
        Ok(fetching)
    }

    /// The losses of the step that last fetched them, once the GPU has finished it (each term's
    /// label, weight and value); `None` while it is still running or when nothing was fetched.
    pub fn poll_losses(&self, gpu: &Gpu) -> Result<Option<Vec<(String, f32, f32)>>> {
        if self.fetch.phase.load(Ordering::Acquire) == 1 {
            gpu.device()
                .poll(wgpu::PollType::Poll)
                .map_err(|e| Error::Wgpu {
                    context: "polling for losses".into(),
                    message: e.to_string(),
                })?;
        }
        if self.fetch.phase.load(Ordering::Acquire) != 2 {
            return Ok(None);
        }
        let staging = self.fetch.staging.raw();
        let values: Vec<f32> = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::Wgpu {
                    context: "reading fetched losses".into(),
                    message: e.to_string(),
                })?;
            bytemuck::cast_slice::<u8, f32>(&view)[..self.losses.len()].to_vec()
        };
        staging.unmap();
        self.fetch.phase.store(0, Ordering::Release);
        Ok(Some(
            self.losses
                .iter()
                .zip(values)
                .map(|((n, w, _), v)| (n.clone(), *w, v))
                .collect(),
        ))
    }

    /// Each loss term's label, weight and value from the last step (waits for the GPU). Plain
    /// steps leave the sums of their row losses out; this submits them for the last step first.
    pub fn losses(&self, gpu: &Gpu) -> Result<Vec<(String, f32, f32)>> {
        if !self.value_launches.is_empty() {
            self.value_launches.submit(gpu, "loss values")?;
        }
        self.losses
            .iter()
            .map(|(name, w, t)| Ok((name.clone(), *w, gpu.read::<f32>(t)?[0])))
            .collect::<Result<Vec<_>, Error>>()
    }

    /// The weighted total of the last step's losses (waits for the GPU).
    pub fn total_loss(&self, gpu: &Gpu) -> Result<f32> {
        Ok(self.losses(gpu)?.iter().map(|(_, w, l)| w * l).sum())
    }

    /// The student's logits from the last step.
    pub fn logits(&self) -> &Tensor {
        &self.logits
    }

    /// The adapters' weights (trained with the student, not exported with it).
    pub fn adapters(&self) -> &[Weights] {
        &self.state.adapters
    }

    /// The loss terms' own tensors (`terms.I.NAME`), one set per term that has any: trainable
    /// parameters (VID's variances, trained with the student) or a memory term's banks (CRD's,
    /// updated by its own launches); never exported with the student.
    pub fn parameters(&self) -> &[Weights] {
        &self.state.parameters
    }

    /// The loss terms' frozen modules (FT's paraphrasers), one per term that has one.
    pub fn frozen(&self) -> &[Weights] {
        &self.state.frozen
    }

    /// Optimizer steps taken so far (by this step and its siblings; waits for the GPU).
    pub fn steps_taken(&self, gpu: &Gpu) -> Result<u32> {
        Ok(gpu.read::<u32>(&self.state.step)?[0])
    }

    /// Everything a step carries from one call to the next besides the model's weights: the step
    /// counter (`step`), the optimizer's state (`optimizer.PARAM.K`), the adapters' weights
    /// (`adapters.I.…`), the loss terms' parameters and frozen paraphrasers (`terms.I.…`), as
    /// host tensors for a resumable checkpoint (waits for the GPU).
    pub fn save_state(&self, gpu: &Gpu) -> Result<TensorMap> {
        let mut out = TensorMap::new();
        out.insert(
            "step".into(),
            HostTensor::i32(&[1], vec![self.steps_taken(gpu)? as i32]),
        );
        for (name, tensors) in &self.state.optimizer {
            for (k, t) in tensors.iter().enumerate() {
                out.insert(
                    format!("optimizer.{name}.{k}"),
                    HostTensor::f32(t.shape(), gpu.read::<f32>(t)?),
                );
            }
        }
        for w in self
            .state
            .adapters
            .iter()
            .chain(&self.state.parameters)
            .chain(&self.state.frozen)
        {
            out.extend(w.to_host(gpu)?);
        }
        out.extend(state_to_host(gpu, &self.discriminator_tensors())?);
        Ok(out)
    }

    /// The discriminator's tensors a resumed run needs, by their names in the saved state:
    /// `discriminator.step`, `discriminator.NAME`, `discriminator.optimizer.NAME.k`.
    fn discriminator_tensors(&self) -> Vec<(String, &Tensor)> {
        let Some(d) = &self.state.discriminator else {
            return Vec::new();
        };
        let mut out = side_state("discriminator", &d.step, &d.optimizer);
        out.extend(
            d.weights
                .iter()
                .map(|(n, t)| (format!("discriminator.{n}"), t)),
        );
        out
    }

    /// The discriminator's losses in the last step, on the teacher's tap (labelled real) and on
    /// the student's (fake), or `None` without one.
    pub fn discriminator_losses(&self, gpu: &Gpu) -> Result<Option<[f32; 2]>> {
        self.discriminator_losses
            .as_ref()
            .map(|[r, f]| Ok([gpu.read::<f32>(r)?[0], gpu.read::<f32>(f)?[0]]))
            .transpose()
    }

    /// Restores what [`TrainStep::save_state`] saved (`what` names the source in errors).
    pub fn load_state(&self, gpu: &Gpu, what: &str, saved: &TensorMap) -> Result<()> {
        let get = |name: &str| {
            saved
                .get(name)
                .ok_or_else(|| input_error(what, format!("tensor '{name}' is missing")))
        };
        let step = get("step")?
            .as_i32()
            .and_then(|v| v.first().copied())
            .unwrap_or(0);
        gpu.write(&self.state.step, &[step.max(0) as u32])?;
        let mut targets: Vec<(String, &Tensor)> = Vec::new();
        for (name, tensors) in &self.state.optimizer {
            targets.extend(
                tensors
                    .iter()
                    .enumerate()
                    .map(|(k, t)| (format!("optimizer.{name}.{k}"), t)),
            );
        }
        for w in self
            .state
            .adapters
            .iter()
            .chain(&self.state.parameters)
            .chain(&self.state.frozen)
        {
            targets.extend(w.iter().map(|(n, t)| (n.clone(), t)));
        }
        state_from_host(gpu, what, saved, &self.discriminator_tensors())?;
        for (name, t) in targets {
            let host = get(&name)?;
            let values = host
                .as_f32()
                .filter(|_| host.shape == t.shape())
                .ok_or_else(|| {
                    input_error(
                        what,
                        format!(
                            "tensor '{name}' should be f32 {:?}, found {} {:?}",
                            t.shape(),
                            host.dtype_name(),
                            host.shape
                        ),
                    )
                })?;
            gpu.write(t, values)?;
        }
        Ok(())
    }
}

/// A compiled forward pass in evaluation mode.
pub struct EvalStep {
    bound: BoundPlan,
    x: Tensor,
    output: Tensor,
    taps: Vec<Tensor>,
}

impl EvalStep {
    /// The step's bound launches, for timing them alone.
    pub fn into_bound(self) -> BoundPlan {
        self.bound
    }

    /// Plans and binds the forward pass of `graph` (input `x`) once.
    pub fn compile(gpu: &Gpu, graph: &Graph, weights: &Weights) -> Result<EvalStep> {
        Self::compile_taps(gpu, graph, weights, &[])
    }

    /// Like [`EvalStep::compile`], also keeping the named taps for [`EvalStep::run_taps`].
    pub fn compile_taps(
        gpu: &Gpu,
        graph: &Graph,
        weights: &Weights,
        taps: &[&str],
    ) -> Result<EvalStep> {
        // Planned with only the taps asked for, so that the rest can be fused (a batch norm's
        // output into its ReLU).
        let graph = &graph.keeping_taps(&taps.iter().map(|t| t.to_string()).collect());
        let xv = input_value(graph, "x")?;
        let x = gpu.empty(graph.shape(xv), DType::F32)?;
        let mut plan = Vec::new();
        let inputs: BTreeMap<String, Tensor> = [("x".to_string(), x.clone())].into();
        let fwd = plan_forward(gpu, graph, weights, &inputs, Mode::Eval, None, &mut plan)?;
        let output = fwd
            .get(
                graph
                    .output
                    .ok_or_else(|| shape_error("model", "the model has no output"))?,
            )
            .clone();
        let taps: Vec<Tensor> = taps
            .iter()
            .map(|t| Ok(fwd.get(graph.tapped(t)?).clone()))
            .collect::<Result<_>>()?;
        drop(fwd);
        let mut pinned = vec![&output];
        pinned.extend(&taps);
        plan_memory(gpu, &mut plan, &pinned)?;
        let bound = gpu.bind_plan(&plan)?;
        drop(plan);
        gpu.pool().trim();
        Ok(EvalStep {
            bound,
            x,
            output,
            taps,
        })
    }

    fn submit(&self, gpu: &Gpu, x: &[f32]) -> Result<()> {
        gpu.write(&self.x, x)?;
        let mut encoder = gpu.encoder("eval step");
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("eval step"),
                timestamp_writes: None,
            });
            self.bound.record(&mut pass);
        }
        gpu.submit(encoder)?;
        Ok(())
    }

    /// Runs the forward pass on a batch and returns the output (waits for the GPU).
    pub fn run(&self, gpu: &Gpu, x: &[f32]) -> Result<Vec<f32>> {
        self.submit(gpu, x)?;
        gpu.read::<f32>(&self.output)
    }

    /// Runs the forward pass on a batch and returns the taps given at compile time, in order.
    pub fn run_taps(&self, gpu: &Gpu, x: &[f32]) -> Result<Vec<Vec<f32>>> {
        self.submit(gpu, x)?;
        self.taps.iter().map(|t| gpu.read::<f32>(t)).collect()
    }

    /// The output tensor.
    pub fn output(&self) -> &Tensor {
        &self.output
    }
}
