//! Relation-based losses (`shaders/relation.wgsl`): similarity preserving, RKD distance and angle,
//! and PKT. Everything is built from B×B Gram matrices (matmul), so no kernel holds a B×B×D
//! tensor, and every gradient ends as `C·E` for a B×B coefficient matrix (again a matmul).
//! Definitions in `docs/losses.md`.

use crate::catalogue::{Suite, Work};
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::io::HostTensor;
use crate::kernels::matmul::{MatmulOptions, matmul};
use crate::reference::relation as cpu;
use crate::rng::sample;
use crate::{Result, kernels::reduce};

use super::AttrDef;
use super::losses::{
    LossCase, LossDef, LossPlan, Range, Reads, STUDENT, TEACHER, check_attr, u32_of,
};

use Binding::{Output as W, ReadOnly as R, ReadWrite as RW, Uniform as U};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    dim: u32,
    gamma: f32,
    order: u32,
}

/// Column centring.
pub const CENTER: KernelSpec = KernelSpec::new::<Params>("relation", "center", &[U, R, W]);
/// `C + Cᵀ`.
pub const SYMMETRIZE: KernelSpec = KernelSpec::new::<Params>("relation", "symmetrize", &[U, R, W]);
/// SP per row.
pub const SP_ROWS: KernelSpec = KernelSpec::new::<Params>("relation", "sp_rows", &[U, R, R, W, W]);
/// RKD distance, per row: the sums behind the mean distances.
pub const RKD_DISTANCE_ROWS: KernelSpec =
    KernelSpec::new::<Params>("relation", "rkd_distance_rows", &[U, R, R, W]);
/// RKD distance: the mean distances from the rows' sums.
pub const RKD_DISTANCE_MEANS: KernelSpec =
    KernelSpec::new::<Params>("relation", "rkd_distance_means", &[U, R, W]);
/// RKD distance, per row: the loss and the gradient's mean term.
pub const RKD_DISTANCE_ROW_LOSS: KernelSpec =
    KernelSpec::new::<Params>("relation", "rkd_distance_row_loss", &[U, R, R, R, W]);
/// RKD distance: the loss and the gradient's mean term from the rows'.
pub const RKD_DISTANCE_FINISH: KernelSpec =
    KernelSpec::new::<Params>("relation", "rkd_distance_finish", &[U, R, RW, W]);
/// RKD distance gradient coefficients.
pub const RKD_DISTANCE_COEF: KernelSpec =
    KernelSpec::new::<Params>("relation", "rkd_distance_coef", &[U, R, R, R, W]);
/// RKD angle per pair.
pub const RKD_ANGLE_PAIRS: KernelSpec =
    KernelSpec::new::<Params>("relation", "rkd_angle_pairs", &[U, R, R, W, W, W]);
/// RKD angle gradient coefficients.
pub const RKD_ANGLE_COEF: KernelSpec =
    KernelSpec::new::<Params>("relation", "rkd_angle_coef", &[U, R, R, R, R, W]);
/// Row normalisation (PKT).
pub const NORMALIZE_ROWS: KernelSpec =
    KernelSpec::new::<Params>("relation", "normalize_rows", &[U, R, W, W]);
/// PKT per row.
pub const PKT_ROWS: KernelSpec =
    KernelSpec::new::<Params>("relation", "pkt_rows", &[U, R, R, W, W]);
/// Backward of row normalisation.
pub const NORMALIZE_ROWS_BACKWARD: KernelSpec =
    KernelSpec::new::<Params>("relation", "normalize_rows_backward", &[U, R, R, R, W]);

