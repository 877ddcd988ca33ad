//! The pool of indirect descriptor tables (virtio 1.2 §2.7.5.3 "Indirect
//! Descriptors", feature VIRTIO_F_INDIRECT_DESC).
//!
//! An indirect request occupies a single descriptor in the ring, flagged
//! INDIRECT, whose buffer is a *table* of ordinary descriptors describing the
//! request's segments. That lets a long request (a 64-segment disk read) take
//! one ring slot instead of 64, so many more requests fit in flight.
//!
//! The tables must be in memory the device can read. Allocating one per request
//! would put an allocator on the hot path, so the pool allocates all of them
//! when the queue is created: one table per ring descriptor, `capacity` entries
//! each. An indirect request always has exactly one ring descriptor (its head),
//! so the head's id doubles as its table number and the pool needs no free
//! list of its own: when the head is free, so is its table.
//!
//! Memory cost: `queue size * capacity * 16` bytes (capacity rounded up to
//! a power of two), e.g. 256 KiB for a 1024-entry queue with 16-entry tables.

use hal::{DeviceAddr, DmaOwner, DmaRegion, Hal, RingArray, RingMemory};

use super::layout::{Descriptor, DESCRIPTOR_BYTES};
use crate::queue::QueueError;

/// All tables, as one array of descriptors (16-byte integers).
const TABLES: RingArray<u128> = RingArray::slot(0);

/// One indirect table per ring descriptor, preallocated in DMA memory.
///
/// Tables lie `2^stride_shift` descriptors apart (`capacity` rounded up to
/// a power of two), so that all of them together are one power-of-two array
/// in a [`hal::RingMemory`] and an entry is one plain 16-byte write.
pub struct IndirectPool<H: Hal> {
    memory: RingMemory<H>,
    /// Device address of table 0.
    base: DeviceAddr,
    tables: u16,
    capacity: u16,
    stride_shift: u32,
}

impl<H: Hal> IndirectPool<H> {
    /// Allocates `tables` tables of `capacity` descriptors each (both
    /// non-zero; `tables` a power of two, as a split queue's size is), for
    /// device `owner`.
    pub fn new(owner: DmaOwner, tables: u16, capacity: u16) -> Result<Self, QueueError> {
        if tables == 0 || capacity == 0 {
            return Err(QueueError::InvalidIndirectCapacity(capacity));
        }
        let stride = usize::from(capacity).next_power_of_two();
        let descriptors = usize::from(tables)
            .checked_next_power_of_two()
            .and_then(|t| t.checked_mul(stride))
            .ok_or(QueueError::InvalidIndirectCapacity(capacity))?;
        let mut memory = RingMemory::new(DmaRegion::new(owner, descriptors * DESCRIPTOR_BYTES)?);
        memory.place(TABLES, 0, descriptors)?;
        Ok(Self {
            base: memory.region().device_addr(),
            memory,
            tables,
            capacity,
            stride_shift: stride.trailing_zeros(),
        })
    }

    /// Descriptors per table: the longest request that can go indirect.
    pub fn capacity(&self) -> u16 {
        self.capacity
    }

    /// The device address of table `table` (what the INDIRECT descriptor points at).
    pub fn table_addr(&self, table: u16) -> DeviceAddr {
        let offset = (usize::from(table) << self.stride_shift) * DESCRIPTOR_BYTES;
        self.base + offset as u64
    }

    /// Writes entry `entry` of table `table`. Returns `false` (and writes
    /// nothing) if either index is out of range.
    pub fn write(&self, table: u16, entry: u16, descriptor: Descriptor) -> bool {
        if table >= self.tables || entry >= self.capacity {
            return false;
        }
        let index = (usize::from(table) << self.stride_shift) + usize::from(entry);
        // Whole: two stores instead of four (`Descriptor::to_u128`).
        self.memory.write(TABLES, index, descriptor.to_u128());
        true
    }
}

impl<H: Hal> core::fmt::Debug for IndirectPool<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IndirectPool")
            .field("tables", &self.tables)
            .field("capacity", &self.capacity)
            .field(
                "device_addr",
                &format_args!("{:#x}", self.memory.region().device_addr()),
            )
            .finish()
    }
}
