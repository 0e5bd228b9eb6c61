//! A run's output folder, written so that a crash or a full disk at any point costs at most the
//! epoch in progress:
//!
//! - `state/sS-eE/`: everything `--resume` needs after epoch E of stage S: each trained model
//!   (PyTorch's `state_dict()` names), the step state (optimizer state, step counter, adapters)
//!   and self-distillation heads. An epoch's folder is written whole under a `.partial` name and
//!   renamed, so it exists complete or not at all.
//! - `progress.json`: where the run stands and which state folder holds it, rewritten atomically
//!   after the folder is in place: the single switch from one epoch to the next. It records the
//!   configuration's fingerprint and each stage's: `--resume` refuses another configuration;
//!   `--update` keeps the finished stages whose fingerprint is unchanged and trains the others.
//! - `checkpoints/NAME.safetensors` (and `NAME.heads.safetensors`): the trained models for users,
//!   copied from the state after the switch; `metrics.jsonl` (one line per model per epoch,
//!   trimmed on resume to the epochs the progress holds) and `curves.svg`.
//! - `.lock`: held while a run writes the folder; a second run on it is refused.
//!
//! Every file is written through a temporary file and a rename.

use std::cell::Cell;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::error::input_error;
use crate::gpu::Gpu;
use crate::graph::{Graph, Op, Weights};
use crate::io::{self, HostTensor, TensorMap};

use super::config::{Config, StageKind};
use super::data_free::{synthetic_dir, synthetic_set};
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
    /// The fingerprint of the configuration the run was started with.
    #[serde(default)]
    pub config: String,
    /// Its stages' fingerprints ([`Config::stage_fingerprints`]; absent from runs made before
    /// them, which resume only with the same configuration).
    #[serde(default)]
    pub stages: Vec<String>,
}

impl Progress {
    /// Stages `..stage` done (as `done` says), the next not started.
    pub fn between_stages(config: &Config, stage: usize, done: &[StageSummary]) -> Progress {
        Progress::after_epoch(config, stage, 0, (vec![], vec![]), done)
    }

    /// Epoch `epoch` (1-based) of stage `stage` done, with its models' (best, last) test
    /// accuracies, after the stages `done`.
    pub fn after_epoch(
        config: &Config,
        stage: usize,
        epoch: usize,
        (best, accuracy): (Vec<f64>, Vec<f64>),
        done: &[StageSummary],
    ) -> Progress {
        Progress {
            stage,
            epoch,
            best,
            accuracy,
            done: done.to_vec(),
            config: config.fingerprint(),
            stages: config.stage_fingerprints(),
        }
    }

    /// Which of `config`'s stages this progress holds finished: with the configuration the run
    /// started with, those before `stage`; with another, the finished ones whose fingerprint is
    /// unchanged (the others train again).
    pub fn finished(&self, config: &Config) -> Vec<bool> {
        let unchanged = self.unchanged_stages(config);
        (0..config.stages.len())
            .map(|i| i < self.done.len() && unchanged[i])
            .collect()
    }

    /// The stage whose completed epochs go on: the one in progress, after at least one epoch,
    /// when its fingerprint is unchanged.
    pub fn in_progress(&self, config: &Config) -> Option<usize> {
        let unchanged = self.unchanged_stages(config);
        (self.epoch > 0 && unchanged.get(self.stage) == Some(&true)).then_some(self.stage)
    }

    /// Per stage of `config`: whether this progress recorded it as it is now (every stage, with
    /// the configuration the run started with).
    fn unchanged_stages(&self, config: &Config) -> Vec<bool> {
        if self.config == config.fingerprint() {
            return vec![true; config.stages.len()];
        }
        let prints = config.stage_fingerprints();
        (0..prints.len())
            .map(|i| self.stages.get(i) == Some(&prints[i]))
            .collect()
    }