/// CC per row: the kernel differences' squares and the gradient coefficients.
pub const CC_ROWS: KernelSpec = KernelSpec::new::<Params>("relation", "cc_rows", &[U, R, R, W, W]);
/// CC: the loss and the gradient scaled by the norm.
pub const CC_SCALE: KernelSpec =
    KernelSpec::new::<Params>("relation", "cc_scale", &[U, R, R, W, W]);

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[
    CC_ROWS,
    CC_SCALE,
    CENTER,
    SYMMETRIZE,
    SP_ROWS,
    RKD_DISTANCE_ROWS,
    RKD_DISTANCE_MEANS,
    RKD_DISTANCE_ROW_LOSS,
    RKD_DISTANCE_FINISH,
    RKD_DISTANCE_COEF,
    RKD_ANGLE_PAIRS,
    RKD_ANGLE_COEF,
    NORMALIZE_ROWS,
    PKT_ROWS,
    NORMALIZE_ROWS_BACKWARD,
];

/// A relation loss of `(student, teacher)` embeddings, each flattened to (B, D).
macro_rules! relation_loss {
    ($name:literal, $summary:literal, $launch:path, $reference:path) => {
        LossDef {
            name: $name,
            summary: $summary,
            reads: Reads::Features,
            inputs: &[STUDENT, TEACHER],
            attrs: &[],
            launch: |gpu, _, x| $launch(gpu, x[0], x[1]),
            reference: |_, x| $reference(&x[0].values, &x[1].values, x[0].shape[0]).into(),
            cases,
        }
    };
}

/// `sp`: similarity-preserving KD.
pub const SP: LossDef = relation_loss!("sp", "similarity-preserving KD", sp, cpu::sp);
/// `rkd_distance`: relational KD, distance term.
pub const RKD_DISTANCE: LossDef = relation_loss!(
    "rkd_distance",
    "relational KD, distance term",
    rkd_distance,
    cpu::rkd_distance
);
/// `rkd_angle`: relational KD, angle term.
pub const RKD_ANGLE: LossDef = relation_loss!(
    "rkd_angle",
    "relational KD, angle term",
    rkd_angle,
    cpu::rkd_angle
);
/// `pkt`: probabilistic knowledge transfer.
pub const PKT: LossDef = relation_loss!("pkt", "probabilistic knowledge transfer", pkt, cpu::pkt);

/// `cc`: correlation congruence (torchdistill's CCKD, Gaussian kernel).
pub const CC: LossDef = LossDef {
    name: "cc",
    summary: "correlation congruence: ‖C(s) − C(t)‖_F / B², C the Taylor-expanded Gaussian kernel",
    reads: Reads::Features,
    inputs: &[STUDENT, TEACHER],
    attrs: &[
        AttrDef {
            name: "gamma",
            default: 0.4,
            range: Range::positive(100.0),
            doc: "the Gaussian kernel's γ",
        },
        AttrDef {
            name: "max_p",
            default: 2.0,
            range: Range::non_negative(16.0),
            doc: "the order P of its Taylor series (a whole number)",
        },
    ],
    launch: |gpu, l, x| cc(gpu, x[0], x[1], l.attr_f32("gamma"), l.attr("max_p")),
    reference: |l, x| {
        let order = l.attr("max_p") as usize;
        cpu::cc(
            &x[0].values,
            &x[1].values,
            x[0].shape[0],
            l.attr("gamma"),
            order,
        )
        .into()
    },
    cases: cc_cases,
};

/// The family's losses, in registry order.
pub const LOSSES: &[&LossDef] = &[&SP, &RKD_DISTANCE, &RKD_ANGLE, &PKT, &CC];

/// Flattens a relation-loss input to `(B, D)`, requiring `B ≥ 2`.
fn embeddings(op: &str, what: &str, t: &Tensor) -> Result<(usize, usize)> {
    let b = t.shape().first().copied().unwrap_or(0);
    if t.dtype() != DType::F32 || t.shape().len() < 2 || b < 2 || t.numel() == 0 {
        return Err(shape_error(
            op,
            format!(
                "{what} must be f32 (B, ...) with B ≥ 2 and no empty dimension, got {}{:?}",
                t.dtype().name(),
                t.shape()
            ),
        ));
    }
    Ok((b, t.numel() / b))
}

