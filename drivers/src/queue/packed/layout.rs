//! The packed ring in memory: descriptor and event-suppression formats,
//! where the three areas lie, the ring wrap counters, and the volatile
//! accesses to ring memory (virtio 1.2 §2.8.1 "Driver and Device Ring Wrap
//! Counters", §2.8.2 "Structure Size and Alignment", §2.8.13 "Packed
//! Virtqueue Layout" / "The Virtqueue Descriptor Format", §2.8.14 "Event
//! Suppression Structure Format").
//!
//! | area (spec name)                          | written by | alignment | bytes     |
//! |-------------------------------------------|------------|-----------|-----------|
//! | descriptor ring (descriptor area)         | both       | 16        | 16 * size |
//! | driver event suppression (driver area)    | driver     | 4         | 4         |
//! | device event suppression (device area)    | device     | 4         | 4         |
//!
//! All ring memory goes through [`hal::DmaRegion`]'s bounds-checked volatile
//! reads and writes of plain integers; a queue size need not be a power of
//! two here, so there is no index mask to lean on.

use core::fmt;

use hal::Hal;

use super::PackedQueue;
use crate::queue::{QueueError, RingLayout, MAX_QUEUE_SIZE};

/// Descriptor flag bits of the packed ring (§2.8.1, §2.8.3, §2.8.6, §2.8.7).
pub mod desc_flags {
    /// The buffer continues in the next ring slot.
    pub const NEXT: u16 = 1;
    /// Available: the device writes this element. Used: the device wrote data
    /// (§2.8.3; QEMU does not set it, so the driver does not rely on it).
    pub const WRITE: u16 = 2;
    /// The element is a table of descriptors (§2.8.7).
    pub const INDIRECT: u16 = 4;
    /// Available bit: the driver writes its wrap counter here.
    pub const AVAIL: u16 = 1 << 7;
    /// Used bit: the driver writes the inverse of its wrap counter, the
    /// device its own wrap counter.
    pub const USED: u16 = 1 << 15;
}

/// Values of the event suppression `flags` field (§2.8.10).
pub mod event_flags {
    /// Send every notification.
    pub const ENABLE: u16 = 0;
    /// Send none.
    pub const DISABLE: u16 = 1;
    /// Only for the descriptor named by `off_wrap` (VIRTIO_F_RING_EVENT_IDX).
    pub const DESC: u16 = 2;
    /// The two bits that hold the value; the other 14 are reserved.
    pub const MASK: u16 = 3;
}

/// Bytes per descriptor (`struct pvirtq_desc`: le64 addr, le32 len, le16 id, le16 flags).
pub const DESCRIPTOR_BYTES: usize = 16;
/// Bytes of one event suppression structure (`struct pvirtq_event_suppress`).
pub const EVENT_SUPPRESSION_BYTES: usize = 4;
/// Where the layout starts the device area: a cache line of its own, so the
/// line the device writes is never one the driver writes as well.
pub const DEVICE_AREA_ALIGN: usize = 64;

/// Byte offsets inside a descriptor.
const DESC_ADDR: usize = 0;
const DESC_LEN: usize = 8;
const DESC_ID: usize = 12;
const DESC_FLAGS: usize = 14;

/// One packed-ring descriptor exactly as the device reads it (`struct
/// pvirtq_desc`). Fields are stored little-endian; [`PackedDescriptor::new`]
/// converts. Also the format of an indirect table entry (§2.8.7), where
/// only WRITE is a valid flag and the id is ignored.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackedDescriptor {
    /// Device address of the element (unused in a used descriptor).
    pub addr: u64,
    /// Length of the element; in a used descriptor, the bytes written.
    pub len: u32,
    /// Buffer id.
    pub id: u16,
    /// [`desc_flags`] bits.
    pub flags: u16,
}

impl PackedDescriptor {
    /// A descriptor in device (little-endian) byte order.
    pub const fn new(addr: u64, len: u32, id: u16, flags: u16) -> Self {
        Self {
            addr: addr.to_le(),
            len: len.to_le(),
            id: id.to_le(),
            flags: flags.to_le(),
        }
    }
}

