//! Self-tests for the CPU tables and the interrupt entry path. Each one
//! checks values the hardware reports back (descriptor-table registers, the
//! busy bit `ltr` sets, the frame an interrupt produced), not merely that
//! something ran.

use super::exceptions;
use super::gdt::{self, DOUBLE_FAULT_STACK, MACHINE_CHECK_STACK, NMI_STACK};
use super::idt::{self, IDT_ENTRIES, INTERRUPT_GATE};
use crate::selftest_api::SelfTest;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::arch::asm;
use core::mem::size_of;

/// The CPU self-tests, in the order they should run.
pub fn selftests() -> Vec<SelfTest> {
    vec![
        SelfTest {
            name: "cpu: GDTR, IDTR, TR and segment registers hold the kernel's tables",
            run: test_table_registers,
        },
        SelfTest {
            name: "cpu: 256 IDT gates point to their stubs; #DF, NMI, #MC on IST",
            run: test_idt_gates,
        },
        SelfTest {
            name: "cpu: IST stacks are distinct, aligned and apart from the boot stack",
            run: test_ist_stacks,
        },
        SelfTest {
            name: "cpu: an exception (#UD) is handled and execution resumes after it",
            run: test_exception_resumes,
        },
        SelfTest {
            name: "cpu: interrupt entry and exit preserve all registers",
            run: test_registers_preserved,
        },
        SelfTest {
            name: "cpu: NMI is delivered on its own IST stack",
            run: test_nmi_on_ist,
        },
    ]
}

fn test_table_registers() -> Result<(), String> {
    let gdt = gdt::gdt().ok_or("gdt::init never ran")?;
    let idt = idt::idt().ok_or("idt::init never ran")?;
    let gdtr = x86_64::instructions::tables::sgdt();
    let idtr = x86_64::instructions::tables::sidt();
    let expected_gdtr = (
        gdt as *const gdt::Gdt as u64,
        (size_of::<gdt::Gdt>() - 1) as u16,
    );
    if (gdtr.base.as_u64(), gdtr.limit) != expected_gdtr {
        return Err(format!(
            "GDTR {:#x}/{:#x}, expected {:#x}/{:#x}",
            gdtr.base.as_u64(),
            gdtr.limit,
            expected_gdtr.0,
            expected_gdtr.1
        ));
    }
    let expected_idtr = (idt as *const idt::Idt as u64, (IDT_ENTRIES * 16 - 1) as u16);
    if (idtr.base.as_u64(), idtr.limit) != expected_idtr {
        return Err(format!(
            "IDTR {:#x}/{:#x}, expected {:#x}/{:#x}",
            idtr.base.as_u64(),
            idtr.limit,
            expected_idtr.0,
            expected_idtr.1
        ));
    }
    let (task_register, cs, ss, ds): (u16, u16, u16, u16);
    // SAFETY: reading segment and task registers has no side effects.
    unsafe {
        asm!("str {0:x}", "mov {1:x}, cs", "mov {2:x}, ss", "mov {3:x}, ds",
             out(reg) task_register, out(reg) cs, out(reg) ss, out(reg) ds,
             options(nomem, nostack, preserves_flags));
    }
    let expected = [
        gdt::TSS_SELECTOR,
        gdt::KERNEL_CODE_SELECTOR,
        gdt::KERNEL_DATA_SELECTOR,
        gdt::KERNEL_DATA_SELECTOR,
    ];
    if [task_register, cs, ss, ds] != expected {
        return Err(format!(
            "TR/CS/SS/DS = {:x?}, expected {:x?}",
            [task_register, cs, ss, ds],
            expected
        ));
    }
    // `ltr` marks the TSS descriptor busy (type 1001b -> 1011b): proof that it
    // loaded this very descriptor.
    let tss_type = (gdt.entries[usize::from(gdt::TSS_SELECTOR >> 3)] >> 40) & 0xf;
    if tss_type != gdt::TSS_TYPE_BUSY {
        return Err(format!(
            "TSS descriptor type {tss_type:#x}, expected busy {:#x}",
            gdt::TSS_TYPE_BUSY
        ));
    }
    Ok(())
}

