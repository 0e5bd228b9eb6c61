//! `wgdistill train CONFIG --out DIR [--data DIR]`, and the main job (the embedded default
//! configuration) that `wgdistill` runs with no arguments.

use std::path::{Path, PathBuf};

use wgdistill::data::Dataset;
use wgdistill::gpu::{AdapterQuery, Gpu};
use wgdistill::train::config::{self, Config, DEFAULT_CONFIG};
use wgdistill::train::run::{self, RunOptions};
use wgdistill::train::seeds;
use wgdistill::train::summary::{Summary, read_summary};

use super::CliError;

fn print_table(summary: &Summary) {
    println!();
    println!(
        "adapter: {} ({}, {})",
        summary.adapter.name, summary.adapter.backend, summary.adapter.driver
    );
    println!("data: {}", summary.data);
    println!(
        "{:<18} {:<18} {:>17} {:>8} {:>7} {:>10} {:>10}",
        "stage", "model", "test accuracy", "best", "epochs", "wall s", "samples/s"
    );
    for s in &summary.stages {
        if s.models.is_empty() {
            // A synthesis stage: its speed is in images made per second.
            println!(
                "{:<18} {:<18} {:>17} {:>8} {:>7} {:>10.1} {:>10.1}",
                s.name, "(synthesised set)", "-", "-", "-", s.wall_seconds, s.samples_per_second
            );
        }
        for m in &s.models {
            let acc = match m.test_accuracy_std {
                Some(std) => format!("{:.4} ± {std:.4}", m.test_accuracy),
                None => format!("{:.4}", m.test_accuracy),
            };
            println!(
                "{:<18} {:<18} {:>17} {:>8.4} {:>7} {:>10.1} {:>10.0}",
                s.name,
                m.model,
                acc,
                m.best_test_accuracy,
                s.epochs,
                s.wall_seconds,
                s.samples_per_second
            );
        }
    }
}

/// Everything checked before the GPU is touched: the configuration, the output folder, the data.
fn prepare(
    what: &str,
    text: &str,
    out: &Path,
    opts: &RunOptions,
) -> Result<(Config, run::LoadedData), CliError> {
    let config = config::parse(what, text)?;
    config.check(what)?;
    std::fs::create_dir_all(out).map_err(|e| {
        CliError::Message(format!(
            "{}: cannot create the output folder ({e})",
            out.display()
        ))
    })?;
    let data = run::load_data(&config, opts)?;
    Ok((config, data))
}

fn execute(
    query: &AdapterQuery,
    what: &str,
    text: &str,
    opts: RunOptions,
    seeds: usize,
) -> Result<(), CliError> {
    if seeds == 0 {
        return Err(CliError::Message("--seeds: must be at least 1".into()));
    }
    let (config, (train, test)) = prepare(what, text, &opts.out, &opts)?;
    let gpu = open_gpu(query, &train, &test)?;
    let mut log = |line: &str| println!("{line}");
    let summary = if seeds == 1 {
        run::run(&gpu, &config, &opts, &train, &test, &mut log)
    } else {
        seeds::run_seeds(&gpu, &config, &opts, seeds, &train, &test, &mut log)
    };
    // A setting that only the data or a stage's start can refuse names the file too.
    let summary = summary.map_err(|e| match e {
        wgdistill::Error::Input { what: key, message } if key.starts_with("stage '") => {
            wgdistill::Error::Input {
                what: format!("{what}: {key}"),
                message,
            }
        }
        other => other,
    })?;
    print_table(&summary);
    println!("results in {}", opts.out.display());
    Ok(())
}

/// How `train` treats what `--out` holds.
pub enum Continue {
    /// A new run.
    Fresh,
    /// `--resume`: go on with the same configuration.
    Resume,
    /// `--update`: go on with a configuration that may have changed.
    Update,
}

/// `wgdistill train`.
pub fn train(
    query: &AdapterQuery,
    config: &Path,
    out: &Path,
    data: Option<PathBuf>,
    seeds: usize,
    mode: Continue,
    teacher_cache: Option<PathBuf>,
) -> Result<(), CliError> {
    let (what, text) = read_config(config)?;
    let update = matches!(mode, Continue::Update);
    let opts = RunOptions {
        data_dir: data,
        resume: !matches!(mode, Continue::Fresh) && (!update || has_run(out)),
        update,
        progress: true,
        teacher_cache,
        ..RunOptions::new(out)
    };
    execute(query, &what, &text, opts, seeds)
}

