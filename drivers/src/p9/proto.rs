//! # 9P2000.L messages: encoding and checked decoding
//!
//! Every 9P message is `size[4] type[1] tag[2]` followed by its fields,
//! little-endian; strings are `len[2]` and that many bytes (UTF-8, no NUL);
//! a qid is `type[1] version[4] path[8]`. The message numbers and field
//! lists are those of 9P2000.L as Linux (`net/9p/`, `include/net/9p/9p.h`)
//! and QEMU (`hw/9pfs/9p.c`) implement it; this file names only the
//! messages the client uses.
//!
//! [`Encoder`] builds a T-message into a byte vector and fills in `size`
//! last. [`Decoder`] reads an R-message from what the server wrote and
//! checks every length against the bytes actually there: a server that
//! claims more than it sent, or a string running off the end, is a
//! [`ProtocolError`], never an out-of-bounds read.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// `size[4] type[1] tag[2]`.
pub const HEADER_LEN: usize = 7;
/// The tag of Tversion (9P: "NOTAG").
pub const NOTAG: u16 = 0xffff;
/// "No fid" for Tattach's afid (no authentication).
pub const NOFID: u32 = 0xffff_ffff;
/// The most names one Twalk may carry (9P: MAXWELEM).
pub const MAX_WALK_NAMES: usize = 16;
/// The protocol this client speaks.
pub const VERSION: &str = "9P2000.L";

/// Message types (9P2000.L).
pub mod msg {
    /// Rlerror: `ecode[4]`, a Linux errno.
    pub const RLERROR: u8 = 7;
    /// Tlopen: `fid[4] flags[4]`.
    pub const TLOPEN: u8 = 12;
    /// Tlcreate: `fid[4] name[s] flags[4] mode[4] gid[4]`.
    pub const TLCREATE: u8 = 14;
    /// Tgetattr: `fid[4] request_mask[8]`.
    pub const TGETATTR: u8 = 24;
    /// Treaddir: `fid[4] offset[8] count[4]`.
    pub const TREADDIR: u8 = 40;
    /// Tversion: `msize[4] version[s]`.
    pub const TVERSION: u8 = 100;
    /// Tattach: `fid[4] afid[4] uname[s] aname[s] n_uname[4]`.
    pub const TATTACH: u8 = 104;
    /// Twalk: `fid[4] newfid[4] nwname[2] nwname*(wname[s])`.
    pub const TWALK: u8 = 110;
    /// Tread: `fid[4] offset[8] count[4]`.
    pub const TREAD: u8 = 116;
    /// Twrite: `fid[4] offset[8] count[4] data[count]`.
    pub const TWRITE: u8 = 118;
    /// Tclunk: `fid[4]`.
    pub const TCLUNK: u8 = 120;

    /// The reply to a T-message is its type plus one.
    pub const fn reply(t: u8) -> u8 {
        t + 1
    }
}

/// Linux open flags for Tlopen / Tlcreate.
pub mod flags {
    /// O_RDONLY.
    pub const READ: u32 = 0;
    /// O_WRONLY.
    pub const WRITE: u32 = 1;
    /// O_CREAT.
    pub const CREATE: u32 = 0o100;
    /// O_TRUNC.
    pub const TRUNCATE: u32 = 0o1000;
}

/// Tgetattr's request mask for the basic fields (P9_GETATTR_BASIC).
pub const GETATTR_BASIC: u64 = 0x7ff;

/// Qid types (the high bits of a mode: QTDIR, QTSYMLINK).
pub mod qid_type {
    /// A directory.
    pub const DIR: u8 = 0x80;
    /// A symbolic link.
    pub const SYMLINK: u8 = 0x02;
}

/// A server's unique id for a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Qid {
    /// [`qid_type`] bits.
    pub kind: u8,
    /// Changes when the file does.
    pub version: u32,
    /// Unique per file on the server.
    pub path: u64,
}

impl Qid {
    /// `true` for a directory.
    pub fn is_dir(&self) -> bool {
        self.kind & qid_type::DIR != 0
    }
}

/// What a server may get wrong in a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// The reply is shorter than its header, or than its `size` field says,
    /// or a field runs past its end.
    Truncated,
    /// `size` is larger than what the device wrote, or than msize.
    BadSize {
        /// The `size` field.
        size: u32,
        /// Bytes the device reported writing.
        written: u32,
    },
    /// The reply's tag is not the request's.
    WrongTag {
        /// The request's.
        expected: u16,
        /// The reply's.
        found: u16,
    },
    /// The reply is of another type than the request's answer (or Rlerror).
    WrongType {
        /// The type expected.
        expected: u8,
        /// The type found.
        found: u8,
    },
    /// A string is not UTF-8.
    NotUtf8,
    /// Rversion names another protocol.
    WrongVersion,
    /// Rversion's msize is below the minimum or above what was offered.
    BadMsize(u32),
    /// Rwalk returned more qids than names were walked.
    TooManyQids,
    /// Rread / Rreaddir returned more bytes than asked for.
    TooMuchData {
        /// Asked for.
        asked: u32,
        /// Returned.
        returned: u32,
    },
    /// Rwrite says more was written than was sent.
    WroteTooMuch,
    /// A T-message would not fit in msize.
    RequestTooLarge,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Truncated => f.write_str("truncated reply"),
            ProtocolError::BadSize { size, written } => {
                write!(f, "reply size {size} but the device wrote {written} bytes")
            }
            ProtocolError::WrongTag { expected, found } => {
                write!(f, "reply tag {found}, expected {expected}")
            }
            ProtocolError::WrongType { expected, found } => {
                write!(f, "reply type {found}, expected {expected}")
            }
            ProtocolError::NotUtf8 => f.write_str("a name that is not UTF-8"),
            ProtocolError::WrongVersion => f.write_str("the server does not speak 9P2000.L"),
            ProtocolError::BadMsize(m) => write!(f, "unusable msize {m}"),
            ProtocolError::TooManyQids => f.write_str("Rwalk returned more qids than names"),
            ProtocolError::TooMuchData { asked, returned } => {
                write!(f, "asked for {asked} bytes, the reply carries {returned}")
            }
            ProtocolError::WroteTooMuch => f.write_str("Rwrite counts more than was sent"),
            ProtocolError::RequestTooLarge => f.write_str("request larger than msize"),
        }
    }
}

