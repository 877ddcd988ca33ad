//! Fuzz targets `split_ring` and `packed_ring`: a driver keeps requests in
//! flight while a hostile device writes whatever the bytes say into the
//! device-writable parts of the ring (virtio 1.2 §2.7.8 used ring,
//! §2.7.10 `avail_event`, §2.7.7 used flags; §2.8.6 used descriptors and
//! wrap counters, §2.8.10 the device event suppression area).
//!
//! Both layouts run through the one [`Ring`] interface. The harness keeps
//! its own list of the requests it added, with each one's writable byte
//! count, and checks after every step that the queue agrees: a completion
//! names a request in flight (once), its length fits, `in_flight` matches,
//! no descriptor goes missing; after a final [`Ring::reset`] every request
//! is handed back, every descriptor is free, and once dropped nothing leaks.
//! Now and then, and at the end, the queue is also drawn as the queue view does
//! ([`drivers::view`]: `Ring::snapshot`, text and JSON), over whatever the
//! device wrote.

use std::collections::BTreeMap;

use drivers::queue::{
    PackedQueue, QueueConfig, QueueError, Ring, RingLayout, Segment, SplitQueue, Token,
};
use drivers::transport::DeviceType;
use drivers::view::{json, text, DeviceRecord, QueueRecord};
use hal::{DmaRegion, PAGE_SIZE};

use super::Input;
use crate::host_hal::{HostHal, TEST_OWNER};
use crate::hostile::HostileDevice;
use crate::hostile_packed::HostilePackedDevice;

/// The device side of one layout: one hostile action per call.
trait HostileSide {
    /// Does what `op` (and further bytes) say.
    fn act(&mut self, op: u8, input: &mut Input);
}

/// A length the device may claim: mostly small, sometimes anything.
fn claimed_len(input: &mut Input) -> u32 {
    match input.u8() {
        b @ 0..=199 => u32::from(b),
        200..=239 => input.u32(),
        _ => u32::MAX,
    }
}

struct SplitSide {
    device: HostileDevice,
    /// Heads a correct device would have read and not yet returned.
    seen: Vec<u16>,
}

impl HostileSide for SplitSide {
    fn act(&mut self, op: u8, input: &mut Input) {
        match op % 6 {
            0 => {
                self.seen.extend(self.device.available());
                if !self.seen.is_empty() {
                    let at = usize::from(input.u8()) % self.seen.len();
                    let head = self.seen.swap_remove(at);
                    let len = claimed_len(input);
                    self.device.push_used(u32::from(head), len);
                }
            }
            1 => {
                let id = if input.bool() {
                    u32::from(input.u8())
                } else {
                    input.u32()
                };
                let len = claimed_len(input);
                self.device.push_used(id, len);
            }
            2 => {
                let (slot, id, len) = (input.u16(), u32::from(input.u8()), claimed_len(input));
                self.device.write_used_entry(slot, id, len);
            }
            3 => {
                let idx = if input.bool() {
                    self.device
                        .used_idx()
                        .wrapping_add(u16::from(input.u8()))
                        .wrapping_sub(128)
                } else {
                    input.u16()
                };
                self.device.set_used_idx(idx);
            }
            4 => self.device.set_used_flags(input.u16()),
            _ => self.device.set_avail_event(input.u16()),
        }
    }
}

struct PackedSide {
    device: HostilePackedDevice,
    /// The queue size (slots written directly stay inside the ring).
    size: u16,
    /// Buffer ids a correct device would have read and not yet returned.
    seen: Vec<u16>,
}

