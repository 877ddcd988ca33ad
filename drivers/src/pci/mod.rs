//! # PCI: configuration space, enumeration, BARs, capabilities
//!
//! (PCI Local Bus Specification 3.0 §6 "Configuration Space", PCI-to-PCI
//! Bridge Architecture Specification 1.2 §3.2, PCI Express Base Specification
//! §7.2 "PCI Express Enhanced Configuration Access Mechanism".)
//!
//! Every PCI function has a 256-byte (PCIe: 4096-byte) *configuration space*:
//! its identity (vendor, device, class), a command register that switches its
//! address decoding and bus mastering on, up to six *Base Address Registers*
//! (BARs) that place its registers in memory or I/O space, and a linked list of
//! *capabilities*, where virtio keeps its structures (§4.1.4 of the virtio spec).
//!
//! The CPU reaches configuration space in one of two ways, both behind the
//! [`ConfigAccess`] trait:
//!
//! - [`PortIoConfig`]: **configuration mechanism #1**: write the function's
//!   address to port 0xCF8, then read or write port 0xCFC. First 256 bytes only.
//!   What the `pc` machine offers.
//! - [`EcamConfig`]: the **Enhanced Configuration Access Mechanism**: all of
//!   configuration space is mapped into memory, 4 KiB per function, at a base
//!   address the firmware publishes in the ACPI MCFG table. What `q35` offers.
//!
//! On top of that:
//!
//! - [`enumerate`] walks every bus reachable from bus 0 through PCI-to-PCI
//!   bridges, numbering bridges the firmware left unconfigured (qboot does not
//!   number them), sizes every BAR, assigns the BARs the firmware left at 0 from
//!   [`BarWindows`] the kernel knows are free (programming bridge windows on the
//!   way), and turns on address decoding;
//! - [`capabilities`] walks a function's capability list, bounded, so a
//!   looping list from a hostile device ends in an error instead of a hang.

mod bar;
mod capability;
mod config;
mod enumerate;
pub mod msix;

pub use bar::{Bar, BarError, BarKind, BarOrigin, BarWindows};
pub use capability::{capabilities, capability_list, Capabilities, Capability};
pub use config::{EcamConfig, PortIoConfig, CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT, CONFIG_PORTS};
pub use enumerate::{enumerate, BridgeInfo, HeaderKind, PciFunction};

use core::fmt;
use core::ops::RangeInclusive;

use hal::HalError;

/// The PCI vendor id of virtio devices (Red Hat / Qumranet).
pub const VIRTIO_VENDOR_ID: u16 = 0x1af4;

/// Offsets of configuration-space registers (PCI 3.0 §6.1, bridge spec §3.2).
pub mod regs {
    /// Vendor id (u16); 0xFFFF means "no function here".
    pub const VENDOR_ID: u16 = 0x00;
    /// Device id (u16).
    pub const DEVICE_ID: u16 = 0x02;
    /// Command register (u16); see [`super::Command`].
    pub const COMMAND: u16 = 0x04;
    /// Status register (u16); bit 4 says a capability list exists.
    pub const STATUS: u16 = 0x06;
    /// Revision id (u8), then prog-if, subclass, class.
    pub const REVISION_ID: u16 = 0x08;
    /// Header type (u8): bits 0-6 the layout, bit 7 "multi-function device".
    pub const HEADER_TYPE: u16 = 0x0e;
    /// First Base Address Register; BAR n is at `BAR0 + 4 * n`.
    pub const BAR0: u16 = 0x10;
    /// Type 0: subsystem vendor id (u16).
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
    /// Type 0: subsystem id (u16); the virtio device type for transitional devices.
    pub const SUBSYSTEM_ID: u16 = 0x2e;
    /// Pointer to the first capability (u8).
    pub const CAPABILITIES_POINTER: u16 = 0x34;
    /// Interrupt line (u8), as the firmware routed it.
    pub const INTERRUPT_LINE: u16 = 0x3c;
    /// Interrupt pin (u8): 0 none, 1..4 INTA..INTD.
    pub const INTERRUPT_PIN: u16 = 0x3d;

