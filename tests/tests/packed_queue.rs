//! The packed virtqueue driver (`drivers::queue::PackedQueue`, and
//! `Virtqueue` over both layouts) against the packed-ring device model written
//! from the spec (`tests::packed_model`) and a hostile device
//! (`tests::hostile_packed`). Every test checks data, counts or error values.
//!
//! Set `RUST_LOG=trace` to see the queue narrate itself on stderr.

use std::collections::{BTreeSet, HashMap};

use drivers::features::{self, RingPreference};
use drivers::queue::packed::{desc_flags, event_flags, RingPosition};
use drivers::queue::{
    NotifyDecision, PackedQueue, QueueConfig, QueueCounters, QueueError, Ring, RingKind,
    RingLayout, Segment, Token, Used, Virtqueue,
};
use drivers::transport::TransportKind;
use hal::{Direction, DmaRegion, PAGE_SIZE};
use tests::host_hal::{HostHal, POISON, TEST_OWNER};
use tests::hostile_packed::{HostilePackedDevice, Slot, F_AVAIL, F_USED, F_WRITE};
use tests::packed_model::PackedModel;
use tests::vq_model::{Chain, Rng, SharedBuffer, VqModel};

type Packed = PackedQueue<HostHal>;
type Vq = Virtqueue<HostHal>;

const MODERN: RingLayout = RingLayout::Separate;

fn config(size: u16, event_idx: bool, indirect: u16) -> QueueConfig {
    QueueConfig::new(0, size, MODERN)
        .with_event_idx(event_idx)
        .with_indirect(indirect)
}

fn setup(size: u16, event_idx: bool, indirect: u16) -> (Packed, PackedModel) {
    install_logger();
    let queue = Packed::new(config(size, event_idx, indirect)).expect("queue");
    let model = PackedModel::new(queue.addresses(), event_idx);
    (queue, model)
}

/// Publishes, tells the model what the driver decided, returns the decision.
fn publish(queue: &mut Packed, model: &mut PackedModel) -> NotifyDecision {
    let decision = queue.publish();
    if decision != NotifyDecision::NothingNew {
        model.driver_published(decision.should_notify());
    }
    decision
}

fn pop_all(queue: &mut Packed) -> Vec<Used> {
    let mut done = Vec::new();
    while let Some(used) = queue.pop_used().expect("a correct device") {
        done.push(used);
    }
    done
}

#[test]
fn a_direct_chain_round_trips_real_data() {
    let (mut queue, mut model) = setup(8, false, 0);
    let header = SharedBuffer::new(b"read sector 7".to_vec(), Direction::ToDevice);
    let data = SharedBuffer::for_device(64);
    let status = SharedBuffer::for_device(1);

    let token = queue
        .add(&[header.segment(), data.segment(), status.segment()])
        .unwrap();
    assert_eq!(queue.free_descriptors(), 5);
    assert!(
        model.take_available().is_empty(),
        "added but unpublished requests must be invisible to the device"
    );
    assert_eq!(publish(&mut queue, &mut model), NotifyDecision::Notify);

    let chains = model.take_available();
    assert_eq!(chains.len(), 1);
    let chain = &chains[0];
    assert_eq!(chain.head as usize, token.index(), "buffer id = token");
    assert!(!chain.indirect);
    assert_eq!(chain.descriptors, 3);
    assert_eq!(chain.readable, b"read sector 7");
    assert_eq!(chain.writable_len(), 65);

    let mut reply: Vec<u8> = (0..64u8).map(|i| i ^ 0x5a).collect();
    reply.push(0);
    model.complete(chain, &reply);
    assert!(model.signal_used());
    assert_eq!(
        model.slot_flags(0),
        desc_flags::AVAIL | desc_flags::USED | desc_flags::WRITE,
        "the used descriptor overwrote the first slot"
    );

    assert_eq!(queue.pop_used(), Ok(Some(Used { token, len: 65 })));
    assert_eq!(queue.pop_used(), Ok(None));
    assert_eq!(data.finish(), &reply[..64]);
    assert_eq!(status.finish(), [0]);
    assert_eq!(header.finish(), b"read sector 7");
    assert_eq!(queue.free_descriptors(), 8);
    assert_eq!(queue.in_flight(), 0);
    assert_eq!(
        queue.next_used_position(),
        RingPosition {
            offset: 3,
            wrap: true
        },
        "the driver skipped the buffer's three descriptors"
    );
    let c = queue.counters();
    assert_eq!(
        (c.added, c.indirect, c.completions, c.notifications),
        (1, 0, 1, 1)
    );
}

#[test]
fn an_indirect_table_round_trips_real_data() {
    let (mut queue, mut model) = setup(8, true, 8);
    let header = SharedBuffer::new(vec![1, 2, 3, 4], Direction::ToDevice);
    let payload = SharedBuffer::new((0..100u8).collect(), Direction::ToDevice);
    let outs: Vec<SharedBuffer> = [10usize, 30, 50, 7]
        .iter()
        .map(|&n| SharedBuffer::for_device(n))
        .collect();
    let mut segments = vec![header.segment(), payload.segment()];
    segments.extend(outs.iter().map(SharedBuffer::segment));

    let token = queue.add(&segments).unwrap();
    assert_eq!(
        queue.free_descriptors(),
        7,
        "six segments, one ring descriptor"
    );
    assert_eq!(publish(&mut queue, &mut model), NotifyDecision::Notify);

    let chains = model.take_available();
    assert_eq!(chains.len(), 1);
    let chain = &chains[0];
    assert!(chain.indirect, "the device must see an INDIRECT descriptor");
    assert_eq!(chain.descriptors, 6);
    let mut expected_in = vec![1, 2, 3, 4];
    expected_in.extend(0..100u8);
    assert_eq!(chain.readable, expected_in);
    assert_eq!(chain.writable_len(), 97);

    let reply: Vec<u8> = (0..90u8).map(|i| i.wrapping_mul(7)).collect();
    model.complete(chain, &reply);
    assert!(model.signal_used());
    assert_eq!(queue.pop_used(), Ok(Some(Used { token, len: 90 })));

    let got: Vec<Vec<u8>> = outs.into_iter().map(SharedBuffer::finish).collect();
    assert_eq!(got[0], &reply[..10]);
    assert_eq!(got[1], &reply[10..40]);
    assert_eq!(got[2], &reply[40..90]);
    assert_eq!(got[3], vec![POISON; 7], "untouched by the device");
    assert_eq!(queue.free_descriptors(), 8);
    assert_eq!(
        queue.next_used_position().offset,
        1,
        "an indirect buffer occupies one slot"
    );
    assert_eq!(queue.counters().indirect, 1);
    assert_eq!(model.stats.indirect_chains, 1);
}

