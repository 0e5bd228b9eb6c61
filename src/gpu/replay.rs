//! Launch records ("replays"): prepared launches written as JSON that any WebGPU implementation
//! can run from the exported WGSL (`wgdistill shaders --export`). A record holds every buffer
//! the launches bind with its contents before them, each launch (kernel, override constants,
//! parameter bytes, bound ranges, grid) and the outputs to read back, with the values they must
//! match where those are known. `tools/webgpu/replay.mjs` runs records on Dawn (Node) and in
//! browsers, so the cases `wgdistill check` runs through wgpu are checked through Tint too.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use serde::Serialize;

use super::context::{Dispatch, Gpu};
use super::pipeline::Binding;
use super::tensor::Tensor;
use crate::error::Result;

/// The `format` field of every record; bumped when the layout changes.
pub const FORMAT: &str = "wgdistill-replay/1";

/// One launch record, ready to be written as JSON.
#[derive(Serialize)]
pub struct Replay {
    format: &'static str,
    /// What was recorded (a check case's `kernel shape`, or an op's name).
    pub name: String,
    /// The adapter it was recorded on: the launchers chose kernels and grids for it.
    pub recorded_on: String,
    /// WebGPU features the launches need (`subgroups` for the subgroup kernel families).
    pub features: Vec<&'static str>,
    /// With `subgroups`: the lanes a subgroup must have at least (the subgroup kernels assume
    /// their workgroup is one subgroup), checked against the adapter's `subgroupMinSize`: a
    /// record made where subgroups are wider is refused where they are narrower, not run wrong.
    pub needs_subgroup_lanes: Option<u32>,
    buffers: Vec<BufferRecord>,
    launches: Vec<LaunchRecord>,
    outputs: Vec<OutputRecord>,
    /// The values the outputs must match, concatenated in their order (a CPU f64 reference).
    pub expected: Option<Vec<f64>>,
    /// Relative tolerance against `expected`.
    pub rtol: f64,
    /// Absolute tolerance against `expected`.
    pub atol: f64,
}

#[derive(Serialize)]
struct BufferRecord {
    bytes: u64,
    /// Base64 of the buffer's contents before the first launch.
    data: String,
}

#[derive(Serialize)]
struct LaunchRecord {
    family: &'static str,
    entry: &'static str,
    /// `uniform`, `read-only-storage` or `storage` for bindings 0.. of group 0 (WebGPU's names).
    bindings: Vec<&'static str>,
    constants: BTreeMap<String, f64>,
    /// Base64 of the uniform parameter bytes (binding 0).
    params: String,
    /// Bindings 1.., in order.
    resources: Vec<Range>,
    grid: [u32; 3],
}

#[derive(Serialize)]
struct Range {
    buffer: usize,
    offset: u64,
    size: u64,
}

#[derive(Serialize)]
struct OutputRecord {
    name: String,
    buffer: usize,
    offset: u64,
    shape: Vec<usize>,
    dtype: &'static str,
}

/// WebGPU's name for how a kernel binds a buffer.
pub fn binding_name(b: Binding) -> &'static str {
    match b {
        Binding::Uniform => "uniform",
        Binding::ReadOnly => "read-only-storage",
        Binding::ReadWrite | Binding::Output => "storage",
    }
}

/// Records `plan` before it runs: reads back every buffer it binds (queued writes included), so
/// call it after the inputs are uploaded and before [`Gpu::execute`]. `outputs` are the tensors
/// to read after the launches, by name.
pub fn record(
    gpu: &Gpu,
    name: &str,
    plan: &[Dispatch],
    outputs: &[(String, Tensor)],
) -> Result<Replay> {
    let b64 = base64::engine::general_purpose::STANDARD;
    // One record per device buffer, as large as its furthest bound view (4 bytes at least:
    // empty tensors still bind 4).
    let mut index: HashMap<usize, usize> = HashMap::new();
    let mut buffers: Vec<(Tensor, u64)> = Vec::new();
    let views = plan
        .iter()
        .flat_map(|d| d.tensors.iter())
        .chain(outputs.iter().map(|(_, t)| t));
    for t in views {
        let end = (t.offset() + t.byte_len().max(4)).next_multiple_of(4);
        let slot = *index.entry(t.buffer_id()).or_insert_with(|| {
            buffers.push((t.clone(), 0));
            buffers.len() - 1
        });
        buffers[slot].1 = buffers[slot].1.max(end);
    }
    let mut buffer_records = Vec::with_capacity(buffers.len());
    for (t, bytes) in &buffers {
        let words: Vec<u32> = gpu.read(&t.raw_words(0, (*bytes / 4) as usize))?;
        buffer_records.push(BufferRecord {
            bytes: *bytes,
            data: b64.encode(bytemuck::cast_slice::<u32, u8>(&words)),
        });
    }
    let range = |t: &Tensor| Range {
        buffer: index[&t.buffer_id()],
        offset: t.offset(),
        size: t.byte_len().max(4),
    };
    let mut features = Vec::new();
    let launches = plan
        .iter()
        .map(|d| {
            let spec = &d.kernel.spec;
            if super::shaders::needs_subgroups(spec.family) && !features.contains(&"subgroups") {
                features.push("subgroups");
            }
            LaunchRecord {
                family: spec.family,
                entry: spec.entry,
                bindings: spec.bindings.iter().map(|b| binding_name(*b)).collect(),
                constants: d.kernel.constants.iter().cloned().collect(),
                params: b64.encode(&d.params),
                resources: d.tensors.iter().map(range).collect(),
                grid: d.grid,
            }
        })
        .collect();
    let outputs = outputs
        .iter()
        .map(|(name, t)| OutputRecord {
            name: name.clone(),
            buffer: index[&t.buffer_id()],
            offset: t.offset(),
            shape: t.shape().to_vec(),
            dtype: t.dtype().name(),
        })
        .collect();
    Ok(Replay {
        format: FORMAT,
        name: name.to_string(),
        recorded_on: gpu.caps().name.clone(),
        needs_subgroup_lanes: features
            .contains(&"subgroups")
            .then_some(super::caps::SUBGROUP_KERNEL_LANES),
        features,
        buffers: buffer_records,
        launches,
        outputs,
        expected: None,
        rtol: 0.0,
        atol: 0.0,
    })
}

impl Replay {
    /// The values the outputs must match, within `rtol`/`atol` (as `allclose` compares).
    pub fn expecting(mut self, values: Vec<f64>, rtol: f64, atol: f64) -> Replay {
        self.expected = Some(values);
        self.rtol = rtol;
        self.atol = atol;
        self
    }

    /// The record as JSON text.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| {
            crate::error::input_error(&self.name, format!("cannot write its record ({e})"))
        })
    }
}
