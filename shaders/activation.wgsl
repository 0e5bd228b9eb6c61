// Activations, forward and backward, elementwise over flat f32 arrays.
// GELU is the exact (erf) form, PyTorch's default; erf is approximated to |error| < 1.5e-7.
// Leaky ReLU's negative slope is a uniform, so one pipeline serves every slope. tanh is written
// out rather than taken from the built-in, which drivers may compute as (e^2x − 1)/(e^2x + 1):
// that overflows to inf/inf = NaN for large x, and loses the relative precision near 0 (lavapipe
// is off by 2e-4 at x = 1e-4). Below |x| = 0.5 its Taylor series (to x^15, error under 1e-8
// relative), above it (1 − e)/(1 + e) with e = exp(−2|x|) ≤ 0.37, which cannot cancel.

struct Params {
    n: u32,
    slope: f32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;
const INV_SQRT2: f32 = 0.70710678118654752;
const INV_SQRT_2PI: f32 = 0.39894228040143268;
fn tanh_stable(x: f32) -> f32 {
    // NaN in, NaN out (min and sign of NaN are the implementation's choice).
    if (x != x) {
        return x;
    }
    let a = abs(x);
    if (a < 0.5) {
        let z = x * x;
        let p = 1.0 + z * (-0.33333333 + z * (0.13333333 + z * (-0.053968254 + z * (0.021869488
            + z * (-0.0088632355 + z * (0.0035921280 + z * -0.0014558344))))));
        return x * p;
    }
    // Past |x| = 15, e^−2|x| no longer changes 1 − e in f32: clamp so exp never underflows.
    let e = exp(-2.0 * min(a, 15.0));
    return sign(x) * (1.0 - e) / (1.0 + e);
}

// 1 − tanh²(x); above |x| = 0.5 as 4e/(1 + e)², which keeps its relative precision in the tails
// where 1 − y² would subtract nearly equal numbers.
fn tanh_grad_stable(x: f32) -> f32 {
    let a = abs(x);
    if (a < 0.5) {
        let y = tanh_stable(x);
        return 1.0 - y * y;
    }
    let e = exp(-2.0 * a);
    return 4.0 * e / ((1.0 + e) * (1.0 + e));
}

@group(0) @binding(0) var<uniform> params: Params;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

fn erf_approx(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(x));
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let y = 1.0 - poly * exp(-x * x);
    return select(-y, y, x >= 0.0);
}

// y = f(x)
@group(0) @binding(1) var<storage, read> fwd_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> fwd_y: array<f32>;

@compute @workgroup_size(256)
fn relu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i < params.n) {
        fwd_y[i] = max(fwd_x[i], 0.0);
    }
}

// MobileNet's ReLU6: min(max(x, 0), 6).
@compute @workgroup_size(256)
fn relu6_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i < params.n) {
        fwd_y[i] = min(max(fwd_x[i], 0.0), 6.0);
    }
}

@compute @workgroup_size(256)
fn leaky_relu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i < params.n) {
        let x = fwd_x[i];
        fwd_y[i] = select(params.slope * x, x, x > 0.0);
    }
}

@compute @workgroup_size(256)
fn gelu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i < params.n) {
        let x = fwd_x[i];
        fwd_y[i] = 0.5 * x * (1.0 + erf_approx(x * INV_SQRT2));
    }
}

@compute @workgroup_size(256)
fn tanh_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i < params.n) {
        fwd_y[i] = tanh_stable(fwd_x[i]);
    }
}

// dx = dy · f'(x), where x is the activation's input.
@group(0) @binding(1) var<storage, read> bwd_x: array<f32>;
@group(0) @binding(2) var<storage, read> bwd_dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> bwd_dx: array<f32>;

@compute @workgroup_size(256)
fn relu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i < params.n) {
        bwd_dx[i] = select(0.0, bwd_dy[i], bwd_x[i] > 0.0);
    }
}

// PyTorch's hardtanh_backward: the gradient passes strictly inside (0, 6), not at either end.
@compute @workgroup_size(256)
fn relu6_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i < params.n) {
        let x = bwd_x[i];
        bwd_dx[i] = select(0.0, bwd_dy[i], x > 0.0 && x < 6.0);
    }
}

// PyTorch's convention at 0: the negative side's slope.
@compute @workgroup_size(256)
fn leaky_relu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i < params.n) {
        let g = bwd_dy[i];
        bwd_dx[i] = select(params.slope * g, g, bwd_x[i] > 0.0);
    }
}

@compute @workgroup_size(256)
fn gelu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i < params.n) {
        let x = bwd_x[i];
        let cdf = 0.5 * (1.0 + erf_approx(x * INV_SQRT2));
        let pdf = INV_SQRT_2PI * exp(-0.5 * x * x);
        bwd_dx[i] = bwd_dy[i] * (cdf + x * pdf);
    }
}

@compute @workgroup_size(256)
fn tanh_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i < params.n) {
        bwd_dx[i] = bwd_dy[i] * tanh_grad_stable(bwd_x[i]);
    }
}

// ---- ReLU and ReLU6 over vec4 (n a multiple of 4): a lane takes four values in one load, not
// four; on lavapipe a lane's loads, each at its own address, are what these kernels wait on.
@group(0) @binding(1) var<storage, read> fq_x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> fq_y: array<vec4<f32>>;

@compute @workgroup_size(256)
fn relu_forward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wid, nwg, lid);
    if (q < params.n / 4u) {
        fq_y[q] = max(fq_x[q], vec4<f32>(0.0));
    }
}

@compute @workgroup_size(256)
fn relu6_forward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wid, nwg, lid);
    if (q < params.n / 4u) {
        fq_y[q] = min(max(fq_x[q], vec4<f32>(0.0)), vec4<f32>(6.0));
    }
}

@group(0) @binding(1) var<storage, read> bq_x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bq_dy: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> bq_dx: array<vec4<f32>>;

@compute @workgroup_size(256)
fn relu_backward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wid, nwg, lid);
    if (q < params.n / 4u) {
        bq_dx[q] = select(vec4<f32>(0.0), bq_dy[q], bq_x[q] > vec4<f32>(0.0));
    }
}

@compute @workgroup_size(256)
fn relu6_backward_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wid, nwg, lid);
    if (q < params.n / 4u) {
        let x = bq_x[q];
        bq_dx[q] = select(vec4<f32>(0.0), bq_dy[q], (x > vec4<f32>(0.0)) & (x < vec4<f32>(6.0)));
    }
}
