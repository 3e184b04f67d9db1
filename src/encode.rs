//! The transformer body, run by tract: loaded once with a symbolic batch and sequence
//! length, optimized once, and reused for every call (the plan is `Send + Sync`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::DimLike;
use tract_onnx::tract_core::runtime::RunOptions;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, tensor_proto::DataType, tensor_shape_proto::dimension::Value as DimValue, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, TypeProto, ValueInfoProto,
};

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

/// The body as a chain of plans ([`partition`]); values pass between them in slots:
/// the body's inputs first, then each value one stage hands to a later one.
pub struct Encoder {
    stages: Vec<Stage>,
    inputs: Vec<BodyInput>,
    /// Slots of the body's outputs: the hidden states, then the values asked for.
    outputs: Vec<usize>,
    slots: usize,
    dim: usize,
}

struct Stage {
    plan: Arc<TypedRunnableModel>,
    /// Slot of each input of the plan, and whether this is the slot's last reader.
    takes: Vec<(usize, bool)>,
    /// Slot of each output of the plan.
    gives: Vec<usize>,
}

/// At most this many plans a body is loaded as. tract holds two copies of a plan's
/// weights while it builds it (the graph's constants and its own packed ones): loaded
/// whole, the int4 all-MiniLM-L6-v2 body peaked at 20 MB of heap for 6.7 MB of weights;
/// in stages the second copy is one stage's.
pub const BODY_STAGES: usize = 8;

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
        Self::build(proto, data, dim, threads, &[], BODY_STAGES)
    }

    /// The body of `proto` (weights already f32 or packed), as one plan, with the values
    /// named in `extra` as further outputs after the hidden states
    /// ([`Encoder::run_outputs`]). Tensors the proto stores as external data are read from
    /// `data` (checked by [`expand_stored_weights`]).
    pub fn from_proto(proto: ModelProto, data: Option<BodyData>, dim: usize, threads: usize, extra: &[String]) -> Result<Self, String> {
        Self::build(proto, data, dim, threads, extra, 1)
    }

    /// Load `proto` as a chain of at most `max_stages` plans.
    pub fn build(mut proto: ModelProto, data: Option<BodyData>, dim: usize, threads: usize, extra: &[String], max_stages: usize) -> Result<Self, String> {
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
        let mut graph = proto.graph.take().ok_or("not a loadable ONNX body: it has no graph")?;
        let initializers: HashMap<String, usize> = graph.initializer.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        // the body's inputs, with the facts we run them with
        let scope = tract_onnx::tract_core::internal::SymbolScope::default();
        let (batch, seq) = (scope.sym("batch").to_dim(), scope.sym("seq").to_dim());
        let mut inputs = Vec::new();
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        let mut facts: Vec<InferenceFact> = Vec::new();
        for input in graph.input.iter().filter(|i| !initializers.contains_key(&i.name)) {
            let (kind, fact) = match input.name.as_str() {
                "inputs_embeds" => {
                    // a body of another model declares another width: say so, rather than
                    // letting shape inference fail somewhere inside the graph
                    if let Some(w) = declared_dim(input, 2).filter(|w| *w != dim) {
                        return Err(format!("expects inputs_embeds of width {w}, but the manifest's dim is {dim} (a body of another model?)"));
                    }
                    (BodyInput::InputsEmbeds, InferenceFact::dt_shape(f32::datum_type(), tvec!(batch.clone(), seq.clone(), dim.to_dim())))
                }
                "attention_mask" => (BodyInput::AttentionMask, InferenceFact::dt_shape(i64::datum_type(), tvec!(batch.clone(), seq.clone()))),
                "token_type_ids" => (BodyInput::TokenTypeIds, InferenceFact::dt_shape(i64::datum_type(), tvec!(batch.clone(), seq.clone()))),
                other => return Err(format!("unexpected body input '{other}' (expected inputs_embeds, attention_mask, token_type_ids)")),
            };
            slot_of.insert(input.name.clone(), inputs.len());
            facts.push(fact);
            inputs.push(kind);
        }
        if !inputs.contains(&BodyInput::InputsEmbeds) {
            return Err("the body has no inputs_embeds input".into());
        }
        let mut wanted: Vec<ValueInfoProto> = graph.output.clone();
        wanted.extend(extra.iter().map(|name| ValueInfoProto { name: name.clone(), ..Default::default() }));
        let ranges = partition(&graph, &initializers, &wanted, max_stages)?;
        // the last stage reading each value, and the stages reading each initializer
        let stage_of_node: Vec<usize> = ranges.iter().enumerate().flat_map(|(k, r)| r.clone().map(move |_| k)).collect();
        let mut last_reader: HashMap<&str, usize> = HashMap::new();
        let mut init_readers: Vec<Vec<usize>> = vec![Vec::new(); graph.initializer.len()];
        for (i, n) in graph.node.iter().enumerate() {
            for v in n.input.iter().filter(|v| !v.is_empty()) {
                last_reader.insert(v, stage_of_node[i]);
                if let Some(&t) = initializers.get(v) {
                    init_readers[t].push(stage_of_node[i]);
                }
            }
        }
        let last_reader: HashMap<String, usize> = last_reader.into_iter().map(|(v, k)| (v.to_string(), k)).collect();
        let options = RunOptions { executor: (threads > 1).then(|| Executor::multithread(threads)), ..Default::default() };
        let mut stages = Vec::new();
        let mut typed_facts: Vec<Option<TypedFact>> = vec![None; inputs.len()];
        for (k, range) in ranges.iter().enumerate() {
            let node: Vec<NodeProto> = graph.node[range.clone()].iter_mut().map(std::mem::take).collect();
            let produced: std::collections::HashSet<&str> = node.iter().flat_map(|n| n.output.iter().map(String::as_str)).collect();
            let mut stage_inputs: Vec<String> = Vec::new();
            let mut stage_inits = Vec::new();
            for v in node.iter().flat_map(|n| n.input.iter()).filter(|v| !v.is_empty() && !produced.contains(v.as_str())) {
                if let Some(&t) = initializers.get(v) {
                    if !stage_inits.iter().any(|x: &TensorProto| &x.name == v) {
                        // a weight read by one stage moves there; shared constants are copied
                        let readers = &init_readers[t];
                        stage_inits.push(if readers.iter().all(|r| *r == k) { std::mem::take(&mut graph.initializer[t]) } else { graph.initializer[t].clone() });
                    }
                } else if !stage_inputs.contains(v) {
                    stage_inputs.push(v.clone());
                }
            }
            // what this stage hands on: values read by later stages, and the body's outputs
            // it makes or reads (collected from their slots after the last stage)
            let is_wanted = |v: &String| wanted.iter().any(|w| &w.name == v);
            let outputs: Vec<ValueInfoProto> = node
                .iter()
                .flat_map(|n| n.output.iter())
                .filter(|v| last_reader.get(*v).is_some_and(|r| *r > k) || is_wanted(v))
                .chain(stage_inputs.iter().filter(|v| is_wanted(v)))
                .map(|name| ValueInfoProto { name: name.clone(), ..Default::default() })
                .collect();
            let mut input_info = Vec::new();
            let mut takes = Vec::new();
            let mut stage_facts = Vec::new();
            for v in &stage_inputs {
                let slot = *slot_of.get(v).ok_or_else(|| format!("not a loadable ONNX body: value '{v}' is used but never defined"))?;
                let fact = match &typed_facts[slot] {
                    Some(f) => InferenceFact::from(f),
                    None => facts[slot].clone(),
                };
                let elem = fact.datum_type().and_then(onnx_type).ok_or_else(|| format!("cannot load the body in stages: value '{v}' has no ONNX type"))?;
                input_info.push(value_info(v, elem));
                takes.push((slot, last_reader.get(v).is_none_or(|r| *r <= k) && !is_wanted(v)));
                stage_facts.push(fact);
            }
            let stage_proto = ModelProto {
                ir_version: proto.ir_version,
                opset_import: proto.opset_import.clone(),
                graph: Some(GraphProto { node, initializer: stage_inits, input: input_info, output: outputs.clone(), ..Default::default() }),
                ..Default::default()
            };
            let mut template = InferenceModel::default();
            template.symbols = scope.clone();
            let parsed = onnx.parse_with_template(&stage_proto, root, template).map_err(|e| format!("not a loadable ONNX body: {e:#}"))?;
            drop(stage_proto);
            if !parsed.unresolved_inputs.is_empty() {
                return Err(format!("not a loadable ONNX body: values used but never defined: {}", parsed.unresolved_inputs.join(", ")));
            }
            let mut model = parsed.model;
            for (i, fact) in stage_facts.into_iter().enumerate() {
                model.set_input_fact(i, fact).map_err(|e| format!("input '{}': {e:#}", stage_inputs[i]))?;
            }
            let typed = model.into_optimized().map_err(|e| format!("cannot optimize the body: {e:#}"))?;
            let mut gives = Vec::new();
            for (i, o) in outputs.iter().enumerate() {
                let slot = *slot_of.entry(o.name.clone()).or_insert(facts.len());
                if slot == facts.len() {
                    facts.push(InferenceFact::default());
                    typed_facts.push(None);
                }
                typed_facts[slot] = Some(typed.output_fact(i).map_err(|e| e.to_string())?.clone());
                gives.push(slot);
            }
            let plan = typed.into_runnable_with_options(&options).map_err(|e| format!("cannot plan the body: {e:#}"))?;
            stages.push(Stage { plan, takes, gives });
        }
        drop(onnx);
        let outputs: Vec<usize> = wanted.iter().map(|w| slot_of[&w.name]).collect();
        let out_fact = outputs.first().and_then(|s| typed_facts[*s].as_ref()).ok_or("the body has no output")?;
        let last = out_fact.shape.last().and_then(|d| d.to_usize().ok());
        if out_fact.shape.rank() != 3 || last != Some(dim) {
            return Err(format!("body output has shape {:?}, expected [batch, seq, {dim}]", out_fact.shape));
        }
        Ok(Encoder { stages, inputs, outputs, slots: facts.len(), dim })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// How many plans the body was loaded as.
    pub fn stages(&self) -> usize {
        self.stages.len()
    }

    /// Per-token hidden states [batch, seq, dim], row-major.
    pub fn run(&self, b: BodyBatch) -> Result<Vec<f32>, String> {
        let (batch, seq) = (b.batch, b.seq);
        let out = self.run_stages(b, |plan, inputs| plan.run(inputs))?;
        self.hidden_states(out, batch, seq)
    }

    /// Every output of one run, flattened row-major: the hidden states, then the values
    /// [`Encoder::from_proto`] was asked for.
    pub fn run_outputs(&self, b: BodyBatch) -> Result<Vec<Vec<f32>>, String> {
        let out = self.run_stages(b, |plan, inputs| plan.run(inputs))?;
        out.iter().map(|t| t.to_plain_array_view::<f32>().map(|v| v.iter().copied().collect()).map_err(|e| e.to_string())).collect()
    }

    /// Run `b` once, timing every node of the plans: milliseconds per op name, summed over
    /// the nodes of that op, slowest first (what `footprint --profile` prints).
    pub fn profile(&self, b: BodyBatch) -> Result<Vec<(String, f64)>, String> {
        let ms = std::cell::RefCell::new(HashMap::<String, f64>::new());
        self.run_stages(b, |plan, inputs| {
            plan.spawn()?.run_plan_with_eval(inputs, |ctx, op_state, node, input| {
                let t = std::time::Instant::now();
                let r = tract_onnx::tract_core::plan::eval(ctx, op_state, node, input);
                *ms.borrow_mut().entry(node.op().name().to_string()).or_default() += t.elapsed().as_secs_f64() * 1e3;
                r
            })
        })?;
        let mut ms: Vec<(String, f64)> = ms.into_inner().into_iter().collect();
        ms.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(ms)
    }

    /// Run the stages in order with `run`, each on its slots' values; the body's outputs.
    fn run_stages(&self, b: BodyBatch, mut run: impl FnMut(&Arc<TypedRunnableModel>, TVec<TValue>) -> TractResult<TVec<TValue>>) -> Result<TVec<TValue>, String> {
        let mut slots: Vec<Option<TValue>> = vec![None; self.slots];
        for (slot, v) in self.inputs_of(b)?.into_iter().enumerate() {
            slots[slot] = Some(v);
        }
        for stage in &self.stages {
            // a value's last reader takes it, so activations are freed as soon as possible
            let inputs = stage.takes.iter().map(|&(s, last)| if last { slots[s].take() } else { slots[s].clone() }).collect::<Option<TVec<TValue>>>().ok_or("a stage's input was not computed")?;
            let out = run(&stage.plan, inputs).map_err(|e| format!("running the body: {e:#}"))?;
            for (&slot, v) in stage.gives.iter().zip(out) {
                slots[slot] = Some(v);
            }
        }
        self.outputs.iter().map(|&s| slots[s].clone()).collect::<Option<TVec<TValue>>>().ok_or_else(|| "the body's output was not computed".into())
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

/// Ops whose outputs are activations: a value made by one may cross from one stage to the
/// next, as may the body's inputs and what [`RESHAPING_OPS`] make of either. Anything else
/// (shapes, indices, constants) stays inside its stage, where tract can still fold it.
const ACTIVATION_OPS: [&str; 15] =
    ["Add", "Sub", "Mul", "Div", "MatMul", "MatMulNBits", "Gemm", "LayerNormalization", "Softmax", "Erf", "Tanh", "Relu", "Sigmoid", "Transpose", "Where"];
/// Ops whose output is an activation when their first input is one.
const RESHAPING_OPS: [&str; 6] = ["Unsqueeze", "Squeeze", "Reshape", "Cast", "Expand", "Identity"];

/// Cut the nodes of `graph` (ONNX orders them topologically) into at most `max_stages`
/// ranges holding about equal bytes of initializers, each cut where the values crossing
/// it are few and all activations (in a BERT body: between layers, the hidden states and
/// the attention mask). A graph with no such cut stays whole. Also checks that every value
/// read is defined before, and that the `wanted` outputs exist.
fn partition(graph: &GraphProto, initializers: &HashMap<String, usize>, wanted: &[ValueInfoProto], max_stages: usize) -> Result<Vec<std::ops::Range<usize>>, String> {
    let n = graph.node.len();
    let inputs: std::collections::HashSet<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
    // the node defining each value, the last node reading it, and the bytes of the
    // initializers each node is the first to read
    let mut def: HashMap<&str, usize> = HashMap::new();
    let mut last: HashMap<&str, usize> = HashMap::new();
    let mut bytes = vec![0u64; n];
    let mut counted = std::collections::HashSet::new();
    for (i, node) in graph.node.iter().enumerate() {
        for v in node.input.iter().filter(|v| !v.is_empty()) {
            if let Some(&t) = initializers.get(v) {
                if counted.insert(t) {
                    bytes[i] += tensor_bytes(&graph.initializer[t]);
                }
            } else if !def.contains_key(v.as_str()) && !inputs.contains(v.as_str()) {
                return Err(format!("not a loadable ONNX body: value '{v}' is used before it is defined"));
            } else {
                last.insert(v, i);
            }
        }
        for o in &node.output {
            def.insert(o, i);
        }
    }
    // the values that are activations
    let mut data: std::collections::HashSet<&str> = inputs.iter().copied().filter(|i| !initializers.contains_key(*i)).collect();
    for node in &graph.node {
        let op = node.op_type.as_str();
        if ACTIVATION_OPS.contains(&op) || (RESHAPING_OPS.contains(&op) && node.input.first().is_some_and(|i| data.contains(i.as_str()))) {
            data.extend(node.output.iter().map(String::as_str));
        }
    }
    for w in wanted {
        if !def.contains_key(w.name.as_str()) && !inputs.contains(w.name.as_str()) {
            return Err(format!("the body has no value named '{}'", w.name));
        }
        last.insert(&w.name, n);
    }
    let total: u64 = bytes.iter().sum();
    if max_stages <= 1 || n < 2 || total == 0 {
        return Ok(vec![0..n]);
    }
    // for a cut after node i: how many values cross it, or None if one is not an activation
    let crossing = |i: usize| -> Option<usize> {
        let mut count = 0;
        for (v, &l) in &last {
            let start = match def.get(v) {
                Some(&d) => d,
                None if inputs.contains(v) => 0,
                None => continue,
            };
            if start <= i && i < l {
                if !data.contains(v) {
                    return None;
                }
                count += 1;
            }
        }
        Some(count)
    };
    let crossings: Vec<Option<usize>> = (0..n - 1).map(crossing).collect();
    let mut cum = 0u64;
    let cums: Vec<u64> = bytes.iter().map(|b| { cum += b; cum }).collect();
    let (mut cuts, half) = (Vec::new(), total / (2 * max_stages as u64));
    for k in 1..max_stages as u64 {
        let ideal = total * k / max_stages as u64;
        let after = cuts.last().map_or(0, |c| c + 1);
        let best = (after..n - 1)
            .filter(|&i| cums[i].abs_diff(ideal) <= half)
            .filter_map(|i| crossings[i].map(|c| (c, cums[i].abs_diff(ideal), i)))
            .min();
        if let Some((_, _, i)) = best {
            cuts.push(i);
        }
    }
    let mut ranges = Vec::new();
    let mut start = 0;
    for c in cuts {
        ranges.push(start..c + 1);
        start = c + 1;
    }
    ranges.push(start..n);
    Ok(ranges)
}

/// Bytes of an initializer's data, inline or external.
fn tensor_bytes(t: &TensorProto) -> u64 {
    external(t, "length").and_then(|v| v.parse().ok()).unwrap_or(t.raw_data.len() as u64)
}

/// The value of an initializer's external-data entry `key`, if it has one.
fn external<'a>(t: &'a TensorProto, key: &str) -> Option<&'a str> {
    t.external_data.iter().find(|e| e.key == key).map(|e| e.value.as_str())
}

