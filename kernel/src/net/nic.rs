//! Network cards: the virtio-net driver brought up by the kernel, and the
//! bridge between it and smoltcp.
//!
//! ## Bring-up
//!
//! [`claim_all`] takes each network device the virtio probe found out of
//! the registry (`virtio::take`) and brings it up, once, with the
//! [`drivers::net::NetDevice`] driver inside `virtio::bring_up` (which
//! wraps the interrupt set-up around the driver's §3.1.1 sequence and
//! prints the device's one `virtio:` line, with the driver's features, ring
//! layout and queues); options come from the command line (see
//! [`options_from_cmdline`]). The card is kept in the card list ([`NICS`],
//! named `net0`, `net1`, ... in discovery order), with one line per card:
//!
//! ```text
//! virtio: net at pci 0000:00:03.0 transport=pci-modern ring=split queues=3 features=VERSION_1|...
//! net0: virtio-net at pci 0000:00:03.0 transport=pci-modern ring=split queues=3 mac=52:54:00:12:34:56 features=VERSION_1|...
//! ```
//!
//! ## smoltcp's `Device`, without copies
//!
//! smoltcp asks a device for *tokens* (smoltcp 0.14 `phy::Device`):
//!
//! - a receive token is consumed with a closure that reads the frame. Here
//!   it carries the driver's [`RxPacket`], which borrows the DMA buffer the
//!   device wrote: the closure reads the frame where the device put it, and
//!   dropping the packet afterwards reposts the buffer.
//! - a transmit token is consumed with a length and a closure that writes
//!   the frame. Here it reserves a DMA transmit buffer ([`TxSlot`]) of that
//!   length and hands the closure the buffer itself: the frame is built
//!   where the device will read it.
//!
//! smoltcp answers a received packet (an ARP reply, a TCP ACK) from inside
//! the receive closure, so it needs both tokens at once: the receive and
//! transmit queues are separate objects in the driver
//! (`NetDevice::queues`), each token borrows one of them.
//!
//! Tokens only add to the rings; [`Nic::flush`] after a whole
//! `Interface::poll` publishes everything at once, so a poll that answers
//! twenty packets costs at most one notification per queue.
//!
//! ## Several queue pairs (VIRTIO_NET_F_MQ)
//!
//! The driver sets up one receive/transmit pair per online CPU (at most
//! [`DEFAULT_MAX_PAIRS`], or `net.pairs=N`), and [`claim_all`] then sends
//! VQ_PAIRS_SET ([`NetDevice::start_multiqueue`]). Pair `p` belongs to CPU
//! `p mod online CPUs` ([`owner_cpu`]): that CPU sends on it. Where each
//! queue's MSI-X message goes (`virtio::DrivenDevice::queue_cpu`) follows
//! who uses the queue:
//!
//! | queue | used by | its interrupts go to |
//! | --- | --- | --- |
//! | transmitq`p+1` | the owner CPU, on the per-pair path (`NetDevice::lock_tx`) | the owner CPU |
//! | receiveq`p+1` | the network loop (one smoltcp interface) | [`NETWORK_LOOP_CPU`] (0) |
//! | controlq, configuration | the network loop, bring-up, recovery | CPU 0 |
//!
//! Receive stays on the loop's CPU on purpose: the card's smoltcp
//! interface is single-threaded and polled by the network loop, which runs
//! on CPU 0 only (`super::run` and the shell's idle step); a receive
//! interrupt sent elsewhere would not wake it, and a received packet would
//! wait for the loop's next timer. `smp::note_queue` records the same:
//! each transmit queue under its owner CPU, each receive queue under CPU 0.
//! One line per pair:
//!
//! ```text
//! net0: 4 queue pairs in use (the device has 4), control queue 8
//! net0: pair 1 (receiveq2 = queue 2, transmitq2 = queue 3) -> cpu 1: transmit interrupts on cpu 1, receive interrupts on cpu 0 (network loop)
//! ```
//!
//! ## The card list: one lock per CPU
//!
//! The cards are kept behind a `per_queue_lock::PerQueueLock` with one lock per online
//! CPU: [`nics`] takes every lock and gives `&mut` (bring-up, the network
//! loop, recovery, the shell: everything that existed before), while
//! `with_card_for_cpu` (in the benchmark build; the network loop itself
//! takes the whole list) takes only the calling CPU's lock and gives
//! `&[Nic]`, on which `NetDevice::lock_tx(pair)` locks
//! that one transmit queue (`drivers::net::per_pair`). CPUs sending on
//! their own pairs so share no lock.
//!
//! All pairs feed the card's one smoltcp interface: [`Phy`] takes received
//! frames from every receive queue in turn (the device chose the queue, by
//! flow), answers a frame from inside its receive token on the pair it came
//! in on, and sends everything else on the current CPU's pair
//! (`NetDevice::tx_pair_for_cpu`). `Nic::flush` refills every receive queue.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use drivers::irq::QueueSet;
use drivers::net::{
    rx_queue_of, tx_queue_of, NetDevice, NetError, NetOptions, RxPacket, TxQueue, MAX_QUEUE_PAIRS,
    SUPPORTED_FEATURES,
};
use drivers::transport::{DeviceType, InterruptStatus, Location, Transport};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use spin::Once;

