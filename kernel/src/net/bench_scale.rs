//! The network half of `x.py bench --section scale` (`mode=bench
//! bench=netscale`): 64-byte frames sent on a multiqueue card (virtio 1.2
//! §5.1.6.2, §5.1.6.5.5), measured in the guest with the TSC.
//!
//! `x.py` boots it once per vCPU count N with a tap of N queues in a network
//! namespace (`-device virtio-net-pci,mq=on`, `net.pairs=N`): every CPU that
//! submits sends on its own queue pair (`NetDevice::tx_pair_for_cpu`). The
//! frames go to a unicast address nobody has, so the host's tap drops them
//! after QEMU wrote them: what is measured is the guest's transmit path and
//! QEMU's, not a receiver. Frames go out in batches of [`BATCH`], one
//! `flush` (at most one notification per busy queue) per batch; sent buffers
//! are reclaimed when the queue needs room. One line saying what ran, then
//! one per run:
//!
//! ```text
//! bench: netscale.setup cpus=1 pairs=4 active_pairs=4 submitting_cpus=1 frame_bytes=64
//! bench: net.tx64.poll stack=ours pps=... sent=... notifications=... pairs_used=1
//! ```
//!
//! Until CPUs other than the bootstrap processor can be given work, only CPU
//! 0 submits (`submitting_cpus=1`): the figure is one pair's, whatever the
//! number of vCPUs, like the block half (`block::bench::run_scale`).

use alloc::format;
use alloc::string::String;

use drivers::net::NetError;

use super::bench::{build_frame, BATCH, FRAME_LEN, GRACE_NS};
use super::nic;
use crate::println;

/// A locally administered unicast address no card has: the host drops the
/// frames without looking further.
const NOBODY: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x64];

/// Runs the `netscale` section and prints its `bench:` lines.
pub fn run() -> Result<(), String> {
    let seconds = crate::block::bench::bench_seconds();
    if crate::clock::tsc_hz() == 0 {
        return Err("the TSC is not calibrated: nothing can be timed".into());
    }
    let mut nics = nic::nics();
    let card = nics.first_mut().ok_or("no network card to measure")?;
    println!(
        "bench: netscale.setup cpus={} pairs={} active_pairs={} submitting_cpus=1 frame_bytes={FRAME_LEN} batch={BATCH}",
        crate::smp::online_cpus(),
        card.device.queue_pairs(),
        card.device.active_queue_pairs(),
    );
    for _ in 0..crate::peer::repeat_count() {
        let pair = card.device.tx_pair_for_cpu(crate::smp::current_cpu());
        let measured =
            measure(&mut card.device, pair, seconds).map_err(|e| format!("net.tx64: {e}"))?;
        println!(
            "bench: net.tx64.poll stack=ours pps={:.0} sent={} notifications={} pairs_used=1 pair={pair}",
            measured.pps, measured.sent, measured.notifications
        );
    }
    Ok(())
}

struct Measured {
    pps: f64,
    sent: u64,
    notifications: u64,
}

/// Sends for `seconds` on pair `pair`; counts the frames the device took back.
fn measure(
    device: &mut nic::KernelNetDevice,
    pair: u16,
    seconds: f64,
) -> Result<Measured, NetError> {
    let from = device.mac().0;
    let before = device.pair_stats(pair).unwrap_or_default();
    let start = crate::clock::uptime_ns();
    let budget_ns = (seconds * 1e9) as u64;
    let mut sequence = 0u64;
    while crate::clock::uptime_ns().saturating_sub(start) < budget_ns {
        let Some((_, tx)) = device.pair(pair) else {
            return Err(NetError::BadConfig("no such queue pair"));
        };
        for _ in 0..BATCH {
            match tx.send_with(FRAME_LEN, |buffer| {
                build_frame(buffer, NOBODY, from, sequence)
            }) {
                Ok(()) => sequence += 1,
                Err(NetError::TxQueueFull) => break,
                Err(error) => return Err(error),
            }
        }
        device.flush();
    }
    let elapsed_ns = crate::clock::uptime_ns().saturating_sub(start);
    // Frames still in flight are collected (not waited for by the clock).
    let grace_end = crate::clock::uptime_ns() + GRACE_NS;
    while crate::clock::uptime_ns() < grace_end {
        match device.pair(pair) {
            Some((_, tx)) if tx.in_flight() > 0 => {
                tx.reclaim()?;
            }
            _ => break,
        }
    }
    let after = device.pair_stats(pair).unwrap_or_default();
    let sent = after.tx.packets - before.tx.packets;
    let secs = elapsed_ns as f64 / 1e9;
    Ok(Measured {
        pps: if secs > 0.0 { sent as f64 / secs } else { 0.0 },
        sent,
        notifications: after.tx_ring.notifications - before.tx_ring.notifications,
    })
}
