//! A virtio-net device for host tests (virtio 1.2 §5.1), built from the
//! register-level core in [`crate::models::virtio`] and, for the data path,
//! one [`VqModel`] per queue (rust-vmm's `virtio-queue`: an implementation of
//! the ring that shares no code with the driver).
//!
//! The model behaves like QEMU's device where it matters to the driver:
//!
//! - **Receive**: it takes the driver's available receive buffers when it has
//!   a packet to deliver (not only after a notification: QEMU looks at the
//!   ring whenever a packet arrives), writes the virtio-net header and the
//!   frame, and with MRG_RXBUF spreads a long frame over as many buffers as it
//!   needs, with `num_buffers` in the first header. [`NetModel::deliver`] is the
//!   correct device; [`NetModel::deliver_raw`] writes whatever a test asks
//!   (lengths past the buffer, bogus `num_buffers`) for the hostile tests.
//! - **Transmit** and **control**: the device only looks at these queues when
//!   it is awake, i.e. after a notification, like a real device that sleeps
//!   until it is kicked. Work published while it sleeps without a
//!   notification stays there, and is counted in
//!   [`NetModel::missed_notifications`]: a driver that forgets to notify
//!   loses frames here, as it would on QEMU.
//! - **Configuration**: MAC, status, max_virtqueue_pairs and MTU at their
//!   §5.1.4 offsets; [`NetModel::set_link`] changes the status and raises the
//!   configuration interrupt bit.
//! - **Several queue pairs** ([`NetModel::with_queue_pairs`], VIRTIO_NET_F_MQ):
//!   receiveqN and transmitqN at 2(N-1) and 2(N-1)+1, the control queue at
//!   `2 * max_virtqueue_pairs` once MQ is negotiated (queue 2 otherwise). Like
//!   QEMU, the device uses only the first pair until a VQ_PAIRS_SET with a
//!   count in 1..=max_virtqueue_pairs is acked, and throws away what the
//!   driver sends on a transmit queue beyond the active pairs
//!   ([`NetModel::dropped_inactive_tx`]). [`NetModel::deliver_on`] receives on
//!   a chosen pair (the steering decision is the test's).
//! - **RSS** (VIRTIO_NET_F_RSS, [`net_config_rss`]): RSS_CONFIG is checked
//!   the way QEMU checks it (hash types the device supports, a power-of-two
//!   table no longer than its limit naming only queues below `max_tx_vq`,
//!   `max_tx_vq` within the pairs, a key no longer than its limit), kept in
//!   [`NetModel::rss`], and activates `max_tx_vq` pairs.
//!
//! Queue addresses are read back from the register core after the driver set
//! them up, for every transport flavour (separate areas, or the legacy
//! contiguous block at `pfn * page size`).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use drivers::pci;
use drivers::queue::QueueAddresses;
use drivers::transport::mmio::MmioTransport;
use drivers::transport::pci::{probe_with, TransportPreference};
use drivers::transport::AnyTransport;
use vm_memory::{Bytes, GuestAddress};

use crate::host_hal::HostHal;
use crate::models::pci::{
    attach, virtio_legacy, virtio_modern, Attach, PciPlatform, PlatformLayout,
};
use crate::models::virtio::{MmioWindow, ModernLayout, SharedCore, VirtioCore, DRIVER_OK};
use crate::models::{contiguous_addresses, test_windows};
use crate::vq_model::{device_memory, Chain, VqModel};

/// virtio device id of a network card.
pub const NET_DEVICE_ID: u32 = 1;
/// Receive, transmit, control.
pub const QUEUES: u16 = 3;
/// The feature bits QEMU 7.2 offers for a modern virtio-net device on the
/// user backend (shared/QEMU.md): low word 0x30bf8024, high word 0x101.
pub const QEMU_MODERN_FEATURES: u64 = 0x101_30bf_8024;
/// The same for a legacy device (with BAD_FEATURE, bit 30).
pub const QEMU_LEGACY_FEATURES: u64 = 0x39bf_8064;
/// Where the model's MMIO window is.
pub const MMIO_BASE: u64 = 0xfeb0_0e00;

