//! A virtio-blk device model (virtio 1.2 §5.2) with a RAM disk, for testing
//! `drivers::blk` on the host.
//!
//! The device side of each request queue is [`crate::vq_model::VqModel`]
//! (rust-vmm's `virtio-queue`, an implementation independent of the
//! driver's), so the model reads exactly the chains a device would. On top
//! of it [`BlkModel`] does what a block device does: parses the 16-byte
//! header, reads or writes the RAM disk, writes the status byte, and puts
//! the chain in the used ring with the length a correct device reports
//! (every writable byte: data + status, as QEMU does).
//!
//! It also *checks* the driver (every rule of §5.2.6.1 a model can see:
//! header and status in their own descriptors, data a multiple of 512,
//! inside the disk, no more than `seg_max` data segments, none longer than
//! `size_max`, no write to a read-only disk, no flush without FLUSH) and
//! records each violation in [`BlkModel::violations`]; tests assert it is
//! empty. Every request it sees is recorded in [`BlkModel::seen`] with the
//! shape of its chain, so tests can assert how the driver split work.
//!
//! Knobs make it misbehave: answer with a forced status, lie about the used
//! length, never write the status, hold requests and complete them later in
//! any order, or stall completely.
//!
//! Two ways to attach it to the driver:
//!
//! - [`ModelTransport`]: a [`Transport`] implemented directly on the model,
//!   recording status writes, features, queue setups and notifications (any
//!   [`TransportKind`], so both ring layouts and the legacy sequence can be
//!   tested without registers);
//! - through the register-level models of [`crate::models::virtio`]: build
//!   a [`VirtioCore`](crate::models::virtio::VirtioCore) from
//!   [`BlkModelConfig::config_bytes`], then let [`BlkModel::sync_with_core`]
//!   pick up the queues the driver programmed and the notifications it
//!   wrote, before each [`BlkModel::step`].

use std::cell::RefCell;
use std::rc::Rc;

