//! # The non-blocking core of the block driver (virtio 1.2 §5.2.6)
//!
//! Everything a request goes through, from the caller's hands to the ring
//! and back, without ever waiting:
//!
//! 1. **Validate** ([`BlkDevice::submit`] → `validate`): the rules of
//!    §5.2.6.1 (whole sectors, inside `capacity`, not on a read-only disk,
//!    the feature negotiated, within `seg_max` / `size_max` and the
//!    discard / write-zeroes limits). Nothing reaches the device if this fails.
//! 2. **Build** (`submit_on`): the header (type, sector) and status byte go
//!    in the pool slot numbered like the token the ring is about to hand
//!    out ([`crate::queue::Virtqueue::next_token`]); registered data
//!    buffers are lent to the device (`blk/buffers.rs`), a blocking
//!    helper's slices shared with it ([`hal::Hal::share`]), and both cut
//!    into segments;
//!    the chain is header (device-readable), data, status (device-writable),
//!    §5.2.6's `struct virtio_blk_req`.
//! 3. **Publish** (`publish_all`): outside a batch at once, else at
//!    [`BlkDevice::finish_batch`]; the device is notified only if it asked
//!    to be (§2.7.10, EVENT_IDX).
//! 4. **Collect** ([`BlkDevice::poll`] → `next_completion` → `finish`): a
//!    used entry's token names the slot; its buffers are reclaimed or unshared, the
//!    status byte and the used length are judged (§5.2.6.2: the device is
//!    not trusted) and a [`Completion`] comes back.
//!
//! ## Inlining, and why it is marked
//!
//! The functions a request passes through (`submit`, `validate`, `data_job`,
//! `submit_job`, `describe`, `lend_data`, `publish_all`; `poll_rings`,
//! `next_completion`, `finish`, `unshare_all`, and the buffer table's
//! `held_len`, `lend`, `reclaim`) carry `#[inline(always)]`. This is
//! measured, not guessed: counted with `-icount shift=0` (docs/05-block.md
//! §5.5), a polled 4 KiB read of a registered buffer costs 1197
//! instructions per request and a write 1201 (1214 and 1239 when requests
//! shared caller memory through `Hal::share`); without the marks about 150
//! more, and with only some of them about 180 more (the compiler then also
//! stops inlining the ring's own steps into the caller); without the one on
//! `publish_all`, about 40 more. The buffer table keeps each buffer's device
//! address and length next to its "lent" flag (`blk/buffers.rs`): moving
//! buffers between `hal::DmaBuffer` and `hal::LentDmaBuffer` per request,
//! and a pass over the ids per check, cost about 90 more. The blocking
//! helpers skip share records for a zero-copy Hal (`Hal::unshare_is_noop`,
//! in `share_data`), about 70 fewer. Take a mark or a shortcut away only
//! with a count that says it is not needed.
//!
//! Completions collected but not yet handed out (by [`BlkDevice::complete`],
//! [`BlkDevice::poll_queue`], or a blocking helper that met them while
//! waiting for its own) wait in `finished`, in the order the device
//! finished them, and `poll` hands those out first.

use crate::queue::Ring;
use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;

use hal::{DeviceAddr, Direction, DmaOwner, Hal};

use super::buffers::{BufferId, BufferTable};
use super::loans::{lend_data, share_data, DataPart};
use super::notes::{ResultNote, SectorsNote, SegmentsNote, UsedNote};
pub(super) use super::per_queue::{Origin, QueueState, UsedEntry};
use log::{log_enabled, trace, warn, Level};

use super::error::{count_u32, sectors_u32};
use super::plan::{self, Cursor};
use super::request::{
    self, status, RequestPool, HEADER_BYTES, RANGE_BYTES, WRITE_ZEROES_FLAG_UNMAP,
};
use super::{
    BlkDevice, BlkError, BlkQueueStats, BlkToken, Completion, RequestError, RequestType, Serial,
    SetupError, ID_BYTES, MAX_REQUEST_BYTES, SECTOR_SIZE,
};
use crate::device::{self, DeviceError};
use crate::queue::{NotifyDecision, QueueError, Segment, Token, Virtqueue};
use crate::transport::{DeviceStatus, Transport};

