//! Typed library errors. Every error that comes from a file names that file; the binary
//! adds context with anyhow and maps the variants to exit codes.

use std::path::PathBuf;

use crate::format::FormatError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{}: invalid factor file: {source}", path.display())]
    Factors { path: PathBuf, source: FormatError },

    /// A model checkpoint (config.json, model.safetensors, model.onnx) that cannot be used.
    #[error("{}: {msg}", path.display())]
    Model { path: PathBuf, msg: String },

    /// Input that is not a file: a bad option value, an impossible request.
    #[error("{0}")]
    Usage(String),

    #[error("{}: tokenizer: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },

    #[error("{}: {msg}", path.display())]
    Corpus { path: PathBuf, msg: String },

    /// A bundle file that is missing, altered, or disagrees with the others.
    #[error("{}: {msg}", path.display())]
    Bundle { path: PathBuf, msg: String },

    /// tract failed while running a loaded body.
    #[error("inference: {0}")]
    Inference(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn bundle(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Bundle { path: path.into(), msg: msg.into() }
    }
    pub fn model(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Model { path: path.into(), msg: msg.into() }
    }
}
