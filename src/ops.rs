//! The op registry: every kernel exposed by name with named inputs, attributes and outputs. This is
//! the contract of `wgdistill op` (tensors in and out as safetensors), of the golden tests, and of
//! anyone checking wgdistill against PyTorch.

use std::collections::BTreeMap;

use crate::Result;
use crate::error::input_error;
use crate::gpu::{DType, Dispatch};
use crate::gpu::{Gpu, Replay, Tensor, replay};
use crate::io::{HostData, HostTensor, TensorMap};
use crate::kernels::activation::{self, Kind};
use crate::kernels::batchnorm::{self, BatchNormState};
use crate::kernels::conv::{self, Conv2d};
use crate::kernels::int8;
use crate::kernels::losses::{self, Loss, LossDef};
use crate::kernels::matmul::{Activation, MatmulOptions, matmul};
use crate::kernels::pool::{self, Pool2d};
use crate::kernels::quantize::Quantizer;
use crate::kernels::reduce::{AxisOp, reduce_axis};
use crate::kernels::{AttrDef, Range, augment, dropout, elementwise, gate, optimizer, softmax};
use crate::reference::quantize::Grid;

/// What an op takes and gives.
#[derive(Clone, Debug)]
pub struct OpInfo {
    /// Name, as given to `wgdistill op`.
    pub name: &'static str,
    /// One line on what it computes.
    pub summary: &'static str,
    /// Required input tensor names (`labels` and `argmax` are integer, the rest f32).
    pub inputs: Vec<&'static str>,
    /// Optional input tensor names.
    pub optional: Vec<&'static str>,
    /// Attributes with their defaults and ranges.
    pub attrs: Vec<AttrDef>,
    /// Output tensor names.
    pub outputs: Vec<String>,
    /// The registry entry, for a loss.
    pub loss: Option<&'static LossDef>,
}

/// A kernel op's entry in the table below (losses come from the loss registry).
struct KernelOp {
    name: &'static str,
    summary: &'static str,
    inputs: &'static [&'static str],
    optional: &'static [&'static str],
    attrs: &'static [(&'static str, f64)],
    outputs: &'static [&'static str],
}

const NONE: &[&str] = &[];
const POOL_ATTRS: &[(&str, f64)] = &[("kernel", 2.0), ("stride", 2.0), ("padding", 0.0)];
const AXIS: &[(&str, f64)] = &[("axis", 0.0)];
const INT8_LAYER_ATTRS: &[(&str, f64)] = &[
    ("input_scale", 1.0),
    ("input_zero_point", 0.0),
    ("output_scale", 0.0),
    ("output_zero_point", 0.0),
    ("activation", 0.0),
];

macro_rules! op {
    ($name:literal, $summary:literal, $inputs:expr, $optional:expr, $attrs:expr, $outputs:expr) => {
        KernelOp {
            name: $name,
            summary: $summary,
            inputs: $inputs,
            optional: $optional,
            attrs: $attrs,
            outputs: $outputs,
        }
    };
}

