//! Planning a graph's forward and backward passes into launches: the forward pass records each
//! node's kernel and what its backward needs; the backward pass walks the nodes in reverse,
//! computing gradients only where a trainable parameter lies upstream, and accumulating where a
//! value feeds several consumers.

use std::collections::BTreeMap;

use crate::Result;
use crate::error::shape_error;
use crate::gpu::{Dispatch, Gpu, Tensor};
use crate::kernels::activation::{self, Kind};
use crate::kernels::batchnorm::{self, BatchNormSaved, BatchNormState};
use crate::kernels::matmul::{Activation, MatmulOptions, matmul};
use crate::kernels::quantize::Quantizer;
use crate::kernels::reduce::{AxisOp, reduce_axis};
use crate::kernels::{conv, dropout, elementwise, gate, pool, relation, softmax};

use super::ir::{Graph, Op, Value};
use super::weights::Weights;

/// Training (batch statistics, gradients) or evaluation (running statistics, forward only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Training.
    Train,
    /// Evaluation.
    Eval,
}

/// What a node's backward pass needs besides its inputs.
enum Saved {
    Argmax(Tensor),
    Norms(Tensor),
    BatchNorm(BatchNormSaved),
    GateWeights(Tensor),
}

/// A planned forward pass: every value's tensor and what the backward pass needs.
pub struct Forward {
    /// Tensor of each value (parameters included), indexed by [`Value`].
    pub values: Vec<Tensor>,
    saved: BTreeMap<usize, Saved>,
    step: Option<Tensor>,
    mode: Mode,
}

impl Forward {
    /// The tensor of a value.
    pub fn get(&self, v: Value) -> &Tensor {
        &self.values[v.0]
    }
}

fn bn_state<'a>(
    f: &'a [Tensor],
    gamma: Value,
    beta: Value,
    rm: Value,
    rv: Value,
    eps: f32,
    momentum: f32,
) -> BatchNormState<'a> {
    BatchNormState {
        gamma: &f[gamma.0],
        beta: &f[beta.0],
        running_mean: &f[rm.0],
        running_var: &f[rv.0],
        eps,
        momentum,
    }
}

/// The activation kernel of an activation op.
fn activation_kind(op: &Op) -> Kind {
    match *op {
        Op::LeakyRelu { slope, .. } => Kind::LeakyRelu(slope),
        Op::Relu6 { .. } => Kind::Relu6,
        Op::Gelu { .. } => Kind::Gelu,
        Op::Tanh { .. } => Kind::Tanh,
        _ => Kind::Relu,
    }
}

/// The values whose only reader is `reader` (by index) and that are neither tapped nor the
/// graph's output: nothing but that reader sees them, so the two can be fused.
fn read_only_by(graph: &Graph) -> impl Fn(usize, usize) -> bool + '_ {
    let mut readers = vec![0usize; graph.nodes.len()];
    for node in &graph.nodes {
        for v in node.op.inputs() {
            readers[v.0] += 1;
        }
    }
    move |v: usize, reader: usize| {
        let exposed =
            graph.output.is_some_and(|o| o.0 == v) || graph.taps.values().any(|t| t.0 == v);
        readers[v] == 1 && graph.nodes[reader].op.inputs().contains(&Value(v)) && !exposed
    }
}

/// The linear and batch-norm layers whose only reader is a ReLU (and whose output is neither
/// tapped nor the graph's output): their kernel applies the ReLU to its output, one launch and
/// one pass over the activations fewer, and the ReLU node takes the same tensor. Nothing else
/// reads the pre-activation; the ReLU's backward still reads the right mask from it
/// (max(x, 0) > 0 exactly where x > 0), and batch norm's backward reads its input and
/// statistics, not its output.
fn relu_epilogues(graph: &Graph) -> std::collections::BTreeSet<usize> {
    let reader = |op: &Op| match *op {
        Op::Relu { x } => Some(x),
        _ => None,
    };
    fusible(graph, reader, |op| {
        matches!(op, Op::Linear { .. } | Op::BatchNorm { .. })
    })
}

/// The ReLUs whose only reader is a max pooling (and that are neither tapped nor the output):
/// their backward pass is fused into the pooling's, which passes the gradient only where the
/// pooled value is positive (the ReLU's output at the argmax), one launch and two passes over
/// the activations fewer. The ReLU node then hands its gradient on unchanged.
fn relus_into_pool(graph: &Graph) -> std::collections::BTreeSet<usize> {
    let reader = |op: &Op| match *op {
        Op::MaxPool { x, .. } => Some(x),
        _ => None,
    };
    fusible(graph, reader, |op| matches!(op, Op::Relu { .. }))
}

