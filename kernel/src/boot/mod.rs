//! Boot: how the machine gets from QEMU's `-kernel` to Rust, and what the
//! kernel learns on the way (the walk-through is docs/01-boot.md).
//!
//! - [`entry`]: the PVH ELF note and the 32-bit entry code that switches to
//!   long mode and calls `kernel_main` (PVH boot protocol; Intel SDM Vol. 3A,
//!   10.8.5 "Initializing IA-32e Mode").
//! - [`pvh`]: parsing the `hvm_start_info` the loader hands over into the
//!   kernel's [`BootInfo`].
//!
//! This module keeps the parsed [`BootInfo`] for the rest of the run.

pub mod entry;
pub mod pvh;
#[cfg(feature = "selftest")]
mod selftests;

use crate::bootinfo::{BootInfo, MemoryKind};
use spin::Once;

pub use pvh::StartInfoError;
#[cfg(feature = "selftest")]
pub use selftests::selftests;

extern "C" {
    /// First byte of the kernel image (`kernel/linker.ld`).
    static __kernel_start: u8;
    /// One past the last byte of the image, `.bss` included.
    static __kernel_end: u8;
}

/// The physical range `(start, len)` the kernel image occupies once loaded:
/// code, data and `.bss` (which holds the boot stack, the IST stacks and the
/// boot page tables).
pub fn kernel_image() -> (u64, u64) {
    let start = core::ptr::addr_of!(__kernel_start) as u64;
    let end = core::ptr::addr_of!(__kernel_end) as u64;
    (start, end - start)
}

static BOOT_INFO: Once<BootInfo> = Once::new();
static PARSE_REPORT: Once<pvh::ParseReport> = Once::new();

/// Parses the PVH start info that the entry code passed to `kernel_main`.
/// Call once, before anything replaces the boot page tables.
pub fn init(start_info_phys: u64) -> Result<&'static BootInfo, StartInfoError> {
    // SAFETY: called from kernel_main while the boot page tables built by
    // `entry` still identity-map the first 4 GiB, with the value the PVH
    // loader left in ebx.
    let (info, report) = unsafe { pvh::parse(start_info_phys, kernel_image())? };
    PARSE_REPORT.call_once(|| report);
    Ok(BOOT_INFO.call_once(|| info))
}

/// The boot information, once [`init`] succeeded.
pub fn info() -> Option<&'static BootInfo> {
    BOOT_INFO.get()
}

/// Logs what the loader handed over (after the logger is up).
pub fn log_summary() {
    let (Some(info), Some(report)) = (BOOT_INFO.get(), PARSE_REPORT.get()) else {
        return;
    };
    log::info!(
        "PVH start info at {:#x}, version {}, {} memory-map entries",
        report.start_info_phys,
        report.version,
        report.memmap_entries
    );
    let mut usable_bytes = 0;
    for region in info.memory.iter() {
        log::info!(
            "  memory {:#012x}-{:#012x} {:?}",
            region.start,
            region.start.saturating_add(region.len) - 1,
            region.kind
        );
        if region.kind == MemoryKind::Usable {
            usable_bytes += region.len;
        }
    }
    log::info!("usable RAM: {} MiB", usable_bytes >> 20);
    for (start, len) in info.reserved.iter() {
        log::debug!("  reserved {:#x}-{:#x}", start, start + len - 1);
    }
    match info.rsdp {
        Some(rsdp) => log::info!("ACPI RSDP at {rsdp:#x}"),
        None => log::info!("no ACPI RSDP from the loader"),
    }
    log::info!("command line: {:?}", info.cmdline);
    if report.empty_entries_skipped != 0 {
        log::debug!(
            "skipped {} zero-size memory-map entries",
            report.empty_entries_skipped
        );
    }
    if report.entries_dropped != 0 {
        log::warn!(
            "memory map too long: {} entries beyond the first {} ignored",
            report.entries_dropped,
            crate::bootinfo::MAX_MEMORY_REGIONS
        );
    }
    if report.reserved_dropped != 0 {
        log::warn!(
            "{} reserved ranges did not fit into BootInfo",
            report.reserved_dropped
        );
    }
    if report.cmdline_truncated {
        log::warn!("command line cut to {} bytes", pvh::MAX_CMDLINE_LEN);
    }
    if report.cmdline_not_utf8 {
        log::warn!("command line is not UTF-8; kept only the valid prefix");
    }
}
