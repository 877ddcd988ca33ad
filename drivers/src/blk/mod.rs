//! # virtio-blk: the block device driver (virtio 1.2 §5.2)
//!
//! A virtio block device is a disk of 512-byte *sectors* behind one or more
//! request queues (§5.2.2). Each request is one descriptor chain: a 16-byte
//! header (what and where), the data, and a status byte the device writes
//! (§5.2.6; [`request`] has the wire format). The device serves requests in
//! any order, so many can be in flight at once.
//!
//! ## Where to read what
//!
//! | file | job | virtio 1.2 |
//! | --- | --- | --- |
//! | `blk/mod.rs` (this file) | the device: bring-up, configuration, counters, recovery | §3.1.1, §5.2.3, §5.2.5 |
//! | [`config`] | the configuration space, read consistently | §5.2.4 |
//! | [`request`] | the wire format: header, status, ranges, GET_ID; the per-queue request pool | §5.2.6 |
//! | `blk/core.rs` | the non-blocking core: validate, submit, publish, poll / complete | §5.2.6, §5.2.6.1, §5.2.6.2 |
//! | `blk/loans.rs` | a request's data handed to the device: registered buffers lent, caller slices shared | §5.2.6 (the data part), §5.2.4 (`size_max`) |
//! | `blk/per_queue.rs` | one request queue driven on its own, on that queue's lock only ([`BlkQueue`]) | §5.2.3 (MQ), §5.2.6 |
//! | `blk/notes.rs` | the core's trace narration of a request | — |
//! | `blk/buffers.rs` | data buffers registered for the non-blocking core ([`BufferId`]) | §5.2.6 (the data part) |
//! | `blk/blocking.rs` | blocking helpers, built only on submit and poll | §5.2.6.1 (splitting) |
//! | [`plan`] | cutting a transfer into requests the device accepts | §5.2.4 (`seg_max`, `size_max`) |
//! | [`error`] | what can go wrong, in three small types | §5.2.6 (status) |
//!
//! ## Bringing the device up
//!
//! [`BlkDevice::new`] walks the initialisation sequence of §3.1.1 through
//! [`crate::device::bring_up`], accepting the features in
//! [`SUPPORTED_FEATURES`] that the device offers (§5.2.3, plus
//! INDIRECT_DESC, EVENT_IDX and, on modern transports, VERSION_1), then
//! reads the configuration ([`BlkInfo`], one consistent read) and creates
//! the request queues: one, or with VIRTIO_BLK_F_MQ as many as the device
//! has up to [`BlkOptions::max_queues`]. The queues are [`Virtqueue`]s:
//! split rings, or packed ones when [`BlkOptions::ring_features`] includes
//! VIRTIO_F_RING_PACKED and the device offers it.
//!
//! ## Two layers
//!
//! **The non-blocking core** (`core.rs`). `submit_*` builds a request,
//! makes it available and returns a [`BlkToken`] at once; as many requests
//! can be in flight as the queues hold (a full queue answers
//! [`BlkError::QueueFull`]: back-pressure, retry after collecting
//! completions). [`BlkDevice::poll`] returns finished requests in whatever
//! order the device finished them; [`BlkDevice::complete`] asks about one
//! token. Reads and writes name data buffers the caller registered with
//! the device ([`BlkDevice::register_buffer`]: a [`hal::DmaBuffer`], so it
//! already has a device address and nothing is copied or shared). A
//! request lends its buffers to the device ([`hal::LentDmaBuffer`]) and
//! the driver reclaims them when it collects the completion from the ring
//! (or resets the device); in between [`BlkDevice::buffer`] answers
//! `None` and another request cannot take them, so every `submit_*` is a
//! safe call.
//!
//! **Blocking helpers** (`blocking.rs`: [`BlkDevice::read_blocks`],
//! `write_blocks`, `flush`, `get_id`, `discard`, `write_zeroes`) are
//! clients of the core and nothing more: they split the work into requests
//! the device accepts ([`plan`]), submit as many as fit, poll, and wait
//! through the caller's [`Wait`](crate::device::Wait) between polls. They take the caller's
//! plain byte slices, which they share with the device for each request
//! ([`hal::Hal::share`]: zero-copy in the kernel, which identity-maps RAM;
//! a host Hal may bounce-copy) and unshare when it completes; the call holds
//! the borrow of the slices until every request is over or the device is
//! reset, which is what makes that sound. This sharing is the one `unsafe`
//! left in `blk` (`blk/core.rs`). How far a call has got is
//! kept in the call's own stack frame; the device knows nothing of it.
//! Completions of other requests a helper meets while polling (submitted
//! earlier through the core) are set aside, in order, for the caller's
//! next `poll`. If the wait gives up, the helper resets the device (the
//! only way to be sure it no longer touches the caller's buffers), fails
//! every request in flight with [`RequestError::Aborted`], and returns
//! [`BlkError::Timeout`]; the device then stays down until
//! [`BlkDevice::recover`].
//!
//! ## Rules enforced before anything reaches the device (§5.2.6.1)
//!
//! - Sectors are 512 bytes (§5.2.6: "sector ... multiplied by 512"), whatever
//!   `blk_size` says; every data buffer is a non-empty multiple of 512 bytes.
//! - A request may not reach past `capacity`.
//! - On a read-only disk (VIRTIO_BLK_F_RO) writes, discards and write-zeroes
//!   are refused with [`BlkError::ReadOnly`].
//! - Flush, discard and write-zeroes need their feature
//!   ([`BlkError::NotNegotiated`]); discard and write-zeroes ranges respect
//!   `max_discard_sectors` / `max_write_zeroes_sectors` (one range per
//!   request; the blocking helpers split longer ones).
//! - `seg_max` counts *data* segments (header and status not included), as
//!   QEMU and Linux read it.
//!
//! ## The device is not trusted (§5.2.6.2)
//!
//! The status byte is preset to a value the device never writes (0xff), so
//! a device that does not write it is caught, and the status byte alone
//! decides how a request went. The used length is only a bound:
//!
//! - Larger than the request's writable buffers: on a modern transport the
//!   device broke §2.7.8 ("MUST write at least len bytes"), and the request
//!   fails with [`RequestError::BadLength`]. On a legacy transport it is
//!   ignored (§5.2.6, "Legacy Interface: Device Operation": "transitional
//!   drivers SHOULD ignore the len value in used ring entries"; some legacy
//!   devices report the total descriptor length there).
//! - Smaller than data + status, zero included: allowed (§2.7.8 lets a
//!   device write more than it reports) and counted in
//!   [`BlkQueueStats::inexact_used_lengths`].
//!
//! Neither case lets the driver read past what it shared: data lands in
//! the caller's own buffer and the status byte at its fixed place in the
//! slot, whatever the length says. IOERR and UNSUPP become
//! [`RequestError::IoError`] and [`RequestError::Unsupported`]; any other
//! status, [`RequestError::BadStatus`].
//!
//! ## Memory
//!
//! Per queue, created once, behind the queue's lock: the ring, the indirect tables, and a
//! [`request::RequestPool`] with one DMA slot (header, small payload,
//! status) per queue descriptor. A request uses the slot numbered like the
//! token the queue is about to give it ([`Virtqueue::next_token`](crate::queue::Virtqueue::next_token): the chain
//! head of a split ring, the buffer id of a packed one), unique while the
//! request is in flight, so a completion's token names its slot directly;
//! nothing is allocated per request.
//!
//! ## More than one queue
//!
//! With several queues, requests go round robin: each submission starts
//! with the queue after the one used last and takes the first that has
//! room. [`Request::on_queue`] pins a request to a queue instead (a CPU's
//! own queue, for instance), and [`BlkDevice::set_home_queue`] pins every
//! request that names none, the blocking helpers' included (the kernel
//! sets it to the calling CPU's queue, `crate::cpu_queues`). Tokens name
//! their queue.
//!
//! Each queue's state sits behind a `spin::Mutex` of its own, so the
//! device can also be shared by reference between CPUs: the per-queue
//! path ([`BlkDevice::lock_queue`] → [`BlkQueue`], `blk/per_queue.rs`)
//! submits, publishes, notifies ([`Transport::notify`] takes `&self`) and
//! collects completions on one queue holding that queue's lock and nothing
//! else, so CPUs on different queues never wait for each other. Everything
//! that needs the whole device (reset, recovery, configuration changes,
//! the blocking helpers) keeps `&mut self`.
//!
//! ## Narration
//!
//! At trace level each request is narrated when it is made available
//! (type, sector, sectors, segments, queue and token) and when it completes
//! (status and used length), next to the queue's own narration of
//! descriptors, indices and notifications.

