//! Max, average, adaptive average and global average pooling over NCHW tensors
//! (`shaders/pool.wgsl`).

use crate::Result;
use crate::catalogue::{Case, Prepared, Suite, Work, memory_case, sample_f64, sample_tensor};
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::kernels::reduce::{AxisOp, reduce_axis};
use crate::reference::conv::Window;
use crate::reference::pool as cpu;

use Binding::{Output as W, ReadOnly as R, Uniform as U};

/// Max pooling, writing the argmax.
pub const MAX_POOL_FORWARD: KernelSpec =
    KernelSpec::new::<Params>("pool", "max_pool_forward", &[U, R, W, W]);
/// Max pooling backward for 2 × 2 windows that tile the input (two pairs per window).
pub const MAX_POOL_BACKWARD_2X2: KernelSpec =
    KernelSpec::new::<Params>("pool", "max_pool_backward_2x2", &[U, R, R, R, W]);
/// Max pooling over 2 × 2 windows at stride 2, unpadded, on maps of even width.
pub const MAX_POOL_FORWARD_2X2: KernelSpec =
    KernelSpec::new::<Params>("pool", "max_pool_forward_2x2", &[U, R, W, W]);
/// Max pooling backward (gather by argmax).
pub const MAX_POOL_BACKWARD: KernelSpec =
    KernelSpec::new::<Params>("pool", "max_pool_backward", &[U, R, R, R, W]);
/// Max pooling backward for windows that tile the input (one invocation per window).
pub const MAX_POOL_BACKWARD_TILED: KernelSpec =
    KernelSpec::new::<Params>("pool", "max_pool_backward_tiled", &[U, R, R, R, W]);
/// Average pooling.
pub const AVG_POOL_FORWARD: KernelSpec =
    KernelSpec::new::<Params>("pool", "avg_pool_forward", &[U, R, W]);
/// Average pooling backward.
pub const AVG_POOL_BACKWARD: KernelSpec =
    KernelSpec::new::<Params>("pool", "avg_pool_backward", &[U, R, W]);
/// Global average pooling backward.
pub const GLOBAL_AVG_POOL_BACKWARD: KernelSpec =
    KernelSpec::new::<Params>("pool", "global_avg_pool_backward", &[U, R, W]);

/// Adaptive average pooling to a given output size.
pub const ADAPTIVE_AVG_POOL_FORWARD: KernelSpec =
    KernelSpec::new::<Params>("pool", "adaptive_avg_pool_forward", &[U, R, W]);
/// Adaptive average pooling backward.
pub const ADAPTIVE_AVG_POOL_BACKWARD: KernelSpec =
    KernelSpec::new::<Params>("pool", "adaptive_avg_pool_backward", &[U, R, W]);

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[
    ADAPTIVE_AVG_POOL_FORWARD,
    ADAPTIVE_AVG_POOL_BACKWARD,
    MAX_POOL_FORWARD,
    MAX_POOL_FORWARD_2X2,
    MAX_POOL_BACKWARD,
    MAX_POOL_BACKWARD_TILED,
    MAX_POOL_BACKWARD_2X2,
    AVG_POOL_FORWARD,
    AVG_POOL_BACKWARD,
    GLOBAL_AVG_POOL_BACKWARD,
];

/// Window, stride and padding of a 2-D pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2d {
    /// Window (height, width).
    pub kernel: [usize; 2],
    /// Stride (height, width).
    pub stride: [usize; 2],
    /// Zero padding (height, width).
    pub padding: [usize; 2],
}

impl Pool2d {
    /// Output (height, width) for an input of (h, w): floor mode, as PyTorch's default.
    pub fn output_size(&self, h: usize, w: usize) -> Option<[usize; 2]> {
        let out =
            |i: usize, k: usize, s: usize, p: usize| (i + 2 * p).checked_sub(k).map(|v| v / s + 1);
        Some([
            out(h, self.kernel[0], self.stride[0], self.padding[0])?,
            out(w, self.kernel[1], self.stride[1], self.padding[1])?,
        ])
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default)]
struct Params {
    planes: u32,
    h: u32,
    w: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    relu_mask: u32,
}

