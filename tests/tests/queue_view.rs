//! The live queue view (`drivers/src/view/`, `Ring::snapshot`) against
//! rings driven by the device models: the `/api/queues` JSON and the
//! shell's text for split and packed rings, with wrapped indices, and for
//! queues a hostile device broke (the view must stay valid JSON and never
//! panic, whatever the device wrote).
//!
//! The JSON is read back with the strict parser in
//! `tests/src/json_value.rs`, so a document that is not JSON fails here.

use drivers::queue::{
    DescriptorView, NotifyDecision, PackedQueue, QueueConfig, QueueError, Ring, RingKind,
    RingLayout, Segment, SplitQueue,
};
use drivers::transport::{DeviceType, TransportKind};
use drivers::view::{json, text, DeviceRecord, QueueRecord};
use hal::Direction;
use tests::host_hal::HostHal;
use tests::hostile::HostileDevice;
use tests::hostile_packed::HostilePackedDevice;
use tests::json_value::Value;
use tests::log_capture::install_logger;
use tests::packed_model::PackedModel;
use tests::vq_model::{SharedBuffer, VqModel};

fn config(size: u16, event_idx: bool, indirect: u16) -> QueueConfig {
    QueueConfig::new(0, size, RingLayout::Separate)
        .with_event_idx(event_idx)
        .with_indirect(indirect)
}

/// A device record holding `queues`, as the kernel builds one.
fn device(kind: RingKind, queues: Vec<QueueRecord>) -> DeviceRecord {
    let mut record = DeviceRecord::new("blk", DeviceType::Block, "pci 0000:00:04.0");
    record.transport = Some(TransportKind::PciModern);
    record.ring = Some(kind);
    record.state = "up".into();
    record.features = Some(drivers::features::VERSION_1 | drivers::features::RING_EVENT_IDX);
    record.queues = queues;
    record
}

/// Renders `devices` and parses the result (a parse error fails the test).
fn render(devices: &[DeviceRecord]) -> (String, Value) {
    let mut document = String::new();
    json::write_document(&mut document, 1234, devices).expect("writing to a String");
    let value = Value::parse(&document)
        .unwrap_or_else(|e| panic!("/api/queues is not JSON: {e}\n{document}"));
    (document, value)
}

/// The one queue of a one-queue, one-device document.
fn only_queue(value: &Value) -> &Value {
    let devices = value.get("devices").items();
    assert_eq!(devices.len(), 1);
    let queues = devices[0].get("queues").items();
    assert_eq!(queues.len(), 1);
    &queues[0]
}

fn ring_text(record: &DeviceRecord) -> String {
    let mut out = String::new();
    text::write_ring(&mut out, record, &record.queues[0]).expect("writing to a String");
    text::write_queue_header(&mut out).expect("writing to a String");
    text::write_queue_line(&mut out, record, &record.queues[0]).expect("writing to a String");
    out
}

fn one(len: usize, direction: Direction) -> SharedBuffer {
    SharedBuffer::new(vec![0x11; len], direction)
}

/// The stable fields of the issue, present in every queue object.
const STABLE_QUEUE_FIELDS: [&str; 15] = [
    "index",
    "name",
    "size",
    "avail_idx",
    "used_idx",
    "last_used_idx",
    "in_flight",
    "free_descriptors",
    "avail_event",
    "used_event",
    "notifications",
    "suppressed",
    "interrupts",
    "descriptors",
    "broken",
];

