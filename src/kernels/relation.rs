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
    LossCase, LossDef, LossInput, LossPlan, Range, Reads, Role, STUDENT, TEACHER, check_attr,
    u32_of,
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

/// IRG's parameters (`IrgParams` in the shader).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default)]
struct IrgParams {
    n: u32,
    diagonal: u32,
    scale: f32,
    slot: u32,
    channels: u32,
    plane: u32,
    halved: u32,
    batch: u32,
}

/// IRG: squared distances from a Gram matrix (unclamped, diagonal 0).
pub const IRG_EDGES: KernelSpec = KernelSpec::new::<IrgParams>("relation", "irg_edges", &[U, R, W]);
/// IRG: one graph comparison's statistics, in one workgroup.
pub const IRG_COMPARE: KernelSpec =
    KernelSpec::new::<IrgParams>("relation", "irg_compare", &[U, R, R, RW]);
/// IRG: a graph comparison's gradient.
pub const IRG_COMPARE_GRAD: KernelSpec =
    KernelSpec::new::<IrgParams>("relation", "irg_compare_grad", &[U, R, R, R, W]);
/// IRG: the edge gradient as matmul coefficients.
pub const IRG_EDGE_COEF: KernelSpec =
    KernelSpec::new::<IrgParams>("relation", "irg_edge_coef", &[U, R, W]);
/// IRG: the transformation's difference and its square.
pub const IRG_TRANSFORM: KernelSpec =
    KernelSpec::new::<IrgParams>("relation", "irg_transform", &[U, R, R, W, W]);
/// IRG: the transformation's gradients.
pub const IRG_TRANSFORM_GRAD: KernelSpec =
    KernelSpec::new::<IrgParams>("relation", "irg_transform_grad", &[U, R, R, W, W]);
/// IRG: the weighted total.
pub const IRG_TOTAL: KernelSpec =
    KernelSpec::new::<IrgParams>("relation", "irg_total", &[U, R, R, W]);

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[
    IRG_EDGES,
    IRG_COMPARE,
    IRG_COMPARE_GRAD,
    IRG_EDGE_COEF,
    IRG_TRANSFORM,
    IRG_TRANSFORM_GRAD,
    IRG_TOTAL,
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
            parameters: None,
            memory: None,
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
    parameters: None,
    memory: None,
};

const fn irg_input(name: &'static str, role: Role) -> LossInput {
    LossInput { name, role }
}

/// IRG's three weights, in the order of its attributes and of [`irg`]'s `weights`.
const IRG_WEIGHTS: [&str; 3] = ["w_vert", "w_edge", "w_tran"];

/// `irg`: instance relationship graph.
pub const IRG: LossDef = LossDef {
    name: "irg",
    summary: "instance relationship graph: vertices (logits), edges (distance graphs of a feature and two maps), transformation between the maps",
    reads: Reads::Features,
    inputs: &[
        irg_input("student", Role::Student),
        irg_input("student_feat", Role::Student),
        irg_input("student_fm1", Role::Student),
        irg_input("student_fm2", Role::Student),
        irg_input("teacher", Role::Teacher),
        irg_input("teacher_feat", Role::Teacher),
        irg_input("teacher_fm1", Role::Teacher),
        irg_input("teacher_fm2", Role::Teacher),
    ],
    attrs: &[
        AttrDef {
            name: "w_vert",
            default: 0.1,
            range: Range::non_negative(1e6),
            doc: "weight of the vertex term (MSE of the logits)",
        },
        AttrDef {
            name: "w_edge",
            default: 5.0,
            range: Range::non_negative(1e6),
            doc: "weight of the edge term (mean over the three distance graphs)",
        },
        AttrDef {
            name: "w_tran",
            default: 5.0,
            range: Range::non_negative(1e6),
            doc: "weight of the transformation term",
        },
    ],
    launch: |gpu, l, x| {
        let weights = IRG_WEIGHTS.map(|k| l.attr_f32(k));
        irg(
            gpu,
            [x[0], x[1], x[2], x[3]],
            [x[4], x[5], x[6], x[7]],
            weights,
        )
    },
    reference: |l, x| {
        let four = |k: usize| -> [usize; 4] { x[k].shape.clone().try_into().unwrap_or([0; 4]) };
        let side = |o: usize| cpu::IrgSide {
            logits: &x[o].values,
            feat: &x[o + 1].values,
            fm1: (&x[o + 2].values, four(o + 2)),
            fm2: (&x[o + 3].values, four(o + 3)),
        };
        let weights = IRG_WEIGHTS.map(|k| l.attr(k));
        cpu::irg(&side(0), &side(4), x[0].shape[0], weights)
    },
    cases: irg_cases,
    parameters: None,
    memory: None,
};

