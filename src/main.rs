//! The `wgdistill` command line: thin wrappers that parse, call the library and print.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::prepare_process();
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, never a backtrace (RUST_BACKTRACE may be set).
            eprintln!("wgdistill: error: {e}");
            ExitCode::FAILURE
        }
    }
}
