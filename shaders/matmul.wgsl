// C = op(A) · op(B) (+ bias[n]) (then ReLU or GELU), f32, row-major.
// op(A) is M×K: A stored M×K, or K×M when TRANS_A. op(B) is K×N: B stored K×N, or N×K when
// TRANS_B. The transposes are pipeline-overridable constants, so each combination is compiled
// into its own specialised pipeline; backward passes use them (dA = dC·Bᵀ, dB = Aᵀ·dC).
//
// Two shapes of kernel, chosen per adapter (by device type, or timed by `wgdistill tune`):
// - matmul_rb: barrier-free, each invocation keeps an 8×8 block of C in registers. CPU-like
//   drivers (lavapipe, llvmpipe) run a workgroup as SIMD loops and pay dearly for barriers.
// - matmul_tiled: 64×64 tiles of A and B staged through workgroup memory in steps of 16 along K,
//   each of 256 invocations computing a 4×4 block. What real GPUs want; products large enough
//   to fill one with bigger tiles take matmul_tiled128 (128×128, 8×8 per invocation,
//   double-buffered).
// Out-of-range rows and columns are clamped on load (always in bounds, no branch in the inner
// loop) and skipped on store, so shapes need not be multiples of any tile. Because every index
// is in bounds by construction (and tested at odd shapes), this family is compiled without
// naga's runtime bounds checks, which cost lavapipe more than half its matmul speed.

override TRANS_A: bool = false;
override TRANS_B: bool = false;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // 0 none, 1 bias.
    bias: u32,
    // 0 none, 1 ReLU, 2 GELU (exact, erf-based, as PyTorch's default).
    activation: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

fn load_a(row: u32, kk: u32) -> f32 {
    let r = min(row, params.m - 1u);
    if (TRANS_A) {
        return a[kk * params.m + r];
    }
    return a[r * params.k + kk];
}

fn load_b(kk: u32, col: u32) -> f32 {
    let cl = min(col, params.n - 1u);
    if (TRANS_B) {
        return b[cl * params.k + kk];
    }
    return b[kk * params.n + cl];
}

// erf with |error| < 1.5e-7 (Abramowitz and Stegun 7.1.26).
fn erf_approx(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(x));
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let y = 1.0 - poly * exp(-x * x);
    return select(-y, y, x >= 0.0);
}

fn epilogue(v: f32, col: u32) -> f32 {
    var x = v;
    if (params.bias == 1u) {
        x = x + bias[col];
    }
    if (params.activation == 1u) {
        return max(x, 0.0);
    }
    if (params.activation == 2u) {
        return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752));
    }
    return x;
}

fn store(row: u32, col: u32, v: f32) {
    if (row < params.m && col < params.n) {
        c[row * params.n + col] = epilogue(v, col);
    }
}

// ---- register-blocked: 8×8 invocations, each an 8×8 block of C → 64×64 per workgroup -----
// Invocation (x, y) owns rows 8y..8y+7 and columns x, x+8, ..., x+56 of the block, so
// neighbouring invocations read neighbouring columns of B. 64 accumulators, no barrier.
const RB: u32 = 8u;

@compute @workgroup_size(8, 8)
fn matmul_rb(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.y * 64u + lid.y * RB;
    let col0 = wid.x * 64u + lid.x;
    // An invocation whose rows or columns all lie past C's edge has nothing to store: a product
    // with few rows (a classifier's weight gradient, 10 rows) leaves whole subgroups idle, which
    // on a CPU-like driver would otherwise run the full loop over K for nothing. No barrier
    // follows, so returning early is allowed.
    if (row0 >= params.m || col0 >= params.n) {
        return;
    }
    var lo: array<vec4<f32>, 8>;
    var hi: array<vec4<f32>, 8>;
    for (var kk = 0u; kk < params.k; kk = kk + 1u) {
        let b_lo = vec4<f32>(load_b(kk, col0), load_b(kk, col0 + 8u), load_b(kk, col0 + 16u), load_b(kk, col0 + 24u));
        let b_hi = vec4<f32>(load_b(kk, col0 + 32u), load_b(kk, col0 + 40u), load_b(kk, col0 + 48u), load_b(kk, col0 + 56u));
        for (var i = 0u; i < RB; i = i + 1u) {
            let av = vec4<f32>(load_a(row0 + i, kk));
            lo[i] = fma(av, b_lo, lo[i]);
            hi[i] = fma(av, b_hi, hi[i]);
        }
    }
    for (var i = 0u; i < RB; i = i + 1u) {
        for (var j = 0u; j < 4u; j = j + 1u) {
            store(row0 + i, col0 + j * 8u, lo[i][j]);
            store(row0 + i, col0 + 32u + j * 8u, hi[i][j]);
        }
    }
}

// ---- workgroup-tiled: 64×64 tile, K in steps of 16, 16×16 invocations of 4×4 each ----------
const TILE: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> tile_a: array<array<f32, 64>, 16>;
var<workgroup> tile_b: array<array<f32, 64>, 16>;