use drivers::blk::feature;
use drivers::features;
use drivers::queue::{QueueAddresses, RingLayout};
use drivers::transport::{
    ConfigConsistency, DeviceStatus, DeviceType, FieldWidth, InterruptStatus, Location, Transport,
    TransportError, TransportKind,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::models::virtio::VirtioCore;
use crate::vq_model::{device_memory, Chain, Rng, VqModel};

/// Request types (§5.2.6).
pub mod req {
    /// VIRTIO_BLK_T_IN.
    pub const IN: u32 = 0;
    /// VIRTIO_BLK_T_OUT.
    pub const OUT: u32 = 1;
    /// VIRTIO_BLK_T_FLUSH.
    pub const FLUSH: u32 = 4;
    /// VIRTIO_BLK_T_GET_ID.
    pub const GET_ID: u32 = 8;
    /// VIRTIO_BLK_T_DISCARD.
    pub const DISCARD: u32 = 11;
    /// VIRTIO_BLK_T_WRITE_ZEROES.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status values (§5.2.6).
pub mod status {
    /// VIRTIO_BLK_S_OK.
    pub const OK: u8 = 0;
    /// VIRTIO_BLK_S_IOERR.
    pub const IOERR: u8 = 1;
    /// VIRTIO_BLK_S_UNSUPP.
    pub const UNSUPP: u8 = 2;
}

const SECTOR: usize = 512;
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// What the device offers and how its configuration space reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkModelConfig {
    /// Offered feature bits (device-specific, ring and VERSION_1).
    pub features: u64,
    /// Disk size in sectors (the RAM disk is this big).
    pub capacity_sectors: u64,
    /// `size_max` (meaningful with SIZE_MAX).
    pub size_max: u32,
    /// `seg_max` (meaningful with SEG_MAX).
    pub seg_max: u32,
    /// `blk_size`.
    pub blk_size: u32,
    /// `physical_block_exp`, `alignment_offset`, `min_io_size`, `opt_io_size`.
    pub topology: (u8, u8, u16, u32),
    /// `writeback`.
    pub writeback: u8,
    /// `num_queues` (meaningful with MQ; the model has this many queues either way).
    pub num_queues: u16,
    /// QueueNumMax of every queue.
    pub queue_max: u16,
    /// `max_discard_sectors`, `max_discard_seg`, `discard_sector_alignment`.
    pub discard: (u32, u32, u32),
    /// `max_write_zeroes_sectors`, `max_write_zeroes_seg`, `write_zeroes_may_unmap`.
    pub write_zeroes: (u32, u32, u8),
    /// The GET_ID answer.
    pub serial: [u8; 20],
}

/// Every virtio-blk feature the driver supports, plus a few it does not
/// (GEOMETRY, LIFETIME, SECURE_ERASE), the ring features and VERSION_1.
pub const OFFER_EVERYTHING: u64 = drivers::blk::SUPPORTED_FEATURES
    | feature::GEOMETRY
    | (1 << 15)
    | (1 << 16)
    | features::RING_INDIRECT_DESC
    | features::RING_EVENT_IDX
    | features::VERSION_1;

impl Default for BlkModelConfig {
    /// A 1 MiB disk offering everything except SIZE_MAX, RO and MQ, with
    /// QEMU's idea of `seg_max` (queue size - 2).
    fn default() -> Self {
        Self {
            features: OFFER_EVERYTHING & !(feature::SIZE_MAX | feature::RO | feature::MQ),
            capacity_sectors: 2048,
            size_max: 0,
            seg_max: 62,
            blk_size: 512,
            topology: (0, 0, 1, 0),
            writeback: 1,
            num_queues: 1,
            queue_max: 64,
            discard: (4096, 1, 1),
            write_zeroes: (4096, 1, 1),
            serial: *b"model-disk\0\0\0\0\0\0\0\0\0\0",
        }
    }
}

impl BlkModelConfig {
    /// The configuration space bytes (§5.2.4), 60 of them.
    pub fn config_bytes(&self) -> Vec<u8> {
        let mut c = vec![0u8; 60];
        c[0..8].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        c[8..12].copy_from_slice(&self.size_max.to_le_bytes());
        c[12..16].copy_from_slice(&self.seg_max.to_le_bytes());
        c[16..18].copy_from_slice(&1024u16.to_le_bytes()); // geometry: cylinders
        c[18] = 16; // heads
        c[19] = 63; // sectors per track
        c[20..24].copy_from_slice(&self.blk_size.to_le_bytes());
        c[24] = self.topology.0;
        c[25] = self.topology.1;
        c[26..28].copy_from_slice(&self.topology.2.to_le_bytes());
        c[28..32].copy_from_slice(&self.topology.3.to_le_bytes());
        c[32] = self.writeback;
        c[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        c[36..40].copy_from_slice(&self.discard.0.to_le_bytes());
        c[40..44].copy_from_slice(&self.discard.1.to_le_bytes());
        c[44..48].copy_from_slice(&self.discard.2.to_le_bytes());
        c[48..52].copy_from_slice(&self.write_zeroes.0.to_le_bytes());
        c[52..56].copy_from_slice(&self.write_zeroes.1.to_le_bytes());
        c[56] = self.write_zeroes.2;
        c
    }
}

/// How the model lies about the used length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LenOverride {
    /// Report exactly this length.
    Exactly(u32),
    /// Report the chain's writable total plus this many bytes.
    BeyondWritable(u32),
    /// Report the whole chain, readable bytes included (a legacy device's
    /// habit, virtio 1.2 §5.2.6 legacy interface).
    TotalChain,
    /// Report the data but not the status byte (an under-report, which
    /// §2.7.8 allows: "The device MAY write more than len bytes").
    WithoutStatus,
}

/// One descriptor of a chain as the device read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenSegment {
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

/// One request as the device saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// The queue it arrived on.
    pub queue: u16,
    /// The header's `type`.
    pub request_type: u32,
    /// The header's `sector`.
    pub sector: u64,
    /// The whole chain, header and status included.
    pub segments: Vec<SeenSegment>,
    /// It came through an indirect table.
    pub indirect: bool,
    /// Discard / write-zeroes ranges: (sector, num_sectors, flags).
    pub ranges: Vec<(u64, u32, u32)>,
    /// The status the model answered (before any forced one).
    pub status: u8,
}

impl SeenRequest {
    /// The data segments' lengths: everything between the header and the status.
    pub fn data_segment_lens(&self) -> Vec<u32> {
        if self.segments.len() < 2 {
            return Vec::new();
        }
        self.segments[1..self.segments.len() - 1]
            .iter()
            .map(|s| s.len)
            .collect()
    }

    /// Data bytes.
    pub fn data_len(&self) -> usize {
        self.data_segment_lens().iter().map(|&l| l as usize).sum()
    }
}

