//! The one interface every ring layout implements (virtio 1.2 §2.6
//! "Virtqueues"; §2.7 split, §2.8 packed).
//!
//! [`Ring`] is what a device driver may do with a virtqueue, whatever its
//! layout: add a request, publish what was added, take completions, turn
//! used-buffer interrupts on and off, start over after a device reset, and
//! look at the queue's state. [`super::SplitQueue`] and [`super::PackedQueue`]
//! implement it, each in its own way; [`super::Virtqueue`] implements it by
//! handing each call to the ring it holds. A driver written against `Ring`
//! runs on both layouts.
//!
//! The contract below is the same for both layouts, and host tests check it
//! against both (`tests/tests/ring_contract.rs`). Where the layouts differ
//! (which device errors are fatal, how a request is laid out in memory) the
//! implementing type's documentation says so.
//!
//! This module also holds the two checks both layouts make in `add` before
//! touching ring memory: [`check_segments`] (the shape of a request) and
//! [`choose_chain`] (direct chain or indirect table).

use super::snapshot::{DescriptorView, QueueSnapshot};
use super::{MemoryOrder, RingKind, Segment, Token, Used};
use super::{NotifyDecision, QueueAddresses, QueueCounters, QueueError};

/// A virtqueue's ring, driver side: the operations and accessors a device
/// driver uses. See the module documentation.
///
/// The life of a request: [`Ring::add`] writes it into ring memory, invisible
/// to the device; [`Ring::publish`] exposes everything added since the last
/// publish and says whether to notify the device (the caller then calls the
/// transport's `notify`, see [`crate::device::kick`]); the device processes it;
/// [`Ring::pop_used`] hands back its [`Token`] and the byte count the device
/// wrote.
pub trait Ring {
    /// Which layout this ring uses.
    fn kind(&self) -> RingKind;

    /// The device addresses the transport must program (descriptor area,
    /// driver area, device area).
    fn addresses(&self) -> QueueAddresses;

    /// The queue's number on its device (what the transport's `notify` takes).
    fn index(&self) -> u16;

    /// Number of descriptors.
    fn size(&self) -> u16;

    /// Ring descriptors free. Equals [`Ring::size`] when nothing is in flight.
    fn free_descriptors(&self) -> u16;

    /// Requests added and not yet returned by [`Ring::pop_used`] (or [`Ring::reset`]).
    fn in_flight(&self) -> u16;

    /// The token the next successful [`Ring::add`] will return, or `None` if
    /// nothing is free. A driver that keeps per-request state in an array
    /// indexed by [`Token::index`] can fill its entry before adding.
    fn next_token(&self) -> Option<Token>;

    /// Requests added since the last [`Ring::publish`] (invisible to the device).
    fn unpublished(&self) -> u16;

    /// Entries per indirect table (0: indirect descriptors not in use).
    fn indirect_capacity(&self) -> u16;

    /// Whether VIRTIO_F_RING_EVENT_IDX is in use.
    fn uses_event_idx(&self) -> bool;

    /// The barriers the queue uses (the platform's with VIRTIO_F_ORDER_PLATFORM).
    fn memory_order(&self) -> MemoryOrder;

    /// Statistics since creation (kept across [`Ring::reset`]).
    fn counters(&self) -> QueueCounters;

    /// `true` after a fatal protocol violation by the device: every call
    /// then fails with [`QueueError::DeviceBroken`] until [`Ring::reset`].
    fn is_broken(&self) -> bool;

    /// A read-only look at the queue as it stands now (module
    /// [`super::snapshot`]): indices, event fields and counters, and in
    /// `descriptors` the state of the first `descriptors.len()` descriptors
    /// (or ring slots; at most [`Ring::size`] are filled). Writes nothing;
    /// what the device wrote is only reported, never trusted, so it never
    /// panics, whatever is in ring memory.
    fn snapshot(&self, descriptors: &mut [DescriptorView]) -> QueueSnapshot;

    /// Adds one request: `segments`, device-readable ones first, then
    /// device-writable ones (§2.7.4.2). The device does not see it until
    /// [`Ring::publish`]. The buffers must stay shared until the token comes
    /// back from [`Ring::pop_used`] (or [`Ring::reset`]). On error nothing
    /// was changed.
    fn add(&mut self, segments: &[Segment]) -> Result<Token, QueueError>;

    /// Makes everything added since the last publish visible to the device
    /// and decides whether the device must be notified (§2.7.13.4,
    /// §2.8.21.3).
    fn publish(&mut self) -> NotifyDecision;

    /// Takes the next completion, if the device has returned one.
    /// Completions come in the order the device finished them.
    fn pop_used(&mut self) -> Result<Option<Used>, QueueError>;

    /// Asks the device not to interrupt for this queue (a hint: an
    /// interrupt may still arrive; §2.7.7, §2.8.10).
    fn disable_interrupts(&mut self);

    /// Asks the device to interrupt for the next completion, then checks
    /// whether completions arrived meanwhile. `true` if one is pending: the
    /// caller must poll again before sleeping, because the device may have
    /// returned it before it saw the request and will not interrupt for it.
    fn enable_interrupts(&mut self) -> bool;

    /// Starts over after the device was reset (§2.4): every request still in
    /// flight (or added and never published) is handed to `abandoned` so its
    /// buffers can be released, the ring memory is zeroed and the queue
    /// returns to its initial state. Program [`Ring::addresses`] (unchanged)
    /// into the transport again before use. Counters are kept.
    fn reset(&mut self, abandoned: impl FnMut(Token));
}

/// Requests of at most this many segments use a direct chain whenever that
/// many descriptors are free: an indirect table would cost the device an extra
/// memory read to save at most one ring descriptor.
///
/// The full rule, [`choose_chain`], applied by both layouts' `add` to a
/// request of `n` segments:
/// 1. `n <= DIRECT_MAX_SEGMENTS` and `n` descriptors are free: direct chain;
/// 2. indirect tables were configured, `n` fits in one, and one descriptor is
///    free: indirect (a long chain costs one ring slot instead of `n`, and
///    when descriptors are scarce a short one still fits);
/// 3. `n` descriptors are free: direct chain;
/// 4. otherwise [`QueueError::QueueFull`] (or [`QueueError::TooManySegments`]
///    if no chain on this queue could ever hold `n` segments).
pub const DIRECT_MAX_SEGMENTS: usize = 2;

/// How `add` lays out a request: `true` for an indirect table, `false` for
/// a direct chain (the rule of [`DIRECT_MAX_SEGMENTS`]). `segments` is the
/// request's length, `free` the free ring descriptors, `capacity` the
/// indirect table size (0: none), `size` the queue size.
#[inline]
pub fn choose_chain(
    segments: usize,
    free: usize,
    capacity: usize,
    size: usize,
) -> Result<bool, QueueError> {
    let n = segments;
    if n <= DIRECT_MAX_SEGMENTS && n <= free {
        Ok(false)
    } else if n <= capacity && free >= 1 {
        Ok(true)
    } else if n <= free {
        Ok(false)
    } else if n > size {
        Err(QueueError::TooManySegments {
            segments: n,
            max: size,
        })
    } else {
        let needed = if n <= capacity { 1 } else { n };
        Err(QueueError::QueueFull { needed, free })
    }
}

/// Checks the shape of a request and returns its device-writable byte count:
/// at least one segment, none empty, no device-readable segment after a
/// device-writable one (§2.7.4.2, §2.8.4), at most 2^32 - 1 bytes in all.
#[inline]
pub fn check_segments(segments: &[Segment]) -> Result<u32, QueueError> {
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
