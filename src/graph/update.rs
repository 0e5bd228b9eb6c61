//! The optimizer's side of a compiled step: one fused update launch per parameter, with the
//! state each keeps between steps (SGD's momentum buffer; AdamW's two moments). Every compiled
//! step that trains something (the training step, DFAD's generator and student steps) plans its
//! updates here.

use std::collections::BTreeMap;

use crate::Result;
use crate::error::input_error;
use crate::error::shape_error;
use crate::gpu::{DType, Dispatch, Gpu, Tensor};
use crate::io::{HostTensor, TensorMap};
use crate::kernels::optimizer;

use super::step::OptimizerSpec;
use super::weights::Weights;

/// Per parameter name, the optimizer's state tensors.
pub type OptimizerState = BTreeMap<String, Vec<Tensor>>;

/// The state tensors `optimizer` keeps per parameter.
pub fn state_slots(optimizer: &OptimizerSpec) -> usize {
    match optimizer {
        OptimizerSpec::Sgd(_) => 1,
        OptimizerSpec::AdamW(_) => 2,
    }
}

/// Appends one update per `(name, parameter, gradient)` to `plan` (after the caller has
/// advanced `step`, which the updates read). State is taken from `shared` where it holds the
/// parameter (a sibling step's), else made as zeros. Returns the state and the index of each
/// update launch in `plan` (to rewrite its learning rate later).
pub fn plan_updates(
    gpu: &Gpu,
    optimizer: &OptimizerSpec,
    updates: Vec<(String, &Tensor, &Tensor)>,
    shared: Option<&OptimizerState>,
    step: &Tensor,
    plan: &mut Vec<Dispatch>,
) -> Result<(OptimizerState, Vec<usize>)> {
    let slots = state_slots(optimizer);
    let mut state = BTreeMap::new();
    let mut launches = Vec::new();
    for (name, p, g) in updates {
        let s: Vec<Tensor> = match shared.and_then(|s| s.get(&name)) {
            Some(existing) if existing.len() == slots => existing.clone(),
            _ => (0..slots)
                .map(|_| gpu.zeros(p.shape(), DType::F32))
                .collect::<Result<_>>()?,
        };
        launches.push(plan.len());
        plan.push(match optimizer {
            OptimizerSpec::Sgd(o) => optimizer::sgd(gpu, o, p, g, &s[0], step)?,
            OptimizerSpec::AdamW(o) => optimizer::adamw(gpu, o, p, g, &s[0], &s[1], step)?,
        });
        state.insert(name, s);
    }
    Ok((state, launches))
}

/// `(name, parameter, gradient)` for every gradient of `weights`' parameters.
pub fn named_updates<'a>(
    weights: &'a Weights,
    grads: &'a BTreeMap<String, Tensor>,
) -> Result<Vec<(String, &'a Tensor, &'a Tensor)>> {
    grads
        .iter()
        .map(|(name, g)| {
            let p = weights
                .get(name)
                .ok_or_else(|| shape_error(name, "missing from the weights"))?;
            Ok((name.clone(), p, g))
        })
        .collect()
}

/// A trained side's step counter and optimizer state under `PREFIX.step` and
/// `PREFIX.optimizer.NAME.k`: the names a saved state holds them by.
pub fn side_state<'a>(
    prefix: &str,
    step: &'a Tensor,
    optimizer: &'a OptimizerState,
) -> Vec<(String, &'a Tensor)> {
    let mut out = vec![(format!("{prefix}.step"), step)];
    for (name, tensors) in optimizer {
        for (k, t) in tensors.iter().enumerate() {
            out.push((format!("{prefix}.optimizer.{name}.{k}"), t));
        }
    }
    out
}

/// Reads named state tensors back to the host: f32 as they are, u32 counters as i32 (as
/// PyTorch's integer buffers are stored).
pub fn state_to_host(gpu: &Gpu, tensors: &[(String, &Tensor)]) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    for (name, t) in tensors {
        let host = match t.dtype() {
            DType::U32 => HostTensor::i32(
                t.shape(),
                gpu.read::<u32>(t)?.iter().map(|&v| v as i32).collect(),
            ),
            _ => HostTensor::f32(t.shape(), gpu.read::<f32>(t)?),
        };
        out.insert(name.clone(), host);
    }
    Ok(out)
}

/// Writes what [`state_to_host`] read back into `tensors`, each checked for its name, shape and
/// type (`what` names the source in errors).
pub fn state_from_host(
    gpu: &Gpu,
    what: &str,
    saved: &TensorMap,
    tensors: &[(String, &Tensor)],
) -> Result<()> {
    for (name, t) in tensors {
        let host = saved
            .get(name)
            .ok_or_else(|| input_error(what, format!("tensor '{name}' is missing")))?;
        let wrong = || {
            input_error(
                what,
                format!(
                    "tensor '{name}' should be {} {:?}, found {} {:?}",
                    if t.dtype() == DType::U32 {
                        "i32"
                    } else {
                        "f32"
                    },
                    t.shape(),
                    host.dtype_name(),
                    host.shape
                ),
            )
        };
        if host.shape != t.shape() {
            return Err(wrong());
        }
        match t.dtype() {
            DType::U32 => {
                let v: Vec<u32> = host
                    .as_i32()
                    .ok_or_else(wrong)?
                    .iter()
                    .map(|&v| v.max(0) as u32)
                    .collect();
                gpu.write(t, &v)?;
            }
            _ => gpu.write(t, host.as_f32().ok_or_else(wrong)?)?,
        }
    }
    Ok(())
}