/// The family's losses, in registry order.
pub const LOSSES: &[&LossDef] = &[&SP, &RKD_DISTANCE, &RKD_ANGLE, &PKT, &CC, &IRG];

/// One side's maps for IRG's transformation, checked: `(B, C1, H1, W1)` and `(B, C2, H2, W2)`
/// with H1 ≥ H2, W1 ≥ W2 (equal H only with equal W) and C2 = C1 or 2·C1.
fn irg_maps(side: &str, fm1: &Tensor, fm2: &Tensor) -> Result<([usize; 4], [usize; 4])> {
    let four = |what: &str, t: &Tensor| -> Result<[usize; 4]> {
        match (t.dtype(), t.shape()) {
            (DType::F32, &[b, c, h, w]) if b * c * h * w > 0 => Ok([b, c, h, w]),
            _ => Err(shape_error(
                "irg",
                format!(
                    "{side}_{what} must be a non-empty f32 (B, C, H, W) map, got {}{:?}",
                    t.dtype().name(),
                    t.shape()
                ),
            )),
        }
    };
    let (a, b) = (four("fm1", fm1)?, four("fm2", fm2)?);
    let fits = a[0] == b[0]
        && a[2] >= b[2]
        && a[3] >= b[3]
        && (a[2] > b[2] || a[3] == b[3])
        && (b[1] == a[1] || b[1] == 2 * a[1]);
    if !fits {
        return Err(shape_error(
            "irg",
            format!(
                "{side}_fm1 {a:?} and {side}_fm2 {b:?}: fm1 must be at least fm2's size (equal heights with equal widths) and fm2 must have fm1's channels or twice as many"
            ),
        ));
    }
    Ok((a, b))
}

/// Appends IRG's edge term for one (student, teacher) pair, comparing in statistics slot
/// `slot`; returns the student's gradient (its shape).
#[allow(clippy::too_many_arguments)]
fn irg_edge_term(
    gpu: &Gpu,
    plan: &mut Vec<Dispatch>,
    student: &Tensor,
    teacher: &Tensor,
    stats: &Tensor,
    slot: u32,
    weight: f32,
) -> Result<Tensor> {
    let op = "irg";
    let (b, ds, dt) = relation_inputs(op, student, teacher)?;
    let n = b * b;
    let p = IrgParams {
        n: u32_of(op, "B²", n)?,
        diagonal: b as u32,
        scale: weight / n as f32,
        slot,
        ..Default::default()
    };
    let mut edges = |x: &Tensor, d: usize| -> Result<Tensor> {
        let g = gram(gpu, plan, x, b, d)?;
        let e = gpu.empty(&[b, b], DType::F32)?;
        plan.push(gpu.dispatch_over(&IRG_EDGES, &p, &[&g, &e], n)?);
        Ok(e)
    };
    let (es, et) = (edges(student, ds)?, edges(teacher, dt)?);
    plan.push(gpu.dispatch(&IRG_COMPARE, &p, &[&es, &et, stats], 1)?);
    let de = gpu.empty(&[b, b], DType::F32)?;
    let tensors = [&es, &et, stats, &de];
    plan.push(gpu.dispatch_over(&IRG_COMPARE_GRAD, &p, &tensors, n)?);
    let coef = gpu.empty(&[b, b], DType::F32)?;
    plan.push(gpu.dispatch_over(&IRG_EDGE_COEF, &p, &[&de, &coef], n)?);
    coef_times(gpu, plan, op, &coef, student, b, ds, false, student.shape())
}

