//! The transformer body, run by tract: loaded once with a symbolic batch and sequence
//! length, optimized once, and reused for every call (the plan is `Send + Sync`).

use std::sync::Arc;

use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;
use tract_onnx::tract_core::runtime::RunOptions;
use tract_onnx::pb::{tensor_proto::DataType, ModelProto, TensorProto};

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
        use prost::Message;
        let mut proto = ModelProto::decode(bytes).map_err(|e| format!("not a loadable ONNX body: {e}"))?;
        expand_stored_weights(&mut proto)?;
        let onnx = tract_onnx::onnx().with_ignore_value_info(true);
        let mut model = onnx.model_for_proto_model(&proto).map_err(|e| format!("not a loadable ONNX body: {e:#}"))?;
        drop(proto);
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

/// Expand the weights our exporter stores small (f16, int8 per output channel, Q4_0
/// blocks; see `export::weights`) into f32 initializers before tract reads the graph.
///
/// tract would fold the expansion subgraphs itself, but it materializes every
/// intermediate of every layer (nibbles, concatenation, casts, products) before pruning
/// them: the int4 all-MiniLM-L6-v2 body peaked at 286 MB of heap at load, against 141 MB
/// for the f32 body. Done here, one layer at a time, the peak is the f32 body's, and the
/// arithmetic is the same as the graph's ((q - 8) * scale in f32), so results are
/// identical. Graphs of other origin are left as they are.
pub fn expand_stored_weights(model: &mut ModelProto) -> Result<(), String> {
    let Some(graph) = model.graph.as_mut() else { return Ok(()) };
    let init_index: std::collections::HashMap<String, usize> = graph.initializer.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
    let producer: std::collections::HashMap<&str, usize> =
        graph.node.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect();
    // outputs computable from initializers alone (ONNX lists nodes in topological order):
    // only such subgraphs are expansions, never the activations feeding attention MatMuls
    let mut constant: std::collections::HashSet<&str> = init_index.keys().map(String::as_str).collect();
    for n in &graph.node {
        if n.input.iter().all(|i| i.is_empty() || constant.contains(i.as_str())) {
            constant.extend(n.output.iter().map(String::as_str));
        }
    }
    let mut new: Vec<TensorProto> = Vec::new();
    for node in &graph.node {
        let init = |name: &str| init_index.get(name).map(|&i| &graph.initializer[i]);
        match node.op_type.as_str() {
            // f16 weight (or position table) -> f32
            "Cast" => {
                if let Some(t) = node.input.first().and_then(|i| init(i)).filter(|t| t.data_type == DataType::Float16 as i32) {
                    let v: Vec<f32> = t.raw_data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
                    new.push(f32_tensor(&node.output[0], &t.dims, &v));
                }
            }
            "MatMul" => {
                let Some(w) = node.input.get(1).filter(|w| init(w).is_none() && constant.contains(w.as_str())) else { continue };
                // the stored tensors feeding this weight's expansion subgraph
                let mut stack = vec![w.as_str()];
                let mut seen = std::collections::HashSet::new();
                let mut stored = None;
                while let Some(name) = stack.pop() {
                    if !seen.insert(name) {
                        continue;
                    }
                    if let Some(p) = name.strip_suffix(".weight_q4").or_else(|| name.strip_suffix(".weight_q8")) {
                        stored = Some((p, name.ends_with("q4")));
                    }
                    if let Some(&n) = producer.get(name) {
                        stack.extend(graph.node[n].input.iter().map(String::as_str));
                    }
                }
                let Some((prefix, q4)) = stored else { continue };
                let expanded = if q4 {
                    let (q, s) = (init(&format!("{prefix}.weight_q4")), init(&format!("{prefix}.weight_q4scale")));
                    q.zip(s).map(|(q, s)| expand_q4(q, s)).transpose()?
                } else {
                    let (q, s) = (init(&format!("{prefix}.weight_q8")), init(&format!("{prefix}.weight_scale")));
                    q.zip(s).map(|(q, s)| expand_q8(q, s)).transpose()?
                };
                if let Some((dims, v)) = expanded {
                    new.push(f32_tensor(w, &dims, &v));
                }
            }
            _ => {}
        }
    }
    if new.is_empty() {
        return Ok(());
    }
    // the expanded tensors replace the outputs of their subgraphs; drop what no one uses
    let replaced: std::collections::HashSet<String> = new.iter().map(|t| t.name.clone()).collect();
    graph.node.retain(|n| !n.output.iter().any(|o| replaced.contains(o)));
    graph.initializer.extend(new);
    loop {
        let used: std::collections::HashSet<&str> =
            graph.node.iter().flat_map(|n| n.input.iter()).chain(graph.output.iter().map(|o| &o.name)).map(String::as_str).collect();
        let dead: Vec<usize> = (0..graph.node.len()).filter(|&i| !graph.node[i].output.iter().any(|o| used.contains(o.as_str()))).collect();
        if dead.is_empty() {
            let used: std::collections::HashSet<String> = used.into_iter().map(str::to_string).collect();
            graph.initializer.retain(|t| used.contains(&t.name));
            return Ok(());
        }
        for i in dead.into_iter().rev() {
            graph.node.remove(i);
        }
    }
}

fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    TensorProto { name: name.into(), dims: dims.to_vec(), data_type: DataType::Float as i32, raw_data: bytemuck::cast_slice(v).to_vec(), ..Default::default() }
}

fn dims3(t: &TensorProto) -> Option<(usize, usize, usize)> {
    match t.dims[..] {
        [a, b, c] if a >= 0 && b >= 0 && c >= 0 => Some((a as usize, b as usize, c as usize)),
        _ => None,
    }
}

/// Q4_0 rows [n_out, nb, 16] bytes with f16 scales [n_out, nb, 1] -> W [n_in, n_out].
fn expand_q4(q: &TensorProto, s: &TensorProto) -> Result<(Vec<i64>, Vec<f32>), String> {
    let bad = || format!("stored weight {}: inconsistent Q4_0 blocks", q.name);
    let (n_out, nb, half_block) = dims3(q).ok_or_else(bad)?;
    let n_in = nb.checked_mul(half_block * 2).ok_or_else(bad)?;
    if q.raw_data.len() != n_out * nb * half_block || s.raw_data.len() != n_out * nb * 2 || s.data_type != DataType::Float16 as i32 {
        return Err(bad());
    }
    let mut w = vec![0f32; n_in * n_out];
    let mut row = vec![0f32; n_in];
    for o in 0..n_out {
        // decode output channel o's row, then store it as column o of W
        for b in 0..nb {
            let k = o * nb + b;
            let scale = half::f16::from_le_bytes([s.raw_data[2 * k], s.raw_data[2 * k + 1]]).to_f32();
            let block = half_block * 2;
            crate::format::decode_q4_block(&q.raw_data[k * half_block..(k + 1) * half_block], scale, &mut row[b * block..(b + 1) * block]);
        }
        for (i, v) in row.iter().enumerate() {
            w[i * n_out + o] = *v;
        }
    }
    Ok((vec![n_in as i64, n_out as i64], w))
}

/// int8 W [n_in, n_out] with f32 scales [n_out] -> W [n_in, n_out].
fn expand_q8(q: &TensorProto, s: &TensorProto) -> Result<(Vec<i64>, Vec<f32>), String> {
    let bad = || format!("stored weight {}: inconsistent int8 weight and scales", q.name);
    let (n_in, n_out) = match q.dims[..] {
        [a, b] if a >= 0 && b >= 0 => (a as usize, b as usize),
        _ => return Err(bad()),
    };
    if q.raw_data.len() != n_in * n_out || s.raw_data.len() != 4 * n_out || s.data_type != DataType::Float as i32 {
        return Err(bad());
    }
    let scale: Vec<f32> = s.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let w = q.raw_data.iter().enumerate().map(|(k, &v)| v as i8 as f32 * scale[k % n_out]).collect();
    Ok((q.dims.clone(), w))
}
