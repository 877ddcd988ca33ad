//! The in-kernel self-test runner (`mode=selftest` on the command line).
//!
//! Runs every [`SelfTest`] it is given, in order, and prints one line per test
//! and a summary (serial output contract, see README):
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

use crate::exit;
use crate::println;
use crate::selftest_api::SelfTest;

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
