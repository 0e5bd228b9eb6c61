//! The f64 loss references: against the golden cases (computed in f64 and cross-checked against
//! PyTorch autograd), against central finite differences at other shapes, and DKD's invariant.

mod common;

use common::{assert_close_f64, data, finite_difference, golden_cases, widen};
use wgdistill::reference::losses::{self, LossGrad};

fn f64s(t: &wgdistill::io::HostTensor) -> Vec<f64> {
    widen(t.as_f32().expect("f32 tensor"))
}

/// Runs the reference for a golden case's op on its inputs.
fn reference(
    op: &str,
    attrs: &std::collections::BTreeMap<String, f64>,
    input: &wgdistill::io::TensorMap,
) -> LossGrad {
    let s = &input["student"];
    let sv = f64s(s);
    let b = s.shape[0];
    let tv = input.get("teacher").map(f64s);
    let labels: Vec<usize> = input
        .get("labels")
        .map(|l| l.as_i32().unwrap().iter().map(|&y| y as usize).collect())
        .unwrap_or_default();
    let cols = sv.len() / b;
    let attr = |k: &str, d: f64| attrs.get(k).copied().unwrap_or(d);
    match op {
        "ce" => losses::ce(&sv, &labels, cols),
        "kd" => losses::kd(&sv, &tv.unwrap(), cols, attr("temperature", 4.0)),
        "dkd" => losses::dkd(
            &sv,
            &tv.unwrap(),
            &labels,
            cols,
            attr("alpha", 1.0),
            attr("beta", 8.0),
            attr("temperature", 4.0),
        ),
        "hint" => losses::hint(&sv, &tv.unwrap()),
        "at" => {
            let t = &input["teacher"];
            let hw = s.shape[2] * s.shape[3];
            losses::at(
                &sv,
                &tv.unwrap(),
                b,
                s.shape[1],
                t.shape[1],
                hw,
                attr("p", 2.0),
            )
        }
        "sp" => losses::sp(&sv, &tv.unwrap(), b),
        "rkd_distance" => losses::rkd_distance(&sv, &tv.unwrap(), b),
        "rkd_angle" => losses::rkd_angle(&sv, &tv.unwrap(), b),
        "pkt" => losses::pkt(&sv, &tv.unwrap(), b),
        other => panic!("no reference for {other}"),
    }
}

#[test]
fn references_reproduce_every_golden_case() {
    let cases = golden_cases();
    assert_eq!(cases.len(), 10);
    for (case, input, expected) in cases {
        let got = reference(&case.op, &case.attrs, &input);
        let want_loss = f64s(&expected["loss"]);
        let want_grad = f64s(&expected["grad_student"]);
        // The golden values are f32 roundings of f64 results; the references run in f64.
        assert_close_f64(
            &format!("{} loss", case.name),
            &[got.loss],
            &want_loss,
            case.rtol,
            case.atol,
        );
        assert_close_f64(
            &format!("{} grad", case.name),
            &got.grad,
            &want_grad,
            case.rtol,
            case.atol,
        );
    }
}

/// Checks a reference's analytic gradient against central differences of its loss.
fn check_gradient(what: &str, s: &[f64], f: impl Fn(&[f64]) -> LossGrad) {
    let analytic = f(s).grad;
    let numeric = finite_difference(s, 1e-5, |x| f(x).loss);
    assert_close_f64(what, &analytic, &numeric, 1e-5, 1e-8);
}

#[test]
fn response_loss_gradients_match_finite_differences() {
    let (b, c) = (5, 7);
    let s: Vec<f64> = widen(&data(b * c, 11)).iter().map(|v| 3.0 * v).collect();
    let t: Vec<f64> = widen(&data(b * c, 12)).iter().map(|v| 3.0 * v).collect();
    let y = [0usize, 6, 3, 3, 1];
    check_gradient("ce", &s, |x| losses::ce(x, &y, c));
    for temperature in [0.5, 1.0, 4.0, 20.0] {
        check_gradient(&format!("kd T={temperature}"), &s, |x| {
            losses::kd(x, &t, c, temperature)
        });
        check_gradient(&format!("dkd T={temperature}"), &s, |x| {
            losses::dkd(x, &t, &y, c, 1.0, 8.0, temperature)
        });
    }
    check_gradient("dkd alpha/beta", &s, |x| {
        losses::dkd(x, &t, &y, c, 0.3, 2.0, 2.0)
    });
}

#[test]
fn feature_loss_gradients_match_finite_differences() {
    let (b, cs, ct, hw) = (3, 4, 6, 5);
    let s = widen(&data(b * cs * hw, 21));
    let t = widen(&data(b * ct * hw, 22));
    check_gradient("hint", &s, |x| losses::hint(x, &t[..x.len()]));
    check_gradient("at p=2", &s, |x| losses::at(x, &t, b, cs, ct, hw, 2.0));
    check_gradient("at p=4", &s, |x| losses::at(x, &t, b, cs, ct, hw, 4.0));
}

#[test]
fn relation_loss_gradients_match_finite_differences() {
    let (b, ds, dt) = (6, 5, 9);
    let s = widen(&data(b * ds, 31));
    let t = widen(&data(b * dt, 32));
    check_gradient("sp", &s, |x| losses::sp(x, &t, b));
    check_gradient("rkd_distance", &s, |x| losses::rkd_distance(x, &t, b));
    check_gradient("rkd_angle", &s, |x| losses::rkd_angle(x, &t, b));
    check_gradient("pkt", &s, |x| losses::pkt(x, &t, b));
}

#[test]
fn kd_decomposes_into_tckd_and_weighted_nckd_per_sample() {
    let c = 9;
    for seed in 0..6 {
        let s: Vec<f64> = widen(&data(c, 40 + seed)).iter().map(|v| 4.0 * v).collect();
        let t: Vec<f64> = widen(&data(c, 50 + seed)).iter().map(|v| 4.0 * v).collect();
        let y = [(seed as usize * 5) % c];
        let temperature = 2.0;
        let kd = losses::kd(&s, &t, c, temperature).loss;
        let tckd = losses::dkd(&s, &t, &y, c, 1.0, 0.0, temperature).loss;
        let nckd = losses::dkd(&s, &t, &y, c, 0.0, 1.0, temperature).loss;
        let pt = losses::softmax(&t.iter().map(|v| v / temperature).collect::<Vec<_>>());
        let rhs = tckd + (1.0 - pt[y[0]]) * nckd;
        assert!(
            (kd - rhs).abs() <= 1e-12 * kd.abs().max(1.0),
            "seed {seed}: kd {kd} vs {rhs}"
        );
    }
}
