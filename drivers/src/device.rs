//! # Shared device plumbing: bring-up, queues, waiting
//!
//! Every virtio device driver (block, net, console) starts the same way and
//! waits the same way; this module holds those common pieces so each driver
//! only writes what is specific to its device (virtio 1.2 §5).
//!
//! - [`bring_up`]: the whole initialisation sequence of §3.1.1 around a
//!   device-specific step 7. It runs [`crate::init::begin_with`] (reset,
//!   ACKNOWLEDGE, DRIVER, feature negotiation with the features the device
//!   driver declares, FEATURES_OK), hands the transport and the negotiated
//!   features to the driver's setup closure (read configuration, create
//!   queues), and then sets DRIVER_OK. If the closure fails, the device is
//!   marked FAILED (dropping an unfinished [`crate::init::DeviceInit`] does
//!   that) and the closure's error comes back.
//! - [`setup_queue`] / [`setup_queue_with`]: one virtqueue (§2.6-§2.8,
//!   §4.x "Virtqueue Configuration"): read the device's maximum size, pick a
//!   size ([`RingKind::choose_size`]), build a [`Virtqueue`] (split, or packed
//!   when VIRTIO_F_RING_PACKED was negotiated) in the layout the transport
//!   requires, with event indices and indirect tables exactly when those
//!   features were negotiated, and program its addresses.
//!   [`setup_split_queue`] / [`setup_split_queue_with`] do the same for
//!   drivers that only use split rings (they refuse when a packed ring was
//!   negotiated).
//! - [`kick`]: publish what a queue has queued and notify the device only if
//!   the queue says it must (§2.7.13.4, §2.8.21.3); any [`Ring`].
//! - [`request_and_wait`]: one request at a time, the way the rng, 9p,
//!   balloon and gpu drivers talk to their devices: add a chain, kick, wait
//!   for it to come back, check it is the one just added.
//! - [`Wait`] and [`BoundedWait`]: how a blocking helper waits for a device
//!   without spinning forever. The caller decides what waiting *is*: the
//!   kernel halts until the next interrupt (or spins, in polling mode), host
//!   tests step a device model. Every wait can fail with [`WaitTimeout`],
//!   which the helper turns into a timeout error after cleaning up. The
//!   interrupt code plugs in here ([`crate::irq::InterruptWait`]): a `Wait`
//!   whose [`Wait::sleeps_until_interrupt`] is `true` makes the helper
//!   re-arm the queue's interrupts and re-check the ring before each wait.

use core::fmt;

use hal::Hal;

use crate::features;
use crate::init::{self, InitError};
use crate::queue::{
    MemoryOrder, NotifyDecision, QueueAddresses, QueueConfig, QueueError, Ring, RingKind, Segment,
    SplitQueue, Used, Virtqueue,
};
use crate::transport::{DeviceType, Transport, TransportError};

/// Entries per indirect descriptor table when the caller does not say
/// ([`setup_queue`]). Big enough for a request of 14 data buffers plus a
/// header and a status; costs `queue size * 16 * 16` bytes of DMA memory.
pub const DEFAULT_INDIRECT_CAPACITY: u16 = 16;

/// What can stop a device from coming up or a queue from being set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceError {
    /// The transport reports another device type than the driver drives.
    WrongDeviceType {
        /// What the driver drives.
        expected: DeviceType,
        /// What the transport reports.
        found: DeviceType,
    },
    /// The §3.1.1 sequence failed (reset, features refused, needs reset, ...).
    Init(InitError),
    /// A transport operation failed during device setup.
    Transport(TransportError),
    /// VIRTIO_F_RING_PACKED was negotiated but the caller builds split
    /// rings only ([`setup_split_queue`]); use [`setup_queue`], or leave
    /// RING_PACKED out of the ring features.
    SplitRingOnly {
        /// The queue being set up.
        queue: u16,
    },
    /// Queue `queue` could not be created.
    Queue {
        /// The queue's index on its device.
        queue: u16,
        /// Why.
        error: QueueError,
    },
    /// The device never acknowledged a reset ([`TransportError::ResetTimeout`]):
    /// it may still read and write its rings and buffers, so the driver keeps
    /// that memory for ever (`hal::DeviceVisible`) and never touches the
    /// device again. See [`reset_or_keep`].
    Dead,
}

