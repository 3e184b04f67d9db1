//! The transformer body, run by tract: loaded once with a symbolic batch and sequence
//! length, optimized once, and reused for every call (the plan is `Send + Sync`).

use std::sync::Arc;

use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;
use tract_onnx::tract_core::runtime::RunOptions;

/// Names of the body's inputs, in the order the graph declares them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyInput {
    InputsEmbeds,
    AttentionMask,
    TokenTypeIds,
}

pub struct Encoder {
    plan: Arc<TypedRunnableModel>,
    inputs: Vec<BodyInput>,
    dim: usize,
}

/// One batch of body inputs; row-major, `batch * seq` tokens.
pub struct BodyBatch {
    pub batch: usize,
    pub seq: usize,
    pub embeds: Vec<f32>,
    pub mask: Vec<i64>,
    pub type_ids: Vec<i64>,
}

impl Encoder {
    /// Load body.onnx bytes for hidden size `dim`, with `threads` matmul threads.
    /// Errors are plain strings: the caller knows the file name.
    pub fn load(bytes: &[u8], dim: usize, threads: usize) -> Result<Self, String> {
        let mut model = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .model_for_read(&mut &bytes[..])
            .map_err(|e| format!("not a loadable ONNX body: {e:#}"))?;
        let batch = model.symbols.sym("batch");
        let seq = model.symbols.sym("seq");
        let mut inputs = Vec::new();
        for (i, outlet) in model.input_outlets().map_err(|e| e.to_string())?.to_vec().into_iter().enumerate() {
            let name = model.node(outlet.node).name.clone();
            if name == "inputs_embeds" {
                // a body of another model declares another width: say so, rather than
                // letting shape inference fail somewhere inside the graph
                let declared = model.input_fact(i).ok().and_then(|f| f.shape.dims().nth(2).and_then(|d| d.concretize())).and_then(|d| d.to_usize().ok());
                if let Some(w) = declared.filter(|w| *w != dim) {
                    return Err(format!("expects inputs_embeds of width {w}, but the manifest's dim is {dim} (a body of another model?)"));
                }
            }
            let (kind, fact) = match name.as_str() {
                "inputs_embeds" => (BodyInput::InputsEmbeds, InferenceFact::dt_shape(f32::datum_type(), tvec!(batch.to_dim(), seq.to_dim(), dim.to_dim()))),
                "attention_mask" => (BodyInput::AttentionMask, InferenceFact::dt_shape(i64::datum_type(), tvec!(batch.to_dim(), seq.to_dim()))),
                "token_type_ids" => (BodyInput::TokenTypeIds, InferenceFact::dt_shape(i64::datum_type(), tvec!(batch.to_dim(), seq.to_dim()))),
                other => return Err(format!("unexpected body input '{other}' (expected inputs_embeds, attention_mask, token_type_ids)")),
            };
            model.set_input_fact(i, fact).map_err(|e| format!("input '{name}': {e:#}"))?;
            inputs.push(kind);
        }
        if !inputs.contains(&BodyInput::InputsEmbeds) {
            return Err("the body has no inputs_embeds input".into());
        }
        let typed = model.into_optimized().map_err(|e| format!("cannot optimize the body: {e:#}"))?;
        let out_fact = typed.output_fact(0).map_err(|e| e.to_string())?;
        let last = out_fact.shape.last().and_then(|d| d.to_usize().ok());
        if out_fact.shape.rank() != 3 || last != Some(dim) {
            return Err(format!("body output has shape {:?}, expected [batch, seq, {dim}]", out_fact.shape));
        }
        let options = RunOptions {
            executor: (threads > 1).then(|| Executor::multithread(threads)),
            ..Default::default()
        };
        let plan = typed.into_runnable_with_options(&options).map_err(|e| format!("cannot plan the body: {e:#}"))?;
        Ok(Encoder { plan, inputs, dim })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Per-token hidden states [batch, seq, dim], row-major.
    pub fn run(&self, mut b: BodyBatch) -> Result<Vec<f32>, String> {
        let mut tensors = TVec::new();
        for kind in &self.inputs {
            let t = match kind {
                BodyInput::InputsEmbeds => tract_ndarray::Array3::from_shape_vec((b.batch, b.seq, self.dim), std::mem::take(&mut b.embeds)).map(Tensor::from),
                BodyInput::AttentionMask => tract_ndarray::Array2::from_shape_vec((b.batch, b.seq), std::mem::take(&mut b.mask)).map(Tensor::from),
                BodyInput::TokenTypeIds => tract_ndarray::Array2::from_shape_vec((b.batch, b.seq), std::mem::take(&mut b.type_ids)).map(Tensor::from),
            }
            .map_err(|e| format!("input shape: {e}"))?;
            tensors.push(t.into_tvalue());
        }
        let (batch, seq) = (b.batch, b.seq);
        let out = self.plan.run(tensors).map_err(|e| format!("running the body: {e:#}"))?;
        let first = out.first().ok_or("the body produced no output")?;
        let view = first.to_plain_array_view::<f32>().map_err(|e| e.to_string())?;
        // a body that passed the load-time checks can still misbehave at run time (e.g.
        // drop positions): pooling indexes by [batch, seq, dim], so check before handing it on
        if view.shape() != [batch, seq, self.dim] {
            return Err(format!("body output has shape {:?}, expected [{batch}, {seq}, {}]", view.shape(), self.dim));
        }
        Ok(view.iter().copied().collect())
    }
}