use crate::per_queue_lock::{AllGuard, PerQueueLock};

use crate::hal_impl::KernelHal;
use crate::virtio::{BroughtUp, DrivenDevice, FeatureList, InterruptLine, KernelTransport};

/// The driver on the kernel's Hal and transport.
pub type KernelNetDevice = NetDevice<KernelHal, KernelTransport>;

impl DrivenDevice for KernelNetDevice {
    fn transport_for_routing(&mut self) -> &mut KernelTransport {
        self.transport_mut()
    }

    /// receiveqN and transmitqN of every pair set up, and the control
    /// queue with VIRTIO_NET_F_CTRL_VQ (queue 2, or `2 * max_virtqueue_pairs`
    /// with MQ; virtio 1.2 §5.1.2). A control queue beyond the 64 queues an
    /// interrupt slot tracks is not routed: its commands' waits poll.
    fn queues_in_use(&self) -> QueueSet {
        let mut queues = QueueSet::EMPTY;
        for queue in self.queue_indices() {
            queues.insert(queue);
        }
        queues
    }

    fn brought_up(&self) -> BroughtUp {
        BroughtUp::new(self.transport().kind(), queue_count(self), self.features())
    }

    /// transmitq`p+1` interrupts its owner CPU ([`owner_cpu`]); every
    /// receive queue the network loop's CPU ([`NETWORK_LOOP_CPU`]); the
    /// control queue and the configuration event, CPU 0 (module docs).
    fn queue_cpu(&self, queue: u16) -> usize {
        if queue < 2 * self.queue_pairs() && queue % 2 == 1 {
            owner_cpu(queue / 2, crate::smp::online_cpus())
        } else {
            NETWORK_LOOP_CPU
        }
    }
}

/// The queues the driver set up: rx and tx of every pair, and the control queue if any.
fn queue_count(device: &KernelNetDevice) -> usize {
    device.queue_indices().count()
}

/// Queue pairs a card gets without `net.pairs=`: one per online CPU, at most this many.
pub const DEFAULT_MAX_PAIRS: u16 = 8;

/// How long VQ_PAIRS_SET may take before the card stays on one pair.
const CTRL_TIMEOUT_NS: u64 = 2_000_000_000;

/// Counters of the bridge to smoltcp (the driver keeps its own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeCounters {
    /// Frames smoltcp built that could not be sent (no room, too long).
    pub tx_dropped: u64,
    /// Times the device was reset and brought back after a broken ring.
    pub recoveries: u64,
    /// Configuration-change events handled.
    pub config_events: u64,
    /// Polls that found a DMA of the card blocked by the IOMMU (strict
    /// mode) since the previous one ([`Nic::check_dma`]).
    pub dma_blocked: u64,
    /// Received frames dropped because the IOMMU blocked a write of the
    /// card while they were arriving: their data cannot be trusted.
    pub rx_dma_dropped: u64,
}

