//! libFuzzer shim for the `pci_caps` target; the target itself is
//! `tests::fuzz::pci_caps` (tests/src/fuzz/), which `cargo test` replays on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tests::fuzz::pci_caps(data));
