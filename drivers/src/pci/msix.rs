//! # MSI-X: the capability, the table, the pending bits (PCI Local Bus Specification 3.0 §6.8.2)
//!
//! With MSI-X a PCI function interrupts by *writing memory*: it sends a 32-bit
//! message (data) to an address, and the platform's interrupt controller
//! turns the write into an interrupt. On x86 the address lies in
//! 0xFEEx_xxxx and names the local APIC; the data carries the vector (Intel
//! SDM vol. 3A §11.11). Where the messages go is up to the driver, which
//! fills a table of them in one of the function's memory BARs:
//!
//! ```text
//! configuration space                         BAR <table BIR>
//! cap+0  [ id 0x11 | next ]                   table offset + 16*n:
//! cap+2  [ message control ]                    +0  message address, low 32 bits
//!          bit 15 MSI-X enable                  +4  message address, high 32 bits
//!          bit 14 function mask                 +8  message data
//!          bits 10:0 table size - 1             +12 vector control (bit 0: masked)
//! cap+4  [ table offset | BIR (2:0) ]
//! cap+8  [ PBA offset   | BIR (2:0) ]         PBA offset: one pending bit per entry
//! ```
//!
//! An entry whose mask bit is set does not send; if its event happens, the
//! function sets the entry's bit in the Pending Bit Array (PBA) and sends
//! once the entry is unmasked. The *function mask* in message control masks
//! every entry at once. So the safe way to bring MSI-X up (§6.8.3.5 and what
//! every OS does) is:
//!
//! 1. set MSI-X enable *and* function mask in message control: the function
//!    stops using its INTx pin and sends nothing yet;
//! 2. write each entry's address and data while that entry is masked, then
//!    unmask it;
//! 3. clear the function mask.
//!
//! Table and PBA accesses are aligned 32-bit accesses (§6.8.2: "software
//! must use aligned full DWORD or aligned full QWORD transactions").
//!
//! For virtio the table's entry *numbers* are what the driver writes into
//! `config_msix_vector` / `queue_msix_vector` (virtio 1.2 §4.1.4.3,
//! §4.1.5.1.2); [`crate::irq`] decides which event gets which entry.

use core::fmt;

use hal::{Hal, HalError, MmioRegion};

use super::{capability_id, ConfigAccess, PciAddress, PciError, PciFunction};

/// Message control (cap + 2): MSI-X enable.
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask (masks every entry).
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Message control: table size minus one.
pub const CONTROL_TABLE_SIZE_MASK: u16 = 0x07ff;
/// Bytes per table entry.
pub const ENTRY_BYTES: usize = 16;
/// Vector control bit 0: this entry is masked.
pub const VECTOR_CONTROL_MASKED: u32 = 1;

/// Offsets inside one table entry.
mod entry {
    pub const ADDRESS_LOW: usize = 0x0;
    pub const ADDRESS_HIGH: usize = 0x4;
    pub const DATA: usize = 0x8;
    pub const VECTOR_CONTROL: usize = 0xc;
}

/// What can go wrong with MSI-X.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixError {
    /// Configuration access or the capability walk failed.
    Pci(PciError),
    /// The table or PBA names a BAR indicator above 5.
    InvalidBir {
        /// Which structure ("table" or "PBA").
        what: &'static str,
        /// The BIR field.
        bir: u8,
    },
    /// The table or PBA lies in a BAR that does not exist or has no address.
    BarMissing {
        /// Which structure.
        what: &'static str,
        /// The BAR number.
        bar: u8,
    },
    /// The table or PBA lies in an I/O BAR (MSI-X structures are memory only).
    BarNotMemory {
        /// Which structure.
        what: &'static str,
        /// The BAR number.
        bar: u8,
    },
    /// The table or PBA does not fit in its BAR.
    OutsideBar {
        /// Which structure.
        what: &'static str,
        /// The BAR number.
        bar: u8,
        /// Offset in the BAR.
        offset: u32,
        /// Bytes needed.
        len: u64,
        /// Size of the BAR.
        bar_size: u64,
    },
    /// An entry number not below the table size.
    EntryOutOfRange {
        /// The entry asked for.
        entry: u16,
        /// Entries in the table.
        size: u16,
    },
    /// A table register could not be reached.
    RegisterAccess,
    /// Mapping the table or PBA failed.
    Map(HalError),
}

