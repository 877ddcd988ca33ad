//! The transmit queue (virtio 1.2 §5.1.6.2 "Packet Transmission").
//!
//! To send a frame the driver takes a free buffer from its [`BufferPool`],
//! writes an all-zero header (no checksum or segmentation offload) and the
//! frame behind it, and adds the buffer to the ring as one device-readable
//! chain. The caller writes the frame *directly into the DMA buffer*
//! ([`TxQueue::reserve`] and [`TxSlot`], or [`TxQueue::send_with`]), so a
//! network stack that builds its packets in place costs no copy at all.
//!
//! ## Batching
//!
//! `send_with` only *adds* the chain; the device sees it at the next
//! publish (`NetDevice::flush`), which stores `avail.idx` once and sends at
//! most one notification for everything added since the previous one
//! (§2.7.13.3 "Updating idx"; §2.7.10 decides whether the notification is
//! needed). A burst of 32 frames therefore costs one register write, or
//! none if the device is still busy with the previous burst.
//!
//! ## Reclaiming without blocking
//!
//! The device returns each chain through the used ring when it has read
//! it. The driver takes those entries back ([`TxQueue::reclaim`]) whenever
//! it needs a buffer or ring room, never waiting: if nothing is free the
//! sender hears [`NetError::TxQueueFull`] at once, and retries later.
//! Transmit interrupts are not needed for this, so the driver normally
//! leaves them off.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use hal::Hal;
use log::{log_enabled, trace, warn, Level};

use crate::queue::{QueueCounters, QueueError, Ring, Segment, Token, Virtqueue};
use crate::transport::Location;

use super::buffers::{BufferPool, FreeList, NO_BUFFER};
use super::NetError;

/// Transmit counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Frames added to the ring.
    pub packets: u64,
    /// Frame bytes in them (headers not counted).
    pub bytes: u64,
    /// Buffers the device gave back.
    pub reclaimed: u64,
    /// Sends refused because no buffer or ring room was free.
    pub full: u64,
    /// Sends refused because the frame was empty or longer than the MTU allows.
    pub too_long: u64,
    /// Used entries with a non-zero length (the device writes nothing into
    /// a transmit buffer) or that the ring rejected.
    pub device_errors: u64,
}

/// How the transmit queue is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TxLayout {
    /// 10 or 12.
    pub header_len: usize,
    /// Legacy without ANY_LAYOUT: the header gets its own descriptor.
    pub split_header: bool,
    /// The longest frame (Ethernet header included) that may be sent.
    pub max_frame: usize,
}

/// The transmit queue: ring and buffers.
pub struct TxQueue<H: Hal> {
    ring: Virtqueue<H>,
    pool: BufferPool<H>,
    layout: TxLayout,
    /// Which buffer each in-flight token carries.
    by_token: Vec<u16>,
    free: FreeList,
    stats: TxStats,
    location: Location,
}

impl<H: Hal> TxQueue<H> {
    /// Wraps a set-up ring with `buffers` transmit buffers.
    pub(crate) fn new(
        ring: Virtqueue<H>,
        buffers: u16,
        layout: TxLayout,
        location: Location,
    ) -> Result<Self, NetError> {
        let pool = BufferPool::new(
            location.dma_owner(),
            buffers,
            layout.header_len + layout.max_frame,
        )
        .map_err(|e| NetError::Queue {
            queue: ring.index(),
            error: QueueError::Dma(e),
        })?;
        Ok(Self {
            by_token: vec![NO_BUFFER; ring.size() as usize],
            ring,
            pool,
            layout,
            free: FreeList::full(buffers),
            stats: TxStats::default(),
            location,
        })
    }

    /// Ring descriptors one frame needs.
    fn descriptors_per_frame(&self) -> u16 {
        if self.layout.split_header && self.ring.indirect_capacity() < 2 {
            2
        } else {
            1
        }
    }

    /// Takes back every buffer the device has finished with, without
    /// waiting. Returns how many.
    ///
    /// `Err` only for a broken ring (the device must be reset).
    pub fn reclaim(&mut self) -> Result<usize, NetError> {
        let mut reclaimed = 0;
        loop {
            let token = match self.ring.pop_used() {
                Ok(Some(used)) => {
                    if used.len != 0 {
                        // Not fatal: the chain has no writable part, so the
                        // length is meaningless; but a correct device says 0.
                        self.stats.device_errors += 1;
                    }
                    used.token
                }
                Ok(None) => break,
                Err(QueueError::UsedLengthTooLong { token, .. }) => {
                    self.stats.device_errors += 1;
                    token
                }
                Err(error) if self.ring.is_broken() => {
                    return Err(NetError::Queue {
                        queue: self.ring.index(),
                        error,
                    })
                }
                Err(_) => {
                    self.stats.device_errors += 1;
                    continue;
                }
            };
            if self.release(token) {
                reclaimed += 1;
            }
        }
        self.stats.reclaimed += reclaimed as u64;
        if reclaimed > 0 && log_enabled!(Level::Trace) {
            trace!(
                "{}: tx: reclaimed {reclaimed} buffer(s), {} free, {} in flight",
                self.location,
                self.free.len(),
                self.ring.in_flight()
            );
        }
        Ok(reclaimed)
    }

