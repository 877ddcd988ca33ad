//! The kernel's Global Descriptor Table and Task State Segment.
//!
//! In 64-bit mode segmentation is mostly gone (Intel SDM Vol. 3A, 3.2.4
//! "Segmentation in IA-32e Mode"), but the CPU still needs:
//! - a 64-bit code segment for CS (the L bit) and a data segment for SS;
//! - a TSS (SDM Vol. 3A, 9.7 "Task Management in 64-bit Mode"), not for
//!   task switching but for its Interrupt Stack Table: up to seven known-good
//!   stacks the CPU switches to for chosen interrupt vectors, whatever RSP was.
//!   A double fault caused by a stack overflow can only be reported from a
//!   stack that is not the overflowed one, and an NMI can arrive at any
//!   instruction, so both get their own (see `idt.rs` for the wiring).
//!
//! ```text
//! selector  descriptor
//!   0x00    null
//!   0x08    kernel code, 64-bit      (same selectors as the boot GDT in boot/entry.rs)
//!   0x10    kernel data
//!   0x18    TSS, 64-bit (16 bytes, two slots)
//! ```
//!
//! Each IST stack sits right above a page-aligned 4 KiB guard area that
//! nothing uses: the memory code may unmap it ([`stack_guard_pages`]) so that
//! an overflow faults instead of silently overwriting its neighbour.

use core::cell::UnsafeCell;
use core::mem::size_of;
use spin::Once;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, FS, SS};
use x86_64::instructions::tables::{lgdt, load_tss};
use x86_64::registers::segmentation::SegmentSelector;
use x86_64::structures::DescriptorTablePointer;
use x86_64::{PrivilegeLevel, VirtAddr};

/// Selector of the 64-bit kernel code segment.
pub const KERNEL_CODE_SELECTOR: u16 = 0x08;
/// Selector of the kernel data segment (SS, DS, ES).
pub const KERNEL_DATA_SELECTOR: u16 = 0x10;
/// Selector of the TSS.
pub const TSS_SELECTOR: u16 = 0x18;

/// IST slot (1-based, as the IDT gate's IST field counts) for double faults.
pub const DOUBLE_FAULT_IST: u8 = 1;
/// IST slot for non-maskable interrupts.
pub const NMI_IST: u8 = 2;
/// IST slot for machine checks (like NMI, they can interrupt anything).
pub const MACHINE_CHECK_IST: u8 = 3;

/// Size of each IST stack.
pub const IST_STACK_SIZE: usize = 16 * 1024;
/// Size of the unused guard area below each IST stack.
pub const GUARD_SIZE: usize = 4096;

/// 64-bit code: P=1, DPL=0, S=1, type=1010 (execute/read), L=1, G=1.
const CODE_DESCRIPTOR: u64 = 0x00af_9a00_0000_ffff;
/// Data: P=1, DPL=0, S=1, type=0010 (read/write), D/B=1, G=1.
const DATA_DESCRIPTOR: u64 = 0x00cf_9200_0000_ffff;
/// System-segment type 1001b: available 64-bit TSS (SDM Vol. 3A, Table 3-2).
const TSS_TYPE_AVAILABLE: u64 = 0x9;
/// Type 1011b: the CPU sets this "busy" bit when `ltr` loads the TSS.
#[cfg(feature = "selftest")]
pub const TSS_TYPE_BUSY: u64 = 0xb;
const DESCRIPTOR_PRESENT: u64 = 1 << 47;

/// The 64-bit TSS (SDM Vol. 3A, Figure 9-11). Packed to 4 bytes because the
/// RSP0 field sits at offset 4.
#[repr(C, packed(4))]
pub struct TaskStateSegment {
    reserved_0: u32,
    /// Stacks for privilege-level changes to rings 0..2 (unused: no user mode).
    privilege_stacks: [u64; 3],
    reserved_1: u64,
    /// IST1..IST7: stack tops loaded on entry through a gate whose IST field is n.
    pub interrupt_stacks: [u64; 7],
    reserved_2: u64,
    reserved_3: u16,
    /// Offset of the I/O permission bitmap; past the limit means "none".
    io_map_base: u16,
}

/// A stack with a page-aligned guard area below it.
#[repr(C, align(4096))]
pub struct GuardedStack {
    guard: UnsafeCell<[u8; GUARD_SIZE]>,
    stack: UnsafeCell<[u8; IST_STACK_SIZE]>,
}

// SAFETY: the stacks are only ever used by the CPU (through the TSS) and
// their addresses taken here; no Rust code reads or writes their contents.
unsafe impl Sync for GuardedStack {}

impl GuardedStack {
    const fn new() -> Self {
        Self {
            guard: UnsafeCell::new([0; GUARD_SIZE]),
            stack: UnsafeCell::new([0; IST_STACK_SIZE]),
        }
    }

    /// The usable stack as `(lowest address, one past the highest)`.
    pub fn bounds(&self) -> (u64, u64) {
        let bottom = self.stack.get() as u64;
        (bottom, bottom + IST_STACK_SIZE as u64)
    }

    /// The guard area's first byte.
    #[cfg(feature = "selftest")]
    pub fn guard_page(&self) -> u64 {
        self.guard.get() as u64
    }
}

/// The IST stack the double-fault handler runs on (a kernel stack overflow
/// cannot be handled on the stack that overflowed).
pub static DOUBLE_FAULT_STACK: GuardedStack = GuardedStack::new();
/// The IST stack for NMIs, which can arrive at any instruction.
pub static NMI_STACK: GuardedStack = GuardedStack::new();
/// The IST stack for machine checks, which can arrive at any instruction.
pub static MACHINE_CHECK_STACK: GuardedStack = GuardedStack::new();

