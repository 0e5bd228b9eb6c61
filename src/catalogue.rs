//! The conformance and benchmark catalogue: every kernel family lists its cases beside its
//! launcher (`kernels::F::cases`, and each loss's entry in the loss registry), and three
//! consumers iterate the same list: `wgdistill check` and the catalogue test run every
//! [`Suite::Check`] case against its f64 reference, `wgdistill bench` and the criterion benches
//! time the [`Suite::Bench`] cases.
//!
//! A case is prepared launches plus what they do: the tensors to read back, the f64 reference
//! they must match (within `rtol`, `atol`), the work per run (FLOPs or bytes of compulsory
//! traffic) and, for benchmarks, the case measured as its same-run baseline.

use crate::Result;
use crate::gpu::{BoundPlan, Dispatch, Gpu, Replay, Tensor, replay};
use crate::kernels;
use crate::reference::{allclose, max_errors};

/// Which list of cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// Conformance: small shapes that are not tile multiples, each with its f64 reference.
    Check,
    /// Timing: shapes large enough to measure; `small` on CPU-like drivers keeps them quick.
    Bench {
        /// Smaller sizes, for CPU-like drivers.
        small: bool,
    },
}

impl Suite {
    /// The benchmark suite sized for `gpu`.
    pub fn bench_for(gpu: &Gpu) -> Suite {
        Suite::Bench {
            small: gpu.caps().device_type == "cpu",
        }
    }

    /// `cpu` on CPU-like drivers in the bench suite, else `gpu`.
    pub fn pick(self, cpu: usize, gpu: usize) -> usize {
        match self {
            Suite::Bench { small: false } => gpu,
            _ => cpu,
        }
    }
}

/// What a case does per run, for throughput.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Work {
    /// Floating-point operations.
    Flops(f64),
    /// Bytes of compulsory memory traffic (each input read once, each output written once).
    Bytes(f64),
    /// Training samples (a whole training step).
    Samples(f64),
    /// Time only.
    Time,
}

/// Prepared launches and the tensors a check reads back after them, in order.
pub struct Prepared {
    /// The launches.
    pub plan: Vec<Dispatch>,
    /// What to compare with the reference, concatenated in this order.
    pub outputs: Vec<Tensor>,
    /// Launches already bound (a compiled training step), timed instead of `plan`.
    pub bound: Option<BoundPlan>,
}

impl Prepared {
    /// Launches and the tensors to read back.
    pub fn new(plan: Vec<Dispatch>, outputs: Vec<Tensor>) -> Prepared {
        Prepared {
            plan,
            outputs,
            bound: None,
        }
    }
}

type PrepareFn = Box<dyn Fn(&Gpu) -> Result<Prepared>>;
type ReferenceFn = Box<dyn Fn() -> Vec<f64>>;

/// One case of the catalogue.
pub struct Case {
    /// Kernel (or loss, or op) name, as `check` and `bench` print it.
    pub kernel: String,
    /// Shape, as text.
    pub shape: String,
    /// Relative tolerance against the reference.
    pub rtol: f64,
    /// Absolute tolerance against the reference.
    pub atol: f64,
    /// Work per run.
    pub work: Work,
    /// Key (`kernel shape`) of the case measured as this one's baseline.
    pub baseline: Option<String>,
    prepare: PrepareFn,
    reference: Option<ReferenceFn>,
}

/// The outcome of checking one case.
#[derive(Clone, Copy, Debug)]
pub struct Verdict {
    /// Largest absolute error.
    pub max_abs: f64,
    /// Largest relative error.
    pub max_rel: f64,
    /// Within tolerance everywhere (NaN fails).
    pub pass: bool,
}

impl Case {
    /// A case with launches prepared by `prepare`, checked against `reference`.
    pub fn new(
        kernel: impl Into<String>,
        shape: impl Into<String>,
        work: Work,
        prepare: impl Fn(&Gpu) -> Result<Prepared> + 'static,
    ) -> Case {
        Case {
            kernel: kernel.into(),
            shape: shape.into(),
            rtol: 1e-5,
            atol: 1e-6,
            work,
            baseline: None,
            prepare: Box::new(prepare),
            reference: None,
        }
    }

    /// The f64 values the outputs must match.
    pub fn reference(mut self, reference: impl Fn() -> Vec<f64> + 'static) -> Case {
        self.reference = Some(Box::new(reference));
        self
    }

