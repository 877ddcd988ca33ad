//! The split virtqueue, driver side (virtio 1.2 §2.7 "Split Virtqueues").
//!
//! A [`SplitQueue`] owns the ring memory (one [`DmaRegion`], laid out as
//! [`super::layout`] describes) and the driver's private bookkeeping: which
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

use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{fence, Ordering};

use hal::{DmaRegion, Hal};
use log::{log_enabled, trace, warn, Level};

use super::event_idx::need_event;
use super::indirect::IndirectPool;
use super::layout::{avail, desc_flags, used, Descriptor, SplitRingLayout, DESCRIPTOR_BYTES};
use super::ring::{check_segments, choose_chain, Ring};
use super::{
    NotifyDecision, QueueAddresses, QueueCounters, QueueError, RingKind, RingLayout, Segment,
    Token, Used,
};

pub use super::ring::DIRECT_MAX_SEGMENTS;

/// Available ring flag: the driver does not want used-buffer notifications.
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device does not want available-buffer notifications.
const USED_F_NO_NOTIFY: u16 = 1;

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
        }
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

/// CPU pointers to the three ring parts, checked once at creation. Every
/// access is volatile: the device reads and writes this memory behind the
/// compiler's back.
struct RingPointers {
    desc: NonNull<Descriptor>,
    avail: NonNull<u8>,
    used: NonNull<u8>,
    size: u16,
}

impl RingPointers {
    fn mask(&self, index: u16) -> usize {
        (index & (self.size - 1)) as usize
    }

    fn write_descriptor(&self, id: u16, descriptor: Descriptor) {
        debug_assert!(id < self.size);
        let id = self.mask(id);
        let [head, tail] = descriptor.to_words();
        // SAFETY: `id < size` (masked) and the table holds `size` descriptors
        // inside the ring allocation, 16-byte aligned (offset 0 of a page),
        // so both words are in bounds and 8-byte aligned.
        unsafe {
            let words = self.desc.as_ptr().add(id).cast::<u64>();
            words.write_volatile(head);
            words.add(1).write_volatile(tail);
        }
    }

    fn write_u16(base: NonNull<u8>, offset: usize, value: u16) {
        // SAFETY: callers pass offsets inside their ring part (the constants
        // in `layout::avail`/`layout::used` with a masked slot); both parts are
        // inside the allocation and at even offsets.
        unsafe {
            base.as_ptr()
                .add(offset)
                .cast::<u16>()
                .write_volatile(value.to_le())
        }
    }

    fn read_u16(base: NonNull<u8>, offset: usize) -> u16 {
        // SAFETY: as for `write_u16`.
        u16::from_le(unsafe { base.as_ptr().add(offset).cast::<u16>().read_volatile() })
    }

    fn write_avail_slot(&self, slot: u16, head: u16) {
        Self::write_u16(self.avail, avail::RING + 2 * self.mask(slot), head);
    }

    fn write_avail_idx(&self, idx: u16) {
        Self::write_u16(self.avail, avail::IDX, idx);
    }

    fn write_avail_flags(&self, flags: u16) {
        Self::write_u16(self.avail, avail::FLAGS, flags);
    }

    fn write_used_event(&self, value: u16) {
        Self::write_u16(self.avail, avail::used_event(self.size), value);
    }

    fn read_used_flags(&self) -> u16 {
        Self::read_u16(self.used, used::FLAGS)
    }

    fn read_used_idx(&self) -> u16 {
        Self::read_u16(self.used, used::IDX)
    }

    fn read_avail_event(&self) -> u16 {
        Self::read_u16(self.used, used::avail_event(self.size))
    }

    /// The `{id, len}` pair in used-ring slot `slot` (taken modulo the size).
    fn read_used_elem(&self, slot: u16) -> (u32, u32) {
        let offset = used::RING + super::layout::USED_ELEM_BYTES * self.mask(slot);
        // SAFETY: the slot is masked below `size`, so both words lie inside
        // the used ring; it starts 4-byte aligned and elements are 8 bytes.
        unsafe {
            let elem = self.used.as_ptr().add(offset).cast::<u32>();
            (
                u32::from_le(elem.read_volatile()),
                u32::from_le(elem.add(1).read_volatile()),
            )
        }
    }
}

