//! # Virtqueues (virtio 1.2 §2.6 "Virtqueues", §2.7 "Split Virtqueues", §2.8 "Packed Virtqueues")
//!
//! A virtqueue is how a driver and a device exchange buffers: the driver makes
//! a *chain* of buffers available (some the device reads, some it writes), the
//! device processes it and hands it back as *used*, with the number of bytes it
//! wrote. This module holds the vocabulary that every queue format and every
//! device driver share:
//!
//! - [`RingLayout`] and [`QueueAddresses`]: where a queue and a transport meet
//!   (the transport says how the ring memory must be laid out, the queue says
//!   where it put it). Neither knows the other's type.
//! - [`Segment`], [`Token`], [`Used`]: what a device driver hands in and gets
//!   back. The queue deals in *device addresses*; the device driver shares its
//!   buffers through the [`hal::Hal`] and keeps them alive until the token
//!   comes back.
//! - [`NotifyDecision`], [`QueueCounters`], [`QueueError`].
//! - [`choose_queue_size`]: how many descriptors to ask for.
//! - [`QueueSnapshot`] (module [`snapshot`]): a read-only look at a queue's
//!   indices, event fields, counters and descriptors, for the live view.
//! - [`MemoryOrder`] (module [`order`]): the barriers between the driver's
//!   ring accesses and the device's, SMP or the platform's
//!   (VIRTIO_F_ORDER_PLATFORM).
//!
//! ## One interface, two layouts
//!
//! [`Ring`] (module [`ring`]) is everything a device driver does with a
//! queue: `add`, `publish`, `pop_used`, `next_token`, interrupts on and off,
//! `reset`, and the accessors. Two types implement it, one per layout, as
//! Linux's `virtio_ring.c` has one API with `_split` and `_packed` behind it
//! (and Hermit's `Virtq` trait with `SplitVq` and `PackedVq`):
//!
//! - the split ring (§2.7) is [`SplitQueue`] (directory `split/`, one file
//!   per job: its memory layout in [`layout`], the event-index arithmetic
//!   in [`event_idx`], the pool of indirect descriptor tables in
//!   [`indirect`]); chapter `docs/03-split-ring.md`;
//! - the packed ring (§2.8, VIRTIO_F_RING_PACKED) is [`PackedQueue`]
//!   (directory `packed/`, one file per job); chapter `docs/08-packed-ring.md`.
//!
//! A device negotiates the layout at run time, so device drivers hold a
//! [`Virtqueue`] (module [`virtqueue`]): an enum of the two, built by
//! [`Virtqueue::new`] from a [`RingKind`]. That is the one place where the
//! split-or-packed choice is made; every [`Ring`] method of `Virtqueue` is
//! one `match` that hands the call to the ring inside.
//!
//! Why an enum, and not `Box<dyn Ring>` or device drivers generic over
//! `R: Ring`:
//!
//! - **Cost per request.** Both arms of each `match` are ordinary,
//!   statically known calls that the compiler inlines (`#[inline]` on every
//!   method), so a request pays one predictable branch on the layout per
//!   call and nothing else: no allocation, no indirect call through a
//!   vtable (which cannot be inlined), no extra copy of a request or a
//!   completion. The split ring, which QEMU gives a 4 KiB block read by
//!   default, runs the same instructions as before.
//! - **Clarity.** A driver names one type, `Virtqueue<H>`, whatever was
//!   negotiated. Generic drivers (`BlkDevice<H, T, R: Ring>`) would push a
//!   type parameter through every device, and the kernel would still need
//!   a run-time choice between two instantiations of each.
//! - `Ring::reset` takes a closure by `impl FnMut`, which a trait object
//!   cannot offer without turning it into `&mut dyn FnMut`.
//!
//! Code that knows its layout (the kernel's generic bring-up, tests) uses
//! [`SplitQueue`] or [`PackedQueue`] directly through the same trait.

