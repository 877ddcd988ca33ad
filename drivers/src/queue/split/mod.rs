//! The split virtqueue, driver side (virtio 1.2 §2.7 "Split Virtqueues").
//!
//! A [`SplitQueue`] owns the ring memory (one DMA region, laid out as
//! [`layout`] describes) and the driver's private bookkeeping: which
//! descriptors are free, which chains the device owns, how far each index has
//! moved. The life of one request:
//!
//! 1. **`add`** (§2.7.13 "Supplying Buffers to The Device"): take descriptors
//!    from the free list, write one per segment (or one INDIRECT descriptor
//!    pointing at a preallocated table, §2.7.5.3), and put the chain's head in
//!    the next slot of the available ring. The device cannot see it yet.
//! 2. **`publish`** (§2.7.13.3, §2.7.13.4): after a write barrier, store the
//!    new `avail.idx` once for everything added since the last publish; after
//!    a full barrier, read the device's suppression state (`avail_event` with
//!    VIRTIO_F_EVENT_IDX, §2.7.10; otherwise the used ring's NO_NOTIFY flag,
//!    §2.7.7) and tell the caller whether to notify through the transport.
//! 3. The device processes the chain and puts `{id, len}` in the used ring.
//! 4. **`pop_used`** (§2.7.14 "Receiving Used Buffers From The Device"): read
//!    `used.idx`, then the entry, check both, return the chain's descriptors to
//!    the free list, and (with EVENT_IDX) publish `used_event` so the device
//!    knows where the driver is.
//!
//! ## The device is not trusted
//!
//! Everything read from device-writable memory (the used ring) is checked
//! before use, and nothing the driver needs is ever read back from memory the
//! device could have changed: the free list and each chain's shape live in
//! driver-private arrays, not in the descriptor table.
//!
//! Policy on misbehaviour, chosen so that the queue stays consistent and the
//! device driver decides what to do:
//!
//! - **Bad entries** (an id out of range, an id that is free, already completed
//!   or not a chain's head, a length larger than the chain's writable bytes) are
//!   *reported and skipped*: `pop_used` consumes the slot and returns the
//!   error; the queue keeps working. A too-long length is reported as an error
//!   rather than clamped, because data the device claims it wrote beyond the
//!   buffer cannot be right; the error carries the request's token, whose
//!   descriptors are already free again, so the driver can release its
//!   buffers and fail the request.
//! - **Bad indices** (`used.idx` moving backwards, or more than the queue size
//!   past what the driver consumed) make it impossible to tell real entries
//!   from garbage: the queue becomes *broken*. Every later call returns
//!   [`QueueError::DeviceBroken`] until the device driver resets the device
//!   and calls [`Ring::reset`], which hands back every request still in
//!   flight so none of them leaks.
//!
//! Nothing here allocates after [`SplitQueue::new`], and nothing formats text
//! unless trace logging is on.

//!
//! ## Files
//!
//! | file | job |
//! |------|-----|
//! | `split/mod.rs` | [`SplitQueue`]: its state, creation, accessors, reset, the [`Ring`] implementation |
//! | `split/layout.rs` | where the descriptor table and the two rings lie, and their formats (§2.7, §2.7.2, §2.7.5) |
//! | `split/memory.rs` | reading and writing those fields (§2.7.5, §2.7.6, §2.7.8) |
//! | `split/available.rs` | `add` and `publish`: descriptor chains, the available ring, notifying (§2.7.13) |
//! | `split/indirect.rs` | the preallocated indirect descriptor tables (§2.7.5.3) |
//! | `split/used.rs` | `pop_used`: reading and checking the used ring (§2.7.14) |
//! | `split/snapshot.rs` | `snapshot`: a read-only look at the ring for the live view |
//! | `split/event_idx.rs` | the event-index test `need_event` (§2.7.7, §2.7.10) |
//! | `split/interrupts.rs` | used-buffer notification suppression: interrupts on and off (§2.7.7) |
//! | `split/trace.rs` | the words trace logging prints |

pub mod event_idx;
pub mod indirect;
pub mod layout;

mod available;
mod interrupts;
mod memory;
mod snapshot;
mod trace;
mod used;

use alloc::vec;
use alloc::vec::Vec;

use hal::{DmaOwner, Hal};
use log::{log_enabled, trace, Level};

use self::indirect::IndirectPool;
use self::layout::SplitRingLayout;
use self::memory::SplitRingMemory;
use self::trace::IndirectNote;
use super::ring::Ring;
use super::{
    DescriptorView, MemoryOrder, NotifyDecision, QueueAddresses, QueueCounters, QueueError,
    QueueSnapshot, RingKind, RingLayout, Segment, Token, Used,
};

pub use super::ring::DIRECT_MAX_SEGMENTS;

