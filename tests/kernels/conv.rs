//! Convolution (`shaders/conv*.wgsl`) through both kernel sets, and its reference backward.

use super::common::{assert_close_f64, data, finite_difference, gpu, read, up, widen, win};
use wgdistill::gpu::Gpu;
use wgdistill::kernels::conv::{self, Conv2d};
use wgdistill::reference::allclose;
use wgdistill::reference::conv::{self as cpu, Window};

/// Input windows and output channels.
const CONV_CASES: &[(Window, usize)] = &[
    (win(1, 1, 1, 1, [1, 1], [1, 1], [0, 0]), 1),
    (win(2, 3, 7, 5, [3, 3], [1, 1], [1, 1]), 9),
    (win(3, 5, 9, 11, [3, 2], [2, 1], [1, 0]), 4),
    (win(2, 4, 8, 8, [1, 1], [2, 2], [0, 0]), 13),
    (win(1, 2, 6, 7, [5, 5], [2, 3], [2, 2]), 3),
    // Past one workgroup of the subgroup kernel in both positions (64) and channels (16).
    (win(2, 3, 10, 9, [3, 3], [1, 1], [1, 1]), 21),
    // A first layer's batch: each weight's gradient sums 75,264 positions, past the 65,535 loop
    // iterations after which llvmpipe stops an invocation (the reduction must be split).
    (win(96, 1, 28, 28, [3, 3], [1, 1], [1, 1]), 4),
    // At most 16 weight columns (2·2·3 here, and 4 and 9 above) take the narrow weight-gradient
    // kernel on CPU-like drivers: output channels in blocks of 4 (7 leaves one short), strides
    // and padding uneven.
    (win(3, 2, 9, 11, [2, 3], [2, 1], [1, 0]), 7),
];

/// The kernels (forward and backward) this adapter can run: the generic one, and the subgroup one where it
/// applies, which it must on lavapipe (so CI's Vulkan job cannot skip it).
fn forward_kernels(gpu: &Gpu) -> Vec<Option<bool>> {
    let caps = gpu.caps();
    if caps.backend == "vulkan" && caps.name.starts_with("llvmpipe") {
        assert!(caps.subgroup_matmul(), "lavapipe should offer subgroups");
    }
    if caps.subgroup_matmul() {
        vec![Some(false), Some(true)]
    } else {
        vec![Some(false)]
    }
}

#[test]
fn conv2d_forward_and_backward_match_reference() {
    let Some(gpu) = gpu() else { return };
    for &(win, cout) in CONV_CASES {
        let Window {
            n,
            c: cin,
            h,
            w,
            k,
            s,
            p,
        } = win;
        let [ho, wo] = win.out();
        let (xv, wv, bv) = (
            data(n * cin * h * w, 1),
            data(cout * cin * k[0] * k[1], 2),
            data(cout, 3),
        );
        let dyv = data(n * cout * ho * wo, 4);
        let (x, wt, b, dy) = (
            up(gpu, &[n, cin, h, w], &xv),
            up(gpu, &[cout, cin, k[0], k[1]], &wv),
            up(gpu, &[cout], &bv),
            up(gpu, &[n, cout, ho, wo], &dyv),
        );
        let spec = Conv2d {
            stride: s,
            padding: p,
            groups: 1,
        };
        let want = cpu::conv2d(&widen(&xv), &widen(&wv), Some(&widen(&bv)), &win, cout, 1);
        for subgroups in forward_kernels(gpu) {
            let (d, y) = conv::forward_with(gpu, &x, &wt, Some(&b), &spec, subgroups).unwrap();
            assert_eq!(y.shape(), &[n, cout, ho, wo]);
            allclose(&read(gpu, &[d], &y), &want, 1e-5, 1e-5)
                .unwrap_or_else(|e| panic!("conv {win:?} subgroups {subgroups:?}: {e}"));
        }
        let (want_dx, want_dw, want_db) =
            cpu::conv2d_backward(&widen(&xv), &widen(&wv), &widen(&dyv), &win, cout, 1);
        // f32 sums of tens of thousands of terms (dw, db) round at about 1e-5 of their size.
        let tol = if n * ho * wo > 10_000 { 1e-4 } else { 1e-5 };
        for subgroups in forward_kernels(gpu) {
            let options = conv::BackwardOptions {
                input_grad: true,
                weight_grad: true,
                bias: true,
                subgroups,
            };
            let (plan, g) = conv::backward_with(gpu, &x, &wt, &dy, &spec, options).unwrap();
            gpu.execute(&plan).unwrap();
            for (name, t, want) in [
                ("dx", g.dx.as_ref().unwrap(), &want_dx),
                ("dw", g.dw.as_ref().unwrap(), &want_dw),
                ("db", g.dbias.as_ref().unwrap(), &want_db),
            ] {
                allclose(&gpu.read::<f32>(t).unwrap(), want, tol, tol)
                    .unwrap_or_else(|e| panic!("conv {name} {win:?} subgroups {subgroups:?}: {e}"));
            }
            // Without the input's gradient, only dw (and db) are computed.
            let options = conv::BackwardOptions {
                input_grad: false,
                ..options
            };
            let (plan, g) = conv::backward_with(gpu, &x, &wt, &dy, &spec, options).unwrap();
            assert!(g.dx.is_none());
            gpu.execute(&plan).unwrap();
            allclose(
                &gpu.read::<f32>(g.dw.as_ref().unwrap()).unwrap(),
                &want_dw,
                tol,
                tol,
            )
            .unwrap();
            // A frozen layer: dx alone, no launch for dw.
            let frozen = conv::BackwardOptions {
                input_grad: true,
                weight_grad: false,
                bias: false,
                ..options
            };
            let (only_dx, g) = conv::backward_with(gpu, &x, &wt, &dy, &spec, frozen).unwrap();
            assert!(g.dw.is_none() && g.dbias.is_none());
            assert!(only_dx.len() < plan.len() + 1);
            gpu.execute(&only_dx).unwrap();
            allclose(
                &gpu.read::<f32>(g.dx.as_ref().unwrap()).unwrap(),
                &want_dx,
                tol,
                tol,
            )
            .unwrap();
        }
    }
}

