//! Contrastive losses against memory banks (`shaders/contrast.wgsl`): CRD. The bank rows are read
//! in place through the loader's indices, so a training step never copies the `(B, K+1, D)` rows
//! it scores; the op runner's gathered rows are a bank of `B·(K+1)` rows read in order.
//! Definitions in `docs/losses.md`.

use crate::Result;
use crate::catalogue::{Suite, Work};
use crate::error::{input_error, shape_error};
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::io::HostTensor;
use crate::reference::contrast as cpu;
use crate::rng::sample;

use super::AttrDef;
use super::losses::{
    LossCase, LossDef, LossInput, LossPlan, MemoryDef, Range, Reads, Role, u32_of,
};

use Binding::{Output as W, ReadOnly as R, ReadWrite as RW, Uniform as U};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default)]
struct Params {
    batch: u32,
    rows: u32,
    dim: u32,
    side: u32,
    inv_t: f32,
    n_data: f32,
    momentum: f32,
    pad: u32,
}

/// Scores of each anchor against its bank rows.
pub const CRD_SCORES: KernelSpec =
    KernelSpec::new::<Params>("contrast", "crd_scores", &[U, R, R, R, W]);
/// [`CRD_SCORES`] reading four elements at a time (D a multiple of 4).
pub const CRD_SCORES_VEC4: KernelSpec =
    KernelSpec::new::<Params>("contrast", "crd_scores_vec4", &[U, R, R, R, W]);
/// Z from the first batch, where it is still 0.
pub const CRD_Z: KernelSpec = KernelSpec::new::<Params>("contrast", "crd_z", &[U, R, RW]);
/// Per anchor: its loss and its gradient's coefficients.
pub const CRD_COEF: KernelSpec =
    KernelSpec::new::<Params>("contrast", "crd_coef", &[U, R, R, W, W]);
/// The anchors' gradients from the coefficients and the bank rows.
pub const CRD_GRAD: KernelSpec =
    KernelSpec::new::<Params>("contrast", "crd_grad", &[U, R, R, R, W]);
/// [`CRD_GRAD`] reading four elements at a time (D a multiple of 4).
pub const CRD_GRAD_VEC4: KernelSpec =
    KernelSpec::new::<Params>("contrast", "crd_grad_vec4", &[U, R, R, R, W]);
/// Both sides' losses summed.
pub const CRD_TOTAL: KernelSpec = KernelSpec::new::<Params>("contrast", "crd_total", &[U, R, R, W]);
/// The updated bank rows.
pub const CRD_UPDATE: KernelSpec =
    KernelSpec::new::<Params>("contrast", "crd_update", &[U, R, R, R, W]);
/// The updated rows written into the bank.
pub const CRD_SCATTER: KernelSpec =
    KernelSpec::new::<Params>("contrast", "crd_scatter", &[U, R, R, RW]);

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[
    CRD_SCORES,
    CRD_SCORES_VEC4,
    CRD_Z,
    CRD_COEF,
    CRD_GRAD,
    CRD_GRAD_VEC4,
    CRD_TOTAL,
    CRD_UPDATE,
    CRD_SCATTER,
];

/// `crd`: contrastive representation distillation (Tian et al. 2020).
pub const CRD: LossDef = LossDef {
    name: "crd",
    summary: "contrastive representation distillation: NCE of each embedding against the other side's memory bank",
    reads: Reads::Features,
    inputs: &[
        LossInput {
            name: "student",
            role: Role::Student,
        },
        LossInput {
            name: "teacher",
            role: Role::TeacherEmbedding,
        },
        LossInput {
            name: "memory_student",
            role: Role::Memory,
        },
        LossInput {
            name: "memory_teacher",
            role: Role::Memory,
        },
    ],
    attrs: &[
        AttrDef {
            name: "nce_t",
            default: 0.07,
            range: Range::positive(100.0),
            doc: "temperature of the scores",
        },
        AttrDef {
            name: "nce_mom",
            default: 0.5,
            range: Range::non_negative(1.0),
            doc: "momentum of the bank update (the share of the old row kept)",
        },
        AttrDef {
            name: "n_data",
            default: 0.0,
            range: Range::non_negative(1e9).whole(),
            doc: "the banks' rows N (the op requires it; a training step uses the training set's size)",
        },
        AttrDef {
            name: "z_student",
            default: 0.0,
            range: Range::non_negative(1e30),
            doc: "normaliser of the student's scores; 0 sets it from the first batch, N·mean exp(score)",
        },
        AttrDef {
            name: "z_teacher",
            default: 0.0,
            range: Range::non_negative(1e30),
            doc: "normaliser of the teacher's scores; 0 sets it from the first batch",
        },
        AttrDef {
            name: "nce_k",
            default: 16384.0,
            range: Range::positive(1e7).whole(),
            doc: "negatives per sample in a training step (the op reads K from its inputs)",
        },
        AttrDef {
            name: "feat_dim",
            default: 128.0,
            range: Range::positive(65536.0).whole(),
            doc: "width of the embedding heads in a training step (the op reads D from its inputs)",
        },
    ],
    launch: |gpu, l, x| crd(gpu, &attrs_of(l), x[0], x[1], x[2], x[3]),
    reference: |l, x| {
        let attrs = attrs_of(l).widened();
        cpu::crd(
            &x[0].values,
            &x[1].values,
            &x[2].values,
            &x[3].values,
            x[0].shape[0],
            &attrs,
        )
    },
    cases,
    parameters: None,
    memory: Some(MemoryDef {
        size_attr: "n_data",
        names: &["memory_student", "memory_teacher", "z"],
        rows: |l| l.attr("nce_k") as usize + 1,
        init: |l, n, d, seed| {
            vec![
                initial_bank(n, d, seed),
                initial_bank(n, d, seed ^ 0x5eed),
                HostTensor::f32(&[2], attrs_of(l).z.to_vec()),
            ]
        },
        banked: crd_step,
    }),
};

