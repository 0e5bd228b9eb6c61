//! f64 twin of `shaders/contrast.wgsl`: CRD's NCE loss on gathered bank rows, its gradients
//! with respect to both anchors and the updated bank rows (definitions in `docs/losses.md`).

use super::LossGrads;

/// CRD's attributes as the reference takes them.
#[derive(Clone, Copy, Debug)]
pub struct CrdAttrs {
    /// Temperature `nce_t`.
    pub t: f64,
    /// Momentum of the bank update `nce_mom`.
    pub momentum: f64,
    /// The bank's size N.
    pub n_data: f64,
    /// Normalisers (student anchors, teacher anchors); 0 estimates from these inputs.
    pub z: [f64; 2],
}

const EPS: f64 = 1e-7;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One side: `anchor` (B, D) against `rows` (B, n, D). Returns the loss, the gradient and Z.
fn nce_side(
    anchor: &[f64],
    rows: &[f64],
    b: usize,
    n: usize,
    a: &CrdAttrs,
    z: f64,
) -> (f64, Vec<f64>) {
    let d = anchor.len() / b;
    let logits: Vec<f64> = (0..b * n)
        .map(|e| {
            dot(
                &rows[e * d..(e + 1) * d],
                &anchor[(e / n) * d..(e / n + 1) * d],
            ) / a.t
        })
        .collect();
    let z = if z == 0.0 {
        a.n_data * logits.iter().map(|l| l.exp()).sum::<f64>() / (b * n) as f64
    } else {
        z
    };
    let c = (n - 1) as f64 / a.n_data;
    let mut loss = 0.0;
    let mut grad = vec![0.0; b * d];
    for (e, &l) in logits.iter().enumerate() {
        let (i, k) = (e / n, e % n);
        let x = l.exp() / z;
        // log(x/(x + c + ε)) for the positive, log(c/(x + c + ε)) for the negatives.
        let (term, dl) = if k == 0 {
            ((x / (x + c + EPS)).ln(), -(c + EPS) / (x + c + EPS))
        } else {
            ((c / (x + c + EPS)).ln(), x / (x + c + EPS))
        };
        loss -= term / b as f64;
        for j in 0..d {
            grad[i * d + j] += dl / (a.t * b as f64) * rows[e * d + j];
        }
    }
    (loss, grad)
}

/// `l2(m·rows[b, 0] + (1 − m)·anchor[b])` for each b.
fn updated_rows(anchor: &[f64], rows: &[f64], b: usize, n: usize, m: f64) -> Vec<f64> {
    let d = anchor.len() / b;
    let mut out = Vec::with_capacity(b * d);
    for i in 0..b {
        let v: Vec<f64> = (0..d)
            .map(|j| m * rows[i * n * d + j] + (1.0 - m) * anchor[i * d + j])
            .collect();
        let norm = dot(&v, &v).sqrt();
        out.extend(v.iter().map(|x| x / norm));
    }
    out
}

/// CRD: `NCE(student against the teacher rows) + NCE(teacher against the student rows)`, with
/// `student`, `teacher` (B, D) and `memory_student`, `memory_teacher` (B, n, D).
pub fn crd(
    student: &[f64],
    teacher: &[f64],
    memory_student: &[f64],
    memory_teacher: &[f64],
    batch: usize,
    attrs: &CrdAttrs,
) -> LossGrads {
    let n = memory_student.len() / student.len();
    let (ls, gs) = nce_side(student, memory_teacher, batch, n, attrs, attrs.z[0]);
    let (lt, gt) = nce_side(teacher, memory_student, batch, n, attrs, attrs.z[1]);
    LossGrads {
        loss: ls + lt,
        grads: vec![gs, gt],
        updated: vec![
            updated_rows(student, memory_student, batch, n, attrs.momentum),
            updated_rows(teacher, memory_teacher, batch, n, attrs.momentum),
        ],
    }
}