fn relation_inputs(op: &str, student: &Tensor, teacher: &Tensor) -> Result<(usize, usize, usize)> {
    let (b, ds) = embeddings(op, "student", student)?;
    let (bt, dt) = embeddings(op, "teacher", teacher)?;
    if b != bt {
        return Err(shape_error(
            op,
            format!("student batch {b} and teacher batch {bt} differ"),
        ));
    }
    Ok((b, ds, dt))
}

fn rparams(op: &str, batch: usize, dim: usize) -> Result<Params> {
    Ok(Params {
        batch: u32_of(op, "batch", batch)?,
        dim: u32_of(op, "features", dim)?,
        gamma: 0.0,
        order: 0,
    })
}

/// Appends `G = F Fᵀ` for `f` viewed as (B, D) and returns G.
fn gram(gpu: &Gpu, plan: &mut Vec<Dispatch>, f: &Tensor, b: usize, d: usize) -> Result<Tensor> {
    let options = MatmulOptions {
        trans_b: true,
        ..Default::default()
    };
    let flat = f.reshape(&[b, d])?;
    let (dispatch, g) = matmul(gpu, &flat, &flat, None, options)?;
    plan.push(dispatch);
    Ok(g)
}

/// Appends centring of `f` (B, D) over the batch and returns the centred copy.
fn centered(
    gpu: &Gpu,
    plan: &mut Vec<Dispatch>,
    op: &str,
    f: &Tensor,
    b: usize,
    d: usize,
) -> Result<Tensor> {
    gpu.check_loops(&CENTER, 2 * b as u64)?;
    let c = gpu.empty(&[b, d], DType::F32)?;
    plan.push(gpu.dispatch_over(&CENTER, &rparams(op, b, d)?, &[f, &c], d)?);
    Ok(c)
}

/// Appends `C·F` (or `(C + Cᵀ)·F`) for a B×B `coef` and `f` viewed as (B, D); returns it shaped
/// like `shape`.
#[allow(clippy::too_many_arguments)]
fn coef_times(
    gpu: &Gpu,
    plan: &mut Vec<Dispatch>,
    op: &str,
    coef: &Tensor,
    f: &Tensor,
    b: usize,
    d: usize,
    symmetric: bool,
    shape: &[usize],
) -> Result<Tensor> {
    let coef = if symmetric {
        let sym = gpu.empty(&[b, b], DType::F32)?;
        plan.push(gpu.dispatch_over(&SYMMETRIZE, &rparams(op, b, d)?, &[coef, &sym], b * b)?);
        sym
    } else {
        coef.clone()
    };
    let (dispatch, out) = matmul(
        gpu,
        &coef,
        &f.reshape(&[b, d])?,
        None,
        MatmulOptions::default(),
    )?;
    plan.push(dispatch);
    out.reshape(shape)
}

/// Similarity preserving: `Σ (G_s − G_t)² / B²` with `G = normalize(F Fᵀ)` row-wise.
pub fn sp(gpu: &Gpu, student: &Tensor, teacher: &Tensor) -> Result<LossPlan> {
    let op = "sp";
    let (b, ds, dt) = relation_inputs(op, student, teacher)?;
    let mut plan = Vec::new();
    let gs = gram(gpu, &mut plan, student, b, ds)?;
    let gt = gram(gpu, &mut plan, teacher, b, dt)?;
    gpu.check_loops(&SP_ROWS, 3 * b as u64)?;
    let dg = gpu.empty(&[b, b], DType::F32)?;
    let row_loss = gpu.empty(&[b], DType::F32)?;
    plan.push(gpu.dispatch_over(
        &SP_ROWS,
        &rparams(op, b, 0)?,
        &[&gs, &gt, &dg, &row_loss],
        b,
    )?);
    let grad = coef_times(
        gpu,
        &mut plan,
        op,
        &dg,
        student,
        b,
        ds,
        true,
        student.shape(),
    )?;
    let loss = gpu.empty(&[1], DType::F32)?;
    reduce::sum_into(gpu, &mut plan, &row_loss, &loss, 1.0 / (b * b) as f32)?;
    Ok(LossPlan::single(plan, loss, grad))
}

