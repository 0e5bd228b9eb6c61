//! The graph IR: nodes are kernel-library ops over tensors with static shapes. Shapes are
//! inferred and checked as the graph is built, so a bad model fails at construction with the
//! node's name and the shapes involved, never at dispatch.

use std::collections::BTreeMap;

use crate::Result;
use crate::error::shape_error;
use crate::gpu::DType;
use crate::kernels::conv::Conv2d;
use crate::kernels::pool::Pool2d;

/// The offset that takes a class out of a softmax ([`Graph::class_offsets`]): `exp` of it
/// underflows to zero in f32 even divided by a distillation temperature of 100.
pub const CLASS_OFF: f32 = -1.0e6;

/// A value in a graph: the output of the node with this index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Value(pub usize);

/// How a parameter or buffer starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Uniform in [−bound, bound] (PyTorch's default for Linear and Conv2d: 1/√fan_in).
    Uniform(f32),
    /// The pair `[a, b]` repeated (a `[channels, 2]` buffer: a fake quantiser's range before it
    /// has seen anything, or its scale and zero point).
    Pairs(f32, f32),
    /// The identity matrix (a square `[n, n]` buffer).
    Identity,
}

/// What a node computes.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Fed each step.
    Input,
    /// A tensor owned by the model: trainable parameters, or buffers such as running statistics.
    Param {
        /// Initial values.
        init: Init,
        /// Whether the optimizer updates it.
        trainable: bool,
    },
    /// `x·Wᵀ + b`, W `[out, in]`.
    Linear {
        /// Input `[B, in]`.
        x: Value,
        /// Weight.
        weight: Value,
        /// Optional bias `[out]`.
        bias: Option<Value>,
    },
    /// NCHW convolution.
    Conv2d {
        /// Input.
        x: Value,
        /// Weight `[Cout, Cin, KH, KW]`.
        weight: Value,
        /// Optional bias `[Cout]`.
        bias: Option<Value>,
        /// Stride and padding.
        spec: Conv2d,
    },
    /// Batch normalisation (batch statistics in training, running statistics in evaluation).
    BatchNorm {
        /// Input `(N, C)` or `(N, C, H, W)`.
        x: Value,
        /// γ.
        gamma: Value,
        /// β.
        beta: Value,
        /// Running mean (buffer).
        running_mean: Value,
        /// Running variance (buffer).
        running_var: Value,
        /// ε.
        eps: f32,
        /// Running-stat momentum.
        momentum: f32,
    },
    /// ReLU.
    Relu {
        /// Input.
        x: Value,
    },
    /// ReLU6 (`nn.ReLU6`).
    Relu6 {
        /// Input.
        x: Value,
    },
    /// Leaky ReLU (`nn.LeakyReLU`).
    LeakyRelu {
        /// Input.
        x: Value,
        /// The slope where the input is not positive.
        slope: f32,
    },
    /// Exact GELU.
    Gelu {
        /// Input.
        x: Value,
    },
    /// Hyperbolic tangent (`nn.Tanh`).
    Tanh {
        /// Input.
        x: Value,
    },
    /// Per-channel moments of `(N, C)` or `(N, C, H, W)`: `[2, C]`, the means then the biased
    /// variances over N and the positions (the batch statistics a BatchNorm layer's input has:
    /// DeepInversion's taps).
    ChannelMoments {
        /// Input.
        x: Value,
    },
    /// Max pooling.
    MaxPool {
        /// Input.
        x: Value,
        /// Window.
        pool: Pool2d,
    },
    /// Average pooling.
    AvgPool {
        /// Input.
        x: Value,
        /// Window.
        pool: Pool2d,
    },
    /// (N, C, H, W) → (N, C).
    GlobalAvgPool {
        /// Input.
        x: Value,
    },
    /// The same elements in the node's shape, a view (`flatten`, `reshape`).
    Reshape {
        /// Input.
        x: Value,
    },
    /// Fake quantisation (quantisation-aware training): in training the observer first folds
    /// `x`'s range into `range` and rewrites `qparams`; then `x` is rounded to the integer grid
    /// and back. Backward is the straight-through estimator.
    FakeQuant {
        /// Input.
        x: Value,
        /// The observer's moving-average `[min, max]` per channel (a buffer).
        range: Value,
        /// `[scale, zero point]` per channel (a buffer).
        qparams: Value,
        /// The channel axis, or `None` for one scale over the whole tensor.
        axis: Option<usize>,
        /// The integer grid.
        grid: crate::reference::quantize::Grid,
        /// The observer's moving-average constant.
        averaging: f32,
    },
    /// Inverted dropout in training (a new mask each step), identity in evaluation.
    Dropout {
        /// Input.
        x: Value,
        /// Drop probability.
        p: f32,
    },
    /// Several teachers' logits combined for KD: `T · log(Σ_k w_k softmax(t_k / T))`, whose
    /// softmax at temperature T is the weighted mixture of their softened outputs. Forward only.
    Mixture {
        /// The teachers' logits.
        parts: Vec<Value>,
        /// Their weights (positive, summing to one).
        weights: Vec<f32>,
        /// The KD temperature the mixture is taken at.
        temperature: f32,
    },
    /// Adaptive average pooling to `out` (PyTorch's `adaptive_avg_pool2d`: overlapping windows
    /// when the size does not divide).
    AdaptiveAvgPool {
        /// Input `(N, C, H, W)`.
        x: Value,
        /// Output `(OH, OW)`.
        out: [usize; 2],
    },
    /// Each row divided by its Euclidean norm (plus `eps`): `(N, D)` embeddings onto the unit
    /// sphere (CRD's heads).
    L2Normalize {
        /// Input `(N, D)`.
        x: Value,
        /// Added to the norm (0 for none).
        eps: f32,
    },
    /// ONE's gated ensemble of branch outputs: `Σ_b softmax(gate)[:, b] ⊙ parts[b]`, with gate
    /// logits `(N, B)` and B parts `(N, C)`.
    GatedEnsemble {
        /// The gate's logits.
        gate: Value,
        /// The branches' outputs.
        parts: Vec<Value>,
    },
    /// Elementwise sum (residual connections).
    Add {
        /// First operand.
        a: Value,
        /// Second operand.
        b: Value,
    },
}

