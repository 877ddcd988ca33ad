//! The virtio-blk request on the wire (virtio 1.2 §5.2.6 "Device
//! Operation") and the DMA pool its fixed parts live in.
//!
//! Every request is one descriptor chain of this shape:
//!
//! ```text
//! struct virtio_blk_req {
//!     le32 type;        // VIRTIO_BLK_T_IN, _OUT, _FLUSH, _GET_ID, ...   \
//!     le32 reserved;    //                                               | header: 16 bytes,
//!     le64 sector;      // where, in 512-byte sectors (0 if unused)      / device-readable
//!     u8   data[];      // the payload: device-readable for OUT, DISCARD,
//!                       // WRITE_ZEROES; device-writable for IN, GET_ID
//!     u8   status;      // written by the device: OK, IOERR or UNSUPP
//! };
//! ```
//!
//! The driver always gives the header and the status their own descriptors
//! (legacy devices without VIRTIO_F_ANY_LAYOUT require exactly that, §5.2.6.3),
//! and the data one descriptor per segment in between.
//!
//! Header and status are tiny and needed for every request, so they do not
//! come from the heap: [`RequestPool`] allocates one DMA slot per queue
//! descriptor when the queue is created, and a request uses the slot whose
//! number is its [`crate::queue::Token::index`] (the head descriptor, unique
//! while the request is in flight). A slot also holds the small payloads the
//! driver itself provides: a discard / write-zeroes range (16 bytes) or the
//! 20-byte buffer for GET_ID.
//!
//! ```text
//! slot (64 bytes):  0 header (16)  | 16 payload (up to 32) | 48 status (1) | padding
//! ```

use core::fmt;

use hal::{DeviceAddr, DmaOwner, DmaRegion, Hal, HalError};

use super::RequestError;

/// The request types this driver sends (§5.2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestType {
    /// VIRTIO_BLK_T_IN (0): read sectors.
    Read,
    /// VIRTIO_BLK_T_OUT (1): write sectors.
    Write,
    /// VIRTIO_BLK_T_FLUSH (4): commit the device's write cache.
    Flush,
    /// VIRTIO_BLK_T_GET_ID (8): the device's serial number (20 bytes).
    GetId,
    /// VIRTIO_BLK_T_DISCARD (11): the sectors' contents are no longer needed.
    Discard,
    /// VIRTIO_BLK_T_WRITE_ZEROES (13): the sectors read back as zeroes.
    WriteZeroes,
}

impl RequestType {
    /// The `type` field value.
    pub const fn code(self) -> u32 {
        match self {
            RequestType::Read => 0,
            RequestType::Write => 1,
            RequestType::Flush => 4,
            RequestType::GetId => 8,
            RequestType::Discard => 11,
            RequestType::WriteZeroes => 13,
        }
    }

    /// The spec's name, for logs.
    pub const fn name(self) -> &'static str {
        match self {
            RequestType::Read => "IN (read)",
            RequestType::Write => "OUT (write)",
            RequestType::Flush => "FLUSH",
            RequestType::GetId => "GET_ID",
            RequestType::Discard => "DISCARD",
            RequestType::WriteZeroes => "WRITE_ZEROES",
        }
    }

    /// `true` for the types that change the disk (refused on a read-only one).
    pub const fn modifies_disk(self) -> bool {
        matches!(
            self,
            RequestType::Write | RequestType::Discard | RequestType::WriteZeroes
        )
    }
}

impl fmt::Display for RequestType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Status byte values the device writes (§5.2.6).
pub mod status {
    /// VIRTIO_BLK_S_OK.
    pub const OK: u8 = 0;
    /// VIRTIO_BLK_S_IOERR.
    pub const IOERR: u8 = 1;
    /// VIRTIO_BLK_S_UNSUPP.
    pub const UNSUPP: u8 = 2;
    /// What the driver puts in the status byte before the request: not a
    /// value the device may write, so a device that never wrote the status
    /// is caught as an unknown status.
    pub const NOT_WRITTEN: u8 = 0xff;

