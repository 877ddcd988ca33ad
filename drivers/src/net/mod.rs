//! # virtio-net: the network card driver (virtio 1.2 §5.1)
//!
//! A virtio network device moves Ethernet frames through two queues: the
//! driver gives it empty buffers on the **receive queue** (0) and full ones
//! on the **transmit queue** (1); a third, the **control queue** (2), exists
//! with VIRTIO_NET_F_CTRL_VQ for changing the receive filter and the MAC
//! address. Every frame travels behind a small header ([`header`]) that
//! describes offloads; this driver negotiates none, so the header it sends
//! is zeroes and the one it receives must say "nothing to do".
//!
//! ## Bringing the device up (§5.1.5)
//!
//! [`NetDevice::new`] runs the initialisation sequence of §3.1.1 through
//! [`crate::device::bring_up`], accepting what [`SUPPORTED_FEATURES`] lists
//! (MAC, STATUS, MRG_RXBUF, CTRL_VQ, CTRL_RX, CTRL_MAC_ADDR, MTU, and on
//! legacy devices ANY_LAYOUT) plus the ring features INDIRECT_DESC and
//! EVENT_IDX. In step 7 it reads the configuration ([`NetInfo`]), decides
//! the header length and buffer sizes, creates the queues and fills the
//! receive queue with buffers; after DRIVER_OK it publishes them (a driver
//! must not notify before DRIVER_OK, §3.1.1).
//!
//! ## Moving frames
//!
//! The two data queues are separate objects ([`RxQueue`], [`TxQueue`]) that
//! a caller can hold at the same time ([`NetDevice::queues`]), which is what
//! a network stack needs: smoltcp, for one, answers a received packet from
//! inside the code that reads it.
//!
//! - **Receive** ([`RxQueue::receive`]) hands out an [`RxPacket`] that
//!   borrows the DMA buffer the device wrote (no copy), or, for a packet
//!   the device spread over several buffers (MRG_RXBUF), a frame assembled
//!   once into a preallocated buffer. Dropping the packet reposts its buffer,
//!   so the queue stays full.
//! - **Transmit** ([`TxQueue::send_with`]) lets the caller write the frame
//!   straight into a DMA transmit buffer. Sent buffers are reclaimed when
//!   needed, never waited for.
//! - **[`NetDevice::flush`]** publishes what both queues added since the
//!   last flush and notifies the device only where it asked to be told:
//!   one flush after a burst of sends is one notification at most.
//!
//! ## Link status and the control queue
//!
//! With VIRTIO_NET_F_STATUS the link state is in the configuration space,
//! and a change raises a configuration interrupt
//! ([`NetDevice::handle_interrupt`] → [`NetDevice::handle_config_change`]).
//! While the device reports the link down, [`NetDevice::flush`] publishes
//! frames but holds back the transmit notification (QEMU's packed ring
//! breaks its transmit queue when kicked then; see there).
//! Promiscuous and all-multicast modes and the MAC address go through the
//! control queue ([`ctrl`]) when the device has one.
//!
//! ## Several queue pairs (VIRTIO_NET_F_MQ, §5.1.6.5.5)
//!
//! A device with VIRTIO_NET_F_MQ has `max_virtqueue_pairs` receive/transmit
//! pairs: receiveqN is queue 2(N-1), transmitqN queue 2(N-1)+1, and the
//! control queue comes after *all* of them, at `2 * max_virtqueue_pairs`,
//! however many the driver uses (§5.1.2). The driver accepts MQ only when
//! [`NetOptions::max_queue_pairs`] allows more than one pair (the kernel
//! asks for one per online CPU), sets up
//! `min(max_virtqueue_pairs, max_queue_pairs)` pairs and fills every
//! receive queue; the device still uses only the first pair until
//! [`NetDevice::start_multiqueue`] sends VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET
//! (after DRIVER_OK: it is a control command). From then on the device
//! steers each flow's received packets to one receive queue ("automatic
//! receive steering": the queue of the transmit queue the flow's packets
//! were last sent on, §5.1.6.5.5, or a hash of the flow), and the driver
//! may send on any active pair ([`NetDevice::pair`]).
//!
//! Every queue of every pair sits behind a lock of its own, so CPUs each
//! on their own pair can send at once through `&NetDevice`
//! ([`NetDevice::lock_tx`], [`per_pair`]); everything that changes the card
//! as a whole keeps taking `&mut NetDevice`.
//!
//! With VIRTIO_NET_F_RSS as well, `start_multiqueue` sends the driver's
//! receive-side scaling configuration instead ([`rss`]: hash key,
//! indirection table, hash types), and the device spreads flows by their
//! hash; if the device refuses it, VQ_PAIRS_SET follows.
//!
//! A device that reports an impossible `max_virtqueue_pairs` (0, above
//! 0x8000, or 0x8000, which would put the control queue at index 65536), or
//! whose extra queues cannot be set up, is brought up again without MQ, on
//! one pair, with a warning; a VQ_PAIRS_SET the device rejects leaves the
//! driver on the first pair (the device's default). Neither is fatal.
//!
//! ## Memory
//!
//! Per device, allocated once at bring-up: three rings, one receive buffer
//! per receive descriptor, one transmit buffer per transmit descriptor, one
//! page for control commands, and (with MRG_RXBUF) one assembly buffer. No
//! allocation happens per packet.
//!
//! ## Narration
//!
//! At trace level each packet is narrated (its size, how many buffers, in
//! place or assembled; each transmit buffer and its reclaim), next to the
//! queue's own narration of descriptors, indices and notification decisions.
//! Dropped packets are warnings, so a misbehaving device shows up in a
//! normal log.