    /// Type 1: the bus the bridge sits on (u8).
    pub const PRIMARY_BUS: u16 = 0x18;
    /// Type 1: the bus right behind the bridge (u8).
    pub const SECONDARY_BUS: u16 = 0x19;
    /// Type 1: the highest bus number behind the bridge (u8).
    pub const SUBORDINATE_BUS: u16 = 0x1a;
    /// Type 1: I/O window base, bits 15:12 of the address in bits 7:4 (u8).
    pub const IO_BASE: u16 = 0x1c;
    /// Type 1: I/O window limit (u8), same encoding, inclusive up to xFFF.
    pub const IO_LIMIT: u16 = 0x1d;
    /// Type 1: memory window base, bits 31:20 of the address in bits 15:4 (u16).
    pub const MEMORY_BASE: u16 = 0x20;
    /// Type 1: memory window limit (u16), inclusive up to xFFFFF.
    pub const MEMORY_LIMIT: u16 = 0x22;
    /// Type 1: prefetchable memory window base (u16), like MEMORY_BASE.
    pub const PREFETCH_BASE: u16 = 0x24;
    /// Type 1: prefetchable memory window limit (u16).
    pub const PREFETCH_LIMIT: u16 = 0x26;
    /// Type 1: bits 63:32 of the prefetchable base (u32).
    pub const PREFETCH_BASE_UPPER: u16 = 0x28;
    /// Type 1: bits 63:32 of the prefetchable limit (u32).
    pub const PREFETCH_LIMIT_UPPER: u16 = 0x2c;
    /// Type 1: bits 31:16 of the I/O base (u16).
    pub const IO_BASE_UPPER: u16 = 0x30;
    /// Type 1: bits 31:16 of the I/O limit (u16).
    pub const IO_LIMIT_UPPER: u16 = 0x32;
}

/// Capability ids (PCI 3.0 appendix H).
pub mod capability_id {
    /// Power management.
    pub const POWER_MANAGEMENT: u8 = 0x01;
    /// MSI.
    pub const MSI: u8 = 0x05;
    /// Vendor specific: what virtio uses for its structures.
    pub const VENDOR_SPECIFIC: u8 = 0x09;
    /// PCI Express.
    pub const PCI_EXPRESS: u8 = 0x10;
    /// MSI-X.
    pub const MSIX: u8 = 0x11;
}

bitflags::bitflags! {
    /// The command register (PCI 3.0 §6.2.2).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Command: u16 {
        /// Respond to I/O space accesses inside the I/O BARs.
        const IO_SPACE = 1 << 0;
        /// Respond to memory accesses inside the memory BARs.
        const MEMORY_SPACE = 1 << 1;
        /// May start DMA (a virtio device reads its rings this way).
        const BUS_MASTER = 1 << 2;
        /// Disable legacy INTx (use with MSI/MSI-X).
        const INTERRUPT_DISABLE = 1 << 10;
    }
}

/// A PCI function's address: segment (ECAM group), bus, device, function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// PCI segment group (0 unless the MCFG table lists several).
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0-31.
    pub device: u8,
    /// Function number, 0-7.
    pub function: u8,
}

impl PciAddress {
    /// Segment 0 function `bus:device.function`.
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        Self {
            segment: 0,
            bus,
            device,
            function,
        }
    }

    fn is_valid(&self) -> bool {
        self.device < 32 && self.function < 8
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

/// Width of a configuration-space access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigWidth {
    /// 8 bits.
    Byte,
    /// 16 bits, 2-aligned.
    Word,
    /// 32 bits, 4-aligned.
    Dword,
}

impl ConfigWidth {
    /// Width in bytes.
    pub fn bytes(self) -> u16 {
        match self {
            ConfigWidth::Byte => 1,
            ConfigWidth::Word => 2,
            ConfigWidth::Dword => 4,
        }
    }
}

/// What can go wrong with PCI configuration access, enumeration or capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciError {
    /// Device number above 31 or function above 7.
    InvalidAddress(PciAddress),
    /// A bus this access method cannot reach (outside the ECAM bus range).
    BusOutOfRange {
        /// The bus asked for.
        bus: u8,
    },
    /// An offset beyond the configuration space (256 bytes for mechanism #1, 4096 for ECAM).
    OffsetOutOfRange {
        /// The offset asked for.
        offset: u16,
        /// The size of the configuration space.
        size: u16,
    },
    /// An access not aligned to its width.
    Misaligned {
        /// The offset asked for.
        offset: u16,
        /// Width in bytes.
        width: u16,
    },
    /// ECAM bus range with the end before the start.
    InvalidBusRange {
        /// First bus.
        start: u8,
        /// Last bus.
        end: u8,
    },
    /// The machine refused the access (port I/O unsupported, mapping failed).
    Hal(HalError),
    /// The capability list came back to a capability already seen.
    CapabilityLoop {
        /// The function.
        address: PciAddress,
        /// The offset seen twice.
        offset: u8,
    },
    /// A capability pointer into the standard header (below 0x40) or past its end.
    CapabilityPointerInvalid {
        /// The function.
        address: PciAddress,
        /// The bad pointer.
        pointer: u8,
    },
}

