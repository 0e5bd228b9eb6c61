//! Typed tensor handles: a view (offset, shape, dtype) into a pooled device buffer.
//! Reshape and flatten make new views of the same buffer; they never copy.

use std::sync::Arc;

use super::pool::PooledBuffer;
use crate::error::{Result, shape_error};

/// Element types the kernels read and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 32-bit unsigned integer.
    U32,
    /// 32-bit signed integer (labels, indices).
    I32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        4
    }

    /// Lower-case name, as in safetensors (`F32`) but lower-cased.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::U32 => "u32",
            DType::I32 => "i32",
        }
    }
}

/// Host element types with a matching [`DType`].
pub trait Element: bytemuck::Pod {
    /// The matching dtype.
    const DTYPE: DType;
}
impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for u32 {
    const DTYPE: DType = DType::U32;
}
impl Element for i32 {
    const DTYPE: DType = DType::I32;
}

/// Number of elements of a shape (1 for a scalar shape `[]`).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// A tensor on the device: a typed view into a pooled buffer.
#[derive(Clone)]
pub struct Tensor {
    buffer: Arc<PooledBuffer>,
    offset: u64,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({}{:?} @ {})",
            self.dtype.name(),
            self.shape,
            self.offset
        )
    }
}

impl Tensor {
    pub(crate) fn new(buffer: PooledBuffer, shape: Vec<usize>, dtype: DType) -> Self {
        Self {
            buffer: Arc::new(buffer),
            offset: 0,
            shape,
            dtype,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Bytes the view covers.
    pub fn byte_len(&self) -> u64 {
        self.numel() as u64 * self.dtype.size()
    }

    /// Byte offset of the view in its buffer.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The underlying device buffer (shared by every view of it).
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.raw()
    }

    /// The binding for a bind group: exactly this view's bytes (at least 4, as bindings cannot be
    /// empty).
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.buffer(),
            offset: self.offset,
            size: wgpu::BufferSize::new(self.byte_len().max(4)),
        })
    }

    /// The same bytes under another shape with as many elements. No copy.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(shape_error(
                "reshape",
                format!(
                    "cannot view {:?} ({} elements) as {:?}",
                    self.shape,
                    self.numel(),
                    shape
                ),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            ..self.clone()
        })
    }

    /// A 2-D view `[shape[0], rest]`. No copy.
    pub fn flatten(&self) -> Tensor {
        let rows = self.shape.first().copied().unwrap_or(1);
        let cols = self.numel().checked_div(rows).unwrap_or(0);
        Tensor {
            shape: vec![rows, cols],
            ..self.clone()
        }
    }

    /// An identity for the device buffer behind this view (equal for views of one buffer).
    pub fn buffer_id(&self) -> usize {
        Arc::as_ptr(&self.buffer) as usize
    }

    /// A `u32` view of `words` words of this tensor's buffer from byte `offset` (for whole-buffer
    /// snapshots that ignore the views' own shapes).
    pub(crate) fn raw_words(&self, offset: u64, words: usize) -> Tensor {
        Tensor {
            buffer: self.buffer.clone(),
            offset,
            shape: vec![words],
            dtype: DType::U32,
        }
    }

    /// Bytes this view needs from the start of its buffer.
    pub fn extent(&self) -> u64 {
        self.offset + self.byte_len()
    }

    /// The same view (offset, shape, dtype) over another tensor's buffer, which must be large
    /// enough (the memory planner moves tensors into shared buffers this way).
    pub fn rebased(&self, onto: &Tensor) -> Tensor {
        self.moved_to(onto, self.offset)
    }

    /// This view's shape and dtype at byte `offset` of another tensor's buffer, which must be
    /// large enough (gradients are gathered into their parameters' layout this way).
    pub fn moved_to(&self, onto: &Tensor, offset: u64) -> Tensor {
        debug_assert!(onto.buffer().size() >= offset + self.byte_len());
        Tensor {
            buffer: onto.buffer.clone(),
            offset,
            ..self.clone()
        }
    }

    /// A view of `shape`, of this tensor's dtype, at byte `offset` of its buffer (one model's
    /// parameters laid out end to end in one buffer). The offset must be a multiple of 4 and the
    /// buffer must hold the view.
    pub fn view_at(&self, offset: u64, shape: &[usize]) -> Result<Tensor> {
        let view = Tensor {
            buffer: self.buffer.clone(),
            offset,
            shape: shape.to_vec(),
            dtype: self.dtype,
        };
        if !offset.is_multiple_of(4) || view.extent() > self.buffer().size() {
            return Err(shape_error(
                "view",
                format!(
                    "{shape:?} at byte {offset} does not fit a buffer of {} bytes at a multiple of 4",
                    self.buffer().size()
                ),
            ));
        }
        Ok(view)
    }

    /// Whether two tensors view the same device buffer.
    pub fn shares_buffer_with(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.buffer, &other.buffer)
    }

    /// Checks the dtype and shape, naming `op` and `what` in the error.
    pub fn expect(&self, op: &str, what: &str, dtype: DType, shape: &[usize]) -> Result<()> {
        if self.dtype != dtype || self.shape != shape {
            return Err(shape_error(
                op,
                format!(
                    "{what} must be {}{:?}, got {}{:?}",
                    dtype.name(),
                    shape,
                    self.dtype.name(),
                    self.shape
                ),
            ));
        }
        Ok(())
    }
}
