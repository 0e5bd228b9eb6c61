//! Kernels as the Rust side sees them: a WGSL entry point plus its explicit binding layout.
//! Pipelines are compiled once per device and cached by (family, entry, override constants).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::shaders::{self, Validated};
use crate::error::{Error, Result};

/// How a kernel uses one binding of group 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binding {
    /// `var<uniform>`: small parameters.
    Uniform,
    /// `var<storage, read>`.
    ReadOnly,
    /// `var<storage, read_write>` that the kernel reads and writes (in-place updates).
    ReadWrite,
    /// `var<storage, read_write>` that the kernel only writes, never reading what was there:
    /// the memory planner may give it a buffer another tensor used before.
    Output,
}

/// A kernel: which file, which entry point, its bindings in order (binding i of group 0) and
/// the size of the Rust struct its uniform parameters are written from, which must equal the
/// WGSL struct's (checked at every launch, and for every kernel by the shader tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelSpec {
    /// Shader family (file stem under `shaders/`).
    pub family: &'static str,
    /// Entry point.
    pub entry: &'static str,
    /// Bindings 0.. of group 0 (binding 0 is the uniform parameters).
    pub bindings: &'static [Binding],
    /// Size in bytes of the Rust twin of the uniform parameter struct.
    pub params: usize,
    /// The boolean pipeline-overridable constants its launcher sets (each combination may be
    /// used): a launch with any other constant is refused, and exported kernel lists name them
    /// so other WebGPU implementations can build every pipeline variant.
    pub overrides: &'static [&'static str],
}

impl KernelSpec {
    /// The kernel `family::entry` with these bindings, whose parameters are written from a `P`.
    pub const fn new<P: bytemuck::Pod>(
        family: &'static str,
        entry: &'static str,
        bindings: &'static [Binding],
    ) -> KernelSpec {
        KernelSpec {
            family,
            entry,
            bindings,
            params: std::mem::size_of::<P>(),
            overrides: &[],
        }
    }

    /// The same kernel, launched with these boolean override constants.
    pub const fn with_overrides(self, overrides: &'static [&'static str]) -> KernelSpec {
        KernelSpec { overrides, ..self }
    }

    /// `family::entry`.
    pub fn name(&self) -> String {
        format!("{}::{}", self.family, self.entry)
    }
}

/// A compiled kernel: pipeline plus the bind group layout that its bind groups must use.
pub struct Kernel {
    /// What it is.
    pub spec: KernelSpec,
    /// The compute pipeline.
    pub pipeline: wgpu::ComputePipeline,
    /// Layout of group 0.
    pub layout: wgpu::BindGroupLayout,
    /// Workgroup size declared by the entry point.
    pub workgroup_size: [u32; 3],
    /// The override constants it was compiled with (name, value), as launched.
    pub constants: Vec<(String, f64)>,
}

type PipelineKey = (KernelSpec, Vec<(String, u64)>);

/// Per-device caches of shader modules and pipelines.
#[derive(Default)]
pub struct PipelineCache {
    modules: Mutex<HashMap<&'static str, Arc<(wgpu::ShaderModule, Validated)>>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Kernel>>>,
}

fn binding_kind(space: naga::AddressSpace) -> Option<Binding> {
    match space {
        naga::AddressSpace::Uniform => Some(Binding::Uniform),
        naga::AddressSpace::Storage { access } if access.contains(naga::StorageAccess::STORE) => {
            Some(Binding::ReadWrite)
        }
        naga::AddressSpace::Storage { .. } => Some(Binding::ReadOnly),
        _ => None,
    }
}

/// Checks that the entry point exists and uses exactly the bindings the spec declares, so a
/// mismatch is an error naming the kernel rather than a validation failure at dispatch.
pub fn check_spec(spec: &KernelSpec, v: &Validated) -> Result<[u32; 3]> {
    let err = |message: String| Error::Kernel {
        kernel: spec.name(),
        message,
    };
    let (index, ep) = v
        .module
        .entry_points
        .iter()
        .enumerate()
        .find(|(_, ep)| ep.name == spec.entry && ep.stage == naga::ShaderStage::Compute)
        .ok_or_else(|| {
            err(format!(
                "no compute entry point '{}' in shaders/{}.wgsl",
                spec.entry, spec.family
            ))
        })?;
    let usage = v.info.get_entry_point(index);
    let mut used: Vec<(u32, Binding)> = Vec::new();
    let mut uniform = None;
    for (handle, var) in v.module.global_variables.iter() {
        let (Some(rb), false) = (&var.binding, usage[handle].is_empty()) else {
            continue;
        };
        if rb.group != 0 {
            return Err(err(format!(
                "binding uses group {}, only group 0 is supported",
                rb.group
            )));
        }
        let kind = binding_kind(var.space).ok_or_else(|| {
            err(format!(
                "binding {} is neither uniform nor storage",
                rb.binding
            ))
        })?;
        if kind == Binding::Uniform {
            uniform = Some(var.ty);
        }
        used.push((rb.binding, kind));
    }
    used.sort_by_key(|(b, _)| *b);
    let declared: Vec<(u32, Binding)> = spec
        .bindings
        .iter()
        .enumerate()
        .map(|(i, b)| (i as u32, *b))
        .collect();
    // WGSL cannot say "write-only": an Output is a read_write binding by the launcher's word.
    let declared: Vec<(u32, Binding)> = declared
        .into_iter()
        .map(|(i, b)| {
            (
                i,
                if b == Binding::Output {
                    Binding::ReadWrite
                } else {
                    b
                },
            )
        })
        .collect();
    if used != declared {
        return Err(err(format!(
            "WGSL uses bindings {used:?} but the launcher declares {declared:?}"
        )));
    }
    // The parameters are written from a Rust struct: a size that differs from the WGSL struct's
    // would shift every field after the first that disagrees.
    if let Some(ty) = uniform {
        let mut layouter = naga::proc::Layouter::default();
        layouter
            .update(v.module.to_ctx())
            .map_err(|e| err(format!("cannot lay out its types: {e}")))?;
        let wgsl = layouter[ty].size as usize;
        if wgsl != spec.params {
            return Err(err(format!(
                "its WGSL parameter struct is {wgsl} bytes but the launcher's Rust struct is {}",
                spec.params
            )));
        }
    }
    Ok(ep.workgroup_size)
}