impl Op {
    /// The values this op reads.
    pub fn inputs(&self) -> Vec<Value> {
        match *self {
            Op::Input | Op::Param { .. } => vec![],
            Op::Linear { x, weight, bias }
            | Op::Conv2d {
                x, weight, bias, ..
            } => {
                let mut v = vec![x, weight];
                v.extend(bias);
                v
            }
            Op::BatchNorm {
                x,
                gamma,
                beta,
                running_mean,
                running_var,
                ..
            } => vec![x, gamma, beta, running_mean, running_var],
            Op::Relu { x } | Op::Gelu { x } | Op::MaxPool { x, .. } | Op::AvgPool { x, .. } => {
                vec![x]
            }
            Op::GlobalAvgPool { x }
            | Op::Relu6 { x }
            | Op::LeakyRelu { x, .. }
            | Op::Tanh { x }
            | Op::ChannelMoments { x }
            | Op::Reshape { x }
            | Op::Dropout { x, .. }
            | Op::AdaptiveAvgPool { x, .. }
            | Op::L2Normalize { x, .. } => vec![x],
            Op::Add { a, b } => vec![a, b],
            Op::Mixture { ref parts, .. } => parts.clone(),
            Op::GatedEnsemble { gate, ref parts } => {
                let mut v = vec![gate];
                v.extend(parts);
                v
            }
            Op::FakeQuant {
                x, range, qparams, ..
            } => vec![x, range, qparams],
        }
    }

    /// The same op reading other values (`f` maps each input).
    pub fn map_values(&self, f: impl Fn(Value) -> Value) -> Op {
        let mut op = self.clone();
        match &mut op {
            Op::Input | Op::Param { .. } => {}
            Op::Linear { x, weight, bias }
            | Op::Conv2d {
                x, weight, bias, ..
            } => {
                *x = f(*x);
                *weight = f(*weight);
                *bias = bias.map(&f);
            }
            Op::BatchNorm {
                x,
                gamma,
                beta,
                running_mean,
                running_var,
                ..
            } => {
                for v in [x, gamma, beta, running_mean, running_var] {
                    *v = f(*v);
                }
            }
            Op::Relu { x }
            | Op::Gelu { x }
            | Op::MaxPool { x, .. }
            | Op::AvgPool { x, .. }
            | Op::GlobalAvgPool { x }
            | Op::LeakyRelu { x, .. }
            | Op::Relu6 { x }
            | Op::Tanh { x }
            | Op::ChannelMoments { x }
            | Op::Reshape { x }
            | Op::Dropout { x, .. }
            | Op::AdaptiveAvgPool { x, .. }
            | Op::L2Normalize { x, .. } => *x = f(*x),
            Op::Add { a, b } => {
                *a = f(*a);
                *b = f(*b);
            }
            Op::Mixture { parts, .. } => parts.iter_mut().for_each(|v| *v = f(*v)),
            Op::GatedEnsemble { gate, parts } => {
                *gate = f(*gate);
                parts.iter_mut().for_each(|v| *v = f(*v));
            }
            Op::FakeQuant {
                x, range, qparams, ..
            } => {
                for v in [x, range, qparams] {
                    *v = f(*v);
                }
            }
        }
        op
    }
}

/// A square convolution layer's settings, as `nn.Conv2d`'s arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvLayer {
    /// Output channels.
    pub out: usize,
    /// Kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding.
    pub padding: usize,
    /// Whether the layer has a bias.
    pub bias: bool,
    /// Channel groups (`groups`; 1 for an ordinary convolution, the input channels for a
    /// depthwise one). Must divide the input and output channels.
    pub groups: usize,
}

