//! ReLU, ReLU6, leaky ReLU, GELU and tanh forward and backward (`shaders/activation.wgsl`).

use crate::Result;
use crate::catalogue::{
    Case, Prepared, Suite, Work, memory_case, sample_f64, sample_tensor, stream_len,
};
use crate::error::{input_error, shape_error};
use crate::gpu::{Binding, DType, Dispatch, Gpu, KernelSpec, Tensor};
use crate::reference::activation::Act;

use Binding::{Output as W, ReadOnly as R, Uniform as U};

/// `y = max(x, 0)`.
pub const RELU_FORWARD: KernelSpec =
    KernelSpec::new::<Params>("activation", "relu_forward", &[U, R, W]);
/// `y = min(max(x, 0), 6)`.
pub const RELU6_FORWARD: KernelSpec =
    KernelSpec::new::<Params>("activation", "relu6_forward", &[U, R, W]);
/// `y = x` where positive, `slope·x` elsewhere.
pub const LEAKY_RELU_FORWARD: KernelSpec =
    KernelSpec::new::<Params>("activation", "leaky_relu_forward", &[U, R, W]);
/// `y = x·Φ(x)`.
pub const GELU_FORWARD: KernelSpec =
    KernelSpec::new::<Params>("activation", "gelu_forward", &[U, R, W]);
/// `y = tanh(x)`.
pub const TANH_FORWARD: KernelSpec =
    KernelSpec::new::<Params>("activation", "tanh_forward", &[U, R, W]);
/// `dx = dy·[x > 0]`.
pub const RELU_BACKWARD: KernelSpec =
    KernelSpec::new::<Params>("activation", "relu_backward", &[U, R, R, W]);
/// `dx = dy·[0 < x < 6]`.
pub const RELU6_BACKWARD: KernelSpec =
    KernelSpec::new::<Params>("activation", "relu6_backward", &[U, R, R, W]);
/// `dx = dy` where `x > 0`, `slope·dy` elsewhere.
pub const LEAKY_RELU_BACKWARD: KernelSpec =
    KernelSpec::new::<Params>("activation", "leaky_relu_backward", &[U, R, R, W]);
/// `dx = dy·(Φ(x) + x·φ(x))`.
pub const GELU_BACKWARD: KernelSpec =
    KernelSpec::new::<Params>("activation", "gelu_backward", &[U, R, R, W]);
/// `dx = dy·(1 − tanh²(x))`.
pub const TANH_BACKWARD: KernelSpec =
    KernelSpec::new::<Params>("activation", "tanh_backward", &[U, R, R, W]);

/// [`RELU_FORWARD`] over vec4 (n a multiple of 4).
pub const RELU_FORWARD_VEC4: KernelSpec =
    KernelSpec::new::<Params>("activation", "relu_forward_vec4", &[U, R, W]);
/// [`RELU6_FORWARD`] over vec4.
pub const RELU6_FORWARD_VEC4: KernelSpec =
    KernelSpec::new::<Params>("activation", "relu6_forward_vec4", &[U, R, W]);
/// [`RELU_BACKWARD`] over vec4.
pub const RELU_BACKWARD_VEC4: KernelSpec =
    KernelSpec::new::<Params>("activation", "relu_backward_vec4", &[U, R, R, W]);
/// [`RELU6_BACKWARD`] over vec4.
pub const RELU6_BACKWARD_VEC4: KernelSpec =
    KernelSpec::new::<Params>("activation", "relu6_backward_vec4", &[U, R, R, W]);

/// Every kernel of the family.
pub const KERNELS: &[KernelSpec] = &[
    RELU_FORWARD_VEC4,
    RELU6_FORWARD_VEC4,
    RELU_BACKWARD_VEC4,
    RELU6_BACKWARD_VEC4,
    RELU_FORWARD,
    RELU6_FORWARD,
    LEAKY_RELU_FORWARD,
    GELU_FORWARD,
    TANH_FORWARD,
    RELU_BACKWARD,
    RELU6_BACKWARD,
    LEAKY_RELU_BACKWARD,
    GELU_BACKWARD,
    TANH_BACKWARD,
];

/// Which activation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// ReLU.
    Relu,
    /// ReLU capped at 6 (`nn.ReLU6`, MobileNet's: its bounded range suits int8).
    Relu6,
    /// Leaky ReLU with its negative slope (`nn.LeakyReLU(negative_slope)`).
    LeakyRelu(f32),
    /// Exact GELU.
    Gelu,
    /// Hyperbolic tangent (a generator's output layer).
    Tanh,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    slope: f32,
    pad: [u32; 2],
}

fn params(op: &str, kind: Kind, t: &Tensor) -> Result<Params> {
    t.expect(op, "x", DType::F32, t.shape())?;
    let n = u32::try_from(t.numel())
        .map_err(|_| shape_error(op, "too many elements for u32 indexing"))?;
    let slope = match kind {
        Kind::LeakyRelu(slope) if !slope.is_finite() => {
            return Err(input_error(
                op,
                format!("slope must be finite, got {slope}"),
            ));
        }
        Kind::LeakyRelu(slope) => slope,
        Kind::Relu | Kind::Relu6 | Kind::Gelu | Kind::Tanh => 0.0,
    };
    Ok(Params {
        n,
        slope,
        pad: [0; 2],
    })
}

