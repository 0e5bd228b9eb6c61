//! The optimizer's side of a compiled step: one fused update launch per parameter, with the
//! state each keeps between steps (SGD's momentum buffer; AdamW's two moments). Every compiled
//! step that trains something (the training step, DFAD's generator and student steps) plans its
//! updates here.

use std::collections::BTreeMap;

use crate::Result;
use crate::error::shape_error;
use crate::gpu::{DType, Dispatch, Gpu, Tensor};
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
