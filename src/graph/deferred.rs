//! Launches a step needs only when someone reads its loss values: the sums of per-row losses
//! into one number per term. Nothing in the step reads them (the gradients come from the row
//! kernels), so a compiled step can leave them out of the launches it replays and run them only
//! when the host fetches the losses. On a CPU-like driver, where a launch costs about 50 µs
//! however little it does, that is a launch per term per step.

use std::collections::BTreeSet;

use crate::gpu::{Binding, Dispatch, Tensor};

/// The most bytes of one buffer a deferred launch may read. Deferring keeps what it reads alive
/// to the end of the plan, where the memory planner could have reused it: a term's row losses
/// (a few hundred bytes) are worth that, a feature map's squared differences are not (their
/// first sum stays in place and only the sum of its partial sums moves).
pub const MAX_DEFERRED_READ: u64 = 64 * 1024;

/// Splits `plan` into the launches every step runs and, after them, the launches that only
/// compute `values` (tensors the host reads). Returns the plan reordered, the index where the
/// value launches begin, and each old launch's new index.
///
/// A launch is deferred when
/// - everything it writes it writes whole ([`Binding::Output`], so running the deferred
///   launches again gives the same values, as long as none of their buffers is shared with
///   another: the caller keeps them out of the memory planner), and is one of `values` or an
///   intermediate that later deferred launches read, which no other launch binds and `keep`
///   does not name (the host reads logits and a discriminator's losses from their writers every
///   step);
/// - every buffer it reads was made by an earlier launch of the plan (the first launch to bind
///   it binds it as an output: nothing the host or another step writes between steps), no
///   launch that stays rewrites it later (so at the end it reads the same data), and it is at
///   most [`MAX_DEFERRED_READ`] bytes.
///
/// Buffers are compared whole, so a view of a parameter arena counts as the arena.
pub fn defer_value_launches(
    plan: Vec<Dispatch>,
    values: &[&Tensor],
    keep: &[&Tensor],
) -> (Vec<Dispatch>, usize, Vec<usize>) {
    let values: BTreeSet<usize> = values.iter().map(|t| t.buffer_id()).collect();
    let keep: BTreeSet<usize> = keep.iter().map(|t| t.buffer_id()).collect();
    let binds: Vec<Vec<Bound>> = plan.iter().map(bindings).collect();
    let binds = &binds;
    // The launches that bind buffer `b`, in plan order.
    let users =
        |b: usize| (0..binds.len()).filter(move |&j| binds[j].iter().any(|x| x.buffer == b));
    // Whether the first launch to bind `b` writes it whole, before launch `i`.
    let made_before = |b: usize, i: usize| {
        users(b).next().is_some_and(|first| {
            first < i
                && binds[first]
                    .iter()
                    .any(|x| x.buffer == b && x.kind == Binding::Output)
        })
    };
    let mut deferred = vec![false; plan.len()];
    // From the last launch back: everything after `i` is decided when `i` is.
    for i in (0..plan.len()).rev() {
        let (writes, reads): (Vec<&Bound>, Vec<&Bound>) = binds[i].iter().partition(|x| x.writes());
        let writes_only_values = !writes.is_empty()
            && writes.iter().all(|x| {
                let others: Vec<usize> = users(x.buffer).filter(|&j| j != i).collect();
                x.kind == Binding::Output
                    && others.iter().all(|&j| j > i && deferred[j])
                    && (values.contains(&x.buffer)
                        || (!keep.contains(&x.buffer) && !others.is_empty()))
            });
        let reads_stay = reads.iter().all(|x| {
            x.bytes <= MAX_DEFERRED_READ
                && made_before(x.buffer, i)
                && !users(x.buffer).any(|j| {
                    j > i
                        && !deferred[j]
                        && binds[j].iter().any(|y| y.buffer == x.buffer && y.writes())
                })
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

/// One binding of a launch: which buffer, how, and that buffer's size (deferring keeps the
/// whole buffer alive, not only the view).
struct Bound {
    buffer: usize,
    kind: Binding,
    bytes: u64,
}

impl Bound {
    fn writes(&self) -> bool {
        matches!(self.kind, Binding::Output | Binding::ReadWrite)
    }
}

/// The buffers a launch binds (its uniform aside).
fn bindings(d: &Dispatch) -> Vec<Bound> {
    d.tensors
        .iter()
        .enumerate()
        .map(|(j, t)| Bound {
            buffer: t.buffer_id(),
            kind: d.kernel.spec.bindings[j + 1],
            bytes: t.buffer().size(),
        })
        .collect()
}
