//! # What interrupt handlers record, per device (virtio 1.2 §2.7.7, §4.1.4.5, §4.2.2)
//!
//! A handler must not block and cannot reach the driver, so all it does is
//! note what happened in a [`DeviceInterrupts`]: a "pending" bit per queue
//! (the waiter of that queue consumes it), a configuration-changed flag
//! and counters. Everything is an atomic, so a `static` array of them needs
//! no lock and a handler on one CPU and a waiter on another agree.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::queue_set::{QueueSet, MAX_QUEUES};
use crate::transport::InterruptStatus;

/// Interrupt bookkeeping of one device, written by interrupt handlers and
/// read by waiters, self-tests and the log. All atomics: a handler never
/// blocks, and a `static` array of these needs no lock.
pub struct DeviceInterrupts {
    /// Bit `q`: queue `q` had an interrupt its waiter has not consumed yet.
    pending: AtomicU64,
    /// A configuration-change interrupt the driver has not consumed yet.
    config_changed: AtomicBool,
    /// The device is polled instead (no route, or interrupts were given up on).
    polled: AtomicBool,
    /// Per queue: interrupts that named this queue.
    queue_interrupts: [AtomicU64; MAX_QUEUES as usize],
    /// Configuration-change interrupts.
    config_interrupts: AtomicU64,
    /// Line (INTx / virtio-mmio) handler runs whose status read found something.
    line_claimed: AtomicU64,
    /// Line handler runs whose status read found nothing (another device on
    /// a shared line, or spurious).
    line_unclaimed: AtomicU64,
}

/// A copy of a device's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InterruptCounters {
    /// Sum over all queues of the per-queue counts.
    pub queue_interrupts: u64,
    /// Configuration-change interrupts.
    pub config_interrupts: u64,
    /// Line interrupts that were this device's.
    pub line_claimed: u64,
    /// Line interrupts that were not.
    pub line_unclaimed: u64,
}

impl Default for DeviceInterrupts {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceInterrupts {
    /// Everything zero, interrupt-driven.
    pub const fn new() -> Self {
        DeviceInterrupts {
            pending: AtomicU64::new(0),
            config_changed: AtomicBool::new(false),
            polled: AtomicBool::new(false),
            queue_interrupts: [const { AtomicU64::new(0) }; MAX_QUEUES as usize],
            config_interrupts: AtomicU64::new(0),
            line_claimed: AtomicU64::new(0),
            line_unclaimed: AtomicU64::new(0),
        }
    }

    /// An interrupt for `queues` arrived (an MSI-X entry they share fired, or
    /// a line interrupt with the QUEUE bit). Marks them pending for their
    /// waiters and counts one interrupt for each.
    pub fn queue_interrupt(&self, queues: QueueSet) {
        for q in queues.iter() {
            self.queue_interrupts[usize::from(q)].fetch_add(1, Ordering::Relaxed);
        }
        // Release: the waiter that sees the bit also sees whatever the
        // handler saw before it (the used ring was written before the
        // interrupt was sent).
        self.pending.fetch_or(queues.bits(), Ordering::Release);
    }

    /// A configuration-change interrupt arrived.
    pub fn config_interrupt(&self) {
        self.config_interrupts.fetch_add(1, Ordering::Relaxed);
        self.config_changed.store(true, Ordering::Release);
    }

    /// Marks `queues` pending without counting an interrupt for them: for
    /// queues that share an MSI-X entry or a line with the counted ones but
    /// that nobody set up yet when the route was made (a driver may add
    /// queues later: a network card's control queue).
    pub fn wake(&self, queues: QueueSet) {
        self.pending.fetch_or(queues.bits(), Ordering::Release);
    }

    /// A line (INTx / virtio-mmio) interrupt: `status` is what the status
    /// register read returned (and acknowledged), `queues` the device's
    /// queues in use. A line interrupt does not say which queue: every
    /// queue's waiter is woken, and one interrupt is counted for each queue
    /// in `queues`. Returns whether it was this device's.
    pub fn line_interrupt(&self, status: InterruptStatus, queues: QueueSet) -> bool {
        if status.is_empty() {
            self.line_unclaimed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.line_claimed.fetch_add(1, Ordering::Relaxed);
        if status.contains(InterruptStatus::QUEUE) {
            self.queue_interrupt(queues);
            self.wake(QueueSet::ALL);
        }
        if status.contains(InterruptStatus::CONFIG) {
            self.config_interrupt();
        }
        true
    }

    /// Takes (clears and returns) the pending bits of `queues`.
    pub fn take_pending(&self, queues: QueueSet) -> QueueSet {
        let before = self.pending.fetch_and(!queues.bits(), Ordering::Acquire);
        QueueSet::from_bits(before).intersection(queues)
    }

    /// The pending bits of `queues`, without clearing them.
    pub fn pending(&self, queues: QueueSet) -> QueueSet {
        QueueSet::from_bits(self.pending.load(Ordering::Acquire)).intersection(queues)
    }

    /// Takes the configuration-changed flag: `true` once per change (or
    /// burst of changes) since the last call. Net drivers re-read the link
    /// status, console drivers the port configuration.
    pub fn take_config_change(&self) -> bool {
        self.config_changed.swap(false, Ordering::Acquire)
    }

    /// `true` if a configuration change arrived that nobody took yet
    /// ([`Self::take_config_change`] takes it): for a path that cannot act
    /// on it and hands the work to one that can.
    pub fn config_change_pending(&self) -> bool {
        self.config_changed.load(Ordering::Acquire)
    }

    /// Interrupts counted for queue `queue`.
    pub fn queue_interrupt_count(&self, queue: u16) -> u64 {
        self.queue_interrupts
            .get(usize::from(queue))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Configuration-change interrupts so far.
    pub fn config_interrupt_count(&self) -> u64 {
        self.config_interrupts.load(Ordering::Relaxed)
    }

    /// All counters at once.
    pub fn counters(&self) -> InterruptCounters {
        InterruptCounters {
            queue_interrupts: self
                .queue_interrupts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum(),
            config_interrupts: self.config_interrupts.load(Ordering::Relaxed),
            line_claimed: self.line_claimed.load(Ordering::Relaxed),
            line_unclaimed: self.line_unclaimed.load(Ordering::Relaxed),
        }
    }

    /// Marks the device as polled (`true`) or interrupt-driven; waiters
    /// check it on every wait, so a device whose interrupts had to be given
    /// up on mid-run stops halting.
    pub fn set_polled(&self, polled: bool) {
        self.polled.store(polled, Ordering::Release);
    }

    /// Whether the device is polled.
    pub fn is_polled(&self) -> bool {
        self.polled.load(Ordering::Acquire)
    }

    /// Clears everything (to reuse a slot for another device).
    pub fn reset(&self) {
        self.pending.store(0, Ordering::Relaxed);
        self.config_changed.store(false, Ordering::Relaxed);
        self.polled.store(false, Ordering::Relaxed);
        for counter in &self.queue_interrupts {
            counter.store(0, Ordering::Relaxed);
        }
        self.config_interrupts.store(0, Ordering::Relaxed);
        self.line_claimed.store(0, Ordering::Relaxed);
        self.line_unclaimed.store(0, Ordering::Relaxed);
    }
}
