// Batch normalisation over x viewed as [N, C, S] (S = H·W for 2-D maps, 1 for features), as
// PyTorch's BatchNorm: training normalises with the batch's mean and biased variance and moves
// the running statistics by `momentum` (the running variance is unbiased); evaluation uses the
// running statistics.
//
// Per-channel reductions are split into chunks of at most `chunk` consecutive values of the
// channel (in (n, s) order): one invocation per (channel, chunk) reduces its chunk, and one per
// channel merges the chunks in order, so results are deterministic. Splitting is not only for
// parallelism: llvmpipe (lavapipe, and GL's llvmpipe) ends every loop of an invocation once the
// shader has run 65535 loop iterations in all (Mesa's LP_MAX_TGSI_LOOP_ITERATIONS), silently, so
// one invocation summing a whole channel of a 128×28×28 batch (100,352 values) stopped early.
// The launcher keeps chunk and chunks per channel well below that.
//
// stats is [4, C]: mean, 1/sqrt(var + eps), and (after grad_merge) dgamma, dbeta.
// Also here: the evaluation-mode backward pass (an affine map per channel: gradients flow through
// a frozen network to its input), and a channel's moments as a value of their own (mean and
// biased variance, [2, C], from the same chunked statistics) with their backward pass: the batch
// statistics DeepInversion matches against a layer's running statistics.
// partial is [C, chunks, 2].

struct Params {
    n: u32,
    c: u32,
    s: u32,
    // Values per chunk, and chunks per channel.
    chunk: u32,
    chunks: u32,
    eps: f32,
    momentum: f32,
    // 1: the normalising kernels apply a ReLU to their output (a BatchNorm whose only reader is
    // a ReLU, fused by the graph executor).
    relu: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, wg: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * wg + lid;
}

fn at(n: u32, c: u32, s: u32) -> u32 {
    return (n * params.c + c) * params.s + s;
}

// The per-value kernels (normalising, their backward passes) give a lane RUN consecutive values
// and find the channel by dividing once per lane, then counting positions: CPU drivers divide
// integers one lane at a time, so a division pair per value cost more than the value's
// arithmetic.
const RUN: u32 = 4u;

struct Run {
    // The value's index, its channel, and its position in the channel's plane.
    i: u32,
    c: u32,
    s: u32,
}

fn run_start(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> Run {
    let i = linear_index(wid, nwg, lid, 256u) * RUN;
    let plane = i / params.s;
    return Run(i, plane % params.c, i - plane * params.s);
}

fn run_next(r: Run) -> Run {
    let wraps = r.s + 1u == params.s;
    let c = select(r.c, select(r.c + 1u, 0u, r.c + 1u == params.c), wraps);
    return Run(r.i + 1u, c, select(r.s + 1u, 0u, wraps));
}

fn run_len() -> u32 {
    return params.n * params.c * params.s;
}

// A chunk of one channel: where its first value lies and how many values it has.
struct Chunk {
    start: u32,
    len: u32,
}

fn chunk_of(c: u32, k: u32) -> Chunk {
    let first = k * params.chunk;
    let len = min(params.chunk, params.n * params.s - first);
    return Chunk(at(first / params.s, c, first % params.s), len);
}

// The address after `addr` in (n, s) order within one channel, `s` being addr's position in its
// plane: no division per value.
fn next_in_channel(addr: u32, s: ptr<function, u32>) -> u32 {
    *s = *s + 1u;
    if (*s == params.s) {
        *s = 0u;
        return addr + 1u + (params.c - 1u) * params.s;
    }
    return addr + 1u;
}

// ---- training statistics: per chunk, its mean and sum of squared deviations ------------------
@group(0) @binding(1) var<storage, read> sp_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> sp_partial: array<f32>;

@compute @workgroup_size(64)
fn stats_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, WG);
    if (i >= params.c * params.chunks) {
        return;
    }
    let c = i / params.chunks;
    let ch = chunk_of(c, i % params.chunks);
    let s0 = ch.start % params.s;
    var s = s0;
    var addr = ch.start;
    var sum = 0.0;
    for (var t = 0u; t < ch.len; t++) {
        sum += sp_x[addr];
        addr = next_in_channel(addr, &s);
    }
    let mean = sum / f32(ch.len);
    s = s0;
    addr = ch.start;
    var m2 = 0.0;
    for (var t = 0u; t < ch.len; t++) {
        let d = sp_x[addr] - mean;
        m2 = fma(d, d, m2);
        addr = next_in_channel(addr, &s);
    }
    sp_partial[2u * i] = mean;
    sp_partial[2u * i + 1u] = m2;
}

