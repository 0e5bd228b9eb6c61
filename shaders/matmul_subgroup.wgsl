// C = op(A) · op(B) (+ bias[n]) (then ReLU or GELU), f32, row-major: the contract of
// matmul.wgsl, for CPU-like drivers that have subgroups (lavapipe on Vulkan), at shapes whose
// contiguous dimensions are multiples of 4 so that A and B can be read as vec4.
//
// Why a separate family: lavapipe runs the 8 invocations of a workgroup as the 8 lanes of one
// SIMD register, and (on Mesa 22) a storage load whose address differs per lane becomes a loop
// over the lanes, so loads, not multiply-adds, bound matmul_rb. Here each lane loads vec4s of B
// for its own eight columns, while the rows of A are loaded once (one row, or row quad, per lane)
// and handed to every lane with subgroupBroadcast, a register shuffle. A workgroup is exactly one
// subgroup of 8 lanes and computes a 16×64 block of C (32×64 for matmul_sg_nt, 32×8·NARROW_COLS
// for matmul_sg_nt_narrow); each lane keeps 16×8 (32×8, 32×NARROW_COLS) accumulators.
// The launcher picks these kernels only when the adapter's subgroups have at least 8 lanes (so
// that the workgroup is one subgroup) and the alignment below holds; otherwise matmul.wgsl.
//
// Entry points, by the storage of A and B (all clamp out-of-range rows and columns on load and
// skip them on store, so M and N need not be multiples of the block):
// - matmul_sg_nn: A is M×K, B is K×N; needs K % 4 == 0 and N % 4 == 0.
// - matmul_sg_nt: A is M×K, B is N×K (B transposed, as a Linear weight); needs K % 4 == 0.
// - matmul_sg_nt_narrow: the same for N ≤ 32 (a classifier, a small student), NARROW_COLS
//   columns per lane rather than eight.
// - matmul_sg_tn: A is K×M (A transposed, as for a weight gradient), B is K×N; needs
//   M % 4 == 0 and N % 4 == 0.
// Indices are in bounds by construction, so the family is compiled without bounds checks.

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
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const LANES: u32 = 8u;
const ROWS: u32 = 16u;
const COLS: u32 = 64u;

// Eight columns of one row of C, as two vec4 (which eight depends on the entry point).
alias Acc = array<vec4<f32>, 2>;
// Four consecutive k of a lane's eight columns of op(B): panel[t][h] holds k0 + t of the
// columns that Acc[h] accumulates.
alias Panel = array<array<vec4<f32>, 2>, 4>;

// acc + row · panel, where row holds k0..k0+3 of one row of op(A).
fn rank4(acc: Acc, row: vec4<f32>, panel: Panel) -> Acc {
    var r = acc;
    for (var t = 0u; t < 4u; t++) {
        r[0] = fma(vec4<f32>(row[t]), panel[t][0], r[0]);
        r[1] = fma(vec4<f32>(row[t]), panel[t][1], r[1]);
    }
    return r;
}

// 16 rows of the block (all of them, or matmul_sg_nt's top or bottom half) from two vec4 per
// lane, lane l holding row l (lo) and row 8 + l (hi).
// Broadcast lanes must be constants, hence the spelled-out list.
fn share_rows(lo: vec4<f32>, hi: vec4<f32>) -> array<vec4<f32>, 16> {
    return array<vec4<f32>, 16>(
        subgroupBroadcast(lo, 0u), subgroupBroadcast(lo, 1u), subgroupBroadcast(lo, 2u),
        subgroupBroadcast(lo, 3u), subgroupBroadcast(lo, 4u), subgroupBroadcast(lo, 5u),
        subgroupBroadcast(lo, 6u), subgroupBroadcast(lo, 7u),
        subgroupBroadcast(hi, 0u), subgroupBroadcast(hi, 1u), subgroupBroadcast(hi, 2u),
        subgroupBroadcast(hi, 3u), subgroupBroadcast(hi, 4u), subgroupBroadcast(hi, 5u),
        subgroupBroadcast(hi, 6u), subgroupBroadcast(hi, 7u));
}

// erf with |error| < 1.5e-7 (Abramowitz and Stegun 7.1.26), as in matmul.wgsl.
fn erf_approx(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(x));
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let y = 1.0 - poly * exp(-x * x);
    return select(-y, y, x >= 0.0);
}

fn store(row: u32, col: u32, v: f32) {
    if (row >= params.m || col >= params.n) {
        return;
    }
    var x = v;
    if (params.bias == 1u) {
        x = x + bias[col];
    }
    if (params.activation == 1u) {
        x = max(x, 0.0);
    } else if (params.activation == 2u) {
        x = 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752));
    }
    c[row * params.n + col] = x;
}

// Lane's columns for the vec4-along-N entry points: column quads q0 and q0 + 8 (64 columns per
// workgroup, neighbouring lanes on neighbouring quads).
fn store_quads(row0: u32, q0: u32, acc: array<Acc, 16>) {
    for (var i = 0u; i < ROWS; i++) {
        for (var h = 0u; h < 2u; h++) {
            let col = (q0 + h * LANES) * 4u;
            for (var t = 0u; t < 4u; t++) {
                store(row0 + i, col + t, acc[i][h][t]);
            }
        }
    }
}

