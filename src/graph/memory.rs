//! The memory planner: after a step is planned, intermediate buffers whose lifetimes (first to
//! last launch that touches them) do not overlap are folded into shared buffers.
//!
//! A buffer may move only if its first use writes it without reading ([`Binding::Output`]) and
//! nobody outside the plan holds it: parameters, optimizer state, inputs and anything the host
//! reads are pinned, by being read first or by being named by the caller. Launches in one pass
//! run in order, and wgpu places a barrier between a launch that writes a buffer and the next
//! that touches it, so reuse needs no more synchronisation.

use std::collections::{BTreeMap, BTreeSet};

use crate::Result;
use crate::gpu::{Binding, DType, Dispatch, Gpu, Tensor};

/// What planning saved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// Bytes of the movable buffers before planning.
    pub before: u64,
    /// Bytes of the shared buffers that replaced them.
    pub after: u64,
    /// Movable buffers.
    pub buffers: usize,
    /// Shared buffers they were folded into.
    pub slots: usize,
}

struct Life {
    first: usize,
    last: usize,
    bytes: u64,
    movable: bool,
}

/// Folds `plan`'s movable buffers into shared ones; `pinned` tensors keep their buffers.
pub fn plan_memory(gpu: &Gpu, plan: &mut [Dispatch], pinned: &[&Tensor]) -> Result<MemoryReport> {
    let pinned: BTreeSet<usize> = pinned.iter().map(|t| t.buffer_id()).collect();
    let mut lives: BTreeMap<usize, Life> = BTreeMap::new();
    for (i, d) in plan.iter().enumerate() {
        for (j, t) in d.tensors.iter().enumerate() {
            let kind = d.kernel.spec.bindings[j + 1];
            let life = lives.entry(t.buffer_id()).or_insert(Life {
                first: i,
                last: i,
                bytes: 0,
                movable: kind == Binding::Output && !pinned.contains(&t.buffer_id()),
            });
            life.last = i;
            life.bytes = life.bytes.max(t.extent().next_multiple_of(4));
            // Read before being written in this plan: it carries state in from outside.
            if life.first == i && kind != Binding::Output {
                life.movable = false;
            }
        }
    }
    let mut order: Vec<(usize, &Life)> = lives
        .iter()
        .filter(|(_, l)| l.movable)
        .map(|(id, l)| (*id, l))
        .collect();
    order.sort_by_key(|(_, l)| l.first);
    // Greedy interval colouring: each buffer takes the free slot closest in size.
    let mut slots: Vec<(u64, usize)> = Vec::new(); // (bytes, last use)
    let mut assignment: BTreeMap<usize, usize> = BTreeMap::new();
    let mut report = MemoryReport {
        buffers: order.len(),
        ..Default::default()
    };
    for (id, life) in &order {
        report.before += life.bytes;
        let free = slots
            .iter()
            .enumerate()
            .filter(|(_, (_, last))| *last < life.first)
            .min_by_key(|(_, (bytes, _))| bytes.abs_diff(life.bytes))
            .map(|(k, _)| k);
        let k = match free {
            Some(k) => k,
            None => {
                slots.push((0, 0));
                slots.len() - 1
            }
        };
        slots[k] = (slots[k].0.max(life.bytes), life.last);
        assignment.insert(*id, k);
    }
    let physical: Vec<Tensor> = slots
        .iter()
        .map(|(bytes, _)| gpu.empty(&[(*bytes / 4) as usize], DType::F32))
        .collect::<Result<_>>()?;
    report.slots = physical.len();
    report.after = slots.iter().map(|(b, _)| b).sum();
    for d in plan.iter_mut() {
        for t in d.tensors.iter_mut() {
            if let Some(&k) = assignment.get(&t.buffer_id()) {
                *t = t.rebased(&physical[k]);
            }
        }
    }
    Ok(report)
}