    /// Tolerances of the comparison.
    pub fn tolerance(mut self, rtol: f64, atol: f64) -> Case {
        self.rtol = rtol;
        self.atol = atol;
        self
    }

    /// The case this one is related to in `bench` (its [`Case::key`]).
    pub fn baseline(mut self, key: String) -> Case {
        self.baseline = Some(key);
        self
    }

    /// `kernel shape`, the key baselines refer to.
    pub fn key(&self) -> String {
        format!("{} {}", self.kernel, self.shape)
    }

    /// Uploads the inputs and prepares the launches.
    pub fn prepare(&self, gpu: &Gpu) -> Result<Prepared> {
        (self.prepare)(gpu)
    }

    /// Whether the case has a reference to check against.
    pub fn has_reference(&self) -> bool {
        self.reference.is_some()
    }

    /// The case's launches as a portable record (see [`crate::gpu::replay`]), with its outputs
    /// (`out0`, `out1`, …) and the reference they must match; nothing is run.
    pub fn replay(&self, gpu: &Gpu) -> Result<Replay> {
        let prepared = self.prepare(gpu)?;
        let outputs: Vec<(String, Tensor)> = prepared
            .outputs
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("out{i}"), t.clone()))
            .collect();
        let record = replay::record(gpu, &self.key(), &prepared.plan, &outputs)?;
        Ok(match &self.reference {
            Some(reference) => record.expecting(reference(), self.rtol, self.atol),
            None => record,
        })
    }

    /// Runs the case and compares its outputs with the reference.
    pub fn verify(&self, gpu: &Gpu) -> Result<Verdict> {
        let prepared = self.prepare(gpu)?;
        gpu.execute(&prepared.plan)?;
        let mut got = Vec::new();
        for t in &prepared.outputs {
            got.extend(gpu.read::<f32>(t)?);
        }
        let want = self.reference.as_ref().map_or_else(Vec::new, |r| r());
        let (max_abs, max_rel) = max_errors(&got, &want);
        let pass = self.reference.is_some() && allclose(&got, &want, self.rtol, self.atol).is_ok();
        Ok(Verdict {
            max_abs,
            max_rel,
            pass,
        })
    }
}

/// Every family's cases of `suite`, in the order of [`kernels::FAMILIES`], then (for the bench
/// suite) whole training steps.
pub fn all(gpu: &Gpu, suite: Suite) -> Vec<Case> {
    let mut cases: Vec<Case> = kernels::FAMILIES
        .iter()
        .flat_map(|family| (family.cases)(gpu, suite))
        .collect();
    cases.extend(crate::bench::step_cases(suite));
    cases.extend(crate::bench::inference_cases(suite));
    cases
}

/// A tensor of `shape` filled with [`sample`](crate::rng::sample)`(…, seed)`, and its values.
pub fn sample_tensor(gpu: &Gpu, shape: &[usize], seed: u64) -> Result<Tensor> {
    gpu.upload(shape, &crate::rng::sample(shape.iter().product(), seed))
}

/// [`sample`](crate::rng::sample) widened to f64, for references.
pub fn sample_f64(n: usize, seed: u64) -> Vec<f64> {
    crate::reference::widen(&crate::rng::sample(n, seed))
}

/// Sizes that are not multiples of any workgroup or tile size.
pub const ODD_SIZES: &[usize] = &[1, 7, 33, 129, 1000, 65_537];

/// The bench suite's memory-bandwidth baseline: a copy (`out = 1·x`, 8 bytes per element),
/// the key every memory-bound case relates to.
pub fn stream_key(suite: Suite) -> String {
    format!("stream [{}]", stream_len(suite))
}

/// Elements of the stream baseline (and of the bench suite's elementwise cases).
pub fn stream_len(suite: Suite) -> usize {
    suite.pick(1 << 20, 1 << 24)
}

/// A memory-bound bench case: `bytes` of compulsory traffic, related to the stream baseline.
pub fn memory_case(
    suite: Suite,
    kernel: &str,
    shape: String,
    bytes: f64,
    prepare: impl Fn(&Gpu) -> Result<Prepared> + 'static,
) -> Case {
    Case::new(kernel, shape, Work::Bytes(bytes), prepare).baseline(stream_key(suite))
}