impl From<InitError> for DeviceError {
    fn from(e: InitError) -> Self {
        DeviceError::Init(e)
    }
}

impl From<TransportError> for DeviceError {
    fn from(e: TransportError) -> Self {
        DeviceError::Transport(e)
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DeviceError::WrongDeviceType { expected, found } => {
                write!(f, "expected a {expected} device, found {found}")
            }
            DeviceError::Init(e) => write!(f, "initialisation: {e}"),
            DeviceError::Transport(e) => write!(f, "transport: {e}"),
            DeviceError::SplitRingOnly { queue } => write!(
                f,
                "queue {queue}: a packed ring was negotiated, but this driver builds split rings"
            ),
            DeviceError::Queue { queue, error } => write!(f, "queue {queue}: {error}"),
            DeviceError::Dead => f.write_str(
                "the device never acknowledged a reset: its memory is kept and it is not used again",
            ),
        }
    }
}

/// Resets the device before its driver frees or reuses the memory the device
/// was given. `Ok` when the device acknowledged (§2.1.2: the status reads 0
/// again), and the memory is the driver's again. `Err(DeviceError::Dead)`
/// when it did not, within [`crate::transport::RESET_TIMEOUT_US`]: the device
/// may still be doing DMA, so the caller must keep that memory for ever
/// (`hal::DeviceVisible::keep_forever`) rather than free it, and must not
/// use the device again. FAILED is set then, for anyone looking at it.
pub fn reset_or_keep<T: Transport + ?Sized>(
    transport: &mut T,
    driver: &str,
) -> Result<(), DeviceError> {
    match transport.reset() {
        Ok(()) => Ok(()),
        Err(error) => {
            log::error!(
                "{}: {driver}: {error}; the device may still write its memory, which is kept (leaked), and the device is dead",
                transport.location()
            );
            // On top of what the status reads (§2.1.1: FAILED is a bit the
            // driver adds; the device never cleared the others).
            let status = transport.status() | crate::transport::DeviceStatus::FAILED;
            transport.set_status(status);
            Err(DeviceError::Dead)
        }
    }
}

/// [`reset_or_keep`] for a driver whose memory may already be kept: a
/// device already `dead` (an earlier reset never finished) is not reset
/// again; one that does not acknowledge now has `keep` mark every piece of
/// memory it was given as kept for ever. `true` when the device
/// acknowledged and the memory is the driver's again.
pub fn reset_unless_dead<T: Transport + ?Sized>(
    transport: &mut T,
    driver: &str,
    dead: bool,
    keep: impl FnOnce(),
) -> bool {
    if dead {
        return false;
    }
    if reset_or_keep(transport, driver).is_err() {
        keep();
        return false;
    }
    true
}

/// Checks that `transport` leads to a device of type `expected`.
pub fn expect_device_type<T: Transport + ?Sized>(
    transport: &T,
    expected: DeviceType,
) -> Result<(), DeviceError> {
    let found = transport.device_type();
    if found == expected {
        Ok(())
    } else {
        Err(DeviceError::WrongDeviceType { expected, found })
    }
}

