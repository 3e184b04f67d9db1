//! `embslim compress`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use embslim::export::{self, BundleOptions};
use embslim::format::{CodesDtype, Method};
use embslim::manifest::WeightScheme;
use embslim::train::{CompressOptions, Progress};
use indicatif::{ProgressBar, ProgressStyle};

use super::output;

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face checkpoint directory (config.json + model.safetensors) or model.onnx.
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    model: PathBuf,
    /// Output bundle directory.
    #[arg(long)]
    out: PathBuf,
    /// How the token table is stored. The default (mixed bits at 10x, with an int4 body)
    /// was chosen by measurement: see the README's results.
    #[arg(long, value_enum, default_value_t = Method::Mixed)]
    method: Method,
    /// Compression ratio: by parameters for svd and direction (rank = floor((V d / R - d) /
    /// (V + d))); by table bytes for mixed (default 10).
    #[arg(long, conflicts_with = "rank")]
    ratio: Option<f64>,
    /// Rank k (svd, direction).
    #[arg(long)]
    rank: Option<usize>,
    /// Storage of the codes of a factorization.
    #[arg(long, value_enum, default_value_t = CodesDtype::F32)]
    codes: CodesDtype,
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Initialise the autoencoder from the SVD solution.
    #[arg(long, value_parser = ["svd"])]
    init: Option<String>,
    /// Corpus whose token counts weight the token cosine (folder of .txt or one doc per line).
    #[arg(long, default_value = "models/bbc-news")]
    corpus: PathBuf,
    /// tokenizer.json for the corpus (default: the one beside the model).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Storage of the body's MatMul weights (default: int4 for a checkpoint; an ONNX
    /// model keeps its own f32 weights).
    #[arg(long, value_enum)]
    weights: Option<WeightScheme>,
    /// Longest input in tokens (default: the model's sentence-transformers setting, else 128).
    #[arg(long)]
    max_length: Option<usize>,
    /// Corpus documents run through the f32 body to calibrate GPTQ for `--weights int4`
    /// (0: plain rounding to each block's fitted range).
    #[arg(long, default_value_t = embslim::export::calibrate::CALIBRATION_DOCS)]
    calibration_docs: usize,
    /// Write only factors.safetensors (no body, no tokenizer): trainer experiments, and
    /// tables too large to deploy.
    #[arg(long)]
    table_only: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = CompressOptions {
        method: args.method,
        rank: args.rank,
        ratio: args.ratio,
        codes: args.codes,
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        seed: args.seed,
        init_svd: args.init.is_some(),
    };
    let corpus = if args.corpus.exists() {
        Some(args.corpus.clone())
    } else {
        eprintln!("warning: no corpus at {}: token_cos_weighted is n/a", args.corpus.display());
        if args.method == Method::Mixed {
            eprintln!("warning: without token counts, mixed gives every token the same weight (bits go to the rows that are hardest to quantize)");
        }
        None
    };
    let opts = BundleOptions {
        table: opts,
        weights: args.weights,
        max_length: args.max_length,
        corpus,
        tokenizer: args.tokenizer.clone(),
        calibration_docs: args.calibration_docs,
    };

    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {msg}").expect("static template").progress_chars("=> "));
    let on_progress = |p: Progress<'_>| match p {
        Progress::Rows { done, total, what } => {
            bar.set_prefix(what);
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
        Progress::Epoch(s, total) => {
            bar.set_prefix("epoch");
            bar.set_length(total as u64);
            bar.set_position(s.epoch as u64 + 1);
            bar.set_message(format!("loss {:.5} cos {:.4} lr {:.2e} alpha {:.2}", s.loss, s.cos_mean, s.lr, s.alpha));
        }
    };
    let warn = |w: String| bar.suspend(|| eprintln!("{w}"));
    let report = if args.table_only {
        export::compress_table_only(&args.model, &args.out, &opts, on_progress, warn)
    } else {
        export::compress_bundle(&args.model, &args.out, &opts, on_progress, warn)
    }
        .with_context(|| format!("compressing {}", args.model.display()))?;
    bar.finish_and_clear();
    if args.json {
        output::json_line(&report)?;
    } else {
        output::key_value_table(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}
