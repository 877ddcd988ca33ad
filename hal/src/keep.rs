//! # Memory a device may still write: freed only when it has stopped
//!
//! A driver frees its rings and buffers after resetting the device, because
//! a reset is the only way to be sure the device no longer reads or writes
//! them (virtio 1.2 §2.1.2: after writing 0 to `device_status` "the driver
//! MUST wait for a read of device_status to return 0"; §3.3.1: "the driver
//! MUST ensure a device is not using a virtqueue before freeing it").
//! A device that never acknowledges the reset may still be doing DMA into
//! that memory, so freeing it would be a use-after-free by DMA: the
//! allocator hands the pages to someone else, and the device writes them.
//!
//! [`DeviceVisible`] wraps whatever owns such memory (a ring, a pool, a
//! table of buffers). It dereferences to the value and drops it as usual,
//! unless the driver called [`DeviceVisible::keep_forever`]: then the value
//! is never dropped, so its pages are never freed and never reused. The
//! memory is lost, which is the lesser evil; [`kept_forever`] counts how
//! many values were kept this way, so the loss is visible.

use core::fmt;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU64, Ordering};

/// Values kept forever since boot (see [`DeviceVisible::keep_forever`]).
static KEPT_FOREVER: AtomicU64 = AtomicU64::new(0);

/// How many values holding device-visible memory were kept (leaked) since
/// boot because their device never acknowledged a reset.
pub fn kept_forever() -> u64 {
    KEPT_FOREVER.load(Ordering::Relaxed)
}

/// A value owning memory a device may access; see the module docs.
pub struct DeviceVisible<T> {
    value: ManuallyDrop<T>,
    keep: bool,
}

impl<T> DeviceVisible<T> {
    /// Wraps `value`; it is dropped normally unless kept.
    pub const fn new(value: T) -> Self {
        Self {
            value: ManuallyDrop::new(value),
            keep: false,
        }
    }

    /// The device may still access this memory and will not be stopped:
    /// never drop the value (never free its pages). Counted once per value
    /// in [`kept_forever`]. Cannot be undone.
    pub fn keep_forever(&mut self) {
        if !self.keep {
            self.keep = true;
            KEPT_FOREVER.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `true` after [`DeviceVisible::keep_forever`].
    pub fn is_kept_forever(&self) -> bool {
        self.keep
    }

    /// The value, unwrapped, once the device is known not to use it any
    /// more or to have let it go in order (for example after the command
    /// that handed it over succeeded, to store it elsewhere). `None` if it
    /// was kept forever: it stays where it is, never dropped.
    pub fn into_inner(self) -> Option<T> {
        let mut this = ManuallyDrop::new(self);
        if this.keep {
            return None;
        }
        // SAFETY: the value is taken out once, here, and `this` is never
        // dropped (ManuallyDrop), so it is neither dropped nor used again.
        Some(unsafe { ManuallyDrop::take(&mut this.value) })
    }
}

impl<T> Deref for DeviceVisible<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for DeviceVisible<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T> Drop for DeviceVisible<T> {
    fn drop(&mut self) {
        if !self.keep {
            // SAFETY: `value` is dropped only here, once, and never used
            // again (this is the wrapper's own drop).
            unsafe { ManuallyDrop::drop(&mut self.value) }
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for DeviceVisible<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.keep {
            write!(f, "{:?} (kept forever)", &*self.value)
        } else {
            fmt::Debug::fmt(&*self.value, f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::rc::Rc;

    #[test]
    fn a_kept_value_is_never_dropped_and_is_counted() {
        let witness = Rc::new(());
        let before = kept_forever();
        drop(DeviceVisible::new(witness.clone()));
        assert_eq!(Rc::strong_count(&witness), 1, "dropped normally");
        let mut kept = DeviceVisible::new(witness.clone());
        kept.keep_forever();
        kept.keep_forever();
        drop(kept);
        assert_eq!(Rc::strong_count(&witness), 2, "never dropped");
        assert_eq!(kept_forever(), before + 1, "counted once");
    }

    #[test]
    fn into_inner_hands_over_a_value_that_was_not_kept_only() {
        let witness = Rc::new(());
        let handed = DeviceVisible::new(witness.clone()).into_inner();
        assert_eq!(Rc::strong_count(&witness), 2, "handed over, not dropped");
        drop(handed);
        assert_eq!(Rc::strong_count(&witness), 1);
        let mut kept = DeviceVisible::new(witness.clone());
        kept.keep_forever();
        assert!(kept.into_inner().is_none());
        assert_eq!(Rc::strong_count(&witness), 2, "still kept, never dropped");
    }
}