/// Runs the whole initialisation sequence (§3.1.1) around a device-specific
/// step 7.
///
/// - `driver_features`: the device-specific feature bits the driver
///   implements (the shared code intersects them with the offer);
/// - `ring_features`: the ring features to accept when offered, normally
///   [`features::SHARED_RING_FEATURES`] (indirect descriptors and event
///   indices); pass less to run without one of them;
/// - `setup`: step 7. It gets the transport and the negotiated features,
///   reads configuration and sets up queues, and returns whatever the driver
///   needs to keep (its queues, its configuration).
///
/// Returns the setup's result and the negotiated features once DRIVER_OK is
/// set. On any error the device is left with FAILED set.
pub fn bring_up<T, R, E, F>(
    transport: &mut T,
    driver_features: u64,
    ring_features: u64,
    setup: F,
) -> Result<(R, u64), E>
where
    T: Transport + ?Sized,
    E: From<DeviceError>,
    F: FnOnce(&mut T, u64) -> Result<R, E>,
{
    let mut device = init::begin_with(transport, driver_features, ring_features)
        .map_err(|e| E::from(DeviceError::Init(e)))?;
    let negotiated = device.features();
    // An error here drops `device` unfinished, which sets FAILED.
    let ready = setup(device.transport(), negotiated)?;
    let negotiated = device.finish().map_err(|e| E::from(DeviceError::Init(e)))?;
    Ok((ready, negotiated))
}

/// How one queue should be built; see [`setup_queue_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSpec {
    /// The most descriptors the driver wants to spend on this queue (the
    /// device's maximum, rounded down to a power of two, is used if smaller).
    pub max_size: u16,
    /// Entries per indirect table if VIRTIO_F_INDIRECT_DESC was negotiated
    /// (capped at the queue size); 0 to use direct chains only.
    pub indirect_capacity: u16,
}

impl QueueSpec {
    /// At most `max_size` descriptors, [`DEFAULT_INDIRECT_CAPACITY`]-entry indirect tables.
    pub const fn new(max_size: u16) -> Self {
        Self {
            max_size,
            indirect_capacity: DEFAULT_INDIRECT_CAPACITY,
        }
    }

    /// Uses indirect tables of `capacity` entries (0: none).
    pub const fn with_indirect_capacity(mut self, capacity: u16) -> Self {
        self.indirect_capacity = capacity;
        self
    }
}

/// Creates virtqueue `index` with at most `driver_cap` descriptors, in the
/// ring layout `negotiated` calls for (packed with VIRTIO_F_RING_PACKED,
/// split otherwise), with event indices and
/// ([`DEFAULT_INDIRECT_CAPACITY`]-entry) indirect tables if `negotiated`
/// says so, and programs it into the transport.
pub fn setup_queue<H: Hal, T: Transport + ?Sized>(
    transport: &mut T,
    index: u16,
    driver_cap: u16,
    negotiated: u64,
) -> Result<Virtqueue<H>, DeviceError> {
    setup_queue_with(transport, index, QueueSpec::new(driver_cap), negotiated)
}

/// [`setup_queue`] with an explicit [`QueueSpec`].
///
/// The steps are those of "Virtqueue Configuration" in each transport's
/// chapter (§4.1.5.1.3, §4.2.3.2): select the queue and read its maximum
/// size (0: no such queue), choose a size (a power of two for the split
/// ring; legacy PCI cannot choose: the maximum is the size), allocate the
/// rings in the layout the transport needs, and write their addresses (the
/// transport also makes the queue live: queue_enable, QueueReady or
/// QueuePFN).
pub fn setup_queue_with<H: Hal, T: Transport + ?Sized>(
    transport: &mut T,
    index: u16,
    spec: QueueSpec,
    negotiated: u64,
) -> Result<Virtqueue<H>, DeviceError> {
    let kind = RingKind::from_features(negotiated);
    let (config, device_max) = queue_config(transport, index, spec, negotiated, kind)?;
    let queue = Virtqueue::<H>::new(kind, config).map_err(|error| DeviceError::Queue {
        queue: index,
        error,
    })?;
    program(transport, index, &queue.addresses(), kind, device_max, spec)?;
    Ok(queue)
}

/// Creates split virtqueue `index` (see [`setup_queue`]), for drivers
/// that only use split rings. Refuses with [`DeviceError::SplitRingOnly`]
/// if VIRTIO_F_RING_PACKED was negotiated: the device would read the ring
/// as packed.
pub fn setup_split_queue<H: Hal, T: Transport + ?Sized>(
    transport: &mut T,
    index: u16,
    driver_cap: u16,
    negotiated: u64,
) -> Result<SplitQueue<H>, DeviceError> {
    setup_split_queue_with(transport, index, QueueSpec::new(driver_cap), negotiated)
}