/// A split virtqueue, driver side. See the module documentation.
pub struct SplitQueue<H: Hal> {
    index: u16,
    size: u16,
    event_idx: bool,
    layout: SplitRingLayout,
    ring: DmaRegion<H>,
    rings: RingPointers,
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

// SAFETY: the raw pointers point into `ring`, which the queue owns
// exclusively; moving the queue to another CPU moves that ownership with it.
unsafe impl<H: Hal> Send for SplitQueue<H> {}

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
        let ring = DmaRegion::<H>::new(layout.total_bytes)?;
        let base = ring.as_ptr();
        // The layout fits inside `total_bytes`, and the region is at least that long.
        let part = |offset: usize| NonNull::new(base.as_ptr().wrapping_add(offset));
        let (Some(desc), Some(avail), Some(used)) = (
            part(layout.desc_offset),
            part(layout.avail_offset),
            part(layout.used_offset),
        ) else {
            return Err(QueueError::Dma(hal::HalError::InvalidArgument));
        };
        let rings = RingPointers {
            desc: desc.cast(),
            avail,
            used,
            size,
        };
        let indirect = match config.indirect_capacity {
            0 => None,
            capacity => Some(IndirectPool::new(size, capacity)?),
        };
        let queue = Self {
            index: config.index,
            size,
            event_idx: config.event_idx,
            layout,
            ring,
            rings,
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

    /// Adds one request: `segments` (device-readable ones first, then
    /// device-writable ones) become a descriptor chain and its head goes into
    /// the next available-ring slot. The device does not see it until
    /// [`Ring::publish`]. The buffers must stay shared until the token
    /// comes back from [`Ring::pop_used`] (or [`Ring::reset`]).
    ///
    /// Direct or indirect: see [`DIRECT_MAX_SEGMENTS`]. On error nothing was
    /// changed.
    fn add_buffer(&mut self, segments: &[Segment]) -> Result<Token, QueueError> {
        if self.broken {
            return Err(QueueError::DeviceBroken);
        }
        let writable_len = check_segments(segments)?;
        let indirect = choose_chain(
            segments.len(),
            usize::from(self.free_count),
            usize::from(self.indirect_capacity()),
            usize::from(self.size),
        )?;

        let head = if indirect {
            self.write_indirect_chain(segments, writable_len)
        } else {
            self.write_direct_chain(segments, writable_len)
        };

        let slot = self.avail_idx;
        self.rings.write_avail_slot(slot, head);
        self.avail_idx = slot.wrapping_add(1);
        self.in_flight += 1;
        self.counters.added += 1;
        if indirect {
            self.counters.indirect += 1;
        }
        if log_enabled!(Level::Trace) {
            trace!(
                "vq{}: avail.ring[{}] = {} (slot {} of {}); avail.idx becomes {} at the next publish; {} descriptors free, {} in flight",
                self.index,
                slot,
                head,
                self.rings.mask(slot),
                self.size,
                self.avail_idx,
                self.free_count,
                self.in_flight,
            );
        }
        Ok(Token(head))
    }

    /// Takes `segments.len()` descriptors off the free list and writes them as
    /// one chain. The caller checked that enough are free.
    fn write_direct_chain(&mut self, segments: &[Segment], writable_len: u32) -> u16 {
        let tracing = log_enabled!(Level::Trace);
        if tracing {
            trace!(
                "vq{}: request of {} segment(s) as a direct chain ({} bytes device-writable):",
                self.index,
                segments.len(),
                writable_len
            );
        }
        let head = self.free_head;
        let mut id = head;
        let mut tail = head;
        for (i, segment) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let next = self.next[id as usize];
            let mut flags = if segment.device_writable {
                desc_flags::WRITE
            } else {
                0
            };
            if !last {
                flags |= desc_flags::NEXT;
            }
            let link = if last { 0 } else { next };
            self.rings
                .write_descriptor(id, Descriptor::new(segment.addr, segment.len, flags, link));
            self.states[id as usize] = DescriptorState::Body;
            if tracing {
                trace_descriptor(self.index, "desc", id, segment, (!last).then_some(link));
            }
            tail = id;
            id = next;
        }
        self.free_head = id;
        self.free_count -= segments.len() as u16;
        self.states[head as usize] = DescriptorState::Head {
            tail,
            descriptors: segments.len() as u16,
            writable_len,
        };
        head
    }

