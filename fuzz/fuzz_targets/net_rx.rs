//! libFuzzer shim for the `net_rx` target; the target itself is
//! `tests::fuzz::net_rx` (tests/src/fuzz/), which `cargo test` replays on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tests::fuzz::net_rx(data));
