//! The factor file: write -> read round trips for every method and dtype (property
//! tests), and a malformed-file table with one case per validation rule (as llama.cpp's
//! tests/test-gguf.cpp does for GGUF).
#![cfg(feature = "train")] // builds tables with embslim::train::quant

mod common;

use embslim::format::{self, CodesDtype, FormatError, Header, Method, OwnedCodes, OwnedTable, Table, TierSpec};
use embslim::train::quant;
use half::f16;
use proptest::prelude::*;
use serde_json::json;

fn header(method: Method, vocab: usize, dim: usize, rank: Option<usize>, codes: Option<CodesDtype>) -> Header {
    Header { method, vocab, dim, rank, codes, frequency_order: false, tiers: Vec::new(), source_sha256: "ab".repeat(32), metrics: json!({"token_cos_mean": 0.5}) }
}

/// A table of each kind built from `x` (V x d).
fn build(method: Method, codes: CodesDtype, x: &[f32], v: usize, d: usize, k: usize) -> (Header, OwnedTable) {
    match method {
        Method::None => (header(method, v, d, None, None), OwnedTable::Dense(x.to_vec())),
        Method::Int8 => {
            let (q, scale) = quant::int8_rows(x, d);
            (header(method, v, d, None, None), OwnedTable::Int8Rows { q, scale })
        }
        Method::Int4 => {
            let (q, scale) = quant::q4_0(x);
            (header(method, v, d, None, None), OwnedTable::Q4Blocks { q, scale })
        }
        Method::Mixed => {
            // up to three tiers of different widths, the last one possibly one row
            let bits = [8u8, 3, 1];
            let n = v.min(3);
            let mut tiers = Vec::new();
            let mut start = 0;
            for (i, &b) in bits[..n].iter().enumerate() {
                let rows = if i + 1 == n { v - start } else { (v / n).max(1) };
                let spec = TierSpec { rows, bits: b, block: 32 };
                let (q, s) = quant::kbit_rows(&x[start * d..(start + rows) * d], d, spec.bits, spec.block);
                tiers.push((spec, q, s));
                start += rows;
            }
            let h = Header { tiers: tiers.iter().map(|t| t.0).collect(), ..header(method, v, d, None, None) };
            (h, OwnedTable::Tiered(tiers))
        }
        Method::Svd | Method::Direction => {
            let z = common::noise(v * k, 7);
            let c = match codes {
                CodesDtype::F32 => OwnedCodes::F32(z),
                CodesDtype::F16 => OwnedCodes::F16(z.iter().map(|v| f16::from_f32(*v)).collect()),
                CodesDtype::Int8 => {
                    let (q, scale) = quant::int8_rows(&z, k);
                    OwnedCodes::Int8 { q, scale }
                }
            };
            let t = OwnedTable::LowRank { codes: c, decoder: common::noise(k * d, 8), bias: common::noise(d, 9) };
            (header(method, v, d, Some(k), Some(codes)), t)
        }
    }
}

fn decode_all(f: &format::Factors<'_>) -> Vec<f32> {
    let d = f.dim();
    let mut out = vec![0f32; f.vocab() * d];
    for (t, row) in out.chunks_exact_mut(d).enumerate() {
        f.decode_row(t, row).unwrap();
    }
    out
}

