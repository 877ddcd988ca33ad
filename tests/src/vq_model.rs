//! A virtio device's side of a split virtqueue, built on rust-vmm's
//! `virtio-queue` and `vm-memory` crates: an implementation of virtio 1.2 §2.7
//! that shares no code with the driver in `drivers/src/queue`, so a test where
//! both agree says something about the spec, not about one author's reading
//! of it.
//!
//! ## Memory: device addresses, not CPU pointers
//!
//! The driver hands the device [`hal::DeviceAddr`]s from [`HostHal`], which
//! deliberately differ from CPU pointers. The model's guest memory therefore
//! maps each live HostHal range (DMA regions and shared bounce buffers) at its
//! *device* address: a [`GuestMemoryMmap`] whose regions are
//! [`MmapRegion::build_raw`] views of the CPU memory behind those addresses.
//! A driver that gave the device a CPU pointer, a stale address or a length
//! that runs past a buffer makes the model fail to read or write, and the
//! test fails. The map is rebuilt at each step because shared buffers come
//! and go between steps.
//!
//! ## What the model observes
//!
//! - Available-buffer notifications (driver to device, §2.7.10 / §2.7.7): the
//!   model knows whether it is *asleep* (it consumed everything and re-enabled
//!   notifications) and so whether a publish needed a notification. The test
//!   reports each publish with [`VqModel::driver_published`]; the model counts
//!   notifications needed, received, missed (asleep and not told: a hang in
//!   real life) and spurious (told while awake: a wasted exit).
//! - Used-buffer notifications (device to driver): after completing a batch,
//!   [`VqModel::signal_used`] asks `virtio-queue` whether `used_event`
//!   (EVENT_IDX) requests an interrupt, or checks VIRTQ_AVAIL_F_NO_INTERRUPT
//!   itself (which `virtio-queue` does not), and counts interrupts sent and
//!   suppressed.

use std::sync::Arc;

use drivers::queue::{QueueAddresses, Segment};
use hal::{DeviceAddr, Direction, Hal};
use virtio_queue::desc::split::Descriptor as ModelDescriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::host_hal::{HostHal, TEST_OWNER};

/// `PROT_READ | PROT_WRITE` and `MAP_PRIVATE | MAP_ANONYMOUS` on Linux: recorded
/// by `build_raw` for an existing mapping, never used to map anything.
const PROT_READ_WRITE: i32 = 0x3;
const MAP_PRIVATE_ANONYMOUS: i32 = 0x22;

const VIRTQ_DESC_F_INDIRECT: u16 = 4;
const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Guest memory that maps every live HostHal range at its device address.
pub fn device_memory() -> GuestMemoryMmap {
    let regions: Vec<Arc<GuestRegionMmap>> = HostHal::device_ranges()
        .into_iter()
        .map(|(device_addr, cpu, len)| {
            // SAFETY: `cpu..cpu+len` is a live HostHal allocation (page-aligned,
            // as build_raw requires). The model only touches ranges the
            // driver under test handed it, which stay alive while it runs.
            let mapping = unsafe {
                MmapRegion::<()>::build_raw(cpu, len, PROT_READ_WRITE, MAP_PRIVATE_ANONYMOUS)
            }
            .expect("HostHal ranges are page-aligned");
            Arc::new(
                GuestRegionMmap::new(mapping, GuestAddress(device_addr))
                    .expect("device range fits the address space"),
            )
        })
        .collect();
    GuestMemoryMmap::from_arc_regions(regions).expect("HostHal ranges are sorted and disjoint")
}

/// One chain the device took from the available ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The head descriptor's index: what goes back in the used ring.
    pub head: u16,
    /// The head descriptor pointed at an indirect table.
    pub indirect: bool,
    /// Number of buffers in the chain (table entries for an indirect one).
    pub descriptors: usize,
    /// The device-readable buffers' contents, concatenated.
    pub readable: Vec<u8>,
    /// The device-writable buffers: (device address, length), in order.
    pub writable: Vec<(DeviceAddr, u32)>,
}

impl Chain {
    /// Total bytes the device may write.
    pub fn writable_len(&self) -> u32 {
        self.writable.iter().map(|&(_, len)| len).sum()
    }
}

/// Counters the model keeps; see the module documentation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelStats {
    /// Chains taken from the available ring.
    pub chains: u64,
    /// Of those, through an indirect table.
    pub indirect_chains: u64,
    /// Publishes that found the device asleep (a notification was needed).
    pub notifications_needed: u64,
    /// Notifications the driver sent.
    pub notifications_received: u64,
    /// Needed but not sent: the device would sleep with work pending.
    pub notifications_missed: u64,
    /// Sent while the device was awake.
    pub notifications_spurious: u64,
    /// Used-buffer notifications (interrupts) the device sent.
    pub interrupts_sent: u64,
    /// Batches after which the driver's suppression state said "no interrupt".
    pub interrupts_suppressed: u64,
}

/// The device side of one split queue. See the module documentation.
pub struct VqModel {
    queue: Queue,
    addrs: QueueAddresses,
    event_idx: bool,
    asleep: bool,
    /// What the model saw and did.
    pub stats: ModelStats,
}

