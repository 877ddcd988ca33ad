// ANCHOR: all (the book's chapter 0 includes this file by these markers: docs/00-one-request.md)
//! # A whole virtio-blk driver on a few pages (the book's chapter 0)
//!
//! The smallest complete driver this crate can have: it brings a virtio-blk
//! device up with the initialisation sequence of virtio 1.2 §3.1.1, one
//! step at a time, sets up one split virtqueue (§2.7), and then sends one
//! request at a time (§5.2.6) and polls the used ring until the device has
//! answered. No interrupts, no feature beyond VERSION_1, no error recovery.
//!
//! It uses the same pieces as the full driver (`blk/`): the [`hal::Hal`] for
//! DMA memory, a [`Transport`] for the registers (PCI or MMIO, it does not
//! know which) and a [`SplitQueue`] for the ring (its [`Ring`] methods). What it leaves out, and
//! where the full driver adds it, is in `docs/00-one-request.md`.
//!
//! A host test runs it against the device model:
//! `cargo test -p tests --test polled_blk`.

use core::fmt;

use hal::{DeviceVisible, DmaRegion, Hal, HalError};

use crate::device::{Wait, WaitTimeout};
use crate::features::VERSION_1;
use crate::queue::{choose_queue_size, QueueConfig, QueueError, Ring, Segment, SplitQueue};
use crate::transport::{
    read_config_consistent, DeviceStatus, DeviceType, Transport, TransportError,
};

// ANCHOR: layout
/// The one queue a virtio-blk device always has: requestq (§5.2.2).
const REQUEST_QUEUE: u16 = 0;
/// A request takes three descriptors (header, data, status); four are plenty.
const QUEUE_SIZE_WANTED: u16 = 4;
/// §5.2.6: "The sector number indicates the offset (multiplied by 512)".
pub const SECTOR_SIZE: usize = 512;
/// §5.2.6: the device ID string is "up to 20 bytes long".
pub const ID_LEN: usize = 20;

/// Request types (§5.2.6): "#define VIRTIO_BLK_T_IN 0", "#define VIRTIO_BLK_T_GET_ID 8".
const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// "#define VIRTIO_BLK_S_OK 0" (§5.2.6).
const VIRTIO_BLK_S_OK: u8 = 0;

/// Where the three parts of a request sit in the one DMA page we use:
/// `struct virtio_blk_req { le32 type; le32 reserved; le64 sector;
/// u8 data[]; u8 status; }` (§5.2.6), each part in its own descriptor.
const HEADER_AT: usize = 0;
const HEADER_LEN: usize = 16;
const DATA_AT: usize = HEADER_AT + HEADER_LEN;
const STATUS_AT: usize = DATA_AT + SECTOR_SIZE;
// ANCHOR_END: layout

/// What can go wrong, by step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolledBlkError {
    /// The device is not a block device.
    NotABlockDevice,
    /// Step 4: the device does not offer VIRTIO_F_VERSION_1 (a legacy
    /// device; the full driver in `blk/` handles those too).
    NoVersion1,
    /// Step 6: FEATURES_OK did not stick: the device refused our features.
    FeaturesRefused,
    /// A register access failed (reset timeout, a missing queue, ...).
    Transport(TransportError),
    /// The ring refused a request or the device broke its rules.
    Queue(QueueError),
    /// No DMA memory.
    Dma(HalError),
    /// The wait gave up before the device answered.
    TimedOut(WaitTimeout),
    /// The device answered another request than ours (it cannot: we have one).
    WrongCompletion,
    /// The device wrote a status other than VIRTIO_BLK_S_OK (1: IOERR, 2: UNSUPP).
    Status(u8),
    /// The sector is beyond the disk's capacity.
    OutOfRange,
}

impl fmt::Display for PolledBlkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl From<TransportError> for PolledBlkError {
    fn from(error: TransportError) -> Self {
        Self::Transport(error)
    }
}

impl From<QueueError> for PolledBlkError {
    fn from(error: QueueError) -> Self {
        Self::Queue(error)
    }
}

impl From<HalError> for PolledBlkError {
    fn from(error: HalError) -> Self {
        Self::Dma(error)
    }
}

