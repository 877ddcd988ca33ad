//! # ACPI static tables: what the firmware says about interrupts and PCI
//!
//! Firmware describes the machine in ACPI tables (ACPI 6.5, chapter 5 "ACPI Software Programming
//! Model"). The kernel reads two of them here, once, right after the heap exists (and the DMAR,
//! where the DMA-remapping hardware is, in `acpi_tables/dmar.rs`):
//!
//! - **MADT** ("APIC", ACPI 6.5 §5.2.12): where the local APIC and every I/O APIC live, which
//!   range of global system interrupts (GSIs) each I/O APIC serves, how the 16 legacy ISA IRQs
//!   land on GSIs ("interrupt source overrides": on almost every PC the timer's IRQ 0 arrives at
//!   GSI 2), and which inputs carry NMIs.
//! - **MCFG** (PCI Firmware Specification 3.3, §4.1.2): where PCI Express configuration space is
//!   memory-mapped (ECAM), per PCI segment and bus range.
//!
//! ## How the tables are found
//!
//! The PVH start info hands over the physical address of the **RSDP** (Root System Description
//! Pointer, §5.2.5). It points to the **XSDT** (or, for ACPI 1.0, the RSDT), a list of physical
//! addresses of the other tables, each starting with a common 36-byte header (§5.2.6) whose bytes,
//! checksum included, add up to zero. The `acpi` crate (5.2, used without its nightly-only
//! `alloc` features) walks that list, validates signatures and checksums and gives typed views of
//! the MADT entries and MCFG allocations. Everything the kernel needs is copied into plain structs
//! ([`Platform`], [`Ecam`]) kept in a [`spin::Once`], so nothing refers to table memory later.
//!
//! ## Mapping table memory
//!
//! Tables live in RAM the firmware reserved (e820 types 2, 3 or 4), which the kernel's own page
//! tables need not cover, so the [`acpi::AcpiHandler`] maps every region the crate asks for
//! through [`crate::memory::map_mmio`]. That mapping is uncached, which is slow but harmless for a
//! one-time parse of a few kilobytes, and permanent (the kernel has no unmap; table mappings are
//! few and small).
//!
//! ## Tables are input, not truth
//!
//! The crate trusts lengths it reads from the tables, so this module checks the ones it would
//! otherwise follow blindly before handing anything over: the RSDP and root-table lengths, the
//! minimum size of the MADT and MCFG, and the chain of MADT entries (every entry long enough for
//! the structure the crate will overlay on it, and none running past the end of the table). A
//! request to map an absurdly large or unmappable region is answered with an all-zero stand-in,
//! whose signature matches no table, so the crate skips it. Whatever goes wrong, the result is a
//! clear log line and the documented defaults below, never a panic:
//!
//! - one I/O APIC at `0xFEC0_0000` serving GSIs from 0, the local APIC at `0xFEE0_0000`;
//! - ISA IRQ *n* is GSI *n*, edge-triggered, active high (no overrides);
//! - no ECAM (PCI falls back to configuration mechanism #1, ports 0xCF8/0xCFC).
//!
//! These are what QEMU's `microvm` machine with `acpi=off` actually has.

use crate::memory::map_mmio;
use acpi::madt::{Madt, MadtEntry};
use acpi::mcfg::Mcfg;
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;
use spin::Once;

mod dmar;
#[cfg(feature = "selftest")]
pub use dmar::selftests as dmar_selftests;
pub use dmar::{dmar, DmarInfo};
#[cfg(feature = "selftest")]
mod selftests;
#[cfg(feature = "selftest")]
pub use selftests::selftests;

/// Where the xAPIC registers live unless the firmware says otherwise (Intel SDM vol. 3A §11.4.1).
pub const DEFAULT_LOCAL_APIC_ADDRESS: u64 = 0xFEE0_0000;
/// Where the first I/O APIC lives on PC-compatible machines (82093AA datasheet §3.0).
pub const DEFAULT_IO_APIC_ADDRESS: u64 = 0xFEC0_0000;
/// The number of legacy ISA interrupt lines.
pub const ISA_IRQ_COUNT: u8 = 16;

