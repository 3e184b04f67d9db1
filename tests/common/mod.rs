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

/// Where test bundles live; shared by the host and the cross (qemu) test runs.
pub fn bundle_dir(name: &str) -> PathBuf {
    root().join("target/test-bundles").join(name)
}

/// Labelled training data for test heads: the first 16 BBC documents of each class,
/// as a TSV (`label<TAB>text`, first 600 characters), so a head trains in seconds.
pub fn small_tsv() -> PathBuf {
    let path = root().join("target/test-bundles/bbc-small.tsv");
    if !path.exists() {
        let mut out = String::new();
        for class in ["business", "entertainment", "politics", "sports", "tech"] {
            let mut files: Vec<_> = std::fs::read_dir(bbc().join(class)).unwrap().map(|e| e.unwrap().path()).collect();
            files.sort();
            for f in files.iter().take(16) {
                let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).replace(['\n', '\r', '\t'], " ");
                let text: String = text.chars().take(600).collect();
                out.push_str(&format!("{class}\t{text}\n"));
            }
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, out).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// Real BBC-style headlines, written here for the classification tests.
pub const HEADLINES: [&str; 5] = [
    "Shares in the bank fell sharply after it reported a drop in annual profits",
    "The film won best picture at the Oscars on Sunday night",
    "The prime minister faces a vote in parliament over the new tax plans",
    "The striker scored twice as the champions won the cup final",
    "The company unveiled a faster mobile phone chip and new broadband software",
];

/// The test bundle `name` (all-MiniLM-L6-v2, int4 table, head trained on `small_tsv`).
/// With the `train` feature it is built once by the embslim binary itself; a device
/// build (cross tests under qemu) expects cross/test.sh to have built it on the host.
pub fn head_bundle() -> PathBuf {
    let dir = bundle_dir("minilm-int4-head");
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if dir.join("manifest.json").exists() && dir.join("head.safetensors").exists() {
            return;
        }
        assert!(
            cfg!(feature = "train"),
            "{} is missing: build it on the host first (bash cross/test.sh does)",
            dir.display()
        );
        let model = minilm();
        let run = |args: &[&str]| {
            let out = Command::new(env!("CARGO_BIN_EXE_embslim")).args(args).output().unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&["compress", "--model", model.to_str().unwrap(), "--out", dir.to_str().unwrap(), "--method", "int4", "--max-length", "128"]);
        run(&["train-head", dir.to_str().unwrap(), "--data", small_tsv().to_str().unwrap(), "--c", "10", "--test-fraction", "0.25"]);
    });
    dir
}

/// A tiny random BERT checkpoint directory (config.json, model.safetensors and the real
/// all-MiniLM-L6-v2 tokenizer.json, vocabulary 30522): hidden `dim`, 2 heads, 1 layer,
/// intermediate 2 x dim. `compress` turns it into a bundle in well under a second, so
/// tests can run it many times (kill tests, full disks). Built once, cached.
pub fn tiny_bert(dim: usize) -> PathBuf {
    let dir = bundle_dir(&format!("tiny-bert-{dim}"));
    // tests of one binary run on threads of one process: without the lock two of them would
    // share the pid-named staging directory below and delete each other's files
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    if dir.join("model.safetensors").exists() {
        return dir;
    }
    let (v, ff, pos, types) = (30522usize, 2 * dim, 128usize, 2usize);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut seed = 100;
    let mut add = |name: &str, shape: Vec<usize>, fill: Option<f32>| {
        let n = shape.iter().product();
        seed += 1;
        let data = match fill {
            Some(x) => vec![x; n],
            None => noise(n, seed).into_iter().map(|x| x * 0.2).collect(),
        };
        tensors.push((name.to_string(), shape, data));
    };
    add("embeddings.word_embeddings.weight", vec![v, dim], None);
    add("embeddings.position_embeddings.weight", vec![pos, dim], None);
    add("embeddings.token_type_embeddings.weight", vec![types, dim], None);
    let ln = |add: &mut dyn FnMut(&str, Vec<usize>, Option<f32>), p: &str| {
        add(&format!("{p}.weight"), vec![dim], Some(1.0));
        add(&format!("{p}.bias"), vec![dim], Some(0.0));
    };
    ln(&mut add, "embeddings.LayerNorm");
    let l = "encoder.layer.0";
    for (name, n_out, n_in) in [
        ("attention.self.query", dim, dim),
        ("attention.self.key", dim, dim),
        ("attention.self.value", dim, dim),
        ("attention.output.dense", dim, dim),
        ("intermediate.dense", ff, dim),
        ("output.dense", dim, ff),
    ] {
        add(&format!("{l}.{name}.weight"), vec![n_out, n_in], None);
        add(&format!("{l}.{name}.bias"), vec![n_out], None);
    }
    ln(&mut add, &format!("{l}.attention.output.LayerNorm"));
    ln(&mut add, &format!("{l}.output.LayerNorm"));

    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.into_iter().map(|(n, s, d)| (n, s, d.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(tmp.join("model.safetensors"), safetensors::serialize(views, &None::<HashMap<String, String>>).unwrap()).unwrap();
    let config = serde_json::json!({
        "model_type": "bert", "vocab_size": v, "hidden_size": dim, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": ff, "max_position_embeddings": pos,
        "type_vocab_size": types, "hidden_act": "gelu", "layer_norm_eps": 1e-12
    });
    std::fs::write(tmp.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    std::fs::copy(minilm().join("tokenizer.json"), tmp.join("tokenizer.json")).unwrap();
    // another test process may have finished first: either copy is complete
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    dir
}

/// `embslim compress` of [`tiny_bert`] into `out` (no corpus: fast), asserting success.
pub fn compress_tiny(model: &Path, out: &Path, method: &str) {
    let out_ = embslim().args(["compress", "--model"]).arg(model).arg("--out").arg(out).args(["--method", method, "--corpus", "/nonexistent"]).output().unwrap();
    assert!(out_.status.success(), "compress {method}: {}", String::from_utf8_lossy(&out_.stderr));
}
