//! Fake quantisation for quantisation-aware training (`shaders/quantize.wgsl`): the
//! moving-average observer that turns a tensor's range into scales and zero points, per channel
//! or per tensor, and `fake_quant` with its straight-through backward.

use crate::Result;
use crate::catalogue::{
    Case, Prepared, Suite, Work, memory_case, sample_f64, sample_tensor, stream_len,
};
use crate::error::{input_error, shape_error};
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::reference::quantize::{self as cpu, Grid};

use Binding::{Output as W, ReadOnly as R, ReadWrite as RW, Uniform as U};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    channels: u32,
    inner: u32,
    qmin: i32,
    qmax: i32,
    symmetric: u32,
    averaging: f32,
    chunks: u32,
}

/// Updates each channel's moving-average range and writes its scale and zero point. Both are
/// model state (buffers saved with the weights), bound read-write so that the memory planner
/// never gives them another tensor's buffer.
pub const OBSERVE: KernelSpec = KernelSpec::new::<Params>("quantize", "observe", &[U, R, RW, RW]);
/// [`OBSERVE`]'s first pass for channels of many elements: each chunk's min and max.
pub const OBSERVE_PARTIAL: KernelSpec =
    KernelSpec::new::<Params>("quantize", "observe_partial", &[U, R, W]);
/// [`OBSERVE`]'s second pass: each channel's chunks folded into its observer.
pub const OBSERVE_FINISH: KernelSpec =
    KernelSpec::new::<Params>("quantize", "observe_finish", &[U, R, RW, RW]);
/// `y = (clamp(round(x / s) + zp, qmin, qmax) − zp) · s`.
pub const FAKE_QUANT: KernelSpec =
    KernelSpec::new::<Params>("quantize", "fake_quant", &[U, R, R, W]);
/// `dx = dy` where `round(x / s) + zp` is inside `[qmin, qmax]`, 0 elsewhere.
pub const FAKE_QUANT_BACKWARD: KernelSpec =
    KernelSpec::new::<Params>("quantize", "fake_quant_backward", &[U, R, R, R, W]);

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[
    OBSERVE,
    OBSERVE_PARTIAL,
    OBSERVE_FINISH,
    FAKE_QUANT,
    FAKE_QUANT_BACKWARD,
];

/// Elements one workgroup of [`OBSERVE_PARTIAL`] folds (the WGSL's `CHUNK`).
const CHUNK: usize = 4096;

/// PyTorch's per-channel weight grid: symmetric int8.
pub const INT8_SYMMETRIC: Grid = Grid {
    qmin: -128,
    qmax: 127,
    symmetric: true,
};
/// PyTorch's activation grid: affine uint8.
pub const UINT8_AFFINE: Grid = Grid {
    qmin: 0,
    qmax: 255,
    symmetric: false,
};

/// How one tensor is fake-quantised: its grid, its channels (the extent of the quantised axis, 1
/// for the whole tensor) and the observer's moving-average constant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantizer {
    /// The integer grid.
    pub grid: Grid,
    /// Elements in all.
    pub n: usize,
    /// Channels with their own scale and zero point.
    pub channels: usize,
    /// Consecutive elements of one channel (the product of the dimensions after the axis).
    pub inner: usize,
    /// The observer's moving-average constant, in (0, 1] (PyTorch's default 0.01).
    pub averaging: f32,
}