/// Every kernel op.
const KERNEL_OPS: &[KernelOp] = &[
    op!("add", "out = a + b", &["a", "b"], NONE, &[], &["out"]),
    op!(
        "scale",
        "out = alpha · x",
        &["x"],
        NONE,
        &[("alpha", 1.0)],
        &["out"]
    ),
    op!(
        "matmul",
        "out = op(a)·op(b) (+ bias) then activation (0 none, 1 ReLU, 2 GELU)",
        &["a", "b"],
        &["bias"],
        &[("trans_a", 0.0), ("trans_b", 0.0), ("activation", 0.0)],
        &["out"]
    ),
    op!("relu", "out = max(x, 0)", &["x"], NONE, &[], &["out"]),
    op!(
        "relu6",
        "out = min(max(x, 0), 6)",
        &["x"],
        NONE,
        &[],
        &["out"]
    ),
    op!(
        "leaky_relu",
        "out = x where x > 0, negative_slope·x elsewhere",
        &["x"],
        NONE,
        &[("negative_slope", 0.01)],
        &["out"]
    ),
    op!("gelu", "out = x·Φ(x) (exact)", &["x"], NONE, &[], &["out"]),
    op!("tanh", "out = tanh(x)", &["x"], NONE, &[], &["out"]),
    op!(
        "relu_backward",
        "grad_x = grad_out·[x > 0]",
        &["x", "grad_out"],
        NONE,
        &[],
        &["grad_x"]
    ),
    op!(
        "quant_observe",
        "range ← moving average of x's min/max per channel along axis (−1: the whole tensor; range optional: nothing seen), qparams = [scale, zero_point] per channel on [quant_min, quant_max], symmetric or affine",
        &["x"],
        &["range"],
        &[
            ("axis", -1.0),
            ("quant_min", -128.0),
            ("quant_max", 127.0),
            ("symmetric", 1.0),
            ("averaging_constant", 0.01)
        ],
        &["range", "qparams"]
    ),
    op!(
        "fake_quant",
        "out = (clamp(round(x / scale) + zero_point, quant_min, quant_max) − zero_point)·scale, qparams = [scale, zero_point] per channel along axis",
        &["x", "qparams"],
        NONE,
        &[("axis", -1.0), ("quant_min", -128.0), ("quant_max", 127.0)],
        &["out"]
    ),
    op!(
        "fake_quant_backward",
        "grad_x = grad_out where round(x / scale) + zero_point is in [quant_min, quant_max], else 0 (straight-through)",
        &["x", "qparams", "grad_out"],
        NONE,
        &[("axis", -1.0), ("quant_min", -128.0), ("quant_max", 127.0)],
        &["grad_x"]
    ),
    op!(
        "relu6_backward",
        "grad_x = grad_out·[0 < x < 6]",
        &["x", "grad_out"],
        NONE,
        &[],
        &["grad_x"]
    ),
    op!(
        "leaky_relu_backward",
        "grad_x = grad_out where x > 0, negative_slope·grad_out elsewhere",
        &["x", "grad_out"],
        NONE,
        &[("negative_slope", 0.01)],
        &["grad_x"]
    ),
    op!(
        "gelu_backward",
        "grad_x = grad_out·GELU'(x)",
        &["x", "grad_out"],
        NONE,
        &[],
        &["grad_x"]
    ),
    op!(
        "tanh_backward",
        "grad_x = grad_out·(1 − tanh²(x))",
        &["x", "grad_out"],
        NONE,
        &[],
        &["grad_x"]
    ),
    op!(
        "softmax",
        "out = softmax(x / T) over the last axis",
        &["x"],
        NONE,
        &[("temperature", 1.0)],
        &["out"]
    ),
    op!(
        "log_softmax",
        "out = log_softmax(x / T) over the last axis",
        &["x"],
        NONE,
        &[("temperature", 1.0)],
        &["out"]
    ),
    op!("sum", "sum over an axis", &["x"], NONE, AXIS, &["out"]),
    op!(
        "gated_ensemble",
        "ONE's ensemble: out = Σ_b softmax(gate)[:, b] ⊙ branches[b], gate (N, B), branches (B, N, C)",
        &["gate", "branches"],
        NONE,
        &[],
        &["out", "weights"]
    ),
    op!("mean", "mean over an axis", &["x"], NONE, AXIS, &["out"]),
    op!("max", "maximum over an axis", &["x"], NONE, AXIS, &["out"]),
    op!(
        "conv2d",
        "NCHW convolution, weight [Cout, Cin / groups, KH, KW]",
        &["x", "weight"],
        &["bias"],
        &[("stride", 1.0), ("padding", 0.0), ("groups", 1.0)],
        &["out"]
    ),
    op!(
        "conv2d_backward",
        "gradients of conv2d from grad_out",
        &["x", "weight", "grad_out"],
        NONE,
        &[
            ("stride", 1.0),
            ("padding", 0.0),
            ("groups", 1.0),
            ("bias", 1.0)
        ],
        &["grad_x", "grad_weight", "grad_bias"]
    ),
    op!(
        "max_pool2d",
        "max pooling (argmax for the backward pass)",
        &["x"],
        NONE,
        POOL_ATTRS,
        &["out", "argmax"]
    ),
    op!(
        "max_pool2d_backward",
        "max pooling's input gradient",
        &["x", "argmax", "grad_out"],
        NONE,
        POOL_ATTRS,
        &["grad_x"]
    ),
    op!(
        "avg_pool2d",
        "average pooling (padding counted)",
        &["x"],
        NONE,
        POOL_ATTRS,
        &["out"]
    ),
    op!(
        "avg_pool2d_backward",
        "average pooling's input gradient",
        &["x", "grad_out"],
        NONE,
        POOL_ATTRS,
        &["grad_x"]
    ),
    op!(
        "global_avg_pool",
        "(N, C, H, W) → (N, C) mean",
        &["x"],
        NONE,
        &[],
        &["out"]
    ),
    op!(
        "batch_norm",
        "training batch norm; also returns the updated running statistics",
        &["x", "weight", "bias", "running_mean", "running_var"],
        NONE,
        &[("eps", 1e-5), ("momentum", 0.1)],
        &["out", "running_mean", "running_var"]
    ),
    op!(
        "batch_norm_eval",
        "batch norm with running statistics",
        &["x", "weight", "bias", "running_mean", "running_var"],
        NONE,
        &[("eps", 1e-5)],
        &["out"]
    ),
    op!(
        "batch_norm_backward",
        "training batch norm's gradients from grad_out",
        &["x", "weight", "grad_out"],
        NONE,
        &[("eps", 1e-5)],
        &["grad_x", "grad_weight", "grad_bias"]
    ),
    op!(
        "roll_flip",
        "images shifted circularly by (shift_h, shift_w) then flipped left-right if flip (DeepInversion's jitter); inverse = 1 applies the backward map",
        &["x"],
        NONE,
        &[
            ("shift_h", 0.0),
            ("shift_w", 0.0),
            ("flip", 0.0),
            ("inverse", 0.0)
        ],
        &["out"]
    ),
    op!(
        "dropout",
        "inverted dropout with a counter-based RNG",
        &["x"],
        NONE,
        &[("p", 0.5), ("seed", 0.0)],
        &["out"]
    ),
    op!(
        "sgd_step",
        "one torch.optim.SGD step (step = 1 on the first)",
        &["param", "grad"],
        &["momentum_buffer"],
        &[
            ("lr", 0.01),
            ("momentum", 0.0),
            ("dampening", 0.0),
            ("weight_decay", 0.0),
            ("nesterov", 0.0),
            ("step", 1.0)
        ],
        &["param", "momentum_buffer"]
    ),
    op!(
        "adamw_step",
        "one torch.optim.AdamW step (step = 1 on the first)",
        &["param", "grad"],
        &["exp_avg", "exp_avg_sq"],
        &[
            ("lr", 1e-3),
            ("beta1", 0.9),
            ("beta2", 0.999),
            ("eps", 1e-8),
            ("weight_decay", 0.01),
            ("step", 1.0)
        ],
        &["param", "exp_avg", "exp_avg_sq"]
    ),
    op!(
        "int8_linear",
        "x quantised onto uint8 (input_scale, input_zero_point), weight int8 values per row scaled by weight_scale, i32 accumulation: out = input_scale·weight_scale·Σ (q_x − zp)·w + bias, as f32 (output_scale 0) or requantised onto (output_scale, output_zero_point) and returned dequantised; activation 0 none, 1 ReLU, 2 ReLU6",
        &["x", "weight", "weight_scale", "bias"],
        NONE,
        INT8_LAYER_ATTRS,
        &["out"]
    ),
    op!(
        "int8_conv2d",
        "int8_linear's arithmetic as a convolution (square kernel; groups 1, or depthwise: groups = channels = output channels), x [N, C, H, W], weight [O, C / groups, k, k]; the output is requantised and returned dequantised",
        &["x", "weight", "weight_scale", "bias"],
        NONE,
        &[
            ("input_scale", 1.0),
            ("input_zero_point", 0.0),
            ("output_scale", 1.0),
            ("output_zero_point", 0.0),
            ("activation", 0.0),
            ("stride", 1.0),
            ("padding", 0.0),
            ("groups", 1.0)
        ],
        &["out"]
    ),
    op!(
        "int8_max_pool",
        "x quantised onto uint8 (scale, zero_point), max-pooled on the grid, returned dequantised",
        &["x"],
        NONE,
        &[
            ("scale", 1.0),
            ("zero_point", 0.0),
            ("kernel", 2.0),
            ("stride", 2.0),
            ("padding", 0.0)
        ],
        &["out"]
    ),
    op!(
        "int8_global_avg_pool",
        "x quantised onto uint8 (scale, zero_point), each channel's mean rounded half to even onto the grid, returned dequantised [N, C, 1, 1]",
        &["x"],
        NONE,
        &[("scale", 1.0), ("zero_point", 0.0)],
        &["out"]
    ),
    op!(
        "clip_grad_norm",
        "grad scaled to global norm ≤ max_norm",
        &["grad"],
        NONE,
        &[("max_norm", 1.0)],
        &["grad", "total_norm_squared"]
    ),
];

