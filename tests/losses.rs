//! The distillation losses on the GPU: every golden case through the op runner, the kernels
//! against the f64 references at other shapes, robustness, determinism and input errors.

mod common;

use std::collections::BTreeMap;

use common::{data, golden_cases, gpu, widen};
use wgdistill::gpu::{Gpu, Tensor};
use wgdistill::io::{HostTensor, TensorMap};
use wgdistill::kernels::losses::{self, LossPlan};
use wgdistill::reference::losses as cpu;
use wgdistill::{ops, reference};

fn check(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    reference::allclose(got, want, rtol, atol).unwrap_or_else(|e| panic!("{what}: {e}"));
}

#[test]
fn every_golden_case_passes_through_the_op_runner() {
    let Some(gpu) = gpu() else { return };
    for (case, input, expected) in golden_cases() {
        let out = ops::run(gpu, &case.op, &input, &case.attrs)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        for name in ["loss", "grad_student"] {
            let want = widen(expected[name].as_f32().unwrap());
            assert_eq!(
                out[name].shape, expected[name].shape,
                "{} {name} shape",
                case.name
            );
            check(
                &format!("{} {name}", case.name),
                out[name].as_f32().unwrap(),
                &want,
                case.rtol,
                case.atol,
            );
        }
    }
}

fn run(gpu: &Gpu, plan: LossPlan) -> (f32, Vec<f32>) {
    let (loss, grad) = plan.run(gpu).unwrap();
    (
        gpu.read::<f32>(&loss).unwrap()[0],
        gpu.read::<f32>(&grad).unwrap(),
    )
}

fn up(gpu: &Gpu, shape: &[usize], v: &[f32]) -> Tensor {
    gpu.upload(shape, v).unwrap()
}

fn scaled(n: usize, seed: u64, k: f32) -> Vec<f32> {
    data(n, seed).iter().map(|v| v * k).collect()
}

fn labels(b: usize, c: usize) -> (Vec<i32>, Vec<usize>) {
    let y: Vec<usize> = (0..b).map(|i| (i * 7 + 3) % c).collect();
    (y.iter().map(|&v| v as i32).collect(), y)
}

const RTOL: f64 = 2e-4;
const ATOL: f64 = 2e-6;

