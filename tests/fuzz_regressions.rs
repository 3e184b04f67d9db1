//! Replays the fuzz targets' saved inputs (fuzz/regressions/<target>/: inputs that once
//! crashed; fuzz/seeds/<target>/: the seed corpus) exactly as the fuzzer ran them, through
//! the same harness (fuzz/harness.rs). A panic fails the test.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["regressions", "seeds"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
        files.sort();
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            let res = std::panic::catch_unwind(|| run(&bytes));
            assert!(res.is_ok(), "{} panics {target}", f.display());
            n += 1;
        }
    }
    n
}

#[test]
fn saved_factor_file_inputs_do_not_panic() {
    let n = replay("factor_file", harness::factor_file);
    assert!(n > 0, "no seeds found");
}

#[test]
fn saved_manifest_inputs_do_not_panic() {
    let n = replay("manifest", harness::manifest);
    assert!(n > 0, "no seeds found");
}
