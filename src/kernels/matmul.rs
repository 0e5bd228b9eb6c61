//! Matrix multiply (`shaders/matmul.wgsl`): `C = op(A)·op(B)` with optional transposes, bias and a
//! fused ReLU/GELU epilogue; register-blocked or workgroup-tiled by the adapter's kernel style.

use crate::Result;
use crate::catalogue::{Case, Prepared, Suite, Work, sample_f64, sample_tensor};
use crate::error::shape_error;
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, KernelStyle, Tensor};
use crate::reference::activation::Act;
use crate::reference::matmul as cpu;

use Binding::{Output as W, ReadOnly as R, Uniform as U};

/// Barrier-free, 8×8 outputs per invocation (CPU-like drivers).
pub const MATMUL_RB: KernelSpec =
    KernelSpec::new::<Params>("matmul", "matmul_rb", &[U, R, R, R, W])
        .with_overrides(&["TRANS_A", "TRANS_B"]);
/// Workgroup-memory tiles (discrete and integrated GPUs).
pub const MATMUL_TILED: KernelSpec =
    KernelSpec::new::<Params>("matmul", "matmul_tiled", &[U, R, R, R, W])
        .with_overrides(&["TRANS_A", "TRANS_B"]);

/// Workgroup-memory tiles of 128×128, 8×8 outputs per invocation, double-buffered (large
/// products on GPUs).
pub const MATMUL_TILED128: KernelSpec =
    KernelSpec::new::<Params>("matmul", "matmul_tiled128", &[U, R, R, R, W])
        .with_overrides(&["TRANS_A", "TRANS_B"]);

/// Subgroup-shared rows, vec4 loads: A M×K, B K×N (CPU-like drivers with subgroups).
pub const MATMUL_SG_NN: KernelSpec =
    KernelSpec::new::<Params>("matmul_subgroup", "matmul_sg_nn", &[U, R, R, R, W]);
/// Subgroup-shared rows, vec4 loads: A M×K, B N×K.
pub const MATMUL_SG_NT: KernelSpec =
    KernelSpec::new::<Params>("matmul_subgroup", "matmul_sg_nt", &[U, R, R, R, W]);
/// [`MATMUL_SG_NT`] for N ≤ 32: `NARROW_COLS` columns per lane rather than eight.
pub const MATMUL_SG_NT_NARROW: KernelSpec =
    KernelSpec::new::<Params>("matmul_subgroup", "matmul_sg_nt_narrow", &[U, R, R, R, W])
        .with_overrides(&["NARROW_COLS"]);
/// Subgroup-shared rows, vec4 loads: A K×M, B K×N.
pub const MATMUL_SG_TN: KernelSpec =
    KernelSpec::new::<Params>("matmul_subgroup", "matmul_sg_tn", &[U, R, R, R, W]);

/// Every variant.
pub const KERNELS: &[KernelSpec] = &[
    MATMUL_RB,
    MATMUL_TILED,
    MATMUL_TILED128,
    MATMUL_SG_NN,
    MATMUL_SG_NT,
    MATMUL_SG_NT_NARROW,
    MATMUL_SG_TN,
];

/// The widest product [`MATMUL_SG_NT_NARROW`] takes: four columns per lane.
const NARROW_MAX_COLS: usize = 32;

/// Columns per lane of [`MATMUL_SG_NT_NARROW`] for an `n`-column product: two up to 16 columns
/// (a classifier's 10), else four.
fn narrow_cols(n: usize) -> usize {
    if n <= 16 { 2 } else { 4 }
}

