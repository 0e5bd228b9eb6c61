//! The loss registry: one [`LossDef`] per distillation loss, each defined in the file of its
//! shader family ([`response`]: `ce`, `kd`, `dkd`; [`feature`]:
//! `hint`, `at`, …; [`relation`]: `sp`, `rkd_distance`, `rkd_angle`, `pkt`, …; [`contrast`]:
//! `crd`).
//!
//! An entry holds everything that has the loss's name: the name itself (the config's `kind`, the
//! `op` runner's op and the metric label are that one string), a summary, what the loss reads
//! (logits or features) and which tensors it takes, its attributes with their defaults and
//! ranges (the only place a default lives), its GPU launcher, its f64 reference and its
//! conformance and benchmark cases. Config checking, the graph step, `wgdistill op`, `check`,
//! `bench` and the tests all read this table; adding a loss is an entry in a family's `LOSSES`.

use crate::catalogue::{Case, Prepared, Suite, Work};
use crate::error::input_error;
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::io::{HostData, HostTensor};
use crate::reference::{LossGrads, widen};
use crate::{Error, Result};

use super::{AttrDef, contrast, feature, relation, response};

pub use super::Range;

/// Every loss, by family.
pub fn registry() -> impl Iterator<Item = &'static LossDef> {
    response::LOSSES
        .iter()
        .chain(feature::LOSSES)
        .chain(relation::LOSSES)
        .chain(contrast::LOSSES)
        .copied()
}

/// The loss called `name`, or an error listing the known ones.
pub fn find(name: &str) -> Result<&'static LossDef> {
    registry().find(|d| d.name == name).ok_or_else(|| {
        let names: Vec<&str> = registry().map(|d| d.name).collect();
        input_error(
            format!("loss '{name}'"),
            format!("unknown loss; known losses: {}", names.join(", ")),
        )
    })
}

/// What a loss compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reads {
    /// Class scores: with several teachers these read their softened mixture; in mutual
    /// learning a peer's logits; in self-distillation the model's own logits.
    Logits,
    /// Intermediate taps (feature maps or embeddings), possibly through an adapter.
    Features,
}

/// What one input of a loss is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The student side: the loss's gradient is taken with respect to it.
    Student,
    /// The target side (a teacher, a peer, a deeper tap): a constant.
    Teacher,
    /// Integer class labels, `(B)`.
    Labels,
    /// Targets a training scheme supplies itself (a discriminator's real/fake labels for `bce`,
    /// a BatchNorm layer's running statistics for `bn_match`): read from no tap, so an ordinary
    /// distillation step cannot feed them and its config refuses the loss.
    Target,
    /// A trainable tensor the loss term owns (VID's per-channel variance): initialised by the
    /// loss's [`LossDef::parameters`], trained with the student, saved for `--resume`, never
    /// exported with the student. The loss's gradient is taken with respect to it.
    Parameter,
    /// A teacher-side tap seen through an embedding head the loss term owns (CRD's teacher
    /// embedding): the loss's gradient is taken with respect to it and trains the head; the
    /// teacher itself stays frozen.
    TeacherEmbedding,
    /// Rows gathered from a memory bank the loss term owns, `(B, K+1, D)`: the op runner takes
    /// them as given; a training step reads them in place from the term's `(N, D)` bank through
    /// the loader's per-sample indices. The loss also returns the bank's updated rows, as
    /// `NAME_new`.
    Memory,
}

impl Role {
    /// Whether an input of this role reads a teacher-side tap (`teacher_taps`).
    pub fn teacher_side(self) -> bool {
        matches!(self, Role::Teacher | Role::TeacherEmbedding)
    }

    /// Whether the loss's gradient is taken with respect to an input of this role.
    pub fn trains(self) -> bool {
        matches!(
            self,
            Role::Student | Role::Parameter | Role::TeacherEmbedding
        )
    }
}

/// One input tensor of a loss: its name (the `op` runner's tensor name) and role. A loss may take
/// several inputs of one role (FSP's two student maps): they are read in order, each from its
/// own tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossInput {
    /// Tensor name.
    pub name: &'static str,
    /// What it is.
    pub role: Role,
}

/// The student input, `student`.
pub const STUDENT: LossInput = LossInput {
    name: "student",
    role: Role::Student,
};
/// The teacher input, `teacher`.
pub const TEACHER: LossInput = LossInput {
    name: "teacher",
    role: Role::Teacher,
};
/// The labels input, `labels`.
pub const LABELS: LossInput = LossInput {
    name: "labels",
    role: Role::Labels,
};

