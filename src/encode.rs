//! The transformer body, run by tract: loaded once with a symbolic batch and sequence
//! length, optimized once, and reused for every call (the plan is `Send + Sync`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;
use tract_onnx::tract_core::runtime::RunOptions;
use tract_onnx::pb::{attribute_proto::AttributeType, tensor_proto::DataLocation, tensor_proto::DataType, AttributeProto, GraphProto, ModelProto, TensorProto};

use crate::bundle::BODY_DATA_FILE;
use crate::format::Q4_BLOCK;
use crate::mmap::Mapped;
use crate::manifest::WeightScheme;

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

/// A body's external tensor data (ONNX `data_location = EXTERNAL`, see
/// `export::graph::move_to_external_data`): the mapped [`BODY_DATA_FILE`].
pub type BodyData = Arc<Mapped>;

/// Hands tract each external tensor's bytes from the mapping [`stored_bytes`] checked, and
/// releases those pages once copied, so the file never becomes resident as a whole.
struct MappedData(BodyData);

impl tract_onnx::data_resolver::ModelDataResolver for MappedData {
    fn read_bytes_from_path(&self, buf: &mut Vec<u8>, _: &Path, offset: usize, length: Option<usize>) -> TractResult<()> {
        let bytes = self.0.bytes();
        let end = length.and_then(|l| offset.checked_add(l)).filter(|e| *e <= bytes.len());
        let end = end.ok_or_else(|| TractError::msg(format!("external data {offset}..+{length:?} is outside {BODY_DATA_FILE}")))?;
        buf.extend_from_slice(&bytes[offset..end]);
        self.0.release(offset, end - offset);
        Ok(())
    }
}

impl Encoder {
    /// Load body.onnx bytes for hidden size `dim`, with `threads` matmul threads; with
    /// `int4` = [`Int4::Packed`] an int4 body's weights stay 4-bit in memory. `scheme` is
    /// the manifest's: a graph storing its weights otherwise is an error. `data` is the
    /// bundle's external tensor data, if it has any.
    /// Errors are plain strings: the caller knows the file name.
    pub fn load(bytes: Vec<u8>, data: Option<BodyData>, dim: usize, threads: usize, scheme: WeightScheme, int4: Int4) -> Result<Self, String> {
        use prost::Message;
        if int4 == Int4::Packed && scheme != WeightScheme::Int4 {
            return Err(format!("packed weights need an int4 body; the manifest says this one's are {}", scheme.name()));
        }
        let mut proto = ModelProto::decode(bytes.as_slice()).map_err(|e| format!("not a loadable ONNX body: {e}"))?;
        // the proto holds its own copy of every inline tensor: the file's bytes would only add to the load peak
        drop(bytes);
        let found = expand_stored_weights(&mut proto, data.as_deref().map(Mapped::bytes), int4)?;
        // (a graph with no MatMul weight we recognize, e.g. Gemm layers, can only be f32)
        if found != [scheme] && !(found.is_empty() && scheme == WeightScheme::F32) {
            let found: Vec<&str> = found.iter().map(|s| s.name()).collect();
            return Err(format!("the manifest says {} weights but the graph's dense layers store {}", scheme.name(), if found.is_empty() { "none".into() } else { found.join(" and ") }));
        }
        Self::from_proto(proto, data, dim, threads, &[])
    }

    /// The body of `proto` (weights already f32 or packed) with the values named in
    /// `extra` as further outputs after the hidden states ([`Encoder::run_outputs`]).
    /// Tensors the proto stores as external data are read from `data` (checked by
    /// [`expand_stored_weights`]).
    pub fn from_proto(mut proto: ModelProto, data: Option<BodyData>, dim: usize, threads: usize, extra: &[String]) -> Result<Self, String> {
        let mut onnx = tract_onnx::onnx().with_ignore_value_info(true);
        // tract reads external data one tensor at a time, each straight into its own
        // tensor: the load never holds a second copy of all the weights. It would open the
        // file by a path inside the model directory, refusing a bundle whose files are
        // symbolic links to elsewhere; the location was checked to be body.onnx.data and
        // the bytes come from that file's mapping, so tract is handed a path that always
        // passes its check ("." in "/") and reads from the mapping.
        let root = data.is_some().then_some("/");
        if let Some(data) = data {
            onnx.provider = Arc::new(MappedData(data));
            for t in proto.graph.iter_mut().flat_map(|g| g.initializer.iter_mut()) {
                t.external_data.iter_mut().filter(|e| e.key == "location").for_each(|e| e.value = ".".into());
            }
        }
        let parsed = onnx.parse(&proto, root).map_err(|e| format!("not a loadable ONNX body: {e:#}"))?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(format!("not a loadable ONNX body: values used but never defined: {}", parsed.unresolved_inputs.join(", ")));
        }
        drop(onnx);
        let mut model = parsed.model;
        drop(proto);
        if !extra.is_empty() {
            let mut outputs = model.output_outlets().map_err(|e| e.to_string())?.to_vec();
            for name in extra {
                outputs.push(model.find_outlet_label(name).ok_or_else(|| format!("the body has no value named '{name}'"))?);
            }
            model.select_output_outlets(&outputs).map_err(|e| e.to_string())?;
        }
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
    pub fn run(&self, b: BodyBatch) -> Result<Vec<f32>, String> {
        let (batch, seq) = (b.batch, b.seq);
        let out = self.plan.run(self.inputs_of(b)?).map_err(|e| format!("running the body: {e:#}"))?;
        self.hidden_states(out, batch, seq)
    }