/// Instance relationship graph (Knowledge-Distillation-Zoo's `IRG`) on each side's logits
/// (B, K), feature (B, …) and two maps: `w_vert·mean((s − t)²)` + `w_edge` × the mean over the
/// feature and both maps of the distance graphs' MSE + `w_tran` × the transformation vectors'
/// MSE (each graph clamped at 1e-12 and normalised by its maximum, the student's in its graph).
/// Gradients for the student's four inputs.
pub fn irg(
    gpu: &Gpu,
    student: [&Tensor; 4],
    teacher: [&Tensor; 4],
    [w_vert, w_edge, w_tran]: [f32; 3],
) -> Result<LossPlan> {
    let op = "irg";
    for (k, w) in IRG_WEIGHTS.into_iter().zip([w_vert, w_edge, w_tran]) {
        check_attr(&IRG, k, w)?;
    }
    let [s, s_feat, s_fm1, s_fm2] = student;
    let [t, t_feat, t_fm1, t_fm2] = teacher;
    let (b, _, _) = relation_inputs(op, s, t)?;
    t.expect(op, "teacher", DType::F32, s.shape())?;
    let (sa, sb) = irg_maps("student", s_fm1, s_fm2)?;
    let (ta, tb) = irg_maps("teacher", t_fm1, t_fm2)?;
    let feats = [s_feat.shape().first(), t_feat.shape().first()];
    if ta[0] != b || sa[0] != b || feats != [Some(&b); 2] {
        return Err(shape_error(op, "every input must have the logits' batch"));
    }
    // Two passes over the B² entries, then two reduction trees of 8 levels.
    gpu.check_loops(&IRG_COMPARE, 2 * (b * b).div_ceil(256) as u64 + 16)?;
    gpu.check_loops(&IRG_EDGE_COEF, b as u64)?;
    let mut plan = Vec::new();
    let stats = gpu.zeros(&[32], DType::F32)?;
    // Vertices: the logits' MSE (the hint kernel), its gradient weighted.
    let vertex = super::feature::hint(gpu, s, t)?;
    plan.extend(vertex.dispatches);
    let (d, grad_logits) = super::elementwise::scale_plan(gpu, &vertex.grads[0], w_vert)?;
    plan.push(d);
    // Edges: the feature's and both maps' distance graphs, slots 0–2.
    let we = w_edge / 3.0;
    let grad_feat = irg_edge_term(gpu, &mut plan, s_feat, t_feat, &stats, 0, we)?;
    let edge_fm1 = irg_edge_term(gpu, &mut plan, s_fm1, t_fm1, &stats, 1, we)?;
    let edge_fm2 = irg_edge_term(gpu, &mut plan, s_fm2, t_fm2, &stats, 2, we)?;
    // Transformation, slot 3: per side the squared distance between the maps per sample.
    let transform = |plan: &mut Vec<Dispatch>,
                     fm1: &Tensor,
                     fm2: &Tensor,
                     a: [usize; 4],
                     c: [usize; 4]|
     -> Result<(Tensor, Tensor, IrgParams)> {
        let pooled = if a[2] > c[2] {
            let (d, y) = super::pool::adaptive_avg_pool_forward(gpu, fm1, [c[2], c[3]])?;
            plan.push(d);
            y
        } else {
            fm1.clone()
        };
        let plane = c[2] * c[3];
        let p = IrgParams {
            channels: u32_of(op, "channels", a[1])?,
            plane: u32_of(op, "H·W", plane)?,
            halved: u32::from(c[1] > a[1]),
            batch: b as u32,
            ..Default::default()
        };
        let len = b * a[1] * plane;
        let (diff, sq) = (
            gpu.empty(&[b, a[1], c[2], c[3]], DType::F32)?,
            gpu.empty(&[b, a[1] * plane], DType::F32)?,
        );
        plan.push(gpu.dispatch_over(&IRG_TRANSFORM, &p, &[&pooled, fm2, &diff, &sq], len)?);
        let (d, per_sample) = reduce::reduce_axis(gpu, &sq, 1, reduce::AxisOp::Sum)?;
        plan.push(d);
        Ok((per_sample, diff, p))
    };
    let (ts, diff, tp) = transform(&mut plan, s_fm1, s_fm2, sa, sb)?;
    let (tt, _, _) = transform(&mut plan, t_fm1, t_fm2, ta, tb)?;
    let p = IrgParams {
        n: b as u32,
        scale: w_tran / b as f32,
        slot: 3,
        ..tp
    };
    plan.push(gpu.dispatch(&IRG_COMPARE, &p, &[&ts, &tt, &stats], 1)?);
    let dt = gpu.empty(&[b], DType::F32)?;
    plan.push(gpu.dispatch_over(&IRG_COMPARE_GRAD, &p, &[&ts, &tt, &stats, &dt], b)?);
    let dp = gpu.empty(diff.shape(), DType::F32)?;
    let dfm2 = gpu.empty(s_fm2.shape(), DType::F32)?;
    let tensors = [&diff, &dt, &dp, &dfm2];
    plan.push(gpu.dispatch_over(
        &IRG_TRANSFORM_GRAD,
        &p,
        &tensors,
        s_fm2.numel().max(dp.numel()),
    )?);
    let dfm1 = if sa[2] > sb[2] {
        let (d, dx) = super::pool::adaptive_avg_pool_backward(gpu, s_fm1, &dp)?;
        plan.push(d);
        dx
    } else {
        dp
    };
    let (d, grad_fm1) = super::elementwise::add_plan(gpu, &edge_fm1, &dfm1)?;
    plan.push(d);
    let (d, grad_fm2) = super::elementwise::add_plan(gpu, &edge_fm2, &dfm2)?;
    plan.push(d);
    let loss = gpu.empty(&[1], DType::F32)?;
    let p = IrgParams {
        scale: w_vert,
        ..Default::default()
    };
    plan.push(gpu.dispatch(&IRG_TOTAL, &p, &[&vertex.loss, &stats, &loss], 1)?);
    Ok(LossPlan {
        dispatches: plan,
        loss,
        grads: vec![grad_logits, grad_feat, grad_fm1, grad_fm2],
        updated: Vec::new(),
        grad_scale: None,
    })
}

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

