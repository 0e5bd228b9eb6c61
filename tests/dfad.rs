//! Data-free adversarial distillation's compiled steps: each step's update equals, through SGD
//! at learning rate 1, minus the gradient of its objective by finite differences of the f64
//! composition (generator → teacher and student → l1 and the teacher's class balance, from the
//! interpreter and the loss references); the steps create nothing and submit once; the generator's graph has DFAD's
//! names; resuming restores both sides. The tests hold `common::serial()`: one counts the
//! device's creations and submissions.

mod common;

use common::{
    HostParams, assert_sgd_step_descends, gpu, host_params, sgd_lr1, trained_looking_weights, widen,
};
use wgdistill::gpu::Gpu;
use wgdistill::graph::{Dfad, DfadSpec, Graph, Mode, Weights, interp};
use wgdistill::kernels::losses::Loss;
use wgdistill::models;
use wgdistill::reference::response;

const BATCH: usize = 3;
const LATENT: usize = 4;
const CLASSES: usize = 4;
const WEIGHT: f32 = 1.5;

struct Nets {
    generator: Graph,
    teacher: Graph,
    student: Graph,
}

fn nets() -> Nets {
    let input = [BATCH, 1, 8, 8];
    Nets {
        generator: models::generator(BATCH, LATENT, [1, 8, 8], 2).unwrap(),
        teacher: models::cnn(input, &[3], CLASSES).unwrap(),
        student: models::mlp(input, &[5], CLASSES).unwrap(),
    }
}

type Params = HostParams;

/// `[L1(S(G(z)), T(G(z))), balance(T(G(z)))]` in f64: the generator and the student with batch
/// statistics, the teacher with its running ones.
fn losses(n: &Nets, pg: &Params, pt: &Params, ps: &Params, z: &[f64]) -> [f64; 2] {
    let gv = interp::forward_in(&n.generator, pg, z, Mode::Train);
    let x = &gv[n.generator.output.unwrap().0];
    let tv = interp::forward_in(&n.teacher, pt, x, Mode::Eval);
    let sv = interp::forward_in(&n.student, ps, x, Mode::Train);
    let t = &tv[n.teacher.output.unwrap().0];
    [
        response::l1(&sv[n.student.output.unwrap().0], t).loss,
        response::balance(t, CLASSES).loss,
    ]
}

/// Checks `before − after` (one SGD step at lr 1: the gradient) of every parameter that trains
/// against the finite difference of the step's objective in that parameter.
fn check_update(what: &str, before: &Params, after: &Params, objective: impl Fn(&Params) -> f64) {
    // Running statistics move in training mode without a gradient; the generator's last
    // BatchNorm has no learnt scale or shift.
    let frozen = ["running_", "conv_blocks2.5."];
    let checked = assert_sgd_step_descends(what, before, after, &frozen, (3e-4, 3e-3), objective);
    assert!(checked > 100, "{what}: only {checked} values moved");
}

fn compile(gpu: &Gpu, n: &Nets, seed: u64, balance: f32) -> (Dfad, Weights, Weights, Weights) {
    let (gw, _) = trained_looking_weights(gpu, &n.generator, seed);
    let (tw, _) = trained_looking_weights(gpu, &n.teacher, seed + 1);
    let sw = Weights::init(gpu, &n.student, seed + 2).unwrap();
    let spec = DfadSpec {
        generator: &n.generator,
        generator_weights: &gw,
        teacher: (&n.teacher, &tw),
        student: &n.student,
        student_weights: &sw,
        loss: Loss::new("l1").unwrap(),
        weight: WEIGHT,
        balance,
        generator_optimizer: sgd_lr1(),
        student_optimizer: sgd_lr1(),
    };
    let dfad = Dfad::compile(gpu, &spec).unwrap();
    (dfad, gw, tw, sw)
}

#[test]
fn the_generator_step_ascends_the_discrepancy_through_both_networks() {
    let _serial = common::serial();
    let Some(gpu) = gpu() else { return };
    let n = nets();
    // DFAD as published, then with the class-balance term weighed in.
    for balance in [0.0, 0.7] {
        let (dfad, gw, tw, sw) = compile(gpu, &n, 11, balance);
        let (pg, pt, ps) = (
            host_params(gpu, &gw),
            host_params(gpu, &tw),
            host_params(gpu, &sw),
        );
        dfad.generator_step(gpu, 5).unwrap();
        let z = widen(&wgdistill::rng::normal_vec(BATCH * LATENT, 5));
        // Ascent on the discrepancy (descent on its negation), descent on the balance.
        let what = format!("generator (balance {balance})");
        check_update(&what, &pg, &host_params(gpu, &gw), |p| {
            let [l1, b] = losses(&n, p, &pt, &ps, &z);
            -f64::from(WEIGHT) * l1 + f64::from(balance) * b
        });
        // Neither network it plays against moved (the student's batch statistics aside: an
        // MLP has none).
        assert!(host_params(gpu, &tw) == pt, "the teacher is frozen");
        assert!(
            host_params(gpu, &sw) == ps,
            "the student is not updated by the generator step"
        );
        // Both measured before the update, unweighted, whatever β is.
        let [d, _] = dfad.discrepancies(gpu).unwrap();
        let b = dfad.balance(gpu).unwrap();
        let [want_d, want_b] = losses(&n, &pg, &pt, &ps, &z);
        for (got, want) in [(d, want_d), (b, want_b)] {
            assert!(
                (f64::from(got) - want).abs() <= 1e-5 + 1e-4 * want,
                "{got} vs {want}"
            );
        }
    }
}

