//! Negatives for contrastive distillation (CRD): for each sample of a batch, its own index and
//! K indices of samples from other classes, drawn without replacement while K is at most their
//! count (with replacement beyond, as RepDistiller's `CIFAR100InstanceSample` does). Where a
//! stage hides labels (negative ones), an unlabelled sample's negatives come from the whole set
//! (its own index among them, rarely), and a labelled one's from every sample not known to share
//! its class.

use crate::rng::Xorshift;

/// Draws each sample's negatives from the other classes of a training set.
#[derive(Clone, Debug)]
pub struct NegativeSampler {
    // Per class: the indices of every sample of the other classes (and the unlabelled ones);
    // last, every index, for the unlabelled samples.
    others: Vec<Vec<i32>>,
    labels: Vec<i32>,
    k: usize,
    // The partial shuffle's swaps, undone after each sample (kept to allocate once).
    swaps: Vec<usize>,
}

impl NegativeSampler {
    /// A sampler of `k` negatives per sample over a training set's `labels` (in `0..classes`,
    /// or negative for a hidden label).
    pub fn new(labels: &[i32], classes: usize, k: usize) -> NegativeSampler {
        let mut others: Vec<Vec<i32>> = (0..classes as i32)
            .map(|c| {
                (0..labels.len() as i32)
                    .filter(|&i| labels[i as usize] != c)
                    .collect()
            })
            .collect();
        if labels.iter().any(|&y| y < 0) {
            others.push((0..labels.len() as i32).collect());
        }
        NegativeSampler {
            others,
            labels: labels.to_vec(),
            k,
            swaps: Vec::with_capacity(k),
        }
    }

    /// Fills `out` with `(samples.len(), K+1)` indices: each sample's own, then its negatives,
    /// drawn from `seed` (a partial Fisher–Yates shuffle of the other classes' indices, undone
    /// after each sample so the draw depends only on the seed).
    pub fn fill(&mut self, samples: &[usize], seed: u64, out: &mut Vec<i32>) {
        out.clear();
        let mut rng = Xorshift::new(seed);
        for &i in samples {
            out.push(i as i32);
            let class = usize::try_from(self.labels[i]).unwrap_or(self.others.len() - 1);
            let pool = &mut self.others[class];
            let n = pool.len();
            if n == 0 {
                // A set of one class has no negatives: the sample stands in for them (its
                // scores then only scale the loss).
                out.extend(std::iter::repeat_n(i as i32, self.k));
                continue;
            }
            if self.k > n {
                for _ in 0..self.k {
                    out.push(pool[(rng.next_u64() % n as u64) as usize]);
                }
                continue;
            }
            self.swaps.clear();
            for j in 0..self.k {
                let r = j + (rng.next_u64() % (n - j) as u64) as usize;
                pool.swap(j, r);
                self.swaps.push(r);
                out.push(pool[j]);
            }
            for (j, &r) in self.swaps.iter().enumerate().rev() {
                pool.swap(j, r);
            }
        }
    }
}
