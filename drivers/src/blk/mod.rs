//! # virtio-blk: the block device driver (virtio 1.2 §5.2)
//!
//! A virtio block device is a disk of 512-byte *sectors* behind one or more
//! request queues. Each request is one descriptor chain: a 16-byte header
//! (what and where), the data, and a status byte the device writes
//! ([`request`] has the wire format). The device serves requests in any
//! order, so many can be in flight at once.
//!
//! ## Bringing the device up
//!
//! [`BlkDevice::new`] walks the initialisation sequence of §3.1.1 through
//! [`crate::device::bring_up`], accepting the features in
//! [`SUPPORTED_FEATURES`] that the device offers (plus INDIRECT_DESC,
//! EVENT_IDX and, on modern transports, VERSION_1), then reads the
//! configuration ([`BlkInfo`], one consistent read) and creates the request
//! queues: one, or with VIRTIO_BLK_F_MQ as many as the device has up to
//! [`BlkOptions::max_queues`]. The queues are [`Virtqueue`]s: split rings,
//! or packed ones when [`BlkOptions::ring_features`] includes
//! VIRTIO_F_RING_PACKED and the device offers it.
//!
//! ## Two layers
//!
//! **The non-blocking core.** `submit_*` builds a request, makes it
//! available and returns a [`BlkToken`] at once; as many requests can be in
//! flight as the queues hold (a full queue answers [`BlkError::QueueFull`]:
//! back-pressure, retry after collecting completions). [`BlkDevice::poll`]
//! returns finished requests in whatever order the device finished them;
//! [`BlkDevice::complete`] asks about one token. Data buffers are shared
//! with the device through [`hal::Hal::share`] when submitted and unshared
//! when the completion is collected from the ring, so the caller must leave
//! them alone in between: that is why `submit_read`/`submit_write` are
//! `unsafe`. Requests without caller buffers (flush, GET_ID, discard,
//! write-zeroes) are safe.
//!
//! **Blocking helpers** ([`BlkDevice::read_blocks`], `write_blocks`,
//! `flush`, `get_id`, `discard`, `write_zeroes`): split the work into
//! requests the device accepts ([`plan`]), keep as many in flight as fit,
//! and wait through the caller's [`Wait`] between collections. If the wait
//! gives up, the helper resets the device (the only way to be sure it no
//! longer touches the caller's buffers), fails every request in flight with
//! [`BlkError::Aborted`], and returns [`BlkError::Timeout`]; the device then
//! stays down until [`BlkDevice::recover`].
//!
//! ## Rules enforced before anything reaches the device
//!
//! - Sectors are 512 bytes (§5.2.6: "sector ... multiplied by 512"), whatever
//!   `blk_size` says; every data buffer is a non-empty multiple of 512 bytes.
//! - A request may not reach past `capacity` (§5.2.6.1).
//! - On a read-only disk (VIRTIO_BLK_F_RO) writes, discards and write-zeroes
//!   are refused with [`BlkError::ReadOnly`].
//! - Flush, discard and write-zeroes need their feature
//!   ([`BlkError::NotNegotiated`]); discard and write-zeroes ranges respect
//!   `max_discard_sectors` / `max_write_zeroes_sectors` (one range per
//!   request; the blocking helpers split longer ones).
//! - `seg_max` counts *data* segments (header and status not included), as
//!   QEMU and Linux read it.
//!
//! ## The device is not trusted
//!
//! The status byte is preset to a value the device never writes (0xff), so
//! a device that does not write it is caught. A used length that is larger
//! than the request's writable buffers, zero (not even the status), or, for
//! a successful read, anything but data + status, fails the request with
//! [`BlkError::BadLength`]. IOERR and UNSUPP become [`BlkError::IoError`]
//! and [`BlkError::Unsupported`]; any other status, [`BlkError::BadStatus`].
//!
//! ## Memory
//!
//! Per queue, created once: the ring, the indirect tables, and a
//! [`request::RequestPool`] with one DMA slot (header, small payload,
//! status) per queue descriptor. A request uses the slot numbered like the
//! token the queue is about to give it ([`Virtqueue::next_token`]: the chain
//! head of a split ring, the buffer id of a packed one), unique while the
//! request is in flight, so a completion's token names its slot directly;
//! nothing is allocated per request.
//!
//! ## More than one queue
//!
//! With several queues, requests go round robin: each submission starts
//! with the queue after the one used last and takes the first that has
//! room. [`Request::on_queue`] pins a request to a queue instead (a CPU's
//! own queue, for instance). Tokens name their queue.
//!
//! ## Narration
//!
//! At trace level each request is narrated when it is made available
//! (type, sector, sectors, segments, queue and token) and when it completes
//! (status and used length), next to the queue's own narration of
//! descriptors, indices and notifications.

pub mod config;
pub mod plan;
pub mod request;

pub use config::{
    feature, BlkInfo, DiscardLimits, Topology, WriteZeroesLimits, SUPPORTED_FEATURES,
};
pub use request::{RequestType, Serial, ID_BYTES};

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;

use hal::{DeviceAddr, Direction, Hal, HalError};
use log::{debug, log_enabled, trace, warn, Level};

use crate::device::{self, DeviceError, QueueSpec, Wait};
use crate::features;
use crate::queue::{QueueCounters, QueueError, Ring, Segment, Token, Virtqueue};
use crate::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport, TransportError};
use plan::{Chunk, Cursor, SplitLimits};
use request::{status, RequestPool, HEADER_BYTES, RANGE_BYTES, WRITE_ZEROES_FLAG_UNMAP};

/// The unit of all block addresses and lengths (§5.2.6).
pub const SECTOR_SIZE: usize = 512;

/// The most data bytes one request may carry: the whole chain must stay
/// below 4 GiB (§2.7.5.2), header and status included, in whole sectors.
pub const MAX_REQUEST_BYTES: usize = (u32::MAX as usize - HEADER_BYTES - 1) & !(SECTOR_SIZE - 1);

/// How many caller buffers a vectored blocking helper handles at a time
/// (it keeps their addresses in an array on the stack; longer lists are
/// done in groups).
pub const VECTORED_GROUP: usize = 32;

/// Choices the driver makes that the device does not dictate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkOptions {
    /// Device-specific features to accept when offered (a subset of
    /// [`SUPPORTED_FEATURES`]; other bits are ignored).
    pub features: u64,
    /// Ring features to accept when offered (normally
    /// [`features::SHARED_RING_FEATURES`]).
    pub ring_features: u64,
    /// Most descriptors per queue.
    pub max_queue_size: u16,
    /// Most request queues to use with VIRTIO_BLK_F_MQ.
    pub max_queues: u16,
    /// Most data segments per request (the device's `seg_max` may lower it).
    /// Also sizes the indirect tables (this plus header and status).
    pub max_data_segments: u16,
}

impl Default for BlkOptions {
    fn default() -> Self {
        Self {
            features: SUPPORTED_FEATURES,
            ring_features: features::SHARED_RING_FEATURES,
            max_queue_size: 256,
            max_queues: 4,
            max_data_segments: 32,
        }
    }
}

/// Names one request in flight: its queue, its slot, and a serial number
/// so a token is never mistaken for a later request in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlkToken {
    queue: u16,
    slot: u16,
    serial: u32,
}

impl BlkToken {
    /// The queue the request went to.
    pub fn queue(self) -> u16 {
        self.queue
    }

    /// The request's pool slot: below that queue's size, unique among the
    /// queue's requests in flight (usable as an array index).
    pub fn slot(self) -> usize {
        self.slot as usize
    }
}

impl fmt::Display for BlkToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "q{}/slot {}/#{}", self.queue, self.slot, self.serial)
    }
}

/// What a successful request returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Read, write, flush, discard or write-zeroes done.
    Done,
    /// GET_ID's answer.
    Serial(Serial),
}

/// A finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The token `submit_*` returned.
    pub token: BlkToken,
    /// What the request was.
    pub request: RequestType,
    /// Its first sector (0 for flush and GET_ID).
    pub sector: u64,
    /// How it went.
    pub result: Result<Reply, BlkError>,
}

/// Per-queue counters for self-tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkQueueStats {
    /// Requests made available on this queue.
    pub requests: u64,
    /// Requests completed (successfully or not, aborted ones included).
    pub completions: u64,
    /// Of those, how many failed.
    pub failed: u64,
    /// Data bytes read successfully.
    pub bytes_read: u64,
    /// Data bytes written successfully.
    pub bytes_written: u64,
    /// The ring's own counters (notifications sent and suppressed, ...).
    pub ring: QueueCounters,
}

impl BlkQueueStats {
    /// Notifications sent to the device for this queue.
    pub fn notifications(&self) -> u64 {
        self.ring.notifications
    }

    fn add(&mut self, other: &BlkQueueStats) {
        self.requests += other.requests;
        self.completions += other.completions;
        self.failed += other.failed;
        self.bytes_read += other.bytes_read;
        self.bytes_written += other.bytes_written;
        let (a, b) = (&mut self.ring, &other.ring);
        a.added += b.added;
        a.indirect += b.indirect;
        a.publishes += b.publishes;
        a.notifications += b.notifications;
        a.notifications_suppressed += b.notifications_suppressed;
        a.completions += b.completions;
        a.device_errors += b.device_errors;
    }
}

