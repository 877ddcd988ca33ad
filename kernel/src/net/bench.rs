//! The network benchmark (`mode=bench bench=net`), measured in the guest
//! with the TSC.
//!
//! Two cards on one QEMU hub (`-netdev hubport`, the pair the hub self-test
//! uses): `net0` transmits small frames as fast as its transmit queue takes
//! them, `net1` receives them, for `bench.seconds=` seconds (default 1),
//! `bench.repeat=` times. Frames go out in batches of [`BATCH`], each batch
//! published with one `flush` (so at most one notification, virtio 1.2
//! §2.7.13 and §5.1.6.2), and the receiver is drained and its buffers
//! reposted after every batch (§5.1.6.3). Both cards are polled: the
//! interrupt counts say what the device raised anyway. One line per run:
//!
//! ```text
//! bench: net.pps.poll stack=ours tx_pps=... rx_pps=... sent=... received=... lost=... loss_pct=... ...
//! ```
//!
//! plus one `bench: net.setup ...` line naming the cards. Frames still in
//! flight when the clock stops are collected for a short grace period, so
//! `lost` counts frames the hub or the receiver really dropped (a receive
//! queue out of buffers). Timings are reported, never judged.
//!
//! Each round then runs the same workload on the peer stack
//! ([`crate::peer::net::round`], `bench: net.pps.peer stack=peer ...`):
//! both cards are reset through our drivers, handed to virtio-drivers'
//! `VirtIONetRaw`, measured, and brought back up by our drivers, so the
//! next round of ours runs on cards that went through the peer.

use alloc::format;
use alloc::string::String;

use drivers::net::NetError;
use drivers::transport::Location;

use super::nic::{self, Nic};
use crate::println;

/// Frame length without the virtio header: the 64-byte minimum Ethernet
/// frame less its 4-byte FCS, which QEMU never carries, plus those 4 bytes
/// of payload: 64 bytes handed to the device.
pub(crate) const FRAME_LEN: usize = 64;
/// Frames added to the transmit queue before one publish.
pub(crate) const BATCH: usize = 32;
/// An EtherType from the IEEE "local experimental" range, so that the
/// receiver counts only benchmark frames (not DHCP or ARP on the hub).
pub(crate) const BENCH_ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// How long the receiver is drained after the clock stops.
pub(crate) const GRACE_NS: u64 = 50_000_000;

/// The counters of the pair at one moment.
#[derive(Clone, Copy)]
struct Counters {
    tx_packets: u64,
    tx_notifications: u64,
    tx_interrupts: u64,
    rx_packets: u64,
    rx_notifications: u64,
    rx_interrupts: u64,
}

/// The virtio-net receive queue is queue 0, transmit queue 1 (§5.1.2).
pub(crate) const RX_QUEUE: u16 = 0;
pub(crate) const TX_QUEUE: u16 = 1;

/// Interrupts the kernel counted for `queue` of the card at `location`.
pub(crate) fn interrupts(location: Location, queue: u16) -> u64 {
    crate::virtio::irq::of(location).map_or(0, |irq| irq.state().queue_interrupt_count(queue))
}

fn counters(sender: &Nic, receiver: &Nic) -> Counters {
    let tx = sender.device.stats();
    let rx = receiver.device.stats();
    Counters {
        tx_packets: tx.tx.packets,
        tx_notifications: tx.tx_ring.notifications,
        tx_interrupts: interrupts(sender.location, TX_QUEUE),
        rx_packets: rx.rx.packets,
        rx_notifications: rx.rx_ring.notifications,
        rx_interrupts: interrupts(receiver.location, RX_QUEUE),
    }
}

