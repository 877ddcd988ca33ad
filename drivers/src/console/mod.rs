//! # virtio-console: the console and serial-port driver (virtio 1.2 §5.3)
//!
//! A virtio console moves byte streams between the guest and the host over
//! *ports*. Each port has a receive queue (host to guest: the driver posts
//! empty buffers, the device fills them) and a transmit queue (guest to
//! host: the driver posts full buffers, the device empties them):
//!
//! ```text
//! queue  0       1       2          3          4       5       ...  2n+2    2n+3
//!        port 0  port 0  control    control    port 1  port 1       port n  port n
//!        receive transmit receive   transmit   receive transmit     receive transmit
//!                        (only with VIRTIO_CONSOLE_F_MULTIPORT ..................)
//! ```
//!
//! ## Features
//!
//! - **SIZE**: `cols`/`rows` in the configuration ([`ConsoleDevice::size`]);
//!   re-read on a configuration-change interrupt ([`ConsoleDevice::refresh_config`]).
//! - **MULTIPORT**: up to `max_nr_ports` ports that the device announces
//!   and withdraws over the control queues (the handshake below). Without
//!   it there is exactly one port, 0, always there and always open.
//! - **EMERG_WRITE**: a character written to the `emerg_wr` configuration
//!   field appears on port 0 at once, no queue involved
//!   ([`ConsoleDevice::emergency_write`], [`config::emergency_write`]): the
//!   panic path.
//!
//! ## The multiport handshake (§5.3.6.2)
//!
//! ```text
//! driver                                   device
//!   |-- DEVICE_READY 1 ---------------------->|
//!   |<---------------------- PORT_ADD id -----|   one per port
//!   |   (post the port's receive buffers)     |
//!   |-- PORT_READY id 1 --------------------->|
//!   |-- PORT_OPEN id 1 (guest side open) ---->|
//!   |<------------------ CONSOLE_PORT id -----|   if it is a console
//!   |<------------- PORT_NAME id "name" ------|   if it has a name
//!   |<------------------- PORT_OPEN id 1 -----|   if the host side is open
//!   |          ... later, at any time ...     |
//!   |<--------------- PORT_OPEN id 0/1 -------|   host closed / reopened
//!   |<------------------- PORT_REMOVE id -----|   hot-unplug
//!   |<----------------------- PORT_ADD id ----|   hotplug
//! ```
//!
//! Control messages come from an untrusted device: [`control`] checks
//! their shape and this module checks them against the port table. A bad
//! one is dropped, counted ([`ConsoleStats::control_errors`]) and reported
//! as [`ConsoleEvent::BadControl`]; it never stops the driver.
//!
//! Pacing: QEMU answers a PORT_READY at once with up to three messages
//! (CONSOLE_PORT, PORT_NAME, PORT_OPEN) and drops any it has no receive
//! buffer for. So the driver sends a PORT_READY only while enough control
//! receive buffers are posted for the answers of every PORT_READY in the
//! same notification ([`REPLIES_PER_PORT_READY`] each); the rest wait for
//! the next [`ConsoleDevice::poll`].
//!
//! ## Data
//!
//! The driver owns its buffers (module `buffers`): one DMA pool per
//! queue, one descriptor per buffer.
//!
//! - **Receive**: every receive buffer is posted to the device, except
//!   while it holds bytes nobody has read yet. [`ConsoleDevice::read`]
//!   copies bytes out and reposts each buffer the moment it is empty
//!   (one notification for all reposted). A reader that falls behind thus
//!   stops the device (it has nowhere to put more), which is back-pressure
//!   to the host, never loss.
//! - **Transmit**: [`ConsoleDevice::write`] copies as many bytes as fit into
//!   free buffers (up to a whole buffer per descriptor), makes them all
//!   available and notifies at most once. It returns how many bytes it
//!   took: when the queue is full that is fewer than asked, possibly 0, and
//!   the caller retries after the device has consumed some
//!   ([`ConsoleDevice::write_all`] does that, waiting in between). Bytes
//!   are never dropped or truncated. Transmit completions are collected
//!   lazily, so transmit interrupts stay off except while a writer waits.
//!
//! ## Two layers
//!
//! The non-blocking core is [`ConsoleDevice::poll`] (collect completions,
//! run the control protocol), [`ConsoleDevice::read`],
//! [`ConsoleDevice::write`] and [`ConsoleDevice::next_event`]. The blocking
//! helpers ([`ConsoleDevice::write_all`], [`ConsoleDevice::flush`],
//! [`ConsoleDevice::read_wait`], [`ConsoleDevice::wait_until`]) wait
//! through the caller's [`Wait`] and give up with
//! [`ConsoleError::Timeout`], which says how far they got.
//!
//! [`ConsoleDevice::recover`] resets the device and brings it up from the
//! start (new queues and buffers, the handshake again), for a device that
//! was reset or used by another driver meanwhile.

mod buffers;
pub mod config;
pub mod control;

pub use config::{feature, ConsoleConfig, SUPPORTED_FEATURES};
pub use control::{ControlError, DeviceMessage, DriverMessage, NameError};

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use hal::{Hal, HalError};
use log::{debug, log_enabled, trace, warn, Level};

use crate::device::{self, DeviceError, QueueSpec, Wait, WaitTimeout};
use crate::features;
use crate::irq;
use crate::queue::{QueueCounters, QueueError, Segment, Virtqueue};
use crate::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport, TransportError};
use buffers::BufferPool;
use control::{event, parse_device_message, HEADER_BYTES, RECEIVE_BUFFER_BYTES};

/// Queue index of the control receive queue (device to driver).
pub const CONTROL_RECEIVE_QUEUE: u16 = 2;
/// Queue index of the control transmit queue (driver to device).
pub const CONTROL_TRANSMIT_QUEUE: u16 = 3;

/// How many control messages the device may send in answer to one
/// PORT_READY (CONSOLE_PORT, PORT_NAME, PORT_OPEN).
pub const REPLIES_PER_PORT_READY: usize = 3;

/// Most events kept for [`ConsoleDevice::next_event`]; older ones are
/// dropped (and counted) when nobody collects them.
pub const MAX_PENDING_EVENTS: usize = 64;

/// How many rounds of "collect control messages, answer them" one
/// [`ConsoleDevice::poll`] runs at most (QEMU answers synchronously, so a
/// handshake settles in two or three).
const CONTROL_ROUNDS: usize = 8;

/// The receive queue of port `port` (§5.3.2).
pub fn receive_queue(port: u32) -> Option<u16> {
    match port {
        0 => Some(0),
        _ => u16::try_from(port.checked_mul(2)?.checked_add(2)?).ok(),
    }
}

/// The transmit queue of port `port`.
pub fn transmit_queue(port: u32) -> Option<u16> {
    receive_queue(port)?.checked_add(1)
}

