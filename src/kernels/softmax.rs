//! Softmax and log-softmax over the last axis with a temperature (`shaders/softmax.wgsl`).

use crate::catalogue::{Case, Prepared, Suite, Work, memory_case, sample_f64, sample_tensor};
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::reference::softmax as cpu;
use crate::{Error, Result};

use Binding::{Output as W, ReadOnly as R, Uniform as U};

/// `softmax(x/T)`.
pub const SOFTMAX_FORWARD: KernelSpec =
    KernelSpec::new::<Params>("softmax", "softmax_forward", &[U, R, W]);
/// `log_softmax(x/T)`.
pub const LOG_SOFTMAX_FORWARD: KernelSpec =
    KernelSpec::new::<Params>("softmax", "log_softmax_forward", &[U, R, W]);
/// Softmax backward from its output.
pub const SOFTMAX_BACKWARD: KernelSpec =
    KernelSpec::new::<Params>("softmax", "softmax_backward", &[U, R, R, W]);
/// Log-softmax backward from its output.
pub const LOG_SOFTMAX_BACKWARD: KernelSpec =
    KernelSpec::new::<Params>("softmax", "log_softmax_backward", &[U, R, R, W]);

/// `acc += weight · softmax(t/T)` (multi-teacher targets).
pub const MIXTURE_ACCUMULATE: KernelSpec =
    KernelSpec::new::<MixParams>("softmax", "mixture_accumulate", &[U, R, Binding::ReadWrite]);
/// `out = T · log(acc)`.
pub const TEMPERATURE_LOG: KernelSpec =
    KernelSpec::new::<MixParams>("softmax", "temperature_log", &[U, R, W]);

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[
    SOFTMAX_FORWARD,
    LOG_SOFTMAX_FORWARD,
    SOFTMAX_BACKWARD,
    LOG_SOFTMAX_BACKWARD,
    MIXTURE_ACCUMULATE,
    TEMPERATURE_LOG,
];

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MixParams {
    rows: u32,
    cols: u32,
    temperature: f32,
    weight: f32,
    first: u32,
    pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    temperature: f32,
    pad: u32,
}

fn params(op: &str, x: &Tensor, temperature: f32) -> Result<Params> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::Input {
            what: format!("{op}: temperature"),
            message: format!("must be a finite number > 0, got {temperature}"),
        });
    }
    let cols = *x.shape().last().unwrap_or(&0);
    if x.dtype() != DType::F32 || cols == 0 {
        return Err(shape_error(
            op,
            format!(
                "x must be f32 with a non-empty last axis, got {}{:?}",
                x.dtype().name(),
                x.shape()
            ),
        ));
    }
    let rows = x.numel() / cols;
    let u = |v: usize| u32::try_from(v).map_err(|_| shape_error(op, "too large for u32 indexing"));
    Ok(Params {
        rows: u(rows)?,
        cols: u(cols)?,
        temperature,
        pad: 0,
    })
}

/// Prepares `softmax(x/T)` (or `log_softmax` when `log`) over the last axis.
pub fn forward(gpu: &Gpu, x: &Tensor, temperature: f32, log: bool) -> Result<(Dispatch, Tensor)> {
    let spec = if log {
        &LOG_SOFTMAX_FORWARD
    } else {
        &SOFTMAX_FORWARD
    };
    let p = params(spec.entry, x, temperature)?;
    gpu.check_loops(spec, 3 * u64::from(p.cols))?;
    let y = gpu.empty(x.shape(), DType::F32)?;
    Ok((gpu.dispatch_over(spec, &p, &[x, &y], p.rows as usize)?, y))
}

/// Prepares the backward pass from the forward's output `y` and `dy`.
pub fn backward(
    gpu: &Gpu,
    y: &Tensor,
    dy: &Tensor,
    temperature: f32,
    log: bool,
) -> Result<(Dispatch, Tensor)> {
    let spec = if log {
        &LOG_SOFTMAX_BACKWARD
    } else {
        &SOFTMAX_BACKWARD
    };
    let p = params(spec.entry, y, temperature)?;
    gpu.check_loops(spec, 2 * u64::from(p.cols))?;
    dy.expect(spec.entry, "dy", DType::F32, y.shape())?;
    let dx = gpu.empty(y.shape(), DType::F32)?;
    Ok((
        gpu.dispatch_over(spec, &p, &[y, dy, &dx], p.rows as usize)?,
        dx,
    ))
}

