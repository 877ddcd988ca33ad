//! # tests: the host side of the project's tests
//!
//! - [`host_hal`]: a [`hal::Hal`] for `cargo test`, whose device addresses
//!   deliberately differ from CPU pointers and whose shared buffers are
//!   bounce-copied and poisoned.
//!
//! The QEMU scenarios that `x.py test` runs live in `tests/qemu/`.

pub mod balloon_model;
pub mod blk_model;
pub mod console_model;
pub mod host_hal;
pub mod hostile;
pub mod hostile_packed;
pub mod json_value;
pub mod log_capture;
pub mod models;
pub mod net_model;
pub mod p9_model;
pub mod packed_model;
pub mod rng_model;
pub mod screen_models;
pub mod vq_model;
