// The gated ensemble of ONE (on-the-fly native ensemble, Lan et al. 2018): y = Σ_b w[:, b] ⊙ z_b
// over B branch outputs z_b (N, C) with per-sample weights w (N, B), the softmax of a gate's
// logits (softmax.wgsl). Each branch is its own tensor, so the host launches once per branch:
// forward, y accumulates w[:, b] ⊙ z_b; backward, dz_b = w[:, b] ⊙ dy and column b of dw holds
// the row dot products ⟨dy_n, z_b,n⟩.

struct Params {
    // Rows N and columns C of each branch output.
    n: u32,
    c: u32,
    // B, and the branch of this launch.
    branches: u32,
    branch: u32,
    // gate_scale_rows: 1 adds to out, 0 overwrites it.
    accumulate: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// out[n, c] = (accumulate ? out[n, c] : 0) + w[n, branch] · z[n, c]
@group(0) @binding(1) var<storage, read> sr_w: array<f32>;
@group(0) @binding(2) var<storage, read> sr_z: array<f32>;
@group(0) @binding(3) var<storage, read_write> sr_out: array<f32>;

@compute @workgroup_size(64)
fn gate_scale_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= params.n * params.c) {
        return;
    }
    let row = i / params.c;
    let before = select(0.0, sr_out[i], params.accumulate == 1u);
    sr_out[i] = fma(sr_w[row * params.branches + params.branch], sr_z[i], before);
}

// out[n, branch] = Σ_c a[n, c] · b[n, c]: column `branch` of an (N, B) array, one row per
// invocation.
@group(0) @binding(1) var<storage, read> rd_a: array<f32>;
@group(0) @binding(2) var<storage, read> rd_b: array<f32>;
@group(0) @binding(3) var<storage, read_write> rd_out: array<f32>;

@compute @workgroup_size(64)
fn gate_row_dot(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let row = linear_index(wid, nwg, lid);
    if (row >= params.n) {
        return;
    }
    var acc = 0.0;
    for (var c = 0u; c < params.c; c = c + 1u) {
        acc = fma(rd_a[row * params.c + c], rd_b[row * params.c + c], acc);
    }
    rd_out[row * params.branches + params.branch] = acc;
}
