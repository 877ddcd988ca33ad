//! The receive queue (virtio 1.2 §5.1.6.3 "Setting Up Receive Buffers",
//! §5.1.6.4 "Processing of Incoming Packets").
//!
//! The device can only deliver a packet into a buffer the driver made
//! available beforehand, so the driver keeps the queue *full*: every buffer
//! of its [`BufferPool`] is posted at bring-up, and each one goes back to the
//! device as soon as the packet in it has been read ([`RxPacket`]'s `Drop`).
//! Nothing is allocated per packet.
//!
//! ## One buffer or several (MRG_RXBUF)
//!
//! Without VIRTIO_NET_F_MRG_RXBUF every buffer is big enough for a whole
//! packet (§5.1.6.3.1: at least 1526 bytes, or the MTU plus headers), and the
//! device puts one packet in one buffer: header, then the frame.
//!
//! With it, a packet may fill several buffers. The header's `num_buffers`
//! says how many; they are the next used-ring entries, in order:
//!
//! ```text
//!  used ring:  {id 7, len 1536}        {id 8, len 1536}    {id 9, len 440}
//!  buffer 7:   [hdr num_buffers=3][frame bytes 0..1524]
//!  buffer 8:   [frame bytes 1524..3060]
//!  buffer 9:   [frame bytes 3060..3500]
//! ```
//!
//! A packet in one buffer is handed out *in place* (a slice of the DMA
//! buffer, no copy); a packet in several is assembled into one preallocated
//! scratch buffer, because a network stack wants one contiguous frame.
//!
//! ## The device is not trusted
//!
//! Every length and `num_buffers` comes from device-writable memory and is
//! checked before use. A used length longer than the buffer (the ring
//! itself catches it), shorter than the header, a `num_buffers` of 0 or
//! more than the queue holds, a segmentation type the driver never
//! negotiated, a frame shorter than an Ethernet header, or a frame (in one
//! buffer or merged) longer than the MTU allows: each drops the packet, counts it in
//! [`RxStats`], and puts every buffer involved back in the queue. None of
//! them panics or loses a buffer.
//!
//! ## The header's position (legacy)
//!
//! Modern devices, and legacy ones that accept VIRTIO_F_ANY_LAYOUT, take
//! the header and the frame in one descriptor. A legacy device without
//! ANY_LAYOUT wants the header in a descriptor of its own (§5.1.6.6
//! "Legacy Interface"); the driver then describes each buffer as two
//! segments of the same memory, `[header][frame]`, so the rest of the code
//! is the same.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use hal::Hal;
use log::{log_enabled, trace, warn, Level};

use crate::queue::{QueueCounters, QueueError, Ring, Segment, Token, Used, Virtqueue};
use crate::transport::Location;

use super::buffers::{BufferPool, FreeList, NO_BUFFER};
use super::header::{RxHeader, GSO_NONE};
use super::{NetError, ETH_HEADER_LEN};

/// Dropped packets are logged as warnings up to this many, then at debug
/// level only: a misbehaving device must not flood the (slow) serial log.
const LOUD_DROPS: u64 = 8;

/// Receive counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxStats {
    /// Packets handed to the caller.
    pub packets: u64,
    /// Frame bytes in them (headers not counted).
    pub bytes: u64,
    /// Of the packets, how many spanned more than one buffer.
    pub merged: u64,
    /// Buffers made available to the device (initial fill and reposts).
    pub buffers_posted: u64,
    /// Used entries taken from the ring (one per buffer the device filled).
    pub buffers_used: u64,
    /// Dropped: a used length shorter than the header or longer than the buffer.
    pub dropped_bad_length: u64,
    /// Dropped: `num_buffers` 0, or more buffers than the queue holds.
    pub dropped_bad_num_buffers: u64,
    /// Dropped: a header with a segmentation type that was not negotiated.
    pub dropped_bad_header: u64,
    /// Dropped: a frame shorter than an Ethernet header.
    pub dropped_runt: u64,
    /// Dropped: a frame longer than the MTU allows (MTU + Ethernet header +
    /// VLAN tag), in one buffer or merged from several.
    pub dropped_too_long: u64,
    /// Used entries the ring rejected (bad id), and merged packets cut short by one.
    pub device_errors: u64,
}

