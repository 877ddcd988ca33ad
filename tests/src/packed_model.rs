//! A virtio device's side of a packed virtqueue (virtio 1.2 §2.8), written
//! for the tests from the specification text, not from the driver.
//!
//! rust-vmm's `virtio-queue` has no packed ring, so this model is the
//! independent implementation the driver in `drivers/src/queue/packed.rs` is
//! tested against. It shares no code or constants with the driver, and it
//! keeps its state differently on purpose: where the driver keeps an offset
//! and a one-bit wrap counter, the model counts ring slots from the start
//! (`u64`) and derives the slot (`count % size`) and the wrap counter (1 in
//! even laps, 0 in odd ones) from the count. Each rule below is the spec's,
//! with its section:
//!
//! - **Available** (§2.8.1): a descriptor is available when its AVAIL bit
//!   equals the driver's wrap counter for that slot's lap and its USED bit
//!   does not. The model looks only at its next slot (§2.8.2), and checks
//!   that every descriptor of a chain is available, each with its own lap's
//!   counter (a chain may wrap), so a driver that exposes a head before its
//!   chain is written fails (§2.8.6: "the driver always makes the first
//!   descriptor in the list available after the rest").
//! - **Chains** (§2.8.6): NEXT on all but the last descriptor; the buffer id
//!   is taken from the *last* one ("Buffer ID is included in the last
//!   descriptor in the list"); at most `size` descriptors; readable before
//!   writable (§2.8.17, driver requirements for scatter-gather).
//! - **Indirect** (§2.8.7): an INDIRECT descriptor without NEXT and not inside
//!   a chain; its table is `len / 16` entries in which WRITE is the only flag
//!   the driver may set.
//! - **Used** (§2.8.1, §2.8.6, §2.8.13): the device writes `{id, len}` at its
//!   next used slot, then the flags with AVAIL = USED = its wrap counter
//!   (plus WRITE when it wrote data, §2.8.3; [`PackedModel::omit_write_flag`]
//!   makes it behave like QEMU 7.2, which never sets WRITE in a used
//!   descriptor), and moves on by the number of ring descriptors the buffer
//!   occupied. Buffers complete in any order.
//! - **Driver event suppression** (§2.8.10, read by the device): ENABLE,
//!   DISABLE, or DESC (only with EVENT_IDX): interrupt only if the used
//!   descriptors written since the last interrupt decision cover the slot
//!   and wrap counter named by `off_wrap`. The model checks that literally,
//!   slot by slot, rather than with modular arithmetic. Reserved values are
//!   a driver bug and fail the test.
//! - **Device event suppression** (written by the device): DISABLE while the
//!   device works, then ENABLE (or DESC at its next available slot with
//!   EVENT_IDX) when it wants to sleep, followed by one more look at the
//!   ring (the device's half of the race-free handshake).
//!
//! Memory is reached through [`device_memory`] (vm-memory, device
//! addresses), exactly as [`crate::vq_model::VqModel`] does, so a driver that
//! hands out a CPU pointer or a stale address fails here too.

use std::collections::HashMap;
use std::sync::atomic::{fence, Ordering};

use drivers::queue::QueueAddresses;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::vq_model::{device_memory, Chain};

// §2.8.1, §2.8.3, §2.8.6, §2.8.7: descriptor flags.
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const F_AVAIL: u16 = 1 << 7;
const F_USED: u16 = 1 << 15;
// §2.8.10: event suppression flags.
const EVENTS_ENABLE: u16 = 0;
const EVENTS_DISABLE: u16 = 1;
const EVENTS_DESC: u16 = 2;

