// ANCHOR: all (docs/09-adding-a-driver.md includes this file by these markers)
//! # virtio-rng: random bytes from the host (virtio 1.2 §5.4)
//!
//! The smallest device of the specification, and the worked example of the
//! book's "Adding a driver" chapter (`docs/09-adding-a-driver.md`). §5.4 in
//! full: one virtqueue, requestq (§5.4.2); no device-specific feature bits
//! (§5.4.3); no device configuration (§5.4.4); "when the driver requires
//! random bytes, it places the descriptor of one or more buffers in the
//! queue. It will be completely filled by random data by the device"
//! (§5.4.6).
//!
//! What this driver does with that:
//!
//! - bring-up through the shared §3.1.1 code ([`crate::device::bring_up`]),
//!   accepting no device bits (there are none) and the ring features the
//!   caller allows (split or packed, event indices) except indirect
//!   descriptors (a request is one descriptor);
//! - one request at a time: a chain of one device-writable buffer and
//!   nothing readable (§5.4.6.1: the driver "MUST NOT place driver-readable
//!   buffers into the queue"), in one [`DmaRegion`];
//! - the used length is the number of random bytes (§5.4.6.1: the driver
//!   "MUST examine the length written by the device"); [`Ring::pop_used`]
//!   already refuses a length beyond the buffer, and a length of 0 breaks
//!   §5.4.6.2 ("the device MUST place one or more random bytes into the
//!   buffer"), so it is an error, not a retry forever;
//! - waiting through a caller's [`Wait`] with the race-free interrupt wait
//!   ([`crate::irq::wait_until_used`]); a device that breaks a rule or
//!   never answers is reset (so it can no longer write into the buffer)
//!   and the driver refuses further reads with [`RngError::Stopped`].
//!
//! Host tests: `cargo test -p tests --test rng` (the device model is
//! `tests/src/rng_model.rs`).

use core::fmt;

use hal::{DeviceVisible, DmaRegion, Hal, HalError};

use crate::device::{self, DeviceError, QueueSpec, RequestError, Wait, WaitTimeout};
use crate::features;
use crate::queue::{QueueError, Ring, Segment, Virtqueue};
use crate::transport::{DeviceType, Transport};

// ANCHOR: layout
/// The one queue: requestq (§5.4.2).
pub const REQUEST_QUEUE: u16 = 0;
/// Descriptors to ask for: one request is in flight at a time (one
/// descriptor), so a small ring is plenty.
const QUEUE_SIZE_WANTED: u16 = 4;
/// Bytes asked for per request. QEMU fills a buffer of any size at once;
/// a larger read is several requests.
pub const REQUEST_BYTES: usize = 256;
/// Device-specific feature bits this driver implements: none exist (§5.4.3).
pub const DRIVER_FEATURES: u64 = 0;
// ANCHOR_END: layout

/// What can go wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RngError {
    /// Bring-up failed: wrong device type, §3.1.1, the queue.
    Device(DeviceError),
    /// No DMA memory for the buffer.
    Dma(HalError),
    /// The ring refused the request, or the device broke a ring rule (a
    /// used length beyond the buffer, an unknown id): the device was reset.
    Queue(QueueError),
    /// The device did not answer within the caller's wait: it was reset.
    TimedOut(WaitTimeout),
    /// The device answered with 0 bytes (§5.4.6.2 forbids it): it was reset.
    NoBytes,
    /// The device completed a request this driver does not have in flight:
    /// it was reset.
    WrongCompletion,
    /// An earlier error stopped the device; this driver reads no more.
    Stopped,
}

impl fmt::Display for RngError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RngError::Device(e) => write!(f, "{e}"),
            RngError::Dma(e) => write!(f, "DMA memory: {e:?}"),
            RngError::Queue(e) => write!(f, "requestq: {e} (device reset)"),
            RngError::TimedOut(t) => write!(f, "no answer: {t} (device reset)"),
            RngError::NoBytes => {
                f.write_str("the device returned 0 bytes, which §5.4.6.2 forbids (device reset)")
            }
            RngError::WrongCompletion => {
                f.write_str("the device completed a request not in flight (device reset)")
            }
            RngError::Stopped => f.write_str("stopped after an earlier device error"),
        }
    }
}

impl From<DeviceError> for RngError {
    fn from(e: DeviceError) -> Self {
        RngError::Device(e)
    }
}

impl From<HalError> for RngError {
    fn from(e: HalError) -> Self {
        RngError::Dma(e)
    }
}

/// What the driver has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RngStats {
    /// Requests completed.
    pub requests: u64,
    /// Random bytes received.
    pub bytes: u64,
}

// ANCHOR: new
/// A virtio-rng device: hands out the bytes the device writes.
pub struct RngDevice<H: Hal, T: Transport> {
    transport: T,
    /// requestq. Kept for ever, not freed, if the device never
    /// acknowledges a reset (`device::reset_or_keep`).
    queue: DeviceVisible<Virtqueue<H>>,
    /// The one buffer the device fills, [`REQUEST_BYTES`] long (kept like
    /// the ring).
    buffer: DeviceVisible<DmaRegion<H>>,
    /// What was negotiated (ring features only: §5.4.3 defines no others).
    features: u64,
    /// Set once a device error reset the device.
    stopped: bool,
    stats: RngStats,
}

