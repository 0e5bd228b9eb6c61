//! Magnitude pruning during training (`prune = { … }` on a stage): the smallest weights of the
//! trained model's convolutions and linear layers are zeroed, to a target sparsity reached
//! gradually (Zhu & Gupta 2017), while the stage's terms (KD from a dense teacher, say) recover
//! the accuracy. The masks live in the compiled step, which applies them after every update
//! ([`crate::graph::TrainStep::compile_masked`]); this module chooses them, on the host, at the
//! start of each epoch from the weights as they are. A mask is a function of the weights and the
//! epoch alone: a resumed run recomputes the same one (pruned weights are zero, the smallest).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::error::input_error;
use crate::gpu::Gpu;
use crate::graph::{Graph, TrainStep, Weights};

use super::config::{Config, StageConfig};
use super::summary::SparsityReport;

type Fault = (String, String);

/// Which weights compete for pruning.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PruneScope {
    /// One threshold over all pruned layers: layers with many small weights lose more.
    #[default]
    Global,
    /// Each layer pruned to the sparsity on its own.
    Layer,
}

/// `prune = { sparsity, scope, begin_epoch, ramp_epochs }`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PruneConfig {
    /// The fraction of the pruned layers' weights that end as zero, in [0, 1).
    pub sparsity: f64,
    /// `global` (the default) or `layer`.
    #[serde(default)]
    pub scope: PruneScope,
    /// The first epoch (from 0) that prunes.
    #[serde(default)]
    pub begin_epoch: usize,
    /// Epochs over which the sparsity rises to its target, `s·(1 − (1 − k/n)³)` at the start of
    /// the k-th (Zhu & Gupta's cubic schedule, once per epoch); the rest fine-tune at the target.
    /// Half the stage's epochs (at least one) when absent.
    pub ramp_epochs: Option<usize>,
}

impl PruneConfig {
    /// The ramp's length in a stage of `epochs` epochs.
    pub fn ramp(&self, epochs: usize) -> usize {
        self.ramp_epochs.unwrap_or((epochs / 2).max(1))
    }

    /// The sparsity the masks have during epoch `epoch` (from 0).
    pub fn sparsity_at(&self, epoch: usize, epochs: usize) -> f64 {
        if epoch < self.begin_epoch {
            return 0.0;
        }
        let n = self.ramp(epochs) as f64;
        let k = ((epoch - self.begin_epoch + 1) as f64).min(n);
        self.sparsity * (1.0 - (1.0 - k / n).powi(3))
    }
}

/// The parameters pruning applies to: the weights of convolutions and linear layers (every
/// trainable parameter of two or more dimensions); biases and BatchNorm's are left dense.
pub fn prunable(graph: &Graph) -> Vec<String> {
    graph
        .trainable_params()
        .filter(|(_, n)| n.shape.len() >= 2)
        .map(|(_, n)| n.name.clone())
        .collect()
}

/// The stage's `prune` fits it: one model trained, a sparsity in [0, 1), a ramp that ends by
/// the last epoch. Errors name keys relative to the stage.
pub(super) fn check(stage: &StageConfig, _config: &Config) -> std::result::Result<(), Fault> {
    let Some(p) = &stage.prune else {
        return Ok(());
    };
    if stage.train.len() != 1 {
        return Err((
            "prune".into(),
            format!(
                "prunes the one model a stage trains, but it trains {}",
                stage.train.len()
            ),
        ));
    }
    if !(p.sparsity.is_finite() && (0.0..1.0).contains(&p.sparsity)) {
        return Err((
            "prune.sparsity".into(),
            format!("must be from 0 up to (not including) 1, got {}", p.sparsity),
        ));
    }
    let ramp = p.ramp(stage.epochs);
    if ramp == 0 {
        return Err(("prune.ramp_epochs".into(), "must be at least 1".into()));
    }
    if p.begin_epoch + ramp > stage.epochs {
        return Err((
            "prune".into(),
            format!(
                "begin_epoch {} + ramp_epochs {ramp} must not pass the stage's {} epochs",
                p.begin_epoch, stage.epochs
            ),
        ));
    }
    Ok(())
}

/// The masks for `sparsity` of the named parameters (host values): the `⌊sparsity · N⌋`
/// smallest magnitudes, over all of them (`Global`) or per parameter (`Layer`), are 0, the
/// rest 1. Ties break by position, so the choice is deterministic.
pub fn masks(
    params: &BTreeMap<String, Vec<f32>>,
    sparsity: f64,
    scope: PruneScope,
) -> BTreeMap<String, Vec<f32>> {
    let mut out: BTreeMap<String, Vec<f32>> = params
        .iter()
        .map(|(name, v)| (name.clone(), vec![1.0; v.len()]))
        .collect();
    let groups: Vec<Vec<&String>> = match scope {
        PruneScope::Global => vec![params.keys().collect()],
        PruneScope::Layer => params.keys().map(|k| vec![k]).collect(),
    };
    for group in groups {
        let mut all: Vec<(f32, usize, usize)> = group
            .iter()
            .enumerate()
            .flat_map(|(l, name)| {
                params[*name]
                    .iter()
                    .enumerate()
                    .map(move |(i, w)| (w.abs(), l, i))
            })
            .collect();
        let k = (sparsity * all.len() as f64).floor() as usize;
        if k == 0 {
            continue;
        }
        all.select_nth_unstable_by(k - 1, |a, b| {
            a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2)))
        });
        for &(_, l, i) in &all[..k] {
            if let Some(m) = out.get_mut(group[l]) {
                m[i] = 0.0;
            }
        }
    }
    out
}

/// How sparse `params` are: per parameter and over all, the fraction of zeros.
pub fn report(params: &BTreeMap<String, Vec<f32>>) -> SparsityReport {
    let zeros = |v: &[f32]| v.iter().filter(|w| **w == 0.0).count();
    let (mut z, mut n) = (0usize, 0usize);
    let layers = params
        .iter()
        .map(|(name, v)| {
            z += zeros(v);
            n += v.len();
            (name.clone(), zeros(v) as f64 / v.len().max(1) as f64)
        })
        .collect();
    SparsityReport {
        sparsity: z as f64 / n.max(1) as f64,
        pruned_weights: n,
        layers,
    }
}

/// Chooses the masks of epoch `epoch` from `weights` as they are, writes them to `step` and
/// zeroes the pruned weights now (so the epoch's evaluation and export see them pruned even
/// before its first update). Returns the sparsity the masks give.
pub fn prune_for_epoch(
    gpu: &Gpu,
    config: &PruneConfig,
    step: &TrainStep,
    weights: &Weights,
    epoch: usize,
    epochs: usize,
) -> Result<f64> {
    let names: Vec<String> = step.masked().map(str::to_string).collect();
    let mut params = BTreeMap::new();
    for name in &names {
        let t = weights
            .get(name)
            .ok_or_else(|| input_error(name, "a pruned parameter the model lacks"))?;
        params.insert(name.clone(), gpu.read::<f32>(t)?);
    }
    let chosen = masks(&params, config.sparsity_at(epoch, epochs), config.scope);
    for (name, mask) in &chosen {
        step.set_mask(gpu, name, mask)?;
        let w = params.get_mut(name).expect("read above");
        w.iter_mut().zip(mask).for_each(|(w, m)| *w *= m);
        gpu.write(weights.get(name).expect("read above"), w)?;
    }
    Ok(report(&params).sparsity)
}
