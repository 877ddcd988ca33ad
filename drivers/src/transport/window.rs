//! A block of device registers in either address space.
//!
//! virtio-pci puts its register blocks in BARs, and a BAR is either memory or
//! I/O space. The legacy register block is always in an I/O BAR (§4.1.4.8);
//! the modern structures are normally in memory BARs, but §4.1.4 allows any
//! BAR, I/O included. [`RegisterWindow`] hides which one it is, so the same
//! transport code drives both: memory through [`MmioRegion`], I/O through
//! `Hal::port_read`/`port_write`. Both are bounds-checked and alignment-checked.

use hal::{Hal, MmioRegion, PortWidth};

/// A bounds-checked window of registers in memory or I/O space.
pub enum RegisterWindow<H: Hal> {
    /// Memory-mapped registers.
    Memory(MmioRegion<H>),
    /// I/O ports `base..base+len`.
    Ports {
        /// First port.
        base: u16,
        /// Number of ports.
        len: u16,
    },
}

impl<H: Hal> Clone for RegisterWindow<H> {
    fn clone(&self) -> Self {
        match self {
            RegisterWindow::Memory(region) => RegisterWindow::Memory(*region),
            RegisterWindow::Ports { base, len } => RegisterWindow::Ports {
                base: *base,
                len: *len,
            },
        }
    }
}

impl<H: Hal> core::fmt::Debug for RegisterWindow<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RegisterWindow::Memory(region) => write!(f, "Memory({region:?})"),
            RegisterWindow::Ports { base, len } => write!(f, "Ports({base:#x}+{len:#x})"),
        }
    }
}

impl<H: Hal> RegisterWindow<H> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            RegisterWindow::Memory(region) => region.len(),
            RegisterWindow::Ports { len, .. } => usize::from(*len),
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
            RegisterWindow::Ports { base, len: total } => {
                let end = offset.checked_add(len)?;
                if end > usize::from(*total) {
                    return None;
                }
                Some(RegisterWindow::Ports {
                    base: base.checked_add(u16::try_from(offset).ok()?)?,
                    len: u16::try_from(len).ok()?,
                })
            }
        }
    }

    fn port(&self, offset: usize, width: usize) -> Option<u16> {
        let RegisterWindow::Ports { base, len } = self else {
            return None;
        };
        let end = offset.checked_add(width)?;
        if end > usize::from(*len) || !offset.is_multiple_of(width) {
            return None;
        }
        base.checked_add(u16::try_from(offset).ok()?)
    }

    fn port_read(&self, offset: usize, width: PortWidth, bytes: usize) -> Option<u32> {
        let port = self.port(offset, bytes)?;
        // SAFETY: the port lies inside the I/O BAR this window was built from,
        // which belongs to the device this transport owns.
        unsafe { H::port_read(port, width) }.ok()
    }

    fn port_write(&self, offset: usize, width: PortWidth, bytes: usize, value: u32) -> bool {
        let Some(port) = self.port(offset, bytes) else {
            return false;
        };
        // SAFETY: as in `port_read`: the port is inside this device's I/O BAR.
        unsafe { H::port_write(port, width, value) }.is_ok()
    }

    /// Reads a byte register; `None` if outside the window or unreachable.
    pub fn read8(&self, offset: usize) -> Option<u8> {
        match self {
            RegisterWindow::Memory(region) => region.read::<u8>(offset),
            RegisterWindow::Ports { .. } => {
                self.port_read(offset, PortWidth::Byte, 1).map(|v| v as u8)
            }
        }
    }

    /// Reads a 16-bit register.
    pub fn read16(&self, offset: usize) -> Option<u16> {
        match self {
            RegisterWindow::Memory(region) => region.read::<u16>(offset),
            RegisterWindow::Ports { .. } => {
                self.port_read(offset, PortWidth::Word, 2).map(|v| v as u16)
            }
        }
    }

    /// Reads a 32-bit register.
    pub fn read32(&self, offset: usize) -> Option<u32> {
        match self {
            RegisterWindow::Memory(region) => region.read::<u32>(offset),
            RegisterWindow::Ports { .. } => self.port_read(offset, PortWidth::Dword, 4),
        }
    }

    /// Writes a byte register; `false` if outside the window or unreachable.
    pub fn write8(&self, offset: usize, value: u8) -> bool {
        match self {
            RegisterWindow::Memory(region) => region.write::<u8>(offset, value),
            RegisterWindow::Ports { .. } => {
                self.port_write(offset, PortWidth::Byte, 1, u32::from(value))
            }
        }
    }

    /// Writes a 16-bit register.
    pub fn write16(&self, offset: usize, value: u16) -> bool {
        match self {
            RegisterWindow::Memory(region) => region.write::<u16>(offset, value),
            RegisterWindow::Ports { .. } => {
                self.port_write(offset, PortWidth::Word, 2, u32::from(value))
            }
        }
    }

    /// Writes a 32-bit register.
    pub fn write32(&self, offset: usize, value: u32) -> bool {
        match self {
            RegisterWindow::Memory(region) => region.write::<u32>(offset, value),
            RegisterWindow::Ports { .. } => self.port_write(offset, PortWidth::Dword, 4, value),
        }
    }
}
