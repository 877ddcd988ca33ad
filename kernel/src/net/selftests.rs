//! Network self-tests (`mode=selftest`), on the real QEMU devices.
//!
//! Which tests run depends on the cards found:
//!
//! - with any card: every card is live with a full receive queue;
//! - with any card: **DHCP** gives one of them a lease (QEMU's user network
//!   answers; cards on a hub without it never get one, which is fine as
//!   long as one card does), then through that card the **gateway answers
//!   ARP** (a request built by hand and sent through the driver, the reply
//!   read back through it) and **ping** (an ICMP echo through smoltcp);
//! - with two cards or more: **frames cross a hub intact**: every card sends
//!   frames of several sizes to every other card's MAC address, and the test
//!   finds the pair(s) that see each other (two `-netdev hubport` on one
//!   hub) and checks each frame byte for byte, in order, none lost; at least
//!   one pair must exist;
//! - in strict IOMMU mode: **a blocked DMA fails the card's traffic**: a fault
//!   armed for the card (`iommu::arm_fault`, as if the unit had blocked a DMA
//!   of it) is found by the next poll, counted once, with receive buffers
//!   reposted (a write) or the transmit failure logged (a read), and the card
//!   stays live;
//! - with two cards or more that all have CTRL_RX: **the control queue
//!   works**: on a hub pair, a frame to a foreign unicast address reaches
//!   the receiver only while it is promiscuous; with CTRL_MAC_ADDR, a frame
//!   to a new MAC address reaches it only after the address was changed.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use drivers::net::{feature, MacAddress};
use smoltcp::iface::SocketHandle;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::icmp;
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress, Ipv4Address};
use spin::Mutex;

use super::nic::{self, Nic};
use super::stack::{self, Role};
use crate::selftest_api::SelfTest;

/// How long DHCP may take.
const DHCP_TIMEOUT_NS: u64 = 10_000_000_000;
/// How long one reply (ARP, ping, a hub frame) may take.
const REPLY_TIMEOUT_NS: u64 = 2_000_000_000;
/// How long a card waits for the first frame from a card that may not be
/// on its hub (QEMU's hub forwards at once).
const FIRST_FRAME_NS: u64 = 500_000_000;
/// EtherType of the test frames (IEEE 802 "local experimental").
const TEST_ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// A unicast address no card has.
const FOREIGN_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];

/// The card that got a lease.
static LEASED: Mutex<Option<usize>> = Mutex::new(None);
/// A pair of cards on one hub: (sender, receiver).
static HUB_PAIR: Mutex<Option<(usize, usize)>> = Mutex::new(None);

/// The network self-tests for the cards found (see the module docs).
pub fn selftests() -> Vec<SelfTest> {
    let (count, all_ctrl_rx) = {
        let nics = nic::nics();
        let all = !nics.is_empty()
            && nics
                .iter()
                .all(|n| n.device.features() & feature::CTRL_RX != 0);
        (nics.len(), all)
    };
    let mut tests = Vec::new();
    if count == 0 {
        return tests;
    }
    tests.push(SelfTest {
        name: "net: every card is live with a full receive queue",
        run: test_cards_live,
    });
    tests.push(SelfTest {
        name: "net: DHCP lease from QEMU's user network",
        run: test_dhcp,
    });
    tests.push(SelfTest {
        name: "net: the gateway answers ARP",
        run: test_arp,
    });
    tests.push(SelfTest {
        name: "net: the gateway answers ping",
        run: test_ping,
    });
    if crate::iommu::strict() {
        tests.push(SelfTest {
            name: "net: a poll after the IOMMU blocked a DMA of the card fails its traffic, once",
            run: test_dma_blocked,
        });
    }
    if count >= 2 {
        tests.push(SelfTest {
            name: "net: frames sent on one card arrive intact on the other (hub)",
            run: test_hub,
        });
        if all_ctrl_rx {
            tests.push(SelfTest {
                name: "net: promiscuous mode and MAC address through the control queue",
                run: test_control_queue,
            });
        }
    }
    tests
}

fn deadline(timeout_ns: u64) -> u64 {
    crate::clock::uptime_ns().saturating_add(timeout_ns)
}

