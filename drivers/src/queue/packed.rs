//! The packed virtqueue, driver side (virtio 1.2 §2.8 "Packed Virtqueues",
//! feature VIRTIO_F_RING_PACKED).
//!
//! The split ring (module [`super::split`]) keeps three areas, each written by
//! one side. The packed ring folds the descriptor table, the available ring
//! and the used ring into **one descriptor ring that both sides write**: the
//! driver writes descriptors into it in ring order to make buffers
//! available, the device overwrites them, in the order it finishes, with
//! *used* descriptors. The two other areas shrink to four bytes each:
//!
//! | area (spec name)                          | written by | alignment | bytes     |
//! |-------------------------------------------|------------|-----------|-----------|
//! | descriptor ring (descriptor area)         | both       | 16        | 16 * size |
//! | driver event suppression (driver area)    | driver     | 4         | 4         |
//! | device event suppression (device area)    | device     | 4         | 4         |
//!
//! ## Wrap counters instead of indices (§2.8.1)
//!
//! There is no `avail.idx` or `used.idx`. Each side keeps a one-bit *ring
//! wrap counter*, starting at 1 and flipped each time its position passes the
//! end of the ring. A descriptor's flags carry two bits, AVAIL (bit 7) and
//! USED (bit 15):
//!
//! - the driver makes a descriptor available by writing AVAIL = its wrap
//!   counter and USED = the inverse (the two bits *differ*);
//! - the device marks it used by writing AVAIL = USED = its wrap counter (the
//!   two bits are *equal*).
//!
//! Because the expected values flip every lap, a descriptor left over from
//! the previous lap never looks new: each side only ever polls the one
//! position where it expects the other side's next descriptor
//! ([`RingPosition`]: an offset plus the wrap counter that goes with it).
//!
//! ## Buffer ids: completions out of order (§2.8.6, §2.8.13)
//!
//! A used descriptor is written at the device's next used position, which
//! need not be where that buffer's descriptors were: the device uses buffers
//! in whatever order it finishes them. So each buffer carries a **buffer id**
//! (written in its descriptors; the spec requires it in the last one) and the
//! device returns that id. The driver allocates ids from its own free list
//! (0..size, so [`Token::index`] still indexes a per-request array) and
//! remembers, privately, how many ring descriptors each id occupies: after a
//! used descriptor, the next one is that many slots further on.
//!
//! ## The life of a request
//!
//! 1. **`add`**: take an id and `n` ring descriptors (one for an indirect
//!    table, §2.8.7), write them with the right AVAIL/USED bits for each slot's
//!    lap (a chain may run past the end of the ring and continue at slot 0
//!    with the flipped counter), but hold back the *head* descriptor's flags.
//!    The device cannot see the request: it only looks at the head slot.
//! 2. **`publish`**: after a write barrier, write the held-back head flags,
//!    the batch's first head last (§2.8.6: "the driver always makes the
//!    first descriptor in the list available after the rest"), so one store
//!    exposes the whole batch, exactly like the split ring's `avail.idx`
//!    store. Then a full barrier, and the device event suppression structure
//!    decides whether to notify.
//! 3. The device writes `{id, len, flags: AVAIL = USED = its counter}` at its
//!    used position.
//! 4. **`pop_used`**: read the flags at the driver's used position; if they
//!    say used for this lap, read id and length, check them, free the id and
//!    skip the buffer's descriptor count.
//!
//! ## Event suppression (§2.8.10, §2.8.14)
//!
//! Each side publishes a `struct pvirtq_event_suppress { le16 off_wrap; le16
//! flags }` telling the other whether to send notifications: ENABLE (0),
//! DISABLE (1), or DESC (2, only with VIRTIO_F_RING_EVENT_IDX): "only when
//! the descriptor at offset `off_wrap & 0x7fff` with wrap counter
//! `off_wrap >> 15` is made available / used". This driver uses all three:
//! with EVENT_IDX it asks for interrupts with DESC at its next used position,
//! advanced after every completion like the split ring's `used_event`;
//! without it, ENABLE; [`PackedQueue::disable_interrupts`] writes DISABLE.
//! Whether the device wants a notification is the split ring's `need_event`
//! test, done on positions modulo `2 * size`
//! ([`RingPosition::linear`], [`need_event_in_ring`]): the offset plus the
//! wrap counter is exactly a position modulo two laps.
//!
//! ## The device is not trusted
//!
//! The only things read from device-writable memory are the flags, id and
//! length of the used descriptor at the driver's used position, and the
//! device's event suppression structure. Everything else (each id's state,
//! descriptor count and writable length, the free lists) is driver-private.
//!
//! - A length above the buffer's writable bytes: [`QueueError::UsedLengthTooLong`],
//!   the buffer is freed (the token is in the error) and the queue goes on,
//!   as for the split ring. The length is read whether or not the used
//!   descriptor has the WRITE flag: §2.8.4 says it "is reserved for used
//!   descriptors without the VIRTQ_DESC_F_WRITE flag", but QEMU (checked
//!   with 7.2) never sets WRITE in a used descriptor, and Linux reads the
//!   length regardless. A device that means "nothing written" writes 0; any
//!   other value is still bounded by the buffer's writable bytes.
//! - An id that is out of range, free, or not yet published: the queue is
//!   **broken** ([`QueueError::UsedIdOutOfRange`] /
//!   [`QueueError::UsedIdNotInFlight`], then [`QueueError::DeviceBroken`]
//!   until [`PackedQueue::reset`]). This is stricter than the split ring,
//!   which skips one used-ring slot: in the packed ring the next used
//!   descriptor is as far away as *this* buffer had descriptors, and for a
//!   bad id that distance is unknown, so nothing after it can be read with
//!   confidence.
//! - Flags that say USED for this lap but AVAIL for another are not a used
//!   descriptor (§2.8.1 requires both bits equal); nor is anything at the
//!   used position while no published buffer is outstanding: the slot then
//!   holds the driver's own stale descriptors from an earlier lap.
//! - Event suppression values are only a hint for notifying: anything but a
//!   well-formed DISABLE or DESC answer notifies (a spurious notification
//!   costs an exit; a missing one hangs the device).
//!
//! Nothing here allocates after [`PackedQueue::new`], and nothing formats
//! text unless trace logging is on.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{fence, Ordering};