/// Choices the driver makes that the device does not dictate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleOptions {
    /// Console features to accept when offered (a subset of [`SUPPORTED_FEATURES`]).
    pub features: u64,
    /// Ring features to accept when offered. Default: event indices and
    /// the packed ring ([`features::RingPreference::Auto`]) but not
    /// indirect descriptors, which single-buffer chains never need.
    pub ring_features: u64,
    /// Most ports to set queues up for (the device's `max_nr_ports` may be
    /// smaller). A PORT_ADD for a higher id is answered PORT_READY 0.
    pub max_ports: u32,
    /// Most descriptors per queue.
    pub max_queue_size: u16,
    /// Receive buffers per port.
    pub receive_buffers: u16,
    /// Bytes per receive buffer.
    pub receive_buffer_bytes: usize,
    /// Transmit buffers per port (the most descriptors in flight).
    pub transmit_buffers: u16,
    /// Bytes per transmit buffer (the most bytes per descriptor).
    pub transmit_buffer_bytes: usize,
    /// Control receive buffers posted (at most the control queue's size).
    pub control_buffers: u16,
    /// Open every port from the guest side (PORT_OPEN 1) as soon as it is
    /// ready. QEMU passes host data to a multiport port only once the guest
    /// has opened it.
    pub open_ports: bool,
}

impl Default for ConsoleOptions {
    fn default() -> Self {
        Self {
            features: SUPPORTED_FEATURES,
            ring_features: features::RingPreference::Auto.ring_features()
                & !features::RING_INDIRECT_DESC,
            max_ports: 16,
            max_queue_size: 128,
            receive_buffers: 16,
            receive_buffer_bytes: 4096,
            transmit_buffers: 32,
            transmit_buffer_bytes: 4096,
            control_buffers: 32,
            open_ports: true,
        }
    }
}

/// Per-port counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Bytes the device delivered into receive buffers.
    pub bytes_received: u64,
    /// Bytes handed to the device in transmit buffers.
    pub bytes_sent: u64,
    /// Receive buffers the device filled (and returned).
    pub receive_buffers_filled: u64,
    /// Transmit buffers (descriptors) made available.
    pub transmit_buffers_sent: u64,
    /// Bytes thrown away: data for a port that was removed before it was read.
    pub bytes_discarded: u64,
    /// Buffers the device returned with an impossible length.
    pub bad_lengths: u64,
}

/// Whole-device counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsoleStats {
    /// Control messages received from the device (good or bad).
    pub control_received: u64,
    /// Control messages sent to the device.
    pub control_sent: u64,
    /// Control messages refused ([`ControlError`]).
    pub control_errors: u64,
    /// Used-ring entries the queues rejected (bad ids, lengths).
    pub queue_errors: u64,
    /// Events dropped because nobody collected them.
    pub events_dropped: u64,
}

/// What happened on the device, for whoever watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleEvent {
    /// The device added port `id` and the driver set it up.
    PortAdded {
        /// Port number.
        id: u32,
    },
    /// The device added port `id` but the driver could not take it (no
    /// queues for that id, or no memory); it answered PORT_READY 0.
    PortRejected {
        /// Port number.
        id: u32,
    },
    /// Port `id` was removed.
    PortRemoved {
        /// Port number.
        id: u32,
    },
    /// Port `id` is a console.
    ConsolePort {
        /// Port number.
        id: u32,
    },
    /// Port `id` got its name.
    PortNamed {
        /// Port number.
        id: u32,
    },
    /// The host side opened (`true`) or closed port `id`.
    HostConnection {
        /// Port number.
        id: u32,
        /// Open now?
        open: bool,
    },
    /// Console port `id` has a new size (RESIZE, or the configuration for port 0).
    Resized {
        /// Port number.
        id: u32,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// A control message was refused.
    BadControl(ControlError),
    /// A queue rejected a used-ring entry (the queue is still usable).
    QueueError {
        /// Queue index.
        queue: u16,
        /// What it found.
        error: QueueError,
    },
}

impl fmt::Display for ConsoleEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ConsoleEvent::PortAdded { id } => write!(f, "port {id} added"),
            ConsoleEvent::PortRejected { id } => write!(f, "port {id} rejected"),
            ConsoleEvent::PortRemoved { id } => write!(f, "port {id} removed"),
            ConsoleEvent::ConsolePort { id } => write!(f, "port {id} is a console"),
            ConsoleEvent::PortNamed { id } => write!(f, "port {id} named"),
            ConsoleEvent::HostConnection { id, open } => {
                write!(
                    f,
                    "port {id} {} by the host",
                    if open { "opened" } else { "closed" }
                )
            }
            ConsoleEvent::Resized { id, cols, rows } => write!(f, "port {id} is {cols}x{rows}"),
            ConsoleEvent::BadControl(e) => write!(f, "bad control message: {e}"),
            ConsoleEvent::QueueError { queue, error } => write!(f, "queue {queue}: {error}"),
        }
    }
}

/// What a queue is for, for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRole {
    /// A port's receive queue.
    Receive(u32),
    /// A port's transmit queue.
    Transmit(u32),
    /// The control receive queue.
    ControlReceive,
    /// The control transmit queue.
    ControlTransmit,
}

impl fmt::Display for QueueRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            QueueRole::Receive(p) => write!(f, "port{p}-rx"),
            QueueRole::Transmit(p) => write!(f, "port{p}-tx"),
            QueueRole::ControlReceive => f.write_str("control-rx"),
            QueueRole::ControlTransmit => f.write_str("control-tx"),
        }
    }
}

/// One queue's description and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueInfo {
    /// Queue index on the device.
    pub index: u16,
    /// What it carries.
    pub role: QueueRole,
    /// Number of descriptors.
    pub size: u16,
    /// The ring's counters.
    pub counters: QueueCounters,
}

/// A port as the driver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortInfo<'a> {
    /// Port number.
    pub id: u32,
    /// Its name (PORT_NAME), if the device gave one.
    pub name: Option<&'a str>,
    /// The device said it is a console (always true for port 0 without MULTIPORT).
    pub console: bool,
    /// The host side has it open.
    pub host_open: bool,
    /// The driver has it open (sent PORT_OPEN 1).
    pub guest_open: bool,
    /// Its size, if known.
    pub size: Option<(u16, u16)>,
    /// Bytes received and not read yet.
    pub readable: usize,
    /// Transmit buffers the device has not returned yet.
    pub transmit_in_flight: u16,
    /// Counters.
    pub stats: PortStats,
}

/// Everything that can go wrong with the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleError {
    /// Bringing the device up failed.
    Device(DeviceError),
    /// A transport operation failed (a configuration access).
    Transport(TransportError),
    /// The options cannot work (a zero buffer size or count).
    BadOptions(&'static str),
    /// The device has a configuration this driver cannot work with.
    BadConfig(&'static str),
    /// DMA memory for the buffers could not be allocated.
    Dma(HalError),
    /// No port with this id exists right now.
    NoSuchPort(u32),
    /// The host side of this (non-console) port is not open: the device
    /// would throw written bytes away.
    PortClosed(u32),
    /// The feature an operation needs was not negotiated.
    NotNegotiated(&'static str),
    /// A queue broke (a fatal device error); the device was reset.
    Queue {
        /// Queue index.
        queue: u16,
        /// What the queue found.
        error: QueueError,
    },
    /// A blocking helper's [`Wait`] gave up.
    Timeout {
        /// Waits made.
        waits: u64,
        /// Bytes written or read before giving up.
        done: usize,
    },
    /// The device was reset after a fatal error and is out of service.
    DeviceFailed,
}

impl From<DeviceError> for ConsoleError {
    fn from(e: DeviceError) -> Self {
        ConsoleError::Device(e)
    }
}

impl From<TransportError> for ConsoleError {
    fn from(e: TransportError) -> Self {
        ConsoleError::Transport(e)
    }
}

impl fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ConsoleError::Device(e) => write!(f, "{e}"),
            ConsoleError::Transport(e) => write!(f, "transport: {e}"),
            ConsoleError::BadOptions(why) => write!(f, "unusable options: {why}"),
            ConsoleError::BadConfig(why) => write!(f, "unusable device configuration: {why}"),
            ConsoleError::Dma(e) => write!(f, "buffer memory: {e}"),
            ConsoleError::NoSuchPort(id) => write!(f, "no port {id}"),
            ConsoleError::PortClosed(id) => write!(f, "port {id} is not open on the host side"),
            ConsoleError::NotNegotiated(what) => write!(f, "{what} was not negotiated"),
            ConsoleError::Queue { queue, error } => write!(f, "queue {queue}: {error}"),
            ConsoleError::Timeout { waits, done } => {
                write!(f, "gave up after {waits} waits, {done} bytes done")
            }
            ConsoleError::DeviceFailed => f.write_str("device is down after a failure"),
        }
    }
}

