//! `wgdistill check`: every case of the catalogue's check suite (each kernel family's, every
//! loss's) against its f64 CPU reference on this adapter; a table, and failure if any case is
//! off. The conformance check for a new GPU or driver.

use std::time::Instant;

use wgdistill::catalogue::{self, Suite};
use wgdistill::gpu::Gpu;

use super::CliError;

/// Runs every check and prints a table; any failure makes the command fail.
pub fn run(gpu: &Gpu) -> Result<(), CliError> {
    println!("adapter: {}", gpu.caps().label());
    println!(
        "{:<34} {:>30} {:>10} {:>10} {:>6} {:>9}",
        "kernel", "shape", "max abs", "max rel", "result", "ms"
    );
    let cases = catalogue::all(gpu, Suite::Check);
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