use hal::{DeviceAddr, DmaRegion, Hal};
use log::{log_enabled, trace, warn, Level};

use super::split::{QueueConfig, DIRECT_MAX_SEGMENTS};
use super::{
    NotifyDecision, QueueAddresses, QueueCounters, QueueError, RingLayout, Segment, Token, Used,
    MAX_QUEUE_SIZE,
};

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
/// `driver_cap`, not rounded (compare [`super::choose_queue_size`]). With
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

/// The event-index test on positions modulo `modulus` (`2 * size` for the
/// packed ring): `true` if moving from `old` to `new` (at most `modulus - 1`
/// slots) passed `event`, i.e. `event` lies among the slots just
/// made available (or used). All three must be below `modulus`.
///
/// ```text
///   (new - event - 1) mod modulus  <  (new - old) mod modulus
/// ```
///
/// This is the split ring's `vring_need_event` (see [`super::event_idx`])
/// with `2 * size` in place of 2^16: the split ring's indices are
/// free-running 16-bit counters, the packed ring's positions are offsets
/// plus one bit of lap, i.e. counters modulo two laps.
pub fn need_event_in_ring(event: u32, new: u32, old: u32, modulus: u32) -> bool {
    let behind = (new + 2 * modulus - event - 1) % modulus;
    let published = (new + modulus - old) % modulus;
    behind < published
}

/// What the driver knows about one buffer id (never read from ring memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BufferState {
    /// On the free id list.
    Free,
    /// Written into the ring by `add`, head flags held back until `publish`.
    Added {
        /// Ring descriptors the buffer occupies (1 for an indirect one).
        descriptors: u16,
        /// Sum of the device-writable segments: the most `len` may say.
        writable_len: u32,
    },
    /// Visible to the device.
    Published { descriptors: u16, writable_len: u32 },
}

/// A head descriptor whose flags `publish` still has to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingHead {
    slot: u16,
    flags: u16,
    id: u16,
}

/// One indirect table per buffer id, preallocated in DMA memory (§2.8.7).
/// An id has at most one buffer in flight, so its table is free when it is.
struct IndirectTables<H: Hal> {
    region: DmaRegion<H>,
    capacity: u16,
}

impl<H: Hal> IndirectTables<H> {
    fn new(tables: u16, capacity: u16) -> Result<Self, QueueError> {
        if capacity == 0 {
            return Err(QueueError::InvalidIndirectCapacity(capacity));
        }
        let bytes = tables as usize * capacity as usize * DESCRIPTOR_BYTES;
        Ok(Self {
            region: DmaRegion::new(bytes)?,
            capacity,
        })
    }

    fn table_offset(&self, id: u16) -> usize {
        id as usize * self.capacity as usize * DESCRIPTOR_BYTES
    }

    fn table_addr(&self, id: u16) -> DeviceAddr {
        self.region.device_addr() + self.table_offset(id) as u64
    }

    /// Writes entry `entry` of table `id`; `false` if out of range.
    fn write(&self, id: u16, entry: u16, descriptor: PackedDescriptor) -> bool {
        // Field by field: DMA memory takes plain integers only (`hal::DmaValue`).
        let at = self.table_offset(id) + entry as usize * DESCRIPTOR_BYTES;
        entry < self.capacity
            && self.region.write(at + DESC_ADDR, descriptor.addr)
            && self.region.write(at + DESC_LEN, descriptor.len)
            && self.region.write(at + DESC_ID, descriptor.id)
            && self.region.write(at + DESC_FLAGS, descriptor.flags)
    }
}

