//! # drivers: the virtio stack
//!
//! Transports, virtqueues and device drivers for virtio 1.2
//! (<https://docs.oasis-open.org/virtio/virtio/v1.2/virtio-v1.2.html>).
//! `no_std`; everything machine-specific is reached through [`hal::Hal`], so
//! the same code runs in the kernel and in host tests.
//!
//! ## No `unsafe` here
//!
//! This crate denies `unsafe_code`: a driver talks to the device only through
//! `hal`'s safe types, which hold the few `unsafe` blocks and their proofs:
//!
//! | what a driver needs | the safe `hal` type |
//! | --- | --- |
//! | request headers, status bytes, the packed ring, indirect tables | `hal::DmaRegion`: volatile, bounds-checked reads and writes of `hal::DmaValue` types (integers, arrays of them), valid for any bits the device writes |
//! | the split ring's hot path (descriptors, available and used rings, indices) | `hal::RingMemory` (`queue/split/memory.rs`): arrays of plain integers placed and checked once, then indexed modulo their power-of-two length with no bounds check per access |
//! | packet buffers the network stack reads and writes in place | `hal::DmaBufferPool` (`net/buffers.rs`): slices only of buffers the device does not hold, enforced by `&`/`&mut` |
//! | memory-mapped registers (BARs, virtio-mmio) | `hal::MmioRegion` |
//! | I/O ports (legacy virtio-pci, PCI mechanism #1 in `pci/config.rs`, I/O BARs in `transport/window.rs`) | `hal::PortRange`, vouched for once by its creator (`PortRange::new`, `unsafe`, in the kernel) or inside the Hal's `DEVICE_IO_PORTS` |
//!
//! Where `unsafe` is still allowed, and why (each is a scoped
//! `#[allow(unsafe_code)]` on the module in this file, and each is being
//! removed):
//!
//! - `blk` (`blk/loans.rs` and `blk/core.rs`, and `Send` and `Sync` in
//!   `blk/mod.rs`, the latter for the per-queue path): the blocking
//!   helpers (`read_blocks`, `write_blocks`, ...) share the caller's plain
//!   byte slices with the device (`Hal::share` / `Hal::unshare`), sound
//!   because the call holds their borrow until every request is over or the
//!   device is reset. The non-blocking API no longer needs it: reads and
//!   writes name registered `hal::DmaBuffer`s (`blk/buffers.rs`), so
//!   `submit_read` and `submit_write` are safe.
//!
//! Every remaining `unsafe` block carries a `// SAFETY:` comment (the
//! workspace denies `clippy::undocumented_unsafe_blocks` and
//! `unsafe_op_in_unsafe_fn`), and every public item is documented
//! (`missing_docs`).

#![no_std]
#![deny(unsafe_code)]

extern crate alloc;

// Only for the blocking helpers' sharing of caller slices (crate docs).
pub mod balloon;
#[allow(unsafe_code)]
pub mod blk;
pub mod console;
pub mod cpu_queues;
pub mod device;
pub mod features;
pub mod gpu;
pub mod init;
pub mod input;
pub mod irq;
pub mod mmio_discovery;
pub mod net;
pub mod p9;
pub mod pci;
pub mod polled_blk;
pub mod queue;
pub mod rng;
pub mod screen;
pub mod transport;
pub mod view;
