//! The [`Ring`] contract (`drivers/src/queue/ring.rs`), written once as
//! generic functions and run against every ring a device driver can get:
//! `SplitQueue` with the split-ring model built on rust-vmm's `virtio-queue`
//! (`tests/src/vq_model.rs`), `PackedQueue` with the packed-ring model
//! (`tests/src/packed_model.rs`), and `Virtqueue` holding either.
//!
//! Layout-specific behaviour (memory images, wrap counters, which device
//! errors are fatal) is tested in `split_queue.rs`, `packed_queue.rs` and
//! `hostile_queue.rs`; what is here must hold for both.

use std::collections::BTreeSet;

use drivers::queue::{
    NotifyDecision, PackedQueue, QueueConfig, QueueCounters, QueueError, Ring, RingKind,
    RingLayout, Segment, SplitQueue, Token, Used, Virtqueue,
};
use hal::Direction;
use tests::host_hal::HostHal;
use tests::log_capture::install_logger;
use tests::packed_model::PackedModel;
use tests::vq_model::{Chain, SharedBuffer, VqModel};

/// The device side of a test: one of the two models, seen the same way.
trait Device {
    fn attach(ring: &impl Ring) -> Self;
    fn driver_published(&mut self, notified: bool);
    fn take_available(&mut self) -> Vec<Chain>;
    fn complete(&mut self, chain: &Chain, data: &[u8]);
    fn complete_with_len(&mut self, head: u16, len: u32);
}

impl Device for VqModel {
    fn attach(ring: &impl Ring) -> Self {
        VqModel::new(ring.addresses(), ring.uses_event_idx())
    }
    fn driver_published(&mut self, notified: bool) {
        VqModel::driver_published(self, notified)
    }
    fn take_available(&mut self) -> Vec<Chain> {
        VqModel::take_available(self)
    }
    fn complete(&mut self, chain: &Chain, data: &[u8]) {
        VqModel::complete(self, chain, data)
    }
    fn complete_with_len(&mut self, head: u16, len: u32) {
        VqModel::complete_with_len(self, head, len)
    }
}

impl Device for PackedModel {
    fn attach(ring: &impl Ring) -> Self {
        PackedModel::new(ring.addresses(), ring.uses_event_idx())
    }
    fn driver_published(&mut self, notified: bool) {
        PackedModel::driver_published(self, notified)
    }
    fn take_available(&mut self) -> Vec<Chain> {
        PackedModel::take_available(self)
    }
    fn complete(&mut self, chain: &Chain, data: &[u8]) {
        PackedModel::complete(self, chain, data)
    }
    fn complete_with_len(&mut self, id: u16, len: u32) {
        PackedModel::complete_with_len(self, id, len)
    }
}

fn config(size: u16, event_idx: bool, indirect: u16) -> QueueConfig {
    QueueConfig::new(0, size, RingLayout::Separate)
        .with_event_idx(event_idx)
        .with_indirect(indirect)
}

/// How each ring under test is built.
fn split(config: QueueConfig) -> SplitQueue<HostHal> {
    SplitQueue::new(config).expect("split queue")
}
fn packed(config: QueueConfig) -> PackedQueue<HostHal> {
    PackedQueue::new(config).expect("packed queue")
}
fn any_split(config: QueueConfig) -> Virtqueue<HostHal> {
    Virtqueue::new(RingKind::Split, config).expect("split virtqueue")
}
fn any_packed(config: QueueConfig) -> Virtqueue<HostHal> {
    Virtqueue::new(RingKind::Packed, config).expect("packed virtqueue")
}

/// Publishes and tells the model what the driver decided.
fn publish<R: Ring, D: Device>(ring: &mut R, device: &mut D) -> NotifyDecision {
    let decision = ring.publish();
    if decision != NotifyDecision::NothingNew {
        device.driver_published(decision.should_notify());
    }
    decision
}

/// A request as a block read looks: a readable header, writable data, a
/// writable status byte.
struct Request {
    header: SharedBuffer,
    data: SharedBuffer,
    status: SharedBuffer,
}

impl Request {
    fn new(tag: u8, data_len: usize) -> Self {
        Self {
            header: SharedBuffer::new(vec![tag; 16], Direction::ToDevice),
            data: SharedBuffer::for_device(data_len),
            status: SharedBuffer::for_device(1),
        }
    }

    fn segments(&self) -> [Segment; 3] {
        [
            self.header.segment(),
            self.data.segment(),
            self.status.segment(),
        ]
    }
}