struct Held {
    queue: usize,
    chain: Chain,
    data: Vec<u8>,
    status: u8,
}

/// The device. See the module documentation.
pub struct BlkModel {
    /// Offer and configuration.
    pub config: BlkModelConfig,
    /// The RAM disk, `capacity_sectors * 512` bytes.
    pub disk: Vec<u8>,

    /// Device status (for [`ModelTransport`]).
    pub status: u8,
    /// Every status write, in order (a reset is a write of 0).
    pub status_writes: Vec<u8>,
    /// What the driver accepted.
    pub driver_features: u64,
    /// Configuration generation.
    pub generation: u32,
    /// Configuration field reads so far.
    pub config_reads: u32,
    /// After this many more config reads, switch to this configuration.
    pub config_change: Option<(u32, BlkModelConfig)>,
    /// Configuration writes: (offset, value).
    pub config_writes: Vec<(usize, u8)>,
    /// `setup_queue` calls, in order.
    pub queue_setups: Vec<(u16, QueueAddresses)>,
    /// Notifications, by queue, in order.
    pub notifications: Vec<u16>,
    /// Pending interrupt bits (bit 0: used buffers).
    pub isr: u8,

    /// Take requests but complete them only in [`BlkModel::release_held`].
    pub hold: bool,
    /// Do nothing at all (a hung device).
    pub stalled: bool,
    /// Answer every request with this status (and do not touch the disk).
    pub force_status: Option<u8>,
    /// Never write the status byte.
    pub skip_status: bool,
    /// Lie about the used length.
    pub len_override: Option<LenOverride>,
    /// Write only this many bytes of the GET_ID answer and leave the rest
    /// of the buffer alone (a serial shorter than 20 bytes, not padded).
    pub id_bytes: Option<usize>,

    /// Every request taken, in order.
    pub seen: Vec<SeenRequest>,
    /// FLUSH requests served.
    pub flushes: u64,
    /// Steps at which a queue was asleep with work the driver never notified.
    pub missed_notifications: u64,
    /// Rules the driver broke.
    pub violations: Vec<String>,

    queues: Vec<Option<VqModel>>,
    held: Vec<Held>,
}

/// A model shared between the test, its transport and its waits.
pub type SharedBlkModel = Rc<RefCell<BlkModel>>;

impl BlkModel {
    /// A device with a zeroed disk.
    pub fn new(config: BlkModelConfig) -> Self {
        let disk = vec![0u8; config.capacity_sectors as usize * SECTOR];
        let queues = (0..config.num_queues).map(|_| None).collect();
        Self {
            config,
            disk,
            status: 0,
            status_writes: Vec::new(),
            driver_features: 0,
            generation: 0,
            config_reads: 0,
            config_change: None,
            config_writes: Vec::new(),
            queue_setups: Vec::new(),
            notifications: Vec::new(),
            isr: 0,
            hold: false,
            stalled: false,
            force_status: None,
            skip_status: false,
            len_override: None,
            id_bytes: None,
            seen: Vec::new(),
            flushes: 0,
            missed_notifications: 0,
            violations: Vec::new(),
            queues,
            held: Vec::new(),
        }
    }

    /// Grows (or shrinks) the disk to `sectors` at run time, as QEMU's
    /// `block_resize` does: new `capacity`, a new configuration generation
    /// (§4.1.4.3), and a configuration-change interrupt (ISR bit 1, §4.1.4.5).
    /// New sectors read as zeroes.
    pub fn resize(&mut self, sectors: u64) {
        self.config.capacity_sectors = sectors;
        self.disk.resize(sectors as usize * SECTOR, 0);
        self.generation += 1;
        self.isr |= 2;
    }

    /// Sets DEVICE_NEEDS_RESET (§2.1.2) and raises the configuration
    /// interrupt that goes with it.
    pub fn needs_reset(&mut self) {
        self.status |= 0x40;
        self.isr |= 2;
    }

    /// Wraps the model for sharing.
    pub fn shared(self) -> SharedBlkModel {
        Rc::new(RefCell::new(self))
    }

    /// Fills the disk with a pattern that differs in every byte of a sector
    /// and between sectors: byte `i` of sector `s` is `(s * 7 + i * 13) as u8 ^ 0x5c`.
    pub fn fill_pattern(&mut self) {
        for (i, byte) in self.disk.iter_mut().enumerate() {
            *byte = pattern_byte(i);
        }
    }

