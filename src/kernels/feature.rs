//! Feature-based losses (`shaders/feature.wgsl`): the FitNet hint (elementwise MSE) and attention
//! transfer. Each writes the gradient and per-element or per-sample loss partials, then a
//! deterministic sum. Definitions in `docs/losses.md`.

use crate::catalogue::{Suite, Work};
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Gpu, KernelSpec, Tensor};
use crate::io::HostTensor;
use crate::reference::feature as cpu;
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
    n: u32,
    teacher_channels: u32,
    hw: u32,
    p: f32,
    grad_scale: f32,
    q: f32,
    offset: u32,
}

/// FitNet hint: squared differences and the gradient.
pub const HINT_TERMS: KernelSpec = KernelSpec::new::<Params>("feature", "hint", &[U, R, R, W, W]);
/// Attention maps of both sides.
pub const AT_MAPS: KernelSpec = KernelSpec::new::<Params>("feature", "at_maps", &[U, R, R, W, W]);
/// Attention-map norms and loss per sample.
pub const AT_ROWS: KernelSpec = KernelSpec::new::<Params>("feature", "at_rows", &[U, R, R, W, W]);
/// Attention-transfer gradient.
pub const AT_GRAD: KernelSpec =
    KernelSpec::new::<Params>("feature", "at_grad", &[U, R, R, R, R, W]);

/// Activation boundaries: terms and the gradient per element.
pub const AB_TERMS: KernelSpec = KernelSpec::new::<Params>("feature", "ab", &[U, R, R, W, W]);
/// Rows normalised as `F.normalize` does (NST).
pub const NORMALIZE_ROWS: KernelSpec =
    KernelSpec::new::<Params>("feature", "normalize_rows", &[U, R, W, W]);
/// Per-sample Gram entries of row pairs and their weighted squares (NST).
pub const ROW_GRAMS: KernelSpec =
    KernelSpec::new::<Params>("feature", "row_grams", &[U, R, R, W, RW]);
/// NST's gradient with respect to the normalised student rows.
pub const NST_GRAD: KernelSpec =
    KernelSpec::new::<Params>("feature", "nst_grad", &[U, R, R, R, R, W]);
/// The normalisation's backward pass (NST).
pub const NORMALIZE_ROWS_BACKWARD: KernelSpec =
    KernelSpec::new::<Params>("feature", "normalize_rows_backward", &[U, R, R, R, W]);

/// FSP: the flow matrices' differences, squared terms and gradient.
pub const FSP_DIFF: KernelSpec = KernelSpec::new::<Params>("feature", "fsp_diff", &[U, R, R, W, W]);
/// Per-sample mixing of rows by a (possibly transposed) matrix (FSP's gradients).
pub const ROW_MIX: KernelSpec = KernelSpec::new::<Params>("feature", "row_mix", &[U, R, R, W]);

/// Total variation: each element's four neighbour differences raised to p, one array each.
pub const TV_TERMS: KernelSpec =
    KernelSpec::new::<Params>("feature", "tv_terms", &[U, R, W, W, W, W]);
/// Total variation: the loss and a coefficient per direction from the four sums.
pub const TV_FINISH: KernelSpec =
    KernelSpec::new::<Params>("feature", "tv_finish", &[U, R, R, R, R, W, W]);
/// Total variation's gradient.
pub const TV_GRAD: KernelSpec = KernelSpec::new::<Params>("feature", "tv_grad", &[U, R, R, W]);

/// VID: terms, the mean's gradient and each element's share of the variance's gradient.
pub const VID_TERMS: KernelSpec =
    KernelSpec::new::<Params>("feature", "vid", &[U, R, R, R, W, W, W]);

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[
    TV_TERMS,
    TV_FINISH,
    TV_GRAD,
    VID_TERMS,
    FSP_DIFF,
    ROW_MIX,
    HINT_TERMS,
    AT_MAPS,
    AT_ROWS,
    AT_GRAD,
    AB_TERMS,
    NORMALIZE_ROWS,
    ROW_GRAMS,
    NST_GRAD,
    NORMALIZE_ROWS_BACKWARD,
];

/// `hint`: FitNet's hint between a regressed student tap and the teacher's.
pub const HINT: LossDef = LossDef {
    name: "hint",
    summary: "FitNet hint: mean((s − t)²)",
    reads: Reads::Features,
    inputs: &[STUDENT, TEACHER],
    attrs: &[],
    launch: |gpu, _, x| hint(gpu, x[0], x[1]),
    reference: |_, x| cpu::hint(&x[0].values, &x[1].values).into(),
    cases: hint_cases,
    parameters: None,
    memory: None,
};

/// `at`: attention transfer between feature maps.
pub const AT: LossDef = LossDef {
    name: "at",
    summary: "attention transfer between (B, C, H, W) maps",
    reads: Reads::Features,
    inputs: &[STUDENT, TEACHER],
    attrs: &[AttrDef {
        name: "p",
        default: 2.0,
        range: Range::positive(16.0),
        doc: "exponent of the channel mean mean_c(f^p)",
    }],
    launch: |gpu, l, x| at(gpu, x[0], x[1], l.attr_f32("p")),
    reference: |l, x| {
        let (s, t) = (&x[0], &x[1]);
        let hw = s.shape[2..].iter().product();
        let (b, cs, ct) = (s.shape[0], s.shape[1], t.shape[1]);
        cpu::at(&s.values, &t.values, b, cs, ct, hw, l.attr("p")).into()
    },
    cases: at_cases,
    parameters: None,
    memory: None,
};

