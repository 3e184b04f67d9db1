//! Host-only: turn a model into a deployable bundle directory: the body as ONNX, the
//! compressed table, the tokenizer and the manifest that ties them together.

pub mod bert;
pub mod calibrate;
pub mod graph;
pub mod rewrite;
pub mod sweep;
pub mod weights;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;
use serde::Serialize;

use crate::bundle::{BODY_DATA_FILE, BODY_FILE, BUNDLE_FILES, FACTORS_FILE, TOKENIZER_FILE};
use crate::corpus;
use crate::error::{Error, Result};
use crate::format::{self, Factors};
use crate::fsutil::{check_writable, publish_dir, sha256_bytes, stage_dir, write_synced};
use crate::manifest::{FileEntry, Manifest, WeightScheme, BUNDLE_FORMAT, BUNDLE_VERSION, MANIFEST_FILE};
use crate::tokenize::Tokenizer;
use crate::train::{self, source::SourceTable, CompressOptions, Progress};

/// Everything `compress` needs besides the model and the output directory.
#[derive(Clone, Debug)]
pub struct BundleOptions {
    pub table: CompressOptions,
    /// Body weight scheme; None: [`DEFAULT_WEIGHTS`] for a checkpoint, f32 for an ONNX model.
    pub weights: Option<WeightScheme>,
    /// Longest input in tokens; default: sentence_bert_config.json's max_seq_length, else 128.
    pub max_length: Option<usize>,
    /// Corpus whose token counts weight the token cosine.
    pub corpus: Option<PathBuf>,
    /// tokenizer.json; default: the one beside the model.
    pub tokenizer: Option<PathBuf>,
    /// Corpus documents the f32 body runs on to calibrate GPTQ for an int4 body (0: plain
    /// rounding to each block's fitted range; no corpus: the same, with a warning).
    pub calibration_docs: usize,
}

/// The body weights of the default bundle, chosen by measurement (README, "Quantized
/// body"): 4-bit blocks with zero points, quantized by GPTQ, make the whole
/// all-MiniLM-L6-v2 bundle 11.9 MB at a held-out sentence cosine of 0.991 against the f32
/// body; `--weights int8` keeps 0.9995 at 16.4 MB.
pub const DEFAULT_WEIGHTS: WeightScheme = WeightScheme::Int4;

/// What `compress` reports (the `--json` interface).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub model: String,
    pub method: String,
    pub rank: Option<usize>,
    pub codes: Option<String>,
    /// Body weight scheme; null for `--table-only`.
    pub weights: Option<String>,
    pub vocab: usize,
    pub dim: usize,
    pub ratio_params: f64,
    pub ratio_bytes: f64,
    #[serde(flatten)]
    pub metrics: train::TokenMetrics,
    pub train_seconds: f64,
    pub best_epoch: Option<usize>,
    /// Bytes of the factor file.
    pub bytes: u64,
    pub body_bytes: Option<u64>,
    /// Sum of all files of the bundle.
    pub bundle_bytes: Option<u64>,
    pub out: PathBuf,
}

