//! # Waiting for a device: the kernel's one wait
//!
//! (virtio 1.2 §2.7.7 "Used Buffer Notification Suppression", §2.7.13
//! "Supplying Buffers to The Device", §2.7.14 "Receiving Used Buffers From
//! The Device"; Intel SDM vol. 2B `STI`, `HLT`, vol. 3A §11.5.4 APIC timer.)
//!
//! A driver hands the device a request (§2.7.13: descriptors, available
//! ring, notification) and then has nothing to do until the device puts it
//! in the used ring. How it waits meanwhile is not the driver's business:
//! `drivers` asks for a [`drivers::device::Wait`] and calls its `wait` each
//! time it has collected everything that was there. [`KernelWait`] is the
//! kernel's answer, the same for every device: the block layer, the shell's
//! console and the network cards all wait through it.
//!
//! A `KernelWait` is the driver crate's [`InterruptWait`] on the kernel's
//! CPU side ([`KernelIdle`]), in one of two modes:
//!
//! - **Interrupt** (a device `virtio::irq` routed: MSI-X or a line). The
//!   driver asks the queue for an interrupt and looks at the ring once more
//!   before it waits (§2.7.7 / §2.7.14: the device may have used the buffer
//!   before it saw the request for an interrupt, and then it will not send
//!   one); `drivers::irq::wait_until_used` does that. Then the wait turns
//!   interrupts off (`cli`), checks the queue's pending bit that the
//!   interrupt handler sets, and only if it is clear halts with `sti; hlt`.
//!   `sti` takes effect after the next instruction, so no interrupt can be
//!   taken between the check and the `hlt`: one that came after the `cli`
//!   is held pending and ends the `hlt` at once. Without the `cli`, an
//!   interrupt between "nothing pending" and `hlt` would be handled and the
//!   CPU would then sleep, waiting for an interrupt that already came.
//! - **Poll** (`virtio.poll=1`, a device with no interrupt route, a queue
//!   whose interrupts were not wired such as net's control queue, or a
//!   benchmark comparing both): each wait is one `spin_loop` hint, and the
//!   driver looks at the used ring again.
//!
//! Every wait ends. A deadline (uptime from the calibrated TSC; a budget of
//! steps if the TSC could not be calibrated) turns into
//! [`drivers::device::WaitTimeout`], which the driver reports as a timeout
//! after resetting the device. Each halt is bounded too: a one-shot local
//! APIC timer, armed just before `sti; hlt`, fires after 10 ms, so an
//! interrupt that never comes (a device that lost it, a misrouted line)
//! costs 10 ms per wait, not the whole run.
//!
//! What the waits did is counted for the self-tests and benchmarks: per
//! wait (`KernelWait::stats`: waits, halts, interrupts already pending,
//! halts ended by the queue's interrupt, polls) and since boot
//! (`halt_count`, `watchdog_count`). Those readers exist only in the
//! builds that use them (features `selftest`, `bench`). Device drivers get their wait from
//! [`for_device`] (or `virtio::irq::DeviceIrq::wait`); `docs/04-interrupts.md`
//! follows one completion through it.

use core::sync::atomic::{AtomicU64, Ordering};

use drivers::device::{Wait, WaitTimeout};
use drivers::irq::{DeviceInterrupts, Idle, InterruptWait, QueueSet, WaitMode};
use spin::Once;

use crate::interrupts;
use crate::virtio::irq::DeviceIrq;

/// Default patience of a [`KernelWait`] (the self-tests' waits).
#[cfg(feature = "selftest")]
pub const DEFAULT_TIMEOUT_NS: u64 = 2_000_000_000;

/// How long the local APIC watchdog lets a halt last: 625 000 ticks of the
/// APIC timer divided by 16, 10 ms at QEMU's 1 GHz APIC clock.
const WATCHDOG_TICKS: u32 = 625_000;

/// One watchdog period, for counting a deadline in halts when the TSC is not
/// calibrated.
const WATCHDOG_PERIOD_NS: u64 = 10_000_000;

/// How many polls share one clock read: a timeout is noticed at most this
/// many `spin_loop` hints late, which is far below any timeout we use.
const POLLS_PER_CLOCK_READ: u32 = 64;

/// How long an interrupt-driven wait spins, with interrupts on, before it
/// halts (hybrid polling, [`drivers::irq::Idle::spin_before_halt`]): the
/// command line's `wait.spin_us=` (0, the default: halt at once). A running
/// CPU takes the completion's interrupt at once, where a halted one must be
/// woken (under TCG, QEMU's I/O thread signals the sleeping vCPU thread).
/// Measured under TCG on a 2-core host loaded five times over (docs/04):
/// 50 µs cut the interrupts per 4 KiB read at depth 1 from 0.92 to 0.15,
/// but the spinning vCPU thread then competes with the QEMU thread that
/// completes the request, and some runs fell to 1-2 thousand IOPS, as
/// polling mode does on such a host; so it is off unless asked for.
fn spin_before_halt_ns() -> u64 {
    static SPIN_NS: Once<u64> = Once::new();
    *SPIN_NS.call_once(|| {
        crate::cmdline::get("wait.spin_us")
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |us| us.min(10_000) * 1000)
    })
}

