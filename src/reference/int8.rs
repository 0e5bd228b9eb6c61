//! Reference for `shaders/int8.wgsl` (and `int8_dot4.wgsl`): integer inference on unpacked,
//! NCHW tensors of grid values, in exact integer arithmetic with the epilogue in f64.
//! A layer's accumulator is `Σ (q_x − zp_x)·q_w`; its real value `m_c·acc + bias_c`; an output
//! on a grid is `clamp(round_half_even(real / s) + zp, lo, hi)`.

/// Where a layer's real values go: out as f32, or onto an activation grid with the bounds a
/// fused ReLU/ReLU6 sets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Requant {
    /// The reals themselves (logits).
    Float,
    /// `clamp(round(real · inv_scale) + zero_point, lo, hi)`.
    Grid {
        /// `1 / s_out`, as the kernels multiply by it (rounded to f32).
        inv_scale: f32,
        /// The output grid's zero point.
        zero_point: i32,
        /// Smallest value (the zero point with a ReLU fused, else 0).
        lo: i32,
        /// Largest value.
        hi: i32,
    },
}

/// A layer's per-output-channel epilogue: `real = multiplier_c · acc + bias_c`.
#[derive(Clone, Debug, PartialEq)]
pub struct Epilogue {
    /// Input scale times the channel's weight scale.
    pub multiplier: Vec<f32>,
    /// The (batch-norm folded) bias.
    pub bias: Vec<f32>,
}

impl Epilogue {
    fn apply(&self, c: usize, acc: i64, out: Requant) -> f64 {
        let real = f64::from(self.multiplier[c]) * acc as f64 + f64::from(self.bias[c]);
        match out {
            Requant::Float => real,
            Requant::Grid {
                inv_scale,
                zero_point,
                lo,
                hi,
            } => to_grid(real * f64::from(inv_scale), zero_point, lo, hi) as f64,
        }
    }
}

/// `round_half_even(v) + zero_point`, clamped to `[lo, hi]`.
pub fn to_grid(v: f64, zero_point: i32, lo: i32, hi: i32) -> i32 {
    let r = v.round_ties_even().clamp(-1e9, 1e9) as i64 + i64::from(zero_point);
    r.clamp(i64::from(lo), i64::from(hi)) as i32
}

/// Quantises reals onto the uint8 grid `(1 / inv_scale, zero_point)`.
pub fn quantize(x: &[f64], inv_scale: f32, zero_point: i32) -> Vec<i32> {
    x.iter()
        .map(|&v| to_grid(v * f64::from(inv_scale), zero_point, 0, 255))
        .collect()
}

/// `(q − zero_point) · scale`.
pub fn dequantize(q: &[i32], scale: f32, zero_point: i32) -> Vec<f64> {
    q.iter()
        .map(|&v| f64::from(v - zero_point) * f64::from(scale))
        .collect()
}

/// `x [batch, k] · w [n, k]ᵀ` on the grid, through the epilogue.
pub fn linear(
    x: &[i32],
    zero_point: i32,
    w: &[i32],
    k: usize,
    epilogue: &Epilogue,
    out: Requant,
) -> Vec<f64> {
    let (batch, n) = (x.len() / k, w.len() / k);
    let mut y = Vec::with_capacity(batch * n);
    for r in 0..batch {
        for c in 0..n {
            let acc: i64 = (0..k)
                .map(|i| i64::from(x[r * k + i] - zero_point) * i64::from(w[c * k + i]))
                .sum();
            y.push(epilogue.apply(c, acc, out));
        }
    }
    y
}

/// A convolution's geometry: square kernel, stride, zero padding (a real zero: the input's zero
/// point) and groups (1, or the channel count for a depthwise convolution).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Padding on each side.
    pub padding: usize,
}

impl Window {
    /// Whether the window fits a padded `height × width` map at least once (a positive
    /// kernel and stride too): the condition for [`Window::out`].
    pub fn fits(&self, height: usize, width: usize) -> bool {
        self.kernel > 0
            && self.stride > 0
            && height + 2 * self.padding >= self.kernel
            && width + 2 * self.padding >= self.kernel
    }