const METHODS: [Method; 6] = [Method::None, Method::Svd, Method::Direction, Method::Int8, Method::Int4, Method::Mixed];
const CODES: [CodesDtype; 3] = [CodesDtype::F32, CodesDtype::F16, CodesDtype::Int8];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Written then parsed, every method and code dtype decodes to exactly the rows of the
    /// in-memory table it was written from, with the same header.
    #[test]
    fn round_trip(v in 1usize..40, blocks in 1usize..4, k in 1usize..8, m in 0usize..6, c in 0usize..3, seed in 0u64..1000) {
        let d = blocks * 32;
        let x = common::noise(v * d, seed);
        let (h, t) = build(METHODS[m], CODES[c], &x, v, d, k);
        let bytes = format::serialize(&h, &t.view(), None).unwrap();
        let parsed = format::parse(&bytes).unwrap();
        prop_assert_eq!(&parsed.header, &h);
        let mem = format::Factors { header: h.clone(), table: t.view(), row_of_token: None };
        let (a, b) = (decode_all(&parsed), decode_all(&mem));
        prop_assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
        // the dense table must come back bit for bit
        if METHODS[m] == Method::None {
            prop_assert!(a.iter().zip(&x).all(|(p, q)| p.to_bits() == q.to_bits()));
        }
    }

    /// Rows stored in frequency order decode to the same embeddings as token order (mixed
    /// tables are built in their own order: see `mixed_rows_follow_their_order`).
    #[test]
    fn frequency_order_round_trip(v in 2usize..40, m in 0usize..5, seed in 0u64..1000) {
        let d = 32;
        let x = common::noise(v * d, seed);
        let (mut h, t) = build(METHODS[m], CodesDtype::F16, &x, v, d, 3);
        let freq: Vec<u64> = common::noise(v, seed + 1).iter().map(|f| (f.abs() * 100.0) as u64).collect();
        let order = embslim::train::frequency_order(&freq);
        let rows = embslim::train::row_of_token(&order);
        let permuted = t.permuted(&order, d);
        h.frequency_order = true;
        let bytes = format::serialize(&h, &permuted.view(), Some(&rows)).unwrap();
        let parsed = format::parse(&bytes).unwrap();
        prop_assert!(parsed.row_of_token.is_some());
        let mem = format::Factors { header: Header { frequency_order: false, ..h.clone() }, table: t.view(), row_of_token: None };
        prop_assert_eq!(decode_all(&parsed), decode_all(&mem));
    }

    /// int8 rows reconstruct within half a quantization step; Q4_0 within one step of its block.
    #[test]
    fn quantizer_error_bounds(v in 1usize..20, seed in 0u64..1000) {
        let d = 64;
        let x = common::noise(v * d, seed);
        let (q, s) = quant::int8_rows(&x, d);
        for (r, row) in x.chunks_exact(d).enumerate() {
            for (j, &xv) in row.iter().enumerate() {
                prop_assert!((q[r * d + j] as f32 * s[r] - xv).abs() <= s[r] * 0.5 + 1e-6);
            }
        }
        let (q4, s4) = quant::q4_0(&x);
        let f = format::Factors { header: header(Method::Int4, v, d, None, None), table: Table::Q4Blocks { q: &q4, scale: &s4 }, row_of_token: None };
        let y = decode_all(&f);
        for (b, (xb, yb)) in x.chunks_exact(32).zip(y.chunks_exact(32)).enumerate() {
            let step = s4[b].to_f32().abs();
            for (xv, yv) in xb.iter().zip(yb) {
                // f16 rounding of the scale adds up to 8 * 2^-11 relative error
                prop_assert!((xv - yv).abs() <= step * 1.01 + 1e-6, "block {b}: {xv} vs {yv}, step {step}");
            }
        }
    }

    /// The direction-aware k-bit blocks never do worse than rounding at the min/max scale
    /// (a candidate they try), at every width: per block, squared error at most the plain
    /// quantizer's, up to the f16 rounding of the stored scale (relative 2^-11 of the
    /// block's energy: F16_SCALE_SLACK).
    #[test]
    fn kbit_blocks_beat_min_max_rounding(seed in 0u64..1000, bits in 1u8..9) {
        const F16_SCALE_SLACK: f32 = 1e-3;
        let (d, block) = (64, 32);
        let x = common::noise(4 * d, seed);
        let (q, s) = quant::kbit_rows(&x, d, bits, block);
        let top = ((1u32 << bits) - 1) as f32;
        for (r, row) in x.chunks_exact(d).enumerate() {
            let mut y = vec![0f32; d];
            let rb = d * bits as usize / 8;
            format::decode_kbit(&q[r * rb..(r + 1) * rb], &s[r * 2..(r + 1) * 2], bits, block, &mut y).unwrap();
            for (xb, yb) in row.chunks_exact(block).zip(y.chunks_exact(block)) {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                let step = amax / top;
                let plain: f32 = xb.iter().map(|v| {
                    let l = 2.0 * ((v / step + top) * 0.5).round().clamp(0.0, top) - top;
                    (v - l * step).powi(2)
                }).sum();
                let ours: f32 = xb.iter().zip(yb).map(|(a, b)| (a - b).powi(2)).sum();
                let energy: f32 = xb.iter().map(|v| v * v).sum();
                prop_assert!(ours <= plain + F16_SCALE_SLACK * energy, "bits {bits}: {ours} > {plain}");
            }
        }
    }
}

