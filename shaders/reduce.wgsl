// Deterministic reductions.
// sum_chunks: a whole array to a scalar. Each workgroup adds a fixed 4096-element chunk in a fixed order (strided
// per-thread sums, then a tree in workgroup memory) and writes one scaled partial. Repeating the
// pass until one value is left gives the same bits on every run: no float atomics anywhere.

struct Params {
    n: u32,
    groups: u32,
    scale: f32,
    _pad: u32,
}

const WG: u32 = 256u;
const PER_THREAD: u32 = 16u;
const CHUNK: u32 = 4096u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;

// Axis reductions view the input as [outer, len, inner] and reduce the middle axis, one
// invocation per (outer, inner) pair, in order along the axis. Adjacent invocations read
// adjacent inner elements, so reducing axis 0 of a matrix (a bias gradient) is coalesced.
struct AxisParams {
    outer: u32,
    len: u32,
    inner: u32,
    // 0 sum, 1 mean, 2 max.
    op: u32,
}

@group(0) @binding(0) var<uniform> axis_params: AxisParams;
@group(0) @binding(1) var<storage, read> axis_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> axis_out: array<f32>;

@compute @workgroup_size(256)
fn reduce_axis(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let o = (wid.x + wid.y * nwg.x) * WG + lid;
    let inner = axis_params.inner;
    if (o >= axis_params.outer * inner) {
        return;
    }
    let base = (o / inner) * axis_params.len * inner + o % inner;
    var acc = select(0.0, -3.402823e38, axis_params.op == 2u);
    for (var i = 0u; i < axis_params.len; i = i + 1u) {
        let v = axis_in[base + i * inner];
        acc = select(acc + v, max(acc, v), axis_params.op == 2u);
    }
    axis_out[o] = select(acc, acc / f32(axis_params.len), axis_params.op == 1u);
}

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn sum_chunks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let w = wid.x + wid.y * nwg.x;
    let base = w * CHUNK;
    var acc = 0.0;
    for (var k = 0u; k < PER_THREAD; k = k + 1u) {
        let i = base + k * WG + lid;
        if (i < params.n) {
            acc = acc + input[i];
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u && w < params.groups) {
        output[w] = partial[0] * params.scale;
    }
}

// Few outputs along a long axis (a bias gradient over a large batch): a workgroup per output,
// its lanes striding the axis, then a tree in workgroup memory, so that a GPU runs every lane on
// len / 256 values instead of a few lanes walking the whole axis. The strides and the tree are
// fixed: the same order, and the same sum, every run.
var<workgroup> wide_part: array<f32, WG>;

@compute @workgroup_size(256)
fn reduce_axis_wide(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    // The same for the whole workgroup.
    let o = wid.x + wid.y * nwg.x;
    let inner = axis_params.inner;
    let outputs = axis_params.outer * inner;
    let max_op = axis_params.op == 2u;
    var acc = select(0.0, -3.402823e38, max_op);
    if (o < outputs) {
        let base = (o / inner) * axis_params.len * inner + o % inner;
        for (var i = lid; i < axis_params.len; i = i + WG) {
            let v = axis_in[base + i * inner];
            acc = select(acc + v, max(acc, v), max_op);
        }
    }
    wide_part[lid] = acc;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            let a = wide_part[lid];
            let b = wide_part[lid + half];
            wide_part[lid] = select(a + b, max(a, b), max_op);
        }
        workgroupBarrier();
    }
    if (lid == 0u && o < outputs) {
        let total = wide_part[0];
        axis_out[o] = select(total, total / f32(axis_params.len), axis_params.op == 1u);
    }
}
