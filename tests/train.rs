//! Trainer tests on small synthetic tables: gradient check, SVD optimality, determinism,
//! and bad input.
#![cfg(feature = "train")]

mod common;

use std::path::Path;

use embslim::format::{self, Factors, Method};
use embslim::train::direction::{self, Params};
use embslim::train::{self, source::SourceTable, CompressOptions, TokenMetrics};
use embslim::Error;

/// Compress the table of `model` and return the factor-file bytes and token metrics.
fn compress_table(model: &Path, opts: &CompressOptions) -> embslim::Result<(Vec<u8>, TokenMetrics)> {
    let src = SourceTable::open(model)?;
    let c = train::compress(&src, opts, None, |_| {})?;
    let view = Factors { header: c.header.clone(), table: c.table.view(), row_of_token: None };
    let m = train::token_metrics(&src, &view, None)?;
    Ok((format::serialize(&c.header, &c.table.view(), None).unwrap(), m))
}
use ndarray::{Array2, ArrayView2};

/// Central differences in f32 have an error of about eps_f32 * |loss| / h; with h = 1e-3
/// and |loss| < 1 that is ~1e-4 of the largest gradient entry.
const GRAD_REL_TOL: f32 = 2e-3;
const FD_STEP: f32 = 1e-3;

#[test]
fn gradient_matches_finite_differences() {
    let (b, d, k) = (6, 10, 3);
    let x = Array2::from_shape_vec((b, d), common::noise(b * d, 11)).unwrap();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(5);
    let p0 = Params::random(d, k, &mut rng);
    for alpha in [1.0f32, 0.55, 0.1] {
        let mut grad = p0.clone();
        direction::loss_and_grad(&p0, x.view(), alpha, &mut grad);
        let analytic: Vec<f32> = flat(&grad);
        let scale = analytic.iter().fold(0f32, |m, g| m.max(g.abs()));
        assert!(scale > 0.0);
        for i in 0..analytic.len() {
            let loss_at = |delta: f32| {
                let mut p = p0.clone();
                *param_mut(&mut p, i) += delta;
                let mut g = p0.clone();
                direction::loss_and_grad(&p, x.view(), alpha, &mut g)
            };
            let fd = ((loss_at(FD_STEP) - loss_at(-FD_STEP)) / (2.0 * f64::from(FD_STEP))) as f32;
            assert!(
                (fd - analytic[i]).abs() <= GRAD_REL_TOL * scale,
                "alpha {alpha}, parameter {i}: analytic {} vs finite difference {fd} (scale {scale})",
                analytic[i]
            );
        }
    }
}

fn flat(p: &Params) -> Vec<f32> {
    p.a.iter().chain(&p.a_b).chain(p.w.iter()).chain(&p.w_b).copied().collect()
}

fn param_mut(p: &mut Params, mut i: usize) -> &mut f32 {
    let na = p.a.len();
    if i < na {
        return &mut p.a.as_slice_mut().unwrap()[i];
    }
    i -= na;
    if i < p.a_b.len() {
        return &mut p.a_b[i];
    }
    i -= p.a_b.len();
    let nw = p.w.len();
    if i < nw {
        return &mut p.w.as_slice_mut().unwrap()[i];
    }
    &mut p.w_b[i - nw]
}

#[test]
fn schedule_follows_the_paper() {
    assert_eq!(direction::alpha_at(0), 1.0);
    assert!((direction::alpha_at(10) - 0.55).abs() < 1e-6);
    assert!((direction::alpha_at(20) - 0.1).abs() < 1e-6);
    assert!((direction::alpha_at(29) - 0.1).abs() < 1e-6);
    assert_eq!(direction::lr_at(1e-3, 3), 1e-3);
    assert_eq!(direction::lr_at(1e-3, 4), 5e-4);
    assert_eq!(direction::lr_at(1e-3, 29), 1e-3 / 128.0);
}

fn opts(method: Method, rank: usize) -> CompressOptions {
    CompressOptions { method, rank: Some(rank), epochs: 3, ..CompressOptions::default() }
}

/// Squared Frobenius error of the stored table `bytes` against `x`.
fn stored_error(bytes: &[u8], x: &[f32], d: usize) -> f64 {
    let f = format::parse(bytes).unwrap();
    let mut row = vec![0f32; d];
    x.chunks_exact(d)
        .enumerate()
        .map(|(t, xr)| {
            f.decode_row(t, &mut row).unwrap();
            xr.iter().zip(&row).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>()
        })
        .sum()
}

