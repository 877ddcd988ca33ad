//! The two ways to reach PCI configuration space.
//!
//! **Configuration mechanism #1** (PCI 3.0 §3.2.2.3.2): the CPU writes a
//! 32-bit address to port 0xCF8
//!
//! ```text
//!  31      30..24    23..16   15..11   10..8     7..2       1..0
//! [enable][reserved][ bus  ][device ][function][register][ 00 ]
//! ```
//!
//! and then reads or writes the data port 0xCFC..0xCFF; a byte at offset `o`
//! is at port `0xCFC + (o & 3)`. Only the first 256 bytes are reachable.
//!
//! **ECAM** (PCIe §7.2.2): configuration space is plain memory, 4 KiB per
//! function at `base + (bus << 20 | device << 15 | function << 12)`. The base
//! comes from the ACPI MCFG table (which gives the address of bus 0 even when
//! the range starts later), never a constant.

use core::cell::Cell;
use core::marker::PhantomData;
use core::ops::RangeInclusive;

use hal::{Hal, HalError, MmioRegion, PortRange};

use super::{check_access, ConfigAccess, ConfigWidth, PciAddress, PciError};

/// The address port of configuration mechanism #1.
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// The data port of configuration mechanism #1.
pub const CONFIG_DATA_PORT: u16 = 0xcfc;
/// How many ports mechanism #1 uses: 0xCF8..=0xCFF (the [`PortRange`]
/// [`PortIoConfig::new`] takes).
pub const CONFIG_PORTS: usize = 8;
/// CONFIG_ADDRESS, as an offset in that range (it is the first port).
const ADDRESS_OFFSET: usize = 0;
/// The first data port, as an offset in that range.
const DATA_OFFSET: usize = (CONFIG_DATA_PORT - CONFIG_ADDRESS_PORT) as usize;

/// Configuration mechanism #1 through I/O ports 0xCF8/0xCFC.
///
/// An access is two port operations (address, then data), which must not be
/// interleaved with another access; the type is therefore not `Sync`. Share it
/// between contexts behind a lock.
pub struct PortIoConfig<H: Hal> {
    /// Ports 0xCF8..=0xCFF, vouched for by whoever created the range.
    ports: PortRange<H>,
    _not_sync: PhantomData<Cell<()>>,
}

impl<H: Hal> core::fmt::Debug for PortIoConfig<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PortIoConfig(0xcf8/0xcfc)")
    }
}

impl<H: Hal> PortIoConfig<H> {
    /// Configuration mechanism #1 over `ports`, which must be exactly
    /// 0xCF8..=0xCFF (`InvalidArgument` otherwise). Whoever made that
    /// [`PortRange`] promised nothing else uses those ports while this value
    /// exists (an interleaved address write would redirect our data access).
    pub fn new(ports: PortRange<H>) -> Result<Self, PciError> {
        if ports.base() != CONFIG_ADDRESS_PORT || ports.len() != CONFIG_PORTS {
            return Err(PciError::Hal(HalError::InvalidArgument));
        }
        Ok(Self {
            ports,
            _not_sync: PhantomData,
        })
    }

    /// Writes CONFIG_ADDRESS: which function and which dword the next data
    /// port access reaches.
    fn select(&self, address: PciAddress, offset: u16) -> Result<(), PciError> {
        let value = 0x8000_0000
            | u32::from(address.bus) << 16
            | u32::from(address.device) << 11
            | u32::from(address.function) << 8
            | u32::from(offset & 0xfc);
        self.ports.write::<u32>(ADDRESS_OFFSET, value)?;
        Ok(())
    }

    /// Where in `ports` the data port for config byte `offset` is:
    /// 0xCFC + (offset & 3), so an access stays inside 0xCFC..=0xCFF.
    fn data_offset(offset: u16) -> usize {
        DATA_OFFSET + usize::from(offset & 3)
    }
}

impl<H: Hal> ConfigAccess for PortIoConfig<H> {
    fn segment(&self) -> u16 {
        0
    }

    fn bus_range(&self) -> RangeInclusive<u8> {
        0..=255
    }

    fn config_size(&self) -> u16 {
        256
    }

