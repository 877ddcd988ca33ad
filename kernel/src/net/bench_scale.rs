//! The network half of `x.py bench --section scale` (`mode=bench
//! bench=netscale`): 64-byte frames sent on a multiqueue card (virtio 1.2
//! §5.1.6.2, §5.1.6.5.5) from every CPU at once, each CPU on its own queue
//! pair, measured in the guest with the TSC.
//!
//! `x.py` boots it once per vCPU count N with a tap of N queues in a network
//! namespace (`-device virtio-net-pci,mq=on`, `net.pairs=N`). Every online
//! CPU runs a worker (CPU 0 itself, the others through
//! `crate::smp::run_on_all`) that takes the card by its own CPU's lock of
//! the card list ([`nic::with_card_for_cpu`]) and its own pair's transmit
//! queue ([`drivers::net::NetDevice::lock_tx`], the per-pair path): no lock
//! is shared between the workers. Each sends frames in batches of [`BATCH`],
//! one publish (at most one notification) per batch; when the queue is full
//! it reclaims what the device sent, and if nothing was sent yet it sleeps
//! on its transmit queue's interrupt, whose MSI-X message is addressed to
//! it (`nic::owner_cpu`). The frames go to a unicast address nobody has, so
//! the host's tap drops them after QEMU wrote them: what is measured is the
//! guest's transmit path and QEMU's, not a receiver.
//!
//! One line saying what ran, then one aggregate line per run (the sum of
//! the workers' rates), then each worker's figures as log lines:
//!
//! ```text
//! bench: netscale.setup cpus=2 pairs=2 active_pairs=2 submitting_cpus=2 frame_bytes=64 batch=32
//! bench: net.tx64.irq stack=ours pps=... sent=... notifications=... interrupts=... pairs_used=2 submitting_cpus=2
//! netscale: cpu 1 pair 1 pps=... sent=... notifications=... queue_interrupts=... cpu_interrupts=... irq_cpu=1
//! ```
//!
//! `queue_interrupts` counts the pair's transmit-queue interrupts,
//! `cpu_interrupts` every interrupt the worker's CPU took while it ran
//! (its waits' watchdog ticks included), `irq_cpu` the CPU the queue's
//! MSI-X message is addressed to: with the steering right, `irq_cpu` is the
//! worker's CPU and the first count is at most the second.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use drivers::irq::{wait_until_used, QueueSet};
use drivers::net::NetError;

use super::bench::{build_frame, BATCH, FRAME_LEN};
use super::nic::{self, Nic};
use crate::println;

/// A locally administered unicast address no card has: the host drops the
/// frames without looking further.
const NOBODY: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x64];

/// The workload's name in `results.json`.
const WORKLOAD: &str = "net.tx64";

/// What one worker measured.
#[derive(Debug, Clone, Copy, Default)]
struct WorkerRun {
    cpu: usize,
    pair: u16,
    sent: u64,
    ticks: u64,
    notifications: u64,
    queue_interrupts: u64,
    cpu_interrupts: u64,
    /// The CPU the transmit queue's MSI-X message is addressed to.
    irq_cpu: Option<usize>,
}

impl WorkerRun {
    fn pps(&self) -> f64 {
        let seconds = self.ticks as f64 / crate::clock::tsc_hz().max(1) as f64;
        if seconds > 0.0 {
            self.sent as f64 / seconds
        } else {
            0.0
        }
    }
}

/// Runs the `netscale` section and prints its `bench:` lines.
pub fn run() -> Result<(), String> {
    let seconds = crate::block::bench::bench_seconds();
    if crate::clock::tsc_hz() == 0 {
        return Err("the TSC is not calibrated: nothing can be timed".into());
    }
    let cpus = crate::smp::online_cpus();
    {
        let nics = nic::nics();
        let card = nics.first().ok_or("no network card to measure")?;
        println!(
            "bench: netscale.setup cpus={cpus} pairs={} active_pairs={} submitting_cpus={cpus} frame_bytes={FRAME_LEN} batch={BATCH} irq={}",
            card.device.queue_pairs(),
            card.device.active_queue_pairs(),
            card.interrupt_driven(),
        );
    }
    let duration = (seconds * crate::clock::tsc_hz() as f64) as u64;
    for _ in 0..crate::peer::repeat_count() {
        let runs = on_every_cpu(duration)?;
        report(&runs);
    }
    Ok(())
}

