//! Argument parsing, progress display and output formatting. No logic of its own: every
//! command calls the library and prints what it returns.

mod classify;
#[cfg(feature = "train")]
mod compress;
mod embed;
mod eval;
mod footprint;
mod input;
mod output;
#[cfg(feature = "train")]
mod sweep;
#[cfg(feature = "train")]
mod train_head;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

/// Exit codes: 0 success, 1 some input lines failed, 2 usage or bad input file, 3 I/O error.
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_IO: u8 = 3;

#[derive(Parser)]
#[command(name = "embslim", version, about = "BERT-like text encoders with a compressed, memory-mapped embedding table")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compress a model into a deployable bundle (host only).
    #[cfg(feature = "train")]
    Compress(compress::Args),
    /// Print sentence embeddings of TEXT arguments or stdin lines.
    Embed(embed::Args),
    /// Sentence-embedding cosine of a bundle against a reference bundle over a corpus.
    Eval(eval::Args),
    /// Train a classification head on labelled text and store it in the bundle (host only).
    #[cfg(feature = "train")]
    TrainHead(train_head::Args),
    /// Classify TEXT arguments or stdin lines with the bundle's head.
    Classify(classify::Args),
    /// Measure what a bundle costs here: bytes, load time, heap, resident pages, latency.
    Footprint(footprint::Args),
    /// Compress over a grid of methods, ratios and body schemes; write the quality/size
    /// frontier (frontier.json, frontier.svg) (host only).
    #[cfg(feature = "train")]
    Sweep(sweep::Args),
}

pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let res = match cli.command {
        #[cfg(feature = "train")]
        Command::Compress(args) => compress::run(args),
        Command::Embed(args) => embed::run(args),
        Command::Eval(args) => eval::run(args),
        #[cfg(feature = "train")]
        Command::TrainHead(args) => train_head::run(args),
        Command::Classify(args) => classify::run(args),
        Command::Footprint(args) => footprint::run(args),
        #[cfg(feature = "train")]
        Command::Sweep(args) => sweep::run(args),
    };
    match res {
        // the reader of our output went away: nothing is wrong
        Err(e) if e.is::<input::BrokenPipe>() => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

/// Map an error to an exit code: library errors about input files and usage are 2,
/// I/O failures 3.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<embslim::Error>() {
        Some(embslim::Error::Io { .. }) => EXIT_IO,
        _ => EXIT_USAGE,
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(len: u64, prefix: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {per_sec} {msg}").expect("static template").progress_chars("=> "));
    bar.set_prefix(prefix);
    bar
}