#[test]
fn direct_or_indirect_follows_the_same_rule_as_the_split_ring() {
    let (mut queue, mut model) = setup(8, false, 4);
    let memory = DmaRegion::<HostHal>::new(TEST_OWNER, PAGE_SIZE).unwrap();
    let base = memory.device_addr();
    let request = |n: usize| -> Vec<Segment> {
        (0..n)
            .map(|i| Segment::writable(base + 64 * i as u64, 64))
            .collect()
    };
    let mut expect_indirect = Vec::new();
    let mut add = |queue: &mut Packed, n: usize, indirect: bool, free_after: u16| {
        let token = queue.add(&request(n)).unwrap();
        assert_eq!(queue.free_descriptors(), free_after, "after {n} segments");
        expect_indirect.push((token.index() as u16, indirect));
    };
    add(&mut queue, 1, false, 7);
    add(&mut queue, 2, false, 5);
    add(&mut queue, 3, true, 4);
    add(&mut queue, 4, true, 3);
    assert_eq!(
        queue.add(&request(5)),
        Err(QueueError::QueueFull { needed: 5, free: 3 })
    );
    add(&mut queue, 2, false, 1);
    add(&mut queue, 2, true, 0);
    assert_eq!(
        queue.add(&request(1)),
        Err(QueueError::QueueFull { needed: 1, free: 0 })
    );
    assert_eq!(
        queue.add(&request(9)),
        Err(QueueError::TooManySegments {
            segments: 9,
            max: 8
        })
    );
    assert_eq!(publish(&mut queue, &mut model), NotifyDecision::Notify);
    let chains = model.take_available();
    let seen: Vec<(u16, bool)> = chains.iter().map(|c| (c.head, c.indirect)).collect();
    assert_eq!(seen, expect_indirect);
    for chain in &chains {
        model.complete_with_len(chain.head, 0);
    }
    assert_eq!(pop_all(&mut queue).len(), 6);
    assert_eq!(queue.free_descriptors(), 8);
    assert_eq!(queue.counters().indirect, 3);
}

#[test]
fn malformed_requests_are_rejected_without_side_effects() {
    let (mut queue, mut model) = setup(8, false, 4);
    let r = Segment::readable(0x1000, 16);
    let w = Segment::writable(0x2000, 16);
    assert_eq!(queue.add(&[]), Err(QueueError::EmptyRequest));
    assert_eq!(
        queue.add(&[r, Segment::writable(0x2000, 0)]),
        Err(QueueError::EmptySegment { index: 1 })
    );
    assert_eq!(
        queue.add(&[r, w, r]),
        Err(QueueError::ReadableAfterWritable { index: 2 })
    );
    assert_eq!(
        queue.add(&[
            Segment::readable(0x1000, 0x8000_0000),
            Segment::writable(0x2000, 0x8000_0000)
        ]),
        Err(QueueError::RequestTooLong)
    );
    assert_eq!(queue.free_descriptors(), 8);
    assert_eq!(queue.in_flight(), 0);
    assert_eq!(publish(&mut queue, &mut model), NotifyDecision::NothingNew);
    assert_eq!(model.slot_flags(0), 0, "nothing written to the ring");
    assert_eq!(queue.counters().added, 0);
}

#[test]
fn a_batch_becomes_visible_with_one_store_at_publish() {
    let (mut queue, mut model) = setup(16, true, 0);
    let memory = DmaRegion::<HostHal>::new(TEST_OWNER, PAGE_SIZE).unwrap();
    for i in 0..5u64 {
        queue
            .add(&[
                Segment::readable(memory.device_addr() + 16 * i, 8),
                Segment::writable(memory.device_addr() + 16 * i + 8, 8),
            ])
            .unwrap();
    }
    assert_eq!(queue.unpublished(), 5);
    // Every descriptor but the heads is written already; no head is.
    for slot in 0..10u16 {
        let flags = model.slot_flags(slot);
        if slot % 2 == 0 {
            assert_eq!(flags, 0, "head {slot} held back");
        } else {
            assert_eq!(flags, desc_flags::AVAIL | desc_flags::WRITE, "slot {slot}");
        }
    }
    assert!(model.take_available().is_empty());
    assert_eq!(publish(&mut queue, &mut model), NotifyDecision::Notify);
    for slot in (0..10u16).step_by(2) {
        assert_eq!(model.slot_flags(slot), desc_flags::AVAIL | desc_flags::NEXT);
    }
    assert_eq!(queue.unpublished(), 0);
    assert_eq!(publish(&mut queue, &mut model), NotifyDecision::NothingNew);
    assert_eq!(model.take_available().len(), 5);
    let c = queue.counters();
    assert_eq!((c.added, c.publishes, c.notifications), (5, 1, 1));
    assert_eq!(model.stats.notifications_received, 1);
}

/// Request `seq` carries its number; the device answers with `seq * 3 + 1`.
fn answer(seq: u64) -> u64 {
    seq.wrapping_mul(3).wrapping_add(1)
}

fn seq_of(chain: &Chain) -> u64 {
    u64::from_le_bytes(chain.readable[..8].try_into().expect("8-byte request"))
}

#[test]
fn many_in_flight_complete_out_of_order_on_a_ring_that_is_not_a_power_of_two() {
    let (mut queue, mut model) = setup(30, true, 0);
    let mut requests = HashMap::new();
    for seq in 0..15u64 {
        let out = SharedBuffer::new(seq.to_le_bytes().to_vec(), Direction::ToDevice);
        let back = SharedBuffer::for_device(8);
        let token = queue.add(&[out.segment(), back.segment()]).unwrap();
        requests.insert(token, (seq, out, back));
    }
    assert_eq!(queue.free_descriptors(), 0);
    assert_eq!(
        queue.add(&[Segment::readable(0x1000, 1)]),
        Err(QueueError::QueueFull { needed: 1, free: 0 })
    );
    assert_eq!(publish(&mut queue, &mut model), NotifyDecision::Notify);

    let mut chains = model.take_available();
    assert_eq!(chains.len(), 15);
    Rng::new(7).shuffle(&mut chains);
    let order: Vec<u16> = chains.iter().map(|c| c.head).collect();
    let mut popped = Vec::new();
    for half in chains.chunks(8) {
        for chain in half {
            model.complete(chain, &answer(seq_of(chain)).to_le_bytes());
        }
        model.signal_used();
        popped.extend(pop_all(&mut queue));
    }
    let popped_order: Vec<u16> = popped.iter().map(|u| u.token.index() as u16).collect();
    assert_eq!(popped_order, order, "completions in the device's order");
    assert_ne!(order, (0..15).collect::<Vec<u16>>(), "the shuffle reorders");
    for used in popped {
        let (seq, out, back) = requests.remove(&used.token).expect("a token we issued");
        assert_eq!(used.len, 8);
        out.finish();
        assert_eq!(back.finish(), answer(seq).to_le_bytes());
    }
    assert!(requests.is_empty());
    assert_eq!(queue.free_descriptors(), 30);
    assert_eq!(
        queue.next_used_position(),
        RingPosition {
            offset: 0,
            wrap: false
        },
        "one full lap: back at slot 0 with the wrap counter flipped"
    );
}

#[test]
fn a_chain_that_runs_past_the_end_continues_at_slot_0_with_the_flipped_wrap_counter() {
    let (mut queue, mut model) = setup(5, false, 0);
    let memory = DmaRegion::<HostHal>::new(TEST_OWNER, PAGE_SIZE).unwrap();
    let base = memory.device_addr();
    // Move both sides to slot 3.
    for _ in 0..3 {
        queue.add(&[Segment::readable(base, 8)]).unwrap();
    }
    let _ = publish(&mut queue, &mut model);
    for chain in model.take_available() {
        model.complete_with_len(chain.head, 0);
    }
    assert_eq!(pop_all(&mut queue).len(), 3);

    // Slots 3, 4 (wrap 1), then 0, 1 (wrap 0).
    let input = SharedBuffer::new(b"across".to_vec(), Direction::ToDevice);
    let more = SharedBuffer::new(b" the end".to_vec(), Direction::ToDevice);
    let out_a = SharedBuffer::for_device(4);
    let out_b = SharedBuffer::for_device(4);
    let token = queue
        .add(&[
            input.segment(),
            more.segment(),
            out_a.segment(),
            out_b.segment(),
        ])
        .unwrap();
    assert_eq!(
        queue.next_avail_position(),
        RingPosition {
            offset: 2,
            wrap: false
        }
    );
    let _ = publish(&mut queue, &mut model);
    assert_eq!(model.slot_flags(4), desc_flags::AVAIL | desc_flags::NEXT);
    assert_eq!(
        model.slot_flags(0),
        desc_flags::USED | desc_flags::NEXT | desc_flags::WRITE,
        "second lap: AVAIL = 0, USED = 1"
    );
    assert_eq!(model.slot_flags(1), desc_flags::USED | desc_flags::WRITE);
    let chains = model.take_available();
    assert_eq!(chains.len(), 1);
    assert_eq!(chains[0].readable, b"across the end");
    assert_eq!(model.stats.chains_across_the_end, 1);
    model.complete(&chains[0], b"12345678");
    assert_eq!(queue.pop_used(), Ok(Some(Used { token, len: 8 })));
    assert_eq!(out_a.finish(), b"1234");
    assert_eq!(out_b.finish(), b"5678");
    assert_eq!(
        queue.next_used_position(),
        RingPosition {
            offset: 2,
            wrap: false
        }
    );
}

