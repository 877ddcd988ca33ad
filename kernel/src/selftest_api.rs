//! The shape of an in-kernel self-test (see `selftest.rs` for the runner).
//! Part of the `selftest` feature, like every module that names it.
//!
//! Each subsystem keeps its self-tests in a module of their own beside its
//! code, declared `#[cfg(feature = "selftest")] mod selftests;`, and exposes
//! a function returning a `Vec<SelfTest>` (the list may depend on what was
//! found at boot); `selftest::run_all` calls them in order when the command
//! line says `mode=selftest`.

use alloc::string::String;

/// One named in-kernel test. `run` returns `Err(reason)` on failure.
#[derive(Clone, Copy)]
pub struct SelfTest {
    pub name: &'static str,
    pub run: fn() -> Result<(), String>,
}