/// One request for [`BlkDevice::submit`].
#[derive(Debug, Clone, Copy)]
pub enum Op<'b> {
    /// Read `buffers` (each a multiple of 512 bytes) from consecutive sectors.
    Read {
        /// First sector.
        sector: u64,
        /// Where the data goes, in order: registered buffers
        /// ([`BlkDevice::register_buffer`]) not held by another request.
        buffers: &'b [BufferId],
    },
    /// Write `buffers` to consecutive sectors.
    Write {
        /// First sector.
        sector: u64,
        /// The data, in order (registered buffers, as for `Read`).
        buffers: &'b [BufferId],
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

/// One request as the driver builds it (after validation). The blocking
/// helpers make these straight from their plan.
#[derive(Debug, Clone, Copy)]
pub(super) enum Job<'a> {
    /// Read or write: `bytes` bytes of `buffers` from `start`, in `segments` segments.
    Data {
        request: RequestType,
        sector: u64,
        buffers: DataBuffers<'a>,
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
    pub(super) fn request(&self) -> RequestType {
        match *self {
            Job::Data { request, .. } | Job::Range { request, .. } | Job::Command { request } => {
                request
            }
        }
    }

    /// The first sector the request is about (what completions report).
    fn sector(&self) -> u64 {
        match *self {
            Job::Data { sector, .. } | Job::Range { sector, .. } => sector,
            Job::Command { .. } => 0,
        }
    }

    /// The header's `sector` field. §5.2.6: it is used only by reads and
    /// writes and "set to 0 for commands other than read or write"; a
    /// discard or write-zeroes carries its start in the range
    /// (`struct virtio_blk_discard_write_zeroes`), not here.
    fn header_sector(&self) -> u64 {
        match *self {
            Job::Data { sector, .. } => sector,
            Job::Range { .. } | Job::Command { .. } => 0,
        }
    }
}

/// Where a read's or write's data is.
#[derive(Debug, Clone, Copy)]
pub(super) enum DataBuffers<'a> {
    /// Registered DMA buffers (the non-blocking API): lent to the device
    /// for the request, no copy, no share.
    Registered(&'a [BufferId]),
    /// Caller memory a blocking helper shares with the device for the
    /// request ([`hal::Hal::share`]); the helper holds the borrow until the
    /// request is over or the device reset.
    Caller(&'a [NonNull<[u8]>]),
}

/// What a request holds of the caller's memory, to give back when it ends.
#[derive(Debug, Clone, Copy)]
pub(super) enum Loan {
    /// A registered buffer, lent to the device.
    Lent(BufferId),
    /// A caller buffer shared with the device ([`hal::Hal::share`]).
    Shared {
        addr: DeviceAddr,
        buffer: NonNull<[u8]>,
        direction: Direction,
    },
}

/// What the driver remembers about one pool slot.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    pub(super) in_flight: bool,
    pub(super) origin: Origin,
    serial: u32,
    request: RequestType,
    sector: u64,
    data_bytes: u32,
    pub(super) shares: u16,
}

impl Slot {
    const FREE: Slot = Slot {
        in_flight: false,
        origin: Origin::Device,
        serial: 0,
        request: RequestType::Flush,
        sector: 0,
        data_bytes: 0,
        shares: 0,
    };
}

/// One request queue with its pool and per-request bookkeeping.
pub(super) struct RequestQueue<H: Hal> {
    pub(super) index: u16,
    pub(super) ring: Virtqueue<H>,
    pool: RequestPool<H>,
    /// Per pool slot, which is also the [`Token::index`] of its request.
    pub(super) slots: Vec<Slot>,
    /// `max_shares` entries per slot.
    pub(super) shares: Vec<Loan>,
    pub(super) max_shares: usize,
    pub(super) stats: BlkQueueStats,
    /// The last device error the ring caught ([`BlkDevice::ring_fault`]).
    pub(super) fault: Option<QueueError>,
    /// The device the requests go to: its pool is allocated, and caller
    /// buffers are shared, for it alone (`Transport::dma_owner`).
    pub(super) owner: DmaOwner,
    /// Scratch list of one request's segments (header, data, status).
    segments: Vec<Segment>,
}

impl<H: Hal> RequestQueue<H> {
    pub(super) fn new(
        index: u16,
        ring: Virtqueue<H>,
        max_shares: usize,
        owner: DmaOwner,
    ) -> Result<Self, SetupError> {
        let size = ring.size() as usize;
        let pool = RequestPool::new(owner, size).map_err(|e| {
            SetupError::Device(DeviceError::Queue {
                queue: index,
                error: QueueError::Dma(e),
            })
        })?;
        Ok(Self {
            index,
            ring,
            pool,
            slots: vec![Slot::FREE; size],
            shares: vec![Loan::Lent(BufferId::NONE); size * max_shares],
            max_shares,
            stats: BlkQueueStats::default(),
            fault: None,
            owner,
            segments: Vec::with_capacity(max_shares + 3),
        })
    }

    /// Gives back what `slot` holds (the device is done with its buffers):
    /// registered buffers are reclaimed, shares ended.
    #[inline(always)]
    fn unshare_all(&mut self, slot: usize, buffers: &mut BufferTable<H>) {
        let count = self.slots[slot].shares as usize;
        if count == 0 {
            return;
        }
        let first = slot * self.max_shares;
        // Entries past `count` are stale; the count says which are live, so
        // they need not be cleared one by one.
        for loan in &self.shares[first..first + count] {
            match *loan {
                Loan::Lent(id) => buffers.reclaim(id),
                Loan::Shared {
                    addr,
                    buffer,
                    direction,
                } => {
                    // SAFETY: these are the arguments and result of one
                    // earlier `H::share`; the device has finished with the
                    // buffer (its chain came back in the used ring, or the
                    // device was reset), and the count drops to 0 below, so
                    // no share ends twice.
                    unsafe { H::unshare(self.owner, addr, buffer, direction) };
                }
            }
        }
        self.slots[slot].shares = 0;
    }

    /// The queue's counters, the ring's included.
    pub(super) fn queue_stats(&self) -> BlkQueueStats {
        BlkQueueStats {
            ring: self.ring.counters(),
            ..self.stats
        }
    }

    /// Pool slots: one per descriptor of the ring.
    pub(super) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Ends the shares of `slot` and marks it free (its request is over or
    /// never reached the ring).
    pub(super) fn release(&mut self, slot: usize, buffers: &mut BufferTable<H>) {
        self.unshare_all(slot, buffers);
        self.slots[slot] = Slot::FREE;
    }
}

impl<H: Hal> RequestQueue<H> {
    /// Counts a finished (or aborted) request in the queue's statistics.
    pub(super) fn count(&mut self, record: &Slot, result: &Result<(), RequestError>) {
        let stats = &mut self.stats;
        stats.completions += 1;
        match (result, record.request) {
            (Ok(()), RequestType::Read) => stats.bytes_read += u64::from(record.data_bytes),
            (Ok(()), RequestType::Write) => stats.bytes_written += u64::from(record.data_bytes),
            (Ok(()), _) => {}
            (Err(RequestError::Aborted), _) => {
                stats.failed += 1;
                stats.aborted += 1;
            }
            (Err(_), _) => stats.failed += 1,
        }
    }

    /// Writes the segment list of `job` in pool slot `slot` to `segments`:
    /// header (device-readable), the data or the range or GET_ID's answer
    /// buffer, status (device-writable), §5.2.6. Shares caller buffers on
    /// the way. Returns the data bytes.
    #[inline(always)]
    fn describe(
        &mut self,
        slot: usize,
        job: &Job<'_>,
        segments: &mut Vec<Segment>,
        max_segment_bytes: usize,
        registered: &mut BufferTable<H>,
    ) -> Result<u32, BlkError> {
        segments.clear();
        segments.push(Segment::readable(
            self.pool.header_addr(slot),
            HEADER_BYTES as u32,
        ));
        let mut data_bytes = 0u32;
        match *job {
            Job::Data {
                request,
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
                match buffers {
                    DataBuffers::Registered(ids) => lend_data(
                        self,
                        slot,
                        segments,
                        ids,
                        registered,
                        direction,
                        max_segment_bytes,
                    )?,
                    DataBuffers::Caller(buffers) => {
                        let part = DataPart {
                            buffers,
                            start,
                            bytes,
                            direction,
                            max_segment_bytes,
                        };
                        share_data(self, slot, segments, part)?;
                    }
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
                self.pool
                    .write_payload(slot, &request::encode_range(sector, sectors, flags));
                segments.push(Segment::readable(
                    self.pool.payload_addr(slot),
                    RANGE_BYTES as u32,
                ));
            }
            Job::Command { request } => {
                if request == RequestType::GetId {
                    self.pool.clear_payload(slot);
                    segments.push(Segment::writable(
                        self.pool.payload_addr(slot),
                        ID_BYTES as u32,
                    ));
                }
            }
        }
        segments.push(Segment::writable(self.pool.status_addr(slot), 1));
        Ok(data_bytes)
    }

    /// What the caller hears when the ring refuses a chain.
    fn refused(&mut self, error: QueueError) -> BlkError {
        match error {
            QueueError::QueueFull { .. } => BlkError::QueueFull,
            QueueError::TooManySegments { segments, max } => BlkError::TooManySegments {
                needed: count_u32(segments.saturating_sub(2)),
                max: count_u32(max.saturating_sub(2)),
            },
            error => self.fault(error),
        }
    }

    /// Records and logs a device error the ring caught, and names it.
    fn fault(&mut self, error: QueueError) -> BlkError {
        warn!("blk q{}: {error}", self.index);
        self.fault = Some(error);
        BlkError::Ring { queue: self.index }
    }
}

impl<H: Hal, T: Transport> BlkDevice<H, T> {
    /// Submits one request and returns its token without waiting.
    ///
    /// Read and write buffers are registered DMA buffers
    /// ([`BlkDevice::register_buffer`]), validated (held by no other
    /// request, non-empty, multiples of 512, inside the disk, at most
    /// [`BlkDevice::max_data_segments`] segments once cut at `size_max`),
    /// lent to the device (no copy; [`BlkDevice::buffer`] answers `None`
    /// for them until the completion is collected or the device reset), and
    /// described to it between the header and the status byte. Nothing
    /// reaches the device if validation fails.
    ///
    /// Outside a batch ([`BlkDevice::start_batch`]) the request is published
    /// at once and the device notified if it wants to be.
    #[inline(always)]
    pub fn submit(&mut self, request: Request<'_>) -> Result<BlkToken, BlkError> {
        self.check_live()?;
        let job = self.validate(request.op)?;
        let token = self.submit_job(request.queue, &job)?;
        if !self.batching {
            self.publish_all();
        }
        Ok(token)
    }

    /// Submits a read into registered `buffers` from consecutive sectors
    /// starting at `sector`, on the next queue with room.
    pub fn submit_read(&mut self, sector: u64, buffers: &[BufferId]) -> Result<BlkToken, BlkError> {
        self.submit(Request::new(Op::Read { sector, buffers }))
    }

    /// Submits a write of registered `buffers` to consecutive sectors
    /// starting at `sector`.
    pub fn submit_write(
        &mut self,
        sector: u64,
        buffers: &[BufferId],
    ) -> Result<BlkToken, BlkError> {
        self.submit(Request::new(Op::Write { sector, buffers }))
    }

    /// Submits a cache flush.
    pub fn submit_flush(&mut self) -> Result<BlkToken, BlkError> {
        self.submit(Request::new(Op::Flush))
    }

    /// Submits a GET_ID; once it completes, [`BlkDevice::last_serial`] has
    /// the answer.
    pub fn submit_get_id(&mut self) -> Result<BlkToken, BlkError> {
        self.submit(Request::new(Op::GetId))
    }

    /// Submits a discard of `sectors` sectors at `sector`.
    pub fn submit_discard(&mut self, sector: u64, sectors: u32) -> Result<BlkToken, BlkError> {
        self.submit(Request::new(Op::Discard { sector, sectors }))
    }

    /// Submits a write-zeroes of `sectors` sectors at `sector`; `unmap`
    /// lets the device deallocate them.
    pub fn submit_write_zeroes(
        &mut self,
        sector: u64,
        sectors: u32,
        unmap: bool,
    ) -> Result<BlkToken, BlkError> {
        self.submit(Request::new(Op::WriteZeroes {
            sector,
            sectors,
            unmap,
        }))
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
    /// blamed for ([`BlkError::Ring`]); polling again continues after it,
    /// unless the queue is broken, which needs [`BlkDevice::recover`].
    pub fn poll(&mut self) -> Result<Option<Completion>, BlkError> {
        if let Some(done) = self.finished.pop_front() {
            return Ok(Some(done));
        }
        self.poll_rings()
    }

    /// Like [`BlkDevice::poll`], but straight from the used rings, passing
    /// over the completions set aside in `finished`: what is still in a
    /// used ring stays there, in order, for the next call.
    #[inline(always)]
    pub(super) fn poll_rings(&mut self) -> Result<Option<Completion>, BlkError> {
        for q in 0..self.queues.len() {
            match self.next_completion(q) {
                Ok(None) => continue,
                answer => return answer,
            }
        }
        Ok(None)
    }

    /// Sets a completion aside for the caller's next [`BlkDevice::poll`]
    /// (a blocking helper met it while waiting for its own).
    pub(super) fn set_aside(&mut self, completion: Completion) {
        self.finished.push_back(completion);
    }

    /// Forgets the completions set aside that `unwanted` picks (those of a
    /// blocking call that is giving up: nobody will ask for them).
    pub(super) fn drop_set_aside(&mut self, unwanted: impl Fn(&Completion) -> bool) {
        self.finished.retain(|c| !unwanted(c));
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
            .get_mut(token.queue as usize)
            .and_then(|q| q.get_mut().rq.slots.get(token.slot as usize))
            .is_some_and(|s| s.in_flight && s.serial == token.serial);
        if !in_flight {
            return Err(BlkError::UnknownToken);
        }
        self.reap(token.queue as usize)?;
        Ok(self.take_finished(|c| c.token == token))
    }

    /// `Err(DeviceFailed)` while the device is down after a failure.
    pub(super) fn check_live(&self) -> Result<(), BlkError> {
        if self.failed {
            Err(BlkError::DeviceFailed)
        } else {
            Ok(())
        }
    }

    /// Checks a read or write before anything is shared or submitted and
    /// returns its length in bytes.
    pub(super) fn validate_data(
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
                sectors: sectors_u32(sectors),
            }),
        }
    }

    /// Checks a discard / write-zeroes range and returns the per-request
    /// sector limit.
    pub(super) fn validate_range(
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
    pub(super) fn validate<'a>(&self, op: Op<'a>) -> Result<Job<'a>, BlkError> {
        self.validate_with(op, &self.buffers)
    }

    /// [`BlkDevice::validate`] with the registered buffers of `table` (the
    /// device's, or a queue's own for the per-queue path).
    #[inline(always)]
    pub(super) fn validate_with<'a>(
        &self,
        op: Op<'a>,
        table: &BufferTable<H>,
    ) -> Result<Job<'a>, BlkError> {
        match op {
            Op::Read { sector, buffers } => {
                self.data_job(RequestType::Read, sector, buffers, table)
            }
            Op::Write { sector, buffers } => {
                self.data_job(RequestType::Write, sector, buffers, table)
            }
            Op::Flush if !self.info.flush => Err(BlkError::NotNegotiated(RequestType::Flush)),
            Op::Flush => Ok(Job::Command {
                request: RequestType::Flush,
            }),
            Op::GetId => Ok(Job::Command {
                request: RequestType::GetId,
            }),
            Op::Discard { sector, sectors } => {
                self.range_job(RequestType::Discard, sector, sectors, 0)
            }
            Op::WriteZeroes {
                sector,
                sectors,
                unmap,
            } => {
                let flags = if unmap { WRITE_ZEROES_FLAG_UNMAP } else { 0 };
                self.range_job(RequestType::WriteZeroes, sector, sectors, flags)
            }
        }
    }

    /// A read or write that fits one request, as a job.
    #[inline(always)]
    fn data_job<'a>(
        &self,
        request: RequestType,
        sector: u64,
        buffers: &'a [BufferId],
        table: &BufferTable<H>,
    ) -> Result<Job<'a>, BlkError> {
        if request.modifies_disk() && self.info.read_only {
            return Err(BlkError::ReadOnly);
        }
        // One pass over the buffers: each registered and held, a non-empty
        // multiple of 512 bytes; their total and their segments.
        let (mut bytes, mut segments) = (0usize, 0usize);
        for &id in buffers {
            let len = table.held_len(id).ok_or(BlkError::BufferUnavailable(id))?;
            if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
                return Err(BlkError::BadBufferLength { len });
            }
            bytes = bytes.saturating_add(len);
            segments += plan::segments_for(len, self.limits.max_segment_bytes);
        }
        if bytes == 0 {
            return Err(BlkError::EmptyRequest);
        }
        self.check_range(sector, (bytes / SECTOR_SIZE) as u64)?;
        if bytes > MAX_REQUEST_BYTES {
            return Err(BlkError::RequestTooLarge { bytes });
        }
        if segments > self.limits.max_segments {
            return Err(BlkError::TooManySegments {
                needed: count_u32(segments),
                max: count_u32(self.limits.max_segments),
            });
        }
        Ok(Job::Data {
            request,
            sector,
            buffers: DataBuffers::Registered(buffers),
            start: Cursor::default(),
            bytes,
            segments,
        })
    }

    /// A discard or write-zeroes that fits one request, as a job.
    fn range_job(
        &self,
        request: RequestType,
        sector: u64,
        sectors: u32,
        flags: u32,
    ) -> Result<Job<'static>, BlkError> {
        let max = self.validate_range(request, sector, sectors.into())?;
        if sectors > max {
            return Err(BlkError::TooManySectors {
                sectors: sectors.into(),
                max,
            });
        }
        Ok(Job::Range {
            request,
            sector,
            sectors,
            flags,
        })
    }

    /// Puts a validated job on `queue` (or the next queue with room).
    #[inline(always)]
    pub(super) fn submit_job(
        &mut self,
        queue: Option<u16>,
        job: &Job<'_>,
    ) -> Result<BlkToken, BlkError> {
        let count = self.queues.len();
        if let Some(q) = queue.or(self.home_queue) {
            if q as usize >= count {
                return Err(BlkError::NoSuchQueue(q));
            }
            return self.submit_on(q as usize, job);
        }
        let mut q = self.next_queue % count;
        for _ in 0..count {
            match self.submit_on(q, job) {
                Ok(token) => {
                    self.next_queue = (q + 1) % count;
                    return Ok(token);
                }
                Err(BlkError::QueueFull) => q = (q + 1) % count,
                Err(e) => return Err(e),
            }
        }
        Err(BlkError::QueueFull)
    }

    /// Builds the request in a pool slot of queue `q`, lends or shares its
    /// buffers, and adds its chain to the ring (not yet published).
    #[inline(always)]
    fn submit_on(&mut self, q: usize, job: &Job<'_>) -> Result<BlkToken, BlkError> {
        let serial = self.next_serial;
        let rq = &mut self.queues[q].get_mut().rq;
        let token = rq.submit(
            &mut self.buffers,
            Origin::Device,
            serial,
            job,
            self.limits.max_segment_bytes,
        )?;
        self.next_serial = serial.wrapping_add(1);
        Ok(token)
    }

    /// Publishes every queue and notifies those that need it.
    #[inline(always)]
    pub(super) fn publish_all(&mut self) -> usize {
        let mut sent = 0;
        for state in self.queues.iter_mut() {
            if state.get_mut().rq.publish(&self.transport) {
                sent += 1;
            }
        }
        sent
    }

    /// Collects every used entry of queue `q` into `finished`, for
    /// [`BlkDevice::poll_queue`] and [`BlkDevice::complete`].
    fn reap(&mut self, q: usize) -> Result<(), BlkError> {
        while let Some(done) = self.next_completion(q)? {
            self.finished.push_back(done);
        }
        Ok(())
    }

    /// Takes used entries of queue `q` (first those the per-queue path set
    /// aside for this API) until one finishes a request of this API, and
    /// returns its completion; `Ok(None)` once there are none. Requests of
    /// the per-queue path met on the way are finished into the queue's own
    /// list.
    #[inline(always)]
    fn next_completion(&mut self, q: usize) -> Result<Option<Completion>, BlkError> {
        let legacy = self.transport.kind().is_legacy();
        let state = self.queues[q].get_mut();
        loop {
            let (token, used) = match state.deferred.pop_front() {
                Some(entry) => entry,
                None => match state.rq.pop_used(legacy)? {
                    Some(entry) => entry,
                    None => return Ok(None),
                },
            };
            let origin = state.rq.origin_of(token);
            let (rq, table) = state.table(origin, &mut self.buffers);
            let Some((done, serial)) = rq.finish(table, token, used) else {
                continue;
            };
            if origin == Origin::Queue {
                state.own_finished.push_back(done);
                continue;
            }
            if serial.is_some() {
                self.last_serial = serial;
            }
            return Ok(Some(done));
        }
    }

    fn take_finished(&mut self, wanted: impl Fn(&Completion) -> bool) -> Option<Completion> {
        let position = self.finished.iter().position(wanted)?;
        self.finished.remove(position)
    }

    /// Resets the device so it stops touching memory, and fails every
    /// request in flight with [`RequestError::Aborted`] (their buffers are
    /// unshared; their completions wait for `poll`, or for the per-queue
    /// path's [`super::BlkQueue::poll`] if it submitted them). With
    /// `mark_failed`, sets FAILED and refuses requests until
    /// [`BlkDevice::recover`]. Needs `&mut self`: every queue at once.
    ///
    /// If the device does not acknowledge the reset (§2.1.2), it may still
    /// write the rings, the pool and every buffer it holds: those are kept
    /// for ever (`hal::DeviceVisible::keep_forever`), the requests' shares
    /// are not ended and lent buffers not handed back (their requests still
    /// complete with [`RequestError::Aborted`]), and the device is dead
    /// ([`BlkDevice::is_dead`]).
    pub(super) fn stop_device(&mut self, why: &str, mark_failed: bool) {
        let location = self.transport.location();
        if mark_failed {
            warn!("{location}: virtio-blk: resetting the device: {why}");
        }
        let stopped = device::reset_or_keep(&mut self.transport, "virtio-blk").is_ok();
        if !stopped {
            self.queues.keep_forever();
            self.buffers.keep_forever();
            self.dead = true;
        } else if mark_failed {
            self.transport.set_status(DeviceStatus::FAILED);
        }
        for state in self.queues.iter_mut() {
            let state = state.get_mut();
            // Used entries nobody finished: their requests are aborted below.
            state.deferred.clear();
            if stopped {
                state.rq.ring.reset(|_| {});
            }
            for slot in 0..state.rq.slots.len() {
                let record = state.rq.slots[slot];
                if !record.in_flight {
                    continue;
                }
                let result = Err(RequestError::Aborted);
                let (rq, table) = state.table(record.origin, &mut self.buffers);
                rq.count(&record, &result);
                if stopped {
                    rq.release(slot, table);
                } else {
                    // The device may still write these buffers: no unshare
                    // (a bounce copy would land in freed memory), no hand-back.
                    rq.slots[slot].in_flight = false;
                }
                let token = BlkToken {
                    queue: rq.index,
                    slot: slot as u16,
                    serial: record.serial,
                };
                trace!("blk {token}: {} aborted by the reset", record.request);
                let done = Completion {
                    token,
                    request: record.request,
                    sector: record.sector,
                    result,
                };
                match record.origin {
                    Origin::Device => self.finished.push_back(done),
                    Origin::Queue => state.own_finished.push_back(done),
                }
            }
        }
        self.failed = mark_failed || !stopped;
    }

    /// `true` if queue `queue` is broken (a fatal ring fault: only a reset helps).
    pub(super) fn queue_is_broken(&mut self, queue: u16) -> bool {
        self.queues
            .get_mut(usize::from(queue))
            .is_some_and(|q| q.get_mut().rq.ring.is_broken())
    }
}