/// What both RKD terms start from: the student's centred embeddings (its gradient is `C·E_s`)
/// and both sides' Gram matrices of centred embeddings.
struct Centred {
    es: Tensor,
    gs: Tensor,
    gt: Tensor,
}

/// Appends the centring of both sides and their Gram matrices.
fn centred_grams(
    gpu: &Gpu,
    plan: &mut Vec<Dispatch>,
    op: &str,
    student: &Tensor,
    teacher: &Tensor,
) -> Result<Centred> {
    let (b, ds, dt) = relation_inputs(op, student, teacher)?;
    let es = centered(gpu, plan, op, student, b, ds)?;
    let et = centered(gpu, plan, op, teacher, b, dt)?;
    let gs = gram(gpu, plan, &es, b, ds)?;
    let gt = gram(gpu, plan, &et, b, dt)?;
    Ok(Centred { es, gs, gt })
}

/// RKD distance: smooth-L1 between mean-normalised pairwise distance matrices.
pub fn rkd_distance(gpu: &Gpu, student: &Tensor, teacher: &Tensor) -> Result<LossPlan> {
    let op = "rkd_distance";
    let (b, ds, _) = relation_inputs(op, student, teacher)?;
    let mut plan = Vec::new();
    let Centred { es, gs, gt } = centred_grams(gpu, &mut plan, op, student, teacher)?;
    for spec in [
        &RKD_DISTANCE_ROWS,
        &RKD_DISTANCE_MEANS,
        &RKD_DISTANCE_ROW_LOSS,
        &RKD_DISTANCE_FINISH,
        &RKD_DISTANCE_COEF,
    ] {
        gpu.check_loops(spec, b as u64)?;
    }
    let p = rparams(op, b, 0)?;
    let row_sums = gpu.empty(&[b, 4], DType::F32)?;
    let row_loss = gpu.empty(&[b, 2], DType::F32)?;
    let stats = gpu.empty(&[4], DType::F32)?;
    let loss = gpu.empty(&[1], DType::F32)?;
    plan.extend([
        gpu.dispatch_over(&RKD_DISTANCE_ROWS, &p, &[&gs, &gt, &row_sums], b)?,
        gpu.dispatch_over(&RKD_DISTANCE_MEANS, &p, &[&row_sums, &stats], 1)?,
        gpu.dispatch_over(
            &RKD_DISTANCE_ROW_LOSS,
            &p,
            &[&gs, &gt, &stats, &row_loss],
            b,
        )?,
        gpu.dispatch_over(&RKD_DISTANCE_FINISH, &p, &[&row_loss, &stats, &loss], 1)?,
    ]);
    let coef = gpu.empty(&[b, b], DType::F32)?;
    plan.push(gpu.dispatch_over(
        &RKD_DISTANCE_COEF,
        &rparams(op, b, 0)?,
        &[&gs, &gt, &stats, &coef],
        b,
    )?);
    let grad = coef_times(
        gpu,
        &mut plan,
        op,
        &coef,
        &es,
        b,
        ds,
        false,
        student.shape(),
    )?;
    Ok(LossPlan::single(plan, loss, grad))
}