fn expired(at: u64) -> bool {
    crate::clock::uptime_ns() >= at
}

// ----------------------------------------------------------------- cards

fn test_cards_live() -> Result<(), String> {
    let mut nics = nic::nics();
    let mut problems = Vec::new();
    for nic in nics.iter_mut() {
        use drivers::transport::{DeviceStatus, Transport};
        let status = nic.device.transport().status();
        if !status.contains(DeviceStatus::DRIVER_OK)
            || status.intersects(DeviceStatus::FAILED | DeviceStatus::DEVICE_NEEDS_RESET)
        {
            problems.push(format!("{}: status {status}", nic.name));
        }
        let rx = nic.device.rx();
        if rx.buffers_free() != 0 || rx.buffers_posted() != rx.buffer_count() {
            problems.push(format!(
                "{}: {} of {} receive buffers posted, {} held back",
                nic.name,
                rx.buffers_posted(),
                rx.buffer_count(),
                rx.buffers_free()
            ));
        }
        if !nic.device.link_up() {
            problems.push(format!("{}: link down", nic.name));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// A fault armed for the first card (a write, then a read) must be found by the next
/// `stack::poll_card`, counted once (`dma_blocked`), and leave the card live with its receive
/// queue full.
fn test_dma_blocked() -> Result<(), String> {
    let mut nics = nic::nics();
    let nic = nics.first_mut().ok_or("no card")?;
    for read in [false, true] {
        let before = nic.counters;
        if !crate::iommu::arm_fault(nic.location, read, 0xdead_0000) {
            return Err(format!(
                "{} at {} has no PCI source ID",
                nic.name, nic.location
            ));
        }
        stack::poll_card(nic);
        stack::poll_card(nic);
        let after = nic.counters;
        if after.dma_blocked != before.dma_blocked + 1 {
            return Err(format!(
                "{} {}: {} blocked DMA(s) found by two polls, want 1",
                nic.name,
                if read { "read" } else { "write" },
                after.dma_blocked - before.dma_blocked
            ));
        }
        if read && after.rx_dma_dropped != before.rx_dma_dropped {
            return Err("a blocked read dropped received frames".into());
        }
        let failed = nic.device.is_failed();
        let rx = nic.device.rx();
        let (posted, count) = (rx.buffers_posted(), rx.buffer_count());
        if posted != count || failed {
            return Err(format!(
                "{} after the blocked {}: {posted} of {count} receive buffers posted, failed: {failed}",
                nic.name,
                if read { "read" } else { "write" },
            ));
        }
    }
    Ok(())
}

// ----------------------------------------------------------------- DHCP

fn test_dhcp() -> Result<(), String> {
    super::timer::init();
    let mut nics = nic::nics();
    for nic in nics.iter_mut() {
        stack::attach(nic, Role::SelfTest);
    }
    let until = deadline(DHCP_TIMEOUT_NS);
    loop {
        for nic in nics.iter_mut() {
            stack::poll_card(nic);
        }
        if let Some(i) = nics
            .iter()
            .position(|n| n.stack.as_ref().is_some_and(|s| s.lease.is_some()))
        {
            *LEASED.lock() = Some(i);
            let lease = nics[i].stack.as_ref().and_then(|s| s.lease.clone());
            let Some(lease) = lease else {
                return Err("lease vanished".into());
            };
            if lease.gateway.is_none() {
                return Err(format!(
                    "{}: lease {} without a gateway",
                    nics[i].name, lease.address
                ));
            }
            return Ok(());
        }
        if expired(until) {
            return Err(format!(
                "no lease on any of {} card(s) within {} s",
                nics.len(),
                DHCP_TIMEOUT_NS / 1_000_000_000
            ));
        }
        core::hint::spin_loop();
    }
}

/// The leased card's index, address and gateway.
fn leased(nics: &[Nic]) -> Result<(usize, Ipv4Address, Ipv4Address), String> {
    let index = LEASED.lock().ok_or("no card has a DHCP lease")?;
    let lease = nics
        .get(index)
        .and_then(|n| n.stack.as_ref())
        .and_then(|s| s.lease.clone())
        .ok_or("the lease is gone")?;
    let gateway = lease.gateway.ok_or("no gateway")?;
    Ok((index, lease.address.address(), gateway))
}

// ----------------------------------------------------------------- ARP

/// An ARP request (RFC 826) for `target` from `mac`/`ip`, broadcast.
fn arp_request(mac: MacAddress, ip: Ipv4Address, target: Ipv4Address) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&[0x08, 0x06]); // ARP
    f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]); // Ethernet/IPv4, request
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f.resize(60, 0);
    f
}