/// Counters the model keeps (the same meaning as [`crate::vq_model::ModelStats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackedModelStats {
    /// Buffers taken from the ring.
    pub chains: u64,
    /// Of those, through an indirect table.
    pub indirect_chains: u64,
    /// Of those, whose descriptors ran past the end of the ring into slot 0.
    pub chains_across_the_end: u64,
    /// Publishes that found the device asleep (a notification was needed).
    pub notifications_needed: u64,
    /// Notifications the driver sent.
    pub notifications_received: u64,
    /// Needed but not sent: the device would sleep with work pending.
    pub notifications_missed: u64,
    /// Sent while the device was awake.
    pub notifications_spurious: u64,
    /// Used-buffer notifications (interrupts) the device sent.
    pub interrupts_sent: u64,
    /// Decisions where the driver's suppression state said "no interrupt".
    pub interrupts_suppressed: u64,
    /// Of the interrupts, decided by a DESC event (EVENT_IDX).
    pub interrupts_by_desc_event: u64,
}

/// One descriptor as read from memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RawDescriptor {
    addr: u64,
    len: u32,
    id: u16,
    flags: u16,
}

/// The device side of one packed queue. See the module documentation.
pub struct PackedModel {
    addrs: QueueAddresses,
    size: u64,
    event_idx: bool,
    /// Ring slots read as available since the start.
    slots_read: u64,
    /// Ring slots covered by used descriptors since the start.
    slots_used: u64,
    /// `slots_used` at the last interrupt decision.
    slots_used_at_signal: u64,
    /// Buffer id -> ring descriptors it occupies, for buffers taken and not
    /// yet returned.
    outstanding: HashMap<u16, u64>,
    asleep: bool,
    /// Set WRITE in used descriptors that report data (the spec's way).
    write_flag_in_used: bool,
    /// What the model saw and did.
    pub stats: PackedModelStats,
}

impl PackedModel {
    /// A device the driver has just given `addrs`, with
    /// VIRTIO_F_RING_EVENT_IDX on or off. Panics on misaligned areas
    /// (§2.8.10.1: descriptor ring 16, event suppression structures 4) or
    /// areas outside memory the driver gave the device.
    pub fn new(addrs: QueueAddresses, event_idx: bool) -> Self {
        assert!(
            (1..=32768).contains(&addrs.size),
            "queue size {} out of range",
            addrs.size
        );
        assert_eq!(addrs.desc % 16, 0, "descriptor ring alignment");
        assert_eq!(addrs.driver % 4, 0, "driver area alignment");
        assert_eq!(addrs.device % 4, 0, "device area alignment");
        let mem = device_memory();
        let mut ring = vec![0u8; 16 * addrs.size as usize];
        mem.read_slice(&mut ring, GuestAddress(addrs.desc))
            .expect("descriptor ring inside device memory");
        assert!(
            ring.iter().all(|&b| b == 0),
            "§2.8.13: the descriptor ring is zero-initialized"
        );
        let _: u32 = mem
            .read_obj(GuestAddress(addrs.driver))
            .expect("driver area inside device memory");
        let _: u32 = mem
            .read_obj(GuestAddress(addrs.device))
            .expect("device area inside device memory");
        Self {
            addrs,
            size: u64::from(addrs.size),
            event_idx,
            slots_read: 0,
            slots_used: 0,
            slots_used_at_signal: 0,
            outstanding: HashMap::new(),
            // Zeroed memory: device event flags ENABLE, i.e. waiting for a
            // notification.
            asleep: true,
            write_flag_in_used: true,
            stats: PackedModelStats::default(),
        }
    }

    /// Never set WRITE in used descriptors, as QEMU 7.2 does (the driver
    /// must take the length anyway).
    pub fn omit_write_flag(&mut self) {
        self.write_flag_in_used = false;
    }

    /// The addresses the model was given.
    pub fn addresses(&self) -> QueueAddresses {
        self.addrs
    }

    /// `true` while the device waits for a notification.
    pub fn is_asleep(&self) -> bool {
        self.asleep
    }

    /// Ring slots the device has read as available, since the start.
    pub fn slots_read(&self) -> u64 {
        self.slots_read
    }

    /// Ring slots covered by used descriptors, since the start.
    pub fn slots_used(&self) -> u64 {
        self.slots_used
    }

