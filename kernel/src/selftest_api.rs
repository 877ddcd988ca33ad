//! The shape of an in-kernel self-test (see `selftest.rs` for the runner).
//!
//! Each subsystem exposes `pub const SELFTESTS: &[SelfTest]` (or a function
//! returning a `Vec<SelfTest>` when the list depends on what was found at boot),
//! and the runner calls them in order when the command line says
//! `mode=selftest`.

use alloc::string::String;

/// One named in-kernel test. `run` returns `Err(reason)` on failure.
#[derive(Clone, Copy)]
pub struct SelfTest {
    pub name: &'static str,
    pub run: fn() -> Result<(), String>,
}
