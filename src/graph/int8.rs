//! Int8 models: a quantisation-aware model ([`Graph::quantization_aware`]) exported to integer
//! weights, and run with the integer kernels of [`crate::kernels::int8`].
//!
//! # The export's layout (safetensors)
//! - `quant.scale` f32 `[1]`, `quant.zero_point` i32 `[1]`: the input's uint8 grid.
//! - per Linear or Conv2d layer `L` (PyTorch's module name, e.g. `features.0`):
//!   `L.weight` i8 in PyTorch's shape (`[out, in / groups, k, k]` or `[out, in]`), symmetric
//!   (`L.weight_zero_point` i32 `[out]`, all 0); `L.weight_scale` f32 `[out]`; `L.bias` f32
//!   `[out]`; and where the layer's output is quantised (every layer but the last),
//!   `L.output_scale` f32 `[1]` and `L.output_zero_point` i32 `[1]` (the uint8 grid of the
//!   activation after it, ReLU or ReLU6 included).
//! - A batch norm after a layer is folded into it: the int8 weights stay the QAT grid's, and the
//!   per-channel factor γ/√(σ² + ε) goes into `L.weight_scale` (negative where γ is) and `L.bias`.
//!   Per-channel symmetric scales commute with this folding, so it loses nothing.
//!
//! A layer computes `real = s_in·weight_scale_c·Σ (q_x − zp_in)·q_w + bias_c`, then either
//! returns it (the logits) or rounds it onto its output grid, clamped by its ReLU/ReLU6. Pooling
//! and flattening keep their input's grid (global average pooling rounds the mean onto it).
//! Which layers follow which comes from the model's architecture, as for a float checkpoint.

use super::ir::{Graph, Op, Value};
use crate::Result;
use crate::error::{Error, input_error};
use crate::gpu::{BoundPlan, DType, Gpu, Tensor};
use crate::io::{HostTensor, TensorMap};
use crate::kernels::int8::{self as k, DotPath, Grid, LayerKind, LayerWeights, Map};
use crate::reference::int8::{Epilogue, Requant, Window};

/// What bounds a layer's output below and above, fused into its requantisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Clamp {
    None,
    Relu,
    Relu6,
}

#[derive(Clone, Debug)]
struct BatchNorm {
    gamma: String,
    beta: String,
    mean: String,
    var: String,
    eps: f32,
}

/// One Linear/Conv2d layer of the float model, with what follows it.
#[derive(Clone, Debug)]
struct LayerPlan {
    name: String,
    kind: LayerKind,
    weight: String,
    weight_qparams: String,
    bias: Option<String>,
    batch_norm: Option<BatchNorm>,
    clamp: Clamp,
    /// The activation quantiser's `qparams` buffer; `None` for the output layer.
    output_qparams: Option<String>,
}

#[derive(Clone, Debug)]
enum Step {
    Quantize { qparams: String },
    Layer(Box<LayerPlan>),
    MaxPool(Window),
    GlobalAvgPool,
    Flatten,
}

fn unsupported(node: &str, what: impl Into<String>) -> Error {
    input_error(
        "int8 export",
        format!(
            "{node}: {}; int8 models are chains of Conv2d/Linear, BatchNorm, ReLU/ReLU6, pooling and flatten, trained with qat = true",
            what.into()
        ),
    )
}

fn square(name: &str, what: &str, v: [usize; 2]) -> Result<usize> {
    if v[0] == v[1] {
        Ok(v[0])
    } else {
        Err(unsupported(name, format!("its {what} {v:?} is not square")))
    }
}

/// The quantiser feeding `v` (a weight's), as (parameter, qparams) names.
fn quantised_param(graph: &Graph, layer: &str, v: Value) -> Result<(String, String)> {
    match &graph.nodes[v.0].op {
        Op::FakeQuant { x, qparams, .. } if matches!(graph.nodes[x.0].op, Op::Param { .. }) => {
            Ok((
                graph.nodes[x.0].name.clone(),
                graph.nodes[qparams.0].name.clone(),
            ))
        }
        _ => Err(unsupported(layer, "its weight is not fake-quantised")),
    }
}

