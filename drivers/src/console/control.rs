//! The multiport control protocol on the wire (virtio 1.2 §5.3.6.2
//! "Multiport Device Operation").
//!
//! With VIRTIO_CONSOLE_F_MULTIPORT, queues 2 (control receiveq, device to
//! driver) and 3 (control transmitq, driver to device) carry 8-byte
//! messages, each in its own buffer:
//!
//! ```text
//! struct virtio_console_control {
//!     le32 id;      // port number
//!     le16 event;   // what happened (below)
//!     le16 value;   // 0/1 for most events
//! };                // PORT_NAME: the name follows; RESIZE: le16 cols, le16 rows follow
//! ```
//!
//! | event | name           | sent by | meaning                                            |
//! |-------|----------------|---------|----------------------------------------------------|
//! | 0     | DEVICE_READY   | driver  | value 1: the driver is ready for PORT_ADDs         |
//! | 1     | PORT_ADD       | device  | port `id` exists                                   |
//! | 2     | PORT_REMOVE    | device  | port `id` is gone                                  |
//! | 3     | PORT_READY     | driver  | value 1: port `id` is set up (0: it failed)        |
//! | 4     | CONSOLE_PORT   | device  | port `id` is a console                             |
//! | 5     | RESIZE         | device  | console port `id` has a new size                   |
//! | 6     | PORT_OPEN      | both    | value 1/0: that side opened/closed port `id`       |
//! | 7     | PORT_NAME      | device  | port `id` is called what follows the header        |
//!
//! The device is not trusted. [`parse_device_message`] checks the *shape*
//! of every message (length, event number, events only the driver may
//! send, the name's bounds and encoding, the resize payload) and returns a
//! [`ControlError`] for anything wrong; the driver then checks the message
//! against its port state (ids in range, ports that exist). Neither step
//! can panic on any input.
//!
//! On names: the spec says the name follows "without a NUL terminator",
//! QEMU sends one and Linux accepts both; so does this parser. A name is
//! what comes before the first NUL, or the whole payload if there is none;
//! but a payload that fills the whole receive buffer without a NUL may have
//! been cut off, and is refused rather than guessed at.

use core::fmt;

/// Size of the control header.
pub const HEADER_BYTES: usize = 8;

/// The longest port name accepted, in bytes (UTF-8).
pub const MAX_NAME_BYTES: usize = 255;

/// Size of each control receive buffer: a header and the longest name
/// with its terminator.
pub const RECEIVE_BUFFER_BYTES: usize = HEADER_BYTES + MAX_NAME_BYTES + 1;

/// Control event numbers (§5.3.6.2).
pub mod event {
    /// Driver to device: ready for PORT_ADD messages.
    pub const DEVICE_READY: u16 = 0;
    /// Device to driver: a port exists.
    pub const PORT_ADD: u16 = 1;
    /// Device to driver: a port was removed.
    pub const PORT_REMOVE: u16 = 2;
    /// Driver to device: a port is set up (value 1) or failed (value 0).
    pub const PORT_READY: u16 = 3;
    /// Device to driver: the port is a console.
    pub const CONSOLE_PORT: u16 = 4;
    /// Device to driver: the console port's size changed.
    pub const RESIZE: u16 = 5;
    /// Either way: a side opened (1) or closed (0) the port.
    pub const PORT_OPEN: u16 = 6;
    /// Device to driver: the port's name follows.
    pub const PORT_NAME: u16 = 7;

    /// The spec's name of `event`, for logs.
    pub fn name(event: u16) -> &'static str {
        match event {
            DEVICE_READY => "DEVICE_READY",
            PORT_ADD => "PORT_ADD",
            PORT_REMOVE => "PORT_REMOVE",
            PORT_READY => "PORT_READY",
            CONSOLE_PORT => "CONSOLE_PORT",
            RESIZE => "RESIZE",
            PORT_OPEN => "PORT_OPEN",
            PORT_NAME => "PORT_NAME",
            _ => "unknown event",
        }
    }
}

/// One driver-to-device message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverMessage {
    /// Port number (0 for DEVICE_READY).
    pub id: u32,
    /// Event number ([`event`]).
    pub event: u16,
    /// Value.
    pub value: u16,
}

impl DriverMessage {
    /// DEVICE_READY with `value` 1 (ready) or 0 (failed).
    pub const fn device_ready(ok: bool) -> Self {
        Self {
            id: 0,
            event: event::DEVICE_READY,
            value: ok as u16,
        }
    }

    /// PORT_READY for `id`: 1 if the port is set up, 0 if it failed.
    pub const fn port_ready(id: u32, ok: bool) -> Self {
        Self {
            id,
            event: event::PORT_READY,
            value: ok as u16,
        }
    }

    /// PORT_OPEN for `id`: the driver opened (1) or closed (0) the port.
    pub const fn port_open(id: u32, open: bool) -> Self {
        Self {
            id,
            event: event::PORT_OPEN,
            value: open as u16,
        }
    }