/// Largest table this module agrees to map. Real MADTs and MCFGs are a few kilobytes; anything
/// above this is a corrupt length field, not a table.
const MAX_TABLE_BYTES: usize = 256 * 1024;
/// Size of the common table header (ACPI 6.5 §5.2.6).
const SDT_HEADER_BYTES: usize = 36;
/// Size of an ACPI 2.0+ RSDP (§5.2.5.3); ACPI 1.0 RSDPs are the first 20 bytes of it.
const RSDP_V2_BYTES: usize = 36;
const RSDP_V1_BYTES: usize = 20;
/// The MADT and the MCFG both have 8 bytes of fixed fields after the header.
const MADT_FIXED_BYTES: usize = SDT_HEADER_BYTES + 8;
const MCFG_FIXED_BYTES: usize = SDT_HEADER_BYTES + 8;

/// Polarity of an interrupt input: which electrical level means "asserted".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polarity {
    ActiveHigh,
    ActiveLow,
}

/// Whether an interrupt input reacts to an edge or to a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Edge,
    Level,
}

/// One PCI Express ECAM window from the MCFG table.
///
/// `base` is the address of bus 0 of the segment (PCI Firmware Specification 3.3, table 4-3),
/// even when `bus_start` is not 0: the configuration space of bus `b`, device `d`, function `f`
/// starts at `base + (b << 20 | d << 15 | f << 12)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ecam {
    pub base: u64,
    pub segment: u16,
    pub bus_start: u8,
    pub bus_end: u8,
}

/// A processor's local APIC, as the MADT lists it (entry types 0 and 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Processor {
    /// The ACPI processor UID that NMI entries refer to.
    pub uid: u32,
    /// The local APIC ID (what the APIC ID register reads, and what IPIs and MSIs address).
    pub apic_id: u32,
    /// Usable now (flag bit 0); otherwise maybe "online capable" for hot-plug.
    pub enabled: bool,
}

/// One I/O APIC (MADT entry type 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoApicInfo {
    /// The I/O APIC ID (bits 27:24 of its ID register should agree).
    pub id: u8,
    /// Physical address of its register window (IOREGSEL at +0x00, IOWIN at +0x10).
    pub address: u64,
    /// The GSI its redirection entry 0 serves; entry `n` serves GSI `gsi_base + n`.
    pub gsi_base: u32,
}

/// How one ISA IRQ reaches the I/O APICs (MADT entry type 2, or the identity default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsaRoute {
    pub isa_irq: u8,
    pub gsi: u32,
    pub polarity: Polarity,
    pub trigger: Trigger,
}

/// A GSI wired to deliver an NMI instead of a vectored interrupt (MADT entry type 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NmiSource {
    pub gsi: u32,
    pub polarity: Polarity,
    pub trigger: Trigger,
}

/// A local APIC input (LINT0 or LINT1) that carries NMIs (MADT entry types 4 and 0xA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalApicNmi {
    /// The ACPI processor UID it applies to, or `None` for "all processors".
    pub processor_uid: Option<u32>,
    /// 0 for LINT0, 1 for LINT1.
    pub lint: u8,
    pub polarity: Polarity,
    pub trigger: Trigger,
}

/// Why the interrupt description is the built-in default rather than the MADT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultsReason {
    /// The boot protocol gave no RSDP (e.g. `microvm` with `acpi=off`).
    NoRsdp,
    /// The RSDP failed its signature, checksum or length check.
    InvalidRsdp,
    /// The XSDT/RSDT failed its signature, length or checksum check.
    InvalidRootTable,
    /// The root table lists no valid MADT.
    MadtMissing,
    /// The MADT is there but its entries are malformed or describe no I/O APIC.
    MadtMalformed,
    /// Someone asked before [`init`] ran.
    NotInitialized,
}

