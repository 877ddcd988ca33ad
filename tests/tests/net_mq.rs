//! Multiqueue virtio-net (virtio 1.2 §5.1.6.5.5, VIRTIO_NET_F_MQ): the
//! driver (`drivers::net`) against the device model in `tests::net_model`
//! with several queue pairs: where the queues and the control queue are,
//! the VQ_PAIRS_SET command byte for byte, receiving and refilling on every
//! pair, transmitting on the chosen pair, and devices that report
//! impossible pair counts or reject the command (one pair, never a panic).
//!
//! Set `TRANSPORT_LOG=1` to see the driver's trace narration.

use drivers::net::{
    ctrl_queue_of, rx_queue_of, tx_queue_of, vq_pairs_set_command, NetDevice, NetError, NetOptions,
    CTRL_QUEUE,
};
use drivers::queue::Ring;
use drivers::transport::Transport;
use tests::host_hal::HostHal;
use tests::models::trace_logging;
use tests::models::virtio::FAILED;
use tests::net_model::{
    bits, net_config_mq, test_frame, NetModel, StepModel, QEMU_MODERN_FEATURES,
};

type Net<T> = NetDevice<HostHal, T>;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// QEMU's modern offer with `mq=on`.
const MQ_OFFER: u64 = QEMU_MODERN_FEATURES | bits::MQ;

/// A device with `device_pairs` pairs that says `config_pairs` in its configuration.
fn mq_model(device_pairs: u16, config_pairs: u16, queue_max: u16) -> NetModel {
    trace_logging();
    NetModel::with_queue_pairs(
        MQ_OFFER,
        net_config_mq(MAC, 1, 0, config_pairs),
        queue_max,
        device_pairs,
    )
}

fn options(pairs: u16) -> NetOptions {
    NetOptions {
        max_queue_pairs: pairs,
        rx_queue_size: 16,
        tx_queue_size: 16,
        ..NetOptions::default()
    }
}

/// Brings a driver up on MMIO v2 and attaches the model's queues.
fn bring_up(model: &mut NetModel, options: NetOptions) -> Net<impl Transport> {
    let transport = model.mmio(2);
    let net = Net::with_options(transport, options).expect("bring-up");
    model.attach_queues();
    net
}

fn stepper(model: &mut NetModel) -> StepModel<'_> {
    StepModel::new(model)
}

fn no_violations(model: &NetModel) {
    let core = model.core.borrow();
    assert!(core.violations.is_empty(), "{:?}", core.violations);
}

#[test]
fn queue_indices_follow_the_spec_numbering() {
    assert_eq!((rx_queue_of(0), tx_queue_of(0)), (0, 1));
    assert_eq!((rx_queue_of(3), tx_queue_of(3)), (6, 7));
    assert_eq!(ctrl_queue_of(1), Some(2));
    assert_eq!(ctrl_queue_of(8), Some(16));
    assert_eq!(ctrl_queue_of(0x7fff), Some(0xfffe));
    assert_eq!(
        ctrl_queue_of(0x8000),
        None,
        "queue 65536 has no 16-bit index"
    );
    // class VIRTIO_NET_CTRL_MQ (4), command VQ_PAIRS_SET (0), le16 pairs.
    assert_eq!(vq_pairs_set_command(4), [4, 0, 4, 0]);
    assert_eq!(vq_pairs_set_command(0x0102), [4, 0, 0x02, 0x01]);
}

#[test]
fn the_control_queue_sits_after_all_of_the_devices_pairs_not_the_ones_used() {
    // The device has 8 pairs; the driver uses 4 of them. Queues 0..8 are the
    // pairs in use, 8..16 stay untouched, the control queue is 16 (not 8).
    let mut model = mq_model(8, 8, 64);
    let net = bring_up(&mut model, options(4));
    assert_ne!(model.negotiated() & bits::MQ, 0, "MQ accepted");
    assert_eq!(net.queue_pairs(), 4);
    assert_eq!(net.device_max_queue_pairs(), 8);
    assert_eq!(net.active_queue_pairs(), 1, "one pair until VQ_PAIRS_SET");
    assert_eq!(net.ctrl().map(|c| c.size()), Some(16));
    for q in 0..8 {
        assert!(model.has_queue(q), "queue {q} of the pairs in use set up");
    }
    for q in 8..16 {
        assert!(
            !model.has_queue(q),
            "queue {q} of an unused pair left alone"
        );
    }
    assert!(
        model.has_queue(16),
        "control queue at 2 * max_virtqueue_pairs"
    );
    assert_eq!(
        net.queue_indices().collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4, 5, 6, 7, 16]
    );
    // Every receive queue is full and published.
    for pair in 0..4 {
        assert_eq!(model.rx_available_on(pair), 16, "pair {pair} filled");
    }
    no_violations(&model);
}

