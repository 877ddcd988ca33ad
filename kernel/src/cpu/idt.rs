//! The Interrupt Descriptor Table and the 256 entry stubs behind it.
//!
//! Intel SDM Vol. 3A, 7.14 "Exception and Interrupt Handling in 64-bit Mode":
//! on an interrupt or exception the CPU looks up the vector's 16-byte gate in
//! the IDT, switches stack if the gate names an IST slot (`gdt.rs`), pushes
//! SS, RSP, RFLAGS, CS, RIP and, for some exceptions, an error code, and jumps
//! to the gate's handler with interrupts disabled (an *interrupt* gate).
//!
//! Stable Rust has no `extern "x86-interrupt"` functions, so the handlers are
//! written in assembly, in two parts:
//!
//! ```text
//!  vector v ──► interrupt_stubs + 16·v         (one 16-byte stub per vector)
//!                 push 0        (only if the CPU pushes no error code for v)
//!                 push v
//!                 jmp interrupt_common
//!               interrupt_common
//!                 push rax ... r15              (now the stack is an InterruptFrame)
//!                 call interrupt_entry(&mut frame)  ── Rust
//!                 pop r15 ... rax
//!                 add rsp, 16                   (drop vector and error code)
//!                 iretq
//! ```
//!
//! The padding makes every frame look the same, so one Rust function serves
//! all vectors: 0..=31 go to `exceptions::handle`, 32..=255 to
//! `crate::interrupts::dispatch` (which sends the EOI).
//!
//! Stack alignment: the CPU aligns RSP to 16 before pushing its 5 words (40
//! bytes); error code and vector make 56, the 15 registers 176, a multiple of
//! 16, so `interrupt_entry` is called with the alignment the SysV ABI wants.
//! All general registers are saved (not only the caller-saved ones) so that
//! the exception report can print them and a handler may inspect them.
//! `cld` is there because the ABI promises Rust code DF = 0, and the
//! interrupted code may have had it set.

use super::exceptions;
use super::gdt::{DOUBLE_FAULT_IST, KERNEL_CODE_SELECTOR, MACHINE_CHECK_IST, NMI_IST};
use core::arch::global_asm;
use core::mem::size_of;
use spin::Once;
use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

/// Number of IDT entries: every vector the CPU has.
pub const IDT_ENTRIES: usize = 256;
/// Each entry stub is padded to this size, so stub v is at `interrupt_stubs + 16·v`.
pub const STUB_SIZE: u64 = 16;
/// Vectors 0..=31 are exceptions; the rest are interrupts.
pub const FIRST_INTERRUPT_VECTOR: u64 = 32;
/// Gate type/attribute byte: P=1, DPL=0, type 1110b (64-bit interrupt gate).
pub const INTERRUPT_GATE: u8 = 0x8e;

/// What the stubs leave on the stack: the registers they pushed, the vector
/// and error code, then what the CPU pushed. Lowest address first.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct InterruptFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    /// Pushed by the stub.
    pub vector: u64,
    /// Pushed by the CPU for some exceptions, 0 (pushed by the stub) otherwise.
    pub error_code: u64,
    // Pushed by the CPU.
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

global_asm!(
    r#"
    .section .text.interrupt_stubs, "ax"
    .balign 16
    .global interrupt_stubs
interrupt_stubs:
    .set vector, 0
    .rept 256
    .balign 16
    /* The CPU pushes an error code for #DF(8) #TS(10) #NP(11) #SS(12)
       #GP(13) #PF(14) #AC(17) #CP(21) #VC(29) #SX(30) (SDM Vol. 3A,
       Table 7-1); for every other vector the stub pushes a 0 in its place. */
    .if (vector == 8) || (vector == 10) || (vector == 11) || (vector == 12) || (vector == 13) || (vector == 14) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
    .else
    push 0
    .endif
    push vector
    jmp interrupt_common
    .set vector, vector + 1
    .endr
    .balign 16
    .global interrupt_stubs_end
interrupt_stubs_end:

interrupt_common:
    push rax
    push rcx
    push rdx
    push rbx
    push rbp
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    cld
    mov rdi, rsp
    call {entry}
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rbp
    pop rbx
    pop rdx
    pop rcx
    pop rax
    add rsp, 16
    iretq
    .text
    "#,
    entry = sym interrupt_entry,
);

extern "C" {
    /// The first of the 256 entry stubs.
    static interrupt_stubs: u8;
    /// One past the last stub.
    static interrupt_stubs_end: u8;
}

