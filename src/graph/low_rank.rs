//! Low-rank factorisation: a trained Linear or Conv2d layer replaced by two thin ones from a
//! truncated singular value decomposition of its weight, to be recovered by distillation.
//!
//! A layer `L` with weight `W` (`[out, in]`, or `[out, in, k, k]` read as `[out, in·k·k]`) and
//! rank `r` becomes `L.0`, the same layer to `r` outputs without bias (`W₀ = √Σᵣ Vᵣᵀ`), then `L.1`,
//! a Linear (or 1×1 convolution) from `r` to `out` that takes `L`'s bias (`W₁ = Uᵣ √Σᵣ`), as
//! `nn.Sequential(layer(in, r, bias=False), layer(r, out))` names them. `W₁ W₀` is the best rank-`r`
//! approximation of `W` (Eckart–Young); the parameters fall from `out·in·k²` to `r·(in·k² + out)`.

use std::collections::BTreeMap;

use super::ir::{ConvLayer, Graph, Op, Value};
use crate::Result;
use crate::error::{input_error, shape_error};
use crate::io::{HostTensor, TensorMap};

/// A layer's factorisation: its rank, and the fraction of `‖W‖²_F` the kept singular values
/// carry (1 at full rank).
#[derive(Clone, Debug, PartialEq)]
pub struct Factorised {
    /// The factorised layer.
    pub layer: String,
    /// The rank kept.
    pub rank: usize,
    /// `Σᵢ<ᵣ σᵢ² / Σᵢ σᵢ²`.
    pub kept_energy: f64,
}

/// The largest rank layer `node` allows: `min(out, in·k·k)`, or the reason it cannot be
/// factorised.
fn max_rank(graph: &Graph, node: usize) -> std::result::Result<usize, String> {
    match &graph.nodes[node].op {
        Op::Linear { weight, .. } => {
            let s = graph.shape(*weight);
            Ok(s[0].min(s[1]))
        }
        Op::Conv2d { weight, spec, .. } if spec.groups == 1 => {
            let s = graph.shape(*weight);
            Ok(s[0].min(s[1] * s[2] * s[3]))
        }
        Op::Conv2d { .. } => Err("a grouped convolution cannot be factorised".into()),
        _ => Err("is not a Linear or Conv2d layer".into()),
    }
}

/// Each of `ranks` names a Linear or ungrouped Conv2d layer of `graph`, with a rank from 1 to
/// `min(out, in·k·k)`; the error gives the layer and why.
pub fn check(
    graph: &Graph,
    ranks: &BTreeMap<String, usize>,
) -> std::result::Result<(), (String, String)> {
    for (layer, &rank) in ranks {
        let fault = |m: String| (layer.clone(), m);
        let v = graph
            .find(layer)
            .ok_or_else(|| fault("the model has no layer of this name".into()))?;
        let max = max_rank(graph, v.0).map_err(fault)?;
        if !(1..=max).contains(&rank) {
            return Err(fault(format!(
                "the rank must be from 1 to {max}, got {rank}"
            )));
        }
    }
    Ok(())
}

impl Graph {
    /// The same model with each layer of `ranks` split into its two thin factors (see the
    /// module's documentation); taps and output read the second factor where they read the
    /// layer.
    pub fn factorised(&self, ranks: &BTreeMap<String, usize>) -> Result<Graph> {
        check(self, ranks).map_err(|(layer, m)| shape_error(&format!("low_rank.{layer}"), m))?;
        // The factorised layers' own parameters are replaced, not copied.
        let mut replaced = vec![false; self.nodes.len()];
        for layer in ranks.keys() {
            let v = self.find(layer).expect("checked");
            if let Op::Linear { weight, bias, .. } | Op::Conv2d { weight, bias, .. } =
                &self.nodes[v.0].op
            {
                replaced[weight.0] = true;
                if let Some(b) = bias {
                    replaced[b.0] = true;
                }
            }
        }
        let mut index = 0;
        self.rewritten(|g, node, new| {
            let i = index;
            index += 1;
            let at = |v: Value| new[v.0];
            Ok(match (&node.op, ranks.get(&node.name)) {
                // Never read: the factors replace them.
                _ if replaced[i] => Some(Value(usize::MAX)),
                (&Op::Linear { x, bias, .. }, Some(&r)) => {
                    let thin = g.linear(&format!("{}.0", node.name), at(x), r, false)?;
                    let out = node.shape[1];
                    Some(g.linear(&format!("{}.1", node.name), thin, out, bias.is_some())?)
                }
                (
                    &Op::Conv2d {
                        x,
                        weight,
                        bias,
                        spec,
                    },
                    Some(&r),
                ) => {
                    let first = ConvLayer {
                        out: r,
                        kernel: self.shape(weight)[2],
                        stride: spec.stride[0],
                        padding: spec.padding[0],
                        bias: false,
                        groups: 1,
                    };
                    let thin = g.conv2d(&format!("{}.0", node.name), at(x), first)?;
                    let mut second = ConvLayer::same(node.shape[1], 1);
                    second.bias = bias.is_some();
                    Some(g.conv2d(&format!("{}.1", node.name), thin, second)?)
                }
                _ => None,
            })
        })
    }
}

