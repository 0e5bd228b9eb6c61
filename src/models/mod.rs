//! Built-in model families as graphs, with PyTorch's parameter names so checkpoints interchange:
//! an MLP and a small CNN (conv-bn-relu-pool stacks). Every model reads `x` as (B, C, H, W) and
//! taps its hidden features and `logits`.

use crate::gpu::{DType, Result};
use crate::graph::{ConvLayer, Graph};

/// `x.flatten(1)`, then `hidden.i = ReLU(Linear)` for each width, then `head = Linear`.
/// Parameters `hidden.{i}.weight/bias`, `head.weight/bias`; taps `hidden.{i}` (after the
/// activation) and `logits`.
pub fn mlp(input: [usize; 4], hidden: &[usize], classes: usize) -> Result<Graph> {
    let mut g = Graph::new();
    let x = g.input("x", &input, DType::F32)?;
    let mut h = g.flatten(x)?;
    for (i, &width) in hidden.iter().enumerate() {
        let name = format!("hidden.{i}");
        let z = g.linear(&name, h, width, true)?;
        h = g.relu(z)?;
        g.tap(&name, h)?;
    }
    let logits = g.linear("head", h, classes, true)?;
    g.set_output(logits)?;
    Ok(g)
}

/// `features` = [Conv2d(3×3, pad 1, no bias), BatchNorm2d, ReLU, MaxPool2d(2)] per width, then
/// `classifier` = Linear over the flattened features, as `nn.Sequential` numbers them
/// (`features.0.weight`, `features.1.running_mean`, …, `classifier.weight`). Taps
/// `features.{4i+3}` (each block's output) and `logits`.
pub fn cnn(input: [usize; 4], channels: &[usize], classes: usize) -> Result<Graph> {
    let mut g = Graph::new();
    let mut h = g.input("x", &input, DType::F32)?;
    for (i, &c) in channels.iter().enumerate() {
        let conv = g.conv2d(
            &format!("features.{}", 4 * i),
            h,
            ConvLayer {
                out: c,
                kernel: 3,
                stride: 1,
                padding: 1,
                bias: false,
            },
        )?;
        let bn = g.batch_norm(&format!("features.{}", 4 * i + 1), conv)?;
        let act = g.relu(bn)?;
        h = g.max_pool(act, 2, 2, 0)?;
        g.tap(&format!("features.{}", 4 * i + 3), h)?;
    }
    let flat = g.flatten(h)?;
    let logits = g.linear("classifier", flat, classes, true)?;
    g.set_output(logits)?;
    Ok(g)
}