/// The family's losses, in registry order.
pub const LOSSES: &[&LossDef] = &[&CRD];

/// CRD's attributes as the kernels take them.
#[derive(Clone, Copy, Debug)]
pub struct CrdAttrs {
    /// Temperature.
    pub t: f32,
    /// Momentum of the bank update.
    pub momentum: f32,
    /// Rows in each bank, N.
    pub n_data: f32,
    /// Initial normalisers (student, teacher); 0 sets one from the first batch.
    pub z: [f32; 2],
}

impl CrdAttrs {
    /// The same in f64, for the reference.
    pub fn widened(&self) -> cpu::CrdAttrs {
        cpu::CrdAttrs {
            t: f64::from(self.t),
            momentum: f64::from(self.momentum),
            n_data: f64::from(self.n_data),
            z: self.z.map(f64::from),
        }
    }
}

/// The kernels' attributes of a `crd` loss.
pub fn attrs_of(l: &super::losses::Loss) -> CrdAttrs {
    CrdAttrs {
        t: l.attr_f32("nce_t"),
        momentum: l.attr_f32("nce_mom"),
        n_data: l.attr_f32("n_data"),
        z: [l.attr_f32("z_student"), l.attr_f32("z_teacher")],
    }
}

/// Where a step's CRD term reads its rows: both `(N, D)` banks, the loader's indices `(B, K+1)`
/// (each sample's own row first, then its negatives) and the normalisers `[2]` (0 until set).
pub struct Banks<'a> {
    /// Bank of student embeddings (RepDistiller's `memory_v1`).
    pub student: &'a Tensor,
    /// Bank of teacher embeddings (`memory_v2`).
    pub teacher: &'a Tensor,
    /// Row indices, i32.
    pub indices: &'a Tensor,
    /// Z of the student's and the teacher's scores.
    pub z: &'a Tensor,
}

/// CRD as the op runner sees it: gathered rows `(B, K+1, D)`, read as banks of `B·(K+1)` rows.
pub fn crd(
    gpu: &Gpu,
    attrs: &CrdAttrs,
    student: &Tensor,
    teacher: &Tensor,
    memory_student: &Tensor,
    memory_teacher: &Tensor,
) -> Result<LossPlan> {
    let op = "crd";
    let (b, d) = anchors(op, student, teacher)?;
    let rows = match memory_student.shape() {
        &[mb, n, md] if mb == b && md == d && n >= 2 => n,
        other => {
            return Err(shape_error(
                op,
                format!("memory_student must be (B, K+1, D) = ({b}, ≥ 2, {d}), got {other:?}"),
            ));
        }
    };
    memory_teacher.expect(op, "memory_teacher", DType::F32, &[b, rows, d])?;
    memory_student.expect(op, "memory_student", DType::F32, &[b, rows, d])?;
    let n = b * rows;
    let indices: Vec<i32> = (0..n)
        .map(|i| i32::try_from(i).map_err(|_| shape_error(op, "more than 2³¹ rows")))
        .collect::<Result<_>>()?;
    let indices = gpu.upload(&[b, rows], &indices)?;
    let z = gpu.upload(&[2], &attrs.z)?;
    let banks = Banks {
        student: &memory_student.reshape(&[n, d])?,
        teacher: &memory_teacher.reshape(&[n, d])?,
        indices: &indices,
        z: &z,
    };
    crd_banked(gpu, attrs, student, teacher, &banks)
}

