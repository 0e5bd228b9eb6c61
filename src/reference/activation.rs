//! f64 reference for `shaders/activation.wgsl`: ReLU, ReLU6, leaky ReLU, exact GELU and tanh with their
//! derivatives.

/// ReLU.
pub fn relu(x: f64) -> f64 {
    x.max(0.0)
}

/// ReLU's derivative (0 at 0, as PyTorch).
pub fn relu_grad(x: f64) -> f64 {
    if x > 0.0 { 1.0 } else { 0.0 }
}

/// ReLU6: `min(max(x, 0), 6)`.
pub fn relu6(x: f64) -> f64 {
    x.clamp(0.0, 6.0)
}

/// ReLU6's derivative: 1 strictly inside (0, 6), 0 elsewhere (PyTorch's, at both kinks).
pub fn relu6_grad(x: f64) -> f64 {
    if x > 0.0 && x < 6.0 { 1.0 } else { 0.0 }
}

/// Leaky ReLU: `x` where positive, `slope·x` elsewhere.
pub fn leaky_relu(x: f64, slope: f64) -> f64 {
    if x > 0.0 { x } else { slope * x }
}

/// Leaky ReLU's derivative (`slope` at 0, as PyTorch).
pub fn leaky_relu_grad(x: f64, slope: f64) -> f64 {
    if x > 0.0 { 1.0 } else { slope }
}

/// Exact GELU `x·Φ(x)`.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// GELU's derivative `Φ(x) + x·φ(x)`.
pub fn gelu_grad(x: f64) -> f64 {
    let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    cdf + x * pdf
}

/// tanh's derivative `1 − tanh²(x)`.
pub fn tanh_grad(x: f64) -> f64 {
    1.0 - x.tanh().powi(2)
}

/// Which activation a Linear layer applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    /// None.
    Identity,
    /// ReLU.
    Relu,
    /// ReLU capped at 6.
    Relu6,
    /// Leaky ReLU with its negative slope.
    LeakyRelu(f64),
    /// Exact GELU.
    Gelu,
    /// Hyperbolic tangent.
    Tanh,
}

impl Act {
    /// f(z).
    pub fn apply(self, z: f64) -> f64 {
        match self {
            Act::Identity => z,
            Act::Relu => relu(z),
            Act::Relu6 => relu6(z),
            Act::LeakyRelu(slope) => leaky_relu(z, slope),
            Act::Gelu => gelu(z),
            Act::Tanh => z.tanh(),
        }
    }

    /// f'(z).
    pub fn grad(self, z: f64) -> f64 {
        match self {
            Act::Identity => 1.0,
            Act::Relu => relu_grad(z),
            Act::Relu6 => relu6_grad(z),
            Act::LeakyRelu(slope) => leaky_relu_grad(z, slope),
            Act::Gelu => gelu_grad(z),
            Act::Tanh => tanh_grad(z),
        }
    }
}
