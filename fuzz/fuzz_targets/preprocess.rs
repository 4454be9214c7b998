//! libFuzzer entry for `harness::preprocess` (see `fuzz/harness.rs` for what it checks).
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(init: harness::quiet_caught_panics(), |data: &[u8]| {
    harness::preprocess(data)
});