    /// Takes one descriptor off the free list, fills its indirect table with
    /// `segments` and points the descriptor at it. The caller checked that a
    /// descriptor is free and the segments fit in a table.
    fn write_indirect_chain(&mut self, segments: &[Segment], writable_len: u32) -> u16 {
        let head = self.free_head;
        self.free_head = self.next[head as usize];
        self.free_count -= 1;
        let tracing = log_enabled!(Level::Trace);
        if let Some(pool) = &self.indirect {
            let table = pool.table_addr(head);
            let table_len = (segments.len() * DESCRIPTOR_BYTES) as u32;
            if tracing {
                trace!(
                    "vq{}: request of {} segment(s) through an indirect table ({} bytes device-writable):",
                    self.index,
                    segments.len(),
                    writable_len
                );
                trace!(
                    "vq{}:   desc[{}] INDIRECT: table at {:#x}, {} bytes = {} descriptors",
                    self.index,
                    head,
                    table,
                    table_len,
                    segments.len()
                );
            }
            for (i, segment) in segments.iter().enumerate() {
                let last = i + 1 == segments.len();
                let mut flags = if segment.device_writable {
                    desc_flags::WRITE
                } else {
                    0
                };
                if !last {
                    flags |= desc_flags::NEXT;
                }
                let link = if last { 0 } else { i as u16 + 1 };
                let written = pool.write(
                    head,
                    i as u16,
                    Descriptor::new(segment.addr, segment.len, flags, link),
                );
                debug_assert!(written, "indirect table entry out of range");
                if tracing {
                    trace_descriptor(
                        self.index,
                        "  table",
                        i as u16,
                        segment,
                        (!last).then_some(link),
                    );
                }
            }
            self.rings.write_descriptor(
                head,
                Descriptor::new(table, table_len, desc_flags::INDIRECT, 0),
            );
        }
        self.states[head as usize] = DescriptorState::Head {
            tail: head,
            descriptors: 1,
            writable_len,
        };
        head
    }

    /// Makes everything added since the last publish visible to the device
    /// (one store to `avail.idx`) and decides whether the device must be
    /// notified. The caller then calls the transport's `notify(queue)` if the
    /// answer is [`NotifyDecision::Notify`].
    fn make_available(&mut self) -> NotifyDecision {
        let old = self.published_idx;
        let new = self.avail_idx;
        if old == new || self.broken {
            return NotifyDecision::NothingNew;
        }
        // §2.7.13.3: the descriptors and ring slots must be visible before the
        // index that tells the device they are there.
        fence(Ordering::Release);
        self.rings.write_avail_idx(new);
        self.published_idx = new;
        // §2.7.13.4: the device may have decided to sleep just before it saw
        // the new index; only a full barrier between our store of avail.idx and
        // our load of its suppression state guarantees one of us sees the other.
        fence(Ordering::SeqCst);
        self.counters.publishes += 1;
        let notify = if self.event_idx {
            let event = self.rings.read_avail_event();
            let notify = need_event(event, new, old);
            if log_enabled!(Level::Trace) {
                trace_event_idx_decision(self.index, event, new, old, notify);
            }
            notify
        } else {
            let flags = self.rings.read_used_flags();
            let notify = flags & USED_F_NO_NOTIFY == 0;
            if log_enabled!(Level::Trace) {
                trace!(
                    "vq{}: publish: avail.idx {} -> {} ({} new); used.flags = {:#x}: NO_NOTIFY {} -> {}",
                    self.index,
                    old,
                    new,
                    new.wrapping_sub(old),
                    flags,
                    if notify { "clear" } else { "set (the device is busy and will look itself)" },
                    if notify { "notify" } else { "suppressed" },
                );
            }
            notify
        };
        if notify {
            self.counters.notifications += 1;
            NotifyDecision::Notify
        } else {
            self.counters.notifications_suppressed += 1;
            NotifyDecision::Suppressed
        }
    }