/// A packed virtqueue, driver side. See the module documentation.
pub struct PackedQueue<H: Hal> {
    index: u16,
    size: u16,
    event_idx: bool,
    layout: PackedRingLayout,
    ring: DmaRegion<H>,
    indirect: Option<IndirectTables<H>>,
    /// Per buffer id.
    buffers: Vec<BufferState>,
    /// Free buffer ids, used as a stack (capacity `size`, never reallocates).
    free_ids: Vec<u16>,
    /// Heads written by `add` and not yet made available (capacity `size`).
    pending: Vec<PendingHead>,
    /// Ring descriptors not occupied by a buffer in flight.
    free_count: u16,
    /// Buffers added and not yet returned.
    in_flight: u16,
    /// Of those, how many the device can see.
    published_in_flight: u16,
    /// Where `add` writes the next descriptor (the driver ring wrap counter).
    next_avail: RingPosition,
    /// The first slot not yet made available: `next_avail` after `publish`.
    published: RingPosition,
    /// Where the device writes its next used descriptor (the driver's copy
    /// of the device ring wrap counter).
    last_used: RingPosition,
    interrupts_enabled: bool,
    broken: bool,
    counters: QueueCounters,
}

impl<H: Hal> PackedQueue<H> {
    /// Allocates and initialises a queue. The memory is zeroed, the initial
    /// state of the spec (§2.8.13: "The descriptor ring is zero-initialized");
    /// with EVENT_IDX the driver area is then set to ask for an interrupt at
    /// the first used descriptor. Program [`PackedQueue::addresses`] into the
    /// transport afterwards. `config.layout` must be [`RingLayout::Separate`].
    pub fn new(config: QueueConfig) -> Result<Self, QueueError> {
        let size = config.size;
        let layout = PackedRingLayout::new(size, config.layout)?;
        if config.indirect_capacity > size {
            return Err(QueueError::InvalidIndirectCapacity(
                config.indirect_capacity,
            ));
        }
        let ring = DmaRegion::<H>::new(layout.total_bytes)?;
        let indirect = match config.indirect_capacity {
            0 => None,
            capacity => Some(IndirectTables::new(size, capacity)?),
        };
        let mut pending = Vec::new();
        pending.reserve_exact(size as usize);
        let queue = Self {
            index: config.index,
            size,
            event_idx: config.event_idx,
            layout,
            ring,
            indirect,
            buffers: vec![BufferState::Free; size as usize],
            free_ids: (0..size).rev().collect(),
            pending,
            free_count: size,
            in_flight: 0,
            published_in_flight: 0,
            next_avail: RingPosition::START,
            published: RingPosition::START,
            last_used: RingPosition::START,
            interrupts_enabled: true,
            broken: false,
            counters: QueueCounters::default(),
        };
        queue.write_initial_driver_event();
        if log_enabled!(Level::Trace) {
            let a = queue.addresses();
            trace!(
                "vq{}: packed ring, {} descriptors: descriptor ring at {:#x}, driver event suppression at {:#x}, device event suppression at {:#x} ({} bytes); driver and device ring wrap counters start at 1; event index {}, indirect tables: {}",
                queue.index,
                size,
                a.desc,
                a.driver,
                a.device,
                layout.total_bytes,
                if queue.event_idx { "on" } else { "off" },
                match config.indirect_capacity {
                    0 => IndirectNote::None,
                    n => IndirectNote::PerId(n),
                },
            );
        }
        Ok(queue)
    }

    /// The device addresses the transport must program: descriptor ring,
    /// driver area (driver event suppression), device area (device event
    /// suppression).
    pub fn addresses(&self) -> QueueAddresses {
        let base = self.ring.device_addr();
        QueueAddresses {
            size: self.size,
            desc: base + self.layout.desc_offset as u64,
            driver: base + self.layout.driver_offset as u64,
            device: base + self.layout.device_offset as u64,
        }
    }

    /// The queue's number on its device.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Number of descriptors.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Ring descriptors not occupied. Equals [`PackedQueue::size`] when nothing is in flight.
    pub fn free_descriptors(&self) -> u16 {
        self.free_count
    }

    /// Requests added and not yet returned by `pop_used` (or `reset`).
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// The token the next successful [`PackedQueue::add`] will return (the
    /// buffer id on top of the free list), or `None` if no id is free. A
    /// driver that keeps per-request state in an array indexed by
    /// [`Token::index`] can fill its entry before adding, without a table
    /// mapping tokens to its own slots.
    pub fn next_token(&self) -> Option<Token> {
        self.free_ids.last().map(|&id| Token(id))
    }

    /// Requests added since the last `publish` (invisible to the device).
    pub fn unpublished(&self) -> u16 {
        self.pending.len() as u16
    }

    /// Entries per indirect table (0: indirect descriptors not in use).
    pub fn indirect_capacity(&self) -> u16 {
        self.indirect.as_ref().map_or(0, |t| t.capacity)
    }

    /// Whether VIRTIO_F_RING_EVENT_IDX is in use (DESC event suppression).
    pub fn uses_event_idx(&self) -> bool {
        self.event_idx
    }

    /// Statistics since creation.
    pub fn counters(&self) -> QueueCounters {
        self.counters
    }

    /// `true` after a fatal protocol violation by the device (see the module docs).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Where the next descriptor will be written, with the driver ring wrap counter.
    pub fn next_avail_position(&self) -> RingPosition {
        self.next_avail
    }

    /// Where the device's next used descriptor is expected, with the device
    /// ring wrap counter as the driver tracks it.
    pub fn next_used_position(&self) -> RingPosition {
        self.last_used
    }

