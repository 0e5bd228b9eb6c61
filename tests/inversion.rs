//! DeepInversion's compiled synthesis step: its gradient against finite differences of the f64
//! objective composed from the references, and a run that makes a frozen teacher see its labels
//! with BatchNorm statistics like its running ones, creating nothing per iteration. The tests
//! hold `common::serial()`: one of them counts the device's creations and submissions.

mod common;

use common::{gpu, trained_looking_weights, widen};
use wgdistill::graph::{Graph, Inversion, InversionSpec, Mode, Op, interp};
use wgdistill::models;
use wgdistill::reference::{augment, batchnorm, feature, response};

fn spec(labels: Vec<i32>) -> InversionSpec {
    InversionSpec {
        labels,
        lr: 0.1,
        betas: (0.5, 0.9),
        bn_weight: 0.5,
        first_bn_multiplier: 3.0,
        tv_weight: 0.1,
        l2_weight: 0.05,
        seed: 7,
        jitter: 0,
        flip: false,
        competition: 0.0,
    }
}

type Params = std::collections::BTreeMap<String, Vec<f64>>;

/// The objective in f64: CE + α_bn Σ w_l bn_match on the images as the teacher sees them
/// (shifted and flipped by the first iteration's draw), + α_tv tv + α_l2 l2_norm on the images,
/// + α_comp (1 − JS(S, T)) against a competing student when there is one.
fn objective(
    g: &Graph,
    params: &Params,
    x: &[f64],
    s: &InversionSpec,
    student: Option<(&Graph, &Params)>,
) -> f64 {
    let sx = g.shape(g.find("x").unwrap()).to_vec();
    let map = s.augmentation(0);
    let seen = augment::roll_flip(x, [sx[2], sx[3]], map.shift, map.flip);
    let values = interp::forward_in(g, params, &seen, Mode::Eval);
    let out = g.output.unwrap();
    let classes = g.shape(out)[1];
    let labels: Vec<usize> = s.labels.iter().map(|&y| y as usize).collect();
    let mut total = response::ce(&values[out.0], &labels, classes).loss;
    if let Some((sg, sp)) = student {
        let sv = interp::forward_in(sg, sp, &seen, Mode::Eval);
        let js = response::js(&sv[sg.output.unwrap().0], &values[out.0], classes, 3.0).loss;
        total += f64::from(s.competition) * (1.0 - js);
    }
    let mut k = 0;
    for node in &g.nodes {
        if let Op::BatchNorm {
            x: input,
            running_mean,
            running_var,
            ..
        } = node.op
        {
            let sh = g.shape(input);
            let m = batchnorm::moments(&values[input.0], sh[0], sh[1], sh[2..].iter().product());
            let running: Vec<f64> = values[running_mean.0]
                .iter()
                .chain(&values[running_var.0])
                .copied()
                .collect();
            let w = f64::from(s.bn_weight)
                * if k == 0 {
                    f64::from(s.first_bn_multiplier)
                } else {
                    1.0
                };
            total += w * feature::bn_match(&m, &running).loss;
            k += 1;
        }
    }
    total += f64::from(s.tv_weight) * feature::tv(x, [sx[0] * sx[1], sx[2], sx[3]], 2.0).loss;
    total + f64::from(s.l2_weight) * feature::l2_norm(x, sx[0]).loss
}

#[test]
fn the_synthesis_gradient_matches_finite_differences_of_the_objective() {
    synthesis_gradient(spec(vec![0, 3, 1]), false);
}

/// Adaptive DeepInversion: the competition with a frozen student adds its gradient through both
/// networks.
#[test]
fn the_synthesis_gradient_with_a_competing_student_matches_finite_differences() {
    // The other terms small, so that the competition's share of the gradient is far above the
    // tolerance (a missing path through either network fails).
    let s = InversionSpec {
        competition: 50.0,
        bn_weight: 0.01,
        tv_weight: 0.0,
        l2_weight: 0.0,
        ..spec(vec![0, 3, 1])
    };
    synthesis_gradient(s, true);
}

