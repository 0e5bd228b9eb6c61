//! `wgdistill tune`: times the tunable families' variants on the chosen adapter and keeps the
//! fastest in the tuning file, which later runs on this adapter and driver read.

use std::path::{Path, PathBuf};

use wgdistill::gpu::tuning::{self, TuningFile};
use wgdistill::gpu::{AdapterQuery, Gpu};
use wgdistill::tune::Family;

use super::CliError;

/// Tunes (rounds of about 0.05 s with `quick`, else 0.3 s) and writes the entry into `file`,
/// else the default tuning file; prints every timing and the winners.
pub fn run(
    query: &AdapterQuery,
    file: Option<&Path>,
    families: &[String],
    quick: bool,
) -> Result<(), CliError> {
    let families = if families.is_empty() {
        Family::ALL.to_vec()
    } else {
        families
            .iter()
            .map(|f| {
                Family::parse(f).ok_or_else(|| {
                    CliError::Message(format!("--family '{f}': expected matmul or conv"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let path: PathBuf = match file {
        Some(p) => {
            super::check_parent(p)?;
            p.to_path_buf()
        }
        None => tuning::default_path().ok_or_else(|| {
            CliError::Message(
                "tune: no tuning file: WGDISTILL_TUNING is off and neither XDG_CACHE_HOME nor HOME is set; give --file PATH".into(),
            )
        })?,
    };
    // Read first: a damaged file is reported before minutes of timing.
    let mut table = TuningFile::read(&path)?;
    let mut gpu = Gpu::new(query)?;
    println!("adapter: {}", gpu.caps().label());
    println!(
        "{:<8} {:<19} {:<44} {:>11}",
        "family", "variant", "case", "ms"
    );
    let target = if quick { 0.05 } else { 0.3 };
    let entry = wgdistill::tune::tune(&mut gpu, &families, target, &mut |t| {
        println!(
            "{:<8} {:<19} {:<44} {:>11.3}",
            t.family,
            t.variant.name(),
            t.case,
            t.seconds * 1e3
        );
    })?;
    println!(
        "fastest: matmul {}, conv {}; written to {}",
        entry.choices.matmul,
        entry.choices.conv,
        path.display()
    );
    table.insert(entry);
    table.write(&path)?;
    Ok(())
}