/// Where the interrupt description in [`Platform`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptSource {
    /// Parsed from a valid MADT.
    Madt,
    /// The built-in defaults, for the given reason.
    Defaults(DefaultsReason),
}

/// Everything the kernel learnt from the ACPI tables (or assumed without them).
#[derive(Debug, Clone)]
pub struct Platform {
    /// Whether the interrupt fields below come from the MADT or are defaults.
    pub interrupt_source: InterruptSource,
    /// Whether an RSDP was given and validated (the MCFG can exist even if the MADT is bad).
    pub acpi_present: bool,
    /// The ACPI revision from the RSDP (0 for ACPI 1.0, 2 for 2.0 and later), if present.
    pub acpi_revision: Option<u8>,
    /// The physical address of the local APIC registers (entry type 5 overrides the header).
    pub local_apic_address: u64,
    /// MADT flag PCAT_COMPAT: a dual 8259 PIC is present and must be masked.
    pub has_8259: bool,
    /// Local APICs, in MADT order (the boot processor is usually first).
    pub processors: Vec<Processor>,
    /// I/O APICs, in MADT order.
    pub io_apics: Vec<IoApicInfo>,
    /// Interrupt source overrides for ISA IRQs, in MADT order.
    pub isa_overrides: Vec<IsaRoute>,
    /// GSIs that deliver NMIs.
    pub nmi_sources: Vec<NmiSource>,
    /// Local APIC inputs that deliver NMIs.
    pub local_apic_nmis: Vec<LocalApicNmi>,
    /// ECAM windows from the MCFG (empty if there is no valid MCFG).
    pub ecam: Vec<Ecam>,
}

impl Platform {
    /// The documented defaults (see the module docs), for `reason`.
    fn defaults(reason: DefaultsReason) -> Self {
        Platform {
            interrupt_source: InterruptSource::Defaults(reason),
            acpi_present: false,
            acpi_revision: None,
            local_apic_address: DEFAULT_LOCAL_APIC_ADDRESS,
            has_8259: true,
            processors: Vec::new(),
            io_apics: alloc::vec![IoApicInfo {
                id: 0,
                address: DEFAULT_IO_APIC_ADDRESS,
                gsi_base: 0,
            }],
            isa_overrides: Vec::new(),
            nmi_sources: Vec::new(),
            local_apic_nmis: Vec::new(),
            ecam: Vec::new(),
        }
    }

    /// How ISA IRQ `isa_irq` arrives at the I/O APICs: the MADT override if there is one,
    /// otherwise the same-numbered GSI, edge-triggered, active high (ISA bus conventions).
    /// Returns `None` for `isa_irq >= 16`.
    pub fn isa_route(&self, isa_irq: u8) -> Option<IsaRoute> {
        if isa_irq >= ISA_IRQ_COUNT {
            return None;
        }
        let route = self
            .isa_overrides
            .iter()
            .find(|o| o.isa_irq == isa_irq)
            .copied();
        Some(route.unwrap_or(IsaRoute {
            isa_irq,
            gsi: u32::from(isa_irq),
            polarity: Polarity::ActiveHigh,
            trigger: Trigger::Edge,
        }))
    }
}

static PLATFORM: Once<Platform> = Once::new();

/// What the tables said, or the defaults if [`init`] has not run (or found nothing usable).
pub fn platform() -> &'static Platform {
    PLATFORM.call_once(|| Platform::defaults(DefaultsReason::NotInitialized))
}

/// The ECAM window of PCI segment 0 that starts the lowest bus (the one the PCI bus walk uses),
/// from the MCFG. `None` on machines without PCI Express (QEMU `pc`, `microvm`).
pub fn ecam() -> Option<Ecam> {
    platform()
        .ecam
        .iter()
        .filter(|e| e.segment == 0)
        .min_by_key(|e| e.bus_start)
        .copied()
}

