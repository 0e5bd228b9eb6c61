//! The loss registry as a whole: every golden case through the op runner and the f64
//! references, every reference's gradient against finite differences, determinism, and the
//! op runner's errors.

use super::common::{
    assert_close_f64, data, finite_difference, golden_cases, gpu, run_loss, scaled, up, widen,
};
use std::collections::BTreeMap;
use wgdistill::catalogue::Suite;
use wgdistill::gpu::Gpu;
use wgdistill::io::{HostTensor, TensorMap};
use wgdistill::kernels::losses::{self, Loss, LossDef, RefInput, Role};
use wgdistill::kernels::{relation, response};
use wgdistill::ops;
use wgdistill::reference::allclose;

#[test]
fn every_golden_case_passes_through_the_op_runner() {
    let Some(gpu) = gpu() else { return };
    for (case, input, expected) in golden_cases() {
        let out = ops::run(gpu, &case.op, &input, &case.attrs)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        // Every expected tensor, and nothing the op does not return.
        assert!(
            expected.keys().all(|k| out.contains_key(k)),
            "{}: outputs",
            case.name
        );
        for name in expected.keys().map(String::as_str) {
            let want = widen(expected[name].as_f32().unwrap());
            assert_eq!(
                out[name].shape, expected[name].shape,
                "{} {name} shape",
                case.name
            );
            allclose(out[name].as_f32().unwrap(), &want, case.rtol, case.atol)
                .unwrap_or_else(|e| panic!("{} {name}: {e}", case.name));
        }
    }
}

/// The golden cases' inputs in the order of their loss's registry entry.
fn ref_inputs(def: &LossDef, input: &TensorMap) -> Vec<RefInput> {
    def.inputs
        .iter()
        .map(|i| RefInput::of(&input[i.name]))
        .collect()
}

#[test]
fn references_reproduce_every_golden_case() {
    let cases = golden_cases();
    assert!(cases.len() >= 10, "{} golden cases", cases.len());
    for (case, input, expected) in cases {
        let def = losses::find(&case.op).unwrap();
        let loss = Loss::of(def)
            .with_all(case.attrs.iter().map(|(k, v)| (k.as_str(), *v)))
            .unwrap();
        let got = loss.reference(&ref_inputs(def, &input));
        // The golden values are f32 roundings of f64 results; the references run in f64.
        let want = |name: &str| widen(expected[name].as_f32().unwrap());
        let what = |part: &str| format!("{} {part}", case.name);
        assert_close_f64(
            &what("loss"),
            &[got.loss],
            &want("loss"),
            case.rtol,
            case.atol,
        );
        for (grad, input) in got.grads.iter().zip(def.trainable_inputs()) {
            let name = format!("grad_{}", input.name);
            assert_close_f64(&what(&name), grad, &want(&name), case.rtol, case.atol);
        }
        assert_eq!(
            got.updated.len(),
            def.memory_inputs().count(),
            "{}",
            case.name
        );
        for (rows, input) in got.updated.iter().zip(def.memory_inputs()) {
            let name = format!("{}_new", input.name);
            assert_close_f64(&what(&name), rows, &want(&name), case.rtol, case.atol);
        }
    }
}

/// Every loss's reference gradient against central differences of its own loss, on each of its
/// check cases small enough for that (every attribute setting the cases use).
#[test]
fn every_reference_gradient_matches_finite_differences() {
    for def in losses::registry() {
        let mut checked = 0;
        for case in (def.cases)(Suite::Check) {
            let loss = Loss::of(def).with_all(case.attrs.iter().copied()).unwrap();
            // A constant the batch sets (CRD's first-batch Z) has no gradient by definition:
            // only the cases that give it are differentiable as the loss is defined.
            if !case.differentiable {
                continue;
            }
            let inputs: Vec<RefInput> = case.inputs.iter().map(RefInput::of).collect();
            let students: Vec<usize> = (0..def.inputs.len())
                .filter(|&k| def.inputs[k].role.trains())
                .collect();
            if students.iter().any(|&k| inputs[k].values.len() > 400) {
                continue;
            }
            for (g, &s) in students.iter().enumerate() {
                let at = |x: &[f64]| {
                    let mut moved = inputs.clone();
                    moved[s].values = x.to_vec();
                    loss.reference(&moved)
                };
                let analytic = at(&inputs[s].values).grads.swap_remove(g);
                let numeric = finite_difference(&inputs[s].values, 1e-5, |x| at(x).loss);
                let input = def.inputs[s].name;
                let what = format!("{} {} {:?} d/d{input}", def.name, case.shape, case.attrs);
                assert_close_f64(&what, &analytic, &numeric, 1e-5, 1e-8);
            }
            checked += 1;
        }
        assert!(checked > 0, "{}: no case small enough to check", def.name);
    }
}

