//! Adversarial distillation with a discriminator (as in Xu et al. 2018 and Wang et al. 2018): a
//! small MLP `D` on a tap (the logits, or a feature map) learns to tell the teacher's from the
//! student's, while the student, besides its other terms, learns to make its own look like the
//! teacher's. Planned into the training step, after its loss terms, so that one submission does
//! both players' updates:
//!
//! - the student's **adversarial term** `w · BCE(D(s), 1)`, its gradient taken back through `D`
//!   (not updated by it) into the student's tap;
//! - `D`'s own update from `BCE(D(t), 1) + BCE(D(s), 0)`, both taps detached, with its own
//!   optimizer and step counter.
//!
//! Both read `D` as it was before the step (the student's term is planned before `D`'s update),
//! as simultaneous GAN updates do.

use std::collections::BTreeMap;

use crate::Result;
use crate::error::shape_error;
use crate::gpu::{DType, Dispatch, Gpu, Tensor};
use crate::kernels::losses::Loss;
use crate::kernels::{elementwise, optimizer};
use crate::models;

use super::exec::{Mode, plan_backward, plan_forward};
use super::step::OptimizerSpec;
use super::update::{OptimizerState, named_updates, plan_updates};
use super::{Graph, Weights};

/// The discriminator of a training step.
#[derive(Clone, Debug)]
pub struct DiscriminatorSpec {
    /// The tap it reads, of the student and of the teacher (same shape).
    pub tap: String,
    /// Its hidden widths.
    pub hidden: Vec<usize>,
    /// The weight of the student's adversarial term.
    pub weight: f32,
    /// Its optimizer.
    pub optimizer: OptimizerSpec,
    /// Seed of its initial weights.
    pub seed: u64,
}

/// What successive steps share of the discriminator: its weights, optimizer state and counter.
#[derive(Clone)]
pub struct DiscriminatorState {
    /// Its settings.
    pub spec: DiscriminatorSpec,
    /// Its weights (`layers.*`).
    pub weights: Weights,
    /// Its optimizer's state per parameter.
    pub optimizer: OptimizerState,
    /// Its step counter.
    pub step: Tensor,
}

/// The planned discriminator: the gradient it sends into the student's tap, its state, and the
/// losses it measures.
pub struct PlannedDiscriminator {
    /// `w · dBCE(D(s), 1)/ds`, to seed into the student's tap.
    pub student_seed: Tensor,
    /// The student's adversarial loss (unweighted).
    pub adversarial_loss: Tensor,
    /// `D`'s loss on the teacher's and on the student's tap.
    pub discriminator_losses: [Tensor; 2],
    /// Its state, to share with a sibling step.
    pub state: DiscriminatorState,
    /// The buffers its gradients were gathered into, which the step's memory planning must pin
    /// ([`super::update::PlannedUpdates::gradients`]).
    pub gradients: Vec<Tensor>,
}

/// A constant `(B, 1)` tensor of `value`.
fn constant(gpu: &Gpu, batch: usize, value: f32) -> Result<Tensor> {
    gpu.upload(&[batch, 1], &vec![value; batch])
}

/// The discriminator's graph for taps of `shape`.
pub fn discriminator_graph(shape: &[usize], hidden: &[usize]) -> Result<Graph> {
    models::discriminator(shape, hidden)
}

/// Appends the discriminator's part of a training step to `plan`: the student's adversarial term
/// and `D`'s update, reading the student's tap `student` and the teacher's `teacher`. `shared` is
/// a sibling step's discriminator (the same weights and optimizer state at another batch size).
pub fn plan_discriminator(
    gpu: &Gpu,
    spec: &DiscriminatorSpec,
    student: &Tensor,
    teacher: &Tensor,
    shared: Option<&DiscriminatorState>,
    plan: &mut Vec<Dispatch>,
) -> Result<PlannedDiscriminator> {
    if student.shape() != teacher.shape() {
        return Err(shape_error(
            "discriminator",
            format!(
                "the student's tap '{}' is {:?} but the teacher's is {:?}",
                spec.tap,
                student.shape(),
                teacher.shape()
            ),
        ));
    }
    let batch = student.shape()[0];
    let graph = discriminator_graph(student.shape(), &spec.hidden)?;
    let frozen = graph.frozen();
    let out = graph
        .output
        .ok_or_else(|| shape_error("discriminator", "has no output"))?;
    let x = graph
        .find("x")
        .ok_or_else(|| shape_error("discriminator", "has no input"))?;
    let weights = match shared {
        Some(s) => s.weights.clone(),
        None => Weights::init(gpu, &graph, spec.seed)?,
    };
    let step = match shared {
        Some(s) => s.step.clone(),
        None => gpu.zeros(&[1], DType::U32)?,
    };
    let (real, fake) = (constant(gpu, batch, 1.0)?, constant(gpu, batch, 0.0)?);
    let bce = Loss::new("bce")?;
    let input = |t: &Tensor| -> BTreeMap<String, Tensor> { [("x".to_string(), t.clone())].into() };

    // The student's term: D (not trained here) should take its tap for the teacher's.
    let f = plan_forward(
        gpu,
        &frozen,
        &weights,
        &input(student),
        Mode::Train,
        None,
        plan,
    )?;
    let lp = bce.launch(gpu, &[f.get(out), &real])?;
    plan.extend(lp.dispatches);
    let (d, seed) = elementwise::scale_plan(gpu, &lp.grads[0], spec.weight)?;
    plan.push(d);
    let mut back = plan_backward(gpu, &frozen, &f, vec![(out, seed)], &[x], plan)?;
    let student_seed = back
        .remove("x")
        .ok_or_else(|| shape_error("discriminator", "no gradient reached the student's tap"))?;

    // D's update: the teacher's tap is real, the student's fake (both detached).
    let mut sides = Vec::new();
    for (tap, target) in [(teacher, &real), (student, &fake)] {
        let f = plan_forward(gpu, &graph, &weights, &input(tap), Mode::Train, None, plan)?;
        let lp = bce.launch(gpu, &[f.get(out), target])?;
        plan.extend(lp.dispatches);
        let grads = plan_backward(gpu, &graph, &f, vec![(out, lp.grads[0].clone())], &[], plan)?;
        sides.push((lp.loss, grads));
    }
    let (fake_side, real_side) = (sides.pop(), sides.pop());
    let (Some((fake_loss, fake_grads)), Some((real_loss, grads))) = (fake_side, real_side) else {
        return Err(shape_error("discriminator", "both sides must be planned"));
    };
    // Fresh sums: the returned gradients may be views of other values' buffers.
    let mut summed = BTreeMap::new();
    for (name, g) in &grads {
        let (d, sum) = match fake_grads.get(name) {
            Some(other) => elementwise::add_plan(gpu, g, other)?,
            None => elementwise::scale_plan(gpu, g, 1.0)?,
        };
        plan.push(d);
        summed.insert(name.clone(), sum);
    }
    let grads = summed;
    plan.push(optimizer::advance_step(gpu, &step)?);
    let updated = plan_updates(
        gpu,
        &spec.optimizer,
        named_updates(&weights, &grads)?,
        weights.arenas(),
        shared.map(|s| &s.optimizer),
        &step,
        plan,
    )?;
    let (state, gradients) = (updated.state, updated.gradients);
    Ok(PlannedDiscriminator {
        student_seed,
        adversarial_loss: lp.loss,
        discriminator_losses: [real_loss, fake_loss],
        state: DiscriminatorState {
            spec: spec.clone(),
            weights,
            optimizer: state,
            step,
        },
        gradients,
    })
}
