//! The factor file: a safetensors file holding a compressed token-embedding table.
//!
//! The parser takes `&[u8]` (a memory map in the runtime, a `Vec` in tests) and validates
//! every invariant before any zero-copy cast: the safetensors header and offsets, the
//! format name and version, the method and the tensors it requires, their dtypes and
//! shapes against the declared vocabulary `V`, width `d` and rank `k`, alignment, and finite
//! values in the small tensors (decoder, bias). Row data (codes, quantized rows, per-row
//! scales) is only read when a row is decoded, so opening a file touches only its header
//! and the small tensors; a non-finite per-row scale is reported when that row is decoded.
//!
//! Layout by method (`V` vocab, `d` dim, `k` rank):
//!
//! | method            | tensors                                                         |
//! |-------------------|-----------------------------------------------------------------|
//! | none              | `table` F32 [V, d]                                              |
//! | svd, direction    | `codes` F32/F16/I8 [V, k] (+ `codes_scale` F32 [V] for I8),      |
//! |                   | `decoder` F32 [k, d], `bias` F32 [d]                             |
//! | int8              | `rows` I8 [V, d], `row_scale` F32 [V]                            |
//! | int4              | `blocks` U8 [V, d/2] (two 4-bit values a byte, low nibble first),|
//! |                   | `block_scale` F16 [V, d/32] (ggml Q4_0: x = (q - 8) * scale)      |
//! | mixed             | per tier i (metadata `tiers`: rows, bits b, block B of each):    |
//! |                   | `tier{i}.codes` U8 [rows, d b/8] (b-bit codes, LSB first),       |
//! |                   | `tier{i}.scale` F16 [rows, d/B]: x = (2q + 1 - 2^b) * scale      |
//!
//! A mixed table stores consecutive runs of rows ("tiers") at different bit widths, so
//! the bits go where real text is: frequent tokens' rows get more bits than rare ones.

use std::collections::{BTreeMap, HashMap};

use half::f16;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

pub const FORMAT_NAME: &str = "embslim-factors";
pub const FORMAT_VERSION: u32 = 1;
/// Largest JSON header accepted (the safetensors limit): the header is parsed into
/// memory, so a hostile length must not turn into a huge allocation.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;
/// Values per 4-bit block; each block has one f16 scale.
pub const Q4_BLOCK: usize = 32;
/// Most tiers a mixed table may have (tensor names are fixed strings).
pub const MAX_TIERS: usize = 12;
const TIER_CODES: [&str; MAX_TIERS] = [
    "tier0.codes", "tier1.codes", "tier2.codes", "tier3.codes", "tier4.codes", "tier5.codes",
    "tier6.codes", "tier7.codes", "tier8.codes", "tier9.codes", "tier10.codes", "tier11.codes",
];
const TIER_SCALE: [&str; MAX_TIERS] = [
    "tier0.scale", "tier1.scale", "tier2.scale", "tier3.scale", "tier4.scale", "tier5.scale",
    "tier6.scale", "tier7.scale", "tier8.scale", "tier9.scale", "tier10.scale", "tier11.scale",
];

/// How the table is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The exact f32 table (lossless reference).
    None,
    /// Truncated SVD: codes = U_k S_k, decoder = V_k^T.
    Svd,
    /// The paper's direction-aware linear autoencoder.
    Direction,
    /// Per-row symmetric int8.
    Int8,
    /// 4-bit blocks of 32 with an f16 scale (ggml Q4_0).
    Int4,
    /// Rows in tiers of 1-8 bit blocks with least-squares scales; bits allocated by
    /// corpus frequency under a byte budget (`--ratio`).
    Mixed,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::None => "none",
            Method::Svd => "svd",
            Method::Direction => "direction",
            Method::Int8 => "int8",
            Method::Int4 => "int4",
            Method::Mixed => "mixed",
        }
    }
    pub fn is_factorized(self) -> bool {
        matches!(self, Method::Svd | Method::Direction)
    }
    fn parse(s: &str) -> Option<Self> {
        [Method::None, Method::Svd, Method::Direction, Method::Int8, Method::Int4, Method::Mixed]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

/// Storage of the codes of a factorized table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CodesDtype {
    F32,
    F16,
    /// int8 with one f32 scale per row.
    Int8,
}

impl CodesDtype {
    pub fn name(self) -> &'static str {
        match self {
            CodesDtype::F32 => "f32",
            CodesDtype::F16 => "f16",
            CodesDtype::Int8 => "int8",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        [CodesDtype::F32, CodesDtype::F16, CodesDtype::Int8].into_iter().find(|c| c.name() == s)
    }
}

