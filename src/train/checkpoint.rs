//! A run's output folder: each model's checkpoint (`checkpoints/NAME.safetensors`, PyTorch's
//! `state_dict()` names), the step state that `--resume` needs beside it (optimizer state, step
//! counter, adapters; self-distillation heads), `progress.json` (where the run stands),
//! `metrics.jsonl` (one line per model per epoch) and `curves.svg`. Every file is written through
//! a temporary file and renamed.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::error::input_error;
use crate::gpu::Gpu;
use crate::graph::{Graph, Op, Weights};
use crate::io::{self, HostTensor, TensorMap};

use super::config::Config;
use super::summary::{StageSummary, Summary};

/// Where a run stands, written after every epoch (`progress.json`) so `--resume` can go on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Progress {
    /// The stage in progress.
    pub stage: usize,
    /// Its completed epochs.
    pub epoch: usize,
    /// Its models' best test accuracies so far.
    pub best: Vec<f64>,
    /// Its models' last test accuracies.
    pub accuracy: Vec<f64>,
    /// Completed stages.
    pub done: Vec<StageSummary>,
}

impl Progress {
    /// Stages `..stage` done (as `done` says), the next not started.
    pub fn between_stages(stage: usize, done: &[StageSummary]) -> Progress {
        Progress {
            stage,
            epoch: 0,
            best: vec![],
            accuracy: vec![],
            done: done.to_vec(),
        }
    }
}

/// A run's output folder.
#[derive(Clone, Debug)]
pub struct RunFolder {
    out: PathBuf,
}

impl RunFolder {
    /// The folder `out`, with its `checkpoints/` created.
    pub fn create(out: &Path) -> Result<RunFolder> {
        let folder = RunFolder {
            out: out.to_path_buf(),
        };
        let dir = folder.checkpoints();
        std::fs::create_dir_all(&dir)
            .map_err(|e| input_error(dir.display().to_string(), format!("cannot create ({e})")))?;
        Ok(folder)
    }

    /// The folder itself.
    pub fn path(&self) -> &Path {
        &self.out
    }

    fn checkpoints(&self) -> PathBuf {
        self.out.join("checkpoints")
    }

    /// `checkpoints/NAME.safetensors`: a model as PyTorch loads it.
    pub fn model(&self, name: &str) -> PathBuf {
        self.checkpoints().join(format!("{name}.safetensors"))
    }

    /// The step state of the models trained together under `key` (`a+b` for peers).
    pub fn train_state(&self, key: &str) -> PathBuf {
        self.checkpoints()
            .join(format!("{key}.train-state.safetensors"))
    }

    /// The self-distillation heads of `key`.
    pub fn heads(&self, key: &str) -> PathBuf {
        self.checkpoints().join(format!("{key}.heads.safetensors"))
    }

    fn progress_path(&self) -> PathBuf {
        self.out.join("progress.json")
    }

    fn metrics_path(&self) -> PathBuf {
        self.out.join("metrics.jsonl")
    }

    /// Whether a run has left progress here to resume.
    pub fn has_progress(&self) -> bool {
        self.progress_path().is_file()
    }

    /// The progress an interrupted run left.
    pub fn read_progress(&self) -> Result<Progress> {
        let path = self.progress_path();
        let what = path.display().to_string();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| input_error(&what, format!("nothing to resume ({e})")))?;
        serde_json::from_str(&text).map_err(|e| input_error(&what, e.to_string()))
    }

    /// Records where the run stands.
    pub fn write_progress(&self, progress: &Progress) -> Result<()> {
        write_json(&self.progress_path(), progress)
    }

    /// Starts `metrics.jsonl` afresh (a new run).
    pub fn clear_metrics(&self) {
        let _ = std::fs::remove_file(self.metrics_path());
    }

    /// Appends one line to `metrics.jsonl` and redraws `curves.svg`.
    pub fn append_metrics(&self, line: &serde_json::Value) -> Result<()> {
        let path = self.metrics_path();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"))
            .map_err(|e| input_error(path.display().to_string(), format!("cannot write ({e})")))
    }

    /// Redraws `curves.svg` from `metrics.jsonl`.
    pub fn draw_curves(&self) -> Result<()> {
        super::curves::write_curves(&self.out)
    }

    /// Reads a model's checkpoint into weights for `graph`.
    pub fn load_model(&self, gpu: &Gpu, name: &str, graph: &Graph) -> Result<Weights> {
        let path = self.model(name);
        let host = io::read_safetensors(&path)?;
        Weights::load(gpu, graph, &path.display().to_string(), &host)
    }

    /// Writes a model's checkpoint ([`export`]).
    pub fn save_model(
        &self,
        gpu: &Gpu,
        name: &str,
        graph: &Graph,
        weights: &Weights,
        steps: u32,
    ) -> Result<()> {
        io::write_safetensors(&self.model(name), &export(gpu, graph, weights, steps)?)
    }
}

/// A model's checkpoint as PyTorch's `state_dict()` holds it: every parameter and buffer, plus
/// each BatchNorm's `num_batches_tracked` (the training steps of the stage that produced it; an
/// i32 scalar, which `load_state_dict` copies into its int64 buffer), so that PyTorch loads it
/// with `strict=True`.
pub fn export(gpu: &Gpu, graph: &Graph, weights: &Weights, steps: u32) -> Result<TensorMap> {
    let mut out = weights.to_host(gpu)?;
    for node in &graph.nodes {
        if let Op::BatchNorm { running_mean, .. } = node.op {
            let mean = &graph.nodes[running_mean.0].name;
            if let Some(prefix) = mean.strip_suffix(".running_mean") {
                let count = i32::try_from(steps).unwrap_or(i32::MAX);
                out.insert(
                    format!("{prefix}.num_batches_tracked"),
                    HostTensor::i32(&[], vec![count]),
                );
            }
        }
    }
    Ok(out)
}

/// Writes `value` as pretty JSON to `path`, through a temporary file.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| input_error(path.display().to_string(), e.to_string()))?;
    io::write_atomic(path, text.as_bytes())
}

/// Prepares the folder `out` of a later seed to start from the first seed's `once` stages
/// (`first` is that seed's folder, complete): their models' checkpoints are copied and a
/// `progress.json` marks those stages done, so that resuming `out` trains the rest.
pub fn start_from_first_seed(config: &Config, first: &Path, out: &Path) -> Result<()> {
    let once = config.once_stages();
    let summary_path = first.join("summary.json");
    let what = summary_path.display().to_string();
    let text = std::fs::read_to_string(&summary_path).map_err(|e| {
        input_error(
            &what,
            format!("the first seed's summary is needed for its once stages ({e})"),
        )
    })?;
    let first_summary: Summary =
        serde_json::from_str(&text).map_err(|e| input_error(&what, e.to_string()))?;
    if first_summary.stages.len() < once {
        return Err(input_error(
            summary_path.display().to_string(),
            format!(
                "has {} stages, the once stages are {once}",
                first_summary.stages.len()
            ),
        ));
    }
    let (from, to) = (RunFolder::create(first)?, RunFolder::create(out)?);
    for model in config.stages[..once].iter().flat_map(|s| &s.train) {
        let (src, dst) = (from.model(model), to.model(model));
        std::fs::copy(&src, &dst).map_err(|e| {
            input_error(
                src.display().to_string(),
                format!("cannot copy to {} ({e})", dst.display()),
            )
        })?;
    }
    to.clear_metrics();
    to.write_progress(&Progress::between_stages(
        once,
        &first_summary.stages[..once],
    ))
}