/// Parses the ACPI tables reachable from `rsdp` and logs what it found. Call once, after
/// `memory::init` (it allocates and maps). Never panics on table contents: anything unusable
/// leaves the documented defaults in place, with a log line saying why.
pub fn init(rsdp: Option<u64>) {
    let platform = match rsdp {
        None => {
            log::info!("no RSDP from the boot loader (ACPI off?): using default APIC layout");
            Platform::defaults(DefaultsReason::NoRsdp)
        }
        Some(address) => parse(address),
    };
    log_summary(&platform);
    let stored = PLATFORM.call_once(|| platform);
    if let InterruptSource::Defaults(DefaultsReason::NotInitialized) = stored.interrupt_source {
        log::warn!("acpi_tables::init ran after someone already read the defaults; keeping them");
    }
}

/// Reads every table we need, starting at the RSDP at physical address `rsdp`.
fn parse(rsdp: u64) -> Platform {
    let revision = match check_rsdp(rsdp) {
        Ok(revision) => revision,
        Err(error) => {
            log::error!("RSDP at {rsdp:#x} is unusable ({error}): using default APIC layout");
            return Platform::defaults(DefaultsReason::InvalidRsdp);
        }
    };
    let Ok(rsdp_address) = usize::try_from(rsdp) else {
        return Platform::defaults(DefaultsReason::InvalidRsdp);
    };
    // SAFETY: `check_rsdp` validated the RSDP's signature, checksums and length, and the root
    // table's signature and length, so the crate reads only within the structures it maps; every
    // mapping goes through `TableMapper`, which maps the full requested range or a zeroed
    // stand-in of at least that size.
    let tables = match unsafe { AcpiTables::from_rsdp(TableMapper, rsdp_address) } {
        Ok(tables) => tables,
        Err(error) => {
            log::error!("ACPI root table rejected ({error:?}): using default APIC layout");
            return Platform::defaults(DefaultsReason::InvalidRootTable);
        }
    };

    let mut platform = match tables.find_table::<Madt>() {
        Ok(madt) => parse_madt(&madt),
        Err(error) => {
            log::warn!("no valid MADT ({error:?}): using default APIC layout");
            Platform::defaults(DefaultsReason::MadtMissing)
        }
    };
    platform.acpi_present = true;
    platform.acpi_revision = Some(revision);
    match tables.find_table::<Mcfg>() {
        Ok(mcfg) => platform.ecam = parse_mcfg(&mcfg),
        Err(_) => log::debug!("no MCFG table: no PCI Express ECAM (legacy PCI config only)"),
    }
    dmar::find(&tables);
    platform
}

/// What is wrong with an RSDP or root table, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RsdpError {
    Unmappable,
    BadSignature,
    BadChecksum,
    BadLength(u32),
    RootUnmappable,
    RootBadSignature,
    RootBadLength(u32),
}

impl fmt::Display for RsdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RsdpError::Unmappable => f.write_str("cannot map it"),
            RsdpError::BadSignature => f.write_str("signature is not \"RSD PTR \""),
            RsdpError::BadChecksum => f.write_str("checksum does not add up to zero"),
            RsdpError::BadLength(len) => write!(f, "length {len} is not {RSDP_V2_BYTES}"),
            RsdpError::RootUnmappable => f.write_str("cannot map the XSDT/RSDT"),
            RsdpError::RootBadSignature => f.write_str("XSDT/RSDT signature is wrong"),
            RsdpError::RootBadLength(len) => write!(f, "XSDT/RSDT length {len} is implausible"),
        }
    }
}