#[test]
fn response_losses_match_the_reference_at_odd_shapes() {
    let Some(gpu) = gpu() else { return };
    for (b, c) in [(1, 1), (7, 33), (33, 10), (129, 7), (5, 1000)] {
        let (s, t) = (scaled(b * c, 1, 5.0), scaled(b * c, 2, 5.0));
        let (ws, wt) = (widen(&s), widen(&t));
        let (ly, y) = labels(b, c);
        let (ts, tt, tl) = (
            up(gpu, &[b, c], &s),
            up(gpu, &[b, c], &t),
            gpu.upload(&[b], &ly).unwrap(),
        );
        let want = cpu::ce(&ws, &y, c);
        let (loss, grad) = run(gpu, losses::ce(gpu, &ts, &tl).unwrap());
        check(
            &format!("ce {b}x{c} loss"),
            &[loss],
            &[want.loss],
            RTOL,
            ATOL,
        );
        check(&format!("ce {b}x{c} grad"), &grad, &want.grad, RTOL, ATOL);
        for temperature in [0.5f32, 1.0, 4.0, 20.0] {
            let want = cpu::kd(&ws, &wt, c, f64::from(temperature));
            let (loss, grad) = run(gpu, losses::kd(gpu, &ts, &tt, temperature).unwrap());
            check(
                &format!("kd {b}x{c} T={temperature} loss"),
                &[loss],
                &[want.loss],
                RTOL,
                ATOL,
            );
            check(
                &format!("kd {b}x{c} T={temperature} grad"),
                &grad,
                &want.grad,
                RTOL,
                ATOL,
            );
            if c >= 2 {
                let want = cpu::dkd(&ws, &wt, &y, c, 1.0, 8.0, f64::from(temperature));
                let (loss, grad) = run(
                    gpu,
                    losses::dkd(gpu, &ts, &tt, &tl, 1.0, 8.0, temperature).unwrap(),
                );
                check(
                    &format!("dkd {b}x{c} T={temperature} loss"),
                    &[loss],
                    &[want.loss],
                    RTOL,
                    1e-5,
                );
                check(
                    &format!("dkd {b}x{c} T={temperature} grad"),
                    &grad,
                    &want.grad,
                    RTOL,
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn feature_losses_match_the_reference_at_odd_shapes() {
    let Some(gpu) = gpu() else { return };
    for (b, cs, ct, h, w) in [(1, 1, 1, 1, 1), (3, 5, 7, 3, 11), (7, 16, 3, 6, 6)] {
        let (s, t) = (data(b * cs * h * w, 3), data(b * ct * h * w, 4));
        let (ts, tt) = (up(gpu, &[b, cs, h, w], &s), up(gpu, &[b, ct, h, w], &t));
        for p in [1.0f32, 2.0, 3.0] {
            let want = cpu::at(&widen(&s), &widen(&t), b, cs, ct, h * w, f64::from(p));
            let (loss, grad) = run(gpu, losses::at(gpu, &ts, &tt, p).unwrap());
            check(
                &format!("at {b},{cs},{ct},{h}x{w} p={p} loss"),
                &[loss],
                &[want.loss],
                RTOL,
                ATOL,
            );
            check(
                &format!("at {b},{cs},{ct},{h}x{w} p={p} grad"),
                &grad,
                &want.grad,
                RTOL,
                ATOL,
            );
        }
        let t2 = data(b * cs * h * w, 5);
        let want = cpu::hint(&widen(&s), &widen(&t2));
        let (loss, grad) = run(
            gpu,
            losses::hint(gpu, &ts, &up(gpu, &[b, cs, h, w], &t2)).unwrap(),
        );
        check("hint loss", &[loss], &[want.loss], RTOL, ATOL);
        check("hint grad", &grad, &want.grad, RTOL, ATOL);
    }
    // More elements than one reduction chunk.
    let n = 3 * 4096 + 17;
    let (s, t) = (data(n, 6), data(n, 7));
    let want = cpu::hint(&widen(&s), &widen(&t));
    let (loss, _) = run(
        gpu,
        losses::hint(gpu, &up(gpu, &[n], &s), &up(gpu, &[n], &t)).unwrap(),
    );
    check("hint large loss", &[loss], &[want.loss], RTOL, ATOL);
}

#[test]
fn relation_losses_match_the_reference_at_odd_shapes() {
    let Some(gpu) = gpu() else { return };
    type Gpu3 = fn(&Gpu, &Tensor, &Tensor) -> wgdistill::Result<LossPlan>;
    type Cpu3 = fn(&[f64], &[f64], usize) -> cpu::LossGrad;
    let cases: [(&str, Gpu3, Cpu3); 4] = [
        ("sp", losses::sp, cpu::sp),
        ("rkd_distance", losses::rkd_distance, cpu::rkd_distance),
        ("rkd_angle", losses::rkd_angle, cpu::rkd_angle),
        ("pkt", losses::pkt, cpu::pkt),
    ];
    // (D = 1 makes PKT's similarities ±1 exactly, where its 1e-7 terms exceed f32 precision.)
    // B = 256 has 65,536 pairs: more than llvmpipe lets one invocation loop over.
    for (b, ds, dt) in [(2, 3, 2), (7, 33, 5), (13, 9, 65), (256, 16, 24)] {
        let (s, t) = (scaled(b * ds, 8, 2.0), scaled(b * dt, 9, 2.0));
        let (ts, tt) = (up(gpu, &[b, ds], &s), up(gpu, &[b, dt], &t));
        for (name, on_gpu, on_cpu) in cases {
            let want = on_cpu(&widen(&s), &widen(&t), b);
            let (loss, grad) = run(gpu, on_gpu(gpu, &ts, &tt).unwrap());
            check(
                &format!("{name} {b}x{ds}/{dt} loss"),
                &[loss],
                &[want.loss],
                1e-3,
                1e-6,
            );
            check(
                &format!("{name} {b}x{ds}/{dt} grad"),
                &grad,
                &want.grad,
                1e-3,
                1e-5,
            );
        }
    }
}

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
            ("ce", losses::ce(gpu, &ts, &tl).unwrap()),
            ("kd", losses::kd(gpu, &ts, &tt, temperature).unwrap()),
            (
                "dkd",
                losses::dkd(gpu, &ts, &tt, &tl, 1.0, 8.0, temperature).unwrap(),
            ),
        ] {
            let (loss, grad) = run(gpu, plan);
            assert!(loss.is_finite(), "{name} T={temperature}: loss {loss}");
            assert!(
                grad.iter().all(|g| g.is_finite()),
                "{name} T={temperature}: gradient not finite"
            );
        }
    }
}

#[test]
fn losses_are_bit_identical_run_to_run() {
    let Some(gpu) = gpu() else { return };
    let (b, c) = (4096, 10);
    let (s, t) = (scaled(b * c, 12, 3.0), scaled(b * c, 13, 3.0));
    let (ts, tt) = (up(gpu, &[b, c], &s), up(gpu, &[b, c], &t));
    let first = run(gpu, losses::kd(gpu, &ts, &tt, 4.0).unwrap());
    for _ in 0..3 {
        let again = run(gpu, losses::kd(gpu, &ts, &tt, 4.0).unwrap());
        assert_eq!(first.0.to_bits(), again.0.to_bits());
        assert_eq!(first.1, again.1);
    }
    let (e1, e2) = (
        up(gpu, &[64, 48], &data(64 * 48, 14)),
        up(gpu, &[64, 32], &data(64 * 32, 15)),
    );
    let a = run(gpu, losses::rkd_angle(gpu, &e1, &e2).unwrap());
    let b2 = run(gpu, losses::rkd_angle(gpu, &e1, &e2).unwrap());
    assert_eq!(a.0.to_bits(), b2.0.to_bits());
}

#[test]
fn rkd_angle_runs_at_batch_256_and_width_2048() {
    let Some(gpu) = gpu() else { return };
    let (b, d) = (256, 2048);
    let (ts, tt) = (
        up(gpu, &[b, d], &data(b * d, 16)),
        up(gpu, &[b, d], &data(b * d, 17)),
    );
    let (loss, grad) = run(gpu, losses::rkd_angle(gpu, &ts, &tt).unwrap());
    assert!(loss.is_finite() && loss > 0.0, "{loss}");
    assert_eq!(grad.len(), b * d);
    assert!(grad.iter().all(|g| g.is_finite()));
}

fn host(shape: &[usize], v: Vec<f32>) -> HostTensor {
    HostTensor::f32(shape, v)
}

fn err_of(gpu: &Gpu, op: &str, inputs: TensorMap, attrs: &[(&str, f64)]) -> String {
    let attrs: BTreeMap<String, f64> = attrs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let e = ops::run(gpu, op, &inputs, &attrs)
        .expect_err("must be refused")
        .to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

#[test]
fn bad_inputs_are_clear_errors() {
    let Some(gpu) = gpu() else { return };
    let st = |s: &[usize], t: &[usize]| -> TensorMap {
        let n = |sh: &[usize]| sh.iter().product::<usize>();
        TensorMap::from([
            ("student".to_string(), host(s, data(n(s), 1))),
            ("teacher".to_string(), host(t, data(n(t), 2))),
        ])
    };
    let e = err_of(gpu, "kd", st(&[4, 10], &[4, 10]), &[("temperature", 0.0)]);
    assert!(e.contains("temperature") && e.contains("> 0"), "{e}");
    let e = err_of(gpu, "kd", st(&[4, 10], &[4, 10]), &[("temperature", -1.0)]);
    assert!(e.contains("temperature"), "{e}");
    let e = err_of(gpu, "kd", st(&[4, 10], &[4, 11]), &[]);
    assert!(e.contains("[4, 10]") && e.contains("[4, 11]"), "{e}");
    let e = err_of(gpu, "hint", st(&[2, 3], &[3, 2]), &[]);
    assert!(e.starts_with("hint"), "{e}");
    let e = err_of(gpu, "at", st(&[2, 3, 4, 4], &[2, 5, 4, 5]), &[]);
    assert!(e.contains("spatial"), "{e}");
    for op in ["sp", "rkd_distance", "rkd_angle", "pkt"] {
        let e = err_of(gpu, op, st(&[1, 8], &[1, 8]), &[]);
        assert!(e.contains("B ≥ 2"), "{op}: {e}");
        let e = err_of(gpu, op, st(&[4, 8], &[5, 8]), &[]);
        assert!(e.contains("batch"), "{op}: {e}");
    }
    let mut with_labels = st(&[3, 5], &[3, 5]);
    with_labels.insert("labels".into(), HostTensor::i32(&[3], vec![0, 5, 1]));
    let e = err_of(gpu, "dkd", with_labels.clone(), &[]);
    assert!(
        e.contains("labels[1] = 5") && e.contains("out of range"),
        "{e}"
    );
    with_labels.remove("teacher");
    let e = err_of(gpu, "ce", with_labels, &[]);
    assert!(e.contains("labels[1] = 5"), "{e}");
    let e = err_of(gpu, "kd", st(&[4, 10], &[4, 10]), &[("temprature", 2.0)]);
    assert!(e.contains("temprature") && e.contains("temperature"), "{e}");
    let e = err_of(gpu, "nope", TensorMap::new(), &[]);
    assert!(e.contains("unknown op"), "{e}");
    let mut missing = st(&[4, 10], &[4, 10]);
    missing.remove("teacher");
    assert!(err_of(gpu, "kd", missing, &[]).contains("missing"));
}