fn test_arp() -> Result<(), String> {
    let mut nics = nic::nics();
    let (index, ip, gateway) = leased(&nics)?;
    let nic = &mut nics[index];
    let mac = nic.device.mac();
    nic.device
        .send(&arp_request(mac, ip, gateway))
        .map_err(|e| format!("send: {e}"))?;
    let until = deadline(REPLY_TIMEOUT_NS);
    let mut frame = vec![0u8; 2048];
    let mut seen = 0;
    while !expired(until) {
        let Some(len) = nic
            .device
            .receive_into(&mut frame)
            .map_err(|e| e.to_string())?
        else {
            core::hint::spin_loop();
            continue;
        };
        seen += 1;
        let f = &frame[..len.min(frame.len())];
        let is_reply = f.len() >= 42
            && f[12..14] == [0x08, 0x06]
            && f[20..22] == [0x00, 0x02]
            && f[28..32] == gateway.octets()
            && f[32..38] == mac.0
            && f[38..42] == ip.octets()
            && f[0..6] == mac.0;
        if is_reply {
            log::info!(
                "{}: ARP: {} is at {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                nic.name,
                gateway,
                f[22],
                f[23],
                f[24],
                f[25],
                f[26],
                f[27]
            );
            return Ok(());
        }
    }
    Err(format!("no ARP reply from {gateway} ({seen} other frames)"))
}

// ----------------------------------------------------------------- ping

fn test_ping() -> Result<(), String> {
    let mut nics = nic::nics();
    let (index, _, gateway) = leased(&nics)?;
    let nic = &mut nics[index];
    let socket = icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
    );
    let handle = nic
        .stack
        .as_mut()
        .ok_or("no interface")?
        .sockets
        .add(socket);
    let result = ping(nic, handle, gateway);
    if let Some(stack) = nic.stack.as_mut() {
        stack.sockets.remove(handle);
    }
    result
}

/// Up to three echo requests to `gateway` through the ICMP socket `handle`;
/// `Ok` at the first matching reply with the same data.
fn ping(nic: &mut Nic, handle: SocketHandle, gateway: Ipv4Address) -> Result<(), String> {
    let ident = 0x7e57;
    let payload: Vec<u8> = (0..56u8).map(|i| i.wrapping_mul(7) ^ 0x5a).collect();
    let caps = ChecksumCapabilities::default();
    nic.stack
        .as_mut()
        .ok_or("no interface")?
        .sockets
        .get_mut::<icmp::Socket>(handle)
        .bind(icmp::Endpoint::Ident(ident))
        .map_err(|e| format!("bind: {e:?}"))?;
    for seq_no in 1..=3u16 {
        {
            let socket = nic
                .stack
                .as_mut()
                .ok_or("no interface")?
                .sockets
                .get_mut::<icmp::Socket>(handle);
            let repr = Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data: &payload,
            };
            let buffer = socket
                .send(repr.buffer_len(), IpAddress::Ipv4(gateway))
                .map_err(|e| format!("send: {e:?}"))?;
            repr.emit(&mut Icmpv4Packet::new_unchecked(buffer), &caps);
        }
        let until = deadline(REPLY_TIMEOUT_NS);
        while !expired(until) {
            stack::poll_card(nic);
            let socket = nic
                .stack
                .as_mut()
                .ok_or("no interface")?
                .sockets
                .get_mut::<icmp::Socket>(handle);
            if !socket.can_recv() {
                continue;
            }
            let (bytes, from) = socket.recv().map_err(|e| format!("recv: {e:?}"))?;
            let packet = Icmpv4Packet::new_checked(bytes).map_err(|e| format!("{e}"))?;
            let repr = Icmpv4Repr::parse(&packet, &caps).map_err(|e| format!("{e}"))?;
            if let Icmpv4Repr::EchoReply {
                ident: i,
                seq_no: s,
                data,
            } = repr
            {
                if i == ident && s == seq_no && from == IpAddress::Ipv4(gateway) {
                    if data != payload.as_slice() {
                        return Err(format!("echo reply {s} carries other data"));
                    }
                    log::info!("{}: ping {gateway}: reply to seq {s}", nic.name);
                    return Ok(());
                }
            }
        }
    }
    Err(format!("no echo reply from {gateway} to 3 requests"))
}

