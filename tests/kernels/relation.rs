//! Relation-based losses (`shaders/relation.wgsl`) at sizes the naive forms could not hold.

use super::common::{data, gpu, run_loss, up};
use wgdistill::kernels::relation;

#[test]
fn rkd_angle_runs_at_batch_256_and_width_2048() {
    let Some(gpu) = gpu() else { return };
    let (b, d) = (256, 2048);
    let (ts, tt) = (
        up(gpu, &[b, d], &data(b * d, 16)),
        up(gpu, &[b, d], &data(b * d, 17)),
    );
    let (loss, grad) = run_loss(gpu, relation::rkd_angle(gpu, &ts, &tt).unwrap());
    assert!(loss.is_finite() && loss > 0.0, "{loss}");
    assert_eq!(grad.len(), b * d);
    assert!(grad.iter().all(|g| g.is_finite()));
}