/// The driver-to-device direction, scripted so each step's decision is known.
fn notification_script(event_idx: bool) {
    let (mut queue, mut model) = setup(11, event_idx, 0);
    let memory = DmaRegion::<HostHal>::new(TEST_OWNER, PAGE_SIZE).unwrap();
    let seg = Segment::readable(memory.device_addr(), 8);
    let add = |queue: &mut Packed, n: usize| {
        for _ in 0..n {
            queue.add(&[seg]).unwrap();
        }
    };
    let mut decisions = Vec::new();
    add(&mut queue, 3);
    decisions.push(publish(&mut queue, &mut model)); // asleep: notify
    assert_eq!(
        model.device_event().1,
        event_flags::DISABLE,
        "the device works"
    );
    add(&mut queue, 2);
    decisions.push(publish(&mut queue, &mut model)); // awake: suppressed
    for chain in model.take_available() {
        model.complete_with_len(chain.head, 0);
    }
    assert!(model.try_sleep());
    if event_idx {
        assert_eq!(
            model.device_event(),
            (0x8000 | 5, event_flags::DESC),
            "the device asks to hear about slot 5, wrap 1"
        );
    } else {
        assert_eq!(model.device_event().1, event_flags::ENABLE);
    }
    assert_eq!(pop_all(&mut queue).len(), 5);
    add(&mut queue, 1);
    decisions.push(publish(&mut queue, &mut model)); // asleep: notify
    assert_eq!(model.take_available().len(), 1);
    add(&mut queue, 1);
    decisions.push(publish(&mut queue, &mut model)); // awake: suppressed
    assert!(!model.try_sleep(), "work arrived first: stays awake");
    add(&mut queue, 1);
    decisions.push(publish(&mut queue, &mut model)); // still awake
    assert_eq!(model.take_available().len(), 2);
    assert!(model.try_sleep());
    add(&mut queue, 1);
    decisions.push(publish(&mut queue, &mut model)); // asleep: notify

    use NotifyDecision::{Notify, Suppressed};
    assert_eq!(
        decisions,
        [Notify, Suppressed, Notify, Suppressed, Suppressed, Notify]
    );
    let c = queue.counters();
    assert_eq!((c.notifications, c.notifications_suppressed), (3, 3));
    let s = model.stats;
    assert_eq!(s.notifications_needed, 3);
    assert_eq!(s.notifications_received, 3);
    assert_eq!((s.notifications_missed, s.notifications_spurious), (0, 0));
}

#[test]
fn desc_events_suppress_notifications_exactly_when_the_device_is_awake() {
    notification_script(true);
}

#[test]
fn enable_and_disable_flags_suppress_notifications_exactly_when_the_device_is_awake() {
    notification_script(false);
}

/// The device-to-driver direction: which completions interrupt.
fn interrupt_script(event_idx: bool) -> Vec<bool> {
    let (mut queue, mut model) = setup(6, event_idx, 0);
    let memory = DmaRegion::<HostHal>::new(TEST_OWNER, PAGE_SIZE).unwrap();
    for _ in 0..4 {
        queue
            .add(&[Segment::writable(memory.device_addr(), 8)])
            .unwrap();
    }
    let _ = queue.publish();
    let chains = model.take_available();
    assert_eq!(chains.len(), 4);
    let mut interrupts = Vec::new();
    let complete = |model: &mut PackedModel, i: usize| {
        model.complete_with_len(chains[i].head, 8);
        model.signal_used()
    };
    interrupts.push(complete(&mut model, 0)); // driver waiting for the first
    interrupts.push(complete(&mut model, 1)); // driver has not looked yet
    assert_eq!(pop_all(&mut queue).len(), 2);
    if event_idx {
        assert_eq!(
            model.driver_event(),
            (0x8000 | 2, event_flags::DESC),
            "the DESC event follows the driver"
        );
    }
    queue.disable_interrupts();
    assert_eq!(model.driver_event().1, event_flags::DISABLE);
    interrupts.push(complete(&mut model, 2)); // driver said: no interrupts
    assert!(
        queue.enable_interrupts(),
        "a completion arrived while interrupts were off: poll again"
    );
    assert_eq!(pop_all(&mut queue).len(), 1);
    assert!(!queue.enable_interrupts(), "nothing pending now");
    interrupts.push(complete(&mut model, 3)); // driver waiting: must interrupt
    assert_eq!(pop_all(&mut queue).len(), 1);
    assert_eq!(queue.free_descriptors(), 6);
    assert_eq!(
        model.stats.interrupts_sent as usize,
        interrupts.iter().filter(|&&i| i).count()
    );
    interrupts
}

#[test]
fn desc_events_suppress_interrupts_until_the_driver_catches_up() {
    assert_eq!(interrupt_script(true), [true, false, false, true]);
}

#[test]
fn enable_and_disable_flags_suppress_interrupts_while_the_driver_polls() {
    assert_eq!(interrupt_script(false), [true, true, false, true]);
}

#[test]
fn the_desc_event_carries_the_wrap_counter_across_the_end_of_the_ring() {
    let (mut queue, mut model) = setup(3, true, 0);
    let memory = DmaRegion::<HostHal>::new(TEST_OWNER, PAGE_SIZE).unwrap();
    let seg = Segment::writable(memory.device_addr(), 8);
    assert_eq!(
        model.driver_event(),
        (0x8000, event_flags::DESC),
        "a new queue asks for slot 0, wrap 1"
    );
    let mut expected = Vec::new();
    let mut seen = Vec::new();
    for round in 1..=7u16 {
        queue.add(&[seg]).unwrap();
        let _ = publish(&mut queue, &mut model);
        let chains = model.take_available();
        model.complete_with_len(chains[0].head, 8);
        assert!(model.signal_used(), "round {round}: the driver was waiting");
        assert_eq!(pop_all(&mut queue).len(), 1);
        let wrap = (round / 3) % 2 == 0;
        expected.push((round % 3) | if wrap { 0x8000 } else { 0 });
        seen.push(model.driver_event().0);
        assert!(model.try_sleep());
    }
    assert_eq!(seen, expected);
    assert_eq!(model.stats.interrupts_by_desc_event, 7);
}

// ---- the same workload, many laps -----------------------------------------

/// A device of either layout, as `run_many` drives it.
trait Device {
    fn take(&mut self) -> Vec<Chain>;
    fn complete(&mut self, chain: &Chain, data: &[u8]);
    fn signal(&mut self) -> bool;
    fn published(&mut self, notified: bool);
    fn try_sleep(&mut self) -> bool;
    fn asleep(&self) -> bool;
    /// (needed, received, missed, spurious, interrupts sent, suppressed, indirect chains)
    fn stats(&self) -> [u64; 7];
}

