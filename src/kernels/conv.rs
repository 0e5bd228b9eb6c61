//! 2-D convolution over NCHW tensors (`shaders/conv.wgsl`): forward as an implicit GEMM,
//! gradients of the input and the weight, and the bias gradient as a reduction of dy.

use crate::Result;
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::kernels::reduce::{AxisOp, reduce_axis};

use Binding::{Output as W, ReadOnly as R, Uniform as U};

/// Forward (implicit GEMM, 4 positions × 8 channels per invocation).
pub const CONV_FORWARD: KernelSpec = KernelSpec {
    family: "conv",
    entry: "conv_forward",
    bindings: &[U, R, R, R, W],
};
/// Gradient of the input.
pub const CONV_BACKWARD_INPUT: KernelSpec = KernelSpec {
    family: "conv",
    entry: "conv_backward_input",
    bindings: &[U, R, R, W],
};
/// Gradient of the weight.
pub const CONV_BACKWARD_WEIGHT: KernelSpec = KernelSpec {
    family: "conv",
    entry: "conv_backward_weight",
    bindings: &[U, R, R, W],
};

/// Forward with subgroup-shared weights, 64 positions × 16 channels per 8-lane workgroup
/// (CPU-like drivers with subgroups).
pub const CONV_FORWARD_SG: KernelSpec = KernelSpec {
    family: "conv_subgroup",
    entry: "conv_forward_sg",
    bindings: &[U, R, R, R, W],
};

/// Gradient of the input with subgroup-shared weights (CPU-like drivers with subgroups).
pub const CONV_BACKWARD_INPUT_SG: KernelSpec = KernelSpec {
    family: "conv_subgroup",
    entry: "conv_backward_input_sg",
    bindings: &[U, R, R, W],
};
/// Per-chunk partial gradients of the weight with subgroup-shared dy, summed by a reduction.
pub const CONV_BACKWARD_WEIGHT_SG: KernelSpec = KernelSpec {
    family: "conv_subgroup",
    entry: "conv_backward_weight_sg",
    bindings: &[U, R, R, W],
};

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[
    CONV_FORWARD,
    CONV_BACKWARD_INPUT,
    CONV_BACKWARD_WEIGHT,
    CONV_FORWARD_SG,
    CONV_BACKWARD_INPUT_SG,
    CONV_BACKWARD_WEIGHT_SG,
];

/// Positions (or weight columns) × channels per workgroup of the subgroup kernels.
const SUBGROUP_BLOCK: (usize, usize) = (64, 16);

/// Whether to use the subgroup kernels for a launch of `grid` workgroups: `requested` as in
/// [`forward_with`].
fn use_subgroups(gpu: &Gpu, requested: Option<bool>, grid: &[usize]) -> Result<bool> {
    let max = gpu.caps().limits.max_compute_workgroups_per_dimension as usize;
    let blocker = grid.iter().any(|&g| g > max).then(|| {
        format!("a grid of {grid:?} workgroups exceeds the adapter's {max} per dimension")
    });
    let style = gpu.caps().kernel_style;
    super::use_subgroup_variant(gpu, "conv2d", requested, style, blocker)
}

/// Stride and zero padding of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// Stride (height, width).
    pub stride: [usize; 2],
    /// Zero padding (height, width).
    pub padding: [usize; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    bias: u32,
    // The weight gradient's chunk: images (conv_backward_weight) or output positions
    // (conv_backward_weight_sg).
    chunk: u32,
    pad: u32,
}

/// Loop iterations of loops nested with these trip counts, outermost first (each iteration of
/// an inner loop counts, and so does each of an outer one).
fn nested_trips(trips: &[u32]) -> u64 {
    trips
        .iter()
        .rev()
        .fold(0, |inner, &t| u64::from(t) * (1 + inner))
}

