//! The application processors' first instructions: real mode -> 32-bit protected mode ->
//! 64-bit long mode -> `smp::startup::application_processor_main`.
//!
//! A start-up IPI (Intel SDM vol. 3A §9.4.4 "MP Initialization Example", §11.6.1) starts a CPU
//! in real mode at physical address `vector << 12`, so this code must be copied to a 4 KiB page
//! below 1 MiB ([`install`]; `startup.rs` picks the page). From there it does what
//! `boot/entry.rs` does for the bootstrap processor, with the kernel's own page tables instead
//! of building new ones (SDM vol. 3A §10.8.5 "Initializing IA-32e Mode"):
//!
//! (Written in AT&T syntax: it lets a memory operand be a difference of two labels.)
//!
//! ```text
//! 16-bit  cli; DS = CS; ebx = CS << 4 (where the page is); "arrived" = 1
//!         lgdt (the little GDT in this page); CR0.PE = 1; far jmp to 0x18:protected
//! 32-bit  data segments; CR4 (PAE ...) and CR3 = the kernel's; EFER.LME (+NXE);
//!         CR0.CD = CR0.NW = 0, CR0.PG|WP
//!         far jmp to 0x08:long
//! 64-bit  IA32_GS_BASE = this CPU's per-CPU entry; rsp = its stack; call entry(cpu index)
//! ```
//!
//! The code is position-independent within its page: real-mode addresses are offsets from CS,
//! and the linear addresses the far jumps and `lgdt` need are written into the page by
//! [`install`] (patched fields), or computed from `ebx`. The bootstrap processor fills the
//! parameters ([`Parameters`]) before each CPU's INIT-SIPI-SIPI; one CPU starts at a time.
//!
//! Caches: a CPU comes out of power-up with CR0.CD and CR0.NW set (CR0 = 6000_0010h), and an
//! INIT leaves those two bits as they were (SDM vol. 3A Table 10-1 "IA-32 and Intel 64 Processor
//! States Following Power-up, Reset, or INIT", note 2). A CPU that firmware never started thus
//! arrives here with caching disabled, and would run the whole kernel uncached on real hardware
//! (QEMU does not model caches, but shows the bits): the trampoline clears both.
//!
//! The kernel's page tables identity-map the page (it is RAM from the memory map), so the
//! instruction after `CR0.PG = 1` is fetched from the same address; the PML4 lies below 4 GiB
//! (`memory::switch_to_kernel_tables`), as a CR3 loaded in 32-bit mode must.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, Ordering};