pub mod order;
pub mod packed;
pub mod ring;
pub mod snapshot;
pub mod split;
pub mod virtqueue;

pub use order::MemoryOrder;
pub use packed::PackedQueue;
pub use ring::Ring;
pub use snapshot::{DescriptorView, QueueSnapshot};
pub use split::{event_idx, indirect, layout, QueueConfig, SplitQueue};
pub use virtqueue::{RingKind, Virtqueue};

use hal::{DeviceAddr, HalError};

/// How the transport wants the three ring areas laid out (virtio 1.2 §2.7, legacy §2.7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingLayout {
    /// Modern PCI and MMIO v2: descriptor table, driver (avail) and device (used) areas may be
    /// anywhere, each with its own address.
    Separate,
    /// Legacy PCI (align 4096) and MMIO v1 (QueueAlign): one physically contiguous block,
    /// descriptor table + avail ring, then the used ring at the next multiple of `align`.
    Contiguous {
        /// Where the used ring may start: a multiple of this (a power of two).
        align: u32,
    },
}

/// The device addresses of one queue's areas, as the transport must program them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueAddresses {
    /// Number of descriptors (a power of two for the split ring).
    pub size: u16,
    /// Descriptor table (the "descriptor area").
    pub desc: hal::DeviceAddr,
    /// Driver area: the available ring.
    pub driver: hal::DeviceAddr,
    /// Device area: the used ring.
    pub device: hal::DeviceAddr,
}

/// One buffer of a request, as the device will see it: a device address (from
/// [`hal::Hal::share`] or a [`hal::DmaRegion`]), a length, and who writes it.
///
/// A request lists the segments the device reads first, then those it writes
/// (virtio 1.2 §2.7.4.2: "The driver MUST place any device-writable descriptor
/// elements after any device-readable descriptor elements").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Where the device finds the buffer. Never a CPU pointer.
    pub addr: DeviceAddr,
    /// Length in bytes; must not be zero.
    pub len: u32,
    /// `true` if the device writes this buffer (VIRTQ_DESC_F_WRITE).
    pub device_writable: bool,
}

impl Segment {
    /// A buffer the device only reads (a request header, data to write to a disk).
    pub const fn readable(addr: DeviceAddr, len: u32) -> Self {
        Self {
            addr,
            len,
            device_writable: false,
        }
    }

    /// A buffer the device fills (data read from a disk, a status byte).
    pub const fn writable(addr: DeviceAddr, len: u32) -> Self {
        Self {
            addr,
            len,
            device_writable: true,
        }
    }
}

/// Identifies one request in flight. Returned by `add`, handed back with the
/// completion. Opaque to the device driver except for [`Token::index`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(pub(crate) u16);

impl Token {
    /// A small number, unique among the requests currently in flight on this
    /// queue and smaller than the queue size, so a device driver can keep
    /// per-request state in an array of `size` entries indexed by it.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl core::fmt::Display for Token {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A completed request: which one, and how many bytes the device says it wrote
/// into the request's device-writable segments (checked against their total).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// The token `add` returned for this request.
    pub token: Token,
    /// Bytes written by the device, at most the sum of the writable segments.
    pub len: u32,
}

/// What `publish` tells the caller to do (virtio 1.2 §2.7.10 / §2.7.7).
#[must_use = "the device is only woken if the caller notifies it"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyDecision {
    /// New requests were published and the device wants to hear about them:
    /// call the transport's `notify(queue)`.
    Notify,
    /// New requests were published but the device asked not to be notified
    /// (it is still busy with earlier ones and will find these itself).
    Suppressed,
    /// Nothing was added since the last publish: nothing to notify about.
    NothingNew,
}

impl NotifyDecision {
    /// `true` for [`NotifyDecision::Notify`].
    pub fn should_notify(self) -> bool {
        self == NotifyDecision::Notify
    }
}

