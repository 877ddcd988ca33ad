//! The first instructions the kernel runs: from 32-bit protected mode (as the
//! PVH boot protocol leaves the CPU) into 64-bit long mode, then into Rust.
//!
//! Implements:
//! - the PVH entry note: an ELF note named "Xen" of type 18
//!   (`XEN_ELFNOTE_PHYS32_ENTRY`, Xen `include/public/elfnote.h`) whose value is
//!   the physical address of `pvh_start32`. QEMU's `-kernel` loader looks for
//!   it in the `PT_NOTE` program headers (see `kernel/linker.ld`).
//! - the PVH entry state (Xen `docs/misc/pvh.pandoc`): 32-bit protected mode,
//!   paging off, flat 4 GiB code and data segments, interrupts off, `ebx` = the
//!   physical address of `struct hvm_start_info`. Nothing else is promised: no
//!   stack, and `eax` is not reliable.
//! - the switch to IA-32e (long) mode as Intel SDM Vol. 3A, 10.8.5
//!   "Initializing IA-32e Mode" describes it: PAE on, CR3 = PML4,
//!   `IA32_EFER.LME = 1`, then `CR0.PG = 1`, then a far jump into a 64-bit code
//!   segment.
//!
//! The page tables built here identity-map the first 4 GiB with 2 MiB pages
//! (SDM Vol. 3A, 5.5 "4-Level Paging", Table 5-18 for the 2 MiB PDE). 1 GiB
//! pages would need one table less, but they are optional (CPUID
//! 80000001h:EDX.Page1GB) and QEMU's default TCG CPU does not have them. These
//! tables are only the bridge into Rust; `memory::init` builds the kernel's own.
//!
//! Nothing here touches SSE: the `x86_64-unknown-none` target compiles Rust
//! with soft-float and without SSE, so CR0.EM/CR4.OSFXSR can stay as they are.

use core::arch::global_asm;

/// Size of the stack `kernel_main` starts on (and keeps using: it becomes the
/// kernel's main stack). Debug builds are stack-hungry, hence generous.
pub const BOOT_STACK_SIZE: usize = 256 * 1024;

extern "C" {
    /// Page-aligned, unused 4 KiB right below the boot stack.
    #[cfg(feature = "selftest")]
    static boot_stack_guard: u8;
    /// Lowest byte of the boot stack (it grows down towards this).
    static boot_stack_bottom: u8;
    /// One past the highest byte of the boot stack.
    static boot_stack_top: u8;
}

/// The boot stack (the kernel's main stack) as `(lowest address, one past the
/// highest)`.
pub fn boot_stack_bounds() -> (u64, u64) {
    // Taking the address of an extern static reads nothing, so needs no unsafe.
    (
        core::ptr::addr_of!(boot_stack_bottom) as u64,
        core::ptr::addr_of!(boot_stack_top) as u64,
    )
}

/// The page below the boot stack, which nothing uses.
#[cfg(feature = "selftest")]
pub fn boot_stack_guard_page() -> u64 {
    core::ptr::addr_of!(boot_stack_guard) as u64
}

