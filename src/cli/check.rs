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

/// Where `--replay` writes: the folder, and its index as it grows.
struct Records<'a> {
    dir: &'a Path,
    index: Vec<IndexEntry>,
}

impl Records<'_> {
    /// Writes case `i`'s launch record and adds it to the index.
    fn write(&mut self, gpu: &Gpu, i: usize, case: &Case) -> Result<(), CliError> {
        let slug: String = case
            .kernel
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let file = format!("{i:03}-{slug}.json");
        write_atomic(
            &self.dir.join(&file),
            case.replay(gpu)?.to_json()?.as_bytes(),
        )?;
        self.index.push(IndexEntry {
            file,
            kernel: case.kernel.clone(),
            shape: case.shape.clone(),
        });
        Ok(())
    }

    /// Writes `index.json`, listing the records written.
    fn finish(self) -> Result<(), CliError> {
        let text = serde_json::to_string_pretty(&self.index)
            .map_err(|e| CliError::Message(e.to_string()))?;
        write_atomic(&self.dir.join("index.json"), text.as_bytes())?;
        println!(
            "wrote {} launch records to {}",
            self.index.len(),
            self.dir.display()
        );
        Ok(())
    }
}

/// Runs every check and prints a table; any failure makes the command fail. With `replay`,
/// also writes every case as a launch record there (a case that cannot be recorded fails).
pub fn run(gpu: &Gpu, replay: Option<&Path>) -> Result<(), CliError> {
    let mut records = match replay {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                CliError::Message(format!("{}: cannot create ({e})", dir.display()))
            })?;
            Some(Records {
                dir,
                index: Vec::new(),
            })
        }
        None => None,
    };
    println!("adapter: {}", gpu.caps().label());
    println!(
        "{:<34} {:>30} {:>10} {:>10} {:>6} {:>9}",
        "kernel", "shape", "max abs", "max rel", "result", "ms"
    );
    let cases = catalogue::all(gpu, Suite::Check);
    let mut failures = 0;
    for (i, case) in cases.iter().enumerate() {
        let start = Instant::now();
        let recorded = records.as_mut().map_or(Ok(()), |r| r.write(gpu, i, case));
        let verdict = recorded.and_then(|()| case.verify(gpu).map_err(CliError::from));
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
    if let Some(records) = records {
        records.finish()?;
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