/// RKD angle: smooth-L1 between the angle tensors `A_ijk = u_ij · u_ik`, computed from Gram
/// matrices in O(B³ + B²D) without a B×B×D tensor.
pub fn rkd_angle(gpu: &Gpu, student: &Tensor, teacher: &Tensor) -> Result<LossPlan> {
    let op = "rkd_angle";
    let (b, ds, _) = relation_inputs(op, student, teacher)?;
    let mut plan = Vec::new();
    let Centred { es, gs, gt } = centred_grams(gpu, &mut plan, op, student, teacher)?;
    let r = gpu.empty(&[b, b], DType::F32)?;
    let bcoef = gpu.empty(&[b, b], DType::F32)?;
    let pair_loss = gpu.empty(&[b, b], DType::F32)?;
    let p = rparams(op, b, 0)?;
    gpu.check_loops(&RKD_ANGLE_PAIRS, b as u64)?;
    gpu.check_loops(&RKD_ANGLE_COEF, 2 * b as u64)?;
    plan.push(gpu.dispatch_over(
        &RKD_ANGLE_PAIRS,
        &p,
        &[&gs, &gt, &r, &bcoef, &pair_loss],
        b * b,
    )?);
    let coef = gpu.empty(&[b, b], DType::F32)?;
    plan.push(gpu.dispatch_over(&RKD_ANGLE_COEF, &p, &[&gs, &gt, &r, &bcoef, &coef], b * b)?);
    let grad = coef_times(
        gpu,
        &mut plan,
        op,
        &coef,
        &es,
        b,
        ds,
        false,
        student.shape(),
    )?;
    let loss = gpu.empty(&[1], DType::F32)?;
    reduce::sum_into(gpu, &mut plan, &pair_loss, &loss, 1.0 / (b * b * b) as f32)?;
    Ok(LossPlan::single(plan, loss, grad))
}

/// PKT: divergence between row-normalised cosine-similarity distributions.
pub fn pkt(gpu: &Gpu, student: &Tensor, teacher: &Tensor) -> Result<LossPlan> {
    let op = "pkt";
    let (b, ds, dt) = relation_inputs(op, student, teacher)?;
    let mut plan = Vec::new();
    let xs = gpu.empty(&[b, ds], DType::F32)?;
    let xt = gpu.empty(&[b, dt], DType::F32)?;
    let ns = gpu.empty(&[b], DType::F32)?;
    let nt = gpu.empty(&[b], DType::F32)?;
    gpu.check_loops(&NORMALIZE_ROWS, 2 * ds.max(dt) as u64)?;
    gpu.check_loops(&PKT_ROWS, 3 * b as u64)?;
    plan.push(gpu.dispatch_over(
        &NORMALIZE_ROWS,
        &rparams(op, b, ds)?,
        &[student, &xs, &ns],
        b,
    )?);
    plan.push(gpu.dispatch_over(
        &NORMALIZE_ROWS,
        &rparams(op, b, dt)?,
        &[teacher, &xt, &nt],
        b,
    )?);
    let ks = gram(gpu, &mut plan, &xs, b, ds)?;
    let kt = gram(gpu, &mut plan, &xt, b, dt)?;
    let dk = gpu.empty(&[b, b], DType::F32)?;
    let row_loss = gpu.empty(&[b], DType::F32)?;
    plan.push(gpu.dispatch_over(
        &PKT_ROWS,
        &rparams(op, b, 0)?,
        &[&ks, &kt, &dk, &row_loss],
        b,
    )?);
    let dxh = coef_times(gpu, &mut plan, op, &dk, &xs, b, ds, true, &[b, ds])?;
    let grad = gpu.empty(student.shape(), DType::F32)?;
    plan.push(gpu.dispatch_over(
        &NORMALIZE_ROWS_BACKWARD,
        &rparams(op, b, ds)?,
        &[student, &ns, &dxh, &grad],
        b,
    )?);
    let loss = gpu.empty(&[1], DType::F32)?;
    reduce::sum_into(gpu, &mut plan, &row_loss, &loss, 1.0 / (b * b) as f32)?;
    Ok(LossPlan::single(plan, loss, grad))
}

/// (B, student D, teacher D) of the family's cases.
fn shapes(suite: Suite) -> &'static [(usize, usize, usize)] {
    match suite {
        // (D = 1 makes PKT's similarities ±1 exactly, where its 1e-7 terms exceed f32
        // precision.) B = 256 has 65,536 pairs: more than llvmpipe lets one invocation loop over.
        Suite::Check => &[(2, 3, 2), (7, 33, 5), (13, 9, 65), (256, 16, 24)],
        Suite::Bench { small: true } => &[(256, 128, 128)],
        Suite::Bench { small: false } => &[(256, 2048, 2048)],
    }
}

