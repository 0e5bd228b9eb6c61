//! NAS-based distillation (`wgdistill search`): a hardware-aware search for a student of a
//! teacher, under a latency budget measured on the user's own adapter.
//!
//! The configuration's stages train the teacher (or its checkpoint holds it); `[search]` then
//! draws candidates from the space ([`space`]: MLPs, CNNs, MobileNet-style networks), by random
//! search or by regularised evolution (Real et al. 2019: a population of random candidates, then
//! each new one a mutation of the fittest of three drawn from the latest population). Each
//! candidate's inference latency is timed on the adapter first; one within the budget is
//! trained briefly with the configured terms (KD from the teacher) on part of the training set
//! and scored on held-out training images, the KD-guided proxy. Every evaluation is appended to
//! `candidates.jsonl`, the cache `--resume` replays (the search is deterministic given it), and
//! the Pareto front of accuracy against latency is written as `search.json` and `pareto.svg`
//! ([`pareto`]) after each. The winner, the most accurate candidate within the budget, is then
//! trained fully with KD and tested.

pub mod pareto;
pub mod space;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::data::Dataset;
use crate::error::input_error;
use crate::gpu::Gpu;
use crate::graph::{EvalStep, Weights};
use crate::rng::Xorshift;

use super::config::{Config, LossConfig, ModelConfig, OptimizerConfig, StageConfig};
use super::method::Fault;
use super::run::{self, RunOptions};
use super::stage::seed_of;
use super::summary::AdapterSummary;
use pareto::Record;
use space::{Candidate, SpaceConfig};

/// How candidates are drawn.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Regularised evolution.
    #[default]
    Evolution,
    /// Independent uniform draws.
    Random,
}

/// `[search]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// The teacher: a model of the configuration, trained by its stages or loaded from its
    /// checkpoint.
    pub teacher: String,
    /// Candidates trained (those within the latency budget): the search's budget. Those over
    /// it are timed only, and drawn again (at most 20 draws per trained candidate).
    pub candidates: usize,
    /// `evolution` (the default) or `random`.
    #[serde(default)]
    pub strategy: Strategy,
    /// Evolution's population: candidates are random until this many are trained; each later
    /// one mutates the fittest of three drawn from the latest this many trained.
    #[serde(default = "population")]
    pub population: usize,
    /// The latency budget: milliseconds per inference batch of `latency_batch` images on the
    /// adapter (upload, forward pass, readback of the logits).
    pub latency_ms: f64,
    /// Images per timed inference batch.
    #[serde(default = "latency_batch")]
    pub latency_batch: usize,
    /// Training images held out (the last this many) to score the candidates.
    #[serde(default = "validation")]
    pub validation: usize,
    /// Training images (the first this many of the rest) each candidate's proxy trains on.
    #[serde(default = "proxy_images")]
    pub proxy_images: usize,
    /// Epochs of each candidate's proxy training.
    #[serde(default = "one")]
    pub proxy_epochs: usize,
    /// Epochs of the winner's full training (the whole training set; tested on the test set).
    pub final_epochs: usize,
    /// The optimizer of the proxy and final training.
    pub optimizer: OptimizerConfig,
    /// Their loss terms (KD from the teacher; the student's taps are its logits).
    pub losses: Vec<LossConfig>,
    /// The architectures searched.
    #[serde(default)]
    pub space: SpaceConfig,
}

fn population() -> usize {
    8
}
fn latency_batch() -> usize {
    256
}
fn validation() -> usize {
    5000
}
fn proxy_images() -> usize {
    10_000
}
fn one() -> usize {
    1
}

/// The model name of a candidate in its runs.
const STUDENT: &str = "student";
/// The teacher's name in a candidate's runs.
const TEACHER: &str = "teacher";

