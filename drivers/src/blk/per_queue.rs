//! # One request queue, driven on its own (virtio 1.2 §5.2.2, §5.2.6)
//!
//! A multiqueue device (VIRTIO_BLK_F_MQ, §5.2.3) gives every CPU a request
//! queue of its own; for that to pay, a CPU submitting on its queue must not
//! wait for a CPU on another one. [`BlkDevice::lock_queue`] takes `&self`
//! and locks one queue (a `spin::Mutex` per queue inside the driver) and
//! nothing else; the [`BlkQueue`] it returns submits, publishes, notifies
//! and collects completions of that queue:
//!
//! | what the path needs | where it is | shared with other queues? |
//! | --- | --- | --- |
//! | the ring, the request pool, slots, counters | the queue's state, behind its lock | no |
//! | registered data buffers | the queue's own buffer table ([`BlkQueue::register_buffer`]) | no |
//! | finished requests, serial numbers | the queue's own list and counter | no |
//! | capacity, read-only, limits, features | [`BlkDevice`] fields, read through `&self` | read only |
//! | the notification | [`Transport::notify`] through `&self` (one register write) | no lock |
//!
//! What changes the device as a whole (reset, recovery, a configuration
//! change, the blocking helpers, which reset the device when they give up)
//! takes `&mut BlkDevice`: every queue at once, which the borrow checker
//! enforces and a caller sharing the device between CPUs provides by
//! holding all of its per-queue locks (the kernel's `per_queue_lock::PerQueueLock`).
//!
//! Both APIs may use the same queue (not at the same moment: `&mut` and
//! `&` exclude each other). Each request remembers which path submitted it
//! (`core::Origin`): a per-queue request the device API meets in the ring
//! is finished into the queue's own list, and a device-API request the
//! per-queue path meets is left, unfinished, for [`BlkDevice::poll`] (its
//! buffers are in the device's table, which this path does not write).
//! A reset aborts the requests of both, each into its own list.
//!
//! Spin locks do not re-enter, so a caller holding a [`BlkQueue`] that
//! locked its queue again would wait for ever. [`BlkDevice`]'s methods that
//! look at a queue's state (`in_flight`, `stats`, `queue_stats`,
//! `queue_size`, `ring_fault`, `visit_rings`) therefore take `&mut self`
//! and read the state without locking it: while a [`BlkQueue`] (a `&self`
//! borrow) lives they do not compile, and the [`BlkQueue`] answers them
//! for its queue ([`BlkQueue::in_flight`], [`BlkQueue::stats`],
//! [`BlkQueue::size`]). The one lock left on `&self` is
//! [`BlkDevice::lock_queue`]: do not lock a queue you hold.

use hal::{DmaBuffer, DmaOwner, Hal};

use super::buffers::BufferId;
use alloc::collections::VecDeque;

use super::buffers::BufferTable;
use super::core::{Op, RequestQueue};
use super::RequestError;
use super::{BlkDevice, BlkError, BlkQueueStats, BlkToken, Completion};
use crate::queue::Ring;
use crate::queue::Token;
use crate::transport::Transport;

/// One request queue of a [`BlkDevice`], locked for the caller: see the
/// module documentation. Dropping it unlocks the queue.
pub struct BlkQueue<'d, H: Hal, T: Transport> {
    device: &'d BlkDevice<H, T>,
    state: spin::MutexGuard<'d, QueueState<H>>,
}

impl<H: Hal, T: Transport> BlkDevice<H, T> {
    /// Locks request queue `queue` (spinning while another CPU holds it) and
    /// returns it, for the per-queue path. Takes only that queue's lock.
    pub fn lock_queue(&self, queue: u16) -> Result<BlkQueue<'_, H, T>, BlkError> {
        let lock = self
            .queues
            .get(usize::from(queue))
            .ok_or(BlkError::NoSuchQueue(queue))?;
        Ok(BlkQueue {
            device: self,
            state: lock.lock(),
        })
    }
}

