//! CPU exceptions (vectors 0..=31): what each one means, and the report the
//! kernel prints before it gives up.
//!
//! Intel SDM Vol. 3A, chapter 7 "Interrupt and Exception Handling" (Table 7-1
//! lists the vectors; 7.15 describes each one and its error code). In this
//! kernel an exception is a bug, with three deliberate exceptions:
//! - `#BP` (`int3`) is counted and resumed, so a breakpoint can be dropped
//!   into code while debugging under TCG or gdb;
//! - (feature `selftest` only) a `#UD` the self-tests announced beforehand
//!   (`expect_invalid_opcode`) skips the two-byte `ud2` that caused it and
//!   resumes: this proves that the whole entry/exit path works and
//!   preserves registers;
//! - (feature `selftest` only) an NMI the NMI self-test announced records
//!   where its frame landed and resumes, to prove it ran on its IST stack.
//!
//! The self-tests use `ud2` and a local-APIC NMI rather than `int3` / `int n`
//! because the KVM of the machines this project runs on (a nested, PVM-based
//! host) cannot emulate software interrupt instructions: `int3` there ends
//! the VM with "KVM internal error ... emulation failure", while real
//! exceptions and APIC-delivered interrupts work.
//!
//! Everything else prints (serial output contract, see docs/contract.md):
//!
//! ```text
//! EXCEPTION 14 #PF (page fault) error=0x0 rip=0x... cs=0x8 rflags=0x... rsp=0x... ss=0x10
//!   cr2=0xdeadbeef0000 (not-present page, read, supervisor mode, data access)
//!   rax=... rbx=... rcx=... rdx=...
//!   ...
//!   backtrace: 0x... 0x... (resolve with addr2line -e <kernel ELF>)
//! ```
//!
//! and exits QEMU with [`crate::exit::EXIT_EXCEPTION`] (status 39).

use super::idt::InterruptFrame;
use crate::exit;
use core::fmt::Write;
#[cfg(feature = "selftest")]
use core::sync::atomic::AtomicBool;
use core::sync::atomic::{AtomicU64, Ordering};

/// Vector 2: non-maskable interrupt (#NMI).
pub const NMI: usize = 2;
/// Vector 3: `int3` breakpoint (#BP).
pub const BREAKPOINT: usize = 3;
/// Vector 6: invalid opcode (#UD).
#[cfg(feature = "selftest")]
pub const INVALID_OPCODE: usize = 6;
/// Vector 8: double fault (#DF), on its own IST stack.
pub const DOUBLE_FAULT: usize = 8;
/// Vector 14: page fault (#PF); CR2 holds the address.
pub const PAGE_FAULT: usize = 14;
/// Vector 18: machine check (#MC), on its own IST stack.
pub const MACHINE_CHECK: usize = 18;

/// Mnemonic and name of each exception vector (SDM Vol. 3A, Table 7-1).
pub const EXCEPTION_NAMES: [(&str, &str); 32] = [
    ("#DE", "divide error"),
    ("#DB", "debug"),
    ("NMI", "non-maskable interrupt"),
    ("#BP", "breakpoint"),
    ("#OF", "overflow"),
    ("#BR", "bound range exceeded"),
    ("#UD", "invalid opcode"),
    ("#NM", "device not available"),
    ("#DF", "double fault"),
    ("#CSO", "coprocessor segment overrun"),
    ("#TS", "invalid TSS"),
    ("#NP", "segment not present"),
    ("#SS", "stack-segment fault"),
    ("#GP", "general protection"),
    ("#PF", "page fault"),
    ("#15", "reserved"),
    ("#MF", "x87 floating-point error"),
    ("#AC", "alignment check"),
    ("#MC", "machine check"),
    ("#XM", "SIMD floating-point exception"),
    ("#VE", "virtualization exception"),
    ("#CP", "control protection"),
    ("#22", "reserved"),
    ("#23", "reserved"),
    ("#24", "reserved"),
    ("#25", "reserved"),
    ("#26", "reserved"),
    ("#27", "reserved"),
    ("#HV", "hypervisor injection"),
    ("#VC", "VMM communication"),
    ("#SX", "security exception"),
    ("#31", "reserved"),
];

/// True for the vectors where the CPU pushes an error code (must match the
/// list in the stubs, `idt.rs`).
pub fn pushes_error_code(vector: usize) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// The encoding of `ud2`.
#[cfg(feature = "selftest")]
const UD2: [u8; 2] = [0x0f, 0x0b];

