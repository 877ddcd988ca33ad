//! Fixed pools of DMA buffers for the console's queues.
//!
//! A console moves a byte stream, not requests, so the driver owns its
//! buffers instead of sharing the caller's: received bytes land in pool
//! slots the device filled, bytes to send are copied into free slots. Each
//! slot goes to the device as one descriptor (virtio 1.2 §5.3.6: "each
//! buffer ... one descriptor"), and which slot a used descriptor was is
//! remembered per chain head, since the device may return them in any
//! order (§2.7.14). Nothing is allocated after the pool is made.

use alloc::vec;
use alloc::vec::Vec;

use hal::{DeviceAddr, DmaOwner, DmaRegion, Hal, HalError};

use crate::queue::Token;

/// Marks a chain head with no slot.
const NO_SLOT: u16 = u16::MAX;

/// `slots` buffers of `slot_bytes` each, in one DMA region.
pub(crate) struct BufferPool<H: Hal> {
    region: DmaRegion<H>,
    slot_bytes: usize,
    /// Per queue descriptor: the slot of the chain whose head it is.
    slot_of_head: Vec<u16>,
}

impl<H: Hal> BufferPool<H> {
    /// A pool for a queue of `queue_size` descriptors. `slots` must be
    /// below `u16::MAX` and `slots * slot_bytes` non-zero. The memory is
    /// device `owner`'s.
    pub(crate) fn new(
        owner: DmaOwner,
        slots: u16,
        slot_bytes: usize,
        queue_size: u16,
    ) -> Result<Self, HalError> {
        let bytes = (slots as usize)
            .checked_mul(slot_bytes)
            .ok_or(HalError::InvalidArgument)?;
        if slots == NO_SLOT || slot_bytes > u32::MAX as usize {
            return Err(HalError::InvalidArgument);
        }
        Ok(Self {
            region: DmaRegion::new(owner, bytes)?,
            slot_bytes,
            slot_of_head: vec![NO_SLOT; queue_size as usize],
        })
    }

    /// Bytes per slot.
    pub(crate) fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// The device address of `slot`.
    pub(crate) fn addr(&self, slot: u16) -> DeviceAddr {
        self.region.device_addr() + (slot as usize * self.slot_bytes) as u64
    }

    /// Copies `data` (at most a slot) into `slot`.
    pub(crate) fn fill(&self, slot: u16, data: &[u8]) -> bool {
        data.len() <= self.slot_bytes
            && write_wide(&self.region, slot as usize * self.slot_bytes, data)
    }

    /// Copies bytes `offset..offset + dst.len()` of `slot` out.
    pub(crate) fn copy_out(&self, slot: u16, offset: usize, dst: &mut [u8]) -> bool {
        match offset.checked_add(dst.len()) {
            Some(end) if end <= self.slot_bytes => {
                read_wide(&self.region, slot as usize * self.slot_bytes + offset, dst)
            }
            _ => false,
        }
    }

    /// Remembers that the chain headed by `token` is `slot`.
    pub(crate) fn bind(&mut self, token: Token, slot: u16) {
        if let Some(entry) = self.slot_of_head.get_mut(token.index()) {
            *entry = slot;
        }
    }

    /// The slot of the chain headed by `token`, forgetting it.
    pub(crate) fn take(&mut self, token: Token) -> Option<u16> {
        let entry = self.slot_of_head.get_mut(token.index())?;
        let slot = core::mem::replace(entry, NO_SLOT);
        (slot != NO_SLOT).then_some(slot)
    }
}

/// Bytes moved per volatile access in the middle of a copy.
const WORD: usize = core::mem::size_of::<u64>();

/// Copies `src` into `region` at `offset` with volatile accesses, eight
/// bytes at a time where the region offset is 8-aligned (a 4 KiB buffer is
/// 512 accesses, not 4096: each access to memory the device can see is
/// volatile, so the compiler cannot merge them itself).
fn write_wide<H: Hal>(region: &DmaRegion<H>, offset: usize, src: &[u8]) -> bool {
    let head = offset
        .next_multiple_of(WORD)
        .saturating_sub(offset)
        .min(src.len());
    let (start, rest) = src.split_at(head);
    if !region.write_bytes(offset, start) {
        return false;
    }
    let mut at = offset + head;
    let mut words = rest.chunks_exact(WORD);
    for word in &mut words {
        let mut bytes = [0u8; WORD];
        bytes.copy_from_slice(word);
        if !region.write::<u64>(at, u64::from_ne_bytes(bytes)) {
            return false;
        }
        at += WORD;
    }
    region.write_bytes(at, words.remainder())
}

/// Copies `dst.len()` bytes out of `region` at `offset`, like [`write_wide`].
fn read_wide<H: Hal>(region: &DmaRegion<H>, offset: usize, dst: &mut [u8]) -> bool {
    let head = offset
        .next_multiple_of(WORD)
        .saturating_sub(offset)
        .min(dst.len());
    let (start, rest) = dst.split_at_mut(head);
    if !region.read_bytes(offset, start) {
        return false;
    }
    let mut at = offset + head;
    let mut words = rest.chunks_exact_mut(WORD);
    for word in &mut words {
        let Some(value) = region.read::<u64>(at) else {
            return false;
        };
        word.copy_from_slice(&value.to_ne_bytes());
        at += WORD;
    }
    region.read_bytes(at, words.into_remainder())
}
