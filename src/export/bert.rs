//! Build the ONNX body of a BERT-family encoder from a Hugging Face checkpoint directory
//! (config.json + model.safetensors): everything after the word-embedding lookup.
//!
//! Inputs: `inputs_embeds` [batch, seq, d] f32, `attention_mask` [batch, seq] i64 and,
//! when the model has token types, `token_type_ids` [batch, seq] i64. Output:
//! `last_hidden_state` [batch, seq, d]. Position and token-type embeddings stay in the body.

use std::path::Path;

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use tract_onnx::pb::{tensor_proto::DataType, ModelProto};

use super::graph::{attr_float, attr_int, attr_ints, value_info, Dim, Graph};
use super::calibrate::Hessians;
use super::weights::Linear;
use crate::manifest::WeightScheme;
use crate::error::{Error, Result};
use crate::mmap::Mapped;

/// Additive attention-mask value for padded positions. Finite so that an f16 body does
/// not turn it into -inf (and a softmax row into NaN); exp(-1e4) is exactly 0 in f32.
pub const MASK_NEG: f32 = -10000.0;

/// The fields of a Hugging Face BERT config.json that shape the graph.
#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
    #[serde(default)]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f32,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub type_vocab_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
}

fn default_eps() -> f32 {
    1e-12
}
fn default_positions() -> usize {
    512
}
fn default_act() -> String {
    "gelu".into()
}
fn default_pos_type() -> String {
    "absolute".into()
}

impl BertConfig {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let cfg: BertConfig = serde_json::from_slice(&bytes).map_err(|e| Error::model(&path, format!("not a BERT config: {e}")))?;
        let bad = |msg: String| Err(Error::model(&path, msg));
        if !matches!(cfg.model_type.as_str(), "" | "bert") {
            return bad(format!("model_type '{}' is not supported (BERT-family encoders with absolute positions only)", cfg.model_type));
        }
        if cfg.position_embedding_type != "absolute" {
            return bad(format!("position_embedding_type '{}' is not supported (only 'absolute')", cfg.position_embedding_type));
        }
        if !matches!(cfg.hidden_act.as_str(), "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu") {
            return bad(format!("hidden_act '{}' is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)", cfg.hidden_act));
        }
        if cfg.num_attention_heads == 0 || cfg.hidden_size % cfg.num_attention_heads != 0 {
            return bad(format!("hidden_size {} is not a multiple of num_attention_heads {}", cfg.hidden_size, cfg.num_attention_heads));
        }
        if !(cfg.layer_norm_eps.is_finite() && cfg.layer_norm_eps > 0.0) {
            return bad(format!("layer_norm_eps {} must be positive", cfg.layer_norm_eps));
        }
        Ok(cfg)
    }
}

/// Tensors of a checkpoint, read from its memory map on demand.
struct Checkpoint<'a> {
    st: SafeTensors<'a>,
    prefix: String,
    path: &'a Path,
}

impl<'a> Checkpoint<'a> {
    fn new(bytes: &'a [u8], path: &'a Path) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| Error::model(path, format!("not a valid safetensors file: {e:?}")))?;
        let prefix = st
            .names()
            .iter()
            .find_map(|n| n.strip_suffix("embeddings.word_embeddings.weight").map(str::to_string))
            .ok_or_else(|| Error::model(path, "no embeddings.word_embeddings.weight tensor"))?;
        Ok(Checkpoint { st, prefix, path })
    }

    /// Tensor `name` (without the model prefix) as f32, checked against `shape`.
    /// Old checkpoints call LayerNorm parameters gamma/beta; both names are accepted.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let full = format!("{}{name}", self.prefix);
        let alt = full.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta");
        let view = self
            .st
            .tensor(&full)
            .or_else(|_| self.st.tensor(&alt))
            .map_err(|_| Error::model(self.path, format!("tensor '{full}' is missing")))?;
        if view.shape() != shape {
            return Err(Error::model(self.path, format!("tensor '{full}' has shape {:?}, expected {shape:?}", view.shape())));
        }
        let b = view.data();
        let out: Vec<f32> = match view.dtype() {
            Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => return Err(Error::model(self.path, format!("tensor '{full}' has dtype {other:?}; expected F32, F16 or BF16"))),
        };
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            return Err(Error::model(self.path, format!("tensor '{full}' holds a non-finite value at index {i}")));
        }
        Ok(out)
    }

    /// A torch Linear ([out, in] weight + bias) as a MatMul-ready [in, out] weight.
    fn linear(&self, name: &str, n_in: usize, n_out: usize) -> Result<Linear> {
        let w = self.get(&format!("{name}.weight"), &[n_out, n_in])?;
        let mut t = vec![0f32; n_in * n_out];
        for o in 0..n_out {
            for i in 0..n_in {
                t[i * n_out + o] = w[o * n_in + i];
            }
        }
        Ok(Linear { name: name.to_string(), n_in, n_out, weight: t, bias: self.get(&format!("{name}.bias"), &[n_out])? })
    }
}

