//! Several receive/transmit queue pairs (virtio 1.2 §5.1.2, §5.1.4.1,
//! §5.1.6.5.5; VIRTIO_NET_F_MQ): where each pair's queues and the control
//! queue are, the VQ_PAIRS_SET command, setting a pair up, and the
//! [`NetDevice`] methods that reach one pair. The module documentation of
//! [`super`] tells the story ("Several queue pairs").

use core::fmt;

use hal::Hal;
use log::{debug, warn};

use crate::device::{self, QueueSpec, Wait};
use crate::queue::{QueueCounters, Ring};
use crate::transport::Transport;

use super::config::feature;
use super::config::{QUEUE_PAIRS_MAX, QUEUE_PAIRS_MIN};
use super::{
    buffers_for, ctrl, rss, CtrlQueue, NetDevice, NetError, NetOptions, Plan, RxQueue, RxStats,
    TxQueue, TxStats, CTRL_QUEUE,
};

/// The most queue pairs this driver sets up, whatever the device and the
/// options offer (each pair costs two rings and their buffers).
pub const MAX_QUEUE_PAIRS: u16 = 16;

/// The receive queue index of pair `pair` (0-based: receiveq`pair+1`, §5.1.2).
pub const fn rx_queue_of(pair: u16) -> u16 {
    2 * pair
}

/// The transmit queue index of pair `pair` (transmitq`pair+1`).
pub const fn tx_queue_of(pair: u16) -> u16 {
    2 * pair + 1
}

/// Where the control queue is with VIRTIO_NET_F_MQ: after every pair the
/// device has (§5.1.2), `2 * max_virtqueue_pairs` (without MQ it is
/// [`CTRL_QUEUE`]). `None` if that does not fit a 16-bit queue index (0x8000 pairs).
pub const fn ctrl_queue_of(device_max_pairs: u16) -> Option<u16> {
    device_max_pairs.checked_mul(2)
}

/// The bytes of VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET for `pairs` pairs: class,
/// command, `le16 virtqueue_pairs` (§5.1.6.5.5), as the device reads them.
pub fn vq_pairs_set_command(pairs: u16) -> [u8; 4] {
    let [low, high] = pairs.to_le_bytes();
    [
        ctrl::command::CLASS_MQ,
        ctrl::command::MQ_VQ_PAIRS_SET,
        low,
        high,
    ]
}

/// The counters of one queue pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairStats {
    /// Its receive queue.
    pub rx: RxStats,
    /// Its receive ring.
    pub rx_ring: QueueCounters,
    /// Its transmit queue.
    pub tx: TxStats,
    /// Its transmit ring.
    pub tx_ring: QueueCounters,
}

/// One queue's lock, on a cache line of its own, so CPUs on different
/// queues neither share a lock nor bounce one line between them.
#[repr(align(64))]
pub(super) struct QueueLock<Q>(pub(super) spin::Mutex<Q>);

/// A receive and a transmit queue, each behind its own lock (see
/// [`super::per_pair`]): code holding `&mut NetDevice` reaches them with
/// `get_mut` (no locking), the per-pair path locks one of them.
pub struct QueuePair<H: Hal> {
    pub(super) rx: QueueLock<RxQueue<H>>,
    pub(super) tx: QueueLock<TxQueue<H>>,
}

impl<H: Hal> QueuePair<H> {
    pub(super) fn new(rx: RxQueue<H>, tx: TxQueue<H>) -> Self {
        Self {
            rx: QueueLock(spin::Mutex::new(rx)),
            tx: QueueLock(spin::Mutex::new(tx)),
        }
    }
}

impl<H: Hal> fmt::Debug for QueuePair<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuePair")
            .field("rx", &*self.rx.0.lock())
            .field("tx", &*self.tx.0.lock())
            .finish()
    }
}

impl<H: Hal, T: Transport> NetDevice<H, T> {
    /// Queue pairs set up (1 without MQ).
    pub fn queue_pairs(&self) -> u16 {
        self.pairs.len() as u16
    }

    /// Queue pairs the device uses: all that were set up once
    /// [`NetDevice::start_multiqueue`] succeeded, else 1.
    pub fn active_queue_pairs(&self) -> u16 {
        self.active_pairs
    }