#[test]
fn a_split_ring_shows_its_indices_events_and_descriptor_states() {
    install_logger();
    let mut ring: SplitQueue<HostHal> = SplitQueue::new(config(8, true, 4)).expect("queue");
    let mut model = VqModel::new(ring.addresses(), true);
    // A: three segments, so an indirect table (descriptor 0).
    let a = [
        one(16, Direction::ToDevice),
        one(512, Direction::FromDevice),
        one(1, Direction::FromDevice),
    ];
    let a_segments: Vec<Segment> = a.iter().map(SharedBuffer::segment).collect();
    ring.add(&a_segments).expect("add A");
    // B: two segments, a direct chain (descriptors 1 and 2).
    let b = [one(16, Direction::ToDevice), one(8, Direction::FromDevice)];
    let b_token = ring.add(&[b[0].segment(), b[1].segment()]).expect("add B");
    // C: one segment (descriptor 3).
    let c = one(32, Direction::FromDevice);
    ring.add(&[c.segment()]).expect("add C");
    let decision = ring.publish();
    assert_eq!(decision, NotifyDecision::Notify);
    model.driver_published(true);
    let chains = model.take_available();
    assert_eq!(chains.len(), 3);
    // The device finishes B first; the driver collects it.
    model.complete(&chains[1], &[7; 8]);
    assert_eq!(
        ring.pop_used().expect("pop").map(|u| u.token),
        Some(b_token)
    );
    // D: one segment, added and not published: it takes descriptor 1, the
    // head of B's chain, which went back to the front of the free list.
    let d = one(4, Direction::FromDevice);
    ring.add(&[d.segment()]).expect("add D");

    let record = QueueRecord::capture("requestq", &ring, Some(7));
    assert_eq!(
        record.descriptors,
        [
            DescriptorView::Indirect,
            DescriptorView::Pending,
            DescriptorView::Free,
            DescriptorView::Head,
            DescriptorView::Free,
            DescriptorView::Free,
            DescriptorView::Free,
            DescriptorView::Free,
        ]
    );
    let devices = [device(RingKind::Split, vec![record])];
    let (_, value) = render(&devices);
    assert_eq!(value.get("schema").int(), 1);
    assert_eq!(value.get("uptime_ms").int(), 1234);
    assert_eq!(value.get("descriptor_states").get("I").str(), "indirect");
    let blk = &value.get("devices").items()[0];
    assert_eq!(blk.get("type").str(), "blk");
    assert_eq!(blk.get("location").str(), "pci 0000:00:04.0");
    assert_eq!(blk.get("transport").str(), "pci-modern");
    assert_eq!(blk.get("ring").str(), "split");
    let features: Vec<&str> = blk.get("features").items().iter().map(Value::str).collect();
    assert_eq!(features, ["RING_EVENT_IDX", "VERSION_1"]);
    let q = only_queue(&value);
    for field in STABLE_QUEUE_FIELDS {
        assert!(q.has(field), "queue object lacks {field}");
    }
    assert_eq!(q.get("name").str(), "requestq");
    assert_eq!(q.get("size").int(), 8);
    assert_eq!(q.get("avail_idx").int(), 3, "D is not published");
    assert_eq!(
        q.get("avail_idx").int(),
        i64::from(model.avail_idx()),
        "avail.idx as the device reads it"
    );
    assert_eq!(q.get("used_idx").int(), 1);
    assert_eq!(q.get("last_used_idx").int(), 1);
    assert_eq!(q.get("unpublished").int(), 1);
    assert_eq!(q.get("in_flight").int(), 3);
    assert_eq!(q.get("free_descriptors").int(), 5);
    assert_eq!(q.get("used_event").int(), i64::from(model.used_event()));
    assert_eq!(
        q.get("used_event").int(),
        1,
        "interrupt at the next used entry"
    );
    assert_eq!(q.get("avail_event").int(), i64::from(model.avail_event()));
    assert_eq!(q.get("notifications").int(), 1);
    assert_eq!(q.get("suppressed").int(), 0);
    assert_eq!(q.get("interrupts").int(), 7);
    assert_eq!(q.get("indirect").int(), 1);
    assert_eq!(q.get("descriptors").str(), "Ip.H....");
    assert!(!q.get("broken").bool());
    assert!(q.has("split") && !q.has("packed"));
    assert_eq!(q.get("split").get("used_flags").int(), 0);

    let drawing = ring_text(&devices[0]);
    assert!(drawing.contains("split ring, 8 descriptors, event index on"));
    assert!(drawing.contains(" I p . H . . . ."), "{drawing}");
    assert!(drawing.contains("avail.idx 3 (slot 3, A"), "{drawing}");
    assert!(
        drawing.contains(" . + + A . . . ."),
        "waiting for the device: {drawing}"
    );
    assert!(drawing.contains("used.idx 1 (slot 1, U), driver consumed 1"));
    drop((a, b, c, d));
}

