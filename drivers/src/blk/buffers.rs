//! Data buffers registered with a block device: DMA memory the caller reads
//! and writes in place, and the device reads or fills for a request, with no
//! copy and no `Hal::share` (virtio 1.2 §5.2.6: the data part of
//! `struct virtio_blk_req`).
//!
//! The caller hands a [`hal::DmaBuffer`] to [`BlkDevice::register_buffer`]
//! and gets a [`BufferId`]; reads and writes name buffers by id
//! ([`BlkDevice::submit_read`], [`BlkDevice::submit_write`]), which makes
//! submitting them a safe call. While a request holds a buffer it is lent
//! ([`hal::LentDmaBuffer`]: a device address, no bytes), so
//! [`BlkDevice::buffer`] and [`BlkDevice::buffer_mut`] answer `None` for it
//! and a second request cannot take it; the driver reclaims it when the
//! request's used entry is read, or when it resets the device.
//! [`BlkDevice::unregister_buffer`] gives a held buffer back for good.

use alloc::vec::Vec;

use hal::{DmaBuffer, Hal, LentDmaBuffer};

use super::BlkDevice;
use crate::transport::Transport;

/// A data buffer registered with a [`BlkDevice`] (an index into its table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId(u16);

impl BufferId {
    /// The table index.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// Who has a registered buffer.
enum Entry<H: Hal> {
    /// Never used, or unregistered.
    Vacant,
    /// The caller's: bytes can be seen.
    Held(DmaBuffer<H>),
    /// A request's: the device may be reading or writing it.
    Lent(LentDmaBuffer<H>),
}

/// The registered buffers of one device.
pub(super) struct BufferTable<H: Hal> {
    entries: Vec<Entry<H>>,
}

impl<H: Hal> BufferTable<H> {
    pub(super) const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    fn register(&mut self, buffer: DmaBuffer<H>) -> Result<BufferId, DmaBuffer<H>> {
        let index = match self.entries.iter().position(|e| matches!(e, Entry::Vacant)) {
            Some(index) => index,
            None => self.entries.len(),
        };
        let Ok(id) = u16::try_from(index) else {
            return Err(buffer);
        };
        if index == self.entries.len() {
            self.entries.push(Entry::Held(buffer));
        } else {
            self.entries[index] = Entry::Held(buffer);
        }
        Ok(BufferId(id))
    }

    fn unregister(&mut self, id: BufferId) -> Option<DmaBuffer<H>> {
        let entry = self.entries.get_mut(id.index())?;
        if !matches!(entry, Entry::Held(_)) {
            return None;
        }
        match core::mem::replace(entry, Entry::Vacant) {
            Entry::Held(buffer) => Some(buffer),
            _ => None,
        }
    }

    /// The length of held buffer `id`; `None` if unknown or lent.
    #[inline(always)]
    pub(super) fn held_len(&self, id: BufferId) -> Option<usize> {
        match self.entries.get(id.index()) {
            Some(Entry::Held(buffer)) => Some(buffer.len()),
            _ => None,
        }
    }

    fn held(&self, id: BufferId) -> Option<&DmaBuffer<H>> {
        match self.entries.get(id.index()) {
            Some(Entry::Held(buffer)) => Some(buffer),
            _ => None,
        }
    }

    fn held_mut(&mut self, id: BufferId) -> Option<&mut DmaBuffer<H>> {
        match self.entries.get_mut(id.index()) {
            Some(Entry::Held(buffer)) => Some(buffer),
            _ => None,
        }
    }

    /// Lends held buffer `id` to the device and returns its device address
    /// and length; `None` if unknown or already lent.
    #[inline(always)]
    pub(super) fn lend(&mut self, id: BufferId) -> Option<(u64, usize)> {
        let entry = self.entries.get_mut(id.index())?;
        if !matches!(entry, Entry::Held(_)) {
            return None;
        }
        let Entry::Held(buffer) = core::mem::replace(entry, Entry::Vacant) else {
            return None;
        };
        let lent = buffer.lend();
        let answer = (lent.device_addr(), lent.len());
        *entry = Entry::Lent(lent);
        Some(answer)
    }

    /// Takes lent buffer `id` back: the device is done with it (its
    /// request's used entry was read with acquire ordering, or the device
    /// was reset).
    #[inline(always)]
    pub(super) fn reclaim(&mut self, id: BufferId) {
        let Some(entry) = self.entries.get_mut(id.index()) else {
            return;
        };
        if !matches!(entry, Entry::Lent(_)) {
            return;
        }
        if let Entry::Lent(lent) = core::mem::replace(entry, Entry::Vacant) {
            *entry = Entry::Held(lent.reclaim());
        }
    }
}

impl<H: Hal, T: Transport> BlkDevice<H, T> {
    /// Registers a data buffer for [`BlkDevice::submit_read`] and
    /// [`BlkDevice::submit_write`]. Gives the buffer back if the table is
    /// full (65,536 buffers).
    pub fn register_buffer(&mut self, buffer: DmaBuffer<H>) -> Result<BufferId, DmaBuffer<H>> {
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