impl RxStats {
    /// All packets dropped, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_bad_length
            + self.dropped_bad_num_buffers
            + self.dropped_bad_header
            + self.dropped_runt
            + self.dropped_too_long
    }
}

/// How the receive queue is set up (decided by `NetDevice` from the
/// negotiated features).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RxLayout {
    /// 10 or 12 (see `header::header_len`).
    pub header_len: usize,
    /// MRG_RXBUF was negotiated: honour `num_buffers`.
    pub mergeable: bool,
    /// Legacy without ANY_LAYOUT: the header gets its own descriptor.
    pub split_header: bool,
    /// Bytes per buffer, header included.
    pub buffer_len: usize,
    /// The longest frame accepted, in one buffer or merged from several:
    /// the MTU plus the Ethernet header and a VLAN tag (§5.1.4.2: with
    /// VIRTIO_NET_F_MTU the device must not deliver more). A buffer may be
    /// larger (without MRG_RXBUF it is at least 1526 bytes whatever the MTU).
    pub max_frame: usize,
}

/// A merged packet being collected, buffer by buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Assembly {
    /// `num_buffers` from the first buffer's header.
    expected: u16,
    /// Buffers collected so far (the first one included).
    received: u16,
    /// The frame no longer fits the scratch buffer: drop it once complete.
    overflow: bool,
}

/// What one used entry turned out to be.
enum Step {
    /// A complete packet: hand it out.
    Packet(Source),
    /// Consumed (a dropped packet, or part of a merged one): look at the next entry.
    Continue,
}

/// Where a packet's frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// In place, in one receive buffer (which goes back to the device when
    /// the packet is dropped).
    Buffer { id: u16, offset: usize, len: usize },
    /// In the scratch buffer (merged); its buffers were reposted already.
    Scratch { len: usize, buffers: u16 },
}

/// The receive queue: ring, buffers, and the packet being assembled.
pub struct RxQueue<H: Hal> {
    ring: Virtqueue<H>,
    pool: BufferPool<H>,
    layout: RxLayout,
    /// Which buffer each in-flight token carries (indexed by `Token::index`).
    by_token: Vec<u16>,
    /// Buffers held by the driver and not posted (normally empty).
    free: FreeList,
    assembly: Option<Assembly>,
    /// Where merged packets are assembled; capacity reserved once.
    scratch: Vec<u8>,
    /// A packet found by [`RxQueue::has_packet`] and not yet handed out.
    ready: Option<Source>,
    stats: RxStats,
    location: Location,
}

impl<H: Hal> RxQueue<H> {
    /// Wraps a set-up ring with a pool of `buffers` buffers. Nothing is
    /// posted yet: call [`RxQueue::refill`].
    pub(crate) fn new(
        ring: Virtqueue<H>,
        buffers: u16,
        layout: RxLayout,
        location: Location,
    ) -> Result<Self, NetError> {
        let pool =
            BufferPool::new(location.dma_owner(), buffers, layout.buffer_len).map_err(|e| {
                NetError::Queue {
                    queue: ring.index(),
                    error: QueueError::Dma(e),
                }
            })?;
        let scratch = if layout.mergeable {
            Vec::with_capacity(layout.max_frame)
        } else {
            Vec::new()
        };
        Ok(Self {
            by_token: vec![NO_BUFFER; ring.size() as usize],
            ring,
            pool,
            layout,
            free: FreeList::full(buffers),
            assembly: None,
            scratch,
            ready: None,
            stats: RxStats::default(),
            location,
        })
    }

    /// Posts every buffer the driver holds, as far as the ring has room.
    /// Returns how many were posted. The device sees them after the next
    /// publish (`NetDevice::flush`).
    pub fn refill(&mut self) -> usize {
        let mut posted = 0;
        while let Some(id) = self.free.take() {
            if !self.post(id) {
                break;
            }
            posted += 1;
        }
        posted
    }

