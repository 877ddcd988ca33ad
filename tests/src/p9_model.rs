//! A virtio-9p device model: a 9P2000.L server over an in-memory tree, for
//! testing `drivers::p9` on the host through the register-level transports.
//!
//! The device side of the requests queue is [`VqModel`] (rust-vmm's
//! `virtio-queue`). Each chain's readable part is one T-message; the model
//! answers it into the chain's writable part, as QEMU's `hw/9pfs` does, for
//! the messages the client uses (version, attach, walk, lopen, lcreate,
//! read, write, readdir, getattr, clunk). It keeps the server's fid table,
//! so a test can check the client clunked every fid it made
//! ([`P9Model::open_fids`]), and records what a correct client never does
//! ([`P9Model::violations`]): a message larger than msize, a Tread for more
//! than fits in msize, a reply buffer too small, a fid used before it
//! exists, a readable descriptor after a writable one.
//!
//! [`P9Behaviour`] makes it hostile: a reply whose size claims more than was
//! written, a wrong tag, an Rread with more data than asked for, an msize
//! above the offer, an error on one message type, or no answer at all.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use drivers::features;

use crate::models::virtio::VirtioCore;
use crate::vq_model::{Chain, VqModel};

/// How the server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum P9Behaviour {
    /// A correct server.
    Correct,
    /// Every reply's `size` claims 100 bytes more than written.
    SizeBeyondWritten,
    /// Every reply carries tag + 1.
    WrongTag,
    /// Rread's count claims one byte more than asked for.
    ReadTooMuch,
    /// Rversion answers an msize above the client's offer.
    MsizeAboveOffer,
    /// Messages of this type are answered with Rlerror(errno).
    ErrorOn(u8, u32),
    /// Takes requests and never answers.
    Stall,
}

enum Node {
    Dir(BTreeMap<String, u64>),
    File(Vec<u8>),
}

/// The model; see the module docs.
pub struct P9Model {
    /// How it answers.
    pub behaviour: P9Behaviour,
    /// The mount tag in its configuration.
    pub tag: String,
    /// The largest msize it accepts.
    pub max_msize: u32,
    queue: Option<VqModel>,
    nodes: Vec<Node>,
    fids: HashMap<u32, (u64, bool)>,
    msize: u32,
    /// Message types received, in order.
    pub received: Vec<u8>,
    /// Rules the client broke.
    pub violations: Vec<String>,
    isr: u8,
}

/// A shared handle.
pub type SharedP9Model = Rc<RefCell<P9Model>>;

const RLERROR: u8 = 7;
const ENOENT: u32 = 2;
const EBADF: u32 = 9;
const EEXIST: u32 = 17;
const ENOTDIR: u32 = 20;
const EISDIR: u32 = 21;
const EOPNOTSUPP: u32 = 95;

impl P9Model {
    /// An empty share called `tag`.
    pub fn new(tag: &str, behaviour: P9Behaviour) -> Self {
        Self {
            behaviour,
            tag: tag.into(),
            max_msize: 64 * 1024,
            queue: None,
            nodes: vec![Node::Dir(BTreeMap::new())],
            fids: HashMap::new(),
            msize: 0,
            received: Vec::new(),
            violations: Vec::new(),
            isr: 0,
        }
    }

    /// Wraps it for sharing.
    pub fn shared(self) -> SharedP9Model {
        Rc::new(RefCell::new(self))
    }

    /// What QEMU's virtio-9p offers on a modern transport.
    pub const MODERN_FEATURES: u64 =
        1 | features::RING_INDIRECT_DESC | features::RING_EVENT_IDX | features::VERSION_1;

    /// A register-level core for this device (type 9, one queue, the tag in
    /// its configuration).
    pub fn core(&self, features: u64) -> VirtioCore {
        let mut config = (self.tag.len() as u16).to_le_bytes().to_vec();
        config.extend_from_slice(self.tag.as_bytes());
        VirtioCore::new(9, features, 1, 128, config)
    }

    /// Makes directory `path` (and its parents).
    pub fn add_dir(&mut self, path: &str) -> u64 {
        let mut at = 0;
        for name in path.split('/').filter(|n| !n.is_empty()) {
            at = match self.child(at, name) {
                Some(ino) => ino,
                None => self.insert(at, name, Node::Dir(BTreeMap::new())),
            };
        }
        at
    }

