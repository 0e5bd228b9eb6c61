//! f64 references for the optimizers (PyTorch's `SGD` and `AdamW` update rules), global-norm
//! clipping, and the dropout mask.

/// One SGD step in place; `step` is 1 on the first update.
#[allow(clippy::too_many_arguments)]
pub fn sgd(
    p: &mut [f64],
    g: &[f64],
    buf: &mut [f64],
    step: u32,
    lr: f64,
    momentum: f64,
    dampening: f64,
    wd: f64,
    nesterov: bool,
) {
    for i in 0..p.len() {
        let mut d = g[i] + wd * p[i];
        if momentum != 0.0 {
            buf[i] = if step <= 1 {
                d
            } else {
                momentum * buf[i] + (1.0 - dampening) * d
            };
            d = if nesterov {
                d + momentum * buf[i]
            } else {
                buf[i]
            };
        }
        p[i] -= lr * d;
    }
}

/// One AdamW step in place; `step` is 1 on the first update.
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    p: &mut [f64],
    g: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    step: u32,
    lr: f64,
    b1: f64,
    b2: f64,
    eps: f64,
    wd: f64,
) {
    let t = f64::from(step.max(1));
    for i in 0..p.len() {
        p[i] *= 1.0 - lr * wd;
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        let m_hat = m[i] / (1.0 - b1.powf(t));
        let v_hat = v[i] / (1.0 - b2.powf(t));
        p[i] -= lr * m_hat / (v_hat.sqrt() + eps);
    }
}

/// `clip_grad_norm_`: scales `g` by `min(1, max_norm / (‖g‖ + 1e-6))`; returns ‖g‖ before.
pub fn clip_grad_norm(g: &mut [f64], max_norm: f64) -> f64 {
    let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    g.iter_mut().for_each(|v| *v *= coef);
    norm
}

fn mix32(v: u32) -> u32 {
    let mut x = v;
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// Whether dropout keeps element `i` under `seed` for drop threshold `threshold` (= p·2³²).
pub fn dropout_keeps(seed: u32, i: u32, threshold: u32) -> bool {
    mix32(i ^ mix32(seed)) >= threshold
}

/// Whether the training-graph dropout (`dropout_step`) keeps element `i` at step `step` with
/// salt `salt` for drop threshold `threshold`.
pub fn dropout_step_keeps(salt: u32, step: u32, i: u32, threshold: u32) -> bool {
    let seed = mix32(salt ^ mix32(step.wrapping_add(0x9e37_79b9)));
    mix32(i ^ seed) >= threshold
}
