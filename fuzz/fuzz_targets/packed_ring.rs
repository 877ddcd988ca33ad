//! libFuzzer shim for the `packed_ring` target; the target itself is
//! `tests::fuzz::packed_ring` (tests/src/fuzz/), which `cargo test` replays on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tests::fuzz::packed_ring(data));
