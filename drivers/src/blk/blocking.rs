//! # Blocking helpers, built on the non-blocking core (virtio 1.2 §5.2.6.1)
//!
//! [`BlkDevice::read_blocks`] and friends take a transfer of any size and
//! return when it is done. They are clients of the core (`core.rs`) and use
//! nothing else of it: `submit_job` to make a request available, `poll_rings`
//! to collect completions, `set_aside` for the completions of other
//! requests they meet. A call runs like this:
//!
//! 1. A [`Plan`] says what is left: bytes of the caller's buffers, sectors of
//!    a range, or one command. [`plan::next_chunk`] cuts the next request
//!    so that the device's limits hold (§5.2.4 `seg_max`, `size_max`;
//!    discard and write-zeroes limits).
//! 2. As many requests as fit are submitted under one publish.
//! 3. Completions are collected. The call's own are counted in its
//!    [`Call`], a value on the call's stack: a request is the call's own if
//!    it was submitted during the call (serial numbers are handed out in
//!    order, and a blocking call holds `&mut` on the device throughout).
//! 4. With nothing to collect, the call waits once through the caller's
//!    [`Wait`], re-arming interrupts first if the wait sleeps until one
//!    ([`crate::irq::wait_until_used`]; §2.7.10: the device may have used
//!    entries before it saw the request to interrupt).
//!
//! The first failure stops new submissions; what is in flight is awaited.
//! If the wait gives up, the device is reset (so it no longer touches the
//! caller's buffers) and the call returns [`BlkError::Timeout`].

use core::ptr::NonNull;

use hal::Hal;
use log::{log_enabled, trace, Level};

use super::core::{DataBuffers, Job, Op};
use super::plan::{self, Chunk, Cursor, SplitLimits};
use super::request::WRITE_ZEROES_FLAG_UNMAP;
use super::{BlkDevice, BlkError, Completion, RequestType, Serial, SECTOR_SIZE, VECTORED_GROUP};
use crate::device::Wait;
use crate::irq::wait_until_used;
use crate::transport::Transport;

/// The remaining work of a blocking call.
pub(super) enum Plan<'a> {
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
                    buffers: DataBuffers::Caller(buffers),
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

/// How a blocking call is going: kept on the call's stack, not in the device.
#[derive(Debug, Clone, Copy)]
struct Call {
    /// The serial number of the call's first request; its requests are the
    /// next `submitted` serials.
    first_serial: u32,
    submitted: u32,
    /// Submitted and not yet completed.
    outstanding: usize,
    /// Completions collected.
    completed: u64,
    /// The first failure: no more submissions after it.
    error: Option<BlkError>,
}

impl Call {
    fn new(first_serial: u32) -> Self {
        Self {
            first_serial,
            submitted: 0,
            outstanding: 0,
            completed: 0,
            error: None,
        }
    }

    /// `true` if the call submitted the request of `completion`.
    fn owns(&self, completion: &Completion) -> bool {
        completion.token.serial.wrapping_sub(self.first_serial) < self.submitted
    }

    fn submitted_one(&mut self) {
        self.submitted += 1;
        self.outstanding += 1;
    }

    fn record(&mut self, completion: &Completion) {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.completed += 1;
        if let Err(e) = completion.result {
            self.error.get_or_insert(e.into());
        }
    }

    fn fail(&mut self, error: BlkError) {
        self.error.get_or_insert(error);
    }
}

