//! Shared test helpers: the real assets, synthetic checkpoints, and running the binary
//! through an optional cross runner (as ripgrep's tests/util.rs does), so the same
//! integration tests run natively and under qemu:
//! `CROSS_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fetch the real assets once per test binary (models/fetch.sh is idempotent and cached).
pub fn assets() -> PathBuf {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let status = Command::new("bash").arg(root().join("models/fetch.sh")).status().expect("run models/fetch.sh");
        assert!(status.success(), "models/fetch.sh failed");
    });
    root().join("models")
}

pub fn minilm() -> PathBuf {
    assets().join("all-MiniLM-L6-v2")
}
pub fn l3_onnx() -> PathBuf {
    assets().join("paraphrase-MiniLM-L3-v2/model.onnx")
}
pub fn bbc() -> PathBuf {
    assets().join("bbc-news")
}

/// The embslim binary, run through $CROSS_RUNNER when it is set.
pub fn embslim() -> Command {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_embslim"));
    match std::env::var("CROSS_RUNNER").ok().filter(|r| !r.trim().is_empty()) {
        Some(runner) => {
            let mut parts = runner.split_whitespace();
            let mut cmd = Command::new(parts.next().expect("non-empty runner"));
            cmd.args(parts).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

/// Run a command with `stdin` and return its output.
pub fn run_with_input(mut cmd: Command, stdin: &[u8]) -> Output {
    use std::io::Write;
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("stdin writer");
    out
}

/// A safetensors checkpoint with only a word-embedding table (row-major f32 V x d).
pub fn write_checkpoint(dir: &Path, tensor: &str, vocab: usize, dim: usize, data: &[f32]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![vocab, dim], &bytes).unwrap();
    let out = safetensors::serialize(vec![(tensor, view)], &None::<HashMap<String, String>>).unwrap();
    let path = dir.join("model.safetensors");
    std::fs::write(&path, out).unwrap();
    path
}

/// Deterministic pseudo-random numbers (xorshift) in [-1, 1), for synthetic tables.
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
