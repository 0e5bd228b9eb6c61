//! Timing the catalogue's bench suite (`wgdistill bench`, the criterion benches): each case's
//! prepared launches are bound once and replayed in one pass, and related to the baseline case
//! measured in the same run, so that figures travel between machines as ratios. Sizes are
//! smaller on CPU-like drivers so the whole suite stays quick there.

use serde::Serialize;

use crate::Result;
use crate::catalogue::{Case, Prepared, Suite, Work};
use crate::gpu::{BoundPlan, Dispatch, Gpu, TimingSource, measure};
use crate::graph::{Adapter, Graph, LossSpec, OptimizerSpec, StepSpec, TrainStep, Weights};
use crate::kernels::losses::Loss;
use crate::kernels::optimizer::Sgd;
use crate::models;

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
    /// Training samples per second, for whole training steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples_per_second: Option<f64>,
    /// Launches per run.
    pub launches: usize,
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
    /// Where the time goes (`--profile`): each launch timed alone, added up by kernel, largest
    /// first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profile: Vec<KernelTime>,
    /// The slowest launches of that profile, one by one, slowest first: which of a kernel's
    /// launches costs (a strided convolution among unit-stride ones, a first layer).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub slowest: Vec<LaunchTime>,
}

/// One launch of a case, timed alone.
#[derive(Clone, Debug, Serialize)]
pub struct LaunchTime {
    /// Its place in the case's plan, from 0.
    pub index: usize,
    /// `family::entry`.
    pub kernel: String,
    /// Seconds per run.
    pub seconds: f64,
}

/// Launches listed in a profile's `slowest`.
const SLOWEST: usize = 5;

/// One kernel's share of a case: its launches, each timed alone, added up.
#[derive(Clone, Debug, Serialize)]
pub struct KernelTime {
    /// `family::entry`.
    pub kernel: String,
    /// Launches of it per run.
    pub launches: usize,
    /// Seconds per run, all its launches together.
    pub seconds: f64,
}

/// Adds up per-launch times (kernel name, seconds) by kernel, largest first.
pub fn by_kernel(launches: impl IntoIterator<Item = (String, f64)>) -> Vec<KernelTime> {
    let mut out: Vec<KernelTime> = Vec::new();
    for (kernel, seconds) in launches {
        match out.iter_mut().find(|k| k.kernel == kernel) {
            Some(k) => {
                k.seconds += seconds;
                k.launches += 1;
            }
            None => out.push(KernelTime {
                kernel,
                launches: 1,
                seconds,
            }),
        }
    }
    out.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    out
}

