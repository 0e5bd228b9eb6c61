//! Dropout (`shaders/dropout.wgsl`): reproducible masks that match the reference.

use super::common::{data, gpu, run, up};
use wgdistill::gpu::DType;
use wgdistill::kernels::dropout;
use wgdistill::reference::dropout as cpu_dropout;

#[test]
fn dropout_is_reproducible_and_matches_its_reference_mask() {
    let Some(gpu) = gpu() else { return };
    let n = 10_007;
    let xv: Vec<f32> = data(n, 5).iter().map(|v| v + 2.0).collect();
    let x = up(gpu, &[n], &xv);
    let p = 0.3f32;
    let a = run(gpu, dropout::dropout(gpu, &x, p, 42).unwrap());
    let b = run(gpu, dropout::dropout(gpu, &x, p, 42).unwrap());
    let c = run(gpu, dropout::dropout(gpu, &x, p, 43).unwrap());
    assert_eq!(a, b, "same seed, same mask");
    assert_ne!(a, c, "another seed, another mask");
    let threshold = dropout::threshold(p);
    let mut kept = 0;
    for i in 0..n {
        let keep = cpu_dropout::dropout_keeps(42, i as u32, threshold);
        kept += usize::from(keep);
        let want = if keep { xv[i] / (1.0 - p) } else { 0.0 };
        assert!(
            (a[i] - want).abs() <= 1e-6 * want.abs(),
            "element {i}: {} vs {want}",
            a[i]
        );
    }
    let rate = kept as f64 / n as f64;
    assert!((rate - 0.7).abs() < 0.02, "keep rate {rate}");
    // p = 0 keeps everything unscaled.
    assert_eq!(run(gpu, dropout::dropout(gpu, &x, 0.0, 7).unwrap()), xv);
    assert!(dropout::dropout(gpu, &x, 1.0, 7).is_err());
}

#[test]
fn step_seeded_dropout_matches_its_reference_mask() {
    let Some(gpu) = gpu() else { return };
    let n = 4099;
    let xv: Vec<f32> = data(n, 60).iter().map(|v| v + 2.0).collect();
    let x = up(gpu, &[n], &xv);
    let step = gpu.zeros(&[1], DType::U32).unwrap();
    let threshold = dropout::threshold(0.4);
    for k in [0u32, 1, 77] {
        gpu.write(&step, &[k]).unwrap();
        let got = run(gpu, dropout::dropout_step(gpu, &x, 0.4, 5, &step).unwrap());
        for i in 0..n {
            let keep = cpu_dropout::dropout_step_keeps(5, k, i as u32, threshold);
            let want = if keep { xv[i] / 0.6 } else { 0.0 };
            assert!(
                (got[i] - want).abs() <= 1e-6 * want.abs(),
                "step {k} element {i}: {} vs {want}",
                got[i]
            );
        }
    }
}
