//! f64 reference for `shaders/pool.wgsl`: max pooling (ignoring padding) and average pooling
//! (counting it), with their backward passes, as PyTorch computes them.

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
