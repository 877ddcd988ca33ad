//! A read-only look at one virtqueue, as it stands at the moment of the
//! call: the indices, the event-suppression fields, the counters and the
//! state of every descriptor (virtio 1.2 §2.7 "Split Virtqueues", §2.7.7
//! and §2.7.10 for the event indices; §2.8 "Packed Virtqueues", §2.8.1 for
//! the wrap counters, §2.8.10 and §2.8.14 for the event suppression
//! structures).
//!
//! [`Ring::snapshot`](super::Ring::snapshot) fills a [`QueueSnapshot`]; the
//! kernel's live queue view (`/api/queues`, the `/queues` page, the shell's
//! `queues` and `ring`, rendered by [`crate::view`]) is built from it.
//!
//! ## What is read from where
//!
//! - The driver's own bookkeeping (free descriptors, requests in flight, the
//!   consumed used index, which descriptor heads a chain) is copied as it is.
//! - Fields the device writes (split: `used.idx`, `used.flags`,
//!   `avail_event`; packed: descriptor flags, the device event suppression
//!   structure) are read once, with volatile reads, and **treated as
//!   untrusted**: a snapshot only reports them. Nothing the device wrote is
//!   used as an index without a bound, and no arithmetic on them can panic,
//!   so a snapshot of a queue whose device writes garbage (or a broken
//!   queue) is as safe to take as any other.
//! - Fields the driver writes into ring memory (split `avail.idx`,
//!   `avail.flags`, `used_event`) are read back from ring memory, so the
//!   view shows what the device can see, not what the driver meant.
//!
//! Taking a snapshot changes nothing: it needs `&self` and writes no ring
//! memory, so a live view can look at a queue while the driver uses it.
//!
//! ## Indices of a packed ring
//!
//! A packed ring has no free-running `avail.idx` and `used.idx`. So that one
//! set of field names describes both layouts, a packed ring's positions are
//! given as *positions modulo two laps* ([`RingPosition::linear`]): the slot
//! offset while the wrap counter is 1, offset + size while it is 0. The
//! offsets and wrap counters themselves are in [`PackedSnapshot`].

use super::packed::{event_flags, RingPosition};
use super::{QueueCounters, RingKind};

/// How many descriptors a snapshot describes one by one at most; larger
/// rings get only their first `DESCRIPTOR_VIEW_MAX` (the view's JSON must
/// stay small).
pub const DESCRIPTOR_VIEW_MAX: usize = 256;

/// What one descriptor (split ring: a descriptor table entry; packed ring:
/// a slot of the descriptor ring) is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DescriptorView {
    /// Not part of any request: the driver may use it for the next one.
    #[default]
    Free,
    /// The first descriptor of a chain the device owns (or may own).
    Head,
    /// A later descriptor of such a chain (VIRTQ_DESC_F_NEXT led here).
    Chained,
    /// A descriptor pointing at an indirect table (§2.7.5.3, §2.8.7): the
    /// whole request in one ring descriptor.
    Indirect,
    /// Written by `add` but not yet published: the device cannot see it.
    Pending,
    /// Packed ring only: a descriptor the device has marked used (AVAIL =
    /// USED = its wrap counter) that the driver has not collected yet.
    Used,
}

impl DescriptorView {
    /// Every state, in the order the legends list them.
    pub const ALL: [DescriptorView; 6] = [
        DescriptorView::Free,
        DescriptorView::Head,
        DescriptorView::Chained,
        DescriptorView::Indirect,
        DescriptorView::Pending,
        DescriptorView::Used,
    ];

    /// One character per state, for the JSON `descriptors` string and the
    /// shell's drawing.
    pub const fn code(self) -> char {
        match self {
            DescriptorView::Free => '.',
            DescriptorView::Head => 'H',
            DescriptorView::Chained => 'c',
            DescriptorView::Indirect => 'I',
            DescriptorView::Pending => 'p',
            DescriptorView::Used => 'u',
        }
    }

    /// The state's name (the JSON legend, the page's key).
    pub const fn name(self) -> &'static str {
        match self {
            DescriptorView::Free => "free",
            DescriptorView::Head => "head",
            DescriptorView::Chained => "chained",
            DescriptorView::Indirect => "indirect",
            DescriptorView::Pending => "pending",
            DescriptorView::Used => "used",
        }
    }
}

