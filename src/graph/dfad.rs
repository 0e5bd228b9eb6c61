//! Data-free adversarial distillation (DFAD, Fang et al. 2019): a generator turns noise into
//! images on which the student and the frozen teacher disagree most, while the student learns to
//! agree with the teacher on them; no training image is read. The discrepancy is the mean
//! absolute difference of their logits (`l1`), whose gradient does not vanish as the student
//! catches up, as KL's does.
//!
//! Two compiled steps alternate, each one submission and nothing created or read back:
//! - the **generator step**: `z → G → x`; the teacher (evaluation mode) and the student (training
//!   mode, not updated) read `x`; the generator descends `−w·L1(S(x), T(x)) + β·balance(T(x))`,
//!   the gradient reaching `x` through both networks (the class-balance term, DAFL's information
//!   entropy, keeps the generator from collapsing onto the few classes where the two disagree
//!   most; β = 0 is the paper's DFAD);
//! - the **student step**: new `z → G → x` (G not updated); the student descends `w·L1(S(x), T(x))`.
//!
//! As in the paper's code, the generator and the student stay in training mode (batch
//! statistics) throughout, the teacher in evaluation mode.

use std::collections::BTreeMap;

use crate::Result;
use crate::error::{input_error, shape_error};
use crate::gpu::{BoundPlan, DType, Dispatch, Gpu, Tensor};
use crate::io::TensorMap;
use crate::kernels::losses::Loss;
use crate::kernels::{elementwise, optimizer};
use crate::rng::normal_vec;

use super::exec::{Forward, Mode, plan_backward, plan_forward};
use super::step::OptimizerSpec;
use super::update::{
    OptimizerState, named_updates, plan_updates, side_state, state_from_host, state_to_host,
};
use super::{Graph, Weights};

/// Everything DFAD's two steps are made of.
pub struct DfadSpec<'a> {
    /// The generator: reads `z` (B, latent), outputs images shaped like the student's input.
    pub generator: &'a Graph,
    /// Its weights, updated by the generator step.
    pub generator_weights: &'a Weights,
    /// The frozen teacher, reading `x`.
    pub teacher: (&'a Graph, &'a Weights),
    /// The student, reading `x`.
    pub student: &'a Graph,
    /// Its weights, updated by the student step.
    pub student_weights: &'a Weights,
    /// The discrepancy: the registry's `l1` (the generator needs its gradient with respect to
    /// the teacher's logits too, which for `l1` is the student's negated).
    pub loss: Loss,
    /// The discrepancy's weight in both steps.
    pub weight: f32,
    /// The weight β of the registry's `balance` on the teacher's logits in the generator step
    /// (0: DFAD as published).
    pub balance: f32,
    /// The generator's optimizer (the paper: Adam at 1e-3).
    pub generator_optimizer: OptimizerSpec,
    /// The student's (the paper: SGD at 0.1, momentum 0.9, weight decay 5e-4).
    pub student_optimizer: OptimizerSpec,
}

/// One trained side: its step counter, optimizer state and update launches.
struct Side {
    step: Tensor,
    optimizer: OptimizerState,
    launches: Vec<usize>,
}

/// DFAD's compiled generator and student steps.
pub struct Dfad {
    generator_plan: BoundPlan,
    student_plan: BoundPlan,
    /// The noise each step reads.
    z: [Tensor; 2],
    /// The student step's images (the last batch the student learnt from).
    images: Tensor,
    /// The discrepancy each step measured (unweighted, before its update).
    discrepancy: [Tensor; 2],
    /// The class balance of the teacher's view of the generator step's images (unweighted).
    balance: Tensor,
    generator: Side,
    student: Side,
    generator_weights: Weights,
}

/// The three networks of one step, each with the weights it reads and whether it trains in it.
struct Play<'a> {
    generator: &'a Graph,
    teacher: &'a Graph,
    student: &'a Graph,
    spec: &'a DfadSpec<'a>,
    /// Each side's step counter (the dropout and batch-statistics kernels read it).
    steps: [&'a Tensor; 2],
}

impl Play<'_> {
    /// Plans `z → G → x`, `T(x)` (evaluation mode) and `S(x)` (training mode): the forward
    /// passes both steps share. Returns the three passes' values.
    fn plan(
        &self,
        gpu: &Gpu,
        z: &Tensor,
        plan: &mut Vec<Dispatch>,
    ) -> Result<(Forward, Forward, Forward)> {
        let ins = |name: &str, t: &Tensor| -> BTreeMap<String, Tensor> {
            [(name.to_string(), t.clone())].into()
        };
        let spec = self.spec;
        let gf = plan_forward(
            gpu,
            self.generator,
            spec.generator_weights,
            &ins("z", z),
            Mode::Train,
            Some(self.steps[0]),
            plan,
        )?;
        let x = gf.get(output_of(self.generator, "generator")?);
        let tf = plan_forward(
            gpu,
            self.teacher,
            spec.teacher.1,
            &ins("x", x),
            Mode::Eval,
            None,
            plan,
        )?;
        let sf = plan_forward(
            gpu,
            self.student,
            spec.student_weights,
            &ins("x", x),
            Mode::Train,
            Some(self.steps[1]),
            plan,
        )?;
        Ok((gf, tf, sf))
    }
}

