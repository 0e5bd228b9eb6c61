//! The GPU runtime on a real adapter (lavapipe or llvmpipe in CI): adapter choice, tensors,
//! upload/readback, the pool, size limits, grid folding, pipeline caching and timing.

mod common;

use common::{data, gpu};
use wgdistill::Error;
use wgdistill::gpu::{AdapterQuery, DType, Gpu, measure};
use wgdistill::kernels::elementwise;
use wgdistill::kernels::matmul::MATMUL_RB;

#[test]
fn backend_names_parse_and_unknown_ones_are_errors() {
    use wgdistill::gpu::select::parse_backends;
    assert_eq!(parse_backends("vulkan").unwrap(), wgpu::Backends::VULKAN);
    assert_eq!(parse_backends("GL").unwrap(), wgpu::Backends::GL);
    assert_eq!(
        parse_backends("vulkan, gl").unwrap(),
        wgpu::Backends::VULKAN | wgpu::Backends::GL
    );
    let err = parse_backends("cuda").unwrap_err().to_string();
    assert!(err.contains("'cuda'") && err.contains("vulkan"), "{err}");
    assert!(
        AdapterQuery::new(Some(""), Some("  "))
            .unwrap()
            .name
            .is_none()
    );
}

#[test]
fn an_adapter_name_that_matches_nothing_is_a_clear_error() {
    let Some(_) = gpu() else { return };
    let query = AdapterQuery::new(None, Some("no-such-adapter-xyz")).unwrap();
    let err = Gpu::new(&query).err().expect("must fail").to_string();
    assert!(err.contains("no-such-adapter-xyz"), "{err}");
    assert!(err.contains("adapters present"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
}

#[test]
fn the_device_gets_the_adapters_own_limits() {
    let Some(gpu) = gpu() else { return };
    let adapter = gpu.adapter().limits();
    assert_eq!(
        gpu.limits().max_storage_buffer_binding_size,
        adapter.max_storage_buffer_binding_size
    );
    assert_eq!(
        gpu.limits().max_compute_invocations_per_workgroup,
        adapter.max_compute_invocations_per_workgroup
    );
    assert_eq!(
        gpu.caps().timestamp_query,
        gpu.device()
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    );
}

#[test]
fn upload_and_readback_round_trip_every_dtype() {
    let Some(gpu) = gpu() else { return };
    for n in [1usize, 7, 1000, 65_537] {
        let f: Vec<f32> = data(n, 3);
        assert_eq!(gpu.read::<f32>(&gpu.upload(&[n], &f).unwrap()).unwrap(), f);
        let i: Vec<i32> = (0..n as i32).map(|v| v * 7 - 3).collect();
        assert_eq!(gpu.read::<i32>(&gpu.upload(&[n], &i).unwrap()).unwrap(), i);
        let u: Vec<u32> = (0..n as u32)
            .map(|v| v.wrapping_mul(2_654_435_761))
            .collect();
        assert_eq!(gpu.read::<u32>(&gpu.upload(&[n], &u).unwrap()).unwrap(), u);
    }
    let empty = gpu.upload::<f32>(&[0, 5], &[]).unwrap();
    assert!(gpu.read::<f32>(&empty).unwrap().is_empty());
}

#[test]
fn zeros_are_zero_even_in_a_reused_buffer() {
    let Some(gpu) = gpu() else { return };
    drop(gpu.upload(&[333], &vec![7.0f32; 333]).unwrap());
    let z = gpu.zeros(&[333], DType::F32).unwrap();
    assert!(gpu.read::<f32>(&z).unwrap().iter().all(|&v| v == 0.0));
}

#[test]
fn dtype_and_length_mismatches_are_errors() {
    let Some(gpu) = gpu() else { return };
    let t = gpu.upload(&[4], &[1.0f32; 4]).unwrap();
    assert!(matches!(gpu.read::<i32>(&t), Err(Error::Shape { .. })));
    assert!(matches!(
        gpu.write(&t, &[1.0f32; 3]),
        Err(Error::Shape { .. })
    ));
    assert!(gpu.upload(&[2, 3], &[1.0f32; 5]).is_err());
}

#[test]
fn reshape_and_flatten_are_views_not_copies() {
    let Some(gpu) = gpu() else { return };
    let t = gpu.upload(&[2, 3, 4], &data(24, 1)).unwrap();
    let flat = t.flatten();
    assert_eq!(flat.shape(), &[2, 12]);
    assert!(flat.shares_buffer_with(&t));
    let r = t.reshape(&[6, 4]).unwrap();
    assert!(r.shares_buffer_with(&t));
    // Writing through the view is visible through the original.
    elementwise::fill(gpu, &r, 2.0).unwrap();
    assert!(gpu.read::<f32>(&t).unwrap().iter().all(|&v| v == 2.0));
    let err = t.reshape(&[5, 5]).unwrap_err().to_string();
    assert!(err.contains("[2, 3, 4]") && err.contains("[5, 5]"), "{err}");
}

#[test]
fn the_pool_reuses_buffers_of_the_same_size_class() {
    let Some(gpu) = gpu() else { return };
    // A size no other test uses, so parallel tests cannot take the freed buffer.
    let shape = [1_234_567];
    drop(gpu.empty(&shape, DType::F32).unwrap());
    let before = gpu.stats().buffers;
    for _ in 0..5 {
        drop(gpu.empty(&shape, DType::F32).unwrap());
    }
    assert_eq!(
        gpu.stats().buffers,
        before,
        "a freed buffer of the same size class is reused"
    );
}

#[test]
fn tensors_over_the_binding_limit_are_refused_before_allocating() {
    let Some(gpu) = gpu() else { return };
    let limit = gpu.limits().max_storage_buffer_binding_size;
    let n = (limit / 4 + 1) as usize;
    let err = gpu.empty(&[n], DType::F32).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert!(
        err.to_string().contains("max_storage_buffer_binding_size"),
        "{err}"
    );
}

#[test]
fn large_1d_grids_fold_into_two_dimensions() {
    let Some(gpu) = gpu() else { return };
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    // Two workgroups more than one dimension allows (256 invocations each).
    let n = (max + 2) * 256 - 5;
    if (n * 4) as u64 > gpu.limits().max_storage_buffer_binding_size {
        eprintln!("SKIP: adapter binding limit too small for this test");
        return;
    }
    let grid = gpu.grid("fill", (n as u64).div_ceil(256)).unwrap();
    assert!(grid[1] >= 2, "{grid:?}");
    let t = gpu.zeros(&[n], DType::F32).unwrap();
    elementwise::fill(gpu, &t, 1.5).unwrap();
    let got = gpu.read::<f32>(&t).unwrap();
    let missed = got.iter().filter(|&&v| v != 1.5).count();
    assert_eq!(
        missed, 0,
        "every element is reached, including those in the folded rows"
    );
}

#[test]
fn pipelines_are_compiled_once_per_kernel() {
    let Some(gpu) = gpu() else { return };
    let a = gpu.kernel(&elementwise::SCALE, &[]).unwrap();
    let before = gpu.stats().pipelines;
    let b = gpu.kernel(&elementwise::SCALE, &[]).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    assert_eq!(gpu.stats().pipelines, before);
}

#[test]
fn a_spec_that_disagrees_with_its_wgsl_is_an_error_not_a_panic() {
    let Some(gpu) = gpu() else { return };
    use wgdistill::gpu::{Binding, KernelSpec};
    let wrong = KernelSpec {
        family: "elementwise",
        entry: "scale",
        bindings: &[Binding::Uniform, Binding::ReadWrite, Binding::ReadWrite],
        params: 16,
        overrides: &[],
    };
    assert!(matches!(gpu.kernel(&wrong, &[]), Err(Error::Kernel { .. })));
    let unknown = KernelSpec {
        family: "no_such_family",
        entry: "main",
        bindings: &[],
        params: 0,
        overrides: &[],
    };
    assert!(matches!(
        gpu.kernel(&unknown, &[]),
        Err(Error::Kernel { .. })
    ));
    // A constant the spec does not declare would escape the exported kernel list (and other
    // implementations' pipeline checks): refused, naming it.
    let undeclared = gpu.kernel(&elementwise::SCALE, &[("TRANS_A", 1.0)]);
    assert!(
        matches!(&undeclared, Err(Error::Kernel { message, .. }) if message.contains("TRANS_A")),
        "{:?}",
        undeclared.err()
    );
    assert!(
        gpu.kernel(&MATMUL_RB, &[("TRANS_A", 1.0), ("TRANS_B", 0.0)])
            .is_ok()
    );
}

#[test]
fn measure_times_work_with_the_best_available_clock() {
    let Some(gpu) = gpu() else { return };
    let out = gpu.empty(&[1 << 16], DType::F32).unwrap();
    let bound = gpu
        .bind_plan(&[elementwise::fill_plan(gpu, &out, 1.0).unwrap()])
        .unwrap();
    let m = measure(gpu, 10, |pass| bound.record(pass)).unwrap();
    assert!(m.seconds > 0.0 && m.seconds < 1.0, "{m:?}");
    let expected = if gpu.caps().timestamp_query {
        wgdistill::gpu::TimingSource::TimestampQuery
    } else {
        wgdistill::gpu::TimingSource::WallClock
    };
    assert_eq!(m.source, expected);
}

#[test]
fn the_chosen_adapter_honours_wgpu_backend() {
    let Some(gpu) = gpu() else { return };
    if let Ok(text) = std::env::var("WGPU_BACKEND") {
        let wanted = wgdistill::gpu::select::parse_backends(&text).unwrap();
        let got = wgpu::Backends::from(gpu.adapter().get_info().backend);
        assert!(
            wanted.contains(got),
            "WGPU_BACKEND={text} but ran on {}",
            gpu.caps().backend
        );
    }
}

#[test]
fn loops_past_llvmpipes_limit_are_refused_not_cut_short() {
    use wgdistill::gpu::caps::LLVMPIPE_LOOP_LIMIT;
    use wgdistill::kernels::matmul::{MatmulOptions, matmul};
    use wgdistill::kernels::reduce::{AxisOp, reduce_axis};
    let Some(gpu) = gpu() else { return };
    let llvmpipe = gpu.caps().name.to_ascii_lowercase().contains("llvmpipe");
    assert_eq!(
        gpu.caps().loop_limit,
        llvmpipe.then_some(LLVMPIPE_LOOP_LIMIT)
    );
    // A matmul whose register-blocked kernel would loop over K = 70,000 in one invocation, and
    // a reduction along an axis of 70,000: on llvmpipe both would stop early and be wrong.
    let (m, k) = (2, 70_000);
    let a = gpu.upload(&[m, k], &data(m * k, 1)).unwrap();
    let b = gpu.upload(&[k, 2], &data(k * 2, 2)).unwrap();
    let options = MatmulOptions {
        style: Some(wgdistill::gpu::KernelStyle::RegisterBlocked),
        subgroups: Some(false),
        ..Default::default()
    };
    let long_axis = gpu.upload(&[k, 1], &data(k, 3)).unwrap();
    for result in [
        matmul(gpu, &a, &b, None, options).map(|_| ()),
        reduce_axis(gpu, &long_axis, 0, AxisOp::Sum).map(|_| ()),
    ] {
        match (llvmpipe, result) {
            (true, Err(e @ Error::LoopLimit { .. })) => {
                let e = e.to_string();
                assert!(
                    !e.contains('\n') && e.contains("70000") && e.contains("65535"),
                    "{e}"
                );
            }
            (false, Ok(())) => {}
            (_, other) => panic!("llvmpipe {llvmpipe}: {other:?}"),
        }
    }
    // Up to the limit, and anywhere else, launches go ahead.
    let kernel = &wgdistill::kernels::reduce::REDUCE_AXIS;
    assert!(gpu.check_loops(kernel, LLVMPIPE_LOOP_LIMIT).is_ok());
}