impl SearchConfig {
    /// Checks the settings of `config`'s search, given the models that have weights once its
    /// stages ran; errors name keys relative to `search`.
    pub(super) fn check(
        &self,
        config: &Config,
        available: &[&str],
    ) -> std::result::Result<(), Fault> {
        if !config.models.contains_key(&self.teacher) {
            let names: Vec<&str> = config.models.keys().map(String::as_str).collect();
            return Err((
                "teacher".into(),
                format!(
                    "unknown model '{}'; models are {}",
                    self.teacher,
                    names.join(", ")
                ),
            ));
        }
        if !available.contains(&self.teacher.as_str()) {
            return Err((
                "teacher".into(),
                format!(
                    "'{}' is neither trained by a stage nor loaded from a checkpoint",
                    self.teacher
                ),
            ));
        }
        let count = |key: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err((
                    key.to_string(),
                    format!("must be from {lo} to {hi}, got {v}"),
                ))
            }
        };
        count("candidates", self.candidates, 1, 10_000)?;
        count("population", self.population, 2, 1000)?;
        count(
            "latency_batch",
            self.latency_batch,
            1,
            super::config::MAX_BATCH,
        )?;
        count("validation", self.validation, 1, 1 << 24)?;
        count("proxy_images", self.proxy_images, 2, 1 << 24)?;
        count("proxy_epochs", self.proxy_epochs, 1, 1000)?;
        count("final_epochs", self.final_epochs, 1, 1000)?;
        if !(self.latency_ms.is_finite() && self.latency_ms > 0.0) {
            return Err((
                "latency_ms".into(),
                format!("must be a number > 0, got {}", self.latency_ms),
            ));
        }
        self.space
            .check()
            .map_err(|(k, m)| (format!("space.{k}"), m))?;
        // The runs it makes must be valid configurations: checked on one candidate.
        let probe = self.run_config(
            config,
            &Candidate::Mlp { hidden: vec![32] },
            "t.safetensors",
            1,
        );
        probe.check("search").map_err(|e| {
            let message = e.to_string();
            let message = message
                .split_once(": stages[0].")
                .map_or(message.clone(), |(_, rest)| rest.to_string());
            ("losses".to_string(), message)
        })?;
        Ok(())
    }

    /// The configuration that trains `candidate` for `epochs` with KD from the teacher in
    /// `teacher_file`.
    fn run_config(
        &self,
        config: &Config,
        candidate: &Candidate,
        teacher_file: &str,
        epochs: usize,
    ) -> Config {
        let teacher = config.models[&self.teacher]
            .clone()
            .with_checkpoint(teacher_file.to_string());
        let models: BTreeMap<String, ModelConfig> = [
            (TEACHER.to_string(), teacher),
            (STUDENT.to_string(), candidate.model()),
        ]
        .into();
        let stage = StageConfig {
            name: candidate.key(),
            train: vec![STUDENT.into()],
            teachers: vec![TEACHER.into()],
            epochs,
            optimizer: Some(self.optimizer.clone()),
            losses: self.losses.clone(),
            augment: Some(false),
            ..StageConfig::default()
        };
        Config {
            seed: config.seed,
            data: config.data.clone(),
            models,
            stages: vec![stage],
            search: None,
        }
    }
}

/// Where a search writes and what it reuses.
#[derive(Clone, Debug)]
pub struct SearchOptions {
    /// The output folder.
    pub out: PathBuf,
    /// Reuse what an interrupted search in `out` evaluated and trained.
    pub resume: bool,
    /// The teacher-output cache's root (as `wgdistill train --teacher-cache`).
    pub teacher_cache: Option<PathBuf>,
}

/// The search's result (`search.json`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct SearchSummary {
    /// The adapter the latencies were measured on.
    pub adapter: AdapterSummary,
    /// The budget, ms per batch.
    pub latency_ms: f64,
    /// Images per timed batch.
    pub latency_batch: usize,
    /// Every candidate, in search order.
    pub candidates: Vec<Record>,
    /// The indices of the Pareto front's candidates, fastest first.
    pub front: Vec<usize>,
    /// The most accurate candidate within the budget, retrained (absent until it is).
    pub winner: Option<Winner>,
}

/// The winner after its full training.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Winner {
    /// Its index among the candidates.
    pub index: usize,
    /// Its key.
    pub key: String,
    /// Its model table.
    pub model: ModelConfig,
    /// Test accuracy after the full training with KD.
    pub test_accuracy: f64,
    /// Its checkpoint.
    pub checkpoint: String,
}

/// Times `candidate`'s inference on the adapter: the median of repeated batches after two
/// untimed ones (pipelines compile on first use), ms, and its trainable parameter count.
pub fn time_inference(
    gpu: &Gpu,
    candidate: &Candidate,
    batch: usize,
    image: [usize; 3],
    classes: usize,
) -> Result<(f64, usize)> {
    let [c, h, w] = image;
    let graph = candidate.model().graph([batch, c, h, w], classes)?;
    let parameters = graph
        .trainable_params()
        .map(|(_, n)| n.shape.iter().product::<usize>())
        .sum();
    let weights = Weights::init(gpu, &graph, 0)?;
    let eval = EvalStep::compile(gpu, &graph, &weights)?;
    let x = crate::rng::sample(batch * c * h * w, 7);
    for _ in 0..2 {
        eval.run(gpu, &x)?;
    }
    let started = Instant::now();
    let mut times = Vec::new();
    while times.len() < 5 || (times.len() < 30 && started.elapsed().as_secs_f64() < 0.5) {
        let t = Instant::now();
        eval.run(gpu, &x)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], parameters))
}

/// The lines of `candidates.jsonl` (a line cut short by an interruption is dropped).
fn read_cache(path: &Path) -> BTreeMap<String, Record> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Record>(l).ok())
        .map(|r| (r.key.clone(), r))
        .collect()
}

