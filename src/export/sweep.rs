//! Host-only: the frontier sweep. Compress a model over a grid of table methods, ratios
//! and body schemes, measure every bundle against the lossless one on labelled text
//! (sentence cosine, held-out accuracy of a head fitted on its embeddings, bytes, latency)
//! and mark the Pareto front of quality against bundle bytes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{compress_bundle, fit_head, BundleOptions, HeadOptions};
use crate::bundle::{Bundle, OpenOptions, FACTORS_FILE};
use crate::corpus::Labelled;
use crate::error::{Error, Result};
use crate::format::Method;
use crate::manifest::WeightScheme;
use crate::train::CompressOptions;

/// One bundle of the grid, measured (the `frontier.json` interface).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
    pub name: String,
    pub method: String,
    pub weights: String,
    /// Rank of a factorization; null otherwise.
    pub rank: Option<usize>,
    /// The `--ratio` asked for (svd, direction, mixed); null otherwise.
    pub ratio: Option<f64>,
    pub table_bytes: u64,
    /// Original f32 table bytes / stored table bytes.
    pub table_ratio: f64,
    pub bundle_bytes: u64,
    pub cos_mean: f64,
    pub cos_p5: f64,
    pub cos_min: f64,
    /// Held-out accuracy of a head fitted on this bundle's embeddings (retrained).
    pub accuracy: f64,
    /// Held-out accuracy of the head fitted on the lossless bundle's embeddings, applied
    /// to this bundle's (zero-shot: the deployed head is not retrained).
    pub accuracy_zero_shot: f64,
    /// Median latency of one document at the bundle's max length, batch 1.
    pub latency_ms: f64,
    /// No other point has at most its bytes and at least its mean cosine (one strictly).
    pub pareto: bool,
}

pub struct SweepOptions {
    pub methods: Vec<Method>,
    pub ratios: Vec<f64>,
    pub weights: Vec<WeightScheme>,
    pub max_length: usize,
    /// Corpus whose token counts order rows and allocate mixed bits (default: the data).
    pub corpus: Option<PathBuf>,
    pub threads: usize,
    pub batch: usize,
}

/// The grid: every method (ratio methods at every ratio) with every body scheme.
pub fn grid(opts: &SweepOptions) -> Vec<(Method, Option<f64>, WeightScheme)> {
    let mut g = Vec::new();
    for &w in &opts.weights {
        for &m in &opts.methods {
            match m {
                Method::None => {}
                Method::Svd | Method::Direction | Method::Mixed => g.extend(opts.ratios.iter().map(|&r| (m, Some(r), w))),
                Method::Int8 | Method::Int4 => g.push((m, None, w)),
            }
        }
    }
    g
}

/// Progress of a sweep: (points done, points in all, what is running).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, &str);