impl Params {
    /// Pooling whose windows follow from the sizes alone (adaptive and global pooling).
    fn windowless(planes: usize, input: [usize; 2], out: [usize; 2]) -> Params {
        let u = |v: usize| v as u32;
        Params {
            planes: u(planes),
            h: u(input[0]),
            w: u(input[1]),
            ho: u(out[0]),
            wo: u(out[1]),
            ..Params::default()
        }
    }
}

fn nchw(op: &str, x: &Tensor) -> Result<[usize; 4]> {
    match (x.dtype(), x.shape()) {
        (DType::F32, &[n, c, h, w]) if n * c * h * w > 0 => Ok([n, c, h, w]),
        _ => Err(shape_error(
            op,
            format!(
                "x must be a non-empty f32 (N, C, H, W) tensor, got {}{:?}",
                x.dtype().name(),
                x.shape()
            ),
        )),
    }
}

/// Checks x and the window for `spec`'s launch; returns the parameters and output shape.
fn params(gpu: &Gpu, spec: &KernelSpec, x: &Tensor, pool: &Pool2d) -> Result<(Params, [usize; 4])> {
    let op = spec.entry;
    let [n, c, h, w] = nchw(op, x)?;
    // Each kernel loops over a window (or the windows covering an input), kh × kw at most.
    let [kh, kw] = pool.kernel.map(|k| k as u64);
    gpu.check_loops(spec, kh * (1 + kw))?;
    let valid = pool.kernel.iter().chain(&pool.stride).all(|&v| v > 0)
        && pool.padding[0] * 2 <= pool.kernel[0]
        && pool.padding[1] * 2 <= pool.kernel[1];
    let [ho, wo] = pool.output_size(h, w).filter(|_| valid).ok_or_else(|| {
        shape_error(
            op,
            format!(
                "{pool:?} does not fit a {h}×{w} input (kernel and stride ≥ 1, padding ≤ kernel/2)"
            ),
        )
    })?;
    let u = |v: usize| v as u32;
    Ok((
        Params {
            planes: u(n * c),
            h: u(h),
            w: u(w),
            ho: u(ho),
            wo: u(wo),
            kh: u(pool.kernel[0]),
            kw: u(pool.kernel[1]),
            sh: u(pool.stride[0]),
            sw: u(pool.stride[1]),
            ph: u(pool.padding[0]),
            pw: u(pool.padding[1]),
            relu_mask: 0,
        },
        [n, c, ho, wo],
    ))
}

/// The grid of the max-pooling kernels: (chunks of 64 positions of a plane of `per_plane`,
/// planes folded over y and z).
fn planar_grid(gpu: &Gpu, planes: u32, per_plane: usize) -> Result<[u32; 3]> {
    let max = gpu.caps().limits.max_compute_workgroups_per_dimension;
    let y = planes.min(max);
    let grid = [per_plane.div_ceil(64) as u32, y, planes.div_ceil(y)];
    if grid[0] > max || grid[2] > max || per_plane >= super::QUOT_LIMIT {
        return Err(shape_error(
            "max_pool",
            format!("{planes} planes of {per_plane} positions exceed the adapter's grid"),
        ));
    }
    Ok(grid)
}

