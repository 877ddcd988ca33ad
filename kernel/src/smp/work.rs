//! Running a function on a given CPU: a per-CPU work queue and the work IPI.
//!
//! [`run_on`]`(cpu, job)` puts the job on `cpu`'s queue (its [`PerCpu::work`], a spin lock taken
//! with interrupts disabled: the only lock of a CPU's entry, held for one push or pop) and sends
//! that CPU the work IPI ([`WORK_IPI_VECTOR`], a fixed interrupt through the local APIC's
//! interrupt command register, Intel SDM vol. 3A §11.6). It returns a [`Pending`] to wait on.
//!
//! Where the job runs:
//! - **An application processor** runs jobs in its idle loop ([`idle_loop`]), one at a time,
//!   in order, with interrupts enabled (a job may wait for a device's interrupt, which then
//!   arrives on this CPU if it was routed here). With an empty queue it halts with interrupts on
//!   (`sti; hlt`, checked with interrupts off so no IPI is lost), so the work IPI or a device
//!   interrupt wakes it.
//! - **The calling CPU itself**: the job runs at once, inside `run_on`.
//! - **CPU 0 from another CPU**: CPU 0 runs the kernel's main loop, not an idle loop, so it
//!   runs such jobs in the work IPI's handler: with interrupts disabled, so they must be short
//!   and must not take a lock that CPU 0 takes with interrupts enabled. They cannot wait either:
//!   until the handler's EOI the local APIC holds back every interrupt of the work IPI's
//!   priority class and below (SDM vol. 3A §11.8.3), the watchdog's and the devices' included,
//!   so a halt there would never end. While the handler runs them, [`PerCpu::in_work_ipi`] is
//!   set, and the waits ([`Pending::wait`], `wait::KernelWait`) return an error at once
//!   instead of halting.
//!
//! When a job is done its CPU sets the [`Pending`]'s flag and sends the work IPI back to the
//! CPU that asked, which may be halted in [`Pending::wait`]; the wait is also bounded by the
//! wait watchdog (`wait.rs`) and by its timeout.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use spin::Mutex;
use x86_64::instructions::interrupts::without_interrupts;

use super::percpu::{this_cpu, PerCpu, CPUS};
use crate::interrupts::{self, IrqError, WORK_IPI_VECTOR};

/// A queued job.
pub type Job = Box<dyn FnOnce() + Send>;

/// Why a job could not be sent or waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmpError {
    /// No online CPU has that number.
    NoSuchCpu(usize),
    /// The work IPI could not be sent.
    Ipi(IrqError),
    /// The job did not finish within the wait's timeout (it may still run later).
    Timeout { cpu: usize },
    /// A job running in CPU 0's work IPI handler tried to wait for one on `cpu`, which it cannot
    /// (see the module docs); the job may still run later.
    WaitInWorkIpi { cpu: usize },
}

impl fmt::Display for SmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SmpError::NoSuchCpu(cpu) => write!(f, "no online CPU {cpu}"),
            SmpError::Ipi(error) => write!(f, "work IPI not sent: {error}"),
            SmpError::Timeout { cpu } => write!(f, "the job on CPU {cpu} did not finish in time"),
            SmpError::WaitInWorkIpi { cpu } => write!(
                f,
                "cannot wait for the job on CPU {cpu} inside CPU 0's work IPI handler"
            ),
        }
    }
}

/// What the job's CPU and the waiter share.
struct Completion<R> {
    done: AtomicBool,
    result: Mutex<Option<R>>,
    /// The CPU to wake when the job is done.
    waiter: usize,
}

/// A job sent with [`run_on`]: its result, once its CPU has run it.
pub struct Pending<R> {
    completion: Arc<Completion<R>>,
    cpu: usize,
}

impl<R> Pending<R> {
    /// Whether the job has finished.
    pub fn is_done(&self) -> bool {
        self.completion.done.load(Ordering::Acquire)
    }

    /// The CPU the job runs on.
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// Waits until the job has run and returns its result, halting between checks (the job's
    /// CPU sends a work IPI when done); gives up after `timeout_ns`. Call with no locks held,
    /// not from an interrupt handler: in a job that CPU 0 runs in its work IPI handler, it
    /// returns [`SmpError::WaitInWorkIpi`] unless the job is already done. Returns with
    /// interrupts as they were.
    pub fn wait(self, timeout_ns: u64) -> Result<R, SmpError> {
        if in_work_ipi() && !self.is_done() {
            return Err(SmpError::WaitInWorkIpi { cpu: self.cpu });
        }
        let was_enabled = x86_64::instructions::interrupts::are_enabled();
        let deadline = crate::clock::uptime_ns().saturating_add(timeout_ns);
        // Without a calibrated clock, a budget of watchdog-bounded halts instead.
        let mut halts_left = (timeout_ns / 10_000_000).max(1) * 100;
        let result = loop {
            interrupts::disable();
            if self.is_done() {
                break without_interrupts(|| self.completion.result.lock().take())
                    .ok_or(SmpError::Timeout { cpu: self.cpu });
            }
            let expired = if crate::clock::tsc_hz() != 0 {
                crate::clock::uptime_ns() >= deadline
            } else {
                halts_left = halts_left.saturating_sub(1);
                halts_left == 0
            };
            if expired {
                break Err(SmpError::Timeout { cpu: self.cpu });
            }
            // `sti; hlt` with the watchdog armed: the done IPI (or the watchdog) ends it.
            crate::wait::halt_with_watchdog();
        };
        if was_enabled {
            interrupts::enable();
        } else {
            interrupts::disable();
        }
        result
    }
}

