//! The command line as scripts use it, run through $CROSS_RUNNER when set so the same
//! tests run on emulated ARM (see tests/common/mod.rs and cross/test.sh).

mod common;

use common::{embslim, head_bundle, run_with_input, HEADLINES};
use serde_json::Value;

/// ARM NEON kernels sum in a different order than x86 AVX ones: sentence embeddings of
/// the same bundle agree to about 1e-6 in cosine; 1e-4 leaves room without hiding bugs.
const CROSS_PLATFORM_MIN_COS: f64 = 0.9999;

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

#[test]
fn embed_json_gives_one_line_per_input_in_order_with_error_lines() {
    let bundle = head_bundle();
    let mut input = Vec::new();
    input.extend_from_slice(format!("{}\n\n", HEADLINES[0]).as_bytes()); // line 2 is empty
    input.extend_from_slice(b"caf\xe9 au lait\n"); // line 3: Latin-1, invalid UTF-8
    input.extend_from_slice(format!("{}\n", HEADLINES[1]).as_bytes());
    let mut cmd = embslim();
    cmd.arg("embed").arg(&bundle).arg("--json");
    let out = run_with_input(cmd, &input);
    assert_eq!(out.status.code(), Some(1), "some lines failed: exit status 1");
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 4);
    for i in [0, 3] {
        let e = lines[i]["embedding"].as_array().unwrap();
        assert_eq!(e.len(), 384);
        let norm: f64 = e.iter().map(|v| v.as_f64().unwrap().powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "embedding norm {norm}");
    }
    assert_eq!(lines[1]["line"], 2);
    assert!(lines[1]["error"].as_str().unwrap().contains("empty"));
    assert_eq!(lines[2]["line"], 3);
    assert!(lines[2]["error"].as_str().unwrap().contains("UTF-8"));
}

#[test]
fn embed_all_good_lines_exits_zero_and_warns_on_truncation() {
    let long = "word ".repeat(400);
    let out = embslim().arg("embed").arg(head_bundle()).arg("--max-length").arg("32").arg(HEADLINES[2]).arg(&long).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2: input truncated to 32 tokens"), "{err}");
}

#[test]
fn classify_json_prints_label_score_and_all_scores() {
    let out = embslim().arg("classify").arg(head_bundle()).arg("--json").args(HEADLINES).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out.stdout);
    let labels: Vec<&str> = lines.iter().map(|l| l["label"].as_str().unwrap()).collect();
    eprintln!("headline labels: {labels:?}");
    assert_eq!(labels, ["business", "entertainment", "politics", "sports", "tech"]);
    for l in &lines {
        let scores = l["scores"].as_object().unwrap();
        assert_eq!(scores.len(), 5);
        let total: f64 = scores.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-4);
        assert_eq!(l["score"], scores[l["label"].as_str().unwrap()]);
    }
}

#[test]
fn classify_streams_stdin_in_order_with_top_k() {
    let mut cmd = embslim();
    cmd.arg("classify").arg(head_bundle()).arg("--top").arg("2");
    let input = format!("{}\n{}\n", HEADLINES[3], HEADLINES[0]);
    let out = run_with_input(cmd, input.as_bytes());
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0][0], rows[1][0]), ("sports", "business"));
    assert_eq!(rows[0].len(), 4, "label, score, second label, score");
}