#[test]
fn vq_pairs_set_goes_out_with_its_exact_bytes_and_activates_the_pairs() {
    let mut model = mq_model(4, 4, 32);
    let mut net = bring_up(&mut model, options(4));
    assert_eq!(net.start_multiqueue(&mut stepper(&mut model)), Ok(4));
    let command = model.commands.last().expect("a command").clone();
    assert_eq!(
        (command.class, command.command, command.data),
        (4, 0, vec![4, 0])
    );
    assert_eq!(model.active_pairs, 4);
    assert_eq!(net.active_queue_pairs(), 4);
    assert_eq!(net.stats().ctrl.map(|c| c.ok), Some(1));
    // One pair per CPU, shared round robin beyond.
    let chosen: Vec<u16> = (0..6).map(|cpu| net.tx_pair_for_cpu(cpu)).collect();
    assert_eq!(chosen, vec![0, 1, 2, 3, 0, 1]);
}

#[test]
fn every_pair_receives_and_gets_its_buffers_back() {
    let mut model = mq_model(4, 4, 16);
    let mut net = bring_up(&mut model, options(4));
    net.start_multiqueue(&mut stepper(&mut model)).unwrap();
    let frames: Vec<Vec<u8>> = (0..4).map(|p| test_frame(60 + 10 * p, p as u8)).collect();
    // Three frames on each pair, delivered in interleaved order.
    for round in 0..3 {
        for pair in 0..4u16 {
            let mut frame = frames[usize::from(pair)].clone();
            frame[14] = round;
            model.deliver_on(pair, &frame).unwrap();
        }
    }
    for pair in 0..4u16 {
        let (rx, _) = net.pair(pair).expect("pair set up");
        let mut got = Vec::new();
        while let Some(packet) = rx.receive().unwrap() {
            got.push(packet.data().to_vec());
        }
        let expected: Vec<Vec<u8>> = (0..3)
            .map(|round| {
                let mut frame = frames[usize::from(pair)].clone();
                frame[14] = round;
                frame
            })
            .collect();
        assert_eq!(got, expected, "pair {pair} got its own frames in order");
    }
    net.flush();
    for pair in 0..4u16 {
        let stats = net.pair_stats(pair).unwrap();
        assert_eq!(stats.rx.packets, 3, "pair {pair} counted");
        assert_eq!(model.rx_available_on(pair), 16, "pair {pair} refilled");
    }
    assert!(net.pair_stats(4).is_none());
    no_violations(&model);
}

#[test]
fn frames_go_out_on_the_chosen_pair_with_one_notification_per_busy_queue() {
    let mut model = mq_model(4, 4, 16);
    let mut net = bring_up(&mut model, options(4));
    net.start_multiqueue(&mut stepper(&mut model)).unwrap();
    let before = model.core.borrow().notifications.len();
    for (pair, seed) in [(2u16, 1u8), (2, 2), (3, 3)] {
        let (_, tx) = net.pair(pair).unwrap();
        tx.send(&test_frame(64, seed)).unwrap();
    }
    net.flush();
    let notified: Vec<u16> = model.core.borrow().notifications[before..].to_vec();
    assert_eq!(notified, vec![tx_queue_of(2), tx_queue_of(3)]);
    assert_eq!(model.process_tx(), 3);
    let sent: Vec<(u16, Vec<u8>)> = model
        .sent
        .iter()
        .map(|s| (s.queue, s.frame.clone()))
        .collect();
    assert_eq!(
        sent,
        vec![
            (5, test_frame(64, 1)),
            (5, test_frame(64, 2)),
            (7, test_frame(64, 3))
        ]
    );
    assert_eq!(net.pair_stats(2).unwrap().tx.packets, 2);
    assert_eq!(net.pair_stats(3).unwrap().tx.packets, 1);
    assert_eq!(model.dropped_inactive_tx, 0);
}

#[test]
fn one_pair_allowed_means_mq_is_not_accepted_and_the_control_queue_stays_at_2() {
    let mut model = mq_model(4, 4, 16);
    let net = bring_up(&mut model, options(1));
    assert_eq!(model.negotiated() & bits::MQ, 0);
    assert_eq!(net.queue_pairs(), 1);
    assert!(model.has_queue(CTRL_QUEUE));
    assert!(!model.has_queue(8));
    assert_eq!(net.queue_indices().collect::<Vec<_>>(), vec![0, 1, 2]);
}

#[test]
fn fewer_device_pairs_than_allowed_uses_what_the_device_has() {
    let mut model = mq_model(2, 2, 16);
    let mut net = bring_up(&mut model, options(8));
    assert_eq!(net.queue_pairs(), 2);
    assert!(model.has_queue(4), "control queue at 2 * 2");
    assert_eq!(net.start_multiqueue(&mut stepper(&mut model)), Ok(2));
    assert_eq!(model.commands.last().unwrap().data, vec![2, 0]);
}

