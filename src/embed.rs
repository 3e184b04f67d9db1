//! Embedding lookup from the memory-mapped factor file: each input token's row is
//! decoded (codes x decoder + bias, or dequantized) straight into the body's
//! `inputs_embeds` buffer. Nothing of size V x d is ever allocated.

use crate::format::{Factors, FormatError};

/// Decode the rows of `ids` into `out` (ids.len() x d, row-major).
pub fn decode_tokens(f: &Factors<'_>, ids: &[u32], out: &mut [f32]) -> Result<(), FormatError> {
    let d = f.dim();
    for (&id, row) in ids.iter().zip(out.chunks_exact_mut(d)) {
        f.decode_row(id as usize, row)?;
    }
    Ok(())
}
