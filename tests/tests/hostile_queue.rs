//! The split queue against a hostile device (`tests::hostile`): every kind of
//! garbage in the used ring gives its typed error, never a panic, and never
//! leaks a descriptor. The policy under test (drivers/src/queue/split.rs):
//! bad *entries* are reported and skipped, bad *indices* break the queue
//! until `reset`.

use std::collections::BTreeSet;

use drivers::queue::{QueueConfig, QueueError, Ring, RingLayout, Segment, SplitQueue, Token};
use hal::{DmaRegion, PAGE_SIZE};
use tests::host_hal::{HostHal, TEST_OWNER};
use tests::hostile::HostileDevice;
use tests::vq_model::Rng;

type Queue = SplitQueue<HostHal>;

const SIZE: u16 = 8;

struct Bench {
    queue: Queue,
    device: HostileDevice,
    memory: DmaRegion<HostHal>,
}

impl Bench {
    fn new(indirect: u16) -> Self {
        let config = QueueConfig::new(0, SIZE, RingLayout::Separate)
            .with_event_idx(true)
            .with_indirect(indirect);
        let queue = Queue::new(config).unwrap();
        let device = HostileDevice::new(queue.addresses());
        let memory = DmaRegion::new(TEST_OWNER, PAGE_SIZE).unwrap();
        Self {
            queue,
            device,
            memory,
        }
    }

    /// Adds and publishes a request: one 8-byte readable segment, then
    /// `writable` 16-byte writable ones. Returns its token.
    fn request(&mut self, writable: usize) -> Token {
        let base = self.memory.device_addr();
        let mut segments = vec![Segment::readable(base, 8)];
        segments.extend((0..writable as u64).map(|i| Segment::writable(base + 64 + 16 * i, 16)));
        let token = self.queue.add(&segments).unwrap();
        let _ = self.queue.publish();
        token
    }

    fn head(token: Token) -> u32 {
        token.index() as u32
    }

    fn pop(&mut self) -> Result<Option<(usize, u32)>, QueueError> {
        self.queue
            .pop_used()
            .map(|used| used.map(|u| (u.token.index(), u.len)))
    }

    fn assert_idle_and_whole(&self) {
        assert_eq!(self.queue.free_descriptors(), SIZE, "descriptors leaked");
        assert_eq!(self.queue.in_flight(), 0);
        assert!(!self.queue.is_broken());
    }
}

#[test]
fn an_out_of_range_id_is_rejected_and_skipped() {
    let mut b = Bench::new(0);
    let a = b.request(1);
    assert_eq!(b.device.available(), [a.index() as u16]);
    b.device.push_used(SIZE as u32, 0);
    b.device.push_used(u32::MAX, 0);
    assert_eq!(
        b.pop(),
        Err(QueueError::UsedIdOutOfRange { id: 8, size: SIZE })
    );
    assert_eq!(
        b.pop(),
        Err(QueueError::UsedIdOutOfRange {
            id: u32::MAX,
            size: SIZE
        })
    );
    b.device.push_used(Bench::head(a), 16);
    assert_eq!(b.pop(), Ok(Some((a.index(), 16))));
    assert_eq!(b.pop(), Ok(None));
    b.assert_idle_and_whole();
    let c = b.queue.counters();
    assert_eq!((c.device_errors, c.completions), (2, 1));
}

#[test]
fn the_id_of_a_free_descriptor_is_rejected() {
    let mut b = Bench::new(0);
    let a = b.request(1); // descriptors 0 and 1
    b.device.push_used(5, 0);
    assert_eq!(b.pop(), Err(QueueError::UsedIdNotInFlight { id: 5 }));
    b.device.push_used(Bench::head(a), 3);
    assert_eq!(b.pop(), Ok(Some((a.index(), 3))));
    b.assert_idle_and_whole();
}

#[test]
fn the_id_of_a_descriptor_inside_a_chain_is_rejected() {
    let mut b = Bench::new(0);
    let a = b.request(2); // head 0, body 1 and 2
    assert_eq!(a.index(), 0);
    b.device.push_used(1, 0);
    b.device.push_used(2, 0);
    assert_eq!(b.pop(), Err(QueueError::UsedIdNotHead { id: 1 }));
    assert_eq!(b.pop(), Err(QueueError::UsedIdNotHead { id: 2 }));
    assert_eq!(
        b.queue.in_flight(),
        1,
        "the real chain is still the device's"
    );
    assert_eq!(b.queue.free_descriptors(), SIZE - 3);
    b.device.push_used(0, 32);
    assert_eq!(b.pop(), Ok(Some((0, 32))));
    b.assert_idle_and_whole();
}

