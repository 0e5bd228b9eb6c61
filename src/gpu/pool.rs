//! A size-bucketed buffer pool. Buffers return to their bucket when the last tensor view of them
//! is dropped, so repeated shapes stop allocating after the first use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// The size a request is rounded up to: powers of two up to 4 KiB, then eight classes per
/// doubling, so no more than 12.5% of a large buffer is slack.
pub fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(256);
    let pow2 = bytes.next_power_of_two();
    if pow2 <= 4096 {
        return pow2;
    }
    let step = pow2 / 16;
    bytes.div_ceil(step) * step
}

type Bucket = (u64, u32);

/// Counts of device objects the runtime created, for tests that prove a compiled step allocates
/// nothing (and for curiosity).
#[derive(Debug, Default)]
pub struct Counters {
    /// `wgpu::Buffer`s created (pool misses included, hits not).
    pub buffers: AtomicU64,
    /// Bind groups created.
    pub bind_groups: AtomicU64,
    /// Compute pipelines created.
    pub pipelines: AtomicU64,
    /// Queue submissions.
    pub submissions: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// `wgpu::Buffer`s created.
    pub buffers: u64,
    /// Bind groups created.
    pub bind_groups: u64,
    /// Compute pipelines created.
    pub pipelines: u64,
    /// Queue submissions.
    pub submissions: u64,
}

impl Counters {
    /// Reads every counter.
    pub fn snapshot(&self) -> RuntimeStats {
        RuntimeStats {
            buffers: self.buffers.load(Ordering::Relaxed),
            bind_groups: self.bind_groups.load(Ordering::Relaxed),
            pipelines: self.pipelines.load(Ordering::Relaxed),
            submissions: self.submissions.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The free lists, shared by the pool and the buffers it lent.
#[derive(Default)]
struct FreeLists {
    buckets: Mutex<HashMap<Bucket, Vec<wgpu::Buffer>>>,
}

/// Lends device buffers by size class and usage.
pub struct BufferPool {
    free: Arc<FreeLists>,
    counters: Arc<Counters>,
}

/// A buffer lent by the pool; it goes back to its bucket when dropped.
pub struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    home: Weak<FreeLists>,
}

impl PooledBuffer {
    /// The underlying buffer.
    pub fn raw(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("present until drop")
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let (Some(buffer), Some(home)) = (self.buffer.take(), self.home.upgrade()) else {
            return;
        };
        let key = (buffer.size(), buffer.usage().bits());
        if let Ok(mut buckets) = home.buckets.lock() {
            buckets.entry(key).or_default().push(buffer);
        }
    }
}

impl BufferPool {
    /// An empty pool counting its creations into `counters`.
    pub fn new(counters: Arc<Counters>) -> Self {
        Self {
            free: Arc::default(),
            counters,
        }
    }

    /// A buffer of at least `bytes` bytes with `usage`, reused if one is free. The caller has
    /// already checked `bytes` against the adapter's limits; `max_buffer_size` caps the rounding.
    pub fn acquire(
        &self,
        device: &wgpu::Device,
        bytes: u64,
        usage: wgpu::BufferUsages,
        max_buffer_size: u64,
    ) -> PooledBuffer {
        let size = size_class(bytes)
            .min(max_buffer_size.max(bytes))
            .next_multiple_of(4);
        let key = (size, usage.bits());
        let reused = self
            .free
            .buckets
            .lock()
            .ok()
            .and_then(|mut b| b.get_mut(&key).and_then(Vec::pop));
        let buffer = reused.unwrap_or_else(|| {
            Counters::bump(&self.counters.buffers);
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgdistill pooled buffer"),
                size,
                usage,
                mapped_at_creation: false,
            })
        });
        PooledBuffer {
            buffer: Some(buffer),
            home: Arc::downgrade(&self.free),
        }
    }

    /// Bytes held in free lists (not lent out).
    pub fn idle_bytes(&self) -> u64 {
        self.free
            .buckets
            .lock()
            .map_or(0, |b| b.values().flatten().map(wgpu::Buffer::size).sum())
    }

    /// Releases every idle buffer back to the driver.
    pub fn trim(&self) {
        if let Ok(mut b) = self.free.buckets.lock() {
            b.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_round_up_with_bounded_slack() {
        assert_eq!(size_class(1), 256);
        assert_eq!(size_class(257), 512);
        assert_eq!(size_class(4096), 4096);
        for bytes in [4097u64, 10_000, 1 << 20, (1 << 20) + 1, 100_000_000] {
            let class = size_class(bytes);
            assert!(class >= bytes, "{bytes} -> {class}");
            assert!(
                (class - bytes) as f64 <= bytes as f64 / 8.0,
                "{bytes} -> {class}"
            );
        }
    }
}
