//! Launchers: the Rust side of each kernel family. Each checks shapes, sizes the dispatch and
//! records or runs the kernel; its WGSL lives in `shaders/` and its CPU twin in `reference/`.

pub mod activation;
pub mod augment;
pub mod batchnorm;
pub mod contrast;
pub mod conv;
pub mod dropout;
pub mod elementwise;
pub mod feature;
pub mod gate;
pub mod int8;
pub mod losses;
pub mod matmul;
pub mod optimizer;
pub mod pool;
pub mod quantize;
pub mod reduce;
pub mod relation;
pub mod response;
pub mod softmax;

use crate::Result;
use crate::catalogue::{Case, Suite};
use crate::error::shape_error;
use crate::gpu::{Dispatch, Gpu, KernelSpec, KernelStyle, Tensor};

/// The range an attribute's value must lie in: `min < v` (or `min ≤ v` when `min_inclusive`)
/// and `v ≤ max`, always finite, and whole when it counts something (`whole`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    /// Lower bound.
    pub min: f64,
    /// Whether the lower bound itself is allowed.
    pub min_inclusive: bool,
    /// Upper bound (inclusive).
    pub max: f64,
    /// Whether only whole numbers are allowed (sizes, counts).
    pub whole: bool,
}

impl Range {
    /// Any finite number.
    pub const ANY: Range = Range {
        min: f64::MIN,
        min_inclusive: true,
        max: f64::MAX,
        whole: false,
    };

    /// `0 < v ≤ max`.
    pub const fn positive(max: f64) -> Range {
        Range {
            min: 0.0,
            min_inclusive: false,
            max,
            whole: false,
        }
    }

    /// `0 ≤ v ≤ max`.
    pub const fn non_negative(max: f64) -> Range {
        Range {
            min: 0.0,
            min_inclusive: true,
            max,
            whole: false,
        }
    }

    /// The same range, whole numbers only.
    pub const fn whole(self) -> Range {
        Range {
            whole: true,
            ..self
        }
    }

    /// Whether `v` lies in the range.
    pub fn contains(&self, v: f64) -> bool {
        v.is_finite()
            && (v > self.min || (self.min_inclusive && v == self.min))
            && v <= self.max
            && (!self.whole || v.fract() == 0.0)
    }

    /// What the range allows, for errors: `a number > 0 and ≤ 10000`.
    pub fn describe(&self) -> String {
        if *self == Range::ANY {
            return "a finite number".into();
        }
        let op = if self.min_inclusive { "≥" } else { ">" };
        let kind = if self.whole { "whole number" } else { "number" };
        format!("a {kind} {op} {} and ≤ {}", self.min, self.max)
    }
}

/// One attribute of an op or loss: its name (config key and `op --attr` key), default and
/// range, defined once beside the launcher that reads it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttrDef {
    /// Name.
    pub name: &'static str,
    /// Default value.
    pub default: f64,
    /// Allowed values.
    pub range: Range,
    /// What it does, for `op --list` and the docs.
    pub doc: &'static str,
}

/// Indices that the window kernels divide through f32 (`quot` in `shaders/common/index.wgsl`) stay
/// below this: map positions, padded rows and columns.
pub(crate) const QUOT_LIMIT: usize = 1 << 22;

/// Launches a per-element kernel over `n` elements: its vec4 variant `quads` (four elements per
/// lane), where it has one and `n` is a multiple of 4, else `one` (an element per lane). On CPU
/// drivers a lane's loads, each at its own address, are what such kernels wait on, so four
/// elements in one load cost about what one did.
pub(crate) fn dispatch_per_element<P: bytemuck::Pod>(
    gpu: &Gpu,
    one: &KernelSpec,
    quads: Option<&KernelSpec>,
    params: &P,
    tensors: &[&Tensor],
    n: usize,
) -> Result<Dispatch> {
    match quads {
        Some(spec) if n.is_multiple_of(4) => gpu.dispatch_over(spec, params, tensors, n / 4),
        _ => gpu.dispatch_over(one, params, tensors, n),
    }
}