/// Where a loss's launch multiplies its whole gradient by a factor of its uniform parameters
/// (the response losses' `grad_scale`): a compiled step folds a term's weight into that factor
/// rather than scaling the gradient again in a launch of its own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradScale {
    /// The launch, by its index in [`LossPlan::dispatches`].
    pub launch: usize,
    /// The factor's byte offset in that launch's uniform parameters.
    pub offset: u64,
    /// The factor as prepared.
    pub value: f32,
}

/// The prepared launches of a loss: the loss (shape `[1]`) and its gradient with respect to each
/// trainable (student or parameter) input, ready to run now or to be recorded into a compiled
/// step.
pub struct LossPlan {
    /// The launches, in order.
    pub dispatches: Vec<Dispatch>,
    /// The loss, shape `[1]`.
    pub loss: Tensor,
    /// `dL/d input` for each trainable input, in the order of the loss's inputs.
    pub grads: Vec<Tensor>,
    /// The updated bank rows for each [`Role::Memory`] input, `(B, D)`, in order.
    pub updated: Vec<Tensor>,
    /// For a loss of one gradient, the factor its launch multiplies that gradient by, if any.
    pub grad_scale: Option<GradScale>,
}

impl LossPlan {
    /// A loss of one student input.
    pub fn single(dispatches: Vec<Dispatch>, loss: Tensor, grad: Tensor) -> LossPlan {
        LossPlan {
            dispatches,
            loss,
            grads: vec![grad],
            updated: Vec::new(),
            grad_scale: None,
        }
    }

    /// Runs the launches in one submission and returns the loss and the first student input's
    /// gradient.
    pub fn run(self, gpu: &Gpu) -> Result<(Tensor, Tensor)> {
        gpu.execute(&self.dispatches)?;
        let grad = self
            .grads
            .into_iter()
            .next()
            .ok_or_else(|| input_error("loss", "the loss has no student input"))?;
        Ok((self.loss, grad))
    }
}

/// Launches a loss on device tensors given in the order of [`LossDef::inputs`].
pub type LaunchFn = fn(&Gpu, &Loss, &[&Tensor]) -> Result<LossPlan>;
/// The f64 reference on inputs given in the order of [`LossDef::inputs`].
pub type ReferenceFn = fn(&Loss, &[RefInput]) -> LossGrads;

/// An input of a loss's f64 reference: shape and values (labels as whole numbers).
#[derive(Clone, Debug, PartialEq)]
pub struct RefInput {
    /// Shape.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub values: Vec<f64>,
}

impl RefInput {
    /// The host tensor's elements widened to f64 (integers converted).
    pub fn of(t: &HostTensor) -> RefInput {
        let values = match &t.data {
            HostData::F32(v) => widen(v),
            HostData::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            HostData::I8(v) => v.iter().map(|&x| f64::from(x)).collect(),
        };
        RefInput {
            shape: t.shape.clone(),
            values,
        }
    }

    /// The values as labels: class indices, `None` for the negative ones (unlabelled rows).
    pub fn labels(&self) -> Vec<Option<usize>> {
        self.values
            .iter()
            .map(|&y| (y >= 0.0).then_some(y as usize))
            .collect()
    }
}
/// The loss's cases for a suite.
pub type CasesFn = fn(Suite) -> Vec<LossCase>;
/// The initial values of a loss term's [`Role::Parameter`] inputs, in order, from the loss and
/// the shapes of its other inputs (in the order of [`LossDef::inputs`], parameters left out).
pub type ParametersFn = fn(&Loss, &[&[usize]]) -> Vec<HostTensor>;

/// A memory loss's training-step launcher: the loss, its other inputs, its memory tensors and the
/// loader's indices.
pub type BankedFn = fn(&Gpu, &Loss, &[&Tensor], &[&Tensor], &Tensor) -> Result<LossPlan>;

/// How a loss with [`Role::Memory`] inputs trains: banks of a row per training sample, read in
/// place through the rows the loader picks for each sample, updated rows written back.
#[derive(Clone, Copy, Debug)]
pub struct MemoryDef {
    /// The attribute holding the banks' rows N (a training step sets it to the training set's
    /// size).
    pub size_attr: &'static str,
    /// The memory's tensors (the memory inputs, then any state such as CRD's normalisers), in the
    /// order of `init` and `banked`.
    pub names: &'static [&'static str],
    /// Rows a step reads per sample: the width of the loader's indices.
    pub rows: fn(&Loss) -> usize,
    /// Initial values of `names` for N rows of width D, from a seed.
    pub init: fn(&Loss, usize, usize, u64) -> Vec<HostTensor>,
    /// Plans the loss on the memory read in place (`memory` in `names` order, `indices`
    /// `(B, rows)`), ending with the launches that write the updated rows back.
    pub banked: BankedFn,
}