/// TSC ticks spent halted in waits since boot (benchmark build only: the
/// block benchmark subtracts them to count what an interrupt-driven request
/// costs the CPU).
#[cfg(feature = "bench")]
static HALTED_TICKS: AtomicU64 = AtomicU64::new(0);

/// TSC ticks the CPU spent halted in waits since boot.
#[cfg(feature = "bench")]
pub fn halted_ticks() -> u64 {
    HALTED_TICKS.load(Ordering::Relaxed)
}

/// How many times a wait halted the CPU since boot.
static HALTS: AtomicU64 = AtomicU64::new(0);
/// How many times the watchdog timer fired while a CPU was halted in a
/// wait (the timer keeps running after a device interrupt ended the halt,
/// and a later expiry outside a halt is not counted). Shared by all CPUs:
/// an atomic, never a lock. Whether *this* CPU is in a wait's `hlt` is
/// per-CPU (`smp::percpu::PerCpu::in_wait_halt`): each CPU has its own
/// local APIC timer, so its watchdog fires on it.
static WATCHDOG_WAKES: AtomicU64 = AtomicU64::new(0);
static WATCHDOG_VECTOR: Once<Option<u8>> = Once::new();

/// The pending bits of a wait that has no device interrupts behind it: it
/// always polls, so nothing ever sets them.
static NO_INTERRUPTS: DeviceInterrupts = DeviceInterrupts::new();

fn watchdog_fired(_vector: u8) {
    if crate::smp::percpu::this_cpu()
        .in_wait_halt
        .load(Ordering::Relaxed)
    {
        WATCHDOG_WAKES.fetch_add(1, Ordering::Relaxed);
    }
}

fn watchdog_vector() -> Option<u8> {
    *WATCHDOG_VECTOR.call_once(|| match interrupts::allocate_vector(watchdog_fired) {
        Ok(vector) => Some(vector),
        Err(error) => {
            log::warn!("wait: no vector for the wait watchdog ({error}): halts are unbounded");
            None
        }
    })
}

/// Halts performed by interrupt-driven waits since boot.
#[cfg(feature = "selftest")]
pub fn halt_count() -> u64 {
    HALTS.load(Ordering::Relaxed)
}

/// Halts the watchdog ended since boot.
#[cfg(feature = "selftest")]
pub fn watchdog_count() -> u64 {
    WATCHDOG_WAKES.load(Ordering::Relaxed)
}

/// Arms this CPU's watchdog (its local APIC timer, one shot of 10 ms) and
/// halts with `sti; hlt` until an interrupt: the one step of every wait.
/// Call with interrupts disabled, after checking there is nothing to wait
/// for; returns with interrupts enabled. In a job that CPU 0 runs in its
/// work IPI handler (`smp::work`) no interrupt could end the halt: the
/// waits refuse before they get here, and this returns without halting.
pub fn halt_with_watchdog() {
    if crate::smp::work::in_work_ipi() {
        return;
    }
    if let Some(vector) = watchdog_vector() {
        let _ = interrupts::start_timer_oneshot(vector, WATCHDOG_TICKS);
    }
    let in_halt = &crate::smp::percpu::this_cpu().in_wait_halt;
    HALTS.fetch_add(1, Ordering::Relaxed);
    in_halt.store(true, Ordering::Relaxed);
    #[cfg(feature = "bench")]
    let halted = crate::clock::tsc();
    interrupts::wait_for_interrupt();
    #[cfg(feature = "bench")]
    HALTED_TICKS.fetch_add(crate::clock::tsc() - halted, Ordering::Relaxed);
    in_halt.store(false, Ordering::Relaxed);
}

/// The CPU side of a wait: `cli`, `sti; hlt` with the watchdog armed, a
/// `spin_loop` hint per poll, and the deadline.
struct KernelIdle {
    deadline_ns: u64,
    /// Used instead of the deadline when the TSC is not calibrated.
    steps_left: u64,
    /// Polls since the clock was last read. Reading the clock (`rdtsc`) is
    /// the dearest thing a poll does (microseconds under an emulating
    /// hypervisor), so a polling wait reads it only every
    /// [`POLLS_PER_CLOCK_READ`] polls; a halting wait never calls `pause`
    /// and so reads it on every step.
    polls_since_clock: u32,
    /// When the current spin before a halt ends (TSC ticks).
    spin_until: u64,
}

