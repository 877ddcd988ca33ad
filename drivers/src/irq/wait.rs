//! # Waiting for used buffers without losing a wake-up (virtio 1.2 §2.7.7)
//!
//! Two halves make one race-free wait:
//!
//! - [`wait_until_used`], the driver's half, the one way blocking helpers
//!   wait (the console's, the net control queue's, the kernel's block
//!   self-tests): ask the queues for an interrupt and look at the ring
//!   again (a completion may have come before the request was seen, and
//!   then no interrupt comes for it), wait only if nothing is there, and
//!   suppress the interrupts again once the wait is over (§2.7.7:
//!   interrupts are only wanted while nobody looks).
//! - [`InterruptWait`], the CPU's half, a [`Wait`]: with interrupts off,
//!   look at the pending bits the handler set ([`super::DeviceInterrupts`]),
//!   and only if none is set enable interrupts and halt *in one step*. The
//!   CPU side of that ([`Idle`]) is the kernel's; host tests supply a
//!   simulated one.

use super::queue_set::QueueSet;
use super::records::DeviceInterrupts;
use crate::device::{Wait, WaitTimeout};

/// What waiting needs from the CPU. The kernel implements it with `cli`,
/// `sti; hlt` and a watchdog timer; host tests with a simulated machine.
pub trait Idle {
    /// Disables interrupts on this CPU.
    fn disable_interrupts(&mut self);
    /// Enables interrupts.
    fn enable_interrupts(&mut self);
    /// Enables interrupts and halts until the next one, as one step (an
    /// interrupt that is already pending ends the halt at once instead of
    /// being taken before it). Returns with interrupts enabled, after the
    /// interrupt's handler ran. Must return even if the device never
    /// interrupts (the kernel arms a timer).
    fn enable_interrupts_and_halt(&mut self);
    /// One step of busy-waiting (polling mode).
    fn pause(&mut self);
    /// One step of the short spin an interrupt-driven wait makes before it
    /// halts (hybrid polling): `step` counts from 0 in every wait; returns
    /// `false` once the spin's budget is spent, and the wait halts. The
    /// interrupt still announces the completion, but a CPU that is running
    /// takes it at once, where a halted one must first be woken (under TCG
    /// a sleeping vCPU thread is signalled by QEMU's I/O thread, which
    /// costs more than a short I/O takes). The default spins not at all.
    fn spin_before_halt(&mut self, step: u32) -> bool {
        let _ = step;
        false
    }
    /// `true` once the caller's patience is used up.
    fn expired(&mut self) -> bool;
}

/// How an [`InterruptWait`] waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Halt until an interrupt says the queues have news.
    Interrupt,
    /// Spin, re-checking the ring after every [`Idle::pause`].
    Poll,
}

/// What an [`InterruptWait`] did, for self-tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WaitStats {
    /// Calls to `wait`.
    pub waits: u64,
    /// Of those, how many halted the CPU.
    pub halts: u64,
    /// How many returned at once because an interrupt had already arrived
    /// between the caller's last look at the ring and the wait.
    pub already_pending: u64,
    /// How many halts ended with this wait's queues pending (the others were
    /// woken by something else: another device, the watchdog).
    pub woken_by_queue: u64,
    /// Polling steps.
    pub polls: u64,
    /// Waits that ended in the spin before the halt
    /// ([`Idle::spin_before_halt`]): the interrupt came while the CPU ran.
    pub spun: u64,
}

/// The [`Wait`] of a blocking helper on an interrupt-driven device: halts
/// until one of `queues` had an interrupt (or polls, for a polled device).
///
/// Race-free: the helper re-arms the queue's interrupt and re-checks the ring
/// first ([`Wait::sleeps_until_interrupt`] tells it to); then `wait` turns
/// interrupts off, looks at the pending bits, and halts only if they are
/// clear, with `sti; hlt` as one step. An interrupt between the helper's
/// re-check and the `cli` has set a pending bit, so `wait` returns at once;
/// one after the `cli` is held by the CPU and ends the `hlt` immediately.
pub struct InterruptWait<'d, I: Idle> {
    device: &'d DeviceInterrupts,
    queues: QueueSet,
    idle: I,
    mode: WaitMode,
    stats: WaitStats,
}

