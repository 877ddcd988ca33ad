//! # The block layer: named disks on top of the virtio-blk driver
//!
//! `drivers::blk::BlkDevice` knows one device and speaks virtio 1.2 §5.2
//! (requests of a header, data and a status byte). This module turns every
//! virtio-blk device the kernel found into a [`Disk`] with a name, the way
//! Linux does:
//!
//! ```text
//!  virtio::probe         finds every device, brings none up
//!        │
//!  block::init           for each blk device, in discovery order (PCI, then virtio-mmio):
//!        │                 take it from the virtio registry (virtio::take),
//!        │                 virtio::bring_up: interrupt set-up around
//!        │                 BlkDevice::with_options (§3.1.1 with the blk features,
//!        │                 request queues of up to 1024 descriptors), its
//!        │                 `virtio:` line; then GET_ID for the serial,
//!        ▼                 name it vda, vdb, ... and print its `block:` line
//!  DISKS: vda vdb ...    read / write / flush / discard / write-zeroes, blocking,
//!                        waiting through the device's interrupt (or polling);
//!                        each disk behind one lock per request queue (PerQueueLock)
//! ```
//!
//! ## What a disk knows
//!
//! Its name, capacity (in 512-byte sectors, virtio 1.2 §5.2.4 `capacity`),
//! logical block size (`blk_size`, else 512), serial (VIRTIO_BLK_T_GET_ID),
//! whether it is read-only (VIRTIO_BLK_F_RO), where it is and on which
//! transport. One line per disk, at the moment it is claimed:
//!
//! ```text
//! block: vda at pci 0000:00:03.0 transport=pci-modern serial=scratch0 sectors=32768 block_size=512 read_only=no queue_size=256 max_segments=32 features=VERSION_1|...|FLUSH|SEG_MAX
//! block: vdb at mmio@0xfeb00e00 FAILED: <error>
//! ```
//!
//! (stable: docs/contract.md, parsed by `tests/qemu/blk.py`.)
//!
//! ## One bring-up
//!
//! Probing only finds the device; [`init`] brings it up, once, through
//! `virtio::bring_up`: MSI-X is prepared before the driver's §3.1.1
//! sequence (so `MsixRouted` writes the queue's entry number before the
//! queue is enabled), the driver negotiates the blk features (FLUSH,
//! SEG_MAX, DISCARD, ...) and sets up the request queues, and the interrupt
//! route is made for them. The ring layout follows
//! `virtio.ring=split|packed|auto` like every driver's
//! (`virtio::ring_preference`), and the device's one `virtio:` line says
//! what the driver negotiated.
//!
//! In `mode=selftest` [`init`] runs in the block self-tests, after the
//! virtio and interrupt self-tests have borrowed the device, used raw rings
//! on it and reset it; in every other mode `main` calls [`init`] right
//! after probing.
//!
//! ## Request queues and CPUs
//!
//! A device with VIRTIO_BLK_F_MQ (§5.2.3; QEMU's `num-queues=N`) gets all
//! its request queues, up to [`MAX_QUEUES`]: one MSI-X entry each. Each
//! CPU submits on its own queue and each queue's MSI-X message is
//! addressed to the CPU that submits on it (`drivers::cpu_queues`: CPU `c`
//! submits on queue `c mod queues`, queue `q` interrupts CPU `q mod cpus`;
//! `virtio::DrivenDevice::queue_cpu` hands that to the interrupt code, and
//! `crate::smp::note_queue` records it). Before every call a disk points
//! the driver at the calling CPU's queue (`BlkDevice::set_home_queue`) and
//! waits for that queue's interrupt. Unlike Linux, which makes
//! `min(queues, CPUs)` queues, the kernel takes every queue the device
//! offers (so the `virtio:` line says `queues=N` whatever the CPU count);
//! the queues no CPU submits on by default carry the requests a caller
//! sends there, as the self-tests do ([`Disk::pin_queue`]). Per-queue
//! counters: [`Disk::queue_lines`] (the shell's `blkq`, the self-tests'
//! last lines). `docs/14-multiqueue.md` follows a request and its
//! completion.
//!
//! ## Locks
//!
//! The list of disks is built once ([`init`]) and never changes: no lock.
//! Each disk is a [`PerQueueLock`] with one lock per request queue
//! (`per_queue_lock.rs` says what each protects). [`with_disk`] and
//! [`with_disks`] take every lock of a disk (exclusive `&mut Disk`: the
//! whole-disk blocking calls, configuration changes, recovery, listings).
//! [`read`] (the shell's `blk read`) takes only the lock of the calling
//! CPU's queue and runs one request on it through the driver's per-queue
//! path (`drivers::blk::BlkQueue`, which locks the queue's ring in the
//! driver), handing what needs the whole disk (a configuration change,
//! recovery, a timeout's reset) to [`with_disk`]: `queue_path.rs`.
//! `with_disk_queue` (self-test and benchmark builds) gives a caller the
//! same shared `&Disk` on one queue's lock: the self-test
//! `selftests/per_cpu.rs` and the `scale` benchmark (`bench_scale.rs`) run
//! every CPU on its own queue at once this way (`queue_io.rs`).
//!
//! ## Writes only to scratch disks
//!
//! The kernel people boot reads disks (the shell's `blk read`) and writes
//! only with the shell's `cp` ([`write`]); flush, discard, write-zeroes and
//! the other writes are in the self-test build (feature `selftest`). Every
//! write goes only to disks whose serial starts with `scratch`
//! (docs/contract.md): `Disk::write` and friends refuse other disks with
//! `BlockError::WriteProtected`, whatever the device would allow. This
//! keeps a test run from damaging a disk image someone attached to look at.
//!
//! ## Errors
//!
//! A failed request is logged (`block: vda: read of 1 sector(s) at 2048
//! failed: device reported an I/O error (IOERR)`) and returned as a typed
//! [`BlockError`]; the disk keeps working. If the driver had to reset the
//! device (a request timed out, a ring broke), the next call on the disk
//! brings it back first (`BlkDevice::recover`).