/// Copies `N` bytes of physical memory at `phys` into an array (through an uncached mapping).
fn read_physical<const N: usize>(phys: u64) -> Option<[u8; N]> {
    let pointer = map_mmio(phys, N).ok()?;
    let mut bytes = [0u8; N];
    for (i, byte) in bytes.iter_mut().enumerate() {
        // SAFETY: `map_mmio` mapped `N` bytes at `pointer`; `i < N`. Volatile because the mapping
        // is device-style (uncached) memory.
        *byte = unsafe { pointer.as_ptr().add(i).read_volatile() };
    }
    Some(bytes)
}

fn sums_to_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b)) == 0
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Checks what the `acpi` crate follows without checking: the RSDP's checksums and length
/// (ACPI 6.5 §5.2.5.3) and the root table's signature and length. Returns the RSDP revision.
fn check_rsdp(rsdp: u64) -> Result<u8, RsdpError> {
    let bytes: [u8; RSDP_V2_BYTES] = read_physical(rsdp).ok_or(RsdpError::Unmappable)?;
    if &bytes[0..8] != b"RSD PTR " {
        return Err(RsdpError::BadSignature);
    }
    // The first checksum covers the ACPI 1.0 part, the extended one the whole structure.
    if !sums_to_zero(&bytes[..RSDP_V1_BYTES]) {
        return Err(RsdpError::BadChecksum);
    }
    let revision = bytes[15];
    let (root_address, root_signature) = if revision == 0 {
        (u64::from(le_u32(&bytes, 16)), b"RSDT")
    } else {
        let length = le_u32(&bytes, 20);
        if length as usize != RSDP_V2_BYTES {
            return Err(RsdpError::BadLength(length));
        }
        if !sums_to_zero(&bytes) {
            return Err(RsdpError::BadChecksum);
        }
        (le_u64(&bytes, 24), b"XSDT")
    };
    let header: [u8; SDT_HEADER_BYTES] =
        read_physical(root_address).ok_or(RsdpError::RootUnmappable)?;
    if &header[0..4] != root_signature {
        return Err(RsdpError::RootBadSignature);
    }
    let length = le_u32(&header, 4);
    if (length as usize) < SDT_HEADER_BYTES || length as usize > MAX_TABLE_BYTES {
        return Err(RsdpError::RootBadLength(length));
    }
    Ok(revision)
}

/// Decodes the MPS INTI flags of MADT entries 2, 3, 4 and 0xA (ACPI 6.5 table 5.50).
/// "Conforms to the bus" means ISA conventions here (edge, active high): overrides are for the
/// ISA bus by definition, and NMI inputs are edge-triggered. Reserved encodings (0b10) are read
/// the same way, with a warning.
fn decode_inti_flags(flags: u16) -> (Polarity, Trigger) {
    let polarity = match flags & 0b11 {
        0b11 => Polarity::ActiveLow,
        0b00 | 0b01 => Polarity::ActiveHigh,
        _ => {
            log::warn!("MADT: reserved polarity in INTI flags {flags:#06x}; assuming active high");
            Polarity::ActiveHigh
        }
    };
    let trigger = match (flags >> 2) & 0b11 {
        0b11 => Trigger::Level,
        0b00 | 0b01 => Trigger::Edge,
        _ => {
            log::warn!("MADT: reserved trigger mode in INTI flags {flags:#06x}; assuming edge");
            Trigger::Edge
        }
    };
    (polarity, trigger)
}

