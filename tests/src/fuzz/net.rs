//! Fuzz target `net_rx`: a virtio-net device (the model in
//! [`crate::net_model`]) that fills receive buffers with whatever the bytes
//! say: the virtio-net header (flags, `gso_type`, `num_buffers`, virtio
//! 1.2 §5.1.6), how many buffers a packet spans, and the used length each
//! buffer claims (§5.1.6.3, §5.1.6.4), mixed with correct packets,
//! transmits and link changes.
//!
//! Checked besides "no panic": a packet handed out is at most the longest
//! frame the driver accepts; after the last input every receive buffer is
//! back in the queue (none lost to a lying device), or the queue reported
//! itself broken and `recover` brought it back; nothing leaks once dropped.

use drivers::net::{NetDevice, NetOptions, MIN_MERGEABLE_BUFFER, VLAN_TAG_LEN};
use drivers::transport::Transport;

use super::Input;
use crate::host_hal::HostHal;
use crate::net_model::{
    bits, net_config, test_frame, NetModel, RawPart, QEMU_LEGACY_FEATURES, QEMU_MODERN_FEATURES,
};

type Net<T> = NetDevice<HostHal, T>;

/// Receives everything pending; checks each packet's length. Returns
/// `false` if the receive ring reported an error (it may be broken).
fn receive_all<T: Transport>(net: &mut Net<T>) -> bool {
    let limit = net.max_frame() + VLAN_TAG_LEN;
    for _ in 0..1024 {
        let outcome = match net.rx().receive() {
            Ok(Some(packet)) => {
                let len = packet.data().len();
                assert!(len <= limit, "a {len}-byte packet, the limit is {limit}");
                assert_eq!(len, packet.len());
                continue;
            }
            Ok(None) => true,
            Err(_) => false,
        };
        net.flush();
        return outcome;
    }
    panic!("receive never ran dry");
}

/// One hostile delivery: up to four buffers, each with bytes and a claimed length.
fn hostile_parts(model: &NetModel, input: &mut Input) -> Vec<RawPart> {
    let parts = 1 + usize::from(input.u8() % 4);
    (0..parts)
        .map(|i| {
            let mut bytes = if i == 0 || input.bool() {
                // A header: flags, gso_type, then num_buffers, the rest as given.
                let mut header = model.header(input.u8(), input.pick(&[0, 0, 0, 1, 3, 4, 0x80]), 1);
                if header.len() >= 12 {
                    let num_buffers = match input.u8() {
                        b @ 0..=15 => u16::from(b),
                        _ => input.u16(),
                    };
                    header[10..12].copy_from_slice(&num_buffers.to_le_bytes());
                }
                if input.bool() {
                    for byte in &mut header[2..10] {
                        *byte = input.u8();
                    }
                }
                header
            } else {
                Vec::new()
            };
            let frame_len = usize::from(input.u16() % 2048);
            bytes.extend(test_frame(frame_len, input.u8()));
            let claimed_len = match input.u8() {
                0..=127 => bytes.len() as u32,
                b @ 128..=191 => (bytes.len() as u32 + u32::from(b)).wrapping_sub(160),
                _ => input.u32(),
            };
            RawPart { bytes, claimed_len }
        })
        .collect()
}

/// virtio-net receive against a lying device (see the module documentation).
pub fn net_rx(data: &[u8]) {
    super::begin();
    let mut input = Input::new(data);
    let choice = input.u8();
    let (features, version) = match choice % 4 {
        0 => (QEMU_MODERN_FEATURES, 2),
        1 => (QEMU_MODERN_FEATURES & !bits::MRG_RXBUF, 2),
        2 => (QEMU_LEGACY_FEATURES, 1),
        _ => (QEMU_LEGACY_FEATURES & !bits::MRG_RXBUF, 1),
    };
    let queue_max = input.pick(&[4u16, 8, 16]);
    let mtu = input.pick(&[0u16, 0, 68, 1500, 9000]);
    let features = if mtu == 0 {
        features & !bits::MTU
    } else {
        features | bits::MTU
    };
    let mut model = NetModel::new(
        features,
        net_config([0x52, 0x54, 0, 0x12, 0x34, 0x56], 1, mtu),
        queue_max,
    );
    let options = NetOptions {
        mergeable_buffer_len: input.pick(&[MIN_MERGEABLE_BUFFER, 100, 512, 1536]),
        ..NetOptions::default()
    };
    let Ok(mut net) = Net::with_options(model.mmio(version), options) else {
        drop(model);
        super::end_without_leaks("net_rx");
        return;
    };
    model.attach_queues();

    let mut steps = 0;
    while !input.is_empty() && steps < 256 {
        steps += 1;
        match input.u8() % 8 {
            0..=2 => {
                let parts = hostile_parts(&model, &mut input);
                let _ = model.deliver_raw(&parts);
            }
            3 => {
                let frame = test_frame(14 + usize::from(input.u16() % 1600), input.u8());
                let _ = model.deliver(&frame);
            }
            4 => {
                if !receive_all(&mut net) {
                    let _ = net.recover();
                    model.attach_queues();
                }
            }
            5 => {
                let frame = test_frame(usize::from(input.u16() % 1600), input.u8());
                let _ = net.send(&frame);
                net.flush();
                model.process_tx();
                let _ = net.tx().reclaim();
            }
            6 => {
                model.set_link(input.bool());
                let _ = net.handle_config_change();
                let _ = net.handle_interrupt();
            }
            _ => {
                if input.bool() {
                    net.rx().disable_interrupts();
                } else {
                    let _ = net.rx().enable_interrupts();
                }
            }
        }
    }
    if !receive_all(&mut net) {
        net.recover().expect("recover after a broken receive ring");
        model.attach_queues();
        assert!(receive_all(&mut net), "a fresh ring is not broken");
    }
    let rx = net.rx();
    assert_eq!(
        rx.buffers_free(),
        0,
        "receive buffers not given back to the device"
    );
    assert_eq!(
        rx.buffers_posted(),
        rx.buffer_count(),
        "receive buffers lost"
    );
    drop(net);
    drop(model);
    super::end_without_leaks("net_rx");
}
