//! Batch normalisation (`shaders/batchnorm.wgsl`) over (N, C) features or (N, C, H, W) maps, as
//! PyTorch's BatchNorm1d/2d: batch statistics and running-stat updates in training, running
//! statistics in evaluation; the backward pass in both modes (evaluation's is what gradients
//! with respect to a frozen network's input pass through); and a channel's moments (mean, biased
//! variance) as a value with its own backward pass (DeepInversion's batch-statistic taps).

use crate::Result;
use crate::catalogue::{Case, Prepared, Suite, Work, memory_case, sample_f64, sample_tensor};
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::reference::batchnorm as cpu;

use Binding::{Output as W, ReadOnly as R, ReadWrite as RW, Uniform as U};

/// Consecutive values per lane of the per-value kernels: `RUN` in `shaders/batchnorm.wgsl`.
const VALUES_PER_LANE: usize = 4;

/// The lanes of the per-value kernels (normalising, their backward passes): each takes
/// [`VALUES_PER_LANE`] consecutive values, finding their channels with one division.
fn per_value_lanes(x: &Tensor) -> usize {
    x.numel().div_ceil(VALUES_PER_LANE)
}

/// The per-chunk reduction `kernels[0]`, or its vec4 variant `kernels[1]` where S and the chunk
/// are multiples of 4 (every chunk then walks whole quads of one plane).
fn per_chunk<'a>(kernels: [&'a KernelSpec; 2], p: &Params) -> &'a KernelSpec {
    kernels[usize::from(p.s.is_multiple_of(4) && p.chunk.is_multiple_of(4))]
}

/// Launches a per-value kernel over `p`'s (N, C, S) values: its vec4 variant (`kernels[1]`, a
/// lane per four values of one channel) where S is a multiple of 4, else `kernels[0]`.
fn per_value(
    gpu: &Gpu,
    kernels: [&KernelSpec; 2],
    p: &Params,
    tensors: &[&Tensor],
) -> Result<Dispatch> {
    let values = (p.n * p.c * p.s) as usize;
    if p.s.is_multiple_of(4) {
        gpu.dispatch_over(kernels[1], p, tensors, values / 4)
    } else {
        gpu.dispatch_over(kernels[0], p, tensors, values.div_ceil(VALUES_PER_LANE))
    }
}

/// Per chunk of a channel: its mean and sum of squared deviations.
pub const STATS_PARTIAL: KernelSpec =
    KernelSpec::new::<Params>("batchnorm", "stats_partial", &[U, R, W]);
/// [`STATS_PARTIAL`] a vec4 at a time (S and the chunk multiples of 4).
pub const STATS_PARTIAL_VEC4: KernelSpec =
    KernelSpec::new::<Params>("batchnorm", "stats_partial_vec4", &[U, R, W]);
/// [`GRAD_PARTIAL`] a vec4 at a time (S and the chunk multiples of 4).
pub const GRAD_PARTIAL_VEC4: KernelSpec =
    KernelSpec::new::<Params>("batchnorm", "grad_partial_vec4", &[U, R, R, R, W]);
/// Per channel: the chunks merged into mean and inverse std; running-stat update.
pub const STATS_MERGE: KernelSpec =
    KernelSpec::new::<Params>("batchnorm", "stats_merge", &[U, R, W, RW, RW]);
/// Normalise with batch statistics.
pub const NORMALIZE_TRAIN: KernelSpec =
    KernelSpec::new::<Params>("batchnorm", "normalize_train", &[U, R, R, R, R, W]);
/// Normalise with batch statistics, four values of a channel per lane (S a multiple of 4).
pub const NORMALIZE_TRAIN_VEC4: KernelSpec =
    KernelSpec::new::<Params>("batchnorm", "normalize_train_vec4", &[U, R, R, R, R, W]);
/// Normalise with running statistics, four values of a channel per lane.
pub const NORMALIZE_EVAL_VEC4: KernelSpec =
    KernelSpec::new::<Params>("batchnorm", "normalize_eval_vec4", &[U, R, R, R, R, R, W]);
/// dx of training-mode batch norm, four values of a channel per lane.
pub const BACKWARD_INPUT_VEC4: KernelSpec =
    KernelSpec::new::<Params>("batchnorm", "backward_input_vec4", &[U, R, R, R, R, W]);
/// Normalise with running statistics.
pub const NORMALIZE_EVAL: KernelSpec =
    KernelSpec::new::<Params>("batchnorm", "normalize_eval", &[U, R, R, R, R, R, W]);