/// The adapter, after a line on the data and before one on the adapter.
fn open_gpu(query: &AdapterQuery, train: &Dataset, test: &Dataset) -> Result<Gpu, CliError> {
    println!(
        "data: {} ({} training, {} test samples)",
        train.source,
        train.len(),
        test.len()
    );
    let gpu = Gpu::new(query)?;
    println!("adapter: {}", gpu.caps().label());
    Ok(gpu)
}

/// A configuration file's name (for errors) and text.
fn read_config(path: &Path) -> Result<(String, String), CliError> {
    let what = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Message(format!("{what}: cannot read ({e})")))?;
    Ok((what, text))
}

/// `wgdistill search`.
pub fn search(
    query: &AdapterQuery,
    config: &Path,
    out: &Path,
    data: Option<PathBuf>,
    resume: bool,
    teacher_cache: Option<PathBuf>,
) -> Result<(), CliError> {
    let (what, text) = read_config(config)?;
    let opts = RunOptions {
        data_dir: data,
        ..RunOptions::new(out)
    };
    if config::parse(&what, &text)?.search.is_none() {
        return Err(CliError::Message(format!(
            "{what}: no [search] table (configs/search.toml shows one)"
        )));
    }
    let (config, (train, test)) = prepare(&what, &text, out, &opts)?;
    let gpu = open_gpu(query, &train, &test)?;
    let search_opts = wgdistill::train::search::SearchOptions {
        out: out.to_path_buf(),
        resume,
        teacher_cache,
    };
    let mut log = |line: &str| println!("{line}");
    let s = wgdistill::train::search::search(&gpu, &config, &search_opts, &train, &test, &mut log)?;
    println!(
        "Pareto front (proxy accuracy against latency per batch of {}):",
        s.latency_batch
    );
    for &i in &s.front {
        let r = &s.candidates[i];
        println!(
            "  {:<24} {:>9} parameters  {:>8.2} ms  {:.4}{}",
            r.key,
            r.parameters,
            r.latency_ms,
            r.proxy_accuracy.unwrap_or(0.0),
            if r.feasible {
                ""
            } else {
                "  (over the budget)"
            }
        );
    }
    if let Some(w) = &s.winner {
        println!(
            "winner {}: test accuracy {:.4} after full training with KD ({})",
            w.key, w.test_accuracy, w.checkpoint
        );
    }
    println!("results in {}", out.display());
    Ok(())
}

/// The main job: the default configuration, Fashion-MNIST when found, else the synthetic set.
pub fn main_job(query: &AdapterQuery, data: Option<PathBuf>) -> Result<(), CliError> {
    let opts = RunOptions {
        data_dir: data,
        fallback_to_synthetic: true,
        progress: true,
        ..RunOptions::new("wgdistill-run")
    };
    execute(query, "default config", DEFAULT_CONFIG, opts, 1)
}

/// `--print-default-config`.
pub fn print_default() {
    print!("{DEFAULT_CONFIG}");
}

/// The model flags of `wgdistill eval`.
pub struct ArchArgs {
    /// `mlp`, `cnn`, `mobilenet` or `resnet`.
    pub arch: String,
    /// MLP hidden widths.
    pub hidden: Vec<usize>,
    /// CNN channels.
    pub channels: Vec<usize>,
    /// CNN kernel size.
    pub kernel: usize,
    /// ResNet depth.
    pub depth: usize,
    /// ResNet stage widths.
    pub widths: Vec<usize>,
    /// MobileNet width multiplier.
    pub width: f64,
    /// MobileNet's activation.
    pub activation: wgdistill::models::Activation,
    /// What an mlp or cnn sees of each image.
    pub modality: wgdistill::models::Modality,
    /// `LAYER=RANK` entries of the model's `low_rank` table.
    pub low_rank: Vec<String>,
    /// A quantisation-aware model (its fake quantisers, at their saved scales).
    pub qat: bool,
}

impl ArchArgs {
    /// The model the flags describe, checked as a config's model is, each error naming its
    /// flag (`.kernel` → `--kernel`, `.channels[1]` → `--channels`).
    fn model(&self) -> Result<config::ModelConfig, CliError> {
        let model = self.unchecked_model()?;
        model.check().map_err(|(key, message)| {
            let field = key.trim_start_matches('.');
            let field = field.split(['.', '[']).next().unwrap_or(field);
            CliError::Message(format!("--{}: {message}", field.replace('_', "-")))
        })?;
        Ok(model)
    }

