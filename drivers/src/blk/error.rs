//! # What can go wrong with a block request (virtio 1.2 §5.2.6, §5.2.6.1)
//!
//! Three small types, one per moment a failure can happen:
//!
//! - [`RequestError`]: the device answered a request, badly (the status
//!   byte of §5.2.6 said IOERR or UNSUPP, or was not written; the used
//!   length was impossible), or the request was in flight when the device
//!   was reset. This is what a [`super::Completion`] carries, so it is
//!   12 bytes: a completion is copied once per request.
//! - [`BlkError`]: why a call on a live device failed: the driver refused
//!   the request before the device saw it (§5.2.6.1: the driver MUST NOT
//!   submit a request past `capacity`, a write to a read-only disk, ...),
//!   the queue is full, a ring misbehaved, a blocking call timed out, or a
//!   request failed ([`BlkError::Request`]). At most 16 bytes, so a
//!   `Result<BlkToken, BlkError>` comes back in two registers.
//! - [`SetupError`]: bringing the device up, back up ([`super::BlkDevice::recover`])
//!   or reconfiguring it failed. It carries the transport's and the
//!   initialisation sequence's own errors and is only returned by those
//!   rare calls, so its size does not matter.
//!
//! A ring fault ([`BlkError::Ring`]) names its queue only; the queue's own
//! error (which index, which descriptor) is logged at `warn` when it is
//! found and kept by the driver ([`super::BlkDevice::ring_fault`]), since
//! it is three words long and would triple the size of every result.

use core::fmt;

use hal::HalError;

use super::RequestType;
use crate::device::DeviceError;
use crate::transport::TransportError;

/// How a request that reached the device failed (§5.2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// The device answered VIRTIO_BLK_S_IOERR.
    IoError,
    /// The device answered VIRTIO_BLK_S_UNSUPP.
    Unsupported,
    /// The device left a status byte that is not OK, IOERR or UNSUPP
    /// (0xff: it did not write one at all).
    BadStatus(u8),
    /// The device's used length is impossible for the request: more than
    /// the request's writable bytes, from a modern device (§2.7.8; a
    /// legacy device's length is ignored, §5.2.6 legacy interface).
    BadLength {
        /// What the device said it wrote.
        written: u32,
        /// The request's writable total (data + status).
        expected: u32,
    },
    /// The request was in flight when the device was reset.
    Aborted,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RequestError::IoError => f.write_str("device reported an I/O error (IOERR)"),
            RequestError::Unsupported => {
                f.write_str("device does not support the request (UNSUPP)")
            }
            RequestError::BadStatus(s) => write!(f, "device left status byte {s:#04x}"),
            RequestError::BadLength { written, expected } => write!(
                f,
                "device claims to have written {written} bytes, expected {expected}"
            ),
            RequestError::Aborted => f.write_str("request aborted by a device reset"),
        }
    }
}

/// Why a call on the block device failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkError {
    /// The disk is read-only: writes, discards and write-zeroes are refused.
    ReadOnly,
    /// The request type needs a feature that was not negotiated.
    NotNegotiated(RequestType),
    /// A data buffer is empty or not a multiple of 512 bytes long.
    BadBufferLength {
        /// Its length.
        len: usize,
    },
    /// No data buffers, or a range of zero sectors.
    EmptyRequest,
    /// The request reaches past the end of the disk
    /// ([`super::BlkDevice::capacity_sectors`]).
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Sectors asked for (`u32::MAX`: that many or more).
        sectors: u32,
    },
    /// More data segments than one request may hold (use the blocking
    /// helpers, which split).
    TooManySegments {
        /// Segments the buffers need.
        needed: u32,
        /// The most one request may have.
        max: u32,
    },
    /// More data than one request may carry ([`super::MAX_REQUEST_BYTES`]).
    RequestTooLarge {
        /// Bytes asked for.
        bytes: usize,
    },
    /// A discard or write-zeroes range longer than the device allows.
    TooManySectors {
        /// Sectors asked for.
        sectors: u64,
        /// The device's limit.
        max: u32,
    },
    /// No room in the queue(s) right now: collect completions and retry.
    QueueFull,
    /// The device has no such request queue (or the driver did not set it up).
    NoSuchQueue(u16),
    /// The token names no request in flight or waiting to be collected.
    UnknownToken,
    /// Sharing a buffer with the device failed.
    Share(HalError),
    /// The registered data buffer is unknown, or another request (or this
    /// one, named twice) holds it.
    BufferUnavailable(super::BufferId),
    /// The request reached the device and failed.
    Request(RequestError),
    /// The ring of queue `queue` misbehaved (a device error the queue
    /// caught; [`super::BlkDevice::ring_fault`] says what). If the queue is
    /// broken, the device must be reset: see [`super::BlkDevice::recover`].
    Ring {
        /// Which queue.
        queue: u16,
    },
    /// A blocking helper's [`crate::device::Wait`] gave up; the device was reset.
    Timeout {
        /// How many waits were made.
        waits: u64,
    },
    /// The device was reset after a failure; [`super::BlkDevice::recover`] brings it back.
    DeviceFailed,
}

