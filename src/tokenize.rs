//! BERT WordPiece tokenization of the bundle's tokenizer.json, in the memory a device can
//! spare: the vocabulary is one string of all tokens and a sorted index into it (0.6 MB for
//! 30,522 tokens), where the `tokenizers` crate keeps two hash maps of owned strings and
//! its pipeline objects (4.7 MB of heap, and its regex engines in the binary).
//!
//! It runs exactly the pipeline BERT-like checkpoints declare (`BertNormalizer`,
//! `BertPreTokenizer`, `WordPiece`, a `[CLS] A [SEP]` post-processor, special tokens
//! matched in the raw text), with the Unicode tables `tokenizers` uses, and gives the same
//! ids: tests/tokenizer_parity.rs compares both on every BBC News document and on random
//! Unicode text. Any other tokenizer.json is refused by name.

use std::path::{Path, PathBuf};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::UnicodeNormalization;

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
    path: PathBuf,
    max_len: Option<usize>,
    vocab: Vocab,
    /// Added tokens matched in the raw text before normalization, longest first.
    specials: Vec<(String, u32)>,
    norm: BertNormalizer,
    unk: u32,
    cls: u32,
    sep: u32,
    prefix: String,
    max_word_chars: usize,
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
        let unsupported = |what: String| err(format!("{what}; embslim runs BERT WordPiece tokenizers (BertNormalizer, BertPreTokenizer, WordPiece, [CLS] A [SEP])"));
        let json: TokenizerJson = serde_json::from_slice(bytes).map_err(|e| err(e.to_string()))?;
        let norm = match json.normalizer {
            Some(NormalizerJson::BertNormalizer(n)) => n,
            None => return Err(unsupported("no normalizer".into())),
        };
        if json.pre_tokenizer.is_none() {
            return Err(unsupported("no pre-tokenizer".into()));
        }
        let ModelJson::WordPiece { unk_token, continuing_subword_prefix: prefix, max_input_chars_per_word: max_word_chars, vocab } = json.model;
        let mut vocab = vocab;
        let text = &vocab.text;
        vocab.index.sort_unstable_by(|a, b| a.of(text).cmp(b.of(text)));
        if let Some(w) = vocab.index.windows(2).find(|w| vocab.token(&w[0]) == vocab.token(&w[1])) {
            return Err(err(format!("token '{}' appears twice in the vocabulary", vocab.token(&w[0]))));
        }
        // ids must number the rows of the embedding table: 0..V, each once
        let mut seen = vec![false; vocab.index.len()];
        for e in &vocab.index {
            match seen.get_mut(e.id as usize) {
                Some(s) if !*s => *s = true,
                _ => return Err(err(format!("vocabulary ids are not 0..{} each once (id {})", vocab.index.len(), e.id))),
            }
        }
        let id_of = |t: &str| vocab.get(t).ok_or_else(|| err(format!("token '{t}' is not in the vocabulary")));
        let unk = id_of(&unk_token)?;
        let (cls, sep) = match json.post_processor {
            Some(PostJson::BertProcessing { cls, sep }) => (cls.1, sep.1),
            Some(PostJson::TemplateProcessing { single, special_tokens }) => {
                let special = |piece: &Piece| match piece {
                    Piece::SpecialToken { id, type_id: 0 } => special_tokens.get(id).and_then(|s| match s.ids[..] {
                        [one] => Some(one),
                        _ => None,
                    }),
                    _ => None,
                };
                match &single[..] {
                    [a, Piece::Sequence { type_id: 0, .. }, b] => special(a).zip(special(b)).ok_or_else(|| unsupported("a post-processor of other special tokens".into()))?,
                    _ => return Err(unsupported("a post-processor template other than [CLS] A [SEP]".into())),
                }
            }
            None => return Err(unsupported("no post-processor".into())),
        };
        let mut specials = Vec::new();
        for a in json.added_tokens {
            if a.single_word || a.lstrip || a.rstrip || a.normalized || !a.special {
                return Err(unsupported(format!("added token '{}' with options other than a special token matched as written", a.content)));
            }
            if a.content.is_empty() || id_of(&a.content)? != a.id {
                return Err(err(format!("added token '{}' has id {}, not its vocabulary id", a.content, a.id)));
            }
            specials.push((a.content, a.id));
        }
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()));
        Ok(Tokenizer { path: path.to_path_buf(), max_len, vocab, specials, norm, unk, cls, sep, prefix, max_word_chars })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the vocabulary including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab.index.len()
    }

    /// Encode `text` with special tokens: `[CLS]`, the text's tokens (the first
    /// `max_len - 2` of them), `[SEP]`. Tokenizing stops once the kept tokens are known, so
    /// a long text costs time in proportion to what is kept, not to its length.
    pub fn encode(&self, text: &str) -> Encoded {
        let keep = self.max_len.map(|m| m.saturating_sub(2));
        let mut ids = vec![self.cls];
        let mut truncated = false;
        let mut emit = |id: u32| {
            if keep.is_some_and(|k| ids.len() > k) {
                truncated = true;
                return false;
            }
            ids.push(id);
            true
        };
        self.tokens(text, &mut emit);
        ids.push(self.sep);
        let type_ids = vec![0; ids.len()];
        Encoded { ids, type_ids, truncated }
    }

    /// Feed the ids of `text` (no special tokens around it) to `emit` until it returns false.
    fn tokens(&self, text: &str, emit: &mut impl FnMut(u32) -> bool) {
        let mut rest = text;
        while !rest.is_empty() {
            let (before, special, after) = self.next_special(rest);
            if !self.plain(before, emit) {
                return;
            }
            match special {
                Some(id) if !emit(id) => return,
                _ => {}
            }
            rest = after;
        }
    }

    /// Split at the leftmost occurrence of a special token (the longest at that place), as
    /// `tokenizers`' added vocabulary does: (text before, its id, text after).
    fn next_special<'t>(&self, text: &'t str) -> (&'t str, Option<u32>, &'t str) {
        for (i, b) in text.bytes().enumerate() {
            // (a cheap first-byte test: this scan runs over the whole text)
            if !self.specials.iter().any(|(s, _)| s.as_bytes()[0] == b) || !text.is_char_boundary(i) {
                continue;
            }
            if let Some((s, id)) = self.specials.iter().find(|(s, _)| text[i..].starts_with(s.as_str())) {
                return (&text[..i], Some(*id), &text[i + s.len()..]);
            }
        }
        (text, None, "")
    }

    /// Normalize, pre-tokenize and WordPiece text without special tokens. It is cut at
    /// whitespace first: every step before the pre-tokenizer works on characters or, for
    /// NFD, reorders only combining marks, which whitespace (a starter) bounds, so chunks
    /// give what the whole text gives, and a long text is only read as far as needed.
    /// (Not at whitespace that `clean_text` deletes as a control character, e.g. U+0085:
    /// the text on both sides of it is one word.)
    fn plain(&self, text: &str, emit: &mut impl FnMut(u32) -> bool) -> bool {
        let mut normalized = String::new();
        let mut key = String::new();
        for chunk in text.split(|c: char| c.is_whitespace() && !(self.norm.clean_text && is_control(c))) {
            normalized.clear();
            self.norm.apply(chunk, &mut normalized);
            for word in normalized.split(char::is_whitespace) {
                let mut start = 0;
                // punctuation characters are words of their own
                for (i, c) in word.char_indices() {
                    if c.is_ascii_punctuation() || c.is_punctuation() {
                        if !self.word_piece(&word[start..i], &mut key, emit) || !self.word_piece(&word[i..i + c.len_utf8()], &mut key, emit) {
                            return false;
                        }
                        start = i + c.len_utf8();
                    }
                }
                if !self.word_piece(&word[start..], &mut key, emit) {
                    return false;
                }
            }
        }
        true
    }

    /// Greedy longest-match-first WordPiece of one word; `[UNK]` for the whole word if any
    /// part of it has no piece, or if it is longer than `max_input_chars_per_word`.
    fn word_piece(&self, word: &str, key: &mut String, emit: &mut impl FnMut(u32) -> bool) -> bool {
        if word.is_empty() {
            return true;
        }
        if word.chars().count() > self.max_word_chars {
            return emit(self.unk);
        }
        let mut pieces: Vec<u32> = Vec::new();
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let found = loop {
                key.clear();
                if start > 0 {
                    key.push_str(&self.prefix);
                }
                key.push_str(&word[start..end]);
                if let Some(id) = self.vocab.get(key) {
                    break Some(id);
                }
                end -= word[start..end].chars().next_back().map_or(1, char::len_utf8);
                if end <= start {
                    break None;
                }
            };
            match found {
                Some(id) => pieces.push(id),
                None => return emit(self.unk),
            }
            start = end;
        }
        pieces.into_iter().all(|id| emit(id))
    }
}

