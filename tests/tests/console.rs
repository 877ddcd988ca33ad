//! `drivers::console` against a QEMU-like virtio-serial model: bring-up with
//! and without MULTIPORT, the control-queue handshake, data both ways with
//! back-pressure, hotplug, EMERG_WRITE, every transport flavour, and a device
//! that sends malformed control messages or lies in the used ring.

use drivers::console::control::{ControlError, NameError, RECEIVE_BUFFER_BYTES};
use drivers::console::{
    config, feature, ConsoleDevice, ConsoleError, ConsoleEvent, ConsoleOptions,
    CONTROL_RECEIVE_QUEUE,
};
use drivers::device::{BoundedWait, DeviceError};
use drivers::features;
use drivers::queue::QueueError;
use drivers::transport::mmio::MmioTransport;
use drivers::transport::{Transport, TransportKind, RESET_TIMEOUT_US};
use tests::console_model::{
    control_bytes, event, ConsoleModel, ConsoleModelConfig, ConsoleModelTransport, HostPortConfig,
    SharedConsoleModel,
};
use tests::host_hal::HostHal;
use tests::models::trace_logging;
use tests::models::virtio::{MmioWindow, VirtioCore};
use tests::vq_model::{device_memory, Rng};
use vm_memory::{Bytes, GuestAddress};

type Console = ConsoleDevice<HostHal, ConsoleModelTransport>;

const KIB: usize = 1024;

fn multiport_ports() -> Vec<HostPortConfig> {
    vec![
        HostPortConfig::console(0),
        HostPortConfig::named(1, "org.test.one"),
        HostPortConfig {
            host_open: false,
            ..HostPortConfig::named(2, "two")
        },
    ]
}

fn bring_up(
    config: ConsoleModelConfig,
    kind: TransportKind,
    options: ConsoleOptions,
) -> (SharedConsoleModel, Console) {
    trace_logging();
    let model = ConsoleModel::new(config).shared();
    let transport = ConsoleModelTransport::new(model.clone(), kind);
    let console = ConsoleDevice::with_options(transport, options).expect("bring-up");
    (model, console)
}

fn multiport(kind: TransportKind) -> (SharedConsoleModel, Console) {
    bring_up(
        ConsoleModelConfig::qemu_multiport(multiport_ports()),
        kind,
        ConsoleOptions::default(),
    )
}

/// A wait that lets the model run `limit` times.
fn stepping(model: &SharedConsoleModel, limit: u64) -> BoundedWait<impl FnMut()> {
    let model = model.clone();
    BoundedWait::new(limit, move || model.borrow_mut().step())
}

/// Bytes that differ at every offset and do not repeat with a short period.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

fn events(console: &mut Console) -> Vec<ConsoleEvent> {
    std::iter::from_fn(|| console.next_event()).collect()
}

fn bad_controls(events: &[ConsoleEvent]) -> Vec<ControlError> {
    events
        .iter()
        .filter_map(|e| match e {
            ConsoleEvent::BadControl(c) => Some(*c),
            _ => None,
        })
        .collect()
}

fn assert_clean(model: &SharedConsoleModel) {
    let m = model.borrow();
    assert!(m.violations.is_empty(), "violations: {:?}", m.violations);
    assert_eq!(m.missed_notifications, 0, "missed notifications");
}

#[test]
fn without_multiport_port_0_is_there_from_the_start_and_echoes() {
    let (model, mut console) = bring_up(
        ConsoleModelConfig::single_port(Some((80, 25))),
        TransportKind::MmioV2,
        ConsoleOptions::default(),
    );
    assert_eq!(
        console.features() & (feature::SIZE | feature::MULTIPORT | feature::EMERG_WRITE),
        feature::SIZE | feature::EMERG_WRITE
    );
    assert!(!console.is_multiport());
    assert_eq!(console.size(), Some((80, 25)));
    let port = console.port(0).expect("port 0");
    assert!(port.console && port.host_open && port.guest_open);
    assert_eq!(console.ports().count(), 1);
    assert_eq!(console.console_port(), Some(0));
    // Only queues 0 and 1; every receive buffer posted.
    assert_eq!(model.borrow().live_queues(), 2);
    assert_eq!(model.borrow().posted_on(0), 16);
    assert!(model.borrow().control_received.is_empty());

    assert_eq!(console.write(0, b"hello, host").unwrap(), 11);
    assert_eq!(model.borrow().port(0).received, b"hello, host");

    model.borrow_mut().send_to_guest(0, b"typed by a user");
    assert_eq!(model.borrow().posted_on(0), 15, "one buffer filled");
    console.poll().unwrap();
    assert_eq!(console.readable(0), 15);
    let mut buf = [0u8; 6];
    assert_eq!(console.read(0, &mut buf).unwrap(), 6);
    assert_eq!(&buf, b"typed ");
    let mut rest = [0u8; 64];
    assert_eq!(console.read(0, &mut rest).unwrap(), 9);
    assert_eq!(&rest[..9], b"by a user");
    assert_eq!(console.read(0, &mut rest).unwrap(), 0);
    // The emptied buffer went straight back to the device.
    model.borrow_mut().step();
    assert_eq!(model.borrow().posted_on(0), 16);
    let stats = console.port(0).unwrap().stats;
    assert_eq!((stats.bytes_sent, stats.bytes_received), (11, 15));
    assert_clean(&model);
    HostHal::assert_dma_only_for(console.transport().dma_owner());
}