    fn release(&mut self, token: Token) -> bool {
        let Some(slot) = self.by_token.get_mut(token.index()) else {
            return false;
        };
        let id = core::mem::replace(slot, NO_BUFFER);
        if id == NO_BUFFER {
            self.stats.device_errors += 1;
            warn!(
                "{}: tx: token {token} carries no buffer; ignored",
                self.location
            );
            return false;
        }
        if !self.pool.reclaim(id) {
            // The map only holds ids of lent buffers.
            self.stats.device_errors += 1;
            warn!(
                "{}: tx: token {token}: buffer {id} was not lent; ignored",
                self.location
            );
            return false;
        }
        self.free.put(id);
        true
    }

    /// `true` if a frame can be sent now (reclaiming first if needed).
    pub fn can_send(&mut self) -> bool {
        self.has_room() || (self.reclaim().is_ok() && self.has_room())
    }

    fn has_room(&self) -> bool {
        !self.free.is_empty()
            && !self.ring.is_broken()
            && self.ring.free_descriptors() >= self.descriptors_per_frame()
    }

    /// Reserves a transmit buffer for a frame of `len` bytes (Ethernet
    /// header included, no virtio header: the driver adds that). The caller
    /// writes the frame straight into the DMA buffer
    /// ([`TxSlot::buffer`]) and then [`TxSlot::send`]s it; dropping the
    /// slot instead gives the buffer back unsent.
    ///
    /// Errors: [`NetError::TxQueueFull`] at once when no buffer or ring room
    /// is free even after reclaiming (retry after the device caught up),
    /// [`NetError::FrameTooLong`] for an empty frame or one longer than
    /// [`TxQueue::max_frame`].
    pub fn reserve(&mut self, len: usize) -> Result<TxSlot<'_, H>, NetError> {
        if len == 0 || len > self.layout.max_frame {
            self.stats.too_long += 1;
            return Err(NetError::FrameTooLong {
                len,
                max: self.layout.max_frame,
            });
        }
        if !self.can_send() {
            self.stats.full += 1;
            return Err(NetError::TxQueueFull);
        }
        let Some(id) = self.free.take() else {
            self.stats.full += 1;
            return Err(NetError::TxQueueFull);
        };
        Ok(TxSlot {
            queue: self,
            id,
            len,
            sent: false,
        })
    }

    /// Sends a frame of `len` bytes that `fill` writes straight into a DMA
    /// transmit buffer, and returns what `fill` returned (see
    /// [`TxQueue::reserve`]).
    ///
    /// The frame is added to the ring but not published: call
    /// `NetDevice::flush` after a batch. `fill` is only called once a buffer
    /// and ring room are secured, so an error means the frame was not built.
    pub fn send_with<R>(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, NetError> {
        let mut slot = self.reserve(len)?;
        let result = fill(slot.buffer());
        slot.send()?;
        Ok(result)
    }

    /// Adds buffer `id` holding a `len`-byte frame to the ring.
    fn submit(&mut self, id: u16, len: usize) -> Result<(), NetError> {
        match self.post(id, len) {
            Ok(token) => {
                self.by_token[token.index()] = id;
                self.stats.packets += 1;
                self.stats.bytes += len as u64;
                if log_enabled!(Level::Trace) {
                    trace!(
                        "{}: tx: {len}-byte frame in buffer {id} as request {token}",
                        self.location
                    );
                }
                Ok(())
            }
            Err(error) => {
                // Room was checked, so only a ring that broke in between gets here.
                self.free.put(id);
                Err(NetError::Queue {
                    queue: self.ring.index(),
                    error,
                })
            }
        }
    }

    /// Sends a copy of `frame` (see [`TxQueue::send_with`]).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.send_with(frame.len(), |buffer| buffer.copy_from_slice(frame))
    }

    fn post(&mut self, id: u16, len: usize) -> Result<Token, QueueError> {
        let header_len = self.layout.header_len;
        let Some(start) = self.pool.lend(id) else {
            // Out of range or already lent: the queue never does that.
            return Err(QueueError::EmptyRequest);
        };
        let frame = start + header_len as u64;
        let added = if self.layout.split_header {
            self.ring.add(&[
                Segment::readable(start, header_len as u32),
                Segment::readable(frame, len as u32),
            ])
        } else {
            self.ring
                .add(&[Segment::readable(start, (header_len + len) as u32)])
        };
        if added.is_err() {
            // Never reached the device: take it straight back.
            self.pool.reclaim(id);
        }
        added
    }

    /// Takes every buffer back after the device was reset.
    pub(crate) fn reset(&mut self) {
        let by_token = &mut self.by_token;
        let free = &mut self.free;
        self.ring.reset(|token| {
            if let Some(slot) = by_token.get_mut(token.index()) {
                let id = core::mem::replace(slot, NO_BUFFER);
                if id != NO_BUFFER {
                    free.put(id);
                }
            }
        });
        // A reset device holds no buffers (§2.4).
        self.pool.reclaim_all();
    }

    pub(crate) fn ring_mut(&mut self) -> &mut Virtqueue<H> {
        &mut self.ring
    }

    pub(crate) fn ring(&self) -> &Virtqueue<H> {
        &self.ring
    }

    /// Counters.
    pub fn stats(&self) -> TxStats {
        self.stats
    }

    /// The ring's own counters (notifications sent and suppressed, ...).
    pub fn ring_counters(&self) -> QueueCounters {
        self.ring.counters()
    }

    /// Descriptors in the ring.
    pub fn size(&self) -> u16 {
        self.ring.size()
    }

    /// Transmit buffers in the pool.
    pub fn buffer_count(&self) -> u16 {
        self.pool.count()
    }

    /// The longest frame [`TxQueue::send_with`] accepts (Ethernet header included).
    pub fn max_frame(&self) -> usize {
        self.layout.max_frame
    }

    /// Frames the device has not given back yet.
    pub fn in_flight(&self) -> u16 {
        self.ring.in_flight()
    }

    /// Buffers free for sending (without reclaiming).
    pub fn buffers_free(&self) -> usize {
        self.free.len()
    }

    /// Frames added but not yet published.
    pub fn unpublished(&self) -> u16 {
        self.ring.unpublished()
    }

    /// Asks for an interrupt when the device has sent frames.
    pub fn enable_interrupts(&mut self) -> bool {
        self.ring.enable_interrupts()
    }

    /// Asks the device not to interrupt for sent frames (the default use:
    /// buffers are reclaimed when needed).
    pub fn disable_interrupts(&mut self) {
        self.ring.disable_interrupts();
    }
}

