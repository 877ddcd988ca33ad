//! Self-test of a multiqueue disk (VIRTIO_BLK_F_MQ, virtio 1.2 §5.2.3,
//! `num_queues` in §5.2.4): every request queue carries requests and
//! completes them, and only the queue a request was sent to moves.
//!
//! Each CPU submits on its own queue (`drivers::cpu_queues`), so on a
//! machine with fewer CPUs than queues most queues would sit idle during
//! the other tests. This one pins the disk to each queue in turn from the
//! CPU running the self-tests ([`Disk::pin_queue`]) and writes, reads back
//! and verifies a region through it, announced like every write (the host
//! checks the image afterwards).

use alloc::format;
use alloc::string::String;

use super::{base_seed, for_each_scratch, write_verified, Disk, LOW_RESERVED};

/// Sectors written (and read back) through each queue.
const SECTORS_PER_QUEUE: u64 = 64;
/// Requests of [`SECTORS_PER_QUEUE`] written and read per queue.
const ROUNDS: u64 = 4;

/// See the module docs.
pub(super) fn test_every_queue() -> Result<(), String> {
    for_each_scratch("every queue", |disk| {
        let count = disk.queue_count();
        if count < 2 {
            log::info!(
                "block: {}: one request queue, nothing to spread",
                disk.name()
            );
            return Ok(());
        }
        for queue in 0..count {
            through_queue(disk, queue)?;
        }
        for line in disk.queue_lines() {
            log::info!("block: {} {line}", disk.name());
        }
        Ok(())
    })
}

/// Writes, reads back and checks [`ROUNDS`] regions through `queue`; the
/// queue's completions grow by two per round and no other queue's move.
fn through_queue(disk: &mut Disk, queue: u16) -> Result<(), String> {
    let completions = |disk: &mut Disk| -> alloc::vec::Vec<u64> {
        (0..disk.queue_count())
            .map(|q| disk.device().queue_stats(q).map_or(0, |s| s.completions))
            .collect()
    };
    let before = completions(disk);
    disk.pin_queue(Some(queue)).map_err(|e| format!("{e}"))?;
    let result = (|| {
        for round in 0..ROUNDS {
            let region = u64::from(queue) * ROUNDS + round;
            let sector = LOW_RESERVED + region * SECTORS_PER_QUEUE;
            let seed = base_seed() ^ (0x6d71_0000 + region);
            write_verified(disk, sector, SECTORS_PER_QUEUE, seed)
                .map_err(|e| format!("queue {queue}: {e}"))?;
        }
        Ok::<(), String>(())
    })();
    disk.pin_queue(None).map_err(|e| format!("{e}"))?;
    result?;
    let after = completions(disk);
    for (q, (b, a)) in before.iter().zip(&after).enumerate() {
        let grew = a - b;
        if q == usize::from(queue) && grew < 2 * ROUNDS {
            return Err(format!(
                "queue {queue}: {grew} completions for {} requests sent to it",
                2 * ROUNDS
            ));
        }
        if q != usize::from(queue) && grew != 0 {
            return Err(format!(
                "queue {q}: {grew} completions while requests went to queue {queue}"
            ));
        }
    }
    Ok(())
}
