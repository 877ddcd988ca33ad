//! The shell's `blkq`: every disk's request queues, with the CPU each
//! queue's interrupts go to and its counters (virtio 1.2 §5.2.3
//! VIRTIO_BLK_F_MQ; the mapping is `drivers::cpu_queues`), e.g.
//!
//! ```text
//! vda: 4 queue(s), this CPU (0) submits on queue 0
//!   queue 0 cpu=0 requests=130 completions=130 failed=0 interrupts=41
//!   queue 1 cpu=0 requests=8 completions=8 failed=0 interrupts=8
//! ```

use core::fmt::Write as _;

use super::{CommandResult, Output};
use crate::smp;

/// `blkq`: one header line per disk, one line per request queue.
pub fn blk_queues(out: &mut Output) -> CommandResult {
    crate::block::with_disks(|disks| {
        if disks.is_empty() {
            let _ = writeln!(out, "no disks");
        }
        for disk in disks.iter_mut() {
            let _ = writeln!(
                out,
                "{}: {} queue(s), this CPU ({}) submits on queue {}",
                disk.name(),
                disk.queue_count(),
                smp::current_cpu(),
                disk.own_queue()
            );
            for line in disk.queue_lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    });
    Ok(())
}
