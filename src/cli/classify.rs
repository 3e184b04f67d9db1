//! `embslim classify`: the label of each input line, streaming, in order.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::embed::RunArgs;
use super::input::{self, Out};

#[derive(clap::Args)]
pub struct Args {
    /// Bundle directory (with a head from `train-head`).
    pub bundle: PathBuf,
    /// Texts to classify; stdin lines when none.
    pub texts: Vec<String>,
    /// Show the K most probable labels.
    #[arg(long, default_value_t = 1)]
    pub top: usize,
    #[command(flatten)]
    pub run: RunArgs,
    /// One JSON object per input line: {"label", "score", "scores"}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bundle = args.run.open(&args.bundle)?;
    let labels = bundle
        .head()
        .map(|h| h.labels.clone())
        .ok_or_else(|| embslim::Error::bundle(&args.bundle, "has no classification head; train one with `embslim train-head <bundle> --data <dir>`"))?;
    let mut out = Out::new();
    let mut failed = false;
    for line in input::lines(args.texts) {
        let line = line.context("reading stdin")?;
        match line.text.and_then(|t| bundle.classify_batch(&[&t]).map_err(|e| e.to_string())) {
            Ok(mut r) => {
                let (e, p) = r.remove(0);
                if e.truncated {
                    eprintln!("warning: line {}: input truncated to {} tokens", line.number, bundle.max_length());
                }
                let mut ranked: Vec<usize> = (0..p.len()).collect();
                ranked.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
                if args.json {
                    let scores: serde_json::Map<String, serde_json::Value> = ranked.iter().map(|&i| (labels[i].clone(), serde_json::json!(p[i]))).collect();
                    let mut obj = serde_json::json!({ "label": labels[ranked[0]], "score": p[ranked[0]], "scores": scores });
                    if args.top > 1 {
                        obj["top"] = ranked.iter().take(args.top).map(|&i| serde_json::json!({"label": labels[i], "score": p[i]})).collect();
                    }
                    out.line(&obj.to_string())?;
                } else {
                    let shown: Vec<String> = ranked.iter().take(args.top.max(1)).map(|&i| format!("{}\t{:.4}", labels[i], p[i])).collect();
                    out.line(&shown.join("\t"))?;
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
