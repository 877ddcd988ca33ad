//! libFuzzer shim for the `http_request` target; the target itself is
//! `tests::fuzz::http_request` (tests/src/fuzz/), which `cargo test` replays on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tests::fuzz::http_request(data));
