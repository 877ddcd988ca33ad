//! The split ring's memory, read and written field by field (virtio 1.2
//! §2.7.5 "The Virtqueue Descriptor Table", §2.7.6 "The Virtqueue Available
//! Ring", §2.7.8 "The Virtqueue Used Ring", and the event index fields of
//! §2.7.7 and §2.7.10).
//!
//! [`SplitRingMemory`] owns the queue's DMA region as a [`hal::RingMemory`]:
//! each ring part and each index or flags field is a named array, placed once
//! at the offsets [`super::layout`] computes. The three rings are `size`
//! entries long, a power of two, so a free-running 16-bit index picks its
//! slot by a mask, inside `hal`, with no bounds check and no `unsafe` here;
//! the single fields are one-element arrays, read and written at index 0.
//! Everything is little-endian in memory and converted here.

use hal::{DeviceAddr, DmaOwner, DmaRegion, Hal, RingArray, RingMemory};

use super::layout::{avail, used, Descriptor, SplitRingLayout, USED_ELEM_BYTES};
use crate::queue::QueueError;

/// Available ring flag: the driver does not want used-buffer notifications.
pub(super) const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device does not want available-buffer notifications.
pub(super) const USED_F_NO_NOTIFY: u16 = 1;

/// The descriptor table, one 16-byte integer per descriptor.
const DESCRIPTORS: RingArray<u128> = RingArray::slot(0);
/// `avail.flags`.
const AVAIL_FLAGS: RingArray<u16> = RingArray::slot(0);
/// `avail.idx`.
const AVAIL_IDX: RingArray<u16> = RingArray::slot(1);
/// `avail.ring[size]`.
const AVAIL_RING: RingArray<u16> = RingArray::slot(2);
/// `used_event`, after the available ring.
const USED_EVENT: RingArray<u16> = RingArray::slot(3);
/// `used.flags`.
const USED_FLAGS: RingArray<u16> = RingArray::slot(4);
/// `used.idx`.
const USED_IDX: RingArray<u16> = RingArray::slot(5);
/// `avail_event`, after the used ring.
const AVAIL_EVENT: RingArray<u16> = RingArray::slot(6);
/// `used.ring[size]`, as two 4-byte words (`id`, `len`) per element.
const USED_RING_WORDS: RingArray<u32> = RingArray::slot(0);

/// A split ring's memory. See the module documentation.
pub(super) struct SplitRingMemory<H: Hal> {
    memory: RingMemory<H>,
}

impl<H: Hal> SplitRingMemory<H> {
    /// Allocates zeroed memory for `layout`, for device `owner`, and names its fields.
    pub(super) fn new(owner: DmaOwner, layout: &SplitRingLayout) -> Result<Self, QueueError> {
        let size = usize::from(layout.size);
        let mut memory = RingMemory::new(DmaRegion::<H>::new(owner, layout.total_bytes)?);
        let (a, u) = (layout.avail_offset, layout.used_offset);
        memory.place(DESCRIPTORS, layout.desc_offset, size)?;
        memory.place(AVAIL_FLAGS, a + avail::FLAGS, 1)?;
        memory.place(AVAIL_IDX, a + avail::IDX, 1)?;
        memory.place(AVAIL_RING, a + avail::RING, size)?;
        memory.place(USED_EVENT, a + avail::used_event(layout.size), 1)?;
        memory.place(USED_FLAGS, u + used::FLAGS, 1)?;
        memory.place(USED_IDX, u + used::IDX, 1)?;
        memory.place(USED_RING_WORDS, u + used::RING, 2 * size)?;
        memory.place(AVAIL_EVENT, u + used::avail_event(layout.size), 1)?;
        Ok(Self { memory })
    }

    /// The device address of byte 0.
    pub(super) fn device_addr(&self) -> DeviceAddr {
        self.memory.region().device_addr()
    }

    /// Zeroes the whole region (a reset queue's memory is a new queue's).
    pub(super) fn zero(&self) {
        let region = self.memory.region();
        for offset in (0..region.len()).step_by(8) {
            region.write::<u64>(offset, 0);
        }
    }

    /// Writes descriptor `id` (taken modulo the size) whole
    /// ([`Descriptor::to_u128`]: two stores instead of four).
    #[inline]
    pub(super) fn write_descriptor(&self, id: u16, descriptor: Descriptor) {
        self.memory
            .write(DESCRIPTORS, usize::from(id), descriptor.to_u128());
    }

    /// `avail.ring[slot mod size] = head`.
    #[inline]
    pub(super) fn write_avail_slot(&self, slot: u16, head: u16) {
        self.memory
            .write(AVAIL_RING, usize::from(slot), head.to_le());
    }

    #[inline]
    pub(super) fn write_avail_idx(&self, idx: u16) {
        self.memory.write(AVAIL_IDX, 0, idx.to_le());
    }

    #[inline]
    pub(super) fn write_avail_flags(&self, flags: u16) {
        self.memory.write(AVAIL_FLAGS, 0, flags.to_le());
    }

    #[inline]
    pub(super) fn write_used_event(&self, value: u16) {
        self.memory.write(USED_EVENT, 0, value.to_le());
    }

    #[inline]
    pub(super) fn read_used_flags(&self) -> u16 {
        u16::from_le(self.memory.read(USED_FLAGS, 0))
    }

    #[inline]
    pub(super) fn read_used_idx(&self) -> u16 {
        u16::from_le(self.memory.read(USED_IDX, 0))
    }

    #[inline]
    pub(super) fn read_avail_event(&self) -> u16 {
        u16::from_le(self.memory.read(AVAIL_EVENT, 0))
    }

    // ----- read back for the live view (`split/snapshot.rs`) -----

    /// `avail.idx` as in memory.
    pub(super) fn read_avail_idx(&self) -> u16 {
        u16::from_le(self.memory.read(AVAIL_IDX, 0))
    }

    /// `avail.flags` as in memory.
    pub(super) fn read_avail_flags(&self) -> u16 {
        u16::from_le(self.memory.read(AVAIL_FLAGS, 0))
    }

    /// `used_event` as in memory.
    pub(super) fn read_used_event(&self) -> u16 {
        u16::from_le(self.memory.read(USED_EVENT, 0))
    }

    /// `avail.ring[slot mod size]`.
    pub(super) fn read_avail_slot(&self, slot: u16) -> u16 {
        u16::from_le(self.memory.read(AVAIL_RING, usize::from(slot)))
    }

    /// The `flags` of descriptor `id` (taken modulo the size), as in memory.
    pub(super) fn read_descriptor_flags(&self, id: u16) -> u16 {
        let bytes = self.memory.read(DESCRIPTORS, usize::from(id)).to_ne_bytes();
        // `struct virtq_desc`: le64 addr, le32 len, le16 flags, le16 next.
        u16::from_le_bytes([bytes[12], bytes[13]])
    }

    /// The `{id, len}` pair in used-ring slot `slot` (taken modulo the size).
    #[inline]
    pub(super) fn read_used_elem(&self, slot: u16) -> (u32, u32) {
        const _: () = assert!(USED_ELEM_BYTES == 2 * core::mem::size_of::<u32>());
        let word = 2 * usize::from(slot);
        (
            u32::from_le(self.memory.read(USED_RING_WORDS, word)),
            u32::from_le(self.memory.read(USED_RING_WORDS, word + 1)),
        )
    }
}
