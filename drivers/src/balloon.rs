//! # virtio-balloon: memory given back to the host (virtio 1.2 §5.5)
//!
//! The host asks for memory by raising `num_pages` in the device
//! configuration (§5.5.4; QEMU's QMP `balloon` sets it): the driver then
//! takes that many free 4 KiB pages from the guest's allocator and tells the
//! device their page frame numbers on inflateq (§5.5.6.1), after which the
//! host may reclaim them. When the host lowers `num_pages`, the driver
//! names pages on deflateq and, once the device has used the buffer, gives
//! them back to the allocator (§5.5.6.1: with VIRTIO_BALLOON_F_MUST_TELL_HOST
//! "the driver MUST NOT use pages from the balloon until the device has
//! acknowledged the deflate request"; this driver always waits). After each
//! step it writes `actual`, the balloon's size in pages.
//!
//! Where pages come from is the caller's: a [`PageSource`] hands out pages
//! nobody uses and takes them back (the kernel's frame allocator), so the
//! balloon can never hold a page in use. A page is described by its PFN in
//! 4096-byte units (§5.5.6: "VIRTIO_BALLOON_PFN_SHIFT 12"), as the device
//! sees it, up to [`PFNS_PER_REQUEST`] per request.
//!
//! With VIRTIO_BALLOON_F_STATS_VQ (§5.5.6.3) the driver keeps one buffer of
//! statistics (`le16 tag; le64 val` pairs, [`StatTag`]) on statsq: the device
//! uses it when it wants fresh numbers, and the driver answers by making it
//! available again, refilled ([`BalloonDevice::answer_stats`]). QEMU shows
//! them through QMP (`qom-get` of `guest-stats`, after
//! `guest-stats-polling-interval` is set).
//!
//! Host tests: `cargo test -p tests --test balloon`
//! (`tests/src/balloon_model.rs`).

use alloc::vec::Vec;
use core::fmt;

use hal::{DeviceVisible, DmaRegion, Hal, HalError};

use crate::device::{self, DeviceError, QueueSpec, RequestError, Wait, WaitTimeout};
use crate::features;
use crate::queue::{QueueError, Ring, Segment, Token, Virtqueue};
use crate::transport::{read_config_consistent, DeviceType, Transport, TransportError};

/// inflateq (§5.5.2).
pub const INFLATE_QUEUE: u16 = 0;
/// deflateq.
pub const DEFLATE_QUEUE: u16 = 1;
/// statsq (only with STATS_VQ).
pub const STATS_QUEUE: u16 = 2;

/// Feature bits (§5.5.3).
pub mod feature {
    /// VIRTIO_BALLOON_F_MUST_TELL_HOST: wait for the deflate ack before reuse.
    pub const MUST_TELL_HOST: u64 = 1 << 0;
    /// VIRTIO_BALLOON_F_STATS_VQ: the statistics queue.
    pub const STATS_VQ: u64 = 1 << 1;
    /// VIRTIO_BALLOON_F_DEFLATE_ON_OOM (not implemented: not accepted).
    pub const DEFLATE_ON_OOM: u64 = 1 << 2;
}

/// What the driver implements: it always waits for the deflate ack, and it
/// answers statistics requests.
pub const DRIVER_FEATURES: u64 = feature::MUST_TELL_HOST | feature::STATS_VQ;
/// Page frame numbers per inflate / deflate request (one 4 KiB buffer).
pub const PFNS_PER_REQUEST: usize = 1024;
/// The balloon's page size (§5.5.6: PFN shift 12).
pub const PAGE_SIZE: u64 = 4096;
/// Config offsets (§5.5.4): `le32 num_pages; le32 actual;`.
const NUM_PAGES: usize = 0;
const ACTUAL: usize = 4;
const QUEUE_SIZE_WANTED: u16 = 8;

/// Statistics tags (§5.5.6.3) this driver reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum StatTag {
    /// VIRTIO_BALLOON_S_MEMFREE: free memory, bytes.
    MemFree = 4,
    /// VIRTIO_BALLOON_S_MEMTOT: total memory, bytes.
    MemTotal = 5,
    /// VIRTIO_BALLOON_S_AVAIL: available memory, bytes.
    Available = 6,
}

/// The statistics the driver reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Free bytes.
    pub free: u64,
    /// Total bytes.
    pub total: u64,
}

impl MemoryStats {
    const TAGS: [StatTag; 3] = [StatTag::MemFree, StatTag::MemTotal, StatTag::Available];
    /// Bytes of one statistics buffer: 10 per tag.
    pub const BYTES: usize = 10 * Self::TAGS.len();

