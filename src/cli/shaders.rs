//! `wgdistill shaders`: the kernel families' WGSL files, listed or exported as standard WGSL.

use std::path::Path;

use wgdistill::gpu::shaders::SHADER_FILES;

use super::CliError;

/// Lists the files (name, whether trusted, whether they need subgroups), or writes each as
/// standard WGSL into `export` (every file written whole, then renamed into place).
pub fn run(export: Option<&Path>) -> Result<(), CliError> {
    let Some(dir) = export else {
        for f in SHADER_FILES {
            let needs = if f.subgroups { "  (subgroups)" } else { "" };
            println!("{:<18} {}{needs}", f.name, f.path);
        }
        return Ok(());
    };
    let fail = |what: &Path, e: std::io::Error| {
        CliError::Message(format!("{}: cannot write ({e})", what.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
    for f in SHADER_FILES {
        let path = dir.join(format!("{}.wgsl", f.name));
        let tmp = dir.join(format!(".{}.wgsl.tmp", f.name));
        std::fs::write(&tmp, f.standard_source())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| fail(&path, e))?;
    }
    println!(
        "wrote {} WGSL files to {}",
        SHADER_FILES.len(),
        dir.display()
    );
    Ok(())
}
