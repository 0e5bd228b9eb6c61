//! Lifelong stages end to end on synthetic data at CI size: every method of
//! configs/lifelong.toml, the scores' invariants against the checkpoints, the classifier's
//! unseen rows left alone, the herded memory, and resumption at a task boundary.

mod common;

use std::path::PathBuf;

use common::gpu;
use wgdistill::graph::Weights;
use wgdistill::io::read_safetensors;
use wgdistill::train::checkpoint::RunFolder;
use wgdistill::train::config::{self, Config, DatasetKind};
use wgdistill::train::run::{self, RunOptions};
use wgdistill::train::stage::seed_of;

const LIFELONG: &str = include_str!("../configs/lifelong.toml");

fn out_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("wgdistill-lifelong-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The shipped config on a small synthetic set (a last batch smaller than the others in every
/// task), one epoch per task, the stages named in `keep`, iCaRL's memory at `memory`.
fn ci_sized(keep: &[&str], memory: usize) -> Config {
    let mut cfg = config::parse("lifelong", LIFELONG).unwrap();
    cfg.data.dataset = DatasetKind::Synthetic;
    cfg.data.batch_size = 32;
    cfg.data.train_limit = Some(500);
    cfg.data.test_limit = Some(200);
    cfg.stages.retain(|s| keep.contains(&s.name.as_str()));
    for stage in &mut cfg.stages {
        stage.epochs = 1;
        if let Some(l) = stage.lifelong.as_mut().filter(|l| l.memory > 0) {
            l.memory = memory;
        }
    }
    cfg.check("lifelong").unwrap();
    cfg
}

#[test]
fn every_lifelong_method_runs_and_its_scores_agree_with_its_checkpoint() {
    let Some(gpu) = gpu() else { return };
    let cfg = ci_sized(&["finetune", "lwf", "lwf_task", "icarl", "joint"], 20);
    let opts = RunOptions::new(out_dir("methods"));
    let (train, test) = run::load_data(&cfg, &opts).unwrap();
    let summary = run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {}).unwrap();
    assert_eq!(summary.stages.len(), 5);
    // Test images per task (classes in pairs).
    let mut per_task = [0usize; 5];
    for &l in &test.labels {
        per_task[l as usize / 2] += 1;
    }
    for stage in &summary.stages {
        let l = stage.lifelong.as_ref().expect("a lifelong summary");
        assert_eq!((l.tasks, l.classes_per_task, stage.epochs), (5, 2, 5));
        assert_eq!(l.class_il.len(), 5);
        for (t, (c, k)) in l.class_il.iter().zip(&l.task_il).enumerate() {
            assert_eq!((c.len(), k.len()), (t + 1, t + 1), "{}", stage.name);
            for (a, b) in c.iter().zip(k) {
                // A prediction right among every seen class is right among its task's.
                assert!(
                    (0.0..=1.0).contains(a) && a <= b,
                    "{}: {a} > {b}",
                    stage.name
                );
            }
        }
        // The final class-IL row, weighted by the tasks' test images, is the checkpoint's
        // accuracy over the whole test set.
        let weighted: f64 = l.class_il[4]
            .iter()
            .zip(per_task)
            .map(|(a, n)| a * n as f64)
            .sum::<f64>()
            / test.len() as f64;
        let model = &stage.models[0];
        assert!(
            (weighted - model.test_accuracy).abs() < 1e-9,
            "{}",
            stage.name
        );
        let m = &cfg.models[&model.model];
        let graph = m.graph([32, 1, 28, 28], 10).unwrap();
        let path = opts
            .out
            .join(format!("checkpoints/{}.safetensors", model.model));
        let w = Weights::load(gpu, &graph, "ckpt", &read_safetensors(&path).unwrap()).unwrap();
        let acc = run::evaluate(gpu, &graph, &w, &test).unwrap();
        assert!(
            (acc - model.test_accuracy).abs() < 1e-12,
            "{}: {acc}",
            stage.name
        );
    }
    // The report's lifelong table: a row per stage with its memory.
    let table =
        wgdistill::train::report::markdown(&wgdistill::train::report::results(&summary, None));
    assert!(
        table.contains("| lifelong stage |") && table.contains("| icarl | 20 |"),
        "{table}"
    );
    let svg = std::fs::read_to_string(opts.out.join("lifelong.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("icarl: class-IL"));
    // iCaRL's memory after the last task: 20 exemplars, two per class, each of its class.
    let folder = RunFolder::create(&opts.out).unwrap();
    let state =
        read_safetensors(&folder.state(3, 5).join("icarl.train-state.safetensors")).unwrap();
    let counts = state["memory.counts"].as_i32().unwrap();
    assert_eq!(counts, &[2; 10]);
    let indices = state["memory.indices"].as_i32().unwrap();
    for (k, &i) in indices.iter().enumerate() {
        assert_eq!(train.labels[i as usize], (k / 2) as i32, "exemplar {k}");
    }
}

/// After the first task only its two classes' rows of the classifier have moved: the others
/// are exactly as initialised (no weight decay), their logits out of every softmax.
#[test]
fn classes_not_yet_seen_keep_their_initial_classifier_rows() {
    let Some(gpu) = gpu() else { return };
    let cfg = ci_sized(&["finetune"], 0);
    let opts = RunOptions {
        stop_after: Some((0, 1)),
        ..RunOptions::new(out_dir("unseen"))
    };
    let (train, test) = run::load_data(&cfg, &opts).unwrap();
    let e = run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("interrupted before task 2"), "{e}");
    let after = read_safetensors(&opts.out.join("checkpoints/finetune.safetensors")).unwrap();
    let graph = cfg.models["finetune"].graph([32, 1, 28, 28], 10).unwrap();
    let fresh = Weights::init(gpu, &graph, seed_of(cfg.seed, "finetune"))
        .unwrap()
        .to_host(gpu)
        .unwrap();
    let rows = |t: &wgdistill::io::HostTensor| -> Vec<Vec<f32>> {
        let v = t.as_f32().unwrap();
        let width = v.len() / 10;
        v.chunks(width).map(<[f32]>::to_vec).collect()
    };
    for name in ["head.weight", "head.bias"] {
        let (a, b) = (rows(&after[name]), rows(&fresh[name]));
        assert!(
            a[0] != b[0] && a[1] != b[1],
            "{name}: task 1's rows trained"
        );
        assert_eq!(a[2..], b[2..], "{name}: unseen rows moved");
    }
}

/// A run interrupted at a task boundary of an iCaRL stage (the memory and the scores in its
/// state) resumes to the result of an uninterrupted one.
#[test]
fn an_interrupted_lifelong_stage_resumes_to_the_same_result() {
    let Some(gpu) = gpu() else { return };
    let cfg = ci_sized(&["lwf", "icarl"], 20);
    let base = RunOptions::new(out_dir("whole"));
    let (train, test) = run::load_data(&cfg, &base).unwrap();
    let whole = run::run(gpu, &cfg, &base, &train, &test, &mut |_| {}).unwrap();
    let cut = RunOptions {
        stop_after: Some((1, 3)),
        ..RunOptions::new(out_dir("cut"))
    };
    let e = run::run(gpu, &cfg, &cut, &train, &test, &mut |_| {}).unwrap_err();
    assert!(
        e.to_string()
            .contains("interrupted before task 4 of stage icarl"),
        "{e}"
    );
    let resumed_opts = RunOptions {
        resume: true,
        stop_after: None,
        ..cut
    };
    let resumed = run::run(gpu, &cfg, &resumed_opts, &train, &test, &mut |_| {}).unwrap();
    for (a, b) in whole.stages.iter().zip(&resumed.stages) {
        assert_eq!(a.lifelong, b.lifelong, "{}", a.name);
    }
    let file = "checkpoints/icarl.safetensors";
    let a = read_safetensors(&base.out.join(file)).unwrap();
    let b = read_safetensors(&resumed_opts.out.join(file)).unwrap();
    assert!(a == b, "the resumed model differs");
}