    /// Checks that this progress belongs to `config` and describes a point inside it; `what`
    /// names the file in errors.
    fn check(&self, config: &Config, changed: bool, what: &str) -> Result<()> {
        if !self.config.is_empty() && self.config != config.fingerprint() {
            if changed && !self.stages.is_empty() {
                // Another configuration: its unchanged stages are kept, the others train again.
                return Ok(());
            }
            let message = if changed {
                "the run was started with another configuration, before runs recorded their \
                 stages: resume it with the same one, or start afresh in another folder"
            } else {
                "the run was started with another configuration (or seed); resume it with the \
                 same one, update it (--update keeps its unchanged stages and trains the rest), \
                 or start afresh in another folder"
            };
            return Err(input_error(what, message));
        }
        let fault = |m: String| {
            Err(input_error(
                what,
                format!("{m}: not a progress of this configuration"),
            ))
        };
        let stages = config.stages.len();
        if self.stage > stages || self.done.len() != self.stage.min(stages) {
            return fault(format!(
                "stage {} with {} stages done, of {stages}",
                self.stage,
                self.done.len()
            ));
        }
        if let Some(stage) = config.stages.get(self.stage) {
            let models = stage.train.len();
            if self.epoch > stage.total_epochs() {
                return fault(format!(
                    "epoch {} of a {}-epoch stage",
                    self.epoch,
                    stage.total_epochs()
                ));
            }
            if self.epoch > 0 && (self.best.len() != models || self.accuracy.len() != models) {
                return fault(format!(
                    "accuracies for {} of {models} models",
                    self.accuracy.len()
                ));
            }
        }
        Ok(())
    }
}

/// The files of one epoch of a stage, committed together by [`RunFolder::commit_epoch`].
pub struct EpochFiles {
    /// Each trained model's name and export.
    pub models: Vec<(String, TensorMap)>,
    /// The step state, under the key of the models trained together.
    pub state: (String, TensorMap),
    /// Self-distillation heads, under the same key.
    pub heads: Option<TensorMap>,
    /// One `metrics.jsonl` line per model.
    pub metrics: Vec<serde_json::Value>,
    /// The progress after the epoch.
    pub progress: Progress,
}

/// The lock a run holds on its folder while it writes there.
pub struct RunLock {
    _file: File,
}

/// A run's output folder.
#[derive(Debug)]
pub struct RunFolder {
    out: PathBuf,
    // For the fault-injection test: the 1-based write that fails as a full disk would.
    fail_write: Option<usize>,
    writes: Cell<usize>,
}

/// Tries of a busy folder's lock after the first, 100 ms apart.
const LOCK_RETRIES: usize = 20;

impl RunFolder {
    /// The folder `out`, with its `checkpoints/` and `state/` created.
    pub fn create(out: &Path) -> Result<RunFolder> {
        let folder = RunFolder {
            out: out.to_path_buf(),
            fail_write: None,
            writes: Cell::new(0),
        };
        for dir in [folder.checkpoints(), folder.states()] {
            std::fs::create_dir_all(&dir).map_err(|e| {
                input_error(dir.display().to_string(), format!("cannot create ({e})"))
            })?;
        }
        Ok(folder)
    }

    /// The same folder, failing its `n`th file write (1-based) as a full disk would: for testing
    /// that a crash at any write costs at most the epoch in progress.
    pub fn failing_write(mut self, n: Option<usize>) -> RunFolder {
        self.fail_write = n;
        self
    }