impl From<PciError> for MsixError {
    fn from(e: PciError) -> Self {
        MsixError::Pci(e)
    }
}

impl fmt::Display for MsixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MsixError::Pci(e) => write!(f, "{e}"),
            MsixError::InvalidBir { what, bir } => {
                write!(f, "MSI-X {what} in reserved BAR indicator {bir}")
            }
            MsixError::BarMissing { what, bar } => {
                write!(f, "MSI-X {what} in BAR{bar}, which has no address")
            }
            MsixError::BarNotMemory { what, bar } => {
                write!(f, "MSI-X {what} in BAR{bar}, an I/O BAR")
            }
            MsixError::OutsideBar {
                what,
                bar,
                offset,
                len,
                bar_size,
            } => write!(
                f,
                "MSI-X {what} {offset:#x}+{len:#x} lies outside BAR{bar} ({bar_size:#x} bytes)"
            ),
            MsixError::EntryOutOfRange { entry, size } => {
                write!(f, "MSI-X entry {entry} beyond the {size}-entry table")
            }
            MsixError::RegisterAccess => write!(f, "MSI-X table register out of reach"),
            MsixError::Map(e) => write!(f, "mapping the MSI-X table: {e}"),
        }
    }
}

/// A function's MSI-X capability, as read from configuration space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCapability {
    /// The function.
    pub address: PciAddress,
    /// Offset of the capability in configuration space.
    pub offset: u8,
    /// Number of table entries (1..=2048).
    pub table_size: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table in that BAR (8-byte aligned).
    pub table_offset: u32,
    /// BAR holding the pending bit array.
    pub pba_bar: u8,
    /// Offset of the PBA in that BAR.
    pub pba_offset: u32,
}

impl MsixCapability {
    /// Finds and parses the MSI-X capability of `function`; `Ok(None)` if it
    /// has none (QEMU's `vectors=0`).
    pub fn find<C: ConfigAccess + ?Sized>(
        access: &C,
        function: &PciFunction,
    ) -> Result<Option<Self>, MsixError> {
        for cap in function.capabilities(access) {
            let cap = cap?;
            if cap.id == capability_id::MSIX {
                return Self::read(access, function.address, cap.offset).map(Some);
            }
        }
        Ok(None)
    }

    /// Parses the MSI-X capability at `offset`.
    pub fn read<C: ConfigAccess + ?Sized>(
        access: &C,
        address: PciAddress,
        offset: u8,
    ) -> Result<Self, MsixError> {
        let at = u16::from(offset);
        let control = access.read16(address, at + 2)?;
        let table = access.read32(address, at + 4)?;
        let pba = access.read32(address, at + 8)?;
        let parsed = MsixCapability {
            address,
            offset,
            table_size: (control & CONTROL_TABLE_SIZE_MASK) + 1,
            table_bar: (table & 0x7) as u8,
            table_offset: table & !0x7,
            pba_bar: (pba & 0x7) as u8,
            pba_offset: pba & !0x7,
        };
        log::trace!(
            "pci: {address}: MSI-X capability at {offset:#04x}: {} entries, table in BAR{} at {:#x}, PBA in BAR{} at {:#x}, control {control:#06x}",
            parsed.table_size,
            parsed.table_bar,
            parsed.table_offset,
            parsed.pba_bar,
            parsed.pba_offset
        );
        Ok(parsed)
    }

    fn control_offset(&self) -> u16 {
        u16::from(self.offset) + 2
    }

