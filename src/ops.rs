//! The op registry: every kernel exposed by name with named inputs, attributes and outputs. This is
//! the contract of `wgdistill op` (tensors in and out as safetensors), of the golden tests, and of
//! anyone checking wgdistill against PyTorch.

use std::collections::BTreeMap;

use crate::gpu::error::input_error;
use crate::gpu::{Gpu, Result, Tensor};
use crate::io::{HostData, HostTensor, TensorMap};
use crate::kernels::{elementwise, losses};

/// What an op takes and gives.
#[derive(Clone, Copy, Debug)]
pub struct OpInfo {
    /// Name, as given to `wgdistill op`.
    pub name: &'static str,
    /// One line on what it computes.
    pub summary: &'static str,
    /// Input tensor names (`labels` is integer, the rest f32).
    pub inputs: &'static [&'static str],
    /// Attributes and their defaults.
    pub attrs: &'static [(&'static str, f64)],
    /// Output tensor names.
    pub outputs: &'static [&'static str],
}

const LOSS_OUT: &[&str] = &["loss", "grad_student"];
const ST: &[&str] = &["student", "teacher"];

/// Every op.
pub const OPS: &[OpInfo] = &[
    OpInfo {
        name: "add",
        summary: "out = a + b",
        inputs: &["a", "b"],
        attrs: &[],
        outputs: &["out"],
    },
    OpInfo {
        name: "scale",
        summary: "out = alpha · x",
        inputs: &["x"],
        attrs: &[("alpha", 1.0)],
        outputs: &["out"],
    },
    OpInfo {
        name: "ce",
        summary: "cross-entropy from logits, mean over the batch",
        inputs: &["student", "labels"],
        attrs: &[],
        outputs: LOSS_OUT,
    },
    OpInfo {
        name: "kd",
        summary: "Hinton KD: T²/B Σ KL(softmax(t/T) ‖ softmax(s/T))",
        inputs: ST,
        attrs: &[("temperature", 4.0)],
        outputs: LOSS_OUT,
    },
    OpInfo {
        name: "dkd",
        summary: "decoupled KD: alpha·TCKD + beta·NCKD",
        inputs: &["student", "teacher", "labels"],
        attrs: &[("alpha", 1.0), ("beta", 8.0), ("temperature", 4.0)],
        outputs: LOSS_OUT,
    },
    OpInfo {
        name: "hint",
        summary: "FitNet hint: mean((s − t)²)",
        inputs: ST,
        attrs: &[],
        outputs: LOSS_OUT,
    },
    OpInfo {
        name: "at",
        summary: "attention transfer between (B, C, H, W) maps",
        inputs: ST,
        attrs: &[("p", 2.0)],
        outputs: LOSS_OUT,
    },
    OpInfo {
        name: "sp",
        summary: "similarity-preserving KD",
        inputs: ST,
        attrs: &[],
        outputs: LOSS_OUT,
    },
    OpInfo {
        name: "rkd_distance",
        summary: "relational KD, distance term",
        inputs: ST,
        attrs: &[],
        outputs: LOSS_OUT,
    },
    OpInfo {
        name: "rkd_angle",
        summary: "relational KD, angle term",
        inputs: ST,
        attrs: &[],
        outputs: LOSS_OUT,
    },
    OpInfo {
        name: "pkt",
        summary: "probabilistic knowledge transfer",
        inputs: ST,
        attrs: &[],
        outputs: LOSS_OUT,
    },
];

