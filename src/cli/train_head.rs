//! `embslim train-head`: fit a classification head on labelled text and store it in the bundle.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use embslim::export::{self, HeadOptions};

use super::embed::RunArgs;
use super::output;

#[derive(clap::Args)]
pub struct Args {
    pub bundle: PathBuf,
    /// One folder of .txt files per class, or a TSV/CSV file of label<TAB>text rows.
    #[arg(long, default_value = "models/bbc-news")]
    pub data: PathBuf,
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Inverse L2 regularization strength (scikit-learn's C); default: chosen by 5-fold
    /// cross-validation on the training split among 0.1, 1, 10, 100.
    #[arg(long)]
    pub c: Option<f64>,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[command(flatten)]
    pub run: RunArgs,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let data = embslim::corpus::load_labelled(&args.data).with_context(|| format!("reading labelled data {}", args.data.display()))?;
    if let Some(w) = (embslim::corpus::Corpus { docs: Vec::new(), lossy: data.lossy.clone() }).lossy_warning() {
        eprintln!("{w}");
    }
    let bundle = args.run.open(&args.bundle)?;
    let bar = super::progress_bar(data.texts.len() as u64, "embed");
    let opts = HeadOptions { test_fraction: args.test_fraction, seed: args.seed, c: args.c, batch: args.batch };
    let report = export::train_head(&bundle, &data, &opts, |n| bar.set_position(n as u64), |it, loss, g| {
        bar.set_prefix("fit");
        bar.set_message(format!("iteration {it} loss {loss:.4} |grad| {g:.2e}"));
    })
    .with_context(|| format!("training a head for {}", args.bundle.display()))?;
    bar.finish_and_clear();
    if args.json {
        output::json_line(&report)?;
    } else {
        println!(
            "accuracy   {:.4}\nmacro_f1   {:.4}\nn_train    {}\nn_test     {}\nC          {}{}\ndocs/s     {:.1} ({:.1} s embedding, {:.2} s fitting)",
            report.accuracy,
            report.macro_f1,
            report.n_train,
            report.n_test,
            report.c,
            report.cv_accuracy.map(|a| format!(" (cross-validated accuracy {a:.4})")).unwrap_or_default(),
            report.docs_per_second,
            report.embed_seconds,
            report.fit_seconds
        );
        println!("confusion (rows: true, columns: predicted)");
        let w = report.labels.iter().map(String::len).max().unwrap_or(0);
        println!("{:w$}  {}", "", report.labels.iter().map(|l| format!("{l:>w$}")).collect::<Vec<_>>().join(" "));
        for (l, row) in report.labels.iter().zip(&report.confusion) {
            println!("{l:>w$}  {}", row.iter().map(|c| format!("{c:>w$}")).collect::<Vec<_>>().join(" "));
        }
    }
    Ok(ExitCode::SUCCESS)
}
