//! `wgdistill search` at CI size: configs/search.toml on the synthetic set with a small space,
//! its Pareto front and winner against its records, the winner's checkpoint against its
//! recorded accuracy, a resumed search replaying its cache, and a budget nothing meets.

mod common;

use std::path::PathBuf;

use common::gpu;
use wgdistill::graph::Weights;
use wgdistill::train::config::{self, Config, DatasetKind};
use wgdistill::train::run;
use wgdistill::train::search::space::Family;
use wgdistill::train::search::{self, SearchOptions};

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgdistill-search-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The shipped search on 700 synthetic images: a one-epoch MLP teacher, six candidates from
/// small MLPs and CNNs, a generous budget.
fn ci_sized() -> Config {
    let mut cfg = config::parse("search", include_str!("../configs/search.toml")).unwrap();
    cfg.data.dataset = DatasetKind::Synthetic;
    cfg.data.batch_size = 32;
    cfg.data.train_limit = Some(700);
    cfg.data.test_limit = Some(150);
    cfg.data.teacher_cache = false;
    cfg.stages[0].epochs = 1;
    cfg.models.insert(
        "teacher".into(),
        toml::from_str("arch = \"mlp\"\nhidden = [64]").unwrap(),
    );
    let s = cfg.search.as_mut().unwrap();
    (s.candidates, s.population, s.latency_batch) = (6, 3, 64);
    (s.validation, s.proxy_images, s.final_epochs) = (200, 300, 1);
    s.latency_ms = 1e6;
    s.space.families = vec![Family::Mlp, Family::Cnn];
    (s.space.mlp_widths, s.space.mlp_depth) = (vec![16, 32], [1, 2]);
    (s.space.cnn_channels, s.space.cnn_depth) = (vec![4, 8], [1, 1]);
    cfg.check("search").unwrap();
    cfg
}