    /// Takes the next completion from the used ring, if the device has put
    /// one there. Completions come in the order the device finished them,
    /// which need not be the order they were added.
    ///
    /// Errors: see the module documentation. After an entry error
    /// (`UsedId*`, `UsedLengthTooLong`) the bad entry is consumed and the
    /// next call continues with the following one; after an index error
    /// (`UsedIndex*`) the queue is broken.
    fn take_used(&mut self) -> Result<Option<Used>, QueueError> {
        if self.broken {
            return Err(QueueError::DeviceBroken);
        }
        let device_idx = self.rings.read_used_idx();
        if device_idx == self.last_used && device_idx == self.used_idx_seen {
            // Nothing new, and nothing `check_used_idx` could object to (the
            // index is where it was): the usual answer of a poll, cheaply.
            return Ok(None);
        }
        self.check_used_idx(device_idx)?;
        if device_idx == self.last_used {
            return Ok(None);
        }
        // Read the entry only after the index that covers it (§2.7.14: the
        // device writes the entry, then a barrier, then the index).
        fence(Ordering::Acquire);
        let slot = self.last_used;
        let (id, len) = self.rings.read_used_elem(slot);
        self.last_used = slot.wrapping_add(1);
        self.publish_used_event();
        let result = self.complete(id, len);
        match &result {
            Ok(done) => {
                self.counters.completions += 1;
                if log_enabled!(Level::Trace) {
                    trace!(
                        "vq{}: used.idx = {}, consumed {} -> {}: used.ring[{}] = {{id {}, len {}}}: request {} done; {} descriptors free, {} in flight{}",
                        self.index,
                        device_idx,
                        slot,
                        self.last_used,
                        self.rings.mask(slot),
                        id,
                        len,
                        done.token,
                        self.free_count,
                        self.in_flight,
                        UsedEventNote(self),
                    );
                }
            }
            Err(e) => {
                self.counters.device_errors += 1;
                warn!(
                    "vq{}: used.ring[{}] = {{id {}, len {}}} rejected: {}",
                    self.index,
                    self.rings.mask(slot),
                    id,
                    len,
                    e
                );
            }
        }
        result.map(Some)
    }

    /// Checks a freshly read `used.idx` against what the driver knows; on a
    /// violation marks the queue broken.
    fn check_used_idx(&mut self, device_idx: u16) -> Result<(), QueueError> {
        let ahead = device_idx.wrapping_sub(self.last_used);
        let error = if ahead > self.size {
            // Outside the window the device may use. Behind what we saw, or far ahead?
            if (device_idx.wrapping_sub(self.used_idx_seen) as i16) < 0 {
                Some(QueueError::UsedIndexBackward {
                    seen: self.used_idx_seen,
                    device_idx,
                })
            } else {
                Some(QueueError::UsedIndexTooFar {
                    consumed: self.last_used,
                    device_idx,
                    size: self.size,
                })
            }
        } else if device_idx.wrapping_sub(self.used_idx_seen) > self.size {
            // Inside the window but behind a value already seen.
            Some(QueueError::UsedIndexBackward {
                seen: self.used_idx_seen,
                device_idx,
            })
        } else {
            None
        };
        match error {
            Some(e) => {
                self.broken = true;
                self.counters.device_errors += 1;
                warn!(
                    "vq{}: {}; queue marked broken, the device needs a reset",
                    self.index, e
                );
                Err(e)
            }
            None => {
                self.used_idx_seen = device_idx;
                Ok(())
            }
        }
    }