    /// Every output of one run, flattened row-major: the hidden states, then the values
    /// [`Encoder::from_proto`] was asked for.
    pub fn run_outputs(&self, b: BodyBatch) -> Result<Vec<Vec<f32>>, String> {
        let out = self.plan.run(self.inputs_of(b)?).map_err(|e| format!("running the body: {e:#}"))?;
        out.iter().map(|t| t.to_plain_array_view::<f32>().map(|v| v.iter().copied().collect()).map_err(|e| e.to_string())).collect()
    }

    /// Run `b` once, timing every node of the plan: milliseconds per op name, summed over
    /// the nodes of that op, slowest first (what `footprint --profile` prints).
    pub fn profile(&self, b: BodyBatch) -> Result<Vec<(String, f64)>, String> {
        let mut state = self.plan.spawn().map_err(|e| e.to_string())?;
        let mut ms: std::collections::HashMap<String, f64> = Default::default();
        state
            .run_plan_with_eval(self.inputs_of(b)?, |ctx, op_state, node, input| {
                let t = std::time::Instant::now();
                let r = tract_onnx::tract_core::plan::eval(ctx, op_state, node, input);
                *ms.entry(node.op().name().to_string()).or_default() += t.elapsed().as_secs_f64() * 1e3;
                r
            })
            .map_err(|e| format!("running the body: {e:#}"))?;
        let mut ms: Vec<(String, f64)> = ms.into_iter().collect();
        ms.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(ms)
    }

    fn inputs_of(&self, mut b: BodyBatch) -> Result<TVec<TValue>, String> {
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
        Ok(tensors)
    }