    // ---- ring memory -------------------------------------------------------

    fn slot_offset(&self, slot: u16) -> usize {
        debug_assert!(slot < self.size);
        self.layout.desc_offset + DESCRIPTOR_BYTES * slot as usize
    }

    /// Writes everything of a descriptor but its flags.
    fn write_descriptor_body(&self, slot: u16, addr: u64, len: u32, id: u16) {
        let at = self.slot_offset(slot);
        let written = self.ring.write(at + DESC_ADDR, addr.to_le())
            && self.ring.write(at + DESC_LEN, len.to_le())
            && self.ring.write(at + DESC_ID, id.to_le());
        debug_assert!(written, "descriptor slot {slot} outside the ring");
    }

    fn write_descriptor_flags(&self, slot: u16, flags: u16) {
        let written = self
            .ring
            .write(self.slot_offset(slot) + DESC_FLAGS, flags.to_le());
        debug_assert!(written, "descriptor slot {slot} outside the ring");
    }

    /// The flags of the descriptor in `slot`. An impossible out-of-range read
    /// gives flags that never look used.
    fn read_descriptor_flags(&self, slot: u16) -> u16 {
        self.ring
            .read::<u16>(self.slot_offset(slot) + DESC_FLAGS)
            .map_or(desc_flags::AVAIL, u16::from_le)
    }

    /// `(id, len)` of the descriptor in `slot`.
    fn read_descriptor_id_len(&self, slot: u16) -> (u16, u32) {
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
    fn write_driver_event(&self, off_wrap: u16, flags: u16) {
        let word = u32::from(off_wrap) | (u32::from(flags) << 16);
        let written = self.ring.write(self.layout.driver_offset, word.to_le());
        debug_assert!(written, "driver area outside the ring");
    }

    /// Reads the device event suppression structure in one 32-bit load:
    /// `(off_wrap, flags)`.
    fn read_device_event(&self) -> (u16, u16) {
        let word = self
            .ring
            .read::<u32>(self.layout.device_offset)
            .map_or(0, u32::from_le);
        (word as u16, (word >> 16) as u16)
    }

    /// The driver area as a new (or reset) queue sets it: with EVENT_IDX,
    /// DESC at the first used position; otherwise ENABLE (zero, as allocated).
    fn write_initial_driver_event(&self) {
        if self.event_idx {
            self.write_driver_event(RingPosition::START.event_word(), event_flags::DESC);
        } else {
            self.write_driver_event(0, event_flags::ENABLE);
        }
    }

    // ---- supplying buffers -------------------------------------------------

    /// Adds one request: `segments` (device-readable ones first, then
    /// device-writable ones) become a buffer of consecutive ring descriptors
    /// (or one descriptor pointing at an indirect table) under a fresh buffer
    /// id. The device does not see it until [`PackedQueue::publish`]. The
    /// buffers must stay shared until the token comes back from
    /// [`PackedQueue::pop_used`] (or [`PackedQueue::reset`]).
    ///
    /// Direct or indirect: the same rule as the split ring
    /// ([`DIRECT_MAX_SEGMENTS`]). On error nothing was changed.
    pub fn add(&mut self, segments: &[Segment]) -> Result<Token, QueueError> {
        if self.broken {
            return Err(QueueError::DeviceBroken);
        }
        let writable_len = check_segments(segments)?;
        let n = segments.len();
        let free = self.free_count as usize;
        let capacity = self.indirect_capacity() as usize;
        let indirect = if n <= DIRECT_MAX_SEGMENTS && n <= free {
            false
        } else if n <= capacity && free >= 1 {
            true
        } else if n <= free {
            false
        } else if n > self.size as usize {
            return Err(QueueError::TooManySegments {
                segments: n,
                max: self.size as usize,
            });
        } else {
            let needed = if n <= capacity { 1 } else { n };
            return Err(QueueError::QueueFull { needed, free });
        };
        // Every buffer in flight holds at least one descriptor, so with a
        // descriptor free an id is free too.
        let Some(id) = self.free_ids.pop() else {
            return Err(QueueError::QueueFull { needed: 1, free: 0 });
        };

        let head = self.next_avail;
        let descriptors = if indirect {
            self.write_indirect(id, head, segments, writable_len)
        } else {
            self.write_direct(id, head, segments, writable_len)
        };
        self.buffers[id as usize] = BufferState::Added {
            descriptors,
            writable_len,
        };
        self.next_avail = head.advance(descriptors, self.size);
        self.free_count -= descriptors;
        self.in_flight += 1;
        self.counters.added += 1;
        if indirect {
            self.counters.indirect += 1;
        }
        if log_enabled!(Level::Trace) {
            trace!(
                "vq{}: buffer id {} occupies {} descriptor(s) from slot {}; its head flags are held back until publish; next free slot {}; {} descriptors free, {} in flight",
                self.index,
                id,
                descriptors,
                head,
                self.next_avail,
                self.free_count,
                self.in_flight,
            );
        }
        Ok(Token(id))
    }

    /// Writes `segments` into consecutive ring slots from `head`, each with
    /// the AVAIL/USED bits of its own lap, the id in every one (the spec
    /// requires it in the last), and records the head's flags for `publish`.
    fn write_direct(
        &mut self,
        id: u16,
        head: RingPosition,
        segments: &[Segment],
        writable_len: u32,
    ) -> u16 {
        let tracing = log_enabled!(Level::Trace);
        if tracing {
            trace!(
                "vq{}: request of {} segment(s) as buffer id {}, a direct chain ({} bytes device-writable):",
                self.index,
                segments.len(),
                id,
                writable_len
            );
        }
        let mut position = head;
        for (i, segment) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let mut flags = position.available_bits();
            if segment.device_writable {
                flags |= desc_flags::WRITE;
            }
            if !last {
                flags |= desc_flags::NEXT;
            }
            self.write_descriptor_body(position.offset, segment.addr, segment.len, id);
            if i == 0 {
                self.pending.push(PendingHead {
                    slot: position.offset,
                    flags,
                    id,
                });
            } else {
                self.write_descriptor_flags(position.offset, flags);
            }
            if tracing {
                trace_descriptor(self.index, position, segment, id, flags, i == 0);
            }
            position = position.advance(1, self.size);
        }
        segments.len() as u16
    }