/// How to build a queue: what the transport and the negotiated features say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// The queue's number on its device (for log messages only).
    pub index: u16,
    /// Number of descriptors, a power of two (see [`super::choose_queue_size`]).
    pub size: u16,
    /// Memory layout the transport requires (what its `ring_layout()` says).
    pub layout: RingLayout,
    /// VIRTIO_F_RING_EVENT_IDX was negotiated.
    pub event_idx: bool,
    /// Entries per indirect table; 0 when VIRTIO_F_INDIRECT_DESC was not
    /// negotiated (or is not wanted). At most `size`.
    pub indirect_capacity: u16,
    /// The barriers to use ([`MemoryOrder::Platform`] with VIRTIO_F_ORDER_PLATFORM).
    pub order: MemoryOrder,
    /// The device whose rings these are ([`hal::DmaOwner`]; a driver passes
    /// its transport's): behind an IOMMU, only it can reach them.
    pub owner: DmaOwner,
}

impl QueueConfig {
    /// A queue without event indices or indirect descriptors.
    pub const fn new(index: u16, size: u16, layout: RingLayout) -> Self {
        Self {
            index,
            size,
            layout,
            event_idx: false,
            indirect_capacity: 0,
            order: MemoryOrder::Smp,
            owner: DmaOwner::NO_DEVICE,
        }
    }

    /// Allocates the rings for device `owner` (a driver: `transport.dma_owner()`).
    pub const fn with_owner(mut self, owner: DmaOwner) -> Self {
        self.owner = owner;
        self
    }

    /// Uses the barriers `order` asks for.
    pub const fn with_order(mut self, order: MemoryOrder) -> Self {
        self.order = order;
        self
    }

    /// Sets whether VIRTIO_F_RING_EVENT_IDX is in use.
    pub const fn with_event_idx(mut self, on: bool) -> Self {
        self.event_idx = on;
        self
    }

    /// Uses indirect tables of `capacity` entries (0: none).
    pub const fn with_indirect(mut self, capacity: u16) -> Self {
        self.indirect_capacity = capacity;
        self
    }
}

/// What the driver knows about one descriptor (never read from ring memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DescriptorState {
    /// On the free list.
    Free,
    /// First descriptor of a chain the device owns.
    Head {
        /// Last descriptor of the chain (the head itself for an indirect one).
        tail: u16,
        /// Ring descriptors the chain occupies (1 for an indirect one).
        descriptors: u16,
        /// Sum of the device-writable segments: the most `len` may say.
        writable_len: u32,
    },
    /// A later descriptor of a chain the device owns.
    Body,
}

/// A split virtqueue, driver side. See the module documentation.
pub struct SplitQueue<H: Hal> {
    index: u16,
    size: u16,
    event_idx: bool,
    /// The barriers (VIRTIO_F_ORDER_PLATFORM, `queue/order.rs`).
    order: MemoryOrder,
    layout: SplitRingLayout,
    ring: SplitRingMemory<H>,
    indirect: Option<IndirectPool<H>>,
    /// Per descriptor: free, head of a chain in flight, or inside one.
    states: Vec<DescriptorState>,
    /// Free-list links, and the links of chains in flight (a chain is taken
    /// from the free list in list order, so its links are already right).
    next: Vec<u16>,
    free_head: u16,
    free_count: u16,
    /// Chains the device owns (added, not yet returned).
    in_flight: u16,
    /// The driver's copy of `avail.idx`, including entries not yet published.
    avail_idx: u16,
    /// The value last stored in `avail.idx` (what the device can see).
    published_idx: u16,
    /// Used entries consumed so far (free-running, like `used.idx`).
    last_used: u16,
    /// The largest `used.idx` read so far, to notice it moving backwards.
    used_idx_seen: u16,
    interrupts_enabled: bool,
    broken: bool,
    counters: QueueCounters,
}

impl<H: Hal> SplitQueue<H> {
    /// Allocates and initialises a queue. The memory is zeroed, which is the
    /// initial state the spec expects (all indices and flags 0). Program
    /// [`Ring::addresses`] into the transport afterwards.
    pub fn new(config: QueueConfig) -> Result<Self, QueueError> {
        let size = config.size;
        let layout = SplitRingLayout::new(size, config.layout)?;
        if config.indirect_capacity > size {
            return Err(QueueError::InvalidIndirectCapacity(
                config.indirect_capacity,
            ));
        }
        let ring = SplitRingMemory::new(config.owner, &layout)?;
        let indirect = match config.indirect_capacity {
            0 => None,
            capacity => Some(IndirectPool::new(config.owner, size, capacity)?),
        };
        let queue = Self {
            index: config.index,
            size,
            event_idx: config.event_idx,
            order: config.order,
            layout,
            ring,
            indirect,
            states: vec![DescriptorState::Free; size as usize],
            next: (1..=size).collect(),
            free_head: 0,
            free_count: size,
            in_flight: 0,
            avail_idx: 0,
            published_idx: 0,
            last_used: 0,
            used_idx_seen: 0,
            interrupts_enabled: true,
            broken: false,
            counters: QueueCounters::default(),
        };
        if log_enabled!(Level::Trace) {
            let a = queue.addresses();
            trace!(
                "vq{}: split ring, {} descriptors, {:?}: descriptor table at {:#x}, available ring at {:#x}, used ring at {:#x} ({} bytes); event index {}, indirect tables: {}",
                queue.index,
                size,
                config.layout,
                a.desc,
                a.driver,
                a.device,
                layout.total_bytes,
                if queue.event_idx { "on" } else { "off" },
                IndirectNote(config.indirect_capacity),
            );
        }
        Ok(queue)
    }

