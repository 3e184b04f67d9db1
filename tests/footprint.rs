//! `embslim footprint` against an outside measurement: its peak figures must agree with
//! /usr/bin/time -v on the same run.

mod common;

/// Both read the kernel's peak RSS of the same process (VmHWM vs ru_maxrss); they differ
/// only by what happens after footprint reads it (printing the report), which is small.
const PEAK_AGREEMENT: f64 = 0.10;

#[test]
fn peak_rss_agrees_with_usr_bin_time() {
    if !std::path::Path::new("/usr/bin/time").exists() {
        eprintln!("skipped: /usr/bin/time is not installed (apt-get install time)");
        return;
    }
    if std::env::var("CROSS_RUNNER").map(|r| !r.trim().is_empty()).unwrap_or(false) {
        eprintln!("skipped under emulation: qemu's own memory is part of the process");
        return;
    }
    let bundle = common::head_bundle();
    let out = std::process::Command::new("/usr/bin/time")
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_embslim"))
        .args(["footprint", bundle.to_str().unwrap(), "--runs", "3", "--docs", "5", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours = report["peak_rss_bytes"].as_f64().expect("VmHWM is known on Linux");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let kb: f64 = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let theirs = kb * 1024.0;
    eprintln!("peak RSS: footprint {:.1} MB, /usr/bin/time {:.1} MB; peak heap {:.1} MB", ours / 1e6, theirs / 1e6, report["peak_heap_bytes"].as_f64().unwrap() / 1e6);
    assert!((ours - theirs).abs() <= PEAK_AGREEMENT * theirs, "footprint {ours} vs /usr/bin/time {theirs}");
    // the heap is part of the resident set
    assert!(report["peak_heap_bytes"].as_f64().unwrap() <= theirs * 1.05);
    for key in ["factor_file_bytes", "factor_resident_bytes", "bundle_bytes", "binary_bytes", "binary_resident_bytes", "load_ms", "first_result_ms"] {
        assert!(report[key].is_number(), "{key} missing");
    }
    // the binary's resident pages: some, at most the file (its zero-filled .bss aside: 1 MB)
    let (resident, binary) = (report["binary_resident_bytes"].as_f64().unwrap(), report["binary_bytes"].as_f64().unwrap());
    assert!(resident > 0.0 && resident <= binary + 1e6, "binary resident {resident} of {binary}");
    for len in ["16", "64", "128"] {
        assert!(report["latency_ms"][len]["p50"].is_number(), "latency at {len}");
    }
}
