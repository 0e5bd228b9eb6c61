//! Response-based losses (`shaders/response.wgsl`): cross-entropy, Hinton KD and decoupled KD,
//! each one fused pass per row (running log-sum-exp states, the gradient and the row's loss
//! written in one sweep), then a deterministic batch sum; and the elementwise ones adversarial and
//! data-free distillation use: binary cross-entropy with logits (a discriminator's loss) and the
//! L1 distance between logits (DFAD's discrepancy, through the hint kernel); and `balance`, the
//! batch's class balance a generator keeps (three launches: it couples the rows). Definitions in
//! `docs/losses.md`.

use crate::catalogue::{Suite, Work};
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Gpu, KernelSpec, Tensor};
use crate::io::{HostData, HostTensor};
use crate::reference::response as cpu;
use crate::rng::sample;
use crate::{Result, kernels::reduce};

use super::AttrDef;
use super::feature::{self, Distance};
use super::losses::{
    GradScale, LABELS, LossCase, LossDef, LossInput, LossPlan, Range, Reads, Role, STUDENT,
    TEACHER, check_attr, u32_of,
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
/// Jensen–Shannon rows.
pub const JS_ROWS: KernelSpec = KernelSpec::new::<Params>("response", "js", &[U, R, R, W, W]);
/// Decoupled KD rows.
pub const DKD_ROWS: KernelSpec = KernelSpec::new::<Params>("response", "dkd", &[U, R, R, R, W, W]);

/// Binary cross-entropy with logits, per element.
pub const BCE_TERMS: KernelSpec = KernelSpec::new::<Params>("response", "bce", &[U, R, R, W, W]);

/// Class balance, each row's log-sum-exp.
pub const BALANCE_ROWS: KernelSpec =
    KernelSpec::new::<Params>("response", "balance_rows", &[U, R, W]);
/// Class balance, each class's mean probability and loss term.
pub const BALANCE_MEAN: KernelSpec =
    KernelSpec::new::<Params>("response", "balance_mean", &[U, R, R, W, W]);
/// Class balance, the gradient rows.
pub const BALANCE_GRAD: KernelSpec =
    KernelSpec::new::<Params>("response", "balance_grad", &[U, R, R, R, W]);

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[
    CE_ROWS,
    KD_ROWS,
    JS_ROWS,
    DKD_ROWS,
    BCE_TERMS,
    BALANCE_ROWS,
    BALANCE_MEAN,
    BALANCE_GRAD,
];

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
    reference: |_, x| cpu::ce_partly_labelled(&x[0].values, &x[1].labels(), x[0].shape[1]).into(),
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

/// `js`: the Jensen–Shannon divergence between the softened outputs (Adaptive DeepInversion's
/// competition: synthesis maximises it so the images are where student and teacher disagree).
pub const JS: LossDef = LossDef {
    name: "js",
    summary: "Jensen–Shannon divergence of softmax(s/T) and softmax(t/T), mean over the batch",
    reads: Reads::Logits,
    inputs: &[STUDENT, TEACHER],
    attrs: &[AttrDef {
        name: "temperature",
        default: 3.0,
        range: Range::positive(1e4),
        doc: "softens both distributions: softmax(x / T) (ADI uses 3)",
    }],
    launch: |gpu, l, x| js(gpu, x[0], x[1], l.attr_f32("temperature")),
    reference: |l, x| {
        let t = l.attr("temperature");
        cpu::js(&x[0].values, &x[1].values, x[0].shape[1], t).into()
    },
    cases: |suite| cases(suite, Which::Js),
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
        let (s, t, y) = (&x[0].values, &x[1].values, x[2].labels());
        let a = |k| l.attr(k);
        let weights = [a("alpha"), a("beta")];
        cpu::dkd_partly_labelled(s, t, &y, x[0].shape[1], weights, a("temperature")).into()
    },
    cases: |suite| cases(suite, Which::Dkd),
    parameters: None,
    memory: None,
};

