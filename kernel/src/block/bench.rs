//! The block benchmark (`mode=bench bench=blk`), measured in the guest with
//! the TSC.
//!
//! On one disk (the first, or the one whose serial `bench.disk=` names) it
//! runs each workload for `bench.seconds=` seconds (default 1), once with
//! the driver waiting for interrupts and once polling:
//!
//! | name | requests | in flight | offsets |
//! | --- | --- | --- | --- |
//! | `blk.randread.qd1` | 4 KiB reads | 1 | random, 4 KiB aligned |
//! | `blk.randread.qd32` | 4 KiB reads | 32 | random, 4 KiB aligned |
//! | `blk.randwrite.qd1` | 4 KiB writes | 1 | random, 4 KiB aligned (scratch disks only) |
//! | `blk.seqread.128k` | 128 KiB reads | 8 | consecutive, wrapping |
//! | `blk.seqwrite.128k` | 128 KiB writes | 8 | consecutive (scratch disks only) |
//!
//! The engine keeps the queue at its depth with the non-blocking core:
//! every completion collected is replaced by a new request, all those of
//! one collection under one publish ([`drivers::blk::BlkDevice::start_batch`]),
//! so the device hears at most one notification per batch, and with
//! VIRTIO_F_RING_EVENT_IDX often none. Each result is one line:
//!
//! ```text
//! bench: blk.randread.qd1.irq iops=21034 mib_per_s=82.16 notifications_per_req=1.000 interrupts_per_req=0.999 halts_per_req=0.998 requests=21034 seconds=1.000
//! ```
//!
//! plus one `bench: blk.setup ...` line saying what was measured (disk,
//! transport, interrupt mode, queue size, features). `x.py bench` parses
//! these lines. Timings are reported, never judged.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use drivers::blk::{BlkError, BufferId};
use drivers::device::Wait;
use drivers::irq::{wait_until_used, WaitMode};

use super::pattern::Rng;
use super::{Disk, SECTOR};
use crate::hal_impl::KernelHal;
use crate::println;
use crate::wait::KernelWait;
use hal::DmaBuffer;

/// One workload. The peer stack (`crate::peer::bench`) runs the same list,
/// so both stacks are always measured on identical shapes.
pub(crate) struct Workload {
    pub(crate) name: &'static str,
    pub(crate) request_bytes: usize,
    pub(crate) depth: usize,
    pub(crate) write: bool,
    pub(crate) random: bool,
}

pub(crate) const WORKLOADS: [Workload; 5] = [
    Workload {
        name: "blk.randread.qd1",
        request_bytes: 4096,
        depth: 1,
        write: false,
        random: true,
    },
    Workload {
        name: "blk.randread.qd32",
        request_bytes: 4096,
        depth: 32,
        write: false,
        random: true,
    },
    Workload {
        name: "blk.randwrite.qd1",
        request_bytes: 4096,
        depth: 1,
        write: true,
        random: true,
    },
    Workload {
        name: "blk.seqread.128k",
        request_bytes: 128 * 1024,
        depth: 8,
        write: false,
        random: false,
    },
    Workload {
        name: "blk.seqwrite.128k",
        request_bytes: 128 * 1024,
        depth: 8,
        write: true,
        random: false,
    },
];

/// Requests completed before the clock starts (caches, first interrupts).
pub(crate) const WARMUP_REQUESTS: u64 = 64;

/// What one run measured.
struct Measured {
    requests: u64,
    ticks: u64,
    notifications: u64,
    interrupts: u64,
    halts: u64,
    /// Waits that ended in the spin before a halt (hybrid polling).
    spun: u64,
    /// TSC ticks the CPU spent halted.
    halted: u64,
    /// TSC ticks the guest spent turning completions into new requests
    /// (reaping, resubmitting, notifying), measured part only.
    turnaround: u64,
    /// TSC ticks spent in `finish_batch` (publish + notify) in the sampled
    /// turns only ([`PUBLISH_SAMPLE_EVERY`]).
    publish: u64,
    /// Requests published in the sampled turns.
    publish_requests: u64,
}

