//! Adversarial distillation's discriminator inside the training step: with SGD at learning rate
//! 1, the student's update is minus the gradient of its KD and adversarial terms and the
//! discriminator's minus the gradient of its real/fake objective, both by finite differences of
//! the f64 composition (interpreter and loss references); the step creates nothing and submits
//! once; a sibling step shares the discriminator; its state round-trips for `--resume`. The
//! tests hold `common::serial()`: one counts the device's submissions.

mod common;

use common::{
    HostParams, assert_sgd_step_descends, data, gpu, host_params, sgd_lr1, trained_looking_weights,
    widen,
};
use wgdistill::graph::{
    DiscriminatorSpec, Graph, LossSpec, Mode, StepSpec, TrainStep, Weights, interp,
};
use wgdistill::kernels::losses::Loss;
use wgdistill::models;
use wgdistill::reference::response;

const BATCH: usize = 4;
const CLASSES: usize = 3;
const KD_WEIGHT: f32 = 0.7;
const ADV_WEIGHT: f32 = 1.3;
const HIDDEN: [usize; 1] = [5];

type Params = HostParams;

fn spec() -> DiscriminatorSpec {
    DiscriminatorSpec {
        tap: "logits".into(),
        hidden: HIDDEN.to_vec(),
        weight: ADV_WEIGHT,
        optimizer: sgd_lr1(),
        seed: 5,
    }
}

fn logits(g: &Graph, p: &Params, x: &[f64], mode: Mode) -> Vec<f64> {
    interp::forward_in(g, p, x, mode)[g.output.unwrap().0].clone()
}

fn bce_of(d: &Graph, pd: &Params, input: &[f64], target: f64) -> f64 {
    let z = logits(d, pd, input, Mode::Train);
    response::bce(&z, &vec![target; z.len()]).loss
}

/// Every value of `before` moved to `after` by minus the gradient of `f`.
fn check(what: &str, before: &Params, after: &Params, f: impl Fn(&Params) -> f64) {
    let checked = assert_sgd_step_descends(what, before, after, &[], (2e-4, 2e-3), f);
    assert!(checked > 20, "{what}: {checked} values");
}

#[test]
fn the_student_and_the_discriminator_each_descend_their_objective_in_one_submission() {
    let _serial = common::serial();
    let Some(gpu) = gpu() else { return };
    let input = [BATCH, 1, 3, 3];
    let student = models::mlp(input, &[4], CLASSES).unwrap();
    let teacher = models::cnn(input, &[2], CLASSES).unwrap();
    let sw = Weights::init(gpu, &student, 1).unwrap();
    let (tw, _) = trained_looking_weights(gpu, &teacher, 2);
    let kd = Loss::new("kd").unwrap().with("temperature", 2.0).unwrap();
    let step_spec = StepSpec {
        student: &student,
        student_weights: &sw,
        teacher: Some((&teacher, &tw)),
        losses: vec![LossSpec::logits(kd, KD_WEIGHT)],
        optimizer: sgd_lr1(),
        seed: 3,
    };
    let step = TrainStep::compile_adversarial(gpu, &step_spec, &spec()).unwrap();
    let d_graph = models::discriminator(&[BATCH, CLASSES], &HIDDEN).unwrap();
    // The discriminator's initial weights are those of its seed.
    let d_weights = step.save_state(gpu).unwrap();
    let pd: Params = d_weights
        .iter()
        .filter_map(|(k, t)| {
            let name = k.strip_prefix("discriminator.")?;
            (name.starts_with("layers.")).then(|| (name.to_string(), widen(t.as_f32().unwrap())))
        })
        .collect();
    assert_eq!(pd.len(), 4, "{:?}", pd.keys());
    let (ps, pt) = (host_params(gpu, &sw), host_params(gpu, &tw));
    let x = data(BATCH * 9, 7);
    let labels = vec![0i32; BATCH];
    common::assert_one_submission_and_nothing_created(gpu, 1, || {
        step.run(gpu, &x, &labels).unwrap();
    });
    let xd = widen(&x);
    let t = logits(&teacher, &pt, &xd, Mode::Eval);
    // The student: KD toward the teacher plus w·BCE(D(s), 1), D as it was.
    let student_after = host_params(gpu, &sw);
    check("student", &ps, &student_after, |p| {
        let s = logits(&student, p, &xd, Mode::Train);
        let kd = response::kd(&s, &t, CLASSES, 2.0).loss;
        f64::from(KD_WEIGHT) * kd + f64::from(ADV_WEIGHT) * bce_of(&d_graph, &pd, &s, 1.0)
    });
    // The discriminator: BCE(D(t), 1) + BCE(D(s), 0), the student as it was.
    let s = logits(&student, &ps, &xd, Mode::Train);
    let after: Params = step
        .save_state(gpu)
        .unwrap()
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("discriminator.")?;
            (name.starts_with("layers.")).then(|| (name.to_string(), widen(v.as_f32().unwrap())))
        })
        .collect();
    check("discriminator", &pd, &after, |p| {
        bce_of(&d_graph, p, &t, 1.0) + bce_of(&d_graph, p, &s, 0.0)
    });
    let [real, fake] = step.discriminator_losses(gpu).unwrap().unwrap();
    let want = [
        bce_of(&d_graph, &pd, &t, 1.0),
        bce_of(&d_graph, &pd, &s, 0.0),
    ];
    assert!((f64::from(real) - want[0]).abs() < 1e-5 && (f64::from(fake) - want[1]).abs() < 1e-5);
    // The adversarial term is one of the step's losses, weighted.
    let losses = step.losses(gpu).unwrap();
    let adv = losses.iter().find(|(n, _, _)| n == "adversarial").unwrap();
    assert_eq!(adv.1, ADV_WEIGHT);
    assert!((f64::from(adv.2) - bce_of(&d_graph, &pd, &s, 1.0)).abs() < 1e-5);
}