    /// The ring slot a free-running index names (for log messages).
    fn slot_of(&self, index: u16) -> u16 {
        index & (self.size - 1)
    }
}

impl<H: Hal> Ring for SplitQueue<H> {
    #[inline]
    fn kind(&self) -> RingKind {
        RingKind::Split
    }

    /// Descriptor table, available ring (driver area), used ring (device area).
    #[inline]
    fn addresses(&self) -> QueueAddresses {
        let base = self.ring.device_addr();
        QueueAddresses {
            size: self.size,
            desc: base + self.layout.desc_offset as u64,
            driver: base + self.layout.avail_offset as u64,
            device: base + self.layout.used_offset as u64,
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

    /// Descriptors on the free list.
    #[inline]
    fn free_descriptors(&self) -> u16 {
        self.free_count
    }

    #[inline]
    fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// A chain, direct or indirect, always starts at the head of the free
    /// list, so the next token is that descriptor's number.
    #[inline]
    fn next_token(&self) -> Option<Token> {
        (self.free_count > 0).then_some(Token(self.free_head))
    }

    #[inline]
    fn unpublished(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.published_idx)
    }

    #[inline]
    fn indirect_capacity(&self) -> u16 {
        self.indirect.as_ref().map_or(0, |p| p.capacity())
    }

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

    /// See `SplitQueue::take_snapshot` (`split/snapshot.rs`).
    fn snapshot(&self, descriptors: &mut [DescriptorView]) -> QueueSnapshot {
        self.take_snapshot(descriptors)
    }

    /// See `SplitQueue::add_buffer`.
    #[inline]
    fn add(&mut self, segments: &[Segment]) -> Result<Token, QueueError> {
        self.add_buffer(segments)
    }

    /// See `SplitQueue::make_available`.
    #[inline]
    fn publish(&mut self) -> NotifyDecision {
        self.make_available()
    }

    /// See `SplitQueue::take_used`.
    #[inline]
    fn pop_used(&mut self) -> Result<Option<Used>, QueueError> {
        self.take_used()
    }

    /// See `SplitQueue::suppress_interrupts`.
    #[inline]
    fn disable_interrupts(&mut self) {
        self.suppress_interrupts()
    }

    /// See `SplitQueue::request_interrupts`.
    #[inline]
    fn enable_interrupts(&mut self) -> bool {
        self.request_interrupts()
    }

    /// All indices go back to 0. Call it only when the device no longer
    /// touches the ring (after a device reset, §2.4): the device could
    /// otherwise write into the fresh state.
    fn reset(&mut self, mut abandoned: impl FnMut(Token)) {
        for (id, state) in self.states.iter().enumerate() {
            if matches!(state, DescriptorState::Head { .. }) {
                abandoned(Token(id as u16));
            }
        }
        self.ring.zero();
        self.states.fill(DescriptorState::Free);
        for (i, link) in self.next.iter_mut().enumerate() {
            *link = i as u16 + 1;
        }
        self.free_head = 0;
        self.free_count = self.size;
        self.in_flight = 0;
        self.avail_idx = 0;
        self.published_idx = 0;
        self.last_used = 0;
        self.used_idx_seen = 0;
        self.interrupts_enabled = true;
        self.broken = false;
        if log_enabled!(Level::Trace) {
            trace!(
                "vq{}: reset: ring zeroed, all {} descriptors free",
                self.index,
                self.size
            );
        }
    }
}

impl<H: Hal> core::fmt::Debug for SplitQueue<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SplitQueue")
            .field("index", &self.index)
            .field("size", &self.size)
            .field("addresses", &self.addresses())
            .field("event_idx", &self.event_idx)
            .field("indirect", &self.indirect)
            .field("free", &self.free_count)
            .field("in_flight", &self.in_flight)
            .field("avail_idx", &self.avail_idx)
            .field("published_idx", &self.published_idx)
            .field("last_used", &self.last_used)
            .field("broken", &self.broken)
            .finish()
    }
}
