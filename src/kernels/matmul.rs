//! Matrix multiply (`shaders/matmul.wgsl`): `C = op(A)·op(B)` with optional transposes, bias and a
//! fused ReLU/GELU epilogue; register-blocked or workgroup-tiled by the adapter's kernel style.

use crate::gpu::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, KernelStyle, Result, Tensor};

use Binding::{Output as W, ReadOnly as R, Uniform as U};

/// Barrier-free, 8×8 outputs per invocation (CPU-like drivers).
pub const MATMUL_RB: KernelSpec = KernelSpec {
    family: "matmul",
    entry: "matmul_rb",
    bindings: &[U, R, R, R, W],
};
/// Workgroup-memory tiles (discrete and integrated GPUs).
pub const MATMUL_TILED: KernelSpec = KernelSpec {
    family: "matmul",
    entry: "matmul_tiled",
    bindings: &[U, R, R, R, W],
};

/// Both variants.
pub const KERNELS: &[KernelSpec] = &[MATMUL_RB, MATMUL_TILED];

/// Output block per workgroup, (rows, columns), of each variant.
fn block(style: KernelStyle) -> (usize, usize) {
    match style {
        KernelStyle::RegisterBlocked => (64, 64),
        KernelStyle::WorkgroupTiled => (64, 64),
    }
}

/// Activation fused into the matmul's store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Activation {
    /// Identity.
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
    /// Exact GELU, `x·Φ(x)`.
    Gelu,
}

impl Activation {
    fn code(self) -> u32 {
        match self {
            Activation::None => 0,
            Activation::Relu => 1,
            Activation::Gelu => 2,
        }
    }
}

/// How to multiply: transposes, epilogue and (optionally) a forced kernel style.
#[derive(Clone, Copy, Debug, Default)]
pub struct MatmulOptions {
    /// Use Aᵀ (A stored K×M).
    pub trans_a: bool,
    /// Use Bᵀ (B stored N×K), as for a PyTorch Linear weight `[out, in]`.
    pub trans_b: bool,
    /// Fused activation.
    pub activation: Activation,
    /// Override the adapter's kernel style (tests and benches run both).
    pub style: Option<KernelStyle>,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    bias: u32,
    activation: u32,
    pad: [u32; 3],
}

fn matrix(what: &str, t: &Tensor) -> Result<(usize, usize)> {
    match (t.dtype(), t.shape()) {
        (DType::F32, &[r, c]) if r > 0 && c > 0 => Ok((r, c)),
        _ => Err(shape_error(
            "matmul",
            format!(
                "{what} must be a non-empty f32 matrix, got {}{:?}",
                t.dtype().name(),
                t.shape()
            ),
        )),
    }
}

/// Prepares `out = op(a)·op(b) (+ bias) (→ activation)`, writing into `out` (M×N).
pub fn matmul_into(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    out: &Tensor,
    options: MatmulOptions,
) -> Result<Dispatch> {
    let (ar, ac) = matrix("a", a)?;
    let (br, bc) = matrix("b", b)?;
    let (m, k) = if options.trans_a { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if options.trans_b { (bc, br) } else { (br, bc) };
    if k != kb {
        return Err(shape_error(
            "matmul",
            format!(
                "inner dimensions differ: op(a) is {m}×{k} (a {:?}{}), op(b) is {kb}×{n} (b {:?}{})",
                a.shape(),
                if options.trans_a { "ᵀ" } else { "" },
                b.shape(),
                if options.trans_b { "ᵀ" } else { "" }
            ),
        ));
    }
    if let Some(bias) = bias {
        bias.expect("matmul", "bias", DType::F32, &[n])?;
    }
    out.expect("matmul", "out", DType::F32, &[m, n])?;
    let dim = |d: usize| {
        u32::try_from(d).map_err(|_| shape_error("matmul", format!("dimension {d} exceeds u32")))
    };
    let params = Params {
        m: dim(m)?,
        n: dim(n)?,
        k: dim(k)?,
        bias: u32::from(bias.is_some()),
        activation: options.activation.code(),
        pad: [0; 3],
    };
    let style = options.style.unwrap_or(gpu.caps().kernel_style);
    let spec = match style {
        KernelStyle::RegisterBlocked => &MATMUL_RB,
        KernelStyle::WorkgroupTiled => &MATMUL_TILED,
    };
    let (block_rows, block_cols) = block(style);
    let constants = [
        ("TRANS_A", f64::from(u8::from(options.trans_a))),
        ("TRANS_B", f64::from(u8::from(options.trans_b))),
    ];
    let grid = [
        n.div_ceil(block_cols) as u32,
        m.div_ceil(block_rows) as u32,
        1,
    ];
    // Without a bias the binding is never read; any read-only buffer satisfies the layout.
    gpu.dispatch_grid(
        spec,
        &constants,
        &params,
        &[a, b, bias.unwrap_or(a), out],
        grid,
    )
}

/// `op(a)·op(b) (+ bias) (→ activation)` into a new tensor; returns the launch and the output.
pub fn matmul(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    options: MatmulOptions,
) -> Result<(Dispatch, Tensor)> {
    let (ar, ac) = matrix("a", a)?;
    let (br, bc) = matrix("b", b)?;
    let m = if options.trans_a { ac } else { ar };
    let n = if options.trans_b { br } else { bc };
    let out = gpu.empty(&[m, n], DType::F32)?;
    Ok((matmul_into(gpu, a, b, bias, &out, options)?, out))
}