/// Builds one T-message.
pub struct Encoder {
    bytes: Vec<u8>,
}

impl Encoder {
    /// A message of type `kind` with tag `tag` (size filled in by [`Encoder::finish`]).
    pub fn new(kind: u8, tag: u16) -> Self {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&[0; 4]);
        bytes.push(kind);
        bytes.extend_from_slice(&tag.to_le_bytes());
        Self { bytes }
    }

    /// Appends a `u8`.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes.push(v);
        self
    }

    /// Appends a little-endian `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a little-endian `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a little-endian `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a string (`len[2]` and its bytes; at most 65535 bytes,
    /// longer ones are cut, which the callers' name checks prevent).
    pub fn str(&mut self, s: &str) -> &mut Self {
        let len = s.len().min(usize::from(u16::MAX));
        self.u16(len as u16);
        self.bytes.extend_from_slice(&s.as_bytes()[..len]);
        self
    }

    /// Appends raw bytes (Twrite's data).
    pub fn bytes(&mut self, data: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(data);
        self
    }

    /// The message with its `size` field set.
    pub fn finish(mut self) -> Vec<u8> {
        let size = self.bytes.len() as u32;
        self.bytes[..4].copy_from_slice(&size.to_le_bytes());
        self.bytes
    }
}

/// Reads an R-message body, checking every length.
pub struct Decoder<'a> {
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    /// Reads `body` (the message after its header).
    pub fn new(body: &'a [u8]) -> Self {
        Self { rest: body }
    }

    /// Takes `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if n > self.rest.len() {
            return Err(ProtocolError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// A `u8`.
    pub fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, ProtocolError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, ProtocolError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, ProtocolError> {
        let b = self.take(8)?;
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        Ok(u64::from_le_bytes(w))
    }

    /// A string.
    pub fn str(&mut self) -> Result<String, ProtocolError> {
        let len = self.u16()?;
        let bytes = self.take(usize::from(len))?;
        core::str::from_utf8(bytes)
            .map(String::from)
            .map_err(|_| ProtocolError::NotUtf8)
    }

    /// A qid.
    pub fn qid(&mut self) -> Result<Qid, ProtocolError> {
        Ok(Qid {
            kind: self.u8()?,
            version: self.u32()?,
            path: self.u64()?,
        })
    }

    /// `true` when everything was read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// Checks a reply's header against the request: `size` within what the
/// device wrote, the tag, and the type (Rlerror is returned as `Err(Ok(errno))`).
/// Returns the body.
pub fn check_reply(
    reply: &[u8],
    written: u32,
    expected_type: u8,
    tag: u16,
) -> Result<Result<&[u8], u32>, ProtocolError> {
    if reply.len() < HEADER_LEN {
        return Err(ProtocolError::Truncated);
    }
    let size = u32::from_le_bytes([reply[0], reply[1], reply[2], reply[3]]);
    if size as usize > reply.len() || size > written {
        return Err(ProtocolError::BadSize { size, written });
    }
    if (size as usize) < HEADER_LEN {
        return Err(ProtocolError::Truncated);
    }
    let kind = reply[4];
    let found = u16::from_le_bytes([reply[5], reply[6]]);
    if found != tag {
        return Err(ProtocolError::WrongTag {
            expected: tag,
            found,
        });
    }
    let body = &reply[HEADER_LEN..size as usize];
    if kind == msg::RLERROR {
        return Decoder::new(body).u32().map(Err);
    }
    if kind != expected_type {
        return Err(ProtocolError::WrongType {
            expected: expected_type,
            found: kind,
        });
    }
    Ok(Ok(body))
}

/// One directory entry of Rreaddir: `qid[13] offset[8] type[1] name[s]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's qid.
    pub qid: Qid,
    /// Where the next Treaddir continues.
    pub offset: u64,
    /// Its `d_type`.
    pub kind: u8,
    /// Its name.
    pub name: String,
}

/// Splits Rreaddir's data into entries.
pub fn parse_dir_entries(mut data: Decoder<'_>) -> Result<Vec<DirEntry>, ProtocolError> {
    let mut entries = Vec::new();
    while !data.is_empty() {
        entries.push(DirEntry {
            qid: data.qid()?,
            offset: data.u64()?,
            kind: data.u8()?,
            name: data.str()?,
        });
    }
    Ok(entries)
}

/// What Rgetattr says about a file (the fields this client uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attr {
    /// Its qid.
    pub qid: Qid,
    /// `st_mode`.
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
}

/// Reads Rgetattr: `valid[8] qid[13] mode[4] uid[4] gid[4] nlink[8] rdev[8]
/// size[8] ...` (the rest is ignored).
pub fn parse_attr(mut d: Decoder<'_>) -> Result<Attr, ProtocolError> {
    let _valid = d.u64()?;
    let qid = d.qid()?;
    let mode = d.u32()?;
    let _uid = d.u32()?;
    let _gid = d.u32()?;
    let _nlink = d.u64()?;
    let _rdev = d.u64()?;
    let size = d.u64()?;
    Ok(Attr { qid, mode, size })
}
