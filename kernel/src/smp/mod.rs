//! Which CPU is running, how many are online, and where to send work and interrupts.
//!
//! This is the interface the rest of the kernel programs against. CPU numbers are dense indices
//! `0..online_cpus()` in the order the CPUs came up (0 is the bootstrap processor), not local
//! APIC IDs (which may have gaps); [`apic_id`] translates. Before [`init`] starts the
//! application processors exactly one CPU is online.
//!
//! - [`percpu`]: each CPU's own data, found through its GS base: [`current_cpu`] is one load.
//! - [`startup`] and [`trampoline`]: the other CPUs, from the ACPI MADT (which ones:
//!   [`madt_cpus`]) through INIT-SIPI-SIPI and a real-mode trampoline into the kernel (Intel SDM
//!   vol. 3A §9.4, §11.6).
//! - [`work`]: [`run_on`], running a function on a given CPU (per-CPU queue + work IPI), and
//!   [`run_on_all`], on every CPU at once.
//! - [`stop`]: one crash report when CPUs fail, the others stopped by NMI.
//!
//! To make a device interrupt a given CPU, put that CPU's APIC ID in the MSI-X message:
//! `interrupts::msi_message_to(vector, smp::apic_id(cpu)?)`; the handler then runs on that CPU.
//! The book chapter is docs/13-other-cpus.md.
//!
//! Locks here: each CPU's work queue (see `work.rs`) and [`QUEUE_ASSIGNMENTS`] (the drivers'
//! queue-to-CPU records, written at bring-up, read by the shell), both taken with interrupts
//! disabled. The online count is an atomic written only during [`init`].

// The multiqueue drivers and benchmarks land against the interface below (`note_queue`,
// `Pending`, ...); until then some of it is unused in some builds.
#![allow(dead_code)]

mod madt_cpus;
pub mod percpu;
#[cfg(feature = "selftest")]
mod selftests;
pub mod startup;
pub mod stop;
mod trampoline;
pub mod work;

use core::sync::atomic::{AtomicUsize, Ordering};

use alloc::string::String;
use alloc::vec::Vec;
use x86_64::instructions::interrupts::without_interrupts;

pub use percpu::{CpuState, CPUS, MAX_CPUS};
#[cfg(feature = "selftest")]
pub use selftests::selftests;
#[allow(unused_imports)]
pub use work::{run_on, run_on_all, Pending, SmpError};

/// CPUs online (entries `0..ONLINE` of [`CPUS`] are in use). Written only by [`init`] on the
/// bootstrap processor; read-mostly.
static ONLINE: AtomicUsize = AtomicUsize::new(1);

/// The index of the CPU executing this code (0 is the bootstrap processor).
#[inline]
pub fn current_cpu() -> usize {
    percpu::current_index()
}

/// How many CPUs are online and take work (at least 1).
pub fn online_cpus() -> usize {
    ONLINE.load(Ordering::Acquire)
}

fn set_online(count: usize) {
    ONLINE.store(count.clamp(1, MAX_CPUS), Ordering::Release);
}

/// The local APIC ID of CPU `cpu`, the destination to put in an MSI address or IOAPIC entry
/// that should interrupt that CPU; `None` if no such CPU is online.
pub fn apic_id(cpu: usize) -> Option<u32> {
    if cpu >= online_cpus() {
        return None;
    }
    if cpu == 0 && CPUS[0].state() == CpuState::Absent {
        // Before `init` recorded it.
        return crate::interrupts::local_apic_id();
    }
    Some(CPUS[cpu].apic_id.load(Ordering::Relaxed))
}

/// Starts every other CPU the ACPI MADT lists (see [`startup`]) and prints `cpus: N online`,
/// naming any CPU that did not answer. Call once, on the bootstrap processor, after
/// `interrupts::init` (and the heap, for the CPUs' tables).
pub fn init() {
    let report = startup::start_all();
    let online = online_cpus();
    for (apic_id, why) in &report.failures {
        crate::println!("cpus: the CPU with local APIC ID {apic_id} did not come up: {why}");
    }
    if report.failures.is_empty() {
        crate::println!("cpus: {online} online");
    } else {
        crate::println!(
            "cpus: {online} online, {} of {} did not come up",
            report.failures.len(),
            report.present
        );
    }
    #[cfg(feature = "selftest")]
    selftests::fail_on_request();
    for (cpu, entry) in CPUS.iter().enumerate().take(online).skip(1) {
        log::info!(
            "smp: CPU {cpu} online (local APIC ID {}, APIC timer {} kHz)",
            entry.apic_id.load(Ordering::Relaxed),
            entry.apic_timer_hz.load(Ordering::Relaxed) / 1000
        );
    }
}

/// Counts one dispatched interrupt for the calling CPU (`interrupts::dispatch`).
#[inline]
pub fn count_interrupt() {
    percpu::this_cpu()
        .interrupts
        .fetch_add(1, Ordering::Relaxed);
}

/// The work IPI arrived on this CPU (`interrupts::dispatch`, interrupts disabled).
pub fn work_ipi_arrived() {
    work::work_ipi_arrived();
}

/// Which virtqueues a CPU submits on and takes interrupts for, by label (`"blk0 requestq2"`),
/// recorded by the drivers as they assign queues and listed by the shell's `cpus` command.
/// Taken with interrupts disabled.
static QUEUE_ASSIGNMENTS: spin::Mutex<Vec<(usize, String)>> = spin::Mutex::new(Vec::new());

/// Records that `cpu` owns the queue named `label`.
pub fn note_queue(cpu: usize, label: String) {
    without_interrupts(|| QUEUE_ASSIGNMENTS.lock().push((cpu, label)));
}

/// The labels of the queues [`note_queue`] recorded for `cpu`, in the order recorded.
pub fn queues_of(cpu: usize) -> Vec<String> {
    without_interrupts(|| {
        QUEUE_ASSIGNMENTS
            .lock()
            .iter()
            .filter(|(owner, _)| *owner == cpu)
            .map(|(_, label)| label.clone())
            .collect()
    })
}