/// One network card.
pub struct Nic {
    /// `net0`, `net1`, ... in discovery order.
    pub name: String,
    /// Where the device is.
    pub location: Location,
    /// How it can interrupt (from discovery).
    pub interrupt: InterruptLine,
    /// The driver.
    pub device: KernelNetDevice,
    /// The bridge's counters.
    pub counters: BridgeCounters,
    /// The smoltcp interface and sockets, once [`super::start`] (or a
    /// self-test) gave the card one.
    pub stack: Option<super::stack::Stack>,
    /// When the configuration was last looked at (polled cards only).
    last_config_check_ns: u64,
    /// The card's IOMMU fault count at the previous [`Nic::check_dma`].
    dma_faults_seen: u64,
}

/// Every network card brought up, in discovery order, behind one lock per
/// online CPU (module docs, "The card list").
static NICS: Once<PerQueueLock<Vec<Nic>>> = Once::new();

/// The card list with its locks, made at first use: after `smp::init`
/// (the kernel claims cards after starting the other CPUs), so with one
/// lock per CPU that is online.
fn card_list() -> &'static PerQueueLock<Vec<Nic>> {
    NICS.call_once(|| PerQueueLock::new(Vec::new(), crate::smp::online_cpus()))
}

/// The card list, every lock taken. Interrupt handlers never take it; do
/// not hold it across a wait on another device, nor call it while inside
/// [`with_card_for_cpu`] (it would wait for itself).
pub fn nics() -> AllGuard<'static, Vec<Nic>> {
    card_list().lock_all()
}

/// Runs `f` on the card list holding only CPU `cpu`'s lock of it: shared
/// access, for the per-pair path (`NetDevice::lock_tx`). CPUs passing
/// their own number never wait for each other here. (The benchmark's
/// path: the network loop itself takes the whole list.)
#[cfg(feature = "bench")]
pub fn with_card_for_cpu<R>(cpu: usize, f: impl FnOnce(&[Nic]) -> R) -> R {
    let cards = card_list().lock_queue(cpu);
    f(&cards)
}

/// Driver options from the kernel command line:
///
/// - `net.qsize=N`: at most N descriptors per data queue (default 256; legacy
///   PCI cannot choose and ignores it);
/// - `net.rxbuf=N`: receive buffer size with MRG_RXBUF (default 1536; a
///   small value makes the device merge buffers for ordinary frames);
/// - `net.features=0xMASK`: device-specific features to offer to accept
///   (default: all the driver implements);
/// - `net.pairs=N`: at most N receive/transmit queue pairs with
///   VIRTIO_NET_F_MQ (default: one per online CPU, at most
///   [`DEFAULT_MAX_PAIRS`]; 1 turns multiqueue off). More pairs than CPUs
///   share CPUs (the tests use it to drive several pairs from one CPU);
/// - `virtio.ring=split|packed|auto`: the ring layout, as for every device.
pub fn options_from_cmdline() -> NetOptions {
    let mut options = NetOptions::default();
    let number = |key: &str| crate::cmdline::get(key).and_then(parse_number);
    if let Some(size) = number("net.qsize").and_then(|n| u16::try_from(n).ok()) {
        options.rx_queue_size = size.max(1);
        options.tx_queue_size = size.max(1);
    }
    if let Some(len) = number("net.rxbuf").and_then(|n| usize::try_from(n).ok()) {
        options.mergeable_buffer_len = len;
    }
    if let Some(mask) = number("net.features") {
        options.features = mask & SUPPORTED_FEATURES;
    }
    let per_cpu = u16::try_from(crate::smp::online_cpus()).unwrap_or(u16::MAX);
    options.max_queue_pairs = match number("net.pairs").and_then(|n| u16::try_from(n).ok()) {
        Some(pairs) => pairs.clamp(1, MAX_QUEUE_PAIRS),
        None => per_cpu.clamp(1, DEFAULT_MAX_PAIRS),
    };
    options.ring_features = crate::virtio::ring_preference().ring_features();
    options
}

