//! Self-tests of virtio probing and bring-up, run on the real QEMU devices.
//!
//! Gathering them borrows every device still waiting for its driver and
//! brings it up generically (`test_bringup.rs`: the drivers' own path, with
//! only the shared ring features and split queues), so that what follows
//! tests the queue and interrupt code without any device driver; the last
//! test resets those devices and hands them back for their drivers. Which
//! tests run depends on what was found and on the command line:
//!
//! - always: the BAR-window arithmetic on made-up machines, and the
//!   `expect.virtio=` parser;
//! - with an ECAM window: it is mapped uncached with 2 MiB pages;
//! - if any device was found: every one came up (the self-tests' bring-up
//!   or its driver's: DRIVER_OK, no FAILED, no DEVICE_NEEDS_RESET, no broken
//!   queue);
//! - with `expect.virtio=<type>:<transport>[,...]` (or `=none`): the devices
//!   found, by type and transport, are exactly those (so a device that
//!   probing misses or misclassifies fails the run);
//! - if a blk device came up: a round trip through its split ring on every
//!   blk device: a hand-built VIRTIO_BLK_T_GET_ID and a read of sector 0
//!   (virtio 1.2 §5.2.6), polled to completion. With
//!   `expect.blk.serial=<serial>[,...]` the serials must be exactly those and
//!   sector 0 of each disk must start with `virtio-probe:<serial>\n`, which
//!   the QEMU scenario wrote into the image: the data is checked end to end.
//!   (The blk driver's own requests are tested by `crate::block`.)
//! - if a console came up: one line sent through port 0's transmit queue,
//!   `virtio-probe: console at <location> transport=<transport>`, which the
//!   scenario finds in the console's output file.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use drivers::queue::{Ring, Segment, Used};
use drivers::transport::{DeviceStatus, DeviceType, Transport};
use hal::DmaRegion;

use super::pci::{bar_windows, CHIPSET_RESERVED_START, IO_WINDOW};
use super::test_bringup::{self, lent, LiveDevice, TestState};
use super::{type_name, DeviceState, VirtioDevice};
use crate::bootinfo::{MemoryKind, MemoryRegion};
use crate::hal_impl::KernelHal;
use crate::selftest_api::SelfTest;

/// How long a self-test waits for one request before giving up.
const REQUEST_TIMEOUT_NS: u64 = 2_000_000_000;

/// The virtio self-tests for what [`super::probe`] found (see the module docs).
pub fn selftests() -> Vec<SelfTest> {
    // The devices the tests below use, brought up by the tests themselves.
    test_bringup::lend_all();
    let mut tests = vec![
        SelfTest {
            name: "virtio: BAR windows avoid RAM, ECAM and the chipset on model machines",
            run: test_bar_windows,
        },
        SelfTest {
            name: "virtio: expect.virtio= parser",
            run: test_expect_parser,
        },
    ];
    let any = !super::devices().is_empty();
    let (blk, console) = {
        let devices = lent();
        let live_of = |t: DeviceType| devices.iter().any(|d| d.device_type == t && d.is_live());
        (live_of(DeviceType::Block), live_of(DeviceType::Console))
    };
    if crate::acpi_tables::ecam().is_some() {
        tests.push(SelfTest {
            name: "virtio: the ECAM window is mapped uncached with 2 MiB pages",
            run: test_ecam_mapping,
        });
    }
    if any {
        tests.push(SelfTest {
            name: "virtio: every device found is live (DRIVER_OK, no FAILED/NEEDS_RESET)",
            run: test_all_live,
        });
    }
    if crate::cmdline::get("expect.virtio").is_some() {
        tests.push(SelfTest {
            name: "virtio: devices by type and transport match expect.virtio=",
            run: test_expected_devices,
        });
    }
    if blk {
        tests.push(SelfTest {
            name: "virtio: blk round trip (GET_ID, read sector 0) over the split ring",
            run: test_blk_round_trip,
        });
    }
    if console {
        tests.push(SelfTest {
            name: "virtio: console round trip (port 0 transmit) over the split ring",
            run: test_console_round_trip,
        });
    }
    // Interrupts: routes, round trips that complete by interrupt, halts.
    tests.extend(super::irq::selftests());
    // DMA isolation: a borrowed blk device makes a stray DMA (strict IOMMU only).
    tests.extend(crate::iommu::selftests_with_lent_devices());
    // Always last: the devices go back to their drivers.
    tests.push(SelfTest {
        name: "virtio: the self-tests' devices are reset and handed back to their drivers",
        run: test_give_back,
    });
    tests
}

