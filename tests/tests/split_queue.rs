//! The split virtqueue driver (`drivers::queue::SplitQueue`) against an
//! independent device model built on rust-vmm's `virtio-queue`
//! (`tests::vq_model`). Every test checks data, counts or error values.
//!
//! Set `RUST_LOG=trace` to see the queue narrate itself on stderr.

use std::collections::HashMap;

use drivers::queue::{
    choose_queue_size, NotifyDecision, QueueConfig, QueueError, Ring, RingLayout, Segment,
    SplitQueue, Token, Used,
};
use hal::{Direction, DmaRegion, PAGE_SIZE};
use tests::host_hal::{HostHal, TEST_OWNER};
use tests::hostile::HostileDevice;
use tests::vq_model::{Chain, Rng, SharedBuffer, VqModel};

type Queue = SplitQueue<HostHal>;

const LEGACY: RingLayout = RingLayout::Contiguous { align: 4096 };
const MODERN: RingLayout = RingLayout::Separate;

fn setup(size: u16, layout: RingLayout, event_idx: bool, indirect: u16) -> (Queue, VqModel) {
    install_logger();
    let config = QueueConfig::new(0, size, layout)
        .with_event_idx(event_idx)
        .with_indirect(indirect);
    let queue = Queue::new(config).expect("queue");
    let model = VqModel::new(queue.addresses(), event_idx);
    (queue, model)
}

/// Publishes, tells the model what the driver decided, returns the decision.
fn publish(queue: &mut Queue, model: &mut VqModel) -> NotifyDecision {
    let decision = queue.publish();
    if decision != NotifyDecision::NothingNew {
        model.driver_published(decision.should_notify());
    }
    decision
}

fn pop_all(queue: &mut Queue) -> Vec<Used> {
    let mut done = Vec::new();
    while let Some(used) = queue.pop_used().expect("a correct device") {
        done.push(used);
    }
    done
}

#[test]
fn a_direct_chain_round_trips_real_data() {
    let (mut queue, mut model) = setup(8, MODERN, false, 0);
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
    assert_eq!(chain.head as usize, token.index());
    assert!(!chain.indirect);
    assert_eq!(chain.descriptors, 3);
    assert_eq!(chain.readable, b"read sector 7");
    assert_eq!(chain.writable.len(), 2);
    assert_eq!(chain.writable_len(), 65);

    let mut reply: Vec<u8> = (0..64u8).map(|i| i ^ 0x5a).collect();
    reply.push(0);
    model.complete(chain, &reply);
    assert!(model.signal_used());

    assert_eq!(queue.pop_used(), Ok(Some(Used { token, len: 65 })));
    assert_eq!(queue.pop_used(), Ok(None));
    assert_eq!(data.finish(), &reply[..64]);
    assert_eq!(status.finish(), [0]);
    assert_eq!(header.finish(), b"read sector 7");
    assert_eq!(queue.free_descriptors(), 8);
    assert_eq!(queue.in_flight(), 0);
    let c = queue.counters();
    assert_eq!(
        (c.added, c.indirect, c.completions, c.notifications),
        (1, 0, 1, 1)
    );
}

#[test]
fn an_indirect_table_round_trips_real_data() {
    let (mut queue, mut model) = setup(8, MODERN, true, 8);
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
    assert!(chain.indirect, "the device must see an INDIRECT head");
    assert_eq!(chain.descriptors, 6);
    let mut expected_in = vec![1, 2, 3, 4];
    expected_in.extend(0..100u8);
    assert_eq!(chain.readable, expected_in);
    assert_eq!(chain.writable_len(), 97);

    // 90 bytes: fills the first three buffers (10 + 30 + 50), leaves the last.
    let reply: Vec<u8> = (0..90u8).map(|i| i.wrapping_mul(7)).collect();
    model.complete(chain, &reply);
    assert!(model.signal_used());
    assert_eq!(queue.pop_used(), Ok(Some(Used { token, len: 90 })));

    let got: Vec<Vec<u8>> = outs.into_iter().map(SharedBuffer::finish).collect();
    assert_eq!(got[0], &reply[..10]);
    assert_eq!(got[1], &reply[10..40]);
    assert_eq!(got[2], &reply[40..90]);
    assert_eq!(
        got[3],
        vec![tests::host_hal::POISON; 7],
        "untouched by the device"
    );
    assert_eq!(queue.free_descriptors(), 8);
    assert_eq!(queue.counters().indirect, 1);
    assert_eq!(model.stats.indirect_chains, 1);
}

