//! 2-D convolution over NCHW tensors (`shaders/conv.wgsl`, `shaders/conv_subgroup.wgsl`):
//! forward as an implicit GEMM, gradients of the input and the weight, the bias gradient as a
//! reduction of dy; channel groups as PyTorch's `groups`, with depthwise kernels (a lane per four
//! neighbouring values of a row) for `groups = Cin = Cout`.

use crate::Result;
use crate::catalogue::{Case, Prepared, Suite, Work, memory_case, sample_f64, sample_tensor};
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::kernels::reduce::{AxisOp, reduce_axis};
use crate::reference::conv::{self as cpu, Window};

use Binding::{Output as W, ReadOnly as R, Uniform as U};

/// Forward (implicit GEMM, 4 positions × 8 channels per invocation).
pub const CONV_FORWARD: KernelSpec =
    KernelSpec::new::<Params>("conv", "conv_forward", &[U, R, R, R, W]);
/// Gradient of the input.
pub const CONV_BACKWARD_INPUT: KernelSpec =
    KernelSpec::new::<Params>("conv", "conv_backward_input", &[U, R, R, W]);
/// Depthwise forward (`groups` = input = output channels), one output per invocation.
pub const CONV_FORWARD_DEPTHWISE: KernelSpec =
    KernelSpec::new::<Params>("conv", "conv_forward_depthwise", &[U, R, R, R, W]);
/// Depthwise gradient of the input, one input element per invocation.
pub const CONV_BACKWARD_INPUT_DEPTHWISE: KernelSpec =
    KernelSpec::new::<Params>("conv", "conv_backward_input_depthwise", &[U, R, R, W]);
/// Gradient of the weight.
pub const CONV_BACKWARD_WEIGHT: KernelSpec =
    KernelSpec::new::<Params>("conv", "conv_backward_weight", &[U, R, R, W]);

/// Forward with subgroup-shared weights, 64 positions × 16 channels per 8-lane workgroup
/// (CPU-like drivers with subgroups).
pub const CONV_FORWARD_SG: KernelSpec =
    KernelSpec::new::<Params>("conv_subgroup", "conv_forward_sg", &[U, R, R, R, W]);

/// Gradient of the input with subgroup-shared weights (CPU-like drivers with subgroups).
pub const CONV_BACKWARD_INPUT_SG: KernelSpec =
    KernelSpec::new::<Params>("conv_subgroup", "conv_backward_input_sg", &[U, R, R, W])
        .with_overrides(&["UNIT_STRIDE"]);
/// Per-chunk partial gradients of the weight with subgroup-shared dy, summed by a reduction.
pub const CONV_BACKWARD_WEIGHT_SG: KernelSpec =
    KernelSpec::new::<Params>("conv_subgroup", "conv_backward_weight_sg", &[U, R, R, W]);
/// The weight gradient for at most 16 weight columns (Cin·KH·KW) on CPU-like
/// drivers: every lane takes all the columns over its own positions (per-lane partial sums).
pub const CONV_BACKWARD_WEIGHT_NARROW: KernelSpec = KernelSpec::new::<Params>(
    "conv_subgroup",
    "conv_backward_weight_narrow",
    &[U, R, R, W],
)
.with_overrides(&["KS"]);
/// The most weight columns [`CONV_BACKWARD_WEIGHT_NARROW`] takes (its accumulator array).
const NARROW_COLUMNS: usize = 16;

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[
    CONV_FORWARD,
    CONV_BACKWARD_INPUT,
    CONV_BACKWARD_WEIGHT,
    CONV_FORWARD_DEPTHWISE,
    CONV_BACKWARD_INPUT_DEPTHWISE,
    CONV_FORWARD_SG,
    CONV_BACKWARD_INPUT_SG,
    CONV_BACKWARD_WEIGHT_SG,
    CONV_BACKWARD_WEIGHT_NARROW,
];