    /// Fills table `id` with `segments` and writes one INDIRECT ring
    /// descriptor pointing at it (its flags held back for `publish`).
    fn write_indirect(
        &mut self,
        id: u16,
        head: RingPosition,
        segments: &[Segment],
        writable_len: u32,
    ) -> u16 {
        let tracing = log_enabled!(Level::Trace);
        let Some(tables) = &self.indirect else {
            // `add` only chooses indirect when tables exist.
            return self.write_direct(id, head, segments, writable_len);
        };
        let table = tables.table_addr(id);
        let table_len = (segments.len() * DESCRIPTOR_BYTES) as u32;
        if tracing {
            trace!(
                "vq{}: request of {} segment(s) as buffer id {} through an indirect table ({} bytes device-writable):",
                self.index,
                segments.len(),
                id,
                writable_len
            );
        }
        for (i, segment) in segments.iter().enumerate() {
            // §2.8.7: WRITE is the only valid flag in a table; no NEXT, the
            // entries simply follow each other; the id is ignored.
            let flags = if segment.device_writable {
                desc_flags::WRITE
            } else {
                0
            };
            let written = tables.write(
                id,
                i as u16,
                PackedDescriptor::new(segment.addr, segment.len, 0, flags),
            );
            debug_assert!(written, "indirect table entry out of range");
            if tracing {
                trace!(
                    "vq{}:     table[{}]: addr {:#x}, len {}, {}",
                    self.index,
                    i,
                    segment.addr,
                    segment.len,
                    Access(segment.device_writable)
                );
            }
        }
        let flags = head.available_bits() | desc_flags::INDIRECT;
        self.write_descriptor_body(head.offset, table, table_len, id);
        self.pending.push(PendingHead {
            slot: head.offset,
            flags,
            id,
        });
        if tracing {
            trace!(
                "vq{}:   desc[{}]: INDIRECT, table at {:#x}, {} bytes = {} entries, id {}, flags {:#06x} = {} (head: flags held back until publish)",
                self.index,
                head,
                table,
                table_len,
                segments.len(),
                id,
                flags,
                FlagNames(flags),
            );
        }
        1
    }

    /// Makes everything added since the last publish available (the held-back
    /// head flags, first head last) and decides whether the device must be
    /// notified. The caller then calls the transport's `notify(queue)` if the
    /// answer is [`NotifyDecision::Notify`].
    pub fn publish(&mut self) -> NotifyDecision {
        if self.pending.is_empty() || self.broken {
            return NotifyDecision::NothingNew;
        }
        let old = self.published;
        let new = self.next_avail;
        // §2.8.21.1.1 "Updating flags": the descriptors must be visible before the flags that
        // expose them.
        fence(Ordering::Release);
        let (first, rest) = self.pending.split_at(1);
        for head in rest.iter().rev() {
            self.write_descriptor_flags(head.slot, head.flags);
        }
        // The later heads before the first: a device that sees the first one
        // finds the rest of the batch behind it.
        fence(Ordering::Release);
        let first = first[0];
        self.write_descriptor_flags(first.slot, first.flags);
        let published_now = self.pending.len() as u16;
        for head in &self.pending {
            if let BufferState::Added {
                descriptors,
                writable_len,
            } = self.buffers[head.id as usize]
            {
                self.buffers[head.id as usize] = BufferState::Published {
                    descriptors,
                    writable_len,
                };
            }
        }
        self.pending.clear();
        self.published = new;
        self.published_in_flight += published_now;
        // §2.8.21.3.1 (driver requirements, "Sending Available Buffer
        // Notifications"): a full barrier between exposing the flags and reading
        // the device's suppression state, or both sides may decide to wait
        // for the other.
        fence(Ordering::SeqCst);
        self.counters.publishes += 1;
        let (off_wrap, flags) = self.read_device_event();
        let notify = self.wants_notification(off_wrap, flags, old, new);
        if log_enabled!(Level::Trace) {
            trace_publish(self, old, new, published_now, off_wrap, flags, notify);
        }
        if notify {
            self.counters.notifications += 1;
            NotifyDecision::Notify
        } else {
            self.counters.notifications_suppressed += 1;
            NotifyDecision::Suppressed
        }
    }

