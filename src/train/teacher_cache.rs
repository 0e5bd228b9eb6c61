//! The teacher-output cache. Without augmentation a frozen teacher sees the same images every
//! epoch, so its outputs (the logits and whatever taps the losses read) need computing only once:
//! they are stored as safetensors shards under a key that hashes the teacher (its graph and
//! weights) and the training data, then replayed by every epoch, and by later runs that find the
//! same key. A stage using it compiles its step with a [`Graph::replay`] teacher, so a step
//! uploads a batch of cached rows instead of running the teacher's forward pass.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Result;
use crate::data::Dataset;
use crate::error::input_error;
use crate::gpu::Gpu;
use crate::graph::{EvalStep, Graph, Weights};
use crate::io::{self, HostTensor, TensorMap};

/// Samples per shard file.
const SHARD: usize = 8192;

/// Bump when the layout or the hashed description changes, so old entries are not reused.
const FORMAT: &str = "wgdistill-teacher-cache-v1";

/// A teacher's outputs over a training set, in sample order.
pub struct TeacherOutputs {
    /// Each tap's name and per-sample shape (no batch dimension).
    pub taps: Vec<(String, Vec<usize>)>,
    /// Each tap's values, `samples · prod(shape)`.
    pub values: Vec<Vec<f32>>,
    /// The cache entry's folder.
    pub dir: PathBuf,
    /// Whether they were read from the cache (else computed, and written to it, now).
    pub reused: bool,
    /// Seconds spent reading or computing them.
    pub seconds: f64,
}

impl TeacherOutputs {
    /// Copies tap `tap`'s rows for the samples `indices` into `out` (the batch's order).
    pub fn gather(&self, tap: usize, indices: &[usize], out: &mut Vec<f32>) {
        let len: usize = self.taps[tap].1.iter().product();
        let values = &self.values[tap];
        out.clear();
        for &i in indices {
            out.extend_from_slice(&values[i * len..(i + 1) * len]);
        }
    }
}

/// What `meta.json` records; written after every shard, so its presence marks a complete entry.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Meta {
    format: String,
    samples: usize,
    shards: usize,
    taps: Vec<(String, Vec<usize>)>,
}