fn cases(suite: Suite) -> Vec<LossCase> {
    let embeddings = |b: usize, d: usize, seed| {
        HostTensor::f32(
            &[b, d],
            sample(b * d, seed).iter().map(|v| 2.0 * v).collect(),
        )
    };
    shapes(suite)
        .iter()
        .map(|&(b, ds, dt)| {
            let inputs = vec![embeddings(b, ds, 8), embeddings(b, dt, 9)];
            let shape = if ds == dt {
                format!("[{b}, {ds}]")
            } else {
                format!("[{b}, {ds}|{dt}]")
            };
            LossCase::new(shape, inputs)
                .tolerance(1e-3, 1e-5)
                .work(Work::Time)
        })
        .collect()
}

/// Correlation congruence: `‖C(s) − C(t)‖_F / B²`, `C(f)_ij = e^(−2γ) Σ_{p=0..P} (2γ)^p/p! ·
/// (f_i·f_j)^p` (torchdistill's CCKD, Gaussian kernel). Widths may differ; `max_p` is whole.
pub fn cc(
    gpu: &Gpu,
    student: &Tensor,
    teacher: &Tensor,
    gamma: f32,
    max_p: f64,
) -> Result<LossPlan> {
    let op = "cc";
    check_attr(&CC, "gamma", gamma)?;
    if max_p.fract() != 0.0 || !(0.0..=16.0).contains(&max_p) {
        return Err(crate::error::input_error(
            "cc: max_p",
            format!("must be a whole number from 0 to 16, got {max_p}"),
        ));
    }
    let (b, ds, dt) = relation_inputs(op, student, teacher)?;
    let mut plan = Vec::new();
    let gs = gram(gpu, &mut plan, student, b, ds)?;
    let gt = gram(gpu, &mut plan, teacher, b, dt)?;
    let order = max_p as u32;
    gpu.check_loops(&CC_ROWS, (b as u64) * (2 * u64::from(order) + 2))?;
    let p = Params {
        gamma,
        order,
        ..rparams(op, b, 0)?
    };
    let coef = gpu.empty(&[b, b], DType::F32)?;
    let row_sq = gpu.empty(&[b], DType::F32)?;
    plan.push(gpu.dispatch_over(&CC_ROWS, &p, &[&gs, &gt, &coef, &row_sq], b)?);
    let raw = coef_times(gpu, &mut plan, op, &coef, student, b, ds, false, &[b, ds])?;
    let total = gpu.empty(&[1], DType::F32)?;
    reduce::sum_into(gpu, &mut plan, &row_sq, &total, 1.0)?;
    let (loss, grad) = (
        gpu.empty(&[1], DType::F32)?,
        gpu.empty(student.shape(), DType::F32)?,
    );
    let p = Params {
        dim: u32_of(op, "elements", b * ds)?,
        ..p
    };
    plan.push(gpu.dispatch_over(&CC_SCALE, &p, &[&total, &raw, &loss, &grad], b * ds)?);
    Ok(LossPlan::single(plan, loss, grad))
}

fn cc_cases(suite: Suite) -> Vec<LossCase> {
    let embeddings = |b: usize, d: usize, seed| {
        HostTensor::f32(
            &[b, d],
            sample(b * d, seed).iter().map(|v| 0.5 * v).collect(),
        )
    };
    // (γ, P): the defaults, a higher order, and the constant kernel (a zero loss and gradient).
    let settings: &[(f64, f64)] = match suite {
        Suite::Check => &[(0.4, 2.0), (0.5, 3.0), (0.4, 0.0)],
        Suite::Bench { .. } => &[(0.4, 2.0)],
    };
    let mut out = Vec::new();
    for &(b, ds, dt) in shapes(suite) {
        for &(gamma, max_p) in settings {
            let inputs = vec![embeddings(b, ds, 10), embeddings(b, dt, 11)];
            out.push(
                LossCase::new(format!("[{b}, {ds}|{dt}]"), inputs)
                    .attrs(&[("gamma", gamma), ("max_p", max_p)])
                    .tolerance(1e-3, 1e-5)
                    .work(Work::Time),
            );
        }
    }
    out
}