/// The parameters of row normalisation of `x` viewed as (B, D), ε in `gamma`.
fn norm_params(op: &str, x: &Tensor, eps: f32) -> Result<(Params, [usize; 2])> {
    let b = x.shape().first().copied().unwrap_or(0);
    let d = x.numel() / b.max(1);
    if x.dtype() != DType::F32 || b == 0 || d == 0 || eps.is_nan() || eps < 0.0 {
        return Err(shape_error(
            op,
            format!(
                "needs f32 (B, D) rows and ε ≥ 0, got {}{:?} and {eps}",
                x.dtype().name(),
                x.shape()
            ),
        ));
    }
    let p = Params {
        gamma: eps,
        ..rparams(op, b, d)?
    };
    Ok((p, [b, d]))
}

/// Prepares `x̂ = x / (‖x‖ + ε)` per row of `x` viewed as (B, D); returns x̂ (B, D) and the norms
/// (B) its backward pass reads.
pub fn normalize_rows(gpu: &Gpu, x: &Tensor, eps: f32) -> Result<(Dispatch, Tensor, Tensor)> {
    let (p, [b, d]) = norm_params("normalize_rows", x, eps)?;
    gpu.check_loops(&NORMALIZE_ROWS, 2 * d as u64)?;
    let (y, norms) = (
        gpu.empty(&[b, d], DType::F32)?,
        gpu.empty(&[b], DType::F32)?,
    );
    let dispatch = gpu.dispatch_over(&NORMALIZE_ROWS, &p, &[x, &y, &norms], b)?;
    Ok((dispatch, y, norms))
}

