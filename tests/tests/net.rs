//! The virtio-net driver (`drivers::net`) against the device model in
//! `tests::net_model`, on every transport flavour: feature negotiation, the
//! header length, receive-buffer accounting (the queue stays full), mergeable
//! buffers, transmit batching and reclaim, the control queue, link status,
//! and a device that lies about lengths and `num_buffers`.
//!
//! Every test checks data, counts or error values. Set `TRANSPORT_LOG=1` to
//! see the driver's trace narration.

use drivers::device::{BoundedWait, DeviceError};
use drivers::net::{
    MacAddress, NetDevice, NetError, NetOptions, CTRL_QUEUE, RX_QUEUE, SUPPORTED_FEATURES,
};
use drivers::queue::QueueError;
use drivers::transport::{AnyTransport, DeviceStatus, Transport, TransportKind, RESET_TIMEOUT_US};
use hal::PAGE_SIZE;
use tests::host_hal::HostHal;
use tests::hostile::HostileDevice;
use tests::models::trace_logging;
use tests::models::virtio::FAILED;
use tests::net_model::{
    bits, net_config, test_frame, CtrlUsedLen, NetModel, RawPart, StepModel, QEMU_LEGACY_FEATURES,
    QEMU_MODERN_FEATURES,
};

type Net<T> = NetDevice<HostHal, T>;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// The model with QEMU's modern offer, link up, no MTU field.
fn modern_model(queue_max: u16) -> NetModel {
    trace_logging();
    NetModel::new(QEMU_MODERN_FEATURES, net_config(MAC, 1, 0), queue_max)
}

/// Brings a driver up on MMIO v2 and attaches the model's queues.
fn modern_mmio(model: &mut NetModel, options: NetOptions) -> Net<impl Transport> {
    let transport = model.mmio(2);
    let net = Net::with_options(transport, options).expect("bring-up");
    model.attach_queues();
    net
}

/// Receives everything pending, returning the frames (copied) and whether
/// each was handed out in place; flushes afterwards.
fn receive_all<T: Transport>(net: &mut Net<T>) -> Vec<(Vec<u8>, bool, u16)> {
    let mut frames = Vec::new();
    while let Some(packet) = net.rx().receive().expect("ring intact") {
        frames.push((packet.data().to_vec(), packet.in_place(), packet.buffers()));
    }
    net.flush();
    frames
}

fn stepper(model: &mut NetModel) -> StepModel<'_> {
    StepModel::new(model)
}

// ----- bring-up and features ---------------------------------------------

#[test]
fn qemu_modern_offer_negotiates_the_implemented_features_only() {
    let mut model = modern_model(256);
    let net = modern_mmio(&mut model, NetOptions::default());
    // VERSION_1, INDIRECT_DESC, EVENT_IDX, MAC, MRG_RXBUF, STATUS, CTRL_VQ,
    // CTRL_RX, CTRL_MAC_ADDR. Not CTRL_GUEST_OFFLOADS (2), CTRL_VLAN (19),
    // CTRL_RX_EXTRA (20), GUEST_ANNOUNCE (21), RING_RESET (40).
    let expected = bits::VERSION_1
        | bits::INDIRECT_DESC
        | bits::EVENT_IDX
        | bits::MAC
        | bits::MRG_RXBUF
        | bits::STATUS
        | bits::CTRL_VQ
        | bits::CTRL_RX
        | bits::CTRL_MAC_ADDR;
    assert_eq!(model.negotiated(), expected);
    assert_eq!(net.features(), expected);
    assert_eq!(net.header_len(), 12);
    assert_eq!(net.mac(), MacAddress(MAC));
    assert!(net.link_up());
    assert_eq!(net.mtu(), 1500);
    assert_eq!(net.max_frame(), 1514);
    for q in 0..3 {
        assert!(model.has_queue(q), "queue {q} set up");
    }
    assert!(
        model.core.borrow().violations.is_empty(),
        "{:?}",
        model.core.borrow().violations
    );
}

#[test]
fn the_receive_queue_is_full_and_published_only_after_driver_ok() {
    let mut model = modern_model(128);
    let net = modern_mmio(&mut model, NetOptions::default());
    assert_eq!(net.ctrl().map(|c| c.size()), Some(16));
    // Every receive descriptor carries a buffer the device can see.
    assert_eq!(model.rx_available(), 128);
    assert!(model.rx_buffer_lens().iter().all(|&len| len == 1536));
    let core = model.core.borrow();
    let driver_ok = core
        .status_writes
        .iter()
        .position(|s| s & 4 != 0)
        .expect("DRIVER_OK written");
    assert_eq!(
        driver_ok,
        core.status_writes.len() - 1,
        "DRIVER_OK is the last status write"
    );
    // The receive-queue notification came after DRIVER_OK: find both in the log.
    let log = &core.log;
    let status_ok_at = log
        .iter()
        .position(|a| a.offset == 0x70 && a.value & 4 != 0 && a.dir == tests::models::Dir::W)
        .expect("status write in the log");
    let notify_at = log
        .iter()
        .position(|a| a.offset == 0x50 && a.dir == tests::models::Dir::W)
        .expect("a notification");
    assert!(notify_at > status_ok_at, "notified before DRIVER_OK");
    assert_eq!(core.notifications, vec![RX_QUEUE]);
}