    /// The 8 bytes on the wire (little-endian fields).
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut bytes = [0u8; HEADER_BYTES];
        bytes[0..4].copy_from_slice(&self.id.to_le_bytes());
        bytes[4..6].copy_from_slice(&self.event.to_le_bytes());
        bytes[6..8].copy_from_slice(&self.value.to_le_bytes());
        bytes
    }
}

impl fmt::Display for DriverMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (id {}, value {})",
            event::name(self.event),
            self.id,
            self.value
        )
    }
}

/// One device-to-driver message whose shape was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceMessage<'a> {
    /// PORT_ADD.
    PortAdd {
        /// Port number.
        id: u32,
    },
    /// PORT_REMOVE.
    PortRemove {
        /// Port number.
        id: u32,
    },
    /// CONSOLE_PORT.
    ConsolePort {
        /// Port number.
        id: u32,
    },
    /// RESIZE with the size that follows the header.
    Resize {
        /// Port number.
        id: u32,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// PORT_OPEN: the host side opened (`true`) or closed the port.
    PortOpen {
        /// Port number.
        id: u32,
        /// Open or closed.
        open: bool,
    },
    /// PORT_NAME with a checked name.
    PortName {
        /// Port number.
        id: u32,
        /// The name: 1 to [`MAX_NAME_BYTES`] bytes of UTF-8 without control characters.
        name: &'a str,
    },
}

impl DeviceMessage<'_> {
    /// The port the message is about.
    pub fn id(&self) -> u32 {
        match *self {
            DeviceMessage::PortAdd { id }
            | DeviceMessage::PortRemove { id }
            | DeviceMessage::ConsolePort { id }
            | DeviceMessage::Resize { id, .. }
            | DeviceMessage::PortOpen { id, .. }
            | DeviceMessage::PortName { id, .. } => id,
        }
    }

    /// Its event number.
    pub fn event(&self) -> u16 {
        match self {
            DeviceMessage::PortAdd { .. } => event::PORT_ADD,
            DeviceMessage::PortRemove { .. } => event::PORT_REMOVE,
            DeviceMessage::ConsolePort { .. } => event::CONSOLE_PORT,
            DeviceMessage::Resize { .. } => event::RESIZE,
            DeviceMessage::PortOpen { .. } => event::PORT_OPEN,
            DeviceMessage::PortName { .. } => event::PORT_NAME,
        }
    }
}

impl fmt::Display for DeviceMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DeviceMessage::Resize { id, cols, rows } => {
                write!(f, "RESIZE (id {id}, {cols}x{rows})")
            }
            DeviceMessage::PortOpen { id, open } => {
                write!(f, "PORT_OPEN (id {id}, value {})", u8::from(open))
            }
            DeviceMessage::PortName { id, name } => write!(f, "PORT_NAME (id {id}, {name:?})"),
            ref other => write!(f, "{} (id {})", event::name(other.event()), other.id()),
        }
    }
}

/// What is wrong with a port name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// No bytes before the terminator.
    Empty,
    /// The payload fills the receive buffer with no terminator: it may have
    /// been cut off.
    Unterminated,
    /// Longer than [`MAX_NAME_BYTES`].
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Not valid UTF-8.
    NotUtf8,
    /// Contains a control character (which would garble anything that prints it).
    ControlCharacter,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NameError::Empty => f.write_str("empty name"),
            NameError::Unterminated => {
                f.write_str("name fills the whole buffer without a terminator (cut off?)")
            }
            NameError::TooLong { len } => {
                write!(f, "name of {len} bytes, at most {MAX_NAME_BYTES} allowed")
            }
            NameError::NotUtf8 => f.write_str("name is not UTF-8"),
            NameError::ControlCharacter => f.write_str("name contains a control character"),
        }
    }
}

