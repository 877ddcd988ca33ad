//! Fuzz target `device_config`: a block, network or console device on
//! virtio-mmio (the register model [`crate::models::virtio`]) whose feature
//! offer, queue sizes and device configuration space are whatever the bytes
//! say (virtio 1.2 §2.5 "Device Configuration Space", §5.2.4 block,
//! §5.1.4 network, §5.3.4 console), and may change in the middle of the
//! driver's reads, moving the generation counter as a real device does
//! (§2.5.1, §4.2.2.2). The device may also refuse FEATURES_OK, take a few
//! reads to finish a reset, or ask to be reset at DRIVER_OK (§3.1.1).
//!
//! The driver may refuse the device, with a typed error; it may not panic,
//! and whatever it did, nothing leaks once it is dropped.

use drivers::blk::{BlkDevice, BlkOptions};
use drivers::console::{ConsoleDevice, ConsoleOptions};
use drivers::net::{NetDevice, NetOptions};
use drivers::transport::mmio::MmioTransport;

use super::Input;
use crate::host_hal::HostHal;
use crate::models::virtio::{ConfigChange, MmioWindow, VirtioCore};

const MMIO_BASE: u64 = 0xfeb0_0000;

/// Offers worth trying: each device's full feature set, with or without
/// VERSION_1, and anything at all.
fn offer(input: &mut Input) -> u64 {
    const VERSION_1: u64 = 1 << 32;
    match input.u8() % 4 {
        0 => input.u64(),
        1 => u64::from(input.u32()) | VERSION_1,
        2 => u64::from(input.u32()),
        _ => u64::MAX,
    }
}

/// A configuration space of up to 64 bytes.
fn config_bytes(input: &mut Input) -> Vec<u8> {
    let mut bytes = input.bytes(64).to_vec();
    if input.bool() {
        bytes.resize(64, 0);
    }
    bytes
}

/// Device bring-up against an arbitrary configuration (see the module documentation).
pub fn device_config(data: &[u8]) {
    super::begin();
    let mut input = Input::new(data);
    let device_id = input.pick(&[1u32, 2, 3]);
    let version = input.pick(&[1u32, 2, 2]);
    let queues = u16::from(input.u8() % 9);
    let queue_max = input.pick(&[0u16, 1, 2, 3, 8, 16, 100]);
    let features = offer(&mut input);
    let mut core = VirtioCore::new(
        device_id,
        features,
        queues,
        queue_max,
        config_bytes(&mut input),
    );
    let flags = input.u8();
    core.refuse_features_ok = flags & 1 != 0;
    core.needs_reset_on_driver_ok = flags & 2 != 0;
    core.reset_delay_reads = u32::from((flags >> 2) & 3);
    if flags & 0x10 != 0 {
        core.config_change = Some(ConfigChange {
            after_reads: u32::from(input.u8()),
            new_config: config_bytes(&mut input),
        });
    }
    let core = core.shared();
    HostHal::map_mmio(MMIO_BASE, 0x200, MmioWindow::new(core.clone(), version));
    if let Ok(transport) = MmioTransport::<HostHal>::new(MMIO_BASE, 0x200) {
        match device_id {
            2 => {
                let options = BlkOptions {
                    max_queue_size: 16,
                    ..BlkOptions::default()
                };
                if let Ok(blk) = BlkDevice::<HostHal, _>::with_options(transport, options) {
                    let _ = (blk.capacity_sectors(), blk.logical_block_size());
                    let _ = (blk.max_data_segments(), blk.max_segment_bytes());
                }
            }
            1 => {
                let options = NetOptions {
                    rx_queue_size: 8,
                    tx_queue_size: 8,
                    ctrl_queue_size: 4,
                    ..NetOptions::default()
                };
                if let Ok(mut net) = NetDevice::<HostHal, _>::with_options(transport, options) {
                    let _ = (net.mac(), net.mtu(), net.max_frame(), net.link_up());
                    core.borrow_mut().config = config_bytes(&mut input);
                    let _ = net.handle_config_change();
                }
            }
            _ => {
                let options = ConsoleOptions {
                    max_ports: 4,
                    max_queue_size: 8,
                    receive_buffers: 2,
                    receive_buffer_bytes: 64,
                    transmit_buffers: 2,
                    transmit_buffer_bytes: 64,
                    control_buffers: 4,
                    ..ConsoleOptions::default()
                };
                if let Ok(mut console) =
                    ConsoleDevice::<HostHal, _>::with_options(transport, options)
                {
                    let _ = console.size();
                    core.borrow_mut().config = config_bytes(&mut input);
                    let _ = console.refresh_config();
                    let _ = console.emergency_write(b"fuzz");
                }
            }
        }
    }
    drop(core);
    super::end_without_leaks("device_config");
}