    fn hidden_states(&self, out: TVec<TValue>, batch: usize, seq: usize) -> Result<Vec<f32>, String> {
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

/// How tract holds an int4 body's weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Int4 {
    /// Expanded to f32 before tract reads the graph: tract's f32 kernels, the fastest here
    /// (x86 AVX2), at f32 weight memory (all-MiniLM-L6-v2: 55 MB heap after load).
    #[default]
    Expanded,
    /// Kept 4-bit: each MatMul becomes ONNX Runtime's `MatMulNBits` (4 bits, blocks of 32,
    /// a zero point per block: exactly our stored layout), which tract 0.23 holds as a Q4_0
    /// block-quant constant, dequantized inside its matmul kernels, plus a small correction
    /// for zero points other than 8 (all-MiniLM-L6-v2: 15 MB heap after load; about 2.5
    /// times the latency on x86 AVX2, where only a one-column Q4_0 kernel exists).
    Packed,
}

/// Expand the weights our exporter stores small (f16, int8 per output channel, 4-bit
/// blocks; see `export::weights`) into f32 initializers before tract reads the graph,
/// or, for 4-bit weights with [`Int4::Packed`], hand them to tract as `MatMulNBits`.
/// Returns the schemes the dense layers' weights were found stored in.
///
/// tract would fold the expansion subgraphs itself, but it materializes every
/// intermediate of every layer (nibbles, concatenation, casts, products) before pruning
/// them: the int4 all-MiniLM-L6-v2 body peaked at 286 MB of heap at load, against 141 MB
/// for the f32 body. Done here, one layer at a time, the peak is the f32 body's, and the
/// arithmetic is the same as the graph's ((q - zero) * scale in f32), so results are
/// identical. Graphs of other origin are left as they are.
pub fn expand_stored_weights(model: &mut ModelProto, data: Option<&[u8]>, int4: Int4) -> Result<Vec<WeightScheme>, String> {
    let Some(graph) = model.graph.as_mut() else { return Ok(Vec::new()) };
    let stored = stored_bytes(graph, data)?;
    let init_index: HashMap<String, usize> = graph.initializer.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
    let producer: HashMap<&str, usize> = graph.node.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect();
    // outputs computable from initializers alone (ONNX lists nodes in topological order):
    // only such subgraphs are expansions, never the activations feeding attention MatMuls
    let mut constant: std::collections::HashSet<&str> = init_index.keys().map(String::as_str).collect();
    for n in &graph.node {
        if n.input.iter().all(|i| i.is_empty() || constant.contains(i.as_str())) {
            constant.extend(n.output.iter().map(String::as_str));
        }
    }
    let mut new: Vec<TensorProto> = Vec::new();
    let mut found = Vec::new();
    // (MatMul node, stored weight prefix, K, N, has zero points) to run as MatMulNBits
    let mut packed: Vec<(usize, String, usize, usize, bool)> = Vec::new();
    for (ix, node) in graph.node.iter().enumerate() {
        let init = |name: &str| init_index.get(name).map(|&i| Stored { t: &graph.initializer[i], bytes: stored[i] });
        match node.op_type.as_str() {
            // f16 weight (or position table) -> f32
            "Cast" => {
                if let Some(t) = node.input.first().and_then(|i| init(i)).filter(|s| s.t.data_type == DataType::Float16 as i32) {
                    let v: Vec<f32> = t.bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
                    new.push(f32_tensor(&node.output[0], &t.t.dims, &v));
                }
            }
            "MatMul" => {
                let Some(w) = node.input.get(1).filter(|w| constant.contains(w.as_str())) else { continue };
                if init(w).is_some_and(|s| s.t.data_type == DataType::Float as i32) {
                    found.push(WeightScheme::F32);
                    continue;
                }
                // the stored tensors feeding this weight's expansion subgraph
                let mut stack = vec![w.as_str()];
                let mut seen = std::collections::HashSet::new();
                let (mut stored, mut f16) = (None, false);
                while let Some(name) = stack.pop() {
                    if !seen.insert(name) {
                        continue;
                    }
                    if let Some(p) = name.strip_suffix(".weight_q4").or_else(|| name.strip_suffix(".weight_q8")) {
                        stored = Some((p, name.ends_with("q4")));
                    }
                    f16 |= init(name).is_some_and(|s| s.t.data_type == DataType::Float16 as i32);
                    if let Some(&n) = producer.get(name) {
                        stack.extend(graph.node[n].input.iter().map(String::as_str));
                    }
                }
                let Some((prefix, q4)) = stored else {
                    // f16 weights are expanded by the Cast arm
                    if f16 {
                        found.push(WeightScheme::F16);
                    }
                    continue;
                };
                found.push(if q4 { WeightScheme::Int4 } else { WeightScheme::Int8 });
                let expanded = if q4 {
                    let (q, s) = (init(&format!("{prefix}.weight_q4")), init(&format!("{prefix}.weight_q4scale")));
                    // no zero points: symmetric blocks (zero 8), as MatMulNBits reads them
                    let z = init(&format!("{prefix}.weight_q4zero"));
                    if let (Int4::Packed, Some(q), Some(s)) = (int4, q, s) {
                        let (n_out, nb) = q4_dims(q, s, z)?;
                        packed.push((ix, prefix.to_string(), nb * Q4_BLOCK, n_out, z.is_some()));
                        continue;
                    }
                    q.zip(s).map(|(q, s)| expand_q4(q, s, z)).transpose()?
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
    for (ix, prefix, k, n, zero) in &packed {
        let int = |name: &str, v: usize| AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i: v as i64, ..Default::default() };
        let node = &mut graph.node[*ix];
        node.input = vec![node.input[0].clone(), format!("{prefix}.weight_q4"), format!("{prefix}.weight_q4scale")];
        if *zero {
            node.input.push(format!("{prefix}.weight_q4zero"));
        }
        node.op_type = "MatMulNBits".into();
        node.domain = "com.microsoft".into();
        node.attribute = vec![int("K", *k), int("N", *n), int("bits", 4), int("block_size", Q4_BLOCK)];
    }
    found.sort_by_key(|s| *s as u8);
    found.dedup();
    if new.is_empty() && packed.is_empty() {
        return Ok(found);
    }
    // the expanded tensors replace the outputs of their subgraphs (and MatMulNBits reads
    // the stored tensors directly); drop what no one uses
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
            return Ok(found);
        }
        for i in dead.into_iter().rev() {
            graph.node.remove(i);
        }
    }
}

fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    TensorProto { name: name.into(), dims: dims.to_vec(), data_type: DataType::Float as i32, raw_data: bytemuck::cast_slice(v).to_vec(), ..Default::default() }
}

/// An initializer and its stored bytes (inline or in the external data file).
#[derive(Clone, Copy)]
struct Stored<'a> {
    t: &'a TensorProto,
    bytes: &'a [u8],
}

