//! iCaRL's exemplar memory: per class, training images chosen by herding so that the mean of
//! the first m chosen features stays as close as it can to the class's mean feature, for every
//! m. A class's list is kept in that order, so shrinking the memory as classes arrive keeps each
//! class's first m, as iCaRL does.

use crate::Result;
use crate::error::input_error;
use crate::io::{HostTensor, TensorMap};

/// Picks up to `m` rows of `features` (rows of `width` values) by herding over their
/// L2-normalised copies: the k-th pick minimises `‖μ − (s + φᵢ)/k‖`, where μ is the mean of all
/// normalised rows and s the sum of the k − 1 picked before. Returns row indices, in pick order,
/// each row at most once (ties go to the lower index).
pub fn herding(features: &[f32], width: usize, m: usize) -> Vec<usize> {
    if width == 0 {
        return Vec::new();
    }
    let rows: Vec<Vec<f64>> = features
        .chunks(width)
        .map(|r| {
            let norm = r.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
            r.iter().map(|&v| f64::from(v) / norm.max(1e-12)).collect()
        })
        .collect();
    let n = rows.len();
    let mut mean = vec![0.0f64; width];
    for r in &rows {
        for (a, v) in mean.iter_mut().zip(r) {
            *a += v / n as f64;
        }
    }
    let mut sum = vec![0.0f64; width];
    let mut taken = vec![false; n];
    let mut picked = Vec::with_capacity(m.min(n));
    for k in 1..=m.min(n) {
        // ‖μ − (s + φ)/k‖² = ‖kμ − s − φ‖² / k²: the pick minimises ‖v − φ‖ with v = kμ − s.
        let v: Vec<f64> = mean
            .iter()
            .zip(&sum)
            .map(|(mu, s)| k as f64 * mu - s)
            .collect();
        let mut best = (f64::INFINITY, usize::MAX);
        for (i, r) in rows.iter().enumerate() {
            if taken[i] {
                continue;
            }
            let d: f64 = v.iter().zip(r).map(|(a, b)| (a - b).powi(2)).sum();
            if d < best.0 {
                best = (d, i);
            }
        }
        let i = best.1;
        taken[i] = true;
        picked.push(i);
        for (s, v) in sum.iter_mut().zip(&rows[i]) {
            *s += v;
        }
    }
    picked
}

/// The exemplars per class: training-set indices in herding order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Memory {
    per_class: Vec<Vec<usize>>,
}

impl Memory {
    /// An empty memory for `classes` classes.
    pub fn new(classes: usize) -> Memory {
        Memory {
            per_class: vec![Vec::new(); classes],
        }
    }