/// The entry key: SHA-256 over the cache format, the teacher's graph (every node's name, op and
/// shape, so architecture, ensemble mixture and temperature all count), its weights, the taps
/// kept, and the training images and labels.
pub fn key(
    gpu: &Gpu,
    teacher: &Graph,
    weights: &Weights,
    taps: &[&str],
    data: &Dataset,
) -> Result<String> {
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    for node in &teacher.nodes {
        // The batch dimension of the graph does not change the outputs.
        let shape = node.shape.get(1..).unwrap_or(&[]);
        h.update(format!("{}|{:?}|{:?}\n", node.name, node.op, shape).as_bytes());
    }
    for (name, t) in weights.to_host(gpu)? {
        h.update(format!("{name}|{:?}\n", t.shape).as_bytes());
        match t.as_f32() {
            Some(v) => h.update(bytemuck::cast_slice(v)),
            None => h.update(bytemuck::cast_slice(t.as_i32().unwrap_or(&[]))),
        }
    }
    h.update(format!("taps {taps:?}\n").as_bytes());
    h.update(format!("data {:?} {}\n", data.shape, data.len()).as_bytes());
    h.update(bytemuck::cast_slice(&data.images));
    h.update(bytemuck::cast_slice(&data.labels));
    Ok(h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The teacher's `taps` over every sample of `data`, from the cache entry `root/key` when it is
/// complete, else computed with `teacher` (built for batches of `batch`, evaluation mode) and
/// written there.
pub fn load_or_compute(
    gpu: &Gpu,
    root: &Path,
    key: &str,
    teacher: &Graph,
    weights: &Weights,
    taps: &[&str],
    data: &Dataset,
) -> Result<TeacherOutputs> {
    let start = Instant::now();
    let dir = root.join(key);
    let shapes: Vec<(String, Vec<usize>)> = taps
        .iter()
        .map(|t| {
            Ok((
                t.to_string(),
                teacher.shape(teacher.tapped(t)?)[1..].to_vec(),
            ))
        })
        .collect::<Result<_>>()?;
    if let Some(values) = read_entry(&dir, &shapes, data.len())? {
        return Ok(TeacherOutputs {
            taps: shapes,
            values,
            dir,
            reused: true,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    let batch = teacher
        .find("x")
        .map(|x| teacher.shape(x)[0])
        .ok_or_else(|| input_error("teacher cache", "the teacher has no input x"))?;
    let eval = EvalStep::compile_taps(gpu, teacher, weights, taps)?;
    let sample = data.sample_len();
    let mut values: Vec<Vec<f32>> = vec![Vec::new(); taps.len()];
    // Full batches only (the graph's batch is fixed); the last rows ride in a batch padded by
    // repeating its final sample, and the padding's outputs are dropped.
    let mut x = Vec::with_capacity(batch * sample);
    for start_row in (0..data.len()).step_by(batch) {
        let rows = batch.min(data.len() - start_row);
        x.clear();
        x.extend_from_slice(&data.images[start_row * sample..(start_row + rows) * sample]);
        let last = &data.images[(start_row + rows - 1) * sample..(start_row + rows) * sample];
        for _ in rows..batch {
            x.extend_from_slice(last);
        }
        for (k, out) in eval.run_taps(gpu, &x)?.into_iter().enumerate() {
            let len = out.len() / batch;
            values[k].extend_from_slice(&out[..rows * len]);
        }
    }
    write_entry(&dir, &shapes, &values, data.len())?;
    Ok(TeacherOutputs {
        taps: shapes,
        values,
        dir,
        reused: false,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn shard_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("shard-{i:05}.safetensors"))
}

fn write_entry(
    dir: &Path,
    taps: &[(String, Vec<usize>)],
    values: &[Vec<f32>],
    samples: usize,
) -> Result<()> {
    let what = dir.display().to_string();
    std::fs::create_dir_all(dir).map_err(|e| input_error(&what, format!("cannot create ({e})")))?;
    let shards = samples.div_ceil(SHARD);
    for s in 0..shards {
        let (lo, hi) = (s * SHARD, ((s + 1) * SHARD).min(samples));
        let mut map = TensorMap::new();
        for ((name, shape), v) in taps.iter().zip(values) {
            let len: usize = shape.iter().product();
            let mut full = vec![hi - lo];
            full.extend(shape);
            map.insert(
                name.clone(),
                HostTensor::f32(&full, v[lo * len..hi * len].to_vec()),
            );
        }
        io::write_safetensors(&shard_path(dir, s), &map)?;
    }
    let meta = Meta {
        format: FORMAT.to_string(),
        samples,
        shards,
        taps: taps.to_vec(),
    };
    let text =
        serde_json::to_string_pretty(&meta).map_err(|e| input_error(&what, e.to_string()))?;
    io::write_atomic(&dir.join("meta.json"), text.as_bytes())
}

/// The entry's values, or `None` when it is missing or incomplete (then it is rebuilt). A
/// complete entry whose shards do not match its own description is an error, not silently
/// recomputed: something else wrote there.
fn read_entry(
    dir: &Path,
    taps: &[(String, Vec<usize>)],
    samples: usize,
) -> Result<Option<Vec<Vec<f32>>>> {
    let meta_path = dir.join("meta.json");
    let Ok(text) = std::fs::read_to_string(&meta_path) else {
        return Ok(None);
    };
    let what = meta_path.display().to_string();
    let meta: Meta = serde_json::from_str(&text)
        .map_err(|e| input_error(&what, format!("not a teacher-cache description ({e})")))?;
    let expected = Meta {
        format: FORMAT.to_string(),
        samples,
        shards: samples.div_ceil(SHARD),
        taps: taps.to_vec(),
    };
    if meta != expected {
        return Err(input_error(
            &what,
            format!("describes {meta:?}, but this key should hold {expected:?}"),
        ));
    }
    let mut values: Vec<Vec<f32>> = vec![Vec::new(); taps.len()];
    for s in 0..meta.shards {
        let path = shard_path(dir, s);
        let map = io::read_safetensors(&path)?;
        let rows = SHARD.min(samples - s * SHARD);
        for ((name, shape), v) in taps.iter().zip(values.iter_mut()) {
            let mut full = vec![rows];
            full.extend(shape);
            match map
                .get(name)
                .filter(|t| t.shape == full)
                .and_then(|t| t.as_f32())
            {
                Some(values) => {
                    // A damaged entry must not be replayed as a teacher's outputs.
                    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
                        return Err(input_error(
                            path.display().to_string(),
                            format!(
                                "{name}: element {i} is not finite; delete the entry to recompute it"
                            ),
                        ));
                    }
                    v.extend_from_slice(values);
                }
                _ => {
                    return Err(input_error(
                        path.display().to_string(),
                        format!("{name}: expected f32 {full:?}"),
                    ));
                }
            }
        }
    }
    Ok(Some(values))
}
