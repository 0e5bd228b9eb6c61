//! The GPU context: one adapter, its device and queue, the buffer pool, the pipeline cache and the
//! runtime's counters. Everything that touches wgpu objects goes through here.

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use super::caps::{Capabilities, wanted_features};
use super::pipeline::{Kernel, KernelSpec, PipelineCache};
use super::pool::{BufferPool, Counters, RuntimeStats};
use super::select::{AdapterQuery, choose, create_instance};
use super::tensor::{DType, Element, Tensor, numel};
use crate::error::{Error, Result, one_line, shape_error};

/// Usage of every tensor buffer: bindable as storage, and a copy source and destination.
const TENSOR_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);
const STAGING_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::MAP_READ.union(wgpu::BufferUsages::COPY_DST);

/// How long a wait on the GPU may take before it is an error rather than a hang.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Folds a 1-D count of workgroups into a grid no dimension of which exceeds `max`
/// (`max_compute_workgroups_per_dimension`, 65535 on most adapters). Kernels recover the linear
/// workgroup index as `wid.x + wid.y * num_workgroups.x` and skip indices past the end.
pub fn fold_grid(workgroups: u64, max: u32) -> Option<[u32; 3]> {
    let max = u64::from(max.max(1));
    if workgroups <= max {
        return Some([workgroups as u32, 1, 1]);
    }
    let y = workgroups.div_ceil(max);
    if y > max {
        return None;
    }
    Some([workgroups.div_ceil(y) as u32, y as u32, 1])
}

/// A GPU ready for kernels.
pub struct Gpu {
    _instance: wgpu::Instance,
    adapter: wgpu::Adapter,
    device: wgpu::Device,
    queue: wgpu::Queue,
    caps: Capabilities,
    limits: wgpu::Limits,
    pool: BufferPool,
    pipelines: PipelineCache,
    counters: Arc<Counters>,
    errors: Arc<Mutex<Vec<String>>>,
    timeout: Duration,
}

