//! A hostile device for the packed ring: writes whatever a test asks into a
//! packed queue's descriptor ring and device event suppression structure, to
//! check that the driver treats the device as untrusted (DESIGN.md "The
//! device is not trusted"; virtio 1.2 §2.8.1 and §2.8.6 say what a correct
//! device writes, this one does not care).
//!
//! Like [`crate::hostile::HostileDevice`] it reaches the rings through
//! [`HostHal::translate`] of the device addresses the driver gave it, with
//! volatile accesses. It can also read the ring as a correct device would
//! ([`HostilePackedDevice::available`]), so a test can mix legitimate
//! completions with garbage.

use std::collections::HashMap;

use drivers::queue::QueueAddresses;

use crate::host_hal::HostHal;

/// Flag bits, from §2.8.1 / §2.8.3 / §2.8.6 / §2.8.7.
pub const F_NEXT: u16 = 1;
/// Device-writable element / data was written.
pub const F_WRITE: u16 = 2;
/// The element is an indirect table.
pub const F_INDIRECT: u16 = 4;
/// The AVAIL bit.
pub const F_AVAIL: u16 = 1 << 7;
/// The USED bit.
pub const F_USED: u16 = 1 << 15;

/// A position in the ring as this device tracks it: slot and wrap counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The slot.
    pub offset: u16,
    /// The wrap counter of that lap.
    pub wrap: bool,
}

impl Slot {
    fn advance(self, by: u16, size: u16) -> Self {
        let next = u32::from(self.offset) + u32::from(by);
        if next >= u32::from(size) {
            Slot {
                offset: (next - u32::from(size)) as u16,
                wrap: !self.wrap,
            }
        } else {
            Slot {
                offset: next as u16,
                wrap: self.wrap,
            }
        }
    }
}

/// Raw, unchecked access to one packed queue from the device side.
pub struct HostilePackedDevice {
    addrs: QueueAddresses,
    /// The next slot a correct device would read.
    next_avail: Slot,
    /// The next slot a correct device would write a used descriptor to.
    next_used: Slot,
    /// Ring descriptors per buffer id, as read by `available`.
    descriptors: HashMap<u16, u16>,
}

impl HostilePackedDevice {
    /// A device given `addrs` by the driver; both wrap counters start at 1.
    pub fn new(addrs: QueueAddresses) -> Self {
        let start = Slot {
            offset: 0,
            wrap: true,
        };
        Self {
            addrs,
            next_avail: start,
            next_used: start,
            descriptors: HashMap::new(),
        }
    }

    fn ptr(addr: u64, len: usize) -> *mut u8 {
        HostHal::translate(addr, len)
            .unwrap_or_else(|| panic!("ring address {addr:#x}+{len} not given to the device"))
    }

    fn read_u16(addr: u64) -> u16 {
        // SAFETY: `translate` checked that the two bytes belong to a live
        // HostHal range; every field used here is 2-byte aligned.
        u16::from_le(unsafe { Self::ptr(addr, 2).cast::<u16>().read_volatile() })
    }

    fn write_u16(addr: u64, value: u16) {
        // SAFETY: as for `read_u16`.
        unsafe {
            Self::ptr(addr, 2)
                .cast::<u16>()
                .write_volatile(value.to_le())
        }
    }

    fn write_u32(addr: u64, value: u32) {
        // SAFETY: `translate` checked the range; the fields are 4-byte aligned.
        unsafe {
            Self::ptr(addr, 4)
                .cast::<u32>()
                .write_volatile(value.to_le())
        }
    }

    fn read_u32(addr: u64) -> u32 {
        // SAFETY: as for `write_u32`.
        u32::from_le(unsafe { Self::ptr(addr, 4).cast::<u32>().read_volatile() })
    }

    fn slot_addr(&self, slot: u16) -> u64 {
        self.addrs.desc + 16 * u64::from(slot % self.addrs.size)
    }