#[test]
fn a_search_finds_its_front_and_trains_its_winner_and_resumes_from_its_cache() {
    let Some(gpu) = gpu() else { return };
    let cfg = ci_sized();
    let opts = SearchOptions {
        out: out_dir("whole"),
        resume: false,
        teacher_cache: None,
    };
    let (train, test) = run::load_data(&cfg, &run::RunOptions::new(&opts.out)).unwrap();
    let mut lines = Vec::new();
    let s = search::search(gpu, &cfg, &opts, &train, &test, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert_eq!(s.candidates.len(), 6);
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("candidate ")).count(),
        6
    );
    // Every trained candidate is on the front or dominated by a front member.
    let front: Vec<_> = s.front.iter().map(|&i| &s.candidates[i]).collect();
    assert!(!front.is_empty());
    for r in s.candidates.iter().filter(|r| r.proxy_accuracy.is_some()) {
        let acc = r.proxy_accuracy.unwrap();
        let dominated = front.iter().any(|f| {
            f.latency_ms <= r.latency_ms && f.proxy_accuracy.unwrap() >= acc && f.key != r.key
        });
        assert!(
            front.iter().any(|f| f.key == r.key) || dominated,
            "{}",
            r.key
        );
        assert!(r.feasible && r.latency_ms > 0.0 && r.parameters > 0);
    }
    // The winner is the most accurate within the budget, and its checkpoint is what it scored.
    let w = s.winner.as_ref().expect("a winner");
    let best = s
        .candidates
        .iter()
        .filter_map(|r| r.proxy_accuracy)
        .fold(0.0, f64::max);
    assert_eq!(s.candidates[w.index].proxy_accuracy, Some(best));
    let graph = w.model.graph([32, 1, 28, 28], 10).unwrap();
    let host = wgdistill::io::read_safetensors(std::path::Path::new(&w.checkpoint)).unwrap();
    let weights = Weights::load(gpu, &graph, "winner", &host).unwrap();
    let acc = run::evaluate(gpu, &graph, &weights, &test).unwrap();
    assert!(
        (acc - w.test_accuracy).abs() < 1e-12,
        "{acc} vs {}",
        w.test_accuracy
    );
    let json: search::SearchSummary =
        serde_json::from_str(&std::fs::read_to_string(opts.out.join("search.json")).unwrap())
            .unwrap();
    // As written (JSON keeps floats to within a last bit).
    assert_eq!(json.candidates.len(), s.candidates.len());
    for (a, b) in json.candidates.iter().zip(&s.candidates) {
        assert_eq!((&a.key, a.proxy_accuracy), (&b.key, b.proxy_accuracy));
        assert!((a.latency_ms - b.latency_ms).abs() < 1e-9);
    }
    let svg = std::fs::read_to_string(opts.out.join("pareto.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains(&format!("winner: {}", w.key)));

    // Resumed, the search replays its cache: the same candidates, nothing evaluated again.
    let cached = std::fs::read_to_string(opts.out.join("candidates.jsonl")).unwrap();
    let resumed_opts = SearchOptions {
        resume: true,
        ..opts.clone()
    };
    let mut again = Vec::new();
    let r = search::search(gpu, &cfg, &resumed_opts, &train, &test, &mut |l| {
        again.push(l.to_string())
    })
    .unwrap();
    let keys = |s: &search::SearchSummary| {
        s.candidates
            .iter()
            .map(|c| c.key.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&r), keys(&s));
    assert!(
        again
            .iter()
            .filter(|l| l.starts_with("candidate "))
            .all(|l| l.contains("reused")),
        "{again:?}"
    );
    assert_eq!(
        std::fs::read_to_string(opts.out.join("candidates.jsonl")).unwrap(),
        cached
    );
    assert_eq!(r.winner.unwrap().test_accuracy, w.test_accuracy);

    // Changed search settings keep the teacher and evaluate the candidates afresh.
    let mut other = cfg.clone();
    other.search.as_mut().unwrap().candidates = 3;
    let mut changed = Vec::new();
    let c = search::search(gpu, &other, &resumed_opts, &train, &test, &mut |l| {
        changed.push(l.to_string())
    })
    .unwrap();
    assert!(changed[0].contains("evaluated afresh"), "{changed:?}");
    assert!(
        !changed.iter().any(|l| l.starts_with("teacher epoch")),
        "{changed:?}"
    );
    assert!(!changed.iter().any(|l| l.contains("reused")), "{changed:?}");
    assert_eq!(
        c.candidates
            .iter()
            .filter(|r| r.proxy_accuracy.is_some())
            .count(),
        3
    );
}

/// Candidates over the budget are timed, not trained, and not counted: the search draws until
/// its number of trained candidates, with evolution's parents among those.
#[test]
fn candidates_over_the_budget_are_drawn_again() {
    let Some(gpu) = gpu() else { return };
    let mut cfg = ci_sized();
    let s = cfg.search.as_mut().unwrap();
    // Every MLP fits and no CNN does: a 4-channel conv costs more than the widest MLP here.
    s.space.mlp_widths = vec![8, 16];
    s.space.mlp_depth = [1, 1];
    s.space.cnn_channels = vec![64];
    (s.candidates, s.population) = (2, 2);
    let opts = SearchOptions {
        out: out_dir("over"),
        resume: false,
        teacher_cache: None,
    };
    let (train, test) = run::load_data(&cfg, &run::RunOptions::new(&opts.out)).unwrap();
    // The budget between the slowest MLP and the fastest CNN, measured here.
    let (mlp, cnn) = (
        search::space::Candidate::Mlp { hidden: vec![16] },
        search::space::Candidate::Cnn {
            channels: vec![64],
            kernel: 3,
        },
    );
    let time = |c: &search::space::Candidate| {
        search::time_inference(gpu, c, 64, train.shape, 10)
            .unwrap()
            .0
    };
    let (fast, slow) = (time(&mlp), time(&cnn));
    assert!(fast < slow, "{fast} ms vs {slow} ms");
    cfg.search.as_mut().unwrap().latency_ms = (fast * slow).sqrt();
    let s = search::search(gpu, &cfg, &opts, &train, &test, &mut |_| {}).unwrap();
    let trained: Vec<_> = s
        .candidates
        .iter()
        .filter(|r| r.proxy_accuracy.is_some())
        .collect();
    assert_eq!(trained.len(), 2);
    assert!(trained.iter().all(|r| r.key.starts_with("mlp-")));
    assert!(
        s.candidates
            .iter()
            .filter(|r| r.key.starts_with("cnn-"))
            .all(|r| !r.feasible && r.proxy_accuracy.is_none())
    );
    assert!(s.winner.unwrap().key.starts_with("mlp-"));
}

#[test]
fn a_budget_no_candidate_meets_is_one_line() {
    let Some(gpu) = gpu() else { return };
    let mut cfg = ci_sized();
    let s = cfg.search.as_mut().unwrap();
    (s.latency_ms, s.candidates) = (1e-6, 2);
    let opts = SearchOptions {
        out: out_dir("budget"),
        resume: false,
        teacher_cache: None,
    };
    let (train, test) = run::load_data(&cfg, &run::RunOptions::new(&opts.out)).unwrap();
    let e = search::search(gpu, &cfg, &opts, &train, &test, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("search.latency_ms") && e.contains("no candidate meets"),
        "{e}"
    );
    assert!(!e.contains('\n'));
}