// ANCHOR: new
/// A virtio-blk device driven one request at a time, by polling.
pub struct PolledBlk<H: Hal, T: Transport> {
    transport: T,
    queue: DeviceVisible<SplitQueue<H>>,
    /// Header, data and status of the one request in flight.
    request: DeviceVisible<DmaRegion<H>>,
    /// Disk size in 512-byte sectors (config field `capacity`, §5.2.4).
    capacity: u64,
}

impl<H: Hal, T: Transport> PolledBlk<H, T> {
    /// Brings the device up: virtio 1.2 §3.1.1, "Driver Requirements:
    /// Device Initialization", steps 1 to 8 in order.
    pub fn new(mut transport: T) -> Result<Self, PolledBlkError> {
        if transport.device_type() != DeviceType::Block {
            return Err(PolledBlkError::NotABlockDevice);
        }
        let owner = transport.dma_owner();
        match Self::initialise(&mut transport) {
            Ok((queue, capacity)) => Ok(Self {
                transport,
                queue: DeviceVisible::new(queue),
                request: DeviceVisible::new(DmaRegion::new(owner, STATUS_AT + 1)?),
                capacity,
            }),
            Err(error) => {
                // "If any of these steps go irrecoverably wrong, the driver
                // SHOULD set the FAILED status bit to indicate that it has
                // given up on the device".
                let status = transport.status() | DeviceStatus::FAILED;
                transport.set_status(status);
                Err(error)
            }
        }
    }
    // ANCHOR_END: new

    // ANCHOR: init
    fn initialise(transport: &mut T) -> Result<(SplitQueue<H>, u64), PolledBlkError> {
        // 1. "Reset the device."
        transport.reset()?;
        // 2. "Set the ACKNOWLEDGE status bit: the guest OS has noticed the device."
        let mut status = DeviceStatus::ACKNOWLEDGE;
        transport.set_status(status);
        // 3. "Set the DRIVER status bit: the guest OS knows how to drive the device."
        status |= DeviceStatus::DRIVER;
        transport.set_status(status);
        // 4. "Read device feature bits, and write the subset of feature bits
        //    understood by the OS and driver to the device."
        //    We understand exactly one: VIRTIO_F_VERSION_1 (§6), the modern
        //    interface. Every block feature (read-only, flush, ...) stays off.
        let offered = transport.device_features();
        if offered & VERSION_1 == 0 {
            return Err(PolledBlkError::NoVersion1);
        }
        transport.set_driver_features(VERSION_1);
        // 5. "Set the FEATURES_OK status bit. The driver MUST NOT accept new
        //    feature bits after this step."
        status |= DeviceStatus::FEATURES_OK;
        transport.set_status(status);
        // 6. "Re-read device status to ensure the FEATURES_OK bit is still
        //    set: otherwise, the device does not support our subset of
        //    features and the device is unusable."
        if !transport.status().contains(DeviceStatus::FEATURES_OK) {
            return Err(PolledBlkError::FeaturesRefused);
        }
        // 7. "Perform device-specific setup, including discovery of
        //    virtqueues for the device, optional per-bus setup, reading and
        //    possibly writing the device's virtio configuration space, and
        //    population of virtqueues."
        //    The configuration: `le64 capacity` at offset 0 (§5.2.4), read
        //    between two generation-counter reads so both halves belong together.
        let capacity = read_config_consistent(transport, |fields| fields.u64(0))?;
        //    The queue: as large as we want and the device allows, its three
        //    areas in DMA memory, their addresses programmed into the device.
        let max = transport.max_queue_size(REQUEST_QUEUE)?;
        let size = choose_queue_size(max, QUEUE_SIZE_WANTED, transport.queue_size_is_fixed())?;
        //    (The memory is this device's: behind an IOMMU no other can reach it.)
        let mut queue = SplitQueue::new(
            QueueConfig::new(REQUEST_QUEUE, size, transport.ring_layout())
                .with_owner(transport.dma_owner()),
        )?;
        //    We poll, so we ask the device not to interrupt
        //    (VIRTQ_AVAIL_F_NO_INTERRUPT, §2.7.7).
        queue.disable_interrupts();
        transport.setup_queue(REQUEST_QUEUE, &queue.addresses())?;
        // 8. "Set the DRIVER_OK status bit. At this point the device is 'live'."
        status |= DeviceStatus::DRIVER_OK;
        transport.set_status(status);
        Ok((queue, capacity))
    }
    // ANCHOR_END: init