    /// Descriptor `slot` of the ring: (addr, len, id, flags).
    pub fn descriptor(&self, slot: u16) -> (u64, u32, u16, u16) {
        let at = self.slot_addr(slot);
        let p = Self::ptr(at, 16);
        // SAFETY: `translate` checked the 16 bytes; the ring is 16-byte aligned.
        let addr = unsafe { u64::from_le(p.cast::<u64>().read_volatile()) };
        (
            addr,
            Self::read_u32(at + 8),
            Self::read_u16(at + 12),
            Self::read_u16(at + 14),
        )
    }

    /// Buffers the driver made available since the last call, in ring
    /// order, read as a correct device would: `(id, ring descriptors)`.
    pub fn available(&mut self) -> Vec<(u16, u16)> {
        let size = self.addrs.size;
        let mut found = Vec::new();
        loop {
            let (_, _, _, flags) = self.descriptor(self.next_avail.offset);
            let wrap = self.next_avail.wrap;
            let available = (flags & F_AVAIL != 0) == wrap && (flags & F_USED != 0) != wrap;
            if !available {
                break;
            }
            let mut at = self.next_avail;
            let mut count = 0u16;
            let id = loop {
                let (_, _, id, flags) = self.descriptor(at.offset);
                count += 1;
                at = at.advance(1, size);
                if flags & F_NEXT == 0 || count >= size {
                    break id;
                }
            };
            self.next_avail = at;
            self.descriptors.insert(id, count);
            found.push((id, count));
        }
        found
    }

    /// Writes a descriptor's id and length, then its flags, at `slot`,
    /// without moving any position.
    pub fn write_used_at(&self, slot: u16, id: u16, len: u32, flags: u16) {
        let at = self.slot_addr(slot);
        Self::write_u16(at + 12, id);
        Self::write_u32(at + 8, len);
        Self::write_u16(at + 14, flags);
    }

    /// The flags a correct device writes for a used descriptor at `slot`,
    /// with WRITE when `write` (the spec sets it when data was written).
    pub fn used_flags(slot: Slot, write: bool) -> u16 {
        let bits = if slot.wrap { F_AVAIL | F_USED } else { 0 };
        if write {
            bits | F_WRITE
        } else {
            bits
        }
    }

    /// Marks buffer `id` used at the next used slot, as a correct device
    /// would, with whatever `id` and `len`; moves on by the descriptor count
    /// `available` saw for `id` (1 if it never saw it).
    pub fn push_used(&mut self, id: u16, len: u32) {
        let skip = self.descriptors.get(&id).copied().unwrap_or(1);
        self.push_used_skipping(id, len, skip);
    }

    /// [`HostilePackedDevice::push_used`] with an explicit skip.
    pub fn push_used_skipping(&mut self, id: u16, len: u32, skip: u16) {
        self.push_used_flagged(id, len, skip, len > 0);
    }

    /// [`HostilePackedDevice::push_used`] without the WRITE flag, whatever
    /// the length: what QEMU 7.2 writes.
    pub fn push_used_without_write_flag(&mut self, id: u16, len: u32) {
        let skip = self.descriptors.get(&id).copied().unwrap_or(1);
        self.push_used_flagged(id, len, skip, false);
    }

    fn push_used_flagged(&mut self, id: u16, len: u32, skip: u16, write: bool) {
        let at = self.next_used;
        self.write_used_at(at.offset, id, len, Self::used_flags(at, write));
        self.next_used = at.advance(skip.min(self.addrs.size), self.addrs.size);
    }

    /// The next slot this device would write a used descriptor to.
    pub fn next_used(&self) -> Slot {
        self.next_used
    }

    /// The next slot this device would read.
    pub fn next_avail(&self) -> Slot {
        self.next_avail
    }

    /// Sets the device event suppression structure to anything.
    pub fn set_device_event(&self, off_wrap: u16, flags: u16) {
        Self::write_u16(self.addrs.device, off_wrap);
        Self::write_u16(self.addrs.device + 2, flags);
    }

    /// The driver event suppression structure: `(off_wrap, flags)`.
    pub fn driver_event(&self) -> (u16, u16) {
        (
            Self::read_u16(self.addrs.driver),
            Self::read_u16(self.addrs.driver + 2),
        )
    }
}
