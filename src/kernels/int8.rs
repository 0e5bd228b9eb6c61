//! Integer inference (`shaders/int8.wgsl`, and `int8_dot4.wgsl` where WGSL has packed dot
//! products): uint8 activations and int8 weights packed four to a `u32`, i32 accumulation and
//! requantisation, for the int8 models of [`crate::graph::int8`].
//!
//! An activation map (see [`Map`]) is NHWC, each pixel's channels padded with the zero point to
//! `pixel_channels`; a linear layer's input is a map too (a plain vector is `k × 1 × 1`), so a
//! flattened convolution output feeds a linear layer without moving.

use crate::Result;
use crate::catalogue::{Case, Prepared, Suite, Work, sample_f64, sample_tensor};
use crate::error::{input_error, shape_error};
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::reference::int8::{self as cpu, Epilogue, Requant, Window};

use Binding::{Output as W, ReadOnly as R, Uniform as U};

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    channels: u32,
    in_h: u32,
    in_w: u32,
    in_words: u32,
    out_h: u32,
    out_w: u32,
    out_words: u32,
    kernel: u32,
    stride: u32,
    padding: u32,
    pixel_channels: u32,
    zp_in: i32,
    zp_out: i32,
    lo: i32,
    hi: i32,
    scale: f32,
    out_float: u32,
    pad: [u32; 2],
}

/// f32 NCHW → a packed uint8 map.
pub const QUANTIZE: KernelSpec = KernelSpec::new::<Params>("int8", "quantize", &[U, R, W]);
/// A packed uint8 map → f32 NCHW.
pub const DEQUANTIZE: KernelSpec = KernelSpec::new::<Params>("int8", "dequantize", &[U, R, W]);
/// `x·wᵀ` on packed bytes, unpacked by hand.
pub const LINEAR: KernelSpec = KernelSpec::new::<Params>("int8", "linear", &[U, R, R, R, W]);
/// An ordinary convolution on packed maps, unpacked by hand.
pub const CONV2D: KernelSpec = KernelSpec::new::<Params>("int8", "conv2d", &[U, R, R, R, W]);
/// A depthwise convolution on packed maps.
pub const DEPTHWISE: KernelSpec = KernelSpec::new::<Params>("int8", "depthwise", &[U, R, R, R, W]);
/// Max pooling of packed maps.
pub const MAX_POOL: KernelSpec = KernelSpec::new::<Params>("int8", "max_pool", &[U, R, W]);
/// Global average pooling of packed maps.
pub const GLOBAL_AVG_POOL: KernelSpec =
    KernelSpec::new::<Params>("int8", "global_avg_pool", &[U, R, W]);
/// [`LINEAR`] with `dot4I8Packed`.
pub const LINEAR_DOT4: KernelSpec =
    KernelSpec::new::<Params>("int8_dot4", "linear_dot4", &[U, R, R, R, W]);
/// [`CONV2D`] with `dot4I8Packed`.
pub const CONV2D_DOT4: KernelSpec =
    KernelSpec::new::<Params>("int8_dot4", "conv2d_dot4", &[U, R, R, R, W]);

/// Every kernel of the family (both dot-product paths).
pub const KERNELS: &[KernelSpec] = &[
    QUANTIZE,
    DEQUANTIZE,
    LINEAR,
    CONV2D,
    DEPTHWISE,
    MAX_POOL,
    GLOBAL_AVG_POOL,
    LINEAR_DOT4,
    CONV2D_DOT4,
];

/// How linear and conv2d take their four-byte dot products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DotPath {
    /// WGSL's `dot4I8Packed` (`shaders/int8_dot4.wgsl`).
    Builtin,
    /// Bytes unpacked by hand (`shaders/int8.wgsl`): every WGSL implementation.
    Portable,
}

impl DotPath {
    /// The built-in where the adapter's WGSL has it.
    pub fn for_gpu(gpu: &Gpu) -> DotPath {
        if gpu.caps().packed_dot {
            DotPath::Builtin
        } else {
            DotPath::Portable
        }
    }

    fn pick(self, builtin: KernelSpec, portable: KernelSpec) -> KernelSpec {
        match self {
            DotPath::Builtin => builtin,
            DotPath::Portable => portable,
        }
    }
}

/// A packed uint8 activation map: `batch` samples of `channels × height × width`, stored NHWC
/// with `pixel_channels` bytes per pixel (the channels, padded with the zero point), four bytes
/// to a word, each sample padded to whole words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Map {
    /// Samples.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Bytes per pixel: `channels` rounded up to 4 for convolution maps (each pixel whole
    /// words), or `channels` for a plain vector.
    pub pixel_channels: usize,
}