impl PackedDescriptor {
    /// The descriptor's 16 bytes as two 8-byte words with the same memory
    /// image (see the split ring's `Descriptor::to_words`): two plain-integer
    /// stores instead of four.
    pub fn to_words(self) -> [u64; 2] {
        // `len`, `id` and `flags` already hold device byte order, so their
        // in-memory bytes go side by side, in field order.
        let (len, id, flags) = (
            u64::from(self.len),
            u64::from(self.id),
            u64::from(self.flags),
        );
        let tail = if cfg!(target_endian = "little") {
            len | id << 32 | flags << 48
        } else {
            len << 32 | id << 16 | flags
        };
        [self.addr, tail]
    }
}

const _: () = assert!(core::mem::size_of::<PackedDescriptor>() == DESCRIPTOR_BYTES);

/// The byte offsets of a packed ring's three parts within one allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedRingLayout {
    /// Number of descriptors.
    pub size: u16,
    /// Offset of the descriptor ring (0: it needs the strictest alignment).
    pub desc_offset: usize,
    /// Offset of the driver event suppression structure (the driver area).
    pub driver_offset: usize,
    /// Offset of the device event suppression structure (the device area).
    pub device_offset: usize,
    /// Bytes the whole block needs.
    pub total_bytes: usize,
}

impl PackedRingLayout {
    /// Computes the layout. The packed ring exists only on virtio 1.0+
    /// transports, which take three separate addresses; a legacy
    /// ([`RingLayout::Contiguous`]) transport cannot have one.
    pub fn new(size: u16, layout: RingLayout) -> Result<Self, QueueError> {
        if !is_valid_packed_size(size) {
            return Err(QueueError::InvalidSize(size));
        }
        if layout != RingLayout::Separate {
            return Err(QueueError::PackedRingNeedsSeparateLayout);
        }
        let driver_offset = DESCRIPTOR_BYTES * size as usize;
        let driver_end = driver_offset + EVENT_SUPPRESSION_BYTES;
        let device_offset = driver_end.next_multiple_of(DEVICE_AREA_ALIGN);
        Ok(Self {
            size,
            desc_offset: 0,
            driver_offset,
            device_offset,
            total_bytes: device_offset + EVENT_SUPPRESSION_BYTES,
        })
    }
}

/// A packed-ring queue size: 1 to 32768, any value (§2.8.10.1: "The Queue
/// Size value does not have to be a power of 2").
pub fn is_valid_packed_size(size: u16) -> bool {
    (1..=MAX_QUEUE_SIZE).contains(&size)
}

/// Picks a packed queue size: as large as the device allows, up to
/// `driver_cap`, not rounded (compare [`crate::queue::choose_queue_size`]). With
/// `fixed` the device's maximum is the only choice.
pub fn choose_packed_queue_size(
    device_max: u16,
    driver_cap: u16,
    fixed: bool,
) -> Result<u16, QueueError> {
    if device_max == 0 {
        return Err(QueueError::NoSuchQueue);
    }
    let size = if fixed {
        device_max
    } else {
        device_max.min(driver_cap).min(MAX_QUEUE_SIZE)
    };
    if is_valid_packed_size(size) {
        Ok(size)
    } else if fixed {
        Err(QueueError::InvalidSize(device_max))
    } else {
        Err(QueueError::InvalidSize(driver_cap))
    }
}

/// A slot of the descriptor ring together with the wrap counter that goes
/// with it: where one side will write, or expects the other side's next
/// descriptor. Both counters start at [`RingPosition::START`] (slot 0, wrap 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingPosition {
    /// The slot, below the queue size.
    pub offset: u16,
    /// The ring wrap counter for this lap.
    pub wrap: bool,
}

impl RingPosition {
    /// Where both sides start (§2.8.1: "a single-bit ring wrap counter initialized to 1").
    pub const START: Self = Self {
        offset: 0,
        wrap: true,
    };

    /// The position `by` slots further on (`by <= size`), flipping the wrap
    /// counter when it passes the end of the ring.
    pub fn advance(self, by: u16, size: u16) -> Self {
        let next = u32::from(self.offset) + u32::from(by);
        if next >= u32::from(size) {
            Self {
                offset: (next - u32::from(size)) as u16,
                wrap: !self.wrap,
            }
        } else {
            Self {
                offset: next as u16,
                wrap: self.wrap,
            }
        }
    }

    /// The `off_wrap` word of an event suppression structure naming this
    /// position: offset in bits 0-14, wrap counter in bit 15.
    pub fn event_word(self) -> u16 {
        (self.offset & 0x7fff) | (u16::from(self.wrap) << 15)
    }