#[test]
fn classify_without_a_head_says_what_to_do() {
    let bundle = head_bundle();
    let tmp = tempfile::tempdir().unwrap();
    let nohead = tmp.path().join("nohead");
    std::fs::create_dir(&nohead).unwrap();
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    manifest.as_object_mut().unwrap().remove("labels");
    manifest["files"].as_object_mut().unwrap().remove("head.safetensors");
    for f in ["body.onnx", "body.onnx.data", "factors.safetensors", "tokenizer.json"] {
        std::fs::copy(bundle.join(f), nohead.join(f)).unwrap();
    }
    std::fs::write(nohead.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let out = embslim().arg("classify").arg(&nohead).arg("hello").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no classification head") && err.contains("train-head"), "{err}");
}

#[test]
fn a_closed_stdout_stops_quietly() {
    // `embslim embed ... | head -n 1`: the reader leaves after one line
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let mut child = embslim()
        .arg("embed")
        .arg(head_bundle())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for _ in 0..200 {
            if stdin.write_all(b"a short line of text\n").is_err() {
                break;
            }
        }
    });
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    // stdout is dropped here: the pipe is closed
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(!first.is_empty());
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn a_tampered_bundle_is_refused_naming_the_file() {
    let bundle = head_bundle();
    let tmp = tempfile::tempdir().unwrap();
    for (victim, needle) in [("factors.safetensors", "sha256"), ("tokenizer.json", "missing from the bundle"), ("body.onnx", "bytes but the manifest says")] {
        let b = tmp.path().join(victim.replace('.', "_"));
        std::fs::create_dir(&b).unwrap();
        for f in std::fs::read_dir(&bundle).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, b.join(f.file_name().unwrap())).unwrap();
        }
        let p = b.join(victim);
        match needle {
            "sha256" => {
                let mut bytes = std::fs::read(&p).unwrap();
                let n = bytes.len();
                bytes[n - 3] ^= 1;
                std::fs::write(&p, bytes).unwrap();
            }
            "missing from the bundle" => std::fs::remove_file(&p).unwrap(),
            _ => {
                let mut bytes = std::fs::read(&p).unwrap();
                bytes.truncate(bytes.len() - 10);
                std::fs::write(&p, bytes).unwrap();
            }
        }
        let out = embslim().arg("embed").arg(&b).arg("hello").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{victim}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(victim) && err.contains(needle), "{victim}: {err}");
    }
}

/// Host and emulated ARM agree: the host run records its embeddings of the headlines;
/// a run under $CROSS_RUNNER compares against them.
#[test]
fn embeddings_agree_with_the_host_run() {
    let bundle = head_bundle();
    let golden = common::bundle_dir("host-headline-embeddings.json");
    let got = headline_embeddings(&bundle, &[]);
    let cross = std::env::var("CROSS_RUNNER").map(|r| !r.trim().is_empty()).unwrap_or(false);
    if !cross {
        std::fs::write(&golden, serde_json::to_vec(&got).unwrap()).unwrap();
        return;
    }
    let want: Vec<Vec<f64>> = serde_json::from_slice(&std::fs::read(&golden).expect("run the host tests first (cross/test.sh does)")).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let max_abs = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        eprintln!("headline {i}: cosine to host {:.9}, max abs diff {max_abs:e}", cosine(g, w));
        assert!(cosine(g, w) >= CROSS_PLATFORM_MIN_COS, "headline {i}: cosine {} to the host", cosine(g, w));
    }
}

