//! How the body's MatMul weights are written into the ONNX graph.

use super::graph::Graph;
use crate::error::Result;
use crate::manifest::WeightScheme;

/// A dense layer, weight already in MatMul layout [in, out].
pub struct Linear {
    pub name: String,
    pub n_in: usize,
    pub n_out: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl WeightScheme {
    /// Emit `x @ W + b` for `lin` and return the output name.
    pub fn emit(self, g: &mut Graph, lin: &Linear, x: &str) -> Result<String> {
        let b = g.init_f32(&format!("{}.bias", lin.name), &[lin.n_out], &lin.bias);
        let y = match self {
            WeightScheme::F32 => {
                let w = g.init_f32(&format!("{}.weight", lin.name), &[lin.n_in, lin.n_out], &lin.weight);
                g.node("MatMul", &[x, &w], vec![])
            }
        };
        Ok(g.node("Add", &[&y, &b], vec![]))
    }
}
