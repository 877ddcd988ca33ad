//! # The DMAR table: where the DMA-remapping hardware (Intel VT-d) is
//!
//! Firmware lists every DMA-remapping unit in the ACPI **DMAR** table (Intel VT-d
//! specification 4.1, chapter 8 "BIOS Considerations"):
//!
//! ```text
//! 0   ACPI header (36 bytes, signature "DMAR")
//! 36  Host Address Width: the widest DMA address, minus one
//! 37  Flags (bit 0 INTR_REMAP, bit 1 X2APIC_OPT_OUT, bit 2 DMA_CTRL_PLATFORM_OPT_IN)
//! 38  10 reserved bytes
//! 48  remapping structures, each { u16 type, u16 length, ... }
//! ```
//!
//! The one structure the kernel needs is type 0, the **DRHD** (DMA Remapping Hardware Unit
//! Definition, §8.3): a unit's register block, its PCI segment, and either the flag
//! INCLUDE_PCI_ALL (it covers every device of the segment not claimed by another unit) or a
//! list of **device scopes** (§8.3.1) naming the endpoints it covers. Other structures
//! (RMRR, ATSR, RHSA, ANDD, SATC) are counted and skipped: QEMU's `intel-iommu` has none, and a
//! reserved-memory region (RMRR) would only matter to a device this kernel does not drive.
//!
//! The table is input like any other: the `acpi` crate checks the signature and checksum, and
//! [`parse`] checks every length before it reads a field, so a truncated or self-contradicting
//! table gives a clear error and the kernel runs without an IOMMU, never an out-of-bounds read.

use acpi::sdt::{SdtHeader, Signature};
use acpi::{AcpiTable, AcpiTables, PhysicalMapping};
use alloc::vec::Vec;
use spin::Once;

use super::{TableMapper, SDT_HEADER_BYTES};

/// Where the remapping structures start (after the header and the 12 fixed bytes).
const STRUCTURES_AT: usize = SDT_HEADER_BYTES + 12;
/// Remapping structure type 0: a DMA Remapping Hardware Unit Definition.
const TYPE_DRHD: u16 = 0;
/// A DRHD's fixed part: type, length, flags, size, segment, register base.
const DRHD_FIXED_BYTES: usize = 16;
/// DRHD flag bit 0: the unit covers every PCI device of its segment not listed elsewhere.
const DRHD_INCLUDE_PCI_ALL: u8 = 1;
/// Device scope type 1: a PCI endpoint device (§8.3.1).
const SCOPE_PCI_ENDPOINT: u8 = 1;
/// A device scope's fixed part: type, length, reserved, enumeration ID, start bus.
const SCOPE_FIXED_BYTES: usize = 6;

/// The DMAR's fixed part, for the `acpi` crate to find and checksum.
#[repr(C, packed)]
pub(super) struct Dmar {
    header: SdtHeader,
    host_address_width: u8,
    flags: u8,
    reserved: [u8; 10],
}

// SAFETY: `Dmar` is the DMAR's fixed layout (header, then 12 bytes), `repr(C, packed)`.
unsafe impl AcpiTable for Dmar {
    const SIGNATURE: Signature = Signature::DMAR;

    fn header(&self) -> &SdtHeader {
        &self.header
    }
}

/// A PCI endpoint named in a DRHD's device scope: bus, device, function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScopedEndpoint {
    /// Bus number.
    pub bus: u8,
    /// Device number.
    pub device: u8,
    /// Function number.
    pub function: u8,
}

/// One DMA-remapping hardware unit (a DRHD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemappingUnit {
    /// PCI segment the unit serves.
    pub segment: u16,
    /// Physical address of its 4 KiB register block.
    pub register_base: u64,
    /// Covers every device of the segment that no other unit lists.
    pub include_pci_all: bool,
    /// Endpoints listed by scope (single-hop paths only; longer paths are skipped with a log).
    pub endpoints: Vec<ScopedEndpoint>,
}

/// What the DMAR table says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmarInfo {
    /// The widest DMA address in bits (the table stores it minus one).
    pub host_address_width: u8,
    /// Table flags (bit 0: interrupt remapping supported).
    pub flags: u8,
    /// The remapping units, in table order.
    pub units: Vec<RemappingUnit>,
    /// Remapping structures of other types that were skipped.
    pub skipped_structures: usize,
}