mod blocking;
mod buffers;
pub mod config;
mod core;
pub mod error;
mod loans;
mod notes;
mod per_queue;
pub mod plan;
pub mod request;

pub use self::core::{Op, Request};
pub use buffers::BufferId;
pub use config::{
    feature, BlkInfo, DiscardLimits, Topology, WriteZeroesLimits, SUPPORTED_FEATURES,
};
pub use error::{BlkError, RequestError, SetupError};
pub use request::{RequestType, Serial, ID_BYTES};

use crate::queue::Ring;
use ::core::fmt;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

use hal::{DeviceVisible, Hal};
use log::{debug, info, trace};

use self::core::{QueueState, RequestQueue};
use crate::device::{self, DeviceError, QueueSpec};
use crate::features;
use crate::init;
use crate::queue::{MemoryOrder, QueueCounters, QueueError, Virtqueue};
use crate::transport::{DeviceType, InterruptStatus, Transport};
use buffers::BufferTable;
pub use per_queue::BlkQueue;
use plan::SplitLimits;
use request::HEADER_BYTES;

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

/// A finished request: 32 bytes, handed out by value once per request.
///
/// GET_ID's answer (20 bytes) is not in here: the driver keeps the serial of
/// the last successful GET_ID ([`BlkDevice::last_serial`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The token `submit_*` returned.
    pub token: BlkToken,
    /// What the request was.
    pub request: RequestType,
    /// Its first sector (0 for flush and GET_ID).
    pub sector: u64,
    /// How it went.
    pub result: Result<(), RequestError>,
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
    /// Of the failed, how many a reset aborted ([`RequestError::Aborted`]):
    /// the ring never returned those, so `ring.completions` is short of
    /// `completions` by exactly this many.
    pub aborted: u64,
    /// Data bytes read successfully.
    pub bytes_read: u64,
    /// Data bytes written successfully.
    pub bytes_written: u64,
    /// Completions whose used length was not the exact data + status count
    /// (a device under-reporting, §2.7.8, or a legacy device's unreliable
    /// length, §5.2.6 legacy interface) and that were judged by the status byte alone.
    pub inexact_used_lengths: u64,
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
        self.aborted += other.aborted;
        self.bytes_read += other.bytes_read;
        self.bytes_written += other.bytes_written;
        self.inexact_used_lengths += other.inexact_used_lengths;
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