    /// A status write: 0 resets the device.
    pub fn write_status(&mut self, value: u8) {
        self.status_writes.push(value);
        if value == 0 {
            self.reset();
        } else {
            self.status = value;
        }
    }

    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.isr = 0;
        self.held.clear();
        for q in &mut self.queues {
            *q = None;
        }
    }

    fn negotiated(&self, bit: u64) -> bool {
        self.driver_features & bit != 0
    }

    /// The driver programmed queue `queue` with `addrs`.
    pub fn attach_queue(&mut self, queue: u16, addrs: QueueAddresses) {
        let event_idx = self.negotiated(features::RING_EVENT_IDX);
        match self.queues.get_mut(queue as usize) {
            Some(slot) => *slot = Some(VqModel::new(addrs, event_idx)),
            None => self
                .violations
                .push(format!("setup of queue {queue}, which does not exist")),
        }
    }

    /// The driver notified queue `queue`.
    pub fn notified(&mut self, queue: u16) {
        self.notifications.push(queue);
        match self.queues.get_mut(queue as usize) {
            Some(Some(vq)) => vq.driver_published(true),
            _ => self
                .violations
                .push(format!("notify of queue {queue}, which is not set up")),
        }
    }

    /// The queues the driver set up.
    pub fn live_queues(&self) -> usize {
        self.queues.iter().filter(|q| q.is_some()).count()
    }

    /// Used-buffer notifications the device sent, per queue.
    pub fn interrupts_sent(&self) -> Vec<u64> {
        self.queues
            .iter()
            .map(|q| q.as_ref().map_or(0, |vq| vq.stats.interrupts_sent))
            .collect()
    }

    /// Requests seen on queue `queue`.
    pub fn seen_on(&self, queue: u16) -> usize {
        self.seen.iter().filter(|r| r.queue == queue).count()
    }

    /// Requests taken but not yet completed (hold mode).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Lets the device run once: every notified queue takes what is
    /// available and serves it (or holds it), interrupts if the driver
    /// wants that, and goes back to sleep.
    pub fn step(&mut self) {
        if self.stalled {
            return;
        }
        for q in 0..self.queues.len() {
            let Some(vq) = self.queues[q].as_mut() else {
                continue;
            };
            if vq.is_asleep() {
                if vq.avail_idx() != vq.next_avail() {
                    self.missed_notifications += 1;
                }
                continue;
            }
            let chains = vq.take_available();
            let mut completed = 0;
            for chain in chains {
                let (data, status) = self.serve(q, &chain);
                if self.hold {
                    self.held.push(Held {
                        queue: q,
                        chain,
                        data,
                        status,
                    });
                } else {
                    self.respond(q, &chain, &data, status);
                    completed += 1;
                }
            }
            let Some(vq) = self.queues[q].as_mut() else {
                continue;
            };
            if completed > 0 && vq.signal_used() {
                self.isr |= 1;
            }
            vq.try_sleep();
        }
    }

    /// Puts descriptor `id` in the used ring of queue `queue` although no
    /// request is waiting for it there (a broken or hostile device), and
    /// signals it like a real completion.
    pub fn forge_used(&mut self, queue: usize, id: u16, len: u32) {
        if let Some(vq) = self.queues[queue].as_mut() {
            vq.complete_with_len(id, len);
            if vq.signal_used() {
                self.isr |= 1;
            }
        }
    }

    /// Completes every held request, in the order `order` gives (indices
    /// into the held list, which is in arrival order).
    pub fn release_held_in(&mut self, order: &[usize]) {
        let held = std::mem::take(&mut self.held);
        assert_eq!(
            order.len(),
            held.len(),
            "order must name every held request"
        );
        let mut touched = vec![false; self.queues.len()];
        for &i in order {
            let h = &held[i];
            self.respond(h.queue, &h.chain, &h.data, h.status);
            touched[h.queue] = true;
        }
        for (q, touched) in touched.into_iter().enumerate() {
            if let (true, Some(vq)) = (touched, self.queues[q].as_mut()) {
                if vq.signal_used() {
                    self.isr |= 1;
                }
            }
        }
    }

    /// Completes every held request in an order shuffled by `rng`; returns
    /// the order (indices in arrival order).
    pub fn release_held_shuffled(&mut self, rng: &mut Rng) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.held.len()).collect();
        rng.shuffle(&mut order);
        self.release_held_in(&order);
        order
    }

    /// Does what the request asks and returns (data for the writable
    /// buffers before the status byte, status).
    fn serve(&mut self, queue: usize, chain: &Chain) -> (Vec<u8>, u8) {
        let mem = device_memory();
        let Some(vq) = self.queues[queue].as_ref() else {
            return (Vec::new(), status::IOERR);
        };
        let segments = walk_chain(&mem, vq.addresses(), chain.head);
        let mut seen = SeenRequest {
            queue: queue as u16,
            request_type: u32::MAX,
            sector: 0,
            segments,
            indirect: chain.indirect,
            ranges: Vec::new(),
            status: status::IOERR,
        };
        let (data, status) = self.execute(chain, &mut seen);
        seen.status = status;
        self.seen.push(seen);
        (data, self.force_status.unwrap_or(status))
    }

    fn execute(&mut self, chain: &Chain, seen: &mut SeenRequest) -> (Vec<u8>, u8) {
        let writable = chain.writable_len() as usize;
        let Some(header) = chain.readable.get(..16) else {
            self.violations
                .push(format!("chain {}: no 16-byte header", chain.head));
            return (Vec::new(), status::IOERR);
        };
        let request_type = u32::from_le_bytes(header[0..4].try_into().unwrap());
        let reserved = u32::from_le_bytes(header[4..8].try_into().unwrap());
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());
        seen.request_type = request_type;
        seen.sector = sector;
        self.check_shape(chain, seen, reserved);
        let payload = &chain.readable[16..];
        let data_in = writable.saturating_sub(1);

        if self.force_status.is_some() {
            // A failing device touches nothing.
            return (Vec::new(), self.force_status.unwrap_or(status::IOERR));
        }
        match request_type {
            req::IN => {
                let Some(range) = self.sector_range(sector, data_in, "read") else {
                    return (vec![0; data_in], status::IOERR);
                };
                (self.disk[range].to_vec(), status::OK)
            }
            req::OUT => {
                if self.negotiated(feature::RO) {
                    self.violations.push("write to a read-only disk".into());
                    return (Vec::new(), status::IOERR);
                }
                let Some(range) = self.sector_range(sector, payload.len(), "write") else {
                    return (Vec::new(), status::IOERR);
                };
                self.disk[range].copy_from_slice(payload);
                (Vec::new(), status::OK)
            }
            req::FLUSH => {
                if !self.negotiated(feature::FLUSH) {
                    self.violations.push("flush without FLUSH".into());
                }
                if sector != 0 {
                    self.violations.push(format!("flush with sector {sector}"));
                }
                self.flushes += 1;
                (Vec::new(), status::OK)
            }
            req::GET_ID => {
                if data_in != 20 {
                    self.violations
                        .push(format!("GET_ID with {data_in} writable data bytes"));
                }
                let mut id = self.config.serial.to_vec();
                id.resize(data_in, 0);
                if let Some(written) = self.id_bytes {
                    id.truncate(written);
                }
                (id, status::OK)
            }
            req::DISCARD | req::WRITE_ZEROES => {
                // §5.2.6: the header's `sector` is used only by reads and
                // writes and set to 0 for every other type; the range
                // carries its own sector.
                if sector != 0 {
                    self.violations.push(format!(
                        "request type {request_type} with header sector {sector} (must be 0)"
                    ));
                }
                self.ranges(request_type, payload, seen)
            }
            _ => (vec![0; data_in], status::UNSUPP),
        }
    }

    fn ranges(
        &mut self,
        request_type: u32,
        payload: &[u8],
        seen: &mut SeenRequest,
    ) -> (Vec<u8>, u8) {
        let (needed, max_sectors) = if request_type == req::DISCARD {
            (feature::DISCARD, self.config.discard.0)
        } else {
            (feature::WRITE_ZEROES, self.config.write_zeroes.0)
        };
        if !self.negotiated(needed) {
            self.violations
                .push(format!("request type {request_type} without its feature"));
        }
        if self.negotiated(feature::RO) {
            self.violations
                .push("discard/write-zeroes on a read-only disk".into());
            return (Vec::new(), status::IOERR);
        }
        if payload.is_empty() || !payload.len().is_multiple_of(16) {
            self.violations
                .push(format!("range payload of {} bytes", payload.len()));
            return (Vec::new(), status::IOERR);
        }
        for range in payload.chunks(16) {
            let sector = u64::from_le_bytes(range[0..8].try_into().unwrap());
            let sectors = u32::from_le_bytes(range[8..12].try_into().unwrap());
            let flags = u32::from_le_bytes(range[12..16].try_into().unwrap());
            seen.ranges.push((sector, sectors, flags));
            if sectors > max_sectors {
                self.violations
                    .push(format!("range of {sectors} sectors, limit {max_sectors}"));
            }
            if request_type == req::DISCARD && flags != 0 {
                self.violations
                    .push(format!("discard with flags {flags:#x}"));
            }
            let Some(bytes) = self.sector_range(sector, sectors as usize * SECTOR, "range") else {
                return (Vec::new(), status::IOERR);
            };
            // Discarded sectors read back as zeroes here, like a hole punched in a file.
            self.disk[bytes].fill(0);
        }
        (Vec::new(), status::OK)
    }

    /// Byte range of `len` bytes at `sector`, or `None` (and a violation).
    fn sector_range(
        &mut self,
        sector: u64,
        len: usize,
        what: &str,
    ) -> Option<std::ops::Range<usize>> {
        if !len.is_multiple_of(SECTOR) {
            self.violations
                .push(format!("{what} of {len} bytes, not a multiple of 512"));
            return None;
        }
        let start = (sector as usize).checked_mul(SECTOR)?;
        let end = start.checked_add(len)?;
        if end > self.disk.len() {
            self.violations.push(format!(
                "{what} of {len} bytes at sector {sector} beyond the {}-sector disk",
                self.config.capacity_sectors
            ));
            return None;
        }
        Some(start..end)
    }

    /// Checks the chain's shape against §5.2.6.
    fn check_shape(&mut self, chain: &Chain, seen: &SeenRequest, reserved: u32) {
        let segs = &seen.segments;
        if reserved != 0 {
            self.violations.push(format!(
                "chain {}: reserved field {reserved:#x}",
                chain.head
            ));
        }
        if segs.first().map(|s| (s.len, s.writable)) != Some((16, false)) {
            self.violations.push(format!(
                "chain {}: header not in its own descriptor: {segs:?}",
                chain.head
            ));
        }
        if segs.last().map(|s| (s.len, s.writable)) != Some((1, true)) {
            self.violations.push(format!(
                "chain {}: status not in its own descriptor: {segs:?}",
                chain.head
            ));
        }
        let data = seen.data_segment_lens();
        if self.negotiated(feature::SEG_MAX) && data.len() > self.config.seg_max as usize {
            self.violations.push(format!(
                "chain {}: {} data segments, seg_max {}",
                chain.head,
                data.len(),
                self.config.seg_max
            ));
        }
        if self.negotiated(feature::SIZE_MAX) {
            if let Some(&big) = data.iter().find(|&&l| l > self.config.size_max) {
                self.violations.push(format!(
                    "chain {}: segment of {big} bytes, size_max {}",
                    chain.head, self.config.size_max
                ));
            }
        }
    }

    /// Writes the answer into the chain's writable buffers and uses it.
    fn respond(&mut self, queue: usize, chain: &Chain, data: &[u8], status: u8) {
        let mem = device_memory();
        let writable = chain.writable_len();
        let mut rest = data;
        for &(addr, len) in &chain.writable {
            if rest.is_empty() {
                break;
            }
            // Never write over the status byte (the last writable byte).
            let n = rest.len().min(len as usize);
            mem.write_slice(&rest[..n], GuestAddress(addr))
                .expect("writable buffer reachable");
            rest = &rest[n..];
        }
        if !self.skip_status {
            if let Some(&(addr, len)) = chain.writable.last() {
                mem.write_obj(status, GuestAddress(addr + u64::from(len) - 1))
                    .expect("status byte reachable");
            }
        }
        let len = match self.len_override {
            None => writable,
            Some(LenOverride::Exactly(len)) => len,
            Some(LenOverride::BeyondWritable(extra)) => writable + extra,
            Some(LenOverride::TotalChain) => writable + chain.readable.len() as u32,
            Some(LenOverride::WithoutStatus) => writable.saturating_sub(1),
        };
        if let Some(vq) = self.queues[queue].as_mut() {
            vq.complete_with_len(chain.head, len);
        }
    }

    // ----- register-level attachment -----------------------------------

    /// With the register-level models: attaches the queues the driver has
    /// made live on `core` and forwards the notifications it wrote. Call
    /// before each [`BlkModel::step`].
    pub fn sync_with_core(&mut self, core: &mut VirtioCore) {
        self.driver_features = core.driver_features;
        if core.status & 4 == 0 {
            // Not DRIVER_OK (yet, or reset): the device does nothing.
            for q in &mut self.queues {
                *q = None;
            }
            core.notifications.clear();
            return;
        }
        for (i, q) in core.queues.iter().enumerate() {
            let live = q.is_live();
            if live && i < self.queues.len() && self.queues[i].is_none() {
                let addrs = q.addresses();
                self.attach_queue(i as u16, addrs);
            }
        }
        for queue in std::mem::take(&mut core.notifications) {
            self.notified(queue);
        }
        core.isr |= std::mem::take(&mut self.isr);
    }
}