impl DmarInfo {
    /// The unit that translates DMA from PCI function `bus:device.function` of `segment`: one that
    /// lists it by scope, else the segment's INCLUDE_PCI_ALL unit (§8.3: "the device ... is
    /// under the scope of the INCLUDE_PCI_ALL DRHD" unless another unit claims it).
    pub fn unit_for(&self, segment: u16, bus: u8, device: u8, function: u8) -> Option<usize> {
        let wanted = ScopedEndpoint {
            bus,
            device,
            function,
        };
        self.units
            .iter()
            .position(|u| u.segment == segment && u.endpoints.contains(&wanted))
            .or_else(|| {
                self.units
                    .iter()
                    .position(|u| u.segment == segment && u.include_pci_all)
            })
    }
}

static DMAR: Once<Option<DmarInfo>> = Once::new();

/// The DMAR table, if the firmware has one that parses.
pub fn dmar() -> Option<&'static DmarInfo> {
    DMAR.call_once(|| None).as_ref()
}

/// Finds, copies and parses the DMAR (called from `acpi_tables::parse`).
pub(super) fn find(tables: &AcpiTables<TableMapper>) {
    let info = match tables.find_table::<Dmar>() {
        Ok(mapping) => copy_out(&mapping).and_then(|bytes| match parse(&bytes) {
            Ok(info) => Some(info),
            Err(error) => {
                log::error!("DMAR table rejected ({error}): no DMA remapping");
                None
            }
        }),
        Err(_) => {
            log::debug!("no DMAR table: no Intel VT-d DMA remapping hardware");
            None
        }
    };
    if let Some(info) = &info {
        for unit in &info.units {
            log::info!(
                "DMAR: remapping unit at {:#x}, segment {}, {}, host address width {} bits",
                unit.register_base,
                unit.segment,
                if unit.include_pci_all {
                    alloc::format!("all PCI devices + {} listed", unit.endpoints.len())
                } else {
                    alloc::format!("{} listed device(s)", unit.endpoints.len())
                },
                info.host_address_width
            );
        }
    }
    DMAR.call_once(|| info);
}

/// The whole table as bytes (its length checked against what was mapped).
fn copy_out(mapping: &PhysicalMapping<TableMapper, Dmar>) -> Option<Vec<u8>> {
    let length = mapping.header().length as usize;
    if length < STRUCTURES_AT || length > mapping.region_length() {
        log::error!("DMAR length {length} is implausible: no DMA remapping");
        return None;
    }
    let base = mapping.virtual_start().as_ptr().cast::<u8>();
    let mut bytes = alloc::vec![0u8; length];
    for (offset, byte) in bytes.iter_mut().enumerate() {
        // SAFETY: `offset < length <= region_length`, the size the table mapper mapped.
        *byte = unsafe { base.add(offset).read_volatile() };
    }
    Some(bytes)
}

fn u8_at(bytes: &[u8], at: usize) -> Result<u8, &'static str> {
    bytes.get(at).copied().ok_or("field past the end")
}

fn u16_at(bytes: &[u8], at: usize) -> Result<u16, &'static str> {
    let field = bytes.get(at..at + 2).ok_or("field past the end")?;
    Ok(u16::from_le_bytes([field[0], field[1]]))
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, &'static str> {
    let field = bytes.get(at..at + 8).ok_or("field past the end")?;
    let mut word = [0u8; 8];
    word.copy_from_slice(field);
    Ok(u64::from_le_bytes(word))
}

/// Parses a whole DMAR table (header included). Every length is checked before use.
pub fn parse(bytes: &[u8]) -> Result<DmarInfo, &'static str> {
    if bytes.len() < STRUCTURES_AT {
        return Err("shorter than its fixed part");
    }
    let mut info = DmarInfo {
        host_address_width: u8_at(bytes, SDT_HEADER_BYTES)?.saturating_add(1),
        flags: u8_at(bytes, SDT_HEADER_BYTES + 1)?,
        units: Vec::new(),
        skipped_structures: 0,
    };
    let mut at = STRUCTURES_AT;
    while at < bytes.len() {
        let kind = u16_at(bytes, at)?;
        let length = usize::from(u16_at(bytes, at + 2)?);
        if length < 4 || at + length > bytes.len() {
            return Err("remapping structure with a bad length");
        }
        let structure = &bytes[at..at + length];
        if kind == TYPE_DRHD {
            info.units.push(parse_drhd(structure)?);
        } else {
            info.skipped_structures += 1;
        }
        at += length;
    }
    if info.units.is_empty() {
        return Err("no remapping hardware unit (DRHD)");
    }
    Ok(info)
}

