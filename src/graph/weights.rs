//! A model's parameters and buffers on the GPU, by PyTorch name.

use std::collections::BTreeMap;

use crate::Result;
use crate::error::input_error;
use crate::gpu::{DType, Gpu, Tensor};
use crate::io::{HostTensor, TensorMap};
use crate::rng::sample;

use super::ir::{Graph, Init, Op};

/// Parameter and buffer tensors of one model. Cloning shares the tensors.
///
/// The trained parameters lie end to end in one buffer, an [`Arena`] (several only past the
/// adapter's largest binding), so that one optimizer launch can update them all; buffers (running
/// statistics, memory banks) and frozen tensors have buffers of their own, as kernels write them
/// while reading the parameters.
#[derive(Clone)]
pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
    arenas: Vec<Arena>,
}

/// Trained parameters laid end to end in one buffer, each at an offset the adapter can bind
/// (llm.c's layout): [`super::update`] lays their gradients and optimizer state out alike and
/// updates the whole in one launch.
#[derive(Clone, Debug)]
pub struct Arena {
    whole: Tensor,
    // (byte offset, bytes) of each member, by offset.
    members: Vec<(u64, u64)>,
}

impl Arena {
    /// The whole buffer as one f32 vector. The padding between members is zero, and stays zero
    /// under updates as its gradients are zero too.
    pub fn whole(&self) -> &Tensor {
        &self.whole
    }

    /// Whether `views` are exactly this arena's members, each once.
    pub fn is_exactly(&self, views: &[&Tensor]) -> bool {
        let mut ranges: Vec<(u64, u64)> = views
            .iter()
            .filter(|t| t.shares_buffer_with(&self.whole))
            .map(|t| (t.offset(), t.byte_len()))
            .collect();
        ranges.sort_unstable();
        views.len() == ranges.len() && ranges == self.members
    }
}

/// Where tensors of `bytes` go when laid end to end at multiples of `align`: per tensor
/// `(arena, byte offset)`, and each arena's size (a multiple of `align`). An arena is closed
/// before a tensor would take it past `limit` bytes (the largest binding the update launch may
/// take). Tensors of no bytes, or of more than `limit`, get `None`: they keep buffers of their own.
pub fn arena_layout(
    bytes: &[u64],
    align: u64,
    limit: u64,
) -> (Vec<Option<(usize, u64)>>, Vec<u64>) {
    let mut places = Vec::with_capacity(bytes.len());
    let mut sizes: Vec<u64> = Vec::new();
    for &b in bytes {
        if b == 0 || b > limit {
            places.push(None);
            continue;
        }
        let padded = b.next_multiple_of(align);
        let arena = sizes.len();
        match sizes.last_mut() {
            Some(size) if *size + padded <= limit => {
                places.push(Some((arena - 1, *size)));
                *size += padded;
            }
            _ => {
                places.push(Some((arena, 0)));
                sizes.push(padded);
            }
        }
    }
    (places, sizes)
}

/// A tensor to create: name, shape, values, and whether the optimizer trains it.
struct Entry<'a> {
    name: String,
    shape: Vec<usize>,
    values: std::borrow::Cow<'a, [f32]>,
    trained: bool,
}