    /// The position an `off_wrap` word names (the offset is not checked).
    pub fn from_event_word(word: u16) -> Self {
        Self {
            offset: word & 0x7fff,
            wrap: word & 0x8000 != 0,
        }
    }

    /// The position modulo two laps, `0..2 * size`: the offset in a lap
    /// with wrap counter 1 (the first, third, ...), offset + size in one
    /// with wrap counter 0. Differences of these values, taken modulo
    /// `2 * size`, count slots between positions less than two laps apart.
    pub fn linear(self, size: u16) -> u32 {
        u32::from(self.offset) + if self.wrap { 0 } else { u32::from(size) }
    }

    /// The AVAIL/USED bits the driver writes to make the descriptor at this
    /// position available: AVAIL = wrap counter, USED = its inverse.
    pub fn available_bits(self) -> u16 {
        if self.wrap {
            desc_flags::AVAIL
        } else {
            desc_flags::USED
        }
    }

    /// `true` if `flags` mark a descriptor *used* in this position's lap:
    /// AVAIL and USED both equal to the wrap counter.
    pub fn is_used(self, flags: u16) -> bool {
        let avail = flags & desc_flags::AVAIL != 0;
        let used = flags & desc_flags::USED != 0;
        avail == self.wrap && used == self.wrap
    }
}

impl fmt::Display for RingPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (wrap {})", self.offset, u8::from(self.wrap))
    }
}

impl<H: Hal> PackedQueue<H> {
    fn slot_offset(&self, slot: u16) -> usize {
        debug_assert!(slot < self.size);
        self.layout.desc_offset + DESCRIPTOR_BYTES * slot as usize
    }

    /// Writes everything of a descriptor but its flags.
    pub(super) fn write_descriptor_body(&self, slot: u16, addr: u64, len: u32, id: u16) {
        let at = self.slot_offset(slot);
        let written = self.ring.write(at + DESC_ADDR, addr.to_le())
            && self.ring.write(at + DESC_LEN, len.to_le())
            && self.ring.write(at + DESC_ID, id.to_le());
        debug_assert!(written, "descriptor slot {slot} outside the ring");
    }

    pub(super) fn write_descriptor_flags(&self, slot: u16, flags: u16) {
        let written = self
            .ring
            .write(self.slot_offset(slot) + DESC_FLAGS, flags.to_le());
        debug_assert!(written, "descriptor slot {slot} outside the ring");
    }

    /// The flags of the descriptor in `slot`. An impossible out-of-range read
    /// gives flags that never look used.
    pub(super) fn read_descriptor_flags(&self, slot: u16) -> u16 {
        self.ring
            .read::<u16>(self.slot_offset(slot) + DESC_FLAGS)
            .map_or(desc_flags::AVAIL, u16::from_le)
    }

    /// `(id, len)` of the descriptor in `slot`.
    pub(super) fn read_descriptor_id_len(&self, slot: u16) -> (u16, u32) {
        let at = self.slot_offset(slot);
        let id = self
            .ring
            .read::<u16>(at + DESC_ID)
            .map_or(u16::MAX, u16::from_le);
        let len = self.ring.read::<u32>(at + DESC_LEN).map_or(0, u32::from_le);
        (id, len)
    }

    /// Writes the driver event suppression structure in one 32-bit store, so
    /// the device never sees a new `flags` with an old `off_wrap`.
    pub(super) fn write_driver_event(&self, off_wrap: u16, flags: u16) {
        let word = u32::from(off_wrap) | (u32::from(flags) << 16);
        let written = self.ring.write(self.layout.driver_offset, word.to_le());
        debug_assert!(written, "driver area outside the ring");
    }

    /// Reads the driver event suppression structure back (the live view):
    /// `(off_wrap, flags)`.
    pub(super) fn read_driver_event(&self) -> (u16, u16) {
        let word = self
            .ring
            .read::<u32>(self.layout.driver_offset)
            .map_or(0, u32::from_le);
        (word as u16, (word >> 16) as u16)
    }

