//! The `scale` benchmark section (`x.py bench --section scale`): 4 KiB random
//! reads at depth 32 per submitting CPU on a multiqueue disk (virtio 1.2
//! §5.2.3, one request queue per CPU), every CPU submitting at once.
//!
//! One boot per CPU count (`-smp N`, `num-queues=N`). Every online CPU runs
//! a worker (CPU 0 itself, the others through `crate::smp::run_on`) that
//! takes the disk by its own queue's lock ([`super::with_disk_queue`]),
//! registers 32 buffers with its queue, keeps 32 reads in flight on it
//! through the driver's per-queue path (`drivers::blk::BlkQueue`), sleeps on
//! its queue's interrupt (whose MSI-X message is addressed to it) and
//! measures `bench.seconds=` after a warm-up. No lock is shared between the
//! workers. The boot prints what ran, then one aggregate line per repeat
//! (the sum of the workers' rates):
//!
//! ```text
//! bench: scale.setup cpus=2 queues=2 submitting_cpus=2
//! bench: blk.randread.qd32.irq stack=ours iops=... requests=... seconds=... depth=32 request_bytes=4096 submitting_cpus=2
//! ```
//!
//! and each worker's own figures as log lines (`scale: cpu 1 queue 1 ...`).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use drivers::blk::{BufferId, Op};
use drivers::cpu_queues;
use drivers::irq::WaitMode;

use super::bench::{bench_seconds, WARMUP_REQUESTS};
use super::pattern::Rng;
use super::queue_io::{self, Queue};
use super::{Disk, SECTOR};
use crate::println;
use crate::wait::KernelWait;

/// Requests in flight per submitting CPU.
const DEPTH: usize = 32;
/// Bytes per request.
const REQUEST_BYTES: usize = 4096;
/// The workload's name in `results.json`.
const WORKLOAD: &str = "blk.randread.qd32";

/// What one worker measured.
#[derive(Debug, Clone, Copy, Default)]
struct WorkerRun {
    cpu: usize,
    queue: u16,
    requests: u64,
    ticks: u64,
    notifications: u64,
    interrupts: u64,
}

impl WorkerRun {
    fn iops(&self) -> f64 {
        let seconds = self.ticks as f64 / crate::clock::tsc_hz().max(1) as f64;
        if seconds > 0.0 {
            self.requests as f64 / seconds
        } else {
            0.0
        }
    }
}

/// See the module docs.
pub(crate) fn run_scale() -> Result<(), String> {
    super::init();
    if crate::clock::tsc_hz() == 0 {
        return Err("the TSC is not calibrated: nothing can be timed".into());
    }
    let seconds = bench_seconds();
    let (name, queues) = super::with_disks(|disks| {
        let disk = disks.first_mut().ok_or("no disk to measure")?;
        disk.set_wait_mode(WaitMode::Interrupt);
        Ok::<_, String>((disk.name().to_string(), disk.queue_count()))
    })?;
    let cpus = crate::smp::online_cpus();
    println!("bench: scale.setup cpus={cpus} queues={queues} submitting_cpus={cpus}");
    let duration = (seconds * crate::clock::tsc_hz() as f64) as u64;
    for round in 0..crate::peer::repeat_count() {
        let runs = on_every_cpu(&name, queues, duration, round as u64)?;
        report(&runs);
    }
    super::with_disks(|disks| {
        if let Some(disk) = disks.first_mut() {
            for line in disk.queue_lines() {
                log::info!("bench: {} {line}", disk.name());
            }
        }
    });
    Ok(())
}

/// Runs a worker on every online CPU at once and returns their figures.
fn on_every_cpu(
    name: &str,
    queues: u16,
    duration: u64,
    round: u64,
) -> Result<Vec<WorkerRun>, String> {
    let cpus = crate::smp::online_cpus();
    let name = String::from(name);
    let worker = move |cpu: usize| -> Result<WorkerRun, String> {
        let queue = cpu_queues::queue_for_cpu(cpu, cpus, queues);
        let seed = 0x5ca1e ^ (round << 8) ^ cpu as u64;
        super::with_disk_queue(&name, queue, |disk| {
            measure(disk, cpu, queue, duration, seed)
        })
        .map_err(|e| format!("{e}"))?
    };
    // Each CPU's share runs for the measured time plus its warm-up and drain.
    let seconds = duration as f64 / crate::clock::tsc_hz().max(1) as f64;
    let timeout_ns = (seconds * 1e9) as u64 + 30_000_000_000;
    crate::smp::run_on_all(worker, timeout_ns)
        .map_err(|e| format!("scale: {e}"))?
        .into_iter()
        .enumerate()
        .map(|(cpu, run)| run.map_err(|e| format!("cpu {cpu}: {e}")))
        .collect()
}

