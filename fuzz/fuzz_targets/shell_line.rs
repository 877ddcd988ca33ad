//! libFuzzer shim for the `shell_line` target; the target itself is
//! `tests::fuzz::shell_line` (tests/src/fuzz/), which `cargo test` replays on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tests::fuzz::shell_line(data));
