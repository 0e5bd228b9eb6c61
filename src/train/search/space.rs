//! The search space of student architectures: MLPs (depth and widths), CNNs of conv-bn-relu-pool
//! blocks (depth, channels and kernel size: dense convolutions) and MobileNet-style networks of
//! depthwise-separable blocks (width multiplier); random sampling and the mutations evolution
//! makes.

use serde::{Deserialize, Serialize};

use crate::rng::Xorshift as Rng;
use crate::train::config::ModelConfig;

/// An architecture family.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Linear layers with ReLU.
    Mlp,
    /// Dense convolution blocks.
    Cnn,
    /// Depthwise-separable blocks.
    Mobilenet,
}

/// `[search.space]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceConfig {
    /// The families searched.
    #[serde(default = "all_families")]
    pub families: Vec<Family>,
    /// An MLP's hidden layers, `[least, most]`.
    #[serde(default = "one_to_three")]
    pub mlp_depth: [usize; 2],
    /// The widths an MLP's hidden layer may take.
    #[serde(default = "mlp_widths")]
    pub mlp_widths: Vec<usize>,
    /// A CNN's blocks, `[least, most]` (each halves the map: at most 4 on 28×28).
    #[serde(default = "one_to_three")]
    pub cnn_depth: [usize; 2],
    /// The channels a CNN block may take.
    #[serde(default = "cnn_channels")]
    pub cnn_channels: Vec<usize>,
    /// The kernel sizes a CNN's convolutions may take (one per network).
    #[serde(default = "cnn_kernels")]
    pub cnn_kernels: Vec<usize>,
    /// The width multipliers a MobileNet-style network may take.
    #[serde(default = "mobilenet_widths")]
    pub mobilenet_widths: Vec<f64>,
}

fn all_families() -> Vec<Family> {
    vec![Family::Mlp, Family::Cnn, Family::Mobilenet]
}
fn one_to_three() -> [usize; 2] {
    [1, 3]
}
fn mlp_widths() -> Vec<usize> {
    vec![32, 64, 128, 256, 512]
}
fn cnn_channels() -> Vec<usize> {
    vec![8, 16, 32, 64]
}
fn cnn_kernels() -> Vec<usize> {
    vec![3]
}
fn three() -> usize {
    3
}
fn is_three(k: &usize) -> bool {
    *k == 3
}
fn mobilenet_widths() -> Vec<f64> {
    vec![0.25, 0.5, 0.75]
}

impl Default for SpaceConfig {
    fn default() -> Self {
        Self {
            families: all_families(),
            mlp_depth: one_to_three(),
            mlp_widths: mlp_widths(),
            cnn_depth: one_to_three(),
            cnn_channels: cnn_channels(),
            cnn_kernels: cnn_kernels(),
            mobilenet_widths: mobilenet_widths(),
        }
    }
}

/// One architecture of the space.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "arch", rename_all = "lowercase")]
pub enum Candidate {
    /// An MLP with these hidden widths.
    Mlp {
        /// Hidden widths.
        hidden: Vec<usize>,
    },
    /// A CNN with these channels per block.
    Cnn {
        /// Channels per block.
        channels: Vec<usize>,
        /// Its convolutions' kernel size.
        #[serde(default = "three", skip_serializing_if = "is_three")]
        kernel: usize,
    },
    /// A MobileNet-style network at this width multiplier.
    Mobilenet {
        /// Width multiplier.
        width: f64,
    },
}

impl Candidate {
    /// A short name that identifies it (the cache's key and its folder's name).
    pub fn key(&self) -> String {
        let join = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join("-");
        match self {
            Candidate::Mlp { hidden } => format!("mlp-{}", join(hidden)),
            Candidate::Cnn {
                channels,
                kernel: 3,
            } => format!("cnn-{}", join(channels)),
            Candidate::Cnn { channels, kernel } => format!("cnn-{}-k{kernel}", join(channels)),
            Candidate::Mobilenet { width } => format!("mobilenet-{width}"),
        }
    }

