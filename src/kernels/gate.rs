//! ONE's gated ensemble (`shaders/gate.wgsl`): `y = Σ_b softmax(gate)[:, b] ⊙ z_b` over B branch
//! outputs, the on-the-fly teacher of multi-branch online distillation, forward and backward.
//! The gate's softmax is softmax.wgsl's; the branches stay separate tensors, one launch each.

use crate::Result;
use crate::catalogue::{Case, Prepared, Suite, Work, memory_case, sample_f64, sample_tensor};
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::kernels::softmax;
use crate::reference::gate as cpu;

use Binding::{ReadOnly as R, ReadWrite as RW, Uniform as U};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    branches: u32,
    branch: u32,
    accumulate: u32,
    pad: [u32; 3],
}

/// `out (+)= w[:, b] ⊙ z`, row-scaled by one column of the weights.
pub const GATE_SCALE_ROWS: KernelSpec =
    KernelSpec::new::<Params>("gate", "gate_scale_rows", &[U, R, R, RW]);
/// Column b of an (N, B) array = the row dot products of two (N, C) arrays.
pub const GATE_ROW_DOT: KernelSpec =
    KernelSpec::new::<Params>("gate", "gate_row_dot", &[U, R, R, RW]);

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[GATE_SCALE_ROWS, GATE_ROW_DOT];

/// Checks gate logits (N, B) and B parts (N, C); returns (N, C, B).
fn shapes(op: &str, gate: &Tensor, parts: &[&Tensor]) -> Result<(usize, usize, usize)> {
    let (&[n, b], Some(first)) = (gate.shape(), parts.first()) else {
        return Err(shape_error(
            op,
            format!(
                "needs gate logits (N, B) and B branch outputs, got {:?} and {} outputs",
                gate.shape(),
                parts.len()
            ),
        ));
    };
    let &[rows, c] = first.shape() else {
        return Err(shape_error(
            op,
            format!("branch outputs must be (N, C), got {:?}", first.shape()),
        ));
    };
    if b != parts.len() || rows != n || n * c.max(b) >= u32::MAX as usize {
        return Err(shape_error(
            op,
            format!(
                "gate {:?} does not fit {} branch outputs of {:?}",
                gate.shape(),
                parts.len(),
                first.shape()
            ),
        ));
    }
    gate.expect(op, "gate", DType::F32, &[n, b])?;
    for p in parts {
        p.expect(op, "branch output", DType::F32, &[n, c])?;
    }
    Ok((n, c, b))
}

fn params(n: usize, c: usize, b: usize, branch: usize, accumulate: bool) -> Params {
    Params {
        n: n as u32,
        c: c as u32,
        branches: b as u32,
        branch: branch as u32,
        accumulate: u32::from(accumulate),
        pad: [0; 3],
    }
}

/// Prepares the ensemble of `parts` (each (N, C)) under gate logits (N, B): the launches, the
/// gate's weights (its softmax, which the backward pass reads) and the ensemble y (N, C).
pub fn ensemble(
    gpu: &Gpu,
    gate: &Tensor,
    parts: &[&Tensor],
) -> Result<(Vec<Dispatch>, Tensor, Tensor)> {
    let (n, c, b) = shapes("gated_ensemble", gate, parts)?;
    let (soft, weights) = softmax::forward(gpu, gate, 1.0, false)?;
    let y = gpu.empty(&[n, c], DType::F32)?;
    let mut plan = vec![soft];
    for (k, z) in parts.iter().enumerate() {
        let p = params(n, c, b, k, k > 0);
        plan.push(gpu.dispatch_over(&GATE_SCALE_ROWS, &p, &[&weights, z, &y], n * c)?);
    }
    Ok((plan, weights, y))
}