/// The same through the jitter and the flip: the teacher sees the images shifted and mirrored,
/// the gradient returns through the inverse map.
#[test]
fn the_synthesis_gradient_through_jitter_and_flip_matches_finite_differences() {
    let s = InversionSpec {
        jitter: 2,
        flip: true,
        seed: 2,
        ..spec(vec![0, 3, 1])
    };
    let map = s.augmentation(0);
    assert!(map.flip && map.shift.0 != 0 && map.shift.1 != 0, "{map:?}");
    synthesis_gradient(s.clone(), false);
    // The draws cover both directions and flips (not always the same map).
    let maps: Vec<_> = (0..40).map(|k| s.augmentation(k)).collect();
    assert!(maps.iter().any(|m| !m.flip) && maps.iter().any(|m| m.shift.0 < 0));
    assert!(
        maps.iter()
            .all(|m| m.shift.0.abs() <= 2 && m.shift.1.abs() <= 2)
    );
}

fn synthesis_gradient(s: InversionSpec, competing: bool) {
    let _serial = common::serial();
    let Some(gpu) = gpu() else { return };
    let g = models::cnn([3, 1, 6, 6], &[3, 4], 4).unwrap();
    let (w, host) = trained_looking_weights(gpu, &g, 31);
    let sg = models::mlp([3, 1, 6, 6], &[5], 4).unwrap();
    let (sw, s_host) = trained_looking_weights(gpu, &sg, 32);
    let student = competing.then_some((&sg, &sw));
    let inv = Inversion::compile_competing(gpu, &g, &w, student, &s).unwrap();
    let x0 = wgdistill::rng::normal_vec(3 * 36, s.seed);
    inv.run(gpu, 1).unwrap();
    let got = inv.gradient(gpu).unwrap();
    let widened = |h: &wgdistill::io::TensorMap| -> Params {
        h.iter()
            .map(|(k, t)| (k.clone(), widen(t.as_f32().unwrap())))
            .collect()
    };
    let (params, s_params) = (widened(&host), widened(&s_host));
    let student = competing.then_some((&sg, &s_params));
    let fd = common::finite_difference(&widen(&x0), 1e-5, |x| {
        objective(&g, &params, x, &s, student)
    });
    for (i, (a, b)) in got.iter().zip(&fd).enumerate() {
        let a = f64::from(*a);
        assert!(
            (a - b).abs() <= 3e-4 + 3e-3 * b.abs(),
            "dx[{i}]: gpu {a}, finite difference {b}"
        );
    }
    // The logged terms are the objective's, at the images the gradient was taken at.
    let losses = inv.losses(gpu).unwrap();
    let want = objective(&g, &params, &widen(&x0), &s, student);
    assert_eq!(losses.competition != 0.0, competing, "{losses:?}");
    assert!(
        (f64::from(losses.total()) - want).abs() <= 1e-4 * want.abs(),
        "{losses:?} vs {want}"
    );
}