#[test]
fn split_indices_are_shown_after_they_wrap_past_65535() {
    install_logger();
    let mut ring: SplitQueue<HostHal> = SplitQueue::new(config(4, false, 0)).expect("queue");
    let mut model = VqModel::new(ring.addresses(), false);
    let rounds: u32 = 65_536 + 2;
    for _ in 0..rounds {
        let buffer = one(8, Direction::FromDevice);
        ring.add(&[buffer.segment()]).expect("add");
        let decision = ring.publish();
        model.driver_published(decision.should_notify());
        for chain in model.take_available() {
            model.complete(&chain, &[1; 8]);
        }
        ring.pop_used().expect("pop").expect("a completion");
        buffer.finish();
    }
    let pending = one(8, Direction::FromDevice);
    ring.add(&[pending.segment()]).expect("add");
    let decision = ring.publish();
    model.driver_published(decision.should_notify());

    let record = QueueRecord::capture("receiveq", &ring, None);
    let (_, value) = render(&[device(RingKind::Split, vec![record])]);
    let q = only_queue(&value);
    assert_eq!(q.get("avail_idx").int(), 3, "65539 mod 65536");
    assert_eq!(q.get("used_idx").int(), 2);
    assert_eq!(q.get("last_used_idx").int(), 2);
    assert_eq!(q.get("avail_slot").int(), 3);
    assert_eq!(q.get("used_slot").int(), 2);
    assert_eq!(q.get("in_flight").int(), 1);
    assert_eq!(q.get("added").int(), i64::from(rounds) + 1);
    assert_eq!(q.get("avail_event"), &Value::Null, "no event index");
    assert_eq!(q.get("interrupts"), &Value::Null, "polled");
    assert_eq!(q.get("descriptors").str().len(), 4);
    assert_eq!(q.get("descriptors").str().matches('H').count(), 1);
}

