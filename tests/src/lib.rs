//! # tests: the host side of the project's tests
//!
//! - [`host_hal`]: a [`hal::Hal`] for `cargo test`, whose device addresses
//!   deliberately differ from CPU pointers and whose shared buffers are
//!   bounce-copied and poisoned.
//!
//! - [`fuzz`]: the fuzz targets, plain functions that `cargo test` replays
//!   over the committed corpus and the cargo-fuzz crate in `fuzz/` runs.
//!
//! The QEMU scenarios that `x.py test` runs live in `tests/qemu/`.

// The kernel's line editor (`fuzz::shell`) is compiled here as it is, and
// names `alloc::` as no_std code does.
extern crate alloc;

pub mod balloon_model;
pub mod blk_model;
pub mod console_model;
pub mod fuzz;
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