@compute @workgroup_size(16, 16)
fn matmul_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let tile_row = wid.y * TILE;
    let tile_col = wid.x * TILE;
    var acc: array<vec4<f32>, 4>;
    let steps = (params.k + TK - 1u) / TK;
    for (var s = 0u; s < steps; s = s + 1u) {
        let k0 = s * TK;
        // 256 invocations load the 16×64 slices of op(A)ᵀ and op(B), four elements each.
        for (var e = 0u; e < 4u; e = e + 1u) {
            let idx = li + e * 256u;
            let kk = idx / TILE;
            let mn = idx % TILE;
            let k_in = k0 + kk < params.k;
            let kc = min(k0 + kk, params.k - 1u);
            tile_a[kk][mn] = select(0.0, load_a(tile_row + mn, kc), k_in);
            tile_b[kk][mn] = select(0.0, load_b(kc, tile_col + mn), k_in);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk = kk + 1u) {
            let bv = vec4<f32>(tile_b[kk][lid.x * 4u], tile_b[kk][lid.x * 4u + 1u],
                               tile_b[kk][lid.x * 4u + 2u], tile_b[kk][lid.x * 4u + 3u]);
            for (var i = 0u; i < 4u; i = i + 1u) {
                acc[i] = fma(vec4<f32>(tile_a[kk][lid.y * 4u + i]), bv, acc[i]);
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        for (var j = 0u; j < 4u; j = j + 1u) {
            store(tile_row + lid.y * 4u + i, tile_col + lid.x * 4u + j, acc[i][j]);
        }
    }
}

// ---- large workgroup tiles: 128×128 tile, K in steps of 8, 16×16 invocations of 8×8 each -----
// For products large enough to fill a GPU with 128×128 tiles (the launcher decides). Each
// invocation owns rows 4ty..4ty+3 and 64+4ty..64+4ty+3 and the same split of columns, so that it
// reads its operands from workgroup memory as vec4s and neighbouring invocations read
// neighbouring vec4s. The tiles are double-buffered: the next step's elements are loaded into
// registers before this step's products, and stored into the other buffer after them, so one
// barrier per step suffices and the global loads overlap the arithmetic. 16 KiB of workgroup
// memory, WebGPU's default limit. Each invocation loads 4 elements of each operand per step,
// along the operand's contiguous dimension where the transposes allow, so that the lanes of a
// warp read neighbouring addresses.
const BIG: u32 = 128u;
const BK: u32 = 8u;

var<workgroup> big_a: array<array<array<vec4<f32>, 32>, 8>, 2>;
var<workgroup> big_b: array<array<array<vec4<f32>, 32>, 8>, 2>;

// Element (row or column offset within the tile, k offset within the step) loaded by lane `li`:
// lanes run along the contiguous dimension (k when it is, else the tile's rows or columns).
fn big_slot(li: u32, along_k: bool) -> vec2<u32> {
    if (along_k) {
        return vec2<u32>(li / 8u, li % 8u);
    }
    return vec2<u32>(li % 32u, li / 32u);
}

@compute @workgroup_size(16, 16)
fn matmul_tiled128(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                   @builtin(local_invocation_index) li: u32) {
    let tile_row = wid.y * BIG;
    let tile_col = wid.x * BIG;
    // A's contiguous dimension is K unless transposed; B's is K when transposed.
    let sa = big_slot(li, !TRANS_A);
    let sb = big_slot(li, TRANS_B);
    let steps = (params.k + BK - 1u) / BK;
    var pa: vec4<f32>;
    var pb: vec4<f32>;
    var acc_lo: array<vec4<f32>, 8>;
    var acc_hi: array<vec4<f32>, 8>;
    for (var s = 0u; s <= steps; s = s + 1u) {
        // Load step s into registers (while step s - 1 is computed from workgroup memory).
        if (s < steps) {
            let ka = s * BK + sa.y;
            let kb = s * BK + sb.y;
            let ca = min(ka, params.k - 1u);
            let cb = min(kb, params.k - 1u);
            let ra = tile_row + sa.x * 4u;
            let cl = tile_col + sb.x * 4u;
            pa = select(vec4<f32>(0.0), vec4<f32>(load_a(ra, ca), load_a(ra + 1u, ca), load_a(ra + 2u, ca), load_a(ra + 3u, ca)), ka < params.k);
            pb = select(vec4<f32>(0.0), vec4<f32>(load_b(cb, cl), load_b(cb, cl + 1u), load_b(cb, cl + 2u), load_b(cb, cl + 3u)), kb < params.k);
        }
        if (s > 0u) {
            let buf = (s - 1u) % 2u;
            for (var kk = 0u; kk < BK; kk = kk + 1u) {
                let b_lo = big_b[buf][kk][lid.x];
                let b_hi = big_b[buf][kk][lid.x + 16u];
                let a_lo = big_a[buf][kk][lid.y];
                let a_hi = big_a[buf][kk][lid.y + 16u];
                for (var i = 0u; i < 4u; i = i + 1u) {
                    acc_lo[i] = fma(vec4<f32>(a_lo[i]), b_lo, acc_lo[i]);
                    acc_hi[i] = fma(vec4<f32>(a_lo[i]), b_hi, acc_hi[i]);
                    acc_lo[i + 4u] = fma(vec4<f32>(a_hi[i]), b_lo, acc_lo[i + 4u]);
                    acc_hi[i + 4u] = fma(vec4<f32>(a_hi[i]), b_hi, acc_hi[i + 4u]);
                }
            }
        }
        // Buffer s % 2 was last read in step s - 2, before the previous barrier.
        if (s < steps) {
            big_a[s % 2u][sa.y][sa.x] = pa;
            big_b[s % 2u][sb.y][sb.x] = pb;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        for (var j = 0u; j < 4u; j = j + 1u) {
            let r = tile_row + lid.y * 4u + i;
            let c = tile_col + lid.x * 4u + j;
            store(r, c, acc_lo[i][j]);
            store(r, c + 64u, acc_hi[i][j]);
            store(r + 64u, c, acc_lo[i + 4u][j]);
            store(r + 64u, c + 64u, acc_hi[i + 4u][j]);
        }
    }
}