#[cfg(feature = "bench")]
pub mod bench;
#[cfg(feature = "bench")]
pub mod bench_scale;
#[cfg(feature = "selftest")]
pub mod crash;
#[cfg(any(feature = "selftest", feature = "bench"))]
mod io_buffer;
#[cfg(any(feature = "selftest", feature = "bench"))]
pub mod pattern;
#[cfg(any(feature = "selftest", feature = "bench"))]
pub(crate) mod queue_io;
mod queue_path;
#[cfg(feature = "selftest")]
mod selftests;

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use drivers::blk::{BlkDevice, BlkError, BlkOptions, SetupError};
use drivers::irq::{QueueSet, WaitMode};
use drivers::transport::{DeviceType, Location, Transport, TransportKind};
use spin::Once;

pub use crate::per_queue_lock::AllGuard;
use crate::per_queue_lock::PerQueueLock;

use crate::hal_impl::KernelHal;
use crate::println;
use crate::smp;
use crate::virtio::irq::DeviceIrq;
use crate::virtio::{self, BroughtUp, DrivenDevice, FeatureList, KernelTransport};
use crate::wait::{self, KernelWait};
use drivers::cpu_queues;

#[cfg(any(feature = "selftest", feature = "bench"))]
pub use io_buffer::IoBuffer;
#[cfg(feature = "selftest")]
pub use selftests::selftests;

/// The virtio-blk driver on the kernel's Hal and transport.
pub type KernelBlk = BlkDevice<KernelHal, KernelTransport>;

impl DrivenDevice for KernelBlk {
    fn transport_for_routing(&mut self) -> &mut KernelTransport {
        self.transport_mut()
    }

    fn queues_in_use(&self) -> QueueSet {
        QueueSet::first(u16::try_from(self.queue_count()).unwrap_or(u16::MAX))
    }

    fn brought_up(&self) -> BroughtUp {
        BroughtUp::new(self.transport().kind(), self.queue_count(), self.features())
    }

    fn queue_cpu(&self, queue: u16) -> usize {
        cpu_queues::cpu_for_queue(queue, smp::online_cpus(), queue_total(self))
    }
}

/// The request queues `device` uses, as a queue index.
fn queue_total(device: &KernelBlk) -> u16 {
    u16::try_from(device.queue_count()).unwrap_or(u16::MAX)
}

/// The name the registry and the `virtio:` FAILED line give this driver.
pub const DRIVER_NAME: &str = "blk";