/// `tokenizers`' `BertNormalizer`, with its flags.
#[derive(Clone, Copy, Debug, Deserialize)]
struct BertNormalizer {
    clean_text: bool,
    handle_chinese_chars: bool,
    strip_accents: Option<bool>,
    lowercase: bool,
}

impl BertNormalizer {
    /// Append the normalized `text` to `out`, step by step as `tokenizers` does it (each
    /// step over the whole output of the previous one).
    fn apply(&self, text: &str, out: &mut String) {
        let mut s: String = if self.clean_text {
            text.chars().filter(|&c| !(c == '\0' || c == '\u{fffd}' || is_control(c))).map(|c| if is_whitespace(c) { ' ' } else { c }).collect()
        } else {
            text.to_string()
        };
        if self.handle_chinese_chars && s.chars().any(is_chinese_char) {
            s = s.chars().flat_map(|c| if is_chinese_char(c) { vec![' ', c, ' '] } else { vec![c] }).collect();
        }
        if self.strip_accents.unwrap_or(self.lowercase) {
            s = s.as_str().nfd().map(|(c, _)| c).filter(|c| !c.is_mark_nonspacing()).collect();
        }
        if self.lowercase {
            out.extend(s.chars().flat_map(char::to_lowercase));
        } else {
            out.push_str(&s);
        }
    }
}

fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

fn is_chinese_char(c: char) -> bool {
    matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F | 0x2B740..=0x2B81F | 0x2B920..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// Every token in one string, and an index sorted by token for binary search.
struct Vocab {
    text: String,
    index: Vec<Entry>,
}

struct Entry {
    start: u32,
    len: u32,
    id: u32,
}

impl Entry {
    fn of<'a>(&self, text: &'a str) -> &'a str {
        &text[self.start as usize..(self.start + self.len) as usize]
    }
}

impl Vocab {
    fn token(&self, e: &Entry) -> &str {
        e.of(&self.text)
    }

    fn get(&self, token: &str) -> Option<u32> {
        self.index.binary_search_by(|e| self.token(e).cmp(token)).ok().map(|i| self.index[i].id)
    }
}

impl<'de> Deserialize<'de> for Vocab {
    /// Straight from the JSON map into the one string: no map of owned strings is built,
    /// even for a moment.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vocab;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of tokens to ids")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Vocab, A::Error> {
                let mut v = Vocab { text: String::new(), index: Vec::with_capacity(map.size_hint().unwrap_or(0)) };
                while let Some((token, id)) = map.next_entry::<std::borrow::Cow<'de, str>, u32>()? {
                    let too_big = || serde::de::Error::custom("the vocabulary is over 4 GB");
                    let start = u32::try_from(v.text.len()).map_err(|_| too_big())?;
                    let len = u32::try_from(token.len()).map_err(|_| too_big())?;
                    start.checked_add(len).ok_or_else(too_big)?;
                    v.text.push_str(&token);
                    v.index.push(Entry { start, len, id });
                }
                v.text.shrink_to_fit();
                Ok(v)
            }
        }
        d.deserialize_map(V)
    }
}

// tokenizer.json, as far as a BERT WordPiece pipeline needs it (other keys are ignored)
#[derive(Deserialize)]
struct TokenizerJson {
    normalizer: Option<NormalizerJson>,
    pre_tokenizer: Option<PreTokenizerJson>,
    model: ModelJson,
    post_processor: Option<PostJson>,
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
}

#[derive(Deserialize)]
#[serde(tag = "type")]
enum NormalizerJson {
    BertNormalizer(BertNormalizer),
}

#[derive(Deserialize)]
#[serde(tag = "type")]
enum PreTokenizerJson {
    BertPreTokenizer,
}

#[derive(Deserialize)]
#[serde(tag = "type")]
enum ModelJson {
    WordPiece { unk_token: String, continuing_subword_prefix: String, max_input_chars_per_word: usize, vocab: Vocab },
}

#[derive(Deserialize)]
#[serde(tag = "type")]
enum PostJson {
    TemplateProcessing { single: Vec<Piece>, special_tokens: std::collections::HashMap<String, SpecialTokenJson> },
    BertProcessing { cls: (String, u32), sep: (String, u32) },
}

#[derive(Deserialize)]
enum Piece {
    SpecialToken { id: String, type_id: u32 },
    Sequence { type_id: u32 },
}

#[derive(Deserialize)]
struct SpecialTokenJson {
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct AddedToken {
    id: u32,
    content: String,
    single_word: bool,
    lstrip: bool,
    rstrip: bool,
    normalized: bool,
    special: bool,
}
