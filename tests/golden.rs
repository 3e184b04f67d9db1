//! Golden tests on the real models, each with a named tolerance (as tract's
//! `Approximation`): the bundle against the original ONNX run through tract, against an
//! independent numpy forward pass, and the zero-copy claim of the runtime.
#![cfg(feature = "train")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use embslim::export::{compress_bundle, BundleOptions};
use embslim::format::Method;
use embslim::manifest::WeightScheme;
use embslim::train::CompressOptions;
use embslim::{Bundle, OpenOptions};
use tract_onnx::prelude::*;

/// Same graph, same runtime, same inputs: only the embedding lookup moved out of the
/// graph, so the sums happen in the same order up to kernel tiling. 1e-5 is the bound
/// the issue sets; the measured difference is printed.
const LOSSLESS_MAX_ABS: f32 = 1e-5;
/// Our ONNX export of the checkpoint vs a float64 numpy forward pass: f32 arithmetic
/// over 6 layers keeps the sentence cosine above 1 - 1e-5.
const REFERENCE_MIN_COS: f32 = 0.99999;

fn bundle_of(model: &Path, name: &str) -> PathBuf {
    lossless_table_bundle(model, name, WeightScheme::F32, None)
}

/// `model` compressed into target/test-bundles/NAME with the table kept lossless, the body
/// stored as `weights`, and `calibration` = (corpus, documents) for an int4 body's GPTQ.
fn lossless_table_bundle(model: &Path, name: &str, weights: WeightScheme, calibration: Option<(&Path, usize)>) -> PathBuf {
    let out = common::root().join("target/test-bundles").join(name);
    let opts = BundleOptions {
        table: CompressOptions { method: Method::None, ..CompressOptions::default() },
        weights: Some(weights),
        max_length: Some(128),
        corpus: calibration.map(|(c, _)| c.to_path_buf()),
        tokenizer: None,
        calibration_docs: calibration.map_or(0, |(_, n)| n),
    };
    compress_bundle(model, &out, &opts, |_| {}, |_| {}).unwrap();
    out
}

/// A small real sample: the first 4 documents of each BBC class, plus the Latin-1 one.
fn sample() -> &'static Vec<(String, String)> {
    static S: OnceLock<Vec<(String, String)>> = OnceLock::new();
    S.get_or_init(|| {
        let corpus = embslim::corpus::load(&common::bbc()).unwrap();
        let mut per: std::collections::BTreeMap<String, usize> = Default::default();
        corpus
            .docs
            .into_iter()
            .filter(|d| {
                let n = per.entry(d.label.clone().unwrap()).or_default();
                *n += 1;
                *n <= 4 || d.origin.ends_with("sports/199.txt")
            })
            .map(|d| (d.origin, d.text))
            .collect()
    })
}

/// Run the original ONNX through tract: inputs input_ids and attention_mask, the token
/// hidden states mean-pooled and normalized as the bundle does.
fn original_onnx_embeddings(onnx: &Path, ids: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let model = tract_onnx::onnx().with_ignore_value_info(true).model_for_path(onnx).unwrap();
    let outputs = model.output_outlets().unwrap().to_vec();
    // the per-token hidden states are the rank-3 output
    let model = model.into_optimized().unwrap();
    let hidden_idx = (0..outputs.len()).find(|&i| model.output_fact(i).unwrap().shape.rank() == 3).unwrap();
    let plan = model.into_runnable().unwrap();
    ids.iter()
        .map(|seq| {
            let n = seq.len();
            let input = tract_ndarray::Array2::from_shape_vec((1, n), seq.iter().map(|&i| i64::from(i)).collect()).unwrap();
            let mask = tract_ndarray::Array2::from_elem((1, n), 1i64);
            let out = plan.run(tvec!(Tensor::from(input).into(), Tensor::from(mask).into())).unwrap();
            let h: Vec<f32> = out[hidden_idx].to_plain_array_view::<f32>().unwrap().iter().copied().collect();
            embslim::pool::mean_pool(&h, &vec![1; n], 1, n, 384, true).remove(0)
        })
        .collect()
}