global_asm!(
    r#"
    .section .rodata.ap_trampoline, "a"
    .balign 16
    .global ap_trampoline_start
ap_trampoline_start:
    .code16
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    xorl %ebx, %ebx
    movw %ax, %bx
    shll $4, %ebx                               /* ebx = linear address of this page */
    movl $1, (ap_trampoline_arrived - ap_trampoline_start)
    lgdtl (ap_trampoline_gdt_pointer - ap_trampoline_start)
    movl %cr0, %eax
    orl $1, %eax                                /* PE */
    movl %eax, %cr0
    ljmpl *(ap_trampoline_far32 - ap_trampoline_start)

    .code32
    .global ap_trampoline_protected
ap_trampoline_protected:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl (ap_trampoline_cr4 - ap_trampoline_start)(%ebx), %eax
    movl %eax, %cr4                             /* PAE and the rest, as on the BSP */
    movl (ap_trampoline_cr3 - ap_trampoline_start)(%ebx), %eax
    movl %eax, %cr3                             /* the kernel's PML4, below 4 GiB */
    movl $0xc0000080, %ecx                      /* IA32_EFER */
    rdmsr
    orl (ap_trampoline_efer - ap_trampoline_start)(%ebx), %eax
    wrmsr                                       /* LME, and NXE if the BSP has it */
    movl %cr0, %eax
    andl $0x9fffffff, %eax                      /* caches on: CD (bit 30) = NW (bit 29) = 0 */
    orl $0x80010001, %eax                       /* PG | WP | PE */
    movl %eax, %cr0
    ljmpl *(ap_trampoline_far64 - ap_trampoline_start)(%ebx)

    .code64
    .global ap_trampoline_long
ap_trampoline_long:
    movl %ebx, %ebx                             /* upper halves are undefined after the switch */
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    movl $0xc0000101, %ecx                      /* IA32_GS_BASE: this CPU's smp::percpu entry */
    movl (ap_trampoline_gs_base - ap_trampoline_start)(%rbx), %eax
    movl (ap_trampoline_gs_base - ap_trampoline_start + 4)(%rbx), %edx
    wrmsr
    movq (ap_trampoline_stack_top - ap_trampoline_start)(%rbx), %rsp
    movq (ap_trampoline_cpu - ap_trampoline_start)(%rbx), %rdi
    movq (ap_trampoline_entry - ap_trampoline_start)(%rbx), %rax
    xorl %ebp, %ebp                             /* end of the frame-pointer chain */
    callq *%rax
2:
    cli
    hlt
    jmp 2b

    .balign 8
    .global ap_trampoline_gdt
ap_trampoline_gdt:
    .quad 0
    .quad 0x00af9a000000ffff                    /* 0x08: 64-bit code (as boot/entry.rs) */
    .quad 0x00cf92000000ffff                    /* 0x10: data */
    .quad 0x00cf9a000000ffff                    /* 0x18: 32-bit code, flat 4 GiB */
ap_trampoline_gdt_end:
    .balign 8
    .global ap_trampoline_gdt_pointer
ap_trampoline_gdt_pointer:
    .word ap_trampoline_gdt_end - ap_trampoline_gdt - 1
    .long 0                                     /* patched: linear address of the GDT */
    .balign 8
    .global ap_trampoline_far32
ap_trampoline_far32:
    .long 0                                     /* patched: linear address of protected */
    .word 0x18
    .balign 8
    .global ap_trampoline_far64
ap_trampoline_far64:
    .long 0                                     /* patched: linear address of long */
    .word 0x08
    .balign 8
    .global ap_trampoline_cr3
ap_trampoline_cr3: .quad 0
    .global ap_trampoline_cr4
ap_trampoline_cr4: .quad 0
    .global ap_trampoline_efer
ap_trampoline_efer: .quad 0
    .global ap_trampoline_gs_base
ap_trampoline_gs_base: .quad 0
    .global ap_trampoline_stack_top
ap_trampoline_stack_top: .quad 0
    .global ap_trampoline_cpu
ap_trampoline_cpu: .quad 0
    .global ap_trampoline_entry
ap_trampoline_entry: .quad 0
    .global ap_trampoline_arrived
ap_trampoline_arrived: .long 0
    .global ap_trampoline_end
ap_trampoline_end:
    .text
    "#,
    options(att_syntax)
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static ap_trampoline_protected: u8;
    static ap_trampoline_long: u8;
    static ap_trampoline_gdt: u8;
    static ap_trampoline_gdt_pointer: u8;
    static ap_trampoline_far32: u8;
    static ap_trampoline_far64: u8;
    static ap_trampoline_cr3: u8;
    static ap_trampoline_cr4: u8;
    static ap_trampoline_efer: u8;
    static ap_trampoline_gs_base: u8;
    static ap_trampoline_stack_top: u8;
    static ap_trampoline_cpu: u8;
    static ap_trampoline_entry: u8;
    static ap_trampoline_arrived: u8;
}

/// Offset of a trampoline label from its start. Taking an extern static's address reads
/// nothing.
fn offset_of(label: *const u8) -> usize {
    label as usize - core::ptr::addr_of!(ap_trampoline_start) as usize
}

/// Bytes of trampoline code and data.
pub fn size() -> usize {
    offset_of(core::ptr::addr_of!(ap_trampoline_end))
}

/// What one CPU's start needs, written into the page before its start-up IPI.
#[derive(Debug, Clone, Copy)]
pub struct Parameters {
    /// CR3: the kernel's PML4 (must be below 4 GiB).
    pub cr3: u64,
    /// CR4 as on the bootstrap processor (PAE set).
    pub cr4: u64,
    /// EFER bits to set: LME, and NXE where the bootstrap processor has it.
    pub efer_bits: u64,
    /// IA32_GS_BASE: the CPU's `smp::percpu` entry.
    pub gs_base: u64,
    /// Top of the CPU's kernel stack (16-byte aligned).
    pub stack_top: u64,
    /// The CPU's index, the entry function's argument.
    pub cpu: u64,
    /// `extern "C" fn(cpu: usize) -> !` to call in 64-bit mode.
    pub entry: u64,
}