/// Run the sweep: bundles go to `out/<name>`, the reference to `out/reference`.
pub fn run(model: &Path, data: &Labelled, out: &Path, opts: &SweepOptions, progress: Progress<'_>) -> Result<Vec<Point>> {
    let grid = grid(opts);
    if grid.is_empty() {
        return Err(Error::Usage("the grid is empty: give --methods other than none".into()));
    }
    if opts.ratios.iter().any(|r| !(r.is_finite() && *r > 1.0)) {
        return Err(Error::Usage("every --ratios value must be above 1".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let texts: Vec<&str> = data.texts.iter().map(String::as_str).collect();
    let corpus = opts.corpus.clone();
    let bundle_opts = |method, ratio, weights| BundleOptions {
        table: CompressOptions { method, ratio, ..CompressOptions::default() },
        weights: Some(weights),
        max_length: Some(opts.max_length),
        corpus: corpus.clone(),
        tokenizer: None,
        calibration_docs: super::calibrate::CALIBRATION_DOCS,
    };
    let open = |dir: &Path| Bundle::open(dir, &OpenOptions { threads: opts.threads, ..OpenOptions::default() });

    progress(0, grid.len(), "reference (lossless)");
    let ref_dir = out.join("reference");
    compress_bundle(model, &ref_dir, &bundle_opts(Method::None, None, WeightScheme::F32), |_| {}, |_| {})?;
    let reference = open(&ref_dir)?.embed_many(&texts, opts.batch, |_| {})?;
    let head_opts = HeadOptions { test_fraction: 0.2, seed: 0, c: None, batch: opts.batch };
    let d = reference.first().map_or(0, |e| e.embedding.len());
    let flat_ref: Vec<f32> = reference.iter().flat_map(|e| e.embedding.iter().copied()).collect();
    let ref_head = fit_head(&flat_ref, d, data, &head_opts, |_, _, _| {})?.head;
    let (_, test_idx) = crate::train::head::stratified_split(&data.classes, data.labels.len(), head_opts.test_fraction, head_opts.seed);

    let mut points = Vec::with_capacity(grid.len());
    for (i, &(method, ratio, weights)) in grid.iter().enumerate() {
        let name = match ratio {
            Some(r) => format!("{}-r{r}-{}", method.name(), weights.name()),
            None => format!("{}-{}", method.name(), weights.name()),
        };
        progress(i, grid.len(), &name);
        let dir = out.join(&name);
        let report = compress_bundle(model, &dir, &bundle_opts(method, ratio, weights), |_| {}, |_| {})?;
        let bundle = open(&dir)?;
        let got = bundle.embed_many(&texts, opts.batch, |_| {})?;
        let cos = crate::pool::cosine_stats(got.iter().zip(&reference).map(|(a, b)| (&a.embedding[..], &b.embedding[..])));
        let flat: Vec<f32> = got.iter().flat_map(|e| e.embedding.iter().copied()).collect();
        let head = fit_head(&flat, d, data, &head_opts, |_, _, _| {})?;
        let zero_shot = test_idx.iter().filter(|&&i| crate::train::head::predict(&ref_head.weight, &ref_head.bias, &got[i].embedding, d) == data.classes[i]).count();
        let table_bytes = bundle.manifest.files.get(FACTORS_FILE).map(|f| f.bytes).unwrap_or(0);
        points.push(Point {
            name,
            method: method.name().into(),
            weights: weights.name().into(),
            rank: report.rank,
            ratio,
            table_bytes,
            table_ratio: (report.vocab * report.dim * 4) as f64 / table_bytes.max(1) as f64,
            bundle_bytes: report.bundle_bytes.unwrap_or(0),
            cos_mean: cos.mean,
            cos_p5: cos.p5,
            cos_min: cos.min,
            accuracy: head.accuracy,
            accuracy_zero_shot: zero_shot as f64 / test_idx.len().max(1) as f64,
            latency_ms: latency_ms(&bundle, &texts)?,
            pareto: false,
        });
    }
    progress(grid.len(), grid.len(), "done");
    mark_pareto(&mut points);
    Ok(points)
}

/// Median over up to 10 documents, one at a time, after one warm-up run.
fn latency_ms(bundle: &Bundle, texts: &[&str]) -> Result<f64> {
    let sample = &texts[..texts.len().min(10)];
    bundle.embed_batch(&sample[..1])?;
    let mut ms = Vec::with_capacity(sample.len());
    for t in sample {
        let t0 = Instant::now();
        bundle.embed_batch(&[t])?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

/// Mark the points no other point dominates (fewer or equal bytes and higher or equal
/// mean cosine, one of them strictly).
pub fn mark_pareto(points: &mut [Point]) {
    let dominated: Vec<bool> = points
        .iter()
        .map(|p| {
            points.iter().any(|q| {
                q.bundle_bytes <= p.bundle_bytes && q.cos_mean >= p.cos_mean && (q.bundle_bytes < p.bundle_bytes || q.cos_mean > p.cos_mean)
            })
        })
        .collect();
    for (p, d) in points.iter_mut().zip(dominated) {
        p.pareto = !d;
    }
}

/// A scatter plot of mean sentence cosine against bundle megabytes, the Pareto front joined
/// and labelled, as a self-contained SVG. Both axes are logarithmic; the vertical one shows
/// 1 - cosine (from 1e-6 at the top), because the bundles worth deploying differ in the
/// third to sixth decimal while factorizations reach down to 0.1.
pub fn svg(points: &[Point], title: &str) -> String {
    let (w, h, l, r, t, b) = (900.0, 560.0, 70.0, 30.0, 40.0, 60.0);
    let mb: Vec<f64> = points.iter().map(|p| p.bundle_bytes as f64 / 1e6).collect();
    let (x0, x1) = mb.iter().fold((f64::INFINITY, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let (lx0, lx1) = ((x0 * 0.9).max(1e-3).log10(), (x1 * 1.1).max(1e-3).log10());
    // vertical: e = log10(1 - cos), from -6 (top) down to the worst point's decade
    let err = |c: f64| (1.0 - c).clamp(1e-6, 2.0).log10();
    let (e_top, e_bottom) = (-6.0, points.iter().fold(-2f64, |m, p| m.max(err(p.cos_mean))).ceil().min(1.0));
    let sx = |x: f64| l + (x.max(1e-3).log10() - lx0) / (lx1 - lx0).max(1e-9) * (w - l - r);
    let sy = |c: f64| t + (err(c) - e_top) / (e_bottom - e_top) * (h - t - b);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        w / 2.0,
        escape(title)
    );
    // axes with ticks
    s += &format!("<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n", h - b, w - r, h - b);
    s += &format!("<line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>\n", h - b);
    for e in (lx0.floor() as i32)..=(lx1.ceil() as i32) {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(e);
            if v.log10() >= lx0 && v.log10() <= lx1 {
                let x = sx(v);
                s += &format!("<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{v}</text>\n", t, h - b, h - b + 16.0);
            }
        }
    }
    for e in (e_top as i32)..=(e_bottom as i32) {
        let c = 1.0 - 10f64.powi(e);
        let y = sy(c);
        let label = if e >= 0 { "0".to_string() } else { format!("{:.*}", (-e) as usize, c) };
        s += &format!("<line x1=\"{l}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>\n", w - r, l - 6.0, y + 4.0);
    }
    s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">bundle size (MB, log scale)</text>\n", (l + w - r) / 2.0, h - 18.0);
    s += &format!("<text transform=\"translate(18 {}) rotate(-90)\" text-anchor=\"middle\">mean sentence cosine vs lossless (log of 1 - cos)</text>\n", (t + h - b) / 2.0);
    // the front, by size
    let mut front: Vec<usize> = (0..points.len()).filter(|&i| points[i].pareto).collect();
    front.sort_by(|&a, &b| mb[a].total_cmp(&mb[b]));
    let path: Vec<String> = front.iter().map(|&i| format!("{:.1},{:.1}", sx(mb[i]), sy(points[i].cos_mean))).collect();
    s += &format!("<polyline points=\"{}\" fill=\"none\" stroke=\"#c0392b\" stroke-width=\"1.5\"/>\n", path.join(" "));
    for (i, p) in points.iter().enumerate() {
        let (x, y) = (sx(mb[i]), sy(p.cos_mean));
        let color = match p.weights.as_str() {
            "f32" => "#2c3e50",
            "f16" => "#8e44ad",
            "int8" => "#2980b9",
            _ => "#27ae60",
        };
        s += &format!("<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{}\" fill=\"{color}\"><title>{}</title></circle>\n", if p.pareto { 5 } else { 3 }, escape(&p.name));
        if p.pareto {
            s += &format!("<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#c0392b\">{}</text>\n", x + 7.0, y - 6.0, escape(&p.name));
        }
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">body: <tspan fill=\"#2c3e50\">f32</tspan> <tspan fill=\"#8e44ad\">f16</tspan> <tspan fill=\"#2980b9\">int8</tspan> <tspan fill=\"#27ae60\">int4</tspan>; red: Pareto front</text>\n</svg>\n",
        w - r,
        h - b - 8.0
    );
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