/// Whether `op` launches its subgroup variant (`*_subgroup.wgsl`). `requested`: `Some(true)`
/// insists (an error saying why when it cannot run), `Some(false)` forbids, `None` takes it
/// wherever it can run with the register-blocked style. It can run on adapters with subgroups of
/// at least 8 lanes, when the launch itself has no `blocker` (an alignment or a grid limit).
pub(crate) fn use_subgroup_variant(
    gpu: &Gpu,
    op: &str,
    requested: Option<bool>,
    style: KernelStyle,
    blocker: Option<String>,
) -> Result<bool> {
    let caps = gpu.caps();
    let why_not = if caps.subgroup_matmul() {
        blocker
    } else {
        Some("it needs subgroups of at least 8 lanes, which this adapter does not offer".into())
    };
    match (requested, why_not) {
        (Some(true), Some(why)) => Err(shape_error(op, format!("no subgroup kernel: {why}"))),
        (Some(forced), _) => Ok(forced),
        (None, why_not) => Ok(style == KernelStyle::RegisterBlocked && why_not.is_none()),
    }
}

/// A kernel family: one WGSL file (and its `*_subgroup` variant), its launcher module, its
/// reference module and its catalogue cases, all under the same stem.
pub struct Family {
    /// The stem: `shaders/NAME.wgsl`, `kernels::NAME`, `reference::NAME`.
    pub name: &'static str,
    /// Every kernel its launchers use.
    pub kernels: &'static [KernelSpec],
    /// Its conformance and benchmark cases.
    pub cases: fn(&Gpu, Suite) -> Vec<Case>,
}

/// A family of distillation losses: its cases are its registry entries' cases.
macro_rules! loss_family {
    ($module:ident) => {
        Family {
            name: stringify!($module),
            kernels: $module::KERNELS,
            cases: |_, suite| losses::cases($module::LOSSES, suite),
        }
    };
}

/// Every kernel family, in the order `check` and `bench` list them.
pub const FAMILIES: &[Family] = &[
    Family {
        name: "elementwise",
        kernels: elementwise::KERNELS,
        cases: elementwise::cases,
    },
    Family {
        name: "reduce",
        kernels: reduce::KERNELS,
        cases: reduce::cases,
    },
    Family {
        name: "matmul",
        kernels: matmul::KERNELS,
        cases: matmul::cases,
    },
    Family {
        name: "activation",
        kernels: activation::KERNELS,
        cases: activation::cases,
    },
    Family {
        name: "softmax",
        kernels: softmax::KERNELS,
        cases: softmax::cases,
    },
    Family {
        name: "augment",
        kernels: augment::KERNELS,
        cases: augment::cases,
    },
    Family {
        name: "dropout",
        kernels: dropout::KERNELS,
        cases: dropout::cases,
    },
    Family {
        name: "conv",
        kernels: conv::KERNELS,
        cases: conv::cases,
    },
    Family {
        name: "pool",
        kernels: pool::KERNELS,
        cases: pool::cases,
    },
    Family {
        name: "quantize",
        kernels: quantize::KERNELS,
        cases: quantize::cases,
    },
    Family {
        name: "int8",
        kernels: int8::KERNELS,
        cases: int8::cases,
    },
    Family {
        name: "gate",
        kernels: gate::KERNELS,
        cases: gate::cases,
    },
    Family {
        name: "batchnorm",
        kernels: batchnorm::KERNELS,
        cases: batchnorm::cases,
    },
    Family {
        name: "optimizer",
        kernels: optimizer::KERNELS,
        cases: optimizer::cases,
    },
    loss_family!(response),
    loss_family!(feature),
    loss_family!(relation),
    Family {
        name: "contrast",
        kernels: contrast::KERNELS,
        cases: |_, suite| {
            let mut cases = losses::cases(contrast::LOSSES, suite);
            cases.extend(contrast::bank_cases(suite));
            cases
        },
    },
];

/// Every kernel the launchers use, for the portability and binding tests.
pub fn all_kernels() -> Vec<KernelSpec> {
    FAMILIES
        .iter()
        .flat_map(|f| f.kernels.iter().copied())
        .collect()
}
