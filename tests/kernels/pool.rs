//! Pooling (`shaders/pool.wgsl`) and its reference backward.

use super::common::{assert_close_f64, data, finite_difference, gpu, read, up, widen, win};
use wgdistill::kernels::pool::{self, Pool2d};
use wgdistill::reference::allclose;
use wgdistill::reference::conv::Window;
use wgdistill::reference::pool as cpu;

// Windows that tile the input exactly (the first, fourth and fifth: max pooling's backward takes
// its per-window kernel) and windows that overlap, pad, or leave a last row and column out (the
// gather kernel). 2 × 2 windows at stride 2 on an even width (the first and last) take the
// forward kernel that reads pairs.
const POOL_CASES: &[Window] = &[
    win(1, 1, 2, 2, [2, 2], [2, 2], [0, 0]),
    win(2, 3, 7, 9, [3, 3], [2, 2], [1, 1]),
    win(3, 2, 5, 6, [2, 3], [1, 2], [1, 0]),
    win(1, 4, 9, 9, [3, 3], [3, 3], [0, 0]),
    win(2, 3, 6, 10, [3, 2], [3, 2], [0, 0]),
    win(2, 3, 7, 7, [2, 2], [2, 2], [0, 0]),
    win(2, 3, 7, 10, [2, 2], [2, 2], [0, 0]),
];

#[test]
fn pooling_matches_reference_forward_and_backward() {
    let Some(gpu) = gpu() else { return };
    // Whether the ReLU mask stopped a gradient somewhere (a window of non-positive inputs).
    let mut masked_some = false;
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
        assert_eq!(
            pool::tiles_exactly(&spec, h, w),
            k == s && p == [0, 0] && h % k[0] == 0 && w % k[1] == 0
        );

        // A ReLU before the pooling, its backward fused into the pooling's: the gradient with
        // respect to the ReLU's input is the pooling's, masked where that input is not positive.
        let relu_x: Vec<f32> = xv.iter().map(|v| v.max(0.0)).collect();
        let (d, y, arg) =
            pool::max_pool_forward(gpu, &up(gpu, &[n, c, h, w], &relu_x), &spec).unwrap();
        gpu.execute(&[d]).unwrap();
        let arg_r: Vec<usize> = gpu
            .read::<i32>(&arg)
            .unwrap()
            .iter()
            .map(|&a| a as usize)
            .collect();
        // Ties (windows of zeros) keep the first maximum, as PyTorch.
        assert_eq!(
            arg_r,
            cpu::max_pool(&widen(&relu_x), &win).1,
            "argmax after relu {win:?}"
        );
        let want: Vec<f64> = cpu::max_pool_backward(&arg_r, &widen(&dyv), &win)
            .iter()
            .zip(&xv)
            .map(|(g, &v)| if v > 0.0 { *g } else { 0.0 })
            .collect();
        let (d, dx) = pool::max_pool_backward_masked(gpu, &x, &spec, &arg, &dy, Some(&y)).unwrap();
        let got = read(gpu, &[d], &dx);
        allclose(&got, &want, 1e-6, 1e-7)
            .unwrap_or_else(|e| panic!("max backward + relu {win:?}: {e}"));
        let unmasked = cpu::max_pool_backward(&arg_r, &widen(&dyv), &win);
        masked_some |= unmasked.iter().zip(&want).any(|(a, b)| a != b);

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
    assert!(masked_some, "no case exercised the fused ReLU mask");
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
fn adaptive_pooling_reference_follows_pytorch_windows_and_finite_differences() {
    // adaptive_avg_pool2d's windows for 7 → 4 overlap: rows [0, 2), [1, 4), [3, 6), [5, 7).
    let windows: Vec<_> = (0..4).map(|i| cpu::adaptive_window(i, 7, 4)).collect();
    assert_eq!(windows, [(0, 2), (1, 4), (3, 6), (5, 7)]);
    for (shape, out) in [([1, 2, 7, 5], [4, 3]), ([2, 1, 3, 4], [5, 2])] {
        let n: usize = shape.iter().product();
        let x = widen(&data(n, 13));
        let r = widen(&data(shape[0] * shape[1] * out[0] * out[1], 14));
        let dot = |y: Vec<f64>| -> f64 { y.iter().zip(&r).map(|(a, b)| a * b).sum() };
        let fd = finite_difference(&x, 1e-6, |x| dot(cpu::adaptive_avg_pool(x, shape, out)));
        let got = cpu::adaptive_avg_pool_backward(&r, shape, out);
        assert_close_f64(&format!("{shape:?} → {out:?}"), &got, &fd, 1e-6, 1e-8);
    }
}
