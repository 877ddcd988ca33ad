//! The crash-consistency workload (`crash=records`, self-test build only):
//! numbered, checksummed records written to the first scratch disk, with a
//! FLUSH (VIRTIO_BLK_T_FLUSH, virtio 1.2 §5.2.6) at every commit point, each
//! commit announced on the serial line once the flush has completed:
//!
//! ```text
//! crash: writing records to vda (scratch0), 8 per commit at most
//! crash: committed 0
//! crash: committed 5
//! ...
//! ```
//!
//! `crash: committed N` promises that records 0 to N are on the disk. The
//! host (`tests/qemu/scenarios_crash.py`) kills QEMU with SIGKILL at a
//! random moment, then reads the image and checks that every record the
//! guest reported committed is there and intact: a driver that reported a
//! write or a flush complete before the device had finished it would lose
//! records.
//!
//! Record `n` is sector `n` (512 bytes, little endian):
//!
//! ```text
//! 0..8      "CRASHREC"
//! 8..16     n
//! 16..504   payload: pattern::word(n, i) for the 8-byte words i = 0..61
//! 504..512  FNV-1a 64 of bytes 0..504
//! ```
//!
//! Commits take 1 to 8 records (varying, so that a kill can land inside a
//! multi-sector write as well as between writes and flushes). It stops with
//! `crash: done` when the disk is full or after [`MAX_RECORDS`], and then
//! halts: the host kills it long before.

use alloc::vec;

use super::{pattern, with_disks, SECTOR};
use crate::println;

/// The longest a run writes.
pub const MAX_RECORDS: u64 = 1 << 20;
/// The most records per commit.
const MAX_BATCH: u64 = 8;
const MAGIC: &[u8; 8] = b"CRASHREC";

/// FNV-1a, 64 bits (the host computes the same).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Writes record `n` into `sector` (512 bytes).
fn fill_record(n: u64, sector: &mut [u8]) {
    sector[0..8].copy_from_slice(MAGIC);
    sector[8..16].copy_from_slice(&n.to_le_bytes());
    for (i, word) in sector[16..504].chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&pattern::word(n, i as u64).to_le_bytes());
    }
    let sum = fnv1a(&sector[..504]);
    sector[504..512].copy_from_slice(&sum.to_le_bytes());
}

/// Runs the workload if the command line says `crash=records`; does not
/// return then.
pub fn run_if_asked() {
    if crate::cmdline::get("crash") != Some("records") {
        return;
    }
    let outcome = with_disks(|disks| {
        let Some(disk) = disks.iter_mut().find(|d| d.is_scratch() && d.writable()) else {
            return Err(alloc::string::String::from("no writable scratch disk"));
        };
        let limit = disk.capacity_sectors().min(MAX_RECORDS);
        println!(
            "crash: writing records to {} ({}), {MAX_BATCH} per commit at most",
            disk.name(),
            disk.serial()
        );
        // `crash.flush=skip` announces commits without flushing: a broken
        // driver on purpose, to show the host's check catches one
        // (the `crash-no-flush-caught` scenario).
        let skip_flush = crate::cmdline::get("crash.flush") == Some("skip");
        let mut buffer = vec![0u8; MAX_BATCH as usize * SECTOR];
        let mut next = 0u64;
        let mut commit = 0u64;
        while next < limit {
            // 1, 2, ..., 8, 1, 2, ...: every batch size, over and over.
            let batch = (commit % MAX_BATCH + 1).min(limit - next);
            let bytes = &mut buffer[..batch as usize * SECTOR];
            for (i, sector) in bytes.chunks_exact_mut(SECTOR).enumerate() {
                fill_record(next + i as u64, sector);
            }
            disk.write(next, bytes)
                .map_err(|e| alloc::format!("write at {next}: {e}"))?;
            if !skip_flush {
                disk.flush()
                    .map_err(|e| alloc::format!("flush after {next}: {e}"))?;
            }
            next += batch;
            commit += 1;
            println!("crash: committed {}", next - 1);
        }
        Ok(())
    });
    match outcome {
        Ok(()) => println!("crash: done"),
        Err(error) => println!("crash: FAILED: {error}"),
    }
    crate::exit::halt_forever()
}