/// Decimal, or hexadecimal with `0x`.
fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Takes every network device the probe found out of the virtio registry
/// and brings it up with the virtio-net driver, through
/// `virtio::bring_up` (interrupt route included; a failure leaves the
/// device's FAILED `virtio:` line). Call once, after `virtio::probe`.
pub fn claim_all() {
    let options = options_from_cmdline();
    let mut nics = nics();
    while let Some(found) = crate::virtio::take(DeviceType::Net, DRIVER_NAME) {
        let location = found.location;
        let interrupt = found.interrupt;
        let kind = found.transport.kind();
        let Ok(mut device) = crate::virtio::bring_up(found, DRIVER_NAME, |transport| {
            NetDevice::with_options(transport, options)
        }) else {
            continue;
        };
        let name = format!("net{}", nics.len());
        let features = device.features();
        let up = device.brought_up();
        crate::println!(
            "{name}: virtio-net at {location} transport={kind} ring={} queues={} mac={} features={}",
            up.ring,
            up.queues,
            device.mac(),
            FeatureList {
                device_type: DeviceType::Net,
                bits: features,
            }
        );
        log::info!(
            "{name}: mtu {}, link {}, {}-byte header, rx {} descriptors with {} buffers of {} bytes, tx {} descriptors",
            device.mtu(),
            if device.link_up() { "up" } else { "down" },
            device.header_len(),
            device.rx().size(),
            device.rx().buffer_count(),
            device.rx().buffer_len(),
            device.tx().size(),
        );
        start_pairs(&name, location, &mut device);
        nics.push(Nic {
            name,
            location,
            interrupt,
            device,
            counters: BridgeCounters::default(),
            stack: None,
            last_config_check_ns: 0,
            dma_faults_seen: crate::iommu::faults_of(location),
        });
    }
}

/// The name the registry and the `virtio:` FAILED line give this driver.
pub const DRIVER_NAME: &str = "virtio-net";

/// The wait for a control command of the card at `location`.
fn ctrl_wait(location: Location, device: &KernelNetDevice) -> crate::wait::KernelWait {
    let ctrl = device.queue_indices().last().unwrap_or(0);
    crate::wait::for_device(
        crate::virtio::irq::of(location),
        QueueSet::single(ctrl),
        CTRL_TIMEOUT_NS,
    )
}

/// With several queue pairs: VQ_PAIRS_SET, then each pair's CPU noted and
/// logged (see the module docs). A rejected command leaves the card on one
/// pair, with a warning.
fn start_pairs(name: &str, location: Location, device: &mut KernelNetDevice) {
    let set_up = device.queue_pairs();
    if set_up <= 1 {
        crate::smp::note_queue(0, format!("{name} receiveq+transmitq"));
        return;
    }
    let ctrl = device.queue_indices().last().unwrap_or(0);
    let mut wait = ctrl_wait(location, device);
    let active = match device.start_multiqueue(&mut wait) {
        Ok(active) => active,
        Err(error) => {
            log::warn!("{name}: VQ_PAIRS_SET {set_up} failed ({error}); using one queue pair");
            1
        }
    };
    crate::println!(
        "{name}: {active} queue pairs in use (the device has {}), control queue {ctrl}",
        device.device_max_queue_pairs()
    );
    if device.rss_active() {
        crate::println!(
            "{name}: rss: flows spread by hash over {active} receive queues ({}-entry indirection table, {}-byte key)",
            drivers::net::rss::INDIRECTION_TABLE_LEN,
            drivers::net::rss::HASH_KEY_LEN
        );
    }
    let cpus = crate::smp::online_cpus().max(1);
    for pair in 0..active {
        let cpu = owner_cpu(pair, cpus);
        let (rx, tx) = (rx_queue_of(pair), tx_queue_of(pair));
        log::info!(
            "{name}: pair {pair} (receiveq{n} = queue {rx}, transmitq{n} = queue {tx}) -> cpu {cpu}: transmit interrupts on cpu {cpu}, receive interrupts on cpu {NETWORK_LOOP_CPU} (network loop)",
            n = pair + 1
        );
        crate::smp::note_queue(
            cpu,
            format!(
                "{name} transmitq{} (queue {tx}, pair {pair}; sends and interrupts here)",
                pair + 1
            ),
        );
        crate::smp::note_queue(
            NETWORK_LOOP_CPU,
            format!(
                "{name} receiveq{} (queue {rx}, pair {pair}; drained and interrupted here by the network loop)",
                pair + 1
            ),
        );
    }
}

/// The CPU that runs the network loop (the card's one smoltcp interface)
/// and so drains every receive queue and takes their interrupts.
pub const NETWORK_LOOP_CPU: usize = 0;