#[test]
fn svd_reconstruction_is_optimal() {
    let tmp = tempfile::tempdir().unwrap();
    for (v, d, k, seed) in [(60, 12, 3, 1u64), (200, 16, 5, 2), (33, 8, 7, 3)] {
        let mut x = common::noise(v * d, seed);
        // give the spectrum some structure so the top-k subspace is well defined
        for (i, e) in x.iter_mut().enumerate() {
            *e *= 1.0 + 3.0 / (1 + i % d) as f32;
        }
        let model = tmp.path().join(format!("m{seed}"));
        common::write_checkpoint(&model, "bert.embeddings.word_embeddings.weight", v, d, &x);
        let (bytes, _) = compress_table(&model, &opts(Method::Svd, k)).unwrap();
        let err = stored_error(&bytes, &x, d);

        // Eckart-Young: the optimum is the sum of the trailing squared singular values,
        // computed here by faer's SVD of X itself (not the Gram route the trainer takes).
        let m = faer::Mat::<f64>::from_fn(v, d, |i, j| f64::from(x[i * d + j]));
        let s = m.thin_svd().unwrap();
        let sv = s.S().column_vector();
        let optimum: f64 = (k..d).map(|i| sv[i] * sv[i]).sum();
        assert!((err - optimum).abs() <= 1e-4 * optimum.max(1e-9), "v={v} d={d} k={k}: stored error {err} vs optimum {optimum}");

        // and no other rank-k table does better: the direction autoencoder, trained for
        // cosine, has a larger squared error
        let (bytes, _) = compress_table(&model, &opts(Method::Direction, k)).unwrap();
        assert!(stored_error(&bytes, &x, d) >= optimum * (1.0 - 1e-6));
    }
}

#[test]
fn training_is_deterministic_for_a_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let (v, d) = (300, 16);
    let model = tmp.path().join("m");
    common::write_checkpoint(&model, "embeddings.word_embeddings.weight", v, d, &common::noise(v * d, 9));
    let run = |seed: u64, _name: &str| {
        let o = CompressOptions { seed, ..opts(Method::Direction, 4) };
        let (bytes, r) = compress_table(&model, &o).unwrap();
        let f = format::parse(&bytes).unwrap();
        let mut rows = vec![0f32; v * d];
        for (t, row) in rows.chunks_exact_mut(d).enumerate() {
            f.decode_row(t, row).unwrap();
        }
        (rows, r.token_cos_mean)
    };
    let (a, ca) = run(1, "a");
    let (b, cb) = run(1, "b");
    let (c, _) = run(2, "c");
    assert_eq!(a, b, "same seed, different tables");
    assert_eq!(ca, cb);
    assert_ne!(a, c, "different seeds gave the same table");
}

#[test]
fn the_autoencoder_learns() {
    // On a table that is exactly rank k plus a bias, the autoencoder must reach a high
    // token cosine from a random start.
    let (v, d, k) = (512, 16, 4);
    let z = common::noise(v * k, 21);
    let w = common::noise(k * d, 22);
    let x = ndarray::Array2::from_shape_vec((v, k), z).unwrap().dot(&ndarray::Array2::from_shape_vec((k, d), w).unwrap());
    let cfg = direction::TrainConfig { rank: k, epochs: 12, batch: 32, lr: 1e-2, seed: 3, init_svd: None };
    let xs: Vec<f32> = x.iter().copied().collect();
    let (p, stats) = direction::train(ArrayView2::from_shape((v, d), &xs).unwrap(), &cfg, |_| {});
    let cos = direction::mean_cosine(&p, ArrayView2::from_shape((v, d), &xs).unwrap());
    assert!(cos > 0.99, "mean cosine {cos} after {} epochs", stats.len());
    assert!(stats.last().unwrap().loss < stats[0].loss);
}

