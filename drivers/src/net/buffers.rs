//! Packet buffers: one DMA allocation cut into equal buffers, owned by the
//! driver for the device's whole life.
//!
//! Receive and transmit both use a [`BufferPool`]: the receive queue posts
//! its buffers to the device and gets them back full; the transmit queue
//! fills one, posts it, and gets it back empty. Because the pool is
//! allocated once, at bring-up, nothing is allocated per packet, and the
//! device addresses never change (§2.7.13: a buffer made available must be
//! memory the device can reach, which is exactly what [`DmaRegion`] is).
//!
//! ## Who may touch a buffer when
//!
//! A buffer is either *posted* (in a descriptor chain the device owns) or
//! *held* by the driver. The device only reads or writes a posted buffer,
//! and hands it back through the used ring; `Virtqueue::pop_used` reads the
//! used entry after an acquire barrier, so everything the device wrote is
//! visible once the buffer is held again. While a buffer is held, plain
//! (non-volatile) slices of it are sound: nobody else writes it. The
//! `unsafe` slice constructors below rely on the receive and transmit
//! queues never handing out a slice of a posted buffer; each call site says
//! why that holds.

use core::fmt;

use hal::{DeviceAddr, DmaRegion, Hal, HalError};

/// `count` buffers of `buffer_len` bytes in one DMA region.
pub struct BufferPool<H: Hal> {
    region: DmaRegion<H>,
    buffer_len: usize,
    count: u16,
}

impl<H: Hal> BufferPool<H> {
    /// Allocates `count` buffers of `buffer_len` bytes each (both non-zero).
    pub fn new(count: u16, buffer_len: usize) -> Result<Self, HalError> {
        if count == 0 || buffer_len == 0 || buffer_len > u32::MAX as usize {
            return Err(HalError::InvalidArgument);
        }
        let bytes = (count as usize)
            .checked_mul(buffer_len)
            .ok_or(HalError::InvalidArgument)?;
        Ok(Self {
            region: DmaRegion::new(bytes)?,
            buffer_len,
            count,
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

    /// The device address of byte `offset` of buffer `id` (`None` out of range).
    pub fn device_addr(&self, id: u16, offset: usize) -> Option<DeviceAddr> {
        if id >= self.count || offset >= self.buffer_len {
            return None;
        }
        Some(self.region.device_addr() + (id as usize * self.buffer_len + offset) as u64)
    }

    /// Bytes `offset..offset+len` of buffer `id`, for reading.
    ///
    /// # Safety
    /// The buffer must be held by the driver (not posted to the device) for
    /// as long as the slice lives, and no `&mut` slice of it may exist.
    pub unsafe fn bytes(&self, id: u16, offset: usize, len: usize) -> Option<&[u8]> {
        let start = self.checked_range(id, offset, len)?;
        // SAFETY: `start..start+len` lies inside the region (checked), which
        // lives as long as `self`; the caller guarantees the device does not
        // write it and nobody holds a mutable slice meanwhile.
        Some(unsafe { core::slice::from_raw_parts(self.region.as_ptr().as_ptr().add(start), len) })
    }

    /// Bytes `offset..offset+len` of buffer `id`, for writing.
    ///
    /// # Safety
    /// The buffer must be held by the driver (not posted to the device) for
    /// as long as the slice lives, and no other slice of it may exist.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self, id: u16, offset: usize, len: usize) -> Option<&mut [u8]> {
        let start = self.checked_range(id, offset, len)?;
        // SAFETY: in bounds (checked); the caller guarantees exclusive access
        // for the slice's lifetime (the device does not own the buffer and no
        // other slice of it exists).
        Some(unsafe {
            core::slice::from_raw_parts_mut(self.region.as_ptr().as_ptr().add(start), len)
        })
    }

    fn checked_range(&self, id: u16, offset: usize, len: usize) -> Option<usize> {
        if id >= self.count || offset.checked_add(len)? > self.buffer_len {
            return None;
        }
        Some(id as usize * self.buffer_len + offset)
    }
}

impl<H: Hal> fmt::Debug for BufferPool<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("count", &self.count)
            .field("buffer_len", &self.buffer_len)
            .field(
                "device_addr",
                &format_args!("{:#x}", self.region.device_addr()),
            )
            .finish()
    }
}

/// A stack of free buffer ids, preallocated, so taking and returning one
/// never allocates.
#[derive(Debug, Clone)]
pub struct FreeList {
    ids: alloc::vec::Vec<u16>,
}

impl FreeList {
    /// All of `0..count` free.
    pub fn full(count: u16) -> Self {
        // Reversed, so ids are handed out from 0 upwards (easier to follow in a trace).
        Self {
            ids: (0..count).rev().collect(),
        }
    }

    /// Takes a free id.
    pub fn take(&mut self) -> Option<u16> {
        self.ids.pop()
    }

    /// Returns an id. Never grows past the capacity reserved at creation
    /// unless the caller returns an id twice, which the queues prevent.
    pub fn put(&mut self, id: u16) {
        self.ids.push(id);
    }

    /// Free ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// `true` if no id is free.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// "No buffer": the value in a token-to-buffer map for a token that carries none.
pub const NO_BUFFER: u16 = u16::MAX;