/// The values that a node `reader` accepts reads (it returns that input), made by a node
/// `producer` accepts, when that reader is the value's only one ([`read_only_by`]): the pairs a
/// fusion may merge.
fn fusible(
    graph: &Graph,
    reader: impl Fn(&Op) -> Option<Value>,
    producer: impl Fn(&Op) -> bool,
) -> std::collections::BTreeSet<usize> {
    let only = read_only_by(graph);
    graph
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(i, node)| {
            let x = reader(&node.op)?;
            (producer(&graph.nodes[x.0].op) && only(x.0, i)).then_some(x.0)
        })
        .collect()
}

/// Appends the forward pass of `graph` to `plan`. `inputs` gives a tensor for every Input node;
/// `step` is the training step counter (u32 `[1]`) that seeds dropout in training mode.
pub fn plan_forward(
    gpu: &Gpu,
    graph: &Graph,
    weights: &Weights,
    inputs: &BTreeMap<String, Tensor>,
    mode: Mode,
    step: Option<&Tensor>,
    plan: &mut Vec<Dispatch>,
) -> Result<Forward> {
    let mut values: Vec<Tensor> = Vec::with_capacity(graph.nodes.len());
    let mut saved = BTreeMap::new();
    let relu_fused = relu_epilogues(graph);
    for (i, node) in graph.nodes.iter().enumerate() {
        let v = |x: Value| &values[x.0];
        let out = match node.op {
            Op::Input => {
                let t = inputs
                    .get(&node.name)
                    .ok_or_else(|| shape_error(&node.name, "no tensor was given for this input"))?;
                t.expect(&node.name, "input", node.dtype, &node.shape)?;
                t.clone()
            }
            Op::Param { .. } => weights
                .get(&node.name)
                .cloned()
                .ok_or_else(|| shape_error(&node.name, "missing from the weights"))?,
            Op::Linear { x, weight, bias } => {
                let options = MatmulOptions {
                    trans_b: true,
                    activation: if relu_fused.contains(&i) {
                        Activation::Relu
                    } else {
                        Activation::None
                    },
                    ..Default::default()
                };
                let (d, y) = matmul(gpu, v(x), v(weight), bias.map(|b| &values[b.0]), options)?;
                plan.push(d);
                y
            }
            Op::Conv2d {
                x,
                weight,
                bias,
                spec,
            } => {
                let (d, y) =
                    conv::forward(gpu, v(x), v(weight), bias.map(|b| &values[b.0]), &spec)?;
                plan.push(d);
                y
            }
            Op::BatchNorm {
                x,
                gamma,
                beta,
                running_mean,
                running_var,
                eps,
                momentum,
            } => {
                let st = bn_state(
                    &values,
                    gamma,
                    beta,
                    running_mean,
                    running_var,
                    eps,
                    momentum,
                );
                let relu = relu_fused.contains(&i);
                if mode == Mode::Train {
                    let (p, y, s) = batchnorm::forward_train_fused(gpu, v(x), &st, relu)?;
                    plan.extend(p);
                    saved.insert(i, Saved::BatchNorm(s));
                    y
                } else {
                    let (d, y) = batchnorm::forward_eval_fused(gpu, v(x), &st, relu)?;
                    plan.push(d);
                    y
                }
            }
            // Its linear or batch-norm layer applied it already (see `relu_epilogues`).
            Op::Relu { x } if relu_fused.contains(&x.0) => v(x).clone(),
            Op::Relu { x }
            | Op::Relu6 { x }
            | Op::LeakyRelu { x, .. }
            | Op::Gelu { x }
            | Op::Tanh { x } => {
                let (d, y) = activation::forward(gpu, activation_kind(&node.op), v(x))?;
                plan.push(d);
                y
            }
            Op::MaxPool { x, pool } => {
                let (d, y, arg) = pool::max_pool_forward(gpu, v(x), &pool)?;
                plan.push(d);
                saved.insert(i, Saved::Argmax(arg));
                y
            }
            Op::AvgPool { x, pool } => {
                let (d, y) = pool::avg_pool_forward(gpu, v(x), &pool)?;
                plan.push(d);
                y
            }
            Op::GlobalAvgPool { x } => {
                let (d, y) = pool::global_avg_pool_forward(gpu, v(x))?;
                plan.push(d);
                y
            }
            Op::Reshape { x } => v(x).reshape(&node.shape)?,
            Op::AdaptiveAvgPool { x, out } => {
                let (d, y) = pool::adaptive_avg_pool_forward(gpu, v(x), out)?;
                plan.push(d);
                y
            }
            Op::ChannelMoments { x } => {
                let (p, y) = batchnorm::moments(gpu, v(x))?;
                plan.extend(p);
                y
            }
            Op::L2Normalize { x, eps } => {
                let (d, y, norms) = relation::normalize_rows(gpu, v(x), eps)?;
                plan.push(d);
                saved.insert(i, Saved::Norms(norms));
                y
            }
            Op::FakeQuant {
                x,
                range,
                qparams,
                axis,
                grid,
                averaging,
            } => {
                let q = Quantizer::new(graph.shape(x), axis, grid, averaging)?;
                // Training observes first, so this step's scales already cover this batch.
                if mode == Mode::Train {
                    plan.extend(q.observe(gpu, v(x), v(range), v(qparams))?);
                }
                let (d, y) = q.forward(gpu, v(x), v(qparams))?;
                plan.push(d);
                y
            }
            Op::Dropout { x, p } => match (mode, step) {
                (Mode::Eval, _) => v(x).clone(),
                (Mode::Train, Some(step)) => {
                    let (d, y) = dropout::dropout_step(gpu, v(x), p, i as u32, step)?;
                    plan.push(d);
                    y
                }
                (Mode::Train, None) => {
                    return Err(shape_error(
                        &node.name,
                        "training-mode dropout needs the step counter",
                    ));
                }
            },
            Op::Add { a, b } => {
                let (d, y) = elementwise::add_plan(gpu, v(a), v(b))?;
                plan.push(d);
                y
            }
            Op::GatedEnsemble { gate, ref parts } => {
                let branches: Vec<&Tensor> = parts.iter().map(|p| &values[p.0]).collect();
                let (p, weights, y) = gate::ensemble(gpu, v(gate), &branches)?;
                plan.extend(p);
                saved.insert(i, Saved::GateWeights(weights));
                y
            }
            Op::Mixture {
                ref parts,
                ref weights,
                temperature,
            } => {
                let logits: Vec<&Tensor> = parts.iter().map(|p| &values[p.0]).collect();
                let (p, y) = softmax::mixture_logits(gpu, &logits, weights, temperature)?;
                plan.extend(p);
                y
            }
        };
        values.push(out);
    }
    Ok(Forward {
        values,
        saved,
        step: step.cloned(),
        mode,
    })
}

