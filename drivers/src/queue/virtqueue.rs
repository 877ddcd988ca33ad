//! One virtqueue type for device drivers, whatever the ring layout
//! (virtio 1.2 §2.7 split, §2.8 packed; chosen by VIRTIO_F_RING_PACKED,
//! §6 "Reserved Feature Bits").
//!
//! A device negotiates the ring layout once, for all its queues: packed if
//! VIRTIO_F_RING_PACKED was accepted, split otherwise. [`RingKind`] names the
//! result and [`Virtqueue`] holds a queue of either kind. It implements
//! [`Ring`], every method one `match` on the layout that hands the call to
//! the ring inside (`#[inline]`, so both arms are direct calls the compiler
//! can inline: one predictable branch per call, no allocation, no vtable;
//! the reasons are in the documentation of [`super`]). This is the one place
//! the two layouts meet:
//!
//! ```text
//! let size = RingKind::from_features(negotiated).choose_size(max, cap, fixed)?;
//! let queue = Virtqueue::<H>::from_features(QueueConfig::new(i, size, layout)..., negotiated)?;
//! ```

use core::fmt;

use hal::Hal;

use super::packed::{choose_packed_queue_size, PackedQueue};
use super::ring::Ring;
use super::snapshot::{DescriptorView, QueueSnapshot};
use super::split::{QueueConfig, SplitQueue};
use super::{choose_queue_size, NotifyDecision, QueueAddresses, QueueCounters, QueueError};
use super::{MemoryOrder, Segment, Token, Used};
use crate::features;

/// Which ring layout a device's queues use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RingKind {
    /// The split ring (§2.7): descriptor table, available ring, used ring.
    Split,
    /// The packed ring (§2.8): one descriptor ring and two event suppression structures.
    Packed,
}

impl RingKind {
    /// The layout the negotiated features call for: packed exactly when
    /// VIRTIO_F_RING_PACKED was accepted.
    pub fn from_features(negotiated: u64) -> Self {
        if negotiated & features::RING_PACKED != 0 {
            RingKind::Packed
        } else {
            RingKind::Split
        }
    }

    /// The name used in logs and on the `virtio:` boot line.
    pub fn name(self) -> &'static str {
        match self {
            RingKind::Split => "split",
            RingKind::Packed => "packed",
        }
    }

    /// Picks a queue size for this layout: as large as the device allows,
    /// up to `driver_cap`; a power of two for the split ring
    /// ([`choose_queue_size`]), any size for the packed ring
    /// ([`choose_packed_queue_size`]). With `fixed` (legacy PCI) the
    /// device's maximum is the only choice.
    pub fn choose_size(
        self,
        device_max: u16,
        driver_cap: u16,
        fixed: bool,
    ) -> Result<u16, QueueError> {
        match self {
            RingKind::Split => choose_queue_size(device_max, driver_cap, fixed),
            RingKind::Packed => choose_packed_queue_size(device_max, driver_cap, fixed),
        }
    }
}

impl fmt::Display for RingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A virtqueue of either layout. See the module documentation; every
/// [`Ring`] method behaves as documented there and on [`SplitQueue`] and
/// [`PackedQueue`].
// The split ring's state is larger (its ring memory keeps the place of each
// of its arrays, so that an access needs no bounds check). Boxing it would
// put a pointer chase on every call of the hot path; a device has a few
// queues, so the bytes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Virtqueue<H: Hal> {
    /// A split ring.
    Split(SplitQueue<H>),
    /// A packed ring.
    Packed(PackedQueue<H>),
}

impl<H: Hal> Virtqueue<H> {
    /// Allocates a queue of layout `kind` (see [`SplitQueue::new`] and
    /// [`PackedQueue::new`]). A packed ring needs `config.layout ==
    /// RingLayout::Separate`; its size need not be a power of two.
    pub fn new(kind: RingKind, config: QueueConfig) -> Result<Self, QueueError> {
        Ok(match kind {
            RingKind::Split => Virtqueue::Split(SplitQueue::new(config)?),
            RingKind::Packed => Virtqueue::Packed(PackedQueue::new(config)?),
        })
    }

    /// [`Virtqueue::new`] with the layout the negotiated features call for
    /// ([`RingKind::from_features`]). `config` still says whether event
    /// indices and indirect tables are in use.
    pub fn from_features(config: QueueConfig, negotiated: u64) -> Result<Self, QueueError> {
        Self::new(RingKind::from_features(negotiated), config)
    }

    /// The split queue inside, if it is one.
    pub fn as_split(&self) -> Option<&SplitQueue<H>> {
        match self {
            Virtqueue::Split(q) => Some(q),
            Virtqueue::Packed(_) => None,
        }
    }

    /// The packed queue inside, if it is one.
    pub fn as_packed(&self) -> Option<&PackedQueue<H>> {
        match self {
            Virtqueue::Packed(q) => Some(q),
            Virtqueue::Split(_) => None,
        }
    }
}

