//! The training loop end to end on synthetic data: the issue's example configuration as written
//! (with CI-sized data), its outputs, a checkpoint round trip, and the CLI's entry points.

mod common;

use std::path::{Path, PathBuf};

use common::gpu;
use wgdistill::graph::Weights;
use wgdistill::train::config::{self, DEFAULT_CONFIG};
use wgdistill::train::run::{self, RunOptions};

const EXAMPLE: &str = include_str!("../configs/example.toml");

/// The example, on a small synthetic set with a last batch smaller than the others.
fn small(text: &str) -> String {
    text.replace("dataset = \"fashion-mnist\"", "dataset = \"synthetic\"")
        .replace("batch_size = 128", "batch_size = 64")
        .replace("train_limit = 20000", "train_limit = 300")
        .replace("test_limit = 5000", "test_limit = 200")
        .replace("epochs = 3", "epochs = 2")
}

fn out_dir(name: &str) -> PathBuf {
    let dir = out_dir_kept(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The folder `out_dir(name)` made, left as it is.
fn out_dir_kept(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("wgdistill-train-{name}-{}", std::process::id()))
}

#[test]
fn the_example_config_runs_as_written_and_writes_its_outputs() {
    let Some(gpu) = gpu() else { return };
    let cfg = config::parse("example.toml", &small(EXAMPLE)).unwrap();
    cfg.check("example.toml").unwrap();
    let opts = RunOptions::new(out_dir("example"));
    let (train, test) = run::load_data(&cfg, &opts).unwrap();
    assert_eq!((train.len(), test.len()), (300, 200));
    let mut lines = Vec::new();
    let summary = run::run(gpu, &cfg, &opts, &train, &test, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert_eq!(lines.len(), 6, "{lines:?}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(opts.out.join("summary.json")).unwrap())
            .unwrap();
    for key in ["name", "backend", "driver"] {
        assert!(json["adapter"][key].is_string(), "adapter.{key}");
    }
    let stages = json["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 3);
    for (s, name) in stages
        .iter()
        .zip(["teacher", "student-scratch", "student-kd"])
    {
        assert_eq!(s["name"], name);
        assert_eq!(s["epochs"], 2);
        assert!(
            s["wall_seconds"].as_f64().unwrap() > 0.0
                && s["samples_per_second"].as_f64().unwrap() > 0.0
        );
        let m = &s["models"][0];
        assert!(
            m["model"].is_string()
                && m["test_accuracy"].is_number()
                && m["best_test_accuracy"].is_number()
        );
    }
    let svg = std::fs::read_to_string(opts.out.join("curves.svg")).unwrap();
    assert!(
        svg.starts_with("<svg")
            && svg.contains("test accuracy")
            && svg.contains("student-kd: student_kd")
    );
    let metrics = std::fs::read_to_string(opts.out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 6);
    for line in metrics.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["test_accuracy"].is_number() && v["epoch"].is_number());
    }
    let kd = wgdistill::io::read_safetensors(&opts.out.join("checkpoints/student_kd.safetensors"))
        .unwrap();
    assert!(kd.contains_key("hidden.0.weight") && kd.contains_key("head.bias"));
    assert!(
        kd.keys().all(|k| !k.starts_with("adapters")),
        "adapters are not exported with the student"
    );
    assert!(
        summary.stages[0].models[0].test_accuracy > 0.2,
        "the teacher learns the synthetic set"
    );
}

#[test]
fn a_checkpoint_round_trips_and_can_stand_in_for_a_training_stage() {
    let Some(gpu) = gpu() else { return };
    let text = small(DEFAULT_CONFIG);
    let cfg = config::parse("default", &text).unwrap();
    let opts = RunOptions::new(out_dir("ckpt"));
    let (train, test) = run::load_data(&cfg, &opts).unwrap();
    let summary = run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {}).unwrap();
    let path = opts.out.join("checkpoints/teacher.safetensors");
    let graph = cfg.models["teacher"].graph([64, 1, 28, 28], 10).unwrap();
    let w = Weights::load(
        gpu,
        &graph,
        "teacher",
        &wgdistill::io::read_safetensors(&path).unwrap(),
    )
    .unwrap();
    let acc = run::evaluate(gpu, &graph, &w, &test).unwrap();
    assert_eq!(
        acc, summary.stages[0].models[0].test_accuracy,
        "the checkpoint holds the trained teacher"
    );

    // The teacher from its checkpoint, with only the KD stage left to run.
    let kd_only = {
        let start = text.find("[[stages]]\nname = \"student-kd\"").unwrap();
        let models_end = text.find("[[stages]]").unwrap();
        let mut t = text[..models_end].replace(
            "[models.teacher]\narch = \"mlp\"\nhidden = [512, 512]",
            &format!(
                "[models.teacher]\narch = \"mlp\"\nhidden = [512, 512]\ncheckpoint = {:?}",
                path.display().to_string()
            ),
        );
        t.push_str(&text[start..]);
        t
    };
    let cfg = config::parse("kd-only", &kd_only).unwrap();
    cfg.check("kd-only").unwrap();
    let opts = RunOptions {
        out: out_dir("kd-only"),
        ..opts
    };
    let summary = run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {}).unwrap();
    assert_eq!(summary.stages.len(), 1);
    assert!(summary.stages[0].models[0].test_accuracy.is_finite());
    // A missing or mismatched checkpoint is a clear error.
    let bad = kd_only.replace(&path.display().to_string(), "/no/such/teacher.safetensors");
    let cfg = config::parse("bad", &bad).unwrap();
    let e = run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("/no/such/teacher.safetensors"), "{e}");
}

fn wgdistill(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_wgdistill"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

#[test]
fn train_prints_the_default_config_and_refuses_bad_configs_before_the_gpu() {
    let out = wgdistill(&["train", "--print-default-config"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), DEFAULT_CONFIG);
    let dir = out_dir("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, EXAMPLE.replace("epochs = 3", "epoch = 3")).unwrap();
    for config in [bad.as_path(), Path::new("/no/such/config.toml")] {
        let out = wgdistill(&[
            "--adapter",
            "no-such-adapter",
            "train",
            config.to_str().unwrap(),
            "--out",
            dir.join("o").to_str().unwrap(),
        ]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ours: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("wgdistill:"))
            .collect();
        assert_eq!(ours.len(), 1, "{stderr}");
        assert!(
            ours[0].contains(config.to_str().unwrap()) && !stderr.contains("no GPU adapter"),
            "{stderr}"
        );
    }
}

#[test]
fn eval_reports_a_checkpoints_test_accuracy() {
    let Some(gpu) = gpu() else { return };
    if !Path::new(wgdistill::data::DEBIAN_FASHION_MNIST).is_dir() {
        assert!(!common::in_ci(), "CI installs dataset-fashion-mnist");
        return;
    }
    let graph = wgdistill::models::mlp([256, 1, 28, 28], &[8], 10).unwrap();
    let w = Weights::init(gpu, &graph, 5).unwrap();
    let dir = out_dir("eval");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.safetensors");
    wgdistill::io::write_safetensors(&path, &w.to_host(gpu).unwrap()).unwrap();
    let backend = std::env::var("WGPU_BACKEND").unwrap_or_default();
    let out = wgdistill(&[
        "--backend",
        &backend,
        "eval",
        path.to_str().unwrap(),
        "--arch",
        "mlp",
        "--hidden",
        "8",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test accuracy") && stdout.contains("10000 images"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = wgdistill(&[
        "eval",
        path.to_str().unwrap(),
        "--arch",
        "mlp",
        "--hidden",
        "9",
    ]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("hidden.0.weight")
    );
}

/// The multi-seed protocol, in process: a folder per seed, and the aggregate summary with each
/// model's per-seed accuracies, mean and standard deviation.
#[test]
fn several_seeds_report_mean_and_std_per_model() {
    let Some(gpu) = gpu() else { return };
    let text = small(DEFAULT_CONFIG).replace("epochs = 2", "epochs = 1");
    let cfg = config::parse("seeds", &text).unwrap();
    let opts = RunOptions::new(out_dir("seeds"));
    let (train, test) = run::load_data(&cfg, &opts).unwrap();
    let mut lines = Vec::new();
    let summary =
        wgdistill::train::seeds::run_seeds(gpu, &cfg, &opts, 2, &train, &test, &mut |l| {
            lines.push(l.to_string())
        })
        .unwrap();
    assert!(lines.iter().any(|l| l.starts_with("seed 1: ")), "{lines:?}");
    for stage in &summary.stages {
        let m = &stage.models[0];
        assert_eq!(m.test_accuracy_per_seed.as_ref().unwrap().len(), 2);
        assert!(m.test_accuracy_mean.is_some() && m.test_accuracy_std.is_some());
    }
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(opts.out.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(
        written["stages"].as_array().unwrap().len(),
        summary.stages.len()
    );
    assert!(
        opts.out.join("seed-0/summary.json").is_file()
            && opts
                .out
                .join("seed-1/checkpoints/teacher.safetensors")
                .is_file()
    );
    let e = wgdistill::train::seeds::run_seeds(gpu, &cfg, &opts, 0, &train, &test, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("--seeds"), "{e}");
}

#[test]
fn an_interrupted_run_resumes_to_the_same_result() {
    let Some(gpu) = gpu() else { return };
    // Two stages, a tail batch, momentum and an adapter: everything a step carries over.
    let text = small(EXAMPLE).replace("epochs = 2", "epochs = 3");
    let cfg = config::parse("example", &text).unwrap();
    let base = RunOptions::new(out_dir("whole"));
    let (train, test) = run::load_data(&cfg, &base).unwrap();
    let whole = run::run(gpu, &cfg, &base, &train, &test, &mut |_| {}).unwrap();
    // Inside a stage, and between two (the next stage's first epoch not begun).
    for stop in [(0, 1), (1, 0), (2, 2)] {
        let opts = RunOptions {
            out: out_dir(&format!("cut-{}-{}", stop.0, stop.1)),
            stop_after: Some(stop),
            ..base.clone()
        };
        let e = run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("interrupted"), "{e}");
        let resumed_opts = RunOptions {
            resume: true,
            stop_after: None,
            ..opts
        };
        let resumed = run::run(gpu, &cfg, &resumed_opts, &train, &test, &mut |_| {}).unwrap();
        for model in ["teacher", "student_kd"] {
            let file = format!("checkpoints/{model}.safetensors");
            let a = wgdistill::io::read_safetensors(&base.out.join(&file)).unwrap();
            let b = wgdistill::io::read_safetensors(&resumed_opts.out.join(&file)).unwrap();
            assert!(
                a == b,
                "{model}: the resumed run's weights are the uninterrupted run's, bit for bit"
            );
        }
        for (a, b) in whole.stages.iter().zip(&resumed.stages) {
            assert_eq!(
                a.models[0].test_accuracy, b.models[0].test_accuracy,
                "stage {} after a stop at {stop:?}",
                a.name
            );
            assert_eq!(
                a.models[0].best_test_accuracy,
                b.models[0].best_test_accuracy
            );
        }
    }
    let nothing = RunOptions {
        out: out_dir("nothing"),
        resume: true,
        ..base
    };
    let e = run::run(gpu, &cfg, &nothing, &train, &test, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("nothing to resume"), "{e}");
}

fn run_small(name: &str, text: &str) -> wgdistill::train::summary::Summary {
    let gpu = gpu().expect("checked by the caller");
    let small_text = text
        .replace("dataset = \"fashion-mnist\"", "dataset = \"synthetic\"")
        .replace("batch_size = 128", "batch_size = 64")
        .replace("train_limit = 20000", "train_limit = 256")
        .replace("test_limit = 5000", "test_limit = 128")
        .replace("epochs = 3", "epochs = 1");
    let cfg = config::parse(name, &small_text).unwrap();
    cfg.check(name).unwrap();
    let opts = RunOptions::new(out_dir(name));
    let (train, test) = run::load_data(&cfg, &opts).unwrap();
    run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {}).unwrap()
}

/// `test_every = N` measures test accuracy every N epochs and after the last: the epochs between
/// have no `test_accuracy` in `metrics.jsonl`, and the summary holds the last epoch's.
#[test]
fn test_every_skips_the_epochs_between() {
    if gpu().is_none() {
        return;
    }
    let text = r#"
seed = 3
[data]
dataset = "synthetic"
batch_size = 32
train_limit = 64
test_limit = 32
[models.m]
arch = "mlp"
hidden = [8]
[[stages]]
name = "sparse"
train = ["m"]
epochs = 5
test_every = 2
optimizer = { kind = "sgd", lr = 0.1 }
losses = [{ kind = "ce" }]
"#;
    let s = run_small("test-every", text);
    let metrics =
        std::fs::read_to_string(out_dir_kept("test-every").join("metrics.jsonl")).unwrap();
    let measured: Vec<(u64, bool)> = metrics
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["epoch"].as_u64().unwrap(), v["test_accuracy"].is_f64())
        })
        .collect();
    assert_eq!(
        measured,
        [(1, false), (2, true), (3, false), (4, true), (5, true)]
    );
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(
        s.stages[0].models[0].test_accuracy,
        last["test_accuracy"].as_f64().unwrap()
    );
    // The rule the run and its progress bar both read.
    let config = config::parse("test-every.toml", text).unwrap();
    let stage = &config.stages[0];
    let tested: Vec<bool> = (1..=5).map(|e| stage.tests_after(e)).collect();
    assert_eq!(tested, [false, true, false, true, true]);
    let last: Vec<Option<usize>> = (0..=5).map(|e| stage.last_tested(e)).collect();
    assert_eq!(last, [None, None, Some(2), Some(2), Some(4), Some(5)]);
}

