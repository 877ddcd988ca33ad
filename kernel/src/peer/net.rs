//! The network workload on the peer stack (`mode=bench bench=net`): the
//! same two cards, frames, EtherType, batches and clock as
//! [`crate::net::bench`], driven through `virtio_drivers::device::net`
//! (virtio 1.2 §5.1.6: transmitting and receiving packets).
//!
//! Each round of `bench=net` runs our stack first, then [`round`]: both
//! cards are reset through our drivers (§3.1.1 step 1: from then on the
//! devices hold none of our rings or buffers), handed to the peer
//! ([`super::pci::take_over`]), measured, dropped (the peer's transport
//! resets them) and brought back by our driver (`NetDevice::recover`, a
//! fresh §3.1.1 initialisation on its own rings), so that the next round
//! of ours runs on cards that went through the peer.
//!
//! ## How the peer is driven
//!
//! `VirtIONetRaw`, not `VirtIONet`: `VirtIONet::send` waits for each frame
//! to complete before it returns, one frame in flight at a time, while
//! `VirtIONetRaw` can keep the whole transmit queue busy as ours does
//! (`transmit_begin` now, `poll_transmit` / `transmit_complete` later) and
//! lets the caller own the buffers, as our benchmark's DMA buffers are.
//! Both queues get 256 entries, as ours have (`net.qsize=` default); the
//! receiver posts 256 buffers of 1536 bytes (the peer wants at least 1526).
//!
//! The shape is ours: per batch, up to [`BATCH`] 64-byte frames are added
//! to the sender's transmit queue, then the receiver is drained and each
//! buffer reposted. The difference is the API's: the peer publishes each
//! frame (and each reposted receive buffer) as it adds it and decides right
//! there whether to notify, where ours adds a whole batch and publishes it
//! with one `flush`. That is compared as it is; the notifications it ends
//! up sending are counted by a transport wrapper ([`super::counted`]).
//!
//! With VIRTIO_F_EVENT_IDX (both stacks negotiate it) the peer's
//! `should_notify` asks `avail_idx >= avail_event + 1`, not whether this
//! publish moved the index past `avail_event` (§2.7.10's
//! `vring_need_event(event, new, old)`). QEMU sets `avail_event` to the
//! last entry it has taken, so while it is behind, every add passes the
//! peer's test: in this workload the peer notifies once per frame and once
//! per reposted receive buffer (`tx_notifications_per_pkt=1.0000`,
//! `rx_notifications_per_pkt=1.0000`), where ours notifies about once per
//! batch on transmit and not at all on receive.
//! Both stacks poll; the peer never programs an MSI-X vector, so its
//! interrupt counts are those of the kernel's interrupt code (expected 0).
//!
//! ## Output
//!
//! ```text
//! bench: net.peer.setup stack=peer sender=pci 0000:00:03.0 ... queue_size=256 bringup_us=...
//! bench: net.pps.peer stack=peer tx_pps=... rx_pps=... sent=... received=... lost=... tx_notifications_per_pkt=... ...
//! ```

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use drivers::transport::Transport;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::pci::PciTransport;

use super::counted::{Counted, Notifications};
use super::hal::PeerHal;
use super::pci::{take_over, PeerError};
use crate::block::IoBuffer;
use crate::net::bench::{
    build_frame, interrupts, PpsRun, BATCH, BENCH_ETHERTYPE, FRAME_LEN, GRACE_NS, RX_QUEUE,
    TX_QUEUE,
};
use crate::net::nic::Nic;
use crate::println;

/// Entries per queue: what our driver uses by default.
const QUEUE_SIZE: usize = 256;
/// The peer's driver on our machine, with its notifications counted.
type PeerNet = VirtIONetRaw<PeerHal, Counted<PciTransport>, QUEUE_SIZE>;
/// Receive buffer size: at least the peer's minimum (1526), rounded as ours.
const RX_BUFFER_LEN: usize = 1536;
/// Room for one transmit buffer: the virtio-net header and the frame.
const TX_SLOT_LEN: usize = 128;

/// One card in the peer's hands.
struct PeerCard {
    net: PeerNet,
    notifications: Arc<Notifications>,
}

/// Resets both cards through our drivers, measures them on the peer, and
/// gives them back to our drivers, which bring them up again.
pub fn round(
    sender: &mut Nic,
    receiver: &mut Nic,
    seconds: f64,
    print_setup: bool,
) -> Result<(), String> {
    for nic in [&mut *sender, &mut *receiver] {
        nic.device
            .transport_mut()
            .reset()
            .map_err(|e| format!("resetting {} for the peer: {e}", nic.name))?;
    }
    let outcome = on_peer(sender, receiver, seconds, print_setup);
    // The peer is gone (its transport reset both cards): our driver builds
    // its queues again, posts fresh receive buffers, and the card is ours.
    for nic in [sender, receiver] {
        nic.device
            .recover()
            .map_err(|e| format!("{}: taking the card back from the peer: {e}", nic.name))?;
    }
    outcome
}