pub mod buffers;
pub mod config;
pub mod ctrl;
pub mod header;
mod pairs;
pub mod per_pair;
pub mod rss;
pub mod rx;
pub mod tx;

pub use config::{
    feature, MacAddress, NetInfo, QUEUE_PAIRS_MAX, QUEUE_PAIRS_MIN, SUPPORTED_FEATURES,
};
pub use ctrl::{CtrlQueue, CtrlStats};
pub use pairs::{
    ctrl_queue_of, rx_queue_of, tx_queue_of, vq_pairs_set_command, PairStats, QueuePair,
    MAX_QUEUE_PAIRS,
};
pub use per_pair::{PairRx, PairTx};
pub use rx::{RxPacket, RxQueue, RxStats};
pub use tx::{TxQueue, TxSlot, TxStats};

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use hal::{DeviceVisible, Hal};
use log::{debug, warn};

use crate::device::{self, DeviceError, QueueSpec, Wait};
use crate::features::{self, FeatureNames};
use crate::init::{self, InitError};
use crate::queue::{QueueCounters, QueueError, Ring, Virtqueue};
use crate::transport::{
    DeviceType, InterruptStatus, Location, Transport, TransportError, TransportKind,
};

use alloc::vec::Vec;

use config::{offset, DEFAULT_MTU, MIN_MTU, NEEDS_CTRL_VQ};
use pairs::{queue_pair_layout, setup_pair};
use rx::RxLayout;
use tx::TxLayout;

/// The receive queue's index (§5.1.2: receiveq1).
pub const RX_QUEUE: u16 = 0;
/// The transmit queue's index (transmitq1).
pub const TX_QUEUE: u16 = 1;
/// The control queue's index without VIRTIO_NET_F_MQ (controlq).
pub const CTRL_QUEUE: u16 = 2;

/// Bytes of an Ethernet header (destination, source, EtherType).
pub const ETH_HEADER_LEN: usize = 14;
/// Bytes of an 802.1Q VLAN tag a received frame may carry.
pub const VLAN_TAG_LEN: usize = 4;
/// The smallest receive buffer without MRG_RXBUF (§5.1.6.3.1: "at least
/// 1526 bytes": a 12-byte header and a 1514-byte frame).
pub const MIN_WHOLE_PACKET_BUFFER: usize = 1526;
/// Receive buffer size with MRG_RXBUF unless the options say otherwise:
/// a full 1500-byte-MTU frame and its header fit in one, so ordinary
/// traffic is received in place; only larger packets are merged.
pub const DEFAULT_MERGEABLE_BUFFER: usize = 1536;
/// The smallest receive buffer the options may ask for with MRG_RXBUF
/// (§5.1.6.3.1: each buffer must at least hold the header; this leaves
/// room for some frame too).
pub const MIN_MERGEABLE_BUFFER: usize = 64;

/// Choices the driver makes that the device does not dictate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetOptions {
    /// Device-specific features to accept when offered (a subset of
    /// [`SUPPORTED_FEATURES`]; other bits are ignored).
    pub features: u64,
    /// Ring features to accept when offered (normally
    /// [`features::SHARED_RING_FEATURES`]).
    pub ring_features: u64,
    /// Most descriptors for the receive queue.
    pub rx_queue_size: u16,
    /// Most descriptors for the transmit queue.
    pub tx_queue_size: u16,
    /// Most descriptors for the control queue.
    pub ctrl_queue_size: u16,
    /// Bytes per receive buffer with MRG_RXBUF (at least
    /// [`MIN_MERGEABLE_BUFFER`]); smaller buffers make the device merge
    /// more often. Ignored without MRG_RXBUF, where every buffer must hold
    /// a whole packet.
    pub mergeable_buffer_len: usize,
    /// The most receive/transmit queue pairs to use (capped at
    /// [`MAX_QUEUE_PAIRS`] and the device's `max_virtqueue_pairs`). With 1,
    /// VIRTIO_NET_F_MQ is not accepted at all.
    pub max_queue_pairs: u16,
}

impl Default for NetOptions {
    fn default() -> Self {
        Self {
            features: SUPPORTED_FEATURES,
            ring_features: features::SHARED_RING_FEATURES,
            rx_queue_size: 256,
            tx_queue_size: 256,
            ctrl_queue_size: 16,
            mergeable_buffer_len: DEFAULT_MERGEABLE_BUFFER,
            max_queue_pairs: 1,
        }
    }
}