/// Per-queue statistics, for the interrupt code, self-tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Requests made available (`add` calls that succeeded).
    pub added: u64,
    /// Of those, how many went through an indirect descriptor table.
    pub indirect: u64,
    /// `publish` calls that exposed at least one new request.
    pub publishes: u64,
    /// `publish` calls that told the caller to notify the device.
    pub notifications: u64,
    /// `publish` calls where the device had asked not to be notified.
    pub notifications_suppressed: u64,
    /// Used entries accepted and handed to the caller.
    pub completions: u64,
    /// Used entries or indices the device got wrong (each also returned as an error).
    pub device_errors: u64,
}

/// Everything that can go wrong with a virtqueue.
///
/// The `Used*` variants are device misbehaviour found while reading the used
/// ring; see the module documentation of [`split`] and [`packed`] for which
/// of them are fatal (they differ: a bad id is fatal in the packed ring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The transport reports no such queue (its maximum size is 0).
    NoSuchQueue,
    /// A queue size that is zero, above 32768, or (split ring only) not a
    /// power of two (§2.7, §2.8).
    InvalidSize(u16),
    /// A packed ring was asked for on a transport with the legacy contiguous
    /// layout; the packed ring needs virtio 1.0+ (separate area addresses).
    PackedRingNeedsSeparateLayout,
    /// A legacy ring alignment that is not a power of two of at least 4.
    InvalidAlignment(u32),
    /// An indirect table capacity larger than the queue size (§2.7.5.3.1:
    /// no chain may be longer than the queue size).
    InvalidIndirectCapacity(u16),
    /// Ring or indirect-table memory could not be allocated.
    Dma(HalError),
    /// `add` was given no segments.
    EmptyRequest,
    /// Segment `index` has length zero.
    EmptySegment {
        /// Which segment (0-based).
        index: usize,
    },
    /// Segment `index` is device-readable but comes after a device-writable one.
    ReadableAfterWritable {
        /// Which segment (0-based).
        index: usize,
    },
    /// The segments add up to more than 2^32 - 1 bytes (§2.7.5.2).
    RequestTooLong,
    /// More segments than any chain on this queue can hold (queue size, or the
    /// indirect table capacity when that is larger).
    TooManySegments {
        /// Segments asked for.
        segments: usize,
        /// The most one chain can hold.
        max: usize,
    },
    /// Not enough free descriptors right now; retry after completions.
    QueueFull {
        /// Descriptors the request needs.
        needed: usize,
        /// Descriptors free now.
        free: usize,
    },
    /// The device moved used.idx more than the queue size past what the driver
    /// has consumed. Fatal: the queue is broken.
    UsedIndexTooFar {
        /// The driver's used index (entries consumed so far).
        consumed: u16,
        /// The device's used.idx.
        device_idx: u16,
        /// Queue size.
        size: u16,
    },
    /// The device moved used.idx backwards. Fatal: the queue is broken.
    UsedIndexBackward {
        /// The used.idx read before.
        seen: u16,
        /// The smaller used.idx read now.
        device_idx: u16,
    },
    /// A used entry names a descriptor id not below the queue size.
    UsedIdOutOfRange {
        /// The id the device wrote.
        id: u32,
        /// Queue size.
        size: u16,
    },
    /// A used entry names a free descriptor: never made available, or already
    /// completed (a duplicate completion).
    UsedIdNotInFlight {
        /// The id the device wrote.
        id: u16,
    },
    /// A used entry names a descriptor in the middle of a chain, not its head.
    UsedIdNotHead {
        /// The id the device wrote.
        id: u16,
    },
    /// The device claims to have written more bytes than the request's writable
    /// segments hold. The request is finished (its descriptors are free again
    /// and its buffers may be released) but its data must not be trusted.
    UsedLengthTooLong {
        /// The request.
        token: Token,
        /// Bytes the device claims to have written.
        len: u32,
        /// Bytes the writable segments hold.
        max: u32,
    },
    /// The queue saw a fatal protocol violation earlier; it does nothing until
    /// the device is reset and [`Ring::reset`] is called.
    DeviceBroken,
}