impl HostileSide for PackedSide {
    fn act(&mut self, op: u8, input: &mut Input) {
        match op % 6 {
            0 => {
                self.seen
                    .extend(self.device.available().into_iter().map(|(id, _)| id));
                if !self.seen.is_empty() {
                    let at = usize::from(input.u8()) % self.seen.len();
                    let id = self.seen.swap_remove(at);
                    let len = claimed_len(input);
                    self.device.push_used(id, len);
                }
            }
            1 => {
                let id = if input.bool() {
                    u16::from(input.u8())
                } else {
                    input.u16()
                };
                let len = claimed_len(input);
                self.device.push_used(id, len);
            }
            2 => {
                let (id, len, skip) = (u16::from(input.u8()), claimed_len(input), input.u16());
                self.device.push_used_skipping(id, len, skip);
            }
            3 => {
                let (id, len) = (u16::from(input.u8()), claimed_len(input));
                self.device.push_used_without_write_flag(id, len);
            }
            4 => {
                let (slot, id, len, flags) =
                    (input.u16(), input.u16(), claimed_len(input), input.u16());
                let slot = slot % self.size;
                self.device.write_used_at(slot, id, len, flags);
            }
            _ => self.device.set_device_event(input.u16(), input.u16()),
        }
    }
}

/// The requests the harness added and has not got back: token, writable bytes.
type Outstanding = BTreeMap<Token, u32>;

/// Adds one request shaped by the input; tracks it if the queue took it.
fn add_request<R: Ring>(
    queue: &mut R,
    memory: &DmaRegion<HostHal>,
    input: &mut Input,
    outstanding: &mut Outstanding,
) {
    let shape = input.u8();
    let (readable, writable) = (usize::from(shape & 3), usize::from((shape >> 2) & 7));
    let base = memory.device_addr();
    let mut segments = Vec::new();
    for i in 0..readable + writable {
        // Zero lengths now and then, to reach the shape checks.
        let len = u32::from(input.u8()) * 8;
        let addr = base + 64 * i as u64;
        segments.push(Segment {
            addr,
            len,
            device_writable: i >= readable,
        });
    }
    if shape & 0x20 != 0 && segments.len() >= 2 {
        // A readable segment after a writable one: must be refused.
        let last = segments.len() - 1;
        segments[last].device_writable = false;
        segments[0].device_writable = true;
    }
    let before = (queue.in_flight(), queue.free_descriptors());
    match queue.add(&segments) {
        Ok(token) => {
            assert!(
                token.index() < usize::from(queue.size()),
                "token {token} beyond the queue"
            );
            let writable: u32 = segments
                .iter()
                .filter(|s| s.device_writable)
                .map(|s| s.len)
                .sum();
            assert!(
                outstanding.insert(token, writable).is_none(),
                "add returned {token}, which is still in flight"
            );
        }
        Err(_) => assert_eq!(
            before,
            (queue.in_flight(), queue.free_descriptors()),
            "a refused add changed the queue"
        ),
    }
}

/// Takes one completion and checks it against what is in flight.
fn pop<R: Ring>(queue: &mut R, outstanding: &mut Outstanding) {
    match queue.pop_used() {
        Ok(Some(used)) => {
            let Some(writable) = outstanding.remove(&used.token) else {
                panic!("completion for {}, which is not in flight", used.token);
            };
            assert!(
                used.len <= writable,
                "{} completed with {} bytes, its writable segments hold {writable}",
                used.token,
                used.len
            );
        }
        Err(QueueError::UsedLengthTooLong { token, len, max }) => {
            let Some(writable) = outstanding.remove(&token) else {
                panic!("too-long completion for {token}, which is not in flight");
            };
            assert_eq!(max, writable, "the reported maximum for {token}");
            assert!(len > max);
        }
        Ok(None) | Err(_) => {}
    }
}

/// Draws the queue as the shell and the HTTP view do (`drivers::view`):
/// its snapshot reads what the device wrote without trusting it, and the
/// text and JSON renderings must not panic on whatever that is.
fn view<R: Ring>(queue: &R) {
    let mut device = DeviceRecord::new("fuzz", DeviceType::Block, "fuzz");
    device.ring = Some(queue.kind());
    device
        .queues
        .push(QueueRecord::capture("fuzzq", queue, Some(0)));
    let mut out = String::new();
    let queue = &device.queues[0];
    assert!(usize::from(queue.snapshot.descriptors_shown) <= usize::from(queue.snapshot.size));
    text::write_queue_line(&mut out, &device, queue).expect("writing to a String");
    text::write_ring(&mut out, &device, queue).expect("writing to a String");
    json::write_document(&mut out, 0, core::slice::from_ref(&device)).expect("writing to a String");
}