/// One reason a factor file is rejected; each validation rule has its own variant so
/// tests (and users) can tell them apart.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FormatError {
    #[error("file is too short for a safetensors header ({len} bytes)")]
    TooShort { len: usize },
    #[error("header length {header} exceeds the file size {len}")]
    HeaderBeyondFile { header: u64, len: usize },
    #[error("header is {header} bytes, over the {MAX_HEADER_BYTES}-byte limit")]
    HeaderTooLarge { header: u64 },
    #[error("header is not valid JSON: {0}")]
    HeaderJson(String),
    #[error("tensor '{tensor}': data offsets {start}..{end} are outside the {data_len} data bytes")]
    OffsetOutOfRange { tensor: String, start: u64, end: u64, data_len: usize },
    #[error("safetensors: {0}")]
    Safetensors(String),
    #[error("metadata is missing (no __metadata__ in the header)")]
    NoMetadata,
    #[error("metadata key '{0}' is missing")]
    MissingKey(&'static str),
    #[error("format is '{0}', expected '{FORMAT_NAME}'")]
    BadFormatName(String),
    #[error("format version {found} is not supported (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion { found: String },
    #[error("metadata '{key}' = '{value}' is not valid: {why}")]
    BadMetadata { key: &'static str, value: String, why: &'static str },
    #[error("dimensions overflow: {0}")]
    Overflow(&'static str),
    #[error("tensor '{0}' is missing")]
    MissingTensor(&'static str),
    #[error("tensor '{0}' is not expected for this method")]
    UnexpectedTensor(String),
    #[error("tensor '{tensor}' has dtype {found}, expected {expected}")]
    BadDtype { tensor: &'static str, found: String, expected: &'static str },
    #[error("tensor '{tensor}' has shape {found:?}, expected {expected:?}")]
    BadShape { tensor: &'static str, found: Vec<usize>, expected: Vec<usize> },
    #[error("tensor '{0}' is not aligned for a zero-copy read")]
    Misaligned(&'static str),
    #[error("tensor '{tensor}' holds a non-finite value at index {index}")]
    NonFinite { tensor: &'static str, index: usize },
    #[error("row_of_token maps token {token} to row {row}, outside the table")]
    BadRowOrder { token: usize, row: usize },
    #[error("token id {token} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { token: usize, vocab: usize },
    #[error("tier {tier}: {why}")]
    BadTier { tier: usize, why: String },
}

/// One run of rows of a mixed table, all stored with `bits`-bit codes in blocks of `block`
/// values sharing one f16 scale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierSpec {
    pub rows: usize,
    pub bits: u8,
    pub block: usize,
}

impl TierSpec {
    /// Stored bits per table value, scales included.
    pub fn bits_per_value(&self) -> f64 {
        f64::from(self.bits) + 16.0 / self.block as f64
    }
    /// Bytes of one row's codes (d values).
    pub fn row_bytes(&self, d: usize) -> usize {
        d * self.bits as usize / 8
    }
    /// Check that rows of width `d` pack into whole bytes per block.
    fn check(&self, d: usize, tier: usize) -> Result<(), FormatError> {
        let bad = |why: String| Err(FormatError::BadTier { tier, why });
        if !(1..=8).contains(&self.bits) {
            return bad(format!("{} bits per value, expected 1 to 8", self.bits));
        }
        if self.block == 0 || d % self.block != 0 {
            return bad(format!("block of {} does not divide the width {d}", self.block));
        }
        if (self.block * self.bits as usize) % 8 != 0 {
            return bad(format!("a block of {} {}-bit values is not a whole number of bytes", self.block, self.bits));
        }
        Ok(())
    }
}

/// A tier's codes and scales, borrowed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tier<'a> {
    pub spec: TierSpec,
    pub codes: &'a [u8],
    pub scale: &'a [f16],
}

/// The zero point of block `b` in one row's packed zero points (two blocks a byte, low
/// nibble first: ONNX Runtime's `MatMulNBits` layout, used by the body's int4 weights).
pub fn q4_zero(row: &[u8], b: usize) -> u8 {
    (row[b / 2] >> (4 * (b % 2))) & 15
}

/// Decode one block of 4-bit codes: two values a byte, low nibble first, x = (q - zero) *
/// scale. The table's ggml Q4_0 blocks have zero 8; the body's int4 weights
/// (`encode::expand_stored_weights`) store a zero point per block.
pub fn decode_q4_block(src: &[u8], scale: f32, zero: u8, dst: &mut [f32]) {
    let z = zero as i32;
    for (pair, &byte) in dst.chunks_exact_mut(2).zip(src) {
        pair[0] = ((byte & 0x0f) as i32 - z) as f32 * scale;
        pair[1] = ((byte >> 4) as i32 - z) as f32 * scale;
    }
}

/// Decode one row of `bits`-bit codes (LSB-first bit stream) with per-block scales;
/// `Err(block)` names a block whose scale is not finite.
pub fn decode_kbit(codes: &[u8], scales: &[f16], bits: u8, block: usize, out: &mut [f32]) -> Result<(), usize> {
    let b = bits as usize;
    let mask = (1u16 << b) - 1;
    let offset = (1i32 << b) - 1;
    for (blk, (dst, s)) in out.chunks_exact_mut(block).zip(scales).enumerate() {
        let s = s.to_f32();
        if !s.is_finite() {
            return Err(blk);
        }
        for (i, o) in dst.iter_mut().enumerate() {
            let bit = (blk * block + i) * b;
            let lo = codes[bit / 8] as u16;
            let hi = codes.get(bit / 8 + 1).copied().unwrap_or(0) as u16;
            let q = (((hi << 8) | lo) >> (bit % 8)) & mask;
            *o = (2 * q as i32 - offset) as f32 * s;
        }
    }
    Ok(())
}

/// What the metadata of a factor file declares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub method: Method,
    pub vocab: usize,
    pub dim: usize,
    /// Rank k of a factorized table.
    pub rank: Option<usize>,
    /// Storage of the codes of a factorized table.
    pub codes: Option<CodesDtype>,
    /// Rows stored in an order of their own (corpus frequency; for mixed, by tier and
    /// then frequency), with a `row_of_token` tensor.
    pub frequency_order: bool,
    /// The tiers of a mixed table, in row order (empty for other methods).
    pub tiers: Vec<TierSpec>,
    /// sha256 of the checkpoint the table was read from.
    pub source_sha256: String,
    /// Training and evaluation metrics (free-form JSON object).
    pub metrics: serde_json::Value,
}

#[derive(Clone, Copy, Debug)]
pub enum Codes<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Int8 { q: &'a [i8], scale: &'a [f32] },
}

/// The stored table, borrowed from the file's bytes (or from buffers being written).
#[derive(Clone, Copy, Debug)]
pub enum Table<'a> {
    Dense(&'a [f32]),
    LowRank { codes: Codes<'a>, decoder: &'a [f32], bias: &'a [f32] },
    Int8Rows { q: &'a [i8], scale: &'a [f32] },
    Q4Blocks { q: &'a [u8], scale: &'a [f16] },
    /// The first `n` entries of `tiers` are used.
    Tiered { tiers: [Tier<'a>; MAX_TIERS], n: usize },
}

/// A validated factor file: header plus zero-copy views of its tensors.
#[derive(Clone, Debug)]
pub struct Factors<'a> {
    pub header: Header,
    pub table: Table<'a>,
    /// `row_of_token[t]`: the stored row of token t when rows are kept in corpus-frequency
    /// order (frequent tokens share pages, so a mapped file stays mostly cold).
    pub row_of_token: Option<&'a [u32]>,
}

impl<'a> Factors<'a> {
    pub fn vocab(&self) -> usize {
        self.header.vocab
    }
    pub fn dim(&self) -> usize {
        self.header.dim
    }

    /// Decode the embedding of `token` into `out` (length d), reading only that row.
    pub fn decode_row(&self, token: usize, out: &mut [f32]) -> Result<(), FormatError> {
        let (v, d) = (self.header.vocab, self.header.dim);
        if token >= v {
            return Err(FormatError::TokenOutOfRange { token, vocab: v });
        }
        let token = match self.row_of_token {
            Some(rows) => match rows[token] as usize {
                r if r < v => r,
                r => return Err(FormatError::BadRowOrder { token, row: r }),
            },
            None => token,
        };
        debug_assert_eq!(out.len(), d);
        let row = |len: usize| token * len..(token + 1) * len;
        match self.table {
            Table::Dense(t) => out.copy_from_slice(&t[row(d)]),
            Table::Int8Rows { q, scale } => {
                let s = finite(scale[token], "row_scale", token)?;
                for (o, &x) in out.iter_mut().zip(&q[row(d)]) {
                    *o = x as f32 * s;
                }
            }
            Table::Q4Blocks { q, scale } => {
                let nb = d / Q4_BLOCK;
                let bytes = &q[row(d / 2)];
                for b in 0..nb {
                    let s = finite(scale[token * nb + b].to_f32(), "block_scale", token * nb + b)?;
                    decode_q4_block(&bytes[b * Q4_BLOCK / 2..(b + 1) * Q4_BLOCK / 2], s, 8, &mut out[b * Q4_BLOCK..(b + 1) * Q4_BLOCK]);
                }
            }
            Table::Tiered { tiers, n } => {
                let mut first = 0;
                for t in &tiers[..n] {
                    if token < first + t.spec.rows {
                        let (r, nb, rb) = (token - first, d / t.spec.block, t.spec.row_bytes(d));
                        let scales = &t.scale[r * nb..(r + 1) * nb];
                        return decode_kbit(&t.codes[r * rb..(r + 1) * rb], scales, t.spec.bits, t.spec.block, out)
                            .map_err(|blk| FormatError::NonFinite { tensor: "tier scale", index: r * nb + blk });
                    }
                    first += t.spec.rows;
                }
                unreachable!("parse checked that the tiers cover every row");
            }
            Table::LowRank { codes, decoder, bias } => {
                let k = decoder.len() / d;
                out.copy_from_slice(bias);
                let mut add = |j: usize, c: f32| {
                    for (o, w) in out.iter_mut().zip(&decoder[j * d..(j + 1) * d]) {
                        *o += c * w;
                    }
                };
                match codes {
                    Codes::F32(z) => z[row(k)].iter().enumerate().for_each(|(j, &c)| add(j, c)),
                    Codes::F16(z) => z[row(k)].iter().enumerate().for_each(|(j, c)| add(j, c.to_f32())),
                    Codes::Int8 { q, scale } => {
                        let s = finite(scale[token], "codes_scale", token)?;
                        q[row(k)].iter().enumerate().for_each(|(j, &c)| add(j, c as f32 * s));
                    }
                }
            }
        }
        Ok(())
    }

    /// Bytes of tensor data (the table as stored, without the header).
    pub fn table_bytes(&self) -> usize {
        fn b<T>(s: &[T]) -> usize {
            std::mem::size_of_val(s)
        }
        match self.table {
            Table::Dense(t) => b(t),
            Table::Int8Rows { q, scale } => b(q) + b(scale),
            Table::Q4Blocks { q, scale } => b(q) + b(scale),
            Table::Tiered { tiers, n } => tiers[..n].iter().map(|t| b(t.codes) + b(t.scale)).sum(),
            Table::LowRank { codes, decoder, bias } => {
                b(decoder)
                    + b(bias)
                    + match codes {
                        Codes::F32(z) => b(z),
                        Codes::F16(z) => b(z),
                        Codes::Int8 { q, scale } => b(q) + b(scale),
                    }
            }
        }
    }

    /// Number of stored parameters (scales count as parameters).
    pub fn param_count(&self) -> usize {
        match self.table {
            Table::Dense(t) => t.len(),
            Table::Int8Rows { q, scale } => q.len() + scale.len(),
            Table::Q4Blocks { q, scale } => q.len() * 2 + scale.len(),
            Table::Tiered { tiers, n } => tiers[..n].iter().map(|t| t.codes.len() * 8 / t.spec.bits as usize + t.scale.len()).sum(),
            Table::LowRank { codes, decoder, bias } => {
                decoder.len()
                    + bias.len()
                    + match codes {
                        Codes::F32(z) => z.len(),
                        Codes::F16(z) => z.len(),
                        Codes::Int8 { q, scale } => q.len() + scale.len(),
                    }
            }
        }
    }
}

fn finite(x: f32, tensor: &'static str, index: usize) -> Result<f32, FormatError> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(FormatError::NonFinite { tensor, index })
    }
}

/// Parse and validate a factor file held in `bytes`.
pub fn parse(bytes: &[u8]) -> Result<Factors<'_>, FormatError> {
    precheck_offsets(bytes)?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| FormatError::Safetensors(format!("{e:?}")))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| FormatError::Safetensors(format!("{e:?}")))?;
    let meta = meta.metadata().as_ref().ok_or(FormatError::NoMetadata)?;
    let header = parse_header(meta)?;
    let (v, d) = (header.vocab, header.dim);
    let vd = v.checked_mul(d).ok_or(FormatError::Overflow("vocab * dim"))?;

    let nt = header.tiers.len();
    let allowed: &[&str] = match header.method {
        Method::None => &["table"],
        Method::Int8 => &["rows", "row_scale"],
        Method::Int4 => &["blocks", "block_scale"],
        Method::Svd | Method::Direction => &["codes", "codes_scale", "decoder", "bias"],
        Method::Mixed => &[],
    };
    let is_tier_tensor = |name: &str| TIER_CODES[..nt].contains(&name) || TIER_SCALE[..nt].contains(&name);
    for name in st.names() {
        if !allowed.contains(&name.as_str()) && !is_tier_tensor(name) && !(header.frequency_order && name == "row_of_token") {
            return Err(FormatError::UnexpectedTensor(name.clone()));
        }
    }

    let table = match header.method {
        Method::None => Table::Dense(cast(&st, "table", Dtype::F32, &[v, d])?),
        Method::Int8 => Table::Int8Rows {
            q: cast(&st, "rows", Dtype::I8, &[v, d])?,
            scale: cast(&st, "row_scale", Dtype::F32, &[v])?,
        },
        Method::Int4 => {
            if d % Q4_BLOCK != 0 {
                return Err(FormatError::BadMetadata { key: "dim", value: d.to_string(), why: "int4 needs a multiple of 32" });
            }
            Table::Q4Blocks {
                q: cast(&st, "blocks", Dtype::U8, &[v, d / 2])?,
                scale: cast(&st, "block_scale", Dtype::F16, &[v, d / Q4_BLOCK])?,
            }
        }
        Method::Mixed => {
            let mut tiers = [Tier::default(); MAX_TIERS];
            for (i, spec) in header.tiers.iter().enumerate() {
                // parse_header checked each spec and that the rows sum to V
                tiers[i] = Tier {
                    spec: *spec,
                    codes: cast(&st, TIER_CODES[i], Dtype::U8, &[spec.rows, spec.row_bytes(d)])?,
                    scale: cast(&st, TIER_SCALE[i], Dtype::F16, &[spec.rows, d / spec.block])?,
                };
            }
            Table::Tiered { tiers, n: nt }
        }
        Method::Svd | Method::Direction => {
            let k = header.rank.ok_or(FormatError::MissingKey("rank"))?;
            k.checked_mul(d).ok_or(FormatError::Overflow("rank * dim"))?;
            v.checked_mul(k).ok_or(FormatError::Overflow("vocab * rank"))?;
            let codes = match header.codes.ok_or(FormatError::MissingKey("codes"))? {
                CodesDtype::F32 => Codes::F32(cast(&st, "codes", Dtype::F32, &[v, k])?),
                CodesDtype::F16 => Codes::F16(cast(&st, "codes", Dtype::F16, &[v, k])?),
                CodesDtype::Int8 => Codes::Int8 {
                    q: cast(&st, "codes", Dtype::I8, &[v, k])?,
                    scale: cast(&st, "codes_scale", Dtype::F32, &[v])?,
                },
            };
            if !matches!(codes, Codes::Int8 { .. }) && st.names().iter().any(|n| *n == "codes_scale") {
                return Err(FormatError::UnexpectedTensor("codes_scale".into()));
            }
            let decoder: &[f32] = cast(&st, "decoder", Dtype::F32, &[k, d])?;
            let bias: &[f32] = cast(&st, "bias", Dtype::F32, &[d])?;
            all_finite(decoder, "decoder")?;
            all_finite(bias, "bias")?;
            Table::LowRank { codes, decoder, bias }
        }
    };
    let _ = vd;
    let row_of_token = if header.frequency_order { Some(cast::<u32>(&st, "row_of_token", Dtype::U32, &[v])?) } else { None };
    Ok(Factors { header, table, row_of_token })
}

