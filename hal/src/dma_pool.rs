//! A pool of equal DMA buffers, each either lent to the device or held by
//! the driver, with plain byte slices of the held ones.
//!
//! Packet buffers (virtio-net, §5.1.6) are filled and read in place: the
//! receive path hands the network stack a slice of the buffer the device
//! wrote, the transmit path lets it write the frame straight into the buffer
//! the device will read. A plain `&[u8]` of memory the device may write at
//! the same time would be a data race, so the pool keeps, per buffer, who has
//! it:
//!
//! - [`DmaBufferPool::lend`] gives a buffer to the device and is the only way
//!   to learn its device address; it takes `&mut self`, so no slice of any
//!   buffer can be alive while one is lent;
//! - [`DmaBufferPool::reclaim`] takes it back once the device said it is done
//!   (a used ring entry, read with acquire ordering, §2.7.8 / §2.8.22);
//! - [`DmaBufferPool::bytes`] / [`DmaBufferPool::bytes_mut`] are slices of a
//!   **held** buffer only (`None` for a lent one).
//!
//! The borrow checker then proves what the driver used to promise in a
//! `// SAFETY:` comment at each call site.

use alloc::vec;
use alloc::vec::Vec;

use crate::{DeviceAddr, DmaOwner, DmaRegion, Hal, HalError};

/// `count` buffers of `buffer_len` bytes in one DMA region, all held by the
/// driver at first (zeroed).
pub struct DmaBufferPool<H: Hal> {
    region: DmaRegion<H>,
    buffer_len: usize,
    count: u16,
    /// `lent[id]`: buffer `id` is the device's (lent, not yet reclaimed).
    lent: Vec<bool>,
}

impl<H: Hal> DmaBufferPool<H> {
    /// Allocates `count` buffers of `buffer_len` bytes each (both non-zero,
    /// `buffer_len` at most `u32::MAX`, a descriptor's length field), for
    /// device `owner`.
    pub fn new(owner: DmaOwner, count: u16, buffer_len: usize) -> Result<Self, HalError> {
        if count == 0 || buffer_len == 0 || buffer_len > u32::MAX as usize {
            return Err(HalError::InvalidArgument);
        }
        let bytes = usize::from(count)
            .checked_mul(buffer_len)
            .ok_or(HalError::InvalidArgument)?;
        Ok(Self {
            region: DmaRegion::new(owner, bytes)?,
            buffer_len,
            count,
            lent: vec![false; usize::from(count)],
        })
    }

    /// Number of buffers.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Bytes per buffer.
    pub fn buffer_len(&self) -> usize {
        self.buffer_len
    }

    /// Bytes of DMA memory the pool holds (whole pages).
    pub fn dma_bytes(&self) -> usize {
        self.region.len()
    }

    /// The device address of the pool's first byte (for logs and `Debug`).
    pub fn device_addr(&self) -> DeviceAddr {
        self.region.device_addr()
    }

    /// `true` while buffer `id` is lent to the device.
    pub fn is_lent(&self, id: u16) -> bool {
        self.lent.get(usize::from(id)).copied().unwrap_or(false)
    }

    /// Lends buffer `id` to the device and returns the device address of its
    /// first byte (put it, or addresses inside the buffer, in a descriptor).
    /// `None` if `id` is out of range or already lent.
    pub fn lend(&mut self, id: u16) -> Option<DeviceAddr> {
        let lent = self.lent.get_mut(usize::from(id))?;
        if *lent {
            return None;
        }
        *lent = true;
        Some(self.region.device_addr() + (usize::from(id) * self.buffer_len) as u64)
    }

    /// Takes buffer `id` back from the device, which must be done with it
    /// (its used entry was read, or the device was reset). `false` if `id`
    /// is out of range or was not lent.
    pub fn reclaim(&mut self, id: u16) -> bool {
        match self.lent.get_mut(usize::from(id)) {
            Some(lent) if *lent => {
                *lent = false;
                true
            }
            _ => false,
        }
    }

    /// Takes every buffer back, after the device was reset (§2.4: a reset
    /// device owns no buffers).
    pub fn reclaim_all(&mut self) {
        self.lent.fill(false);
    }

    /// Bytes `offset..offset+len` of buffer `id`, for reading; `None` if out
    /// of range or the buffer is lent to the device.
    pub fn bytes(&self, id: u16, offset: usize, len: usize) -> Option<&[u8]> {
        let start = self.held_range(id, offset, len)?;
        // SAFETY: `start..start+len` lies inside the region (checked), which
        // lives as long as `&self`; the buffer is held, not lent (checked),
        // and cannot be lent while this shared borrow of the pool lives
        // (`lend` takes `&mut self`), so the device does not write it and no
        // `&mut` slice of it exists (`bytes_mut` takes `&mut self` too).
        Some(unsafe { core::slice::from_raw_parts(self.region.as_ptr().as_ptr().add(start), len) })
    }

    /// Bytes `offset..offset+len` of buffer `id`, for writing; `None` if out
    /// of range or the buffer is lent to the device.
    pub fn bytes_mut(&mut self, id: u16, offset: usize, len: usize) -> Option<&mut [u8]> {
        let start = self.held_range(id, offset, len)?;
        // SAFETY: in bounds and held (checked, as in `bytes`); the exclusive
        // borrow of the pool means no other slice of it exists and the
        // buffer cannot be lent until this slice is gone.
        Some(unsafe {
            core::slice::from_raw_parts_mut(self.region.as_ptr().as_ptr().add(start), len)
        })
    }

    /// Where `offset..offset+len` of buffer `id` starts in the region, if it
    /// fits in the buffer and the buffer is held by the driver.
    fn held_range(&self, id: u16, offset: usize, len: usize) -> Option<usize> {
        if id >= self.count || self.is_lent(id) || offset.checked_add(len)? > self.buffer_len {
            return None;
        }
        Some(usize::from(id) * self.buffer_len + offset)
    }
}

impl<H: Hal> core::fmt::Debug for DmaBufferPool<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaBufferPool")
            .field("count", &self.count)
            .field("buffer_len", &self.buffer_len)
            .field(
                "device_addr",
                &format_args!("{:#x}", self.region.device_addr()),
            )
            .field("lent", &self.lent.iter().filter(|&&l| l).count())
            .finish()
    }
}