    /// The message control register as it is now.
    pub fn control<C: ConfigAccess + ?Sized>(&self, access: &C) -> Result<u16, MsixError> {
        Ok(access.read16(self.address, self.control_offset())?)
    }

    /// Whether MSI-X is enabled (message control bit 15).
    pub fn is_enabled<C: ConfigAccess + ?Sized>(&self, access: &C) -> Result<bool, MsixError> {
        Ok(self.control(access)? & CONTROL_ENABLE != 0)
    }

    /// Whether the function mask is set (message control bit 14).
    pub fn is_function_masked<C: ConfigAccess + ?Sized>(
        &self,
        access: &C,
    ) -> Result<bool, MsixError> {
        Ok(self.control(access)? & CONTROL_FUNCTION_MASK != 0)
    }

    /// Sets or clears the enable and function-mask bits, keeping the others.
    fn update_control<C: ConfigAccess + ?Sized>(
        &self,
        access: &C,
        enable: bool,
        function_mask: bool,
    ) -> Result<(), MsixError> {
        let old = self.control(access)?;
        let mut new = old & !(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        if enable {
            new |= CONTROL_ENABLE;
        }
        if function_mask {
            new |= CONTROL_FUNCTION_MASK;
        }
        if new != old {
            log::trace!(
                "pci: {}: MSI-X message control {old:#06x} -> {new:#06x} (enable {}, function mask {})",
                self.address,
                u8::from(enable),
                u8::from(function_mask)
            );
            access.write16(self.address, self.control_offset(), new)?;
        }
        Ok(())
    }

    /// Step 1 of the bring-up: MSI-X on with every entry masked by the
    /// function mask. From here the function no longer uses INTx.
    pub fn enable_masked<C: ConfigAccess + ?Sized>(&self, access: &C) -> Result<(), MsixError> {
        self.update_control(access, true, true)
    }

    /// Step 3: clears the function mask; unmasked entries may now send.
    pub fn unmask_function<C: ConfigAccess + ?Sized>(&self, access: &C) -> Result<(), MsixError> {
        self.update_control(access, true, false)
    }

    /// Switches MSI-X off again (the function falls back to INTx).
    pub fn disable<C: ConfigAccess + ?Sized>(&self, access: &C) -> Result<(), MsixError> {
        self.update_control(access, false, false)
    }

    /// Maps the table (and the PBA) through the Hal, after checking that
    /// both lie inside memory BARs of `function`.
    pub fn map_table<H: Hal>(&self, function: &PciFunction) -> Result<MsixTable<H>, MsixError> {
        let table_len = self.table_size as usize * ENTRY_BYTES;
        let table = map_in_bar::<H>(
            function,
            "table",
            self.table_bar,
            self.table_offset,
            table_len,
        )?;
        // One bit per entry, in 64-bit words.
        let pba_len = usize::from(self.table_size).div_ceil(64) * 8;
        let pba = map_in_bar::<H>(function, "PBA", self.pba_bar, self.pba_offset, pba_len)?;
        Ok(MsixTable {
            table,
            pba,
            size: self.table_size,
        })
    }
}

/// Checks that `offset..offset+len` lies inside memory BAR `bar` and maps it.
fn map_in_bar<H: Hal>(
    function: &PciFunction,
    what: &'static str,
    bar: u8,
    offset: u32,
    len: usize,
) -> Result<MmioRegion<H>, MsixError> {
    if bar > 5 {
        return Err(MsixError::InvalidBir { what, bir: bar });
    }
    let found = function
        .bar(bar)
        .ok_or(MsixError::BarMissing { what, bar })?;
    if found.is_io() {
        return Err(MsixError::BarNotMemory { what, bar });
    }
    if !found.contains(u64::from(offset), len as u64) {
        return Err(MsixError::OutsideBar {
            what,
            bar,
            offset,
            len: len as u64,
            bar_size: found.size,
        });
    }
    MmioRegion::map(found.address + u64::from(offset), len).map_err(MsixError::Map)
}

/// One table entry as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixEntry {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
    /// Vector control bit 0.
    pub masked: bool,
}