impl Map {
    /// A map that convolutions read: whole words per pixel.
    pub fn image(batch: usize, channels: usize, height: usize, width: usize) -> Map {
        Map {
            batch,
            channels,
            height,
            width,
            pixel_channels: channels.next_multiple_of(4),
        }
    }

    /// A vector of `k` per sample (a linear layer's input that no convolution made).
    pub fn vector(batch: usize, k: usize) -> Map {
        Map {
            batch,
            channels: k,
            height: 1,
            width: 1,
            pixel_channels: k,
        }
    }

    /// Words per sample.
    pub fn words(&self) -> usize {
        (self.height * self.width * self.pixel_channels).div_ceil(4)
    }

    /// Words per pixel of an image map.
    fn pixel_words(&self) -> usize {
        self.pixel_channels / 4
    }

    /// The logical NCHW shape.
    pub fn shape(&self) -> [usize; 4] {
        [self.batch, self.channels, self.height, self.width]
    }

    /// The position, in a sample's packed bytes, of channel `c` at pixel `p`.
    pub fn byte_of(&self, c: usize, p: usize) -> usize {
        p * self.pixel_channels + c
    }

    fn tensor(&self, gpu: &Gpu) -> Result<Tensor> {
        gpu.empty(&[self.batch, self.words()], DType::U32)
    }

    fn expect(&self, op: &str, t: &Tensor) -> Result<()> {
        t.expect(op, "x", DType::U32, &[self.batch, self.words()])
    }

    fn expect_image(&self, op: &str) -> Result<()> {
        if self.pixel_channels != self.channels.next_multiple_of(4) {
            return Err(shape_error(
                op,
                format!("needs a map with whole words per pixel, got {self:?}"),
            ));
        }
        Ok(())
    }
}

/// A uint8 grid: `real = (q − zero_point) · scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    /// The step.
    pub scale: f32,
    /// The integer that stands for 0.
    pub zero_point: i32,
}

impl Grid {
    /// The grid of `scale` and `zero_point` (read as f64, whatever stored them), or why it is
    /// not one: the one rule every reader of a grid (files, attributes, launchers) applies.
    pub fn checked(scale: f64, zero_point: f64) -> std::result::Result<Grid, String> {
        let zero_point_ok = zero_point.fract() == 0.0 && (0.0..=255.0).contains(&zero_point);
        if !(scale.is_finite() && scale > 0.0 && scale <= f64::from(f32::MAX) && zero_point_ok) {
            return Err(format!(
                "a uint8 grid needs a positive, finite scale and a whole zero point in [0, 255], got {scale} and {zero_point}"
            ));
        }
        Ok(Grid {
            scale: scale as f32,
            zero_point: zero_point as i32,
        })
    }

    fn check(&self, op: &str) -> Result<()> {
        Grid::checked(f64::from(self.scale), f64::from(self.zero_point))
            .map(|_| ())
            .map_err(|m| input_error(op, m))
    }

    /// The output [`Requant`] onto this grid, clamped below at the zero point with a ReLU
    /// fused and above at 6 with a ReLU6.
    pub fn requant(&self, relu: bool, relu6: bool) -> Requant {
        let inv_scale = 1.0 / self.scale;
        let lo = if relu || relu6 { self.zero_point } else { 0 };
        let hi = if relu6 {
            cpu::to_grid(6.0 * f64::from(inv_scale), self.zero_point, 0, 255)
        } else {
            255
        };
        Requant::Grid {
            inv_scale,
            zero_point: self.zero_point,
            lo,
            hi,
        }
    }
}

/// Packs bytes four to a word (byte `b` of word `j` is element `4j + b`), zero-padded.
pub fn pack_bytes(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u32, |w, (b, &v)| w | (u32::from(v) << (8 * b)))
        })
        .collect()
}

/// Unpacks a map's words into NCHW grid values.
pub fn unpack_map(words: &[u32], map: Map) -> Vec<i32> {
    let pixels = map.height * map.width;
    let mut out = Vec::with_capacity(map.batch * map.channels * pixels);
    for n in 0..map.batch {
        let sample = &words[n * map.words()..(n + 1) * map.words()];
        for c in 0..map.channels {
            for p in 0..pixels {
                let e = map.byte_of(c, p);
                out.push(((sample[e / 4] >> (8 * (e % 4))) & 0xff) as i32);
            }
        }
    }
    out
}

/// Packs NCHW grid values (`0..=255`) into a map's words, padding with `pad`.
pub fn pack_map(q: &[i32], map: Map, pad: u8) -> Vec<u32> {
    let pixels = map.height * map.width;
    let mut words = Vec::with_capacity(map.batch * map.words());
    for n in 0..map.batch {
        let mut bytes = vec![pad; 4 * map.words()];
        for c in 0..map.channels {
            for p in 0..pixels {
                bytes[map.byte_of(c, p)] = q[(n * map.channels + c) * pixels + p] as u8;
            }
        }
        words.extend(pack_bytes(&bytes));
    }
    words
}