impl<H: Hal, T: Transport> BlkQueue<'_, H, T> {
    /// The queue's index (0 is `requestq1` with MQ).
    pub fn index(&self) -> u16 {
        self.state.rq.index
    }

    /// The owner to allocate this queue's buffers for (the device's,
    /// `Transport::dma_owner`).
    pub fn dma_owner(&self) -> DmaOwner {
        self.device.transport.dma_owner()
    }

    /// Registers a data buffer with this queue (for this queue's
    /// [`BlkQueue::submit`] only). Gives it back if it was not allocated
    /// for this device ([`BlkQueue::dma_owner`]) or the table is full.
    pub fn register_buffer(&mut self, buffer: DmaBuffer<H>) -> Result<BufferId, DmaBuffer<H>> {
        if buffer.owner() != self.dma_owner() {
            return Err(buffer);
        }
        self.state.own_buffers.register(buffer)
    }

    /// Takes registered buffer `id` back; `None` if unknown or in a request.
    pub fn unregister_buffer(&mut self, id: BufferId) -> Option<DmaBuffer<H>> {
        self.state.own_buffers.unregister(id)
    }

    /// The bytes of this queue's buffer `id`; `None` if unknown or lent.
    pub fn buffer(&self, id: BufferId) -> Option<&[u8]> {
        self.state.own_buffers.held(id).map(DmaBuffer::as_bytes)
    }

    /// The bytes of this queue's buffer `id`, for writing; `None` if
    /// unknown or lent.
    pub fn buffer_mut(&mut self, id: BufferId) -> Option<&mut [u8]> {
        self.state
            .own_buffers
            .held_mut(id)
            .map(DmaBuffer::as_bytes_mut)
    }

    /// Validates `op` (the rules of [`BlkDevice::submit`]; its buffers are
    /// this queue's) and adds it to this queue's ring, not yet published:
    /// [`BlkQueue::publish`] makes everything added visible at once.
    #[inline(always)]
    pub fn submit(&mut self, op: Op<'_>) -> Result<BlkToken, BlkError> {
        let device = self.device;
        device.check_live()?;
        let state = &mut *self.state;
        let job = device.validate_with(op, &state.own_buffers)?;
        let serial = state.next_serial;
        let token = state.rq.submit(
            &mut state.own_buffers,
            Origin::Queue,
            serial,
            &job,
            device.limits.max_segment_bytes,
        )?;
        state.next_serial = serial.wrapping_add(1);
        Ok(token)
    }

    /// Publishes what was added and notifies the device if it asked to be
    /// (§2.7.13.3, §2.7.10). Returns `true` if a notification was sent.
    #[inline(always)]
    pub fn publish(&mut self) -> bool {
        self.state.rq.publish(&self.device.transport)
    }

    /// The next finished request of this path on this queue; `Ok(None)` if
    /// none. Device-API requests met in the ring are left for
    /// [`BlkDevice::poll`].
    #[inline(always)]
    pub fn poll(&mut self) -> Result<Option<Completion>, BlkError> {
        let state = &mut *self.state;
        if let Some(done) = state.own_finished.pop_front() {
            return Ok(Some(done));
        }
        let legacy = self.device.transport.kind().is_legacy();
        while let Some((token, used)) = state.rq.pop_used(legacy)? {
            if state.rq.origin_of(token) == Origin::Device {
                state.deferred.push_back((token, used));
                continue;
            }
            if let Some((done, _serial)) = state.rq.finish(&mut state.own_buffers, token, used) {
                return Ok(Some(done));
            }
        }
        Ok(None)
    }

    /// Asks the device for used-buffer interrupts on this queue; `true` if
    /// completions are already waiting (collect them before sleeping).
    pub fn enable_interrupts(&mut self) -> bool {
        !self.state.own_finished.is_empty() || self.state.rq.ring.enable_interrupts()
    }

    /// Asks the device not to interrupt for this queue.
    pub fn disable_interrupts(&mut self) {
        self.state.rq.ring.disable_interrupts();
    }

    /// Descriptors in this queue (pool slots: [`BlkToken::slot`] is below).
    pub fn size(&self) -> u16 {
        self.state.rq.ring.size()
    }

    /// Requests in flight on this queue (both paths').
    pub fn in_flight(&self) -> usize {
        usize::from(self.state.rq.ring.in_flight())
    }

    /// This queue's counters.
    pub fn stats(&self) -> BlkQueueStats {
        self.state.rq.queue_stats()
    }
}

/// Which path submitted a request, and so whose buffer table its loans
/// name and where its completion goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// [`BlkDevice`]'s own API (`&mut`): the device's buffer table, its
    /// `finished` list, its serial numbers.
    Device,
    /// The per-queue path ([`super::BlkQueue`]): the queue's own buffer
    /// table, completion list and serial numbers (`blk/per_queue.rs`).
    Queue,
}

/// A used entry taken from a ring, not yet turned into a [`Completion`]:
/// its token and its length (or what was wrong with it).
pub(super) type UsedEntry = (Token, Result<u32, RequestError>);

/// Everything one request queue needs, behind that queue's own lock in
/// [`BlkDevice`] (`spin::Mutex`): the ring and its requests, and what the
/// per-queue path ([`super::BlkQueue`]) keeps of its own. Nothing in here
/// is shared with another queue, so CPUs on different queues never wait
/// for each other.
pub(super) struct QueueState<H: Hal> {
    pub(super) rq: RequestQueue<H>,
    /// Buffers registered with this queue for the per-queue path.
    pub(super) own_buffers: BufferTable<H>,
    /// Per-queue requests that finished (collected by the device's own
    /// API, or aborted by a reset) and wait for [`super::BlkQueue::poll`].
    pub(super) own_finished: VecDeque<Completion>,
    /// Used entries of the device API's requests that the per-queue path
    /// met in the ring: it cannot reclaim their buffers (the device's
    /// table is not behind this lock), so [`BlkDevice::poll`] finishes them.
    pub(super) deferred: VecDeque<UsedEntry>,
    /// The serial number of the per-queue path's next request.
    pub(super) next_serial: u32,
}

impl<H: Hal> QueueState<H> {
    pub(super) fn new(rq: RequestQueue<H>) -> Self {
        let size = rq.slot_count();
        Self {
            rq,
            own_buffers: BufferTable::new(),
            own_finished: VecDeque::with_capacity(size),
            deferred: VecDeque::with_capacity(size),
            next_serial: 1,
        }
    }

    /// The buffer table the loans of a request from `origin` name.
    pub(super) fn table<'a>(
        &'a mut self,
        origin: Origin,
        device: &'a mut BufferTable<H>,
    ) -> (&'a mut RequestQueue<H>, &'a mut BufferTable<H>) {
        match origin {
            Origin::Device => (&mut self.rq, device),
            Origin::Queue => (&mut self.rq, &mut self.own_buffers),
        }
    }
}