#[test]
fn the_student_step_descends_the_discrepancy_on_generated_images() {
    let _serial = common::serial();
    let Some(gpu) = gpu() else { return };
    let n = nets();
    let (dfad, gw, tw, sw) = compile(gpu, &n, 21, 0.7);
    let (pg, pt, ps) = (
        host_params(gpu, &gw),
        host_params(gpu, &tw),
        host_params(gpu, &sw),
    );
    dfad.student_step(gpu, 8).unwrap();
    let z = widen(&wgdistill::rng::normal_vec(BATCH * LATENT, 8));
    // The balance is the generator's alone.
    check_update("student", &ps, &host_params(gpu, &sw), |p| {
        f64::from(WEIGHT) * losses(&n, &pg, &pt, p, &z)[0]
    });
    // The generator's parameters did not move (its running statistics may: training mode).
    let after = host_params(gpu, &gw);
    for (name, values) in &pg {
        if !name.contains("running_") {
            assert_eq!(&after[name], values, "{name} moved in the student step");
        }
    }
    let images = dfad.images(gpu).unwrap();
    assert_eq!(images.len(), BATCH * 64);
}

#[test]
fn dfad_steps_create_nothing_submit_once_and_resume_exactly() {
    let _serial = common::serial();
    let Some(gpu) = gpu() else { return };
    let n = nets();
    let (dfad, gw, _tw, sw) = compile(gpu, &n, 31, 0.5);
    dfad.generator_step(gpu, 1).unwrap();
    dfad.student_step(gpu, 2).unwrap();
    common::assert_one_submission_and_nothing_created(gpu, 20, || {
        for k in 0..10 {
            dfad.generator_step(gpu, 10 + k).unwrap();
            dfad.student_step(gpu, 100 + k).unwrap();
        }
    });
    assert_eq!(dfad.steps_taken(gpu).unwrap(), (11, 11));
    // A resumed run: a fresh compilation given the saved state and the student's weights
    // continues bit for bit.
    let state = dfad.save_state(gpu).unwrap();
    let student = sw.to_host(gpu).unwrap();
    dfad.generator_step(gpu, 77).unwrap();
    dfad.student_step(gpu, 78).unwrap();
    let want = (host_params(gpu, &gw), host_params(gpu, &sw));
    // The same teacher; the generator and the student start from the saved state.
    let (again, gw2, _, sw2) = compile(gpu, &n, 31, 0.5);
    again.load_state(gpu, "saved", &state).unwrap();
    for (name, t) in sw2.iter() {
        gpu.write(t, student[name].as_f32().unwrap()).unwrap();
    }
    again.generator_step(gpu, 77).unwrap();
    again.student_step(gpu, 78).unwrap();
    for (got, want, side) in [
        (host_params(gpu, &gw2), &want.0, "generator"),
        (host_params(gpu, &sw2), &want.1, "student"),
    ] {
        for (name, values) in want {
            assert!(got[name] == *values, "{side} {name} differs after resuming");
        }
    }
    assert_eq!(again.steps_taken(gpu).unwrap(), (12, 12));
    let mut broken = state.clone();
    broken.remove("generator.l1.0.weight");
    let e = again
        .load_state(gpu, "saved", &broken)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("generator.l1.0.weight"), "{e}");
}

#[test]
fn the_generator_has_dfad_names_and_refuses_bad_shapes() {
    let g = models::generator(4, 16, [1, 28, 28], 8).unwrap();
    let names: Vec<&str> = g.params().map(|(_, n)| n.name.as_str()).collect();
    for want in [
        "l1.0.weight",
        "conv_blocks0.0.running_var",
        "conv_blocks1.0.weight",
        "conv_blocks1.1.bias",
        "conv_blocks2.0.weight",
        "conv_blocks2.3.bias",
        "conv_blocks2.5.running_mean",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert_eq!(
        g.shape(g.find("l1.0.weight").unwrap()),
        &[2 * 8 * 7 * 7, 16]
    );
    assert_eq!(g.shape(g.output.unwrap()), &[4, 1, 28, 28]);
    // The last BatchNorm has no learnt scale or shift (affine=False): its γ, β do not train.
    let trains = |name: &str| {
        matches!(
            g.nodes[g.find(name).unwrap().0].op,
            wgdistill::graph::Op::Param {
                trainable: true,
                ..
            }
        )
    };
    assert!(trains("conv_blocks2.1.weight"));
    assert!(!trains("conv_blocks2.5.weight") && !trains("conv_blocks2.5.bias"));
    let e = models::generator(4, 16, [1, 30, 30], 8)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("multiples of 4"), "{e}");
    assert!(models::generator(4, 16, [1, 28, 28], 0).is_err());
}
