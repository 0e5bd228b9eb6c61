//! `summary.json`: each stage's models with their test accuracies, the stage's time and speed,
//! the adapter and the data; with several seeds, the mean, spread and per-seed values.

use std::path::Path;

use serde::Serialize;

use crate::Result;
use crate::error::input_error;
use crate::gpu::Gpu;
use crate::io;

/// The adapter a run used.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct AdapterSummary {
    /// Adapter name.
    pub name: String,
    /// Backend.
    pub backend: String,
    /// Driver and version.
    pub driver: String,
}

/// One model's result in a stage.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ModelResult {
    /// Model name.
    pub model: String,
    /// Test accuracy after the last epoch.
    pub test_accuracy: f64,
    /// Best test accuracy over the epochs.
    pub best_test_accuracy: f64,
    /// With several seeds: the mean of the final test accuracies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_accuracy_mean: Option<f64>,
    /// With several seeds: their sample standard deviation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_accuracy_std: Option<f64>,
    /// With several seeds: each seed's final test accuracy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_accuracy_per_seed: Option<Vec<f64>>,
    /// The test accuracy of its int8 export (`int8 = true`), run with the integer kernels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8_test_accuracy: Option<f64>,
    /// A multi-branch (ONE) model's branches alone, each as the cnn it deploys as
    /// (`checkpoints/NAME.branchB.safetensors`): their test accuracies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_test_accuracy: Option<Vec<f64>>,
    /// A pruned model's sparsity at the end of the stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<SparsityReport>,
}

impl ModelResult {
    /// A model's result with its final and best test accuracy, nothing else yet.
    pub fn new(model: &str, test_accuracy: f64, best_test_accuracy: f64) -> ModelResult {
        ModelResult {
            model: model.to_string(),
            test_accuracy,
            best_test_accuracy,
            test_accuracy_mean: None,
            test_accuracy_std: None,
            test_accuracy_per_seed: None,
            int8_test_accuracy: None,
            branch_test_accuracy: None,
            sparsity: None,
        }
    }
}

/// How sparse a pruned model ended.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct SparsityReport {
    /// The fraction of the pruned parameters' weights that are zero.
    pub sparsity: f64,
    /// How many weights the pruned parameters hold (the model's other parameters stay dense).
    pub pruned_weights: usize,
    /// Per pruned parameter, its fraction of zeros.
    pub layers: std::collections::BTreeMap<String, f64>,
}

/// One stage's result.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct StageSummary {
    /// Stage name.
    pub name: String,
    /// Epochs run.
    pub epochs: usize,
    /// Wall time of the stage, compile and evaluation included.
    pub wall_seconds: f64,
    /// Training samples per second.
    pub samples_per_second: f64,
    /// Models trained.
    pub models: Vec<ModelResult>,
    /// A lifelong stage's accuracy matrices, averages and forgetting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifelong: Option<super::lifelong::scores::LifelongSummary>,
}

/// `summary.json`.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Summary {
    /// The adapter.
    pub adapter: AdapterSummary,
    /// Where the data came from.
    pub data: String,
    /// Stages in order.
    pub stages: Vec<StageSummary>,
}

impl AdapterSummary {
    /// The adapter `gpu` runs on.
    pub fn of(gpu: &Gpu) -> AdapterSummary {
        let caps = gpu.caps();
        AdapterSummary {
            name: caps.name.clone(),
            backend: caps.backend.to_string(),
            driver: format!("{} {}", caps.driver, caps.driver_info)
                .trim()
                .to_string(),
        }
    }
}

/// Reads a run's `summary.json` (`path` names it in errors).
pub fn read_summary(path: &Path) -> Result<Summary> {
    let what = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| input_error(&what, format!("cannot read ({e})")))?;
    serde_json::from_str(&text)
        .map_err(|e| input_error(&what, format!("not a wgdistill summary ({e})")))
}

/// Writes `summary.json` into `out` (through a temporary file).
pub fn write_summary(out: &Path, summary: &Summary) -> Result<()> {
    let text = serde_json::to_string_pretty(summary)
        .map_err(|e| input_error("summary.json", e.to_string()))?;
    io::write_atomic(&out.join("summary.json"), text.as_bytes())
}

/// Combines the summaries of runs that differ only in their seed: each model gets the mean,
/// sample standard deviation and per-seed values of its final test accuracy; times are means.
pub fn aggregate(runs: &[Summary]) -> Summary {
    let mut out = runs[0].clone();
    let n = runs.len() as f64;
    for (i, stage) in out.stages.iter_mut().enumerate() {
        stage.wall_seconds = runs.iter().map(|r| r.stages[i].wall_seconds).sum::<f64>() / n;
        stage.samples_per_second = runs
            .iter()
            .map(|r| r.stages[i].samples_per_second)
            .sum::<f64>()
            / n;
        for (j, m) in stage.models.iter_mut().enumerate() {
            let values: Vec<f64> = runs
                .iter()
                .map(|r| r.stages[i].models[j].test_accuracy)
                .collect();
            let mean = values.iter().sum::<f64>() / n;
            let var = if values.len() > 1 {
                values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
            } else {
                0.0
            };
            m.test_accuracy = mean;
            m.best_test_accuracy = runs
                .iter()
                .map(|r| r.stages[i].models[j].best_test_accuracy)
                .fold(0.0, f64::max);
            m.test_accuracy_mean = Some(mean);
            m.test_accuracy_std = Some(var.sqrt());
            m.test_accuracy_per_seed = Some(values);
        }
        let lifelong: Option<Vec<_>> = runs.iter().map(|r| r.stages[i].lifelong.as_ref()).collect();
        stage.lifelong = lifelong.map(|l| super::lifelong::scores::LifelongSummary::aggregate(&l));
    }
    out
}
