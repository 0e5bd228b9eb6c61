//! Distillation losses on the GPU: response-based (`ce`, `kd`, `dkd`: `shaders/response.wgsl`),
//! feature-based (`hint`, `at`: `shaders/feature.wgsl`) and relation-based (`sp`,
//! `rkd_distance`, `rkd_angle`, `pkt`: `shaders/relation.wgsl`), defined as in `KD_SPEC.md`.
//!
//! Each function checks its inputs and returns a [`LossPlan`]: the launches that compute the loss
//! (shape `[1]`) and the gradient with respect to the student, ready to run now or to be recorded
//! into a compiled step.

use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::kernels::matmul::{MatmulOptions, matmul};
use crate::kernels::reduce;
use crate::{Error, Result};

use Binding::{Output as W, ReadOnly as R, ReadWrite as RW, Uniform as U};

/// A loss ready to run: its launches and the tensors they write.
pub struct LossPlan {
    /// The launches, in order.
    pub dispatches: Vec<Dispatch>,
    /// The loss, shape `[1]`.
    pub loss: Tensor,
    /// `dL/d student`, the student's shape.
    pub grad: Tensor,
}

impl LossPlan {
    /// Runs the launches in one submission and returns `(loss, grad)`.
    pub fn run(self, gpu: &Gpu) -> Result<(Tensor, Tensor)> {
        gpu.execute(&self.dispatches)?;
        Ok((self.loss, self.grad))
    }
}

/// Cross-entropy from logits.
pub const CE: KernelSpec = KernelSpec {
    family: "response",
    entry: "ce",
    bindings: &[U, R, R, W, W],
};
/// Hinton KD.
pub const KD: KernelSpec = KernelSpec {
    family: "response",
    entry: "kd",
    bindings: &[U, R, R, W, W],
};
/// Decoupled KD.
pub const DKD: KernelSpec = KernelSpec {
    family: "response",
    entry: "dkd",
    bindings: &[U, R, R, R, W, W],
};
/// FitNet hint.
pub const HINT: KernelSpec = KernelSpec {
    family: "feature",
    entry: "hint",
    bindings: &[U, R, R, W, W],
};
/// Attention maps.
pub const AT_MAPS: KernelSpec = KernelSpec {
    family: "feature",
    entry: "at_maps",
    bindings: &[U, R, R, W, W],
};
/// Attention-map norms and loss per sample.
pub const AT_ROWS: KernelSpec = KernelSpec {
    family: "feature",
    entry: "at_rows",
    bindings: &[U, R, R, W, W],
};
/// Attention-transfer gradient.
pub const AT_GRAD: KernelSpec = KernelSpec {
    family: "feature",
    entry: "at_grad",
    bindings: &[U, R, R, R, R, W],
};
/// Column centring.
pub const CENTER: KernelSpec = KernelSpec {
    family: "relation",
    entry: "center",
    bindings: &[U, R, W],
};
/// `C + Cᵀ`.
pub const SYMMETRIZE: KernelSpec = KernelSpec {
    family: "relation",
    entry: "symmetrize",
    bindings: &[U, R, W],
};
/// SP per row.
pub const SP_ROWS: KernelSpec = KernelSpec {
    family: "relation",
    entry: "sp_rows",
    bindings: &[U, R, R, W, W],
};
/// RKD distance, per row: the sums behind the mean distances.
pub const RKD_DISTANCE_ROWS: KernelSpec = KernelSpec {
    family: "relation",
    entry: "rkd_distance_rows",
    bindings: &[U, R, R, W],
};
/// RKD distance: the mean distances from the rows' sums.
pub const RKD_DISTANCE_MEANS: KernelSpec = KernelSpec {
    family: "relation",
    entry: "rkd_distance_means",
    bindings: &[U, R, W],
};
/// RKD distance, per row: the loss and the gradient's mean term.
pub const RKD_DISTANCE_ROW_LOSS: KernelSpec = KernelSpec {
    family: "relation",
    entry: "rkd_distance_row_loss",
    bindings: &[U, R, R, R, W],
};
/// RKD distance: the loss and the gradient's mean term from the rows'.
pub const RKD_DISTANCE_FINISH: KernelSpec = KernelSpec {
    family: "relation",
    entry: "rkd_distance_finish",
    bindings: &[U, R, RW, W],
};
/// RKD distance gradient coefficients.
pub const RKD_DISTANCE_COEF: KernelSpec = KernelSpec {
    family: "relation",
    entry: "rkd_distance_coef",
    bindings: &[U, R, R, R, W],
};
/// RKD angle per pair.
pub const RKD_ANGLE_PAIRS: KernelSpec = KernelSpec {
    family: "relation",
    entry: "rkd_angle_pairs",
    bindings: &[U, R, R, W, W, W],
};
/// RKD angle gradient coefficients.
pub const RKD_ANGLE_COEF: KernelSpec = KernelSpec {
    family: "relation",
    entry: "rkd_angle_coef",
    bindings: &[U, R, R, R, R, W],
};
/// Row normalisation (PKT).
pub const NORMALIZE_ROWS: KernelSpec = KernelSpec {
    family: "relation",
    entry: "normalize_rows",
    bindings: &[U, R, W, W],
};
/// PKT per row.
pub const PKT_ROWS: KernelSpec = KernelSpec {
    family: "relation",
    entry: "pkt_rows",
    bindings: &[U, R, R, W, W],
};
/// Backward of row normalisation.
pub const NORMALIZE_ROWS_BACKWARD: KernelSpec = KernelSpec {
    family: "relation",
    entry: "normalize_rows_backward",
    bindings: &[U, R, R, R, W],
};