/// The embeddings of the test headlines by `embed --json` with `extra` options.
fn headline_embeddings(bundle: &std::path::Path, extra: &[&str]) -> Vec<Vec<f64>> {
    let out = embslim().arg("embed").arg(bundle).arg("--json").args(extra).args(HEADLINES).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    json_lines(&out.stdout).iter().map(|l| l["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()).collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (a.iter().map(|x| x * x).sum::<f64>() * b.iter().map(|x| x * x).sum::<f64>()).sqrt()
}

/// Same weights, only the order of the sums differs between tract's Q4_0 kernels and its
/// f32 ones: measured 1 - 3e-13 between aarch64 `--packed` (under qemu) and x86 expanded
/// on a 128-token BBC article; identical on x86.
const PACKED_MIN_COS: f64 = 0.999999;

/// `--packed` keeps the int4 weights 4-bit in tract and must embed as the expanded body
/// does, natively and under qemu (where tract takes its ARM Q4_0 kernels).
#[test]
fn packed_weights_embed_like_expanded_ones() {
    let bundle = head_bundle();
    let manifest: Value = serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["weights"], "int4", "the test bundle has compress's default int4 body");
    let (expanded, packed) = (headline_embeddings(&bundle, &[]), headline_embeddings(&bundle, &["--packed"]));
    assert_eq!(expanded.len(), HEADLINES.len());
    for (i, (e, p)) in expanded.iter().zip(&packed).enumerate() {
        eprintln!("headline {i}: packed vs expanded cosine {:.12}", cosine(e, p));
        assert!(cosine(e, p) >= PACKED_MIN_COS, "headline {i}: cosine {}", cosine(e, p));
    }
}

/// `footprint --json` runs wherever the binary runs (also under qemu, where /proc shows the
/// emulator: RSS figures are then qemu's; bytes still the bundle's).
#[test]
fn footprint_json_reports_the_interface_fields() {
    let bundle = head_bundle();
    let texts = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(texts.path(), HEADLINES.iter().map(|h| format!("{h} {h} {h} {h}\n")).collect::<String>()).unwrap();
    let out = embslim().arg("footprint").arg(&bundle).arg("--texts").arg(texts.path()).args(["--runs", "2", "--docs", "3", "--lengths", "16", "--json", "--profile"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = &json_lines(&out.stdout)[0];
    let files: u64 = ["body.onnx", "body.onnx.data", "factors.safetensors", "tokenizer.json", "head.safetensors"].iter().map(|f| std::fs::metadata(bundle.join(f)).unwrap().len()).sum();
    assert!(r["bundle_bytes"].as_u64().unwrap() > files, "bundle bytes include the manifest");
    assert_eq!(r["factor_file_bytes"].as_u64().unwrap(), std::fs::metadata(bundle.join("factors.safetensors")).unwrap().len());
    let (resident, size) = (r["factor_resident_bytes"].as_u64().unwrap(), r["factor_file_bytes"].as_u64().unwrap());
    // qemu-user ignores madvise hints (linux-user's target_madvise: "most advice values are
    // hints, so ignoring and returning success is ok"), so without MADV_RANDOM the kernel's
    // readahead brings the whole 6.6 MB file in under emulation; natively only the rows
    // of the texts' tokens are paged in
    let emulated = std::env::var_os("CROSS_RUNNER").is_some_and(|r| !r.is_empty());
    assert!(resident > 0 && (resident < size || (emulated && resident <= size)), "resident {resident} of {size}");
    assert!(r["peak_heap_bytes"].as_u64().unwrap() > 0);
    // the peak so far after each stage: five stages, never falling, ending at the peak
    let stages: Vec<u64> = r["peak_heap_by_stage"].as_array().unwrap().iter().map(|s| s[1].as_u64().unwrap()).collect();
    assert_eq!(stages.len(), 5);
    assert!(stages.windows(2).all(|w| w[0] <= w[1]) && stages[4] == r["peak_heap_bytes"].as_u64().unwrap(), "{stages:?}");
    assert!(r["heap_after_load_bytes"].as_u64().unwrap() <= stages[0]);
    assert!(r["peak_rss_bytes"].is_u64() || r["peak_rss_bytes"].is_null());
    // VmHWM after each stage, where /proc exists: never falling, ending at the peak
    let rss: Vec<Option<u64>> = r["peak_rss_by_stage"].as_array().unwrap().iter().map(|s| s[1].as_u64()).collect();
    assert_eq!(rss.len(), 5);
    if let Some(rss) = rss.iter().copied().collect::<Option<Vec<u64>>>() {
        assert!(rss.windows(2).all(|w| w[0] <= w[1]) && Some(rss[4]) <= r["peak_rss_bytes"].as_u64(), "{rss:?}");
    }
    // --profile: the body's time by tract op at the longest length, the matrix products first
    let p = &r["profile"];
    assert_eq!((p["seq"].as_u64(), p["runs"].as_u64()), (Some(16), Some(2)));
    let ops: Vec<(&str, f64)> = p["ms_by_op"].as_array().unwrap().iter().map(|o| (o[0].as_str().unwrap(), o[1].as_f64().unwrap())).collect();
    assert!(ops.windows(2).all(|w| w[0].1 >= w[1].1) && ops.iter().all(|o| o.1 >= 0.0), "{ops:?}");
    assert!(ops.iter().any(|o| o.0.contains("MatMul")), "{ops:?}");
    assert!(r["binary_bytes"].as_u64().unwrap() > 0);
    for k in ["load_ms", "first_result_ms", "decode_ns_per_token"] {
        assert!(r[k].as_f64().unwrap() > 0.0, "{k}");
    }
    let l = &r["latency_ms"]["16"];
    assert!(l["p50"].as_f64().unwrap() > 0.0 && l["p99"].as_f64().unwrap() >= l["p50"].as_f64().unwrap());
}
