//! libFuzzer shim for the `console_control` target; the target itself is
//! `tests::fuzz::console_control` (tests/src/fuzz/), which `cargo test` replays on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tests::fuzz::console_control(data));