impl Gpu {
    /// Opens the best adapter answering `query`, with the adapter's own limits and the optional
    /// features wgdistill uses (timestamp queries, f16) where it has them.
    pub fn new(query: &AdapterQuery) -> Result<Gpu> {
        let instance = create_instance(query.backends);
        let adapter = choose(&instance, query)?;
        let info = adapter.get_info();
        let features = adapter.features() & wanted_features();
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("wgdistill"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::RequestDevice {
            adapter: info.name.clone(),
            reason: one_line(&e.to_string()),
        })?;
        // wgpu's default handler panics on any error; keep them as values instead and report them
        // at the next synchronisation point.
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(one_line(&e.to_string()));
            }
        }));
        let lost = errors.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut v) = lost.lock() {
                v.push(format!("device lost ({reason:?}): {}", one_line(&message)));
            }
        });
        let limits = device.limits();
        let caps = Capabilities::describe(&info, device.features(), &limits)
            .on(&instance)
            .tuned()?;
        let counters = Arc::new(Counters::default());
        Ok(Gpu {
            _instance: instance,
            adapter,
            device,
            queue,
            caps,
            limits,
            pool: BufferPool::new(counters.clone()),
            pipelines: PipelineCache::default(),
            counters,
            errors,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Opens the adapter named by `WGPU_BACKEND` and `WGPU_ADAPTER_NAME` (or the best one).
    pub fn from_env() -> Result<Gpu> {
        Gpu::new(&AdapterQuery::from_env()?)
    }

    /// What this adapter is and can do.
    pub fn caps(&self) -> &Capabilities {
        &self.caps
    }

    /// Makes the tunable families launch these variants from now on (what `tune` times); kernels
    /// already prepared keep theirs.
    pub fn set_kernels(&mut self, kernels: super::KernelChoices) {
        self.caps.kernels = kernels;
        self.caps.kernels_from = super::ChoiceSource::Override;
    }

    /// Refuses a launch of `kernel` whose invocations would each run `iterations` iterations of
    /// shape-dependent loops (summed over the loops; loops of constant trip count are unrolled
    /// by the driver and not counted) where the adapter cuts loops short
    /// ([`Capabilities::loop_limit`]): there the result would silently be wrong.
    pub fn check_loops(&self, kernel: &KernelSpec, iterations: u64) -> Result<()> {
        match self.caps.loop_limit {
            Some(limit) if iterations > limit => Err(Error::LoopLimit {
                kernel: format!("{}::{}", kernel.family, kernel.entry),
                iterations,
                limit,
                adapter: self.caps.name.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// The device's full limits.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The wgpu adapter.
    pub fn adapter(&self) -> &wgpu::Adapter {
        &self.adapter
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The buffer pool.
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// Counts of buffers, bind groups and pipelines created and submissions made so far.
    pub fn stats(&self) -> RuntimeStats {
        self.counters.snapshot()
    }

    /// Sets how long a wait on the GPU may take before it is a [`Error::Timeout`].
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Fails with a clear error if a storage binding of `bytes` would exceed the adapter's limits.
    pub fn check_storage_size(&self, what: &str, bytes: u64) -> Result<()> {
        let checks = [
            (
                self.limits.max_storage_buffer_binding_size,
                "max_storage_buffer_binding_size",
            ),
            (self.limits.max_buffer_size, "max_buffer_size"),
        ];
        for (limit, limit_name) in checks {
            if bytes > limit {
                return Err(Error::TooLarge {
                    what: what.to_string(),
                    requested: bytes,
                    limit,
                    limit_name,
                });
            }
        }
        Ok(())
    }

    /// A tensor with unspecified contents (a pooled buffer may hold old data).
    pub fn empty(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let bytes = (numel(shape) as u64).saturating_mul(dtype.size());
        self.check_storage_size(&format!("tensor {}{:?}", dtype.name(), shape), bytes)?;
        let buffer = self.pool.acquire(
            &self.device,
            bytes,
            TENSOR_USAGE,
            self.limits.max_buffer_size,
        );
        Ok(Tensor::new(buffer, shape.to_vec(), dtype))
    }

    /// A tensor of zeros.
    pub fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = self.empty(shape, dtype)?;
        let mut encoder = self.encoder("zeros");
        encoder.clear_buffer(
            t.buffer(),
            t.offset(),
            Some(t.byte_len().next_multiple_of(4)),
        );
        self.submit(encoder)?;
        Ok(t)
    }

    /// Uploads host data into a new tensor of `shape`.
    pub fn upload<T: Element>(&self, shape: &[usize], data: &[T]) -> Result<Tensor> {
        let t = self.empty(shape, T::DTYPE)?;
        self.write(&t, data)?;
        Ok(t)
    }

    /// Overwrites a tensor's contents with host data (no allocation: the per-step batch upload).
    pub fn write<T: Element>(&self, tensor: &Tensor, data: &[T]) -> Result<()> {
        if tensor.dtype() != T::DTYPE || tensor.numel() != data.len() {
            return Err(shape_error(
                "write",
                format!(
                    "tensor is {}{:?} but {} {} values were given",
                    tensor.dtype().name(),
                    tensor.shape(),
                    data.len(),
                    T::DTYPE.name()
                ),
            ));
        }
        if !data.is_empty() {
            self.queue
                .write_buffer(tensor.buffer(), tensor.offset(), bytemuck::cast_slice(data));
        }
        Ok(())
    }

    /// Copies a tensor back to the host, waiting for the GPU (with a timeout).
    pub fn read<T: Element>(&self, tensor: &Tensor) -> Result<Vec<T>> {
        if tensor.dtype() != T::DTYPE {
            return Err(shape_error(
                "read",
                format!(
                    "tensor is {} but {} was asked for",
                    tensor.dtype().name(),
                    T::DTYPE.name()
                ),
            ));
        }
        let bytes = tensor.byte_len();
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let staging = self.pool.acquire(
            &self.device,
            bytes,
            STAGING_USAGE,
            self.limits.max_buffer_size,
        );
        let mut encoder = self.encoder("readback");
        encoder.copy_buffer_to_buffer(tensor.buffer(), tensor.offset(), staging.raw(), 0, bytes);
        let index = self.submit(encoder)?;
        let slice = staging.raw().slice(0..bytes);
        let (tx, rx) = mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait(index, "a readback")?;
        let mapped = rx
            .recv_timeout(self.timeout)
            .map_err(|_| Error::Timeout {
                what: "mapping a readback buffer".to_string(),
                timeout: self.timeout,
            })?
            .map_err(|e| Error::Wgpu {
                context: "mapping a readback buffer".to_string(),
                message: one_line(&e.to_string()),
            })
            .and_then(|()| {
                slice.get_mapped_range().map_err(|e| Error::Wgpu {
                    context: "reading a mapped buffer".to_string(),
                    message: one_line(&e.to_string()),
                })
            })?;
        let out: Vec<T> = bytemuck::cast_slice(&mapped).to_vec();
        drop(mapped);
        staging.raw().unmap();
        Ok(out)
    }

    /// The compiled kernel for `spec` (created and cached on first use).
    pub fn kernel(&self, spec: &KernelSpec, constants: &[(&str, f64)]) -> Result<Arc<Kernel>> {
        if super::shaders::find(spec.family).is_some_and(|f| f.packed_dot) && !self.caps.packed_dot
        {
            return Err(Error::Kernel {
                kernel: spec.name(),
                message: "needs dot4I8Packed (WGSL's packed_4x8_integer_dot_product), which this WGSL implementation does not offer".to_string(),
            });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let kernel =
            self.pipelines
                .get(&self.device, spec, constants, self.caps.shader_f16, || {
                    Counters::bump(&self.counters.pipelines);
                });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Kernel {
                kernel: spec.name(),
                message: one_line(&e.to_string()),
            });
        }
        kernel
    }

    /// A uniform buffer holding `value` (kernel parameters).
    pub fn uniform<T: bytemuck::Pod>(&self, value: &T) -> wgpu::Buffer {
        self.uniform_bytes(bytemuck::bytes_of(value))
    }

    /// A uniform buffer holding `bytes`.
    pub fn uniform_bytes(&self, bytes: &[u8]) -> wgpu::Buffer {
        Counters::bump(&self.counters.buffers);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgdistill params"),
            size: (bytes.len() as u64).next_multiple_of(16),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&buffer, 0, bytes);
        buffer
    }

    /// A bind group for `kernel`: the uniform (if its first binding is one) then the tensors, in
    /// the order of the kernel's bindings.
    pub fn bind_group(
        &self,
        kernel: &Kernel,
        uniform: Option<&wgpu::Buffer>,
        tensors: &[&Tensor],
    ) -> Result<wgpu::BindGroup> {
        let mut resources: Vec<wgpu::BindingResource<'_>> = Vec::new();
        if let Some(u) = uniform {
            resources.push(u.as_entire_binding());
        }
        resources.extend(tensors.iter().map(|t| t.binding()));
        if resources.len() != kernel.spec.bindings.len() {
            return Err(Error::Kernel {
                kernel: kernel.spec.name(),
                message: format!(
                    "needs {} bindings, {} were given",
                    kernel.spec.bindings.len(),
                    resources.len()
                ),
            });
        }
        let entries: Vec<wgpu::BindGroupEntry<'_>> = resources
            .into_iter()
            .enumerate()
            .map(|(i, resource)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource,
            })
            .collect();
        Counters::bump(&self.counters.bind_groups);
        Ok(self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("wgdistill bind group"),
            layout: &kernel.layout,
            entries: &entries,
        }))
    }

    /// The dispatch grid for a 1-D count of workgroups, folded into two dimensions past the
    /// adapter's per-dimension limit.
    pub fn grid(&self, kernel: &str, workgroups: u64) -> Result<[u32; 3]> {
        let max = self.limits.max_compute_workgroups_per_dimension;
        fold_grid(workgroups, max).ok_or_else(|| Error::GridTooLarge {
            kernel: kernel.to_string(),
            workgroups,
            max,
        })
    }

    /// A new command encoder.
    pub fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    /// Finishes and submits an encoder: one submission.
    pub fn submit(&self, encoder: wgpu::CommandEncoder) -> Result<wgpu::SubmissionIndex> {
        Counters::bump(&self.counters.submissions);
        let index = self.queue.submit([encoder.finish()]);
        self.take_errors("a submission")?;
        Ok(index)
    }

    /// Waits until a submission has finished, or fails after the timeout.
    pub fn wait(&self, index: wgpu::SubmissionIndex, what: &str) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: Some(self.timeout),
            })
            .map_err(|e| match e {
                wgpu::PollError::Timeout => Error::Timeout {
                    what: what.to_string(),
                    timeout: self.timeout,
                },
                other => Error::Wgpu {
                    context: format!("waiting for {what}"),
                    message: one_line(&other.to_string()),
                },
            })?;
        self.take_errors(what)
    }

    /// Returns the first error wgpu reported since the last check, if any.
    pub fn take_errors(&self, context: &str) -> Result<()> {
        let first = self.errors.lock().ok().and_then(|mut v| {
            let first = v.first().cloned();
            v.clear();
            first
        });
        match first {
            Some(message) => Err(Error::Wgpu {
                context: context.to_string(),
                message,
            }),
            None => Ok(()),
        }
    }

    /// Prepares one launch of `spec`: the compiled kernel, its parameters, its tensors (in binding
    /// order after the uniform) and a grid for `workgroups` workgroups (folded past the
    /// per-dimension limit). Nothing is sent to the GPU until [`Gpu::execute`].
    pub fn dispatch<P: bytemuck::Pod>(
        &self,
        spec: &KernelSpec,
        params: &P,
        tensors: &[&Tensor],
        workgroups: u64,
    ) -> Result<Dispatch> {
        let grid = self.grid(&spec.name(), workgroups)?;
        self.dispatch_grid(spec, &[], params, tensors, grid)
    }

    /// Prepares one launch of `spec` with one invocation per item of `items`: as many
    /// workgroups as the entry point's declared workgroup size (reflected from its WGSL) needs,
    /// at least one.
    pub fn dispatch_over<P: bytemuck::Pod>(
        &self,
        spec: &KernelSpec,
        params: &P,
        tensors: &[&Tensor],
        items: usize,
    ) -> Result<Dispatch> {
        let [x, y, z] = self.kernel(spec, &[])?.workgroup_size;
        let per_group = u64::from(x * y * z).max(1);
        let workgroups = (items as u64).div_ceil(per_group).max(1);
        self.dispatch(spec, params, tensors, workgroups)
    }

    /// Like [`Gpu::dispatch`], with an explicit grid (checked against the adapter's limits) and
    /// override constants for the pipeline.
    pub fn dispatch_grid<P: bytemuck::Pod>(
        &self,
        spec: &KernelSpec,
        constants: &[(&str, f64)],
        params: &P,
        tensors: &[&Tensor],
        grid: [u32; 3],
    ) -> Result<Dispatch> {
        let max = self.limits.max_compute_workgroups_per_dimension;
        if let Some(&too_big) = grid.iter().find(|&&g| g > max) {
            return Err(Error::GridTooLarge {
                kernel: spec.name(),
                workgroups: u64::from(too_big),
                max,
            });
        }
        if std::mem::size_of::<P>() != spec.params {
            return Err(Error::Kernel {
                kernel: spec.name(),
                message: format!(
                    "its parameters are written from {} bytes, but the spec declares {}",
                    std::mem::size_of::<P>(),
                    spec.params
                ),
            });
        }
        let kernel = self.kernel(spec, constants)?;
        if tensors.len() + 1 != spec.bindings.len() {
            return Err(Error::Kernel {
                kernel: spec.name(),
                message: format!(
                    "needs {} tensors, {} were given",
                    spec.bindings.len() - 1,
                    tensors.len()
                ),
            });
        }
        Ok(Dispatch {
            grid,
            kernel,
            params: bytemuck::bytes_of(params).to_vec(),
            tensors: tensors.iter().map(|t| (*t).clone()).collect(),
        })
    }

    /// Creates the uniforms and bind groups of prepared launches once, so they can be recorded
    /// into any number of passes without creating anything more.
    pub fn bind_plan(&self, plan: &[Dispatch]) -> Result<BoundPlan> {
        let mut steps = Vec::with_capacity(plan.len());
        let mut uniforms = Vec::with_capacity(plan.len());
        for d in plan {
            let uniform = self.uniform_bytes(&d.params);
            let tensors: Vec<&Tensor> = d.tensors.iter().collect();
            steps.push((
                d.kernel.clone(),
                self.bind_group(&d.kernel, Some(&uniform), &tensors)?,
                d.grid,
            ));
            uniforms.push(uniform);
        }
        let tensors = plan
            .iter()
            .flat_map(|d| d.tensors.iter().cloned())
            .collect();
        Ok(BoundPlan {
            steps,
            _uniforms: uniforms,
            _tensors: tensors,
        })
    }

    /// Runs prepared launches in order, in one compute pass and one submission, and waits.
    /// For ops run one at a time (`op`, `check`, tests); compiled steps bind once and replay.
    pub fn execute(&self, plan: &[Dispatch]) -> Result<()> {
        let bound = self.bind_plan(plan)?;
        let mut encoder = self.encoder("execute");
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("execute"),
                timestamp_writes: None,
            });
            bound.record(&mut pass);
        }
        let index = self.submit(encoder)?;
        self.wait(index, "a kernel launch")
    }

    /// Runs one kernel now: [`Gpu::dispatch`] then [`Gpu::execute`].
    pub fn run<P: bytemuck::Pod>(
        &self,
        spec: &KernelSpec,
        params: &P,
        tensors: &[&Tensor],
        workgroups: u64,
    ) -> Result<()> {
        self.execute(&[self.dispatch(spec, params, tensors, workgroups)?])
    }
}

