//! Data: the IDX reader, Fashion-MNIST and a built-in synthetic set as [`Dataset`]s, and the
//! per-epoch loader (seeded shuffling, normalisation, optional augmentation).

pub mod idx;
mod negatives;

pub use negatives::NegativeSampler;

use std::path::{Path, PathBuf};

use crate::Result;
use crate::error::input_error;
use crate::rng::sample;

/// Where the Debian package `dataset-fashion-mnist` puts the files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST's per-pixel mean and standard deviation (training set, pixels in [0, 1]).
pub const FASHION_MNIST_MEAN: f32 = 0.2860;
/// See [`FASHION_MNIST_MEAN`].
pub const FASHION_MNIST_STD: f32 = 0.3530;

/// One image, (C, H, W): Fashion-MNIST's, and the synthetic set's. Configurations are checked
/// and models built for it.
pub const IMAGE: [usize; 3] = [1, 28, 28];

/// Classes of Fashion-MNIST and the synthetic set.
pub const CLASSES: usize = 10;

/// Images and labels in memory, normalised, as (N, C, H, W).
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Pixels, `len · C·H·W`, normalised.
    pub images: Vec<f32>,
    /// Labels in `0..classes`.
    pub labels: Vec<i32>,
    /// (C, H, W).
    pub shape: [usize; 3],
    /// Number of classes.
    pub classes: usize,
    /// Where it came from, for reports.
    pub source: String,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per sample.
    pub fn sample_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Samples `range` (clamped to the set), as a set of their own; `what` is added to the source.
    pub fn slice(&self, range: std::ops::Range<usize>, what: &str) -> Dataset {
        let end = range.end.min(self.len());
        let start = range.start.min(end);
        let len = self.sample_len();
        Dataset {
            images: self.images[start * len..end * len].to_vec(),
            labels: self.labels[start..end].to_vec(),
            shape: self.shape,
            classes: self.classes,
            source: format!("{} ({what}: samples {start}..{end})", self.source),
        }
    }

    /// The first `n` samples (or all).
    pub fn truncated(mut self, n: Option<usize>) -> Dataset {
        if let Some(n) = n.filter(|&n| n < self.len()) {
            self.images.truncate(n * self.sample_len());
            self.labels.truncate(n);
        }
        self
    }
}

fn find_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Loads the Fashion-MNIST (or MNIST) training or test split from `dir`: `train-images-idx3-ubyte`
/// and `train-labels-idx1-ubyte` (or `t10k-…`), gzipped or not.
pub fn load_idx_split(dir: &Path, train: bool) -> Result<Dataset> {
    let prefix = if train { "train" } else { "t10k" };
    let missing = |stem: &str| {
        input_error(
            dir.display().to_string(),
            format!("no {stem} or {stem}.gz here"),
        )
    };
    let images_stem = format!("{prefix}-images-idx3-ubyte");
    let labels_stem = format!("{prefix}-labels-idx1-ubyte");
    let images_path = find_file(dir, &images_stem).ok_or_else(|| missing(&images_stem))?;
    let labels_path = find_file(dir, &labels_stem).ok_or_else(|| missing(&labels_stem))?;
    let images = idx::read_idx(&images_path)?;
    let labels = idx::read_idx(&labels_path)?;
    let &[n, h, w] = images.dims.as_slice() else {
        return Err(input_error(
            images_path.display().to_string(),
            format!("expected 3 dimensions (N, H, W), got {:?}", images.dims),
        ));
    };
    if n == 0 {
        return Err(input_error(
            images_path.display().to_string(),
            "holds no images",
        ));
    }
    // The configuration is checked, and its models built, for Fashion-MNIST's images.
    if [h, w] != IMAGE[1..] {
        return Err(input_error(
            images_path.display().to_string(),
            format!(
                "images are {h}×{w}; wgdistill's models are built for {}×{} Fashion-MNIST images",
                IMAGE[1], IMAGE[2]
            ),
        ));
    }
    if labels.dims != [n] {
        return Err(input_error(
            labels_path.display().to_string(),
            format!(
                "expected {n} labels to match the images, got dimensions {:?}",
                labels.dims
            ),
        ));
    }
    if let Some((i, &y)) = labels.data.iter().enumerate().find(|(_, y)| **y >= 10) {
        return Err(input_error(
            labels_path.display().to_string(),
            format!("label {y} at index {i} is out of range 0..10"),
        ));
    }
    let images = images
        .data
        .iter()
        .map(|&p| (f32::from(p) / 255.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD)
        .collect();
    Ok(Dataset {
        images,
        labels: labels.data.iter().map(|&y| i32::from(y)).collect(),
        shape: [1, h, w],
        classes: 10,
        source: format!(
            "{} ({})",
            dir.display(),
            if train { "train" } else { "test" }
        ),
    })
}

/// A learnable stand-in for Fashion-MNIST (1×28×28, 10 classes) when the files are absent:
/// each class is a distinct bar pattern under noise. Deterministic in `seed`.
pub fn synthetic(n: usize, seed: u64) -> Dataset {
    let noise = sample(n * 784, seed);
    let mut images = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let class = (i * 7 + seed as usize) % 10;
        for p in 0..784 {
            let (r, c) = (p / 28, p % 28);
            // Class k lights a horizontal band and a vertical band at class-specific positions.
            let lit = (r / 4 == class % 7) || (c / 4 == (class * 3 + 1) % 7);
            images.push(if lit { 1.0 } else { -0.5 } + 0.8 * noise[i * 784 + p]);
        }
        labels.push(class as i32);
    }
    Dataset {
        images,
        labels,
        shape: IMAGE,
        classes: 10,
        source: "built-in synthetic set".into(),
    }
}

