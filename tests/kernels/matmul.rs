//! Matmul (`shaders/matmul*.wgsl`): every style and transpose at shapes off the tiles, the
//! bias and activation epilogue, and the Linear layer's backward pass.

use super::common::{assert_close_f64, data, finite_difference, gpu, run, up, widen};
use wgdistill::gpu::KernelStyle;
use wgdistill::kernels::activation::{self, Kind};
use wgdistill::kernels::matmul::{Activation, MatmulOptions, matmul};
use wgdistill::kernels::reduce::{AxisOp, reduce_axis};
use wgdistill::reference::activation::Act;
use wgdistill::reference::allclose;
use wgdistill::reference::matmul::{self as cpu, LinearShape};

const STYLES: [KernelStyle; 2] = [KernelStyle::RegisterBlocked, KernelStyle::WorkgroupTiled];

#[test]
fn matmul_matches_reference_for_every_style_transpose_and_odd_shape() {
    let Some(gpu) = gpu() else { return };
    for (m, n, k) in [
        (1, 1, 1),
        (7, 33, 129),
        (129, 7, 33),
        (65, 130, 67),
        (3, 257, 2),
        (70, 68, 9),
        // Past one 128×128 tile in both directions, K off the large tiles' step of 8.
        (131, 259, 67),
    ] {
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            let (av, bv) = (data(m * k, 1), data(k * n, 2));
            let a = up(gpu, &if trans_a { [k, m] } else { [m, k] }, &av);
            let b = up(gpu, &if trans_b { [n, k] } else { [k, n] }, &bv);
            let want = cpu::matmul(&widen(&av), &widen(&bv), m, n, k, trans_a, trans_b);
            // Each style, and the workgroup-tiled one with each tile size.
            let tiles = [None, Some(false), Some(true)];
            for (style, large_tiles) in STYLES.into_iter().zip(tiles).chain([(STYLES[1], tiles[2])])
            {
                let options = MatmulOptions {
                    trans_a,
                    trans_b,
                    style: Some(style),
                    large_tiles,
                    ..Default::default()
                };
                let got = run(gpu, matmul(gpu, &a, &b, None, options).unwrap());
                allclose(&got, &want, 1e-5, 1e-5).unwrap_or_else(|e| {
                    panic!(
                        "{style:?} large {large_tiles:?} {m}x{n}x{k} ta={trans_a} tb={trans_b}: {e}"
                    )
                });
            }
        }
    }
}

/// Whether a subgroup kernel serves these transposes at this shape (the rule the launcher states).
fn subgroup_applies(trans_a: bool, trans_b: bool, m: usize, n: usize, k: usize) -> bool {
    match (trans_a, trans_b) {
        (false, false) => k.is_multiple_of(4) && n.is_multiple_of(4),
        (false, true) => k.is_multiple_of(4),
        (true, false) => m.is_multiple_of(4) && n.is_multiple_of(4),
        (true, true) => false,
    }
}