/// A fresh ring says what it was built with and has everything free.
fn a_fresh_ring_is_empty<R: Ring>(make: fn(QueueConfig) -> R, kind: RingKind) {
    install_logger();
    let ring = make(config(8, true, 4));
    assert_eq!(ring.kind(), kind);
    assert_eq!(ring.size(), 8);
    assert_eq!(ring.addresses().size, 8);
    assert_eq!(ring.index(), 0);
    assert_eq!(ring.free_descriptors(), 8);
    assert_eq!(ring.in_flight(), 0);
    assert_eq!(ring.unpublished(), 0);
    assert_eq!(ring.indirect_capacity(), 4);
    assert!(ring.uses_event_idx());
    assert!(ring.next_token().is_some());
    assert_eq!(ring.counters(), QueueCounters::default());
    assert!(!ring.is_broken());
    let plain = make(config(8, false, 0));
    assert_eq!(plain.indirect_capacity(), 0);
    assert!(!plain.uses_event_idx());
}

/// add, publish, pop_used: the token `next_token` predicted comes back with
/// the length the device wrote and the data in the buffers; the accessors
/// follow every step.
fn a_request_round_trips<R: Ring, D: Device>(make: fn(QueueConfig) -> R) {
    install_logger();
    let mut ring = make(config(8, false, 0));
    let mut device = D::attach(&ring);
    let request = Request::new(0x5a, 64);
    let predicted = ring.next_token();
    let token = ring.add(&request.segments()).expect("add");
    assert_eq!(Some(token), predicted, "next_token foretells add's token");
    assert!(token.index() < 8);
    assert_eq!(ring.unpublished(), 1);
    assert_eq!(ring.in_flight(), 1);
    assert_eq!(ring.free_descriptors(), 5, "three direct descriptors");
    assert!(
        device.take_available().is_empty(),
        "nothing is visible before publish"
    );

    assert_eq!(publish(&mut ring, &mut device), NotifyDecision::Notify);
    assert_eq!(ring.unpublished(), 0);
    assert_eq!(ring.publish(), NotifyDecision::NothingNew);
    assert_eq!(ring.pop_used(), Ok(None), "nothing used yet");

    let chains = device.take_available();
    assert_eq!(chains.len(), 1);
    assert_eq!(chains[0].readable, vec![0x5a; 16]);
    assert_eq!(chains[0].writable_len(), 65);
    let mut answer = vec![0xc3; 64];
    answer.push(0);
    device.complete(&chains[0], &answer);

    assert_eq!(ring.pop_used(), Ok(Some(Used { token, len: 65 })));
    assert_eq!(ring.pop_used(), Ok(None));
    assert_eq!(ring.in_flight(), 0);
    assert_eq!(ring.free_descriptors(), 8);
    assert_eq!(request.data.finish(), vec![0xc3; 64]);
    assert_eq!(request.status.finish(), vec![0]);
    let counters = ring.counters();
    assert_eq!(
        (
            counters.added,
            counters.publishes,
            counters.notifications,
            counters.completions
        ),
        (1, 1, 1, 1)
    );
}

/// Completions come back in the order the device used them, each with its
/// own token; tokens stay unique among the requests in flight.
fn completions_come_back_in_device_order<R: Ring, D: Device>(make: fn(QueueConfig) -> R) {
    install_logger();
    let mut ring = make(config(16, true, 0));
    let mut device = D::attach(&ring);
    let requests: Vec<Request> = (0..4).map(|i| Request::new(i, 8)).collect();
    let mut tokens = Vec::new();
    for request in &requests {
        let predicted = ring.next_token();
        tokens.push(ring.add(&request.segments()).expect("add"));
        assert_eq!(
            tokens.last().copied(),
            predicted,
            "next_token foretells each add"
        );
    }
    let distinct: BTreeSet<Token> = tokens.iter().copied().collect();
    assert_eq!(distinct.len(), 4, "tokens are unique in flight");
    assert_eq!(ring.unpublished(), 4);
    let _ = publish(&mut ring, &mut device);
    let chains = device.take_available();
    assert_eq!(chains.len(), 4, "one publish exposes the whole batch");
    for chain in chains.iter().rev() {
        device.complete(chain, &[chain.readable[0]; 9]);
    }
    let mut order = Vec::new();
    while let Some(used) = ring.pop_used().expect("a correct device") {
        assert_eq!(used.len, 9);
        order.push(used.token);
    }
    tokens.reverse();
    assert_eq!(order, tokens);
    for (i, request) in requests.into_iter().enumerate() {
        assert_eq!(request.data.finish(), vec![i as u8; 8]);
    }
}