/// One `struct pvirtq_event_suppress` as read from memory (§2.8.14): which
/// notifications its writer wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventSuppression {
    /// `le16 off_wrap`: descriptor offset (bits 0-14) and wrap counter (bit 15).
    pub off_wrap: u16,
    /// `le16 flags`: ENABLE (0), DISABLE (1) or DESC (2).
    pub flags: u16,
}

impl EventSuppression {
    /// `enable`, `disable`, `desc` or `reserved` (the value 3).
    pub fn mode(self) -> &'static str {
        match self.flags & event_flags::MASK {
            event_flags::ENABLE => "enable",
            event_flags::DISABLE => "disable",
            event_flags::DESC => "desc",
            _ => "reserved",
        }
    }

    /// The position `off_wrap` names (its offset is not checked against
    /// the ring size: the device may have written anything).
    pub fn position(self) -> RingPosition {
        RingPosition::from_event_word(self.off_wrap)
    }
}

/// The split ring's flags words (§2.7.6, §2.7.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SplitSnapshot {
    /// `avail.flags` (bit 0: VIRTQ_AVAIL_F_NO_INTERRUPT), as in memory.
    pub avail_flags: u16,
    /// `used.flags` (bit 0: VIRTQ_USED_F_NO_NOTIFY), as the device wrote it.
    pub used_flags: u16,
}

/// The packed ring's positions and event suppression structures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedSnapshot {
    /// Where `add` writes next, with the driver ring wrap counter.
    pub next_avail: RingPosition,
    /// The first slot not yet made available (`next_avail` after a publish).
    pub published: RingPosition,
    /// Where the driver expects the device's next used descriptor (the
    /// driver's copy of the device ring wrap counter).
    pub next_used: RingPosition,
    /// How far the device has gone: `next_used` moved past every used
    /// descriptor the device has written and the driver not yet collected.
    pub device_used: RingPosition,
    /// The driver event suppression structure (driver area), as in memory.
    pub driver_event: EventSuppression,
    /// The device event suppression structure (device area), as the device
    /// wrote it.
    pub device_event: EventSuppression,
}

/// Layout-specific part of a [`QueueSnapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutSnapshot {
    /// A split ring's flags.
    Split(SplitSnapshot),
    /// A packed ring's positions and event structures.
    Packed(PackedSnapshot),
}

/// One queue at one moment. See the module documentation for where each
/// field comes from and what a packed ring's indices mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// The queue's number on its device.
    pub index: u16,
    /// Number of descriptors.
    pub size: u16,
    /// Split or packed.
    pub kind: RingKind,
    /// Split: `avail.idx` as in memory (what the device can see). Packed:
    /// the published position modulo two laps.
    pub avail_idx: u16,
    /// Split: `used.idx` as the device wrote it. Packed: how far the device
    /// has marked descriptors used, modulo two laps.
    pub used_idx: u16,
    /// Used entries the driver has consumed (split, free-running), or the
    /// driver's next used position modulo two laps (packed).
    pub last_used_idx: u16,
    /// Requests added and not yet returned.
    pub in_flight: u16,
    /// Descriptors not held by a request.
    pub free_descriptors: u16,
    /// Requests added since the last publish (the device cannot see them).
    pub unpublished: u16,
    /// VIRTIO_F_RING_EVENT_IDX is in use.
    pub event_idx: bool,
    /// Split: `avail_event` as the device wrote it (the avail index whose
    /// arrival it wants notified). Packed: the device event structure's
    /// position modulo two laps. Meaningful with [`Self::event_idx`].
    pub avail_event: u16,
    /// Split: `used_event` as in memory (the used index whose arrival
    /// should interrupt the driver). Packed: the driver event structure's
    /// position modulo two laps. Meaningful with [`Self::event_idx`].
    pub used_event: u16,
    /// Entries per indirect table (0: none).
    pub indirect_capacity: u16,
    /// The driver has asked for used-buffer notifications (interrupts).
    pub interrupts_enabled: bool,
    /// The device broke the queue (§ on misbehaviour in each ring's docs).
    pub broken: bool,
    /// The ring's counters (notifications sent and suppressed, ...).
    pub counters: QueueCounters,
    /// Split or packed details.
    pub layout: LayoutSnapshot,
    /// How many entries of the caller's descriptor slice were filled.
    pub descriptors_shown: u16,
}

impl QueueSnapshot {
    /// The ring slot a split index or a packed position names (`index mod
    /// size`); 0 for a size of 0, which no ring has.
    pub fn slot_of(&self, index: u16) -> u16 {
        match self.size {
            0 => 0,
            size => index % size,
        }
    }
}
