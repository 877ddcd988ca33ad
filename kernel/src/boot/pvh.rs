//! Reading the PVH `hvm_start_info` into a [`BootInfo`].
//!
//! Implements the start-info half of the PVH boot protocol (Xen
//! `include/public/arch-x86/hvm/start_info.h`, `docs/misc/pvh.pandoc`). The
//! structure, at the physical address the loader put in `ebx`:
//!
//! ```text
//! offset  field            notes
//!      0  magic            0x336ec578 ("xEn3" with bit 7 of 'x' set)
//!      4  version          0: fields up to rsdp_paddr; 1: adds the memory map
//!      8  flags
//!     12  nr_modules       modules (initrds) the loader passed
//!     16  modlist_paddr    array of nr_modules { paddr, size, cmdline_paddr, reserved }
//!     24  cmdline_paddr    NUL-terminated command line, 0 if none
//!     32  rsdp_paddr       ACPI RSDP, 0 if none
//!     40  memmap_paddr     (version >= 1) array of memory-map entries
//!     48  memmap_entries   (version >= 1) number of entries
//!     52  reserved
//! ```
//!
//! Each memory-map entry is `{ u64 addr, u64 size, u32 type, u32 reserved }`
//! with e820 type numbers. Firmware may report zero-size entries (QEMU's
//! option ROM adds a trailing one); they carry no information and are dropped.
//!
//! Everything the start info points to is read while the boot page tables
//! identity-map the first 4 GiB, so an address at or above 4 GiB is refused
//! rather than dereferenced. The command line is copied into the kernel
//! image, so it stays valid whatever later happens to low memory.

use crate::bootinfo::{BootInfo, MemoryKind, MemoryRegion, MAX_MEMORY_REGIONS};
use core::fmt;
use spin::Once;

/// `hvm_start_info.magic`.
pub const HVM_START_MAGIC: u32 = 0x336e_c578;
/// Size of the structure in version 0 (ends after `rsdp_paddr`).
const START_INFO_SIZE_V0: u64 = 40;
/// Size of the structure in version 1 (adds the memory map fields).
const START_INFO_SIZE_V1: u64 = 56;
/// Size of one `hvm_memmap_table_entry`.
const MEMMAP_ENTRY_SIZE: u64 = 24;
/// Size of one `hvm_modlist_entry`.
const MODLIST_ENTRY_SIZE: u64 = 32;
/// The boot page tables map `[0, 4 GiB)`; nothing beyond may be dereferenced yet.
const IDENTITY_MAPPED_LIMIT: u64 = 4 << 30;
/// Room for the command line copy; longer command lines are cut here.
pub const MAX_CMDLINE_LEN: usize = 4096;

/// The fixed part of `struct hvm_start_info` (version 1 layout).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct HvmStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// `struct hvm_memmap_table_entry`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct HvmMemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// Why the start info could not be used. Each is fatal: without a memory map
/// the kernel cannot know where RAM is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartInfoError {
    /// `ebx` was 0: the loader did not pass a start info at all.
    NullPointer,
    /// The magic number is wrong: not entered through the PVH protocol.
    BadMagic { found: u32 },
    /// A structure lies (partly) outside the identity-mapped first 4 GiB.
    OutOfReach {
        what: &'static str,
        addr: u64,
        len: u64,
    },
    /// Version 0 start infos have no memory map.
    NoMemoryMap { version: u32 },
    /// The memory map has no entry with a non-zero size.
    EmptyMemoryMap,
}

impl fmt::Display for StartInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NullPointer => write!(
                f,
                "no hvm_start_info (ebx = 0); the kernel must be started through its PVH entry note"
            ),
            Self::BadMagic { found } => write!(
                f,
                "hvm_start_info magic is {found:#x}, expected {HVM_START_MAGIC:#x}; \
                 the kernel must be started through its PVH entry note"
            ),
            Self::OutOfReach { what, addr, len } => write!(
                f,
                "{what} at {addr:#x} (+{len:#x}) lies outside the identity-mapped first 4 GiB"
            ),
            Self::NoMemoryMap { version } => write!(
                f,
                "hvm_start_info version {version} has no memory map (version 1 or later needed)"
            ),
            Self::EmptyMemoryMap => write!(f, "the PVH memory map has no non-empty entry"),
        }
    }
}

