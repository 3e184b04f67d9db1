//! What the fuzz targets do with one input, shared with tests/fuzz_regressions.rs so a
//! saved crash input is replayed exactly as the fuzzer ran it.
//!
//! factor_file: the first byte picks the mode.
//! - even: the rest is a whole factor file (seeded with real files from `compress
//!   --table-only`), parsed, and when it parses, rows are decoded (out-of-range ids too).
//! - odd: a valid safetensors + metadata preamble is built from the next bytes (method,
//!   code dtype, vocab, dim, rank) with tensors laid out as the writer does, and the rest
//!   fills the tensor data, so the fuzzer reaches the shape, alignment and decode rules
//!   with arbitrary values (NaN, inf, huge scales) instead of spending its time on JSON.
//!
//! manifest: the input is manifest.json bytes, checked by every manifest rule.

#![allow(dead_code)]

use std::path::Path;

/// Copy `bytes` into an 8-aligned buffer, as a memory map would be.
fn aligned(bytes: &[u8]) -> Vec<u64> {
    let mut buf = vec![0u64; bytes.len().div_ceil(8)];
    let view: &mut [u8] = bytemuck_bytes(&mut buf);
    view[..bytes.len()].copy_from_slice(bytes);
    buf
}

fn bytemuck_bytes(buf: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 has no padding and any byte pattern is a valid u64; the length is exact.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), buf.len() * 8) }
}

fn parse_and_decode(file: &[u8]) {
    let buf = aligned(file);
    // SAFETY: as above, reading back the bytes just written.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), file.len()) };
    if let Ok(f) = embslim::format::parse(bytes) {
        let d = f.dim();
        if d <= 1 << 16 {
            let mut row = vec![0f32; d];
            let v = f.vocab();
            for t in (0..v.min(64)).chain([v.saturating_sub(1), v, v.saturating_add(7), usize::MAX]) {
                let _ = f.decode_row(t, &mut row);
            }
        }
        let _ = (f.table_bytes(), f.param_count());
    }
}

/// Tensors as the writer lays them out for a method: (name, dtype, shape, element size).
fn layout(method: &str, codes: &str, v: usize, d: usize, k: usize) -> Vec<(&'static str, &'static str, Vec<usize>, usize)> {
    match method {
        "none" => vec![("table", "F32", vec![v, d], 4)],
        "int8" => vec![("row_scale", "F32", vec![v], 4), ("rows", "I8", vec![v, d], 1)],
        "int4" => vec![("block_scale", "F16", vec![v, d / 32], 2), ("blocks", "U8", vec![v, d / 2], 1)],
        _ => {
            let mut t = vec![("bias", "F32", vec![d], 4), ("decoder", "F32", vec![k, d], 4)];
            match codes {
                "f32" => t.push(("codes", "F32", vec![v, k], 4)),
                "f16" => t.push(("codes", "F16", vec![v, k], 2)),
                _ => {
                    t.push(("codes_scale", "F32", vec![v], 4));
                    t.push(("codes", "I8", vec![v, k], 1));
                }
            }
            t
        }
    }
}

fn structured(data: &[u8]) {
    let [sel, v, d, k, rest @ ..] = data else { return };
    let methods = ["none", "svd", "direction", "int8", "int4"];
    let codes = ["f32", "f16", "int8"];
    let method = methods[usize::from(*sel >> 1) % methods.len()];
    let code = codes[usize::from(*sel >> 4) % codes.len()];
    // small dims (a few rows), sometimes off by the rules (dim 0, not a multiple of 32)
    let v = usize::from(*v % 9);
    let d = if sel & 0x80 != 0 { usize::from(*d % 70) } else { 32 * (1 + usize::from(*d % 3)) };
    let frequency_order = k & 0x80 != 0;
    let k = usize::from(*k % 9);
    let mut meta = serde_json::json!({
        "format": "embslim-factors", "version": "1", "method": method,
        "vocab": v.to_string(), "dim": d.to_string(), "source_sha256": "", "metrics": "{}",
    });
    if method == "svd" || method == "direction" {
        meta["rank"] = serde_json::json!(k.to_string());
        meta["codes"] = serde_json::json!(code);
    }
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), meta);
    let mut tensors = layout(method, code, v, d, k);
    if frequency_order {
        meta_row_order(&mut header);
        // 4-byte elements first, as the writer orders them
        tensors.insert(0, ("row_of_token", "U32", vec![v], 4));
    }
    let mut offset = 0usize;
    for (name, dtype, shape, size) in tensors {
        let n = shape.iter().product::<usize>() * size;
        header.insert(name.into(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}));
        offset += n;
    }
    let mut h = serde_json::to_vec(&header).unwrap_or_default();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend(h);
    // the fuzzed bytes fill the data section (cycled, so short inputs still fill it)
    let start = file.len();
    file.resize(start + offset, 0);
    if !rest.is_empty() {
        for (i, b) in file[start..].iter_mut().enumerate() {
            *b = rest[i % rest.len()];
        }
    }
    parse_and_decode(&file);
}

/// Declare rows in corpus-frequency order (a `row_of_token` tensor maps tokens to rows).
fn meta_row_order(header: &mut serde_json::Map<String, serde_json::Value>) {
    if let Some(m) = header.get_mut("__metadata__") {
        m["row_order"] = serde_json::json!("frequency");
    }
}

pub fn factor_file(data: &[u8]) {
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 1 => structured(rest),
        Some((_, rest)) => parse_and_decode(rest),
        None => parse_and_decode(data),
    }
}

pub fn manifest(data: &[u8]) {
    let _ = embslim::bundle::parse_manifest(data, Path::new("manifest.json"));
}
