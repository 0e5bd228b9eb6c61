//! Timing the catalogue's bench suite (`wgdistill bench`, the criterion benches): each case's
//! prepared launches are bound once and replayed in one pass, and related to the baseline case
//! measured in the same run, so that figures travel between machines as ratios. Sizes are
//! smaller on CPU-like drivers so the whole suite stays quick there.

use serde::Serialize;

use crate::Result;
use crate::catalogue::{Case, Suite, Work};
use crate::gpu::{BoundPlan, Dispatch, Gpu, TimingSource, measure};

/// One measured case.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// Kernel name.
    pub kernel: String,
    /// Shape.
    pub shape: String,
    /// Seconds per run.
    pub seconds: f64,
    /// GFLOP/s, for compute-bound cases.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflops: Option<f64>,
    /// GB/s of compulsory traffic, for memory-bound cases.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gbps: Option<f64>,
    /// The baseline case, measured in the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// Throughput relative to the baseline (higher is better).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// The kernels (`family::entry`) the case launched, which tells which variant the adapter got.
    pub kernels: Vec<String>,
    /// Adapter name.
    pub adapter: String,
    /// Backend.
    pub backend: String,
    /// Driver and version.
    pub driver: String,
    /// How the time was measured.
    pub timing: TimingSource,
}

/// The bench suite's cases whose kernel name contains `filter` (all when `None`), plus the
/// baselines they are related to, measured in the same run.
pub fn catalogue(gpu: &Gpu, filter: Option<&str>) -> Vec<Case> {
    let all = crate::catalogue::all(gpu, Suite::bench_for(gpu));
    let wanted = |c: &Case| filter.is_none_or(|f| c.kernel.contains(f));
    let baselines: Vec<String> = all
        .iter()
        .filter(|c| wanted(c))
        .filter_map(|c| c.baseline.clone())
        .collect();
    all.into_iter()
        .filter(|c| wanted(c) || baselines.contains(&c.key()))
        .collect()
}

/// The distinct kernels (`family::entry`) a plan launches, in order.
pub fn kernel_names(plan: &[Dispatch]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for d in plan {
        let name = d.kernel.spec.name();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Times one bound plan: three rounds of enough repetitions in one pass to fill about `target`
/// seconds each; the fastest round counts (the others met interference, not the kernel).
fn time_plan(gpu: &Gpu, bound: &BoundPlan, target: f64) -> Result<(f64, TimingSource)> {
    let probe = measure(gpu, 1, |pass| bound.record(pass))?;
    let reps = (target / probe.seconds.max(1e-7)).clamp(1.0, 1000.0) as u32;
    let mut best = measure(gpu, reps, |pass| bound.record(pass))?;
    for _ in 0..2 {
        let m = measure(gpu, reps, |pass| bound.record(pass))?;
        if m.seconds < best.seconds {
            best = m;
        }
    }
    Ok((best.seconds, best.source))
}

/// Measures every case (three rounds of about `target` seconds each) and relates each to its
/// baseline.
pub fn run(gpu: &Gpu, cases: &[Case], target: f64) -> Result<Vec<BenchResult>> {
    let caps = gpu.caps();
    let mut results: Vec<BenchResult> = Vec::new();
    for c in cases {
        let prepared = c.prepare(gpu)?;
        let bound = gpu.bind_plan(&prepared.plan)?;
        let (seconds, timing) = time_plan(gpu, &bound, target)?;
        let (gflops, gbps) = match c.work {
            Work::Flops(f) => (Some(f / seconds * 1e-9), None),
            Work::Bytes(b) => (None, Some(b / seconds * 1e-9)),
            Work::Time => (None, None),
        };
        results.push(BenchResult {
            kernel: c.kernel.clone(),
            shape: c.shape.clone(),
            seconds,
            gflops,
            gbps,
            baseline: c.baseline.clone(),
            ratio: None,
            kernels: kernel_names(&prepared.plan),
            adapter: caps.name.clone(),
            backend: caps.backend.to_string(),
            driver: format!("{} {}", caps.driver, caps.driver_info)
                .trim()
                .to_string(),
            timing,
        });
    }
    let rate = |r: &BenchResult| r.gflops.or(r.gbps);
    for i in 0..results.len() {
        let Some(base) = results[i].baseline.clone() else {
            continue;
        };
        let base_rate = results
            .iter()
            .find(|r| format!("{} {}", r.kernel, r.shape) == base)
            .and_then(rate);
        results[i].ratio = rate(&results[i]).zip(base_rate).map(|(a, b)| a / b);
    }
    Ok(results)
}