impl VqModel {
    /// A device that the driver has just given `addrs` (as a transport would),
    /// with VIRTIO_F_RING_EVENT_IDX on or off. Panics if `virtio-queue` finds
    /// the addresses misaligned or the rings unreachable: that is a driver bug.
    pub fn new(addrs: QueueAddresses, event_idx: bool) -> Self {
        let mut queue = Queue::new(addrs.size).expect("queue size is a power of two <= 32768");
        queue.set_size(addrs.size);
        queue
            .try_set_desc_table_address(GuestAddress(addrs.desc))
            .expect("descriptor table 16-byte aligned");
        queue
            .try_set_avail_ring_address(GuestAddress(addrs.driver))
            .expect("available ring 2-byte aligned");
        queue
            .try_set_used_ring_address(GuestAddress(addrs.device))
            .expect("used ring 4-byte aligned");
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        assert!(
            queue.is_valid(&device_memory()),
            "the rings must lie inside memory the driver gave the device"
        );
        Self {
            queue,
            addrs,
            event_idx,
            // A fresh device waits for its first notification: flags 0 and
            // avail_event 0 (zeroed memory) both ask for one.
            asleep: true,
            stats: ModelStats::default(),
        }
    }

    /// The addresses the model was given.
    pub fn addresses(&self) -> QueueAddresses {
        self.addrs
    }

    /// `true` while the device waits for a notification.
    pub fn is_asleep(&self) -> bool {
        self.asleep
    }

    /// The device's next available-ring index (how many chains it has taken, mod 2^16).
    pub fn next_avail(&self) -> u16 {
        self.queue.next_avail()
    }

    /// The device's next used-ring index (how many it has returned, mod 2^16).
    pub fn next_used(&self) -> u16 {
        self.queue.next_used()
    }

    /// Records one `publish` by the driver and whether it notified. Call it
    /// right after each `publish` that returned `Notify` or `Suppressed`.
    pub fn driver_published(&mut self, notified: bool) {
        let needed = self.asleep;
        if needed {
            self.stats.notifications_needed += 1;
            if !notified {
                self.stats.notifications_missed += 1;
            }
        }
        if notified {
            self.stats.notifications_received += 1;
            if !needed {
                self.stats.notifications_spurious += 1;
            }
            self.wake();
        }
    }

    /// The device was notified: it stops asking for notifications while it works.
    fn wake(&mut self) {
        self.asleep = false;
        let mem = device_memory();
        self.queue
            .disable_notification(&mem)
            .expect("used ring reachable");
    }

    /// Takes every chain the driver has published, reading the readable data
    /// and noting the writable buffers. Follows indirect tables.
    pub fn take_available(&mut self) -> Vec<Chain> {
        let mem = device_memory();
        let desc_table = self.addrs.desc;
        let mut chains = Vec::new();
        let mut iter = self.queue.iter(&mem).expect("queue ready");
        for chain in &mut iter {
            let head = chain.head_index();
            let head_desc: ModelDescriptor = mem
                .read_obj(GuestAddress(desc_table + 16 * head as u64))
                .expect("descriptor table reachable");
            let indirect = head_desc.flags() & VIRTQ_DESC_F_INDIRECT != 0;
            let mut taken = Chain {
                head,
                indirect,
                descriptors: 0,
                readable: Vec::new(),
                writable: Vec::new(),
            };
            for desc in chain {
                taken.descriptors += 1;
                if desc.is_write_only() {
                    taken.writable.push((desc.addr().0, desc.len()));
                } else {
                    assert!(
                        taken.writable.is_empty(),
                        "device-readable descriptor after a writable one in chain {head}"
                    );
                    let mut buf = vec![0u8; desc.len() as usize];
                    mem.read_slice(&mut buf, desc.addr()).unwrap_or_else(|e| {
                        panic!(
                            "chain {head}: readable buffer {:#x}+{} unreachable: {e}",
                            desc.addr().0,
                            desc.len()
                        )
                    });
                    taken.readable.extend_from_slice(&buf);
                }
            }
            assert!(taken.descriptors > 0, "chain {head} is empty or malformed");
            self.stats.chains += 1;
            if indirect {
                self.stats.indirect_chains += 1;
            }
            chains.push(taken);
        }
        chains
    }

    /// Writes `data` into the chain's writable buffers (it must fit) and puts
    /// the chain in the used ring with `len = data.len()`.
    pub fn complete(&mut self, chain: &Chain, data: &[u8]) {
        self.complete_reporting(chain, data, data.len() as u32);
    }

    /// Like [`VqModel::complete`], but reports `reported` as the used length
    /// (a device that under- or over-reports what it wrote).
    pub fn complete_reporting(&mut self, chain: &Chain, data: &[u8], reported: u32) {
        assert!(
            data.len() as u64 <= chain.writable_len() as u64,
            "response larger than the buffers"
        );
        let mem = device_memory();
        let mut rest = data;
        for &(addr, len) in &chain.writable {
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(len as usize);
            mem.write_slice(&rest[..n], GuestAddress(addr))
                .unwrap_or_else(|e| {
                    panic!(
                        "chain {}: writable buffer {addr:#x}+{len} unreachable: {e}",
                        chain.head
                    )
                });
            rest = &rest[n..];
        }
        self.complete_with_len(chain.head, reported);
    }

