//! A virtio-console device model (virtio 1.2 §5.3) that behaves like QEMU's
//! virtio-serial, for testing `drivers::console` on the host.
//!
//! The device side of every queue is [`crate::vq_model::VqModel`] (rust-vmm's
//! `virtio-queue`, independent of the driver's ring code). On top of it
//! [`ConsoleModel`] is the host end of each port and of the control protocol,
//! with QEMU's habits (hw/char/virtio-serial-bus.c):
//!
//! - DEVICE_READY 1 is answered with a PORT_ADD for every port; PORT_READY 1
//!   with CONSOLE_PORT (console ports), PORT_NAME (name + NUL, named ports)
//!   and PORT_OPEN 1 (ports the host has open), all at once;
//! - a control message for which no receive buffer is posted is dropped
//!   (counted in [`ConsoleModel::control_dropped`]); one longer than the
//!   buffer is cut, but reported with its full length, as QEMU does;
//! - with MULTIPORT, host data goes to a port only after the guest opened it
//!   (PORT_OPEN 1); guest data for a port the host has not opened is thrown
//!   away (counted);
//! - a *throttled* port ([`ConsoleModel::throttle`]) takes transmit buffers
//!   but does not return them until un-throttled: a host that stopped
//!   reading, which the driver must meet with back-pressure;
//! - with the synchronous knob on (the default) a notification is served
//!   before `notify` returns, as QEMU serves it inside the vCPU's exit.
//!
//! It also checks the driver and records what a correct one never does in
//! [`ConsoleModel::violations`]: a transmit chain that is not exactly one
//! device-readable buffer, a receive chain with a readable buffer, a control
//! message that is not 8 bytes, a control event a driver must not send, a
//! PORT_READY for a port never added, a notification of a queue not set up.
//!
//! Knobs for hostile tests: [`ConsoleModel::inject_control`] sends any bytes
//! as a control message (with any claimed length); `add_port` /
//! `remove_port` / `host_open` do hotplug and connection changes at any time.
//!
//! Attach it through [`ConsoleModelTransport`] (a [`Transport`] implemented on
//! the model, any [`TransportKind`]) or through the register-level models of
//! [`crate::models::virtio`] with [`ConsoleModel::sync_with_core`].

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use drivers::console::feature;
use drivers::features;
use drivers::queue::{QueueAddresses, RingLayout};
use drivers::transport::{
    ConfigConsistency, DeviceStatus, DeviceType, FieldWidth, InterruptStatus, Location, Transport,
    TransportError, TransportKind,
};
use vm_memory::{Bytes, GuestAddress};

use crate::models::virtio::VirtioCore;
use crate::vq_model::{device_memory, Chain, VqModel};

/// Control events (§5.3.6.2).
pub mod event {
    /// DEVICE_READY.
    pub const DEVICE_READY: u16 = 0;
    /// PORT_ADD.
    pub const PORT_ADD: u16 = 1;
    /// PORT_REMOVE.
    pub const PORT_REMOVE: u16 = 2;
    /// PORT_READY.
    pub const PORT_READY: u16 = 3;
    /// CONSOLE_PORT.
    pub const CONSOLE_PORT: u16 = 4;
    /// RESIZE.
    pub const RESIZE: u16 = 5;
    /// PORT_OPEN.
    pub const PORT_OPEN: u16 = 6;
    /// PORT_NAME.
    pub const PORT_NAME: u16 = 7;
}

const DRIVER_OK: u8 = 4;

/// The 8-byte control header.
pub fn control_bytes(id: u32, event: u16, value: u16) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8);
    bytes.extend_from_slice(&id.to_le_bytes());
    bytes.extend_from_slice(&event.to_le_bytes());
    bytes.extend_from_slice(&value.to_le_bytes());
    bytes
}