/// One worker: see the module docs. Runs on CPU `cpu`, holding queue
/// `queue`'s lock of the disk.
fn measure(
    disk: &Disk,
    cpu: usize,
    queue: u16,
    duration: u64,
    seed: u64,
) -> Result<WorkerRun, String> {
    let slots = disk.capacity_sectors() / (REQUEST_BYTES / SECTOR) as u64;
    if slots < DEPTH as u64 {
        return Err("disk too small".into());
    }
    let mut q = disk.blk().lock_queue(queue).map_err(|e| format!("{e}"))?;
    let pieces = queue_io::register(&mut q, DEPTH, REQUEST_BYTES)?;
    let seconds = duration as f64 / crate::clock::tsc_hz().max(1) as f64;
    let mut wait = queue_io::queue_wait(disk, queue, (seconds * 1e9) as u64 + 10_000_000_000);
    let mut rng = Rng::new(seed);
    let outcome = drive(&mut q, &pieces, slots, &mut rng, duration, &mut wait, disk);
    if q.in_flight() == 0 {
        queue_io::unregister(&mut q, &pieces);
    }
    let mut run = outcome?;
    run.cpu = cpu;
    run.queue = queue;
    Ok(run)
}

/// Submits a read into `piece` at a random 4 KiB-aligned offset.
fn submit(
    q: &mut Queue<'_>,
    pieces: &[BufferId],
    piece: usize,
    slots: u64,
    rng: &mut Rng,
    piece_of_slot: &mut [usize],
) -> Result<(), String> {
    let sector = rng.below(slots) * (REQUEST_BYTES / SECTOR) as u64;
    let buffers = core::slice::from_ref(&pieces[piece]);
    let token = q
        .submit(Op::Read { sector, buffers })
        .map_err(|e| format!("submit: {e}"))?;
    piece_of_slot[token.slot()] = piece;
    Ok(())
}

/// Keeps [`DEPTH`] reads in flight until `duration` ticks after the
/// warm-up, then drains.
fn drive(
    q: &mut Queue<'_>,
    pieces: &[BufferId],
    slots: u64,
    rng: &mut Rng,
    duration: u64,
    wait: &mut KernelWait,
    disk: &Disk,
) -> Result<WorkerRun, String> {
    let queue = q.index();
    // The queue answers for itself: `BlkDevice::queue_size` needs `&mut`.
    let mut piece_of_slot = vec![0usize; usize::from(q.size())];
    for piece in 0..pieces.len() {
        submit(q, pieces, piece, slots, rng, &mut piece_of_slot)?;
    }
    q.publish();
    let interrupts = || {
        disk.irq
            .map_or(0, |irq| irq.state().queue_interrupt_count(queue))
    };
    let mut in_flight = pieces.len();
    let mut completed = 0u64;
    let mut done: Vec<usize> = Vec::with_capacity(pieces.len());
    let mut start: Option<(u64, u64, u64, u64)> = None;
    let mut stop_at = u64::MAX;
    while in_flight > 0 {
        done.clear();
        while done.len() < in_flight {
            match q.poll() {
                Ok(Some(c)) => {
                    c.result
                        .map_err(|e| format!("read at sector {}: {e}", c.sector))?;
                    done.push(piece_of_slot[c.token.slot()]);
                }
                Ok(None) => break,
                Err(e) => return Err(format!("poll: {e}")),
            }
        }
        if done.is_empty() {
            queue_io::next_completion_wait(q, wait)
                .map_err(|e| format!("{completed} requests done, then {e}"))?;
            continue;
        }
        completed += done.len() as u64;
        in_flight -= done.len();
        let now = crate::clock::tsc();
        if start.is_none() && completed >= WARMUP_REQUESTS {
            start = Some((now, completed, q.stats().ring.notifications, interrupts()));
            stop_at = now.saturating_add(duration);
        }
        if now >= stop_at {
            continue; // drain: no new requests
        }
        for &piece in &done {
            submit(q, pieces, piece, slots, rng, &mut piece_of_slot)?;
            in_flight += 1;
        }
        q.publish();
    }
    let end = crate::clock::tsc();
    let (started, before, notifications, irqs) = start.ok_or("the run ended during the warm-up")?;
    Ok(WorkerRun {
        cpu: 0,
        queue,
        requests: completed - before,
        ticks: end - started,
        notifications: q.stats().ring.notifications - notifications,
        interrupts: interrupts() - irqs,
    })
}

/// Prints the aggregate line and each worker's.
fn report(runs: &[WorkerRun]) {
    let iops: f64 = runs.iter().map(WorkerRun::iops).sum();
    let requests: u64 = runs.iter().map(|r| r.requests).sum();
    let per_req = |count: u64| count as f64 / requests.max(1) as f64;
    let seconds = runs
        .iter()
        .map(|r| r.ticks as f64 / crate::clock::tsc_hz().max(1) as f64)
        .fold(0.0, f64::max);
    println!(
        "bench: {WORKLOAD}.irq stack=ours iops={iops:.0} mib_per_s={:.2} notifications_per_req={:.3} interrupts_per_req={:.3} requests={requests} seconds={seconds:.3} depth={DEPTH} request_bytes={REQUEST_BYTES} submitting_cpus={}",
        iops * REQUEST_BYTES as f64 / (1024.0 * 1024.0),
        per_req(runs.iter().map(|r| r.notifications).sum()),
        per_req(runs.iter().map(|r| r.interrupts).sum()),
        runs.len()
    );
    for r in runs {
        log::info!(
            "scale: cpu {} queue {} iops={:.0} requests={} interrupts={} notifications={}",
            r.cpu,
            r.queue,
            r.iops(),
            r.requests,
            r.interrupts,
            r.notifications
        );
    }
}
