//! manifest.json: what a bundle holds and the hashes that tie its files together.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::format::Method;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const BUNDLE_FORMAT: &str = "embslim-bundle";
/// The version this build writes. 2: int4 bodies store a zero point per block, which a
/// version-1 runtime would drop without a word (its expansion reads (q - 8) * scale), so
/// the version refuses them there instead. 3: the body's weights are ONNX external data in
/// body.onnx.data, which a version-2 runtime cannot load.
pub const BUNDLE_VERSION: u32 = 3;
/// The oldest version this build reads: version-1 bundles differ from version 2 only by
/// having no zero points, which read as 8; versions 1 and 2 keep the weights in body.onnx.
pub const OLDEST_READABLE_VERSION: u32 = 1;

/// Storage of the body's MatMul weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WeightScheme {
    F32,
    /// f16 weights.
    F16,
    /// Symmetric int8 per output channel.
    Int8,
    /// 4-bit blocks of 32 inputs with an f16 scale and a zero point, per output channel.
    Int4,
}

impl WeightScheme {
    pub fn name(self) -> &'static str {
        match self {
            WeightScheme::F32 => "f32",
            WeightScheme::F16 => "f16",
            WeightScheme::Int8 => "int8",
            WeightScheme::Int4 => "int4",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// Where the model came from (checkpoint directory or ONNX file name).
    pub model: String,
    pub vocab: usize,
    pub dim: usize,
    pub max_length: usize,
    /// Always "mean": mean over the attention mask.
    pub pooling: String,
    pub normalize: bool,
    pub token_type_ids: bool,
    pub table: Method,
    pub weights: WeightScheme,
    /// Every file of the bundle but the manifest, by name.
    pub files: BTreeMap<String, FileEntry>,
    pub metrics: serde_json::Value,
    /// Class labels of the classification head, in head row order, when one is trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}