// stats_partial where S and the chunk are multiples of 4: the chunk walked four values (one
// vec4) at a time; the four lanes of the sums are added at the end.
@group(0) @binding(1) var<storage, read> spq_x: array<vec4<f32>>;

// The quad after `quad` within one channel, `s` being its position in quads in its plane.
fn next_quad_in_channel(quad: u32, s: ptr<function, u32>) -> u32 {
    *s = *s + 1u;
    if (*s == params.s / 4u) {
        *s = 0u;
        return quad + 1u + (params.c - 1u) * (params.s / 4u);
    }
    return quad + 1u;
}

fn lanes_sum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

@compute @workgroup_size(64)
fn stats_partial_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, WG);
    if (i >= params.c * params.chunks) {
        return;
    }
    let c = i / params.chunks;
    let ch = chunk_of(c, i % params.chunks);
    let s0 = (ch.start % params.s) / 4u;
    let quads = ch.len / 4u;
    var s = s0;
    var quad = ch.start / 4u;
    var sum = vec4<f32>(0.0);
    for (var t = 0u; t < quads; t++) {
        sum += spq_x[quad];
        quad = next_quad_in_channel(quad, &s);
    }
    let mean = lanes_sum(sum) / f32(ch.len);
    s = s0;
    quad = ch.start / 4u;
    var m2 = vec4<f32>(0.0);
    for (var t = 0u; t < quads; t++) {
        let d = spq_x[quad] - vec4<f32>(mean);
        m2 = fma(d, d, m2);
        quad = next_quad_in_channel(quad, &s);
    }
    sp_partial[2u * i] = mean;
    sp_partial[2u * i + 1u] = lanes_sum(m2);
}

// ---- per channel: the chunks merged in order (Chan et al.), then the running statistics ------
@group(0) @binding(1) var<storage, read> sm_partial: array<f32>;
// stats_merge writes [mean; 1/sqrt(var + eps)] here, moments_merge [mean; var].
@group(0) @binding(2) var<storage, read_write> sm_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> sm_running_mean: array<f32>;
@group(0) @binding(4) var<storage, read_write> sm_running_var: array<f32>;

// Channel c's chunks merged in order: (mean, sum of squared deviations, count).
fn merge_chunks(c: u32) -> vec3<f32> {
    let total = params.n * params.s;
    var count = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    for (var k = 0u; k < params.chunks; k++) {
        let p = 2u * (c * params.chunks + k);
        let nb = f32(min(params.chunk, total - k * params.chunk));
        let merged = count + nb;
        let delta = sm_partial[p] - mean;
        mean = mean + delta * (nb / merged);
        m2 = m2 + sm_partial[p + 1u] + delta * delta * (count * nb / merged);
        count = merged;
    }
    return vec3<f32>(mean, m2, count);
}

@compute @workgroup_size(64)
fn stats_merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let c = linear_index(wid, nwg, lid, WG);
    if (c >= params.c) {
        return;
    }
    let m = merge_chunks(c);
    let mean = m.x;
    let m2 = m.y;
    let count = m.z;
    let var_biased = m2 / count;
    sm_out[c] = mean;
    sm_out[params.c + c] = 1.0 / sqrt(var_biased + params.eps);
    let unbiased = select(var_biased, m2 / (count - 1.0), count > 1.0);
    sm_running_mean[c] = (1.0 - params.momentum) * sm_running_mean[c] + params.momentum * mean;
    sm_running_var[c] = (1.0 - params.momentum) * sm_running_var[c] + params.momentum * unbiased;
}

