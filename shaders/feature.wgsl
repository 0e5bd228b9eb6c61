// Feature-based losses: FitNet hint (elementwise MSE) and attention transfer.
// Each writes the gradient and per-element or per-sample loss partials; reduce.wgsl sums them.

struct Params {
    batch: u32,
    // hint: element count; at: student channels.
    n: u32,
    teacher_channels: u32,
    hw: u32,
    p: f32,
    grad_scale: f32,
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// ---- hint: (s − t)²; gradient 2(s − t)/N -----------------------------------------------------
@group(0) @binding(1) var<storage, read> hint_student: array<f32>;
@group(0) @binding(2) var<storage, read> hint_teacher: array<f32>;
@group(0) @binding(3) var<storage, read_write> hint_grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> hint_partial: array<f32>;

@compute @workgroup_size(256)
fn hint(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= params.n) {
        return;
    }
    let d = hint_student[i] - hint_teacher[i];
    hint_grad[i] = d * params.grad_scale;
    hint_partial[i] = d * d;
}

// ---- at: a(f) = normalize(mean_c f^p) per sample; loss mean((a_s − a_t)²) -----------------
// Three passes: channel means per (sample, position); norms and the normalisation's dot product
// per sample; the gradient per student element.

// x^p as PyTorch's pow: exact for integer p (sign kept for odd p), pow() otherwise.
fn pow_p(x: f32, p: f32) -> f32 {
    if (p == 2.0) {
        return x * x;
    }
    if (p == 1.0) {
        return x;
    }
    if (p == 0.0) {
        return 1.0;
    }
    let ip = round(p);
    if (abs(p - ip) < 1e-6) {
        let mag = pow(abs(x), p);
        let odd = (i32(ip) & 1) == 1;
        return select(mag, -mag, odd && x < 0.0);
    }
    return pow(x, p);
}

@group(0) @binding(1) var<storage, read> maps_student: array<f32>;
@group(0) @binding(2) var<storage, read> maps_teacher: array<f32>;
@group(0) @binding(3) var<storage, read_write> maps_ms: array<f32>;
@group(0) @binding(4) var<storage, read_write> maps_mt: array<f32>;

@compute @workgroup_size(256)
fn at_maps(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let k = linear_index(wid, nwg, lid);
    let hw = params.hw;
    if (k >= params.batch * hw) {
        return;
    }
    let b = k / hw;
    let i = k % hw;
    var ms = 0.0;
    for (var c = 0u; c < params.n; c = c + 1u) {
        ms = ms + pow_p(maps_student[(b * params.n + c) * hw + i], params.p);
    }
    var mt = 0.0;
    for (var c = 0u; c < params.teacher_channels; c = c + 1u) {
        mt = mt + pow_p(maps_teacher[(b * params.teacher_channels + c) * hw + i], params.p);
    }
    maps_ms[k] = ms / f32(params.n);
    maps_mt[k] = mt / f32(params.teacher_channels);
}

@group(0) @binding(1) var<storage, read> rows_ms: array<f32>;
@group(0) @binding(2) var<storage, read> rows_mt: array<f32>;
// Per sample: [‖m_s‖, max(‖m_s‖, eps), max(‖m_t‖, eps), a_s · g].
@group(0) @binding(3) var<storage, read_write> rows_stats: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> rows_loss: array<f32>;

@compute @workgroup_size(256)
fn at_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let b = linear_index(wid, nwg, lid);
    if (b >= params.batch) {
        return;
    }
    let hw = params.hw;
    var ss = 0.0;
    var st = 0.0;
    for (var i = 0u; i < hw; i = i + 1u) {
        ss = ss + rows_ms[b * hw + i] * rows_ms[b * hw + i];
        st = st + rows_mt[b * hw + i] * rows_mt[b * hw + i];
    }
    let ns = sqrt(ss);
    let ns_c = max(ns, 1e-12);
    let nt_c = max(sqrt(st), 1e-12);
    var loss = 0.0;
    var dot = 0.0;
    for (var i = 0u; i < hw; i = i + 1u) {
        let a_s = rows_ms[b * hw + i] / ns_c;
        let d = a_s - rows_mt[b * hw + i] / nt_c;
        loss = loss + d * d;
        dot = dot + a_s * d * params.grad_scale;
    }
    rows_stats[b] = vec4<f32>(ns, ns_c, nt_c, dot);
    rows_loss[b] = loss;
}

@group(0) @binding(1) var<storage, read> grad_student: array<f32>;
@group(0) @binding(2) var<storage, read> grad_ms: array<f32>;
@group(0) @binding(3) var<storage, read> grad_mt: array<f32>;
@group(0) @binding(4) var<storage, read> grad_stats: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> grad_out: array<f32>;

@compute @workgroup_size(256)
fn at_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let k = linear_index(wid, nwg, lid);
    let hw = params.hw;
    let cs = params.n;
    if (k >= params.batch * cs * hw) {
        return;
    }
    let b = k / (cs * hw);
    let i = k % hw;
    let stats = grad_stats[b];
    let a_s = grad_ms[b * hw + i] / stats.y;
    let g = (a_s - grad_mt[b * hw + i] / stats.z) * params.grad_scale;
    // Through normalize: (g − a (a·g)) / ‖m‖, or g / eps where the norm was clamped.
    let dm = select(g / stats.y, (g - a_s * stats.w) / stats.y, stats.x > 1e-12);
    grad_out[k] = dm * params.p * pow_p(grad_student[k], params.p - 1.0) / f32(cs);
}
