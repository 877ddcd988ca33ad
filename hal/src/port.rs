//! I/O port ranges: port I/O that is safe to use once somebody vouched for
//! the ports.
//!
//! An `in`/`out` instruction reaches whatever the chipset decodes at that
//! port: a virtio device's legacy register block, but also the interrupt
//! controller, the DMA controller or PCI configuration space, through which
//! memory safety can be broken. So [`Hal::port_read`] / [`Hal::port_write`]
//! are `unsafe`, and a [`PortRange`] is how that promise is made **once**,
//! by whoever knows who owns the ports:
//!
//! - [`PortRange::new`] (`unsafe`): the kernel, for ports it knows, e.g. PCI
//!   configuration mechanism #1 at 0xCF8..0xCFF;
//! - [`PortRange::device_ports`] (safe): any range inside
//!   [`Hal::DEVICE_IO_PORTS`], the windows the Hal implementor promised hold
//!   only device ports (where PCI I/O BARs live).
//!
//! After that every access is safe, bounds-checked and alignment-checked,
//! like [`crate::MmioRegion`] for memory-mapped registers; drivers never
//! write `unsafe` for port I/O.

use core::marker::PhantomData;

use crate::{Hal, HalError, PortWidth};

/// The number of I/O ports on x86 (a 16-bit port number).
const PORT_SPACE: u32 = 0x1_0000;

/// An integer that is one port access wide: `u8`, `u16` or `u32`.
pub trait PortValue: Copy + sealed::Sealed {
    /// The access width.
    const WIDTH: PortWidth;
    /// Width in bytes (also the alignment an access needs).
    const BYTES: usize;
    /// Truncates the zero-extended value a port read returns.
    fn from_port(value: u32) -> Self;
    /// Zero-extends for a port write.
    fn to_port(self) -> u32;
}

mod sealed {
    /// Keeps [`super::PortValue`] closed to `u8`, `u16` and `u32`.
    pub trait Sealed {}
}

macro_rules! port_value {
    ($($t:ty => $width:ident),*) => {$(
        impl sealed::Sealed for $t {}
        impl PortValue for $t {
            const WIDTH: PortWidth = PortWidth::$width;
            const BYTES: usize = core::mem::size_of::<$t>();
            fn from_port(value: u32) -> Self { value as $t }
            fn to_port(self) -> u32 { u32::from(self) }
        }
    )*};
}
port_value!(u8 => Byte, u16 => Word, u32 => Dword);

/// Ports `base..base+len`, vouched for as belonging to devices this code
/// drives. Cloning it (or taking a [`PortRange::subrange`]) hands on that
/// ownership; nothing outside the range can be reached through it.
pub struct PortRange<H: Hal> {
    base: u16,
    len: u16,
    _hal: PhantomData<fn() -> H>,
}

impl<H: Hal> Clone for PortRange<H> {
    fn clone(&self) -> Self {
        Self {
            base: self.base,
            len: self.len,
            _hal: PhantomData,
        }
    }
}

impl<H: Hal> PartialEq for PortRange<H> {
    fn eq(&self, other: &Self) -> bool {
        self.base == other.base && self.len == other.len
    }
}

impl<H: Hal> Eq for PortRange<H> {}

impl<H: Hal> core::fmt::Debug for PortRange<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Ports({:#x}+{:#x})", self.base, self.len)
    }
}

impl<H: Hal> PortRange<H> {
    /// Ports `base..base+len`. `InvalidArgument` if the range is empty or
    /// runs past port 0xFFFF.
    ///
    /// # Safety
    /// The caller owns the devices behind these ports: nothing else accesses
    /// them while this range (or a clone or subrange of it) is used, and the
    /// safe code it hands the range to may program those devices (the trust
    /// the kernel gives a driver for the registers of the device it drives;
    /// e.g. PCI configuration mechanism #1 to `PortIoConfig`).
    pub unsafe fn new(base: u16, len: u16) -> Result<Self, HalError> {
        if len == 0 || u32::from(base) + u32::from(len) > PORT_SPACE {
            return Err(HalError::InvalidArgument);
        }
        Ok(Self {
            base,
            len,
            _hal: PhantomData,
        })
    }

    /// Ports `base..base+len` of a device (a PCI I/O BAR): safe, because the
    /// range must lie inside one window of [`Hal::DEVICE_IO_PORTS`], which
    /// the Hal implementor promised holds nothing but device ports.
    /// `InvalidArgument` for an empty range or one outside those windows.
    pub fn device_ports(base: u64, len: u64) -> Result<Self, HalError> {
        let end = base.checked_add(len).ok_or(HalError::InvalidArgument)?;
        let inside = |window: &core::ops::Range<u32>| {
            base >= u64::from(window.start) && end <= u64::from(window.end)
        };
        if len == 0 || !H::DEVICE_IO_PORTS.iter().any(inside) {
            return Err(HalError::InvalidArgument);
        }
        let (Ok(base), Ok(len)) = (u16::try_from(base), u16::try_from(len)) else {
            return Err(HalError::InvalidArgument);
        };
        // SAFETY: the range lies inside a `H::DEVICE_IO_PORTS` window
        // (checked), which the `unsafe impl Hal` promises holds only the
        // register blocks of devices the drivers drive (PCI I/O BARs): the
        // same access a driver gets to a memory BAR through `MmioRegion`.
        unsafe { Self::new(base, len) }
    }

    /// The first port.
    pub fn base(&self) -> u16 {
        self.base
    }

    /// Number of ports.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// `true` for an empty [`PortRange::subrange`].
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ports `offset..offset+len` of this range, or `None` if they do not fit.
    pub fn subrange(&self, offset: usize, len: usize) -> Option<Self> {
        let end = offset.checked_add(len)?;
        if end > self.len() {
            return None;
        }
        Some(Self {
            base: self.base.checked_add(u16::try_from(offset).ok()?)?,
            len: u16::try_from(len).ok()?,
            _hal: PhantomData,
        })
    }

    /// The port number of a `bytes`-wide access at `offset`, if it lies
    /// inside the range and is aligned to its width.
    fn port(&self, offset: usize, bytes: usize) -> Option<u16> {
        let end = offset.checked_add(bytes)?;
        if end > self.len() || !offset.is_multiple_of(bytes) {
            return None;
        }
        self.base.checked_add(u16::try_from(offset).ok()?)
    }

    /// Reads the port at `offset`. `InvalidArgument` if it is outside the
    /// range or misaligned for `T`; the Hal's error if it cannot reach it.
    pub fn read<T: PortValue>(&self, offset: usize) -> Result<T, HalError> {
        let port = self
            .port(offset, T::BYTES)
            .ok_or(HalError::InvalidArgument)?;
        // SAFETY: the port lies inside this range (checked), whose creator
        // promised it belongs to devices we own (see `new`/`device_ports`).
        let value = unsafe { H::port_read(port, T::WIDTH) }?;
        Ok(T::from_port(value))
    }

    /// Writes the port at `offset`; errors as for [`PortRange::read`].
    pub fn write<T: PortValue>(&self, offset: usize, value: T) -> Result<(), HalError> {
        let port = self
            .port(offset, T::BYTES)
            .ok_or(HalError::InvalidArgument)?;
        // SAFETY: as in `read`: the port is inside a range vouched for.
        unsafe { H::port_write(port, T::WIDTH, value.to_port()) }
    }
}