impl From<HalError> for PciError {
    fn from(e: HalError) -> Self {
        PciError::Hal(e)
    }
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PciError::InvalidAddress(a) => write!(f, "invalid PCI address {a}"),
            PciError::BusOutOfRange { bus } => write!(f, "bus {bus:#04x} not reachable"),
            PciError::OffsetOutOfRange { offset, size } => write!(
                f,
                "config offset {offset:#x} outside the {size}-byte configuration space"
            ),
            PciError::Misaligned { offset, width } => {
                write!(
                    f,
                    "config access of {width} bytes at unaligned offset {offset:#x}"
                )
            }
            PciError::InvalidBusRange { start, end } => {
                write!(f, "invalid ECAM bus range {start:#04x}..={end:#04x}")
            }
            PciError::Hal(e) => write!(f, "machine: {e}"),
            PciError::CapabilityLoop { address, offset } => write!(
                f,
                "{address}: capability list loops back to offset {offset:#04x}"
            ),
            PciError::CapabilityPointerInvalid { address, pointer } => write!(
                f,
                "{address}: capability pointer {pointer:#04x} outside the capability area"
            ),
        }
    }
}

/// A way to reach PCI configuration space.
///
/// Implementations check the address, the offset and the alignment and return
/// an error instead of touching hardware they were not asked about; an absent
/// function reads as all ones, as on real hardware.
pub trait ConfigAccess {
    /// The PCI segment group this access method serves.
    fn segment(&self) -> u16;
    /// The buses it can reach.
    fn bus_range(&self) -> RangeInclusive<u8>;
    /// Bytes of configuration space per function (256 or 4096).
    fn config_size(&self) -> u16;
    /// One read of `width` at `offset`, zero-extended.
    fn read(&self, address: PciAddress, offset: u16, width: ConfigWidth) -> Result<u32, PciError>;
    /// One write of `width` at `offset` (low bits of `value`).
    fn write(
        &self,
        address: PciAddress,
        offset: u16,
        width: ConfigWidth,
        value: u32,
    ) -> Result<(), PciError>;

    /// Reads a byte.
    fn read8(&self, address: PciAddress, offset: u16) -> Result<u8, PciError> {
        Ok(self.read(address, offset, ConfigWidth::Byte)? as u8)
    }
    /// Reads a 16-bit register.
    fn read16(&self, address: PciAddress, offset: u16) -> Result<u16, PciError> {
        Ok(self.read(address, offset, ConfigWidth::Word)? as u16)
    }
    /// Reads a 32-bit register.
    fn read32(&self, address: PciAddress, offset: u16) -> Result<u32, PciError> {
        self.read(address, offset, ConfigWidth::Dword)
    }
    /// Writes a byte.
    fn write8(&self, address: PciAddress, offset: u16, value: u8) -> Result<(), PciError> {
        self.write(address, offset, ConfigWidth::Byte, u32::from(value))
    }
    /// Writes a 16-bit register.
    fn write16(&self, address: PciAddress, offset: u16, value: u16) -> Result<(), PciError> {
        self.write(address, offset, ConfigWidth::Word, u32::from(value))
    }
    /// Writes a 32-bit register.
    fn write32(&self, address: PciAddress, offset: u16, value: u32) -> Result<(), PciError> {
        self.write(address, offset, ConfigWidth::Dword, value)
    }
}

/// The checks every [`ConfigAccess`] makes before an access.
fn check_access<C: ConfigAccess + ?Sized>(
    access: &C,
    address: PciAddress,
    offset: u16,
    width: ConfigWidth,
) -> Result<(), PciError> {
    if !address.is_valid() {
        return Err(PciError::InvalidAddress(address));
    }
    if !access.bus_range().contains(&address.bus) {
        return Err(PciError::BusOutOfRange { bus: address.bus });
    }
    let size = access.config_size();
    if u32::from(offset) + u32::from(width.bytes()) > u32::from(size) {
        return Err(PciError::OffsetOutOfRange { offset, size });
    }
    if !offset.is_multiple_of(width.bytes()) {
        return Err(PciError::Misaligned {
            offset,
            width: width.bytes(),
        });
    }
    Ok(())
}

/// Sets bits in a function's command register (read-modify-write of the
/// 16-bit register only, so the status register's write-1-to-clear bits next
/// to it are not touched).
pub fn enable_command_bits<C: ConfigAccess + ?Sized>(
    access: &C,
    address: PciAddress,
    bits: Command,
) -> Result<Command, PciError> {
    let current = Command::from_bits_retain(access.read16(address, regs::COMMAND)?);
    let wanted = current | bits;
    if wanted != current {
        log::trace!(
            "pci: {address}: command {:#06x} -> {:#06x}",
            current.bits(),
            wanted.bits()
        );
        access.write16(address, regs::COMMAND, wanted.bits())?;
    }
    Ok(wanted)
}