/// A distillation (or task) loss: the one definition every consumer reads.
#[derive(Debug)]
pub struct LossDef {
    /// The name: config `kind`, op name and metric label.
    pub name: &'static str,
    /// One line on what it computes.
    pub summary: &'static str,
    /// Logits or features.
    pub reads: Reads,
    /// Its input tensors, in the order its launcher and reference take them.
    pub inputs: &'static [LossInput],
    /// Its attributes with their defaults and ranges.
    pub attrs: &'static [AttrDef],
    /// The GPU launcher.
    pub launch: LaunchFn,
    /// The f64 reference.
    pub reference: ReferenceFn,
    /// Conformance and benchmark cases.
    pub cases: CasesFn,
    /// How its [`Role::Parameter`] inputs start (`None` for a loss without any).
    pub parameters: Option<ParametersFn>,
    /// How its [`Role::Memory`] inputs live in a training step (`None` for a loss without any).
    pub memory: Option<MemoryDef>,
}

impl LossDef {
    /// The op runner's outputs: `loss`, then `grad_NAME` for each trainable input `NAME`, then
    /// `NAME_new` for each memory input.
    pub fn outputs(&self) -> Vec<String> {
        std::iter::once("loss".to_string())
            .chain(self.trainable_inputs().map(|i| format!("grad_{}", i.name)))
            .chain(self.memory_inputs().map(|i| format!("{}_new", i.name)))
            .collect()
    }

    /// Its memory-bank inputs, in order: the order of [`LossPlan::updated`].
    pub fn memory_inputs(&self) -> impl Iterator<Item = &'static LossInput> {
        self.inputs.iter().filter(|i| i.role == Role::Memory)
    }

    /// Its inputs the gradient is taken with respect to (student and parameter inputs), in
    /// order: the order of [`LossPlan::grads`].
    pub fn trainable_inputs(&self) -> impl Iterator<Item = &'static LossInput> {
        self.inputs.iter().filter(|i| i.role.trains())
    }

    /// Its parameter inputs, in order.
    pub fn parameter_inputs(&self) -> impl Iterator<Item = &'static LossInput> {
        self.inputs.iter().filter(|i| i.role == Role::Parameter)
    }

    /// Its student inputs, in order.
    pub fn student_inputs(&self) -> impl Iterator<Item = &'static LossInput> {
        self.inputs.iter().filter(|i| i.role == Role::Student)
    }

    /// Its teacher-side inputs (read from `teacher_taps`), in order.
    pub fn teacher_inputs(&self) -> impl Iterator<Item = &'static LossInput> {
        self.inputs.iter().filter(|i| i.role.teacher_side())
    }

    /// Whether it compares the student with a target (a teacher, peer or deeper tap).
    pub fn needs_teacher(&self) -> bool {
        self.inputs.iter().any(|i| i.role.teacher_side())
    }

    /// Whether its term owns embedding heads (a [`Role::TeacherEmbedding`] input: CRD's
    /// `embed_s` and `embed_t`).
    pub fn has_embedding_heads(&self) -> bool {
        self.inputs.iter().any(|i| i.role == Role::TeacherEmbedding)
    }

    /// Whether it reads the labels.
    pub fn needs_labels(&self) -> bool {
        self.inputs.iter().any(|i| i.role == Role::Labels)
    }

    /// Whether it reads logits.
    pub fn reads_logits(&self) -> bool {
        self.reads == Reads::Logits
    }

    /// Whether it pulls the student's logits toward a target's (a teacher's, a peer's, the
    /// model's own): the terms several teachers' mixture and mutual learning's peers serve.
    pub fn distils_logits(&self) -> bool {
        self.reads_logits() && self.needs_teacher()
    }

    /// The attribute called `name`.
    pub fn attr(&self, name: &str) -> Option<&'static AttrDef> {
        self.attrs.iter().find(|a| a.name == name)
    }

    /// `temperature, alpha` (or `no attributes`), for errors.
    pub fn attr_names(&self) -> String {
        if self.attrs.is_empty() {
            return "no attributes".into();
        }
        let names: Vec<&str> = self.attrs.iter().map(|a| a.name).collect();
        names.join(", ")
    }
}