    /// Complete laps of the ring the device's used position has made.
    pub fn laps(&self) -> u64 {
        self.slots_used / self.size
    }

    /// The wrap counter for slot count `count` (1 in the first lap, §2.8.1).
    fn wrap_of(&self, count: u64) -> bool {
        (count / self.size).is_multiple_of(2)
    }

    fn slot_addr(&self, count: u64) -> GuestAddress {
        GuestAddress(self.addrs.desc + 16 * (count % self.size))
    }

    fn read_descriptor(mem: &GuestMemoryMmap, at: GuestAddress) -> RawDescriptor {
        let mut raw = [0u8; 16];
        mem.read_slice(&mut raw, at)
            .expect("descriptor ring reachable");
        RawDescriptor {
            addr: u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes")),
            id: u16::from_le_bytes(raw[12..14].try_into().expect("2 bytes")),
            flags: u16::from_le_bytes(raw[14..16].try_into().expect("2 bytes")),
        }
    }

    /// §2.8.1: available in the lap of slot count `count`.
    fn is_available(&self, flags: u16, count: u64) -> bool {
        let wrap = self.wrap_of(count);
        (flags & F_AVAIL != 0) == wrap && (flags & F_USED != 0) != wrap
    }

    /// Records one `publish` by the driver and whether it notified (see
    /// [`crate::vq_model::VqModel::driver_published`]).
    pub fn driver_published(&mut self, notified: bool) {
        let needed = self.asleep;
        if needed {
            self.stats.notifications_needed += 1;
            if !notified {
                self.stats.notifications_missed += 1;
            }
        }
        if notified {
            self.stats.notifications_received += 1;
            if !needed {
                self.stats.notifications_spurious += 1;
            }
            self.asleep = false;
            self.write_device_event(0, EVENTS_DISABLE);
        }
    }

    fn write_device_event(&self, off_wrap: u16, flags: u16) {
        let word = u32::from(off_wrap) | (u32::from(flags) << 16);
        device_memory()
            .write_obj(word.to_le(), GuestAddress(self.addrs.device))
            .expect("device area reachable");
    }

    /// Takes every buffer the driver has made available, in ring order,
    /// reading the readable data and noting the writable buffers. `head` of
    /// each returned [`Chain`] is the buffer id.
    pub fn take_available(&mut self) -> Vec<Chain> {
        let mem = device_memory();
        let mut chains = Vec::new();
        loop {
            let first = Self::read_descriptor(&mem, self.slot_addr(self.slots_read));
            if !self.is_available(first.flags, self.slots_read) {
                break;
            }
            fence(Ordering::Acquire);
            let (chain, slots) = self.read_chain(&mem);
            let id = chain.head;
            assert!(
                self.outstanding.insert(id, slots).is_none(),
                "buffer id {id} made available again while the device still has it"
            );
            if (self.slots_read % self.size) + slots > self.size {
                self.stats.chains_across_the_end += 1;
            }
            self.slots_read += slots;
            self.stats.chains += 1;
            if chain.indirect {
                self.stats.indirect_chains += 1;
            }
            chains.push(chain);
        }
        chains
    }

    /// Reads the chain starting at `slots_read`; returns it and its ring
    /// descriptor count.
    fn read_chain(&self, mem: &GuestMemoryMmap) -> (Chain, u64) {
        let start = self.slots_read;
        let mut chain = Chain {
            head: 0,
            indirect: false,
            descriptors: 0,
            readable: Vec::new(),
            writable: Vec::new(),
        };
        let mut slots = 0u64;
        loop {
            let count = start + slots;
            let desc = Self::read_descriptor(mem, self.slot_addr(count));
            assert!(
                self.is_available(desc.flags, count),
                "descriptor {slots} of the chain at slot {} is not available (flags {:#06x}): the head was exposed before its chain",
                start % self.size,
                desc.flags
            );
            slots += 1;
            if desc.flags & F_INDIRECT != 0 {
                assert_eq!(slots, 1, "INDIRECT inside a NEXT chain (§2.8.7)");
                assert_eq!(desc.flags & F_NEXT, 0, "INDIRECT together with NEXT");
                chain.indirect = true;
                self.read_indirect_table(mem, &desc, &mut chain);
            } else {
                Self::take_element(
                    mem,
                    desc.addr,
                    desc.len,
                    desc.flags & F_WRITE != 0,
                    &mut chain,
                );
            }
            if desc.flags & F_NEXT == 0 {
                chain.head = desc.id; // §2.8.6: the id is in the last descriptor
                break;
            }
            assert!(
                slots < self.size,
                "chain at slot {} longer than the queue size",
                start % self.size
            );
        }
        assert!(chain.descriptors > 0, "empty chain");
        (chain, slots)
    }