    /// Makes buffer `id` available (added, not yet published). On failure
    /// (the ring is full or broken) the buffer goes to the free list, to be
    /// posted by the next [`RxQueue::refill`].
    fn post(&mut self, id: u16) -> bool {
        let len = self.layout.buffer_len;
        let header = self.layout.header_len;
        let Some(start) = self.pool.lend(id) else {
            // Out of range or already lent: the queues never do that.
            log::debug!("{}: rx: buffer {id} cannot be lent", self.location);
            return false;
        };
        let frame = start + header as u64;
        let whole = [Segment::writable(start, len as u32)];
        let split = [
            Segment::writable(start, header as u32),
            Segment::writable(frame, (len - header) as u32),
        ];
        let segments: &[Segment] = if self.layout.split_header {
            &split
        } else {
            &whole
        };
        match self.ring.add(segments) {
            Ok(token) => {
                self.by_token[token.index()] = id;
                self.stats.buffers_posted += 1;
                true
            }
            Err(_) => {
                // Never reached the device: take it straight back.
                self.pool.reclaim(id);
                self.free.put(id);
                false
            }
        }
    }

    /// The next packet, if the device has delivered one.
    ///
    /// Used entries that do not make a good packet are dropped (counted in
    /// [`RxQueue::stats`], their buffers reposted) and the search goes on,
    /// so `Ok(None)` means: nothing (more) to receive now. A merged packet
    /// whose later buffers have not arrived yet is kept and finished by a
    /// later call.
    ///
    /// The packet's buffer goes back to the queue when the [`RxPacket`] is
    /// dropped; the device sees it after the next `NetDevice::flush`.
    ///
    /// `Err` only for a broken ring (`NetError::Queue` with an index error):
    /// the device must be reset (`NetDevice::recover`).
    pub fn receive(&mut self) -> Result<Option<RxPacket<'_, H>>, NetError> {
        let source = match self.ready.take() {
            Some(source) => source,
            None => match self.next_packet()? {
                Some(source) => source,
                None => return Ok(None),
            },
        };
        Ok(Some(RxPacket {
            queue: self,
            source,
        }))
    }

    /// `true` if [`RxQueue::receive`] has a packet to hand out now. The
    /// packet found is kept for it (a caller looking at several queues, one
    /// per pair, asks each before borrowing one for the packet).
    ///
    /// `Err` only for a broken ring, as for `receive`.
    pub fn has_packet(&mut self) -> Result<bool, NetError> {
        if self.ready.is_none() {
            self.ready = self.next_packet()?;
        }
        Ok(self.ready.is_some())
    }

    /// The next good packet's place (see [`RxQueue::receive`]).
    fn next_packet(&mut self) -> Result<Option<Source>, NetError> {
        loop {
            let used = match self.ring.pop_used() {
                Ok(Some(used)) => used,
                Ok(None) => return Ok(None),
                Err(error) => {
                    self.used_error(error)?;
                    continue;
                }
            };
            self.stats.buffers_used += 1;
            let Some(id) = self.take_buffer(used.token) else {
                continue;
            };
            match self.accept(id, used) {
                Step::Continue => continue,
                Step::Packet(source) => {
                    let (len, buffers) = match source {
                        Source::Buffer { len, .. } => (len, 1),
                        Source::Scratch { len, buffers } => (len, buffers),
                    };
                    self.stats.packets += 1;
                    self.stats.bytes += len as u64;
                    if buffers > 1 {
                        self.stats.merged += 1;
                    }
                    if log_enabled!(Level::Trace) {
                        trace!(
                            "{}: rx: packet of {} bytes in {} buffer(s){}",
                            self.location,
                            len,
                            buffers,
                            if buffers > 1 {
                                ", assembled"
                            } else {
                                ", in place"
                            }
                        );
                    }
                    return Ok(Some(source));
                }
            }
        }
    }

    /// Handles an error from `pop_used`: a rejected entry is counted (and
    /// its buffer reposted if the ring could name it); a broken ring is
    /// returned.
    fn used_error(&mut self, error: QueueError) -> Result<(), NetError> {
        if self.ring.is_broken() {
            return Err(NetError::Queue {
                queue: self.ring.index(),
                error,
            });
        }
        self.abandon_assembly("a rejected used entry");
        match error {
            QueueError::UsedLengthTooLong { token, len, max } => {
                self.stats.dropped_bad_length += 1;
                if self.stats.dropped() <= LOUD_DROPS {
                    warn!(
                        "{}: rx: device claims {len} bytes in a {max}-byte buffer; packet dropped",
                        self.location
                    );
                }
                if let Some(id) = self.take_buffer(token) {
                    self.repost(id);
                }
            }
            _ => self.stats.device_errors += 1,
        }
        Ok(())
    }

    /// The buffer that `token` carried (and forget the mapping).
    fn take_buffer(&mut self, token: Token) -> Option<u16> {
        let slot = self.by_token.get_mut(token.index())?;
        let id = core::mem::replace(slot, NO_BUFFER);
        if id == NO_BUFFER {
            // The ring only returns tokens it handed out, and each got a buffer.
            self.stats.device_errors += 1;
            warn!(
                "{}: rx: token {token} carries no buffer; ignored",
                self.location
            );
            return None;
        }
        if !self.pool.reclaim(id) {
            // The map only holds ids of lent buffers.
            self.stats.device_errors += 1;
            warn!(
                "{}: rx: token {token}: buffer {id} was not lent; ignored",
                self.location
            );
            return None;
        }
        Some(id)
    }

    /// Interprets one used buffer: the start of a packet, or the next part
    /// of the one being assembled.
    fn accept(&mut self, id: u16, used: Used) -> Step {
        let len = used.len as usize;
        if let Some(assembly) = self.assembly {
            return self.continue_assembly(id, len, assembly);
        }
        let header_len = self.layout.header_len;
        if len < header_len {
            return self.drop_packet(id, DropReason::BadLength(len));
        }
        // `take_buffer` reclaimed it: the pool hands out held buffers only.
        let header = self
            .pool
            .bytes(id, 0, header_len)
            .and_then(|bytes| RxHeader::parse(bytes, header_len));
        let Some(header) = header else {
            return self.drop_packet(id, DropReason::BadLength(len));
        };
        if header.gso_type != GSO_NONE {
            return self.drop_packet(id, DropReason::BadHeader(header.gso_type));
        }
        let buffers = if self.layout.mergeable {
            header.num_buffers.unwrap_or(1)
        } else {
            1
        };
        if buffers == 0 || buffers > self.pool.count() {
            return self.drop_packet(id, DropReason::BadNumBuffers(buffers));
        }
        let frame_len = len - header_len;
        if buffers == 1 {
            if frame_len < ETH_HEADER_LEN {
                return self.drop_packet(id, DropReason::Runt(frame_len));
            }
            if frame_len > self.layout.max_frame {
                return self.drop_packet(id, DropReason::TooLong(frame_len));
            }
            return Step::Packet(Source::Buffer {
                id,
                offset: header_len,
                len: frame_len,
            });
        }
        // The first of several buffers: start assembling.
        self.scratch.clear();
        let mut assembly = Assembly {
            expected: buffers,
            received: 1,
            overflow: false,
        };
        self.append(id, header_len, frame_len, &mut assembly);
        self.repost(id);
        if log_enabled!(Level::Trace) {
            trace!(
                "{}: rx: buffer {id}: {frame_len} frame bytes, first of {buffers} (num_buffers)",
                self.location
            );
        }
        self.assembly = Some(assembly);
        Step::Continue
    }

    /// Adds buffer `id` (`len` bytes, all frame data) to the packet being assembled.
    fn continue_assembly(&mut self, id: u16, len: usize, mut assembly: Assembly) -> Step {
        self.append(id, 0, len, &mut assembly);
        self.repost(id);
        assembly.received += 1;
        if log_enabled!(Level::Trace) {
            trace!(
                "{}: rx: buffer {id}: {len} more frame bytes, {} of {}",
                self.location,
                assembly.received,
                assembly.expected
            );
        }
        if assembly.received < assembly.expected {
            self.assembly = Some(assembly);
            return Step::Continue;
        }
        self.assembly = None;
        let total = self.scratch.len();
        if assembly.overflow {
            self.stats.dropped_too_long += 1;
            warn!(
                "{}: rx: merged packet of {} buffers longer than {} bytes; dropped",
                self.location, assembly.expected, self.layout.max_frame
            );
            return Step::Continue;
        }
        if total < ETH_HEADER_LEN {
            self.stats.dropped_runt += 1;
            return Step::Continue;
        }
        Step::Packet(Source::Scratch {
            len: total,
            buffers: assembly.expected,
        })
    }

    /// Copies `len` bytes at `offset` of buffer `id` to the end of the
    /// scratch buffer, unless that would outgrow it (then marks the overflow).
    fn append(&mut self, id: u16, offset: usize, len: usize, assembly: &mut Assembly) {
        if assembly.overflow {
            return;
        }
        if self.scratch.len() + len > self.layout.max_frame {
            assembly.overflow = true;
            return;
        }
        // Held (reclaimed by `take_buffer`) until `repost` after this copy.
        match self.pool.bytes(id, offset, len) {
            // Never reallocates: the capacity was reserved and the length is checked.
            Some(bytes) => self.scratch.extend_from_slice(bytes),
            None => assembly.overflow = true,
        }
    }

    /// Drops the packet that starts in buffer `id`, counts why, reposts the buffer.
    fn drop_packet(&mut self, id: u16, why: DropReason) -> Step {
        match why {
            DropReason::BadLength(_) => self.stats.dropped_bad_length += 1,
            DropReason::BadNumBuffers(_) => self.stats.dropped_bad_num_buffers += 1,
            DropReason::BadHeader(_) => self.stats.dropped_bad_header += 1,
            DropReason::Runt(_) => self.stats.dropped_runt += 1,
            DropReason::TooLong(_) => self.stats.dropped_too_long += 1,
        }
        if self.stats.dropped() <= LOUD_DROPS {
            warn!("{}: rx: buffer {id}: {why}; packet dropped", self.location);
        } else {
            log::debug!("{}: rx: buffer {id}: {why}; packet dropped", self.location);
        }
        self.repost(id);
        Step::Continue
    }

    /// A merged packet cannot be finished (an entry was rejected): drop what
    /// was collected (its buffers are already back in the queue).
    fn abandon_assembly(&mut self, why: &str) {
        if let Some(a) = self.assembly.take() {
            self.stats.device_errors += 1;
            warn!(
                "{}: rx: merged packet abandoned after {} of {} buffers: {why}",
                self.location, a.received, a.expected
            );
        }
    }

    /// Puts a buffer straight back into the ring.
    fn repost(&mut self, id: u16) {
        if !self.post(id) {
            // Only possible with a broken ring; the buffer waits on the free list.
            log::debug!(
                "{}: rx: buffer {id} could not be reposted yet",
                self.location
            );
        }
    }

    /// Drops any packet in progress and takes every buffer back, after the
    /// device was reset. Buffers are reposted by the next [`RxQueue::refill`].
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
        // A packet found but not handed out: its buffer is the driver's.
        if let Some(Source::Buffer { id, .. }) = self.ready.take() {
            self.free.put(id);
        }
        // A reset device holds no buffers (§2.4).
        self.pool.reclaim_all();
        self.assembly = None;
        self.scratch.clear();
    }

    /// The ring (for publishing, interrupts and addresses).
    pub(crate) fn ring_mut(&mut self) -> &mut Virtqueue<H> {
        &mut self.ring
    }

    /// The ring's addresses (to program them again after a reset).
    pub(crate) fn ring(&self) -> &Virtqueue<H> {
        &self.ring
    }

    /// Counters.
    pub fn stats(&self) -> RxStats {
        self.stats
    }

    /// The ring's own counters (notifications, completions, ...).
    pub fn ring_counters(&self) -> QueueCounters {
        self.ring.counters()
    }

    /// Descriptors in the ring.
    pub fn size(&self) -> u16 {
        self.ring.size()
    }

    /// Buffers in the pool.
    pub fn buffer_count(&self) -> u16 {
        self.pool.count()
    }

    /// Bytes per buffer, header included.
    pub fn buffer_len(&self) -> usize {
        self.layout.buffer_len
    }

    /// Buffers the device holds right now (posted, not yet used).
    pub fn buffers_posted(&self) -> u16 {
        self.ring.in_flight()
    }

    /// Buffers held by the driver and waiting to be posted.
    pub fn buffers_free(&self) -> usize {
        self.free.len()
    }

    /// `true` while a merged packet is partly received.
    pub fn assembling(&self) -> bool {
        self.assembly.is_some()
    }

    /// Reposted buffers not yet published to the device.
    pub fn unpublished(&self) -> u16 {
        self.ring.unpublished()
    }

    /// Asks for an interrupt when packets arrive. Returns `true` if some
    /// already did (receive them before sleeping), or one found by
    /// [`RxQueue::has_packet`] is waiting.
    pub fn enable_interrupts(&mut self) -> bool {
        self.ring.enable_interrupts() || self.ready.is_some()
    }

    /// Asks the device not to interrupt for received packets (polling).
    pub fn disable_interrupts(&mut self) {
        self.ring.disable_interrupts();
    }

    /// Frame bytes of a packet's source.
    fn frame(&self, source: Source) -> &[u8] {
        match source {
            // A `Buffer` source is a buffer the device returned (held), not
            // reposted until its `RxPacket` is dropped; the slice borrows
            // the packet, so it ends before that.
            Source::Buffer { id, offset, len } => self.pool.bytes(id, offset, len).unwrap_or(&[]),
            Source::Scratch { len, .. } => self.scratch.get(..len).unwrap_or(&[]),
        }
    }
}

