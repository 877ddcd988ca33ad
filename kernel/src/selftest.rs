//! The in-kernel self-test runner (`mode=selftest` on the command line;
//! built only with the cargo feature `selftest`).
//!
//! [`run_all`] collects the self-tests of every subsystem (each subsystem
//! keeps its own in a `selftests` module beside its code, compiled only with
//! the feature), runs them in order, and prints one line per test and a
//! summary (serial output contract, see docs/contract.md):
//!
//! ```text
//! selftest: PASS <name>
//! selftest: FAIL <name>: <reason>
//! selftest: N passed, M failed
//! ```
//!
//! then exits QEMU through `isa-debug-exit` with 0x10 if nothing failed
//! (status 33) or 0x11 otherwise (status 35). A test that panics or faults
//! ends the run through the panic handler or the exception report instead
//! (0x12 / 0x13), which the harness also sees as a failure.
//!
//! The command-line keys the self-tests read (`expect.*`, `blk.*`, and
//! `fail=` below) are documented with the scenarios that use them, in
//! tests/qemu/README.md.

use alloc::vec::Vec;

use crate::exit;
use crate::println;
use crate::selftest_api::SelfTest;

/// An address far above the 4 GiB the boot page tables map (and above any
/// RAM the kernel maps later), for `fail=pagefault`. It must be canonical
/// (bits 63..47 all equal): a non-canonical address such as 0xdead_beef_0000
/// raises #GP, not #PF.
const UNMAPPED_ADDRESS: u64 = 0x7e57_dead_0000;

/// `fail=panic` / `fail=pagefault`: fail on purpose right after the CPU
/// tables are loaded, to prove that the harness sees a panic and an
/// exception report (scenarios `fail-panic`, `fail-pagefault`).
pub fn fail_on_request() {
    match crate::cmdline::get("fail") {
        Some("panic") => panic!("deliberate panic requested by fail=panic"),
        Some("pagefault") => {
            log::info!("fail=pagefault: reading {UNMAPPED_ADDRESS:#x}");
            // SAFETY: not safe at all, on purpose: the address is unmapped and
            // the read raises #PF, whose report ends the run.
            let value = unsafe { core::ptr::read_volatile(UNMAPPED_ADDRESS as *const u64) };
            log::error!("fail=pagefault: read {value:#x} from an unmapped address?!");
        }
        // After the other CPUs started: smp::selftests::fail_on_request.
        Some("smp-panic" | "smp-pagefault") => {}
        Some(other) => log::warn!(
            "unknown fail={other:?} ignored (want panic, pagefault, smp-panic or smp-pagefault)"
        ),
        None => {}
    }
}

/// `mode=selftest`: every subsystem's self-tests, in boot order, then exit.
/// Called once every device has been probed.
pub fn run_all() -> ! {
    let tests: Vec<SelfTest> = [
        crate::boot::selftests(),
        crate::cmdline::selftests(),
        crate::cpu::selftests(),
        crate::clock::selftests(),
        crate::memory::selftests(),
        crate::interrupts::selftests(),
        crate::smp::selftests(),
        crate::iommu::selftests(),
        crate::virtio::selftests(),
        // The first block test brings the blk devices up, after the
        // raw-ring tests above have used them and handed them back.
        crate::block::selftests(),
        crate::net::selftests(),
        crate::shell::selftests(),
    ]
    .into_iter()
    .flatten()
    .collect();
    run(&tests)
}

/// Runs `tests`, prints the results and exits QEMU.
pub fn run(tests: &[SelfTest]) -> ! {
    log::info!("selftest: running {} tests", tests.len());
    let mut passed = 0usize;
    let mut failed = 0usize;
    for test in tests {
        match (test.run)() {
            Ok(()) => {
                passed += 1;
                println!("selftest: PASS {}", test.name);
            }
            Err(reason) => {
                failed += 1;
                println!("selftest: FAIL {}: {}", test.name, reason);
            }
        }
    }
    println!("selftest: {passed} passed, {failed} failed");
    exit::qemu_exit(if failed == 0 {
        exit::EXIT_SELFTEST_PASSED
    } else {
        exit::EXIT_SELFTEST_FAILED
    })
}