/// `ft`: factor transfer between a translated student map and the teacher's factor.
pub const FT: LossDef = LossDef {
    name: "ft",
    summary: "factor transfer: mean |f(s) − f(t)| (p2 = 1) or mean (f(s) − f(t))² (p2 = 2)",
    reads: Reads::Features,
    inputs: &[STUDENT, TEACHER],
    attrs: &[
        AttrDef {
            name: "p1",
            default: 2.0,
            range: Range::positive(16.0),
            doc: "exponent of the channel mean mean_c(x^p1)",
        },
        AttrDef {
            name: "p2",
            default: 1.0,
            range: Range {
                min: 1.0,
                min_inclusive: true,
                max: 2.0,
                whole: true,
            },
            doc: "the distance: 1 for L1, 2 for squared",
        },
    ],
    launch: |gpu, l, x| ft(gpu, x[0], x[1], l.attr_f32("p1"), l.attr_f32("p2")),
    reference: |l, x| {
        let (s, t) = (&x[0], &x[1]);
        let hw = s.shape[2..].iter().product();
        let (b, cs, ct) = (s.shape[0], s.shape[1], t.shape[1]);
        cpu::ft(
            &s.values,
            &t.values,
            b,
            cs,
            ct,
            hw,
            l.attr("p1"),
            l.attr("p2"),
        )
        .into()
    },
    cases: ft_cases,
    parameters: None,
    memory: None,
};

/// `ab`: activation boundaries of a connector's output against the teacher's pre-activations.
pub const AB: LossDef = LossDef {
    name: "ab",
    summary: "activation boundaries: 3/(1000·B) Σ squared margins on the wrong side",
    reads: Reads::Features,
    inputs: &[STUDENT, TEACHER],
    attrs: &[AttrDef {
        name: "margin",
        default: 1.0,
        range: Range::non_negative(1e4),
        doc: "the margin m around the activation boundary",
    }],
    launch: |gpu, l, x| ab(gpu, x[0], x[1], l.attr_f32("margin")),
    reference: |l, x| cpu::ab(&x[0].values, &x[1].values, x[0].shape[0], l.attr("margin")).into(),
    cases: ab_cases,
    parameters: None,
    memory: None,
};

/// `nst`: neuron selectivity transfer.
pub const NST: LossDef = LossDef {
    name: "nst",
    summary: "neuron selectivity transfer: polynomial-kernel MMD of channel-normalised maps",
    reads: Reads::Features,
    inputs: &[STUDENT, TEACHER],
    attrs: &[],
    launch: |gpu, _, x| nst(gpu, x[0], x[1]),
    reference: |_, x| {
        let (s, t) = (&x[0], &x[1]);
        let hw = s.shape[2..].iter().product();
        cpu::nst(&s.values, &t.values, s.shape[0], s.shape[1], t.shape[1], hw).into()
    },
    cases: nst_cases,
    parameters: None,
    memory: None,
};

/// `fsp`: flow of solution procedure between two taps on each side.
pub const FSP: LossDef = LossDef {
    name: "fsp",
    summary: "flow of solution procedure: mean((G(s_a, s_b) − G(t_a, t_b))²), G the taps' flow matrix",
    reads: Reads::Features,
    inputs: &[
        LossInput {
            name: "student_a",
            role: Role::Student,
        },
        LossInput {
            name: "student_b",
            role: Role::Student,
        },
        LossInput {
            name: "teacher_a",
            role: Role::Teacher,
        },
        LossInput {
            name: "teacher_b",
            role: Role::Teacher,
        },
    ],
    attrs: &[],
    launch: |gpu, _, x| fsp(gpu, x[0], x[1], x[2], x[3]),
    reference: |_, x| {
        let ([b, c1, hw_s], [c2, hw_t]) = (
            [
                x[0].shape[0],
                x[0].shape[1],
                x[0].shape[2..].iter().product(),
            ],
            [x[1].shape[1], x[2].shape[2..].iter().product()],
        );
        let v = |k: usize| x[k].values.as_slice();
        cpu::fsp(v(0), v(1), v(2), v(3), b, c1, c2, hw_s, hw_t)
    },
    cases: fsp_cases,
    parameters: None,
    memory: None,
};

/// `vid`: variational information distillation.
pub const VID: LossDef = LossDef {
    name: "vid",
    summary: "variational information: Gaussian NLL of the teacher map under the regressed mean and a learned per-channel variance",
    reads: Reads::Features,
    inputs: &[
        STUDENT,
        TEACHER,
        LossInput {
            name: "log_scale",
            role: Role::Parameter,
        },
    ],
    attrs: &[AttrDef {
        name: "eps",
        default: 1e-5,
        range: Range::positive(1.0),
        doc: "the variance's floor: v = softplus(log_scale) + eps",
    }],
    launch: |gpu, l, x| vid(gpu, x[0], x[1], x[2], l.attr_f32("eps")),
    reference: |l, x| {
        let [b, c] = [x[0].shape[0], x[0].shape[1]];
        let hw = x[0].shape[2..].iter().product();
        cpu::vid(
            &x[0].values,
            &x[1].values,
            &x[2].values,
            b,
            c,
            hw,
            l.attr("eps"),
        )
    },
    cases: vid_cases,
    // v starts at 5 in every channel (RepDistiller's init_pred_var).
    parameters: Some(|l, shapes| {
        let channels = shapes[1].get(1).copied().unwrap_or(1);
        let start = vid_log_scale_for(VID_INITIAL_VARIANCE, l.attr("eps")) as f32;
        vec![HostTensor::f32(&[channels], vec![start; channels])]
    }),
    memory: None,
};

/// VID's variance at the start of training (RepDistiller's `init_pred_var`).
pub const VID_INITIAL_VARIANCE: f64 = 5.0;

/// The `log_scale` that gives variance `v` with floor `eps`: softplus⁻¹(v − eps).
pub fn vid_log_scale_for(v: f64, eps: f64) -> f64 {
    (v - eps).exp_m1().ln()
}

/// The family's losses, in registry order.
pub const LOSSES: &[&LossDef] = &[
    &HINT, &AT, &FT, &AB, &NST, &FSP, &VID, &TV, &L2_NORM, &BN_MATCH,
];