// Each method: the split ring's, or the packed ring's. (Linux's
// `virtio_ring.c` writes the same thing as `vq->packed_ring ?
// virtqueue_add_packed(...) : virtqueue_add_split(...)`.)
impl<H: Hal> Ring for Virtqueue<H> {
    #[inline]
    fn kind(&self) -> RingKind {
        match self {
            Virtqueue::Split(_) => RingKind::Split,
            Virtqueue::Packed(_) => RingKind::Packed,
        }
    }

    #[inline]
    fn addresses(&self) -> QueueAddresses {
        match self {
            Virtqueue::Split(q) => q.addresses(),
            Virtqueue::Packed(q) => q.addresses(),
        }
    }

    #[inline]
    fn index(&self) -> u16 {
        match self {
            Virtqueue::Split(q) => q.index(),
            Virtqueue::Packed(q) => q.index(),
        }
    }

    #[inline]
    fn size(&self) -> u16 {
        match self {
            Virtqueue::Split(q) => q.size(),
            Virtqueue::Packed(q) => q.size(),
        }
    }

    #[inline]
    fn free_descriptors(&self) -> u16 {
        match self {
            Virtqueue::Split(q) => q.free_descriptors(),
            Virtqueue::Packed(q) => q.free_descriptors(),
        }
    }

    #[inline]
    fn in_flight(&self) -> u16 {
        match self {
            Virtqueue::Split(q) => q.in_flight(),
            Virtqueue::Packed(q) => q.in_flight(),
        }
    }

    #[inline]
    fn next_token(&self) -> Option<Token> {
        match self {
            Virtqueue::Split(q) => q.next_token(),
            Virtqueue::Packed(q) => q.next_token(),
        }
    }

    #[inline]
    fn unpublished(&self) -> u16 {
        match self {
            Virtqueue::Split(q) => q.unpublished(),
            Virtqueue::Packed(q) => q.unpublished(),
        }
    }

    #[inline]
    fn indirect_capacity(&self) -> u16 {
        match self {
            Virtqueue::Split(q) => q.indirect_capacity(),
            Virtqueue::Packed(q) => q.indirect_capacity(),
        }
    }

    #[inline]
    fn uses_event_idx(&self) -> bool {
        match self {
            Virtqueue::Split(q) => q.uses_event_idx(),
            Virtqueue::Packed(q) => q.uses_event_idx(),
        }
    }

    #[inline]
    fn memory_order(&self) -> MemoryOrder {
        match self {
            Virtqueue::Split(q) => q.memory_order(),
            Virtqueue::Packed(q) => q.memory_order(),
        }
    }

    #[inline]
    fn counters(&self) -> QueueCounters {
        match self {
            Virtqueue::Split(q) => q.counters(),
            Virtqueue::Packed(q) => q.counters(),
        }
    }

    #[inline]
    fn is_broken(&self) -> bool {
        match self {
            Virtqueue::Split(q) => q.is_broken(),
            Virtqueue::Packed(q) => q.is_broken(),
        }
    }

    fn snapshot(&self, descriptors: &mut [DescriptorView]) -> QueueSnapshot {
        match self {
            Virtqueue::Split(q) => q.snapshot(descriptors),
            Virtqueue::Packed(q) => q.snapshot(descriptors),
        }
    }

    #[inline]
    fn add(&mut self, segments: &[Segment]) -> Result<Token, QueueError> {
        match self {
            Virtqueue::Split(q) => q.add(segments),
            Virtqueue::Packed(q) => q.add(segments),
        }
    }

    #[inline]
    fn publish(&mut self) -> NotifyDecision {
        match self {
            Virtqueue::Split(q) => q.publish(),
            Virtqueue::Packed(q) => q.publish(),
        }
    }

    #[inline]
    fn pop_used(&mut self) -> Result<Option<Used>, QueueError> {
        match self {
            Virtqueue::Split(q) => q.pop_used(),
            Virtqueue::Packed(q) => q.pop_used(),
        }
    }

    #[inline]
    fn disable_interrupts(&mut self) {
        match self {
            Virtqueue::Split(q) => q.disable_interrupts(),
            Virtqueue::Packed(q) => q.disable_interrupts(),
        }
    }

    #[inline]
    fn enable_interrupts(&mut self) -> bool {
        match self {
            Virtqueue::Split(q) => q.enable_interrupts(),
            Virtqueue::Packed(q) => q.enable_interrupts(),
        }
    }

    fn reset(&mut self, abandoned: impl FnMut(Token)) {
        match self {
            Virtqueue::Split(q) => q.reset(abandoned),
            Virtqueue::Packed(q) => q.reset(abandoned),
        }
    }
}

impl<H: Hal> From<SplitQueue<H>> for Virtqueue<H> {
    fn from(queue: SplitQueue<H>) -> Self {
        Virtqueue::Split(queue)
    }
}

impl<H: Hal> From<PackedQueue<H>> for Virtqueue<H> {
    fn from(queue: PackedQueue<H>) -> Self {
        Virtqueue::Packed(queue)
    }
}

impl<H: Hal> fmt::Debug for Virtqueue<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Virtqueue::Split(q) => fmt::Debug::fmt(q, f),
            Virtqueue::Packed(q) => fmt::Debug::fmt(q, f),
        }
    }
}