    /// Puts `head` in the used ring with length `len` (no data written).
    pub fn complete_with_len(&mut self, head: u16, len: u32) {
        let mem = device_memory();
        self.queue
            .add_used(&mem, head, len)
            .expect("used ring reachable");
    }

    /// After a batch of completions: would the device interrupt the driver?
    /// Counts the answer.
    pub fn signal_used(&mut self) -> bool {
        let mem = device_memory();
        // Always ask virtio-queue: it also resets its count of entries added
        // since the last signal, which the EVENT_IDX test needs.
        let by_event = self
            .queue
            .needs_notification(&mem)
            .expect("avail ring reachable");
        let interrupt = if self.event_idx {
            by_event
        } else {
            let flags: u16 = mem
                .read_obj(GuestAddress(self.addrs.driver))
                .expect("avail ring reachable");
            flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0
        };
        if interrupt {
            self.stats.interrupts_sent += 1;
        } else {
            self.stats.interrupts_suppressed += 1;
        }
        interrupt
    }

    /// The device has taken everything and wants to sleep: it re-enables
    /// notifications and checks once more for work (the device's half of the
    /// race-free handshake). Returns `true` if it went to sleep; `false` if
    /// work arrived meanwhile, in which case it keeps notifications off and
    /// stays awake.
    pub fn try_sleep(&mut self) -> bool {
        let mem = device_memory();
        let more = self
            .queue
            .enable_notification(&mem)
            .expect("rings reachable");
        if more {
            self.queue
                .disable_notification(&mem)
                .expect("used ring reachable");
            false
        } else {
            self.asleep = true;
            true
        }
    }

    /// The device's current `avail_event` (EVENT_IDX) as the driver reads it.
    pub fn avail_event(&self) -> u16 {
        let mem = device_memory();
        let offset = 4 + 8 * self.addrs.size as u64;
        mem.read_obj(GuestAddress(self.addrs.device + offset))
            .expect("used ring reachable")
    }

    /// The driver's current `used_event` (EVENT_IDX).
    pub fn used_event(&self) -> u16 {
        let mem = device_memory();
        let offset = 4 + 2 * self.addrs.size as u64;
        mem.read_obj(GuestAddress(self.addrs.driver + offset))
            .expect("avail ring reachable")
    }

    /// The driver's `avail.idx` as published.
    pub fn avail_idx(&self) -> u16 {
        let mem = device_memory();
        mem.read_obj(GuestAddress(self.addrs.driver + 2))
            .expect("avail ring reachable")
    }
}

/// A driver buffer shared with the device through [`HostHal::share`] for one
/// request, unshared when the request is done ([`SharedBuffer::finish`]) or
/// when dropped. HostHal bounce-copies, so the contents the CPU sees change
/// only at `finish`.
pub struct SharedBuffer {
    data: Box<[u8]>,
    addr: DeviceAddr,
    direction: Direction,
    shared: bool,
}

impl SharedBuffer {
    /// Shares `data` for the device to read (`ToDevice`) or write (`FromDevice`).
    pub fn new(data: Vec<u8>, direction: Direction) -> Self {
        let mut data = data.into_boxed_slice();
        let ptr = std::ptr::NonNull::from(&mut data[..]);
        // SAFETY: the boxed slice lives on the heap, so it stays put while
        // `self` moves, and nothing touches it until `finish`/drop unshares it.
        let addr = unsafe { HostHal::share(TEST_OWNER, ptr, direction) }.expect("share");
        Self {
            data,
            addr,
            direction,
            shared: true,
        }
    }

    /// A buffer of `len` bytes for the device to fill.
    pub fn for_device(len: usize) -> Self {
        Self::new(vec![0; len], Direction::FromDevice)
    }

    /// The device address.
    pub fn addr(&self) -> DeviceAddr {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> u32 {
        self.data.len() as u32
    }

    /// Never true: `HostHal::share` refuses empty buffers.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The segment describing this buffer: readable by the device for
    /// `ToDevice`, writable otherwise.
    pub fn segment(&self) -> Segment {
        Segment {
            addr: self.addr,
            len: self.len(),
            device_writable: self.direction != Direction::ToDevice,
        }
    }

    /// Ends the share and returns the contents (what the device wrote, for `FromDevice`).
    pub fn finish(mut self) -> Vec<u8> {
        self.unshare();
        std::mem::take(&mut self.data).into_vec()
    }

    fn unshare(&mut self) {
        if self.shared {
            self.shared = false;
            let ptr = std::ptr::NonNull::from(&mut self.data[..]);
            // SAFETY: the same buffer, address and direction as the share.
            unsafe { HostHal::unshare(TEST_OWNER, self.addr, ptr, self.direction) };
        }
    }
}

impl Drop for SharedBuffer {
    fn drop(&mut self) {
        self.unshare();
    }
}

/// A small deterministic random number generator (xorshift64*), so tests that
/// shuffle completions are reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}