/// The CPU that owns pair `pair` among `cpus` online CPUs: it sends on the
/// pair and takes its transmit-completion interrupts. One pair per CPU
/// while there are enough; more pairs than CPUs share CPUs round robin.
pub fn owner_cpu(pair: u16, cpus: usize) -> usize {
    usize::from(pair) % cpus.max(1)
}

impl Nic {
    /// Fails what the card did while the IOMMU blocked one of its DMAs, as
    /// the block layer fails such a request (`iommu::check_request`; one
    /// relaxed load without a strict IOMMU). Called before each poll: a
    /// blocked **write** (the card storing a received frame or a used
    /// entry) makes every frame now in the receive ring suspect, so they
    /// are dropped (their buffers reposted) before smoltcp sees them; a
    /// blocked **read** (the card fetching a frame to send, or a ring)
    /// means frames sent since the last poll may be lost or garbled, which
    /// cannot be undone: it is logged and counted. Returns the fault.
    pub fn check_dma(&mut self) -> Option<crate::iommu::Fault> {
        let fault = crate::iommu::check_request(self.location, self.dma_faults_seen).err()?;
        self.dma_faults_seen = crate::iommu::faults_of(self.location);
        self.counters.dma_blocked += 1;
        if fault.read {
            log::warn!(
                "{}: transmit failed: the IOMMU blocked a DMA read of the device at {:#x}; frames sent since the last poll may be lost",
                self.name,
                fault.address
            );
            return Some(fault);
        }
        let mut dropped = 0u64;
        let (rx, _) = self.device.queues();
        // Dropping a packet reposts its buffer.
        while let Ok(Some(_packet)) = rx.receive() {
            dropped += 1;
        }
        self.counters.rx_dma_dropped += dropped;
        log::warn!(
            "{}: receive failed: the IOMMU blocked a DMA write of the device at {:#x}; {dropped} received frame(s) dropped",
            self.name,
            fault.address
        );
        Some(fault)
    }

    /// Publishes what the queues gathered and notifies where needed.
    pub fn flush(&mut self) -> usize {
        self.device.flush()
    }

    /// The bridge to smoltcp for this card.
    pub fn phy(&mut self) -> Phy<'_> {
        Phy::new(&mut self.device, &mut self.counters)
    }

    /// The card's interrupt slot, if `virtio::irq` wired one.
    fn irq(&self) -> Option<crate::virtio::irq::DeviceIrq> {
        crate::virtio::irq::of(self.location)
    }

    /// `true` if the card wakes the CPU when packets arrive (MSI-X or a
    /// line); `false` if it must be polled.
    pub fn interrupt_driven(&self) -> bool {
        self.irq().is_some_and(|irq| !irq.state().is_polled())
    }

    /// Looks for a configuration change: the interrupt handler's flag on an
    /// interrupt-driven card; on a polled one, the interrupt status register
    /// itself, at most every [`CONFIG_POLL_NS`].
    pub fn check_config(&mut self) {
        match self.irq() {
            Some(irq) if !irq.state().is_polled() => {
                if irq.state().take_config_change() {
                    self.config_changed();
                }
            }
            _ => {
                let now = crate::clock::uptime_ns();
                if now.saturating_sub(self.last_config_check_ns) < CONFIG_POLL_NS {
                    return;
                }
                self.last_config_check_ns = now;
                match self.device.handle_interrupt() {
                    Ok(status) if status.contains(InterruptStatus::CONFIG) => {
                        self.counters.config_events += 1;
                        log::info!(
                            "{}: configuration changed: link {}",
                            self.name,
                            if self.device.link_up() { "up" } else { "down" }
                        );
                    }
                    Ok(_) => {}
                    Err(error) => log::warn!("{}: configuration change: {error}", self.name),
                }
            }
        }
    }

    /// After a broken ring: reset the device and bring it back.
    pub fn recover(&mut self, why: NetError) {
        log::warn!("{}: {why}; resetting the device", self.name);
        self.counters.recoveries += 1;
        if let Err(error) = self.device.recover() {
            log::error!("{}: recovery failed: {error}", self.name);
            return;
        }
        // A reset device is back on one pair: tell it again (§5.1.6.5.5).
        if self.device.queue_pairs() > 1 {
            if let Err(error) = self
                .device
                .start_multiqueue(&mut ctrl_wait(self.location, &self.device))
            {
                log::warn!(
                    "{}: after recovery, VQ_PAIRS_SET failed ({error}); using one queue pair",
                    self.name
                );
            }
        }
    }

    /// Handles a configuration change (link status): logs a new link state.
    pub fn config_changed(&mut self) {
        self.counters.config_events += 1;
        match self.device.handle_config_change() {
            Ok(Some(up)) => log::info!("{}: link {}", self.name, if up { "up" } else { "down" }),
            Ok(None) => {}
            Err(error) => log::warn!("{}: configuration change: {error}", self.name),
        }
    }
}

