// 2-D convolution forward, as conv.wgsl's conv_forward (NCHW input, weight [Cout, Cin, KH, KW],
// stride, zero padding, optional bias), for CPU-like drivers that have subgroups (lavapipe on
// Vulkan). The reasoning is matmul_subgroup.wgsl's: on such drivers a load whose address differs
// per lane is a loop over the lanes, so each weight is loaded once per workgroup (one output
// channel per lane, twice) and handed to every lane with subgroupBroadcast, while each lane loads
// only the input values of its own output positions.
//
// A workgroup is one subgroup of 8 lanes computing 64 output positions (flattened over images,
// lane l owning positions r0 + l + 8p) × 16 output channels; no alignment is needed. Every index
// is in bounds by construction (input reads clamped and masked, weight rows clamped, stores
// guarded), so the family is compiled without bounds checks.

struct Params {
    n: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    bias: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const LANES: u32 = 8u;
// Output positions per lane.
const POS: u32 = 8u;
// Output channels per workgroup (two per lane, shared).
const CH: u32 = 16u;

// The 16 channels' weights from two per lane, lane l holding channel l (lo) and 8 + l (hi).
// Broadcast lanes must be constants, hence the spelled-out list.
fn share_channels(lo: f32, hi: f32) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(
        vec4<f32>(subgroupBroadcast(lo, 0u), subgroupBroadcast(lo, 1u),
                  subgroupBroadcast(lo, 2u), subgroupBroadcast(lo, 3u)),
        vec4<f32>(subgroupBroadcast(lo, 4u), subgroupBroadcast(lo, 5u),
                  subgroupBroadcast(lo, 6u), subgroupBroadcast(lo, 7u)),
        vec4<f32>(subgroupBroadcast(hi, 0u), subgroupBroadcast(hi, 1u),
                  subgroupBroadcast(hi, 2u), subgroupBroadcast(hi, 3u)),
        vec4<f32>(subgroupBroadcast(hi, 4u), subgroupBroadcast(hi, 5u),
                  subgroupBroadcast(hi, 6u), subgroupBroadcast(hi, 7u)));
}

@compute @workgroup_size(8)
fn conv_forward_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let per_image = params.ho * params.wo;
    let rows = params.n * per_image;
    let plane = params.h * params.w;
    let ksize = params.cin * params.kh * params.kw;
    let r0 = wid.x * (LANES * POS) + lid.x;
    let co0 = wid.y * CH;
    // Per position: where its image starts in x, and its window's top-left corner.
    var image_at: array<u32, 8>;
    var ih0: array<i32, 8>;
    var iw0: array<i32, 8>;
    for (var p = 0u; p < POS; p++) {
        let r = min(r0 + p * LANES, rows - 1u);
        let pos = r % per_image;
        image_at[p] = (r / per_image) * params.cin * plane;
        ih0[p] = i32((pos / params.wo) * params.sh) - i32(params.ph);
        iw0[p] = i32((pos % params.wo) * params.sw) - i32(params.pw);
    }
    let w_lo = min(co0 + lid.x, params.cout - 1u) * ksize;
    let w_hi = min(co0 + LANES + lid.x, params.cout - 1u) * ksize;
    var acc: array<array<vec4<f32>, 4>, 8>;
    for (var ci = 0u; ci < params.cin; ci++) {
        for (var i = 0u; i < params.kh; i++) {
            for (var j = 0u; j < params.kw; j++) {
                let kidx = (ci * params.kh + i) * params.kw + j;
                let wv = share_channels(weight[w_lo + kidx], weight[w_hi + kidx]);
                for (var p = 0u; p < POS; p++) {
                    let ih = ih0[p] + i32(i);
                    let iw = iw0[p] + i32(j);
                    let inside = ih >= 0 && ih < i32(params.h) && iw >= 0 && iw < i32(params.w);
                    let at = image_at[p] + ci * plane
                        + u32(clamp(ih, 0, i32(params.h) - 1)) * params.w
                        + u32(clamp(iw, 0, i32(params.w) - 1));
                    let xv = vec4<f32>(select(0.0, x[at], inside));
                    for (var c = 0u; c < 4u; c++) {
                        acc[p][c] = fma(xv, wv[c], acc[p][c]);
                    }
                }
            }
        }
    }
    for (var p = 0u; p < POS; p++) {
        let r = r0 + p * LANES;
        if (r >= rows) {
            continue;
        }
        let img = r / per_image;
        let pos = r % per_image;
        for (var c = 0u; c < CH; c++) {
            let co = co0 + c;
            if (co < params.cout) {
                let b = select(0.0, bias[co], params.bias == 1u);
                y[(img * params.cout + co) * per_image + pos] = acc[p][c / 4u][c % 4u] + b;
            }
        }
    }
}