/// One port as the host configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPortConfig {
    /// Port number.
    pub id: u32,
    /// `name=` (sent as PORT_NAME).
    pub name: Option<String>,
    /// A `virtconsole` (sent as CONSOLE_PORT).
    pub console: bool,
    /// The host side is connected (sent as PORT_OPEN 1 after PORT_READY).
    pub host_open: bool,
}

impl HostPortConfig {
    /// A console port (QEMU's `virtconsole`, open on the host side).
    pub fn console(id: u32) -> Self {
        Self {
            id,
            name: None,
            console: true,
            host_open: true,
        }
    }

    /// A named serial port (`virtserialport,name=...`), open on the host side.
    pub fn named(id: u32, name: &str) -> Self {
        Self {
            id,
            name: Some(name.to_string()),
            console: false,
            host_open: true,
        }
    }
}

/// What the device offers and how its configuration reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleModelConfig {
    /// Offered features.
    pub features: u64,
    /// `cols`, `rows`.
    pub size: (u16, u16),
    /// `max_nr_ports`.
    pub max_nr_ports: u32,
    /// QueueNumMax of the data queues (QEMU: 128).
    pub queue_max: u16,
    /// QueueNumMax of the control queues (QEMU: 32).
    pub control_queue_max: u16,
    /// The ports the host has.
    pub ports: Vec<HostPortConfig>,
}

impl ConsoleModelConfig {
    /// What QEMU 7.2's modern virtio-serial offers, with a console on port
    /// 0 and `max_nr_ports` 31.
    pub fn qemu_multiport(ports: Vec<HostPortConfig>) -> Self {
        Self {
            features: feature::MULTIPORT
                | feature::EMERG_WRITE
                | features::RING_INDIRECT_DESC
                | features::RING_EVENT_IDX
                | features::VERSION_1,
            size: (0, 0),
            max_nr_ports: 31,
            queue_max: 128,
            control_queue_max: 32,
            ports,
        }
    }

    /// `max_ports=1`: no MULTIPORT, one console port; SIZE offered with `size`.
    pub fn single_port(size: Option<(u16, u16)>) -> Self {
        let mut features = feature::EMERG_WRITE
            | features::RING_INDIRECT_DESC
            | features::RING_EVENT_IDX
            | features::VERSION_1;
        if size.is_some() {
            features |= feature::SIZE;
        }
        Self {
            features,
            size: size.unwrap_or((0, 0)),
            max_nr_ports: 1,
            queue_max: 128,
            control_queue_max: 32,
            ports: vec![HostPortConfig::console(0)],
        }
    }

    /// The 12-byte configuration space.
    pub fn config_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(12);
        bytes.extend_from_slice(&self.size.0.to_le_bytes());
        bytes.extend_from_slice(&self.size.1.to_le_bytes());
        bytes.extend_from_slice(&self.max_nr_ports.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes
    }

    fn multiport(&self) -> bool {
        self.features & feature::MULTIPORT != 0
    }

    /// How many queues the device has.
    pub fn queue_count(&self) -> u16 {
        if self.multiport() {
            (2 * (self.max_nr_ports as u64 + 1)).min(u16::MAX as u64) as u16
        } else {
            2
        }
    }
}

/// The host end of one port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPort {
    /// The configuration it was added with.
    pub name: Option<String>,
    /// Console port.
    pub console: bool,
    /// PORT_ADD sent.
    pub added: bool,
    /// The driver answered PORT_READY with this value.
    pub ready: Option<u16>,
    /// The guest opened it (PORT_OPEN from the driver).
    pub guest_open: bool,
    /// The host side is open.
    pub host_open: bool,
    /// Bytes the guest wrote, in order.
    pub received: Vec<u8>,
    /// Bytes waiting to go to the guest.
    pub to_guest: VecDeque<u8>,
    /// Guest bytes thrown away (the host side was closed).
    pub discarded: u64,
    /// Transmit descriptors taken.
    pub transmit_buffers: u64,
    /// The host does not read: transmit buffers are held.
    pub throttled: bool,
}

