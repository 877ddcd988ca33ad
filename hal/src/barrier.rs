//! # Barriers for memory a real device shares (virtio 1.2 §6.1, VIRTIO_F_ORDER_PLATFORM)
//!
//! A driver orders its ring accesses against the device's with memory
//! barriers: the descriptors before the index that publishes them, the
//! index before the entry it covers, a store before a load of the other
//! side's suppression state. For a device implemented in software on
//! another CPU (QEMU), the CPU's SMP barriers are enough, and that is what
//! the queue code uses by default (`core::sync::atomic::fence`). With
//! VIRTIO_F_ORDER_PLATFORM the device is hardware (or behaves like it) and
//! "the driver needs to use memory barriers suitable for devices described
//! by the platform" (§6.1). These are those barriers, for the machine this
//! crate runs on:
//!
//! | barrier | x86_64 | elsewhere |
//! |---|---|---|
//! | [`device_write`] (stores before later stores, as the device sees them) | `sfence` | `fence(SeqCst)` |
//! | [`device_read`] (loads before later loads) | `lfence` | `fence(SeqCst)` |
//! | [`device_full`] (stores before later loads) | `mfence` | `fence(SeqCst)` |
//!
//! (Linux's `wmb`/`rmb`/`mb`, the barriers its virtio rings use when a
//! device is not known to be a software one.) Each also orders the
//! compiler, like the SMP fence it goes with.

use core::sync::atomic::{fence, Ordering};

/// Orders earlier stores to device-visible memory before later ones, as a
/// device doing DMA sees them.
#[inline(always)]
pub fn device_write() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` only orders stores; it touches no memory or register.
    unsafe {
        core::arch::asm!("sfence", options(nostack, preserves_flags));
    }
    #[cfg(not(target_arch = "x86_64"))]
    fence(Ordering::SeqCst);
    fence(Ordering::Release);
}

/// Orders earlier loads from device-visible memory before later ones.
#[inline(always)]
pub fn device_read() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `lfence` only orders loads; it touches no memory or register.
    unsafe {
        core::arch::asm!("lfence", options(nostack, preserves_flags));
    }
    #[cfg(not(target_arch = "x86_64"))]
    fence(Ordering::SeqCst);
    fence(Ordering::Acquire);
}

/// Orders every earlier access to device-visible memory before every later one.
#[inline(always)]
pub fn device_full() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `mfence` only orders memory accesses; it touches no memory or register.
    unsafe {
        core::arch::asm!("mfence", options(nostack, preserves_flags));
    }
    fence(Ordering::SeqCst);
}