impl<'d, I: Idle> InterruptWait<'d, I> {
    /// A wait for `queues` of `device`, halting (or polling, if the device
    /// is polled) through `idle`.
    pub fn new(device: &'d DeviceInterrupts, queues: QueueSet, idle: I) -> Self {
        let mode = if device.is_polled() {
            WaitMode::Poll
        } else {
            WaitMode::Interrupt
        };
        InterruptWait {
            device,
            queues,
            idle,
            mode,
            stats: WaitStats::default(),
        }
    }

    /// Forces a mode (benchmarks compare both on one device).
    pub fn with_mode(mut self, mode: WaitMode) -> Self {
        self.mode = mode;
        self
    }

    /// The mode in use.
    pub fn mode(&self) -> WaitMode {
        if self.device.is_polled() {
            WaitMode::Poll
        } else {
            self.mode
        }
    }

    /// What the waits so far did.
    pub fn stats(&self) -> WaitStats {
        self.stats
    }

    /// The CPU side.
    pub fn idle(&self) -> &I {
        &self.idle
    }

    /// The CPU side, mutably.
    pub fn idle_mut(&mut self) -> &mut I {
        &mut self.idle
    }
}

impl<I: Idle> Wait for InterruptWait<'_, I> {
    fn wait(&mut self) -> Result<(), WaitTimeout> {
        if self.idle.expired() {
            return Err(WaitTimeout {
                waits: self.stats.waits,
            });
        }
        self.stats.waits += 1;
        match self.mode() {
            WaitMode::Poll => {
                self.stats.polls += 1;
                self.idle.pause();
            }
            WaitMode::Interrupt => {
                // Hybrid polling: spin a little with interrupts on; an
                // interrupt taken now sets the pending bits like one that
                // ends a halt.
                let mut step = 0;
                while self.idle.spin_before_halt(step) {
                    step = step.saturating_add(1);
                    if !self.device.take_pending(self.queues).is_empty() {
                        self.stats.spun += 1;
                        return Ok(());
                    }
                }
                self.idle.disable_interrupts();
                if !self.device.take_pending(self.queues).is_empty() {
                    self.stats.already_pending += 1;
                    self.idle.enable_interrupts();
                    return Ok(());
                }
                self.stats.halts += 1;
                self.idle.enable_interrupts_and_halt();
                // Consume what woke us before the caller looks at the ring:
                // a later interrupt sets the bit again, so nothing is lost.
                if !self.device.take_pending(self.queues).is_empty() {
                    self.stats.woken_by_queue += 1;
                }
            }
        }
        Ok(())
    }

    fn sleeps_until_interrupt(&self) -> bool {
        self.mode() == WaitMode::Interrupt
    }
}

/// Waits once for used buffers: the one interrupt wait every blocking
/// helper uses (the console, the net control queue, the kernel's block
/// self-tests and benchmarks).
///
/// If `wait` sleeps until an interrupt ([`Wait::sleeps_until_interrupt`]):
///
/// 1. `arm` asks the queues for an interrupt and looks at the rings again
///    (`Virtqueue::enable_interrupts`, which returns `true` when used
///    entries are already there: the device may have used them before it
///    saw the request, and then it will not interrupt for them);
/// 2. only if nothing is there, `wait` sleeps;
/// 3. `disarm` suppresses the interrupts again, whether it slept or not,
///    while the caller collects (§2.7.7: interrupts are only wanted while
///    nobody looks).
///
/// A polling `wait` needs no interrupts: it waits once, and neither `arm`
/// nor `disarm` runs.
///
/// Returns `Ok(false)` when the second look made the wait unnecessary,
/// `Ok(true)` after a wait; the caller collects from the rings either way.
///
/// ```ignore
/// irq::wait_until_used(wait, self, |d| d.enable_interrupts(), |d| d.disable_interrupts())?;
/// ```
pub fn wait_until_used<W, S>(
    wait: &mut W,
    queues: &mut S,
    arm: impl FnOnce(&mut S) -> bool,
    disarm: impl FnOnce(&mut S),
) -> Result<bool, WaitTimeout>
where
    W: Wait + ?Sized,
    S: ?Sized,
{
    if !wait.sleeps_until_interrupt() {
        wait.wait()?;
        return Ok(true);
    }
    if arm(queues) {
        disarm(queues);
        return Ok(false);
    }
    let waited = wait.wait();
    disarm(queues);
    waited.map(|()| true)
}