/// A receive buffer the device filled that still holds unread bytes.
#[derive(Debug, Clone, Copy)]
struct Filled {
    slot: u16,
    len: usize,
    read: usize,
}

/// The buffers of one port, allocated when the port first appears.
struct PortBuffers<H: Hal> {
    receive: BufferPool<H>,
    /// Filled receive buffers in arrival order.
    filled: VecDeque<Filled>,
    transmit: BufferPool<H>,
    /// Transmit slots not in flight (a stack).
    transmit_free: Vec<u16>,
}

/// The state the protocol gives a port.
#[derive(Debug, Clone, Default)]
struct PortState {
    present: bool,
    console: bool,
    name: Option<String>,
    host_open: bool,
    guest_open: bool,
    size: Option<(u16, u16)>,
}

/// One port's queues, buffers and state.
struct Port<H: Hal> {
    id: u32,
    receive: Virtqueue<H>,
    transmit: Virtqueue<H>,
    buffers: Option<PortBuffers<H>>,
    state: PortState,
    stats: PortStats,
}

/// The control queues (MULTIPORT only).
struct Control<H: Hal> {
    receive: Virtqueue<H>,
    receive_pool: BufferPool<H>,
    transmit: Virtqueue<H>,
    transmit_pool: BufferPool<H>,
    transmit_free: Vec<u16>,
    /// Messages waiting for a transmit slot or for answer room.
    pending: VecDeque<DriverMessage>,
}

/// A virtio console device. See the module documentation.
pub struct ConsoleDevice<H: Hal, T: Transport> {
    transport: T,
    options: ConsoleOptions,
    features: u64,
    config: ConsoleConfig,
    ports: Vec<Port<H>>,
    control: Option<Control<H>>,
    report: Reporter,
    failed: bool,
}

/// Where events and counters go.
struct Reporter {
    events: VecDeque<ConsoleEvent>,
    stats: ConsoleStats,
}

impl Reporter {
    fn push(&mut self, event: ConsoleEvent) {
        if self.events.len() >= MAX_PENDING_EVENTS {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(event);
    }

    fn queue_error(&mut self, queue: u16, error: QueueError) {
        self.stats.queue_errors += 1;
        warn!("virtio-console: queue {queue}: used entry rejected: {error}");
        self.push(ConsoleEvent::QueueError { queue, error });
    }
}

impl<H: Hal, T: Transport> ConsoleDevice<H, T> {
    /// Brings up the console behind `transport` with default options.
    pub fn new(transport: T) -> Result<Self, ConsoleError> {
        Self::with_options(transport, ConsoleOptions::default())
    }

    /// Brings up the console behind `transport` (§3.1.1, §5.3.5): negotiate,
    /// read the configuration, set up the port queues (and the control
    /// queues with MULTIPORT), post receive buffers, DRIVER_OK; then, with
    /// MULTIPORT, send DEVICE_READY and run the handshake as far as the
    /// device answers at once.
    pub fn with_options(mut transport: T, options: ConsoleOptions) -> Result<Self, ConsoleError> {
        device::expect_device_type(&transport, DeviceType::Console)?;
        check_options(&options)?;
        let (parts, negotiated) = bring_up_parts::<H, T>(&mut transport, &options)?;
        let mut console = Self {
            transport,
            options,
            features: negotiated,
            config: parts.config,
            ports: parts.ports,
            control: parts.control,
            report: Reporter {
                events: VecDeque::with_capacity(MAX_PENDING_EVENTS),
                stats: ConsoleStats::default(),
            },
            failed: false,
        };
        console.start()?;
        Ok(console)
    }

    /// Resets the device and brings it up again from the start with the
    /// same features: new queues and buffers, and with MULTIPORT the
    /// handshake again (ports reappear through PORT_ADD). Bytes not yet
    /// read, or written but not yet taken by the device, are lost; the
    /// counters carry on. For a device that was reset, or used by someone
    /// else, behind the driver's back (the benchmark lends it to another
    /// driver and takes it back this way).
    pub fn recover(&mut self) -> Result<(), ConsoleError> {
        debug!(
            "{}: virtio-console: recovery requested",
            self.transport.location()
        );
        // The device lets go of the old rings and buffers before they are
        // replaced (and freed) below.
        self.halt();
        let before = self.features;
        let (parts, negotiated) = bring_up_parts::<H, T>(&mut self.transport, &self.options)?;
        if negotiated != before {
            // Drop the new parts only after the device has let go of them.
            let _ = self.transport.reset();
            self.transport.set_status(DeviceStatus::FAILED);
            drop(parts);
            return Err(ConsoleError::BadConfig(
                "the device offers other features after a reset",
            ));
        }
        self.config = parts.config;
        self.ports = parts.ports;
        self.control = parts.control;
        self.failed = false;
        self.start()
    }

    /// The end of every bring-up, once DRIVER_OK is set: transmit
    /// interrupts off, receive buffers published, DEVICE_READY queued and
    /// the handshake run as far as the device answers at once.
    fn start(&mut self) -> Result<(), ConsoleError> {
        // Transmit completions are collected lazily; no interrupts for them.
        for port in &mut self.ports {
            port.transmit.disable_interrupts();
        }
        if let Some(control) = &mut self.control {
            control.transmit.disable_interrupts();
        }
        let location = self.transport.location();
        debug!(
            "{location}: virtio-console: {}; {}; queues for {} port(s)",
            self.config,
            if self.control.is_some() {
                "multiport"
            } else {
                "single port"
            },
            self.ports.len()
        );
        // The buffers posted during setup become visible now (no
        // notification may precede DRIVER_OK, §3.1.1).
        for port in &mut self.ports {
            device::kick(&mut self.transport, &mut port.receive);
        }
        if let Some(control) = &mut self.control {
            device::kick(&mut self.transport, &mut control.receive);
            control.pending.push_back(DriverMessage::device_ready(true));
        }
        self.poll()
    }

    // ----- what the device is --------------------------------------------

    /// The negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The configuration read at bring-up (or by [`ConsoleDevice::refresh_config`]).
    pub fn config(&self) -> &ConsoleConfig {
        &self.config
    }

    /// `true` with VIRTIO_CONSOLE_F_MULTIPORT.
    pub fn is_multiport(&self) -> bool {
        self.control.is_some()
    }

    /// Port 0's size (VIRTIO_CONSOLE_F_SIZE, or a RESIZE for port 0).
    pub fn size(&self) -> Option<(u16, u16)> {
        self.ports.first().and_then(|p| p.state.size)
    }

    /// The options the device was brought up with.
    pub fn options(&self) -> &ConsoleOptions {
        &self.options
    }

