//! The op runner's contract: every registered op runs on sample inputs and returns exactly the
//! outputs it declares, with values that agree with the references for a sample of ops.

mod common;

use std::collections::BTreeMap;

use common::{data, gpu, widen};
use wgdistill::catalogue::Suite;
use wgdistill::io::{HostTensor, TensorMap};
use wgdistill::kernels::losses;
use wgdistill::ops;
use wgdistill::reference::{
    allclose, conv as cpu_conv, matmul as cpu_dense, optimizer as cpu_optim,
};

fn f(shape: &[usize], seed: u64) -> HostTensor {
    HostTensor::f32(shape, data(shape.iter().product(), seed))
}

/// The attributes of a loss's first check case (CRD's n_data has no default), none otherwise.
fn sample_attrs(op: &str) -> BTreeMap<String, f64> {
    losses::find(op).map_or_else(
        |_| BTreeMap::new(),
        |def| {
            let case = (def.cases)(Suite::Check).remove(0);
            case.attrs
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect()
        },
    )
}

/// Plausible inputs for each op, by name.
fn sample_inputs(op: &str) -> TensorMap {
    let mut m = TensorMap::new();
    // A loss: its registry entry's first check case.
    if let Ok(def) = losses::find(op) {
        let case = (def.cases)(Suite::Check).remove(0);
        for (input, t) in def.inputs.iter().zip(case.inputs) {
            m.insert(input.name.to_string(), t);
        }
        return m;
    }
    let mut put = |k: &str, t: HostTensor| {
        m.insert(k.to_string(), t);
    };
    match op {
        "add" => {
            put("a", f(&[5], 1));
            put("b", f(&[5], 2));
        }
        "matmul" => {
            put("a", f(&[3, 4], 1));
            put("b", f(&[4, 5], 2));
            put("bias", f(&[5], 3));
        }
        "roll_flip" => put("x", f(&[2, 3, 5, 7], 1)),
        "gated_ensemble" => {
            put("gate", f(&[5, 3], 1));
            put("branches", f(&[3, 5, 7], 2));
        }
        "relu_backward"
        | "relu6_backward"
        | "leaky_relu_backward"
        | "gelu_backward"
        | "tanh_backward" => {
            put("x", f(&[2, 3], 1));
            put("grad_out", f(&[2, 3], 2));
        }
        "conv2d" => {
            put("x", f(&[2, 3, 5, 5], 1));
            put("weight", f(&[4, 3, 3, 3], 2));
            put("bias", f(&[4], 3));
        }
        "conv2d_backward" => {
            put("x", f(&[2, 3, 5, 5], 1));
            put("weight", f(&[4, 3, 3, 3], 2));
            put("grad_out", f(&[2, 4, 3, 3], 3));
        }
        "max_pool2d_backward" => {
            put("x", f(&[1, 2, 4, 4], 1));
            put(
                "argmax",
                HostTensor::i32(&[1, 2, 2, 2], vec![0, 2, 8, 10, 5, 7, 13, 15]),
            );
            put("grad_out", f(&[1, 2, 2, 2], 2));
        }
        "avg_pool2d_backward" => {
            put("x", f(&[1, 2, 4, 4], 1));
            put("grad_out", f(&[1, 2, 2, 2], 2));
        }
        "max_pool2d" | "avg_pool2d" | "global_avg_pool" => put("x", f(&[1, 2, 4, 4], 1)),
        "batch_norm" | "batch_norm_eval" => {
            put("x", f(&[4, 3, 2, 2], 1));
            put("weight", f(&[3], 2));
            put("bias", f(&[3], 3));
            put("running_mean", f(&[3], 4));
            put("running_var", HostTensor::f32(&[3], vec![1.0, 2.0, 0.5]));
        }
        "batch_norm_backward" => {
            put("x", f(&[4, 3], 1));
            put("weight", f(&[3], 2));
            put("grad_out", f(&[4, 3], 3));
        }
        "sgd_step" | "adamw_step" => {
            put("param", f(&[7], 1));
            put("grad", f(&[7], 2));
        }
        "clip_grad_norm" => put("grad", f(&[9], 1)),
        "fake_quant" | "fake_quant_backward" => {
            put("x", f(&[3, 4], 1));
            put("qparams", HostTensor::f32(&[1, 2], vec![0.125, 0.0]));
            if op == "fake_quant_backward" {
                put("grad_out", f(&[3, 4], 2));
            }
        }
        "int8_linear" | "int8_conv2d" => {
            let (x, w): (&[usize], &[usize]) = if op == "int8_linear" {
                (&[3, 5], &[4, 5])
            } else {
                (&[2, 3, 5, 5], &[4, 3, 3, 3])
            };
            put("x", f(x, 1));
            put("weight", int8_weights(w, 2));
            put(
                "weight_scale",
                HostTensor::f32(&[4], vec![0.01, 0.02, 0.03, 0.04]),
            );
            put("bias", f(&[4], 3));
        }
        "int8_max_pool" | "int8_global_avg_pool" => put("x", f(&[1, 2, 4, 4], 1)),
        _ => put("x", f(&[3, 4], 1)),
    }
    m
}