impl<H: Hal> fmt::Debug for RxQueue<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RxQueue")
            .field("ring", &self.ring)
            .field("pool", &self.pool)
            .field("layout", &self.layout)
            .field("free", &self.free.len())
            .field("assembly", &self.assembly)
            .field("stats", &self.stats)
            .finish()
    }
}

/// Why a packet was dropped (for the counters and the warning).
#[derive(Debug, Clone, Copy)]
enum DropReason {
    BadLength(usize),
    BadNumBuffers(u16),
    BadHeader(u8),
    Runt(usize),
    TooLong(usize),
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DropReason::BadLength(len) => write!(f, "used length {len} is shorter than the header"),
            DropReason::BadNumBuffers(n) => write!(f, "num_buffers {n} is impossible"),
            DropReason::BadHeader(gso) => write!(f, "gso_type {gso} was never negotiated"),
            DropReason::Runt(len) => {
                write!(f, "{len}-byte frame is shorter than an Ethernet header")
            }
            DropReason::TooLong(len) => {
                write!(f, "{len}-byte frame is longer than the MTU allows")
            }
        }
    }
}

/// One received packet: its Ethernet frame ([`RxPacket::data`]), without
/// the virtio-net header. Dropping it gives its buffer back to the device.
pub struct RxPacket<'a, H: Hal> {
    queue: &'a mut RxQueue<H>,
    source: Source,
}

impl<H: Hal> RxPacket<'_, H> {
    /// The Ethernet frame (destination MAC first).
    pub fn data(&self) -> &[u8] {
        self.queue.frame(self.source)
    }

    /// Frame length in bytes.
    pub fn len(&self) -> usize {
        match self.source {
            Source::Buffer { len, .. } | Source::Scratch { len, .. } => len,
        }
    }

    /// Never true: empty frames are dropped as runts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many receive buffers the packet filled (more than 1 only with MRG_RXBUF).
    pub fn buffers(&self) -> u16 {
        match self.source {
            Source::Buffer { .. } => 1,
            Source::Scratch { buffers, .. } => buffers,
        }
    }

    /// `true` if [`RxPacket::data`] points into the DMA buffer the device
    /// wrote (no copy was made).
    pub fn in_place(&self) -> bool {
        matches!(self.source, Source::Buffer { .. })
    }
}

impl<H: Hal> Drop for RxPacket<'_, H> {
    fn drop(&mut self) {
        if let Source::Buffer { id, .. } = self.source {
            self.queue.repost(id);
        }
    }
}

impl<H: Hal> fmt::Debug for RxPacket<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RxPacket")
            .field("source", &self.source)
            .finish()
    }
}
