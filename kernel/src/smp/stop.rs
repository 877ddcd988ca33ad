//! One crash report, whichever CPUs fail: who prints, and how the other CPUs are stopped.
//!
//! A panic (main.rs) or a fatal exception (`cpu/exceptions.rs`) on any CPU calls
//! [`begin_crash_report`] before printing. The first CPU to get there owns the report: it sends
//! an NMI to each other online CPU by its APIC ID (Intel SDM vol. 3A §11.6.1; an NMI is
//! delivered even to a CPU that has interrupts disabled or spins on a lock), waits briefly for
//! them to park, then prints and exits QEMU. Not the shorthand "all excluding self": that also
//! reaches a CPU still being started, which may have no IDT yet and would triple-fault (and
//! reset the machine mid-report); such a CPU's entry is taken back instead, so it parks itself
//! when it would go online (`startup.rs`). A CPU that takes that NMI, or that crashes itself
//! while another CPU's report is under way, parks: interrupts off, `hlt` forever, printing
//! nothing, so two CPUs panicking at once give one readable report. A crash *inside* the
//! report (the owner failing again) is told apart so that the caller prints a one-line note
//! instead of recursing.

use core::sync::atomic::{AtomicUsize, Ordering};

use super::percpu::{this_cpu, CpuState, CPUS};

/// No CPU is reporting a crash.
const NO_OWNER: usize = usize::MAX;

/// The CPU that owns the crash report, or [`NO_OWNER`].
static CRASH_OWNER: AtomicUsize = AtomicUsize::new(NO_OWNER);

/// How long the reporting CPU waits at most for the others to park (usually microseconds; the
/// bound only matters for a CPU that does not take the NMI, or a vCPU thread the host does not
/// schedule for a while).
const STOP_WAIT_NS: u64 = 1_000_000_000;

/// What the caller of [`begin_crash_report`] should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashRole {
    /// Print the report and exit: the other CPUs have been stopped.
    Report,
    /// This CPU failed again while printing its report: print a short note and exit.
    Recursive,
    /// Another CPU is reporting: call [`park_this_cpu`].
    Park,
}

/// Claims the crash report for this CPU (see the module docs). Call with interrupts disabled.
pub fn begin_crash_report() -> CrashRole {
    let me = super::current_cpu();
    match CRASH_OWNER.compare_exchange(NO_OWNER, me, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => {
            stop_other_cpus(me);
            CrashRole::Report
        }
        Err(owner) if owner == me => CrashRole::Recursive,
        Err(_) => CrashRole::Park,
    }
}

/// Whether some CPU is reporting a crash (an NMI is then the request to park).
pub fn crash_in_progress() -> bool {
    let owner = CRASH_OWNER.load(Ordering::SeqCst);
    owner != NO_OWNER && owner != super::current_cpu()
}

/// Stops this CPU for good: marked stopped, interrupts off, `hlt` forever.
pub fn park_this_cpu() -> ! {
    this_cpu().set_state(CpuState::Stopped);
    crate::exit::halt_forever()
}

/// NMIs every other online CPU and waits (boundedly) until they have parked.
fn stop_other_cpus(me: usize) {
    // The online CPUs, and the one being started, if any: not sent an NMI while it may have no
    // IDT, but turned back so that it parks when it would go online; or it has just come
    // online, before the bootstrap processor counted it, and gets the NMI like the others.
    let online = super::online_cpus();
    let candidates = (online + 1).min(CPUS.len());
    if let Some(starting) = CPUS.get(online) {
        let _ = starting.transition(CpuState::Starting, CpuState::Stopped);
    }
    let mut sent = 0;
    for (index, cpu) in CPUS[..candidates].iter().enumerate() {
        if index != me
            && cpu.state() == CpuState::Online
            && crate::interrupts::send_nmi(cpu.apic_id.load(Ordering::Relaxed)).is_ok()
        {
            sent += 1;
        }
    }
    if sent == 0 {
        // Nobody to wait for: a CPU whose NMI was not sent stays online, and the report's last
        // line names it (`still_running_mask`).
        return;
    }
    let others_parked = || {
        CPUS[..candidates]
            .iter()
            .enumerate()
            .all(|(index, cpu)| index == me || cpu.state() != CpuState::Online)
    };
    let start = crate::clock::uptime_ns();
    let mut spins: u64 = 0;
    while !others_parked() {
        let waited = if crate::clock::tsc_hz() != 0 {
            crate::clock::uptime_ns().saturating_sub(start)
        } else {
            spins * 100
        };
        if waited >= STOP_WAIT_NS {
            break;
        }
        spins += 1;
        core::hint::spin_loop();
    }
}

/// The CPUs that did not park in time (for the report's last line), as a bit mask of CPU
/// numbers below 64.
pub fn still_running_mask() -> u64 {
    let me = super::current_cpu();
    CPUS[..super::online_cpus()]
        .iter()
        .enumerate()
        .filter(|(index, cpu)| *index != me && cpu.state() == CpuState::Online)
        .fold(0, |mask, (index, _)| mask | 1u64 << index)
}