    fn unchecked_model(&self) -> Result<config::ModelConfig, CliError> {
        let mut low_rank = std::collections::BTreeMap::new();
        for entry in &self.low_rank {
            let rank = entry
                .split_once('=')
                .and_then(|(layer, rank)| Some((layer, rank.parse::<usize>().ok()?)));
            let Some((layer, rank)) = rank else {
                return Err(CliError::Message(format!(
                    "--low-rank: expected LAYER=RANK (e.g. classifier=4), got '{entry}'"
                )));
            };
            low_rank.insert(layer.to_string(), rank);
        }
        if self.modality != wgdistill::models::Modality::Image
            && !matches!(self.arch.as_str(), "mlp" | "cnn")
        {
            return Err(CliError::Message(format!(
                "--modality: only mlp and cnn read a modality, not {}",
                self.arch
            )));
        }
        Ok(match self.arch.as_str() {
            "mlp" => config::ModelConfig::Mlp {
                hidden: self.hidden.clone(),
                modality: self.modality,
                checkpoint: None,
                low_rank: low_rank.clone(),
                qat: self.qat,
                int8: false,
            },
            "cnn" => config::ModelConfig::Cnn {
                channels: self.channels.clone(),
                kernel: self.kernel,
                modality: self.modality,
                checkpoint: None,
                low_rank: low_rank.clone(),
                qat: self.qat,
                int8: false,
            },
            "mobilenet" => config::ModelConfig::Mobilenet {
                width: self.width,
                activation: self.activation,
                checkpoint: None,
                low_rank: low_rank.clone(),
                qat: self.qat,
                int8: false,
            },
            "resnet" => {
                let widths: [usize; 3] = self.widths.clone().try_into().map_err(|_| {
                    CliError::Message(format!(
                        "--widths: expected three stage widths, got {:?}",
                        self.widths
                    ))
                })?;
                config::ModelConfig::Resnet {
                    depth: self.depth,
                    widths,
                    checkpoint: None,
                    low_rank,
                    qat: self.qat,
                    int8: false,
                }
            }
            other => {
                return Err(CliError::Message(format!(
                    "--arch: unknown architecture '{other}'; expected mlp, cnn, mobilenet or resnet"
                )));
            }
        })
    }
}

/// What `eval` does with int8.
pub enum Int8Eval {
    /// Nothing: a float (or fake-quantised) checkpoint.
    No,
    /// The checkpoint is an int8 export.
    Checkpoint,
    /// Also export the (quantisation-aware) checkpoint as int8 to this file and evaluate that.
    Export(PathBuf),
}

/// Test accuracy, images/s (a second, timed pass) and packed weight bytes of an int8 model.
fn eval_int8(
    gpu: &Gpu,
    graph: &wgdistill::graph::Graph,
    tensors: &wgdistill::io::TensorMap,
    what: &str,
    test: &wgdistill::data::Dataset,
) -> Result<(f64, f64, usize), CliError> {
    use wgdistill::kernels::int8::DotPath;
    let program = wgdistill::graph::int8::Int8Program::compile(
        gpu,
        graph,
        tensors,
        what,
        DotPath::for_gpu(gpu),
    )?;
    let (batch, classes) = (program.batch(), program.classes());
    let (acc, per_second) = timed_accuracy(test, || {
        run::accuracy_with(test, batch, classes, |x| program.run(gpu, x))
    })?;
    Ok((acc, per_second, program.weight_bytes()))
}

/// Test accuracy from a first pass and images/s from a second, timed one: pipelines and buffers
/// already exist then, as in deployment.
fn timed_accuracy(
    test: &wgdistill::data::Dataset,
    mut pass: impl FnMut() -> wgdistill::Result<f64>,
) -> Result<(f64, f64), CliError> {
    let acc = pass()?;
    let start = std::time::Instant::now();
    pass()?;
    Ok((acc, test.len() as f64 / start.elapsed().as_secs_f64()))
}