    fn encode(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        for (i, tag) in Self::TAGS.iter().enumerate() {
            let value = match tag {
                StatTag::MemFree | StatTag::Available => self.free,
                StatTag::MemTotal => self.total,
            };
            out[i * 10..i * 10 + 2].copy_from_slice(&(*tag as u16).to_le_bytes());
            out[i * 10 + 2..i * 10 + 10].copy_from_slice(&value.to_le_bytes());
        }
        out
    }
}

/// Where balloon pages come from and go back to.
pub trait PageSource {
    /// A page nobody uses, now the balloon's: its PFN (4 KiB units, as the
    /// device sees it), or `None` if there is none to spare.
    fn take(&mut self) -> Option<u32>;
    /// A page the balloon no longer holds.
    fn give_back(&mut self, pfn: u32);
}

/// What can go wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalloonError {
    /// Bring-up failed.
    Device(DeviceError),
    /// A configuration access failed.
    Transport(TransportError),
    /// No DMA memory.
    Dma(HalError),
    /// The ring refused, or the device broke a rule: reset.
    Queue(QueueError),
    /// No answer in time: reset.
    TimedOut(WaitTimeout),
    /// An earlier error stopped the driver.
    Stopped,
}

impl fmt::Display for BalloonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BalloonError::Device(e) => write!(f, "{e}"),
            BalloonError::Transport(e) => write!(f, "configuration: {e}"),
            BalloonError::Dma(e) => write!(f, "DMA memory: {e:?}"),
            BalloonError::Queue(e) => write!(f, "{e} (device reset)"),
            BalloonError::TimedOut(t) => write!(f, "no answer: {t} (device reset)"),
            BalloonError::Stopped => f.write_str("stopped after an earlier device error"),
        }
    }
}

impl From<DeviceError> for BalloonError {
    fn from(e: DeviceError) -> Self {
        BalloonError::Device(e)
    }
}

impl From<HalError> for BalloonError {
    fn from(e: HalError) -> Self {
        BalloonError::Dma(e)
    }
}

/// What one [`BalloonDevice::adjust`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjusted {
    /// The balloon has the size the host asks for.
    Settled,
    /// Pages went in (this many); more may follow.
    Inflated(usize),
    /// Pages came out (this many); more may follow.
    Deflated(usize),
    /// The host wants more, but the page source has none to spare.
    NoFreePages,
}

/// A virtio-balloon device.
pub struct BalloonDevice<H: Hal, T: Transport> {
    transport: T,
    /// The rings and the two buffers: kept for ever, not freed, if the
    /// device never acknowledges a reset (`device::reset_or_keep`).
    inflate: DeviceVisible<Virtqueue<H>>,
    deflate: DeviceVisible<Virtqueue<H>>,
    stats: DeviceVisible<Option<Virtqueue<H>>>,
    /// PFNs of one request.
    pfns: DeviceVisible<DmaRegion<H>>,
    /// The statistics buffer (on statsq while the device holds it).
    stats_buffer: DeviceVisible<DmaRegion<H>>,
    stats_token: Option<Token>,
    /// Every page in the balloon.
    pages: Vec<u32>,
    features: u64,
    stopped: bool,
    stats_answered: u64,
}

