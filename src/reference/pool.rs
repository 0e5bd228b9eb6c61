//! f64 reference for `shaders/pool.wgsl`: max pooling (ignoring padding), average pooling
//! (counting it) and adaptive average pooling, with their backward passes, as PyTorch computes
//! them.

use super::conv::Window;

/// Max pooling: output and, per output, the flat in-plane index of its (first) maximum.
pub fn max_pool(x: &[f64], win: &Window) -> (Vec<f64>, Vec<usize>) {
    let [ho, wo] = win.out();
    let mut y = Vec::new();
    let mut arg = Vec::new();
    for plane in 0..win.n * win.c {
        for oh in 0..ho {
            for ow in 0..wo {
                let mut best = (f64::NEG_INFINITY, usize::MAX);
                for i in 0..win.k[0] {
                    for j in 0..win.k[1] {
                        if let (Some(ih), Some(iw)) = (win.input(0, oh, i), win.input(1, ow, j)) {
                            let v = x[plane * win.h * win.w + ih * win.w + iw];
                            if v > best.0 || best.1 == usize::MAX {
                                best = (v, ih * win.w + iw);
                            }
                        }
                    }
                }
                y.push(best.0);
                arg.push(best.1);
            }
        }
    }
    (y, arg)
}

/// Max pooling backward: dy routed to each window's maximum.
pub fn max_pool_backward(arg: &[usize], dy: &[f64], win: &Window) -> Vec<f64> {
    let [ho, wo] = win.out();
    let mut dx = vec![0.0; win.n * win.c * win.h * win.w];
    for (o, (&a, &g)) in arg.iter().zip(dy).enumerate() {
        dx[(o / (ho * wo)) * win.h * win.w + a] += g;
    }
    dx
}

/// Average pooling (padding counted in the divisor).
pub fn avg_pool(x: &[f64], win: &Window) -> Vec<f64> {
    let [ho, wo] = win.out();
    let area = (win.k[0] * win.k[1]) as f64;
    let mut y = Vec::new();
    for plane in 0..win.n * win.c {
        for oh in 0..ho {
            for ow in 0..wo {
                let mut acc = 0.0;
                for i in 0..win.k[0] {
                    for j in 0..win.k[1] {
                        if let (Some(ih), Some(iw)) = (win.input(0, oh, i), win.input(1, ow, j)) {
                            acc += x[plane * win.h * win.w + ih * win.w + iw];
                        }
                    }
                }
                y.push(acc / area);
            }
        }
    }
    y
}

/// Average pooling backward.
pub fn avg_pool_backward(dy: &[f64], win: &Window) -> Vec<f64> {
    let [ho, wo] = win.out();
    let area = (win.k[0] * win.k[1]) as f64;
    let mut dx = vec![0.0; win.n * win.c * win.h * win.w];
    for plane in 0..win.n * win.c {
        for oh in 0..ho {
            for ow in 0..wo {
                let g = dy[(plane * ho + oh) * wo + ow] / area;
                for i in 0..win.k[0] {
                    for j in 0..win.k[1] {
                        if let (Some(ih), Some(iw)) = (win.input(0, oh, i), win.input(1, ow, j)) {
                            dx[plane * win.h * win.w + ih * win.w + iw] += g;
                        }
                    }
                }
            }
        }
    }
    dx
}

/// Adaptive pooling's window along one axis of `n` for output index `i` of `out`: `[start, end)`.
pub fn adaptive_window(i: usize, n: usize, out: usize) -> (usize, usize) {
    (i * n / out, ((i + 1) * n).div_ceil(out))
}

/// Adaptive average pooling of (N, C, H, W) `x` to an (OH, OW) grid (`adaptive_avg_pool2d`).
pub fn adaptive_avg_pool(x: &[f64], [n, c, h, w]: [usize; 4], [oh, ow]: [usize; 2]) -> Vec<f64> {
    let mut y = Vec::with_capacity(n * c * oh * ow);
    for plane in x.chunks(h * w).take(n * c) {
        for i in 0..oh {
            let (r0, r1) = adaptive_window(i, h, oh);
            for j in 0..ow {
                let (c0, c1) = adaptive_window(j, w, ow);
                let sum: f64 = (r0..r1)
                    .flat_map(|r| (c0..c1).map(move |q| plane[r * w + q]))
                    .sum();
                y.push(sum / ((r1 - r0) * (c1 - c0)) as f64);
            }
        }
    }
    y
}

/// Adaptive average pooling backward: each output's gradient spread evenly over its window.
pub fn adaptive_avg_pool_backward(
    dy: &[f64],
    [n, c, h, w]: [usize; 4],
    [oh, ow]: [usize; 2],
) -> Vec<f64> {
    let mut dx = vec![0.0; n * c * h * w];
    for (plane, g) in dy.chunks(oh * ow).enumerate().take(n * c) {
        for i in 0..oh {
            let (r0, r1) = adaptive_window(i, h, oh);
            for j in 0..ow {
                let (c0, c1) = adaptive_window(j, w, ow);
                let share = g[i * ow + j] / ((r1 - r0) * (c1 - c0)) as f64;
                for r in r0..r1 {
                    for q in c0..c1 {
                        dx[plane * h * w + r * w + q] += share;
                    }
                }
            }
        }
    }
    dx
}
