//! # Sets of queues (virtio 1.2 §2.6, §4.1.5.1.2)
//!
//! A device has up to [`MAX_QUEUES`] virtqueues whose interrupts this crate
//! tracks. An MSI-X entry may carry several of them, a line interrupt all of
//! them, and a waiter waits for some of them: each of those is a
//! [`QueueSet`], one bit per queue index, cheap to copy and to keep in an
//! atomic.

use core::fmt;

/// The most queues per device whose interrupts are tracked (one bit each in
/// a `u64`). virtio-serial with 31 ports has 64 queues.
pub const MAX_QUEUES: u16 = 64;

/// A set of queue indices below [`MAX_QUEUES`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct QueueSet(u64);

impl QueueSet {
    /// No queue.
    pub const EMPTY: QueueSet = QueueSet(0);
    /// Every queue index below [`MAX_QUEUES`].
    pub const ALL: QueueSet = QueueSet(u64::MAX);

    /// The set with the given bits (bit `q` = queue `q`).
    pub const fn from_bits(bits: u64) -> Self {
        QueueSet(bits)
    }

    /// The bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Just queue `queue` (empty if `queue >= MAX_QUEUES`).
    pub const fn single(queue: u16) -> Self {
        if queue < MAX_QUEUES {
            QueueSet(1 << queue)
        } else {
            QueueSet(0)
        }
    }

    /// Queues `0..count` (capped at [`MAX_QUEUES`]).
    pub const fn first(count: u16) -> Self {
        if count >= MAX_QUEUES {
            QueueSet(u64::MAX)
        } else {
            QueueSet((1u64 << count) - 1)
        }
    }

    /// Whether `queue` is in the set.
    pub const fn contains(self, queue: u16) -> bool {
        queue < MAX_QUEUES && self.0 & (1 << queue) != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Number of queues in the set.
    pub const fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// Adds `queue` (ignored if `queue >= MAX_QUEUES`).
    pub fn insert(&mut self, queue: u16) {
        self.0 |= QueueSet::single(queue).0;
    }

    /// The queues in both sets.
    pub const fn intersection(self, other: QueueSet) -> QueueSet {
        QueueSet(self.0 & other.0)
    }

    /// The queue indices, lowest first.
    pub fn iter(self) -> impl Iterator<Item = u16> {
        (0..MAX_QUEUES).filter(move |&q| self.contains(q))
    }
}

impl fmt::Debug for QueueSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for QueueSet {
    /// `{}`, `{0}`, `{0,1,2}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, q) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{q}")?;
        }
        f.write_str("}")
    }
}
