//! embslim's WordPiece (src/tokenize.rs) against the `tokenizers` crate, the reference
//! every Hugging Face model's tokenizer.json is written for: the same ids, token types and
//! truncation on every BBC News document, on text built to hit each rule of the pipeline,
//! and on random Unicode text. Exact equality: a tokenizer has no tolerance.

mod common;

use std::path::Path;

use embslim::tokenize::{Encoded, Tokenizer};
use proptest::prelude::*;

fn reference(path: &Path, max_len: Option<usize>) -> tokenizers::Tokenizer {
    let mut t = tokenizers::Tokenizer::from_file(path).unwrap();
    t.with_padding(None);
    let trunc = max_len.map(|max_length| tokenizers::TruncationParams { max_length, ..Default::default() });
    t.with_truncation(trunc).unwrap();
    t
}

fn expected(t: &tokenizers::Tokenizer, text: &str) -> Encoded {
    let e = t.encode(text, true).unwrap();
    Encoded { ids: e.get_ids().to_vec(), type_ids: e.get_type_ids().to_vec(), truncated: !e.get_overflowing().is_empty() }
}

/// Both tokenizers of a model, whole texts and truncated at 128 tokens.
struct Pair {
    ours: [Tokenizer; 2],
    theirs: [tokenizers::Tokenizer; 2],
}

impl Pair {
    fn new(path: &Path) -> Pair {
        let lens = [None, Some(128)];
        Pair { ours: lens.map(|l| Tokenizer::from_file(path, l).unwrap()), theirs: lens.map(|l| reference(path, l)) }
    }

    fn mismatch(&self, text: &str) -> Option<String> {
        for (ours, theirs) in self.ours.iter().zip(&self.theirs) {
            let (a, b) = (ours.encode(text), expected(theirs, text));
            if a != b {
                return Some(format!("{text:?}:\n  ours   {a:?}\n  theirs {b:?}"));
            }
        }
        None
    }
}

fn minilm() -> Pair {
    Pair::new(&common::minilm().join("tokenizer.json"))
}

#[test]
fn every_bbc_document_gets_the_reference_ids() {
    let pair = minilm();
    let docs = embslim::corpus::load(&common::bbc()).unwrap().docs;
    assert_eq!(docs.len(), 2225);
    let bad: Vec<String> = docs.iter().filter_map(|d| pair.mismatch(&d.text)).collect();
    assert!(bad.is_empty(), "{} of {} documents differ, first: {}", bad.len(), docs.len(), bad[0]);
}

