//! f64 references for convolution, pooling and batch normalisation over NCHW tensors
//! (PyTorch's semantics: floor-mode output sizes, zero padding, max pooling ignoring padding,
//! average pooling counting it).

/// Sizes of a 2-D sliding window: input (n, c, h, w), window (kh, kw), stride, padding.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Batch.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Window (height, width).
    pub k: [usize; 2],
    /// Stride (height, width).
    pub s: [usize; 2],
    /// Padding (height, width).
    pub p: [usize; 2],
}

impl Window {
    /// Output (height, width).
    pub fn out(&self) -> [usize; 2] {
        [
            (self.h + 2 * self.p[0] - self.k[0]) / self.s[0] + 1,
            (self.w + 2 * self.p[1] - self.k[1]) / self.s[1] + 1,
        ]
    }

    /// Input coordinate of output position `o` and window offset `k` along axis `a`, if inside.
    fn input(&self, a: usize, o: usize, k: usize) -> Option<usize> {
        let size = if a == 0 { self.h } else { self.w };
        (o * self.s[a] + k)
            .checked_sub(self.p[a])
            .filter(|&i| i < size)
    }
}

/// `y = conv2d(x, w) + b`, w [cout, c, kh, kw]; returns y [n, cout, ho, wo].
pub fn conv2d(x: &[f64], w: &[f64], b: Option<&[f64]>, win: &Window, cout: usize) -> Vec<f64> {
    let [ho, wo] = win.out();
    let [kh, kw] = win.k;
    let mut y = vec![0.0; win.n * cout * ho * wo];
    for n in 0..win.n {
        for co in 0..cout {
            for oh in 0..ho {
                for ow in 0..wo {
                    let mut acc = b.map_or(0.0, |b| b[co]);
                    for ci in 0..win.c {
                        for i in 0..kh {
                            for j in 0..kw {
                                if let (Some(ih), Some(iw)) =
                                    (win.input(0, oh, i), win.input(1, ow, j))
                                {
                                    acc += x[((n * win.c + ci) * win.h + ih) * win.w + iw]
                                        * w[((co * win.c + ci) * kh + i) * kw + j];
                                }
                            }
                        }
                    }
                    y[((n * cout + co) * ho + oh) * wo + ow] = acc;
                }
            }
        }
    }
    y
}

/// Gradients of conv2d: (dx, dw, db) from dy.
pub fn conv2d_backward(
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    win: &Window,
    cout: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let [ho, wo] = win.out();
    let [kh, kw] = win.k;
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    let mut db = vec![0.0; cout];
    for n in 0..win.n {
        for co in 0..cout {
            for oh in 0..ho {
                for ow in 0..wo {
                    let g = dy[((n * cout + co) * ho + oh) * wo + ow];
                    db[co] += g;
                    for ci in 0..win.c {
                        for i in 0..kh {
                            for j in 0..kw {
                                if let (Some(ih), Some(iw)) =
                                    (win.input(0, oh, i), win.input(1, ow, j))
                                {
                                    let xi = ((n * win.c + ci) * win.h + ih) * win.w + iw;
                                    let wi = ((co * win.c + ci) * kh + i) * kw + j;
                                    dx[xi] += g * w[wi];
                                    dw[wi] += g * x[xi];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    (dx, dw, db)
}

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

/// Batch-norm training forward over x viewed as [n, c, s]: y, batch mean, biased variance.
pub fn batch_norm(
    x: &[f64],
    n: usize,
    c: usize,
    s: usize,
    gamma: &[f64],
    beta: &[f64],
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let idx = |b: usize, ch: usize, i: usize| (b * c + ch) * s + i;
    let m = (n * s) as f64;
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    for ch in 0..c {
        let vals: Vec<f64> = (0..n)
            .flat_map(|b| (0..s).map(move |i| idx(b, ch, i)))
            .map(|k| x[k])
            .collect();
        mean[ch] = vals.iter().sum::<f64>() / m;
        var[ch] = vals.iter().map(|v| (v - mean[ch]).powi(2)).sum::<f64>() / m;
    }
    let y = (0..x.len())
        .map(|k| {
            let ch = (k / s) % c;
            (x[k] - mean[ch]) / (var[ch] + eps).sqrt() * gamma[ch] + beta[ch]
        })
        .collect();
    (y, mean, var)
}

/// Batch-norm training backward: (dx, dgamma, dbeta).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    x: &[f64],
    dy: &[f64],
    n: usize,
    c: usize,
    s: usize,
    gamma: &[f64],
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (_, mean, var) = batch_norm(x, n, c, s, gamma, &vec![0.0; c], eps);
    let m = (n * s) as f64;
    let xhat = |k: usize| {
        let ch = (k / s) % c;
        (x[k] - mean[ch]) / (var[ch] + eps).sqrt()
    };
    let mut dgamma = vec![0.0; c];
    let mut dbeta = vec![0.0; c];
    for (k, g) in dy.iter().enumerate() {
        let ch = (k / s) % c;
        dgamma[ch] += g * xhat(k);
        dbeta[ch] += g;
    }
    let dx = (0..x.len())
        .map(|k| {
            let ch = (k / s) % c;
            let invstd = 1.0 / (var[ch] + eps).sqrt();
            gamma[ch] * invstd / m * (m * dy[k] - dbeta[ch] - xhat(k) * dgamma[ch])
        })
        .collect();
    (dx, dgamma, dbeta)
}