/// Brings the peer up on a card our driver has reset.
fn hand_over(nic: &Nic) -> Result<PeerCard, String> {
    let location = nic.location;
    let transport = take_over(location).map_err(|e| format!("{}: {e}", nic.name))?;
    let (transport, notifications) = Counted::new(transport);
    let mut net =
        PeerNet::new(transport).map_err(|e| format!("{}: {}", nic.name, PeerError::Device(e)))?;
    // It polls, as ours does in the benchmark.
    net.disable_interrupts();
    Ok(PeerCard { net, notifications })
}

fn on_peer(sender: &Nic, receiver: &Nic, seconds: f64, print_setup: bool) -> Result<(), String> {
    let started = crate::clock::tsc();
    let mut tx = hand_over(sender)?;
    let mut rx = hand_over(receiver)?;
    let bringup_us = crate::clock::ticks_to_ns(crate::clock::tsc() - started) / 1000;
    if print_setup {
        println!(
            "bench: net.peer.setup stack=peer sender={} receiver={} queue_size={QUEUE_SIZE} rx_buffer_bytes={RX_BUFFER_LEN} bringup_us={bringup_us} frame_bytes={FRAME_LEN} batch={BATCH} seconds={seconds:.3}",
            sender.name, receiver.name
        );
    }
    let mut tx_buffer = IoBuffer::new(QUEUE_SIZE * TX_SLOT_LEN)?;
    let mut rx_buffer = IoBuffer::new(QUEUE_SIZE * RX_BUFFER_LEN)?;
    let outcome = measure(
        &mut tx,
        &mut rx,
        &mut tx_buffer,
        &mut rx_buffer,
        sender,
        receiver,
        seconds,
    );
    // Dropping the drivers resets the cards (the peer's `PciTransport`
    // drop) before their rings are freed; only then may the buffers go.
    drop(tx);
    drop(rx);
    drop(tx_buffer);
    drop(rx_buffer);
    outcome
}

/// Which piece of a buffer each token's request uses.
struct Tokens(Vec<usize>);

impl Tokens {
    fn new() -> Self {
        Tokens(vec![usize::MAX; QUEUE_SIZE])
    }

    fn record(&mut self, token: u16, piece: usize) -> Result<(), String> {
        let entry = self
            .0
            .get_mut(usize::from(token))
            .ok_or_else(|| format!("the peer returned token {token} beyond its queue"))?;
        *entry = piece;
        Ok(())
    }

    fn take(&mut self, token: u16) -> Result<usize, String> {
        match self.0.get_mut(usize::from(token)) {
            Some(entry) if *entry != usize::MAX => Ok(core::mem::replace(entry, usize::MAX)),
            _ => Err(format!("the device completed unknown token {token}")),
        }
    }
}

/// The receiver's buffers, all posted.
struct Receiver<'a> {
    pieces: Vec<&'a mut [u8]>,
    tokens: Tokens,
}

impl Receiver<'_> {
    /// Collects every completed receive, counts the benchmark frames among
    /// them and reposts each buffer at once (the peer's API publishes each
    /// one as it is added). `repost_ticks` grows by the time reposting takes.
    fn drain(&mut self, card: &mut PeerCard, repost_ticks: &mut u64) -> Result<u64, String> {
        let mut frames = 0;
        while let Some(token) = card.net.poll_receive() {
            let piece = self.tokens.take(token)?;
            let buffer = &mut *self.pieces[piece];
            // SAFETY: the buffer posted with this token (see `Tokens`).
            let (header, length) = unsafe { card.net.receive_complete(token, buffer) }
                .map_err(|e| format!("receive: {e}"))?;
            let frame = buffer
                .get(header..header.saturating_add(length))
                .ok_or("the device reported a frame longer than its buffer")?;
            if frame.len() >= 14 && frame[12..14] == BENCH_ETHERTYPE {
                frames += 1;
            }
            let started = crate::clock::tsc();
            // SAFETY: the buffer is ours again and stays untouched until its
            // next completion (or until the card is reset).
            let token =
                unsafe { card.net.receive_begin(buffer) }.map_err(|e| format!("reposting: {e}"))?;
            *repost_ticks += crate::clock::tsc() - started;
            self.tokens.record(token, piece)?;
        }
        Ok(frames)
    }
}

/// The sender's buffers: free ones, and which token holds which.
struct Sender<'a> {
    pieces: Vec<&'a mut [u8]>,
    free: Vec<usize>,
    tokens: Tokens,
}

impl Sender<'_> {
    /// Takes back every buffer the device has sent.
    fn reclaim(&mut self, card: &mut PeerCard, frame_len: usize) -> Result<(), String> {
        while let Some(token) = card.net.poll_transmit() {
            let piece = self.tokens.take(token)?;
            // SAFETY: the same buffer, of the same length, that was passed
            // to `transmit_begin` for this token.
            unsafe {
                card.net
                    .transmit_complete(token, &self.pieces[piece][..frame_len])
            }
            .map_err(|e| format!("transmit completion: {e}"))?;
            self.free.push(piece);
        }
        Ok(())
    }
}