/// A control message the driver refused. None of these stop the device:
/// the message is dropped, counted and reported, and its buffer reposted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlError {
    /// Shorter than the 8-byte header.
    TooShort {
        /// Bytes the device wrote.
        len: usize,
    },
    /// The device claims to have written more than the buffer holds.
    TooLong {
        /// What it claims.
        len: u32,
        /// The buffer size.
        capacity: u32,
    },
    /// An event number the spec does not define.
    UnknownEvent {
        /// Port number.
        id: u32,
        /// The event.
        event: u16,
    },
    /// An event only the driver may send (DEVICE_READY, PORT_READY).
    DriverOnlyEvent {
        /// Port number.
        id: u32,
        /// The event.
        event: u16,
    },
    /// PORT_OPEN with a value other than 0 or 1.
    BadOpenValue {
        /// Port number.
        id: u32,
        /// The value.
        value: u16,
    },
    /// RESIZE without the 4 bytes of size after the header.
    ResizeTooShort {
        /// Port number.
        id: u32,
        /// Bytes after the header.
        len: usize,
    },
    /// A bad PORT_NAME.
    BadName {
        /// Port number.
        id: u32,
        /// What is wrong.
        error: NameError,
    },
    /// A port number not below the device's own `max_nr_ports`.
    PortOutOfRange {
        /// Port number.
        id: u32,
        /// `max_nr_ports`.
        max_nr_ports: u32,
    },
    /// PORT_ADD for a port that already exists.
    AlreadyAdded {
        /// Port number.
        id: u32,
    },
    /// An event about a port that was never added (or was removed).
    UnknownPort {
        /// Port number.
        id: u32,
        /// The event.
        event: u16,
    },
    /// A second PORT_NAME for a port (the first name is kept).
    NameAlreadySet {
        /// Port number.
        id: u32,
    },
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ControlError::TooShort { len } => {
                write!(
                    f,
                    "control message of {len} bytes, the header alone is {HEADER_BYTES}"
                )
            }
            ControlError::TooLong { len, capacity } => write!(
                f,
                "device claims a {len}-byte control message in a {capacity}-byte buffer"
            ),
            ControlError::UnknownEvent { id, event } => {
                write!(f, "unknown control event {event} for port {id}")
            }
            ControlError::DriverOnlyEvent { id, event: e } => write!(
                f,
                "device sent {} (port {id}), which only a driver sends",
                event::name(e)
            ),
            ControlError::BadOpenValue { id, value } => {
                write!(
                    f,
                    "PORT_OPEN for port {id} with value {value} (want 0 or 1)"
                )
            }
            ControlError::ResizeTooShort { id, len } => write!(
                f,
                "RESIZE for port {id} with {len} bytes after the header (want 4)"
            ),
            ControlError::BadName { id, error } => write!(f, "PORT_NAME for port {id}: {error}"),
            ControlError::PortOutOfRange { id, max_nr_ports } => write!(
                f,
                "port {id} is not below the device's max_nr_ports {max_nr_ports}"
            ),
            ControlError::AlreadyAdded { id } => write!(f, "PORT_ADD for port {id}, which exists"),
            ControlError::UnknownPort { id, event: e } => {
                write!(f, "{} for port {id}, which was never added", event::name(e))
            }
            ControlError::NameAlreadySet { id } => {
                write!(f, "second PORT_NAME for port {id}; the first name is kept")
            }
        }
    }
}

/// Checks the shape of one device-to-driver message.
///
/// `bytes` are the bytes the device wrote (the used length, already
/// checked against the buffer); `capacity` is the size of the buffer it
/// wrote them into, which tells a complete unterminated name from a
/// truncated one.
pub fn parse_device_message(
    bytes: &[u8],
    capacity: usize,
) -> Result<DeviceMessage<'_>, ControlError> {
    let Some((header, payload)) = bytes.split_first_chunk::<HEADER_BYTES>() else {
        return Err(ControlError::TooShort { len: bytes.len() });
    };
    let id = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let event = u16::from_le_bytes([header[4], header[5]]);
    let value = u16::from_le_bytes([header[6], header[7]]);
    match event {
        event::PORT_ADD => Ok(DeviceMessage::PortAdd { id }),
        event::PORT_REMOVE => Ok(DeviceMessage::PortRemove { id }),
        event::CONSOLE_PORT => Ok(DeviceMessage::ConsolePort { id }),
        event::PORT_OPEN => match value {
            0 | 1 => Ok(DeviceMessage::PortOpen {
                id,
                open: value == 1,
            }),
            _ => Err(ControlError::BadOpenValue { id, value }),
        },
        event::RESIZE => match payload {
            [c0, c1, r0, r1, ..] => Ok(DeviceMessage::Resize {
                id,
                cols: u16::from_le_bytes([*c0, *c1]),
                rows: u16::from_le_bytes([*r0, *r1]),
            }),
            _ => Err(ControlError::ResizeTooShort {
                id,
                len: payload.len(),
            }),
        },
        event::PORT_NAME => parse_name(payload, bytes.len() >= capacity)
            .map(|name| DeviceMessage::PortName { id, name })
            .map_err(|error| ControlError::BadName { id, error }),
        event::DEVICE_READY | event::PORT_READY => Err(ControlError::DriverOnlyEvent { id, event }),
        _ => Err(ControlError::UnknownEvent { id, event }),
    }
}

/// The name in a PORT_NAME payload. `fills_buffer`: the message used the
/// whole receive buffer.
fn parse_name(payload: &[u8], fills_buffer: bool) -> Result<&str, NameError> {
    let name = match payload.iter().position(|&b| b == 0) {
        Some(end) => &payload[..end],
        None if fills_buffer => return Err(NameError::Unterminated),
        None => payload,
    };
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong { len: name.len() });
    }
    let name = core::str::from_utf8(name).map_err(|_| NameError::NotUtf8)?;
    if name.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter);
    }
    Ok(name)
}