    /// Every exemplar, class by class.
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.per_class.iter().flatten().copied()
    }

    /// How many exemplars it holds.
    pub fn len(&self) -> usize {
        self.per_class.iter().map(Vec::len).sum()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Class `class`'s exemplars, in herding order.
    pub fn class(&self, class: usize) -> &[usize] {
        &self.per_class[class]
    }

    /// Sets a class's exemplars (in herding order).
    pub fn set(&mut self, class: usize, exemplars: Vec<usize>) {
        self.per_class[class] = exemplars;
    }

    /// Keeps each class's first `m` exemplars.
    pub fn shrink(&mut self, m: usize) {
        for list in &mut self.per_class {
            list.truncate(m);
        }
    }

    /// As tensors: `memory.counts` (per class) and `memory.indices` (their lists, concatenated).
    pub fn to_tensors(&self) -> TensorMap {
        let counts: Vec<i32> = self.per_class.iter().map(|l| l.len() as i32).collect();
        let indices: Vec<i32> = self.indices().map(|i| i as i32).collect();
        let mut t = TensorMap::new();
        t.insert(
            "memory.counts".into(),
            HostTensor::i32(&[counts.len()], counts),
        );
        t.insert(
            "memory.indices".into(),
            HostTensor::i32(&[indices.len()], indices),
        );
        t
    }

    /// Reads [`Memory::to_tensors`]'s tensors for `classes` classes; `what` names the source.
    pub fn from_tensors(what: &str, t: &TensorMap, classes: usize) -> Result<Memory> {
        let get = |k: &str| {
            t.get(k)
                .and_then(HostTensor::as_i32)
                .ok_or_else(|| input_error(what, format!("no i32 tensor '{k}'")))
        };
        let (counts, indices) = (get("memory.counts")?, get("memory.indices")?);
        let total: i64 = counts.iter().map(|&c| i64::from(c)).sum();
        if counts.len() != classes
            || counts.iter().any(|&c| c < 0)
            || total != indices.len() as i64
            || indices.iter().any(|&i| i < 0)
        {
            return Err(input_error(
                what,
                format!(
                    "memory.counts must hold {classes} counts ≥ 0 summing to the {} indices of memory.indices",
                    indices.len()
                ),
            ));
        }
        let mut rest = indices.iter().map(|&i| i as usize);
        let per_class = counts
            .iter()
            .map(|&c| rest.by_ref().take(c as usize).collect())
            .collect();
        Ok(Memory { per_class })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ‖μ − mean of the picks‖ for each prefix of `picked`.
    fn gaps(rows: &[Vec<f64>], picked: &[usize]) -> Vec<f64> {
        let width = rows[0].len();
        let mean: Vec<f64> = (0..width)
            .map(|d| rows.iter().map(|r| r[d]).sum::<f64>() / rows.len() as f64)
            .collect();
        (1..=picked.len())
            .map(|k| {
                (0..width)
                    .map(|d| {
                        let m = picked[..k].iter().map(|&i| rows[i][d]).sum::<f64>() / k as f64;
                        (mean[d] - m).powi(2)
                    })
                    .sum::<f64>()
                    .sqrt()
            })
            .collect()
    }

    #[test]
    fn each_pick_is_the_greedy_best_and_none_repeats() {
        let (n, width) = (37, 5);
        let features = crate::rng::sample(n * width, 11);
        let rows: Vec<Vec<f64>> = features
            .chunks(width)
            .map(|r| {
                let norm = r.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
                r.iter().map(|&v| f64::from(v) / norm).collect()
            })
            .collect();
        let picked = herding(&features, width, 12);
        assert_eq!(picked.len(), 12);
        let mut sorted = picked.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 12, "a row picked twice: {picked:?}");
        // Brute force: at each step no other unpicked row would have brought the mean closer.
        for k in 0..picked.len() {
            let chosen = gaps(&rows, &picked[..=k])[k];
            for i in (0..n).filter(|i| !picked[..k].contains(i)) {
                let mut alt = picked[..k].to_vec();
                alt.push(i);
                assert!(
                    chosen <= gaps(&rows, &alt)[k] + 1e-12,
                    "pick {k}: row {i} beats row {}",
                    picked[k]
                );
            }
        }
        // Herding's point: its prefixes track the mean far better than the first rows do.
        let first: Vec<usize> = (0..12).collect();
        assert!(gaps(&rows, &picked)[11] < 0.5 * gaps(&rows, &first)[11]);
        // Asking for more rows than there are gives each once.
        assert_eq!(herding(&features, width, 100).len(), n);
    }

    #[test]
    fn memory_shrinks_in_order_and_round_trips() {
        let mut m = Memory::new(3);
        m.set(0, vec![5, 2, 9]);
        m.set(2, vec![7, 1]);
        assert_eq!(m.len(), 5);
        let back = Memory::from_tensors("test", &m.to_tensors(), 3).unwrap();
        assert_eq!(back, m);
        m.shrink(1);
        assert_eq!(m.indices().collect::<Vec<_>>(), vec![5, 7]);
        let err = Memory::from_tensors("state.safetensors", &m.to_tensors(), 4).unwrap_err();
        assert!(err.to_string().contains("memory.counts"), "{err}");
    }
}