/// The trampoline, copied to a page below 1 MiB.
pub struct Trampoline {
    page: u64,
}

/// Copies the trampoline to `page` (physical = virtual, identity-mapped RAM below 1 MiB,
/// 4 KiB-aligned) and patches in its linear addresses.
///
/// # Safety
/// `page` must be a mapped, writable RAM page below 1 MiB that nothing else uses for the rest
/// of the run.
pub unsafe fn install(page: u64) -> Trampoline {
    let base = crate::memory::phys_to_virt(page);
    let source = core::ptr::addr_of!(ap_trampoline_start);
    // SAFETY: the source is the trampoline blob in the kernel image (`size()` bytes); the
    // destination is the page our caller gave us, which holds 4096 bytes (`startup` checks the
    // blob fits).
    unsafe { core::ptr::copy_nonoverlapping(source, base, size()) };
    let trampoline = Trampoline { page };
    let gdt = page + offset_of(core::ptr::addr_of!(ap_trampoline_gdt)) as u64;
    trampoline.write_u32(
        offset_of(core::ptr::addr_of!(ap_trampoline_gdt_pointer)) + 2,
        gdt as u32,
    );
    trampoline.write_u32(
        offset_of(core::ptr::addr_of!(ap_trampoline_far32)),
        (page + offset_of(core::ptr::addr_of!(ap_trampoline_protected)) as u64) as u32,
    );
    trampoline.write_u32(
        offset_of(core::ptr::addr_of!(ap_trampoline_far64)),
        (page + offset_of(core::ptr::addr_of!(ap_trampoline_long)) as u64) as u32,
    );
    trampoline
}

impl Trampoline {
    /// The start-up IPI's vector: the page number.
    pub fn startup_vector(&self) -> u8 {
        (self.page >> 12) as u8
    }

    fn write_u32(&self, offset: usize, value: u32) {
        let pointer = crate::memory::phys_to_virt(self.page + offset as u64).cast::<u32>();
        // SAFETY: `offset` is a 4-byte field inside the copied blob, inside our page (see
        // `install`); the GDT pointer's base is at offset 2 of its field, hence unaligned. It is
        // written before any CPU is started, and the start-up IPI orders it before their reads.
        unsafe { pointer.write_unaligned(value) };
    }

    fn write_u64(&self, offset: usize, value: u64) {
        let pointer = crate::memory::phys_to_virt(self.page + offset as u64).cast::<u64>();
        // SAFETY: as in `write_u32`; the fields are 8-byte aligned.
        unsafe { pointer.write_volatile(value) };
    }

    fn arrived(&self) -> &AtomicU32 {
        let pointer = crate::memory::phys_to_virt(
            self.page + offset_of(core::ptr::addr_of!(ap_trampoline_arrived)) as u64,
        )
        .cast::<AtomicU32>();
        // SAFETY: a 4-byte-aligned field inside our page that lives for the rest of the run;
        // the CPU being started writes it with a plain store, we read it atomically.
        unsafe { &*pointer }
    }

    /// Writes the parameters of the next CPU to start and clears its "arrived" flag.
    pub fn prepare(&self, parameters: &Parameters) {
        let fields = [
            (core::ptr::addr_of!(ap_trampoline_cr3), parameters.cr3),
            (core::ptr::addr_of!(ap_trampoline_cr4), parameters.cr4),
            (
                core::ptr::addr_of!(ap_trampoline_efer),
                parameters.efer_bits,
            ),
            (
                core::ptr::addr_of!(ap_trampoline_gs_base),
                parameters.gs_base,
            ),
            (
                core::ptr::addr_of!(ap_trampoline_stack_top),
                parameters.stack_top,
            ),
            (core::ptr::addr_of!(ap_trampoline_cpu), parameters.cpu),
            (core::ptr::addr_of!(ap_trampoline_entry), parameters.entry),
        ];
        for (label, value) in fields {
            self.write_u64(offset_of(label), value);
        }
        self.arrived().store(0, Ordering::SeqCst);
    }

    /// Whether the CPU last started ran the trampoline's first instructions.
    pub fn has_arrived(&self) -> bool {
        self.arrived().load(Ordering::SeqCst) != 0
    }
}
