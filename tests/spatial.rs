//! Convolution, pooling and batch normalisation against their f64 references at odd shapes,
//! with the references' backward passes checked by finite differences.

mod common;

use common::{assert_close_f64, data, finite_difference, gpu, widen};
use wgdistill::gpu::{DType, Dispatch, Gpu, Tensor};
use wgdistill::kernels::batchnorm::{self, BatchNormState};
use wgdistill::kernels::conv::{self, Conv2d};
use wgdistill::kernels::pool::{self, Pool2d};
use wgdistill::reference::allclose;
use wgdistill::reference::conv::{self as cpu, Window};

fn up(gpu: &Gpu, shape: &[usize], v: &[f32]) -> Tensor {
    gpu.upload(shape, v).unwrap()
}

fn read(gpu: &Gpu, plan: &[Dispatch], t: &Tensor) -> Vec<f32> {
    gpu.execute(plan).unwrap();
    gpu.read::<f32>(t).unwrap()
}

const fn win(
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: [usize; 2],
    s: [usize; 2],
    p: [usize; 2],
) -> Window {
    Window {
        n,
        c,
        h,
        w,
        k,
        s,
        p,
    }
}

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
];

/// The kernels (forward and backward) this adapter can run: the generic one, and the subgroup one where it
/// applies, which it must on lavapipe (so CI's Vulkan job cannot skip it).
fn forward_kernels(gpu: &Gpu) -> Vec<Option<bool>> {
    let caps = gpu.caps();
    if caps.backend == "vulkan" && caps.device_type == "cpu" {
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
        };
        let want = cpu::conv2d(&widen(&xv), &widen(&wv), Some(&widen(&bv)), &win, cout);
        for subgroups in forward_kernels(gpu) {
            let (d, y) = conv::forward_with(gpu, &x, &wt, Some(&b), &spec, subgroups).unwrap();
            assert_eq!(y.shape(), &[n, cout, ho, wo]);
            allclose(&read(gpu, &[d], &y), &want, 1e-5, 1e-5)
                .unwrap_or_else(|e| panic!("conv {win:?} subgroups {subgroups:?}: {e}"));
        }
        let (want_dx, want_dw, want_db) =
            cpu::conv2d_backward(&widen(&xv), &widen(&wv), &widen(&dyv), &win, cout);
        // f32 sums of tens of thousands of terms (dw, db) round at about 1e-5 of their size.
        let tol = if n * ho * wo > 10_000 { 1e-4 } else { 1e-5 };
        for subgroups in forward_kernels(gpu) {
            let options = conv::BackwardOptions {
                input_grad: true,
                bias: true,
                subgroups,
            };
            let (plan, g) = conv::backward_with(gpu, &x, &wt, &dy, &spec, options).unwrap();
            gpu.execute(&plan).unwrap();
            for (name, t, want) in [
                ("dx", g.dx.as_ref().unwrap(), &want_dx),
                ("dw", &g.dw, &want_dw),
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
            allclose(&gpu.read::<f32>(&g.dw).unwrap(), &want_dw, tol, tol).unwrap();
        }
    }
}

#[test]
fn conv2d_reference_backward_matches_finite_differences() {
    let win = Window {
        n: 2,
        c: 2,
        h: 5,
        w: 4,
        k: [3, 2],
        s: [2, 1],
        p: [1, 1],
    };
    let cout = 3;
    let [ho, wo] = win.out();
    let (x, w) = (
        widen(&data(2 * 2 * 5 * 4, 5)),
        widen(&data(cout * 2 * 3 * 2, 6)),
    );
    let r = widen(&data(2 * cout * ho * wo, 7));
    let loss = |x: &[f64], w: &[f64]| -> f64 {
        cpu::conv2d(x, w, None, &win, cout)
            .iter()
            .zip(&r)
            .map(|(a, b)| a * b)
            .sum()
    };
    let (dx, dw, _) = cpu::conv2d_backward(&x, &w, &r, &win, cout);
    assert_close_f64(
        "dx",
        &dx,
        &finite_difference(&x, 1e-6, |x| loss(x, &w)),
        1e-6,
        1e-8,
    );
    assert_close_f64(
        "dw",
        &dw,
        &finite_difference(&w, 1e-6, |w| loss(&x, w)),
        1e-6,
        1e-8,
    );
}

