//! # One queue pair, driven on its own (virtio 1.2 §5.1.2, §5.1.6.2, §5.1.6.5.5)
//!
//! With VIRTIO_NET_F_MQ a card has a receive/transmit queue pair per CPU;
//! for that to pay, a CPU sending on its pair must not wait for a CPU on
//! another one. Every queue of every pair sits behind a lock of its own
//! (a `spin::Mutex` on a cache line of its own), and two methods take
//! `&self` and lock **one** queue and nothing else:
//!
//! - [`NetDevice::lock_tx`]`(p)` returns a [`PairTx`]: transmitq`p+1`,
//!   to reserve, send, reclaim ([`TxQueue`]'s methods through `Deref`) and
//!   [`PairTx::publish`] (publish and notify that one queue).
//! - [`NetDevice::lock_rx`]`(p)` returns a [`PairRx`]: receiveq`p+1`, to
//!   receive ([`RxQueue`]'s methods) and [`PairRx::publish`] (refill and
//!   notify).
//!
//! | what the path needs | where it is | shared with other pairs? |
//! | --- | --- | --- |
//! | the ring, the buffers, the free list, counters | the queue, behind its lock | no |
//! | features, MAC, frame limit, `failed` | [`NetDevice`] fields, read through `&self` | read only |
//! | the link state for the notification | an `AtomicBool` (last known state) | read only |
//! | a notification held back while the link is down | one bit per pair in an `AtomicU32` | one `fetch_or`, only while the link is down |
//! | the notification | [`Transport::notify`] through `&self` (one register write) | no lock |
//!
//! What changes the card as a whole (bring-up, a configuration change,
//! reset and recovery, control commands, [`NetDevice::flush`], the
//! `&mut` accessors the network stack uses) takes `&mut NetDevice`, which
//! excludes every per-pair handle: the borrow checker enforces it, and a
//! caller that shares the card between CPUs provides it by holding every
//! CPU's lock of the card (the kernel's `net::nic` card list). Through
//! `&mut` the queues are reached with `Mutex::get_mut`: no lock is taken.
//!
//! ## The link-down rule on this path
//!
//! [`NetDevice::flush`] reads the link status from the device right before
//! a transmit notification (QEMU's packed ring must not be kicked while the
//! link is down). Reading the configuration needs the transport mutably,
//! which the per-pair path does not have: [`PairTx::publish`] uses the last
//! known state instead (updated by [`NetDevice::handle_config_change`]), so
//! between the link going down and its configuration interrupt being
//! handled a per-pair notification can still go out. A held notification
//! is sent by the next [`NetDevice::flush`] with the link up.
//!
//! Lock order, for code that takes both queues of a pair: receive, then
//! transmit.

use core::ops::{Deref, DerefMut};
use core::sync::atomic::Ordering;

use hal::Hal;

use super::{rx_queue_of, tx_queue_of, NetDevice, NetError, RxQueue, TxQueue};
use crate::queue::Ring;
use crate::transport::Transport;

/// The transmit queue of one pair, locked for the caller: see the module
/// documentation. Dropping it unlocks the queue.
pub struct PairTx<'d, H: Hal, T: Transport> {
    device: &'d NetDevice<H, T>,
    pair: u16,
    queue: spin::MutexGuard<'d, TxQueue<H>>,
}

/// The receive queue of one pair, locked for the caller. Dropping it
/// unlocks the queue.
pub struct PairRx<'d, H: Hal, T: Transport> {
    device: &'d NetDevice<H, T>,
    pair: u16,
    queue: spin::MutexGuard<'d, RxQueue<H>>,
}

impl<H: Hal, T: Transport> NetDevice<H, T> {
    /// Locks the transmit queue of pair `pair` (spinning while another CPU
    /// holds it) and returns it. Takes only that queue's lock.
    ///
    /// Errors: [`NetError::BadConfig`] for a pair that was not set up,
    /// [`NetError::DeviceFailed`] after a failure (until `recover`).
    pub fn lock_tx(&self, pair: u16) -> Result<PairTx<'_, H, T>, NetError> {
        self.check_live()?;
        let queues = self
            .pairs
            .get(usize::from(pair))
            .ok_or(NetError::BadConfig("no such queue pair"))?;
        Ok(PairTx {
            device: self,
            pair,
            queue: queues.tx.0.lock(),
        })
    }

    /// Locks the receive queue of pair `pair` and returns it (see
    /// [`NetDevice::lock_tx`]).
    pub fn lock_rx(&self, pair: u16) -> Result<PairRx<'_, H, T>, NetError> {
        self.check_live()?;
        let queues = self
            .pairs
            .get(usize::from(pair))
            .ok_or(NetError::BadConfig("no such queue pair"))?;
        Ok(PairRx {
            device: self,
            pair,
            queue: queues.rx.0.lock(),
        })
    }
}

impl<H: Hal, T: Transport> PairTx<'_, H, T> {
    /// The pair (0-based: transmitq`pair+1`).
    pub fn pair(&self) -> u16 {
        self.pair
    }

    /// The queue's index (§5.1.2: `2 * pair + 1`).
    pub fn queue_index(&self) -> u16 {
        tx_queue_of(self.pair)
    }

    /// Publishes the frames added since the last publish and notifies the
    /// device if it asked to be told (§2.7.13.3, §2.7.10) and the link is
    /// (as last known) up; while it is down the notification is held back
    /// for [`NetDevice::flush`] (see the module documentation). Returns
    /// `true` if a notification was sent.
    pub fn publish(&mut self) -> bool {
        if self.device.failed {
            return false;
        }
        if !self.queue.ring_mut().publish().should_notify() {
            return false;
        }
        if !self.device.link_up() {
            self.device
                .tx_notify_held
                .fetch_or(1 << self.pair, Ordering::Relaxed);
            return false;
        }
        self.device.transport.notify(tx_queue_of(self.pair));
        true
    }
}

impl<H: Hal, T: Transport> PairRx<'_, H, T> {
    /// The pair (0-based: receiveq`pair+1`).
    pub fn pair(&self) -> u16 {
        self.pair
    }

    /// The queue's index (§5.1.2: `2 * pair`).
    pub fn queue_index(&self) -> u16 {
        rx_queue_of(self.pair)
    }

    /// Reposts every free receive buffer, publishes them and notifies the
    /// device if it asked to be told. Returns `true` if it was notified.
    pub fn publish(&mut self) -> bool {
        if self.device.failed {
            return false;
        }
        self.queue.refill();
        if !self.queue.ring_mut().publish().should_notify() {
            return false;
        }
        self.device.transport.notify(rx_queue_of(self.pair));
        true
    }
}

impl<H: Hal, T: Transport> Deref for PairTx<'_, H, T> {
    type Target = TxQueue<H>;
    fn deref(&self) -> &TxQueue<H> {
        &self.queue
    }
}

impl<H: Hal, T: Transport> DerefMut for PairTx<'_, H, T> {
    fn deref_mut(&mut self) -> &mut TxQueue<H> {
        &mut self.queue
    }
}

impl<H: Hal, T: Transport> Deref for PairRx<'_, H, T> {
    type Target = RxQueue<H>;
    fn deref(&self) -> &RxQueue<H> {
        &self.queue
    }
}

impl<H: Hal, T: Transport> DerefMut for PairRx<'_, H, T> {
    fn deref_mut(&mut self) -> &mut RxQueue<H> {
        &mut self.queue
    }
}