/// Byte `i` of the pattern [`BlkModel::fill_pattern`] writes.
pub fn pattern_byte(i: usize) -> u8 {
    let sector = i / SECTOR;
    ((sector * 7 + i * 13) as u8) ^ 0x5c
}

/// The chain starting at `head`, descriptor by descriptor (following an
/// indirect table), as (length, writable).
fn walk_chain(mem: &GuestMemoryMmap, addrs: QueueAddresses, head: u16) -> Vec<SeenSegment> {
    let read = |table: u64, i: u64| -> (u64, u32, u16, u16) {
        let at = table + 16 * i;
        (
            mem.read_obj::<u64>(GuestAddress(at)).expect("descriptor"),
            mem.read_obj::<u32>(GuestAddress(at + 8))
                .expect("descriptor"),
            mem.read_obj::<u16>(GuestAddress(at + 12))
                .expect("descriptor"),
            mem.read_obj::<u16>(GuestAddress(at + 14))
                .expect("descriptor"),
        )
    };
    let mut segments = Vec::new();
    let (addr, len, flags, _) = read(addrs.desc, u64::from(head));
    let (table, mut index, limit) = if flags & VIRTQ_DESC_F_INDIRECT != 0 {
        (addr, 0u64, u64::from(len / 16))
    } else {
        (addrs.desc, u64::from(head), u64::from(addrs.size))
    };
    for _ in 0..limit {
        let (_, len, flags, next) = read(table, index);
        segments.push(SeenSegment {
            len,
            writable: flags & VIRTQ_DESC_F_WRITE != 0,
        });
        if flags & VIRTQ_DESC_F_NEXT == 0 {
            break;
        }
        index = u64::from(next);
    }
    segments
}