    /// Validates a used entry and returns its chain to the free list.
    fn complete(&mut self, id: u32, len: u32) -> Result<Used, QueueError> {
        if id >= self.size as u32 {
            return Err(QueueError::UsedIdOutOfRange {
                id,
                size: self.size,
            });
        }
        let head = id as u16;
        let (tail, descriptors, writable_len) = match self.states[head as usize] {
            DescriptorState::Free => return Err(QueueError::UsedIdNotInFlight { id: head }),
            DescriptorState::Body => return Err(QueueError::UsedIdNotHead { id: head }),
            DescriptorState::Head {
                tail,
                descriptors,
                writable_len,
            } => (tail, descriptors, writable_len),
        };
        // The chain's links are in `next` already; mark it free and splice it
        // onto the front of the free list.
        let mut id = head;
        for _ in 0..descriptors {
            self.states[id as usize] = DescriptorState::Free;
            id = self.next[id as usize];
        }
        self.next[tail as usize] = self.free_head;
        self.free_head = head;
        self.free_count += descriptors;
        self.in_flight -= 1;
        let token = Token(head);
        if len > writable_len {
            return Err(QueueError::UsedLengthTooLong {
                token,
                len,
                max: writable_len,
            });
        }
        Ok(Used { token, len })
    }

    /// With EVENT_IDX, tells the device which used index should interrupt:
    /// the next one while interrupts are on, one that will never come (the
    /// entry just consumed) while they are off (§2.7.7.2).
    fn publish_used_event(&self) {
        if !self.event_idx {
            return;
        }
        if self.interrupts_enabled {
            self.rings.write_used_event(self.last_used);
            // The next pop reads used.idx; that read must not pass this store,
            // or the device could miss the new event while we miss its entry.
            fence(Ordering::SeqCst);
        } else {
            self.rings.write_used_event(self.last_used.wrapping_sub(1));
        }
    }

    /// Asks the device not to interrupt for this queue (a hint: an interrupt
    /// may still arrive). With EVENT_IDX: `used_event` = the last consumed
    /// index, which the device has already passed; without: the
    /// VIRTQ_AVAIL_F_NO_INTERRUPT flag (§2.7.7).
    fn suppress_interrupts(&mut self) {
        self.interrupts_enabled = false;
        if self.event_idx {
            self.rings.write_used_event(self.last_used.wrapping_sub(1));
        } else {
            self.rings.write_avail_flags(AVAIL_F_NO_INTERRUPT);
        }
        if log_enabled!(Level::Trace) {
            if self.event_idx {
                trace!(
                    "vq{}: interrupts off: used_event := {} (already passed, so the device's need_event test stays false)",
                    self.index,
                    self.last_used.wrapping_sub(1)
                );
            } else {
                trace!(
                    "vq{}: interrupts off: avail.flags := NO_INTERRUPT",
                    self.index
                );
            }
        }
    }