/// Which queue is which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A port's receive queue.
    Receive(u32),
    /// A port's transmit queue.
    Transmit(u32),
    /// Control receive (device to driver).
    ControlReceive,
    /// Control transmit (driver to device).
    ControlTransmit,
}

/// The role of queue `q`.
pub fn role(q: u16) -> Role {
    match q {
        0 => Role::Receive(0),
        1 => Role::Transmit(0),
        2 => Role::ControlReceive,
        3 => Role::ControlTransmit,
        _ => {
            let port = u32::from(q / 2) - 1;
            if q.is_multiple_of(2) {
                Role::Receive(port)
            } else {
                Role::Transmit(port)
            }
        }
    }
}

/// The device. See the module documentation.
pub struct ConsoleModel {
    /// Offer and configuration.
    pub config: ConsoleModelConfig,
    /// Device status.
    pub status: u8,
    /// Status writes in order.
    pub status_writes: Vec<u8>,
    /// What the driver accepted.
    pub driver_features: u64,
    /// Configuration generation.
    pub generation: u32,
    /// Bytes written through `emerg_wr`, in order.
    pub emergency: Vec<u8>,
    /// Notifications by queue, in order.
    pub notifications: Vec<u16>,
    /// Pending interrupt bits.
    pub isr: u8,
    /// Serve a notification inside `notify` (QEMU does).
    pub synchronous: bool,
    /// The host end of each port, by id (ports the config lists, and hotplugged ones).
    pub ports: BTreeMap<u32, HostPort>,
    /// Every control message the driver sent: (id, event, value).
    pub control_received: Vec<(u32, u16, u16)>,
    /// Control messages dropped for want of a receive buffer.
    pub control_dropped: u64,
    /// Control messages delivered to the driver.
    pub control_sent: u64,
    /// Steps at which a transmit queue was asleep with work the driver never notified.
    pub missed_notifications: u64,
    /// Rules the driver broke.
    pub violations: Vec<String>,

    queues: Vec<Option<VqModel>>,
    /// Posted receive chains not used yet, per queue.
    posted: BTreeMap<u16, VecDeque<Chain>>,
    /// Transmit chains held while a port is throttled, per port.
    held: BTreeMap<u32, VecDeque<Chain>>,
    /// Control messages waiting (used only before DRIVER_OK is impossible: QEMU drops).
    control_out: VecDeque<(Vec<u8>, Option<u32>)>,
}

/// A model shared between the test, its transport and its waits.
pub type SharedConsoleModel = Rc<RefCell<ConsoleModel>>;

impl ConsoleModel {
    /// A device with `config`.
    pub fn new(config: ConsoleModelConfig) -> Self {
        let ports = config
            .ports
            .iter()
            .map(|p| {
                (
                    p.id,
                    HostPort {
                        name: p.name.clone(),
                        console: p.console,
                        host_open: p.host_open,
                        ..HostPort::default()
                    },
                )
            })
            .collect();
        let queues = (0..config.queue_count()).map(|_| None).collect();
        Self {
            config,
            status: 0,
            status_writes: Vec::new(),
            driver_features: 0,
            generation: 0,
            emergency: Vec::new(),
            notifications: Vec::new(),
            isr: 0,
            synchronous: true,
            ports,
            control_received: Vec::new(),
            control_dropped: 0,
            control_sent: 0,
            missed_notifications: 0,
            violations: Vec::new(),
            queues,
            posted: BTreeMap::new(),
            held: BTreeMap::new(),
            control_out: VecDeque::new(),
        }
    }

    /// Wraps the model for sharing.
    pub fn shared(self) -> SharedConsoleModel {
        Rc::new(RefCell::new(self))
    }

    fn multiport(&self) -> bool {
        self.driver_features & feature::MULTIPORT != 0
    }

    fn negotiated(&self, bit: u64) -> bool {
        self.driver_features & bit != 0
    }

