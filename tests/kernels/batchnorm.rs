//! Batch normalisation (`shaders/batchnorm.wgsl`) in training and evaluation, and its reference
//! backward.

use super::common::{assert_close_f64, data, finite_difference, gpu, read, up, widen};
use wgdistill::gpu::DType;
use wgdistill::kernels::batchnorm::{self, BatchNormState};
use wgdistill::reference::allclose;
use wgdistill::reference::batchnorm as cpu;

#[test]
fn batch_norm_matches_reference_in_training_and_evaluation() {
    let Some(gpu) = gpu() else { return };
    // Planes of 35 and 130 positions take the planar grid (more than one chunk of 64 for 130);
    // features and 3×3 maps the flat index. The last shape is a first CNN layer's batch
    // (100,352 values per channel, in 64 uneven chunks): a kernel that reduces a channel in one
    // invocation is cut short there by llvmpipe's 65,535-iteration loop limit.
    for shape in [
        vec![7usize, 5],
        vec![4, 3, 5, 7],
        vec![1, 2, 3, 3],
        vec![3, 2, 10, 13],
        vec![300, 2],
        vec![128, 3, 28, 28],
        // H·W a multiple of 4 (the vec4 kernels): planes of one quad, a last chunk shorter
        // than the others, and chunks of 129 values (an odd chunk: the scalar reductions).
        vec![300, 3, 2, 2],
        vec![70, 2, 4, 5],
        vec![2056, 2, 2, 2],
    ] {
        let (n, c) = (shape[0], shape[1]);
        let s: usize = shape[2..].iter().product();
        let xv: Vec<f32> = data(n * c * s, 14).iter().map(|v| 3.0 * v + 1.0).collect();
        let (gv, bv) = (data(c, 15), data(c, 16));
        let dyv = data(n * c * s, 17);
        let (x, gamma, beta, dy) = (
            up(gpu, &shape, &xv),
            up(gpu, &[c], &gv),
            up(gpu, &[c], &bv),
            up(gpu, &shape, &dyv),
        );
        let running_mean = gpu.zeros(&[c], DType::F32).unwrap();
        let running_var = up(gpu, &[c], &vec![1.0; c]);
        let st = BatchNormState {
            gamma: &gamma,
            beta: &beta,
            running_mean: &running_mean,
            running_var: &running_var,
            eps: 1e-5,
            momentum: 0.1,
        };
        let (want_y, mean, var) =
            cpu::batch_norm(&widen(&xv), n, c, s, &widen(&gv), &widen(&bv), 1e-5);
        let (plan, y, saved) = batchnorm::forward_train(gpu, &x, &st).unwrap();
        allclose(&read(gpu, &plan, &y), &want_y, 1e-4, 1e-5)
            .unwrap_or_else(|e| panic!("train {shape:?}: {e}"));
        let m = (n * s) as f64;
        let want_rm: Vec<f64> = mean.iter().map(|v| 0.1 * v).collect();
        let want_rv: Vec<f64> = var
            .iter()
            .map(|v| 0.9 + 0.1 * if m > 1.0 { v * m / (m - 1.0) } else { *v })
            .collect();
        allclose(
            &gpu.read::<f32>(&running_mean).unwrap(),
            &want_rm,
            1e-5,
            1e-6,
        )
        .unwrap();
        allclose(
            &gpu.read::<f32>(&running_var).unwrap(),
            &want_rv,
            1e-5,
            1e-6,
        )
        .unwrap();

        let (plan, g) = batchnorm::backward(gpu, &x, &dy, &st, &saved).unwrap();
        gpu.execute(&plan).unwrap();
        let (want_dx, want_dg, want_db) =
            cpu::batch_norm_backward(&widen(&xv), &widen(&dyv), n, c, s, &widen(&gv), 1e-5);
        for (name, t, want) in [
            ("dx", &g.dx, &want_dx),
            ("dgamma", &g.dgamma, &want_dg),
            ("dbeta", &g.dbeta, &want_db),
        ] {
            allclose(&gpu.read::<f32>(t).unwrap(), want, 1e-3, 1e-5)
                .unwrap_or_else(|e| panic!("{name} {shape:?}: {e}"));
        }

        let (d, y) = batchnorm::forward_eval(gpu, &x, &st).unwrap();
        let rm = gpu.read::<f32>(&running_mean).unwrap();
        let rv = gpu.read::<f32>(&running_var).unwrap();
        let want: Vec<f64> = (0..xv.len())
            .map(|k| {
                let ch = (k / s) % c;
                (f64::from(xv[k]) - f64::from(rm[ch])) / (f64::from(rv[ch]) + 1e-5).sqrt()
                    * f64::from(gv[ch])
                    + f64::from(bv[ch])
            })
            .collect();
        allclose(&read(gpu, &[d], &y), &want, 1e-5, 1e-6)
            .unwrap_or_else(|e| panic!("eval {shape:?}: {e}"));

        // With the ReLU fused into the normalising pass (after the checks above: a training
        // pass moves the running statistics again).
        let relu = |v: &[f64]| v.iter().map(|v| v.max(0.0)).collect::<Vec<f64>>();
        let (d, y) = batchnorm::forward_eval_fused(gpu, &x, &st, true).unwrap();
        allclose(&read(gpu, &[d], &y), &relu(&want), 1e-5, 1e-6)
            .unwrap_or_else(|e| panic!("eval + relu {shape:?}: {e}"));
        let (plan, y, _) = batchnorm::forward_train_fused(gpu, &x, &st, true).unwrap();
        let got = read(gpu, &plan, &y);
        allclose(&got, &relu(&want_y), 1e-4, 1e-5)
            .unwrap_or_else(|e| panic!("train + relu {shape:?}: {e}"));
        assert!(
            got.contains(&0.0) && got.iter().any(|&v| v > 0.0),
            "{shape:?}"
        );
    }
}

#[test]
fn batch_norm_reference_backward_matches_finite_differences() {
    let (n, c, s) = (3, 2, 4);
    let x = widen(&data(n * c * s, 18));
    let (g, b) = (widen(&data(c, 19)), widen(&data(c, 20)));
    let r = widen(&data(n * c * s, 21));
    let loss = |x: &[f64], g: &[f64], b: &[f64]| -> f64 {
        cpu::batch_norm(x, n, c, s, g, b, 1e-5)
            .0
            .iter()
            .zip(&r)
            .map(|(a, b)| a * b)
            .sum()
    };
    let (dx, dg, db) = cpu::batch_norm_backward(&x, &r, n, c, s, &g, 1e-5);
    assert_close_f64(
        "dx",
        &dx,
        &finite_difference(&x, 1e-6, |x| loss(x, &g, &b)),
        1e-5,
        1e-7,
    );
    assert_close_f64(
        "dgamma",
        &dg,
        &finite_difference(&g, 1e-6, |g| loss(&x, g, &b)),
        1e-5,
        1e-7,
    );
    assert_close_f64(
        "dbeta",
        &db,
        &finite_difference(&b, 1e-6, |b| loss(&x, &g, b)),
        1e-5,
        1e-7,
    );
}
