//! Optimizer updates (`shaders/optimizer.wgsl`) over several steps, as PyTorch's rules give them.

use super::common::{data, gpu, up, widen};
use wgdistill::gpu::{DType, Gpu, Tensor};
use wgdistill::kernels::optimizer;
use wgdistill::reference::allclose;
use wgdistill::reference::optimizer as cpu_optim;

fn step_counter(gpu: &Gpu) -> Tensor {
    gpu.zeros(&[1], DType::U32).unwrap()
}

#[test]
fn sgd_matches_pytorch_rules_over_several_steps() {
    let Some(gpu) = gpu() else { return };
    // 1031 elements take the one-per-lane kernel, 1032 the vec4 one.
    for (n, (momentum, dampening, wd, nesterov)) in [1031, 1032].into_iter().flat_map(|n| {
        [
            (0.0, 0.0, 0.0, false),
            (0.9, 0.0, 5e-4, false),
            (0.9, 0.1, 1e-2, true),
        ]
        .map(|c| (n, c))
    }) {
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
            .unwrap_or_else(|e| panic!("sgd n={n} m={momentum} nesterov={nesterov}: {e}"));
        assert_eq!(gpu.read::<u32>(&step).unwrap(), vec![4]);
    }
}

#[test]
fn adamw_matches_pytorch_rules_over_several_steps() {
    let Some(gpu) = gpu() else { return };
    // 777 elements take the one-per-lane kernel, 780 the vec4 one.
    for n in [777, 780] {
        adamw_steps(gpu, n);
    }
}

fn adamw_steps(gpu: &Gpu, n: usize) {
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
    allclose(&gpu.read::<f32>(&tp).unwrap(), &p, 2e-6, 1e-7)
        .unwrap_or_else(|e| panic!("adamw n={n}: {e}"));
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
