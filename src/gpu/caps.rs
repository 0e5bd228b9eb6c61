//! What the chosen adapter can do, in the terms the rest of the engine consults.

use serde::Serialize;

use super::select::backend_name;
use super::tuning::{ChoiceSource, KernelChoices};

/// How kernels should block their work on this adapter, chosen once per device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelStyle {
    /// Barrier-free kernels where each invocation keeps a large block in registers. CPU-like
    /// drivers (lavapipe, llvmpipe) run workgroups as SIMD loops and pay heavily for barriers.
    RegisterBlocked,
    /// Kernels that stage tiles in workgroup memory between barriers: what real GPUs want.
    WorkgroupTiled,
}

impl KernelStyle {
    /// The style for a device type.
    pub fn for_device_type(device_type: wgpu::DeviceType) -> Self {
        match device_type {
            wgpu::DeviceType::Cpu => Self::RegisterBlocked,
            _ => Self::WorkgroupTiled,
        }
    }

    /// Parses `register_blocked` or `workgroup_tiled` (for overrides such as `WGDISTILL_KERNEL_STYLE`).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "register_blocked" | "register" => Some(Self::RegisterBlocked),
            "workgroup_tiled" | "tiled" => Some(Self::WorkgroupTiled),
            _ => None,
        }
    }
}

impl std::fmt::Display for KernelStyle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::RegisterBlocked => "register_blocked",
            Self::WorkgroupTiled => "workgroup_tiled",
        })
    }
}

/// The limits that matter to compute kernels, copied out of `wgpu::Limits`.
#[derive(Clone, Debug, Serialize)]
pub struct ComputeLimits {
    /// Largest storage-buffer binding, bytes.
    pub max_storage_buffer_binding_size: u64,
    /// Largest buffer, bytes.
    pub max_buffer_size: u64,
    /// Storage buffers one shader stage may bind.
    pub max_storage_buffers_per_shader_stage: u32,
    /// Workgroup (shared) memory, bytes.
    pub max_compute_workgroup_storage_size: u32,
    /// Invocations in one workgroup.
    pub max_compute_invocations_per_workgroup: u32,
    /// Workgroup size in x.
    pub max_compute_workgroup_size_x: u32,
    /// Workgroups in one dispatch dimension.
    pub max_compute_workgroups_per_dimension: u32,
    /// Alignment of storage-buffer binding offsets, bytes.
    pub min_storage_buffer_offset_alignment: u32,
    /// Alignment of uniform-buffer binding offsets, bytes.
    pub min_uniform_buffer_offset_alignment: u32,
}

impl From<&wgpu::Limits> for ComputeLimits {
    fn from(l: &wgpu::Limits) -> Self {
        Self {
            max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
            max_buffer_size: l.max_buffer_size,
            max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
            max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
            max_compute_workgroup_size_x: l.max_compute_workgroup_size_x,
            max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
            min_storage_buffer_offset_alignment: l.min_storage_buffer_offset_alignment,
            min_uniform_buffer_offset_alignment: l.min_uniform_buffer_offset_alignment,
        }
    }
}

/// An adapter's identity, features and limits, as reported by `devices` and recorded with benches.
#[derive(Clone, Debug, Serialize)]
pub struct Capabilities {
    /// Adapter name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// `vulkan`, `metal`, `dx12` or `gl`.
    pub backend: &'static str,
    /// `discrete_gpu`, `integrated_gpu`, `virtual_gpu`, `cpu` or `other`.
    pub device_type: &'static str,
    /// Driver name.
    pub driver: String,
    /// Driver version and details.
    pub driver_info: String,
    /// PCI vendor id.
    pub vendor: u32,
    /// PCI device id.
    pub device: u32,
    /// Whether pass-level timestamp queries are available (and enabled).
    pub timestamp_query: bool,
    /// Whether `enable f16;` shaders are available (and enabled).
    pub shader_f16: bool,
    /// Whether subgroup operations are available (and enabled).
    pub subgroups: bool,
    /// Subgroup sizes the adapter reports, smallest and largest.
    pub subgroup_sizes: [u32; 2],
    /// Whether WGSL's packed four-byte dot products (`dot4I8Packed`, the
    /// `packed_4x8_integer_dot_product` language extension) are available: the int8 kernels then
    /// use `shaders/int8_dot4.wgsl`, otherwise their by-hand unpacking.
    pub packed_dot: bool,
    /// The kernel style chosen for this adapter by its device type (or `WGDISTILL_KERNEL_STYLE`).
    pub kernel_style: KernelStyle,
    /// The variant each tunable family launches: by [`Capabilities::kernel_style`] until
    /// `wgdistill tune` has timed them here.
    pub kernels: KernelChoices,
    /// Where [`Capabilities::kernels`] came from.
    pub kernels_from: ChoiceSource,
    /// Limits that matter to compute.
    pub limits: ComputeLimits,
    /// The most loop iterations one invocation may run in all, where the driver cuts loops
    /// short: llvmpipe (lavapipe on Vulkan, llvmpipe on GL) ends every loop of an invocation,
    /// silently, once the invocation has run [`LLVMPIPE_LOOP_LIMIT`] iterations across all its
    /// loops. `None` where no such limit is known.
    pub loop_limit: Option<u64>,
}