/// What the parser noticed besides the [`BootInfo`] itself, for the boot log
/// (the logger does not exist yet while parsing).
#[derive(Debug, Clone, Copy, Default)]
pub struct ParseReport {
    pub start_info_phys: u64,
    pub version: u32,
    pub memmap_entries: u32,
    /// Zero-size entries that were skipped.
    pub empty_entries_skipped: u32,
    /// Entries beyond [`MAX_MEMORY_REGIONS`] that did not fit.
    pub entries_dropped: u32,
    /// The command line was longer than [`MAX_CMDLINE_LEN`] and was cut.
    pub cmdline_truncated: bool,
    /// The command line was not UTF-8; only the valid prefix was kept.
    pub cmdline_not_utf8: bool,
    /// Reserved ranges that did not fit into `BootInfo::reserved`.
    pub reserved_dropped: u32,
}

/// Checks that `[addr, addr + len)` can be dereferenced under the boot page
/// tables (and is not the null page).
fn check_reachable(what: &'static str, addr: u64, len: u64) -> Result<(), StartInfoError> {
    let end = addr.checked_add(len);
    match end {
        Some(end) if addr != 0 && end <= IDENTITY_MAPPED_LIMIT => Ok(()),
        _ => Err(StartInfoError::OutOfReach { what, addr, len }),
    }
}

/// The kernel's own copy of the command line.
struct CommandLineCopy {
    bytes: [u8; MAX_CMDLINE_LEN],
    len: usize,
}

static CMDLINE_COPY: Once<CommandLineCopy> = Once::new();

/// Copies the NUL-terminated string at `paddr` into the kernel image.
/// Returns the copy, its length in guest memory (including the NUL) for the
/// reserved list, and the truncation / UTF-8 findings.
///
/// # Safety
/// `paddr` must be 0 or point to readable, identity-mapped memory for up to
/// `MAX_CMDLINE_LEN + 1` bytes or up to a NUL, whichever comes first.
unsafe fn copy_cmdline(paddr: u64, report: &mut ParseReport) -> (&'static str, u64) {
    let mut copy = CommandLineCopy {
        bytes: [0; MAX_CMDLINE_LEN],
        len: 0,
    };
    let mut footprint = 0;
    if paddr != 0 {
        let source = paddr as *const u8;
        let mut terminated = false;
        while copy.len < MAX_CMDLINE_LEN {
            // SAFETY: within the range the caller vouches for; we stop at the NUL.
            let byte = unsafe { source.add(copy.len).read() };
            if byte == 0 {
                terminated = true;
                break;
            }
            copy.bytes[copy.len] = byte;
            copy.len += 1;
        }
        report.cmdline_truncated = !terminated;
        footprint = copy.len as u64 + 1;
    }
    let copy = CMDLINE_COPY.call_once(|| copy);
    let text = match core::str::from_utf8(&copy.bytes[..copy.len]) {
        Ok(text) => text,
        Err(error) => {
            report.cmdline_not_utf8 = true;
            // The prefix up to `valid_up_to` is valid UTF-8 by definition.
            core::str::from_utf8(&copy.bytes[..error.valid_up_to()]).unwrap_or("")
        }
    };
    (text, footprint)
}

fn memory_kind(e820_type: u32) -> MemoryKind {
    match e820_type {
        1 => MemoryKind::Usable,
        2 => MemoryKind::Reserved,
        3 => MemoryKind::AcpiReclaimable,
        4 => MemoryKind::AcpiNvs,
        other => MemoryKind::Other(other),
    }
}