#[test]
fn a_duplicate_completion_is_rejected() {
    let mut b = Bench::new(0);
    let a = b.request(1);
    let other = b.request(1);
    b.device.push_used(Bench::head(a), 16);
    b.device.push_used(Bench::head(a), 16);
    assert_eq!(b.pop(), Ok(Some((a.index(), 16))));
    assert_eq!(
        b.pop(),
        Err(QueueError::UsedIdNotInFlight {
            id: a.index() as u16
        })
    );
    b.device.push_used(Bench::head(other), 16);
    assert_eq!(b.pop(), Ok(Some((other.index(), 16))));
    b.assert_idle_and_whole();
}

#[test]
fn a_length_beyond_the_writable_buffers_is_an_error_that_still_frees_the_chain() {
    let mut b = Bench::new(4);
    let direct = b.request(1); // 16 writable bytes
    let readonly = b.request(0); // nothing writable
    let indirect = b.request(3); // 48 writable bytes, through a table
    assert_eq!(b.queue.counters().indirect, 1);
    b.device.push_used(Bench::head(direct), 17);
    b.device.push_used(Bench::head(readonly), 1);
    b.device.push_used(Bench::head(indirect), 49);
    assert_eq!(
        b.pop(),
        Err(QueueError::UsedLengthTooLong {
            token: direct,
            len: 17,
            max: 16
        })
    );
    assert_eq!(
        b.pop(),
        Err(QueueError::UsedLengthTooLong {
            token: readonly,
            len: 1,
            max: 0
        })
    );
    assert_eq!(
        b.pop(),
        Err(QueueError::UsedLengthTooLong {
            token: indirect,
            len: 49,
            max: 48
        })
    );
    b.assert_idle_and_whole();

    // The exact maximum is fine.
    let again = b.request(3);
    b.device.push_used(Bench::head(again), 48);
    assert_eq!(b.pop(), Ok(Some((again.index(), 48))));
    b.assert_idle_and_whole();
}

#[test]
fn a_used_index_more_than_the_queue_size_ahead_breaks_the_queue_until_reset() {
    let mut b = Bench::new(0);
    let a = b.request(1);
    let c = b.request(1);
    b.device.set_used_idx(SIZE + 1);
    assert_eq!(
        b.pop(),
        Err(QueueError::UsedIndexTooFar {
            consumed: 0,
            device_idx: 9,
            size: SIZE
        })
    );
    assert!(b.queue.is_broken());
    assert_eq!(b.pop(), Err(QueueError::DeviceBroken));
    assert_eq!(
        b.queue.add(&[Segment::readable(b.memory.device_addr(), 1)]),
        Err(QueueError::DeviceBroken)
    );
    assert!(
        !b.queue.enable_interrupts(),
        "a broken queue reports nothing pending"
    );

    let mut abandoned = Vec::new();
    b.queue.reset(|t| abandoned.push(t));
    abandoned.sort();
    assert_eq!(abandoned, [a, c]);
    b.assert_idle_and_whole();

    // After the (simulated) device reset the queue works again.
    b.device = HostileDevice::new(b.queue.addresses());
    let fresh = b.request(1);
    assert_eq!(b.device.available(), [fresh.index() as u16]);
    b.device.push_used(Bench::head(fresh), 16);
    assert_eq!(b.pop(), Ok(Some((fresh.index(), 16))));
    b.assert_idle_and_whole();
}

#[test]
fn exactly_a_full_ring_of_completions_is_accepted() {
    let mut b = Bench::new(0);
    let tokens: Vec<Token> = (0..SIZE).map(|_| b.request(0)).collect();
    for &t in tokens.iter().rev() {
        b.device.push_used(Bench::head(t), 0);
    }
    for &t in tokens.iter().rev() {
        assert_eq!(b.pop(), Ok(Some((t.index(), 0))));
    }
    b.assert_idle_and_whole();
}

