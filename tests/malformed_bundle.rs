//! A malformed-bundle table: one case per rule of manifest.json and of the bundle (files
//! against the manifest, dimensions of the files against each other, the head), as
//! tests/factor_file.rs has for the factor file and llama.cpp's tests/test-gguf.cpp for
//! GGUF. Every case runs the binary (`embslim embed BUNDLE hello`) on a copy of the real
//! test bundle with one thing broken, and expects exit status 2, a message naming the file
//! and the rule, and no panic.

mod common;

use std::path::{Path, PathBuf};

use common::{embslim, head_bundle};
use serde_json::{json, Value};

/// A copy of the valid test bundle: the manifest is copied, the other files are symbolic
/// links to the originals (cheap; a case that changes one replaces the link by a file).
fn copy_bundle(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap();
        if name == "manifest.json" {
            std::fs::copy(&p, dst.join(name)).unwrap();
        } else {
            std::os::unix::fs::symlink(&p, dst.join(name)).unwrap();
        }
    }
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

fn write_manifest(dir: &Path, m: &Value) {
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(m).unwrap()).unwrap();
}

/// Replace bundle file `name` (never writing through the link to the original).
fn replace(dir: &Path, name: &str, bytes: &[u8]) {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    std::fs::write(p, bytes).unwrap();
}

/// Recompute size and sha256 of every file the manifest lists, so a case that changes a
/// file's content reaches the rule behind the hash check.
fn rehash(dir: &Path) {
    let mut m = manifest(dir);
    let names: Vec<String> = m["files"].as_object().unwrap().keys().cloned().collect();
    for name in names {
        let (sha, bytes) = embslim::fsutil::sha256_file(&dir.join(&name)).unwrap();
        m["files"][&name] = json!({"sha256": sha, "bytes": bytes});
    }
    write_manifest(dir, &m);
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut Value)) {
    let mut m = manifest(dir);
    f(&mut m);
    write_manifest(dir, &m);
}

/// A head file for `labels` labels of width `dim`, with `weight[0]` set to `w0`.
fn head_bytes(labels: usize, dim: usize, w0: f32) -> Vec<u8> {
    let mut weight = vec![0.01f32; labels * dim];
    weight[0] = w0;
    let head = embslim::head::Head { labels: (0..labels).map(|i| format!("c{i}")).collect(), weight, bias: vec![0.0; labels], dim };
    head.serialize().unwrap()
}