/// A mapped MSI-X table and pending bit array.
pub struct MsixTable<H: Hal> {
    table: MmioRegion<H>,
    pba: MmioRegion<H>,
    size: u16,
}

impl<H: Hal> fmt::Debug for MsixTable<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsixTable")
            .field("size", &self.size)
            .field("table", &self.table)
            .finish()
    }
}

impl<H: Hal> MsixTable<H> {
    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    fn entry_offset(&self, index: u16) -> Result<usize, MsixError> {
        if index >= self.size {
            return Err(MsixError::EntryOutOfRange {
                entry: index,
                size: self.size,
            });
        }
        Ok(usize::from(index) * ENTRY_BYTES)
    }

    fn write(&self, offset: usize, value: u32) -> Result<(), MsixError> {
        if self.table.write::<u32>(offset, value) {
            Ok(())
        } else {
            Err(MsixError::RegisterAccess)
        }
    }

    fn read(&self, offset: usize) -> Result<u32, MsixError> {
        self.table
            .read::<u32>(offset)
            .ok_or(MsixError::RegisterAccess)
    }

    /// Writes entry `index`'s message, leaving (or making) the entry masked:
    /// the function must never send half an update (§6.8.3.5: software
    /// changes an entry only while it is masked).
    pub fn program(&self, index: u16, address: u64, data: u32) -> Result<(), MsixError> {
        let base = self.entry_offset(index)?;
        self.mask(index)?;
        self.write(base + entry::ADDRESS_LOW, address as u32)?;
        self.write(base + entry::ADDRESS_HIGH, (address >> 32) as u32)?;
        self.write(base + entry::DATA, data)?;
        log::trace!("MSI-X entry {index}: address {address:#x}, data {data:#x} (masked)");
        Ok(())
    }

    /// Sets entry `index`'s mask bit.
    pub fn mask(&self, index: u16) -> Result<(), MsixError> {
        self.set_masked(index, true)
    }

    /// Clears entry `index`'s mask bit: the entry may send from now on (if
    /// the function mask is clear).
    pub fn unmask(&self, index: u16) -> Result<(), MsixError> {
        self.set_masked(index, false)
    }

    fn set_masked(&self, index: u16, masked: bool) -> Result<(), MsixError> {
        let at = self.entry_offset(index)? + entry::VECTOR_CONTROL;
        // Bits 31:1 are reserved and must be preserved.
        let control = self.read(at)?;
        let new = if masked {
            control | VECTOR_CONTROL_MASKED
        } else {
            control & !VECTOR_CONTROL_MASKED
        };
        if new != control {
            self.write(at, new)?;
        }
        Ok(())
    }

    /// Reads entry `index` back.
    pub fn entry(&self, index: u16) -> Result<MsixEntry, MsixError> {
        let base = self.entry_offset(index)?;
        let low = self.read(base + entry::ADDRESS_LOW)?;
        let high = self.read(base + entry::ADDRESS_HIGH)?;
        let data = self.read(base + entry::DATA)?;
        let control = self.read(base + entry::VECTOR_CONTROL)?;
        Ok(MsixEntry {
            address: u64::from(high) << 32 | u64::from(low),
            data,
            masked: control & VECTOR_CONTROL_MASKED != 0,
        })
    }

    /// Whether entry `index` has a message pending (its event happened while
    /// it was masked).
    pub fn is_pending(&self, index: u16) -> Result<bool, MsixError> {
        self.entry_offset(index)?;
        let word = usize::from(index / 32) * 4;
        let bits = self
            .pba
            .read::<u32>(word)
            .ok_or(MsixError::RegisterAccess)?;
        Ok(bits & (1 << (index % 32)) != 0)
    }
}