/// A loss with its attribute values: what a loss term computes.
#[derive(Clone, Debug)]
pub struct Loss {
    def: &'static LossDef,
    values: Vec<f64>,
}

impl PartialEq for Loss {
    fn eq(&self, other: &Self) -> bool {
        self.def.name == other.def.name && self.values == other.values
    }
}

impl Loss {
    /// `def` with every attribute at its default.
    pub fn of(def: &'static LossDef) -> Loss {
        Loss {
            def,
            values: def.attrs.iter().map(|a| a.default).collect(),
        }
    }

    /// The loss called `name`, attributes at their defaults.
    pub fn new(name: &str) -> Result<Loss> {
        Ok(Loss::of(find(name)?))
    }

    /// Sets attribute `key`, checked against its range.
    pub fn with(mut self, key: &str, value: f64) -> Result<Loss> {
        let name = self.def.name;
        let Some(i) = self.def.attrs.iter().position(|a| a.name == key) else {
            return Err(input_error(
                format!("{name}: {key}"),
                format!(
                    "{name} takes no {key} (its attributes: {})",
                    self.def.attr_names()
                ),
            ));
        };
        let range = self.def.attrs[i].range;
        if !range.contains(value) {
            return Err(input_error(
                format!("{name}: {key}"),
                format!("must be {}, got {value}", range.describe()),
            ));
        }
        self.values[i] = value;
        Ok(self)
    }

    /// Sets several attributes.
    pub fn with_all<'a>(self, attrs: impl IntoIterator<Item = (&'a str, f64)>) -> Result<Loss> {
        attrs.into_iter().try_fold(self, |l, (k, v)| l.with(k, v))
    }

    /// The definition.
    pub fn def(&self) -> &'static LossDef {
        self.def
    }

    /// The name.
    pub fn name(&self) -> &'static str {
        self.def.name
    }

    /// Attribute `key`'s value (NaN for a key the loss does not have: launchers ask only for
    /// their own).
    pub fn attr(&self, key: &str) -> f64 {
        self.def
            .attrs
            .iter()
            .position(|a| a.name == key)
            .map_or(f64::NAN, |i| self.values[i])
    }

    /// Attribute `key` as the kernels' f32.
    pub fn attr_f32(&self, key: &str) -> f32 {
        self.attr(key) as f32
    }

    /// Every attribute with its value.
    pub fn attrs(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        self.def
            .attrs
            .iter()
            .map(|a| a.name)
            .zip(self.values.iter().copied())
    }

    /// Prepares the launches on device tensors in the order of [`LossDef::inputs`].
    pub fn launch(&self, gpu: &Gpu, inputs: &[&Tensor]) -> Result<LossPlan> {
        if inputs.len() != self.def.inputs.len() {
            return Err(Error::Shape {
                op: self.def.name.into(),
                detail: format!(
                    "takes {} inputs, {} were given",
                    self.def.inputs.len(),
                    inputs.len()
                ),
            });
        }
        (self.def.launch)(gpu, self, inputs)
    }

    /// The f64 reference on inputs in the order of [`LossDef::inputs`].
    pub fn reference(&self, inputs: &[RefInput]) -> LossGrads {
        (self.def.reference)(self, inputs)
    }

    /// The initial values of its parameter inputs, given the shapes of its other inputs (in
    /// order, parameters left out): empty for a loss without parameters.
    pub fn initial_parameters(&self, shapes: &[&[usize]]) -> Vec<HostTensor> {
        self.def
            .parameters
            .map_or_else(Vec::new, |f| f(self, shapes))
    }
}

/// Checks a value a launcher was given against its loss's attribute range (the registry's),
/// for callers of the typed launchers that bypass [`Loss::with`].
pub(crate) fn check_attr(def: &LossDef, key: &str, value: f32) -> Result<()> {
    match def.attr(key) {
        Some(a) if !a.range.contains(f64::from(value)) => Err(input_error(
            format!("{}: {key}", def.name),
            format!("must be {}, got {value}", a.range.describe()),
        )),
        _ => Ok(()),
    }
}

/// A size as the kernels' u32, or an error naming the op.
pub(crate) fn u32_of(op: &str, what: &str, n: usize) -> Result<u32> {
    u32::try_from(n)
        .map_err(|_| crate::error::shape_error(op, format!("{what} = {n} exceeds u32 indexing")))
}