/// Whole numbers in [−128, 127], as f32 (the op runner's int8 weights).
fn int8_weights(shape: &[usize], seed: u64) -> HostTensor {
    let n = shape.iter().product();
    HostTensor::f32(
        shape,
        data(n, seed).iter().map(|v| (v * 127.0).round()).collect(),
    )
}

#[test]
fn int8_ops_agree_with_the_integer_reference() {
    use wgdistill::reference::int8 as q;
    let Some(gpu) = gpu() else { return };
    // A depthwise, strided ReLU6 convolution: x quantised, the integer conv, requantised.
    let mut inputs = TensorMap::new();
    inputs.insert("x".into(), f(&[2, 3, 6, 5], 1));
    inputs.insert("weight".into(), int8_weights(&[3, 1, 3, 3], 2));
    inputs.insert(
        "weight_scale".into(),
        HostTensor::f32(&[3], vec![0.01, 0.02, 0.005]),
    );
    inputs.insert("bias".into(), f(&[3], 3));
    let a = [
        ("input_scale", 0.0625),
        ("input_zero_point", 120.0),
        ("output_scale", 0.03125),
        ("output_zero_point", 10.0),
        ("activation", 2.0),
        ("stride", 2.0),
        ("padding", 1.0),
        ("groups", 3.0),
    ];
    let out = ops::run(gpu, "int8_conv2d", &inputs, &attrs(&a)).unwrap();
    let xq = q::quantize(&widen(values(&inputs["x"])), 16.0, 120);
    let w: Vec<i32> = values(&inputs["weight"])
        .iter()
        .map(|&v| v as i32)
        .collect();
    let ep = q::Epilogue {
        multiplier: [0.01f32, 0.02, 0.005].iter().map(|s| s * 0.0625).collect(),
        bias: values(&inputs["bias"]).to_vec(),
    };
    let window = q::Window {
        kernel: 3,
        stride: 2,
        padding: 1,
    };
    let grid = wgdistill::kernels::int8::Grid {
        scale: 0.03125,
        zero_point: 10,
    };
    let yq = q::conv2d(
        &xq,
        [2, 3, 6, 5],
        120,
        &w,
        3,
        3,
        window,
        &ep,
        grid.requant(false, true),
    );
    let yq: Vec<i32> = yq.iter().map(|&v| v as i32).collect();
    assert!(yq.iter().any(|&v| v > 10) && yq.contains(&10), "{yq:?}");
    allclose(
        values(&out["out"]),
        &q::dequantize(&yq, 0.03125, 10),
        0.0,
        1e-7,
    )
    .unwrap();
    assert_eq!(out["out"].shape, [2, 3, 3, 3]);

    // A linear layer to f32 (output_scale 0): the reals themselves.
    let inputs = sample_inputs("int8_linear");
    let a = [("input_scale", 0.125), ("input_zero_point", 128.0)];
    let out = ops::run(gpu, "int8_linear", &inputs, &attrs(&a)).unwrap();
    let xq = q::quantize(&widen(values(&inputs["x"])), 8.0, 128);
    let w: Vec<i32> = values(&inputs["weight"])
        .iter()
        .map(|&v| v as i32)
        .collect();
    let ep = q::Epilogue {
        multiplier: [0.01f32, 0.02, 0.03, 0.04]
            .iter()
            .map(|s| s * 0.125)
            .collect(),
        bias: values(&inputs["bias"]).to_vec(),
    };
    let want = q::linear(&xq, 128, &w, 5, &ep, q::Requant::Float);
    allclose(values(&out["out"]), &want, 1e-6, 1e-6).unwrap();

    // Weights that are not int8 are refused, naming the element.
    let mut bad = sample_inputs("int8_linear");
    bad.insert("weight".into(), f(&[4, 5], 9));
    let err = ops::run(gpu, "int8_linear", &bad, &attrs(&a))
        .unwrap_err()
        .to_string();
    assert!(err.contains("int8 weights are whole numbers"), "{err}");
}