/// smoltcp's view of one card (see the module docs).
pub struct Phy<'a> {
    device: &'a mut KernelNetDevice,
    counters: &'a mut BridgeCounters,
    /// A ring broke while smoltcp polled: the caller recovers afterwards.
    pub broken: Option<NetError>,
    /// The pair whose receive queue is looked at first next time, so that
    /// a busy pair does not starve the others.
    next_rx_pair: u16,
}

impl<'a> Phy<'a> {
    /// The bridge for `device`, counting into `counters`.
    pub fn new(device: &'a mut KernelNetDevice, counters: &'a mut BridgeCounters) -> Self {
        Phy {
            device,
            counters,
            broken: None,
            next_rx_pair: 0,
        }
    }

    /// The MTU smoltcp must respect: the whole Ethernet frame.
    fn max_frame(&self) -> usize {
        self.device.max_frame()
    }
}

impl phy::Device for Phy<'_> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        // Every pair's receive queue in turn, starting after the last one
        // that had a packet; the answer goes out on the same pair.
        let pairs = self.device.queue_pairs();
        let chosen = (0..pairs)
            .map(|i| (self.next_rx_pair + i) % pairs)
            .find(|&pair| {
                self.device.pair(pair).is_some_and(|(rx, tx)| {
                    // smoltcp may answer from inside the receive token: only
                    // hand out a packet when there is room to answer it, and
                    // leave it in the ring otherwise (the next poll gets it).
                    // A broken ring says so in `receive` below.
                    tx.can_send() && rx.has_packet().unwrap_or(true)
                })
            })?;
        self.next_rx_pair = (chosen + 1) % pairs;
        let (rx, tx) = self.device.pair(chosen)?;
        match rx.receive() {
            Ok(Some(packet)) => Some((
                RxToken { packet },
                TxToken {
                    tx,
                    dropped: &mut self.counters.tx_dropped,
                },
            )),
            Ok(None) => None,
            Err(error) => {
                self.broken = Some(error);
                None
            }
        }
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        let pair = self.device.tx_pair_for_cpu(crate::smp::current_cpu());
        let (_, tx) = self.device.pair(pair)?;
        if !tx.can_send() {
            return None;
        }
        Some(TxToken {
            tx,
            dropped: &mut self.counters.tx_dropped,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.max_frame();
        // No checksum offload was negotiated: smoltcp computes and checks
        // every checksum itself (the default capabilities say so).
        caps
    }
}

/// A received frame, still in the device's DMA buffer.
pub struct RxToken<'a> {
    packet: RxPacket<'a, KernelHal>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        // The frame is read in place; dropping `self.packet` at the end of
        // this function reposts its buffer.
        f(self.packet.data())
    }
}

/// Room for one frame in the transmit queue.
pub struct TxToken<'a> {
    tx: &'a mut TxQueue<KernelHal>,
    dropped: &'a mut u64,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        match self.tx.reserve(len) {
            Ok(mut slot) => {
                let result = f(slot.buffer());
                if slot.send().is_err() {
                    *self.dropped += 1;
                }
                result
            }
            Err(_) => {
                // Room was checked when the token was made, so only a frame
                // longer than the MTU smoltcp was given gets here. smoltcp
                // still wants its closure run: build the frame aside, drop it.
                *self.dropped += 1;
                let mut aside = vec![0u8; len];
                f(&mut aside)
            }
        }
    }
}

/// How often a polled card's interrupt status is read for configuration changes.
const CONFIG_POLL_NS: u64 = 100_000_000;

/// Counts the cards the registry gave this driver, for the self-tests.
pub fn count() -> usize {
    nics().len()
}