/// The size of the structure the `acpi` crate overlays on a MADT entry of type `entry_type`, or
/// `None` for types it skips without reading.
fn madt_entry_struct_size(entry_type: u8) -> Option<usize> {
    use acpi::madt::*;
    use core::mem::size_of;
    Some(match entry_type {
        0x0 => size_of::<LocalApicEntry>(),
        0x1 => size_of::<IoApicEntry>(),
        0x2 => size_of::<InterruptSourceOverrideEntry>(),
        0x3 => size_of::<NmiSourceEntry>(),
        0x4 => size_of::<LocalApicNmiEntry>(),
        0x5 => size_of::<LocalApicAddressOverrideEntry>(),
        0x6 => size_of::<IoSapicEntry>(),
        0x7 => size_of::<LocalSapicEntry>(),
        0x8 => size_of::<PlatformInterruptSourceEntry>(),
        0x9 => size_of::<LocalX2ApicEntry>(),
        0xa => size_of::<X2ApicNmiEntry>(),
        0xb => size_of::<GiccEntry>(),
        0xc => size_of::<GicdEntry>(),
        0xd => size_of::<GicMsiFrameEntry>(),
        0xe => size_of::<GicRedistributorEntry>(),
        0xf => size_of::<GicInterruptTranslationServiceEntry>(),
        0x10 => size_of::<MultiprocessorWakeupEntry>(),
        _ => return None,
    })
}

/// Walks the MADT's entry chain (ACPI 6.5 §5.2.12, each entry starts with a type byte and a
/// length byte) and checks that the `acpi` crate's iterator can follow it safely: every entry at
/// least 2 bytes long and inside the table, every entry the kernel reads at least as long as its
/// structure, and no structure the crate overlays running past the end of the table.
fn check_madt_entries(table: &[u8]) -> Result<usize, &'static str> {
    let mut offset = MADT_FIXED_BYTES;
    let mut count = 0;
    while offset < table.len() {
        if offset + 2 > table.len() {
            return Err("a truncated entry header at the end");
        }
        let (entry_type, length) = (table[offset], usize::from(table[offset + 1]));
        if length < 2 {
            return Err("an entry shorter than its own header");
        }
        if offset + length > table.len() {
            return Err("an entry running past the end of the table");
        }
        if let Some(size) = madt_entry_struct_size(entry_type) {
            let read_by_kernel = matches!(entry_type, 0x0..=0x5 | 0x9 | 0xa);
            if (read_by_kernel && length < size) || offset + size > table.len() {
                return Err("an entry too short for its type");
            }
        }
        offset += length;
        count += 1;
    }
    Ok(count)
}

