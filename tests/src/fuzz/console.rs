//! Fuzz target `console_control`: a multiport virtio-console (the model in
//! [`crate::console_model`]) whose control receive queue carries whatever
//! the bytes say: well-formed messages for ports that may or may not
//! exist, malformed ones, names of any bytes, and used lengths that lie
//! (virtio 1.2 §5.3.6.2 "Multiport Device Operation"), mixed with data in
//! both directions and ports opened and closed on either side.
//!
//! Checked besides "no panic": the console never gives up (a bad control
//! message is refused, not fatal), it reposts every control receive
//! buffer, port data still flows through port 0 at the end, and nothing
//! leaks once it is dropped.

use drivers::console::{ConsoleDevice, ConsoleOptions, CONTROL_RECEIVE_QUEUE};
use drivers::device::BoundedWait;
use drivers::transport::TransportKind;

use super::Input;
use crate::console_model::{
    control_bytes, event, ConsoleModel, ConsoleModelConfig, ConsoleModelTransport, HostPortConfig,
};

/// Small queues and buffers: the same code paths, fewer allocations per input.
fn options() -> ConsoleOptions {
    ConsoleOptions {
        max_ports: 4,
        max_queue_size: 8,
        receive_buffers: 4,
        receive_buffer_bytes: 64,
        transmit_buffers: 4,
        transmit_buffer_bytes: 64,
        control_buffers: 8,
        ..ConsoleOptions::default()
    }
}

/// One control message: mostly a plausible header, sometimes raw bytes.
fn control_message(input: &mut Input) -> Vec<u8> {
    if input.u8() < 192 {
        let id = u32::from(input.u8() % 8);
        let event = u16::from(input.u8() % 9);
        let value = u16::from(input.u8() % 3);
        let mut message = control_bytes(id, event, value);
        message.extend_from_slice(input.bytes(300));
        message
    } else {
        input.bytes(300).to_vec()
    }
}

/// The multiport control protocol against a hostile device (see the module documentation).
pub fn console_control(data: &[u8]) {
    super::begin();
    let mut input = Input::new(data);
    let mut config = ConsoleModelConfig::qemu_multiport(vec![
        HostPortConfig::console(0),
        HostPortConfig::named(1, "org.fuzz.one"),
    ]);
    config.max_nr_ports = u32::from(input.u8() % 6) + 2;
    config.queue_max = 8;
    config.control_queue_max = 8;
    let options = options();
    let model = ConsoleModel::new(config).shared();
    let transport = ConsoleModelTransport::new(model.clone(), TransportKind::MmioV2);
    let mut console =
        ConsoleDevice::<crate::host_hal::HostHal, _>::with_options(transport, options)
            .expect("bring-up of a correct device");

    let mut buf = [0u8; 64];
    let mut steps = 0;
    while !input.is_empty() && steps < 256 {
        steps += 1;
        match input.u8() % 8 {
            0..=3 => {
                let message = control_message(&mut input);
                let claimed = match input.u8() {
                    0..=223 => None,
                    b @ 224..=239 => Some(message.len() as u32 + u32::from(b - 224)),
                    _ => Some(input.u32()),
                };
                model.borrow_mut().inject_control(message, claimed);
                let _ = console.poll();
            }
            4 => {
                let id = u32::from(input.bool());
                let data = input.bytes(200);
                model.borrow_mut().send_to_guest(id, data);
                let _ = console.poll();
                let _ = console.read(id, &mut buf);
            }
            5 => {
                let id = u32::from(input.u8() % 6);
                let data = input.bytes(200);
                let _ = console.write(id, data);
                model.borrow_mut().step();
                let _ = console.poll();
            }
            6 => {
                let (id, open) = (u32::from(input.bool()), input.bool());
                model.borrow_mut().host_open(id, open);
                let _ = console.poll();
            }
            _ => {
                let (id, open) = (u32::from(input.u8() % 6), input.bool());
                let _ = console.set_open(id, open);
                model.borrow_mut().step();
                let _ = console.poll();
            }
        }
        while console.next_event().is_some() {}
    }
    assert!(
        !console.is_failed(),
        "bad control messages made the console give up"
    );
    model.borrow_mut().step();
    assert_eq!(
        model.borrow().posted_on(CONTROL_RECEIVE_QUEUE),
        usize::from(options.control_buffers),
        "control receive buffers not reposted"
    );
    // Port 0 may have been removed by the input: add it back and talk.
    if console.port(0).is_none() {
        model
            .borrow_mut()
            .inject_control(control_bytes(0, event::PORT_ADD, 1), None);
        console.poll().expect("poll");
    }
    model.borrow_mut().host_open(0, true);
    console.poll().expect("poll");
    if console.port(0).is_some() {
        model.borrow_mut().port_mut(0).received.clear();
        let stepper = model.clone();
        let mut wait = BoundedWait::new(20, move || stepper.borrow_mut().step());
        console
            .write_all(0, b"survived", &mut wait)
            .expect("port 0 works after the input");
        assert_eq!(model.borrow().port(0).received, b"survived");
    }
    drop(console);
    drop(model);
    super::end_without_leaks("console_control");
}