#[test]
fn subgroup_matmul_matches_reference_at_shapes_off_its_block() {
    let Some(gpu) = gpu() else { return };
    let caps = gpu.caps();
    // lavapipe has 8-lane subgroups: there the kernels must run, so this test cannot pass by
    // skipping them in CI's Vulkan job.
    if caps.backend == "vulkan" && caps.name.starts_with("llvmpipe") {
        assert!(
            caps.subgroup_matmul(),
            "lavapipe should offer subgroups: {caps:?}"
        );
    }
    let a = up(gpu, &[8, 8], &data(64, 1));
    let forced = MatmulOptions {
        subgroups: Some(true),
        ..Default::default()
    };
    if !caps.subgroup_matmul() {
        let e = matmul(gpu, &a, &a, None, forced).err().unwrap().to_string();
        assert!(e.contains("subgroup"), "{e}");
        return;
    }
    let e = matmul(
        gpu,
        &up(gpu, &[3, 5], &data(15, 1)),
        &up(gpu, &[5, 4], &data(20, 2)),
        None,
        forced,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("multiples of 4"), "{e}");
    let tt = MatmulOptions {
        trans_a: true,
        trans_b: true,
        ..forced
    };
    assert!(matmul(gpu, &a, &a, None, tt).is_err());

    // Blocks are 16 or 32 rows × 64 columns (16 or 32 for A·Bᵀ with N ≤ 32, the narrow kernel
    // at two and four columns per lane: N = 10, 16, 17, 27, 32); these shapes are not multiples of
    // either, and the Aᵀ·B kernel also steps K in fours (37 leaves a tail).
    let mut ran = [0usize; 3];
    for (m, n, k) in [
        (1, 4, 4),
        (33, 68, 20),
        (17, 33, 12),
        (20, 132, 36),
        (36, 260, 8),
        (20, 68, 37),
        (4, 4, 1),
        (37, 10, 24),
        (9, 16, 8),
        (9, 17, 8),
        (40, 27, 16),
        (9, 32, 8),
    ] {
        for (variant, (trans_a, trans_b)) in [(false, false), (false, true), (true, false)]
            .into_iter()
            .enumerate()
        {
            if !subgroup_applies(trans_a, trans_b, m, n, k) {
                continue;
            }
            ran[variant] += 1;
            let (av, bv, biasv) = (data(m * k, 1), data(k * n, 2), data(n, 3));
            let a = up(gpu, &if trans_a { [k, m] } else { [m, k] }, &av);
            let b = up(gpu, &if trans_b { [n, k] } else { [k, n] }, &bv);
            let bias = up(gpu, &[n], &biasv);
            let product = cpu::matmul(&widen(&av), &widen(&bv), m, n, k, trans_a, trans_b);
            let options = MatmulOptions {
                trans_a,
                trans_b,
                ..forced
            };
            let got = run(gpu, matmul(gpu, &a, &b, None, options).unwrap());
            allclose(&got, &product, 1e-5, 1e-5)
                .unwrap_or_else(|e| panic!("{m}x{n}x{k} ta={trans_a} tb={trans_b}: {e}"));
            // The epilogue: bias, then GELU.
            let want: Vec<f64> = product
                .iter()
                .enumerate()
                .map(|(i, &v)| Act::Gelu.apply(v + f64::from(biasv[i % n])))
                .collect();
            let options = MatmulOptions {
                activation: Activation::Gelu,
                ..options
            };
            let got = run(gpu, matmul(gpu, &a, &b, Some(&bias), options).unwrap());
            allclose(&got, &want, 1e-5, 1e-5).unwrap_or_else(|e| {
                panic!("{m}x{n}x{k} ta={trans_a} tb={trans_b} +bias+gelu: {e}")
            });
        }
    }
    assert!(ran.iter().all(|&r| r >= 3), "cases per variant: {ran:?}");
}

#[test]
fn matmul_epilogue_adds_bias_and_applies_the_activation() {
    let Some(gpu) = gpu() else { return };
    let (m, n, k) = (33, 65, 17);
    let (xv, wv, bv) = (data(m * k, 3), data(n * k, 4), data(n, 5));
    let (x, w, b) = (
        up(gpu, &[m, k], &xv),
        up(gpu, &[n, k], &wv),
        up(gpu, &[n], &bv),
    );
    for (act, cpu_act) in [
        (Activation::None, Act::Identity),
        (Activation::Relu, Act::Relu),
        (Activation::Gelu, Act::Gelu),
    ] {
        let (_, want) = cpu::linear_forward(
            &widen(&xv),
            &widen(&wv),
            &widen(&bv),
            LinearShape { m, n, k },
            cpu_act,
        );
        for style in STYLES {
            let options = MatmulOptions {
                trans_b: true,
                activation: act,
                style: Some(style),
                ..Default::default()
            };
            let got = run(gpu, matmul(gpu, &x, &w, Some(&b), options).unwrap());
            allclose(&got, &want, 1e-5, 1e-5).unwrap_or_else(|e| panic!("{style:?} {act:?}: {e}"));
        }
    }
}