#[test]
fn a_teacher_assistant_chain_runs_as_successive_stages() {
    if gpu().is_none() {
        return;
    }
    let s = run_small("ta", include_str!("../configs/teacher_assistant.toml"));
    let names: Vec<&str> = s.stages.iter().map(|st| st.name.as_str()).collect();
    assert_eq!(names, ["teacher", "assistant", "student"]);
    assert!(
        s.stages
            .iter()
            .all(|st| st.models[0].test_accuracy.is_finite())
    );
}

#[test]
fn several_teachers_give_a_mixture_target_and_named_feature_taps() {
    if gpu().is_none() {
        return;
    }
    let text = include_str!("../configs/multi_teacher.toml");
    let s = run_small("multi", text);
    assert_eq!(s.stages.len(), 3);
    assert!(s.stages[2].models[0].test_accuracy.is_finite());
    // Checks: taps must name a teacher; weights must match the teachers; one temperature.
    for (find, replace, needle) in [
        (
            "teacher_tap = \"deep.hidden.1\"",
            "teacher_tap = \"hidden.1\"",
            "deep.hidden.1",
        ),
        (
            "teacher_weights = [1.0, 2.0]",
            "teacher_weights = [1.0]",
            "teacher_weights",
        ),
        (
            "{ kind = \"ce\", weight = 0.1 },\n  { kind = \"kd\"",
            "{ kind = \"kd\", temperature = 2.0 },\n  { kind = \"kd\"",
            "same temperature",
        ),
    ] {
        assert!(text.contains(find), "{find}");
        let cfg = config::parse("multi", &text.replacen(find, replace, 1)).unwrap();
        let e = cfg.check("multi").unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
}

#[test]
fn mutual_learning_trains_peers_together_toward_each_other() {
    if gpu().is_none() {
        return;
    }
    let s = run_small("dml", include_str!("../configs/mutual_learning.toml"));
    let models: Vec<&str> = s.stages[0]
        .models
        .iter()
        .map(|m| m.model.as_str())
        .collect();
    assert_eq!(models, ["peer_a", "peer_b"]);
    assert!(
        s.stages[0].models.iter().all(|m| m.test_accuracy > 0.2),
        "{:?}",
        s.stages[0].models
    );
    // run_small wrote here (out_dir would clear it).
    let dir = std::env::temp_dir().join(format!("wgdistill-train-dml-{}", std::process::id()));
    for m in ["peer_a", "peer_b"] {
        let w = wgdistill::io::read_safetensors(&dir.join(format!("checkpoints/{m}.safetensors")))
            .unwrap();
        assert!(
            w.contains_key("hidden.0.weight"),
            "each peer is exported under its own names"
        );
    }
}

/// Runs the example (KD, a hint on a teacher feature tap, RKD) small, with the teacher-output
/// cache at `cache` when given; returns the distilled student's weights and the log.
fn example_with_cache(name: &str, cache: Option<&Path>) -> (wgdistill::io::TensorMap, Vec<String>) {
    let gpu = gpu().expect("checked by the caller");
    let mut text = small(EXAMPLE);
    if cache.is_some() {
        text = text.replace("augment = false", "augment = false\nteacher_cache = true");
    }
    let cfg = config::parse(name, &text).unwrap();
    cfg.check(name).unwrap();
    let opts = RunOptions {
        teacher_cache: cache.map(Path::to_path_buf),
        ..RunOptions::new(out_dir(name))
    };
    let (train, test) = run::load_data(&cfg, &opts).unwrap();
    let mut lines = Vec::new();
    run::run(gpu, &cfg, &opts, &train, &test, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    let w = wgdistill::io::read_safetensors(&opts.out.join("checkpoints/student_kd.safetensors"))
        .unwrap();
    (w, lines)
}

#[test]
fn the_teacher_output_cache_is_written_once_reused_and_changes_nothing() {
    if gpu().is_none() {
        return;
    }
    let cache = out_dir("cache-root");
    let (plain, _) = example_with_cache("cache-off", None);
    let (first, log1) = example_with_cache("cache-first", Some(&cache));
    let (second, log2) = example_with_cache("cache-second", Some(&cache));
    let said = |log: &[String], what: &str| {
        log.iter()
            .any(|l| l.contains("teacher outputs") && l.contains(what))
    };
    assert!(said(&log1, "computed into"), "{log1:?}");
    assert!(said(&log2, "read from"), "{log2:?}");
    // One entry: a description and one shard holding logits and the hint's feature tap.
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let meta = std::fs::read_to_string(entries[0].join("meta.json")).unwrap();
    assert!(
        meta.contains("logits") && meta.contains("hidden.1"),
        "{meta}"
    );
    let shard =
        wgdistill::io::read_safetensors(&entries[0].join("shard-00000.safetensors")).unwrap();
    assert_eq!(shard["logits"].shape, [300, 10]);
    assert_eq!(shard["hidden.1"].shape, [300, 512]);
    // Replaying the teacher's outputs trains the student exactly as running the teacher does.
    for (name, t) in &plain {
        assert_eq!(
            first[name].as_f32(),
            t.as_f32(),
            "{name}: cached run differs"
        );
        assert_eq!(
            second[name].as_f32(),
            t.as_f32(),
            "{name}: reused run differs"
        );
    }
    // A damaged entry is reported, not silently used or recomputed: a non-finite value in a
    // shard, then a broken description.
    let gpu = gpu().unwrap();
    let text = small(EXAMPLE).replace("augment = false", "augment = false\nteacher_cache = true");
    let cfg = config::parse("damaged", &text).unwrap();
    let opts = RunOptions {
        teacher_cache: Some(cache.clone()),
        ..RunOptions::new(out_dir("cache-damaged"))
    };
    let (train, test) = run::load_data(&cfg, &opts).unwrap();
    let shard_path = entries[0].join("shard-00000.safetensors");
    let mut poisoned = shard.clone();
    let logits = poisoned.get_mut("logits").unwrap();
    let mut values = logits.as_f32().unwrap().to_vec();
    values[17] = f32::NAN;
    *logits = wgdistill::io::HostTensor::f32(&logits.shape.clone(), values);
    wgdistill::io::write_safetensors(&shard_path, &poisoned).unwrap();
    let e = run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("shard-00000") && e.contains("not finite"), "{e}");
    std::fs::write(entries[0].join("meta.json"), "{}").unwrap();
    let e = run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("meta.json") && !e.contains('\n'), "{e}");
}

