//! # How ring accesses are ordered against the device (virtio 1.2 §2.7.13.3, §2.7.14, §6.1)
//!
//! Three moments of a ring need a barrier, in both layouts:
//!
//! - **before publishing**: the descriptors (and ring slots) a request uses
//!   must be visible before the index or flag that makes them available
//!   (§2.7.13.3, §2.8.21.3);
//! - **after reading the device's index**: an entry is read only after the
//!   index (or flag) that covers it (§2.7.14);
//! - **between a store and a load of the other side's state**: publishing
//!   and then reading the device's suppression state, or re-enabling
//!   interrupts and then reading its index (§2.7.7, §2.7.10).
//!
//! [`MemoryOrder::Smp`] (the default) uses the CPU's SMP barriers, enough
//! for a device that is software on another CPU (QEMU). When
//! VIRTIO_F_ORDER_PLATFORM is negotiated (§6.1: the driver "needs to use
//! memory barriers suitable for devices described by the platform"), a
//! queue is built with [`MemoryOrder::Platform`] and adds the platform's
//! device barriers from [`hal::barrier`] (`sfence`, `lfence`, `mfence` on
//! x86_64). The choice is made once, per queue, from the negotiated
//! features ([`MemoryOrder::from_features`]).

use core::sync::atomic::{fence, Ordering};

use crate::features;

/// Which barriers a queue uses; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryOrder {
    /// SMP barriers: the device is software (VIRTIO_F_ORDER_PLATFORM not negotiated).
    #[default]
    Smp,
    /// The platform's device barriers as well (VIRTIO_F_ORDER_PLATFORM negotiated).
    Platform,
}

impl MemoryOrder {
    /// [`MemoryOrder::Platform`] exactly when VIRTIO_F_ORDER_PLATFORM is in `negotiated`.
    pub const fn from_features(negotiated: u64) -> Self {
        if negotiated & features::ORDER_PLATFORM != 0 {
            MemoryOrder::Platform
        } else {
            MemoryOrder::Smp
        }
    }

    /// Before the store that publishes what was written before it.
    #[inline(always)]
    pub(crate) fn before_publish(self) {
        fence(Ordering::Release);
        if self == MemoryOrder::Platform {
            hal::barrier::device_write();
        }
    }

    /// After the load of an index (or flag) and before loads of what it covers.
    #[inline(always)]
    pub(crate) fn after_index_read(self) {
        fence(Ordering::Acquire);
        if self == MemoryOrder::Platform {
            hal::barrier::device_read();
        }
    }

    /// Between a store and a later load of the device's state.
    #[inline(always)]
    pub(crate) fn full(self) {
        fence(Ordering::SeqCst);
        if self == MemoryOrder::Platform {
            hal::barrier::device_full();
        }
    }
}