#[test]
fn a_used_index_moving_backwards_breaks_the_queue() {
    for back_to in [1u16, 0, 65535] {
        let mut b = Bench::new(0);
        let a = b.request(1);
        let c = b.request(1);
        let _d = b.request(1);
        b.device.push_used(Bench::head(a), 0);
        b.device.push_used(Bench::head(c), 0);
        assert_eq!(b.pop(), Ok(Some((a.index(), 0)))); // saw used.idx = 2, consumed 1
        b.device.set_used_idx(back_to);
        assert_eq!(
            b.pop(),
            Err(QueueError::UsedIndexBackward {
                seen: 2,
                device_idx: back_to
            }),
            "used.idx 2 -> {back_to}"
        );
        assert!(b.queue.is_broken());
        let mut abandoned = 0;
        b.queue.reset(|_| abandoned += 1);
        assert_eq!(abandoned, 2, "c and d were still in flight");
        b.assert_idle_and_whole();
    }
}

/// Random garbage in every device-writable field, many rounds: only the
/// documented errors, every token completed at most once, and after a reset
/// every descriptor is back.
#[test]
fn random_garbage_never_panics_or_leaks() {
    let mut b = Bench::new(4);
    let mut rng = Rng::new(0xbad_d0e5);
    let mut seen_errors = BTreeSet::new();
    for _round in 0..300 {
        let mut in_flight = BTreeSet::new();
        for _ in 0..1 + rng.below(6) {
            let base = b.memory.device_addr();
            let mut segments = vec![Segment::readable(base, 8)];
            for i in 0..rng.below(4) {
                segments.push(Segment::writable(base + 64 + 16 * i, 16));
            }
            match b.queue.add(&segments) {
                Ok(t) => {
                    in_flight.insert(t);
                }
                Err(QueueError::QueueFull { .. }) => break,
                Err(e) => panic!("{e}"),
            }
            b.device.set_avail_event(rng.next_u64() as u16);
            b.device.set_used_flags(rng.next_u64() as u16);
            let _ = b.queue.publish();
        }
        let heads: Vec<u16> = b.device.available();
        for _ in 0..rng.below(12) {
            let id = match rng.below(4) {
                0 => rng.next_u64() as u32,
                1 => rng.below(SIZE as u64 + 2) as u32,
                _ if !heads.is_empty() => heads[rng.below(heads.len() as u64) as usize] as u32,
                _ => 0,
            };
            let len = match rng.below(3) {
                0 => rng.next_u64() as u32,
                _ => rng.below(40) as u32,
            };
            if rng.below(10) == 0 {
                let idx = rng.next_u64() as u16;
                b.device.set_used_idx(idx);
            } else {
                b.device.push_used(id, len);
            }
        }
        for _ in 0..20 {
            match b.queue.pop_used() {
                Ok(None) => break,
                Ok(Some(used)) => {
                    assert!(
                        in_flight.remove(&used.token),
                        "completed twice or never issued"
                    );
                }
                Err(QueueError::UsedLengthTooLong { token, len, max }) => {
                    assert!(len > max);
                    assert!(in_flight.remove(&token), "completed twice or never issued");
                    seen_errors.insert("length");
                }
                Err(QueueError::UsedIdOutOfRange { id, .. }) => {
                    assert!(id >= SIZE as u32);
                    seen_errors.insert("range");
                }
                Err(QueueError::UsedIdNotInFlight { .. }) => {
                    seen_errors.insert("free");
                }
                Err(QueueError::UsedIdNotHead { .. }) => {
                    seen_errors.insert("body");
                }
                Err(QueueError::UsedIndexTooFar { .. } | QueueError::UsedIndexBackward { .. }) => {
                    assert!(b.queue.is_broken());
                    seen_errors.insert("index");
                    break;
                }
                Err(e) => panic!("unexpected error {e}"),
            }
            assert_eq!(
                b.queue.in_flight() as usize,
                in_flight.len(),
                "the queue and the test disagree on what is in flight"
            );
        }
        let mut abandoned = BTreeSet::new();
        b.queue.reset(|t| {
            abandoned.insert(t);
        });
        assert_eq!(
            abandoned, in_flight,
            "reset hands back exactly what is in flight"
        );
        b.assert_idle_and_whole();
        b.device = HostileDevice::new(b.queue.addresses());
    }
    assert_eq!(
        seen_errors.into_iter().collect::<Vec<_>>(),
        ["body", "free", "index", "length", "range"],
        "the garbage must exercise every check"
    );
}