impl Device for VqModel {
    fn take(&mut self) -> Vec<Chain> {
        self.take_available()
    }
    fn complete(&mut self, chain: &Chain, data: &[u8]) {
        VqModel::complete(self, chain, data)
    }
    fn signal(&mut self) -> bool {
        self.signal_used()
    }
    fn published(&mut self, notified: bool) {
        self.driver_published(notified)
    }
    fn try_sleep(&mut self) -> bool {
        VqModel::try_sleep(self)
    }
    fn asleep(&self) -> bool {
        self.is_asleep()
    }
    fn stats(&self) -> [u64; 7] {
        let s = self.stats;
        [
            s.notifications_needed,
            s.notifications_received,
            s.notifications_missed,
            s.notifications_spurious,
            s.interrupts_sent,
            s.interrupts_suppressed,
            s.indirect_chains,
        ]
    }
}

impl Device for PackedModel {
    fn take(&mut self) -> Vec<Chain> {
        self.take_available()
    }
    fn complete(&mut self, chain: &Chain, data: &[u8]) {
        PackedModel::complete(self, chain, data)
    }
    fn signal(&mut self) -> bool {
        self.signal_used()
    }
    fn published(&mut self, notified: bool) {
        self.driver_published(notified)
    }
    fn try_sleep(&mut self) -> bool {
        PackedModel::try_sleep(self)
    }
    fn asleep(&self) -> bool {
        self.is_asleep()
    }
    fn stats(&self) -> [u64; 7] {
        let s = self.stats;
        [
            s.notifications_needed,
            s.notifications_received,
            s.notifications_missed,
            s.notifications_spurious,
            s.interrupts_sent,
            s.interrupts_suppressed,
            s.indirect_chains,
        ]
    }
}

/// Everything observable about one `run_many`, except tokens (a split
/// queue's head index and a packed queue's buffer id differ by design).
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// Per completion, in the order the driver received them: the request's
    /// sequence number, the length reported and the answer found in memory.
    completions: Vec<(u64, u32, u64)>,
    decisions: Vec<NotifyDecision>,
    interrupts: Vec<bool>,
    counters: QueueCounters,
    device_stats: [u64; 7],
}

/// Runs `total` requests through `queue` with random batch sizes, random
/// chain shapes (1 to 4 segments), random completion order and a driver that
/// alternates between polling and waiting for interrupts; checks every
/// answer and both notification directions, and returns what happened.
fn run_many(queue: &mut Vq, device: &mut dyn Device, total: u64, seed: u64) -> Outcome {
    let size = queue.size();
    let mut rng = Rng::new(seed);
    let slots = size as usize;
    let requests = DmaRegion::<HostHal>::new(TEST_OWNER, slots * 8).unwrap();
    let answers = DmaRegion::<HostHal>::new(TEST_OWNER, slots * 8).unwrap();
    let mut free_slots: Vec<usize> = (0..slots).collect();
    let mut by_token: HashMap<Token, (usize, u64)> = HashMap::new();
    let mut device_pending: Vec<Chain> = Vec::new();
    let (mut issued, mut finished) = (0u64, 0u64);
    let mut driver_waiting = false;
    let mut lost_interrupts = 0;
    let mut steps = 0u64;
    let mut outcome = Outcome {
        completions: Vec::new(),
        decisions: Vec::new(),
        interrupts: Vec::new(),
        counters: QueueCounters::default(),
        device_stats: [0; 7],
    };

    while finished < total {
        steps += 1;
        assert!(
            steps < total * 20 + 1000,
            "no progress after {steps} steps: {finished}/{total} done"
        );
        let room = (total - issued).min(free_slots.len() as u64);
        if room > 0 {
            for _ in 0..=rng.below(room) {
                let slot = *free_slots.last().expect("room > 0");
                let seq = issued;
                let request = requests.device_addr() + slot as u64 * 8;
                let answer_at = answers.device_addr() + slot as u64 * 8;
                let shape = rng.below(4);
                let segments = match shape {
                    1 if size >= 3 => vec![
                        Segment::readable(request, 8),
                        Segment::writable(answer_at, 4),
                        Segment::writable(answer_at + 4, 4),
                    ],
                    2 if size >= 4 => vec![
                        Segment::readable(request, 4),
                        Segment::readable(request + 4, 4),
                        Segment::writable(answer_at, 2),
                        Segment::writable(answer_at + 2, 6),
                    ],
                    _ => vec![
                        Segment::readable(request, 8),
                        Segment::writable(answer_at, 8),
                    ],
                };
                requests.write(slot * 8, seq);
                answers.write(slot * 8, 0u64);
                match queue.add(&segments) {
                    Ok(token) => {
                        free_slots.pop();
                        by_token.insert(token, (slot, seq));
                        issued += 1;
                    }
                    Err(QueueError::QueueFull { .. }) => break,
                    Err(e) => panic!("add: {e}"),
                }
            }
            let decision = queue.publish();
            if decision != NotifyDecision::NothingNew {
                device.published(decision.should_notify());
            }
            outcome.decisions.push(decision);
        }

        if !device.asleep() {
            device_pending.extend(device.take());
        }
        rng.shuffle(&mut device_pending);
        let finish_now = rng.below(device_pending.len() as u64 + 1) as usize;
        for chain in device_pending.drain(..finish_now) {
            device.complete(&chain, &answer(seq_of(&chain)).to_le_bytes());
        }
        if finish_now > 0 {
            let interrupt = device.signal();
            outcome.interrupts.push(interrupt);
            if driver_waiting && !interrupt {
                lost_interrupts += 1;
            }
            driver_waiting = false;
        }
        if !device.asleep() && rng.below(3) == 0 {
            device.try_sleep();
        }

        if !driver_waiting {
            queue.disable_interrupts();
            while let Some(used) = queue.pop_used().expect("a correct device") {
                let (slot, seq) = by_token.remove(&used.token).expect("issued token");
                assert_eq!(used.len, 8);
                let got = answers.read::<u64>(slot * 8).expect("in range");
                assert_eq!(got, answer(seq), "answer to {seq}");
                outcome.completions.push((seq, used.len, got));
                free_slots.push(slot);
                finished += 1;
            }
            if rng.below(2) == 0 && !queue.enable_interrupts() {
                driver_waiting = true;
            }
        }
    }

    assert!(by_token.is_empty());
    assert_eq!(queue.free_descriptors(), size);
    assert_eq!(queue.in_flight(), 0);
    let c = queue.counters();
    assert_eq!(c.completions, total);
    assert_eq!(c.device_errors, 0);
    let [_needed, received, missed, spurious, _sent, suppressed, indirect] = device.stats();
    assert_eq!(missed, 0, "a sleeping device was not notified");
    assert_eq!(spurious, 0, "an awake device was notified");
    assert_eq!(c.notifications, received);
    assert!(c.notifications_suppressed > 0, "suppression never happened");
    assert_eq!(lost_interrupts, 0, "a waiting driver was not interrupted");
    assert!(suppressed > 0, "interrupt suppression never happened");
    assert_eq!(indirect, c.indirect);
    if queue.indirect_capacity() >= 3 {
        assert!(c.indirect > 0, "indirect tables never used");
    }
    outcome.counters = c;
    outcome.device_stats = device.stats();
    outcome
}