/// `bn_match`: a batch's channel moments against a BatchNorm layer's running statistics.
pub const BN_MATCH: LossDef = LossDef {
    name: "bn_match",
    summary: "‖mean − running_mean‖₂ + ‖var − running_var‖₂ of (2, C) moments (DeepInversion)",
    reads: Reads::Features,
    inputs: &[
        STUDENT,
        LossInput {
            name: "running",
            role: Role::Target,
        },
    ],
    attrs: &[],
    launch: |gpu, _, x| bn_match(gpu, x[0], x[1]),
    reference: |_, x| cpu::bn_match(&x[0].values, &x[1].values).into(),
    cases: bn_match_cases,
    parameters: None,
    memory: None,
};

/// DeepInversion's feature-distribution term for one BatchNorm layer: `student` holds the
/// batch's channel moments `[mean; biased variance]` `(2, C)` (the `ChannelMoments` of the
/// layer's input), `running` the layer's `[running_mean; running_var]`; the loss is the sum of
/// the two rows' L2 distances, its gradient each row's difference over its norm (0 where equal).
pub fn bn_match(gpu: &Gpu, student: &Tensor, running: &Tensor) -> Result<LossPlan> {
    let c = match (student.dtype(), student.shape()) {
        (DType::F32, &[2, c]) if c > 0 => c,
        _ => {
            return Err(shape_error(
                "bn_match",
                format!(
                    "student must be f32 (2, C) moments, got {}{:?}",
                    student.dtype().name(),
                    student.shape()
                ),
            ));
        }
    };
    running.expect("bn_match", "running", DType::F32, &[2, c])?;
    let (neg, minus_t) = super::elementwise::scale_plan(gpu, running, -1.0)?;
    let (sub, diff) = super::elementwise::add_plan(gpu, student, &minus_t)?;
    // normalize_rows divides by the norm plus this: equal rows get a zero gradient.
    let (d, unit, norms) = super::relation::normalize_rows(gpu, &diff, 1e-12)?;
    let loss = gpu.empty(&[1], DType::F32)?;
    let mut dispatches = vec![neg, sub, d];
    reduce::sum_into(gpu, &mut dispatches, &norms, &loss, 1.0)?;
    Ok(LossPlan::single(dispatches, loss, unit))
}

/// `tv`: total variation of images, DeepInversion's smoothness prior.
pub const TV: LossDef = LossDef {
    name: "tv",
    summary: "total variation of (B, C, H, W) images over 4 neighbour differences (an image prior)",
    reads: Reads::Features,
    inputs: &[STUDENT],
    attrs: &[AttrDef {
        name: "p",
        default: 2.0,
        range: Range {
            min: 1.0,
            min_inclusive: true,
            max: 2.0,
            whole: true,
        },
        doc: "2: Σ of each difference's L2 norm over the batch; 1: Σ of their mean absolute values",
    }],
    launch: |gpu, l, x| tv(gpu, x[0], l.attr_f32("p")),
    reference: |l, x| {
        let s = &x[0].shape;
        cpu::tv(&x[0].values, [s[0] * s[1], s[2], s[3]], l.attr("p")).into()
    },
    cases: tv_cases,
    parameters: None,
    memory: None,
};

/// `l2_norm`: the mean over the batch of each sample's L2 norm, DeepInversion's size prior.
pub const L2_NORM: LossDef = LossDef {
    name: "l2_norm",
    summary: "mean over the batch of each sample's L2 norm (an image prior)",
    reads: Reads::Features,
    inputs: &[STUDENT],
    attrs: &[],
    launch: |gpu, _, x| l2_norm(gpu, x[0]),
    reference: |_, x| cpu::l2_norm(&x[0].values, x[0].shape[0]).into(),
    cases: l2_norm_cases,
    parameters: None,
    memory: None,
};

/// Total variation of `x` `(B, C, H, W)`, H and W at least 2, over DeepInversion's four
/// neighbour differences `D1 = x[h, w] − x[h, w+1]`, `D2 = x[h, w] − x[h+1, w]`,
/// `D3 = x[h+1, w] − x[h, w+1]`, `D4 = x[h, w] − x[h+1, w+1]`: with `p = 2`, `Σ_d ‖D_d‖₂` (each
/// norm over the whole batch); with `p = 1`, `Σ_d mean |D_d|`.
pub fn tv(gpu: &Gpu, x: &Tensor, p: f32) -> Result<LossPlan> {
    check_attr(&TV, "p", p)?;
    let [b, c, h, w] = match (x.dtype(), x.shape()) {
        (DType::F32, &[b, c, h, w]) if b * c > 0 && h >= 2 && w >= 2 => [b, c, h, w],
        _ => {
            return Err(shape_error(
                "tv",
                format!(
                    "student must be f32 (B, C, H, W) images with H, W ≥ 2, got {}{:?}",
                    x.dtype().name(),
                    x.shape()
                ),
            ));
        }
    };
    let n = x.numel();
    let params = Params {
        batch: u32_of("tv", "planes", b * c)?,
        n: u32_of("tv", "elements", n)?,
        teacher_channels: u32_of("tv", "width", w)?,
        hw: u32_of("tv", "H·W", h * w)?,
        p,
        grad_scale: 1.0,
        q: 0.0,
        offset: 0,
    };
    let partials = (0..4)
        .map(|_| gpu.empty(&[n], DType::F32))
        .collect::<Result<Vec<_>>>()?;
    let sums = (0..4)
        .map(|_| gpu.empty(&[1], DType::F32))
        .collect::<Result<Vec<_>>>()?;
    let loss = gpu.empty(&[1], DType::F32)?;
    let coef = gpu.empty(&[4], DType::F32)?;
    let grad = gpu.empty(x.shape(), DType::F32)?;
    let mut terms: Vec<&Tensor> = vec![x];
    terms.extend(&partials);
    let mut dispatches = vec![gpu.dispatch_over(&TV_TERMS, &params, &terms, n)?];
    for (partial, sum) in partials.iter().zip(&sums) {
        reduce::sum_into(gpu, &mut dispatches, partial, sum, 1.0)?;
    }
    let mut finish: Vec<&Tensor> = sums.iter().collect();
    finish.extend([&loss, &coef]);
    dispatches.push(gpu.dispatch(&TV_FINISH, &params, &finish, 1)?);
    dispatches.push(gpu.dispatch_over(&TV_GRAD, &params, &[x, &coef, &grad], n)?);
    Ok(LossPlan::single(dispatches, loss, grad))
}