/// Feature bits, spelled out here independently of the driver's constants.
pub mod bits {
    /// VIRTIO_NET_F_MTU.
    pub const MTU: u64 = 1 << 3;
    /// VIRTIO_NET_F_MAC.
    pub const MAC: u64 = 1 << 5;
    /// VIRTIO_NET_F_MRG_RXBUF.
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// VIRTIO_NET_F_STATUS.
    pub const STATUS: u64 = 1 << 16;
    /// VIRTIO_NET_F_CTRL_VQ.
    pub const CTRL_VQ: u64 = 1 << 17;
    /// VIRTIO_NET_F_CTRL_RX.
    pub const CTRL_RX: u64 = 1 << 18;
    /// VIRTIO_NET_F_MQ.
    pub const MQ: u64 = 1 << 22;
    /// VIRTIO_NET_F_RSS.
    pub const RSS: u64 = 1 << 60;
    /// VIRTIO_NET_F_CTRL_MAC_ADDR.
    pub const CTRL_MAC_ADDR: u64 = 1 << 23;
    /// VIRTIO_F_ANY_LAYOUT.
    pub const ANY_LAYOUT: u64 = 1 << 27;
    /// VIRTIO_F_INDIRECT_DESC.
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// VIRTIO_F_EVENT_IDX.
    pub const EVENT_IDX: u64 = 1 << 29;
    /// VIRTIO_F_VERSION_1.
    pub const VERSION_1: u64 = 1 << 32;
}

/// The device configuration bytes (§5.1.4): mac, status, max_virtqueue_pairs (1), mtu.
pub fn net_config(mac: [u8; 6], status: u16, mtu: u16) -> Vec<u8> {
    net_config_mq(mac, status, mtu, 1)
}

/// [`net_config`] with `max_virtqueue_pairs` = `max_pairs` (any value, for the hostile tests).
pub fn net_config_mq(mac: [u8; 6], status: u16, mtu: u16, max_pairs: u16) -> Vec<u8> {
    let mut config = Vec::with_capacity(12);
    config.extend_from_slice(&mac);
    config.extend_from_slice(&status.to_le_bytes());
    config.extend_from_slice(&max_pairs.to_le_bytes());
    config.extend_from_slice(&mtu.to_le_bytes());
    config
}

/// [`net_config_mq`] followed by the RSS fields (§5.1.4): speed and duplex
/// (zero), `rss_max_key_size`, `rss_max_indirection_table_length`,
/// `supported_hash_types`.
pub fn net_config_rss(
    mac: [u8; 6],
    max_pairs: u16,
    max_key_size: u8,
    max_table_len: u16,
    hash_types: u32,
) -> Vec<u8> {
    let mut config = net_config_mq(mac, 1, 0, max_pairs);
    config.extend_from_slice(&0u32.to_le_bytes());
    config.push(0);
    config.push(max_key_size);
    config.extend_from_slice(&max_table_len.to_le_bytes());
    config.extend_from_slice(&hash_types.to_le_bytes());
    config
}

/// The RSS configuration the driver set, as the device read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRss {
    /// `hash_types`.
    pub hash_types: u32,
    /// `unclassified_queue`.
    pub unclassified_queue: u16,
    /// The indirection table.
    pub table: Vec<u16>,
    /// `max_tx_vq`.
    pub max_tx_vq: u16,
    /// The hash key.
    pub key: Vec<u8>,
}

/// A frame the driver sent, as the device read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentFrame {
    /// The virtio-net header bytes.
    pub header: Vec<u8>,
    /// The Ethernet frame.
    pub frame: Vec<u8>,
    /// Descriptors in the chain (table entries for an indirect one).
    pub descriptors: usize,
    /// The transmit queue it came on (1, 3, 5, ...).
    pub queue: u16,
}

