//! Writes are atomic: `compress` and `train-head` killed (SIGKILL) at many moments, before
//! and while they write, leave the output directory as either the complete old bundle or
//! the complete new one (it opens, every file matches the manifest, nothing else is
//! there), and the staging directories of killed runs are removed by the next run.
//!
//! Kill points: fractions of an uninterrupted run's duration, and (most of them) delays
//! after the run's staging directory appears, i.e. while bundle files are being written,
//! synced and swapped in.
#![cfg(feature = "train")] // compress and train-head are host-only

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{compress_tiny, embslim, tiny_bert};
use embslim::{Bundle, OpenOptions};

#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// This long after the start.
    After(Duration),
    /// This long after the staging directory of the run appears beside the output.
    AfterStaging(Duration),
}

/// Delays after the staging directory appears, in microseconds.
const STAGING_DELAYS_US: [u64; 18] = [0, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 12000, 20000, 35000, 60000];

/// Leftovers of a run beside `out`: `.NAME.staging-PID` directories, `.NAME.tmp-PID` files.
fn leftovers(out: &Path) -> Vec<PathBuf> {
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    let mut v: Vec<PathBuf> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let f = p.file_name().unwrap().to_string_lossy();
            f.starts_with(&format!(".{name}.staging-")) || f.starts_with(&format!(".{name}.tmp-")) || f.starts_with(&format!(".{name}.probe-"))
        })
        .collect();
    v.sort();
    v
}

/// Run `cmd`, killing it at `at`; true when it was killed before it finished.
fn run_and_kill(mut cmd: Command, out: &Path, at: KillAt) -> bool {
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let staging = out.with_file_name(format!(".{}.staging-{}", out.file_name().unwrap().to_string_lossy(), child.id()));
    let deadline = match at {
        KillAt::After(d) => Some(start + d),
        KillAt::AfterStaging(_) => None,
    };
    let mut deadline = deadline;
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let now = Instant::now();
        if deadline.is_none() && staging.exists() {
            if let KillAt::AfterStaging(d) = at {
                deadline = Some(now + d);
            }
        }
        if deadline.is_some_and(|t| now >= t) {
            // SIGKILL: no destructor, no cleanup runs in the child
            let killed = child.kill().is_ok();
            let status = child.wait().unwrap();
            return killed && !status.success();
        }
        assert!(now - start < Duration::from_secs(120), "run did not finish");
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// The output must be a complete bundle: it opens (sizes and hashes of every file match
/// the manifest) and holds nothing but the manifest and the files it lists.
fn check_complete(out: &Path) -> Result<embslim::manifest::Manifest, String> {
    let b = Bundle::open(out, &OpenOptions::default()).map_err(|e| format!("does not open: {e}"))?;
    for e in std::fs::read_dir(out).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name != "manifest.json" && !b.manifest.files.contains_key(&name) {
            return Err(format!("holds {name}, which the manifest does not list"));
        }
    }
    Ok(b.manifest.clone())
}

/// The kill points for a command whose uninterrupted run takes `full`.
fn kill_points(full: Duration) -> Vec<KillAt> {
    let mut v: Vec<KillAt> = [0.02, 0.1, 0.25, 0.4, 0.55, 0.7, 0.8, 0.9, 0.95, 1.0].iter().map(|f| KillAt::After(full.mul_f64(*f))).collect();
    v.extend(STAGING_DELAYS_US.iter().map(|us| KillAt::AfterStaging(Duration::from_micros(*us))));
    v
}

struct Tally {
    kept_old: usize,
    got_new: usize,
    finished: usize,
    /// Kills after which a staging directory or temporary file was left behind.
    left_behind: usize,
}

