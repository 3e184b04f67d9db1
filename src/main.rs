//! The `embslim` command line: a thin layer over the library.

mod cli;

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
