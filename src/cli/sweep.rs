//! `embslim sweep`: the frontier of quality against bundle bytes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use embslim::export::sweep::{self, SweepOptions};
use embslim::format::Method;
use embslim::manifest::WeightScheme;

use super::output;

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face checkpoint directory or model.onnx.
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    model: PathBuf,
    /// Labelled text: one folder of .txt per class, or a label<TAB>text file.
    #[arg(long, default_value = "models/bbc-news")]
    data: PathBuf,
    /// Directory for the bundles, frontier.json and frontier.svg.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, value_delimiter = ',', default_value = "svd,direction,int8,int4,mixed")]
    methods: Vec<Method>,
    /// Ratios for svd, direction (parameters) and mixed (bytes).
    #[arg(long, value_delimiter = ',', default_value = "2,3,5,10")]
    ratios: Vec<f64>,
    /// Body schemes; every table is built with each.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32,int4")]
    weights: Vec<WeightScheme>,
    #[arg(long, default_value_t = 128)]
    max_length: usize,
    /// Use about N documents, every k-th of each class's sorted files (all classes kept).
    #[arg(long)]
    limit: Option<usize>,
    /// Corpus whose token counts order rows and allocate mixed bits (default: --data; give
    /// another part of the text for a held-out measurement).
    #[arg(long)]
    corpus: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Threads for the transformer's matrix products.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print every point as one JSON line instead of the front as a table.
    #[arg(long)]
    json: bool,
    /// Only redraw DIR/frontier.svg from DIR/frontier.json (no compression).
    #[arg(long)]
    replot: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.replot {
        let path = args.out.join("frontier.json");
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let points: Vec<sweep::Point> = serde_json::from_slice(&bytes).with_context(|| format!("{}: not a frontier", path.display()))?;
        let title = format!("{}: sentence cosine vs bundle size", args.model.display());
        embslim::fsutil::write_atomic(&args.out.join("frontier.svg"), sweep::svg(&points, &title).as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut data = embslim::corpus::load_labelled(&args.data).with_context(|| format!("reading {}", args.data.display()))?;
    if let Some(n) = args.limit {
        anyhow::ensure!(n > 0, "--limit must be at least 1");
        let step = data.texts.len().div_ceil(n).max(1);
        fn every<T>(v: Vec<T>, step: usize) -> Vec<T> {
            v.into_iter().step_by(step).collect()
        }
        data.texts = every(data.texts, step);
        data.origins = every(data.origins, step);
        data.classes = every(data.classes, step);
    }
    let opts = SweepOptions {
        methods: args.methods,
        ratios: args.ratios,
        weights: args.weights,
        max_length: args.max_length,
        corpus: Some(args.corpus.unwrap_or_else(|| args.data.clone())),
        threads: args.threads,
        batch: args.batch,
    };
    let total = sweep::grid(&opts).len() as u64;
    let bar = super::progress_bar(total, "sweep");
    let mut on_progress = |done: usize, _: usize, what: &str| {
        bar.set_position(done as u64);
        bar.set_message(what.to_string());
    };
    let points = sweep::run(&args.model, &data, &args.out, &opts, &mut on_progress).with_context(|| format!("sweeping {}", args.model.display()))?;
    bar.finish_and_clear();

    let json = serde_json::to_vec_pretty(&points)?;
    embslim::fsutil::write_atomic(&args.out.join("frontier.json"), &json)?;
    let title = format!("{}: sentence cosine vs bundle size ({} documents)", args.model.display(), data.texts.len());
    embslim::fsutil::write_atomic(&args.out.join("frontier.svg"), sweep::svg(&points, &title).as_bytes())?;
    if args.json {
        for p in &points {
            output::json_line(p)?;
        }
    } else {
        println!("{:<28} {:>10} {:>8} {:>12} {:>9} {:>8} {:>8} {:>9} {:>9} {:>7}", "bundle", "table MB", "ratio", "bundle MB", "cos mean", "cos p5", "acc %", "acc 0-shot", "ms", "pareto");
        for p in &points {
            println!(
                "{:<28} {:>10.2} {:>8.2} {:>12.2} {:>9.4} {:>8.4} {:>8.2} {:>9.2} {:>9.1} {:>7}",
                p.name,
                p.table_bytes as f64 / 1e6,
                p.table_ratio,
                p.bundle_bytes as f64 / 1e6,
                p.cos_mean,
                p.cos_p5,
                100.0 * p.accuracy,
                100.0 * p.accuracy_zero_shot,
                p.latency_ms,
                if p.pareto { "*" } else { "" }
            );
        }
        println!("wrote {} and {}", args.out.join("frontier.json").display(), args.out.join("frontier.svg").display());
    }
    Ok(ExitCode::SUCCESS)
}
