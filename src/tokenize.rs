//! Tokenization with the `tokenizers` crate on the bundle's tokenizer.json.

use std::path::{Path, PathBuf};

use tokenizers::{TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};

/// Token ids of one input, with its attention mask and token types.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Whether truncation dropped tokens.
    pub truncated: bool,
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl Tokenizer {
    /// Load tokenizer.json; inputs longer than `max_len` tokens (special tokens included)
    /// are truncated, keeping the special tokens at both ends.
    pub fn from_file(path: &Path, max_len: Option<usize>) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path, max_len)
    }

    /// Parse tokenizer.json bytes; `path` is only used in error messages.
    pub fn from_bytes(bytes: &[u8], path: &Path, max_len: Option<usize>) -> Result<Self> {
        let err = |msg: String| Error::Tokenizer { path: path.to_path_buf(), msg };
        let mut inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| err(e.to_string()))?;
        inner.with_padding(None);
        let trunc = max_len.map(|max_length| TruncationParams {
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            ..Default::default()
        });
        inner.with_truncation(trunc).map_err(|e| err(e.to_string()))?;
        Ok(Tokenizer { inner, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the vocabulary including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encode `text` with special tokens.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::Tokenizer { path: self.path.clone(), msg: e.to_string() })?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            truncated: !enc.get_overflowing().is_empty(),
        })
    }
}