#[test]
fn lossless_l3_bundle_matches_the_original_onnx_in_tract() {
    let dir = bundle_of(&common::l3_onnx(), "l3-none");
    let bundle = Bundle::open(&dir, &OpenOptions::default()).unwrap();
    let tok = embslim::tokenize::Tokenizer::from_file(&dir.join("tokenizer.json"), Some(128)).unwrap();
    let texts: Vec<&str> = sample().iter().map(|(_, t)| t.as_str()).collect();
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t).ids).collect();
    let want = original_onnx_embeddings(&common::l3_onnx(), &ids);
    let got = bundle.embed_many(&texts, 1, |_| {}).unwrap();
    let mut worst = 0f32;
    for (g, w) in got.iter().zip(&want) {
        for (a, b) in g.embedding.iter().zip(w) {
            worst = worst.max((a - b).abs());
        }
    }
    eprintln!("L3 lossless bundle vs original ONNX (tract): max abs diff {worst:e} over {} documents", texts.len());
    assert!(worst <= LOSSLESS_MAX_ABS, "max abs diff {worst} > {LOSSLESS_MAX_ABS}");
    // padding must not change anything: the same documents in padded batches of 8
    let batched = bundle.embed_many(&texts, 8, |_| {}).unwrap();
    let pad_worst = batched.iter().zip(&got).flat_map(|(a, b)| a.embedding.iter().zip(&b.embedding).map(|(x, y)| (x - y).abs())).fold(0f32, f32::max);
    assert!(pad_worst <= LOSSLESS_MAX_ABS, "padded batches differ by {pad_worst}");
}

/// Read a float32 .npy file written by numpy (C order, little-endian, 2-D).
fn read_npy(path: &Path) -> (Vec<f32>, usize, usize) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.contains("'<f4'") && header.contains("'fortran_order': False"), "{header}");
    let shape = &header[header.find("'shape': (").unwrap() + 10..];
    let dims: Vec<usize> = shape[..shape.find(')').unwrap()].split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let data = b[10 + hlen..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    (data, dims[0], dims[1])
}

#[test]
fn minilm_bundle_matches_an_independent_numpy_forward_pass() {
    let dir = bundle_of(&common::minilm(), "minilm-none");
    // the sample as a folder, so the reference reads the same files in the same order
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("docs");
    for (i, (origin, _)) in sample().iter().enumerate() {
        let p = Path::new(origin);
        let class = p.parent().unwrap().file_name().unwrap();
        std::fs::create_dir_all(data.join(class)).unwrap();
        std::fs::copy(p, data.join(class).join(format!("{i:03}.txt"))).unwrap();
    }
    let npy = tmp.path().join("ref.npy");
    let status = std::process::Command::new("python3")
        .arg(common::root().join("tools/reference.py"))
        .args(["embed", "--model"])
        .arg(common::minilm())
        .arg("--data")
        .arg(&data)
        .args(["--max-length", "128", "--out"])
        .arg(&npy)
        .status()
        .expect("python3 runs tools/reference.py (tools/requirements.txt)");
    assert!(status.success());
    let (want, n, d) = read_npy(&npy);
    let docs = embslim::corpus::load(&data).unwrap();
    assert_eq!(docs.docs.len(), n);
    let texts: Vec<&str> = docs.docs.iter().map(|d| d.text.as_str()).collect();
    let bundle = Bundle::open(&dir, &OpenOptions::default()).unwrap();
    let got = bundle.embed_many(&texts, 4, |_| {}).unwrap();
    let worst = got
        .iter()
        .zip(want.chunks_exact(d))
        .map(|(g, w)| embslim::pool::cosine(&g.embedding, w))
        .fold(1f32, f32::min);
    eprintln!("all-MiniLM-L6-v2 bundle vs numpy reference: min cosine {worst} over {n} documents");
    assert!(worst >= REFERENCE_MIN_COS, "min cosine {worst} < {REFERENCE_MIN_COS}");
}

