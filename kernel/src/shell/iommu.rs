//! The shell's `iommu` command: what the DMA-remapping unit is doing (kernel/src/iommu/).
//!
//! ```text
//! > iommu
//! mode strict: 41 pages mapped, 37 unmapped, 37 IOTLB invalidations, 1 fault (1 interrupt)
//! fault: device 00:02.0 write at 0x13e8000: write to a page not mapped writable
//! > iommu 0x13e8000
//! 0x13e8000: not mapped for any device (a device access faults in strict mode)
//! ```

use alloc::format;
use core::fmt::Write;

use super::{Call, CommandResult, Output};
use crate::iommu;

/// `iommu [address]`: the mode and counters and the last faults, or what each device's page
/// table says about one device address.
pub fn run(call: &Call<'_>, out: &mut Output) -> CommandResult {
    let Some(mode) = iommu::active_mode() else {
        let _ = writeln!(
            out,
            "no IOMMU in use (no DMAR table, or it could not be set up)"
        );
        return Ok(());
    };
    if let Some(text) = call.args.first() {
        let digits = text.trim_start_matches("0x");
        let address = u64::from_str_radix(digits, 16)
            .map_err(|_| format!("{text:?} is not a hex address"))?;
        // One line per device whose table maps it: each device has its own.
        let mut mapped = false;
        for (location, domain) in iommu::domains() {
            if let Some((phys, read, write, shares)) =
                iommu::translation(location.dma_owner(), address)
            {
                mapped = true;
                let _ = writeln!(
                    out,
                    "{address:#x} for {location} (domain {domain}): page {phys:#x}, {}{}, {shares} share(s)",
                    if read { "read" } else { "" },
                    if write { "+write" } else { "" }
                );
            }
        }
        if !mapped {
            let _ = writeln!(
                out,
                "{address:#x}: not mapped for any device (a device access faults in strict mode)"
            );
        }
        return Ok(());
    }
    let c = iommu::counters();
    let _ = writeln!(
        out,
        "mode {}: {} pages mapped, {} unmapped, {} IOTLB invalidations, {} fault(s) ({} interrupt(s))",
        mode.name(),
        c.pages_mapped,
        c.pages_unmapped,
        c.invalidations,
        c.faults,
        c.fault_interrupts
    );
    for fault in iommu::recent_faults() {
        let _ = writeln!(
            out,
            "fault: device {} {} at {:#x}: {}",
            fault.source_text(),
            if fault.read { "read" } else { "write" },
            fault.address,
            iommu::reason_text(fault.reason)
        );
    }
    Ok(())
}