fn append_line(path: &Path, record: &Record) -> Result<()> {
    use std::io::Write;
    let line = serde_json::to_string(record)
        .map_err(|e| input_error("candidates.jsonl", e.to_string()))?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
        .map_err(|e| input_error(path.display().to_string(), format!("cannot write ({e})")))
}

/// Draws per trained candidate at most (the rest are over the latency budget).
const DRAWS_PER_CANDIDATE: usize = 20;

/// Runs the search of `config` (checked, with a `[search]` table) on `train` and `test`;
/// `log` receives a line per candidate.
pub fn search(
    gpu: &Gpu,
    config: &Config,
    opts: &SearchOptions,
    train: &Dataset,
    test: &Dataset,
    log: &mut dyn FnMut(&str),
) -> Result<SearchSummary> {
    let s = config
        .search
        .as_ref()
        .ok_or_else(|| input_error("search", "the configuration has no [search] table"))?;
    let out = &opts.out;
    std::fs::create_dir_all(out)
        .map_err(|e| input_error(out.display().to_string(), format!("cannot create ({e})")))?;
    // A resumed search must be the same search.
    let stamp = out.join("search-config.sha256");
    let fingerprint = config.fingerprint();
    let cache_path = out.join("candidates.jsonl");
    // A resumed search whose settings changed keeps the teacher (its run checks its own
    // stages) but evaluates its candidates afresh.
    let same = std::fs::read_to_string(&stamp).is_ok_and(|old| old.trim() == fingerprint);
    if !(opts.resume && same) {
        if opts.resume {
            log(
                "the configuration changed since the search began: its candidates are evaluated afresh",
            );
        }
        let _ = std::fs::remove_file(&cache_path);
        let _ = std::fs::remove_dir_all(out.join("candidates"));
        let _ = std::fs::remove_dir_all(out.join("winner"));
    }
    crate::io::write_atomic(&stamp, fingerprint.as_bytes())?;
    let sub = |dir: PathBuf| RunOptions {
        resume: opts.resume && dir.join("progress.json").is_file(),
        teacher_cache: opts.teacher_cache.clone(),
        ..RunOptions::new(dir)
    };

    // The teacher: its checkpoint, or the stages' run.
    let teacher_file = match config.models[&s.teacher].checkpoint() {
        Some(file) => file.to_string(),
        None => {
            let dir = out.join("teacher");
            if !(opts.resume && dir.join("summary.json").is_file()) {
                let mut staged = config.clone();
                staged.search = None;
                run::run(gpu, &staged, &sub(dir.clone()), train, test, log)?;
            }
            dir.join("checkpoints")
                .join(format!("{}.safetensors", s.teacher))
                .display()
                .to_string()
        }
    };

    // Held-out training images score the candidates; the test set is for the winner only.
    if train.len() < s.validation + 2 {
        return Err(input_error(
            "search.validation",
            format!(
                "holds out {} of {} training images: leave at least two to train on",
                s.validation,
                train.len()
            ),
        ));
    }
    let rest = train.len() - s.validation;
    let validation = train.slice(rest..train.len(), "validation");
    let proxy_train = train.slice(0..s.proxy_images.min(rest), "proxy training");

    let cache = if opts.resume {
        read_cache(&cache_path)
    } else {
        BTreeMap::new()
    };
    let mut rng = Xorshift::new(seed_of(config.seed, "search"));
    let mut records: Vec<Record> = Vec::new();
    let mut summary = SearchSummary {
        adapter: AdapterSummary::of(gpu),
        latency_ms: s.latency_ms,
        latency_batch: s.latency_batch,
        candidates: Vec::new(),
        front: Vec::new(),
        winner: None,
    };
    // The budget counts trained candidates: one over the latency budget costs a timing only,
    // so it is drawn again, up to a cap on draws for a space that hardly fits the budget.
    let most_draws = s.candidates * DRAWS_PER_CANDIDATE;
    let mut trained = 0;
    for index in 0..most_draws {
        if trained == s.candidates {
            break;
        }
        // A candidate not evaluated yet where the space allows (a few draws).
        let mut candidate = next(s, &records, &mut rng);
        for _ in 0..20 {
            if !records.iter().any(|r| r.key == candidate.key()) {
                break;
            }
            candidate = next(s, &records, &mut rng);
        }
        let key = candidate.key();
        let started = Instant::now();
        let (mut record, how) = match records.iter().find(|r| r.key == key).or(cache.get(&key)) {
            Some(r) => (r.clone(), "reused"),
            None => {
                let (latency_ms, parameters) =
                    time_inference(gpu, &candidate, s.latency_batch, train.shape, train.classes)?;
                let feasible = latency_ms <= s.latency_ms;
                let proxy_accuracy = if feasible {
                    let cfg = s.run_config(config, &candidate, &teacher_file, s.proxy_epochs);
                    cfg.check("search candidate")?;
                    let dir = out.join("candidates").join(&key);
                    // Afresh: a proxy cut short is not in the cache.
                    let fresh = RunOptions {
                        teacher_cache: opts.teacher_cache.clone(),
                        ..RunOptions::new(dir)
                    };
                    let r = run::run(gpu, &cfg, &fresh, &proxy_train, &validation, &mut |_| {})?;
                    Some(r.stages[0].models[0].test_accuracy)
                } else {
                    None
                };
                let record = Record {
                    index,
                    key: key.clone(),
                    candidate,
                    parameters,
                    latency_ms,
                    feasible,
                    proxy_accuracy,
                    proxy_seconds: started.elapsed().as_secs_f64(),
                };
                append_line(&cache_path, &record)?;
                (record, "evaluated")
            }
        };
        record.index = index;
        trained += usize::from(record.proxy_accuracy.is_some());
        let shown = match record.proxy_accuracy {
            Some(a) => format!("trained {trained}/{}: proxy accuracy {a:.4}", s.candidates),
            None => format!("over the {} ms budget, not trained", s.latency_ms),
        };
        log(&format!(
            "candidate {}: {key} ({} parameters), {:.2} ms per batch of {}, {shown} ({how}, {:.1} s)",
            index + 1,
            record.parameters,
            record.latency_ms,
            s.latency_batch,
            started.elapsed().as_secs_f64()
        ));
        records.push(record);
        summary.candidates = records.clone();
        summary.front = pareto::front(&records);
        write_results(out, &summary, None)?;
    }

    // The winner: the most accurate within the budget (the faster on a tie), trained fully.
    let best = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.feasible && r.proxy_accuracy.is_some())
        .max_by(|(_, a), (_, b)| {
            a.proxy_accuracy
                .unwrap_or(0.0)
                .total_cmp(&b.proxy_accuracy.unwrap_or(0.0))
                .then(b.latency_ms.total_cmp(&a.latency_ms))
        })
        .map(|(i, _)| i);
    let Some(w) = best else {
        let fastest = records
            .iter()
            .map(|r| r.latency_ms)
            .fold(f64::INFINITY, f64::min);
        return Err(input_error(
            "search.latency_ms",
            format!(
                "no candidate meets the budget of {} ms (the fastest took {fastest:.2} ms): raise it or search smaller architectures",
                s.latency_ms
            ),
        ));
    };
    let winner = &records[w];
    let cfg = s.run_config(config, &winner.candidate, &teacher_file, s.final_epochs);
    let dir = out.join("winner");
    log(&format!(
        "winner {}: training {} epochs with KD",
        winner.key, s.final_epochs
    ));
    let result = run::run(gpu, &cfg, &sub(dir.clone()), train, test, log)?;
    summary.winner = Some(Winner {
        index: w,
        key: winner.key.clone(),
        model: winner.candidate.model(),
        test_accuracy: result.stages[0].models[0].test_accuracy,
        checkpoint: dir
            .join("checkpoints")
            .join(format!("{STUDENT}.safetensors"))
            .display()
            .to_string(),
    });
    write_results(out, &summary, Some(w))?;
    Ok(summary)
}

