// Differentiable image augmentation: a circular shift of each (H, W) plane with an optional
// horizontal flip (DeepInversion's jitter and flip). One gather serves both directions: output
// (i, j) reads input ((i + row) mod H, col) with col = (base − j) mod W when flipped, else
// (j + base) mod W. The forward map and its inverse (the backward pass: the map is a
// permutation) differ only in (row, base), which the host computes.

struct Params {
    planes: u32,
    h: u32,
    w: u32,
    // Row offset, in [0, H).
    row: u32,
    // Column offset (or the flip's pivot), in [0, W).
    base: u32,
    flip: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> roll_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> roll_out: array<f32>;

@compute @workgroup_size(256)
fn roll_flip(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    let plane_len = params.h * params.w;
    if (i >= params.planes * plane_len) {
        return;
    }
    let plane = i / plane_len;
    let at = i - plane * plane_len;
    let r = at / params.w;
    let c = at - r * params.w;
    let src_r = (r + params.row) % params.h;
    // Both operands are below W, so W + base − c never wraps below zero.
    let src_c = select((c + params.base) % params.w, (params.w + params.base - c) % params.w,
                       params.flip != 0u);
    roll_out[i] = roll_in[plane * plane_len + src_r * params.w + src_c];
}