/// A control command the driver sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtrlCommand {
    /// Class.
    pub class: u8,
    /// Command.
    pub command: u8,
    /// Command-specific data.
    pub data: Vec<u8>,
}

/// The device refused to deliver: no receive buffer (or not enough) was available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Starved {
    /// Buffers the frame needed.
    pub needed: usize,
    /// Buffers available.
    pub available: usize,
}

/// One part of a hostile delivery: bytes to write into the next receive
/// buffer (cut to fit) and the length to claim in its used entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPart {
    /// What to write into the buffer (header and/or frame bytes).
    pub bytes: Vec<u8>,
    /// The used length to report, true or not.
    pub claimed_len: u32,
}

/// A queue as the device sees it, with the device's sleep state.
struct DeviceQueue {
    vq: VqModel,
}

/// A virtio-net device model. See the module documentation.
pub struct NetModel {
    /// The register core (status, features, config, ISR, access log).
    pub core: SharedCore,
    queues: Vec<Option<DeviceQueue>>,
    /// Queues the device has (3, or 2 * pairs + 1 with several pairs).
    queue_count: u16,
    /// Receive buffers taken from each receive queue and not yet used, by pair.
    rx_chains: Vec<VecDeque<Chain>>,
    /// Pairs the device uses (1 until a VQ_PAIRS_SET is acked).
    pub active_pairs: u16,
    /// Frames the driver put on a transmit queue beyond the active pairs:
    /// thrown away unsent, as QEMU does.
    pub dropped_inactive_tx: u64,
    /// The ack for VQ_PAIRS_SET commands instead of the normal judgement
    /// (0 OK for a count in range, 1 ERR otherwise).
    pub mq_ack: Option<u8>,
    /// The ack for RSS_CONFIG commands instead of the normal judgement.
    pub rss_ack: Option<u8>,
    /// The RSS configuration last accepted.
    pub rss: Option<ModelRss>,
    /// Frames the driver sent.
    pub sent: Vec<SentFrame>,
    /// Control commands the driver sent.
    pub commands: Vec<CtrlCommand>,
    /// The ack the device answers control commands with (0 OK, 1 ERR).
    pub ctrl_ack: u8,
    /// Report this used length for control commands instead of 1 (the ack
    /// byte): 0 under-reports (§2.7.8), the whole chain is a legacy habit.
    pub ctrl_used_len: Option<CtrlUsedLen>,
    /// Notifications already looked at (index into `core.notifications`).
    notifications_seen: usize,
    /// Publishes found while the device slept without a notification.
    pub missed_notifications: u64,
    /// Used-buffer interrupts the device would have raised, per queue.
    pub interrupts: Vec<u64>,
}

impl NetModel {
    /// A device offering `features` with `config`, queues of at most `queue_max`.
    pub fn new(features: u64, config: Vec<u8>, queue_max: u16) -> Self {
        Self::with_queues(features, config, queue_max, QUEUES)
    }

    /// A device with `pairs` queue pairs and its control queue behind them
    /// (`2 * pairs + 1` queues); `config` should say `pairs` in
    /// `max_virtqueue_pairs` ([`net_config_mq`]) unless a test lies on purpose.
    pub fn with_queue_pairs(features: u64, config: Vec<u8>, queue_max: u16, pairs: u16) -> Self {
        Self::with_queues(features, config, queue_max, 2 * pairs + 1)
    }

    /// A device with exactly `queue_count` queues, whatever its configuration says.
    pub fn with_queues(features: u64, config: Vec<u8>, queue_max: u16, queue_count: u16) -> Self {
        let core =
            VirtioCore::new(NET_DEVICE_ID, features, queue_count, queue_max, config).shared();
        Self {
            core,
            queues: Vec::new(),
            queue_count,
            rx_chains: Vec::new(),
            active_pairs: 1,
            dropped_inactive_tx: 0,
            mq_ack: None,
            rss_ack: None,
            rss: None,
            sent: Vec::new(),
            commands: Vec::new(),
            ctrl_ack: 0,
            ctrl_used_len: None,
            notifications_seen: 0,
            missed_notifications: 0,
            interrupts: vec![0; usize::from(queue_count)],
        }
    }