/// The table's own rules: unique snake_case names, one student input, defaults inside their
/// ranges, attributes of every case accepted, cases in both suites, and every loss an op.
#[test]
fn registry_entries_are_consistent() {
    let mut names = Vec::new();
    let ops = ops::all();
    for def in losses::registry() {
        assert!(!names.contains(&def.name), "{} twice", def.name);
        names.push(def.name);
        let snake = def.name.starts_with(|c: char| c.is_ascii_lowercase())
            && def
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        assert!(snake, "{}: not snake_case", def.name);
        let students = def
            .inputs
            .iter()
            .filter(|i| i.role == Role::Student)
            .count();
        assert!(students >= 1, "{}: no student input", def.name);
        assert_eq!(
            def.parameters.is_some(),
            def.parameter_inputs().next().is_some(),
            "{}: parameter inputs and their initialiser go together",
            def.name
        );
        // Memory inputs come with their step definition, which names them first (then its
        // state), and keeps a size attribute; a loss owns parameters or memory, not both.
        assert_eq!(
            def.memory.is_some(),
            def.memory_inputs().next().is_some(),
            "{}: memory inputs and their step definition go together",
            def.name
        );
        if let Some(m) = &def.memory {
            let inputs: Vec<&str> = def.memory_inputs().map(|i| i.name).collect();
            assert_eq!(&m.names[..inputs.len()], inputs, "{}", def.name);
            assert!(
                def.attrs.iter().any(|a| a.name == m.size_attr),
                "{}",
                def.name
            );
            assert!(
                def.parameters.is_none(),
                "{}: parameters and memory",
                def.name
            );
        }
        for a in def.attrs {
            assert!(
                a.range.contains(a.default),
                "{}.{}: default out of range",
                def.name,
                a.name
            );
        }
        for suite in [Suite::Check, Suite::Bench { small: true }] {
            let cases = (def.cases)(suite);
            assert!(!cases.is_empty(), "{}: no {suite:?} cases", def.name);
            for c in cases {
                assert_eq!(c.inputs.len(), def.inputs.len(), "{} {}", def.name, c.shape);
                Loss::of(def).with_all(c.attrs.iter().copied()).unwrap();
            }
        }
        let op = ops
            .iter()
            .find(|o| o.name == def.name)
            .expect("an op per loss");
        let inputs: Vec<&str> = def.inputs.iter().map(|i| i.name).collect();
        assert_eq!(op.inputs, inputs, "{}: op inputs", def.name);
        assert!(Loss::new(def.name).is_ok());
    }
    // Attribute values outside their range are refused with the range.
    let e = Loss::new("kd")
        .unwrap()
        .with("temperature", 1e30)
        .unwrap_err()
        .to_string();
    assert!(e.contains("temperature") && e.contains("≤"), "{e}");
    let e = Loss::new("dkd")
        .unwrap()
        .with("beta", f64::NAN)
        .unwrap_err()
        .to_string();
    assert!(e.contains("beta"), "{e}");
}

#[test]
fn losses_are_bit_identical_run_to_run() {
    let Some(gpu) = gpu() else { return };
    let (b, c) = (4096, 10);
    let (s, t) = (scaled(b * c, 12, 3.0), scaled(b * c, 13, 3.0));
    let (ts, tt) = (up(gpu, &[b, c], &s), up(gpu, &[b, c], &t));
    let first = run_loss(gpu, response::kd(gpu, &ts, &tt, 4.0).unwrap());
    for _ in 0..3 {
        let again = run_loss(gpu, response::kd(gpu, &ts, &tt, 4.0).unwrap());
        assert_eq!(first.0.to_bits(), again.0.to_bits());
        assert_eq!(first.1, again.1);
    }
    let (e1, e2) = (
        up(gpu, &[64, 48], &data(64 * 48, 14)),
        up(gpu, &[64, 32], &data(64 * 32, 15)),
    );
    let a = run_loss(gpu, relation::rkd_angle(gpu, &e1, &e2).unwrap());
    let b2 = run_loss(gpu, relation::rkd_angle(gpu, &e1, &e2).unwrap());
    assert_eq!(a.0.to_bits(), b2.0.to_bits());
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

/// docs/losses.md defines every registry loss, with each attribute and its default as the
/// registry has it, so the two cannot drift apart.
#[test]
fn docs_define_every_registry_loss_with_its_defaults() {
    let doc = include_str!("../../docs/losses.md");
    for def in losses::registry() {
        assert!(
            doc.contains(&format!("| `{}` |", def.name)),
            "{}: not in docs/losses.md",
            def.name
        );
        for a in def.attrs {
            let entry = format!("{} ({})", a.name, a.default);
            assert!(
                doc.contains(&entry),
                "{}: docs/losses.md lacks '{entry}'",
                def.name
            );
        }
    }
}

/// VID's variance starts at 5 in every channel of the teacher's map, whatever the floor.
#[test]
fn vid_starts_every_channel_at_variance_five() {
    for eps in [1e-5, 0.1] {
        let loss = Loss::new("vid").unwrap().with("eps", eps).unwrap();
        let shapes: [&[usize]; 2] = [&[2, 7, 3, 3], &[2, 7, 3, 3]];
        let init = loss.initial_parameters(&shapes);
        assert_eq!(init.len(), 1);
        assert_eq!(init[0].shape, vec![7]);
        for &a in init[0].as_f32().unwrap() {
            let v = f64::from(a).exp().ln_1p() + eps;
            assert!((v - 5.0).abs() < 1e-5, "eps {eps}: v = {v}");
        }
    }
}
