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
    LossCase, LossDef, LossPlan, Range, Reads, STUDENT, TEACHER, check_attr, u32_of,
};

use Binding::{Output as W, ReadOnly as R, Uniform as U};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    n: u32,
    teacher_channels: u32,
    hw: u32,
    p: f32,
    grad_scale: f32,
    pad: [u32; 2],
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

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[HINT_TERMS, AT_MAPS, AT_ROWS, AT_GRAD];

/// `hint`: FitNet's hint between a regressed student tap and the teacher's.
pub const HINT: LossDef = LossDef {
    name: "hint",
    summary: "FitNet hint: mean((s − t)²)",
    reads: Reads::Features,
    inputs: &[STUDENT, TEACHER],
    attrs: &[],
    launch: |gpu, _, x| hint(gpu, x[0], x[1]),
    reference: |_, x| cpu::hint(&x[0].values, &x[1].values),
    cases: hint_cases,
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
        cpu::at(&s.values, &t.values, b, cs, ct, hw, l.attr("p"))
    },
    cases: at_cases,
};

/// The family's losses, in registry order.
pub const LOSSES: &[&LossDef] = &[&HINT, &AT];

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
    let params = Params {
        batch: 1,
        n: u32_of("hint", "elements", n)?,
        teacher_channels: 0,
        hw: 0,
        p: 0.0,
        grad_scale: 2.0 / n as f32,
        pad: [0; 2],
    };
    let tensors = [student, teacher, &grad, &partial];
    let mut dispatches = vec![gpu.dispatch_over(&HINT_TERMS, &params, &tensors, n)?];
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
    check_attr(&AT, "p", p)?;
    let hw = h * w;
    let params = Params {
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
    Ok(LossPlan {
        dispatches,
        loss,
        grad,
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
