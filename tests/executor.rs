//! The graph executor: whole-model gradients against finite differences of an f64 reference,
//! compiled steps that create nothing per step, learning on a synthetic task, and KD steps with
//! a frozen teacher and a FitNet adapter.

mod common;

use std::collections::BTreeMap;

use common::{data, gpu, widen};
use wgdistill::gpu::{DType, Dispatch, Gpu, Tensor};
use wgdistill::graph::deferred::{MAX_DEFERRED_READ, defer_value_launches};
use wgdistill::graph::exec::{Mode, plan_backward, plan_forward};
use wgdistill::graph::{
    Adapter, ConvLayer, EvalStep, Graph, LossSpec, OptimizerSpec, Paraphraser, StepSpec, TrainStep,
    Weights, paraphraser_graph,
};
use wgdistill::kernels::losses::Loss;
use wgdistill::kernels::{elementwise, optimizer, reduce, response};
use wgdistill::models;

/// The registry's loss `name` at its defaults.
fn loss(name: &str) -> Loss {
    Loss::new(name).unwrap()
}

/// Hinton KD at temperature `t`.
fn kd(t: f64) -> Loss {
    loss("kd").with("temperature", t).unwrap()
}
use wgdistill::graph::interp as cpu_graph;

/// GPU gradients of mean cross-entropy for every trainable parameter.
fn gpu_grads(
    gpu: &Gpu,
    g: &Graph,
    w: &Weights,
    x: &[f32],
    labels: &[i32],
) -> BTreeMap<String, Vec<f32>> {
    let xs = g.shape(g.find("x").unwrap()).to_vec();
    let tx = gpu.upload(&xs, x).unwrap();
    let tl = gpu.upload(&[labels.len()], labels).unwrap();
    let inputs: BTreeMap<String, Tensor> = [("x".to_string(), tx)].into();
    let mut plan = Vec::new();
    let fwd = plan_forward(gpu, g, w, &inputs, Mode::Train, None, &mut plan).unwrap();
    let out = g.output.unwrap();
    let mut lp = response::ce(gpu, fwd.get(out), &tl).unwrap();
    plan.extend(lp.dispatches);
    let grads = plan_backward(
        gpu,
        g,
        &fwd,
        vec![(out, lp.grads.remove(0))],
        &[],
        &mut plan,
    )
    .unwrap();
    gpu.execute(&plan).unwrap();
    grads
        .iter()
        .map(|(k, t)| (k.clone(), gpu.read::<f32>(t).unwrap()))
        .collect()
}

/// Checks every parameter gradient against central differences of the f64 reference.
fn check_model_gradients(name: &str, g: &Graph, seed: u64) {
    let Some(gpu) = gpu() else { return };
    let w = Weights::init(gpu, g, seed).unwrap();
    let xs = g.shape(g.find("x").unwrap()).to_vec();
    let batch = xs[0];
    let classes = g.shape(g.output.unwrap())[1];
    let x = data(xs.iter().product(), seed + 1);
    let labels: Vec<i32> = (0..batch).map(|i| (i * 7 % classes) as i32).collect();
    let got = gpu_grads(gpu, g, &w, &x, &labels);
    let host = common::host_params(gpu, &w);
    let ylabels: Vec<usize> = labels.iter().map(|&y| y as usize).collect();
    let xd = widen(&x);
    let trainable: Vec<String> = g.trainable_params().map(|(_, n)| n.name.clone()).collect();
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        {
            let mut t = trainable.clone();
            t.sort();
            t
        },
        "{name}: every trainable parameter gets a gradient"
    );
    for pname in &trainable {
        let mut params = host.clone();
        let n = params[pname].len();
        for i in 0..n {
            let orig = params[pname][i];
            let h = 1e-5;
            params.get_mut(pname).unwrap()[i] = orig + h;
            let up = cpu_graph::ce_loss(g, &params, &xd, &ylabels);
            params.get_mut(pname).unwrap()[i] = orig - h;
            let down = cpu_graph::ce_loss(g, &params, &xd, &ylabels);
            params.get_mut(pname).unwrap()[i] = orig;
            let fd = (up - down) / (2.0 * h);
            let gv = f64::from(got[pname][i]);
            assert!(
                (gv - fd).abs() <= 2e-4 + 2e-3 * fd.abs(),
                "{name} {pname}[{i}]: gpu {gv}, finite difference {fd}"
            );
        }
    }
}

#[test]
fn mlp_gradients_match_finite_differences() {
    let g = models::mlp([3, 1, 2, 3], &[5, 4], 3).unwrap();
    check_model_gradients("mlp", &g, 1);
}

#[test]
fn cnn_gradients_match_finite_differences() {
    let g = models::cnn([3, 2, 6, 6], &[3, 4], 3).unwrap();
    check_model_gradients("cnn", &g, 2);
}

/// ONE's gated ensemble: gate logits and three branches, each a linear layer of the input, the
/// ensemble their gated sum; every gradient against finite differences.
#[test]
fn gated_ensemble_gradients_match_finite_differences() {
    let mut g = Graph::new();
    let x = g.input("x", &[5, 1, 2, 3], DType::F32).unwrap();
    let flat = g.flatten(x).unwrap();
    let gate = g.linear("gate", flat, 3, true).unwrap();
    let parts: Vec<_> = (0..3)
        .map(|b| g.linear(&format!("branch{b}"), flat, 4, true).unwrap())
        .collect();
    let y = g.gated_ensemble(gate, &parts).unwrap();
    g.set_output(y).unwrap();
    assert!(g.gated_ensemble(gate, &parts[..2]).is_err(), "B must match");
    check_model_gradients("gated ensemble", &g, 31);
}

/// ONE's model: shared blocks, branches with their own last block and classifier, a gate; its
/// names, refusals, and every parameter's gradient (through the gate's batch norm and the
/// ensemble) against finite differences.
#[test]
fn one_model_gradients_match_finite_differences() {
    let g = models::one([3, 1, 8, 8], &[2, 3], 2, 3).unwrap();
    for name in [
        "features.0.weight",
        "gate.0.weight",
        "gate.1.running_var",
        "branches.1.features.4.weight",
        "branches.0.classifier.weight",
    ] {
        assert!(g.find(name).is_some(), "{name}");
    }
    assert!(g.tapped("branch.1").is_ok());
    assert!(
        models::one([3, 1, 8, 8], &[2], 2, 3).is_err(),
        "nothing shared"
    );
    assert!(
        models::one([3, 1, 8, 8], &[2, 3], 1, 3).is_err(),
        "one branch"
    );
    check_model_gradients("one", &g, 33);
}

/// Cross-modal students: an MLP on the row and column profiles (its first layer a linear layer
/// over the concatenated profiles, in two parts) and an MLP and a CNN on the 4×4 thumbnail. Each
/// sees its modality and nothing more: a change of the image that keeps the modality keeps the
/// logits, while the image model's change; gradients match finite differences.
#[test]
fn modality_students_see_only_their_modality() {
    use models::Modality::{Image, Profiles, Thumbnail};
    let input = [2, 1, 8, 12];
    let profiles = models::mlp_seeing(input, &[5], 3, Profiles).unwrap();
    let shape = |g: &Graph, name: &str| g.shape(g.find(name).unwrap()).to_vec();
    assert_eq!(shape(&profiles, "hidden.0.rows.weight"), [5, 8]);
    assert_eq!(shape(&profiles, "hidden.0.columns.weight"), [5, 12]);
    assert!(profiles.find("hidden.0.columns.bias").is_none(), "one bias");
    let thumbnail = models::mlp_seeing(input, &[5], 3, Thumbnail).unwrap();
    assert_eq!(
        shape(&thumbnail, "hidden.0.weight"),
        [5, 6],
        "2×3 thumbnail"
    );
    let thumbnail_cnn = models::cnn_seeing(input, &[4], 3, Thumbnail).unwrap();
    assert!(models::cnn_seeing(input, &[4], 3, Profiles).is_err());
    check_model_gradients("mlp on profiles", &profiles, 21);
    check_model_gradients("mlp on a thumbnail", &thumbnail, 22);

    let Some(gpu) = gpu() else { return };
    let x = data(2 * 8 * 12, 23);
    // Moves mass within one 4×4 block (the thumbnail keeps), or around a rectangle's corners
    // (every row and column sum keeps).
    let mut in_block = x.clone();
    in_block[4 * 12 + 5] += 0.5;
    in_block[6 * 12 + 7] -= 0.5;
    let mut corners = x.clone();
    for (r, c, d) in [(1, 2, 0.5), (6, 9, 0.5), (1, 9, -0.5), (6, 2, -0.5)] {
        corners[r * 12 + c] += d;
    }
    let logits = |g: &Graph, x: &[f32]| {
        let w = Weights::init(gpu, g, 5).unwrap();
        EvalStep::compile(gpu, g, &w).unwrap().run(gpu, x).unwrap()
    };
    let image = models::mlp_seeing(input, &[5], 3, Image).unwrap();
    for (g, changed, what) in [
        (&thumbnail, &in_block, "thumbnail mlp"),
        (&thumbnail_cnn, &in_block, "thumbnail cnn"),
        (&profiles, &corners, "profiles mlp"),
    ] {
        let (a, b) = (logits(g, &x), logits(g, changed));
        let gap = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(gap < 1e-5, "{what}: {gap}");
    }
    for changed in [&in_block, &corners] {
        let (a, b) = (logits(&image, &x), logits(&image, changed));
        let gap = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(gap > 1e-3, "the image model sees the change: {gap}");
    }
}

/// The MobileNet-style family (depthwise-separable blocks, torchvision's names) at a quarter
/// width: every parameter's gradient against central differences, and the layout a PyTorch
/// checkpoint of the same network has.
#[test]
fn mobilenet_gradients_match_finite_differences_and_names_follow_torchvision() {
    let g = models::mobilenet([2, 1, 8, 8], 0.25, models::Activation::Relu6, 3).unwrap();
    let shape = |name: &str| {
        let v = g.find(name).unwrap_or_else(|| panic!("{name}"));
        g.shape(v).to_vec()
    };
    assert_eq!(shape("features.0.0.weight"), [4, 1, 3, 3]);
    assert_eq!(shape("features.1.conv.0.weight"), [4, 1, 3, 3], "depthwise");
    assert_eq!(shape("features.1.conv.3.weight"), [8, 4, 1, 1], "pointwise");
    assert_eq!(shape("features.5.conv.4.running_var"), [32]);
    assert_eq!(shape("classifier.weight"), [3, 32]);
    assert!(models::mobilenet([2, 1, 8, 8], 0.0, models::Activation::Relu, 3).is_err());
    check_model_gradients("mobilenet", &g, 9);
}

/// A depthwise-separable block (depthwise 3×3, then pointwise 1×1) and a grouped 3×3 layer,
/// built from the one Conv2d op with its `groups`.
#[test]
fn grouped_and_depthwise_convolution_gradients_match_finite_differences() {
    let mut g = Graph::new();
    let x = g.input("x", &[2, 4, 5, 5], DType::F32).unwrap();
    let layer = |out, kernel, padding, groups| ConvLayer {
        out,
        kernel,
        stride: 1,
        padding,
        bias: true,
        groups,
    };
    let dw = g.conv2d("depthwise", x, layer(4, 3, 1, 4)).unwrap();
    let h = g.relu(dw).unwrap();
    let pw = g.conv2d("pointwise", h, layer(6, 1, 0, 1)).unwrap();
    let h = g.relu(pw).unwrap();
    let grouped = g.conv2d("grouped", h, layer(4, 3, 0, 2)).unwrap();
    let pooled = g.global_avg_pool(grouped).unwrap();
    let logits = g.linear("head", pooled, 3, true).unwrap();
    g.set_output(logits).unwrap();
    assert_eq!(g.shape(g.find("depthwise.weight").unwrap()), &[4, 1, 3, 3]);
    assert_eq!(g.shape(g.find("grouped.weight").unwrap()), &[4, 3, 3, 3]);
    check_model_gradients("grouped", &g, 4);
}

#[test]
fn residual_gradients_accumulate_over_both_paths() {
    let mut g = Graph::new();
    let x = g.input("x", &[4, 1, 1, 5], DType::F32).unwrap();
    let flat = g.flatten(x).unwrap();
    let z = g.linear("stem", flat, 5, true).unwrap();
    let h = g.relu(z).unwrap();
    let branch = g.linear("branch", h, 5, true).unwrap();
    let sum = g.add(branch, h).unwrap();
    let gelu = g.gelu(sum).unwrap();
    let logits = g.linear("head", gelu, 3, true).unwrap();
    g.set_output(logits).unwrap();
    check_model_gradients("residual", &g, 3);
}

/// CRD's embedding head (linear, then each row divided by its norm) inside a model, with and
/// without ε: its backward pass against central differences.
#[test]
fn l2_normalized_rows_have_exact_gradients() {
    for (eps, seed) in [(0.0, 5), (0.1, 6)] {
        let mut g = Graph::new();
        let x = g.input("x", &[3, 1, 1, 5], DType::F32).unwrap();
        let flat = g.flatten(x).unwrap();
        let z = g.linear("embed", flat, 4, true).unwrap();
        let unit = g.l2_normalize(z, eps).unwrap();
        let logits = g.linear("head", unit, 3, true).unwrap();
        g.set_output(logits).unwrap();
        check_model_gradients("l2_normalize", &g, seed);
    }
    let mut g = Graph::new();
    let x = g.input("x", &[3, 1, 2, 2], DType::F32).unwrap();
    let e = g.l2_normalize(x, 0.0).unwrap_err().to_string();
    assert!(e.contains("(N, D)"), "{e}");
}

/// FT's paraphraser and translator blocks: 3×3 convolutions with leaky ReLU (slope 0.1, and a
/// steep 3 so a wrong slope in backward cannot hide) against central differences.
#[test]
fn leaky_relu_in_a_model_has_exact_gradients() {
    for (slope, seed) in [(0.1, 11), (3.0, 12)] {
        let mut g = Graph::new();
        let x = g.input("x", &[2, 2, 5, 5], DType::F32).unwrap();
        let layer = ConvLayer {
            out: 3,
            kernel: 3,
            stride: 1,
            padding: 1,
            bias: true,
            groups: 1,
        };
        let c = g.conv2d("conv", x, layer).unwrap();
        let a = g.leaky_relu(c, slope).unwrap();
        let flat = g.flatten(a).unwrap();
        let logits = g.linear("head", flat, 3, true).unwrap();
        g.set_output(logits).unwrap();
        check_model_gradients("leaky_relu", &g, seed);
    }
}