#[test]
fn conv2d_shape_errors_are_clear() {
    let Some(gpu) = gpu() else { return };
    let x = up(gpu, &[1, 3, 5, 5], &data(75, 1));
    let w = up(gpu, &[4, 2, 3, 3], &data(72, 2));
    let e = conv::forward(
        gpu,
        &x,
        &w,
        None,
        &Conv2d {
            stride: [1, 1],
            padding: [0, 0],
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("3 channels") && e.contains("expects 2"), "{e}");
    let w = up(gpu, &[4, 3, 7, 7], &data(588, 2));
    assert!(
        conv::forward(
            gpu,
            &x,
            &w,
            None,
            &Conv2d {
                stride: [1, 1],
                padding: [0, 0]
            }
        )
        .is_err()
    );
}

const POOL_CASES: &[Window] = &[
    win(1, 1, 2, 2, [2, 2], [2, 2], [0, 0]),
    win(2, 3, 7, 9, [3, 3], [2, 2], [1, 1]),
    win(3, 2, 5, 6, [2, 3], [1, 2], [1, 0]),
    win(1, 4, 9, 9, [3, 3], [3, 3], [0, 0]),
];

#[test]
fn pooling_matches_reference_forward_and_backward() {
    let Some(gpu) = gpu() else { return };
    for &win in POOL_CASES {
        let Window {
            n,
            c,
            h,
            w,
            k,
            s,
            p,
        } = win;
        let [ho, wo] = win.out();
        let xv = data(n * c * h * w, 8);
        let dyv = data(n * c * ho * wo, 9);
        let (x, dy) = (up(gpu, &[n, c, h, w], &xv), up(gpu, &[n, c, ho, wo], &dyv));
        let spec = Pool2d {
            kernel: k,
            stride: s,
            padding: p,
        };

        let (want_y, want_arg) = cpu::max_pool(&widen(&xv), &win);
        let (d, y, arg) = pool::max_pool_forward(gpu, &x, &spec).unwrap();
        allclose(&read(gpu, &[d], &y), &want_y, 0.0, 0.0)
            .unwrap_or_else(|e| panic!("max {win:?}: {e}"));
        let got_arg: Vec<usize> = gpu
            .read::<i32>(&arg)
            .unwrap()
            .iter()
            .map(|&a| a as usize)
            .collect();
        assert_eq!(got_arg, want_arg, "argmax {win:?}");
        let (d, dx) = pool::max_pool_backward(gpu, &x, &spec, &arg, &dy).unwrap();
        let want = cpu::max_pool_backward(&want_arg, &widen(&dyv), &win);
        allclose(&read(gpu, &[d], &dx), &want, 1e-6, 1e-7)
            .unwrap_or_else(|e| panic!("max backward {win:?}: {e}"));

        let (d, y) = pool::avg_pool_forward(gpu, &x, &spec).unwrap();
        allclose(
            &read(gpu, &[d], &y),
            &cpu::avg_pool(&widen(&xv), &win),
            1e-6,
            1e-7,
        )
        .unwrap_or_else(|e| panic!("avg {win:?}: {e}"));
        let (d, dx) = pool::avg_pool_backward(gpu, &x, &spec, &dy).unwrap();
        allclose(
            &read(gpu, &[d], &dx),
            &cpu::avg_pool_backward(&widen(&dyv), &win),
            1e-6,
            1e-7,
        )
        .unwrap_or_else(|e| panic!("avg backward {win:?}: {e}"));
    }
}

#[test]
fn pooling_reference_backward_matches_finite_differences() {
    let win = Window {
        n: 1,
        c: 2,
        h: 5,
        w: 6,
        k: [3, 2],
        s: [2, 2],
        p: [1, 1],
    };
    let x = widen(&data(60, 10));
    let [ho, wo] = win.out();
    let r = widen(&data(2 * ho * wo, 11));
    let dot = |y: Vec<f64>| -> f64 { y.iter().zip(&r).map(|(a, b)| a * b).sum() };
    let fd = finite_difference(&x, 1e-6, |x| dot(cpu::avg_pool(x, &win)));
    assert_close_f64("avg", &cpu::avg_pool_backward(&r, &win), &fd, 1e-6, 1e-8);
    // Distinct values keep every maximum strict, so max pooling is differentiable here.
    let fd = finite_difference(&x, 1e-6, |x| dot(cpu::max_pool(x, &win).0));
    let (_, arg) = cpu::max_pool(&x, &win);
    assert_close_f64(
        "max",
        &cpu::max_pool_backward(&arg, &r, &win),
        &fd,
        1e-6,
        1e-8,
    );
}

#[test]
fn global_average_pooling_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let (n, c, h, w) = (3, 5, 7, 3);
    let xv = data(n * c * h * w, 12);
    let x = up(gpu, &[n, c, h, w], &xv);
    let (d, y) = pool::global_avg_pool_forward(gpu, &x).unwrap();
    let want: Vec<f64> = widen(&xv)
        .chunks(h * w)
        .map(|p| p.iter().sum::<f64>() / (h * w) as f64)
        .collect();
    allclose(&read(gpu, &[d], &y), &want, 1e-6, 1e-7).unwrap();
    let dyv = data(n * c, 13);
    let (d, dx) = pool::global_avg_pool_backward(gpu, &x, &up(gpu, &[n, c], &dyv)).unwrap();
    let want: Vec<f64> = (0..n * c * h * w)
        .map(|k| f64::from(dyv[k / (h * w)]) / (h * w) as f64)
        .collect();
    allclose(&read(gpu, &[d], &dx), &want, 1e-6, 1e-8).unwrap();
}