/// Everything that can go wrong with a block request or the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkError {
    /// Bringing the device up (or back up) failed.
    Device(DeviceError),
    /// A transport operation failed (a configuration read or write).
    Transport(TransportError),
    /// The device has a configuration this driver cannot work with.
    BadConfig(&'static str),
    /// The disk is read-only: writes, discards and write-zeroes are refused.
    ReadOnly,
    /// The request type needs a feature that was not negotiated.
    NotNegotiated(RequestType),
    /// A data buffer is empty or not a multiple of 512 bytes long.
    BadBufferLength {
        /// Its length.
        len: usize,
    },
    /// No data buffers, or a range of zero sectors.
    EmptyRequest,
    /// The request reaches past the end of the disk.
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Sectors asked for.
        sectors: u64,
        /// The disk's size in sectors.
        capacity: u64,
    },
    /// More data segments than one request may hold (use the blocking
    /// helpers, which split).
    TooManySegments {
        /// Segments the buffers need.
        needed: usize,
        /// The most one request may have.
        max: usize,
    },
    /// More data than one request may carry ([`MAX_REQUEST_BYTES`]).
    RequestTooLarge {
        /// Bytes asked for.
        bytes: usize,
    },
    /// A discard or write-zeroes range longer than the device allows.
    TooManySectors {
        /// Sectors asked for.
        sectors: u64,
        /// The device's limit.
        max: u32,
    },
    /// No room in the queue(s) right now: collect completions and retry.
    QueueFull,
    /// The device has no such request queue (or the driver did not set it up).
    NoSuchQueue(u16),
    /// The token names no request in flight or waiting to be collected.
    UnknownToken,
    /// The device answered VIRTIO_BLK_S_IOERR.
    IoError,
    /// The device answered VIRTIO_BLK_S_UNSUPP.
    Unsupported,
    /// The device left a status byte that is not OK, IOERR or UNSUPP
    /// (0xff: it did not write one at all).
    BadStatus(u8),
    /// The device's used length is impossible for the request.
    BadLength {
        /// What the device said it wrote.
        written: u32,
        /// What a correct device says: for a read, data + status; the
        /// writable total when the device claimed more; at least 1 (the
        /// status byte) always.
        expected: u32,
    },
    /// Sharing a buffer with the device failed.
    Share(HalError),
    /// The ring misbehaved (a device error the queue caught). If the queue
    /// is broken, the device must be reset: see [`BlkDevice::recover`].
    Queue {
        /// Which queue.
        queue: u16,
        /// What the queue found.
        error: QueueError,
    },
    /// The request was in flight when the device was reset.
    Aborted,
    /// A blocking helper's [`Wait`] gave up; the device was reset.
    Timeout {
        /// How many waits were made.
        waits: u64,
    },
    /// The device was reset after a failure; [`BlkDevice::recover`] brings it back.
    DeviceFailed,
    /// [`BlkDevice::recover`]: the device now negotiates different features.
    FeaturesChanged {
        /// Before.
        before: u64,
        /// Now.
        now: u64,
    },
}

impl From<DeviceError> for BlkError {
    fn from(e: DeviceError) -> Self {
        BlkError::Device(e)
    }
}

impl From<TransportError> for BlkError {
    fn from(e: TransportError) -> Self {
        BlkError::Transport(e)
    }
}

impl fmt::Display for BlkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BlkError::Device(e) => write!(f, "{e}"),
            BlkError::Transport(e) => write!(f, "transport: {e}"),
            BlkError::BadConfig(why) => write!(f, "unusable device configuration: {why}"),
            BlkError::ReadOnly => f.write_str("the disk is read-only"),
            BlkError::NotNegotiated(r) => {
                write!(f, "{r} needs a feature the device does not offer")
            }
            BlkError::BadBufferLength { len } => {
                write!(
                    f,
                    "buffer of {len} bytes is not a non-empty multiple of 512"
                )
            }
            BlkError::EmptyRequest => f.write_str("request with no data"),
            BlkError::OutOfRange {
                sector,
                sectors,
                capacity,
            } => write!(
                f,
                "sectors {sector}+{sectors} reach past the end of the disk ({capacity} sectors)"
            ),
            BlkError::TooManySegments { needed, max } => {
                write!(f, "{needed} data segments, at most {max} per request")
            }
            BlkError::RequestTooLarge { bytes } => write!(f, "{bytes} bytes in one request"),
            BlkError::TooManySectors { sectors, max } => {
                write!(f, "range of {sectors} sectors, the device allows {max}")
            }
            BlkError::QueueFull => f.write_str("queue full"),
            BlkError::NoSuchQueue(q) => write!(f, "no request queue {q}"),
            BlkError::UnknownToken => f.write_str("unknown token"),
            BlkError::IoError => f.write_str("device reported an I/O error (IOERR)"),
            BlkError::Unsupported => f.write_str("device does not support the request (UNSUPP)"),
            BlkError::BadStatus(s) => write!(f, "device left status byte {s:#04x}"),
            BlkError::BadLength { written, expected } => write!(
                f,
                "device claims to have written {written} bytes, expected {expected}"
            ),
            BlkError::Share(e) => write!(f, "sharing a buffer: {e}"),
            BlkError::Queue { queue, error } => write!(f, "queue {queue}: {error}"),
            BlkError::Aborted => f.write_str("request aborted by a device reset"),
            BlkError::Timeout { waits } => write!(f, "no completion after {waits} waits"),
            BlkError::DeviceFailed => f.write_str("device is down after a failure"),
            BlkError::FeaturesChanged { before, now } => {
                write!(f, "device features changed from {before:#x} to {now:#x}")
            }
        }
    }
}

/// One request for [`BlkDevice::submit`].
#[derive(Debug, Clone, Copy)]
pub enum Op<'b> {
    /// Read `buffers` (each a multiple of 512 bytes) from consecutive sectors.
    Read {
        /// First sector.
        sector: u64,
        /// Where the data goes, in order.
        buffers: &'b [NonNull<[u8]>],
    },
    /// Write `buffers` to consecutive sectors.
    Write {
        /// First sector.
        sector: u64,
        /// The data, in order.
        buffers: &'b [NonNull<[u8]>],
    },
    /// Commit the device's write cache (needs VIRTIO_BLK_F_FLUSH).
    Flush,
    /// Fetch the serial number.
    GetId,
    /// Discard a range (needs VIRTIO_BLK_F_DISCARD).
    Discard {
        /// First sector.
        sector: u64,
        /// Number of sectors (at most `max_discard_sectors`).
        sectors: u32,
    },
    /// Zero a range (needs VIRTIO_BLK_F_WRITE_ZEROES).
    WriteZeroes {
        /// First sector.
        sector: u64,
        /// Number of sectors (at most `max_write_zeroes_sectors`).
        sectors: u32,
        /// Let the device deallocate the range (the UNMAP flag).
        unmap: bool,
    },
}

/// A request and, optionally, the queue it must go to.
#[derive(Debug, Clone, Copy)]
pub struct Request<'b> {
    /// What to do.
    pub op: Op<'b>,
    /// `None`: round robin over the queues with room.
    pub queue: Option<u16>,
}

impl<'b> Request<'b> {
    /// A request for any queue.
    pub fn new(op: Op<'b>) -> Self {
        Self { op, queue: None }
    }

    /// Pins the request to queue `queue`.
    pub fn on_queue(mut self, queue: u16) -> Self {
        self.queue = Some(queue);
        self
    }
}

/// One request as the driver builds it (after validation).
#[derive(Debug, Clone, Copy)]
enum Job<'a> {
    /// Read or write: `bytes` bytes of `buffers` from `start`, in `segments` segments.
    Data {
        request: RequestType,
        sector: u64,
        buffers: &'a [NonNull<[u8]>],
        start: Cursor,
        bytes: usize,
        segments: usize,
    },
    /// Discard or write-zeroes: one range in the pool slot's payload.
    Range {
        request: RequestType,
        sector: u64,
        sectors: u32,
        flags: u32,
    },
    /// Flush or GET_ID.
    Command { request: RequestType },
}

impl Job<'_> {
    fn request(&self) -> RequestType {
        match *self {
            Job::Data { request, .. } | Job::Range { request, .. } | Job::Command { request } => {
                request
            }
        }
    }

    fn sector(&self) -> u64 {
        match *self {
            Job::Data { sector, .. } | Job::Range { sector, .. } => sector,
            Job::Command { .. } => 0,
        }
    }
}

/// A caller buffer shared with the device for one request.
#[derive(Debug, Clone, Copy)]
struct Share {
    addr: DeviceAddr,
    buffer: NonNull<[u8]>,
    direction: Direction,
}

/// What the driver remembers about one pool slot.
#[derive(Debug, Clone, Copy)]
struct Slot {
    in_flight: bool,
    serial: u32,
    /// Non-zero: the blocking call with this tag owns the request.
    tag: u32,
    request: RequestType,
    sector: u64,
    data_bytes: u32,
    shares: u16,
}

