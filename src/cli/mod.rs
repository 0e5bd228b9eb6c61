//! Subcommands and the options they share.

mod bench;
mod check;
mod devices;
mod op;
mod shaders;
mod train;
mod tune;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use wgdistill::Error;
use wgdistill::gpu::{AdapterQuery, Gpu};

/// Knowledge distillation on any GPU, with hand-written WGSL kernels.
#[derive(Parser)]
#[command(name = "wgdistill", version, about)]
struct Cli {
    /// Fashion-MNIST folder for the default job (run with no subcommand).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// GPU backend(s): vulkan, metal, dx12, gl, or a comma-separated list.
    #[arg(long, global = true, env = "WGPU_BACKEND", value_name = "NAME")]
    backend: Option<String>,
    /// Use the adapter whose name contains this text (case-insensitive).
    #[arg(long, global = true, env = "WGPU_ADAPTER_NAME", value_name = "NAME")]
    adapter: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// List every adapter on every backend with the limits and features wgdistill uses.
    Devices {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check every kernel against its CPU reference on the chosen adapter.
    Check {
        /// Also write each case as a launch record (JSON, with its reference values) into this
        /// folder, with an index.json, for other WebGPU implementations to replay
        /// (tools/webgpu/replay.mjs, examples/web).
        #[arg(long, value_name = "DIR")]
        replay: Option<PathBuf>,
    },
    /// Train the models of a staged configuration (teachers, students, distillation).
    Train {
        /// The configuration (TOML).
        #[arg(required_unless_present = "print_default_config")]
        config: Option<PathBuf>,
        /// Output folder: checkpoints/, metrics.jsonl, summary.json.
        #[arg(long, required_unless_present = "print_default_config")]
        out: Option<PathBuf>,
        /// Fashion-MNIST folder (default: WGDISTILL_DATA, then /usr/share/datasets/fashion-mnist).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Print the embedded default configuration and exit.
        #[arg(long)]
        print_default_config: bool,
        /// Run the whole configuration with N seeds (seed, seed + 1, …) and report mean ± std.
        #[arg(long, default_value_t = 1)]
        seeds: usize,
        /// Continue an interrupted run in --out from its last completed epoch (with --seeds,
        /// every seed's folder that has progress; the others start).
        #[arg(long)]
        resume: bool,
        /// Resume a run whose configuration may have changed since it began: keep each finished
        /// stage whose settings, models, data, seed and inputs are unchanged, train the others
        /// (a results table's new or changed rows); a folder without a run starts one.
        #[arg(long, conflicts_with = "resume")]
        update: bool,
        /// Root of the teacher-output cache that `data.teacher_cache = true` uses (default:
        /// WGDISTILL_CACHE, then $XDG_CACHE_HOME or ~/.cache, under wgdistill/teacher-outputs).
        #[arg(long, value_name = "DIR")]
        teacher_cache: Option<PathBuf>,
    },
    /// Search a student architecture under a latency budget measured on this adapter (the
    /// configuration's [search] table), with a KD proxy per candidate; then train the winner.
    Search {
        /// The configuration (TOML): stages that train the teacher, and [search].
        config: PathBuf,
        /// Output folder: candidates.jsonl, search.json, pareto.svg, teacher/, candidates/,
        /// winner/.
        #[arg(long)]
        out: PathBuf,
        /// Fashion-MNIST folder (default: WGDISTILL_DATA, then /usr/share/datasets/fashion-mnist).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Continue an interrupted search in --out: reuse its teacher, the candidates it
        /// evaluated and the winner's training so far.
        #[arg(long)]
        resume: bool,
        /// Root of the teacher-output cache that `data.teacher_cache = true` uses.
        #[arg(long, value_name = "DIR")]
        teacher_cache: Option<PathBuf>,
    },
    /// Print a run's results table (Markdown; mean ± std with --seeds) from its summary.json
    /// (and draw its lifelong stages' lifelong.svg again from it).
    Report {
        /// The run's output folder (or its summary.json).
        run: PathBuf,
        /// The stage the others are compared with.
        #[arg(long, default_value = "scratch")]
        baseline: String,
        /// Also write the table's numbers as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// How to print the table: markdown, csv or json.
        #[arg(long, default_value = "markdown", value_parser = ["markdown", "csv", "json"])]
        format: String,
    },
    /// Time the kernels on the chosen adapter (GFLOP/s or GB/s, with same-run baselines).
    Bench {
        /// Only kernels whose name contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Also write the results as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// A peer's results (tools/peers/torch_steps.py): time the same cases and print both,
        /// with the speedup per case.
        #[arg(long, value_name = "PEER.json")]
        compare: Option<PathBuf>,
        /// Also time each launch of every case alone and print where the time goes, by kernel
        /// (in the JSON as `profile`).
        #[arg(long)]
        profile: bool,
    },
    /// Time each tunable kernel family's variants (matmul, conv) on the chosen adapter, on whole
    /// training steps and a square product, and keep the fastest for this adapter and driver in
    /// the tuning file (WGDISTILL_TUNING, else the user cache), which later runs read.
    Tune {
        /// The tuning file to write instead of the default one.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Only these families (matmul, conv); the others keep their current variant.
        #[arg(long, value_delimiter = ',')]
        family: Vec<String>,
        /// Shorter timing rounds (for tests; noisier).
        #[arg(long)]
        quick: bool,
    },
    /// Print a checkpoint's test accuracy on Fashion-MNIST.
    Eval {
        /// The checkpoint (safetensors, PyTorch names).
        checkpoint: PathBuf,
        /// Architecture: mlp, cnn, mobilenet or resnet.
        #[arg(long)]
        arch: String,
        /// MLP hidden widths, e.g. 512,512.
        #[arg(long, value_delimiter = ',', default_value = "512,512")]
        hidden: Vec<usize>,
        /// CNN channels per block, e.g. 32,64.
        #[arg(long, value_delimiter = ',', default_value = "32,64")]
        channels: Vec<usize>,
        /// CNN kernel size (odd).
        #[arg(long, default_value_t = 3)]
        kernel: usize,
        /// ResNet depth (6n + 2).
        #[arg(long, default_value_t = 8)]
        depth: usize,
        /// ResNet stage widths.
        #[arg(long, value_delimiter = ',', default_value = "16,32,64")]
        widths: Vec<usize>,
        /// MobileNet width multiplier.
        #[arg(long, default_value_t = 1.0)]
        width: f64,
        /// MobileNet's activation: relu or relu6.
        #[arg(long, default_value = "relu", value_parser = parse_activation)]
        activation: wgdistill::models::Activation,
        /// What an mlp or cnn sees of each image: image, thumbnail or profiles (as the model's
        /// `modality` key).
        #[arg(long, default_value = "image", value_parser = wgdistill::models::Modality::parse)]
        modality: wgdistill::models::Modality,
        /// Layers factorised to low rank, as the model's `low_rank` table: LAYER=RANK,…
        #[arg(long, value_delimiter = ',', value_name = "LAYER=RANK")]
        low_rank: Vec<String>,
        /// A quantisation-aware checkpoint (`qat = true`): evaluated through its fake
        /// quantisers at their saved scales.
        #[arg(long)]
        qat: bool,
        /// The checkpoint is an int8 export (`--export-int8`): run it with the integer kernels.
        /// The architecture flags describe the quantisation-aware model it came from.
        #[arg(long)]
        int8: bool,
        /// With --qat: also write the checkpoint's int8 export here (int8 weights, f32 scales,
        /// batch norms folded; layout in the library's `graph::int8`) and evaluate it.
        #[arg(long, value_name = "OUT.safetensors")]
        export_int8: Option<PathBuf>,
        /// Fashion-MNIST folder.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// List the kernel families' WGSL files, or export them as standard WGSL for other
    /// WebGPU implementations (Dawn/Tint in Chrome, Edge and Deno).
    Shaders {
        /// Write every file into this folder (created if missing), with the `enable` directives
        /// the WGSL specification requires.
        #[arg(long, value_name = "DIR")]
        export: Option<PathBuf>,
    },
    /// Run one op (kernel or loss) on tensors from a safetensors file.
    Op {
        /// The op's name (see --list).
        #[arg(required_unless_present = "list")]
        name: Option<String>,
        /// Print every op with its inputs, attributes and outputs.
        #[arg(long)]
        list: bool,
        /// Input tensors (safetensors).
        #[arg(long, required_unless_present = "list", value_name = "IN.safetensors")]
        input: Option<PathBuf>,
        /// Where to write the outputs (safetensors).
        #[arg(long, required_unless_present = "list", value_name = "OUT.safetensors")]
        output: Option<PathBuf>,
        /// An attribute, e.g. --attr temperature=4 (repeatable).
        #[arg(long = "attr", value_name = "KEY=VALUE")]
        attrs: Vec<String>,
        /// Also write the launches as a record (JSON) that other WebGPU implementations can
        /// replay from the exported WGSL (tools/webgpu/replay.mjs).
        #[arg(long, value_name = "FILE.json")]
        replay: Option<PathBuf>,
    },
}

/// Fails in one line, before any work, when the folder a file is to be written into is missing.
/// `--activation relu|relu6`, as a model's `activation` key.
fn parse_activation(s: &str) -> Result<wgdistill::models::Activation, String> {
    match s {
        "relu" => Ok(wgdistill::models::Activation::Relu),
        "relu6" => Ok(wgdistill::models::Activation::Relu6),
        _ => Err(format!("expected relu or relu6, got '{s}'")),
    }
}

fn check_parent(path: &std::path::Path) -> Result<(), CliError> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) if !dir.is_dir() => Err(CliError::Message(format!(
            "{}: output folder does not exist",
            dir.display()
        ))),
        _ => Ok(()),
    }
}