/// Prepares the backward pass of [`normalize_rows`]: `dx` (shaped like `x`) from `dy` (B, D).
pub fn normalize_rows_backward(
    gpu: &Gpu,
    x: &Tensor,
    norms: &Tensor,
    dy: &Tensor,
    eps: f32,
) -> Result<(Dispatch, Tensor)> {
    let op = "normalize_rows_backward";
    let (p, [b, d]) = norm_params(op, x, eps)?;
    norms.expect(op, "norms", DType::F32, &[b])?;
    if dy.numel() != b * d {
        return Err(shape_error(
            op,
            format!("dy must hold {b}×{d}, got {:?}", dy.shape()),
        ));
    }
    gpu.check_loops(&NORMALIZE_ROWS_BACKWARD, 2 * d as u64)?;
    let dx = gpu.empty(x.shape(), DType::F32)?;
    let dispatch = gpu.dispatch_over(&NORMALIZE_ROWS_BACKWARD, &p, &[x, norms, dy, &dx], b)?;
    Ok((dispatch, dx))
}

/// PKT's ε (in the normalisation and the divergence).
const PKT_EPS: f32 = 1e-7;

/// PKT: divergence between row-normalised cosine-similarity distributions.
pub fn pkt(gpu: &Gpu, student: &Tensor, teacher: &Tensor) -> Result<LossPlan> {
    let op = "pkt";
    let (b, ds, dt) = relation_inputs(op, student, teacher)?;
    let mut plan = Vec::new();
    gpu.check_loops(&PKT_ROWS, 3 * b as u64)?;
    let (d, xs, ns) = normalize_rows(gpu, student, PKT_EPS)?;
    plan.push(d);
    let (d, xt, _) = normalize_rows(gpu, teacher, PKT_EPS)?;
    plan.push(d);
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
    let (d, grad) = normalize_rows_backward(gpu, student, &ns, &dxh, PKT_EPS)?;
    plan.push(d);
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

/// One IRG case: (B, K), (feature widths), each side's fm1 and fm2 shapes.
struct IrgShape {
    batch: usize,
    classes: usize,
    feat: [usize; 2],
    student: [[usize; 3]; 2],
    teacher: [[usize; 3]; 2],
}

fn irg_cases(suite: Suite) -> Vec<LossCase> {
    let shape = |batch, classes, feat, student, teacher| IrgShape {
        batch,
        classes,
        feat,
        student,
        teacher,
    };
    let shapes = match suite {
        Suite::Check => vec![
            // Overlapping pooling windows (7 → 4) with halved channels; equal maps on the
            // teacher's side.
            shape(3, 4, [5, 6], [[2, 7, 7], [4, 4, 4]], [[3, 5, 6], [3, 5, 6]]),
            // The golden cases' patterns at other sizes.
            shape(
                5,
                7,
                [12, 9],
                [[6, 4, 4], [6, 4, 4]],
                [[3, 4, 4], [6, 2, 2]],
            ),
            shape(
                6,
                10,
                [16, 24],
                [[4, 8, 8], [8, 4, 4]],
                [[8, 8, 8], [16, 4, 4]],
            ),
            shape(2, 1, [1, 1], [[1, 1, 1], [1, 1, 1]], [[1, 2, 3], [2, 1, 2]]),
        ],
        Suite::Bench { .. } => {
            let b = suite.pick(64, 128);
            vec![shape(
                b,
                10,
                [128, 256],
                [[16, 14, 14], [32, 7, 7]],
                [[32, 14, 14], [64, 7, 7]],
            )]
        }
    };
    shapes
        .into_iter()
        .map(|c| {
            let b = c.batch;
            let t = |shape: Vec<usize>, seed| {
                let n = shape.iter().product();
                HostTensor::f32(&shape, sample(n, seed))
            };
            let map = |[ch, h, w]: [usize; 3], seed| t(vec![b, ch, h, w], seed);
            let inputs = vec![
                t(vec![b, c.classes], 40),
                t(vec![b, c.feat[0]], 41),
                map(c.student[0], 42),
                map(c.student[1], 43),
                t(vec![b, c.classes], 44),
                t(vec![b, c.feat[1]], 45),
                map(c.teacher[0], 46),
                map(c.teacher[1], 47),
            ];
            let label = format!(
                "B {b}, K {}, feat {}|{}, maps {:?}→{:?}|{:?}→{:?}",
                c.classes,
                c.feat[0],
                c.feat[1],
                c.student[0],
                c.student[1],
                c.teacher[0],
                c.teacher[1]
            );
            LossCase::new(label, inputs).tolerance(1e-3, 1e-5)
        })
        .collect()
}