/// One case of a loss: inputs in the order of [`LossDef::inputs`], attributes, tolerances and
/// the work per run.
#[derive(Clone, Debug)]
pub struct LossCase {
    /// Shape, as text.
    pub shape: String,
    /// Input tensors.
    pub inputs: Vec<HostTensor>,
    /// Attributes other than the defaults.
    pub attrs: Vec<(&'static str, f64)>,
    /// Relative tolerance against the reference.
    pub rtol: f64,
    /// Absolute tolerance against the reference.
    pub atol: f64,
    /// Work per run.
    pub work: Work,
    /// Whether the loss is differentiable as computed here: not when it sets a constant from the
    /// batch itself (CRD's first-batch Z), through which no gradient flows by definition.
    pub differentiable: bool,
}

impl LossCase {
    /// A case on `inputs`, default attributes and tolerances `rtol = 2e-4, atol = 2e-6`, timed
    /// only.
    pub fn new(shape: impl Into<String>, inputs: Vec<HostTensor>) -> LossCase {
        LossCase {
            shape: shape.into(),
            inputs,
            attrs: Vec::new(),
            rtol: 2e-4,
            atol: 2e-6,
            work: Work::Time,
            differentiable: true,
        }
    }

    /// A case whose loss sets a constant from its own batch (see [`LossCase::differentiable`]).
    pub fn batch_estimated(mut self) -> LossCase {
        self.differentiable = false;
        self
    }

    /// With attributes.
    pub fn attrs(mut self, attrs: &[(&'static str, f64)]) -> LossCase {
        self.attrs = attrs.to_vec();
        self
    }

    /// With tolerances.
    pub fn tolerance(mut self, rtol: f64, atol: f64) -> LossCase {
        self.rtol = rtol;
        self.atol = atol;
        self
    }

    /// With the work per run.
    pub fn work(mut self, work: Work) -> LossCase {
        self.work = work;
        self
    }
}

fn upload(gpu: &Gpu, t: &HostTensor) -> Result<Tensor> {
    match &t.data {
        HostData::F32(v) => gpu.upload(&t.shape, v),
        HostData::I32(v) => gpu.upload(&t.shape, v),
        HostData::I8(v) => gpu.upload(
            &t.shape,
            &v.iter().map(|&b| i32::from(b)).collect::<Vec<_>>(),
        ),
    }
}

/// A catalogue case from a loss case: the loss and its gradient, against the reference.
fn catalogue_case(def: &'static LossDef, case: LossCase) -> Result<Case> {
    let loss = Loss::of(def).with_all(case.attrs.iter().copied())?;
    let label = match case.attrs.as_slice() {
        [] => def.name.to_string(),
        attrs => {
            let a: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{} ({})", def.name, a.join(", "))
        }
    };
    let inputs = std::sync::Arc::new(case.inputs);
    let (l2, i2) = (loss.clone(), inputs.clone());
    Ok(Case::new(label, case.shape, case.work, move |gpu| {
        let tensors: Vec<Tensor> = inputs
            .iter()
            .map(|t| upload(gpu, t))
            .collect::<Result<_>>()?;
        let plan = loss.launch(gpu, &tensors.iter().collect::<Vec<_>>())?;
        let mut outputs = vec![plan.loss];
        outputs.extend(plan.grads);
        outputs.extend(plan.updated);
        Ok(Prepared::new(plan.dispatches, outputs))
    })
    .reference(move || {
        let got = l2.reference(&i2.iter().map(RefInput::of).collect::<Vec<_>>());
        std::iter::once(got.loss)
            .chain(got.grads.into_iter().flatten())
            .chain(got.updated.into_iter().flatten())
            .collect()
    })
    .tolerance(case.rtol, case.atol))
}

/// The catalogue cases of `defs` (a family's losses) for `suite`.
pub fn cases(defs: &[&'static LossDef], suite: Suite) -> Vec<Case> {
    let mut out = Vec::new();
    for &def in defs {
        for case in (def.cases)(suite) {
            // A case's attributes are the family's own constants; the registry test checks
            // that every one is in range, so none is dropped here.
            let memory_bound = matches!(case.work, Work::Bytes(_));
            if let Ok(c) = catalogue_case(def, case) {
                out.push(if memory_bound {
                    c.baseline(crate::catalogue::stream_key(suite))
                } else {
                    c
                });
            }
        }
    }
    out
}
