//! The benchmark catalogue behind `wgdistill bench` and the criterion benches: each case is a set
//! of prepared launches with the work it does (FLOPs or bytes of compulsory traffic) and, where
//! one applies, a baseline measured in the same run, so that figures travel between machines as
//! ratios. Sizes are smaller on CPU-like drivers so the whole catalogue stays quick there.

use serde::Serialize;

use crate::Result;
use crate::gpu::{BoundPlan, DType, Dispatch, Gpu, Tensor, TimingSource, measure};
use crate::kernels::batchnorm::{self, BatchNormState};
use crate::kernels::conv::{self, Conv2d};
use crate::kernels::matmul::{MatmulOptions, matmul};
use crate::kernels::pool::{self, Pool2d};
use crate::kernels::reduce::{AxisOp, reduce_axis};
use crate::kernels::{activation, dropout, elementwise, losses, optimizer, softmax};
use crate::reference::sample;

/// What a case does per run, for throughput.
#[derive(Clone, Copy, Debug)]
pub enum Work {
    /// Floating-point operations.
    Flops(f64),
    /// Bytes of compulsory memory traffic (each input read once, each output written once).
    Bytes(f64),
    /// Time only.
    Time,
}

/// One benchmark: prepared launches and what they do.
pub struct BenchCase {
    /// Kernel (or loss) name.
    pub kernel: String,
    /// Shape, as text.
    pub shape: String,
    /// Work per run.
    pub work: Work,
    /// Name of the case measured as this one's baseline (`kernel` + `shape` of another case).
    pub baseline: Option<String>,
    plan: Vec<Dispatch>,
}