impl KernelIdle {
    /// Gives up `timeout_ns` from now.
    fn new(timeout_ns: u64) -> Self {
        KernelIdle {
            deadline_ns: crate::clock::uptime_ns().saturating_add(timeout_ns),
            // A halt lasts at most one watchdog period.
            steps_left: (timeout_ns / WATCHDOG_PERIOD_NS).max(1) * 100,
            polls_since_clock: 0,
            spin_until: 0,
        }
    }
}

impl Idle for KernelIdle {
    fn disable_interrupts(&mut self) {
        interrupts::disable();
    }

    fn enable_interrupts(&mut self) {
        interrupts::enable();
    }

    fn enable_interrupts_and_halt(&mut self) {
        halt_with_watchdog();
    }

    fn spin_before_halt(&mut self, step: u32) -> bool {
        let now = crate::clock::tsc();
        if step == 0 {
            let hz = crate::clock::tsc_hz();
            let spin_ns = spin_before_halt_ns();
            if hz == 0 || spin_ns == 0 {
                return false; // no spin asked for, or no clock to bound it
            }
            let budget = (u128::from(hz) * u128::from(spin_ns) / 1_000_000_000) as u64;
            self.spin_until = now.saturating_add(budget);
        }
        // No `pause` (`spin_loop`) here: under TCG it ends the translated
        // block and goes back to QEMU's CPU loop, which can then wait for
        // the lock QEMU's I/O thread holds while it completes the very
        // request we spin for (seen: steps of hundreds of µs on a loaded
        // host). One CPU, no hyper-thread sibling to yield to.
        now < self.spin_until
    }

    fn pause(&mut self) {
        self.polls_since_clock = self.polls_since_clock.wrapping_add(1);
        core::hint::spin_loop();
    }

    fn expired(&mut self) -> bool {
        if self.polls_since_clock != 0 && self.polls_since_clock < POLLS_PER_CLOCK_READ {
            return false;
        }
        self.polls_since_clock = 0;
        if crate::clock::tsc_hz() != 0 {
            return crate::clock::uptime_ns() >= self.deadline_ns;
        }
        self.steps_left = self.steps_left.saturating_sub(1);
        self.steps_left == 0
    }
}

/// The wait every blocking call of a kernel driver uses (see the module
/// docs). Create one per blocking call: its deadline starts when it is made.
pub struct KernelWait {
    inner: InterruptWait<'static, KernelIdle>,
    /// No interrupt announces this device's completions: always poll.
    polls_only: bool,
}

impl KernelWait {
    /// A wait for `queues` of the device whose interrupts `device` records:
    /// halts until one of them interrupts (polls if the device is polled),
    /// gives up `timeout_ns` from now.
    pub fn new(device: &'static DeviceInterrupts, queues: QueueSet, timeout_ns: u64) -> Self {
        KernelWait {
            inner: InterruptWait::new(device, queues, KernelIdle::new(timeout_ns)),
            polls_only: false,
        }
    }

    /// A wait that polls, for a device (or a queue) no interrupt announces;
    /// gives up `timeout_ns` from now.
    pub fn polling(timeout_ns: u64) -> Self {
        KernelWait {
            inner: InterruptWait::new(&NO_INTERRUPTS, QueueSet::EMPTY, KernelIdle::new(timeout_ns))
                .with_mode(WaitMode::Poll),
            polls_only: true,
        }
    }

    /// Forces a mode (benchmarks compare both on one device). A wait without
    /// interrupts behind it polls whatever is asked.
    pub fn with_mode(self, mode: WaitMode) -> Self {
        let mode = if self.polls_only {
            WaitMode::Poll
        } else {
            mode
        };
        KernelWait {
            inner: self.inner.with_mode(mode),
            polls_only: self.polls_only,
        }
    }

    /// The mode in use.
    #[cfg(feature = "selftest")]
    pub fn mode(&self) -> WaitMode {
        self.inner.mode()
    }

    /// What the waits so far did.
    #[cfg(any(feature = "selftest", feature = "bench"))]
    pub fn stats(&self) -> drivers::irq::WaitStats {
        self.inner.stats()
    }
}

impl Wait for KernelWait {
    fn wait(&mut self) -> Result<(), WaitTimeout> {
        // A halt in CPU 0's work IPI handler would never end (`smp::work`):
        // give up at once, as on a timeout.
        if self.inner.sleeps_until_interrupt() && crate::smp::work::in_work_ipi() {
            return Err(WaitTimeout {
                waits: self.inner.stats().waits,
            });
        }
        self.inner.wait()
    }

    fn sleeps_until_interrupt(&self) -> bool {
        self.inner.sleeps_until_interrupt()
    }
}

/// The wait for `queues` of a device: through its interrupt slot if
/// `virtio::irq` gave it one (`irq`), polling otherwise.
pub fn for_device(irq: Option<DeviceIrq>, queues: QueueSet, timeout_ns: u64) -> KernelWait {
    match irq {
        Some(irq) => irq.wait(queues, timeout_ns),
        None => KernelWait::polling(timeout_ns),
    }
}