/// Serials starting with this mark disks the kernel may write to.
pub const SCRATCH_PREFIX: &str = "scratch";
/// The most descriptors the request queue gets (QEMU allows up to 1024).
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// The most request queues a multiqueue disk gets (VIRTIO_BLK_F_MQ): one
/// MSI-X entry each, next to the configuration entry, within the
/// interrupt code's 16 entries per device (`virtio::irq`).
pub const MAX_QUEUES: u16 = 15;
/// How long one blocking call may wait for the device before the driver
/// gives up and resets it.
pub const CALL_TIMEOUT_NS: u64 = 10_000_000_000;
/// Bytes per sector (the unit of every block address, §5.2.6).
pub const SECTOR: usize = drivers::blk::SECTOR_SIZE;

/// Why a block-layer call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockError {
    /// No disk of that name.
    NoSuchDisk(String),
    /// The disk's serial does not start with `scratch`: the kernel does
    /// not write to it.
    WriteProtected {
        /// The disk's name.
        disk: String,
    },
    /// The driver or the device refused or failed the request.
    Device(BlkError),
    /// The device was down after a failure and could not be brought back.
    Recovery(SetupError),
    /// The IOMMU blocked a DMA of this device while the request was in flight
    /// (strict mode, `iommu/mod.rs`): the data cannot be trusted, whatever
    /// status the device wrote.
    DmaBlocked(crate::iommu::Fault),
}

impl From<BlkError> for BlockError {
    fn from(e: BlkError) -> Self {
        BlockError::Device(e)
    }
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockError::NoSuchDisk(name) => write!(f, "no disk named {name:?}"),
            BlockError::WriteProtected { disk } => write!(
                f,
                "{disk} is not a scratch disk (serial not starting with {SCRATCH_PREFIX:?}): not written"
            ),
            BlockError::Device(e) => write!(f, "{e}"),
            BlockError::Recovery(e) => write!(f, "recovery failed: {e}"),
            BlockError::DmaBlocked(fault) => write!(
                f,
                "the IOMMU blocked a DMA {} at {:#x} by this device during the request",
                if fault.read { "read" } else { "write" },
                fault.address
            ),
        }
    }
}

/// The name of the `index`-th disk (0-based), as Linux names virtio disks:
/// vda .. vdz, then vdaa .. vdaz, vdba, ...
pub fn disk_name(index: usize) -> String {
    // Bijective base 26: 0 -> a, 25 -> z, 26 -> aa.
    let mut letters = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    letters.reverse();
    let mut name = String::from("vd");
    name.extend(letters.iter().map(|&b| b as char));
    name
}

/// What describes a disk, without the driver (for listings such as the
/// shell's `disks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// `vda`, `vdb`, ...
    pub name: String,
    /// Where the device is.
    pub location: Location,
    /// Which transport it is on.
    pub transport: TransportKind,
    /// The GET_ID serial (empty if the device gave none).
    pub serial: String,
    /// Size in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// VIRTIO_BLK_F_RO.
    pub read_only: bool,
    /// The kernel may write to it (serial starts with `scratch`, not read-only).
    pub writable: bool,
    /// Negotiated feature bits.
    pub features: u64,
    /// Descriptors in the request queue.
    pub queue_size: u16,
    /// Most data segments per request.
    pub max_segments: usize,
}

impl DiskInfo {
    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_sectors.saturating_mul(SECTOR as u64)
    }
}

impl fmt::Display for DiskInfo {
    /// The body of the `block:` line (see the module docs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {} transport={} serial={} sectors={} block_size={} read_only={} queue_size={} max_segments={} features={}",
            self.name,
            self.location,
            self.transport,
            if self.serial.is_empty() { "-" } else { &self.serial },
            self.capacity_sectors,
            self.block_size,
            if self.read_only { "yes" } else { "no" },
            self.queue_size,
            self.max_segments,
            FeatureList {
                device_type: DeviceType::Block,
                bits: self.features,
            }
        )
    }
}

/// One disk: a name and the driver of its device.
pub struct Disk {
    name: String,
    location: Location,
    transport: TransportKind,
    serial: String,
    device: KernelBlk,
    /// Descriptors in the first request queue (fixed at bring-up; kept
    /// here so [`Disk::info`] needs no `&mut` of the driver).
    queue_size: u16,
    irq: Option<DeviceIrq>,
    wait_mode: WaitMode,
    /// How long one blocking call waits ([`CALL_TIMEOUT_NS`]; the fault
    /// self-tests shorten it).
    call_timeout_ns: u64,
    /// Calls the per-queue path handed to the whole-disk path
    /// (`queue_path.rs`).
    handovers: u64,
    /// Requests the self-tests made fail on purpose (injected errors).
    #[cfg(feature = "selftest")]
    expected_failures: u64,
    /// The queue the self-tests pin this disk's requests to, instead of
    /// the calling CPU's own ([`Disk::pin_queue`]).
    #[cfg(feature = "selftest")]
    pinned_queue: Option<u16>,
}

