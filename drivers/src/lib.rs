//! # drivers: the virtio stack
//!
//! Transports, virtqueues and device drivers for virtio 1.2
//! (<https://docs.oasis-open.org/virtio/virtio/v1.2/virtio-v1.2.html>).
//! `no_std`; everything machine-specific is reached through [`hal::Hal`], so
//! the same code runs in the kernel and in host tests.

#![no_std]

extern crate alloc;

pub mod blk;
pub mod console;
pub mod device;
pub mod features;
pub mod init;
pub mod irq;
pub mod mmio_discovery;
pub mod net;
pub mod pci;
pub mod queue;
pub mod transport;
