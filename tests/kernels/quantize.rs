//! Fake quantisation (`shaders/quantize.wgsl`): the observer's edge cases, which the
//! catalogue's random ranges do not reach.

use super::common::{gpu, up};
use wgdistill::kernels::quantize::{INT8_SYMMETRIC, Quantizer, UINT8_AFFINE};
use wgdistill::reference::quantize::{EPS, Grid};

/// Observes `x` once on a fresh quantizer and returns (range, qparams).
fn observe_once(x: &[f32], grid: Grid) -> Option<(Vec<f32>, Vec<f32>)> {
    let gpu = gpu()?;
    let q = Quantizer::new(&[x.len()], None, grid, 0.01).unwrap();
    let t = up(gpu, &[x.len()], x);
    let range = q.unobserved(gpu).unwrap();
    let qparams = gpu.empty(&[1, 2], wgdistill::gpu::DType::F32).unwrap();
    gpu.execute(&[q.observe(gpu, &t, &range, &qparams).unwrap()])
        .unwrap();
    Some((gpu.read(&range).unwrap(), gpu.read(&qparams).unwrap()))
}

#[test]
fn an_observer_widens_its_range_to_hold_zero_and_never_gives_a_zero_scale() {
    // All positive: the affine grid still starts at 0 (zero point 0), scale 3/255.
    let Some((range, qp)) = observe_once(&[1.0, 2.0, 3.0], UINT8_AFFINE) else {
        return;
    };
    assert_eq!(range, [1.0, 3.0], "the range itself is what was seen");
    assert_eq!(qp[1], 0.0);
    assert!((qp[0] - 3.0 / 255.0).abs() < 1e-9);
    // All negative on the symmetric grid: |min| sets the scale, zero point 0.
    let (_, qp) = observe_once(&[-2.55, -1.0], INT8_SYMMETRIC).unwrap();
    assert!(
        (qp[0] - 2.55 / 127.5).abs() < 1e-7 && qp[1] == 0.0,
        "{qp:?}"
    );
    // A symmetric unsigned grid puts the zero point at 128, as PyTorch does.
    let symmetric_u8 = Grid {
        symmetric: true,
        ..UINT8_AFFINE
    };
    let (_, qp) = observe_once(&[-1.0, 0.5], symmetric_u8).unwrap();
    assert_eq!(qp[1], 128.0);
    // Nothing but zeros: the smallest scale, not a division by zero.
    let (_, qp) = observe_once(&[0.0; 5], UINT8_AFFINE).unwrap();
    assert_eq!(qp, [EPS as f32, 0.0]);
}

#[test]
fn quantizers_refuse_empty_grids_bad_averaging_and_missing_axes() {
    let refused = |shape: &[usize], axis, grid, averaging| {
        Quantizer::new(shape, axis, grid, averaging)
            .unwrap_err()
            .to_string()
    };
    let empty = Grid {
        qmin: 5,
        qmax: 5,
        symmetric: false,
    };
    assert!(refused(&[4], None, empty, 0.1).contains("empty"));
    assert!(refused(&[4], None, UINT8_AFFINE, 0.0).contains("(0, 1]"));
    assert!(refused(&[4], None, UINT8_AFFINE, f32::NAN).contains("(0, 1]"));
    assert!(refused(&[4, 3], Some(2), UINT8_AFFINE, 0.1).contains("axis 2"));
    assert!(refused(&[0, 3], None, UINT8_AFFINE, 0.1).contains("cannot quantise"));
}
