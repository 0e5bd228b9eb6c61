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
    gpu.execute(&q.observe(gpu, &t, &range, &qparams).unwrap())
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

#[test]
fn the_two_pass_observer_sees_every_chunk_to_the_last_element() {
    let Some(gpu) = gpu() else { return };
    // 3 chunks of 4,096 and a short fourth, per tensor: the extremes in the second and the last.
    let n = 3 * 4096 + 5;
    let mut x = vec![0.25f32; n];
    x[4100] = -3.0;
    x[n - 1] = 5.0;
    let q = Quantizer::new(&[n], None, UINT8_AFFINE, 0.01).unwrap();
    let t = up(gpu, &[n], &x);
    let range = q.unobserved(gpu).unwrap();
    let qparams = gpu.empty(&[1, 2], wgdistill::gpu::DType::F32).unwrap();
    let plan = q.observe(gpu, &t, &range, &qparams).unwrap();
    assert_eq!(plan.len(), 2, "a tensor of {n} takes the two-pass observer");
    gpu.execute(&plan).unwrap();
    assert_eq!(gpu.read::<f32>(&range).unwrap(), [-3.0, 5.0]);
    // Per channel (axis 1 of [2, 2, 5000]): channel 1's extremes at the far ends of its blocks.
    let shape = [2, 2, 5000];
    let mut x = vec![0.5f32; 20_000];
    x[5000] = -1.0; // sample 0, channel 1, first element
    x[19_999] = 2.0; // sample 1, channel 1, last element
    x[0] = -7.0; // channel 0
    let q = Quantizer::new(&shape, Some(1), UINT8_AFFINE, 0.01).unwrap();
    let t = up(gpu, &shape, &x);
    let range = q.unobserved(gpu).unwrap();
    let qparams = gpu.empty(&[2, 2], wgdistill::gpu::DType::F32).unwrap();
    let plan = q.observe(gpu, &t, &range, &qparams).unwrap();
    assert_eq!(plan.len(), 2);
    gpu.execute(&plan).unwrap();
    assert_eq!(gpu.read::<f32>(&range).unwrap(), [-7.0, 0.5, -1.0, 2.0]);
}