    /// The device's `max_virtqueue_pairs` (1 without MQ).
    pub fn device_max_queue_pairs(&self) -> u16 {
        self.device_max_pairs
    }

    /// Every queue index the driver set up: the pairs' queues, then the
    /// control queue (which, with MQ, may be far above them).
    pub fn queue_indices(&self) -> impl Iterator<Item = u16> + '_ {
        (0..2 * self.queue_pairs()).chain(self.ctrl.as_ref().map(|c| c.ring().index()))
    }

    /// Both queues of pair `pair` (0-based), if it was set up. Call
    /// [`NetDevice::flush`] afterwards.
    pub fn pair(&mut self, pair: u16) -> Option<(&mut RxQueue<H>, &mut TxQueue<H>)> {
        self.pairs
            .get_mut(usize::from(pair))
            .map(|p| (p.rx.0.get_mut(), p.tx.0.get_mut()))
    }

    /// The pair to transmit on from CPU `cpu`: one per CPU while there are
    /// enough active pairs, shared round robin when there are fewer.
    pub fn tx_pair_for_cpu(&self, cpu: usize) -> u16 {
        (cpu % usize::from(self.active_pairs.max(1))) as u16
    }

    /// The counters of pair `pair`, if it was set up.
    pub fn pair_stats(&self, pair: u16) -> Option<PairStats> {
        let p = self.pairs.get(usize::from(pair))?;
        let (rx, tx) = (p.rx.0.lock(), p.tx.0.lock());
        Some(PairStats {
            rx: rx.stats(),
            rx_ring: rx.ring_counters(),
            tx: tx.stats(),
            tx_ring: tx.ring_counters(),
        })
    }

    /// Tells the device to spread traffic over every pair that was set up
    /// and returns the pairs now active: with VIRTIO_NET_F_RSS by the
    /// driver's hash configuration ([`super::rss`], VIRTIO_NET_CTRL_MQ_RSS_CONFIG,
    /// §5.1.6.5.7.1), otherwise, or if the device refuses that, by
    /// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET (§5.1.6.5.5, automatic steering).
    /// With one pair there is nothing to say (`Ok(1)`).
    ///
    /// On an error (the device answered VIRTIO_NET_ERR, a bad reply, no
    /// answer) the device keeps using only the first pair (its default,
    /// §5.1.6.5.5), and so does the driver: the error is for the caller to
    /// report; the card works on.
    pub fn start_multiqueue<W: Wait + ?Sized>(&mut self, wait: &mut W) -> Result<u16, NetError> {
        self.check_live()?;
        let pairs = self.queue_pairs();
        if pairs <= 1 {
            return Ok(1);
        }
        if self.start_rss(pairs, wait) {
            return Ok(pairs);
        }
        if self.features & feature::MQ == 0 {
            // RSS alone: VQ_PAIRS_SET needs MQ (§5.1.6.5.5).
            self.active_pairs = 1;
            return Err(NetError::NotNegotiated("VIRTIO_NET_F_MQ"));
        }
        let Some(ctrl) = self.ctrl.as_mut() else {
            return Err(NetError::NotNegotiated("VIRTIO_NET_F_CTRL_VQ"));
        };
        let [class, command, data @ ..] = vq_pairs_set_command(pairs);
        match ctrl.command(&mut self.transport, class, command, &data, wait) {
            Ok(()) => {
                self.active_pairs = pairs;
                debug!(
                    "{}: virtio-net: VQ_PAIRS_SET {pairs} acknowledged: traffic spread over {pairs} queue pairs",
                    self.transport.location()
                );
                Ok(pairs)
            }
            Err(error) => {
                self.active_pairs = 1;
                warn!(
                    "{}: virtio-net: VQ_PAIRS_SET {pairs}: {error}; staying on one queue pair",
                    self.transport.location()
                );
                Err(error)
            }
        }
    }

    /// The control queue, if the device has one.
    pub fn ctrl(&self) -> Option<&CtrlQueue<H>> {
        self.ctrl.as_ref()
    }

    /// `true` while the device steers received packets by the driver's RSS
    /// configuration ([`super::rss`]).
    pub fn rss_active(&self) -> bool {
        self.rss_active
    }

    /// With VIRTIO_NET_F_RSS and usable limits: sends RSS_CONFIG for
    /// `pairs` pairs; `true` if the device took it. A refusal is logged
    /// (the caller falls back to VQ_PAIRS_SET).
    fn start_rss<W: Wait + ?Sized>(&mut self, pairs: u16, wait: &mut W) -> bool {
        let location = self.transport.location();
        let Some(limits) = self.info.rss else {
            return false;
        };
        if let Some(why) = rss::unusable(&limits) {
            warn!("{location}: virtio-net: RSS not used: {why}");
            return false;
        }
        let (Some(data), Some(ctrl)) = (rss::rss_config_data(pairs, &limits), self.ctrl.as_mut())
        else {
            return false;
        };
        let sent = ctrl.command(
            &mut self.transport,
            ctrl::command::CLASS_MQ,
            rss::MQ_RSS_CONFIG,
            &data,
            wait,
        );
        match sent {
            Ok(()) => {
                self.active_pairs = pairs;
                self.rss_active = true;
                debug!(
                    "{location}: virtio-net: RSS_CONFIG acknowledged: {}-entry table over {pairs} pairs, hash types {:#x}",
                    rss::INDIRECTION_TABLE_LEN,
                    limits.supported_hash_types & rss::WANTED_HASH_TYPES
                );
                true
            }
            Err(error) => {
                warn!("{location}: virtio-net: RSS_CONFIG: {error}; trying VQ_PAIRS_SET");
                false
            }
        }
    }
}