/// Breakpoints (`int3`) handled so far.
static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);
/// Set by a self-test just before it executes `ud2` on purpose.
#[cfg(feature = "selftest")]
static INVALID_OPCODE_EXPECTED: AtomicBool = AtomicBool::new(false);
/// Announced `#UD`s that were skipped and resumed.
#[cfg(feature = "selftest")]
static INVALID_OPCODES_RESUMED: AtomicU64 = AtomicU64::new(0);
/// RIP each resumed `#UD` returned to (after its `ud2`).
#[cfg(feature = "selftest")]
static LAST_INVALID_OPCODE_RESUME: AtomicU64 = AtomicU64::new(0);
/// Set by the NMI self-test just before it sends itself an NMI.
#[cfg(feature = "selftest")]
static NMI_TEST_ARMED: AtomicBool = AtomicBool::new(false);
/// Where the frame of that NMI was (to check it is on the NMI IST stack).
#[cfg(feature = "selftest")]
static NMI_TEST_FRAME: AtomicU64 = AtomicU64::new(0);

#[cfg(feature = "selftest")]
/// Announces one deliberate `ud2`: the `#UD` it raises is skipped and
/// execution resumes after it, instead of ending the run.
pub fn expect_invalid_opcode() {
    INVALID_OPCODE_EXPECTED.store(true, Ordering::SeqCst);
}

#[cfg(feature = "selftest")]
/// `(announced #UDs resumed so far, RIP the last one resumed at)`.
pub fn invalid_opcodes_resumed() -> (u64, u64) {
    (
        INVALID_OPCODES_RESUMED.load(Ordering::SeqCst),
        LAST_INVALID_OPCODE_RESUME.load(Ordering::SeqCst),
    )
}

#[cfg(feature = "selftest")]
/// Arms the NMI self-test: the next NMI is recorded and resumed instead of
/// being fatal.
pub fn arm_nmi_test() {
    NMI_TEST_FRAME.store(0, Ordering::SeqCst);
    NMI_TEST_ARMED.store(true, Ordering::SeqCst);
}

#[cfg(feature = "selftest")]
/// Address of the frame of the NMI taken while armed, 0 if none came yet.
pub fn nmi_test_frame() -> u64 {
    NMI_TEST_FRAME.load(Ordering::SeqCst)
}

#[cfg(feature = "selftest")]
/// Ends the NMI self-test: NMIs are fatal again.
pub fn disarm_nmi_test() {
    NMI_TEST_ARMED.store(false, Ordering::SeqCst);
}

/// Handles exception `frame.vector` (0..=31). Returns only for the
/// resumable cases described in the module docs.
pub fn handle(frame: &mut InterruptFrame) {
    let vector = frame.vector as usize;
    if vector == NMI && crate::smp::stop::crash_in_progress() {
        // Another CPU is printing a crash report and asked this one to stop.
        crate::smp::stop::park_this_cpu();
    }
    if vector == BREAKPOINT {
        // The saved RIP already points past the one-byte int3: say so and
        // resume. The lock-free writer, because the interrupted code may be
        // in the middle of printing.
        let count = BREAKPOINTS.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = writeln!(
            crate::serial::emergency_writer(),
            "breakpoint #{count} at rip={:#x}, resuming",
            frame.rip - 1
        );
        return;
    }
    #[cfg(feature = "selftest")]
    if resumed_for_a_selftest(frame) {
        return;
    }
    report_and_exit(frame)
}

/// The two exceptions a self-test announces (feature `selftest`): a `#UD`
/// from an announced `ud2` is skipped and resumed, and an NMI while the NMI
/// self-test is armed is recorded and resumed. True if `frame` was one.
#[cfg(feature = "selftest")]
fn resumed_for_a_selftest(frame: &mut InterruptFrame) -> bool {
    let vector = frame.vector as usize;
    if vector == INVALID_OPCODE && INVALID_OPCODE_EXPECTED.swap(false, Ordering::SeqCst) {
        // Only skip what was announced: a ud2 (0f 0b) at the faulting RIP.
        let code = frame.rip as *const [u8; 2];
        // SAFETY: the CPU just fetched an instruction at RIP, so at least its
        // first bytes are mapped kernel code; ud2 is two bytes long.
        if unsafe { code.read_unaligned() } == UD2 {
            frame.rip += UD2.len() as u64;
            INVALID_OPCODES_RESUMED.fetch_add(1, Ordering::SeqCst);
            LAST_INVALID_OPCODE_RESUME.store(frame.rip, Ordering::SeqCst);
            return true;
        }
    }
    if vector == NMI && NMI_TEST_ARMED.swap(false, Ordering::SeqCst) {
        NMI_TEST_FRAME.store(frame as *const InterruptFrame as u64, Ordering::SeqCst);
        return true;
    }
    false
}