    /// Whole-device counters.
    pub fn stats(&self) -> ConsoleStats {
        self.report.stats
    }

    /// `true` after a fatal error (a broken queue): the device was reset.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// The transport (location, MSI-X vectors).
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably (MSI-X set-up). A reset through it must be
    /// followed by [`Self::recover`] before the driver is used again.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Every queue with its role, size and counters, in index order.
    pub fn queues(&self) -> Vec<QueueInfo> {
        let mut list = Vec::with_capacity(2 * self.ports.len() + 2);
        let info = |role, queue: &Virtqueue<H>| QueueInfo {
            index: queue.index(),
            role,
            size: queue.size(),
            counters: queue.counters(),
        };
        for port in &self.ports {
            list.push(info(QueueRole::Receive(port.id), &port.receive));
            list.push(info(QueueRole::Transmit(port.id), &port.transmit));
        }
        if let Some(control) = &self.control {
            list.push(info(QueueRole::ControlReceive, &control.receive));
            list.push(info(QueueRole::ControlTransmit, &control.transmit));
        }
        list.sort_by_key(|q| q.index);
        list
    }

    /// The ports that exist now, in id order.
    pub fn ports(&self) -> impl Iterator<Item = PortInfo<'_>> + '_ {
        self.ports.iter().filter(|p| p.state.present).map(port_info)
    }

    /// Port `id`, if it exists now.
    pub fn port(&self, id: u32) -> Option<PortInfo<'_>> {
        self.live_port(id).map(port_info)
    }

    /// The first port called `name`.
    pub fn port_by_name(&self, name: &str) -> Option<u32> {
        self.ports().find(|p| p.name == Some(name)).map(|p| p.id)
    }

    /// The port a shell should use: the first console port, else port 0 if
    /// it exists.
    pub fn console_port(&self) -> Option<u32> {
        self.ports()
            .find(|p| p.console)
            .or_else(|| self.port(0))
            .map(|p| p.id)
    }

    /// The next event, oldest first.
    pub fn next_event(&mut self) -> Option<ConsoleEvent> {
        self.report.events.pop_front()
    }

    // ----- interrupts and configuration ----------------------------------

    /// Reads and acknowledges the interrupt status.
    pub fn ack_interrupt(&mut self) -> InterruptStatus {
        self.transport.ack_interrupt()
    }

    /// Asks for interrupts on every receive queue (data and control).
    /// Returns `true` if something is already waiting: poll before sleeping.
    pub fn enable_interrupts(&mut self) -> bool {
        let mut pending = false;
        for port in &mut self.ports {
            pending |= port.receive.enable_interrupts();
        }
        if let Some(control) = &mut self.control {
            pending |= control.receive.enable_interrupts();
        }
        pending
    }

    /// Asks every queue not to interrupt (polling mode).
    pub fn disable_interrupts(&mut self) {
        for port in &mut self.ports {
            port.receive.disable_interrupts();
            port.transmit.disable_interrupts();
        }
        if let Some(control) = &mut self.control {
            control.receive.disable_interrupts();
            control.transmit.disable_interrupts();
        }
    }

    /// Re-reads the configuration (after a configuration-change interrupt);
    /// a new size for port 0 is reported as [`ConsoleEvent::Resized`].
    pub fn refresh_config(&mut self) -> Result<&ConsoleConfig, ConsoleError> {
        let now = ConsoleConfig::read(&mut self.transport, self.features)?;
        if now.size != self.config.size {
            if let Some((cols, rows)) = now.size {
                if let Some(port) = self.ports.first_mut() {
                    port.state.size = Some((cols, rows));
                }
                self.report
                    .push(ConsoleEvent::Resized { id: 0, cols, rows });
            }
        }
        // The number of ports cannot change under the driver's queues.
        self.config = ConsoleConfig {
            max_nr_ports: self.config.max_nr_ports,
            ..now
        };
        Ok(&self.config)
    }

    /// Writes `bytes` through `emerg_wr` (VIRTIO_CONSOLE_F_EMERG_WRITE): no
    /// queue, no waiting, works even after a failure. Returns the bytes written.
    pub fn emergency_write(&mut self, bytes: &[u8]) -> Result<usize, ConsoleError> {
        if !self.config.emergency_write {
            return Err(ConsoleError::NotNegotiated("VIRTIO_CONSOLE_F_EMERG_WRITE"));
        }
        Ok(config::emergency_write(&mut self.transport, bytes)?)
    }

    // ----- the non-blocking core ------------------------------------------

    /// Collects everything the device has done: runs the control protocol
    /// (answering PORT_ADDs, recording names and connections, sending what
    /// waits), frees transmitted buffers and queues received data for
    /// [`ConsoleDevice::read`].
    ///
    /// Bad control messages and bad used-ring entries become events, not
    /// errors; `Err` means a queue broke, after which the device was reset.
    pub fn poll(&mut self) -> Result<(), ConsoleError> {
        self.check_live()?;
        let result = self.poll_inner();
        self.guard(result)
    }

    /// Bytes received on port `id` and not read yet.
    pub fn readable(&self, id: u32) -> usize {
        self.live_port(id).map_or(0, unread_bytes)
    }

    /// Copies received bytes of port `id` into `buf` and returns how many
    /// (0: nothing there; call [`ConsoleDevice::poll`] first to collect
    /// what the device delivered). Every buffer emptied goes back to the
    /// device at once, all under one notification.
    pub fn read(&mut self, id: u32, buf: &mut [u8]) -> Result<usize, ConsoleError> {
        self.check_live()?;
        let result = read_port(&mut self.ports, &mut self.transport, id, buf);
        self.guard(result)
    }

    /// Sends as much of `data` on port `id` as free transmit buffers hold
    /// and returns how many bytes that was: fewer than `data.len()`, maybe
    /// 0, when the queue is full (call again after the device has consumed
    /// some; [`ConsoleDevice::write_all`] does). Each buffer is one
    /// descriptor of up to [`ConsoleOptions::transmit_buffer_bytes`], and
    /// all descriptors of one call share one notification.
    pub fn write(&mut self, id: u32, data: &[u8]) -> Result<usize, ConsoleError> {
        self.check_live()?;
        let multiport = self.control.is_some();
        let result = write_port(&mut self.ports, &mut self.transport, id, data, multiport);
        self.guard(result)
    }

    /// Opens (`true`) or closes port `id` from the guest side (PORT_OPEN).
    /// Without MULTIPORT port 0 is always open and this does nothing.
    pub fn set_open(&mut self, id: u32, open: bool) -> Result<(), ConsoleError> {
        self.check_live()?;
        let port = live_port_mut(&mut self.ports, id)?;
        let Some(control) = self.control.as_mut() else {
            return Ok(());
        };
        port.state.guest_open = open;
        control
            .pending
            .push_back(DriverMessage::port_open(id, open));
        let result = self.flush_control().map(|_| ());
        self.guard(result)
    }

    // ----- blocking helpers -------------------------------------------------

    /// Writes all of `data` to port `id`, waiting through `wait` whenever
    /// the transmit queue is full. On a timeout the error says how many
    /// bytes were taken; exactly those reach the device, in order.
    pub fn write_all<W: Wait + ?Sized>(
        &mut self,
        id: u32,
        data: &[u8],
        wait: &mut W,
    ) -> Result<(), ConsoleError> {
        let mut done = 0;
        while done < data.len() {
            let taken = self.write(id, &data[done..])?;
            done += taken;
            if taken == 0 {
                self.wait_for_transmit(id, wait)
                    .map_err(|t| ConsoleError::Timeout {
                        waits: t.waits,
                        done,
                    })?;
            }
        }
        Ok(())
    }

