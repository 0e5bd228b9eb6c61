//! Which adapter to run on: parsing `--backend`/`WGPU_BACKEND` and `--adapter`/`WGPU_ADAPTER_NAME`,
//! enumerating adapters, and choosing one ourselves (wgpu's own env helper panics when the name
//! matches nothing).

use crate::error::{Error, Result};

/// What the user asked for: a set of backends and, optionally, a substring of the adapter name.
#[derive(Clone, Debug)]
pub struct AdapterQuery {
    /// Backends to search.
    pub backends: wgpu::Backends,
    /// Case-insensitive substring the adapter's name must contain.
    pub name: Option<String>,
}

impl Default for AdapterQuery {
    fn default() -> Self {
        Self {
            backends: native_backends(),
            name: None,
        }
    }
}

/// Every native backend compiled into wgdistill.
pub fn native_backends() -> wgpu::Backends {
    wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12 | wgpu::Backends::GL
}

/// Parses `vulkan`, `metal`, `dx12`, `gl` (and common aliases), or a comma-separated list of them.
pub fn parse_backends(text: &str) -> Result<wgpu::Backends> {
    let mut backends = wgpu::Backends::empty();
    for word in text.split(',').map(|w| w.trim().to_ascii_lowercase()) {
        backends |= match word.as_str() {
            "vulkan" | "vk" => wgpu::Backends::VULKAN,
            "metal" | "mtl" => wgpu::Backends::METAL,
            "dx12" | "d3d12" => wgpu::Backends::DX12,
            "gl" | "gles" | "opengl" => wgpu::Backends::GL,
            "all" | "primary" | "native" => native_backends(),
            _ => return Err(Error::UnknownBackend(text.trim().to_string())),
        };
    }
    Ok(backends)
}

/// The lower-case name we use for a backend.
pub fn backend_name(backend: wgpu::Backend) -> &'static str {
    match backend {
        wgpu::Backend::Vulkan => "vulkan",
        wgpu::Backend::Metal => "metal",
        wgpu::Backend::Dx12 => "dx12",
        wgpu::Backend::Gl => "gl",
        wgpu::Backend::BrowserWebGpu => "webgpu",
        wgpu::Backend::Noop => "noop",
    }
}

/// Names of every backend in a set, comma-separated.
pub fn backends_names(backends: wgpu::Backends) -> String {
    let all = [
        (wgpu::Backends::VULKAN, "vulkan"),
        (wgpu::Backends::METAL, "metal"),
        (wgpu::Backends::DX12, "dx12"),
        (wgpu::Backends::GL, "gl"),
    ];
    let names: Vec<&str> = all
        .iter()
        .filter(|(b, _)| backends.contains(*b))
        .map(|(_, n)| *n)
        .collect();
    names.join(",")
}

impl AdapterQuery {
    /// Builds a query from an optional backend list and an optional adapter-name substring.
    /// Empty strings count as absent.
    pub fn new(backend: Option<&str>, name: Option<&str>) -> Result<Self> {
        let backends = match backend.map(str::trim).filter(|s| !s.is_empty()) {
            Some(text) => parse_backends(text)?,
            None => native_backends(),
        };
        let name = name
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        Ok(Self { backends, name })
    }

    /// Reads `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`.
    pub fn from_env() -> Result<Self> {
        let backend = std::env::var("WGPU_BACKEND").ok();
        let name = std::env::var("WGPU_ADAPTER_NAME").ok();
        Self::new(backend.as_deref(), name.as_deref())
    }

    /// Whether an adapter with this info answers the query.
    pub fn matches(&self, info: &wgpu::AdapterInfo) -> bool {
        let backend_ok = self.backends.contains(wgpu::Backends::from(info.backend));
        let name_ok = self.name.as_ref().is_none_or(|n| {
            info.name
                .to_ascii_lowercase()
                .contains(&n.to_ascii_lowercase())
        });
        backend_ok && name_ok
    }

    fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!(
                "backends {} with a name containing '{name}'",
                backends_names(self.backends)
            ),
            None => format!("backends {}", backends_names(self.backends)),
        }
    }
}

/// Creates an instance over the given backends, without a display.
pub fn create_instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Every adapter the instance sees on these backends.
pub fn enumerate(instance: &wgpu::Instance, backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance.enumerate_adapters(backends))
}

/// Preference among matching adapters: real GPUs before software ones, Vulkan/Metal/DX12 before GL.
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (device, backend)
}

/// Picks the best adapter answering the query, or says what was tried and how to fix it.
pub fn choose(instance: &wgpu::Instance, query: &AdapterQuery) -> Result<wgpu::Adapter> {
    let all = enumerate(instance, query.backends);
    let seen: Vec<String> = all
        .iter()
        .map(|a| {
            let info = a.get_info();
            format!("{} ({})", info.name, backend_name(info.backend))
        })
        .collect();
    all.into_iter()
        .filter(|a| query.matches(&a.get_info()))
        .min_by_key(|a| rank(&a.get_info()))
        .ok_or_else(|| Error::NoAdapter {
            tried: query.describe(),
            hint: hint(query, &seen),
        })
}

/// The fix for a failed adapter search, for this platform and request.
fn hint(query: &AdapterQuery, seen: &[String]) -> String {
    if !seen.is_empty() {
        return format!(
            "adapters present: {}; pick one with --adapter NAME or WGPU_ADAPTER_NAME",
            seen.join(", ")
        );
    }
    let unavailable: Vec<&str> = [
        (
            wgpu::Backends::METAL,
            "metal",
            cfg!(target_vendor = "apple"),
        ),
        (wgpu::Backends::DX12, "dx12", cfg!(windows)),
    ]
    .iter()
    .filter(|(b, _, ok)| query.backends.contains(*b) && !ok)
    .map(|(_, n, _)| *n)
    .collect();
    let others = query.backends & (wgpu::Backends::VULKAN | wgpu::Backends::GL);
    if !unavailable.is_empty() && others.is_empty() {
        return format!(
            "{} is not available on this platform; use --backend vulkan or --backend gl",
            unavailable.join(" and ")
        );
    }
    if cfg!(target_os = "linux") {
        "install a Vulkan driver (without a GPU: apt-get install mesa-vulkan-drivers) or try --backend gl".to_string()
    } else {
        "install or update the GPU driver, or try another --backend".to_string()
    }
}