#[test]
fn every_op_runs_and_returns_exactly_its_declared_outputs() {
    let Some(gpu) = gpu() else { return };
    for info in ops::all() {
        let inputs = sample_inputs(info.name);
        let out = ops::run(gpu, info.name, &inputs, &sample_attrs(info.name))
            .unwrap_or_else(|e| panic!("{}: {e}", info.name));
        let got: Vec<&str> = out.keys().map(String::as_str).collect();
        let mut want: Vec<&str> = info.outputs.iter().map(String::as_str).collect();
        want.sort_unstable();
        assert_eq!(got, want, "{}: outputs", info.name);
    }
}

fn values(t: &HostTensor) -> &[f32] {
    t.as_f32().expect("f32 output")
}

fn attrs(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn op_outputs_agree_with_the_references() {
    let Some(gpu) = gpu() else { return };
    // matmul with transposed b, bias and GELU, as a Linear layer.
    let mut inputs = TensorMap::new();
    inputs.insert("a".into(), f(&[3, 4], 1));
    inputs.insert("b".into(), f(&[5, 4], 2));
    inputs.insert("bias".into(), f(&[5], 3));
    let out = ops::run(
        gpu,
        "matmul",
        &inputs,
        &attrs(&[("trans_b", 1.0), ("activation", 2.0)]),
    )
    .unwrap();
    let shape = cpu_dense::LinearShape { m: 3, n: 5, k: 4 };
    let (_, want) = cpu_dense::linear_forward(
        &widen(values(&inputs["a"])),
        &widen(values(&inputs["b"])),
        &widen(values(&inputs["bias"])),
        shape,
        wgdistill::reference::activation::Act::Gelu,
    );
    allclose(values(&out["out"]), &want, 1e-5, 1e-6).unwrap();

    // ONE's gated ensemble of three (5, 7) branches, and a gate that does not fit them.
    let inputs = sample_inputs("gated_ensemble");
    let out = ops::run(gpu, "gated_ensemble", &inputs, &BTreeMap::new()).unwrap();
    let branches: Vec<Vec<f64>> = values(&inputs["branches"]).chunks(35).map(widen).collect();
    let want = wgdistill::reference::gate::ensemble(&widen(values(&inputs["gate"])), &branches, 7);
    allclose(values(&out["out"]), &want, 1e-5, 1e-6).unwrap();
    let mut bad = inputs.clone();
    bad.insert("gate".into(), f(&[5, 2], 1));
    let err = ops::run(gpu, "gated_ensemble", &bad, &BTreeMap::new()).unwrap_err();
    assert!(!err.to_string().contains('\n'), "{err}");

    // leaky_relu and its backward at the attribute's slope (not the default 0.01).
    let inputs = sample_inputs("leaky_relu_backward");
    let slope = attrs(&[("negative_slope", 0.2)]);
    let act = wgdistill::reference::activation::Act::LeakyRelu(0.2f32.into());
    let x = widen(values(&inputs["x"]));
    let only_x: TensorMap = [("x".to_string(), inputs["x"].clone())].into();
    let out = ops::run(gpu, "leaky_relu", &only_x, &slope).unwrap();
    let want: Vec<f64> = x.iter().map(|&v| act.apply(v)).collect();
    allclose(values(&out["out"]), &want, 1e-6, 1e-7).unwrap();
    let out = ops::run(gpu, "leaky_relu_backward", &inputs, &slope).unwrap();
    let dy = widen(values(&inputs["grad_out"]));
    let want: Vec<f64> = x.iter().zip(&dy).map(|(&v, g)| g * act.grad(v)).collect();
    allclose(values(&out["grad_x"]), &want, 1e-6, 1e-7).unwrap();
    assert!(x.iter().any(|&v| v < 0.0) && x.iter().any(|&v| v > 0.0));

    // Fake quantisation per row (axis 0) of a [3, 4] matrix on an int4-sized grid, forward and
    // straight-through backward, against the reference; then the observer twice (the second
    // averages into the first's range), per tensor on the affine uint8 grid.
    use wgdistill::reference::quantize::{self as cpu_q, Grid};
    let mut inputs = sample_inputs("fake_quant_backward");
    let qparams = vec![0.125f32, 0.0, 0.0625, 2.0, 0.25, -1.0];
    inputs.insert("qparams".into(), HostTensor::f32(&[3, 2], qparams.clone()));
    let q_attrs = attrs(&[("axis", 0.0), ("quant_min", -8.0), ("quant_max", 7.0)]);
    let grid = Grid {
        qmin: -8,
        qmax: 7,
        symmetric: false,
    };
    let x: Vec<f64> = widen(values(&inputs["x"]));
    let qp = widen(&qparams);
    let forward: TensorMap = ["x", "qparams"]
        .iter()
        .map(|k| (k.to_string(), inputs[*k].clone()))
        .collect();
    let out = ops::run(gpu, "fake_quant", &forward, &q_attrs).unwrap();
    allclose(
        values(&out["out"]),
        &cpu_q::fake_quant(&x, 3, 4, &qp, grid),
        0.0,
        0.0,
    )
    .unwrap();
    let out = ops::run(gpu, "fake_quant_backward", &inputs, &q_attrs).unwrap();
    let dy = widen(values(&inputs["grad_out"]));
    let want = cpu_q::fake_quant_grad(&x, 3, 4, &qp, grid, &dy);
    allclose(values(&out["grad_x"]), &want, 0.0, 0.0).unwrap();
    assert!(want.contains(&0.0) && want.iter().any(|&g| g != 0.0));
    let observe = attrs(&[
        ("quant_min", 0.0),
        ("quant_max", 255.0),
        ("symmetric", 0.0),
        ("averaging_constant", 0.5),
    ]);
    let mut first: TensorMap = [("x".to_string(), f(&[3, 4], 5))].into();
    let seen = ops::run(gpu, "quant_observe", &first, &observe).unwrap();
    first.insert("x".into(), f(&[3, 4], 6));
    first.insert("range".into(), seen["range"].clone());
    let again = ops::run(gpu, "quant_observe", &first, &observe).unwrap();
    let uint8 = Grid {
        qmin: 0,
        qmax: 255,
        symmetric: false,
    };
    let mut range = vec![1.0, -1.0];
    cpu_q::observe(
        &widen(values(&f(&[3, 4], 5))),
        1,
        12,
        &mut range,
        0.5,
        uint8,
    );
    let qparams = cpu_q::observe(
        &widen(values(&f(&[3, 4], 6))),
        1,
        12,
        &mut range,
        0.5,
        uint8,
    );
    allclose(values(&again["range"]), &range, 1e-6, 1e-7).unwrap();
    allclose(values(&again["qparams"]), &qparams, 1e-6, 1e-7).unwrap();

    // roll_flip: the reference's map, and its inverse undoes it.
    let inputs = sample_inputs("roll_flip");
    let shifted = attrs(&[("shift_h", -2.0), ("shift_w", 3.0), ("flip", 1.0)]);
    let out = ops::run(gpu, "roll_flip", &inputs, &shifted).unwrap();
    let x = widen(values(&inputs["x"]));
    let want = wgdistill::reference::augment::roll_flip(&x, [5, 7], (-2, 3), true);
    allclose(values(&out["out"]), &want, 0.0, 0.0).unwrap();
    let back: TensorMap = [("x".to_string(), out["out"].clone())].into();
    let inverse = attrs(&[
        ("shift_h", -2.0),
        ("shift_w", 3.0),
        ("flip", 1.0),
        ("inverse", 1.0),
    ]);
    let out = ops::run(gpu, "roll_flip", &back, &inverse).unwrap();
    assert_eq!(values(&out["out"]), values(&inputs["x"]));
    let e = ops::run(gpu, "roll_flip", &inputs, &attrs(&[("shift_h", 0.5)]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("shift_h"), "{e}");

    // conv2d with stride 2 and padding 1.
    let inputs = sample_inputs("conv2d");
    let out = ops::run(
        gpu,
        "conv2d",
        &inputs,
        &attrs(&[("stride", 2.0), ("padding", 1.0)]),
    )
    .unwrap();
    let win = cpu_conv::Window {
        n: 2,
        c: 3,
        h: 5,
        w: 5,
        k: [3, 3],
        s: [2, 2],
        p: [1, 1],
    };
    let want = cpu_conv::conv2d(
        &widen(values(&inputs["x"])),
        &widen(values(&inputs["weight"])),
        Some(&widen(values(&inputs["bias"]))),
        &win,
        4,
        1,
    );
    allclose(values(&out["out"]), &want, 1e-5, 1e-6).unwrap();

    // Two channel groups: 4 inputs, 6 outputs, weight [6, 2, 3, 3].
    let mut inputs = TensorMap::new();
    inputs.insert("x".into(), f(&[2, 4, 5, 5], 4));
    inputs.insert("weight".into(), f(&[6, 2, 3, 3], 5));
    let a = attrs(&[("stride", 2.0), ("padding", 1.0), ("groups", 2.0)]);
    let out = ops::run(gpu, "conv2d", &inputs, &a).unwrap();
    let want = cpu_conv::conv2d(
        &widen(values(&inputs["x"])),
        &widen(values(&inputs["weight"])),
        None,
        &cpu_conv::Window { c: 4, ..win },
        6,
        2,
    );
    allclose(values(&out["out"]), &want, 1e-5, 1e-6).unwrap();

    // One SGD step with momentum on step 3 of a buffer.
    let mut inputs = sample_inputs("sgd_step");
    inputs.insert("momentum_buffer".into(), f(&[7], 9));
    let a = attrs(&[
        ("lr", 0.1),
        ("momentum", 0.9),
        ("weight_decay", 1e-3),
        ("step", 3.0),
    ]);
    let out = ops::run(gpu, "sgd_step", &inputs, &a).unwrap();
    let mut p = widen(values(&inputs["param"]));
    let mut buf = widen(values(&inputs["momentum_buffer"]));
    cpu_optim::sgd(
        &mut p,
        &widen(values(&inputs["grad"])),
        &mut buf,
        3,
        0.1,
        0.9,
        0.0,
        1e-3,
        false,
    );
    allclose(values(&out["param"]), &p, 1e-6, 1e-7).unwrap();
    allclose(values(&out["momentum_buffer"]), &buf, 1e-6, 1e-7).unwrap();
}

#[test]
fn integer_attributes_are_checked() {
    let Some(gpu) = gpu() else { return };
    let inputs = sample_inputs("max_pool2d");
    for (k, v) in [("kernel", 0.0), ("stride", 1.5), ("padding", -1.0)] {
        let e = ops::run(gpu, "max_pool2d", &inputs, &attrs(&[(k, v)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(k) && e.contains("whole number"), "{e}");
    }
    let e = ops::run(
        gpu,
        "matmul",
        &sample_inputs("matmul"),
        &attrs(&[("activation", 7.0)]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("activation"), "{e}");
}

#[test]
fn non_finite_inputs_are_refused_naming_the_tensor() {
    let Some(gpu) = gpu() else { return };
    let mut teacher = data(24, 2);
    teacher[2] = f32::INFINITY;
    let mut inputs = TensorMap::new();
    inputs.insert("student".into(), f(&[4, 6], 1));
    inputs.insert("teacher".into(), HostTensor::f32(&[4, 6], teacher));
    let e = ops::run(gpu, "kd", &inputs, &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("'teacher'") && e.contains("element 2") && e.contains("finite"),
        "{e}"
    );
}

/// `ce`'s labels: negative ones are unlabelled rows (no loss, no gradient; the mean over the
/// others), one at or past the classes is refused naming the tensor and element.
#[test]
fn negative_labels_are_unlabelled_rows_and_large_ones_are_refused() {
    let Some(gpu) = gpu() else { return };
    let run = |labels: Vec<i32>| {
        let mut inputs = TensorMap::new();
        inputs.insert("student".into(), f(&[4, 6], 1));
        inputs.insert("labels".into(), HostTensor::i32(&[4], labels));
        ops::run(gpu, "ce", &inputs, &BTreeMap::new())
    };
    let all = run(vec![1, 5, 0, 2]).unwrap();
    let half = run(vec![1, -1, 0, -100]).unwrap();
    let grad = |o: &TensorMap| values(&o["grad_student"]).to_vec();
    let (g_all, g_half) = (grad(&all), grad(&half));
    // The labelled rows' gradients double (a mean over 2 rows, not 4); the others vanish.
    for (row, doubled) in [(0, true), (1, false), (2, true), (3, false)] {
        for c in 0..6 {
            let want = if doubled {
                2.0 * g_all[row * 6 + c]
            } else {
                0.0
            };
            assert!(
                (g_half[row * 6 + c] - want).abs() < 1e-6,
                "row {row} class {c}"
            );
        }
    }
    let e = run(vec![1, 6, 0, 2]).unwrap_err().to_string();
    assert!(e.contains("'labels'") && e.contains("labels[1] = 6"), "{e}");
}
