//! Which variant each tunable kernel family launches on an adapter: by its device type until
//! `wgdistill tune` has timed the variants on it, then the fastest, read from the tuning file
//! (one entry per adapter and driver) whenever a device is opened.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::caps::{Capabilities, KernelStyle};
use crate::error::{Result, input_error};

/// A way of blocking a kernel family's work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// Barrier-free, a large block per invocation in registers (`matmul_rb`, the direct convs).
    RegisterBlocked,
    /// Tiles staged in workgroup memory, 64×64 (`matmul_tiled`); convolutions have no such
    /// kernel and run their direct ones.
    WorkgroupTiled,
    /// The same with 128×128 double-buffered tiles (`matmul_tiled128`) for products of enough
    /// of them, 64×64 below: faster where registers and workgroup memory allow (on an H200
    /// through Vulkan, 4× slower than 64×64 at 4096³: timed, never assumed).
    #[serde(rename = "workgroup_tiled_128")]
    WorkgroupTiled128,
    /// The `*_subgroup.wgsl` kernels, where a launch's alignment allows, else register-blocked.
    Subgroup,
}

impl Variant {
    /// The kernel style the family's launchers block by.
    pub fn style(self) -> KernelStyle {
        match self {
            Variant::WorkgroupTiled | Variant::WorkgroupTiled128 => KernelStyle::WorkgroupTiled,
            Variant::RegisterBlocked | Variant::Subgroup => KernelStyle::RegisterBlocked,
        }
    }

    /// Whether the launchers take their subgroup kernels: `None` wherever they apply.
    pub fn subgroups(self) -> Option<bool> {
        match self {
            Variant::Subgroup => None,
            Variant::RegisterBlocked | Variant::WorkgroupTiled | Variant::WorkgroupTiled128 => {
                Some(false)
            }
        }
    }

    /// Whether the workgroup-tiled matmul takes its 128×128 tiles: never for
    /// [`Variant::WorkgroupTiled`], by the product's size for [`Variant::WorkgroupTiled128`].
    pub fn large_tiles(self) -> Option<bool> {
        match self {
            Variant::WorkgroupTiled => Some(false),
            _ => None,
        }
    }

    /// The name used in the tuning file and by `devices`.
    pub fn name(self) -> &'static str {
        match self {
            Variant::RegisterBlocked => "register_blocked",
            Variant::WorkgroupTiled => "workgroup_tiled",
            Variant::WorkgroupTiled128 => "workgroup_tiled_128",
            Variant::Subgroup => "subgroup",
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The variant of each tunable family: matrix multiply (every linear layer and most losses'
/// products) and the ordinary convolutions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelChoices {
    /// `kernels::matmul`.
    pub matmul: Variant,
    /// `kernels::conv` (ungrouped convolutions; depthwise ones have their own kernels).
    pub conv: Variant,
}

impl KernelChoices {
    /// The choice by kernel style alone: the register-blocked style takes the subgroup kernels
    /// where the adapter has wide enough subgroups.
    pub fn by_style(style: KernelStyle, subgroup_kernels: bool) -> Self {
        let v = match style {
            KernelStyle::WorkgroupTiled => Variant::WorkgroupTiled,
            KernelStyle::RegisterBlocked if subgroup_kernels => Variant::Subgroup,
            KernelStyle::RegisterBlocked => Variant::RegisterBlocked,
        };
        Self { matmul: v, conv: v }
    }
}

/// Where an adapter's [`KernelChoices`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChoiceSource {
    /// Its device type (not tuned yet).
    DeviceType,
    /// Timed by `wgdistill tune`, read from the tuning file.
    Tuned,
    /// Set by `WGDISTILL_KERNEL_STYLE` or by the program ([`super::Gpu::set_kernels`]).
    Override,
}

/// What one variant took on one case, as `tune` measured it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Timing {
    /// `matmul` or `conv`.
    pub family: String,
    /// The variant timed.
    pub variant: Variant,
    /// The case: a bench case's kernel and shape.
    pub case: String,
    /// Seconds per run.
    pub seconds: f64,
}

/// One adapter's tuned choices, with the timings they were chosen by.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    /// Adapter name.
    pub adapter: String,
    /// Backend.
    pub backend: String,
    /// Driver name.
    pub driver: String,
    /// Driver version and details: a driver update invalidates the entry.
    pub driver_info: String,
    /// When it was tuned, seconds since the Unix epoch.
    pub tuned_at: u64,
    /// The winners.
    pub choices: KernelChoices,
    /// Every variant's time on every case.
    pub timings: Vec<Timing>,
}

impl Entry {
    /// Adapter, backend, driver and driver version: what an entry is for.
    fn key(&self) -> [&str; 4] {
        [
            &self.adapter,
            &self.backend,
            &self.driver,
            &self.driver_info,
        ]
    }

    fn describes(&self, caps: &Capabilities) -> bool {
        self.key() == [&caps.name, caps.backend, &caps.driver, &caps.driver_info]
    }
}

/// The tuning file: an entry per adapter and driver.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuningFile {
    /// The entries, one per adapter and driver.
    pub entries: Vec<Entry>,
}

impl TuningFile {
    /// Reads `path`; a missing file is an empty one.
    pub fn read(path: &Path) -> Result<TuningFile> {
        let what = || format!("tuning file {}", path.display());
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(input_error(what(), e.to_string())),
        };
        serde_json::from_str(&text).map_err(|e| {
            input_error(
                what(),
                format!("{e}; run `wgdistill tune` again or delete the file"),
            )
        })
    }

    /// Writes it to `path` (a new file renamed over the old, so a reader never sees half).
    pub fn write(&self, path: &Path) -> Result<()> {
        let what = || format!("tuning file {}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| input_error(what(), e.to_string()))?;
        }
        let text =
            serde_json::to_string_pretty(self).map_err(|e| input_error(what(), e.to_string()))?;
        let temp = path.with_extension("json.partial");
        std::fs::write(&temp, text + "\n").map_err(|e| input_error(what(), e.to_string()))?;
        std::fs::rename(&temp, path).map_err(|e| input_error(what(), e.to_string()))
    }

    /// The entry for this adapter and driver.
    pub fn find(&self, caps: &Capabilities) -> Option<&Entry> {
        self.entries.iter().find(|e| e.describes(caps))
    }

    /// Adds `entry`, replacing the one for the same adapter and driver.
    pub fn insert(&mut self, entry: Entry) {
        self.entries.retain(|e| e.key() != entry.key());
        self.entries.push(entry);
    }
}

/// Where the tuning file is: `WGDISTILL_TUNING` (a path; `off` reads none), else
/// `$XDG_CACHE_HOME/wgdistill/tuning.json`, else `~/.cache/wgdistill/tuning.json`.
pub fn default_path() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = env("WGDISTILL_TUNING") {
        return (p != "off").then(|| PathBuf::from(p));
    }
    env("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("wgdistill").join("tuning.json"))
}

impl Capabilities {
    /// With the tuning file's choices for this adapter and driver, if it has an entry and no
    /// `WGDISTILL_KERNEL_STYLE` overrides them; a damaged file is an error naming it.
    pub fn tuned(mut self) -> Result<Self> {
        if self.kernels_from == ChoiceSource::Override {
            return Ok(self);
        }
        if let Some(path) = default_path()
            && let Some(entry) = TuningFile::read(&path)?.find(&self)
        {
            self.kernels = entry.choices;
            self.kernels_from = ChoiceSource::Tuned;
        }
        Ok(self)
    }
}
