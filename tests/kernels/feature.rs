//! Feature-based losses (`shaders/feature.wgsl`): the properties their definitions promise.

use super::common::{data, gpu, run_loss, up};
use wgdistill::kernels::feature;

/// Attention maps are normalised, so scaling a student's map by a positive constant leaves the
/// loss as it is (and the gradient scaled by its inverse).
#[test]
fn attention_transfer_ignores_the_scale_of_a_map() {
    let Some(gpu) = gpu() else { return };
    let (b, cs, ct, h, w) = (3, 5, 7, 6, 5);
    let s = data(b * cs * h * w, 1);
    let t = data(b * ct * h * w, 2);
    let doubled: Vec<f32> = s.iter().map(|v| 2.0 * v).collect();
    let tt = up(gpu, &[b, ct, h, w], &t);
    for p in [1.0, 2.0, 4.0] {
        let (l1, g1) = run_loss(
            gpu,
            feature::at(gpu, &up(gpu, &[b, cs, h, w], &s), &tt, p).unwrap(),
        );
        let (l2, g2) = run_loss(
            gpu,
            feature::at(gpu, &up(gpu, &[b, cs, h, w], &doubled), &tt, p).unwrap(),
        );
        assert!(
            l1 > 0.0 && (l1 - l2).abs() <= 1e-5 * l1,
            "p={p}: {l1} vs {l2}"
        );
        for (a, b) in g1.iter().zip(&g2) {
            assert!(
                (a - 2.0 * b).abs() <= 1e-4 * a.abs().max(1e-6),
                "p={p}: {a} vs 2·{b}"
            );
        }
    }
}

/// A hint toward the student's own values costs nothing and pulls nowhere.
#[test]
fn a_hint_toward_itself_is_zero() {
    let Some(gpu) = gpu() else { return };
    let s = data(2 * 3 * 4 * 5, 3);
    let ts = up(gpu, &[2, 3, 4, 5], &s);
    let (loss, grad) = run_loss(gpu, feature::hint(gpu, &ts, &ts).unwrap());
    assert_eq!(loss, 0.0);
    assert!(grad.iter().all(|&g| g == 0.0));
}