#[test]
fn ctrl_rx_without_ctrl_vq_is_refused_and_negotiation_retried() {
    trace_logging();
    // A device that breaks §5.1.3.1: CTRL_RX and CTRL_MAC_ADDR without CTRL_VQ.
    let offer = QEMU_MODERN_FEATURES & !bits::CTRL_VQ;
    let mut model = NetModel::new(offer, net_config(MAC, 1, 0), 64);
    let net = modern_mmio(&mut model, NetOptions::default());
    let negotiated = net.features();
    assert_eq!(
        negotiated & (bits::CTRL_RX | bits::CTRL_MAC_ADDR | bits::CTRL_VQ),
        0
    );
    assert_ne!(negotiated & bits::MRG_RXBUF, 0);
    let writes = model.core.borrow().status_writes.clone();
    assert!(
        writes.iter().any(|s| s & FAILED != 0),
        "the first attempt ends in FAILED: {writes:x?}"
    );
    assert_ne!(
        writes.last().copied().unwrap_or(0) & 4,
        0,
        "second attempt reaches DRIVER_OK"
    );
    assert!(!model.has_queue(CTRL_QUEUE));
}

#[test]
fn ctrl_vq_off_means_no_control_queue_and_typed_errors() {
    trace_logging();
    let offer = QEMU_MODERN_FEATURES & !(bits::CTRL_VQ | bits::CTRL_RX | bits::CTRL_MAC_ADDR);
    let mut model = NetModel::new(offer, net_config(MAC, 1, 0), 64);
    let mut net = modern_mmio(&mut model, NetOptions::default());
    assert!(net.ctrl().is_none());
    assert!(!model.has_queue(CTRL_QUEUE));
    let mut wait = BoundedWait::new(3, || {});
    assert_eq!(
        net.set_promiscuous(true, &mut wait),
        Err(NetError::NotNegotiated("VIRTIO_NET_F_CTRL_RX"))
    );
    assert_eq!(
        net.set_mac(MacAddress([2, 0, 0, 0, 0, 1]), &mut wait),
        Err(NetError::NotNegotiated("VIRTIO_NET_F_CTRL_MAC_ADDR"))
    );
    // Data still flows.
    net.send(&test_frame(60, 1)).unwrap();
    assert_eq!(model.process_tx(), 1);
}

#[test]
fn the_mtu_field_sizes_frames_and_an_impossible_mtu_is_refused() {
    trace_logging();
    let offer = (QEMU_MODERN_FEATURES | bits::MTU) & !bits::MRG_RXBUF;
    let mut model = NetModel::new(offer, net_config(MAC, 1, 9000), 32);
    let mut net = modern_mmio(&mut model, NetOptions::default());
    assert_eq!(net.mtu(), 9000);
    assert_eq!(net.max_frame(), 9014);
    // Without MRG_RXBUF each buffer holds a whole packet: header, frame, VLAN tag.
    assert!(model
        .rx_buffer_lens()
        .iter()
        .all(|&len| len as usize >= 12 + 9014));
    let jumbo = test_frame(9014, 7);
    net.send(&jumbo).unwrap();
    assert_eq!(
        net.send(&test_frame(9015, 7)),
        Err(NetError::FrameTooLong {
            len: 9015,
            max: 9014
        })
    );
    model.process_tx();
    assert_eq!(model.sent.len(), 1);
    assert_eq!(model.sent[0].frame, jumbo);
    model.deliver(&jumbo).unwrap();
    let got = receive_all(&mut net);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, jumbo);

    let bad = NetModel::new(offer, net_config(MAC, 1, 60), 32);
    let transport = bad.mmio(2);
    match Net::new(transport) {
        Err(NetError::BadConfig(_)) => {}
        other => panic!("mtu 60 accepted: {other:?}"),
    }
    assert_ne!(bad.core.borrow().status & FAILED, 0, "device marked FAILED");
}

// ----- header length per transport ---------------------------------------

/// Sends and receives one frame on an already attached model, checking the
/// header length the device sees and the data both ways.
fn round_trip<T: Transport>(net: &mut Net<T>, model: &mut NetModel, header_len: usize) {
    assert_eq!(net.header_len(), header_len);
    let out = test_frame(100, 3);
    net.send(&out).unwrap();
    assert_eq!(model.process_tx(), 1);
    let sent = model.sent.pop().unwrap();
    assert_eq!(
        sent.header,
        vec![0u8; header_len],
        "all-zero header of {header_len} bytes"
    );
    assert_eq!(sent.frame, out);
    let incoming = test_frame(1514, 4);
    model.deliver(&incoming).unwrap();
    let got = receive_all(net);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].0, incoming,
        "frame starts right after a {header_len}-byte header"
    );
}

#[test]
fn legacy_mmio_without_mrg_rxbuf_uses_the_10_byte_header() {
    trace_logging();
    let offer = QEMU_LEGACY_FEATURES & !bits::MRG_RXBUF;
    let mut model = NetModel::new(offer, net_config(MAC, 1, 0), 64);
    let transport = model.mmio(1);
    assert_eq!(transport.kind(), TransportKind::MmioV1);
    let mut net = Net::new(transport).unwrap();
    model.attach_queues();
    assert_eq!(model.negotiated() & (1 << 30), 0, "never BAD_FEATURE");
    assert_ne!(model.negotiated() & bits::ANY_LAYOUT, 0);
    round_trip(&mut net, &mut model, 10);
    HostHal::assert_dma_only_for(net.transport().dma_owner());
}