/// safetensors adds the data end to the header size without overflow checks; reject
/// offsets beyond the data before handing the buffer to it.
fn precheck_offsets(bytes: &[u8]) -> Result<(), FormatError> {
    if bytes.len() < 8 {
        return Err(FormatError::TooShort { len: bytes.len() });
    }
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(n8);
    if n > MAX_HEADER_BYTES {
        return Err(FormatError::HeaderTooLarge { header: n });
    }
    let data_start = usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|end| *end <= bytes.len())
        .ok_or(FormatError::HeaderBeyondFile { header: n, len: bytes.len() })?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..data_start]).map_err(|e| FormatError::HeaderJson(e.to_string()))?;
    let data_len = bytes.len() - data_start;
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let offs = info.get("data_offsets").and_then(|o| o.as_array());
        let get = |i: usize| offs.and_then(|o| o.get(i)).and_then(|x| x.as_u64());
        if let (Some(start), Some(end)) = (get(0), get(1)) {
            if start > end || end > data_len as u64 {
                return Err(FormatError::OffsetOutOfRange { tensor: name.clone(), start, end, data_len });
            }
        }
    }
    Ok(())
}

fn parse_header(meta: &HashMap<String, String>) -> Result<Header, FormatError> {
    let get = |k: &'static str| meta.get(k).map(String::as_str).ok_or(FormatError::MissingKey(k));
    let format = get("format")?;
    if format != FORMAT_NAME {
        return Err(FormatError::BadFormatName(format.to_string()));
    }
    let version = get("version")?;
    if version.parse::<u32>().ok() != Some(FORMAT_VERSION) {
        return Err(FormatError::UnsupportedVersion { found: version.to_string() });
    }
    let method_s = get("method")?;
    let method = Method::parse(method_s).ok_or(FormatError::BadMetadata {
        key: "method",
        value: method_s.to_string(),
        why: "unknown method",
    })?;
    let positive = |k: &'static str| -> Result<usize, FormatError> {
        let s = get(k)?;
        s.parse::<usize>().ok().filter(|x| *x > 0).ok_or(FormatError::BadMetadata {
            key: k,
            value: s.to_string(),
            why: "expected a positive integer",
        })
    };
    let vocab = positive("vocab")?;
    let dim = positive("dim")?;
    let (rank, codes) = if method.is_factorized() {
        let k = positive("rank")?;
        if k >= dim {
            return Err(FormatError::BadMetadata { key: "rank", value: k.to_string(), why: "rank must be below dim" });
        }
        let c = get("codes")?;
        let codes = CodesDtype::parse(c).ok_or(FormatError::BadMetadata {
            key: "codes",
            value: c.to_string(),
            why: "expected f32, f16 or int8",
        })?;
        (Some(k), Some(codes))
    } else {
        (None, None)
    };
    let source_sha256 = meta.get("source_sha256").cloned().unwrap_or_default();
    let metrics = match meta.get("metrics") {
        Some(m) => serde_json::from_str(m).map_err(|_| FormatError::BadMetadata {
            key: "metrics",
            value: m.chars().take(40).collect(),
            why: "not JSON",
        })?,
        None => serde_json::Value::Null,
    };
    let frequency_order = match meta.get("row_order").map(String::as_str) {
        None | Some("token") => false,
        Some("frequency") => true,
        Some(other) => return Err(FormatError::BadMetadata { key: "row_order", value: other.to_string(), why: "expected token or frequency" }),
    };
    let tiers = if method == Method::Mixed { parse_tiers(get("tiers")?, vocab, dim)? } else { Vec::new() };
    Ok(Header { method, vocab, dim, rank, codes, frequency_order, tiers, source_sha256, metrics })
}