/// Everything that can go wrong with the network device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetError {
    /// Bringing the device up (or back up) failed.
    Device(DeviceError),
    /// A transport operation failed (a configuration read or write).
    Transport(TransportError),
    /// A queue failed; with an index error the ring is broken and the device
    /// needs [`NetDevice::recover`].
    Queue {
        /// Which queue.
        queue: u16,
        /// What happened.
        error: QueueError,
    },
    /// The device has a configuration this driver cannot work with.
    BadConfig(&'static str),
    /// The negotiated features break a dependency (CTRL_RX, MQ or
    /// CTRL_MAC_ADDR without CTRL_VQ, §5.1.3.1). The driver retries without them.
    FeatureDependency {
        /// What was negotiated.
        negotiated: u64,
    },
    /// VIRTIO_NET_F_MQ was negotiated but the device's queue pairs cannot
    /// be used: `max_virtqueue_pairs` outside what §5.1.4.1 allows, or an
    /// extra queue (or the control queue behind them) that cannot be set
    /// up. The driver retries without MQ, on one pair.
    MultiqueueUnusable {
        /// `max_virtqueue_pairs` as the device reported it.
        max_pairs: u16,
        /// What was wrong.
        why: &'static str,
    },
    /// The operation needs a feature that was not negotiated.
    NotNegotiated(&'static str),
    /// No transmit buffer or ring room is free right now: retry later.
    TxQueueFull,
    /// A frame (or control payload) that is empty or longer than allowed.
    FrameTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The device answered a control command with VIRTIO_NET_ERR.
    ControlRejected,
    /// The device answered a control command with neither OK nor ERR, or
    /// (a modern device) with a used length above the one writable byte.
    /// A shorter length is allowed (§2.7.8) and a legacy device's length
    /// ignored: the ack byte decides.
    ControlBadReply {
        /// The ack byte (`None` if unreadable).
        ack: Option<u8>,
        /// The used length.
        len: u32,
    },
    /// An earlier control command that timed out is still unanswered.
    ControlBusy,
    /// The caller's wait gave up.
    Timeout {
        /// Waits made.
        waits: u64,
    },
    /// After a reset the device negotiated other features than before.
    FeaturesChanged {
        /// Before the reset.
        before: u64,
        /// After it.
        now: u64,
    },
    /// The device was reset after a failure; call [`NetDevice::recover`].
    DeviceFailed,
}

impl From<DeviceError> for NetError {
    fn from(e: DeviceError) -> Self {
        NetError::Device(e)
    }
}

impl From<TransportError> for NetError {
    fn from(e: TransportError) -> Self {
        NetError::Transport(e)
    }
}

impl From<InitError> for NetError {
    fn from(e: InitError) -> Self {
        NetError::Device(DeviceError::Init(e))
    }
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NetError::Device(e) => write!(f, "{e}"),
            NetError::Transport(e) => write!(f, "transport: {e}"),
            NetError::Queue { queue, error } => write!(f, "queue {queue}: {error}"),
            NetError::BadConfig(what) => write!(f, "unusable device configuration: {what}"),
            NetError::FeatureDependency { negotiated } => write!(
                f,
                "CTRL_RX/MQ/CTRL_MAC_ADDR negotiated without CTRL_VQ ({})",
                FeatureNames::new(DeviceType::Net, negotiated)
            ),
            NetError::MultiqueueUnusable { max_pairs, why } => write!(
                f,
                "multiqueue unusable (max_virtqueue_pairs {max_pairs:#x}): {why}"
            ),
            NetError::NotNegotiated(what) => write!(f, "needs {what}, which was not negotiated"),
            NetError::TxQueueFull => write!(f, "transmit queue full"),
            NetError::FrameTooLong { len, max } => {
                write!(f, "{len} bytes: empty or longer than the {max}-byte limit")
            }
            NetError::ControlRejected => write!(f, "the device rejected the control command"),
            NetError::ControlBadReply { ack, len } => match ack {
                Some(ack) => write!(
                    f,
                    "control command answered with ack {ack:#x}, length {len}"
                ),
                None => write!(f, "control command answered with length {len}"),
            },
            NetError::ControlBusy => write!(f, "an earlier control command is still unanswered"),
            NetError::Timeout { waits } => write!(f, "no answer after {waits} waits"),
            NetError::FeaturesChanged { before, now } => write!(
                f,
                "features changed across a reset: {before:#x} -> {now:#x}"
            ),
            NetError::DeviceFailed => write!(f, "the device was reset after a failure"),
        }
    }
}

/// All counters of one device (of its first queue pair; the others'
/// are in [`NetDevice::pair_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Receive queue.
    pub rx: RxStats,
    /// Its ring.
    pub rx_ring: QueueCounters,
    /// Transmit queue.
    pub tx: TxStats,
    /// Its ring.
    pub tx_ring: QueueCounters,
    /// Control queue, if there is one.
    pub ctrl: Option<CtrlStats>,
    /// Its ring.
    pub ctrl_ring: Option<QueueCounters>,
    /// Configuration-change interrupts handled.
    pub config_changes: u64,
}

/// What step 7 builds.
struct Parts<H: Hal> {
    info: NetInfo,
    mtu: u16,
    mac: MacAddress,
    header_len: usize,
    /// Every pair set up, the first one first (never empty).
    pairs: Vec<QueuePair<H>>,
    device_max_pairs: u16,
    ctrl: Option<CtrlQueue<H>>,
}