fn output_of(graph: &Graph, what: &str) -> Result<super::Value> {
    graph
        .output
        .ok_or_else(|| shape_error(what, "has no output"))
}

fn input_named(graph: &Graph, name: &str, what: &str) -> Result<super::Value> {
    graph
        .find(name)
        .ok_or_else(|| shape_error(what, format!("has no input '{name}'")))
}

impl Dfad {
    /// Plans, allocates and binds both steps.
    pub fn compile(gpu: &Gpu, spec: &DfadSpec<'_>) -> Result<Dfad> {
        if spec.loss.name() != "l1" {
            return Err(input_error(
                "dfad: loss",
                format!(
                    "the discrepancy is l1 (the generator needs it symmetric), got {}",
                    spec.loss.name()
                ),
            ));
        }
        let g = spec.generator;
        let gz = input_named(g, "z", "generator")?;
        let g_out = output_of(g, "generator")?;
        let teacher = spec.teacher.0;
        let tx = input_named(teacher, "x", "teacher")?;
        let sx = input_named(spec.student, "x", "student")?;
        for (what, v, graph) in [("teacher", tx, teacher), ("student", sx, spec.student)] {
            if graph.shape(v) != g.shape(g_out) {
                return Err(shape_error(
                    "dfad",
                    format!(
                        "the generator makes {:?} images but the {what} reads {:?}",
                        g.shape(g_out),
                        graph.shape(v)
                    ),
                ));
            }
        }
        let (t_out, s_out) = (
            output_of(teacher, "teacher")?,
            output_of(spec.student, "student")?,
        );
        let z_shape = g.shape(gz).to_vec();
        let z = [
            gpu.zeros(&z_shape, DType::F32)?,
            gpu.zeros(&z_shape, DType::F32)?,
        ];
        let g_step = gpu.zeros(&[1], DType::U32)?;
        let s_step = gpu.zeros(&[1], DType::U32)?;
        let teacher = teacher.frozen();

        // The generator step: the generator trains, the student does not.
        let mut plan: Vec<Dispatch> = Vec::new();
        let frozen_student = spec.student.frozen();
        let gw = spec.generator_weights;
        let (gf, tf, sf) = Play {
            generator: g,
            teacher: &teacher,
            student: &frozen_student,
            spec,
            steps: [&g_step, &s_step],
        }
        .plan(gpu, &z[0], &mut plan)?;
        let (s_logits, t_logits) = (sf.get(s_out).clone(), tf.get(t_out).clone());
        let lp = spec.loss.launch(gpu, &[&s_logits, &t_logits])?;
        plan.extend(lp.dispatches);
        let g_discrepancy = lp.loss;
        // Ascent on the discrepancy: −w on the student's side, +w on the teacher's (l1's
        // gradient in the teacher's logits is the student's negated).
        let (d, seed_s) = elementwise::scale_plan(gpu, &lp.grads[0], -spec.weight)?;
        plan.push(d);
        let (d, seed_t) = elementwise::scale_plan(gpu, &lp.grads[0], spec.weight)?;
        plan.push(d);
        // Measured whatever β is (it shows the collapse); its gradient joins the teacher's seed
        // only when it is weighed in.
        let lb = Loss::new("balance")?.launch(gpu, &[&t_logits])?;
        plan.extend(lb.dispatches);
        if spec.balance != 0.0 {
            plan.push(elementwise::axpy_plan(
                gpu,
                spec.balance,
                &lb.grads[0],
                &seed_t,
            )?);
        }
        let mut through_s = plan_backward(
            gpu,
            &frozen_student,
            &sf,
            vec![(s_out, seed_s)],
            &[sx],
            &mut plan,
        )?;
        let mut through_t =
            plan_backward(gpu, &teacher, &tf, vec![(t_out, seed_t)], &[tx], &mut plan)?;
        let missing = || shape_error("dfad", "no gradient reached the generated images");
        // A fresh sum: the returned gradients may be views of other values' buffers.
        let (d, dx) = elementwise::add_plan(
            gpu,
            &through_s.remove("x").ok_or_else(missing)?,
            &through_t.remove("x").ok_or_else(missing)?,
        )?;
        plan.push(d);
        let grads = plan_backward(gpu, g, &gf, vec![(g_out, dx)], &[], &mut plan)?;
        plan.push(optimizer::advance_step(gpu, &g_step)?);
        let updates = named_updates(gw, &grads)?;
        let generator = plan_updates(
            gpu,
            &spec.generator_optimizer,
            updates,
            gw.arenas(),
            None,
            &g_step,
            &mut plan,
        )?;
        let (g_state, g_launches) = (generator.state, generator.launches);
        drop((tf, sf, gf));
        let generator_plan = gpu.bind_plan(&plan)?;

        // The student step: the student trains, the generator does not.
        let mut plan: Vec<Dispatch> = Vec::new();
        let frozen_generator = g.frozen();
        let (gf, tf, sf) = Play {
            generator: &frozen_generator,
            teacher: &teacher,
            student: spec.student,
            spec,
            steps: [&g_step, &s_step],
        }
        .plan(gpu, &z[1], &mut plan)?;
        let images = gf.get(g_out).clone();
        let lp = spec.loss.launch(gpu, &[sf.get(s_out), tf.get(t_out)])?;
        plan.extend(lp.dispatches);
        let s_discrepancy = lp.loss;
        let (d, seed) = elementwise::scale_plan(gpu, &lp.grads[0], spec.weight)?;
        plan.push(d);
        let grads = plan_backward(gpu, spec.student, &sf, vec![(s_out, seed)], &[], &mut plan)?;
        plan.push(optimizer::advance_step(gpu, &s_step)?);
        let updates = named_updates(spec.student_weights, &grads)?;
        let student = plan_updates(
            gpu,
            &spec.student_optimizer,
            updates,
            spec.student_weights.arenas(),
            None,
            &s_step,
            &mut plan,
        )?;
        let (s_state, s_launches) = (student.state, student.launches);
        drop((tf, sf, gf));
        let student_plan = gpu.bind_plan(&plan)?;
        Ok(Dfad {
            generator_plan,
            student_plan,
            z,
            images,
            discrepancy: [g_discrepancy, s_discrepancy],
            balance: lb.loss,
            generator: Side {
                step: g_step,
                optimizer: g_state,
                launches: g_launches,
            },
            student: Side {
                step: s_step,
                optimizer: s_state,
                launches: s_launches,
            },
            generator_weights: gw.clone(),
        })
    }

