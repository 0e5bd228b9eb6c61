//! DeepInversion (Yin et al. 2020): images synthesised from a trained teacher alone, for
//! distillation without its training data. A batch of images, the only trainable tensor, is
//! optimised with Adam so that the frozen teacher, in evaluation mode, classifies them as chosen
//! labels while every BatchNorm layer sees batch statistics like the running ones it learnt:
//!
//! `CE(T(x), y) + α_bn Σ_l w_l (‖μ_l(x) − μ_l‖₂ + ‖σ²_l(x) − σ²_l‖₂) + α_tv TV(x) + α_l2 mean_b ‖x_b‖₂`
//!
//! with `w_0` the first layer's multiplier (NVlabs' `first_bn_multiplier`) and 1 for the others.
//! As in NVlabs' code, the teacher may see the images randomly shifted and flipped each iteration
//! (`jitter`, `flip`), the gradient coming back through the inverse map; the priors (TV, L2) are
//! taken on the images themselves (NVlabs takes them on the shifted view: a circular shift leaves
//! L2 unchanged, and TV but for the wrapped edge).
//! Every term is a registry loss (`ce`, `bn_match`, `tv`, `l2_norm`, and `js` for Adaptive
//! DeepInversion's competition with a student); the layers' moments are
//! `ChannelMoments` taps on their inputs. The whole iteration (forward, losses, backward to the
//! images, Adam) is compiled once and replayed as one submission, nothing created or read back.

use std::cell::Cell;
use std::collections::BTreeMap;

use crate::Result;
use crate::error::{input_error, shape_error};
use crate::gpu::{BoundPlan, DType, Gpu, Tensor};
use crate::kernels::augment::{self, RollFlip};
use crate::kernels::losses::Loss;
use crate::kernels::optimizer::{self, AdamW};
use crate::kernels::{elementwise, feature, response};
use crate::rng::{Xorshift, normal_vec};

use super::exec::{Mode, plan_backward, plan_forward};
use super::{Graph, Op, Value, Weights};

/// What to synthesise and how.
#[derive(Clone, Debug)]
pub struct InversionSpec {
    /// The label each image is optimised toward (one per image of the teacher's input batch).
    pub labels: Vec<i32>,
    /// Adam's learning rate on the images.
    pub lr: f32,
    /// Adam's (β₁, β₂): NVlabs uses (0.5, 0.9) for synthesis.
    pub betas: (f64, f64),
    /// α_bn: weight of the BatchNorm-statistics terms.
    pub bn_weight: f32,
    /// The first BatchNorm layer's multiplier on its term.
    pub first_bn_multiplier: f32,
    /// α_tv: weight of the total variation (`tv` with p = 2).
    pub tv_weight: f32,
    /// α_l2: weight of the images' mean L2 norm.
    pub l2_weight: f32,
    /// Seed of the initial images (standard normal, as NVlabs' `torch.randn`), and of the
    /// jitter and flips.
    pub seed: u64,
    /// The most pixels each iteration shifts the images by (circularly, a new shift drawn per
    /// iteration, in each direction from −jitter to jitter) before the teacher sees them; 0 for
    /// none. NVlabs' jitter (30 pixels on 224 × 224 images).
    pub jitter: usize,
    /// Flip the images left–right before the teacher sees them, in half the iterations (drawn
    /// per iteration).
    pub flip: bool,
    /// Adaptive DeepInversion's competition: the weight of `1 − JS(S(x), T(x))` (Jensen–Shannon
    /// at temperature 3, ADI's) against the student given to [`Inversion::compile_competing`],
    /// which pushes the images to where the student still disagrees with the teacher; 0 for
    /// none.
    pub competition: f32,
}

