//! # What the console driver reports (virtio 1.2 §5.3.6)
//!
//! Everything the driver tells its user besides the bytes themselves:
//! counters per port and per device ([`PortStats`], [`ConsoleStats`]),
//! events from the multiport protocol and the queues ([`ConsoleEvent`],
//! collected with [`super::ConsoleDevice::next_event`]), listings of queues and
//! ports ([`QueueInfo`], [`PortInfo`]) and the errors ([`ConsoleError`]).

use core::fmt;

use hal::HalError;

use super::control::ControlError;
use crate::device::DeviceError;
use crate::queue::{QueueCounters, QueueError};
use crate::transport::TransportError;

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
    /// A blocking helper's [`crate::device::Wait`] gave up.
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