    /// The device event suppression answer for a publish that moved the
    /// driver's position from `old` to `new`.
    fn wants_notification(
        &self,
        off_wrap: u16,
        flags: u16,
        old: RingPosition,
        new: RingPosition,
    ) -> bool {
        match flags & event_flags::MASK {
            event_flags::DISABLE => false,
            event_flags::DESC if self.event_idx => {
                let event = RingPosition::from_event_word(off_wrap);
                if event.offset >= self.size {
                    return true; // not a slot of this ring: notify, to be safe
                }
                let modulus = 2 * u32::from(self.size);
                need_event_in_ring(
                    event.linear(self.size),
                    new.linear(self.size),
                    old.linear(self.size),
                    modulus,
                )
            }
            // ENABLE, DESC without EVENT_IDX (invalid), the reserved value 3.
            _ => true,
        }
    }

    // ---- receiving used buffers --------------------------------------------

    /// Takes the next completion, if the device has written a used
    /// descriptor at the driver's used position. Completions come in the
    /// order the device finished them, which need not be the order they
    /// were added.
    ///
    /// Errors: see the module documentation. After
    /// [`QueueError::UsedLengthTooLong`] the queue goes on; after an id
    /// error it is broken.
    pub fn pop_used(&mut self) -> Result<Option<Used>, QueueError> {
        if self.broken {
            return Err(QueueError::DeviceBroken);
        }
        if self.published_in_flight == 0 {
            // The slot holds the driver's own descriptors from an earlier lap.
            return Ok(None);
        }
        let at = self.last_used;
        let flags = self.read_descriptor_flags(at.offset);
        if !at.is_used(flags) {
            return Ok(None);
        }
        // Read id and length only after the flags that cover them (the
        // device writes them first, then a barrier, then the flags).
        fence(Ordering::Acquire);
        let (id, len) = self.read_descriptor_id_len(at.offset);
        let (descriptors, writable_len) = match self.buffers.get(id as usize) {
            None => {
                return Err(self.break_queue(QueueError::UsedIdOutOfRange {
                    id: u32::from(id),
                    size: self.size,
                }))
            }
            Some(&BufferState::Published {
                descriptors,
                writable_len,
            }) => (descriptors, writable_len),
            Some(_) => return Err(self.break_queue(QueueError::UsedIdNotInFlight { id })),
        };
        self.buffers[id as usize] = BufferState::Free;
        self.free_ids.push(id);
        self.free_count += descriptors;
        self.in_flight -= 1;
        self.published_in_flight -= 1;
        self.last_used = at.advance(descriptors, self.size);
        self.publish_used_event();
        let token = Token(id);
        if len > writable_len {
            let error = QueueError::UsedLengthTooLong {
                token,
                len,
                max: writable_len,
            };
            self.counters.device_errors += 1;
            warn!(
                "vq{}: used descriptor at slot {} rejected: {}",
                self.index, at, error
            );
            return Err(error);
        }
        self.counters.completions += 1;
        if log_enabled!(Level::Trace) {
            trace!(
                "vq{}: desc[{}]: flags {:#06x} = {}: AVAIL = USED = {} = the device wrap counter we expect, so used: id {}, len {}: request {} done; skip its {} descriptor(s): next used position {}; {} descriptors free, {} in flight{}",
                self.index,
                at,
                flags,
                FlagNames(flags),
                u8::from(at.wrap),
                id,
                len,
                token,
                descriptors,
                self.last_used,
                self.free_count,
                self.in_flight,
                DriverEventNote(self),
            );
        }
        Ok(Some(Used { token, len }))
    }

    /// Marks the queue broken after a fatal violation and returns the error.
    fn break_queue(&mut self, error: QueueError) -> QueueError {
        self.broken = true;
        self.counters.device_errors += 1;
        warn!(
            "vq{}: used descriptor at slot {}: {}; the next used descriptor cannot be found, queue marked broken, the device needs a reset",
            self.index, self.last_used, error
        );
        error
    }

    /// With EVENT_IDX and interrupts on, moves the DESC event to the next
    /// used position, so the device interrupts for the next completion only.
    fn publish_used_event(&self) {
        if self.event_idx && self.interrupts_enabled {
            self.write_driver_event(self.last_used.event_word(), event_flags::DESC);
            // The next pop reads the ring; that read must not pass this
            // store, or the device could miss the event while we miss its
            // descriptor.
            fence(Ordering::SeqCst);
        }
    }

    /// Asks the device not to interrupt for this queue (a hint: an
    /// interrupt may still arrive): driver event flags DISABLE.
    pub fn disable_interrupts(&mut self) {
        self.interrupts_enabled = false;
        self.write_driver_event(self.last_used.event_word(), event_flags::DISABLE);
        if log_enabled!(Level::Trace) {
            trace!(
                "vq{}: interrupts off: driver event suppression flags := DISABLE",
                self.index
            );
        }
    }