impl Quantizer {
    /// A quantizer for tensors of `shape`, per channel along `axis` or, with `None`, per tensor.
    pub fn new(shape: &[usize], axis: Option<usize>, grid: Grid, averaging: f32) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n == 0 || u32::try_from(n).is_err() {
            return Err(shape_error(
                "fake_quant",
                format!("cannot quantise {shape:?}"),
            ));
        }
        if grid.qmin >= grid.qmax || !(-32768..=65535).contains(&grid.qmin) || grid.qmax > 65535 {
            return Err(input_error(
                "fake_quant",
                format!(
                    "the grid [{}, {}] is empty or too wide",
                    grid.qmin, grid.qmax
                ),
            ));
        }
        if !(averaging > 0.0 && averaging <= 1.0) {
            return Err(input_error(
                "fake_quant",
                format!("the averaging constant must be in (0, 1], got {averaging}"),
            ));
        }
        let (channels, inner) = match axis {
            None => (1, n),
            Some(a) if a < shape.len() => (shape[a], shape[a + 1..].iter().product()),
            Some(a) => {
                return Err(shape_error(
                    "fake_quant",
                    format!("axis {a} is not an axis of {shape:?}"),
                ));
            }
        };
        Ok(Quantizer {
            grid,
            n,
            channels,
            inner,
            averaging,
        })
    }

    fn params(&self) -> Params {
        Params {
            n: self.n as u32,
            channels: self.channels as u32,
            inner: self.inner as u32,
            qmin: self.grid.qmin,
            qmax: self.grid.qmax,
            symmetric: u32::from(self.grid.symmetric),
            averaging: self.averaging,
            chunks: self.chunks() as u32,
        }
    }

    fn expect(&self, op: &str, name: &str, t: &Tensor) -> Result<()> {
        if t.numel() != self.n {
            return Err(shape_error(
                op,
                format!(
                    "{name} has {} elements, the quantizer {}",
                    t.numel(),
                    self.n
                ),
            ));
        }
        t.expect(op, name, DType::F32, t.shape())
    }

    fn expect_pairs(&self, op: &str, name: &str, t: &Tensor) -> Result<()> {
        t.expect(op, name, DType::F32, &[self.channels, 2])
    }

    /// A fresh observer state for this quantizer: `[f32::MAX, −f32::MAX]` per channel (nothing
    /// seen yet).
    pub fn unobserved(&self, gpu: &Gpu) -> Result<Tensor> {
        let pairs: Vec<f32> = (0..self.channels)
            .flat_map(|_| [f32::MAX, -f32::MAX])
            .collect();
        gpu.upload(&[self.channels, 2], &pairs)
    }

    /// Chunks per channel of the two-pass observer: 1 (one pass) for channels of at most two
    /// chunks' elements, where one workgroup per channel is enough.
    fn chunks(&self) -> usize {
        let per_channel = self.n / self.channels;
        if per_channel <= 2 * CHUNK {
            1
        } else {
            per_channel.div_ceil(CHUNK)
        }
    }

    /// Prepares the observer: folds `x`'s per-channel range into `range` and writes
    /// `[scale, zero point]` per channel into `qparams` (both `[channels, 2]`). Channels of
    /// many elements (a whole activation tensor) take two launches, the first spread over
    /// chunks of the channel, with a scratch buffer allocated here, once.
    pub fn observe(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        range: &Tensor,
        qparams: &Tensor,
    ) -> Result<Vec<Dispatch>> {
        self.expect("observe", "x", x)?;
        self.expect_pairs("observe", "range", range)?;
        self.expect_pairs("observe", "qparams", qparams)?;
        let p = self.params();
        let chunks = self.chunks();
        if chunks == 1 {
            gpu.check_loops(&OBSERVE, (self.n / self.channels).div_ceil(256) as u64 + 16)?;
            let d = gpu.dispatch(&OBSERVE, &p, &[x, range, qparams], self.channels as u64)?;
            return Ok(vec![d]);
        }
        let parts = gpu.empty(&[self.channels * chunks, 2], DType::F32)?;
        gpu.check_loops(&OBSERVE_FINISH, chunks.div_ceil(256) as u64 + 16)?;
        let groups = (self.channels * chunks) as u64;
        Ok(vec![
            gpu.dispatch(&OBSERVE_PARTIAL, &p, &[x, &parts], groups)?,
            gpu.dispatch(
                &OBSERVE_FINISH,
                &p,
                &[&parts, range, qparams],
                self.channels as u64,
            )?,
        ])
    }

    /// Prepares `fake_quant(x)` into a new tensor with `qparams`' scales and zero points.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, qparams: &Tensor) -> Result<(Dispatch, Tensor)> {
        self.expect("fake_quant", "x", x)?;
        self.expect_pairs("fake_quant", "qparams", qparams)?;
        let y = gpu.empty(x.shape(), DType::F32)?;
        let d = gpu.dispatch_over(&FAKE_QUANT, &self.params(), &[x, qparams, &y], self.n)?;
        Ok((d, y))
    }

    /// Prepares the straight-through gradient `dx` into a new tensor.
    pub fn backward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        qparams: &Tensor,
        dy: &Tensor,
    ) -> Result<(Dispatch, Tensor)> {
        let op = "fake_quant_backward";
        self.expect(op, "x", x)?;
        self.expect_pairs(op, "qparams", qparams)?;
        dy.expect(op, "dy", DType::F32, x.shape())?;
        let dx = gpu.empty(x.shape(), DType::F32)?;
        let d = gpu.dispatch_over(
            &FAKE_QUANT_BACKWARD,
            &self.params(),
            &[x, qparams, dy, &dx],
            self.n,
        )?;
        Ok((d, dx))
    }
}

/// Scales that are powers of two and zero points inside the grid, per channel: `x / s` is then
/// exact on every adapter, and so is the reference's comparison.
fn exact_qparams(channels: usize, grid: Grid) -> Vec<f32> {
    (0..channels)
        .flat_map(|c| {
            let scale = 2f32.powi(-(4 + (c % 2) as i32));
            let zero_point = if grid.symmetric {
                0.0
            } else {
                [0.0, 17.0, 255.0][c % 3]
            };
            [scale, zero_point]
        })
        .collect()
}

