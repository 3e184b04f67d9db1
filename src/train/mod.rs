//! Host-only training: read a model's token-embedding table, compress it with one of the
//! methods, and measure what the stored table keeps (token-level metrics).

pub mod direction;
pub mod gptq;
pub mod head;
pub mod mixed;
pub mod quant;
pub mod source;
pub mod svd;

use std::time::Instant;

use half::f16;
use ndarray::ArrayView2;
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::{CodesDtype, Factors, Header, Method, OwnedCodes, OwnedTable, Q4_BLOCK};
use crate::tokenize::Tokenizer;
use crate::corpus::Corpus;
use source::SourceTable;

/// Deterministic uniform noise in [-0.5, 0.5) for the quantizers' unit tests.
#[cfg(test)]
pub(crate) fn test_noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}

/// What to compress and how.
#[derive(Clone, Debug)]
pub struct CompressOptions {
    pub method: Method,
    /// Rank k of a factorization; derived from `ratio` when None.
    pub rank: Option<usize>,
    /// Compression ratio: by parameters for svd and direction, V*d / (V*k + k*d + d); by
    /// table bytes for mixed (f32 table bytes / stored bytes, row order included).
    pub ratio: Option<f64>,
    pub codes: CodesDtype,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub seed: u64,
    pub init_svd: bool,
}

impl Default for CompressOptions {
    fn default() -> Self {
        CompressOptions {
            method: Method::Direction,
            rank: None,
            ratio: None,
            codes: CodesDtype::F32,
            epochs: 30,
            batch: 32,
            lr: 1e-3,
            seed: 1,
            init_svd: false,
        }
    }
}

/// The largest rank whose parameter ratio is at least `ratio`.
pub fn rank_for_ratio(vocab: usize, dim: usize, ratio: f64) -> usize {
    let (v, d) = (vocab as f64, dim as f64);
    ((v * d / ratio - d) / (v + d)).floor().max(0.0) as usize
}

/// Widest table the factorizations accept (their d x d f64 Gram matrix is 2 GiB there).
pub const MAX_FACTOR_DIM: usize = 16384;

/// Resolve and check the rank for a factorizing method.
pub fn resolve_rank(opts: &CompressOptions, vocab: usize, dim: usize) -> Result<Option<usize>> {
    if opts.method == Method::Mixed && opts.rank.is_some() {
        return Err(Error::Usage("mixed has no rank: give --ratio".into()));
    }
    if !opts.method.is_factorized() {
        if opts.rank.is_some() || (opts.ratio.is_some() && opts.method != Method::Mixed) {
            return Err(Error::Usage(format!("--rank and --ratio apply to svd and direction, not to {}", opts.method.name())));
        }
        return Ok(None);
    }
    let k = match (opts.rank, opts.ratio) {
        (Some(_), Some(_)) => return Err(Error::Usage("give either --rank or --ratio, not both".into())),
        (Some(k), None) => k,
        (None, Some(r)) if r.is_finite() && r > 1.0 => rank_for_ratio(vocab, dim, r),
        (None, Some(r)) => return Err(Error::Usage(format!("--ratio {r} must be a number above 1"))),
        (None, None) => rank_for_ratio(vocab, dim, 10.0),
    };
    if k == 0 || k >= dim {
        return Err(Error::Usage(format!("rank {k} must be between 1 and {} (the table has d = {dim})", dim - 1)));
    }
    if dim > MAX_FACTOR_DIM {
        return Err(Error::Usage(format!("{} needs a d x d Gram matrix; d = {dim} is over the {MAX_FACTOR_DIM} supported", opts.method.name())));
    }
    Ok(Some(k))
}

/// Token-level quality of a stored table against the original.
#[derive(Clone, Debug, Serialize)]
pub struct TokenMetrics {
    pub token_cos_mean: f64,
    pub token_cos_p5: f64,
    /// Mean cosine weighted by each token's count in a real corpus.
    pub token_cos_weighted: Option<f64>,
    pub rmse: f64,
    /// Mean of |x'| / |x| over rows.
    pub norm_ratio: f64,
}