/// Which values need a gradient: those downstream of a trainable parameter.
pub fn needs_grad(graph: &Graph) -> Vec<bool> {
    let mut needs = vec![false; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        needs[i] = match node.op {
            Op::Param { trainable, .. } => trainable,
            Op::Input => false,
            ref op => op.inputs().iter().any(|x| needs[x.0]),
        };
    }
    needs
}

/// Gradient accumulators: a tensor per value, and whether the tensor is ours to update in place
/// (a tensor shared with another value, such as both operands of an Add, is not).
struct Grads {
    slots: Vec<Option<(Tensor, bool)>>,
}

impl Grads {
    fn add(
        &mut self,
        gpu: &Gpu,
        plan: &mut Vec<Dispatch>,
        v: Value,
        t: Tensor,
        owned: bool,
    ) -> Result<()> {
        match self.slots[v.0].take() {
            None => self.slots[v.0] = Some((t, owned)),
            Some((acc, true)) => {
                plan.push(elementwise::axpy_plan(gpu, 1.0, &t, &acc)?);
                self.slots[v.0] = Some((acc, true));
            }
            Some((acc, false)) => {
                let (d, sum) = elementwise::add_plan(gpu, &acc, &t)?;
                plan.push(d);
                self.slots[v.0] = Some((sum, true));
            }
        }
        Ok(())
    }
}

