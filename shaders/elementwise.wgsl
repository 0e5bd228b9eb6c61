// Elementwise kernels over flat f32 arrays: add, scale, axpy, mul, fill.
// One invocation per element; the grid may be folded into two dimensions when the element count
// needs more than max_compute_workgroups_per_dimension workgroups, so every kernel recovers its
// linear index from (workgroup_id, num_workgroups) and skips indices past the end.

struct Params {
    n: u32,
    alpha: f32,
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// out = a + b
@group(0) @binding(1) var<storage, read> add_a: array<f32>;
@group(0) @binding(2) var<storage, read> add_b: array<f32>;
@group(0) @binding(3) var<storage, read_write> add_out: array<f32>;

@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i < params.n) {
        add_out[i] = add_a[i] + add_b[i];
    }
}

// out = alpha * x
@group(0) @binding(1) var<storage, read> scale_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> scale_out: array<f32>;

@compute @workgroup_size(256)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i < params.n) {
        scale_out[i] = params.alpha * scale_x[i];
    }
}

// y = y + alpha * x
@group(0) @binding(1) var<storage, read> axpy_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> axpy_y: array<f32>;

@compute @workgroup_size(256)
fn axpy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i < params.n) {
        axpy_y[i] = axpy_y[i] + params.alpha * axpy_x[i];
    }
}

// out = alpha
@group(0) @binding(1) var<storage, read_write> fill_out: array<f32>;

@compute @workgroup_size(256)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i < params.n) {
        fill_out[i] = params.alpha;
    }
}

// y = y * x (a pruning mask applied to weights after their update)
@group(0) @binding(1) var<storage, read> mul_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> mul_y: array<f32>;

@compute @workgroup_size(256)
fn mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i < params.n) {
        mul_y[i] = mul_y[i] * mul_x[i];
    }
}

// ---- the same over vec4, where n is a multiple of 4: a lane takes four elements in one load,
// not four; on lavapipe a lane's loads, each at its own address, are what these kernels wait on.
@group(0) @binding(1) var<storage, read> add4_a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> add4_b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> add4_out: array<vec4<f32>>;

@compute @workgroup_size(256)
fn add_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wid, nwg, lid);
    if (q < params.n / 4u) {
        add4_out[q] = add4_a[q] + add4_b[q];
    }
}

@group(0) @binding(1) var<storage, read> scale4_x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> scale4_out: array<vec4<f32>>;

@compute @workgroup_size(256)
fn scale_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wid, nwg, lid);
    if (q < params.n / 4u) {
        scale4_out[q] = params.alpha * scale4_x[q];
    }
}

@group(0) @binding(1) var<storage, read> inplace4_x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> inplace4_y: array<vec4<f32>>;

@compute @workgroup_size(256)
fn axpy_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wid, nwg, lid);
    if (q < params.n / 4u) {
        inplace4_y[q] = inplace4_y[q] + params.alpha * inplace4_x[q];
    }
}

@compute @workgroup_size(256)
fn mul_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wid, nwg, lid);
    if (q < params.n / 4u) {
        inplace4_y[q] = inplace4_y[q] * inplace4_x[q];
    }
}

@group(0) @binding(1) var<storage, read_write> fill4_out: array<vec4<f32>>;

@compute @workgroup_size(256)
fn fill_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wid, nwg, lid);
    if (q < params.n / 4u) {
        fill4_out[q] = vec4<f32>(params.alpha);
    }
}