#[test]
fn a_packed_ring_shows_wrap_counters_used_and_pending_slots() {
    install_logger();
    let mut ring: PackedQueue<HostHal> = PackedQueue::new(config(5, true, 0)).expect("queue");
    let mut model = PackedModel::new(ring.addresses(), true);
    // Seven single-descriptor requests through: both sides pass the end of
    // the five-slot ring once (wrap counters 0 from slot 0 of lap two on).
    for _ in 0..7 {
        let buffer = one(8, Direction::FromDevice);
        ring.add(&[buffer.segment()]).expect("add");
        let decision = ring.publish();
        model.driver_published(decision.should_notify());
        for chain in model.take_available() {
            model.complete(&chain, &[1; 8]);
        }
        ring.pop_used().expect("pop").expect("a completion");
        buffer.finish();
    }
    // A two-descriptor chain (slots 2, 3) and a single one (slot 4); the
    // device finishes the single one first: its used descriptor goes to the
    // device's next used slot, 2.
    let chain = [one(16, Direction::ToDevice), one(8, Direction::FromDevice)];
    ring.add(&[chain[0].segment(), chain[1].segment()])
        .expect("add");
    let single = one(8, Direction::FromDevice);
    let single_token = ring.add(&[single.segment()]).expect("add");
    let decision = ring.publish();
    model.driver_published(decision.should_notify());
    let chains = model.take_available();
    assert_eq!(chains.len(), 2);
    model.complete(&chains[1], &[2; 8]);
    // One more, not published: slot 0 of lap three.
    let late = one(8, Direction::FromDevice);
    ring.add(&[late.segment()]).expect("add");

    let record = QueueRecord::capture("port0-rx", &ring, Some(3));
    assert_eq!(
        record.descriptors,
        [
            DescriptorView::Pending,
            DescriptorView::Free,
            DescriptorView::Used,
            DescriptorView::Head,
            DescriptorView::Head,
        ]
    );
    let devices = [device(RingKind::Packed, vec![record])];
    let (_, value) = render(&devices);
    let q = only_queue(&value);
    for field in STABLE_QUEUE_FIELDS {
        assert!(q.has(field), "queue object lacks {field}");
    }
    // Positions modulo two laps: offset, + size while the wrap counter is 0.
    assert_eq!(q.get("last_used_idx").int(), 2 + 5);
    assert_eq!(q.get("used_idx").int(), 3 + 5, "the device used one slot");
    assert_eq!(
        q.get("avail_idx").int(),
        0,
        "published up to slot 0, wrap 1"
    );
    assert_eq!(q.get("unpublished").int(), 1);
    assert_eq!(q.get("in_flight").int(), 3);
    assert_eq!(q.get("free_descriptors").int(), 1);
    assert_eq!(q.get("descriptors").str(), "p.uHH");
    assert!(q.has("packed") && !q.has("split"));
    let packed = q.get("packed");
    assert_eq!(packed.get("driver_wrap_counter").int(), 1);
    assert_eq!(packed.get("device_wrap_counter").int(), 0);
    assert_eq!(packed.get("next_avail").get("offset").int(), 1);
    assert_eq!(packed.get("device_used").get("offset").int(), 3);
    assert_eq!(packed.get("device_used").get("wrap").int(), 0);
    assert_eq!(packed.get("driver_event").get("flags").str(), "desc");
    assert_eq!(
        packed.get("driver_event").get("offset").int(),
        i64::from(ring.next_used_position().offset)
    );
    assert_eq!(
        q.get("used_event").int(),
        2 + 5,
        "DESC at the next used slot"
    );
    assert_eq!(q.get("interrupts").int(), 3);

    let drawing = ring_text(&devices[0]);
    assert!(drawing.contains("packed ring, 5 descriptors"), "{drawing}");
    assert!(drawing.contains(" p . u H H"), "{drawing}");
    assert!(drawing.contains("driver wrap counter 1"), "{drawing}");

    // Collecting the completion moves the driver's used position past it.
    assert_eq!(
        ring.pop_used().expect("pop").map(|u| u.token),
        Some(single_token)
    );
    let after = QueueRecord::capture("port0-rx", &ring, Some(3));
    assert_eq!(after.snapshot.last_used_idx, 3 + 5);
    assert_eq!(after.snapshot.used_idx, 3 + 5);
    drop((chain, single, late));
}

#[test]
fn a_split_queue_the_device_broke_still_renders() {
    install_logger();
    let mut ring: SplitQueue<HostHal> = SplitQueue::new(config(8, true, 0)).expect("queue");
    let mut device_side = HostileDevice::new(ring.addresses());
    let buffer = one(8, Direction::FromDevice);
    ring.add(&[buffer.segment()]).expect("add");
    let _ = ring.publish();
    // Garbage everywhere the device writes: used.idx far ahead, a used
    // entry out of range, flags and avail_event at their maximum.
    device_side.write_used_entry(0, 0xdead_beef, u32::MAX);
    device_side.set_used_flags(0xffff);
    device_side.set_avail_event(0xffff);
    device_side.set_used_idx(200);
    assert!(matches!(
        ring.pop_used(),
        Err(QueueError::UsedIndexTooFar { .. })
    ));
    assert!(ring.is_broken());

    let record = QueueRecord::capture("requestq", &ring, Some(0));
    let devices = [device(RingKind::Split, vec![record])];
    let (_, value) = render(&devices);
    let q = only_queue(&value);
    assert!(q.get("broken").bool());
    assert_eq!(
        q.get("used_idx").int(),
        200,
        "reported as the device wrote it"
    );
    assert_eq!(q.get("used_slot").int(), 200 % 8);
    assert_eq!(q.get("avail_event").int(), 0xffff);
    assert_eq!(q.get("split").get("used_flags").int(), 0xffff);
    assert_eq!(q.get("device_errors").int(), 1);
    assert_eq!(q.get("descriptors").str(), "H.......");
    let drawing = ring_text(&devices[0]);
    assert!(drawing.contains("BROKEN"), "{drawing}");
}