    /// `max_virtqueue_pairs` as the configuration says it.
    pub fn config_max_pairs(&self) -> u16 {
        let core = self.core.borrow();
        match core.config.get(8..10) {
            Some(bytes) => u16::from_le_bytes([bytes[0], bytes[1]]),
            None => 1,
        }
    }

    /// Where the device looks for the control queue: `2 * max_virtqueue_pairs`
    /// once MQ was negotiated, queue 2 otherwise (§5.1.2).
    pub fn ctrl_queue(&self) -> u16 {
        if self.negotiated() & (bits::MQ | bits::RSS) != 0 {
            self.config_max_pairs().saturating_mul(2)
        } else {
            2
        }
    }

    /// Queues the device has.
    pub fn queue_count(&self) -> u16 {
        self.queue_count
    }

    /// Attaches the device as virtio-mmio `version` (1 or 2) and returns the transport.
    pub fn mmio(&self, version: u32) -> MmioTransport<HostHal> {
        HostHal::clear_devices();
        HostHal::map_mmio(
            MMIO_BASE,
            0x200,
            MmioWindow::new(self.core.clone(), version),
        );
        MmioTransport::<HostHal>::new(MMIO_BASE, 0x200).expect("the model is a virtio-mmio device")
    }

    /// Attaches the device as virtio-pci (modern-only, or legacy-only) and
    /// returns the transport the PCI probe finds.
    pub fn pci(&self, modern: bool) -> AnyTransport<HostHal> {
        HostHal::clear_devices();
        let platform = PciPlatform::new();
        let function = if modern {
            virtio_modern(&self.core, ModernLayout::default())
        } else {
            virtio_legacy(0x1000, &self.core)
        };
        platform.borrow_mut().add(Attach::Root, 3, 0, function);
        attach(&platform, &PlatformLayout::default());
        let access = crate::host_hal::port_io_config();
        let functions = pci::enumerate(&access, &test_windows()).expect("enumeration");
        probe_with::<HostHal, _>(&access, &functions[0], TransportPreference::PreferModern)
            .expect("the model is a virtio-pci device")
    }

    /// The features the driver accepted.
    pub fn negotiated(&self) -> u64 {
        self.core.borrow().driver_features
    }

    /// The header length the negotiated features imply (§5.1.6.1).
    pub fn header_len(&self) -> usize {
        if self.negotiated() & (bits::VERSION_1 | bits::MRG_RXBUF) != 0 {
            12
        } else {
            10
        }
    }

    fn mergeable(&self) -> bool {
        self.negotiated() & bits::MRG_RXBUF != 0
    }

    /// The addresses the driver programmed for queue `q`, however the
    /// transport expressed them; `None` if the queue is not live.
    pub fn queue_addresses(&self, q: u16) -> Option<QueueAddresses> {
        let core = self.core.borrow();
        let state = core.queues.get(q as usize)?;
        if state.pfn != 0 {
            // Legacy: one block at pfn * page size. virtio-mmio v1 says its
            // page size and alignment; legacy PCI's are both 4096.
            let page = if core.guest_page_size != 0 {
                u64::from(core.guest_page_size)
            } else {
                4096
            };
            let align = if state.align != 0 {
                u64::from(state.align)
            } else {
                4096
            };
            return Some(contiguous_addresses(
                u64::from(state.pfn) * page,
                state.size,
                align,
            ));
        }
        if state.enabled && state.desc != 0 {
            return Some(QueueAddresses {
                size: state.size,
                desc: state.desc,
                driver: state.driver,
                device: state.device,
            });
        }
        None
    }