/// The op called `name`.
pub fn find(name: &str) -> Result<&'static OpInfo> {
    OPS.iter().find(|o| o.name == name).ok_or_else(|| {
        let names: Vec<&str> = OPS.iter().map(|o| o.name).collect();
        input_error(
            format!("op '{name}'"),
            format!("unknown op; known ops: {}", names.join(", ")),
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
    for name in inputs.keys() {
        if !info.inputs.contains(&name.as_str()) {
            return Err(input_error(
                format!("{op}: input '{name}'"),
                format!("not an input of {op}; expected {}", info.inputs.join(", ")),
            ));
        }
    }
    for &name in info.inputs {
        let t = inputs.get(name).ok_or_else(|| {
            input_error(
                format!("{op}: input '{name}'"),
                format!("missing; {op} takes {}", info.inputs.join(", ")),
            )
        })?;
        let want_int = name == "labels";
        if want_int != matches!(t.data, HostData::I32(_)) {
            return Err(input_error(
                format!("{op}: input '{name}'"),
                format!(
                    "expected {}, got {}",
                    if want_int {
                        "an integer tensor (i32 or i64)"
                    } else {
                        "f32"
                    },
                    t.dtype_name()
                ),
            ));
        }
    }
    let mut out: BTreeMap<String, f64> = info
        .attrs
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    for (k, v) in attrs {
        if !out.contains_key(k) {
            let known: Vec<&str> = info.attrs.iter().map(|(k, _)| *k).collect();
            return Err(input_error(
                format!("{op}: attr '{k}'"),
                if known.is_empty() {
                    format!("{op} takes no attributes")
                } else {
                    format!("expected one of {}", known.join(", "))
                },
            ));
        }
        if !v.is_finite() {
            return Err(input_error(
                format!("{op}: attr '{k}'"),
                format!("must be a finite number, got {v}"),
            ));
        }
        out.insert(k.clone(), *v);
    }
    if let (Some(labels), Some(student)) = (inputs.get("labels"), inputs.get("student")) {
        let classes = student.shape.get(1).copied().unwrap_or(0);
        if let Some((i, y)) = labels
            .as_i32()
            .unwrap_or(&[])
            .iter()
            .enumerate()
            .find(|(_, y)| **y < 0 || **y as usize >= classes)
        {
            return Err(input_error(
                format!("{op}: input 'labels'"),
                format!("labels[{i}] = {y} is out of range for {classes} classes (0..{classes})"),
            ));
        }
    }
    Ok(out)
}

fn upload(gpu: &Gpu, t: &HostTensor) -> Result<Tensor> {
    match &t.data {
        HostData::F32(v) => gpu.upload(&t.shape, v),
        HostData::I32(v) => gpu.upload(&t.shape, v),
    }
}

fn download(gpu: &Gpu, t: &Tensor) -> Result<HostTensor> {
    Ok(HostTensor::f32(t.shape(), gpu.read::<f32>(t)?))
}

/// Runs op `name` on host tensors and returns its outputs by name.
pub fn run(
    gpu: &Gpu,
    name: &str,
    inputs: &TensorMap,
    attrs: &BTreeMap<String, f64>,
) -> Result<TensorMap> {
    let info = find(name)?;
    let attrs = validate(info, inputs, attrs)?;
    let mut dev = BTreeMap::new();
    for (k, v) in inputs {
        // Wrong shapes are caught by the launchers, which name the op and both shapes.
        if v.shape.iter().product::<usize>()
            != match &v.data {
                HostData::F32(d) => d.len(),
                HostData::I32(d) => d.len(),
            }
        {
            return Err(input_error(
                format!("{name}: input '{k}'"),
                "element count does not match its shape",
            ));
        }
        dev.insert(k.as_str(), upload(gpu, v)?);
    }
    let attr = |k: &str| attrs[k] as f32;
    let mut out = TensorMap::new();
    let plan = match name {
        "add" => {
            out.insert(
                "out".into(),
                download(gpu, &elementwise::add(gpu, &dev["a"], &dev["b"])?)?,
            );
            return Ok(out);
        }
        "scale" => {
            out.insert(
                "out".into(),
                download(gpu, &elementwise::scale(gpu, &dev["x"], attr("alpha"))?)?,
            );
            return Ok(out);
        }
        "ce" => losses::ce(gpu, &dev["student"], &dev["labels"])?,
        "kd" => losses::kd(gpu, &dev["student"], &dev["teacher"], attr("temperature"))?,
        "dkd" => losses::dkd(
            gpu,
            &dev["student"],
            &dev["teacher"],
            &dev["labels"],
            attr("alpha"),
            attr("beta"),
            attr("temperature"),
        )?,
        "hint" => losses::hint(gpu, &dev["student"], &dev["teacher"])?,
        "at" => losses::at(gpu, &dev["student"], &dev["teacher"], attr("p"))?,
        "sp" => losses::sp(gpu, &dev["student"], &dev["teacher"])?,
        "rkd_distance" => losses::rkd_distance(gpu, &dev["student"], &dev["teacher"])?,
        "rkd_angle" => losses::rkd_angle(gpu, &dev["student"], &dev["teacher"])?,
        "pkt" => losses::pkt(gpu, &dev["student"], &dev["teacher"])?,
        other => {
            return Err(input_error(
                format!("op '{other}'"),
                "registered but has no runner",
            ));
        }
    };
    let (loss, grad) = plan.run(gpu)?;
    out.insert("loss".into(), download(gpu, &loss)?);
    out.insert("grad_student".into(), download(gpu, &grad)?);
    Ok(out)
}
