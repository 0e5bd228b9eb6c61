//! The shader registry: every `shaders/*.wgsl` file embedded in the binary, validated by naga with
//! errors located by file and line, and translatable to every backend's language.

use crate::error::{Error, Result, one_line};

/// One WGSL file: a kernel family.
#[derive(Clone, Copy, Debug)]
pub struct ShaderFile {
    /// The family name (file stem), e.g. `elementwise`.
    pub name: &'static str,
    /// The path in the source tree, used in error messages.
    pub path: &'static str,
    /// The module's WGSL source: the file, after its common helpers ([`ShaderFile::common`]) or
    /// its base family's (see [`ShaderFile::after`]).
    pub source: &'static str,
    /// The file's own text (`source` without the base family's).
    pub own: &'static str,
    /// The helpers of `shaders/common/` prepended to the file (`""` for none): WGSL has no
    /// includes, so rules several families share are written once there.
    pub common: &'static str,
    /// A family whose source comes first in this module (its helpers, bindings and entry
    /// points shared), so that a variant file holds only what differs; line numbers in naga's
    /// errors then count from the base file's first line.
    pub after: Option<&'static str>,
    /// Compiled without naga's runtime bounds checks and loop bounding: only for families whose
    /// indexing is in bounds by construction and proven by tests at odd shapes.
    pub trusted: bool,
    /// Uses subgroup operations, so it needs an adapter with `wgpu::Features::SUBGROUP`.
    pub subgroups: bool,
    /// Uses `dot4I8Packed`, so it needs WGSL's `packed_4x8_integer_dot_product` language
    /// extension (see [`crate::gpu::Capabilities::packed_dot`]).
    pub packed_dot: bool,
}

impl ShaderFile {
    /// The file as the WGSL specification writes it, for other implementations (Dawn/Tint):
    /// with the `enable subgroups;` directive its subgroup built-ins require, which naga 30 does
    /// not accept and the embedded source therefore leaves out. The other files are unchanged.
    pub fn standard_source(&self) -> String {
        if self.subgroups {
            format!("enable subgroups;\n\n{}", self.source)
        } else {
            self.source.to_string()
        }
    }

    /// The extensions this file may use on an adapter that has f16 when `f16` is set.
    pub fn extensions(&self, f16: bool) -> Extensions {
        Extensions {
            f16,
            subgroups: self.subgroups,
        }
    }
}

/// Optional WGSL capabilities beyond portable WebGPU that validation should allow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    /// `enable f16;` and 16-bit float types.
    pub f16: bool,
    /// Subgroup built-ins and operations in compute shaders.
    pub subgroups: bool,
}

impl Extensions {
    /// Portable WebGPU only.
    pub const NONE: Extensions = Extensions {
        f16: false,
        subgroups: false,
    };
}

macro_rules! shader_file {
    ($name:literal) => {
        shader_file!($name, false, false, false)
    };
    ($name:literal, trusted) => {
        shader_file!($name, true, false, false)
    };
    ($name:literal, trusted, subgroups) => {
        shader_file!($name, true, true, false)
    };
    ($name:literal, packed_dot, after $base:literal) => {
        ShaderFile {
            name: $name,
            path: concat!("shaders/", $name, ".wgsl"),
            source: concat!(
                include_str!(concat!("../../shaders/", $base, ".wgsl")),
                include_str!(concat!("../../shaders/", $name, ".wgsl"))
            ),
            own: include_str!(concat!("../../shaders/", $name, ".wgsl")),
            common: "",
            after: Some($base),
            trusted: false,
            subgroups: false,
            packed_dot: true,
        }
    };
    ($name:literal, trusted, common $common:literal) => {
        ShaderFile {
            common: $common,
            source: concat!(
                include_str!(concat!("../../shaders/common/", $common, ".wgsl")),
                include_str!(concat!("../../shaders/", $name, ".wgsl"))
            ),
            ..shader_file!($name, true, false, false)
        }
    };
    ($name:literal, common $common:literal) => {
        ShaderFile {
            common: $common,
            source: concat!(
                include_str!(concat!("../../shaders/common/", $common, ".wgsl")),
                include_str!(concat!("../../shaders/", $name, ".wgsl"))
            ),
            ..shader_file!($name, false, false, false)
        }
    };
    ($name:literal, $trusted:expr, $subgroups:expr, $packed_dot:expr) => {
        ShaderFile {
            name: $name,
            path: concat!("shaders/", $name, ".wgsl"),
            source: include_str!(concat!("../../shaders/", $name, ".wgsl")),
            own: include_str!(concat!("../../shaders/", $name, ".wgsl")),
            common: "",
            after: None,
            trusted: $trusted,
            subgroups: $subgroups,
            packed_dot: $packed_dot,
        }
    };
}

/// Every kernel family. A test checks that this list and the `shaders/` folder agree.
pub const SHADER_FILES: &[ShaderFile] = &[
    shader_file!("activation"),
    shader_file!("augment"),
    shader_file!("batchnorm"),
    shader_file!("contrast"),
    shader_file!("conv", trusted, common "index"),
    shader_file!("conv_subgroup", trusted, subgroups),
    shader_file!("dropout"),
    shader_file!("elementwise"),
    shader_file!("feature"),
    shader_file!("gate"),
    shader_file!("int8"),
    shader_file!("int8_dot4", packed_dot, after "int8"),
    shader_file!("matmul", trusted),
    shader_file!("matmul_subgroup", trusted, subgroups),
    shader_file!("optimizer"),
    shader_file!("pool", common "index"),
    shader_file!("quantize"),
    shader_file!("reduce"),
    shader_file!("relation"),
    shader_file!("response"),
    shader_file!("softmax"),
];