    fn read(&self, address: PciAddress, offset: u16, width: ConfigWidth) -> Result<u32, PciError> {
        check_access(self, address, offset, width)?;
        self.select(address, offset)?;
        let data = Self::data_offset(offset);
        let value = match width {
            ConfigWidth::Byte => self.ports.read::<u8>(data).map(u32::from),
            ConfigWidth::Word => self.ports.read::<u16>(data).map(u32::from),
            ConfigWidth::Dword => self.ports.read::<u32>(data),
        }?;
        Ok(value)
    }

    fn write(
        &self,
        address: PciAddress,
        offset: u16,
        width: ConfigWidth,
        value: u32,
    ) -> Result<(), PciError> {
        check_access(self, address, offset, width)?;
        self.select(address, offset)?;
        let data = Self::data_offset(offset);
        match width {
            ConfigWidth::Byte => self.ports.write::<u8>(data, value as u8),
            ConfigWidth::Word => self.ports.write::<u16>(data, value as u16),
            ConfigWidth::Dword => self.ports.write::<u32>(data, value),
        }?;
        Ok(())
    }
}

/// ECAM: memory-mapped configuration space for one segment's bus range.
pub struct EcamConfig<H: Hal> {
    region: MmioRegion<H>,
    segment: u16,
    bus_start: u8,
    bus_end: u8,
}

impl<H: Hal> core::fmt::Debug for EcamConfig<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "EcamConfig(segment {}, buses {:#04x}..={:#04x}, {:?})",
            self.segment, self.bus_start, self.bus_end, self.region
        )
    }
}

impl<H: Hal> EcamConfig<H> {
    /// Maps ECAM for `bus_start..=bus_end` of `segment`. `base` is the MCFG
    /// entry's base address, the address bus 0 would have; only the buses in
    /// the range are mapped (1 MiB each).
    pub fn new(base: u64, segment: u16, bus_start: u8, bus_end: u8) -> Result<Self, PciError> {
        if bus_end < bus_start {
            return Err(PciError::InvalidBusRange {
                start: bus_start,
                end: bus_end,
            });
        }
        let buses = usize::from(bus_end - bus_start) + 1;
        let first = base
            .checked_add(u64::from(bus_start) << 20)
            .ok_or(PciError::Hal(hal::HalError::InvalidArgument))?;
        let region = MmioRegion::map(first, buses << 20)?;
        log::debug!(
            "pci: ECAM segment {segment} buses {bus_start:#04x}..={bus_end:#04x} at {first:#x}"
        );
        Ok(Self {
            region,
            segment,
            bus_start,
            bus_end,
        })
    }

    fn offset_of(&self, address: PciAddress, offset: u16) -> usize {
        usize::from(address.bus - self.bus_start) << 20
            | usize::from(address.device) << 15
            | usize::from(address.function) << 12
            | usize::from(offset)
    }
}

impl<H: Hal> ConfigAccess for EcamConfig<H> {
    fn segment(&self) -> u16 {
        self.segment
    }

    fn bus_range(&self) -> RangeInclusive<u8> {
        self.bus_start..=self.bus_end
    }

    fn config_size(&self) -> u16 {
        4096
    }

    fn read(&self, address: PciAddress, offset: u16, width: ConfigWidth) -> Result<u32, PciError> {
        check_access(self, address, offset, width)?;
        let at = self.offset_of(address, offset);
        let value = match width {
            ConfigWidth::Byte => self.region.read::<u8>(at).map(u32::from),
            ConfigWidth::Word => self.region.read::<u16>(at).map(u32::from),
            ConfigWidth::Dword => self.region.read::<u32>(at),
        };
        // `check_access` keeps `at` inside the mapped window, so `None` cannot
        // happen; answer like an absent function if it ever does.
        Ok(value.unwrap_or(u32::MAX))
    }

    fn write(
        &self,
        address: PciAddress,
        offset: u16,
        width: ConfigWidth,
        value: u32,
    ) -> Result<(), PciError> {
        check_access(self, address, offset, width)?;
        let at = self.offset_of(address, offset);
        let _ = match width {
            ConfigWidth::Byte => self.region.write::<u8>(at, value as u8),
            ConfigWidth::Word => self.region.write::<u16>(at, value as u16),
            ConfigWidth::Dword => self.region.write::<u32>(at, value),
        };
        Ok(())
    }
}