impl InversionSpec {
    /// The shift and flip of iteration `k` after a (re)start: a pure function of the seed and
    /// `k`, so a synthesis is reproducible.
    pub fn augmentation(&self, k: u64) -> RollFlip {
        if self.jitter == 0 && !self.flip {
            return RollFlip::IDENTITY;
        }
        let mut rng = Xorshift::new(
            self.seed ^ 0x6a09_e667_f3bc_c909 ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        let span = 2 * self.jitter as u64 + 1;
        let mut offset = || (rng.next_u64() % span) as i64 - self.jitter as i64;
        let shift = (offset(), offset());
        RollFlip {
            shift,
            flip: self.flip && rng.next_u64() & 1 == 1,
        }
    }
}

/// The loss terms after an iteration, for logging (weighted as in the total).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct InversionLosses {
    /// Cross-entropy of the teacher's logits against the labels.
    pub ce: f32,
    /// α_bn Σ_l w_l ‖…‖: the BatchNorm-statistics terms.
    pub bn: f32,
    /// α_tv TV(x).
    pub tv: f32,
    /// α_l2 mean_b ‖x_b‖.
    pub l2: f32,
    /// α_comp (1 − JS(S(x), T(x))): the competition with the student (0 without one).
    pub competition: f32,
}

impl InversionLosses {
    /// The objective.
    pub fn total(&self) -> f32 {
        self.ce + self.bn + self.tv + self.l2 + self.competition
    }
}

/// A compiled DeepInversion iteration over one batch of images.
pub struct Inversion {
    bound: BoundPlan,
    /// The launches of the jitter/flip and of its inverse on the gradient, when there are any.
    augment_launches: Option<(usize, usize)>,
    /// Iterations since the last (re)start: the augmentation's draw counter.
    iterations: Cell<u64>,
    images: Tensor,
    labels: Tensor,
    /// Adam's state: first and second moments, step counter.
    adam: [Tensor; 3],
    gradient: Tensor,
    logits: Tensor,
    /// The Jensen–Shannon divergence with the competing student, when there is one.
    js: Option<Tensor>,
    /// Unweighted loss tensors: ce, each layer's bn_match, tv, l2_norm.
    ce: Tensor,
    bn: Vec<(Tensor, f32)>,
    tv: Tensor,
    l2: Tensor,
    spec: InversionSpec,
}

/// The BatchNorm layers of `graph`, in order: (input, running mean, running variance).
fn batch_norms(graph: &Graph) -> Vec<(Value, Value, Value)> {
    graph
        .nodes
        .iter()
        .filter_map(|n| match n.op {
            Op::BatchNorm {
                x,
                running_mean,
                running_var,
                ..
            } => Some((x, running_mean, running_var)),
            _ => None,
        })
        .collect()
}

/// One label per image, each a class of the teacher's.
fn check_labels(labels: &[i32], batch: usize, classes: usize) -> Result<()> {
    if labels.len() != batch {
        return Err(input_error(
            "deep inversion: labels",
            format!(
                "one per image: {} given for a batch of {batch}",
                labels.len()
            ),
        ));
    }
    if let Some(bad) = labels.iter().find(|&&y| y < 0 || y as usize >= classes) {
        return Err(input_error(
            "deep inversion: labels",
            format!("label {bad} is not a class of the teacher's {classes}"),
        ));
    }
    Ok(())
}

impl Inversion {
    /// Compiles the iteration for `teacher` (its input `x` is the images' shape; it must hold
    /// BatchNorm layers) with its `weights`.
    pub fn compile(
        gpu: &Gpu,
        teacher: &Graph,
        weights: &Weights,
        spec: &InversionSpec,
    ) -> Result<Inversion> {
        Self::compile_competing(gpu, teacher, weights, None, spec)
    }