impl Weights {
    /// Creates `entries` on the GPU: the trained ones in arenas, the others alone.
    fn place(gpu: &Gpu, entries: Vec<Entry<'_>>) -> Result<Weights> {
        let limits = gpu.limits();
        let align = u64::from(limits.min_storage_buffer_offset_alignment).max(16);
        let limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            / align
            * align;
        let bytes: Vec<u64> = entries
            .iter()
            .map(|e| {
                if e.trained {
                    4 * e.values.len() as u64
                } else {
                    0
                }
            })
            .collect();
        let (places, sizes) = arena_layout(&bytes, align, limit);
        let wholes: Vec<Tensor> = sizes
            .iter()
            .map(|&b| gpu.zeros(&[(b / 4) as usize], DType::F32))
            .collect::<Result<_>>()?;
        let mut members: Vec<Vec<(u64, u64)>> = vec![Vec::new(); sizes.len()];
        let mut tensors = BTreeMap::new();
        for (e, place) in entries.into_iter().zip(places) {
            let t = match place {
                Some((arena, offset)) => {
                    let t = wholes[arena].view_at(offset, &e.shape)?;
                    members[arena].push((offset, t.byte_len()));
                    gpu.write(&t, &e.values)?;
                    t
                }
                None => gpu.upload(&e.shape, &e.values)?,
            };
            tensors.insert(e.name, t);
        }
        let arenas = wholes
            .into_iter()
            .zip(members)
            .map(|(whole, members)| Arena { whole, members })
            .collect();
        Ok(Weights { tensors, arenas })
    }

    /// Initialises every parameter and buffer of `graph` (PyTorch's default schemes), from `seed`.
    pub fn init(gpu: &Gpu, graph: &Graph, seed: u64) -> Result<Weights> {
        Self::init_where(gpu, graph, seed, |_| true)
    }

    /// [`Weights::init`] of the parameters and buffers whose names start with `prefix` alone (an
    /// auxiliary part of a graph, such as its extra heads), with the values `init` gives them.
    pub fn init_prefixed(gpu: &Gpu, graph: &Graph, seed: u64, prefix: &str) -> Result<Weights> {
        Self::init_where(gpu, graph, seed, |name| name.starts_with(prefix))
    }

    fn init_where(
        gpu: &Gpu,
        graph: &Graph,
        seed: u64,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Weights> {
        let mut entries = Vec::new();
        for (i, (_, node)) in graph.params().enumerate() {
            let Op::Param { init, trainable } = node.op else {
                continue;
            };
            if !wanted(&node.name) {
                continue;
            }
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
            entries.push(Entry {
                name: node.name.clone(),
                shape: node.shape.clone(),
                values: values.into(),
                trained: trainable,
            });
        }
        Self::place(gpu, entries)
    }

    /// Loads every parameter and buffer of `graph` from named host tensors (a checkpoint); `what`
    /// names the source in errors.
    pub fn load(gpu: &Gpu, graph: &Graph, what: &str, host: &TensorMap) -> Result<Weights> {
        let wanted = graph.params().map(|(_, node)| {
            let trained = matches!(
                node.op,
                Op::Param {
                    trainable: true,
                    ..
                }
            );
            (node.name.as_str(), node.shape.as_slice(), trained)
        });
        Self::load_named(gpu, wanted, what, host)
    }

    /// Uploads named host tensors as they are (a loss term's memory, which its kernels write),
    /// refusing non-finite values; `what` names the source in errors.
    pub fn upload(gpu: &Gpu, what: &str, host: &TensorMap) -> Result<Weights> {
        let wanted = host
            .iter()
            .map(|(k, t)| (k.as_str(), t.shape.as_slice(), false));
        Self::load_named(gpu, wanted, what, host)
    }

    /// [`Weights::upload`] for tensors the optimizer trains (a loss term's initial parameters),
    /// laid out in an arena.
    pub fn upload_trained(gpu: &Gpu, what: &str, host: &TensorMap) -> Result<Weights> {
        let wanted = host
            .iter()
            .map(|(k, t)| (k.as_str(), t.shape.as_slice(), true));
        Self::load_named(gpu, wanted, what, host)
    }

    /// New tensors with these weights' names and shapes, loaded from named host tensors, the
    /// trained ones (those in an arena here) again in an arena.
    pub fn reload(&self, gpu: &Gpu, what: &str, host: &TensorMap) -> Result<Weights> {
        let wanted = self
            .tensors
            .iter()
            .map(|(k, t)| (k.as_str(), t.shape(), self.in_arena(t)));
        Self::load_named(gpu, wanted, what, host)
    }

    /// Whether `t` lies in one of these weights' arenas.
    fn in_arena(&self, t: &Tensor) -> bool {
        self.arenas.iter().any(|a| t.shares_buffer_with(&a.whole))
    }

    /// The arenas the trained parameters lie in.
    pub fn arenas(&self) -> &[Arena] {
        &self.arenas
    }

    /// Loads the `wanted` tensors from `host`, refusing what would train or evaluate into a
    /// silent wrong answer: a missing tensor, another dtype or shape, a non-finite value, a
    /// negative running variance, or a tensor the model does not have (a checkpoint of another
    /// architecture). BatchNorm's `num_batches_tracked`, which PyTorch saves, is accepted.
    fn load_named<'a>(
        gpu: &Gpu,
        wanted: impl Iterator<Item = (&'a str, &'a [usize], bool)>,
        what: &str,
        host: &TensorMap,
    ) -> Result<Weights> {
        let mut entries = Vec::new();
        for (name, shape, trained) in wanted {
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
            entries.push(Entry {
                name: name.to_string(),
                shape: shape.to_vec(),
                values: values.into(),
                trained,
            });
        }
        let names: std::collections::BTreeSet<&str> =
            entries.iter().map(|e| e.name.as_str()).collect();
        let known = |k: &str| names.contains(k);
        let extra = host.keys().find(|k| {
            !known(k)
                && !k
                    .strip_suffix(".num_batches_tracked")
                    .is_some_and(|prefix| known(&format!("{prefix}.running_mean")))
        });
        if let Some(k) = extra {
            return Err(input_error(
                what,
                format!(
                    "tensor '{k}' is not a parameter of this model (a checkpoint of another architecture?)"
                ),
            ));
        }
        Self::place(gpu, entries)
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
        let arenas = parts
            .iter()
            .flat_map(|(_, w)| w.arenas.iter().cloned())
            .collect();
        Weights { tensors, arenas }
    }