/// The directory holding the model's side files (config.json, tokenizer.json).
fn model_dir(model: &Path) -> PathBuf {
    if model.is_dir() {
        model.to_path_buf()
    } else {
        model.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

/// Compress `model` into the bundle directory `out`, replacing any bundle there at once.
pub fn compress_bundle(
    model: &Path,
    out: &Path,
    opts: &BundleOptions,
    mut progress: impl FnMut(Progress<'_>),
    mut warn: impl FnMut(String),
) -> Result<Report> {
    // refuse an output that cannot be written or must not be replaced before any work
    check_replaceable(out)?;
    check_writable(out)?;
    let dir = model_dir(model);
    let tok_path = opts.tokenizer.clone().unwrap_or_else(|| dir.join(TOKENIZER_FILE));
    if !tok_path.is_file() {
        return Err(Error::model(&tok_path, "tokenizer.json not found beside the model; pass --tokenizer"));
    }
    let tok_bytes = std::fs::read(&tok_path).map_err(|e| Error::io(&tok_path, e))?;
    let tok = Tokenizer::from_bytes(&tok_bytes, &tok_path, None)?;

    let src = SourceTable::open(model)?;
    if tok.vocab_size() != src.vocab {
        return Err(Error::Tokenizer {
            path: tok_path.clone(),
            msg: format!("vocabulary of {} tokens does not match the table's {} rows", tok.vocab_size(), src.vocab),
        });
    }

    let weights = opts.weights.unwrap_or(match src.kind {
        train::source::SourceKind::HuggingFace => DEFAULT_WEIGHTS,
        train::source::SourceKind::Onnx => WeightScheme::F32,
    });
    // read once: GPTQ calibrates on it, the table's token counts come from it
    let corpus = load_corpus(opts, &mut warn)?;
    // the body first: a model whose graph cannot be exported fails before training
    let (body, body_data, token_type_ids, default_len) = match src.kind {
        train::source::SourceKind::HuggingFace => {
            let hessians = match (&corpus, weights == WeightScheme::Int4 && opts.calibration_docs > 0) {
                (Some(corpus), true) => {
                    let f32_body = bert::build_body(&dir, WeightScheme::F32, &Default::default())?;
                    let calib_tok = Tokenizer::from_bytes(&tok_bytes, &tok_path, Some(calibrate::CALIBRATION_TOKENS))?;
                    calibrate::hessians(f32_body, &src, &calib_tok, corpus, opts.calibration_docs, &mut progress)?
                }
                (None, true) => {
                    warn("no corpus: the int4 body is rounded without GPTQ calibration (pass --corpus)".into());
                    Default::default()
                }
                _ => Default::default(),
            };
            let bert::Body { model: mut m, config: cfg, .. } = bert::build_body(&dir, weights, &hessians)?;
            if cfg.hidden_size != src.dim {
                return Err(Error::model(
                    dir.join("config.json"),
                    format!("hidden_size {} differs from the {} columns of the word-embedding table", cfg.hidden_size, src.dim),
                ));
            }
            let data = graph::move_to_external_data(&mut m);
            (m.encode_to_vec(), data, cfg.type_vocab_size > 0, cfg.max_position_embeddings)
        }
        train::source::SourceKind::Onnx => {
            if weights != WeightScheme::F32 {
                return Err(Error::Usage("an ONNX model keeps its own weights: use --weights f32".into()));
            }
            let bytes = std::fs::read(&src.file).map_err(|e| Error::io(&src.file, e))?;
            let mut r = rewrite::rewrite(&bytes, &src.file)?;
            if r.dim != src.dim {
                return Err(Error::model(&src.file, format!("graph width {} differs from the table's {}", r.dim, src.dim)));
            }
            let data = graph::move_to_external_data(&mut r.model);
            (r.model.encode_to_vec(), data, r.token_type_ids, 512)
        }
    };
    let max_length = match opts.max_length {
        // longer inputs would slice past the body's position table at run time
        Some(n) if n > default_len => {
            return Err(Error::Usage(format!("--max-length {n} is beyond the model's {default_len} positions")));
        }
        Some(n) => n,
        None => sentence_max_len(&dir).unwrap_or(128).min(default_len),
    };

    let t = compress_factors(&src, opts, corpus.as_ref().map(|c| (c, &tok)), &mut progress)?;
    let (header, factors) = (&t.header, &t.bytes);

    let mut files: Vec<(&str, &[u8])> = vec![(BODY_FILE, &body), (FACTORS_FILE, &factors), (TOKENIZER_FILE, &tok_bytes)];
    if !body_data.is_empty() {
        files.push((BODY_DATA_FILE, &body_data));
    }
    let manifest = Manifest {
        format: BUNDLE_FORMAT.into(),
        version: BUNDLE_VERSION,
        model: model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        vocab: src.vocab,
        dim: src.dim,
        max_length,
        pooling: "mean".into(),
        normalize: true,
        token_type_ids,
        table: header.method,
        weights,
        files: files.iter().map(|(n, b)| (n.to_string(), FileEntry { sha256: sha256_bytes(b), bytes: b.len() as u64 })).collect::<BTreeMap<_, _>>(),
        metrics: header.metrics.clone(),
        labels: None,
    };
    write_bundle(out, &files, &manifest, None)?;

    let bundle_bytes = files.iter().map(|(_, b)| b.len() as u64).sum::<u64>() + manifest_bytes(&manifest)?.len() as u64;
    Ok(t.report(model, out, Some((weights, (body.len() + body_data.len()) as u64, bundle_bytes))))
}

/// A compressed table, serialized, with what is known about it.
struct TableOut {
    header: crate::format::Header,
    bytes: Vec<u8>,
    metrics: train::TokenMetrics,
    param_count: usize,
    train_seconds: f64,
    best_epoch: Option<usize>,
    vocab: usize,
    dim: usize,
}

impl TableOut {
    fn report(&self, model: &Path, out: &Path, body: Option<(WeightScheme, u64, u64)>) -> Report {
        let original = (self.vocab * self.dim) as f64;
        Report {
            model: model.display().to_string(),
            method: self.header.method.name().to_string(),
            rank: self.header.rank,
            codes: self.header.codes.map(|c| c.name().to_string()),
            weights: body.map(|b| b.0.name().to_string()),
            vocab: self.vocab,
            dim: self.dim,
            ratio_params: original / self.param_count as f64,
            ratio_bytes: original * 4.0 / self.bytes.len() as f64,
            metrics: self.metrics.clone(),
            train_seconds: self.train_seconds,
            best_epoch: self.best_epoch,
            bytes: self.bytes.len() as u64,
            body_bytes: body.map(|b| b.1),
            bundle_bytes: body.map(|b| b.2),
            out: out.to_path_buf(),
        }
    }
}

/// The corpus of `opts`, read (with its warning about undecodable files), if any.
fn load_corpus(opts: &BundleOptions, warn: &mut impl FnMut(String)) -> Result<Option<corpus::Corpus>> {
    let Some(dir) = &opts.corpus else { return Ok(None) };
    let corpus = corpus::load(dir)?;
    if let Some(w) = corpus.lossy_warning() {
        warn(w);
    }
    Ok(Some(corpus))
}

/// Compress the table of `src` and measure it (token metrics, weighted by the counts of
/// `corpus` under its tokenizer when one is given).
fn compress_factors(
    src: &SourceTable,
    opts: &BundleOptions,
    corpus: Option<(&corpus::Corpus, &Tokenizer)>,
    progress: &mut impl FnMut(Progress<'_>),
) -> Result<TableOut> {
    let freq = corpus.map(|(c, tok)| train::token_frequencies(tok, c, src.vocab));
    let c = train::compress(src, &opts.table, freq.as_deref(), progress)?;
    let row_of_token = c.order.as_deref().map(train::row_of_token);
    let view = Factors { header: c.header.clone(), table: c.table.view(), row_of_token: row_of_token.as_deref() };
    let metrics = train::token_metrics(src, &view, freq.as_deref())?;
    let mut header = c.header.clone();
    header.metrics = serde_json::json!({
        "token_cos_mean": metrics.token_cos_mean,
        "token_cos_p5": metrics.token_cos_p5,
        "token_cos_weighted": metrics.token_cos_weighted,
        "rmse": metrics.rmse,
        "norm_ratio": metrics.norm_ratio,
        "train_seconds": c.train_seconds,
        "best_epoch": c.best_epoch,
    });
    let bytes = format::serialize(&header, &c.table.view(), row_of_token.as_deref()).map_err(|source| Error::Factors { path: FACTORS_FILE.into(), source })?;
    Ok(TableOut {
        header,
        bytes,
        metrics,
        param_count: view.param_count(),
        train_seconds: c.train_seconds,
        best_epoch: c.best_epoch,
        vocab: src.vocab,
        dim: src.dim,
    })
}

/// Compress only the table of `model` into `out/factors.safetensors` (no body, no
/// tokenizer needed unless a corpus weights the metrics): for trainer experiments and
/// tables too large to deploy.
pub fn compress_table_only(
    model: &Path,
    out: &Path,
    opts: &BundleOptions,
    mut progress: impl FnMut(Progress<'_>),
    mut warn: impl FnMut(String),
) -> Result<Report> {
    check_writable(&out.join(FACTORS_FILE))?;
    let src = SourceTable::open(model)?;
    let tok_path = opts.tokenizer.clone().unwrap_or_else(|| model_dir(model).join(TOKENIZER_FILE));
    // without a tokenizer the corpus-weighted cosine is unknown (reported as null)
    let tok = if opts.corpus.is_some() && tok_path.is_file() { Some(Tokenizer::from_file(&tok_path, None)?) } else { None };
    let corpus = match &tok {
        Some(_) => load_corpus(opts, &mut warn)?,
        None => None,
    };
    let t = compress_factors(&src, opts, corpus.as_ref().zip(tok.as_ref()), &mut progress)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    crate::fsutil::write_atomic(&out.join(FACTORS_FILE), &t.bytes)?;
    Ok(t.report(model, out, None))
}

/// max_seq_length from a sentence-transformers sentence_bert_config.json, if present.
fn sentence_max_len(dir: &Path) -> Option<usize> {
    let bytes = std::fs::read(dir.join("sentence_bert_config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("max_seq_length")?.as_u64().map(|n| n as usize)
}

fn manifest_bytes(m: &Manifest) -> Result<Vec<u8>> {
    let mut b = serde_json::to_vec_pretty(m).map_err(|e| Error::Usage(format!("manifest: {e}")))?;
    b.push(b'\n');
    Ok(b)
}

/// Write a bundle: `files` (name, bytes) plus the manifest, staged beside `out` and swapped
/// in at once. Files of `keep_from` (an existing bundle) not in `files` are hard-linked
/// (or copied) into the new one.
pub fn write_bundle(out: &Path, files: &[(&str, &[u8])], manifest: &Manifest, keep_from: Option<&Path>) -> Result<()> {
    check_replaceable(out)?;
    let staged = stage_dir(out)?;
    // errors name the bundle file being written, not its place in the staging directory
    let named = |name: &str| {
        let target = out.join(name);
        move |e: Error| match e {
            Error::Io { source, .. } => Error::io(target, source),
            other => other,
        }
    };
    let res = (|| {
        for (name, bytes) in files {
            write_synced(&staged.join(name), bytes).map_err(named(name))?;
        }
        if let Some(old) = keep_from {
            for name in manifest.files.keys().filter(|n| !files.iter().any(|(f, _)| f == n)) {
                let (from, to) = (old.join(name), staged.join(name));
                if std::fs::hard_link(&from, &to).is_err() {
                    std::fs::copy(&from, &to).map_err(|e| Error::io(&from, e))?;
                }
            }
        }
        write_synced(&staged.join(MANIFEST_FILE), &manifest_bytes(manifest)?).map_err(named(MANIFEST_FILE))?;
        publish_dir(&staged, out)
    })();
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&staged);
    }
    res
}

/// An existing `out` is replaced whole when a new bundle is published, so it must be a
/// bundle (or empty): refuse a directory holding anything else (`--out ~` must not
/// delete a home directory) and a path that is not a directory.
pub fn check_replaceable(out: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(out, e)),
    };
    if !out.is_dir() {
        let what = if meta.file_type().is_symlink() { "a symbolic link that does not lead to a directory" } else { "not a directory" };
        return Err(Error::Usage(format!("{}: exists and is {what}; refusing to replace it", out.display())));
    }
    let entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(out, e))?;
        let name = entry.file_name();
        if !BUNDLE_FILES.iter().any(|f| name == std::ffi::OsStr::new(f)) {
            return Err(Error::Usage(format!(
                "{}: exists and holds {}, which is not part of a bundle; refusing to replace it (choose another output or move that away)",
                out.display(),
                name.to_string_lossy()
            )));
        }
    }
    Ok(())
}

/// What `train-head` reports (the `--json` interface).
#[derive(Clone, Debug, Serialize)]
pub struct HeadReport {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub n_train: usize,
    pub n_test: usize,
    pub labels: Vec<String>,
    /// confusion[true][predicted] on the held-out split.
    pub confusion: Vec<Vec<usize>>,
    pub docs_per_second: f64,
    pub embed_seconds: f64,
    pub fit_seconds: f64,
    pub iterations: usize,
    /// The regularization used, and its cross-validated accuracy when it was chosen.
    pub c: f64,
    pub cv_accuracy: Option<f64>,
    pub lossy_documents: Vec<String>,
}

/// Candidates for the head's C when it is chosen by cross-validation.
pub const C_GRID: [f64; 4] = [0.1, 1.0, 10.0, 100.0];

#[derive(Clone, Debug)]
pub struct HeadOptions {
    pub test_fraction: f64,
    pub seed: u64,
    /// Inverse L2 strength, as scikit-learn's C; None: chosen by 5-fold cross-validation
    /// on the training split among [`C_GRID`].
    pub c: Option<f64>,
    pub batch: usize,
}

/// Embed a labelled corpus with the bundle, fit a logistic-regression head on a stratified
/// split, evaluate it on the held-out part, and store it in the bundle (head file plus
/// labels and metrics in the manifest, swapped in at once).
pub fn train_head(
    bundle: &crate::Bundle,
    data: &crate::corpus::Labelled,
    opts: &HeadOptions,
    embed_progress: impl Fn(usize) + Sync,
    mut fit_progress: impl FnMut(usize, f64, f64),
) -> Result<HeadReport> {
    use crate::bundle::HEAD_FILE;
    if !(0.0..1.0).contains(&opts.test_fraction) || opts.c.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
        return Err(Error::Usage("--test-fraction must be in [0, 1) and --c positive".into()));
    }
    check_replaceable(bundle.dir())?;
    check_writable(bundle.dir())?;
    let d = bundle.manifest.dim;
    let t0 = std::time::Instant::now();
    let texts: Vec<&str> = data.texts.iter().map(String::as_str).collect();
    let emb = bundle.embed_many(&texts, opts.batch, embed_progress)?;
    let embed_seconds = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let flat: Vec<f32> = emb.iter().flat_map(|e| e.embedding.iter().copied()).collect();
    let fitted = fit_head(&flat, d, data, opts, &mut fit_progress)?;
    let fit_seconds = t1.elapsed().as_secs_f64();
    let FittedHead { head, accuracy, macro_f1, confusion, n_train, n_test, c, cv_accuracy, iterations } = fitted;

    let head_bytes = head.serialize().map_err(|msg| Error::bundle(bundle.dir().join(HEAD_FILE), msg))?;
    let mut manifest = bundle.manifest.clone();
    manifest.labels = Some(data.labels.clone());
    manifest.files.insert(HEAD_FILE.into(), FileEntry { sha256: sha256_bytes(&head_bytes), bytes: head_bytes.len() as u64 });
    if let Some(m) = manifest.metrics.as_object_mut() {
        m.insert("head".into(), serde_json::json!({
            "accuracy": accuracy, "macro_f1": macro_f1, "n_train": n_train, "n_test": n_test,
            "test_fraction": opts.test_fraction, "seed": opts.seed, "c": c,
        }));
    }
    write_bundle(bundle.dir(), &[(HEAD_FILE, &head_bytes)], &manifest, Some(bundle.dir()))?;
    Ok(HeadReport {
        accuracy,
        macro_f1,
        n_train,
        n_test,
        labels: data.labels.clone(),
        confusion,
        docs_per_second: texts.len() as f64 / embed_seconds.max(1e-9),
        embed_seconds,
        fit_seconds,
        iterations,
        c,
        cv_accuracy,
        lossy_documents: data.lossy.clone(),
    })
}

