//! Quantizers (host side). Their decoders live in `format::Factors::decode_row`.

use half::f16;

use crate::format::Q4_BLOCK;

/// Symmetric per-row int8: scale = max|x| / 127, q = round(x / scale).
pub fn int8_rows(x: &[f32], dim: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(x.len());
    let mut scales = Vec::with_capacity(x.len() / dim);
    for row in x.chunks_exact(dim) {
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        q.extend(row.iter().map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8));
        scales.push(scale);
    }
    (q, scales)
}

/// ggml Q4_0, as `quantize_row_q4_0_reference`: per block of 32 the value of largest
/// magnitude `m` (with its sign) maps to -8, scale = m / -8, q = min(15, trunc(x / scale + 8.5)).
/// Two values a byte: element 2i in the low nibble, 2i+1 in the high nibble.
pub fn q4_0(x: &[f32]) -> (Vec<u8>, Vec<f16>) {
    debug_assert_eq!(x.len() % Q4_BLOCK, 0);
    let mut q = Vec::with_capacity(x.len() / 2);
    let mut scales = Vec::with_capacity(x.len() / Q4_BLOCK);
    for block in x.chunks_exact(Q4_BLOCK) {
        let m = block.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let scale = m / -8.0;
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        let code = |v: f32| ((v * inv + 8.5) as i32).clamp(0, 15) as u8;
        q.extend(block.chunks_exact(2).map(|p| code(p[0]) | (code(p[1]) << 4)));
        scales.push(f16::from_f32(scale));
    }
    (q, scales)
}

/// Q4_0 layout with the scale chosen per block by least squares instead of min/max
/// (as llama.cpp's make_qx_quants): for 19 candidate inverse scales around the min/max
/// one, round, fit the scale that minimizes the block's squared error for those codes,
/// and keep the best. Same format and decoder as [`q4_0`], lower error.
pub fn q4_0_lsq(x: &[f32]) -> (Vec<u8>, Vec<f16>) {
    debug_assert_eq!(x.len() % Q4_BLOCK, 0);
    let mut q = Vec::with_capacity(x.len() / 2);
    let mut scales = Vec::with_capacity(x.len() / Q4_BLOCK);
    for block in x.chunks_exact(Q4_BLOCK) {
        let scale = q4_block_scale(block);
        let s = scale.to_f32();
        let code = |v: f32| q4_code(v, s);
        q.extend((0..Q4_BLOCK / 2).map(|p| code(block[2 * p]) | (code(block[2 * p + 1]) << 4)));
        scales.push(scale);
    }
    (q, scales)
}

/// The stored (f16) scale of one Q4_0 block, fitted by least squares as [`q4_0_lsq`]
/// describes; codes are then re-rounded against it so decoding matches what was fitted.
pub fn q4_block_scale(block: &[f32]) -> f16 {
    let m = block.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let mut best = (0f32, -1f32); // (scale, sumlx^2 / suml2), larger is better
    if m != 0.0 {
        for is in -9..=9 {
            let iscale = -(8.0 + 0.1 * is as f32) / m;
            let (mut sumlx, mut suml2) = (0f32, 0f32);
            for &v in block {
                let c = ((iscale * v).round() as i32).clamp(-8, 7);
                sumlx += c as f32 * v;
                suml2 += (c * c) as f32;
            }
            // the least-squares scale for these codes is sumlx / suml2, and the
            // error it leaves is |x|^2 - sumlx^2 / suml2
            if suml2 > 0.0 && sumlx * sumlx / suml2 > best.1 {
                best = (sumlx / suml2, sumlx * sumlx / suml2);
            }
        }
    }
    f16::from_f32(best.0)
}

/// The stored nibble (code + 8) of `v` under scale `s`; a zero scale decodes to 0 anyway.
pub fn q4_code(v: f32, s: f32) -> u8 {
    if s == 0.0 {
        return 8;
    }
    (((v / s).round() as i32).clamp(-8, 7) + 8) as u8
}

/// Candidate scales tried per block, as fractions of the min/max scale: low-bit codes
/// keep more of a row's direction when the largest values are clipped.
const KBIT_GRID: [f32; 21] =
    [0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2, 1.25];

/// `bits`-bit codes of `x` (rows of `d`) in blocks of `block` with one f16 scale each,
/// stored as `format::Table::Tiered` decodes them: value = (2q + 1 - 2^b) * scale (odd
/// levels, symmetric, no zero: a 1-bit code is a sign), codes packed LSB first.
///
/// Each block's scale is chosen for the row's direction, not its range: for every
/// candidate scale the codes are rounded, the least-squares scale for those codes is
/// fitted, and the candidate capturing the most of the block's energy wins (then two
/// refit/re-round rounds). Blocks are orthogonal parts of the row, so maximizing each
/// block's captured energy maximizes the cosine of the whole row for the chosen codes.
pub fn kbit_rows(x: &[f32], d: usize, bits: u8, block: usize) -> (Vec<u8>, Vec<f16>) {
    debug_assert!(d % block == 0 && (block * bits as usize) % 8 == 0);
    let mut packed = vec![0u8; x.len() * bits as usize / 8];
    let mut scales = Vec::with_capacity(x.len() / block);
    let mut codes = vec![0u8; block];
    for (i, blk) in x.chunks_exact(block).enumerate() {
        let s = kbit_block(blk, bits, &mut codes);
        scales.push(f16::from_f32(s));
        let base = i * block * bits as usize;
        for (j, &q) in codes.iter().enumerate() {
            let bit = base + j * bits as usize;
            let v = (q as u16) << (bit % 8);
            packed[bit / 8] |= v as u8;
            if bit % 8 + bits as usize > 8 {
                packed[bit / 8 + 1] |= (v >> 8) as u8;
            }
        }
    }
    (packed, scales)
}

/// Codes (into `codes`) and least-squares scale of one block; see [`kbit_rows`].
fn kbit_block(x: &[f32], bits: u8, codes: &mut [u8]) -> f32 {
    let top = ((1u32 << bits) - 1) as f32;
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 {
        codes.fill(0);
        return 0.0;
    }
    // round to the nearest odd level for scale s; return (sum l x, sum l^2)
    let round = |s: f32, codes: &mut [u8]| {
        let (mut lx, mut l2) = (0f32, 0f32);
        for (c, &v) in codes.iter_mut().zip(x) {
            let q = ((v / s + top) * 0.5).round().clamp(0.0, top);
            *c = q as u8;
            let l = 2.0 * q - top;
            lx += l * v;
            l2 += l * l;
        }
        (lx, l2)
    };
    let mut tmp = vec![0u8; x.len()];
    let (mut best_s, mut best_e) = (0f32, -1f32);
    for f in KBIT_GRID {
        let (lx, l2) = round(amax / top * f, &mut tmp);
        if lx > 0.0 && lx * lx / l2 > best_e {
            (best_s, best_e) = (lx / l2, lx * lx / l2);
            codes.copy_from_slice(&tmp);
        }
    }
    for _ in 0..2 {
        let (lx, l2) = round(best_s, &mut tmp);
        if lx > 0.0 && lx * lx / l2 > best_e {
            (best_s, best_e) = (lx / l2, lx * lx / l2);
            codes.copy_from_slice(&tmp);
        } else {
            break;
        }
    }
    best_s
}
