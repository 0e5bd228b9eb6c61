//! Portability without a GPU: every WGSL file is parsed and validated by naga and translated to
//! SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL ES (GL). This is the evidence on Linux that
//! Metal and DX12 accept every kernel.

use std::collections::BTreeSet;

use wgdistill::Error;
use wgdistill::gpu::pipeline::check_spec;
use wgdistill::gpu::shaders::{Extensions, SHADER_FILES, translate_all, validate};
use wgdistill::kernels;

/// What the test applies to each file: validate, then translate to every language.
fn portability(path: &str, source: &str, extensions: Extensions) -> Result<(), String> {
    let v = validate(path, source, extensions).map_err(|e| e.to_string())?;
    translate_all(&v)
}

#[test]
fn every_shader_file_is_registered() {
    let on_disk: BTreeSet<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders"))
            .expect("shaders/ exists")
            .map(|e| {
                e.expect("readable entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| n.ends_with(".wgsl"))
            .collect();
    let registered: BTreeSet<String> = SHADER_FILES
        .iter()
        .map(|s| format!("{}.wgsl", s.name))
        .collect();
    assert!(!on_disk.is_empty());
    assert_eq!(
        on_disk, registered,
        "shaders/ and gpu::shaders::SHADER_FILES disagree"
    );
}

/// Every helper file in `shaders/common/` is prepended to some family, exactly as it is on disk.
#[test]
fn every_common_helper_file_is_used_as_written() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/common");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("shaders/common exists") {
        let path = entry.expect("readable entry").path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).expect("readable");
        let users: Vec<_> = SHADER_FILES.iter().filter(|f| f.common == stem).collect();
        assert!(
            !users.is_empty(),
            "{} is prepended to no family",
            path.display()
        );
        for f in users {
            assert_eq!(f.source, format!("{text}{}", f.own), "{}", f.path);
        }
        seen += 1;
    }
    assert!(seen > 0);
    for f in SHADER_FILES.iter().filter(|f| !f.common.is_empty()) {
        let path = format!("{dir}/{}.wgsl", f.common);
        assert!(
            std::path::Path::new(&path).exists(),
            "{}: no {path}",
            f.path
        );
    }
}

#[test]
fn every_shader_validates_and_translates_to_all_backends() {
    for file in SHADER_FILES {
        // Read from disk so the test sees exactly the files in the tree.
        let source = std::fs::read_to_string(
            concat!(env!("CARGO_MANIFEST_DIR"), "/").to_owned() + file.path,
        )
        .expect("shader file readable");
        assert_eq!(
            source, file.own,
            "{} differs from the embedded copy",
            file.path
        );
        if let Err(e) = portability(file.path, file.source, file.extensions(false)) {
            panic!("{}: {e}", file.path);
        }
    }
}

#[test]
fn every_launcher_matches_its_wgsl_bindings() {
    for spec in kernels::all_kernels() {
        let file = wgdistill::gpu::shaders::find(spec.family).expect("family registered");
        let v = validate(file.path, file.source, file.extensions(false)).expect("valid");
        let size = check_spec(&spec, &v).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            size.iter().product::<u32>() <= 256,
            "{}: workgroup over WebGPU's default 256",
            spec.name()
        );
        // WebGPU guarantees 8 storage buffers per stage, and Metal keeps one for itself.
        assert!(
            spec.bindings.len() <= 7,
            "{}: too many bindings for portable limits",
            spec.name()
        );
    }
}

#[test]
fn every_override_constant_is_declared_by_the_launchers() {
    // Exported kernel lists enumerate the declared overrides so other WebGPU implementations
    // build every pipeline variant: a constant a file declares but no spec names would escape.
    for file in SHADER_FILES {
        let v = validate(file.path, file.source, file.extensions(false)).expect("valid");
        let in_file: BTreeSet<String> = v
            .module
            .overrides
            .iter()
            .filter_map(|(_, o)| o.name.clone())
            .collect();
        let declared: BTreeSet<String> = kernels::all_kernels()
            .iter()
            .filter(|k| k.family == file.name)
            .flat_map(|k| k.overrides.iter().map(|o| o.to_string()))
            .collect();
        assert_eq!(in_file, declared, "{}: overrides", file.path);
    }
}