#[test]
fn direct_or_indirect_follows_the_documented_rule() {
    let (mut queue, mut model) = setup(8, MODERN, false, 4);
    let memory = DmaRegion::<HostHal>::new(TEST_OWNER, PAGE_SIZE).unwrap();
    let base = memory.device_addr();
    let request = |n: usize| -> Vec<Segment> {
        (0..n)
            .map(|i| Segment::writable(base + 64 * i as u64, 64))
            .collect()
    };

    let mut expect_indirect = Vec::new();
    let mut add = |queue: &mut Queue, n: usize, indirect: bool, free_after: u16| {
        let token = queue.add(&request(n)).unwrap();
        assert_eq!(queue.free_descriptors(), free_after, "after {n} segments");
        expect_indirect.push((token.index() as u16, indirect));
    };
    add(&mut queue, 1, false, 7); // short: direct
    add(&mut queue, 2, false, 5); // short: direct
    add(&mut queue, 3, true, 4); // long: indirect
    add(&mut queue, 4, true, 3); // long: indirect
    assert_eq!(
        queue.add(&request(5)),
        Err(QueueError::QueueFull { needed: 5, free: 3 }),
        "longer than a table and more than the free descriptors"
    );
    add(&mut queue, 2, false, 1); // short and room: direct
    add(&mut queue, 2, true, 0); // short but scarce: indirect
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
    let (mut queue, mut model) = setup(8, MODERN, false, 4);
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
    assert_eq!(model.avail_idx(), 0);
    assert_eq!(queue.counters().added, 0);
}

/// Request `seq` carries its number; the device answers with `seq * 3 + 1`.
fn answer(seq: u64) -> u64 {
    seq.wrapping_mul(3).wrapping_add(1)
}

fn seq_of(chain: &Chain) -> u64 {
    u64::from_le_bytes(chain.readable[..8].try_into().expect("8-byte request"))
}

