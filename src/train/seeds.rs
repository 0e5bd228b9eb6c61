//! The multi-seed protocol: the whole configuration once per seed, each seed in its own folder
//! (`seed-K/`), and the top-level `summary.json` holding each model's mean ± std over the seeds
//! finished so far (rewritten after every seed, so an interrupted run keeps them). A leading
//! `once` stage trains in the first seed only; later seeds start from its models. With
//! `--resume`, every seed's folder that has progress goes on. Lifelong stages' matrices are
//! averaged over the seeds and drawn in the top-level `lifelong.svg`.

use crate::Result;
use crate::data::Dataset;
use crate::gpu::Gpu;

use super::checkpoint::{RunFolder, start_from_first_seed};
use super::config::Config;
use super::run::{RunOptions, run};
use super::summary::{Summary, aggregate, write_summary};

/// Runs `config` with seeds `config.seed`, `config.seed + 1`, … (`seeds` of them) into
/// `opts.out/seed-K/`, and returns (and writes to `opts.out`) the aggregate summary. `log`
/// receives each seed's lines, prefixed with it.
pub fn run_seeds(
    gpu: &Gpu,
    config: &Config,
    opts: &RunOptions,
    seeds: usize,
    train: &Dataset,
    test: &Dataset,
    log: &mut dyn FnMut(&str),
) -> Result<Summary> {
    if seeds == 0 {
        return Err(crate::error::input_error("--seeds", "must be at least 1"));
    }
    let first = opts.out.join(format!("seed-{}", config.seed));
    let mut runs = Vec::new();
    for k in 0..seeds {
        let mut cfg = config.clone();
        cfg.seed = config.seed + k as u64;
        let out = opts.out.join(format!("seed-{}", cfg.seed));
        let resume = if opts.resume && RunFolder::create(&out)?.has_progress() {
            true
        } else if k > 0 && config.once_stages() > 0 {
            start_from_first_seed(&cfg, &first, &out)?;
            true
        } else {
            false
        };
        let seed_opts = RunOptions {
            out,
            resume,
            ..opts.clone()
        };
        let seed = cfg.seed;
        runs.push(run(gpu, &cfg, &seed_opts, train, test, &mut |line| {
            log(&format!("seed {seed}: {line}"))
        })?);
        let summary = aggregate(&runs);
        write_summary(&opts.out, &summary)?;
        super::lifelong::write_summary_plot(&opts.out, &summary)?;
    }
    Ok(aggregate(&runs))
}