/// Every op: the kernel ops, then every loss of the registry (inputs as its registry entry
/// names them, outputs `loss` and `grad_student`).
pub fn all() -> Vec<OpInfo> {
    let kernel_ops = KERNEL_OPS.iter().map(|k| OpInfo {
        name: k.name,
        summary: k.summary,
        inputs: k.inputs.to_vec(),
        optional: k.optional.to_vec(),
        attrs: k
            .attrs
            .iter()
            .map(|&(name, default)| AttrDef {
                name,
                default,
                range: Range::ANY,
                doc: "",
            })
            .collect(),
        outputs: k.outputs.iter().map(|o| o.to_string()).collect(),
        loss: None,
    });
    let loss_ops = losses::registry().map(|def| OpInfo {
        name: def.name,
        summary: def.summary,
        inputs: def.inputs.iter().map(|i| i.name).collect(),
        optional: Vec::new(),
        attrs: def.attrs.to_vec(),
        outputs: def.outputs(),
        loss: Some(def),
    });
    kernel_ops.chain(loss_ops).collect()
}

/// The op called `name`.
pub fn find(name: &str) -> Result<OpInfo> {
    let ops = all();
    let names: Vec<&str> = ops.iter().map(|o| o.name).collect();
    let known = names.join(", ");
    ops.into_iter().find(|o| o.name == name).ok_or_else(|| {
        input_error(
            format!("op '{name}'"),
            format!("unknown op; known ops: {known}"),
        )
    })
}