impl Slot {
    const FREE: Slot = Slot {
        in_flight: false,
        serial: 0,
        tag: 0,
        request: RequestType::Flush,
        sector: 0,
        data_bytes: 0,
        shares: 0,
    };
}

/// One request queue with its pool and per-request bookkeeping.
struct RequestQueue<H: Hal> {
    index: u16,
    ring: Virtqueue<H>,
    pool: RequestPool<H>,
    /// Per pool slot, which is also the [`Token::index`] of its request.
    slots: Vec<Slot>,
    /// `max_shares` entries per slot.
    shares: Vec<Option<Share>>,
    max_shares: usize,
    stats: BlkQueueStats,
}

impl<H: Hal> RequestQueue<H> {
    fn new(index: u16, ring: Virtqueue<H>, max_shares: usize) -> Result<Self, BlkError> {
        let size = ring.size() as usize;
        let pool = RequestPool::new(size).map_err(|e| {
            BlkError::Device(DeviceError::Queue {
                queue: index,
                error: QueueError::Dma(e),
            })
        })?;
        Ok(Self {
            index,
            ring,
            pool,
            slots: vec![Slot::FREE; size],
            // A zero-copy Hal needs no share records (`share_data`).
            shares: vec![
                None;
                if H::UNSHARE_IS_NOOP {
                    0
                } else {
                    size * max_shares
                }
            ],
            max_shares,
            stats: BlkQueueStats::default(),
        })
    }

    /// Ends the shares of `slot` (the device is done with its buffers).
    #[inline(always)]
    fn unshare_all(&mut self, slot: usize) {
        if H::UNSHARE_IS_NOOP {
            // Nothing was recorded (`share_data`): a zero-copy Hal's unshare
            // does nothing the used ring's acquire read has not done.
            return;
        }
        self.unshare_each(slot);
    }

    #[inline(never)]
    fn unshare_each(&mut self, slot: usize) {
        let first = slot * self.max_shares;
        let count = self.slots[slot].shares as usize;
        // Entries past `count` are stale; the count says which are live, so
        // they need not be cleared one by one.
        for share in self.shares[first..first + count].iter().flatten() {
            // SAFETY: these are the arguments and result of one earlier
            // `H::share`; the device has finished with the buffer (its
            // chain came back in the used ring, or the device was reset),
            // and the count drops to 0 below, so no share ends twice.
            unsafe { H::unshare(share.addr, share.buffer, share.direction) };
        }
        self.slots[slot].shares = 0;
    }

    /// Ends the shares of `slot` and marks it free (its request is over or
    /// never reached the ring).
    fn release(&mut self, slot: usize) {
        self.unshare_all(slot);
        self.slots[slot] = Slot::FREE;
    }
}

/// The blocking call in progress (if any) and how it is going.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// 0: no blocking call.
    tag: u32,
    outstanding: usize,
    completed: u64,
    error: Option<BlkError>,
    serial: Option<Serial>,
}

impl Progress {
    const IDLE: Progress = Progress {
        tag: 0,
        outstanding: 0,
        completed: 0,
        error: None,
        serial: None,
    };
}

/// The remaining work of a blocking call.
enum Plan<'a> {
    Data {
        request: RequestType,
        sector: u64,
        buffers: &'a [NonNull<[u8]>],
        cursor: Cursor,
        remaining: usize,
    },
    Ranges {
        request: RequestType,
        sector: u64,
        remaining: u64,
        max_per_request: u32,
        flags: u32,
    },
    Command {
        request: RequestType,
        sent: bool,
    },
}

impl<'a> Plan<'a> {
    fn next_job(&self, limits: SplitLimits) -> Option<Job<'a>> {
        match *self {
            Plan::Data {
                request,
                sector,
                buffers,
                cursor,
                remaining,
            } => {
                if remaining == 0 {
                    return None;
                }
                let Chunk {
                    start,
                    bytes,
                    segments,
                } = plan::next_chunk(buffers, cursor, limits)?;
                Some(Job::Data {
                    request,
                    sector,
                    buffers,
                    start,
                    bytes,
                    segments,
                })
            }
            Plan::Ranges {
                request,
                sector,
                remaining,
                max_per_request,
                flags,
            } => (remaining > 0).then(|| Job::Range {
                request,
                sector,
                sectors: remaining.min(u64::from(max_per_request)) as u32,
                flags,
            }),
            Plan::Command { request, sent } => (!sent).then_some(Job::Command { request }),
        }
    }

    fn advance(&mut self, job: &Job<'_>) {
        match (self, job) {
            (
                Plan::Data {
                    sector,
                    buffers,
                    cursor,
                    remaining,
                    ..
                },
                Job::Data { bytes, .. },
            ) => {
                *cursor = plan::advance(*buffers, *cursor, *bytes);
                *sector += (*bytes / SECTOR_SIZE) as u64;
                *remaining -= *bytes;
            }
            (
                Plan::Ranges {
                    sector, remaining, ..
                },
                Job::Range { sectors, .. },
            ) => {
                *sector += u64::from(*sectors);
                *remaining -= u64::from(*sectors);
            }
            (Plan::Command { sent, .. }, _) => *sent = true,
            _ => {}
        }
    }

    fn is_done(&self) -> bool {
        match *self {
            Plan::Data { remaining, .. } => remaining == 0,
            Plan::Ranges { remaining, .. } => remaining == 0,
            Plan::Command { sent, .. } => sent,
        }
    }
}

/// A virtio block device. See the module documentation.
pub struct BlkDevice<H: Hal, T: Transport> {
    transport: T,
    options: BlkOptions,
    features: u64,
    info: BlkInfo,
    queues: Vec<RequestQueue<H>>,
    limits: SplitLimits,
    /// Scratch list of one request's segments (capacity: header, data, status).
    segments: Vec<Segment>,
    /// Completions collected from the rings, not yet handed out.
    finished: VecDeque<Completion>,
    next_queue: usize,
    next_serial: u32,
    next_tag: u32,
    batching: bool,
    failed: bool,
    progress: Progress,
}

// SAFETY: the raw pointers the driver holds (in `shares`) point at caller
// buffers that the caller promised (`submit_read`/`submit_write`) to keep
// valid and untouched until completion, wherever the driver runs; the
// queues and pools own their DMA memory exclusively. Moving the driver to
// another CPU moves all of that with it.
unsafe impl<H: Hal, T: Transport + Send> Send for BlkDevice<H, T> {}

impl<H: Hal, T: Transport> BlkDevice<H, T> {
    /// Brings up the block device behind `transport` (§3.1.1) with the
    /// default [`BlkOptions`].
    pub fn new(transport: T) -> Result<Self, BlkError> {
        Self::with_options(transport, BlkOptions::default())
    }

    /// Brings up the block device behind `transport` with `options`.
    pub fn with_options(mut transport: T, options: BlkOptions) -> Result<Self, BlkError> {
        device::expect_device_type(&transport, DeviceType::Block)?;
        let driver_features = options.features & SUPPORTED_FEATURES;
        let ((info, queues, limits), negotiated) = device::bring_up(
            &mut transport,
            driver_features,
            options.ring_features,
            |t: &mut T, negotiated| -> Result<_, BlkError> {
                let info = BlkInfo::read(t, negotiated)?;
                let queues = create_queues::<H, T>(t, &info, &options, negotiated)?;
                let limits = split_limits(&info, &options, &queues)?;
                Ok((info, queues, limits))
            },
        )?;
        let location = transport.location();
        debug!(
            "{location}: virtio-blk: {info}; {} queue(s) of {} descriptors; up to {} data segments of {} bytes per request",
            queues.len(),
            queues.first().map_or(0, |q| q.ring.size()),
            limits.max_segments,
            limits.max_segment_bytes
        );
        let total_slots: usize = queues.iter().map(|q| q.slots.len()).sum();
        Ok(Self {
            transport,
            options,
            features: negotiated,
            info,
            segments: Vec::with_capacity(limits.max_segments + 3),
            queues,
            limits,
            finished: VecDeque::with_capacity(total_slots),
            next_queue: 0,
            next_serial: 1,
            next_tag: 1,
            batching: false,
            failed: false,
            progress: Progress::IDLE,
        })
    }

    // ----- what the device is -----------------------------------------

    /// The configuration read at bring-up (or by [`BlkDevice::refresh_info`]).
    pub fn info(&self) -> &BlkInfo {
        &self.info
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.info.capacity_sectors
    }

    /// The disk's preferred block size in bytes (`blk_size`, else 512).
    pub fn logical_block_size(&self) -> u32 {
        self.info.blk_size.unwrap_or(SECTOR_SIZE as u32)
    }

    /// `true` for a read-only disk.
    pub fn read_only(&self) -> bool {
        self.info.read_only
    }

    /// The negotiated feature bits (device-specific and ring/transport ones).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The options the device was brought up with.
    pub fn options(&self) -> &BlkOptions {
        &self.options
    }

    /// Number of request queues in use.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Descriptors in queue `queue`.
    pub fn queue_size(&self, queue: u16) -> Option<u16> {
        self.queues.get(queue as usize).map(|q| q.ring.size())
    }