/// Times each launch of a bound plan alone (`reps` repetitions in one pass); returns them
/// added up by kernel ([`by_kernel`]) and the slowest few one by one. Launches that update
/// state (optimisers) run `reps` extra times: profile work whose results you do not keep.
pub fn profile(
    gpu: &Gpu,
    bound: &BoundPlan,
    reps: u32,
) -> Result<(Vec<KernelTime>, Vec<LaunchTime>)> {
    let mut launches = Vec::with_capacity(bound.len());
    for (index, kernel) in bound.kernel_names().into_iter().enumerate() {
        let m = measure(gpu, reps, |pass| bound.record_one(pass, index))?;
        launches.push(LaunchTime {
            index,
            kernel,
            seconds: m.seconds,
        });
    }
    let kernels = by_kernel(launches.iter().map(|l| (l.kernel.clone(), l.seconds)));
    launches.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    launches.truncate(SLOWEST);
    Ok((kernels, launches))
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
/// baseline; with `profile`, also where each multi-launch case's time goes, by kernel.
pub fn run(gpu: &Gpu, cases: &[Case], target: f64, profile: bool) -> Result<Vec<BenchResult>> {
    let caps = gpu.caps();
    let mut results: Vec<BenchResult> = Vec::new();
    for c in cases {
        let prepared = c.prepare(gpu)?;
        let (bound, kernels) = match prepared.bound {
            Some(bound) => {
                let mut names: Vec<String> = Vec::new();
                for name in bound.kernel_names() {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                (bound, names)
            }
            None => (gpu.bind_plan(&prepared.plan)?, kernel_names(&prepared.plan)),
        };
        let (seconds, timing) = time_plan(gpu, &bound, target)?;
        let (launches, slowest) = if profile && bound.len() > 1 {
            self::profile(gpu, &bound, 3)?
        } else {
            (Vec::new(), Vec::new())
        };
        let (gflops, gbps, samples_per_second) = match c.work {
            Work::Flops(f) => (Some(f / seconds * 1e-9), None, None),
            Work::Bytes(b) => (None, Some(b / seconds * 1e-9), None),
            Work::Samples(n) => (None, None, Some(n / seconds)),
            Work::Time => (None, None, None),
        };
        results.push(BenchResult {
            kernel: c.kernel.clone(),
            shape: c.shape.clone(),
            seconds,
            gflops,
            gbps,
            samples_per_second,
            launches: bound.len(),
            baseline: c.baseline.clone(),
            ratio: None,
            kernels,
            adapter: caps.name.clone(),
            backend: caps.backend.to_string(),
            driver: format!("{} {}", caps.driver, caps.driver_info)
                .trim()
                .to_string(),
            timing,
            profile: launches,
            slowest,
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

/// A training step of the bench suite: the student, an optional frozen teacher, the loss terms.
struct StepCase {
    name: &'static str,
    shape: &'static str,
    student: fn([usize; 4]) -> Result<Graph>,
    teacher: Option<fn([usize; 4]) -> Result<Graph>>,
    losses: fn() -> Result<Vec<LossSpec>>,
}

/// The whole training steps timed beside the kernels (batch 128 of 28×28 images, SGD with
/// momentum): the default KD step, a CNN step, a ResNet-8 step and a feature-distillation step.
/// `tools/peers/torch_steps.py` runs the same steps in PyTorch under the same names.
const STEPS: &[StepCase] = &[
    StepCase {
        name: "kd_step",
        shape: "mlp[512,512]→mlp[32] b128",
        student: |i| models::mlp(i, &[32], 10),
        teacher: Some(|i| models::mlp(i, &[512, 512], 10)),
        losses: || {
            Ok(vec![
                LossSpec::logits(Loss::new("ce")?, 0.1),
                LossSpec::logits(Loss::new("kd")?.with("temperature", 4.0)?, 0.9),
            ])
        },
    },
    StepCase {
        name: "cnn_step",
        shape: "cnn[32,64] b128",
        student: |i| models::cnn(i, &[32, 64], 10),
        teacher: None,
        losses: || Ok(vec![LossSpec::logits(Loss::new("ce")?, 1.0)]),
    },
    StepCase {
        name: "resnet8_step",
        shape: "resnet8[16,32,64] b128",
        student: |i| models::resnet(i, 8, [16, 32, 64], 10),
        teacher: None,
        losses: || Ok(vec![LossSpec::logits(Loss::new("ce")?, 1.0)]),
    },
    StepCase {
        name: "mobilenet_step",
        shape: "mobilenet×0.5 relu6 b128",
        student: |i| models::mobilenet(i, 0.5, models::Activation::Relu6, 10),
        teacher: None,
        losses: || Ok(vec![LossSpec::logits(Loss::new("ce")?, 1.0)]),
    },
    StepCase {
        name: "feature_step",
        shape: "mlp[512,512]→mlp[32] kd+hint+rkd b128",
        student: |i| models::mlp(i, &[32], 10),
        teacher: Some(|i| models::mlp(i, &[512, 512], 10)),
        losses: || {
            let hint = LossSpec {
                adapter: Some(Adapter::Linear),
                ..LossSpec::taps(Loss::new("hint")?, 10.0, "hidden.0", "hidden.1")
            };
            Ok(vec![
                LossSpec::logits(Loss::new("ce")?, 0.1),
                LossSpec::logits(Loss::new("kd")?.with("temperature", 4.0)?, 0.9),
                hint,
                LossSpec::logits(Loss::new("rkd_distance")?, 25.0),
            ])
        },
    },
];

/// The batch of the step cases.
pub const STEP_BATCH: usize = 128;

/// The bench suite's whole training steps (none in the check suite).
pub fn step_cases(suite: Suite) -> Vec<Case> {
    if suite == Suite::Check {
        return Vec::new();
    }
    STEPS
        .iter()
        .map(|s| {
            let work = Work::Samples(STEP_BATCH as f64);
            Case::new(s.name, s.shape, work, move |gpu| {
                let input = [STEP_BATCH, 1, 28, 28];
                let student = (s.student)(input)?;
                let weights = Weights::init(gpu, &student, 1)?;
                let teacher = match s.teacher {
                    Some(build) => {
                        let g = build(input)?;
                        let w = Weights::init(gpu, &g, 2)?;
                        Some((g, w))
                    }
                    None => None,
                };
                let spec = StepSpec {
                    student: &student,
                    student_weights: &weights,
                    teacher: teacher.as_ref().map(|(g, w)| (g, w)),
                    losses: (s.losses)()?,
                    optimizer: OptimizerSpec::Sgd(Sgd {
                        lr: 0.01,
                        momentum: 0.9,
                        dampening: 0.0,
                        weight_decay: 5e-4,
                        nesterov: false,
                    }),
                    seed: 0,
                };
                let step = TrainStep::compile(gpu, &spec)?;
                Ok(Prepared {
                    plan: Vec::new(),
                    outputs: Vec::new(),
                    bound: Some(step.into_bound()),
                })
            })
        })
        .collect()
}

/// Images per inference batch in [`inference_cases`].
pub const INFERENCE_BATCH: usize = 256;

/// Stands in for observed grids: each weight channel's symmetric int8 scale from its largest
/// magnitude, and one fixed uint8 grid for the input and every activation (timing does not
/// depend on the values).
fn nominal_grids(graph: &Graph, host: &mut crate::io::TensorMap) {
    for (_, node) in graph.params() {
        if node.name.ends_with(".range") {
            let pairs = [-1.0f32, 1.0].repeat(node.shape[0]);
            host.insert(
                node.name.clone(),
                crate::io::HostTensor::f32(&node.shape, pairs),
            );
            continue;
        }
        let Some(prefix) = node.name.strip_suffix(".weight_fake_quant.qparams") else {
            if node.name.ends_with(".qparams") {
                let pairs = [0.05f32, 0.0].repeat(node.shape[0]);
                host.insert(
                    node.name.clone(),
                    crate::io::HostTensor::f32(&node.shape, pairs),
                );
            }
            continue;
        };
        let w = host[&format!("{prefix}.weight")]
            .as_f32()
            .unwrap_or(&[])
            .to_vec();
        let per = w.len() / node.shape[0];
        let pairs = w
            .chunks(per)
            .flat_map(|c| [c.iter().fold(1e-6f32, |m, v| m.max(v.abs())) / 127.5, 0.0])
            .collect();
        host.insert(
            node.name.clone(),
            crate::io::HostTensor::f32(&node.shape, pairs),
        );
    }
}

/// Inference of the CNN student of configs/qat.toml (channels [8, 16]) in f32 and as its int8
/// export, at batch [`INFERENCE_BATCH`]: images/s, the int8 model related to the f32 one.
pub fn inference_cases(suite: Suite) -> Vec<Case> {
    if suite == Suite::Check {
        return Vec::new();
    }
    let input = [INFERENCE_BATCH, 1, 28, 28];
    let shape = format!("cnn [8, 16] batch {INFERENCE_BATCH}");
    let work = Work::Samples(INFERENCE_BATCH as f64);
    let float = Case::new("inference f32", shape.clone(), work, move |gpu| {
        let g = models::cnn(input, &[8, 16], 10)?;
        let step = crate::graph::EvalStep::compile(gpu, &g, &Weights::init(gpu, &g, 1)?)?;
        Ok(Prepared {
            plan: Vec::new(),
            outputs: Vec::new(),
            bound: Some(step.into_bound()),
        })
    });
    let baseline = float.key();
    let int8 = Case::new("inference int8", shape, work, move |gpu| {
        let g = models::cnn(input, &[8, 16], 10)?.quantization_aware(0.01)?;
        let mut host = Weights::init(gpu, &g, 1)?.to_host(gpu)?;
        nominal_grids(&g, &mut host);
        let tensors = crate::graph::int8::export(&g, &host)?;
        let path = crate::kernels::int8::DotPath::for_gpu(gpu);
        let program = crate::graph::int8::Int8Program::compile(gpu, &g, &tensors, "bench", path)?;
        Ok(Prepared {
            plan: Vec::new(),
            outputs: Vec::new(),
            bound: Some(program.into_bound()),
        })
    })
    .baseline(baseline);
    vec![float, int8]
}

/// One result of a peer (`tools/peers/torch_steps.py`): the same case, measured elsewhere.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct PeerResult {
    /// Case name, as wgdistill's.
    pub kernel: String,
    /// Shape, as wgdistill's.
    pub shape: String,
    /// Seconds per run.
    pub seconds: f64,
    /// What ran it (framework, version, device).
    #[serde(default)]
    pub peer: String,
}

/// A case measured by wgdistill and by a peer.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// Case name.
    pub kernel: String,
    /// Shape.
    pub shape: String,
    /// wgdistill's seconds per run.
    pub ours: f64,
    /// The peer's seconds per run.
    pub theirs: f64,
    /// What the peer is.
    pub peer: String,
    /// The peer's time over ours: above 1, wgdistill is faster.
    pub speedup: f64,
}

/// Reads a peer's results (JSON, a list of rows with `kernel`, `shape`, `seconds`).
pub fn read_peer(path: &std::path::Path) -> Result<Vec<PeerResult>> {
    let what = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::error::input_error(&what, format!("cannot read ({e})")))?;
    let rows: Vec<PeerResult> = serde_json::from_str(&text).map_err(|e| {
        crate::error::input_error(&what, format!("not a list of peer results ({e})"))
    })?;
    if let Some(bad) = rows
        .iter()
        .find(|r| !(r.seconds.is_finite() && r.seconds > 0.0))
    {
        return Err(crate::error::input_error(
            &what,
            format!(
                "{} {}: seconds must be > 0, got {}",
                bad.kernel, bad.shape, bad.seconds
            ),
        ));
    }
    Ok(rows)
}

/// Our results beside a peer's, for the cases both measured (same kernel and shape).
pub fn compare(ours: &[BenchResult], peers: &[PeerResult]) -> Vec<Comparison> {
    ours.iter()
        .filter_map(|r| {
            let p = peers
                .iter()
                .find(|p| p.kernel == r.kernel && p.shape == r.shape)?;
            Some(Comparison {
                kernel: r.kernel.clone(),
                shape: r.shape.clone(),
                ours: r.seconds,
                theirs: p.seconds,
                peer: p.peer.clone(),
                speedup: p.seconds / r.seconds,
            })
        })
        .collect()
}