    /// Waits until the device has returned every transmit buffer of port
    /// `id`: everything written has left the driver.
    pub fn flush<W: Wait + ?Sized>(&mut self, id: u32, wait: &mut W) -> Result<(), ConsoleError> {
        loop {
            self.poll()?;
            let port = self.live_port(id).ok_or(ConsoleError::NoSuchPort(id))?;
            if port.transmit.in_flight() == 0 {
                return Ok(());
            }
            self.wait_for_transmit(id, wait)
                .map_err(|t| ConsoleError::Timeout {
                    waits: t.waits,
                    done: 0,
                })?;
        }
    }

    /// Reads at least one byte of port `id` into `buf`, waiting through
    /// `wait` until some arrive.
    pub fn read_wait<W: Wait + ?Sized>(
        &mut self,
        id: u32,
        buf: &mut [u8],
        wait: &mut W,
    ) -> Result<usize, ConsoleError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut got = 0;
        self.wait_until(wait, |console| {
            got = console.read(id, buf)?;
            Ok(got > 0)
        })?;
        Ok(got)
    }

    /// Polls, and waits through `wait` in between, until `done` returns
    /// `Ok(true)` (a port appears, a name arrives, data is there). An error
    /// from `done` ends the wait with that error.
    pub fn wait_until<W: Wait + ?Sized>(
        &mut self,
        wait: &mut W,
        mut done: impl FnMut(&mut Self) -> Result<bool, ConsoleError>,
    ) -> Result<(), ConsoleError> {
        loop {
            self.poll()?;
            if done(self)? {
                return Ok(());
            }
            // Receive interrupts on, a second look, the wait, interrupts
            // off again (§2.7.7).
            irq::wait_until_used(
                wait,
                self,
                |console| console.enable_interrupts(),
                |console| console.disable_interrupts(),
            )
            .map_err(|t| ConsoleError::Timeout {
                waits: t.waits,
                done: 0,
            })?;
        }
    }

    // ----- internals ---------------------------------------------------------

    fn check_live(&self) -> Result<(), ConsoleError> {
        if self.failed {
            Err(ConsoleError::DeviceFailed)
        } else {
            Ok(())
        }
    }

    fn live_port(&self, id: u32) -> Option<&Port<H>> {
        self.ports.get(id as usize).filter(|p| p.state.present)
    }

    /// Passes `result` on; if it is a queue error and the queue is broken,
    /// resets the device first (the queue cannot be trusted any more).
    fn guard<R>(&mut self, result: Result<R, ConsoleError>) -> Result<R, ConsoleError> {
        if let Err(ConsoleError::Queue { queue, .. }) = result {
            if self.queue_is_broken(queue) {
                self.stop_device("a queue is broken");
            }
        }
        result
    }

    fn queue_is_broken(&self, queue: u16) -> bool {
        let broken = |q: &Virtqueue<H>| q.index() == queue && q.is_broken();
        self.ports
            .iter()
            .any(|p| broken(&p.receive) || broken(&p.transmit))
            || self
                .control
                .as_ref()
                .is_some_and(|c| broken(&c.receive) || broken(&c.transmit))
    }

    /// Waits once for port `id`'s transmit buffers to come back. If the
    /// wait sleeps until an interrupt, transmit interrupts are turned on
    /// for it (and off again after); if completions arrived meanwhile it
    /// does not wait at all. Then collects.
    fn wait_for_transmit<W: Wait + ?Sized>(
        &mut self,
        id: u32,
        wait: &mut W,
    ) -> Result<(), WaitTimeout> {
        let port = id as usize;
        let result = irq::wait_until_used(
            wait,
            &mut self.ports,
            // No such port: nothing to wait for.
            |ports| {
                ports
                    .get_mut(port)
                    .is_none_or(|port| port.transmit.enable_interrupts())
            },
            |ports| {
                if let Some(port) = ports.get_mut(port) {
                    port.transmit.disable_interrupts();
                }
            },
        );
        // A removed port or a broken queue shows up in the caller's next
        // write or poll; here only the waiting can fail.
        let _ = self.poll();
        result.map(|_| ())
    }

    fn poll_inner(&mut self) -> Result<(), ConsoleError> {
        if self.control.is_some() {
            for _ in 0..CONTROL_ROUNDS {
                let received = self.process_control()?;
                let sent = self.flush_control()?;
                if received == 0 && sent == 0 {
                    break;
                }
            }
        }
        for port in &mut self.ports {
            reclaim_transmit(port)?;
            collect_received(port, &mut self.transport, &mut self.report)?;
        }
        Ok(())
    }

    /// Collects control messages from the device, handles each and reposts
    /// its buffer. Returns how many arrived.
    fn process_control(&mut self) -> Result<usize, ConsoleError> {
        let mut received = 0;
        while let Some(control) = self.control.as_mut() {
            let index = control.receive.index();
            let capacity = control.receive_pool.slot_bytes();
            let mut bytes = [0u8; RECEIVE_BUFFER_BYTES];
            let (token, message) = match control.receive.pop_used() {
                Ok(None) => break,
                Ok(Some(used)) => {
                    let len = (used.len as usize).min(capacity).min(RECEIVE_BUFFER_BYTES);
                    (used.token, Ok(len))
                }
                Err(QueueError::UsedLengthTooLong { token, len, max }) => {
                    (token, Err(ControlError::TooLong { len, capacity: max }))
                }
                Err(error) if control.receive.is_broken() => {
                    return Err(queue_error(index, error));
                }
                Err(error) => {
                    self.report.queue_error(index, error);
                    continue;
                }
            };
            let Some(slot) = control.receive_pool.take(token) else {
                continue;
            };
            if let Ok(len) = message {
                control.receive_pool.copy_out(slot, 0, &mut bytes[..len]);
            }
            received += 1;
            self.report.stats.control_received += 1;
            let result = message.and_then(|len| {
                let message = parse_device_message(&bytes[..len], capacity)?;
                self.handle_control(message)
            });
            if let Err(error) = result {
                self.report.stats.control_errors += 1;
                warn!(
                    "{}: virtio-console: control message refused: {error}",
                    self.transport.location()
                );
                self.report.push(ConsoleEvent::BadControl(error));
            }
            if let Some(control) = self.control.as_mut() {
                post_receive(&mut control.receive, &mut control.receive_pool, slot)
                    .map_err(|error| queue_error(index, error))?;
            }
        }
        if let Some(control) = self.control.as_mut() {
            device::kick(&mut self.transport, &mut control.receive);
        }
        Ok(received)
    }

    /// Applies one well-formed device message to the port table.
    fn handle_control(&mut self, message: DeviceMessage<'_>) -> Result<(), ControlError> {
        let location = self.transport.location();
        trace!("{location}: virtio-console: control <- {message}");
        let id = message.id();
        let max_nr_ports = self.config.max_nr_ports;
        if id >= max_nr_ports {
            return Err(ControlError::PortOutOfRange { id, max_nr_ports });
        }
        let handled = self.ports.len();
        let Some(control) = self.control.as_mut() else {
            return Ok(());
        };
        let Some(port) = self.ports.get_mut(id as usize) else {
            if let DeviceMessage::PortAdd { .. } = message {
                // A real port, but beyond the queues this driver set up.
                debug!(
                    "{location}: virtio-console: port {id} is beyond the {handled} port(s) this driver handles; answering PORT_READY 0"
                );
                control
                    .pending
                    .push_back(DriverMessage::port_ready(id, false));
                self.report.push(ConsoleEvent::PortRejected { id });
                return Ok(());
            }
            return Err(ControlError::UnknownPort {
                id,
                event: message.event(),
            });
        };
        if let DeviceMessage::PortAdd { .. } = message {
            if port.state.present {
                return Err(ControlError::AlreadyAdded { id });
            }
            let options = &self.options;
            if let Err(error) = ensure_buffers(port, options) {
                warn!("{location}: virtio-console: port {id}: {error}; answering PORT_READY 0");
                control
                    .pending
                    .push_back(DriverMessage::port_ready(id, false));
                self.report.push(ConsoleEvent::PortRejected { id });
                return Ok(());
            }
            // The receive buffers go to the device before PORT_READY says
            // the port can take data.
            device::kick(&mut self.transport, &mut port.receive);
            control
                .pending
                .push_back(DriverMessage::port_ready(id, true));
            port.state = PortState {
                present: true,
                // Port 0's size comes from the configuration (SIZE).
                size: if id == 0 { self.config.size } else { None },
                ..PortState::default()
            };
            if options.open_ports {
                port.state.guest_open = true;
                control
                    .pending
                    .push_back(DriverMessage::port_open(id, true));
            }
            debug!("{location}: virtio-console: port {id} added");
            self.report.push(ConsoleEvent::PortAdded { id });
            return Ok(());
        }
        if !port.state.present {
            return Err(ControlError::UnknownPort {
                id,
                event: message.event(),
            });
        }
        let event = match message {
            DeviceMessage::PortAdd { .. } => return Ok(()),
            DeviceMessage::PortRemove { .. } => {
                port.state = PortState::default();
                if let Err(error) = discard_received(port, &mut self.transport) {
                    warn!("{location}: virtio-console: port {id}: reposting its buffers: {error}");
                }
                debug!("{location}: virtio-console: port {id} removed");
                ConsoleEvent::PortRemoved { id }
            }
            DeviceMessage::ConsolePort { .. } => {
                port.state.console = true;
                ConsoleEvent::ConsolePort { id }
            }
            DeviceMessage::Resize { cols, rows, .. } => {
                port.state.size = Some((cols, rows));
                ConsoleEvent::Resized { id, cols, rows }
            }
            DeviceMessage::PortOpen { open, .. } => {
                port.state.host_open = open;
                ConsoleEvent::HostConnection { id, open }
            }
            DeviceMessage::PortName { name, .. } => {
                if port.state.name.is_some() {
                    return Err(ControlError::NameAlreadySet { id });
                }
                debug!("{location}: virtio-console: port {id} is called {name:?}");
                port.state.name = Some(String::from(name));
                ConsoleEvent::PortNamed { id }
            }
        };
        self.report.push(event);
        Ok(())
    }

    /// Sends waiting control messages while transmit slots last, keeping
    /// room for the answers to PORT_READY (see the module documentation).
    /// Returns how many were sent.
    fn flush_control(&mut self) -> Result<usize, ConsoleError> {
        let Some(control) = self.control.as_mut() else {
            return Ok(0);
        };
        reclaim_control_transmit(control)?;
        let mut sent = 0;
        let mut answers_expected = 0;
        while let Some(&message) = control.pending.front() {
            let answers = if message.event == event::PORT_READY && message.value == 1 {
                REPLIES_PER_PORT_READY
            } else {
                0
            };
            // Room for the answers: posted control receive buffers. The
            // first PORT_READY always goes, or a tiny queue would stall.
            let room = control.receive.in_flight() as usize;
            if answers > 0 && answers_expected > 0 && answers_expected + answers > room {
                break;
            }
            let Some(slot) = control.transmit_free.pop() else {
                break;
            };
            control.transmit_pool.fill(slot, &message.encode());
            let segment = Segment::readable(control.transmit_pool.addr(slot), HEADER_BYTES as u32);
            match control.transmit.add(&[segment]) {
                Ok(token) => control.transmit_pool.bind(token, slot),
                Err(error) => {
                    control.transmit_free.push(slot);
                    if matches!(error, QueueError::QueueFull { .. }) {
                        break;
                    }
                    return Err(queue_error(control.transmit.index(), error));
                }
            }
            trace!(
                "{}: virtio-console: control -> {message}",
                self.transport.location()
            );
            control.pending.pop_front();
            answers_expected += answers;
            sent += 1;
        }
        if sent > 0 {
            device::kick(&mut self.transport, &mut control.transmit);
            self.report.stats.control_sent += sent as u64;
        }
        Ok(sent)
    }

    /// Resets the device (it must stop touching the buffers) and refuses
    /// service from now on.
    fn stop_device(&mut self, why: &str) {
        let location = self.transport.location();
        warn!("{location}: virtio-console: resetting the device: {why}");
        self.halt();
    }

    /// [`Self::stop_device`] without the warning.
    fn halt(&mut self) {
        let location = self.transport.location();
        if let Err(e) = self.transport.reset() {
            warn!("{location}: virtio-console: reset failed: {e}");
        }
        self.transport.set_status(DeviceStatus::FAILED);
        for port in &mut self.ports {
            port.receive.reset(|_| {});
            port.transmit.reset(|_| {});
            port.state = PortState::default();
        }
        if let Some(control) = &mut self.control {
            control.receive.reset(|_| {});
            control.transmit.reset(|_| {});
            control.pending.clear();
        }
        self.failed = true;
    }
}

