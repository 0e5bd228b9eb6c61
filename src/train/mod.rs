//! Training runs: the staged configuration ([`config`]) and the runner that executes it
//! ([`run`]), its curves ([`curves`]), the teacher-output cache ([`teacher_cache`]) and the
//! results table ([`report`]).

pub mod config;
pub mod curves;
pub mod method;
pub mod report;
pub mod run;
pub mod teacher_cache;