/// Per chunk of a channel: Σ dy·x̂ and Σ dy.
pub const GRAD_PARTIAL: KernelSpec =
    KernelSpec::new::<Params>("batchnorm", "grad_partial", &[U, R, R, R, W]);
/// Per channel: dgamma and dbeta from the chunks.
pub const GRAD_MERGE: KernelSpec =
    KernelSpec::new::<Params>("batchnorm", "grad_merge", &[U, R, RW, W, W]);
/// dx.
pub const BACKWARD_INPUT: KernelSpec =
    KernelSpec::new::<Params>("batchnorm", "backward_input", &[U, R, R, R, R, W]);
/// dx in evaluation mode: `dy·γ/sqrt(running_var + ε)`.
pub const BACKWARD_INPUT_EVAL: KernelSpec =
    KernelSpec::new::<Params>("batchnorm", "backward_input_eval", &[U, R, R, R, W]);
/// Per channel: the chunks merged into `[mean; biased variance]`.
pub const MOMENTS_MERGE: KernelSpec =
    KernelSpec::new::<Params>("batchnorm", "moments_merge", &[U, R, W]);
/// dx from the moments' gradient.
pub const MOMENTS_BACKWARD: KernelSpec =
    KernelSpec::new::<Params>("batchnorm", "moments_backward", &[U, R, R, R, W]);

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[
    STATS_PARTIAL,
    STATS_PARTIAL_VEC4,
    GRAD_PARTIAL_VEC4,
    STATS_MERGE,
    NORMALIZE_TRAIN,
    NORMALIZE_TRAIN_VEC4,
    NORMALIZE_EVAL,
    NORMALIZE_EVAL_VEC4,
    BACKWARD_INPUT_VEC4,
    GRAD_PARTIAL,
    GRAD_MERGE,
    BACKWARD_INPUT,
    BACKWARD_INPUT_EVAL,
    MOMENTS_MERGE,
    MOMENTS_BACKWARD,
];

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    s: u32,
    chunk: u32,
    chunks: u32,
    eps: f32,
    momentum: f32,
    /// 1: the normalising kernels apply a ReLU to their output.
    relu: u32,
}

/// Values per chunk and chunks per channel for the per-channel reductions over `len` values:
/// about 64 chunks (parallelism), each of 256 to 4096 values, so that no invocation loops more
/// than 8192 times (llvmpipe stops an invocation's loops after 65535 iterations in all).
pub fn chunking(len: usize) -> (usize, usize) {
    let chunk = len.div_ceil(64).clamp(256, 4096).min(len.max(1));
    (chunk, len.div_ceil(chunk).max(1))
}

/// A BatchNorm layer's tensors: affine parameters and running statistics, each `[C]`.
pub struct BatchNormState<'a> {
    /// Scale γ.
    pub gamma: &'a Tensor,
    /// Shift β.
    pub beta: &'a Tensor,
    /// Running mean (updated in place in training).
    pub running_mean: &'a Tensor,
    /// Running variance (updated in place in training).
    pub running_var: &'a Tensor,
    /// ε.
    pub eps: f32,
    /// Running-stat momentum (PyTorch's default 0.1).
    pub momentum: f32,
}

/// What a training forward pass leaves for its backward pass.
pub struct BatchNormSaved {
    /// `[4, C]`: mean, 1/sqrt(var + eps); rows 2 and 3 are filled by the backward pass.
    pub stats: Tensor,
}

/// The launch parameters for x viewed as (N, C, S), with its chunking; ε and momentum 0.
fn layout(op: &str, x: &Tensor) -> Result<Params> {
    let (n, c, s) = match (x.dtype(), x.shape()) {
        (DType::F32, &[n, c]) => (n, c, 1),
        (DType::F32, &[n, c, h, w]) => (n, c, h * w),
        _ => {
            return Err(shape_error(
                op,
                format!(
                    "x must be f32 (N, C) or (N, C, H, W), got {}{:?}",
                    x.dtype().name(),
                    x.shape()
                ),
            ));
        }
    };
    if n * c * s == 0 {
        return Err(shape_error(op, format!("x {:?} is empty", x.shape())));
    }
    let (chunk, chunks) = chunking(n * s);
    Ok(Params {
        n: n as u32,
        c: c as u32,
        s: s as u32,
        chunk: chunk as u32,
        chunks: chunks as u32,
        eps: 0.0,
        momentum: 0.0,
        relu: 0,
    })
}