#[test]
fn multiport_handshake_sends_ready_and_open_and_learns_names() {
    let (model, mut console) = multiport(TransportKind::PciModern);
    assert!(console.is_multiport());
    use event::{DEVICE_READY, PORT_OPEN, PORT_READY};
    assert_eq!(
        model.borrow().control_received,
        vec![
            (0, DEVICE_READY, 1),
            (0, PORT_READY, 1),
            (0, PORT_OPEN, 1),
            (1, PORT_READY, 1),
            (1, PORT_OPEN, 1),
            (2, PORT_READY, 1),
            (2, PORT_OPEN, 1),
        ]
    );
    let ids: Vec<u32> = console.ports().map(|p| p.id).collect();
    assert_eq!(ids, vec![0, 1, 2]);
    assert_eq!(console.console_port(), Some(0));
    assert_eq!(console.port_by_name("org.test.one"), Some(1));
    assert_eq!(console.port_by_name("two"), Some(2));
    assert_eq!(console.port_by_name("three"), None);
    let p0 = console.port(0).unwrap();
    assert!(p0.console && p0.host_open && p0.name.is_none());
    let p2 = console.port(2).unwrap();
    assert!(!p2.console && !p2.host_open && p2.guest_open);
    for id in 0..3 {
        let host = model.borrow().port(id).clone();
        assert_eq!((host.ready, host.guest_open), (Some(1), true), "port {id}");
    }
    let seen = events(&mut console);
    for expected in [
        ConsoleEvent::PortAdded { id: 0 },
        ConsoleEvent::ConsolePort { id: 0 },
        ConsoleEvent::HostConnection { id: 0, open: true },
        ConsoleEvent::PortAdded { id: 2 },
        ConsoleEvent::PortNamed { id: 1 },
    ] {
        assert!(
            seen.contains(&expected),
            "{expected:?} missing from {seen:?}"
        );
    }
    assert!(bad_controls(&seen).is_empty());
    // Every control receive buffer is back with the device.
    model.borrow_mut().step();
    assert_eq!(model.borrow().posted_on(CONTROL_RECEIVE_QUEUE), 32);
    assert_eq!(model.borrow().control_dropped, 0);
    assert_eq!(console.stats().control_sent, 7);
    assert_eq!(console.stats().control_errors, 0);

    // Data on a named port, both ways.
    assert_eq!(console.write(1, b"to the host").unwrap(), 11);
    assert_eq!(model.borrow().port(1).received, b"to the host");
    model.borrow_mut().send_to_guest(1, b"to the guest");
    let mut buf = [0u8; 32];
    let n = console
        .read_wait(1, &mut buf, &mut stepping(&model, 10))
        .unwrap();
    assert_eq!(&buf[..n], b"to the guest");
    // Port 2's host side is closed: writing would be thrown away, so it is refused.
    assert_eq!(console.write(2, b"x"), Err(ConsoleError::PortClosed(2)));
    assert_eq!(model.borrow().port(2).discarded, 0);
    assert_clean(&model);
    // Control queues and every port's pools included.
    HostHal::assert_dma_only_for(console.transport().dma_owner());
}

#[test]
fn recover_after_a_reset_behind_the_drivers_back_runs_the_handshake_again() {
    let (model, mut console) = multiport(TransportKind::PciModern);
    assert_eq!(console.write(0, b"before").unwrap(), 6);
    let sent_before = console.stats().control_sent;
    // Someone else resets the device (the benchmark lends it to another
    // driver this way) and then hands it back.
    console.transport_mut().reset().unwrap();
    assert_eq!(model.borrow().live_queues(), 0);
    model.borrow_mut().control_received.clear();
    console.recover().expect("recover");
    assert!(!console.is_failed());
    use event::{DEVICE_READY, PORT_OPEN, PORT_READY};
    {
        let m = model.borrow();
        assert_eq!(m.control_received.first(), Some(&(0, DEVICE_READY, 1)));
        for id in 0..3 {
            assert!(
                m.control_received.contains(&(id, PORT_READY, 1)),
                "port {id}"
            );
            assert!(
                m.control_received.contains(&(id, PORT_OPEN, 1)),
                "port {id}"
            );
        }
    }
    // The counters carry on across the recovery.
    assert_eq!(console.stats().control_sent, sent_before + 7);
    assert_eq!(console.console_port(), Some(0));
    assert!(console.port(0).unwrap().host_open);
    assert_eq!(console.port_by_name("org.test.one"), Some(1));
    assert_eq!(console.write(0, b" after").unwrap(), 6);
    assert_eq!(model.borrow().port(0).received, b"before after");
    model.borrow_mut().send_to_guest(0, b"typed");
    let mut buf = [0u8; 8];
    let n = console
        .read_wait(0, &mut buf, &mut stepping(&model, 10))
        .unwrap();
    assert_eq!(&buf[..n], b"typed");
    assert_clean(&model);
}

