//! Which CPU is running, how many are online, and where to send work and interrupts.
//!
//! This is the interface the rest of the kernel programs against. Until the application
//! processors are started (SMP bring-up), exactly one CPU is online: the bootstrap processor,
//! CPU 0. CPU numbers are dense indices `0..online_cpus()` in the order the CPUs came up, not
//! local APIC IDs (which may have gaps); [`apic_id`] translates.

// The multiqueue drivers and the SMP bring-up land against these names; until then some are unused.
#![allow(dead_code)]

/// The index of the CPU executing this code (0 is the bootstrap processor).
pub fn current_cpu() -> usize {
    0
}

/// How many CPUs are online and take work (at least 1).
pub fn online_cpus() -> usize {
    1
}

/// The local APIC ID of CPU `cpu`, the destination to put in an MSI address or IOAPIC entry
/// that should interrupt that CPU; `None` if no such CPU is online.
pub fn apic_id(cpu: usize) -> Option<u32> {
    if cpu == 0 {
        crate::interrupts::local_apic_id()
    } else {
        None
    }
}

/// Which virtqueues a CPU submits on and takes interrupts for, by label (`"blk0 requestq2"`),
/// recorded by the drivers as they assign queues and listed by the shell's `cpus` command.
static QUEUE_ASSIGNMENTS: spin::Mutex<alloc::vec::Vec<(usize, alloc::string::String)>> =
    spin::Mutex::new(alloc::vec::Vec::new());

/// Records that `cpu` owns the queue named `label`.
pub fn note_queue(cpu: usize, label: alloc::string::String) {
    QUEUE_ASSIGNMENTS.lock().push((cpu, label));
}

/// The labels of the queues [`note_queue`] recorded for `cpu`, in the order recorded.
pub fn queues_of(cpu: usize) -> alloc::vec::Vec<alloc::string::String> {
    QUEUE_ASSIGNMENTS
        .lock()
        .iter()
        .filter(|(owner, _)| *owner == cpu)
        .map(|(_, label)| label.clone())
        .collect()
}