#[test]
fn legacy_mmio_with_mrg_rxbuf_uses_the_12_byte_header() {
    trace_logging();
    let mut model = NetModel::new(QEMU_LEGACY_FEATURES, net_config(MAC, 1, 0), 64);
    let transport = model.mmio(1);
    let mut net = Net::new(transport).unwrap();
    model.attach_queues();
    round_trip(&mut net, &mut model, 12);
}

#[test]
fn legacy_pci_transport_works() {
    trace_logging();
    let mut model = NetModel::new(QEMU_LEGACY_FEATURES, net_config(MAC, 1, 0), 256);
    let transport = model.pci(false);
    assert_eq!(transport.kind(), TransportKind::PciLegacy);
    let mut net: Net<AnyTransport<HostHal>> = Net::new(transport).unwrap();
    model.attach_queues();
    // Legacy PCI cannot choose: the queue is the device's size.
    assert_eq!(net.rx().size(), 256);
    round_trip(&mut net, &mut model, 12);
}

#[test]
fn modern_pci_transport_works() {
    trace_logging();
    let mut model = NetModel::new(QEMU_MODERN_FEATURES, net_config(MAC, 1, 0), 256);
    let transport = model.pci(true);
    assert_eq!(transport.kind(), TransportKind::PciModern);
    let mut net: Net<AnyTransport<HostHal>> = Net::new(transport).unwrap();
    model.attach_queues();
    round_trip(&mut net, &mut model, 12);
}

#[test]
fn modern_without_mrg_rxbuf_keeps_12_bytes_and_whole_packet_buffers() {
    let mut model = modern_model(64);
    let options = NetOptions {
        features: SUPPORTED_FEATURES & !bits::MRG_RXBUF,
        ..NetOptions::default()
    };
    let mut net = modern_mmio(&mut model, options);
    assert_eq!(model.negotiated() & bits::MRG_RXBUF, 0);
    assert!(model.rx_buffer_lens().iter().all(|&len| len >= 1526));
    round_trip(&mut net, &mut model, 12);
}

#[test]
fn legacy_without_any_layout_puts_the_header_in_its_own_descriptor() {
    trace_logging();
    let offer = QEMU_LEGACY_FEATURES & !bits::MRG_RXBUF;
    let mut model = NetModel::new(offer, net_config(MAC, 1, 0), 64);
    let transport = model.mmio(1);
    let options = NetOptions {
        features: SUPPORTED_FEATURES & !bits::ANY_LAYOUT,
        // Without indirect tables each buffer is two ring descriptors.
        ring_features: bits::EVENT_IDX,
        ..NetOptions::default()
    };
    let mut net = Net::with_options(transport, options).unwrap();
    model.attach_queues();
    assert_eq!(model.negotiated() & bits::ANY_LAYOUT, 0);
    // Half as many receive buffers as descriptors, each a header + frame pair.
    let shapes = model.rx_chain_descriptors();
    assert_eq!(shapes.len(), 32);
    assert!(shapes.iter().all(|&d| d == 2));
    round_trip(&mut net, &mut model, 10);
    // The device read the transmit header from a descriptor of its own.
    net.send(&test_frame(64, 9)).unwrap();
    model.process_tx();
    assert_eq!(model.sent.last().unwrap().descriptors, 2);
}

// ----- receive: buffers, merging, zero copy -------------------------------

#[test]
fn single_buffer_packets_are_handed_out_in_place() {
    let mut model = modern_model(64);
    let mut net = modern_mmio(&mut model, NetOptions::default());
    let frame = test_frame(1514, 11);
    assert_eq!(model.deliver(&frame), Ok(1));
    let got = receive_all(&mut net);
    assert_eq!(got, vec![(frame, true, 1)]);
    assert_eq!(net.stats().rx.merged, 0);
}

#[test]
fn mergeable_buffers_are_assembled_by_num_buffers() {
    let mut model = modern_model(64);
    let options = NetOptions {
        mergeable_buffer_len: 256,
        ..NetOptions::default()
    };
    let mut net = modern_mmio(&mut model, options);
    assert!(model.rx_buffer_lens().iter().all(|&len| len == 256));
    // 12 + 1000 bytes over 256-byte buffers: 256 + 256 + 256 + 244.
    let frame = test_frame(1000, 5);
    assert_eq!(model.deliver(&frame), Ok(4));
    let small = test_frame(200, 6);
    assert_eq!(model.deliver(&small), Ok(1));
    let got = receive_all(&mut net);
    assert_eq!(got, vec![(frame, false, 4), (small, true, 1)]);
    let stats = net.stats().rx;
    assert_eq!(stats.packets, 2);
    assert_eq!(stats.merged, 1);
    assert_eq!(stats.buffers_used, 5);
    assert_eq!(stats.dropped(), 0);
    // All five buffers went back: the device holds all 64 again.
    assert_eq!(model.rx_available(), 64);
}

