//! An f64 interpreter of the graph IR over the CPU references, in training mode (batch
//! statistics) or evaluation mode (running statistics): the reference the executor's gradients
//! are checked against by finite differences.

use std::collections::BTreeMap;

use super::exec::Mode;
use super::{Graph, Op};

use crate::kernels::quantize::Quantizer;
use crate::reference::activation::{Act, gelu, leaky_relu, relu, relu6};
use crate::reference::conv::{self as cpu_conv, Window};
use crate::reference::matmul::{LinearShape, linear_forward};
use crate::reference::{batchnorm, pool, quantize, response, softmax};

/// Runs the training-mode forward pass on host values (parameters and buffers by name, input
/// `x`) and returns every value.
pub fn forward(graph: &Graph, params: &BTreeMap<String, Vec<f64>>, x: &[f64]) -> Vec<Vec<f64>> {
    forward_in(graph, params, x, Mode::Train)
}

/// [`forward`] in either mode: in evaluation mode batch norm uses its running statistics.
pub fn forward_in(
    graph: &Graph,
    params: &BTreeMap<String, Vec<f64>>,
    x: &[f64],
    mode: Mode,
) -> Vec<Vec<f64>> {
    let mut values: Vec<Vec<f64>> = Vec::with_capacity(graph.nodes.len());
    for node in &graph.nodes {
        let shape = &node.shape;
        let v = |i: crate::graph::Value| values[i.0].clone();
        let out = match node.op {
            Op::Input => x.to_vec(),
            Op::Param { .. } => params[&node.name].clone(),
            Op::Linear { x, weight, bias } => {
                let [m, k] = [graph.shape(x)[0], graph.shape(x)[1]];
                let n = shape[1];
                let b = bias.map_or(vec![0.0; n], &v);
                linear_forward(
                    &values[x.0],
                    &values[weight.0],
                    &b,
                    LinearShape { m, n, k },
                    Act::Identity,
                )
                .1
            }
            Op::Conv2d {
                x,
                weight,
                bias,
                spec,
            } => {
                let s = graph.shape(x);
                let ws = graph.shape(weight);
                let win = Window {
                    n: s[0],
                    c: s[1],
                    h: s[2],
                    w: s[3],
                    k: [ws[2], ws[3]],
                    s: spec.stride,
                    p: spec.padding,
                };
                let b = bias.map(&v);
                cpu_conv::conv2d(
                    &values[x.0],
                    &values[weight.0],
                    b.as_deref(),
                    &win,
                    ws[0],
                    spec.groups,
                )
            }
            Op::BatchNorm {
                x,
                gamma,
                beta,
                running_mean,
                running_var,
                eps,
                ..
            } if mode == Mode::Eval => {
                let s = graph.shape(x);
                let spatial: usize = s[2..].iter().product();
                let (rm, rv) = (&values[running_mean.0], &values[running_var.0]);
                let (g, b) = (&values[gamma.0], &values[beta.0]);
                values[x.0]
                    .iter()
                    .enumerate()
                    .map(|(k, z)| {
                        let c = (k / spatial) % s[1];
                        (z - rm[c]) / (rv[c] + f64::from(eps)).sqrt() * g[c] + b[c]
                    })
                    .collect()
            }
            Op::BatchNorm {
                x,
                gamma,
                beta,
                eps,
                ..
            } => {
                let s = graph.shape(x);
                let spatial = s[2..].iter().product();
                batchnorm::batch_norm(
                    &values[x.0],
                    s[0],
                    s[1],
                    spatial,
                    &values[gamma.0],
                    &values[beta.0],
                    f64::from(eps),
                )
                .0
            }
            Op::FakeQuant {
                x,
                range,
                qparams,
                axis,
                grid,
                averaging,
            } => {
                // The launcher's shape rule, so both read the same channels.
                let Ok(q) = Quantizer::new(graph.shape(x), axis, grid, averaging) else {
                    panic!("{}: a fake quantiser the graph builder accepted", node.name);
                };
                let (channels, inner) = (q.channels, q.inner);
                let qp = if mode == Mode::Train {
                    let mut seen = values[range.0].clone();
                    let a = f64::from(averaging);
                    quantize::observe(&values[x.0], channels, inner, &mut seen, a, grid)
                } else {
                    values[qparams.0].clone()
                };
                quantize::fake_quant(&values[x.0], channels, inner, &qp, grid)
            }
            Op::Relu { x } => values[x.0].iter().map(|&z| relu(z)).collect(),
            Op::Relu6 { x } => values[x.0].iter().map(|&z| relu6(z)).collect(),
            Op::LeakyRelu { x, slope } => values[x.0]
                .iter()
                .map(|&z| leaky_relu(z, f64::from(slope)))
                .collect(),
            Op::Gelu { x } => values[x.0].iter().map(|&z| gelu(z)).collect(),
            Op::Tanh { x } => values[x.0].iter().map(|&z| z.tanh()).collect(),
            Op::MaxPool { x, pool } | Op::AvgPool { x, pool } => {
                let s = graph.shape(x);
                let win = Window {
                    n: s[0],
                    c: s[1],
                    h: s[2],
                    w: s[3],
                    k: pool.kernel,
                    s: pool.stride,
                    p: pool.padding,
                };
                if matches!(node.op, Op::MaxPool { .. }) {
                    pool::max_pool(&values[x.0], &win).0
                } else {
                    pool::avg_pool(&values[x.0], &win)
                }
            }
            Op::GlobalAvgPool { x } => {
                let s = graph.shape(x);
                let hw = s[2] * s[3];
                values[x.0]
                    .chunks(hw)
                    .map(|p| p.iter().sum::<f64>() / hw as f64)
                    .collect()
            }
            Op::Reshape { x } => v(x),
            Op::ChannelMoments { x } => {
                let s = graph.shape(x);
                batchnorm::moments(&values[x.0], s[0], s[1], s[2..].iter().product())
            }
            Op::AdaptiveAvgPool { x, out } => {
                let s = graph.shape(x);
                pool::adaptive_avg_pool(&values[x.0], [s[0], s[1], s[2], s[3]], out)
            }
            Op::L2Normalize { x, eps } => {
                let d = graph.shape(x)[1];
                values[x.0]
                    .chunks(d)
                    .flat_map(|r| {
                        let n = r.iter().map(|a| a * a).sum::<f64>().sqrt() + f64::from(eps);
                        r.iter().map(move |a| a / n)
                    })
                    .collect()
            }
            // The reference is deterministic: it checks gradients of graphs without dropout.
            Op::Dropout { x, .. } => v(x),
            Op::Add { a, b } => values[a.0]
                .iter()
                .zip(&values[b.0])
                .map(|(p, q)| p + q)
                .collect(),
            Op::GatedEnsemble { gate, ref parts } => {
                let branches: Vec<Vec<f64>> = parts.iter().map(|p| values[p.0].clone()).collect();
                crate::reference::gate::ensemble(&values[gate.0], &branches, shape[1])
            }
            Op::Mixture {
                ref parts,
                ref weights,
                temperature,
            } => {
                let t = f64::from(temperature);
                let cols = shape[1];
                let mut acc = vec![0.0; values[parts[0].0].len()];
                for (p, &w) in parts.iter().zip(weights) {
                    let probs = softmax::forward(&values[p.0], cols, t, false);
                    acc.iter_mut()
                        .zip(probs)
                        .for_each(|(a, q)| *a += f64::from(w) * q);
                }
                acc.iter().map(|a| t * a.max(1e-30).ln()).collect()
            }
        };
        values.push(out);
    }
    values
}

/// Mean cross-entropy of the graph's output against `labels`.
pub fn ce_loss(
    graph: &Graph,
    params: &BTreeMap<String, Vec<f64>>,
    x: &[f64],
    labels: &[usize],
) -> f64 {
    let values = forward(graph, params, x);
    let out = graph.output.expect("a model output");
    let classes = graph.shape(out)[1];
    response::ce(&values[out.0], labels, classes).loss
}