    /// Most data segments in one request (the smallest of `seg_max`,
    /// [`BlkOptions::max_data_segments`] and what a chain can hold).
    pub fn max_data_segments(&self) -> usize {
        self.limits.max_segments
    }

    /// Longest single data segment in bytes (`size_max` when negotiated).
    pub fn max_segment_bytes(&self) -> usize {
        self.limits.max_segment_bytes
    }

    /// Requests in flight on all queues.
    pub fn in_flight(&self) -> usize {
        self.queues
            .iter()
            .map(|q| q.ring.in_flight() as usize)
            .sum()
    }

    /// Counters of queue `queue`.
    pub fn queue_stats(&self, queue: u16) -> Option<BlkQueueStats> {
        self.queues.get(queue as usize).map(|q| BlkQueueStats {
            ring: q.ring.counters(),
            ..q.stats
        })
    }

    /// Counters of all queues added up.
    pub fn stats(&self) -> BlkQueueStats {
        let mut total = BlkQueueStats::default();
        for q in 0..self.queues.len() as u16 {
            if let Some(s) = self.queue_stats(q) {
                total.add(&s);
            }
        }
        total
    }

    /// `true` after the device was reset because of a failure (a timeout,
    /// a broken queue); requests fail with [`BlkError::DeviceFailed`] until
    /// [`BlkDevice::recover`].
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// The transport (for the interrupt code: MSI-X vectors, location).
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably. Do not reset the device or touch its queues
    /// through it; use [`BlkDevice::recover`].
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Reads and acknowledges the interrupt status (for an interrupt handler).
    pub fn ack_interrupt(&mut self) -> InterruptStatus {
        self.transport.ack_interrupt()
    }

    /// Asks every queue for used-buffer interrupts. Returns `true` if
    /// completions are already waiting (collect them before sleeping: the
    /// device will not interrupt for those).
    pub fn enable_interrupts(&mut self) -> bool {
        let mut pending = false;
        for q in &mut self.queues {
            pending |= q.ring.enable_interrupts();
        }
        pending
    }

    /// Asks every queue not to interrupt (polling mode).
    pub fn disable_interrupts(&mut self) {
        for q in &mut self.queues {
            q.ring.disable_interrupts();
        }
    }

    /// Re-reads the configuration (after a configuration-change interrupt:
    /// the capacity of a resized disk, the cache mode).
    pub fn refresh_info(&mut self) -> Result<&BlkInfo, BlkError> {
        let info = BlkInfo::read(&mut self.transport, self.features)?;
        if info.capacity_sectors != self.info.capacity_sectors {
            debug!(
                "{}: virtio-blk: capacity changed from {} to {} sectors",
                self.transport.location(),
                self.info.capacity_sectors,
                info.capacity_sectors
            );
        }
        // The queues were built for the old limits; keep those.
        self.info = BlkInfo {
            num_queues: self.info.num_queues,
            ..info
        };
        Ok(&self.info)
    }

    /// Selects write-back (`true`) or write-through caching through the
    /// `writeback` field (needs VIRTIO_BLK_F_CONFIG_WCE, §5.2.5).
    pub fn set_writeback(&mut self, writeback: bool) -> Result<(), BlkError> {
        if self.info.writeback.is_none() {
            return Err(BlkError::BadConfig(
                "the cache mode is not configurable (no CONFIG_WCE)",
            ));
        }
        self.transport
            .write_config(config::offset::WRITEBACK, &[u8::from(writeback)])?;
        let now = BlkInfo::read(&mut self.transport, self.features)?;
        self.info.writeback = now.writeback;
        trace!(
            "{}: virtio-blk: writeback := {} ({}), reads back {:?}",
            self.transport.location(),
            u8::from(writeback),
            if writeback {
                "write-back"
            } else {
                "write-through"
            },
            now.writeback
        );
        Ok(())
    }

    // ----- the non-blocking core --------------------------------------

    /// Submits one request and returns its token without waiting.
    ///
    /// Read and write buffers are validated (non-empty, multiples of 512,
    /// inside the disk, at most [`BlkDevice::max_data_segments`] segments
    /// once cut at `size_max`), shared with the device, and described to it
    /// between the header and the status byte. Nothing reaches the device
    /// if validation fails.
    ///
    /// Outside a batch ([`BlkDevice::start_batch`]) the request is published
    /// at once and the device notified if it wants to be.
    ///
    /// # Safety
    ///
    /// For `Op::Read` and `Op::Write`: every buffer must be valid for reads
    /// and writes of its length, must not overlap another buffer of a
    /// request in flight, and must be neither accessed nor freed until the
    /// request's completion has been collected ([`BlkDevice::poll`],
    /// [`BlkDevice::complete`]), the device was reset by this driver
    /// (timeout, [`BlkDevice::recover`]), or the driver was dropped. Other
    /// operations have no requirement.
    // Inlined into `submit_read` & co., so the request is not copied into
    // a call frame and out again on its way to `submit_on`.
    #[inline(always)]
    pub unsafe fn submit(&mut self, request: Request<'_>) -> Result<BlkToken, BlkError> {
        self.check_live()?;
        let job = self.validate(request.op)?;
        let token = self.submit_job(request.queue, &job, 0)?;
        if !self.batching {
            self.publish_all();
        }
        Ok(token)
    }

    /// Submits a read of `buffers` from consecutive sectors starting at
    /// `sector`, on the next queue with room.
    ///
    /// # Safety
    ///
    /// As for [`BlkDevice::submit`].
    #[inline]
    pub unsafe fn submit_read(
        &mut self,
        sector: u64,
        buffers: &[NonNull<[u8]>],
    ) -> Result<BlkToken, BlkError> {
        // SAFETY: the caller upholds `submit`'s contract for these buffers.
        unsafe { self.submit(Request::new(Op::Read { sector, buffers })) }
    }

    /// Submits a write of `buffers` to consecutive sectors starting at `sector`.
    ///
    /// # Safety
    ///
    /// As for [`BlkDevice::submit`].
    #[inline]
    pub unsafe fn submit_write(
        &mut self,
        sector: u64,
        buffers: &[NonNull<[u8]>],
    ) -> Result<BlkToken, BlkError> {
        // SAFETY: the caller upholds `submit`'s contract for these buffers.
        unsafe { self.submit(Request::new(Op::Write { sector, buffers })) }
    }

    /// Submits a cache flush.
    pub fn submit_flush(&mut self) -> Result<BlkToken, BlkError> {
        // SAFETY: a flush has no caller buffers.
        unsafe { self.submit(Request::new(Op::Flush)) }
    }

    /// Submits a GET_ID; the serial comes back as [`Reply::Serial`].
    pub fn submit_get_id(&mut self) -> Result<BlkToken, BlkError> {
        // SAFETY: GET_ID's buffer is the driver's own pool slot.
        unsafe { self.submit(Request::new(Op::GetId)) }
    }

    /// Submits a discard of `sectors` sectors at `sector`.
    pub fn submit_discard(&mut self, sector: u64, sectors: u32) -> Result<BlkToken, BlkError> {
        // SAFETY: the range lives in the driver's own pool slot.
        unsafe { self.submit(Request::new(Op::Discard { sector, sectors })) }
    }

    /// Submits a write-zeroes of `sectors` sectors at `sector`; `unmap`
    /// lets the device deallocate them.
    pub fn submit_write_zeroes(
        &mut self,
        sector: u64,
        sectors: u32,
        unmap: bool,
    ) -> Result<BlkToken, BlkError> {
        // SAFETY: the range lives in the driver's own pool slot.
        unsafe {
            self.submit(Request::new(Op::WriteZeroes {
                sector,
                sectors,
                unmap,
            }))
        }
    }

    /// From now on submissions are only queued, not published, until
    /// [`BlkDevice::finish_batch`]: one index update and at most one
    /// notification per queue for the whole batch.
    pub fn start_batch(&mut self) {
        self.batching = true;
    }

    /// Publishes everything queued since [`BlkDevice::start_batch`] and
    /// notifies the queues that need it. Returns the notifications sent.
    pub fn finish_batch(&mut self) -> usize {
        self.batching = false;
        self.publish_all()
    }

    /// Returns the next finished request, from any queue, in the order the
    /// device finished them; `Ok(None)` if none has finished.
    ///
    /// `Err` reports device misbehaviour on a ring that no request can be
    /// blamed for ([`BlkError::Queue`]); polling again continues after it,
    /// unless the queue is broken, which needs [`BlkDevice::recover`].
    #[inline]
    pub fn poll(&mut self) -> Result<Option<Completion>, BlkError> {
        if let Some(done) = self.finished.pop_front() {
            return Ok(Some(done));
        }
        // Straight from the ring to the caller: what is still in the used
        // ring stays there, in order, for the next call. (The answer is
        // passed on as it is, not unpacked and rebuilt: a completion is
        // several words, and every copy of it is memory traffic.)
        for q in 0..self.queues.len() {
            match self.next_unclaimed(q) {
                Ok(None) => continue,
                answer => return answer,
            }
        }
        Ok(None)
    }