    /// Makes file `path` holding `data` (and its directories).
    pub fn add_file(&mut self, path: &str, data: &[u8]) {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let parent = self.add_dir(dir);
        self.insert(parent, name, Node::File(data.to_vec()));
    }

    /// The contents of file `path`, if it exists.
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        let mut at = 0;
        for name in path.split('/').filter(|n| !n.is_empty()) {
            at = self.child(at, name)?;
        }
        match &self.nodes[at as usize] {
            Node::File(data) => Some(data.clone()),
            Node::Dir(_) => None,
        }
    }

    /// Fids the server holds.
    pub fn open_fids(&self) -> usize {
        self.fids.len()
    }

    fn child(&self, dir: u64, name: &str) -> Option<u64> {
        match &self.nodes[dir as usize] {
            Node::Dir(entries) => entries.get(name).copied(),
            Node::File(_) => None,
        }
    }

    fn insert(&mut self, dir: u64, name: &str, node: Node) -> u64 {
        let ino = self.nodes.len() as u64;
        self.nodes.push(node);
        if let Node::Dir(entries) = &mut self.nodes[dir as usize] {
            entries.insert(name.into(), ino);
        }
        ino
    }

    fn qid(&self, ino: u64) -> Vec<u8> {
        let kind = match self.nodes[ino as usize] {
            Node::Dir(_) => 0x80u8,
            Node::File(_) => 0,
        };
        let mut q = vec![kind];
        q.extend_from_slice(&0u32.to_le_bytes());
        q.extend_from_slice(&ino.to_le_bytes());
        q
    }

    /// Picks up the registers (see `RngModel::sync_with_core`).
    pub fn sync_with_core(&mut self, core: &mut VirtioCore) {
        if core.status & 4 == 0 {
            self.queue = None;
            core.notifications.clear();
            return;
        }
        if self.queue.is_none() {
            if let Some(q) = core.queues.first().filter(|q| q.is_live()) {
                let addrs = q.addresses();
                let event_idx = core.driver_features & features::RING_EVENT_IDX != 0;
                self.queue = Some(VqModel::new(addrs, event_idx));
            }
        }
        for queue in std::mem::take(&mut core.notifications) {
            match (queue, self.queue.as_mut()) {
                (0, Some(vq)) => vq.driver_published(true),
                _ => self
                    .violations
                    .push(format!("notify of queue {queue}, which is not set up")),
            }
        }
        core.isr |= std::mem::take(&mut self.isr);
    }

    /// Serves every available request.
    pub fn step(&mut self) {
        if self.behaviour == P9Behaviour::Stall {
            return;
        }
        let Some(mut vq) = self.queue.take() else {
            return;
        };
        if vq.is_asleep() {
            self.queue = Some(vq);
            return;
        }
        let mut completed = 0;
        for chain in vq.take_available() {
            let reply = self.serve(&chain);
            let room = chain.writable_len() as usize;
            if reply.len() > room {
                self.violations.push(format!(
                    "reply of {} bytes, but the client gave {room}",
                    reply.len()
                ));
                vq.complete_with_len(chain.head, 0);
            } else {
                vq.complete(&chain, &reply);
            }
            completed += 1;
        }
        if completed > 0 && vq.signal_used() {
            self.isr |= 1;
        }
        vq.try_sleep();
        self.queue = Some(vq);
    }

    fn serve(&mut self, chain: &Chain) -> Vec<u8> {
        let t = &chain.readable;
        if t.len() < 7 {
            self.violations.push(format!("a {}-byte message", t.len()));
            return reply(RLERROR, 0, &EOPNOTSUPP.to_le_bytes());
        }
        let size = u32::from_le_bytes([t[0], t[1], t[2], t[3]]) as usize;
        let kind = t[4];
        let tag = u16::from_le_bytes([t[5], t[6]]);
        self.received.push(kind);
        if size != t.len() {
            self.violations
                .push(format!("type {kind}: size {size}, {} bytes sent", t.len()));
        }
        if self.msize != 0 && size > self.msize as usize {
            self.violations.push(format!(
                "type {kind}: {size} bytes, above msize {}",
                self.msize
            ));
        }
        let mut body = Body(&t[7..]);
        let answer = match self.behaviour {
            P9Behaviour::ErrorOn(k, errno) if k == kind => Err(errno),
            _ => self.answer(kind, &mut body),
        };
        let mut r = match answer {
            Ok(fields) => reply(kind + 1, tag, &fields),
            Err(errno) => reply(RLERROR, tag, &errno.to_le_bytes()),
        };
        match self.behaviour {
            P9Behaviour::SizeBeyondWritten => {
                let size = r.len() as u32 + 100;
                r[..4].copy_from_slice(&size.to_le_bytes());
            }
            P9Behaviour::WrongTag => {
                r[5..7].copy_from_slice(&tag.wrapping_add(1).to_le_bytes());
            }
            _ => {}
        }
        r
    }

    fn fid(&mut self, fid: u32, kind: u8) -> Result<(u64, bool), u32> {
        match self.fids.get(&fid) {
            Some(&f) => Ok(f),
            None => {
                self.violations
                    .push(format!("type {kind}: fid {fid} does not exist"));
                Err(EBADF)
            }
        }
    }

    fn answer(&mut self, kind: u8, b: &mut Body<'_>) -> Result<Vec<u8>, u32> {
        let mut out = Vec::new();
        match kind {
            100 => {
                let offered = b.u32();
                let version = b.str();
                self.fids.clear();
                self.msize = offered.min(self.max_msize);
                let msize = if self.behaviour == P9Behaviour::MsizeAboveOffer {
                    offered + 4096
                } else {
                    self.msize
                };
                out.extend_from_slice(&msize.to_le_bytes());
                put_str(
                    &mut out,
                    if version == "9P2000.L" {
                        &version
                    } else {
                        "unknown"
                    },
                );
            }
            104 => {
                let fid = b.u32();
                self.fids.insert(fid, (0, false));
                out.extend(self.qid(0));
            }
            110 => {
                let (fid, newfid, n) = (b.u32(), b.u32(), b.u16());
                let (mut at, _) = self.fid(fid, kind)?;
                if newfid != fid && self.fids.contains_key(&newfid) {
                    self.violations
                        .push(format!("walk to fid {newfid}, which is in use"));
                    return Err(EBADF);
                }
                let mut qids = Vec::new();
                for i in 0..n {
                    let name = b.str();
                    match self.child(at, &name) {
                        Some(ino) => {
                            at = ino;
                            qids.push(self.qid(ino));
                        }
                        None if i == 0 => return Err(ENOENT),
                        None => break,
                    }
                }
                if qids.len() == usize::from(n) {
                    self.fids.insert(newfid, (at, false));
                }
                out.extend_from_slice(&(qids.len() as u16).to_le_bytes());
                qids.into_iter().for_each(|q| out.extend(q));
            }
            12 => {
                let (fid, flags) = (b.u32(), b.u32());
                let (ino, _) = self.fid(fid, kind)?;
                if let Node::File(data) = &mut self.nodes[ino as usize] {
                    if flags & 0o1000 != 0 {
                        data.clear();
                    }
                } else if flags & 3 != 0 {
                    return Err(EISDIR);
                }
                self.fids.insert(fid, (ino, true));
                out.extend(self.qid(ino));
                out.extend_from_slice(&0u32.to_le_bytes());
            }
            14 => {
                let (fid, name) = (b.u32(), b.str());
                let (dir, _) = self.fid(fid, kind)?;
                if !matches!(self.nodes[dir as usize], Node::Dir(_)) {
                    return Err(ENOTDIR);
                }
                if self.child(dir, &name).is_some() {
                    return Err(EEXIST);
                }
                let ino = self.insert(dir, &name, Node::File(Vec::new()));
                self.fids.insert(fid, (ino, true));
                out.extend(self.qid(ino));
                out.extend_from_slice(&0u32.to_le_bytes());
            }
            116 => {
                let (fid, offset, count) = (b.u32(), b.u64(), b.u32());
                if self.msize != 0 && count > self.msize - 11 {
                    self.violations.push(format!(
                        "Tread of {count} bytes does not fit msize {}",
                        self.msize
                    ));
                }
                let (ino, open) = self.fid(fid, kind)?;
                if !open {
                    self.violations.push("Tread on a fid not opened".into());
                }
                let Node::File(data) = &self.nodes[ino as usize] else {
                    return Err(EISDIR);
                };
                let start = (offset as usize).min(data.len());
                let end = (start + count as usize).min(data.len());
                let slice = data[start..end].to_vec();
                // ReadTooMuch claims one byte more than asked for (the
                // bytes themselves would not fit the client's buffer).
                let claimed = if self.behaviour == P9Behaviour::ReadTooMuch {
                    count + 1
                } else {
                    slice.len() as u32
                };
                out.extend_from_slice(&claimed.to_le_bytes());
                out.extend(slice);
            }
            118 => {
                let (fid, offset, count) = (b.u32(), b.u64(), b.u32());
                let data = b.take(count as usize).to_vec();
                let (ino, open) = self.fid(fid, kind)?;
                if !open {
                    self.violations.push("Twrite on a fid not opened".into());
                }
                let Node::File(file) = &mut self.nodes[ino as usize] else {
                    return Err(EISDIR);
                };
                let end = offset as usize + data.len();
                if file.len() < end {
                    file.resize(end, 0);
                }
                file[offset as usize..end].copy_from_slice(&data);
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            }
            40 => {
                let (fid, offset, count) = (b.u32(), b.u64(), b.u32());
                let (ino, open) = self.fid(fid, kind)?;
                if !open {
                    self.violations.push("Treaddir on a fid not opened".into());
                }
                let Node::Dir(entries) = &self.nodes[ino as usize] else {
                    return Err(ENOTDIR);
                };
                let mut names: Vec<(String, u64)> = vec![(".".into(), ino), ("..".into(), 0)];
                names.extend(entries.iter().map(|(n, &i)| (n.clone(), i)));
                let mut data = Vec::new();
                for (index, (name, child)) in names.iter().enumerate().skip(offset as usize) {
                    let mut entry = self.qid(*child);
                    entry.extend_from_slice(&(index as u64 + 1).to_le_bytes());
                    entry.push(0);
                    put_str(&mut entry, name);
                    if data.len() + entry.len() > count as usize {
                        break;
                    }
                    data.extend(entry);
                }
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                out.extend(data);
            }
            24 => {
                let fid = b.u32();
                let (ino, _) = self.fid(fid, kind)?;
                let (mode, size) = match &self.nodes[ino as usize] {
                    Node::Dir(_) => (0o40755u32, 4096u64),
                    Node::File(data) => (0o100644, data.len() as u64),
                };
                out.extend_from_slice(&0x7ffu64.to_le_bytes());
                out.extend(self.qid(ino));
                out.extend_from_slice(&mode.to_le_bytes());
                out.extend_from_slice(&[0; 8]); // uid, gid
                out.extend_from_slice(&1u64.to_le_bytes()); // nlink
                out.extend_from_slice(&0u64.to_le_bytes()); // rdev
                out.extend_from_slice(&size.to_le_bytes());
                out.extend_from_slice(&[0; 8 * 12]); // blksize .. data_version
            }
            120 => {
                let fid = b.u32();
                if self.fids.remove(&fid).is_none() {
                    self.violations
                        .push(format!("clunk of fid {fid}, which does not exist"));
                    return Err(EBADF);
                }
            }
            other => {
                self.violations
                    .push(format!("message type {other} not expected"));
                return Err(EOPNOTSUPP);
            }
        }
        Ok(out)
    }
}

fn reply(kind: u8, tag: u16, fields: &[u8]) -> Vec<u8> {
    let mut r = ((7 + fields.len()) as u32).to_le_bytes().to_vec();
    r.push(kind);
    r.extend_from_slice(&tag.to_le_bytes());
    r.extend_from_slice(fields);
    r
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A T-message body; a short message reads as zeroes (and the size check
/// in `serve` has recorded it).
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }

    fn u16(&mut self) -> u16 {
        let b = self.take(2);
        if b.len() < 2 {
            return 0;
        }
        u16::from_le_bytes([b[0], b[1]])
    }

    fn u32(&mut self) -> u32 {
        let b = self.take(4);
        if b.len() < 4 {
            return 0;
        }
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn u64(&mut self) -> u64 {
        let lo = u64::from(self.u32());
        lo | (u64::from(self.u32()) << 32)
    }

    fn str(&mut self) -> String {
        let n = usize::from(self.u16());
        String::from_utf8_lossy(self.take(n)).into_owned()
    }
}