fn parse_tiers(s: &str, vocab: usize, dim: usize) -> Result<Vec<TierSpec>, FormatError> {
    let bad = |why| FormatError::BadMetadata { key: "tiers", value: s.chars().take(80).collect(), why };
    let tiers: Vec<TierSpec> = serde_json::from_str(s).map_err(|_| bad("expected a JSON list of {rows, bits, block}"))?;
    if tiers.is_empty() || tiers.len() > MAX_TIERS {
        return Err(bad("expected 1 to 12 tiers"));
    }
    let mut rows = 0usize;
    for (i, t) in tiers.iter().enumerate() {
        t.check(dim, i)?;
        rows = rows.checked_add(t.rows).ok_or(FormatError::Overflow("tier rows"))?;
        t.rows.checked_mul(dim).ok_or(FormatError::Overflow("tier rows * dim"))?;
    }
    if rows != vocab {
        return Err(bad("the tiers' rows do not add up to the vocabulary"));
    }
    Ok(tiers)
}

trait Elem: bytemuck::Pod {
    const DTYPE: Dtype;
}
impl Elem for f32 {
    const DTYPE: Dtype = Dtype::F32;
}
impl Elem for f16 {
    const DTYPE: Dtype = Dtype::F16;
}
impl Elem for i8 {
    const DTYPE: Dtype = Dtype::I8;
}
impl Elem for u8 {
    const DTYPE: Dtype = Dtype::U8;
}
impl Elem for u32 {
    const DTYPE: Dtype = Dtype::U32;
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "F32",
        Dtype::F16 => "F16",
        Dtype::I8 => "I8",
        Dtype::U8 => "U8",
        Dtype::U32 => "U32",
        _ => "other",
    }
}