#[test]
fn a_merged_packet_can_be_finished_by_a_later_receive() {
    let mut model = modern_model(16);
    let options = NetOptions {
        mergeable_buffer_len: 128,
        ..NetOptions::default()
    };
    let mut net = modern_mmio(&mut model, options);
    let frame = test_frame(300, 8);
    let mut packet = model.header(0, 0, 3);
    packet.extend_from_slice(&frame);
    // 12 + 300 = 312 bytes: 128 + 128 + 56. Only the first two arrive now.
    model
        .deliver_raw(&[
            RawPart {
                bytes: packet[..128].to_vec(),
                claimed_len: 128,
            },
            RawPart {
                bytes: packet[128..256].to_vec(),
                claimed_len: 128,
            },
        ])
        .unwrap();
    assert!(receive_all(&mut net).is_empty());
    assert!(net.rx().assembling());
    model
        .deliver_raw(&[RawPart {
            bytes: packet[256..].to_vec(),
            claimed_len: 56,
        }])
        .unwrap();
    let got = receive_all(&mut net);
    assert_eq!(got, vec![(frame, false, 3)]);
    assert_eq!(model.rx_available(), 16);
}

#[test]
fn the_receive_queue_stays_full_over_many_packets() {
    let mut model = modern_model(8);
    let mut net = modern_mmio(&mut model, NetOptions::default());
    for i in 0..100u32 {
        let frame = test_frame(60 + (i as usize * 13) % 1400, i as u8);
        model
            .deliver(&frame)
            .unwrap_or_else(|s| panic!("packet {i}: starved {s:?}"));
        let got = receive_all(&mut net);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, frame);
    }
    assert_eq!(model.rx_available(), 8);
    assert_eq!(net.rx().buffers_posted(), 8);
    assert_eq!(net.stats().rx.packets, 100);
    assert_eq!(
        net.stats().rx.buffers_posted,
        108,
        "8 at bring-up, one repost per packet"
    );
}

#[test]
fn receive_before_flush_does_not_starve_later_packets_after_flush() {
    let mut model = modern_model(4);
    let mut net = modern_mmio(&mut model, NetOptions::default());
    for i in 0..4 {
        model.deliver(&test_frame(64, i)).unwrap();
    }
    assert!(
        model.deliver(&test_frame(64, 9)).is_err(),
        "all four buffers in use"
    );
    // Receiving reposts, flushing publishes.
    let mut n = 0;
    while let Some(p) = net.rx().receive().unwrap() {
        assert_eq!(p.len(), 64);
        n += 1;
    }
    assert_eq!(n, 4);
    assert_eq!(net.rx().unpublished(), 4);
    net.flush();
    assert_eq!(model.rx_available(), 4);
}

// ----- transmit -----------------------------------------------------------

#[test]
fn a_batch_of_frames_costs_one_notification() {
    let mut model = modern_model(64);
    let mut net = modern_mmio(&mut model, NetOptions::default());
    let before = model.core.borrow().notifications.len();
    let frames: Vec<Vec<u8>> = (0..10).map(|i| test_frame(60 + i * 100, i as u8)).collect();
    for frame in &frames {
        net.tx().send(frame).unwrap();
    }
    assert_eq!(
        model.core.borrow().notifications.len(),
        before,
        "nothing published yet"
    );
    assert_eq!(net.flush(), 1);
    let notified: Vec<u16> = model.core.borrow().notifications[before..].to_vec();
    assert_eq!(notified, vec![1]);
    assert_eq!(model.process_tx(), 10);
    let sent: Vec<Vec<u8>> = model.sent.iter().map(|s| s.frame.clone()).collect();
    assert_eq!(sent, frames);
    assert!(model.sent.iter().all(|s| s.header == vec![0u8; 12]));
    assert_eq!(model.missed_notifications, 0);
    // The next batch, after the device went back to sleep, is one more notification.
    for frame in &frames[..3] {
        net.tx().send(frame).unwrap();
    }
    assert_eq!(net.flush(), 1);
    assert_eq!(model.process_tx(), 3);
    assert_eq!(net.stats().tx_ring.notifications, 2);
    assert_eq!(model.missed_notifications, 0);
}

#[test]
fn a_full_transmit_queue_is_reported_at_once_and_reclaimed_later() {
    let mut model = modern_model(8);
    let options = NetOptions {
        tx_queue_size: 4,
        ..NetOptions::default()
    };
    let mut net = modern_mmio(&mut model, options);
    assert_eq!(net.tx().size(), 4);
    for i in 0..4 {
        net.tx().send(&test_frame(60, i)).unwrap();
    }
    // No wait, no spin: the fifth is refused immediately.
    assert_eq!(
        net.tx().send(&test_frame(60, 4)),
        Err(NetError::TxQueueFull)
    );
    let mut called = false;
    assert_eq!(
        net.tx().send_with(60, |_| called = true),
        Err(NetError::TxQueueFull)
    );
    assert!(!called, "the frame is not built when there is no room");
    net.flush();
    assert_eq!(model.process_tx(), 4);
    // The device gave them back; the next send reclaims and succeeds.
    net.tx().send(&test_frame(60, 5)).unwrap();
    let stats = net.stats().tx;
    assert_eq!(stats.packets, 5);
    assert_eq!(stats.reclaimed, 4);
    assert_eq!(stats.full, 2);
}