/// Runs the operations the input describes on `queue` with `side` as its
/// device, then resets, checks that everything came back, and drops it all.
fn drive<R: Ring, S: HostileSide>(
    mut queue: R,
    make_side: impl Fn(&R) -> S,
    input: &mut Input,
    target: &str,
) {
    let memory = DmaRegion::<HostHal>::new(TEST_OWNER, PAGE_SIZE).expect("one page");
    let size = queue.size();
    let mut side = make_side(&queue);
    let mut outstanding = Outstanding::new();
    let mut steps = 0;
    while !input.is_empty() && steps < 4096 {
        steps += 1;
        let op = input.u8();
        match op % 12 {
            0 | 1 => add_request(&mut queue, &memory, input, &mut outstanding),
            2 => {
                let _ = queue.publish();
            }
            3 | 4 => pop(&mut queue, &mut outstanding),
            5 => queue.disable_interrupts(),
            6 => {
                let _ = queue.enable_interrupts();
            }
            // Rarely (drawing costs more than the rest of a step), and once at the end.
            11 if op >= 0xf0 => view(&queue),
            7 if op & 0xf0 == 0x70 => {
                // The device was reset: everything in flight comes back.
                queue.reset(|token| {
                    assert!(
                        outstanding.remove(&token).is_some(),
                        "reset abandoned {token}, which is not in flight"
                    );
                });
                assert!(outstanding.is_empty(), "reset kept {outstanding:?}");
                side = make_side(&queue);
            }
            _ => side.act(input.u8(), input),
        }
        assert_eq!(
            usize::from(queue.in_flight()),
            outstanding.len(),
            "in_flight disagrees with the requests added and not completed"
        );
        assert!(queue.free_descriptors() <= size);
        if outstanding.is_empty() {
            assert_eq!(queue.free_descriptors(), size, "descriptors lost");
        }
    }
    view(&queue);
    queue.reset(|token| {
        assert!(
            outstanding.remove(&token).is_some(),
            "reset abandoned {token}, which is not in flight"
        );
    });
    assert!(outstanding.is_empty(), "never handed back: {outstanding:?}");
    assert_eq!(queue.free_descriptors(), size, "descriptors lost");
    assert!(!queue.is_broken(), "reset must mend the queue");
    drop(queue);
    drop(memory);
    super::end_without_leaks(target);
}

/// The split ring against a hostile device (see the module documentation).
pub fn split_ring(data: &[u8]) {
    super::begin();
    let mut input = Input::new(data);
    let size = input.pick(&[1u16, 2, 4, 8, 16, 32]);
    let layout = match input.u8() % 4 {
        0 => RingLayout::Contiguous { align: 4096 },
        1 => RingLayout::Contiguous { align: 4 },
        _ => RingLayout::Separate,
    };
    let indirect = input.pick(&[0u16, 0, 2, 4]).min(size);
    let config = QueueConfig::new(0, size, layout)
        .with_event_idx(input.bool())
        .with_indirect(indirect);
    let queue = SplitQueue::<HostHal>::new(config).expect("a valid configuration");
    drive(
        queue,
        |q| SplitSide {
            device: HostileDevice::new(q.addresses()),
            seen: Vec::new(),
        },
        &mut input,
        "split_ring",
    );
}

/// The packed ring against a hostile device (see the module documentation).
pub fn packed_ring(data: &[u8]) {
    super::begin();
    let mut input = Input::new(data);
    let size = input.pick(&[1u16, 2, 3, 4, 5, 8, 16, 31]);
    let indirect = input.pick(&[0u16, 0, 2, 4]).min(size);
    let config = QueueConfig::new(0, size, RingLayout::Separate)
        .with_event_idx(input.bool())
        .with_indirect(indirect);
    let queue = PackedQueue::<HostHal>::new(config).expect("a valid configuration");
    drive(
        queue,
        |q| PackedSide {
            device: HostilePackedDevice::new(q.addresses()),
            size: q.size(),
            seen: Vec::new(),
        },
        &mut input,
        "packed_ring",
    );
}