/// Appends the backward pass: `seeds` are dL/dv for some values (from the loss terms, already
/// weighted). Returns the gradient of every trainable parameter, and of every input named in
/// `wrt_inputs`, by node name.
pub fn plan_backward(
    gpu: &Gpu,
    graph: &Graph,
    fwd: &Forward,
    seeds: Vec<(Value, Tensor)>,
    wrt_inputs: &[Value],
    plan: &mut Vec<Dispatch>,
) -> Result<BTreeMap<String, Tensor>> {
    let mut needs = needs_grad(graph);
    if !wrt_inputs.is_empty() {
        for &v in wrt_inputs {
            needs[v.0] = true;
        }
        for (i, node) in graph.nodes.iter().enumerate() {
            if !matches!(node.op, Op::Param { .. } | Op::Input) {
                needs[i] = node.op.inputs().iter().any(|x| needs[x.0]);
            }
        }
    }
    let mut grads = Grads {
        slots: vec![None; graph.nodes.len()],
    };
    for (v, t) in seeds {
        if needs[v.0] {
            grads.add(gpu, plan, v, t, false)?;
        }
    }
    let f = &fwd.values;
    let relu_in_pool = relus_into_pool(graph);
    for (i, node) in graph.nodes.iter().enumerate().rev() {
        if matches!(node.op, Op::Param { .. } | Op::Input) {
            continue;
        }
        let Some((dy, owned)) = grads.slots[i].clone() else {
            continue;
        };
        let want = |x: Value| needs[x.0];
        match node.op {
            Op::Linear { x, weight, bias } => {
                if want(x) {
                    let (d, dx) = matmul(gpu, &dy, &f[weight.0], None, MatmulOptions::default())?;
                    plan.push(d);
                    grads.add(gpu, plan, x, dx, true)?;
                }
                if want(weight) {
                    let (d, dw) = matmul(
                        gpu,
                        &dy,
                        &f[x.0],
                        None,
                        MatmulOptions {
                            trans_a: true,
                            ..Default::default()
                        },
                    )?;
                    plan.push(d);
                    grads.add(gpu, plan, weight, dw, true)?;
                }
                if let Some(b) = bias.filter(|b| want(*b)) {
                    let (d, db) = reduce_axis(gpu, &dy, 0, AxisOp::Sum)?;
                    plan.push(d);
                    grads.add(gpu, plan, b, db, true)?;
                }
            }
            Op::Conv2d {
                x,
                weight,
                bias,
                spec,
            } => {
                // A frozen layer (DeepInversion's teacher) only passes the gradient on.
                let options = conv::BackwardOptions {
                    input_grad: want(x),
                    weight_grad: want(weight),
                    bias: bias.is_some_and(&want),
                    subgroups: None,
                };
                let (p, g) = conv::backward_with(gpu, &f[x.0], &f[weight.0], &dy, &spec, options)?;
                plan.extend(p);
                if let Some(dx) = g.dx {
                    grads.add(gpu, plan, x, dx, true)?;
                }
                if let Some(dw) = g.dw {
                    grads.add(gpu, plan, weight, dw, true)?;
                }
                if let (Some(b), Some(db)) = (bias, g.dbias) {
                    grads.add(gpu, plan, b, db, true)?;
                }
            }
            Op::BatchNorm {
                x,
                gamma,
                beta,
                running_mean,
                running_var,
                eps,
                momentum,
            } => {
                let st = bn_state(f, gamma, beta, running_mean, running_var, eps, momentum);
                let Some(Saved::BatchNorm(saved)) = fwd.saved.get(&i) else {
                    // Evaluation mode: the running statistics are constants and the layer an
                    // affine map per channel; only its input gets a gradient (a frozen network
                    // passing gradients through to its input).
                    if want(gamma) || want(beta) {
                        return Err(shape_error(
                            &node.name,
                            "γ and β train only in a training-mode forward pass",
                        ));
                    }
                    if want(x) {
                        let (d, dx) = batchnorm::backward_eval(gpu, &f[x.0], &dy, &st)?;
                        plan.push(d);
                        grads.add(gpu, plan, x, dx, true)?;
                    }
                    continue;
                };
                let (p, g) = batchnorm::backward(gpu, &f[x.0], &dy, &st, saved)?;
                plan.extend(p);
                if want(x) {
                    grads.add(gpu, plan, x, g.dx, true)?;
                }
                grads.add(gpu, plan, gamma, g.dgamma, true)?;
                grads.add(gpu, plan, beta, g.dbeta, true)?;
            }
            Op::FakeQuant {
                x,
                qparams,
                axis,
                grid,
                averaging,
                ..
            } => {
                let q = Quantizer::new(graph.shape(x), axis, grid, averaging)?;
                let (d, dx) = q.backward(gpu, &f[x.0], &f[qparams.0], &dy)?;
                plan.push(d);
                grads.add(gpu, plan, x, dx, true)?;
            }
            // The max pooling after it applied its mask (see `relus_into_pool`).
            Op::Relu { x } if relu_in_pool.contains(&i) => grads.add(gpu, plan, x, dy, owned)?,
            Op::Relu { x }
            | Op::Relu6 { x }
            | Op::LeakyRelu { x, .. }
            | Op::Gelu { x }
            | Op::Tanh { x } => {
                let kind = activation_kind(&node.op);
                let (d, dx) = activation::backward(gpu, kind, &f[x.0], &dy)?;
                plan.push(d);
                grads.add(gpu, plan, x, dx, true)?;
            }
            Op::MaxPool { x, pool } => {
                let Some(Saved::Argmax(arg)) = fwd.saved.get(&i) else {
                    return Err(shape_error(
                        &node.name,
                        "backward needs the forward pass's argmax",
                    ));
                };
                let relu_output = relu_in_pool.contains(&x.0).then_some(&f[i]);
                let (d, dx) =
                    pool::max_pool_backward_masked(gpu, &f[x.0], &pool, arg, &dy, relu_output)?;
                plan.push(d);
                grads.add(gpu, plan, x, dx, true)?;
            }
            Op::AvgPool { x, pool } => {
                let (d, dx) = pool::avg_pool_backward(gpu, &f[x.0], &pool, &dy)?;
                plan.push(d);
                grads.add(gpu, plan, x, dx, true)?;
            }
            Op::GlobalAvgPool { x } => {
                let (d, dx) = pool::global_avg_pool_backward(gpu, &f[x.0], &dy)?;
                plan.push(d);
                grads.add(gpu, plan, x, dx, true)?;
            }
            Op::Reshape { x } => grads.add(gpu, plan, x, dy.reshape(graph.shape(x))?, false)?,
            Op::ChannelMoments { x } => {
                let (d, dx) = batchnorm::moments_backward(gpu, &f[x.0], &f[i], &dy)?;
                plan.push(d);
                grads.add(gpu, plan, x, dx, true)?;
            }
            Op::AdaptiveAvgPool { x, .. } => {
                let (d, dx) = pool::adaptive_avg_pool_backward(gpu, &f[x.0], &dy)?;
                plan.push(d);
                grads.add(gpu, plan, x, dx, true)?;
            }
            Op::L2Normalize { x, eps } => {
                let Some(Saved::Norms(norms)) = fwd.saved.get(&i) else {
                    return Err(shape_error(
                        &node.name,
                        "backward needs the forward's norms",
                    ));
                };
                let (d, dx) = relation::normalize_rows_backward(gpu, &f[x.0], norms, &dy, eps)?;
                plan.push(d);
                grads.add(gpu, plan, x, dx, true)?;
            }
            // In evaluation mode dropout was the identity, and so is its backward pass.
            Op::Dropout { x, .. } if fwd.mode == Mode::Eval => {
                grads.add(gpu, plan, x, dy, false)?
            }
            Op::Dropout { x, p } => {
                let step = fwd
                    .step
                    .as_ref()
                    .ok_or_else(|| shape_error(&node.name, "backward needs the step counter"))?;
                // The same (salt, step) gives the same mask: dx = mask ⊙ dy / (1 − p).
                let (d, dx) = dropout::dropout_step(gpu, &dy, p, i as u32, step)?;
                plan.push(d);
                grads.add(gpu, plan, x, dx, true)?;
            }
            Op::Add { a, b } => {
                for operand in [a, b] {
                    if want(operand) {
                        grads.add(gpu, plan, operand, dy.clone(), false)?;
                    }
                }
            }
            Op::GatedEnsemble { gate, ref parts } => {
                let Some(Saved::GateWeights(weights)) = fwd.saved.get(&i) else {
                    return Err(shape_error(
                        &node.name,
                        "backward needs the forward's gate weights",
                    ));
                };
                let branches: Vec<&Tensor> = parts.iter().map(|p| &f[p.0]).collect();
                let (p, dgate, dparts) = gate::ensemble_backward(gpu, weights, &branches, &dy)?;
                plan.extend(p);
                if want(gate) {
                    grads.add(gpu, plan, gate, dgate, true)?;
                }
                for (&part, dz) in parts.iter().zip(dparts) {
                    if want(part) {
                        grads.add(gpu, plan, part, dz, true)?;
                    }
                }
            }
            Op::Mixture { .. } => {
                return Err(shape_error(
                    &node.name,
                    "a teachers' mixture is frozen: it has no backward pass",
                ));
            }
            Op::Input | Op::Param { .. } => {}
        }
    }
    let mut out = BTreeMap::new();
    for (v, node) in graph.params() {
        if let (
            Op::Param {
                trainable: true, ..
            },
            Some((g, _)),
        ) = (&node.op, grads.slots[v.0].take())
        {
            out.insert(node.name.clone(), g);
        }
    }
    for &v in wrt_inputs {
        if let Some((g, _)) = grads.slots[v.0].take() {
            out.insert(graph.nodes[v.0].name.clone(), g);
        }
    }
    Ok(out)
}
