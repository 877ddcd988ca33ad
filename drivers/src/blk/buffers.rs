//! Data buffers registered with a block device: DMA memory the caller reads
//! and writes in place, and the device reads or fills for a request, with no
//! copy and no `Hal::share` (virtio 1.2 §5.2.6: the data part of
//! `struct virtio_blk_req`).
//!
//! The caller hands a [`hal::DmaBuffer`] allocated for this device (with
//! its `Transport::dma_owner`) to [`BlkDevice::register_buffer`] and gets a
//! [`BufferId`]; reads and writes name buffers by id
//! ([`BlkDevice::submit_read`], [`BlkDevice::submit_write`]), which makes
//! submitting them a safe call. While a request holds a buffer it is lent
//! (what [`hal::LentDmaBuffer`] is for one buffer: a device address, no
//! bytes), so
//! [`BlkDevice::buffer`] and [`BlkDevice::buffer_mut`] answer `None` for it
//! and a second request cannot take it; the driver reclaims it when the
//! request's used entry is read, or when it resets the device.
//! [`BlkDevice::unregister_buffer`] gives a held buffer back for good.

use alloc::vec::Vec;

use hal::{DeviceAddr, DmaBuffer, Hal};

use super::BlkDevice;
use crate::transport::Transport;

/// A data buffer registered with a [`BlkDevice`] (an index into its table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId(u16);

impl BufferId {
    /// Fills unused loan records (never registered: the table stops short
    /// of 65,535 entries).
    pub(super) const NONE: BufferId = BufferId(u16::MAX);

    /// The table index.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// One registered buffer and who has it.
struct Entry<H: Hal> {
    /// `None`: never used, or unregistered.
    buffer: Option<DmaBuffer<H>>,
    /// Learnt once, at registration (the buffer was lent and reclaimed for
    /// that), so that lending it per request is a flag and a load.
    device_addr: DeviceAddr,
    /// The buffer's length (kept here for the same reason).
    len: usize,
    /// A request holds it, or the entry is vacant: no request may take it
    /// and no slice of it is handed out (the device may be reading or
    /// writing it).
    lent: bool,
}

/// The registered buffers of one device.
///
/// The two states of [`hal::DmaBuffer`] / [`hal::LentDmaBuffer`] are kept
/// here as a flag per buffer, as [`hal::DmaBufferPool`] keeps them for its
/// buffers: moving a buffer between the two types on every request would
/// cost a 4 KiB request tens of instructions, and the table is the only
/// way to reach a registered buffer's bytes, so the flag is checked there.
pub(super) struct BufferTable<H: Hal> {
    entries: Vec<Entry<H>>,
}

impl<H: Hal> BufferTable<H> {
    pub(super) const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    pub(super) fn register(&mut self, buffer: DmaBuffer<H>) -> Result<BufferId, DmaBuffer<H>> {
        let index = self
            .entries
            .iter()
            .position(|e| e.buffer.is_none() && e.lent)
            .unwrap_or(self.entries.len());
        let id = match u16::try_from(index) {
            Ok(id) if id != BufferId::NONE.0 => id,
            _ => return Err(buffer),
        };
        // The device address, learnt the only way the type allows.
        let lent = buffer.lend();
        let device_addr = lent.device_addr();
        let entry = Entry {
            len: lent.len(),
            buffer: Some(lent.reclaim()),
            device_addr,
            lent: false,
        };
        if index == self.entries.len() {
            self.entries.push(entry);
        } else {
            self.entries[index] = entry;
        }
        Ok(BufferId(id))
    }

    pub(super) fn unregister(&mut self, id: BufferId) -> Option<DmaBuffer<H>> {
        let entry = self.entries.get_mut(id.index()).filter(|e| !e.lent)?;
        // Vacant from now on: never lent again.
        entry.lent = true;
        entry.buffer.take()
    }

    /// Held buffer `id`; `None` if unknown or lent.
    pub(super) fn held(&self, id: BufferId) -> Option<&DmaBuffer<H>> {
        let entry = self.entries.get(id.index()).filter(|e| !e.lent)?;
        entry.buffer.as_ref()
    }

    pub(super) fn held_mut(&mut self, id: BufferId) -> Option<&mut DmaBuffer<H>> {
        let entry = self.entries.get_mut(id.index()).filter(|e| !e.lent)?;
        entry.buffer.as_mut()
    }

    /// The length of held buffer `id`; `None` if unknown or lent.
    #[inline(always)]
    pub(super) fn held_len(&self, id: BufferId) -> Option<usize> {
        let entry = self.entries.get(id.index()).filter(|e| !e.lent)?;
        Some(entry.len)
    }

    /// Lends held buffer `id` to the device and returns its device address
    /// and length; `None` if unknown or already lent.
    #[inline(always)]
    pub(super) fn lend(&mut self, id: BufferId) -> Option<(DeviceAddr, usize)> {
        let entry = self.entries.get_mut(id.index()).filter(|e| !e.lent)?;
        entry.lent = true;
        Some((entry.device_addr, entry.len))
    }

    /// Takes lent buffer `id` back: the device is done with it (its
    /// request's used entry was read with acquire ordering, or the device
    /// was reset).
    #[inline(always)]
    pub(super) fn reclaim(&mut self, id: BufferId) {
        if let Some(entry) = self.entries.get_mut(id.index()) {
            // Only a lent entry has a loan record to end; a vacant one
            // stays vacant.
            entry.lent = entry.buffer.is_none();
        }
    }
}

impl<H: Hal, T: Transport> BlkDevice<H, T> {
    /// Registers a data buffer for [`BlkDevice::submit_read`] and
    /// [`BlkDevice::submit_write`]. Gives the buffer back if it was not
    /// allocated for this device (its [`hal::DmaOwner`] is another's:
    /// behind an IOMMU this device could not reach it) or the table is full
    /// (65,535 buffers).
    pub fn register_buffer(&mut self, buffer: DmaBuffer<H>) -> Result<BufferId, DmaBuffer<H>> {
        if buffer.owner() != self.transport.dma_owner() {
            return Err(buffer);
        }
        self.buffers.register(buffer)
    }

    /// Takes registered buffer `id` back for good; `None` if unknown or a
    /// request still holds it.
    pub fn unregister_buffer(&mut self, id: BufferId) -> Option<DmaBuffer<H>> {
        self.buffers.unregister(id)
    }

    /// The bytes of registered buffer `id`; `None` if unknown or a request
    /// holds it (the device may be writing it).
    pub fn buffer(&self, id: BufferId) -> Option<&[u8]> {
        self.buffers.held(id).map(DmaBuffer::as_bytes)
    }

    /// The bytes of registered buffer `id`, for writing; `None` if unknown
    /// or a request holds it.
    pub fn buffer_mut(&mut self, id: BufferId) -> Option<&mut [u8]> {
        self.buffers.held_mut(id).map(DmaBuffer::as_bytes_mut)
    }
}