    /// [`Inversion::compile`] with a frozen student (evaluation mode, reading the same images as
    /// the teacher) for the competition term `spec.competition · (1 − JS(S(x), T(x)))`.
    pub fn compile_competing(
        gpu: &Gpu,
        teacher: &Graph,
        weights: &Weights,
        student: Option<(&Graph, &Weights)>,
        spec: &InversionSpec,
    ) -> Result<Inversion> {
        let input = teacher
            .find("x")
            .ok_or_else(|| shape_error("deep inversion", "the teacher has no input 'x'"))?;
        let shape = teacher.shape(input).to_vec();
        let logits_value = teacher
            .output
            .ok_or_else(|| shape_error("deep inversion", "the teacher has no output"))?;
        check_labels(&spec.labels, shape[0], teacher.shape(logits_value)[1])?;
        let (b1, b2) = spec.betas;
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            return Err(input_error(
                "deep inversion: betas",
                format!("each must lie in [0, 1), got ({b1}, {b2})"),
            ));
        }
        if !(spec.lr.is_finite() && spec.lr > 0.0) {
            return Err(input_error(
                "deep inversion: lr",
                format!("must be a finite number > 0, got {}", spec.lr),
            ));
        }
        match (student.is_some(), spec.competition) {
            (_, c) if !(c.is_finite() && c >= 0.0) => {
                return Err(input_error(
                    "deep inversion: competition",
                    format!("must be a finite number ≥ 0, got {c}"),
                ));
            }
            (false, c) if c > 0.0 => {
                return Err(input_error(
                    "deep inversion: competition",
                    "needs a student to compete with",
                ));
            }
            _ => {}
        }
        for (what, v) in [
            ("bn_weight", spec.bn_weight),
            ("first_bn_multiplier", spec.first_bn_multiplier),
            ("tv_weight", spec.tv_weight),
            ("l2_weight", spec.l2_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(input_error(
                    format!("deep inversion: {what}"),
                    format!("must be a finite number ≥ 0, got {v}"),
                ));
            }
        }
        let mut graph = teacher.frozen();
        let layers = batch_norms(&graph);
        if layers.is_empty() {
            return Err(shape_error(
                "deep inversion",
                "the teacher has no BatchNorm layer whose statistics could guide the images",
            ));
        }
        let moments: Vec<Value> = layers
            .iter()
            .map(|&(x, _, _)| graph.channel_moments(x))
            .collect::<Result<_>>()?;
        // Each layer's [running_mean; running_var], a constant of the synthesis (read once).
        let host = weights.to_host(gpu)?;
        let buffer = |v: Value| -> Result<Vec<f32>> {
            let name = &graph.nodes[v.0].name;
            host.get(name)
                .and_then(|t| t.as_f32())
                .map(<[f32]>::to_vec)
                .ok_or_else(|| {
                    input_error(name.clone(), "the teacher's weights lack this f32 buffer")
                })
        };
        let running = layers
            .iter()
            .map(|&(_, rm, rv)| {
                let mut values = buffer(rm)?;
                values.extend(buffer(rv)?);
                gpu.upload(&[2, values.len() / 2], &values)
            })
            .collect::<Result<Vec<_>>>()?;

        let n: usize = shape.iter().product();
        let images = gpu.upload(&shape, &normal_vec(n, spec.seed))?;
        let labels = gpu.upload(&[shape[0]], &spec.labels)?;
        let mut plan = Vec::new();
        // The teacher sees the images jittered and flipped (the map rewritten per iteration),
        // and the gradient comes back through the inverse map.
        let augmenting = spec.jitter > 0 || spec.flip;
        let seen = if augmenting {
            let (d, y) = augment::roll_flip(gpu, &images, RollFlip::IDENTITY, false)?;
            plan.push(d);
            y
        } else {
            images.clone()
        };
        let inputs: BTreeMap<String, Tensor> = [("x".to_string(), seen)].into();
        let fwd = plan_forward(gpu, &graph, weights, &inputs, Mode::Eval, None, &mut plan)?;
        let logits = fwd.get(logits_value).clone();

