//! Training runs: the staged configuration ([`config`]) and each stage's method ([`method`]),
//! the runner that executes it ([`run`]: [`stage`] plans a stage, [`epoch`] trains one epoch),
//! the modules trained before a stage ([`pretrain`]), the data-free stage kinds ([`data_free`]), lifelong stages ([`lifelong`]), architecture search ([`search`]), a stage's discriminator ([`adversarial`]), pruning ([`prune`]), the run folder ([`checkpoint`]), `summary.json` ([`summary`]), several seeds ([`seeds`]),
//! the curves ([`curves`]), the teacher-output cache ([`teacher_cache`]) and the results table
//! ([`report`]).

pub mod adversarial;
pub mod checkpoint;
pub mod config;
pub mod curves;
pub mod data_free;
pub mod epoch;
pub mod lifelong;
pub mod method;
pub mod pretrain;
pub mod prune;
pub mod report;
pub mod run;
pub mod search;
pub mod seeds;
pub mod stage;
pub mod summary;
pub mod teacher_cache;