/// The next candidate: random, or evolution's mutation of a tournament's fittest. The
/// population is the latest `population` trained candidates (those within the budget), so a run
/// of candidates over it never crowds out the ones that fit.
fn next(s: &SearchConfig, records: &[Record], rng: &mut Xorshift) -> Candidate {
    let trained: Vec<&Record> = records
        .iter()
        .filter(|r| r.proxy_accuracy.is_some())
        .collect();
    if s.strategy == Strategy::Random || trained.len() < s.population {
        return s.space.sample(rng);
    }
    let recent = &trained[trained.len() - s.population..];
    let parent = (0..3)
        .map(|_| recent[rng.below(recent.len())])
        .max_by(|a, b| a.fitness(s.latency_ms).total_cmp(&b.fitness(s.latency_ms)))
        .map(|r| r.candidate.clone())
        .unwrap_or_else(|| s.space.sample(rng));
    s.space.mutate(&parent, rng)
}

/// Writes `search.json` and `pareto.svg`.
fn write_results(out: &Path, summary: &SearchSummary, winner: Option<usize>) -> Result<()> {
    let text = serde_json::to_string_pretty(summary)
        .map_err(|e| input_error("search.json", e.to_string()))?;
    crate::io::write_atomic(&out.join("search.json"), text.as_bytes())?;
    pareto::write_svg(
        &out.join("pareto.svg"),
        &summary.candidates,
        summary.latency_ms,
        winner,
    )
}