    /// Asks the device to interrupt for the next completion (DESC at the next
    /// used position with EVENT_IDX, ENABLE without), then checks whether a
    /// completion arrived meanwhile. Returns `true` if one is pending: the
    /// caller must then poll again, because the device may have written it
    /// before it saw the request and will not interrupt for it.
    pub fn enable_interrupts(&mut self) -> bool {
        self.interrupts_enabled = true;
        if self.event_idx {
            self.write_driver_event(self.last_used.event_word(), event_flags::DESC);
        } else {
            self.write_driver_event(0, event_flags::ENABLE);
        }
        // Our store must be visible before we look at the ring (the mirror
        // of the barrier in `publish`).
        fence(Ordering::SeqCst);
        let flags = self.read_descriptor_flags(self.last_used.offset);
        let pending = !self.broken && self.published_in_flight > 0 && self.last_used.is_used(flags);
        if log_enabled!(Level::Trace) {
            if self.event_idx {
                trace!(
                    "vq{}: interrupts on: driver event suppression := DESC at {} (interrupt when the device uses the descriptor there); desc[{}] flags {:#06x}: {}",
                    self.index,
                    self.last_used,
                    self.last_used.offset,
                    flags,
                    PendingNote(pending)
                );
            } else {
                trace!(
                    "vq{}: interrupts on: driver event suppression flags := ENABLE; desc[{}] flags {:#06x}: {}",
                    self.index,
                    self.last_used.offset,
                    flags,
                    PendingNote(pending)
                );
            }
        }
        pending
    }

    /// Starts over after the device was reset: every request still in flight
    /// (or added and never published) is handed to `abandoned` so its buffers
    /// can be released, the ring memory is zeroed, both wrap counters go back
    /// to 1 and slot 0. The queue is usable again once the transport has been
    /// given [`PackedQueue::addresses`] (unchanged) again.
    ///
    /// Call it only when the device no longer touches the ring (after a
    /// device reset, §2.4). Counters are kept.
    pub fn reset(&mut self, mut abandoned: impl FnMut(Token)) {
        for (id, state) in self.buffers.iter().enumerate() {
            if *state != BufferState::Free {
                abandoned(Token(id as u16));
            }
        }
        for offset in (0..self.ring.len()).step_by(8) {
            self.ring.write::<u64>(offset, 0);
        }
        self.buffers.fill(BufferState::Free);
        self.free_ids.clear();
        self.free_ids.extend((0..self.size).rev());
        self.pending.clear();
        self.free_count = self.size;
        self.in_flight = 0;
        self.published_in_flight = 0;
        self.next_avail = RingPosition::START;
        self.published = RingPosition::START;
        self.last_used = RingPosition::START;
        self.interrupts_enabled = true;
        self.broken = false;
        self.write_initial_driver_event();
        if log_enabled!(Level::Trace) {
            trace!(
                "vq{}: reset: ring zeroed, all {} descriptors and ids free, both wrap counters back to 1",
                self.index,
                self.size
            );
        }
    }
}

/// Checks the shape of a request and returns its device-writable byte count
/// (the same rules as the split ring's `add`).
fn check_segments(segments: &[Segment]) -> Result<u32, QueueError> {
    if segments.is_empty() {
        return Err(QueueError::EmptyRequest);
    }
    let mut total: u64 = 0;
    let mut writable: u64 = 0;
    let mut seen_writable = false;
    for (index, segment) in segments.iter().enumerate() {
        if segment.len == 0 {
            return Err(QueueError::EmptySegment { index });
        }
        if segment.device_writable {
            seen_writable = true;
            writable += u64::from(segment.len);
        } else if seen_writable {
            return Err(QueueError::ReadableAfterWritable { index });
        }
        total += u64::from(segment.len);
    }
    if total > u64::from(u32::MAX) {
        return Err(QueueError::RequestTooLong);
    }
    // `writable <= total <= u32::MAX`.
    Ok(writable as u32)
}

fn trace_descriptor(
    queue: u16,
    position: RingPosition,
    segment: &Segment,
    id: u16,
    flags: u16,
    head: bool,
) {
    trace!(
        "vq{}:   desc[{}]: addr {:#x}, len {}, {}, id {}, flags {:#06x} = {}{}",
        queue,
        position,
        segment.addr,
        segment.len,
        Access(segment.device_writable),
        id,
        flags,
        FlagNames(flags),
        if head {
            " (head: flags held back until publish)"
        } else {
            ""
        }
    );
}