/// A virtio block device. See the module documentation.
pub struct BlkDevice<H: Hal, T: Transport> {
    transport: T,
    options: BlkOptions,
    features: u64,
    info: BlkInfo,
    /// The rings and request pools, each queue behind its own lock (the
    /// lock protects that queue's ring, pool slots, counters and the
    /// per-queue path's buffers and completions; nothing else): kept for
    /// ever, not freed, if the device never acknowledges a reset
    /// (`device::reset_or_keep`). `&mut self` methods reach them without
    /// locking (`spin::Mutex::get_mut`); [`BlkDevice::lock_queue`] locks one.
    queues: DeviceVisible<Vec<spin::Mutex<QueueState<H>>>>,
    limits: SplitLimits,
    /// Completions collected from the rings, not yet handed out.
    finished: VecDeque<Completion>,
    next_queue: usize,
    /// Where requests that name no queue go instead of round robin
    /// ([`BlkDevice::set_home_queue`]).
    home_queue: Option<u16>,
    /// The serial number of the next request (see [`BlkToken`]).
    next_serial: u32,
    batching: bool,
    failed: bool,
    /// The device never acknowledged a reset: its memory is kept and it is
    /// not touched again ([`BlkDevice::is_dead`]).
    dead: bool,
    /// Configuration changes handled ([`BlkDevice::handle_config_change`]).
    config_changes: u64,
    /// The answer of the last successful GET_ID.
    last_serial: Option<Serial>,
    /// Data buffers registered for the non-blocking API (kept for ever with
    /// the queues, since some may be lent to the device).
    buffers: DeviceVisible<BufferTable<H>>,
}

// SAFETY: the raw pointers the driver holds (in `shares`) point at caller
// buffers that a blocking helper shares for its requests and keeps borrowed
// until they are over (or the device is reset), wherever the driver runs; the
// queues and pools own their DMA memory exclusively. Moving the driver to
// another CPU moves all of that with it.
unsafe impl<H: Hal, T: Transport + Send> Send for BlkDevice<H, T> {}