#[test]
fn bad_models_are_clear_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let o = opts(Method::Svd, 2);
    let check = |model: &std::path::Path, opts: &CompressOptions, needle: &str| {
        let err = compress_table(model, opts).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(needle), "expected '{needle}' in: {msg}");
        msg
    };
    // missing tensor
    let m = tmp.path().join("missing");
    common::write_checkpoint(&m, "encoder.layer.0.weight", 10, 8, &common::noise(80, 1));
    let msg = check(&m, &o, "no tensor named 'embeddings.word_embeddings.weight'");
    assert!(msg.contains("model.safetensors"));
    // wrong rank (1-D)
    let m = tmp.path().join("rank1");
    std::fs::create_dir_all(&m).unwrap();
    let bytes: Vec<u8> = common::noise(8, 1).iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![8], &bytes).unwrap();
    std::fs::write(m.join("model.safetensors"), safetensors::serialize(vec![("embeddings.word_embeddings.weight", view)], &None).unwrap()).unwrap();
    check(&m, &o, "expected [vocab, dim]");
    // NaN and inf in the table
    for (bad, name) in [(f32::NAN, "nan"), (f32::INFINITY, "inf")] {
        let m = tmp.path().join(name);
        let mut x = common::noise(80, 1);
        x[42] = bad;
        common::write_checkpoint(&m, "embeddings.word_embeddings.weight", 10, 8, &x);
        for method in [Method::Svd, Method::Int8, Method::None] {
            let o = CompressOptions { method, rank: (method == Method::Svd).then_some(2), ..CompressOptions::default() };
            check(&m, &o, "non-finite value at row 5, column 2");
        }
    }
    // rank >= d
    let m = tmp.path().join("ok");
    common::write_checkpoint(&m, "embeddings.word_embeddings.weight", 10, 8, &common::noise(80, 1));
    assert!(matches!(
        compress_table(&m, &opts(Method::Svd, 8)),
        Err(Error::Usage(_))
    ));
    // unreadable / not a safetensors file
    let m = tmp.path().join("garbage");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("model.safetensors"), b"not a model").unwrap();
    check(&m, &o, "not a valid safetensors file");
    std::fs::create_dir_all(tmp.path().join("empty")).unwrap();
    check(&tmp.path().join("empty"), &o, "neither model.safetensors nor model.onnx");
    check(&tmp.path().join("nowhere"), &o, "nowhere: No such file");
    // a file name that does not exist
    check(&tmp.path().join("nowhere.onnx"), &o, "nowhere.onnx");
}

#[test]
fn onnx_source_is_found_by_walking_the_graph() {
    // the real L3 export: the table feeding the Gather on input_ids
    let src = SourceTable::open(&common::l3_onnx()).unwrap();
    assert_eq!((src.vocab, src.dim), (30522, 384));
    assert!(src.tensor.ends_with("embeddings.word_embeddings.weight"), "{}", src.tensor);
    // same table as the L6 checkpoint? No: different models, but the same vocabulary
    let hf = SourceTable::open(&common::minilm()).unwrap();
    assert_eq!(hf.vocab, src.vocab);
    let (mut a, mut b) = (vec![0f32; 384], vec![0f32; 384]);
    src.read_rows(1000, &mut a);
    hf.read_rows(1000, &mut b);
    assert!(a.iter().all(|v| v.is_finite()) && a != b);
}

#[test]
fn svd_init_starts_from_the_svd_solution() {
    let tmp = tempfile::tempdir().unwrap();
    let (v, d, k) = (400, 24, 5);
    let model = tmp.path().join("m");
    common::write_checkpoint(&model, "embeddings.word_embeddings.weight", v, d, &common::noise(v * d, 31));
    let (_, svd) = compress_table(&model, &opts(Method::Svd, k)).unwrap();
    // zero epochs is refused; one epoch at a tiny learning rate stays at the SVD point
    let o = CompressOptions { init_svd: true, epochs: 1, lr: 1e-9, ..opts(Method::Direction, k) };
    let (_, init) = compress_table(&model, &o).unwrap();
    assert!((init.token_cos_mean - svd.token_cos_mean).abs() < 1e-4, "svd {} vs svd-initialised autoencoder {}", svd.token_cos_mean, init.token_cos_mean);
    // and training from there improves the direction objective's cosine
    let o = CompressOptions { init_svd: true, epochs: 6, ..opts(Method::Direction, k) };
    let (_, trained) = compress_table(&model, &o).unwrap();
    assert!(trained.token_cos_mean > svd.token_cos_mean, "{} <= {}", trained.token_cos_mean, svd.token_cos_mean);
}