impl<H: Hal, T: Transport> Drop for ConsoleDevice<H, T> {
    /// Resets the device before its rings and buffers are freed: the device
    /// must not write into memory that is given to someone else.
    fn drop(&mut self) {
        if !self.failed {
            let _ = self.transport.reset();
        }
    }
}

impl<H: Hal, T: Transport> fmt::Debug for ConsoleDevice<H, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsoleDevice")
            .field("location", &self.transport.location())
            .field("features", &format_args!("{:#x}", self.features))
            .field("config", &self.config)
            .field("ports", &self.ports().count())
            .field("failed", &self.failed)
            .finish()
    }
}

// ----- free functions over the pieces (so borrows of `self` can be split) ---

fn check_options(options: &ConsoleOptions) -> Result<(), ConsoleError> {
    let sizes = [options.receive_buffer_bytes, options.transmit_buffer_bytes];
    if sizes.iter().any(|&b| b == 0 || b > u32::MAX as usize) {
        return Err(ConsoleError::BadOptions(
            "buffer sizes must be 1 ..= 2^32 - 1 bytes",
        ));
    }
    let counts = [
        options.receive_buffers,
        options.transmit_buffers,
        options.control_buffers,
    ];
    if counts.iter().any(|&c| c == 0 || c == u16::MAX) {
        return Err(ConsoleError::BadOptions(
            "buffer counts must be 1 ..= 65534",
        ));
    }
    if options.max_ports == 0 {
        return Err(ConsoleError::BadOptions("max_ports must not be 0"));
    }
    Ok(())
}

fn queue_error(queue: u16, error: QueueError) -> ConsoleError {
    ConsoleError::Queue { queue, error }
}