/// Copies the interrupt description out of a checksum-validated MADT.
fn parse_madt(madt: &PhysicalMapping<TableMapper, Madt>) -> Platform {
    let length = madt.get().header.length as usize;
    if length < MADT_FIXED_BYTES || length > madt.region_length() {
        log::error!("MADT length {length} is implausible: using default APIC layout");
        return Platform::defaults(DefaultsReason::MadtMalformed);
    }
    // SAFETY: the mapping covers `region_length() >= length` bytes (checked above) and the crate
    // has already read them all for the checksum; they are not written while we look.
    let bytes =
        unsafe { core::slice::from_raw_parts(madt.virtual_start().as_ptr().cast::<u8>(), length) };
    let entry_count = match check_madt_entries(bytes) {
        Ok(count) => count,
        Err(problem) => {
            log::error!("MADT has {problem}: using default APIC layout");
            return Platform::defaults(DefaultsReason::MadtMalformed);
        }
    };

    let fixed = madt.get();
    let mut platform = Platform {
        interrupt_source: InterruptSource::Madt,
        acpi_present: true,
        acpi_revision: None,
        local_apic_address: u64::from(fixed.local_apic_address),
        has_8259: fixed.supports_8259(),
        processors: Vec::new(),
        io_apics: Vec::new(),
        isa_overrides: Vec::new(),
        nmi_sources: Vec::new(),
        local_apic_nmis: Vec::new(),
        ecam: Vec::new(),
    };
    for entry in madt.get().entries() {
        match entry {
            MadtEntry::LocalApic(e) => platform.processors.push(Processor {
                uid: u32::from(e.processor_id),
                apic_id: u32::from(e.apic_id),
                enabled: { e.flags } & 1 != 0,
            }),
            MadtEntry::LocalX2Apic(e) => platform.processors.push(Processor {
                uid: e.processor_uid,
                apic_id: e.x2apic_id,
                enabled: { e.flags } & 1 != 0,
            }),
            MadtEntry::IoApic(e) => platform.io_apics.push(IoApicInfo {
                id: e.io_apic_id,
                address: u64::from(e.io_apic_address),
                gsi_base: e.global_system_interrupt_base,
            }),
            MadtEntry::InterruptSourceOverride(e) => {
                if e.bus != 0 || e.irq >= ISA_IRQ_COUNT {
                    log::warn!("MADT: ignoring override for bus {} IRQ {}", e.bus, e.irq);
                    continue;
                }
                let (polarity, trigger) = decode_inti_flags(e.flags);
                platform.isa_overrides.push(IsaRoute {
                    isa_irq: e.irq,
                    gsi: e.global_system_interrupt,
                    polarity,
                    trigger,
                });
            }
            MadtEntry::NmiSource(e) => {
                let (polarity, trigger) = decode_inti_flags(e.flags);
                platform.nmi_sources.push(NmiSource {
                    gsi: e.global_system_interrupt,
                    polarity,
                    trigger,
                });
            }
            MadtEntry::LocalApicNmi(e) => {
                let (polarity, trigger) = decode_inti_flags(e.flags);
                platform.local_apic_nmis.push(LocalApicNmi {
                    processor_uid: (e.processor_id != 0xff).then_some(u32::from(e.processor_id)),
                    lint: e.nmi_line,
                    polarity,
                    trigger,
                });
            }
            MadtEntry::X2ApicNmi(e) => {
                let (polarity, trigger) = decode_inti_flags(e.flags);
                platform.local_apic_nmis.push(LocalApicNmi {
                    processor_uid: (e.processor_uid != u32::MAX).then_some(e.processor_uid),
                    lint: e.nmi_line,
                    polarity,
                    trigger,
                });
            }
            MadtEntry::LocalApicAddressOverride(e) => {
                platform.local_apic_address = e.local_apic_address;
            }
            other => log::debug!("MADT: skipping entry {other:?}"),
        }
    }
    log::debug!("MADT: {entry_count} entries, {length} bytes");
    platform.local_apic_nmis.retain(|nmi| {
        let valid = nmi.lint <= 1;
        if !valid {
            log::warn!("MADT: ignoring local APIC NMI on LINT{}", nmi.lint);
        }
        valid
    });
    if platform.io_apics.is_empty() {
        log::error!("MADT describes no I/O APIC: using default APIC layout");
        return Platform::defaults(DefaultsReason::MadtMalformed);
    }
    platform
}

/// Copies the ECAM windows out of a checksum-validated MCFG, dropping implausible ones.
fn parse_mcfg(mcfg: &PhysicalMapping<TableMapper, Mcfg>) -> Vec<Ecam> {
    use acpi::AcpiTable;
    let length = mcfg.header().length as usize;
    if length < MCFG_FIXED_BYTES || length > mcfg.region_length() {
        log::error!("MCFG length {length} is implausible: ignoring it");
        return Vec::new();
    }
    let mut windows = Vec::new();
    for entry in mcfg.entries() {
        let ecam = Ecam {
            base: entry.base_address,
            segment: entry.pci_segment_group,
            bus_start: entry.bus_number_start,
            bus_end: entry.bus_number_end,
        };
        // Each bus takes 1 MiB of ECAM space, so the base is at least 1 MiB aligned.
        if ecam.base == 0 || !ecam.base.is_multiple_of(1 << 20) || ecam.bus_start > ecam.bus_end {
            log::warn!("MCFG: ignoring implausible window {ecam:x?}");
            continue;
        }
        windows.push(ecam);
    }
    windows
}