/// Checkpoints that would evaluate to a silent wrong number are refused, naming the tensor:
/// non-finite weights, a negative running variance, a tensor the model does not have.
#[test]
fn damaged_or_foreign_checkpoints_are_refused() {
    let Some(gpu) = gpu() else { return };
    let graph = wgdistill::models::cnn([4, 1, 28, 28], &[4, 8], 10).unwrap();
    let w = wgdistill::graph::Weights::init(gpu, &graph, 1).unwrap();
    let good = w.to_host(gpu).unwrap();
    wgdistill::graph::Weights::load(gpu, &graph, "good", &good).unwrap();
    let with = |name: &str, edit: &dyn Fn(&mut Vec<f32>)| {
        let mut host = good.clone();
        let t = host.get_mut(name).unwrap();
        let mut v = t.as_f32().unwrap().to_vec();
        edit(&mut v);
        *t = wgdistill::io::HostTensor::f32(&t.shape.clone(), v);
        wgdistill::graph::Weights::load(gpu, &graph, "ckpt", &host)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let e = with("features.0.weight", &|v| v[3] = f32::NAN);
    assert!(
        e.contains("features.0.weight") && e.contains("finite"),
        "{e}"
    );
    let e = with("features.1.running_var", &|v| v[0] = -1.0);
    assert!(
        e.contains("features.1.running_var") && e.contains("negative"),
        "{e}"
    );
    let mut foreign = good.clone();
    foreign.insert(
        "hidden.7.weight".into(),
        wgdistill::io::HostTensor::f32(&[1], vec![0.0]),
    );
    let e = wgdistill::graph::Weights::load(gpu, &graph, "ckpt", &foreign)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("hidden.7.weight") && e.contains("not a parameter"),
        "{e}"
    );
    // PyTorch's batch counter is not a parameter, and is accepted.
    let mut from_torch = good.clone();
    from_torch.insert(
        "features.1.num_batches_tracked".into(),
        wgdistill::io::HostTensor::i32(&[], vec![3]),
    );
    wgdistill::graph::Weights::load(gpu, &graph, "torch", &from_torch).unwrap();
}

/// Runs `cfg` like `base` into `out_dir(name)`, interrupted before epoch `stop.1` of stage
/// `stop.0`, then resumes it to the end: the resumed run's options and log lines.
fn cut_and_resume(
    cfg: &config::Config,
    base: &RunOptions,
    name: &str,
    stop: (usize, usize),
) -> (RunOptions, Vec<String>) {
    let gpu = gpu().expect("checked by the caller");
    let (train, test) = run::load_data(cfg, base).unwrap();
    let opts = RunOptions {
        out: out_dir(name),
        stop_after: Some(stop),
        ..base.clone()
    };
    assert!(run::run(gpu, cfg, &opts, &train, &test, &mut |_| {}).is_err());
    let resumed = RunOptions {
        resume: true,
        stop_after: None,
        ..opts
    };
    let mut lines = Vec::new();
    run::run(gpu, cfg, &resumed, &train, &test, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    (resumed, lines)
}

#[test]
fn self_distillation_trains_heads_that_are_not_exported_and_resumes() {
    let Some(gpu) = gpu() else { return };
    let text = small(include_str!("../configs/self_distillation.toml"));
    let cfg = config::parse("sd", &text).unwrap();
    cfg.check("sd").unwrap();
    let base = RunOptions::new(out_dir("sd-whole"));
    let (train, test) = run::load_data(&cfg, &base).unwrap();
    let whole = run::run(gpu, &cfg, &base, &train, &test, &mut |_| {}).unwrap();
    assert!(
        whole.stages[1].models[0].test_accuracy > 0.2,
        "{:?}",
        whole.stages[1]
    );
    let model =
        wgdistill::io::read_safetensors(&base.out.join("checkpoints/student_byot.safetensors"))
            .unwrap();
    let scratch =
        wgdistill::io::read_safetensors(&base.out.join("checkpoints/student_scratch.safetensors"))
            .unwrap();
    let names = |m: &wgdistill::io::TensorMap| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&model),
        names(&scratch),
        "the export is the bare model"
    );
    let heads = wgdistill::io::read_safetensors(
        &base.out.join("checkpoints/student_byot.heads.safetensors"),
    )
    .unwrap();
    assert_eq!(heads["aux.0.weight"].shape, [10, 64]);
    assert_eq!(heads["aux.1.weight"].shape, [10, 64]);
    // Stopped after the first epoch of the self-distillation stage, then resumed: the heads come
    // back from their file and the result is the uninterrupted run's, bit for bit.
    let (resumed, _) = cut_and_resume(&cfg, &base, "sd-cut", (1, 1));
    let again =
        wgdistill::io::read_safetensors(&resumed.out.join("checkpoints/student_byot.safetensors"))
            .unwrap();
    assert!(again == model, "resumed self-distillation differs");

    // Heads on a CNN's feature maps pool them first.
    let cnn = small(include_str!("../configs/self_distillation.toml"))
        .replace(
            "arch = \"mlp\"\nhidden = [64, 64, 32]",
            "arch = \"cnn\"\nchannels = [4, 8, 8]",
        )
        .replace(
            "heads = [\"hidden.0\", \"hidden.1\"]",
            "heads = [\"features.3\", \"features.7\"]",
        )
        .replace("train_limit = 300", "train_limit = 130");
    // (Feature maps of different sizes have no adapter: the CNN variant keeps ce and kd.)
    let cnn = cnn
        .lines()
        .filter(|l| !l.contains("kind = \"hint\""))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("temperature = 3.0 },", "temperature = 3.0 }");
    assert!(cnn.contains("features.7") && !cnn.contains("kind = \"hint\""));
    let cfg = config::parse("sd-cnn", &cnn).unwrap();
    cfg.check("sd-cnn").unwrap();
    let opts = RunOptions {
        out: out_dir("sd-cnn"),
        ..base
    };
    let (train, test) = run::load_data(&cfg, &opts).unwrap();
    let s = run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {}).unwrap();
    assert!(s.stages[1].models[0].test_accuracy.is_finite());
    // The export is PyTorch's state_dict, BatchNorm's step count included (strict loading), and
    // loads back here.
    let file = opts.out.join("checkpoints/student_byot.safetensors");
    let ckpt = wgdistill::io::read_safetensors(&file).unwrap();
    let tracked = &ckpt["features.1.num_batches_tracked"];
    assert!(tracked.shape.is_empty());
    // 130 samples in batches of 64, 64 and 2, for 2 epochs.
    assert_eq!(tracked.as_i32(), Some(&[6][..]));
    assert!(!ckpt.keys().any(|k| k.starts_with("aux.")));
    let graph = cfg.models["student_byot"]
        .graph([64, 1, 28, 28], 10)
        .unwrap();
    Weights::load(gpu, &graph, "ckpt", &ckpt).unwrap();
}

/// README's results table is `wgdistill report`'s Markdown of the committed JSON, to the digit:
/// a rerun that updates one without the other fails here.
#[test]
fn readme_shows_the_committed_results_json() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docs/results/fashion-mnist.json")).unwrap();
    let results: wgdistill::train::report::Results = serde_json::from_str(&text).unwrap();
    let table = wgdistill::train::report::markdown(&results);
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains(table.trim()),
        "README's table is not the Markdown of docs/results/fashion-mnist.json:\n{table}"
    );
    assert!(results.rows.len() >= 26, "{table}");
}