fn anchors(op: &str, student: &Tensor, teacher: &Tensor) -> Result<(usize, usize)> {
    let (b, d) = match student.shape() {
        &[b, d] if b >= 1 && d >= 1 => (b, d),
        other => {
            return Err(shape_error(
                op,
                format!("student must be (B, D) embeddings, got {other:?}"),
            ));
        }
    };
    student.expect(op, "student", DType::F32, &[b, d])?;
    teacher.expect(op, "teacher", DType::F32, &[b, d])?;
    Ok((b, d))
}

/// CRD on banks: the loss, the gradients with respect to both anchors and the updated rows of
/// both banks `(B, D)` (written back by [`write_rows`] in a training step).
pub fn crd_banked(
    gpu: &Gpu,
    attrs: &CrdAttrs,
    student: &Tensor,
    teacher: &Tensor,
    banks: &Banks<'_>,
) -> Result<LossPlan> {
    let op = "crd";
    let (b, d) = anchors(op, student, teacher)?;
    let rows = match banks.indices.shape() {
        &[ib, n] if ib == b && n >= 2 => n,
        other => {
            return Err(shape_error(
                op,
                format!("the indices must be (B, K+1) = ({b}, ≥ 2), got {other:?}"),
            ));
        }
    };
    banks
        .indices
        .expect(op, "indices", DType::I32, &[b, rows])?;
    banks.z.expect(op, "z", DType::F32, &[2])?;
    let n_data = banks.student.shape().first().copied().unwrap_or(0);
    for (what, bank) in [
        ("student bank", banks.student),
        ("teacher bank", banks.teacher),
    ] {
        bank.expect(op, what, DType::F32, &[n_data, d])?;
    }
    if attrs.n_data.is_nan() || attrs.n_data < 1.0 {
        return Err(input_error(
            "crd: n_data",
            format!("must be the banks' size N ≥ 1, got {}", attrs.n_data),
        ));
    }
    let base = Params {
        batch: u32_of(op, "B", b)?,
        rows: u32_of(op, "K+1", rows)?,
        dim: u32_of(op, "D", d)?,
        side: 0,
        inv_t: 1.0 / attrs.t,
        n_data: attrs.n_data,
        momentum: attrs.momentum,
        pad: 0,
    };
    gpu.check_loops(&CRD_SCORES, d as u64)?;
    gpu.check_loops(&CRD_GRAD, rows as u64)?;
    gpu.check_loops(&CRD_Z, (b * rows).div_ceil(256) as u64 + 8)?;
    gpu.check_loops(&CRD_TOTAL, b as u64)?;
    let mut plan: Vec<Dispatch> = Vec::new();
    // Student anchors score against the teacher bank (Z slot 0), teacher anchors against the
    // student bank (slot 1).
    let mut side = |anchor: &Tensor, bank: &Tensor, slot: u32| -> Result<(Tensor, Tensor)> {
        let p = Params { side: slot, ..base };
        let scores = gpu.empty(&[b, rows], DType::F32)?;
        let t = [anchor, bank, banks.indices, &scores];
        let scores_kernel = if d % 4 == 0 {
            &CRD_SCORES_VEC4
        } else {
            &CRD_SCORES
        };
        plan.push(gpu.dispatch_over(scores_kernel, &p, &t, b * rows)?);
        plan.push(gpu.dispatch(&CRD_Z, &p, &[&scores, banks.z], 1)?);
        let coef = gpu.empty(&[b, rows], DType::F32)?;
        let row_loss = gpu.empty(&[b], DType::F32)?;
        let t = [&scores, banks.z, &coef, &row_loss];
        plan.push(gpu.dispatch(&CRD_COEF, &p, &t, b as u64)?);
        let grad = gpu.empty(&[b, d], DType::F32)?;
        let t = [&coef, bank, banks.indices, &grad];
        plan.push(if d % 4 == 0 {
            gpu.dispatch_over(&CRD_GRAD_VEC4, &p, &t, b * d / 4)?
        } else {
            gpu.dispatch_over(&CRD_GRAD, &p, &t, b * d)?
        });
        Ok((row_loss, grad))
    };
    let (loss_s, grad_s) = side(student, banks.teacher, 0)?;
    let (loss_t, grad_t) = side(teacher, banks.student, 1)?;
    let loss = gpu.empty(&[1], DType::F32)?;
    plan.push(gpu.dispatch(&CRD_TOTAL, &base, &[&loss_s, &loss_t, &loss], 1)?);
    let mut updated = Vec::new();
    for (anchor, bank) in [(student, banks.student), (teacher, banks.teacher)] {
        let new_rows = gpu.empty(&[b, d], DType::F32)?;
        let t = [anchor, bank, banks.indices, &new_rows];
        plan.push(gpu.dispatch(&CRD_UPDATE, &base, &t, b as u64)?);
        updated.push(new_rows);
    }
    Ok(LossPlan {
        dispatches: plan,
        loss,
        grads: vec![grad_s, grad_t],
        updated,
        grad_scale: None,
    })
}