/// The device's `max_virtqueue_pairs` (1 without MQ) and the control
/// queue's index, after checking the field against §5.1.4.1 ("between 1
/// and 0x8000 inclusive"). 0x8000 itself is refused too: its control queue
/// would be queue 65536, which no 16-bit `queue_select` can name.
pub(super) fn queue_pair_layout(max_queue_pairs: Option<u16>) -> Result<(u16, u16), NetError> {
    let Some(max_pairs) = max_queue_pairs else {
        return Ok((1, CTRL_QUEUE));
    };
    if !(QUEUE_PAIRS_MIN..=QUEUE_PAIRS_MAX).contains(&max_pairs) {
        return Err(NetError::MultiqueueUnusable {
            max_pairs,
            why: "outside 1..=0x8000 (virtio 1.2 §5.1.4.1)",
        });
    }
    match ctrl_queue_of(max_pairs) {
        Some(ctrl) => Ok((max_pairs, ctrl)),
        None => Err(NetError::MultiqueueUnusable {
            max_pairs,
            why: "the control queue would be queue 65536, beyond a 16-bit queue index",
        }),
    }
}

/// Sets up the receive and transmit queues of pair `pair` and posts (not
/// yet publishes) the receive buffers.
pub(super) fn setup_pair<H: Hal, T: Transport>(
    t: &mut T,
    pair: u16,
    negotiated: u64,
    options: &NetOptions,
    plan: &Plan,
) -> Result<(RxQueue<H>, TxQueue<H>), NetError> {
    let location = t.location();
    let rx_ring = device::setup_queue_with::<H, T>(
        t,
        rx_queue_of(pair),
        QueueSpec::new(options.rx_queue_size).with_indirect_capacity(plan.indirect),
        negotiated,
    )?;
    let tx_ring = device::setup_queue_with::<H, T>(
        t,
        tx_queue_of(pair),
        QueueSpec::new(options.tx_queue_size).with_indirect_capacity(plan.indirect),
        negotiated,
    )?;
    let rx_buffers = buffers_for(rx_ring.size(), plan.rx.split_header);
    let tx_buffers = buffers_for(tx_ring.size(), plan.tx.split_header);
    if rx_buffers == 0 || tx_buffers == 0 {
        return Err(NetError::BadConfig(
            "queues too small for a header and a frame in separate descriptors",
        ));
    }
    let mut rx = RxQueue::new(rx_ring, rx_buffers, plan.rx, location)?;
    // Posted now, published after DRIVER_OK (§5.1.5 step "fill the receive queues").
    rx.refill();
    let tx = TxQueue::new(tx_ring, tx_buffers, plan.tx, location)?;
    Ok((rx, tx))
}
