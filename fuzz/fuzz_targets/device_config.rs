//! libFuzzer shim for the `device_config` target; the target itself is
//! `tests::fuzz::device_config` (tests/src/fuzz/), which `cargo test` replays on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tests::fuzz::device_config(data));