#[test]
fn recover_without_multiport_gives_port_0_back_at_once() {
    let (model, mut console) = bring_up(
        ConsoleModelConfig::single_port(None),
        TransportKind::MmioV2,
        ConsoleOptions::default(),
    );
    console.transport_mut().reset().unwrap();
    console.recover().expect("recover");
    assert_eq!(model.borrow().live_queues(), 2);
    assert_eq!(model.borrow().posted_on(0), 16);
    assert_eq!(console.write(0, b"again").unwrap(), 5);
    assert_eq!(model.borrow().port(0).received, b"again");
    assert_clean(&model);
}

#[test]
fn port_ready_is_paced_so_no_answer_is_dropped() {
    // Eight control receive buffers and six ports that each draw three
    // answers to PORT_READY (CONSOLE_PORT, PORT_NAME, PORT_OPEN): sending
    // the PORT_READYs as fast as transmit slots allow would bring 12
    // answers for 8 buffers, and QEMU drops what it has no buffer for.
    let ports: Vec<HostPortConfig> = (0..6)
        .map(|id| HostPortConfig {
            console: true,
            ..HostPortConfig::named(id, &format!("port-{id}"))
        })
        .collect();
    let options = ConsoleOptions {
        control_buffers: 8,
        ..ConsoleOptions::default()
    };
    let (model, mut console) = bring_up(
        ConsoleModelConfig::qemu_multiport(ports),
        TransportKind::MmioV2,
        options,
    );
    console
        .wait_until(&mut stepping(&model, 20), |c| {
            Ok((0..6).all(|id| c.port_by_name(&format!("port-{id}")) == Some(id)))
        })
        .unwrap();
    assert_eq!(model.borrow().control_dropped, 0);
    assert!((0..6).all(|id| {
        let port = console.port(id).unwrap();
        port.console && port.host_open
    }));
    assert_clean(&model);
}

#[test]
fn hostile_control_messages_are_refused_one_by_one() {
    let (model, mut console) = multiport(TransportKind::MmioV2);
    events(&mut console);
    let before_sent = console.stats().control_sent;
    let name_message = |id: u32, name: &[u8]| {
        let mut m = control_bytes(id, event::PORT_NAME, 1);
        m.extend_from_slice(name);
        m
    };
    let mut unterminated = control_bytes(1, event::PORT_NAME, 1);
    unterminated.resize(RECEIVE_BUFFER_BYTES, b'a');
    let cases: Vec<(Vec<u8>, Option<u32>, ControlError)> = vec![
        (vec![1, 0, 0, 0], None, ControlError::TooShort { len: 4 }),
        (Vec::new(), None, ControlError::TooShort { len: 0 }),
        (
            control_bytes(1, 99, 1),
            None,
            ControlError::UnknownEvent { id: 1, event: 99 },
        ),
        (
            control_bytes(0, event::DEVICE_READY, 1),
            None,
            ControlError::DriverOnlyEvent { id: 0, event: 0 },
        ),
        (
            control_bytes(1, event::PORT_READY, 1),
            None,
            ControlError::DriverOnlyEvent { id: 1, event: 3 },
        ),
        (
            control_bytes(1000, event::PORT_ADD, 1),
            None,
            ControlError::PortOutOfRange {
                id: 1000,
                max_nr_ports: 31,
            },
        ),
        (
            control_bytes(u32::MAX, event::PORT_REMOVE, 1),
            None,
            ControlError::PortOutOfRange {
                id: u32::MAX,
                max_nr_ports: 31,
            },
        ),
        (
            control_bytes(5, event::PORT_OPEN, 1),
            None,
            ControlError::UnknownPort { id: 5, event: 6 },
        ),
        (
            control_bytes(1, event::PORT_ADD, 1),
            None,
            ControlError::AlreadyAdded { id: 1 },
        ),
        (
            control_bytes(1, event::PORT_OPEN, 7),
            None,
            ControlError::BadOpenValue { id: 1, value: 7 },
        ),
        (
            control_bytes(0, event::RESIZE, 0),
            None,
            ControlError::ResizeTooShort { id: 0, len: 0 },
        ),
        (
            name_message(2, b"\0"),
            None,
            ControlError::BadName {
                id: 2,
                error: NameError::Empty,
            },
        ),
        (
            name_message(2, b"caf\xc3"),
            None,
            ControlError::BadName {
                id: 2,
                error: NameError::NotUtf8,
            },
        ),
        (
            name_message(2, b"\x1b[2Jclear\0"),
            None,
            ControlError::BadName {
                id: 2,
                error: NameError::ControlCharacter,
            },
        ),
        (
            unterminated,
            None,
            ControlError::BadName {
                id: 1,
                error: NameError::Unterminated,
            },
        ),
        (
            control_bytes(1, event::PORT_OPEN, 1),
            Some(100_000),
            ControlError::TooLong {
                len: 100_000,
                capacity: RECEIVE_BUFFER_BYTES as u32,
            },
        ),
        (
            name_message(1, b"another-name\0"),
            None,
            ControlError::NameAlreadySet { id: 1 },
        ),
    ];
    for (bytes, claimed, expected) in &cases {
        model.borrow_mut().inject_control(bytes.clone(), *claimed);
        console.poll().unwrap();
        let seen = events(&mut console);
        assert_eq!(bad_controls(&seen), vec![*expected], "{bytes:02x?}");
    }
    assert_eq!(console.stats().control_errors, cases.len() as u64);
    // Nothing was answered, names and states are unchanged.
    assert_eq!(console.stats().control_sent, before_sent);
    assert_eq!(console.port_by_name("org.test.one"), Some(1));
    assert!(console.port(1).unwrap().host_open);
    // A name without a terminator that does not fill the buffer is the
    // spec's form; a RESIZE with its payload is fine too.
    model
        .borrow_mut()
        .inject_control(name_message(0, b"spec-form"), None);
    let mut resize = control_bytes(0, event::RESIZE, 0);
    resize.extend_from_slice(&[132, 0, 43, 0]);
    model.borrow_mut().inject_control(resize, None);
    console.poll().unwrap();
    assert_eq!(console.port_by_name("spec-form"), Some(0));
    assert_eq!(console.port(0).unwrap().size, Some((132, 43)));
    assert!(events(&mut console).contains(&ConsoleEvent::Resized {
        id: 0,
        cols: 132,
        rows: 43
    }));
    // Every buffer came back, and the ports still work.
    model.borrow_mut().step();
    assert_eq!(model.borrow().posted_on(CONTROL_RECEIVE_QUEUE), 32);
    assert_eq!(console.write(1, b"still alive").unwrap(), 11);
    assert_eq!(model.borrow().port(1).received, b"still alive");
    assert_clean(&model);
}