/// The stored bytes of every initializer of `graph`, in order: its raw_data, or its range
/// of `data`, the external data file (if the bundle has one). External references are checked before anything
/// reads them: the location must be the bundle's [`BODY_DATA_FILE`] (a name, never a
/// path elsewhere), the offset and length present and within the file.
fn stored_bytes<'a>(graph: &'a GraphProto, data: Option<&'a [u8]>) -> Result<Vec<&'a [u8]>, String> {
    graph
        .initializer
        .iter()
        .map(|t| {
            if t.data_location != Some(DataLocation::External as i32) {
                return Ok(&t.raw_data[..]);
            }
            let bad = |why: String| format!("tensor '{}' in external data: {why}", t.name);
            let key = |k: &str| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.as_str());
            match key("location") {
                Some(BODY_DATA_FILE) => {}
                Some(other) => return Err(bad(format!("location '{other}' is not the bundle's {BODY_DATA_FILE}"))),
                None => return Err(bad("no location".into())),
            }
            let num = |k: &str| -> Result<usize, String> {
                let v = key(k).ok_or_else(|| bad(format!("no {k}")))?;
                v.parse().map_err(|_| bad(format!("{k} '{v}' is not a byte count")))
            };
            let (offset, length) = (num("offset")?, num("length")?);
            if !t.raw_data.is_empty() {
                return Err(bad("it also has inline data".into()));
            }
            let data = data.ok_or_else(|| bad(format!("the bundle has no {BODY_DATA_FILE}")))?;
            match offset.checked_add(length) {
                Some(end) if end <= data.len() => Ok(&data[offset..end]),
                _ => Err(bad(format!("bytes {offset}..+{length} are beyond the {} bytes of {BODY_DATA_FILE}", data.len()))),
            }
        })
        .collect()
}

fn dims3(t: &TensorProto) -> Option<(usize, usize, usize)> {
    match t.dims[..] {
        [a, b, c] if a >= 0 && b >= 0 && c >= 0 => Some((a as usize, b as usize, c as usize)),
        _ => None,
    }
}

/// (n_out, blocks per row) of 4-bit rows [n_out, nb, 16] bytes with f16 scales [n_out, nb,
/// 1] and, if stored, zero points [n_out, ceil(nb / 2)] bytes.
fn q4_dims(q: Stored, s: Stored, z: Option<Stored>) -> Result<(usize, usize), String> {
    let bad = || format!("stored weight {}: inconsistent 4-bit blocks", q.t.name);
    let (n_out, nb, half_block) = dims3(q.t).ok_or_else(bad)?;
    let blocks = n_out.checked_mul(nb).ok_or_else(bad)?;
    if half_block != Q4_BLOCK / 2
        || q.bytes.len() != blocks * half_block
        || dims3(s.t) != Some((n_out, nb, 1))
        || s.bytes.len() != blocks * 2
        || s.t.data_type != DataType::Float16 as i32
        || z.is_some_and(|z| z.t.dims[..] != [n_out as i64, nb.div_ceil(2) as i64] || z.bytes.len() != n_out * nb.div_ceil(2) || z.t.data_type != DataType::Uint8 as i32)
    {
        return Err(bad());
    }
    Ok((n_out, nb))
}

/// 4-bit rows (see [`q4_dims`]) -> W [n_in, n_out].
fn expand_q4(q: Stored, s: Stored, z: Option<Stored>) -> Result<(Vec<i64>, Vec<f32>), String> {
    let (n_out, nb) = q4_dims(q, s, z)?;
    let (n_in, half_block) = (nb * Q4_BLOCK, Q4_BLOCK / 2);
    let mut w = vec![0f32; n_in * n_out];
    let mut row = vec![0f32; n_in];
    for o in 0..n_out {
        // decode output channel o's row, then store it as column o of W
        for b in 0..nb {
            let k = o * nb + b;
            let scale = half::f16::from_le_bytes([s.bytes[2 * k], s.bytes[2 * k + 1]]).to_f32();
            let zero = z.map_or(8, |z| crate::format::q4_zero(&z.bytes[o * nb.div_ceil(2)..], b));
            crate::format::decode_q4_block(&q.bytes[k * half_block..(k + 1) * half_block], scale, zero, &mut row[b * Q4_BLOCK..(b + 1) * Q4_BLOCK]);
        }
        for (i, v) in row.iter().enumerate() {
            w[i * n_out + o] = *v;
        }
    }
    Ok((vec![n_in as i64, n_out as i64], w))
}

