//! libFuzzer shim for the `split_ring` target; the target itself is
//! `tests::fuzz::split_ring` (tests/src/fuzz/), which `cargo test` replays on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tests::fuzz::split_ring(data));