impl Disk {
    /// Brings a virtio-blk device the registry gave us up (see the module
    /// docs) and names it; reads its serial.
    fn bring_up(name: String, found: virtio::Found) -> Result<Disk, SetupError> {
        let location = found.location;
        let transport_kind = found.transport.kind();
        let options = BlkOptions {
            max_queue_size: MAX_QUEUE_SIZE,
            max_queues: MAX_QUEUES,
            // `virtio.ring=split|packed|auto`, as for every driver.
            ring_features: virtio::ring_preference().ring_features(),
            ..BlkOptions::default()
        };
        let mut device = virtio::bring_up(found, DRIVER_NAME, |transport| {
            KernelBlk::with_options(transport, options)
        })?;
        let queue_size = device.queue_size(0).unwrap_or(0);
        let mut disk = Disk {
            name,
            location,
            transport: transport_kind,
            serial: String::new(),
            device,
            queue_size,
            irq: virtio::irq::of(location),
            wait_mode: WaitMode::Interrupt,
            call_timeout_ns: CALL_TIMEOUT_NS,
            handovers: 0,
            #[cfg(feature = "selftest")]
            expected_failures: 0,
            #[cfg(feature = "selftest")]
            pinned_queue: None,
        };
        disk.note_queues();
        disk.use_own_queue();
        let mut wait = disk.new_wait();
        match disk.device.get_id(&mut wait) {
            Ok(serial) => disk.serial = serial.to_string(),
            // A device may not implement GET_ID (UNSUPP): the disk works without.
            Err(error) => log::warn!("block: {}: GET_ID failed: {error}", disk.name),
        }
        Ok(disk)
    }

    /// `vda`, `vdb`, ...
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Request queues in use (more than 1 with VIRTIO_BLK_F_MQ).
    pub fn queue_count(&self) -> u16 {
        queue_total(&self.device)
    }

    /// The queue the calling CPU submits on (`drivers::cpu_queues`).
    pub fn own_queue(&self) -> u16 {
        cpu_queues::queue_for_cpu(smp::current_cpu(), smp::online_cpus(), self.queue_count())
    }

    /// Records in `crate::smp` which CPU takes each queue's interrupts.
    fn note_queues(&self) {
        let count = self.queue_count();
        for q in 0..count {
            let cpu = cpu_queues::cpu_for_queue(q, smp::online_cpus(), count);
            let label = if count > 1 {
                alloc::format!("{} requestq{}", self.name, q + 1)
            } else {
                alloc::format!("{} requestq", self.name)
            };
            smp::note_queue(cpu, label);
        }
    }

    /// Points requests that name no queue (the blocking helpers') at the
    /// calling CPU's own queue, or at the one the self-tests pinned; the
    /// waits of [`Disk::new_wait`] wait for that queue.
    fn use_own_queue(&mut self) {
        #[cfg(feature = "selftest")]
        let queue = self.pinned_queue.unwrap_or_else(|| self.own_queue());
        #[cfg(not(feature = "selftest"))]
        let queue = self.own_queue();
        // In range by construction (`queue_for_cpu` answers below the count).
        let _ = self.device.set_home_queue(Some(queue));
    }

    /// Per-queue counters, one line per queue:
    /// `queue <q> cpu=<cpu> requests=<n> completions=<n> failed=<n> interrupts=<n>`
    /// (the self-tests log them as `block: <disk> queue ...`; the shell's
    /// `blkq` prints them).
    pub fn queue_lines(&mut self) -> Vec<String> {
        let count = self.queue_count();
        let irq = self.irq;
        (0..count)
            .filter_map(|q| {
                let stats = self.device.queue_stats(q)?;
                let cpu = cpu_queues::cpu_for_queue(q, smp::online_cpus(), count);
                let interrupts = irq.map_or(0, |irq| irq.state().queue_interrupt_count(q));
                Some(alloc::format!(
                    "queue {q} cpu={cpu} requests={} completions={} failed={} interrupts={interrupts}",
                    stats.requests, stats.completions, stats.failed
                ))
            })
            .collect()
    }

