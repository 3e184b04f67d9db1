//! Turn an existing ONNX export into a body: the Gather on the word-embedding table is
//! replaced by a new `inputs_embeds` input, every other node is kept.

use std::path::Path;

use prost::Message;
use tract_onnx::pb::{tensor_proto::DataType, type_proto, ModelProto, NodeProto};

use super::graph::{value_info, Dim};
use crate::error::{Error, Result};

/// What the rewrite found out about the graph.
pub struct Rewritten {
    pub model: ModelProto,
    pub dim: usize,
    pub token_type_ids: bool,
}

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: format!("embslim_{output}"),
        op_type: op.to_string(),
        ..Default::default()
    }
}

pub fn rewrite(bytes: &[u8], path: &Path) -> Result<Rewritten> {
    let err = |msg: String| Error::model(path, msg);
    let mut model = ModelProto::decode(bytes).map_err(|e| err(format!("not a valid ONNX file: {e}")))?;
    let graph = model.graph.as_mut().ok_or_else(|| err("ONNX model has no graph".into()))?;
    let ids = graph
        .input
        .iter()
        .map(|i| i.name.clone())
        .find(|n| n == "input_ids")
        .ok_or_else(|| err("ONNX graph has no input named input_ids".into()))?;
    let gather_pos = graph
        .node
        .iter()
        .position(|n| n.op_type == "Gather" && n.input.len() == 2 && n.input[1] == ids && graph.initializer.iter().any(|t| t.name == n.input[0] && t.dims.len() == 2))
        .ok_or_else(|| err(format!("no Gather on '{ids}' reads a [vocab, dim] initializer")))?;
    let gather = graph.node.remove(gather_pos);
    let table = gather.input[0].clone();
    let dim = graph.initializer.iter().find(|t| t.name == table && t.dims.len() == 2).map(|t| t.dims[1]).unwrap_or(0);
    let dim = usize::try_from(dim).map_err(|_| err(format!("table '{table}' has a negative dimension")))?;
    let embedded = gather.output.first().cloned().ok_or_else(|| err(format!("the Gather on '{table}' has no output")))?;
    let table_dim = dim;

    // Keep one output: the per-token hidden states [batch, seq, d]; pooling is ours.
    let rank3 = |o: &&tract_onnx::pb::ValueInfoProto| match o.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t.shape.as_ref().is_some_and(|s| {
            s.dim.len() == 3
                && matches!(s.dim[2].value, Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v == table_dim as i64)
        }),
        _ => false,
    };
    let hidden = graph
        .output
        .iter()
        .find(rank3)
        .map(|o| o.name.clone())
        .ok_or_else(|| err(format!("no graph output has shape [batch, seq, {table_dim}] (the per-token hidden states)")))?;
    graph.node.push(node("Identity", &[&hidden], "last_hidden_state"));
    graph.output = vec![value_info("last_hidden_state", DataType::Float, &[Dim::Sym("batch"), Dim::Sym("seq"), Dim::Fixed(dim as i64)])];
    prune_dead_nodes(graph);

    // The rest of the graph reads only the shape of input_ids: serve it from inputs_embeds.
    let shape3 = "embslim_embeds_shape";
    let shape2 = "embslim_ids_shape";
    let mut uses_shape = false;
    for n in graph.node.iter_mut() {
        for inp in n.input.iter_mut() {
            if *inp == embedded {
                *inp = "inputs_embeds".to_string();
            } else if *inp == ids {
                if n.op_type != "Shape" {
                    return Err(err(format!("node '{}' ({}) reads input_ids directly; only Shape and the embedding Gather can", n.name, n.op_type)));
                }
                if n.attribute.iter().any(|a| a.name == "start" || a.name == "end") {
                    return Err(err(format!("node '{}' takes a partial Shape of input_ids, which is not supported", n.name)));
                }
                n.op_type = "Identity".into();
                *inp = shape2.to_string();
                uses_shape = true;
            }
        }
    }
    if graph.initializer.iter().filter(|t| t.name == table).count() > 0 && !graph.node.iter().any(|n| n.input.contains(&table)) {
        graph.initializer.retain(|t| t.name != table);
    }
    if uses_shape {
        let c0 = super::graph::tensor_i64("embslim_c0", &[0]);
        let c2 = super::graph::tensor_i64("embslim_c2", &[2]);
        graph.initializer.extend([c0, c2]);
        let prelude = vec![
            node("Shape", &["inputs_embeds"], shape3),
            node("Slice", &[shape3, "embslim_c0", "embslim_c2", "embslim_c0"], shape2),
        ];
        graph.node.splice(0..0, prelude);
    }
    for i in graph.input.iter_mut() {
        if i.name == ids {
            *i = value_info("inputs_embeds", DataType::Float, &[Dim::Sym("batch"), Dim::Sym("seq"), Dim::Fixed(dim as i64)]);
        }
    }
    let token_type_ids = graph.input.iter().any(|i| i.name == "token_type_ids");

    // intermediate shape hints may mention input_ids' shape; tract re-infers them
    graph.value_info.clear();
    Ok(Rewritten { model, dim, token_type_ids })
}

/// Drop the nodes that no graph output depends on (e.g. the pass-through outputs an
/// export adds for input_ids), walking back from the outputs.
fn prune_dead_nodes(graph: &mut tract_onnx::pb::GraphProto) {
    use std::collections::{HashMap, HashSet};
    let producer: HashMap<&str, usize> = graph.node.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect();
    let mut live = HashSet::new();
    let mut stack: Vec<usize> = graph.output.iter().filter_map(|o| producer.get(o.name.as_str()).copied()).collect();
    while let Some(i) = stack.pop() {
        if live.insert(i) {
            stack.extend(graph.node[i].input.iter().filter_map(|inp| producer.get(inp.as_str()).copied()));
        }
    }
    let mut i = 0;
    graph.node.retain(|_| {
        i += 1;
        live.contains(&(i - 1))
    });
    let used: HashSet<String> = graph.node.iter().flat_map(|n| n.input.iter().cloned()).collect();
    graph.initializer.retain(|t| used.contains(&t.name));
}