/// `bce`: binary cross-entropy with logits against targets.
pub const BCE: LossDef = LossDef {
    name: "bce",
    summary: "binary cross-entropy with logits, mean over elements (a discriminator's loss)",
    reads: Reads::Logits,
    inputs: &[STUDENT, TARGET],
    attrs: &[],
    launch: |gpu, _, x| bce(gpu, x[0], x[1]),
    reference: |_, x| cpu::bce(&x[0].values, &x[1].values).into(),
    cases: |suite| cases(suite, Which::Bce),
    parameters: None,
    memory: None,
};

/// `l1`: mean absolute difference between the student's and the teacher's logits.
pub const L1: LossDef = LossDef {
    name: "l1",
    summary: "mean |s − t| over the logits (data-free adversarial KD's discrepancy)",
    reads: Reads::Logits,
    inputs: &[STUDENT, TEACHER],
    attrs: &[],
    launch: |gpu, _, x| feature::elementwise_distance(gpu, "l1", x[0], x[1], Distance::Absolute),
    reference: |_, x| cpu::l1(&x[0].values, &x[1].values).into(),
    cases: |suite| cases(suite, Which::L1),
    parameters: None,
    memory: None,
};

/// `balance`: how far the batch's mean prediction is from uniform (DAFL's information-entropy
/// term; a generator that minimises it on the teacher's logits spreads its images over the
/// classes instead of collapsing onto a few).
pub const BALANCE: LossDef = LossDef {
    name: "balance",
    summary: "KL(p̄ ‖ uniform) of the batch's mean softmax p̄ (a generator's class-balance term)",
    reads: Reads::Logits,
    inputs: &[STUDENT],
    attrs: &[],
    launch: |gpu, _, x| balance(gpu, x[0]),
    reference: |_, x| cpu::balance(&x[0].values, x[0].shape[1]).into(),
    cases: |suite| cases(suite, Which::Balance),
    parameters: None,
    memory: None,
};

/// The targets of `bce`, `target`: probabilities in [0, 1] (1 for "real", 0 for "fake"),
/// shaped like the logits.
pub const TARGET: LossInput = LossInput {
    name: "target",
    role: Role::Target,
};

/// The family's losses, in registry order.
pub const LOSSES: &[&LossDef] = &[&CE, &KD, &DKD, &BCE, &L1, &JS, &BALANCE];

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
    // A few passes over each row's columns (at most four); the kernels that read labels also
    // count the batch's labelled rows (a stride of them per lane, then a six-level tree).
    let counting = inputs.iter().any(|t| t.dtype() == DType::I32);
    let label_trips = if counting {
        u64::from(params.rows.div_ceil(64)) + 6
    } else {
        0
    };
    gpu.check_loops(spec, 4 * u64::from(params.cols) + label_trips)?;
    let grad = gpu.empty(student.shape(), DType::F32)?;
    let row_loss = gpu.empty(&[rows], DType::F32)?;
    let loss = gpu.empty(&[1], DType::F32)?;
    let mut bound: Vec<&Tensor> = vec![student];
    bound.extend_from_slice(inputs);
    bound.push(&grad);
    bound.push(&row_loss);
    let mut dispatches = vec![gpu.dispatch_over(spec, &params, &bound, rows)?];
    reduce::sum_into(gpu, &mut dispatches, &row_loss, &loss, loss_scale)?;
    // Every row kernel multiplies its whole gradient, and nothing else, by grad_scale.
    Ok(LossPlan {
        grad_scale: Some(GradScale {
            launch: 0,
            offset: std::mem::offset_of!(Params, grad_scale) as u64,
            value: params.grad_scale,
        }),
        ..LossPlan::single(dispatches, loss, grad)
    })
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

