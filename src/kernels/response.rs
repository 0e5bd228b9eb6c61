//! Response-based losses (`shaders/response.wgsl`): cross-entropy, Hinton KD and decoupled KD,
//! each one fused pass per row (running log-sum-exp states, the gradient and the row's loss
//! written in one sweep), then a deterministic batch sum. Definitions in `docs/losses.md`.

use crate::catalogue::{Suite, Work};
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Gpu, KernelSpec, Tensor};
use crate::io::HostTensor;
use crate::reference::response as cpu;
use crate::rng::sample;
use crate::{Result, kernels::reduce};

use super::AttrDef;
use super::losses::{
    LABELS, LossCase, LossDef, LossPlan, Range, Reads, STUDENT, TEACHER, check_attr, u32_of,
};

use Binding::{Output as W, ReadOnly as R, Uniform as U};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    temperature: f32,
    alpha: f32,
    beta: f32,
    grad_scale: f32,
    pad: [u32; 2],
}

/// Cross-entropy rows.
pub const CE_ROWS: KernelSpec = KernelSpec::new::<Params>("response", "ce", &[U, R, R, W, W]);
/// Hinton KD rows.
pub const KD_ROWS: KernelSpec = KernelSpec::new::<Params>("response", "kd", &[U, R, R, W, W]);
/// Decoupled KD rows.
pub const DKD_ROWS: KernelSpec = KernelSpec::new::<Params>("response", "dkd", &[U, R, R, R, W, W]);

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[CE_ROWS, KD_ROWS, DKD_ROWS];

const TEMPERATURE: AttrDef = AttrDef {
    name: "temperature",
    default: 4.0,
    range: Range::positive(1e4),
    doc: "softens both distributions: softmax(x / T)",
};

/// `ce`: cross-entropy with the labels.
pub const CE: LossDef = LossDef {
    name: "ce",
    summary: "cross-entropy from logits, mean over the batch",
    reads: Reads::Logits,
    inputs: &[STUDENT, LABELS],
    attrs: &[],
    launch: |gpu, _, x| ce(gpu, x[0], x[1]),
    reference: |_, x| cpu::ce(&x[0].values, &x[1].classes(), x[0].shape[1]).into(),
    cases: |suite| cases(suite, Which::Ce),
    parameters: None,
    memory: None,
};

/// `kd`: Hinton's knowledge distillation.
pub const KD: LossDef = LossDef {
    name: "kd",
    summary: "Hinton KD: T²/B Σ KL(softmax(t/T) ‖ softmax(s/T))",
    reads: Reads::Logits,
    inputs: &[STUDENT, TEACHER],
    attrs: &[TEMPERATURE],
    launch: |gpu, l, x| kd(gpu, x[0], x[1], l.attr_f32("temperature")),
    reference: |l, x| {
        let t = l.attr("temperature");
        cpu::kd(&x[0].values, &x[1].values, x[0].shape[1], t).into()
    },
    cases: |suite| cases(suite, Which::Kd),
    parameters: None,
    memory: None,
};

/// `dkd`: decoupled KD (mdistiller).
pub const DKD: LossDef = LossDef {
    name: "dkd",
    summary: "decoupled KD: alpha·TCKD + beta·NCKD",
    reads: Reads::Logits,
    inputs: &[STUDENT, TEACHER, LABELS],
    attrs: &[
        AttrDef {
            name: "alpha",
            default: 1.0,
            range: Range::non_negative(1e6),
            doc: "weight of the target-class term (TCKD)",
        },
        AttrDef {
            name: "beta",
            default: 8.0,
            range: Range::non_negative(1e6),
            doc: "weight of the non-target-class term (NCKD)",
        },
        TEMPERATURE,
    ],
    launch: |gpu, l, x| {
        let a = |k| l.attr_f32(k);
        dkd(
            gpu,
            x[0],
            x[1],
            x[2],
            a("alpha"),
            a("beta"),
            a("temperature"),
        )
    },
    reference: |l, x| {
        let (s, t, y) = (&x[0].values, &x[1].values, x[2].classes());
        let a = |k| l.attr(k);
        cpu::dkd(
            s,
            t,
            &y,
            x[0].shape[1],
            a("alpha"),
            a("beta"),
            a("temperature"),
        )
        .into()
    },
    cases: |suite| cases(suite, Which::Dkd),
    parameters: None,
    memory: None,
};