/// The int8 program of a quantisation-aware graph: its steps, in order.
fn plan(graph: &Graph) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    let mut pending: Option<LayerPlan> = None;
    let name_of = |v: Value| graph.nodes[v.0].name.clone();
    let finish = |pending: &mut Option<LayerPlan>, node: &str| -> Result<()> {
        match pending {
            Some(p) => Err(unsupported(
                &p.name,
                format!("its output reaches {node} without an activation quantiser"),
            )),
            None => Ok(()),
        }
    };
    for node in &graph.nodes {
        let name = node.name.as_str();
        match &node.op {
            Op::Input | Op::Param { .. } | Op::Dropout { .. } => {}
            Op::FakeQuant { x, qparams, .. } => match &graph.nodes[x.0].op {
                Op::Param { .. } => {}
                Op::Input => steps.push(Step::Quantize {
                    qparams: name_of(*qparams),
                }),
                _ => {
                    let Some(mut layer) = pending.take() else {
                        return Err(unsupported(name, "it quantises no layer's output"));
                    };
                    layer.output_qparams = Some(name_of(*qparams));
                    steps.push(Step::Layer(Box::new(layer)));
                }
            },
            Op::Linear { weight, bias, .. } | Op::Conv2d { weight, bias, .. } => {
                finish(&mut pending, name)?;
                let (weight_name, weight_qparams) = quantised_param(graph, name, *weight)?;
                let kind = match &node.op {
                    Op::Conv2d { x, spec, .. } => {
                        let w = graph.shape(*weight);
                        let cin = graph.shape(*x)[1];
                        let depthwise = spec.is_depthwise(cin, w[0]);
                        if spec.groups != 1 && !depthwise {
                            return Err(unsupported(name, "only groups = 1 or depthwise"));
                        }
                        let window = Window {
                            kernel: square(name, "kernel", [w[2], w[3]])?,
                            stride: square(name, "stride", spec.stride)?,
                            padding: square(name, "padding", spec.padding)?,
                        };
                        if depthwise {
                            LayerKind::Depthwise(window)
                        } else {
                            LayerKind::Conv(window)
                        }
                    }
                    _ => LayerKind::Linear,
                };
                pending = Some(LayerPlan {
                    name: name.to_string(),
                    kind,
                    weight: weight_name,
                    weight_qparams,
                    bias: bias.map(name_of),
                    batch_norm: None,
                    clamp: Clamp::None,
                    output_qparams: None,
                });
            }
            Op::BatchNorm {
                gamma,
                beta,
                running_mean,
                running_var,
                eps,
                ..
            } => match &mut pending {
                Some(p) if p.batch_norm.is_none() && p.clamp == Clamp::None => {
                    p.batch_norm = Some(BatchNorm {
                        gamma: name_of(*gamma),
                        beta: name_of(*beta),
                        mean: name_of(*running_mean),
                        var: name_of(*running_var),
                        eps: *eps,
                    });
                }
                _ => return Err(unsupported(name, "a batch norm that follows no layer")),
            },
            Op::Relu { .. } | Op::Relu6 { .. } => match &mut pending {
                Some(p) if p.clamp == Clamp::None => {
                    p.clamp = if matches!(node.op, Op::Relu { .. }) {
                        Clamp::Relu
                    } else {
                        Clamp::Relu6
                    };
                }
                _ => return Err(unsupported(name, "an activation that follows no layer")),
            },
            Op::MaxPool { pool, .. } => {
                finish(&mut pending, name)?;
                steps.push(Step::MaxPool(Window {
                    kernel: square(name, "window", pool.kernel)?,
                    stride: square(name, "stride", pool.stride)?,
                    padding: square(name, "padding", pool.padding)?,
                }));
            }
            Op::GlobalAvgPool { .. } => {
                finish(&mut pending, name)?;
                steps.push(Step::GlobalAvgPool);
            }
            Op::Reshape { .. } => {
                finish(&mut pending, name)?;
                steps.push(Step::Flatten);
            }
            other => {
                let op = format!("{other:?}");
                let kind = op.split([' ', '{', '(']).next().unwrap_or("this op");
                return Err(unsupported(name, format!("{kind} has no int8 kernel")));
            }
        }
    }
    match pending {
        Some(layer)
            if matches!(layer.kind, LayerKind::Linear)
                && graph
                    .output
                    .is_some_and(|o| graph.nodes[o.0].name == layer.name) =>
        {
            if layer.clamp != Clamp::None {
                return Err(unsupported(
                    &layer.name,
                    "the output layer has an activation",
                ));
            }
            steps.push(Step::Layer(Box::new(layer)));
        }
        _ => {
            return Err(unsupported(
                "the model",
                "its output is not a Linear layer's (the logits)",
            ));
        }
    }
    if !matches!(steps.first(), Some(Step::Quantize { .. })) {
        return Err(unsupported("x", "the input is not quantised first"));
    }
    Ok(steps)
}