    /// Builds the device side of every live queue. Call after the driver
    /// brought the device up (DRIVER_OK must be set).
    pub fn attach_queues(&mut self) {
        assert!(
            self.core.borrow().status & DRIVER_OK != 0,
            "the driver has not set DRIVER_OK"
        );
        let event_idx = self.negotiated() & bits::EVENT_IDX != 0;
        self.queues = (0..self.queue_count)
            .map(|q| {
                self.queue_addresses(q).map(|addrs| DeviceQueue {
                    vq: VqModel::new(addrs, event_idx),
                })
            })
            .collect();
        self.rx_chains = (0..self.queue_count.div_ceil(2))
            .map(|_| VecDeque::new())
            .collect();
        self.active_pairs = 1;
        self.notifications_seen = 0;
    }

    /// The device side of queue `q`.
    pub fn vq(&mut self, q: u16) -> &mut VqModel {
        &mut self
            .queues
            .get_mut(q as usize)
            .and_then(Option::as_mut)
            .unwrap_or_else(|| panic!("queue {q} is not live"))
            .vq
    }

    /// `true` if queue `q` was set up by the driver.
    pub fn has_queue(&self, q: u16) -> bool {
        self.queues.get(q as usize).is_some_and(Option::is_some)
    }

    /// Takes newly published receive buffers; returns how many the device holds.
    pub fn rx_available(&mut self) -> usize {
        self.rx_available_on(0)
    }

    /// [`NetModel::rx_available`] for the receive queue of pair `pair`.
    pub fn rx_available_on(&mut self, pair: u16) -> usize {
        let chains = self.vq(2 * pair).take_available();
        let held = &mut self.rx_chains[usize::from(pair)];
        held.extend(chains);
        held.len()
    }

    /// Lengths of the receive buffers the device holds, in ring order.
    pub fn rx_buffer_lens(&mut self) -> Vec<u32> {
        self.rx_available();
        self.rx_chains[0].iter().map(Chain::writable_len).collect()
    }

    /// Descriptors per receive chain the device holds, in ring order.
    pub fn rx_chain_descriptors(&mut self) -> Vec<usize> {
        self.rx_available();
        self.rx_chains[0].iter().map(|c| c.descriptors).collect()
    }

    /// Delivers `frame` as a correct device: header + frame in one buffer,
    /// or (MRG_RXBUF) spread over as many as needed. Returns the buffers used.
    pub fn deliver(&mut self, frame: &[u8]) -> Result<usize, Starved> {
        self.deliver_on(0, frame)
    }

    /// [`NetModel::deliver`] on the receive queue of pair `pair`. Like a
    /// device, it delivers only on active pairs.
    pub fn deliver_on(&mut self, pair: u16, frame: &[u8]) -> Result<usize, Starved> {
        if pair >= self.active_pairs {
            return Err(Starved {
                needed: 1,
                available: 0,
            });
        }
        let rxq = 2 * pair;
        self.rx_available_on(pair);
        let held = usize::from(pair);
        let header_len = self.header_len();
        let mut packet = vec![0u8; header_len];
        packet.extend_from_slice(frame);
        let mergeable = self.mergeable();
        // How many buffers, and what goes in each.
        let mut pieces: Vec<usize> = Vec::new();
        let mut rest = packet.len();
        for chain in &self.rx_chains[held] {
            if rest == 0 {
                break;
            }
            let room = chain.writable_len() as usize;
            if !mergeable {
                if room < rest {
                    // A correct device does not truncate: it waits for a big enough buffer.
                    return Err(Starved {
                        needed: 1,
                        available: 0,
                    });
                }
                pieces.push(rest);
                rest = 0;
                break;
            }
            let n = room.min(rest);
            pieces.push(n);
            rest -= n;
        }
        if rest > 0 {
            return Err(Starved {
                needed: pieces.len() + 1,
                available: self.rx_chains[held].len(),
            });
        }
        if header_len >= 12 {
            let n = pieces.len() as u16;
            packet[10..12].copy_from_slice(&n.to_le_bytes());
        }
        let mut offset = 0;
        let used = pieces.len();
        for len in pieces {
            let chain = self.rx_chains[held].pop_front().expect("counted above");
            let chunk = &packet[offset..offset + len];
            self.vq(rxq).complete(&chain, chunk);
            offset += len;
        }
        self.signal(rxq);
        Ok(used)
    }