#[test]
fn a_sibling_shares_the_discriminator_and_its_state_round_trips() {
    let _serial = common::serial();
    let Some(gpu) = gpu() else { return };
    let student = models::mlp([6, 1, 3, 3], &[4], CLASSES).unwrap();
    let teacher = models::mlp([6, 1, 3, 3], &[6], CLASSES).unwrap();
    let sw = Weights::init(gpu, &student, 1).unwrap();
    let tw = Weights::init(gpu, &teacher, 2).unwrap();
    fn mk<'a>(s: &'a Graph, t: &'a Graph, sw: &'a Weights, tw: &'a Weights) -> StepSpec<'a> {
        StepSpec {
            student: s,
            student_weights: sw,
            teacher: Some((t, tw)),
            losses: vec![LossSpec::logits(Loss::new("kd").unwrap(), 1.0)],
            optimizer: sgd_lr1(),
            seed: 3,
        }
    }
    let main =
        TrainStep::compile_adversarial(gpu, &mk(&student, &teacher, &sw, &tw), &spec()).unwrap();
    let (s2, t2) = (
        models::mlp([2, 1, 3, 3], &[4], CLASSES).unwrap(),
        models::mlp([2, 1, 3, 3], &[6], CLASSES).unwrap(),
    );
    let tail = TrainStep::compile_sibling(gpu, &mk(&s2, &t2, &sw, &tw), &main).unwrap();
    assert!(tail.discriminator_losses(gpu).unwrap().is_some());
    let before = main.save_state(gpu).unwrap();
    tail.run(gpu, &data(18, 4), &[0, 1]).unwrap();
    let after = main.save_state(gpu).unwrap();
    assert!(
        before["discriminator.layers.0.weight"] != after["discriminator.layers.0.weight"],
        "the sibling's update moves the shared discriminator"
    );
    assert_eq!(after["discriminator.step"].as_i32().unwrap(), [1]);
    // A fresh step given the saved state continues from it.
    let again =
        TrainStep::compile_adversarial(gpu, &mk(&student, &teacher, &sw, &tw), &spec()).unwrap();
    again.load_state(gpu, "saved", &after).unwrap();
    assert!(again.save_state(gpu).unwrap() == after);
    let mut missing = after.clone();
    missing.remove("discriminator.optimizer.layers.2.bias.0");
    let e = again
        .load_state(gpu, "saved", &missing)
        .unwrap_err()
        .to_string();
    assert!(e.contains("discriminator.optimizer.layers.2.bias.0"), "{e}");
    // A tap whose shapes differ is refused.
    let mut other = spec();
    other.tap = "hidden.0".into();
    let e = TrainStep::compile_adversarial(gpu, &mk(&student, &teacher, &sw, &tw), &other)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("hidden.0"), "{e}");
}
