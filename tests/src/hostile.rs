//! A hostile device: writes whatever a test asks into a split queue's used
//! ring, to check that the driver treats the device as untrusted
//! (DESIGN.md "The device is not trusted"; virtio 1.2 §2.7.8 "The Virtqueue
//! Used Ring" says what a correct device writes, this one does not care).
//!
//! It reaches the rings through [`HostHal::translate`] of the device addresses
//! the driver gave it, exactly as a device would, with volatile accesses. It
//! can also read the available ring, so a test can mix legitimate completions
//! with garbage.

use drivers::queue::QueueAddresses;

use crate::host_hal::HostHal;

/// Raw, unchecked access to one queue's rings from the device side.
pub struct HostileDevice {
    addrs: QueueAddresses,
    /// The next available-ring index this device will read.
    next_avail: u16,
    /// The used index this device will publish next.
    used_idx: u16,
}

impl HostileDevice {
    /// A device given `addrs` by the driver.
    pub fn new(addrs: QueueAddresses) -> Self {
        Self {
            addrs,
            next_avail: 0,
            used_idx: 0,
        }
    }

    fn ptr(addr: u64, len: usize) -> *mut u8 {
        HostHal::translate(addr, len)
            .unwrap_or_else(|| panic!("ring address {addr:#x}+{len} not given to the device"))
    }

    fn read_u16(addr: u64) -> u16 {
        // SAFETY: `translate` checked that the two bytes belong to a live
        // HostHal range; ring fields are 2-byte aligned.
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
        // SAFETY: `translate` checked the range; used elements are 4-byte aligned.
        unsafe {
            Self::ptr(addr, 4)
                .cast::<u32>()
                .write_volatile(value.to_le())
        }
    }

    /// Heads the driver published since the last call, in ring order.
    pub fn available(&mut self) -> Vec<u16> {
        let avail_idx = Self::read_u16(self.addrs.driver + 2);
        let mut heads = Vec::new();
        while self.next_avail != avail_idx {
            let slot = (self.next_avail % self.addrs.size) as u64;
            heads.push(Self::read_u16(self.addrs.driver + 4 + 2 * slot));
            self.next_avail = self.next_avail.wrapping_add(1);
        }
        heads
    }

    /// The descriptor `id` of the table: (addr, len, flags, next).
    pub fn descriptor(&self, id: u16) -> (u64, u32, u16, u16) {
        let p = Self::ptr(self.addrs.desc + 16 * id as u64, 16);
        // SAFETY: `translate` checked the 16 bytes; the table is 16-byte aligned.
        unsafe {
            (
                u64::from_le(p.cast::<u64>().read_volatile()),
                u32::from_le(p.add(8).cast::<u32>().read_volatile()),
                u16::from_le(p.add(12).cast::<u16>().read_volatile()),
                u16::from_le(p.add(14).cast::<u16>().read_volatile()),
            )
        }
    }

    /// Writes `{id, len}` into used-ring slot `slot` (mod size) without moving the index.
    pub fn write_used_entry(&self, slot: u16, id: u32, len: u32) {
        let elem = self.addrs.device + 4 + 8 * (slot % self.addrs.size) as u64;
        Self::write_u32(elem, id);
        Self::write_u32(elem + 4, len);
    }

    /// Sets `used.idx` to any value.
    pub fn set_used_idx(&mut self, idx: u16) {
        self.used_idx = idx;
        Self::write_u16(self.addrs.device + 2, idx);
    }

    /// Appends `{id, len}` to the used ring and moves `used.idx` by one, as a
    /// correct device would, but with whatever id and len it is given.
    pub fn push_used(&mut self, id: u32, len: u32) {
        self.write_used_entry(self.used_idx, id, len);
        let next = self.used_idx.wrapping_add(1);
        self.set_used_idx(next);
    }

    /// The `used.idx` this device last wrote.
    pub fn used_idx(&self) -> u16 {
        self.used_idx
    }

    /// Sets the used ring's flags (VIRTQ_USED_F_NO_NOTIFY is bit 0).
    pub fn set_used_flags(&self, flags: u16) {
        Self::write_u16(self.addrs.device, flags);
    }

    /// Sets `avail_event` (EVENT_IDX) to any value.
    pub fn set_avail_event(&self, value: u16) {
        Self::write_u16(self.addrs.device + 4 + 8 * self.addrs.size as u64, value);
    }
}