/// A refused `add` changes nothing: same free count, same next token,
/// nothing unpublished.
fn refused_requests_change_nothing<R: Ring>(make: fn(QueueConfig) -> R) {
    install_logger();
    let mut ring = make(config(4, false, 0));
    let buffer = SharedBuffer::for_device(8);
    let readable = Segment::readable(buffer.addr(), 8);
    let writable = Segment::writable(buffer.addr(), 8);
    let before = (
        ring.free_descriptors(),
        ring.next_token(),
        ring.unpublished(),
    );
    let same = |ring: &R| {
        (
            ring.free_descriptors(),
            ring.next_token(),
            ring.unpublished(),
        )
    };
    assert_eq!(ring.add(&[]), Err(QueueError::EmptyRequest));
    assert_eq!(
        ring.add(&[Segment::readable(buffer.addr(), 0)]),
        Err(QueueError::EmptySegment { index: 0 })
    );
    assert_eq!(
        ring.add(&[writable, readable]),
        Err(QueueError::ReadableAfterWritable { index: 1 })
    );
    assert_eq!(
        ring.add(&[readable; 5]),
        Err(QueueError::TooManySegments {
            segments: 5,
            max: 4
        })
    );
    assert_eq!(same(&ring), before);
    ring.add(&[readable, writable, writable]).expect("fits");
    assert_eq!(
        ring.add(&[readable, writable]),
        Err(QueueError::QueueFull { needed: 2, free: 1 })
    );
    assert_eq!(ring.unpublished(), 1);
    assert_eq!(ring.free_descriptors(), 1);
    assert_eq!(ring.counters().added, 1);
}

/// A length beyond the writable bytes is an error that carries the token;
/// the request is finished and the queue goes on.
fn a_too_long_length_is_reported_and_the_queue_goes_on<R: Ring, D: Device>(
    make: fn(QueueConfig) -> R,
) {
    install_logger();
    let mut ring = make(config(8, false, 0));
    let mut device = D::attach(&ring);
    let request = Request::new(1, 32);
    let token = ring.add(&request.segments()).expect("add");
    let _ = publish(&mut ring, &mut device);
    let chain = device.take_available().remove(0);
    device.complete_with_len(chain.head, 34);
    assert_eq!(
        ring.pop_used(),
        Err(QueueError::UsedLengthTooLong {
            token,
            len: 34,
            max: 33
        })
    );
    assert!(!ring.is_broken());
    assert_eq!(ring.in_flight(), 0);
    assert_eq!(ring.counters().device_errors, 1);

    let next = Request::new(2, 32);
    let token = ring.add(&next.segments()).expect("add after the error");
    let _ = publish(&mut ring, &mut device);
    let chain = device.take_available().remove(0);
    device.complete(&chain, &[7; 33]);
    assert_eq!(ring.pop_used(), Ok(Some(Used { token, len: 33 })));
}

/// `enable_interrupts` says whether a completion slipped in while they were
/// off, so the caller polls instead of sleeping; `disable_interrupts` does
/// not lose completions.
fn enabling_interrupts_reports_what_is_pending<R: Ring, D: Device>(
    make: fn(QueueConfig) -> R,
    event_idx: bool,
) {
    install_logger();
    let mut ring = make(config(8, event_idx, 0));
    let mut device = D::attach(&ring);
    assert!(!ring.enable_interrupts(), "nothing pending on a fresh ring");
    ring.disable_interrupts();
    let request = Request::new(3, 4);
    let token = ring.add(&request.segments()).expect("add");
    let _ = publish(&mut ring, &mut device);
    let chain = device.take_available().remove(0);
    device.complete(&chain, &[1; 5]);
    assert!(ring.enable_interrupts(), "a completion is already there");
    assert_eq!(ring.pop_used(), Ok(Some(Used { token, len: 5 })));
    assert!(!ring.enable_interrupts(), "and now nothing");
}