    /// Where the device is.
    pub fn location(&self) -> Location {
        self.location
    }

    /// `true` for a read-only disk (VIRTIO_BLK_F_RO).
    pub fn read_only(&self) -> bool {
        self.device.read_only()
    }

    /// `true` if the kernel writes to this disk: serial starts with
    /// `scratch` and the device is not read-only.
    pub fn writable(&self) -> bool {
        self.is_scratch() && !self.read_only()
    }

    /// `true` if the serial starts with `scratch`.
    pub fn is_scratch(&self) -> bool {
        self.serial.starts_with(SCRATCH_PREFIX)
    }

    /// A description of the disk.
    pub fn info(&self) -> DiskInfo {
        DiskInfo {
            name: self.name.clone(),
            location: self.location,
            transport: self.transport,
            serial: self.serial.clone(),
            capacity_sectors: self.device.capacity_sectors(),
            block_size: self.device.logical_block_size(),
            read_only: self.device.read_only(),
            writable: self.writable(),
            features: self.device.features(),
            queue_size: self.queue_size,
            max_segments: self.device.max_data_segments(),
        }
    }

    /// The driver, for the non-blocking core (`submit_*`, `poll`) and its
    /// counters. The caller keeps the rules of `BlkDevice::submit`.
    pub fn device(&mut self) -> &mut KernelBlk {
        &mut self.device
    }

    /// The driver, shared: for its per-queue path
    /// (`KernelBlk::lock_queue`), under a queue lock of the disk
    /// ([`with_disk_queue`]).
    #[cfg(any(feature = "selftest", feature = "bench"))]
    pub fn blk(&self) -> &KernelBlk {
        &self.device
    }

    /// A fresh wait for one blocking call (its deadline starts now).
    pub fn new_wait(&self) -> KernelWait {
        self.new_wait_for(self.call_timeout_ns)
    }

    /// A fresh wait that gives up after `timeout_ns`: halting until the
    /// request queue's interrupt, or polling (no interrupt route, or the
    /// benchmarks' `set_wait_mode` asked for it).
    pub fn new_wait_for(&self, timeout_ns: u64) -> KernelWait {
        let queue = self.device.home_queue().unwrap_or(0);
        wait::for_device(self.irq, QueueSet::single(queue), timeout_ns).with_mode(self.wait_mode)
    }

    /// Acts on a configuration change the device announced (virtio 1.2
    /// §2.5; QEMU's `block_resize` sends one): the driver re-reads the
    /// capacity (`BlkDevice::handle_config_change`), or resets a device
    /// that set DEVICE_NEEDS_RESET, which the next request then recovers.
    /// An interrupt-driven disk only looks at the flag its interrupt
    /// handler sets (an atomic, cheap enough for every request); with
    /// `read_status` a polled disk reads (and acknowledges) its interrupt
    /// status register, a device access kept off the request path.
    pub fn check_config(&mut self, read_status: bool) {
        let interrupt_driven = self.irq.is_some_and(|irq| !irq.state().is_polled());
        let result = if interrupt_driven {
            match self.irq {
                Some(irq) if irq.state().take_config_change() => {
                    self.device.handle_config_change().map(|_| ())
                }
                _ => return,
            }
        } else if read_status {
            self.device.handle_interrupt().map(|_| ())
        } else {
            return;
        };
        match result {
            Ok(()) => log::info!(
                "block: {}: configuration changed: {} sectors",
                self.name,
                self.device.capacity_sectors()
            ),
            Err(error) => log::warn!("block: {}: configuration change: {error}", self.name),
        }
    }

    /// Brings the device back if the driver had to reset it.
    fn ensure_live(&mut self) -> Result<(), BlockError> {
        self.use_own_queue();
        self.check_config(false);
        if self.device.is_failed() {
            log::warn!(
                "block: {}: device was reset after a failure; recovering",
                self.name
            );
            self.device.recover().map_err(|e| {
                log::warn!("block: {}: recovery failed: {e}", self.name);
                BlockError::Recovery(e)
            })?;
            log::info!("block: {}: device recovered", self.name);
        }
        Ok(())
    }

