//! The shell's `mem`: free and total memory as the frame allocator counts
//! it, and the virtio-balloon's size and the host's target
//! (`crate::balloon`). The QEMU balloon scenario reads `free` before and
//! after the host moves the target.

use core::fmt::Write as _;

use super::{CommandResult, Output};
use crate::balloon;

/// `mem`: `free <bytes> total <bytes>`, then the balloon's line if there
/// is a balloon.
pub fn mem(out: &mut Output) -> CommandResult {
    let stats = balloon::memory_stats();
    let _ = writeln!(
        out,
        "memory: free {} total {} ({} MiB free of {} MiB)",
        stats.free,
        stats.total,
        stats.free >> 20,
        stats.total >> 20
    );
    match balloon::summary() {
        Some((location, pages, target, answered, stopped)) => {
            let target = target.map_or(-1, i64::from);
            let _ = writeln!(
                out,
                "balloon at {location}: {pages} pages ({} MiB), target {target} pages, stats answered {answered}{}",
                (pages as u64 * drivers::balloon::PAGE_SIZE) >> 20,
                if stopped { ", STOPPED" } else { "" }
            );
        }
        None => {
            let _ = writeln!(out, "no balloon");
        }
    }
    Ok(())
}