impl core::fmt::Display for QueueError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            QueueError::NoSuchQueue => write!(f, "the device has no such queue"),
            QueueError::InvalidSize(s) => write!(f, "invalid queue size {s}"),
            QueueError::InvalidAlignment(a) => write!(f, "invalid legacy ring alignment {a}"),
            QueueError::PackedRingNeedsSeparateLayout => {
                write!(f, "the packed ring needs a virtio 1.0+ transport")
            }
            QueueError::InvalidIndirectCapacity(c) => {
                write!(f, "indirect table capacity {c} exceeds the queue size")
            }
            QueueError::Dma(e) => write!(f, "queue memory: {e}"),
            QueueError::EmptyRequest => write!(f, "request has no segments"),
            QueueError::EmptySegment { index } => write!(f, "segment {index} has length 0"),
            QueueError::ReadableAfterWritable { index } => {
                write!(
                    f,
                    "segment {index} is device-readable but follows a writable one"
                )
            }
            QueueError::RequestTooLong => write!(f, "request longer than 4 GiB"),
            QueueError::TooManySegments { segments, max } => {
                write!(f, "{segments} segments, at most {max} fit in one chain")
            }
            QueueError::QueueFull { needed, free } => {
                write!(f, "queue full: need {needed} descriptors, {free} free")
            }
            QueueError::UsedIndexTooFar {
                consumed,
                device_idx,
                size,
            } => write!(
                f,
                "device moved used.idx to {device_idx}, more than {size} past {consumed}"
            ),
            QueueError::UsedIndexBackward { seen, device_idx } => {
                write!(
                    f,
                    "device moved used.idx backwards from {seen} to {device_idx}"
                )
            }
            QueueError::UsedIdOutOfRange { id, size } => {
                write!(f, "used id {id} is not below the queue size {size}")
            }
            QueueError::UsedIdNotInFlight { id } => {
                write!(f, "used id {id} is not a request in flight")
            }
            QueueError::UsedIdNotHead { id } => {
                write!(f, "used id {id} is not the head of a chain")
            }
            QueueError::UsedLengthTooLong { token, len, max } => write!(
                f,
                "request {token}: device wrote {len} bytes into {max} writable bytes"
            ),
            QueueError::DeviceBroken => write!(f, "queue broken by the device; reset needed"),
        }
    }
}

impl From<HalError> for QueueError {
    fn from(e: HalError) -> Self {
        QueueError::Dma(e)
    }
}

/// The largest queue size the split ring allows (§2.7).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Picks the queue size: as large as the device allows, up to `driver_cap`
/// (what the driver is willing to spend memory on), rounded down to a power of
/// two as the split ring requires (§2.7: "Queue Size value is always a power of 2").
///
/// With `fixed` (legacy PCI, whose Queue Size register is read-only: the
/// legacy interface has no way to choose) the device's maximum is the only
/// choice, whatever the cap; it must itself be a valid size.
pub fn choose_queue_size(device_max: u16, driver_cap: u16, fixed: bool) -> Result<u16, QueueError> {
    if device_max == 0 {
        return Err(QueueError::NoSuchQueue);
    }
    if fixed {
        return if is_valid_size(device_max) {
            Ok(device_max)
        } else {
            Err(QueueError::InvalidSize(device_max))
        };
    }
    let wanted = device_max.min(driver_cap).min(MAX_QUEUE_SIZE);
    if wanted == 0 {
        return Err(QueueError::InvalidSize(driver_cap));
    }
    // Round down to a power of two: keep only the highest set bit.
    Ok(1 << (15 - wanted.leading_zeros()))
}

/// A split-ring queue size: a power of two from 1 to 32768.
pub fn is_valid_size(size: u16) -> bool {
    size.is_power_of_two() && size <= MAX_QUEUE_SIZE
}
