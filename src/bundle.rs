//! A deployable bundle: body.onnx (with its weights in body.onnx.data), factors.safetensors,
//! tokenizer.json, manifest.json and, once trained, head.safetensors. [`Bundle::open`] checks every file against the
//! manifest (size, sha256) and the dimensions of the files against each other before
//! anything runs; the factor file is memory-mapped and only the rows of the input tokens
//! are ever read.

use std::path::{Path, PathBuf};

use crate::embed;
use crate::encode::{BodyBatch, BodyData, Encoder, Int4};
use crate::error::{Error, Result};
use crate::format::{self, Factors};
use crate::fsutil::{drop_page_cache, sha256_file};
use crate::head::Head;
use crate::manifest::{Manifest, BUNDLE_FORMAT, BUNDLE_VERSION, MANIFEST_FILE, OLDEST_READABLE_VERSION};
use crate::mmap::Mapped;
use crate::pool;
use crate::tokenize::Tokenizer;

pub const BODY_FILE: &str = "body.onnx";
/// The body's large tensors, as ONNX external data (bundle version 3 on).
pub const BODY_DATA_FILE: &str = "body.onnx.data";
pub const FACTORS_FILE: &str = "factors.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const HEAD_FILE: &str = "head.safetensors";
/// Every file a bundle directory may hold.
pub const BUNDLE_FILES: [&str; 6] = [BODY_FILE, BODY_DATA_FILE, FACTORS_FILE, TOKENIZER_FILE, HEAD_FILE, MANIFEST_FILE];

#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Threads for tract's matrix products.
    pub threads: usize,
    /// Truncate inputs to this many tokens (special tokens included); default: manifest.
    pub max_length: Option<usize>,
    /// How tract holds an int4 body's weights; [`Int4::Packed`] on a body of another
    /// scheme is an error, not silently ignored.
    pub int4: Int4,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { threads: 1, max_length: None, int4: Int4::Expanded }
    }
}

/// The sentence embedding of one input.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedded {
    pub embedding: Vec<f32>,
    /// Tokens fed to the body (special tokens included).
    pub tokens: usize,
    /// Whether the input was cut to the maximum length.
    pub truncated: bool,
}

pub struct Bundle {
    dir: PathBuf,
    pub manifest: Manifest,
    factors: Mapped,
    tokenizer: Tokenizer,
    encoder: Encoder,
    head: Option<Head>,
    max_length: usize,
}

impl Bundle {
    pub fn open(dir: &Path, opts: &OpenOptions) -> Result<Self> {
        let bundle = crate::malloc::loading(|| Self::load(dir, opts));
        // the code only the load ran need not stay resident (src/code.rs)
        crate::code::release();
        bundle
    }

    fn load(dir: &Path, opts: &OpenOptions) -> Result<Self> {
        let manifest = read_manifest(dir)?;
        // the files every bundle needs first (a missing one is named as such), then any
        // other file the manifest lists: every listed file is checked, none is trusted
        let required = [BODY_FILE, FACTORS_FILE, TOKENIZER_FILE].into_iter().chain(manifest.labels.as_ref().map(|_| HEAD_FILE));
        for name in required.clone() {
            verify_file(dir, &manifest, name)?;
        }
        for name in manifest.files.keys().filter(|n| !required.clone().any(|r| r == n.as_str())) {
            verify_file(dir, &manifest, name)?;
        }
        // hashing read the whole factor file; forget it so residency reflects inference
        drop_page_cache(&dir.join(FACTORS_FILE));

        let fpath = dir.join(FACTORS_FILE);
        // SAFETY: bundle files are only ever replaced by rename, never edited in place.
        let factors = unsafe { Mapped::open(&fpath)? };
        factors.advise_random();
        {
            let f = format::parse(factors.bytes()).map_err(|source| Error::Factors { path: fpath.clone(), source })?;
            if (f.vocab(), f.dim()) != (manifest.vocab, manifest.dim) {
                return Err(Error::bundle(
                    &fpath,
                    format!("table is {} x {} but the manifest says {} x {}", f.vocab(), f.dim(), manifest.vocab, manifest.dim),
                ));
            }
            if f.header.method != manifest.table {
                return Err(Error::bundle(&fpath, format!("table method is {} but the manifest says {}", f.header.method.name(), manifest.table.name())));
            }
        }
        let max_length = opts.max_length.unwrap_or(manifest.max_length);
        if max_length < 2 {
            return Err(Error::Usage(format!("--max-length {max_length} leaves no room for the special tokens")));
        }
        let bpath = dir.join(BODY_FILE);
        // read, not mapped: a mapping would keep the whole file resident while tract
        // decodes it (measured: peak RSS 180 MB mapped vs 161 MB read, f32 body). Bodies
        // since version 3 keep their weights in body.onnx.data, which tract then reads one
        // tensor at a time from this mapping, released as it goes, and unmapped once the
        // plan is built. The body loads before the tokenizer, so the two load peaks do
        // not add up.
        let body = std::fs::read(&bpath).map_err(|e| Error::io(&bpath, e))?;
        let encoder = {
            // SAFETY: as for the factor file.
            let data = if manifest.files.contains_key(BODY_DATA_FILE) { Some(BodyData::new(unsafe { Mapped::open(&dir.join(BODY_DATA_FILE))? })) } else { None };
            Encoder::load(body, data, manifest.dim, opts.threads.max(1), manifest.weights, opts.int4)
        }
        .map_err(|msg| Error::bundle(&bpath, msg))?;
        let tpath = dir.join(TOKENIZER_FILE);
        let tokenizer = Tokenizer::from_file(&tpath, Some(max_length))?;
        if tokenizer.vocab_size() != manifest.vocab {
            return Err(Error::bundle(
                &tpath,
                format!("vocabulary of {} tokens does not match the {} rows of the factor file", tokenizer.vocab_size(), manifest.vocab),
            ));
        }
        let head = match &manifest.labels {
            Some(labels) => Some(Head::read(&dir.join(HEAD_FILE), labels, manifest.dim)?),
            None => None,
        };
        Ok(Bundle { dir: dir.to_path_buf(), manifest, factors, tokenizer, encoder, head, max_length })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    /// The memory-mapped factor file (for footprint measurements).
    pub fn factor_map(&self) -> &Mapped {
        &self.factors
    }

    /// Zero-copy view of the (already validated) factor file.
    pub fn factors(&self) -> Result<Factors<'_>> {
        format::parse(self.factors.bytes()).map_err(|source| Error::Factors { path: self.factors.path().to_path_buf(), source })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Sentence embeddings of `texts`, run through the body as one padded batch.
    pub fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Embedded>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let enc: Vec<_> = texts.iter().map(|t| self.tokenizer.encode(t)).collect();
        self.embed_encoded(&enc)
    }

