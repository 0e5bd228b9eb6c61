//! f64 reference for `shaders/reduce.wgsl`: reductions over one axis.

/// Sum, mean or max over `axis` of a row-major tensor of `shape`.
pub fn reduce_axis(x: &[f64], shape: &[usize], axis: usize, op: &str) -> Vec<f64> {
    let outer: usize = shape[..axis].iter().product();
    let len = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let vals = (0..len).map(|l| x[(o * len + l) * inner + i]);
            out.push(match op {
                "max" => vals.fold(f64::NEG_INFINITY, f64::max),
                "mean" => vals.sum::<f64>() / len as f64,
                _ => vals.sum(),
            });
        }
    }
    out
}