    /// Like [`BlkDevice::poll`], but only for requests of queue `queue`
    /// (for a per-queue interrupt handler).
    pub fn poll_queue(&mut self, queue: u16) -> Result<Option<Completion>, BlkError> {
        let q = queue as usize;
        if q >= self.queues.len() {
            return Err(BlkError::NoSuchQueue(queue));
        }
        if let Some(done) = self.take_finished(|c| c.token.queue == queue) {
            return Ok(Some(done));
        }
        self.reap(q)?;
        Ok(self.take_finished(|c| c.token.queue == queue))
    }

    /// The completion of `token` if it has finished (`Ok(None)`: still in
    /// flight). Other requests that finished meanwhile stay for `poll`.
    pub fn complete(&mut self, token: BlkToken) -> Result<Option<Completion>, BlkError> {
        if let Some(done) = self.take_finished(|c| c.token == token) {
            return Ok(Some(done));
        }
        let in_flight = self
            .queues
            .get(token.queue as usize)
            .and_then(|q| q.slots.get(token.slot as usize))
            .is_some_and(|s| s.in_flight && s.serial == token.serial && s.tag == 0);
        if !in_flight {
            return Err(BlkError::UnknownToken);
        }
        self.reap(token.queue as usize)?;
        Ok(self.take_finished(|c| c.token == token))
    }

    // ----- blocking helpers ---------------------------------------------

    /// Reads `buffer.len() / 512` sectors starting at `sector` into `buffer`,
    /// splitting into as many requests as the device's limits need.
    pub fn read_blocks<W: Wait + ?Sized>(
        &mut self,
        sector: u64,
        buffer: &mut [u8],
        wait: &mut W,
    ) -> Result<(), BlkError> {
        self.read_blocks_vectored(sector, &mut [buffer], wait)
    }

    /// Reads consecutive sectors starting at `sector` into `buffers`, in order.
    pub fn read_blocks_vectored<W: Wait + ?Sized>(
        &mut self,
        sector: u64,
        buffers: &mut [&mut [u8]],
        wait: &mut W,
    ) -> Result<(), BlkError> {
        self.check_live()?;
        let total =
            self.validate_data(RequestType::Read, sector, buffers.iter().map(|b| b.len()))?;
        self.trace_blocking(RequestType::Read, sector, total, buffers.len());
        let mut sector = sector;
        for group in buffers.chunks_mut(VECTORED_GROUP) {
            let mut pointers =
                [NonNull::<[u8]>::slice_from_raw_parts(NonNull::dangling(), 0); VECTORED_GROUP];
            for (pointer, buffer) in pointers.iter_mut().zip(group.iter_mut()) {
                *pointer = NonNull::from(&mut **buffer);
            }
            let group_pointers = &pointers[..group.len()];
            self.run(
                &mut data_plan(RequestType::Read, sector, group_pointers),
                wait,
            )?;
            sector += (group.iter().map(|b| b.len()).sum::<usize>() / SECTOR_SIZE) as u64;
        }
        Ok(())
    }

    /// Writes `buffer` to consecutive sectors starting at `sector`.
    pub fn write_blocks<W: Wait + ?Sized>(
        &mut self,
        sector: u64,
        buffer: &[u8],
        wait: &mut W,
    ) -> Result<(), BlkError> {
        self.write_blocks_vectored(sector, &[buffer], wait)
    }

    /// Writes `buffers`, in order, to consecutive sectors starting at `sector`.
    pub fn write_blocks_vectored<W: Wait + ?Sized>(
        &mut self,
        sector: u64,
        buffers: &[&[u8]],
        wait: &mut W,
    ) -> Result<(), BlkError> {
        self.check_live()?;
        let total =
            self.validate_data(RequestType::Write, sector, buffers.iter().map(|b| b.len()))?;
        self.trace_blocking(RequestType::Write, sector, total, buffers.len());
        let mut sector = sector;
        for group in buffers.chunks(VECTORED_GROUP) {
            let mut pointers =
                [NonNull::<[u8]>::slice_from_raw_parts(NonNull::dangling(), 0); VECTORED_GROUP];
            for (pointer, buffer) in pointers.iter_mut().zip(group.iter()) {
                // The device only reads these (Direction::ToDevice), so a
                // pointer from a shared reference is never written through.
                *pointer = NonNull::from(*buffer);
            }
            let group_pointers = &pointers[..group.len()];
            self.run(
                &mut data_plan(RequestType::Write, sector, group_pointers),
                wait,
            )?;
            sector += (group.iter().map(|b| b.len()).sum::<usize>() / SECTOR_SIZE) as u64;
        }
        Ok(())
    }

    /// Commits the device's write cache (needs VIRTIO_BLK_F_FLUSH).
    pub fn flush<W: Wait + ?Sized>(&mut self, wait: &mut W) -> Result<(), BlkError> {
        self.check_live()?;
        self.validate(Op::Flush)?;
        self.run(
            &mut Plan::Command {
                request: RequestType::Flush,
                sent: false,
            },
            wait,
        )
        .map(|_| ())
    }

    /// The device's serial number (GET_ID).
    pub fn get_id<W: Wait + ?Sized>(&mut self, wait: &mut W) -> Result<Serial, BlkError> {
        self.check_live()?;
        let serial = self.run(
            &mut Plan::Command {
                request: RequestType::GetId,
                sent: false,
            },
            wait,
        )?;
        // A successful GET_ID always stores its serial; an empty one otherwise.
        Ok(serial.unwrap_or(Serial::from_id_bytes(&[0; ID_BYTES])))
    }

    /// Discards `sectors` sectors starting at `sector`, in requests of at
    /// most `max_discard_sectors`.
    pub fn discard<W: Wait + ?Sized>(
        &mut self,
        sector: u64,
        sectors: u64,
        wait: &mut W,
    ) -> Result<(), BlkError> {
        self.range_blocking(RequestType::Discard, sector, sectors, 0, wait)
    }

    /// Zeroes `sectors` sectors starting at `sector`, in requests of at
    /// most `max_write_zeroes_sectors`; `unmap` sets the UNMAP flag.
    pub fn write_zeroes<W: Wait + ?Sized>(
        &mut self,
        sector: u64,
        sectors: u64,
        unmap: bool,
        wait: &mut W,
    ) -> Result<(), BlkError> {
        let flags = if unmap { WRITE_ZEROES_FLAG_UNMAP } else { 0 };
        self.range_blocking(RequestType::WriteZeroes, sector, sectors, flags, wait)
    }

    // ----- failure and recovery -----------------------------------------

    /// Resets the device and brings it back: runs the initialisation
    /// sequence again with the same options, checks that the same features
    /// are negotiated, re-reads the configuration and re-programs the
    /// (zeroed) queues. Requests still in flight complete with
    /// [`BlkError::Aborted`] first.
    pub fn recover(&mut self) -> Result<(), BlkError> {
        if !self.failed {
            self.stop_device("recovery requested", true);
        }
        let before = self.features;
        let driver_features = self.options.features & SUPPORTED_FEATURES;
        let ring_features = self.options.ring_features;
        let queues = &self.queues;
        let (info, now) = device::bring_up(
            &mut self.transport,
            driver_features,
            ring_features,
            |t: &mut T, negotiated| -> Result<_, BlkError> {
                if negotiated != before {
                    return Err(BlkError::FeaturesChanged {
                        before,
                        now: negotiated,
                    });
                }
                let info = BlkInfo::read(t, negotiated)?;
                for q in queues.iter() {
                    t.setup_queue(q.index, &q.ring.addresses())?;
                }
                Ok(info)
            },
        )?;
        self.info = BlkInfo {
            num_queues: self.info.num_queues,
            ..info
        };
        self.features = now;
        self.failed = false;
        debug!(
            "{}: virtio-blk: recovered after a reset",
            self.transport.location()
        );
        Ok(())
    }

    // ----- internals -----------------------------------------------------

    fn check_live(&self) -> Result<(), BlkError> {
        if self.failed {
            Err(BlkError::DeviceFailed)
        } else {
            Ok(())
        }
    }