/// Brings the driver up on a device whose configuration claims
/// `config_pairs` while it has `device_pairs`, and checks the fallback:
/// one pair, MQ not accepted, control queue at 2, a working card.
fn falls_back_to_one_pair(device_pairs: u16, config_pairs: u16) {
    let mut model = mq_model(device_pairs, config_pairs, 16);
    let mut net = bring_up(&mut model, options(4));
    assert_eq!(model.negotiated() & bits::MQ, 0, "MQ given up");
    assert_eq!(net.queue_pairs(), 1);
    assert_eq!(net.device_max_queue_pairs(), 1);
    assert_eq!(net.queue_indices().collect::<Vec<_>>(), vec![0, 1, 2]);
    {
        let core = model.core.borrow();
        assert!(
            core.status_writes.iter().any(|s| s & FAILED != 0),
            "the first attempt ended with FAILED: {:?}",
            core.status_writes
        );
        assert_eq!(
            core.status & 0x0f,
            0x0f,
            "the second attempt reached DRIVER_OK"
        );
    }
    // The card works on pair 0, and VQ_PAIRS_SET has nothing to say.
    assert_eq!(net.start_multiqueue(&mut stepper(&mut model)), Ok(1));
    let frame = test_frame(80, 9);
    model.deliver(&frame).unwrap();
    let got = net.rx().receive().unwrap().map(|p| p.data().to_vec());
    assert_eq!(got, Some(frame));
    net.send(&test_frame(64, 1)).unwrap();
    assert_eq!(model.process_tx(), 1);
    assert_eq!(model.sent[0].queue, 1);
}

#[test]
fn max_virtqueue_pairs_of_zero_falls_back_to_one_pair() {
    falls_back_to_one_pair(1, 0);
}

#[test]
fn max_virtqueue_pairs_above_the_spec_maximum_falls_back_to_one_pair() {
    falls_back_to_one_pair(1, 0x8001);
}

#[test]
fn max_virtqueue_pairs_whose_control_queue_has_no_index_falls_back_to_one_pair() {
    falls_back_to_one_pair(1, 0x8000);
}

#[test]
fn a_device_with_fewer_queues_than_its_pairs_claim_falls_back_to_one_pair() {
    // Says 6 pairs (13 queues) but has 2 pairs (5 queues): pair 2 is missing.
    falls_back_to_one_pair(2, 6);
}

#[test]
fn a_rejected_vq_pairs_set_leaves_the_card_on_its_first_pair() {
    let mut model = mq_model(4, 4, 16);
    model.mq_ack = Some(1);
    let mut net = bring_up(&mut model, options(4));
    assert_eq!(
        net.start_multiqueue(&mut stepper(&mut model)),
        Err(NetError::ControlRejected)
    );
    assert_eq!(net.active_queue_pairs(), 1);
    assert_eq!(model.active_pairs, 1);
    assert!((0..4).all(|cpu| net.tx_pair_for_cpu(cpu) == 0));
    assert_eq!(net.stats().ctrl.map(|c| c.rejected), Some(1));
    // Every CPU's frames go out on pair 0, which the device still uses.
    let pair = net.tx_pair_for_cpu(3);
    net.pair(pair).unwrap().1.send(&test_frame(64, 5)).unwrap();
    net.flush();
    assert_eq!(model.process_tx(), 1);
    assert_eq!(model.sent.len(), 1);
    assert_eq!(model.sent[0].queue, 1);
    assert_eq!(model.dropped_inactive_tx, 0);
    assert!(!net.is_failed());
}

#[test]
fn recovery_reprograms_every_pair_and_the_control_queue_and_starts_on_one_pair() {
    let mut model = mq_model(4, 4, 16);
    let mut net = bring_up(&mut model, options(4));
    net.start_multiqueue(&mut stepper(&mut model)).unwrap();
    let before: Vec<_> = (0..9).map(|q| model.queue_addresses(q)).collect();
    net.recover().unwrap();
    model.attach_queues();
    let after: Vec<_> = (0..9).map(|q| model.queue_addresses(q)).collect();
    assert_eq!(before, after, "same rings, same places, control queue at 8");
    assert!(after.iter().all(Option::is_some));
    assert_eq!(net.active_queue_pairs(), 1);
    assert_eq!(net.start_multiqueue(&mut stepper(&mut model)), Ok(4));
    for pair in 0..4 {
        assert_eq!(model.rx_available_on(pair), 16, "pair {pair} refilled");
    }
}

#[test]
fn the_queue_view_names_every_pair() {
    let mut model = mq_model(2, 2, 16);
    let net = bring_up(&mut model, options(2));
    let mut names = Vec::new();
    net.visit_rings(|name, ring| names.push((name.to_string(), ring.index())));
    assert_eq!(
        names,
        vec![
            ("receiveq1".to_string(), 0),
            ("transmitq1".to_string(), 1),
            ("receiveq2".to_string(), 2),
            ("transmitq2".to_string(), 3),
            ("controlq".to_string(), 4),
        ]
    );
}