/// ReLU6 in a model whose pre-activations fall below 0, inside (0, 6) and past 6 (a Linear
/// layer's output doubled four times), against central differences.
#[test]
fn relu6_in_a_model_has_exact_gradients() {
    let Some(gpu) = gpu() else { return };
    let mut g = Graph::new();
    let x = g.input("x", &[6, 1, 3, 4], DType::F32).unwrap();
    let flat = g.flatten(x).unwrap();
    let mut z = g.linear("hidden", flat, 6, true).unwrap();
    for _ in 0..4 {
        z = g.add(z, z).unwrap();
    }
    let a = g.relu6(z).unwrap();
    let logits = g.linear("head", a, 3, true).unwrap();
    g.set_output(logits).unwrap();
    let seed = 21;
    // check_model_gradients' parameters and input: every region of ReLU6 is visited.
    let params = common::host_params(gpu, &Weights::init(gpu, &g, seed).unwrap());
    let pre = cpu_graph::forward(&g, &params, &widen(&data(72, seed + 1)))[z.0].clone();
    assert!(pre.iter().any(|&v| v < 0.0), "{pre:?}");
    assert!(pre.iter().any(|&v| v > 0.0 && v < 6.0), "{pre:?}");
    assert!(pre.iter().any(|&v| v > 6.0), "{pre:?}");
    check_model_gradients("relu6", &g, seed);
}

/// Low-rank factorisation: at full rank the split model computes what the original does (its
/// factors multiply back to the weight), taps and the rest of the parameters unchanged; at a
/// lower rank the factors' product is the best approximation (Eckart–Young: the squared error
/// is the dropped singular values' energy, which the report states); layers that cannot be
/// split are refused.
#[test]
fn factorising_keeps_the_function_at_full_rank_and_the_leading_singular_values_below_it() {
    use wgdistill::graph::low_rank::{factorise_weights, svd};
    use wgdistill::io::TensorMap;
    let Some(gpu) = gpu() else { return };
    // features.4 is [5, 3, 3, 3] (rank ≤ 5), classifier [4, 20] (rank ≤ 4).
    let g = models::cnn([3, 1, 8, 8], &[3, 5], 4).unwrap();
    let host = Weights::init(gpu, &g, 5).unwrap().to_host(gpu).unwrap();
    let ranks = |a: usize, b: usize| -> BTreeMap<String, usize> {
        [("features.4".to_string(), a), ("classifier".to_string(), b)].into()
    };
    let f64s = |m: &TensorMap| -> BTreeMap<String, Vec<f64>> {
        m.iter()
            .map(|(k, t)| (k.clone(), widen(t.as_f32().unwrap())))
            .collect()
    };
    let x = widen(&data(3 * 64, 6));
    let logits = |graph: &Graph, w: &TensorMap| {
        cpu_graph::forward_in(graph, &f64s(w), &x, Mode::Eval)[graph.output.unwrap().0].clone()
    };
    let full = g.factorised(&ranks(5, 4)).unwrap();
    let (split, report) = factorise_weights("test", &host, &ranks(5, 4)).unwrap();
    assert_eq!(
        full.taps.keys().collect::<Vec<_>>(),
        g.taps.keys().collect::<Vec<_>>()
    );
    assert!(
        report.iter().all(|f| (f.kept_energy - 1.0).abs() < 1e-12),
        "{report:?}"
    );
    assert_eq!(split["features.4.0.weight"].shape, [5, 3, 3, 3]);
    assert_eq!(split["features.4.1.weight"].shape, [5, 5, 1, 1]);
    assert_eq!(split["classifier.1.bias"], host["classifier.bias"]);
    assert!(!split.contains_key("classifier.weight") && !split.contains_key("classifier.bias"));
    assert_eq!(
        split["features.1.running_var"],
        host["features.1.running_var"]
    );
    Weights::load(gpu, &full, "split", &split).expect("names and shapes fit the split graph");
    let (a, b) = (logits(&g, &host), logits(&full, &split));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-5, "full rank changed the logits by {worst}");

    // Rank 2 of the classifier: ‖W − W₁W₀‖² = σ₃² + σ₄².
    let (low, report) = factorise_weights("test", &host, &ranks(5, 2)).unwrap();
    let w = widen(host["classifier.weight"].as_f32().unwrap());
    let s = svd(&w, 4, 20).s;
    let (w0, w1) = (
        widen(low["classifier.0.weight"].as_f32().unwrap()),
        widen(low["classifier.1.weight"].as_f32().unwrap()),
    );
    let mut error = 0.0;
    for o in 0..4 {
        for i in 0..20 {
            let back: f64 = (0..2).map(|j| w1[o * 2 + j] * w0[j * 20 + i]).sum();
            error += (w[o * 20 + i] - back).powi(2);
        }
    }
    let dropped = s[2] * s[2] + s[3] * s[3];
    assert!(
        (error - dropped).abs() < 1e-5 * s[0] * s[0],
        "{error} vs {dropped}"
    );
    let kept = report
        .iter()
        .find(|f| f.layer == "classifier")
        .unwrap()
        .kept_energy;
    let total: f64 = s.iter().map(|v| v * v).sum();
    assert!((kept - (1.0 - dropped / total)).abs() < 1e-9);
    assert!(logits(&g.factorised(&ranks(5, 2)).unwrap(), &low) != a);

    let refused = |m: &Graph, layer: &str, rank: usize| {
        m.factorised(&[(layer.to_string(), rank)].into())
            .unwrap_err()
            .to_string()
    };
    assert!(refused(&g, "classifier", 5).contains("from 1 to 4, got 5"));
    assert!(refused(&g, "features.1", 2).contains("not a Linear or Conv2d"));
    assert!(refused(&g, "features.9", 2).contains("no layer"));
    let mobile = models::mobilenet([2, 1, 8, 8], 0.25, models::Activation::Relu, 3).unwrap();
    assert!(refused(&mobile, "features.1.conv.0", 2).contains("grouped"));
    assert!(
        mobile
            .factorised(&[("features.1.conv.3".to_string(), 2)].into())
            .is_ok()
    );
}

/// Gradients with respect to a frozen network's input, in evaluation mode (running statistics),
/// and through the batch moments of every BatchNorm layer's input (DeepInversion's taps): a CNN
/// with non-trivial γ, β and running statistics, loss `Σ R·logits + Σ_k R_k·moments_k`, against
/// central differences of the f64 interpreter in evaluation mode.
#[test]
fn input_and_batch_moment_gradients_through_a_frozen_cnn_match_finite_differences() {
    let Some(gpu) = gpu() else { return };
    let mut g = models::cnn([3, 2, 6, 6], &[3, 4], 3).unwrap().frozen();
    let bn_inputs: Vec<wgdistill::graph::Value> = g
        .nodes
        .iter()
        .filter_map(|n| match n.op {
            wgdistill::graph::Op::BatchNorm { x, .. } => Some(x),
            _ => None,
        })
        .collect();
    let moments: Vec<_> = bn_inputs
        .iter()
        .map(|&x| g.channel_moments(x).unwrap())
        .collect();
    assert_eq!(moments.len(), 2);
    let (w, host) = common::trained_looking_weights(gpu, &g, 21);
    let x = data(3 * 2 * 6 * 6, 22);
    let out = g.output.unwrap();
    let seeds: Vec<(wgdistill::graph::Value, Vec<f32>)> = std::iter::once(out)
        .chain(moments.iter().copied())
        .enumerate()
        .map(|(k, v)| (v, data(g.shape(v).iter().product(), 40 + k as u64)))
        .collect();

    let tx = gpu.upload(&[3, 2, 6, 6], &x).unwrap();
    let inputs: BTreeMap<String, Tensor> = [("x".to_string(), tx)].into();
    let mut plan = Vec::new();
    let fwd = plan_forward(gpu, &g, &w, &inputs, Mode::Eval, None, &mut plan).unwrap();
    let seed_tensors = seeds
        .iter()
        .map(|(v, r)| (*v, gpu.upload(g.shape(*v), r).unwrap()))
        .collect();
    let xv = g.find("x").unwrap();
    let grads = plan_backward(gpu, &g, &fwd, seed_tensors, &[xv], &mut plan).unwrap();
    assert_eq!(
        grads.keys().collect::<Vec<_>>(),
        ["x"],
        "a frozen network trains nothing"
    );
    gpu.execute(&plan).unwrap();
    let got = gpu.read::<f32>(&grads["x"]).unwrap();

    let params: BTreeMap<String, Vec<f64>> = host
        .iter()
        .map(|(k, t)| (k.clone(), widen(t.as_f32().unwrap())))
        .collect();
    let loss = |x: &[f64]| {
        let values = cpu_graph::forward_in(&g, &params, x, Mode::Eval);
        seeds
            .iter()
            .map(|(v, r)| {
                values[v.0]
                    .iter()
                    .zip(r)
                    .map(|(a, b)| a * f64::from(*b))
                    .sum::<f64>()
            })
            .sum::<f64>()
    };
    let fd = common::finite_difference(&widen(&x), 1e-5, loss);
    for (i, (g, f)) in got.iter().zip(&fd).enumerate() {
        let g = f64::from(*g);
        assert!(
            (g - f).abs() <= 2e-4 + 2e-3 * f.abs(),
            "dx[{i}]: gpu {g}, finite difference {f}"
        );
    }
    // The moments' own part is not negligible: without it the gradient differs.
    let no_moments = |x: &[f64]| {
        let values = cpu_graph::forward_in(&g, &params, x, Mode::Eval);
        values[out.0]
            .iter()
            .zip(&seeds[0].1)
            .map(|(a, b)| a * f64::from(*b))
            .sum::<f64>()
    };
    let fd_logits = common::finite_difference(&widen(&x), 1e-5, no_moments);
    assert!(fd.iter().zip(&fd_logits).any(|(a, b)| (a - b).abs() > 1e-2));
}

/// A generator's tail (DFAD's): nearest 2× upsampling, a 3×3 convolution, tanh, against central
/// differences; and the upsampling itself against an independent nearest-neighbour reference.
#[test]
fn upsampling_and_tanh_in_a_model_have_exact_gradients() {
    let mut g = Graph::new();
    let x = g.input("x", &[2, 3, 3, 4], DType::F32).unwrap();
    let up2 = g.upsample_nearest(x, 2).unwrap();
    assert_eq!(g.shape(up2), &[2, 3, 6, 8]);
    let layer = ConvLayer {
        out: 2,
        kernel: 3,
        stride: 1,
        padding: 1,
        bias: true,
        groups: 1,
    };
    let c = g.conv2d("conv", up2, layer).unwrap();
    let t = g.tanh(c).unwrap();
    let flat = g.flatten(t).unwrap();
    let logits = g.linear("head", flat, 3, true).unwrap();
    g.set_output(logits).unwrap();
    check_model_gradients("upsample+tanh", &g, 13);

    let Some(gpu) = gpu() else { return };
    let mut g = Graph::new();
    let x = g.input("x", &[2, 3, 3, 5], DType::F32).unwrap();
    let y = g.upsample_nearest(x, 3).unwrap();
    g.set_output(y).unwrap();
    let w = Weights::init(gpu, &g, 1).unwrap();
    let xv = data(2 * 3 * 3 * 5, 14);
    let got = EvalStep::compile(gpu, &g, &w)
        .unwrap()
        .run(gpu, &xv)
        .unwrap();
    let want: Vec<f32> = (0..2 * 3 * 9 * 15)
        .map(|i| {
            let (plane, r, c) = (i / 135, i % 135 / 15, i % 15);
            xv[plane * 15 + (r / 3) * 5 + c / 3]
        })
        .collect();
    assert_eq!(got, want);
    assert!(g.upsample_nearest(x, 0).is_err());
}

/// Adaptive average pooling in a model (5 → 3 and 6 → 4: overlapping windows) against central
/// differences.
#[test]
fn adaptive_average_pooling_has_exact_gradients() {
    let mut g = Graph::new();
    let x = g.input("x", &[2, 2, 5, 6], DType::F32).unwrap();
    let c = g
        .conv2d(
            "conv",
            x,
            ConvLayer {
                out: 3,
                kernel: 1,
                stride: 1,
                padding: 0,
                bias: true,
                groups: 1,
            },
        )
        .unwrap();
    let p = g.adaptive_avg_pool(c, [3, 4]).unwrap();
    let flat = g.flatten(p).unwrap();
    let logits = g.linear("head", flat, 3, true).unwrap();
    g.set_output(logits).unwrap();
    check_model_gradients("adaptive_avg_pool", &g, 7);
}

/// The pool adapter reconciles maps of different sizes: a larger student map is pooled with its
/// backward pass (the student trains through it), a larger teacher map is pooled as a constant;
/// without it the loss refuses the shapes.
#[test]
fn a_pool_adapter_matches_map_sizes_on_either_side() {
    let Some(gpu) = gpu() else { return };
    let batch = 4;
    let teacher = models::cnn([batch, 1, 8, 8], &[6, 8], 4).unwrap();
    let tw = Weights::init(gpu, &teacher, 50).unwrap();
    let student = models::cnn([batch, 1, 8, 8], &[4, 6], 4).unwrap();
    let x = data(batch * 64, 51);
    let y: Vec<i32> = (0..batch as i32).collect();
    let at = |s: &str, t: &str, adapter| LossSpec {
        adapter,
        ..LossSpec::taps(loss("at"), 100.0, s, t)
    };
    let compile = |w: &Weights, term: LossSpec| {
        TrainStep::compile(
            gpu,
            &StepSpec {
                student: &student,
                student_weights: w,
                teacher: Some((&teacher, &tw)),
                losses: vec![term],
                optimizer: sgd(0.1),
                seed: 5,
            },
        )
    };
    // features.3 is 4×4 after the first pool, features.7 2×2 after the second.
    for (s, t) in [("features.3", "features.7"), ("features.7", "features.3")] {
        let w = Weights::init(gpu, &student, 52).unwrap();
        let before = w.to_host(gpu).unwrap();
        let step = compile(&w, at(s, t, Some(Adapter::Pool))).unwrap();
        step.run(gpu, &x, &y).unwrap();
        let l = step.losses(gpu).unwrap()[0].2;
        assert!(l.is_finite() && l > 0.0, "{s} → {t}: {l}");
        let after = w.to_host(gpu).unwrap();
        assert_ne!(
            before["features.0.weight"], after["features.0.weight"],
            "{s} → {t}"
        );
        let e = compile(&w, at(s, t, None)).err().unwrap().to_string();
        assert!(e.contains("must agree in batch and spatial size"), "{e}");
    }
}