/// A linear layer's weights `[n, channels·height·width]` (columns in the NCHW order of `input`,
/// as PyTorch flattens) packed in `input`'s byte order: `[n, input.words()]`.
pub fn pack_linear_weights(w: &[i8], n: usize, input: Map) -> Vec<u32> {
    let pixels = input.height * input.width;
    let k = input.channels * pixels;
    let mut words = Vec::with_capacity(n * input.words());
    for o in 0..n {
        let mut bytes = vec![0u8; 4 * input.words()];
        for c in 0..input.channels {
            for p in 0..pixels {
                bytes[input.byte_of(c, p)] = w[o * k + c * pixels + p] as u8;
            }
        }
        words.extend(pack_bytes(&bytes));
    }
    words
}

/// An ordinary convolution's weights `[o, c, k, k]` as `[o, k, k, words]`, each tap's channels
/// padded to whole words.
pub fn pack_conv_weights(w: &[i8], out: usize, channels: usize, kernel: usize) -> Vec<u32> {
    let padded = channels.next_multiple_of(4);
    let mut bytes = vec![0u8; out * kernel * kernel * padded];
    for o in 0..out {
        for c in 0..channels {
            for t in 0..kernel * kernel {
                bytes[(o * kernel * kernel + t) * padded + c] =
                    w[(o * channels + c) * kernel * kernel + t] as u8;
            }
        }
    }
    pack_bytes(&bytes)
}

/// A depthwise convolution's weights `[c, 1, k, k]` as `[k, k, words]`: four channels' bytes per
/// word.
pub fn pack_depthwise_weights(w: &[i8], channels: usize, kernel: usize) -> Vec<u32> {
    let padded = channels.next_multiple_of(4);
    let mut bytes = vec![0u8; kernel * kernel * padded];
    for c in 0..channels {
        for t in 0..kernel * kernel {
            bytes[t * padded + c] = w[c * kernel * kernel + t] as u8;
        }
    }
    pack_bytes(&bytes)
}

/// The kernels' epilogue words for a layer whose input grid has zero point `zp_in`: per output
/// channel its multiplier and bias (f32 bits) and the correction `(128 − zp_in)·Σ q_w` that
/// turns the kernels' `Σ (q_x − 128)·q_w` into `Σ (q_x − zp_in)·q_w`. `weight_sums[c]` is
/// channel c's `Σ q_w` over all its taps.
pub fn epilogue_words(epilogue: &Epilogue, weight_sums: &[i32], zp_in: i32) -> Vec<u32> {
    epilogue
        .multiplier
        .iter()
        .zip(&epilogue.bias)
        .zip(weight_sums)
        .flat_map(|((m, b), s)| [m.to_bits(), b.to_bits(), ((128 - zp_in) * s) as u32, 0])
        .collect()
}

/// `Σ q_w` per output channel of weights whose channels hold `per_channel` values each.
pub fn weight_sums(w: &[i8], per_channel: usize) -> Vec<i32> {
    w.chunks(per_channel)
        .map(|c| c.iter().map(|&v| i32::from(v)).sum())
        .collect()
}

fn output(requant: Requant) -> (i32, i32, i32, f32, u32) {
    match requant {
        Requant::Float => (0, 0, 255, 1.0, 1),
        Requant::Grid {
            inv_scale,
            zero_point,
            lo,
            hi,
        } => (zero_point, lo, hi, inv_scale, 0),
    }
}

fn to_u32(n: usize) -> u32 {
    n as u32
}

/// Prepares `x` (f32, NCHW `map.shape()`) quantised onto `grid` as the packed `map`.
pub fn quantize(gpu: &Gpu, x: &Tensor, map: Map, grid: Grid) -> Result<(Dispatch, Tensor)> {
    grid.check("int8_quantize")?;
    x.expect("int8_quantize", "x", DType::F32, &map.shape())?;
    let out = map.tensor(gpu)?;
    let p = Params {
        batch: to_u32(map.batch),
        channels: to_u32(map.channels),
        in_h: to_u32(map.height),
        in_w: to_u32(map.width),
        out_words: to_u32(map.words()),
        pixel_channels: to_u32(map.pixel_channels),
        zp_in: grid.zero_point,
        scale: 1.0 / grid.scale,
        ..Params::default()
    };
    let d = gpu.dispatch_over(&QUANTIZE, &p, &[x, &out], map.batch * map.words())?;
    Ok((d, out))
}