#[test]
fn send_with_writes_straight_into_the_dma_buffer() {
    let mut model = modern_model(16);
    let mut net = modern_mmio(&mut model, NetOptions::default());
    let frame = test_frame(300, 2);
    let len = net
        .tx()
        .send_with(300, |buffer| {
            assert_eq!(buffer.len(), 300);
            buffer.copy_from_slice(&frame);
            buffer.len()
        })
        .unwrap();
    assert_eq!(len, 300);
    net.flush();
    model.process_tx();
    assert_eq!(model.sent[0].frame, frame);
    assert_eq!(
        net.tx().send_with(0, |_| ()),
        Err(NetError::FrameTooLong { len: 0, max: 1514 })
    );
}

#[test]
fn small_queues_carry_many_frames_both_ways() {
    let mut model = modern_model(256);
    let options = NetOptions {
        rx_queue_size: 2,
        tx_queue_size: 2,
        ctrl_queue_size: 2,
        ..NetOptions::default()
    };
    let mut net = modern_mmio(&mut model, options);
    assert_eq!(net.rx().size(), 2);
    assert_eq!(net.tx().size(), 2);
    for i in 0..50u8 {
        let frame = test_frame(64 + i as usize, i);
        net.send(&frame).unwrap();
        model.process_tx();
        model.deliver(&frame).unwrap();
        let got = receive_all(&mut net);
        assert_eq!(got[0].0, frame);
    }
    assert_eq!(model.sent.len(), 50);
    assert_eq!(model.missed_notifications, 0);
}

// ----- control queue and link status ---------------------------------------

