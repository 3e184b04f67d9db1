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

/// The body's int4 weights, one row per output channel in blocks of 32 inputs, each block
/// with 4-bit codes q, an f16 scale s and a 4-bit zero point z: value = (q - z) * s. This is
/// ONNX Runtime's `MatMulNBits` layout: codes two a byte, low nibble first; zero points two
/// blocks a byte per row, low nibble first (`zeros` is [rows, ceil(blocks / 2)]).
#[derive(Debug, Clone, PartialEq)]
pub struct Q4Rows {
    pub codes: Vec<u8>,
    pub scales: Vec<f16>,
    pub zeros: Vec<u8>,
}

impl Q4Rows {
    /// Pack one code per weight and one (scale, zero point) per block of `rows` with `n_in`
    /// inputs each.
    pub fn pack(codes: &[u8], fits: &[(f16, u8)], n_in: usize) -> Self {
        let nb = n_in / Q4_BLOCK;
        let zeros = fits
            .chunks_exact(nb)
            .flat_map(|row| row.chunks(2).map(|p| p[0].1 | (p.get(1).map_or(0, |z| z.1) << 4)))
            .collect();
        Q4Rows { codes: codes.chunks_exact(2).map(|p| p[0] | (p[1] << 4)).collect(), scales: fits.iter().map(|f| f.0).collect(), zeros }
    }
}

#[cfg(test)]
impl Q4Rows {
    /// The weights these codes stand for, rows of `n_in` (for the quantizers' tests).
    pub(crate) fn decode(&self, n_in: usize) -> Vec<f32> {
        let nb = n_in / Q4_BLOCK;
        let mut out = vec![0f32; self.codes.len() * 2];
        for (k, dst) in out.chunks_exact_mut(Q4_BLOCK).enumerate() {
            let (row, b) = (k / nb, k % nb);
            let z = crate::format::q4_zero(&self.zeros[row * nb.div_ceil(2)..], b);
            crate::format::decode_q4_block(&self.codes[k * Q4_BLOCK / 2..(k + 1) * Q4_BLOCK / 2], self.scales[k].to_f32(), z, dst);
        }
        out
    }
}

/// Round every weight of `rows` ([n_out, n_in]) to its block's fit ([`q4_block_fit`]).
pub fn q4_rows(rows: &[f32], n_in: usize) -> Q4Rows {
    debug_assert_eq!(n_in % Q4_BLOCK, 0);
    let fits: Vec<(f16, u8)> = rows.chunks_exact(Q4_BLOCK).map(q4_block_fit).collect();
    let codes: Vec<u8> = rows.iter().enumerate().map(|(i, &v)| q4_code(v, fits[i / Q4_BLOCK])).collect();
    Q4Rows::pack(&codes, &fits, n_in)
}

/// Candidate ranges tried per block, as fractions of (max - min) / 15.
const Q4_RANGE_GRID: [f32; 11] = [0.8, 0.825, 0.85, 0.875, 0.9, 0.925, 0.95, 0.975, 1.0, 1.025, 1.05];

/// The stored (f16) scale and the zero point of one block: for each candidate range, the
/// zero point is the code of 0, values are rounded, and the least-squares scale for those
/// codes is fitted; the candidate leaving the smallest squared error wins. Using all 16
/// codes on the block's own range, rather than symmetric ones around a fixed 8 (ggml Q4_0),
/// does not waste levels on blocks that lean to one side.
pub fn q4_block_fit(block: &[f32]) -> (f16, u8) {
    let (lo, hi) = block.iter().fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let mut best = (f16::ZERO, 8u8, f32::INFINITY);
    for f in Q4_RANGE_GRID {
        let s = (hi - lo) / 15.0 * f;
        if !(s > 0.0) {
            continue;
        }
        let z = (-lo / s).round().clamp(0.0, 15.0) as u8;
        // codes centred on the zero point, rounded at the candidate scale
        let centred = |v: f32| ((v / s).round() + z as f32).clamp(0.0, 15.0) - z as f32;
        let (cx, c2) = block.iter().fold((0f32, 0f32), |(cx, c2), &v| (cx + centred(v) * v, c2 + centred(v) * centred(v)));
        if c2 == 0.0 {
            continue;
        }
        // the least-squares scale for these codes, as stored; the final codes are re-rounded
        // against it (q4_code), which can only lower the error measured here
        let s2 = f16::from_f32(cx / c2);
        let err: f32 = block.iter().map(|&v| (centred(v) * s2.to_f32() - v).powi(2)).sum();
        if err < best.2 {
            best = (s2, z, err);
        }
    }
    (best.0, best.1)
}

/// The stored code of `v` in a block with (scale, zero point) `fit`; a zero scale decodes
/// every code to 0.
pub fn q4_code(v: f32, (s, z): (f16, u8)) -> u8 {
    let s = s.to_f32();
    if s == 0.0 {
        return z;
    }
    ((v / s).round() + z as f32).clamp(0.0, 15.0) as u8
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sq_err(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
    }

    /// Blocks that lean to one side (here: uniform values in [0.2, 1.2), 3 blocks a row so
    /// the last zero-point byte is half used) are where the fitted zero point pays: less than
    /// half the squared error of ggml's symmetric Q4_0 at the same bytes per weight.
    #[test]
    fn fitted_zero_points_beat_symmetric_blocks_on_one_sided_rows() {
        let n_in = 3 * Q4_BLOCK;
        let rows: Vec<f32> = crate::train::test_noise(8 * n_in, 7).iter().map(|v| v + 0.7).collect();
        let q = q4_rows(&rows, n_in);
        assert_eq!((q.codes.len(), q.scales.len(), q.zeros.len()), (rows.len() / 2, rows.len() / Q4_BLOCK, 8 * 2));
        let (sq, ss) = q4_0(&rows);
        let sym = Q4Rows { codes: sq, scales: ss, zeros: vec![0x88; 16] };
        let (asym, sym) = (sq_err(&rows, &q.decode(n_in)), sq_err(&rows, &sym.decode(n_in)));
        assert!(asym < 0.5 * sym, "zero points {asym} vs symmetric {sym}");
    }

    /// On symmetric data the fit is still no worse than ggml's Q4_0.
    #[test]
    fn fitted_blocks_are_no_worse_than_q4_0_on_centred_rows() {
        let n_in = 2 * Q4_BLOCK;
        let rows = crate::train::test_noise(16 * n_in, 11);
        let (sq, ss) = q4_0(&rows);
        let sym = Q4Rows { codes: sq, scales: ss, zeros: vec![0x88; 16] };
        let (asym, sym) = (sq_err(&rows, &q4_rows(&rows, n_in).decode(n_in)), sq_err(&rows, &sym.decode(n_in)));
        assert!(asym <= sym, "zero points {asym} vs symmetric {sym}");
    }
}