/// Prepares max pooling; returns the launch, the output and the argmax (i32, same shape) that
/// the backward pass needs.
pub fn max_pool_forward(
    gpu: &Gpu,
    x: &Tensor,
    pool: &Pool2d,
) -> Result<(Dispatch, Tensor, Tensor)> {
    // 2 × 2 at stride 2 on an even width reads each window as two aligned pairs.
    let pairs = pool.kernel == [2, 2]
        && pool.stride == [2, 2]
        && pool.padding == [0, 0]
        && x.shape().get(3).is_some_and(|w| w.is_multiple_of(2));
    let spec = if pairs {
        &MAX_POOL_FORWARD_2X2
    } else {
        &MAX_POOL_FORWARD
    };
    let (p, out_shape) = params(gpu, spec, x, pool)?;
    let y = gpu.empty(&out_shape, DType::F32)?;
    let arg = gpu.empty(&out_shape, DType::I32)?;
    let grid = planar_grid(gpu, p.planes, out_shape[2] * out_shape[3])?;
    let d = gpu.dispatch_grid(spec, &[], &p, &[x, &y, &arg], grid)?;
    Ok((d, y, arg))
}

/// Prepares max pooling's backward pass into a tensor shaped like the input `x`.
pub fn max_pool_backward(
    gpu: &Gpu,
    x: &Tensor,
    pool: &Pool2d,
    arg: &Tensor,
    dy: &Tensor,
) -> Result<(Dispatch, Tensor)> {
    max_pool_backward_masked(gpu, x, pool, arg, dy, None)
}

/// Whether `pool`'s windows tile an h × w input exactly (each input in exactly one window).
pub fn tiles_exactly(pool: &Pool2d, h: usize, w: usize) -> bool {
    pool.kernel == pool.stride
        && pool.padding == [0, 0]
        && h.is_multiple_of(pool.kernel[0])
        && w.is_multiple_of(pool.kernel[1])
}

/// [`max_pool_backward`], with the backward pass of a ReLU before the pooling fused in when
/// `relu_output` is the pooling's output `y` (the ReLU's only reader being this pooling): the
/// gradient passes where y > 0, as the ReLU's would have (its output at the argmax is y). Windows
/// that tile the input take a kernel of one invocation per window.
pub fn max_pool_backward_masked(
    gpu: &Gpu,
    x: &Tensor,
    pool: &Pool2d,
    arg: &Tensor,
    dy: &Tensor,
    relu_output: Option<&Tensor>,
) -> Result<(Dispatch, Tensor)> {
    let [h, w] = [x.shape().get(2), x.shape().get(3)].map(|d| d.copied().unwrap_or(0));
    let tiled = tiles_exactly(pool, h, w);
    let spec = match (tiled, pool.kernel) {
        (true, [2, 2]) => &MAX_POOL_BACKWARD_2X2,
        (true, _) => &MAX_POOL_BACKWARD_TILED,
        (false, _) => &MAX_POOL_BACKWARD,
    };
    let (mut p, out_shape) = params(gpu, spec, x, pool)?;
    arg.expect("max_pool_backward", "argmax", DType::I32, &out_shape)?;
    dy.expect("max_pool_backward", "dy", DType::F32, &out_shape)?;
    if let Some(y) = relu_output {
        y.expect("max_pool_backward", "relu_output", DType::F32, &out_shape)?;
        p.relu_mask = 1;
    }
    let dx = gpu.empty(x.shape(), DType::F32)?;
    // Without a mask the pooled output is not read: dy stands in for its binding.
    let y = relu_output.unwrap_or(dy);
    let per_plane = if tiled {
        out_shape[2] * out_shape[3]
    } else {
        h * w
    };
    Ok((
        gpu.dispatch_grid(
            spec,
            &[],
            &p,
            &[arg, dy, y, &dx],
            planar_grid(gpu, p.planes, per_plane)?,
        )?,
        dx,
    ))
}

/// Prepares average pooling (padding counted in the divisor, as PyTorch's default).
pub fn avg_pool_forward(gpu: &Gpu, x: &Tensor, pool: &Pool2d) -> Result<(Dispatch, Tensor)> {
    let (p, out_shape) = params(gpu, &AVG_POOL_FORWARD, x, pool)?;
    let y = gpu.empty(&out_shape, DType::F32)?;
    Ok((
        gpu.dispatch_over(&AVG_POOL_FORWARD, &p, &[x, &y], y.numel())?,
        y,
    ))
}

