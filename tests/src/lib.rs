//! # tests: the host side of the project's tests
//!
//! - [`host_hal`]: a [`hal::Hal`] for `cargo test`, whose device addresses
//!   deliberately differ from CPU pointers and whose shared buffers are
//!   bounce-copied and poisoned.
//!
//! The QEMU scenarios that `x.py test` runs live in `tests/qemu/`.

pub mod host_hal;
pub mod hostile;
pub mod models;
pub mod vq_model;
