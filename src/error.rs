//! The crate's one error type: every failure the user can cause (and every GPU failure) is a
//! value with a one-line message; the CLI prints it and exits non-zero.

use std::time::Duration;

/// Every error wgdistill returns: from the GPU runtime, the kernels, the graph executor,
/// configurations, data and files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A backend name that is not one of ours.
    #[error(
        "unknown backend '{0}': expected one of vulkan, metal, dx12, gl (or a comma-separated list)"
    )]
    UnknownBackend(String),
    /// No adapter matched the request.
    #[error("no GPU adapter found (tried {tried}); {hint}")]
    NoAdapter {
        /// What was looked for: backends and adapter name.
        tried: String,
        /// What the user can do about it.
        hint: String,
    },
    /// The adapter refused to open a device.
    #[error("could not open a device on adapter '{adapter}': {reason}")]
    RequestDevice {
        /// The adapter's name.
        adapter: String,
        /// wgpu's reason, on one line.
        reason: String,
    },
    /// A buffer larger than the adapter allows.
    #[error(
        "{what} needs {requested} bytes, but this adapter allows at most {limit} ({limit_name})"
    )]
    TooLarge {
        /// What was being allocated or bound.
        what: String,
        /// Bytes asked for.
        requested: u64,
        /// The adapter's limit.
        limit: u64,
        /// The name of the wgpu limit.
        limit_name: &'static str,
    },
    /// A dispatch grid that cannot be expressed even after folding into two dimensions.
    #[error("{kernel}: {workgroups} workgroups exceed this adapter's grid ({max} per dimension)")]
    GridTooLarge {
        /// The kernel being dispatched.
        kernel: String,
        /// Workgroups needed.
        workgroups: u64,
        /// `max_compute_workgroups_per_dimension`.
        max: u32,
    },
    /// A launch whose invocations would loop longer than the driver lets them.
    #[error(
        "{kernel}: one invocation would run {iterations} loop iterations, but {adapter} stops an invocation's loops after {limit} (Mesa's llvmpipe loop limit) and the result would be wrong; use smaller shapes here or another adapter"
    )]
    LoopLimit {
        /// `family::entry`.
        kernel: String,
        /// Loop iterations one invocation needs, all loops together.
        iterations: u64,
        /// The adapter's limit.
        limit: u64,
        /// The adapter's name.
        adapter: String,
    },
    /// Tensor shapes or dtypes that do not fit a kernel.
    #[error("{op}: {detail}")]
    Shape {
        /// The op or kernel that checked.
        op: String,
        /// What was expected and what came.
        detail: String,
    },
    /// A WGSL file that naga rejects, located by file, line and column.
    #[error("{path}:{line}:{column}: {message}")]
    Shader {
        /// The shader's path, as in the source tree (`shaders/NAME.wgsl`).
        path: String,
        /// 1-based line.
        line: u32,
        /// 1-based column.
        column: u32,
        /// naga's message.
        message: String,
    },
    /// A kernel whose Rust-side description disagrees with its WGSL.
    #[error("kernel {kernel}: {message}")]
    Kernel {
        /// `family::entry`.
        kernel: String,
        /// What disagrees.
        message: String,
    },
    /// The GPU did not finish within the allowed time.
    #[error("the GPU did not finish {what} within {timeout:?}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// Bad user input outside the GPU: a tensor file, an attribute, label values.
    #[error("{what}: {message}")]
    Input {
        /// Which file, field or argument.
        what: String,
        /// What was expected and what came.
        message: String,
    },
    /// wgpu reported a validation, memory or internal error.
    #[error("wgpu error during {context}: {message}")]
    Wgpu {
        /// What the engine was doing.
        context: String,
        /// wgpu's message, on one line.
        message: String,
    },
}

/// Shorthand for results in wgdistill.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Folds a multi-line message from wgpu or naga into one line.
pub(crate) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A [`Error::Input`] naming a file, field or argument.
pub(crate) fn input_error(what: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Input {
        what: what.into(),
        message: message.into(),
    }
}

/// A [`Error::Shape`] from an op name and a message.
pub(crate) fn shape_error(op: &str, detail: impl Into<String>) -> Error {
    Error::Shape {
        op: op.to_string(),
        detail: detail.into(),
    }
}