fn test_idt_gates() -> Result<(), String> {
    let idt = idt::idt().ok_or("idt::init never ran")?;
    for (vector, gate) in idt.gates.iter().enumerate() {
        let expected_ist = match vector {
            exceptions::DOUBLE_FAULT => gdt::DOUBLE_FAULT_IST,
            exceptions::NMI => gdt::NMI_IST,
            exceptions::MACHINE_CHECK => gdt::MACHINE_CHECK_IST,
            _ => 0,
        };
        let actual = (
            gate.handler(),
            gate.selector,
            gate.type_attributes,
            gate.ist,
        );
        let expected = (
            idt::stub_address(vector),
            gdt::KERNEL_CODE_SELECTOR,
            INTERRUPT_GATE,
            expected_ist,
        );
        if actual != expected {
            return Err(format!(
                "vector {vector}: gate {actual:x?}, expected {expected:x?}"
            ));
        }
    }
    if idt::stubs_size() != IDT_ENTRIES as u64 * idt::STUB_SIZE {
        return Err(format!("stub block is {} bytes", idt::stubs_size()));
    }
    Ok(())
}

fn test_ist_stacks() -> Result<(), String> {
    let tss = gdt::tss().ok_or("gdt::init never ran")?;
    let ist = tss.interrupt_stacks;
    let stacks = [
        ("#DF", gdt::DOUBLE_FAULT_IST, DOUBLE_FAULT_STACK.bounds()),
        ("NMI", gdt::NMI_IST, NMI_STACK.bounds()),
        ("#MC", gdt::MACHINE_CHECK_IST, MACHINE_CHECK_STACK.bounds()),
    ];
    let boot_stack = crate::boot::entry::boot_stack_bounds();
    for (name, slot, (low, high)) in stacks {
        let top = ist[usize::from(slot) - 1];
        if top != high || !top.is_multiple_of(16) {
            return Err(format!(
                "{name}: IST{slot} = {top:#x}, expected the 16-aligned top {high:#x}"
            ));
        }
        let overlapping = stacks
            .iter()
            .map(|(_, _, bounds)| *bounds)
            .chain([boot_stack])
            .filter(|&(other_low, other_high)| low < other_high && other_low < high)
            .count();
        // Each stack overlaps exactly itself.
        if overlapping != 1 {
            return Err(format!(
                "{name} stack {low:#x}..{high:#x} overlaps another stack"
            ));
        }
    }
    for guard in gdt::stack_guard_pages() {
        if !guard.is_multiple_of(4096) {
            return Err(format!("guard page {guard:#x} is not page aligned"));
        }
    }
    Ok(())
}

fn test_exception_resumes() -> Result<(), String> {
    let (count_before, _) = exceptions::invalid_opcodes_resumed();
    let resume_address: u64;
    exceptions::expect_invalid_opcode();
    // SAFETY: the announced ud2 raises #UD, whose handler skips it and
    // returns to the next instruction; no register or memory is changed.
    unsafe {
        asm!("lea {0}, [rip + 2f]", "ud2", "2:", out(reg) resume_address);
    }
    let (count_after, resumed_at) = exceptions::invalid_opcodes_resumed();
    if count_after != count_before + 1 {
        return Err(format!(
            "#UD resume count went from {count_before} to {count_after}, expected +1"
        ));
    }
    if resumed_at != resume_address {
        return Err(format!(
            "resumed at {resumed_at:#x}, expected the instruction after ud2 at {resume_address:#x}"
        ));
    }
    Ok(())
}