#[test]
fn matmul_shape_errors_name_both_operands() {
    let Some(gpu) = gpu() else { return };
    let (a, b) = (
        up(gpu, &[3, 4], &data(12, 1)),
        up(gpu, &[5, 6], &data(30, 2)),
    );
    let e = matmul(gpu, &a, &b, None, MatmulOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("[3, 4]") && e.contains("[5, 6]") && e.contains("inner"),
        "{e}"
    );
    let bias = up(gpu, &[5], &data(5, 3));
    let b2 = up(gpu, &[4, 6], &data(24, 2));
    let e = matmul(gpu, &a, &b2, Some(&bias), MatmulOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("bias"), "{e}");
}

#[test]
fn linear_reference_backward_matches_finite_differences() {
    let (m, n, k) = (4, 3, 5);
    let (x, w, b) = (
        widen(&data(m * k, 9)),
        widen(&data(n * k, 10)),
        widen(&data(n, 11)),
    );
    let r = widen(&data(m * n, 12));
    for act in [Act::Identity, Act::Relu, Act::Gelu] {
        // L = Σ r ⊙ f(x Wᵀ + b).
        let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
            cpu::linear_forward(x, w, b, LinearShape { m, n, k }, act)
                .1
                .iter()
                .zip(&r)
                .map(|(y, r)| y * r)
                .sum()
        };
        let (z, _) = cpu::linear_forward(&x, &w, &b, LinearShape { m, n, k }, act);
        let g = cpu::linear_backward(&x, &w, &z, &r, LinearShape { m, n, k }, act);
        assert_close_f64(
            "dx",
            &g.dx,
            &finite_difference(&x, 1e-6, |x| loss(x, &w, &b)),
            1e-5,
            1e-7,
        );
        assert_close_f64(
            "dw",
            &g.dw,
            &finite_difference(&w, 1e-6, |w| loss(&x, w, &b)),
            1e-5,
            1e-7,
        );
        assert_close_f64(
            "db",
            &g.db,
            &finite_difference(&b, 1e-6, |b| loss(&x, &w, b)),
            1e-5,
            1e-7,
        );
    }
}

#[test]
fn linear_backward_on_the_gpu_matches_the_reference() {
    let Some(gpu) = gpu() else { return };
    let (m, n, k) = (37, 19, 70);
    let (xv, wv, bv, rv) = (
        data(m * k, 13),
        data(n * k, 14),
        data(n, 15),
        data(m * n, 16),
    );
    let (x, w, b, r) = (
        up(gpu, &[m, k], &xv),
        up(gpu, &[n, k], &wv),
        up(gpu, &[n], &bv),
        up(gpu, &[m, n], &rv),
    );
    for (kind, act) in [(Kind::Relu, Act::Relu), (Kind::Gelu, Act::Gelu)] {
        let (z_ref, _) = cpu::linear_forward(
            &widen(&xv),
            &widen(&wv),
            &widen(&bv),
            LinearShape { m, n, k },
            act,
        );
        let want = cpu::linear_backward(
            &widen(&xv),
            &widen(&wv),
            &z_ref,
            &widen(&rv),
            LinearShape { m, n, k },
            act,
        );
        for style in STYLES {
            let opt = |trans_a, trans_b| MatmulOptions {
                trans_a,
                trans_b,
                style: Some(style),
                ..Default::default()
            };
            let (fwd, z) = matmul(gpu, &x, &w, Some(&b), opt(false, true)).unwrap();
            let (act_bwd, dz) = activation::backward(gpu, kind, &z, &r).unwrap();
            let (dx_d, dx) = matmul(gpu, &dz, &w, None, opt(false, false)).unwrap();
            let (dw_d, dw) = matmul(gpu, &dz, &x, None, opt(true, false)).unwrap();
            let (db_d, db) = reduce_axis(gpu, &dz, 0, AxisOp::Sum).unwrap();
            gpu.execute(&[fwd, act_bwd, dx_d, dw_d, db_d]).unwrap();
            for (name, t, want) in [
                ("dx", &dx, &want.dx),
                ("dw", &dw, &want.dw),
                ("db", &db, &want.db),
            ] {
                allclose(&gpu.read::<f32>(t).unwrap(), want, 1e-4, 1e-5)
                    .unwrap_or_else(|e| panic!("{style:?} {kind:?} {name}: {e}"));
            }
        }
    }
}