/// `source`'s weights for the model factorised at `ranks`: each layer `L` of `ranks` that
/// `source` holds whole (`L.weight`) becomes `L.0.weight`, `L.1.weight` (and `L.1.bias`) from its
/// truncated SVD, computed in f64; layers already factorised and every other tensor are copied.
/// Returns the weights and, per factorised layer, the energy its rank keeps.
pub fn factorise_weights(
    what: &str,
    source: &TensorMap,
    ranks: &BTreeMap<String, usize>,
) -> Result<(TensorMap, Vec<Factorised>)> {
    let mut out = source.clone();
    let mut report = Vec::new();
    for (layer, &rank) in ranks {
        let Some(w) = out.remove(&format!("{layer}.weight")) else {
            continue;
        };
        let data = w
            .as_f32()
            .ok_or_else(|| input_error(what, format!("{layer}.weight: expected f32 elements")))?;
        let (rows, cols) = (w.shape[0], w.shape[1..].iter().product::<usize>());
        if rank == 0 || rank > rows.min(cols) {
            return Err(input_error(
                what,
                format!("{layer}: rank {rank} does not fit a {rows}×{cols} weight"),
            ));
        }
        let a: Vec<f64> = data.iter().map(|&v| f64::from(v)).collect();
        let svd = svd(&a, rows, cols);
        let total: f64 = svd.s.iter().map(|s| s * s).sum();
        let kept: f64 = svd.s[..rank].iter().map(|s| s * s).sum();
        // W₀[j, i] = √σⱼ vᵢⱼ; W₁[o, j] = uₒⱼ √σⱼ.
        let first: Vec<f32> = (0..rank)
            .flat_map(|j| {
                let root = svd.s[j].sqrt();
                svd.v[j].iter().map(move |&v| v * root)
            })
            .map(|v| v as f32)
            .collect();
        let second: Vec<f32> = (0..rows)
            .flat_map(|o| (0..rank).map(move |j| (o, j)))
            .map(|(o, j)| (svd.u[j][o] * svd.s[j].sqrt()) as f32)
            .collect();
        let (mut first_shape, mut second_shape) = (w.shape.clone(), vec![rows, rank]);
        first_shape[0] = rank;
        if w.shape.len() == 4 {
            second_shape.extend([1, 1]);
        }
        out.insert(
            format!("{layer}.0.weight"),
            HostTensor::f32(&first_shape, first),
        );
        out.insert(
            format!("{layer}.1.weight"),
            HostTensor::f32(&second_shape, second),
        );
        if let Some(b) = out.remove(&format!("{layer}.bias")) {
            out.insert(format!("{layer}.1.bias"), b);
        }
        report.push(Factorised {
            layer: layer.clone(),
            rank,
            kept_energy: if total > 0.0 { kept / total } else { 1.0 },
        });
    }
    Ok((out, report))
}

/// A thin singular value decomposition `A = U diag(s) Vᵀ` of a row-major `rows × cols` matrix:
/// `k = min(rows, cols)` singular values in decreasing order, with the columns of `U` (`u[j]`,
/// length `rows`) and of `V` (`v[j]`, length `cols`).
pub struct Svd {
    /// Left singular vectors, one per singular value.
    pub u: Vec<Vec<f64>>,
    /// Singular values, largest first.
    pub s: Vec<f64>,
    /// Right singular vectors, one per singular value.
    pub v: Vec<Vec<f64>>,
}