/// The mixed allocator puts every token in exactly one row, gives frequent tokens at least
/// as many bits as rare ones, keeps to the byte budget, and its rows decode (through
/// row_of_token) to the token's own embedding.
#[test]
fn mixed_rows_follow_their_order() {
    let (v, d) = (300, 64);
    let x = common::noise(v * d, 11);
    let freq: Vec<u64> = (0..v as u64).map(|t| (t * 7919) % 1000).collect();
    let budget_bits = 3.0 * (v * d) as f64;
    let m = embslim::train::mixed::compress(&x, d, Some(&freq), budget_bits).unwrap();
    let mut seen = m.order.clone();
    seen.sort();
    assert_eq!(seen, (0..v).collect::<Vec<_>>());
    let used: f64 = m.tiers.iter().map(|t| t.bits_per_value() * (t.rows * d) as f64).sum();
    assert!(used <= budget_bits, "{used} bits over the budget of {budget_bits}");
    assert!(m.tiers.len() > 1, "a 3-bit budget over 1..8-bit storages must mix: {:?}", m.tiers);
    // tiers run from most to fewest bits; by frequency within each
    let bits_of_row: Vec<f64> = m.tiers.iter().flat_map(|t| std::iter::repeat(t.bits_per_value()).take(t.rows)).collect();
    assert!(bits_of_row.windows(2).all(|w| w[0] >= w[1]));
    let h = Header { tiers: m.tiers.clone(), frequency_order: true, ..header(Method::Mixed, v, d, None, None) };
    let rows = embslim::train::row_of_token(&m.order);
    let bytes = format::serialize(&h, &m.table.view(), Some(&rows)).unwrap();
    let f = format::parse(&bytes).unwrap();
    let mut y = vec![0f32; d];
    let (mut hi, mut lo) = (0f64, 0f64);
    for t in 0..v {
        f.decode_row(t, &mut y).unwrap();
        let cos = embslim::train::direction::cosine(&x[t * d..(t + 1) * d], &y);
        // the noise rows are isotropic: even one bit keeps cos ~ sqrt(2 / pi) = 0.8
        assert!(cos > 0.7, "token {t}: cosine {cos}");
        if freq[t] >= 900 { hi += f64::from(cos) } else if freq[t] < 100 { lo += f64::from(cos) }
    }
    assert!(hi / 30.0 > lo / 30.0, "frequent tokens must be decoded better: {hi} vs {lo}");
}