/// Check dtype and shape of tensor `name`, then cast its bytes without copying.
fn cast<'a, T: Elem>(st: &SafeTensors<'a>, name: &'static str, dtype: Dtype, shape: &[usize]) -> Result<&'a [T], FormatError> {
    debug_assert_eq!(dtype, T::DTYPE);
    let view: TensorView<'a> = st.tensor(name).map_err(|_| FormatError::MissingTensor(name))?;
    if view.dtype() != dtype {
        return Err(FormatError::BadDtype { tensor: name, found: format!("{:?}", view.dtype()), expected: dtype_name(dtype) });
    }
    if view.shape() != shape {
        return Err(FormatError::BadShape { tensor: name, found: view.shape().to_vec(), expected: shape.to_vec() });
    }
    // `view.data()` borrows from the file bytes ('a), not from the view.
    let data: &'a [u8] = view.data();
    bytemuck::try_cast_slice(data).map_err(|_| FormatError::Misaligned(name))
}

fn all_finite(xs: &[f32], tensor: &'static str) -> Result<(), FormatError> {
    match xs.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(FormatError::NonFinite { tensor, index }),
        None => Ok(()),
    }
}

/// Owned tensors of a table, ready to be written or viewed as [`Factors`].
#[derive(Clone, Debug)]
pub enum OwnedTable {
    Dense(Vec<f32>),
    LowRank { codes: OwnedCodes, decoder: Vec<f32>, bias: Vec<f32> },
    Int8Rows { q: Vec<i8>, scale: Vec<f32> },
    Q4Blocks { q: Vec<u8>, scale: Vec<f16> },
    /// Built in its final row order (the tiers fix which rows go where).
    Tiered(Vec<(TierSpec, Vec<u8>, Vec<f16>)>),
}