/// Prepares the reals `(q − zp)·s` of packed `q`, as f32 NCHW.
pub fn dequantize(gpu: &Gpu, q: &Tensor, map: Map, grid: Grid) -> Result<(Dispatch, Tensor)> {
    grid.check("int8_dequantize")?;
    map.expect("int8_dequantize", q)?;
    let out = gpu.empty(&map.shape(), DType::F32)?;
    let p = Params {
        batch: to_u32(map.batch),
        channels: to_u32(map.channels),
        in_h: to_u32(map.height),
        in_w: to_u32(map.width),
        in_words: to_u32(map.words()),
        pixel_channels: to_u32(map.pixel_channels),
        zp_in: grid.zero_point,
        scale: grid.scale,
        ..Params::default()
    };
    let d = gpu.dispatch_over(&DEQUANTIZE, &p, &[q, &out], out.numel())?;
    Ok((d, out))
}

/// A layer's packed weights and epilogue words on the GPU, with its output channels.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// Packed int8 weights.
    pub weights: Tensor,
    /// Four words per output channel ([`epilogue_words`]).
    pub epilogue: Tensor,
    /// Output channels.
    pub out_channels: usize,
}

/// How a layer reads its input, which decides how its weights are packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// A linear layer over the (flattened) input map.
    Linear,
    /// An ordinary convolution with this window.
    Conv(Window),
    /// A depthwise convolution (groups = channels) with this window.
    Depthwise(Window),
}

/// The most inputs one output may sum: `255·128` per term stays inside i32.
const MAX_INPUTS: usize = (i32::MAX as usize) / (255 * 128);

impl LayerWeights {
    /// Packs int8 weights in PyTorch's layout (`[out, in / groups, k, k]` or `[out, in]`, `out`
    /// rows) for a layer of `kind` over `input`, whose grid has zero point `zp_in`, and uploads
    /// them with the epilogue. Returns the layer and its bytes on the GPU.
    pub fn build(
        gpu: &Gpu,
        kind: LayerKind,
        w: &[i8],
        input: Map,
        epilogue: &Epilogue,
        zp_in: i32,
    ) -> Result<(LayerWeights, usize)> {
        let out = epilogue.bias.len();
        let per = match kind {
            LayerKind::Linear => input.channels * input.height * input.width,
            LayerKind::Conv(w) => input.channels * w.kernel * w.kernel,
            LayerKind::Depthwise(w) => w.kernel * w.kernel,
        };
        if out == 0 || per == 0 || w.len() != out * per || epilogue.multiplier.len() != out {
            return Err(shape_error(
                "int8 layer",
                format!(
                    "{} weights for {out} outputs of {per} inputs each ({kind:?} over {:?})",
                    w.len(),
                    input.shape()
                ),
            ));
        }
        if per > MAX_INPUTS || (matches!(kind, LayerKind::Depthwise(_)) && out != input.channels) {
            return Err(shape_error(
                "int8 layer",
                format!(
                    "{kind:?} over {:?} to {out} outputs is not supported (at most {MAX_INPUTS} inputs per output; a depthwise layer keeps its channels)",
                    input.shape()
                ),
            ));
        }
        let packed = match kind {
            LayerKind::Linear => pack_linear_weights(w, out, input),
            LayerKind::Conv(window) => pack_conv_weights(w, out, input.channels, window.kernel),
            LayerKind::Depthwise(window) => pack_depthwise_weights(w, out, window.kernel),
        };
        let words = epilogue_words(epilogue, &weight_sums(w, per), zp_in);
        let layer = LayerWeights {
            weights: gpu.upload(&[packed.len()], &packed)?,
            epilogue: gpu.upload(&[words.len()], &words)?,
            out_channels: out,
        };
        Ok((layer, 4 * (packed.len() + words.len())))
    }

    fn check(&self, op: &str, weight_words: usize) -> Result<()> {
        self.weights
            .expect(op, "weights", DType::U32, &[weight_words])?;
        self.epilogue
            .expect(op, "epilogue", DType::U32, &[self.out_channels * 4])
    }
}

/// Prepares a linear layer over the packed `input`: its reals as f32 `[batch, n]`
/// ([`Requant::Float`]) or a packed vector map of `n` on the output grid.
pub fn linear(
    gpu: &Gpu,
    path: DotPath,
    x: &Tensor,
    input: Map,
    layer: &LayerWeights,
    requant: Requant,
) -> Result<(Dispatch, Tensor)> {
    let op = "int8_linear";
    input.expect(op, x)?;
    let n = layer.out_channels;
    layer.check(op, n * input.words())?;
    let out_map = Map::vector(input.batch, n);
    let (zp_out, lo, hi, scale, out_float) = output(requant);
    let out = if out_float == 1 {
        gpu.empty(&[input.batch, n], DType::F32)?
    } else {
        out_map.tensor(gpu)?
    };
    let out_words = n.div_ceil(4);
    gpu.check_loops(&path.pick(LINEAR_DOT4, LINEAR), input.words() as u64 + 8)?;
    let p = Params {
        batch: to_u32(input.batch),
        channels: to_u32(n),
        in_words: to_u32(input.words()),
        out_words: to_u32(out_words),
        zp_out,
        lo,
        hi,
        scale,
        out_float,
        ..Params::default()
    };
    let spec = path.pick(LINEAR_DOT4, LINEAR);
    let items = input.batch.div_ceil(4) * out_words;
    let d = gpu.dispatch_over(
        &spec,
        &p,
        &[x, &layer.weights, &layer.epilogue, &out],
        items,
    )?;
    Ok((d, out))
}