/// Runs a worker on every online CPU at once and returns their figures.
fn on_every_cpu(duration: u64) -> Result<Vec<WorkerRun>, String> {
    let worker = move |cpu: usize| -> Result<WorkerRun, String> {
        nic::with_card_for_cpu(cpu, |cards| {
            let card = cards.first().ok_or("no network card to measure")?;
            let pair = card.device.tx_pair_for_cpu(cpu);
            measure(card, cpu, pair, duration).map_err(|e| format!("pair {pair}: {e}"))
        })
    };
    let seconds = duration as f64 / crate::clock::tsc_hz().max(1) as f64;
    let timeout_ns = (seconds * 1e9) as u64 + 30_000_000_000;
    crate::smp::run_on_all(worker, timeout_ns)
        .map_err(|e| format!("netscale: {e}"))?
        .into_iter()
        .enumerate()
        .map(|(cpu, run)| run.map_err(|e| format!("{WORKLOAD}: cpu {cpu}: {e}")))
        .collect()
}

/// This CPU's interrupt count (every vector).
fn cpu_interrupts(cpu: usize) -> u64 {
    crate::smp::CPUS[cpu]
        .interrupts
        .load(core::sync::atomic::Ordering::Relaxed)
}

/// One worker: sends on pair `pair`'s transmit queue for `duration` TSC
/// ticks, holding only that queue's lock (and CPU `cpu`'s lock of the card
/// list). Counts the frames the queue took.
fn measure(card: &Nic, cpu: usize, pair: u16, duration: u64) -> Result<WorkerRun, NetError> {
    let from = card.device.mac().0;
    let mut tx = card.device.lock_tx(pair)?;
    let queue = tx.queue_index();
    let seconds = duration as f64 / crate::clock::tsc_hz().max(1) as f64;
    let mut wait = crate::wait::for_device(
        crate::virtio::irq::of(card.location),
        QueueSet::single(queue),
        (seconds * 1e9) as u64 + 10_000_000_000,
    );
    let queue_interrupts = || super::bench::interrupts(card.location, queue);
    let irq_cpu =
        crate::virtio::irq::of(card.location).and_then(|irq| irq.msix_cpu_of_queue(queue));
    let (packets, notifications) = (tx.stats().packets, tx.ring_counters().notifications);
    let (irqs, cpu_irqs) = (queue_interrupts(), cpu_interrupts(cpu));
    // The frame carries the pair in its top byte of the sequence number.
    let mut sequence = u64::from(pair) << 56;
    let start = crate::clock::tsc();
    let stop_at = start.saturating_add(duration);
    while crate::clock::tsc() < stop_at {
        let mut added = 0;
        for _ in 0..BATCH {
            match tx.send_with(FRAME_LEN, |buffer| {
                build_frame(buffer, NOBODY, from, sequence)
            }) {
                Ok(()) => {
                    sequence += 1;
                    added += 1;
                }
                Err(NetError::TxQueueFull) => break,
                Err(error) => return Err(error),
            }
        }
        tx.publish();
        if added == 0 && tx.reclaim()? == 0 {
            // Full and nothing sent yet: sleep on this pair's transmit
            // interrupt (re-armed and the ring looked at again first).
            wait_until_used(
                &mut wait,
                &mut *tx,
                |q| q.enable_interrupts(),
                |q| q.disable_interrupts(),
            )
            .map_err(|_| NetError::Timeout { waits: 0 })?;
        }
    }
    let end = crate::clock::tsc();
    Ok(WorkerRun {
        cpu,
        pair,
        sent: tx.stats().packets - packets,
        ticks: end - start,
        notifications: tx.ring_counters().notifications - notifications,
        queue_interrupts: queue_interrupts() - irqs,
        cpu_interrupts: cpu_interrupts(cpu) - cpu_irqs,
        irq_cpu,
    })
}

/// Prints the aggregate line and each worker's.
fn report(runs: &[WorkerRun]) {
    let pps: f64 = runs.iter().map(WorkerRun::pps).sum();
    let sent: u64 = runs.iter().map(|r| r.sent).sum();
    let mut pairs: Vec<u16> = runs.iter().map(|r| r.pair).collect();
    pairs.sort_unstable();
    pairs.dedup();
    println!(
        "bench: {WORKLOAD}.irq stack=ours pps={pps:.0} sent={sent} notifications={} interrupts={} pairs_used={} submitting_cpus={}",
        runs.iter().map(|r| r.notifications).sum::<u64>(),
        runs.iter().map(|r| r.queue_interrupts).sum::<u64>(),
        pairs.len(),
        runs.len()
    );
    for r in runs {
        println!(
            "netscale: cpu {} pair {} pps={:.0} sent={} notifications={} queue_interrupts={} cpu_interrupts={} irq_cpu={}",
            r.cpu,
            r.pair,
            r.pps(),
            r.sent,
            r.notifications,
            r.queue_interrupts,
            r.cpu_interrupts,
            r.irq_cpu.map_or(String::from("none"), |c| format!("{c}"))
        );
    }
}