#[test]
fn conv2d_reference_backward_matches_finite_differences() {
    // One group, two groups, and depthwise with a channel multiplier of 2.
    for (c, cout, groups) in [(2usize, 3usize, 1usize), (4, 6, 2), (3, 6, 3)] {
        let win = Window {
            n: 2,
            c,
            h: 5,
            w: 4,
            k: [3, 2],
            s: [2, 1],
            p: [1, 1],
        };
        let [ho, wo] = win.out();
        let (x, w) = (
            widen(&data(2 * c * 5 * 4, 5)),
            widen(&data(cout * (c / groups) * 3 * 2, 6)),
        );
        let r = widen(&data(2 * cout * ho * wo, 7));
        let loss = |x: &[f64], w: &[f64]| -> f64 {
            cpu::conv2d(x, w, None, &win, cout, groups)
                .iter()
                .zip(&r)
                .map(|(a, b)| a * b)
                .sum()
        };
        let (dx, dw, _) = cpu::conv2d_backward(&x, &w, &r, &win, cout, groups);
        let what = |g: &str| format!("{g} groups={groups}");
        let numeric_dx = finite_difference(&x, 1e-6, |x| loss(x, &w));
        assert_close_f64(&what("dx"), &dx, &numeric_dx, 1e-6, 1e-8);
        let numeric_dw = finite_difference(&w, 1e-6, |w| loss(&x, w));
        assert_close_f64(&what("dw"), &dw, &numeric_dw, 1e-6, 1e-8);
    }
}

/// A grouped convolution is the concatenation of ordinary convolutions of each group's channels.
#[test]
fn grouped_convolution_is_per_group_convolution_concatenated() {
    let win = Window {
        n: 2,
        c: 6,
        h: 5,
        w: 6,
        k: [3, 3],
        s: [1, 1],
        p: [1, 1],
    };
    let (groups, cout) = (3, 9);
    let x = widen(&data(2 * 6 * 30, 8));
    let w = widen(&data(cout * 2 * 9, 9));
    let y = cpu::conv2d(&x, &w, None, &win, cout, groups);
    for g in 0..groups {
        let part = Window { c: 2, ..win };
        let xg: Vec<f64> = (0..2)
            .flat_map(|n| x[(n * 6 + 2 * g) * 30..(n * 6 + 2 * g + 2) * 30].to_vec())
            .collect();
        let wg = &w[g * 3 * 18..(g + 1) * 3 * 18];
        let yg = cpu::conv2d(&xg, wg, None, &part, 3, 1);
        for n in 0..2 {
            let got = &y[(n * 9 + 3 * g) * 30..(n * 9 + 3 * g + 3) * 30];
            assert_close_f64("group", got, &yg[n * 90..(n + 1) * 90], 1e-12, 1e-12);
        }
    }
}

#[test]
fn conv2d_shape_errors_are_clear() {
    let Some(gpu) = gpu() else { return };
    let x = up(gpu, &[1, 3, 5, 5], &data(75, 1));
    let w = up(gpu, &[4, 2, 3, 3], &data(72, 2));
    let e = conv::forward(gpu, &x, &w, None, &Conv2d::new(1, 0))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("3 channels") && e.contains("[4, 2, 3, 3]"),
        "{e}"
    );
    let grouped = Conv2d {
        groups: 2,
        ..Conv2d::new(1, 0)
    };
    let e = conv::forward(gpu, &x, &w, None, &grouped)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("groups = 2") && e.contains("divide"), "{e}");
    let forced = conv::forward_with(
        gpu,
        &x,
        &up(gpu, &[3, 1, 3, 3], &data(27, 3)),
        None,
        &Conv2d {
            groups: 3,
            ..Conv2d::new(1, 0)
        },
        Some(true),
    );
    assert!(
        forced.is_err(),
        "a subgroup kernel for a grouped convolution"
    );
    let w = up(gpu, &[4, 3, 7, 7], &data(588, 2));
    assert!(conv::forward(gpu, &x, &w, None, &Conv2d::new(1, 0)).is_err());
}
