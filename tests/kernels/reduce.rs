//! Reductions (`shaders/reduce.wgsl`).

use super::common::{data, gpu, run, up, widen};
use wgdistill::kernels::reduce::{AxisOp, reduce_axis};
use wgdistill::reference::allclose;
use wgdistill::reference::reduce as cpu;

#[test]
fn axis_reductions_match_reference() {
    let Some(gpu) = gpu() else { return };
    let shape = [3, 5, 7];
    let xv = data(105, 8);
    let x = up(gpu, &shape, &xv);
    for axis in 0..3 {
        for (op, name) in [
            (AxisOp::Sum, "sum"),
            (AxisOp::Mean, "mean"),
            (AxisOp::Max, "max"),
        ] {
            let want = cpu::reduce_axis(&widen(&xv), &shape, axis, name);
            allclose(
                &run(gpu, reduce_axis(gpu, &x, axis, op).unwrap()),
                &want,
                1e-6,
                1e-6,
            )
            .unwrap_or_else(|e| panic!("{name} over axis {axis}: {e}"));
        }
    }
    assert!(reduce_axis(gpu, &x, 3, AxisOp::Sum).is_err());
}