/// `wgdistill eval CHECKPOINT --arch …`: a checkpoint's test accuracy on Fashion-MNIST.
pub fn eval(
    query: &AdapterQuery,
    checkpoint: &Path,
    arch: &ArchArgs,
    int8: Int8Eval,
    data: Option<PathBuf>,
) -> Result<(), CliError> {
    let what = checkpoint.display().to_string();
    let model = arch.model()?;
    let host = wgdistill::io::read_safetensors(checkpoint)?;
    let batch = 256;
    let graph = model.graph([batch, 1, 28, 28], 10)?;
    let cfg_text = "[data]\ndataset = \"fashion-mnist\"\n[models]\n[[stages]]\nname = \"eval\"\ntrain = []\nepochs = 1\noptimizer = { kind = \"sgd\", lr = 1.0 }\nlosses = []\n";
    let cfg = config::parse("eval", cfg_text)?;
    let opts = RunOptions {
        data_dir: data,
        progress: true,
        ..RunOptions::new(PathBuf::new())
    };
    let (_, test) = run::load_data(&cfg, &opts)?;
    let gpu = Gpu::new(query)?;
    let report_int8 = |file: &Path, tensors: &wgdistill::io::TensorMap| -> Result<(), CliError> {
        let what = file.display().to_string();
        let (acc, per_second, gpu_bytes) = eval_int8(&gpu, &graph, tensors, &what, &test)?;
        let bytes = std::fs::metadata(file).map_or(0, |m| m.len());
        println!(
            "{what}: int8 test accuracy {acc:.4} on {} ({} images; {}); {bytes} bytes on disk, {gpu_bytes} bytes of packed weights; {per_second:.0} images/s at batch {batch}",
            test.source,
            test.len(),
            gpu.caps().name
        );
        Ok(())
    };
    if let Int8Eval::Checkpoint = int8 {
        return report_int8(checkpoint, &host);
    }
    let weights = wgdistill::graph::Weights::load(&gpu, &graph, &what, &host)?;
    let step = wgdistill::graph::EvalStep::compile(&gpu, &graph, &weights)?;
    let (acc, per_second) = timed_accuracy(&test, || run::accuracy(&gpu, &step, &graph, &test))?;
    let parameters: usize = graph
        .trainable_params()
        .map(|(_, n)| n.shape.iter().product::<usize>())
        .sum();
    let bytes = std::fs::metadata(checkpoint).map_or(0, |m| m.len());
    println!(
        "{what}: test accuracy {acc:.4} on {} ({} images; {}); {parameters} parameters, {bytes} bytes on disk; {per_second:.0} images/s at batch {batch}",
        test.source,
        test.len(),
        gpu.caps().name
    );
    if let Int8Eval::Export(file) = int8 {
        let tensors = wgdistill::graph::int8::export(&graph, &host)?;
        wgdistill::io::write_safetensors(&file, &tensors)?;
        report_int8(&file, &tensors)?;
    }
    Ok(())
}

/// `wgdistill report RUN [--baseline STAGE] [--json FILE] [--format markdown|csv|json]`.
pub fn report(
    run_dir: &Path,
    baseline: &str,
    json: Option<&Path>,
    format: &str,
) -> Result<(), CliError> {
    let path = if run_dir.is_dir() {
        run_dir.join("summary.json")
    } else {
        run_dir.to_path_buf()
    };
    let summary = read_summary(&path)?;
    if summary.stages.is_empty() {
        return Err(CliError::Message(format!(
            "{}: a summary with no stages has no results",
            path.display()
        )));
    }
    use wgdistill::train::report;
    if run_dir.is_dir() {
        // Drawn again from the summary: with --seeds, the mean over the seeds.
        wgdistill::train::lifelong::write_summary_plot(run_dir, &summary)?;
    }
    let results = report::results(&summary, Some(baseline));
    let json_text =
        serde_json::to_string_pretty(&results).map_err(|e| CliError::Message(e.to_string()))?;
    match format {
        "csv" => print!("{}", report::csv(&results)),
        "json" => println!("{json_text}"),
        _ => print!("{}", report::markdown(&results)),
    }
    if let Some(file) = json {
        wgdistill::io::write_atomic(file, json_text.as_bytes())?;
    }
    Ok(())
}

/// Whether `out` holds a run to go on with: its progress, or with `--seeds` a seed's.
fn has_run(out: &Path) -> bool {
    let progress = |dir: &Path| dir.join("progress.json").is_file();
    progress(out)
        || std::fs::read_dir(out).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with("seed-") && progress(&e.path())
            })
        })
}
