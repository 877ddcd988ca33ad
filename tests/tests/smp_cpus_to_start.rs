//! Which MADT processors the kernel starts (`kernel/src/smp/madt_cpus.rs`), on the host: the
//! file is included as it is, so these tests run the code the kernel runs.

extern crate alloc;

#[path = "../../kernel/src/smp/madt_cpus.rs"]
mod madt_cpus;

use madt_cpus::cpus_to_start;

#[test]
fn an_id_listed_as_local_apic_and_as_x2apic_is_started_once() {
    // Type 0 entries for 0..=3, then type 9 entries repeating 2 and 3 (as some firmware does).
    let entries = [
        (0, true),
        (1, true),
        (2, true),
        (3, true),
        (2, true),
        (3, true),
    ];
    assert_eq!(cpus_to_start(entries, 0), vec![1, 2, 3]);
}

#[test]
fn the_callers_own_id_is_never_started_even_if_listed_twice() {
    let entries = [(5, true), (1, true), (5, true)];
    assert_eq!(cpus_to_start(entries, 5), vec![1]);
}

#[test]
fn disabled_entries_are_left_out_and_an_enabled_duplicate_still_counts() {
    let entries = [(0, true), (4, false), (6, false), (6, true), (2, true)];
    assert_eq!(cpus_to_start(entries, 0), vec![2, 6]);
}

#[test]
fn ids_come_out_in_ascending_order_gaps_kept() {
    let entries = [(0, true), (9, true), (300, true), (4, true)];
    assert_eq!(cpus_to_start(entries, 0), vec![4, 9, 300]);
}

#[test]
fn nothing_to_start_on_one_cpu() {
    assert!(cpus_to_start([(0, true)], 0).is_empty());
    assert!(cpus_to_start([], 0).is_empty());
}