    /// The model configuration it stands for.
    pub fn model(&self) -> ModelConfig {
        let text = match self {
            Candidate::Mlp { hidden } => format!("arch = \"mlp\"\nhidden = {hidden:?}"),
            Candidate::Cnn { channels, kernel } => {
                format!("arch = \"cnn\"\nchannels = {channels:?}\nkernel = {kernel}")
            }
            Candidate::Mobilenet { width } => format!("arch = \"mobilenet\"\nwidth = {width:?}"),
        };
        // The texts above are the model tables' own keys: they always parse.
        toml::from_str(&text).expect("a candidate's model table")
    }
}

/// A uniform pick from a non-empty slice.
fn pick<T: Copy>(rng: &mut Rng, from: &[T]) -> T {
    from[rng.below(from.len())]
}

impl SpaceConfig {
    /// Checks the space; errors name keys relative to it.
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.families.is_empty() {
            return Err(("families".into(), "name at least one family".into()));
        }
        for (key, [lo, hi], most) in [
            ("mlp_depth", self.mlp_depth, 8),
            ("cnn_depth", self.cnn_depth, 4),
        ] {
            if lo == 0 || lo > hi || hi > most {
                return Err((
                    key.into(),
                    format!(
                        "must be [least, most] with 1 ≤ least ≤ most ≤ {most}, got [{lo}, {hi}]"
                    ),
                ));
            }
        }
        for (key, v) in [
            ("mlp_widths", &self.mlp_widths),
            ("cnn_channels", &self.cnn_channels),
        ] {
            if v.is_empty() || v.iter().any(|&w| w == 0 || w > 4096) {
                return Err((
                    key.into(),
                    format!("must list widths from 1 to 4096, got {v:?}"),
                ));
            }
        }
        let k = &self.cnn_kernels;
        if k.is_empty() || k.iter().any(|k| !matches!(k, 1 | 3 | 5 | 7)) {
            return Err((
                "cnn_kernels".into(),
                format!("must list kernel sizes among 1, 3, 5 and 7, got {k:?}"),
            ));
        }
        let w = &self.mobilenet_widths;
        if w.is_empty() || w.iter().any(|&m| !(m > 0.0 && m <= 2.0)) {
            return Err((
                "mobilenet_widths".into(),
                format!("must list multipliers in (0, 2], got {w:?}"),
            ));
        }
        Ok(())
    }

    /// A candidate drawn uniformly: a family, then a depth, then each width.
    pub fn sample(&self, rng: &mut Rng) -> Candidate {
        let depth = |rng: &mut Rng, [lo, hi]: [usize; 2]| lo + rng.below(hi - lo + 1);
        match pick(rng, &self.families) {
            Family::Mlp => {
                let n = depth(rng, self.mlp_depth);
                Candidate::Mlp {
                    hidden: (0..n).map(|_| pick(rng, &self.mlp_widths)).collect(),
                }
            }
            Family::Cnn => {
                let n = depth(rng, self.cnn_depth);
                Candidate::Cnn {
                    channels: (0..n).map(|_| pick(rng, &self.cnn_channels)).collect(),
                    kernel: pick(rng, &self.cnn_kernels),
                }
            }
            Family::Mobilenet => Candidate::Mobilenet {
                width: pick(rng, &self.mobilenet_widths),
            },
        }
    }

    /// A small change of `parent`: one width (or a CNN's kernel size) moved to a neighbouring
    /// choice, a layer added or removed (within the depth range), or, one time in ten, a fresh
    /// sample.
    pub fn mutate(&self, parent: &Candidate, rng: &mut Rng) -> Candidate {
        if rng.below(10) == 0 {
            return self.sample(rng);
        }
        // Moves `v` to a neighbour in `choices` (sorted), or keeps it at an end.
        fn step<T: Copy + PartialOrd>(rng: &mut Rng, v: T, choices: &[T]) -> T {
            let mut sorted = choices.to_vec();
            sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            let i = sorted
                .iter()
                .position(|&c| c >= v)
                .unwrap_or(sorted.len() - 1);
            let j = if rng.below(2) == 0 {
                i.saturating_sub(1)
            } else {
                (i + 1).min(sorted.len() - 1)
            };
            sorted[j]
        }
        let layers = |rng: &mut Rng, v: &[usize], choices: &[usize], [lo, hi]: [usize; 2]| {
            let mut v = v.to_vec();
            match rng.below(3) {
                0 if v.len() < hi => {
                    let at = rng.below(v.len() + 1);
                    v.insert(at, pick(rng, choices));
                }
                1 if v.len() > lo => {
                    v.remove(rng.below(v.len()));
                }
                _ => {
                    let at = rng.below(v.len());
                    v[at] = step(rng, v[at], choices);
                }
            }
            v
        };
        match parent {
            Candidate::Mlp { hidden } if self.families.contains(&Family::Mlp) => Candidate::Mlp {
                hidden: layers(rng, hidden, &self.mlp_widths, self.mlp_depth),
            },
            Candidate::Cnn { channels, kernel } if self.families.contains(&Family::Cnn) => {
                // One mutation in four changes the kernel size, where the space has several.
                if self.cnn_kernels.len() > 1 && rng.below(4) == 0 {
                    Candidate::Cnn {
                        channels: channels.clone(),
                        kernel: step(rng, *kernel, &self.cnn_kernels),
                    }
                } else {
                    Candidate::Cnn {
                        channels: layers(rng, channels, &self.cnn_channels, self.cnn_depth),
                        kernel: *kernel,
                    }
                }
            }
            Candidate::Mobilenet { width } if self.families.contains(&Family::Mobilenet) => {
                Candidate::Mobilenet {
                    width: step(rng, *width, &self.mobilenet_widths),
                }
            }
            _ => self.sample(rng),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_mutations_stay_in_the_space() {
        let space = SpaceConfig {
            cnn_kernels: vec![3, 5],
            ..SpaceConfig::default()
        };
        let mut rng = Rng::new(3);
        let inside = |c: &Candidate| match c {
            Candidate::Mlp { hidden } => {
                (1..=3).contains(&hidden.len())
                    && hidden.iter().all(|w| space.mlp_widths.contains(w))
            }
            Candidate::Cnn { channels, kernel } => {
                (1..=3).contains(&channels.len())
                    && channels.iter().all(|w| space.cnn_channels.contains(w))
                    && space.cnn_kernels.contains(kernel)
            }
            Candidate::Mobilenet { width } => space.mobilenet_widths.contains(width),
        };
        let mut keys = std::collections::BTreeSet::new();
        let mut c = space.sample(&mut rng);
        for _ in 0..500 {
            assert!(inside(&c), "{c:?}");
            keys.insert(c.key());
            // Every candidate is a model the configuration accepts.
            c.model().check().unwrap();
            c = if rng.below(2) == 0 {
                space.mutate(&c, &mut rng)
            } else {
                space.sample(&mut rng)
            };
        }
        // The walk explores: all three families and many distinct architectures.
        for family in ["mlp-", "cnn-", "mobilenet-"] {
            assert!(keys.iter().any(|k| k.starts_with(family)), "{family}");
        }
        assert!(keys.len() > 100, "{}", keys.len());
        // Both kernel sizes are drawn; 3×3 keeps the key it had before kernels were searched.
        assert!(
            keys.iter()
                .any(|k| k.starts_with("cnn-") && k.ends_with("-k5"))
        );
        assert!(
            keys.iter()
                .any(|k| k.starts_with("cnn-") && !k.contains("-k"))
        );
        let k5 = Candidate::Cnn {
            channels: vec![8],
            kernel: 5,
        };
        let ModelConfig::Cnn { kernel, .. } = k5.model() else {
            panic!("{:?}", k5.model())
        };
        assert_eq!(kernel, 5);
        let only_cnn = SpaceConfig {
            families: vec![Family::Cnn],
            ..SpaceConfig::default()
        };
        let m = only_cnn.mutate(&Candidate::Mlp { hidden: vec![32] }, &mut rng);
        assert!(matches!(m, Candidate::Cnn { .. }), "{m:?}");
    }
}