#[test]
fn synthesis_makes_the_teacher_see_its_labels_and_creates_nothing_per_iteration() {
    let _serial = common::serial();
    let Some(gpu) = gpu() else { return };
    let g = models::cnn([8, 1, 8, 8], &[4, 6], 5).unwrap();
    let (w, _) = trained_looking_weights(gpu, &g, 41);
    let labels: Vec<i32> = (0..8).map(|i| i % 5).collect();
    // DeepInversion's proportions: the priors small beside the class and statistics terms.
    let s = InversionSpec {
        bn_weight: 0.05,
        tv_weight: 1e-3,
        l2_weight: 1e-4,
        ..spec(labels.clone())
    };
    let inv = Inversion::compile(gpu, &g, &w, &s).unwrap();
    inv.run(gpu, 1).unwrap();
    let first = inv.losses(gpu).unwrap();
    common::assert_one_submission_and_nothing_created(gpu, 200, || {
        inv.run(gpu, 200).unwrap();
    });
    let last = inv.losses(gpu).unwrap();
    // An untrained teacher's logits span little, so CE cannot fall far; the statistics can.
    assert!(last.ce < 0.9 * first.ce, "class term: {first:?} → {last:?}");
    assert!(
        last.bn < 0.5 * first.bn,
        "BatchNorm statistics: {first:?} → {last:?}"
    );
    assert!(last.total() < 0.8 * first.total(), "{first:?} → {last:?}");
    let logits = inv.logits(gpu).unwrap();
    let hits = logits
        .chunks(5)
        .zip(&labels)
        .filter(|(row, y)| {
            let best = (0..5).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            best == **y as usize
        })
        .count();
    assert_eq!(
        hits, 8,
        "the teacher should classify every image as its label: {logits:?}"
    );
    assert!(inv.images(gpu).unwrap().iter().all(|v| v.is_finite()));
}

#[test]
fn bad_synthesis_settings_are_clear_errors() {
    let _serial = common::serial();
    let Some(gpu) = gpu() else { return };
    let g = models::cnn([2, 1, 6, 6], &[3], 4).unwrap();
    let (w, _) = trained_looking_weights(gpu, &g, 51);
    let err = |s: InversionSpec| {
        Inversion::compile(gpu, &g, &w, &s)
            .err()
            .unwrap()
            .to_string()
    };
    assert!(err(spec(vec![0])).contains("one per image"));
    assert!(err(spec(vec![0, 4])).contains("label 4"));
    let mut s = spec(vec![0, 1]);
    s.tv_weight = -1.0;
    assert!(err(s).contains("tv_weight"));
    // A synthesis that diverges says so instead of handing out NaN images.
    let mut s = spec(vec![0, 1]);
    s.lr = 1e30;
    let inv = Inversion::compile(gpu, &g, &w, &s).unwrap();
    inv.run(gpu, 5).unwrap();
    let e = inv.images(gpu).err().unwrap().to_string();
    assert!(e.contains("non-finite"), "{e}");
    let mlp = models::mlp([2, 1, 6, 6], &[5], 4).unwrap();
    let wm = wgdistill::graph::Weights::init(gpu, &mlp, 1).unwrap();
    let e = Inversion::compile(gpu, &mlp, &wm, &spec(vec![0, 1]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no BatchNorm"), "{e}");
}

/// One compilation serves many batches: a restarted synthesis (new noise, labels, Adam state)
/// gives the same images, bit for bit, as a fresh one with those settings, creating nothing.
#[test]
fn a_restarted_synthesis_equals_a_fresh_one() {
    let _serial = common::serial();
    let Some(gpu) = gpu() else { return };
    let g = models::cnn([4, 1, 6, 6], &[3], 4).unwrap();
    let (w, _) = trained_looking_weights(gpu, &g, 61);
    let mut inv = Inversion::compile(gpu, &g, &w, &spec(vec![0, 1, 2, 3])).unwrap();
    inv.run(gpu, 20).unwrap();
    let labels = vec![3, 3, 1, 0];
    let before = gpu.stats();
    inv.restart(gpu, &labels, 9).unwrap();
    assert_eq!(
        gpu.stats().buffers,
        before.buffers,
        "a restart creates nothing"
    );
    inv.run(gpu, 20).unwrap();
    let fresh = Inversion::compile(
        gpu,
        &g,
        &w,
        &InversionSpec {
            seed: 9,
            ..spec(labels)
        },
    )
    .unwrap();
    fresh.run(gpu, 20).unwrap();
    assert_eq!(inv.images(gpu).unwrap(), fresh.images(gpu).unwrap());
    assert_eq!(inv.losses(gpu).unwrap(), fresh.losses(gpu).unwrap());
    assert!(inv.restart(gpu, &[0, 1], 1).is_err());
    assert!(inv.restart(gpu, &[0, 1, 2, 9], 1).is_err());
}