fn params(op: &str, x: &Tensor, st: &BatchNormState<'_>) -> Result<Params> {
    let p = layout(op, x)?;
    for (what, t) in [
        ("gamma", st.gamma),
        ("beta", st.beta),
        ("running_mean", st.running_mean),
        ("running_var", st.running_var),
    ] {
        t.expect(op, what, DType::F32, &[p.c as usize])?;
    }
    Ok(Params {
        eps: st.eps,
        momentum: st.momentum,
        ..p
    })
}

/// Prepares the training forward pass: batch statistics (and the running-stat update), then
/// normalisation. Returns the launches, y and what the backward pass needs.
pub fn forward_train(
    gpu: &Gpu,
    x: &Tensor,
    st: &BatchNormState<'_>,
) -> Result<(Vec<Dispatch>, Tensor, BatchNormSaved)> {
    forward_train_fused(gpu, x, st, false)
}

/// [`forward_train`], with `relu`: y = max(BN(x), 0) in the same pass (a BatchNorm whose only
/// reader is a ReLU). The backward pass is unchanged: it reads x and the statistics, not y.
pub fn forward_train_fused(
    gpu: &Gpu,
    x: &Tensor,
    st: &BatchNormState<'_>,
    relu: bool,
) -> Result<(Vec<Dispatch>, Tensor, BatchNormSaved)> {
    let p = Params {
        relu: relu.into(),
        ..params("batch_norm", x, st)?
    };
    let (c, chunks) = (p.c as usize, p.chunks as usize);
    // Two passes over a chunk; the merge walks the chunks.
    gpu.check_loops(&STATS_PARTIAL, 2 * u64::from(p.chunk))?;
    gpu.check_loops(&STATS_MERGE, u64::from(p.chunks))?;
    let stats = gpu.zeros(&[4, c], DType::F32)?;
    let partial = gpu.empty(&[c, chunks, 2], DType::F32)?;
    let y = gpu.empty(x.shape(), DType::F32)?;
    let plan = vec![
        gpu.dispatch_over(
            per_chunk([&STATS_PARTIAL, &STATS_PARTIAL_VEC4], &p),
            &p,
            &[x, &partial],
            c * chunks,
        )?,
        gpu.dispatch_over(
            &STATS_MERGE,
            &p,
            &[&partial, &stats, st.running_mean, st.running_var],
            c,
        )?,
        per_value(
            gpu,
            [&NORMALIZE_TRAIN, &NORMALIZE_TRAIN_VEC4],
            &p,
            &[x, &stats, st.gamma, st.beta, &y],
        )?,
    ];
    Ok((plan, y, BatchNormSaved { stats }))
}

/// Prepares the evaluation forward pass with the running statistics.
pub fn forward_eval(gpu: &Gpu, x: &Tensor, st: &BatchNormState<'_>) -> Result<(Dispatch, Tensor)> {
    forward_eval_fused(gpu, x, st, false)
}

/// [`forward_eval`], with `relu`: y = max(BN(x), 0) in the same pass.
pub fn forward_eval_fused(
    gpu: &Gpu,
    x: &Tensor,
    st: &BatchNormState<'_>,
    relu: bool,
) -> Result<(Dispatch, Tensor)> {
    let p = Params {
        relu: relu.into(),
        ..params("batch_norm", x, st)?
    };
    let y = gpu.empty(x.shape(), DType::F32)?;
    let tensors = [x, st.running_mean, st.running_var, st.gamma, st.beta, &y];
    Ok((
        per_value(gpu, [&NORMALIZE_EVAL, &NORMALIZE_EVAL_VEC4], &p, &tensors)?,
        y,
    ))
}

/// Gradients of a training-mode BatchNorm.
pub struct BatchNormGrads {
    /// dL/dx.
    pub dx: Tensor,
    /// dL/dγ.
    pub dgamma: Tensor,
    /// dL/dβ.
    pub dbeta: Tensor,
}