/// Launches with their bind groups created: recording them creates nothing.
pub struct BoundPlan {
    steps: Vec<(Arc<Kernel>, wgpu::BindGroup, [u32; 3])>,
    // Kept alive for as long as the bind groups that reference them.
    _uniforms: Vec<wgpu::Buffer>,
    _tensors: Vec<Tensor>,
}

impl BoundPlan {
    /// Records every launch into one compute pass and submits it: one submission.
    pub fn submit(&self, gpu: &Gpu, label: &str) -> Result<()> {
        let mut encoder = gpu.encoder(label);
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: None,
            });
            self.record(&mut pass);
        }
        gpu.submit(encoder)?;
        Ok(())
    }

    /// Records every launch, in order, into a compute pass.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        for (kernel, bind_group, grid) in &self.steps {
            pass.set_pipeline(&kernel.pipeline);
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
        }
    }

    /// Records launch `index` alone (for per-kernel profiling).
    pub fn record_one(&self, pass: &mut wgpu::ComputePass<'_>, index: usize) {
        if let Some((kernel, bind_group, grid)) = self.steps.get(index) {
            pass.set_pipeline(&kernel.pipeline);
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
        }
    }

    /// The kernel (`family::entry`) of each launch, in order.
    pub fn kernel_names(&self) -> Vec<String> {
        self.steps.iter().map(|(k, _, _)| k.spec.name()).collect()
    }

    /// Overwrites bytes of launch `index`'s uniform parameters at `offset` (a learning rate, a
    /// loss weight): a queue write, no new objects.
    pub fn write_uniform(&self, gpu: &Gpu, index: usize, offset: u64, bytes: &[u8]) {
        gpu.queue()
            .write_buffer(&self._uniforms[index], offset, bytes);
    }

    /// Number of launches.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether there are no launches.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// One prepared kernel launch.
#[derive(Clone)]
pub struct Dispatch {
    /// The compiled kernel.
    pub kernel: Arc<Kernel>,
    /// Bytes of its uniform parameters.
    pub params: Vec<u8>,
    /// Tensors bound after the uniform, in binding order.
    pub tensors: Vec<Tensor>,
    /// Workgroup grid.
    pub grid: [u32; 3],
}

#[cfg(test)]
mod tests {
    use super::fold_grid;

    #[test]
    fn grids_fold_into_two_dimensions() {
        assert_eq!(fold_grid(0, 65535), Some([0, 1, 1]));
        assert_eq!(fold_grid(65535, 65535), Some([65535, 1, 1]));
        let g = fold_grid(65536, 65535).unwrap();
        assert!(g[0] <= 65535 && g[1] == 2 && u64::from(g[0]) * u64::from(g[1]) >= 65536);
        let g = fold_grid(1_000_000_007, 65535).unwrap();
        assert!(g[0] <= 65535 && g[1] <= 65535);
        assert!(u64::from(g[0]) * u64::from(g[1]) >= 1_000_000_007);
        assert_eq!(fold_grid(65535u64 * 65535 + 1, 65535), None);
    }
}