/// Whether `graph` (a quantisation-aware model) has an int8 form; the error names the node in
/// the way.
pub fn check(graph: &Graph) -> Result<()> {
    plan(graph).map(|_| ())
}

fn get<'a>(tensors: &'a TensorMap, what: &str, name: &str) -> Result<&'a HostTensor> {
    tensors
        .get(name)
        .ok_or_else(|| input_error(what, format!("has no tensor '{name}'")))
}

fn f32s<'a>(tensors: &'a TensorMap, what: &str, name: &str, len: usize) -> Result<&'a [f32]> {
    let t = get(tensors, what, name)?;
    match t.as_f32() {
        Some(v) if v.len() == len && v.iter().all(|x| x.is_finite()) => Ok(v),
        _ => Err(input_error(
            what,
            format!("tensor '{name}' must be {len} finite f32 values"),
        )),
    }
}

fn i32s<'a>(tensors: &'a TensorMap, what: &str, name: &str, len: usize) -> Result<&'a [i32]> {
    let t = get(tensors, what, name)?;
    match t.as_i32() {
        Some(v) if v.len() == len => Ok(v),
        _ => Err(input_error(
            what,
            format!("tensor '{name}' must be {len} i32 values"),
        )),
    }
}

/// Refuses a quantiser whose observer has seen nothing (its range still the initial
/// `[f32::MAX, −f32::MAX]`): its scales are placeholders.
fn observed(host: &TensorMap, what: &str, qparams: &str, channels: usize) -> Result<()> {
    let range = qparams.replace(".qparams", ".range");
    let r = f32s(host, what, &range, 2 * channels)?;
    if r.chunks(2).any(|p| p[0] > p[1]) {
        return Err(input_error(
            what,
            format!(
                "{range}: this quantiser has observed no data; train (or calibrate) the quantisation-aware model before exporting it"
            ),
        ));
    }
    Ok(())
}

/// A fake quantiser's saved grid as a uint8 [`Grid`], checked.
fn saved_grid(host: &TensorMap, what: &str, qparams: &str) -> Result<Grid> {
    observed(host, what, qparams, 1)?;
    let v = f32s(host, what, qparams, 2)?;
    Grid::checked(f64::from(v[0]), f64::from(v[1]))
        .map_err(|m| input_error(what, format!("{qparams}: {m}")))
}

fn grid_tensors(out: &mut TensorMap, prefix: &str, grid: Grid) {
    out.insert(
        format!("{prefix}.scale"),
        HostTensor::f32(&[1], vec![grid.scale]),
    );
    out.insert(
        format!("{prefix}.zero_point"),
        HostTensor::i32(&[1], vec![grid.zero_point]),
    );
}

fn read_grid(tensors: &TensorMap, what: &str, prefix: &str) -> Result<Grid> {
    let scale = f32s(tensors, what, &format!("{prefix}.scale"), 1)?[0];
    let zero_point = i32s(tensors, what, &format!("{prefix}.zero_point"), 1)?[0];
    Grid::checked(f64::from(scale), f64::from(zero_point))
        .map_err(|m| input_error(what, format!("{prefix}: {m}")))
}