/// A body.onnx of another model: the tiny test model's body (width 32).
fn foreign_body() -> Option<PathBuf> {
    if !cfg!(feature = "train") {
        return None;
    }
    let dir = common::bundle_dir("tiny-int4-foreign");
    if !dir.join("manifest.json").exists() {
        let tmp = common::bundle_dir(&format!("tiny-int4-foreign.tmp-{}", std::process::id()));
        common::compress_tiny(&common::tiny_bert(32), &tmp, "int4");
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    Some(dir.join("body.onnx"))
}

/// Change the first tensor body.onnx keeps in body.onnx.data, and rehash.
fn edit_external_tensor(dir: &Path, f: impl Fn(&mut tract_onnx::pb::TensorProto)) {
    use prost::Message;
    let mut m = tract_onnx::pb::ModelProto::decode(&std::fs::read(dir.join("body.onnx")).unwrap()[..]).unwrap();
    let t = m.graph.as_mut().unwrap().initializer.iter_mut().find(|t| !t.external_data.is_empty()).expect("an external tensor");
    f(t);
    replace(dir, "body.onnx", &m.encode_to_vec());
    rehash(dir);
}

fn set_external(t: &mut tract_onnx::pb::TensorProto, key: &str, value: &str) {
    t.external_data.iter_mut().find(|e| e.key == key).unwrap().value = value.into();
}

type Mutate = Box<dyn Fn(&Path)>;

#[test]
fn malformed_bundles_are_refused_naming_the_file_and_the_rule() {
    let good = head_bundle();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("baseline");
    copy_bundle(&good, &base);
    let out = embslim().arg("embed").arg(&base).arg("hello").output().unwrap();
    assert!(out.status.success(), "the baseline copy must work: {}", String::from_utf8_lossy(&out.stderr));

    let factors = std::fs::read(good.join("factors.safetensors")).unwrap();
    let tokenizer: Value = serde_json::from_slice(&std::fs::read(good.join("tokenizer.json")).unwrap()).unwrap();
    let foreign = foreign_body();

    // (case, change, file the message must name, rule text it must contain)
    let mut cases: Vec<(&str, Mutate, &str, &str)> = vec![
        // manifest.json
        ("manifest missing", Box::new(|d| std::fs::remove_file(d.join("manifest.json")).unwrap()), "manifest.json", "missing"),
        ("manifest not JSON", Box::new(|d| std::fs::write(d.join("manifest.json"), b"{\"format\": \"embslim-bundle\", ").unwrap()), "manifest.json", "not a valid manifest"),
        ("manifest not UTF-8", Box::new(|d| std::fs::write(d.join("manifest.json"), b"{\"format\": \"\xff\xfe\"}").unwrap()), "manifest.json", "not a valid manifest"),
        ("manifest over the size limit", Box::new(|d| {
            let mut b = std::fs::read(d.join("manifest.json")).unwrap();
            b.resize(b.len() + (2 << 20), b' ');
            std::fs::write(d.join("manifest.json"), b).unwrap();
        }), "manifest.json", "limit for a manifest"),
        ("missing key", Box::new(|d| edit_manifest(d, |m| { m.as_object_mut().unwrap().remove("dim"); })), "manifest.json", "missing field `dim`"),
        ("wrong format name", Box::new(|d| edit_manifest(d, |m| m["format"] = json!("gguf"))), "manifest.json", "format is 'gguf', expected 'embslim-bundle'"),
        ("past version", Box::new(|d| edit_manifest(d, |m| m["version"] = json!(0))), "manifest.json", "bundle version 0 is not supported"),
        ("future version", Box::new(|d| edit_manifest(d, |m| m["version"] = json!(4))), "manifest.json", "bundle version 4 is not supported"),
        ("negative version", Box::new(|d| edit_manifest(d, |m| m["version"] = json!(-1))), "manifest.json", "not a valid manifest"),
        ("zero dim", Box::new(|d| edit_manifest(d, |m| m["dim"] = json!(0))), "manifest.json", "must be positive"),
        ("zero vocab", Box::new(|d| edit_manifest(d, |m| m["vocab"] = json!(0))), "manifest.json", "must be positive"),
        ("zero max_length", Box::new(|d| edit_manifest(d, |m| m["max_length"] = json!(0))), "manifest.json", "must be positive"),
        ("dim beyond usize", Box::new(|d| edit_manifest(d, |m| m["dim"] = json!(1e300))), "manifest.json", "not a valid manifest"),
        ("unknown pooling", Box::new(|d| edit_manifest(d, |m| m["pooling"] = json!("cls"))), "manifest.json", "pooling 'cls' is not supported"),
        ("unknown table method", Box::new(|d| edit_manifest(d, |m| m["table"] = json!("pca"))), "manifest.json", "unknown variant `pca`"),
        ("unknown weight scheme", Box::new(|d| edit_manifest(d, |m| m["weights"] = json!("int3"))), "manifest.json", "unknown variant `int3`"),
        ("file entry missing", Box::new(|d| edit_manifest(d, |m| { m["files"].as_object_mut().unwrap().remove("body.onnx"); })), "manifest.json", "does not list body.onnx"),
        ("head entry missing", Box::new(|d| edit_manifest(d, |m| { m["files"].as_object_mut().unwrap().remove("head.safetensors"); })), "manifest.json", "does not list head.safetensors"),
        ("file outside the bundle", Box::new(|d| edit_manifest(d, |m| m["files"]["../../etc/passwd"] = m["files"]["body.onnx"].clone())), "manifest.json", "not a bundle file"),
        ("unknown file", Box::new(|d| edit_manifest(d, |m| m["files"]["notes.txt"] = m["files"]["body.onnx"].clone())), "manifest.json", "'notes.txt', which is not a bundle file"),
        ("sha256 not hex", Box::new(|d| edit_manifest(d, |m| m["files"]["body.onnx"]["sha256"] = json!("zz"))), "manifest.json", "sha256 of body.onnx is not 64 lowercase hex digits"),
        ("one label", Box::new(|d| edit_manifest(d, |m| m["labels"] = json!(["only"]))), "manifest.json", "at least two labels"),
        ("duplicate labels", Box::new(|d| edit_manifest(d, |m| m["labels"] = json!(["sports", "tech", "sports", "business", "politics"]))), "manifest.json", "label 'sports' appears twice"),
        ("empty label", Box::new(|d| edit_manifest(d, |m| m["labels"][2] = json!(" "))), "manifest.json", "label 2 is empty"),
        // files against the manifest
        ("file missing", Box::new(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap()), "tokenizer.json", "missing from the bundle"),
        ("size mismatch", Box::new(move |d| replace(d, "factors.safetensors", &factors[..factors.len() - 1])), "factors.safetensors", "bytes but the manifest says"),
        ("hash mismatch", Box::new(|d| {
            let mut b = std::fs::read(d.join("head.safetensors")).unwrap();
            let n = b.len();
            b[n - 1] ^= 1;
            replace(d, "head.safetensors", &b);
        }), "head.safetensors", "does not match the manifest"),
        ("file is a directory", Box::new(|d| {
            std::fs::remove_file(d.join("body.onnx")).unwrap();
            std::fs::create_dir(d.join("body.onnx")).unwrap();
        }), "body.onnx", "is not a regular file"),
        // dimensions of the files against each other (hashes recomputed)
        ("factor vocab differs from the manifest", Box::new(|d| edit_manifest(d, |m| m["vocab"] = json!(30521))), "factors.safetensors", "table is 30522 x 384 but the manifest says 30521 x 384"),
        ("factor method differs from the manifest", Box::new(|d| edit_manifest(d, |m| m["table"] = json!("int8"))), "factors.safetensors", "table method is int4 but the manifest says int8"),
        ("factor file malformed", Box::new(|d| {
            let mut b = std::fs::read(d.join("factors.safetensors")).unwrap();
            let at = b.windows(15).position(|w| w == b"embslim-factors").unwrap();
            b[at..at + 15].copy_from_slice(b"embslim-factorz");
            replace(d, "factors.safetensors", &b);
            rehash(d);
        }), "factors.safetensors", "invalid factor file: format is 'embslim-factorz'"),
        ("tokenizer not a tokenizer", Box::new(|d| { replace(d, "tokenizer.json", b"{\"model\": 3}"); rehash(d); }), "tokenizer.json", "tokenizer:"),
        ("tokenizer vocabulary differs", Box::new({
            let tokenizer = tokenizer.clone();
            move |d| {
                // the token with the highest id: the others still number 0..30521
                let mut t = tokenizer.clone();
                let vocab = t["model"]["vocab"].as_object_mut().unwrap();
                let last = vocab.iter().max_by_key(|(_, id)| id.as_u64()).unwrap().0.clone();
                vocab.remove(&last);
                replace(d, "tokenizer.json", &serde_json::to_vec(&t).unwrap());
                rehash(d);
            }
        }), "tokenizer.json", "vocabulary of 30521 tokens does not match the 30522 rows"),
        ("tokenizer ids with a gap", Box::new(move |d| {
            let mut t = tokenizer.clone();
            t["model"]["vocab"].as_object_mut().unwrap().remove("[unused0]");
            replace(d, "tokenizer.json", &serde_json::to_vec(&t).unwrap());
            rehash(d);
        }), "tokenizer.json", "vocabulary ids are not 0..30521 each once"),
        ("weight scheme differs from the graph", Box::new(|d| edit_manifest(d, |m| m["weights"] = json!(if m["weights"] == "int8" { "f16" } else { "int8" }))), "body.onnx", "weights but the graph's dense layers store"),
        ("body not ONNX", Box::new(|d| { replace(d, "body.onnx", b"\x08\x07garbage, not a protobuf \xff\xff\xff"); rehash(d); }), "body.onnx", "not a loadable ONNX body"),
        ("body data missing", Box::new(|d| std::fs::remove_file(d.join("body.onnx.data")).unwrap()), "body.onnx.data", "missing from the bundle"),
        ("body data not listed", Box::new(|d| edit_manifest(d, |m| { m["files"].as_object_mut().unwrap().remove("body.onnx.data"); })), "body.onnx", "the bundle has no body.onnx.data"),
        ("external data elsewhere", Box::new(|d| edit_external_tensor(d, |t| set_external(t, "location", "../../etc/passwd"))), "body.onnx", "location '../../etc/passwd' is not the bundle's body.onnx.data"),
        ("external data without a length", Box::new(|d| edit_external_tensor(d, |t| t.external_data.retain(|e| e.key != "length"))), "body.onnx", "no length"),
        ("external length not a number", Box::new(|d| edit_external_tensor(d, |t| set_external(t, "length", "-5"))), "body.onnx", "length '-5' is not a byte count"),
        ("external range past the data file", Box::new(|d| edit_external_tensor(d, |t| set_external(t, "offset", &u64::MAX.to_string()))), "body.onnx", "are beyond the"),
        ("external tensor with inline data too", Box::new(|d| edit_external_tensor(d, |t| t.raw_data = vec![0; 4])), "body.onnx", "also has inline data"),
        ("body data truncated", Box::new(|d| {
            let b = std::fs::read(d.join("body.onnx.data")).unwrap();
            replace(d, "body.onnx.data", &b[..b.len() / 2]);
            rehash(d);
        }), "body.onnx", "are beyond the"),
        ("head not safetensors", Box::new(|d| { replace(d, "head.safetensors", b"head"); rehash(d); }), "head.safetensors", "not a valid safetensors file"),
        ("head shape differs from the labels", Box::new(|d| { replace(d, "head.safetensors", &head_bytes(3, 384, 0.1)); rehash(d); }), "head.safetensors", "tensor 'weight' is F32 [3, 384], expected F32 [5, 384]"),
        ("head width differs from dim", Box::new(|d| { replace(d, "head.safetensors", &head_bytes(5, 32, 0.1)); rehash(d); }), "head.safetensors", "expected F32 [5, 384]"),
        ("NaN in the head", Box::new(|d| { replace(d, "head.safetensors", &head_bytes(5, 384, f32::NAN)); rehash(d); }), "head.safetensors", "non-finite value at index 0"),
        ("inf in the head", Box::new(|d| { replace(d, "head.safetensors", &head_bytes(5, 384, f32::INFINITY)); rehash(d); }), "head.safetensors", "non-finite value at index 0"),
    ];
    if let Some(body) = foreign {
        cases.push((
            "body of another model (width 32)",
            Box::new(move |d| {
                replace(d, "body.onnx", &std::fs::read(&body).unwrap());
                rehash(d);
            }),
            "body.onnx",
            "expects inputs_embeds of width 32, but the manifest's dim is 384",
        ));
    }

    let mut failures = Vec::new();
    for (i, (name, mutate, file, rule)) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("case{i}"));
        copy_bundle(&good, &dir);
        mutate(&dir);
        let out = embslim().arg("embed").arg(&dir).arg("hello").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let mut why = Vec::new();
        if out.status.code() != Some(2) {
            why.push(format!("exit status {:?}", out.status.code()));
        }
        if !err.contains(file) {
            why.push(format!("message does not name {file}"));
        }
        match err.matches(rule).count() {
            0 => why.push(format!("message lacks '{rule}'")),
            1 => {}
            _ => why.push(format!("message repeats '{rule}'")),
        }
        if err.contains("panicked") || !out.stdout.is_empty() {
            why.push("panicked or printed output".into());
        }
        if why.is_empty() {
            eprintln!("ok  {name}: {}", err.trim());
        } else {
            failures.push(format!("{name}: {}\n    stderr: {}", why.join(", "), err.trim()));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