/// A virtio network device. See the module documentation.
pub struct NetDevice<H: Hal, T: Transport> {
    transport: T,
    options: NetOptions,
    /// The device-specific features asked for (after the dependency fix-up).
    driver_features: u64,
    features: u64,
    info: NetInfo,
    mac: MacAddress,
    mtu: u16,
    header_len: usize,
    /// The link state as last read (an atomic: the per-pair path reads it
    /// through `&self`, [`per_pair`]).
    link_up: AtomicBool,
    /// Transmit notifications held back while the device reported the
    /// link down, one bit per pair (see [`NetDevice::flush`]; the per-pair
    /// path sets its bit through `&self`).
    tx_notify_held: AtomicU32,
    /// The longest frame that may be sent (the same for every pair).
    max_frame: usize,
    /// The queue pairs with their rings and buffers, the first pair first
    /// (never empty), each queue behind its own lock ([`per_pair`]): kept
    /// for ever, not freed, if the device never acknowledges a reset
    /// (`device::reset_or_keep`).
    pairs: DeviceVisible<Vec<QueuePair<H>>>,
    ctrl: DeviceVisible<Option<CtrlQueue<H>>>,
    /// `max_virtqueue_pairs` (1 without MQ): where the control queue is.
    device_max_pairs: u16,
    /// Pairs the device spreads traffic over: 1 until VQ_PAIRS_SET (or
    /// RSS_CONFIG) is acked.
    active_pairs: u16,
    /// The device steers by the driver's RSS configuration (`rss`).
    rss_active: bool,
    config_changes: u64,
    failed: bool,
    /// The device never acknowledged a reset ([`NetDevice::is_dead`]).
    dead: bool,
}

impl<H: Hal, T: Transport> NetDevice<H, T> {
    /// Brings up the network device behind `transport` with the default
    /// [`NetOptions`].
    pub fn new(transport: T) -> Result<Self, NetError> {
        Self::with_options(transport, NetOptions::default())
    }

    /// Brings up the network device behind `transport` with `options`.
    pub fn with_options(mut transport: T, options: NetOptions) -> Result<Self, NetError> {
        device::expect_device_type(&transport, DeviceType::Net)?;
        let mut driver_features = options.features & SUPPORTED_FEATURES;
        if options.max_queue_pairs <= 1 {
            // One pair needs neither MQ nor RSS; without them the control
            // queue stays at 2.
            driver_features &= !config::MULTIQUEUE;
        }
        let (parts, negotiated) =
            match bring_up_once::<H, T>(&mut transport, driver_features, &options) {
                Err(NetError::FeatureDependency { negotiated }) => {
                    // The device offered CTRL_RX or CTRL_MAC_ADDR without
                    // CTRL_VQ (§5.1.3.1 forbids that): start over without them.
                    warn!(
                    "{}: virtio-net: device offers {} without NET_CTRL_VQ; retrying without them",
                    transport.location(),
                    FeatureNames::new(DeviceType::Net, negotiated & NEEDS_CTRL_VQ)
                );
                    driver_features &= !NEEDS_CTRL_VQ;
                    bring_up_once::<H, T>(&mut transport, driver_features, &options)?
                }
                Err(error @ NetError::MultiqueueUnusable { .. }) => {
                    warn!(
                        "{}: virtio-net: {error}; retrying without NET_MQ, on one queue pair",
                        transport.location()
                    );
                    driver_features &= !config::MULTIQUEUE;
                    bring_up_once::<H, T>(&mut transport, driver_features, &options)?
                }
                other => other?,
            };
        let link_up = AtomicBool::new(parts.info.link_up());
        let max_frame = parts.pairs.first().map_or(0, |p| p.tx.0.lock().max_frame());
        let mut device = Self {
            transport,
            options,
            driver_features,
            features: negotiated,
            info: parts.info,
            mac: parts.mac,
            mtu: parts.mtu,
            header_len: parts.header_len,
            link_up,
            tx_notify_held: AtomicU32::new(0),
            max_frame,
            pairs: DeviceVisible::new(parts.pairs),
            ctrl: DeviceVisible::new(parts.ctrl),
            device_max_pairs: parts.device_max_pairs,
            active_pairs: 1,
            rss_active: false,
            config_changes: 0,
            failed: false,
            dead: false,
        };
        // DRIVER_OK is set: the device may now hear about the receive buffers.
        device.flush();
        let (rx_size, rx_buffers, rx_buffer_len, tx_size, tx_buffers) = {
            let first = device.first_pair();
            let (rx, tx) = (first.rx.0.get_mut(), first.tx.0.get_mut());
            (
                rx.size(),
                rx.buffer_count(),
                rx.buffer_len(),
                tx.size(),
                tx.buffer_count(),
            )
        };
        debug!(
            "{}: virtio-net: {}; using mac {}, mtu {}, {}-byte header; {} queue pair(s), each rx: {} descriptors, {} buffers of {} bytes{}; tx: {} descriptors, {} buffers; {}",
            device.transport.location(),
            device.info,
            device.mac,
            device.mtu,
            device.header_len,
            device.queue_pairs(),
            rx_size,
            rx_buffers,
            rx_buffer_len,
            if device.features & feature::MRG_RXBUF != 0 { " (mergeable)" } else { "" },
            tx_size,
            tx_buffers,
            match &*device.ctrl {
                Some(c) => ControlNote(Some((c.ring().index(), c.size()))),
                None => ControlNote(None),
            }
        );
        Ok(device)
    }

    // ----- what the device is -----------------------------------------

    /// The MAC address in use.
    pub fn mac(&self) -> MacAddress {
        self.mac
    }

    /// The MTU: the device's (VIRTIO_NET_F_MTU) or 1500.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// The longest frame that may be sent, Ethernet header included.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The virtio-net header length in use (10 or 12).
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// The negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The configuration as last read.
    pub fn info(&self) -> &NetInfo {
        &self.info
    }

    /// The options the device was brought up with.
    pub fn options(&self) -> &NetOptions {
        &self.options
    }

    /// `true` if the link is up (as of the last configuration read).
    pub fn link_up(&self) -> bool {
        self.link_up.load(Ordering::Relaxed)
    }