impl PipelineCache {
    /// The validated shader module of a family, created once.
    fn module(
        &self,
        device: &wgpu::Device,
        family: &'static str,
        f16: bool,
    ) -> Result<Arc<(wgpu::ShaderModule, Validated)>> {
        if let Some(m) = self
            .modules
            .lock()
            .ok()
            .and_then(|m| m.get(family).cloned())
        {
            return Ok(m);
        }
        let file = shaders::find(family).ok_or_else(|| Error::Kernel {
            kernel: family.to_string(),
            message: "no such shader family is registered".to_string(),
        })?;
        if file.subgroups && !device.features().contains(wgpu::Features::SUBGROUP) {
            return Err(Error::Kernel {
                kernel: family.to_string(),
                message: "needs subgroup operations, which this adapter does not offer".to_string(),
            });
        }
        // naga first: its errors carry file, line and column.
        let validated = shaders::validate(file.path, file.source, file.extensions(f16))?;
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(file.path),
            source: wgpu::ShaderSource::Wgsl(file.source.into()),
        };
        let module = if file.trusted {
            // SAFETY: a trusted family keeps every index in bounds by construction (clamped
            // loads, guarded stores), which its GPU tests check at shapes that are not tile
            // multiples; validation by naga above still applies.
            unsafe {
                device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
            }
        } else {
            device.create_shader_module(desc)
        };
        let entry = Arc::new((module, validated));
        if let Ok(mut m) = self.modules.lock() {
            m.insert(family, entry.clone());
        }
        Ok(entry)
    }

    /// The compiled kernel for `spec` with override `constants`, compiled on first use.
    /// `on_create` runs once per new pipeline (for the runtime's counters).
    pub fn get(
        &self,
        device: &wgpu::Device,
        spec: &KernelSpec,
        constants: &[(&str, f64)],
        f16: bool,
        on_create: impl FnOnce(),
    ) -> Result<Arc<Kernel>> {
        let key: PipelineKey = (
            *spec,
            constants
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_bits()))
                .collect(),
        );
        if let Some(k) = self
            .pipelines
            .lock()
            .ok()
            .and_then(|p| p.get(&key).cloned())
        {
            return Ok(k);
        }
        if let Some((name, _)) = constants.iter().find(|(k, _)| !spec.overrides.contains(k)) {
            return Err(Error::Kernel {
                kernel: spec.name(),
                message: format!(
                    "launched with override '{name}', which its spec does not declare (declared: {:?})",
                    spec.overrides
                ),
            });
        }
        let module = self.module(device, spec.family, f16)?;
        let workgroup_size = check_spec(spec, &module.1)?;
        let entries: Vec<wgpu::BindGroupLayoutEntry> = spec
            .bindings
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match b {
                        Binding::Uniform => wgpu::BufferBindingType::Uniform,
                        Binding::ReadOnly => wgpu::BufferBindingType::Storage { read_only: true },
                        Binding::ReadWrite | Binding::Output => {
                            wgpu::BufferBindingType::Storage { read_only: false }
                        }
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let label = spec.name();
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(&label),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(&pipeline_layout),
            module: &module.0,
            entry_point: Some(spec.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                // Kernels initialise the workgroup memory they read; skipping the driver's
                // zero-fill saves a pass over it per workgroup.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        on_create();
        let kernel = Arc::new(Kernel {
            spec: *spec,
            pipeline,
            layout,
            workgroup_size,
            constants: constants.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        });
        if let Ok(mut p) = self.pipelines.lock() {
            p.insert(key, kernel.clone());
        }
        Ok(kernel)
    }

    /// Number of cached pipelines.
    pub fn len(&self) -> usize {
        self.pipelines.lock().map_or(0, |p| p.len())
    }

    /// Whether no pipeline is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