/// Time the publish of one turn in this many. Timing it in every turn would
/// cost one more clock read per turn than the peer's engine makes (the
/// peer has no separate publish step to time), and under nested KVM a
/// clock read costs as much as dozens of driver instructions: sampling
/// keeps both engines at the same clock reads per request.
const PUBLISH_SAMPLE_EVERY: u64 = 64;

/// `bench.seconds=` (default 1, at most 60): how long each workload runs.
pub(crate) fn bench_seconds() -> f64 {
    crate::cmdline::get("bench.seconds")
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0 && *s <= 60.0)
        .unwrap_or(1.0)
}

/// Only the workloads named in `names`, waiting by interrupt, on the first
/// disk, with the usual `bench:` lines (the `iommu` section compares them
/// with and without an IOMMU: `iommu/bench.rs`).
pub(crate) fn run_selected(names: &[&str]) -> Result<(), String> {
    super::init();
    let seconds = bench_seconds();
    super::with_disks(|disks| {
        let disk = disks.first_mut().ok_or("no disk to measure")?;
        disk.set_wait_mode(WaitMode::Interrupt);
        for workload in WORKLOADS.iter().filter(|w| names.contains(&w.name)) {
            let measured = measure(disk, workload, seconds)
                .map_err(|e| format!("{}.irq: {e}", workload.name))?;
            report(workload, "irq", &measured);
        }
        Ok(())
    })
}

/// Runs the block benchmark and prints its `bench:` lines.
pub fn run() -> Result<(), String> {
    super::init();
    let seconds = bench_seconds();
    if crate::clock::tsc_hz() == 0 {
        return Err("the TSC is not calibrated: nothing can be timed".into());
    }
    let wanted = crate::cmdline::get("bench.disk");
    super::with_disks(|disks| {
        let disk = match wanted {
            Some(serial) => disks.iter_mut().find(|d| d.serial() == serial),
            None => disks.first_mut(),
        }
        .ok_or_else(|| format!("no disk to measure (bench.disk={wanted:?})"))?;
        let info = disk.info();
        println!(
            "bench: blk.setup disk={} serial={} transport={} irq={} queue_size={} max_segments={} sectors={} seconds={seconds:.3} features={}",
            info.name,
            if info.serial.is_empty() { "-" } else { &info.serial },
            info.transport,
            disk.irq().map_or("none", |irq| irq.mode_name()),
            info.queue_size,
            info.max_segments,
            info.capacity_sectors,
            crate::virtio::FeatureList {
                device_type: drivers::transport::DeviceType::Block,
                bits: info.features
            }
        );
        for mode in [WaitMode::Interrupt, WaitMode::Poll] {
            disk.set_wait_mode(mode);
            let suffix = match mode {
                WaitMode::Interrupt => "irq",
                WaitMode::Poll => "poll",
            };
            for workload in &WORKLOADS {
                if workload.write && !disk.writable() {
                    log::info!(
                        "bench: {} skipped: {} is not a writable scratch disk",
                        workload.name,
                        disk.name()
                    );
                    continue;
                }
                let measured = measure(disk, workload, seconds)
                    .map_err(|e| format!("{}.{suffix}: {e}", workload.name))?;
                report(workload, suffix, &measured);
            }
        }
        disk.set_wait_mode(WaitMode::Interrupt);
        Ok(())
    })
}

fn report(workload: &Workload, suffix: &str, m: &Measured) {
    let seconds = m.ticks as f64 / crate::clock::tsc_hz() as f64;
    let per_req = |count: u64| count as f64 / m.requests.max(1) as f64;
    let iops = m.requests as f64 / seconds;
    println!(
        "bench: {}.{suffix} stack=ours iops={iops:.0} mib_per_s={:.2} notifications_per_req={:.3} interrupts_per_req={:.3} halts_per_req={:.3} spun_per_req={:.3} guest_us_per_req={:.2} turn_ticks_per_req={:.1} busy_ticks_per_req={:.1} publish_us_per_req={:.2} requests={} seconds={seconds:.3} depth={} request_bytes={}",
        workload.name,
        iops * workload.request_bytes as f64 / (1024.0 * 1024.0),
        per_req(m.notifications),
        per_req(m.interrupts),
        per_req(m.halts),
        per_req(m.spun),
        crate::clock::ticks_to_ns(m.turnaround) as f64 / 1000.0 / m.requests.max(1) as f64,
        // Raw TSC ticks: under `-icount shift=0` one tick is one guest
        // instruction (`x.py bench --section cost`).
        per_req(m.turnaround),
        per_req(m.ticks.saturating_sub(m.halted)),
        crate::clock::ticks_to_ns(m.publish) as f64 / 1000.0 / m.publish_requests.max(1) as f64,
        m.requests,
        workload.depth,
        workload.request_bytes
    );
}