/// `reset` hands back every request in flight, published or not, exactly
/// once, and leaves a fresh ring at the same addresses; counters are kept.
fn reset_hands_back_every_request<R: Ring, D: Device>(make: fn(QueueConfig) -> R) {
    install_logger();
    let mut ring = make(config(8, true, 4));
    let mut device = D::attach(&ring);
    let addresses = ring.addresses();
    let requests: Vec<Request> = (0..3).map(|i| Request::new(i, 8)).collect();
    let mut in_flight = BTreeSet::new();
    for request in &requests[..2] {
        in_flight.insert(ring.add(&request.segments()).expect("add"));
    }
    let _ = publish(&mut ring, &mut device);
    in_flight.insert(ring.add(&requests[2].segments()).expect("add"));
    let counters = ring.counters();

    let mut abandoned = Vec::new();
    ring.reset(|token| abandoned.push(token));
    let abandoned_set: BTreeSet<Token> = abandoned.iter().copied().collect();
    assert_eq!(abandoned.len(), 3, "each exactly once");
    assert_eq!(abandoned_set, in_flight);
    assert_eq!(ring.addresses(), addresses);
    assert_eq!(ring.counters(), counters);
    assert_eq!(
        (
            ring.free_descriptors(),
            ring.in_flight(),
            ring.unpublished()
        ),
        (8, 0, 0)
    );

    // The device was reset too: a new model on the same memory.
    let mut device = D::attach(&ring);
    let request = Request::new(9, 8);
    let token = ring.add(&request.segments()).expect("add after reset");
    let _ = publish(&mut ring, &mut device);
    let chain = device.take_available().remove(0);
    device.complete(&chain, &[9; 9]);
    assert_eq!(ring.pop_used(), Ok(Some(Used { token, len: 9 })));
}

// Each contract, for each ring.

#[test]
fn split_a_fresh_ring_is_empty() {
    a_fresh_ring_is_empty(split, RingKind::Split);
    a_fresh_ring_is_empty(any_split, RingKind::Split);
}

#[test]
fn packed_a_fresh_ring_is_empty() {
    a_fresh_ring_is_empty(packed, RingKind::Packed);
    a_fresh_ring_is_empty(any_packed, RingKind::Packed);
}

#[test]
fn split_a_request_round_trips() {
    a_request_round_trips::<_, VqModel>(split);
    a_request_round_trips::<_, VqModel>(any_split);
}

#[test]
fn packed_a_request_round_trips() {
    a_request_round_trips::<_, PackedModel>(packed);
    a_request_round_trips::<_, PackedModel>(any_packed);
}

#[test]
fn split_completions_come_back_in_device_order() {
    completions_come_back_in_device_order::<_, VqModel>(split);
    completions_come_back_in_device_order::<_, VqModel>(any_split);
}

#[test]
fn packed_completions_come_back_in_device_order() {
    completions_come_back_in_device_order::<_, PackedModel>(packed);
    completions_come_back_in_device_order::<_, PackedModel>(any_packed);
}

#[test]
fn split_refused_requests_change_nothing() {
    refused_requests_change_nothing(split);
    refused_requests_change_nothing(any_split);
}

#[test]
fn packed_refused_requests_change_nothing() {
    refused_requests_change_nothing(packed);
    refused_requests_change_nothing(any_packed);
}

#[test]
fn split_a_too_long_length_is_reported_and_the_queue_goes_on() {
    a_too_long_length_is_reported_and_the_queue_goes_on::<_, VqModel>(split);
    a_too_long_length_is_reported_and_the_queue_goes_on::<_, VqModel>(any_split);
}

#[test]
fn packed_a_too_long_length_is_reported_and_the_queue_goes_on() {
    a_too_long_length_is_reported_and_the_queue_goes_on::<_, PackedModel>(packed);
    a_too_long_length_is_reported_and_the_queue_goes_on::<_, PackedModel>(any_packed);
}

#[test]
fn split_enabling_interrupts_reports_what_is_pending() {
    for event_idx in [false, true] {
        enabling_interrupts_reports_what_is_pending::<_, VqModel>(split, event_idx);
        enabling_interrupts_reports_what_is_pending::<_, VqModel>(any_split, event_idx);
    }
}

#[test]
fn packed_enabling_interrupts_reports_what_is_pending() {
    for event_idx in [false, true] {
        enabling_interrupts_reports_what_is_pending::<_, PackedModel>(packed, event_idx);
        enabling_interrupts_reports_what_is_pending::<_, PackedModel>(any_packed, event_idx);
    }
}

#[test]
fn split_reset_hands_back_every_request() {
    reset_hands_back_every_request::<_, VqModel>(split);
    reset_hands_back_every_request::<_, VqModel>(any_split);
}

#[test]
fn packed_reset_hands_back_every_request() {
    reset_hands_back_every_request::<_, PackedModel>(packed);
    reset_hands_back_every_request::<_, PackedModel>(any_packed);
}