// A channel's moments as a value of their own: [mean; biased variance], nothing else touched.
@compute @workgroup_size(64)
fn moments_merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let c = linear_index(wid, nwg, lid, WG);
    if (c >= params.c) {
        return;
    }
    let m = merge_chunks(c);
    sm_out[c] = m.x;
    sm_out[params.c + c] = m.y / m.z;
}

// The per-value kernels below fold each channel's constants into an affine map of the value
// (scale, shift), computed when a lane's run enters the channel, not per value: a run of RUN
// values crosses a channel boundary only where S is not a multiple of RUN, and on CPU drivers
// the per-channel loads, repeated per value, had cost more than the value's own load.

fn activate(y: f32) -> f32 {
    return select(y, max(y, 0.0), params.relu == 1u);
}

// ---- normalise with batch statistics: y = (x − mean)·invstd·gamma + beta --------------------
@group(0) @binding(1) var<storage, read> tr_x: array<f32>;
@group(0) @binding(2) var<storage, read> tr_stats: array<f32>;
@group(0) @binding(3) var<storage, read> tr_gamma: array<f32>;
@group(0) @binding(4) var<storage, read> tr_beta: array<f32>;
@group(0) @binding(5) var<storage, read_write> tr_y: array<f32>;

// (mean, scale, shift) of channel c: y = (x − mean)·scale + shift. The mean is subtracted
// before scaling, as in the reference, not folded into the shift: a channel whose mean is large
// against its spread would lose the difference to cancellation.
fn train_affine(c: u32) -> vec3<f32> {
    return vec3<f32>(tr_stats[c], tr_stats[params.c + c] * tr_gamma[c], tr_beta[c]);
}

@compute @workgroup_size(256)
fn normalize_train(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    var r = run_start(wid, nwg, lid);
    if (r.i >= run_len()) {
        return;
    }
    var c = r.c;
    var f = train_affine(c);
    for (var k = 0u; k < RUN && r.i < run_len(); k = k + 1u) {
        if (r.c != c) {
            c = r.c;
            f = train_affine(c);
        }
        tr_y[r.i] = activate(fma(tr_x[r.i] - f.x, f.y, f.z));
        r = run_next(r);
    }
}

// The *_vec4 entry points: the same maps for S a multiple of 4, where four consecutive values
// share a channel and a lane takes them as one vec4 (one load, not four: on lavapipe a lane's
// loads, each at its own address, are what these kernels wait on; 2.4× faster for a CNN's
// first batch norm).

// normalize_train for S a multiple of 4 (the per-channel bindings are normalize_train's).
@group(0) @binding(1) var<storage, read> tq_x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> tq_y: array<vec4<f32>>;

@compute @workgroup_size(256)
fn normalize_train_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wid, nwg, lid, 256u);
    if (q * 4u >= run_len()) {
        return;
    }
    let f = train_affine((q * 4u / params.s) % params.c);
    let y = fma(tq_x[q] - vec4<f32>(f.x), vec4<f32>(f.y), vec4<f32>(f.z));
    tq_y[q] = select(y, max(y, vec4<f32>(0.0)), params.relu == 1u);
}

// ---- evaluation: running statistics ---------------------------------------------------------
@group(0) @binding(1) var<storage, read> ev_x: array<f32>;
@group(0) @binding(2) var<storage, read> ev_running_mean: array<f32>;
@group(0) @binding(3) var<storage, read> ev_running_var: array<f32>;
@group(0) @binding(4) var<storage, read> ev_gamma: array<f32>;
@group(0) @binding(5) var<storage, read> ev_beta: array<f32>;
@group(0) @binding(6) var<storage, read_write> ev_y: array<f32>;

fn eval_affine(c: u32) -> vec3<f32> {
    let scale = ev_gamma[c] / sqrt(ev_running_var[c] + params.eps);
    return vec3<f32>(ev_running_mean[c], scale, ev_beta[c]);
}