fn test_give_back() -> Result<(), String> {
    let count = test_bringup::give_back_all()?;
    let still_taken = super::devices()
        .iter()
        .filter(|d| matches!(d.state, DeviceState::Taken { .. }))
        .map(|d| d.location)
        .collect::<Vec<_>>();
    if !still_taken.is_empty() {
        return Err(format!("still taken after the hand-back: {still_taken:?}"));
    }
    log::info!("virtio: {count} device(s) reset and handed back to their drivers");
    Ok(())
}

// ---------------------------------------------------------------- live

fn test_all_live() -> Result<(), String> {
    let mut problems = Vec::new();
    for device in super::devices().iter() {
        let name = format!("{} at {}", type_name(device.device_type), device.location);
        if let Some(error) = device.failure() {
            problems.push(format!("{name} FAILED: {error}"));
        }
    }
    for device in lent().iter_mut() {
        let name = format!("{} at {}", type_name(device.device_type), device.location);
        match &mut device.state {
            TestState::Failed { error, .. } => {
                problems.push(format!("{name} FAILED its generic bring-up: {error}"));
            }
            TestState::Live(live) => {
                let status = live.transport.status();
                let bad = DeviceStatus::FAILED | DeviceStatus::DEVICE_NEEDS_RESET;
                if !status.contains(DeviceStatus::DRIVER_OK) || status.intersects(bad) {
                    problems.push(format!("{name}: status {status}"));
                }
                if let Some(q) = live.queues.iter().find(|q| q.is_broken()) {
                    problems.push(format!("{name}: queue {} is broken", q.index()));
                }
                if live.queues.is_empty() {
                    problems.push(format!("{name}: no queues"));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

// ---------------------------------------------------------------- ECAM

/// The whole ECAM range (256 MiB on q35) must be reachable, uncached, and
/// cheap: one 2 MiB page per 2 MiB, not 512 small ones (see
/// `memory::map_mmio`). Checked at the first and last byte and at every
/// bus start (the device reads a function header at each).
fn test_ecam_mapping() -> Result<(), String> {
    use x86_64::structures::paging::PageTableFlags;
    let ecam = crate::acpi_tables::ecam().ok_or("no ECAM any more")?;
    let first = ecam.base + (u64::from(ecam.bus_start) << 20);
    let end = ecam.base + ((u64::from(ecam.bus_end) + 1) << 20);
    let probes = (first..end)
        .step_by(1 << 20)
        .chain(core::iter::once(end - 1));
    for address in probes {
        let Some(walk) = crate::memory::translate(address) else {
            return Err(format!("ECAM address {address:#x} is not mapped"));
        };
        let uncached = walk.flags.contains(PageTableFlags::NO_CACHE);
        if walk.phys != address || walk.page_size != 2 << 20 || !uncached {
            return Err(format!(
                "ECAM address {address:#x}: phys {:#x}, page size {:#x}, flags {:?}",
                walk.phys, walk.page_size, walk.flags
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- expect.virtio

/// `(type, transport)` pairs, e.g. `("blk", "pci-modern")`, sorted.
type DevicePairs = Vec<(String, String)>;

/// Parses `expect.virtio=`: `none`, or comma-separated `<type>:<transport>`
/// pairs (e.g. `blk:pci-modern,net:pci-legacy`); returned sorted.
pub fn parse_expected(value: &str) -> Result<DevicePairs, String> {
    if value == "none" {
        return Ok(Vec::new());
    }
    let transports = ["pci-modern", "pci-legacy", "mmio-v1", "mmio-v2"];
    let mut expected = Vec::new();
    for entry in value.split(',') {
        let Some((kind, transport)) = entry.split_once(':') else {
            return Err(format!("{entry:?} is not <type>:<transport>"));
        };
        if kind.is_empty() {
            return Err(format!("{entry:?} has no device type"));
        }
        if !transports.contains(&transport) {
            return Err(format!(
                "{entry:?}: transport must be one of {}",
                transports.join(", ")
            ));
        }
        expected.push((kind.to_string(), transport.to_string()));
    }
    expected.sort();
    Ok(expected)
}

/// What was found, in the same form: `(type, transport)`, sorted; a device
/// without a transport counts as transport `none`.
fn found_pairs(devices: &[VirtioDevice]) -> DevicePairs {
    let mut found: DevicePairs = devices
        .iter()
        .map(|d| {
            (
                type_name(d.device_type).to_string(),
                d.transport_kind
                    .map_or_else(|| "none".to_string(), |k| k.to_string()),
            )
        })
        .collect();
    found.sort();
    found
}

fn describe(pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        return "none".to_string();
    }
    pairs
        .iter()
        .map(|(t, k)| format!("{t}:{k}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn test_expected_devices() -> Result<(), String> {
    let value = crate::cmdline::get("expect.virtio").unwrap_or("");
    let expected = parse_expected(value).map_err(|e| format!("expect.virtio={value}: {e}"))?;
    let found = found_pairs(&super::devices());
    if found == expected {
        Ok(())
    } else {
        Err(format!(
            "expected {}, found {}",
            describe(&expected),
            describe(&found)
        ))
    }
}

fn test_expect_parser() -> Result<(), String> {
    let pair = |t: &str, k: &str| (t.to_string(), k.to_string());
    let checks: [(&str, Result<DevicePairs, ()>); 6] = [
        ("none", Ok(vec![])),
        (
            "net:pci-legacy,blk:pci-modern,blk:pci-modern",
            Ok(vec![
                pair("blk", "pci-modern"),
                pair("blk", "pci-modern"),
                pair("net", "pci-legacy"),
            ]),
        ),
        ("console:mmio-v2", Ok(vec![pair("console", "mmio-v2")])),
        ("blk", Err(())),
        ("blk:pci", Err(())),
        (":mmio-v1", Err(())),
    ];
    for (input, want) in checks {
        let got = parse_expected(input).map_err(|_| ());
        if got != want {
            return Err(format!(
                "parse_expected({input:?}) = {got:?}, want {want:?}"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- BAR windows

fn region(start: u64, len: u64, kind: MemoryKind) -> MemoryRegion {
    MemoryRegion { start, len, kind }
}

fn test_bar_windows() -> Result<(), String> {
    use MemoryKind::{AcpiNvs, Reserved, Usable};
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    // The low megabyte and the HyperTransport hole as QEMU reports them.
    let low = [
        region(0, 0x9fc00, Usable),
        region(0x9fc00, 0x400, Reserved),
        region(0xd0000, 0x20000, AcpiNvs),
        region(0xf0000, 0x10000, Reserved),
        region(0xfd_0000_0000, 0x3_0000_0000, Reserved),
    ];
    let with = |extra: &[MemoryRegion]| {
        let mut map = low.to_vec();
        map.extend_from_slice(extra);
        map
    };
    let ecam = 0xb000_0000..0xc000_0000;
    let cases = [
        // q35, 256 MiB: below the ECAM window.
        (
            "q35 256M",
            with(&[
                region(MIB, 255 * MIB, Usable),
                region(0xb000_0000, 256 * MIB, Reserved),
            ]),
            Some(ecam.clone()),
            0x1000_0000..0xb000_0000,
            None,
        ),
        // pc, 256 MiB: everything up to the chipset.
        (
            "pc 256M",
            with(&[region(MIB, 255 * MIB, Usable)]),
            None,
            0x1000_0000..CHIPSET_RESERVED_START,
            None,
        ),
        // q35, 4 GiB: 2 GiB low, the rest above 4 GiB; above the ECAM is bigger.
        (
            "q35 4G",
            with(&[
                region(MIB, 2 * GIB - MIB, Usable),
                region(4 * GIB, 2 * GIB, Usable),
            ]),
            Some(ecam),
            0xc000_0000..CHIPSET_RESERVED_START,
            Some(6 * GIB..70 * GIB),
        ),
        // A reserved entry in the hole; a RAM end that is not MiB-aligned;
        // the 64-bit window cut short by a reserved entry.
        (
            "odd",
            with(&[
                region(MIB, 0x2000_0000 - MIB - 0x1000, Usable),
                region(0xe000_0000, MIB, Reserved),
                region(4 * GIB, GIB + 0x1000, Usable),
                region(7 * GIB, GIB, Reserved),
            ]),
            None,
            0x2000_0000..0xe000_0000,
            Some(6 * GIB..7 * GIB),
        ),
    ];
    for (name, map, ecam, want32, want64) in cases {
        let windows = bar_windows(&map, ecam.clone());
        if windows.mem32 != want32 || windows.mem64 != want64 || windows.io != IO_WINDOW {
            return Err(format!(
                "{name}: mem32 {:#x?} mem64 {:#x?} io {:#x?}; want mem32 {want32:#x?} mem64 {want64:#x?}",
                windows.mem32, windows.mem64, windows.io
            ));
        }
        // Whatever the answer, it must not overlap anything it should avoid.
        let mut avoid: Vec<core::ops::Range<u64>> =
            map.iter().map(|r| r.start..r.start + r.len).collect();
        avoid.extend(ecam);
        avoid.push(CHIPSET_RESERVED_START..1 << 32);
        for window in core::iter::once(&windows.mem32).chain(windows.mem64.as_ref()) {
            if let Some(clash) = avoid
                .iter()
                .find(|a| a.start < window.end && window.start < a.end)
            {
                return Err(format!("{name}: window {window:#x?} overlaps {clash:#x?}"));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- round trips

/// Waits (polling) for the next used entry of `live.queues[queue]`. On a
/// timeout the device is reset, so that it cannot write into the caller's
/// buffer after the caller frees it, and the queue starts over.
fn wait_used(live: &mut LiveDevice, queue: usize) -> Result<Used, String> {
    let deadline = crate::clock::uptime_ns() + REQUEST_TIMEOUT_NS;
    let q = live
        .queues
        .get_mut(queue)
        .ok_or_else(|| format!("no queue {queue}"))?;
    loop {
        match q.pop_used() {
            Ok(Some(used)) => return Ok(used),
            Ok(None) => {}
            Err(error) => return Err(format!("queue {queue}: {error}")),
        }
        if crate::clock::uptime_ns() > deadline {
            let _ = live.transport.reset();
            q.reset(|_| {});
            return Err(format!(
                "queue {queue}: no completion within {} ms; device reset",
                REQUEST_TIMEOUT_NS / 1_000_000
            ));
        }
        core::hint::spin_loop();
    }
}

/// Makes `segments` available on `queue`, notifies if the queue says so,
/// and waits for the completion; returns the used length.
fn round_trip(live: &mut LiveDevice, queue: usize, segments: &[Segment]) -> Result<u32, String> {
    let q = live
        .queues
        .get_mut(queue)
        .ok_or_else(|| format!("no queue {queue}"))?;
    let token = q.add(segments).map_err(|e| format!("add: {e}"))?;
    let index = q.index();
    if q.publish().should_notify() {
        live.transport.notify(index);
    }
    let used = wait_used(live, queue)?;
    if used.token != token {
        return Err(format!(
            "completion for {} but only {} was in flight",
            used.token, token
        ));
    }
    Ok(used.len)
}

/// virtio-blk request types and status (virtio 1.2 §5.2.6).
const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_GET_ID: u32 = 8;
const VIRTIO_BLK_S_OK: u8 = 0;
/// GET_ID returns a 20-byte, NUL-padded serial.
const BLK_ID_BYTES: usize = 20;
const SECTOR_BYTES: usize = 512;

/// One hand-built virtio-blk request on queue 0: header (type, reserved,
/// sector), `data_len` bytes for the device to fill, status byte. All three
/// live in one DMA region: header at 0, status at 16, data at 512.
fn blk_request(
    live: &mut LiveDevice,
    kind: u32,
    sector: u64,
    data_len: usize,
) -> Result<Vec<u8>, String> {
    const STATUS_AT: usize = 16;
    const DATA_AT: usize = 512;
    let buffer = DmaRegion::<KernelHal>::new(live.transport.dma_owner(), DATA_AT + data_len)
        .map_err(|e| format!("DMA memory: {e}"))?;
    buffer.write::<u32>(0, kind.to_le());
    buffer.write::<u32>(4, 0);
    buffer.write::<u64>(8, sector.to_le());
    // A value the device never writes, so a missing status write is caught.
    buffer.write::<u8>(STATUS_AT, 0xff);
    let base = buffer.device_addr();
    let segments = [
        Segment::readable(base, 16),
        Segment::writable(base + DATA_AT as u64, data_len as u32),
        Segment::writable(base + STATUS_AT as u64, 1),
    ];
    let len = round_trip(live, 0, &segments)?;
    let status = buffer.read::<u8>(STATUS_AT).unwrap_or(0xff);
    if status != VIRTIO_BLK_S_OK {
        return Err(format!("request type {kind}: status {status:#04x}"));
    }
    if len as usize != data_len + 1 {
        return Err(format!(
            "request type {kind}: used length {len}, expected {} (data + status)",
            data_len + 1
        ));
    }
    let mut data = vec![0u8; data_len];
    buffer.read_bytes(DATA_AT, &mut data);
    Ok(data)
}

fn test_blk_round_trip() -> Result<(), String> {
    let expected_serials = crate::cmdline::get("expect.blk.serial").map(|value| {
        let mut serials: Vec<&str> = value.split(',').collect();
        serials.sort_unstable();
        serials
    });
    let mut devices = lent();
    let mut serials = Vec::new();
    let mut problems = Vec::new();
    for device in devices
        .iter_mut()
        .filter(|d| d.device_type == DeviceType::Block)
    {
        let location = device.location;
        let Some(live) = device.live() else { continue };
        let kind = live.transport.kind();
        let result = (|| {
            let id = blk_request(live, VIRTIO_BLK_T_GET_ID, 0, BLK_ID_BYTES)?;
            let serial_len = id.iter().position(|&b| b == 0).unwrap_or(BLK_ID_BYTES);
            let serial = String::from_utf8_lossy(&id[..serial_len]).into_owned();
            let sector = blk_request(live, VIRTIO_BLK_T_IN, 0, SECTOR_BYTES)?;
            if expected_serials.is_some() {
                let marker = format!("virtio-probe:{serial}\n");
                if !sector.starts_with(marker.as_bytes()) {
                    let shown = String::from_utf8_lossy(&sector[..marker.len().min(40)]);
                    return Err(format!(
                        "sector 0 starts with {shown:?}, expected {marker:?}"
                    ));
                }
            }
            log::info!("virtio: blk at {location} ({kind}): GET_ID {serial:?}, sector 0 read");
            Ok(serial)
        })();
        match result {
            Ok(serial) => serials.push(serial),
            Err(error) => problems.push(format!("blk at {location} ({kind}): {error}")),
        }
    }
    if let Some(expected) = expected_serials {
        let mut found: Vec<&str> = serials.iter().map(String::as_str).collect();
        found.sort_unstable();
        if found != expected && problems.is_empty() {
            problems.push(format!(
                "serials {found:?}, expect.blk.serial says {expected:?}"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Port 0's transmit queue (virtio 1.2 §5.3.2: transmitq0 is queue 1).
const CONSOLE_TRANSMIT_QUEUE: usize = 1;

fn test_console_round_trip() -> Result<(), String> {
    let mut devices = lent();
    let mut problems = Vec::new();
    for device in devices
        .iter_mut()
        .filter(|d| d.device_type == DeviceType::Console)
    {
        let location = device.location;
        let Some(live) = device.live() else { continue };
        let kind = live.transport.kind();
        let line = format!("virtio-probe: console at {location} transport={kind}\n");
        let result = (|| {
            let buffer = DmaRegion::<KernelHal>::new(live.transport.dma_owner(), line.len())
                .map_err(|e| format!("DMA memory: {e}"))?;
            buffer.write_bytes(0, line.as_bytes());
            let segment = Segment::readable(buffer.device_addr(), line.len() as u32);
            // The queue itself rejects a used length above 0 (nothing here is
            // device-writable), so only the completion matters.
            round_trip(live, CONSOLE_TRANSMIT_QUEUE, &[segment]).map(|_| ())
        })();
        if let Err(error) = result {
            problems.push(format!("console at {location} ({kind}): {error}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