/// Compare every row decoded from `f` with the original, streaming the source.
pub fn token_metrics(src: &SourceTable, f: &Factors<'_>, freq: Option<&[u64]>) -> Result<TokenMetrics> {
    let d = src.dim;
    let chunk = svd::CHUNK_ROWS;
    let mut cos = vec![0f32; src.vocab];
    let (mut se, mut nr) = (0f64, 0f64);
    let mut buf = vec![0f32; chunk * d];
    let mut start = 0;
    while start < src.vocab {
        let n = chunk.min(src.vocab - start);
        let rows = &mut buf[..n * d];
        src.read_rows(start, rows);
        let parts: Vec<Result<(f64, f64)>> = rows
            .par_chunks(d)
            .zip(cos[start..start + n].par_iter_mut())
            .enumerate()
            .map(|(i, (x, c))| {
                let mut y = vec![0f32; d];
                f.decode_row(start + i, &mut y).map_err(|e| Error::Usage(format!("decoding row {}: {e}", start + i)))?;
                *c = direction::cosine(x, &y);
                let se: f64 = x.iter().zip(&y).map(|(a, b)| f64::from(a - b).powi(2)).sum();
                let (nx, ny) = (norm(x), norm(&y));
                Ok((se, if nx > 0.0 { ny / nx } else { 1.0 }))
            })
            .collect();
        for p in parts {
            let (a, b) = p?;
            se += a;
            nr += b;
        }
        src.release_rows(start, n);
        start += n;
    }
    let v = src.vocab as f64;
    let token_cos_weighted = freq.and_then(|w| {
        let total: u64 = w.iter().sum();
        (total > 0).then(|| cos.iter().zip(w).map(|(c, &n)| f64::from(*c) * n as f64).sum::<f64>() / total as f64)
    });
    Ok(TokenMetrics {
        token_cos_mean: cos.iter().map(|c| f64::from(*c)).sum::<f64>() / v,
        token_cos_p5: crate::pool::percentile(&mut cos, 0.05),
        token_cos_weighted,
        rmse: (se / (v * d as f64)).sqrt(),
        norm_ratio: nr / v,
    })
}

fn norm(x: &[f32]) -> f64 {
    x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt()
}

/// How often each token id occurs when `corpus` is tokenized (special tokens included,
/// no truncation): what real text actually uses.
pub fn token_frequencies(tok: &Tokenizer, corpus: &Corpus, vocab: usize) -> Vec<u64> {
    let per_doc: Vec<Vec<u32>> = corpus.docs.par_iter().map(|d| tok.encode(&d.text).ids).collect();
    let mut counts = vec![0u64; vocab];
    for ids in per_doc {
        for id in ids {
            if let Some(c) = counts.get_mut(id as usize) {
                *c += 1;
            }
        }
    }
    counts
}