/// A head fitted on a stratified split of embedded, labelled documents, with its held-out scores.
pub struct FittedHead {
    pub head: crate::head::Head,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub confusion: Vec<Vec<usize>>,
    pub n_train: usize,
    pub n_test: usize,
    pub c: f64,
    pub cv_accuracy: Option<f64>,
    pub iterations: usize,
}

/// Split `emb` (one row of width `d` per document of `data`), fit the head on the
/// training part (C by cross-validation unless given) and score it on the held-out part.
pub fn fit_head(
    emb: &[f32],
    d: usize,
    data: &crate::corpus::Labelled,
    opts: &HeadOptions,
    fit_progress: impl FnMut(usize, f64, f64),
) -> Result<FittedHead> {
    let k = data.labels.len();
    let (train_idx, test_idx) = train::head::stratified_split(&data.classes, k, opts.test_fraction, opts.seed);
    if train_idx.is_empty() {
        return Err(Error::Usage("the split leaves no training documents".into()));
    }
    let gather = |idx: &[usize]| -> (Vec<f32>, Vec<usize>) {
        (idx.iter().flat_map(|&i| emb[i * d..(i + 1) * d].iter().copied()).collect(), idx.iter().map(|&i| data.classes[i]).collect())
    };
    let (xtr, ytr) = gather(&train_idx);
    let (c, cv_accuracy) = match opts.c {
        Some(c) => (c, None),
        None => {
            let (c, acc) = train::head::choose_c(&xtr, &ytr, k, d, &C_GRID, 5, opts.seed);
            (c, Some(acc))
        }
    };
    let fit = train::head::fit(&xtr, &ytr, k, d, c, fit_progress);
    let head = crate::head::Head { labels: data.labels.clone(), weight: fit.weight, bias: fit.bias, dim: d };
    let (xte, yte) = gather(&test_idx);
    let pred: Vec<usize> = xte.chunks_exact(d).map(|x| train::head::predict(&head.weight, &head.bias, x, d)).collect();
    let (accuracy, macro_f1, confusion) = train::head::scores(&yte, &pred, k);
    Ok(FittedHead { head, accuracy, macro_f1, confusion, n_train: train_idx.len(), n_test: test_idx.len(), c, cv_accuracy, iterations: fit.iterations })
}