/// Prepares the backward pass of [`ensemble`] from its weights, the parts and dy: the gate
/// logits' gradient and each part's.
pub fn ensemble_backward(
    gpu: &Gpu,
    weights: &Tensor,
    parts: &[&Tensor],
    dy: &Tensor,
) -> Result<(Vec<Dispatch>, Tensor, Vec<Tensor>)> {
    let (n, c, b) = shapes("gated_ensemble_backward", weights, parts)?;
    dy.expect("gated_ensemble_backward", "dy", DType::F32, &[n, c])?;
    gpu.check_loops(&GATE_ROW_DOT, c as u64)?;
    let dw = gpu.empty(&[n, b], DType::F32)?;
    let mut plan = Vec::with_capacity(2 * b + 1);
    let mut dparts = Vec::with_capacity(b);
    for (k, z) in parts.iter().enumerate() {
        let p = params(n, c, b, k, false);
        let dz = gpu.empty(&[n, c], DType::F32)?;
        plan.push(gpu.dispatch_over(&GATE_SCALE_ROWS, &p, &[weights, dy, &dz], n * c)?);
        plan.push(gpu.dispatch_over(&GATE_ROW_DOT, &p, &[dy, z, &dw], n)?);
        dparts.push(dz);
    }
    let (soft, dgate) = softmax::backward(gpu, weights, &dw, 1.0, false)?;
    plan.push(soft);
    Ok((plan, dgate, dparts))
}

/// The ensemble forward and backward on `n` rows of `c` columns and `b` branches, against the
/// f64 reference: y, the gate's gradient, each branch's.
fn check_case(n: usize, c: usize, b: usize) -> Case {
    let shape = format!("N {n}, C {c}, B {b}");
    let work = Work::Bytes((4 * (3 * b + 2) * n * c) as f64);
    Case::new("gated_ensemble", shape, work, move |gpu| {
        let gate = sample_tensor(gpu, &[n, b], 40)?;
        let parts: Vec<Tensor> = (0..b)
            .map(|k| sample_tensor(gpu, &[n, c], 41 + k as u64))
            .collect::<Result<_>>()?;
        let dy = sample_tensor(gpu, &[n, c], 50)?;
        let refs: Vec<&Tensor> = parts.iter().collect();
        let (mut plan, weights, y) = ensemble(gpu, &gate, &refs)?;
        let (back, dgate, dparts) = ensemble_backward(gpu, &weights, &refs, &dy)?;
        plan.extend(back);
        let mut outputs = vec![y, dgate];
        outputs.extend(dparts);
        Ok(Prepared::new(plan, outputs))
    })
    .reference(move || {
        let gate = sample_f64(n * b, 40);
        let parts: Vec<Vec<f64>> = (0..b).map(|k| sample_f64(n * c, 41 + k as u64)).collect();
        let dy = sample_f64(n * c, 50);
        let mut want = cpu::ensemble(&gate, &parts, c);
        let (dgate, dparts) = cpu::ensemble_backward(&gate, &parts, &dy, c);
        want.extend(dgate);
        want.extend(dparts.into_iter().flatten());
        want
    })
    .tolerance(1e-5, 1e-6)
}

/// The family's catalogue: forward and backward at odd sizes (more rows than a workgroup, one
/// branch and several); for timing, a batch of 10-class branches related to the stream copy.
pub fn cases(_: &Gpu, suite: Suite) -> Vec<Case> {
    if let Suite::Bench { .. } = suite {
        let (n, c, b) = (suite.pick(1024, 8192), 10, 3);
        let bytes = (4 * (3 * b + 2) * n * c) as f64;
        let shape = format!("N {n}, C {c}, B {b} fwd+bwd");
        return vec![memory_case(
            suite,
            "gated_ensemble",
            shape,
            bytes,
            move |gpu| {
                let gate = sample_tensor(gpu, &[n, b], 1)?;
                let parts: Vec<Tensor> = (0..b)
                    .map(|k| sample_tensor(gpu, &[n, c], 2 + k as u64))
                    .collect::<Result<_>>()?;
                let refs: Vec<&Tensor> = parts.iter().collect();
                let (mut plan, weights, y) = ensemble(gpu, &gate, &refs)?;
                let (back, dgate, _) = ensemble_backward(gpu, &weights, &refs, &y)?;
                plan.extend(back);
                Ok(Prepared::new(plan, vec![dgate]))
            },
        )];
    }
    vec![
        check_case(67, 7, 3),
        check_case(5, 10, 1),
        check_case(130, 3, 4),
    ]
}
