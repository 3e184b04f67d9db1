//! `embslim embed`: sentence embeddings, one line per input line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use embslim::{Bundle, Int4, OpenOptions};

use super::input::{self, Out};

#[derive(clap::Args)]
pub struct Args {
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Texts to embed; stdin lines when none.
    pub texts: Vec<String>,
    #[command(flatten)]
    pub run: RunArgs,
    /// One JSON object per input line.
    #[arg(long)]
    pub json: bool,
}

/// Options shared by the commands that run a bundle.
#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// Longest input in tokens, special tokens included (default: the manifest's).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Threads for the transformer's matrix products.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Keep an int4 body's weights packed (4-bit) in memory and run tract's block-quant
    /// kernels: a quarter of the heap, about 2.5 times the latency on x86 AVX2 (see README).
    #[arg(long)]
    pub packed: bool,
}

impl RunArgs {
    pub fn open(&self, bundle: &std::path::Path) -> anyhow::Result<Bundle> {
        let int4 = if self.packed { Int4::Packed } else { Int4::Expanded };
        let opts = OpenOptions { threads: self.threads, max_length: self.max_length, int4 };
        Bundle::open(bundle, &opts).with_context(|| format!("opening bundle {}", bundle.display()))
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bundle = args.run.open(&args.bundle)?;
    let mut out = Out::new();
    let mut failed = false;
    for line in input::lines(args.texts) {
        let line = line.context("reading stdin")?;
        let result = line.text.and_then(|t| bundle.embed_batch(&[&t]).map_err(|e| e.to_string()));
        match result {
            Ok(mut e) => {
                let e = e.remove(0);
                if e.truncated {
                    eprintln!("warning: line {}: input truncated to {} tokens", line.number, bundle.max_length());
                }
                if args.json {
                    out.line(&serde_json::json!({ "embedding": e.embedding }).to_string())?;
                } else {
                    let s: Vec<String> = e.embedding.iter().map(|v| format!("{v:.6}")).collect();
                    out.line(&s.join(" "))?;
                }
            }
            Err(msg) => {
                failed = true;
                if args.json {
                    out.line(&serde_json::json!({ "line": line.number, "error": msg }).to_string())?;
                } else {
                    eprintln!("line {}: {msg}", line.number);
                }
            }
        }
    }
    out.flush()?;
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