/// Where requests go.
struct Offsets {
    random: bool,
    rng: Rng,
    next: u64,
    sectors_per_request: u64,
    slots: u64,
}

impl Offsets {
    fn next(&mut self) -> u64 {
        let slot = if self.random {
            self.rng.below(self.slots)
        } else {
            let slot = self.next % self.slots;
            self.next += 1;
            slot
        };
        slot * self.sectors_per_request
    }
}

/// Runs one workload for `seconds` after a warm-up; see the module docs.
fn measure(disk: &mut Disk, workload: &Workload, seconds: f64) -> Result<Measured, String> {
    let sectors_per_request = (workload.request_bytes / SECTOR) as u64;
    let slots = disk.capacity_sectors() / sectors_per_request;
    if slots < workload.depth as u64 {
        return Err("disk too small".into());
    }
    // One registered DMA buffer per request in flight: the device reads and
    // fills them in place, no copy per request.
    let mut pieces: Vec<BufferId> = Vec::with_capacity(workload.depth);
    for _ in 0..workload.depth {
        let registered =
            DmaBuffer::<KernelHal>::new(disk.location().dma_owner(), workload.request_bytes)
                .map_err(|e| format!("buffer: {e}"))
                .and_then(|b| {
                    disk.device()
                        .register_buffer(b)
                        .map_err(|_| String::from("buffer table full"))
                });
        match registered {
            Ok(id) => pieces.push(id),
            Err(e) => {
                unregister(disk, &pieces);
                return Err(e);
            }
        }
    }
    let mut offsets = Offsets {
        random: workload.random,
        rng: Rng::new(0xbe9c4),
        next: 0,
        sectors_per_request,
        slots,
    };
    let duration = (seconds * crate::clock::tsc_hz() as f64) as u64;
    // The whole run may take the measured time plus a generous margin.
    let mut wait = disk.new_wait_for((seconds * 1e9) as u64 + 10_000_000_000);
    let outcome = drive(disk, workload, &pieces, &mut offsets, duration, &mut wait);
    if disk.device().in_flight() > 0 {
        // Requests still hold buffers: the reset gives them back.
        log::warn!(
            "bench: {}: requests left in flight; resetting the device",
            disk.name()
        );
        let _ = disk.device().recover();
    }
    unregister(disk, &pieces);
    outcome
}

/// Frees the benchmark's registered buffers.
fn unregister(disk: &mut Disk, pieces: &[BufferId]) {
    for &id in pieces {
        drop(disk.device().unregister_buffer(id));
    }
}

/// Submits request number `piece` (its buffer) at the next offset.
fn submit(
    disk: &mut Disk,
    workload: &Workload,
    pieces: &[BufferId],
    piece: usize,
    offsets: &mut Offsets,
    piece_of_slot: &mut [usize],
) -> Result<(), BlkError> {
    let sector = offsets.next();
    let buffer = core::slice::from_ref(&pieces[piece]);
    // Each piece is in at most one request at a time: it is resubmitted
    // only after its completion was collected (the device refuses a lent
    // buffer anyway).
    let token = if workload.write {
        disk.device().submit_write(sector, buffer)
    } else {
        disk.device().submit_read(sector, buffer)
    }?;
    piece_of_slot[token.slot()] = piece;
    Ok(())
}