    // ANCHOR: calls
    /// Disk size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Reads sector `sector` into `buf` (VIRTIO_BLK_T_IN).
    pub fn read_sector(
        &mut self,
        sector: u64,
        buf: &mut [u8; SECTOR_SIZE],
        wait: &mut impl Wait,
    ) -> Result<(), PolledBlkError> {
        if sector >= self.capacity {
            return Err(PolledBlkError::OutOfRange);
        }
        self.request(VIRTIO_BLK_T_IN, sector, SECTOR_SIZE, wait)?;
        self.read_data(buf);
        Ok(())
    }

    /// Asks for the device ID string (VIRTIO_BLK_T_GET_ID): up to 20 bytes,
    /// NUL-padded (for QEMU, the `serial=` of the drive).
    pub fn get_id(&mut self, wait: &mut impl Wait) -> Result<[u8; ID_LEN], PolledBlkError> {
        self.request(VIRTIO_BLK_T_GET_ID, 0, ID_LEN, wait)?;
        let mut id = [0u8; ID_LEN];
        self.read_data(&mut id);
        Ok(id)
    }
    // ANCHOR_END: calls

    // ANCHOR: request
    /// One request, whole: fill the header, chain three descriptors, make
    /// the chain available, notify, poll the used ring, check the status.
    fn request(
        &mut self,
        request_type: u32,
        sector: u64,
        data_len: usize,
        wait: &mut impl Wait,
    ) -> Result<(), PolledBlkError> {
        // The header the device reads: type, reserved, sector (little-endian).
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(&request_type.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        self.request.write_bytes(HEADER_AT, &header);
        // A status the device must overwrite: 0xff is no valid answer.
        self.request.write(STATUS_AT, 0xffu8);

        // §2.7.13 "Supplying Buffers to The Device", steps 1-2: the chain in
        // the descriptor table, its head in the available ring. Readable
        // parts come first (§2.7.4.2): the header; then what the device writes.
        let base = self.request.device_addr();
        let chain = [
            Segment::readable(base + HEADER_AT as u64, HEADER_LEN as u32),
            Segment::writable(base + DATA_AT as u64, data_len as u32),
            Segment::writable(base + STATUS_AT as u64, 1),
        ];
        let token = self.queue.add(&chain)?;
        // Steps 4-5: a memory barrier, then the new available index; the
        // queue answers whether the device wants to hear about it (step 6).
        if self.queue.publish().should_notify() {
            self.transport.notify(REQUEST_QUEUE);
        }

        // §2.7.14 "Receiving Used Buffers From The Device": without
        // interrupts we look at the used ring until our chain is in it.
        let used = loop {
            match self.queue.pop_used()? {
                Some(used) => break used,
                None => wait.wait().map_err(PolledBlkError::TimedOut)?,
            }
        };
        if used.token != token {
            return Err(PolledBlkError::WrongCompletion);
        }
        match self.request.read::<u8>(STATUS_AT) {
            Some(VIRTIO_BLK_S_OK) => Ok(()),
            Some(status) => Err(PolledBlkError::Status(status)),
            None => Err(PolledBlkError::Status(0xff)),
        }
    }
    // ANCHOR_END: request

    /// Copies the data part of the last request out of DMA memory.
    fn read_data(&self, into: &mut [u8]) {
        self.request.read_bytes(DATA_AT, into);
    }
}

// ANCHOR: drop
impl<H: Hal, T: Transport> Drop for PolledBlk<H, T> {
    /// Resets the device before the ring and request memory are freed, so
    /// it can never write into memory that is no longer ours (§2.1.2: a
    /// reset device has forgotten its queues).
    fn drop(&mut self) {
        // A device that never acknowledges the reset may still write that
        // memory: it is then kept for ever, never freed (hal::DeviceVisible).
        if self.transport.reset().is_err() {
            self.queue.keep_forever();
            self.request.keep_forever();
        }
    }
}
// ANCHOR_END: drop
// ANCHOR_END: all