    /// Reads the device event suppression structure in one 32-bit load:
    /// `(off_wrap, flags)`.
    pub(super) fn read_device_event(&self) -> (u16, u16) {
        let word = self
            .ring
            .read::<u32>(self.layout.device_offset)
            .map_or(0, u32::from_le);
        (word as u16, (word >> 16) as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{QueueError, RingLayout};

    #[test]
    fn positions_advance_and_flip_the_wrap_counter_at_the_end() {
        let p = RingPosition::START.advance(5, 7);
        assert_eq!(
            p,
            RingPosition {
                offset: 5,
                wrap: true
            }
        );
        let q = p.advance(3, 7);
        assert_eq!(
            q,
            RingPosition {
                offset: 1,
                wrap: false
            }
        );
        assert_eq!(
            q.advance(6, 7),
            RingPosition {
                offset: 0,
                wrap: true
            }
        );
        assert_eq!(
            RingPosition::START.advance(7, 7),
            RingPosition {
                offset: 0,
                wrap: false
            }
        );
    }

    #[test]
    fn event_words_round_trip() {
        let p = RingPosition {
            offset: 300,
            wrap: true,
        };
        assert_eq!(p.event_word(), 0x8000 | 300);
        assert_eq!(RingPosition::from_event_word(p.event_word()), p);
        let q = RingPosition {
            offset: 12,
            wrap: false,
        };
        assert_eq!(RingPosition::from_event_word(q.event_word()), q);
    }

    #[test]
    fn used_means_both_bits_equal_to_the_wrap_counter() {
        let lap1 = RingPosition::START;
        let lap2 = lap1.advance(3, 3);
        assert!(lap1.is_used(desc_flags::AVAIL | desc_flags::USED));
        assert!(!lap1.is_used(desc_flags::AVAIL), "available, not used");
        assert!(
            !lap1.is_used(0),
            "zeroed memory is not used in the first lap"
        );
        assert!(!lap1.is_used(desc_flags::USED), "bits differ");
        assert!(lap2.is_used(0));
        assert!(
            !lap2.is_used(desc_flags::AVAIL | desc_flags::USED),
            "last lap's"
        );
        assert_eq!(lap1.available_bits(), desc_flags::AVAIL);
        assert_eq!(lap2.available_bits(), desc_flags::USED);
    }

    #[test]
    fn a_descriptor_as_words_has_the_same_bytes_as_the_struct() {
        let d = PackedDescriptor::new(0x1122_3344_5566_7788, 0x99aa_bbcc, 0xddee, 0x0f1e);
        let [addr, tail] = d.to_words();
        let mut words = [0u8; 16];
        words[..8].copy_from_slice(&addr.to_ne_bytes());
        words[8..].copy_from_slice(&tail.to_ne_bytes());
        let mut fields = [0u8; 16];
        fields[..8].copy_from_slice(&d.addr.to_ne_bytes());
        fields[8..12].copy_from_slice(&d.len.to_ne_bytes());
        fields[12..14].copy_from_slice(&d.id.to_ne_bytes());
        fields[14..].copy_from_slice(&d.flags.to_ne_bytes());
        assert_eq!(words, fields);
        assert_eq!(&fields[..8], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&fields[8..12], &0x99aa_bbccu32.to_le_bytes());
        assert_eq!(&fields[12..14], &0xddeeu16.to_le_bytes());
    }

    #[test]
    fn layout_keeps_the_device_area_on_its_own_cache_line() {
        let l = PackedRingLayout::new(7, RingLayout::Separate).unwrap();
        assert_eq!(
            (l.driver_offset, l.device_offset, l.total_bytes),
            (112, 128, 132)
        );
        assert_eq!(
            PackedRingLayout::new(8, RingLayout::Contiguous { align: 4096 }),
            Err(QueueError::PackedRingNeedsSeparateLayout)
        );
        assert_eq!(
            PackedRingLayout::new(0, RingLayout::Separate),
            Err(QueueError::InvalidSize(0))
        );
        assert_eq!(
            PackedRingLayout::new(32769, RingLayout::Separate),
            Err(QueueError::InvalidSize(32769))
        );
    }

    #[test]
    fn packed_sizes_are_not_rounded() {
        assert_eq!(choose_packed_queue_size(1000, 1024, false), Ok(1000));
        assert_eq!(choose_packed_queue_size(1024, 300, false), Ok(300));
        assert_eq!(
            choose_packed_queue_size(0, 300, false),
            Err(QueueError::NoSuchQueue)
        );
        assert_eq!(
            choose_packed_queue_size(300, 0, false),
            Err(QueueError::InvalidSize(0))
        );
        assert_eq!(choose_packed_queue_size(300, 16, true), Ok(300));
        assert_eq!(choose_packed_queue_size(65535, 65535, false), Ok(32768));
    }
}