/// Address of the entry stub for `vector`.
pub fn stub_address(vector: usize) -> u64 {
    let base = core::ptr::addr_of!(interrupt_stubs) as u64;
    base + STUB_SIZE * vector as u64
}

/// Total size of the stub block, which must be exactly 256 × 16 bytes.
pub fn stubs_size() -> u64 {
    core::ptr::addr_of!(interrupt_stubs_end) as u64 - core::ptr::addr_of!(interrupt_stubs) as u64
}

/// Called by `interrupt_common` for every vector, with interrupts disabled.
extern "C" fn interrupt_entry(frame: &mut InterruptFrame) {
    if frame.vector < FIRST_INTERRUPT_VECTOR {
        exceptions::handle(frame);
    } else {
        // The stub pushed a value below 256.
        crate::interrupts::dispatch(frame.vector as u8);
    }
}

/// One 16-byte IDT gate (SDM Vol. 3A, Figure 7-8 "64-Bit IDT Gate Descriptors").
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateDescriptor {
    pub offset_low: u16,
    pub selector: u16,
    /// Bits 0..2: IST slot (0 = no stack switch).
    pub ist: u8,
    pub type_attributes: u8,
    pub offset_middle: u16,
    pub offset_high: u32,
    reserved: u32,
}

impl GateDescriptor {
    fn interrupt_gate(handler: u64, ist: u8) -> Self {
        Self {
            offset_low: handler as u16,
            selector: KERNEL_CODE_SELECTOR,
            ist,
            type_attributes: INTERRUPT_GATE,
            offset_middle: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }

    /// The handler address the gate points to.
    #[cfg(feature = "selftest")]
    pub fn handler(&self) -> u64 {
        u64::from(self.offset_low)
            | u64::from(self.offset_middle) << 16
            | u64::from(self.offset_high) << 32
    }
}

/// The table.
#[repr(C, align(16))]
pub struct Idt {
    pub gates: [GateDescriptor; IDT_ENTRIES],
}

static IDT: Once<Idt> = Once::new();

/// The IST slot a vector's gate uses.
pub fn ist_for_vector(vector: usize) -> u8 {
    match vector {
        exceptions::DOUBLE_FAULT => DOUBLE_FAULT_IST,
        exceptions::NMI => NMI_IST,
        exceptions::MACHINE_CHECK => MACHINE_CHECK_IST,
        _ => 0,
    }
}

/// Builds and loads the IDT. Call after `gdt::init` (the gates name its
/// code selector and IST slots).
pub fn init() {
    // A stub longer than 16 bytes would shift all later ones; that is a build
    // error in this file, not a runtime condition.
    assert_eq!(
        stubs_size(),
        STUB_SIZE * IDT_ENTRIES as u64,
        "interrupt stubs are not 16 bytes each"
    );
    let idt = IDT.call_once(|| {
        let mut gates = [GateDescriptor::interrupt_gate(0, 0); IDT_ENTRIES];
        for (vector, gate) in gates.iter_mut().enumerate() {
            *gate = GateDescriptor::interrupt_gate(stub_address(vector), ist_for_vector(vector));
        }
        Idt { gates }
    });
    let pointer = DescriptorTablePointer {
        limit: (size_of::<Idt>() - 1) as u16,
        base: VirtAddr::new(idt as *const Idt as u64),
    };
    // SAFETY: the IDT is in a static that lives for the whole run, and every
    // gate points to a stub in `interrupt_stubs` with the kernel code selector
    // and an IST slot the TSS fills (gdt::init ran before).
    unsafe { lidt(&pointer) };
}

/// Loads the IDT [`init`] built on the calling CPU (an application processor: every CPU shares
/// the one table). Does nothing before [`init`].
pub fn load_on_this_cpu() {
    let Some(idt) = IDT.get() else {
        return;
    };
    let pointer = DescriptorTablePointer {
        limit: (size_of::<Idt>() - 1) as u16,
        base: VirtAddr::new(idt as *const Idt as u64),
    };
    // SAFETY: as in `init`: the table is a static with valid gates, and this CPU's TSS (loaded
    // by `gdt::init_application_processor`) fills the IST slots the gates name.
    unsafe { lidt(&pointer) };
}

/// The IDT, once [`init`] ran.
#[cfg(feature = "selftest")]
pub fn idt() -> Option<&'static Idt> {
    IDT.get()
}