/// Prepares a convolution (groups 1, or depthwise: groups = channels = output channels) of the
/// packed image map `input` with zero point `zp_in`, onto the output grid; returns the output
/// map too.
pub fn conv2d(
    gpu: &Gpu,
    path: DotPath,
    (x, input): (&Tensor, Map),
    zp_in: i32,
    layer: &LayerWeights,
    kind: LayerKind,
    requant: Requant,
) -> Result<(Dispatch, Tensor, Map)> {
    let op = "int8_conv2d";
    let (window, depthwise) = match kind {
        LayerKind::Conv(w) => (w, false),
        LayerKind::Depthwise(w) => (w, true),
        LayerKind::Linear => return Err(input_error(op, "a linear layer is not a convolution")),
    };
    input.expect(op, x)?;
    input.expect_image(op)?;
    let (k, c) = (window.kernel, input.channels);
    if !window.fits(input.height, input.width) {
        return Err(shape_error(
            op,
            format!("{window:?} does not fit {input:?}"),
        ));
    }
    let o = layer.out_channels;
    if depthwise && o != c {
        return Err(shape_error(
            op,
            format!("a depthwise convolution keeps its {c} channels, not {o}"),
        ));
    }
    let Requant::Grid { .. } = requant else {
        return Err(input_error(op, "a convolution's output goes onto a grid"));
    };
    let out_map = Map::image(
        input.batch,
        o,
        window.out(input.height),
        window.out(input.width),
    );
    let weight_words = if depthwise {
        k * k * out_map.pixel_words()
    } else {
        o * k * k * input.pixel_words()
    };
    layer.check(op, weight_words)?;
    let (zp_out, lo, hi, scale, _) = output(requant);
    let p = Params {
        batch: to_u32(input.batch),
        channels: to_u32(o),
        in_h: to_u32(input.height),
        in_w: to_u32(input.width),
        in_words: to_u32(input.pixel_words()),
        out_h: to_u32(out_map.height),
        out_w: to_u32(out_map.width),
        out_words: to_u32(out_map.pixel_words()),
        kernel: to_u32(k),
        stride: to_u32(window.stride),
        padding: to_u32(window.padding),
        zp_in,
        zp_out,
        lo,
        hi,
        scale,
        ..Params::default()
    };
    let out = out_map.tensor(gpu)?;
    let tensors = [x, &layer.weights, &layer.epilogue, &out];
    let pixels = out_map.batch * out_map.height;
    let d = if depthwise {
        gpu.check_loops(&DEPTHWISE, (k * k + k + 20) as u64)?;
        let items = pixels * out_map.width * out_map.pixel_words();
        gpu.dispatch_over(&DEPTHWISE, &p, &tensors, items)?
    } else {
        let spec = path.pick(CONV2D_DOT4, CONV2D);
        gpu.check_loops(&spec, (k * k * input.pixel_words() + k * k + k + 24) as u64)?;
        let items = pixels * out_map.width.div_ceil(4) * out_map.pixel_words();
        gpu.dispatch_over(&spec, &p, &tensors, items)?
    };
    Ok((d, out, out_map))
}

fn pool_params(input: Map, out: Map, window: Window) -> Params {
    Params {
        batch: to_u32(input.batch),
        channels: to_u32(input.channels),
        in_h: to_u32(input.height),
        in_w: to_u32(input.width),
        in_words: to_u32(input.pixel_words()),
        out_h: to_u32(out.height),
        out_w: to_u32(out.width),
        out_words: to_u32(out.pixel_words()),
        kernel: to_u32(window.kernel),
        stride: to_u32(window.stride),
        padding: to_u32(window.padding),
        ..Params::default()
    }
}

