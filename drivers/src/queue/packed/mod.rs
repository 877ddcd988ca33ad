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
//! without it, ENABLE; [`Ring::disable_interrupts`] writes DISABLE.
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
//!   until [`Ring::reset`]). This is stricter than the split ring,
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

//!
//! ## Files
//!
//! | file | job |
//! |------|-----|
//! | `packed/mod.rs` | [`PackedQueue`]: its state, creation, accessors, reset, the [`Ring`] implementation |
//! | `packed/layout.rs` | descriptor and event-suppression formats, where the areas lie, wrap counters ([`RingPosition`]), reading and writing ring memory (§2.8.1, §2.8.2, §2.8.13, §2.8.14) |
//! | `packed/available.rs` | `add` and `publish`: making buffers available, indirect tables (§2.8.6, §2.8.7, §2.8.21) |
//! | `packed/used.rs` | `pop_used`: receiving used buffers, checking what the device wrote (§2.8.22) |
//! | `packed/event.rs` | event suppression both ways: notify or not, interrupts on and off (§2.8.10, §2.8.14, §2.8.21.3) |
//! | `packed/snapshot.rs` | `snapshot`: a read-only look at the ring for the live view |
//! | `packed/trace.rs` | the words trace logging prints |

mod available;
mod event;
mod layout;
mod snapshot;
mod trace;
mod used;

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use hal::{DmaRegion, Hal};
use log::{log_enabled, trace, Level};

use self::available::IndirectTables;
use self::trace::IndirectNote;
use super::ring::Ring;
use super::split::QueueConfig;
use super::MemoryOrder;
use super::{
    DescriptorView, NotifyDecision, QueueAddresses, QueueCounters, QueueError, QueueSnapshot,
    RingKind, Segment, Token, Used,
};

pub use self::event::need_event_in_ring;
pub use self::layout::{
    choose_packed_queue_size, desc_flags, event_flags, is_valid_packed_size, PackedDescriptor,
    PackedRingLayout, RingPosition, DESCRIPTOR_BYTES, DEVICE_AREA_ALIGN, EVENT_SUPPRESSION_BYTES,
};

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

/// A packed virtqueue, driver side. See the module documentation.
pub struct PackedQueue<H: Hal> {
    index: u16,
    size: u16,
    event_idx: bool,
    /// The barriers (VIRTIO_F_ORDER_PLATFORM, `queue/order.rs`).
    order: MemoryOrder,
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
    /// the first used descriptor. Program [`Ring::addresses`] into the
    /// transport afterwards. `config.layout` must be [`RingLayout::Separate`](crate::queue::RingLayout::Separate).
    pub fn new(config: QueueConfig) -> Result<Self, QueueError> {
        let size = config.size;
        let layout = PackedRingLayout::new(size, config.layout)?;
        if config.indirect_capacity > size {
            return Err(QueueError::InvalidIndirectCapacity(
                config.indirect_capacity,
            ));
        }
        let ring = DmaRegion::<H>::new(config.owner, layout.total_bytes)?;
        let indirect = match config.indirect_capacity {
            0 => None,
            capacity => Some(IndirectTables::new(config.owner, size, capacity)?),
        };
        let mut pending = Vec::new();
        pending.reserve_exact(size as usize);
        let queue = Self {
            index: config.index,
            size,
            event_idx: config.event_idx,
            order: config.order,
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

    /// Where the next descriptor will be written, with the driver ring wrap counter.
    pub fn next_avail_position(&self) -> RingPosition {
        self.next_avail
    }

    /// Where the device's next used descriptor is expected, with the device
    /// ring wrap counter as the driver tracks it.
    pub fn next_used_position(&self) -> RingPosition {
        self.last_used
    }
}

impl<H: Hal> Ring for PackedQueue<H> {
    #[inline]
    fn kind(&self) -> RingKind {
        RingKind::Packed
    }

    /// Descriptor ring, driver area (driver event suppression), device area
    /// (device event suppression).
    #[inline]
    fn addresses(&self) -> QueueAddresses {
        let base = self.ring.device_addr();
        QueueAddresses {
            size: self.size,
            desc: base + self.layout.desc_offset as u64,
            driver: base + self.layout.driver_offset as u64,
            device: base + self.layout.device_offset as u64,
        }
    }

    #[inline]
    fn index(&self) -> u16 {
        self.index
    }

    #[inline]
    fn size(&self) -> u16 {
        self.size
    }

    #[inline]
    fn free_descriptors(&self) -> u16 {
        self.free_count
    }

    #[inline]
    fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// The buffer id on top of the free list.
    #[inline]
    fn next_token(&self) -> Option<Token> {
        self.free_ids.last().map(|&id| Token(id))
    }

    #[inline]
    fn unpublished(&self) -> u16 {
        self.pending.len() as u16
    }

    #[inline]
    fn indirect_capacity(&self) -> u16 {
        self.indirect.as_ref().map_or(0, |t| t.capacity())
    }

    /// With EVENT_IDX the driver uses DESC event suppression.
    #[inline]
    fn uses_event_idx(&self) -> bool {
        self.event_idx
    }

    fn memory_order(&self) -> MemoryOrder {
        self.order
    }

    #[inline]
    fn counters(&self) -> QueueCounters {
        self.counters
    }

    #[inline]
    fn is_broken(&self) -> bool {
        self.broken
    }

    /// See `PackedQueue::take_snapshot` (`packed/snapshot.rs`).
    fn snapshot(&self, descriptors: &mut [DescriptorView]) -> QueueSnapshot {
        self.take_snapshot(descriptors)
    }

    /// See `PackedQueue::add_buffer` (`packed/available.rs`).
    #[inline]
    fn add(&mut self, segments: &[Segment]) -> Result<Token, QueueError> {
        self.add_buffer(segments)
    }

    /// See `PackedQueue::make_available` (`packed/available.rs`).
    #[inline]
    fn publish(&mut self) -> NotifyDecision {
        self.make_available()
    }

    /// See `PackedQueue::take_used` (`packed/used.rs`).
    #[inline]
    fn pop_used(&mut self) -> Result<Option<Used>, QueueError> {
        self.take_used()
    }

    /// Driver event flags DISABLE (`packed/event.rs`).
    #[inline]
    fn disable_interrupts(&mut self) {
        self.suppress_interrupts()
    }

    /// DESC at the next used position with EVENT_IDX, ENABLE without
    /// (`packed/event.rs`).
    #[inline]
    fn enable_interrupts(&mut self) -> bool {
        self.request_interrupts()
    }

    /// Both wrap counters go back to 1 and slot 0.
    fn reset(&mut self, mut abandoned: impl FnMut(Token)) {
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