global_asm!(
    // ---------------------------------------------------------------------
    // The PVH note (ELF note format: namesz, descsz, type, name, desc; name
    // and desc each padded to 4 bytes). For an ELF64 image QEMU reads the
    // entry as an 8-byte value.
    // ---------------------------------------------------------------------
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                         /* namesz: "Xen\0" */
    .long 8                         /* descsz: one 64-bit address */
    .long 18                        /* type: XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4
    "#,
    // ---------------------------------------------------------------------
    // Memory the entry code needs before Rust runs, all in .bss (zeroed below).
    // ---------------------------------------------------------------------
    r#"
    .section .bss.boot_page_tables, "aw", @nobits
    .balign 4096
    .global boot_pml4
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_page_directories:              /* four of them: 4 x 512 x 2 MiB = 4 GiB */
    .skip 4 * 4096

    .section .bss.boot_stack, "aw", @nobits
    .balign 4096
    .global boot_stack_guard
boot_stack_guard:                   /* unused page below the stack; see cpu::gdt::stack_guard_pages */
    .skip 4096
    .global boot_stack_bottom
boot_stack_bottom:
    .skip {stack_size}
    .global boot_stack_top
boot_stack_top:
    "#,
    // ---------------------------------------------------------------------
    // The GDT used for the jump into 64-bit mode (SDM Vol. 3A, 3.4.5
    // "Segment Descriptors"). cpu::gdt installs the kernel's own later, with
    // the same selectors, plus a TSS.
    //   0x08: 64-bit code: P=1 DPL=0 S=1 type=execute/read, L=1, G=1
    //   0x10: data:        P=1 DPL=0 S=1 type=read/write,   D/B=1, G=1
    // ---------------------------------------------------------------------
    r#"
    .section .rodata.boot_gdt, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
boot_gdt_end:
    .balign 8
boot_gdt_pointer:                   /* operand of lgdt in 32-bit mode: limit, 32-bit base */
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

boot_message_no_long_mode:
    .asciz "kernel: boot failed: this CPU has no long mode (CPUID 80000001h:EDX.LM = 0)\n"
    "#,
    // ---------------------------------------------------------------------
    // 32-bit entry.
    // ---------------------------------------------------------------------
    r#"
    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld

    /* ebx holds the hvm_start_info address, but cpuid overwrites ebx: keep it
       in ebp, which nothing below touches, until it is handed to Rust. */
    mov ebp, ebx

    /* Zero .bss: the page tables and stacks live there and must start empty.
       (QEMU's loader zeroes it too, but the protocol does not promise that.) */
    mov edi, offset __bss_start
    mov ecx, offset __bss_end
    sub ecx, edi
    shr ecx, 2
    xor eax, eax
    rep stosd

    mov esp, offset boot_stack_top

    /* Long mode present? CPUID 80000001h:EDX bit 29 (SDM Vol. 2A, CPUID). */
    mov eax, 0x80000000
    cpuid
    cmp eax, 0x80000001
    jb .Lno_long_mode
    mov eax, 0x80000001
    cpuid
    test edx, 1 << 29
    jz .Lno_long_mode
    mov esi, edx                    /* keep the feature bits: bit 20 is NX */

    /* PML4[0] -> PDPT, PDPT[0..4] -> the four page directories.
       Flags 0x3 = present | writable. */
    mov eax, offset boot_pdpt
    or eax, 0x3
    mov dword ptr [boot_pml4], eax

    mov eax, offset boot_page_directories
    or eax, 0x3
    mov dword ptr [boot_pdpt + 0 * 8], eax
    add eax, 4096
    mov dword ptr [boot_pdpt + 1 * 8], eax
    add eax, 4096
    mov dword ptr [boot_pdpt + 2 * 8], eax
    add eax, 4096
    mov dword ptr [boot_pdpt + 3 * 8], eax

    /* 2048 PDEs, entry i maps [i * 2 MiB, (i + 1) * 2 MiB).
       Flags 0x83 = present | writable | PS (a 2 MiB page). The upper half of
       each entry stays zero: every address here is below 4 GiB. */
    xor ecx, ecx
.Lfill_page_directory:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov dword ptr [boot_page_directories + ecx * 8], eax
    inc ecx
    cmp ecx, 2048
    jb .Lfill_page_directory

    /* CR3 = PML4, CR4.PAE = 1 (bit 5). */
    mov eax, offset boot_pml4
    mov cr3, eax
    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax

    /* IA32_EFER (MSR C000_0080h): LME (bit 8), and NXE (bit 11) when the CPU
       has NX, so the memory code may use the no-execute bit. */
    mov ecx, 0xc0000080
    rdmsr
    or eax, 1 << 8
    test esi, 1 << 20
    jz .Lno_nx
    or eax, 1 << 11
.Lno_nx:
    wrmsr

    /* CR0: PG (bit 31) turns paging on and, with LME set, activates long mode
       (compatibility mode until CS changes); WP (bit 16) makes read-only pages
       read-only for the kernel too; PE (bit 0) is already set. */
    mov eax, cr0
    or eax, (1 << 31) | (1 << 16) | 1
    mov cr0, eax

    /* Load a GDT with a 64-bit code segment and enter it with a far jump
       (written as a far return: push CS, push EIP, retf, which assembles the
       same way with every assembler). */
    lgdt [boot_gdt_pointer]
    mov eax, offset pvh_start64
    push 0x08
    push eax
    retf

.Lno_long_mode:
    /* No Rust yet, so print the reason straight to COM1 (port 0x3f8), without
       initialising it: good enough for QEMU's emulated UART. */
    mov esi, offset boot_message_no_long_mode
    mov dx, 0x3f8
.Lprint_next_byte:
    lodsb
    test al, al
    jz .Lhalt32
    out dx, al
    jmp .Lprint_next_byte
.Lhalt32:
    cli
    hlt
    jmp .Lhalt32
    "#,
    // ---------------------------------------------------------------------
    // 64-bit entry: reload the data segments, call kernel_main(start_info).
    // ---------------------------------------------------------------------
    r#"
    .code64
pvh_start64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax

    /* IA32_GS_BASE = the bootstrap processor's per-CPU entry (smp::percpu::CPUS[0]), so
       smp::current_cpu() (a load from gs:[0]) works from the first line of Rust on. */
    mov ecx, {gs_base_msr}
    mov eax, offset {per_cpu}
    xor edx, edx
    wrmsr

    mov edi, ebp                    /* rdi = hvm_start_info physical address (zero-extended) */
    xor ebp, ebp                    /* end of the frame-pointer chain for backtraces */
    mov rsp, offset boot_stack_top  /* 16-byte aligned before the call, as the SysV ABI wants */
    call {kernel_main}

.Lhalt64:
    cli
    hlt
    jmp .Lhalt64

    .text
    "#,
    stack_size = const BOOT_STACK_SIZE,
    kernel_main = sym crate::kernel_main,
    gs_base_msr = const crate::smp::percpu::IA32_GS_BASE,
    per_cpu = sym crate::smp::percpu::CPUS,
);