    /// The spec's name of a status value, for logs.
    pub fn name(status: u8) -> &'static str {
        match status {
            OK => "OK",
            IOERR => "IOERR",
            UNSUPP => "UNSUPP",
            NOT_WRITTEN => "never written",
            _ => "unknown",
        }
    }
}

/// Judges a completed request by its status byte (see "The device is not
/// trusted" in `blk/mod.rs`). The used length is not judged here: one above
/// the writable bytes never gets this far on a modern transport, and one
/// below them is allowed (§2.7.8: "The device MAY write more than len
/// bytes"). The status byte was preset to [`status::NOT_WRITTEN`], a value
/// no device writes, so it is never mistaken for an answer the device did
/// not give.
pub fn check_status(status: u8) -> Result<(), RequestError> {
    match status {
        status::OK => Ok(()),
        status::IOERR => Err(RequestError::IoError),
        status::UNSUPP => Err(RequestError::Unsupported),
        other => Err(RequestError::BadStatus(other)),
    }
}

/// `true` when `len` is not what a device that wrote every writable byte
/// reports: the data (`data_bytes` for a read, 20 for GET_ID) plus the
/// status byte. Such a length is accepted and only counted
/// (`BlkQueueStats::inexact_used_lengths`).
pub fn used_length_is_inexact(request: RequestType, data_bytes: u32, len: u32) -> bool {
    let answer = match request {
        RequestType::Read => data_bytes,
        RequestType::GetId => ID_BYTES as u32,
        _ => 0,
    };
    len != answer + 1
}

/// Size of the request header (`type`, `reserved`, `sector`).
pub const HEADER_BYTES: usize = 16;
/// Size of one discard / write-zeroes range
/// (`struct virtio_blk_discard_write_zeroes`: le64 sector, le32 num_sectors, le32 flags).
pub const RANGE_BYTES: usize = 16;
/// `flags` bit 0 of a write-zeroes range: the device may deallocate the sectors.
pub const WRITE_ZEROES_FLAG_UNMAP: u32 = 1;
/// Length of the GET_ID answer: a serial number, NUL-padded if shorter.
pub const ID_BYTES: usize = 20;

/// Bytes per pool slot.
pub const SLOT_BYTES: usize = 64;
const PAYLOAD_OFFSET: usize = 16;
const PAYLOAD_BYTES: usize = 32;
const STATUS_OFFSET: usize = 48;

/// The request header, encoded.
pub fn encode_header(request: RequestType, sector: u64) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[0..4].copy_from_slice(&request.code().to_le_bytes());
    // bytes 4..8: `reserved` (legacy `ioprio`), zero.
    header[8..16].copy_from_slice(&sector.to_le_bytes());
    header
}

/// One discard / write-zeroes range, encoded.
pub fn encode_range(sector: u64, sectors: u32, flags: u32) -> [u8; RANGE_BYTES] {
    let mut range = [0u8; RANGE_BYTES];
    range[0..8].copy_from_slice(&sector.to_le_bytes());
    range[8..12].copy_from_slice(&sectors.to_le_bytes());
    range[12..16].copy_from_slice(&flags.to_le_bytes());
    range
}

/// One slot per queue descriptor for headers, small payloads and status
/// bytes, in one DMA allocation. See the module documentation.
pub struct RequestPool<H: Hal> {
    region: DmaRegion<H>,
    slots: usize,
}