/// One timed run; prints its line.
fn measure(
    tx: &mut PeerCard,
    rx: &mut PeerCard,
    tx_buffer: &mut IoBuffer,
    rx_buffer: &mut IoBuffer,
    sender: &Nic,
    receiver: &Nic,
    seconds: f64,
) -> Result<(), String> {
    let to = rx.net.mac_address();
    let from = tx.net.mac_address();
    let mut incoming = Receiver {
        pieces: rx_buffer
            .as_mut_slice()
            .chunks_exact_mut(RX_BUFFER_LEN)
            .collect(),
        tokens: Tokens::new(),
    };
    for piece in 0..incoming.pieces.len() {
        // SAFETY: each piece is posted once and left alone until its
        // completion; the buffer outlives the driver (`on_peer`).
        let token = unsafe { rx.net.receive_begin(&mut *incoming.pieces[piece]) }
            .map_err(|e| format!("posting receive buffers: {e}"))?;
        incoming.tokens.record(token, piece)?;
    }
    let mut outgoing = Sender {
        pieces: tx_buffer
            .as_mut_slice()
            .chunks_exact_mut(TX_SLOT_LEN)
            .collect(),
        free: (0..QUEUE_SIZE).rev().collect(),
        tokens: Tokens::new(),
    };
    let header_len = tx
        .net
        .fill_buffer_header(&mut outgoing.pieces[0][..])
        .map_err(|e| format!("header: {e}"))?;
    let frame_len = header_len + FRAME_LEN;
    if frame_len > TX_SLOT_LEN {
        return Err(format!(
            "a {header_len}-byte header leaves no room for the frame"
        ));
    }

    let before = (
        tx.notifications.of(TX_QUEUE),
        rx.notifications.of(RX_QUEUE),
        interrupts(sender.location, TX_QUEUE),
        interrupts(receiver.location, RX_QUEUE),
    );
    let duration = (seconds * crate::clock::tsc_hz() as f64) as u64;
    let started = crate::clock::tsc();
    let stop_at = started.saturating_add(duration);
    let mut sequence = 0u64;
    let mut received = 0u64;
    let mut full = 0u64;
    // TSC ticks in `transmit_begin` (where the peer publishes and
    // notifies), in the receiver's drain, and in its reposts.
    let mut publish_ticks = 0u64;
    let mut drain_ticks = 0u64;
    let mut repost_ticks = 0u64;
    let mut batches = 0u64;
    loop {
        let now = crate::clock::tsc();
        if now >= stop_at {
            break;
        }
        outgoing.reclaim(tx, frame_len)?;
        for _ in 0..BATCH {
            let Some(piece) = outgoing.free.pop() else {
                full += 1;
                break;
            };
            let buffer = &mut outgoing.pieces[piece][..frame_len];
            tx.net
                .fill_buffer_header(buffer)
                .map_err(|e| format!("header: {e}"))?;
            build_frame(&mut buffer[header_len..], to, from, sequence);
            let publish_started = crate::clock::tsc();
            // SAFETY: the piece is not touched again until its completion
            // is collected in `reclaim` (or the card is reset); the buffer
            // outlives the driver.
            let result = unsafe { tx.net.transmit_begin(buffer) };
            publish_ticks += crate::clock::tsc() - publish_started;
            match result {
                Ok(token) => {
                    outgoing.tokens.record(token, piece)?;
                    sequence += 1;
                }
                Err(virtio_drivers::Error::QueueFull) => {
                    outgoing.free.push(piece);
                    full += 1;
                    break;
                }
                Err(e) => return Err(format!("transmit: {e}")),
            }
        }
        let drain_started = crate::clock::tsc();
        received += incoming.drain(rx, &mut repost_ticks)?;
        drain_ticks += crate::clock::tsc() - drain_started;
        batches += 1;
    }
    let elapsed = crate::clock::tsc() - started;
    let sent = sequence;
    // Frames still in the hub or the receive ring: counted, not timed.
    let grace_until = crate::clock::uptime_ns() + GRACE_NS;
    let mut late = 0u64;
    while crate::clock::uptime_ns() < grace_until && received + late < sent {
        late += incoming.drain(rx, &mut 0)?;
        outgoing.reclaim(tx, frame_len)?;
    }
    let after = (
        tx.notifications.of(TX_QUEUE),
        rx.notifications.of(RX_QUEUE),
        interrupts(sender.location, TX_QUEUE),
        interrupts(receiver.location, RX_QUEUE),
    );
    let total_received = received + late;
    PpsRun {
        name: "net.pps.peer",
        stack: "peer",
        elapsed_ticks: elapsed,
        sent,
        received,
        late,
        tx_queue_full: full,
        batches,
        tx_notifications: (after.0 - before.0, sent),
        rx_notifications: (after.1 - before.1, total_received),
        tx_interrupts: (after.2 - before.2, sent),
        rx_interrupts: (after.3 - before.3, total_received),
        publish_ticks,
        drain_ticks,
        repost_ticks,
    }
    .print();
    Ok(())
}