/// Exports a quantisation-aware model's weights (`host`, with its observers' saved scales) as
/// int8 tensors in the layout of the module's documentation.
pub fn export(graph: &Graph, host: &TensorMap) -> Result<TensorMap> {
    let what = "int8 export";
    let mut out = TensorMap::new();
    for step in plan(graph)? {
        let layer = match step {
            Step::Quantize { qparams } => {
                grid_tensors(&mut out, "quant", saved_grid(host, what, &qparams)?);
                continue;
            }
            Step::Layer(layer) => layer,
            _ => continue,
        };
        let w_node = graph.find(&layer.weight).expect("planned from the graph");
        let shape = graph.shape(w_node).to_vec();
        let (o, per) = (shape[0], shape[1..].iter().product::<usize>());
        let w = f32s(host, what, &layer.weight, o * per)?;
        observed(host, what, &layer.weight_qparams, o)?;
        let qp = f32s(host, what, &layer.weight_qparams, 2 * o)?;
        let mut q = Vec::with_capacity(w.len());
        let mut scale = Vec::with_capacity(o);
        for c in 0..o {
            let s = qp[2 * c];
            if s.is_nan() || s <= 0.0 || qp[2 * c + 1] != 0.0 {
                return Err(input_error(
                    what,
                    format!(
                        "{}: channel {c} has scale {s} and zero point {}: not an observed symmetric weight grid",
                        layer.weight_qparams,
                        qp[2 * c + 1]
                    ),
                ));
            }
            let inv = 1.0 / s;
            q.extend(
                w[c * per..(c + 1) * per]
                    .iter()
                    .map(|&v| (v * inv).round_ties_even().clamp(-128.0, 127.0) as i8),
            );
            scale.push(s);
        }
        let mut bias = match &layer.bias {
            Some(b) => f32s(host, what, b, o)?.to_vec(),
            None => vec![0.0; o],
        };
        if let Some(bn) = &layer.batch_norm {
            let (gamma, beta) = (
                f32s(host, what, &bn.gamma, o)?,
                f32s(host, what, &bn.beta, o)?,
            );
            let (mean, var) = (
                f32s(host, what, &bn.mean, o)?,
                f32s(host, what, &bn.var, o)?,
            );
            for c in 0..o {
                let a = gamma[c] / (var[c] + bn.eps).sqrt();
                scale[c] *= a;
                bias[c] = a * (bias[c] - mean[c]) + beta[c];
            }
        }
        let l = &layer.name;
        out.insert(format!("{l}.weight"), HostTensor::i8(&shape, q));
        out.insert(format!("{l}.weight_scale"), HostTensor::f32(&[o], scale));
        out.insert(
            format!("{l}.weight_zero_point"),
            HostTensor::i32(&[o], vec![0; o]),
        );
        out.insert(format!("{l}.bias"), HostTensor::f32(&[o], bias));
        if let Some(qparams) = &layer.output_qparams {
            grid_tensors(
                &mut out,
                &format!("{l}.output"),
                saved_grid(host, what, qparams)?,
            );
        }
    }
    Ok(out)
}

/// An int8 model compiled for one batch size: its launches bound once, replayed per batch in one
/// submission.
pub struct Int8Program {
    plan: BoundPlan,
    input: Tensor,
    logits: Tensor,
    batch: usize,
    classes: usize,
    weight_bytes: usize,
}

impl Int8Program {
    /// Compiles the int8 model of `graph` (a quantisation-aware model, whose input `x` fixes
    /// the batch size) from an export's tensors (`what` names them in errors), with the given
    /// dot-product path.
    pub fn compile(
        gpu: &Gpu,
        graph: &Graph,
        tensors: &TensorMap,
        what: &str,
        path: DotPath,
    ) -> Result<Int8Program> {
        let steps = plan(graph)?;
        let x = graph
            .find("x")
            .ok_or_else(|| input_error(what, "the model has no input x"))?;
        let [b, c, h, w]: [usize; 4] = graph
            .shape(x)
            .try_into()
            .map_err(|_| input_error(what, "the model's input is not (B, C, H, W)"))?;
        let input = gpu.zeros(&[b, c, h, w], DType::F32)?;
        let mut dispatches = Vec::new();
        let mut current: Option<(Tensor, Map, Grid)> = None;
        let mut logits = None;
        let mut weight_bytes = 0;
        let first_is_conv = steps
            .iter()
            .find_map(|s| match s {
                Step::Layer(l) => Some(!matches!(l.kind, LayerKind::Linear)),
                _ => None,
            })
            .unwrap_or(false);
        for step in &steps {
            match step {
                Step::Quantize { .. } => {
                    let grid = read_grid(tensors, what, "quant")?;
                    let map = if first_is_conv {
                        Map::image(b, c, h, w)
                    } else {
                        Map {
                            batch: b,
                            channels: c,
                            height: h,
                            width: w,
                            pixel_channels: c,
                        }
                    };
                    let (d, q) = k::quantize(gpu, &input, map, grid)?;
                    dispatches.push(d);
                    current = Some((q, map, grid));
                }
                Step::Flatten => {}
                Step::MaxPool(window) => {
                    let (x, map, grid) = current.take().expect("quantised first");
                    let (d, y, out) = k::max_pool(gpu, &x, map, *window)?;
                    dispatches.push(d);
                    current = Some((y, out, grid));
                }
                Step::GlobalAvgPool => {
                    let (x, map, grid) = current.take().expect("quantised first");
                    let (d, y, out) = k::global_avg_pool(gpu, &x, map)?;
                    dispatches.push(d);
                    current = Some((y, out, grid));
                }
                Step::Layer(layer) => {
                    let (x, map, grid) = current.take().expect("quantised first");
                    let (weights, requant, out_grid) =
                        layer_weights(gpu, tensors, what, layer, map, grid)?;
                    weight_bytes += weights.1;
                    match layer.kind {
                        LayerKind::Linear => {
                            let (d, y) = k::linear(gpu, path, &x, map, &weights.0, requant)?;
                            dispatches.push(d);
                            match out_grid {
                                Some(g) => {
                                    current = Some((y, Map::vector(b, weights.0.out_channels), g))
                                }
                                None => logits = Some(y),
                            }
                        }
                        LayerKind::Conv(_) | LayerKind::Depthwise(_) => {
                            let (d, y, out) = k::conv2d(
                                gpu,
                                path,
                                (&x, map),
                                grid.zero_point,
                                &weights.0,
                                layer.kind,
                                requant,
                            )?;
                            dispatches.push(d);
                            current = Some((
                                y,
                                out,
                                out_grid.expect("a convolution's output is quantised"),
                            ));
                        }
                    }
                }
            }
        }
        let logits = logits.expect("the plan ends with the output layer");
        let classes = logits.shape()[1];
        Ok(Int8Program {
            plan: gpu.bind_plan(&dispatches)?,
            input,
            logits,
            batch: b,
            classes,
            weight_bytes,
        })
    }