impl BenchCase {
    /// The distinct kernels (`family::entry`) the case launches, in order.
    pub fn kernels(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for d in &self.plan {
            let name = d.kernel.spec.name();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// Creates the launches' bind groups once, for timing.
    pub fn bind(&self, gpu: &Gpu) -> Result<BoundPlan> {
        gpu.bind_plan(&self.plan)
    }

    /// `kernel shape`, the key baselines refer to.
    pub fn key(&self) -> String {
        format!("{} {}", self.kernel, self.shape)
    }
}

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

fn upload(gpu: &Gpu, shape: &[usize], seed: u64) -> Result<Tensor> {
    gpu.upload(shape, &sample(shape.iter().product(), seed))
}

fn case(
    kernel: &str,
    shape: String,
    work: Work,
    baseline: Option<String>,
    plan: Vec<Dispatch>,
) -> BenchCase {
    BenchCase {
        kernel: kernel.to_string(),
        shape,
        work,
        baseline,
        plan,
    }
}

fn matmul_case(gpu: &Gpu, m: usize, n: usize, k: usize) -> Result<BenchCase> {
    let (a, b) = (upload(gpu, &[m, k], 1)?, upload(gpu, &[k, n], 2)?);
    let (d, _) = matmul(gpu, &a, &b, None, MatmulOptions::default())?;
    Ok(case(
        "matmul",
        format!("{m}x{n}x{k}"),
        Work::Flops(2.0 * (m * n * k) as f64),
        None,
        vec![d],
    ))
}

/// Every case whose kernel name contains `filter` (all when `None`), plus the baselines they
/// are compared with (the `stream` copy always, conv2d's equal-FLOP matmul with conv2d).
pub fn catalogue(gpu: &Gpu, filter: Option<&str>) -> Result<Vec<BenchCase>> {
    let small = gpu.caps().device_type == "cpu";
    let pick = |cpu: usize, gpu: usize| if small { cpu } else { gpu };
    let wanted = |name: &str| filter.is_none_or(|f| name.contains(f));
    let mut cases = Vec::new();

    // Memory-bound baseline: a copy (out = 1·x), 8 bytes per element.
    let n = pick(1 << 20, 1 << 24);
    let stream_key = format!("stream [{n}]");
    {
        let x = upload(gpu, &[n], 3)?;
        let (d, _) = elementwise::scale_plan(gpu, &x, 1.0)?;
        cases.push(case(
            "stream",
            format!("[{n}]"),
            Work::Bytes(8.0 * n as f64),
            None,
            vec![d],
        ));
    }
    let mem = |kernel: &str, shape: String, bytes: f64, plan: Vec<Dispatch>| {
        case(
            kernel,
            shape,
            Work::Bytes(bytes),
            Some(stream_key.clone()),
            plan,
        )
    };

    if wanted("matmul") {
        for s in if small {
            vec![256, 1024]
        } else {
            vec![1024, 4096]
        } {
            cases.push(matmul_case(gpu, s, s, s)?);
        }
    }
    if wanted("conv2d") {
        let (b, c, hw) = if small { (8, 32, 16) } else { (64, 64, 32) };
        let x = upload(gpu, &[b, c, hw, hw], 4)?;
        let w = upload(gpu, &[c, c, 3, 3], 5)?;
        let spec = Conv2d {
            stride: [1, 1],
            padding: [1, 1],
        };
        let (d, y) = conv::forward(gpu, &x, &w, None, &spec)?;
        let (m, n, k) = (b * hw * hw, c, c * 9);
        // A matmul of the same FLOPs (the implicit GEMM's own shape) is conv's baseline; the
        // backward pass (dx and dw, each a GEMM of that size) is compared with it too.
        let base = matmul_case(gpu, m, n, k)?;
        let shape = format!("[{b}, {c}, {hw}, {hw}] 3x3 → {c}");
        cases.push(case(
            "conv2d",
            shape.clone(),
            Work::Flops(2.0 * (m * n * k) as f64),
            Some(base.key()),
            vec![d],
        ));
        let (backward, _) = conv::backward(gpu, &x, &w, &y, false, &spec)?;
        cases.push(case(
            "conv2d_bwd",
            shape,
            Work::Flops(4.0 * (m * n * k) as f64),
            Some(base.key()),
            backward,
        ));
        cases.push(base);
    }
    if wanted("relu") {
        let x = upload(gpu, &[n], 6)?;
        let (d, _) = activation::forward(gpu, activation::Kind::Relu, &x)?;
        cases.push(mem("relu", format!("[{n}]"), 8.0 * n as f64, vec![d]));
    }
    if wanted("dropout") {
        let x = upload(gpu, &[n], 18)?;
        let (d, _) = dropout::dropout(gpu, &x, 0.5, 1)?;
        cases.push(mem("dropout", format!("[{n}]"), 8.0 * n as f64, vec![d]));
    }
    if wanted("sum") {
        let (rows, cols) = (n / 256, 256);
        let x = upload(gpu, &[rows, cols], 19)?;
        let (d, _) = reduce_axis(gpu, &x, 0, AxisOp::Sum)?;
        cases.push(mem(
            "sum",
            format!("[{rows}, {cols}] axis 0"),
            4.0 * n as f64,
            vec![d],
        ));
    }
    if wanted("softmax") {
        let (rows, cols) = (pick(1024, 16384), 1000);
        let x = upload(gpu, &[rows, cols], 7)?;
        let (d, _) = softmax::forward(gpu, &x, 1.0, false)?;
        cases.push(mem(
            "softmax",
            format!("[{rows}, {cols}]"),
            8.0 * (rows * cols) as f64,
            vec![d],
        ));
    }
    if wanted("max_pool2d") {
        let shape = [pick(8, 64), 64, 32, 32];
        let x = upload(gpu, &shape, 8)?;
        let (d, y, _) = pool::max_pool_forward(
            gpu,
            &x,
            &Pool2d {
                kernel: [2, 2],
                stride: [2, 2],
                padding: [0, 0],
            },
        )?;
        cases.push(mem(
            "max_pool2d",
            format!("{shape:?} 2x2"),
            4.0 * x.numel() as f64 + 8.0 * y.numel() as f64,
            vec![d],
        ));
    }
    if wanted("batch_norm") {
        let shape = [pick(8, 64), 64, 32, 32];
        let c = shape[1];
        let x = upload(gpu, &shape, 9)?;
        let (g, b) = (upload(gpu, &[c], 10)?, upload(gpu, &[c], 11)?);
        let (rm, rv) = (gpu.zeros(&[c], DType::F32)?, gpu.zeros(&[c], DType::F32)?);
        let st = BatchNormState {
            gamma: &g,
            beta: &b,
            running_mean: &rm,
            running_var: &rv,
            eps: 1e-5,
            momentum: 0.1,
        };
        let (plan, _, _) = batchnorm::forward_train(gpu, &x, &st)?;
        cases.push(mem(
            "batch_norm",
            format!("{shape:?} train"),
            8.0 * x.numel() as f64,
            plan,
        ));
    }
    if wanted("kd") {
        for (b, c) in [(256, 10), (4096, 1000)] {
            let (s, t) = (upload(gpu, &[b, c], 12)?, upload(gpu, &[b, c], 13)?);
            let plan = losses::kd(gpu, &s, &t, 4.0)?.dispatches;
            cases.push(mem(
                "kd",
                format!("[{b}, {c}]"),
                12.0 * (b * c) as f64,
                plan,
            ));
        }
    }
    if wanted("rkd_angle") || wanted("sp") || wanted("rkd_distance") || wanted("pkt") {
        let (b, d) = (256, pick(128, 2048));
        let (s, t) = (upload(gpu, &[b, d], 14)?, upload(gpu, &[b, d], 15)?);
        type Loss = fn(&Gpu, &Tensor, &Tensor) -> Result<losses::LossPlan>;
        let all: [(&str, Loss); 4] = [
            ("sp", losses::sp),
            ("rkd_distance", losses::rkd_distance),
            ("rkd_angle", losses::rkd_angle),
            ("pkt", losses::pkt),
        ];
        for (name, f) in all {
            if wanted(name) {
                cases.push(case(
                    name,
                    format!("[{b}, {d}]"),
                    Work::Time,
                    None,
                    f(gpu, &s, &t)?.dispatches,
                ));
            }
        }
    }
    if wanted("adamw") {
        let p = upload(gpu, &[n], 16)?;
        let g = upload(gpu, &[n], 17)?;
        let (m, v) = (gpu.zeros(&[n], DType::F32)?, gpu.zeros(&[n], DType::F32)?);
        let step = gpu.upload(&[1], &[1u32])?;
        let s = optimizer::AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let d = optimizer::adamw(gpu, &s, &p, &g, &m, &v, &step)?;
        // Reads p, g, m, v; writes p, m, v.
        cases.push(mem("adamw", format!("[{n}]"), 28.0 * n as f64, vec![d]));
    }
    Ok(cases)
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
pub fn run(gpu: &Gpu, cases: &[BenchCase], target: f64) -> Result<Vec<BenchResult>> {
    let caps = gpu.caps();
    let mut results: Vec<BenchResult> = Vec::new();
    for c in cases {
        let bound = c.bind(gpu)?;
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
            kernels: c.kernels(),
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
