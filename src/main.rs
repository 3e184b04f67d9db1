//! The `embslim` command line: a thin layer over the library.

mod cli;

/// Counts heap bytes for `embslim footprint` (a relaxed atomic add per allocation).
#[global_allocator]
static ALLOC: embslim::footprint::CountingAlloc = embslim::footprint::CountingAlloc;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("embslim: error: {err:#}");
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