/// One DRHD (`structure` is exactly its bytes).
fn parse_drhd(structure: &[u8]) -> Result<RemappingUnit, &'static str> {
    if structure.len() < DRHD_FIXED_BYTES {
        return Err("DRHD shorter than its fixed part");
    }
    let flags = u8_at(structure, 4)?;
    let register_base = u64_at(structure, 8)?;
    if register_base == 0 || !register_base.is_multiple_of(4096) {
        return Err("DRHD register base not page-aligned");
    }
    let mut unit = RemappingUnit {
        segment: u16_at(structure, 6)?,
        register_base,
        include_pci_all: flags & DRHD_INCLUDE_PCI_ALL != 0,
        endpoints: Vec::new(),
    };
    let mut at = DRHD_FIXED_BYTES;
    while at < structure.len() {
        let kind = u8_at(structure, at)?;
        let length = usize::from(u8_at(structure, at + 1)?);
        if length < SCOPE_FIXED_BYTES || at + length > structure.len() {
            return Err("device scope with a bad length");
        }
        let start_bus = u8_at(structure, at + 5)?;
        let path = &structure[at + SCOPE_FIXED_BYTES..at + length];
        if kind == SCOPE_PCI_ENDPOINT {
            if path.len() == 2 {
                unit.endpoints.push(ScopedEndpoint {
                    bus: start_bus,
                    device: path[0],
                    function: path[1],
                });
            } else {
                // A path through bridges would need the bus numbers behind them.
                log::warn!(
                    "DMAR: endpoint scope behind a bridge ({} hops) skipped",
                    path.len() / 2
                );
            }
        }
        at += length;
    }
    Ok(unit)
}

#[cfg(feature = "selftest")]
pub mod selftests {
    //! The DMAR parser against hand-built tables, good and hostile.

    use super::*;
    use alloc::string::String;

    /// A DMAR with one DRHD at `0xfed90000`, INCLUDE_PCI_ALL, and one endpoint scope 0:3.0.
    fn sample() -> Vec<u8> {
        let mut table = alloc::vec![0u8; STRUCTURES_AT];
        table[0..4].copy_from_slice(b"DMAR");
        table[SDT_HEADER_BYTES] = 38; // 39-bit host address width
        let mut drhd = alloc::vec![0u8; DRHD_FIXED_BYTES];
        drhd[0..2].copy_from_slice(&TYPE_DRHD.to_le_bytes());
        drhd[4] = DRHD_INCLUDE_PCI_ALL;
        drhd[8..16].copy_from_slice(&0xfed9_0000u64.to_le_bytes());
        drhd.extend_from_slice(&[SCOPE_PCI_ENDPOINT, 8, 0, 0, 0, 0, 3, 0]);
        let len = drhd.len() as u16;
        drhd[2..4].copy_from_slice(&len.to_le_bytes());
        table.extend_from_slice(&drhd);
        table
    }

    /// Parses the sample, then breaks each length in turn and expects a clean error.
    pub fn test_parse() -> Result<(), String> {
        let info = parse(&sample()).map_err(|e| alloc::format!("sample rejected: {e}"))?;
        if info.host_address_width != 39 || info.units.len() != 1 {
            return Err(alloc::format!("sample parsed as {info:?}"));
        }
        let unit = &info.units[0];
        if unit.register_base != 0xfed9_0000 || !unit.include_pci_all || unit.endpoints.len() != 1 {
            return Err(alloc::format!("sample unit parsed as {unit:?}"));
        }
        if info.unit_for(0, 0, 7, 0) != Some(0) || info.unit_for(1, 0, 7, 0).is_some() {
            return Err("unit_for picks the wrong unit".into());
        }
        let mut truncated = sample();
        truncated.truncate(truncated.len() - 3);
        let mut long_structure = sample();
        long_structure[STRUCTURES_AT + 2] = 0xff;
        let mut zero_structure = sample();
        zero_structure[STRUCTURES_AT + 2] = 0;
        zero_structure[STRUCTURES_AT + 3] = 0;
        let mut long_scope = sample();
        long_scope[STRUCTURES_AT + DRHD_FIXED_BYTES + 1] = 200;
        let mut unaligned = sample();
        unaligned[STRUCTURES_AT + 8] = 0x10;
        for (name, table) in [
            ("truncated", truncated),
            ("structure past the end", long_structure),
            ("zero-length structure", zero_structure),
            ("scope past its DRHD", long_scope),
            ("unaligned register base", unaligned),
            ("header only", sample()[..20].to_vec()),
        ] {
            if parse(&table).is_ok() {
                return Err(alloc::format!("{name}: accepted"));
            }
        }
        Ok(())
    }
}