/// Checks x (N, Cin, H, W) and w (Cout, Cin, KH, KW); returns the parameters and output shape.
fn params(op: &str, x: &Tensor, w: &Tensor, conv: &Conv2d) -> Result<(Params, [usize; 4])> {
    let four = |what: &str, t: &Tensor| -> Result<[usize; 4]> {
        match (t.dtype(), t.shape()) {
            (DType::F32, &[a, b, c, d]) if a * b * c * d > 0 => Ok([a, b, c, d]),
            _ => Err(shape_error(
                op,
                format!(
                    "{what} must be a non-empty f32 4-D tensor, got {}{:?}",
                    t.dtype().name(),
                    t.shape()
                ),
            )),
        }
    };
    let [n, cin, h, wd] = four("x", x)?;
    let [cout, wcin, kh, kw] = four("weight", w)?;
    if wcin != cin {
        return Err(shape_error(
            op,
            format!(
                "x {:?} has {cin} channels but weight {:?} expects {wcin}",
                x.shape(),
                w.shape()
            ),
        ));
    }
    let [sh, sw] = conv.stride;
    let [ph, pw] = conv.padding;
    let out = |i: usize, k: usize, s: usize, p: usize| {
        (i + 2 * p)
            .checked_sub(k)
            .filter(|_| s > 0)
            .map(|v| v / s + 1)
    };
    let (Some(ho), Some(wo)) = (out(h, kh, sh, ph), out(wd, kw, sw, pw)) else {
        return Err(shape_error(
            op,
            format!("a {kh}×{kw} kernel with {conv:?} does not fit a {h}×{wd} input"),
        ));
    };
    let u = |v: usize| v as u32;
    let p = Params {
        n: u(n),
        cin: u(cin),
        h: u(h),
        w: u(wd),
        cout: u(cout),
        ho: u(ho),
        wo: u(wo),
        kh: u(kh),
        kw: u(kw),
        sh: u(sh),
        sw: u(sw),
        ph: u(ph),
        pw: u(pw),
        bias: 0,
        chunk: 0,
        pad: 0,
    };
    Ok((p, [n, cout, ho, wo]))
}

/// Prepares `y = conv2d(x, w) + bias`.
pub fn forward(
    gpu: &Gpu,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    conv: &Conv2d,
) -> Result<(Dispatch, Tensor)> {
    forward_with(gpu, x, w, bias, conv, None)
}

/// [`forward`], choosing the kernel: `subgroups` `None` uses the subgroup kernel wherever it
/// applies (the register-blocked style on an adapter with subgroups of 8 or more lanes),
/// `Some(true)` insists (failing where it cannot run), `Some(false)` never uses it.
pub fn forward_with(
    gpu: &Gpu,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    conv: &Conv2d,
    subgroups: Option<bool>,
) -> Result<(Dispatch, Tensor)> {
    let (mut p, out_shape) = params("conv2d", x, w, conv)?;
    if let Some(b) = bias {
        b.expect("conv2d", "bias", DType::F32, &[out_shape[1]])?;
        p.bias = 1;
    }
    let rows = out_shape[0] * out_shape[2] * out_shape[3];
    let grid = [
        rows.div_ceil(SUBGROUP_BLOCK.0),
        out_shape[1].div_ceil(SUBGROUP_BLOCK.1),
    ];
    let use_subgroups = use_subgroups(gpu, subgroups, &grid)?;
    // Both kernels loop over (ci, kh, kw).
    let spec = if use_subgroups {
        &CONV_FORWARD_SG
    } else {
        &CONV_FORWARD
    };
    gpu.check_loops(spec, nested_trips(&[p.cin, p.kh, p.kw]))?;
    let y = gpu.empty(&out_shape, DType::F32)?;
    if use_subgroups {
        let d = gpu.dispatch_grid(
            &CONV_FORWARD_SG,
            &[],
            &p,
            &[x, w, bias.unwrap_or(w), &y],
            [grid[0] as u32, grid[1] as u32, 1],
        )?;
        return Ok((d, y));
    }
    let blocks =
        out_shape[0] * (out_shape[2] * out_shape[3]).div_ceil(4) * out_shape[1].div_ceil(8);
    // Without a bias the binding is never read; any read-only buffer satisfies the layout.
    let d = gpu.dispatch(
        &CONV_FORWARD,
        &p,
        &[x, w, bias.unwrap_or(w), &y],
        (blocks as u64).div_ceil(64),
    )?;
    Ok((d, y))
}

/// Gradients of a convolution.
pub struct ConvGrads {
    /// dL/dx (unless it was not asked for).
    pub dx: Option<Tensor>,
    /// dL/dw.
    pub dw: Tensor,
    /// dL/dbias (when the layer has a bias).
    pub dbias: Option<Tensor>,
}

/// Which gradients to compute, and how.
#[derive(Clone, Copy, Debug)]
pub struct BackwardOptions {
    /// Compute dx (not needed for a layer reading the model's input).
    pub input_grad: bool,
    /// The layer has a bias: compute dbias.
    pub bias: bool,
    /// Use the subgroup kernels, as in [`forward_with`].
    pub subgroups: Option<bool>,
}

/// Prepares the backward pass: dx, dw and (with `bias`) dbias from dy.
pub fn backward(
    gpu: &Gpu,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    bias: bool,
    conv: &Conv2d,
) -> Result<(Vec<Dispatch>, ConvGrads)> {
    let options = BackwardOptions {
        input_grad: true,
        bias,
        subgroups: None,
    };
    backward_with(gpu, x, w, dy, conv, options)
}