@compute @workgroup_size(8)
fn matmul_sg_nn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let nq = params.n / 4u;
    let kq = params.k / 4u;
    let row0 = wid.y * ROWS;
    let q0 = wid.x * (COLS / 4u) + lid.x;
    let col_lo = min(q0, nq - 1u);
    let col_hi = min(q0 + LANES, nq - 1u);
    let a_lo = min(row0 + lid.x, params.m - 1u) * kq;
    let a_hi = min(row0 + LANES + lid.x, params.m - 1u) * kq;
    var acc: array<Acc, 16>;
    for (var kk = 0u; kk < kq; kk++) {
        var panel: Panel;
        for (var t = 0u; t < 4u; t++) {
            let b_row = (kk * 4u + t) * nq;
            panel[t][0] = b[b_row + col_lo];
            panel[t][1] = b[b_row + col_hi];
        }
        let rows = share_rows(a[a_lo + kk], a[a_hi + kk]);
        for (var i = 0u; i < ROWS; i++) {
            acc[i] = rank4(acc[i], rows[i], panel);
        }
    }
    store_quads(row0, q0, acc);
}

// matmul_sg_nt's block has twice the rows: its eight loads of B per step of four k are the
// costly ones (each lane reads four k of eight columns, K apart), so each is spread over 32
// rows' multiply-adds rather than 16 (a Linear layer's x·Wᵀ at batch 128 gains about 10% on
// lavapipe; the A·B and Aᵀ·B kernels load B contiguously and keep 16).
const NT_ROWS: u32 = 32u;

@compute @workgroup_size(8)
fn matmul_sg_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    // Lane columns: col0 + 8j for j = 0..7; Acc[h][e] is column col0 + 8(4h + e). Lane rows
    // (loaded to be shared): row0 + 8q + lane for q = 0..3.
    let kq = params.k / 4u;
    let row0 = wid.y * NT_ROWS;
    let col0 = wid.x * COLS + lid.x;
    var b_at: array<u32, 8>;
    for (var j = 0u; j < 8u; j++) {
        b_at[j] = min(col0 + j * LANES, params.n - 1u) * kq;
    }
    var a_at: array<u32, 4>;
    for (var q = 0u; q < 4u; q++) {
        a_at[q] = min(row0 + q * LANES + lid.x, params.m - 1u) * kq;
    }
    var acc: array<Acc, NT_ROWS>;
    for (var kk = 0u; kk < kq; kk++) {
        // Each load is four k of one column; the panel wants four columns per k.
        var cols: array<vec4<f32>, 8>;
        for (var j = 0u; j < 8u; j++) {
            cols[j] = b[b_at[j] + kk];
        }
        var panel: Panel;
        for (var t = 0u; t < 4u; t++) {
            panel[t][0] = vec4<f32>(cols[0][t], cols[1][t], cols[2][t], cols[3][t]);
            panel[t][1] = vec4<f32>(cols[4][t], cols[5][t], cols[6][t], cols[7][t]);
        }
        // The block's rows in two halves of 16, so that only one half's rows are held at once.
        // (Spelled out: as a loop over the halves, Mesa 22 no longer resolves acc's indices at
        // compile time and keeps it in scratch memory, five times slower.)
        let top = share_rows(a[a_at[0] + kk], a[a_at[1] + kk]);
        for (var i = 0u; i < ROWS; i++) {
            acc[i] = rank4(acc[i], top[i], panel);
        }
        let bottom = share_rows(a[a_at[2] + kk], a[a_at[3] + kk]);
        for (var i = 0u; i < ROWS; i++) {
            acc[ROWS + i] = rank4(acc[ROWS + i], bottom[i], panel);
        }
    }
    for (var i = 0u; i < NT_ROWS; i++) {
        for (var j = 0u; j < 8u; j++) {
            store(row0 + i, col0 + j * LANES, acc[i][j / 4u][j % 4u]);
        }
    }
}

// Columns per lane of matmul_sg_nt_narrow (1 to 4; the launcher sets 2 for N ≤ 16, else 4).
override NARROW_COLS: u32 = 4u;

