//! The GPU runtime: adapter choice, device capabilities, tensors and the buffer pool,
//! upload/readback, the shader registry and pipeline cache, and timing.

pub mod caps;
pub mod context;
pub mod pipeline;
pub mod pool;
pub mod profiler;
pub mod replay;
pub mod select;
pub mod shaders;
pub mod tensor;
pub mod tuning;

pub use caps::{Capabilities, KernelStyle};
pub use context::{BoundPlan, Dispatch, Gpu};

pub use pipeline::{Binding, Kernel, KernelSpec};
pub use pool::RuntimeStats;
pub use profiler::{Measurement, TimingSource, measure};
pub use replay::Replay;
pub use select::AdapterQuery;
pub use tensor::{DType, Element, Tensor};
pub use tuning::{ChoiceSource, KernelChoices, Variant};