/// The registered shader file called `name`.
pub fn find(name: &str) -> Option<&'static ShaderFile> {
    SHADER_FILES.iter().find(|s| s.name == name)
}

/// Whether kernel family `family` needs subgroup operations.
pub fn needs_subgroups(family: &str) -> bool {
    find(family).is_some_and(|f| f.subgroups)
}

/// A module naga has parsed and validated.
pub struct Validated {
    /// The IR.
    pub module: naga::Module,
    /// Validation results (per-entry-point resource use among them).
    pub info: naga::valid::ModuleInfo,
}

fn located(path: &str, loc: Option<naga::SourceLocation>, message: String) -> Error {
    let (line, column) = loc.map_or((0, 0), |l| (l.line_number, l.line_position));
    Error::Shader {
        path: path.to_string(),
        line,
        column,
        message: one_line(&message),
    }
}

/// Parses and validates WGSL as naga does for wgpu, against the portable (WebGPU) capability set
/// plus the given extensions.
pub fn validate(path: &str, source: &str, extensions: Extensions) -> Result<Validated> {
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| located(path, e.location(source), e.message().to_string()))?;
    let mut caps = naga::valid::Capabilities::default();
    if extensions.f16 {
        caps |= naga::valid::Capabilities::SHADER_FLOAT16;
    }
    if extensions.subgroups {
        caps |= naga::valid::Capabilities::SUBGROUP;
    }
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps);
    if extensions.subgroups {
        validator
            .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all());
    }
    let info = validator.validate(&module).map_err(|e| {
        let message = format!("{}", e.as_inner());
        let mut detail = message.clone();
        let mut source_err: Option<&dyn std::error::Error> =
            std::error::Error::source(e.as_inner());
        while let Some(inner) = source_err {
            detail.push_str(": ");
            detail.push_str(&inner.to_string());
            source_err = inner.source();
        }
        located(path, e.location(source), detail)
    })?;
    Ok(Validated { module, info })
}

/// Translates every compute entry point of a validated module to SPIR-V (Vulkan), MSL (Metal),
/// HLSL (DX12) and GLSL ES 3.1 (GL), as wgpu's back ends would. Returns the first failure as
/// `language: entry: message`.
pub fn translate_all(v: &Validated) -> std::result::Result<(), String> {
    use naga::back::{glsl, hlsl, msl, spv};
    let constants = Default::default();
    for ep in &v.module.entry_points {
        let stage = ep.stage;
        let name = ep.name.clone();
        let (module, info) = naga::back::pipeline_constants::process_overrides(
            &v.module,
            &v.info,
            Some((stage, &name)),
            &constants,
        )
        .map_err(|e| format!("overrides: {name}: {e}"))?;
        let fail = |lang: &str, e: &dyn std::fmt::Display| {
            format!("{lang}: {name}: {}", one_line(&e.to_string()))
        };

        let spv_pipeline = spv::PipelineOptions {
            shader_stage: stage,
            entry_point: name.clone(),
        };
        spv::write_vec(
            &module,
            &info,
            &spv::Options::default(),
            Some(&spv_pipeline),
        )
        .map_err(|e| fail("SPIR-V", &e))?;

        let msl_options = msl::Options {
            lang_version: (2, 1),
            ..Default::default()
        };
        let msl_pipeline = msl::PipelineOptions {
            entry_point: Some((stage, name.clone())),
            ..Default::default()
        };
        msl::write_string(&module, &info, &msl_options, &msl_pipeline)
            .map_err(|e| fail("MSL", &e))?;

        // wgpu's DX12 back end binds a hidden constant buffer for builtins HLSL lacks
        // (num_workgroups); give the translator one the same way.
        let hlsl_options = hlsl::Options {
            shader_model: hlsl::ShaderModel::V5_1,
            special_constants_binding: Some(hlsl::BindTarget {
                space: 0,
                register: 0,
                ..Default::default()
            }),
            ..Default::default()
        };
        let hlsl_pipeline = hlsl::PipelineOptions {
            entry_point: Some((stage, name.clone())),
        };
        let mut hlsl_out = String::new();
        hlsl::Writer::new(&mut hlsl_out, &hlsl_options, &hlsl_pipeline)
            .write(&module, &info, None)
            .map_err(|e| fail("HLSL", &e))?;

        let glsl_options = glsl::Options {
            version: glsl::Version::new_gles(310),
            ..Default::default()
        };
        let glsl_pipeline = glsl::PipelineOptions {
            shader_stage: stage,
            entry_point: name.clone(),
            multiview: None,
        };
        let mut glsl_out = String::new();
        glsl::Writer::new(
            &mut glsl_out,
            &module,
            &info,
            &glsl_options,
            &glsl_pipeline,
            naga::proc::BoundsCheckPolicies::default(),
        )
        .and_then(|mut w| w.write())
        .map_err(|e| fail("GLSL", &e))?;
    }
    Ok(())
}