// ----------------------------------------------------------------- hub

/// Test frame `n` from `from` to `to`: header, a tag, then a pattern.
fn hub_frame(to: MacAddress, from: MacAddress, len: usize, tag: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&to.0);
    f.extend_from_slice(&from.0);
    f.extend_from_slice(&TEST_ETHERTYPE);
    f.extend_from_slice(&tag.to_be_bytes());
    let mut x = tag.wrapping_mul(2_654_435_761) | 1;
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f.push(x as u8);
    }
    f.truncate(len);
    f
}

/// The test frames `receiver` got within the timeout (other traffic, such
/// as DHCP discovers on the hub, is skipped). A card not on the sender's hub
/// gets nothing: if no test frame came within [`FIRST_FRAME_NS`], none will.
fn collect_test_frames(nic: &mut Nic, wanted: usize) -> Result<Vec<Vec<u8>>, String> {
    let until = deadline(REPLY_TIMEOUT_NS);
    let first_until = deadline(FIRST_FRAME_NS);
    let mut frames = Vec::new();
    let mut buffer = vec![0u8; 2048];
    while frames.len() < wanted && !expired(until) && !(frames.is_empty() && expired(first_until)) {
        match nic
            .device
            .receive_into(&mut buffer)
            .map_err(|e| e.to_string())?
        {
            Some(len) if len >= 14 && buffer[12..14] == TEST_ETHERTYPE => {
                frames.push(buffer[..len.min(buffer.len())].to_vec());
            }
            Some(_) => {}
            None => core::hint::spin_loop(),
        }
    }
    Ok(frames)
}

/// Drains whatever a card has received.
fn drain(nic: &mut Nic) {
    let mut buffer = vec![0u8; 2048];
    while let Ok(Some(_)) = nic.device.receive_into(&mut buffer) {}
}

