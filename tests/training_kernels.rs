//! Softmax, dropout and optimizer kernels against their f64 references.

mod common;

use common::{assert_close_f64, data, finite_difference, gpu, widen};
use wgdistill::gpu::{DType, Gpu, Tensor};
use wgdistill::kernels::{dropout, optimizer, softmax};
use wgdistill::reference::{allclose, optim as cpu_optim, softmax as cpu_softmax};

fn up(gpu: &Gpu, shape: &[usize], v: &[f32]) -> Tensor {
    gpu.upload(shape, v).unwrap()
}

fn run(gpu: &Gpu, (d, out): (wgdistill::gpu::Dispatch, Tensor)) -> Vec<f32> {
    gpu.execute(&[d]).unwrap();
    gpu.read::<f32>(&out).unwrap()
}

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
        let keep = cpu_optim::dropout_keeps(42, i as u32, threshold);
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

fn step_counter(gpu: &Gpu) -> Tensor {
    gpu.zeros(&[1], DType::U32).unwrap()
}

#[test]
fn sgd_matches_pytorch_rules_over_several_steps() {
    let Some(gpu) = gpu() else { return };
    let n = 1031;
    for (momentum, dampening, wd, nesterov) in [
        (0.0, 0.0, 0.0, false),
        (0.9, 0.0, 5e-4, false),
        (0.9, 0.1, 1e-2, true),
    ] {
        let s = optimizer::Sgd {
            lr: 0.1,
            momentum,
            dampening,
            weight_decay: wd,
            nesterov,
        };
        let mut p = widen(&data(n, 6));
        let mut buf = vec![0.0; n];
        let tp = up(gpu, &[n], &data(n, 6));
        let tbuf = gpu.zeros(&[n], DType::F32).unwrap();
        let step = step_counter(gpu);
        for k in 0..4u32 {
            let g = data(n, 10 + u64::from(k));
            let tg = up(gpu, &[n], &g);
            let plan = [
                optimizer::advance_step(gpu, &step).unwrap(),
                optimizer::sgd(gpu, &s, &tp, &tg, &tbuf, &step).unwrap(),
            ];
            gpu.execute(&plan).unwrap();
            cpu_optim::sgd(
                &mut p,
                &widen(&g),
                &mut buf,
                k + 1,
                0.1,
                f64::from(momentum),
                f64::from(dampening),
                f64::from(wd),
                nesterov,
            );
        }
        allclose(&gpu.read::<f32>(&tp).unwrap(), &p, 1e-5, 1e-6)
            .unwrap_or_else(|e| panic!("sgd m={momentum} nesterov={nesterov}: {e}"));
        assert_eq!(gpu.read::<u32>(&step).unwrap(), vec![4]);
    }
}

#[test]
fn adamw_matches_pytorch_rules_over_several_steps() {
    let Some(gpu) = gpu() else { return };
    let n = 777;
    let s = optimizer::AdamW {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut p = widen(&data(n, 20));
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    let tp = up(gpu, &[n], &data(n, 20));
    let (tm, tv) = (
        gpu.zeros(&[n], DType::F32).unwrap(),
        gpu.zeros(&[n], DType::F32).unwrap(),
    );
    let step = step_counter(gpu);
    for k in 0..5u32 {
        let g = data(n, 30 + u64::from(k));
        let tg = up(gpu, &[n], &g);
        let plan = [
            optimizer::advance_step(gpu, &step).unwrap(),
            optimizer::adamw(gpu, &s, &tp, &tg, &tm, &tv, &step).unwrap(),
        ];
        gpu.execute(&plan).unwrap();
        cpu_optim::adamw(
            &mut p,
            &widen(&g),
            &mut m,
            &mut v,
            k + 1,
            1e-2,
            0.9,
            0.999,
            1e-8,
            0.01,
        );
    }
    allclose(&gpu.read::<f32>(&tp).unwrap(), &p, 2e-6, 1e-7).unwrap();
}

#[test]
fn gradient_clipping_matches_clip_grad_norm() {
    let Some(gpu) = gpu() else { return };
    let n = 5000;
    for max_norm in [0.5f32, 1e6] {
        let g = data(n, 40);
        let tg = up(gpu, &[n], &g);
        let (plan, norm_sq) = optimizer::clip_grad_norm(gpu, &tg, max_norm).unwrap();
        gpu.execute(&plan).unwrap();
        let mut want = widen(&g);
        let norm = cpu_optim::clip_grad_norm(&mut want, f64::from(max_norm));
        allclose(&gpu.read::<f32>(&tg).unwrap(), &want, 1e-5, 1e-7).unwrap();
        allclose(
            &gpu.read::<f32>(&norm_sq).unwrap(),
            &[norm * norm],
            1e-5,
            1e-7,
        )
        .unwrap();
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
            let keep = cpu_optim::dropout_step_keeps(5, k, i as u32, threshold);
            let want = if keep { xv[i] / 0.6 } else { 0.0 };
            assert!(
                (got[i] - want).abs() <= 1e-6 * want.abs(),
                "step {k} element {i}: {} vs {want}",
                got[i]
            );
        }
    }
}