    fn read_indirect_table(&self, mem: &GuestMemoryMmap, desc: &RawDescriptor, chain: &mut Chain) {
        assert!(
            desc.len > 0 && desc.len.is_multiple_of(16),
            "indirect table length {} is not a whole number of descriptors",
            desc.len
        );
        let entries = desc.len / 16;
        assert!(
            u64::from(entries) <= self.size,
            "indirect table of {entries} entries exceeds the queue size"
        );
        for i in 0..u64::from(entries) {
            let entry = Self::read_descriptor(mem, GuestAddress(desc.addr + 16 * i));
            assert_eq!(
                entry.flags & !F_WRITE,
                0,
                "indirect entry {i} has flags {:#06x}: only WRITE is allowed (§2.8.7)",
                entry.flags
            );
            Self::take_element(
                mem,
                entry.addr,
                entry.len,
                entry.flags & F_WRITE != 0,
                chain,
            );
        }
    }

    fn take_element(mem: &GuestMemoryMmap, addr: u64, len: u32, writable: bool, chain: &mut Chain) {
        chain.descriptors += 1;
        if writable {
            chain.writable.push((addr, len));
        } else {
            assert!(
                chain.writable.is_empty(),
                "device-readable element after a writable one"
            );
            let mut buf = vec![0u8; len as usize];
            mem.read_slice(&mut buf, GuestAddress(addr))
                .unwrap_or_else(|e| panic!("readable element {addr:#x}+{len} unreachable: {e}"));
            chain.readable.extend_from_slice(&buf);
        }
    }

    /// Writes `data` into the chain's writable elements (it must fit) and
    /// marks the buffer used with `len = data.len()`.
    pub fn complete(&mut self, chain: &Chain, data: &[u8]) {
        assert!(
            data.len() as u64 <= u64::from(chain.writable_len()),
            "response larger than the buffers"
        );
        let mem = device_memory();
        let mut rest = data;
        for &(addr, len) in &chain.writable {
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(len as usize);
            mem.write_slice(&rest[..n], GuestAddress(addr))
                .unwrap_or_else(|e| panic!("writable element {addr:#x}+{len} unreachable: {e}"));
            rest = &rest[n..];
        }
        self.complete_with_len(chain.head, data.len() as u32);
    }

    /// Writes a used descriptor for buffer `id` at the next used slot and
    /// moves on by the buffer's descriptor count (§2.8.6).
    pub fn complete_with_len(&mut self, id: u16, len: u32) {
        let slots = self
            .outstanding
            .remove(&id)
            .unwrap_or_else(|| panic!("the device does not have buffer id {id}"));
        let mem = device_memory();
        let at = self.slot_addr(self.slots_used);
        mem.write_obj(id.to_le(), GuestAddress(at.0 + 12))
            .expect("ring reachable");
        mem.write_obj(len.to_le(), GuestAddress(at.0 + 8))
            .expect("ring reachable");
        let mut flags = if self.wrap_of(self.slots_used) {
            F_AVAIL | F_USED
        } else {
            0
        };
        if len > 0 && self.write_flag_in_used {
            flags |= F_WRITE;
        }
        // The id and length before the flags that make them valid.
        fence(Ordering::Release);
        mem.write_obj(flags.to_le(), GuestAddress(at.0 + 14))
            .expect("ring reachable");
        self.slots_used += slots;
        assert!(
            self.slots_used <= self.slots_read,
            "used more slots than were made available"
        );
    }

