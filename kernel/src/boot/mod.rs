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

use crate::bootinfo::{BootInfo, MemoryKind};
use crate::selftest_api::SelfTest;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use spin::Once;

pub use pvh::StartInfoError;

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

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// Start-info self-tests: the parse results must describe the machine we are
/// running on.
pub fn selftests() -> Vec<SelfTest> {
    vec![
        SelfTest {
            name: "boot: memory map describes the RAM the kernel runs in",
            run: test_memory_map,
        },
        SelfTest {
            name: "boot: reserved ranges cover the boot structures",
            run: test_reserved_ranges,
        },
        SelfTest {
            name: "boot: command line arrived from -append",
            run: test_cmdline,
        },
    ]
}

fn boot_info() -> Result<&'static BootInfo, String> {
    info().ok_or_else(|| String::from("boot::init never succeeded"))
}

fn test_memory_map() -> Result<(), String> {
    let info = boot_info()?;
    if info.memory.is_empty() {
        return Err("memory map is empty".into());
    }
    if let Some(empty) = info.memory.iter().find(|region| region.len == 0) {
        return Err(format!("zero-size entry kept: {empty:?}"));
    }
    // The loader put the kernel into RAM, so one usable region must hold the
    // whole image; otherwise the map (or its parsing) is wrong.
    let (image_start, image_len) = kernel_image();
    let holds_image = info.memory.iter().any(|region| {
        region.kind == MemoryKind::Usable
            && region.start <= image_start
            && image_start + image_len <= region.start + region.len
    });
    if !holds_image {
        return Err(format!(
            "no usable region holds the kernel image {image_start:#x}+{image_len:#x}"
        ));
    }
    Ok(())
}

fn test_reserved_ranges() -> Result<(), String> {
    let info = boot_info()?;
    let Some(report) = PARSE_REPORT.get() else {
        return Err("no parse report".into());
    };
    let reserved: Vec<(u64, u64)> = info.reserved.iter().collect();
    let image = kernel_image();
    if reserved.first() != Some(&image) {
        return Err(format!(
            "first reserved range {:?} is not the kernel image {image:?}",
            reserved.first()
        ));
    }
    if !reserved
        .iter()
        .any(|&(start, _)| start == report.start_info_phys)
    {
        return Err(format!(
            "start info at {:#x} is not reserved",
            report.start_info_phys
        ));
    }
    // The entry code zeroed .bss before reading the start info; had the loader
    // put any boot structure inside the image, it would have been wiped.
    if let Some(clash) = reserved[1..].iter().find(|&&range| overlaps(range, image)) {
        return Err(format!(
            "boot structure {clash:x?} overlaps the kernel image {image:x?}"
        ));
    }
    Ok(())
}

fn test_cmdline() -> Result<(), String> {
    let info = boot_info()?;
    // The self-test is only ever started with mode=selftest on the command
    // line, so the parsed string must contain it.
    if !info
        .cmdline
        .split_ascii_whitespace()
        .any(|word| word == "mode=selftest")
    {
        return Err(format!(
            "command line {:?} lacks mode=selftest",
            info.cmdline
        ));
    }
    if crate::cmdline::get("mode") != Some("selftest") {
        return Err(format!(
            "cmdline::get(\"mode\") = {:?}",
            crate::cmdline::get("mode")
        ));
    }
    Ok(())
}