/// The body of a checkpoint, and for each dense layer (by name) the graph value it reads.
pub struct Body {
    pub model: ModelProto,
    pub config: BertConfig,
    pub layer_inputs: Vec<(String, String)>,
}

/// Build the body of the checkpoint in `dir` with MatMul weights stored as `scheme`; int4
/// layers with an input curvature in `hessians` (by layer name) are quantized by GPTQ.
pub fn build_body(dir: &Path, scheme: WeightScheme, hessians: &Hessians) -> Result<Body> {
    let cfg = BertConfig::read(dir)?;
    let path = dir.join("model.safetensors");
    // SAFETY: checkpoints are inputs we only read; see `Mapped::open`.
    let map = unsafe { Mapped::open(&path)? };
    let ck = Checkpoint::new(map.bytes(), &path)?;
    let (d, ff, heads) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads);
    let dh = d / heads;
    let mut g = Graph::default();
    let mut layer_inputs = Vec::new();
    let mut dense = |g: &mut Graph, name: String, n_in: usize, n_out: usize, x: &str| -> Result<String> {
        layer_inputs.push((name.clone(), x.to_string()));
        scheme.emit(g, &ck.linear(&name, n_in, n_out)?, x, hessians.get(&name).map(Vec::as_slice))
    };

    g.inputs.push(value_info("inputs_embeds", DataType::Float, &[Dim::Sym("batch"), Dim::Sym("seq"), Dim::Fixed(d as i64)]));
    g.inputs.push(value_info("attention_mask", DataType::Int64, &[Dim::Sym("batch"), Dim::Sym("seq")]));

    // positions 0..seq: slice the table by the sequence length of inputs_embeds
    let shape = g.node("Shape", &["inputs_embeds"], vec![]);
    let one = g.init_i64("c_i64_1", &[1], &[1]);
    let two = g.init_i64("c_i64_2", &[1], &[2]);
    let zero = g.init_i64("c_i64_0", &[1], &[0]);
    let seq = g.node("Slice", &[&shape, &one, &two, &zero], vec![]);
    let positions = ck.get("embeddings.position_embeddings.weight", &[cfg.max_position_embeddings, d])?;
    // a quantized body stores the position table in f16 too (0.4 MB less for MiniLM)
    let pos_table = match scheme {
        WeightScheme::F32 => g.init_f32("position_embeddings", &[cfg.max_position_embeddings, d], &positions),
        _ => g.init_f16_as_f32("position_embeddings", &[cfg.max_position_embeddings, d], &positions),
    };
    let pos = g.node("Slice", &[&pos_table, &zero, &seq, &zero], vec![]);
    let mut e = g.node("Add", &["inputs_embeds", &pos], vec![]);
    if cfg.type_vocab_size > 0 {
        g.inputs.push(value_info("token_type_ids", DataType::Int64, &[Dim::Sym("batch"), Dim::Sym("seq")]));
        let tt_table = g.init_f32("token_type_embeddings", &[cfg.type_vocab_size, d], &ck.get("embeddings.token_type_embeddings.weight", &[cfg.type_vocab_size, d])?);
        let tt = g.node("Gather", &[&tt_table, "token_type_ids"], vec![attr_int("axis", 0)]);
        e = g.node("Add", &[&e, &tt], vec![]);
    }
    let mut h = layer_norm(&mut g, &ck, &e, "embeddings.LayerNorm", d, cfg.layer_norm_eps)?;

    // additive mask [batch, 1, 1, seq]: 0 where attended, MASK_NEG where padded
    let m = g.node("Cast", &["attention_mask"], vec![attr_int("to", DataType::Float as i64)]);
    let c1 = g.scalar("c_f32_1", 1.0);
    let neg = g.scalar("c_mask_neg", MASK_NEG);
    let inv = g.node("Sub", &[&c1, &m], vec![]);
    let add_mask = g.node("Mul", &[&inv, &neg], vec![]);
    let axes12 = g.init_i64("c_axes_1_2", &[2], &[1, 2]);
    let mask = g.node("Unsqueeze", &[&add_mask, &axes12], vec![]);

    let split = g.init_i64("c_heads_shape", &[4], &[0, 0, heads as i64, dh as i64]);
    let merge = g.init_i64("c_hidden_shape", &[3], &[0, 0, d as i64]);
    let sqrt_dh = g.scalar("c_sqrt_dh", (dh as f32).sqrt());
    for l in 0..cfg.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        let heads_of = |g: &mut Graph, x: &str, perm: &[i64]| {
            let r = g.node("Reshape", &[x, &split], vec![]);
            g.node("Transpose", &[&r], vec![attr_ints("perm", perm)])
        };
        let q = dense(&mut g, format!("{p}.attention.self.query"), d, d, &h)?;
        let k = dense(&mut g, format!("{p}.attention.self.key"), d, d, &h)?;
        let v = dense(&mut g, format!("{p}.attention.self.value"), d, d, &h)?;
        let q = heads_of(&mut g, &q, &[0, 2, 1, 3]);
        let k = heads_of(&mut g, &k, &[0, 2, 3, 1]);
        let v = heads_of(&mut g, &v, &[0, 2, 1, 3]);
        let s = g.node("MatMul", &[&q, &k], vec![]);
        let s = g.node("Div", &[&s, &sqrt_dh], vec![]);
        let s = g.node("Add", &[&s, &mask], vec![]);
        let pr = g.node("Softmax", &[&s], vec![attr_int("axis", -1)]);
        let c = g.node("MatMul", &[&pr, &v], vec![]);
        let c = g.node("Transpose", &[&c], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let c = g.node("Reshape", &[&c, &merge], vec![]);
        let a = dense(&mut g, format!("{p}.attention.output.dense"), d, d, &c)?;
        let a = g.node("Add", &[&a, &h], vec![]);
        let h1 = layer_norm(&mut g, &ck, &a, &format!("{p}.attention.output.LayerNorm"), d, cfg.layer_norm_eps)?;
        let i = dense(&mut g, format!("{p}.intermediate.dense"), d, ff, &h1)?;
        let act = activation(&mut g, &i, &cfg.hidden_act);
        let o = dense(&mut g, format!("{p}.output.dense"), ff, d, &act)?;
        let o = g.node("Add", &[&o, &h1], vec![]);
        h = layer_norm(&mut g, &ck, &o, &format!("{p}.output.LayerNorm"), d, cfg.layer_norm_eps)?;
    }
    g.nodes.push(tract_onnx::pb::NodeProto {
        input: vec![h],
        output: vec!["last_hidden_state".into()],
        name: "output".into(),
        op_type: "Identity".into(),
        ..Default::default()
    });
    g.outputs.push(value_info("last_hidden_state", DataType::Float, &[Dim::Sym("batch"), Dim::Sym("seq"), Dim::Fixed(d as i64)]));
    Ok(Body { model: g.into_model("embslim-body"), config: cfg, layer_inputs })
}