/// A transmit buffer reserved for one frame ([`TxQueue::reserve`]).
pub struct TxSlot<'a, H: Hal> {
    queue: &'a mut TxQueue<H>,
    id: u16,
    len: usize,
    sent: bool,
}

impl<H: Hal> TxSlot<'_, H> {
    /// The frame's bytes, to be written in place (`len` bytes, Ethernet
    /// header first). Whatever was there before is garbage.
    pub fn buffer(&mut self) -> &mut [u8] {
        let header_len = self.queue.layout.header_len;
        // The buffer came off the free list, so it is held, not lent; it is
        // lent only by `send`, which consumes the slot (ending this borrow).
        match self.queue.pool.bytes_mut(self.id, header_len, self.len) {
            Some(bytes) => bytes,
            // `reserve` checked `len` against the buffer size.
            None => &mut [],
        }
    }

    /// Writes the (all-zero) virtio-net header and adds the frame to the ring.
    pub fn send(mut self) -> Result<(), NetError> {
        self.sent = true;
        let header_len = self.queue.layout.header_len;
        // Held until `submit` lends it below.
        if let Some(header) = self.queue.pool.bytes_mut(self.id, 0, header_len) {
            // No offloads: flags 0, GSO_NONE, num_buffers 0 (§5.1.6.2).
            header.fill(0);
        }
        self.queue.submit(self.id, self.len)
    }
}

impl<H: Hal> Drop for TxSlot<'_, H> {
    fn drop(&mut self) {
        if !self.sent {
            self.queue.free.put(self.id);
        }
    }
}

impl<H: Hal> fmt::Debug for TxSlot<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxSlot")
            .field("buffer", &self.id)
            .field("len", &self.len)
            .finish()
    }
}

impl<H: Hal> fmt::Debug for TxQueue<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxQueue")
            .field("ring", &self.ring)
            .field("pool", &self.pool)
            .field("layout", &self.layout)
            .field("free", &self.free.len())
            .field("stats", &self.stats)
            .finish()
    }
}
