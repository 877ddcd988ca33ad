//! The shell's `cpus`: one line per CPU (its number, local APIC ID, state, interrupts it
//! handled, work items it ran, its APIC timer's measured rate) and the virtqueues the drivers
//! assigned to it (`smp::queues_of`). The data is `smp`'s per-CPU entries; docs/13-other-cpus.md
//! explains them.

use core::fmt::{self, Write};
use core::sync::atomic::Ordering;

use alloc::string::String;

use super::{CommandResult, Output};
use crate::smp;

/// Writes the table (also used by the self-tests).
pub fn write_table(out: &mut impl Write) -> fmt::Result {
    writeln!(
        out,
        "{:>3} {:>4} {:<8} {:>10} {:>8} {:>9}  queues",
        "cpu", "apic", "state", "interrupts", "work", "timer kHz"
    )?;
    for cpu in 0..smp::online_cpus() {
        let entry = &smp::CPUS[cpu];
        let queues = smp::queues_of(cpu);
        let queues = if queues.is_empty() {
            String::from("-")
        } else {
            queues.join(", ")
        };
        writeln!(
            out,
            "{:>3} {:>4} {:<8} {:>10} {:>8} {:>9}  {}",
            cpu,
            smp::apic_id(cpu).unwrap_or(0),
            entry.state().name(),
            entry.interrupts.load(Ordering::Relaxed),
            entry.work_run.load(Ordering::Relaxed),
            entry.apic_timer_hz.load(Ordering::Relaxed) / 1000,
            queues
        )?;
    }
    Ok(())
}

/// `cpus`: the table above.
pub fn cpus(out: &mut Output) -> CommandResult {
    write_table(out).map_err(|_| String::from("formatting failed"))
}
