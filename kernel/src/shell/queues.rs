//! The shell's live queue view (virtio 1.2 §2.7 split ring, §2.8 packed
//! ring): `queues`, one line per queue (size, indices, requests in flight,
//! notifications sent and suppressed, interrupts), and `ring <device>
//! <queue>`, a text drawing of one ring like the `/queues` page's SVG.
//!
//! Both take their data from `crate::virtio::view::collect` and draw it
//! with `drivers::view::text`; `docs/queue-view.md` explains the picture.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use drivers::view::{text, DeviceRecord};

use super::{CommandResult, Output};

/// Every device's records, now. The network cards are locked for the
/// moment of the snapshot (the view reads their rings).
fn records() -> Vec<DeviceRecord> {
    let nics = crate::net::nic::nics();
    crate::virtio::view::collect(&nics)
}

/// `queues`: one line per queue of every device a driver brought up.
pub fn queues(out: &mut Output) -> CommandResult {
    let devices = records();
    if devices.iter().all(|d| d.queues.is_empty()) {
        return Err(String::from("no queues: no driver brought a device up"));
    }
    let _ = text::write_queue_header(out);
    for device in &devices {
        for queue in &device.queues {
            let _ = text::write_queue_line(out, device, queue);
        }
    }
    Ok(())
}

/// `ring <device> <queue>`: the device is its type name (`blk`, `net`,
/// `console`), optionally followed by its number among devices of that
/// type (`net1`: the second card), or its location; the queue is its index
/// or its name (`requestq`, `transmitq`, `port0-rx`, ...).
pub fn ring(args: &[&str], out: &mut Output) -> CommandResult {
    let [device_name, queue_name] = args else {
        return Err(String::from("usage: ring <device> <queue>"));
    };
    let devices = records();
    let device = find_device(&devices, device_name).ok_or_else(|| {
        let names: Vec<&str> = devices.iter().map(|d| d.type_name.as_str()).collect();
        format!("no device `{device_name}` (devices: {})", names.join(", "))
    })?;
    let queue = device
        .queues
        .iter()
        .find(|q| q.name == *queue_name || queue_name.parse::<u16>() == Ok(q.snapshot.index))
        .ok_or_else(|| {
            let names: Vec<String> = device
                .queues
                .iter()
                .map(|q| format!("{} {}", q.snapshot.index, q.name))
                .collect();
            format!(
                "{} has no queue `{queue_name}` (queues: {})",
                device.type_name,
                if names.is_empty() {
                    String::from("none")
                } else {
                    names.join(", ")
                }
            )
        })?;
    let _ = text::write_ring(out, device, queue);
    Ok(())
}

/// `blk`, `blk0`, `net1`, or a location such as `pci 0000:00:04.0`
/// written without the space (`pci0000:00:04.0`) or `mmio@0xfeb00e00`.
fn find_device<'a>(devices: &'a [DeviceRecord], name: &str) -> Option<&'a DeviceRecord> {
    if let Some(device) = devices
        .iter()
        .find(|d| d.location.replace(' ', "") == name.replace(' ', ""))
    {
        return Some(device);
    }
    if let Some(device) = devices.iter().find(|d| d.type_name == name) {
        return Some(device);
    }
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (type_name, number) = name.split_at(name.len() - digits);
    let nth = if number.is_empty() {
        0
    } else {
        number.parse::<usize>().ok()?
    };
    devices.iter().filter(|d| d.type_name == type_name).nth(nth)
}
