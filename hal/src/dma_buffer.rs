//! A data buffer in DMA memory that changes hands: plain bytes while its
//! owner holds it, a device address only once it is lent to the device.
//!
//! A block read or write moves data between a caller and the device. If the
//! caller's memory is a [`DmaBuffer`], nothing is copied and nothing has to be
//! "shared" for the request: the buffer already has a device address. What
//! has to be proven is that nobody reads or writes the bytes as a Rust slice
//! while the device may write them. The type does that with two states:
//!
//! - [`DmaBuffer`]: held by its owner, who sees it as `&[u8]` / `&mut [u8]`
//!   ([`DmaBuffer::as_bytes`], [`DmaBuffer::as_bytes_mut`]); there is no way
//!   to learn its device address;
//! - [`LentDmaBuffer`]: given to the device by value ([`DmaBuffer::lend`]),
//!   with its device address and length and no byte access at all;
//!   [`LentDmaBuffer::reclaim`] turns it back into a [`DmaBuffer`] once the
//!   device said it is done (a used ring entry, read with acquire ordering,
//!   §2.7.8 / §2.8.22) or was reset (§2.4).
//!
//! Ownership moves, so the borrow checker proves what a driver used to
//! promise in a `// SAFETY:` comment around `Hal::share` / `Hal::unshare`:
//! while the device holds the buffer, its former owner cannot touch it.
//! ([`crate::DmaBufferPool`] proves the same for buffers that stay in one
//! pool; this type is for buffers that travel with a request.)
//!
//! A lent buffer has no bytes to look at: the device may be writing them.
//!
//! ```compile_fail,E0599
//! # fn demo<H: hal::Hal>(buffer: hal::DmaBuffer<H>) {
//! let lent = buffer.lend();
//! let bytes = lent.as_bytes(); // error: no method `as_bytes` on `LentDmaBuffer`
//! # }
//! ```
//!
//! ```compile_fail,E0382
//! # fn demo<H: hal::Hal>(buffer: hal::DmaBuffer<H>) {
//! let lent = buffer.lend();
//! let bytes = buffer.as_bytes(); // error: `buffer` was moved into the loan
//! # }
//! ```
//!
//! ```
//! # fn demo<H: hal::Hal>(buffer: hal::DmaBuffer<H>) {
//! let lent = buffer.lend();
//! let addr = lent.device_addr(); // what goes in a descriptor
//! let buffer = lent.reclaim(); // once the device is done
//! let first = buffer.as_bytes()[0];
//! # }
//! ```

use crate::{DeviceAddr, DmaOwner, DmaRegion, Hal, HalError};

/// `len` bytes of zeroed DMA memory (page-aligned, physically contiguous),
/// held by its owner. Freed when dropped.
pub struct DmaBuffer<H: Hal> {
    region: DmaRegion<H>,
    len: usize,
}

/// A [`DmaBuffer`] lent to the device: its device address and length, and
/// no access to its bytes until [`LentDmaBuffer::reclaim`]. Dropping it
/// frees the memory, so drop one only after the device is done with it
/// (or reset).
pub struct LentDmaBuffer<H: Hal> {
    buffer: DmaBuffer<H>,
}

impl<H: Hal> DmaBuffer<H> {
    /// Allocates a zeroed buffer of `len` bytes (non-zero; whole pages are
    /// allocated underneath) that device `owner` may be lent.
    pub fn new(owner: DmaOwner, len: usize) -> Result<Self, HalError> {
        Ok(Self {
            region: DmaRegion::new(owner, len)?,
            len,
        })
    }

    /// A buffer for device `owner` holding a copy of `bytes` (non-empty).
    pub fn from_bytes(owner: DmaOwner, bytes: &[u8]) -> Result<Self, HalError> {
        let mut buffer = Self::new(owner, bytes.len())?;
        buffer.as_bytes_mut().copy_from_slice(bytes);
        Ok(buffer)
    }

    /// Length in bytes, as asked for in [`DmaBuffer::new`].
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a buffer has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The device this buffer was allocated for: the only one that can
    /// reach it when it is lent (behind an IOMMU).
    pub fn owner(&self) -> DmaOwner {
        self.region.owner()
    }

    /// The bytes, for reading.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: the region holds at least `len` bytes and lives as long as
        // `&self`. The buffer is held, not lent: the device was never given
        // its address, or gave it back (`LentDmaBuffer::reclaim`), so the
        // device does not write it; and no `&mut` slice exists while this
        // shared borrow does.
        unsafe { core::slice::from_raw_parts(self.region.as_ptr().as_ptr(), self.len) }
    }

    /// The bytes, for writing.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_bytes`; the exclusive borrow of the buffer means
        // no other slice of it exists.
        unsafe { core::slice::from_raw_parts_mut(self.region.as_ptr().as_ptr(), self.len) }
    }

    /// Gives the buffer to the device: from now on only its device address
    /// and length are known, until [`LentDmaBuffer::reclaim`].
    pub fn lend(self) -> LentDmaBuffer<H> {
        LentDmaBuffer { buffer: self }
    }
}

impl<H: Hal> LentDmaBuffer<H> {
    /// The address to give the device for byte 0.
    pub fn device_addr(&self) -> DeviceAddr {
        self.buffer.region.device_addr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.buffer.len
    }

    /// Never true: a buffer has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Takes the buffer back from the device, which must be done with it:
    /// its request's used entry was read (acquire ordering), or the device
    /// was reset. What the device wrote is then in the bytes.
    pub fn reclaim(self) -> DmaBuffer<H> {
        self.buffer
    }
}

impl<H: Hal> core::fmt::Debug for DmaBuffer<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaBuffer").field("len", &self.len).finish()
    }
}

impl<H: Hal> core::fmt::Debug for LentDmaBuffer<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LentDmaBuffer")
            .field("device_addr", &format_args!("{:#x}", self.device_addr()))
            .field("len", &self.buffer.len)
            .finish()
    }
}