/// `mean_b ‖x_b‖₂` over the samples of `x` (any shape, the first axis the batch), gradient
/// `x_b/(B·‖x_b‖)` (0 for a zero sample).
pub fn l2_norm(gpu: &Gpu, x: &Tensor) -> Result<LossPlan> {
    let b = match x.shape().first() {
        Some(&b) if b > 0 && x.numel() > 0 && x.dtype() == DType::F32 => b,
        _ => {
            return Err(shape_error(
                "l2_norm",
                format!("student must be a non-empty f32 batch, got {:?}", x.shape()),
            ));
        }
    };
    let rows = x.reshape(&[b, x.numel() / b])?;
    // normalize_rows divides by the norm plus this: a zero sample gets a zero gradient.
    let (d, unit, norms) = super::relation::normalize_rows(gpu, &rows, 1e-12)?;
    let loss = gpu.empty(&[1], DType::F32)?;
    let mut dispatches = vec![d];
    reduce::sum_into(gpu, &mut dispatches, &norms, &loss, 1.0 / b as f32)?;
    let (d, grad) = super::elementwise::scale_plan(gpu, &unit, 1.0 / b as f32)?;
    dispatches.push(d);
    Ok(LossPlan::single(dispatches, loss, grad.reshape(x.shape())?))
}

/// FitNet hint: `mean((s − t)²)`; `s` is the regressor's output, shaped like `t`.
pub fn hint(gpu: &Gpu, student: &Tensor, teacher: &Tensor) -> Result<LossPlan> {
    elementwise_distance(gpu, "hint", student, teacher, Distance::Squared)
}

/// How [`elementwise_distance`] compares two elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distance {
    /// `(s − t)²`.
    Squared,
    /// `|s − t|`.
    Absolute,
}

/// `mean(dist(s − t))` over all elements of two tensors of one shape, and its gradient: FitNet's
/// hint (squared) and the `l1` loss between logits (absolute).
pub fn elementwise_distance(
    gpu: &Gpu,
    op: &str,
    student: &Tensor,
    teacher: &Tensor,
    distance: Distance,
) -> Result<LossPlan> {
    student.expect(op, "student", DType::F32, student.shape())?;
    teacher.expect(op, "teacher", DType::F32, student.shape())?;
    let n = student.numel();
    if n == 0 {
        return Err(shape_error(op, "student is empty"));
    }
    let (q, grad_scale) = match distance {
        Distance::Squared => (2.0, 2.0 / n as f32),
        Distance::Absolute => (1.0, 1.0 / n as f32),
    };
    let grad = gpu.empty(student.shape(), DType::F32)?;
    let partial = gpu.empty(&[n], DType::F32)?;
    let loss = gpu.empty(&[1], DType::F32)?;
    let params = Params {
        batch: 1,
        n: u32_of(op, "elements", n)?,
        teacher_channels: 0,
        hw: 0,
        p: 0.0,
        grad_scale,
        q,
        offset: 0,
    };
    let tensors = [student, teacher, &grad, &partial];
    let mut dispatches = vec![gpu.dispatch_over(&HINT_TERMS, &params, &tensors, n)?];
    reduce::sum_into(gpu, &mut dispatches, &partial, &loss, 1.0 / n as f32)?;
    Ok(LossPlan::single(dispatches, loss, grad))
}

/// Attention transfer: `mean((a(s) − a(t))²)` with `a(f) = normalize(mean_c f^p)`. Student
/// `(B, Cs, H, W)` and teacher `(B, Ct, H, W)` may differ in channels only.
pub fn at(gpu: &Gpu, student: &Tensor, teacher: &Tensor, p: f32) -> Result<LossPlan> {
    check_attr(&AT, "p", p)?;
    attention_factors(gpu, "at", student, teacher, p, 2.0)
}

/// Factor transfer: `mean(|f(s) − f(t)|)` (`p2 = 1`) or `mean((f(s) − f(t))²)` (`p2 = 2`) with
/// `f(x) = normalize(mean_c x^p1)`, over B·H·W. Channels may differ.
pub fn ft(gpu: &Gpu, student: &Tensor, teacher: &Tensor, p1: f32, p2: f32) -> Result<LossPlan> {
    check_attr(&FT, "p1", p1)?;
    if p2 != 1.0 && p2 != 2.0 {
        return Err(crate::error::input_error(
            "ft: p2",
            format!("must be 1 (L1) or 2 (squared), got {p2}"),
        ));
    }
    attention_factors(gpu, "ft", student, teacher, p1, p2)
}