/// Progress events of a compression run.
pub enum Progress<'a> {
    /// Rows processed by a streaming pass (Gram matrix, projection, quantization).
    Rows { done: usize, total: usize, what: &'static str },
    Epoch(&'a direction::EpochStats, usize),
}

/// A compressed table with the header to store it under.
pub struct Compressed {
    pub header: Header,
    pub table: OwnedTable,
    pub train_seconds: f64,
    pub best_epoch: Option<usize>,
    /// `order[i]`: the token stored at row i, when rows are not in token order.
    pub order: Option<Vec<usize>>,
}

/// Default `--ratio` of mixed tables (table bytes).
pub const MIXED_DEFAULT_RATIO: f64 = 10.0;

/// Compress the table of `src`, with rows in corpus-frequency order when `freq` (token
/// counts of a corpus) is given. Metrics are not filled in here (see [`token_metrics`]).
pub fn compress(src: &SourceTable, opts: &CompressOptions, freq: Option<&[u64]>, mut progress: impl FnMut(Progress<'_>)) -> Result<Compressed> {
    let (v, d) = (src.vocab, src.dim);
    let rank = resolve_rank(opts, v, d)?;
    if opts.method == Method::Int4 && d % Q4_BLOCK != 0 {
        return Err(Error::Usage(format!("int4 needs d to be a multiple of {Q4_BLOCK}; this table has d = {d}")));
    }
    if opts.batch == 0 || opts.epochs == 0 {
        return Err(Error::Usage("--batch and --epochs must be at least 1".into()));
    }
    let t0 = Instant::now();
    let mut best_epoch = None;
    let mut tiers = Vec::new();
    let mut order = None;
    let table = match opts.method {
        Method::None => OwnedTable::Dense(src.load()?),
        Method::Mixed => {
            let ratio = opts.ratio.unwrap_or(MIXED_DEFAULT_RATIO);
            if !(ratio.is_finite() && ratio > 1.0) {
                return Err(Error::Usage(format!("--ratio {ratio} must be a number above 1")));
            }
            // the row order (4 bytes a row) counts against the budget
            let budget_bytes = (v * d * 4) as f64 / ratio - (4 * v) as f64;
            let m = mixed::compress(&src.load()?, d, freq, 8.0 * budget_bytes)?;
            tiers = m.tiers;
            order = Some(m.order);
            m.table
        }
        Method::Int8 => {
            let (q, scale) = stream_quantize(src, &mut progress, |rows| quant::int8_rows(rows, d))?;
            OwnedTable::Int8Rows { q, scale }
        }
        Method::Int4 => {
            let (q, scale) = stream_quantize(src, &mut progress, quant::q4_0)?;
            OwnedTable::Q4Blocks { q, scale }
        }
        Method::Svd | Method::Direction => {
            let k = rank.expect("factorized methods have a rank");
            let need_svd = opts.method == Method::Svd || opts.init_svd;
            let vk = if need_svd {
                Some(svd::top_right_singular(src, k, |done| progress(Progress::Rows { done, total: v, what: "gram" }))?.0)
            } else {
                None
            };
            let (codes, decoder, bias) = if opts.method == Method::Svd {
                let vk = vk.expect("computed above");
                let z = svd::project(src, &vk);
                (z, vk.t().iter().copied().collect::<Vec<f32>>(), vec![0f32; d])
            } else {
                let x = src.load()?;
                let xv = ArrayView2::from_shape((v, d), &x).expect("table shape");
                let cfg = direction::TrainConfig {
                    rank: k,
                    epochs: opts.epochs,
                    batch: opts.batch,
                    lr: opts.lr,
                    seed: opts.seed,
                    init_svd: vk,
                };
                let (p, stats) = direction::train(xv, &cfg, |s| progress(Progress::Epoch(s, opts.epochs)));
                best_epoch = stats.iter().max_by(|a, b| a.cos_mean.total_cmp(&b.cos_mean)).map(|s| s.epoch);
                let z = p.encode(xv);
                (z.iter().copied().collect(), p.w.iter().copied().collect(), p.w_b.clone())
            };
            OwnedTable::LowRank { codes: store_codes(codes, k, opts.codes), decoder, bias }
        }
    };
    let header = Header {
        method: opts.method,
        vocab: v,
        dim: d,
        rank,
        codes: rank.map(|_| opts.codes),
        frequency_order: false,
        tiers,
        source_sha256: src.sha256()?,
        metrics: serde_json::Value::Null,
    };
    let mut c = Compressed { header, table, train_seconds: t0.elapsed().as_secs_f64(), best_epoch, order };
    // frequent tokens first, so the rows real text uses share pages of the mapped file
    if let (None, Some(f)) = (&c.order, freq) {
        let order = frequency_order(f);
        c.table = c.table.permuted(&order, d);
        c.order = Some(order);
    }
    c.header.frequency_order = c.order.is_some();
    Ok(c)
}

fn store_codes(z: Vec<f32>, k: usize, dtype: CodesDtype) -> OwnedCodes {
    match dtype {
        CodesDtype::F32 => OwnedCodes::F32(z),
        CodesDtype::F16 => OwnedCodes::F16(z.iter().map(|x| f16::from_f32(*x)).collect()),
        CodesDtype::Int8 => {
            let (q, scale) = quant::int8_rows(&z, k);
            OwnedCodes::Int8 { q, scale }
        }
    }
}

/// Quantize the table chunk by chunk, so a table larger than memory streams through.
fn stream_quantize<Q: Clone, S: Clone>(
    src: &SourceTable,
    progress: &mut impl FnMut(Progress<'_>),
    quantize: impl Fn(&[f32]) -> (Vec<Q>, Vec<S>) + Sync,
) -> Result<(Vec<Q>, Vec<S>)>
where
    Q: Send,
    S: Send,
{
    let d = src.dim;
    let (mut q, mut s) = (Vec::new(), Vec::new());
    let mut buf = vec![0f32; svd::CHUNK_ROWS * d];
    let mut start = 0;
    while start < src.vocab {
        let n = svd::CHUNK_ROWS.min(src.vocab - start);
        let rows = &mut buf[..n * d];
        src.read_rows(start, rows);
        src.check_finite(rows, start)?;
        // rows are independent: quantize groups of rows on all cores, in order
        let parts: Vec<(Vec<Q>, Vec<S>)> = rows.par_chunks(64 * d).map(&quantize).collect();
        for (pq, ps) in parts {
            q.extend(pq);
            s.extend(ps);
        }
        src.release_rows(start, n);
        start += n;
        progress(Progress::Rows { done: start, total: src.vocab, what: "quantize" });
    }
    Ok((q, s))
}

/// Row order by corpus frequency: `order[i]` is the token stored at row i (most frequent
/// first, ties by token id); [`row_of_token`] is its inverse.
pub fn frequency_order(freq: &[u64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..freq.len()).collect();
    order.sort_by(|&a, &b| freq[b].cmp(&freq[a]).then(a.cmp(&b)));
    order
}

/// The inverse of a row order: `row_of_token[order[i]] = i`.
pub fn row_of_token(order: &[usize]) -> Vec<u32> {
    let mut rows = vec![0u32; order.len()];
    for (row, &t) in order.iter().enumerate() {
        rows[t] = row as u32;
    }
    rows
}