#[derive(Clone, Debug)]
pub enum OwnedCodes {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Int8 { q: Vec<i8>, scale: Vec<f32> },
}

/// Reorder the rows of a row-major buffer: new row i is old row `order[i]`.
fn permute<T: Copy>(xs: &[T], width: usize, order: &[usize]) -> Vec<T> {
    order.iter().flat_map(|&r| xs[r * width..(r + 1) * width].iter().copied()).collect()
}

impl OwnedTable {
    /// The same table with its rows stored in `order` (`order[i]` = token of row i).
    pub fn permuted(&self, order: &[usize], dim: usize) -> OwnedTable {
        match self {
            OwnedTable::Dense(t) => OwnedTable::Dense(permute(t, dim, order)),
            OwnedTable::Int8Rows { q, scale } => OwnedTable::Int8Rows { q: permute(q, dim, order), scale: permute(scale, 1, order) },
            OwnedTable::Q4Blocks { q, scale } => {
                OwnedTable::Q4Blocks { q: permute(q, dim / 2, order), scale: permute(scale, dim / Q4_BLOCK, order) }
            }
            OwnedTable::Tiered(_) => unreachable!("a mixed table is built in its final row order"),
            OwnedTable::LowRank { codes, decoder, bias } => {
                let k = decoder.len() / dim;
                let codes = match codes {
                    OwnedCodes::F32(z) => OwnedCodes::F32(permute(z, k, order)),
                    OwnedCodes::F16(z) => OwnedCodes::F16(permute(z, k, order)),
                    OwnedCodes::Int8 { q, scale } => OwnedCodes::Int8 { q: permute(q, k, order), scale: permute(scale, 1, order) },
                };
                OwnedTable::LowRank { codes, decoder: decoder.clone(), bias: bias.clone() }
            }
        }
    }

