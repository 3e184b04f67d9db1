//! `embslim sweep` end to end on the tiny test model and real BBC text: every grid point
//! is built and measured, the Pareto flags follow their definition, the files are written.
#![cfg(feature = "train")]

mod common;

use serde_json::Value;

#[test]
fn sweep_writes_the_frontier_with_a_consistent_pareto_front() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sweep");
    let res = common::embslim()
        .args(["sweep", "--model"])
        .arg(common::tiny_bert(32))
        .arg("--data")
        .arg(common::small_tsv())
        .arg("--out")
        .arg(&out)
        .args(["--methods", "none,svd,int4,mixed", "--ratios", "2,4", "--weights", "f32,int8", "--max-length", "32", "--json"])
        .output()
        .unwrap();
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let points: Vec<Value> = serde_json::from_slice(&std::fs::read(out.join("frontier.json")).unwrap()).unwrap();
    // (svd x 2 ratios + int4 + mixed x 2 ratios) x 2 body schemes; none is the reference
    assert_eq!(points.len(), 10);
    assert_eq!(String::from_utf8_lossy(&res.stdout).lines().count(), 10, "one JSON line per point");
    for p in &points {
        for k in ["method", "weights", "table_bytes", "table_ratio", "bundle_bytes", "cos_mean", "cos_p5", "accuracy", "accuracy_zero_shot", "latency_ms", "pareto"] {
            assert!(!p[k].is_null(), "{k} missing in {p}");
        }
        assert!(p.get("rank").is_some());
        let bundle = out.join(p["name"].as_str().unwrap());
        let on_disk: u64 = std::fs::read_dir(&bundle).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert_eq!(p["bundle_bytes"].as_u64().unwrap(), on_disk, "{}", bundle.display());
        let cos = p["cos_mean"].as_f64().unwrap();
        assert!(cos > 0.0 && cos <= 1.0 + 1e-6, "{p}");
    }
    let key = |p: &Value| (p["bundle_bytes"].as_u64().unwrap(), p["cos_mean"].as_f64().unwrap());
    for p in &points {
        let (b, c) = key(p);
        let dominated = points.iter().any(|q| {
            let (qb, qc) = key(q);
            qb <= b && qc >= c && (qb < b || qc > c)
        });
        assert_eq!(p["pareto"].as_bool().unwrap(), !dominated, "{p}");
    }
    assert!(points.iter().any(|p| p["pareto"].as_bool().unwrap()));
    let svg = std::fs::read_to_string(out.join("frontier.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<circle").count(), points.len());
}