/// Runs the network benchmark and prints its `bench:` lines.
pub fn run() -> Result<(), String> {
    let seconds = crate::cmdline::get("bench.seconds")
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0 && *s <= 60.0)
        .unwrap_or(1.0);
    if crate::clock::tsc_hz() == 0 {
        return Err("the TSC is not calibrated: nothing can be timed".into());
    }
    let mut nics = nic::nics();
    let [sender, receiver, ..] = nics.as_mut_slice() else {
        return Err(format!(
            "two cards on one hub are needed, found {}",
            nic::count()
        ));
    };
    println!(
        "bench: net.setup sender={} receiver={} sender_mac={} receiver_mac={} frame_bytes={FRAME_LEN} batch={BATCH} seconds={seconds:.3} sender_irq={} receiver_irq={}",
        sender.name,
        receiver.name,
        sender.device.mac(),
        receiver.device.mac(),
        sender.interrupt_driven(),
        receiver.interrupt_driven(),
    );
    // Alternating keeps slow drift on the host from favouring one stack.
    for round in 0..crate::peer::repeat_count() {
        measure(sender, receiver, seconds)?;
        crate::peer::net::round(sender, receiver, seconds, round == 0)
            .map_err(|e| format!("peer (virtio-drivers): {e}"))?;
    }
    Ok(())
}

/// Fills `buffer` with one benchmark frame carrying `sequence`.
pub(crate) fn build_frame(buffer: &mut [u8], to: [u8; 6], from: [u8; 6], sequence: u64) {
    buffer[..6].copy_from_slice(&to);
    buffer[6..12].copy_from_slice(&from);
    buffer[12..14].copy_from_slice(&BENCH_ETHERTYPE);
    buffer[14..22].copy_from_slice(&sequence.to_be_bytes());
    buffer[22..].fill(0x5a);
}

/// Receives everything `receiver` has and reposts the buffers; returns the
/// benchmark frames among it. `repost_ticks` grows by the time spent
/// reposting (refill, publish, notify).
fn drain(receiver: &mut Nic, repost_ticks: &mut u64) -> Result<u64, NetError> {
    let mut frames = 0;
    let rx = receiver.device.rx();
    while let Some(packet) = rx.receive()? {
        let data = packet.data();
        if data.len() >= 14 && data[12..14] == BENCH_ETHERTYPE {
            frames += 1;
        }
    }
    let started = crate::clock::tsc();
    receiver.flush();
    *repost_ticks += crate::clock::tsc() - started;
    Ok(frames)
}

/// One timed run; prints its line.
fn measure(sender: &mut Nic, receiver: &mut Nic, seconds: f64) -> Result<(), String> {
    let to = receiver.device.mac().0;
    let from = sender.device.mac().0;
    drain(receiver, &mut 0).map_err(|e| format!("draining before the run: {e}"))?;
    let before = counters(sender, receiver);
    let duration = (seconds * crate::clock::tsc_hz() as f64) as u64;
    let started = crate::clock::tsc();
    let stop_at = started.saturating_add(duration);
    let mut sequence = 0u64;
    let mut received = 0u64;
    let mut full = 0u64;
    // TSC ticks in the sender's publish (notify included) and in the
    // receiver's drain: where a batch's time goes.
    let mut publish_ticks = 0u64;
    let mut drain_ticks = 0u64;
    let mut repost_ticks = 0u64;
    let mut batches = 0u64;
    loop {
        let now = crate::clock::tsc();
        if now >= stop_at {
            break;
        }
        let tx = sender.device.tx();
        for _ in 0..BATCH {
            match tx.reserve(FRAME_LEN) {
                Ok(mut slot) => {
                    build_frame(slot.buffer(), to, from, sequence);
                    slot.send().map_err(|e| format!("send: {e}"))?;
                    sequence += 1;
                }
                Err(NetError::TxQueueFull) => {
                    full += 1;
                    break;
                }
                Err(e) => return Err(format!("reserve: {e}")),
            }
        }
        let publish_started = crate::clock::tsc();
        sender.flush();
        let drain_started = crate::clock::tsc();
        received += drain(receiver, &mut repost_ticks).map_err(|e| format!("receive: {e}"))?;
        publish_ticks += drain_started - publish_started;
        drain_ticks += crate::clock::tsc() - drain_started;
        batches += 1;
    }
    let elapsed = crate::clock::tsc() - started;
    let sent = sequence;
    // Frames still in the hub or the receive ring: counted, not timed.
    let grace_until = crate::clock::uptime_ns() + GRACE_NS;
    let mut late = 0u64;
    while crate::clock::uptime_ns() < grace_until && received + late < sent {
        late += drain(receiver, &mut 0).map_err(|e| format!("receive: {e}"))?;
        let _ = sender.device.tx().reclaim();
    }
    let after = counters(sender, receiver);
    let tx_packets = after.tx_packets - before.tx_packets;
    let rx_packets = after.rx_packets - before.rx_packets;
    PpsRun {
        name: "net.pps.poll",
        stack: "ours",
        elapsed_ticks: elapsed,
        sent,
        received,
        late,
        tx_queue_full: full,
        batches,
        tx_notifications: (after.tx_notifications - before.tx_notifications, tx_packets),
        rx_notifications: (after.rx_notifications - before.rx_notifications, rx_packets),
        tx_interrupts: (after.tx_interrupts - before.tx_interrupts, tx_packets),
        rx_interrupts: (after.rx_interrupts - before.rx_interrupts, rx_packets),
        publish_ticks,
        drain_ticks,
        repost_ticks,
    }
    .print();
    Ok(())
}