/// Prepares max pooling of a packed image map; returns the output map too.
pub fn max_pool(
    gpu: &Gpu,
    x: &Tensor,
    input: Map,
    window: Window,
) -> Result<(Dispatch, Tensor, Map)> {
    let op = "int8_max_pool";
    input.expect(op, x)?;
    input.expect_image(op)?;
    if !window.fits(input.height, input.width) || 2 * window.padding > window.kernel {
        return Err(shape_error(
            op,
            format!("{window:?} is not a pooling window"),
        ));
    }
    let out_map = Map::image(
        input.batch,
        input.channels,
        window.out(input.height),
        window.out(input.width),
    );
    let out = out_map.tensor(gpu)?;
    let p = pool_params(input, out_map, window);
    gpu.check_loops(&MAX_POOL, (window.kernel * (window.kernel + 1)) as u64)?;
    let d = gpu.dispatch_over(&MAX_POOL, &p, &[x, &out], out_map.batch * out_map.words())?;
    Ok((d, out, out_map))
}

/// Prepares each channel's mean over a packed image map, on the same grid (`c × 1 × 1`).
pub fn global_avg_pool(gpu: &Gpu, x: &Tensor, input: Map) -> Result<(Dispatch, Tensor, Map)> {
    let op = "int8_global_avg_pool";
    input.expect(op, x)?;
    input.expect_image(op)?;
    let out_map = Map::image(input.batch, input.channels, 1, 1);
    let out = out_map.tensor(gpu)?;
    let window = Window {
        kernel: 1,
        stride: 1,
        padding: 0,
    };
    let p = pool_params(input, out_map, window);
    gpu.check_loops(&GLOBAL_AVG_POOL, (input.height * input.width + 4) as u64)?;
    let d = gpu.dispatch_over(
        &GLOBAL_AVG_POOL,
        &p,
        &[x, &out],
        out_map.batch * out_map.words(),
    )?;
    Ok((d, out, out_map))
}

// ---------------------------------------------------------------------------------------------
// The catalogue.

/// Grid values in `[0, 255]` for `n` elements.
fn sample_bytes(n: usize, seed: u64) -> Vec<i32> {
    sample_f64(n, seed)
        .iter()
        .map(|v| ((v + 1.0) * 127.9) as i32)
        .collect()
}

/// int8 weights in `[−128, 127]`.
fn sample_weights(n: usize, seed: u64) -> Vec<i8> {
    sample_f64(n, seed)
        .iter()
        .map(|v| (v * 128.0).clamp(-128.0, 127.0) as i8)
        .collect()
}

/// An epilogue whose products are exact in f32: power-of-two multipliers and biases on a
/// coarse binary grid, so the GPU's rounding and the reference's agree to the bit.
fn exact_epilogue(channels: usize, shift: i32) -> Epilogue {
    Epilogue {
        multiplier: (0..channels)
            .map(|c| 2f32.powi(-(shift + (c % 3) as i32)))
            .collect(),
        bias: (0..channels)
            .map(|c| ((c as f32 * 7.0) % 13.0 - 6.0) * 0.25)
            .collect(),
    }
}

const OUT_GRID: Grid = Grid {
    scale: 0.125,
    zero_point: 37,
};
const IN_ZP: i32 = 91;

/// Grid values as the f32 reals of [`OUT_GRID`].
fn on_out_grid(q: &[f64]) -> Vec<f64> {
    q.iter()
        .map(|&v| (v - f64::from(OUT_GRID.zero_point)) * f64::from(OUT_GRID.scale))
        .collect()
}

/// A linear layer over the packed `map` (a vector, or a flattened image map: its weights'
/// columns in NCHW order, as PyTorch flattens), to `n` outputs.
fn linear_case(path: DotPath, map: Map, n: usize, requant: Requant) -> Case {
    let (b, k) = (map.batch, map.channels * map.height * map.width);
    let tag = match (path, requant) {
        (DotPath::Builtin, Requant::Float) => "int8_linear dot4 →f32",
        (DotPath::Portable, Requant::Float) => "int8_linear →f32",
        (DotPath::Builtin, _) => "int8_linear dot4 +relu6",
        (DotPath::Portable, _) => "int8_linear +relu6",
    };
    let work = Work::Flops(2.0 * (b * n * k) as f64);
    let shape = if map.height * map.width == 1 {
        format!("{b}x{n}x{k}")
    } else {
        let padded = if map.pixel_channels > map.channels {
            " padded"
        } else {
            ""
        };
        format!("{:?}{padded}→{n}", map.shape())
    };
    Case::new(tag, shape, work, move |gpu| {
        let x = gpu.upload(
            &[b, map.words()],
            &pack_map(&sample_bytes(b * k, 40), map, 0),
        )?;
        let w = sample_weights(n * k, 41);
        let ep = exact_epilogue(n, 6);
        let (layer, _) = LayerWeights::build(gpu, LayerKind::Linear, &w, map, &ep, IN_ZP)?;
        let (d, y) = linear(gpu, path, &x, map, &layer, requant)?;
        if requant == Requant::Float {
            return Ok(Prepared::new(vec![d], vec![y]));
        }
        let (dq, real) = dequantize(gpu, &y, Map::vector(b, n), OUT_GRID)?;
        Ok(Prepared::new(vec![d, dq], vec![real]))
    })
    .reference(move || {
        let w: Vec<i32> = sample_weights(n * k, 41)
            .iter()
            .map(|&v| v.into())
            .collect();
        let y = cpu::linear(
            &sample_bytes(b * k, 40),
            IN_ZP,
            &w,
            k,
            &exact_epilogue(n, 6),
            requant,
        );
        match requant {
            Requant::Float => y,
            _ => on_out_grid(&y),
        }
    })
    // The reals' sums may pass f32's 24 bits; the grid values are exact.
    .tolerance(if requant == Requant::Float { 1e-6 } else { 0.0 }, 0.0)
}

