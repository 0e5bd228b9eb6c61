//! Response-based losses (`shaders/response.wgsl`): stability at large logits, DKD's
//! decomposition of KD, determinism.

use super::common::{data, gpu, labels, run_loss, scaled, up, widen};
use wgdistill::kernels::response;
use wgdistill::reference::response as cpu;
use wgdistill::reference::softmax::softmax_row;

#[test]
fn logits_of_magnitude_1e3_give_finite_losses_and_gradients() {
    let Some(gpu) = gpu() else { return };
    let (b, c) = (9, 17);
    let (s, t) = (scaled(b * c, 10, 1000.0), scaled(b * c, 11, 1000.0));
    let (ly, _) = labels(b, c);
    let (ts, tt, tl) = (
        up(gpu, &[b, c], &s),
        up(gpu, &[b, c], &t),
        gpu.upload(&[b], &ly).unwrap(),
    );
    for temperature in [0.5f32, 1.0, 4.0, 20.0] {
        for (name, plan) in [
            ("ce", response::ce(gpu, &ts, &tl).unwrap()),
            ("kd", response::kd(gpu, &ts, &tt, temperature).unwrap()),
            (
                "dkd",
                response::dkd(gpu, &ts, &tt, &tl, 1.0, 8.0, temperature).unwrap(),
            ),
        ] {
            let (loss, grad) = run_loss(gpu, plan);
            assert!(loss.is_finite(), "{name} T={temperature}: loss {loss}");
            assert!(
                grad.iter().all(|g| g.is_finite()),
                "{name} T={temperature}: gradient not finite"
            );
        }
    }
}

#[test]
fn kd_decomposes_into_tckd_and_weighted_nckd_per_sample() {
    let c = 9;
    for seed in 0..6 {
        let s: Vec<f64> = widen(&data(c, 40 + seed)).iter().map(|v| 4.0 * v).collect();
        let t: Vec<f64> = widen(&data(c, 50 + seed)).iter().map(|v| 4.0 * v).collect();
        let y = [(seed as usize * 5) % c];
        let temperature = 2.0;
        let kd = cpu::kd(&s, &t, c, temperature).loss;
        let tckd = cpu::dkd(&s, &t, &y, c, 1.0, 0.0, temperature).loss;
        let nckd = cpu::dkd(&s, &t, &y, c, 0.0, 1.0, temperature).loss;
        let pt = softmax_row(&t.iter().map(|v| v / temperature).collect::<Vec<_>>());
        let rhs = tckd + (1.0 - pt[y[0]]) * nckd;
        assert!(
            (kd - rhs).abs() <= 1e-12 * kd.abs().max(1.0),
            "seed {seed}: kd {kd} vs {rhs}"
        );
    }
}

/// A label outside the classes (which the op runner and the loader refuse before any launch)
/// makes the kernel's loss NaN, so a bad batch stops training as a divergence instead of
/// training on a wrong target; the NaN is built at run time (WGSL forbids it as a constant).
#[test]
fn a_label_outside_the_classes_gives_a_nan_loss() {
    let Some(gpu) = gpu() else { return };
    let (b, c) = (3, 5);
    let s = up(gpu, &[b, c], &data(b * c, 12));
    let t = up(gpu, &[b, c], &data(b * c, 13));
    let bad = gpu.upload(&[b], &[1i32, 7, 2]).unwrap();
    let (loss, _) = response::ce(gpu, &s, &bad).unwrap().run(gpu).unwrap();
    assert!(gpu.read::<f32>(&loss).unwrap()[0].is_nan());
    let (loss, _) = response::dkd(gpu, &s, &t, &bad, 1.0, 8.0, 4.0)
        .unwrap()
        .run(gpu)
        .unwrap();
    assert!(gpu.read::<f32>(&loss).unwrap()[0].is_nan());
    let good = gpu.upload(&[b], &[1i32, 4, 2]).unwrap();
    let (loss, _) = response::ce(gpu, &s, &good).unwrap().run(gpu).unwrap();
    assert!(gpu.read::<f32>(&loss).unwrap()[0].is_finite());
}