    /// Writes `data` to consecutive sectors starting at `sector` (scratch
    /// disks only).
    pub fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlockError> {
        self.ensure_writable()?;
        self.ensure_live()?;
        let mut wait = self.new_wait();
        let sectors = (data.len() / SECTOR) as u64;
        let faults = crate::iommu::faults_of(self.location);
        let result = self
            .device
            .write_blocks(sector, data, &mut wait)
            .map_err(|e| self.report("write", sector, sectors, e));
        self.dma_checked("write", faults, result)
    }

    /// `Err(WriteProtected)` unless the serial starts with `scratch`.
    fn ensure_writable(&self) -> Result<(), BlockError> {
        if self.is_scratch() {
            Ok(())
        } else {
            Err(BlockError::WriteProtected {
                disk: self.name.clone(),
            })
        }
    }

    /// Logs a failed request and wraps its error.
    fn report(&self, what: &str, sector: u64, sectors: u64, error: BlkError) -> BlockError {
        if sectors == 0 {
            log::warn!("block: {}: {what} failed: {error}", self.name);
        } else {
            log::warn!(
                "block: {}: {what} of {sectors} sector(s) at {sector} failed: {error}",
                self.name
            );
        }
        BlockError::Device(error)
    }

    /// Reads `buffer.len() / 512` sectors starting at `sector`.
    pub fn read(&mut self, sector: u64, buffer: &mut [u8]) -> Result<(), BlockError> {
        self.ensure_live()?;
        let mut wait = self.new_wait();
        let sectors = (buffer.len() / SECTOR) as u64;
        let faults = crate::iommu::faults_of(self.location);
        let result = self
            .device
            .read_blocks(sector, buffer, &mut wait)
            .map_err(|e| self.report("read", sector, sectors, e));
        self.dma_checked("read", faults, result)
    }

    /// Fails a request during which the IOMMU blocked a DMA of this device
    /// (`iommu::check_request`; one relaxed load without a strict IOMMU).
    fn dma_checked(
        &self,
        what: &str,
        faults_before: u64,
        result: Result<(), BlockError>,
    ) -> Result<(), BlockError> {
        result?;
        crate::iommu::check_request(self.location, faults_before).map_err(|fault| {
            log::warn!(
                "block: {}: {what} failed: the IOMMU blocked a DMA of the device",
                self.name
            );
            BlockError::DmaBlocked(fault)
        })
    }
}

/// What the self-tests and the benchmarks ask of a disk.
#[cfg(any(feature = "selftest", feature = "bench"))]
impl Disk {
    /// The serial the device reported (empty if none).
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.device.capacity_sectors()
    }

    /// Used-buffer interrupts counted for the request queues so far.
    pub fn interrupt_count(&self) -> u64 {
        self.irq.map_or(0, |irq| {
            (0..self.queue_count())
                .map(|q| irq.state().queue_interrupt_count(q))
                .sum()
        })
    }
}

/// What only the benchmarks ask of a disk: the interrupt-or-poll choice
/// they measure.
#[cfg(feature = "bench")]
impl Disk {
    /// The device's interrupt slot, if the interrupt code tracks it.
    pub fn irq(&self) -> Option<DeviceIrq> {
        self.irq
    }

    /// How blocking calls wait from now on: [`WaitMode::Interrupt`] (the
    /// default; polling anyway if the device has no interrupt route) or
    /// [`WaitMode::Poll`].
    pub fn set_wait_mode(&mut self, mode: WaitMode) {
        self.wait_mode = mode;
        if mode == WaitMode::Poll {
            // Nobody sleeps on them: ask the device not to send any.
            self.device.disable_interrupts();
        }
    }
}

/// Writes and the other requests that change a disk. Only the self-tests
/// issue them (the shell and the services only read), so only the
/// self-test build has them; each refuses a disk that is not a scratch
/// disk.
#[cfg(feature = "selftest")]
impl Disk {
    /// Sends this disk's requests to queue `queue` (`None`: the calling
    /// CPU's own again), so a self-test can exercise every queue of a
    /// multiqueue disk from one CPU.
    pub fn pin_queue(&mut self, queue: Option<u16>) -> Result<(), BlockError> {
        if let Some(q) = queue.filter(|&q| q >= self.queue_count()) {
            return Err(BlockError::Device(BlkError::NoSuchQueue(q)));
        }
        self.pinned_queue = queue;
        self.use_own_queue();
        Ok(())
    }

    /// Notes that the self-tests made a request fail on purpose.
    pub(crate) fn expect_failure(&mut self) {
        self.expected_failures += 1;
    }

