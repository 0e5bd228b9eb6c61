//! The results table: a run's `summary.json` (one seed, or the mean ± std of `--seeds N`) as a
//! Markdown table and as JSON, both made from the same rows so that they always agree.

use serde::{Deserialize, Serialize};

use super::summary::{AdapterSummary, Summary};

/// One trained model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResultRow {
    /// The stage (the method, in `configs/results.toml`).
    pub stage: String,
    /// The model trained.
    pub model: String,
    /// Final test accuracy, mean over the seeds.
    pub mean: f64,
    /// Sample standard deviation over the seeds (0 with one).
    pub std: f64,
    /// Each seed's final test accuracy.
    pub per_seed: Vec<f64>,
    /// Mean minus the baseline stage's mean, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_baseline: Option<f64>,
    /// Epochs.
    pub epochs: usize,
    /// Wall time of the stage, mean over the seeds.
    pub wall_seconds: f64,
    /// Training samples per second, mean over the seeds.
    pub samples_per_second: f64,
}

/// A results table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    /// Where it ran.
    pub adapter: AdapterSummary,
    /// The data.
    pub data: String,
    /// The stage the others are compared with.
    pub baseline: Option<String>,
    /// One row per trained model, in stage order.
    pub rows: Vec<ResultRow>,
}

/// The rows of a summary; `baseline` names the stage to compare with (its first model).
pub fn results(summary: &Summary, baseline: Option<&str>) -> Results {
    let mut rows: Vec<ResultRow> = Vec::new();
    for stage in &summary.stages {
        for m in &stage.models {
            let per_seed = m
                .test_accuracy_per_seed
                .clone()
                .unwrap_or_else(|| vec![m.test_accuracy]);
            rows.push(ResultRow {
                stage: stage.name.clone(),
                model: m.model.clone(),
                mean: m.test_accuracy_mean.unwrap_or(m.test_accuracy),
                std: m.test_accuracy_std.unwrap_or(0.0),
                per_seed,
                vs_baseline: None,
                epochs: stage.epochs,
                wall_seconds: stage.wall_seconds,
                samples_per_second: stage.samples_per_second,
            });
        }
    }
    let base = baseline.and_then(|b| rows.iter().find(|r| r.stage == b).map(|r| r.mean));
    if let Some(base) = base {
        for r in &mut rows {
            r.vs_baseline = Some(r.mean - base);
        }
    }
    Results {
        adapter: summary.adapter.clone(),
        data: summary.data.clone(),
        baseline: base.and(baseline.map(str::to_string)),
        rows,
    }
}

/// The table in Markdown: accuracies in percent, mean ± std over the seeds.
pub fn markdown(r: &Results) -> String {
    let seeds = r.rows.first().map_or(0, |row| row.per_seed.len());
    let versus = r.baseline.as_deref().unwrap_or("baseline");
    let mut out = format!(
        "| stage | model | test accuracy, % ({seeds} seed{}) | vs {versus} | epochs | wall s | samples/s |\n|---|---|---|---|---|---|---|\n",
        if seeds == 1 { "" } else { "s" }
    );
    for row in &r.rows {
        let vs = match row.vs_baseline {
            Some(d) if row.stage != versus => format!("{:+.2}", 100.0 * d),
            _ => "–".to_string(),
        };
        out.push_str(&format!(
            "| {} | {} | {:.2} ± {:.2} | {vs} | {} | {:.1} | {:.0} |\n",
            row.stage,
            row.model,
            100.0 * row.mean,
            100.0 * row.std,
            row.epochs,
            row.wall_seconds,
            row.samples_per_second
        ));
    }
    out.push_str(&format!(
        "\nAdapter: {} ({}, {}). Data: {}.\n",
        r.adapter.name, r.adapter.backend, r.adapter.driver, r.data
    ));
    out
}
