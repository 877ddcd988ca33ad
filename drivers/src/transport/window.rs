//! A block of device registers in either address space.
//!
//! virtio-pci puts its register blocks in BARs, and a BAR is either memory or
//! I/O space. The legacy register block is always in an I/O BAR (§4.1.4.8);
//! the modern structures are normally in memory BARs, but §4.1.4 allows any
//! BAR, I/O included. [`RegisterWindow`] hides which one it is, so the same
//! transport code drives both: memory through [`MmioRegion`], I/O through a
//! [`PortRange`]. Both are bounds-checked and alignment-checked, and both
//! live in `hal`, so this file needs no `unsafe`.

use hal::{Hal, MmioRegion, PortRange};

/// A bounds-checked window of registers in memory or I/O space.
pub enum RegisterWindow<H: Hal> {
    /// Memory-mapped registers.
    Memory(MmioRegion<H>),
    /// I/O ports, vouched for by whoever made the [`PortRange`] (see
    /// `hal::PortRange::device_ports`).
    Ports(PortRange<H>),
}

impl<H: Hal> Clone for RegisterWindow<H> {
    fn clone(&self) -> Self {
        match self {
            RegisterWindow::Memory(region) => RegisterWindow::Memory(*region),
            RegisterWindow::Ports(ports) => RegisterWindow::Ports(ports.clone()),
        }
    }
}

impl<H: Hal> core::fmt::Debug for RegisterWindow<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RegisterWindow::Memory(region) => write!(f, "Memory({region:?})"),
            RegisterWindow::Ports(ports) => write!(f, "{ports:?}"),
        }
    }
}

impl<H: Hal> RegisterWindow<H> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            RegisterWindow::Memory(region) => region.len(),
            RegisterWindow::Ports(ports) => ports.len(),
        }
    }

    /// `true` for a zero-length window.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The part `offset..offset+len`, or `None` if it does not fit.
    pub fn subwindow(&self, offset: usize, len: usize) -> Option<Self> {
        match self {
            RegisterWindow::Memory(region) => region.subregion(offset, len).map(Self::Memory),
            RegisterWindow::Ports(ports) => ports.subrange(offset, len).map(Self::Ports),
        }
    }

    /// Reads a byte register; `None` if outside the window or unreachable.
    pub fn read8(&self, offset: usize) -> Option<u8> {
        match self {
            RegisterWindow::Memory(region) => region.read::<u8>(offset),
            RegisterWindow::Ports(ports) => ports.read::<u8>(offset).ok(),
        }
    }

    /// Reads a 16-bit register.
    pub fn read16(&self, offset: usize) -> Option<u16> {
        match self {
            RegisterWindow::Memory(region) => region.read::<u16>(offset),
            RegisterWindow::Ports(ports) => ports.read::<u16>(offset).ok(),
        }
    }

    /// Reads a 32-bit register.
    pub fn read32(&self, offset: usize) -> Option<u32> {
        match self {
            RegisterWindow::Memory(region) => region.read::<u32>(offset),
            RegisterWindow::Ports(ports) => ports.read::<u32>(offset).ok(),
        }
    }

    /// Writes a byte register; `false` if outside the window or unreachable.
    pub fn write8(&self, offset: usize, value: u8) -> bool {
        match self {
            RegisterWindow::Memory(region) => region.write::<u8>(offset, value),
            RegisterWindow::Ports(ports) => ports.write::<u8>(offset, value).is_ok(),
        }
    }

    /// Writes a 16-bit register.
    pub fn write16(&self, offset: usize, value: u16) -> bool {
        match self {
            RegisterWindow::Memory(region) => region.write::<u16>(offset, value),
            RegisterWindow::Ports(ports) => ports.write::<u16>(offset, value).is_ok(),
        }
    }

    /// Writes a 32-bit register.
    pub fn write32(&self, offset: usize, value: u32) -> bool {
        match self {
            RegisterWindow::Memory(region) => region.write::<u32>(offset, value),
            RegisterWindow::Ports(ports) => ports.write::<u32>(offset, value).is_ok(),
        }
    }
}
