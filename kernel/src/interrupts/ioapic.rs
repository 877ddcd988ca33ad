//! # The I/O APIC
//!
//! An I/O APIC (Intel 82093AA I/O Advanced Programmable Interrupt Controller datasheet,
//! document 290566) turns interrupt *lines* (pins) into interrupt *messages* for local APICs.
//! Each pin has a 64-bit redirection table entry (datasheet §3.2.4) that says which vector to
//! send, to which APIC, whether the pin is edge- or level-triggered and active high or low, and
//! whether it is masked. The ACPI MADT numbers all pins of all I/O APICs in one space, the global
//! system interrupts (GSIs): pin `n` of an I/O APIC with GSI base `b` is GSI `b + n`.
//!
//! The registers are reached indirectly through two MMIO words (datasheet §3.1): write a
//! register index to IOREGSEL (offset 0x00), then read or write IOWIN (offset 0x10). Because that
//! is two accesses, every I/O APIC sits behind a lock, taken with interrupts disabled, so that a
//! handler masking its own pin cannot interleave with code that is half-way through an access.
//!
//! Registers used here:
//! - 0x00 IOAPICID: bits 27:24 are the APIC ID;
//! - 0x01 IOAPICVER: bits 7:0 version, bits 23:16 the index of the last redirection entry
//!   (23 for the classic 24-pin part);
//! - 0x10 + 2n / 0x11 + 2n: redirection entry `n`, low and high dword.

use super::{IrqError, Polarity, Trigger};
use core::ptr::NonNull;

const IOREGSEL: usize = 0x00;
const IOWIN: usize = 0x10;
const REG_ID: u32 = 0x00;
const REG_VERSION: u32 = 0x01;
const REG_REDIRECTION_BASE: u32 = 0x10;

/// Bytes of the register window this module touches.
pub const WINDOW_BYTES: usize = 0x20;

/// One redirection table entry (82093AA datasheet §3.2.4), as its two 32-bit halves combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedirectionEntry(pub u64);

impl RedirectionEntry {
    const VECTOR_MASK: u64 = 0xff;
    /// Bits 10:8 delivery mode; 000 = fixed.
    #[cfg(feature = "selftest")]
    const DELIVERY_MODE_MASK: u64 = 0b111 << 8;
    /// Bit 11: 0 = physical destination (an APIC ID), 1 = logical.
    #[cfg(feature = "selftest")]
    const DESTINATION_LOGICAL: u64 = 1 << 11;
    /// Bit 12 (read-only): a message is pending delivery.
    #[cfg(feature = "selftest")]
    pub const DELIVERY_PENDING: u64 = 1 << 12;
    /// Bit 13: 1 = active low.
    const ACTIVE_LOW: u64 = 1 << 13;
    /// Bit 14 (read-only): remote IRR, a level-triggered interrupt awaits the EOI.
    #[cfg(feature = "selftest")]
    pub const REMOTE_IRR: u64 = 1 << 14;
    /// Bit 15: 1 = level-triggered.
    const LEVEL_TRIGGERED: u64 = 1 << 15;
    /// Bit 16: 1 = masked.
    const MASKED: u64 = 1 << 16;
    /// Bits 63:56: destination APIC ID (physical mode).
    const DESTINATION_SHIFT: u32 = 56;
    /// Bits the hardware sets by itself; never written back as if they were configuration.
    #[cfg(feature = "selftest")]
    const READ_ONLY: u64 = Self::DELIVERY_PENDING | Self::REMOTE_IRR;

    /// A fixed-delivery, physical-destination entry.
    pub fn new(
        vector: u8,
        destination_apic_id: u8,
        trigger: Trigger,
        polarity: Polarity,
        masked: bool,
    ) -> Self {
        let mut bits =
            u64::from(vector) | (u64::from(destination_apic_id) << Self::DESTINATION_SHIFT);
        if trigger == Trigger::Level {
            bits |= Self::LEVEL_TRIGGERED;
        }
        if polarity == Polarity::ActiveLow {
            bits |= Self::ACTIVE_LOW;
        }
        if masked {
            bits |= Self::MASKED;
        }
        RedirectionEntry(bits)
    }

    /// The IDT vector the pin delivers.
    pub fn vector(self) -> u8 {
        (self.0 & Self::VECTOR_MASK) as u8
    }

    /// The destination APIC ID (physical mode).
    #[cfg(feature = "selftest")]
    pub fn destination(self) -> u8 {
        (self.0 >> Self::DESTINATION_SHIFT) as u8
    }

    /// `true` if the pin is masked.
    pub fn is_masked(self) -> bool {
        self.0 & Self::MASKED != 0
    }

    /// Edge or level triggered.
    #[cfg(feature = "selftest")]
    pub fn trigger(self) -> Trigger {
        if self.0 & Self::LEVEL_TRIGGERED != 0 {
            Trigger::Level
        } else {
            Trigger::Edge
        }
    }

    /// Active high or active low.
    #[cfg(feature = "selftest")]
    pub fn polarity(self) -> Polarity {
        if self.0 & Self::ACTIVE_LOW != 0 {
            Polarity::ActiveLow
        } else {
            Polarity::ActiveHigh
        }
    }

