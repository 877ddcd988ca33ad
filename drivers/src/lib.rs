//! # drivers: the virtio stack
//!
//! Transports, virtqueues and device drivers for virtio 1.2
//! (<https://docs.oasis-open.org/virtio/virtio/v1.2/virtio-v1.2.html>).
//! `no_std`; everything machine-specific is reached through [`hal::Hal`], so
//! the same code runs in the kernel and in host tests.

#![no_std]
#![deny(unsafe_code)]

extern crate alloc;

// Being removed (branch `blk`: a typed DMA buffer for data); whoever merges
// last deletes this allow.
#[allow(unsafe_code)]
pub mod blk;
pub mod console;
pub mod device;
pub mod features;
pub mod init;
pub mod irq;
pub mod mmio_discovery;
pub mod net;
pub mod pci;
// Being removed (branch `rings`: ring memory through a hal view); whoever
// merges last deletes this allow.
#[allow(unsafe_code)]
pub mod queue;
pub mod transport;