fn sgd(lr: f32) -> OptimizerSpec {
    OptimizerSpec::Sgd(optimizer::Sgd {
        lr,
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 0.0,
        nesterov: false,
    })
}

#[test]
fn a_compiled_step_creates_nothing_and_submits_once_per_step() {
    if gpu().is_none() {
        return;
    }
    // A device of its own: the shared one's counters also count the tests running beside this.
    let own = Gpu::from_env().unwrap();
    let gpu = &own;
    let g = models::mlp([16, 1, 4, 4], &[8], 4).unwrap();
    let w = Weights::init(gpu, &g, 4).unwrap();
    let spec = StepSpec {
        student: &g,
        student_weights: &w,
        teacher: None,
        losses: vec![LossSpec::logits(loss("ce"), 1.0)],
        optimizer: sgd(0.1),
        seed: 0,
    };
    let step = TrainStep::compile(gpu, &spec).unwrap();
    let x = data(16 * 16, 5);
    let y: Vec<i32> = (0..16).map(|i| i % 4).collect();
    step.run(gpu, &x, &y).unwrap();
    common::assert_one_submission_and_nothing_created(gpu, 5, || {
        for _ in 0..5 {
            step.run(gpu, &x, &y).unwrap();
        }
    });
    assert!(step.total_loss(gpu).unwrap().is_finite());
}

/// Four classes of 4×4 images: a bright quadrant per class, plus noise.
fn synthetic(n: usize, seed: u64) -> (Vec<f32>, Vec<i32>) {
    let noise = data(n * 16, seed);
    let mut x = Vec::with_capacity(n * 16);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let class = (i * 5 + 3) % 4;
        for p in 0..16 {
            let (r, c) = (p / 4, p % 4);
            let quadrant = (r / 2) * 2 + c / 2;
            x.push(if quadrant == class { 1.0 } else { 0.0 } + 0.3 * noise[i * 16 + p]);
        }
        y.push(class as i32);
    }
    (x, y)
}

fn accuracy(gpu: &Gpu, eval: &EvalStep, x: &[f32], y: &[i32], batch: usize) -> f64 {
    let mut correct = 0;
    for (xb, yb) in x.chunks(batch * 16).zip(y.chunks(batch)) {
        let logits = eval.run(gpu, xb).unwrap();
        for (row, &label) in logits.chunks(4).zip(yb) {
            correct += usize::from(wgdistill::train::run::predicted_class(row) as i32 == label);
        }
    }
    correct as f64 / y.len() as f64
}

#[test]
fn a_tiny_model_learns_a_synthetic_task() {
    let Some(gpu) = gpu() else { return };
    let batch = 32;
    let g = models::mlp([batch, 1, 4, 4], &[16], 4).unwrap();
    let w = Weights::init(gpu, &g, 6).unwrap();
    let spec = StepSpec {
        student: &g,
        student_weights: &w,
        teacher: None,
        losses: vec![LossSpec::logits(loss("ce"), 1.0)],
        optimizer: sgd(0.05),
        seed: 0,
    };
    let step = TrainStep::compile(gpu, &spec).unwrap();
    let (x, y) = synthetic(256, 7);
    let first = {
        step.run(gpu, &x[..batch * 16], &y[..batch]).unwrap();
        step.total_loss(gpu).unwrap()
    };
    for epoch in 0..15 {
        for (xb, yb) in x.chunks(batch * 16).zip(y.chunks(batch)) {
            step.run(gpu, xb, yb).unwrap();
        }
        let _ = epoch;
    }
    let last = step.total_loss(gpu).unwrap();
    assert!(last < first * 0.2, "loss {first} → {last}");
    let eval = EvalStep::compile(gpu, &g, &w).unwrap();
    let acc = accuracy(gpu, &eval, &x, &y, batch);
    assert!(acc >= 0.99, "training accuracy {acc}");
}

/// Quantisation-aware training through one Linear layer, by hand: the observers see the batch
/// and the weights first (a fresh range is the first observation), the forward pass reads the
/// fake-quantised input and weight, and the weight's gradient is the float gradient at those
/// values passed straight through the rounding: zero exactly where the weight was clamped
/// (the largest positive weight of each row sits at 127.5 steps and rounds out of range).
#[test]
fn qat_forward_reads_fake_quantised_values_and_backward_passes_straight_through() {
    use wgdistill::kernels::quantize::{INT8_SYMMETRIC, UINT8_AFFINE};
    use wgdistill::reference::quantize as q;
    let Some(gpu) = gpu() else { return };
    let (batch, inputs, classes) = (5, 6, 3);
    let float = models::mlp([batch, 1, 2, 3], &[], classes).unwrap();
    let g = float.quantization_aware(0.01).unwrap();
    assert!(g.find("quant.range").is_some() && g.find("head.weight_fake_quant.qparams").is_some());
    let w = Weights::init(gpu, &g, 4).unwrap();
    let host = common::host_params(gpu, &w);
    let x = data(batch * inputs, 3);
    let labels: Vec<i32> = (0..batch).map(|i| (i % classes) as i32).collect();
    let got = gpu_grads(gpu, &g, &w, &x, &labels);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["head.bias", "head.weight"]);

    let observed = |v: &[f64], channels: usize, inner: usize, grid| {
        let mut range: Vec<f64> = (0..channels).flat_map(|_| [1.0, -1.0]).collect();
        q::observe(v, channels, inner, &mut range, 0.01, grid)
    };
    let xd = widen(&x);
    let qx = q::fake_quant(
        &xd,
        1,
        xd.len(),
        &observed(&xd, 1, xd.len(), UINT8_AFFINE),
        UINT8_AFFINE,
    );
    let wd = &host["head.weight"];
    let wq_params = observed(wd, classes, inputs, INT8_SYMMETRIC);
    let qw = q::fake_quant(wd, classes, inputs, &wq_params, INT8_SYMMETRIC);
    // Each row's largest magnitude lies at ±127.5 steps, a tie that the last bit of the scale
    // decides (rounded to ±128: clamped, and its gradient stopped, where positive): those
    // weights may get their gradient or 0; every other one is inside the grid and gets it.
    let top: Vec<usize> = (0..classes)
        .map(|o| {
            let row = &wd[o * inputs..(o + 1) * inputs];
            let k = (0..inputs)
                .max_by(|&a, &b| row[a].abs().total_cmp(&row[b].abs()))
                .unwrap();
            o * inputs + k
        })
        .collect();
    let mut dw = vec![0.0; wd.len()];
    let mut db = vec![0.0; classes];
    for b in 0..batch {
        let logits: Vec<f64> = (0..classes)
            .map(|o| {
                let dot: f64 = (0..inputs)
                    .map(|i| qx[b * inputs + i] * qw[o * inputs + i])
                    .sum();
                dot + host["head.bias"][o]
            })
            .collect();
        let top = logits.iter().cloned().fold(f64::MIN, f64::max);
        let total: f64 = logits.iter().map(|l| (l - top).exp()).sum();
        for o in 0..classes {
            let p = (logits[o] - top).exp() / total;
            let dl = (p - f64::from(u8::from(o as i32 == labels[b]))) / batch as f64;
            db[o] += dl;
            for i in 0..inputs {
                dw[o * inputs + i] += dl * qx[b * inputs + i];
            }
        }
    }
    let close = |g: f32, w: f64| (f64::from(g) - w).abs() <= 1e-5 + 1e-4 * w.abs();
    for &k in &top {
        let g = got["head.weight"][k];
        assert!(g == 0.0 || close(g, dw[k]), "head.weight[{k}]: gpu {g}");
        dw[k] = f64::from(g);
    }
    for (name, want) in [("head.weight", &dw), ("head.bias", &db)] {
        for (k, (&g, &w)) in got[name].iter().zip(want).enumerate() {
            assert!(close(g, w), "{name}[{k}]: gpu {g}, expected {w}");
        }
    }
}

/// A quantisation-aware CNN learns the synthetic task; its evaluation reads the scales its
/// observers settled on (no observation), as the f64 interpreter in evaluation mode does.
#[test]
fn a_quantisation_aware_cnn_learns_and_evaluates_with_its_observed_scales() {
    let Some(gpu) = gpu() else { return };
    let batch = 32;
    let float = models::cnn([batch, 1, 4, 4], &[4], 4).unwrap();
    let g = float.quantization_aware(0.1).unwrap();
    let w = Weights::init(gpu, &g, 6).unwrap();
    let spec = StepSpec {
        student: &g,
        student_weights: &w,
        teacher: None,
        losses: vec![LossSpec::logits(loss("ce"), 1.0)],
        optimizer: sgd(0.05),
        seed: 0,
    };
    let step = TrainStep::compile(gpu, &spec).unwrap();
    let (x, y) = synthetic(256, 7);
    step.run(gpu, &x[..batch * 16], &y[..batch]).unwrap();
    let first = step.total_loss(gpu).unwrap();
    for _ in 0..10 {
        for (xb, yb) in x.chunks(batch * 16).zip(y.chunks(batch)) {
            step.run(gpu, xb, yb).unwrap();
        }
    }
    let last = step.total_loss(gpu).unwrap();
    assert!(last < first * 0.5, "loss {first} → {last}");
    let eval = EvalStep::compile(gpu, &g, &w).unwrap();
    let acc = accuracy(gpu, &eval, &x, &y, batch);
    let params = common::host_params(gpu, &w);
    assert!(acc >= 0.9, "accuracy {acc}, loss {first} → {last}");
    // The observers have seen data: the input's scale is no longer the initial 1.
    assert!(params["quant.qparams"][0] != 1.0);
    let gpu_logits = eval.run(gpu, &x[..batch * 16]).unwrap();
    let values = cpu_graph::forward_in(&g, &params, &widen(&x[..batch * 16]), Mode::Eval);
    let want = &values[g.output.unwrap().0];
    let worst = gpu_logits
        .iter()
        .zip(want)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max);
    assert!(
        worst < 1e-3,
        "evaluation differs from the interpreter by {worst}"
    );
}

/// Trains a quantisation-aware model briefly (its observers and batch-norm statistics move), then
/// runs its int8 export through both dot-product paths: the same integers either way, and logits
/// that match the fake-quantised model's up to the rare rounding tie (and, with global average
/// pooling, the rounding of the mean onto its grid).
fn int8_matches_fake_quantisation(float: wgdistill::graph::Graph, classes: usize) {
    use wgdistill::graph::int8::{Int8Program, export};
    use wgdistill::kernels::int8::DotPath;
    let Some(gpu) = gpu() else { return };
    let batch = 32;
    let g = float.quantization_aware(0.1).unwrap();
    let w = Weights::init(gpu, &g, 11).unwrap();
    let spec = StepSpec {
        student: &g,
        student_weights: &w,
        teacher: None,
        losses: vec![LossSpec::logits(loss("ce"), 1.0)],
        optimizer: sgd(0.05),
        seed: 0,
    };
    let step = TrainStep::compile(gpu, &spec).unwrap();
    let (x, y) = synthetic(256, 12);
    let y: Vec<i32> = y.iter().map(|&c| c % classes as i32).collect();
    for _ in 0..3 {
        for (xb, yb) in x.chunks(batch * 16).zip(y.chunks(batch)) {
            step.run(gpu, xb, yb).unwrap();
        }
    }
    let eval = EvalStep::compile(gpu, &g, &w).unwrap();
    let host = w.to_host(gpu).unwrap();
    // Through the file format: int8 tensors survive safetensors.
    let tensors = export(&g, &host).unwrap();
    let bytes = wgdistill::io::serialize_safetensors(std::path::Path::new("m"), &tensors).unwrap();
    let tensors = wgdistill::io::parse_safetensors("m", &bytes).unwrap();
    let programs: Vec<Int8Program> = [DotPath::Portable, DotPath::Builtin]
        .into_iter()
        .filter(|&p| p == DotPath::Portable || gpu.caps().packed_dot)
        .map(|p| Int8Program::compile(gpu, &g, &tensors, "test", p).unwrap())
        .collect();
    let (mut agree, mut rows, mut worst, mut spread) = (0, 0, 0.0f32, 0.0f32);
    for xb in x.chunks(batch * 16) {
        let want = eval.run(gpu, xb).unwrap();
        let got = programs[0].run(gpu, xb).unwrap();
        for p in &programs[1..] {
            assert_eq!(p.run(gpu, xb).unwrap(), got, "the dot-product paths differ");
        }
        for (a, b) in got.chunks(classes).zip(want.chunks(classes)) {
            let top = |r: &[f32]| (0..classes).max_by(|&i, &j| r[i].total_cmp(&r[j])).unwrap();
            agree += usize::from(top(a) == top(b));
            rows += 1;
        }
        for (a, b) in got.iter().zip(&want) {
            worst = worst.max((a - b).abs());
            spread = spread.max(b.abs());
        }
    }
    assert!(spread > 0.1, "logits too small to compare: {spread}");
    assert!(
        worst <= 0.02 * spread && agree * 100 >= rows * 95,
        "int8 vs fake-quantised: worst logit difference {worst} (largest logit {spread}), {agree} of {rows} predictions agree"
    );
}

#[test]
fn int8_exports_of_mlp_cnn_and_mobilenet_compute_the_fake_quantised_logits() {
    int8_matches_fake_quantisation(models::mlp([32, 1, 4, 4], &[7, 9], 4).unwrap(), 4);
    int8_matches_fake_quantisation(models::cnn([32, 1, 4, 4], &[5, 6], 4).unwrap(), 4);
    let relu6 = models::Activation::Relu6;
    int8_matches_fake_quantisation(models::mobilenet([32, 1, 4, 4], 0.25, relu6, 4).unwrap(), 4);
}