/// Flow of solution procedure: with `G(a, b)[n,j,i] = (1/HW) Σ_x b[n,j,x]·a[n,i,x]`,
/// `mean((G(s_a, s_b) − G(t_a, t_b))²)` over B·C2·C1. Each side's two maps share their size
/// (the teacher's may differ from the student's); C1 and C2 agree across sides. Gradients for
/// `s_a` and `s_b`.
pub fn fsp(
    gpu: &Gpu,
    student_a: &Tensor,
    student_b: &Tensor,
    teacher_a: &Tensor,
    teacher_b: &Tensor,
) -> Result<LossPlan> {
    let op = "fsp";
    let ([b, c1, hw_s, _], c2) = maps(op, student_a, student_b)?;
    let ([bt, tc1, hw_t, _], tc2) = maps(op, teacher_a, teacher_b)?;
    if (bt, tc1, tc2) != (b, c1, c2) {
        return Err(shape_error(
            op,
            format!(
                "the teacher's maps {:?}, {:?} must have the student's batch and channels {:?}, {:?}",
                teacher_a.shape(),
                teacher_b.shape(),
                student_a.shape(),
                student_b.shape()
            ),
        ));
    }
    let entries = b * c2 * c1;
    let base = Params {
        batch: u32_of(op, "batch", b)?,
        n: 0,
        teacher_channels: 0,
        hw: 0,
        p: 0.0,
        grad_scale: 0.0,
        q: 0.0,
        offset: 0,
    };
    gpu.check_loops(&ROW_GRAMS, hw_s.max(hw_t) as u64)?;
    gpu.check_loops(&ROW_MIX, c1.max(c2) as u64)?;
    let mut plan = Vec::new();
    // Unweighted Gram entries; their partials are not used.
    let scratch = gpu.empty(&[entries], DType::F32)?;
    let mut flow = |a: &Tensor, bb: &Tensor, hw: usize| -> Result<Tensor> {
        let g = gpu.empty(&[b, c2, c1], DType::F32)?;
        let p = Params {
            n: u32_of(op, "channels", c2)?,
            teacher_channels: u32_of(op, "channels", c1)?,
            hw: u32_of(op, "H·W", hw)?,
            ..base
        };
        plan.push(gpu.dispatch_over(&ROW_GRAMS, &p, &[bb, a, &g, &scratch], entries)?);
        Ok(g)
    };
    let gs = flow(student_a, student_b, hw_s)?;
    let gt = flow(teacher_a, teacher_b, hw_t)?;
    let (dg, partial) = (
        gpu.empty(&[b, c2, c1], DType::F32)?,
        gpu.empty(&[entries], DType::F32)?,
    );
    let p = Params {
        n: u32_of(op, "entries", entries)?,
        p: 1.0 / hw_s as f32,
        q: 1.0 / hw_t as f32,
        grad_scale: 2.0 / (entries as f32 * hw_s as f32),
        ..base
    };
    plan.push(gpu.dispatch_over(&FSP_DIFF, &p, &[&gs, &gt, &dg, &partial], entries)?);
    // d/da[n,i,x] = Σ_j dG[n,j,i] b[n,j,x] (dG transposed); d/db[n,j,x] = Σ_i dG[n,j,i] a[n,i,x].
    let mut mix = |rows: usize, inner: usize, x: &Tensor, transposed: bool| -> Result<Tensor> {
        let out = gpu.empty(&[b, rows, hw_s], DType::F32)?;
        let p = Params {
            n: u32_of(op, "channels", rows)?,
            teacher_channels: u32_of(op, "channels", inner)?,
            hw: u32_of(op, "H·W", hw_s)?,
            offset: u32::from(transposed),
            ..base
        };
        plan.push(gpu.dispatch_over(&ROW_MIX, &p, &[&dg, x, &out], b * rows * hw_s)?);
        Ok(out)
    };
    let grad_a = mix(c1, c2, student_b, true)?.reshape(student_a.shape())?;
    let grad_b = mix(c2, c1, student_a, false)?.reshape(student_b.shape())?;
    let loss = gpu.empty(&[1], DType::F32)?;
    reduce::sum_into(gpu, &mut plan, &partial, &loss, 1.0 / entries as f32)?;
    Ok(LossPlan {
        dispatches: plan,
        loss,
        grads: vec![grad_a, grad_b],
        updated: Vec::new(),
        grad_scale: None,
    })
}

