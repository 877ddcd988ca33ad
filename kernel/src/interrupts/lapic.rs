//! # The local APIC (xAPIC mode)
//!
//! Every x86 core has a local APIC (Intel SDM vol. 3A, chapter 11 "Advanced Programmable
//! Interrupt Controller (APIC)"). It accepts interrupts from the I/O APICs, from PCI devices'
//! MSI writes and from other cores' IPIs, decides which one the core takes next by priority
//! (vector / 16 is the priority class, §11.8.3), and needs to be told when the handler is done
//! (the end-of-interrupt write, §11.8.5). It also has its own timer (§11.5.4) and can send
//! interrupts, including to itself (§11.6).
//!
//! In xAPIC mode its registers are a 4 KiB page of MMIO, at the address in the
//! `IA32_APIC_BASE` MSR (0xFEE0_0000 after reset); each register is 32 bits wide at a 16-byte
//! aligned offset (SDM table 11-1) and must be accessed with single aligned 32-bit loads and
//! stores. The page is mapped uncached, as the SDM requires (§11.4.1).

use super::IrqError;
use core::ptr::NonNull;
use x86_64::registers::model_specific::Msr;

/// `IA32_APIC_BASE` (SDM vol. 3A §11.4.4, figure 11-5).
const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_GLOBAL_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC_ENABLE: u64 = 1 << 10;
const APIC_BASE_ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Register offsets in the xAPIC page (SDM vol. 3A table 11-1).
pub mod reg {
    /// Local APIC ID.
    pub const ID: usize = 0x020;
    /// Version and number of LVT entries.
    pub const VERSION: usize = 0x030;
    /// Task priority (TPR): interrupts at or below it are held back.
    pub const TASK_PRIORITY: usize = 0x080;
    /// End of interrupt: write 0 when a handler is done.
    pub const EOI: usize = 0x0b0;
    /// Spurious-interrupt vector and the software enable bit.
    pub const SPURIOUS_VECTOR: usize = 0x0f0;
    /// In-service register, 8 x 32 bits at 0x100, 0x110, ... 0x170.
    pub const ISR_BASE: usize = 0x100;
    /// Interrupt request register, 8 x 32 bits at 0x200, ... 0x270.
    #[cfg(feature = "selftest")]
    pub const IRR_BASE: usize = 0x200;
    /// Error status (ESR): write, then read the latched errors.
    pub const ERROR_STATUS: usize = 0x280;
    /// LVT entry for corrected machine-check interrupts.
    pub const LVT_CMCI: usize = 0x2f0;
    /// Interrupt command, low half (writing it sends the IPI).
    pub const ICR_LOW: usize = 0x300;
    /// Interrupt command, high half (destination).
    pub const ICR_HIGH: usize = 0x310;
    /// LVT entry for the APIC timer.
    pub const LVT_TIMER: usize = 0x320;
    /// LVT entry for the thermal sensor.
    pub const LVT_THERMAL: usize = 0x330;
    /// LVT entry for performance-counter overflow.
    pub const LVT_PERFORMANCE: usize = 0x340;
    /// LVT entry for the LINT0 pin (ExtINT from the legacy PIC).
    pub const LVT_LINT0: usize = 0x350;
    /// LVT entry for the LINT1 pin (NMI).
    pub const LVT_LINT1: usize = 0x360;
    /// LVT entry for APIC errors.
    pub const LVT_ERROR: usize = 0x370;
    /// Timer initial count (writing it starts the timer).
    pub const TIMER_INITIAL_COUNT: usize = 0x380;
    /// Timer current count (read-only).
    pub const TIMER_CURRENT_COUNT: usize = 0x390;
    /// Timer divide configuration.
    pub const TIMER_DIVIDE: usize = 0x3e0;
}

/// Bits of a local vector table entry (SDM vol. 3A §11.5.1, figure 11-8).
pub mod lvt {
    /// The entry is masked (no interrupt).
    pub const MASKED: u32 = 1 << 16;
    /// Input pin polarity: active low.
    pub const ACTIVE_LOW: u32 = 1 << 13;
    /// Delivery mode NMI.
    pub const DELIVERY_NMI: u32 = 0b100 << 8;
    /// Timer mode bits 18:17: 00 one-shot, 01 periodic, 10 TSC-deadline.
    pub const TIMER_ONE_SHOT: u32 = 0b00 << 17;
}