fn test_registers_preserved() -> Result<(), String> {
    // Distinct patterns in every register Rust lets inline asm name (rbx and
    // rbp are reserved by the compiler; rsp is the stack).
    let input: [u64; 13] =
        core::array::from_fn(|i| 0x1111_1111_1111_1111u64.wrapping_mul(i as u64 + 1) ^ 0xa5a5);
    let mut output = input;
    exceptions::expect_invalid_opcode();
    // SAFETY: the announced ud2 goes through the common interrupt path and
    // returns after the ud2; the test checks that it hands every register
    // back unchanged.
    unsafe {
        asm!(
            "ud2",
            inout("rax") output[0], inout("rcx") output[1], inout("rdx") output[2],
            inout("rsi") output[3], inout("rdi") output[4], inout("r8") output[5],
            inout("r9") output[6], inout("r10") output[7], inout("r11") output[8],
            inout("r12") output[9], inout("r13") output[10], inout("r14") output[11],
            inout("r15") output[12],
        );
    }
    const NAMES: [&str; 13] = [
        "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
    ];
    for ((name, before), after) in NAMES.iter().zip(input).zip(output) {
        if before != after {
            return Err(format!("{name} changed from {before:#x} to {after:#x}"));
        }
    }
    Ok(())
}

/// Local APIC registers used to send an NMI (Intel SDM Vol. 3A, 11.6.1
/// "Interrupt Command Register"): ICR high holds the destination APIC ID in
/// bits 24..31; writing ICR low sends. Delivery mode 100b is NMI; level
/// "assert" is required for everything but INIT de-assert.
const IA32_APIC_BASE_MSR: u32 = 0x1b;
const APIC_BASE_ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;
const ICR_LOW: usize = 0x300;
const ICR_HIGH: usize = 0x310;
const ICR_DELIVERY_NMI: u32 = 0b100 << 8;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const NMI_WAIT_LIMIT: u32 = 1_000_000;

/// Sends an NMI to this CPU through its local APIC (by APIC ID; the "self"
/// shorthand is only valid for fixed interrupts). The test cannot use
/// `int 2`, see the `exceptions` module docs.
fn send_nmi_to_self() -> Result<(), String> {
    let apic_id = crate::interrupts::local_apic_id().ok_or("local APIC not initialised")?;
    // SAFETY: reading IA32_APIC_BASE has no side effects; every x86-64 CPU has it.
    let apic_base =
        unsafe { x86_64::registers::model_specific::Msr::new(IA32_APIC_BASE_MSR).read() }
            & APIC_BASE_ADDRESS_MASK;
    let registers = crate::memory::map_mmio(apic_base, 4096)
        .map_err(|error| format!("cannot map the local APIC at {apic_base:#x}: {error:?}"))?
        .as_ptr();
    // SAFETY: `registers` maps the local APIC's 4 KiB register page uncached;
    // ICR high and low are 32-bit registers at 16-byte aligned offsets in it.
    // Nothing else uses this CPU's ICR meanwhile (each CPU has its own local
    // APIC, and the tests run in sequence).
    unsafe {
        let icr_high = registers.add(ICR_HIGH).cast::<u32>();
        let icr_low = registers.add(ICR_LOW).cast::<u32>();
        icr_high.write_volatile(apic_id << 24);
        icr_low.write_volatile(ICR_DELIVERY_NMI | ICR_LEVEL_ASSERT);
        for _ in 0..NMI_WAIT_LIMIT {
            if icr_low.read_volatile() & ICR_DELIVERY_PENDING == 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
    }
    Err("the local APIC never accepted the NMI".into())
}

fn test_nmi_on_ist() -> Result<(), String> {
    exceptions::arm_nmi_test();
    let sent = send_nmi_to_self();
    // The NMI is taken at the next instruction boundary after the APIC
    // accepts it; give it a bounded moment all the same.
    let mut frame = 0;
    for _ in 0..NMI_WAIT_LIMIT {
        frame = exceptions::nmi_test_frame();
        if frame != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    exceptions::disarm_nmi_test();
    sent?;
    let (low, high) = NMI_STACK.bounds();
    if frame == 0 {
        return Err("the NMI handler did not run".into());
    }
    if !(low..high).contains(&frame) {
        return Err(format!(
            "NMI frame at {frame:#x}, outside the NMI stack {low:#x}..{high:#x}"
        ));
    }
    Ok(())
}
