//! Self-tests of the boot information (`mode=selftest`, feature
//! `selftest`): what `boot::init` parsed from the PVH start info must
//! describe the machine the kernel runs on.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{info, kernel_image, PARSE_REPORT};
use crate::bootinfo::{BootInfo, MemoryKind};
use crate::selftest_api::SelfTest;

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
