//! `wgdistill bench`: time the kernel catalogue on this adapter; a table, and JSON on request.

use std::path::Path;

use wgdistill::bench;
use wgdistill::gpu::Gpu;

use super::CliError;

/// Runs the catalogue (filtered by kernel name), prints a table and optionally writes JSON.
pub fn run(gpu: &Gpu, filter: Option<&str>, json: Option<&Path>) -> Result<(), CliError> {
    let cases = bench::catalogue(gpu, filter);
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
    let results = bench::run(gpu, &cases, 0.2)?;
    println!("adapter: {}", gpu.caps().label());
    println!(
        "{:<14} {:<28} {:>11} {:>14} {:>26}  kernels",
        "kernel", "shape", "ms", "throughput", "vs baseline (same run)"
    );
    for r in &results {
        let throughput = match (r.gflops, r.gbps) {
            (Some(g), _) => format!("{g:.1} GFLOP/s"),
            (_, Some(g)) => format!("{g:.1} GB/s"),
            _ => "-".to_string(),
        };
        let ratio = match (&r.baseline, r.ratio) {
            (Some(b), Some(x)) => format!("{x:.2}× {}", b.split(' ').next().unwrap_or(b)),
            _ => String::new(),
        };
        println!(
            "{:<14} {:<28} {:>11.4} {:>14} {:>26}  {}",
            r.kernel,
            r.shape,
            r.seconds * 1e3,
            throughput,
            ratio,
            r.kernels.join(", ")
        );
    }
    if let Some(path) = json {
        let text =
            serde_json::to_string_pretty(&results).map_err(|e| CliError::Message(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| CliError::Message(format!("{}: cannot write ({e})", path.display())))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