impl ConvLayer {
    /// A `kernel`×`kernel` convolution to `out` channels that keeps an odd kernel's map size
    /// (stride 1, padding `kernel / 2`), without bias, ungrouped: the common case, adjusted with
    /// the `with_…` methods.
    pub const fn same(out: usize, kernel: usize) -> ConvLayer {
        ConvLayer {
            out,
            kernel,
            stride: 1,
            padding: kernel / 2,
            bias: false,
            groups: 1,
        }
    }

    /// The same layer with this stride.
    pub const fn with_stride(self, stride: usize) -> ConvLayer {
        ConvLayer { stride, ..self }
    }

    /// The same layer with a bias.
    pub const fn with_bias(self) -> ConvLayer {
        ConvLayer { bias: true, ..self }
    }

    /// The same layer in this many channel groups.
    pub const fn with_groups(self, groups: usize) -> ConvLayer {
        ConvLayer { groups, ..self }
    }
}

/// A node: a named op and the shape of its output.
#[derive(Clone, Debug)]
pub struct Node {
    /// Unique name (parameters use PyTorch's `module.weight` names).
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// Output shape.
    pub shape: Vec<usize>,
    /// Output dtype.
    pub dtype: DType,
}

/// A model as a graph of ops, built in topological order.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// Nodes; a [`Value`] indexes this list.
    pub nodes: Vec<Node>,
    /// Named outputs any loss term can read (`hidden.0`, `logits`, …).
    pub taps: BTreeMap<String, Value>,
    /// The model's output (its logits).
    pub output: Option<Value>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new graph built node by node, the one loop behind every graph transformation (low
    /// rank, quantisation-aware training): `rewrite(g, node, new)` may emit nodes of its own for
    /// `node` into `g` and return the value that stands for it, or `None` to copy it; `new`
    /// maps each earlier node's value to its replacement. Taps and the output follow.
    pub fn rewritten(
        &self,
        mut rewrite: impl FnMut(&mut Graph, &Node, &[Value]) -> Result<Option<Value>>,
    ) -> Result<Graph> {
        let mut g = Graph::new();
        let mut new: Vec<Value> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let value = match rewrite(&mut g, node, &new)? {
                Some(v) => v,
                None => {
                    let op = node.op.map_values(|v| new[v.0]);
                    g.push(node.name.clone(), op, node.shape.clone(), node.dtype)?
                }
            };
            new.push(value);
        }
        g.taps = self
            .taps
            .iter()
            .map(|(k, &v)| (k.clone(), new[v.0]))
            .collect();
        g.output = self.output.map(|v| new[v.0]);
        Ok(g)
    }

    /// The shape of a value.
    pub fn shape(&self, v: Value) -> &[usize] {
        &self.nodes[v.0].shape
    }

    /// The node called `name`.
    pub fn find(&self, name: &str) -> Option<Value> {
        self.nodes.iter().position(|n| n.name == name).map(Value)
    }

    pub(super) fn push(
        &mut self,
        name: String,
        op: Op,
        shape: Vec<usize>,
        dtype: DType,
    ) -> Result<Value> {
        if self.nodes.iter().any(|n| n.name == name) {
            return Err(shape_error(&name, "a node with this name already exists"));
        }
        self.nodes.push(Node {
            name,
            op,
            shape,
            dtype,
        });
        Ok(Value(self.nodes.len() - 1))
    }

    fn auto_name(&self, kind: &str) -> String {
        format!("{kind}.{}", self.nodes.len())
    }

    /// A per-step input.
    pub fn input(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<Value> {
        self.push(name.to_string(), Op::Input, shape.to_vec(), dtype)
    }

    /// A trainable parameter.
    pub fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Value> {
        self.push(
            name.to_string(),
            Op::Param {
                init,
                trainable: true,
            },
            shape.to_vec(),
            DType::F32,
        )
    }

    /// A non-trainable buffer (exported with the model, not optimised).
    pub fn buffer(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Value> {
        self.push(
            name.to_string(),
            Op::Param {
                init,
                trainable: false,
            },
            shape.to_vec(),
            DType::F32,
        )
    }

    /// `prefix.weight` `[out, in]` and `prefix.bias`, as `nn.Linear(in, out)`.
    pub fn linear(&mut self, prefix: &str, x: Value, out: usize, bias: bool) -> Result<Value> {
        let &[b, inp] = self.shape(x) else {
            return Err(shape_error(
                prefix,
                format!(
                    "Linear needs a (batch, features) input, got {:?}",
                    self.shape(x)
                ),
            ));
        };
        let bound = 1.0 / (inp as f32).sqrt();
        let weight = self.param(
            &format!("{prefix}.weight"),
            &[out, inp],
            Init::Uniform(bound),
        )?;
        let bias = if bias {
            Some(self.param(&format!("{prefix}.bias"), &[out], Init::Uniform(bound))?)
        } else {
            None
        };
        self.push(
            prefix.to_string(),
            Op::Linear { x, weight, bias },
            vec![b, out],
            DType::F32,
        )
    }

    /// `prefix.weight` `[out, in, k, k]` (and `prefix.bias`), as
    /// `nn.Conv2d(in, out, k, stride, padding, bias)`.
    pub fn conv2d(&mut self, prefix: &str, x: Value, layer: ConvLayer) -> Result<Value> {
        let ConvLayer {
            out,
            kernel: k,
            stride,
            padding,
            bias,
            groups,
        } = layer;
        let &[n, cin, h, w] = self.shape(x) else {
            return Err(shape_error(
                prefix,
                format!(
                    "Conv2d needs an (N, C, H, W) input, got {:?}",
                    self.shape(x)
                ),
            ));
        };
        let size = |i: usize| {
            (i + 2 * padding)
                .checked_sub(k)
                .filter(|_| stride > 0)
                .map(|v| v / stride + 1)
        };
        let (Some(ho), Some(wo)) = (size(h), size(w)) else {
            return Err(shape_error(
                prefix,
                format!(
                    "a {k}×{k} kernel (stride {stride}, padding {padding}) does not fit {h}×{w}"
                ),
            ));
        };
        if groups == 0 || cin % groups != 0 || out % groups != 0 {
            return Err(shape_error(
                prefix,
                format!("groups = {groups} must divide the {cin} input and {out} output channels"),
            ));
        }
        // PyTorch's default initialisation: fan-in is one group's inputs times the window.
        let cin_g = cin / groups;
        let bound = 1.0 / ((cin_g * k * k) as f32).sqrt();
        let weight = self.param(
            &format!("{prefix}.weight"),
            &[out, cin_g, k, k],
            Init::Uniform(bound),
        )?;
        let bias = if bias {
            Some(self.param(&format!("{prefix}.bias"), &[out], Init::Uniform(bound))?)
        } else {
            None
        };
        let spec = Conv2d {
            stride: [stride, stride],
            padding: [padding, padding],
            groups,
        };
        self.push(
            prefix.to_string(),
            Op::Conv2d {
                x,
                weight,
                bias,
                spec,
            },
            vec![n, out, ho, wo],
            DType::F32,
        )
    }

    /// `prefix.weight`, `prefix.bias`, `prefix.running_mean`, `prefix.running_var`, as
    /// `nn.BatchNorm1d/2d(C)`.
    pub fn batch_norm(&mut self, prefix: &str, x: Value) -> Result<Value> {
        self.batch_norm_with(prefix, x, true)
    }

    /// Batch normalisation, with a learnt scale and shift when `affine` (as `batch_norm`) or
    /// without (`nn.BatchNorm2d(C, affine=False)`: γ = 1 and β = 0 are then fixed buffers).
    pub fn batch_norm_with(&mut self, prefix: &str, x: Value, affine: bool) -> Result<Value> {
        let shape = self.shape(x).to_vec();
        if !(shape.len() == 2 || shape.len() == 4) {
            return Err(shape_error(
                prefix,
                format!("BatchNorm needs (N, C) or (N, C, H, W), got {shape:?}"),
            ));
        }
        let c = shape[1];
        let (gamma, beta) = if affine {
            (
                self.param(&format!("{prefix}.weight"), &[c], Init::Ones)?,
                self.param(&format!("{prefix}.bias"), &[c], Init::Zeros)?,
            )
        } else {
            (
                self.buffer(&format!("{prefix}.weight"), &[c], Init::Ones)?,
                self.buffer(&format!("{prefix}.bias"), &[c], Init::Zeros)?,
            )
        };
        let running_mean = self.buffer(&format!("{prefix}.running_mean"), &[c], Init::Zeros)?;
        let running_var = self.buffer(&format!("{prefix}.running_var"), &[c], Init::Ones)?;
        let op = Op::BatchNorm {
            x,
            gamma,
            beta,
            running_mean,
            running_var,
            eps: 1e-5,
            momentum: 0.1,
        };
        self.push(prefix.to_string(), op, shape, DType::F32)
    }

    /// ReLU.
    pub fn relu(&mut self, x: Value) -> Result<Value> {
        let shape = self.shape(x).to_vec();
        self.push(self.auto_name("relu"), Op::Relu { x }, shape, DType::F32)
    }

    /// Fake quantisation of `x` on `grid`, per channel along `axis` or per tensor, with its
    /// observer's buffers `prefix.range` and `prefix.qparams` (`[channels, 2]`); the node is
    /// `prefix`.
    pub fn fake_quant(
        &mut self,
        prefix: &str,
        x: Value,
        axis: Option<usize>,
        grid: crate::reference::quantize::Grid,
        averaging: f32,
    ) -> Result<Value> {
        let shape = self.shape(x).to_vec();
        let q = crate::kernels::quantize::Quantizer::new(&shape, axis, grid, averaging)
            .map_err(|e| shape_error(prefix, e.to_string()))?;
        let pairs = [q.channels, 2];
        let range = self.buffer(
            &format!("{prefix}.range"),
            &pairs,
            Init::Pairs(f32::MAX, -f32::MAX),
        )?;
        // Scale 1, zero point 0 until the first observation.
        let qparams = self.buffer(&format!("{prefix}.qparams"), &pairs, Init::Pairs(1.0, 0.0))?;
        let op = Op::FakeQuant {
            x,
            range,
            qparams,
            axis,
            grid,
            averaging,
        };
        self.push(prefix.to_string(), op, shape, DType::F32)
    }

    /// ReLU6: `min(max(x, 0), 6)`.
    pub fn relu6(&mut self, x: Value) -> Result<Value> {
        let shape = self.shape(x).to_vec();
        self.push(self.auto_name("relu6"), Op::Relu6 { x }, shape, DType::F32)
    }

    /// Leaky ReLU with negative slope `slope`.
    pub fn leaky_relu(&mut self, x: Value, slope: f32) -> Result<Value> {
        let shape = self.shape(x).to_vec();
        let op = Op::LeakyRelu { x, slope };
        self.push(self.auto_name("leaky_relu"), op, shape, DType::F32)
    }

    /// Exact GELU.
    pub fn gelu(&mut self, x: Value) -> Result<Value> {
        let shape = self.shape(x).to_vec();
        self.push(self.auto_name("gelu"), Op::Gelu { x }, shape, DType::F32)
    }

    /// Hyperbolic tangent.
    pub fn tanh(&mut self, x: Value) -> Result<Value> {
        let shape = self.shape(x).to_vec();
        self.push(self.auto_name("tanh"), Op::Tanh { x }, shape, DType::F32)
    }

    fn pooled(&self, kind: &str, x: Value, pool: &Pool2d) -> Result<Vec<usize>> {
        let &[n, c, h, w] = self.shape(x) else {
            return Err(shape_error(
                kind,
                format!(
                    "pooling needs an (N, C, H, W) input, got {:?}",
                    self.shape(x)
                ),
            ));
        };
        let [ho, wo] = pool
            .output_size(h, w)
            .ok_or_else(|| shape_error(kind, format!("{pool:?} does not fit {h}×{w}")))?;
        Ok(vec![n, c, ho, wo])
    }

    /// Max pooling with a square window.
    pub fn max_pool(&mut self, x: Value, k: usize, stride: usize, padding: usize) -> Result<Value> {
        let pool = Pool2d {
            kernel: [k, k],
            stride: [stride, stride],
            padding: [padding, padding],
        };
        let name = self.auto_name("max_pool");
        let shape = self.pooled(&name, x, &pool)?;
        self.push(name, Op::MaxPool { x, pool }, shape, DType::F32)
    }

    /// Average pooling with a square window.
    pub fn avg_pool(&mut self, x: Value, k: usize, stride: usize, padding: usize) -> Result<Value> {
        let pool = Pool2d {
            kernel: [k, k],
            stride: [stride, stride],
            padding: [padding, padding],
        };
        let name = self.auto_name("avg_pool");
        let shape = self.pooled(&name, x, &pool)?;
        self.push(name, Op::AvgPool { x, pool }, shape, DType::F32)
    }

    /// (N, C, H, W) → (N, C, OH, OW) by adaptive average pooling (`out` at least 1×1).
    pub fn adaptive_avg_pool(&mut self, x: Value, out: [usize; 2]) -> Result<Value> {
        let name = self.auto_name("adaptive_avg_pool");
        let &[n, c, _, _] = self.shape(x) else {
            return Err(shape_error(
                &name,
                format!("needs an (N, C, H, W) input, got {:?}", self.shape(x)),
            ));
        };
        if out.contains(&0) {
            return Err(shape_error(
                &name,
                format!("output {out:?} must be at least 1×1"),
            ));
        }
        let shape = vec![n, c, out[0], out[1]];
        self.push(name, Op::AdaptiveAvgPool { x, out }, shape, DType::F32)
    }

    /// Nearest-neighbour upsampling by an integer `scale` (`nn.Upsample(scale_factor=s)`, mode
    /// `nearest`): output `(i, j)` is input `(⌊i/s⌋, ⌊j/s⌋)`. That is adaptive average pooling
    /// to `(s·H, s·W)`, whose window for output `i` is rows `⌊i/s⌋ … ⌈(i+1)/s⌉ − 1`, the single
    /// row `⌊i/s⌋`; its backward pass sums each `s × s` block, as upsampling's does. So the op is
    /// that one, not a second kernel.
    pub fn upsample_nearest(&mut self, x: Value, scale: usize) -> Result<Value> {
        let &[_, _, h, w] = self.shape(x) else {
            return Err(shape_error(
                "upsample_nearest",
                format!("needs an (N, C, H, W) input, got {:?}", self.shape(x)),
            ));
        };
        if scale == 0 {
            return Err(shape_error("upsample_nearest", "scale must be at least 1"));
        }
        self.adaptive_avg_pool(x, [h * scale, w * scale])
    }

    /// (N, C, H, W) → (N, C).
    pub fn global_avg_pool(&mut self, x: Value) -> Result<Value> {
        let name = self.auto_name("global_avg_pool");
        let &[n, c, _, _] = self.shape(x) else {
            return Err(shape_error(
                &name,
                format!("needs an (N, C, H, W) input, got {:?}", self.shape(x)),
            ));
        };
        self.push(name, Op::GlobalAvgPool { x }, vec![n, c], DType::F32)
    }

    /// (N, …) → (N, ∏…).
    pub fn flatten(&mut self, x: Value) -> Result<Value> {
        let shape = self.shape(x);
        let n = shape.first().copied().unwrap_or(1);
        let rest = shape.iter().skip(1).product();
        self.push(
            self.auto_name("flatten"),
            Op::Reshape { x },
            vec![n, rest],
            DType::F32,
        )
    }

    /// The same elements in `shape` (a view; PyTorch's `view`), e.g. a generator's latent
    /// projection `(N, C·H·W)` → `(N, C, H, W)`.
    pub fn reshape(&mut self, x: Value, shape: &[usize]) -> Result<Value> {
        let name = self.auto_name("reshape");
        let (from, to) = (
            self.shape(x).iter().product::<usize>(),
            shape.iter().product::<usize>(),
        );
        if from != to || shape.is_empty() {
            return Err(shape_error(
                &name,
                format!("cannot view {:?} as {shape:?}", self.shape(x)),
            ));
        }
        self.push(name, Op::Reshape { x }, shape.to_vec(), DType::F32)
    }

    /// The per-channel moments of `x` (`(N, C)` or `(N, C, H, W)`): `[2, C]`, means then biased
    /// variances.
    pub fn channel_moments(&mut self, x: Value) -> Result<Value> {
        let name = self.auto_name("channel_moments");
        let c = match self.shape(x) {
            &[_, c] | &[_, c, _, _] => c,
            other => {
                return Err(shape_error(
                    &name,
                    format!("needs an (N, C) or (N, C, H, W) input, got {other:?}"),
                ));
            }
        };
        self.push(name, Op::ChannelMoments { x }, vec![2, c], DType::F32)
    }

    /// Rows of an `(N, D)` value divided by their norm plus `eps`.
    pub fn l2_normalize(&mut self, x: Value, eps: f32) -> Result<Value> {
        let name = self.auto_name("l2_normalize");
        let shape = self.shape(x).to_vec();
        if shape.len() != 2 || eps.is_nan() || eps < 0.0 {
            return Err(shape_error(
                &name,
                format!("needs (N, D) rows and eps ≥ 0, got {shape:?} and {eps}"),
            ));
        }
        self.push(name, Op::L2Normalize { x, eps }, shape, DType::F32)
    }

    /// Dropout with drop probability `p` (0 ≤ p < 1).
    pub fn dropout(&mut self, x: Value, p: f32) -> Result<Value> {
        let name = self.auto_name("dropout");
        if !(0.0..1.0).contains(&p) {
            return Err(shape_error(&name, format!("p must be in [0, 1), got {p}")));
        }
        let shape = self.shape(x).to_vec();
        self.push(name, Op::Dropout { x, p }, shape, DType::F32)
    }

    /// `a + b` (same shapes).
    pub fn add(&mut self, a: Value, b: Value) -> Result<Value> {
        let name = self.auto_name("add");
        if self.shape(a) != self.shape(b) {
            return Err(shape_error(
                &name,
                format!(
                    "operands differ: {:?} and {:?}",
                    self.shape(a),
                    self.shape(b)
                ),
            ));
        }
        let shape = self.shape(a).to_vec();
        self.push(name, Op::Add { a, b }, shape, DType::F32)
    }

    /// `logits` `(N, C)` plus a per-class offset held in frozen buffers: a linear layer whose
    /// weight `prefix.weight` is the identity and whose bias `prefix.bias` (zeros until the
    /// caller writes it) holds the offsets. An offset of [`CLASS_OFF`] takes a class out of
    /// every softmax over the result: its probability, and so its gradient, are exactly zero
    /// (how a lifelong stage shows a model only the classes of its tasks so far).
    pub fn class_offsets(&mut self, prefix: &str, logits: Value) -> Result<Value> {
        let &[n, c] = self.shape(logits) else {
            return Err(shape_error(
                prefix,
                format!("needs logits (N, C), got {:?}", self.shape(logits)),
            ));
        };
        let weight = self.buffer(&format!("{prefix}.weight"), &[c, c], Init::Identity)?;
        let bias = self.buffer(&format!("{prefix}.bias"), &[c], Init::Zeros)?;
        let op = Op::Linear {
            x: logits,
            weight,
            bias: Some(bias),
        };
        self.push(prefix.to_string(), op, vec![n, c], DType::F32)
    }

    /// ONE's gated ensemble: `Σ_b softmax(gate)[:, b] ⊙ parts[b]` for gate logits `(N, B)` and
    /// B branch outputs `(N, C)`.
    pub fn gated_ensemble(&mut self, gate: Value, parts: &[Value]) -> Result<Value> {
        let name = self.auto_name("gated_ensemble");
        let shape = parts.first().map(|&p| self.shape(p).to_vec());
        let fits = match (self.shape(gate), &shape) {
            (&[n, b], Some(s)) => {
                s.len() == 2
                    && s[0] == n
                    && b == parts.len()
                    && parts.iter().all(|&p| self.shape(p) == s.as_slice())
            }
            _ => false,
        };
        let Some(shape) = shape.filter(|_| fits) else {
            return Err(shape_error(
                &name,
                format!(
                    "needs gate logits (N, B) and B branch outputs (N, C) alike, got {:?} and {} outputs",
                    self.shape(gate),
                    parts.len()
                ),
            ));
        };
        let op = Op::GatedEnsemble {
            gate,
            parts: parts.to_vec(),
        };
        self.push(name, op, shape, DType::F32)
    }

    /// Names a value so loss terms can read it.
    pub fn tap(&mut self, name: &str, v: Value) -> Result<()> {
        if self.taps.insert(name.to_string(), v).is_some() {
            return Err(shape_error(name, "a tap with this name already exists"));
        }
        Ok(())
    }

    /// Sets the model's output (also tapped as `logits`).
    pub fn set_output(&mut self, v: Value) -> Result<()> {
        self.output = Some(v);
        self.tap("logits", v)
    }

    /// This graph with only the taps named in `names` (and `logits`): what a compiled step plans
    /// with, so that values no one reads can be fused away (a batch norm's output into its
    /// ReLU); reading another tap is then an error, not a silently fused value.
    pub fn keeping_taps(&self, names: &std::collections::BTreeSet<String>) -> Graph {
        let mut g = self.clone();
        g.taps.retain(|k, _| k == "logits" || names.contains(k));
        g
    }

    /// The value behind a tap, or an error listing the taps there are.
    pub fn tapped(&self, name: &str) -> Result<Value> {
        self.taps.get(name).copied().ok_or_else(|| {
            let names: Vec<&str> = self.taps.keys().map(String::as_str).collect();
            shape_error(
                &format!("tap '{name}'"),
                format!("no such tap; this model has {}", names.join(", ")),
            )
        })
    }

    /// Several teachers as one frozen model reading one input `x`: their nodes and taps are
    /// prefixed with their names (`t1.hidden.1`, `t1.hidden.0.weight`), and its output `logits`
    /// is the [`Op::Mixture`] of their logits at `temperature` with `weights`.
    pub fn ensemble(
        teachers: &[(&str, &Graph)],
        weights: &[f32],
        temperature: f32,
    ) -> Result<Graph> {
        let (_, first) = teachers
            .first()
            .ok_or_else(|| shape_error("ensemble", "no teachers"))?;
        let x_shape = first
            .find("x")
            .map(|v| first.shape(v).to_vec())
            .ok_or_else(|| shape_error("ensemble", "teachers read x"))?;
        let mut g = Graph::new();
        let x = g.input("x", &x_shape, DType::F32)?;
        let mut outputs = Vec::new();
        for (name, t) in teachers {
            let mut map: Vec<Value> = Vec::with_capacity(t.nodes.len());
            for node in &t.nodes {
                let v = if node.op == Op::Input && node.name == "x" {
                    if node.shape != x_shape {
                        return Err(shape_error(
                            name,
                            format!(
                                "input x is {:?}, the other teachers' is {x_shape:?}",
                                node.shape
                            ),
                        ));
                    }
                    x
                } else {
                    let op = node.op.map_values(|v| map[v.0]);
                    g.push(
                        format!("{name}.{}", node.name),
                        op,
                        node.shape.clone(),
                        node.dtype,
                    )?
                };
                map.push(v);
            }
            for (tap, v) in &t.taps {
                g.tap(&format!("{name}.{tap}"), map[v.0])?;
            }
            outputs.push(map[t.output.ok_or_else(|| shape_error(name, "no output"))?.0]);
        }
        let shape = g.shape(outputs[0]).to_vec();
        if outputs.iter().any(|&o| g.shape(o) != shape.as_slice()) {
            return Err(shape_error(
                "ensemble",
                "the teachers' outputs differ in shape",
            ));
        }
        let mixture = g.push(
            "mixture".into(),
            Op::Mixture {
                parts: outputs,
                weights: weights.to_vec(),
                temperature,
            },
            shape,
            DType::F32,
        )?;
        g.set_output(mixture)?;
        Ok(g)
    }

    /// The model with an auxiliary classifier on each of `taps` (self-distillation): a Linear
    /// `aux.{i}` to `classes` outputs, after global average pooling when the tap is a feature
    /// map, tapped as `aux.{i}.logits`. The model's own nodes, taps and output are unchanged, so
    /// its weights (without the `aux.` ones) are the exported model.
    pub fn with_heads(&self, taps: &[&str], classes: usize) -> Result<Graph> {
        let mut g = self.clone();
        for (i, tap) in taps.iter().enumerate() {
            let v = g.tapped(tap)?;
            let features = match g.shape(v).len() {
                2 => v,
                4 => g.global_avg_pool(v)?,
                _ => {
                    return Err(shape_error(
                        &format!("head on '{tap}'"),
                        format!("needs a [B, D] or [B, C, H, W] tap, got {:?}", g.shape(v)),
                    ));
                }
            };
            let logits = g.linear(&format!("aux.{i}"), features, classes, true)?;
            g.tap(&format!("aux.{i}.logits"), logits)?;
        }
        Ok(g)
    }

    /// A stand-in for a frozen teacher whose outputs were computed beforehand (the teacher-output
    /// cache): one input per tap, named and tapped as the tap, with `logits` (which must be among
    /// them) as the output. A [`crate::graph::TrainStep`] compiled with it as its teacher takes
    /// those tensors from the host before each step
    /// ([`crate::graph::TrainStep::write_teacher_input`]) instead of running a forward pass.
    pub fn replay(taps: &[(&str, &[usize])]) -> Result<Graph> {
        let mut g = Graph::new();
        let mut logits = None;
        for (name, shape) in taps {
            let v = g.input(name, shape, DType::F32)?;
            if *name == "logits" {
                logits = Some(v);
                g.output = Some(v);
            }
            g.tap(name, v)?;
        }
        if logits.is_none() {
            return Err(shape_error("replay", "the taps must include logits"));
        }
        Ok(g)
    }

    /// Several models trained together (online distillation) as one graph reading one input
    /// `x`: their nodes and taps are prefixed with their names (`a.hidden.0.weight`, `a.logits`);
    /// the first model's logits are the graph's output.
    pub fn peers(models: &[(&str, &Graph)]) -> Result<Graph> {
        let mut g = Graph::new();
        let mut first_output = None;
        for (name, m) in models {
            let x_shape = m
                .find("x")
                .map(|v| m.shape(v).to_vec())
                .ok_or_else(|| shape_error(name, "models read x"))?;
            let x = match g.find("x") {
                Some(x) if g.shape(x) == x_shape.as_slice() => x,
                Some(x) => {
                    return Err(shape_error(
                        name,
                        format!(
                            "input x is {x_shape:?}, the first model's is {:?}",
                            g.shape(x)
                        ),
                    ));
                }
                None => g.input("x", &x_shape, DType::F32)?,
            };
            let mut map: Vec<Value> = Vec::with_capacity(m.nodes.len());
            for node in &m.nodes {
                let v = if node.op == Op::Input && node.name == "x" {
                    x
                } else {
                    g.push(
                        format!("{name}.{}", node.name),
                        node.op.map_values(|v| map[v.0]),
                        node.shape.clone(),
                        node.dtype,
                    )?
                };
                map.push(v);
            }
            for (tap, v) in &m.taps {
                g.tap(&format!("{name}.{tap}"), map[v.0])?;
            }
            first_output = first_output.or(m.output.map(|o| map[o.0]));
        }
        g.output = first_output;
        Ok(g)
    }

    /// Parameters and buffers, in order: (value, node).
    pub fn params(&self) -> impl Iterator<Item = (Value, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.op, Op::Param { .. }))
            .map(|(i, n)| (Value(i), n))
    }

    /// The parameters the optimizer updates, in order: (value, node).
    pub fn trainable_params(&self) -> impl Iterator<Item = (Value, &Node)> {
        self.params().filter(|(_, n)| {
            matches!(
                n.op,
                Op::Param {
                    trainable: true,
                    ..
                }
            )
        })
    }

    /// The same graph with every parameter frozen (not trainable): a network that gradients pass
    /// through to its input without training it (DeepInversion's teacher).
    pub fn frozen(&self) -> Graph {
        let mut g = self.clone();
        for node in &mut g.nodes {
            if let Op::Param { trainable, .. } = &mut node.op {
                *trainable = false;
            }
        }
        g
    }
}