/// Jensen–Shannon divergence: `(1/B) Σ_rows ½ KL(p‖m) + ½ KL(q‖m)`, `p = softmax(s/T)`,
/// `q = softmax(t/T)`, `m = (p + q)/2`; the gradient is the student's (symmetric: swap the
/// inputs for the teacher's).
pub fn js(gpu: &Gpu, student: &Tensor, teacher: &Tensor, temperature: f32) -> Result<LossPlan> {
    check_attr(&JS, "temperature", temperature)?;
    let (b, c) = logits_shape("js", "student", student, 1)?;
    teacher.expect("js", "teacher", DType::F32, student.shape())?;
    let mut p = params("js", b, c, temperature, 0.0, 0.0)?;
    p.grad_scale = 1.0 / (b as f32 * temperature);
    rows(gpu, &JS_ROWS, student, &[teacher], p, 1.0 / b as f32)
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

/// Binary cross-entropy with logits: `mean(max(z, 0) − z·y + log(1 + e^−|z|))` over all
/// elements of `logits` (any shape) and `target` (the same shape; PyTorch's
/// `binary_cross_entropy_with_logits`, which does not check that targets lie in [0, 1]).
pub fn bce(gpu: &Gpu, logits: &Tensor, target: &Tensor) -> Result<LossPlan> {
    logits.expect("bce", "student", DType::F32, logits.shape())?;
    target.expect("bce", "target", DType::F32, logits.shape())?;
    let n = logits.numel();
    if n == 0 {
        return Err(shape_error("bce", "the logits are empty"));
    }
    // One "row" per element; grad_scale = T/B with T = 1 and B = N is 1/N.
    let p = params("bce", n, 1, 1.0, 0.0, 0.0)?;
    rows(gpu, &BCE_TERMS, logits, &[target], p, 1.0 / n as f32)
}

/// Class balance: `Σ_j p̄_j log(C p̄_j)`, `p̄ = (1/B) Σ_b softmax(s_b)`, in three launches (each
/// row's log-sum-exp; each class's mean, its log and its loss term; each row's gradient
/// `p_bj (log p̄_j − Σ_k p_bk log p̄_k) / B`) and the sum of the class terms.
pub fn balance(gpu: &Gpu, logits: &Tensor) -> Result<LossPlan> {
    let (b, c) = logits_shape("balance", "student", logits, 1)?;
    let p = params("balance", b, c, 1.0, 0.0, 0.0)?;
    let p = Params {
        grad_scale: 1.0 / b as f32,
        ..p
    };
    // Rows loop over their classes twice, classes over the batch once.
    gpu.check_loops(&BALANCE_GRAD, 2 * c as u64)?;
    gpu.check_loops(&BALANCE_MEAN, b as u64)?;
    let lse = gpu.empty(&[b], DType::F32)?;
    let log_mean = gpu.empty(&[c], DType::F32)?;
    let class_loss = gpu.empty(&[c], DType::F32)?;
    let grad = gpu.empty(&[b, c], DType::F32)?;
    let loss = gpu.empty(&[1], DType::F32)?;
    let mut dispatches = vec![
        gpu.dispatch_over(&BALANCE_ROWS, &p, &[logits, &lse], b)?,
        gpu.dispatch_over(
            &BALANCE_MEAN,
            &p,
            &[logits, &lse, &log_mean, &class_loss],
            c,
        )?,
        gpu.dispatch_over(&BALANCE_GRAD, &p, &[logits, &lse, &log_mean, &grad], b)?,
    ];
    reduce::sum_into(gpu, &mut dispatches, &class_loss, &loss, 1.0)?;
    Ok(LossPlan::single(dispatches, loss, grad))
}

#[derive(Clone, Copy, PartialEq)]
enum Which {
    Ce,
    Kd,
    Dkd,
    Bce,
    L1,
    Js,
    Balance,
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
        Which::Kd | Which::L1 | Which::Js => vec![logits(1), logits(2)],
        Which::Balance => vec![logits(1)],
        Which::Dkd => vec![logits(1), logits(2), labels],
        Which::Bce => {
            // Logits far into both tails (up to ±40, where e^−|z| ≈ 4e-18 and the loss rests on
            // log1p's series), targets 0, 1 and in between.
            let z: Vec<f32> = sample(b * c, 1).iter().map(|v| 40.0 * v * v * v).collect();
            let y: Vec<f32> = sample(b * c, 2)
                .iter()
                .enumerate()
                .map(|(i, v)| match i % 3 {
                    0 => 0.0,
                    1 => 1.0,
                    _ => 0.5 * (v + 1.0),
                })
                .collect();
            vec![HostTensor::f32(&[b, c], z), HostTensor::f32(&[b, c], y)]
        }
    }
}

