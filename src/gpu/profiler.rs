//! Timing GPU work: pass-level timestamp queries where the adapter has `TIMESTAMP_QUERY`, the wall
//! clock around submit-and-wait otherwise. One small API for the benches and `wgdistill bench`.

use std::sync::mpsc;
use std::time::Instant;

use serde::Serialize;

use super::context::Gpu;
use crate::error::{Error, Result, one_line};

/// Where a figure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimingSource {
    /// GPU timestamps written at the start and end of the pass.
    TimestampQuery,
    /// Host time around submit and wait (includes submission overhead).
    WallClock,
}

/// The time one iteration of some recorded work took.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Measurement {
    /// Seconds per iteration.
    pub seconds: f64,
    /// How it was measured.
    pub source: TimingSource,
}

/// Times `iterations` repetitions of the dispatches `record` puts in one compute pass, after one
/// untimed warm-up submission (GL compiles pipelines at first use). The pass is submitted once.
pub fn measure(
    gpu: &Gpu,
    iterations: u32,
    mut record: impl FnMut(&mut wgpu::ComputePass<'_>),
) -> Result<Measurement> {
    let iterations = iterations.max(1);
    let run = |record: &mut dyn FnMut(&mut wgpu::ComputePass<'_>),
               reps: u32,
               writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
               extra: &dyn Fn(&mut wgpu::CommandEncoder)|
     -> Result<f64> {
        let mut encoder = gpu.encoder("measure");
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("measure"),
                timestamp_writes: writes,
            });
            for _ in 0..reps {
                record(&mut pass);
            }
        }
        extra(&mut encoder);
        let start = Instant::now();
        let index = gpu.submit(encoder)?;
        gpu.wait(index, "a timed pass")?;
        Ok(start.elapsed().as_secs_f64())
    };
    run(&mut record, 1, None, &|_| {})?;

    if !gpu.caps().timestamp_query {
        let seconds = run(&mut record, iterations, None, &|_| {})?;
        return Ok(Measurement {
            seconds: seconds / f64::from(iterations),
            source: TimingSource::WallClock,
        });
    }
    let device = gpu.device();
    let queries = device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("measure"),
        ty: wgpu::QueryType::Timestamp,
        count: 2,
    });
    let resolve = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("timestamps"),
        size: 16,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let readback = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("timestamps readback"),
        size: 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let writes = wgpu::ComputePassTimestampWrites {
        query_set: &queries,
        beginning_of_pass_write_index: Some(0),
        end_of_pass_write_index: Some(1),
    };
    run(&mut record, iterations, Some(writes), &|encoder| {
        encoder.resolve_query_set(&queries, 0..2, &resolve, 0);
        encoder.copy_buffer_to_buffer(&resolve, 0, &readback, 0, 16);
    })?;
    let slice = readback.slice(..);
    let (tx, rx) = mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    let index = gpu.submit(gpu.encoder("map timestamps"))?;
    gpu.wait(index, "timestamp readback")?;
    let wgpu_err = |e: String| Error::Wgpu {
        context: "reading timestamps".to_string(),
        message: one_line(&e),
    };
    rx.recv()
        .map_err(|e| wgpu_err(e.to_string()))?
        .map_err(|e| wgpu_err(e.to_string()))?;
    let ticks: [u64; 2] = {
        let view = slice
            .get_mapped_range()
            .map_err(|e| wgpu_err(e.to_string()))?;
        let words: &[u64] = bytemuck::cast_slice(&view);
        [words[0], words[1]]
    };
    readback.unmap();
    let period_ns = f64::from(gpu.queue().get_timestamp_period());
    let seconds = ticks[1].saturating_sub(ticks[0]) as f64 * period_ns * 1e-9;
    Ok(Measurement {
        seconds: seconds / f64::from(iterations),
        source: TimingSource::TimestampQuery,
    })
}