/// Prepares multi-teacher KD logits: `T · log(Σ_k w_k softmax(t_k / T))`, so that a KD term at
/// temperature `T` on them targets the weighted mixture of the teachers' softened outputs.
/// `weights` must be positive and sum to one.
pub fn mixture_logits(
    gpu: &Gpu,
    teachers: &[&Tensor],
    weights: &[f32],
    temperature: f32,
) -> Result<(Vec<Dispatch>, Tensor)> {
    let first = teachers
        .first()
        .ok_or_else(|| shape_error("mixture", "no teachers"))?;
    let p = params("mixture", first, temperature)?;
    let sum: f32 = weights.iter().sum();
    if weights.len() != teachers.len()
        || weights.iter().any(|w| w.is_nan() || *w <= 0.0)
        || (sum - 1.0).abs() > 1e-4
    {
        return Err(Error::Input {
            what: "mixture: weights".into(),
            message: format!("need one positive weight per teacher, summing to 1; got {weights:?}"),
        });
    }
    gpu.check_loops(&MIXTURE_ACCUMULATE, 3 * u64::from(p.cols))?;
    let acc = gpu.zeros(first.shape(), DType::F32)?;
    let rows = p.rows as usize;
    let mut plan = Vec::new();
    for (k, (t, &weight)) in teachers.iter().zip(weights).enumerate() {
        t.expect("mixture", "teacher logits", DType::F32, first.shape())?;
        let mp = MixParams {
            rows: p.rows,
            cols: p.cols,
            temperature,
            weight,
            first: u32::from(k == 0),
            pad: [0; 3],
        };
        plan.push(gpu.dispatch_over(&MIXTURE_ACCUMULATE, &mp, &[t, &acc], rows)?);
    }
    let out = gpu.empty(first.shape(), DType::F32)?;
    let mp = MixParams {
        rows: p.rows,
        cols: p.cols,
        temperature,
        weight: 0.0,
        first: 0,
        pad: [0; 3],
    };
    plan.push(gpu.dispatch_over(&TEMPERATURE_LOG, &mp, &[&acc, &out], rows)?);
    Ok((plan, out))
}

/// The family's catalogue: softmax and log-softmax forward and backward at a temperature, on
/// rows off the workgroup size; the multi-teacher mixture.
pub fn cases(_: &Gpu, suite: Suite) -> Vec<Case> {
    if let Suite::Bench { .. } = suite {
        let (rows, cols) = (suite.pick(1024, 16384), 1000);
        let bytes = 8.0 * (rows * cols) as f64;
        return vec![memory_case(
            suite,
            "softmax",
            format!("[{rows}, {cols}]"),
            bytes,
            move |gpu| {
                let (d, y) = forward(gpu, &sample_tensor(gpu, &[rows, cols], 7)?, 1.0, false)?;
                Ok(Prepared::new(vec![d], vec![y]))
            },
        )];
    }
    let mut cases = Vec::new();
    for (rows, cols) in [(33usize, 129usize), (1, 1), (65, 10)] {
        let n = rows * cols;
        for (log, name) in [(false, "softmax"), (true, "log_softmax")] {
            cases.push(
                Case::new(
                    format!("{name} (T=2) fwd+bwd"),
                    format!("[{rows}, {cols}]"),
                    Work::Bytes(20.0 * n as f64),
                    move |gpu| {
                        let x = sample_tensor(gpu, &[rows, cols], 25)?;
                        let dy = sample_tensor(gpu, &[rows, cols], 26)?;
                        let (f, y) = forward(gpu, &x, 2.0, log)?;
                        let (b, dx) = backward(gpu, &y, &dy, 2.0, log)?;
                        Ok(Prepared::new(vec![f, b], vec![y, dx]))
                    },
                )
                .reference(move || {
                    let mut y = cpu::forward(&sample_f64(n, 25), cols, 2.0, log);
                    let dx = cpu::backward(&y, &sample_f64(n, 26), cols, 2.0, log);
                    y.extend(dx);
                    y
                })
                .tolerance(1e-4, 1e-6),
            );
        }
    }
    let (rows, cols) = (7usize, 33usize);
    cases.push(
        Case::new(
            "mixture_logits (3 teachers, T=4)",
            format!("[{rows}, {cols}]"),
            Work::Bytes(16.0 * (rows * cols) as f64),
            move |gpu| {
                let ts: Vec<Tensor> = (0..3)
                    .map(|k| sample_tensor(gpu, &[rows, cols], 30 + k))
                    .collect::<Result<_>>()?;
                let refs: Vec<&Tensor> = ts.iter().collect();
                let (plan, out) = mixture_logits(gpu, &refs, &[0.5, 0.3, 0.2], 4.0)?;
                Ok(Prepared::new(plan, vec![out]))
            },
        )
        .reference(move || {
            let ts: Vec<Vec<f64>> = (0..3).map(|k| sample_f64(rows * cols, 30 + k)).collect();
            cpu::mixture_logits(&ts, &[0.5, 0.3, 0.2], cols, 4.0)
        })
        .tolerance(1e-4, 1e-5),
    );
    cases
}