    /// Sentence embeddings of already tokenized inputs, as one padded batch.
    pub fn embed_encoded(&self, enc: &[crate::tokenize::Encoded]) -> Result<Vec<Embedded>> {
        if enc.is_empty() {
            return Ok(Vec::new());
        }
        let batch = self.body_batch(enc)?;
        let (seq, d, mask) = (batch.seq, self.manifest.dim, batch.mask.clone());
        let hidden = self.encoder.run(batch).map_err(Error::Inference)?;
        let pooled = pool::mean_pool(&hidden, &mask, enc.len(), seq, d, self.manifest.normalize);
        Ok(pooled
            .into_iter()
            .zip(enc)
            .map(|(embedding, e)| Embedded { embedding, tokens: e.ids.len(), truncated: e.truncated })
            .collect())
    }

    /// Milliseconds per tract op of one body run on `enc` (see [`Encoder::profile`]).
    pub fn profile_encoded(&self, enc: &[crate::tokenize::Encoded]) -> Result<Vec<(String, f64)>> {
        self.encoder.profile(self.body_batch(enc)?).map_err(Error::Inference)
    }

    /// The body's inputs for `enc`: decoded rows, padded to the longest input.
    fn body_batch(&self, enc: &[crate::tokenize::Encoded]) -> Result<BodyBatch> {
        let seq = enc.iter().map(|e| e.ids.len()).max().unwrap_or(0).max(1);
        let d = self.manifest.dim;
        let factors = self.factors()?;
        let mut batch = BodyBatch {
            batch: enc.len(),
            seq,
            embeds: vec![0f32; enc.len() * seq * d],
            mask: vec![0i64; enc.len() * seq],
            type_ids: vec![0i64; enc.len() * seq],
        };
        for (b, e) in enc.iter().enumerate() {
            embed::decode_tokens(&factors, &e.ids, &mut batch.embeds[b * seq * d..(b * seq + e.ids.len()) * d])
                .map_err(|source| Error::Factors { path: self.factors.path().to_path_buf(), source })?;
            batch.mask[b * seq..b * seq + e.ids.len()].fill(1);
            for (t, &ty) in batch.type_ids[b * seq..].iter_mut().zip(&e.type_ids) {
                *t = i64::from(ty);
            }
        }
        // the rows are copied out: unmap their pages from the process (they stay in the
        // page cache, and a later text's rows fault back in from there in microseconds),
        // so the factor file adds this batch's rows to the process's resident memory, not
        // every row any text has touched (3 MB after 100 BBC documents)
        self.factors.release(0, self.factors.bytes().len());
        Ok(batch)
    }

    /// Class probabilities of each text, in the order of `manifest.labels`.
    pub fn classify_batch(&self, texts: &[&str]) -> Result<Vec<(Embedded, Vec<f32>)>> {
        let head = self.head.as_ref().ok_or_else(|| {
            Error::bundle(&self.dir, "has no classification head; train one with `embslim train-head <bundle> --data <dir>`")
        })?;
        Ok(self.embed_batch(texts)?.into_iter().map(|e| {
            let p = head.probabilities(&e.embedding);
            (e, p)
        }).collect())
    }