/// Mesa's `LP_MAX_TGSI_LOOP_ITERATIONS`: the loop iterations, over all loops together, after
/// which an llvmpipe shader invocation stops looping.
pub const LLVMPIPE_LOOP_LIMIT: u64 = 65_535;

/// The loop limit of an adapter by name (llvmpipe's, or none).
pub fn loop_limit_of(adapter_name: &str) -> Option<u64> {
    adapter_name
        .to_ascii_lowercase()
        .contains("llvmpipe")
        .then_some(LLVMPIPE_LOOP_LIMIT)
}

/// Lanes a subgroup needs for the subgroup kernels: their 8-invocation workgroup must be one
/// subgroup.
pub const SUBGROUP_KERNEL_LANES: u32 = 8;

impl Capabilities {
    /// Whether the subgroup kernels (`shaders/matmul_subgroup.wgsl`, `conv_subgroup.wgsl`) can
    /// run here: they need subgroups of at least 8 lanes, so that their 8-invocation workgroup is
    /// one subgroup. They are tuned for CPU-like drivers, and chosen by default only with the
    /// register-blocked style.
    pub fn subgroup_matmul(&self) -> bool {
        self.subgroups && self.subgroup_sizes[0] >= SUBGROUP_KERNEL_LANES
    }
}

/// The optional features wgdistill asks for when the adapter has them.
pub fn wanted_features() -> wgpu::Features {
    wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP
}

fn device_type_name(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete_gpu",
        wgpu::DeviceType::IntegratedGpu => "integrated_gpu",
        wgpu::DeviceType::VirtualGpu => "virtual_gpu",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    }
}

impl Capabilities {
    /// Describes an adapter with the features and limits a device would get on it.
    pub fn describe(
        info: &wgpu::AdapterInfo,
        features: wgpu::Features,
        limits: &wgpu::Limits,
    ) -> Self {
        let style_override = std::env::var("WGDISTILL_KERNEL_STYLE")
            .ok()
            .and_then(|s| KernelStyle::parse(&s));
        let kernel_style = style_override.unwrap_or(KernelStyle::for_device_type(info.device_type));
        let subgroups = features.contains(wgpu::Features::SUBGROUP);
        let subgroup_kernels = subgroups && info.subgroup_min_size >= SUBGROUP_KERNEL_LANES;
        Self {
            name: info.name.clone(),
            backend: backend_name(info.backend),
            device_type: device_type_name(info.device_type),
            // GL reports no driver name; its driver_info carries the version string.
            driver: if info.driver.is_empty() {
                backend_name(info.backend).to_string()
            } else {
                info.driver.clone()
            },
            driver_info: info.driver_info.clone(),
            vendor: info.vendor,
            device: info.device,
            timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups,
            subgroup_sizes: [info.subgroup_min_size, info.subgroup_max_size],
            packed_dot: false,
            kernel_style,
            kernels: KernelChoices::by_style(kernel_style, subgroup_kernels),
            kernels_from: if style_override.is_some() {
                ChoiceSource::Override
            } else {
                ChoiceSource::DeviceType
            },
            limits: ComputeLimits::from(limits),
            loop_limit: loop_limit_of(&info.name),
        }
    }

    /// Describes an adapter before a device is opened on it (what `devices` prints).
    pub fn of_adapter(instance: &wgpu::Instance, adapter: &wgpu::Adapter) -> Self {
        let features = adapter.features() & wanted_features();
        Self::describe(&adapter.get_info(), features, &adapter.limits()).on(instance)
    }

    /// With what the instance's WGSL compiler offers (language extensions).
    pub fn on(mut self, instance: &wgpu::Instance) -> Self {
        self.packed_dot = instance
            .wgsl_language_features()
            .contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct);
        self
    }

    /// `name (backend, driver driver_info)`: the one-line identity recorded with every figure.
    pub fn label(&self) -> String {
        format!(
            "{} ({}, {} {})",
            self.name, self.backend, self.driver, self.driver_info
        )
    }
}