#[test]
fn the_results_config_runs_with_seeds_and_reports_a_table_that_matches_its_json() {
    if gpu().is_none() {
        return;
    }
    // configs/results.toml as written, on a CI-sized synthetic set: one epoch per stage.
    let text = include_str!("../configs/results.toml")
        .replace("dataset = \"fashion-mnist\"", "dataset = \"synthetic\"")
        .replace("batch_size = 128", "batch_size = 64")
        .replace("train_limit = 20000", "train_limit = 130\ntest_limit = 64")
        .replace("labelled = 1000", "labelled = 40");
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("epochs = ") {
                "epochs = 1"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = out_dir("results");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("results.toml");
    std::fs::write(&config, text).unwrap();
    let (run, cache, json) = (dir.join("run"), dir.join("cache"), dir.join("results.json"));
    // Two seeds of the config, with extra flags; must succeed.
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            config.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--seeds",
            "2",
            "--teacher-cache",
            cache.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = wgdistill(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    train(&[]);
    let out = wgdistill(&[
        "report",
        run.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = results["rows"].as_array().unwrap();
    // Twenty-seven stages, of which two initialise a model that a later one trains (no row);
    // mutual learning trains two models.
    assert_eq!(rows.len(), 26, "{table}");
    assert!(
        !table.contains("ab-init") && table.contains("| ab | ab |"),
        "{table}"
    );
    assert!(table.contains("(2 seeds)"), "{table}");
    for row in rows {
        assert_eq!(row["per_seed"].as_array().unwrap().len(), 2);
        let (mean, std) = (row["mean"].as_f64().unwrap(), row["std"].as_f64().unwrap());
        let cells = format!(
            "| {} | {} | {:.2} ± {:.2} |",
            row["stage"].as_str().unwrap(),
            row["model"].as_str().unwrap(),
            100.0 * mean,
            100.0 * std
        );
        assert!(table.contains(&cells), "{cells} not in\n{table}");
    }
    let kd = rows.iter().find(|r| r["stage"] == "kd").unwrap();
    let scratch = rows.iter().find(|r| r["stage"] == "scratch").unwrap();
    let diff = kd["vs_baseline"].as_f64().unwrap();
    assert!(
        (diff - (kd["mean"].as_f64().unwrap() - scratch["mean"].as_f64().unwrap())).abs() < 1e-12
    );
    // The teacher is `once`: trained in the first seed, reused by the second (same weights,
    // no teacher epochs in its metrics).
    let teacher = rows.iter().find(|r| r["stage"] == "teacher").unwrap();
    let per_seed = teacher["per_seed"].as_array().unwrap();
    assert_eq!(per_seed[0], per_seed[1], "{teacher}");
    let weights =
        |seed: &str| std::fs::read(run.join(seed).join("checkpoints/teacher.safetensors")).unwrap();
    assert_eq!(weights("seed-0"), weights("seed-1"));
    let metrics = std::fs::read_to_string(run.join("seed-1/metrics.jsonl")).unwrap();
    assert!(!metrics.contains("\"teacher\""), "{metrics}");
    assert!(metrics.contains("\"scratch\""), "{metrics}");
    // Resuming a finished multi-seed run trains nothing more and reports the same numbers.
    let summary = std::fs::read_to_string(run.join("summary.json")).unwrap();
    train(&["--resume"]);
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let before: serde_json::Value = serde_json::from_str(&summary).unwrap();
    for (a, b) in again["stages"]
        .as_array()
        .unwrap()
        .iter()
        .zip(before["stages"].as_array().unwrap())
    {
        assert_eq!(a["models"], b["models"]);
    }
    let e = wgdistill(&["report", dir.join("nothing").to_str().unwrap()]);
    assert!(!e.status.success());
    let msg = String::from_utf8_lossy(&e.stderr);
    assert!(
        msg.contains("cannot read") && msg.lines().count() == 1,
        "{msg}"
    );
    // Malformed summaries: not JSON, missing fields, no stages. Each fails in one line.
    for (name, text, needle) in [
        ("garbled.json", "{ not json", "not a wgdistill summary"),
        (
            "partial.json",
            "{\"stages\": []}",
            "not a wgdistill summary",
        ),
        (
            "empty.json",
            "{\"adapter\": {\"name\": \"a\", \"backend\": \"b\", \"driver\": \"c\"}, \"data\": \"d\", \"stages\": []}",
            "no stages",
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let e = wgdistill(&["report", path.to_str().unwrap()]);
        let msg = String::from_utf8_lossy(&e.stderr);
        assert!(!e.status.success(), "{name}: {msg}");
        assert!(
            msg.contains(needle) && msg.lines().count() == 1,
            "{name}: {msg}"
        );
    }
}

/// A stage whose loss stops being finite ends the run with an error naming the stage and the
/// epoch (exit code non-zero), before it writes that epoch's files: the earlier stages' and
/// epochs' checkpoints stay as they were.
#[test]
fn a_diverging_stage_stops_the_run_and_keeps_the_last_finite_checkpoints() {
    let Some(_) = gpu() else { return };
    let dir = out_dir("diverge");
    std::fs::create_dir_all(&dir).unwrap();
    let text = small(DEFAULT_CONFIG).replace("epochs = 2", "epochs = 1");
    // The distilled student's weight pushes its first update to infinity.
    let text = text.replacen(
        "{ kind = \"kd\", weight = 0.9",
        "{ kind = \"kd\", weight = 1e30",
        1,
    );
    assert!(
        text.contains("weight = 1e30"),
        "the default config changed: {text}"
    );
    let cfg = dir.join("run.toml");
    std::fs::write(&cfg, &text).unwrap();
    let backend = std::env::var("WGPU_BACKEND").unwrap_or_default();
    let out = wgdistill(&[
        "--backend",
        &backend,
        "train",
        cfg.to_str().unwrap(),
        "--out",
        dir.join("o").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a diverging run must fail");
    assert!(
        stderr.contains("student-kd")
            && stderr.contains("not finite")
            && stderr.contains("epoch 1"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    let ckpt = dir.join("o/checkpoints");
    assert!(ckpt.join("teacher.safetensors").is_file());
    assert!(!ckpt.join("student_kd.safetensors").exists());
    let teacher = wgdistill::io::read_safetensors(&ckpt.join("teacher.safetensors")).unwrap();
    assert!(
        teacher
            .values()
            .all(|t| t.as_f32().is_none_or(|v| v.iter().all(|x| x.is_finite())))
    );
}

/// Fault injection: the run's `n`th file write fails (as a full disk would) for every `n` in
/// turn, then the run is resumed (or, with nothing recorded yet, started again): every model
/// ends bit for bit as in the run that never failed, and `metrics.jsonl` holds each epoch once.
#[test]
fn a_failed_write_at_any_point_costs_at_most_the_epoch_in_progress() {
    let Some(gpu) = gpu() else { return };
    // One epoch for the first two stages and two for the last: every kind of boundary.
    let text = small(DEFAULT_CONFIG)
        .replacen("epochs = 2", "epochs = 1", 2)
        .replace("test_limit = 200", "test_limit = 64");
    let cfg = config::parse("faults", &text).unwrap();
    let base = RunOptions::new(out_dir("faults-whole"));
    let (train, test) = run::load_data(&cfg, &base).unwrap();
    run::run(gpu, &cfg, &base, &train, &test, &mut |_| {}).unwrap();
    let read = |dir: &std::path::Path, model: &str| {
        wgdistill::io::read_safetensors(&dir.join(format!("checkpoints/{model}.safetensors")))
            .unwrap()
    };
    let models = ["teacher", "student_scratch", "student_kd"];
    let metrics =
        |dir: &std::path::Path| std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let mut failures = 0;
    for n in 1.. {
        let opts = RunOptions {
            fail_write: Some(n),
            ..RunOptions::new(out_dir(&format!("faults-{n}")))
        };
        match run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {}) {
            Ok(_) => break,
            Err(e) => assert!(e.to_string().contains("simulated"), "write {n}: {e}"),
        }
        failures += 1;
        let again = RunOptions {
            fail_write: None,
            resume: opts.out.join("progress.json").is_file(),
            ..opts.clone()
        };
        run::run(gpu, &cfg, &again, &train, &test, &mut |_| {})
            .unwrap_or_else(|e| panic!("resuming after write {n} failed: {e}"));
        for m in models {
            assert_eq!(
                read(&again.out, m),
                read(&base.out, m),
                "write {n}: {m} differs"
            );
        }
        let lines = |text: String| {
            text.lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    (v["stage"].to_string(), v["epoch"].to_string())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            lines(metrics(&again.out)),
            lines(metrics(&base.out)),
            "write {n}: metrics"
        );
    }
    assert!(failures > 15, "only {failures} writes were failed");
}

/// `--resume` trusts nothing it finds: another configuration, a progress that does not fit the
/// configuration, and a second run on the same folder are each a one-line error.
#[test]
fn resume_refuses_another_configuration_and_a_busy_folder() {
    let Some(gpu) = gpu() else { return };
    let text = small(DEFAULT_CONFIG);
    let cfg = config::parse("resume", &text).unwrap();
    let opts = RunOptions {
        stop_after: Some((1, 1)),
        ..RunOptions::new(out_dir("resume-trust"))
    };
    let (train, test) = run::load_data(&cfg, &opts).unwrap();
    assert!(run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {}).is_err());
    let resume = RunOptions {
        resume: true,
        stop_after: None,
        ..opts.clone()
    };
    let other = config::parse("resume", &text.replace("lr = 0.1", "lr = 0.2")).unwrap();
    let e = run::run(gpu, &other, &resume, &train, &test, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("progress.json") && e.contains("another configuration"),
        "{e}"
    );
    let mut seeded = cfg.clone();
    seeded.seed = 7;
    assert!(run::run(gpu, &seeded, &resume, &train, &test, &mut |_| {}).is_err());
    // A second run on a folder in use.
    let lock = wgdistill::train::checkpoint::RunFolder::create(&opts.out)
        .unwrap()
        .lock()
        .unwrap();
    let e = run::run(gpu, &cfg, &resume, &train, &test, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("another wgdistill run"), "{e}");
    drop(lock);
    // A progress beyond the configuration.
    let path = opts.out.join("progress.json");
    let progress = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, progress.replacen("\"stage\": 1", "\"stage\": 9", 1)).unwrap();
    let e = run::run(gpu, &cfg, &resume, &train, &test, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("progress.json") && e.contains("stage 9"), "{e}");
    std::fs::write(&path, progress).unwrap();
    run::run(gpu, &cfg, &resume, &train, &test, &mut |_| {}).unwrap();
}

/// The feature-knowledge config (NST, FT, AB and FSP with their initialisation stages, CC, VID,
/// IRG) runs as written at CI size: every stage trains, with finite losses, and the distilled
/// models are exported.
#[test]
fn the_feature_knowledge_config_runs_every_method() {
    if gpu().is_none() {
        return;
    }
    let text = include_str!("../configs/feature_knowledge.toml");
    let s = run_small("feature-knowledge", text);
    let names: Vec<&str> = s.stages.iter().map(|st| st.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "teacher",
            "scratch",
            "nst",
            "ft",
            "ab-init",
            "ab",
            "cc",
            "narrow-teacher",
            "fsp-init",
            "fsp",
            "vid",
            "irg",
            "crd"
        ]
    );
    let metrics =
        std::fs::read_to_string(out_dir_kept("feature-knowledge").join("metrics.jsonl")).unwrap();
    for line in metrics.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            v["train_loss"].as_f64().is_some_and(f64::is_finite)
                && v["train_loss_mean"].as_f64().is_some_and(f64::is_finite),
            "{line}"
        );
    }
    for stage in &s.stages {
        let acc = stage.models[0].test_accuracy;
        assert!((0.0..=1.0).contains(&acc), "{}: {acc}", stage.name);
    }
}

/// A CRD term's sizes: its banks take the training set's size (a configured `n_data` must
/// agree), and `nce_k` and `feat_dim` are whole numbers; each mistake is one line naming the
/// stage and key.
#[test]
fn crd_sizes_are_checked_against_the_training_set() {
    let Some(gpu) = gpu() else { return };
    let text = |term: &str| {
        format!(
            r#"
seed = 1
[data]
dataset = "synthetic"
batch_size = 32
train_limit = 96
test_limit = 32
[models.teacher]
arch = "mlp"
hidden = [16]
[models.student]
arch = "mlp"
hidden = [8]
[[stages]]
name = "teacher"
train = ["teacher"]
epochs = 1
optimizer = {{ kind = "sgd", lr = 0.1 }}
losses = [{{ kind = "ce" }}]
[[stages]]
name = "crd"
train = ["student"]
teachers = ["teacher"]
epochs = 1
optimizer = {{ kind = "sgd", lr = 0.1 }}
losses = [{{ kind = "ce" }}, {{ kind = "crd", student_tap = "hidden.0", teacher_tap = "hidden.0", {term} }}]
"#
        )
    };
    let run_text = |name: &str, t: String| {
        let cfg = config::parse(name, &t).unwrap();
        cfg.check(name)?;
        let opts = RunOptions::new(out_dir(name));
        let (train, test) = run::load_data(&cfg, &opts).unwrap();
        run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {})
    };
    // Sizes that are not whole are refused when the config is checked, a bank size that is not
    // the training set's before the first stage trains; each names the stage and key.
    for (term, stage, want) in [
        ("nce_k = 10.5", "stages[1]", "losses[1].nce_k"),
        ("feat_dim = 7.25", "stages[1]", "losses[1].feat_dim"),
        (
            "nce_k = 8, n_data = 50",
            "stage 'crd'",
            "losses[1].n_data: must be the training set's size 96",
        ),
    ] {
        let e = run_text("crd-sizes", text(term)).err().unwrap().to_string();
        assert!(e.contains(stage) && e.contains(want), "{e}");
        assert!(!term.contains('.') || e.contains("whole number"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    // Right as given: 8 negatives, 12-wide heads.
    let s = run_text("crd-sizes", text("nce_k = 8, feat_dim = 12")).unwrap();
    assert!(s.stages[1].models[0].test_accuracy.is_finite());
}

/// FT with RepDistiller's modules, on a CNN teacher's last block.
const FT_CONFIG: &str = r#"
seed = 0
[data]
dataset = "synthetic"
batch_size = 64
train_limit = 300
test_limit = 128
augment = false

[models.teacher]
arch = "cnn"
channels = [8, 16]
[models.ft]
arch = "cnn"
channels = [4, 8]

[[stages]]
name = "teacher"
train = ["teacher"]
epochs = 1
optimizer = { kind = "sgd", lr = 0.05, momentum = 0.9 }
losses = [{ kind = "ce" }]

[[stages]]
name = "ft"
train = ["ft"]
teachers = ["teacher"]
epochs = 3
optimizer = { kind = "sgd", lr = 0.05, momentum = 0.9 }
losses = [
  { kind = "ce" },
  { kind = "ft", weight = 200.0, student_tap = "features.7", teacher_tap = "features.7", adapter = "translator", paraphraser = { epochs = 3 } },
]
"#;

/// The paraphraser trains on the teacher's map before the FT stage (a line per epoch, its
/// reconstruction loss falling), is frozen and kept out of the exported student but saved with
/// the step's state, so that a run interrupted inside the stage resumes without retraining it,
/// to the same student bit for bit.
#[test]
fn ft_pretrains_its_paraphraser_and_resumes_with_it() {
    let Some(gpu) = gpu() else { return };
    let cfg = config::parse("ft", FT_CONFIG).unwrap();
    cfg.check("ft").unwrap();
    let base = RunOptions::new(out_dir("ft-whole"));
    let (train, test) = run::load_data(&cfg, &base).unwrap();
    let mut lines = Vec::new();
    run::run(gpu, &cfg, &base, &train, &test, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    let recon: Vec<f64> = lines
        .iter()
        .filter(|l| l.contains("paraphraser of losses[1] epoch"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(recon.len(), 3, "{lines:?}");
    assert!(recon[2] < recon[0], "reconstruction loss {recon:?}");
    let student =
        wgdistill::io::read_safetensors(&base.out.join("checkpoints/ft.safetensors")).unwrap();
    assert!(
        student
            .keys()
            .all(|k| k.starts_with("features.") || k.starts_with("classifier")),
        "the export is the bare student: {:?}",
        student.keys().collect::<Vec<_>>()
    );
    let state = std::fs::read_dir(base.out.join("state"))
        .unwrap()
        .map(|e| e.unwrap().path().join("ft.train-state.safetensors"))
        .find(|p| p.exists())
        .expect("the FT stage's state is kept");
    let state = wgdistill::io::read_safetensors(&state).unwrap();
    assert_eq!(
        state["terms.1.paraphraser.encoder.3.weight"].shape,
        [8, 16, 3, 3]
    );
    assert_eq!(state["adapters.1.encoder.6.weight"].shape, [8, 8, 3, 3]);

    let (resumed, again_lines) = cut_and_resume(&cfg, &base, "ft-cut", (1, 1));
    assert!(
        !again_lines.iter().any(|l| l.contains("paraphraser")),
        "resuming reloads the paraphraser: {again_lines:?}"
    );
    let again =
        wgdistill::io::read_safetensors(&resumed.out.join("checkpoints/ft.safetensors")).unwrap();
    assert!(again == student, "the resumed FT student differs");
}

/// A paraphraser where it cannot go is a one-line error naming the key.
#[test]
fn paraphraser_settings_are_checked() {
    let cases = [
        (
            "paraphraser = { epochs = 3 }",
            "paraphraser = { epochs = 0 }",
            "paraphraser.epochs",
        ),
        (
            "paraphraser = { epochs = 3 }",
            "paraphraser = { epochs = 1, rate = 1.5 }",
            "paraphraser.rate",
        ),
        (
            "paraphraser = { epochs = 3 }",
            "paraphraser = { epochs = 1, size = 2 }",
            "size",
        ),
        (
            "{ kind = \"ce\" },\n",
            "{ kind = \"ce\", paraphraser = { epochs = 1 } },\n",
            "losses[0]",
        ),
        // Shapes are checked with the config too: a factor of no channels, a 2-D teacher tap.
        (
            "paraphraser = { epochs = 3 }",
            "paraphraser = { epochs = 3, rate = 0.01 }",
            "losses[1].paraphraser",
        ),
        (
            "teacher_tap = \"features.7\", adapter",
            "teacher_tap = \"logits\", adapter",
            "losses[1].paraphraser",
        ),
    ];
    for (from, to, key) in cases {
        let text = FT_CONFIG.replace(from, to);
        assert_ne!(text, FT_CONFIG);
        let e = config::parse("ft.toml", &text)
            .and_then(|c| c.check("ft.toml"))
            .err()
            .unwrap_or_else(|| panic!("{to} accepted"))
            .to_string();
        assert!(e.contains(key) && !e.contains('\n'), "{to}: {e}");
    }
}

/// A shipped config at CI size: the synthetic set (256 training and 128 test images, batches of
/// 64) and one epoch per stage; checked.
fn ci_sized(name: &str, text: &str) -> config::Config {
    let mut cfg = config::parse(name, text).unwrap();
    cfg.data.dataset = wgdistill::train::config::DatasetKind::Synthetic;
    cfg.data.batch_size = 64;
    cfg.data.train_limit = Some(256);
    cfg.data.test_limit = Some(128);
    for stage in &mut cfg.stages {
        stage.epochs = 1;
    }
    cfg.check(name).unwrap();
    cfg
}

/// configs/cross_modal.toml at CI size: the students on the thumbnail and on the profiles train
/// from labels, with KD and with KD alone, and their checkpoints hold their modality's first
/// layer; a cnn cannot read profiles (one line, naming the key).
#[test]
fn the_cross_modal_config_trains_students_on_other_modalities() {
    let Some(gpu) = gpu() else { return };
    let text = include_str!("../configs/cross_modal.toml");
    let cfg = ci_sized("cross_modal", text);
    let opts = RunOptions::new(out_dir("cross-modal"));
    let (train, test) = run::load_data(&cfg, &opts).unwrap();
    let s = run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {}).unwrap();
    assert_eq!(s.stages.len(), 7);
    for stage in &s.stages {
        let acc = stage.models[0].test_accuracy;
        assert!((0.0..=1.0).contains(&acc), "{}: {acc}", stage.name);
    }
    let weights = |m: &str| {
        wgdistill::io::read_safetensors(&opts.out.join(format!("checkpoints/{m}.safetensors")))
            .unwrap()
    };
    let profiles = weights("profiles_label_free");
    assert_eq!(profiles["hidden.0.rows.weight"].shape, vec![128, 28]);
    assert_eq!(profiles["hidden.0.columns.weight"].shape, vec![128, 28]);
    assert_eq!(
        weights("thumbnail_kd")["hidden.0.weight"].shape,
        vec![128, 49]
    );

    let bad = text.replacen(
        "arch = \"mlp\"\nhidden = [128, 64]\nmodality = \"profiles\"",
        "arch = \"cnn\"\nchannels = [8]\nmodality = \"profiles\"",
        1,
    );
    let err = config::parse("cross_modal", &bad)
        .unwrap()
        .check("cross_modal")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("models.profiles_scratch.modality") && !err.contains('\n'),
        "{err}"
    );
}

/// configs/one.toml at CI size: ONE trains its branches and gate, its ensemble and every branch
/// learn from the labels and each branch from the ensemble; each branch is written as a plain cnn
/// whose accuracy the summary records; a multi-branch model refuses teachers, in one line.
#[test]
fn the_one_config_trains_a_gated_ensemble_and_deploys_its_branches() {
    let Some(gpu) = gpu() else { return };
    let text = include_str!("../configs/one.toml");
    let cfg = ci_sized("one", text);
    let terms = cfg.stages[2]
        .method(&cfg)
        .unwrap()
        .terms(&cfg.stages[2])
        .unwrap();
    // CE on the ensemble and on each of three branches; KD from the ensemble into each branch.
    assert_eq!(terms.len(), 7);
    let kd: Vec<_> = terms.iter().filter(|(i, _)| *i == 1).collect();
    assert_eq!(kd.len(), 3);
    assert!(
        kd.iter().all(|(_, s)| s.teacher_taps == ["peer:logits"]),
        "{kd:?}"
    );
    let opts = RunOptions::new(out_dir("one"));
    let (train, test) = run::load_data(&cfg, &opts).unwrap();
    let s = run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {}).unwrap();
    let one = &s.stages[2].models[0];
    let branches = one
        .branch_test_accuracy
        .as_ref()
        .expect("branch accuracies");
    assert_eq!(branches.len(), 3);
    assert!(
        branches.iter().all(|a| (0.0..=1.0).contains(a)),
        "{branches:?}"
    );
    // Branch 1 alone is a cnn of the same channels, and evaluates as one.
    let path = opts.out.join("checkpoints/one.branch1.safetensors");
    let w = wgdistill::io::read_safetensors(&path).unwrap();
    assert!(w.contains_key("features.0.weight") && w.contains_key("features.4.weight"));
    assert!(
        !w.keys()
            .any(|k| k.starts_with("gate") || k.starts_with("branches"))
    );
    let graph = wgdistill::models::cnn([64, 1, 28, 28], &[16, 32], 10).unwrap();
    let weights = wgdistill::graph::Weights::load(gpu, &graph, "branch 1", &w).unwrap();
    let acc = run::evaluate(gpu, &graph, &weights, &test).unwrap();
    assert!((acc - branches[1]).abs() < 1e-9, "{acc} vs {}", branches[1]);

    let bad = text.replace(
        "train = [\"one\"]",
        "train = [\"one\"]\nteachers = [\"scratch\"]",
    );
    let err = config::parse("one", &bad)
        .unwrap()
        .check("one")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gated ensemble") && !err.contains('\n'),
        "{err}"
    );
}

/// configs/data_free.toml with CI-sized settings (a synthetic set, one or two epochs, a few
/// synthesis iterations, a narrow generator).
fn data_free_small() -> config::Config {
    use wgdistill::train::config::{DatasetKind, StageKind};
    let mut cfg = config::parse("data_free", include_str!("../configs/data_free.toml")).unwrap();
    cfg.data.dataset = DatasetKind::Synthetic;
    cfg.data.batch_size = 64;
    cfg.data.train_limit = Some(256);
    cfg.data.test_limit = Some(128);
    for stage in &mut cfg.stages {
        stage.epochs = match stage.kind {
            StageKind::DeepInversion => 0,
            StageKind::Dfad => 3,
            StageKind::Train | StageKind::Lifelong => 1,
        };
        if let Some(s) = &mut stage.synthesis {
            (s.images, s.batch, s.iterations) = (70, 10, 4);
        }
        if let Some(g) = &mut stage.generator {
            (g.latent, g.width, g.iterations, g.student_steps, g.batch) = (16, 4, 2, 2, Some(16));
        }
    }
    cfg.check("data_free").unwrap();
    cfg
}

/// Every data-free stage kind runs from the shipped config: the synthesised set and its grid are
/// written and a later stage trains on them; DFAD trains its student from no data; a run
/// interrupted inside the DFAD stage, or between the synthesis and the stage that reads it,
/// resumes to the uninterrupted run's weights bit for bit; a later seed starts from the first
/// seed's synthesised set when that stage is `once`.
#[test]
fn the_data_free_config_runs_every_stage_kind_and_resumes() {
    let Some(gpu) = gpu() else { return };
    let cfg = data_free_small();
    let base = RunOptions::new(out_dir("data-free"));
    let (train, test) = run::load_data(&cfg, &base).unwrap();
    let mut lines = Vec::new();
    let whole = run::run(gpu, &cfg, &base, &train, &test, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    let names: Vec<&str> = whole.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["teacher", "synthesise", "student-di", "student-dfad"]
    );
    assert!(whole.stages[1].models.is_empty() && whole.stages[1].samples_per_second > 0.0);
    let set = wgdistill::io::read_safetensors(&base.out.join("synthetic/synthesise.safetensors"))
        .unwrap();
    assert_eq!(set["images"].shape, vec![70, 1, 28, 28]);
    let labels = set["labels"].as_i32().unwrap();
    assert_eq!(labels[..12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
    for png in ["synthesise.png", "student-dfad.png"] {
        let bytes = std::fs::read(base.out.join("synthetic").join(png)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{png}");
    }
    assert!(
        lines.iter().any(|l| l.starts_with("synthesise batch 7/7")),
        "{lines:?}"
    );
    // The DFAD stage's epochs are in metrics.jsonl with both players' discrepancies.
    let metrics = std::fs::read_to_string(base.out.join("metrics.jsonl")).unwrap();
    let dfad: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["stage"] == "student-dfad")
        .collect();
    assert_eq!(dfad.len(), 3);
    assert!(dfad.iter().all(|v| {
        v["generator_discrepancy"]
            .as_f64()
            .is_some_and(f64::is_finite)
            && v["generator_steps"].as_u64().is_some()
    }));
    assert_eq!(dfad[2]["generator_steps"], 6);

    for stop in [(3, 1), (2, 0)] {
        let name = format!("data-free-cut-{}-{}", stop.0, stop.1);
        let (resumed, _) = cut_and_resume(&cfg, &base, &name, stop);
        for model in ["student_di", "student_dfad"] {
            let file = format!("checkpoints/{model}.safetensors");
            let a = wgdistill::io::read_safetensors(&base.out.join(&file)).unwrap();
            let b = wgdistill::io::read_safetensors(&resumed.out.join(&file)).unwrap();
            assert!(a == b, "{model} after a stop at {stop:?}");
        }
    }

    // Two seeds, the teacher and its synthesised set made once.
    let mut once = cfg.clone();
    once.stages[0].once = true;
    once.stages[1].once = true;
    let opts = RunOptions::new(out_dir("data-free-seeds"));
    let summary =
        wgdistill::train::seeds::run_seeds(gpu, &once, &opts, 2, &train, &test, &mut |_| {})
            .unwrap();
    let a = std::fs::read(opts.out.join("seed-0/synthetic/synthesise.safetensors")).unwrap();
    let b = std::fs::read(opts.out.join("seed-1/synthetic/synthesise.safetensors")).unwrap();
    assert!(a == b, "the second seed reads the first seed's set");
    let di = summary
        .stages
        .iter()
        .find(|s| s.name == "student-di")
        .unwrap();
    assert_eq!(
        di.models[0].test_accuracy_per_seed.as_ref().unwrap().len(),
        2
    );
}

/// configs/adversarial.toml as written, on a CI-sized synthetic set: the discriminator's losses
/// are in the metrics, its state in the step's, a run interrupted inside the adversarial stage
/// resumes to the same student bit for bit, and the student's export holds no discriminator.
#[test]
fn the_adversarial_config_trains_against_a_discriminator_and_resumes() {
    let Some(gpu) = gpu() else { return };
    let mut cfg =
        config::parse("adversarial", include_str!("../configs/adversarial.toml")).unwrap();
    cfg.data.dataset = wgdistill::train::config::DatasetKind::Synthetic;
    cfg.data.batch_size = 64;
    cfg.data.train_limit = Some(200);
    cfg.data.test_limit = Some(100);
    for stage in &mut cfg.stages {
        stage.epochs = 2;
    }
    cfg.check("adversarial").unwrap();
    let mut base = RunOptions::new(out_dir("adversarial"));
    base.teacher_cache = Some(base.out.join("cache"));
    let (train, test) = run::load_data(&cfg, &base).unwrap();
    let whole = run::run(gpu, &cfg, &base, &train, &test, &mut |_| {}).unwrap();
    assert_eq!(whole.stages.len(), 4);
    let metrics = std::fs::read_to_string(base.out.join("metrics.jsonl")).unwrap();
    for line in metrics.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let has = v.get("discriminator_loss_real").is_some();
        assert_eq!(has, v["stage"] == "adversarial", "{line}");
        if has {
            for key in ["discriminator_loss_real", "discriminator_loss_fake"] {
                assert!(
                    v[key].as_f64().is_some_and(|l| l.is_finite() && l > 0.0),
                    "{line}"
                );
            }
        }
    }
    let state = wgdistill::io::read_safetensors(
        &base
            .out
            .join("state/s3-e2/adversarial.train-state.safetensors"),
    )
    .unwrap();
    assert!(state.contains_key("discriminator.layers.2.weight"));
    assert_eq!(state["discriminator.step"].as_i32().unwrap(), [8]);
    let export =
        wgdistill::io::read_safetensors(&base.out.join("checkpoints/adversarial.safetensors"))
            .unwrap();
    assert!(
        export.keys().all(|k| !k.contains("layers")),
        "{:?}",
        export.keys()
    );
    let (resumed, _) = cut_and_resume(&cfg, &base, "adversarial-cut", (3, 1));
    let file = "checkpoints/adversarial.safetensors";
    let a = wgdistill::io::read_safetensors(&base.out.join(file)).unwrap();
    let b = wgdistill::io::read_safetensors(&resumed.out.join(file)).unwrap();
    assert!(
        a == b,
        "the resumed adversarial student is the uninterrupted one"
    );
}

/// A KD stage that prunes a CNN student: small synthetic data, three epochs, the sparsity
/// reached by the second.
fn pruning_config(scope: &str) -> String {
    format!(
        r#"
seed = 3
[data]
dataset = "synthetic"
batch_size = 64
train_limit = 200
test_limit = 100
[models.teacher]
arch = "cnn"
channels = [4, 8]
[models.copy]
arch = "cnn"
channels = [4, 8]
[models.pruned]
arch = "cnn"
channels = [4, 8]
[[stages]]
name = "teacher"
train = ["teacher"]
epochs = 1
optimizer = {{ kind = "sgd", lr = 0.1, momentum = 0.9 }}
losses = [{{ kind = "ce" }}]
[[stages]]
name = "prune"
train = ["pruned"]
start_from = "teacher"
teachers = ["teacher"]
epochs = 3
optimizer = {{ kind = "sgd", lr = 0.05, momentum = 0.9 }}
losses = [{{ kind = "ce", weight = 0.1 }}, {{ kind = "kd", weight = 0.9 }}]
prune = {{ sparsity = 0.75, scope = "{scope}", ramp_epochs = 2 }}
[[stages]]
name = "copy"
train = ["copy"]
start_from = "teacher"
epochs = 1
optimizer = {{ kind = "sgd", lr = 1e-12 }}
losses = [{{ kind = "ce" }}]
"#
    )
}

#[test]
fn pruning_reaches_its_sparsity_keeps_pruned_weights_at_zero_and_resumes() {
    let Some(gpu) = gpu() else { return };
    for scope in ["global", "layer"] {
        let cfg = config::parse("pruning", &pruning_config(scope)).unwrap();
        cfg.check("pruning").unwrap();
        let base = RunOptions::new(out_dir(&format!("prune-{scope}")));
        let (train, test) = run::load_data(&cfg, &base).unwrap();
        let whole = run::run(gpu, &cfg, &base, &train, &test, &mut |_| {}).unwrap();
        let report = whole.stages[1].models[0]
            .sparsity
            .clone()
            .expect("a report");
        // The exported checkpoint holds the zeros the report counts; biases and BatchNorm's
        // parameters stay dense.
        let saved =
            wgdistill::io::read_safetensors(&base.out.join("checkpoints/pruned.safetensors"))
                .unwrap();
        let mut zeros = 0;
        for (name, fraction) in &report.layers {
            let w = saved[name].as_f32().unwrap();
            let z = w.iter().filter(|v| **v == 0.0).count();
            assert_eq!(z as f64 / w.len() as f64, *fraction, "{name}");
            if scope == "layer" {
                assert_eq!(z, (0.75 * w.len() as f64).floor() as usize, "{name}");
            }
            zeros += z;
        }
        assert!(report.layers.keys().all(|k| k.ends_with(".weight")));
        assert!(!report.layers.keys().any(|k| k.contains("features.1.")));
        assert_eq!(zeros as f64 / report.pruned_weights as f64, report.sparsity);
        assert!((report.sparsity - 0.75).abs() < 0.01, "{report:?}");
        // The cubic ramp: 0.75·(1 − ½³) in the first epoch, the target from the second.
        let metrics = std::fs::read_to_string(base.out.join("metrics.jsonl")).unwrap();
        let sparsity: Vec<f64> = metrics
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter_map(|v| v["sparsity"].as_f64())
            .collect();
        assert_eq!(sparsity.len(), 3, "{metrics}");
        assert!((sparsity[0] - 0.75 * 0.875).abs() < 0.01, "{sparsity:?}");
        assert!(sparsity[1..].iter().all(|s| (s - 0.75).abs() < 0.01));
        // Interrupted inside the ramp and resumed: the same masks, the same weights.
        let opts = RunOptions {
            out: out_dir(&format!("prune-{scope}-cut")),
            stop_after: Some((1, 1)),
            ..base.clone()
        };
        assert!(run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {}).is_err());
        let resumed = RunOptions {
            resume: true,
            stop_after: None,
            ..opts
        };
        run::run(gpu, &cfg, &resumed, &train, &test, &mut |_| {}).unwrap();
        let again =
            wgdistill::io::read_safetensors(&resumed.out.join("checkpoints/pruned.safetensors"))
                .unwrap();
        assert!(again == saved, "{scope}: resumed weights differ");
        // start_from copies: a stage that barely moves its copy ends with the teacher's
        // weights, and the teacher pruned nothing of its own.
        let read = |m: &str| {
            wgdistill::io::read_safetensors(&base.out.join(format!("checkpoints/{m}.safetensors")))
                .unwrap()
        };
        let (teacher, copy) = (read("teacher"), read("copy"));
        for (name, t) in &teacher {
            if name.contains("running_") || name.contains("num_batches") {
                continue;
            }
            let (t, c) = (t.as_f32().unwrap(), copy[name].as_f32().unwrap());
            assert!(
                t.iter().all(|v| *v != 0.0),
                "{name}: the teacher stays dense"
            );
            assert!(
                t.iter().zip(c).all(|(a, b)| (a - b).abs() <= 1e-6),
                "{name}: the copy started elsewhere"
            );
        }
    }
}

#[test]
fn pruning_masks_take_the_smallest_magnitudes_globally_or_per_layer() {
    use std::collections::BTreeMap;
    use wgdistill::train::prune::{PruneScope, masks};
    let params: BTreeMap<String, Vec<f32>> = [
        ("a.weight".to_string(), vec![0.1, -0.5, 0.0, 2.0]),
        ("b.weight".to_string(), vec![-0.05, 0.3, 0.1, -0.1]),
    ]
    .into();
    let global = masks(&params, 0.5, PruneScope::Global);
    // The four smallest |w| over both: 0.0, 0.05 and the three at 0.1 tie, broken by position
    // (a before b, earlier first).
    assert_eq!(global["a.weight"], [0.0, 1.0, 0.0, 1.0]);
    assert_eq!(global["b.weight"], [0.0, 1.0, 0.0, 1.0]);
    let layer = masks(&params, 0.5, PruneScope::Layer);
    assert_eq!(layer["a.weight"], [0.0, 1.0, 0.0, 1.0]);
    assert_eq!(layer["b.weight"], [0.0, 1.0, 0.0, 1.0]);
    let layer = masks(&params, 0.25, PruneScope::Layer);
    assert_eq!(layer["a.weight"], [1.0, 1.0, 0.0, 1.0]);
    assert_eq!(layer["b.weight"], [0.0, 1.0, 1.0, 1.0]);
    assert!(
        masks(&params, 0.0, PruneScope::Global)
            .values()
            .all(|m| m.iter().all(|v| *v == 1.0))
    );
}

/// Low-rank students: the teacher's second convolution and classifier split by SVD
/// (`low_rank` with `start_from`). At full rank the split copy keeps the teacher's accuracy
/// (a stage that barely moves it); at ranks 2 and 3 KD recovers it, the checkpoint holds the
/// factors, and the log says how much of each weight's energy the rank kept.
#[test]
fn low_rank_students_start_from_the_teachers_svd() {
    let Some(gpu) = gpu() else { return };
    let text = r#"
seed = 3
[data]
dataset = "synthetic"
batch_size = 64
train_limit = 200
test_limit = 100
[models.teacher]
arch = "cnn"
channels = [4, 8]
[models.full]
arch = "cnn"
channels = [4, 8]
low_rank = { "features.4" = 8, classifier = 10 }
[models.thin]
arch = "cnn"
channels = [4, 8]
low_rank = { "features.4" = 2, classifier = 3 }
[[stages]]
name = "teacher"
train = ["teacher"]
epochs = 1
optimizer = { kind = "sgd", lr = 0.1, momentum = 0.9 }
losses = [{ kind = "ce" }]
[[stages]]
name = "full"
train = ["full"]
start_from = "teacher"
epochs = 1
optimizer = { kind = "sgd", lr = 1e-12 }
losses = [{ kind = "ce" }]
[[stages]]
name = "thin"
train = ["thin"]
start_from = "teacher"
teachers = ["teacher"]
epochs = 1
optimizer = { kind = "sgd", lr = 0.05, momentum = 0.9 }
losses = [{ kind = "ce", weight = 0.1 }, { kind = "kd", weight = 0.9 }]
"#;
    let cfg = config::parse("low_rank", text).unwrap();
    cfg.check("low_rank").unwrap();
    let opts = RunOptions::new(out_dir("low-rank"));
    let (train, test) = run::load_data(&cfg, &opts).unwrap();
    let mut log = Vec::new();
    let whole = run::run(gpu, &cfg, &opts, &train, &test, &mut |m| {
        log.push(m.to_string())
    })
    .unwrap();
    let accuracy = |stage: usize| whole.stages[stage].models[0].test_accuracy;
    assert!(
        (accuracy(1) - accuracy(0)).abs() <= 0.01,
        "full rank: {} vs the teacher's {}",
        accuracy(1),
        accuracy(0)
    );
    let saved =
        wgdistill::io::read_safetensors(&opts.out.join("checkpoints/thin.safetensors")).unwrap();
    assert_eq!(saved["classifier.0.weight"].shape, [3, 392]);
    assert_eq!(saved["classifier.1.weight"].shape, [10, 3]);
    assert_eq!(saved["features.4.0.weight"].shape, [2, 4, 3, 3]);
    assert_eq!(saved["features.4.1.weight"].shape, [8, 2, 1, 1]);
    assert!(!saved.contains_key("classifier.weight"));
    let said = |needle: &str| log.iter().any(|l| l.contains(needle));
    assert!(
        said("stage 'thin': start_from: classifier factorised at rank 3 keeps"),
        "{log:?}"
    );
    assert!(said(
        "stage 'full': start_from: features.4 factorised at rank 8 keeps 100.0%"
    ));
}

/// Quantisation-aware students (`qat = true`): one distilled from scratch, one started from the
/// float teacher (its observers fresh) at a vanishing learning rate, which keeps the teacher's
/// accuracy through the fake quantisers. Checkpoints carry each observer's range, scale and
/// zero point.
#[test]
fn quantisation_aware_students_train_with_kd_and_start_from_a_float_model() {
    let Some(gpu) = gpu() else { return };
    let text = r#"
seed = 5
[data]
dataset = "synthetic"
batch_size = 64
train_limit = 256
test_limit = 128
[models.teacher]
arch = "cnn"
channels = [4, 8]
[models.qat_kd]
arch = "cnn"
channels = [4, 8]
qat = true
int8 = true
[models.qat_copy]
arch = "cnn"
channels = [4, 8]
qat = true
[[stages]]
name = "teacher"
train = ["teacher"]
epochs = 2
optimizer = { kind = "sgd", lr = 0.1, momentum = 0.9 }
losses = [{ kind = "ce" }]
[[stages]]
name = "qat-kd"
train = ["qat_kd"]
teachers = ["teacher"]
epochs = 2
optimizer = { kind = "sgd", lr = 0.1, momentum = 0.9 }
losses = [{ kind = "ce", weight = 0.1 }, { kind = "kd", weight = 0.9 }]
[[stages]]
name = "qat-copy"
train = ["qat_copy"]
start_from = "teacher"
epochs = 1
optimizer = { kind = "sgd", lr = 1e-12 }
losses = [{ kind = "ce" }]
"#;
    let cfg = config::parse("qat", text).unwrap();
    cfg.check("qat").unwrap();
    let opts = RunOptions::new(out_dir("qat"));
    let (train, test) = run::load_data(&cfg, &opts).unwrap();
    let whole = run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {}).unwrap();
    let accuracy = |stage: usize| whole.stages[stage].models[0].test_accuracy;
    assert!(accuracy(1) > 0.5, "QAT with KD: {}", accuracy(1));
    assert!(
        (accuracy(2) - accuracy(0)).abs() <= 0.05,
        "fake-quantised copy {} vs the float teacher's {}",
        accuracy(2),
        accuracy(0)
    );
    let saved = wgdistill::io::read_safetensors(&opts.out.join("checkpoints/qat_copy.safetensors"))
        .unwrap();
    let qparams = saved["features.4.weight_fake_quant.qparams"]
        .as_f32()
        .unwrap();
    assert_eq!(saved["features.4.weight_fake_quant.qparams"].shape, [8, 2]);
    // Symmetric int8: zero points 0, scales observed (not the initial 1).
    assert!(
        qparams
            .chunks(2)
            .all(|p| p[1] == 0.0 && p[0] > 0.0 && p[0] < 1.0)
    );
    let input = saved["quant.qparams"].as_f32().unwrap();
    assert!(input[0] > 0.0 && input[0] < 1.0 && (0.0..=255.0).contains(&input[1]));
    assert!(
        saved
            .keys()
            .any(|k| k.ends_with(".activation_post_process.range"))
    );
    // `int8 = true`: the int8 export beside the checkpoint, as accurate as the fake-quantised
    // model with the integer kernels (the logits agree up to rounding ties).
    let int8 = whole.stages[1].models[0].int8_test_accuracy.unwrap();
    assert!(
        (int8 - accuracy(1)).abs() <= 0.01,
        "int8 {int8} vs fake-quantised {}",
        accuracy(1)
    );
    let export =
        wgdistill::io::read_safetensors(&opts.out.join("checkpoints/qat_kd.int8.safetensors"))
            .unwrap();
    assert_eq!(export["features.0.weight"].dtype_name(), "i8");
    assert!(whole.stages[2].models[0].int8_test_accuracy.is_none());
}

/// A term's `rampup` is written before every step: a label term ramped linearly over its one
/// epoch trains the model (its weight climbing from 0 at the first step), where a weight written
/// only at the epoch's start would stay 0 all epoch and leave the model exactly as a zero weight
/// does.
#[test]
fn a_rampup_is_applied_step_by_step_within_an_epoch() {
    let Some(gpu) = gpu() else { return };
    let train_with = |name: &str, term: &str| {
        let text = format!(
            r#"
seed = 3
[data]
dataset = "synthetic"
batch_size = 32
train_limit = 128
test_limit = 32
[models.student]
arch = "mlp"
hidden = [16]
[[stages]]
name = "student"
train = ["student"]
epochs = 1
optimizer = {{ kind = "sgd", lr = 0.1 }}
losses = [{{ kind = "ce", {term} }}]
"#
        );
        let cfg = config::parse(name, &text).unwrap();
        cfg.check(name).unwrap();
        let opts = RunOptions::new(out_dir(name));
        let (train, test) = run::load_data(&cfg, &opts).unwrap();
        run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {}).unwrap();
        let w = wgdistill::io::read_safetensors(&opts.out.join("checkpoints/student.safetensors"))
            .unwrap();
        w["hidden.0.weight"].as_f32().unwrap().to_vec()
    };
    let untouched = train_with("ramp-zero", "weight = 0.0");
    let ramped = train_with(
        "ramp-linear",
        r#"rampup = { epochs = 1.0, shape = "linear" }"#,
    );
    let full = train_with("ramp-full", "weight = 1.0");
    let moved = |w: &[f32]| -> f64 {
        w.iter()
            .zip(&untouched)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    // Weights 0, 1/4, 2/4, 3/4 over the four steps: it moves, but less than at full weight.
    assert!(moved(&ramped) > 0.0, "the ramp never rose above 0");
    assert!(
        moved(&ramped) < moved(&full),
        "{} vs {}",
        moved(&ramped),
        moved(&full)
    );
}

/// A cnn's `kernel` sets its convolutions' size: a 5×5 cnn trains, its checkpoint holds 5×5
/// weights, and the same architecture built from the library evaluates to its recorded accuracy.
#[test]
fn a_cnn_trains_with_the_kernel_size_it_is_given() {
    let Some(gpu) = gpu() else { return };
    let text = r#"
seed = 5
[data]
dataset = "synthetic"
batch_size = 32
train_limit = 96
test_limit = 64
[models.wide]
arch = "cnn"
channels = [8, 12]
kernel = 5
[[stages]]
name = "wide"
train = ["wide"]
epochs = 1
optimizer = { kind = "adamw", lr = 2e-3 }
losses = [{ kind = "ce" }]
"#;
    let cfg = config::parse("kernel", text).unwrap();
    cfg.check("kernel").unwrap();
    let opts = RunOptions::new(out_dir("cnn-kernel"));
    let (train, test) = run::load_data(&cfg, &opts).unwrap();
    let s = run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {}).unwrap();
    let w =
        wgdistill::io::read_safetensors(&opts.out.join("checkpoints/wide.safetensors")).unwrap();
    assert_eq!(w["features.0.weight"].shape, vec![8, 1, 5, 5]);
    assert_eq!(w["features.4.weight"].shape, vec![12, 8, 5, 5]);
    let graph = wgdistill::models::cnn_with_kernel(
        [64, 1, 28, 28],
        &[8, 12],
        5,
        10,
        wgdistill::models::Modality::Image,
    )
    .unwrap();
    let weights = wgdistill::graph::Weights::load(gpu, &graph, "wide", &w).unwrap();
    let acc = run::evaluate(gpu, &graph, &weights, &test).unwrap();
    let recorded = s.stages[0].models[0].test_accuracy;
    assert!((acc - recorded).abs() < 1e-9, "{acc} vs {recorded}");
    // A 3×3 cnn cannot load them.
    let three = wgdistill::models::cnn([64, 1, 28, 28], &[8, 12], 10).unwrap();
    assert!(wgdistill::graph::Weights::load(gpu, &three, "wide", &w).is_err());
}

/// `labelled`: the label terms see only that many images' labels, the other terms every image.
/// A stage of label terms alone trains on the labelled images only (ten, one per class, in one
/// step, learn little); KD from a teacher over the unlabelled images learns them all; too few or too many
/// labels are one line naming the stage and key.
#[test]
fn a_stage_with_few_labels_learns_from_the_teacher_on_the_rest() {
    let Some(gpu) = gpu() else { return };
    let text = |labelled: usize| {
        format!(
            r#"
seed = 3
[data]
dataset = "synthetic"
batch_size = 32
train_limit = 320
test_limit = 160
[models.teacher]
arch = "mlp"
hidden = [32]
[models.few]
arch = "mlp"
hidden = [16]
[models.kd]
arch = "mlp"
hidden = [16]
[[stages]]
name = "teacher"
train = ["teacher"]
epochs = 8
optimizer = {{ kind = "sgd", lr = 0.05, momentum = 0.9 }}
losses = [{{ kind = "ce" }}]
[[stages]]
name = "few"
train = ["few"]
epochs = 1
labelled = {labelled}
optimizer = {{ kind = "sgd", lr = 0.05, momentum = 0.9 }}
losses = [{{ kind = "ce" }}]
[[stages]]
name = "kd"
train = ["kd"]
teachers = ["teacher"]
epochs = 3
labelled = {labelled}
optimizer = {{ kind = "sgd", lr = 0.05, momentum = 0.9 }}
losses = [{{ kind = "ce", weight = 0.1 }}, {{ kind = "kd", weight = 0.9, temperature = 4.0 }}]
[models.kd_labelled]
arch = "mlp"
hidden = [16]
[[stages]]
name = "kd_labelled"
train = ["kd_labelled"]
teachers = ["teacher"]
epochs = 1
labelled = {labelled}
use_unlabelled = false
optimizer = {{ kind = "sgd", lr = 0.05, momentum = 0.9 }}
losses = [{{ kind = "ce", weight = 0.1 }}, {{ kind = "kd", weight = 0.9, temperature = 4.0 }}]
"#
        )
    };
    let run_text = |t: String| {
        let cfg = config::parse("labelled.toml", &t).unwrap();
        cfg.check("labelled.toml").unwrap();
        let opts = RunOptions::new(out_dir("labelled"));
        let (train, test) = run::load_data(&cfg, &opts).unwrap();
        run::run(gpu, &cfg, &opts, &train, &test, &mut |_| {})
    };
    let s = run_text(text(10)).unwrap();
    let acc = |i: usize| s.stages[i].models[0].test_accuracy;
    // The synthetic set draws classes 0 and 7, 1 and 8, 2 and 9 alike: 70% at best.
    assert!(acc(0) > 0.6, "the teacher learns the set: {}", acc(0));
    assert!(acc(2) > 0.6, "KD teaches the rest: {}", acc(2));
    assert!(acc(1) < acc(2) - 0.2, "ten labels, one step: {}", acc(1));
    // Epochs of the ten labelled images alone, and of every image with KD unless told
    // `use_unlabelled = false`.
    let metrics = std::fs::read_to_string(out_dir_kept("labelled").join("metrics.jsonl")).unwrap();
    for line in metrics.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let few = v["stage"] == "few" || v["stage"] == "kd_labelled";
        let want = if few { 10 } else { 320 };
        assert_eq!(v["samples"], want, "{line}");
    }
    for (labelled, needle) in [(321, "320 training images"), (1, "at least 2")] {
        let e = run_text(text(labelled)).err().unwrap().to_string();
        assert!(
            e.contains("stage 'few': labelled") && e.contains(needle),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

/// An updated run (`--update`: resumed with a changed configuration) keeps the finished stages
/// whose own settings, data, seed and inputs did not change, and trains the others: a changed
/// row, a new row, and the rows that read a changed teacher. Its metrics keep one line per epoch
/// of every stage. A plain resume still refuses the changed configuration.
#[test]
fn a_changed_configuration_keeps_its_unchanged_stages() {
    let Some(gpu) = gpu() else { return };
    let text = |teacher_epochs: usize, b_lr: f64, extra: &str| {
        format!(
            r#"
seed = 2
[data]
dataset = "synthetic"
batch_size = 32
train_limit = 96
test_limit = 32
[models.teacher]
arch = "mlp"
hidden = [16]
[models.a]
arch = "mlp"
hidden = [8]
[models.b]
arch = "mlp"
hidden = [8]
[models.c]
arch = "mlp"
hidden = [8]
[[stages]]
name = "teacher"
train = ["teacher"]
epochs = {teacher_epochs}
optimizer = {{ kind = "sgd", lr = 0.1 }}
losses = [{{ kind = "ce" }}]
[[stages]]
name = "a"
train = ["a"]
teachers = ["teacher"]
epochs = 1
optimizer = {{ kind = "sgd", lr = 0.1 }}
losses = [{{ kind = "ce" }}, {{ kind = "kd" }}]
[[stages]]
name = "b"
train = ["b"]
epochs = 2
optimizer = {{ kind = "sgd", lr = {b_lr} }}
losses = [{{ kind = "ce" }}]
{extra}"#
        )
    };
    let c = r#"[[stages]]
name = "c"
train = ["c"]
epochs = 1
optimizer = { kind = "sgd", lr = 0.1 }
losses = [{ kind = "ce" }]
"#;
    let out = out_dir("changed");
    let run_text = |t: String, resume: bool| {
        let cfg = config::parse("changed.toml", &t).unwrap();
        cfg.check("changed.toml").unwrap();
        let opts = RunOptions {
            resume,
            update: resume,
            ..RunOptions::new(out.clone())
        };
        let (train, test) = run::load_data(&cfg, &opts).unwrap();
        let mut lines = Vec::new();
        let s = run::run(gpu, &cfg, &opts, &train, &test, &mut |l| {
            lines.push(l.to_string())
        })
        .unwrap();
        (s, lines.join("\n"))
    };
    let wall = |s: &wgdistill::train::summary::Summary| -> Vec<f64> {
        s.stages.iter().map(|st| st.wall_seconds).collect()
    };
    let (first, _) = run_text(text(1, 0.1, ""), false);
    let cfg = config::parse("changed.toml", &text(1, 0.05, "")).unwrap();
    let resume = RunOptions {
        resume: true,
        ..RunOptions::new(out.clone())
    };
    let (train, test) = run::load_data(&cfg, &resume).unwrap();
    let e = run::run(gpu, &cfg, &resume, &train, &test, &mut |_| {}).unwrap_err();
    assert!(
        e.to_string()
            .contains("--update keeps its unchanged stages"),
        "{e}"
    );
    // b's learning rate changes and c is added: teacher and a are kept, b and c train.
    let (second, log) = run_text(text(1, 0.05, c), true);
    assert!(
        log.contains("2 of its 3 finished stages unchanged and kept"),
        "{log}"
    );
    let (w1, w2) = (wall(&first), wall(&second));
    assert_eq!(w2.len(), 4);
    assert_eq!(w1[..2], w2[..2], "teacher and a kept");
    assert_ne!(w1[2], w2[2], "b trained again");
    assert!(log.contains("b epoch 2/2") && log.contains("c epoch 1/1") && !log.contains("a epoch"));
    // The same configuration again: everything kept, nothing trains.
    let (third, log) = run_text(text(1, 0.05, c), true);
    assert_eq!(wall(&third), w2);
    assert!(!log.contains("epoch"), "{log}");
    // The teacher changes: it and a (which reads it) train again; b and c are kept.
    let (fourth, log) = run_text(text(2, 0.05, c), true);
    let w4 = wall(&fourth);
    assert!(
        w4[0] != w2[0] && w4[1] != w2[1] && w4[2..] == w2[2..],
        "{w4:?} {w2:?}"
    );
    assert!(
        log.contains("teacher epoch 2/2") && log.contains("a epoch 1/1"),
        "{log}"
    );
    // One metrics line per epoch of each stage: 2 + 1 + 2 + 1.
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 6, "{metrics}");
}
