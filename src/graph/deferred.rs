//! Launches a step needs only when someone reads its loss values: the sums of per-row losses
//! into one number per term. Nothing in the step reads them (the gradients come from the row
//! kernels), so a compiled step can leave them out of the launches it replays and run them only
//! when the host fetches the losses. On a CPU-like driver, where a launch costs about 50 µs
//! however little it does, that is a launch per term per step.

use std::collections::BTreeSet;

use crate::gpu::{Binding, Dispatch, Tensor};

/// Splits `plan` into the launches every step runs and, after them, the launches that only
/// compute `values` (tensors the host reads). Returns the plan reordered, the index where the
/// value launches begin, and each old launch's new index.
///
/// A launch is deferred when every buffer it writes is one of `values` or an intermediate that
/// later deferred launches read, no other launch touches those buffers, and no launch that
/// stays writes a buffer it reads after its old place (so at the end it reads the same data).
/// A buffer the host reads that is not among `values` (logits, a discriminator's losses) keeps
/// its writer. Buffers are compared whole, so a view of a parameter arena counts as the arena:
/// a launch that reads any updated parameter stays.
pub fn defer_value_launches(
    plan: Vec<Dispatch>,
    values: &[&Tensor],
) -> (Vec<Dispatch>, usize, Vec<usize>) {
    let values: BTreeSet<usize> = values.iter().map(|t| t.buffer_id()).collect();
    let accesses: Vec<Vec<(usize, bool)>> = plan.iter().map(accesses).collect();
    let accesses = &accesses;
    let mut deferred = vec![false; plan.len()];
    // From the last launch back: everything after `i` is decided when `i` is.
    for i in (0..plan.len()).rev() {
        let writes: Vec<usize> = accesses[i]
            .iter()
            .filter(|(_, w)| *w)
            .map(|(b, _)| *b)
            .collect();
        // The other launches that bind buffer `b`.
        let others = |b: usize| {
            (0..plan.len()).filter(move |&j| j != i && accesses[j].iter().any(|(x, _)| *x == b))
        };
        // What it writes: a value, or an intermediate some deferred launch reads; either way
        // no launch before it or staying after it binds the buffer.
        let writes_only_values = !writes.is_empty()
            && writes.iter().all(|&b| {
                others(b).all(|j| j > i && deferred[j])
                    && (values.contains(&b) || others(b).next().is_some())
            });
        // What it reads must not change between its place and the end of the plan.
        let reads_stay = accesses[i].iter().all(|&(b, _)| {
            !accesses
                .iter()
                .enumerate()
                .skip(i + 1)
                .any(|(j, a)| !deferred[j] && a.iter().any(|&(x, w)| x == b && w))
        });
        deferred[i] = writes_only_values && reads_stay;
    }
    let (mut kept, mut tail) = (Vec::new(), Vec::new());
    let mut new_index = vec![0; plan.len()];
    let kept_count = deferred.iter().filter(|d| !**d).count();
    for (i, (d, is_deferred)) in plan.into_iter().zip(&deferred).enumerate() {
        if *is_deferred {
            new_index[i] = kept_count + tail.len();
            tail.push(d);
        } else {
            new_index[i] = kept.len();
            kept.push(d);
        }
    }
    kept.extend(tail);
    (kept, kept_count, new_index)
}

/// The buffers a launch binds, each with whether it writes it.
fn accesses(d: &Dispatch) -> Vec<(usize, bool)> {
    d.tensors
        .iter()
        .enumerate()
        .map(|(j, t)| {
            let kind = d.kernel.spec.bindings[j + 1];
            (
                t.buffer_id(),
                matches!(kind, Binding::ReadWrite | Binding::Output),
            )
        })
        .collect()
}