#[test]
fn garbage_in_a_packed_ring_is_reported_not_trusted() {
    install_logger();
    let mut ring: PackedQueue<HostHal> = PackedQueue::new(config(4, true, 0)).expect("queue");
    let device_side = HostilePackedDevice::new(ring.addresses());
    let buffer = one(8, Direction::FromDevice);
    ring.add(&[buffer.segment()]).expect("add");
    let _ = ring.publish();
    // A "used" descriptor with an id no buffer has, and a device event
    // structure naming a slot far outside the ring with the reserved flags.
    let used_lap_one = HostilePackedDevice::used_flags(device_side.next_used(), true);
    device_side.write_used_at(0, 0xffff, u32::MAX, used_lap_one);
    device_side.set_device_event(0xffff, 0xffff);

    let before = QueueRecord::capture("transmitq", &ring, None);
    assert_eq!(before.descriptors[0], DescriptorView::Used);
    assert_eq!(before.snapshot.used_idx, 0, "the walk stops at a bad id");
    let (_, value) = render(&[device(RingKind::Packed, vec![before])]);
    let event = only_queue(&value).get("packed").get("device_event");
    assert_eq!(event.get("flags").str(), "reserved");
    assert_eq!(event.get("offset").int(), 0x7fff);
    assert_eq!(event.get("wrap").int(), 1);

    assert!(ring.pop_used().is_err());
    assert!(ring.is_broken());
    let after = QueueRecord::capture("transmitq", &ring, None);
    let devices = [device(RingKind::Packed, vec![after])];
    let (_, value) = render(&devices);
    assert!(only_queue(&value).get("broken").bool());
    assert!(ring_text(&devices[0]).contains("BROKEN"));
}

#[test]
fn large_rings_show_their_first_descriptors_only() {
    install_logger();
    let ring: SplitQueue<HostHal> = SplitQueue::new(config(1024, true, 0)).expect("queue");
    let record = QueueRecord::capture("requestq", &ring, Some(0));
    assert_eq!(
        record.descriptors.len(),
        drivers::queue::snapshot::DESCRIPTOR_VIEW_MAX
    );
    let devices = [device(RingKind::Split, vec![record])];
    let (document, value) = render(&devices);
    assert_eq!(only_queue(&value).get("descriptors").str().len(), 256);
    assert!(
        document.len() < 2048,
        "one queue's JSON stays small: {} bytes",
        document.len()
    );
    assert!(ring_text(&devices[0]).contains("the first 256 of 1024 shown"));
}

#[test]
fn text_from_devices_is_escaped() {
    let mut record = DeviceRecord::new("type\"7\"", DeviceType::Other(77), "mmio@0x1\\2");
    record.state = "FAILED: bad \"status\"\n\u{1}".into();
    let (_, value) = render(&[record]);
    let device = &value.get("devices").items()[0];
    assert_eq!(device.get("type").str(), "type\"7\"");
    assert_eq!(device.get("location").str(), "mmio@0x1\\2");
    assert_eq!(device.get("state").str(), "FAILED: bad \"status\"\n\u{1}");
    assert_eq!(device.get("features"), &Value::Null);
    assert_eq!(device.get("transport"), &Value::Null);
    assert!(device.get("queues").items().is_empty());
}

#[test]
fn the_json_reader_rejects_what_is_not_json() {
    for bad in [
        "{\"a\":1,}",
        "[1 2]",
        "{\"a\":01}",
        "\"\u{1}\"",
        "{} x",
        "nul",
    ] {
        assert!(Value::parse(bad).is_err(), "{bad:?} accepted");
    }
    assert!(Value::parse("{\"a\":[true,null,-1.5,\"\\u0041\"]}").is_ok());
}
