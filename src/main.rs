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
            eprintln!("embslim: error: {}", message(&err));
            ExitCode::from(cli::exit_code(&err))
        }
    }
}

/// The error and its causes joined by ": ", as `{:#}` does, but without repeating a cause
/// that the message before it already ends with: the library's errors include their
/// source in their own text ("x.json: No such file or directory (os error 2)").
fn message(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