        let mut ce = response::ce(gpu, &logits, &labels)?;
        plan.append(&mut ce.dispatches);
        let mut seeds = vec![(logits_value, ce.grads.remove(0))];
        let mut bn = Vec::new();
        for (k, (&m, t)) in moments.iter().zip(&running).enumerate() {
            let weight = spec.bn_weight
                * if k == 0 {
                    spec.first_bn_multiplier
                } else {
                    1.0
                };
            let mut term = feature::bn_match(gpu, fwd.get(m), t)?;
            plan.append(&mut term.dispatches);
            let (d, seed) = elementwise::scale_plan(gpu, &term.grads[0], weight)?;
            plan.push(d);
            seeds.push((m, seed));
            bn.push((term.loss, weight));
        }
        // The competition: the student reads the same images; both networks pass the gradient
        // of −w·JS to them (JS is symmetric: its teacher-side gradient is the swapped call's).
        let mut competing = None;
        if let Some((sg, sw)) = student {
            let frozen = sg.frozen();
            let s_out = frozen
                .output
                .ok_or_else(|| shape_error("deep inversion", "the student has no output"))?;
            let s_input = frozen
                .find("x")
                .ok_or_else(|| shape_error("deep inversion", "the student has no input 'x'"))?;
            let sf = plan_forward(gpu, &frozen, sw, &inputs, Mode::Eval, None, &mut plan)?;
            let js = Loss::new("js")?;
            let mut to_s = js.launch(gpu, &[sf.get(s_out), &logits])?;
            let mut to_t = js.launch(gpu, &[&logits, sf.get(s_out)])?;
            plan.append(&mut to_s.dispatches);
            plan.append(&mut to_t.dispatches);
            let (d, seed_s) = elementwise::scale_plan(gpu, &to_s.grads[0], -spec.competition)?;
            plan.push(d);
            let (d, seed_t) = elementwise::scale_plan(gpu, &to_t.grads[0], -spec.competition)?;
            plan.push(d);
            seeds.push((logits_value, seed_t));
            competing = Some((frozen, sf, s_out, s_input, seed_s, to_s.loss));
        }
        let mut backward = plan_backward(gpu, &graph, &fwd, seeds, &[input], &mut plan)?;
        let mut seen_gradient = backward
            .remove("x")
            .ok_or_else(|| shape_error("deep inversion", "no gradient reached the images"))?;
        let js = match competing {
            Some((frozen, sf, s_out, s_input, seed, loss)) => {
                let mut back = plan_backward(
                    gpu,
                    &frozen,
                    &sf,
                    vec![(s_out, seed)],
                    &[s_input],
                    &mut plan,
                )?;
                let dx = back.remove("x").ok_or_else(|| {
                    shape_error("deep inversion", "no gradient reached the images")
                })?;
                // A fresh sum: the returned gradients may be views of other values' buffers.
                let (d, sum) = elementwise::add_plan(gpu, &seen_gradient, &dx)?;
                plan.push(d);
                seen_gradient = sum;
                Some(loss)
            }
            None => None,
        };
        let (gradient, augment_launches) = if augmenting {
            let (d, g) = augment::roll_flip(gpu, &seen_gradient, RollFlip::IDENTITY, true)?;
            plan.push(d);
            (g, Some((0, plan.len() - 1)))
        } else {
            (seen_gradient, None)
        };
        let mut tv = feature::tv(gpu, &images, 2.0)?;
        let mut l2 = feature::l2_norm(gpu, &images)?;
        plan.append(&mut tv.dispatches);
        plan.append(&mut l2.dispatches);
        plan.push(elementwise::axpy_plan(
            gpu,
            spec.tv_weight,
            &tv.grads[0],
            &gradient,
        )?);
        plan.push(elementwise::axpy_plan(
            gpu,
            spec.l2_weight,
            &l2.grads[0],
            &gradient,
        )?);