    /// The driver event suppression structure: `(off_wrap, flags)`.
    pub fn driver_event(&self) -> (u16, u16) {
        let word: u32 = device_memory()
            .read_obj(GuestAddress(self.addrs.driver))
            .expect("driver area reachable");
        let word = u32::from_le(word);
        (word as u16, (word >> 16) as u16)
    }

    /// The device event suppression structure: `(off_wrap, flags)`.
    pub fn device_event(&self) -> (u16, u16) {
        let word: u32 = device_memory()
            .read_obj(GuestAddress(self.addrs.device))
            .expect("device area reachable");
        let word = u32::from_le(word);
        (word as u16, (word >> 16) as u16)
    }

    /// After a batch of completions: would the device interrupt the driver?
    /// Reads the driver event suppression structure; `false` if nothing was
    /// used since the last decision. Counts the answer.
    pub fn signal_used(&mut self) -> bool {
        let (old, new) = (self.slots_used_at_signal, self.slots_used);
        self.slots_used_at_signal = new;
        if old == new {
            return false;
        }
        let (off_wrap, flags) = self.driver_event();
        assert_eq!(
            flags & !3,
            0,
            "reserved driver event flag bits set: {flags:#06x}"
        );
        let interrupt = match flags {
            EVENTS_ENABLE => true,
            EVENTS_DISABLE => false,
            EVENTS_DESC => {
                assert!(
                    self.event_idx,
                    "DESC event suppression without VIRTIO_F_RING_EVENT_IDX"
                );
                let offset = u64::from(off_wrap & 0x7fff);
                let wrap = off_wrap & 0x8000 != 0;
                assert!(
                    offset < self.size,
                    "DESC event offset {offset} outside the ring"
                );
                // Did one of the slots just covered by used descriptors have
                // this offset in a lap with this wrap counter?
                let hit = (old..new)
                    .any(|count| count % self.size == offset && self.wrap_of(count) == wrap);
                if hit {
                    self.stats.interrupts_by_desc_event += 1;
                }
                hit
            }
            other => panic!("reserved driver event flags value {other}"),
        };
        if interrupt {
            self.stats.interrupts_sent += 1;
        } else {
            self.stats.interrupts_suppressed += 1;
        }
        interrupt
    }

    /// The device has taken everything and wants to sleep: it re-enables
    /// notifications (DESC at its next slot with EVENT_IDX, else ENABLE) and
    /// looks at the ring once more. Returns `true` if it went to sleep;
    /// `false` if work arrived meanwhile (notifications off again, awake).
    pub fn try_sleep(&mut self) -> bool {
        let next = self.slots_read;
        if self.event_idx {
            let off_wrap = (next % self.size) as u16 | (u16::from(self.wrap_of(next)) << 15);
            self.write_device_event(off_wrap, EVENTS_DESC);
        } else {
            self.write_device_event(0, EVENTS_ENABLE);
        }
        fence(Ordering::SeqCst);
        let mem = device_memory();
        let desc = Self::read_descriptor(&mem, self.slot_addr(next));
        if self.is_available(desc.flags, next) {
            self.write_device_event(0, EVENTS_DISABLE);
            false
        } else {
            self.asleep = true;
            true
        }
    }

    /// Puts the device event suppression structure in any state (for tests
    /// of the driver's notification decision).
    pub fn set_device_event(&self, off_wrap: u16, flags: u16) {
        self.write_device_event(off_wrap, flags);
    }

    /// The raw flags of slot `slot`.
    pub fn slot_flags(&self, slot: u16) -> u16 {
        let desc = Self::read_descriptor(&device_memory(), self.slot_addr(u64::from(slot)));
        desc.flags
    }
}