fn report_and_exit(frame: &InterruptFrame) -> ! {
    let mut out = crate::serial::emergency_writer();
    let vector = frame.vector as usize;
    let (mnemonic, name) = EXCEPTION_NAMES
        .get(vector)
        .copied()
        .unwrap_or(("?", "unknown"));
    match crate::smp::stop::begin_crash_report() {
        crate::smp::stop::CrashRole::Report => {}
        // Another CPU's report is under way: one report, not two interleaved.
        crate::smp::stop::CrashRole::Park => crate::smp::stop::park_this_cpu(),
        crate::smp::stop::CrashRole::Recursive => {
            // A fault while printing a report: print the bare minimum, stop.
            let _ = writeln!(
                out,
                "\nEXCEPTION {vector} {mnemonic} ({name}) rip={:#x} while reporting an earlier crash",
                frame.rip
            );
            exit::qemu_exit(exit::EXIT_EXCEPTION);
        }
    }
    // Errors from the UART writer cannot happen; ignore the fmt::Result.
    let _ = write_report(&mut out, frame, mnemonic, name);
    crate::write_cpus_not_stopped(&mut out);
    exit::qemu_exit(exit::EXIT_EXCEPTION)
}

fn write_report(
    out: &mut impl Write,
    frame: &InterruptFrame,
    mnemonic: &str,
    name: &str,
) -> core::fmt::Result {
    let vector = frame.vector as usize;
    write!(out, "\nEXCEPTION {vector} {mnemonic} ({name}) ")?;
    if pushes_error_code(vector) {
        write!(out, "error={:#x}", frame.error_code)?;
    } else {
        write!(out, "error=none")?;
    }
    writeln!(
        out,
        " rip={:#x} cs={:#x} rflags={:#x} rsp={:#x} ss={:#x}",
        frame.rip, frame.cs, frame.rflags, frame.rsp, frame.ss
    )?;
    match vector {
        PAGE_FAULT => {
            let cr2 = x86_64::registers::control::Cr2::read_raw();
            writeln!(out, "  cr2={cr2:#x} ({})", PageFaultError(frame.error_code))?;
        }
        10..=13 if frame.error_code != 0 => {
            writeln!(out, "  {}", SelectorError(frame.error_code))?;
        }
        _ => {}
    }
    let registers = [
        ("rax", frame.rax),
        ("rbx", frame.rbx),
        ("rcx", frame.rcx),
        ("rdx", frame.rdx),
        ("rsi", frame.rsi),
        ("rdi", frame.rdi),
        ("rbp", frame.rbp),
        ("r8", frame.r8),
        ("r9", frame.r9),
        ("r10", frame.r10),
        ("r11", frame.r11),
        ("r12", frame.r12),
        ("r13", frame.r13),
        ("r14", frame.r14),
        ("r15", frame.r15),
    ];
    for line in registers.chunks(4) {
        write!(out, " ")?;
        for (register, value) in line {
            write!(out, " {register}={value:#018x}")?;
        }
        writeln!(out)?;
    }
    let cr0 = x86_64::registers::control::Cr0::read_raw();
    let cr3 = x86_64::registers::control::Cr3::read_raw()
        .0
        .start_address()
        .as_u64();
    let cr4 = x86_64::registers::control::Cr4::read_raw();
    writeln!(
        out,
        "  cr0={cr0:#x} cr3={cr3:#x} cr4={cr4:#x} cpu={}",
        crate::smp::current_cpu()
    )?;
    write!(out, "  backtrace: {:#x}", frame.rip)?;
    super::backtrace::write(out, frame.rbp)?;
    writeln!(out)
}

/// The page-fault error code, decoded (SDM Vol. 3A, Figure 5-12).
struct PageFaultError(u64);

impl core::fmt::Display for PageFaultError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let bit = |n: u32| self.0 & (1 << n) != 0;
        f.write_str(if bit(0) {
            "protection violation"
        } else {
            "not-present page"
        })?;
        f.write_str(if bit(1) { ", write" } else { ", read" })?;
        f.write_str(if bit(2) {
            ", user mode"
        } else {
            ", supervisor mode"
        })?;
        f.write_str(if bit(4) {
            ", instruction fetch"
        } else {
            ", data access"
        })?;
        if bit(3) {
            f.write_str(", reserved bit set in a paging entry")?;
        }
        if bit(5) {
            f.write_str(", protection key")?;
        }
        if bit(6) {
            f.write_str(", shadow stack")?;
        }
        if bit(15) {
            f.write_str(", SGX")?;
        }
        Ok(())
    }
}

/// The selector error code of #TS, #NP, #SS and #GP (SDM Vol. 3A, 7.13
/// "Error Code").
struct SelectorError(u64);

impl core::fmt::Display for SelectorError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let table = match (self.0 >> 1) & 0b11 {
            0b00 => "GDT",
            0b10 => "LDT",
            _ => "IDT",
        };
        let external = if self.0 & 1 != 0 {
            ", during an external event"
        } else {
            ""
        };
        write!(
            f,
            "selector error: index {} in the {table}{external}",
            (self.0 >> 3) & 0x1fff
        )
    }
}