    /// The output side for an input side (the window must [`fit`](Window::fits)).
    pub fn out(&self, side: usize) -> usize {
        (side + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// The input coordinate of output `o`'s tap `t`, if it is inside `side`.
    fn tap(&self, o: usize, t: usize, side: usize) -> Option<usize> {
        (o * self.stride + t)
            .checked_sub(self.padding)
            .filter(|&i| i < side)
    }
}

/// A grouped convolution of `x [n, c, h, w]` (grid values) by `w [o, c / groups, k, k]`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    x: &[i32],
    [n, c, h, wd]: [usize; 4],
    zero_point: i32,
    w: &[i32],
    out_channels: usize,
    groups: usize,
    window: Window,
    epilogue: &Epilogue,
    out: Requant,
) -> Vec<f64> {
    let (oh, ow, k) = (window.out(h), window.out(wd), window.kernel);
    let (cg, og) = (c / groups, out_channels / groups);
    let mut y = Vec::with_capacity(n * out_channels * oh * ow);
    for b in 0..n {
        for o in 0..out_channels {
            let g = o / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0i64;
                    for ci in 0..cg {
                        for ky in 0..k {
                            for kx in 0..k {
                                let q = match (window.tap(oy, ky, h), window.tap(ox, kx, wd)) {
                                    (Some(iy), Some(ix)) => {
                                        x[((b * c + g * cg + ci) * h + iy) * wd + ix]
                                    }
                                    _ => zero_point,
                                };
                                let wv = w[((o * cg + ci) * k + ky) * k + kx];
                                acc += i64::from(q - zero_point) * i64::from(wv);
                            }
                        }
                    }
                    y.push(epilogue.apply(o, acc, out));
                }
            }
        }
    }
    y
}

/// Max pooling of grid values (padding never wins).
pub fn max_pool(x: &[i32], [n, c, h, w]: [usize; 4], window: Window) -> Vec<i32> {
    let (oh, ow, k) = (window.out(h), window.out(w), window.kernel);
    let mut y = Vec::with_capacity(n * c * oh * ow);
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let best = (0..k * k)
                    .filter_map(|t| {
                        let iy = window.tap(oy, t / k, h)?;
                        let ix = window.tap(ox, t % k, w)?;
                        Some(x[(plane * h + iy) * w + ix])
                    })
                    .max()
                    .unwrap_or(0);
                y.push(best);
            }
        }
    }
    y
}

/// Each plane's mean, rounded half to even, on the same grid.
pub fn global_avg_pool(x: &[i32], pixels: usize) -> Vec<i32> {
    x.chunks(pixels)
        .map(|plane| {
            let sum: i64 = plane.iter().map(|&v| i64::from(v)).sum();
            (sum as f64 / pixels as f64).round_ties_even() as i32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_to_even_and_clamped() {
        assert_eq!(to_grid(2.5, 0, 0, 255), 2);
        assert_eq!(to_grid(3.5, 0, 0, 255), 4);
        assert_eq!(to_grid(-0.5, 10, 10, 255), 10);
        assert_eq!(to_grid(1e12, 0, 0, 255), 255);
        assert_eq!(global_avg_pool(&[1, 2, 2, 2], 4), vec![2]);
        assert_eq!(global_avg_pool(&[1, 2, 3, 4], 4), vec![2]);
        assert_eq!(global_avg_pool(&[3, 4, 3, 4], 4), vec![4]);
    }

    #[test]
    fn a_padded_tap_is_a_real_zero() {
        // A 3×3 kernel of ones over a 1×1 map padded by one: only the centre tap counts.
        let ep = Epilogue {
            multiplier: vec![1.0],
            bias: vec![0.0],
        };
        let window = Window {
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        let y = conv2d(
            &[9],
            [1, 1, 1, 1],
            7,
            &[1; 9],
            1,
            1,
            window,
            &ep,
            Requant::Float,
        );
        assert_eq!(y, vec![2.0]);
    }
}
