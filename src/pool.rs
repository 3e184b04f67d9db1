//! Pooling: mean of the hidden states over the attention mask, then L2 normalization
//! (sentence-transformers' Pooling(mean) + Normalize).

/// Mean-pool `hidden` ([batch, seq, dim]) over `mask` ([batch, seq]) and optionally
/// L2-normalize each sentence vector.
pub fn mean_pool(hidden: &[f32], mask: &[i64], batch: usize, seq: usize, dim: usize, normalize: bool) -> Vec<Vec<f32>> {
    (0..batch)
        .map(|b| {
            let mut acc = vec![0f32; dim];
            let mut n = 0f32;
            for s in 0..seq {
                if mask[b * seq + s] != 0 {
                    n += 1.0;
                    let h = &hidden[(b * seq + s) * dim..(b * seq + s + 1) * dim];
                    acc.iter_mut().zip(h).for_each(|(a, x)| *a += x);
                }
            }
            // sentence-transformers clamps the token count at 1e-9
            let inv = 1.0 / n.max(1e-9);
            acc.iter_mut().for_each(|a| *a *= inv);
            if normalize {
                l2_normalize(&mut acc);
            }
            acc
        })
        .collect()
}

/// Scale to unit length (torch.nn.functional.normalize: eps 1e-12 on the norm).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        dot += f64::from(x) * f64::from(y);
        na += f64::from(x) * f64::from(x);
        nb += f64::from(y) * f64::from(y);
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        (dot / (na.sqrt() * nb.sqrt())) as f32
    }
}

/// Sentence cosine between paired embeddings: mean, 5th percentile, minimum.
#[derive(Clone, Copy, Debug)]
pub struct CosineStats {
    pub mean: f64,
    pub p5: f64,
    pub min: f64,
}

/// [`CosineStats`] of the pairs (`a[i]`, `b[i]`).
pub fn cosine_stats<'a>(pairs: impl IntoIterator<Item = (&'a [f32], &'a [f32])>) -> CosineStats {
    let mut cos: Vec<f32> = pairs.into_iter().map(|(a, b)| cosine(a, b)).collect();
    let min = f64::from(cos.iter().fold(f32::INFINITY, |m, c| m.min(*c)));
    let mean = cos.iter().map(|c| f64::from(*c)).sum::<f64>() / cos.len().max(1) as f64;
    CosineStats { mean, p5: percentile(&mut cos, 0.05), min }
}

/// The q-quantile of `xs` (lower nearest rank, as numpy's method="lower"); sorts `xs`.
pub fn percentile(xs: &mut [f32], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let i = ((xs.len() - 1) as f64 * q).floor() as usize;
    f64::from(xs[i])
}