#[test]
fn embedding_a_sentence_touches_a_small_fraction_of_the_factor_file() {
    let dir = bundle_of(&common::minilm(), "minilm-none-mincore");
    let bundle = Bundle::open(&dir, &OpenOptions::default()).unwrap();
    let size = bundle.factor_map().bytes().len();
    let before = bundle.factor_map().resident_bytes().expect("mincore works on Linux");
    bundle.embed_batch(&["The quick brown fox jumps over the lazy dog."]).unwrap();
    let after = bundle.factor_map().resident_bytes().unwrap();
    eprintln!("factor file {size} bytes: resident {before} after open, {after} after one sentence");
    // 12 tokens touch at most 24 pages of rows plus the header page: far below 1 %
    assert!(after * 100 < size, "resident {after} of {size} bytes after one sentence");
}

/// SVD is deterministic math: the token-level metrics must agree with numpy's
/// float64 np.linalg.svd (tools/reference.py) to 1e-4.
const SVD_METRIC_TOL: f64 = 1e-4;

#[test]
fn svd_metrics_agree_with_numpy() {
    use embslim::format::Factors;
    use embslim::train::{self, source::SourceTable};
    let src = SourceTable::open(&common::minilm()).unwrap();
    let rank = 37;
    let c = train::compress(&src, &CompressOptions { method: Method::Svd, rank: Some(rank), ..CompressOptions::default() }, None, |_| {}).unwrap();
    let tok = embslim::tokenize::Tokenizer::from_file(&common::minilm().join("tokenizer.json"), None).unwrap();
    let freq = train::token_frequencies(&tok, &embslim::corpus::load(&common::bbc()).unwrap(), src.vocab);
    let m = train::token_metrics(&src, &Factors { header: c.header.clone(), table: c.table.view(), row_of_token: None }, Some(&freq)).unwrap();
    let out = std::process::Command::new("python3")
        .arg(common::root().join("tools/reference.py"))
        .args(["svd", "--model"])
        .arg(common::minilm())
        .args(["--rank", &rank.to_string(), "--corpus"])
        .arg(common::bbc())
        .output()
        .expect("python3 runs tools/reference.py");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    for (name, ours) in [
        ("token_cos_mean", m.token_cos_mean),
        ("token_cos_p5", m.token_cos_p5),
        ("token_cos_weighted", m.token_cos_weighted.unwrap()),
        ("rmse", m.rmse),
        ("norm_ratio", m.norm_ratio),
    ] {
        let theirs = r[name].as_f64().unwrap();
        eprintln!("{name}: embslim {ours:.9} numpy {theirs:.9}");
        assert!((ours - theirs).abs() <= SVD_METRIC_TOL, "{name}: {ours} vs numpy {theirs}");
    }
}

