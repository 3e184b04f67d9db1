//! Bits where the text is: every row of the table gets one of a few block-quantized
//! storages ([`CANDIDATES`]), frequent tokens more bits than rare ones, under a total byte
//! budget.
//!
//! Each row's error at each storage is measured exactly (squared error of the decoded
//! row: the embedding LayerNorm sees the error vector next to the position embedding, so a
//! long row's error counts more than its angle says; measured on BBC News this beat 1 -
//! cosine, README "Mixed bits"), and the allocation minimizes the corpus-weighted sum of
//! those errors for the budget by
//! Lagrangian relaxation: for a price `lambda` per bit every row independently takes the
//! storage minimizing `weight * error + lambda * bits`, and `lambda` is bisected until the
//! table fits. Rows then go into tiers, most bits first and by frequency within a tier.

use rayon::prelude::*;

use super::quant::kbit_rows;
use crate::error::{Error, Result};
use crate::format::{OwnedTable, TierSpec};

/// The storages a row may get, as (bits, block). Longer blocks cut the scale overhead,
/// which matters most at 1-3 bits (measured on all-MiniLM-L6-v2: blocks of 32 were hardly
/// chosen below 5 bits).
pub const CANDIDATES: [(u8, usize); 12] =
    [(8, 32), (6, 32), (5, 32), (5, 64), (4, 64), (4, 128), (3, 64), (3, 128), (2, 64), (2, 128), (1, 64), (1, 128)];

/// Added to every token's corpus count, because tokens rare or unseen in the corpus still
/// occur in other text. Measured on held-out BBC documents (README "Mixed bits"): 0.5
/// left a few documents at sentence cosine 0.95, 2 lifted the worst to 0.985 and the
/// mean too; 5 gave no more.
pub const UNSEEN_COUNT: f64 = 2.0;

/// A mixed table in its final row order.
pub struct Mixed {
    pub table: OwnedTable,
    pub tiers: Vec<TierSpec>,
    /// `order[i]`: the token stored at row i.
    pub order: Vec<usize>,
}

/// Allocate bits to the rows of `x` (V x d, row-major) so that codes and scales take at
/// most `budget_bits`, weighting each token's error by `freq` (counts in a corpus; equal
/// weights without one), and quantize them.
pub fn compress(x: &[f32], d: usize, freq: Option<&[u64]>, budget_bits: f64) -> Result<Mixed> {
    let v = x.len() / d;
    let cands: Vec<TierSpec> =
        CANDIDATES.iter().filter(|(b, blk)| d % blk == 0 && (blk * *b as usize) % 8 == 0).map(|&(bits, block)| TierSpec { rows: 0, bits, block }).collect();
    if cands.is_empty() {
        return Err(Error::Usage(format!("mixed needs d to be a multiple of 32; this table has d = {d}")));
    }
    let cost: Vec<f64> = cands.iter().map(|c| c.bits_per_value() * d as f64).collect();
    let cheapest = cost.iter().cloned().fold(f64::INFINITY, f64::min) * v as f64;
    if cheapest > budget_bits {
        return Err(Error::Usage(format!(
            "the ratio is too high for mixed: even {:.2} bits per value for every row takes {:.0} bytes, over the budget of {:.0}",
            cheapest / (v * d) as f64,
            cheapest / 8.0,
            budget_bits / 8.0
        )));
    }
    // err[c][r]: squared error of row r stored with candidate c
    let err: Vec<Vec<f64>> = cands
        .iter()
        .map(|c| {
            x.par_chunks(d)
                .map(|row| {
                    let (q, s) = kbit_rows(row, d, c.bits, c.block);
                    let mut y = vec![0f32; d];
                    crate::format::decode_kbit(&q, &s, c.bits, c.block, &mut y).expect("fresh scales are finite");
                    row.iter().zip(&y).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>()
                })
                .collect()
        })
        .collect();
    let weight: Vec<f64> = (0..v).map(|r| freq.map_or(1.0, |f| f[r] as f64) + UNSEEN_COUNT).collect();
    let choose = |lambda: f64| -> (Vec<usize>, f64) {
        let pick: Vec<usize> = (0..v)
            .map(|r| (0..cands.len()).min_by(|&a, &b| (weight[r] * err[a][r] + lambda * cost[a]).total_cmp(&(weight[r] * err[b][r] + lambda * cost[b]))).expect("candidates"))
            .collect();
        let bits = pick.iter().map(|&c| cost[c]).sum();
        (pick, bits)
    };
    // bisect lambda in log space: total bits only fall as the price of a bit rises
    let (mut lo, mut hi) = (1e-12f64, 1e12f64);
    let (mut pick, bits) = choose(lo);
    if bits > budget_bits {
        for _ in 0..100 {
            let mid = (lo * hi).sqrt();
            if choose(mid).1 > budget_bits {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        pick = choose(hi).0;
    }

    // tiers: most bits first; within a tier the most frequent tokens first
    let mut tier_of: Vec<usize> = (0..cands.len()).collect();
    tier_of.sort_by(|&a, &b| cost[b].total_cmp(&cost[a]));
    let rank_of_cand: Vec<usize> = {
        let mut r = vec![0; cands.len()];
        for (i, &c) in tier_of.iter().enumerate() {
            r[c] = i;
        }
        r
    };
    let mut order: Vec<usize> = (0..v).collect();
    order.sort_by(|&a, &b| rank_of_cand[pick[a]].cmp(&rank_of_cand[pick[b]]).then(weight[b].total_cmp(&weight[a])).then(a.cmp(&b)));
    let mut tiers = Vec::new();
    let mut stored = Vec::new();
    for &c in &tier_of {
        let rows: Vec<usize> = order.iter().copied().filter(|&t| pick[t] == c).collect();
        if rows.is_empty() {
            continue;
        }
        let spec = TierSpec { rows: rows.len(), ..cands[c] };
        let parts: Vec<(Vec<u8>, Vec<half::f16>)> = rows.par_iter().map(|&t| kbit_rows(&x[t * d..(t + 1) * d], d, spec.bits, spec.block)).collect();
        let (codes, scales) = parts.into_iter().fold((Vec::new(), Vec::new()), |(mut q, mut s), (pq, ps)| {
            q.extend(pq);
            s.extend(ps);
            (q, s)
        });
        tiers.push(spec);
        stored.push((spec, codes, scales));
    }
    Ok(Mixed { table: OwnedTable::Tiered(stored), tiers, order })
}
