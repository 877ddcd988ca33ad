//! # The interrupt status register, for handlers (virtio 1.2 §4.1.4.5, §4.2.2)
//!
//! With INTx or virtio-mmio an interrupt does not say why it came; the
//! device's interrupt status does: the ISR byte on PCI (cleared by reading
//! it, §4.1.4.5), InterruptStatus + InterruptACK on virtio-mmio (§4.2.2).
//! An interrupt handler cannot borrow the driver's transport (the
//! interrupted code may be using it), so it keeps an
//! [`InterruptStatusRegister`]: a copy of the transport's own mapping of
//! that register, handed out by the transport itself
//! (`ModernPciTransport::interrupt_status`, `LegacyPciTransport::interrupt_status`,
//! `MmioTransport::interrupt_status`, `AnyTransport::interrupt_status`).
//! It touches nothing the transport's select registers govern, so both may
//! use it at once; the transports' own `Transport::ack_interrupt` reads
//! through the same code.

use core::fmt;

use hal::{Hal, MmioRegion};

use crate::transport::{mmio, InterruptStatus, RegisterWindow};

/// A device's interrupt status register, reachable without its transport.
///
/// Reading it *acknowledges* the interrupt: the PCI ISR byte clears itself
/// when read and the device drops its INTx line (§4.1.4.5.1); the MMIO
/// status is written back to InterruptACK, which clears those bits and
/// drops the line (§4.2.2). A level-triggered line must be dropped before
/// the handler's EOI, or it interrupts again at once.
pub enum InterruptStatusRegister<H: Hal> {
    /// virtio-pci: the ISR byte (modern ISR structure, or the legacy block's
    /// offset 19); cleared by the read.
    Pci(RegisterWindow<H>),
    /// virtio-mmio: InterruptStatus (0x60), acknowledged through InterruptACK (0x64).
    Mmio(MmioRegion<H>),
}

impl<H: Hal> Clone for InterruptStatusRegister<H> {
    fn clone(&self) -> Self {
        match self {
            InterruptStatusRegister::Pci(window) => InterruptStatusRegister::Pci(window.clone()),
            InterruptStatusRegister::Mmio(region) => InterruptStatusRegister::Mmio(*region),
        }
    }
}

impl<H: Hal> fmt::Debug for InterruptStatusRegister<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterruptStatusRegister::Pci(window) => write!(f, "Pci({window:?})"),
            InterruptStatusRegister::Mmio(region) => write!(f, "Mmio({region:?})"),
        }
    }
}

impl<H: Hal> InterruptStatusRegister<H> {
    /// Reads why the device interrupted and acknowledges it. An unreachable
    /// register reads as "nothing" (the handler then counts the interrupt as
    /// not this device's).
    pub fn read_and_acknowledge(&self) -> InterruptStatus {
        match self {
            InterruptStatusRegister::Pci(window) => {
                InterruptStatus::from_bits_truncate(u32::from(window.read8(0).unwrap_or(0)))
            }
            InterruptStatusRegister::Mmio(region) => {
                let status = region
                    .read::<u32>(mmio::regs::INTERRUPT_STATUS)
                    .unwrap_or(0);
                if status != 0 {
                    region.write::<u32>(mmio::regs::INTERRUPT_ACK, status);
                }
                InterruptStatus::from_bits_truncate(status)
            }
        }
    }
}
