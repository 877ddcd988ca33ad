//! Self-test of the per-queue path (virtio 1.2 §5.2.3, §5.2.6): every CPU
//! writes, reads back and verifies regions of its own on its own request
//! queue (`drivers::cpu_queues::queue_for_cpu`), holding only that queue's
//! lock of the disk ([`crate::block::with_disk_queue`]) and of the driver
//! (`drivers::blk::BlkQueue`), with buffers registered with the queue. The
//! other CPUs get their share through `crate::smp::run_on` and all run at
//! once. The per-queue counters prove where the requests went: each queue
//! completed exactly the requests of the CPUs that submit on it, nothing
//! more. Every region is announced like every write (the host checks the
//! image afterwards).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use drivers::blk::Op;
use drivers::cpu_queues;

use super::super::queue_io;
use super::{base_seed, check_pattern, faults, is_workload_disk, Disk, LOW_RESERVED};
use crate::block::{self, pattern, SECTOR};
use crate::println;

/// Sectors per region (one request each way).
const SECTORS: u64 = 64;
/// Regions written and read back per CPU.
const ROUNDS: u64 = 4;
/// Seed tag of this test's regions.
const TAG: u64 = 0x7063_0000;
/// Where this test's regions start: after the every-queue test's (at most
/// 15 queues of 4 regions of 64 sectors from [`LOW_RESERVED`]).
const FIRST_SECTOR: u64 = LOW_RESERVED + 15 * 4 * 64;
/// How long one request may take.
const TIMEOUT_NS: u64 = 10_000_000_000;

/// See the module docs.
pub(super) fn test_every_cpu_on_its_queue() -> Result<(), String> {
    let faulty = faults::faulty_serials()?;
    let names: Vec<(String, u16)> = block::with_disks(|disks| {
        disks
            .iter()
            .filter(|d| is_workload_disk(d, &faulty))
            .map(|d| (d.name().to_string(), d.queue_count()))
            .collect()
    });
    let cpus = crate::smp::online_cpus();
    for (name, queues) in names {
        let before = completions(&name)?;
        let results = on_every_cpu(&name, queues)?;
        let after = completions(&name)?;
        for (cpu, result) in results.into_iter().enumerate() {
            result.map_err(|e| format!("{name}: cpu {cpu}: {e}"))?;
        }
        for q in 0..queues {
            let submitters = (0..cpus)
                .filter(|&c| cpu_queues::queue_for_cpu(c, cpus, queues) == q)
                .count() as u64;
            let grew = after[usize::from(q)] - before[usize::from(q)];
            let expected = submitters * ROUNDS * 2;
            if grew != expected {
                return Err(format!(
                    "{name}: queue {q}: {grew} completions, expected {expected} from the {submitters} CPU(s) that submit on it"
                ));
            }
        }
        log::info!("block: {name}: {cpus} CPU(s) wrote and read back on their own queues");
        block::with_disk(&name, |disk| {
            for line in disk.queue_lines() {
                log::info!("block: {name} {line}");
            }
        })
        .map_err(|e| format!("{e}"))?;
    }
    Ok(())
}

/// Completions of every queue of disk `name`.
fn completions(name: &str) -> Result<Vec<u64>, String> {
    block::with_disk(name, |disk| {
        (0..disk.queue_count())
            .map(|q| disk.device().queue_stats(q).map_or(0, |s| s.completions))
            .collect()
    })
    .map_err(|e| format!("{e}"))
}

/// Runs [`rounds`] on every online CPU at once; one result per CPU.
fn on_every_cpu(name: &str, queues: u16) -> Result<Vec<Result<(), String>>, String> {
    let cpus = crate::smp::online_cpus();
    let name = String::from(name);
    let job = move |cpu: usize| -> Result<(), String> {
        let queue = cpu_queues::queue_for_cpu(cpu, cpus, queues);
        block::with_disk_queue(&name, queue, |disk| rounds(disk, cpu, queue))
            .map_err(|e| format!("{e}"))?
    };
    crate::smp::run_on_all(job, 4 * TIMEOUT_NS * ROUNDS).map_err(|e| format!("{e}"))
}

/// CPU `cpu`'s regions, through queue `queue`.
fn rounds(disk: &Disk, cpu: usize, queue: u16) -> Result<(), String> {
    let mut q = disk.blk().lock_queue(queue).map_err(|e| format!("{e}"))?;
    let bytes = SECTORS as usize * SECTOR;
    let ids = queue_io::register(&mut q, 2, bytes)?;
    let (data, back) = (ids[0], ids[1]);
    let mut wait = queue_io::queue_wait(disk, queue, TIMEOUT_NS);
    let result = (|| {
        for round in 0..ROUNDS {
            let region = cpu as u64 * ROUNDS + round;
            let sector = FIRST_SECTOR + region * SECTORS;
            let seed = base_seed() ^ (TAG + region);
            let buffer = q.buffer_mut(data).ok_or("data buffer lent")?;
            pattern::fill(seed, sector * SECTOR as u64, buffer);
            let crc = pattern::crc32(buffer);
            let write = Op::Write {
                sector,
                buffers: core::slice::from_ref(&data),
            };
            queue_io::run_one(&mut q, write, &mut wait)?;
            println!(
                "blk: wrote serial={} sector={sector} count={SECTORS} seed={seed:#x} crc32={crc:#010x}",
                disk.serial()
            );
            q.buffer_mut(back)
                .ok_or("read-back buffer lent")?
                .fill(0xa5);
            let read = Op::Read {
                sector,
                buffers: core::slice::from_ref(&back),
            };
            queue_io::run_one(&mut q, read, &mut wait)?;
            check_pattern(q.buffer(back).ok_or("read-back buffer lent")?, seed, sector)
                .map_err(|e| format!("queue {queue}: read-back at {sector}: {e}"))?;
        }
        Ok::<(), String>(())
    })();
    if q.in_flight() == 0 {
        queue_io::unregister(&mut q, &ids);
    }
    result
}