fn conv_case(
    path: DotPath,
    shape: [usize; 4],
    out: usize,
    window: Window,
    depthwise: bool,
) -> Case {
    let [n, c, h, w] = shape;
    let tag = match (path, depthwise) {
        (_, true) => "int8_depthwise +relu",
        (DotPath::Builtin, false) => "int8_conv2d dot4 +relu",
        (DotPath::Portable, false) => "int8_conv2d +relu",
    };
    let (oh, ow, k) = (window.out(h), window.out(w), window.kernel);
    let per_out = if depthwise { k * k } else { c * k * k };
    let work = Work::Flops(2.0 * (n * out * oh * ow * per_out) as f64);
    let label = format!(
        "{shape:?}→{out} k{k} s{} p{}",
        window.stride, window.padding
    );
    let input = Map::image(n, c, h, w);
    let requant = OUT_GRID.requant(true, false);
    Case::new(tag, label, work, move |gpu| {
        let x_words = pack_map(&sample_bytes(n * c * h * w, 42), input, 0);
        let x = gpu.upload(&[n, input.words()], &x_words)?;
        let wt = sample_weights(out * per_out, 43);
        let kind = if depthwise {
            LayerKind::Depthwise(window)
        } else {
            LayerKind::Conv(window)
        };
        let ep = exact_epilogue(out, 9);
        let (layer, _) = LayerWeights::build(gpu, kind, &wt, input, &ep, IN_ZP)?;
        let (d, y, map) = conv2d(gpu, path, (&x, input), IN_ZP, &layer, kind, requant)?;
        let (dq, real) = dequantize(gpu, &y, map, OUT_GRID)?;
        Ok(Prepared::new(vec![d, dq], vec![real]))
    })
    .reference(move || {
        let wt: Vec<i32> = sample_weights(out * per_out, 43)
            .iter()
            .map(|&v| v.into())
            .collect();
        let groups = if depthwise { c } else { 1 };
        let x = sample_bytes(n * c * h * w, 42);
        let ep = exact_epilogue(out, 9);
        on_out_grid(&cpu::conv2d(
            &x, shape, IN_ZP, &wt, out, groups, window, &ep, requant,
        ))
    })
    .tolerance(0.0, 0.0)
}

/// Quantisation then dequantisation of reals, and both poolings, through dequantisation.
fn map_cases() -> Vec<Case> {
    let grid = Grid {
        scale: 0.0625,
        zero_point: 100,
    };
    let shape = [3, 5, 7, 9];
    let [n, c, h, w] = shape;
    let numel = n * c * h * w;
    let reals = move || -> Vec<f32> {
        sample_f64(numel, 44)
            .iter()
            .map(|v| (10.0 * v) as f32)
            .collect()
    };
    let roundtrip = Case::new(
        "int8_quantize+dequantize",
        format!("{shape:?}"),
        Work::Bytes(5.0 * numel as f64),
        move |gpu| {
            let map = Map::image(n, c, h, w);
            let x = gpu.upload(&shape, &reals())?;
            let (q, packed) = quantize(gpu, &x, map, grid)?;
            let (dq, y) = dequantize(gpu, &packed, map, grid)?;
            Ok(Prepared::new(vec![q, dq], vec![y]))
        },
    )
    .reference(move || {
        let x: Vec<f64> = reals().iter().map(|&v| f64::from(v)).collect();
        cpu::dequantize(
            &cpu::quantize(&x, 1.0 / grid.scale, grid.zero_point),
            grid.scale,
            grid.zero_point,
        )
    })
    .tolerance(0.0, 0.0);
    let window = Window {
        kernel: 3,
        stride: 2,
        padding: 1,
    };
    let pool = Case::new(
        "int8_max_pool+global_avg_pool",
        format!("{shape:?} k3 s2 p1"),
        Work::Bytes(numel as f64),
        move |gpu| {
            let map = Map::image(n, c, h, w);
            let x = gpu.upload(
                &[n, map.words()],
                &pack_map(&sample_bytes(numel, 45), map, 0),
            )?;
            let (mp, pooled, pooled_map) = max_pool(gpu, &x, map, window)?;
            let (ap, mean, mean_map) = global_avg_pool(gpu, &x, map)?;
            let (d1, a) = dequantize(gpu, &pooled, pooled_map, grid)?;
            let (d2, b) = dequantize(gpu, &mean, mean_map, grid)?;
            Ok(Prepared::new(vec![mp, ap, d1, d2], vec![a, b]))
        },
    )
    .reference(move || {
        let x = sample_bytes(numel, 45);
        let mut q = cpu::max_pool(&x, shape, window);
        q.extend(cpu::global_avg_pool(&x, h * w));
        cpu::dequantize(&q, grid.scale, grid.zero_point)
    })
    .tolerance(0.0, 0.0);
    vec![roundtrip, pool]
}