/// The GDT itself. In writable memory on purpose: `ltr` writes the busy bit
/// into the TSS descriptor.
#[repr(C, align(16))]
pub struct Gdt {
    pub entries: [u64; 5],
}

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<Gdt> = Once::new();

/// The two 8-byte halves of a 64-bit TSS descriptor (SDM Vol. 3A, Figure 8-4
/// "Format of TSS and LDT Descriptors in 64-bit Mode").
fn tss_descriptor(tss: &'static TaskStateSegment) -> [u64; 2] {
    let base = tss as *const TaskStateSegment as u64;
    let limit = (size_of::<TaskStateSegment>() - 1) as u64;
    let low = (limit & 0xffff)
        | (base & 0x00ff_ffff) << 16
        | TSS_TYPE_AVAILABLE << 40
        | DESCRIPTOR_PRESENT
        | ((limit >> 16) & 0xf) << 48
        | ((base >> 24) & 0xff) << 56;
    let high = base >> 32;
    [low, high]
}

/// A TSS whose IST slots 1..=3 hold `ist_tops` (double fault, NMI, machine check).
fn tss_with_ist(ist_tops: [u64; 3]) -> TaskStateSegment {
    TaskStateSegment {
        reserved_0: 0,
        privilege_stacks: [0; 3],
        reserved_1: 0,
        interrupt_stacks: [ist_tops[0], ist_tops[1], ist_tops[2], 0, 0, 0, 0],
        reserved_2: 0,
        reserved_3: 0,
        io_map_base: size_of::<TaskStateSegment>() as u16,
    }
}

/// The GDT that goes with `tss`.
fn gdt_for(tss: &'static TaskStateSegment) -> Gdt {
    let [tss_low, tss_high] = tss_descriptor(tss);
    Gdt {
        entries: [0, CODE_DESCRIPTOR, DATA_DESCRIPTOR, tss_low, tss_high],
    }
}

/// Builds the bootstrap processor's TSS and GDT (IST stacks in `.bss`), loads the GDT, reloads
/// the segment registers and loads the task register. Interrupts must be off (they are, at
/// boot).
pub fn init() {
    let tss = TSS.call_once(|| {
        tss_with_ist([
            DOUBLE_FAULT_STACK.bounds().1,
            NMI_STACK.bounds().1,
            MACHINE_CHECK_STACK.bounds().1,
        ])
    });
    load(GDT.call_once(|| gdt_for(tss)));
}

/// An application processor's own TSS and GDT (`smp/startup.rs`): each CPU needs its own TSS,
/// because its IST stacks must be its own (two CPUs taking an NMI at once must not share a
/// stack) and because `ltr` marks the descriptor busy, which a second `ltr` of the same
/// descriptor refuses with #GP. `ist_tops` are the tops of its double-fault, NMI and
/// machine-check stacks. The tables are leaked: a CPU never goes away.
pub fn init_application_processor(ist_tops: [u64; 3]) {
    let tss: &'static TaskStateSegment =
        alloc::boxed::Box::leak(alloc::boxed::Box::new(tss_with_ist(ist_tops)));
    let gdt: &'static Gdt = alloc::boxed::Box::leak(alloc::boxed::Box::new(gdt_for(tss)));
    load(gdt);
}

/// Loads `gdt`, reloads CS, SS, DS, ES (FS null) and the task register.
fn load(gdt: &'static Gdt) {
    let pointer = DescriptorTablePointer {
        limit: (size_of::<Gdt>() - 1) as u16,
        base: VirtAddr::new(gdt as *const Gdt as u64),
    };
    let code = SegmentSelector::new(KERNEL_CODE_SELECTOR >> 3, PrivilegeLevel::Ring0);
    let data = SegmentSelector::new(KERNEL_DATA_SELECTOR >> 3, PrivilegeLevel::Ring0);
    let null = SegmentSelector(0);
    let task = SegmentSelector::new(TSS_SELECTOR >> 3, PrivilegeLevel::Ring0);
    // SAFETY: the GDT lives for the rest of the run (a static, or leaked); its code and
    // data descriptors are the ones the boot GDT (and the SMP trampoline's) had under the same
    // selectors, so reloading CS (a far return) and SS/DS/ES keeps the running code valid; FS
    // is unused (null). GS is not reloaded: a null selector load may clear the GS base, which
    // holds this CPU's per-CPU pointer (smp::percpu). The TSS descriptor points to a TSS that
    // lives as long as the GDT, correctly sized, whose IST stacks live forever too.
    unsafe {
        lgdt(&pointer);
        CS::set_reg(code);
        SS::set_reg(data);
        DS::set_reg(data);
        ES::set_reg(data);
        FS::set_reg(null);
        load_tss(task);
    }
}

/// The GDT, once [`init`] ran.
#[cfg(feature = "selftest")]
pub fn gdt() -> Option<&'static Gdt> {
    GDT.get()
}

/// The TSS, once [`init`] ran.
#[cfg(feature = "selftest")]
pub fn tss() -> Option<&'static TaskStateSegment> {
    TSS.get()
}

/// Page-aligned 4 KiB guard areas below the IST stacks and the boot stack,
/// for the memory code to leave unmapped if it wants stack overflows to fault.
#[cfg(feature = "selftest")]
pub fn stack_guard_pages() -> [u64; 4] {
    [
        DOUBLE_FAULT_STACK.guard_page(),
        NMI_STACK.guard_page(),
        MACHINE_CHECK_STACK.guard_page(),
        crate::boot::entry::boot_stack_guard_page(),
    ]
}
