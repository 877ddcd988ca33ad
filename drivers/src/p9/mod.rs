//! # virtio-9p: a host folder over 9P2000.L
//!
//! The 9P transport is device type 9 of virtio 1.2 §5 ("9P transport");
//! the specification gives it no section of its own, so its details are
//! those Linux (`include/uapi/linux/virtio_9p.h`, `net/9p/trans_virtio.c`)
//! and QEMU (`hw/9pfs/virtio-9p-device.c`) agree on:
//!
//! - one virtqueue, requests (queue 0);
//! - feature bit 0, VIRTIO_9P_MOUNT_TAG: the configuration space holds
//!   `le16 tag_len; u8 tag[tag_len]`, the name the host gave the share
//!   (`mount_tag=` in QEMU), read with the generation counter (§2.5.1);
//! - each request is one chain: the T-message in a device-readable buffer,
//!   then a device-writable buffer of msize bytes for the R-message
//!   (§2.7.4.2: readable first); the used length is what the server wrote.
//!
//! On top of that this module is a small 9P2000.L client ([`proto`] for
//! the messages, [`errno`] for the server's errors): Tversion negotiates
//! msize (the client offers [`MAX_MSIZE`], the server may lower it), Tattach
//! makes fid 0 the share's root, and every operation walks from there with
//! a fid of its own and clunks it on every path, success or error, so fids
//! never leak ([`P9Device::fids_in_use`] counts them; the tests check it
//! returns to 1, the root). Reads and writes larger than one message are
//! split into msize-sized Tread / Twrite. Paths are split by [`split_path`],
//! which refuses any `..` that would leave the share.
//!
//! The device is untrusted: the reply's `size` must fit in what the device
//! says it wrote, its tag and type must be the request's, and every field is
//! read through a bounds-checked [`proto::Decoder`]. A server error is
//! [`P9Error::Server`] with its errno by name. A ring violation or a
//! timeout resets the device and stops the driver ([`P9Error::Stopped`]).
//!
//! Host tests: `cargo test -p tests --test p9` (server model:
//! `tests/src/p9_model.rs`).

pub mod errno;
pub mod proto;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use hal::{DeviceVisible, DmaRegion, Hal, HalError};

use crate::device::{self, DeviceError, QueueSpec, RequestError, Wait, WaitTimeout};
use crate::features;
use crate::queue::{QueueError, Ring, Segment, Virtqueue};
use crate::transport::{read_config_consistent, DeviceType, Transport, TransportError};

use errno::Errno;
use proto::{msg, Attr, Decoder, DirEntry, Encoder, ProtocolError, Qid, HEADER_LEN};

/// The one queue: requests.
pub const REQUEST_QUEUE: u16 = 0;
/// VIRTIO_9P_MOUNT_TAG: the configuration holds the share's name.
pub const MOUNT_TAG: u64 = 1 << 0;
/// Device-specific features this driver implements.
pub const DRIVER_FEATURES: u64 = MOUNT_TAG;
/// The msize the client offers (and the size of its two DMA buffers).
pub const MAX_MSIZE: u32 = 128 * 1024;
/// The smallest msize the client accepts.
pub const MIN_MSIZE: u32 = 4096;
/// The most fids open at once.
pub const MAX_FIDS: usize = 64;
/// The longest mount tag read from the configuration.
pub const MAX_TAG_LEN: usize = 255;
/// The longest name in a path.
pub const MAX_NAME_LEN: usize = 255;
/// The root's fid, made by Tattach.
pub const ROOT_FID: u32 = 0;
/// Descriptors: a request is two, one in flight at a time.
const QUEUE_SIZE_WANTED: u16 = 4;
/// Tread / Rread overhead: `size type tag` + `count[4]`.
const READ_OVERHEAD: u32 = HEADER_LEN as u32 + 4;
/// Twrite overhead: `size type tag fid[4] offset[8] count[4]`.
const WRITE_OVERHEAD: u32 = HEADER_LEN as u32 + 16;