    /// Takes the folder's lock, or says that another run holds it.
    pub fn lock(&self) -> Result<RunLock> {
        let path = self.out.join(".lock");
        let what = path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| input_error(&what, format!("cannot open ({e})")))?;
        // A lock can outlive its holder by a moment: a process forked by another thread (a
        // `Command` spawn) shares the lock's open file until it execs. So a busy folder is
        // tried for up to two seconds before it is reported: a real run holds it far longer.
        for attempt in 0..=LOCK_RETRIES {
            match file.try_lock() {
                Ok(()) => return Ok(RunLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if attempt < LOCK_RETRIES => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(std::fs::TryLockError::WouldBlock) => break,
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(input_error(&what, format!("cannot lock ({e})")));
                }
            }
        }
        Err(input_error(
            self.out.display().to_string(),
            "another wgdistill run is writing to this folder; wait for it or use another --out",
        ))
    }

    /// The folder itself.
    pub fn path(&self) -> &Path {
        &self.out
    }

    fn checkpoints(&self) -> PathBuf {
        self.out.join("checkpoints")
    }

    fn states(&self) -> PathBuf {
        self.out.join("state")
    }

    /// The state folder of epoch `epoch` (1-based, completed) of stage `stage`.
    pub fn state(&self, stage: usize, epoch: usize) -> PathBuf {
        self.states().join(format!("s{stage}-e{epoch}"))
    }

    /// `checkpoints/NAME.safetensors`: a model as PyTorch loads it.
    pub fn model(&self, name: &str) -> PathBuf {
        self.checkpoints().join(format!("{name}.safetensors"))
    }

    /// `checkpoints/NAME.int8.safetensors`: a model's int8 export (`int8 = true`).
    pub fn int8_model(&self, name: &str) -> PathBuf {
        self.checkpoints().join(format!("{name}.int8.safetensors"))
    }

    /// `checkpoints/NAME.branchB.safetensors`: branch B of a multi-branch model as a cnn.
    pub fn branch_model(&self, name: &str, branch: usize) -> PathBuf {
        self.checkpoints()
            .join(format!("{name}.branch{branch}.safetensors"))
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

    /// Counts a file write, and fails it where the test asks.
    fn count_write(&self, path: &Path) -> Result<()> {
        let n = self.writes.get() + 1;
        self.writes.set(n);
        if self.fail_write == Some(n) {
            return Err(input_error(
                path.display().to_string(),
                "cannot write (no space left on device: simulated)",
            ));
        }
        Ok(())
    }

    /// One file write, through a temporary file and a rename.
    fn write(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        self.count_write(path)?;
        io::write_atomic(path, bytes)
    }

    /// One tensor file, written like every file of the run (atomically, counted for fault
    /// injection).
    pub fn write_tensors(&self, path: &Path, tensors: &TensorMap) -> Result<()> {
        self.write(path, &io::serialize_safetensors(path, tensors)?)
    }

    /// Writes `value` as pretty JSON to `path`.
    pub fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<()> {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| input_error(path.display().to_string(), e.to_string()))?;
        self.write(path, text.as_bytes())
    }

    /// The progress an interrupted run left, checked against `config`; with `changed`, a
    /// configuration changed since the run began is taken too (its unchanged stages are kept).
    pub fn read_progress(&self, config: &Config, changed: bool) -> Result<Progress> {
        let path = self.progress_path();
        let what = path.display().to_string();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| input_error(&what, format!("nothing to resume ({e})")))?;
        let progress: Progress =
            serde_json::from_str(&text).map_err(|e| input_error(&what, e.to_string()))?;
        progress.check(config, changed, &what)?;
        Ok(progress)
    }

    /// Records where the run stands (between stages, or for a later seed's start).
    pub fn write_progress(&self, progress: &Progress) -> Result<()> {
        self.write_json(&self.progress_path(), progress)
    }

    /// Starts `metrics.jsonl` afresh (a new run).
    pub fn clear_metrics(&self) {
        let _ = std::fs::remove_file(self.metrics_path());
    }

    /// Keeps the `metrics.jsonl` lines of the epochs `progress` holds (a crash after an epoch's
    /// lines were appended but before its progress was recorded leaves lines the resumed run
    /// writes again).
    pub fn trim_metrics(&self, config: &Config, progress: &Progress) -> Result<()> {
        let path = self.metrics_path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let stage_index = |name: &str| config.stages.iter().position(|s| s.name == name);
        let (finished, in_progress) = (progress.finished(config), progress.in_progress(config));
        let kept: String = text
            .lines()
            .filter(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                let stage = v["stage"].as_str().and_then(stage_index);
                let epoch = v["epoch"].as_u64().unwrap_or(u64::MAX) as usize;
                match stage {
                    Some(s) if finished[s] => true,
                    Some(s) => in_progress == Some(s) && epoch <= progress.epoch,
                    None => false,
                }
            })
            .flat_map(|l| [l, "\n"])
            .collect();
        if kept != text {
            self.write(&path, kept.as_bytes())?;
        }
        Ok(())
    }

    /// Commits the files of epoch `epoch` (1-based) of stage `stage`: the state folder, written
    /// whole and renamed into place; the metrics lines; `progress.json`, the switch; then the
    /// users' checkpoints and the curves, and the state folders no longer needed are removed.
    pub fn commit_epoch(&self, stage: usize, epoch: usize, files: &EpochFiles) -> Result<()> {
        let dir = self.state(stage, epoch);
        let partial = dir.with_extension("partial");
        let fs_error = |p: &Path, e: std::io::Error| {
            input_error(p.display().to_string(), format!("cannot write ({e})"))
        };
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).map_err(|e| fs_error(&partial, e))?;
        for (name, tensors) in &files.models {
            self.write_tensors(&partial.join(format!("{name}.safetensors")), tensors)?;
        }
        let (key, state) = &files.state;
        self.write_tensors(
            &partial.join(format!("{key}.train-state.safetensors")),
            state,
        )?;
        if let Some(heads) = &files.heads {
            self.write_tensors(&partial.join(format!("{key}.heads.safetensors")), heads)?;
        }
        // A folder left by an attempt that crashed before its switch is replaced.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&partial, &dir).map_err(|e| fs_error(&dir, e))?;
        self.append_metrics(&files.metrics)?;
        self.write_progress(&files.progress)?;
        for (name, tensors) in &files.models {
            self.write_tensors(&self.model(name), tensors)?;
        }
        if let Some(heads) = &files.heads {
            self.write_tensors(
                &self.checkpoints().join(format!("{key}.heads.safetensors")),
                heads,
            )?;
        }
        super::curves::write_curves(&self.out)?;
        // The previous epoch of this stage is no longer needed; earlier stages keep their last.
        if epoch > 1 {
            let _ = std::fs::remove_dir_all(self.state(stage, epoch - 1));
        }
        Ok(())
    }

    /// Writes the users' checkpoints of a stage's models (and heads) again, with the curves: for
    /// a run resumed after its stage's last epoch was recorded but before they were all written.
    pub fn rewrite_exports(
        &self,
        models: &[(String, TensorMap)],
        heads: Option<(&str, &TensorMap)>,
    ) -> Result<()> {
        for (name, tensors) in models {
            self.write_tensors(&self.model(name), tensors)?;
        }
        if let Some((key, heads)) = heads {
            self.write_tensors(
                &self.checkpoints().join(format!("{key}.heads.safetensors")),
                heads,
            )?;
        }
        super::curves::write_curves(&self.out)
    }

    fn append_metrics(&self, lines: &[serde_json::Value]) -> Result<()> {
        let path = self.metrics_path();
        self.count_write(&path)?;
        let mut text = String::new();
        for l in lines {
            text.push_str(&l.to_string());
            text.push('\n');
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| input_error(path.display().to_string(), format!("cannot write ({e})")))
    }

    /// Reads a model from the state of epoch `epoch` of stage `stage`, for `graph`.
    pub fn load_model(
        &self,
        gpu: &Gpu,
        stage: usize,
        epoch: usize,
        name: &str,
        graph: &Graph,
    ) -> Result<Weights> {
        let path = self.state(stage, epoch).join(format!("{name}.safetensors"));
        let host = io::read_safetensors(&path)?;
        Weights::load(gpu, graph, &path.display().to_string(), &host)
    }

    /// A state file of epoch `epoch` of stage `stage` (`KEY.train-state` or `KEY.heads`).
    pub fn read_state(
        &self,
        stage: usize,
        epoch: usize,
        file: &str,
    ) -> Result<(String, TensorMap)> {
        let path = self.state(stage, epoch).join(format!("{file}.safetensors"));
        Ok((path.display().to_string(), io::read_safetensors(&path)?))
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

/// Prepares the folder `out` of a later seed (whose configuration is `config`) to start from
/// the first seed's `once` stages (`first` is that seed's folder, complete): their final states
/// and checkpoints are copied and a `progress.json` marks those stages done, so that resuming
/// `out` trains the rest.
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
            &what,
            format!(
                "has {} stages, the once stages are {once}",
                first_summary.stages.len()
            ),
        ));
    }
    let (from, to) = (RunFolder::create(first)?, RunFolder::create(out)?);
    let copy = |src: PathBuf, dst: PathBuf| {
        std::fs::copy(&src, &dst).map(|_| ()).map_err(|e| {
            input_error(
                src.display().to_string(),
                format!("cannot copy to {} ({e})", dst.display()),
            )
        })
    };
    for (s, stage) in config.stages[..once].iter().enumerate() {
        let dir = to.state(s, stage.total_epochs());
        std::fs::create_dir_all(&dir)
            .map_err(|e| input_error(dir.display().to_string(), format!("cannot create ({e})")))?;
        for model in &stage.train {
            let file = format!("{model}.safetensors");
            copy(
                from.state(s, stage.total_epochs()).join(&file),
                dir.join(&file),
            )?;
            copy(from.model(model), to.model(model))?;
        }
        if stage.kind == StageKind::DeepInversion {
            let (src, dst) = (
                synthetic_set(first, &stage.name),
                synthetic_set(out, &stage.name),
            );
            synthetic_dir(out)?;
            copy(src.with_extension("png"), dst.with_extension("png"))?;
            copy(src, dst)?;
        }
    }
    to.clear_metrics();
    to.write_progress(&Progress::between_stages(
        config,
        once,
        &first_summary.stages[..once],
    ))
}
