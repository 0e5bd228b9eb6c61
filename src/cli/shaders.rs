//! `wgdistill shaders`: the kernel families' WGSL files, listed or exported as standard WGSL
//! with a list of the kernels the launchers build from them.

use std::path::Path;

use serde::Serialize;
use wgdistill::gpu::replay::binding_name;
use wgdistill::gpu::shaders::{SHADER_FILES, needs_subgroups};
use wgdistill::io::write_atomic;
use wgdistill::kernels;

use super::CliError;

/// One pipeline the launchers build, as `kernels.json` lists it for other implementations.
#[derive(Serialize)]
struct KernelEntry {
    family: &'static str,
    entry: &'static str,
    /// `uniform`, `read-only-storage` or `storage` for bindings 0.. of group 0.
    bindings: Vec<&'static str>,
    /// Boolean override constants; every combination is a pipeline the launchers may build.
    overrides: &'static [&'static str],
    /// Whether the family needs the `subgroups` feature.
    subgroups: bool,
}

/// Lists the files (name, whether they need subgroups), or writes each as standard WGSL into
/// `export` with `kernels.json` (every file written whole, then renamed into place).
pub fn run(export: Option<&Path>) -> Result<(), CliError> {
    let Some(dir) = export else {
        for f in SHADER_FILES {
            let needs = if f.subgroups { "  (subgroups)" } else { "" };
            println!("{:<18} {}{needs}", f.name, f.path);
        }
        return Ok(());
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::Message(format!("{}: cannot create ({e})", dir.display())))?;
    for f in SHADER_FILES {
        write_atomic(
            &dir.join(format!("{}.wgsl", f.name)),
            f.standard_source().as_bytes(),
        )?;
    }
    let list: Vec<KernelEntry> = kernels::all_kernels()
        .iter()
        .map(|k| KernelEntry {
            family: k.family,
            entry: k.entry,
            bindings: k.bindings.iter().map(|b| binding_name(*b)).collect(),
            overrides: k.overrides,
            subgroups: needs_subgroups(k.family),
        })
        .collect();
    let text = serde_json::to_string_pretty(&list).map_err(|e| CliError::Message(e.to_string()))?;
    write_atomic(&dir.join("kernels.json"), text.as_bytes())?;
    println!(
        "wrote {} WGSL files and kernels.json ({} kernels) to {}",
        SHADER_FILES.len(),
        list.len(),
        dir.display()
    );
    Ok(())
}
