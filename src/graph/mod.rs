//! The graph executor: models as graphs of kernel-library ops ([`ir`]), their weights by PyTorch
//! name ([`weights`]), forward and reverse-mode backward planning ([`exec`]), buffer reuse by
//! liveness ([`memory`]), launches run only when their values are read ([`deferred`]), and
//! compiled steps that replay a whole training step with one submission ([`step`]), synthesise
//! a teacher's inputs ([`inversion`]) or train a generator against a student without data
//! ([`dfad`]) or a discriminator beside it ([`discriminator`]), their optimizer updates in one
//! place ([`update`]); layers factorised to low rank ([`low_rank`]) and fake quantisers for
//! quantisation-aware training ([`qat`]); and an f64 interpreter of the same graphs
//! ([`interp`]), the reference the executor's gradients are checked against.

pub mod deferred;
pub mod dfad;
pub mod discriminator;
pub mod exec;
pub mod int8;
pub mod interp;
pub mod inversion;
pub mod ir;
pub mod low_rank;
pub mod memory;
pub mod qat;
pub mod step;
pub mod update;
pub mod weights;

pub use dfad::{Dfad, DfadSpec};
pub use discriminator::DiscriminatorSpec;
pub use exec::Mode;
pub use inversion::{Inversion, InversionLosses, InversionSpec};
pub use ir::{CLASS_OFF, ConvLayer, Graph, Init, Op, Value};
pub use memory::{MemoryReport, plan_memory};
pub use step::{
    Adapter, EvalStep, LossSpec, OptimizerSpec, PEER, Paraphraser, StepSpec, TEACHER_INPUT,
    TrainStep, adapter_graph, paraphraser_graph,
};
pub use weights::Weights;