fn run_packed(size: u16, event_idx: bool, indirect: u16, total: u64, seed: u64) -> (Outcome, u64) {
    install_logger();
    let mut queue = Vq::new(RingKind::Packed, config(size, event_idx, indirect)).unwrap();
    let mut model = PackedModel::new(queue.addresses(), event_idx);
    if seed.is_multiple_of(2) {
        // Half the runs with a device that never sets WRITE in used
        // descriptors, as QEMU 7.2 does.
        model.omit_write_flag();
    }
    let outcome = run_many(&mut queue, &mut model, total, seed);
    assert_eq!(model.slots_read(), model.slots_used());
    (outcome, model.laps())
}

#[test]
fn the_ring_wraps_thousands_of_times_with_desc_events_and_indirect_tables() {
    let (outcome, laps) = run_packed(13, true, 4, 30_000, 1);
    assert!(laps > 3000, "only {laps} laps");
    assert_eq!(outcome.completions.len(), 30_000);
}

#[test]
fn the_ring_wraps_thousands_of_times_with_enable_and_disable_flags() {
    let (outcome, laps) = run_packed(7, false, 0, 30_000, 2);
    assert!(laps > 5000, "only {laps} laps");
    assert_eq!(outcome.counters.indirect, 0);
}

#[test]
fn odd_and_tiny_packed_rings_under_pressure() {
    for (seed, size) in [(3u64, 2u16), (4, 3), (5, 5), (6, 100), (7, 257)] {
        run_packed(size, true, size.min(4), 4_000, seed);
        run_packed(size, false, 0, 4_000, seed + 100);
    }
}

#[test]
fn split_and_packed_give_identical_results_for_the_same_scenario() {
    install_logger();
    for (event_idx, indirect, seed) in [(true, 4u16, 11u64), (false, 0, 12), (true, 0, 13)] {
        let mut outcomes = Vec::new();
        for kind in [RingKind::Split, RingKind::Packed] {
            let mut queue = Vq::new(kind, config(64, event_idx, indirect)).unwrap();
            assert_eq!(queue.kind(), kind);
            let outcome = match kind {
                RingKind::Split => {
                    let mut model = VqModel::new(queue.addresses(), event_idx);
                    run_many(&mut queue, &mut model, 20_000, seed)
                }
                RingKind::Packed => {
                    let mut model = PackedModel::new(queue.addresses(), event_idx);
                    run_many(&mut queue, &mut model, 20_000, seed)
                }
            };
            outcomes.push(outcome);
        }
        assert_eq!(outcomes[0].completions.len(), 20_000);
        assert_eq!(
            outcomes[0].completions, outcomes[1].completions,
            "the same requests must complete in the same order with the same data"
        );
        assert_eq!(outcomes[0].decisions, outcomes[1].decisions);
        assert_eq!(outcomes[0].interrupts, outcomes[1].interrupts);
        assert_eq!(outcomes[0].counters, outcomes[1].counters);
        assert_eq!(outcomes[0].device_stats, outcomes[1].device_stats);
    }
}

// ---- construction, layout, features -----------------------------------------

#[test]
fn the_rings_go_where_the_transport_expects_and_are_freed_with_the_queue() {
    let queue = Packed::new(config(100, true, 0)).unwrap();
    let a = queue.addresses();
    assert_eq!(a.size, 100, "packed sizes need not be powers of two");
    assert_eq!(a.desc % 16, 0);
    assert_eq!(a.driver, a.desc + 1600, "driver area right after the ring");
    assert_eq!(a.device % 64, 0, "device area on its own cache line");
    assert_eq!(a.device, a.desc + 1664);
    assert_eq!(HostHal::live_dma_pages(), 1);
    let with_tables = Packed::new(config(100, true, 16)).unwrap();
    assert_eq!(
        HostHal::live_dma_pages(),
        1 + 1 + (100 * 16 * 16usize).div_ceil(PAGE_SIZE)
    );
    drop((queue, with_tables));
    assert_eq!(HostHal::live_dma_pages(), 0);

    assert_eq!(
        Packed::new(config(0, false, 0)).err(),
        Some(QueueError::InvalidSize(0))
    );
    assert_eq!(
        Packed::new(config(32769, false, 0)).err(),
        Some(QueueError::InvalidSize(32769))
    );
    assert_eq!(
        Packed::new(config(8, false, 9)).err(),
        Some(QueueError::InvalidIndirectCapacity(9))
    );
    assert_eq!(
        Packed::new(QueueConfig::new(
            0,
            8,
            RingLayout::Contiguous { align: 4096 }
        ))
        .err(),
        Some(QueueError::PackedRingNeedsSeparateLayout)
    );
    assert!(Packed::new(config(32768, false, 0)).is_ok());
}

#[test]
fn the_ring_kind_follows_the_negotiated_features() {
    let offered = features::VERSION_1
        | features::RING_PACKED
        | features::RING_EVENT_IDX
        | features::RING_INDIRECT_DESC;
    let negotiate = |offered: u64, preference: RingPreference, kind: TransportKind| {
        features::negotiate(offered, 0, preference.ring_features(), kind)
    };
    for kind in [TransportKind::PciModern, TransportKind::MmioV2] {
        let split = negotiate(offered, RingPreference::Split, kind);
        assert_eq!(split & features::RING_PACKED, 0);
        assert_eq!(RingKind::from_features(split), RingKind::Split);
        for preference in [RingPreference::Packed, RingPreference::Auto] {
            let packed = negotiate(offered, preference, kind);
            assert_ne!(packed & features::RING_PACKED, 0, "{preference} on {kind}");
            assert_eq!(RingKind::from_features(packed), RingKind::Packed);
            let not_offered = negotiate(offered & !features::RING_PACKED, preference, kind);
            assert_eq!(
                RingKind::from_features(not_offered),
                RingKind::Split,
                "never accepted unless offered"
            );
        }
    }
    for kind in [TransportKind::PciLegacy, TransportKind::MmioV1] {
        let legacy = negotiate(
            offered & !features::VERSION_1 | features::RING_PACKED,
            RingPreference::Packed,
            kind,
        );
        assert_eq!(legacy & features::RING_PACKED, 0, "{kind} never gets it");
    }
    assert_eq!(
        features::SHARED_RING_FEATURES & features::RING_PACKED,
        0,
        "drivers still on SplitQueue must not get packed rings by default"
    );
    assert_eq!(RingPreference::default(), RingPreference::Auto);
    assert_eq!(RingPreference::parse("split"), Some(RingPreference::Split));
    assert_eq!(
        RingPreference::parse("packed"),
        Some(RingPreference::Packed)
    );
    assert_eq!(RingPreference::parse("auto"), Some(RingPreference::Auto));
    assert_eq!(RingPreference::parse("Packed"), None);
    assert!(RingPreference::Packed.wanted_packed());
    assert!(!RingPreference::Auto.wanted_packed());
    assert_eq!(RingKind::Packed.to_string(), "packed");
    assert_eq!(RingKind::Split.to_string(), "split");

    // The constructor follows the features, and sizes follow the kind.
    let vq = Vq::from_features(config(100, false, 0), features::RING_PACKED).unwrap();
    assert_eq!(vq.kind(), RingKind::Packed);
    assert!(vq.as_packed().is_some() && vq.as_split().is_none());
    assert_eq!(
        Vq::from_features(config(100, false, 0), 0).err(),
        Some(QueueError::InvalidSize(100)),
        "the split ring still needs a power of two"
    );
    assert_eq!(RingKind::Packed.choose_size(1000, 1024, false), Ok(1000));
    assert_eq!(RingKind::Split.choose_size(1000, 1024, false), Ok(512));
}