/// The order of an epoch's samples: a seeded Fisher–Yates shuffle of `0..n`.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state =
        (seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xD134_2543_DE82_EF95) | 1;
    for i in (1..n).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order
}

/// Which images of a set with `labels` keep their label when only `n` do: a class-balanced
/// subset (`n / K` of each of the K classes, one more for the first `n mod K`; all of a class
/// with fewer), each class's images taken in one fixed shuffled order, so every seed and every
/// stage keeps the same labels. `n` at least the set's size keeps every label.
pub fn labelled_subset(labels: &[i32], n: usize) -> Vec<bool> {
    if n >= labels.len() {
        return vec![true; labels.len()];
    }
    let mut classes: Vec<i32> = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let k = classes.len().max(1);
    let mut quota: std::collections::BTreeMap<i32, usize> = classes
        .iter()
        .enumerate()
        .map(|(j, &c)| (c, n / k + usize::from(j < n % k)))
        .collect();
    let mut keep = vec![false; labels.len()];
    // A seed of its own: the subset must not move with the run's seed.
    for i in epoch_order(labels.len(), 0x1abe_11ed, 0) {
        if let Some(left) = quota.get_mut(&labels[i]).filter(|q| **q > 0) {
            *left -= 1;
            keep[i] = true;
        }
    }
    keep
}

/// Copies the samples `indices` into a batch (`x` of `indices.len()·C·H·W`, `y`), optionally
/// augmenting each image: a random crop after zero-padding by `pad` pixels, and a horizontal
/// flip with probability ½, drawn from `seed`.
pub fn fill_batch(
    ds: &Dataset,
    indices: &[usize],
    augment: Option<(usize, u64)>,
    x: &mut Vec<f32>,
    y: &mut Vec<i32>,
) {
    let [c, h, w] = ds.shape;
    let len = ds.sample_len();
    x.clear();
    y.clear();
    for (k, &i) in indices.iter().enumerate() {
        let img = &ds.images[i * len..(i + 1) * len];
        y.push(ds.labels[i]);
        let Some((pad, seed)) = augment else {
            x.extend_from_slice(img);
            continue;
        };
        let r = sample(3, seed.wrapping_add(k as u64 * 31 + i as u64));
        let span = 2 * pad + 1;
        let pick = |v: f32| (((v + 1.0) / 2.0 * span as f32) as usize).min(span - 1);
        let (dy, dx) = (
            pick(r[0]) as isize - pad as isize,
            pick(r[1]) as isize - pad as isize,
        );
        let flip = r[2] > 0.0;
        // Padding is zero in normalised units of the source's black pixel.
        let background = -FASHION_MNIST_MEAN / FASHION_MNIST_STD;
        for ch in 0..c {
            for row in 0..h {
                for col in 0..w {
                    let src_col = if flip { w - 1 - col } else { col } as isize + dx;
                    let src_row = row as isize + dy;
                    let inside =
                        (0..h as isize).contains(&src_row) && (0..w as isize).contains(&src_col);
                    x.push(if inside {
                        img[(ch * h + src_row as usize) * w + src_col as usize]
                    } else {
                        background
                    });
                }
            }
        }
    }
}
