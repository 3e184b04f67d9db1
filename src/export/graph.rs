//! A small builder over tract's ONNX protobuf types (prost), for writing graphs.

use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::bundle::BODY_DATA_FILE;

/// ONNX opset the exported bodies use (LayerNormalization needs 17).
pub const OPSET: i64 = 17;
pub const IR_VERSION: i64 = 8;

#[derive(Default)]
pub struct Graph {
    pub nodes: Vec<NodeProto>,
    pub inits: Vec<TensorProto>,
    pub inputs: Vec<ValueInfoProto>,
    pub outputs: Vec<ValueInfoProto>,
    counter: usize,
}

impl Graph {
    /// Add a node with one output and return the output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.counter += 1;
        let out = format!("{}_{}", op.to_lowercase(), self.counter);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: format!("n{}_{op}", self.counter),
            op_type: op.to_string(),
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    pub fn init_f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.inits.push(tensor_f32(name, dims, data));
        name.to_string()
    }

    pub fn init_i64(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        let mut t = tensor_i64(name, data);
        t.dims = dims.iter().map(|d| *d as i64).collect();
        self.inits.push(t);
        name.to_string()
    }

    /// A constant stored as f16 and cast to f32 in the graph (folded by tract at load).
    pub fn init_f16_as_f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        let stored = format!("{name}_f16");
        self.inits.push(TensorProto {
            name: stored.clone(),
            dims: dims.iter().map(|d| *d as i64).collect(),
            data_type: DataType::Float16 as i32,
            raw_data: data.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
            ..Default::default()
        });
        self.node("Cast", &[&stored], vec![attr_int("to", DataType::Float as i64)])
    }

    /// A scalar u8 constant, deduplicated by name.
    pub fn init_u8(&mut self, name: &str, v: u8) -> String {
        if !self.inits.iter().any(|t| t.name == name) {
            self.inits.push(TensorProto { name: name.into(), data_type: DataType::Uint8 as i32, raw_data: vec![v], ..Default::default() });
        }
        name.to_string()
    }

    /// An int64 constant, deduplicated by name.
    pub fn const_i64(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        if !self.inits.iter().any(|t| t.name == name) {
            self.init_i64(name, dims, data);
        }
        name.to_string()
    }

    /// A scalar f32 constant, deduplicated by name.
    pub fn scalar(&mut self, name: &str, v: f32) -> String {
        if !self.inits.iter().any(|t| t.name == name) {
            self.init_f32(name, &[], &[v]);
        }
        name.to_string()
    }

    pub fn into_model(self, name: &str) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
            producer_name: "embslim".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: name.into(),
                initializer: self.inits,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Tensors this large or larger go to the external data file (ONNX's own tools use the
/// same threshold); the small ones (shapes, axes, scalars) stay in the graph.
const EXTERNAL_MIN_BYTES: usize = 1024;
/// Offsets in the external data file are multiples of this, so a runtime that maps the
/// file can view any tensor in place (64: a cache line, and the widest SIMD alignment).
const EXTERNAL_ALIGN: usize = 64;

/// Move the large initializers of `model` out of the graph into ONNX external data, to be
/// written as [`BODY_DATA_FILE`] beside the graph, and return those bytes. Loading then
/// never holds every weight twice: tract builds each tensor straight from the data file
/// instead of first decoding a graph that holds them all (the int4 all-MiniLM-L6-v2 body's
/// load peak was two copies of its weights). ONNX Runtime and the `onnx` package read the
/// pair as they read any model saved with external data.
pub fn move_to_external_data(model: &mut ModelProto) -> Vec<u8> {
    let mut data = Vec::new();
    for t in model.graph.iter_mut().flat_map(|g| g.initializer.iter_mut()) {
        if t.raw_data.len() < EXTERNAL_MIN_BYTES {
            continue;
        }
        data.resize(data.len().next_multiple_of(EXTERNAL_ALIGN), 0);
        let entry = |key: &str, value: String| StringStringEntryProto { key: key.into(), value };
        t.external_data = vec![entry("location", BODY_DATA_FILE.into()), entry("offset", data.len().to_string()), entry("length", t.raw_data.len().to_string())];
        t.data_location = Some(DataLocation::External as i32);
        data.append(&mut t.raw_data);
    }
    data
}

pub fn tensor_f32(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|d| *d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A 1-D int64 tensor.
pub fn tensor_i64(name: &str, data: &[i64]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: vec![data.len() as i64],
        data_type: DataType::Int64 as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A tensor value description with symbolic (`&str`) or fixed (`i64`) dimensions.
pub enum Dim<'a> {
    Sym(&'a str),
    Fixed(i64),
}

pub fn value_info(name: &str, elem: DataType, dims: &[Dim<'_>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Sym(s) => tensor_shape_proto::dimension::Value::DimParam(s.to_string()),
                Dim::Fixed(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i: v, ..Default::default() }
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: v.to_vec(), ..Default::default() }
}

pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Float as i32, f: v, ..Default::default() }
}
