//! `mode=bench`: run the benchmark sections the command line names and
//! leave QEMU.
//!
//! `bench=blk[,...]` (default `blk`) picks the sections; each prints
//! machine-readable lines of the form
//!
//! ```text
//! bench: <section>.<workload>[.<mode>] key=value key=value ...
//! ```
//!
//! that `x.py bench` parses, and the run ends with `bench: done` (QEMU exit
//! status 33) or `bench: error <section>: <why>` (status 35). Sections:
//!
//! - `blk`: [`crate::block::bench`] (IOPS, throughput, notifications and
//!   interrupts per request, interrupt-driven and polling).
//! - `compare`: [`crate::peer::bench::compare`], `bench.repeat=` rounds of
//!   the `blk` workloads on our stack and then on the `virtio-drivers`
//!   crate, on the same device, handed over with a reset each way.
//! - `ready`: claims the disks and prints `bench: boot.ready uptime_us=`,
//!   for `x.py bench`'s boot-time rows (it times QEMU from the host).
//!
//! Network and console sections plug in here the same way.

use crate::println;

/// Runs the sections `bench=` names and exits QEMU.
pub fn run() -> ! {
    let sections = crate::cmdline::get("bench").unwrap_or("blk");
    let mut failed = false;
    for section in sections.split(',').filter(|s| !s.is_empty()) {
        let started = crate::clock::uptime_ns();
        let result = match section {
            // `bench.repeat=` runs of every workload, for min / median / max.
            "blk" => (0..crate::peer::repeat_count()).try_for_each(|_| crate::block::bench::run()),
            "compare" => crate::peer::bench::compare(),
            // Boot time: every device up (probe and net ran before `bench`).
            "ready" => {
                crate::block::init();
                println!(
                    "bench: boot.ready stack=ours uptime_us={}",
                    crate::clock::uptime_ns() / 1000
                );
                Ok(())
            }
            other => Err(alloc::format!(
                "unknown section {other:?} (known: blk, compare, ready)"
            )),
        };
        match result {
            Ok(()) => log::info!(
                "bench: section {section} took {} ms",
                (crate::clock::uptime_ns() - started) / 1_000_000
            ),
            Err(why) => {
                println!("bench: error {section}: {why}");
                failed = true;
            }
        }
    }
    if failed {
        crate::exit::qemu_exit(crate::exit::EXIT_SELFTEST_FAILED)
    }
    println!("bench: done");
    crate::exit::qemu_exit(crate::exit::EXIT_SELFTEST_PASSED)
}