fn drive(
    disk: &mut Disk,
    workload: &Workload,
    pieces: &[BufferId],
    offsets: &mut Offsets,
    duration: u64,
    wait: &mut KernelWait,
) -> Result<Measured, String> {
    let queue_size = usize::from(disk.device().queue_size(0).unwrap_or(0));
    let mut piece_of_slot = vec![0usize; queue_size];
    let mut done: Vec<usize> = Vec::with_capacity(workload.depth);
    disk.device().start_batch();
    for piece in 0..workload.depth {
        submit(disk, workload, pieces, piece, offsets, &mut piece_of_slot)
            .map_err(|e| format!("first submissions: {e}"))?;
    }
    disk.device().finish_batch();

    let mut completed = 0u64;
    let mut start: Option<(u64, Measured)> = None;
    let mut stop_at = u64::MAX;
    let mut in_flight = workload.depth;
    let mut turnaround = 0u64;
    let mut publish = 0u64;
    let mut publish_requests = 0u64;
    let mut turns = 0u64;
    while in_flight > 0 {
        let turn_started = crate::clock::tsc();
        // Collect everything that is there; once every request in flight
        // is back there is nothing left to look for (at depth 1 that saves
        // a poll of an empty ring per request).
        done.clear();
        while done.len() < in_flight {
            match disk.device().poll() {
                Ok(Some(completion)) => {
                    if let Err(e) = completion.result {
                        return Err(format!("request at sector {}: {e}", completion.sector));
                    }
                    done.push(piece_of_slot[completion.token.slot()]);
                }
                Ok(None) => break,
                Err(e) => return Err(format!("poll: {e}")),
            }
        }
        if done.is_empty() {
            let waited = if wait.sleeps_until_interrupt() {
                wait_until_used(
                    wait,
                    disk.device(),
                    |d| d.enable_interrupts(),
                    |d| d.disable_interrupts(),
                )
                .map(|_| ())
            } else {
                wait.wait()
            };
            waited
                .map_err(|t| format!("{completed} requests done, then the wait gave up ({t})"))?;
            continue;
        }
        completed += done.len() as u64;
        in_flight -= done.len();
        let now = crate::clock::tsc();
        if start.is_none() && completed >= WARMUP_REQUESTS {
            start = Some((now, snapshot(disk, wait, completed)));
            stop_at = now.saturating_add(duration);
        }
        if now >= stop_at {
            continue; // drain: no new requests
        }
        // Replace them, under one publish.
        disk.device().start_batch();
        for &piece in &done {
            if let Err(e) = submit(disk, workload, pieces, piece, offsets, &mut piece_of_slot) {
                disk.device().finish_batch();
                return Err(format!("resubmitting: {e}"));
            }
            in_flight += 1;
        }
        turns += 1;
        let sampled = start.is_some() && turns.is_multiple_of(PUBLISH_SAMPLE_EVERY);
        let publish_started = if sampled { crate::clock::tsc() } else { 0 };
        disk.device().finish_batch();
        if start.is_some() {
            let now = crate::clock::tsc();
            turnaround += now - turn_started;
            if sampled {
                publish += now - publish_started;
                publish_requests += done.len() as u64;
            }
        }
    }
    let end = crate::clock::tsc();
    let (started, before) = start.ok_or("the run ended during the warm-up")?;
    let after = snapshot(disk, wait, completed);
    Ok(Measured {
        requests: after.requests - before.requests,
        ticks: end - started,
        notifications: after.notifications - before.notifications,
        interrupts: after.interrupts - before.interrupts,
        halts: after.halts - before.halts,
        spun: after.spun - before.spun,
        halted: after.halted - before.halted,
        turnaround,
        publish,
        publish_requests,
    })
}

/// The counters at one moment (`ticks` unused).
fn snapshot(disk: &mut Disk, wait: &KernelWait, completed: u64) -> Measured {
    Measured {
        requests: completed,
        ticks: 0,
        notifications: disk.device().stats().ring.notifications,
        interrupts: disk.interrupt_count(),
        halts: wait.stats().halts,
        spun: wait.stats().spun,
        halted: crate::wait::halted_ticks(),
        turnaround: 0,
        publish: 0,
        publish_requests: 0,
    }
}