/// The family's catalogue: two observations (the first sets the range, the second averages into
/// it) per channel and per tensor, and fake quantisation forward and backward on inputs that
/// the grid clamps in part.
pub fn cases(_: &Gpu, suite: Suite) -> Vec<Case> {
    if let Suite::Bench { .. } = suite {
        // Both kernels stream the tensor once (fake_quant also writes it), against the copy.
        let n = stream_len(suite);
        let q = Quantizer::new(&[n], None, UINT8_AFFINE, 0.01).expect("a valid quantizer");
        let shape = format!("[{n}]");
        return vec![
            memory_case(
                suite,
                "fake_quant",
                shape.clone(),
                8.0 * n as f64,
                move |gpu| {
                    let qparams = gpu.upload(&[1, 2], &[1.0f32 / 64.0, 128.0])?;
                    let (d, y) = q.forward(gpu, &sample_tensor(gpu, &[n], 6)?, &qparams)?;
                    Ok(Prepared::new(vec![d], vec![y]))
                },
            ),
            memory_case(suite, "observe", shape, 4.0 * n as f64, move |gpu| {
                let (range, qparams) = (q.unobserved(gpu)?, q.unobserved(gpu)?);
                let d = q.observe(gpu, &sample_tensor(gpu, &[n], 6)?, &range, &qparams)?;
                Ok(Prepared::new(d, vec![range, qparams]))
            }),
        ];
    }
    // The last two take the two-pass observer (chunks of 4,096, the last one short), per
    // tensor and per channel (chunks crossing the channel's blocks).
    let shapes: [(Vec<usize>, Option<usize>, Grid); 5] = [
        (vec![5, 3, 3, 3], Some(0), INT8_SYMMETRIC),
        (vec![3, 6, 7, 7], Some(1), UINT8_AFFINE),
        (vec![1000], None, UINT8_AFFINE),
        (vec![65_537], None, INT8_SYMMETRIC),
        (vec![2, 3, 90, 100], Some(1), UINT8_AFFINE),
    ];
    let mut cases = Vec::new();
    for (shape, axis, grid) in shapes {
        let q = Quantizer::new(&shape, axis, grid, 0.25).expect("a valid quantizer");
        let n = q.n;
        let per = axis.map_or("per tensor".to_string(), |a| format!("axis {a}"));
        let label = format!("{shape:?} {per} [{}, {}]", grid.qmin, grid.qmax);
        // Shifted, scaled inputs: ranges that do not hold 0 on one side exercise the widening.
        let input = move |seed: u64| -> Vec<f64> {
            sample_f64(n, seed).iter().map(|v| 3.0 * v + 0.5).collect()
        };
        cases.push(
            Case::new(
                "observe ×2",
                label.clone(),
                Work::Bytes(8.0 * n as f64),
                move |gpu| {
                    let narrow = |s| input(s).iter().map(|&v| v as f32).collect::<Vec<f32>>();
                    let (a, b) = (
                        gpu.upload(&shape, &narrow(31))?,
                        gpu.upload(&shape, &narrow(32))?,
                    );
                    let range = q.unobserved(gpu)?;
                    let qparams = gpu.empty(&[q.channels, 2], DType::F32)?;
                    let mut plan = q.observe(gpu, &a, &range, &qparams)?;
                    plan.extend(q.observe(gpu, &b, &range, &qparams)?);
                    Ok(Prepared::new(plan, vec![range, qparams]))
                },
            )
            .reference(move || {
                let widen = |s| {
                    input(s)
                        .iter()
                        .map(|&v| f64::from(v as f32))
                        .collect::<Vec<_>>()
                };
                let mut range: Vec<f64> = (0..q.channels).flat_map(|_| [1.0, -1.0]).collect();
                cpu::observe(&widen(31), q.channels, q.inner, &mut range, 0.25, grid);
                let qparams = cpu::observe(&widen(32), q.channels, q.inner, &mut range, 0.25, grid);
                range.into_iter().chain(qparams).collect()
            })
            .tolerance(1e-5, 1e-6),
        );
        let qp = exact_qparams(q.channels, grid);
        let qp_ref: Vec<f64> = qp.iter().map(|&v| f64::from(v)).collect();
        let x_of = move || -> Vec<f32> {
            sample_f64(n, 33)
                .iter()
                .map(|&v| (8.0 * v) as f32)
                .collect()
        };
        cases.push(
            Case::new("fake_quant fwd+bwd", label, Work::Bytes(20.0 * n as f64), {
                let qp = qp.clone();
                move |gpu| {
                    let x = gpu.upload(&[n], &x_of())?;
                    let qparams = gpu.upload(&[q.channels, 2], &qp)?;
                    let dy = gpu.upload(&[n], &crate::rng::sample(n, 34))?;
                    let (f, y) = q.forward(gpu, &x, &qparams)?;
                    let (b, dx) = q.backward(gpu, &x, &qparams, &dy)?;
                    Ok(Prepared::new(vec![f, b], vec![y, dx]))
                }
            })
            .reference(move || {
                let x: Vec<f64> = x_of().iter().map(|&v| f64::from(v)).collect();
                let (c, inner) = (q.channels, q.inner);
                let y = cpu::fake_quant(&x, c, inner, &qp_ref, grid);
                let dx = cpu::fake_quant_grad(&x, c, inner, &qp_ref, grid, &sample_f64(n, 34));
                y.into_iter().chain(dx).collect()
            }),
        );
    }
    cases
}
