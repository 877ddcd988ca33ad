//! Leaving QEMU with a status code through the `isa-debug-exit` device.
//!
//! With `-device isa-debug-exit,iobase=0xf4,iosize=4`, a 32-bit write of value
//! `v` to port 0xf4 makes QEMU exit with status `(v << 1) | 1`. The codes the
//! kernel uses (the contract with the test harness, see docs/contract.md):
//!
//! | value  | QEMU status | meaning                    |
//! |--------|-------------|----------------------------|
//! | `0x10` | 33          | self-test passed           |
//! | `0x11` | 35          | self-test failed, or a     |
//! |        |             | `mode=` not in this build  |
//! | `0x12` | 37          | panic or fatal boot error  |
//! | `0x13` | 39          | CPU exception              |
//!
//! Without the device the write goes nowhere, so the kernel then halts with
//! interrupts off: the machine stops doing anything but QEMU keeps running
//! until its `timeout` (or the user) ends it.

use x86_64::instructions::port::Port;

/// I/O port of QEMU's `isa-debug-exit` device (as configured on our command lines).
pub const ISA_DEBUG_EXIT_PORT: u16 = 0xf4;

/// `mode=selftest` (or `mode=bench`) finished and every test passed.
#[cfg(any(feature = "selftest", feature = "bench"))]
pub const EXIT_SELFTEST_PASSED: u32 = 0x10;
/// `mode=selftest` finished and at least one test failed (also: the
/// command line asked for a mode this build was built without).
pub const EXIT_SELFTEST_FAILED: u32 = 0x11;
/// A Rust panic, or the boot information was unusable.
pub const EXIT_PANIC: u32 = 0x12;
/// An unexpected CPU exception (vectors 0..=31).
pub const EXIT_EXCEPTION: u32 = 0x13;

/// Asks QEMU to exit with `code` (status `code * 2 + 1`); halts forever if
/// nobody listens.
pub fn qemu_exit(code: u32) -> ! {
    let mut port = Port::<u32>::new(ISA_DEBUG_EXIT_PORT);
    // SAFETY: port 0xf4 is the debug-exit device or nothing at all; writing it
    // does not touch memory.
    unsafe { port.write(code) };
    halt_forever()
}

/// Interrupts off, `hlt` in a loop: the CPU stops for good (an NMI would
/// only wake it into the next `hlt`).
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