/// What a bring-up builds between FEATURES_OK and DRIVER_OK.
struct Parts<H: Hal> {
    config: ConsoleConfig,
    ports: Vec<Port<H>>,
    control: Option<Control<H>>,
}

/// Steps 1 to 8 of §3.1.1 for a console (§5.3.5): negotiate, read the
/// configuration, set up the port queues (and the control queues with
/// MULTIPORT), post receive buffers, DRIVER_OK.
fn bring_up_parts<H: Hal, T: Transport>(
    transport: &mut T,
    options: &ConsoleOptions,
) -> Result<(Parts<H>, u64), ConsoleError> {
    let driver_features = options.features & SUPPORTED_FEATURES;
    device::bring_up(
        transport,
        driver_features,
        options.ring_features,
        |t: &mut T, negotiated| -> Result<_, ConsoleError> {
            let config = ConsoleConfig::read(t, negotiated)?;
            let multiport = negotiated & feature::MULTIPORT != 0;
            if multiport && config.max_nr_ports == 0 {
                return Err(ConsoleError::BadConfig("MULTIPORT with max_nr_ports = 0"));
            }
            let control = if multiport {
                Some(create_control::<H, T>(t, options, negotiated)?)
            } else {
                None
            };
            let ports = create_ports::<H, T>(t, options, &config, negotiated)?;
            Ok(Parts {
                config,
                ports,
                control,
            })
        },
    )
}

fn spec(options: &ConsoleOptions) -> QueueSpec {
    QueueSpec::new(options.max_queue_size).with_indirect_capacity(0)
}

fn create_control<H: Hal, T: Transport>(
    t: &mut T,
    options: &ConsoleOptions,
    negotiated: u64,
) -> Result<Control<H>, ConsoleError> {
    let mut receive =
        device::setup_queue_with::<H, T>(t, CONTROL_RECEIVE_QUEUE, spec(options), negotiated)?;
    let transmit =
        device::setup_queue_with::<H, T>(t, CONTROL_TRANSMIT_QUEUE, spec(options), negotiated)?;
    let receive_slots = options.control_buffers.min(receive.size());
    let mut receive_pool = BufferPool::new(receive_slots, RECEIVE_BUFFER_BYTES, receive.size())
        .map_err(ConsoleError::Dma)?;
    for slot in 0..receive_slots {
        post_receive(&mut receive, &mut receive_pool, slot)
            .map_err(|e| queue_error(CONTROL_RECEIVE_QUEUE, e))?;
    }
    let transmit_slots = options.control_buffers.min(transmit.size());
    let transmit_pool = BufferPool::new(transmit_slots, HEADER_BYTES, transmit.size())
        .map_err(ConsoleError::Dma)?;
    Ok(Control {
        receive,
        receive_pool,
        transmit,
        transmit_pool,
        transmit_free: (0..transmit_slots).rev().collect(),
        pending: VecDeque::new(),
    })
}

/// Sets up the queues of every port the driver will handle: all of
/// `min(max_nr_ports, options.max_ports)`, or fewer if the device runs out
/// of queues. Without MULTIPORT, port 0 also gets its buffers and state now.
fn create_ports<H: Hal, T: Transport>(
    t: &mut T,
    options: &ConsoleOptions,
    config: &ConsoleConfig,
    negotiated: u64,
) -> Result<Vec<Port<H>>, ConsoleError> {
    let wanted = config.max_nr_ports.min(options.max_ports);
    let mut ports = Vec::new();
    for id in 0..wanted {
        let (Some(rx), Some(tx)) = (receive_queue(id), transmit_queue(id)) else {
            break;
        };
        if id > 0 && (t.max_queue_size(rx)? == 0 || t.max_queue_size(tx)? == 0) {
            warn!(
                "{}: virtio-console: max_nr_ports is {} but queues {rx}/{tx} are missing; handling {id} port(s)",
                t.location(),
                config.max_nr_ports
            );
            break;
        }
        let receive = device::setup_queue_with::<H, T>(t, rx, spec(options), negotiated)?;
        let transmit = device::setup_queue_with::<H, T>(t, tx, spec(options), negotiated)?;
        ports.push(Port {
            id,
            receive,
            transmit,
            buffers: None,
            state: PortState::default(),
            stats: PortStats::default(),
        });
    }
    let Some(port0) = ports.first_mut() else {
        return Err(ConsoleError::BadConfig("no queues for port 0"));
    };
    if negotiated & feature::MULTIPORT == 0 {
        // The one port exists from the start, open on both sides (§5.3.6).
        ensure_buffers(port0, options)?;
        port0.state = PortState {
            present: true,
            console: true,
            name: None,
            host_open: true,
            guest_open: true,
            size: config.size,
        };
    }
    Ok(ports)
}

/// Gives `port` its buffers the first time it appears, and posts every
/// receive buffer (the caller's next kick publishes them). A port that
/// comes back keeps its buffers: the device still holds the posted ones.
fn ensure_buffers<H: Hal>(
    port: &mut Port<H>,
    options: &ConsoleOptions,
) -> Result<(), ConsoleError> {
    if port.buffers.is_some() {
        return Ok(());
    }
    let receive_slots = options.receive_buffers.min(port.receive.size());
    let transmit_slots = options.transmit_buffers.min(port.transmit.size());
    let mut receive = BufferPool::new(
        receive_slots,
        options.receive_buffer_bytes,
        port.receive.size(),
    )
    .map_err(ConsoleError::Dma)?;
    let transmit = BufferPool::new(
        transmit_slots,
        options.transmit_buffer_bytes,
        port.transmit.size(),
    )
    .map_err(ConsoleError::Dma)?;
    for slot in 0..receive_slots {
        post_receive(&mut port.receive, &mut receive, slot)
            .map_err(|e| queue_error(port.receive.index(), e))?;
    }
    trace!(
        "console port {}: {receive_slots} receive buffers of {} bytes posted, {transmit_slots} transmit buffers of {} bytes ready",
        port.id,
        options.receive_buffer_bytes,
        options.transmit_buffer_bytes
    );
    port.buffers = Some(PortBuffers {
        receive,
        filled: VecDeque::with_capacity(receive_slots as usize),
        transmit,
        transmit_free: (0..transmit_slots).rev().collect(),
    });
    Ok(())
}

/// Makes receive buffer `slot` available to the device (published by the
/// caller's next kick).
fn post_receive<H: Hal>(
    queue: &mut Virtqueue<H>,
    pool: &mut BufferPool<H>,
    slot: u16,
) -> Result<(), QueueError> {
    let segment = Segment::writable(pool.addr(slot), pool.slot_bytes() as u32);
    let token = queue.add(&[segment])?;
    pool.bind(token, slot);
    Ok(())
}