    /// The transport (for the interrupt code: MSI-X vectors, location).
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably. Do not reset the device or touch its queues
    /// through it; use [`NetDevice::recover`].
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Where the device is.
    pub fn location(&self) -> Location {
        self.transport.location()
    }

    /// `true` after the device was reset because of a failure, until
    /// [`NetDevice::recover`].
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// `true` after the device did not acknowledge a reset (§2.1.2): its
    /// rings and buffers were kept for ever rather than freed (it may still
    /// write them), and the device is not used again;
    /// [`NetDevice::recover`] refuses with
    /// [`DeviceError::Dead`].
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// All counters.
    pub fn stats(&self) -> NetStats {
        let first = self.pair_stats(0).unwrap_or_default();
        NetStats {
            rx: first.rx,
            rx_ring: first.rx_ring,
            tx: first.tx,
            tx_ring: first.tx_ring,
            ctrl: self.ctrl.as_ref().map(|c| c.stats()),
            ctrl_ring: self.ctrl.as_ref().map(|c| c.ring_counters()),
            config_changes: self.config_changes,
        }
    }

    /// Hands each queue's ring, with its name, to `visit`: a read-only look
    /// for the live queue view ([`crate::view`]). One pair is `receiveq`
    /// and `transmitq`; several are `receiveq1`, `transmitq1`, ...,
    /// `receiveqN`, `transmitqN` (the spec's names, §5.1.2); then `controlq`.
    pub fn visit_rings(&self, mut visit: impl FnMut(&dyn fmt::Display, &Virtqueue<H>)) {
        // Each queue's lock is held while it is looked at (a CPU on the
        // per-pair path may be using it).
        if self.pairs.len() == 1 {
            visit(&"receiveq", self.pairs[0].rx.0.lock().ring());
            visit(&"transmitq", self.pairs[0].tx.0.lock().ring());
        } else {
            for (i, pair) in self.pairs.iter().enumerate() {
                visit(&QueueName("receiveq", i + 1), pair.rx.0.lock().ring());
                visit(&QueueName("transmitq", i + 1), pair.tx.0.lock().ring());
            }
        }
        if let Some(ctrl) = &*self.ctrl {
            visit(&"controlq", ctrl.ring());
        }
    }

    // ----- moving frames ------------------------------------------------

    /// The first pair (the only one without MQ): `pairs` is never empty.
    fn first_pair(&mut self) -> &mut QueuePair<H> {
        &mut self.pairs[0]
    }

    /// The receive queue (of the first pair). Through `&mut self`, so no
    /// lock is taken: nobody else can hold one.
    pub fn rx(&mut self) -> &mut RxQueue<H> {
        self.first_pair().rx.0.get_mut()
    }

    /// The transmit queue (of the first pair).
    pub fn tx(&mut self) -> &mut TxQueue<H> {
        self.first_pair().tx.0.get_mut()
    }

    /// Both data queues at once (a network stack receives and answers in
    /// one go). Call [`NetDevice::flush`] afterwards.
    pub fn queues(&mut self) -> (&mut RxQueue<H>, &mut TxQueue<H>) {
        let first = self.first_pair();
        (first.rx.0.get_mut(), first.tx.0.get_mut())
    }

    /// Publishes what the queues added since the last flush (reposted
    /// receive buffers, frames to send) and notifies the device for each
    /// queue where it asked to be told. Returns the notifications sent.
    pub fn flush(&mut self) -> usize {
        if self.failed {
            return 0;
        }
        let mut rx = 0;
        for pair in self.pairs.iter_mut() {
            let queue = pair.rx.0.get_mut();
            queue.refill();
            rx += usize::from(device::kick(&mut self.transport, queue.ring_mut()));
        }
        // The transmit notification is held back while the device reports
        // the link down, the way Linux stops its queue on carrier off. A
        // device notified then drops the frames and returns them as used,
        // and QEMU's packed ring does that wrongly (QEMU 7.2
        // `virtqueue_packed_drop_all` sets the device event flags to DISABLE
        // for good and leaves its in-use count wrapped below zero): one kick
        // during a link-down leaves the transmit queue dead after the link
        // comes back. The status is read from the device right before the
        // notification, not taken from `link_up`: the configuration
        // interrupt for the change may not have been handled yet (§5.1.4,
        // VIRTIO_NET_S_LINK_UP). Published frames wait in the ring; the
        // held notification goes out at the first flush with the link up.
        // One bit per pair whose transmit queue wants a notification.
        let mut wanted = 0u32;
        for (i, pair) in self.pairs.iter_mut().enumerate() {
            wanted |= u32::from(pair.tx.0.get_mut().ring_mut().publish().should_notify()) << i;
        }
        let held = *self.tx_notify_held.get_mut();
        wanted |= held;
        if wanted == 0 {
            return rx;
        }
        if !self.device_link_up() {
            if held == 0 {
                debug!(
                    "{}: virtio-net: the device reports the link down: transmit notification held back",
                    self.transport.location()
                );
            }
            *self.tx_notify_held.get_mut() = wanted;
            return rx;
        }
        *self.tx_notify_held.get_mut() = 0;
        let mut tx = 0;
        for pair in 0..self.queue_pairs() {
            if wanted & (1 << pair) != 0 {
                self.transport.notify(tx_queue_of(pair));
                tx += 1;
            }
        }
        rx + tx
    }