    /// The bound launches, for timing them alone.
    pub fn into_bound(self) -> BoundPlan {
        self.plan
    }

    /// The batch size it was compiled for.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Classes per row of the logits.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Bytes of the packed weights and epilogues on the GPU.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// Logits for one batch of inputs (f32, NCHW, the compiled batch size): one submission.
    pub fn run(&self, gpu: &Gpu, x: &[f32]) -> Result<Vec<f32>> {
        gpu.write(&self.input, x)?;
        self.plan.submit(gpu, "int8 inference")?;
        gpu.read(&self.logits)
    }
}

/// A layer's packed weights and epilogue on the GPU (and their bytes), its output's requantisation
/// and its output grid (`None` for the logits).
fn layer_weights(
    gpu: &Gpu,
    tensors: &TensorMap,
    what: &str,
    layer: &LayerPlan,
    input: Map,
    in_grid: Grid,
) -> Result<((LayerWeights, usize), Requant, Option<Grid>)> {
    let l = &layer.name;
    let w_name = format!("{l}.weight");
    let w_tensor = get(tensors, what, &w_name)?;
    let Some(w) = w_tensor.as_i8() else {
        return Err(input_error(what, format!("tensor '{w_name}' must be i8")));
    };
    let o = w_tensor.shape.first().copied().unwrap_or(0);
    let scale = f32s(tensors, what, &format!("{l}.weight_scale"), o)?;
    let bias = f32s(tensors, what, &format!("{l}.bias"), o)?;
    if i32s(tensors, what, &format!("{l}.weight_zero_point"), o)?
        .iter()
        .any(|&z| z != 0)
    {
        return Err(input_error(
            what,
            format!("{l}.weight_zero_point: int8 weights are symmetric (zero points 0)"),
        ));
    }
    let kind = layer.kind;
    let epilogue = Epilogue {
        multiplier: scale.iter().map(|&s| s * in_grid.scale).collect(),
        bias: bias.to_vec(),
    };
    let built = LayerWeights::build(gpu, kind, w, input, &epilogue, in_grid.zero_point)
        .map_err(|e| input_error(what, format!("tensor '{w_name}' {:?}: {e}", w_tensor.shape)))?;
    let (out_grid, requant) = match &layer.output_qparams {
        Some(_) => {
            let g = read_grid(tensors, what, &format!("{l}.output"))?;
            (
                Some(g),
                g.requant(layer.clamp == Clamp::Relu, layer.clamp == Clamp::Relu6),
            )
        }
        None => (None, Requant::Float),
    };
    Ok((built, requant, out_grid))
}
