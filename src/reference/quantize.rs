//! f64 reference for `shaders/quantize.wgsl`: the moving-average min/max observer with its
//! scale and zero point, fake quantisation and its straight-through gradient, as PyTorch's
//! `FakeQuantize` defines them.

/// An integer grid: `[qmin, qmax]`, symmetric (zero point 0, or 128 for an unsigned range) or
/// affine (the zero point places 0 exactly on the grid).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    /// The smallest integer.
    pub qmin: i32,
    /// The largest integer.
    pub qmax: i32,
    /// Symmetric about 0.
    pub symmetric: bool,
}

/// f32's machine epsilon: the smallest scale an observer gives (PyTorch's `eps`).
pub const EPS: f64 = f32::EPSILON as f64;

/// The channel of element `i`: `(i / inner) % channels`.
pub fn channel(i: usize, channels: usize, inner: usize) -> usize {
    (i / inner) % channels
}

/// Updates `range` (`[min, max]` per channel; min > max for a channel that has seen nothing)
/// with `x`'s per-channel extremes by a moving average of constant `averaging`, and returns
/// `[scale, zero point]` per channel.
pub fn observe(
    x: &[f64],
    channels: usize,
    inner: usize,
    range: &mut [f64],
    averaging: f64,
    grid: Grid,
) -> Vec<f64> {
    let mut qparams = vec![0.0; 2 * channels];
    for c in 0..channels {
        let values = x
            .iter()
            .enumerate()
            .filter(|(i, _)| channel(*i, channels, inner) == c)
            .map(|(_, v)| *v);
        let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        let (old_lo, old_hi) = (range[2 * c], range[2 * c + 1]);
        let (lo, hi) = if old_lo <= old_hi {
            (
                old_lo + averaging * (lo - old_lo),
                old_hi + averaging * (hi - old_hi),
            )
        } else {
            (lo, hi)
        };
        range[2 * c] = lo;
        range[2 * c + 1] = hi;
        let (scale, zero_point) = qparams_of(lo, hi, grid);
        qparams[2 * c] = scale;
        qparams[2 * c + 1] = zero_point;
    }
    qparams
}

/// The scale and zero point of the range `[lo, hi]` (widened to hold 0) on `grid`.
pub fn qparams_of(lo: f64, hi: f64, grid: Grid) -> (f64, f64) {
    let (min_neg, max_pos) = (lo.min(0.0), hi.max(0.0));
    let levels = f64::from(grid.qmax - grid.qmin);
    if grid.symmetric {
        let scale = (max_pos.max(-min_neg) / (levels / 2.0)).max(EPS);
        (scale, if grid.qmin >= 0 { 128.0 } else { 0.0 })
    } else {
        let scale = ((max_pos - min_neg) / levels).max(EPS);
        let zero_point = f64::from(grid.qmin) - (min_neg / scale).round_ties_even();
        (
            scale,
            zero_point.clamp(f64::from(grid.qmin), f64::from(grid.qmax)),
        )
    }
}

/// `round(x / scale) + zero point` (half to even), before clamping.
pub fn grid_point(x: f64, scale: f64, zero_point: f64) -> f64 {
    (x * (1.0 / scale)).round_ties_even() + zero_point
}

/// `(clamp(round(x / scale) + zp, qmin, qmax) − zp) · scale` per element.
pub fn fake_quant(
    x: &[f64],
    channels: usize,
    inner: usize,
    qparams: &[f64],
    grid: Grid,
) -> Vec<f64> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = channel(i, channels, inner);
            let (scale, zero_point) = (qparams[2 * c], qparams[2 * c + 1]);
            let q =
                grid_point(v, scale, zero_point).clamp(f64::from(grid.qmin), f64::from(grid.qmax));
            (q - zero_point) * scale
        })
        .collect()
}

/// The straight-through estimator: `dy` where the grid point is inside `[qmin, qmax]`, else 0.
pub fn fake_quant_grad(
    x: &[f64],
    channels: usize,
    inner: usize,
    qparams: &[f64],
    grid: Grid,
    dy: &[f64],
) -> Vec<f64> {
    x.iter()
        .zip(dy)
        .enumerate()
        .map(|(i, (&v, &g))| {
            let c = channel(i, channels, inner);
            let q = grid_point(v, qparams[2 * c], qparams[2 * c + 1]);
            if q >= f64::from(grid.qmin) && q <= f64::from(grid.qmax) {
                g
            } else {
                0.0
            }
        })
        .collect()
}