        let step = gpu.zeros(&[1], DType::U32)?;
        let m = gpu.zeros(&shape, DType::F32)?;
        let v = gpu.zeros(&shape, DType::F32)?;
        let adam = AdamW {
            lr: spec.lr,
            beta1: spec.betas.0,
            beta2: spec.betas.1,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        plan.push(optimizer::advance_step(gpu, &step)?);
        plan.push(optimizer::adamw(
            gpu, &adam, &images, &gradient, &m, &v, &step,
        )?);
        Ok(Inversion {
            bound: gpu.bind_plan(&plan)?,
            augment_launches,
            iterations: Cell::new(0),
            images,
            labels,
            adam: [m, v, step],
            gradient,
            logits,
            ce: ce.loss,
            bn,
            tv: tv.loss,
            l2: l2.loss,
            js,
            spec: spec.clone(),
        })
    }

    /// Starts a new batch in place: fresh noise from `seed`, new `labels` (one per image), Adam's
    /// state cleared; the compiled iteration is reused (queue writes only, nothing created), so
    /// one compilation synthesises any number of batches.
    pub fn restart(&mut self, gpu: &Gpu, labels: &[i32], seed: u64) -> Result<()> {
        check_labels(labels, self.labels.numel(), self.logits.shape()[1])?;
        gpu.write(&self.labels, labels)?;
        gpu.write(&self.images, &normal_vec(self.images.numel(), seed))?;
        let zeros = vec![0.0f32; self.images.numel()];
        gpu.write(&self.adam[0], &zeros)?;
        gpu.write(&self.adam[1], &zeros)?;
        gpu.write(&self.adam[2], &[0u32])?;
        self.spec.labels = labels.to_vec();
        self.spec.seed = seed;
        self.iterations.set(0);
        Ok(())
    }

    /// Runs `iterations` iterations, each one submission; nothing is created or read back.
    pub fn run(&self, gpu: &Gpu, iterations: usize) -> Result<()> {
        for _ in 0..iterations {
            if let Some((forward, inverse)) = self.augment_launches {
                let k = self.iterations.get();
                let map = self.spec.augmentation(k);
                for (launch, inverse) in [(forward, false), (inverse, true)] {
                    let params = map.params(&self.images, inverse)?;
                    self.bound
                        .write_uniform(gpu, launch, 0, bytemuck::bytes_of(&params));
                }
            }
            self.iterations.set(self.iterations.get() + 1);
            self.bound.submit(gpu, "deep inversion")?;
        }
        Ok(())
    }

    /// The loss terms of the last iteration (before its update), weighted as in the objective.
    pub fn losses(&self, gpu: &Gpu) -> Result<InversionLosses> {
        let one = |t: &Tensor| -> Result<f32> { Ok(gpu.read::<f32>(t)?[0]) };
        let mut bn = 0.0;
        for (t, w) in &self.bn {
            bn += w * one(t)?;
        }
        Ok(InversionLosses {
            ce: one(&self.ce)?,
            bn,
            tv: self.spec.tv_weight * one(&self.tv)?,
            l2: self.spec.l2_weight * one(&self.l2)?,
            competition: match &self.js {
                Some(js) => self.spec.competition * (1.0 - one(js)?),
                None => 0.0,
            },
        })
    }

    /// The images now, `(B, C, H, W)` row-major; an error if the synthesis went non-finite
    /// (too high a learning rate), so no NaN image is ever written.
    pub fn images(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let images: Vec<f32> = gpu.read(&self.images)?;
        if images.iter().any(|v| !v.is_finite()) {
            return Err(input_error(
                "deep inversion",
                format!(
                    "the images went non-finite (lr {}): lower the learning rate",
                    self.spec.lr
                ),
            ));
        }
        Ok(images)
    }

    /// The gradient of the objective with respect to the images in the last iteration.
    pub fn gradient(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        gpu.read(&self.gradient)
    }

    /// The teacher's logits for the images of the last iteration (before its update).
    pub fn logits(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        gpu.read(&self.logits)
    }
}