#[test]
fn every_entry_point_has_a_launcher() {
    let launched: BTreeSet<String> = kernels::all_kernels().iter().map(|k| k.name()).collect();
    for file in SHADER_FILES {
        let v = validate(file.path, file.source, file.extensions(false)).expect("valid");
        // A variant's module holds its base family's entry points too: those are the base's.
        let base = file
            .after
            .and_then(wgdistill::gpu::shaders::find)
            .map(|b| validate(b.path, b.source, b.extensions(false)).expect("valid"));
        for ep in &v.module.entry_points {
            if base
                .as_ref()
                .is_some_and(|b| b.module.entry_points.iter().any(|e| e.name == ep.name))
            {
                continue;
            }
            let name = format!("{}::{}", file.name, ep.name);
            assert!(
                launched.contains(&name),
                "{name} has no KernelSpec in kernels::all_kernels()"
            );
        }
    }
}

#[test]
fn a_syntax_error_fails_with_file_and_line() {
    let broken = "@compute @workgroup_size(64)\nfn main() {\n    let x = ;\n}\n";
    let err = validate("shaders/broken.wgsl", broken, Extensions::NONE)
        .err()
        .expect("must fail");
    match &err {
        Error::Shader { path, line, .. } => {
            assert_eq!(path, "shaders/broken.wgsl");
            assert_eq!(*line, 3);
        }
        other => panic!("wrong error kind: {other}"),
    }
    assert!(
        err.to_string().starts_with("shaders/broken.wgsl:3:"),
        "{err}"
    );
    assert!(portability("shaders/broken.wgsl", broken, Extensions::NONE).is_err());
}

#[test]
fn a_type_error_fails_validation_with_its_line() {
    // Parses, but writing an f32 into a u32 array is a validation error.
    let broken = "@group(0) @binding(0) var<storage, read_write> out: array<u32>;\n\
                  @compute @workgroup_size(64)\n\
                  fn main(@builtin(global_invocation_id) id: vec3<u32>) {\n\
                  out[id.x] = 1.5;\n}\n";
    let err = portability("shaders/typed.wgsl", broken, Extensions::NONE).expect_err("must fail");
    assert!(err.starts_with("shaders/typed.wgsl:"), "{err}");
}

#[test]
fn a_kernel_spec_that_disagrees_with_wgsl_is_an_error() {
    use wgdistill::gpu::{Binding, KernelSpec};
    let file = wgdistill::gpu::shaders::find("elementwise").expect("registered");
    let v = validate(file.path, file.source, file.extensions(false)).expect("valid");
    let wrong = KernelSpec {
        family: "elementwise",
        entry: "add",
        bindings: &[Binding::Uniform, Binding::ReadOnly],
        params: 16,
        overrides: &[],
    };
    let err = check_spec(&wrong, &v).expect_err("must fail").to_string();
    assert!(err.contains("elementwise::add"), "{err}");
    let missing = KernelSpec {
        family: "elementwise",
        entry: "nope",
        bindings: &[],
        params: 0,
        overrides: &[],
    };
    assert!(check_spec(&missing, &v).is_err());
}

#[test]
fn translation_catches_what_validation_allows() {
    // Valid WGSL for an adapter with f16, but GLSL ES 3.1 (wgpu's GL back end) has no 16-bit
    // floats: only the translation step can tell.
    let f16 = "enable f16;\n\
               @group(0) @binding(0) var<storage, read_write> out: array<f16>;\n\
               @compute @workgroup_size(64)\n\
               fn main(@builtin(global_invocation_id) id: vec3<u32>) {\n\
               out[id.x] = out[id.x] * 2.0h;\n}\n";
    let v = validate(
        "shaders/half.wgsl",
        f16,
        Extensions {
            f16: true,
            subgroups: false,
        },
    )
    .expect("valid with f16");
    let err = translate_all(&v).expect_err("GLSL must refuse f16");
    assert!(err.starts_with("GLSL"), "{err}");
}