/// Every loss kernel.
pub const KERNELS: &[KernelSpec] = &[
    CE,
    KD,
    DKD,
    HINT,
    AT_MAPS,
    AT_ROWS,
    AT_GRAD,
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

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ResponseParams {
    rows: u32,
    cols: u32,
    temperature: f32,
    alpha: f32,
    beta: f32,
    grad_scale: f32,
    pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FeatureParams {
    batch: u32,
    n: u32,
    teacher_channels: u32,
    hw: u32,
    p: f32,
    grad_scale: f32,
    pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RelationParams {
    batch: u32,
    dim: u32,
    pad: [u32; 2],
}

const RESPONSE_WG: u64 = 64;
const FEATURE_WG: u64 = 256;
const RELATION_WG: u64 = 64;

fn groups(n: usize, wg: u64) -> u64 {
    (n as u64).div_ceil(wg).max(1)
}

fn u32_of(op: &str, what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| shape_error(op, format!("{what} = {n} exceeds u32 indexing")))
}

fn check_temperature(op: &str, temperature: f32) -> Result<()> {
    if temperature.is_finite() && temperature > 0.0 {
        Ok(())
    } else {
        Err(Error::Input {
            what: format!("{op}: temperature"),
            message: format!("must be a finite number > 0, got {temperature}"),
        })
    }
}

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

fn check_labels(op: &str, labels: &Tensor, batch: usize) -> Result<()> {
    labels.expect(op, "labels", DType::I32, &[batch])
}

fn response(
    gpu: &Gpu,
    spec: &KernelSpec,
    student: &Tensor,
    inputs: &[&Tensor],
    params: ResponseParams,
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
    let mut dispatches = vec![gpu.dispatch(spec, &params, &bound, groups(rows, RESPONSE_WG))?];
    reduce::sum_into(gpu, &mut dispatches, &row_loss, &loss, loss_scale)?;
    Ok(LossPlan {
        dispatches,
        loss,
        grad,
    })
}

/// Cross-entropy: `−(1/B) Σ log_softmax(s)[y]`. `labels` is i32 `[B]` with values in `0..C`
/// (callers holding host labels check the range; a bad label makes the loss NaN).
pub fn ce(gpu: &Gpu, student: &Tensor, labels: &Tensor) -> Result<LossPlan> {
    let (b, c) = logits_shape("ce", "student", student, 1)?;
    check_labels("ce", labels, b)?;
    let params = ResponseParams {
        rows: u32_of("ce", "batch", b)?,
        cols: u32_of("ce", "classes", c)?,
        temperature: 1.0,
        alpha: 0.0,
        beta: 0.0,
        grad_scale: 1.0 / b as f32,
        pad: [0; 2],
    };
    response(gpu, &CE, student, &[labels], params, 1.0 / b as f32)
}

/// Hinton KD: `T²/B Σ KL(softmax(t/T) ‖ softmax(s/T))`.
pub fn kd(gpu: &Gpu, student: &Tensor, teacher: &Tensor, temperature: f32) -> Result<LossPlan> {
    check_temperature("kd", temperature)?;
    let (b, c) = logits_shape("kd", "student", student, 1)?;
    teacher.expect("kd", "teacher", DType::F32, student.shape())?;
    let params = ResponseParams {
        rows: u32_of("kd", "batch", b)?,
        cols: u32_of("kd", "classes", c)?,
        temperature,
        alpha: 0.0,
        beta: 0.0,
        grad_scale: temperature / b as f32,
        pad: [0; 2],
    };
    response(
        gpu,
        &KD,
        student,
        &[teacher],
        params,
        temperature * temperature / b as f32,
    )
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
    check_temperature("dkd", temperature)?;
    let (b, c) = logits_shape("dkd", "student", student, 2)?;
    teacher.expect("dkd", "teacher", DType::F32, student.shape())?;
    check_labels("dkd", labels, b)?;
    let params = ResponseParams {
        rows: u32_of("dkd", "batch", b)?,
        cols: u32_of("dkd", "classes", c)?,
        temperature,
        alpha,
        beta,
        grad_scale: temperature / b as f32,
        pad: [0; 2],
    };
    response(
        gpu,
        &DKD,
        student,
        &[teacher, labels],
        params,
        temperature * temperature / b as f32,
    )
}

/// FitNet hint: `mean((s − t)²)`; `s` is the regressor's output, shaped like `t`.
pub fn hint(gpu: &Gpu, student: &Tensor, teacher: &Tensor) -> Result<LossPlan> {
    student.expect("hint", "student", DType::F32, student.shape())?;
    teacher.expect("hint", "teacher", DType::F32, student.shape())?;
    let n = student.numel();
    if n == 0 {
        return Err(shape_error("hint", "student is empty"));
    }
    let grad = gpu.empty(student.shape(), DType::F32)?;
    let partial = gpu.empty(&[n], DType::F32)?;
    let loss = gpu.empty(&[1], DType::F32)?;
    let params = FeatureParams {
        batch: 1,
        n: u32_of("hint", "elements", n)?,
        teacher_channels: 0,
        hw: 0,
        p: 0.0,
        grad_scale: 2.0 / n as f32,
        pad: [0; 2],
    };
    let mut dispatches = vec![gpu.dispatch(
        &HINT,
        &params,
        &[student, teacher, &grad, &partial],
        groups(n, FEATURE_WG),
    )?];
    reduce::sum_into(gpu, &mut dispatches, &partial, &loss, 1.0 / n as f32)?;
    Ok(LossPlan {
        dispatches,
        loss,
        grad,
    })
}

/// Attention transfer: `mean((a(s) − a(t))²)` with `a(f) = normalize(mean_c f^p)`. Student
/// `(B, Cs, H, W)` and teacher `(B, Ct, H, W)` may differ in channels only.
pub fn at(gpu: &Gpu, student: &Tensor, teacher: &Tensor, p: f32) -> Result<LossPlan> {
    let four = |what: &str, t: &Tensor| -> Result<[usize; 4]> {
        match (t.dtype(), t.shape()) {
            (DType::F32, &[b, c, h, w]) if b * c * h * w > 0 => Ok([b, c, h, w]),
            _ => Err(shape_error(
                "at",
                format!(
                    "{what} must be a non-empty f32 (B, C, H, W) map, got {}{:?}",
                    t.dtype().name(),
                    t.shape()
                ),
            )),
        }
    };
    let [b, cs, h, w] = four("student", student)?;
    let [bt, ct, ht, wt] = four("teacher", teacher)?;
    if (b, h, w) != (bt, ht, wt) {
        return Err(shape_error(
            "at",
            format!(
                "student {:?} and teacher {:?} must agree in batch and spatial size",
                student.shape(),
                teacher.shape()
            ),
        ));
    }
    if !p.is_finite() || p <= 0.0 {
        return Err(Error::Input {
            what: "at: p".into(),
            message: format!("must be a finite number > 0, got {p}"),
        });
    }
    let hw = h * w;
    let params = FeatureParams {
        batch: u32_of("at", "batch", b)?,
        n: u32_of("at", "channels", cs)?,
        teacher_channels: u32_of("at", "channels", ct)?,
        hw: u32_of("at", "H·W", hw)?,
        p,
        grad_scale: 2.0 / (b * hw) as f32,
        pad: [0; 2],
    };
    gpu.check_loops(&AT_MAPS, (cs + ct) as u64)?;
    gpu.check_loops(&AT_ROWS, 2 * hw as u64)?;
    let ms = gpu.empty(&[b, hw], DType::F32)?;
    let mt = gpu.empty(&[b, hw], DType::F32)?;
    let stats = gpu.empty(&[b, 4], DType::F32)?;
    let row_loss = gpu.empty(&[b], DType::F32)?;
    let grad = gpu.empty(student.shape(), DType::F32)?;
    let loss = gpu.empty(&[1], DType::F32)?;
    let mut dispatches = vec![
        gpu.dispatch(
            &AT_MAPS,
            &params,
            &[student, teacher, &ms, &mt],
            groups(b * hw, FEATURE_WG),
        )?,
        gpu.dispatch(
            &AT_ROWS,
            &params,
            &[&ms, &mt, &stats, &row_loss],
            groups(b, FEATURE_WG),
        )?,
        gpu.dispatch(
            &AT_GRAD,
            &params,
            &[student, &ms, &mt, &stats, &grad],
            groups(student.numel(), FEATURE_WG),
        )?,
    ];
    reduce::sum_into(
        gpu,
        &mut dispatches,
        &row_loss,
        &loss,
        1.0 / (b * hw) as f32,
    )?;
    Ok(LossPlan {
        dispatches,
        loss,
        grad,
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

fn rparams(op: &str, batch: usize, dim: usize) -> Result<RelationParams> {
    Ok(RelationParams {
        batch: u32_of(op, "batch", batch)?,
        dim: u32_of(op, "features", dim)?,
        pad: [0; 2],
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
    plan.push(gpu.dispatch(
        &CENTER,
        &rparams(op, b, d)?,
        &[f, &c],
        groups(d, RELATION_WG),
    )?);
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
        plan.push(gpu.dispatch(
            &SYMMETRIZE,
            &rparams(op, b, d)?,
            &[coef, &sym],
            groups(b * b, RELATION_WG),
        )?);
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
    plan.push(gpu.dispatch(
        &SP_ROWS,
        &rparams(op, b, 0)?,
        &[&gs, &gt, &dg, &row_loss],
        groups(b, RELATION_WG),
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
    Ok(LossPlan {
        dispatches: plan,
        loss,
        grad,
    })
}

/// RKD distance: smooth-L1 between mean-normalised pairwise distance matrices.
pub fn rkd_distance(gpu: &Gpu, student: &Tensor, teacher: &Tensor) -> Result<LossPlan> {
    let op = "rkd_distance";
    let (b, ds, dt) = relation_inputs(op, student, teacher)?;
    let mut plan = Vec::new();
    let es = centered(gpu, &mut plan, op, student, b, ds)?;
    let et = centered(gpu, &mut plan, op, teacher, b, dt)?;
    let gs = gram(gpu, &mut plan, &es, b, ds)?;
    let gt = gram(gpu, &mut plan, &et, b, dt)?;
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
    let rows = groups(b, RELATION_WG);
    plan.extend([
        gpu.dispatch(&RKD_DISTANCE_ROWS, &p, &[&gs, &gt, &row_sums], rows)?,
        gpu.dispatch(&RKD_DISTANCE_MEANS, &p, &[&row_sums, &stats], 1)?,
        gpu.dispatch(
            &RKD_DISTANCE_ROW_LOSS,
            &p,
            &[&gs, &gt, &stats, &row_loss],
            rows,
        )?,
        gpu.dispatch(&RKD_DISTANCE_FINISH, &p, &[&row_loss, &stats, &loss], 1)?,
    ]);
    let coef = gpu.empty(&[b, b], DType::F32)?;
    plan.push(gpu.dispatch(
        &RKD_DISTANCE_COEF,
        &rparams(op, b, 0)?,
        &[&gs, &gt, &stats, &coef],
        groups(b, RELATION_WG),
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
    Ok(LossPlan {
        dispatches: plan,
        loss,
        grad,
    })
}

/// RKD angle: smooth-L1 between the angle tensors `A_ijk = u_ij · u_ik`, computed from Gram
/// matrices in O(B³ + B²D) without a B×B×D tensor.
pub fn rkd_angle(gpu: &Gpu, student: &Tensor, teacher: &Tensor) -> Result<LossPlan> {
    let op = "rkd_angle";
    let (b, ds, dt) = relation_inputs(op, student, teacher)?;
    let mut plan = Vec::new();
    let es = centered(gpu, &mut plan, op, student, b, ds)?;
    let et = centered(gpu, &mut plan, op, teacher, b, dt)?;
    let gs = gram(gpu, &mut plan, &es, b, ds)?;
    let gt = gram(gpu, &mut plan, &et, b, dt)?;
    let r = gpu.empty(&[b, b], DType::F32)?;
    let bcoef = gpu.empty(&[b, b], DType::F32)?;
    let pair_loss = gpu.empty(&[b, b], DType::F32)?;
    let p = rparams(op, b, 0)?;
    gpu.check_loops(&RKD_ANGLE_PAIRS, b as u64)?;
    gpu.check_loops(&RKD_ANGLE_COEF, 2 * b as u64)?;
    plan.push(gpu.dispatch(
        &RKD_ANGLE_PAIRS,
        &p,
        &[&gs, &gt, &r, &bcoef, &pair_loss],
        groups(b * b, RELATION_WG),
    )?);
    let coef = gpu.empty(&[b, b], DType::F32)?;
    plan.push(gpu.dispatch(
        &RKD_ANGLE_COEF,
        &p,
        &[&gs, &gt, &r, &bcoef, &coef],
        groups(b * b, RELATION_WG),
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
    let loss = gpu.empty(&[1], DType::F32)?;
    reduce::sum_into(gpu, &mut plan, &pair_loss, &loss, 1.0 / (b * b * b) as f32)?;
    Ok(LossPlan {
        dispatches: plan,
        loss,
        grad,
    })
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
    plan.push(gpu.dispatch(
        &NORMALIZE_ROWS,
        &rparams(op, b, ds)?,
        &[student, &xs, &ns],
        groups(b, RELATION_WG),
    )?);
    plan.push(gpu.dispatch(
        &NORMALIZE_ROWS,
        &rparams(op, b, dt)?,
        &[teacher, &xt, &nt],
        groups(b, RELATION_WG),
    )?);
    let ks = gram(gpu, &mut plan, &xs, b, ds)?;
    let kt = gram(gpu, &mut plan, &xt, b, dt)?;
    let dk = gpu.empty(&[b, b], DType::F32)?;
    let row_loss = gpu.empty(&[b], DType::F32)?;
    plan.push(gpu.dispatch(
        &PKT_ROWS,
        &rparams(op, b, 0)?,
        &[&ks, &kt, &dk, &row_loss],
        groups(b, RELATION_WG),
    )?);
    let dxh = coef_times(gpu, &mut plan, op, &dk, &xs, b, ds, true, &[b, ds])?;
    let grad = gpu.empty(student.shape(), DType::F32)?;
    plan.push(gpu.dispatch(
        &NORMALIZE_ROWS_BACKWARD,
        &rparams(op, b, ds)?,
        &[student, &ns, &dxh, &grad],
        groups(b, RELATION_WG),
    )?);
    let loss = gpu.empty(&[1], DType::F32)?;
    reduce::sum_into(gpu, &mut plan, &row_loss, &loss, 1.0 / (b * b) as f32)?;
    Ok(LossPlan {
        dispatches: plan,
        loss,
        grad,
    })
}