    /// Checks a read or write before anything is shared or submitted and
    /// returns its length in bytes.
    fn validate_data(
        &self,
        request: RequestType,
        sector: u64,
        lens: impl Iterator<Item = usize>,
    ) -> Result<usize, BlkError> {
        if request.modifies_disk() && self.info.read_only {
            return Err(BlkError::ReadOnly);
        }
        let mut total = 0usize;
        for len in lens {
            if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
                return Err(BlkError::BadBufferLength { len });
            }
            total = total
                .checked_add(len)
                .ok_or(BlkError::RequestTooLarge { bytes: usize::MAX })?;
        }
        if total == 0 {
            return Err(BlkError::EmptyRequest);
        }
        self.check_range(sector, (total / SECTOR_SIZE) as u64)?;
        Ok(total)
    }

    fn check_range(&self, sector: u64, sectors: u64) -> Result<(), BlkError> {
        let capacity = self.info.capacity_sectors;
        match sector.checked_add(sectors) {
            Some(end) if end <= capacity => Ok(()),
            _ => Err(BlkError::OutOfRange {
                sector,
                sectors,
                capacity,
            }),
        }
    }

    /// Checks a discard / write-zeroes range and returns the per-request
    /// sector limit.
    fn validate_range(
        &self,
        request: RequestType,
        sector: u64,
        sectors: u64,
    ) -> Result<u32, BlkError> {
        if self.info.read_only {
            return Err(BlkError::ReadOnly);
        }
        let max = match request {
            RequestType::Discard => self.info.discard.map(|d| d.max_sectors),
            _ => self.info.write_zeroes.map(|w| w.max_sectors),
        }
        .ok_or(BlkError::NotNegotiated(request))?;
        if sectors == 0 {
            return Err(BlkError::EmptyRequest);
        }
        self.check_range(sector, sectors)?;
        // 0 from the device: no limit beyond what the range field holds.
        Ok(if max == 0 { u32::MAX } else { max })
    }

    /// Validates one request of the non-blocking API and turns it into a job.
    #[inline(always)]
    fn validate<'a>(&self, op: Op<'a>) -> Result<Job<'a>, BlkError> {
        match op {
            Op::Read { sector, buffers } | Op::Write { sector, buffers } => {
                let request = if matches!(op, Op::Read { .. }) {
                    RequestType::Read
                } else {
                    RequestType::Write
                };
                let bytes = self.validate_data(request, sector, buffers.iter().map(|b| b.len()))?;
                if bytes > MAX_REQUEST_BYTES {
                    return Err(BlkError::RequestTooLarge { bytes });
                }
                let segments = buffers
                    .iter()
                    .map(|b| plan::segments_for(b.len(), self.limits.max_segment_bytes))
                    .sum();
                if segments > self.limits.max_segments {
                    return Err(BlkError::TooManySegments {
                        needed: segments,
                        max: self.limits.max_segments,
                    });
                }
                Ok(Job::Data {
                    request,
                    sector,
                    buffers,
                    start: Cursor::default(),
                    bytes,
                    segments,
                })
            }
            Op::Flush => {
                if self.info.flush {
                    Ok(Job::Command {
                        request: RequestType::Flush,
                    })
                } else {
                    Err(BlkError::NotNegotiated(RequestType::Flush))
                }
            }
            Op::GetId => Ok(Job::Command {
                request: RequestType::GetId,
            }),
            Op::Discard { sector, sectors } => {
                let max = self.validate_range(RequestType::Discard, sector, sectors.into())?;
                if sectors > max {
                    return Err(BlkError::TooManySectors {
                        sectors: sectors.into(),
                        max,
                    });
                }
                Ok(Job::Range {
                    request: RequestType::Discard,
                    sector,
                    sectors,
                    flags: 0,
                })
            }
            Op::WriteZeroes {
                sector,
                sectors,
                unmap,
            } => {
                let max = self.validate_range(RequestType::WriteZeroes, sector, sectors.into())?;
                if sectors > max {
                    return Err(BlkError::TooManySectors {
                        sectors: sectors.into(),
                        max,
                    });
                }
                Ok(Job::Range {
                    request: RequestType::WriteZeroes,
                    sector,
                    sectors,
                    flags: if unmap { WRITE_ZEROES_FLAG_UNMAP } else { 0 },
                })
            }
        }
    }

    /// Puts a validated job on `queue` (or the next queue with room).
    #[inline(always)]
    fn submit_job(
        &mut self,
        queue: Option<u16>,
        job: &Job<'_>,
        tag: u32,
    ) -> Result<BlkToken, BlkError> {
        let count = self.queues.len();
        if let Some(q) = queue {
            if q as usize >= count {
                return Err(BlkError::NoSuchQueue(q));
            }
            return self.submit_on(q as usize, job, tag);
        }
        // Wrapped by comparison, not `%`: a division is tens of cycles.
        let wrap = |q: usize| if q + 1 >= count { 0 } else { q + 1 };
        let mut q = if self.next_queue < count {
            self.next_queue
        } else {
            0
        };
        for _ in 0..count {
            match self.submit_on(q, job, tag) {
                Ok(token) => {
                    self.next_queue = wrap(q);
                    return Ok(token);
                }
                Err(BlkError::QueueFull) => q = wrap(q),
                Err(e) => return Err(e),
            }
        }
        Err(BlkError::QueueFull)
    }

    /// Builds the request in a pool slot of queue `q`, shares its buffers,
    /// and adds its chain to the ring (not yet published).
    fn submit_on(&mut self, q: usize, job: &Job<'_>, tag: u32) -> Result<BlkToken, BlkError> {
        let max_segment_bytes = self.limits.max_segment_bytes;
        let Self {
            queues,
            segments,
            next_serial,
            ..
        } = self;
        let rq = &mut queues[q];
        // The slot is the token `add` is about to return; a queue without a
        // free token has no room either.
        let Some(next) = rq.ring.next_token() else {
            return Err(BlkError::QueueFull);
        };
        // Below the queue's size, which is the number of slots.
        let slot = next.index();
        let request = job.request();
        let sector = job.sector();
        rq.pool.prepare(slot, request, sector);

        segments.clear();
        segments.push(Segment::readable(
            rq.pool.header_addr(slot),
            HEADER_BYTES as u32,
        ));
        let mut data_bytes = 0u32;
        match *job {
            Job::Data {
                buffers,
                start,
                bytes,
                segments: planned,
                ..
            } => {
                let direction = if request == RequestType::Read {
                    Direction::FromDevice
                } else {
                    Direction::ToDevice
                };
                if let Err(e) = share_data(
                    rq,
                    slot,
                    segments,
                    buffers,
                    start,
                    bytes,
                    direction,
                    max_segment_bytes,
                ) {
                    rq.release(slot);
                    return Err(e);
                }
                // The planner counted segments with the same cutting rule.
                debug_assert_eq!(segments.len() - 1, planned);
                data_bytes = bytes as u32;
            }
            Job::Range {
                sector,
                sectors,
                flags,
                ..
            } => {
                rq.pool
                    .write_payload(slot, &request::encode_range(sector, sectors, flags));
                segments.push(Segment::readable(
                    rq.pool.payload_addr(slot),
                    RANGE_BYTES as u32,
                ));
            }
            Job::Command { request } => {
                if request == RequestType::GetId {
                    rq.pool.clear_payload(slot);
                    segments.push(Segment::writable(
                        rq.pool.payload_addr(slot),
                        ID_BYTES as u32,
                    ));
                }
            }
        }
        segments.push(Segment::writable(rq.pool.status_addr(slot), 1));

        let token = match rq.ring.add(segments) {
            Ok(token) => token,
            Err(error) => {
                rq.release(slot);
                return Err(match error {
                    QueueError::QueueFull { .. } => BlkError::QueueFull,
                    QueueError::TooManySegments { segments, max } => BlkError::TooManySegments {
                        needed: segments.saturating_sub(2),
                        max: max.saturating_sub(2),
                    },
                    error => BlkError::Queue {
                        queue: rq.index,
                        error,
                    },
                });
            }
        };
        // `next_token` promised this token; the slot's header already says
        // what the request is.
        debug_assert_eq!(
            token.index(),
            slot,
            "the queue broke its next_token promise"
        );
        let serial = *next_serial;
        *next_serial = next_serial.wrapping_add(1);
        let shares = rq.slots[slot].shares;
        rq.slots[slot] = Slot {
            in_flight: true,
            serial,
            tag,
            request,
            sector,
            data_bytes,
            shares,
        };
        rq.stats.requests += 1;
        let blk_token = BlkToken {
            queue: rq.index,
            slot: slot as u16,
            serial,
        };
        if log_enabled!(Level::Trace) {
            trace!(
                "blk {blk_token}: {request} sector {sector}{}: chain head {}, {} segment(s): {}",
                SectorsNote(job),
                token,
                segments.len(),
                SegmentsNote(segments),
            );
        }
        Ok(blk_token)
    }

    /// Publishes every queue and notifies those that need it.
    fn publish_all(&mut self) -> usize {
        let mut sent = 0;
        for rq in &mut self.queues {
            if device::kick(&mut self.transport, &mut rq.ring) {
                sent += 1;
            }
        }
        sent
    }

    /// Collects every used entry of queue `q`: completions a blocking call
    /// owns go to it, the others wait in `finished` for `poll`.
    fn reap(&mut self, q: usize) -> Result<(), BlkError> {
        while let Some(done) = self.next_unclaimed(q)? {
            self.finished.push_back(done);
        }
        Ok(())
    }

    /// Takes used entries of queue `q` until one finishes a request that no
    /// blocking call owns, and returns its completion; `Ok(None)` once the
    /// used ring is empty.
    #[inline(always)]
    fn next_unclaimed(&mut self, q: usize) -> Result<Option<Completion>, BlkError> {
        loop {
            let (token, used) = match self.queues[q].ring.pop_used() {
                Ok(None) => return Ok(None),
                Ok(Some(used)) => (used.token, Ok(used.len)),
                Err(QueueError::UsedLengthTooLong { token, len, max }) => (
                    token,
                    Err(BlkError::BadLength {
                        written: len,
                        expected: max,
                    }),
                ),
                Err(error) => {
                    return Err(BlkError::Queue {
                        queue: q as u16,
                        error,
                    })
                }
            };
            let done = self.finish(q, token, used);
            if done.is_some() {
                return Ok(done);
            }
        }
    }

    /// Finishes the request of `token` (its pool slot) on queue `q`: ends
    /// its shares, reads its status, frees its slot, and hands the result
    /// to the blocking call that owns it, or returns it.
    #[inline(always)]
    fn finish(
        &mut self,
        q: usize,
        token: Token,
        used: Result<u32, BlkError>,
    ) -> Option<Completion> {
        let rq = &mut self.queues[q];
        let slot = token.index();
        let Some(&record) = rq.slots.get(slot).filter(|s| s.in_flight) else {
            // The queue only returns tokens it has in flight, and every one
            // of those has a request; this cannot happen unless the two disagree.
            warn!("blk q{q}: completion for token {token} with no request; ignored");
            return None;
        };
        // The device is done with the buffers: end the shares first, so the
        // data is in the caller's memory before anyone hears of it.
        rq.unshare_all(slot);
        let status = rq.pool.status(slot).unwrap_or(status::NOT_WRITTEN);
        let mut result = used.and_then(|len| check_completion(&record, status, len));
        if record.request == RequestType::GetId {
            if let Ok(Reply::Done) = result {
                let mut raw = [0u8; ID_BYTES];
                rq.pool.read_payload(slot, &mut raw);
                result = Ok(Reply::Serial(Serial::from_id_bytes(&raw)));
            }
        }
        rq.stats.completions += 1;
        match &result {
            Ok(_) if record.request == RequestType::Read => {
                rq.stats.bytes_read += u64::from(record.data_bytes)
            }
            Ok(_) if record.request == RequestType::Write => {
                rq.stats.bytes_written += u64::from(record.data_bytes)
            }
            Ok(_) => {}
            Err(_) => rq.stats.failed += 1,
        }
        // The shares ended above (the count is 0 again); the rest of the
        // record is rewritten by the next request in this slot.
        rq.slots[slot].in_flight = false;
        let token = BlkToken {
            queue: q as u16,
            slot: slot as u16,
            serial: record.serial,
        };
        if log_enabled!(Level::Trace) {
            trace!(
                "blk {token}: {} sector {} complete: status {:#04x} ({}), used length {}: {}",
                record.request,
                record.sector,
                status,
                status::name(status),
                UsedNote(&used),
                ResultNote(&result),
            );
        }
        let completion = Completion {
            token,
            request: record.request,
            sector: record.sector,
            result,
        };
        if self.claim(&completion, record.tag) {
            None
        } else {
            Some(completion)
        }
    }

    /// Hands a completion to the blocking call that owns it (`true`);
    /// `false`: nobody did, it is for `poll`.
    fn claim(&mut self, completion: &Completion, tag: u32) -> bool {
        if tag != 0 && tag == self.progress.tag {
            let p = &mut self.progress;
            p.outstanding = p.outstanding.saturating_sub(1);
            p.completed += 1;
            match completion.result {
                Ok(Reply::Serial(serial)) => p.serial = Some(serial),
                Ok(Reply::Done) => {}
                Err(e) => {
                    p.error.get_or_insert(e);
                }
            }
            true
        } else {
            false
        }
    }

    fn take_finished(&mut self, wanted: impl Fn(&Completion) -> bool) -> Option<Completion> {
        let position = self.finished.iter().position(wanted)?;
        self.finished.remove(position)
    }

    /// Resets the device so it stops touching memory, and fails every
    /// request in flight with [`BlkError::Aborted`] (their buffers are
    /// unshared). With `mark_failed`, sets FAILED and refuses requests
    /// until [`BlkDevice::recover`].
    fn stop_device(&mut self, why: &str, mark_failed: bool) {
        let location = self.transport.location();
        if mark_failed {
            warn!("{location}: virtio-blk: resetting the device: {why}");
        }
        if let Err(e) = self.transport.reset() {
            // Nothing better is possible: the buffers are released anyway,
            // since their owners cannot wait forever.
            warn!("{location}: virtio-blk: reset failed ({e}); releasing buffers regardless");
        }
        if mark_failed {
            self.transport.set_status(DeviceStatus::FAILED);
        }
        for q in 0..self.queues.len() {
            self.queues[q].ring.reset(|_| {});
            for slot in 0..self.queues[q].slots.len() {
                let record = self.queues[q].slots[slot];
                if !record.in_flight {
                    continue;
                }
                let rq = &mut self.queues[q];
                rq.stats.completions += 1;
                rq.stats.failed += 1;
                rq.release(slot);
                let token = BlkToken {
                    queue: q as u16,
                    slot: slot as u16,
                    serial: record.serial,
                };
                trace!("blk {token}: {} aborted by the reset", record.request);
                let aborted = Completion {
                    token,
                    request: record.request,
                    sector: record.sector,
                    result: Err(BlkError::Aborted),
                };
                if !self.claim(&aborted, record.tag) {
                    self.finished.push_back(aborted);
                }
            }
        }
        self.failed = mark_failed;
    }

    fn range_blocking<W: Wait + ?Sized>(
        &mut self,
        request: RequestType,
        sector: u64,
        sectors: u64,
        flags: u32,
        wait: &mut W,
    ) -> Result<(), BlkError> {
        self.check_live()?;
        let max_per_request = self.validate_range(request, sector, sectors)?;
        if log_enabled!(Level::Trace) {
            trace!(
                "blk: {request} of {sectors} sectors at {sector}, at most {max_per_request} per request"
            );
        }
        self.run(
            &mut Plan::Ranges {
                request,
                sector,
                remaining: sectors,
                max_per_request,
                flags,
            },
            wait,
        )
        .map(|_| ())
    }

    fn trace_blocking(&self, request: RequestType, sector: u64, bytes: usize, buffers: usize) {
        if log_enabled!(Level::Trace) {
            trace!(
                "blk: {request} of {} sectors at {sector} from {buffers} buffer(s); device limits: {} segments of at most {} bytes per request",
                bytes / SECTOR_SIZE,
                self.limits.max_segments,
                self.limits.max_segment_bytes
            );
        }
    }

    /// Runs a blocking call: keeps as many of the plan's requests in flight
    /// as fit, collects completions, and waits in between.
    fn run<W: Wait + ?Sized>(
        &mut self,
        plan: &mut Plan<'_>,
        wait: &mut W,
    ) -> Result<Option<Serial>, BlkError> {
        self.check_live()?;
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1).max(1);
        self.progress = Progress {
            tag,
            ..Progress::IDLE
        };
        // An interrupt-driven wait: no interrupts while this call collects
        // completions itself; `drive` re-arms them right before each wait.
        let sleeps = wait.sleeps_until_interrupt();
        if sleeps {
            self.disable_interrupts();
        }
        let outcome = self.drive(plan, wait, tag, sleeps);
        if sleeps && !self.failed {
            // Leave the device interrupting, as an interrupt-driven caller
            // expects; what is pending now is collected by its next poll.
            let _ = self.enable_interrupts();
        }
        self.progress = Progress::IDLE;
        outcome
    }

    fn drive<W: Wait + ?Sized>(
        &mut self,
        plan: &mut Plan<'_>,
        wait: &mut W,
        tag: u32,
        sleeps: bool,
    ) -> Result<Option<Serial>, BlkError> {
        loop {
            // 1. Submit what fits, under one publish.
            let mut stalled = false;
            while self.progress.error.is_none() {
                let Some(job) = plan.next_job(self.limits) else {
                    break;
                };
                match self.submit_job(None, &job, tag) {
                    Ok(_) => {
                        plan.advance(&job);
                        self.progress.outstanding += 1;
                    }
                    Err(BlkError::QueueFull) => {
                        stalled = true;
                        break;
                    }
                    Err(e) => {
                        self.progress.error = Some(e);
                    }
                }
            }
            // Always publish: a caller's open batch must not hold back the
            // requests this call is about to wait for.
            self.publish_all();
            // 2. Done? (After an error, only what is in flight is awaited.)
            let nothing_left = plan.is_done() || self.progress.error.is_some();
            if self.progress.outstanding == 0 && nothing_left {
                break;
            }
            if stalled && self.in_flight() == 0 {
                // Full with nothing in flight: this request can never fit.
                self.progress.error = Some(BlkError::TooManySegments {
                    needed: self.limits.max_segments + 1,
                    max: self.limits.max_segments,
                });
                continue;
            }
            // 3. Collect.
            let before = self.progress.completed;
            for q in 0..self.queues.len() {
                if let Err(e) = self.reap(q) {
                    if self.queues[q].ring.is_broken() {
                        self.stop_device("a request queue is broken", true);
                        return Err(e);
                    }
                    self.progress.error.get_or_insert(e);
                }
            }
            if self.progress.completed != before {
                continue;
            }
            // 4. Nothing new: wait for the device. Before sleeping until an
            // interrupt, ask for one and look again (§2.7.7, §2.8.21.3): the
            // device may have used entries before it saw the request, and
            // would then not interrupt for them.
            if sleeps && self.enable_interrupts() {
                self.disable_interrupts();
                continue;
            }
            if let Err(timeout) = wait.wait() {
                self.stop_device("a blocking request timed out", true);
                return Err(BlkError::Timeout {
                    waits: timeout.waits,
                });
            }
            if sleeps {
                self.disable_interrupts();
            }
        }
        match self.progress.error.take() {
            Some(e) => Err(e),
            None => Ok(self.progress.serial.take()),
        }
    }
}