fn cases(suite: Suite, which: Which) -> Vec<LossCase> {
    let shapes: &[(usize, usize)] = match suite {
        // Batches and class counts off the 64-row workgroup; one class; a long row.
        Suite::Check => &[(1, 1), (7, 33), (33, 10), (129, 7), (5, 1000)],
        Suite::Bench { small } => match (which, small) {
            (Which::Kd, _) => &[(256, 10), (4096, 1000)],
            (Which::Bce | Which::L1 | Which::Js | Which::Balance, _) => &[(4096, 1000)],
            (_, true) => &[(4096, 1000)],
            (_, false) => &[(16384, 1000)],
        },
    };
    let temperatures: &[f64] = match (suite, which) {
        (Suite::Check, Which::Kd | Which::Dkd) => &[0.5, 1.0, 4.0, 20.0],
        (Suite::Check, Which::Js) => &[1.0, 3.0],
        _ => &[4.0],
    };
    let mut out = Vec::new();
    for &(b, c) in shapes {
        if which == Which::Dkd && c < 2 {
            continue;
        }
        // Read each input once, write the gradient once.
        let tensors = match which {
            Which::Ce => 2.0,
            // Logits read three times, the gradient written once.
            Which::Balance => 4.0,
            _ => 3.0,
        };
        let work = Work::Bytes(4.0 * tensors * (b * c) as f64);
        let case = || LossCase::new(format!("[{b}, {c}]"), logits_case(b, c, which)).work(work);
        match which {
            Which::Ce | Which::Bce => out.push(case()),
            Which::Balance => {
                out.push(case());
                // One class that no row predicts (its mean underflows to 0) and one that every
                // row is sure of: the loss near its maximum, log C.
                let mut inputs = logits_case(b, c, which);
                if let HostData::F32(v) = &mut inputs[0].data {
                    v.chunks_mut(c).for_each(|row| {
                        row[0] = 200.0;
                        if c > 1 {
                            row[c - 1] = -200.0;
                        }
                    });
                }
                out.push(LossCase::new(format!("[{b}, {c}] one class"), inputs).work(work));
            }
            Which::L1 => {
                // Equal elements, where the gradient is 0.
                let mut inputs = logits_case(b, c, which);
                let student = inputs[0].clone();
                if let (Some(s), HostData::F32(t)) = (student.as_f32(), &mut inputs[1].data) {
                    t.iter_mut().zip(s).step_by(5).for_each(|(t, s)| *t = *s);
                }
                out.push(LossCase::new(format!("[{b}, {c}]"), inputs).work(work));
            }
            Which::Js => out.extend(
                temperatures
                    .iter()
                    .map(|&t| case().attrs(&[("temperature", t)])),
            ),
            // WGSL promises log only to an absolute 2⁻²¹ near 1 (a GPU's fast log is that far
            // off), and the loss carries a factor T².
            Which::Kd => out.extend(temperatures.iter().map(|&t| {
                let atol = (t * t * 2f64.powi(-21)).max(2e-6);
                case().attrs(&[("temperature", t)]).tolerance(2e-4, atol)
            })),
            Which::Dkd => out.extend(
                temperatures
                    .iter()
                    .map(|&t| case().attrs(&[("temperature", t)]).tolerance(2e-4, 1e-5)),
            ),
        }
    }
    // Unlabelled rows (negative labels): every third one, in one workgroup and over three (each
    // counts the batch's labelled rows), then all of them (loss 0, no gradient).
    if matches!(which, Which::Ce | Which::Dkd) && suite == Suite::Check {
        for (name, b, c, every) in [
            ("[33, 10] a third unlabelled", 33, 10, 3),
            ("[129, 7] a third unlabelled", 129, 7, 3),
            ("[7, 5] unlabelled", 7, 5, 1),
        ] {
            let mut inputs = logits_case(b, c, which);
            if let Some(HostData::I32(y)) = inputs.last_mut().map(|t| &mut t.data) {
                y.iter_mut().step_by(every).for_each(|y| *y = -1);
            }
            let case = LossCase::new(name, inputs);
            out.push(match which {
                Which::Dkd => case.attrs(&[("temperature", 4.0)]).tolerance(2e-4, 1e-5),
                _ => case,
            });
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