fn log_summary(platform: &Platform) {
    match platform.interrupt_source {
        InterruptSource::Madt => log::info!(
            "ACPI tables (RSDP revision {}): MADT lists {} CPU(s), {} I/O APIC(s), {} ISA override(s); local APIC at {:#x}",
            platform.acpi_revision.unwrap_or(0),
            platform.processors.len(),
            platform.io_apics.len(),
            platform.isa_overrides.len(),
            platform.local_apic_address
        ),
        InterruptSource::Defaults(reason) => log::info!(
            "interrupt layout: defaults ({reason:?}): local APIC at {:#x}, one I/O APIC at {:#x}",
            platform.local_apic_address,
            DEFAULT_IO_APIC_ADDRESS
        ),
    }
    for cpu in &platform.processors {
        log::debug!(
            "  CPU uid {} local APIC id {}{}",
            cpu.uid,
            cpu.apic_id,
            if cpu.enabled { "" } else { " (disabled)" }
        );
    }
    for io_apic in &platform.io_apics {
        log::debug!(
            "  I/O APIC id {} at {:#x}, GSIs from {}",
            io_apic.id,
            io_apic.address,
            io_apic.gsi_base
        );
    }
    for route in &platform.isa_overrides {
        log::debug!(
            "  ISA IRQ {} -> GSI {} ({:?}, {:?})",
            route.isa_irq,
            route.gsi,
            route.trigger,
            route.polarity
        );
    }
    for nmi in &platform.nmi_sources {
        log::debug!(
            "  NMI source: GSI {} ({:?}, {:?})",
            nmi.gsi,
            nmi.trigger,
            nmi.polarity
        );
    }
    for nmi in &platform.local_apic_nmis {
        log::debug!(
            "  local APIC NMI on LINT{} for {} ({:?}, {:?})",
            nmi.lint,
            match nmi.processor_uid {
                Some(_) => "one CPU",
                None => "all CPUs",
            },
            nmi.trigger,
            nmi.polarity
        );
    }
    match platform.ecam.as_slice() {
        [] => log::info!("PCI Express ECAM: none"),
        windows => {
            for w in windows {
                log::info!(
                    "PCI Express ECAM: segment {} buses {}..={} at {:#x}",
                    w.segment,
                    w.bus_start,
                    w.bus_end,
                    w.base
                );
            }
        }
    }
}

/// The `acpi` crate's window onto physical memory: every region goes through
/// [`crate::memory::map_mmio`].
#[derive(Debug, Clone, Copy)]
struct TableMapper;

/// What the crate gets when a region cannot be mapped: zeroes, long enough for any structure it
/// overlays before reading a length. A zero signature matches no table, so the crate skips it.
#[repr(C, align(4096))]
struct ZeroPage([u8; 4096]);
static ZERO_PAGE: ZeroPage = ZeroPage([0; 4096]);

impl AcpiHandler for TableMapper {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let mapped = if size > MAX_TABLE_BYTES {
            log::warn!(
                "ACPI: refusing to map {size} bytes at {physical_address:#x} (corrupt length?)"
            );
            None
        } else {
            match map_mmio(physical_address as u64, size.max(1)) {
                Ok(pointer) => Some(pointer),
                Err(error) => {
                    log::warn!("ACPI: cannot map {size} bytes at {physical_address:#x}: {error}");
                    None
                }
            }
        };
        match mapped {
            // SAFETY: `map_mmio` mapped `size` bytes at `physical_address` for the rest of the run.
            Some(pointer) => unsafe {
                PhysicalMapping::new(physical_address, pointer.cast::<T>(), size, size, *self)
            },
            None => {
                let length = size.min(ZERO_PAGE.0.len());
                let pointer = NonNull::from(&ZERO_PAGE).cast::<T>();
                // SAFETY: the zero page is a static of 4096 readable bytes; the crate reads at
                // most `length` of them (every structure it overlays before checking a signature
                // is smaller than a page) and never writes through a table mapping.
                unsafe { PhysicalMapping::new(physical_address, pointer, length, length, *self) }
            }
        }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {
        // map_mmio mappings are permanent; a handful of table pages stay mapped.
    }
}
