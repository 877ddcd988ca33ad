//! Typed, volatile, bounds-checked access to memory-mapped device registers.
//!
//! A [`MmioRegion`] is created once per register block (a BAR, a virtio
//! capability's window, a virtio-mmio slot) from [`Hal::mmio_map`]. Offsets are
//! then driver constants; an access outside the region returns `None` (reads)
//! or `false` (writes) instead of touching memory. Every access goes through
//! [`Hal::mmio_read`] / [`Hal::mmio_write`], so host tests can observe it.

use core::marker::PhantomData;
use core::ptr::NonNull;

use crate::{Hal, HalError, PhysAddr};

/// An integer type that can be a device register.
pub trait Register: Copy + sealed::Sealed {
    /// Width in bytes.
    const WIDTH: usize;
    /// Zero-extends to 64 bits.
    fn to_u64(self) -> u64;
    /// Truncates from 64 bits.
    fn from_u64(value: u64) -> Self;
}

macro_rules! register {
    ($($t:ty),*) => {$(
        impl Register for $t {
            const WIDTH: usize = core::mem::size_of::<$t>();
            fn to_u64(self) -> u64 { self as u64 }
            fn from_u64(value: u64) -> Self { value as $t }
        }
        impl sealed::Sealed for $t {}
    )*};
}
register!(u8, u16, u32, u64);

mod sealed {
    pub trait Sealed {}
}

/// A window of device registers mapped into the CPU's address space.
pub struct MmioRegion<H: Hal> {
    base: NonNull<u8>,
    len: usize,
    _hal: PhantomData<H>,
}

impl<H: Hal> Clone for MmioRegion<H> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<H: Hal> Copy for MmioRegion<H> {}

// SAFETY: a register window is just an address range; accesses are volatile
// and the device serialises them. Drivers that share one synchronise outside.
unsafe impl<H: Hal> Send for MmioRegion<H> {}
// SAFETY: as above.
unsafe impl<H: Hal> Sync for MmioRegion<H> {}

impl<H: Hal> core::fmt::Debug for MmioRegion<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MmioRegion")
            .field("base", &self.base)
            .field("len", &format_args!("{:#x}", self.len))
            .finish()
    }
}

impl<H: Hal> MmioRegion<H> {
    /// Maps `len` bytes of registers at physical address `phys` through the Hal.
    pub fn map(phys: PhysAddr, len: usize) -> Result<Self, HalError> {
        if len == 0 {
            return Err(HalError::InvalidArgument);
        }
        let base = H::mmio_map(phys, len)?;
        Ok(Self {
            base,
            len,
            _hal: PhantomData,
        })
    }

    /// Wraps `len` bytes of registers already mapped at `base`.
    ///
    /// # Safety
    /// `base..base+len` must be a window returned by [`Hal::mmio_map`] (or a
    /// part of one) that stays mapped while the region is used.
    pub unsafe fn from_raw(base: NonNull<u8>, len: usize) -> Self {
        Self {
            base,
            len,
            _hal: PhantomData,
        }
    }

    /// Length of the window in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length window.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The CPU pointer to the first register.
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// A sub-window `offset..offset+len`, or `None` if it does not fit.
    pub fn subregion(&self, offset: usize, len: usize) -> Option<Self> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // Pointer arithmetic without dereferencing: a host Hal's windows may be
        // fake addresses, so this must not assume they are real memory.
        let base = NonNull::new(self.base.as_ptr().wrapping_add(offset))?;
        Some(Self {
            base,
            len,
            _hal: PhantomData,
        })
    }

    fn checked_ptr<T: Register>(&self, offset: usize) -> Option<NonNull<T>> {
        let end = offset.checked_add(T::WIDTH)?;
        if end > self.len || !offset.is_multiple_of(T::WIDTH) {
            return None;
        }
        NonNull::new(self.base.as_ptr().wrapping_add(offset).cast::<T>())
    }

    /// Volatile read of the register at `offset`; `None` if outside the window or misaligned.
    pub fn read<T: Register>(&self, offset: usize) -> Option<T> {
        let ptr = self.checked_ptr::<T>(offset)?;
        // SAFETY: in bounds and aligned (checked); the window came from `mmio_map`.
        Some(unsafe { H::mmio_read(ptr) })
    }

    /// Volatile write of the register at `offset`; `false` if outside the window or misaligned.
    pub fn write<T: Register>(&self, offset: usize, value: T) -> bool {
        match self.checked_ptr::<T>(offset) {
            Some(ptr) => {
                // SAFETY: in bounds and aligned (checked); the window came from `mmio_map`.
                unsafe { H::mmio_write(ptr, value) };
                true
            }
            None => false,
        }
    }
}
