//! Training runs: the staged configuration ([`config`]) and the runner that executes it
//! ([`run`]).

pub mod config;
pub mod run;
