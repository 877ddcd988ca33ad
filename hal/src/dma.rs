//! DMA memory: pages the device can reach, owned by an RAII handle.
//!
//! The device reads and writes this memory behind the compiler's back, so every
//! access through [`DmaRegion`] is volatile and bounds-checked, and only types
//! for which every bit pattern is a valid value may be read or written
//! ([`DmaValue`]: the fixed-size integers and arrays of them). Whatever an
//! untrusted device writes, a read yields *some* valid value, never undefined
//! behaviour: reading a `bool` (only 0 and 1 are valid) or a reference (the
//! device would choose the address) does not compile:
//!
//! ```compile_fail,E0277
//! # fn demo<H: hal::Hal>(region: &hal::DmaRegion<H>) {
//! let flag: Option<bool> = region.read::<bool>(0); // error: `bool: DmaValue` is not satisfied
//! # }
//! ```
//!
//! ```compile_fail,E0277
//! # fn demo<H: hal::Hal>(region: &hal::DmaRegion<H>) {
//! let pointer = region.read::<&u8>(0); // error: `&u8: DmaValue` is not satisfied
//! # }
//! ```
//!
//! ```
//! # fn demo<H: hal::Hal>(region: &hal::DmaRegion<H>) {
//! let index: Option<u16> = region.read::<u16>(0); // integers are fine
//! let bytes: Option<[u8; 6]> = region.read::<[u8; 6]>(8); // and arrays of them
//! # }
//! ```

use core::marker::PhantomData;
use core::ptr::NonNull;

use crate::{pages_for, DeviceAddr, DmaOwner, Hal, HalError, PAGE_SIZE};

/// The widest access [`DmaRegion::read_bytes`] and [`DmaRegion::write_bytes`] use.
const WORD: usize = core::mem::size_of::<u64>();

/// A type that may live in device-visible memory: `Copy`, no padding, no
/// pointers, and **every bit pattern is a valid value**, so reading whatever
/// the device wrote is always defined.
///
/// Sealed: implemented here for `u8`..`u64`, `i8`..`i64` and arrays of them,
/// and nowhere else (a `bool`, `char`, enum, reference or struct with padding
/// would make [`DmaRegion::read`] unsound).
pub trait DmaValue: Copy + sealed::Sealed {}

mod sealed {
    /// Keeps [`super::DmaValue`] closed to the types listed in this file.
    pub trait Sealed {}
}

macro_rules! dma_value {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl DmaValue for $t {}
    )*};
}
dma_value!(u8, u16, u32, u64, i8, i16, i32, i64);

// An array of valid-for-any-bits elements has no padding and is itself valid
// for any bits.
impl<T: DmaValue, const N: usize> sealed::Sealed for [T; N] {}
impl<T: DmaValue, const N: usize> DmaValue for [T; N] {}

/// Physically contiguous, page-aligned, zeroed memory shared with one device
/// (its [`DmaOwner`]). Freed (through the Hal that allocated it) when dropped.
pub struct DmaRegion<H: Hal> {
    owner: DmaOwner,
    device_addr: DeviceAddr,
    vaddr: NonNull<u8>,
    pages: usize,
    _hal: PhantomData<H>,
}

// SAFETY: the region is plain memory owned exclusively by this handle; moving
// the handle to another thread moves that ownership with it.
unsafe impl<H: Hal> Send for DmaRegion<H> {}
// SAFETY: all access through `&self` is volatile reads/writes of plain integers;
// callers that need ordering between threads synchronise outside.
unsafe impl<H: Hal> Sync for DmaRegion<H> {}

impl<H: Hal> DmaRegion<H> {
    /// Allocates enough whole pages to hold `bytes` bytes, for device `owner`.
    pub fn new(owner: DmaOwner, bytes: usize) -> Result<Self, HalError> {
        if bytes == 0 {
            return Err(HalError::InvalidArgument);
        }
        let pages = pages_for(bytes);
        let (device_addr, vaddr) = H::dma_alloc(owner, pages)?;
        Ok(Self {
            owner,
            device_addr,
            vaddr,
            pages,
            _hal: PhantomData,
        })
    }

    /// The address to give the device for byte 0.
    pub fn device_addr(&self) -> DeviceAddr {
        self.device_addr
    }

    /// The device this memory was allocated for.
    pub fn owner(&self) -> DmaOwner {
        self.owner
    }