/// CRD in a training step: [`crd_banked`] on the memory (both banks, then Z) through the
/// loader's `indices`, then both banks' updated rows written back.
fn crd_step(
    gpu: &Gpu,
    l: &super::losses::Loss,
    inputs: &[&Tensor],
    memory: &[&Tensor],
    indices: &Tensor,
) -> Result<LossPlan> {
    let (&[student, teacher], &[bank_s, bank_t, z]) = (inputs, memory) else {
        return Err(shape_error(
            "crd",
            "a step reads two anchors and the memory (two banks, Z)",
        ));
    };
    let banks = Banks {
        student: bank_s,
        teacher: bank_t,
        indices,
        z,
    };
    let mut lp = crd_banked(gpu, &attrs_of(l), student, teacher, &banks)?;
    for (rows, bank) in lp.updated.iter().zip([bank_s, bank_t]) {
        lp.dispatches.push(write_rows(gpu, rows, indices, bank)?);
    }
    Ok(lp)
}

/// Writes updated rows `(B, D)` into `bank` at each sample's own index (`indices[b, 0]`): the
/// last launch of a step's CRD term, after everything that reads the bank.
pub fn write_rows(gpu: &Gpu, rows: &Tensor, indices: &Tensor, bank: &Tensor) -> Result<Dispatch> {
    let op = "crd_scatter";
    let (b, d) = match rows.shape() {
        &[b, d] => (b, d),
        other => {
            return Err(shape_error(
                op,
                format!("rows must be (B, D), got {other:?}"),
            ));
        }
    };
    let per = indices.shape().get(1).copied().unwrap_or(0);
    indices.expect(op, "indices", DType::I32, &[b, per])?;
    let p = Params {
        batch: u32_of(op, "B", b)?,
        rows: u32_of(op, "K+1", per)?,
        dim: u32_of(op, "D", d)?,
        ..Default::default()
    };
    gpu.dispatch_over(&CRD_SCATTER, &p, &[rows, indices, bank], b * d)
}

/// The initial bank: `U(−σ, σ)` with `σ = 1/√(D/3)` (RepDistiller's `ContrastMemory`).
pub fn initial_bank(n: usize, d: usize, seed: u64) -> HostTensor {
    let sigma = 1.0 / (d as f32 / 3.0).sqrt();
    HostTensor::f32(
        &[n, d],
        sample(n * d, seed).iter().map(|u| sigma * u).collect(),
    )
}

