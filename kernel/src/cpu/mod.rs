//! The CPU's own tables: GDT with a TSS ([`gdt`]), IDT with entry stubs for
//! all 256 vectors ([`idt`]), and the exception reports ([`exceptions`]).
//!
//! Intel SDM Vol. 3A: chapter 3 (segments, GDT), chapter 7 (IDT, exceptions),
//! chapter 9 (TSS, Interrupt Stack Table). docs/01-boot.md tells the story.

pub mod backtrace;
pub mod exceptions;
pub mod gdt;
pub mod idt;
#[cfg(feature = "selftest")]
mod selftests;

#[cfg(feature = "selftest")]
pub use selftests::selftests;

/// Installs the kernel's GDT, TSS and IDT. After this, exceptions are
/// reported instead of triple-faulting the machine.
pub fn init() {
    gdt::init();
    idt::init();
    log::info!("GDT, TSS (IST: #DF, NMI, #MC) and IDT (256 vectors) loaded");
}