@compute @workgroup_size(256)
fn normalize_eval(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    var r = run_start(wid, nwg, lid);
    if (r.i >= run_len()) {
        return;
    }
    var c = r.c;
    var f = eval_affine(c);
    for (var k = 0u; k < RUN && r.i < run_len(); k = k + 1u) {
        if (r.c != c) {
            c = r.c;
            f = eval_affine(c);
        }
        ev_y[r.i] = activate(fma(ev_x[r.i] - f.x, f.y, f.z));
        r = run_next(r);
    }
}

// normalize_eval for S a multiple of 4 (the per-channel bindings are normalize_eval's).
@group(0) @binding(1) var<storage, read> eq_x: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> eq_y: array<vec4<f32>>;

@compute @workgroup_size(256)
fn normalize_eval_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wid, nwg, lid, 256u);
    if (q * 4u >= run_len()) {
        return;
    }
    let f = eval_affine((q * 4u / params.s) % params.c);
    let y = fma(eq_x[q] - vec4<f32>(f.x), vec4<f32>(f.y), vec4<f32>(f.z));
    eq_y[q] = select(y, max(y, vec4<f32>(0.0)), params.relu == 1u);
}

// ---- backward (training): dgamma = Σ dy·x̂, dbeta = Σ dy per channel, by chunks ----------
@group(0) @binding(1) var<storage, read> gp_x: array<f32>;
@group(0) @binding(2) var<storage, read> gp_dy: array<f32>;
@group(0) @binding(3) var<storage, read> gp_stats: array<f32>;
@group(0) @binding(4) var<storage, read_write> gp_partial: array<f32>;

@compute @workgroup_size(64)
fn grad_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, WG);
    if (i >= params.c * params.chunks) {
        return;
    }
    let c = i / params.chunks;
    let ch = chunk_of(c, i % params.chunks);
    let mean = gp_stats[c];
    var s = ch.start % params.s;
    var addr = ch.start;
    var dxhat = 0.0;
    var dsum = 0.0;
    for (var t = 0u; t < ch.len; t++) {
        let dy = gp_dy[addr];
        dxhat = fma(dy, gp_x[addr] - mean, dxhat);
        dsum += dy;
        addr = next_in_channel(addr, &s);
    }
    gp_partial[2u * i] = dxhat * gp_stats[params.c + c];
    gp_partial[2u * i + 1u] = dsum;
}

// grad_partial where S and the chunk are multiples of 4 (see stats_partial_vec4).
@group(0) @binding(1) var<storage, read> gpq_x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> gpq_dy: array<vec4<f32>>;

@compute @workgroup_size(64)
fn grad_partial_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, WG);
    if (i >= params.c * params.chunks) {
        return;
    }
    let c = i / params.chunks;
    let ch = chunk_of(c, i % params.chunks);
    let mean = vec4<f32>(gp_stats[c]);
    var s = (ch.start % params.s) / 4u;
    var quad = ch.start / 4u;
    var dxhat = vec4<f32>(0.0);
    var dsum = vec4<f32>(0.0);
    for (var t = 0u; t < ch.len / 4u; t++) {
        let dy = gpq_dy[quad];
        dxhat = fma(dy, gpq_x[quad] - mean, dxhat);
        dsum += dy;
        quad = next_quad_in_channel(quad, &s);
    }
    gp_partial[2u * i] = lanes_sum(dxhat) * gp_stats[params.c + c];
    gp_partial[2u * i + 1u] = lanes_sum(dsum);
}

@group(0) @binding(1) var<storage, read> gm_partial: array<f32>;
@group(0) @binding(2) var<storage, read_write> gm_stats: array<f32>;
@group(0) @binding(3) var<storage, read_write> gm_dgamma: array<f32>;
@group(0) @binding(4) var<storage, read_write> gm_dbeta: array<f32>;

@compute @workgroup_size(64)
fn grad_merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let c = linear_index(wid, nwg, lid, WG);
    if (c >= params.c) {
        return;
    }
    var dg = 0.0;
    var db = 0.0;
    for (var k = 0u; k < params.chunks; k++) {
        let p = 2u * (c * params.chunks + k);
        dg += gm_partial[p];
        db += gm_partial[p + 1u];
    }
    gm_dgamma[c] = dg;
    gm_dbeta[c] = db;
    gm_stats[2u * params.c + c] = dg;
    gm_stats[3u * params.c + c] = db;
}