/// The size of axis `axis` a graph input declares, if it declares one.
fn declared_dim(input: &ValueInfoProto, axis: usize) -> Option<usize> {
    let Some(type_proto::Value::TensorType(t)) = input.r#type.as_ref()?.value.as_ref() else { return None };
    match t.shape.as_ref()?.dim.get(axis)?.value {
        Some(DimValue::DimValue(v)) if v > 0 => usize::try_from(v).ok(),
        _ => None,
    }
}

/// A graph input of element type `elem` and no declared shape (a stage's facts are set
/// from the stage before it).
fn value_info(name: &str, elem: DataType) -> ValueInfoProto {
    let tensor = type_proto::Tensor { elem_type: elem as i32, shape: None };
    ValueInfoProto { name: name.into(), r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }), ..Default::default() }
}

/// The ONNX element type of a tract datum type, for the ones activations have.
fn onnx_type(dt: DatumType) -> Option<DataType> {
    Some(match dt {
        DatumType::F32 => DataType::Float,
        DatumType::F16 => DataType::Float16,
        DatumType::F64 => DataType::Double,
        DatumType::I64 => DataType::Int64,
        DatumType::I32 => DataType::Int32,
        DatumType::U8 => DataType::Uint8,
        DatumType::I8 => DataType::Int8,
        DatumType::Bool => DataType::Bool,
        _ => return None,
    })
}

/// How tract holds an int4 body's weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Int4 {
    /// Expanded to f32 before tract reads the graph: tract's f32 kernels, the fastest here
    /// (x86 AVX2), at f32 weight memory (all-MiniLM-L6-v2: 46 MB heap after load).
    #[default]
    Expanded,
    /// Kept 4-bit: each MatMul becomes ONNX Runtime's `MatMulNBits` (4 bits, blocks of 32,
    /// a zero point per block: exactly our stored layout), which tract 0.23 holds as a Q4_0
    /// block-quant constant, dequantized inside its matmul kernels, plus a small correction
    /// for zero points other than 8 (all-MiniLM-L6-v2: 11 MB heap after load; about 2.5
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
            let key = |k: &str| external(t, k);
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
