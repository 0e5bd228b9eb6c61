//! Quantisation-aware training: a model rewritten with fake quantisers where its int8 deployment
//! rounds, as PyTorch's eager-mode QAT places them: the input (`quant`, per tensor, affine
//! uint8), every Linear and Conv2d weight (`LAYER.weight_fake_quant`, per output channel,
//! symmetric int8) and every ReLU/ReLU6 output (`ACT.activation_post_process`, per tensor,
//! affine uint8). Each quantiser keeps its observer's range and its scale and zero point as
//! buffers (`….range`, `….qparams`, `[channels, 2]`), saved with the model's weights; the
//! trainable parameters stay the float ones the optimizer updates (the straight-through
//! estimator passes their gradients through the rounding).
//!
//! Per-channel symmetric weight scales commute with folding a following batch norm into the
//! convolution (each output channel is only multiplied by γ/σ), so the int8 export can fold it.

use super::ir::{Graph, Init, Op, Value};
use crate::Result;
use crate::io::{HostTensor, TensorMap};
use crate::kernels::quantize::{INT8_SYMMETRIC, UINT8_AFFINE};

/// PyTorch's moving-average constant for its QAT observers.
pub const DEFAULT_AVERAGING: f32 = 0.01;

/// Whether a graph tensor is a fake quantiser's observer state (range, scale and zero point),
/// which starts afresh rather than being copied from another model.
fn is_observer(op: &Op) -> bool {
    matches!(
        op,
        Op::Param {
            init: Init::Pairs(..),
            ..
        }
    )
}

/// The names and shapes of `graph`'s parameters and buffers other than observer state: what
/// one model's weights must provide to start another.
pub fn learnt_tensors(graph: &Graph) -> Vec<(String, Vec<usize>)> {
    graph
        .params()
        .filter(|(_, n)| !is_observer(&n.op))
        .map(|(_, n)| (n.name.clone(), n.shape.clone()))
        .collect()
}

/// Adds to `host` every observer buffer of `graph` it lacks, at its initial value (nothing
/// observed yet): a float model's weights become a quantisation-aware model's.
pub fn add_fresh_observers(graph: &Graph, host: &mut TensorMap) {
    for (_, node) in graph.params() {
        if let Op::Param {
            init: Init::Pairs(a, b),
            ..
        } = node.op
        {
            let n = node.shape.iter().product::<usize>() / 2;
            host.entry(node.name.clone())
                .or_insert_with(|| HostTensor::f32(&node.shape, [a, b].repeat(n)));
        }
    }
}

impl Graph {
    /// The same model with fake quantisers on its input, weights and activations (see the
    /// module's documentation); every consumer of a quantised value reads its quantised form,
    /// taps included.
    pub fn quantization_aware(&self, averaging: f32) -> Result<Graph> {
        self.rewritten(|g, node, new| {
            let at = |v: Value| new[v.0];
            Ok(match node.op {
                Op::Input if node.name == "x" => {
                    let x = g.input(&node.name, &node.shape, node.dtype)?;
                    Some(g.fake_quant("quant", x, None, UINT8_AFFINE, averaging)?)
                }
                Op::Linear { x, weight, bias }
                | Op::Conv2d {
                    x, weight, bias, ..
                } => {
                    let prefix = format!("{}.weight_fake_quant", node.name);
                    let w =
                        g.fake_quant(&prefix, at(weight), Some(0), INT8_SYMMETRIC, averaging)?;
                    let op = match node.op.clone() {
                        Op::Linear { .. } => Op::Linear {
                            x: at(x),
                            weight: w,
                            bias: bias.map(at),
                        },
                        Op::Conv2d { spec, .. } => Op::Conv2d {
                            x: at(x),
                            weight: w,
                            bias: bias.map(at),
                            spec,
                        },
                        _ => unreachable!("matched above"),
                    };
                    Some(g.push(node.name.clone(), op, node.shape.clone(), node.dtype)?)
                }
                Op::Relu { .. } | Op::Relu6 { .. } => {
                    let op = node.op.map_values(at);
                    let y = g.push(node.name.clone(), op, node.shape.clone(), node.dtype)?;
                    let prefix = format!("{}.activation_post_process", node.name);
                    Some(g.fake_quant(&prefix, y, None, UINT8_AFFINE, averaging)?)
                }
                _ => None,
            })
        })
    }
}