/// Bits of the interrupt command register (SDM vol. 3A §11.6.1, figure 11-12).
pub mod icr {
    /// Delivery mode fixed (the vector in bits 7:0).
    pub const DELIVERY_FIXED: u32 = 0b000 << 8;
    /// Delivery mode NMI (vector ignored).
    pub const DELIVERY_NMI: u32 = 0b100 << 8;
    /// Delivery mode INIT (vector ignored): the target resets into wait-for-SIPI.
    pub const DELIVERY_INIT: u32 = 0b101 << 8;
    /// Delivery mode start-up (SIPI): the target starts in real mode at `vector << 12`.
    pub const DELIVERY_STARTUP: u32 = 0b110 << 8;
    /// Send pending: the previous IPI has not been accepted yet.
    pub const DELIVERY_PENDING: u32 = 1 << 12;
    /// Level assert (required for everything but INIT de-assert).
    pub const LEVEL_ASSERT: u32 = 1 << 14;
    /// Destination shorthand: this CPU only.
    #[cfg(feature = "selftest")]
    pub const SHORTHAND_SELF: u32 = 0b01 << 18;
}

/// Spurious-interrupt vector register: bit 8 is the APIC software enable (SDM §11.9).
pub const SVR_APIC_ENABLE: u32 = 1 << 8;

/// Divide configuration value for "divide by 16" (SDM figure 11-10: bits 3,1:0 = 0,11).
pub const TIMER_DIVIDE_BY_16: u32 = 0b0011;

/// How long to wait for the ICR's delivery-status bit before giving up (iterations).
const ICR_SPIN_LIMIT: u32 = 1_000_000;

/// The local APIC, through its MMIO page. Every CPU has its own APIC at the same physical
/// address (each CPU's accesses to the page reach its own), so one handle serves all CPUs and
/// every register read or write concerns the calling CPU's APIC.
pub struct LocalApic {
    registers: NonNull<u8>,
}

// SAFETY: the pointer is an uncached, permanent mapping of the APIC page, which each CPU sees
// as its own APIC; every access is a single volatile 32-bit load or store, and multi-register
// sequences (the ICR) are done with interrupts disabled by the callers, so no other code on the
// same CPU interleaves, and other CPUs write their own ICR. Sharing the handle is sound.
unsafe impl Send for LocalApic {}
// SAFETY: as above; `&LocalApic` only exposes volatile register accesses.
unsafe impl Sync for LocalApic {}

/// What `IA32_APIC_BASE` says and what we did to it.
pub struct ApicBase {
    pub physical_address: u64,
    pub was_x2apic: bool,
    pub was_disabled: bool,
}

/// Makes sure the local APIC is globally enabled and in xAPIC (MMIO) mode, and returns the
/// physical address of its registers. If firmware left it in x2APIC mode, the only legal way back
/// is through the disabled state (SDM vol. 3A §11.12.5, figure 11-27), which resets the APIC.
pub fn enable_xapic_mode() -> ApicBase {
    let mut msr = Msr::new(IA32_APIC_BASE);
    // SAFETY: IA32_APIC_BASE exists on every CPU with an APIC (CPUID.1:EDX.APIC, which the
    // x86_64 target and QEMU's CPU models have); reading it has no side effects.
    let value = unsafe { msr.read() };
    let base = ApicBase {
        physical_address: value & APIC_BASE_ADDRESS_MASK,
        was_x2apic: value & APIC_BASE_X2APIC_ENABLE != 0,
        was_disabled: value & APIC_BASE_GLOBAL_ENABLE == 0,
    };
    if base.was_x2apic {
        let disabled = value & !(APIC_BASE_GLOBAL_ENABLE | APIC_BASE_X2APIC_ENABLE);
        // SAFETY: x2APIC -> disabled -> xAPIC is the transition sequence the SDM allows; no
        // interrupts are enabled yet, so nothing is lost while the APIC resets.
        unsafe { msr.write(disabled) };
    }
    if base.was_x2apic || base.was_disabled {
        let enabled = (value & !APIC_BASE_X2APIC_ENABLE) | APIC_BASE_GLOBAL_ENABLE;
        // SAFETY: setting the global enable bit with x2APIC clear selects xAPIC mode at the
        // same base address.
        unsafe { msr.write(enabled) };
    }
    base
}

impl LocalApic {
    /// Wraps the mapped register page.
    ///
    /// # Safety
    /// `registers` must be an uncached mapping of the current CPU's 4 KiB xAPIC page that stays
    /// valid for the rest of the run, with the APIC in xAPIC mode.
    pub unsafe fn new(registers: NonNull<u8>) -> Self {
        LocalApic { registers }
    }