    /// How long each blocking call waits from now on (default
    /// [`CALL_TIMEOUT_NS`]): the fault self-tests wait less for a device
    /// they made stop answering.
    pub fn set_call_timeout(&mut self, timeout_ns: u64) {
        self.call_timeout_ns = timeout_ns;
    }

    /// Calls [`read`] and [`write`] handed from the per-queue path to the
    /// whole-disk path so far (`queue_path.rs`).
    pub fn handovers(&self) -> u64 {
        self.handovers
    }

    /// Requests that failed on purpose so far.
    pub fn expected_failures(&self) -> u64 {
        self.expected_failures
    }

    /// Reads consecutive sectors into `buffers`, in order.
    pub fn read_vectored(
        &mut self,
        sector: u64,
        buffers: &mut [&mut [u8]],
    ) -> Result<(), BlockError> {
        self.ensure_live()?;
        let mut wait = self.new_wait();
        let sectors = buffers.iter().map(|b| b.len() / SECTOR).sum::<usize>() as u64;
        let faults = crate::iommu::faults_of(self.location);
        let result = self
            .device
            .read_blocks_vectored(sector, buffers, &mut wait)
            .map_err(|e| self.report("read", sector, sectors, e));
        self.dma_checked("read", faults, result)
    }

    /// Writes `buffers`, in order, to consecutive sectors (scratch disks only).
    pub fn write_vectored(&mut self, sector: u64, buffers: &[&[u8]]) -> Result<(), BlockError> {
        self.ensure_writable()?;
        self.ensure_live()?;
        let mut wait = self.new_wait();
        let sectors = buffers.iter().map(|b| b.len() / SECTOR).sum::<usize>() as u64;
        let faults = crate::iommu::faults_of(self.location);
        let result = self
            .device
            .write_blocks_vectored(sector, buffers, &mut wait)
            .map_err(|e| self.report("write", sector, sectors, e));
        self.dma_checked("write", faults, result)
    }

    /// Commits the device's write cache (VIRTIO_BLK_T_FLUSH).
    pub fn flush(&mut self) -> Result<(), BlockError> {
        self.ensure_live()?;
        let mut wait = self.new_wait();
        self.device
            .flush(&mut wait)
            .map_err(|e| self.report("flush", 0, 0, e))
    }

    /// Tells the device that `sectors` sectors at `sector` are no longer
    /// needed (VIRTIO_BLK_T_DISCARD; scratch disks only). What they read
    /// afterwards is up to the device.
    pub fn discard(&mut self, sector: u64, sectors: u64) -> Result<(), BlockError> {
        self.ensure_writable()?;
        self.ensure_live()?;
        let mut wait = self.new_wait();
        self.device
            .discard(sector, sectors, &mut wait)
            .map_err(|e| self.report("discard", sector, sectors, e))
    }

    /// Makes `sectors` sectors at `sector` read as zeroes
    /// (VIRTIO_BLK_T_WRITE_ZEROES; scratch disks only); `unmap` lets the
    /// device deallocate them.
    pub fn write_zeroes(
        &mut self,
        sector: u64,
        sectors: u64,
        unmap: bool,
    ) -> Result<(), BlockError> {
        self.ensure_writable()?;
        self.ensure_live()?;
        let mut wait = self.new_wait();
        self.device
            .write_zeroes(sector, sectors, unmap, &mut wait)
            .map_err(|e| self.report("write-zeroes", sector, sectors, e))
    }
}

/// One claimed disk: its name (fixed, readable without a lock) and the
/// disk behind its per-queue locks ([`PerQueueLock`]).
struct DiskEntry {
    name: String,
    disk: PerQueueLock<Disk>,
}

/// Every disk, in name order (vda first), claimed once. The list itself
/// never changes after [`init`], so it needs no lock; each disk has its
/// own locks, one per request queue (`per_queue_lock.rs`).
static DISKS: Once<Vec<DiskEntry>> = Once::new();

/// Brings every virtio-blk device up and names it (once; later calls do
/// nothing). See the module docs for when it runs.
pub fn init() {
    all();
}

fn all() -> &'static [DiskEntry] {
    DISKS.call_once(claim_all)
}