/// The family's losses, in registry order.
pub const LOSSES: &[&LossDef] = &[&CE, &KD, &DKD];

/// Checks an f32 `(B, C)` logits tensor with `B ≥ 1` and `C ≥ min_cols`; returns `(B, C)`.
fn logits_shape(op: &str, what: &str, t: &Tensor, min_cols: usize) -> Result<(usize, usize)> {
    match (t.dtype(), t.shape()) {
        (DType::F32, &[b, c]) if b >= 1 && c >= min_cols => Ok((b, c)),
        _ => Err(shape_error(
            op,
            format!(
                "{what} must be f32 (batch ≥ 1, classes ≥ {min_cols}), got {}{:?}",
                t.dtype().name(),
                t.shape()
            ),
        )),
    }
}

/// One row kernel over `[student, inputs…]`, then the batch sum of its row losses.
fn rows(
    gpu: &Gpu,
    spec: &KernelSpec,
    student: &Tensor,
    inputs: &[&Tensor],
    params: Params,
    loss_scale: f32,
) -> Result<LossPlan> {
    let rows = params.rows as usize;
    // A few passes over each row's columns (at most four).
    gpu.check_loops(spec, 4 * u64::from(params.cols))?;
    let grad = gpu.empty(student.shape(), DType::F32)?;
    let row_loss = gpu.empty(&[rows], DType::F32)?;
    let loss = gpu.empty(&[1], DType::F32)?;
    let mut bound: Vec<&Tensor> = vec![student];
    bound.extend_from_slice(inputs);
    bound.push(&grad);
    bound.push(&row_loss);
    let mut dispatches = vec![gpu.dispatch_over(spec, &params, &bound, rows)?];
    reduce::sum_into(gpu, &mut dispatches, &row_loss, &loss, loss_scale)?;
    Ok(LossPlan::single(dispatches, loss, grad))
}

fn params(op: &str, b: usize, c: usize, temperature: f32, alpha: f32, beta: f32) -> Result<Params> {
    Ok(Params {
        rows: u32_of(op, "batch", b)?,
        cols: u32_of(op, "classes", c)?,
        temperature,
        alpha,
        beta,
        grad_scale: temperature / b as f32,
        pad: [0; 2],
    })
}

/// Cross-entropy: `−(1/B) Σ log_softmax(s)[y]`. `labels` is i32 `[B]` with values in `0..C`
/// (callers holding host labels check the range; a bad label makes the loss NaN).
pub fn ce(gpu: &Gpu, student: &Tensor, labels: &Tensor) -> Result<LossPlan> {
    let (b, c) = logits_shape("ce", "student", student, 1)?;
    labels.expect("ce", "labels", DType::I32, &[b])?;
    let p = params("ce", b, c, 1.0, 0.0, 0.0)?;
    rows(gpu, &CE_ROWS, student, &[labels], p, 1.0 / b as f32)
}

/// Hinton KD: `T²/B Σ KL(softmax(t/T) ‖ softmax(s/T))`.
pub fn kd(gpu: &Gpu, student: &Tensor, teacher: &Tensor, temperature: f32) -> Result<LossPlan> {
    check_attr(&KD, "temperature", temperature)?;
    let (b, c) = logits_shape("kd", "student", student, 1)?;
    teacher.expect("kd", "teacher", DType::F32, student.shape())?;
    let p = params("kd", b, c, temperature, 0.0, 0.0)?;
    let scale = temperature * temperature / b as f32;
    rows(gpu, &KD_ROWS, student, &[teacher], p, scale)
}