/// Prepares average pooling's backward pass into a tensor shaped like the input `x`.
pub fn avg_pool_backward(
    gpu: &Gpu,
    x: &Tensor,
    pool: &Pool2d,
    dy: &Tensor,
) -> Result<(Dispatch, Tensor)> {
    let (p, out_shape) = params(gpu, &AVG_POOL_BACKWARD, x, pool)?;
    dy.expect("avg_pool_backward", "dy", DType::F32, &out_shape)?;
    let dx = gpu.empty(x.shape(), DType::F32)?;
    Ok((
        gpu.dispatch_over(&AVG_POOL_BACKWARD, &p, &[dy, &dx], dx.numel())?,
        dx,
    ))
}

/// The parameters of adaptive average pooling from `x`'s (H, W) to `out`.
fn adaptive_params(gpu: &Gpu, spec: &KernelSpec, x: &Tensor, out: [usize; 2]) -> Result<Params> {
    let op = spec.entry;
    let [n, c, h, w] = nchw(op, x)?;
    if out[0] == 0 || out[1] == 0 {
        return Err(shape_error(
            op,
            format!("output size {out:?} must be at least 1×1"),
        ));
    }
    // The forward pass loops over a window, ⌈h/oh⌉ + 1 rows at most; the backward pass over the
    // windows covering an input, ⌈oh/h⌉ + 1.
    let span = |a: usize, b: usize| (a.div_ceil(b) + 1) as u64;
    gpu.check_loops(spec, span(h, out[0]) * (1 + span(w, out[1])))?;
    gpu.check_loops(spec, span(out[0], h) * (1 + span(out[1], w)))?;
    Ok(Params::windowless(n * c, [h, w], out))
}

/// Prepares adaptive average pooling to an `out` = (OH, OW) grid, as PyTorch's
/// `adaptive_avg_pool2d`: output cell (i, j) averages input rows `⌊i·H/OH⌋ … ⌈(i+1)·H/OH⌉ − 1`
/// and the columns likewise (overlapping windows when OH does not divide H).
pub fn adaptive_avg_pool_forward(
    gpu: &Gpu,
    x: &Tensor,
    out: [usize; 2],
) -> Result<(Dispatch, Tensor)> {
    let p = adaptive_params(gpu, &ADAPTIVE_AVG_POOL_FORWARD, x, out)?;
    let y = gpu.empty(&[x.shape()[0], x.shape()[1], out[0], out[1]], DType::F32)?;
    Ok((
        gpu.dispatch_over(&ADAPTIVE_AVG_POOL_FORWARD, &p, &[x, &y], y.numel())?,
        y,
    ))
}

/// Prepares adaptive average pooling's backward pass into a tensor shaped like the input `x`.
pub fn adaptive_avg_pool_backward(
    gpu: &Gpu,
    x: &Tensor,
    dy: &Tensor,
) -> Result<(Dispatch, Tensor)> {
    let out = match dy.shape() {
        &[_, _, oh, ow] => [oh, ow],
        other => {
            return Err(shape_error(
                "adaptive_avg_pool_backward",
                format!("dy must be (N, C, OH, OW), got {other:?}"),
            ));
        }
    };
    let p = adaptive_params(gpu, &ADAPTIVE_AVG_POOL_BACKWARD, x, out)?;
    let [n, c] = [x.shape()[0], x.shape()[1]];
    dy.expect(
        "adaptive_avg_pool_backward",
        "dy",
        DType::F32,
        &[n, c, out[0], out[1]],
    )?;
    let dx = gpu.empty(x.shape(), DType::F32)?;
    Ok((
        gpu.dispatch_over(&ADAPTIVE_AVG_POOL_BACKWARD, &p, &[dy, &dx], dx.numel())?,
        dx,
    ))
}