impl<H: Hal> RequestPool<H> {
    /// Allocates `slots` slots (one per descriptor of the queue), for device `owner`.
    pub fn new(owner: DmaOwner, slots: usize) -> Result<Self, HalError> {
        let bytes = slots
            .checked_mul(SLOT_BYTES)
            .ok_or(HalError::InvalidArgument)?;
        Ok(Self {
            region: DmaRegion::new(owner, bytes)?,
            slots,
        })
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    fn base(&self, slot: usize) -> usize {
        debug_assert!(slot < self.slots);
        slot * SLOT_BYTES
    }

    /// Device address of slot `slot`'s header.
    pub fn header_addr(&self, slot: usize) -> DeviceAddr {
        self.region.device_addr() + self.base(slot) as u64
    }

    /// Device address of slot `slot`'s payload area.
    pub fn payload_addr(&self, slot: usize) -> DeviceAddr {
        self.header_addr(slot) + PAYLOAD_OFFSET as u64
    }

    /// Device address of slot `slot`'s status byte.
    pub fn status_addr(&self, slot: usize) -> DeviceAddr {
        self.header_addr(slot) + STATUS_OFFSET as u64
    }

    /// Fills the header (the bytes of [`encode_header`]) and presets the
    /// status byte to [`status::NOT_WRITTEN`]. Returns `false` if `slot` is
    /// out of range (nothing written).
    ///
    /// Three stores, because this runs for every request: the header as
    /// two little-endian words (`type` with `reserved` = 0 above it, then
    /// `sector`) and the status byte. The payload area is left as the last
    /// request in this slot left it; the requests that use it fill it first
    /// ([`RequestPool::write_payload`] for a range, [`RequestPool::clear_payload`]
    /// before GET_ID).
    pub fn prepare(&self, slot: usize, request: RequestType, sector: u64) -> bool {
        if slot >= self.slots {
            return false;
        }
        let base = self.base(slot);
        self.region.write(base, u64::from(request.code()).to_le())
            && self.region.write(base + 8, sector.to_le())
            && self.region.write(base + STATUS_OFFSET, status::NOT_WRITTEN)
    }

    /// Zeroes the payload area. GET_ID needs it: a device may write a
    /// serial shorter than 20 bytes without the NUL padding, and what it
    /// leaves alone must read as padding, not as the range of an earlier
    /// discard in the same slot.
    pub fn clear_payload(&self, slot: usize) -> bool {
        slot < self.slots
            && self
                .region
                .write_bytes(self.base(slot) + PAYLOAD_OFFSET, &[0u8; PAYLOAD_BYTES])
    }

    /// Writes the driver-provided payload (at most 32 bytes).
    pub fn write_payload(&self, slot: usize, payload: &[u8]) -> bool {
        slot < self.slots
            && payload.len() <= PAYLOAD_BYTES
            && self
                .region
                .write_bytes(self.base(slot) + PAYLOAD_OFFSET, payload)
    }

    /// Reads back the payload area (what the device wrote for GET_ID).
    pub fn read_payload(&self, slot: usize, out: &mut [u8]) -> bool {
        slot < self.slots
            && out.len() <= PAYLOAD_BYTES
            && self
                .region
                .read_bytes(self.base(slot) + PAYLOAD_OFFSET, out)
    }

    /// The status byte as the device left it.
    pub fn status(&self, slot: usize) -> Option<u8> {
        if slot >= self.slots {
            return None;
        }
        self.region.read(self.base(slot) + STATUS_OFFSET)
    }
}

impl<H: Hal> fmt::Debug for RequestPool<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestPool")
            .field("slots", &self.slots)
            .field(
                "device_addr",
                &format_args!("{:#x}", self.region.device_addr()),
            )
            .finish()
    }
}

/// A device serial number from GET_ID (§5.2.6): an ID string of up to 20
/// bytes, padded with NULs when shorter; a 20-byte serial has no NUL at all.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Serial {
    bytes: [u8; ID_BYTES],
    len: u8,
}

impl Serial {
    /// Parses the 20 bytes the device wrote: everything up to the first NUL.
    pub fn from_id_bytes(raw: &[u8; ID_BYTES]) -> Self {
        let len = raw.iter().position(|&b| b == 0).unwrap_or(ID_BYTES);
        Self {
            bytes: *raw,
            len: len as u8,
        }
    }

    /// The serial's bytes (without padding).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The serial as text, if it is UTF-8 (QEMU's `serial=` is).
    pub fn as_str(&self) -> Option<&str> {
        core::str::from_utf8(self.as_bytes()).ok()
    }

    /// Length in bytes (0 to 20).
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// `true` if the device reported an empty serial.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Display for Serial {
    /// Printable ASCII as is, anything else as `\xNN`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.as_bytes() {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial(\"{self}\")")
    }
}
