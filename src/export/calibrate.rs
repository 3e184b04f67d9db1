//! Calibration for GPTQ (`train::gptq`): the f32 body runs on corpus text and the inputs
//! of every dense layer are summed into H = sum x x^T, the curvature of that layer's
//! output error.

use std::collections::HashMap;

use super::bert::Body;
use crate::corpus::Corpus;
use crate::encode::{BodyBatch, Encoder};
use crate::error::{Error, Result};
use crate::tokenize::Tokenizer;
use crate::train::gptq::Hessian;
use crate::train::source::SourceTable;
use crate::train::Progress;

/// Input curvature of each dense layer, by layer name (row-major [n_in, n_in]).
pub type Hessians = HashMap<String, Vec<f64>>;

/// Documents run for the calibration, spread over the corpus: 128 gave a sentence cosine
/// of 0.9883 against 0.9877 with 64 (all-MiniLM-L6-v2, numpy prototype); more costs
/// time for nothing measurable.
pub const CALIBRATION_DOCS: usize = 128;
/// Tokens per calibration document (the length the bundles are evaluated at).
pub const CALIBRATION_TOKENS: usize = 128;

/// Run `body` (f32 weights) on up to `docs` documents of `corpus`, spread evenly, and
/// return the input curvature of each of its dense layers.
pub fn hessians(
    body: Body,
    src: &SourceTable,
    tok: &Tokenizer,
    corpus: &Corpus,
    docs: usize,
    progress: &mut impl FnMut(Progress<'_>),
) -> Result<Hessians> {
    let d = src.dim;
    // one accumulator per distinct input (query, key and value read the same one)
    let mut inputs: Vec<String> = Vec::new();
    for (_, x) in &body.layer_inputs {
        if !inputs.contains(x) {
            inputs.push(x.clone());
        }
    }
    let enc = Encoder::from_proto(body.model, None, d, 1, &inputs).map_err(|m| Error::Usage(format!("calibration body: {m}")))?;
    let mut sums: Vec<Option<Hessian>> = inputs.iter().map(|_| None).collect();
    let step = (corpus.docs.len() / docs.max(1)).max(1);
    let chosen: Vec<&str> = corpus.docs.iter().step_by(step).take(docs).map(|doc| doc.text.as_str()).collect();
    for (n, text) in chosen.iter().enumerate() {
        let ids = tok.encode(text).ids;
        let mut embeds = vec![0f32; ids.len() * d];
        for (row, &id) in embeds.chunks_exact_mut(d).zip(&ids) {
            src.read_rows(id as usize, row);
        }
        let seq = ids.len();
        let batch = BodyBatch { batch: 1, seq, embeds, mask: vec![1; seq], type_ids: vec![0; seq] };
        let outs = enc.run_outputs(batch).map_err(Error::Inference)?;
        for (sum, x) in sums.iter_mut().zip(&outs[1..]) {
            let width = x.len() / seq.max(1);
            sum.get_or_insert_with(|| Hessian::new(width)).add(x);
        }
        progress(Progress::Rows { done: n + 1, total: chosen.len(), what: "calibration documents" });
    }
    let by_input: HashMap<&str, Vec<f64>> = inputs.iter().zip(&sums).filter_map(|(x, s)| s.as_ref().map(|s| (x.as_str(), s.finish()))).collect();
    Ok(body.layer_inputs.iter().filter_map(|(layer, x)| by_input.get(x.as_str()).map(|h| (layer.clone(), h.clone()))).collect())
}