/// What one timed run of either stack counted; [`PpsRun::print`] writes
/// the `bench: net.pps.<mode>` line x.py parses, the same for both stacks.
pub(crate) struct PpsRun {
    /// `net.pps.poll` (ours) or `net.pps.peer`.
    pub name: &'static str,
    /// `ours` or `peer`.
    pub stack: &'static str,
    pub elapsed_ticks: u64,
    /// Frames handed to the transmit queue while the clock ran.
    pub sent: u64,
    /// Benchmark frames received while the clock ran.
    pub received: u64,
    /// Benchmark frames received in the grace period after it.
    pub late: u64,
    /// Batches cut short by a full transmit queue.
    pub tx_queue_full: u64,
    pub batches: u64,
    /// (events, packets they are counted per), for each rate below.
    pub tx_notifications: (u64, u64),
    pub rx_notifications: (u64, u64),
    pub tx_interrupts: (u64, u64),
    pub rx_interrupts: (u64, u64),
    /// TSC ticks publishing, draining and reposting, over all batches.
    pub publish_ticks: u64,
    pub drain_ticks: u64,
    pub repost_ticks: u64,
}

impl PpsRun {
    pub(crate) fn print(&self) {
        let secs = crate::clock::ticks_to_ns(self.elapsed_ticks) as f64 / 1e9;
        let per = |count: u64, packets: u64| count as f64 / packets.max(1) as f64;
        let per_pair = |(count, packets): (u64, u64)| per(count, packets);
        let us_per_batch =
            |ticks: u64| per(crate::clock::ticks_to_ns(ticks), self.batches) / 1000.0;
        let (sent, late, full, batches) = (self.sent, self.late, self.tx_queue_full, self.batches);
        let total_received = self.received + late;
        let lost = sent.saturating_sub(total_received);
        println!(
            "bench: {} stack={} tx_pps={:.0} rx_pps={:.0} sent={sent} received={total_received} late={late} lost={lost} loss_pct={:.3} tx_notifications_per_pkt={:.4} rx_notifications_per_pkt={:.4} tx_interrupts_per_pkt={:.4} rx_interrupts_per_pkt={:.4} tx_queue_full={full} batches={batches} publish_us_per_batch={:.1} drain_us_per_batch={:.1} repost_us_per_batch={:.1} ticks_per_pkt={:.1} seconds={secs:.3} frame_bytes={FRAME_LEN} batch={BATCH}",
            self.name,
            self.stack,
            sent as f64 / secs,
            self.received as f64 / secs,
            per(lost * 100, sent),
            per_pair(self.tx_notifications),
            per_pair(self.rx_notifications),
            per_pair(self.tx_interrupts),
            per_pair(self.rx_interrupts),
            us_per_batch(self.publish_ticks),
            us_per_batch(self.drain_ticks),
            us_per_batch(self.repost_ticks),
            // Raw TSC ticks per frame sent (and received): one guest
            // instruction each under `-icount shift=0`.
            per(self.elapsed_ticks, sent),
        );
    }
}