fn layer_norm(g: &mut Graph, ck: &Checkpoint<'_>, x: &str, name: &str, d: usize, eps: f32) -> Result<String> {
    let gamma = g.init_f32(&format!("{name}.weight"), &[d], &ck.get(&format!("{name}.weight"), &[d])?);
    let beta = g.init_f32(&format!("{name}.bias"), &[d], &ck.get(&format!("{name}.bias"), &[d])?);
    Ok(g.node("LayerNormalization", &[x, &gamma, &beta], vec![attr_int("axis", -1), attr_float("epsilon", eps)]))
}

/// The feed-forward activation, as Hugging Face computes it.
fn activation(g: &mut Graph, x: &str, act: &str) -> String {
    match act {
        "relu" => g.node("Relu", &[x], vec![]),
        // exact GELU: x * 0.5 * (1 + erf(x / sqrt(2)))
        "gelu" => {
            let sqrt2 = g.scalar("c_sqrt2", std::f32::consts::SQRT_2);
            let half = g.scalar("c_f32_half", 0.5);
            let one = g.scalar("c_f32_1", 1.0);
            let t = g.node("Div", &[x, &sqrt2], vec![]);
            let t = g.node("Erf", &[&t], vec![]);
            let t = g.node("Add", &[&t, &one], vec![]);
            let xh = g.node("Mul", &[x, &half], vec![]);
            g.node("Mul", &[&xh, &t], vec![])
        }
        // tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        _ => {
            let half = g.scalar("c_f32_half", 0.5);
            let one = g.scalar("c_f32_1", 1.0);
            let k = g.scalar("c_gelu_k", (2.0 / std::f32::consts::PI).sqrt());
            let c = g.scalar("c_gelu_c", 0.044715);
            let x2 = g.node("Mul", &[x, x], vec![]);
            let x3 = g.node("Mul", &[&x2, x], vec![]);
            let t = g.node("Mul", &[&x3, &c], vec![]);
            let t = g.node("Add", &[x, &t], vec![]);
            let t = g.node("Mul", &[&t, &k], vec![]);
            let t = g.node("Tanh", &[&t], vec![]);
            let t = g.node("Add", &[&t, &one], vec![]);
            let xh = g.node("Mul", &[x, &half], vec![]);
            g.node("Mul", &[&xh, &t], vec![])
        }
    }
}