#[test]
fn control_commands_reach_the_device_with_their_exact_bytes() {
    let mut model = modern_model(32);
    let mut net = modern_mmio(&mut model, NetOptions::default());
    net.set_promiscuous(true, &mut stepper(&mut model)).unwrap();
    net.set_all_multicast(true, &mut stepper(&mut model))
        .unwrap();
    net.set_promiscuous(false, &mut stepper(&mut model))
        .unwrap();
    let new_mac = MacAddress([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
    net.set_mac(new_mac, &mut stepper(&mut model)).unwrap();
    let seen: Vec<(u8, u8, Vec<u8>)> = model
        .commands
        .iter()
        .map(|c| (c.class, c.command, c.data.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (0, 0, vec![1]),
            (0, 1, vec![1]),
            (0, 0, vec![0]),
            (1, 1, new_mac.0.to_vec()),
        ]
    );
    assert_eq!(net.mac(), new_mac);
    assert_eq!(net.stats().ctrl.unwrap().ok, 4);
}

#[test]
fn control_answers_are_judged_by_the_ack_byte_not_the_used_length() {
    // §2.7.8: a device may write more than it reports, so a length of 0
    // with an OK ack is an OK answer.
    let mut model = modern_model(32);
    let mut net = modern_mmio(&mut model, NetOptions::default());
    model.ctrl_used_len = Some(CtrlUsedLen::Exactly(0));
    net.set_promiscuous(true, &mut stepper(&mut model)).unwrap();
    model.ctrl_ack = 1;
    assert_eq!(
        net.set_promiscuous(false, &mut stepper(&mut model)),
        Err(NetError::ControlRejected)
    );
    // A modern device claiming more than the one writable byte broke
    // §2.7.8 ("MUST write at least len bytes").
    model.ctrl_ack = 0;
    model.ctrl_used_len = Some(CtrlUsedLen::TotalChain);
    assert_eq!(
        net.set_promiscuous(false, &mut stepper(&mut model)),
        Err(NetError::ControlBadReply { ack: None, len: 4 })
    );

    // A legacy device reporting the whole chain (§2.7.8 legacy interface:
    // "ignore the len value"): the ack byte still answers.
    let mut model = NetModel::new(QEMU_LEGACY_FEATURES, net_config(MAC, 1, 0), 64);
    let transport = model.mmio(1);
    let mut net = Net::new(transport).unwrap();
    model.attach_queues();
    model.ctrl_used_len = Some(CtrlUsedLen::TotalChain);
    net.set_promiscuous(true, &mut stepper(&mut model)).unwrap();
    model.ctrl_used_len = Some(CtrlUsedLen::Exactly(0));
    net.set_all_multicast(true, &mut stepper(&mut model))
        .unwrap();
    model.ctrl_ack = 1;
    model.ctrl_used_len = Some(CtrlUsedLen::TotalChain);
    assert_eq!(
        net.set_promiscuous(false, &mut stepper(&mut model)),
        Err(NetError::ControlRejected)
    );
    let stats = net.stats().ctrl.unwrap();
    assert_eq!((stats.ok, stats.rejected, stats.bad_replies), (2, 1, 0));
}

#[test]
fn a_rejected_command_and_a_silent_device_are_errors() {
    let mut model = modern_model(32);
    let mut net = modern_mmio(&mut model, NetOptions::default());
    model.ctrl_ack = 1;
    assert_eq!(
        net.set_all_multicast(true, &mut stepper(&mut model)),
        Err(NetError::ControlRejected)
    );
    model.ctrl_ack = 7;
    assert_eq!(
        net.set_all_multicast(true, &mut stepper(&mut model)),
        Err(NetError::ControlBadReply {
            ack: Some(7),
            len: 1
        })
    );
    // A device that never answers: the wait gives up, the next command is
    // refused while the first is unanswered, and goes through once it is.
    model.ctrl_ack = 0;
    let mut never = BoundedWait::new(5, || {});
    assert_eq!(
        net.set_promiscuous(true, &mut never),
        Err(NetError::Timeout { waits: 5 })
    );
    assert_eq!(
        net.set_promiscuous(true, &mut BoundedWait::new(5, || {})),
        Err(NetError::ControlBusy)
    );
    model.process_ctrl();
    net.set_promiscuous(false, &mut stepper(&mut model))
        .unwrap();
    // The late answer to the timed-out command was collected (and was OK).
    let stats = net.stats().ctrl.unwrap();
    assert_eq!(
        stats.commands, 4,
        "the refused (busy) one never reached the device"
    );
    assert_eq!(
        (stats.ok, stats.rejected, stats.bad_replies, stats.timeouts),
        (2, 1, 1, 1)
    );
}

#[test]
fn a_control_command_waits_with_interrupts_on_and_leaves_them_off() {
    // Without EVENT_IDX the NO_INTERRUPT flag alone says whether the device
    // interrupts, so a queue left armed shows at the next completion.
    let mut model = modern_model(32);
    let options = NetOptions {
        ring_features: drivers::features::RING_INDIRECT_DESC,
        ..NetOptions::default()
    };
    let mut net = modern_mmio(&mut model, options);
    assert_eq!(model.negotiated() & drivers::features::RING_EVENT_IDX, 0);
    // An interrupt-driven wait: the queue is armed while the driver sleeps,
    // so the device's answer interrupts.
    let mut sleeping = StepModel::sleeping(&mut model);
    net.set_promiscuous(true, &mut sleeping).unwrap();
    assert_eq!(sleeping.waits(), 1);
    assert_eq!(model.interrupts[CTRL_QUEUE as usize], 1);
    // A polling wait afterwards: nobody sleeps, so nobody wants an
    // interrupt, and the wait before left the queue disarmed (§2.7.7).
    net.set_promiscuous(false, &mut stepper(&mut model))
        .unwrap();
    assert_eq!(model.commands.len(), 2);
    assert_eq!(
        model.interrupts[CTRL_QUEUE as usize], 1,
        "the control queue was left asking for interrupts after the wait"
    );
}

#[test]
fn link_changes_arrive_through_the_configuration_interrupt() {
    let mut model = modern_model(16);
    let mut net = modern_mmio(&mut model, NetOptions::default());
    assert!(net.link_up());
    model.set_link(false);
    let status = net.handle_interrupt().unwrap();
    assert!(status.contains(drivers::transport::InterruptStatus::CONFIG));
    assert!(!net.link_up());
    assert_eq!(
        net.handle_config_change().unwrap(),
        None,
        "no change the second time"
    );
    model.set_link(true);
    net.handle_interrupt().unwrap();
    assert!(net.link_up());
    assert_eq!(net.stats().config_changes, 3);
}

/// While the device reports the link down, the transmit notification is
/// held back: a device notified then drops the frames, and QEMU's packed
/// ring does it in a way that leaves the transmit queue dead (see
/// `NetDevice::flush`). The driver reads the status itself: here the
/// configuration interrupt has not been handled, so the cached state still
/// says up.
#[test]
fn no_transmit_notification_while_the_device_reports_the_link_down() {
    let mut model = modern_model(16);
    let mut net = modern_mmio(&mut model, NetOptions::default());
    net.send(&test_frame(60, 1)).unwrap();
    assert_eq!(model.process_tx(), 1);
    model.set_link(false);
    assert!(net.link_up(), "the configuration change is not handled yet");
    net.send(&test_frame(60, 2)).unwrap();
    assert_eq!(
        model.process_tx(),
        0,
        "the device was notified while the link was down"
    );
    assert_eq!(model.sent.len(), 1);
    net.flush();
    assert_eq!(model.process_tx(), 0, "still down: still held back");
    model.set_link(true);
    net.flush();
    assert_eq!(
        model.process_tx(),
        1,
        "the held notification goes out once the link is up"
    );
    assert_eq!(model.sent.len(), 2);
    assert_eq!(model.sent[1].frame, test_frame(60, 2));
}

#[test]
fn without_the_status_feature_the_link_is_always_up() {
    trace_logging();
    let offer = QEMU_MODERN_FEATURES & !bits::STATUS;
    let mut model = NetModel::new(offer, net_config(MAC, 0, 0), 16);
    let mut net = modern_mmio(&mut model, NetOptions::default());
    assert!(
        net.link_up(),
        "status 0 in config, but the field does not exist"
    );
    assert_eq!(net.handle_config_change().unwrap(), None);
}

#[test]
fn a_device_without_a_mac_gets_a_local_unicast_address() {
    trace_logging();
    let offer = QEMU_LEGACY_FEATURES & !bits::MAC;
    let model = NetModel::new(offer, net_config([0; 6], 1, 0), 16);
    let transport = model.mmio(1);
    let net = Net::new(transport).unwrap();
    let mac = net.mac();
    assert_eq!(mac.0[0] & 0x03, 0x02, "locally administered unicast: {mac}");
    // Legacy: the driver wrote it into the device's mac field.
    assert_eq!(&model.core.borrow().config[..6], &mac.0);
}

// ----- a device that lies -------------------------------------------------

/// Delivers `parts`, receives everything, and returns the frames received.
fn hostile_round(
    model: &mut NetModel,
    net: &mut Net<impl Transport>,
    parts: &[RawPart],
) -> Vec<Vec<u8>> {
    model.deliver_raw(parts).unwrap();
    receive_all(net).into_iter().map(|(f, _, _)| f).collect()
}

#[test]
fn bogus_lengths_and_num_buffers_drop_the_packet_and_keep_every_buffer() {
    let mut model = modern_model(16);
    let options = NetOptions {
        mergeable_buffer_len: 512,
        ..NetOptions::default()
    };
    let mut net = modern_mmio(&mut model, options);
    let frame = test_frame(100, 1);
    let mut good = model.header(0, 0, 1);
    good.extend_from_slice(&frame);
    let with = |header: Vec<u8>, claimed: u32| {
        let mut bytes = header;
        bytes.extend_from_slice(&frame);
        RawPart {
            bytes,
            claimed_len: claimed,
        }
    };

    // A length beyond the 512-byte buffer (the ring rejects it).
    let part = with(model.header(0, 0, 1), 513);
    assert!(hostile_round(&mut model, &mut net, &[part]).is_empty());
    // A length shorter than the header.
    let part = with(model.header(0, 0, 1), 11);
    assert!(hostile_round(&mut model, &mut net, &[part]).is_empty());
    // num_buffers 0, and more than the queue holds.
    let part = with(model.header(0, 0, 0), 112);
    assert!(hostile_round(&mut model, &mut net, &[part]).is_empty());
    let part = with(model.header(0, 0, 17), 112);
    assert!(hostile_round(&mut model, &mut net, &[part]).is_empty());
    let part = with(model.header(0, 0, 65535), 112);
    assert!(hostile_round(&mut model, &mut net, &[part]).is_empty());
    // A segmentation type that was never negotiated.
    let part = with(model.header(0, 4, 1), 112);
    assert!(hostile_round(&mut model, &mut net, &[part]).is_empty());
    // A runt: header and 5 bytes.
    let part = with(model.header(0, 0, 1), 17);
    assert!(hostile_round(&mut model, &mut net, &[part]).is_empty());
    // A merged packet whose second buffer claims too much: both buffers back.
    let head = with(model.header(0, 0, 2), 112);
    let tail = RawPart {
        bytes: vec![0; 16],
        claimed_len: 4096,
    };
    assert!(hostile_round(&mut model, &mut net, &[head, tail]).is_empty());

    let stats = net.stats().rx;
    // Too long, too short, and the merged packet's lying second buffer.
    assert_eq!(stats.dropped_bad_length, 3);
    assert_eq!(stats.dropped_bad_num_buffers, 3);
    assert_eq!(stats.dropped_bad_header, 1);
    assert_eq!(stats.dropped_runt, 1);
    assert_eq!(stats.packets, 0);
    assert!(
        stats.device_errors >= 1,
        "the cut-short merged packet is counted"
    );
    // Not one buffer lost: the device holds all 16 again, and a good packet still works.
    assert_eq!(model.rx_available(), 16);
    assert_eq!(net.rx().buffers_posted(), 16);
    assert_eq!(net.rx().buffers_free(), 0);
    let got = hostile_round(
        &mut model,
        &mut net,
        &[RawPart {
            claimed_len: good.len() as u32,
            bytes: good,
        }],
    );
    assert_eq!(got, vec![frame]);
}

#[test]
fn a_merged_packet_longer_than_the_mtu_allows_is_dropped_whole() {
    let mut model = modern_model(32);
    let options = NetOptions {
        mergeable_buffer_len: 1024,
        ..NetOptions::default()
    };
    let mut net = modern_mmio(&mut model, options);
    // Three full 1024-byte buffers: 3060 frame bytes, more than 1514 + a VLAN tag.
    let mut first = model.header(0, 0, 3);
    first.resize(1024, 0xaa);
    let parts = vec![
        RawPart {
            bytes: first,
            claimed_len: 1024,
        },
        RawPart {
            bytes: vec![0xbb; 1024],
            claimed_len: 1024,
        },
        RawPart {
            bytes: vec![0xcc; 1024],
            claimed_len: 1024,
        },
    ];
    assert!(hostile_round(&mut model, &mut net, &parts).is_empty());
    assert_eq!(net.stats().rx.dropped_too_long, 1);
    assert_eq!(model.rx_available(), 32);
    // Exactly at the limit is fine: 1518 frame bytes over two buffers.
    let frame = test_frame(1518, 3);
    assert_eq!(model.deliver(&frame), Ok(2));
    assert_eq!(receive_all(&mut net), vec![(frame, false, 2)]);
}

/// Found by the `net_rx` fuzz target (`fuzz/regressions/net_rx/`): with a
/// small MTU a receive buffer holds far more than the MTU allows, and a
/// frame in one buffer was handed out whatever its length; only merged
/// frames were held to the MTU.
#[test]
fn a_frame_in_one_buffer_longer_than_the_mtu_allows_is_dropped() {
    for mergeable in [true, false] {
        let offer = if mergeable {
            QEMU_MODERN_FEATURES | bits::MTU
        } else {
            (QEMU_MODERN_FEATURES | bits::MTU) & !bits::MRG_RXBUF
        };
        let mut model = NetModel::new(offer, net_config(MAC, 1, 68), 16);
        let mut net = modern_mmio(&mut model, NetOptions::default());
        assert_eq!(net.max_frame(), 82);
        // 68 + 14 + a VLAN tag is the most; one byte more is dropped.
        let too_long = test_frame(87, 1);
        assert_eq!(model.deliver(&too_long), Ok(1));
        assert!(receive_all(&mut net).is_empty(), "mergeable: {mergeable}");
        assert_eq!(net.stats().rx.dropped_too_long, 1);
        let longest = test_frame(86, 2);
        model.deliver(&longest).unwrap();
        assert_eq!(receive_all(&mut net), vec![(longest, true, 1)]);
        assert_eq!(model.rx_available(), 16, "every buffer back");
    }
}

#[test]
fn a_broken_receive_ring_is_an_error_and_recover_brings_the_device_back() {
    let mut model = modern_model(16);
    let mut net = modern_mmio(&mut model, NetOptions::default());
    let addrs = model.queue_addresses(RX_QUEUE).unwrap();
    // used.idx jumps far past anything the driver made available.
    let mut hostile = HostileDevice::new(addrs);
    hostile.set_used_idx(1000);
    match net.rx().receive() {
        Err(NetError::Queue {
            queue: 0,
            error: QueueError::UsedIndexTooFar { .. },
        }) => {}
        other => panic!("expected a broken ring, got {other:?}"),
    }
    net.recover().unwrap();
    assert!(!net.is_failed());
    model.attach_queues();
    assert_eq!(model.rx_available(), 16, "fresh buffers after the reset");
    let frame = test_frame(90, 4);
    model.deliver(&frame).unwrap();
    assert_eq!(receive_all(&mut net), vec![(frame, true, 1)]);
}

#[test]
fn a_device_that_never_finishes_a_reset_keeps_its_memory_and_is_dead() {
    // §2.1.2: without a reset that reads back 0 the device may still write
    // its receive buffers and rings; freeing them would be a use-after-free
    // by DMA, so they are kept for ever and the device is never used again.
    let mut model = modern_model(64);
    let pages_before = HostHal::live_dma_pages();
    let mut net = modern_mmio(&mut model, NetOptions::default());
    let pages_up = HostHal::live_dma_pages();
    assert!(pages_up > pages_before);
    model.core.borrow_mut().reset_delay_reads = u32::MAX;
    let kept_before = hal::kept_forever();
    let clock_before = HostHal::fake_clock_us();
    assert_eq!(
        net.recover(),
        Err(NetError::Device(DeviceError::Dead)),
        "no recovery without a reset"
    );
    assert!(HostHal::fake_clock_us() - clock_before >= u64::from(RESET_TIMEOUT_US));
    assert!(net.is_dead() && net.is_failed());
    assert!(
        hal::kept_forever() >= kept_before + 2,
        "the queue pairs (rx and tx) and ctrl kept"
    );
    assert_eq!(net.send(&test_frame(60, 1)), Err(NetError::DeviceFailed));
    // A second try does not touch the device again.
    let writes = model.core.borrow().status_writes.len();
    assert_eq!(net.recover(), Err(NetError::Device(DeviceError::Dead)));
    drop(net);
    assert_eq!(model.core.borrow().status_writes.len(), writes);
    assert_eq!(
        HostHal::live_dma_pages(),
        pages_up,
        "nothing the device was given is freed"
    );
}

#[test]
fn dropping_the_driver_resets_the_device_and_frees_all_dma_memory() {
    let mut model = modern_model(64);
    let pages_before = HostHal::live_dma_pages();
    let mut net = modern_mmio(&mut model, NetOptions::default());
    assert!(HostHal::live_dma_pages() > pages_before);
    net.tx().send(&test_frame(60, 1)).unwrap();
    drop(net);
    assert_eq!(
        model.core.borrow().status,
        0,
        "reset before the memory is freed"
    );
    assert_eq!(HostHal::live_dma_pages(), pages_before);
    assert_eq!(
        DeviceStatus::from_bits_truncate(*model.core.borrow().status_writes.last().unwrap()),
        DeviceStatus::empty()
    );
    // Receive buffers are one pool, not a page per packet.
    let mut model = modern_model(256);
    let net = modern_mmio(&mut model, NetOptions::default());
    let rx_pool_pages = (256 * 1536usize).div_ceil(PAGE_SIZE);
    assert!(HostHal::live_dma_pages() >= rx_pool_pages);
    drop(net);
}

#[test]
fn a_reserved_transmit_buffer_dropped_unsent_goes_back() {
    let mut model = modern_model(16);
    let mut net = modern_mmio(&mut model, NetOptions::default());
    let free = net.tx().buffers_free();
    {
        let mut slot = net.tx().reserve(100).unwrap();
        assert_eq!(slot.buffer().len(), 100);
        slot.buffer().fill(0x42);
    }
    assert_eq!(net.tx().buffers_free(), free);
    assert_eq!(net.tx().in_flight(), 0);
    let mut slot = net.tx().reserve(64).unwrap();
    slot.buffer().copy_from_slice(&test_frame(64, 1));
    slot.send().unwrap();
    assert_eq!(net.flush(), 1);
    assert_eq!(model.process_tx(), 1);
    assert_eq!(model.sent[0].frame, test_frame(64, 1));
    assert_eq!(model.sent[0].header, vec![0u8; 12]);
}
