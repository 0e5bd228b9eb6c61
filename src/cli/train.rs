//! `wgdistill train CONFIG --out DIR [--data DIR]`, and the main job (the embedded default
//! configuration) that `wgdistill` runs with no arguments.

use std::path::{Path, PathBuf};

use wgdistill::gpu::{AdapterQuery, Gpu};
use wgdistill::train::config::{self, Config, DEFAULT_CONFIG};
use wgdistill::train::run::{self, RunOptions, Summary};

use super::CliError;

fn print_table(summary: &Summary) {
    println!();
    println!(
        "adapter: {} ({}, {})",
        summary.adapter.name, summary.adapter.backend, summary.adapter.driver
    );
    println!("data: {}", summary.data);
    println!(
        "{:<18} {:<18} {:>13} {:>11} {:>7} {:>10} {:>10}",
        "stage", "model", "test accuracy", "best", "epochs", "wall s", "samples/s"
    );
    for s in &summary.stages {
        for m in &s.models {
            println!(
                "{:<18} {:<18} {:>13.4} {:>11.4} {:>7} {:>10.1} {:>10.0}",
                s.name,
                m.model,
                m.test_accuracy,
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

fn execute(query: &AdapterQuery, what: &str, text: &str, opts: RunOptions) -> Result<(), CliError> {
    let (config, (train, test)) = prepare(what, text, &opts.out, &opts)?;
    println!(
        "data: {} ({} training, {} test samples)",
        train.source,
        train.len(),
        test.len()
    );
    let gpu = Gpu::new(query)?;
    println!("adapter: {}", gpu.caps().label());
    let summary = run::run(&gpu, &config, &opts, &train, &test, &mut |line| {
        println!("{line}")
    })?;
    print_table(&summary);
    println!("results in {}", opts.out.display());
    Ok(())
}

/// `wgdistill train`.
pub fn train(
    query: &AdapterQuery,
    config: &Path,
    out: &Path,
    data: Option<PathBuf>,
) -> Result<(), CliError> {
    let what = config.display().to_string();
    let text = std::fs::read_to_string(config)
        .map_err(|e| CliError::Message(format!("{what}: cannot read ({e})")))?;
    let opts = RunOptions {
        out: out.to_path_buf(),
        data_dir: data,
        fallback_to_synthetic: false,
    };
    execute(query, &what, &text, opts)
}

/// The main job: the default configuration, Fashion-MNIST when found, else the synthetic set.
pub fn main_job(query: &AdapterQuery, data: Option<PathBuf>) -> Result<(), CliError> {
    let opts = RunOptions {
        out: PathBuf::from("wgdistill-run"),
        data_dir: data,
        fallback_to_synthetic: true,
    };
    execute(query, "default config", DEFAULT_CONFIG, opts)
}

/// `--print-default-config`.
pub fn print_default() {
    print!("{DEFAULT_CONFIG}");
}
