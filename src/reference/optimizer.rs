//! f64 reference for `shaders/optimizer.wgsl`: PyTorch's `SGD` and `AdamW` update rules and
//! global-norm clipping.

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
