//! Shared helpers for GPU tests: one device per test binary, and the CI rule that a missing
//! adapter fails rather than skips.
#![allow(dead_code)]

use std::sync::OnceLock;

use wgdistill::gpu::Gpu;

static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();

/// Whether this run is CI, where a missing adapter is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The adapter chosen by `WGPU_BACKEND`/`WGPU_ADAPTER_NAME`, shared by the binary's tests.
/// Without one: panics in CI, otherwise prints a visible SKIP line and returns `None`.
pub fn gpu() -> Option<&'static Gpu> {
    match GPU.get_or_init(|| Gpu::from_env().map_err(|e| e.to_string())) {
        Ok(gpu) => Some(gpu),
        Err(e) if in_ci() => panic!("CI requires a GPU adapter: {e}"),
        Err(e) => {
            eprintln!("SKIP (no GPU adapter; CI would fail here): {e}");
            None
        }
    }
}

#[allow(unused_imports)]
pub use wgdistill::reference::widen;
pub use wgdistill::rng::sample as data;

/// Shapes that are not multiples of any workgroup or tile size.
pub const ODD_SIZES: &[usize] = &[1, 7, 33, 129, 1000, 65_537];

/// A golden case from `tests/fixtures/golden/manifest.json`.
#[derive(serde::Deserialize)]
pub struct GoldenCase {
    /// Case name (file stem).
    pub name: String,
    /// Op name.
    pub op: String,
    /// Attributes.
    pub attrs: std::collections::BTreeMap<String, f64>,
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
}

/// The golden cases with their inputs and expected outputs.
pub fn golden_cases() -> Vec<(
    GoldenCase,
    wgdistill::io::TensorMap,
    wgdistill::io::TensorMap,
)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden");
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    let cases: Vec<GoldenCase> = serde_json::from_str(&manifest).expect("manifest parses");
    cases
        .into_iter()
        .map(|c| {
            let input =
                wgdistill::io::read_safetensors(&dir.join(format!("{}.in.safetensors", c.name)))
                    .expect("input");
            let expected = wgdistill::io::read_safetensors(
                &dir.join(format!("{}.expected.safetensors", c.name)),
            )
            .expect("expected");
            (c, input, expected)
        })
        .collect()
}

/// Central finite differences of `f` at `x`, step `h`.
pub fn finite_difference(x: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = x[i];
            x[i] = orig + h;
            let up = f(&x);
            x[i] = orig - h;
            let down = f(&x);
            x[i] = orig;
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// Asserts two f64 vectors agree within `atol + rtol·|want|`.
pub fn assert_close_f64(what: &str, got: &[f64], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// Uploads `v` as a tensor of `shape`.
pub fn up(gpu: &Gpu, shape: &[usize], v: &[f32]) -> wgdistill::gpu::Tensor {
    gpu.upload(shape, v).unwrap()
}

/// Runs one prepared launch and reads its output.
pub fn run(gpu: &Gpu, (d, out): (wgdistill::gpu::Dispatch, wgdistill::gpu::Tensor)) -> Vec<f32> {
    gpu.execute(&[d]).unwrap();
    gpu.read::<f32>(&out).unwrap()
}

/// Runs prepared launches and reads `t`.
pub fn read(gpu: &Gpu, plan: &[wgdistill::gpu::Dispatch], t: &wgdistill::gpu::Tensor) -> Vec<f32> {
    gpu.execute(plan).unwrap();
    gpu.read::<f32>(t).unwrap()
}

/// A sliding window: input (n, c, h, w), kernel, stride, padding.
pub const fn win(
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: [usize; 2],
    s: [usize; 2],
    p: [usize; 2],
) -> wgdistill::reference::conv::Window {
    wgdistill::reference::conv::Window {
        n,
        c,
        h,
        w,
        k,
        s,
        p,
    }
}

/// Runs a loss's launches and reads the loss and the gradient.
pub fn run_loss(gpu: &Gpu, plan: wgdistill::kernels::losses::LossPlan) -> (f32, Vec<f32>) {
    let (loss, grad) = plan.run(gpu).unwrap();
    (
        gpu.read::<f32>(&loss).unwrap()[0],
        gpu.read::<f32>(&grad).unwrap(),
    )
}

/// `n` sample values scaled by `k`.
pub fn scaled(n: usize, seed: u64, k: f32) -> Vec<f32> {
    data(n, seed).iter().map(|v| v * k).collect()
}

/// Labels `(7i + 3) mod c` for a batch of `b`, as i32 and as class indices.
pub fn labels(b: usize, c: usize) -> (Vec<i32>, Vec<usize>) {
    let y: Vec<usize> = (0..b).map(|i| (i * 7 + 3) % c).collect();
    (y.iter().map(|&v| v as i32).collect(), y)
}

/// Weights for `g` whose BatchNorm layers look trained: random γ, β and running means, running
/// variances in [0.5, 1.5) (none the identity, so a test cannot pass by ignoring one); returned
/// on the device and on the host.
pub fn trained_looking_weights(
    gpu: &Gpu,
    g: &wgdistill::graph::Graph,
    seed: u64,
) -> (wgdistill::graph::Weights, wgdistill::io::TensorMap) {
    use wgdistill::io::HostTensor;
    let bn: Vec<String> = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, wgdistill::graph::Op::BatchNorm { .. }))
        .map(|n| n.name.clone())
        .collect();
    let mut host = wgdistill::graph::Weights::init(gpu, g, seed)
        .unwrap()
        .to_host(gpu)
        .unwrap();
    for (k, (name, t)) in host.iter_mut().enumerate() {
        let n: usize = t.shape.iter().product();
        let values = data(n, seed + 100 + k as u64);
        let Some(layer) = bn.iter().find(|l| name.starts_with(&format!("{l}."))) else {
            continue;
        };
        let field = &name[layer.len() + 1..];
        if field == "running_var" {
            let v = values.iter().map(|v| 1.0 + 0.5 * v).collect();
            *t = HostTensor::f32(&t.shape.clone(), v);
        } else if ["weight", "bias", "running_mean"].contains(&field) {
            *t = HostTensor::f32(&t.shape.clone(), values);
        }
    }
    let w = wgdistill::graph::Weights::upload(gpu, "trained-looking", &host).unwrap();
    (w, host)
}