#[test]
fn a_port_beyond_the_drivers_queues_is_answered_port_ready_0() {
    let options = ConsoleOptions {
        max_ports: 2,
        ..ConsoleOptions::default()
    };
    let (model, mut console) = bring_up(
        ConsoleModelConfig::qemu_multiport(multiport_ports()),
        TransportKind::MmioV2,
        options,
    );
    // Queues only for ports 0 and 1 (4 + control = 6 queues).
    assert_eq!(model.borrow().live_queues(), 6);
    assert_eq!(model.borrow().port(2).ready, Some(0));
    assert!(console.port(2).is_none());
    assert!(events(&mut console).contains(&ConsoleEvent::PortRejected { id: 2 }));
    assert_eq!(console.stats().control_errors, 0);
    assert_clean(&model);
}

#[test]
fn random_control_garbage_never_panics_and_the_console_survives() {
    let (model, mut console) = multiport(TransportKind::MmioV2);
    let mut rng = Rng::new(0xc0ffee);
    for round in 0..400 {
        let len = rng.below(300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if len >= 8 && round % 2 == 0 {
            // Keep event and id plausible half the time, to reach deeper code.
            bytes[0..4].copy_from_slice(&(rng.below(40) as u32).to_le_bytes());
            bytes[4..6].copy_from_slice(&(rng.below(9) as u16).to_le_bytes());
        }
        let claimed = (round % 7 == 0).then(|| rng.next_u64() as u32);
        model.borrow_mut().inject_control(bytes, claimed);
        console.poll().unwrap();
    }
    events(&mut console);
    assert!(!console.is_failed());
    model.borrow_mut().step();
    assert_eq!(model.borrow().posted_on(CONTROL_RECEIVE_QUEUE), 32);
    // Port 0 may have been removed and re-added by the garbage; make sure it
    // is there and open, then talk through it.
    if console.port(0).is_none() {
        model
            .borrow_mut()
            .inject_control(control_bytes(0, event::PORT_ADD, 1), None);
        console.poll().unwrap();
    }
    model.borrow_mut().host_open(0, true);
    console.poll().unwrap();
    model.borrow_mut().port_mut(0).received.clear();
    console
        .write_all(0, b"survived", &mut stepping(&model, 10))
        .unwrap();
    assert_eq!(model.borrow().port(0).received, b"survived");
}

#[test]
fn a_full_transmit_queue_pushes_back_instead_of_dropping() {
    let (model, mut console) = multiport(TransportKind::MmioV2);
    let data = pattern(300 * KIB, 1);
    model.borrow_mut().throttle(1, true);
    let first = console.write(1, &data).unwrap();
    // 32 buffers of 4 KiB went out, and nothing more fits.
    assert_eq!(first, 32 * 4 * KIB);
    assert_eq!(console.write(1, &data[first..]).unwrap(), 0);
    assert_eq!(console.port(1).unwrap().transmit_in_flight, 32);
    assert!(model.borrow().port(1).received.is_empty());

    // The host does not read: a blocking write gives up, saying how far it got.
    let err = console
        .write_all(1, &data[first..], &mut stepping(&model, 3))
        .unwrap_err();
    assert_eq!(err, ConsoleError::Timeout { waits: 3, done: 0 });

    // The host reads again after a while: everything arrives, in order.
    let unthrottle = {
        let model = model.clone();
        let mut steps = 0;
        BoundedWait::new(10_000, move || {
            steps += 1;
            if steps == 5 {
                model.borrow_mut().throttle(1, false);
            }
            model.borrow_mut().step();
        })
    };
    let mut wait = unthrottle;
    console.write_all(1, &data[first..], &mut wait).unwrap();
    console.flush(1, &mut wait).unwrap();
    assert!(model.borrow().port(1).received == data);
    assert_eq!(console.port(1).unwrap().stats.bytes_sent, data.len() as u64);
    assert_clean(&model);
}

#[test]
fn a_timed_out_write_delivers_exactly_what_it_reported() {
    let (model, mut console) = multiport(TransportKind::MmioV2);
    let data = pattern(200 * KIB, 2);
    model.borrow_mut().throttle(1, true);
    let err = console
        .write_all(1, &data, &mut stepping(&model, 2))
        .unwrap_err();
    let ConsoleError::Timeout { done, .. } = err else {
        panic!("expected a timeout, got {err:?}");
    };
    assert_eq!(done, 128 * KIB);
    model.borrow_mut().throttle(1, false);
    assert!(model.borrow().port(1).received == data[..done]);
}

#[test]
fn large_writes_put_many_descriptors_under_each_notification() {
    let (model, mut console) = multiport(TransportKind::MmioV2);
    let data = pattern(1024 * KIB, 3);
    let tx = drivers::console::transmit_queue(1).unwrap();
    let before = model.borrow().notifications_of(tx);
    console
        .write_all(1, &data, &mut stepping(&model, 100))
        .unwrap();
    let buffers = model.borrow().port(1).transmit_buffers;
    let notifications = model.borrow().notifications_of(tx) - before;
    assert_eq!(buffers, 256, "4 KiB per descriptor");
    assert!(
        notifications * 16 <= buffers as usize,
        "{notifications} notifications for {buffers} descriptors"
    );
    assert!(model.borrow().port(1).received == data);
    assert_clean(&model);
}

#[test]
fn one_mebibyte_each_way_through_a_named_port_arrives_intact() {
    let (model, mut console) = multiport(TransportKind::PciModern);
    let id = console.port_by_name("org.test.one").unwrap();
    let inbound = pattern(1024 * KIB, 4);
    let outbound = pattern(1024 * KIB, 5);
    model.borrow_mut().send_to_guest(id, &inbound);
    let mut got = Vec::with_capacity(inbound.len());
    let mut buf = vec![0u8; 10_000];
    let mut wait = stepping(&model, 10_000);
    while got.len() < inbound.len() {
        let n = console.read_wait(id, &mut buf, &mut wait).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got == inbound, "inbound data differs");
    console.write_all(id, &outbound, &mut wait).unwrap();
    console.flush(id, &mut wait).unwrap();
    assert!(
        model.borrow().port(id).received == outbound,
        "outbound data differs"
    );
    let stats = console.port(id).unwrap().stats;
    assert_eq!(stats.bytes_received, inbound.len() as u64);
    assert_eq!(stats.bytes_sent, outbound.len() as u64);
    assert_clean(&model);
}

#[test]
fn ports_come_and_go_as_the_device_says() {
    let (model, mut console) = multiport(TransportKind::MmioV2);
    model
        .borrow_mut()
        .add_port(HostPortConfig::named(3, "late"));
    console.poll().unwrap();
    assert_eq!(console.port_by_name("late"), Some(3));
    assert_eq!(model.borrow().port(3).ready, Some(1));
    console.write(3, b"hi").unwrap();
    assert_eq!(model.borrow().port(3).received, b"hi");

    // The host disconnects: writes are refused, not lost.
    model.borrow_mut().host_open(3, false);
    console.poll().unwrap();
    assert_eq!(console.write(3, b"x"), Err(ConsoleError::PortClosed(3)));
    model.borrow_mut().host_open(3, true);
    console.poll().unwrap();
    assert_eq!(console.write(3, b"again").unwrap(), 5);

    // Unread data, then removal: the data is discarded, the port is gone.
    model.borrow_mut().send_to_guest(3, b"never read");
    console.poll().unwrap();
    assert_eq!(console.readable(3), 10);
    model.borrow_mut().remove_port(3);
    console.poll().unwrap();
    assert!(console.port(3).is_none());
    assert_eq!(console.port_by_name("late"), None);
    assert_eq!(console.write(3, b"x"), Err(ConsoleError::NoSuchPort(3)));
    assert_eq!(
        console.read(3, &mut [0u8; 4]),
        Err(ConsoleError::NoSuchPort(3))
    );
    let seen = events(&mut console);
    assert!(seen.contains(&ConsoleEvent::PortRemoved { id: 3 }));
    assert!(seen.contains(&ConsoleEvent::HostConnection { id: 3, open: false }));

    // Back again, under another name: buffers are reused, state is fresh.
    model
        .borrow_mut()
        .add_port(HostPortConfig::named(3, "later"));
    console.poll().unwrap();
    assert_eq!(console.port_by_name("later"), Some(3));
    assert_eq!(console.readable(3), 0);
    model.borrow_mut().send_to_guest(3, b"fresh");
    let mut buf = [0u8; 8];
    let n = console
        .read_wait(3, &mut buf, &mut stepping(&model, 5))
        .unwrap();
    assert_eq!(&buf[..n], b"fresh");
    assert_clean(&model);
}

#[test]
fn emergency_write_reaches_the_device_without_any_queue() {
    let (model, mut console) = multiport(TransportKind::MmioV2);
    assert_eq!(console.emergency_write(b"PANIC: boom\0!").unwrap(), 12);
    assert_eq!(model.borrow().emergency, b"PANIC: boom!");
    // No queue was touched for it.
    assert!(model.borrow().port(0).received.is_empty());

    // The free function needs nothing but a transport: usable before bring-up.
    let fresh = ConsoleModel::new(ConsoleModelConfig::single_port(None)).shared();
    let mut transport = ConsoleModelTransport::new(fresh.clone(), TransportKind::PciLegacy);
    assert_eq!(
        config::emergency_write(&mut transport, b"early").unwrap(),
        5
    );
    assert_eq!(fresh.borrow().emergency, b"early");

    // Not offered, not used.
    let mut no_emerg = ConsoleModelConfig::single_port(None);
    no_emerg.features &= !feature::EMERG_WRITE;
    let (model, mut console) = bring_up(no_emerg, TransportKind::MmioV2, ConsoleOptions::default());
    assert_eq!(
        console.emergency_write(b"x"),
        Err(ConsoleError::NotNegotiated("VIRTIO_CONSOLE_F_EMERG_WRITE"))
    );
    assert!(model.borrow().emergency.is_empty());
}

#[test]
fn every_transport_flavour_runs_the_handshake_and_moves_data() {
    for kind in [
        TransportKind::PciModern,
        TransportKind::PciLegacy,
        TransportKind::MmioV1,
        TransportKind::MmioV2,
    ] {
        let (model, mut console) = multiport(kind);
        assert_eq!(
            console.features() & features::VERSION_1 != 0,
            !kind.is_legacy(),
            "{kind}"
        );
        assert_eq!(console.port_by_name("org.test.one"), Some(1), "{kind}");
        let data = pattern(40 * KIB, 6);
        let mut wait = stepping(&model, 1000);
        console.write_all(1, &data, &mut wait).unwrap();
        assert!(model.borrow().port(1).received == data, "{kind}");
        model.borrow_mut().send_to_guest(0, b"ls\r");
        let mut buf = [0u8; 8];
        let n = console.read_wait(0, &mut buf, &mut wait).unwrap();
        assert_eq!(&buf[..n], b"ls\r", "{kind}");
        assert_clean(&model);
    }
}

#[test]
fn register_level_mmio_v1_and_v2_bring_up_and_talk() {
    trace_logging();
    for version in [1u32, 2] {
        let config = ConsoleModelConfig::qemu_multiport(multiport_ports());
        let mut offered = config.features;
        if version == 1 {
            offered &= 0xffff_ffff;
        }
        let base = 0xfeb0_0000 + 0x200 * u64::from(version);
        let core =
            VirtioCore::new(3, offered, config.queue_count(), 128, config.config_bytes()).shared();
        HostHal::map_mmio(base, 0x200, MmioWindow::new(core.clone(), version));
        let model = ConsoleModel::new(config).shared();
        model.borrow_mut().synchronous = false;
        let transport = MmioTransport::<HostHal>::new(base, 0x200).expect("mmio window");
        let mut console = ConsoleDevice::<HostHal, _>::new(transport).expect("bring-up");
        let mut wait = {
            let (model, core) = (model.clone(), core.clone());
            BoundedWait::new(1000, move || {
                model.borrow_mut().sync_with_core(&mut core.borrow_mut())
            })
        };
        console
            .wait_until(&mut wait, |c| Ok(c.port_by_name("org.test.one").is_some()))
            .unwrap();
        console.write_all(1, b"over registers", &mut wait).unwrap();
        console.flush(1, &mut wait).unwrap();
        assert_eq!(model.borrow().port(1).received, b"over registers");
        model.borrow_mut().send_to_guest(1, b"back");
        let mut buf = [0u8; 8];
        let n = console.read_wait(1, &mut buf, &mut wait).unwrap();
        assert_eq!(&buf[..n], b"back");
        assert!(
            core.borrow().violations.is_empty(),
            "{:?}",
            core.borrow().violations
        );
        assert_clean(&model);
        drop(console);
        assert_eq!(
            core.borrow().status,
            0,
            "dropping the driver resets the device"
        );
        HostHal::clear_devices();
    }
}

#[test]
fn a_receive_length_larger_than_the_buffer_is_refused() {
    let (model, mut console) = multiport(TransportKind::MmioV2);
    events(&mut console);
    assert!(model
        .borrow_mut()
        .complete_receive_lying(0, b"abc", 100_000));
    console.poll().unwrap();
    assert_eq!(console.readable(0), 0);
    let seen = events(&mut console);
    assert!(
        seen.iter().any(|e| matches!(
            e,
            ConsoleEvent::QueueError {
                queue: 0,
                error: QueueError::UsedLengthTooLong { len: 100_000, .. }
            }
        )),
        "{seen:?}"
    );
    assert_eq!(console.port(0).unwrap().stats.bad_lengths, 1);
    // The buffer went back; good data still flows.
    model.borrow_mut().step();
    assert_eq!(model.borrow().posted_on(0), 16);
    model.borrow_mut().send_to_guest(0, b"ok");
    let mut buf = [0u8; 4];
    assert_eq!(
        console
            .read_wait(0, &mut buf, &mut stepping(&model, 5))
            .unwrap(),
        2
    );
    assert_eq!(&buf[..2], b"ok");
}

#[test]
fn a_used_index_out_of_bounds_resets_the_device() {
    let (model, mut console) = multiport(TransportKind::MmioV2);
    let used = model.borrow().queue_addresses(0).unwrap().device;
    device_memory()
        .write_obj(1000u16, GuestAddress(used + 2))
        .unwrap();
    let err = console.poll().unwrap_err();
    assert!(
        matches!(
            err,
            ConsoleError::Queue {
                queue: 0,
                error: QueueError::UsedIndexTooFar { .. }
            }
        ),
        "{err:?}"
    );
    assert!(console.is_failed());
    let writes = model.borrow().status_writes.clone();
    assert_eq!(&writes[writes.len() - 2..], &[0, 128], "reset, then FAILED");
    assert_eq!(console.write(0, b"x"), Err(ConsoleError::DeviceFailed));
    assert_eq!(console.poll(), Err(ConsoleError::DeviceFailed));
}

#[test]
fn a_size_change_is_read_again_on_request() {
    let (model, mut console) = bring_up(
        ConsoleModelConfig::single_port(Some((80, 25))),
        TransportKind::PciModern,
        ConsoleOptions::default(),
    );
    model.borrow_mut().config.size = (100, 40);
    model.borrow_mut().generation += 1;
    console.refresh_config().unwrap();
    assert_eq!(console.size(), Some((100, 40)));
    assert_eq!(
        events(&mut console),
        vec![ConsoleEvent::Resized {
            id: 0,
            cols: 100,
            rows: 40
        }]
    );
}

#[test]
fn a_resize_is_applied_on_its_config_interrupt() {
    // §2.5 / §5.3.4: the device changes cols/rows and raises a
    // configuration-change interrupt; the driver reads the new size.
    let (model, mut console) = bring_up(
        ConsoleModelConfig::single_port(Some((80, 25))),
        TransportKind::PciModern,
        ConsoleOptions::default(),
    );
    {
        let mut m = model.borrow_mut();
        m.config.size = (132, 50);
        m.generation += 1;
        m.isr |= 2;
    }
    let status = console.handle_interrupt().unwrap();
    assert!(status.contains(drivers::transport::InterruptStatus::CONFIG));
    assert_eq!(console.size(), Some((132, 50)));
    assert_eq!(
        events(&mut console),
        vec![ConsoleEvent::Resized {
            id: 0,
            cols: 132,
            rows: 50
        }]
    );
    // An interrupt without the CONFIG bit reads nothing again.
    model.borrow_mut().config.size = (10, 10);
    console.handle_interrupt().unwrap();
    assert_eq!(console.size(), Some((132, 50)));
}

#[test]
fn device_needs_reset_at_run_time_stops_the_console_until_recovered() {
    let (model, mut console) = bring_up(
        ConsoleModelConfig::single_port(Some((80, 25))),
        TransportKind::PciModern,
        ConsoleOptions::default(),
    );
    {
        let mut m = model.borrow_mut();
        m.status |= 0x40;
        m.isr |= 2;
    }
    assert!(matches!(
        console.handle_interrupt(),
        Err(ConsoleError::Device(DeviceError::Init(
            drivers::init::InitError::DeviceNeedsReset { .. }
        )))
    ));
    assert!(console.is_failed() && !console.is_dead());
    assert_eq!(console.write(0, b"x"), Err(ConsoleError::DeviceFailed));
    console.recover().unwrap();
    assert!(!console.is_failed());
    assert_eq!(console.write(0, b"x"), Ok(1));
}

#[test]
fn dropping_the_driver_resets_the_device_and_frees_its_memory() {
    let (model, console) = multiport(TransportKind::MmioV2);
    assert!(HostHal::live_dma_pages() > 0);
    drop(console);
    assert_eq!(model.borrow().status, 0);
    assert_eq!(model.borrow().status_writes.last(), Some(&0));
    assert_eq!(HostHal::live_dma_pages(), 0);
    assert_eq!(HostHal::live_shares(), 0);
}

#[test]
fn a_device_that_never_finishes_a_reset_keeps_its_memory_and_is_dead() {
    // §2.1.2: without a reset that reads back 0 the device may still write
    // its buffers and rings: they are kept for ever, not freed.
    trace_logging();
    let config = ConsoleModelConfig::single_port(Some((80, 25)));
    let base = 0xfeb0_0800;
    let core = VirtioCore::new(
        3,
        config.features,
        config.queue_count(),
        128,
        config.config_bytes(),
    )
    .shared();
    HostHal::map_mmio(base, 0x200, MmioWindow::new(core.clone(), 2));
    let pages_before = HostHal::live_dma_pages();
    let transport = MmioTransport::<HostHal>::new(base, 0x200).expect("mmio window");
    let mut console = ConsoleDevice::<HostHal, _>::new(transport).expect("bring-up");
    let pages_up = HostHal::live_dma_pages();
    assert!(pages_up > pages_before);
    core.borrow_mut().reset_delay_reads = u32::MAX;
    let kept_before = hal::kept_forever();
    let clock_before = HostHal::fake_clock_us();
    assert_eq!(
        console.recover(),
        Err(ConsoleError::Device(DeviceError::Dead))
    );
    assert!(HostHal::fake_clock_us() - clock_before >= u64::from(RESET_TIMEOUT_US));
    assert!(console.is_dead() && console.is_failed());
    assert!(
        hal::kept_forever() >= kept_before + 2,
        "ports and control kept"
    );
    assert_eq!(console.write(0, b"x"), Err(ConsoleError::DeviceFailed));
    let writes = core.borrow().status_writes.len();
    drop(console);
    assert_eq!(core.borrow().status_writes.len(), writes, "left alone");
    assert_eq!(
        HostHal::live_dma_pages(),
        pages_up,
        "nothing the device was given is freed"
    );
    // And a drop that finds the device unresponsive keeps the memory too.
    core.borrow_mut().reset_delay_reads = 0;
    core.borrow_mut().write_status(0);
    let transport = MmioTransport::<HostHal>::new(base, 0x200).expect("mmio window");
    let console = ConsoleDevice::<HostHal, _>::new(transport).expect("bring-up");
    let pages_second = HostHal::live_dma_pages();
    core.borrow_mut().reset_delay_reads = u32::MAX;
    drop(console);
    assert_eq!(HostHal::live_dma_pages(), pages_second);
    HostHal::clear_devices();
}

#[test]
fn options_that_cannot_work_are_refused_before_touching_the_device() {
    trace_logging();
    for options in [
        ConsoleOptions {
            receive_buffers: 0,
            ..ConsoleOptions::default()
        },
        ConsoleOptions {
            transmit_buffer_bytes: 0,
            ..ConsoleOptions::default()
        },
        ConsoleOptions {
            max_ports: 0,
            ..ConsoleOptions::default()
        },
    ] {
        let model = ConsoleModel::new(ConsoleModelConfig::single_port(None)).shared();
        let transport = ConsoleModelTransport::new(model.clone(), TransportKind::MmioV2);
        let err = ConsoleDevice::<HostHal, _>::with_options(transport, options).unwrap_err();
        assert!(matches!(err, ConsoleError::BadOptions(_)), "{err:?}");
        assert!(model.borrow().status_writes.is_empty());
    }
}

#[test]
fn multiport_with_zero_ports_is_a_bad_configuration() {
    trace_logging();
    let mut config = ConsoleModelConfig::qemu_multiport(Vec::new());
    config.max_nr_ports = 0;
    let model = ConsoleModel::new(config).shared();
    let transport = ConsoleModelTransport::new(model.clone(), TransportKind::MmioV2);
    let err = ConsoleDevice::<HostHal, _>::new(transport).unwrap_err();
    assert_eq!(
        err,
        ConsoleError::BadConfig("MULTIPORT with max_nr_ports = 0")
    );
    assert_eq!(model.borrow().status & 128, 128, "FAILED set");
}