    /// One generator step on fresh noise drawn from `seed` (a queue write and a submission).
    pub fn generator_step(&self, gpu: &Gpu, seed: u64) -> Result<()> {
        gpu.write(&self.z[0], &normal_vec(self.z[0].numel(), seed))?;
        self.generator_plan.submit(gpu, "dfad generator step")
    }

    /// One student step on fresh noise drawn from `seed`.
    pub fn student_step(&self, gpu: &Gpu, seed: u64) -> Result<()> {
        gpu.write(&self.z[1], &normal_vec(self.z[1].numel(), seed))?;
        self.student_plan.submit(gpu, "dfad student step")
    }

    /// The discrepancy `L1(S(x), T(x))` (unweighted) the last generator step and the last
    /// student step measured, before their updates.
    pub fn discrepancies(&self, gpu: &Gpu) -> Result<[f32; 2]> {
        Ok([
            gpu.read::<f32>(&self.discrepancy[0])?[0],
            gpu.read::<f32>(&self.discrepancy[1])?[0],
        ])
    }

    /// The class balance (`KL(p̄ ‖ uniform)`, unweighted) of the teacher's predictions on the
    /// last generator step's images, before its update: 0 when they spread evenly over the
    /// classes, `log C` when all fall in one.
    pub fn balance(&self, gpu: &Gpu) -> Result<f32> {
        Ok(gpu.read::<f32>(&self.balance)?[0])
    }

    /// The images of the last student step, `(B, C, H, W)` row-major.
    pub fn images(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        gpu.read(&self.images)
    }

    /// Sets the student's learning rate (a schedule's step).
    pub fn set_student_learning_rate(&self, gpu: &Gpu, lr: f32) {
        for &i in &self.student.launches {
            self.student_plan
                .write_uniform(gpu, i, optimizer::LR_OFFSET, bytemuck::bytes_of(&lr));
        }
    }

    /// Sets the generator's learning rate.
    pub fn set_generator_learning_rate(&self, gpu: &Gpu, lr: f32) {
        for &i in &self.generator.launches {
            self.generator_plan.write_uniform(
                gpu,
                i,
                optimizer::LR_OFFSET,
                bytemuck::bytes_of(&lr),
            );
        }
    }

    /// The steps each side has taken: (generator, student).
    pub fn steps_taken(&self, gpu: &Gpu) -> Result<(u32, u32)> {
        Ok((
            gpu.read::<u32>(&self.generator.step)?[0],
            gpu.read::<u32>(&self.student.step)?[0],
        ))
    }

    /// What a resumed run needs besides the student's weights: the generator's weights
    /// (`generator.NAME`), both optimizers' state (`generator.optimizer.NAME.k`,
    /// `student.optimizer.NAME.k`) and both step counters.
    pub fn save_state(&self, gpu: &Gpu) -> Result<TensorMap> {
        state_to_host(gpu, &self.state_tensors())
    }

    /// Restores what [`Dfad::save_state`] saved (`what` names the source in errors).
    pub fn load_state(&self, gpu: &Gpu, what: &str, saved: &TensorMap) -> Result<()> {
        state_from_host(gpu, what, saved, &self.state_tensors())
    }

    fn state_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut out: Vec<(String, &Tensor)> = Vec::new();
        out.extend(
            self.generator_weights
                .iter()
                .map(|(n, t)| (format!("generator.{n}"), t)),
        );
        out.extend(side_state(
            "generator",
            &self.generator.step,
            &self.generator.optimizer,
        ));
        out.extend(side_state(
            "student",
            &self.student.step,
            &self.student.optimizer,
        ));
        out
    }
}
