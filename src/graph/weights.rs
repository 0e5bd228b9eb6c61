//! A model's parameters and buffers on the GPU, by PyTorch name.

use std::collections::BTreeMap;

use crate::Result;
use crate::error::input_error;
use crate::gpu::{DType, Gpu, Tensor};
use crate::io::{HostTensor, TensorMap};
use crate::rng::sample;

use super::ir::{Graph, Init, Op};

/// Parameter and buffer tensors of one model. Cloning shares the tensors.
#[derive(Clone)]
pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
}

impl Weights {
    /// Initialises every parameter and buffer of `graph` (PyTorch's default schemes), from `seed`.
    pub fn init(gpu: &Gpu, graph: &Graph, seed: u64) -> Result<Weights> {
        let mut tensors = BTreeMap::new();
        for (i, (_, node)) in graph.params().enumerate() {
            let Op::Param { init, .. } = node.op else {
                continue;
            };
            // The size is checked against the adapter before any host memory is taken for it.
            let n = node
                .shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .unwrap_or(usize::MAX);
            gpu.check_storage_size(&node.name, (n as u64).saturating_mul(4))?;
            let values: Vec<f32> = match init {
                Init::Zeros => vec![0.0; n],
                Init::Ones => vec![1.0; n],
                Init::Pairs(a, b) => (0..n).map(|k| if k % 2 == 0 { a } else { b }).collect(),
                Init::Identity => {
                    let cols = node.shape.last().copied().unwrap_or(1).max(1);
                    (0..n)
                        .map(|k| if k / cols == k % cols { 1.0 } else { 0.0 })
                        .collect()
                }
                Init::Uniform(bound) => {
                    sample(n, seed.wrapping_mul(1_000_003).wrapping_add(i as u64))
                        .iter()
                        .map(|v| v * bound)
                        .collect()
                }
            };
            tensors.insert(node.name.clone(), gpu.upload(&node.shape, &values)?);
        }
        Ok(Weights { tensors })
    }

    /// Loads every parameter and buffer of `graph` from named host tensors (a checkpoint); `what`
    /// names the source in errors.
    pub fn load(gpu: &Gpu, graph: &Graph, what: &str, host: &TensorMap) -> Result<Weights> {
        let wanted = graph
            .params()
            .map(|(_, node)| (node.name.as_str(), node.shape.as_slice()));
        Self::load_named(gpu, wanted, what, host)
    }

    /// Uploads named host tensors as they are (a loss term's initial parameters), refusing
    /// non-finite values; `what` names the source in errors.
    pub fn upload(gpu: &Gpu, what: &str, host: &TensorMap) -> Result<Weights> {
        let wanted = host.iter().map(|(k, t)| (k.as_str(), t.shape.as_slice()));
        Self::load_named(gpu, wanted, what, host)
    }

    /// New tensors with these weights' names and shapes, loaded from named host tensors.
    pub fn reload(&self, gpu: &Gpu, what: &str, host: &TensorMap) -> Result<Weights> {
        let wanted = self.tensors.iter().map(|(k, t)| (k.as_str(), t.shape()));
        Self::load_named(gpu, wanted, what, host)
    }

    /// Loads the `wanted` tensors from `host`, refusing what would train or evaluate into a
    /// silent wrong answer: a missing tensor, another dtype or shape, a non-finite value, a
    /// negative running variance, or a tensor the model does not have (a checkpoint of another
    /// architecture). BatchNorm's `num_batches_tracked`, which PyTorch saves, is accepted.
    fn load_named<'a>(
        gpu: &Gpu,
        wanted: impl Iterator<Item = (&'a str, &'a [usize])>,
        what: &str,
        host: &TensorMap,
    ) -> Result<Weights> {
        let mut tensors = BTreeMap::new();
        for (name, shape) in wanted {
            let t = host
                .get(name)
                .ok_or_else(|| input_error(what, format!("tensor '{name}' is missing")))?;
            let values = t.as_f32().ok_or_else(|| {
                input_error(what, format!("tensor '{name}' must be floating point"))
            })?;
            if t.shape != shape {
                return Err(input_error(
                    what,
                    format!(
                        "tensor '{name}' has shape {:?}, the model expects {shape:?}",
                        t.shape
                    ),
                ));
            }
            if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(input_error(
                    what,
                    format!("tensor '{name}' holds {v} at element {i}; weights must be finite"),
                ));
            }
            if name.ends_with("running_var")
                && let Some((i, v)) = values.iter().enumerate().find(|(_, v)| **v < 0.0)
            {
                return Err(input_error(
                    what,
                    format!("tensor '{name}' holds the negative variance {v} at element {i}"),
                ));
            }
            tensors.insert(name.to_string(), gpu.upload(shape, values)?);
        }
        let extra = host.keys().find(|k| {
            !tensors.contains_key(k.as_str())
                && !k
                    .strip_suffix(".num_batches_tracked")
                    .is_some_and(|prefix| tensors.contains_key(&format!("{prefix}.running_mean")))
        });
        if let Some(k) = extra {
            return Err(input_error(
                what,
                format!(
                    "tensor '{k}' is not a parameter of this model (a checkpoint of another architecture?)"
                ),
            ));
        }
        Ok(Weights { tensors })
    }

    /// Several models' weights under their names' prefixes (for [`Graph::ensemble`]).
    pub fn ensemble(parts: &[(&str, &Weights)]) -> Weights {
        let tensors = parts
            .iter()
            .flat_map(|(name, w)| {
                w.tensors
                    .iter()
                    .map(move |(k, t)| (format!("{name}.{k}"), t.clone()))
            })
            .collect();
        Weights { tensors }
    }

    /// These weights and `other`'s together (sharing their tensors; ours win on a name clash).
    pub fn merged(&self, other: &Weights) -> Weights {
        let mut tensors = other.tensors.clone();
        tensors.extend(self.tensors.iter().map(|(k, t)| (k.clone(), t.clone())));
        Weights { tensors }
    }

    /// Only the tensors whose names start with `prefix` (an auxiliary part, for saving apart).
    pub fn with_prefix(&self, prefix: &str) -> Weights {
        let tensors = self
            .tensors
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        Weights { tensors }
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Every tensor, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.tensors.iter()
    }

    /// Copies every tensor to the host (for checkpoints, with PyTorch names).
    pub fn to_host(&self, gpu: &Gpu) -> Result<TensorMap> {
        let mut out = TensorMap::new();
        for (name, t) in &self.tensors {
            if t.dtype() == DType::F32 {
                out.insert(
                    name.clone(),
                    HostTensor::f32(t.shape(), gpu.read::<f32>(t)?),
                );
            }
        }
        Ok(out)
    }
}