    /// These weights and `other`'s together (sharing their tensors; ours win on a name clash).
    pub fn merged(&self, other: &Weights) -> Weights {
        let mut tensors = other.tensors.clone();
        tensors.extend(self.tensors.iter().map(|(k, t)| (k.clone(), t.clone())));
        let mut arenas = other.arenas.clone();
        for a in &self.arenas {
            if !other.in_arena(&a.whole) {
                arenas.push(a.clone());
            }
        }
        Weights { tensors, arenas }
    }

    /// Only the tensors whose names start with `prefix` (an auxiliary part, for saving apart).
    /// The views share their arenas, which then hold more than these tensors: updating them
    /// takes one launch per parameter (to train a part apart, give it weights of its own, as
    /// [`Weights::init_prefixed`] does).
    pub fn with_prefix(&self, prefix: &str) -> Weights {
        let tensors: BTreeMap<String, Tensor> = self
            .tensors
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        let arenas = self
            .arenas
            .iter()
            .filter(|a| tensors.values().any(|t| t.shares_buffer_with(&a.whole)))
            .cloned()
            .collect();
        Weights { tensors, arenas }
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

#[cfg(test)]
mod tests {
    use super::arena_layout;

    #[test]
    fn arenas_align_their_members_and_close_at_the_limit() {
        // Empty tensors and tensors past the limit stay out; the others go at multiples of 256.
        let (places, sizes) = arena_layout(&[40, 0, 256, 4, 2000, 100], 256, 1024);
        let expected = [
            Some((0, 0)),
            None,
            Some((0, 256)),
            Some((0, 512)),
            None,
            Some((0, 768)),
        ];
        assert_eq!(places, expected);
        assert_eq!(sizes, [1024]);
        // A tensor that would pass the limit opens the next arena; later ones fill it.
        let (places, sizes) = arena_layout(&[600, 600, 4], 256, 1024);
        assert_eq!(places, [Some((0, 0)), Some((1, 0)), Some((1, 768))]);
        assert_eq!(sizes, [768, 1024]);
    }
}