#[test]
fn reset_hands_back_every_request_in_flight() {
    let (mut queue, mut model) = setup(9, true, 4);
    let memory = DmaRegion::<HostHal>::new(TEST_OWNER, PAGE_SIZE).unwrap();
    let seg = |i: u64| Segment::writable(memory.device_addr() + 64 * i, 64);
    let mut issued = Vec::new();
    for n in [1usize, 3, 2] {
        let segments: Vec<Segment> = (0..n as u64).map(seg).collect();
        issued.push(queue.add(&segments).unwrap());
    }
    let _ = publish(&mut queue, &mut model);
    assert_eq!(model.take_available().len(), 3);
    issued.push(queue.add(&[seg(7)]).unwrap()); // added, never published

    let mut abandoned = Vec::new();
    queue.reset(|token| abandoned.push(token));
    abandoned.sort();
    issued.sort();
    assert_eq!(abandoned, issued);
    assert_eq!(queue.free_descriptors(), 9);
    assert_eq!(queue.in_flight(), 0);
    assert_eq!(queue.next_avail_position(), RingPosition::START);

    // The ring is zeroed (the new model checks), so a fresh device can start again.
    let mut model = PackedModel::new(queue.addresses(), true);
    assert_eq!(model.driver_event(), (0x8000, event_flags::DESC));
    let token = queue.add(&[seg(0)]).unwrap();
    assert!(publish(&mut queue, &mut model).should_notify());
    let chains = model.take_available();
    assert_eq!(chains.len(), 1);
    model.complete_with_len(chains[0].head, 10);
    assert_eq!(queue.pop_used(), Ok(Some(Used { token, len: 10 })));
}

// ---- the hostile device ---------------------------------------------------

const SIZE: u16 = 7;

struct Bench {
    queue: Packed,
    device: HostilePackedDevice,
    memory: DmaRegion<HostHal>,
}

impl Bench {
    fn new(event_idx: bool, indirect: u16) -> Self {
        install_logger();
        let queue = Packed::new(config(SIZE, event_idx, indirect)).unwrap();
        let device = HostilePackedDevice::new(queue.addresses());
        let memory = DmaRegion::new(TEST_OWNER, PAGE_SIZE).unwrap();
        Self {
            queue,
            device,
            memory,
        }
    }

    /// Adds and publishes a request: one 8-byte readable segment, then
    /// `writable` 16-byte writable ones.
    fn request(&mut self, writable: usize) -> Token {
        let token = self.add(writable);
        let _ = self.queue.publish();
        token
    }

    fn add(&mut self, writable: usize) -> Token {
        let base = self.memory.device_addr();
        let mut segments = vec![Segment::readable(base, 8)];
        segments.extend((0..writable as u64).map(|i| Segment::writable(base + 64 + 16 * i, 16)));
        self.queue.add(&segments).unwrap()
    }