/// Prepares the training backward pass from x, dy and the forward's saved statistics.
pub fn backward(
    gpu: &Gpu,
    x: &Tensor,
    dy: &Tensor,
    st: &BatchNormState<'_>,
    saved: &BatchNormSaved,
) -> Result<(Vec<Dispatch>, BatchNormGrads)> {
    let p = params("batch_norm_backward", x, st)?;
    let (c, chunks) = (p.c as usize, p.chunks as usize);
    gpu.check_loops(&GRAD_PARTIAL, u64::from(p.chunk))?;
    gpu.check_loops(&GRAD_MERGE, u64::from(p.chunks))?;
    dy.expect("batch_norm_backward", "dy", DType::F32, x.shape())?;
    saved
        .stats
        .expect("batch_norm_backward", "stats", DType::F32, &[4, c])?;
    let dgamma = gpu.empty(&[c], DType::F32)?;
    let dbeta = gpu.empty(&[c], DType::F32)?;
    let dx = gpu.empty(x.shape(), DType::F32)?;
    let partial = gpu.empty(&[c, chunks, 2], DType::F32)?;
    let plan = vec![
        gpu.dispatch_over(
            per_chunk([&GRAD_PARTIAL, &GRAD_PARTIAL_VEC4], &p),
            &p,
            &[x, dy, &saved.stats, &partial],
            c * chunks,
        )?,
        gpu.dispatch_over(
            &GRAD_MERGE,
            &p,
            &[&partial, &saved.stats, &dgamma, &dbeta],
            c,
        )?,
        per_value(
            gpu,
            [&BACKWARD_INPUT, &BACKWARD_INPUT_VEC4],
            &p,
            &[x, dy, &saved.stats, st.gamma, &dx],
        )?,
    ];
    Ok((plan, BatchNormGrads { dx, dgamma, dbeta }))
}

/// Prepares the evaluation-mode backward pass into a tensor shaped like `x`: the running
/// statistics are constants, so `dx = dy·γ/sqrt(running_var + ε)` (γ and β get no gradient here:
/// a network in evaluation mode is a frozen one).
pub fn backward_eval(
    gpu: &Gpu,
    x: &Tensor,
    dy: &Tensor,
    st: &BatchNormState<'_>,
) -> Result<(Dispatch, Tensor)> {
    let p = params("batch_norm_backward_eval", x, st)?;
    dy.expect("batch_norm_backward_eval", "dy", DType::F32, x.shape())?;
    let dx = gpu.empty(x.shape(), DType::F32)?;
    let tensors = [dy, st.running_var, st.gamma, &dx];
    Ok((
        gpu.dispatch_over(&BACKWARD_INPUT_EVAL, &p, &tensors, per_value_lanes(x))?,
        dx,
    ))
}

/// Prepares the per-channel moments of `x` ((N, C) or (N, C, H, W)): `[2, C]`, the mean and the
/// biased variance over N and the spatial positions (what a BatchNorm layer normalises with in
/// training, as DeepInversion computes them), by the training statistics' chunks.
pub fn moments(gpu: &Gpu, x: &Tensor) -> Result<(Vec<Dispatch>, Tensor)> {
    let p = layout("channel_moments", x)?;
    let (c, chunks) = (p.c as usize, p.chunks as usize);
    gpu.check_loops(&STATS_PARTIAL, 2 * u64::from(p.chunk))?;
    gpu.check_loops(&MOMENTS_MERGE, u64::from(p.chunks))?;
    let partial = gpu.empty(&[c, chunks, 2], DType::F32)?;
    let out = gpu.empty(&[2, c], DType::F32)?;
    let plan = vec![
        gpu.dispatch_over(
            per_chunk([&STATS_PARTIAL, &STATS_PARTIAL_VEC4], &p),
            &p,
            &[x, &partial],
            c * chunks,
        )?,
        gpu.dispatch_over(&MOMENTS_MERGE, &p, &[&partial, &out], c)?,
    ];
    Ok((plan, out))
}

/// Prepares the moments' backward pass: `dx = (dmean + 2·dvar·(x − mean))/M`, M = N·H·W.
pub fn moments_backward(
    gpu: &Gpu,
    x: &Tensor,
    moments: &Tensor,
    dmoments: &Tensor,
) -> Result<(Dispatch, Tensor)> {
    let p = layout("channel_moments_backward", x)?;
    let c = p.c as usize;
    moments.expect("channel_moments_backward", "moments", DType::F32, &[2, c])?;
    dmoments.expect("channel_moments_backward", "dmoments", DType::F32, &[2, c])?;
    let dx = gpu.empty(x.shape(), DType::F32)?;
    Ok((
        gpu.dispatch_over(
            &MOMENTS_BACKWARD,
            &p,
            &[x, moments, dmoments, &dx],
            per_value_lanes(x),
        )?,
        dx,
    ))
}