impl From<RequestError> for BlkError {
    fn from(e: RequestError) -> Self {
        BlkError::Request(e)
    }
}

/// Saturates a sector count for [`BlkError::OutOfRange`].
pub(crate) fn sectors_u32(sectors: u64) -> u32 {
    u32::try_from(sectors).unwrap_or(u32::MAX)
}

/// Saturates a count for [`BlkError::TooManySegments`].
pub(crate) fn count_u32(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

impl fmt::Display for BlkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BlkError::ReadOnly => f.write_str("the disk is read-only"),
            BlkError::NotNegotiated(r) => {
                write!(f, "{r} needs a feature the device does not offer")
            }
            BlkError::BadBufferLength { len } => {
                write!(
                    f,
                    "buffer of {len} bytes is not a non-empty multiple of 512"
                )
            }
            BlkError::EmptyRequest => f.write_str("request with no data"),
            BlkError::OutOfRange { sector, sectors } => write!(
                f,
                "sectors {sector}+{sectors} reach past the end of the disk"
            ),
            BlkError::TooManySegments { needed, max } => {
                write!(f, "{needed} data segments, at most {max} per request")
            }
            BlkError::RequestTooLarge { bytes } => write!(f, "{bytes} bytes in one request"),
            BlkError::TooManySectors { sectors, max } => {
                write!(f, "range of {sectors} sectors, the device allows {max}")
            }
            BlkError::QueueFull => f.write_str("queue full"),
            BlkError::NoSuchQueue(q) => write!(f, "no request queue {q}"),
            BlkError::UnknownToken => f.write_str("unknown token"),
            BlkError::Share(e) => write!(f, "sharing a buffer: {e}"),
            BlkError::BufferUnavailable(id) => write!(
                f,
                "data buffer {} is not registered or a request holds it",
                id.index()
            ),
            BlkError::Request(e) => write!(f, "{e}"),
            BlkError::Ring { queue } => {
                write!(f, "queue {queue}: the device broke the ring protocol")
            }
            BlkError::Timeout { waits } => write!(f, "no completion after {waits} waits"),
            BlkError::DeviceFailed => f.write_str("device is down after a failure"),
        }
    }
}

/// Why bringing the device up (again) or reconfiguring it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupError {
    /// The §3.1.1 sequence or a queue's setup failed.
    Device(DeviceError),
    /// A transport operation failed (a configuration read or write).
    Transport(TransportError),
    /// The device has a configuration this driver cannot work with.
    BadConfig(&'static str),
    /// [`super::BlkDevice::recover`]: the device now negotiates different features.
    FeaturesChanged {
        /// Before.
        before: u64,
        /// Now.
        now: u64,
    },
}

impl From<DeviceError> for SetupError {
    fn from(e: DeviceError) -> Self {
        SetupError::Device(e)
    }
}

impl From<TransportError> for SetupError {
    fn from(e: TransportError) -> Self {
        SetupError::Transport(e)
    }
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SetupError::Device(e) => write!(f, "{e}"),
            SetupError::Transport(e) => write!(f, "transport: {e}"),
            SetupError::BadConfig(why) => write!(f, "unusable device configuration: {why}"),
            SetupError::FeaturesChanged { before, now } => {
                write!(f, "device features changed from {before:#x} to {now:#x}")
            }
        }
    }
}

// Small enough to return by value cheaply (see the module docs); the host
// test `blk_errors_are_small` says the same where a reader looks for it.
const _: () = assert!(core::mem::size_of::<RequestError>() <= 12);
const _: () = assert!(core::mem::size_of::<BlkError>() <= 16);