/// Where a [`ModelTransport`] finds its model: shared on one thread
/// ([`SharedBlkModel`], `Rc<RefCell<_>>`), or across threads
/// ([`SyncBlkModel`], `Arc<Mutex<_>>`) for tests whose driver runs on
/// several threads at once.
pub trait ModelCell {
    /// Runs `f` on the model.
    fn with<R>(&self, f: impl FnOnce(&mut BlkModel) -> R) -> R;
}

impl ModelCell for SharedBlkModel {
    fn with<R>(&self, f: impl FnOnce(&mut BlkModel) -> R) -> R {
        f(&mut self.borrow_mut())
    }
}

/// A model shared between threads: the driver's threads reach it through
/// their transport calls, a device thread runs [`BlkModel::step`].
pub type SyncBlkModel = std::sync::Arc<std::sync::Mutex<BlkModel>>;

impl ModelCell for SyncBlkModel {
    fn with<R>(&self, f: impl FnOnce(&mut BlkModel) -> R) -> R {
        // A panicking thread already failed the test; the model is still
        // worth reading for its records.
        let mut model = self.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut model)
    }
}

/// A [`Transport`] implemented directly on a [`BlkModel`]: no registers,
/// but every call the driver makes lands in the model's records.
pub struct ModelTransport<C: ModelCell = SharedBlkModel> {
    /// The device.
    pub model: C,
    /// Which transport it pretends to be (decides legacy vs modern
    /// behaviour: ring layout, FEATURES_OK, configuration consistency).
    pub kind: TransportKind,
}