/// What can go wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum P9Error {
    /// Bring-up failed.
    Device(DeviceError),
    /// Reading the configuration failed.
    Transport(TransportError),
    /// No DMA memory.
    Dma(HalError),
    /// The mount tag in the configuration is longer than [`MAX_TAG_LEN`] or not UTF-8.
    BadMountTag,
    /// The ring refused the request, or the device broke a ring rule: reset.
    Queue(QueueError),
    /// The device did not answer in time: reset.
    TimedOut(WaitTimeout),
    /// An earlier device error stopped the driver.
    Stopped,
    /// The server broke the protocol.
    Protocol(ProtocolError),
    /// The server refused (Rlerror).
    Server(Errno),
    /// The path leaves the share (`..` above its root).
    OutsideMount,
    /// A name in the path is too long.
    BadName,
    /// [`MAX_FIDS`] fids are open.
    TooManyFids,
    /// Tversion / Tattach have not succeeded.
    NotMounted,
}

impl fmt::Display for P9Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            P9Error::Device(e) => write!(f, "{e}"),
            P9Error::Transport(e) => write!(f, "configuration: {e}"),
            P9Error::Dma(e) => write!(f, "DMA memory: {e:?}"),
            P9Error::BadMountTag => f.write_str("the mount tag is too long or not UTF-8"),
            P9Error::Queue(e) => write!(f, "requests queue: {e} (device reset)"),
            P9Error::TimedOut(t) => write!(f, "no answer: {t} (device reset)"),
            P9Error::Stopped => f.write_str("stopped after an earlier device error"),
            P9Error::Protocol(e) => write!(f, "9P protocol: {e}"),
            P9Error::Server(e) => write!(f, "{e}"),
            P9Error::OutsideMount => f.write_str("path leaves the mount"),
            P9Error::BadName => f.write_str("a name in the path is too long"),
            P9Error::TooManyFids => f.write_str("too many fids open"),
            P9Error::NotMounted => f.write_str("not mounted"),
        }
    }
}

impl From<DeviceError> for P9Error {
    fn from(e: DeviceError) -> Self {
        P9Error::Device(e)
    }
}

impl From<HalError> for P9Error {
    fn from(e: HalError) -> Self {
        P9Error::Dma(e)
    }
}

impl From<ProtocolError> for P9Error {
    fn from(e: ProtocolError) -> Self {
        P9Error::Protocol(e)
    }
}

/// Splits `path` (relative to the share's root) into names: empty names and
/// `.` are dropped, `..` goes up one, and going above the root is
/// [`P9Error::OutsideMount`].
pub fn split_path(path: &str) -> Result<Vec<&str>, P9Error> {
    let mut names: Vec<&str> = Vec::new();
    for name in path.split('/') {
        match name {
            "" | "." => {}
            ".." => {
                names.pop().ok_or(P9Error::OutsideMount)?;
            }
            name if name.len() > MAX_NAME_LEN || name.contains('\0') => {
                return Err(P9Error::BadName)
            }
            name => names.push(name),
        }
    }
    Ok(names)
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// Its name.
    pub name: String,
    /// A directory.
    pub is_dir: bool,
    /// Its size in bytes.
    pub size: u64,
}

/// What the driver has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct P9Stats {
    /// 9P requests answered.
    pub requests: u64,
    /// File bytes read.
    pub bytes_read: u64,
    /// File bytes written.
    pub bytes_written: u64,
}

/// A virtio-9p device and the 9P2000.L client on it.
pub struct P9Device<H: Hal, T: Transport> {
    transport: T,
    /// The ring and the two messages: kept for ever, not freed, if the
    /// device never acknowledges a reset (`device::reset_or_keep`).
    queue: DeviceVisible<Virtqueue<H>>,
    /// The T-message the device reads.
    request: DeviceVisible<DmaRegion<H>>,
    /// The R-message the device writes.
    reply: DeviceVisible<DmaRegion<H>>,
    features: u64,
    mount_tag: String,
    msize: u32,
    mounted: bool,
    next_tag: u16,
    fids: Vec<bool>,
    stopped: bool,
    stats: P9Stats,
}