impl<H: Hal, T: Transport> BlkDevice<H, T> {
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
    }

    /// The device's serial number (GET_ID).
    pub fn get_id<W: Wait + ?Sized>(&mut self, wait: &mut W) -> Result<Serial, BlkError> {
        self.check_live()?;
        self.run(
            &mut Plan::Command {
                request: RequestType::GetId,
                sent: false,
            },
            wait,
        )?;
        // The call's GET_ID succeeded, and its completion stored the serial.
        Ok(self
            .last_serial
            .unwrap_or(Serial::from_id_bytes(&[0; super::ID_BYTES])))
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
    fn run<W: Wait + ?Sized>(&mut self, plan: &mut Plan<'_>, wait: &mut W) -> Result<(), BlkError> {
        self.check_live()?;
        let mut call = Call::new(self.next_serial);
        // An interrupt-driven wait: no interrupts while this call collects
        // completions itself; `drive` re-arms them right before each wait.
        let sleeps = wait.sleeps_until_interrupt();
        if sleeps {
            self.disable_interrupts();
        }
        let outcome = self.drive(plan, wait, &mut call);
        if sleeps && !self.failed {
            // Leave the device interrupting, as an interrupt-driven caller
            // expects; what is pending now is collected by its next poll.
            let _ = self.enable_interrupts();
        }
        outcome
    }

    fn drive<W: Wait + ?Sized>(
        &mut self,
        plan: &mut Plan<'_>,
        wait: &mut W,
        call: &mut Call,
    ) -> Result<(), BlkError> {
        loop {
            // 1. Submit what fits, under one publish. Always publish: a
            // caller's open batch must not hold back the requests this call
            // is about to wait for.
            let stalled = self.submit_planned(plan, call);
            self.publish_all();
            // 2. Done? (After an error, only what is in flight is awaited.)
            let nothing_left = plan.is_done() || call.error.is_some();
            if call.outstanding == 0 && nothing_left {
                return call.error.map_or(Ok(()), Err);
            }
            if stalled && self.in_flight() == 0 {
                // Full with nothing in flight: this request can never fit.
                let max = super::error::count_u32(self.limits.max_segments);
                call.fail(BlkError::TooManySegments {
                    needed: max.saturating_add(1),
                    max,
                });
                continue;
            }
            // 3. Collect.
            let before = call.completed;
            self.collect(call)?;
            if call.completed != before {
                continue;
            }
            // 4. Nothing new: wait for the device (or find, on the second
            // look, that it has used entries already); either way collect
            // again with interrupts off.
            let waited = wait_until_used(
                wait,
                self,
                |d| d.enable_interrupts(),
                |d| d.disable_interrupts(),
            );
            if let Err(timeout) = waited {
                self.give_up(call, "a blocking request timed out");
                return Err(BlkError::Timeout {
                    waits: timeout.waits,
                });
            }
        }
    }

    /// Submits the plan's next requests until the plan is done, the call
    /// failed, or the queues are full (`true`).
    fn submit_planned(&mut self, plan: &mut Plan<'_>, call: &mut Call) -> bool {
        while call.error.is_none() {
            let Some(job) = plan.next_job(self.limits) else {
                return false;
            };
            match self.submit_job(None, &job) {
                Ok(_) => {
                    plan.advance(&job);
                    call.submitted_one();
                }
                Err(BlkError::QueueFull) => return true,
                Err(e) => call.fail(e),
            }
        }
        false
    }

    /// Collects every completion waiting in the rings: the call's own are
    /// counted, others set aside for the caller's `poll`. `Err` only when a
    /// queue broke (the device was reset).
    fn collect(&mut self, call: &mut Call) -> Result<(), BlkError> {
        loop {
            match self.poll_rings() {
                Ok(Some(done)) if call.owns(&done) => call.record(&done),
                Ok(Some(other)) => self.set_aside(other),
                Ok(None) => return Ok(()),
                Err(e @ BlkError::Ring { queue }) if self.queue_is_broken(queue) => {
                    self.give_up(call, "a request queue is broken");
                    return Err(e);
                }
                Err(e) => call.fail(e),
            }
        }
    }

    /// Resets the device: the call's requests are aborted, and their
    /// completions are dropped (nobody else knows their tokens).
    fn give_up(&mut self, call: &Call, why: &str) {
        self.stop_device(why, true);
        self.drop_set_aside(|c| call.owns(c));
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