/// One text per rule: accents (NFD, then nonspacing marks dropped), case folding that
/// changes length, CJK ideographs split out, control characters deleted (U+0085 is also
/// whitespace: deleting it joins words), Unicode whitespace and punctuation, special tokens
/// in the text (longest first, touching words), a word over 100 characters, a word with no
/// pieces, empty and whitespace-only input.
#[test]
fn each_rule_of_the_pipeline_gets_the_reference_ids() {
    let long = "a".repeat(101);
    let texts = [
        "Héllo, Wörld! Crème brûlée à la carte, naïve façade; ÅNGSTRÖM ǅ",
        "İstanbul ΣΊΣΥΦΟΣ straße ﬁnance Ⅻ",
        "东京大学 is in 東京, 한국어 and ｶﾀｶﾅ 𠀀𪜀",
        "tab\there\r\nnew\u{000B}line\u{000C}feed a\u{0085}b zero\u{200B}width soft\u{00AD}hyphen nul\u{0}l repl\u{FFFD}ace",
        "no\u{00A0}break thin\u{2009}space ideo\u{3000}graphic line\u{2028}sep",
        "quotes «like» “these” — and ‘those’… ¿qué? ¡sí! @#$%^&*()_+={}[]|\\:;\"'<>,.?/~`",
        "[CLS] [SEP][SEP]x[MASK]y [UNK] [PAD] [SEP [SEPARATE] [[SEP]]",
        &format!("{long} short {long}x"),
        "qzxjvkw ✓✓✓ 🙂🙃 ⚽️ e\u{301}\u{301}\u{327}",
        "",
        "   \t\n  ",
        "U.S. $3.5bn (£2bn) e-mail co-operate 1,000,000 3:30pm 50%",
    ];
    let pair = minilm();
    let bad: Vec<String> = texts.iter().filter_map(|t| pair.mismatch(t)).collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The ONNX model's tokenizer.json (paraphrase-MiniLM-L3-v2) too.
#[test]
fn the_onnx_models_tokenizer_gets_the_reference_ids() {
    let pair = Pair::new(&common::l3_onnx().with_file_name("tokenizer.json"));
    for t in ["Shares in the firm fell sharply after the announcement.", "Ça coûte 5 € — naïve?"] {
        assert_eq!(pair.mismatch(t), None);
    }
}

/// Truncation keeps [CLS], the first max_len - 2 tokens and [SEP], and says so; a text of
/// exactly max_len - 2 tokens is not truncated.
#[test]
fn truncation_keeps_the_first_tokens_and_the_special_ones() {
    let path = common::minilm().join("tokenizer.json");
    for max in [2, 3, 9, 10, 11] {
        let (ours, theirs) = (Tokenizer::from_file(&path, Some(max)).unwrap(), reference(&path, Some(max)));
        for text in ["one two three four five six seven eight", "one two three four five six seven eight nine"] {
            assert_eq!(ours.encode(text), expected(&theirs, text), "max {max}: {text}");
        }
    }
}

/// A tokenizer.json of another kind is refused by name, not misread.
#[test]
fn other_tokenizers_are_refused_naming_what_is_unsupported() {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(common::minilm().join("tokenizer.json")).unwrap()).unwrap();
    let cases: [(&str, Box<dyn Fn(&mut serde_json::Value)>, &str); 6] = [
        ("BPE model", Box::new(|j| j["model"]["type"] = "BPE".into()), "unknown variant `BPE`"),
        ("no normalizer", Box::new(|j| j["normalizer"] = serde_json::Value::Null), "no normalizer"),
        ("other pre-tokenizer", Box::new(|j| j["pre_tokenizer"]["type"] = "ByteLevel".into()), "unknown variant `ByteLevel`"),
        ("template without [CLS]", Box::new(|j| { j["post_processor"]["single"].as_array_mut().unwrap().remove(0); }), "template other than [CLS] A [SEP]"),
        ("stripping added token", Box::new(|j| j["added_tokens"][1]["lstrip"] = true.into()), "added token '[UNK]' with options"),
        ("duplicate id", Box::new(|j| j["model"]["vocab"]["hello"] = 0.into()), "vocabulary ids are not 0..30522 each once"),
    ];
    for (name, change, msg) in cases {
        let mut j = json.clone();
        change(&mut j);
        let err = Tokenizer::from_bytes(&serde_json::to_vec(&j).unwrap(), Path::new("tok.json"), None).err().unwrap_or_else(|| panic!("{name}: accepted"));
        let err = err.to_string();
        assert!(err.contains("tok.json") && err.contains(msg), "{name}: {err}");
    }
}

/// Characters drawn to hit the pipeline's classes: ASCII letters and punctuation, accented
/// and combining, CJK, other scripts, whitespace of every kind, controls, pieces of special
/// tokens.
fn text() -> impl Strategy<Value = String> {
    let chars: Vec<char> = "abcdefgXYZ019 .,!?'-[]()#\té\u{301}\u{308}ÅßİΣςж中文한ｶ🙂\u{85}\u{a0}\u{2009}\u{3000}\u{200b}\u{ad}\u{0}\u{7}\u{fffd}\n".chars().collect();
    let piece = prop_oneof![
        8 => proptest::sample::select(chars).prop_map(String::from),
        1 => proptest::sample::select(vec!["[SEP]", "[CLS]", "[MASK]", "##", "the", "ing", "un", "affable"]).prop_map(String::from),
        1 => any::<char>().prop_map(String::from),
    ];
    proptest::collection::vec(piece, 0..60).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    #[test]
    fn random_unicode_text_gets_the_reference_ids(t in text()) {
        thread_local!(static PAIR: Pair = minilm());
        let bad = PAIR.with(|p| p.mismatch(&t));
        prop_assert_eq!(bad, None);
    }
}
