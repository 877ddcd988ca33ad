//! Which of the ACPI MADT's processors to start: a pure function of the table's entries.
//!
//! The MADT describes a processor with a Processor Local APIC entry (type 0, an 8-bit APIC ID)
//! or a Processor Local x2APIC entry (type 9, a 32-bit ID); ACPI 6.5 §5.2.12.2 and §5.2.12.12.
//! Firmware may list the same processor in both, and INIT-SIPI-SIPI must reach each processor
//! once, so the list is sorted and each ID kept once; the caller's own ID is left out.
//!
//! The host tests (`tests/tests/smp_cpus_to_start.rs`) include this very file with `#[path]`:
//! keep it free of `crate::` paths.

use alloc::vec::Vec;

/// The local APIC IDs to start, in ascending order, each once: those of the `(APIC ID,
/// enabled)` entries that are enabled, other than `own_apic_id` (the CPU asking).
pub fn cpus_to_start(entries: impl IntoIterator<Item = (u32, bool)>, own_apic_id: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = entries
        .into_iter()
        .filter(|&(apic_id, enabled)| enabled && apic_id != own_apic_id)
        .map(|(apic_id, _)| apic_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}
