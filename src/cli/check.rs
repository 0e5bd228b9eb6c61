//! `wgdistill check`: every case of the catalogue's check suite (each kernel family's, every
//! loss's) against its f64 CPU reference on this adapter; a table, and failure if any case is
//! off. The conformance check for a new GPU or driver.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use wgdistill::catalogue::{self, Case, Suite};
use wgdistill::gpu::Gpu;
use wgdistill::io::write_atomic;

use super::CliError;

/// A line of the records' `index.json`.
#[derive(Serialize)]
struct IndexEntry {
    file: String,
    kernel: String,
    shape: String,
}

/// Writes every case's launch record into `dir` (created if missing) and its `index.json`.
fn write_replays(gpu: &Gpu, cases: &[Case], dir: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::Message(format!("{}: cannot create ({e})", dir.display())))?;
    let mut index = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let slug: String = case
            .kernel
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let file = format!("{i:03}-{slug}.json");
        write_atomic(&dir.join(&file), case.replay(gpu)?.to_json().as_bytes())?;
        index.push(IndexEntry {
            file,
            kernel: case.kernel.clone(),
            shape: case.shape.clone(),
        });
    }
    let text =
        serde_json::to_string_pretty(&index).map_err(|e| CliError::Message(e.to_string()))?;
    write_atomic(&dir.join("index.json"), text.as_bytes())?;
    println!("wrote {} launch records to {}", index.len(), dir.display());
    Ok(())
}

/// Runs every check and prints a table; any failure makes the command fail. With `replay`,
/// first writes every case as a launch record there.
pub fn run(gpu: &Gpu, replay: Option<&Path>) -> Result<(), CliError> {
    println!("adapter: {}", gpu.caps().label());
    println!(
        "{:<34} {:>30} {:>10} {:>10} {:>6} {:>9}",
        "kernel", "shape", "max abs", "max rel", "result", "ms"
    );
    let cases = catalogue::all(gpu, Suite::Check);
    if let Some(dir) = replay {
        write_replays(gpu, &cases, dir)?;
    }
    let mut failures = 0;
    for case in &cases {
        let start = Instant::now();
        let verdict = case.verify(gpu);
        let ms = start.elapsed().as_secs_f64() * 1e3;
        match verdict {
            Ok(v) => {
                failures += usize::from(!v.pass);
                println!(
                    "{:<34} {:>30} {:>10.2e} {:>10.2e} {:>6} {ms:>9.2}",
                    case.kernel,
                    case.shape,
                    v.max_abs,
                    v.max_rel,
                    if v.pass { "pass" } else { "FAIL" }
                );
            }
            // A case that cannot run here (a driver limit, a missing feature) fails with why.
            Err(e) => {
                failures += 1;
                println!("{:<34} {:>30} FAIL: {e}", case.kernel, case.shape);
            }
        }
    }
    if failures > 0 {
        return Err(CliError::Message(format!(
            "{failures} of {} kernel checks failed on {}",
            cases.len(),
            gpu.caps().name
        )));
    }
    println!("all {} kernel checks passed", cases.len());
    Ok(())
}