/// The family's catalogue: training forward and backward on small maps and on a channel longer
/// than one chunk (merged statistics), against the f64 reference.
pub fn cases(_: &Gpu, suite: Suite) -> Vec<Case> {
    let state = |gpu: &Gpu, c: usize| -> Result<[Tensor; 4]> {
        Ok([
            sample_tensor(gpu, &[c], 10)?,
            sample_tensor(gpu, &[c], 11)?,
            gpu.zeros(&[c], DType::F32)?,
            gpu.zeros(&[c], DType::F32)?,
        ])
    };
    fn st(t: &[Tensor; 4]) -> BatchNormState<'_> {
        BatchNormState {
            gamma: &t[0],
            beta: &t[1],
            running_mean: &t[2],
            running_var: &t[3],
            eps: 1e-5,
            momentum: 0.1,
        }
    }
    if let Suite::Bench { .. } = suite {
        let shape = [suite.pick(8, 64), 64, 32, 32];
        let n: usize = shape.iter().product();
        return vec![memory_case(
            suite,
            "batch_norm",
            format!("{shape:?} train"),
            8.0 * n as f64,
            move |gpu| {
                let t = state(gpu, shape[1])?;
                let (plan, y, _) = forward_train(gpu, &sample_tensor(gpu, &shape, 9)?, &st(&t))?;
                Ok(Prepared::new(plan, vec![y]))
            },
        )];
    }
    let mut cases = Vec::new();
    for [n, c, s] in [[5usize, 3, 25], [301, 2, 1], [128, 3, 97]] {
        let len = n * c * s;
        cases.push(
            Case::new(
                "batch_norm train fwd+bwd",
                format!("[{n}, {c}, {s}, 1]"),
                Work::Bytes(24.0 * len as f64),
                move |gpu| {
                    let t = state(gpu, c)?;
                    let x = sample_tensor(gpu, &[n, c, s, 1], 31)?;
                    let dy = sample_tensor(gpu, &[n, c, s, 1], 34)?;
                    let (mut plan, y, saved) = forward_train(gpu, &x, &st(&t))?;
                    let (back, g) = backward(gpu, &x, &dy, &st(&t), &saved)?;
                    plan.extend(back);
                    Ok(Prepared::new(plan, vec![y, g.dx, g.dgamma, g.dbeta]))
                },
            )
            .reference(move || {
                let (x, dy) = (sample_f64(len, 31), sample_f64(len, 34));
                let (gamma, beta) = (sample_f64(c, 10), sample_f64(c, 11));
                let mut want = cpu::batch_norm(&x, n, c, s, &gamma, &beta, 1e-5).0;
                let (dx, dg, db) = cpu::batch_norm_backward(&x, &dy, n, c, s, &gamma, 1e-5);
                want.extend(dx);
                want.extend(dg);
                want.extend(db);
                want
            })
            .tolerance(1e-3, 1e-5),
        );
        // Evaluation mode's input gradient, and the moments (one chunk; several chunks merged)
        // with theirs.
        cases.push(
            Case::new(
                "batch_norm eval bwd",
                format!("[{n}, {c}, {s}, 1]"),
                Work::Bytes(8.0 * len as f64),
                move |gpu| {
                    let t = state(gpu, c)?;
                    let rv = gpu.upload(&[c], &[0.5, 2.0, 0.01][..c])?;
                    let x = sample_tensor(gpu, &[n, c, s, 1], 31)?;
                    let dy = sample_tensor(gpu, &[n, c, s, 1], 34)?;
                    let st = BatchNormState {
                        running_var: &rv,
                        ..st(&t)
                    };
                    let (d, dx) = backward_eval(gpu, &x, &dy, &st)?;
                    Ok(Prepared::new(vec![d], vec![dx]))
                },
            )
            .reference(move || {
                let rv = [0.5, 2.0, 0.01][..c].to_vec();
                let gamma = sample_f64(c, 10);
                cpu::batch_norm_eval_backward(&sample_f64(len, 34), c, s, &gamma, &rv, 1e-5)
            }),
        );
        cases.push(
            Case::new(
                "channel_moments fwd+bwd",
                format!("[{n}, {c}, {s}, 1]"),
                Work::Bytes(12.0 * len as f64),
                move |gpu| {
                    let x = sample_tensor(gpu, &[n, c, s, 1], 31)?;
                    let dm = sample_tensor(gpu, &[2, c], 35)?;
                    let (mut plan, m) = moments(gpu, &x)?;
                    let (d, dx) = moments_backward(gpu, &x, &m, &dm)?;
                    plan.push(d);
                    Ok(Prepared::new(plan, vec![m, dx]))
                },
            )
            .reference(move || {
                let x = sample_f64(len, 31);
                let mut want = cpu::moments(&x, n, c, s);
                want.extend(cpu::moments_backward(&x, n, c, s, &sample_f64(2 * c, 35)));
                want
            })
            .tolerance(1e-4, 1e-6),
        );
    }
    cases
}