/// Prepares `y = f(x)` into a new tensor.
pub fn forward(gpu: &Gpu, kind: Kind, x: &Tensor) -> Result<(Dispatch, Tensor)> {
    // ReLU and ReLU6 have vec4 variants (see the shader).
    let kernels = match kind {
        Kind::Relu => (&RELU_FORWARD, Some(&RELU_FORWARD_VEC4)),
        Kind::Relu6 => (&RELU6_FORWARD, Some(&RELU6_FORWARD_VEC4)),
        Kind::LeakyRelu(_) => (&LEAKY_RELU_FORWARD, None),
        Kind::Gelu => (&GELU_FORWARD, None),
        Kind::Tanh => (&TANH_FORWARD, None),
    };
    launch(gpu, kernels, kind, &[x], x)
}

/// Prepares `dx = dy·f'(x)` into a new tensor; `x` is the activation's input.
pub fn backward(gpu: &Gpu, kind: Kind, x: &Tensor, dy: &Tensor) -> Result<(Dispatch, Tensor)> {
    let kernels = match kind {
        Kind::Relu => (&RELU_BACKWARD, Some(&RELU_BACKWARD_VEC4)),
        Kind::Relu6 => (&RELU6_BACKWARD, Some(&RELU6_BACKWARD_VEC4)),
        Kind::LeakyRelu(_) => (&LEAKY_RELU_BACKWARD, None),
        Kind::Gelu => (&GELU_BACKWARD, None),
        Kind::Tanh => (&TANH_BACKWARD, None),
    };
    dy.expect(kernels.0.entry, "dy", DType::F32, x.shape())?;
    launch(gpu, kernels, kind, &[x, dy], x)
}

/// Launches `(kernel, its vec4 variant if any)` over `x`'s elements, reading `inputs` and
/// writing a new tensor shaped like `x`.
fn launch(
    gpu: &Gpu,
    (one, quads): (&KernelSpec, Option<&KernelSpec>),
    kind: Kind,
    inputs: &[&Tensor],
    x: &Tensor,
) -> Result<(Dispatch, Tensor)> {
    let p = params(one.entry, kind, x)?;
    let out = gpu.empty(x.shape(), DType::F32)?;
    let tensors: Vec<&Tensor> = inputs.iter().copied().chain([&out]).collect();
    let d = super::dispatch_per_element(gpu, one, quads, &p, &tensors, x.numel())?;
    Ok((d, out))
}

/// The family's catalogue: every activation forward and backward at odd sizes (ReLU6's inputs
/// scaled by 8, exactly, so both of its kinks are crossed).
pub fn cases(_: &Gpu, suite: Suite) -> Vec<Case> {
    let kinds = [
        (Kind::Relu, Act::Relu, "relu", 1.0),
        (Kind::Relu6, Act::Relu6, "relu6", 8.0),
        (
            Kind::LeakyRelu(0.1),
            Act::LeakyRelu(0.1f32 as f64),
            "leaky_relu",
            1.0,
        ),
        (Kind::Gelu, Act::Gelu, "gelu", 1.0),
        (Kind::Tanh, Act::Tanh, "tanh", 1.0),
    ];
    if let Suite::Bench { .. } = suite {
        let n = stream_len(suite);
        return vec![memory_case(
            suite,
            "relu",
            format!("[{n}]"),
            8.0 * n as f64,
            move |gpu| {
                let (d, y) = forward(gpu, Kind::Relu, &sample_tensor(gpu, &[n], 6)?)?;
                Ok(Prepared::new(vec![d], vec![y]))
            },
        )];
    }
    let mut cases = Vec::new();
    for n in [7usize, 1000, 65_537] {
        for (kind, act, name, scale) in kinds {
            cases.push(
                Case::new(
                    format!("{name} fwd+bwd"),
                    format!("[{n}]"),
                    Work::Bytes(20.0 * n as f64),
                    move |gpu| {
                        let x: Vec<f32> = crate::rng::sample(n, 23)
                            .iter()
                            .map(|v| v * scale)
                            .collect();
                        let (x, dy) = (gpu.upload(&[n], &x)?, sample_tensor(gpu, &[n], 24)?);
                        let (f, y) = forward(gpu, kind, &x)?;
                        let (b, dx) = backward(gpu, kind, &x, &dy)?;
                        Ok(Prepared::new(vec![f, b], vec![y, dx]))
                    },
                )
                .reference(move || {
                    let x = sample_f64(n, 23).into_iter().map(|v| v * f64::from(scale));
                    let (x, dy): (Vec<f64>, _) = (x.collect(), sample_f64(n, 24));
                    let y = x.iter().map(|&v| act.apply(v));
                    let dx = x.iter().zip(&dy).map(|(&v, g)| g * act.grad(v));
                    y.chain(dx).collect()
                }),
            );
        }
    }
    cases
}
