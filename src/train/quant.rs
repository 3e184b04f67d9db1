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