/// Parses the start info at `start_info_phys`.
///
/// `kernel_image` is the physical range of the loaded kernel (code, data,
/// .bss with stacks and boot page tables); it heads the reserved list.
///
/// # Safety
/// Must run while the boot page tables identity-map the first 4 GiB, and
/// `start_info_phys` must be the value the PVH loader passed in `ebx`
/// (anything the loader wrote there is only read, never trusted blindly:
/// every pointer is range-checked before use).
pub unsafe fn parse(
    start_info_phys: u64,
    kernel_image: (u64, u64),
) -> Result<(BootInfo, ParseReport), StartInfoError> {
    if start_info_phys == 0 {
        return Err(StartInfoError::NullPointer);
    }
    check_reachable("hvm_start_info", start_info_phys, START_INFO_SIZE_V0)?;
    let mut report = ParseReport {
        start_info_phys,
        ..ParseReport::default()
    };

    let header = start_info_phys as *const HvmStartInfo;
    // SAFETY: the first 40 bytes (the version-0 part) were range-checked and
    // are identity-mapped; the field is naturally aligned (the protocol
    // places the structure 8-byte aligned).
    let (magic, version) = unsafe { ((*header).magic, (*header).version) };
    if magic != HVM_START_MAGIC {
        return Err(StartInfoError::BadMagic { found: magic });
    }
    report.version = version;
    if version < 1 {
        return Err(StartInfoError::NoMemoryMap { version });
    }
    check_reachable("hvm_start_info", start_info_phys, START_INFO_SIZE_V1)?;
    // SAFETY: version >= 1, so all 56 bytes exist; range-checked just above.
    let start_info: HvmStartInfo = unsafe { header.read() };

    let mut info = BootInfo {
        cmdline: "",
        memory: Default::default(),
        reserved: Default::default(),
        rsdp: (start_info.rsdp_paddr != 0).then_some(start_info.rsdp_paddr),
    };

    // The memory map.
    report.memmap_entries = start_info.memmap_entries;
    let memmap_len = u64::from(start_info.memmap_entries) * MEMMAP_ENTRY_SIZE;
    check_reachable("memory map", start_info.memmap_paddr, memmap_len)?;
    let entries = start_info.memmap_paddr as *const HvmMemmapEntry;
    for index in 0..start_info.memmap_entries as usize {
        // SAFETY: index < memmap_entries and the whole array was range-checked.
        let entry = unsafe { entries.add(index).read_unaligned() };
        if entry.size == 0 {
            report.empty_entries_skipped += 1;
            continue;
        }
        let region = MemoryRegion {
            start: entry.addr,
            len: entry.size,
            kind: memory_kind(entry.kind),
        };
        if !info.memory.push(region) {
            report.entries_dropped += 1;
        }
    }
    debug_assert!(info.memory.len() <= MAX_MEMORY_REGIONS);
    if info.memory.is_empty() {
        return Err(StartInfoError::EmptyMemoryMap);
    }

    // The command line (copied; see the module docs). Only its first byte is
    // known to exist; the copy stops at the NUL or after MAX_CMDLINE_LEN
    // bytes, so that much must be reachable.
    if start_info.cmdline_paddr != 0 {
        check_reachable(
            "command line",
            start_info.cmdline_paddr,
            MAX_CMDLINE_LEN as u64 + 1,
        )?;
    }
    // SAFETY: the address is 0 (nothing is read) or was range-checked above
    // for the longest read the copy makes.
    let (cmdline, cmdline_footprint) =
        unsafe { copy_cmdline(start_info.cmdline_paddr, &mut report) };
    info.cmdline = cmdline;

    // What the frame allocator must never hand out.
    let mut reserve = |start: u64, len: u64| {
        if len != 0 && !info.reserved.push((start, len)) {
            report.reserved_dropped += 1;
        }
    };
    reserve(kernel_image.0, kernel_image.1);
    reserve(start_info_phys, START_INFO_SIZE_V1);
    reserve(start_info.memmap_paddr, memmap_len);
    if cmdline_footprint != 0 {
        reserve(start_info.cmdline_paddr, cmdline_footprint);
    }
    if start_info.nr_modules != 0 {
        reserve(
            start_info.modlist_paddr,
            u64::from(start_info.nr_modules) * MODLIST_ENTRY_SIZE,
        );
    }

    Ok((info, report))
}