    /// The link state as the device reports it now (one configuration
    /// read with VIRTIO_NET_F_STATUS; always up without it). A failed read
    /// falls back to the last known state.
    fn device_link_up(&mut self) -> bool {
        match config::NetInfo::read_status(&mut self.transport, self.features) {
            Ok(Some(status)) => status & config::status::LINK_UP != 0,
            Ok(None) => true,
            Err(_) => self.link_up(),
        }
    }

    /// Sends a copy of `frame` and flushes: the simple, one-frame path.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.check_live()?;
        self.tx().send(frame)?;
        self.flush();
        Ok(())
    }

    /// Receives one frame into `buffer` (copying it) and flushes. Returns
    /// its length, or `None` if nothing has arrived. A frame longer than
    /// `buffer` is cut to fit; the returned length is the full one.
    pub fn receive_into(&mut self, buffer: &mut [u8]) -> Result<Option<usize>, NetError> {
        self.check_live()?;
        let received = self.rx().receive().map(|packet| {
            packet.map(|packet| {
                let data = packet.data();
                let n = data.len().min(buffer.len());
                buffer[..n].copy_from_slice(&data[..n]);
                data.len()
            })
        });
        if received.is_err() {
            self.stop_device("the receive queue is broken");
        }
        self.flush();
        received
    }

    // ----- interrupts and configuration ---------------------------------

    /// Reads and acknowledges the interrupt status; on a configuration
    /// change, handles it ([`NetDevice::handle_config_change`]). Returns
    /// the status so the caller knows whether to look at the queues.
    pub fn handle_interrupt(&mut self) -> Result<InterruptStatus, NetError> {
        let status = self.transport.ack_interrupt();
        if status.contains(InterruptStatus::CONFIG) {
            self.handle_config_change()?;
        }
        Ok(status)
    }

    /// Re-reads the link status after a configuration-change interrupt (or
    /// whenever the caller wants to know). Returns `Some(up)` if the link
    /// state changed. A device that set DEVICE_NEEDS_RESET is reported as an
    /// error (§2.1.2: it raises a configuration interrupt for that too).
    pub fn handle_config_change(&mut self) -> Result<Option<bool>, NetError> {
        self.config_changes += 1;
        init::check_device_status(&self.transport)?;
        let status = config::NetInfo::read_status(&mut self.transport, self.features)?;
        self.info.status = status;
        let up = self.info.link_up();
        if up == self.link_up() {
            return Ok(None);
        }
        self.link_up.store(up, Ordering::Relaxed);
        debug!(
            "{}: virtio-net: link {}",
            self.transport.location(),
            if up { "up" } else { "down" }
        );
        Ok(Some(up))
    }

    // ----- control queue ------------------------------------------------

    /// Turns promiscuous mode on or off (VIRTIO_NET_CTRL_RX_PROMISC; needs CTRL_RX).
    pub fn set_promiscuous<W: Wait + ?Sized>(
        &mut self,
        on: bool,
        wait: &mut W,
    ) -> Result<(), NetError> {
        self.rx_mode(ctrl::command::RX_PROMISC, on, wait)
    }

    /// Turns all-multicast mode on or off (VIRTIO_NET_CTRL_RX_ALLMULTI; needs CTRL_RX).
    pub fn set_all_multicast<W: Wait + ?Sized>(
        &mut self,
        on: bool,
        wait: &mut W,
    ) -> Result<(), NetError> {
        self.rx_mode(ctrl::command::RX_ALLMULTI, on, wait)
    }

    fn rx_mode<W: Wait + ?Sized>(
        &mut self,
        command: u8,
        on: bool,
        wait: &mut W,
    ) -> Result<(), NetError> {
        self.check_live()?;
        if self.features & feature::CTRL_RX == 0 {
            return Err(NetError::NotNegotiated("VIRTIO_NET_F_CTRL_RX"));
        }
        let Some(ctrl) = self.ctrl.as_mut() else {
            return Err(NetError::NotNegotiated("VIRTIO_NET_F_CTRL_VQ"));
        };
        ctrl.command(
            &mut self.transport,
            ctrl::command::CLASS_RX,
            command,
            &[u8::from(on)],
            wait,
        )
    }

    /// Sets the device's MAC address: through the control queue with
    /// CTRL_MAC_ADDR (§5.1.6.5.2), or on a legacy device by writing the
    /// `mac` configuration field (which legacy devices allow, §5.1.4.3).
    pub fn set_mac<W: Wait + ?Sized>(
        &mut self,
        mac: MacAddress,
        wait: &mut W,
    ) -> Result<(), NetError> {
        self.check_live()?;
        if mac.is_multicast() {
            return Err(NetError::BadConfig("a multicast MAC address"));
        }
        if self.features & feature::CTRL_MAC_ADDR != 0 {
            let Some(ctrl) = self.ctrl.as_mut() else {
                return Err(NetError::NotNegotiated("VIRTIO_NET_F_CTRL_VQ"));
            };
            ctrl.command(
                &mut self.transport,
                ctrl::command::CLASS_MAC,
                ctrl::command::MAC_ADDR_SET,
                &mac.0,
                wait,
            )?;
        } else if self.transport.kind().is_legacy() {
            self.transport.write_config(offset::MAC, &mac.0)?;
        } else {
            return Err(NetError::NotNegotiated("VIRTIO_NET_F_CTRL_MAC_ADDR"));
        }
        debug!(
            "{}: virtio-net: mac {} -> {}",
            self.transport.location(),
            self.mac,
            mac
        );
        self.mac = mac;
        if self.info.mac.is_some() {
            self.info.mac = Some(mac);
        }
        Ok(())
    }

    // ----- failure and recovery -------------------------------------------

    /// Resets the device and brings it back with the same features, the
    /// same (zeroed) queues and fresh receive buffers. Frames waiting to be
    /// sent and any packet half received are lost.
    pub fn recover(&mut self) -> Result<(), NetError> {
        self.stop_device("recovery requested");
        if self.dead {
            return Err(DeviceError::Dead.into());
        }
        let before = self.features;
        let mut addresses = Vec::with_capacity(2 * usize::from(self.queue_pairs()));
        for pair in self.pairs.iter_mut() {
            let (rx, tx) = (pair.rx.0.get_mut().ring(), pair.tx.0.get_mut().ring());
            addresses.push((rx.index(), rx.addresses()));
            addresses.push((tx.index(), tx.addresses()));
        }
        let ctrl = self
            .ctrl
            .as_ref()
            .map(|c| (c.ring().index(), c.ring().addresses()));
        let (info, now) = device::bring_up(
            &mut self.transport,
            self.driver_features,
            self.options.ring_features,
            |t: &mut T, negotiated| -> Result<_, NetError> {
                if negotiated != before {
                    return Err(NetError::FeaturesChanged {
                        before,
                        now: negotiated,
                    });
                }
                let info = NetInfo::read(t, negotiated)?;
                for (index, addrs) in addresses {
                    t.setup_queue(index, &addrs)?;
                }
                if let Some((index, addrs)) = ctrl {
                    t.setup_queue(index, &addrs)?;
                }
                Ok(info)
            },
        )?;
        self.features = now;
        self.info = NetInfo {
            mac: info.mac.map(|_| self.mac),
            ..info
        };
        self.link_up.store(self.info.link_up(), Ordering::Relaxed);
        *self.tx_notify_held.get_mut() = 0;
        // A reset device uses one pair again until told otherwise
        // ([`NetDevice::start_multiqueue`]).
        self.active_pairs = 1;
        self.rss_active = false;
        self.failed = false;
        self.flush();
        debug!(
            "{}: virtio-net: recovered after a reset",
            self.transport.location()
        );
        Ok(())
    }

    fn check_live(&self) -> Result<(), NetError> {
        if self.failed {
            Err(NetError::DeviceFailed)
        } else {
            Ok(())
        }
    }

    /// Resets the device (so it stops touching the buffers) and takes
    /// every buffer back. If the device does not acknowledge the reset it
    /// may still write the rings and buffers (§2.1.2): they are kept for
    /// ever instead (`hal::DeviceVisible`), never freed or reused, and the
    /// device is dead ([`NetDevice::is_dead`]).
    fn stop_device(&mut self, why: &str) {
        if self.dead {
            return;
        }
        if device::reset_or_keep(&mut self.transport, "virtio-net").is_err() {
            self.pairs.keep_forever();
            self.ctrl.keep_forever();
            self.dead = true;
            self.failed = true;
            return;
        }
        for pair in self.pairs.iter_mut() {
            pair.rx.0.get_mut().reset();
            pair.tx.0.get_mut().reset();
        }
        if let Some(ctrl) = self.ctrl.as_mut() {
            ctrl.reset();
        }
        if !self.failed {
            debug!(
                "{}: virtio-net: device reset: {why}",
                self.transport.location()
            );
        }
        self.failed = true;
    }
}