impl<H: Hal, T: Transport> BalloonDevice<H, T> {
    /// Brings the device up with inflateq, deflateq and (with STATS_VQ)
    /// statsq, and gives the device its first statistics buffer (§5.5.6.3:
    /// the driver makes one available "on initialization").
    pub fn new(
        mut transport: T,
        ring_features: u64,
        stats: MemoryStats,
    ) -> Result<Self, BalloonError> {
        device::expect_device_type(&transport, DeviceType::Balloon)?;
        let pfns = DmaRegion::new(transport.dma_owner(), PFNS_PER_REQUEST * 4)?;
        let stats_buffer = DmaRegion::new(transport.dma_owner(), MemoryStats::BYTES)?;
        // One descriptor per request: no indirect tables.
        let ring_features = ring_features & !features::RING_INDIRECT_DESC;
        let ((inflate, deflate, stats_queue), features) = device::bring_up(
            &mut transport,
            DRIVER_FEATURES,
            ring_features,
            |transport, negotiated| {
                let spec = QueueSpec::new(QUEUE_SIZE_WANTED).with_indirect_capacity(0);
                let mut queue = |index| {
                    let mut q =
                        device::setup_queue_with::<H, _>(transport, index, spec, negotiated)?;
                    q.disable_interrupts();
                    Ok::<_, BalloonError>(q)
                };
                let inflate = queue(INFLATE_QUEUE)?;
                let deflate = queue(DEFLATE_QUEUE)?;
                let stats = if negotiated & feature::STATS_VQ != 0 {
                    Some(queue(STATS_QUEUE)?)
                } else {
                    None
                };
                Ok::<_, BalloonError>((inflate, deflate, stats))
            },
        )?;
        let mut balloon = Self {
            transport,
            inflate: DeviceVisible::new(inflate),
            deflate: DeviceVisible::new(deflate),
            stats: DeviceVisible::new(stats_queue),
            pfns: DeviceVisible::new(pfns),
            stats_buffer: DeviceVisible::new(stats_buffer),
            stats_token: None,
            pages: Vec::new(),
            features,
            stopped: false,
            stats_answered: 0,
        };
        balloon.offer_stats(stats)?;
        balloon.write_actual()?;
        Ok(balloon)
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The queues set up: 2, or 3 with statsq.
    pub fn queue_count(&self) -> usize {
        2 + usize::from(self.stats.is_some())
    }

    /// Pages in the balloon.
    pub fn pages(&self) -> usize {
        self.pages.len()
    }

    /// Hands each ring, with its name (`inflateq`, `deflateq`, `statsq`),
    /// to `visit`: a read-only look for the live queue view (`crate::view`).
    pub fn visit_rings(&self, mut visit: impl FnMut(&dyn fmt::Display, &Virtqueue<H>)) {
        visit(&"inflateq", &self.inflate);
        visit(&"deflateq", &self.deflate);
        if let Some(stats) = self.stats.as_ref() {
            visit(&"statsq", stats);
        }
    }

    /// Statistics requests answered.
    pub fn stats_answered(&self) -> u64 {
        self.stats_answered
    }

    /// `true` after a device error.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The balloon size the host asks for, in pages (`num_pages`).
    pub fn target(&mut self) -> Result<u32, BalloonError> {
        read_config_consistent(&mut self.transport, |fields| fields.u32(NUM_PAGES))
            .map_err(BalloonError::Transport)
    }

    /// One step toward the host's target: at most [`PFNS_PER_REQUEST`]
    /// pages in or out, acknowledged by the device, then `actual` updated.
    pub fn adjust(
        &mut self,
        source: &mut impl PageSource,
        wait: &mut impl Wait,
    ) -> Result<Adjusted, BalloonError> {
        if self.stopped {
            return Err(BalloonError::Stopped);
        }
        let target = self.target()? as usize;
        let held = self.pages.len();
        if held < target {
            let want = (target - held).min(PFNS_PER_REQUEST);
            let mut batch = Vec::with_capacity(want);
            while batch.len() < want {
                match source.take() {
                    Some(pfn) => batch.push(pfn),
                    None => break,
                }
            }
            if batch.is_empty() {
                return Ok(Adjusted::NoFreePages);
            }
            if let Err(error) = self.send(INFLATE_QUEUE, &batch, wait) {
                // The device may not have seen them: they are still free pages.
                batch.into_iter().for_each(|pfn| source.give_back(pfn));
                return Err(error);
            }
            let n = batch.len();
            self.pages.extend(batch);
            self.write_actual()?;
            log::trace!(
                "{}: balloon: inflated {n} pages (target {target}); actual = {}",
                self.transport.location(),
                self.pages.len()
            );
            Ok(Adjusted::Inflated(n))
        } else if held > target {
            let n = (held - target).min(PFNS_PER_REQUEST);
            let batch: Vec<u32> = self.pages[held - n..].to_vec();
            // On an error the pages stay in the balloon: the device may
            // still think they are its own.
            self.send(DEFLATE_QUEUE, &batch, wait)?;
            self.pages.truncate(held - n);
            batch.into_iter().for_each(|pfn| source.give_back(pfn));
            self.write_actual()?;
            log::trace!(
                "{}: balloon: deflated {n} pages, acknowledged before reuse (target {target}); actual = {}",
                self.transport.location(),
                self.pages.len()
            );
            Ok(Adjusted::Deflated(n))
        } else {
            Ok(Adjusted::Settled)
        }
    }

    /// If the device has used the statistics buffer (it wants fresh
    /// numbers), refills it with `stats()` and makes it available again.
    /// Returns `true` if it answered.
    pub fn answer_stats(
        &mut self,
        stats: impl FnOnce() -> MemoryStats,
    ) -> Result<bool, BalloonError> {
        if self.stopped {
            return Err(BalloonError::Stopped);
        }
        let Some(queue) = self.stats.as_mut() else {
            return Ok(false);
        };
        let used = match queue.pop_used() {
            Ok(Some(used)) => used,
            Ok(None) => return Ok(false),
            Err(e) => return Err(self.stop(BalloonError::Queue(e))),
        };
        if Some(used.token) != self.stats_token {
            return Err(self.stop(BalloonError::Queue(QueueError::DeviceBroken)));
        }
        self.stats_token = None;
        self.offer_stats(stats())?;
        self.stats_answered += 1;
        Ok(true)
    }

    /// Gives every page back (before the driver is dropped): deflates to 0
    /// regardless of the target.
    pub fn empty(
        &mut self,
        source: &mut impl PageSource,
        wait: &mut impl Wait,
    ) -> Result<(), BalloonError> {
        while !self.pages.is_empty() {
            let n = self.pages.len().min(PFNS_PER_REQUEST);
            let at = self.pages.len() - n;
            let batch: Vec<u32> = self.pages[at..].to_vec();
            self.send(DEFLATE_QUEUE, &batch, wait)?;
            self.pages.truncate(at);
            batch.into_iter().for_each(|pfn| source.give_back(pfn));
        }
        self.write_actual()
    }

    fn offer_stats(&mut self, stats: MemoryStats) -> Result<(), BalloonError> {
        let Some(queue) = self.stats.as_mut() else {
            return Ok(());
        };
        self.stats_buffer.write_bytes(0, &stats.encode());
        let segment = Segment::readable(self.stats_buffer.device_addr(), MemoryStats::BYTES as u32);
        let token = queue.add(&[segment]).map_err(BalloonError::Queue)?;
        self.stats_token = Some(token);
        device::kick(&mut self.transport, queue);
        Ok(())
    }

    fn write_actual(&mut self) -> Result<(), BalloonError> {
        let actual = self.pages.len() as u32;
        self.transport
            .write_config(ACTUAL, &actual.to_le_bytes())
            .map_err(BalloonError::Transport)
    }

    /// One request of PFNs on `queue_index` (device-readable), waited for.
    fn send(
        &mut self,
        queue_index: u16,
        pfns: &[u32],
        wait: &mut impl Wait,
    ) -> Result<(), BalloonError> {
        let mut bytes = Vec::with_capacity(pfns.len() * 4);
        pfns.iter()
            .for_each(|p| bytes.extend_from_slice(&p.to_le_bytes()));
        self.pfns.write_bytes(0, &bytes);
        let segment = Segment::readable(self.pfns.device_addr(), bytes.len() as u32);
        let queue = if queue_index == INFLATE_QUEUE {
            &mut *self.inflate
        } else {
            &mut *self.deflate
        };
        match device::request_and_wait(&mut self.transport, queue, &[segment], wait) {
            Ok(_) => Ok(()),
            Err(RequestError::NotAdded(e)) => Err(BalloonError::Queue(e)),
            Err(RequestError::Queue(e)) => Err(self.stop(BalloonError::Queue(e))),
            Err(RequestError::TimedOut(t)) => Err(self.stop(BalloonError::TimedOut(t))),
            Err(RequestError::WrongCompletion) => {
                Err(self.stop(BalloonError::Queue(QueueError::DeviceBroken)))
            }
        }
    }

    /// Resets the device and refuses further work. The pages stay in the
    /// balloon's list (the caller may give them back with
    /// [`BalloonDevice::take_pages_after_reset`]): after the reset the host
    /// no longer holds them.
    fn stop(&mut self, error: BalloonError) -> BalloonError {
        log::warn!(
            "{}: virtio-balloon stopped: {error}",
            self.transport.location()
        );
        if self.reset_or_keep() {
            self.inflate.reset(|_| {});
            self.deflate.reset(|_| {});
            if let Some(q) = self.stats.as_mut() {
                q.reset(|_| {});
            }
        }
        self.stats_token = None;
        self.stopped = true;
        error
    }

    /// Resets the device; `false` if it never acknowledged, and may still
    /// read and write its rings and buffers: they are then kept for ever,
    /// never freed (`hal::DeviceVisible`), and the device is not reset
    /// again.
    fn reset_or_keep(&mut self) -> bool {
        let dead = self.is_dead();
        device::reset_unless_dead(&mut self.transport, "virtio-balloon", dead, || {
            self.inflate.keep_forever();
            self.deflate.keep_forever();
            self.stats.keep_forever();
            self.pfns.keep_forever();
            self.stats_buffer.keep_forever();
        })
    }

    /// `true` once the device failed to acknowledge a reset: its memory is
    /// kept, and the pages in the balloon are never given back (the host
    /// may still hold them).
    pub fn is_dead(&self) -> bool {
        self.inflate.is_kept_forever()
    }

    /// After a device error (the device is reset, so it holds no pages):
    /// every page the balloon held, for the caller to give back. Nothing
    /// if the device is dead: it never confirmed it let them go.
    pub fn take_pages_after_reset(&mut self) -> Vec<u32> {
        if self.stopped && !self.is_dead() {
            core::mem::take(&mut self.pages)
        } else {
            Vec::new()
        }
    }
}

impl<H: Hal, T: Transport> Drop for BalloonDevice<H, T> {
    /// Resets the device before its buffers are freed. Pages still in the
    /// balloon are the caller's to give back first ([`BalloonDevice::empty`]).
    /// A device that never acknowledges keeps its memory.
    fn drop(&mut self) {
        self.reset_or_keep();
    }
}
