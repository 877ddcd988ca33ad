//! # Any transport in one type (virtio 1.2 §4)
//!
//! The kernel keeps devices of every transport flavour side by side, so it
//! needs one type for "some transport" without a generic parameter per
//! flavour: [`AnyTransport`]. It is a [`TransportWrapper`] whose inner
//! transport is whichever flavour it holds, as a `dyn Transport`: the
//! `match` in [`AnyTransport::as_dyn`] / [`AnyTransport::as_dyn_mut`] is
//! where every [`Transport`] method picks the flavour. The exception is
//! `notify`, the one call per request, which has its own `match`
//! (`forward_notify`) so that it stays a direct call, as cheap as calling
//! the flavour itself; configuration and bring-up calls are rare enough
//! that a call through the vtable costs nothing worth measuring.

use core::fmt;

use hal::Hal;

use super::{mmio, pci, Transport, TransportWrapper};
use crate::irq::InterruptStatusRegister;

/// Any of the transports, in one type the kernel can store without generics
/// over the flavour.
pub enum AnyTransport<H: Hal> {
    /// virtio-pci, modern interface.
    PciModern(pci::ModernPciTransport<H>),
    /// virtio-pci, legacy interface.
    PciLegacy(pci::LegacyPciTransport<H>),
    /// virtio-mmio, version 1 or 2.
    Mmio(mmio::MmioTransport<H>),
}

impl<H: Hal> fmt::Debug for AnyTransport<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AnyTransport({} {} at {})",
            self.kind(),
            self.device_type(),
            self.location()
        )
    }
}

impl<H: Hal> From<pci::ModernPciTransport<H>> for AnyTransport<H> {
    fn from(t: pci::ModernPciTransport<H>) -> Self {
        AnyTransport::PciModern(t)
    }
}

impl<H: Hal> From<pci::LegacyPciTransport<H>> for AnyTransport<H> {
    fn from(t: pci::LegacyPciTransport<H>) -> Self {
        AnyTransport::PciLegacy(t)
    }
}

impl<H: Hal> From<mmio::MmioTransport<H>> for AnyTransport<H> {
    fn from(t: mmio::MmioTransport<H>) -> Self {
        AnyTransport::Mmio(t)
    }
}

impl<H: Hal> AnyTransport<H> {
    /// The transport inside, whatever its flavour.
    #[inline]
    pub fn as_dyn(&self) -> &(dyn Transport + 'static) {
        match self {
            AnyTransport::PciModern(t) => t,
            AnyTransport::PciLegacy(t) => t,
            AnyTransport::Mmio(t) => t,
        }
    }

    /// The transport inside, mutably.
    #[inline]
    pub fn as_dyn_mut(&mut self) -> &mut (dyn Transport + 'static) {
        match self {
            AnyTransport::PciModern(t) => t,
            AnyTransport::PciLegacy(t) => t,
            AnyTransport::Mmio(t) => t,
        }
    }

    /// The device's interrupt status register, for an interrupt handler
    /// (a copy of the flavour's own mapping; see [`InterruptStatusRegister`]).
    pub fn interrupt_status(&self) -> InterruptStatusRegister<H> {
        match self {
            AnyTransport::PciModern(t) => t.interrupt_status(),
            AnyTransport::PciLegacy(t) => t.interrupt_status(),
            AnyTransport::Mmio(t) => t.interrupt_status(),
        }
    }
}

/// Every [`Transport`] call goes to the flavour inside, unchanged.
impl<H: Hal> TransportWrapper for AnyTransport<H> {
    type Inner = dyn Transport;

    #[inline]
    fn inner(&self) -> &Self::Inner {
        self.as_dyn()
    }

    #[inline]
    fn inner_mut(&mut self) -> &mut Self::Inner {
        self.as_dyn_mut()
    }

    /// The per-request call, kept direct: through [`Self::as_dyn_mut`] it
    /// would be an indirect jump through the vtable after the `match`.
    #[inline]
    fn forward_notify(&self, queue: u16) {
        match self {
            AnyTransport::PciModern(t) => t.notify(queue),
            AnyTransport::PciLegacy(t) => t.notify(queue),
            AnyTransport::Mmio(t) => t.notify(queue),
        }
    }
}
