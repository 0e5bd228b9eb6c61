//! A model's parameters and buffers on the GPU, by PyTorch name.

use std::collections::BTreeMap;

use crate::gpu::error::input_error;
use crate::gpu::{DType, Gpu, Result, Tensor};
use crate::io::{HostTensor, TensorMap};
use crate::reference::sample;

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
            let n: usize = node.shape.iter().product();
            let values: Vec<f32> = match init {
                Init::Zeros => vec![0.0; n],
                Init::Ones => vec![1.0; n],
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
        let mut tensors = BTreeMap::new();
        for (_, node) in graph.params() {
            let t = host
                .get(&node.name)
                .ok_or_else(|| input_error(what, format!("tensor '{}' is missing", node.name)))?;
            let values = t.as_f32().ok_or_else(|| {
                input_error(
                    what,
                    format!("tensor '{}' must be floating point", node.name),
                )
            })?;
            if t.shape != node.shape {
                return Err(input_error(
                    what,
                    format!(
                        "tensor '{}' has shape {:?}, the model expects {:?}",
                        node.name, t.shape, node.shape
                    ),
                ));
            }
            tensors.insert(node.name.clone(), gpu.upload(&node.shape, values)?);
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