/// The maps of (B, C, H, W) tensors, checked: equal batch and spatial size.
fn maps(op: &str, student: &Tensor, teacher: &Tensor) -> Result<([usize; 4], usize)> {
    let four = |what: &str, t: &Tensor| -> Result<[usize; 4]> {
        match (t.dtype(), t.shape()) {
            (DType::F32, &[b, c, h, w]) if b * c * h * w > 0 => Ok([b, c, h, w]),
            _ => Err(shape_error(
                op,
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
            op,
            format!(
                "student {:?} and teacher {:?} must agree in batch and spatial size",
                student.shape(),
                teacher.shape()
            ),
        ));
    }
    Ok(([b, cs, h * w, 0], ct))
}

/// AT and FT: normalised channel means of `x^p`, compared per position with distance exponent
/// `q` (2: squared, 1: absolute).
fn attention_factors(
    gpu: &Gpu,
    op: &str,
    student: &Tensor,
    teacher: &Tensor,
    p: f32,
    q: f32,
) -> Result<LossPlan> {
    let ([b, cs, hw, _], ct) = maps(op, student, teacher)?;
    let params = Params {
        batch: u32_of(op, "batch", b)?,
        n: u32_of(op, "channels", cs)?,
        teacher_channels: u32_of(op, "channels", ct)?,
        hw: u32_of(op, "H·W", hw)?,
        p,
        grad_scale: 1.0 / (b * hw) as f32,
        q,
        offset: 0,
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
        gpu.dispatch_over(&AT_MAPS, &params, &[student, teacher, &ms, &mt], b * hw)?,
        gpu.dispatch_over(&AT_ROWS, &params, &[&ms, &mt, &stats, &row_loss], b)?,
        gpu.dispatch_over(
            &AT_GRAD,
            &params,
            &[student, &ms, &mt, &stats, &grad],
            student.numel(),
        )?,
    ];
    let scale = 1.0 / (b * hw) as f32;
    reduce::sum_into(gpu, &mut dispatches, &row_loss, &loss, scale)?;
    Ok(LossPlan::single(dispatches, loss, grad))
}

/// Activation boundaries: `3/(1000·B) · Σ [(s + m)²·1(s > −m ∧ t ≤ 0) + (s − m)²·1(s ≤ m ∧
/// t > 0)]` for `s` (the connector's output) and `t` (the teacher's pre-activation) of one shape.
pub fn ab(gpu: &Gpu, student: &Tensor, teacher: &Tensor, margin: f32) -> Result<LossPlan> {
    check_attr(&AB, "margin", margin)?;
    let b = match student.shape().first() {
        Some(&b) if b > 0 && student.numel() > 0 => b,
        _ => {
            return Err(shape_error(
                "ab",
                "student must be a non-empty (B, …) tensor",
            ));
        }
    };
    student.expect("ab", "student", DType::F32, student.shape())?;
    teacher.expect("ab", "teacher", DType::F32, student.shape())?;
    let n = student.numel();
    let scale = 3.0 / (1000.0 * b as f32);
    let params = Params {
        batch: u32_of("ab", "batch", b)?,
        n: u32_of("ab", "elements", n)?,
        teacher_channels: 0,
        hw: 0,
        p: margin,
        grad_scale: scale,
        q: 0.0,
        offset: 0,
    };
    let grad = gpu.empty(student.shape(), DType::F32)?;
    let partial = gpu.empty(&[n], DType::F32)?;
    let loss = gpu.empty(&[1], DType::F32)?;
    let tensors = [student, teacher, &grad, &partial];
    let mut dispatches = vec![gpu.dispatch_over(&AB_TERMS, &params, &tensors, n)?];
    reduce::sum_into(gpu, &mut dispatches, &partial, &loss, scale)?;
    Ok(LossPlan::single(dispatches, loss, grad))
}

/// Neuron selectivity transfer: with every channel normalised over its H·W positions and
/// `K(a, b)_ij = (a_i · b_j)²` per sample, `mean K(t̂, t̂) + mean K(ŝ, ŝ) − 2·mean K(ŝ, t̂)`.
/// Channels may differ; the maps' sizes must agree.
pub fn nst(gpu: &Gpu, student: &Tensor, teacher: &Tensor) -> Result<LossPlan> {
    let op = "nst";
    let ([b, cs, hw, _], ct) = maps(op, student, teacher)?;
    let base = Params {
        batch: u32_of(op, "batch", b)?,
        n: 0,
        teacher_channels: 0,
        hw: u32_of(op, "H·W", hw)?,
        p: 0.0,
        grad_scale: 0.0,
        q: 0.0,
        offset: 0,
    };
    for spec in [&NORMALIZE_ROWS, &ROW_GRAMS, &NORMALIZE_ROWS_BACKWARD] {
        gpu.check_loops(spec, 2 * hw as u64)?;
    }
    gpu.check_loops(&NST_GRAD, (cs + ct) as u64)?;
    let mut plan = Vec::new();
    // Each side's rows normalised.
    let normalized = |plan: &mut Vec<_>, x: &Tensor, c: usize| -> Result<(Tensor, Tensor)> {
        let (xn, norms) = (
            gpu.empty(&[b, c, hw], DType::F32)?,
            gpu.empty(&[b * c, 2], DType::F32)?,
        );
        let p = Params {
            batch: u32_of(op, "rows", b * c)?,
            ..base
        };
        plan.push(gpu.dispatch_over(&NORMALIZE_ROWS, &p, &[x, &xn, &norms], b * c)?);
        Ok((xn, norms))
    };
    let (sn, s_norms) = normalized(&mut plan, student, cs)?;
    let (tn, _) = normalized(&mut plan, teacher, ct)?;
    // The three Gram matrices, their weighted squares side by side in one partial buffer.
    let bf = b as f32;
    let w_ss = 1.0 / (bf * (cs * cs) as f32);
    let w_st = -2.0 / (bf * (cs * ct) as f32);
    let w_tt = 1.0 / (bf * (ct * ct) as f32);
    let partial = gpu.empty(&[b * (cs * cs + cs * ct + ct * ct)], DType::F32)?;
    let mut offset = 0;
    let mut grams = Vec::new();
    for (a, ca, bb, cb, weight) in [
        (&sn, cs, &sn, cs, w_ss),
        (&sn, cs, &tn, ct, w_st),
        (&tn, ct, &tn, ct, w_tt),
    ] {
        let entries = b * ca * cb;
        let g = gpu.empty(&[b, ca, cb], DType::F32)?;
        let p = Params {
            n: u32_of(op, "channels", ca)?,
            teacher_channels: u32_of(op, "channels", cb)?,
            p: weight,
            offset: u32_of(op, "Gram entries", offset)?,
            ..base
        };
        plan.push(gpu.dispatch_over(&ROW_GRAMS, &p, &[a, bb, &g, &partial], entries)?);
        offset += entries;
        grams.push(g);
    }
    let raw = gpu.empty(&[b, cs, hw], DType::F32)?;
    let p = Params {
        n: u32_of(op, "channels", cs)?,
        teacher_channels: u32_of(op, "channels", ct)?,
        p: 4.0 * w_ss,
        grad_scale: 2.0 * w_st,
        ..base
    };
    let tensors = [&sn, &tn, &grams[0], &grams[1], &raw];
    plan.push(gpu.dispatch_over(&NST_GRAD, &p, &tensors, b * cs * hw)?);
    let grad = gpu.empty(student.shape(), DType::F32)?;
    let p = Params {
        batch: u32_of(op, "rows", b * cs)?,
        ..base
    };
    let tensors = [&sn, &s_norms, &raw, &grad];
    plan.push(gpu.dispatch_over(&NORMALIZE_ROWS_BACKWARD, &p, &tensors, b * cs)?);
    let loss = gpu.empty(&[1], DType::F32)?;
    reduce::sum_into(gpu, &mut plan, &partial, &loss, 1.0)?;
    Ok(LossPlan::single(plan, loss, grad))
}

/// Variational information distillation: with `v_c = softplus(log_scale_c) + eps`,
/// `mean(0.5·((s − t)²/v_c + log v_c))` over B·C·H·W, `s` the regressor's predicted mean (shaped
/// like the teacher's map `t`). Gradients for `s` and `log_scale`.
pub fn vid(
    gpu: &Gpu,
    student: &Tensor,
    teacher: &Tensor,
    log_scale: &Tensor,
    eps: f32,
) -> Result<LossPlan> {
    let op = "vid";
    check_attr(&VID, "eps", eps)?;
    let ([b, c, hw, _], ct) = maps(op, student, teacher)?;
    if ct != c {
        return Err(shape_error(
            op,
            format!(
                "student {:?} (the regressed mean) and teacher {:?} must have the same channels",
                student.shape(),
                teacher.shape()
            ),
        ));
    }
    log_scale.expect(op, "log_scale", DType::F32, &[c])?;
    let n = b * c * hw;
    let params = Params {
        batch: u32_of(op, "batch", b)?,
        n: u32_of(op, "elements", n)?,
        teacher_channels: u32_of(op, "channels", c)?,
        hw: u32_of(op, "H·W", hw)?,
        p: eps,
        grad_scale: 1.0 / n as f32,
        q: 0.0,
        offset: 0,
    };
    let grad = gpu.empty(student.shape(), DType::F32)?;
    let partial = gpu.empty(&[n], DType::F32)?;
    let share = gpu.empty(&[b, c, hw], DType::F32)?;
    let tensors = [student, teacher, log_scale, &grad, &partial, &share];
    let mut plan = vec![gpu.dispatch_over(&VID_TERMS, &params, &tensors, n)?];
    // d/d log_scale_c: the shares summed over positions, then over the batch.
    let (d, per_sample) = reduce::reduce_axis(gpu, &share, 2, reduce::AxisOp::Sum)?;
    plan.push(d);
    let (d, grad_log_scale) = reduce::reduce_axis(gpu, &per_sample, 0, reduce::AxisOp::Sum)?;
    plan.push(d);
    let loss = gpu.empty(&[1], DType::F32)?;
    reduce::sum_into(gpu, &mut plan, &partial, &loss, 1.0 / n as f32)?;
    Ok(LossPlan {
        dispatches: plan,
        loss,
        grads: vec![grad, grad_log_scale],
        updated: Vec::new(),
        grad_scale: None,
    })
}

fn map(shape: &[usize], seed: u64) -> HostTensor {
    HostTensor::f32(shape, sample(shape.iter().product(), seed))
}

/// Maps of (B, Cs|Ct, H, W) with channel counts and H·W off the workgroup size.
const CHECK_MAPS: &[[usize; 5]] = &[[1, 1, 1, 1, 1], [3, 5, 7, 3, 11], [7, 16, 3, 6, 6]];

fn hint_cases(suite: Suite) -> Vec<LossCase> {
    let shapes: Vec<Vec<usize>> = match suite {
        Suite::Check => CHECK_MAPS
            .iter()
            .map(|&[b, cs, _, h, w]| vec![b, cs, h, w])
            // More elements than one reduction chunk.
            .chain([vec![3 * 4096 + 17]])
            .collect(),
        Suite::Bench { .. } => vec![vec![suite.pick(64, 256), 64, 16, 16]],
    };
    shapes
        .into_iter()
        .map(|s| {
            let n = s.iter().product::<usize>() as f64;
            LossCase::new(format!("{s:?}"), vec![map(&s, 3), map(&s, 5)])
                .work(Work::Bytes(12.0 * n))
        })
        .collect()
}

fn bn_match_cases(suite: Suite) -> Vec<LossCase> {
    let channels: &[usize] = match suite {
        Suite::Check => &[1, 7, 300],
        Suite::Bench { .. } => &[512],
    };
    let mut out: Vec<LossCase> = channels
        .iter()
        .map(|&c| {
            let running: Vec<f32> = sample(2 * c, 9)
                .iter()
                .enumerate()
                .map(|(i, v)| if i < c { *v } else { 0.5 + v.abs() })
                .collect();
            LossCase::new(
                format!("[2, {c}]"),
                vec![map(&[2, c], 8), HostTensor::f32(&[2, c], running)],
            )
            .work(Work::Bytes(16.0 * c as f64))
        })
        .collect();
    if suite == Suite::Check {
        // Means already matched: that row's norm is 0 and so is its gradient.
        let m = sample(6, 10);
        let mut t = m.clone();
        t[3..].iter_mut().for_each(|v| *v = v.abs() + 0.1);
        out.push(LossCase::new(
            "[2, 3] means matched",
            vec![HostTensor::f32(&[2, 3], m), HostTensor::f32(&[2, 3], t)],
        ));
    }
    out
}

fn tv_cases(suite: Suite) -> Vec<LossCase> {
    let shapes: Vec<[usize; 4]> = match suite {
        // The smallest image, odd sizes, and more elements than one reduction chunk.
        Suite::Check => vec![[1, 1, 2, 2], [3, 2, 5, 7], [2, 3, 28, 28]],
        Suite::Bench { .. } => vec![[suite.pick(64, 256), 1, 28, 28]],
    };
    let mut out = Vec::new();
    for s in shapes {
        let n = s.iter().product::<usize>() as f64;
        for p in [1.0, 2.0] {
            out.push(
                LossCase::new(format!("{s:?}"), vec![map(&s, 6)])
                    .attrs(&[("p", p)])
                    .work(Work::Bytes(12.0 * n))
                    .tolerance(1e-4, 1e-6),
            );
        }
    }
    // A constant image: every difference 0, the norm's gradient 0 (not NaN).
    out.push(
        LossCase::new(
            "[1, 1, 3, 3] constant",
            vec![HostTensor::f32(&[1, 1, 3, 3], vec![0.5; 9])],
        )
        .attrs(&[("p", 2.0)]),
    );
    out
}

fn l2_norm_cases(suite: Suite) -> Vec<LossCase> {
    let shapes: Vec<Vec<usize>> = match suite {
        Suite::Check => vec![vec![1, 1], vec![5, 3, 7, 7], vec![3, 4100]],
        Suite::Bench { .. } => vec![vec![suite.pick(64, 256), 1, 28, 28]],
    };
    let mut out: Vec<LossCase> = shapes
        .into_iter()
        .map(|s| {
            let n = s.iter().product::<usize>() as f64;
            LossCase::new(format!("{s:?}"), vec![map(&s, 7)]).work(Work::Bytes(8.0 * n))
        })
        .collect();
    if suite == Suite::Check {
        // A zero sample among others: its gradient is 0, not NaN.
        let mut v = sample(12, 8);
        v[4..8].fill(0.0);
        out.push(LossCase::new(
            "[3, 4] one zero sample",
            vec![HostTensor::f32(&[3, 4], v)],
        ));
    }
    out
}

fn at_cases(suite: Suite) -> Vec<LossCase> {
    let (shapes, exponents): (Vec<[usize; 5]>, &[f64]) = match suite {
        Suite::Check => (CHECK_MAPS.to_vec(), &[1.0, 2.0, 3.0]),
        Suite::Bench { .. } => (vec![[suite.pick(64, 256), 64, 128, 16, 16]], &[2.0]),
    };
    let mut out = Vec::new();
    for [b, cs, ct, h, w] in shapes {
        for &p in exponents {
            let inputs = vec![map(&[b, cs, h, w], 3), map(&[b, ct, h, w], 4)];
            let bytes = 4.0 * (b * h * w * (2 * cs + ct)) as f64;
            out.push(
                LossCase::new(format!("[{b}, {cs}|{ct}, {h}, {w}]"), inputs)
                    .attrs(&[("p", p)])
                    .work(Work::Bytes(bytes)),
            );
        }
    }
    out
}

fn ft_cases(suite: Suite) -> Vec<LossCase> {
    let (shapes, settings): (Vec<[usize; 5]>, &[(f64, f64)]) = match suite {
        Suite::Check => (CHECK_MAPS.to_vec(), &[(2.0, 1.0), (2.0, 2.0), (1.0, 1.0)]),
        Suite::Bench { .. } => (vec![[suite.pick(64, 256), 64, 128, 16, 16]], &[(2.0, 1.0)]),
    };
    let mut out = Vec::new();
    for [b, cs, ct, h, w] in shapes {
        for &(p1, p2) in settings {
            let inputs = vec![map(&[b, cs, h, w], 3), map(&[b, ct, h, w], 4)];
            let bytes = 4.0 * (b * h * w * (2 * cs + ct)) as f64;
            out.push(
                LossCase::new(format!("[{b}, {cs}|{ct}, {h}, {w}]"), inputs)
                    .attrs(&[("p1", p1), ("p2", p2)])
                    .work(Work::Bytes(bytes)),
            );
        }
    }
    out
}

fn ab_cases(suite: Suite) -> Vec<LossCase> {
    let shapes: Vec<Vec<usize>> = match suite {
        Suite::Check => vec![
            vec![1, 1, 1, 1],
            vec![3, 5, 3, 11],
            vec![7, 16, 6, 6],
            vec![3 * 4096 + 17],
        ],
        Suite::Bench { .. } => vec![vec![suite.pick(64, 256), 64, 16, 16]],
    };
    let mut out = Vec::new();
    for s in shapes {
        let n = s.iter().product::<usize>() as f64;
        for margin in [1.0, 0.25] {
            out.push(
                LossCase::new(format!("{s:?}"), vec![map(&s, 6), map(&s, 7)])
                    .attrs(&[("margin", margin)])
                    .work(Work::Bytes(12.0 * n)),
            );
        }
    }
    out
}

fn nst_cases(suite: Suite) -> Vec<LossCase> {
    let shapes: Vec<[usize; 5]> = match suite {
        // Includes maps whose H·W is one position and channels off the workgroup size.
        Suite::Check => vec![
            [1, 1, 1, 1, 1],
            [3, 5, 7, 3, 11],
            [7, 16, 3, 6, 6],
            [2, 33, 65, 4, 4],
        ],
        Suite::Bench { .. } => vec![[suite.pick(32, 128), 64, 128, 8, 8]],
    };
    shapes
        .into_iter()
        .map(|[b, cs, ct, h, w]| {
            let inputs = vec![map(&[b, cs, h, w], 8), map(&[b, ct, h, w], 9)];
            LossCase::new(format!("[{b}, {cs}|{ct}, {h}, {w}]"), inputs).tolerance(1e-3, 1e-5)
        })
        .collect()
}

fn vid_cases(suite: Suite) -> Vec<LossCase> {
    let shapes: Vec<[usize; 4]> = match suite {
        Suite::Check => vec![[1, 1, 1, 1], [3, 5, 3, 11], [7, 16, 6, 6], [2, 3, 70, 70]],
        Suite::Bench { .. } => vec![[suite.pick(64, 256), 64, 16, 16]],
    };
    let mut out = Vec::new();
    for s in shapes {
        let c = s[1];
        let n = s.iter().product::<usize>() as f64;
        // Variances from the initial 5 down to the floor's neighbourhood, and log-scales far
        // out on both sides of softplus.
        let mut scales = vec![vid_log_scale_for(VID_INITIAL_VARIANCE, 1e-5) as f32; c];
        for (k, v) in sample(c, 21).into_iter().enumerate().skip(1) {
            scales[k] = if k % 4 == 3 { 40.0 * v } else { 3.0 * v };
        }
        let inputs = vec![map(&s, 16), map(&s, 17), HostTensor::f32(&[c], scales)];
        out.push(LossCase::new(format!("{s:?}"), inputs).work(Work::Bytes(16.0 * n)));
    }
    if suite == Suite::Check {
        // A larger floor.
        let s = [3, 4, 5, 5];
        let inputs = vec![
            map(&s, 18),
            map(&s, 19),
            HostTensor::f32(&[4], sample(4, 22)),
        ];
        out.push(LossCase::new(format!("{s:?}"), inputs).attrs(&[("eps", 0.1)]));
    }
    out
}

fn fsp_cases(suite: Suite) -> Vec<LossCase> {
    // (B, C1, C2, student H×W, teacher H×W).
    let shapes: Vec<[usize; 5]> = match suite {
        Suite::Check => vec![
            [1, 1, 1, 1, 1],
            [3, 5, 7, 3, 4],
            [4, 16, 9, 6, 6],
            [2, 33, 65, 4, 7],
        ],
        Suite::Bench { .. } => vec![[suite.pick(32, 128), 32, 64, 8, 8]],
    };
    shapes
        .into_iter()
        .map(|[b, c1, c2, hs, ht]| {
            let inputs = vec![
                map(&[b, c1, hs, hs], 12),
                map(&[b, c2, hs, hs], 13),
                map(&[b, c1, ht, ht], 14),
                map(&[b, c2, ht, ht], 15),
            ];
            let shape = format!("[{b}, {c1}+{c2}, {hs}×{hs}|{ht}×{ht}]");
            LossCase::new(shape, inputs).tolerance(1e-3, 1e-5)
        })
        .collect()
}