#[test]
fn many_in_flight_complete_out_of_order() {
    let (mut queue, mut model) = setup(32, MODERN, true, 0);
    let mut requests = HashMap::new();
    for seq in 0..16u64 {
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
    assert_eq!(chains.len(), 16);
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
    assert_eq!(
        popped_order, order,
        "completions come back in the device's order"
    );
    assert_ne!(
        order,
        (0..16).map(|i| 2 * i).collect::<Vec<u16>>(),
        "the shuffle must actually reorder"
    );
    for used in popped {
        let (seq, out, back) = requests.remove(&used.token).expect("a token we issued");
        assert_eq!(used.len, 8);
        out.finish();
        assert_eq!(back.finish(), answer(seq).to_le_bytes());
    }
    assert!(requests.is_empty());
    assert_eq!(queue.free_descriptors(), 32);
}

#[test]
fn a_batch_is_published_under_one_notification() {
    let (mut queue, mut model) = setup(16, MODERN, true, 0);
    let memory = DmaRegion::<HostHal>::new(TEST_OWNER, PAGE_SIZE).unwrap();
    for i in 0..10u64 {
        queue
            .add(&[Segment::readable(memory.device_addr() + 8 * i, 8)])
            .unwrap();
    }
    assert_eq!(queue.unpublished(), 10);
    assert_eq!(model.avail_idx(), 0, "avail.idx untouched until publish");
    assert_eq!(publish(&mut queue, &mut model), NotifyDecision::Notify);
    assert_eq!(model.avail_idx(), 10);
    assert_eq!(queue.unpublished(), 0);
    assert_eq!(publish(&mut queue, &mut model), NotifyDecision::NothingNew);
    assert_eq!(model.take_available().len(), 10);
    let c = queue.counters();
    assert_eq!((c.added, c.publishes, c.notifications), (10, 1, 1));
    assert_eq!(model.stats.notifications_received, 1);
}

/// The driver-to-device direction, scripted so each step's decision is known.
fn notification_script(event_idx: bool) {
    let (mut queue, mut model) = setup(16, MODERN, event_idx, 0);
    let memory = DmaRegion::<HostHal>::new(TEST_OWNER, PAGE_SIZE).unwrap();
    let seg = Segment::readable(memory.device_addr(), 8);
    let add = |queue: &mut Queue, n: usize| {
        for _ in 0..n {
            queue.add(&[seg]).unwrap();
        }
    };
    let mut decisions = Vec::new();

    add(&mut queue, 3);
    decisions.push(publish(&mut queue, &mut model)); // device asleep: notify
    add(&mut queue, 2);
    decisions.push(publish(&mut queue, &mut model)); // device awake: suppressed
    for chain in model.take_available() {
        model.complete_with_len(chain.head, 0);
    }
    assert!(model.try_sleep(), "nothing pending: the device sleeps");
    if event_idx {
        assert_eq!(
            model.avail_event(),
            5,
            "the device asks to hear about entry 5"
        );
    }
    assert_eq!(pop_all(&mut queue).len(), 5);

    add(&mut queue, 1);
    decisions.push(publish(&mut queue, &mut model)); // asleep again: notify
    assert_eq!(model.take_available().len(), 1);
    add(&mut queue, 1);
    decisions.push(publish(&mut queue, &mut model)); // awake: suppressed
    assert!(
        !model.try_sleep(),
        "work arrived before the device re-enabled notifications: it stays awake"
    );
    add(&mut queue, 1);
    decisions.push(publish(&mut queue, &mut model)); // still awake: suppressed
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
fn event_index_suppresses_notifications_exactly_when_the_device_is_awake() {
    notification_script(true);
}

#[test]
fn no_notify_flag_suppresses_notifications_exactly_when_the_device_is_awake() {
    notification_script(false);
}

/// The device-to-driver direction: which completions interrupt.
fn interrupt_script(event_idx: bool) -> Vec<bool> {
    let (mut queue, mut model) = setup(8, MODERN, event_idx, 0);
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
    let complete = |model: &mut VqModel, i: usize| {
        model.complete_with_len(chains[i].head, 8);
        model.signal_used()
    };

    interrupts.push(complete(&mut model, 0)); // driver waiting for the first completion
    interrupts.push(complete(&mut model, 1)); // driver has not looked yet
    assert_eq!(pop_all(&mut queue).len(), 2);
    if event_idx {
        assert_eq!(model.used_event(), 2, "used_event follows the driver");
    }
    queue.disable_interrupts();
    interrupts.push(complete(&mut model, 2)); // driver said: no interrupts
    assert!(
        queue.enable_interrupts(),
        "a completion arrived while interrupts were off: poll again"
    );
    assert_eq!(pop_all(&mut queue).len(), 1);
    assert!(!queue.enable_interrupts(), "nothing pending now");
    interrupts.push(complete(&mut model, 3)); // driver waiting: must interrupt
    assert_eq!(pop_all(&mut queue).len(), 1);
    assert_eq!(queue.free_descriptors(), 8);
    assert_eq!(
        model.stats.interrupts_sent as usize,
        interrupts.iter().filter(|&&i| i).count()
    );
    interrupts
}

#[test]
fn event_index_suppresses_interrupts_until_the_driver_catches_up() {
    assert_eq!(interrupt_script(true), [true, false, false, true]);
}

#[test]
fn no_interrupt_flag_suppresses_interrupts_while_the_driver_polls() {
    assert_eq!(interrupt_script(false), [true, true, false, true]);
}

/// Runs `total` requests through a queue with random batch sizes, random
/// completion order and a driver that alternates between polling and waiting
/// for interrupts; checks every answer and both notification directions.
fn run_many(layout: RingLayout, size: u16, event_idx: bool, indirect: u16, total: u64, seed: u64) {
    let (mut queue, mut model) = setup(size, layout, event_idx, indirect);
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

    while finished < total {
        steps += 1;
        assert!(
            steps < total * 20 + 1000,
            "no progress after {steps} steps: {finished}/{total} done, {:?}",
            model.stats
        );
        // Driver: add a random batch (until descriptors run out), publish once.
        let room = (total - issued).min(free_slots.len() as u64);
        if room > 0 {
            for _ in 0..=rng.below(room) {
                let slot = *free_slots.last().expect("room > 0");
                let seq = issued;
                let request = requests.device_addr() + slot as u64 * 8;
                let answer_at = answers.device_addr() + slot as u64 * 8;
                let segments = if size >= 3 && rng.below(2) == 0 {
                    vec![
                        Segment::readable(request, 8),
                        Segment::writable(answer_at, 4),
                        Segment::writable(answer_at + 4, 4),
                    ]
                } else {
                    vec![
                        Segment::readable(request, 8),
                        Segment::writable(answer_at, 8),
                    ]
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
            let _ = publish(&mut queue, &mut model);
        }

        // Device: take new work if awake, finish a random part of its backlog.
        if !model.is_asleep() {
            device_pending.extend(model.take_available());
        }
        rng.shuffle(&mut device_pending);
        let finish_now = rng.below(device_pending.len() as u64 + 1) as usize;
        for chain in device_pending.drain(..finish_now) {
            model.complete(&chain, &answer(seq_of(&chain)).to_le_bytes());
        }
        if finish_now > 0 {
            let interrupt = model.signal_used();
            if driver_waiting && !interrupt {
                // The driver would sleep forever; count it and let it poll on.
                lost_interrupts += 1;
            }
            driver_waiting = false;
        }
        if !model.is_asleep() && rng.below(3) == 0 {
            model.try_sleep();
        }

        // Driver: collect completions unless it is waiting for an interrupt.
        if !driver_waiting {
            queue.disable_interrupts();
            for used in pop_all(&mut queue) {
                let (slot, seq) = by_token.remove(&used.token).expect("issued token");
                assert_eq!(used.len, 8);
                assert_eq!(
                    answers.read::<u64>(slot * 8),
                    Some(answer(seq)),
                    "answer to {seq}"
                );
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
    assert_eq!(model.next_avail(), (total % 65536) as u16);
    assert_eq!(model.next_used(), (total % 65536) as u16);
    let c = queue.counters();
    assert_eq!(c.completions, total);
    assert_eq!(c.device_errors, 0);
    let s = model.stats;
    assert_eq!(
        s.notifications_missed, 0,
        "a sleeping device was not notified"
    );
    assert_eq!(s.notifications_spurious, 0, "an awake device was notified");
    assert_eq!(c.notifications, s.notifications_received);
    assert!(c.notifications_suppressed > 0, "suppression never happened");
    assert_eq!(lost_interrupts, 0, "a waiting driver was not interrupted");
    assert!(s.interrupts_suppressed > 0);
    assert_eq!(s.indirect_chains, c.indirect);
    if indirect >= 3 {
        // Three-segment requests go indirect whenever tables exist.
        assert!(c.indirect > 0, "indirect tables never used");
    }
}

#[test]
fn indices_wrap_past_65535_with_event_index_and_indirect() {
    run_many(MODERN, 64, true, 4, 70_000, 1);
}

#[test]
fn indices_wrap_past_65535_with_flags_and_the_legacy_layout() {
    run_many(LEGACY, 64, false, 0, 70_000, 2);
}

#[test]
fn small_queues_under_pressure() {
    for (seed, size) in [(3u64, 2u16), (4, 4), (5, 8)] {
        run_many(MODERN, size, true, size, 5_000, seed);
        run_many(LEGACY, size, false, 0, 5_000, seed + 100);
    }
}

#[test]
fn both_layouts_put_the_rings_where_the_transport_expects() {
    let legacy = Queue::new(QueueConfig::new(0, 256, LEGACY)).unwrap();
    let a = legacy.addresses();
    assert_eq!(a.size, 256);
    assert_eq!(
        a.desc % 4096,
        0,
        "legacy QUEUE_PFN needs a page-aligned block"
    );
    assert_eq!(a.driver, a.desc + 16 * 256);
    assert_eq!(
        a.device,
        a.desc + 8192,
        "used ring at the next 4096 boundary"
    );
    assert_eq!(HostHal::live_dma_pages(), 3);

    let mmio_v1 = Queue::new(QueueConfig::new(
        1,
        16,
        RingLayout::Contiguous { align: 64 },
    ))
    .unwrap();
    let b = mmio_v1.addresses();
    assert_eq!(b.driver, b.desc + 256);
    assert_eq!(b.device, b.desc + 320, "256 + 38 rounded up to 64");

    let modern = Queue::new(QueueConfig::new(2, 256, MODERN)).unwrap();
    let m = modern.addresses();
    assert_eq!(m.desc % 16, 0);
    assert_eq!(m.driver % 2, 0);
    assert_eq!(m.device % 64, 0);
    assert!(m.device >= m.driver + 6 + 2 * 256);

    drop((legacy, mmio_v1, modern));
    assert_eq!(
        HostHal::live_dma_pages(),
        0,
        "ring memory is freed with the queue"
    );

    assert_eq!(
        Queue::new(QueueConfig::new(0, 100, MODERN)).err(),
        Some(QueueError::InvalidSize(100))
    );
    assert_eq!(
        Queue::new(QueueConfig::new(0, 8, MODERN).with_indirect(9)).err(),
        Some(QueueError::InvalidIndirectCapacity(9))
    );
    assert_eq!(
        Queue::new(QueueConfig::new(
            0,
            8,
            RingLayout::Contiguous { align: 100 }
        ))
        .err(),
        Some(QueueError::InvalidAlignment(100))
    );
}

#[test]
fn the_legacy_layout_round_trips_with_a_typical_legacy_size() {
    let (mut queue, mut model) = setup(256, LEGACY, false, 0);
    let out = SharedBuffer::new(b"ping".to_vec(), Direction::ToDevice);
    let back = SharedBuffer::for_device(4);
    let token = queue.add(&[out.segment(), back.segment()]).unwrap();
    assert!(publish(&mut queue, &mut model).should_notify());
    let chains = model.take_available();
    assert_eq!(chains[0].readable, b"ping");
    model.complete(&chains[0], b"pong");
    assert_eq!(queue.pop_used(), Ok(Some(Used { token, len: 4 })));
    assert_eq!(back.finish(), b"pong");
    out.finish();
}

#[test]
fn queue_size_choice() {
    assert_eq!(choose_queue_size(256, 1024, false), Ok(256));
    assert_eq!(choose_queue_size(1024, 256, false), Ok(256));
    assert_eq!(
        choose_queue_size(1000, 1024, false),
        Ok(512),
        "rounded down to a power of two"
    );
    assert_eq!(choose_queue_size(1024, 300, false), Ok(256));
    assert_eq!(
        choose_queue_size(1024, 256, true),
        Ok(1024),
        "legacy cannot choose"
    );
    assert_eq!(
        choose_queue_size(300, 1024, true),
        Err(QueueError::InvalidSize(300))
    );
    assert_eq!(
        choose_queue_size(0, 256, false),
        Err(QueueError::NoSuchQueue)
    );
    assert_eq!(
        choose_queue_size(256, 0, false),
        Err(QueueError::InvalidSize(0))
    );
    assert_eq!(choose_queue_size(65535, 65535, false), Ok(32768));
}

#[test]
fn reset_hands_back_every_request_in_flight() {
    let (mut queue, mut model) = setup(8, MODERN, true, 4);
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
    assert_eq!(queue.free_descriptors(), 8);
    assert_eq!(queue.in_flight(), 0);

    // The ring is zeroed, so a freshly reset device can start again.
    let mut model = VqModel::new(queue.addresses(), true);
    let token = queue.add(&[seg(0)]).unwrap();
    assert!(publish(&mut queue, &mut model).should_notify());
    let chains = model.take_available();
    assert_eq!(chains.len(), 1);
    model.complete_with_len(chains[0].head, 10);
    assert_eq!(queue.pop_used(), Ok(Some(Used { token, len: 10 })));
}

// ---- trace narration ------------------------------------------------------

use tests::log_capture::{capture, install_logger};

#[test]
fn the_queue_narrates_the_event_index_arithmetic_across_the_wrap() {
    install_logger();
    let mut queue = Queue::new(QueueConfig::new(3, 4, MODERN).with_event_idx(true)).unwrap();
    let mut device = HostileDevice::new(queue.addresses());
    let memory = DmaRegion::<HostHal>::new(TEST_OWNER, PAGE_SIZE).unwrap();
    let seg = Segment::readable(memory.device_addr(), 8);
    // A simple, correct device: bring both indices to 65534.
    for _ in 0..65534u32 {
        let token = queue.add(&[seg]).unwrap();
        let _ = queue.publish();
        for head in device.available() {
            device.push_used(head as u32, 0);
        }
        assert_eq!(queue.pop_used().unwrap().map(|u| u.token), Some(token));
    }

    // The worked example of docs/03-split-ring.md: old = 65534, new = 2, event = 0.
    let (decisions, lines) = capture(|| {
        for _ in 0..4 {
            queue.add(&[seg]).unwrap();
        }
        device.set_avail_event(0);
        let first = queue.publish();
        for head in device.available() {
            device.push_used(head as u32, 0);
        }
        let popped = pop_all(&mut queue).len();
        queue.add(&[seg]).unwrap();
        device.set_avail_event(4); // the device wants to hear about entry 4, not 2
        let second = queue.publish();
        (first, popped, second)
    });
    assert_eq!(
        decisions,
        (NotifyDecision::Notify, 4, NotifyDecision::Suppressed)
    );
    let text = lines.join("\n");
    assert!(
        text.contains(
            "vq3: publish: avail.idx 65534 -> 2 (4 new); device's avail_event = 0; need_event: (new - avail_event - 1) mod 65536 = (2 - 0 - 1) mod 65536 = 1 < (new - old) mod 65536 = (2 - 65534) mod 65536 = 4 -> notify"
        ),
        "{text}"
    );
    assert!(
        text.contains("(3 - 4 - 1) mod 65536 = 65534 >= (new - old) mod 65536 = (3 - 2) mod 65536 = 1 -> suppressed"),
        "{text}"
    );
    assert!(text.contains("desc["), "descriptor chain narrated: {text}");
    assert!(text.contains("avail.ring["), "avail ring narrated: {text}");
    assert!(text.contains("used.ring["), "used ring narrated: {text}");
    assert!(
        text.contains("used_event := "),
        "used_event narrated: {text}"
    );
}

#[test]
fn next_token_names_the_token_the_next_add_returns() {
    // One-, two- and three-segment requests (direct chains and indirect
    // tables) in a small queue, half of them completed in a shuffled order
    // each round, so the free list is reshuffled over and over.
    let (mut queue, mut model) = setup(8, MODERN, true, 4);
    let mut rng = Rng::new(5);
    let mut live: HashMap<Token, (SharedBuffer, SharedBuffer)> = HashMap::new();
    let mut pending: Vec<Chain> = Vec::new();
    let mut added = 0usize;
    let mut saw_full = false;
    for round in 0..40usize {
        loop {
            let promised = queue.next_token();
            if queue.free_descriptors() == 0 {
                assert_eq!(promised, None, "no free descriptor, no token");
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

#[test]
fn a_descriptor_as_words_has_the_same_bytes_as_the_struct() {
    // Descriptors are stored as two words (`Descriptor::to_words`); the
    // device reads the `struct virtq_desc` layout, so the bytes must match.
    let d =
        drivers::queue::layout::Descriptor::new(0x1122_3344_5566_7788, 0x99aa_bbcc, 0xddee, 0x0f1e);
    let words = d.to_words();
    let mut from_words = [0u8; 16];
    from_words[..8].copy_from_slice(&words[0].to_ne_bytes());
    from_words[8..].copy_from_slice(&words[1].to_ne_bytes());
    let expected: [u8; 16] = [
        0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // addr, little-endian
        0xcc, 0xbb, 0xaa, 0x99, // len
        0xee, 0xdd, // flags
        0x1e, 0x0f, // next
    ];
    assert_eq!(from_words, expected);
}
