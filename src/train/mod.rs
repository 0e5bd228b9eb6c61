//! Training runs: the staged configuration ([`config`]) and the runner that executes it
//! ([`run`]), and its curves ([`curves`]).

pub mod config;
pub mod curves;
pub mod run;