// SAFETY: through `&self` the driver changes nothing but the queue state
// behind each queue's own `spin::Mutex` (`lock_queue`, and the read-only
// looks that lock a queue for a moment), and calls `Transport::notify`
// (`&self`, one register write; `T: Sync`). Everything else `&self` reaches
// (features, configuration, limits, the device's buffer table, the failed
// and dead flags) only changes through `&mut self`. The raw pointers in a
// queue's share records are covered by the `Send` argument above: they
// move with the queue state, which one CPU at a time holds.
unsafe impl<H: Hal, T: Transport + Sync> Sync for BlkDevice<H, T> {}

impl<H: Hal, T: Transport> BlkDevice<H, T> {
    /// Brings up the block device behind `transport` (§3.1.1) with the
    /// default [`BlkOptions`].
    pub fn new(transport: T) -> Result<Self, SetupError> {
        Self::with_options(transport, BlkOptions::default())
    }

    /// Brings up the block device behind `transport` with `options`.
    pub fn with_options(mut transport: T, options: BlkOptions) -> Result<Self, SetupError> {
        device::expect_device_type(&transport, DeviceType::Block)?;
        let driver_features = options.features & SUPPORTED_FEATURES;
        let ((info, queues, limits), negotiated) = device::bring_up(
            &mut transport,
            driver_features,
            options.ring_features,
            |t: &mut T, negotiated| -> Result<_, SetupError> {
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
        let total_slots: usize = queues.iter().map(|q| q.slot_count()).sum();
        Ok(Self {
            transport,
            options,
            features: negotiated,
            info,
            queues: DeviceVisible::new(
                queues
                    .into_iter()
                    .map(|q| spin::Mutex::new(QueueState::new(q)))
                    .collect(),
            ),
            limits,
            finished: VecDeque::with_capacity(total_slots),
            next_queue: 0,
            home_queue: None,
            next_serial: 1,
            batching: false,
            failed: false,
            dead: false,
            config_changes: 0,
            last_serial: None,
            buffers: DeviceVisible::new(BufferTable::new()),
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

    /// Sends requests that name no queue ([`Request::on_queue`]), the
    /// blocking helpers' included, to `queue` instead of round robin: the
    /// caller's own queue, on a multiqueue device driven one queue per CPU
    /// (`crate::cpu_queues`). `None` goes back to round robin.
    pub fn set_home_queue(&mut self, queue: Option<u16>) -> Result<(), BlkError> {
        match queue {
            Some(q) if usize::from(q) >= self.queues.len() => Err(BlkError::NoSuchQueue(q)),
            _ => {
                self.home_queue = queue;
                Ok(())
            }
        }
    }

    /// The queue requests that name none go to, if one is set
    /// ([`BlkDevice::set_home_queue`]).
    pub fn home_queue(&self) -> Option<u16> {
        self.home_queue
    }

    /// Descriptors in queue `queue`. Takes `&mut self` (as every method
    /// that looks at any queue's state does): no [`BlkQueue`] can be held
    /// meanwhile, so it reads the queue without locking it.
    pub fn queue_size(&mut self, queue: u16) -> Option<u16> {
        self.queues
            .get_mut(queue as usize)
            .map(|q| q.get_mut().rq.ring.size())
    }

    /// The barriers queue `queue` uses: the platform's when
    /// VIRTIO_F_ORDER_PLATFORM was negotiated (`queue/order.rs`).
    pub fn queue_memory_order(&mut self, queue: u16) -> Option<MemoryOrder> {
        self.queues
            .get_mut(queue as usize)
            .map(|q| q.get_mut().rq.ring.memory_order())
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

    /// Requests in flight on all queues (`&mut self`: see
    /// [`BlkDevice::queue_size`]; [`BlkQueue::in_flight`] counts one queue).
    pub fn in_flight(&mut self) -> usize {
        self.queues
            .iter_mut()
            .map(|q| q.get_mut().rq.ring.in_flight() as usize)
            .sum()
    }

    /// Hands each request queue's ring, with its name (`requestq`, or
    /// `requestq1`, `requestq2`, ... with VIRTIO_BLK_F_MQ), to `visit`: a
    /// read-only look for the live queue view ([`crate::view`]).
    /// `&mut self`: see [`BlkDevice::queue_size`].
    pub fn visit_rings(&mut self, mut visit: impl FnMut(&dyn fmt::Display, &Virtqueue<H>)) {
        let several = self.queues.len() > 1;
        for (i, q) in self.queues.iter_mut().enumerate() {
            let state = q.get_mut();
            if several {
                visit(&format_args!("requestq{}", i + 1), &state.rq.ring);
            } else {
                visit(&"requestq", &state.rq.ring);
            }
        }
    }

    /// Counters of queue `queue` (`&mut self`: see
    /// [`BlkDevice::queue_size`]; [`BlkQueue::stats`] on the per-queue path).
    pub fn queue_stats(&mut self, queue: u16) -> Option<BlkQueueStats> {
        self.queues
            .get_mut(queue as usize)
            .map(|q| q.get_mut().rq.queue_stats())
    }

    /// Counters of all queues added up.
    pub fn stats(&mut self) -> BlkQueueStats {
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

    /// `true` after the device did not acknowledge a reset (§2.1.2): it may
    /// still write the rings and the buffers of the requests it held, so
    /// those are kept for ever (never freed, never handed back) and the
    /// device is never used again; [`BlkDevice::recover`] refuses with
    /// [`DeviceError::Dead`].
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// The serial number from the last GET_ID that succeeded (through
    /// [`BlkDevice::get_id`] or a submitted one), if any.
    pub fn last_serial(&self) -> Option<Serial> {
        self.last_serial
    }

    /// What the ring of queue `queue` last found wrong with the device
    /// (the detail behind [`BlkError::Ring`]); `None` if nothing yet.
    pub fn ring_fault(&mut self, queue: u16) -> Option<QueueError> {
        self.queues
            .get_mut(usize::from(queue))
            .and_then(|q| q.get_mut().rq.fault)
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

    /// Reads and acknowledges the interrupt status and, on a configuration
    /// change, handles it ([`BlkDevice::handle_config_change`]): for a
    /// device that is polled, or whose line interrupt the caller takes
    /// itself. Returns the status so the caller knows whether to look at
    /// the queues.
    pub fn handle_interrupt(&mut self) -> Result<InterruptStatus, SetupError> {
        let status = self.transport.ack_interrupt();
        if status.contains(InterruptStatus::CONFIG) {
            self.handle_config_change()?;
        }
        Ok(status)
    }

    /// Acts on a configuration-change notification (an MSI-X configuration
    /// vector, or the ISR's CONFIG bit). The device sends one when its
    /// configuration changed (§2.5: the driver re-reads it, consistently
    /// through `config_generation`, §4.1.4.3) and when it set
    /// DEVICE_NEEDS_RESET (§2.1.2). So:
    ///
    /// - DEVICE_NEEDS_RESET: the device is reset (every request in flight
    ///   completes with [`RequestError::Aborted`]), logged, and the error
    ///   returned; requests fail with [`BlkError::DeviceFailed`] until
    ///   [`BlkDevice::recover`].
    /// - Otherwise the configuration is read again ([`BlkDevice::refresh_info`]):
    ///   a disk grown or shrunk at run time (QEMU's `block_resize`) has its
    ///   new `capacity`, and requests are checked against it from now on.
    ///   Returns `Some(new capacity)` if it changed.
    pub fn handle_config_change(&mut self) -> Result<Option<u64>, SetupError> {
        self.config_changes += 1;
        if self.dead {
            return Err(DeviceError::Dead.into());
        }
        if let Err(error) = init::check_device_status(&self.transport) {
            if !self.failed {
                self.stop_device("the device set DEVICE_NEEDS_RESET (§2.1.2)", true);
            }
            return Err(DeviceError::Init(error).into());
        }
        let before = self.info.capacity_sectors;
        let now = self.refresh_info()?.capacity_sectors;
        Ok((now != before).then_some(now))
    }

    /// Configuration changes handled so far ([`BlkDevice::handle_config_change`]).
    pub fn config_changes(&self) -> u64 {
        self.config_changes
    }

    /// Asks every queue for used-buffer interrupts. Returns `true` if
    /// completions are already waiting (collect them before sleeping: the
    /// device will not interrupt for those).
    pub fn enable_interrupts(&mut self) -> bool {
        let mut pending = false;
        for q in self.queues.iter_mut() {
            pending |= q.get_mut().rq.ring.enable_interrupts();
        }
        pending
    }

    /// Asks every queue not to interrupt (polling mode).
    pub fn disable_interrupts(&mut self) {
        for q in self.queues.iter_mut() {
            q.get_mut().rq.ring.disable_interrupts();
        }
    }

    /// Re-reads the configuration (after a configuration-change interrupt:
    /// the capacity of a resized disk, the cache mode).
    pub fn refresh_info(&mut self) -> Result<&BlkInfo, SetupError> {
        let info = BlkInfo::read(&mut self.transport, self.features)?;
        if info.capacity_sectors != self.info.capacity_sectors {
            info!(
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
    pub fn set_writeback(&mut self, writeback: bool) -> Result<(), SetupError> {
        if self.info.writeback.is_none() {
            return Err(SetupError::BadConfig(
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
    // ----- failure and recovery -----------------------------------------

    /// Resets the device because its caller gave up on it (a request of
    /// the per-queue path timed out, or its queue broke): what the blocking
    /// helpers do when they give up. Every request in flight completes
    /// with [`RequestError::Aborted`] (the per-queue path's into their
    /// queue's list, their buffers back in its table), and requests fail
    /// with [`BlkError::DeviceFailed`] until [`BlkDevice::recover`].
    pub fn reset_after_failure(&mut self, why: &str) {
        if !self.failed {
            self.stop_device(why, true);
        }
    }

    /// Resets the device and brings it back: runs the initialisation
    /// sequence again with the same options, checks that the same features
    /// are negotiated, re-reads the configuration and re-programs the
    /// (zeroed) queues. Requests still in flight complete with
    /// [`RequestError::Aborted`] first.
    pub fn recover(&mut self) -> Result<(), SetupError> {
        if !self.failed {
            self.stop_device("recovery requested", true);
        }
        if self.dead {
            return Err(DeviceError::Dead.into());
        }
        let before = self.features;
        let driver_features = self.options.features & SUPPORTED_FEATURES;
        let ring_features = self.options.ring_features;
        let queues = &mut self.queues;
        let (info, now) = device::bring_up(
            &mut self.transport,
            driver_features,
            ring_features,
            |t: &mut T, negotiated| -> Result<_, SetupError> {
                if negotiated != before {
                    return Err(SetupError::FeaturesChanged {
                        before,
                        now: negotiated,
                    });
                }
                let info = BlkInfo::read(t, negotiated)?;
                for q in queues.iter_mut() {
                    let rq = &q.get_mut().rq;
                    t.setup_queue(rq.index, &rq.ring.addresses())?;
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
            // `try_lock`: a caller may print the device while holding one
            // of its queues; a held queue is not waited for.
            .field(
                "in_flight",
                &self
                    .queues
                    .iter()
                    .map(|q| q.try_lock().map(|s| usize::from(s.rq.ring.in_flight())))
                    .sum::<Option<usize>>(),
            )
            .field("failed", &self.failed)
            .finish()
    }
}

/// Creates the request queues: 1, or with MQ up to `num_queues`
/// (capped by the options), each with a request pool.
fn create_queues<H: Hal, T: Transport + ?Sized>(
    transport: &mut T,
    info: &BlkInfo,
    options: &BlkOptions,
    negotiated: u64,
) -> Result<Vec<RequestQueue<H>>, SetupError> {
    let wanted = info.num_queues.clamp(1, options.max_queues.max(1));
    let data_segments = usize::from(options.max_data_segments.max(1));
    // Header + data + status must fit one indirect table.
    let indirect = (data_segments + 2).min(u16::MAX as usize) as u16;
    let spec = QueueSpec::new(options.max_queue_size).with_indirect_capacity(indirect);
    let mut queues = Vec::with_capacity(wanted as usize);
    for index in 0..wanted {
        let ring = device::setup_queue_with::<H, T>(transport, index, spec, negotiated)?;
        queues.push(RequestQueue::new(
            index,
            ring,
            data_segments,
            transport.dma_owner(),
        )?);
    }
    Ok(queues)
}

/// Works out what one request may hold from the device's limits, the
/// options and the queues' chain capacity.
fn split_limits<H: Hal>(
    info: &BlkInfo,
    options: &BlkOptions,
    queues: &[RequestQueue<H>],
) -> Result<SplitLimits, SetupError> {
    // The longest chain every queue can hold: an indirect table, or the
    // whole ring as a direct chain.
    let chain = queues
        .iter()
        .map(|q| usize::from(q.ring.indirect_capacity().max(q.ring.size())))
        .min()
        .unwrap_or(0);
    if chain < 3 {
        return Err(SetupError::BadConfig(
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
            return Err(SetupError::BadConfig("size_max is smaller than a sector"))
        }
        Some(size_max) => (size_max as usize).min(MAX_REQUEST_BYTES),
    };
    Ok(SplitLimits {
        max_segment_bytes,
        max_segments,
        max_bytes: MAX_REQUEST_BYTES,
    })
}
