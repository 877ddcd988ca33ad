//! # The live queue view: what a reader watches
//!
//! The kernel shows its rings while they work: `GET /api/queues` (JSON),
//! the `/queues` page that draws it, and the shell's `queues` and `ring`.
//! This module is the part of that which needs no kernel, so host tests can
//! check it against rings driven by the device models:
//!
//! - [`DeviceRecord`] and [`QueueRecord`]: one device and its queues, taken
//!   at one moment ([`QueueRecord::capture`] calls
//!   [`Ring::snapshot`], virtio 1.2 §2.7 and
//!   §2.8);
//! - [`json`]: the `/api/queues` document (its schema is in
//!   `docs/queue-view.md`; the field names are stable);
//! - [`text`]: the shell's one line per queue and its drawing of one ring.
//!
//! The kernel collects the records (`kernel/src/virtio/view.rs`): for each
//! device in the registry, its facts, and for each queue its driver set up,
//! a snapshot plus the interrupt count the kernel's interrupt code keeps.
//! Rendering allocates nothing beyond the output it writes, and that is
//! bounded: a fixed part per queue plus at most
//! [`DESCRIPTOR_VIEW_MAX`]
//! descriptor states.

pub mod json;
pub mod text;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::{self, Write as _};

use crate::queue::snapshot::DESCRIPTOR_VIEW_MAX;
use crate::queue::{DescriptorView, QueueSnapshot, Ring, RingKind};
use crate::transport::{DeviceType, TransportKind};

/// One queue at one moment: its name, its snapshot, the state of its first
/// descriptors, and the used-buffer interrupts counted for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRecord {
    /// The queue's name (`requestq`, `receiveq`, `port0-rx`, ...).
    pub name: String,
    /// Indices, event fields, counters.
    pub snapshot: QueueSnapshot,
    /// The first `min(size, DESCRIPTOR_VIEW_MAX)` descriptors' states.
    pub descriptors: Vec<DescriptorView>,
    /// Interrupts taken for this queue; `None` when the device is polled.
    pub interrupts: Option<u64>,
}

impl QueueRecord {
    /// Takes a snapshot of `ring` now.
    pub fn capture(name: impl fmt::Display, ring: &impl Ring, interrupts: Option<u64>) -> Self {
        let mut descriptors =
            vec![DescriptorView::Free; usize::from(ring.size()).min(DESCRIPTOR_VIEW_MAX)];
        let snapshot = ring.snapshot(&mut descriptors);
        descriptors.truncate(usize::from(snapshot.descriptors_shown));
        let mut label = String::new();
        // Writing to a String cannot fail.
        let _ = write!(label, "{name}");
        Self {
            name: label,
            snapshot,
            descriptors,
            interrupts,
        }
    }
}

/// One device as the view shows it: what discovery and its driver say,
/// and its queues (none if no driver brought it up, or its driver was busy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Short type name as on the `virtio:` line (`blk`, `net`, `console`).
    pub type_name: String,
    /// The type, which names its feature bits.
    pub device_type: DeviceType,
    /// Where it is (`pci 0000:00:04.0`, `mmio@0xfeb00e00`).
    pub location: String,
    /// Transport flavour, if a transport was made.
    pub transport: Option<TransportKind>,
    /// Ring layout, once a driver negotiated one.
    pub ring: Option<RingKind>,
    /// `up`, `left reset`, `FAILED: <why>`, ...
    pub state: String,
    /// Negotiated feature bits, once a driver negotiated them.
    pub features: Option<u64>,
    /// Its queues, in index order.
    pub queues: Vec<QueueRecord>,
}

impl DeviceRecord {
    /// A device with no queues (yet).
    pub fn new(
        type_name: impl fmt::Display,
        device_type: DeviceType,
        location: impl fmt::Display,
    ) -> Self {
        let (mut name, mut place) = (String::new(), String::new());
        let _ = write!(name, "{type_name}");
        let _ = write!(place, "{location}");
        Self {
            type_name: name,
            device_type,
            location: place,
            transport: None,
            ring: None,
            state: String::new(),
            features: None,
            queues: Vec::new(),
        }
    }
}