impl<H: Hal, T: Transport> P9Device<H, T> {
    /// Brings the device up (§3.1.1 through [`device::bring_up`]) and reads
    /// its mount tag. [`P9Device::mount`] then starts the 9P session.
    pub fn new(mut transport: T, ring_features: u64) -> Result<Self, P9Error> {
        device::expect_device_type(&transport, DeviceType::NineP)?;
        let request = DmaRegion::new(transport.dma_owner(), MAX_MSIZE as usize)?;
        let reply = DmaRegion::new(transport.dma_owner(), MAX_MSIZE as usize)?;
        // Two descriptors per request: direct chains, no indirect tables.
        let ring_features = ring_features & !features::RING_INDIRECT_DESC;
        let ((queue, mount_tag), features) = device::bring_up(
            &mut transport,
            DRIVER_FEATURES,
            ring_features,
            |transport, negotiated| {
                let tag = if negotiated & MOUNT_TAG != 0 {
                    read_mount_tag(transport)?
                } else {
                    String::new()
                };
                let spec = QueueSpec::new(QUEUE_SIZE_WANTED).with_indirect_capacity(0);
                let mut queue =
                    device::setup_queue_with::<H, _>(transport, REQUEST_QUEUE, spec, negotiated)?;
                queue.disable_interrupts();
                Ok::<_, P9Error>((queue, tag))
            },
        )?;
        Ok(Self {
            transport,
            queue: DeviceVisible::new(queue),
            request: DeviceVisible::new(request),
            reply: DeviceVisible::new(reply),
            features,
            mount_tag,
            msize: MAX_MSIZE,
            mounted: false,
            next_tag: 1,
            fids: vec![false; MAX_FIDS],
            stopped: false,
            stats: P9Stats::default(),
        })
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The share's name (empty without VIRTIO_9P_MOUNT_TAG).
    pub fn mount_tag(&self) -> &str {
        &self.mount_tag
    }

    /// The negotiated msize (the offer until [`P9Device::mount`]).
    pub fn msize(&self) -> u32 {
        self.msize
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The requests queue.
    pub fn queue(&self) -> &Virtqueue<H> {
        &self.queue
    }

    /// Fids open on the server, the root's included.
    pub fn fids_in_use(&self) -> usize {
        self.fids.iter().filter(|&&used| used).count()
    }

    /// What the driver has done.
    pub fn stats(&self) -> P9Stats {
        self.stats
    }

    /// Hands the requests queue's ring, with its name, to `visit`: a
    /// read-only look for the live queue view (`crate::view`).
    pub fn visit_rings(&self, mut visit: impl FnMut(&dyn fmt::Display, &Virtqueue<H>)) {
        visit(&"requests", &self.queue);
    }

    /// `true` after a device error.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Starts the session: Tversion (msize and "9P2000.L"), then Tattach
    /// of the share's root as fid [`ROOT_FID`].
    pub fn mount(&mut self, wait: &mut impl Wait) -> Result<(), P9Error> {
        let mut m = Encoder::new(msg::TVERSION, proto::NOTAG);
        m.u32(MAX_MSIZE).str(proto::VERSION);
        let body = self.rpc(m.finish(), proto::NOTAG, msg::TVERSION, wait)?;
        let mut d = Decoder::new(&body);
        let msize = d.u32()?;
        if d.str()? != proto::VERSION {
            return Err(ProtocolError::WrongVersion.into());
        }
        if !(MIN_MSIZE..=MAX_MSIZE).contains(&msize) {
            return Err(ProtocolError::BadMsize(msize).into());
        }
        self.msize = msize;
        if self.fids[ROOT_FID as usize] {
            return Ok(());
        }
        let tag = self.tag();
        let mut m = Encoder::new(msg::TATTACH, tag);
        m.u32(ROOT_FID).u32(proto::NOFID).str("").str("").u32(0);
        self.rpc(m.finish(), tag, msg::TATTACH, wait)?;
        self.fids[ROOT_FID as usize] = true;
        self.mounted = true;
        Ok(())
    }

    /// Size and kind of the file at `path`.
    pub fn stat(&mut self, path: &str, wait: &mut impl Wait) -> Result<Attr, P9Error> {
        let names = split_path(path)?;
        self.with_fid(&names, wait, |dev, fid, wait| dev.getattr(fid, wait))
    }

    /// The entries of directory `path` (without `.` and `..`), with sizes.
    pub fn list(&mut self, path: &str, wait: &mut impl Wait) -> Result<Vec<ListEntry>, P9Error> {
        let names = split_path(path)?;
        let entries = self.with_fid(&names, wait, |dev, fid, wait| {
            dev.lopen(fid, proto::flags::READ, wait)?;
            let mut all: Vec<DirEntry> = Vec::new();
            let mut offset = 0;
            loop {
                let batch = dev.readdir(fid, offset, wait)?;
                let Some(last) = batch.last() else { break };
                offset = last.offset;
                all.extend(batch);
            }
            Ok(all)
        })?;
        let mut listing = Vec::new();
        for entry in entries
            .into_iter()
            .filter(|e| e.name != "." && e.name != "..")
        {
            let mut child = names.clone();
            child.push(&entry.name);
            let attr = self.with_fid(&child, wait, |dev, fid, wait| dev.getattr(fid, wait))?;
            listing.push(ListEntry {
                is_dir: attr.qid.is_dir(),
                size: attr.size,
                name: entry.name,
            });
        }
        Ok(listing)
    }

    /// Reads the whole file at `path`, handing each piece to `chunk` as it
    /// arrives (msize-sized Treads); `chunk` returns `false` to stop early.
    /// Returns the bytes read.
    pub fn read_file(
        &mut self,
        path: &str,
        wait: &mut impl Wait,
        mut chunk: impl FnMut(&[u8]) -> bool,
    ) -> Result<u64, P9Error> {
        let names = split_path(path)?;
        self.with_fid(&names, wait, |dev, fid, wait| {
            let (qid, iounit) = dev.lopen(fid, proto::flags::READ, wait)?;
            // 9P2000.L reads directories with Treaddir; QEMU answers a Tread
            // on one with EOPNOTSUPP. Say what it is instead.
            if qid.is_dir() {
                return Err(P9Error::Server(errno::EISDIR));
            }
            let mut per_read = dev.msize - READ_OVERHEAD;
            if iounit != 0 {
                per_read = per_read.min(iounit);
            }
            let mut offset = 0u64;
            loop {
                let data = dev.read(fid, offset, per_read, wait)?;
                if data.is_empty() {
                    return Ok(offset);
                }
                offset += data.len() as u64;
                dev.stats.bytes_read += data.len() as u64;
                if !chunk(&data) {
                    return Ok(offset);
                }
            }
        })
    }

    /// Creates or replaces the file at `path` with `data` (msize-sized Twrites).
    pub fn write_file(
        &mut self,
        path: &str,
        data: &[u8],
        wait: &mut impl Wait,
    ) -> Result<(), P9Error> {
        let names = split_path(path)?;
        let Some((name, parent)) = names.split_last() else {
            return Err(P9Error::Server(errno::EISDIR));
        };
        let write_all = |dev: &mut Self, fid: u32, wait: &mut _| -> Result<(), P9Error> {
            let per_write = (dev.msize - WRITE_OVERHEAD) as usize;
            let mut offset = 0;
            while offset < data.len() {
                let end = (offset + per_write).min(data.len());
                let n = dev.write(fid, offset as u64, &data[offset..end], wait)?;
                if n == 0 {
                    return Err(P9Error::Server(Errno(5)));
                }
                offset += n as usize;
                dev.stats.bytes_written += u64::from(n);
            }
            Ok(())
        };
        let flags = proto::flags::WRITE | proto::flags::TRUNCATE;
        match self.with_fid(&names, wait, |dev, fid, wait| {
            dev.lopen(fid, flags, wait)?;
            write_all(dev, fid, wait)
        }) {
            Err(P9Error::Server(errno::ENOENT)) => {}
            other => return other,
        }
        // It does not exist: create it in its directory (Tlcreate turns the
        // directory's fid into the new file's, opened).
        self.with_fid(parent, wait, |dev, fid, wait| {
            dev.lcreate(fid, name, flags | proto::flags::CREATE, 0o644, wait)?;
            write_all(dev, fid, wait)
        })
    }

    // ---- fids

    /// Walks from the root to `names` with a new fid, runs `f` on it, and
    /// clunks it whatever `f` returned.
    fn with_fid<R, W: Wait>(
        &mut self,
        names: &[&str],
        wait: &mut W,
        f: impl FnOnce(&mut Self, u32, &mut W) -> Result<R, P9Error>,
    ) -> Result<R, P9Error> {
        let fid = self.walk(names, wait)?;
        let result = f(self, fid, wait);
        let clunked = self.clunk(fid, wait);
        let value = result?;
        clunked.map(|()| value)
    }

    fn alloc_fid(&mut self) -> Result<u32, P9Error> {
        // Fid 0 is the root's, made by Tattach.
        let free = self
            .fids
            .iter()
            .skip(1)
            .position(|&used| !used)
            .ok_or(P9Error::TooManyFids)?
            + 1;
        self.fids[free] = true;
        Ok(free as u32)
    }

    fn free_fid(&mut self, fid: u32) {
        if let Some(slot) = self.fids.get_mut(fid as usize) {
            *slot = false;
        }
    }

    /// Twalk from the root to `names` (at most [`proto::MAX_WALK_NAMES`]
    /// per message): a new fid for the file, or the server's error. A walk
    /// that stops early is ENOENT, and its fid is given back.
    fn walk(&mut self, names: &[&str], wait: &mut impl Wait) -> Result<u32, P9Error> {
        if self.stopped {
            return Err(P9Error::Stopped);
        }
        if !self.mounted {
            return Err(P9Error::NotMounted);
        }
        let fid = self.alloc_fid()?;
        let mut from = ROOT_FID;
        let mut chunks: Vec<&[&str]> = names.chunks(proto::MAX_WALK_NAMES).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for chunk in chunks {
            let result = self.walk_once(from, fid, chunk, wait);
            let walked = match result {
                Ok(n) if n == chunk.len() => Ok(()),
                Ok(_) => Err(P9Error::Server(errno::ENOENT)),
                Err(e) => Err(e),
            };
            if let Err(error) = walked {
                if from == fid {
                    // The fid exists from an earlier chunk: clunk it.
                    let _ = self.clunk(fid, wait);
                } else {
                    // §9P walk: a failed walk does not create newfid.
                    self.free_fid(fid);
                }
                return Err(error);
            }
            from = fid;
        }
        Ok(fid)
    }

    /// One Twalk; the number of names walked.
    fn walk_once(
        &mut self,
        from: u32,
        fid: u32,
        names: &[&str],
        wait: &mut impl Wait,
    ) -> Result<usize, P9Error> {
        let tag = self.tag();
        let mut m = Encoder::new(msg::TWALK, tag);
        m.u32(from).u32(fid).u16(names.len() as u16);
        for name in names {
            m.str(name);
        }
        let body = self.rpc(m.finish(), tag, msg::TWALK, wait)?;
        let mut d = Decoder::new(&body);
        let count = usize::from(d.u16()?);
        if count > names.len() {
            return Err(ProtocolError::TooManyQids.into());
        }
        for _ in 0..count {
            d.qid()?;
        }
        Ok(count)
    }

    /// Tclunk: the fid is gone afterwards, whatever the answer.
    fn clunk(&mut self, fid: u32, wait: &mut impl Wait) -> Result<(), P9Error> {
        let tag = self.tag();
        let mut m = Encoder::new(msg::TCLUNK, tag);
        m.u32(fid);
        let result = self.rpc(m.finish(), tag, msg::TCLUNK, wait);
        self.free_fid(fid);
        result.map(|_| ())
    }

    // ---- one message each

    fn getattr(&mut self, fid: u32, wait: &mut impl Wait) -> Result<Attr, P9Error> {
        let tag = self.tag();
        let mut m = Encoder::new(msg::TGETATTR, tag);
        m.u32(fid).u64(proto::GETATTR_BASIC);
        let body = self.rpc(m.finish(), tag, msg::TGETATTR, wait)?;
        Ok(proto::parse_attr(Decoder::new(&body))?)
    }

    fn lopen(&mut self, fid: u32, flags: u32, wait: &mut impl Wait) -> Result<(Qid, u32), P9Error> {
        let tag = self.tag();
        let mut m = Encoder::new(msg::TLOPEN, tag);
        m.u32(fid).u32(flags);
        let body = self.rpc(m.finish(), tag, msg::TLOPEN, wait)?;
        let mut d = Decoder::new(&body);
        Ok((d.qid()?, d.u32()?))
    }

    fn lcreate(
        &mut self,
        fid: u32,
        name: &str,
        flags: u32,
        mode: u32,
        wait: &mut impl Wait,
    ) -> Result<(Qid, u32), P9Error> {
        let tag = self.tag();
        let mut m = Encoder::new(msg::TLCREATE, tag);
        m.u32(fid).str(name).u32(flags).u32(mode).u32(0);
        let body = self.rpc(m.finish(), tag, msg::TLCREATE, wait)?;
        let mut d = Decoder::new(&body);
        Ok((d.qid()?, d.u32()?))
    }

    fn read(
        &mut self,
        fid: u32,
        offset: u64,
        count: u32,
        wait: &mut impl Wait,
    ) -> Result<Vec<u8>, P9Error> {
        self.counted(msg::TREAD, fid, offset, count, wait)
    }

    fn readdir(
        &mut self,
        fid: u32,
        offset: u64,
        wait: &mut impl Wait,
    ) -> Result<Vec<DirEntry>, P9Error> {
        let count = self.msize - READ_OVERHEAD;
        let entries = self.counted(msg::TREADDIR, fid, offset, count, wait)?;
        Ok(proto::parse_dir_entries(Decoder::new(&entries))?)
    }

    /// Tread and Treaddir have one shape: `fid[4] offset[8] count[4]` asks,
    /// `count[4] data[count]` answers. A server that returns more than was
    /// asked is refused, not trusted.
    fn counted(
        &mut self,
        kind: u8,
        fid: u32,
        offset: u64,
        count: u32,
        wait: &mut impl Wait,
    ) -> Result<Vec<u8>, P9Error> {
        let tag = self.tag();
        let mut m = Encoder::new(kind, tag);
        m.u32(fid).u64(offset).u32(count);
        let body = self.rpc(m.finish(), tag, kind, wait)?;
        let mut d = Decoder::new(&body);
        let returned = d.u32()?;
        if returned > count {
            return Err(ProtocolError::TooMuchData {
                asked: count,
                returned,
            }
            .into());
        }
        Ok(d.take(returned as usize)?.to_vec())
    }

    fn write(
        &mut self,
        fid: u32,
        offset: u64,
        data: &[u8],
        wait: &mut impl Wait,
    ) -> Result<u32, P9Error> {
        let tag = self.tag();
        let mut m = Encoder::new(msg::TWRITE, tag);
        m.u32(fid).u64(offset).u32(data.len() as u32).bytes(data);
        let body = self.rpc(m.finish(), tag, msg::TWRITE, wait)?;
        let written = Decoder::new(&body).u32()?;
        if written as usize > data.len() {
            return Err(ProtocolError::WroteTooMuch.into());
        }
        Ok(written)
    }

    // ---- the virtqueue

    /// The next request tag (never NOTAG).
    fn tag(&mut self) -> u16 {
        let tag = self.next_tag;
        self.next_tag = if tag >= proto::NOTAG - 1 { 1 } else { tag + 1 };
        tag
    }

    /// One request and its reply: the T-message in the request buffer, a
    /// chain of it (readable) and the whole reply buffer (writable), then
    /// the reply checked ([`proto::check_reply`]). Returns the reply's body.
    fn rpc(
        &mut self,
        message: Vec<u8>,
        tag: u16,
        request_type: u8,
        wait: &mut impl Wait,
    ) -> Result<Vec<u8>, P9Error> {
        if self.stopped {
            return Err(P9Error::Stopped);
        }
        if message.len() > self.msize as usize {
            return Err(ProtocolError::RequestTooLarge.into());
        }
        self.request.write_bytes(0, &message);
        let chain = [
            Segment::readable(self.request.device_addr(), message.len() as u32),
            Segment::writable(self.reply.device_addr(), self.msize),
        ];
        let used =
            match device::request_and_wait(&mut self.transport, &mut *self.queue, &chain, wait) {
                Ok(used) => used,
                Err(RequestError::NotAdded(error)) => return Err(P9Error::Queue(error)),
                Err(RequestError::Queue(error)) => return Err(self.stop(P9Error::Queue(error))),
                Err(RequestError::TimedOut(timeout)) => {
                    return Err(self.stop(P9Error::TimedOut(timeout)))
                }
                Err(RequestError::WrongCompletion) => {
                    return Err(self.stop(P9Error::Queue(QueueError::DeviceBroken)))
                }
            };
        self.stats.requests += 1;
        log::trace!(
            "{}: 9p: message type {request_type} tag {tag}: {} bytes out, {} bytes of reply",
            self.transport.location(),
            message.len(),
            used.len
        );
        // `pop_used` checked `used.len <= msize` (the writable length).
        let mut reply = vec![0u8; used.len as usize];
        self.reply.read_bytes(0, &mut reply);
        match proto::check_reply(&reply, used.len, msg::reply(request_type), tag)? {
            Ok(body) => Ok(body.to_vec()),
            Err(code) => Err(P9Error::Server(Errno(code))),
        }
    }

    /// Resets the device and refuses further requests.
    fn stop(&mut self, error: P9Error) -> P9Error {
        log::warn!("{}: virtio-9p stopped: {error}", self.transport.location());
        if self.reset_or_keep() {
            self.queue.reset(|_| {});
        }
        self.stopped = true;
        self.mounted = false;
        self.fids.iter_mut().for_each(|f| *f = false);
        error
    }

    /// Resets the device; `false` if it never acknowledged, and may still
    /// read and write the ring and the messages: they are then kept for
    /// ever, never freed (`hal::DeviceVisible`), and the device is not
    /// reset again.
    fn reset_or_keep(&mut self) -> bool {
        let dead = self.queue.is_kept_forever();
        device::reset_unless_dead(&mut self.transport, "virtio-9p", dead, || {
            self.queue.keep_forever();
            self.request.keep_forever();
            self.reply.keep_forever();
        })
    }
}

/// Reads `tag_len` and `tag` from the configuration (with the generation
/// counter, so a tag is never half old, half new).
fn read_mount_tag<T: Transport + ?Sized>(transport: &mut T) -> Result<String, P9Error> {
    let bytes = read_config_consistent(transport, |fields| {
        let len = usize::from(fields.u16(0)?);
        if len > MAX_TAG_LEN {
            return Ok(None);
        }
        let mut tag = Vec::with_capacity(len);
        for i in 0..len {
            tag.push(fields.u8(2 + i)?);
        }
        Ok(Some(tag))
    })
    .map_err(P9Error::Transport)?
    .ok_or(P9Error::BadMountTag)?;
    String::from_utf8(bytes).map_err(|_| P9Error::BadMountTag)
}

impl<H: Hal, T: Transport> Drop for P9Device<H, T> {
    /// Resets the device before its buffers are freed, or keeps them.
    fn drop(&mut self) {
        self.reset_or_keep();
    }
}