#[test]
fn a_parameter_struct_of_the_wrong_size_is_an_error() {
    use wgdistill::gpu::{Binding, KernelSpec};
    let file = wgdistill::gpu::shaders::find("elementwise").expect("registered");
    let v = validate(file.path, file.source, file.extensions(false)).expect("valid");
    let bindings = &[
        Binding::Uniform,
        Binding::ReadOnly,
        Binding::ReadOnly,
        Binding::Output,
    ];
    // elementwise's Params is 16 bytes; an 8-byte Rust twin would misplace alpha.
    let short = KernelSpec::new::<[u32; 2]>("elementwise", "add", bindings);
    let err = check_spec(&short, &v).expect_err("must fail").to_string();
    assert!(err.contains("16 bytes") && err.contains('8'), "{err}");
    let right = KernelSpec::new::<[u32; 4]>("elementwise", "add", bindings);
    check_spec(&right, &v).expect("16 bytes match");
}

/// No constant expression is NaN or infinite: the WGSL spec forbids one (Tint, Chrome's compiler,
/// rejects it; naga does not), so a kernel that needs such a value builds it at run time. Checked
/// on naga's IR: float literals, and bit casts of integer literals to floats.
#[test]
fn no_constant_expression_is_nan_or_infinite() {
    use naga::{Arena, Expression, Literal, ScalarKind};
    fn non_finite(arena: &Arena<Expression>, e: &Expression) -> bool {
        match e {
            Expression::Literal(Literal::F32(v)) => !v.is_finite(),
            Expression::Literal(Literal::F64(v)) => !v.is_finite(),
            Expression::As {
                expr,
                kind: ScalarKind::Float,
                convert: None,
            } => match arena[*expr] {
                Expression::Literal(Literal::U32(b)) => !f32::from_bits(b).is_finite(),
                Expression::Literal(Literal::I32(b)) => !f32::from_bits(b as u32).is_finite(),
                _ => false,
            },
            _ => false,
        }
    }
    let any = |arena: &Arena<Expression>| arena.iter().any(|(_, e)| non_finite(arena, e));
    let offending = |m: &naga::Module| {
        m.functions.iter().any(|(_, f)| any(&f.expressions))
            || m.entry_points.iter().any(|e| any(&e.function.expressions))
            || any(&m.global_expressions)
    };
    for file in SHADER_FILES {
        let v = validate(file.path, file.source, file.extensions(false)).unwrap();
        assert!(!offending(&v.module), "{}", file.path);
    }
    // The check sees one: a constant NaN in an otherwise valid kernel (as response.wgsl had).
    let src = "fn nan() -> f32 { return bitcast<f32>(0x7fc00000u); }\n\
               @compute @workgroup_size(1) fn main() { let x = nan(); }";
    let m = validate("nan.wgsl", src, Extensions::default())
        .unwrap()
        .module;
    assert!(offending(&m), "the check must find a constant NaN");
}

/// `wgdistill shaders --export`'s text: the subgroup files gain the `enable subgroups;` the WGSL
/// specification requires (naga 30 refuses the directive, which is why the embedded files leave
/// it out), the others are the files as they are, and with the directive removed every exported
/// file validates.
#[test]
fn the_standard_form_adds_only_the_directives_the_spec_requires() {
    for file in SHADER_FILES {
        let text = file.standard_source();
        let body = match text.strip_prefix("enable subgroups;\n\n") {
            Some(rest) => {
                assert!(file.subgroups, "{}", file.path);
                let refused = validate(file.path, &text, file.extensions(false));
                assert!(
                    refused.is_err(),
                    "naga now takes the directive: keep it in the file"
                );
                rest
            }
            None => {
                assert!(!file.subgroups, "{} lacks its directive", file.path);
                text.as_str()
            }
        };
        assert_eq!(body, file.source, "{}", file.path);
        validate(file.path, body, file.extensions(false)).unwrap();
    }
}
