//! Code order for the device binary (cross/build.sh; see cross/README.md, "Code order").
//!
//! When `EMBSLIM_CODE_ORDER` names a list of symbols (cross/order/TARGET.txt, written by
//! tools/code_order.py), the `embslim` binary is linked with lld in that order: the
//! functions inference runs first, then those only the load runs, then the rest. The
//! kernel maps 64 KB of a binary around every code page fault, so functions scattered
//! over the text kept nearly all of it resident (x86_64: 9.2 of 10.8 MB after 100
//! documents; 2.8 MB in this order). Unset (tests, `cargo build`), nothing changes.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=EMBSLIM_CODE_ORDER");
    let Some(order) = env::var_os("EMBSLIM_CODE_ORDER") else { return };
    let order = PathBuf::from(order);
    // relink when the list changes, not only when the variable does
    println!("cargo:rerun-if-changed={}", order.display());
    // lld: only it reads a symbol ordering file. rustc already links x86_64 Linux with its
    // own copy; for the other targets the C compiler driver is pointed at the same copy.
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let host = env::var("HOST").expect("cargo sets HOST for build scripts");
    let sysroot = Command::new(&rustc).args(["--print", "sysroot"]).output().expect("run rustc --print sysroot");
    let gcc_ld = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim()).join("lib/rustlib").join(host).join("bin/gcc-ld");
    for arg in [
        "-fuse-ld=lld".to_string(),
        format!("-B{}", gcc_ld.display()),
        format!("-Wl,--symbol-ordering-file={}", order.display()),
        // the list names functions of every build it was made from; missing ones are normal
        "-Wl,--no-warn-symbol-ordering".to_string(),
    ] {
        println!("cargo:rustc-link-arg-bin=embslim={arg}");
    }
}
