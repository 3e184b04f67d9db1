//! Factor-file parser and row decoder on arbitrary bytes (see ../harness.rs for the modes).
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::factor_file(data));