    /// Asks the device to interrupt for the next completion, then checks
    /// whether completions arrived meanwhile. Returns `true` if entries are
    /// pending: the caller must then poll again, because the device may have
    /// added them before it saw the request and will not interrupt for them.
    fn request_interrupts(&mut self) -> bool {
        self.interrupts_enabled = true;
        if self.event_idx {
            self.rings.write_used_event(self.last_used);
        } else {
            self.rings.write_avail_flags(0);
        }
        // Our store must be visible before we look at used.idx (the mirror of
        // the barrier in `publish`).
        fence(Ordering::SeqCst);
        let device_idx = self.rings.read_used_idx();
        let pending = !self.broken && device_idx != self.last_used;
        if log_enabled!(Level::Trace) {
            if self.event_idx {
                trace!(
                    "vq{}: interrupts on: used_event := {} (interrupt when used.idx moves past {}); used.idx = {}: {}",
                    self.index,
                    self.last_used,
                    self.last_used,
                    device_idx,
                    if pending { "entries already pending, poll again" } else { "nothing pending" }
                );
            } else {
                trace!(
                    "vq{}: interrupts on: avail.flags := 0; used.idx = {}: {}",
                    self.index,
                    device_idx,
                    if pending {
                        "entries already pending, poll again"
                    } else {
                        "nothing pending"
                    }
                );
            }
        }
        pending
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

    #[inline]
    fn counters(&self) -> QueueCounters {
        self.counters
    }

    #[inline]
    fn is_broken(&self) -> bool {
        self.broken
    }

    /// See [`SplitQueue::add_buffer`].
    #[inline]
    fn add(&mut self, segments: &[Segment]) -> Result<Token, QueueError> {
        self.add_buffer(segments)
    }

    /// See [`SplitQueue::make_available`].
    #[inline]
    fn publish(&mut self) -> NotifyDecision {
        self.make_available()
    }

    /// See [`SplitQueue::take_used`].
    #[inline]
    fn pop_used(&mut self) -> Result<Option<Used>, QueueError> {
        self.take_used()
    }

    /// See [`SplitQueue::suppress_interrupts`].
    #[inline]
    fn disable_interrupts(&mut self) {
        self.suppress_interrupts()
    }

    /// See [`SplitQueue::request_interrupts`].
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
        for offset in (0..self.ring.len()).step_by(8) {
            self.ring.write::<u64>(offset, 0);
        }
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

fn trace_descriptor(queue: u16, table: &str, id: u16, segment: &Segment, next: Option<u16>) {
    match next {
        Some(next) => trace!(
            "vq{}:   {}[{}]: addr {:#x}, len {}, {} -> next {}",
            queue,
            table,
            id,
            segment.addr,
            segment.len,
            if segment.device_writable {
                "device-writable"
            } else {
                "device-readable"
            },
            next
        ),
        None => trace!(
            "vq{}:   {}[{}]: addr {:#x}, len {}, {} (end of chain)",
            queue,
            table,
            id,
            segment.addr,
            segment.len,
            if segment.device_writable {
                "device-writable"
            } else {
                "device-readable"
            },
        ),
    }
}

fn trace_event_idx_decision(queue: u16, event: u16, new: u16, old: u16, notify: bool) {
    let behind = new.wrapping_sub(event).wrapping_sub(1);
    let published = new.wrapping_sub(old);
    trace!(
        "vq{}: publish: avail.idx {} -> {} ({} new); device's avail_event = {}; need_event: (new - avail_event - 1) mod 65536 = ({} - {} - 1) mod 65536 = {} {} (new - old) mod 65536 = ({} - {}) mod 65536 = {} -> {}",
        queue,
        old,
        new,
        published,
        event,
        new,
        event,
        behind,
        if notify { "<" } else { ">=" },
        new,
        old,
        published,
        if notify {
            "notify: the device asked to be woken once avail.idx passed avail_event, and this publish moved it past"
        } else {
            "suppressed: avail_event is not among the entries just published, so the device is still catching up and will find them itself"
        }
    );
}

/// Formats the indirect-table part of the queue's creation trace line.
struct IndirectNote(u16);

impl core::fmt::Display for IndirectNote {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            0 => f.write_str("none"),
            n => write!(f, "{n} entries each, one per descriptor"),
        }
    }
}

/// Formats the `used_event` part of a completion's trace line.
struct UsedEventNote<'a, H: Hal>(&'a SplitQueue<H>);

impl<H: Hal> core::fmt::Display for UsedEventNote<'_, H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let q = self.0;
        match (q.event_idx, q.interrupts_enabled) {
            (false, _) => Ok(()),
            (true, true) => write!(
                f,
                "; used_event := {} (interrupt when used.idx moves past {})",
                q.last_used, q.last_used
            ),
            (true, false) => write!(
                f,
                "; used_event := {} (interrupts off)",
                q.last_used.wrapping_sub(1)
            ),
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