// matmul_sg_nt for narrow products: with N = 10 (a classifier) matmul_sg_nt's 64 columns left
// 54 idle, and each lane still made its eight strided loads of B per step of four k, for
// columns clamped onto the last. Here a workgroup takes 8·NARROW_COLS columns (lane l: columns
// col0 + 8j, j < NARROW_COLS) and, like matmul_sg_nt, 32 rows shared by broadcast. The arrays
// are sized for four columns and the loops stop at NARROW_COLS, a pipeline constant, so the
// driver unrolls them to the columns in use. (On lavapipe at batch 128 against matmul_sg_nt:
// N = 10, K = 512 takes 0.6 of the time; N = 32, K = 784 about 0.6.)
@compute @workgroup_size(8)
fn matmul_sg_nt_narrow(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    // The arrays hold four columns: a larger constant must not index past them.
    let narrow = min(NARROW_COLS, 4u);
    let kq = params.k / 4u;
    let row0 = wid.y * NT_ROWS;
    let col0 = wid.x * (narrow * LANES) + lid.x;
    var b_at: array<u32, 4>;
    for (var j = 0u; j < narrow; j++) {
        b_at[j] = min(col0 + j * LANES, params.n - 1u) * kq;
    }
    var a_at: array<u32, 4>;
    for (var q = 0u; q < 4u; q++) {
        a_at[q] = min(row0 + q * LANES + lid.x, params.m - 1u) * kq;
    }
    // acc[i][j]: row row0 + i, column col0 + 8j.
    var acc: array<array<f32, 4>, NT_ROWS>;
    for (var kk = 0u; kk < kq; kk++) {
        var cols: array<vec4<f32>, 4>;
        for (var j = 0u; j < narrow; j++) {
            cols[j] = b[b_at[j] + kk];
        }
        // Two halves of 16 rows, spelled out as in matmul_sg_nt.
        let top = share_rows(a[a_at[0] + kk], a[a_at[1] + kk]);
        for (var i = 0u; i < ROWS; i++) {
            for (var j = 0u; j < narrow; j++) {
                acc[i][j] = dot4_add(top[i], cols[j], acc[i][j]);
            }
        }
        let bottom = share_rows(a[a_at[2] + kk], a[a_at[3] + kk]);
        for (var i = 0u; i < ROWS; i++) {
            for (var j = 0u; j < narrow; j++) {
                acc[ROWS + i][j] = dot4_add(bottom[i], cols[j], acc[ROWS + i][j]);
            }
        }
    }
    for (var i = 0u; i < NT_ROWS; i++) {
        for (var j = 0u; j < narrow; j++) {
            store(row0 + i, col0 + j * LANES, acc[i][j]);
        }
    }
}

// s + x·y as four fused multiply-adds (dot() may round differently from driver to driver).
fn dot4_add(x: vec4<f32>, y: vec4<f32>, s: f32) -> f32 {
    return fma(x.w, y.w, fma(x.z, y.z, fma(x.y, y.y, fma(x.x, y.x, s))));
}

@compute @workgroup_size(8)
fn matmul_sg_tn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    // A is K×M: a vec4 holds four rows at one k. Per step of four k, lane l loads row quad
    // l % 4 at k0 + l / 4 and at k0 + 2 + l / 4; k past the end reads as zero.
    let mq = params.m / 4u;
    let nq = params.n / 4u;
    let row0 = wid.y * ROWS;
    let q0 = wid.x * (COLS / 4u) + lid.x;
    let col_lo = min(q0, nq - 1u);
    let col_hi = min(q0 + LANES, nq - 1u);
    let a_quad = min(row0 / 4u + lid.x % 4u, mq - 1u);
    let a_k = lid.x / 4u;
    var acc: array<Acc, 16>;
    let steps = (params.k + 3u) / 4u;
    for (var s = 0u; s < steps; s++) {
        let k0 = s * 4u;
        var panel: Panel;
        for (var t = 0u; t < 4u; t++) {
            let b_row = min(k0 + t, params.k - 1u) * nq;
            panel[t][0] = b[b_row + col_lo];
            panel[t][1] = b[b_row + col_hi];
        }
        let k_first = k0 + a_k;
        let k_second = k0 + 2u + a_k;
        let first = select(vec4<f32>(), a[min(k_first, params.k - 1u) * mq + a_quad], k_first < params.k);
        let second = select(vec4<f32>(), a[min(k_second, params.k - 1u) * mq + a_quad], k_second < params.k);
        // quads[t][q]: rows 4q..4q+3 at k0 + t.
        let quads = array<array<vec4<f32>, 4>, 4>(
            array<vec4<f32>, 4>(subgroupBroadcast(first, 0u), subgroupBroadcast(first, 1u),
                                subgroupBroadcast(first, 2u), subgroupBroadcast(first, 3u)),
            array<vec4<f32>, 4>(subgroupBroadcast(first, 4u), subgroupBroadcast(first, 5u),
                                subgroupBroadcast(first, 6u), subgroupBroadcast(first, 7u)),
            array<vec4<f32>, 4>(subgroupBroadcast(second, 0u), subgroupBroadcast(second, 1u),
                                subgroupBroadcast(second, 2u), subgroupBroadcast(second, 3u)),
            array<vec4<f32>, 4>(subgroupBroadcast(second, 4u), subgroupBroadcast(second, 5u),
                                subgroupBroadcast(second, 6u), subgroupBroadcast(second, 7u)));
        for (var i = 0u; i < ROWS; i++) {
            let q = i / 4u;
            let r = i % 4u;
            let row = vec4<f32>(quads[0][q][r], quads[1][q][r], quads[2][q][r], quads[3][q][r]);
            acc[i] = rank4(acc[i], row, panel);
        }
    }
    store_quads(row0, q0, acc);
}
