//! # The peer stack: the `virtio-drivers` crate, for side-by-side benchmarks
//!
//! `x.py bench` compares our drivers with an independent implementation of
//! the same specification, in the same boot, on the same device, host,
//! QEMU and backend: the rcore-os `virtio-drivers` crate (crates.io,
//! version 0.13). This module is all the glue it needs:
//!
//! - [`hal`]: its `Hal` trait on our frame allocator, identity mapping and
//!   `memory::map_mmio` (virtio 1.2 §2.7: the rings live in memory both the
//!   driver and the device reach);
//! - [`pci`]: its modern virtio-pci transport (§4.1) on a PCI function our
//!   enumeration already found and placed, through our configuration access;
//! - [`bench`]: the block workloads of `crate::block::bench`, run on its
//!   `VirtIOBlk` after our driver has reset the device;
//! - [`net`]: the frames of `crate::net::bench` between the same two cards,
//!   on its `VirtIONetRaw`;
//! - [`console`]: the byte stream of `crate::bench`'s console section, on
//!   its `VirtIOConsole` (port 0, without MULTIPORT);
//! - [`counted`]: a transport wrapper that counts the peer's notifications.
//!
//! Every hand-over goes the same way: our driver resets the device, the
//! peer brings it up on its own rings and measures, dropping the peer
//! resets the device again, and our driver brings it back up.
//!
//! The peer is used only in `mode=bench` and built only with the cargo
//! feature `bench` (which makes `virtio-drivers` and `zerocopy` dependencies
//! at all): the kernel `./x.py run` boots does not link it, and nothing else
//! in the kernel depends on it (`./x.py test` checks the production ELF with
//! `nm`).

pub mod bench;
pub mod console;
pub mod counted;
pub mod hal;
pub mod net;
pub mod pci;

/// How often each workload runs (`bench.repeat=`, 1..=20, default 1), so
/// that `x.py bench` can report min / median / max.
pub fn repeat_count() -> usize {
    crate::cmdline::get("bench.repeat")
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|n| (1..=20).contains(n))
        .unwrap_or(1)
}