    /// Embed many texts in batches of `batch_size`, grouping texts of similar length to
    /// limit padding; batches run in parallel on rayon's pool (one document batch per
    /// core scales better than threading each small matmul). Results come back in input
    /// order; `progress` gets the number of texts done.
    pub fn embed_many(&self, texts: &[&str], batch_size: usize, progress: impl Fn(usize) + Sync) -> Result<Vec<Embedded>> {
        use rayon::prelude::*;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let done = AtomicUsize::new(0);
        let groups: Vec<&[usize]> = order.chunks(batch_size.max(1)).collect();
        let results = groups
            .par_iter()
            .map(|group| {
                let batch: Vec<&str> = group.iter().map(|&i| texts[i]).collect();
                let r = self.embed_batch(&batch);
                progress(done.fetch_add(group.len(), Ordering::Relaxed) + group.len());
                r
            })
            .collect::<Result<Vec<_>>>()?;
        let mut out: Vec<Option<Embedded>> = vec![None; texts.len()];
        for (group, embs) in groups.iter().zip(results) {
            for (&i, e) in group.iter().zip(embs) {
                out[i] = Some(e);
            }
        }
        Ok(out.into_iter().map(|e| e.expect("every index is filled once")).collect())
    }
}

/// Largest manifest.json accepted: a real one is a few kilobytes; the limit keeps a
/// hostile file from being read into memory whole.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Read and check manifest.json of the bundle at `dir`.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let not_found = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound if !dir.is_dir() => Error::bundle(dir, "no such bundle directory"),
        std::io::ErrorKind::NotADirectory => Error::bundle(dir, "is not a bundle directory"),
        std::io::ErrorKind::NotFound => Error::bundle(&path, "missing: not a bundle directory (or an unfinished one)"),
        _ => Error::io(&path, e),
    };
    let len = std::fs::metadata(&path).map_err(not_found)?.len();
    if len > MAX_MANIFEST_BYTES {
        return Err(Error::bundle(&path, format!("is {len} bytes, over the {MAX_MANIFEST_BYTES}-byte limit for a manifest")));
    }
    let bytes = std::fs::read(&path).map_err(not_found)?;
    parse_manifest(&bytes, &path)
}

/// Parse and check manifest bytes against every rule of the bundle format; `path` is
/// only used in error messages.
pub fn parse_manifest(bytes: &[u8], path: &Path) -> Result<Manifest> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| Error::bundle(path, format!("not a valid manifest: {e}")))?;
    if m.format != BUNDLE_FORMAT {
        return Err(Error::bundle(path, format!("format is '{}', expected '{BUNDLE_FORMAT}'", m.format)));
    }
    if !(OLDEST_READABLE_VERSION..=BUNDLE_VERSION).contains(&m.version) {
        return Err(Error::bundle(
            path,
            format!("bundle version {} is not supported (this build reads versions {OLDEST_READABLE_VERSION} to {BUNDLE_VERSION})", m.version),
        ));
    }
    if m.vocab == 0 || m.dim == 0 || m.max_length == 0 {
        return Err(Error::bundle(path, "vocab, dim and max_length must be positive"));
    }
    if m.pooling != "mean" {
        return Err(Error::bundle(path, format!("pooling '{}' is not supported (only 'mean')", m.pooling)));
    }
    if let Some(labels) = &m.labels {
        if labels.len() < 2 {
            return Err(Error::bundle(path, "a head needs at least two labels"));
        }
        if let Some(i) = labels.iter().position(|l| l.trim().is_empty()) {
            return Err(Error::bundle(path, format!("label {i} is empty")));
        }
        let mut sorted: Vec<&String> = labels.iter().collect();
        sorted.sort();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::bundle(path, format!("label '{}' appears twice", w[0])));
        }
    }
    for (name, entry) in &m.files {
        if name == MANIFEST_FILE || !BUNDLE_FILES.contains(&name.as_str()) {
            let known: Vec<&str> = BUNDLE_FILES.into_iter().filter(|f| *f != MANIFEST_FILE).collect();
            let known = known.join(", ");
            return Err(Error::bundle(path, format!("lists '{name}', which is not a bundle file ({known})")));
        }
        let hex = entry.sha256.len() == 64 && entry.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            return Err(Error::bundle(path, format!("sha256 of {name} is not 64 lowercase hex digits")));
        }
    }
    Ok(m)
}

/// Check that `name` exists with the size and sha256 the manifest records.
fn verify_file(dir: &Path, m: &Manifest, name: &str) -> Result<()> {
    let path = dir.join(name);
    let entry = m.files.get(name).ok_or_else(|| Error::bundle(dir.join(MANIFEST_FILE), format!("does not list {name}")))?;
    let meta = std::fs::metadata(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::bundle(&path, "missing from the bundle"),
        _ => Error::io(&path, e),
    })?;
    if !meta.is_file() {
        return Err(Error::bundle(&path, "is not a regular file"));
    }
    if meta.len() != entry.bytes {
        return Err(Error::bundle(&path, format!("is {} bytes but the manifest says {}", meta.len(), entry.bytes)));
    }
    let (sha, _) = sha256_file(&path)?;
    if sha != entry.sha256 {
        return Err(Error::bundle(&path, format!("sha256 {sha} does not match the manifest's {}", entry.sha256)));
    }
    Ok(())
}
