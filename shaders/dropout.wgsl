// Inverted dropout with a counter-based RNG: element i of a step keeps its value when
// hash(seed, i) ≥ p·2³², scaled by 1/(1 − p). The mask is never stored: the backward pass
// recomputes it from the same (seed, i), so a step is reproducible from its seed alone.

struct Params {
    n: u32,
    seed: u32,
    // p · 2³², the drop threshold.
    threshold: u32,
    scale: f32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> dropout_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> dropout_out: array<f32>;

// A 32-bit integer hash with good avalanche (two rounds of xorshift-multiply).
fn mix32(v: u32) -> u32 {
    var x = v;
    x = x ^ (x >> 16u);
    x = x * 0x7feb352du;
    x = x ^ (x >> 15u);
    x = x * 0x846ca68bu;
    x = x ^ (x >> 16u);
    return x;
}

fn keep(i: u32) -> bool {
    return mix32(i ^ mix32(params.seed)) >= params.threshold;
}

// Forward (out = mask ⊙ x / (1 − p)) and backward (dx = mask ⊙ dy / (1 − p)) are the same map.
@compute @workgroup_size(256)
fn dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i < params.n) {
        dropout_out[i] = select(0.0, dropout_in[i] * params.scale, keep(i));
    }
}

// The training-graph form: the seed also mixes in the on-GPU step counter, so a compiled step
// draws a new mask every step with no per-step uniform write, and its backward pass (run before
// the counter advances) recomputes the same one.
@group(0) @binding(1) var<storage, read> step_counter: array<u32>;
@group(0) @binding(2) var<storage, read> step_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> step_out: array<f32>;

@compute @workgroup_size(256)
fn dropout_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i < params.n) {
        let seed = mix32(params.seed ^ mix32(step_counter[0] + 0x9e3779b9u));
        let kept = mix32(i ^ seed) >= params.threshold;
        step_out[i] = select(0.0, step_in[i] * params.scale, kept);
    }
}