impl<C: ModelCell> ModelTransport<C> {
    /// A transport of `kind` onto `model`.
    pub fn new(model: C, kind: TransportKind) -> Self {
        Self { model, kind }
    }
}

impl<C: ModelCell> Transport for ModelTransport<C> {
    fn kind(&self) -> TransportKind {
        self.kind
    }

    fn device_type(&self) -> DeviceType {
        DeviceType::Block
    }

    fn location(&self) -> Location {
        Location::Mmio { base: 0xfeb0_0000 }
    }

    fn status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_retain(self.model.with(|m| m.status))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.model.with(|m| m.write_status(status.bits()));
    }

    fn reset(&mut self) -> Result<(), TransportError> {
        self.model.with(|m| m.write_status(0));
        Ok(())
    }

    fn device_features(&mut self) -> u64 {
        let offered = self.model.with(|m| m.config.features);
        if self.kind == TransportKind::PciLegacy {
            offered & 0xffff_ffff
        } else {
            offered
        }
    }

    fn set_driver_features(&mut self, features: u64) {
        self.model.with(|m| m.driver_features = features);
    }

    fn ring_layout(&self) -> RingLayout {
        if self.kind.is_legacy() {
            RingLayout::Contiguous { align: 4096 }
        } else {
            RingLayout::Separate
        }
    }

    fn max_queue_size(&mut self, queue: u16) -> Result<u16, TransportError> {
        self.model.with(|model| {
            Ok(if queue < model.config.num_queues {
                model.config.queue_max
            } else {
                0
            })
        })
    }

    fn queue_size_is_fixed(&self) -> bool {
        self.kind == TransportKind::PciLegacy
    }

    fn setup_queue(&mut self, queue: u16, addrs: &QueueAddresses) -> Result<(), TransportError> {
        self.model.with(|model| {
            if queue >= model.config.num_queues {
                return Err(TransportError::NoSuchQueue(queue));
            }
            model.queue_setups.push((queue, *addrs));
            model.attach_queue(queue, *addrs);
            Ok(())
        })
    }

    fn notify(&self, queue: u16) {
        self.model.with(|m| m.notified(queue));
    }

    fn config_generation(&mut self) -> u32 {
        self.model.with(|m| m.generation)
    }

    fn config_consistency(&self) -> ConfigConsistency {
        if self.kind.is_legacy() {
            ConfigConsistency::ReadTwice
        } else {
            ConfigConsistency::Generation
        }
    }

    fn config_space_size(&self) -> usize {
        60
    }

    fn read_config_field(
        &mut self,
        offset: usize,
        width: FieldWidth,
    ) -> Result<u32, TransportError> {
        self.model
            .with(|model| Self::read_field(model, offset, width))
    }

    fn write_config_field(
        &mut self,
        offset: usize,
        width: FieldWidth,
        value: u32,
    ) -> Result<(), TransportError> {
        self.model.with(|model| {
            for i in 0..width.bytes() {
                let byte = (value >> (8 * i)) as u8;
                model.config_writes.push((offset + i, byte));
                if offset + i == 32 {
                    model.config.writeback = byte;
                }
            }
            Ok(())
        })
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let isr = self.model.with(|m| std::mem::take(&mut m.isr));
        InterruptStatus::from_bits_truncate(u32::from(isr))
    }

    fn set_config_msix_vector(&mut self, _vector: u16) -> Result<(), TransportError> {
        Err(TransportError::Unsupported("MSI-X on the model transport"))
    }

    fn set_queue_msix_vector(&mut self, _queue: u16, _vector: u16) -> Result<(), TransportError> {
        Err(TransportError::Unsupported("MSI-X on the model transport"))
    }
}

impl<C: ModelCell> ModelTransport<C> {
    /// One configuration field read (a configuration change the test
    /// scheduled happens after the read that reaches its count).
    fn read_field(
        model: &mut BlkModel,
        offset: usize,
        width: FieldWidth,
    ) -> Result<u32, TransportError> {
        model.config_reads += 1;
        let bytes = model.config.config_bytes();
        let mut value = 0u32;
        for i in 0..width.bytes() {
            value |= u32::from(bytes.get(offset + i).copied().unwrap_or(0)) << (8 * i);
        }
        if let Some((after, _)) = &model.config_change {
            if model.config_reads >= *after {
                if let Some((_, new)) = model.config_change.take() {
                    model.config = new;
                    model.generation += 1;
                }
            }
        }
        Ok(value)
    }
}
