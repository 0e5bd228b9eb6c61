// Deterministic sums: each workgroup adds a fixed 4096-element chunk in a fixed order (strided
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
