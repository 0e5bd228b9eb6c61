//! The optimizer's side of a compiled step: one fused update launch per arena of parameters (or
//! per parameter, where their gradients cannot be gathered), with the state each keeps between
//! steps (SGD's momentum buffer; AdamW's two moments). Every compiled step that trains something
//! (the training step, DFAD's generator and student steps) plans its updates here.
//!
//! A model's trained parameters lie end to end in one buffer ([`Arena`]). Their gradients are
//! gathered into a buffer of the same layout, by moving each gradient's buffer (every launch that
//! produces or reads it) to its parameter's offset, and the optimizer state is laid out alike, so
//! that one elementwise launch updates every parameter, as llm.c does. The padding between
//! parameters holds zeros in all three and stays zero.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::Result;
use crate::error::input_error;
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, Tensor};
use crate::io::{HostTensor, TensorMap};
use crate::kernels::optimizer;

use super::step::OptimizerSpec;
use super::weights::{Arena, Weights};

/// Per parameter name, the optimizer's state tensors.
pub type OptimizerState = BTreeMap<String, Vec<Tensor>>;

/// The state tensors `optimizer` keeps per parameter.
pub fn state_slots(optimizer: &OptimizerSpec) -> usize {
    match optimizer {
        OptimizerSpec::Sgd(_) => 1,
        OptimizerSpec::AdamW(_) => 2,
    }
}

/// What [`plan_updates`] planned.
pub struct PlannedUpdates {
    /// Per parameter name, the optimizer's state tensors (views of one buffer per slot for the
    /// parameters of an arena updated together).
    pub state: OptimizerState,
    /// The index of each update launch in the plan (to rewrite its learning rate later).
    pub launches: Vec<usize>,
    /// The buffers gradients were gathered into. Their padding must stay zero, so the memory
    /// planner must not fold them into shared buffers: the caller pins them.
    pub gradients: Vec<Tensor>,
}

/// Appends the updates of every `(name, parameter, gradient)` to `plan` (after the caller has
/// advanced `step`, which the updates read): one launch for the parameters of each of `arenas`
/// that the updates cover exactly and whose gradients can be gathered, one per parameter for the
/// rest. State is taken from `shared` where it holds the parameter (a sibling step's), else made
/// as zeros.
pub fn plan_updates<'a>(
    gpu: &Gpu,
    optimizer: &OptimizerSpec,
    updates: Vec<(String, &Tensor, &Tensor)>,
    arenas: impl IntoIterator<Item = &'a Arena>,
    shared: Option<&OptimizerState>,
    step: &Tensor,
    plan: &mut Vec<Dispatch>,
) -> Result<PlannedUpdates> {
    let slots = state_slots(optimizer);
    let mut planned = PlannedUpdates {
        state: BTreeMap::new(),
        launches: Vec::new(),
        gradients: Vec::new(),
    };
    let mut rest = updates;
    for arena in arenas {
        let (members, others): (Vec<_>, Vec<_>) = rest
            .into_iter()
            .partition(|(_, p, _)| p.shares_buffer_with(arena.whole()));
        rest = others;
        let params: Vec<&Tensor> = members.iter().map(|(_, p, _)| *p).collect();
        let state = match arena.is_exactly(&params) {
            true => arena_state(arena, &members, shared, slots)?,
            false => None,
        };
        let pairs: Vec<(&Tensor, &Tensor)> = members.iter().map(|(_, p, g)| (*p, *g)).collect();
        let gathered = match state {
            Some(state) => gather_gradients(gpu, arena, &pairs, plan)?.map(|g| (state, g)),
            None => None,
        };
        let Some((state, g)) = gathered else {
            rest.extend(members);
            continue;
        };
        let s = match state {
            ArenaState::Shared(wholes) => wholes,
            ArenaState::Fresh => (0..slots)
                .map(|_| gpu.zeros(arena.whole().shape(), DType::F32))
                .collect::<Result<_>>()?,
        };
        planned.launches.push(plan.len());
        plan.push(update(gpu, optimizer, arena.whole(), &g, &s, step)?);
        for (name, p, _) in &members {
            let views = s
                .iter()
                .map(|whole| whole.view_at(p.offset(), p.shape()))
                .collect::<Result<_>>()?;
            planned.state.insert(name.clone(), views);
        }
        planned.gradients.push(g);
    }
    for (name, p, g) in rest {
        let s: Vec<Tensor> = match shared.and_then(|s| s.get(&name)) {
            Some(existing) if existing.len() == slots => existing.clone(),
            _ => (0..slots)
                .map(|_| gpu.zeros(p.shape(), DType::F32))
                .collect::<Result<_>>()?,
        };
        planned.launches.push(plan.len());
        plan.push(update(gpu, optimizer, p, g, &s, step)?);
        planned.state.insert(name, s);
    }
    Ok(planned)
}

