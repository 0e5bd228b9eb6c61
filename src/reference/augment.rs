//! f64 reference for `shaders/augment.wgsl`: a circular shift with an optional horizontal flip.

/// `y = flip?(roll(x, (dy, dx)))` on each `(h, w)` plane of `x`: `y(i, j) = r(i, W − 1 − j)`
/// when flipped, else `r(i, j)`, with `r(i, j) = x((i − dy) mod H, (j − dx) mod W)`
/// (`torch.roll` then `torch.flip(dims=(3,))`).
pub fn roll_flip(x: &[f64], [h, w]: [usize; 2], (dy, dx): (i64, i64), flip: bool) -> Vec<f64> {
    let wrap = |v: i64, n: usize| v.rem_euclid(n as i64) as usize;
    let mut y = vec![0.0; x.len()];
    for (p, plane) in x.chunks(h * w).enumerate() {
        for i in 0..h {
            for j in 0..w {
                let jj = if flip { w - 1 - j } else { j };
                let (si, sj) = (wrap(i as i64 - dy, h), wrap(jj as i64 - dx, w));
                y[p * h * w + i * w + j] = plane[si * w + sj];
            }
        }
    }
    y
}

/// The backward map of [`roll_flip`] (its inverse permutation): `dx = roll(flip?(dy), −shift)`.
pub fn roll_flip_backward(
    dy: &[f64],
    shape: [usize; 2],
    (sy, sx): (i64, i64),
    flip: bool,
) -> Vec<f64> {
    let unflipped = if flip {
        roll_flip(dy, shape, (0, 0), true)
    } else {
        dy.to_vec()
    };
    roll_flip(&unflipped, shape, (-sy, -sx), false)
}