/// Runs `job` on CPU `cpu` (see the module docs for where and how) and returns a handle to
/// wait for its result. The job is queued behind any earlier ones for that CPU.
pub fn run_on<R, F>(cpu: usize, job: F) -> Result<Pending<R>, SmpError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let target = super::apic_id(cpu).ok_or(SmpError::NoSuchCpu(cpu))?;
    let me = super::current_cpu();
    let completion = Arc::new(Completion {
        done: AtomicBool::new(false),
        result: Mutex::new(None),
        waiter: me,
    });
    let pending = Pending {
        completion: completion.clone(),
        cpu,
    };
    let wrapped: Job = Box::new(move || {
        let result = job();
        without_interrupts(|| *completion.result.lock() = Some(result));
        completion.done.store(true, Ordering::Release);
        if completion.waiter != super::current_cpu() {
            if let Some(waiter) = super::apic_id(completion.waiter) {
                // Best effort: the waiter's watchdog ends its halt anyway.
                let _ = interrupts::send_ipi(waiter, WORK_IPI_VECTOR);
            }
        }
    });
    if cpu == me {
        run_job(this_cpu(), wrapped);
        return Ok(pending);
    }
    without_interrupts(|| CPUS[cpu].work.lock().push_back(wrapped));
    interrupts::send_ipi(target, WORK_IPI_VECTOR).map_err(SmpError::Ipi)?;
    Ok(pending)
}

/// Runs one job, counted first (so that whoever sees its result also sees the count).
/// Runs `job(cpu)` on every online CPU at the same time and returns the results in CPU order:
/// the other CPUs get it through [`run_on`], the calling CPU runs its own share inline (so,
/// called from CPU 0, no share runs in an interrupt handler). Waits at most `timeout_ns` for
/// each of the others after its own share is done. For work spread over all CPUs (a benchmark
/// submitting from each).
pub fn run_on_all<R, F>(job: F, timeout_ns: u64) -> Result<Vec<R>, SmpError>
where
    F: Fn(usize) -> R + Send + Sync + 'static,
    R: Send + 'static,
{
    let job = Arc::new(job);
    let me = super::current_cpu();
    let mut others = Vec::new();
    for cpu in (0..super::online_cpus()).filter(|&cpu| cpu != me) {
        let job = job.clone();
        others.push(run_on(cpu, move || job(cpu))?);
    }
    let mine = job(me);
    this_cpu().work_run.fetch_add(1, Ordering::Relaxed);
    let mut results: Vec<Option<R>> = (0..super::online_cpus()).map(|_| None).collect();
    results[me] = Some(mine);
    for pending in others {
        let cpu = pending.cpu();
        results[cpu] = Some(pending.wait(timeout_ns)?);
    }
    results
        .into_iter()
        .enumerate()
        .map(|(cpu, result)| result.ok_or(SmpError::NoSuchCpu(cpu)))
        .collect()
}

fn run_job(me: &PerCpu, job: Job) {
    me.work_run.fetch_add(1, Ordering::Relaxed);
    job();
}

/// The next job queued for this CPU.
fn next_job(me: &PerCpu) -> Option<Job> {
    without_interrupts(|| me.work.lock().pop_front())
}

/// The work IPI's handler (interrupts disabled): counts it; on CPU 0, which has no idle loop of
/// this module, runs the queued jobs here, marked as such (see the module docs).
pub fn work_ipi_arrived() {
    let me = this_cpu();
    me.work_ipis.fetch_add(1, Ordering::Relaxed);
    if me.index() == 0 {
        me.in_work_ipi.store(true, Ordering::Relaxed);
        while let Some(job) = next_job(me) {
            run_job(me, job);
        }
        me.in_work_ipi.store(false, Ordering::Relaxed);
    }
}

/// Whether the calling code is a job that CPU 0 runs in its work IPI handler, where no halt
/// can end (see the module docs).
pub fn in_work_ipi() -> bool {
    this_cpu().in_work_ipi.load(Ordering::Relaxed)
}

/// An application processor's life after start-up: run queued jobs, halt when there are none.
pub fn idle_loop() -> ! {
    let me = this_cpu();
    loop {
        interrupts::disable();
        match without_interrupts(|| me.work.lock().pop_front()) {
            Some(job) => {
                interrupts::enable();
                run_job(me, job);
            }
            // Interrupts are off since the check: an IPI that came after it is held pending
            // and ends the `hlt` at once (`sti` takes effect after `hlt` has started).
            None => interrupts::wait_for_interrupt(),
        }
    }
}
