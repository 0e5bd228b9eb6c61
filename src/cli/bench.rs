//! `wgdistill bench`: time the kernel catalogue on this adapter; a table, and JSON on request.

use std::path::Path;

use wgdistill::bench;
use wgdistill::gpu::Gpu;

use super::CliError;

/// Runs the catalogue (filtered by kernel name), prints a table (and, with a peer's results, the
/// comparison for the cases both measured) and optionally writes JSON.
pub fn run(
    gpu: &Gpu,
    filter: Option<&str>,
    json: Option<&Path>,
    compare: Option<&Path>,
    profile: bool,
) -> Result<(), CliError> {
    let peers = compare.map(bench::read_peer).transpose()?;
    let cases = bench::catalogue(gpu, filter);
    if let Some(peers) = &peers {
        let shared = cases.iter().any(|c| {
            peers
                .iter()
                .any(|p| p.kernel == c.kernel && p.shape == c.shape)
        });
        if !shared {
            return Err(CliError::Message(format!(
                "{}: no case of the peer's is among the cases to run on this adapter",
                compare.map(|p| p.display().to_string()).unwrap_or_default()
            )));
        }
    }
    if let Some(f) = filter.filter(|f| !cases.iter().any(|c| c.kernel.contains(f))) {
        let mut names: Vec<String> = bench::catalogue(gpu, None)
            .into_iter()
            .map(|c| c.kernel)
            .collect();
        names.dedup();
        return Err(CliError::Message(format!(
            "--filter '{f}': no benchmark case matches; cases are {}",
            names.join(", ")
        )));
    }
    let results = bench::run(gpu, &cases, 0.2, profile)?;
    println!("adapter: {}", gpu.caps().label());
    println!(
        "{:<14} {:<38} {:>11} {:>16} {:>26} {:>8}  kernels",
        "kernel", "shape", "ms", "throughput", "vs baseline (same run)", "launches"
    );
    for r in &results {
        let throughput = match (r.gflops, r.gbps, r.samples_per_second) {
            (Some(g), _, _) => format!("{g:.1} GFLOP/s"),
            (_, Some(g), _) => format!("{g:.1} GB/s"),
            (_, _, Some(n)) => format!("{n:.0} samples/s"),
            _ => "-".to_string(),
        };
        let ratio = match (&r.baseline, r.ratio) {
            (Some(b), Some(x)) => format!("{x:.2}× {}", b.split(' ').next().unwrap_or(b)),
            _ => String::new(),
        };
        println!(
            "{:<14} {:<38} {:>11.4} {:>16} {:>26} {:>8}  {}",
            r.kernel,
            r.shape,
            r.seconds * 1e3,
            throughput,
            ratio,
            r.launches,
            r.kernels.join(", ")
        );
    }
    for r in results.iter().filter(|r| !r.profile.is_empty()) {
        let total: f64 = r.profile.iter().map(|k| k.seconds).sum();
        println!();
        println!(
            "{} {}: {:.3} ms in its launches timed alone, by kernel:",
            r.kernel,
            r.shape,
            total * 1e3
        );
        for k in &r.profile {
            println!(
                "  {:>5.1}%  {:>9.3} ms  {:>4}×  {}",
                100.0 * k.seconds / total,
                k.seconds * 1e3,
                k.launches,
                k.kernel
            );
        }
        println!("the slowest launches (their place in the plan, from 0):");
        for l in &r.slowest {
            println!(
                "  {:>5.1}%  {:>9.3} ms  #{:<4} {}",
                100.0 * l.seconds / total,
                l.seconds * 1e3,
                l.index,
                l.kernel
            );
        }
    }
    if let Some(peers) = &peers {
        println!();
        println!(
            "{:<14} {:<38} {:>12} {:>12} {:>9}  peer",
            "case", "shape", "ours ms", "peer ms", "speedup"
        );
        for c in bench::compare(&results, peers) {
            println!(
                "{:<14} {:<38} {:>12.4} {:>12.4} {:>8.2}×  {}",
                c.kernel,
                c.shape,
                c.ours * 1e3,
                c.theirs * 1e3,
                c.speedup,
                c.peer
            );
        }
    }
    if let Some(path) = json {
        let text =
            serde_json::to_string_pretty(&results).map_err(|e| CliError::Message(e.to_string()))?;
        wgdistill::io::write_atomic(path, text.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