/// Checks an op call on the host, before any GPU work: every input present with the right dtype,
/// no unknown input or attribute, integer labels within range. Returns the attributes with
/// defaults filled in.
pub fn validate(
    info: &OpInfo,
    inputs: &TensorMap,
    attrs: &BTreeMap<String, f64>,
) -> Result<BTreeMap<String, f64>> {
    let op = info.name;
    let all: Vec<&str> = info.inputs.iter().chain(&info.optional).copied().collect();
    for name in inputs.keys() {
        if !all.contains(&name.as_str()) {
            return Err(input_error(
                format!("{op}: input '{name}'"),
                format!("not an input of {op}; expected {}", all.join(", ")),
            ));
        }
    }
    for &name in &info.inputs {
        if !inputs.contains_key(name) {
            return Err(input_error(
                format!("{op}: input '{name}'"),
                format!("missing; {op} takes {}", all.join(", ")),
            ));
        }
    }
    for (name, t) in inputs {
        let want_int = name == "labels" || name == "argmax";
        if want_int != matches!(t.data, HostData::I32(_)) {
            let expected = if want_int {
                "an integer tensor (i32 or i64)"
            } else {
                "f32"
            };
            return Err(input_error(
                format!("{op}: input '{name}'"),
                format!("expected {expected}, got {}", t.dtype_name()),
            ));
        }
        // A NaN or infinity would come back as a finite loss with NaN gradients, or worse.
        if let Some((i, v)) = t
            .as_f32()
            .and_then(|v| v.iter().enumerate().find(|(_, v)| !v.is_finite()))
        {
            return Err(input_error(
                format!("{op}: input '{name}'"),
                format!("element {i} is {v}; inputs must be finite"),
            ));
        }
    }
    let mut out: BTreeMap<String, f64> = info
        .attrs
        .iter()
        .map(|a| (a.name.to_string(), a.default))
        .collect();
    for (k, &v) in attrs {
        let Some(def) = info.attrs.iter().find(|a| a.name == k) else {
            let known: Vec<&str> = info.attrs.iter().map(|a| a.name).collect();
            return Err(input_error(
                format!("{op}: attr '{k}'"),
                if known.is_empty() {
                    format!("{op} takes no attributes")
                } else {
                    format!("expected one of {}", known.join(", "))
                },
            ));
        };
        if !def.range.contains(v) {
            return Err(input_error(
                format!("{op}: attr '{k}'"),
                format!("must be {}, got {v}", def.range.describe()),
            ));
        }
        out.insert(k.clone(), v);
    }
    if let (Some(labels), Some(student)) = (inputs.get("labels"), inputs.get("student")) {
        let classes = student.shape.get(1).copied().unwrap_or(0);
        if let Some((i, y)) = labels
            .as_i32()
            .unwrap_or(&[])
            .iter()
            .enumerate()
            .find(|(_, y)| **y >= 0 && **y as usize >= classes)
        {
            return Err(input_error(
                format!("{op}: input 'labels'"),
                format!(
                    "labels[{i}] = {y} is out of range for {classes} classes (0..{classes}, or \
                     negative for an unlabelled row)"
                ),
            ));
        }
    }
    Ok(out)
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

fn download(gpu: &Gpu, t: &Tensor) -> Result<HostTensor> {
    Ok(match t.dtype() {
        DType::I32 => HostTensor::i32(t.shape(), gpu.read::<i32>(t)?),
        _ => HostTensor::f32(t.shape(), gpu.read::<f32>(t)?),
    })
}

/// Attribute access with the checks the kernels' integer and flag attributes need.
struct Attrs<'a> {
    op: &'a str,
    values: &'a BTreeMap<String, f64>,
}

impl Attrs<'_> {
    fn f32(&self, k: &str) -> f32 {
        self.values[k] as f32
    }

    fn flag(&self, k: &str) -> bool {
        self.values[k] != 0.0
    }

    fn count(&self, k: &str, min: usize) -> Result<usize> {
        let v = self.values[k];
        if v.fract() != 0.0 || v < min as f64 || v > f64::from(u32::MAX) {
            return Err(input_error(
                format!("{}: attr '{k}'", self.op),
                format!("must be a whole number ≥ {min}, got {v}"),
            ));
        }
        Ok(v as usize)
    }
}