impl<H: Hal, T: Transport> Drop for NetDevice<H, T> {
    /// Resets the device before its rings and buffers are freed: the device
    /// must not write into freed memory.
    fn drop(&mut self) {
        if !self.failed {
            self.stop_device("driver dropped");
        }
    }
}

impl<H: Hal, T: Transport> fmt::Debug for NetDevice<H, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetDevice")
            .field("location", &self.transport.location())
            .field("features", &format_args!("{:#x}", self.features))
            .field("mac", &format_args!("{}", self.mac))
            .field("mtu", &self.mtu)
            .field("link_up", &self.link_up())
            .field("pairs", &self.pairs.len())
            .field("active_pairs", &self.active_pairs)
            .field("ctrl", &self.ctrl)
            .field("failed", &self.failed)
            .finish()
    }
}

/// One run of the §3.1.1 sequence with `driver_features`; step 7 builds the queues.
fn bring_up_once<H: Hal, T: Transport>(
    transport: &mut T,
    driver_features: u64,
    options: &NetOptions,
) -> Result<(Parts<H>, u64), NetError> {
    device::bring_up(
        transport,
        driver_features,
        options.ring_features,
        |t: &mut T, negotiated| setup(t, negotiated, options),
    )
}

/// Step 7: configuration, layout decisions, queues, buffers.
fn setup<H: Hal, T: Transport>(
    t: &mut T,
    negotiated: u64,
    options: &NetOptions,
) -> Result<Parts<H>, NetError> {
    if negotiated & NEEDS_CTRL_VQ != 0 && negotiated & feature::CTRL_VQ == 0 {
        return Err(NetError::FeatureDependency { negotiated });
    }
    let location = t.location();
    let info = NetInfo::read(t, negotiated)?;
    let mtu = match info.mtu {
        Some(mtu) if mtu < MIN_MTU => return Err(NetError::BadConfig("mtu below 68")),
        Some(mtu) => mtu,
        None => DEFAULT_MTU,
    };
    let plan = Plan::new(negotiated, t.kind(), mtu, options);
    let (device_max_pairs, ctrl_index) = queue_pair_layout(info.max_queue_pairs)?;
    let pairs = device_max_pairs.min(options.max_queue_pairs.clamp(1, MAX_QUEUE_PAIRS));

    let (rx, tx) = setup_pair::<H, T>(t, 0, negotiated, options, &plan)?;
    let mut pairs_set_up = Vec::with_capacity(usize::from(pairs));
    pairs_set_up.push(QueuePair::new(rx, tx));
    for pair in 1..pairs {
        // A device whose advertised pairs cannot be set up is brought up
        // again without MQ (`NetDevice::with_options`).
        let (rx, tx) = setup_pair::<H, T>(t, pair, negotiated, options, &plan).map_err(|_| {
            NetError::MultiqueueUnusable {
                max_pairs: device_max_pairs,
                why: "an extra queue pair cannot be set up",
            }
        })?;
        pairs_set_up.push(QueuePair::new(rx, tx));
    }
    let ctrl = if negotiated & feature::CTRL_VQ != 0 {
        let ring = device::setup_queue_with::<H, T>(
            t,
            ctrl_index,
            QueueSpec::new(options.ctrl_queue_size).with_indirect_capacity(3),
            negotiated,
        );
        let ring = match ring {
            Ok(ring) => ring,
            Err(_) if negotiated & config::MULTIQUEUE != 0 => {
                return Err(NetError::MultiqueueUnusable {
                    max_pairs: device_max_pairs,
                    why: "no control queue at 2 * max_virtqueue_pairs",
                })
            }
            Err(error) => return Err(error.into()),
        };
        Some(CtrlQueue::new(ring, t.kind().is_legacy(), t.dma_owner())?)
    } else {
        None
    };
    if pairs > 1 {
        debug!(
            "{location}: virtio-net: {pairs} of the device's {device_max_pairs} queue pairs set up (queues 0..{}), control queue at {ctrl_index}",
            2 * pairs
        );
    }

    let mac = match info.mac {
        Some(mac) => mac,
        None => {
            let mac = MacAddress::local_from_seed(location_seed(location));
            if t.kind().is_legacy() {
                // Legacy devices let the driver write `mac` (§5.1.4.3).
                t.write_config(offset::MAC, &mac.0)?;
            }
            debug!("{location}: virtio-net: no MAC feature; using generated address {mac}");
            mac
        }
    };
    Ok(Parts {
        info,
        mtu,
        mac,
        header_len: plan.rx.header_len,
        pairs: pairs_set_up,
        device_max_pairs,
        ctrl,
    })
}