#[test]
fn a_killed_compress_leaves_the_old_bundle_or_the_new_one() {
    let model = tiny_bert(32);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bundle");
    compress_tiny(&model, &out, "int8");
    let compress = |method: &str| {
        let mut c = embslim();
        c.args(["compress", "--model"]).arg(&model).arg("--out").arg(&out).args(["--method", method, "--corpus", "/nonexistent"]);
        c
    };
    // an uninterrupted run, for its duration
    let t0 = Instant::now();
    assert!(compress("int4").status().unwrap().success());
    let full = t0.elapsed();

    let points = kill_points(full);
    let mut tally = Tally { kept_old: 0, got_new: 0, finished: 0, left_behind: 0 };
    let mut failures = Vec::new();
    for (i, at) in points.iter().enumerate() {
        let old = std::fs::read(out.join("manifest.json")).unwrap();
        let old_table = check_complete(&out).unwrap().table;
        // always replace the bundle by one of the other method, so old and new differ
        let new = if old_table == embslim::format::Method::Int4 { "int8" } else { "int4" };
        let killed = run_and_kill(compress(new), &out, *at);
        match check_complete(&out) {
            Err(e) => failures.push(format!("kill point {i} ({at:?}): output {e}")),
            Ok(m) => {
                let now = std::fs::read(out.join("manifest.json")).unwrap();
                if now == old {
                    tally.kept_old += 1;
                } else if m.table.name() == new {
                    tally.got_new += 1;
                } else {
                    failures.push(format!("kill point {i} ({at:?}): a bundle that is neither the old nor the new one"));
                }
            }
        }
        if !killed {
            tally.finished += 1;
        }
        if !leftovers(&out).is_empty() {
            tally.left_behind += 1;
        }
    }
    let stale = leftovers(&out);
    eprintln!(
        "compress ({full:?} uninterrupted): {} kill points, {} finished before the kill; old bundle kept {}, new bundle {}; {} kills left a staging directory, {} left before the next complete run",
        points.len(),
        tally.finished,
        tally.kept_old,
        tally.got_new,
        tally.left_behind,
        stale.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(tally.kept_old > 0 && tally.got_new > 0, "the kill points should catch both outcomes");

    // the next complete run removes the leftovers of the killed ones
    assert!(compress("int4").status().unwrap().success());
    check_complete(&out).unwrap();
    assert_eq!(leftovers(&out), Vec::<PathBuf>::new(), "leftovers of killed runs survive the next run");
}

#[test]
fn a_killed_train_head_leaves_the_old_bundle_intact() {
    let model = tiny_bert(32);
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    compress_tiny(&model, &pristine, "int4");
    let data = tmp.path().join("data.tsv");
    let mut tsv = String::new();
    for i in 0..12 {
        tsv.push_str(&format!("sport\tthe team won the match in the final minute {i}\n"));
        tsv.push_str(&format!("business\tshares fell as the bank reported lower profits {i}\n"));
    }
    std::fs::write(&data, tsv).unwrap();
    let out = tmp.path().join("bundle");
    let reset = || {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir(&out).unwrap();
        for e in std::fs::read_dir(&pristine).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, out.join(p.file_name().unwrap())).unwrap();
        }
    };
    let train = || {
        let mut c = embslim();
        c.arg("train-head").arg(&out).arg("--data").arg(&data).args(["--c", "1", "--test-fraction", "0.25"]);
        c
    };
    reset();
    let t0 = Instant::now();
    assert!(train().status().unwrap().success());
    let full = t0.elapsed();
    assert!(check_complete(&out).unwrap().labels.is_some());

    let points = kill_points(full);
    let mut tally = Tally { kept_old: 0, got_new: 0, finished: 0, left_behind: 0 };
    let mut failures = Vec::new();
    for (i, at) in points.iter().enumerate() {
        reset();
        let old = std::fs::read(out.join("manifest.json")).unwrap();
        let killed = run_and_kill(train(), &out, *at);
        match check_complete(&out) {
            Err(e) => failures.push(format!("kill point {i} ({at:?}): output {e}")),
            Ok(m) => {
                if std::fs::read(out.join("manifest.json")).unwrap() == old {
                    tally.kept_old += 1;
                } else if m.labels.as_deref() == Some(&["business".to_string(), "sport".to_string()][..]) {
                    tally.got_new += 1;
                } else {
                    failures.push(format!("kill point {i} ({at:?}): a bundle that is neither the old nor the new one"));
                }
            }
        }
        if !killed {
            tally.finished += 1;
        }
        if !leftovers(&out).is_empty() {
            tally.left_behind += 1;
        }
    }
    eprintln!(
        "train-head ({full:?} uninterrupted): {} kill points, {} finished before the kill; old bundle kept {}, new bundle {}; {} kills left a staging directory, {} left before the next complete run",
        points.len(),
        tally.finished,
        tally.kept_old,
        tally.got_new,
        tally.left_behind,
        leftovers(&out).len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(tally.kept_old > 0 && tally.got_new > 0, "the kill points should catch both outcomes");
    assert!(train().status().unwrap().success());
    check_complete(&out).unwrap();
    assert_eq!(leftovers(&out), Vec::<PathBuf>::new(), "leftovers of killed runs survive the next run");
}