/// Output block per workgroup of a subgroup kernel for an `n`-column product, (rows, columns),
/// and its pipeline constants: `matmul_sg_nt` spreads its strided loads of B over twice the
/// rows, and its narrow form takes eight lanes' columns (see shaders/matmul_subgroup.wgsl).
fn subgroup_launch(spec: &KernelSpec, n: usize) -> ((usize, usize), Vec<(&'static str, f64)>) {
    if spec.entry == MATMUL_SG_NT_NARROW.entry {
        let cols = narrow_cols(n);
        ((32, 8 * cols), vec![("NARROW_COLS", cols as f64)])
    } else if spec.entry == MATMUL_SG_NT.entry {
        ((32, 64), Vec::new())
    } else {
        ((16, 64), Vec::new())
    }
}

/// The subgroup kernel for these transposes and shape, if the vec4 reads it needs line up:
/// the contiguous dimensions of A and B must be multiples of 4.
fn subgroup_kernel(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
) -> std::result::Result<&'static KernelSpec, &'static str> {
    match (trans_a, trans_b) {
        (false, false) if k.is_multiple_of(4) && n.is_multiple_of(4) => Ok(&MATMUL_SG_NN),
        (false, false) => Err("A·B needs K and N to be multiples of 4"),
        (false, true) if k.is_multiple_of(4) && n <= NARROW_MAX_COLS => Ok(&MATMUL_SG_NT_NARROW),
        (false, true) if k.is_multiple_of(4) => Ok(&MATMUL_SG_NT),
        (false, true) => Err("A·Bᵀ needs K to be a multiple of 4"),
        (true, false) if m.is_multiple_of(4) && n.is_multiple_of(4) => Ok(&MATMUL_SG_TN),
        (true, false) => Err("Aᵀ·B needs M and N to be multiples of 4"),
        (true, true) => Err("Aᵀ·Bᵀ has no subgroup kernel"),
    }
}

/// Output block per workgroup of [`MATMUL_TILED128`].
const LARGE_BLOCK: (usize, usize) = (128, 128);

/// The workgroup-tiled style takes the 128×128 tiles when a product has at least this many of
/// them: about one per multiprocessor of a large GPU, so that the bigger tiles' reuse is not
/// paid for with idle units. Smaller products (a batch of 128 through a linear layer) keep the
/// 64×64 tiles.
pub const LARGE_TILE_MIN_WORKGROUPS: usize = 128;

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
    /// Override the use of the subgroup kernels: `None` uses them wherever they apply (the
    /// register-blocked style on an adapter with subgroups of 8 or more lanes, and operands
    /// whose contiguous dimensions are multiples of 4); `Some(true)` insists, failing when they
    /// do not apply; `Some(false)` never uses them.
    pub subgroups: Option<bool>,
    /// Override the workgroup-tiled style's tile size: `Some(true)` the 128×128 tiles,
    /// `Some(false)` the 64×64 ones; `None` takes the adapter's variant (64×64 for
    /// `workgroup_tiled`), else decides by [`LARGE_TILE_MIN_WORKGROUPS`].
    pub large_tiles: Option<bool>,
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
    // A style the caller forces decides alone; otherwise the adapter's (tuned) variant does.
    let chosen = gpu.caps().kernels.matmul;
    let style = options.style.unwrap_or(chosen.style());
    let requested = match options.style {
        Some(_) => options.subgroups,
        None => options.subgroups.or(chosen.subgroups()),
    };
    let subgroup = subgroup_kernel(options.trans_a, options.trans_b, m, n, k);
    let blocker = subgroup.err().map(|why| format!("{m}×{k}·{k}×{n}: {why}"));
    let use_subgroups = super::use_subgroup_variant(gpu, "matmul", requested, style, blocker)?;
    let tuned_tiles = options
        .style
        .is_none()
        .then(|| chosen.large_tiles())
        .flatten();
    let large = style == KernelStyle::WorkgroupTiled
        && options.large_tiles.or(tuned_tiles).unwrap_or_else(|| {
            m.div_ceil(LARGE_BLOCK.0) * n.div_ceil(LARGE_BLOCK.1) >= LARGE_TILE_MIN_WORKGROUPS
        });
    let (spec, (block_rows, block_cols), constants): (_, _, Vec<(&str, f64)>) = match subgroup {
        Ok(spec) if use_subgroups => {
            let (block, constants) = subgroup_launch(spec, n);
            (spec, block, constants)
        }
        _ => (
            match style {
                KernelStyle::RegisterBlocked => &MATMUL_RB,
                KernelStyle::WorkgroupTiled if large => &MATMUL_TILED128,
                KernelStyle::WorkgroupTiled => &MATMUL_TILED,
            },
            if large { LARGE_BLOCK } else { block(style) },
            vec![
                ("TRANS_A", f64::from(u8::from(options.trans_a))),
                ("TRANS_B", f64::from(u8::from(options.trans_b))),
            ],
        ),
    };
    // One loop over K: in steps of 4 (subgroup kernels), 8 (large tiles, one more to drain the
    // double buffer), 16 (tiles) or 1 (register blocks).
    let k_steps = match style {
        _ if use_subgroups && subgroup.is_ok() => k.div_ceil(4),
        KernelStyle::WorkgroupTiled if large => k.div_ceil(8) + 1,
        KernelStyle::WorkgroupTiled => k.div_ceil(16),
        KernelStyle::RegisterBlocked => k,
    };
    gpu.check_loops(spec, k_steps as u64)?;
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

/// A Linear layer's forward (`x·wᵀ + b`, then GELU) through one matmul variant, against the f64
/// reference.
fn linear_case(
    kernel: &'static str,
    (m, n, k): (usize, usize, usize),
    options: MatmulOptions,
) -> Case {
    let work = Work::Flops(2.0 * (m * n * k) as f64);
    Case::new(kernel, format!("{m}x{n}x{k}"), work, move |gpu| {
        let (x, w, b) = (
            sample_tensor(gpu, &[m, k], 20)?,
            sample_tensor(gpu, &[n, k], 21)?,
            sample_tensor(gpu, &[n], 22)?,
        );
        let options = MatmulOptions {
            trans_b: true,
            activation: Activation::Gelu,
            ..options
        };
        let (d, y) = matmul(gpu, &x, &w, Some(&b), options)?;
        Ok(Prepared::new(vec![d], vec![y]))
    })
    .reference(move || {
        let (x, w, b) = (
            sample_f64(m * k, 20),
            sample_f64(n * k, 21),
            sample_f64(n, 22),
        );
        cpu::linear_forward(&x, &w, &b, cpu::LinearShape { m, n, k }, Act::Gelu).1
    })
    .tolerance(1e-4, 1e-5)
}

/// A plain `m×k · k×n` product for timing, with the variant the adapter picks.
pub fn bench_case(m: usize, n: usize, k: usize) -> Case {
    bench_case_with("matmul", (m, n, k), MatmulOptions::default())
}

/// A plain `m×k · k×n` product for timing, named `kernel`, launched with `options`.
fn bench_case_with(
    kernel: &'static str,
    (m, n, k): (usize, usize, usize),
    options: MatmulOptions,
) -> Case {
    let work = Work::Flops(2.0 * (m * n * k) as f64);
    Case::new(kernel, format!("{m}x{n}x{k}"), work, move |gpu| {
        let (a, b) = (
            sample_tensor(gpu, &[m, k], 1)?,
            sample_tensor(gpu, &[k, n], 2)?,
        );
        let (d, c) = matmul(gpu, &a, &b, None, options)?;
        Ok(Prepared::new(vec![d], vec![c]))
    })
}

/// The family's catalogue: every variant the adapter can run on shapes off its blocks (the
/// transposes training uses through the Linear layer), and square products for timing.
pub fn cases(gpu: &Gpu, suite: Suite) -> Vec<Case> {
    if let Suite::Bench { small } = suite {
        let large = suite.pick(1024, 4096);
        let mut cases: Vec<Case> = [suite.pick(256, 1024), large]
            .into_iter()
            .map(|s| bench_case(s, s, s))
            .collect();
        // On GPUs, both tile sizes of the workgroup-tiled style at the large size, whichever
        // the adapter would pick, so one run shows what the larger tiles buy.
        if !small {
            for (kernel, large_tiles) in [("matmul (tiled64)", false), ("matmul (tiled128)", true)]
            {
                let options = MatmulOptions {
                    style: Some(KernelStyle::WorkgroupTiled),
                    subgroups: Some(false),
                    large_tiles: Some(large_tiles),
                    ..Default::default()
                };
                cases.push(bench_case_with(kernel, (large, large, large), options));
            }
        }
        return cases;
    }
    let mut cases = Vec::new();
    for shape in [(7usize, 33usize, 129usize), (65, 130, 67)] {
        for (kernel, style) in [
            ("matmul (rb) +bias+gelu", KernelStyle::RegisterBlocked),
            ("matmul (tiled) +bias+gelu", KernelStyle::WorkgroupTiled),
        ] {
            let options = MatmulOptions {
                style: Some(style),
                subgroups: Some(false),
                large_tiles: Some(false),
                ..Default::default()
            };
            cases.push(linear_case(kernel, shape, options));
        }
    }
    // The 128×128 tiles: off their tile in every dimension, K off its step of 8, and two tiles
    // down and across, so that every edge of the double buffer and the split columns is met.
    for shape in [(7usize, 33usize, 13usize), (131, 259, 67)] {
        let options = MatmulOptions {
            style: Some(KernelStyle::WorkgroupTiled),
            subgroups: Some(false),
            large_tiles: Some(true),
            ..Default::default()
        };
        cases.push(linear_case("matmul (tiled128) +bias+gelu", shape, options));
    }
    // The subgroup kernels need K % 4 == 0 here; M and N stay off the block size.
    if gpu.caps().subgroup_matmul() {
        // (7, 10) and (65, 27) take the narrow x·Wᵀ with two and four columns per lane.
        for shape in [
            (7usize, 33usize, 132usize),
            (65, 130, 68),
            (7, 10, 132),
            (65, 27, 68),
        ] {
            let options = MatmulOptions {
                subgroups: Some(true),
                ..Default::default()
            };
            cases.push(linear_case("matmul (subgroup) +bias+gelu", shape, options));
        }
    }
    cases
}