    /// Delivers whatever the test says: each part goes into the next
    /// receive buffer (cut to fit) and its used entry claims `claimed_len`.
    /// Returns `Err` if fewer buffers are available than parts.
    pub fn deliver_raw(&mut self, parts: &[RawPart]) -> Result<(), Starved> {
        self.rx_available();
        if self.rx_chains[0].len() < parts.len() {
            return Err(Starved {
                needed: parts.len(),
                available: self.rx_chains[0].len(),
            });
        }
        for part in parts {
            let chain = self.rx_chains[0].pop_front().expect("counted above");
            write_chain(&chain, &part.bytes);
            self.vq(0).complete_with_len(chain.head, part.claimed_len);
        }
        self.signal(0);
        Ok(())
    }

    /// A packet header for `deliver_raw`: `flags`, `gso_type`, `num_buffers`.
    pub fn header(&self, flags: u8, gso_type: u8, num_buffers: u16) -> Vec<u8> {
        let mut header = vec![0u8; self.header_len()];
        header[0] = flags;
        header[1] = gso_type;
        if header.len() >= 12 {
            header[10..12].copy_from_slice(&num_buffers.to_le_bytes());
        }
        header
    }

    /// Looks at new notifications: wakes the queues they name. A queue with
    /// published work that is asleep and was not notified counts a miss.
    fn look_at_notifications(&mut self) {
        let new: Vec<u16> = {
            let core = self.core.borrow();
            core.notifications[self.notifications_seen..].to_vec()
        };
        self.notifications_seen += new.len();
        for q in new {
            if self.has_queue(q) {
                self.vq(q).driver_published(true);
            }
        }
    }

    /// Runs every transmit queue once: if the device is awake, it reads every
    /// published frame, completes it (used length 0) and goes back to sleep.
    /// Frames on a queue beyond the active pairs are completed unsent.
    /// Returns the frames read.
    pub fn process_tx(&mut self) -> usize {
        self.look_at_notifications();
        let header_len = self.header_len();
        let ctrl = self.ctrl_queue();
        let mut done = 0;
        for q in (1..self.queue_count).step_by(2) {
            if q == ctrl || !self.has_queue(q) {
                continue;
            }
            let active = q / 2 < self.active_pairs;
            done += self.run_queue(q, |model, chain| {
                if !active {
                    model.dropped_inactive_tx += 1;
                    return Vec::new();
                }
                let header = chain.readable[..header_len.min(chain.readable.len())].to_vec();
                let frame = chain.readable[header.len()..].to_vec();
                model.sent.push(SentFrame {
                    header,
                    frame,
                    descriptors: chain.descriptors,
                    queue: q,
                });
                Vec::new()
            });
        }
        done
    }

    /// Runs the control queue once, answering each command with `ctrl_ack`
    /// (VQ_PAIRS_SET: with `mq_ack`, or OK for a pair count the device has,
    /// which it then uses).
    pub fn process_ctrl(&mut self) -> usize {
        self.look_at_notifications();
        let ctrl = self.ctrl_queue();
        if !self.has_queue(ctrl) {
            return 0;
        }
        self.run_queue(ctrl, |model, chain| {
            let bytes = &chain.readable;
            let command = CtrlCommand {
                class: bytes.first().copied().unwrap_or(0xff),
                command: bytes.get(1).copied().unwrap_or(0xff),
                data: bytes.get(2..).map(<[u8]>::to_vec).unwrap_or_default(),
            };
            let ack = match (command.class, command.command) {
                (4, 0) => model.vq_pairs_set(&command.data),
                (4, 1) => model.rss_config(&command.data),
                _ => model.ctrl_ack,
            };
            model.commands.push(command);
            vec![ack]
        })
    }