/// Process-wide set-up done before any thread starts.
pub fn prepare_process() {
    // A panic is a bug in wgdistill; report it in one line rather than with a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        eprintln!("wgdistill: internal error (please report): {message}");
    }));
    // Mesa prints "XDG_RUNTIME_DIR is invalid or not set" when it is missing, which users read
    // as our error; give it a private folder.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        let dir = std::env::temp_dir().join(format!("wgdistill-runtime-{}", std::process::id()));
        if std::fs::create_dir_all(&dir).is_ok() {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
            }
            // SAFETY: called first thing in main, before any other thread exists.
            unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
        }
    }
}

/// Errors the CLI reports: the library's, and its own.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// From the library.
    #[error(transparent)]
    Library(#[from] Error),
    /// Something the CLI itself checked.
    #[error("{0}")]
    Message(String),
}

/// Parses the command line and runs the subcommand. No subcommand runs the default job.
pub fn run() -> Result<(), CliError> {
    let cli = Cli::parse();
    let query = AdapterQuery::new(cli.backend.as_deref(), cli.adapter.as_deref())?;
    match cli.command {
        Some(Command::Devices { json }) => devices::run(&query, json),
        Some(Command::Check { replay }) => check::run(&Gpu::new(&query)?, replay.as_deref()),
        Some(Command::Shaders { export }) => shaders::run(export.as_deref()),
        Some(Command::Tune {
            file,
            family,
            quick,
        }) => tune::run(&query, file.as_deref(), &family, quick),
        None => train::main_job(&query, cli.data),
        Some(Command::Eval {
            checkpoint,
            arch,
            hidden,
            channels,
            kernel,
            depth,
            widths,
            width,
            activation,
            modality,
            low_rank,
            qat,
            int8,
            export_int8,
            data,
        }) => {
            let arch = train::ArchArgs {
                modality,
                arch,
                hidden,
                channels,
                kernel,
                depth,
                widths,
                width,
                activation,
                low_rank,
                qat: qat || int8,
            };
            if export_int8.is_some() && (int8 || !qat) {
                return Err(CliError::Message(
                    "--export-int8 exports a quantisation-aware checkpoint: it needs --qat, not --int8"
                        .into(),
                ));
            }
            let int8 = if int8 {
                train::Int8Eval::Checkpoint
            } else {
                export_int8.map_or(train::Int8Eval::No, train::Int8Eval::Export)
            };
            train::eval(&query, &checkpoint, &arch, int8, data)
        }
        Some(Command::Train {
            print_default_config: true,
            ..
        }) => {
            train::print_default();
            Ok(())
        }
        Some(Command::Train {
            config,
            out,
            data,
            seeds,
            resume,
            update,
            teacher_cache,
            ..
        }) => match (config, out) {
            (Some(config), Some(out)) => {
                let mode = match (resume, update) {
                    (_, true) => train::Continue::Update,
                    (true, false) => train::Continue::Resume,
                    (false, false) => train::Continue::Fresh,
                };
                train::train(&query, &config, &out, data, seeds, mode, teacher_cache)
            }
            _ => Err(CliError::Message(
                "train needs CONFIG and --out DIR (or --print-default-config)".into(),
            )),
        },
        Some(Command::Search {
            config,
            out,
            data,
            resume,
            teacher_cache,
        }) => train::search(&query, &config, &out, data, resume, teacher_cache),
        Some(Command::Report {
            run,
            baseline,
            json,
            format,
        }) => train::report(&run, &baseline, json.as_deref(), &format),
        Some(Command::Bench {
            filter,
            json,
            compare,
            profile,
        }) => {
            if let Some(path) = json.as_deref() {
                check_parent(path)?;
            }
            let gpu = Gpu::new(&query)?;
            bench::run(
                &gpu,
                filter.as_deref(),
                json.as_deref(),
                compare.as_deref(),
                profile,
            )
        }
        Some(Command::Op { list: true, .. }) => {
            op::list();
            Ok(())
        }
        Some(Command::Op {
            name,
            input,
            output,
            attrs,
            replay,
            ..
        }) => match (name, input, output) {
            (Some(name), Some(input), Some(output)) => {
                op::run(&query, &name, &input, &output, &attrs, replay.as_deref())
            }
            _ => Err(CliError::Message(
                "op needs NAME, --input and --output (or --list)".into(),
            )),
        },
    }
}