/// int8 W [n_in, n_out] with f32 scales [n_out] -> W [n_in, n_out].
fn expand_q8(q: Stored, s: Stored) -> Result<(Vec<i64>, Vec<f32>), String> {
    let bad = || format!("stored weight {}: inconsistent int8 weight and scales", q.t.name);
    let (n_in, n_out) = match q.t.dims[..] {
        [a, b] if a >= 0 && b >= 0 => (a as usize, b as usize),
        _ => return Err(bad()),
    };
    if n_in.checked_mul(n_out) != Some(q.bytes.len()) || s.bytes.len() != 4 * n_out || s.t.data_type != DataType::Float as i32 {
        return Err(bad());
    }
    let scale: Vec<f32> = s.bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let w = q.bytes.iter().enumerate().map(|(k, &v)| v as i8 as f32 * scale[k % n_out]).collect();
    Ok((q.t.dims.clone(), w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, dt: DataType, dims: &[i64], raw_data: Vec<u8>) -> TensorProto {
        TensorProto { name: name.into(), dims: dims.to_vec(), data_type: dt as i32, raw_data, ..Default::default() }
    }

    fn inline(t: &TensorProto) -> Stored<'_> {
        Stored { t, bytes: &t.raw_data }
    }

    /// Zero points are optional, as in MatMulNBits: without them a block's zero is 8. Three
    /// blocks a row: the last zero-point byte holds one zero and a pad nibble. A zero-point
    /// tensor of another size is refused.
    #[test]
    fn four_bit_blocks_decode_with_their_zero_points_or_8() {
        let (n_out, nb) = (2usize, 3usize);
        let codes: Vec<u8> = (0..n_out * nb * 16).map(|i| (i * 37 % 256) as u8).collect();
        let q = tensor("l.weight_q4", DataType::Uint8, &[2, 3, 16], codes);
        let scales = [0.5f32, 1.0, 2.0, -1.0, 0.25, 4.0].iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        let s = tensor("l.weight_q4scale", DataType::Float16, &[2, 3, 1], scales);
        let eights = tensor("l.weight_q4zero", DataType::Uint8, &[2, 2], vec![0x88, 0x08, 0x88, 0x08]);
        assert_eq!(expand_q4(inline(&q), inline(&s), None).unwrap(), expand_q4(inline(&q), inline(&s), Some(inline(&eights))).unwrap());
        // zero 3 for row 1's middle block: its values move up by (8 - 3) * 0.25
        let zeros = tensor("l.weight_q4zero", DataType::Uint8, &[2, 2], vec![0x88, 0x08, 0x38, 0x08]);
        let (a, b) = (expand_q4(inline(&q), inline(&s), None).unwrap().1, expand_q4(inline(&q), inline(&s), Some(inline(&zeros))).unwrap().1);
        for i in 0..nb * Q4_BLOCK {
            for o in 0..n_out {
                let shift = if o == 1 && i / Q4_BLOCK == 1 { 5.0 * 0.25 } else { 0.0 };
                assert_eq!(b[i * n_out + o], a[i * n_out + o] + shift, "input {i}, output {o}");
            }
        }
        let short = tensor("l.weight_q4zero", DataType::Uint8, &[2, 1], vec![0x88, 0x88]);
        assert_eq!(expand_q4(inline(&q), inline(&s), Some(inline(&short))).unwrap_err(), "stored weight l.weight_q4: inconsistent 4-bit blocks");
    }

    #[test]
    fn packed_weights_on_a_body_of_another_scheme_are_refused() {
        for scheme in [WeightScheme::F32, WeightScheme::F16, WeightScheme::Int8] {
            let err = Encoder::load(Vec::new(), None, 384, 1, scheme, Int4::Packed).err().expect("refused");
            assert_eq!(err, format!("packed weights need an int4 body; the manifest says this one's are {}", scheme.name()));
        }
    }
}
