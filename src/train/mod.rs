//! Training runs: the staged configuration ([`config`]) and the runner that executes it
//! ([`run`]), its curves ([`curves`]) and the teacher-output cache ([`teacher_cache`]).

pub mod config;
pub mod curves;
pub mod run;
pub mod teacher_cache;