#[test]
fn int8_export_refuses_models_it_cannot_run_in_one_line() {
    let g = models::resnet([2, 1, 8, 8], 8, [4, 4, 4], 3)
        .unwrap()
        .quantization_aware(0.01)
        .unwrap();
    let err = wgdistill::graph::int8::export(&g, &BTreeMap::new())
        .expect_err("refused")
        .to_string();
    assert!(err.contains("int8") && !err.contains('\n'), "{err}");
    let float = models::cnn([2, 1, 4, 4], &[4], 3).unwrap();
    let err = wgdistill::graph::int8::export(&float, &BTreeMap::new())
        .expect_err("refused")
        .to_string();
    assert!(err.contains("qat = true"), "{err}");
    // A quantisation-aware model that has observed nothing has placeholder scales.
    let Some(gpu) = gpu() else { return };
    let g = float.quantization_aware(0.01).unwrap();
    let host = Weights::init(gpu, &g, 1).unwrap().to_host(gpu).unwrap();
    let err = wgdistill::graph::int8::export(&g, &host)
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("quant.range") && err.contains("observed no data"),
        "{err}"
    );
}

#[test]
fn kd_steps_with_a_frozen_teacher_and_a_fitnet_adapter_train_the_student() {
    let Some(gpu) = gpu() else { return };
    let batch = 32;
    let teacher = models::mlp([batch, 1, 4, 4], &[32, 24], 4).unwrap();
    let tw = Weights::init(gpu, &teacher, 8).unwrap();
    let student = models::mlp([batch, 1, 4, 4], &[8], 4).unwrap();
    let sw = Weights::init(gpu, &student, 9).unwrap();
    let frozen_before = tw.to_host(gpu).unwrap();
    let hint = LossSpec {
        loss: loss("hint"),
        weight: 1.0,
        student_taps: vec!["hidden.0".into()],
        teacher_taps: vec!["hidden.1".into()],
        adapter: Some(Adapter::Linear),
        paraphraser: None,
    };
    let spec = StepSpec {
        student: &student,
        student_weights: &sw,
        teacher: Some((&teacher, &tw)),
        losses: vec![LossSpec::logits(kd(4.0), 1.0), hint],
        optimizer: sgd(0.05),
        seed: 1,
    };
    let step = TrainStep::compile(gpu, &spec).unwrap();
    let (x, y) = synthetic(64, 10);
    step.run(gpu, &x[..batch * 16], &y[..batch]).unwrap();
    let first = step.losses(gpu).unwrap();
    for _ in 0..60 {
        step.run(gpu, &x[..batch * 16], &y[..batch]).unwrap();
    }
    let last = step.losses(gpu).unwrap();
    for (a, b) in first.iter().zip(&last) {
        assert!(b.2 < a.2, "{}: {} → {}", a.0, a.2, b.2);
    }
    assert_eq!(
        tw.to_host(gpu).unwrap(),
        frozen_before,
        "the teacher is frozen"
    );
    assert_eq!(step.adapters().len(), 1);
    assert!(step.adapters()[0].get("adapters.1.weight").is_some());
    assert!(
        sw.get("adapters.1.weight").is_none(),
        "adapters are not part of the student"
    );
    // One update launch for the student's four parameters, one for the adapter's two.
    let updates = step
        .into_bound()
        .kernel_names()
        .iter()
        .filter(|k| k.starts_with("optimizer::sgd"))
        .count();
    assert_eq!(updates, 2);
}