impl<H: Hal, T: Transport> Drop for BlkDevice<H, T> {
    /// Resets the device before the rings and pools are freed (the device
    /// must not write into freed memory) and releases every buffer still
    /// shared.
    fn drop(&mut self) {
        if !self.failed {
            self.stop_device("driver dropped", false);
        }
    }
}

impl<H: Hal, T: Transport> fmt::Debug for BlkDevice<H, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlkDevice")
            .field("location", &self.transport.location())
            .field("features", &format_args!("{:#x}", self.features))
            .field("info", &self.info)
            .field("queues", &self.queues.len())
            .field("in_flight", &self.in_flight())
            .field("failed", &self.failed)
            .finish()
    }
}

/// A blocking read or write plan over one group of buffers.
fn data_plan<'a>(request: RequestType, sector: u64, buffers: &'a [NonNull<[u8]>]) -> Plan<'a> {
    Plan::Data {
        request,
        sector,
        buffers,
        cursor: Cursor::default(),
        remaining: buffers.iter().map(|b| b.len()).sum(),
    }
}

/// Creates the request queues: 1, or with MQ up to `num_queues`
/// (capped by the options), each with a request pool.
fn create_queues<H: Hal, T: Transport + ?Sized>(
    transport: &mut T,
    info: &BlkInfo,
    options: &BlkOptions,
    negotiated: u64,
) -> Result<Vec<RequestQueue<H>>, BlkError> {
    let wanted = info.num_queues.clamp(1, options.max_queues.max(1));
    let data_segments = usize::from(options.max_data_segments.max(1));
    // Header + data + status must fit one indirect table.
    let indirect = (data_segments + 2).min(u16::MAX as usize) as u16;
    let spec = QueueSpec::new(options.max_queue_size).with_indirect_capacity(indirect);
    let mut queues = Vec::with_capacity(wanted as usize);
    for index in 0..wanted {
        let ring = device::setup_queue_with::<H, T>(transport, index, spec, negotiated)?;
        queues.push(RequestQueue::new(index, ring, data_segments)?);
    }
    Ok(queues)
}