/// Serialises the tests of a binary that count the runtime's creations and submissions (the
/// counters are per device, and tests run in parallel threads): each such test, and every other
/// test of that binary, holds this while it uses the GPU.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Asserts that `runs` replays of a compiled step, run by `replay`, created no buffer, bind group
/// or pipeline and made exactly one submission each.
pub fn assert_one_submission_and_nothing_created(gpu: &Gpu, runs: u64, replay: impl FnOnce()) {
    let before = gpu.stats();
    replay();
    let after = gpu.stats();
    assert_eq!(after.buffers, before.buffers, "buffers created per run");
    assert_eq!(
        after.bind_groups, before.bind_groups,
        "bind groups created per run"
    );
    assert_eq!(
        after.pipelines, before.pipelines,
        "pipelines created per run"
    );
    assert_eq!(
        after.submissions - before.submissions,
        runs,
        "one submission per run"
    );
}

/// A model's parameters on the host in f64, by name (what the interpreter reads).
pub type HostParams = std::collections::BTreeMap<String, Vec<f64>>;

/// `w` read back and widened to f64.
pub fn host_params(gpu: &Gpu, w: &wgdistill::graph::Weights) -> HostParams {
    w.to_host(gpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, widen(t.as_f32().unwrap())))
        .collect()
}

/// Plain SGD at learning rate 1: a step moves each parameter by minus its gradient.
pub fn sgd_lr1() -> wgdistill::graph::OptimizerSpec {
    wgdistill::graph::OptimizerSpec::Sgd(wgdistill::kernels::optimizer::Sgd {
        lr: 1.0,
        momentum: 0.0,
        dampening: 0.0,
        weight_decay: 0.0,
        nesterov: false,
    })
}

/// Asserts that one step of [`sgd_lr1`] moved every parameter of `before` (to `after`) by minus
/// the central finite difference (step 1e-5) of `objective`, within `atol + rtol·|want|`,
/// except the parameters whose names contain one of `frozen` (running statistics, parameters
/// that do not train); returns how many values it checked.
pub fn assert_sgd_step_descends(
    what: &str,
    before: &HostParams,
    after: &HostParams,
    frozen: &[&str],
    (atol, rtol): (f64, f64),
    objective: impl Fn(&HostParams) -> f64,
) -> usize {
    let mut checked = 0;
    for (name, values) in before {
        if frozen.iter().any(|f| name.contains(f)) {
            continue;
        }
        let mut p = before.clone();
        for i in 0..values.len() {
            let h = 1e-5;
            p.get_mut(name).unwrap()[i] = values[i] + h;
            let up = objective(&p);
            p.get_mut(name).unwrap()[i] = values[i] - h;
            let down = objective(&p);
            p.get_mut(name).unwrap()[i] = values[i];
            let want = (up - down) / (2.0 * h);
            let got = values[i] - after[name][i];
            assert!(
                (got - want).abs() <= atol + rtol * want.abs(),
                "{what} {name}[{i}]: the step moved it by {got}, −gradient by finite differences {want}"
            );
            checked += 1;
        }
    }
    checked
}