    /// VIRTIO_NET_CTRL_MQ_RSS_CONFIG (§5.1.6.5.7.1), judged like QEMU's
    /// `virtio_net_handle_rss`.
    fn rss_config(&mut self, data: &[u8]) -> u8 {
        let parsed = self.parse_rss(data);
        let ack = self.rss_ack.unwrap_or(u8::from(
            parsed.is_none() || self.negotiated() & bits::RSS == 0,
        ));
        if ack == 0 {
            if let Some(rss) = parsed {
                self.active_pairs = rss.max_tx_vq;
                self.rss = Some(rss);
            }
        }
        ack
    }

    fn parse_rss(&self, data: &[u8]) -> Option<ModelRss> {
        let config = self.core.borrow().config.clone();
        let max_key = usize::from(*config.get(17)?);
        let max_table = usize::from(u16::from_le_bytes([*config.get(18)?, *config.get(19)?]));
        let supported = u32::from_le_bytes(config.get(20..24)?.try_into().ok()?);
        let u16_at = |at: usize| Some(u16::from_le_bytes([*data.get(at)?, *data.get(at + 1)?]));
        let hash_types = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?);
        let len = usize::from(u16_at(4)?) + 1;
        let unclassified_queue = u16_at(6)?;
        let table: Vec<u16> = (0..len).map(|i| u16_at(8 + 2 * i)).collect::<Option<_>>()?;
        let after = 8 + 2 * len;
        let max_tx_vq = u16_at(after)?;
        let key_len = usize::from(*data.get(after + 2)?);
        let key = data.get(after + 3..after + 3 + key_len)?.to_vec();
        let valid = hash_types & !supported == 0
            && len.is_power_of_two()
            && len <= max_table
            && max_tx_vq >= 1
            && max_tx_vq <= self.config_max_pairs()
            && table.iter().all(|&q| q < max_tx_vq)
            && unclassified_queue < max_tx_vq
            && key_len <= max_key
            && data.len() == after + 3 + key_len;
        valid.then_some(ModelRss {
            hash_types,
            unclassified_queue,
            table,
            max_tx_vq,
            key,
        })
    }

    /// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET (§5.1.6.5.5): `le16 virtqueue_pairs`.
    fn vq_pairs_set(&mut self, data: &[u8]) -> u8 {
        let pairs = match data {
            [low, high] => u16::from_le_bytes([*low, *high]),
            _ => return 1,
        };
        let ack = self.mq_ack.unwrap_or(u8::from(
            self.negotiated() & bits::MQ == 0 || pairs == 0 || pairs > self.config_max_pairs(),
        ));
        if ack == 0 {
            self.active_pairs = pairs;
            // QEMU turns RSS off when told the pair count this way.
            self.rss = None;
        }
        ack
    }

    /// Runs transmit and control once.
    pub fn step(&mut self) {
        self.process_tx();
        self.process_ctrl();
    }

    /// The device side of a driver-to-device queue: process while awake.
    fn run_queue(&mut self, q: u16, mut handle: impl FnMut(&mut Self, &Chain) -> Vec<u8>) -> usize {
        let mut done = 0;
        loop {
            if self.vq(q).is_asleep() {
                let pending = self.vq(q).avail_idx() != self.vq(q).next_avail();
                if pending {
                    // Published, but nobody woke the device.
                    self.missed_notifications += 1;
                }
                return done;
            }
            let chains = self.vq(q).take_available();
            for chain in &chains {
                let reply = handle(self, chain);
                let is_ctrl = q == self.ctrl_queue();
                let reported = match (is_ctrl, self.ctrl_used_len) {
                    (true, Some(CtrlUsedLen::Exactly(len))) => len,
                    (true, Some(CtrlUsedLen::TotalChain)) => {
                        (chain.readable.len() + reply.len()) as u32
                    }
                    _ => reply.len() as u32,
                };
                self.vq(q).complete_reporting(chain, &reply, reported);
                done += 1;
            }
            if !chains.is_empty() {
                self.signal(q);
            }
            if self.vq(q).try_sleep() {
                return done;
            }
        }
    }

    fn signal(&mut self, q: u16) {
        if self.vq(q).signal_used() {
            self.interrupts[q as usize] += 1;
            self.core.borrow_mut().isr |= 1;
        }
    }

    /// Changes the link status bit and raises the configuration interrupt.
    pub fn set_link(&self, up: bool) {
        let mut core = self.core.borrow_mut();
        let status = u16::from(up);
        if core.config.len() >= 8 {
            core.config[6..8].copy_from_slice(&status.to_le_bytes());
        }
        core.generation += 1;
        core.isr |= 2;
    }
}