/// Moves what the device delivered on `port` into its filled list.
/// Buffers of a port that is gone, empty ones and ones with an impossible
/// length go straight back to the device.
fn collect_received<H: Hal, T: Transport>(
    port: &mut Port<H>,
    transport: &mut T,
    report: &mut Reporter,
) -> Result<(), ConsoleError> {
    let Some(buffers) = port.buffers.as_mut() else {
        return Ok(());
    };
    let index = port.receive.index();
    let mut reposted = 0;
    loop {
        let (token, len) = match port.receive.pop_used() {
            Ok(None) => break,
            Ok(Some(used)) => (used.token, Some(used.len as usize)),
            Err(QueueError::UsedLengthTooLong { token, len, max }) => {
                port.stats.bad_lengths += 1;
                report.queue_error(index, QueueError::UsedLengthTooLong { token, len, max });
                (token, None)
            }
            Err(error) if port.receive.is_broken() => return Err(queue_error(index, error)),
            Err(error) => {
                report.queue_error(index, error);
                continue;
            }
        };
        let Some(slot) = buffers.receive.take(token) else {
            continue;
        };
        match len {
            Some(len) if len > 0 && port.state.present => {
                port.stats.bytes_received += len as u64;
                port.stats.receive_buffers_filled += 1;
                buffers.filled.push_back(Filled { slot, len, read: 0 });
                if log_enabled!(Level::Trace) {
                    trace!("console port {}: received {len} bytes", port.id);
                }
            }
            other => {
                if let Some(len) = other {
                    port.stats.bytes_discarded += len as u64;
                }
                post_receive(&mut port.receive, &mut buffers.receive, slot)
                    .map_err(|e| queue_error(index, e))?;
                reposted += 1;
            }
        }
    }
    if reposted > 0 {
        device::kick(transport, &mut port.receive);
    }
    Ok(())
}

/// Throws away unread data of a removed port and reposts its buffers.
fn discard_received<H: Hal, T: Transport>(
    port: &mut Port<H>,
    transport: &mut T,
) -> Result<(), QueueError> {
    let Some(buffers) = port.buffers.as_mut() else {
        return Ok(());
    };
    let mut reposted = 0;
    while let Some(filled) = buffers.filled.pop_front() {
        port.stats.bytes_discarded += (filled.len - filled.read) as u64;
        post_receive(&mut port.receive, &mut buffers.receive, filled.slot)?;
        reposted += 1;
    }
    if reposted > 0 {
        device::kick(transport, &mut port.receive);
    }
    Ok(())
}

/// [`ConsoleDevice::read`] on the split-out pieces.
fn read_port<H: Hal, T: Transport>(
    ports: &mut [Port<H>],
    transport: &mut T,
    id: u32,
    buf: &mut [u8],
) -> Result<usize, ConsoleError> {
    let port = live_port_mut(ports, id)?;
    let Some(buffers) = port.buffers.as_mut() else {
        return Ok(0);
    };
    let mut copied = 0;
    let mut reposted = 0;
    while copied < buf.len() {
        let Some(front) = buffers.filled.front_mut() else {
            break;
        };
        let n = (front.len - front.read).min(buf.len() - copied);
        // Lengths were checked against the slot size when collected.
        buffers
            .receive
            .copy_out(front.slot, front.read, &mut buf[copied..copied + n]);
        copied += n;
        front.read += n;
        if front.read == front.len {
            let slot = front.slot;
            buffers.filled.pop_front();
            post_receive(&mut port.receive, &mut buffers.receive, slot)
                .map_err(|error| queue_error(port.receive.index(), error))?;
            reposted += 1;
        }
    }
    if reposted > 0 {
        device::kick(transport, &mut port.receive);
    }
    if copied > 0 && log_enabled!(Level::Trace) {
        trace!("console port {id}: read {copied} bytes, {reposted} receive buffer(s) reposted");
    }
    Ok(copied)
}

/// [`ConsoleDevice::write`] on the split-out pieces.
fn write_port<H: Hal, T: Transport>(
    ports: &mut [Port<H>],
    transport: &mut T,
    id: u32,
    data: &[u8],
    multiport: bool,
) -> Result<usize, ConsoleError> {
    let port = live_port_mut(ports, id)?;
    if multiport && !port.state.console && !port.state.host_open {
        return Err(ConsoleError::PortClosed(id));
    }
    reclaim_transmit(port)?;
    let Some(buffers) = port.buffers.as_mut() else {
        return Ok(0);
    };
    let slot_bytes = buffers.transmit.slot_bytes();
    let mut taken = 0;
    let mut descriptors = 0u64;
    while taken < data.len() {
        let Some(slot) = buffers.transmit_free.pop() else {
            break;
        };
        let chunk = &data[taken..data.len().min(taken + slot_bytes)];
        buffers.transmit.fill(slot, chunk);
        let segment = Segment::readable(buffers.transmit.addr(slot), chunk.len() as u32);
        match port.transmit.add(&[segment]) {
            Ok(token) => buffers.transmit.bind(token, slot),
            Err(error) => {
                buffers.transmit_free.push(slot);
                if matches!(error, QueueError::QueueFull { .. }) {
                    break;
                }
                // What was added so far goes out with the next kick.
                return Err(queue_error(port.transmit.index(), error));
            }
        }
        taken += chunk.len();
        descriptors += 1;
    }
    if descriptors > 0 {
        let notified = device::kick(transport, &mut port.transmit);
        port.stats.bytes_sent += taken as u64;
        port.stats.transmit_buffers_sent += descriptors;
        if log_enabled!(Level::Trace) {
            trace!(
                "console port {id}: {taken} of {} bytes in {descriptors} buffer(s), {}",
                data.len(),
                if notified {
                    "device notified"
                } else {
                    "notification suppressed"
                }
            );
        }
    }
    Ok(taken)
}

/// Returns the transmit buffers the device is done with to the free stack.
fn reclaim_transmit<H: Hal>(port: &mut Port<H>) -> Result<(), ConsoleError> {
    let Some(buffers) = port.buffers.as_mut() else {
        return Ok(());
    };
    loop {
        let token = match port.transmit.pop_used() {
            Ok(None) => return Ok(()),
            Ok(Some(used)) => used.token,
            // A device that "wrote" into a read-only buffer: the buffer is
            // finished all the same and can be reused.
            Err(QueueError::UsedLengthTooLong { token, .. }) => {
                port.stats.bad_lengths += 1;
                token
            }
            Err(error) if port.transmit.is_broken() => {
                return Err(queue_error(port.transmit.index(), error))
            }
            Err(_) => continue,
        };
        if let Some(slot) = buffers.transmit.take(token) {
            buffers.transmit_free.push(slot);
        }
    }
}

fn reclaim_control_transmit<H: Hal>(control: &mut Control<H>) -> Result<(), ConsoleError> {
    loop {
        let token = match control.transmit.pop_used() {
            Ok(None) => return Ok(()),
            Ok(Some(used)) => used.token,
            Err(QueueError::UsedLengthTooLong { token, .. }) => token,
            Err(error) if control.transmit.is_broken() => {
                return Err(queue_error(control.transmit.index(), error))
            }
            Err(_) => continue,
        };
        if let Some(slot) = control.transmit_pool.take(token) {
            control.transmit_free.push(slot);
        }
    }
}

fn live_port_mut<H: Hal>(ports: &mut [Port<H>], id: u32) -> Result<&mut Port<H>, ConsoleError> {
    ports
        .get_mut(id as usize)
        .filter(|p| p.state.present)
        .ok_or(ConsoleError::NoSuchPort(id))
}

fn unread_bytes<H: Hal>(port: &Port<H>) -> usize {
    port.buffers
        .as_ref()
        .map_or(0, |b| b.filled.iter().map(|f| f.len - f.read).sum())
}

fn port_info<H: Hal>(port: &Port<H>) -> PortInfo<'_> {
    PortInfo {
        id: port.id,
        name: port.state.name.as_deref(),
        console: port.state.console,
        host_open: port.state.host_open,
        guest_open: port.state.guest_open,
        size: port.state.size,
        readable: unread_bytes(port),
        transmit_in_flight: port.transmit.in_flight(),
        stats: port.stats,
    }
}