/// The sizes and layouts that follow from the negotiated features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    rx: RxLayout,
    tx: TxLayout,
    /// Entries per indirect table for the data queues (only useful when the
    /// header needs its own descriptor).
    indirect: u16,
}

impl Plan {
    fn new(negotiated: u64, kind: TransportKind, mtu: u16, options: &NetOptions) -> Self {
        let header_len = header::header_len(negotiated);
        let mergeable = negotiated & feature::MRG_RXBUF != 0;
        // Only a legacy device without ANY_LAYOUT insists on the header
        // having a descriptor of its own (§5.1.6.6); with MRG_RXBUF each
        // receive buffer is one descriptor whatever the layout.
        let any_layout = !kind.is_legacy() || negotiated & features::ANY_LAYOUT != 0;
        let max_frame = ETH_HEADER_LEN + mtu as usize;
        let whole_packet = (header_len + max_frame + VLAN_TAG_LEN).max(MIN_WHOLE_PACKET_BUFFER);
        let rx_buffer = if mergeable {
            options.mergeable_buffer_len.max(MIN_MERGEABLE_BUFFER)
        } else {
            whole_packet
        };
        Self {
            rx: RxLayout {
                header_len,
                mergeable,
                split_header: !any_layout && !mergeable,
                buffer_len: rx_buffer,
                max_frame: max_frame + VLAN_TAG_LEN,
            },
            tx: TxLayout {
                header_len,
                split_header: !any_layout,
                max_frame,
            },
            indirect: if any_layout { 0 } else { 2 },
        }
    }
}

/// Buffers worth allocating for a ring of `size` descriptors: one per
/// descriptor, or one per two when each buffer is a header descriptor and a
/// frame descriptor (the queue writes such short chains directly while
/// descriptors last, so half the ring is what fits).
fn buffers_for(size: u16, split_header: bool) -> u16 {
    if split_header {
        size / 2
    } else {
        size
    }
}

/// A number that identifies a device's location, to seed a generated MAC.
fn location_seed(location: Location) -> u64 {
    struct Fnv(u64);
    impl fmt::Write for Fnv {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for byte in s.bytes() {
                self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
            Ok(())
        }
    }
    let mut hash = Fnv(0xcbf2_9ce4_8422_2325);
    let _ = fmt::write(&mut hash, format_args!("{location}"));
    hash.0
}

/// Formats the control-queue part of the bring-up summary: its index and size.
struct ControlNote(Option<(u16, u16)>);

impl fmt::Display for ControlNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((index, size)) => write!(f, "ctrl: queue {index}, {size} descriptors"),
            None => f.write_str("no control queue"),
        }
    }
}

/// A numbered queue name (`receiveq2`), formatted without allocating.
struct QueueName(&'static str, usize);

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.0, self.1)
    }
}