    /// A status write: 0 resets.
    pub fn write_status(&mut self, value: u8) {
        self.status_writes.push(value);
        if value == 0 {
            self.reset();
            return;
        }
        let went_live = value & DRIVER_OK != 0 && self.status & DRIVER_OK == 0;
        self.status = value;
        if went_live && !self.multiport() {
            // QEMU: without MULTIPORT the guest is "connected" to port 0 at DRIVER_OK.
            if let Some(port) = self.ports.get_mut(&0) {
                port.added = true;
                port.ready = Some(1);
                port.guest_open = true;
            }
        }
    }

    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.isr = 0;
        for q in &mut self.queues {
            *q = None;
        }
        self.posted.clear();
        self.held.clear();
        self.control_out.clear();
        for port in self.ports.values_mut() {
            port.added = false;
            port.ready = None;
            port.guest_open = false;
        }
    }

    /// The driver programmed queue `queue`.
    pub fn attach_queue(&mut self, queue: u16, addrs: QueueAddresses) {
        let event_idx = self.negotiated(features::RING_EVENT_IDX);
        match self.queues.get_mut(queue as usize) {
            Some(slot) => *slot = Some(VqModel::new(addrs, event_idx)),
            None => self
                .violations
                .push(format!("setup of queue {queue}, which does not exist")),
        }
    }

    /// The driver notified `queue`.
    pub fn notified(&mut self, queue: u16) {
        self.notifications.push(queue);
        match self.queues.get_mut(queue as usize) {
            Some(Some(vq)) => vq.driver_published(true),
            _ => {
                self.violations
                    .push(format!("notify of queue {queue}, which is not set up"));
                return;
            }
        }
        if self.synchronous {
            self.step();
        }
    }

    /// The queues the driver set up.
    pub fn live_queues(&self) -> usize {
        self.queues.iter().filter(|q| q.is_some()).count()
    }

    /// Notifications the driver sent for `queue`.
    pub fn notifications_of(&self, queue: u16) -> usize {
        self.notifications.iter().filter(|&&q| q == queue).count()
    }

    /// The addresses queue `queue` was set up with.
    pub fn queue_addresses(&self, queue: u16) -> Option<QueueAddresses> {
        self.queues
            .get(queue as usize)?
            .as_ref()
            .map(VqModel::addresses)
    }

    /// Receive chains posted and not used, on `queue`.
    pub fn posted_on(&self, queue: u16) -> usize {
        self.posted.get(&queue).map_or(0, VecDeque::len)
    }

    /// The host end of port `id`.
    pub fn port(&self, id: u32) -> &HostPort {
        self.ports
            .get(&id)
            .unwrap_or_else(|| panic!("the model has no port {id}"))
    }

    /// The host end of port `id`, mutably (created empty if missing).
    pub fn port_mut(&mut self, id: u32) -> &mut HostPort {
        self.ports.entry(id).or_default()
    }

    /// Queues `bytes` for the guest on port `id` and delivers what fits.
    pub fn send_to_guest(&mut self, id: u32, bytes: &[u8]) {
        self.port_mut(id).to_guest.extend(bytes);
        self.step();
    }

    /// Stops (`true`) or resumes reading port `id`'s transmit queue.
    pub fn throttle(&mut self, id: u32, on: bool) {
        self.port_mut(id).throttled = on;
        if !on {
            self.step();
        }
    }

    /// Hotplugs a port: PORT_ADD now (if the device is live).
    pub fn add_port(&mut self, config: HostPortConfig) {
        let id = config.id;
        self.ports.insert(
            id,
            HostPort {
                name: config.name,
                console: config.console,
                host_open: config.host_open,
                ..HostPort::default()
            },
        );
        self.port_mut(id).added = true;
        self.send_control(control_bytes(id, event::PORT_ADD, 1), None);
        self.step();
    }

    /// Unplugs port `id`: PORT_REMOVE. QEMU first returns the port's
    /// transmit buffers (unread, length 0).
    pub fn remove_port(&mut self, id: u32) {
        if let Some(chains) = self.held.remove(&id) {
            if let Some(q) = drivers::console::transmit_queue(id) {
                if let Some(Some(vq)) = self.queues.get_mut(q as usize) {
                    for chain in chains {
                        vq.complete(&chain, &[]);
                    }
                    vq.signal_used();
                }
            }
        }
        self.ports.remove(&id);
        self.send_control(control_bytes(id, event::PORT_REMOVE, 1), None);
        self.step();
    }

    /// The host side of port `id` connects or disconnects: PORT_OPEN.
    pub fn host_open(&mut self, id: u32, open: bool) {
        self.port_mut(id).host_open = open;
        self.send_control(control_bytes(id, event::PORT_OPEN, u16::from(open)), None);
        self.step();
    }

    /// Sends `bytes` as a control message, claiming `claimed_len` as the
    /// used length if given (a hostile device).
    pub fn inject_control(&mut self, bytes: Vec<u8>, claimed_len: Option<u32>) {
        self.send_control(bytes, claimed_len);
        self.step();
    }

    fn send_control(&mut self, bytes: Vec<u8>, claimed_len: Option<u32>) {
        self.control_out.push_back((bytes, claimed_len));
    }

    /// Lets the device run: takes what the driver made available on every
    /// live queue and serves it (transmit and control transmit only when
    /// notified, as a device that sleeps between notifications), fills
    /// posted receive buffers with pending host data and control messages,
    /// and interrupts where the driver wants that.
    pub fn step(&mut self) {
        if self.status & DRIVER_OK == 0 {
            return;
        }
        for q in 0..self.queues.len() as u16 {
            let Some(vq) = self.queues[q as usize].as_mut() else {
                continue;
            };
            match role(q) {
                Role::Receive(_) | Role::ControlReceive => {
                    let chains = vq.take_available();
                    for chain in &chains {
                        if !chain.readable.is_empty() || chain.writable.len() != 1 {
                            self.violations.push(format!(
                                "queue {q}: receive chain {} is not one device-writable buffer",
                                chain.head
                            ));
                        }
                    }
                    self.posted.entry(q).or_default().extend(chains);
                }
                Role::Transmit(port) => {
                    if vq.is_asleep() {
                        if vq.avail_idx() != vq.next_avail() {
                            self.missed_notifications += 1;
                        }
                    } else {
                        self.serve_transmit(q, port);
                    }
                }
                Role::ControlTransmit => {
                    if vq.is_asleep() {
                        if vq.avail_idx() != vq.next_avail() {
                            self.missed_notifications += 1;
                        }
                    } else {
                        self.serve_control(q);
                    }
                }
            }
        }
        self.deliver_control();
        self.deliver_data();
        let waiting: Vec<u32> = self.held.keys().copied().collect();
        for id in waiting {
            self.release_transmit(id);
        }
    }

    fn serve_transmit(&mut self, q: u16, id: u32) {
        loop {
            let Some(vq) = self.queues[q as usize].as_mut() else {
                return;
            };
            let chains = vq.take_available();
            if chains.is_empty() {
                if vq.try_sleep() {
                    break;
                }
                continue;
            }
            for chain in chains {
                if chain.descriptors != 1 || !chain.writable.is_empty() {
                    self.violations.push(format!(
                        "queue {q}: transmit chain {} is not one device-readable buffer",
                        chain.head
                    ));
                }
                let port = self.port_mut(id);
                port.transmit_buffers += 1;
                self.held.entry(id).or_default().push_back(chain);
            }
        }
        self.release_transmit(id);
    }

    /// Completes the held transmit chains of port `id` unless it is throttled.
    fn release_transmit(&mut self, id: u32) {
        let multiport = self.multiport();
        let throttled = self.ports.get(&id).is_some_and(|p| p.throttled);
        if throttled {
            return;
        }
        let Some(q) = drivers::console::transmit_queue(id) else {
            return;
        };
        let chains = self.held.remove(&id).unwrap_or_default();
        if chains.is_empty() {
            return;
        }
        for chain in &chains {
            let port = self.ports.entry(id).or_default();
            if port.host_open || !multiport {
                port.received.extend_from_slice(&chain.readable);
            } else {
                port.discarded += chain.readable.len() as u64;
            }
        }
        if let Some(Some(vq)) = self.queues.get_mut(q as usize) {
            for chain in &chains {
                vq.complete(chain, &[]);
            }
            if vq.signal_used() {
                self.isr |= 1;
            }
        }
    }

    fn serve_control(&mut self, q: u16) {
        loop {
            let Some(vq) = self.queues[q as usize].as_mut() else {
                return;
            };
            let chains = vq.take_available();
            if chains.is_empty() {
                if vq.try_sleep() {
                    break;
                }
                continue;
            }
            for chain in &chains {
                vq.complete(chain, &[]);
            }
            if vq.signal_used() {
                self.isr |= 1;
            }
            for chain in chains {
                self.handle_driver_message(&chain);
            }
        }
    }

    fn handle_driver_message(&mut self, chain: &Chain) {
        if chain.readable.len() != 8 || !chain.writable.is_empty() {
            self.violations.push(format!(
                "control message of {} readable bytes and {} writable buffers",
                chain.readable.len(),
                chain.writable.len()
            ));
            return;
        }
        let b = &chain.readable;
        let id = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let ev = u16::from_le_bytes([b[4], b[5]]);
        let value = u16::from_le_bytes([b[6], b[7]]);
        self.control_received.push((id, ev, value));
        match ev {
            event::DEVICE_READY => {
                if value != 1 {
                    self.violations.push(format!("DEVICE_READY {value}"));
                    return;
                }
                let ids: Vec<u32> = self.ports.keys().copied().collect();
                for id in ids {
                    self.port_mut(id).added = true;
                    self.send_control(control_bytes(id, event::PORT_ADD, 1), None);
                }
            }
            event::PORT_READY => {
                let Some(port) = self.ports.get_mut(&id).filter(|p| p.added) else {
                    self.violations
                        .push(format!("PORT_READY for port {id}, never added"));
                    return;
                };
                port.ready = Some(value);
                if value != 1 {
                    return;
                }
                let (console, name, host_open) = (port.console, port.name.clone(), port.host_open);
                if console {
                    self.send_control(control_bytes(id, event::CONSOLE_PORT, 1), None);
                }
                if let Some(name) = name {
                    let mut message = control_bytes(id, event::PORT_NAME, 1);
                    message.extend_from_slice(name.as_bytes());
                    message.push(0);
                    self.send_control(message, None);
                }
                if host_open {
                    self.send_control(control_bytes(id, event::PORT_OPEN, 1), None);
                }
            }
            event::PORT_OPEN => match self.ports.get_mut(&id) {
                Some(port) if port.added => port.guest_open = value != 0,
                _ => self
                    .violations
                    .push(format!("PORT_OPEN for port {id}, never added")),
            },
            other => self
                .violations
                .push(format!("driver sent control event {other} (port {id})")),
        }
    }

    /// Puts waiting control messages into posted control receive buffers;
    /// like QEMU, drops those for which no buffer is posted.
    fn deliver_control(&mut self) {
        let q = drivers::console::CONTROL_RECEIVE_QUEUE;
        if self.queues.get(q as usize).is_none_or(Option::is_none) {
            self.control_out.clear();
            return;
        }
        let mut delivered = false;
        while let Some((bytes, claimed)) = self.control_out.pop_front() {
            let Some(chain) = self.posted.get_mut(&q).and_then(VecDeque::pop_front) else {
                self.control_dropped += 1;
                continue;
            };
            write_into(&chain, &bytes);
            let len = claimed.unwrap_or(bytes.len() as u32);
            if let Some(Some(vq)) = self.queues.get_mut(q as usize) {
                vq.complete_with_len(chain.head, len);
            }
            self.control_sent += 1;
            delivered = true;
        }
        if delivered {
            if let Some(Some(vq)) = self.queues.get_mut(q as usize) {
                if vq.signal_used() {
                    self.isr |= 1;
                }
            }
        }
    }

    /// Moves pending host bytes into posted receive buffers of open ports.
    fn deliver_data(&mut self) {
        let multiport = self.multiport();
        let ids: Vec<u32> = self.ports.keys().copied().collect();
        for id in ids {
            let Some(q) = drivers::console::receive_queue(id) else {
                continue;
            };
            let port = &self.ports[&id];
            if port.to_guest.is_empty() || (multiport && !port.guest_open) {
                continue;
            }
            let mut used = false;
            while !self.ports[&id].to_guest.is_empty() {
                let Some(chain) = self.posted.get_mut(&q).and_then(VecDeque::pop_front) else {
                    break;
                };
                let port = self.ports.get_mut(&id).expect("port exists");
                let n = port.to_guest.len().min(chain.writable_len() as usize);
                let data: Vec<u8> = port.to_guest.drain(..n).collect();
                if let Some(Some(vq)) = self.queues.get_mut(q as usize) {
                    vq.complete(&chain, &data);
                    used = true;
                }
            }
            if used {
                if let Some(Some(vq)) = self.queues.get_mut(q as usize) {
                    if vq.signal_used() {
                        self.isr |= 1;
                    }
                }
            }
        }
    }

    /// Completes the next posted buffer of receive queue `queue` with `data`
    /// but claims `claimed_len` (a hostile device lying about the length).
    pub fn complete_receive_lying(&mut self, queue: u16, data: &[u8], claimed_len: u32) -> bool {
        self.step();
        let Some(chain) = self.posted.get_mut(&queue).and_then(VecDeque::pop_front) else {
            return false;
        };
        write_into(&chain, data);
        if let Some(Some(vq)) = self.queues.get_mut(queue as usize) {
            vq.complete_with_len(chain.head, claimed_len);
            vq.signal_used();
        }
        true
    }

    // ----- register-level attachment ---------------------------------------

    /// With the register-level models: mirrors status and features from
    /// `core`, attaches the queues the driver made live and forwards its
    /// notifications, then steps. Call it from the test's wait.
    pub fn sync_with_core(&mut self, core: &mut VirtioCore) {
        let live = core.status & DRIVER_OK != 0;
        if !live {
            if self.status != 0 {
                self.reset();
            }
            core.notifications.clear();
            self.driver_features = core.driver_features;
            return;
        }
        if self.status & DRIVER_OK == 0 {
            self.driver_features = core.driver_features;
            self.write_status(core.status);
        }
        for (i, q) in core.queues.iter().enumerate() {
            let programmed = q.is_live();
            if programmed && i < self.queues.len() && self.queues[i].is_none() {
                let addrs = q.addresses();
                self.attach_queue(i as u16, addrs);
            }
        }
        let synchronous = std::mem::replace(&mut self.synchronous, false);
        for queue in std::mem::take(&mut core.notifications) {
            self.notified(queue);
        }
        self.synchronous = synchronous;
        self.step();
        core.isr |= std::mem::take(&mut self.isr);
    }
}

