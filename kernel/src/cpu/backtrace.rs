//! Walking the frame-pointer chain for panic and exception reports.
//!
//! The kernel is built with `-C force-frame-pointers=yes` (.cargo/config.toml),
//! so every function starts with `push rbp; mov rbp, rsp`: at `[rbp]` sits the
//! caller's RBP and at `[rbp + 8]` the return address into the caller. The
//! walk only follows RBP values that lie inside one of the kernel's known
//! stacks and move strictly upwards, so a corrupted chain ends the walk instead
//! of faulting inside a fault report.

use core::fmt::{self, Write};

/// Stop after this many frames (a loop would otherwise run forever).
const MAX_FRAMES: usize = 24;

/// The kernel's stacks: the boot (main) stack and the IST stacks, and the
/// calling CPU's own stacks if it is an application processor (`smp`;
/// empty ranges on the bootstrap processor).
fn known_stacks() -> [(u64, u64); 8] {
    use super::gdt::{DOUBLE_FAULT_STACK, MACHINE_CHECK_STACK, NMI_STACK};
    let own = crate::smp::percpu::this_cpu().stacks();
    [
        crate::boot::entry::boot_stack_bounds(),
        DOUBLE_FAULT_STACK.bounds(),
        NMI_STACK.bounds(),
        MACHINE_CHECK_STACK.bounds(),
        own[0],
        own[1],
        own[2],
        own[3],
    ]
}

/// Writes ` 0x<return address>` for each frame reachable from `rbp`.
pub fn write(out: &mut impl Write, mut rbp: u64) -> fmt::Result {
    let stacks = known_stacks();
    for _ in 0..MAX_FRAMES {
        let on_a_stack = stacks
            .iter()
            .any(|&(low, high)| rbp >= low && rbp.saturating_add(16) <= high);
        if !rbp.is_multiple_of(8) || !on_a_stack {
            break;
        }
        let frame = rbp as *const u64;
        // SAFETY: rbp is 8-aligned and [rbp, rbp + 16) lies inside one of the
        // kernel's stacks (static, or frames an application processor got at
        // start-up and never gives back), which are always mapped and readable.
        let (caller_rbp, return_address) = unsafe { (frame.read(), frame.add(1).read()) };
        if return_address == 0 {
            break;
        }
        write!(out, " {return_address:#x}")?;
        if caller_rbp <= rbp {
            break;
        }
        rbp = caller_rbp;
    }
    write!(out, " (resolve with addr2line -e <kernel ELF>)")
}

/// The current RBP, to start a walk from the caller's own frame.
#[inline(always)]
pub fn current_rbp() -> u64 {
    let rbp: u64;
    // SAFETY: reading a register has no side effects.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack, preserves_flags))
    };
    rbp
}
