//! `embslim eval`: sentence-embedding cosine of a bundle against a reference over a corpus.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use super::embed::RunArgs;
use super::output;

#[derive(clap::Args)]
pub struct Args {
    /// Bundles to evaluate (the reference is embedded once for all of them).
    #[arg(required = true)]
    pub bundles: Vec<PathBuf>,
    /// Reference bundle (e.g. the lossless one).
    #[arg(long)]
    pub reference: PathBuf,
    /// Folder of .txt files (recursively) or a file with one document per line.
    #[arg(long, default_value = "models/bbc-news")]
    pub data: PathBuf,
    /// Use only the first N documents.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[command(flatten)]
    pub run: RunArgs,
    /// Also fit a head on each bundle's embeddings of the (labelled) data and report its
    /// held-out accuracy (the train-head split and C selection; nothing is stored).
    #[cfg(feature = "train")]
    #[arg(long)]
    pub accuracy: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct EvalReport {
    bundle: String,
    cos_mean: f64,
    cos_p5: f64,
    cos_min: f64,
    n: usize,
    truncated: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    macro_f1: Option<f64>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let corpus = embslim::corpus::load(&args.data).with_context(|| format!("reading {}", args.data.display()))?;
    #[cfg(feature = "train")]
    let labelled = if args.accuracy {
        anyhow::ensure!(args.limit.is_none(), "--accuracy uses every document: drop --limit");
        Some(embslim::corpus::load_labelled(&args.data).with_context(|| format!("reading labelled {}", args.data.display()))?)
    } else {
        None
    };
    if let Some(w) = corpus.lossy_warning() {
        eprintln!("{w}");
    }
    let n = args.limit.unwrap_or(corpus.docs.len()).min(corpus.docs.len());
    let texts: Vec<&str> = corpus.docs[..n].iter().map(|d| d.text.as_str()).collect();
    let bar = super::progress_bar(n as u64, "reference");
    let reference = args.run.open(&args.reference)?.embed_many(&texts, args.batch, |k| bar.set_position(k as u64))?;
    for path in &args.bundles {
        bar.set_prefix("embed");
        bar.set_position(0);
        let got = args.run.open(path)?.embed_many(&texts, args.batch, |k| bar.set_position(k as u64))?;
        let cos = embslim::pool::cosine_stats(got.iter().zip(&reference).map(|(x, y)| (&x.embedding[..], &y.embedding[..])));
        #[allow(unused_mut)]
        let (mut accuracy, mut macro_f1) = (None, None);
        #[cfg(feature = "train")]
        if let Some(data) = &labelled {
            // load_labelled reads the same files in the same sorted order as load
            anyhow::ensure!(data.texts.len() == got.len(), "{}: not every document is inside a class folder", args.data.display());
            let d = got.first().map(|e| e.embedding.len()).unwrap_or(0);
            let flat: Vec<f32> = got.iter().flat_map(|e| e.embedding.iter().copied()).collect();
            let opts = embslim::export::HeadOptions { test_fraction: 0.2, seed: 0, c: None, batch: args.batch };
            let f = embslim::export::fit_head(&flat, d, data, &opts, |_, _, _| {})?;
            accuracy = Some(f.accuracy);
            macro_f1 = Some(f.macro_f1);
        }
        let report = EvalReport {
            bundle: path.display().to_string(),
            cos_mean: cos.mean,
            cos_p5: cos.p5,
            cos_min: cos.min,
            n,
            truncated: got.iter().filter(|e| e.truncated).count(),
            accuracy,
            macro_f1,
        };
        bar.suspend(|| if args.json { output::json_line(&report) } else { output::key_value_table(&report) })?;
    }
    bar.finish_and_clear();
    Ok(ExitCode::SUCCESS)
}