/// Positions (or weight columns) × channels per workgroup of the subgroup kernels.
const SUBGROUP_BLOCK: (usize, usize) = (64, 16);

/// Whether to use the subgroup kernels for a launch of `grid` workgroups: `requested` as in
/// [`forward_with`]. They have no channel groups.
fn use_subgroups(
    gpu: &Gpu,
    requested: Option<bool>,
    grid: &[usize],
    groups: usize,
) -> Result<bool> {
    let max = gpu.caps().limits.max_compute_workgroups_per_dimension as usize;
    let blocker = if groups > 1 {
        Some(format!("a convolution of {groups} channel groups has none"))
    } else {
        grid.iter().any(|&g| g > max).then(|| {
            format!("a grid of {grid:?} workgroups exceeds the adapter's {max} per dimension")
        })
    };
    let chosen = gpu.caps().kernels.conv;
    let requested = requested.or(chosen.subgroups());
    super::use_subgroup_variant(gpu, "conv2d", requested, chosen.style(), blocker)
}

/// Stride, zero padding and channel groups of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// Stride (height, width).
    pub stride: [usize; 2],
    /// Zero padding (height, width).
    pub padding: [usize; 2],
    /// Channel groups, as PyTorch's `groups`: input and output channels split into this many
    /// groups, each output reading only its group's inputs (weight `[Cout, Cin / groups, KH,
    /// KW]`). 1 is an ordinary convolution; `groups = Cin = Cout` is depthwise.
    pub groups: usize,
}

impl Conv2d {
    /// An ordinary (one-group) convolution.
    pub fn new(stride: usize, padding: usize) -> Conv2d {
        Conv2d {
            stride: [stride, stride],
            padding: [padding, padding],
            groups: 1,
        }
    }

    /// Whether it is depthwise: one input channel per output channel, as many of each.
    pub fn is_depthwise(&self, cin: usize, cout: usize) -> bool {
        self.groups > 1 && self.groups == cin && cin == cout
    }
}

/// The depthwise kernels' grid for maps of `rows` × `cols` (a lane per 4 neighbouring values of
/// a row, a workgroup per 64 lanes of an image's channels, per image), or `None` where they do
/// not apply: not depthwise, an image's lanes too many for their division
/// ([`super::QUOT_LIMIT`]) or a grid dimension; the general kernels take those.
fn depthwise_grid(gpu: &Gpu, p: &Params, conv: &Conv2d, rows: u32, cols: u32) -> Option<[u32; 3]> {
    let max = gpu.caps().limits.max_compute_workgroups_per_dimension;
    // SEG outputs per lane and 64 lanes per workgroup, as `shaders/conv.wgsl` has them.
    const SEG: u32 = 4;
    let lanes = u64::from(p.cout) * u64::from(rows) * u64::from(cols.div_ceil(SEG));
    let blocks = lanes.div_ceil(64);
    let fits = conv.is_depthwise(p.cin as usize, p.cout as usize)
        && lanes + 64 < super::QUOT_LIMIT as u64
        && blocks <= u64::from(max)
        && p.n <= max;
    fits.then_some([blocks as u32, 1, p.n])
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
    groups: u32,
}

/// Loop iterations of loops nested with these trip counts, outermost first (each iteration of
/// an inner loop counts, and so does each of an outer one).
fn nested_trips(trips: &[u32]) -> u64 {
    trips
        .iter()
        .rev()
        .fold(0, |inner, &t| u64::from(t) * (1 + inner))
}

