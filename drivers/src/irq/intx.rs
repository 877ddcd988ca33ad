//! # INTx: the PCI interrupt pin (PCI 3.0 §6.2.2, §6.2.4; virtio 1.2 §4.1.4.5)
//!
//! Without MSI-X a virtio-pci function interrupts on its INTx pin, a
//! level-triggered line it asserts until the driver reads the ISR byte
//! (§4.1.4.5). Which legacy IRQ that pin reaches is written by firmware
//! into the function's interrupt line register ([`intx_line`] classifies
//! it); while MSI-X is used, or the device is polled, the command
//! register's Interrupt Disable bit keeps the pin quiet
//! ([`set_intx_disabled`]).

use crate::pci::{regs, Command, ConfigAccess, PciAddress, PciError, PciFunction};

/// What the firmware did with a PCI function's INTx pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntxLine {
    /// The function has no interrupt pin (interrupt pin register 0).
    NoPin,
    /// Routed: the firmware wrote this legacy (ISA) IRQ number into the
    /// interrupt line register (SeaBIOS does).
    Routed {
        /// 1 = INTA .. 4 = INTD.
        pin: u8,
        /// The IRQ, 1..=15.
        isa_irq: u8,
    },
    /// Not routed: the line register holds 0 or 0xff (qboot writes
    /// nothing), or a number that is not an ISA IRQ a PCI device can have.
    NotRouted {
        /// 1 = INTA .. 4 = INTD.
        pin: u8,
        /// What the line register holds.
        line: u8,
    },
}

/// Classifies what the firmware left in `function`'s interrupt pin and line
/// registers (PCI 3.0 §6.2.4: the line register is written by firmware and
/// only read by the OS; "0xFF ... means unknown or no connection").
pub fn intx_line(function: &PciFunction) -> IntxLine {
    let pin = function.interrupt_pin;
    let line = function.interrupt_line;
    if pin == 0 {
        return IntxLine::NoPin;
    }
    // IRQ 0 is the timer and 2 the cascade from the second 8259: neither
    // can carry a PCI interrupt.
    match line {
        1 | 3..=15 => IntxLine::Routed { pin, isa_irq: line },
        _ => IntxLine::NotRouted { pin, line },
    }
}

/// The letter of an interrupt pin (1 = A).
pub fn pin_name(pin: u8) -> char {
    match pin {
        1..=4 => char::from(b'A' + pin - 1),
        _ => '?',
    }
}

/// Sets (`true`) or clears the command register's Interrupt Disable bit:
/// while it is set the function does not assert INTx (PCI 3.0 §6.2.2). Set
/// while MSI-X is used or the device is polled; clear for INTx.
pub fn set_intx_disabled<C: ConfigAccess + ?Sized>(
    access: &C,
    address: PciAddress,
    disabled: bool,
) -> Result<(), PciError> {
    let current = Command::from_bits_retain(access.read16(address, regs::COMMAND)?);
    let wanted = if disabled {
        current | Command::INTERRUPT_DISABLE
    } else {
        current - Command::INTERRUPT_DISABLE
    };
    if wanted != current {
        log::trace!(
            "pci: {address}: INTx {} (command {:#06x} -> {:#06x})",
            if disabled { "disabled" } else { "enabled" },
            current.bits(),
            wanted.bits()
        );
        access.write16(address, regs::COMMAND, wanted.bits())?;
    }
    Ok(())
}