/// [`setup_split_queue`] with an explicit [`QueueSpec`].
pub fn setup_split_queue_with<H: Hal, T: Transport + ?Sized>(
    transport: &mut T,
    index: u16,
    spec: QueueSpec,
    negotiated: u64,
) -> Result<SplitQueue<H>, DeviceError> {
    let kind = RingKind::from_features(negotiated);
    if kind != RingKind::Split {
        return Err(DeviceError::SplitRingOnly { queue: index });
    }
    let (config, device_max) = queue_config(transport, index, spec, negotiated, kind)?;
    let queue = SplitQueue::<H>::new(config).map_err(|error| DeviceError::Queue {
        queue: index,
        error,
    })?;
    program(transport, index, &queue.addresses(), kind, device_max, spec)?;
    Ok(queue)
}

/// Reads the queue's maximum size and works out its configuration.
fn queue_config<T: Transport + ?Sized>(
    transport: &mut T,
    index: u16,
    spec: QueueSpec,
    negotiated: u64,
    kind: RingKind,
) -> Result<(QueueConfig, u16), DeviceError> {
    let device_max = transport.max_queue_size(index)?;
    let size = kind
        .choose_size(device_max, spec.max_size, transport.queue_size_is_fixed())
        .map_err(|error| DeviceError::Queue {
            queue: index,
            error,
        })?;
    let event_idx = negotiated & features::RING_EVENT_IDX != 0;
    let indirect_capacity = if negotiated & features::RING_INDIRECT_DESC != 0 {
        spec.indirect_capacity.min(size)
    } else {
        0
    };
    let config = QueueConfig::new(index, size, transport.ring_layout())
        .with_owner(transport.dma_owner())
        .with_event_idx(event_idx)
        .with_indirect(indirect_capacity)
        .with_order(MemoryOrder::from_features(negotiated));
    Ok((config, device_max))
}

/// Gives the queue's addresses to the transport (which makes it live).
fn program<T: Transport + ?Sized>(
    transport: &mut T,
    index: u16,
    addresses: &QueueAddresses,
    kind: RingKind,
    device_max: u16,
    spec: QueueSpec,
) -> Result<(), DeviceError> {
    transport.setup_queue(index, addresses)?;
    log::trace!(
        "{}: queue {index}: {kind} ring; device allows {device_max} descriptors, driver asked for at most {}, using {}",
        transport.location(),
        spec.max_size,
        addresses.size
    );
    Ok(())
}

/// Publishes everything added to `queue` since its last publish and, if the
/// queue decides the device must be told, notifies it through the
/// transport. Returns `true` if a notification was sent.
#[inline]
pub fn kick<R: Ring + ?Sized, T: Transport + ?Sized>(transport: &mut T, queue: &mut R) -> bool {
    match queue.publish() {
        NotifyDecision::Notify => {
            transport.notify(queue.index());
            true
        }
        NotifyDecision::Suppressed | NotifyDecision::NothingNew => false,
    }
}

/// Why [`request_and_wait`] returned no completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// The queue refused the chain (no room, too long, ...). The device
    /// never saw it, so nothing needs resetting.
    NotAdded(QueueError),
    /// The used ring broke a rule (§2.7.14). The device saw the request:
    /// the caller resets it (§2.4) before reusing the buffers.
    Queue(QueueError),
    /// The wait gave up. The device may still own the buffers: the caller
    /// resets it.
    TimedOut(WaitTimeout),
    /// The device returned another chain than the one just added (only one
    /// is ever in flight): the caller resets it.
    WrongCompletion,
}