/// Checks x (N, Cin, H, W) and w (Cout, Cin / groups, KH, KW); returns the parameters and output
/// shape.
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
    let groups = conv.groups;
    if groups == 0 || cin % groups != 0 || cout % groups != 0 {
        return Err(shape_error(
            op,
            format!(
                "groups = {groups} must divide the {cin} input and {cout} output channels (x {:?}, weight {:?})",
                x.shape(),
                w.shape()
            ),
        ));
    }
    if wcin * groups != cin {
        return Err(shape_error(
            op,
            format!(
                "x {:?} has {cin} channels, so weight {:?} must have {} per group (groups = {groups})",
                x.shape(),
                w.shape(),
                cin / groups
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
    // The kernels divide row and column indices through f32.
    if h + 2 * ph >= super::QUOT_LIMIT || wd + 2 * pw >= super::QUOT_LIMIT {
        return Err(shape_error(
            op,
            format!("a padded {h}×{wd} map is beyond the kernels' 2^22 rows or columns"),
        ));
    }
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
        groups: u(groups),
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
    let use_subgroups = use_subgroups(gpu, subgroups, &grid, conv.groups)?;
    let y = gpu.empty(&out_shape, DType::F32)?;
    // Without a bias the binding is never read; any read-only buffer satisfies the layout.
    let tensors = [x, w, bias.unwrap_or(w), &y];
    if let Some(grid) = depthwise_grid(gpu, &p, conv, p.ho, p.wo) {
        gpu.check_loops(&CONV_FORWARD_DEPTHWISE, nested_trips(&[p.kh, p.kw]))?;
        let d = gpu.dispatch_grid(&CONV_FORWARD_DEPTHWISE, &[], &p, &tensors, grid)?;
        return Ok((d, y));
    }
    // Both GEMM kernels loop over their group's (ci, kh, kw).
    let spec = if use_subgroups {
        &CONV_FORWARD_SG
    } else {
        &CONV_FORWARD
    };
    gpu.check_loops(spec, nested_trips(&[p.cin / p.groups, p.kh, p.kw]))?;
    if use_subgroups {
        let grid = [grid[0] as u32, grid[1] as u32, 1];
        let d = gpu.dispatch_grid(&CONV_FORWARD_SG, &[], &p, &tensors, grid)?;
        return Ok((d, y));
    }
    // Blocks of 4 positions × 8 channels of one group.
    let groups = conv.groups;
    let channel_blocks = groups * (out_shape[1] / groups).div_ceil(8);
    let blocks = out_shape[0] * (out_shape[2] * out_shape[3]).div_ceil(4) * channel_blocks;
    let d = gpu.dispatch_over(&CONV_FORWARD, &p, &tensors, blocks)?;
    Ok((d, y))
}

/// Gradients of a convolution.
pub struct ConvGrads {
    /// dL/dx (unless it was not asked for).
    pub dx: Option<Tensor>,
    /// dL/dw (unless it was not asked for).
    pub dw: Option<Tensor>,
    /// dL/dbias (when the layer has a bias).
    pub dbias: Option<Tensor>,
}

/// Which gradients to compute, and how.
#[derive(Clone, Copy, Debug)]
pub struct BackwardOptions {
    /// Compute dx (not needed for a layer reading the model's input).
    pub input_grad: bool,
    /// Compute dw (not needed for a frozen layer that only passes gradients to its input).
    pub weight_grad: bool,
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
        weight_grad: true,
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
    let subgroups = use_subgroups(gpu, options.subgroups, &input_grid, conv.groups)?
        && use_subgroups(gpu, options.subgroups, &weight_grid, conv.groups)?;
    let mut plan = Vec::new();
    let depthwise = depthwise_grid(gpu, &p, conv, p.h, p.w);
    if options.input_grad {
        let (spec, trips) = if depthwise.is_some() {
            (&CONV_BACKWARD_INPUT_DEPTHWISE, nested_trips(&[p.kh, p.kw]))
        } else if subgroups {
            (&CONV_BACKWARD_INPUT_SG, nested_trips(&[p.cout, p.kh, p.kw]))
        } else {
            (
                &CONV_BACKWARD_INPUT,
                nested_trips(&[p.kh, p.kw, p.cout / p.groups]),
            )
        };
        gpu.check_loops(spec, trips)?;
    }
    let dx = if options.input_grad {
        let dx = gpu.empty(x.shape(), DType::F32)?;
        let tensors = [dy, w, &dx];
        plan.push(if let Some(grid) = depthwise {
            gpu.dispatch_grid(&CONV_BACKWARD_INPUT_DEPTHWISE, &[], &p, &tensors, grid)?
        } else if subgroups {
            let grid = [input_grid[0] as u32, input_grid[1] as u32, 1];
            let unit = f64::from(u8::from(conv.stride == [1, 1]));
            gpu.dispatch_grid(
                &CONV_BACKWARD_INPUT_SG,
                &[("UNIT_STRIDE", unit)],
                &p,
                &tensors,
                grid,
            )?
        } else {
            gpu.dispatch_over(&CONV_BACKWARD_INPUT, &p, &tensors, dx.numel())?
        });
        Some(dx)
    } else {
        None
    };
    let dw = if !options.weight_grad {
        None
    } else if subgroups && ksize <= NARROW_COLUMNS {
        // Few weight columns (a first layer's): every lane takes all of them, for 4 output
        // channels, over its own run of positions; about 256 workgroups share the positions.
        let co_blocks = cout.div_ceil(4);
        let runs = (256 / co_blocks).clamp(1, rows.div_ceil(64));
        let run = rows.div_ceil(runs * 8).clamp(1, 2048);
        let chunk = 8 * run;
        let chunks = rows.div_ceil(chunk);
        p.chunk = chunk as u32;
        gpu.check_loops(&CONV_BACKWARD_WEIGHT_NARROW, (run * (ksize + 1)) as u64)?;
        let partial = gpu.empty(&[chunks * 8, cout * ksize], DType::F32)?;
        plan.push(gpu.dispatch_grid(
            &CONV_BACKWARD_WEIGHT_NARROW,
            &[("KS", ksize as f64)],
            &p,
            &[dy, x, &partial],
            [1, co_blocks as u32, chunks as u32],
        )?);
        let (sum, total) = reduce_axis(gpu, &partial, 0, AxisOp::Sum)?;
        plan.push(sum);
        Some(total.reshape(w.shape())?)
    } else if subgroups {
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
        Some(total.reshape(w.shape())?)
    } else {
        // Chunks of whole images, about 4096 positions each, summed by a reduction.
        let images = (4096 / (ho * wo)).clamp(1, n);
        let chunks = n.div_ceil(images);
        p.chunk = images as u32;
        gpu.check_loops(&CONV_BACKWARD_WEIGHT, nested_trips(&[p.chunk, p.ho, p.wo]))?;
        let partial = gpu.empty(&[chunks, cout * ksize], DType::F32)?;
        let tensors = [dy, x, &partial];
        plan.push(gpu.dispatch_over(&CONV_BACKWARD_WEIGHT, &p, &tensors, partial.numel())?);
        let (sum, total) = reduce_axis(gpu, &partial, 0, AxisOp::Sum)?;
        plan.push(sum);
        Some(total.reshape(w.shape())?)
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

/// One forward and backward check of `spec` (and of `subgroups`, as in [`forward_with`]) on a
/// `(n, c, h, w)` input with `cout` outputs and a `k`×`k` kernel, with bias, against the f64
/// reference.
fn check_case(name: &str, win: Window, cout: usize, spec: Conv2d, subgroups: Option<bool>) -> Case {
    let Window { n, c, h, w, k, .. } = win;
    let [ho, wo] = win.out();
    let cin_g = c / spec.groups;
    let (x_len, w_len, y_len) = (
        n * c * h * w,
        cout * cin_g * k[0] * k[1],
        n * cout * ho * wo,
    );
    let shape = format!(
        "[{n}, {c}, {h}, {w}] {}x{}/{},{} pad {} g{} → {cout}",
        k[0], k[1], spec.stride[0], spec.stride[1], spec.padding[0], spec.groups
    );
    let work = Work::Flops(6.0 * (y_len * cin_g * k[0] * k[1]) as f64);
    Case::new(name, shape, work, move |gpu| {
        let x = sample_tensor(gpu, &[n, c, h, w], 27)?;
        let wt = sample_tensor(gpu, &[cout, cin_g, k[0], k[1]], 28)?;
        let bias = sample_tensor(gpu, &[cout], 29)?;
        let dy = sample_tensor(gpu, &[n, cout, ho, wo], 30)?;
        let (f, y) = forward_with(gpu, &x, &wt, Some(&bias), &spec, subgroups)?;
        let options = BackwardOptions {
            input_grad: true,
            weight_grad: true,
            bias: true,
            subgroups,
        };
        let (mut plan, g) = backward_with(gpu, &x, &wt, &dy, &spec, options)?;
        plan.insert(0, f);
        let mut outputs = vec![y];
        outputs.extend(g.dx);
        outputs.extend(g.dw);
        outputs.extend(g.dbias);
        Ok(Prepared::new(plan, outputs))
    })
    .reference(move || {
        let (x, wt, b) = (
            sample_f64(x_len, 27),
            sample_f64(w_len, 28),
            sample_f64(cout, 29),
        );
        let dy = sample_f64(y_len, 30);
        let groups = spec.groups;
        let mut want = cpu::conv2d(&x, &wt, Some(&b), &win, cout, groups);
        let (dx, dw, db) = cpu::conv2d_backward(&x, &wt, &dy, &win, cout, groups);
        want.extend(dx);
        want.extend(dw);
        want.extend(db);
        want
    })
    .tolerance(1e-4, 1e-5)
}

/// The family's catalogue: forward and both gradients through every kernel set the adapter
/// has, on maps with stride and padding off the blocks, grouped (groups straddling the 8-channel
/// blocks) and depthwise; for timing, a 3×3 layer forward and backward beside a matmul of the
/// same FLOPs (its implicit GEMM's shape), the same-run baseline, and a depthwise layer.
pub fn cases(gpu: &Gpu, suite: Suite) -> Vec<Case> {
    if let Suite::Bench { .. } = suite {
        return bench_cases(suite);
    }
    let win = |c: usize, h: usize, w: usize, k: usize, s: [usize; 2], p: usize| Window {
        n: 2,
        c,
        h,
        w,
        k: [k, k],
        s,
        p: [p, p],
    };
    let plain = Conv2d {
        stride: [2, 1],
        padding: [1, 1],
        groups: 1,
    };
    let mut cases = vec![check_case(
        "conv2d fwd+bwd",
        win(3, 7, 9, 3, [2, 1], 1),
        5,
        plain,
        Some(false),
    )];
    if gpu.caps().subgroup_matmul() {
        let case = check_case(
            "conv2d (subgroup) fwd+bwd",
            win(3, 7, 9, 3, [2, 1], 1),
            5,
            plain,
            Some(true),
        );
        cases.push(case);
    }
    // 3 groups of 4 inputs → 6 outputs: each group's channels straddle the 8-channel blocks.
    let grouped = Conv2d { groups: 3, ..plain };
    cases.push(check_case(
        "conv2d grouped fwd+bwd",
        win(12, 7, 9, 3, [2, 1], 1),
        18,
        grouped,
        None,
    ));
    // Depthwise (the fast path), and a channel multiplier of 2 (groups = Cin, Cout = 2·Cin).
    let depthwise = Conv2d {
        stride: [1, 2],
        padding: [1, 1],
        groups: 5,
    };
    cases.push(check_case(
        "conv2d depthwise fwd+bwd",
        win(5, 9, 7, 3, [1, 2], 1),
        5,
        depthwise,
        None,
    ));
    // Planes over several workgroups, a weight gradient over several chunks of images, a 5×5
    // window padded by 2 at stride 2 (output rows whose first tap is not 0).
    let wide = Window {
        n: 3,
        c: 2,
        h: 37,
        w: 45,
        k: [5, 5],
        s: [2, 1],
        p: [2, 2],
    };
    let wide_spec = Conv2d {
        stride: [2, 1],
        padding: [2, 2],
        groups: 2,
    };
    cases.push(check_case(
        "conv2d depthwise 5x5 fwd+bwd",
        wide,
        2,
        wide_spec,
        None,
    ));
    cases.push(check_case(
        "conv2d depthwise ×2 fwd+bwd",
        win(5, 9, 7, 3, [1, 2], 1),
        10,
        depthwise,
        None,
    ));
    cases
}

/// A 3×3 layer forward and backward beside the matmul of its implicit GEMM's shape, and a
/// depthwise 3×3 layer related to the stream copy (it moves more bytes than it computes).
fn bench_cases(suite: Suite) -> Vec<Case> {
    let (b, c, hw) = (suite.pick(8, 64), suite.pick(32, 64), suite.pick(16, 32));
    let spec = Conv2d::new(1, 1);
    let (m, n, k) = (b * hw * hw, c, c * 9);
    let base = super::matmul::bench_case(m, n, k);
    let shape = format!("[{b}, {c}, {hw}, {hw}] 3x3 → {c}");
    let flops = 2.0 * (m * n * k) as f64;
    let inputs = move |gpu: &Gpu, cin: usize| -> Result<(Tensor, Tensor)> {
        let x = sample_tensor(gpu, &[b, c, hw, hw], 4)?;
        Ok((x, sample_tensor(gpu, &[c, cin, 3, 3], 5)?))
    };
    let forward_case = Case::new("conv2d", shape.clone(), Work::Flops(flops), move |gpu| {
        let (x, w) = inputs(gpu, c)?;
        let (d, y) = forward(gpu, &x, &w, None, &spec)?;
        Ok(Prepared::new(vec![d], vec![y]))
    });
    // dx and dw, each a GEMM of that size.
    let backward_case = Case::new("conv2d_bwd", shape, Work::Flops(2.0 * flops), move |gpu| {
        let (x, w) = inputs(gpu, c)?;
        let dy = sample_tensor(gpu, &[b, c, hw, hw], 6)?;
        let (plan, g) = backward(gpu, &x, &w, &dy, false, &spec)?;
        Ok(Prepared::new(plan, g.dw.into_iter().collect()))
    });
    let depthwise = Conv2d { groups: c, ..spec };
    let bytes = 8.0 * (b * c * hw * hw) as f64;
    let shape = format!("[{b}, {c}, {hw}, {hw}] 3x3 depthwise");
    let depthwise_case = memory_case(
        suite,
        "conv2d_depthwise",
        shape.clone(),
        bytes,
        move |gpu| {
            let (x, w) = inputs(gpu, 1)?;
            let (d, y) = forward(gpu, &x, &w, None, &depthwise)?;
            Ok(Prepared::new(vec![d], vec![y]))
        },
    );
    // dx and dw: each reads dy and one map and writes little or one map, so twice the forward's
    // compulsory bytes.
    let depthwise_bwd = memory_case(
        suite,
        "conv2d_depthwise_bwd",
        shape,
        2.0 * bytes,
        move |gpu| {
            let (x, w) = inputs(gpu, 1)?;
            let dy = sample_tensor(gpu, &[b, c, hw, hw], 6)?;
            let (plan, g) = backward(gpu, &x, &w, &dy, false, &depthwise)?;
            Ok(Prepared::new(plan, g.dx.into_iter().chain(g.dw).collect()))
        },
    );
    let key = base.key();
    vec![
        forward_case.baseline(key.clone()),
        backward_case.baseline(key),
        base,
        depthwise_case,
        depthwise_bwd,
    ]
}