/// Unit rows, `(rows, d)`, from `seed`.
fn unit_rows(rows: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut v = sample(rows * d, seed);
    for r in v.chunks_mut(d) {
        let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
        r.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

fn cases(suite: Suite) -> Vec<LossCase> {
    // (B, K+1, D, N): rows past one workgroup (64) and widths past the update's stride; the
    // bench shape is a Fashion-MNIST step at nce_k = 4096 (1024 on CPU-like drivers).
    let shapes: &[(usize, usize, usize, f64)] = match suite {
        Suite::Check => &[(1, 2, 3, 10.0), (4, 9, 16, 500.0), (5, 67, 130, 900.0)],
        Suite::Bench { small: true } => &[(128, 1025, 128, 60000.0)],
        Suite::Bench { small: false } => &[(128, 4097, 128, 60000.0)],
    };
    let mut out = Vec::new();
    for &(b, n, d, n_data) in shapes {
        let inputs = vec![
            HostTensor::f32(&[b, d], unit_rows(b, d, 21)),
            HostTensor::f32(&[b, d], unit_rows(b, d, 22)),
            HostTensor::f32(&[b, n, d], unit_rows(b * n, d, 23)),
            HostTensor::f32(&[b, n, d], unit_rows(b * n, d, 24)),
        ];
        // The rows read: both sides score and sum over both banks' gathered rows.
        let bytes = 4.0 * (2 * b * n * d) as f64 * 2.0;
        let shape = format!("B {b}, K+1 {n}, D {d}");
        out.push(
            LossCase::new(shape.clone(), inputs.clone())
                .attrs(&[("n_data", n_data)])
                .tolerance(2e-4, 1e-6)
                .work(Work::Bytes(bytes))
                .batch_estimated(),
        );
        if suite == Suite::Check {
            out.push(
                LossCase::new(shape, inputs)
                    .attrs(&[
                        ("n_data", n_data),
                        ("z_student", 3.0 * n_data),
                        ("z_teacher", 0.5 * n_data),
                        ("nce_t", 0.5),
                        ("nce_mom", 0.9),
                    ])
                    .tolerance(2e-4, 1e-6),
            );
        }
    }
    out
}

/// The training step's path: `(B, K+1)` random rows of two N-row banks read in place, the loss,
/// both gradients and both banks' updated rows written back (against the reference on the
/// gathered rows). The bench shape is Fashion-MNIST's full training set at nce_k = 4096 (1024 on
/// CPU-like drivers): its GB/s count the bank rows the kernels read and write, against the same
/// run's copy.
pub fn bank_cases(suite: Suite) -> Vec<crate::catalogue::Case> {
    use crate::catalogue::{Case, Prepared, stream_key};
    let (n, b, rows, d) = match suite {
        Suite::Check => (50, 5, 9, 20),
        Suite::Bench { small: true } => (60_000, 128, 1025, 128),
        Suite::Bench { small: false } => (60_000, 128, 4097, 128),
    };
    // Own rows 0, 7, 14, …; negatives anywhere (repeats allowed, as across a batch).
    let draws = sample(b * rows, 25);
    let indices: Vec<i32> = (0..b * rows)
        .map(|e| match e % rows {
            0 => ((e / rows * 7) % n) as i32,
            _ => (((draws[e] + 1.0) / 2.0 * n as f32) as usize).min(n - 1) as i32,
        })
        .collect();
    let anchors = [unit_rows(b, d, 26), unit_rows(b, d, 27)];
    let banks = [unit_rows(n, d, 28), unit_rows(n, d, 29)];
    let attrs = CrdAttrs {
        n_data: n as f32,
        ..attrs_of(&super::losses::Loss::of(&CRD))
    };
    let gathered = |bank: &[f32]| -> Vec<f64> {
        indices
            .iter()
            .flat_map(|&i| bank[i as usize * d..][..d].iter().map(|&v| f64::from(v)))
            .collect()
    };
    let want = {
        let wide = |v: &[f32]| crate::reference::widen(v);
        let r = cpu::crd(
            &wide(&anchors[0]),
            &wide(&anchors[1]),
            &gathered(&banks[0]),
            &gathered(&banks[1]),
            b,
            &attrs.widened(),
        );
        let mut v = vec![r.loss];
        v.extend(r.grads.into_iter().flatten());
        v.extend(r.updated.iter().flatten());
        // In the check, the whole banks after the write-back: each sample's own row replaced.
        if suite == Suite::Check {
            for (bank, new) in banks.iter().zip(&r.updated) {
                let mut whole = wide(bank);
                for (k, row) in new.chunks(d).enumerate() {
                    let own = indices[k * rows] as usize;
                    whole[own * d..][..d].copy_from_slice(row);
                }
                v.extend(whole);
            }
        }
        v
    };
    // Rows read by the scores and the gradients on both sides, rows read and written by the
    // update.
    let bytes = 4.0 * (4 * b * rows * d + 6 * b * d) as f64;
    let case = Case::new(
        "crd_banked",
        format!("N {n}, B {b}, K+1 {rows}, D {d}"),
        Work::Bytes(bytes),
        move |gpu| {
            let up = |v: &[f32], shape: &[usize]| gpu.upload(shape, v);
            let (s, t) = (up(&anchors[0], &[b, d])?, up(&anchors[1], &[b, d])?);
            let (bs, bt) = (up(&banks[0], &[n, d])?, up(&banks[1], &[n, d])?);
            let idx = gpu.upload(&[b, rows], &indices)?;
            let z = gpu.upload(&[2], &attrs.z)?;
            // The training step's own entry: the registry's memory definition.
            let loss = super::losses::Loss::of(&CRD).with("n_data", n as f64)?;
            let lp = crd_step(gpu, &loss, &[&s, &t], &[&bs, &bt, &z], &idx)?;
            let mut outputs = vec![lp.loss];
            outputs.extend(lp.grads);
            outputs.extend(lp.updated);
            if suite == Suite::Check {
                outputs.extend([bs, bt]);
            }
            Ok(Prepared::new(lp.dispatches, outputs))
        },
    )
    .reference(move || want.clone())
    .tolerance(2e-4, 1e-6);
    vec![case.baseline(stream_key(suite))]
}