/// Works out what one request may hold from the device's limits, the
/// options and the queues' chain capacity.
fn split_limits<H: Hal>(
    info: &BlkInfo,
    options: &BlkOptions,
    queues: &[RequestQueue<H>],
) -> Result<SplitLimits, BlkError> {
    // The longest chain every queue can hold: an indirect table, or the
    // whole ring as a direct chain.
    let chain = queues
        .iter()
        .map(|q| usize::from(q.ring.indirect_capacity().max(q.ring.size())))
        .min()
        .unwrap_or(0);
    if chain < 3 {
        return Err(BlkError::BadConfig(
            "queue too small for header, data and status",
        ));
    }
    let mut max_segments = usize::from(options.max_data_segments.max(1)).min(chain - 2);
    if let Some(seg_max) = info.seg_max {
        // A device that says 0 gets what Linux gives it: one segment.
        max_segments = max_segments.min((seg_max as usize).max(1));
    }
    let max_segment_bytes = match info.size_max {
        // 0 cannot be meant literally (no request could carry data): no limit.
        None | Some(0) => MAX_REQUEST_BYTES,
        Some(size_max) if (size_max as usize) < SECTOR_SIZE => {
            return Err(BlkError::BadConfig("size_max is smaller than a sector"))
        }
        Some(size_max) => (size_max as usize).min(MAX_REQUEST_BYTES),
    };
    Ok(SplitLimits {
        max_segment_bytes,
        max_segments,
        max_bytes: MAX_REQUEST_BYTES,
    })
}

/// Shares the part of `buffers` from `start` (`bytes` long) and appends its
/// segments, cut at `max_segment_bytes`. On error, what was shared is
/// recorded in the slot, so releasing the slot unshares it.
#[allow(clippy::too_many_arguments)]
fn share_data<H: Hal>(
    rq: &mut RequestQueue<H>,
    slot: usize,
    segments: &mut Vec<Segment>,
    buffers: &[NonNull<[u8]>],
    start: Cursor,
    bytes: usize,
    direction: Direction,
    max_segment_bytes: usize,
) -> Result<(), BlkError> {
    let writable = direction == Direction::FromDevice;
    let mut cursor = start;
    let mut left = bytes;
    while left > 0 {
        let Some(buffer) = buffers.get(cursor.buffer) else {
            return Err(BlkError::EmptyRequest);
        };
        let available = buffer.len() - cursor.offset.min(buffer.len());
        if available == 0 {
            cursor = Cursor {
                buffer: cursor.buffer + 1,
                offset: 0,
            };
            continue;
        }
        let part_len = available.min(left);
        let shares = rq.slots[slot].shares as usize;
        if !H::UNSHARE_IS_NOOP && shares >= rq.max_shares {
            return Err(BlkError::TooManySegments {
                needed: shares + 1,
                max: rq.max_shares,
            });
        }
        // SAFETY: `cursor.offset < buffer.len()` (available > 0), so the
        // pointer stays inside the caller's buffer.
        let part_start = unsafe { buffer.cast::<u8>().add(cursor.offset) };
        let part = NonNull::slice_from_raw_parts(part_start, part_len);
        // SAFETY: the caller of `submit` (or the blocking helper, which holds
        // the borrow until every request is done or the device is reset)
        // guarantees the buffer stays valid and untouched until the request
        // completes; the slot records the share so it is ended exactly once.
        let addr = unsafe { H::share(part, direction) }.map_err(BlkError::Share)?;
        // A share is recorded only so that its `unshare` can be called; a
        // zero-copy Hal needs none (`Hal::UNSHARE_IS_NOOP`), and not
        // writing the record saves several stores per request.
        if !H::UNSHARE_IS_NOOP {
            rq.shares[slot * rq.max_shares + shares] = Some(Share {
                addr,
                buffer: part,
                direction,
            });
            rq.slots[slot].shares += 1;
        }
        let mut offset = 0usize;
        while offset < part_len {
            let len = (part_len - offset).min(max_segment_bytes);
            let segment = if writable {
                Segment::writable(addr + offset as u64, len as u32)
            } else {
                Segment::readable(addr + offset as u64, len as u32)
            };
            segments.push(segment);
            offset += len;
        }
        left -= part_len;
        cursor.offset += part_len;
    }
    Ok(())
}

/// Judges a completed request from its status byte and used length.
fn check_completion(record: &Slot, status: u8, len: u32) -> Result<Reply, BlkError> {
    if len == 0 {
        // Not even the status byte: nothing the device left can be trusted.
        return Err(BlkError::BadLength {
            written: 0,
            expected: 1,
        });
    }
    match status {
        status::OK => {
            if record.request == RequestType::Read && len != record.data_bytes + 1 {
                return Err(BlkError::BadLength {
                    written: len,
                    expected: record.data_bytes + 1,
                });
            }
            Ok(Reply::Done)
        }
        status::IOERR => Err(BlkError::IoError),
        status::UNSUPP => Err(BlkError::Unsupported),
        other => Err(BlkError::BadStatus(other)),
    }
}

/// Formats ", N sectors" for a job (trace only).
struct SectorsNote<'a, 'b>(&'a Job<'b>);

impl fmt::Display for SectorsNote<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self.0 {
            Job::Data { bytes, .. } => write!(f, ", {} sector(s)", bytes / SECTOR_SIZE),
            Job::Range { sectors, flags, .. } => {
                write!(f, ", {sectors} sector(s)")?;
                if flags & WRITE_ZEROES_FLAG_UNMAP != 0 {
                    f.write_str(", UNMAP")?;
                }
                Ok(())
            }
            Job::Command { .. } => Ok(()),
        }
    }
}

/// Formats a segment list as `16 R + 4096 W + 1 W` (trace only).
struct SegmentsNote<'a>(&'a [Segment]);

impl fmt::Display for SegmentsNote<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" + ")?;
            }
            write!(f, "{} {}", s.len, if s.device_writable { "W" } else { "R" })?;
        }
        Ok(())
    }
}

/// Formats the used length, or why there is none (trace only).
struct UsedNote<'a>(&'a Result<u32, BlkError>);

impl fmt::Display for UsedNote<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(len) => write!(f, "{len}"),
            Err(BlkError::BadLength { written, expected }) => {
                write!(f, "{written} (more than the {expected} writable bytes)")
            }
            Err(e) => write!(f, "? ({e})"),
        }
    }
}

/// Formats a request's result (trace only).
struct ResultNote<'a>(&'a Result<Reply, BlkError>);

impl fmt::Display for ResultNote<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(Reply::Done) => f.write_str("ok"),
            Ok(Reply::Serial(s)) => write!(f, "serial \"{s}\""),
            Err(e) => write!(f, "failed: {e}"),
        }
    }
}
