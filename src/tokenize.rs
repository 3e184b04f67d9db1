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
    max_len: Option<usize>,
}

/// Bytes of text tried per kept token before a long input is tokenized whole (see
/// [`Tokenizer::encode`]); real text averages 4 to 6 bytes a token.
const PREFIX_BYTES_PER_TOKEN: usize = 32;

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
        Ok(Tokenizer { inner, path: path.to_path_buf(), max_len })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the vocabulary including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encode `text` with special tokens.
    ///
    /// With a maximum length, a long text is not tokenized whole just to keep its first
    /// tokens (that costs time and memory in proportion to its length: a 10 MB line took
    /// 15 s and 1.2 GB). A prefix of it, cut at whitespace, is encoded first, growing
    /// fourfold until it overflows the maximum; its first tokens are then those of the
    /// whole text, since the pre-tokenizers of BERT-like models split at whitespace and
    /// their normalizers work character by character. A text that never overflows is
    /// encoded whole, as before.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        if let Some(max) = self.max_len {
            let mut budget = max.saturating_mul(PREFIX_BYTES_PER_TOKEN).max(4096);
            while budget < text.len() {
                let mut end = budget;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                if let Some(cut) = text[..end].rfind(char::is_whitespace) {
                    let enc = self.encode_whole(&text[..cut])?;
                    if enc.truncated {
                        return Ok(enc);
                    }
                }
                budget = budget.saturating_mul(4);
            }
        }
        self.encode_whole(text)
    }

    fn encode_whole(&self, text: &str) -> Result<Encoded> {
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