/// [`backward`] with the choice of gradients and kernels.
pub fn backward_with(
    gpu: &Gpu,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    conv: &Conv2d,
    options: BackwardOptions,
) -> Result<(Vec<Dispatch>, ConvGrads)> {
    let (mut p, out_shape) = params("conv2d_backward", x, w, conv)?;
    dy.expect("conv2d_backward", "dy", DType::F32, &out_shape)?;
    let [n, cout, ho, wo] = out_shape;
    let [_, cin, h, wd] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
    let ksize = w.numel() / cout;
    let (block, channels) = SUBGROUP_BLOCK;
    let input_grid = [(n * h * wd).div_ceil(block), cin.div_ceil(channels)];
    // The weight gradient's reduction over n·ho·wo positions is split into chunks (at least 64
    // positions each) so that about 256 workgroups share it.
    let rows = n * ho * wo;
    let blocks = ksize.div_ceil(block) * cout.div_ceil(channels);
    // At most 2048 positions per chunk keeps each invocation's loop short (llvmpipe stops an
    // invocation's loops after 65535 iterations).
    let chunk = rows
        .div_ceil((256 / blocks).clamp(1, rows.div_ceil(64)))
        .min(2048);
    let chunks = rows.div_ceil(chunk);
    let weight_grid = [ksize.div_ceil(block), cout.div_ceil(channels), chunks];
    let subgroups = use_subgroups(gpu, options.subgroups, &input_grid)?
        && use_subgroups(gpu, options.subgroups, &weight_grid)?;
    let mut plan = Vec::new();
    if options.input_grad {
        let (spec, trips) = if subgroups {
            (&CONV_BACKWARD_INPUT_SG, nested_trips(&[p.cout, p.kh, p.kw]))
        } else {
            (&CONV_BACKWARD_INPUT, nested_trips(&[p.kh, p.kw, p.cout]))
        };
        gpu.check_loops(spec, trips)?;
    }
    let dx = if options.input_grad {
        let dx = gpu.empty(x.shape(), DType::F32)?;
        plan.push(if subgroups {
            let grid = [input_grid[0] as u32, input_grid[1] as u32, 1];
            let unit = f64::from(u8::from(conv.stride == [1, 1]));
            gpu.dispatch_grid(
                &CONV_BACKWARD_INPUT_SG,
                &[("UNIT_STRIDE", unit)],
                &p,
                &[dy, w, &dx],
                grid,
            )?
        } else {
            gpu.dispatch(
                &CONV_BACKWARD_INPUT,
                &p,
                &[dy, w, &dx],
                (dx.numel() as u64).div_ceil(64),
            )?
        });
        Some(dx)
    } else {
        None
    };
    let dw = if subgroups {
        p.chunk = chunk as u32;
        gpu.check_loops(&CONV_BACKWARD_WEIGHT_SG, chunk as u64)?;
        let partial = gpu.empty(&[chunks, cout * ksize], DType::F32)?;
        let grid = weight_grid.map(|g| g as u32);
        plan.push(gpu.dispatch_grid(
            &CONV_BACKWARD_WEIGHT_SG,
            &[],
            &p,
            &[dy, x, &partial],
            grid,
        )?);
        let (sum, total) = reduce_axis(gpu, &partial, 0, AxisOp::Sum)?;
        plan.push(sum);
        total.reshape(w.shape())?
    } else {
        // Chunks of whole images, about 4096 positions each, summed by a reduction.
        let images = (4096 / (ho * wo)).clamp(1, n);
        let chunks = n.div_ceil(images);
        p.chunk = images as u32;
        gpu.check_loops(&CONV_BACKWARD_WEIGHT, nested_trips(&[p.chunk, p.ho, p.wo]))?;
        let partial = gpu.empty(&[chunks, cout * ksize], DType::F32)?;
        plan.push(gpu.dispatch(
            &CONV_BACKWARD_WEIGHT,
            &p,
            &[dy, x, &partial],
            (partial.numel() as u64).div_ceil(64),
        )?);
        let (sum, total) = reduce_axis(gpu, &partial, 0, AxisOp::Sum)?;
        plan.push(sum);
        total.reshape(w.shape())?
    };
    let dbias = if options.bias {
        let (per_image, partial) =
            reduce_axis(gpu, &dy.reshape(&[n, cout, ho * wo])?, 2, AxisOp::Sum)?;
        let (total, db) = reduce_axis(gpu, &partial, 0, AxisOp::Sum)?;
        plan.extend([per_image, total]);
        Some(db)
    } else {
        None
    };
    Ok((plan, ConvGrads { dx, dw, dbias }))
}