/// Writes `data` into a chain's writable buffers, as much as fits.
fn write_into(chain: &Chain, data: &[u8]) {
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

/// A [`Transport`] implemented on a [`ConsoleModel`].
pub struct ConsoleModelTransport {
    /// The device.
    pub model: SharedConsoleModel,
    /// Which transport it pretends to be.
    pub kind: TransportKind,
}

impl ConsoleModelTransport {
    /// A transport of `kind` onto `model`.
    pub fn new(model: SharedConsoleModel, kind: TransportKind) -> Self {
        Self { model, kind }
    }
}

impl Transport for ConsoleModelTransport {
    fn kind(&self) -> TransportKind {
        self.kind
    }

    fn device_type(&self) -> DeviceType {
        DeviceType::Console
    }

    fn location(&self) -> Location {
        Location::Mmio { base: 0xfeb0_0200 }
    }

    fn status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_retain(self.model.borrow().status)
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.model.borrow_mut().write_status(status.bits());
    }

    fn reset(&mut self) -> Result<(), TransportError> {
        self.model.borrow_mut().write_status(0);
        Ok(())
    }

    fn device_features(&mut self) -> u64 {
        let offered = self.model.borrow().config.features;
        if self.kind.is_legacy() {
            offered & 0xffff_ffff & !features::VERSION_1
        } else {
            offered
        }
    }

    fn set_driver_features(&mut self, features: u64) {
        self.model.borrow_mut().driver_features = features;
    }

    fn ring_layout(&self) -> RingLayout {
        if self.kind.is_legacy() {
            RingLayout::Contiguous { align: 4096 }
        } else {
            RingLayout::Separate
        }
    }

    fn max_queue_size(&mut self, queue: u16) -> Result<u16, TransportError> {
        let model = self.model.borrow();
        // The queue count depends on what was negotiated (MULTIPORT).
        let count = if model.multiport() {
            model.config.queue_count()
        } else {
            2
        };
        Ok(if queue >= count {
            0
        } else if matches!(role(queue), Role::ControlReceive | Role::ControlTransmit) {
            model.config.control_queue_max
        } else {
            model.config.queue_max
        })
    }

    fn queue_size_is_fixed(&self) -> bool {
        self.kind == TransportKind::PciLegacy
    }

    fn setup_queue(&mut self, queue: u16, addrs: &QueueAddresses) -> Result<(), TransportError> {
        let max = self.max_queue_size(queue)?;
        if max == 0 {
            return Err(TransportError::NoSuchQueue(queue));
        }
        self.model.borrow_mut().attach_queue(queue, *addrs);
        Ok(())
    }

    fn notify(&self, queue: u16) {
        self.model.borrow_mut().notified(queue);
    }

    fn config_generation(&mut self) -> u32 {
        self.model.borrow().generation
    }

    fn config_consistency(&self) -> ConfigConsistency {
        if self.kind.is_legacy() {
            ConfigConsistency::ReadTwice
        } else {
            ConfigConsistency::Generation
        }
    }

    fn config_space_size(&self) -> usize {
        12
    }

    fn read_config_field(
        &mut self,
        offset: usize,
        width: FieldWidth,
    ) -> Result<u32, TransportError> {
        let bytes = self.model.borrow().config.config_bytes();
        let mut value = 0u32;
        for i in 0..width.bytes() {
            value |= u32::from(bytes.get(offset + i).copied().unwrap_or(0)) << (8 * i);
        }
        Ok(value)
    }

    fn write_config_field(
        &mut self,
        offset: usize,
        width: FieldWidth,
        value: u32,
    ) -> Result<(), TransportError> {
        let mut model = self.model.borrow_mut();
        if offset == 8 && width == FieldWidth::U32 {
            // QEMU's set_config: a non-zero emerg_wr is one character for port 0.
            if value != 0 {
                model.emergency.push(value as u8);
            }
        } else {
            model
                .violations
                .push(format!("config write of {width:?} at {offset}"));
        }
        Ok(())
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let isr = std::mem::take(&mut self.model.borrow_mut().isr);
        InterruptStatus::from_bits_truncate(u32::from(isr))
    }

    fn set_config_msix_vector(&mut self, _vector: u16) -> Result<(), TransportError> {
        Err(TransportError::Unsupported("MSI-X on the model transport"))
    }

    fn set_queue_msix_vector(&mut self, _queue: u16, _vector: u16) -> Result<(), TransportError> {
        Err(TransportError::Unsupported("MSI-X on the model transport"))
    }
}
