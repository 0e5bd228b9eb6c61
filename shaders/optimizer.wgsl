// Optimizer updates as fused elementwise kernels over a parameter buffer, its gradient and its
// state, following PyTorch's SGD and AdamW exactly; and global gradient-norm clipping.
// The step counter lives on the GPU (advance_step), so a compiled training step needs no
// per-step uniform writes: bias corrections and SGD's first-step momentum come from it.

struct Params {
    n: u32,
    // SGD: 1 for Nesterov momentum.
    nesterov: u32,
    lr: f32,
    weight_decay: f32,
    // SGD: momentum, dampening. AdamW: beta1, beta2.
    a: f32,
    b: f32,
    // AdamW: epsilon. Clipping: max norm.
    eps: f32,
    _pad0: u32,
    // AdamW: ln β₁ and ln β₂, computed on the host in f64. 1 − β^t is then −expm1(t ln β):
    // in f32, 1 − 0.999 loses four digits to β's own rounding, which PyTorch (computing the
    // bias corrections in double precision) does not.
    ln_a: f32,
    ln_b: f32,
    // AdamW: 1 − β₁ and 1 − β₂, also from f64 for the same reason.
    one_minus_a: f32,
    one_minus_b: f32,
}

// exp(x) − 1 without cancellation for small |x|.
fn expm1(x: f32) -> f32 {
    if (abs(x) < 0.1) {
        return x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0 + x * (1.0 / 720.0))))));
    }
    return exp(x) - 1.0;
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// ---- the step counter -------------------------------------------------------------------------
@group(0) @binding(1) var<storage, read_write> counter: array<u32>;

// Advances the counter by params.n steps (1 per training step).
@compute @workgroup_size(1)
fn advance_step() {
    counter[0] = counter[0] + params.n;
}

// ---- SGD: g = grad + wd·p; buf = momentum·buf + (1 − dampening)·g (buf = g on step 1);
//      g = g + momentum·buf (Nesterov) or buf; p −= lr·g -----------------------------------------
@group(0) @binding(1) var<storage, read_write> sgd_param: array<f32>;
@group(0) @binding(2) var<storage, read> sgd_grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> sgd_buf: array<f32>;
@group(0) @binding(4) var<storage, read> sgd_step: array<u32>;

@compute @workgroup_size(256)
fn sgd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= params.n) {
        return;
    }
    var g = sgd_grad[i] + params.weight_decay * sgd_param[i];
    if (params.a != 0.0) {
        let buf = select(params.a * sgd_buf[i] + (1.0 - params.b) * g, g, sgd_step[0] <= 1u);
        sgd_buf[i] = buf;
        g = select(buf, g + params.a * buf, params.nesterov == 1u);
    }
    sgd_param[i] = sgd_param[i] - params.lr * g;
}

// ---- AdamW: p *= 1 − lr·wd; m, v moments; p −= lr·m̂/(√v̂ + eps) -----------------------------
@group(0) @binding(1) var<storage, read_write> adam_param: array<f32>;
@group(0) @binding(2) var<storage, read> adam_grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> adam_m: array<f32>;
@group(0) @binding(4) var<storage, read_write> adam_v: array<f32>;
@group(0) @binding(5) var<storage, read> adam_step: array<u32>;

@compute @workgroup_size(256)
fn adamw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= params.n) {
        return;
    }
    let t = f32(max(adam_step[0], 1u));
    let g = adam_grad[i];
    let p = adam_param[i] * (1.0 - params.lr * params.weight_decay);
    let m = params.a * adam_m[i] + params.one_minus_a * g;
    let v = params.b * adam_v[i] + params.one_minus_b * g * g;
    adam_m[i] = m;
    adam_v[i] = v;
    let m_hat = m / -expm1(t * params.ln_a);
    let v_hat = v / -expm1(t * params.ln_b);
    adam_param[i] = p - params.lr * m_hat / (sqrt(v_hat) + params.eps);
}

// ---- SGD and AdamW over vec4, where n is a multiple of 4: the same updates, four elements per
// lane in one load each (on lavapipe a lane's loads, each at its own address, bound the updates).
@group(0) @binding(1) var<storage, read_write> sgd4_param: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> sgd4_grad: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> sgd4_buf: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> sgd4_step: array<u32>;

@compute @workgroup_size(256)
fn sgd_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wid, nwg, lid);
    if (q >= params.n / 4u) {
        return;
    }
    let p = sgd4_param[q];
    var g = sgd4_grad[q] + params.weight_decay * p;
    if (params.a != 0.0) {
        let buf = select(params.a * sgd4_buf[q] + (1.0 - params.b) * g, g, sgd4_step[0] <= 1u);
        sgd4_buf[q] = buf;
        g = select(buf, g + params.a * buf, params.nesterov == 1u);
    }
    sgd4_param[q] = p - params.lr * g;
}

@group(0) @binding(1) var<storage, read_write> adam4_param: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> adam4_grad: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> adam4_m: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> adam4_v: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> adam4_step: array<u32>;

@compute @workgroup_size(256)
fn adamw_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wid, nwg, lid);
    if (q >= params.n / 4u) {
        return;
    }
    let t = f32(max(adam4_step[0], 1u));
    let g = adam4_grad[q];
    let p = adam4_param[q] * (1.0 - params.lr * params.weight_decay);
    let m = params.a * adam4_m[q] + params.one_minus_a * g;
    let v = params.b * adam4_v[q] + params.one_minus_b * g * g;
    adam4_m[q] = m;
    adam4_v[q] = v;
    let m_hat = m / -expm1(t * params.ln_a);
    let v_hat = v / -expm1(t * params.ln_b);
    adam4_param[q] = p - params.lr * m_hat / (sqrt(v_hat) + vec4<f32>(params.eps));
}

// ---- clipping: g *= min(1, max_norm / (‖g‖ + 1e-6)), ‖g‖² summed beforehand by reduce.wgsl ----
@group(0) @binding(1) var<storage, read> sq_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> sq_out: array<f32>;

@compute @workgroup_size(256)
fn square(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i < params.n) {
        sq_out[i] = sq_in[i] * sq_in[i];
    }
}

@group(0) @binding(1) var<storage, read_write> clip_grad: array<f32>;
@group(0) @binding(2) var<storage, read> clip_norm_sq: array<f32>;

@compute @workgroup_size(256)
fn clip(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i < params.n) {
        let coef = min(params.eps / (sqrt(clip_norm_sq[0]) + 1e-6), 1.0);
        clip_grad[i] = clip_grad[i] * coef;
    }
}