/// One request on a queue that has nothing else in flight: adds `chain`
/// (§2.7.13 "Supplying Buffers to The Device"), publishes it and notifies
/// the device if the queue says so ([`kick`], §2.7.13.4), then collects
/// used buffers (§2.7.14 "Receiving Used Buffers From The Device"), waiting
/// between looks with [`crate::irq::wait_until_used`] (interrupts re-armed
/// and the ring looked at again before each sleep, §2.7.7), and checks the
/// completion is the chain just added.
///
/// Returns the used element (`len` already checked against the chain's
/// writable length by `pop_used`). On error only [`RequestError::NotAdded`]
/// leaves the device untouched; after the others the caller resets the
/// device before the buffers are reused (its own `stop`).
pub fn request_and_wait<T, R, W>(
    transport: &mut T,
    queue: &mut R,
    chain: &[Segment],
    wait: &mut W,
) -> Result<Used, RequestError>
where
    T: Transport + ?Sized,
    R: Ring + ?Sized,
    W: Wait + ?Sized,
{
    let token = queue.add(chain).map_err(RequestError::NotAdded)?;
    kick(transport, queue);
    let used = loop {
        if let Some(used) = queue.pop_used().map_err(RequestError::Queue)? {
            break used;
        }
        crate::irq::wait_until_used(
            wait,
            queue,
            |q| q.enable_interrupts(),
            |q| q.disable_interrupts(),
        )
        .map_err(RequestError::TimedOut)?;
    };
    if used.token != token {
        return Err(RequestError::WrongCompletion);
    }
    Ok(used)
}

/// The caller's wait gave up (its budget of waits or time ran out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitTimeout {
    /// How many waits were made before giving up.
    pub waits: u64,
}

impl fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gave up after {} waits", self.waits)
    }
}

/// How a blocking helper waits for the device to make progress.
///
/// A helper calls [`Wait::wait`] only after it has collected every
/// completion already there, so an implementation may sleep until
/// something happens: halt until the next interrupt, spin for a while in
/// polling mode, or (host tests) let a device model run. It returns
/// `Err(WaitTimeout)` to give up; the helper then stops the device from
/// touching the request's buffers (a reset) and returns a timeout error.
/// It must give up eventually, or a dead device hangs its caller.
pub trait Wait {
    /// Waits once. `Err` means: stop waiting, the device is not coming back.
    fn wait(&mut self) -> Result<(), WaitTimeout>;

    /// `true` if [`Wait::wait`] sleeps until the device interrupts (see
    /// [`crate::irq::InterruptWait`]). A helper then suppresses used-buffer
    /// interrupts while it collects completions, and before each wait asks
    /// for them again with the queue's `enable_interrupts`, collecting
    /// instead of waiting if that re-check finds entries (virtio 1.2
    /// §2.7.7: the device may have used them before it saw the request).
    /// `false` (the default): the wait polls, and interrupts are not needed.
    fn sleeps_until_interrupt(&self) -> bool {
        false
    }
}

impl<W: Wait + ?Sized> Wait for &mut W {
    fn wait(&mut self) -> Result<(), WaitTimeout> {
        (**self).wait()
    }

    fn sleeps_until_interrupt(&self) -> bool {
        (**self).sleeps_until_interrupt()
    }
}

/// A [`Wait`] made of a step (`FnMut()`: halt, spin, step a model) and a
/// limit on how many steps one blocking call may take.
///
/// The budget is per `BoundedWait`, not per request: create one per
/// blocking call (it is cheap), or call [`BoundedWait::restart`].
#[derive(Debug, Clone)]
pub struct BoundedWait<F> {
    step: F,
    limit: u64,
    waits: u64,
}

impl<F: FnMut()> BoundedWait<F> {
    /// Waits by calling `step`, at most `limit` times.
    pub fn new(limit: u64, step: F) -> Self {
        Self {
            step,
            limit,
            waits: 0,
        }
    }

    /// Waits made so far.
    pub fn waits(&self) -> u64 {
        self.waits
    }

    /// Makes the whole budget available again.
    pub fn restart(&mut self) {
        self.waits = 0;
    }
}

impl<F: FnMut()> Wait for BoundedWait<F> {
    fn wait(&mut self) -> Result<(), WaitTimeout> {
        if self.waits >= self.limit {
            return Err(WaitTimeout { waits: self.waits });
        }
        self.waits += 1;
        (self.step)();
        Ok(())
    }
}