/// Prepares global average pooling: (N, C, H, W) → (N, C).
pub fn global_avg_pool_forward(gpu: &Gpu, x: &Tensor) -> Result<(Dispatch, Tensor)> {
    let [n, c, h, w] = nchw("global_avg_pool", x)?;
    reduce_axis(gpu, &x.reshape(&[n, c, h * w])?, 2, AxisOp::Mean)
}

/// Prepares global average pooling's backward pass: dx = dy / (H·W) broadcast over each plane.
pub fn global_avg_pool_backward(gpu: &Gpu, x: &Tensor, dy: &Tensor) -> Result<(Dispatch, Tensor)> {
    let [n, c, h, w] = nchw("global_avg_pool_backward", x)?;
    dy.expect("global_avg_pool_backward", "dy", DType::F32, &[n, c])?;
    let p = Params::windowless(n * c, [h, w], [1, 1]);
    let dx = gpu.empty(x.shape(), DType::F32)?;
    Ok((
        gpu.dispatch_over(&GLOBAL_AVG_POOL_BACKWARD, &p, &[dy, &dx], dx.numel())?,
        dx,
    ))
}

/// The family's catalogue: max and average pooling forward and backward on odd maps with
/// padding and overlapping windows; adaptive and global average pooling.
pub fn cases(_: &Gpu, suite: Suite) -> Vec<Case> {
    if let Suite::Bench { .. } = suite {
        let shape = [suite.pick(8, 64), 64, 32, 32];
        let n: usize = shape.iter().product();
        let bytes = 4.0 * n as f64 + 8.0 * (n / 4) as f64;
        let spec = Pool2d {
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
        };
        return vec![memory_case(
            suite,
            "max_pool2d",
            format!("{shape:?} 2x2"),
            bytes,
            move |gpu| {
                let (d, y, _) = max_pool_forward(gpu, &sample_tensor(gpu, &shape, 8)?, &spec)?;
                Ok(Prepared::new(vec![d], vec![y]))
            },
        )];
    }
    let mut cases = Vec::new();
    for ([n, c, h, w], k, s, p) in [
        ([2usize, 3, 7, 9], 3usize, 2usize, 1usize),
        ([3, 2, 28, 28], 2, 2, 0),
    ] {
        let win = Window {
            n,
            c,
            h,
            w,
            k: [k, k],
            s: [s, s],
            p: [p, p],
        };
        let spec = Pool2d {
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
        };
        let [ho, wo] = win.out();
        let (len, out_len) = (n * c * h * w, n * c * ho * wo);
        let shape = format!("[{n}, {c}, {h}, {w}] {k}x{k}/{s} pad {p}");
        let work = Work::Bytes(4.0 * (2 * len + 2 * out_len) as f64);
        cases.push(
            Case::new("max_pool2d fwd+bwd", shape.clone(), work, move |gpu| {
                let x = sample_tensor(gpu, &[n, c, h, w], 30)?;
                let dy = sample_tensor(gpu, &[n, c, ho, wo], 31)?;
                let (f, y, arg) = max_pool_forward(gpu, &x, &spec)?;
                let (b, dx) = max_pool_backward(gpu, &x, &spec, &arg, &dy)?;
                Ok(Prepared::new(vec![f, b], vec![y, dx]))
            })
            .reference(move || {
                let (mut y, arg) = cpu::max_pool(&sample_f64(len, 30), &win);
                y.extend(cpu::max_pool_backward(&arg, &sample_f64(out_len, 31), &win));
                y
            }),
        );
        // With a ReLU's backward fused in: dy passes only where the pooled value is positive.
        cases.push(
            Case::new("max_pool2d bwd + relu", shape.clone(), work, move |gpu| {
                let x = sample_tensor(gpu, &[n, c, h, w], 30)?;
                let dy = sample_tensor(gpu, &[n, c, ho, wo], 31)?;
                let (f, y, arg) = max_pool_forward(gpu, &x, &spec)?;
                let (b, dx) = max_pool_backward_masked(gpu, &x, &spec, &arg, &dy, Some(&y))?;
                Ok(Prepared::new(vec![f, b], vec![dx]))
            })
            .reference(move || {
                let (y, arg) = cpu::max_pool(&sample_f64(len, 30), &win);
                let dy: Vec<f64> = sample_f64(out_len, 31)
                    .iter()
                    .zip(&y)
                    .map(|(g, y)| if *y > 0.0 { *g } else { 0.0 })
                    .collect();
                cpu::max_pool_backward(&arg, &dy, &win)
            }),
        );
        cases.push(
            Case::new("avg_pool2d fwd+bwd", shape, work, move |gpu| {
                let x = sample_tensor(gpu, &[n, c, h, w], 30)?;
                let dy = sample_tensor(gpu, &[n, c, ho, wo], 31)?;
                let (f, y) = avg_pool_forward(gpu, &x, &spec)?;
                let (b, dx) = avg_pool_backward(gpu, &x, &spec, &dy)?;
                Ok(Prepared::new(vec![f, b], vec![y, dx]))
            })
            .reference(move || {
                let mut y = cpu::avg_pool(&sample_f64(len, 30), &win);
                y.extend(cpu::avg_pool_backward(&sample_f64(out_len, 31), &win));
                y
            }),
        );
    }
    // Adaptive pooling: overlapping windows (7 → 4, 9 → 5), exact ones (28 → 7), and a grid
    // larger than the input (3 → 5).
    for ([n, c, h, w], [oh, ow]) in [
        ([2usize, 3, 7, 9], [4usize, 5usize]),
        ([3, 2, 28, 28], [7, 7]),
        ([1, 4, 3, 6], [5, 4]),
    ] {
        let (len, out_len) = (n * c * h * w, n * c * oh * ow);
        cases.push(
            Case::new(
                "adaptive_avg_pool2d fwd+bwd",
                format!("[{n}, {c}, {h}, {w}] → {oh}×{ow}"),
                Work::Bytes(4.0 * (2 * len + 2 * out_len) as f64),
                move |gpu| {
                    let x = sample_tensor(gpu, &[n, c, h, w], 34)?;
                    let dy = sample_tensor(gpu, &[n, c, oh, ow], 35)?;
                    let (f, y) = adaptive_avg_pool_forward(gpu, &x, [oh, ow])?;
                    let (b, dx) = adaptive_avg_pool_backward(gpu, &x, &dy)?;
                    Ok(Prepared::new(vec![f, b], vec![y, dx]))
                },
            )
            .reference(move || {
                let shape = [n, c, h, w];
                let mut y = cpu::adaptive_avg_pool(&sample_f64(len, 34), shape, [oh, ow]);
                y.extend(cpu::adaptive_avg_pool_backward(
                    &sample_f64(out_len, 35),
                    shape,
                    [oh, ow],
                ));
                y
            }),
        );
    }
    let [n, c, h, w] = [3usize, 5, 7, 9];
    cases.push(
        Case::new(
            "global_avg_pool fwd+bwd",
            format!("[{n}, {c}, {h}, {w}]"),
            Work::Bytes(8.0 * (n * c * h * w) as f64),
            move |gpu| {
                let x = sample_tensor(gpu, &[n, c, h, w], 32)?;
                let dy = sample_tensor(gpu, &[n, c], 33)?;
                let (f, y) = global_avg_pool_forward(gpu, &x)?;
                let (b, dx) = global_avg_pool_backward(gpu, &x, &dy)?;
                Ok(Prepared::new(vec![f, b], vec![y, dx]))
            },
        )
        .reference(move || {
            let x = sample_f64(n * c * h * w, 32);
            let dy = sample_f64(n * c, 33);
            let hw = h * w;
            let y = x.chunks(hw).map(|p| p.iter().sum::<f64>() / hw as f64);
            let dx = (0..n * c * hw).map(|i| dy[i / hw] / hw as f64);
            y.chain(dx).collect()
        }),
    );
    cases
}