/// BBC News split in two: even-numbered files of each class linked into `dir/freq` (the
/// corpus compress learns from), ten odd-numbered documents per class returned (held out).
fn split_bbc(dir: &Path) -> (PathBuf, Vec<String>) {
    let (freq_dir, mut held_out) = (dir.join("freq"), Vec::new());
    for class in ["business", "entertainment", "politics", "sports", "tech"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(common::bbc().join(class)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        std::fs::create_dir_all(freq_dir.join(class)).unwrap();
        for (i, f) in files.iter().enumerate() {
            if i % 2 == 0 {
                std::os::unix::fs::symlink(f, freq_dir.join(class).join(f.file_name().unwrap())).unwrap();
            } else if i < 20 {
                held_out.push(String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned());
            }
        }
    }
    (freq_dir, held_out)
}

/// Mean sentence cosine of `bundle` against `reference` on `texts`.
fn mean_cos(reference: &Bundle, bundle: &Bundle, texts: &[&str]) -> f32 {
    let (a, b) = (reference.embed_many(texts, 8, |_| {}).unwrap(), bundle.embed_many(texts, 8, |_| {}).unwrap());
    a.iter().zip(&b).map(|(x, y)| embslim::pool::cosine(&x.embedding, &y.embedding)).sum::<f32>() / texts.len() as f32
}

/// Measured on the 1,111 held-out BBC documents (tools/heldout.sh): mean 0.9986, 5th
/// percentile 0.995. The mean over the 50 held-out documents here must stay above the
/// 10x target of issue 9 (0.998) minus the spread of a 50-document sample.
const MIXED_R10_MIN_MEAN_COS: f32 = 0.997;

/// Mixed bits at 10x, token counts from one half of BBC News, sentence cosine against the
/// lossless bundle on documents of the other half.
#[test]
fn mixed_table_at_10x_keeps_held_out_sentences() {
    let tmp = tempfile::tempdir().unwrap();
    let (freq_dir, held_out) = split_bbc(tmp.path());
    let out = common::root().join("target/test-bundles/minilm-mixed-r10");
    let opts = BundleOptions {
        table: CompressOptions { method: Method::Mixed, ratio: Some(10.0), ..CompressOptions::default() },
        weights: Some(WeightScheme::F32),
        max_length: Some(128),
        corpus: Some(freq_dir),
        tokenizer: None,
        calibration_docs: 0,
    };
    let report = compress_bundle(&common::minilm(), &out, &opts, |_| {}, |_| {}).unwrap();
    assert!(report.ratio_bytes >= 9.99, "table ratio {}", report.ratio_bytes);
    let reference = Bundle::open(&bundle_of(&common::minilm(), "minilm-none-mixed-ref"), &OpenOptions::default()).unwrap();
    let mixed = Bundle::open(&out, &OpenOptions::default()).unwrap();
    let texts: Vec<&str> = held_out.iter().map(String::as_str).collect();
    let mean = mean_cos(&reference, &mixed, &texts);
    eprintln!("mixed 10x on {} held-out BBC documents: sentence cosine mean {mean}", texts.len());
    assert_eq!(texts.len(), 50);
    assert!(mean >= MIXED_R10_MIN_MEAN_COS, "mean sentence cosine {mean} < {MIXED_R10_MIN_MEAN_COS}");
}

/// The runtime expands stored weights (f16, int8, Q4_0) to f32 before tract sees the body
/// (`encode::expand_stored_weights`, to spare tract's memory-hungry folding). Running the
/// expanded graph must give exactly what tract computes from the stored graph.
#[test]
fn expanded_weights_compute_exactly_what_the_stored_graph_does() {
    use prost::Message;
    let model = common::tiny_bert(32);
    let tmp = tempfile::tempdir().unwrap();
    for weights in ["f16", "int8", "int4"] {
        let out = tmp.path().join(weights);
        let res = common::embslim()
            .args(["compress", "--model"])
            .arg(&model)
            .arg("--out")
            .arg(&out)
            .args(["--method", "none", "--weights", weights, "--corpus", "/nonexistent"])
            .output()
            .unwrap();
        assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
        let stored = std::fs::read(out.join("body.onnx")).unwrap();
        let data = std::fs::read(out.join("body.onnx.data")).unwrap();
        let mut proto = tract_onnx::pb::ModelProto::decode(&stored[..]).unwrap();
        let before = proto.graph.as_ref().unwrap().node.len();
        embslim::encode::expand_stored_weights(&mut proto, Some(&data), embslim::encode::Int4::Expanded).unwrap();
        let g = proto.graph.as_ref().unwrap();
        assert!(g.node.len() < before, "{weights}: nothing was expanded");
        let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        let left = g.node.iter().find(|n| n.op_type == "Mod" || (n.op_type == "Cast" && inits.contains(n.input[0].as_str())));
        assert!(left.is_none(), "{weights}: an expansion node is left: {left:?}");
        assert!(g.initializer.iter().all(|t| t.data_type == tract_onnx::pb::tensor_proto::DataType::Float as i32 || t.dims.len() < 2), "{weights}: a stored weight is left");
        let expanded = proto.encode_to_vec();
        let (seq, d) = (7usize, 32usize);
        // the stored graph from its files (tract reads body.onnx.data beside it), the expanded one from memory
        let run = |m: InferenceModel| -> Vec<f32> {
            let mut m = m;
            let mut inputs = TVec::new();
            for (i, outlet) in m.input_outlets().unwrap().to_vec().into_iter().enumerate() {
                let (fact, t): (InferenceFact, Tensor) = match m.node(outlet.node).name.as_str() {
                    "inputs_embeds" => (
                        InferenceFact::dt_shape(f32::datum_type(), tvec!(1, seq, d)),
                        tract_ndarray::Array3::from_shape_vec((1, seq, d), common::noise(seq * d, 3)).unwrap().into(),
                    ),
                    _ => (InferenceFact::dt_shape(i64::datum_type(), tvec!(1, seq)), tract_ndarray::Array2::<i64>::ones((1, seq)).into()),
                };
                m.set_input_fact(i, fact).unwrap();
                inputs.push(t.into_tvalue());
            }
            let plan = m.into_optimized().unwrap().into_runnable().unwrap();
            plan.run(inputs).unwrap()[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
        };
        let onnx = tract_onnx::onnx().with_ignore_value_info(true);
        let (a, b) = (run(onnx.model_for_path(out.join("body.onnx")).unwrap()), run(onnx.model_for_read(&mut &expanded[..]).unwrap()));
        let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        eprintln!("{weights}: stored vs expanded body, max abs diff {max}");
        assert_eq!(a.len(), b.len());
        // same arithmetic in the same order: identical up to kernel tiling (LOSSLESS_MAX_ABS)
        assert!(max <= LOSSLESS_MAX_ABS, "{weights}: max abs diff {max}");
    }
}

/// `Int4::Packed` hands the same Q4_0 weights to tract's block-quant kernels instead of
/// expanding them to f32 first: the dequantized values are the same, only the order of the
/// sums differs, so the sentence embeddings agree to float rounding (LOSSLESS_MAX_ABS) on
/// real text.
#[test]
fn packed_int4_weights_embed_like_expanded_ones() {
    let dir = lossless_table_bundle(&common::minilm(), "minilm-none-int4", WeightScheme::Int4, None);
    let open = |int4| Bundle::open(&dir, &OpenOptions { int4, ..OpenOptions::default() }).unwrap();
    let (expanded, packed) = (open(embslim::Int4::Expanded), open(embslim::Int4::Packed));
    let texts: Vec<&str> = sample().iter().map(|(t, _)| t.as_str()).collect();
    let (a, b) = (expanded.embed_many(&texts, 4, |_| {}).unwrap(), packed.embed_many(&texts, 4, |_| {}).unwrap());
    let worst = a.iter().zip(&b).flat_map(|(x, y)| x.embedding.iter().zip(&y.embedding).map(|(p, q)| (p - q).abs())).fold(0f32, f32::max);
    eprintln!("packed vs expanded int4 body on {} BBC documents: max abs diff {worst}", texts.len());
    assert!(worst <= LOSSLESS_MAX_ABS, "max abs diff {worst} > {LOSSLESS_MAX_ABS}");
}

/// GPTQ against plain rounding for the int4 body (lossless table). Measured on the 1,111
/// held-out BBC documents, calibrated on 128 documents of the other half: mean sentence
/// cosine 0.9910 vs 0.9736. Here, with 48 calibration documents (time) and 50 held-out
/// documents (measured 0.9895 vs 0.9736), GPTQ must stay above GPTQ_MIN_MEAN_COS and gain
/// at least GPTQ_MIN_GAIN (a third of the measured 0.017) over rounding.
const GPTQ_MIN_MEAN_COS: f32 = 0.98;
const GPTQ_MIN_GAIN: f32 = 0.006;

#[test]
fn gptq_int4_body_beats_rounding_on_held_out_sentences() {
    let tmp = tempfile::tempdir().unwrap();
    let (freq_dir, held_out) = split_bbc(tmp.path());
    let reference = Bundle::open(&bundle_of(&common::minilm(), "minilm-none-gptq-ref"), &OpenOptions::default()).unwrap();
    let int4 = |name: &str, calibration_docs: usize| {
        let out = lossless_table_bundle(&common::minilm(), name, WeightScheme::Int4, Some((&freq_dir, calibration_docs)));
        Bundle::open(&out, &OpenOptions::default()).unwrap()
    };
    let texts: Vec<&str> = held_out.iter().map(String::as_str).collect();
    let gptq = mean_cos(&reference, &int4("minilm-none-int4-gptq", 48), &texts);
    let rtn = mean_cos(&reference, &int4("minilm-none-int4-rtn", 0), &texts);
    eprintln!("int4 body on {} held-out BBC documents: GPTQ {gptq}, rounding {rtn}", texts.len());
    assert!(gptq >= GPTQ_MIN_MEAN_COS, "GPTQ mean sentence cosine {gptq} < {GPTQ_MIN_MEAN_COS}");
    assert!(gptq - rtn >= GPTQ_MIN_GAIN, "GPTQ {gptq} gains less than {GPTQ_MIN_GAIN} over rounding {rtn}");
}

/// The runtime loads a body as a chain of plans (`encode::partition`, to bound tract's
/// load peak); cut between layers, the chain must compute what the whole graph computes,
/// with weights expanded and kept packed. Same ops on the same values, so within
/// LOSSLESS_MAX_ABS (kernel tiling only).
#[test]
fn a_body_loaded_in_stages_computes_what_it_computes_whole() {
    use embslim::encode::{expand_stored_weights, BodyBatch, Encoder, Int4, BODY_STAGES};
    use prost::Message;
    let bundle = common::head_bundle();
    // SAFETY: test bundles are written once and never edited in place.
    let data = std::sync::Arc::new(unsafe { embslim::mmap::Mapped::open(&bundle.join("body.onnx.data")) }.unwrap());
    let (seq, d) = (23usize, 384usize);
    for int4 in [Int4::Expanded, Int4::Packed] {
        let load = |stages: usize| {
            let mut proto = tract_onnx::pb::ModelProto::decode(&std::fs::read(bundle.join("body.onnx")).unwrap()[..]).unwrap();
            expand_stored_weights(&mut proto, Some(data.bytes()), int4).unwrap();
            Encoder::build(proto, Some(data.clone()), d, 1, &[], stages).unwrap()
        };
        let (whole, staged) = (load(1), load(BODY_STAGES));
        assert_eq!(whole.stages(), 1);
        assert!(staged.stages() > BODY_STAGES / 2, "{int4:?}: only {} stages", staged.stages());
        let batch = || BodyBatch { batch: 2, seq, embeds: common::noise(2 * seq * d, 5), mask: (0..2 * seq).map(|i| (i % seq < seq - 3 * (i / seq)) as i64).collect(), type_ids: vec![0; 2 * seq] };
        let (a, b) = (whole.run(batch()).unwrap(), staged.run(batch()).unwrap());
        let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        eprintln!("{int4:?}: {} stages vs whole, max abs diff {max}", staged.stages());
        assert_eq!(a.len(), b.len());
        assert!(max <= LOSSLESS_MAX_ABS, "{int4:?}: max abs diff {max}");
    }
}
