//! The classification head: multinomial logistic regression on the L2-normalized
//! sentence embedding, stored as head.safetensors (`weight` F32 [C, d], `bias` F32 [C]).

use std::collections::HashMap;
use std::path::Path;

use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    pub labels: Vec<String>,
    /// C x d, row-major.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub dim: usize,
}

impl Head {
    /// Read head.safetensors and check it against the manifest's labels and width.
    pub fn read(path: &Path, labels: &[String], dim: usize) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes, labels, dim).map_err(|msg| Error::bundle(path, msg))
    }

    pub fn parse(bytes: &[u8], labels: &[String], dim: usize) -> std::result::Result<Self, String> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| format!("not a valid safetensors file: {e:?}"))?;
        let c = labels.len();
        let get = |name: &str, shape: &[usize]| -> std::result::Result<Vec<f32>, String> {
            let t = st.tensor(name).map_err(|_| format!("tensor '{name}' is missing"))?;
            if t.dtype() != Dtype::F32 || t.shape() != shape {
                return Err(format!("tensor '{name}' is {:?} {:?}, expected F32 {shape:?}", t.dtype(), t.shape()));
            }
            let v: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            match v.iter().position(|x| !x.is_finite()) {
                Some(i) => Err(format!("tensor '{name}' holds a non-finite value at index {i}")),
                None => Ok(v),
            }
        };
        Ok(Head { labels: labels.to_vec(), weight: get("weight", &[c, dim])?, bias: get("bias", &[c])?, dim })
    }

    pub fn serialize(&self) -> std::result::Result<Vec<u8>, String> {
        let c = self.labels.len();
        let w: Vec<u8> = self.weight.iter().flat_map(|v| v.to_le_bytes()).collect();
        let b: Vec<u8> = self.bias.iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensors = vec![
            ("weight", TensorView::new(Dtype::F32, vec![c, self.dim], &w).map_err(|e| format!("{e:?}"))?),
            ("bias", TensorView::new(Dtype::F32, vec![c], &b).map_err(|e| format!("{e:?}"))?),
        ];
        safetensors::serialize(tensors, &None::<HashMap<String, String>>).map_err(|e| format!("{e:?}"))
    }

    /// Class probabilities (softmax of W x + b) for one sentence embedding.
    pub fn probabilities(&self, x: &[f32]) -> Vec<f32> {
        let logits: Vec<f32> = self
            .weight
            .chunks_exact(self.dim)
            .zip(&self.bias)
            .map(|(w, b)| w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>() + b)
            .collect();
        softmax(&logits)
    }
}

pub fn softmax(z: &[f32]) -> Vec<f32> {
    let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}