#[test]
fn graph_errors_name_the_node_and_shapes() {
    let mut g = Graph::new();
    let x = g.input("x", &[2, 3, 8, 8], DType::F32).unwrap();
    let e = g.linear("fc", x, 4, true).unwrap_err().to_string();
    assert!(e.starts_with("fc:") && e.contains("[2, 3, 8, 8]"), "{e}");
    let e = g
        .conv2d(
            "conv",
            x,
            ConvLayer {
                out: 4,
                kernel: 11,
                stride: 1,
                padding: 0,
                bias: false,
                groups: 1,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("conv:") && e.contains("11×11"), "{e}");
    let m = models::mlp([2, 1, 4, 4], &[3], 2).unwrap();
    let e = m.tapped("hidden.7").unwrap_err().to_string();
    assert!(
        e.contains("hidden.7") && e.contains("hidden.0") && e.contains("logits"),
        "{e}"
    );
    let a = g.input("a", &[2, 3], DType::F32).unwrap();
    let b = g.input("b", &[2, 4], DType::F32).unwrap();
    let e = g.add(a, b).unwrap_err().to_string();
    assert!(e.contains("[2, 3]") && e.contains("[2, 4]"), "{e}");
}

#[test]
fn feature_losses_on_cnn_taps_train_through_a_1x1_conv_adapter() {
    let Some(gpu) = gpu() else { return };
    let batch = 8;
    let teacher = models::cnn([batch, 1, 8, 8], &[8, 12], 4).unwrap();
    let tw = Weights::init(gpu, &teacher, 20).unwrap();
    let student = models::cnn([batch, 1, 8, 8], &[4, 6], 4).unwrap();
    let sw = Weights::init(gpu, &student, 21).unwrap();
    let tap = |loss, adapter| LossSpec {
        loss,
        weight: 1.0,
        student_taps: vec!["features.3".into()],
        teacher_taps: vec!["features.3".into()],
        adapter,
        paraphraser: None,
    };
    let spec = StepSpec {
        student: &student,
        student_weights: &sw,
        teacher: Some((&teacher, &tw)),
        losses: vec![
            tap(loss("hint"), Some(Adapter::Conv1x1)),
            tap(loss("at"), None),
            LossSpec {
                loss: loss("rkd_distance"),
                weight: 1.0,
                student_taps: vec!["features.7".into()],
                teacher_taps: vec!["features.7".into()],
                adapter: None,
                paraphraser: None,
            },
        ],
        optimizer: sgd(0.02),
        seed: 3,
    };
    let step = TrainStep::compile(gpu, &spec).unwrap();
    let x = data(batch * 64, 22);
    let y: Vec<i32> = (0..batch as i32).map(|i| i % 4).collect();
    step.run(gpu, &x, &y).unwrap();
    let first = step.losses(gpu).unwrap();
    for _ in 0..40 {
        step.run(gpu, &x, &y).unwrap();
    }
    let last = step.losses(gpu).unwrap();
    for (a, b) in first.iter().zip(&last) {
        assert!(b.2.is_finite() && b.2 < a.2, "{}: {} → {}", a.0, a.2, b.2);
    }
    assert!(
        step.adapters()[0]
            .get("adapters.0.weight")
            .is_some_and(|w| w.shape() == [8, 4, 1, 1])
    );
}

#[test]
fn mismatched_adapters_and_missing_teachers_are_compile_errors() {
    let Some(gpu) = gpu() else { return };
    let student = models::mlp([4, 1, 4, 4], &[8], 4).unwrap();
    let sw = Weights::init(gpu, &student, 1).unwrap();
    let spec = |losses| StepSpec {
        student: &student,
        student_weights: &sw,
        teacher: None,
        losses,
        optimizer: sgd(0.1),
        seed: 0,
    };
    let e = TrainStep::compile(gpu, &spec(vec![LossSpec::logits(kd(4.0), 1.0)]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("teacher"), "{e}");
    let teacher = models::mlp([4, 1, 4, 4], &[16], 4).unwrap();
    let tw = Weights::init(gpu, &teacher, 2).unwrap();
    let bad = LossSpec {
        loss: loss("hint"),
        weight: 1.0,
        student_taps: vec!["hidden.0".into()],
        teacher_taps: vec!["hidden.0".into()],
        adapter: Some(Adapter::Conv1x1),
        paraphraser: None,
    };
    let s = StepSpec {
        student: &student,
        student_weights: &sw,
        teacher: Some((&teacher, &tw)),
        losses: vec![bad],
        optimizer: sgd(0.1),
        seed: 0,
    };
    let e = TrainStep::compile(gpu, &s).err().unwrap().to_string();
    assert!(e.contains("Conv1x1") && e.contains("[4, 8]"), "{e}");
}

/// Checks the first, middle and last element of every parameter's gradient against central
/// differences of the f64 reference, within `tol` (absolute, and ten times that relative).
fn check_sampled_gradients(
    gpu: &Gpu,
    name: &str,
    g: &Graph,
    w: &Weights,
    x: &[f32],
    labels: &[i32],
    tol: f64,
) {
    let got = gpu_grads(gpu, g, w, x, labels);
    let host = common::host_params(gpu, w);
    let xd = widen(x);
    let yl: Vec<usize> = labels.iter().map(|&y| y as usize).collect();
    for (pname, grad) in &got {
        let mut params = host.clone();
        let n = grad.len();
        for i in [0, n / 2, n - 1] {
            let orig = params[pname][i];
            params.get_mut(pname).unwrap()[i] = orig + 1e-5;
            let up = cpu_graph::ce_loss(g, &params, &xd, &yl);
            params.get_mut(pname).unwrap()[i] = orig - 1e-5;
            let down = cpu_graph::ce_loss(g, &params, &xd, &yl);
            params.get_mut(pname).unwrap()[i] = orig;
            let fd = (up - down) / 2e-5;
            let gv = f64::from(grad[i]);
            assert!(
                (gv - fd).abs() <= tol + 10.0 * tol * fd.abs(),
                "{name} {pname}[{i}]: gpu {gv}, finite difference {fd}"
            );
        }
    }
}

/// A CNN at a real batch size (128 images of 28×28): batch norm's statistics span 100,352
/// values per channel and the first convolution's weight gradient as many positions, past the
/// 65,535 loop iterations after which llvmpipe stops an invocation. Small test shapes cannot
/// catch a reduction that is cut short there.
#[test]
fn cnn_gradients_at_a_real_batch_size_match_finite_differences() {
    let Some(gpu) = gpu() else { return };
    let g = models::cnn([128, 1, 28, 28], &[8, 16], 10).unwrap();
    let w = Weights::init(gpu, &g, 40).unwrap();
    let labels: Vec<i32> = (0..128).map(|i| i * 7 % 10).collect();
    check_sampled_gradients(gpu, "cnn b128", &g, &w, &data(128 * 784, 41), &labels, 1e-4);
}

#[test]
fn resnet_gradients_match_finite_differences_on_sampled_elements() {
    let Some(gpu) = gpu() else { return };
    let g = models::resnet([2, 1, 8, 8], 8, [2, 3, 4], 3).unwrap();
    for name in [
        "conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer3.0.bn2.running_var",
        "fc.bias",
    ] {
        assert!(g.find(name).is_some(), "{name} missing");
    }
    let w = Weights::init(gpu, &g, 30).unwrap();
    check_sampled_gradients(gpu, "resnet", &g, &w, &data(2 * 64, 31), &[0, 2], 5e-4);
    assert!(models::resnet([2, 1, 8, 8], 10, [2, 3, 4], 3).is_err());
}

#[test]
fn loss_sums_run_only_when_the_losses_are_read() {
    let Some(gpu) = gpu() else { return };
    // The hint's squared differences (32 × 256) take two stages of sums.
    let teacher = models::mlp([32, 1, 4, 4], &[256], 4).unwrap();
    let tw = Weights::init(gpu, &teacher, 50).unwrap();
    let student = models::mlp([32, 1, 4, 4], &[8], 4).unwrap();
    let (wa, wb) = (
        Weights::init(gpu, &student, 51).unwrap(),
        Weights::init(gpu, &student, 51).unwrap(),
    );
    let spec = |w| StepSpec {
        student: &student,
        student_weights: w,
        teacher: Some((&teacher, &tw)),
        losses: vec![
            LossSpec::logits(loss("ce"), 0.5),
            LossSpec::logits(kd(4.0), 0.5),
            LossSpec {
                loss: loss("hint"),
                weight: 0.1,
                student_taps: vec!["hidden.0".into()],
                teacher_taps: vec!["hidden.0".into()],
                adapter: Some(Adapter::Linear),
                paraphraser: None,
            },
        ],
        optimizer: sgd(0.1),
        seed: 0,
    };
    // Two identical steps: one fetches its losses every step, the other never asks.
    let fetching = TrainStep::compile(gpu, &spec(&wa)).unwrap();
    let plain = TrainStep::compile(gpu, &spec(&wb)).unwrap();
    let mut fetched = Vec::new();
    for seed in 0..3 {
        let (x, y) = synthetic(32, 52 + seed);
        assert!(fetching.run_fetching_losses(gpu, &x, &y).unwrap());
        fetched = loop {
            if let Some(v) = fetching.poll_losses(gpu).unwrap() {
                break v;
            }
        };
        plain.run(gpu, &x, &y).unwrap();
    }
    // Reading the losses sums the last step's rows: the same bits the fetching step got, and
    // the same weights (the sums feed nothing else).
    assert_eq!(plain.losses(gpu).unwrap(), fetched);
    assert_eq!(plain.losses(gpu).unwrap(), fetched, "read twice");
    assert_eq!(wa.to_host(gpu).unwrap(), wb.to_host(gpu).unwrap());
    // And a plain step launches no sum.
    let kernels = plain.into_bound().kernel_names();
    assert!(
        !kernels.iter().any(|k| k.contains("sum_chunks")),
        "{kernels:?}"
    );
}

#[test]
fn value_launches_are_deferred_only_when_nothing_else_needs_them() {
    let Some(gpu) = gpu() else { return };
    let x = gpu.upload(&[6], &data(6, 60)).unwrap();
    let v = gpu.empty(&[1], DType::F32).unwrap();
    let (make_y, y) = elementwise::scale_plan(gpu, &x, 2.0).unwrap();
    let sum_of = |t: &Tensor| -> Vec<Dispatch> {
        let mut plan = Vec::new();
        reduce::sum_into(gpu, &mut plan, t, &v, 1.0).unwrap();
        plan
    };
    // z is for the host (nothing in the plan reads it), so y's scale and z's stay.
    let (make_z, _z) = elementwise::scale_plan(gpu, &y, 3.0).unwrap();
    let moves_keeping = |plan: Vec<Vec<Dispatch>>, keep: &[&Tensor]| {
        let (_, from, moved) = defer_value_launches(plan.concat(), &[&v], keep);
        (from, moved)
    };
    let moves = |plan: Vec<Vec<Dispatch>>| moves_keeping(plan, &[]);
    // The sum of y moves after z's scale.
    let plan = vec![vec![make_y.clone()], sum_of(&y), vec![make_z.clone()]];
    assert_eq!(moves(plan), (2, vec![0, 2, 1]));
    // With y changed in place after it, the sum must read y where it was: it stays.
    let update_y = elementwise::axpy_plan(gpu, 1.0, &x, &y).unwrap();
    let plan = vec![vec![make_y.clone()], sum_of(&y), vec![update_y]];
    assert_eq!(moves(plan), (3, vec![0, 1, 2]));
    // An intermediate that only the sum reads moves with it.
    let (make_w, w) = elementwise::scale_plan(gpu, &y, 0.5).unwrap();
    let plan = vec![
        vec![make_y.clone(), make_w.clone()],
        sum_of(&w),
        vec![make_z],
    ];
    assert_eq!(moves(plan), (2, vec![0, 2, 3, 1]));
    // Not if a launch that stays reads it too.
    let (read_w, _) = elementwise::scale_plan(gpu, &w, 3.0).unwrap();
    let plan = vec![
        vec![make_y.clone(), make_w.clone()],
        sum_of(&w),
        vec![read_w],
    ];
    assert_eq!(moves(plan), (3, vec![0, 1, 3, 2]));
    // Nor if the host reads it: then its writer stays, and the sum alone moves.
    let plan = || vec![vec![make_y.clone(), make_w.clone()], sum_of(&w)];
    assert_eq!(moves(plan()), (1, vec![0, 1, 2]));
    assert_eq!(moves_keeping(plan(), &[&w]), (2, vec![0, 1, 2]));
    // A launch that adds into a value stays (running the moved launches twice must not change
    // it), as does one that reads what the plan does not make (x, which the host writes).
    let add_into_v = elementwise::axpy_plan(gpu, 1.0, &y.view_at(0, &[1]).unwrap(), &v).unwrap();
    assert_eq!(
        moves(vec![vec![make_y.clone(), add_into_v]]),
        (2, vec![0, 1])
    );
    assert_eq!(moves(vec![sum_of(&x)]), (1, vec![0]));
    // A sum over more than MAX_DEFERRED_READ bytes keeps its first stage in place.
    const { assert!(20000 * 4 > MAX_DEFERRED_READ) };
    let big = gpu.upload(&[20000], &data(20000, 61)).unwrap();
    let (make_big, big_y) = elementwise::scale_plan(gpu, &big, 2.0).unwrap();
    let stages = sum_of(&big_y);
    assert_eq!(stages.len(), 2);
    assert_eq!(moves(vec![vec![make_big], stages]), (2, vec![0, 1, 2]));
    // Without values, nothing moves.
    let (_, from, _) = defer_value_launches([vec![make_y], sum_of(&y)].concat(), &[], &[]);
    assert_eq!(from, 2);
}

#[test]
fn losses_are_fetched_in_the_background_without_creating_anything() {
    if gpu().is_none() {
        return;
    }
    let own = Gpu::from_env().unwrap();
    let gpu = &own;
    let g = models::mlp([16, 1, 4, 4], &[8], 4).unwrap();
    let w = Weights::init(gpu, &g, 40).unwrap();
    let spec = StepSpec {
        student: &g,
        student_weights: &w,
        teacher: None,
        losses: vec![LossSpec::logits(loss("ce"), 1.0)],
        optimizer: sgd(0.1),
        seed: 0,
    };
    let step = TrainStep::compile(gpu, &spec).unwrap();
    let (x, y) = synthetic(16, 41);
    let before = gpu.stats();
    assert!(step.run_fetching_losses(gpu, &x, &y).unwrap());
    let blocking = step.losses(gpu).unwrap();
    // A second request while the first is uncollected is declined, not queued.
    assert!(!step.run_fetching_losses(gpu, &x, &y).unwrap());
    let mut fetched = None;
    for _ in 0..500 {
        if let Some(v) = step.poll_losses(gpu).unwrap() {
            fetched = Some(v);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let fetched = fetched.expect("the fetched losses arrive");
    assert_eq!(fetched[0].2, blocking[0].2);
    assert!(step.poll_losses(gpu).unwrap().is_none(), "collected once");
    for _ in 0..3 {
        step.run_fetching_losses(gpu, &x, &y).unwrap();
        step.losses(gpu).unwrap();
        while step.poll_losses(gpu).unwrap().is_none() {}
    }
    let after = gpu.stats();
    // Only the blocking readbacks above borrow staging buffers (from the pool).
    assert_eq!(after.bind_groups, before.bind_groups);
    assert_eq!(after.pipelines, before.pipelines);
    assert!(
        after.buffers <= before.buffers + 1,
        "{before:?} → {after:?}"
    );
}

#[test]
fn a_sibling_step_for_the_last_batch_shares_the_optimizer_and_adapters() {
    let Some(gpu) = gpu() else { return };
    let teacher = models::mlp([32, 1, 4, 4], &[16], 4).unwrap();
    let tw = Weights::init(gpu, &teacher, 50).unwrap();
    let tail_teacher = models::mlp([8, 1, 4, 4], &[16], 4).unwrap();
    let student = models::mlp([32, 1, 4, 4], &[8], 4).unwrap();
    let tail_student = models::mlp([8, 1, 4, 4], &[8], 4).unwrap();
    let sw = Weights::init(gpu, &student, 51).unwrap();
    let losses = || {
        vec![
            LossSpec::logits(loss("ce"), 1.0),
            LossSpec {
                loss: loss("hint"),
                weight: 1.0,
                student_taps: vec!["hidden.0".into()],
                teacher_taps: vec!["hidden.0".into()],
                adapter: Some(Adapter::Linear),
                paraphraser: None,
            },
        ]
    };
    let main = StepSpec {
        student: &student,
        student_weights: &sw,
        teacher: Some((&teacher, &tw)),
        losses: losses(),
        optimizer: sgd(0.05),
        seed: 0,
    };
    let tail = StepSpec {
        student: &tail_student,
        student_weights: &sw,
        teacher: Some((&tail_teacher, &tw)),
        losses: losses(),
        optimizer: sgd(0.05),
        seed: 0,
    };
    let a = TrainStep::compile(gpu, &main).unwrap();
    let b = TrainStep::compile_sibling(gpu, &tail, &a).unwrap();
    let (x, y) = synthetic(40, 52);
    a.run(gpu, &x[..32 * 16], &y[..32]).unwrap();
    b.run(gpu, &x[32 * 16..], &y[32..]).unwrap();
    assert_eq!(a.steps_taken(gpu).unwrap(), 2);
    assert_eq!(b.steps_taken(gpu).unwrap(), 2);
    let (wa, wb) = (
        a.adapters()[0].get("adapters.1.weight").unwrap(),
        b.adapters()[0].get("adapters.1.weight").unwrap(),
    );
    assert!(
        wa.shares_buffer_with(wb),
        "one adapter, trained by both steps"
    );
}

#[test]
fn dropout_in_a_graph_masks_forward_and_backward_alike_and_changes_each_step() {
    let Some(gpu) = gpu() else { return };
    let mut g = Graph::new();
    let w = g
        .param("w", &[8, 64], wgdistill::graph::Init::Uniform(1.0))
        .unwrap();
    let d = g.dropout(w, 0.25).unwrap();
    let logits = g.linear("head", d, 3, true).unwrap();
    g.set_output(logits).unwrap();
    let weights = Weights::init(gpu, &g, 60).unwrap();
    let labels = gpu.upload(&[8], &[0i32, 1, 2, 0, 1, 2, 0, 1]).unwrap();
    let step = gpu.zeros(&[1], DType::U32).unwrap();
    let mut masks = Vec::new();
    for k in 0..2u32 {
        gpu.write(&step, &[k]).unwrap();
        let mut plan = Vec::new();
        let fwd = plan_forward(
            gpu,
            &g,
            &weights,
            &BTreeMap::new(),
            Mode::Train,
            Some(&step),
            &mut plan,
        )
        .unwrap();
        let mut lp = response::ce(gpu, fwd.get(logits), &labels).unwrap();
        plan.extend(lp.dispatches);
        let grads = plan_backward(
            gpu,
            &g,
            &fwd,
            vec![(logits, lp.grads.remove(0))],
            &[],
            &mut plan,
        )
        .unwrap();
        gpu.execute(&plan).unwrap();
        let (wv, yv, gw) = (
            gpu.read::<f32>(fwd.get(w)).unwrap(),
            gpu.read::<f32>(fwd.get(d)).unwrap(),
            gpu.read::<f32>(&grads["w"]).unwrap(),
        );
        let mut kept = 0;
        for i in 0..wv.len() {
            let on = yv[i] != 0.0;
            kept += usize::from(on);
            if on {
                assert!(
                    (yv[i] - wv[i] / 0.75).abs() < 1e-5,
                    "kept values are scaled by 1/(1-p)"
                );
            } else {
                assert_eq!(gw[i], 0.0, "a dropped element gets no gradient");
            }
        }
        let rate = kept as f64 / wv.len() as f64;
        assert!((rate - 0.75).abs() < 0.1, "keep rate {rate}");
        masks.push(yv.iter().map(|v| *v != 0.0).collect::<Vec<_>>());
    }
    assert_ne!(masks[0], masks[1], "a new mask each step");
    // Evaluation mode is the identity.
    let mut plan = Vec::new();
    let fwd = plan_forward(
        gpu,
        &g,
        &weights,
        &BTreeMap::new(),
        Mode::Eval,
        None,
        &mut plan,
    )
    .unwrap();
    gpu.execute(&plan).unwrap();
    assert_eq!(
        gpu.read::<f32>(fwd.get(d)).unwrap(),
        gpu.read::<f32>(fwd.get(w)).unwrap()
    );
}

#[test]
fn the_memory_planner_reuses_buffers_without_changing_results() {
    let Some(gpu) = gpu() else { return };
    for (name, g) in [
        ("mlp", models::mlp([8, 1, 6, 6], &[32, 16], 5).unwrap()),
        ("cnn", models::cnn([4, 2, 8, 8], &[4, 6], 5).unwrap()),
        (
            "resnet8",
            models::resnet([2, 1, 8, 8], 8, [4, 4, 8], 5).unwrap(),
        ),
    ] {
        let w = Weights::init(gpu, &g, 70).unwrap();
        let xs = g.shape(g.find("x").unwrap()).to_vec();
        let batch = xs[0];
        let tx = gpu.upload(&xs, &data(xs.iter().product(), 71)).unwrap();
        let tl = gpu
            .upload(
                &[batch],
                &(0..batch as i32).map(|i| i % 5).collect::<Vec<_>>(),
            )
            .unwrap();
        let inputs: BTreeMap<String, Tensor> = [("x".to_string(), tx)].into();
        let mut plan = Vec::new();
        let fwd = plan_forward(gpu, &g, &w, &inputs, Mode::Train, None, &mut plan).unwrap();
        let out = g.output.unwrap();
        let mut lp = response::ce(gpu, fwd.get(out), &tl).unwrap();
        plan.extend(lp.dispatches);
        let grads = plan_backward(
            gpu,
            &g,
            &fwd,
            vec![(out, lp.grads.remove(0))],
            &[],
            &mut plan,
        )
        .unwrap();
        let mut planned = plan.clone();
        let mut pinned: Vec<&Tensor> = grads.values().collect();
        pinned.push(&lp.loss);
        let report = wgdistill::graph::plan_memory(gpu, &mut planned, &pinned).unwrap();
        assert!(
            report.slots < report.buffers && report.after < report.before,
            "{name}: {report:?}"
        );
        let read_all = |gpu: &Gpu| -> Vec<Vec<f32>> {
            let mut v: Vec<Vec<f32>> = grads
                .values()
                .map(|t| gpu.read::<f32>(t).unwrap())
                .collect();
            v.push(gpu.read::<f32>(&lp.loss).unwrap());
            v
        };
        // Training-mode gradients use batch statistics, so the running statistics that each run
        // moves do not change them: the two plans must agree bit for bit.
        gpu.execute(&plan).unwrap();
        let unplanned = read_all(gpu);
        gpu.execute(&planned).unwrap();
        assert_eq!(
            read_all(gpu),
            unplanned,
            "{name}: planned and unplanned runs agree"
        );
    }
}

#[test]
fn a_compiled_kd_step_folds_its_buffers() {
    let Some(gpu) = gpu() else { return };
    let teacher = models::mlp([64, 1, 8, 8], &[128, 128], 10).unwrap();
    let tw = Weights::init(gpu, &teacher, 80).unwrap();
    let student = models::mlp([64, 1, 8, 8], &[16], 10).unwrap();
    let sw = Weights::init(gpu, &student, 81).unwrap();
    let spec = StepSpec {
        student: &student,
        student_weights: &sw,
        teacher: Some((&teacher, &tw)),
        losses: vec![
            LossSpec::logits(loss("ce"), 0.1),
            LossSpec::logits(kd(4.0), 0.9),
        ],
        optimizer: sgd(0.1),
        seed: 0,
    };
    let step = TrainStep::compile(gpu, &spec).unwrap();
    let m = step.memory();
    // The intermediates share few slots (8 buffers in 4 when this was last changed: the hidden
    // layers' ReLUs live in their matmuls, the parameters' gradients in their arena, which is
    // pinned, the terms' row losses in buffers of their own, as their sums are deferred, and
    // CE's gradient is the seed, its weight folded into its launch; so there are fewer to fold
    // than there were).
    assert!(m.slots * 2 <= m.buffers && m.after < m.before, "{m:?}");
}

#[test]
fn several_seeds_on_one_value_sum_like_one_seed() {
    let Some(gpu) = gpu() else { return };
    let g = models::mlp([6, 1, 2, 2], &[5], 3).unwrap();
    let w = Weights::init(gpu, &g, 90).unwrap();
    let x = gpu.upload(&[6, 1, 2, 2], &data(24, 91)).unwrap();
    let inputs: BTreeMap<String, Tensor> = [("x".to_string(), x)].into();
    let out = g.output.unwrap();
    let hidden = g.tapped("hidden.0").unwrap();
    let seeds_host = [data(18, 92), data(18, 93), data(18, 94)];
    let hidden_seed = data(30, 95);
    let run = |seeds: Vec<Vec<f32>>| -> BTreeMap<String, Vec<f32>> {
        let mut plan = Vec::new();
        let fwd = plan_forward(gpu, &g, &w, &inputs, Mode::Train, None, &mut plan).unwrap();
        let mut s: Vec<(wgdistill::graph::Value, Tensor)> = seeds
            .iter()
            .map(|v| (out, gpu.upload(&[6, 3], v).unwrap()))
            .collect();
        s.push((hidden, gpu.upload(&[6, 5], &hidden_seed).unwrap()));
        let grads = plan_backward(gpu, &g, &fwd, s, &[], &mut plan).unwrap();
        gpu.execute(&plan).unwrap();
        grads
            .iter()
            .map(|(k, t)| (k.clone(), gpu.read::<f32>(t).unwrap()))
            .collect()
    };
    let separate = run(seeds_host.to_vec());
    let summed: Vec<f32> = (0..18)
        .map(|i| seeds_host.iter().map(|s| s[i]).sum())
        .collect();
    let together = run(vec![summed]);
    for (k, v) in &separate {
        wgdistill::reference::allclose(v, &widen(&together[k]), 1e-5, 1e-6)
            .unwrap_or_else(|e| panic!("{k}: {e}"));
    }
}

/// VID through its regressor: the term's `log_scale` is created once (v = 5), trained with the
/// term's weight applied, shared with a sibling step, saved and restored with the step's state,
/// and kept out of the student's weights like the regressor.
#[test]
fn vid_trains_its_regressor_and_its_own_variance() {
    let Some(gpu) = gpu() else { return };
    let batch = 8;
    let teacher = models::cnn([batch, 1, 8, 8], &[8, 12], 4).unwrap();
    let tw = Weights::init(gpu, &teacher, 30).unwrap();
    let student = models::cnn([batch, 1, 8, 8], &[4, 6], 4).unwrap();
    let x = data(batch * 64, 32);
    let y: Vec<i32> = (0..batch as i32).map(|i| i % 4).collect();
    let compile = |w: &Weights, weight: f32| {
        let vid = LossSpec {
            loss: loss("vid"),
            weight,
            student_taps: vec!["features.3".into()],
            teacher_taps: vec!["features.3".into()],
            adapter: Some(Adapter::VidRegressor),
            paraphraser: None,
        };
        let spec = StepSpec {
            student: &student,
            student_weights: w,
            teacher: Some((&teacher, &tw)),
            losses: vec![vid],
            optimizer: sgd(0.05),
            seed: 4,
        };
        TrainStep::compile(gpu, &spec).unwrap()
    };
    let log_scale = |step: &TrainStep| -> Vec<f32> {
        let t = step.parameters()[0].get("terms.0.log_scale").unwrap();
        gpu.read::<f32>(t).unwrap()
    };
    // One step at weights 1 and 3 from the same start: the variance moves three times as far.
    let moved = |weight: f32| -> Vec<f32> {
        let w = Weights::init(gpu, &student, 31).unwrap();
        let step = compile(&w, weight);
        let before = log_scale(&step);
        let v: Vec<f64> = before.iter().map(|&a| f64::from(a).exp().ln_1p()).collect();
        assert!(v.iter().all(|v| (v + 1e-5 - 5.0).abs() < 1e-4), "{v:?}");
        step.run(gpu, &x, &y).unwrap();
        log_scale(&step)
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect()
    };
    let (once, thrice) = (moved(1.0), moved(3.0));
    assert_eq!(once.len(), 8, "one variance per teacher channel");
    for (a, b) in once.iter().zip(&thrice) {
        assert!(*a != 0.0 && (b / a - 3.0).abs() < 1e-3, "{a} vs {b}");
    }

    let sw = Weights::init(gpu, &student, 31).unwrap();
    let step = compile(&sw, 1.0);
    step.run(gpu, &x, &y).unwrap();
    let first = step.losses(gpu).unwrap()[0].2;
    for _ in 0..30 {
        step.run(gpu, &x, &y).unwrap();
    }
    let last = step.losses(gpu).unwrap()[0].2;
    assert!(last.is_finite() && last < first, "vid {first} → {last}");
    let regressor = &step.adapters()[0];
    for (name, shape) in [
        ("adapters.0.0.weight", [8, 4, 1, 1]),
        ("adapters.0.2.weight", [8, 8, 1, 1]),
        ("adapters.0.4.weight", [8, 8, 1, 1]),
    ] {
        assert_eq!(regressor.get(name).unwrap().shape(), shape, "{name}");
    }
    assert!(regressor.get("adapters.0.0.bias").is_none(), "no biases");
    let host = sw.to_host(gpu).unwrap();
    assert!(
        host.keys()
            .all(|k| !k.starts_with("adapters.") && !k.starts_with("terms."))
    );

    // A sibling shares the variance; a fresh step restores it from the saved state.
    let sibling = TrainStep::compile_sibling(
        gpu,
        &StepSpec {
            student: &student,
            student_weights: &sw,
            teacher: Some((&teacher, &tw)),
            losses: vec![LossSpec {
                adapter: Some(Adapter::VidRegressor),
                ..LossSpec::taps(loss("vid"), 1.0, "features.3", "features.3")
            }],
            optimizer: sgd(0.05),
            seed: 4,
        },
        &step,
    )
    .unwrap();
    assert_eq!(log_scale(&sibling), log_scale(&step));
    let saved = step.save_state(gpu).unwrap();
    assert!(saved.contains_key("terms.0.log_scale"));
    let fresh = compile(&Weights::init(gpu, &student, 31).unwrap(), 1.0);
    assert_ne!(log_scale(&fresh), log_scale(&step));
    fresh.load_state(gpu, "saved", &saved).unwrap();
    assert_eq!(log_scale(&fresh), log_scale(&step));
}

/// CRD in a compiled step: both embedding heads train (the teacher does not), the banks change
/// only at the batch's own rows, which come out of unit length, Z is set by the first step and
/// kept, a sibling shares the memory, and the state saves and restores it.
#[test]
fn crd_steps_update_their_banks_in_place_and_train_both_heads() {
    let Some(gpu) = gpu() else { return };
    let (batch, n, k) = (8, 40, 6);
    let teacher = models::cnn([batch, 1, 8, 8], &[8, 12], 4).unwrap();
    let tw = Weights::init(gpu, &teacher, 40).unwrap();
    let teacher_before = tw.to_host(gpu).unwrap();
    let student = models::cnn([batch, 1, 8, 8], &[4, 6], 4).unwrap();
    let sw = Weights::init(gpu, &student, 41).unwrap();
    let crd = || LossSpec {
        loss: loss("crd")
            .with_all([
                ("nce_k", k as f64),
                ("feat_dim", 16.0),
                ("n_data", n as f64),
            ])
            .unwrap(),
        ..LossSpec::taps(loss("crd"), 0.8, "features.7", "features.7")
    };
    let spec = StepSpec {
        student: &student,
        student_weights: &sw,
        teacher: Some((&teacher, &tw)),
        losses: vec![LossSpec::logits(loss("ce"), 1.0), crd()],
        optimizer: sgd(0.05),
        seed: 7,
    };
    let with_adapter = StepSpec {
        student: &student,
        student_weights: &sw,
        teacher: Some((&teacher, &tw)),
        losses: vec![LossSpec {
            adapter: Some(Adapter::Linear),
            ..crd()
        }],
        optimizer: sgd(0.05),
        seed: 7,
    };
    let e = TrainStep::compile(gpu, &with_adapter)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("own embedding heads"), "{e}");
    let step = TrainStep::compile(gpu, &spec).unwrap();
    assert_eq!(step.sample_rows().collect::<Vec<_>>(), [(1, k + 1, n)]);
    let memory = |step: &TrainStep, name: &str| -> Vec<f32> {
        gpu.read::<f32>(
            step.parameters()[0]
                .get(&format!("terms.1.{name}"))
                .unwrap(),
        )
        .unwrap()
    };
    let heads = |step: &TrainStep| -> Vec<Vec<f32>> {
        step.adapters()
            .iter()
            .flat_map(|w| w.iter().map(|(_, t)| gpu.read::<f32>(t).unwrap()))
            .collect()
    };
    let bank_before = memory(&step, "memory_student");
    assert_eq!(bank_before.len(), n * 16);
    assert_eq!(memory(&step, "z"), [0.0, 0.0]);
    let heads_before = heads(&step);
    assert_eq!(
        heads_before.len(),
        4,
        "embed_s and embed_t, weight and bias each"
    );

    // Samples 3, 5, …, 17 of a 40-sample set, each with 6 negatives from other classes.
    let labels: Vec<i32> = (0..n as i32).map(|i| i % 4).collect();
    let mut sampler = wgdistill::data::NegativeSampler::new(&labels, 4, k);
    let samples: Vec<usize> = (0..batch).map(|i| 3 + 2 * i).collect();
    let mut rows = Vec::new();
    sampler.fill(&samples, 9, &mut rows);
    for (b, r) in rows.chunks(k + 1).enumerate() {
        assert_eq!(r[0], samples[b] as i32);
        let mut negatives = r[1..].to_vec();
        negatives.sort_unstable();
        negatives.dedup();
        assert_eq!(negatives.len(), k, "without replacement");
        assert!(
            negatives
                .iter()
                .all(|&j| labels[j as usize] != labels[samples[b]])
        );
    }
    let bad = vec![n as i32; rows.len()];
    let e = step
        .write_sample_rows(gpu, 1, &bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside"), "{e}");
    step.write_sample_rows(gpu, 1, &rows).unwrap();
    let x = data(batch * 64, 42);
    let y: Vec<i32> = samples.iter().map(|&i| labels[i]).collect();
    step.run(gpu, &x, &y).unwrap();
    let crd_loss = step.losses(gpu).unwrap()[1].2;
    assert!(crd_loss.is_finite() && crd_loss > 0.0, "{crd_loss}");

    let bank = memory(&step, "memory_student");
    for r in 0..n {
        let (old, new) = (&bank_before[r * 16..][..16], &bank[r * 16..][..16]);
        if samples.contains(&r) {
            let norm: f32 = new.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!(
                (norm - 1.0).abs() < 1e-5 && old != new,
                "row {r}: norm {norm}"
            );
        } else {
            assert_eq!(old, new, "row {r} is not the batch's and must not change");
        }
    }
    let z = memory(&step, "z");
    assert!(z.iter().all(|&v| v > 0.0), "{z:?}");
    step.run(gpu, &x, &y).unwrap();
    assert_eq!(memory(&step, "z"), z, "Z is kept after the first batch");
    let heads_after = heads(&step);
    for (a, b) in heads_before.iter().zip(&heads_after) {
        assert_ne!(a, b, "both heads train");
    }
    assert_eq!(
        tw.to_host(gpu).unwrap(),
        teacher_before,
        "the teacher stays frozen"
    );
    let exported = sw.to_host(gpu).unwrap();
    assert!(
        exported
            .keys()
            .all(|k| !k.starts_with("adapters.") && !k.starts_with("terms."))
    );

    let sibling = TrainStep::compile_sibling(gpu, &spec, &step).unwrap();
    assert_eq!(
        memory(&sibling, "memory_teacher"),
        memory(&step, "memory_teacher")
    );
    let saved = step.save_state(gpu).unwrap();
    for name in [
        "terms.1.memory_student",
        "terms.1.memory_teacher",
        "terms.1.z",
    ] {
        assert!(saved.contains_key(name), "{name}");
    }
    assert!(saved.contains_key("adapters.1.embed_t.linear.weight"));
    let fresh = TrainStep::compile(gpu, &spec).unwrap();
    fresh.load_state(gpu, "saved", &saved).unwrap();
    assert_eq!(
        memory(&fresh, "memory_student"),
        memory(&step, "memory_student")
    );
    assert_eq!(memory(&fresh, "z"), z);
}

/// A model of one 3×3 convolution to `c` channels (tapped `map`) and a linear classifier, on
/// (5, 2, 6, 6) inputs.
fn conv_model(c: usize) -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", &[5, 2, 6, 6], DType::F32).unwrap();
    let layer = ConvLayer {
        out: c,
        kernel: 3,
        stride: 1,
        padding: 1,
        bias: true,
        groups: 1,
    };
    let m = g.conv2d("conv", x, layer).unwrap();
    g.tap("map", m).unwrap();
    let flat = g.flatten(m).unwrap();
    let y = g.linear("fc", flat, 4, true).unwrap();
    g.set_output(y).unwrap();
    g
}

/// FT through a frozen paraphraser: the step's loss is the f64 FT between the student's map and
/// the encoder's factor of the teacher's map (the encoder interpreted in f64), the paraphraser's
/// weights never move while the student's do, and a sibling step shares them.
#[test]
fn a_frozen_paraphraser_gives_ft_the_teachers_factor() {
    let Some(gpu) = gpu() else { return };
    let (student, teacher) = (conv_model(3), conv_model(6));
    let sw = Weights::init(gpu, &student, 1).unwrap();
    let tw = Weights::init(gpu, &teacher, 2).unwrap();
    let encoder = paraphraser_graph(0, "x", &[5, 6, 6, 6], 0.5, false).unwrap();
    assert_eq!(encoder.shape(encoder.output.unwrap()), [5, 3, 6, 6]);
    let pw = Weights::init(gpu, &encoder, 3).unwrap();
    let term = LossSpec {
        paraphraser: Some(Paraphraser {
            rate: 0.5,
            weights: Some(pw.clone()),
        }),
        ..LossSpec::taps(loss("ft"), 1.0, "map", "map")
    };
    let spec = StepSpec {
        student: &student,
        student_weights: &sw,
        teacher: Some((&teacher, &tw)),
        losses: vec![term],
        optimizer: sgd(0.5),
        seed: 0,
    };
    let step = TrainStep::compile(gpu, &spec).unwrap();
    assert_eq!(step.frozen().len(), 1);
    let x = data(5 * 2 * 36, 4);
    let labels = [0, 1, 2, 3, 0];
    let (s_host, t_host, p_host) = (
        common::host_params(gpu, &sw),
        common::host_params(gpu, &tw),
        common::host_params(gpu, &pw),
    );
    step.run(gpu, &x, &labels).unwrap();
    let got = step.losses(gpu).unwrap()[0].2;
    let xd = widen(&x);
    let map = |g: &Graph, w: &BTreeMap<String, Vec<f64>>| {
        cpu_graph::forward(g, w, &xd)[g.tapped("map").unwrap().0].clone()
    };
    let t_map = map(&teacher, &t_host);
    let factor = cpu_graph::forward(&encoder, &p_host, &t_map)[encoder.output.unwrap().0].clone();
    let want =
        wgdistill::reference::feature::ft(&map(&student, &s_host), &factor, 5, 3, 3, 36, 2.0, 1.0)
            .loss;
    assert!(
        (f64::from(got) - want).abs() <= 1e-5 + 1e-4 * want.abs(),
        "ft through the paraphraser: gpu {got}, f64 {want}"
    );
    // Without the paraphraser the target is the raw map: another loss.
    let raw =
        wgdistill::reference::feature::ft(&map(&student, &s_host), &t_map, 5, 3, 6, 36, 2.0, 1.0)
            .loss;
    assert!(
        (raw - want).abs() > 1e-3,
        "the factor differs from the raw map: {raw} vs {want}"
    );
    let tail_student = {
        let mut g = conv_model(3);
        g.nodes[0].shape[0] = 5;
        g
    };
    let tail = StepSpec {
        student: &tail_student,
        ..spec
    };
    let sibling = TrainStep::compile_sibling(gpu, &tail, &step).unwrap();
    for _ in 0..3 {
        step.run(gpu, &x, &labels).unwrap();
        sibling.run(gpu, &x, &labels).unwrap();
    }
    assert_eq!(
        common::host_params(gpu, &step.frozen()[0]),
        p_host,
        "the paraphraser is frozen"
    );
    assert_eq!(common::host_params(gpu, &sibling.frozen()[0]), p_host);
    assert_ne!(common::host_params(gpu, &sw), s_host, "the student trains");
    let state = step.save_state(gpu).unwrap();
    assert!(
        state.contains_key("terms.0.paraphraser.encoder.6.weight"),
        "saved for --resume"
    );
}

/// A module over the teacher's features (inputs `teacher:TAP`): FT's paraphraser pretrained by
/// reconstruction, the teacher frozen; its loss falls. A tap the teacher lacks, or a step
/// without a teacher, is refused.
#[test]
fn a_paraphraser_learns_to_reconstruct_the_teachers_map() {
    let Some(gpu) = gpu() else { return };
    let teacher = conv_model(6);
    let tw = Weights::init(gpu, &teacher, 2).unwrap();
    let t_before = common::host_params(gpu, &tw);
    let g = paraphraser_graph(0, "teacher:map", &[5, 6, 6, 6], 0.5, true).unwrap();
    assert_eq!(g.shape(g.tapped("factor").unwrap()), [5, 3, 6, 6]);
    let w = Weights::init(gpu, &g, 5).unwrap();
    let spec = StepSpec {
        student: &g,
        student_weights: &w,
        teacher: Some((&teacher, &tw)),
        losses: vec![LossSpec::taps(loss("hint"), 1.0, "logits", "map")],
        optimizer: OptimizerSpec::AdamW(optimizer::AdamW {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }),
        seed: 0,
    };
    let step = TrainStep::compile(gpu, &spec).unwrap();
    let x = data(5 * 2 * 36, 6);
    let labels = [0; 5];
    step.run(gpu, &x, &labels).unwrap();
    let first = step.total_loss(gpu).unwrap();
    for _ in 0..60 {
        step.run(gpu, &x, &labels).unwrap();
    }
    let last = step.total_loss(gpu).unwrap();
    assert!(last < 0.5 * first, "reconstruction loss {first} → {last}");
    assert_eq!(
        common::host_params(gpu, &tw),
        t_before,
        "the teacher is frozen"
    );

    let wrong = paraphraser_graph(0, "teacher:nosuch", &[5, 6, 6, 6], 0.5, true).unwrap();
    let ww = Weights::init(gpu, &wrong, 5).unwrap();
    let e = TrainStep::compile(
        gpu,
        &StepSpec {
            student: &wrong,
            student_weights: &ww,
            ..spec
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("nosuch"), "{e}");
    let e = TrainStep::compile(
        gpu,
        &StepSpec {
            teacher: None,
            losses: vec![],
            ..spec
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("no teacher"), "{e}");
    let e = paraphraser_graph(0, "x", &[5, 1, 6, 6], 0.5, true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("rate"), "{e}");
}

/// FT's translator: three 3×3 convolutions with batch norm and leaky ReLU, RepDistiller's module
/// names, to the teacher's channels at the student's size; a size mismatch is refused.
#[test]
fn the_translator_adapter_maps_the_student_map_to_the_factor() {
    let Some(gpu) = gpu() else { return };
    let (student, teacher) = (conv_model(3), conv_model(6));
    let sw = Weights::init(gpu, &student, 1).unwrap();
    let tw = Weights::init(gpu, &teacher, 2).unwrap();
    let term = LossSpec {
        adapter: Some(Adapter::Translator),
        paraphraser: Some(Paraphraser {
            rate: 0.5,
            weights: None,
        }),
        ..LossSpec::taps(loss("ft"), 1.0, "map", "map")
    };
    let spec = StepSpec {
        student: &student,
        student_weights: &sw,
        teacher: Some((&teacher, &tw)),
        losses: vec![term.clone()],
        optimizer: sgd(0.1),
        seed: 0,
    };
    let step = TrainStep::compile(gpu, &spec).unwrap();
    let names: Vec<String> = step.adapters()[0].iter().map(|(n, _)| n.clone()).collect();
    for want in [
        "adapters.0.encoder.0.weight",
        "adapters.0.encoder.1.running_var",
        "adapters.0.encoder.3.weight",
        "adapters.0.encoder.7.bias",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    let shape = step.adapters()[0]
        .get("adapters.0.encoder.6.weight")
        .unwrap()
        .shape()
        .to_vec();
    assert_eq!(shape, [3, 3, 3, 3], "Cs → Cs → ⌊Ct/2⌋ → ⌊Ct/2⌋");
    let x = data(5 * 2 * 36, 4);
    step.run(gpu, &x, &[0, 1, 2, 3, 0]).unwrap();
    assert!(step.total_loss(gpu).unwrap().is_finite());
    // A teacher map of another size cannot be translated.
    let mut small = Graph::new();
    let xi = small.input("x", &[5, 2, 6, 6], DType::F32).unwrap();
    let pooled = small.max_pool(xi, 2, 2, 0).unwrap();
    small.tap("map", pooled).unwrap();
    let flat = small.flatten(pooled).unwrap();
    let y = small.linear("fc", flat, 4, true).unwrap();
    small.set_output(y).unwrap();
    let smw = Weights::init(gpu, &small, 2).unwrap();
    let bad = StepSpec {
        teacher: Some((&small, &smw)),
        losses: vec![LossSpec {
            paraphraser: None,
            ..term
        }],
        ..spec
    };
    let e = TrainStep::compile(gpu, &bad).err().unwrap().to_string();
    assert!(e.contains("translator"), "{e}");
}

/// In evaluation mode dropout is the identity, forward and backward: a frozen network with
/// dropout passes its input's gradient through unchanged.
#[test]
fn dropout_in_evaluation_mode_passes_gradients_through() {
    let Some(gpu) = gpu() else { return };
    let build = |dropout: bool| {
        let mut g = Graph::new();
        let x = g.input("x", &[3, 5], DType::F32).unwrap();
        let h = g.linear("fc", x, 4, true).unwrap();
        let h = if dropout {
            g.dropout(h, 0.5).unwrap()
        } else {
            h
        };
        g.set_output(h).unwrap();
        g.frozen()
    };
    let x = data(15, 70);
    let dy = data(12, 71);
    let grad = |g: &Graph| {
        let w = Weights::init(gpu, g, 72).unwrap();
        let inputs: BTreeMap<String, Tensor> =
            [("x".to_string(), gpu.upload(&[3, 5], &x).unwrap())].into();
        let mut plan = Vec::new();
        let fwd = plan_forward(gpu, g, &w, &inputs, Mode::Eval, None, &mut plan).unwrap();
        let seed = vec![(g.output.unwrap(), gpu.upload(&[3, 4], &dy).unwrap())];
        let xv = g.find("x").unwrap();
        let grads = plan_backward(gpu, g, &fwd, seed, &[xv], &mut plan).unwrap();
        gpu.execute(&plan).unwrap();
        gpu.read::<f32>(&grads["x"]).unwrap()
    };
    assert_eq!(grad(&build(true)), grad(&build(false)));
}

/// A linear layer read only by a ReLU applies it in its matmul: the MLP's forward launches no
/// ReLU kernel and gives the unfused plan's values; a tap on the pre-activation keeps the ReLU
/// launch (the tap must see it unrectified). The gradients through the fused layers are checked
/// against the f64 interpreter by the tests above.
#[test]
fn a_linear_layer_read_only_by_a_relu_applies_it_in_its_matmul() {
    let Some(gpu) = gpu() else { return };
    let kernels = |g: &Graph, w: &Weights, x: &Tensor| {
        let inputs: BTreeMap<String, Tensor> = [("x".to_string(), x.clone())].into();
        let mut plan = Vec::new();
        let fwd = plan_forward(gpu, g, w, &inputs, Mode::Train, None, &mut plan).unwrap();
        let names = wgdistill::bench::kernel_names(&plan);
        gpu.execute(&plan).unwrap();
        let logits = gpu.read::<f32>(fwd.get(g.output.unwrap())).unwrap();
        (names, logits)
    };
    let g = models::mlp([5, 1, 3, 3], &[7, 6], 4).unwrap();
    let w = Weights::init(gpu, &g, 12).unwrap();
    let x = gpu.upload(&[5, 1, 3, 3], &data(45, 13)).unwrap();
    let (names, fused) = kernels(&g, &w, &x);
    assert!(!names.iter().any(|n| n.contains("relu")), "{names:?}");

    // The same network with its first layer's pre-activation tapped.
    let mut tapped = g.clone();
    let pre = tapped
        .nodes
        .iter()
        .position(|n| matches!(n.op, wgdistill::graph::Op::Linear { .. }))
        .unwrap();
    tapped.tap("pre.0", wgdistill::graph::Value(pre)).unwrap();
    let (names, unfused) = kernels(&tapped, &w, &x);
    assert_eq!(
        names.iter().filter(|n| n.contains("relu")).count(),
        1,
        "{names:?}"
    );
    let unfused: Vec<f64> = widen(&unfused);
    wgdistill::reference::allclose(&fused, &unfused, 1e-6, 1e-6).unwrap();
}

/// conv → batch norm → ReLU → max pool, untapped: the batch norm applies the ReLU in its
/// normalising pass and the pooling's backward applies the ReLU's mask, so neither ReLU kernel
/// is launched; the output and every gradient equal those of the same network with the batch
/// norm's and the ReLU's outputs tapped, which keeps both ReLU launches. Both pooling kernels
/// are crossed: 8 → 4 tiles its input exactly (2 × 2 windows), 4 → 1 with a 3 × 3 window leaves
/// a row and column out. (The f64-interpreter gradient checks above cover the fused CNN too.)
#[test]
fn batch_norm_relu_and_max_pool_fuse_the_relu_both_ways() {
    let Some(gpu) = gpu() else { return };
    let build = |tapped: bool| {
        let mut g = Graph::new();
        let mut h = g.input("x", &[4, 2, 8, 8], DType::F32).unwrap();
        for (i, (c, k)) in [(3, 2), (5, 3)].into_iter().enumerate() {
            let conv = g
                .conv2d(&format!("conv{i}"), h, ConvLayer::same(c, 3))
                .unwrap();
            let bn = g.batch_norm(&format!("bn{i}"), conv).unwrap();
            let act = g.relu(bn).unwrap();
            if tapped {
                g.tap(&format!("bn{i}"), bn).unwrap();
                g.tap(&format!("relu{i}"), act).unwrap();
            }
            h = g.max_pool(act, k, k, 0).unwrap();
        }
        let flat = g.flatten(h).unwrap();
        let logits = g.linear("head", flat, 3, true).unwrap();
        g.set_output(logits).unwrap();
        g
    };
    let x = data(4 * 2 * 64, 80);
    let dy = data(12, 81);
    let run = |g: &Graph| {
        let w = Weights::init(gpu, g, 82).unwrap();
        let inputs: BTreeMap<String, Tensor> =
            [("x".to_string(), gpu.upload(&[4, 2, 8, 8], &x).unwrap())].into();
        let mut plan = Vec::new();
        let fwd = plan_forward(gpu, g, &w, &inputs, Mode::Train, None, &mut plan).unwrap();
        let out = g.output.unwrap();
        let seed = vec![(out, gpu.upload(&[4, 3], &dy).unwrap())];
        let grads = plan_backward(gpu, g, &fwd, seed, &[], &mut plan).unwrap();
        let names = wgdistill::bench::kernel_names(&plan);
        gpu.execute(&plan).unwrap();
        let mut values = vec![("logits".to_string(), gpu.read::<f32>(fwd.get(out)).unwrap())];
        for (name, t) in &grads {
            values.push((name.clone(), gpu.read::<f32>(t).unwrap()));
        }
        (names, values)
    };
    let (names, fused) = run(&build(false));
    assert!(!names.iter().any(|n| n.contains("relu")), "{names:?}");
    assert!(names.iter().any(|n| n.contains("max_pool_backward_2x2")));
    assert!(names.iter().any(|n| n.ends_with("max_pool_backward")));
    let (names, unfused) = run(&build(true));
    assert!(
        names.iter().any(|n| n.contains("relu_forward")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.contains("relu_backward")),
        "{names:?}"
    );
    assert_eq!(fused.len(), unfused.len());
    for ((name, a), (_, b)) in fused.iter().zip(&unfused) {
        wgdistill::reference::allclose(a, &widen(b), 1e-6, 1e-6)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Plans `steps` updates of `w`'s trainable parameters from fixed gradients (each produced in the
/// plan, as backward produces them), over `arenas`; returns the parameters after them and the
/// number of update launches per step.
fn update_from_fixed_gradients(
    gpu: &Gpu,
    g: &Graph,
    w: &Weights,
    optimizer: &OptimizerSpec,
    use_arenas: bool,
    skip: Option<&str>,
) -> (BTreeMap<String, Vec<f32>>, usize) {
    use wgdistill::graph::update::plan_updates;
    use wgdistill::kernels::elementwise;
    let mut plan = Vec::new();
    let mut grads = BTreeMap::new();
    for (i, (_, node)) in g.trainable_params().enumerate() {
        if Some(node.name.as_str()) == skip {
            continue;
        }
        let n: usize = node.shape.iter().product();
        let src = gpu.upload(&node.shape, &data(n, 40 + i as u64)).unwrap();
        let (d, grad) = elementwise::scale_plan(gpu, &src, 0.5).unwrap();
        plan.push(d);
        grads.insert(node.name.clone(), grad);
    }
    let step = gpu.zeros(&[1], DType::U32).unwrap();
    plan.push(optimizer::advance_step(gpu, &step).unwrap());
    let updates = grads
        .iter()
        .map(|(k, t)| (k.clone(), w.get(k).unwrap(), t))
        .collect();
    let arenas: Vec<_> = if use_arenas {
        w.arenas().iter().collect()
    } else {
        Vec::new()
    };
    let planned = plan_updates(gpu, optimizer, updates, arenas, None, &step, &mut plan).unwrap();
    drop(grads);
    for _ in 0..3 {
        gpu.execute(&plan).unwrap();
    }
    let params = g
        .trainable_params()
        .map(|(_, n)| {
            (
                n.name.clone(),
                gpu.read::<f32>(w.get(&n.name).unwrap()).unwrap(),
            )
        })
        .collect();
    (params, planned.launches.len())
}

#[test]
fn one_launch_updates_a_models_parameters_as_one_launch_per_parameter_does() {
    let Some(gpu) = gpu() else {
        return;
    };
    // Odd sizes (a bias of 5, a 7×33 weight), so that the arena pads between its members.
    let g = models::mlp([4, 1, 3, 11], &[7], 5).unwrap();
    let trained = g.trainable_params().count();
    let adamw = OptimizerSpec::AdamW(optimizer::AdamW {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
    });
    let sgd_decay = OptimizerSpec::Sgd(optimizer::Sgd {
        weight_decay: 0.01,
        ..match sgd(0.1) {
            OptimizerSpec::Sgd(s) => s,
            OptimizerSpec::AdamW(_) => unreachable!(),
        }
    });
    for optimizer in [sgd_decay, adamw] {
        let flat_weights = Weights::init(gpu, &g, 9).unwrap();
        assert_eq!(flat_weights.arenas().len(), 1);
        let (flat, launches) =
            update_from_fixed_gradients(gpu, &g, &flat_weights, &optimizer, true, None);
        assert_eq!(launches, 1, "one launch for the arena");
        let (apart, launches) = update_from_fixed_gradients(
            gpu,
            &g,
            &Weights::init(gpu, &g, 9).unwrap(),
            &optimizer,
            false,
            None,
        );
        assert_eq!(launches, trained);
        assert_eq!(flat, apart, "the same updates, element for element");
        let initial = Weights::init(gpu, &g, 9).unwrap();
        for (name, values) in &flat {
            let before = gpu.read::<f32>(initial.get(name).unwrap()).unwrap();
            assert_ne!(values, &before, "{name} was updated");
        }
        // The padding between members stays zero.
        let arena = &flat_weights.arenas()[0];
        let whole = gpu.read::<f32>(arena.whole()).unwrap();
        let mut member = vec![false; whole.len()];
        for (_, node) in g.trainable_params() {
            let t = flat_weights.get(&node.name).unwrap();
            assert!(t.shares_buffer_with(arena.whole()));
            let start = (t.offset() / 4) as usize;
            member[start..start + t.numel()].fill(true);
        }
        assert!(member.iter().any(|m| !m), "the layout pads");
        assert!(
            whole.iter().zip(&member).all(|(v, m)| *m || *v == 0.0),
            "padding stays zero"
        );

        // A parameter without a gradient is not updated (as PyTorch skips it): the others are
        // then updated one by one.
        let skipped = &g.trainable_params().next().unwrap().1.name.clone();
        let partial_weights = Weights::init(gpu, &g, 9).unwrap();
        let (partial, launches) =
            update_from_fixed_gradients(gpu, &g, &partial_weights, &optimizer, true, Some(skipped));
        assert_eq!(launches, trained - 1);
        let before = gpu.read::<f32>(initial.get(skipped).unwrap()).unwrap();
        assert_eq!(&partial[skipped], &before, "{skipped} keeps its values");
    }
}

#[test]
fn a_compiled_step_plans_only_the_taps_it_reads() {
    let Some(gpu) = gpu() else { return };
    // The CNN taps each block's batch-normalised map (`features.1`, `features.5`); a step that
    // reads neither fuses every ReLU into its batch norm, while a term on `features.1` keeps
    // that block's map, and its ReLU launch.
    let input = [8, 1, 8, 8];
    let student = models::cnn(input, &[4, 6], 3).unwrap();
    let sw = Weights::init(gpu, &student, 3).unwrap();
    let teacher = models::cnn(input, &[4, 6], 3).unwrap();
    let tw = Weights::init(gpu, &teacher, 4).unwrap();
    let relus = |losses: Vec<LossSpec>| {
        let spec = StepSpec {
            student: &student,
            student_weights: &sw,
            teacher: Some((&teacher, &tw)),
            losses,
            optimizer: sgd(0.1),
            seed: 0,
        };
        let step = TrainStep::compile(gpu, &spec).unwrap();
        let (x, y) = (data(8 * 64, 5), vec![0, 1, 2, 0, 1, 2, 0, 1]);
        step.run(gpu, &x, &y).unwrap();
        assert!(step.total_loss(gpu).unwrap().is_finite());
        step.into_bound()
            .kernel_names()
            .iter()
            .filter(|k| k.starts_with("activation::relu_forward"))
            .count()
    };
    assert_eq!(relus(vec![LossSpec::logits(loss("ce"), 1.0)]), 0);
    let at = LossSpec::taps(loss("at"), 1.0, "features.1", "features.1");
    // The student's first block and the teacher's.
    assert_eq!(relus(vec![LossSpec::logits(loss("ce"), 1.0), at]), 2);
}

#[test]
fn a_prefixed_init_holds_only_its_part_with_the_values_the_whole_gives_it() {
    let Some(gpu) = gpu() else { return };
    let g = models::mlp([4, 1, 3, 3], &[6, 5], 3).unwrap();
    let whole = Weights::init(gpu, &g, 7).unwrap();
    let part = Weights::init_prefixed(gpu, &g, 7, "hidden.1.").unwrap();
    let names: Vec<&str> = part.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["hidden.1.bias", "hidden.1.weight"]);
    for (k, t) in part.iter() {
        let expected = gpu.read::<f32>(whole.get(k).unwrap()).unwrap();
        assert_eq!(gpu.read::<f32>(t).unwrap(), expected, "{k}");
    }
    // Its own arena, of these two alone: one update launch trains them.
    let views: Vec<&Tensor> = part.iter().map(|(_, t)| t).collect();
    assert_eq!(part.arenas().len(), 1);
    assert!(part.arenas()[0].is_exactly(&views));
    // A prefix view of the whole shares the whole's arena, which holds more than the part.
    let sub = whole.with_prefix("hidden.1.");
    let views: Vec<&Tensor> = sub.iter().map(|(_, t)| t).collect();
    assert_eq!(sub.arenas().len(), 1);
    assert!(!sub.arenas()[0].is_exactly(&views));
}

/// A teacher MLP [12] with its weights (from `seed`) and a student MLP [8] on 4×4 images of
/// four classes, for the tests of weighted terms on the logits.
fn logit_models(gpu: &Gpu, batch: usize, seed: u64) -> (Graph, Weights, Graph) {
    let teacher = models::mlp([batch, 1, 4, 4], &[12], 4).unwrap();
    let tw = Weights::init(gpu, &teacher, seed).unwrap();
    (teacher, tw, models::mlp([batch, 1, 4, 4], &[8], 4).unwrap())
}

#[test]
fn each_response_loss_takes_its_weight_in_its_own_launch() {
    let Some(gpu) = gpu() else { return };
    // A batch whose 1/B is not a power of two, so the folded factor rounds on its own.
    let batch = 12;
    let (teacher, tw, student) = logit_models(gpu, batch, 37);
    let (x, y) = synthetic(batch, 38);
    for make in [|| loss("ce"), || kd(4.0), || loss("js"), || loss("dkd")] {
        let after_one_step = |lr: f32, weight: f32, later: Option<f32>| {
            let sw = Weights::init(gpu, &student, 39).unwrap();
            let spec = StepSpec {
                student: &student,
                student_weights: &sw,
                teacher: Some((&teacher, &tw)),
                losses: vec![LossSpec::logits(make(), weight)],
                optimizer: sgd(lr),
                seed: 0,
            };
            let mut step = TrainStep::compile(gpu, &spec).unwrap();
            if let Some(w) = later {
                step.set_loss_weight(gpu, 0, w);
            }
            step.run(gpu, &x, &y).unwrap();
            let names = step.into_bound().kernel_names();
            (sw.to_host(gpu).unwrap(), names)
        };
        let name = make().name().to_string();
        let (compiled, names) = after_one_step(0.1, 0.3, None);
        assert!(
            !names.iter().any(|k| k.starts_with("elementwise::")),
            "{name}: {names:?}"
        );
        assert_eq!(after_one_step(0.1, 1.0, Some(0.3)).0, compiled, "{name}");
        let doubled = after_one_step(0.05, 0.6, None).0;
        assert_trained_alike(&doubled, &compiled, &name);
    }
}

/// Asserts that two sets of trained weights agree to rounding (1e-5 relative).
fn assert_trained_alike(
    got: &wgdistill::io::TensorMap,
    want: &wgdistill::io::TensorMap,
    what: &str,
) {
    for (k, t) in want.iter() {
        let (w, g) = (t.as_f32().unwrap(), got[k].as_f32().unwrap());
        wgdistill::reference::allclose(g, &widen(w), 1e-5, 1e-6)
            .unwrap_or_else(|e| panic!("{what} {k}: {e}"));
    }
}

#[test]
fn learning_rate_and_loss_weights_set_later_equal_those_compiled_in() {
    let Some(gpu) = gpu() else { return };
    let batch = 16;
    let (teacher, tw, student) = logit_models(gpu, batch, 33);
    // The loss sums sit between the terms' launches and the update in the plan, and move to its
    // end: the rewritten launches must be found where they went.
    let after_two_steps = |lr: f32, weights: [f32; 2], later: Option<(f32, [f32; 2])>| {
        let sw = Weights::init(gpu, &student, 34).unwrap();
        let spec = StepSpec {
            student: &student,
            student_weights: &sw,
            teacher: Some((&teacher, &tw)),
            losses: vec![
                LossSpec::logits(loss("ce"), weights[0]),
                LossSpec::logits(kd(4.0), weights[1]),
            ],
            optimizer: sgd(lr),
            seed: 0,
        };
        let mut step = TrainStep::compile(gpu, &spec).unwrap();
        if let Some((lr, weights)) = later {
            step.set_learning_rate(gpu, lr);
            for (i, w) in weights.into_iter().enumerate() {
                step.set_loss_weight(gpu, i, w);
            }
        }
        for seed in [35, 36] {
            let (x, y) = synthetic(batch, seed);
            step.run(gpu, &x, &y).unwrap();
        }
        (sw.to_host(gpu).unwrap(), step.losses(gpu).unwrap())
    };
    let compiled = after_two_steps(0.02, [0.25, 0.75], None);
    let set_later = after_two_steps(0.1, [0.5, 0.5], Some((0.02, [0.25, 0.75])));
    assert_eq!(set_later, compiled);
    assert_ne!(after_two_steps(0.1, [0.5, 0.5], None).0, compiled.0);
    // The weights scale the gradients (CE's inside its own launch, KD's in an axpy): twice the
    // weights at half the learning rate train the same weights, to rounding.
    let doubled = after_two_steps(0.01, [0.5, 1.5], None).0;
    assert_trained_alike(&doubled, &compiled.0, "ce + kd");
}

#[test]
fn a_second_term_on_the_logits_adds_into_the_first_ones_seed_and_follows_its_weight() {
    let Some(gpu) = gpu() else { return };
    let batch = 16;
    let (teacher, tw, student) = logit_models(gpu, batch, 30);
    let (x, y) = synthetic(batch, 31);
    let after_one_step = |losses: Vec<LossSpec>, kd_weight: Option<f32>| {
        let sw = Weights::init(gpu, &student, 32).unwrap();
        let spec = StepSpec {
            student: &student,
            student_weights: &sw,
            teacher: Some((&teacher, &tw)),
            losses,
            optimizer: sgd(0.1),
            seed: 0,
        };
        let mut step = TrainStep::compile(gpu, &spec).unwrap();
        if let Some(w) = kd_weight {
            step.set_loss_weight(gpu, 1, w);
        }
        step.run(gpu, &x, &y).unwrap();
        let params = sw.to_host(gpu).unwrap();
        (step.into_bound().kernel_names(), params)
    };
    let ce = || LossSpec::logits(loss("ce"), 0.5);
    let kd_term = || LossSpec::logits(kd(4.0), 0.5);
    let (names, both) = after_one_step(vec![ce(), kd_term()], None);
    let count = |k: &str| names.iter().filter(|n| n.starts_with(k)).count();
    // CE's launch scales its gradient by its weight and that is the seed; KD's is added into
    // it: no launch to scale CE's, and none to sum them.
    assert_eq!(
        [
            count("elementwise::scale"),
            count("elementwise::axpy"),
            count("elementwise::add")
        ],
        [0, 1, 0]
    );
    // The KD weight lives in that axpy: set to zero, the step is the CE step's, exactly.
    let (_, muted) = after_one_step(vec![ce(), kd_term()], Some(0.0));
    let (_, ce_only) = after_one_step(vec![ce()], None);
    assert_eq!(muted, ce_only);
    assert_ne!(both, ce_only);
}