/// Writes `data` across a chain's writable buffers (as much as fits).
pub fn write_chain(chain: &Chain, data: &[u8]) {
    let mem = device_memory();
    let mut rest = data;
    for &(addr, len) in &chain.writable {
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(len as usize);
        mem.write_slice(&rest[..n], GuestAddress(addr))
            .expect("receive buffer reachable");
        rest = &rest[n..];
    }
}

/// An Ethernet frame of `len` bytes: broadcast destination, source
/// 52:54:00:00:00:02, EtherType 0x88b5 (local experimental), then a
/// payload pattern derived from `seed`.
pub fn test_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x52, 0x54, 0x00, 0x00, 0x00, 0x02]);
    frame.extend_from_slice(&[0x88, 0xb5]);
    let mut x = u32::from(seed) | 0x100;
    while frame.len() < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        frame.push((x >> 16) as u8);
    }
    frame.truncate(len);
    frame
}

/// A shareable handle, for tests that want the model inside a `Wait` closure.
pub type SharedNetModel = Rc<RefCell<NetModel>>;

/// What a control-queue answer reports as its used length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtrlUsedLen {
    /// Exactly this many bytes.
    Exactly(u32),
    /// The whole chain, device-readable bytes included.
    TotalChain,
}

/// A driver-side [`Wait`](drivers::device::Wait) that runs the model one step
/// per wait (its control and transmit queues), giving up after ten: what the
/// driver's blocking calls (VQ_PAIRS_SET, control commands, a full transmit
/// queue) wait on in host tests. [`StepModel::sleeping`] stands for a wait
/// that sleeps until an interrupt: the driver must arm the queue's
/// interrupts before it and may disarm them after (the model's queues
/// interrupt only where the driver asked).
pub struct StepModel<'a> {
    model: &'a mut NetModel,
    waits: u64,
    sleeps: bool,
}

impl<'a> StepModel<'a> {
    /// A polling wait.
    pub fn new(model: &'a mut NetModel) -> Self {
        Self {
            model,
            waits: 0,
            sleeps: false,
        }
    }

    /// A wait that sleeps until an interrupt.
    pub fn sleeping(model: &'a mut NetModel) -> Self {
        Self {
            model,
            waits: 0,
            sleeps: true,
        }
    }

    /// How many times the driver waited.
    pub fn waits(&self) -> u64 {
        self.waits
    }
}

impl drivers::device::Wait for StepModel<'_> {
    fn wait(&mut self) -> Result<(), drivers::device::WaitTimeout> {
        if self.waits >= 10 {
            return Err(drivers::device::WaitTimeout { waits: self.waits });
        }
        self.waits += 1;
        self.model.step();
        Ok(())
    }

    fn sleeps_until_interrupt(&self) -> bool {
        self.sleeps
    }
}