    /// The CPU pointer to byte 0.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.vaddr
    }

    /// Length in bytes (always a whole number of pages).
    pub fn len(&self) -> usize {
        self.pages * PAGE_SIZE
    }

    /// Never true: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// A pointer to a `T` at `offset`, if it lies inside the region and is
    /// aligned for `T`.
    fn checked_ptr<T>(&self, offset: usize) -> Option<*mut T> {
        let end = offset.checked_add(core::mem::size_of::<T>())?;
        if end > self.len() || !offset.is_multiple_of(core::mem::align_of::<T>()) {
            return None;
        }
        // SAFETY: `offset + size_of::<T>()` is within the allocation (checked above).
        Some(unsafe { self.vaddr.as_ptr().add(offset) }.cast::<T>())
    }

    /// Volatile read of a `T` at `offset`. `None` when out of bounds or misaligned.
    ///
    /// `T` is a [`DmaValue`], valid for any bits, because the device may have
    /// written anything there.
    pub fn read<T: DmaValue>(&self, offset: usize) -> Option<T> {
        let ptr = self.checked_ptr::<T>(offset)?;
        // SAFETY: in bounds and aligned (checked), and the memory is ours for
        // the lifetime of `self`; volatile because the device may write it;
        // `T: DmaValue` is valid for whatever bits the device left there.
        Some(unsafe { ptr.read_volatile() })
    }

    /// Volatile write of a `T` at `offset`. `false` when out of bounds or misaligned.
    ///
    /// `T` is a [`DmaValue`]: no padding bytes (uninitialised memory) and no
    /// pointers end up where the device can read them.
    pub fn write<T: DmaValue>(&self, offset: usize, value: T) -> bool {
        match self.checked_ptr::<T>(offset) {
            Some(ptr) => {
                // SAFETY: in bounds and aligned (checked); volatile because the
                // device may read it at any time.
                unsafe { ptr.write_volatile(value) };
                true
            }
            None => false,
        }
    }

    /// Copies `dst.len()` bytes starting at `offset` out of the region.
    ///
    /// Word-sized volatile loads where the region offset is 8-aligned, byte
    /// loads only for the unaligned edges: a request header or status copy
    /// then costs a handful of memory accesses instead of one per byte, which
    /// matters on hot paths (every block request copies its header).
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> bool {
        let Some(end) = offset.checked_add(dst.len()) else {
            return false;
        };
        if end > self.len() {
            return false;
        }
        let base = self.vaddr.as_ptr();
        let mut at = 0;
        while at < dst.len() {
            let here = offset + at;
            if here.is_multiple_of(WORD) && dst.len() - at >= WORD {
                // SAFETY: `here + WORD <= end <= len` (checked above) and `here`
                // is 8-aligned within a page-aligned allocation.
                let word = unsafe { base.add(here).cast::<u64>().read_volatile() };
                dst[at..at + WORD].copy_from_slice(&word.to_ne_bytes());
                at += WORD;
            } else {
                // SAFETY: `here < end <= len` (checked above).
                dst[at] = unsafe { base.add(here).read_volatile() };
                at += 1;
            }
        }
        true
    }

    /// Copies `src` into the region starting at `offset`, with word-sized
    /// volatile stores where aligned (see [`DmaRegion::read_bytes`]).
    pub fn write_bytes(&self, offset: usize, src: &[u8]) -> bool {
        let Some(end) = offset.checked_add(src.len()) else {
            return false;
        };
        if end > self.len() {
            return false;
        }
        let base = self.vaddr.as_ptr();
        let mut at = 0;
        while at < src.len() {
            let here = offset + at;
            if let (true, Some(chunk)) = (
                here.is_multiple_of(WORD),
                src.get(at..at + WORD)
                    .and_then(|c| <[u8; WORD]>::try_from(c).ok()),
            ) {
                // SAFETY: `here + WORD <= end <= len` (checked above) and `here`
                // is 8-aligned within a page-aligned allocation.
                unsafe {
                    base.add(here)
                        .cast::<u64>()
                        .write_volatile(u64::from_ne_bytes(chunk))
                };
                at += WORD;
            } else {
                // SAFETY: `here < end <= len` (checked above).
                unsafe { base.add(here).write_volatile(src[at]) };
                at += 1;
            }
        }
        true
    }
}

impl<H: Hal> Drop for DmaRegion<H> {
    fn drop(&mut self) {
        // SAFETY: these are exactly the values `dma_alloc` returned and was
        // asked for, and the handle is gone after this, so nobody uses them.
        unsafe { H::dma_dealloc(self.owner, self.device_addr, self.vaddr, self.pages) };
    }
}

impl<H: Hal> core::fmt::Debug for DmaRegion<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaRegion")
            .field("owner", &self.owner)
            .field("device_addr", &format_args!("{:#x}", self.device_addr))
            .field("vaddr", &self.vaddr)
            .field("pages", &self.pages)
            .finish()
    }
}