/// Decoupled KD: `alpha·TCKD + beta·NCKD` (mdistiller's definition; needs at least 2 classes).
pub fn dkd(
    gpu: &Gpu,
    student: &Tensor,
    teacher: &Tensor,
    labels: &Tensor,
    alpha: f32,
    beta: f32,
    temperature: f32,
) -> Result<LossPlan> {
    check_attr(&DKD, "alpha", alpha)?;
    check_attr(&DKD, "beta", beta)?;
    check_attr(&DKD, "temperature", temperature)?;
    let (b, c) = logits_shape("dkd", "student", student, 2)?;
    teacher.expect("dkd", "teacher", DType::F32, student.shape())?;
    labels.expect("dkd", "labels", DType::I32, &[b])?;
    let p = params("dkd", b, c, temperature, alpha, beta)?;
    let scale = temperature * temperature / b as f32;
    rows(gpu, &DKD_ROWS, student, &[teacher, labels], p, scale)
}

#[derive(Clone, Copy, PartialEq)]
enum Which {
    Ce,
    Kd,
    Dkd,
}

/// Logits of a few units' spread (scaled samples), labels `(7i + 3) mod C`.
fn logits_case(b: usize, c: usize, which: Which) -> Vec<HostTensor> {
    let logits = |seed| {
        let v: Vec<f32> = sample(b * c, seed).iter().map(|v| 5.0 * v).collect();
        HostTensor::f32(&[b, c], v)
    };
    let labels = HostTensor::i32(&[b], (0..b).map(|i| ((i * 7 + 3) % c) as i32).collect());
    match which {
        Which::Ce => vec![logits(1), labels],
        Which::Kd => vec![logits(1), logits(2)],
        Which::Dkd => vec![logits(1), logits(2), labels],
    }
}

fn cases(suite: Suite, which: Which) -> Vec<LossCase> {
    let shapes: &[(usize, usize)] = match suite {
        // Batches and class counts off the 64-row workgroup; one class; a long row.
        Suite::Check => &[(1, 1), (7, 33), (33, 10), (129, 7), (5, 1000)],
        Suite::Bench { small } => match (which, small) {
            (Which::Kd, _) => &[(256, 10), (4096, 1000)],
            (_, true) => &[(4096, 1000)],
            (_, false) => &[(16384, 1000)],
        },
    };
    let temperatures: &[f64] = match (suite, which) {
        (Suite::Check, Which::Kd | Which::Dkd) => &[0.5, 1.0, 4.0, 20.0],
        _ => &[4.0],
    };
    let mut out = Vec::new();
    for &(b, c) in shapes {
        if which == Which::Dkd && c < 2 {
            continue;
        }
        // Read each input once, write the gradient once.
        let tensors = if which == Which::Ce { 2.0 } else { 3.0 };
        let work = Work::Bytes(4.0 * tensors * (b * c) as f64);
        let case = || LossCase::new(format!("[{b}, {c}]"), logits_case(b, c, which)).work(work);
        match which {
            Which::Ce => out.push(case()),
            Which::Kd => out.extend(
                temperatures
                    .iter()
                    .map(|&t| case().attrs(&[("temperature", t)])),
            ),
            Which::Dkd => out.extend(
                temperatures
                    .iter()
                    .map(|&t| case().attrs(&[("temperature", t)]).tolerance(2e-4, 1e-5)),
            ),
        }
    }
    if which == Which::Dkd && suite == Suite::Check {
        let case = LossCase::new("[7, 33]", logits_case(7, 33, which));
        out.push(
            case.attrs(&[("alpha", 0.3), ("beta", 2.0), ("temperature", 2.0)])
                .tolerance(2e-4, 1e-5),
        );
    }
    out
}