/// One-sided Jacobi (Hestenes): plane rotations make the columns of `A V` mutually orthogonal;
/// their norms are then the singular values. Accurate to working precision and simple enough to
/// read; the matrices here are at most a few thousand wide and factorised once, on the host.
pub fn svd(a: &[f64], rows: usize, cols: usize) -> Svd {
    assert_eq!(
        a.len(),
        rows * cols,
        "svd: {rows}×{cols} needs {} values",
        rows * cols
    );
    // Orthogonalise the shorter side's vectors: the columns of A, or of Aᵀ (A's rows).
    let transposed = rows < cols;
    let (n, len) = if transposed {
        (rows, cols)
    } else {
        (cols, rows)
    };
    let mut w: Vec<Vec<f64>> = (0..n)
        .map(|j| {
            (0..len)
                .map(|i| {
                    if transposed {
                        a[j * cols + i]
                    } else {
                        a[i * cols + j]
                    }
                })
                .collect()
        })
        .collect();
    let mut z: Vec<Vec<f64>> = (0..n)
        .map(|j| (0..n).map(|i| f64::from(u8::from(i == j))).collect())
        .collect();
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
    let rotate = |m: &mut [Vec<f64>], p: usize, q: usize, c: f64, s: f64| {
        let (lo, hi) = m.split_at_mut(q);
        for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
            (*x, *y) = (c * *x - s * *y, s * *x + c * *y);
        }
    };
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (alpha, beta, gamma) =
                    (dot(&w[p], &w[p]), dot(&w[q], &w[q]), dot(&w[p], &w[q]));
                if gamma.abs() <= 1e-15 * (alpha * beta).sqrt() || gamma == 0.0 {
                    continue;
                }
                rotated = true;
                // The rotation that zeroes the pair's inner product (the smaller angle).
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                rotate(&mut w, p, q, c, c * t);
                rotate(&mut z, p, q, c, c * t);
            }
        }
        if !rotated {
            break;
        }
    }
    let norms: Vec<f64> = w.iter().map(|c| dot(c, c).sqrt()).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| norms[j].total_cmp(&norms[i]));
    let (mut left, mut s, mut right) = (Vec::new(), Vec::new(), Vec::new());
    for j in order {
        let unit: Vec<f64> = w[j]
            .iter()
            .map(|x| if norms[j] > 0.0 { x / norms[j] } else { 0.0 })
            .collect();
        s.push(norms[j]);
        // A V = W: W's normalised columns are U, V's columns are V (swapped for Aᵀ).
        if transposed {
            left.push(z[j].clone());
            right.push(unit);
        } else {
            left.push(unit);
            right.push(z[j].clone());
        }
    }
    Svd {
        u: left,
        s,
        v: right,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize, seed: u64) -> Vec<f64> {
        let mut state = seed;
        (0..rows * cols)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect()
    }

    #[test]
    fn the_decomposition_reconstructs_and_is_orthonormal_in_both_orientations() {
        for (rows, cols) in [(7, 5), (5, 9), (6, 6), (1, 4), (3, 1)] {
            let a = matrix(rows, cols, (rows * 31 + cols) as u64);
            let d = svd(&a, rows, cols);
            let k = rows.min(cols);
            assert_eq!((d.u.len(), d.s.len(), d.v.len()), (k, k, k));
            assert!(d.s.windows(2).all(|p| p[0] >= p[1]), "{:?}", d.s);
            for i in 0..rows {
                for j in 0..cols {
                    let back: f64 = (0..k).map(|r| d.u[r][i] * d.s[r] * d.v[r][j]).sum();
                    assert!((back - a[i * cols + j]).abs() < 1e-12, "{rows}×{cols}");
                }
            }
            for p in 0..k {
                for q in 0..k {
                    let want = f64::from(u8::from(p == q));
                    let uu: f64 = d.u[p].iter().zip(&d.u[q]).map(|(a, b)| a * b).sum();
                    let vv: f64 = d.v[p].iter().zip(&d.v[q]).map(|(a, b)| a * b).sum();
                    assert!((uu - want).abs() < 1e-12 && (vv - want).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn a_rank_two_matrix_has_two_nonzero_singular_values() {
        // (x yᵀ)·3 + (p qᵀ)·1 with orthonormal pairs: singular values 3 and 1 exactly.
        let (rows, cols) = (4, 6);
        let x = [0.5, 0.5, 0.5, 0.5];
        let p = [0.5, -0.5, 0.5, -0.5];
        let y = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let q = [0.0, 0.0, 0.6, 0.8, 0.0, 0.0];
        let a: Vec<f64> = (0..rows * cols)
            .map(|e| 3.0 * x[e / cols] * y[e % cols] + p[e / cols] * q[e % cols])
            .collect();
        let d = svd(&a, rows, cols);
        assert!((d.s[0] - 3.0).abs() < 1e-12 && (d.s[1] - 1.0).abs() < 1e-12);
        assert!(d.s[2..].iter().all(|s| s.abs() < 1e-12), "{:?}", d.s);
    }
}
