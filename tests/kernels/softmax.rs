//! Softmax, log-softmax and the teachers' mixture (`shaders/softmax.wgsl`).

use super::common::{assert_close_f64, data, finite_difference, gpu, run, up, widen};
use wgdistill::kernels::softmax;
use wgdistill::reference::allclose;
use wgdistill::reference::softmax as cpu_softmax;

#[test]
fn softmax_and_log_softmax_match_reference_forward_and_backward() {
    let Some(gpu) = gpu() else { return };
    for (rows, cols) in [(1, 1), (7, 33), (129, 10), (3, 1000)] {
        let xv: Vec<f32> = data(rows * cols, 1).iter().map(|v| 8.0 * v).collect();
        let dyv = data(rows * cols, 2);
        let x = up(gpu, &[rows, cols], &xv);
        let dy = up(gpu, &[rows, cols], &dyv);
        for log in [false, true] {
            for t in [0.5f32, 1.0, 4.0] {
                let want_y = cpu_softmax::forward(&widen(&xv), cols, f64::from(t), log);
                let (fd, y) = softmax::forward(gpu, &x, t, log).unwrap();
                gpu.execute(&[fd]).unwrap();
                let got_y = gpu.read::<f32>(&y).unwrap();
                allclose(&got_y, &want_y, 1e-5, 1e-6)
                    .unwrap_or_else(|e| panic!("log={log} T={t} {rows}x{cols}: {e}"));
                let want_dx = cpu_softmax::backward(&want_y, &widen(&dyv), cols, f64::from(t), log);
                let got_dx = run(gpu, softmax::backward(gpu, &y, &dy, t, log).unwrap());
                allclose(&got_dx, &want_dx, 1e-4, 1e-5)
                    .unwrap_or_else(|e| panic!("backward log={log} T={t}: {e}"));
            }
        }
    }
}

#[test]
fn softmax_reference_backward_matches_finite_differences() {
    let cols = 6;
    let x = widen(&data(2 * cols, 3));
    let r = widen(&data(2 * cols, 4));
    for log in [false, true] {
        for t in [0.5, 2.0] {
            let y = cpu_softmax::forward(&x, cols, t, log);
            let analytic = cpu_softmax::backward(&y, &r, cols, t, log);
            let numeric = finite_difference(&x, 1e-6, |x| {
                cpu_softmax::forward(x, cols, t, log)
                    .iter()
                    .zip(&r)
                    .map(|(a, b)| a * b)
                    .sum()
            });
            assert_close_f64(&format!("log={log} T={t}"), &analytic, &numeric, 1e-6, 1e-8);
        }
    }
}

#[test]
fn mixture_logits_give_the_weighted_mixture_of_softened_teachers() {
    let Some(gpu) = gpu() else { return };
    let (rows, cols, t) = (7, 13, 3.0f32);
    let (a, b) = (data(rows * cols, 50), data(rows * cols, 51));
    let a: Vec<f32> = a.iter().map(|v| 5.0 * v).collect();
    let (ta, tb) = (up(gpu, &[rows, cols], &a), up(gpu, &[rows, cols], &b));
    let (plan, out) = softmax::mixture_logits(gpu, &[&ta, &tb], &[0.25, 0.75], t).unwrap();
    let bound = gpu.bind_plan(&plan).unwrap();
    for _ in 0..2 {
        // Replayed twice: each replay starts afresh.
        let mut enc = gpu.encoder("mix");
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            bound.record(&mut pass);
        }
        gpu.submit(enc).unwrap();
        let got = gpu.read::<f32>(&out).unwrap();
        let pa = cpu_softmax::forward(&widen(&a), cols, f64::from(t), false);
        let pb = cpu_softmax::forward(&widen(&b), cols, f64::from(t), false);
        let want_mix: Vec<f64> = pa
            .iter()
            .zip(&pb)
            .map(|(x, y)| 0.25 * x + 0.75 * y)
            .collect();
        let got_mix = cpu_softmax::forward(&widen(&got), cols, f64::from(t), false);
        let got_mix: Vec<f32> = got_mix.iter().map(|&v| v as f32).collect();
        allclose(&got_mix, &want_mix, 1e-5, 1e-7).unwrap();
    }
    assert!(softmax::mixture_logits(gpu, &[&ta, &tb], &[0.5, 0.6], t).is_err());
}