/// The launch that updates `p` from `g` with state `s`.
fn update(
    gpu: &Gpu,
    optimizer: &OptimizerSpec,
    p: &Tensor,
    g: &Tensor,
    s: &[Tensor],
    step: &Tensor,
) -> Result<Dispatch> {
    match optimizer {
        OptimizerSpec::Sgd(o) => optimizer::sgd(gpu, o, p, g, &s[0], step),
        OptimizerSpec::AdamW(o) => optimizer::adamw(gpu, o, p, g, &s[0], &s[1], step),
    }
}

/// Where an arena's optimizer state comes from.
enum ArenaState {
    /// Zeros, made once the gradients are gathered.
    Fresh,
    /// A sibling step's, one buffer per slot laid out as the arena.
    Shared(Vec<Tensor>),
}

/// The optimizer state of an arena's parameters: fresh, or a sibling step's (`shared`) where it
/// is laid out as the arena. `None` where the sibling keeps per-parameter state: these
/// parameters are then updated one by one, sharing it.
fn arena_state(
    arena: &Arena,
    members: &[(String, &Tensor, &Tensor)],
    shared: Option<&OptimizerState>,
    slots: usize,
) -> Result<Option<ArenaState>> {
    let existing: Vec<(&Tensor, &Vec<Tensor>)> = members
        .iter()
        .filter_map(|(name, p, _)| shared?.get(name).map(|s| (*p, s)))
        .collect();
    let Some((_, first)) = existing.first() else {
        return Ok(Some(ArenaState::Fresh));
    };
    let laid_out = existing.len() == members.len()
        && existing.iter().all(|(p, s)| {
            s.len() == slots
                && s.iter()
                    .zip(first.iter())
                    .all(|(t, f)| t.shares_buffer_with(f) && t.offset() == p.offset())
        });
    if !laid_out {
        return Ok(None);
    }
    let wholes = first
        .iter()
        .map(|f| f.view_at(0, arena.whole().shape()))
        .collect::<Result<_>>()?;
    Ok(Some(ArenaState::Shared(wholes)))
}

/// Moves each parameter's gradient into one new buffer laid out as `arena` (at its parameter's
/// offset), rewriting every launch of `plan` that touches it, and returns that buffer. Returns
/// `None`, with `plan` unchanged, where that would be wrong: a gradient at an offset, or of
/// another size than its parameter, or whose buffer holds more than it, or another gradient, or
/// is not produced in `plan` (written before it is read), or is bound as a uniform (whose
/// offsets need another alignment); or a launch that would then read the buffer in one binding
/// while writing it in another (a conflict WebGPU refuses).
fn gather_gradients(
    gpu: &Gpu,
    arena: &Arena,
    pairs: &[(&Tensor, &Tensor)],
    plan: &mut [Dispatch],
) -> Result<Option<Tensor>> {
    // Per gradient buffer: (its parameter's offset, its parameter's bytes).
    let mut target: HashMap<usize, (u64, u64)> = HashMap::new();
    for (p, g) in pairs {
        let new = target
            .insert(g.buffer_id(), (p.offset(), p.byte_len()))
            .is_none();
        if !new || g.offset() != 0 || g.byte_len() != p.byte_len() {
            return Ok(None);
        }
    }
    let mut produced: HashSet<usize> = HashSet::new();
    for d in plan.iter() {
        let (mut reads, mut writes) = (false, false);
        for (j, t) in d.tensors.iter().enumerate() {
            let Some(&(_, bytes)) = target.get(&t.buffer_id()) else {
                continue;
            };
            let kind = d.kernel.spec.bindings[j + 1];
            if t.extent() > bytes || (produced.insert(t.buffer_id()) && kind != Binding::Output) {
                return Ok(None);
            }
            match kind {
                Binding::Uniform => return Ok(None),
                Binding::ReadOnly => reads = true,
                Binding::ReadWrite | Binding::Output => writes = true,
            }
        }
        if reads && writes {
            return Ok(None);
        }
    }
    if produced.len() != target.len() {
        return Ok(None);
    }
    let whole = gpu.zeros(arena.whole().shape(), DType::F32)?;
    for d in plan.iter_mut() {
        for t in d.tensors.iter_mut() {
            if let Some(&(offset, _)) = target.get(&t.buffer_id()) {
                *t = t.moved_to(&whole, offset + t.offset());
            }
        }
    }
    Ok(Some(whole))
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