    pub fn view(&self) -> Table<'_> {
        match self {
            OwnedTable::Dense(t) => Table::Dense(t),
            OwnedTable::Int8Rows { q, scale } => Table::Int8Rows { q, scale },
            OwnedTable::Q4Blocks { q, scale } => Table::Q4Blocks { q, scale },
            OwnedTable::Tiered(ts) => {
                let mut tiers = [Tier::default(); MAX_TIERS];
                for (slot, (spec, codes, scale)) in tiers.iter_mut().zip(ts) {
                    *slot = Tier { spec: *spec, codes, scale };
                }
                Table::Tiered { tiers, n: ts.len() }
            }
            OwnedTable::LowRank { codes, decoder, bias } => Table::LowRank {
                codes: match codes {
                    OwnedCodes::F32(z) => Codes::F32(z),
                    OwnedCodes::F16(z) => Codes::F16(z),
                    OwnedCodes::Int8 { q, scale } => Codes::Int8 { q, scale },
                },
                decoder,
                bias,
            },
        }
    }
}

/// Serialize a table with its header into factor-file bytes.
pub fn serialize(header: &Header, table: &Table<'_>, row_of_token: Option<&[u32]>) -> Result<Vec<u8>, FormatError> {
    let (v, d) = (header.vocab, header.dim);
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT_NAME.to_string());
    meta.insert("version".to_string(), FORMAT_VERSION.to_string());
    meta.insert("method".to_string(), header.method.name().to_string());
    meta.insert("vocab".to_string(), v.to_string());
    meta.insert("dim".to_string(), d.to_string());
    if let Some(k) = header.rank {
        meta.insert("rank".to_string(), k.to_string());
    }
    if let Some(c) = header.codes {
        meta.insert("codes".to_string(), c.name().to_string());
    }
    meta.insert("source_sha256".to_string(), header.source_sha256.clone());
    if header.frequency_order {
        meta.insert("row_order".to_string(), "frequency".to_string());
    }
    if header.method == Method::Mixed {
        meta.insert("tiers".to_string(), serde_json::to_string(&header.tiers).map_err(|e| FormatError::Safetensors(e.to_string()))?);
    }
    meta.insert("metrics".to_string(), header.metrics.to_string());

    let mut tensors: Vec<(&str, TensorView<'_>)> = Vec::new();
    fn add<'d>(tensors: &mut Vec<(&'static str, TensorView<'d>)>, name: &'static str, dtype: Dtype, shape: Vec<usize>, data: &'d [u8]) -> Result<(), FormatError> {
        let view = TensorView::new(dtype, shape, data).map_err(|e| FormatError::Safetensors(format!("{name}: {e:?}")))?;
        tensors.push((name, view));
        Ok(())
    }
    let k = header.rank.unwrap_or(0);
    match *table {
        Table::Dense(t) => add(&mut tensors, "table", Dtype::F32, vec![v, d], bytemuck::cast_slice(t))?,
        Table::Int8Rows { q, scale } => {
            add(&mut tensors, "rows", Dtype::I8, vec![v, d], bytemuck::cast_slice(q))?;
            add(&mut tensors, "row_scale", Dtype::F32, vec![v], bytemuck::cast_slice(scale))?;
        }
        Table::Q4Blocks { q, scale } => {
            add(&mut tensors, "blocks", Dtype::U8, vec![v, d / 2], q)?;
            add(&mut tensors, "block_scale", Dtype::F16, vec![v, d / Q4_BLOCK], bytemuck::cast_slice(scale))?;
        }
        Table::Tiered { ref tiers, n } => {
            for (i, t) in tiers[..n].iter().enumerate() {
                add(&mut tensors, TIER_CODES[i], Dtype::U8, vec![t.spec.rows, t.spec.row_bytes(d)], t.codes)?;
                add(&mut tensors, TIER_SCALE[i], Dtype::F16, vec![t.spec.rows, d / t.spec.block], bytemuck::cast_slice(t.scale))?;
            }
        }
        Table::LowRank { codes, decoder, bias } => {
            match codes {
                Codes::F32(z) => add(&mut tensors, "codes", Dtype::F32, vec![v, k], bytemuck::cast_slice(z))?,
                Codes::F16(z) => add(&mut tensors, "codes", Dtype::F16, vec![v, k], bytemuck::cast_slice(z))?,
                Codes::Int8 { q, scale } => {
                    add(&mut tensors, "codes", Dtype::I8, vec![v, k], bytemuck::cast_slice(q))?;
                    add(&mut tensors, "codes_scale", Dtype::F32, vec![v], bytemuck::cast_slice(scale))?;
                }
            }
            add(&mut tensors, "decoder", Dtype::F32, vec![k, d], bytemuck::cast_slice(decoder))?;
            add(&mut tensors, "bias", Dtype::F32, vec![d], bytemuck::cast_slice(bias))?;
        }
    }
    if let Some(rows) = row_of_token {
        add(&mut tensors, "row_of_token", Dtype::U32, vec![v], bytemuck::cast_slice(rows))?;
    }
    // safetensors orders tensors by alignment (largest dtype first) after an 8-byte
    // aligned header, so every tensor starts aligned for its own dtype.
    safetensors::serialize(tensors, &Some(meta)).map_err(|e| FormatError::Safetensors(format!("{e:?}")))
}
