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
//! Memory cost: `queue size * capacity * 16` bytes, e.g. 256 KiB for a
//! 1024-entry queue with 16-entry tables.

use hal::{DeviceAddr, DmaRegion, Hal};

use super::layout::{Descriptor, DESCRIPTOR_BYTES};
use crate::queue::QueueError;

/// One indirect table per ring descriptor, preallocated in DMA memory.
pub struct IndirectPool<H: Hal> {
    region: DmaRegion<H>,
    tables: u16,
    capacity: u16,
}

impl<H: Hal> IndirectPool<H> {
    /// Allocates `tables` tables of `capacity` descriptors each (both non-zero).
    pub fn new(tables: u16, capacity: u16) -> Result<Self, QueueError> {
        if tables == 0 || capacity == 0 {
            return Err(QueueError::InvalidIndirectCapacity(capacity));
        }
        let bytes = tables as usize * capacity as usize * DESCRIPTOR_BYTES;
        let region = DmaRegion::new(bytes)?;
        Ok(Self {
            region,
            tables,
            capacity,
        })
    }

    /// Descriptors per table: the longest request that can go indirect.
    pub fn capacity(&self) -> u16 {
        self.capacity
    }

    fn table_offset(&self, table: u16) -> usize {
        table as usize * self.capacity as usize * DESCRIPTOR_BYTES
    }

    /// The device address of table `table` (what the INDIRECT descriptor points at).
    pub fn table_addr(&self, table: u16) -> DeviceAddr {
        self.region.device_addr() + self.table_offset(table) as u64
    }

    /// Writes entry `entry` of table `table`. Returns `false` (and writes
    /// nothing) if either index is out of range.
    pub fn write(&self, table: u16, entry: u16, descriptor: Descriptor) -> bool {
        if table >= self.tables || entry >= self.capacity {
            return false;
        }
        let offset = self.table_offset(table) + entry as usize * DESCRIPTOR_BYTES;
        // As words: two stores instead of four (`Descriptor::to_words`).
        let [head, tail] = descriptor.to_words();
        self.region.write(offset, head) && self.region.write(offset + 8, tail)
    }
}

impl<H: Hal> core::fmt::Debug for IndirectPool<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IndirectPool")
            .field("tables", &self.tables)
            .field("capacity", &self.capacity)
            .field(
                "device_addr",
                &format_args!("{:#x}", self.region.device_addr()),
            )
            .finish()
    }
}
