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
    let mut codes = [0i32; Q4_BLOCK];
    let mut best_codes = [0i32; Q4_BLOCK];
    for block in x.chunks_exact(Q4_BLOCK) {
        let m = block.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let mut best = (0f32, -1f32); // (scale, sumlx^2 / suml2), larger is better
        if m != 0.0 {
            for is in -9..=9 {
                let iscale = -(8.0 + 0.1 * is as f32) / m;
                let (mut sumlx, mut suml2) = (0f32, 0f32);
                for (c, &v) in codes.iter_mut().zip(block) {
                    *c = ((iscale * v).round() as i32).clamp(-8, 7);
                    sumlx += *c as f32 * v;
                    suml2 += (*c * *c) as f32;
                }
                // the least-squares scale for these codes is sumlx / suml2, and the
                // error it leaves is |x|^2 - sumlx^2 / suml2
                if suml2 > 0.0 && sumlx * sumlx / suml2 > best.1 {
                    best = (sumlx / suml2, sumlx * sumlx / suml2);
                    best_codes = codes;
                }
            }
        }
        let scale = f16::from_f32(best.0);
        // re-round against the stored (f16) scale so decoding matches what was fitted
        let s = scale.to_f32();
        let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
        let code = |i: usize| if s != 0.0 { ((block[i] * inv).round() as i32).clamp(-8, 7) } else { best_codes[i] };
        q.extend((0..Q4_BLOCK / 2).map(|p| ((code(2 * p) + 8) as u8) | (((code(2 * p + 1) + 8) as u8) << 4)));
        scales.push(scale);
    }
    (q, scales)
}
