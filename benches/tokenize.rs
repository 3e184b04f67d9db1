//! Tokenizer speed against its peer, in one run: embslim's WordPiece and the `tokenizers`
//! crate on the same BBC News documents (all 2,225, whole and truncated at 128 tokens),
//! best of 5 passes each; prints documents per second and the ratio.
//!
//! `cargo bench --bench tokenize --profile dev` (the test profile: dependencies at
//! opt-level 3, no second release build of tract), after `bash models/fetch.sh`.

use std::path::Path;
use std::time::Instant;

/// Best of 5 passes over `texts`, in documents per second.
fn rate(texts: &[String], mut encode: impl FnMut(&str) -> usize) -> f64 {
    let mut best = f64::INFINITY;
    let mut tokens = 0;
    for _ in 0..5 {
        let t = Instant::now();
        tokens = texts.iter().map(|s| encode(s)).sum::<usize>();
        best = best.min(t.elapsed().as_secs_f64());
    }
    assert!(tokens > 0);
    texts.len() as f64 / best
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = embslim::corpus::load(&root.join("models/bbc-news")).expect("models/bbc-news: run bash models/fetch.sh");
    let texts: Vec<String> = corpus.docs.into_iter().map(|d| d.text).collect();
    let json = root.join("models/all-MiniLM-L6-v2/tokenizer.json");
    println!("| input ({} BBC documents) | embslim docs/s | tokenizers docs/s | embslim / tokenizers |", texts.len());
    println!("|---|---|---|---|");
    for max_len in [None, Some(128)] {
        let ours = embslim::tokenize::Tokenizer::from_file(&json, max_len).unwrap();
        let mut theirs = tokenizers::Tokenizer::from_file(&json).unwrap();
        theirs.with_padding(None);
        theirs.with_truncation(max_len.map(|max_length| tokenizers::TruncationParams { max_length, ..Default::default() })).unwrap();
        let a = rate(&texts, |s| ours.encode(s).ids.len());
        let b = rate(&texts, |s| theirs.encode(s, true).unwrap().get_ids().len());
        let name = max_len.map_or("whole".to_string(), |m| format!("truncated at {m}"));
        println!("| {name} | {a:.0} | {b:.0} | {:.2}x |", a / b);
    }
}
