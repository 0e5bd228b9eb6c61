//! Differentiable augmentation (`shaders/augment.wgsl`): DeepInversion's random jitter (a
//! circular shift) and horizontal flip of the images it optimises, forward and backward from one
//! gather kernel. A compiled step draws a new shift each iteration by rewriting the launch's
//! uniform ([`RollFlip::params`]), creating nothing.

use crate::Result;
use crate::catalogue::{
    Case, Prepared, Suite, Work, memory_case, sample_f64, sample_tensor, stream_len,
};
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::reference::augment as cpu;

/// `out(i, j) = x((i + row) mod H, flip ? (base − j) mod W : (j + base) mod W)` per plane.
pub const ROLL_FLIP: KernelSpec = KernelSpec::new::<Params>(
    "augment",
    "roll_flip",
    &[Binding::Uniform, Binding::ReadOnly, Binding::Output],
);

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[ROLL_FLIP];

/// The kernel's uniform.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    planes: u32,
    h: u32,
    w: u32,
    row: u32,
    base: u32,
    flip: u32,
}

/// A shift by `(dy, dx)` pixels (circular), then a horizontal flip when `flip`: `torch.roll`
/// then `torch.flip(dims=(3,))`, as NVlabs' DeepInversion jitters its images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RollFlip {
    /// Rows and columns to shift by (any sign).
    pub shift: (i64, i64),
    /// Flip left–right after the shift.
    pub flip: bool,
}

impl RollFlip {
    /// No change.
    pub const IDENTITY: RollFlip = RollFlip {
        shift: (0, 0),
        flip: false,
    };

    /// The uniform of the forward map on `x` (N, C, H, W), or of its inverse (the backward
    /// pass) when `inverse`.
    pub fn params(&self, x: &Tensor, inverse: bool) -> Result<Params> {
        let &[n, c, h, w] = x.shape() else {
            return Err(shape_error(
                "roll_flip",
                format!("needs (N, C, H, W) images, got {:?}", x.shape()),
            ));
        };
        x.expect("roll_flip", "x", DType::F32, x.shape())?;
        let count = |v: usize| {
            u32::try_from(v).map_err(|_| shape_error("roll_flip", "too many elements for u32"))
        };
        count(x.numel())?;
        let wrap = |v: i64, m: usize| v.rem_euclid(m as i64) as u32;
        let (dy, dx) = self.shift;
        // Forward: source row i − dy; source column (W − 1 − j) − dx flipped, j − dx not.
        // Inverse: source row i + dy; column (W − 1 − dx) − j flipped, j + dx not.
        let (row, base) = match (inverse, self.flip) {
            (false, false) => (wrap(-dy, h), wrap(-dx, w)),
            (false, true) => (wrap(-dy, h), wrap(w as i64 - 1 - dx, w)),
            (true, false) => (wrap(dy, h), wrap(dx, w)),
            (true, true) => (wrap(dy, h), wrap(w as i64 - 1 - dx, w)),
        };
        Ok(Params {
            planes: count(n * c)?,
            h: count(h)?,
            w: count(w)?,
            row,
            base,
            flip: u32::from(self.flip),
        })
    }
}

/// Prepares `roll_flip` of `x`, or with `inverse` its backward map (apply it to the gradient).
pub fn roll_flip(
    gpu: &Gpu,
    x: &Tensor,
    map: RollFlip,
    inverse: bool,
) -> Result<(Dispatch, Tensor)> {
    let params = map.params(x, inverse)?;
    let out = gpu.empty(x.shape(), DType::F32)?;
    Ok((
        gpu.dispatch_over(&ROLL_FLIP, &params, &[x, &out], x.numel())?,
        out,
    ))
}

/// The family's catalogue: shifts of both signs, beyond the size, with and without the flip, on
/// odd planes; and the backward map.
pub fn cases(_: &Gpu, suite: Suite) -> Vec<Case> {
    if let Suite::Bench { .. } = suite {
        let planes = (stream_len(suite) / (28 * 28)).max(1);
        return vec![memory_case(
            suite,
            "roll_flip",
            format!("[{planes}, 1, 28, 28]"),
            8.0 * (planes * 784) as f64,
            move |gpu| {
                let x = sample_tensor(gpu, &[planes, 1, 28, 28], 50)?;
                let map = RollFlip {
                    shift: (2, -3),
                    flip: true,
                };
                let (d, y) = roll_flip(gpu, &x, map, false)?;
                Ok(Prepared::new(vec![d], vec![y]))
            },
        )];
    }
    let mut cases = Vec::new();
    let shape = [3usize, 2, 5, 7];
    let n: usize = shape.iter().product();
    for (shift, flip, inverse) in [
        ((1i64, 2i64), false, false),
        ((-2, 3), true, false),
        ((6, -9), true, false),
        ((-2, 3), true, true),
        ((4, 1), false, true),
    ] {
        let map = RollFlip { shift, flip };
        let name = if inverse {
            "roll_flip backward"
        } else {
            "roll_flip"
        };
        cases.push(
            Case::new(
                format!("{name} (shift {shift:?}, flip {flip})"),
                format!("{shape:?}"),
                Work::Bytes(8.0 * n as f64),
                move |gpu| {
                    let (d, y) = roll_flip(gpu, &sample_tensor(gpu, &shape, 51)?, map, inverse)?;
                    Ok(Prepared::new(vec![d], vec![y]))
                },
            )
            .reference(move || {
                let x = sample_f64(n, 51);
                if inverse {
                    cpu::roll_flip_backward(&x, [5, 7], shift, flip)
                } else {
                    cpu::roll_flip(&x, [5, 7], shift, flip)
                }
            }),
        );
    }
    cases
}
