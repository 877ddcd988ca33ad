//! Self-tests of the blocking per-queue path (`block/queue_path.rs`,
//! virtio 1.2 §5.2.6): `block::read` and `block::write` on the calling
//! CPU's request queue, without the whole disk, keep the data, and fail a
//! request during which the IOMMU blocked a DMA of the device
//! (`iommu::arm_fault`) as the whole-disk path does. Each checks the
//! disk's hand-over count: the call must not have gone the whole-disk way.
//! (A configuration change is the `blk-resize-qmp-*` scenarios' part: `blk
//! read` beyond the old end right after `block_resize`.)

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use super::{base_seed, check_pattern, faults, is_workload_disk, LOW_RESERVED};
use crate::block::{self, pattern, BlockError, SECTOR};
use crate::println;

/// Sectors written and read back.
const SECTORS: u64 = 16;
/// Where: after the per-CPU test's regions (15 queues' and 16 CPUs' worth).
const SECTOR_AT: u64 = LOW_RESERVED + 15 * 4 * 64 + 16 * 4 * 64;
/// Seed tag of this test's region.
const TAG: u64 = 0x7170_0000;
/// The address the armed fault names.
const FAULT_ADDRESS: u64 = 0xdead_0000;

/// The disk's hand-overs and its completions on the calling CPU's queue.
fn counters(name: &str) -> Result<(u64, u64), String> {
    block::with_disk(name, |disk| {
        let queue = disk.own_queue();
        let completions = disk
            .device()
            .queue_stats(queue)
            .map_or(0, |s| s.completions);
        (disk.handovers(), completions)
    })
    .map_err(|e| format!("{e}"))
}

/// Names of the disks `keep` accepts, skipping the fault-injection ones.
fn disk_names(keep: impl Fn(&block::Disk) -> bool) -> Result<Vec<String>, String> {
    let faulty = faults::faulty_serials()?;
    Ok(block::with_disks(|disks| {
        disks
            .iter()
            .filter(|d| !faulty.iter().any(|s| s == d.serial()) && keep(d))
            .map(|d| d.name().to_string())
            .collect()
    }))
}

/// Writes a region and reads it back through `block::write`/`block::read`
/// on every workload disk: two requests on this CPU's queue, no hand-over.
pub(super) fn test_write_read_on_own_queue() -> Result<(), String> {
    let faulty = faults::faulty_serials()?;
    let names = disk_names(|d| is_workload_disk(d, &faulty))?;
    for name in names {
        let serial =
            block::with_disk(&name, |d| d.serial().to_string()).map_err(|e| e.to_string())?;
        let (handovers, completions) = counters(&name)?;
        let seed = base_seed() ^ TAG;
        let mut data = vec![0u8; SECTORS as usize * SECTOR];
        pattern::fill(seed, SECTOR_AT * SECTOR as u64, &mut data);
        let crc = pattern::crc32(&data);
        block::write(&name, SECTOR_AT, &data).map_err(|e| format!("{name}: write: {e}"))?;
        println!(
            "blk: wrote serial={serial} sector={SECTOR_AT} count={SECTORS} seed={seed:#x} crc32={crc:#010x}"
        );
        let mut back = vec![0xa5u8; data.len()];
        block::read(&name, SECTOR_AT, &mut back).map_err(|e| format!("{name}: read: {e}"))?;
        check_pattern(&back, seed, SECTOR_AT).map_err(|e| format!("{name}: read-back: {e}"))?;
        let (handovers_after, completions_after) = counters(&name)?;
        if handovers_after != handovers {
            return Err(format!(
                "{name}: {} call(s) went to the whole-disk path",
                handovers_after - handovers
            ));
        }
        if completions_after - completions != 2 {
            return Err(format!(
                "{name}: this CPU's queue completed {} requests, expected the 2 of the calls",
                completions_after - completions
            ));
        }
        log::info!("block: {name}: a write and a read on this CPU's queue, without the whole disk");
    }
    Ok(())
}

/// With a fault armed for the disk (as if the IOMMU had blocked a DMA of
/// it during the request), a per-queue `block::read` fails with
/// `DmaBlocked`; the next read succeeds.
pub(super) fn test_dma_blocked_on_own_queue() -> Result<(), String> {
    let names = disk_names(|d| matches!(d.location(), drivers::transport::Location::Pci(_)))?;
    let mut tested = 0;
    for name in names {
        let location = block::with_disk(&name, |d| d.location()).map_err(|e| e.to_string())?;
        if !crate::iommu::arm_fault(location, false, FAULT_ADDRESS) {
            continue;
        }
        let (handovers, _) = counters(&name)?;
        let mut buffer = vec![0u8; SECTOR];
        match block::read(&name, 0, &mut buffer) {
            Err(BlockError::DmaBlocked(fault)) if !fault.read && fault.address == FAULT_ADDRESS => {
            }
            other => {
                return Err(format!(
                    "{name}: the read with a blocked DMA gave {other:?}"
                ))
            }
        }
        block::read(&name, 0, &mut buffer).map_err(|e| format!("{name}: the next read: {e}"))?;
        let (handovers_after, _) = counters(&name)?;
        if handovers_after != handovers {
            return Err(format!("{name}: the reads went to the whole-disk path"));
        }
        tested += 1;
    }
    if tested == 0 {
        return Err("no disk on PCI to arm a fault for".into());
    }
    log::info!("block: {tested} disk(s): a per-queue read with a blocked DMA failed");
    Ok(())
}