fn claim_all() -> Vec<DiskEntry> {
    let mut disks = Vec::new();
    // Devices that failed at probe time are not offered: their `virtio:`
    // line already said why.
    while let Some(found) = virtio::take(DeviceType::Block, DRIVER_NAME) {
        let location = found.location;
        let name = disk_name(disks.len());
        match Disk::bring_up(name.clone(), found) {
            Ok(disk) => {
                println!("block: {}", disk.info());
                disks.push(disk);
            }
            // `virtio::bring_up` printed the FAILED `virtio:` line.
            Err(error) => println!("block: {name} at {location} FAILED: {error}"),
        }
    }
    let total: u64 = disks.iter().map(|d| d.info().capacity_bytes()).sum();
    log::info!("block: {} disk(s), {} MiB in all", disks.len(), total >> 20);
    disks
        .into_iter()
        .map(|disk| DiskEntry {
            name: disk.name.clone(),
            disk: {
                let queues = usize::from(disk.queue_count());
                PerQueueLock::new(disk, queues)
            },
        })
        .collect()
}

fn find(name: &str) -> Result<&'static PerQueueLock<Disk>, BlockError> {
    all()
        .iter()
        .find(|d| d.name == name)
        .map(|d| &d.disk)
        .ok_or_else(|| BlockError::NoSuchDisk(name.to_string()))
}

/// Descriptions of every disk (claims the devices first if nobody has),
/// after acting on any configuration change (a disk resized at run time
/// shows its new capacity).
pub fn disks() -> Vec<DiskInfo> {
    all()
        .iter()
        .map(|entry| {
            let mut disk = entry.disk.lock_all();
            disk.check_config(true);
            disk.info()
        })
        .collect()
}

/// Runs `f` on the disk named `name`, with every one of its queue locks
/// held (exclusive: the blocking calls, configuration, recovery). `f` must
/// not call back into this module's other functions.
pub fn with_disk<R>(name: &str, f: impl FnOnce(&mut Disk) -> R) -> Result<R, BlockError> {
    let mut disk = find(name)?.lock_all();
    Ok(f(&mut disk))
}

/// Runs `f` on the disk named `name` holding only the lock of queue
/// `queue` (the per-queue path: `f` uses `Disk::blk().lock_queue(queue)`
/// and nothing that needs the whole disk). CPUs on different queues run
/// such calls at the same time.
#[cfg(any(feature = "selftest", feature = "bench"))]
pub fn with_disk_queue<R>(
    name: &str,
    queue: u16,
    f: impl FnOnce(&Disk) -> R,
) -> Result<R, BlockError> {
    let lock = find(name)?;
    let disk = lock.lock_queue(usize::from(queue));
    Ok(f(&disk))
}

/// Runs `f` on every disk at once, each with all its locks held (the
/// shell's `disks`, the self-tests and the benchmarks).
pub fn with_disks<R>(f: impl FnOnce(&mut [AllGuard<'static, Disk>]) -> R) -> R {
    let mut disks: Vec<_> = all().iter().map(|d| d.disk.lock_all()).collect();
    f(&mut disks)
}

/// Runs `f` on every disk unless another user holds one right now (the
/// live queue view, `crate::virtio::view`, which may run inside a network
/// poll that a disk user started); `None` then. Claims nothing.
pub fn try_with_disks<R>(f: impl FnOnce(&mut [AllGuard<'static, Disk>]) -> R) -> Option<R> {
    let Some(list) = DISKS.get() else {
        // Not claimed yet: no disk, and nobody holding one.
        return Some(f(&mut []));
    };
    let mut disks = Vec::with_capacity(list.len());
    for entry in list {
        disks.push(entry.disk.try_lock_all()?);
    }
    Some(f(&mut disks))
}

/// Reads sectors from the disk named `name` into `buffer` (whose length
/// is a multiple of 512): the shell's `blk read`. On the calling CPU's own
/// request queue, holding only its lock, unless the whole disk is needed
/// (`queue_path.rs`).
pub fn read(name: &str, sector: u64, buffer: &mut [u8]) -> Result<(), BlockError> {
    queue_path::transfer(name, sector, queue_path::Transfer::Read(buffer))
}

/// Writes `data` (a multiple of 512 bytes) to the disk named `name` at
/// `sector`, as [`read`] reads (scratch disks only): the shell's `cp`.
pub fn write(name: &str, sector: u64, data: &[u8]) -> Result<(), BlockError> {
    queue_path::transfer(name, sector, queue_path::Transfer::Write(data))
}