#[test]
fn batch_norm_matches_reference_in_training_and_evaluation() {
    let Some(gpu) = gpu() else { return };
    // Planes of 35 and 130 positions take the planar grid (more than one chunk of 64 for 130);
    // features and 3×3 maps the flat index. The last shape is a first CNN layer's batch
    // (100,352 values per channel, in 64 uneven chunks): a kernel that reduces a channel in one
    // invocation is cut short there by llvmpipe's 65,535-iteration loop limit.
    for shape in [
        vec![7usize, 5],
        vec![4, 3, 5, 7],
        vec![1, 2, 3, 3],
        vec![3, 2, 10, 13],
        vec![300, 2],
        vec![128, 3, 28, 28],
    ] {
        let (n, c) = (shape[0], shape[1]);
        let s: usize = shape[2..].iter().product();
        let xv: Vec<f32> = data(n * c * s, 14).iter().map(|v| 3.0 * v + 1.0).collect();
        let (gv, bv) = (data(c, 15), data(c, 16));
        let dyv = data(n * c * s, 17);
        let (x, gamma, beta, dy) = (
            up(gpu, &shape, &xv),
            up(gpu, &[c], &gv),
            up(gpu, &[c], &bv),
            up(gpu, &shape, &dyv),
        );
        let running_mean = gpu.zeros(&[c], DType::F32).unwrap();
        let running_var = up(gpu, &[c], &vec![1.0; c]);
        let st = BatchNormState {
            gamma: &gamma,
            beta: &beta,
            running_mean: &running_mean,
            running_var: &running_var,
            eps: 1e-5,
            momentum: 0.1,
        };
        let (want_y, mean, var) =
            cpu::batch_norm(&widen(&xv), n, c, s, &widen(&gv), &widen(&bv), 1e-5);
        let (plan, y, saved) = batchnorm::forward_train(gpu, &x, &st).unwrap();
        allclose(&read(gpu, &plan, &y), &want_y, 1e-4, 1e-5)
            .unwrap_or_else(|e| panic!("train {shape:?}: {e}"));
        let m = (n * s) as f64;
        let want_rm: Vec<f64> = mean.iter().map(|v| 0.1 * v).collect();
        let want_rv: Vec<f64> = var
            .iter()
            .map(|v| 0.9 + 0.1 * if m > 1.0 { v * m / (m - 1.0) } else { *v })
            .collect();
        allclose(
            &gpu.read::<f32>(&running_mean).unwrap(),
            &want_rm,
            1e-5,
            1e-6,
        )
        .unwrap();
        allclose(
            &gpu.read::<f32>(&running_var).unwrap(),
            &want_rv,
            1e-5,
            1e-6,
        )
        .unwrap();

        let (plan, g) = batchnorm::backward(gpu, &x, &dy, &st, &saved).unwrap();
        gpu.execute(&plan).unwrap();
        let (want_dx, want_dg, want_db) =
            cpu::batch_norm_backward(&widen(&xv), &widen(&dyv), n, c, s, &widen(&gv), 1e-5);
        for (name, t, want) in [
            ("dx", &g.dx, &want_dx),
            ("dgamma", &g.dgamma, &want_dg),
            ("dbeta", &g.dbeta, &want_db),
        ] {
            allclose(&gpu.read::<f32>(t).unwrap(), want, 1e-3, 1e-5)
                .unwrap_or_else(|e| panic!("{name} {shape:?}: {e}"));
        }

        let (d, y) = batchnorm::forward_eval(gpu, &x, &st).unwrap();
        let rm = gpu.read::<f32>(&running_mean).unwrap();
        let rv = gpu.read::<f32>(&running_var).unwrap();
        let want: Vec<f64> = (0..xv.len())
            .map(|k| {
                let ch = (k / s) % c;
                (f64::from(xv[k]) - f64::from(rm[ch])) / (f64::from(rv[ch]) + 1e-5).sqrt()
                    * f64::from(gv[ch])
                    + f64::from(bv[ch])
            })
            .collect();
        allclose(&read(gpu, &[d], &y), &want, 1e-5, 1e-6)
            .unwrap_or_else(|e| panic!("eval {shape:?}: {e}"));
    }
}

#[test]
fn batch_norm_reference_backward_matches_finite_differences() {
    let (n, c, s) = (3, 2, 4);
    let x = widen(&data(n * c * s, 18));
    let (g, b) = (widen(&data(c, 19)), widen(&data(c, 20)));
    let r = widen(&data(n * c * s, 21));
    let loss = |x: &[f64], g: &[f64], b: &[f64]| -> f64 {
        cpu::batch_norm(x, n, c, s, g, b, 1e-5)
            .0
            .iter()
            .zip(&r)
            .map(|(a, b)| a * b)
            .sum()
    };
    let (dx, dg, db) = cpu::batch_norm_backward(&x, &r, n, c, s, &g, 1e-5);
    assert_close_f64(
        "dx",
        &dx,
        &finite_difference(&x, 1e-6, |x| loss(x, &g, &b)),
        1e-5,
        1e-7,
    );
    assert_close_f64(
        "dgamma",
        &dg,
        &finite_difference(&g, 1e-6, |g| loss(&x, g, &b)),
        1e-5,
        1e-7,
    );
    assert_close_f64(
        "dbeta",
        &db,
        &finite_difference(&b, 1e-6, |b| loss(&x, &g, b)),
        1e-5,
        1e-7,
    );
}