fn trace_publish<H: Hal>(
    queue: &PackedQueue<H>,
    old: RingPosition,
    new: RingPosition,
    buffers: u16,
    off_wrap: u16,
    flags: u16,
    notify: bool,
) {
    let size = queue.size;
    let mode = flags & event_flags::MASK;
    let verdict = if notify { "notify" } else { "suppressed" };
    match mode {
        event_flags::DISABLE => trace!(
            "vq{}: publish: {} buffer(s) made available, driver position {} -> {}; device event suppression flags = DISABLE -> {verdict} (the device is busy and will look itself)",
            queue.index, buffers, old, new
        ),
        event_flags::DESC if queue.event_idx => {
            let event = RingPosition::from_event_word(off_wrap);
            if event.offset >= size {
                trace!(
                    "vq{}: publish: {} buffer(s) made available, driver position {} -> {}; device event suppression = DESC at offset {} (not a slot of a {}-entry ring) -> {verdict}, to be safe",
                    queue.index, buffers, old, new, event.offset, size
                );
                return;
            }
            let modulus = 2 * u32::from(size);
            let (e, n, o) = (event.linear(size), new.linear(size), old.linear(size));
            let behind = (n + 2 * modulus - e - 1) % modulus;
            let published = (n + modulus - o) % modulus;
            trace!(
                "vq{}: publish: {} buffer(s) made available, driver position {} -> {}; device event suppression = DESC at {}; as positions mod 2*size = {} (offset, + size when the wrap counter is 0): old {}, new {}, event {}; need_event: (new - event - 1) mod {} = ({} - {} - 1) mod {} = {} {} (new - old) mod {} = ({} - {}) mod {} = {} -> {}",
                queue.index,
                buffers,
                old,
                new,
                event,
                modulus,
                o,
                n,
                e,
                modulus,
                n,
                e,
                modulus,
                behind,
                if notify { "<" } else { ">=" },
                modulus,
                n,
                o,
                modulus,
                published,
                if notify {
                    "notify: the device asked to hear about a descriptor among those just made available"
                } else {
                    "suppressed: the device's event descriptor is not among those just made available"
                }
            );
        }
        _ => trace!(
            "vq{}: publish: {} buffer(s) made available, driver position {} -> {}; device event suppression flags = {:#x} ({}) -> {verdict}",
            queue.index,
            buffers,
            old,
            new,
            mode,
            match mode {
                event_flags::ENABLE => "ENABLE",
                event_flags::DESC => "DESC, but EVENT_IDX was not negotiated",
                _ => "reserved value",
            }
        ),
    }
}

/// "device-readable" / "device-writable".
struct Access(bool);

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 {
            "device-writable"
        } else {
            "device-readable"
        })
    }
}

/// Descriptor flags as words: `AVAIL=1 USED=0 | NEXT | WRITE`.
struct FlagNames(u16);

impl fmt::Display for FlagNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = self.0;
        write!(
            f,
            "AVAIL={} USED={}",
            u8::from(flags & desc_flags::AVAIL != 0),
            u8::from(flags & desc_flags::USED != 0)
        )?;
        for (bit, name) in [
            (desc_flags::NEXT, "NEXT"),
            (desc_flags::WRITE, "WRITE"),
            (desc_flags::INDIRECT, "INDIRECT"),
        ] {
            if flags & bit != 0 {
                write!(f, " | {name}")?;
            }
        }
        Ok(())
    }
}

/// Formats the indirect-table part of the queue's creation trace line.
enum IndirectNote {
    None,
    PerId(u16),
}

impl fmt::Display for IndirectNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndirectNote::None => f.write_str("none"),
            IndirectNote::PerId(n) => write!(f, "{n} entries each, one per buffer id"),
        }
    }
}

/// Formats the driver-event part of a completion's trace line.
struct DriverEventNote<'a, H: Hal>(&'a PackedQueue<H>);

impl<H: Hal> fmt::Display for DriverEventNote<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = self.0;
        match (q.event_idx, q.interrupts_enabled) {
            (true, true) => write!(
                f,
                "; driver event suppression := DESC at {} (interrupt when the device uses it)",
                q.last_used
            ),
            _ => Ok(()),
        }
    }
}

/// "entries already pending, poll again" / "nothing pending".
struct PendingNote(bool);

impl fmt::Display for PendingNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 {
            "a used descriptor is already there, poll again"
        } else {
            "nothing pending"
        })
    }
}

impl<H: Hal> fmt::Debug for PackedQueue<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackedQueue")
            .field("index", &self.index)
            .field("size", &self.size)
            .field("addresses", &self.addresses())
            .field("event_idx", &self.event_idx)
            .field("indirect_capacity", &self.indirect_capacity())
            .field("free", &self.free_count)
            .field("in_flight", &self.in_flight)
            .field("next_avail", &self.next_avail)
            .field("last_used", &self.last_used)
            .field("broken", &self.broken)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn need_event_in_ring_works_across_the_two_lap_wrap() {
        let size = 5u16;
        let m = 2 * u32::from(size);
        let pos = |offset, wrap| RingPosition { offset, wrap }.linear(size);
        // Published 4 slots: 3 (wrap 0), 4 (wrap 0), 0 (wrap 1), 1 (wrap 1).
        let old = pos(3, false);
        let new = pos(2, true);
        assert!(need_event_in_ring(pos(0, true), new, old, m));
        assert!(need_event_in_ring(pos(3, false), new, old, m));
        assert!(need_event_in_ring(pos(1, true), new, old, m));
        assert!(
            !need_event_in_ring(pos(2, true), new, old, m),
            "not reached yet"
        );
        assert!(!need_event_in_ring(pos(0, false), new, old, m), "other lap");
        assert!(
            !need_event_in_ring(pos(2, false), new, old, m),
            "already passed"
        );
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