/// A safetensors file from a raw header and data, for malformed cases the writer never makes.
fn raw(header: serde_json::Value, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

fn meta(method: &str, extra: &[(&str, &str)]) -> serde_json::Value {
    let mut m = json!({"format": "embslim-factors", "version": "1", "method": method, "vocab": "2", "dim": "32"});
    for (k, v) in extra {
        m[*k] = json!(v);
    }
    m
}

fn dense(meta_v: serde_json::Value) -> Vec<u8> {
    raw(json!({"__metadata__": meta_v, "table": {"dtype": "F32", "shape": [2, 32], "data_offsets": [0, 256]}}), &[0u8; 256])
}

/// A mixed table of 2 rows x 32 stored as one 4-bit tier, under the given `tiers` metadata.
fn mixed(tiers: Option<&str>) -> Vec<u8> {
    let extra: Vec<(&str, &str)> = tiers.map(|t| ("tiers", t)).into_iter().collect();
    raw(
        json!({"__metadata__": meta("mixed", &extra),
               "tier0.codes": {"dtype": "U8", "shape": [2, 16], "data_offsets": [0, 32]},
               "tier0.scale": {"dtype": "F16", "shape": [2, 1], "data_offsets": [32, 36]}}),
        &[0u8; 36],
    )
}

fn lowrank(decoder: &[f32], bias: &[f32]) -> Vec<u8> {
    let (v, d, k) = (2usize, 32usize, 2usize);
    let mut data = vec![0u8; v * k * 4];
    data.extend(decoder.iter().flat_map(|x| x.to_le_bytes()));
    data.extend(bias.iter().flat_map(|x| x.to_le_bytes()));
    let (c, dd) = (v * k * 4, k * d * 4);
    raw(
        json!({"__metadata__": meta("svd", &[("rank", "2"), ("codes", "f32")]),
               "codes": {"dtype": "F32", "shape": [v, k], "data_offsets": [0, c]},
               "decoder": {"dtype": "F32", "shape": [k, d], "data_offsets": [c, c + dd]},
               "bias": {"dtype": "F32", "shape": [d], "data_offsets": [c + dd, c + dd + d * 4]}}),
        &data,
    )
}

#[test]
fn malformed_factor_files_are_rejected_by_the_rule_they_break() {
    use FormatError as E;
    let good = dense(meta("none", &[]));
    assert!(format::parse(&good).is_ok(), "the baseline case must parse");
    let mut nan_dec = vec![0.5f32; 64];
    nan_dec[3] = f32::NAN;
    let mut inf_bias = vec![0.0f32; 32];
    inf_bias[31] = f32::INFINITY;
    let mut trailing = good.clone();
    trailing.extend([0u8; 4]);
    let mut long_header = good.clone();
    long_header[..8].copy_from_slice(&(good.len() as u64).to_le_bytes());
    let mut huge_header = good.clone();
    huge_header[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());

    type Check = fn(&FormatError) -> bool;
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        ("empty file", vec![], |e| matches!(e, E::TooShort { .. })),
        ("header length beyond the file", long_header, |e| matches!(e, E::HeaderBeyondFile { .. })),
        ("header length over the limit", huge_header, |e| matches!(e, E::HeaderTooLarge { .. })),
        ("header length u64::MAX", { let mut b = good.clone(); b[..8].copy_from_slice(&u64::MAX.to_le_bytes()); b }, |e| matches!(e, E::HeaderTooLarge { .. })),
        ("only the length", good[..8].to_vec(), |e| matches!(e, E::HeaderBeyondFile { .. })),
        ("header not UTF-8", { let mut b = 8u64.to_le_bytes().to_vec(); b.extend(b"{\"\xff\":{}}"); b }, |e| matches!(e, E::HeaderJson(_))),
        ("header JSON not an object", { let mut b = 2u64.to_le_bytes().to_vec(); b.extend(b"[]"); b }, |e| matches!(e, E::HeaderJson(_))),
        ("tensor entry not an object", raw(json!({"__metadata__": meta("none", &[]), "table": 5}), &[0u8; 256]), |e| matches!(e, E::Safetensors(_))),
        ("metadata value not a string", raw(json!({"__metadata__": {"format": 1}, "table": {"dtype": "F32", "shape": [2, 32], "data_offsets": [0, 256]}}), &[0u8; 256]), |e| matches!(e, E::Safetensors(_))),
        ("metrics not JSON", dense(meta("none", &[("metrics", "{oops")])), |e| matches!(e, E::BadMetadata { key: "metrics", .. })),
        ("version not a number", dense(meta("none", &[("version", "1.0")])), |e| matches!(e, E::UnsupportedVersion { .. })),
        ("header not JSON", { let mut b = 5u64.to_le_bytes().to_vec(); b.extend(b"{{{{{"); b }, |e| matches!(e, E::HeaderJson(_))),
        ("offset out of range", raw(json!({"__metadata__": meta("none", &[]), "table": {"dtype": "F32", "shape": [2, 32], "data_offsets": [0, 1024]}}), &[0u8; 256]), |e| matches!(e, E::OffsetOutOfRange { .. })),
        ("offset end before start", raw(json!({"__metadata__": meta("none", &[]), "table": {"dtype": "F32", "shape": [2, 32], "data_offsets": [200, 100]}}), &[0u8; 256]), |e| matches!(e, E::OffsetOutOfRange { .. })),
        ("overlapping offsets", raw(json!({"__metadata__": meta("int8", &[]), "rows": {"dtype": "I8", "shape": [2, 32], "data_offsets": [0, 64]}, "row_scale": {"dtype": "F32", "shape": [2], "data_offsets": [60, 68]}}), &[0u8; 72]), |e| matches!(e, E::Safetensors(_))),
        ("trailing bytes", trailing, |e| matches!(e, E::Safetensors(_))),
        ("shape product overflows", raw(json!({"__metadata__": meta("none", &[]), "table": {"dtype": "F32", "shape": [usize::MAX / 2, 4], "data_offsets": [0, 256]}}), &[0u8; 256]), |e| matches!(e, E::Safetensors(_))),
        ("declared dims overflow", dense(meta("none", &[("vocab", &usize::MAX.to_string()), ("dim", "4")])), |e| matches!(e, E::Overflow(_) | E::BadShape { .. })),
        ("no metadata", raw(json!({"table": {"dtype": "F32", "shape": [2, 32], "data_offsets": [0, 256]}}), &[0u8; 256]), |e| matches!(e, E::NoMetadata)),
        ("missing format key", dense(json!({"version": "1", "method": "none", "vocab": "2", "dim": "32"})), |e| matches!(e, E::MissingKey("format"))),
        ("bad format name", dense(meta("none", &[("format", "gguf")])), |e| matches!(e, E::BadFormatName(_))),
        ("past version", dense(meta("none", &[("version", "0")])), |e| matches!(e, E::UnsupportedVersion { .. })),
        ("future version", dense(meta("none", &[("version", "2")])), |e| matches!(e, E::UnsupportedVersion { .. })),
        ("unknown method", dense(meta("pca", &[])), |e| matches!(e, E::BadMetadata { key: "method", .. })),
        ("vocab not a number", dense(meta("none", &[("vocab", "many")])), |e| matches!(e, E::BadMetadata { key: "vocab", .. })),
        ("zero dim", dense(meta("none", &[("dim", "0")])), |e| matches!(e, E::BadMetadata { key: "dim", .. })),
        ("rank not below dim", raw(json!({"__metadata__": meta("svd", &[("rank", "32"), ("codes", "f32")])}), &[]), |e| matches!(e, E::BadMetadata { key: "rank", .. })),
        ("unknown codes dtype", raw(json!({"__metadata__": meta("svd", &[("rank", "2"), ("codes", "f8")])}), &[]), |e| matches!(e, E::BadMetadata { key: "codes", .. })),
        ("missing tensor", raw(json!({"__metadata__": meta("none", &[])}), &[]), |e| matches!(e, E::MissingTensor("table"))),
        ("unexpected tensor", raw(json!({"__metadata__": meta("none", &[]), "table": {"dtype": "F32", "shape": [2, 32], "data_offsets": [0, 256]}, "extra": {"dtype": "U8", "shape": [1], "data_offsets": [256, 257]}}), &[0u8; 257]), |e| matches!(e, E::UnexpectedTensor(_))),
        ("dtype not allowed", raw(json!({"__metadata__": meta("none", &[]), "table": {"dtype": "F64", "shape": [2, 16], "data_offsets": [0, 256]}}), &[0u8; 256]), |e| matches!(e, E::BadDtype { tensor: "table", .. })),
        ("shape disagrees with dims", raw(json!({"__metadata__": meta("none", &[]), "table": {"dtype": "F32", "shape": [4, 16], "data_offsets": [0, 256]}}), &[0u8; 256]), |e| matches!(e, E::BadShape { tensor: "table", .. })),
        ("NaN in decoder", lowrank(&nan_dec, &[0.0; 32]), |e| matches!(e, E::NonFinite { tensor: "decoder", index: 3 })),
        ("inf in bias", lowrank(&[0.5; 64], &inf_bias), |e| matches!(e, E::NonFinite { tensor: "bias", index: 31 })),
        ("int4 dim not a multiple of 32", raw(json!({"__metadata__": meta("int4", &[("dim", "48")])}), &[]), |e| matches!(e, E::BadMetadata { key: "dim", .. })),
        ("mixed without tiers", mixed(None), |e| matches!(e, E::MissingKey("tiers"))),
        ("tiers not JSON", mixed(Some("[{rows:2")), |e| matches!(e, E::BadMetadata { key: "tiers", .. })),
        ("no tiers", mixed(Some("[]")), |e| matches!(e, E::BadMetadata { key: "tiers", .. })),
        ("13 tiers", mixed(Some(&format!("[{}]", vec![r#"{"rows":0,"bits":4,"block":32}"#; 13].join(",")))), |e| matches!(e, E::BadMetadata { key: "tiers", .. })),
        ("tier rows do not add up to vocab", mixed(Some(r#"[{"rows":3,"bits":4,"block":32}]"#)), |e| matches!(e, E::BadMetadata { key: "tiers", .. })),
        ("tier rows overflow", mixed(Some(&format!(r#"[{{"rows":{},"bits":4,"block":32}},{{"rows":{},"bits":4,"block":32}}]"#, usize::MAX, 3))), |e| matches!(e, E::Overflow(_))),
        ("tier of 9 bits", mixed(Some(r#"[{"rows":2,"bits":9,"block":32}]"#)), |e| matches!(e, E::BadTier { tier: 0, .. })),
        ("tier of 0 bits", mixed(Some(r#"[{"rows":2,"bits":0,"block":32}]"#)), |e| matches!(e, E::BadTier { tier: 0, .. })),
        ("tier block not dividing dim", mixed(Some(r#"[{"rows":1,"bits":4,"block":32},{"rows":1,"bits":4,"block":24}]"#)), |e| matches!(e, E::BadTier { tier: 1, .. })),
        ("tier block not whole bytes", mixed(Some(r#"[{"rows":2,"bits":3,"block":4}]"#)), |e| matches!(e, E::BadTier { tier: 0, .. })),
        ("tier tensor missing", raw(json!({"__metadata__": meta("mixed", &[("tiers", r#"[{"rows":2,"bits":4,"block":32}]"#)])}), &[]), |e| matches!(e, E::MissingTensor("tier0.codes"))),
        ("tier codes of the wrong width", mixed(Some(r#"[{"rows":2,"bits":2,"block":32}]"#)), |e| matches!(e, E::BadShape { tensor: "tier0.codes", .. })),
        ("tier tensor beyond the tiers", raw(json!({"__metadata__": meta("mixed", &[("tiers", r#"[{"rows":2,"bits":4,"block":32}]"#)]),
               "tier0.codes": {"dtype": "U8", "shape": [2, 16], "data_offsets": [0, 32]},
               "tier0.scale": {"dtype": "F16", "shape": [2, 1], "data_offsets": [32, 36]},
               "tier1.codes": {"dtype": "U8", "shape": [1], "data_offsets": [36, 37]}}), &[0u8; 37]), |e| matches!(e, E::UnexpectedTensor(_))),
    ];
    let mut failures = Vec::new();
    for (name, bytes, check) in &cases {
        match format::parse(bytes) {
            Ok(_) => failures.push(format!("{name}: accepted")),
            Err(e) if !check(&e) => failures.push(format!("{name}: wrong rule: {e}")),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn misaligned_tensor_is_rejected_not_cast() {
    // rows (I8, 66 bytes) first, so row_scale (F32) starts at an odd offset.
    let bytes = raw(
        json!({"__metadata__": meta("int8", &[("dim", "33")]),
               "rows": {"dtype": "I8", "shape": [2, 33], "data_offsets": [0, 66]},
               "row_scale": {"dtype": "F32", "shape": [2], "data_offsets": [66, 74]}}),
        &[0u8; 74],
    );
    // the header is padded by nothing here, so whether the data start is 4-aligned depends
    // on its length; pad it with spaces until row_scale is misaligned in memory.
    let mut b = bytes;
    loop {
        let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let buf = b.clone();
        // the allocation is at least 8-aligned, so 8 + n + 66 decides the alignment
        if (8 + n + 66) % 4 != 0 {
            match format::parse(&buf) {
                Err(FormatError::Misaligned("row_scale")) => return,
                other => panic!("expected Misaligned, got {other:?}"),
            }
        }
        b.insert(8 + n, b' ');
        b[..8].copy_from_slice(&((n + 1) as u64).to_le_bytes());
    }
}

#[test]
fn truncated_at_every_region_is_an_error_not_a_panic() {
    let x = common::noise(3 * 64, 3);
    for m in METHODS {
        let (h, t) = build(m, CodesDtype::Int8, &x, 3, 64, 4);
        let bytes = format::serialize(&h, &t.view(), None).unwrap();
        for cut in 0..bytes.len() {
            assert!(format::parse(&bytes[..cut]).is_err(), "{m:?} truncated to {cut} bytes was accepted");
        }
        // one flipped byte anywhere must never panic (it may still parse)
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let _ = format::parse(&b).map(|f| (0..3).map(|t| f.decode_row(t, &mut [0f32; 64]).is_ok()).count());
        }
    }
}

#[test]
fn non_finite_row_scale_is_reported_when_the_row_is_decoded() {
    let x = common::noise(2 * 32, 4);
    let (q, mut scale) = quant::int8_rows(&x, 32);
    scale[1] = f32::NAN;
    let h = header(Method::Int8, 2, 32, None, None);
    let bytes = format::serialize(&h, &Table::Int8Rows { q: &q, scale: &scale }, None).unwrap();
    let f = format::parse(&bytes).unwrap();
    let mut row = [0f32; 32];
    assert!(f.decode_row(0, &mut row).is_ok());
    assert_eq!(f.decode_row(1, &mut row), Err(FormatError::NonFinite { tensor: "row_scale", index: 1 }));
    assert_eq!(f.decode_row(2, &mut row), Err(FormatError::TokenOutOfRange { token: 2, vocab: 2 }));

    // the same for a tier's block scale: row 1's second block
    let (q, mut s) = quant::kbit_rows(&common::noise(2 * 64, 5), 64, 3, 32);
    s[3] = half::f16::INFINITY;
    let spec = TierSpec { rows: 2, bits: 3, block: 32 };
    let h = Header { tiers: vec![spec], ..header(Method::Mixed, 2, 64, None, None) };
    let bytes = format::serialize(&h, &OwnedTable::Tiered(vec![(spec, q, s)]).view(), None).unwrap();
    let f = format::parse(&bytes).unwrap();
    let mut row = [0f32; 64];
    assert!(f.decode_row(0, &mut row).is_ok());
    assert!(matches!(f.decode_row(1, &mut row), Err(FormatError::NonFinite { index: 3, .. })));
}