impl<H: Hal, T: Transport> RngDevice<H, T> {
    /// Brings the device up (§3.1.1 through [`device::bring_up`]), with the
    /// ring features `ring_features` allows (normally
    /// [`features::SHARED_RING_FEATURES`], plus RING_PACKED to allow a
    /// packed ring) minus indirect descriptors, which a one-descriptor
    /// request never needs.
    pub fn new(mut transport: T, ring_features: u64) -> Result<Self, RngError> {
        device::expect_device_type(&transport, DeviceType::Entropy)?;
        let buffer = DmaRegion::new(transport.dma_owner(), REQUEST_BYTES)?;
        // Step 7 of §3.1.1: the device has no configuration (§5.4.4), so
        // it is only requestq. One descriptor per request: no indirect tables.
        // A request is one descriptor, so an indirect table would only cost
        // memory: RING_INDIRECT_DESC is not accepted even when allowed.
        let ring_features = ring_features & !features::RING_INDIRECT_DESC;
        let (queue, features) = device::bring_up(
            &mut transport,
            DRIVER_FEATURES,
            ring_features,
            |transport, negotiated| {
                let spec = QueueSpec::new(QUEUE_SIZE_WANTED).with_indirect_capacity(0);
                let mut queue =
                    device::setup_queue_with::<H, _>(transport, REQUEST_QUEUE, spec, negotiated)?;
                // Interrupts only while a reader waits (`wait_until_used`).
                queue.disable_interrupts();
                Ok::<_, RngError>(queue)
            },
        )?;
        Ok(Self {
            transport,
            queue: DeviceVisible::new(queue),
            buffer: DeviceVisible::new(buffer),
            features,
            stopped: false,
            stats: RngStats::default(),
        })
    }
    // ANCHOR_END: new

    /// The negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably (the kernel routes interrupts through it).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// requestq.
    pub fn queue(&self) -> &Virtqueue<H> {
        &self.queue
    }

    /// `true` after a device error: reads fail with [`RngError::Stopped`].
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Requests and bytes so far.
    pub fn stats(&self) -> RngStats {
        self.stats
    }

    /// Hands requestq's ring, with its name, to `visit`: a read-only look
    /// for the live queue view (`crate::view`).
    pub fn visit_rings(&self, mut visit: impl FnMut(&dyn fmt::Display, &Virtqueue<H>)) {
        visit(&"requestq", &self.queue);
    }

    // ANCHOR: fill
    /// Fills all of `out` with random bytes from the device, one request of
    /// at most [`REQUEST_BYTES`] after another, waiting through `wait`.
    pub fn fill(&mut self, out: &mut [u8], wait: &mut impl Wait) -> Result<(), RngError> {
        let mut filled = 0;
        while filled < out.len() {
            let want = (out.len() - filled).min(REQUEST_BYTES);
            let got = self.request(want, wait)?;
            // `got <= want`: `pop_used` refuses a length beyond the buffer
            // we described, which was `want` bytes long.
            self.buffer.read_bytes(0, &mut out[filled..filled + got]);
            filled += got;
        }
        Ok(())
    }

    /// One request: a `len`-byte device-writable buffer, and the number of
    /// bytes the device says it wrote (1 to `len`).
    fn request(&mut self, len: usize, wait: &mut impl Wait) -> Result<usize, RngError> {
        if self.stopped {
            return Err(RngError::Stopped);
        }
        // §5.4.6.1: writable only. `len` is at most REQUEST_BYTES (256).
        let buffer = Segment::writable(self.buffer.device_addr(), len as u32);
        let used = match device::request_and_wait(
            &mut self.transport,
            &mut *self.queue,
            &[buffer],
            wait,
        ) {
            Ok(used) => used,
            Err(RequestError::NotAdded(error)) => return Err(RngError::Queue(error)),
            Err(RequestError::Queue(error)) => return Err(self.stop(RngError::Queue(error))),
            Err(RequestError::TimedOut(timeout)) => {
                return Err(self.stop(RngError::TimedOut(timeout)))
            }
            Err(RequestError::WrongCompletion) => return Err(self.stop(RngError::WrongCompletion)),
        };
        // §5.4.6.1: "MUST examine the length written by the device".
        if used.len == 0 {
            return Err(self.stop(RngError::NoBytes));
        }
        self.stats.requests += 1;
        self.stats.bytes += u64::from(used.len);
        log::trace!(
            "{}: rng: asked for {len} bytes in one device-writable buffer, the device wrote {}",
            self.transport.location(),
            used.len
        );
        Ok(used.len as usize)
    }
    // ANCHOR_END: fill

    /// Resets the device, so it can no longer write into the buffer,
    /// forgets what was in flight, and refuses further reads. Returns `error`.
    fn stop(&mut self, error: RngError) -> RngError {
        log::warn!("{}: virtio-rng stopped: {error}", self.transport.location());
        if self.reset_or_keep() {
            self.queue.reset(|_| {});
        }
        self.stopped = true;
        error
    }

    /// Resets the device; `false` if it never acknowledged, and may still
    /// write the ring and the buffer: they are then kept for ever, never
    /// freed (`hal::DeviceVisible`), and the device is not reset again.
    fn reset_or_keep(&mut self) -> bool {
        let dead = self.queue.is_kept_forever();
        device::reset_unless_dead(&mut self.transport, "virtio-rng", dead, || {
            self.queue.keep_forever();
            self.buffer.keep_forever();
        })
    }
}

// ANCHOR: drop
impl<H: Hal, T: Transport> Drop for RngDevice<H, T> {
    /// Resets the device before the ring and the buffer are freed (§2.1.2),
    /// or keeps them if it never acknowledges.
    fn drop(&mut self) {
        self.reset_or_keep();
    }
}
// ANCHOR_END: drop
// ANCHOR_END: all