type Outputs = Vec<(&'static str, Tensor)>;

/// The launches of op `name` on device tensors, and its named outputs.
fn plan(
    gpu: &Gpu,
    name: &str,
    host: &TensorMap,
    dev: &BTreeMap<&str, Tensor>,
    a: &Attrs<'_>,
) -> Result<(Vec<Dispatch>, Outputs)> {
    let t = |k: &str| &dev[k];
    let one = |(d, out): (Dispatch, Tensor), key: &'static str| (vec![d], vec![(key, out)]);
    let pool = || -> Result<Pool2d> {
        let (k, s, p) = (
            a.count("kernel", 1)?,
            a.count("stride", 1)?,
            a.count("padding", 0)?,
        );
        Ok(Pool2d {
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
        })
    };
    let conv = || -> Result<Conv2d> {
        let (s, p) = (a.count("stride", 1)?, a.count("padding", 0)?);
        Ok(Conv2d {
            stride: [s, s],
            padding: [p, p],
            groups: a.count("groups", 1)?,
        })
    };
    Ok(match name {
        "add" => one(elementwise::add_plan(gpu, t("a"), t("b"))?, "out"),
        "scale" => one(elementwise::scale_plan(gpu, t("x"), a.f32("alpha"))?, "out"),
        "matmul" => {
            let activation = match a.count("activation", 0)? {
                0 => Activation::None,
                1 => Activation::Relu,
                2 => Activation::Gelu,
                other => {
                    return Err(input_error(
                        "matmul: attr 'activation'",
                        format!("expected 0, 1 or 2, got {other}"),
                    ));
                }
            };
            let options = MatmulOptions {
                trans_a: a.flag("trans_a"),
                trans_b: a.flag("trans_b"),
                activation,
                ..Default::default()
            };
            one(
                matmul(gpu, t("a"), t("b"), dev.get("bias"), options)?,
                "out",
            )
        }
        "relu" => one(activation::forward(gpu, Kind::Relu, t("x"))?, "out"),
        "relu6" => one(activation::forward(gpu, Kind::Relu6, t("x"))?, "out"),
        "leaky_relu" => one(
            activation::forward(gpu, Kind::LeakyRelu(a.f32("negative_slope")), t("x"))?,
            "out",
        ),
        "gelu" => one(activation::forward(gpu, Kind::Gelu, t("x"))?, "out"),
        "tanh" => one(activation::forward(gpu, Kind::Tanh, t("x"))?, "out"),
        "relu_backward" => one(
            activation::backward(gpu, Kind::Relu, t("x"), t("grad_out"))?,
            "grad_x",
        ),
        "relu6_backward" => one(
            activation::backward(gpu, Kind::Relu6, t("x"), t("grad_out"))?,
            "grad_x",
        ),
        "leaky_relu_backward" => one(
            activation::backward(
                gpu,
                Kind::LeakyRelu(a.f32("negative_slope")),
                t("x"),
                t("grad_out"),
            )?,
            "grad_x",
        ),
        "gelu_backward" => one(
            activation::backward(gpu, Kind::Gelu, t("x"), t("grad_out"))?,
            "grad_x",
        ),
        "tanh_backward" => one(
            activation::backward(gpu, Kind::Tanh, t("x"), t("grad_out"))?,
            "grad_x",
        ),
        "softmax" | "log_softmax" => one(
            softmax::forward(gpu, t("x"), a.f32("temperature"), name == "log_softmax")?,
            "out",
        ),
        "sum" | "mean" | "max" => {
            let op = match name {
                "sum" => AxisOp::Sum,
                "mean" => AxisOp::Mean,
                _ => AxisOp::Max,
            };
            one(reduce_axis(gpu, t("x"), a.count("axis", 0)?, op)?, "out")
        }
        "conv2d" => one(
            conv::forward(gpu, t("x"), t("weight"), dev.get("bias"), &conv()?)?,
            "out",
        ),
        "conv2d_backward" => {
            let (plan, g) = conv::backward(
                gpu,
                t("x"),
                t("weight"),
                t("grad_out"),
                a.flag("bias"),
                &conv()?,
            )?;
            let mut outs: Vec<(&str, Tensor)> = g.dx.map(|dx| ("grad_x", dx)).into_iter().collect();
            outs.extend(g.dw.map(|dw| ("grad_weight", dw)));
            outs.extend(g.dbias.map(|b| ("grad_bias", b)));
            (plan, outs)
        }
        "gated_ensemble" => {
            let branches = &host["branches"];
            let (&[b, n, c], Some(values)) = (branches.shape.as_slice(), branches.as_f32()) else {
                return Err(input_error(
                    "gated_ensemble: input 'branches'",
                    format!("must be f32 (B, N, C), got {:?}", branches.shape),
                ));
            };
            if b * n * c == 0 {
                return Err(input_error(
                    "gated_ensemble: input 'branches'",
                    format!("must not be empty, got {:?}", branches.shape),
                ));
            }
            let parts: Vec<Tensor> = values
                .chunks(n * c)
                .map(|p| gpu.upload(&[n, c], p))
                .collect::<Result<_>>()?;
            let refs: Vec<&Tensor> = parts.iter().collect();
            let (plan, weights, y) = gate::ensemble(gpu, t("gate"), &refs)?;
            (plan, vec![("out", y), ("weights", weights)])
        }
        "max_pool2d" => {
            let (d, y, arg) = pool::max_pool_forward(gpu, t("x"), &pool()?)?;
            (vec![d], vec![("out", y), ("argmax", arg)])
        }
        "max_pool2d_backward" => one(
            pool::max_pool_backward(gpu, t("x"), &pool()?, t("argmax"), t("grad_out"))?,
            "grad_x",
        ),
        "avg_pool2d" => one(pool::avg_pool_forward(gpu, t("x"), &pool()?)?, "out"),
        "avg_pool2d_backward" => one(
            pool::avg_pool_backward(gpu, t("x"), &pool()?, t("grad_out"))?,
            "grad_x",
        ),
        "global_avg_pool" => one(pool::global_avg_pool_forward(gpu, t("x"))?, "out"),
        "batch_norm" | "batch_norm_eval" | "batch_norm_backward" => {
            let c = t("x").shape().get(1).copied().unwrap_or(0);
            let zeros = gpu.zeros(&[c], DType::F32)?;
            let st = BatchNormState {
                gamma: t("weight"),
                beta: dev.get("bias").unwrap_or(&zeros),
                running_mean: dev.get("running_mean").unwrap_or(&zeros),
                running_var: dev.get("running_var").unwrap_or(&zeros),
                eps: a.f32("eps"),
                momentum: a.values.get("momentum").map_or(0.1, |&m| m as f32),
            };
            match name {
                "batch_norm" => {
                    let (plan, y, _) = batchnorm::forward_train(gpu, t("x"), &st)?;
                    (
                        plan,
                        vec![
                            ("out", y),
                            ("running_mean", t("running_mean").clone()),
                            ("running_var", t("running_var").clone()),
                        ],
                    )
                }
                "batch_norm_eval" => one(batchnorm::forward_eval(gpu, t("x"), &st)?, "out"),
                _ => {
                    let (mut plan, _, saved) = batchnorm::forward_train(gpu, t("x"), &st)?;
                    let (back, g) = batchnorm::backward(gpu, t("x"), t("grad_out"), &st, &saved)?;
                    plan.extend(back);
                    (
                        plan,
                        vec![
                            ("grad_x", g.dx),
                            ("grad_weight", g.dgamma),
                            ("grad_bias", g.dbeta),
                        ],
                    )
                }
            }
        }
        "roll_flip" => {
            let shift = |k: &str| -> Result<i64> {
                let v = a.values[k];
                if v.fract() != 0.0 || v.abs() > 1e6 {
                    return Err(input_error(
                        format!("{}: attr '{k}'", a.op),
                        format!("must be a whole number of pixels (|v| ≤ 1e6), got {v}"),
                    ));
                }
                Ok(v as i64)
            };
            let map = augment::RollFlip {
                shift: (shift("shift_h")?, shift("shift_w")?),
                flip: a.flag("flip"),
            };
            one(
                augment::roll_flip(gpu, t("x"), map, a.flag("inverse"))?,
                "out",
            )
        }
        "quant_observe" | "fake_quant" | "fake_quant_backward" => {
            let axis = if a.values["axis"] == -1.0 {
                None
            } else {
                Some(a.count("axis", 0)?)
            };
            let whole = |k: &str| -> Result<i32> {
                let v = a.values[k];
                if v.fract() != 0.0 || v.abs() > 65535.0 {
                    return Err(input_error(
                        format!("{}: attr '{k}'", a.op),
                        format!("must be a whole number from −65535 to 65535, got {v}"),
                    ));
                }
                Ok(v as i32)
            };
            let grid = Grid {
                qmin: whole("quant_min")?,
                qmax: whole("quant_max")?,
                symmetric: a.values.get("symmetric").is_some_and(|&v| v != 0.0),
            };
            let averaging = a
                .values
                .get("averaging_constant")
                .map_or(1.0, |&v| v as f32);
            let q = Quantizer::new(t("x").shape(), axis, grid, averaging)?;
            match name {
                "quant_observe" => {
                    let range = match dev.get("range") {
                        Some(r) => r.clone(),
                        None => q.unobserved(gpu)?,
                    };
                    let qparams = gpu.empty(&[q.channels, 2], DType::F32)?;
                    let d = q.observe(gpu, t("x"), &range, &qparams)?;
                    (d, vec![("range", range), ("qparams", qparams)])
                }
                "fake_quant" => one(q.forward(gpu, t("x"), t("qparams"))?, "out"),
                _ => one(
                    q.backward(gpu, t("x"), t("qparams"), t("grad_out"))?,
                    "grad_x",
                ),
            }
        }
        "int8_linear" | "int8_conv2d" | "int8_max_pool" | "int8_global_avg_pool" => {
            int8_plan(gpu, name, host, dev, a)?
        }
        "dropout" => one(
            dropout::dropout(gpu, t("x"), a.f32("p"), a.count("seed", 0)? as u32)?,
            "out",
        ),
        "sgd_step" | "adamw_step" => {
            let step = gpu.upload(&[1], &[a.count("step", 1)? as u32])?;
            let state = |k: &str| -> Result<Tensor> {
                dev.get(k)
                    .cloned()
                    .map_or_else(|| gpu.zeros(t("param").shape(), DType::F32), Ok)
            };
            if name == "sgd_step" {
                let s = optimizer::Sgd {
                    lr: a.f32("lr"),
                    momentum: a.f32("momentum"),
                    dampening: a.f32("dampening"),
                    weight_decay: a.f32("weight_decay"),
                    nesterov: a.flag("nesterov"),
                };
                let buf = state("momentum_buffer")?;
                let d = optimizer::sgd(gpu, &s, t("param"), t("grad"), &buf, &step)?;
                (
                    vec![d],
                    vec![("param", t("param").clone()), ("momentum_buffer", buf)],
                )
            } else {
                let s = optimizer::AdamW {
                    lr: a.f32("lr"),
                    beta1: a.values["beta1"],
                    beta2: a.values["beta2"],
                    eps: a.f32("eps"),
                    weight_decay: a.f32("weight_decay"),
                };
                let (m, v) = (state("exp_avg")?, state("exp_avg_sq")?);
                let d = optimizer::adamw(gpu, &s, t("param"), t("grad"), &m, &v, &step)?;
                (
                    vec![d],
                    vec![
                        ("param", t("param").clone()),
                        ("exp_avg", m),
                        ("exp_avg_sq", v),
                    ],
                )
            }
        }
        "clip_grad_norm" => {
            let (plan, norm_sq) = optimizer::clip_grad_norm(gpu, t("grad"), a.f32("max_norm"))?;
            (
                plan,
                vec![("grad", t("grad").clone()), ("total_norm_squared", norm_sq)],
            )
        }
        other => {
            return Err(input_error(
                format!("op '{other}'"),
                "registered but has no runner",
            ));
        }
    })
}

/// A uint8 grid from two attributes.
fn attr_grid(a: &Attrs<'_>, scale: &str, zero_point: &str) -> Result<int8::Grid> {
    int8::Grid::checked(a.values[scale], a.values[zero_point])
        .map_err(|m| input_error(format!("{}: attrs '{scale}', '{zero_point}'", a.op), m))
}

/// The int8 ops: inputs quantised on the GPU, integer weights packed on the host, outputs
/// dequantised, so that every tensor in and out is f32.
fn int8_plan(
    gpu: &Gpu,
    name: &str,
    host: &TensorMap,
    dev: &BTreeMap<&str, Tensor>,
    a: &Attrs<'_>,
) -> Result<(Vec<Dispatch>, Outputs)> {
    use crate::reference::int8::{Epilogue, Requant, Window};
    let x = &dev["x"];
    let shape = x.shape().to_vec();
    let (scale_key, zp_key) = if name.ends_with("pool") {
        ("scale", "zero_point")
    } else {
        ("input_scale", "input_zero_point")
    };
    let in_grid = attr_grid(a, scale_key, zp_key)?;
    let image = |what: &str| -> Result<[usize; 4]> {
        shape.clone().try_into().map_err(|_| {
            input_error(
                format!("{name}: input 'x'"),
                format!("{what}, got {shape:?}"),
            )
        })
    };
    let window = |k: &str| -> Result<Window> {
        Ok(Window {
            kernel: a.count(k, 1)?,
            stride: a.count("stride", 1)?,
            padding: a.count("padding", 0)?,
        })
    };
    let mut plan = Vec::new();
    let (quantised, map) = if name == "int8_linear" {
        let [b, k]: [usize; 2] = shape.clone().try_into().map_err(|_| {
            input_error(
                format!("{name}: input 'x'"),
                format!("must be [batch, in], got {shape:?}"),
            )
        })?;
        let map = int8::Map::vector(b, k);
        let (d, q) = int8::quantize(gpu, &x.reshape(&map.shape())?, map, in_grid)?;
        plan.push(d);
        (q, map)
    } else {
        let [n, c, h, w] = image("must be [N, C, H, W]")?;
        let map = int8::Map::image(n, c, h, w);
        let (d, q) = int8::quantize(gpu, x, map, in_grid)?;
        plan.push(d);
        (q, map)
    };
    let (y, out_map, out_grid) = match name {
        "int8_max_pool" => {
            let (d, y, m) = int8::max_pool(gpu, &quantised, map, window("kernel")?)?;
            plan.push(d);
            (y, m, in_grid)
        }
        "int8_global_avg_pool" => {
            let (d, y, m) = int8::global_avg_pool(gpu, &quantised, map)?;
            plan.push(d);
            (y, m, in_grid)
        }
        _ => {
            let w = &host["weight"];
            let values = w.as_f32().unwrap_or(&[]);
            if let Some(i) = values
                .iter()
                .position(|v| v.fract() != 0.0 || !(-128.0..=127.0).contains(v))
            {
                return Err(input_error(
                    format!("{name}: input 'weight'"),
                    format!(
                        "element {i} is {}; int8 weights are whole numbers in [−128, 127]",
                        values[i]
                    ),
                ));
            }
            let q: Vec<i8> = values.iter().map(|&v| v as i8).collect();
            let o = w.shape.first().copied().unwrap_or(0);
            let scales = host["weight_scale"].as_f32().unwrap_or(&[]);
            let bias = host["bias"].as_f32().unwrap_or(&[]);
            if scales.len() != o || bias.len() != o || o == 0 {
                return Err(input_error(
                    format!("{name}: inputs 'weight_scale', 'bias'"),
                    format!("need one value per output channel ({o})"),
                ));
            }
            let epilogue = Epilogue {
                multiplier: scales.iter().map(|&s| s * in_grid.scale).collect(),
                bias: bias.to_vec(),
            };
            let activation = a.count("activation", 0)?;
            if activation > 2 {
                return Err(input_error(
                    format!("{name}: attr 'activation'"),
                    format!("must be 0 (none), 1 (ReLU) or 2 (ReLU6), got {activation}"),
                ));
            }
            let float_out = name == "int8_linear" && a.values["output_scale"] == 0.0;
            let out_grid = if float_out {
                in_grid
            } else {
                attr_grid(a, "output_scale", "output_zero_point")?
            };
            let requant = if float_out {
                Requant::Float
            } else {
                out_grid.requant(activation == 1, activation == 2)
            };
            let groups = if name == "int8_conv2d" {
                a.count("groups", 1)?
            } else {
                1
            };
            let k = w.shape.get(2).copied().unwrap_or(0);
            let kind = if name == "int8_linear" {
                int8::LayerKind::Linear
            } else {
                let depthwise = groups != 1;
                if (depthwise && (groups != map.channels || o != map.channels))
                    || w.shape.len() != 4
                    || w.shape[1] * groups != map.channels
                    || w.shape[3] != k
                {
                    return Err(input_error(
                        format!("{name}: input 'weight'"),
                        format!(
                            "must be [out, {} / groups, k, k] with groups 1 or {} (depthwise), got {:?} with groups {groups}",
                            map.channels, map.channels, w.shape
                        ),
                    ));
                }
                let window = Window {
                    kernel: k,
                    stride: a.count("stride", 1)?,
                    padding: a.count("padding", 0)?,
                };
                if depthwise {
                    int8::LayerKind::Depthwise(window)
                } else {
                    int8::LayerKind::Conv(window)
                }
            };
            let (layer, _) =
                int8::LayerWeights::build(gpu, kind, &q, map, &epilogue, in_grid.zero_point)
                    .map_err(|e| input_error(format!("{name}: input 'weight'"), e.to_string()))?;
            let path = int8::DotPath::for_gpu(gpu);
            if name == "int8_linear" {
                let (d, y) = int8::linear(gpu, path, &quantised, map, &layer, requant)?;
                plan.push(d);
                if float_out {
                    return Ok((plan, vec![("out", y)]));
                }
                (y, int8::Map::vector(map.batch, o), out_grid)
            } else {
                let (d, y, m) = int8::conv2d(
                    gpu,
                    path,
                    (&quantised, map),
                    in_grid.zero_point,
                    &layer,
                    kind,
                    requant,
                )?;
                plan.push(d);
                (y, m, out_grid)
            }
        }
    };
    let (d, real) = int8::dequantize(gpu, &y, out_map, out_grid)?;
    plan.push(d);
    let real = if name == "int8_linear" {
        real.reshape(&[out_map.batch, out_map.channels])?
    } else {
        real
    };
    Ok((plan, vec![("out", real)]))
}

/// Runs op `name` on host tensors and returns its outputs by name.
pub fn run(
    gpu: &Gpu,
    name: &str,
    inputs: &TensorMap,
    attrs: &BTreeMap<String, f64>,
) -> Result<TensorMap> {
    run_recorded(gpu, name, inputs, attrs, false).map(|(outputs, _)| outputs)
}

/// [`run`], and with `with_record` also the launches as a portable record (see
/// [`crate::gpu::replay`]) taken before they ran, its outputs named as the op's.
pub fn run_recorded(
    gpu: &Gpu,
    name: &str,
    inputs: &TensorMap,
    attrs: &BTreeMap<String, f64>,
    with_record: bool,
) -> Result<(TensorMap, Option<Replay>)> {
    let info = find(name)?;
    let attrs = validate(&info, inputs, attrs)?;
    let mut dev = BTreeMap::new();
    for (k, v) in inputs {
        let len = match &v.data {
            HostData::F32(d) => d.len(),
            HostData::I32(d) => d.len(),
            HostData::I8(d) => d.len(),
        };
        // Wrong shapes are caught by the launchers, which name the op and both shapes.
        if v.shape.iter().product::<usize>() != len {
            return Err(input_error(
                format!("{name}: input '{k}'"),
                "element count does not match its shape",
            ));
        }
        dev.insert(k.as_str(), upload(gpu, v)?);
    }
    let (dispatches, outputs) = match info.loss {
        Some(def) => {
            let loss = Loss::of(def).with_all(attrs.iter().map(|(k, v)| (k.as_str(), *v)))?;
            let tensors: Vec<&Tensor> = def.inputs.iter().map(|i| &dev[i.name]).collect();
            let plan = loss.launch(gpu, &tensors)?;
            let mut tensors = vec![plan.loss];
            tensors.extend(plan.grads);
            tensors.extend(plan.updated);
            let named: Vec<(String, Tensor)> = def.outputs().into_iter().zip(tensors).collect();
            (plan.dispatches, named)
        }
        None => {
            let values = Attrs {
                op: name,
                values: &attrs,
            };
            let (dispatches, outputs) = plan(gpu, name, inputs, &dev, &values)?;
            let named = outputs
                .into_iter()
                .map(|(k, t)| (k.to_string(), t))
                .collect();
            (dispatches, named)
        }
    };
    let record = if with_record {
        Some(replay::record(gpu, name, &dispatches, &outputs)?)
    } else {
        None
    };
    gpu.execute(&dispatches)?;
    let mut out = TensorMap::new();
    for (k, t) in outputs {
        out.insert(k, download(gpu, &t)?);
    }
    Ok((out, record))
}