impl<H: Hal> RequestQueue<H> {
    /// Builds the request in the pool slot the ring's next token names,
    /// lends or shares its buffers (registered ones from `table`), and adds
    /// its chain to the ring (not yet published). Everything it touches is
    /// this queue's, or `table`.
    #[inline(always)]
    pub(super) fn submit(
        &mut self,
        table: &mut BufferTable<H>,
        origin: Origin,
        serial: u32,
        job: &Job<'_>,
        max_segment_bytes: usize,
    ) -> Result<BlkToken, BlkError> {
        let mut segments = core::mem::take(&mut self.segments);
        let result = self.add(&mut segments, table, origin, serial, job, max_segment_bytes);
        self.segments = segments;
        result
    }

    #[inline(always)]
    fn add(
        &mut self,
        segments: &mut Vec<Segment>,
        table: &mut BufferTable<H>,
        origin: Origin,
        serial: u32,
        job: &Job<'_>,
        max_segment_bytes: usize,
    ) -> Result<BlkToken, BlkError> {
        // The slot is the token `add` is about to return; a queue without a
        // free token has no room either.
        let Some(next) = self.ring.next_token() else {
            return Err(BlkError::QueueFull);
        };
        // Below the queue's size, which is the number of slots.
        let slot = next.index();
        let (request, sector) = (job.request(), job.sector());
        self.pool.prepare(slot, request, job.header_sector());
        let data_bytes = match self.describe(slot, job, segments, max_segment_bytes, table) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.release(slot, table);
                return Err(e);
            }
        };
        let token = match self.ring.add(segments) {
            Ok(token) => token,
            Err(error) => {
                self.release(slot, table);
                return Err(self.refused(error));
            }
        };
        // `next_token` promised this token; the slot's header already says
        // what the request is.
        debug_assert_eq!(
            token.index(),
            slot,
            "the queue broke its next_token promise"
        );
        let shares = self.slots[slot].shares;
        self.slots[slot] = Slot {
            in_flight: true,
            origin,
            serial,
            request,
            sector,
            data_bytes,
            shares,
        };
        self.stats.requests += 1;
        let blk_token = BlkToken {
            queue: self.index,
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

    /// Publishes what was added (§2.7.13.3) and notifies the device through
    /// `transport` if it asked to be (§2.7.10); `true` if it was notified.
    /// What `device::kick` does, through `&T`: the per-queue path holds no
    /// exclusive borrow of the transport.
    #[inline(always)]
    pub(super) fn publish<T: Transport>(&mut self, transport: &T) -> bool {
        match self.ring.publish() {
            NotifyDecision::Notify => {
                transport.notify(self.index);
                true
            }
            NotifyDecision::Suppressed | NotifyDecision::NothingNew => false,
        }
    }

    /// Which path submitted the request of `token` (the device's, for a
    /// token with no request: `finish` ignores it).
    #[inline(always)]
    pub(super) fn origin_of(&self, token: Token) -> Origin {
        self.slots
            .get(token.index())
            .map_or(Origin::Device, |s| s.origin)
    }

    /// Takes the next used entry off the ring; `Ok(None)` if it is empty.
    #[inline(always)]
    pub(super) fn pop_used(&mut self, legacy: bool) -> Result<Option<UsedEntry>, BlkError> {
        let q = self.index;
        Ok(Some(match self.ring.pop_used() {
            Ok(None) => return Ok(None),
            Ok(Some(used)) => (used.token, Ok(used.len)),
            // §5.2.6, "Legacy Interface: Device Operation": some
            // legacy devices report the total descriptor length, header
            // included, and "transitional drivers SHOULD ignore the len
            // value in used ring entries".
            // Nothing is read by the length (data is in the caller's
            // buffer, the status at its place in the slot), so the
            // bound stays the writable bytes the driver shared.
            Err(QueueError::UsedLengthTooLong { token, len, max }) if legacy => {
                trace!("blk q{q}: legacy device reported used length {len} > {max} writable bytes; ignored (§5.2.6 legacy interface)");
                self.stats.inexact_used_lengths += 1;
                (token, Ok(max))
            }
            // A modern device broke §2.7.8 ("MUST write at least len
            // bytes"): the request is over (its descriptors are free
            // again), but nothing the device left can be trusted.
            Err(QueueError::UsedLengthTooLong { token, len, max }) => (
                token,
                Err(RequestError::BadLength {
                    written: len,
                    expected: max,
                }),
            ),
            Err(error) => return Err(self.fault(error)),
        }))
    }

    /// Finishes the request of `token` (its pool slot): ends its shares
    /// (registered buffers go back to `table`), reads its status, frees its
    /// slot, and returns its completion, with the serial a GET_ID brought.
    #[inline(always)]
    pub(super) fn finish(
        &mut self,
        table: &mut BufferTable<H>,
        token: Token,
        used: Result<u32, RequestError>,
    ) -> Option<(Completion, Option<Serial>)> {
        let q = self.index;
        let slot = token.index();
        let Some(&record) = self.slots.get(slot).filter(|s| s.in_flight) else {
            // The queue only returns tokens it has in flight, and every one
            // of those has a request; this cannot happen unless the two disagree.
            warn!("blk q{q}: completion for token {token} with no request; ignored");
            return None;
        };
        // The device is done with the buffers: end the shares first, so the
        // data is in the caller's memory before anyone hears of it.
        self.unshare_all(slot, table);
        let status = self.pool.status(slot).unwrap_or(status::NOT_WRITTEN);
        let result = used.and_then(|len| {
            if request::used_length_is_inexact(record.request, record.data_bytes, len) {
                self.stats.inexact_used_lengths += 1;
            }
            request::check_status(status)
        });
        let mut serial = None;
        if record.request == RequestType::GetId && result.is_ok() {
            let mut raw = [0u8; ID_BYTES];
            self.pool.read_payload(slot, &mut raw);
            let answer = Serial::from_id_bytes(&raw);
            trace!("blk q{q}: GET_ID answered serial \"{answer}\"");
            serial = Some(answer);
        }
        self.count(&record, &result);
        // The shares ended above (the count is 0 again); the rest of the
        // record is rewritten by the next request in this slot.
        self.slots[slot].in_flight = false;
        let token = BlkToken {
            queue: q,
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
        let done = Completion {
            token,
            request: record.request,
            sector: record.sector,
            result,
        };
        Some((done, serial))
    }
}
