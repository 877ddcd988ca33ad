//! One virtqueue type for device drivers, whatever the ring layout
//! (virtio 1.2 §2.7 split, §2.8 packed; chosen by VIRTIO_F_RING_PACKED,
//! §6 "Reserved Feature Bits").
//!
//! A device negotiates the ring layout once, for all its queues: packed if
//! VIRTIO_F_RING_PACKED was accepted, split otherwise. [`RingKind`] names the
//! result and [`Virtqueue`] holds a queue of either kind behind exactly the
//! methods a device driver uses on [`SplitQueue`]: `add`, `publish`,
//! `pop_used`, `enable_interrupts`/`disable_interrupts`, `reset`, and the
//! accessors. Tokens, completions, notification decisions, counters and
//! errors are the same types for both, so switching a driver from
//! `SplitQueue<H>` to `Virtqueue<H>` is a change of type and constructor:
//!
//! ```text
//! let size = RingKind::from_features(negotiated).choose_size(max, cap, fixed)?;
//! let queue = Virtqueue::<H>::from_features(QueueConfig::new(i, size, layout)..., negotiated)?;
//! ```
//!
//! The enum costs one predictable branch per call; no allocation, no
//! dynamic dispatch.

use core::fmt;

use hal::Hal;

use super::packed::{choose_packed_queue_size, PackedQueue};
use super::split::{QueueConfig, SplitQueue};
use super::{choose_queue_size, NotifyDecision, QueueAddresses, QueueCounters, QueueError};
use super::{Segment, Token, Used};
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

/// A virtqueue of either layout. See the module documentation; every method
/// behaves as documented on [`SplitQueue`] and [`PackedQueue`].
pub enum Virtqueue<H: Hal> {
    /// A split ring.
    Split(SplitQueue<H>),
    /// A packed ring.
    Packed(PackedQueue<H>),
}

/// Calls the same method on whichever queue is inside.
macro_rules! on_ring {
    ($self:expr, $queue:ident => $call:expr) => {
        match $self {
            Virtqueue::Split($queue) => $call,
            Virtqueue::Packed($queue) => $call,
        }
    };
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

    /// Which layout this queue uses.
    #[inline]
    pub fn kind(&self) -> RingKind {
        match self {
            Virtqueue::Split(_) => RingKind::Split,
            Virtqueue::Packed(_) => RingKind::Packed,
        }
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

    /// The device addresses the transport must program.
    #[inline]
    pub fn addresses(&self) -> QueueAddresses {
        on_ring!(self, q => q.addresses())
    }

    /// The queue's number on its device.
    #[inline]
    pub fn index(&self) -> u16 {
        on_ring!(self, q => q.index())
    }

    /// Number of descriptors.
    #[inline]
    pub fn size(&self) -> u16 {
        on_ring!(self, q => q.size())
    }

    /// Descriptors free. Equals [`Virtqueue::size`] when nothing is in flight.
    #[inline]
    pub fn free_descriptors(&self) -> u16 {
        on_ring!(self, q => q.free_descriptors())
    }

    /// Requests added and not yet returned.
    #[inline]
    pub fn in_flight(&self) -> u16 {
        on_ring!(self, q => q.in_flight())
    }

    /// The token the next successful `add` will return, if one is free.
    #[inline]
    pub fn next_token(&self) -> Option<Token> {
        on_ring!(self, q => q.next_token())
    }

    /// Requests added since the last `publish` (invisible to the device).
    #[inline]
    pub fn unpublished(&self) -> u16 {
        on_ring!(self, q => q.unpublished())
    }

    /// Entries per indirect table (0: indirect descriptors not in use).
    #[inline]
    pub fn indirect_capacity(&self) -> u16 {
        on_ring!(self, q => q.indirect_capacity())
    }

    /// Whether VIRTIO_F_RING_EVENT_IDX is in use.
    #[inline]
    pub fn uses_event_idx(&self) -> bool {
        on_ring!(self, q => q.uses_event_idx())
    }

    /// Statistics since creation.
    #[inline]
    pub fn counters(&self) -> QueueCounters {
        on_ring!(self, q => q.counters())
    }

    /// `true` after a fatal protocol violation by the device.
    #[inline]
    pub fn is_broken(&self) -> bool {
        on_ring!(self, q => q.is_broken())
    }

    /// Adds one request (invisible to the device until `publish`).
    #[inline]
    pub fn add(&mut self, segments: &[Segment]) -> Result<Token, QueueError> {
        on_ring!(self, q => q.add(segments))
    }

    /// Makes everything added visible and says whether to notify the device.
    #[inline]
    pub fn publish(&mut self) -> NotifyDecision {
        on_ring!(self, q => q.publish())
    }

    /// Takes the next completion, if any.
    #[inline]
    pub fn pop_used(&mut self) -> Result<Option<Used>, QueueError> {
        on_ring!(self, q => q.pop_used())
    }

    /// Asks the device not to interrupt for this queue.
    #[inline]
    pub fn disable_interrupts(&mut self) {
        on_ring!(self, q => q.disable_interrupts())
    }

    /// Asks the device to interrupt for the next completion; `true` if one is
    /// already pending (poll again before sleeping).
    #[inline]
    pub fn enable_interrupts(&mut self) -> bool {
        on_ring!(self, q => q.enable_interrupts())
    }

    /// Starts over after a device reset, handing back every token in flight.
    pub fn reset(&mut self, abandoned: impl FnMut(Token)) {
        on_ring!(self, q => q.reset(abandoned))
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
        on_ring!(self, q => fmt::Debug::fmt(q, f))
    }
}
