//! libFuzzer entry for `harness::jpeg_decode` (see `fuzz/harness.rs` for what it checks).
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(init: harness::quiet_caught_panics(), |data: &[u8]| {
    harness::jpeg_decode(data)
});