    /// Reads a 32-bit register.
    pub fn read(&self, offset: usize) -> u32 {
        debug_assert!(offset < 0x400 && offset.is_multiple_of(16));
        // SAFETY: `offset` is a register offset inside the mapped 4 KiB page, 16-byte aligned.
        unsafe {
            self.registers
                .as_ptr()
                .add(offset)
                .cast::<u32>()
                .read_volatile()
        }
    }

    /// Writes a 32-bit register.
    pub fn write(&self, offset: usize, value: u32) {
        debug_assert!(offset < 0x400 && offset.is_multiple_of(16));
        // SAFETY: as in `read`.
        unsafe {
            self.registers
                .as_ptr()
                .add(offset)
                .cast::<u32>()
                .write_volatile(value)
        }
    }

    /// The calling CPU's local APIC ID (bits 31:24 of the ID register in xAPIC mode): what
    /// I/O APIC entries, MSI addresses and IPIs name as the destination.
    pub fn id(&self) -> u32 {
        self.read(reg::ID) >> 24
    }

    /// Version register: bits 7:0 version (0x1X for integrated APICs), bits 23:16 the index of
    /// the last LVT entry.
    pub fn version(&self) -> u32 {
        self.read(reg::VERSION)
    }

    /// Index of the last local vector table entry (4 = up to LVT error, 5 = thermal, 6 = CMCI).
    pub fn max_lvt_entry(&self) -> u32 {
        (self.version() >> 16) & 0xff
    }

    /// Signals end of interrupt: clears the highest-priority in-service bit (SDM §11.8.5). The
    /// value written must be 0.
    #[inline]
    pub fn end_of_interrupt(&self) {
        self.write(reg::EOI, 0);
    }

    /// Whether `vector`'s bit is set in the 256-bit register array starting at `base`
    /// (ISR, TMR or IRR: eight 32-bit registers 16 bytes apart, SDM figure 11-20).
    fn vector_bit(&self, base: usize, vector: u8) -> bool {
        let word = self.read(base + usize::from(vector / 32) * 0x10);
        word & (1 << (vector % 32)) != 0
    }

    /// Is `vector` in service (delivered, handler not yet EOIed)?
    pub fn in_service(&self, vector: u8) -> bool {
        self.vector_bit(reg::ISR_BASE, vector)
    }

    /// Is any vector in service?
    pub fn any_in_service(&self) -> bool {
        (0..8).any(|word| self.read(reg::ISR_BASE + word * 0x10) != 0)
    }

    /// Is `vector` requested (accepted by the APIC, not yet delivered to the core)?
    #[cfg(feature = "selftest")]
    pub fn requested(&self, vector: u8) -> bool {
        self.vector_bit(reg::IRR_BASE, vector)
    }

    /// Reads and clears the error status register: write first to latch the current errors,
    /// then read (SDM §11.5.3).
    pub fn take_errors(&self) -> u32 {
        self.write(reg::ERROR_STATUS, 0);
        self.read(reg::ERROR_STATUS)
    }

    /// Writes the ICR: destination `apic_id` (ignored with a shorthand in `command`), then the
    /// command word, which sends the IPI; waits until the APIC has accepted it (delivery status
    /// idle, SDM §11.6.1). Callers disable interrupts, so that no handler on this CPU writes the
    /// ICR between the two halves.
    pub fn send_ipi(&self, apic_id: u32, command: u32) -> Result<(), IrqError> {
        self.write(reg::ICR_HIGH, (apic_id & 0xff) << 24);
        self.write(reg::ICR_LOW, command);
        for _ in 0..ICR_SPIN_LIMIT {
            if self.read(reg::ICR_LOW) & icr::DELIVERY_PENDING == 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(IrqError::IpiNotDelivered)
    }

    /// Sends a fixed interrupt with `vector` to this CPU itself through the ICR (SDM §11.6.1,
    /// destination shorthand "self") and waits until the APIC has accepted it. Callers disable
    /// interrupts: the ICR is written in two steps only when a destination is needed, but the
    /// delivery-status poll must not interleave with another sender.
    #[cfg(feature = "selftest")]
    pub fn send_self_ipi(&self, vector: u8) -> Result<(), IrqError> {
        self.write(reg::ICR_HIGH, 0);
        self.write(
            reg::ICR_LOW,
            u32::from(vector) | icr::DELIVERY_FIXED | icr::LEVEL_ASSERT | icr::SHORTHAND_SELF,
        );
        for _ in 0..ICR_SPIN_LIMIT {
            if self.read(reg::ICR_LOW) & icr::DELIVERY_PENDING == 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(IrqError::IpiNotDelivered)
    }
}
