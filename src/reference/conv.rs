//! f64 reference for `shaders/conv.wgsl` and `shaders/conv_subgroup.wgsl`: NCHW convolution
//! and its gradients (PyTorch's semantics: floor-mode output sizes, zero padding).

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
    pub fn input(&self, a: usize, o: usize, k: usize) -> Option<usize> {
        let size = if a == 0 { self.h } else { self.w };
        (o * self.s[a] + k)
            .checked_sub(self.p[a])
            .filter(|&i| i < size)
    }
}

/// The input channels output channel `co` reads, and where they start in its weight row: with
/// `groups` groups, channel groups of `c / groups` inputs map to `cout / groups` outputs each.
fn group_inputs(win: &Window, cout: usize, groups: usize, co: usize) -> std::ops::Range<usize> {
    let (cin_g, cout_g) = (win.c / groups, cout / groups);
    let g = co / cout_g;
    g * cin_g..(g + 1) * cin_g
}

/// `y = conv2d(x, w) + b` with `groups` channel groups (PyTorch's `groups`), w
/// [cout, c / groups, kh, kw]; returns y [n, cout, ho, wo].
pub fn conv2d(
    x: &[f64],
    w: &[f64],
    b: Option<&[f64]>,
    win: &Window,
    cout: usize,
    groups: usize,
) -> Vec<f64> {
    let [ho, wo] = win.out();
    let [kh, kw] = win.k;
    let cin_g = win.c / groups;
    let mut y = vec![0.0; win.n * cout * ho * wo];
    for n in 0..win.n {
        for co in 0..cout {
            let inputs = group_inputs(win, cout, groups, co);
            let first = inputs.start;
            for oh in 0..ho {
                for ow in 0..wo {
                    let mut acc = b.map_or(0.0, |b| b[co]);
                    for ci in inputs.clone() {
                        for i in 0..kh {
                            for j in 0..kw {
                                if let (Some(ih), Some(iw)) =
                                    (win.input(0, oh, i), win.input(1, ow, j))
                                {
                                    acc += x[((n * win.c + ci) * win.h + ih) * win.w + iw]
                                        * w[((co * cin_g + ci - first) * kh + i) * kw + j];
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

/// Gradients of [`conv2d`]: (dx, dw, db) from dy.
pub fn conv2d_backward(
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    win: &Window,
    cout: usize,
    groups: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let [ho, wo] = win.out();
    let [kh, kw] = win.k;
    let cin_g = win.c / groups;
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    let mut db = vec![0.0; cout];
    for n in 0..win.n {
        for co in 0..cout {
            let inputs = group_inputs(win, cout, groups, co);
            let first = inputs.start;
            for oh in 0..ho {
                for ow in 0..wo {
                    let g = dy[((n * cout + co) * ho + oh) * wo + ow];
                    db[co] += g;
                    for ci in inputs.clone() {
                        for i in 0..kh {
                            for j in 0..kw {
                                if let (Some(ih), Some(iw)) =
                                    (win.input(0, oh, i), win.input(1, ow, j))
                                {
                                    let xi = ((n * win.c + ci) * win.h + ih) * win.w + iw;
                                    let wi = ((co * cin_g + ci - first) * kh + i) * kw + j;
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