    /// Fixed delivery to a physical APIC ID, the only form this kernel writes.
    #[cfg(feature = "selftest")]
    pub fn is_fixed_physical(self) -> bool {
        self.0 & (Self::DELIVERY_MODE_MASK | Self::DESTINATION_LOGICAL) == 0
    }

    /// The same entry with the mask bit set or cleared.
    pub fn with_mask(self, masked: bool) -> Self {
        if masked {
            RedirectionEntry(self.0 | Self::MASKED)
        } else {
            RedirectionEntry(self.0 & !Self::MASKED)
        }
    }

    /// The configuration bits only (read-only status bits cleared), for comparisons.
    #[cfg(feature = "selftest")]
    pub fn configuration(self) -> u64 {
        self.0 & !Self::READ_ONLY
    }
}

/// One I/O APIC: its register window and the GSIs it serves.
pub struct IoApic {
    registers: NonNull<u8>,
    /// ID from the MADT (the ID register should agree).
    pub id: u8,
    /// GSI of redirection entry 0.
    pub gsi_base: u32,
    /// Number of redirection entries (pins), from the version register.
    pub pin_count: u32,
    /// Version from the version register (0x11 for the 82093AA, 0x20 for newer parts).
    pub version: u8,
}

// SAFETY: the pointer is a permanent uncached mapping of this I/O APIC's register window;
// `IoApic` is only used behind a spin lock (see `super::IO_APICS`), which serialises the
// two-step IOREGSEL/IOWIN access.
unsafe impl Send for IoApic {}

impl IoApic {
    /// Wraps a mapped register window and reads how many pins it has.
    ///
    /// # Safety
    /// `registers` must be an uncached mapping of at least [`WINDOW_BYTES`] of an I/O APIC's
    /// registers, valid for the rest of the run, and nothing else may access them.
    pub unsafe fn new(registers: NonNull<u8>, id: u8, gsi_base: u32) -> Self {
        let mut io_apic = IoApic {
            registers,
            id,
            gsi_base,
            pin_count: 0,
            version: 0,
        };
        let version = io_apic.read(REG_VERSION);
        io_apic.version = version as u8;
        // Bits 23:16 hold the index of the last entry, so the count is one more. A window that
        // reads all ones has no I/O APIC behind it: treat it as having no pins.
        io_apic.pin_count = if version == u32::MAX {
            0
        } else {
            ((version >> 16) & 0xff) + 1
        };
        io_apic
    }

    fn read(&mut self, register: u32) -> u32 {
        // SAFETY: IOREGSEL and IOWIN lie inside the mapped window; `&mut self` (under the lock)
        // keeps the select-then-access pair from interleaving with another one.
        unsafe {
            self.registers
                .as_ptr()
                .add(IOREGSEL)
                .cast::<u32>()
                .write_volatile(register);
            self.registers
                .as_ptr()
                .add(IOWIN)
                .cast::<u32>()
                .read_volatile()
        }
    }

    fn write(&mut self, register: u32, value: u32) {
        // SAFETY: as in `read`.
        unsafe {
            self.registers
                .as_ptr()
                .add(IOREGSEL)
                .cast::<u32>()
                .write_volatile(register);
            self.registers
                .as_ptr()
                .add(IOWIN)
                .cast::<u32>()
                .write_volatile(value);
        }
    }

    /// The APIC ID the hardware reports (IOAPICID bits 27:24).
    pub fn hardware_id(&mut self) -> u8 {
        ((self.read(REG_ID) >> 24) & 0x0f) as u8
    }

    /// Whether this I/O APIC serves `gsi`.
    pub fn serves(&self, gsi: u32) -> bool {
        gsi >= self.gsi_base && gsi - self.gsi_base < self.pin_count
    }

    fn pin_of(&self, gsi: u32) -> Result<u32, IrqError> {
        if self.serves(gsi) {
            Ok(gsi - self.gsi_base)
        } else {
            Err(IrqError::NoIoApicForGsi(gsi))
        }
    }

    /// Reads the redirection entry of `gsi`.
    pub fn read_entry(&mut self, gsi: u32) -> Result<RedirectionEntry, IrqError> {
        let pin = self.pin_of(gsi)?;
        let low = self.read(REG_REDIRECTION_BASE + 2 * pin);
        let high = self.read(REG_REDIRECTION_BASE + 2 * pin + 1);
        Ok(RedirectionEntry(u64::from(high) << 32 | u64::from(low)))
    }

    /// Writes the redirection entry of `gsi`. The order matters (datasheet §3.2.4 and common
    /// practice): when unmasking, the destination (high half) goes first and the low half with
    /// the mask bit last; when masking, the low half goes first so that the pin is masked before
    /// anything else changes.
    pub fn write_entry(&mut self, gsi: u32, entry: RedirectionEntry) -> Result<(), IrqError> {
        let pin = self.pin_of(gsi)?;
        let low = entry.0 as u32;
        let high = (entry.0 >> 32) as u32;
        if entry.is_masked() {
            self.write(REG_REDIRECTION_BASE + 2 * pin, low);
            self.write(REG_REDIRECTION_BASE + 2 * pin + 1, high);
        } else {
            self.write(REG_REDIRECTION_BASE + 2 * pin + 1, high);
            self.write(REG_REDIRECTION_BASE + 2 * pin, low);
        }
        Ok(())
    }
}