// dx = gamma·invstd/M · (M·dy − dbeta − x̂·dgamma), M = N·S.
@group(0) @binding(1) var<storage, read> bx_x: array<f32>;
@group(0) @binding(2) var<storage, read> bx_dy: array<f32>;
@group(0) @binding(3) var<storage, read> bx_stats: array<f32>;
@group(0) @binding(4) var<storage, read> bx_gamma: array<f32>;
@group(0) @binding(5) var<storage, read_write> bx_dx: array<f32>;

// As an affine map of (dy, x − mean): dx = a·dy + b·(x − mean) + k, with a = gamma·invstd,
// b = −a·invstd·dgamma/M and k = −a·dbeta/M; returned as (a, b, k, mean).
fn backward_affine(c: u32) -> vec4<f32> {
    let cc = params.c;
    let m = f32(params.n * params.s);
    let invstd = bx_stats[cc + c];
    let a = bx_gamma[c] * invstd;
    let b = -a * invstd * bx_stats[2u * cc + c] / m;
    return vec4<f32>(a, b, -a * bx_stats[3u * cc + c] / m, bx_stats[c]);
}

@compute @workgroup_size(256)
fn backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    var r = run_start(wid, nwg, lid);
    if (r.i >= run_len()) {
        return;
    }
    var c = r.c;
    var f = backward_affine(c);
    for (var k = 0u; k < RUN && r.i < run_len(); k = k + 1u) {
        if (r.c != c) {
            c = r.c;
            f = backward_affine(c);
        }
        bx_dx[r.i] = fma(f.x, bx_dy[r.i], fma(f.y, bx_x[r.i] - f.w, f.z));
        r = run_next(r);
    }
}

// backward_input for S a multiple of 4 (the per-channel bindings are backward_input's).
@group(0) @binding(1) var<storage, read> bq_x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bq_dy: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> bq_dx: array<vec4<f32>>;

@compute @workgroup_size(256)
fn backward_input_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wid, nwg, lid, 256u);
    if (q * 4u >= run_len()) {
        return;
    }
    let f = backward_affine((q * 4u / params.s) % params.c);
    let centred = bq_x[q] - vec4<f32>(f.w);
    bq_dx[q] = fma(vec4<f32>(f.x), bq_dy[q], fma(vec4<f32>(f.y), centred, vec4<f32>(f.z)));
}

// ---- evaluation-mode backward: dx = dy·gamma/sqrt(running_var + eps) --------------------------
@group(0) @binding(1) var<storage, read> be_dy: array<f32>;
@group(0) @binding(2) var<storage, read> be_running_var: array<f32>;
@group(0) @binding(3) var<storage, read> be_gamma: array<f32>;
@group(0) @binding(4) var<storage, read_write> be_dx: array<f32>;

@compute @workgroup_size(256)
fn backward_input_eval(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    var r = run_start(wid, nwg, lid);
    for (var k = 0u; k < RUN && r.i < run_len(); k = k + 1u) {
        let i = r.i;
        let c = r.c;
        be_dx[i] = be_dy[i] * be_gamma[c] / sqrt(be_running_var[c] + params.eps);
        r = run_next(r);
    }
}

// dx = dmean/M + dvar·2(x − mean)/M, M = N·S.
@group(0) @binding(1) var<storage, read> mb_x: array<f32>;
@group(0) @binding(2) var<storage, read> mb_moments: array<f32>;
@group(0) @binding(3) var<storage, read> mb_dmoments: array<f32>;
@group(0) @binding(4) var<storage, read_write> mb_dx: array<f32>;

@compute @workgroup_size(256)
fn moments_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    var r = run_start(wid, nwg, lid);
    for (var k = 0u; k < RUN && r.i < run_len(); k = k + 1u) {
        let i = r.i;
        let c = r.c;
        let m = f32(params.n * params.s);
        let centred = mb_x[i] - mb_moments[c];
        mb_dx[i] = (mb_dmoments[c] + 2.0 * mb_dmoments[params.c + c] * centred) / m;
        r = run_next(r);
    }
}