/// The family's catalogue: both dot-product paths where the adapter has the built-in (the
/// portable one everywhere) on shapes off every block, and for timing a linear layer and a
/// convolution against their f32 kernels at the same shapes.
pub fn cases(gpu: &Gpu, suite: Suite) -> Vec<Case> {
    let paths: Vec<DotPath> = if gpu.caps().packed_dot {
        vec![DotPath::Portable, DotPath::Builtin]
    } else {
        vec![DotPath::Portable]
    };
    if let Suite::Bench { .. } = suite {
        return bench_cases(suite, &paths);
    }
    let mut cases = map_cases();
    let pad1 = |stride| Window {
        kernel: 3,
        stride,
        padding: 1,
    };
    for &path in &paths {
        let relu6 = OUT_GRID.requant(false, true);
        cases.push(linear_case(path, Map::vector(7, 33), 5, relu6));
        cases.push(linear_case(path, Map::vector(130, 197), 10, Requant::Float));
        // Flattened maps: channels padded to words per pixel, and packed tight.
        cases.push(linear_case(path, Map::image(3, 5, 3, 2), 6, relu6));
        let tight = Map {
            pixel_channels: 3,
            ..Map::image(2, 3, 2, 3)
        };
        cases.push(linear_case(path, tight, 7, Requant::Float));
        cases.push(conv_case(path, [2, 3, 9, 11], 6, pad1(1), false));
        cases.push(conv_case(path, [1, 9, 8, 7], 13, pad1(2), false));
    }
    cases.push(conv_case(DotPath::Portable, [2, 6, 9, 7], 6, pad1(2), true));
    cases
}

fn bench_cases(suite: Suite, paths: &[DotPath]) -> Vec<Case> {
    use crate::kernels::{conv, matmul};
    let (b, k, n) = (128, suite.pick(512, 4096), suite.pick(512, 4096));
    let f32_linear = Case::new(
        "f32 linear (int8 baseline)",
        format!("{b}x{n}x{k}"),
        Work::Flops(2.0 * (b * n * k) as f64),
        move |gpu| {
            let (x, w) = (
                sample_tensor(gpu, &[b, k], 1)?,
                sample_tensor(gpu, &[n, k], 2)?,
            );
            let options = matmul::MatmulOptions {
                trans_b: true,
                ..Default::default()
            };
            let (d, y) = matmul::matmul(gpu, &x, &w, None, options)?;
            Ok(Prepared::new(vec![d], vec![y]))
        },
    );
    let [cn, cc, ch] = [suite.pick(32, 128), 32, 14];
    let f32_conv = Case::new(
        "f32 conv2d (int8 baseline)",
        format!("[{cn}, {cc}, {ch}, {ch}]→{cc} k3"),
        Work::Flops(2.0 * (cn * cc * cc * ch * ch * 9) as f64),
        move |gpu| {
            let (x, w) = (
                sample_tensor(gpu, &[cn, cc, ch, ch], 3)?,
                sample_tensor(gpu, &[cc, cc, 3, 3], 4)?,
            );
            let (d, y) = conv::forward(gpu, &x, &w, None, &conv::Conv2d::new(1, 1))?;
            Ok(Prepared::new(vec![d], vec![y]))
        },
    );
    let (linear_key, conv_key) = (f32_linear.key(), f32_conv.key());
    let mut cases = vec![f32_linear, f32_conv];
    let window = Window {
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    for &path in paths {
        cases.push(
            linear_case(path, Map::vector(b, k), n, OUT_GRID.requant(true, false))
                .baseline(linear_key.clone()),
        );
        cases.push(conv_case(path, [cn, cc, ch, ch], cc, window, false).baseline(conv_key.clone()));
    }
    cases
}