fn test_hub() -> Result<(), String> {
    let mut nics = nic::nics();
    let n = nics.len();
    let sizes = [60usize, 64, 128, 1000, 1514];
    let mut pairs = Vec::new();
    let mut problems = Vec::new();
    for from in 0..n {
        for to in 0..n {
            if from == to {
                continue;
            }
            for nic in nics.iter_mut() {
                drain(nic);
            }
            let (from_mac, to_mac) = (nics[from].device.mac(), nics[to].device.mac());
            let mut sent = Vec::new();
            for (k, &len) in sizes.iter().enumerate() {
                let tag = (from as u32) << 24 | (to as u32) << 16 | k as u32;
                let frame = hub_frame(to_mac, from_mac, len, tag);
                // A batch: added now, published with one flush below.
                nics[from]
                    .device
                    .tx()
                    .send(&frame)
                    .map_err(|e| format!("{}: send: {e}", nics[from].name))?;
                sent.push(frame);
            }
            nics[from].flush();
            let got = collect_test_frames(&mut nics[to], sent.len())?;
            if got.is_empty() {
                continue; // not on the same hub
            }
            if got != sent {
                problems.push(format!(
                    "{} -> {}: {} of {} frames, {}",
                    nics[from].name,
                    nics[to].name,
                    got.len(),
                    sent.len(),
                    if got.len() == sent.len() {
                        "contents differ"
                    } else {
                        "some lost"
                    }
                ));
            } else {
                log::info!(
                    "{} -> {}: {} frames ({:?} bytes) arrived intact",
                    nics[from].name,
                    nics[to].name,
                    sent.len(),
                    sizes
                );
                pairs.push((from, to));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    match pairs.first() {
        Some(&pair) => {
            *HUB_PAIR.lock() = Some(pair);
            Ok(())
        }
        None => Err(format!(
            "none of the {n} cards received another's frames: no two cards on one hub"
        )),
    }
}

// ----------------------------------------------------------------- control queue

/// Sends one test frame to `to` from card `from` and says whether card
/// `receiver` got it.
fn delivered(
    nics: &mut [Nic],
    from: usize,
    receiver: usize,
    to: MacAddress,
    tag: u32,
) -> Result<bool, String> {
    drain(&mut nics[receiver]);
    let frame = hub_frame(to, nics[from].device.mac(), 64, tag);
    nics[from].device.send(&frame).map_err(|e| e.to_string())?;
    // A frame that is filtered never comes: a shorter wait is enough to tell.
    let until = deadline(REPLY_TIMEOUT_NS / 4);
    let mut buffer = vec![0u8; 2048];
    while !expired(until) {
        if let Some(len) = nics[receiver]
            .device
            .receive_into(&mut buffer)
            .map_err(|e| e.to_string())?
        {
            if len >= 64 && buffer[..64] == frame[..] {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn test_control_queue() -> Result<(), String> {
    let (from, to) = HUB_PAIR.lock().ok_or("no hub pair was found")?;
    let mut nics = nic::nics();
    let foreign = MacAddress(FOREIGN_MAC);
    // The kernel's one wait in polling mode: QEMU answers a control command
    // while it handles the notification, so the answer is normally there
    // before the first wait. One wait per command: a wait's deadline starts
    // when it is made, and the frames sent between commands take time too.
    let fresh_wait = || crate::wait::KernelWait::polling(REPLY_TIMEOUT_NS);
    let mut steps = Vec::new();
    nics[to]
        .device
        .set_promiscuous(false, &mut fresh_wait())
        .map_err(|e| format!("promiscuous off: {e}"))?;
    if delivered(&mut nics, from, to, foreign, 0xf0)? {
        return Err("a frame to a foreign address arrived without promiscuous mode".into());
    }
    nics[to]
        .device
        .set_promiscuous(true, &mut fresh_wait())
        .map_err(|e| format!("promiscuous on: {e}"))?;
    let promiscuous = delivered(&mut nics, from, to, foreign, 0xf1)?;
    nics[to]
        .device
        .set_promiscuous(false, &mut fresh_wait())
        .map_err(|e| format!("promiscuous off: {e}"))?;
    if !promiscuous {
        return Err("promiscuous mode on, but the foreign frame did not arrive".into());
    }
    steps.push("promiscuous");
    let multicast = MacAddress([0x01, 0x00, 0x5e, 0x7f, 0x00, 0x42]);
    if delivered(&mut nics, from, to, multicast, 0xf5)? {
        return Err("a multicast frame arrived without all-multicast mode".into());
    }
    nics[to]
        .device
        .set_all_multicast(true, &mut fresh_wait())
        .map_err(|e| format!("all-multicast on: {e}"))?;
    let got_multicast = delivered(&mut nics, from, to, multicast, 0xf2)?;
    nics[to]
        .device
        .set_all_multicast(false, &mut fresh_wait())
        .map_err(|e| format!("all-multicast off: {e}"))?;
    if !got_multicast {
        return Err("all-multicast on, but a multicast frame did not arrive".into());
    }
    steps.push("all-multicast");
    if nics[to].device.features() & feature::CTRL_MAC_ADDR != 0 {
        let old = nics[to].device.mac();
        let new = MacAddress([0x02, 0x00, 0x5e, 0x77, 0x66, 0x55]);
        nics[to]
            .device
            .set_mac(new, &mut fresh_wait())
            .map_err(|e| format!("set mac: {e}"))?;
        let to_new = delivered(&mut nics, from, to, new, 0xf3)?;
        let to_old = delivered(&mut nics, from, to, old, 0xf4)?;
        nics[to]
            .device
            .set_mac(old, &mut fresh_wait())
            .map_err(|e| format!("restore mac: {e}"))?;
        if !to_new || to_old {
            return Err(format!(
                "after changing the MAC to {new}: frame to it {}, frame to the old {old} {}",
                if to_new { "arrived" } else { "lost" },
                if to_old { "arrived" } else { "filtered" }
            ));
        }
        steps.push("mac address");
    }
    log::info!(
        "{}: control queue: {} work",
        nics[to].name,
        steps.join(", ")
    );
    Ok(())
}