    fn id(token: Token) -> u16 {
        token.index() as u16
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

    /// Resets the queue, checks what it hands back, and starts a fresh device.
    fn reset_expecting(&mut self, mut expected: Vec<Token>) {
        let mut abandoned = Vec::new();
        self.queue.reset(|t| abandoned.push(t));
        abandoned.sort();
        expected.sort();
        assert_eq!(abandoned, expected);
        self.assert_idle_and_whole();
        self.device = HostilePackedDevice::new(self.queue.addresses());
    }
}

fn assert_broken(b: &mut Bench) {
    assert!(b.queue.is_broken());
    assert_eq!(b.pop(), Err(QueueError::DeviceBroken));
    assert_eq!(
        b.queue.add(&[Segment::readable(b.memory.device_addr(), 1)]),
        Err(QueueError::DeviceBroken)
    );
    assert_eq!(b.queue.publish(), NotifyDecision::NothingNew);
    assert!(
        !b.queue.enable_interrupts(),
        "a broken queue reports nothing pending"
    );
}

#[test]
fn an_out_of_range_id_breaks_the_queue_until_reset() {
    for bad in [SIZE, 0x7fff, u16::MAX] {
        let mut b = Bench::new(true, 0);
        let a = b.request(1);
        assert_eq!(b.device.available(), [(Bench::id(a), 2)]);
        b.device.push_used(bad, 0);
        assert_eq!(
            b.pop(),
            Err(QueueError::UsedIdOutOfRange {
                id: u32::from(bad),
                size: SIZE
            })
        );
        assert_broken(&mut b);
        assert_eq!(b.queue.counters().device_errors, 1);
        b.reset_expecting(vec![a]);

        // After the (simulated) device reset the queue works again.
        let fresh = b.request(1);
        assert_eq!(b.device.available(), [(Bench::id(fresh), 2)]);
        b.device.push_used(Bench::id(fresh), 16);
        assert_eq!(b.pop(), Ok(Some((fresh.index(), 16))));
        b.assert_idle_and_whole();
    }
}

#[test]
fn the_id_of_a_free_buffer_breaks_the_queue() {
    let mut b = Bench::new(false, 0);
    let a = b.request(1); // id 0
    b.device.push_used(5, 0);
    assert_eq!(b.pop(), Err(QueueError::UsedIdNotInFlight { id: 5 }));
    assert_broken(&mut b);
    b.reset_expecting(vec![a]);
}

#[test]
fn a_duplicate_completion_breaks_the_queue() {
    let mut b = Bench::new(true, 0);
    let a = b.request(1);
    let other = b.request(1);
    b.device.available();
    b.device.push_used(Bench::id(a), 16);
    b.device.push_used(Bench::id(a), 16);
    assert_eq!(b.pop(), Ok(Some((a.index(), 16))));
    assert_eq!(
        b.pop(),
        Err(QueueError::UsedIdNotInFlight { id: Bench::id(a) })
    );
    assert_broken(&mut b);
    b.reset_expecting(vec![other]);
}

#[test]
fn the_id_of_a_buffer_not_yet_published_breaks_the_queue() {
    let mut b = Bench::new(true, 0);
    let published = b.request(1);
    let hidden = b.add(1);
    assert_eq!(b.queue.unpublished(), 1);
    b.device.push_used(Bench::id(hidden), 16);
    assert_eq!(
        b.pop(),
        Err(QueueError::UsedIdNotInFlight {
            id: Bench::id(hidden)
        })
    );
    assert_broken(&mut b);
    b.reset_expecting(vec![published, hidden]);
}

#[test]
fn a_length_beyond_the_writable_buffers_is_an_error_that_still_frees_the_buffer() {
    let mut b = Bench::new(true, 4);
    let direct = b.request(1); // 16 writable bytes
    let readonly = b.request(0); // nothing writable
    let indirect = b.request(3); // 48 writable bytes, through a table
    assert_eq!(b.queue.counters().indirect, 1);
    assert_eq!(b.device.available().len(), 3);
    b.device.push_used(Bench::id(direct), 17);
    b.device.push_used(Bench::id(readonly), 1);
    b.device.push_used(Bench::id(indirect), 49);
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
    assert_eq!(b.queue.counters().device_errors, 3);

    // The exact maximum is fine. Without the WRITE flag (QEMU never sets it
    // in used descriptors) the length still counts, and is still checked.
    let again = b.request(3);
    let no_write_flag = b.request(1);
    let no_write_flag_too_long = b.request(1);
    b.device.available();
    b.device.push_used(Bench::id(again), 48);
    b.device
        .push_used_without_write_flag(Bench::id(no_write_flag), 16);
    b.device
        .push_used_without_write_flag(Bench::id(no_write_flag_too_long), 0xffff_ffff);
    assert_eq!(b.pop(), Ok(Some((again.index(), 48))));
    assert_eq!(b.pop(), Ok(Some((no_write_flag.index(), 16))));
    assert_eq!(
        b.pop(),
        Err(QueueError::UsedLengthTooLong {
            token: no_write_flag_too_long,
            len: 0xffff_ffff,
            max: 16
        })
    );
    b.assert_idle_and_whole();
}

#[test]
fn flags_that_are_not_a_used_descriptor_for_this_lap_are_ignored() {
    let mut b = Bench::new(false, 0);
    let a = b.request(1);
    b.device.available();
    let at = b.device.next_used();
    assert_eq!(
        at,
        Slot {
            offset: 0,
            wrap: true
        }
    );
    // USED matches the wrap counter but AVAIL does not; then both of the other lap.
    for flags in [F_USED | F_WRITE, F_WRITE, 0, F_AVAIL] {
        b.device.write_used_at(0, Bench::id(a), 16, flags);
        assert_eq!(b.pop(), Ok(None), "flags {flags:#06x}");
        assert!(!b.queue.enable_interrupts());
    }
    b.device
        .write_used_at(0, Bench::id(a), 16, F_AVAIL | F_USED | F_WRITE);
    assert!(b.queue.enable_interrupts(), "now it is used");
    assert_eq!(b.pop(), Ok(Some((a.index(), 16))));
    b.assert_idle_and_whole();
}

#[test]
fn a_used_descriptor_while_nothing_is_published_is_ignored() {
    let mut b = Bench::new(true, 0);
    b.device.push_used(0, 4);
    assert_eq!(b.pop(), Ok(None));
    let hidden = b.add(1);
    b.device.push_used(Bench::id(hidden), 4);
    assert_eq!(
        b.pop(),
        Ok(None),
        "added but not published: nothing to expect"
    );
    assert!(!b.queue.is_broken());
    assert_eq!(b.queue.counters().device_errors, 0);
    b.reset_expecting(vec![hidden]);
}

#[test]
fn exactly_a_full_ring_of_completions_in_reverse_is_accepted() {
    let mut b = Bench::new(true, 0);
    let tokens: Vec<Token> = (0..SIZE).map(|_| b.request(0)).collect();
    assert_eq!(b.device.available().len(), SIZE as usize);
    for &t in tokens.iter().rev() {
        b.device.push_used(Bench::id(t), 0);
    }
    for &t in tokens.iter().rev() {
        assert_eq!(b.pop(), Ok(Some((t.index(), 0))));
    }
    b.assert_idle_and_whole();
    assert_eq!(
        b.queue.next_used_position(),
        RingPosition {
            offset: 0,
            wrap: false
        }
    );
}

/// The driver's reading of the device event suppression structure, value by
/// value: exact at the edges of the batch just published, and notifying
/// whenever the value is not a well-formed DISABLE or DESC.
#[test]
fn device_event_values_decide_exactly_and_err_on_the_side_of_notifying() {
    // Each publish makes slots 0 and 1 (wrap 1) available on a 7-slot ring.
    let cases: [(bool, u16, u16, NotifyDecision, &str); 10] = [
        (
            true,
            0x8000,
            event_flags::DESC,
            NotifyDecision::Notify,
            "first slot of the batch",
        ),
        (
            true,
            0x8000 | 1,
            event_flags::DESC,
            NotifyDecision::Notify,
            "last slot of the batch",
        ),
        (
            true,
            0x8000 | 2,
            event_flags::DESC,
            NotifyDecision::Suppressed,
            "not reached yet",
        ),
        (
            true,
            6,
            event_flags::DESC,
            NotifyDecision::Suppressed,
            "slot 6 of the lap before: passed",
        ),
        (
            true,
            0,
            event_flags::DESC,
            NotifyDecision::Suppressed,
            "slot 0 of the next lap",
        ),
        (
            true,
            0x8000 | 100,
            event_flags::DESC,
            NotifyDecision::Notify,
            "offset outside the ring",
        ),
        (true, 0, 3, NotifyDecision::Notify, "reserved value"),
        (
            false,
            0x8000 | 3,
            event_flags::DESC,
            NotifyDecision::Notify,
            "DESC without EVENT_IDX",
        ),
        (
            true,
            0xffff,
            0xfffd,
            NotifyDecision::Suppressed,
            "DISABLE with reserved bits set",
        ),
        (
            false,
            0,
            event_flags::ENABLE,
            NotifyDecision::Notify,
            "ENABLE",
        ),
    ];
    for (event_idx, off_wrap, flags, expected, what) in cases {
        let mut b = Bench::new(event_idx, 0);
        b.device.set_device_event(off_wrap, flags);
        b.add(0);
        b.add(0);
        assert_eq!(
            b.queue.publish(),
            expected,
            "{what}: event_idx {event_idx}, off_wrap {off_wrap:#06x}, flags {flags:#06x}"
        );
    }
}

/// Random garbage in every device-writable field, many rounds: only the
/// documented errors, every token completed at most once, and after a reset
/// every descriptor is back.
#[test]
fn random_garbage_never_panics_or_leaks() {
    let mut b = Bench::new(true, 4);
    let mut rng = Rng::new(0xbad_d0e5);
    let mut seen_errors = BTreeSet::new();
    let mut completed = 0;
    for _round in 0..400 {
        let mut in_flight = BTreeSet::new();
        for _ in 0..1 + rng.below(6) {
            let base = b.memory.device_addr();
            let mut segments = vec![Segment::readable(base, 8)];
            for i in 0..rng.below(5) {
                segments.push(Segment::writable(base + 64 + 16 * i, 16));
            }
            match b.queue.add(&segments) {
                Ok(t) => {
                    in_flight.insert(t);
                }
                Err(QueueError::QueueFull { .. }) => break,
                Err(e) => panic!("{e}"),
            }
            b.device
                .set_device_event(rng.next_u64() as u16, rng.next_u64() as u16);
            let _ = b.queue.publish();
        }
        let ids: Vec<(u16, u16)> = b.device.available();
        for _ in 0..rng.below(10) {
            let id = match rng.below(4) {
                0 => rng.next_u64() as u16,
                1 => rng.below(SIZE as u64 + 2) as u16,
                _ if !ids.is_empty() => ids[rng.below(ids.len() as u64) as usize].0,
                _ => 0,
            };
            let len = match rng.below(3) {
                0 => rng.next_u64() as u32,
                _ => rng.below(70) as u32,
            };
            match rng.below(8) {
                0 => {
                    // Anything, anywhere.
                    let slot = rng.below(SIZE as u64) as u16;
                    b.device.write_used_at(slot, id, len, rng.next_u64() as u16);
                }
                1 => {
                    let skip = rng.below(SIZE as u64 + 1) as u16;
                    b.device.push_used_skipping(id, len, skip);
                }
                _ => b.device.push_used(id, len),
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
                    completed += 1;
                }
                Err(QueueError::UsedLengthTooLong { token, len, max }) => {
                    assert!(len > max);
                    assert!(in_flight.remove(&token), "completed twice or never issued");
                    seen_errors.insert("length");
                }
                Err(QueueError::UsedIdOutOfRange { id, .. }) => {
                    assert!(id >= u32::from(SIZE));
                    assert!(b.queue.is_broken());
                    seen_errors.insert("range");
                    break;
                }
                Err(QueueError::UsedIdNotInFlight { .. }) => {
                    assert!(b.queue.is_broken());
                    seen_errors.insert("free");
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
        b.reset_expecting(in_flight.into_iter().collect());
    }
    assert!(completed > 30, "only {completed} good completions");
    assert_eq!(
        seen_errors.into_iter().collect::<Vec<_>>(),
        ["free", "length", "range"],
        "the garbage must exercise every check"
    );
}

// ---- trace narration ------------------------------------------------------

use tests::log_capture::{capture, install_logger};

#[test]
fn the_queue_narrates_the_wrap_counters_and_the_desc_event_arithmetic() {
    install_logger();
    let mut queue = Packed::new(QueueConfig::new(3, 5, MODERN).with_event_idx(true)).unwrap();
    let mut device = HostilePackedDevice::new(queue.addresses());
    let memory = DmaRegion::<HostHal>::new(TEST_OWNER, PAGE_SIZE).unwrap();
    let seg = Segment::readable(memory.device_addr(), 8);
    // A simple, correct device: bring both positions to slot 3 of the second lap.
    for _ in 0..8 {
        let token = queue.add(&[seg]).unwrap();
        let _ = queue.publish();
        for (id, _) in device.available() {
            device.push_used(id, 0);
        }
        assert_eq!(queue.pop_used().unwrap().map(|u| u.token), Some(token));
    }
    assert_eq!(
        queue.next_avail_position(),
        RingPosition {
            offset: 3,
            wrap: false
        }
    );

    // The worked example of docs/08-packed-ring.md.
    let (decisions, lines) = capture(|| {
        for _ in 0..4 {
            queue.add(&[seg]).unwrap();
        }
        device.set_device_event(0x8000, event_flags::DESC); // slot 0, wrap 1
        let first = queue.publish();
        for (id, _) in device.available() {
            device.push_used(id, 0);
        }
        let popped = pop_all(&mut queue).len();
        queue.add(&[seg]).unwrap();
        device.set_device_event(0x8000 | 4, event_flags::DESC); // slot 4, wrap 1
        let second = queue.publish();
        (first, popped, second)
    });
    assert_eq!(
        decisions,
        (NotifyDecision::Notify, 4, NotifyDecision::Suppressed)
    );
    let text = lines.join("\n");
    for expected in [
        "vq3: publish: 4 buffer(s) made available, driver position 3 (wrap 0) -> 2 (wrap 1); device event suppression = DESC at 0 (wrap 1); as positions mod 2*size = 10 (offset, + size when the wrap counter is 0): old 8, new 2, event 0; need_event: (new - event - 1) mod 10 = (2 - 0 - 1) mod 10 = 1 < (new - old) mod 10 = (2 - 8) mod 10 = 4 -> notify",
        "(new - event - 1) mod 10 = (3 - 4 - 1) mod 10 = 8 >= (new - old) mod 10 = (3 - 2) mod 10 = 1 -> suppressed",
        "desc[4 (wrap 0)]: addr",
        "flags 0x8000 = AVAIL=0 USED=1 (head: flags held back until publish)",
        "desc[0 (wrap 1)]: flags 0x8080 = AVAIL=1 USED=1: AVAIL = USED = 1 = the device wrap counter we expect, so used",
        "driver event suppression := DESC at 1 (wrap 1)",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn the_same_block_read_narrated_through_both_rings() {
    // The example request of docs/03 and docs/07: a 16-byte header, 512 bytes
    // of data and a status byte.
    let narrate = |kind: RingKind| {
        let (lines_and_data, lines) = capture(|| {
            let mut queue = Vq::new(kind, QueueConfig::new(0, 8, MODERN)).unwrap();
            let mut model: Box<dyn Device> = match kind {
                RingKind::Split => Box::new(VqModel::new(queue.addresses(), false)),
                RingKind::Packed => Box::new(PackedModel::new(queue.addresses(), false)),
            };
            let header = SharedBuffer::new(vec![0u8; 16], Direction::ToDevice);
            let data = SharedBuffer::for_device(512);
            let status = SharedBuffer::for_device(1);
            let token = queue
                .add(&[header.segment(), data.segment(), status.segment()])
                .unwrap();
            let decision = queue.publish();
            model.published(decision.should_notify());
            let chains = model.take();
            model.complete(&chains[0], &[0x42; 513]);
            let chain = chains[0].clone();
            let used = queue.pop_used().unwrap();
            header.finish();
            (
                decision,
                chain.descriptors,
                used.map(|u| (u.token == token, u.len)),
                data.finish(),
                status.finish(),
            )
        });
        (lines_and_data, lines.join("\n"))
    };
    let (split, split_text) = narrate(RingKind::Split);
    let (packed, packed_text) = narrate(RingKind::Packed);
    assert_eq!(split, packed, "same decision, chain, completion and data");
    assert_eq!(split.0, NotifyDecision::Notify);
    assert_eq!(split.2, Some((true, 513)));
    assert_eq!(split.3, vec![0x42; 512]);
    assert!(split_text.contains("avail.ring[0] = 0"), "{split_text}");
    for expected in [
        "vq0: packed ring, 8 descriptors",
        "vq0: request of 3 segment(s) as buffer id 0, a direct chain (513 bytes device-writable):",
        "vq0:   desc[0 (wrap 1)]: addr",
        "len 16, device-readable, id 0, flags 0x0081 = AVAIL=1 USED=0 | NEXT (head: flags held back until publish)",
        "len 512, device-writable, id 0, flags 0x0083 = AVAIL=1 USED=0 | NEXT | WRITE",
        "len 1, device-writable, id 0, flags 0x0082 = AVAIL=1 USED=0 | WRITE",
        "vq0: publish: 1 buffer(s) made available, driver position 0 (wrap 1) -> 3 (wrap 1); device event suppression flags = 0x0 (ENABLE) -> notify",
        "vq0: desc[0 (wrap 1)]: flags 0x8082 = AVAIL=1 USED=1 | WRITE: AVAIL = USED = 1 = the device wrap counter we expect, so used: id 0, len 513: request #0 done; skip its 3 descriptor(s): next used position 3 (wrap 1)",
    ] {
        assert!(
            packed_text.contains(expected),
            "missing {expected:?} in:\n{packed_text}"
        );
    }
}

#[test]
fn next_token_names_the_token_the_next_add_returns() {
    // One-, two- and three-segment requests (direct chains and indirect
    // tables) in a small queue, half of them completed in a shuffled order
    // each round, so the free id list is reshuffled over and over.
    let (mut queue, mut model) = setup(7, true, 4);
    let mut rng = Rng::new(5);
    let mut live: HashMap<Token, (SharedBuffer, SharedBuffer)> = HashMap::new();
    let mut pending: Vec<Chain> = Vec::new();
    let mut added = 0usize;
    let mut saw_full = false;
    for round in 0..40usize {
        loop {
            let promised = queue.next_token();
            if queue.free_descriptors() == 0 {
                // Ids outnumber requests that fit: an id may be free while
                // the descriptors are not, and `add` then reports the queue full.
                assert_eq!(
                    promised.is_none(),
                    queue.in_flight() == 7,
                    "no free id, no token"
                );
                saw_full = true;
                break;
            }
            let out = SharedBuffer::new(vec![round as u8; 8], Direction::ToDevice);
            let back = SharedBuffer::for_device(8);
            let mut segments = vec![out.segment(); (round + added) % 3];
            segments.push(back.segment());
            match queue.add(&segments) {
                Ok(token) => {
                    assert_eq!(promised, Some(token), "round {round}, request {added}");
                    added += 1;
                    live.insert(token, (out, back));
                }
                Err(QueueError::QueueFull { .. }) => break,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        let _ = publish(&mut queue, &mut model);
        pending.extend(model.take_available());
        rng.shuffle(&mut pending);
        let finish = pending.len().div_ceil(2);
        for chain in pending.drain(..finish) {
            model.complete(&chain, &[0xaa; 8]);
        }
        model.signal_used();
        for used in pop_all(&mut queue) {
            let (out, back) = live.remove(&used.token).expect("a token we issued");
            out.finish();
            assert_eq!(back.finish(), [0xaa; 8]);
        }
    }
    assert!(saw_full, "the queue filled up at least once");
    assert!(added > 100, "{added} requests added");
}
