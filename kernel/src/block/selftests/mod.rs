//! Self-tests of the block layer on the disks QEMU attached.
//!
//! Which tests run depends on what was found and on the command line:
//!
//! | test | runs when | does |
//! | --- | --- | --- |
//! | pattern | always | known answers of the data generator and CRC-32 ([`super::pattern`]) |
//! | disks | a blk device came up | claims the devices ([`super::init`]): one disk per device, named vda.. in discovery order, sane geometry |
//! | serials | `expect.blk.serial=` | the GET_ID serials are exactly those |
//! | read-only | `expect.blk.ro=<serial>,..\|none` | exactly those disks are read-only, and they refuse writes, discards and write-zeroes without a request reaching the device |
//! | reads | a blk device came up | every disk reads its first, last and some random sectors; requests past the end or of a bad length are refused before they reach the device |
//! | host-filled | `blk.verify=<serial>:<seed>[:<first>],..` | the disk, from sector `first` (default 0) to the end, holds the pattern of that seed (written by the host) |
//! | scratch: offsets and sizes | a blk device came up | on each writable scratch disk: random offsets, sizes from 1 sector to 4 MiB in one buffer, each written, read back and compared |
//! | scratch: queue depths | idem | 1, 2, 4, .. up to the most requests the queue holds, all in flight at once, completed in any order; one more is refused (queue full) |
//! | scratch: largest request | idem | the largest request the device allows for page-sized buffers (`seg_max` segments of 4 KiB) goes out as one request, one page more as two |
//! | scratch: flush, zeroes, discard | idem | FLUSH succeeds; WRITE_ZEROES reads back as zeroes; DISCARD leaves old data or zeroes and nothing outside the range changes |
//! | scratch: every queue | idem, on a multiqueue disk | each request queue in turn writes, reads back and verifies regions; only that queue's completions grow ([`queues`]) |
//! | injected errors | `expect.blk.ioerr=<serial>:<op>[:<sector>],..` | those requests (read, write or flush; every time, or `-once`) fail with IOERR, the error is logged, the disk keeps working ([`faults`]) |
//! | a disk that stops answering | `expect.blk.hang=<serial>` | a read times out, the device is reset and recovered, the disk serves again ([`faults`]) |
//! | counters | a blk device came up | per disk: completions = requests, nothing in flight, failures = the ones caused on purpose |
//!
//! `blk.workload=quick` makes the scratch tests lighter for slow
//! accelerators (transfer sizes 1, 9 and 64 sectors, and only the depths 1
//! and the deepest; every kind of check still runs); `blk.workload=none`
//! leaves them out.
//!
//! Writes happen only on disks whose serial starts with `scratch` (and that
//! are not read-only, and not named in `expect.blk.ioerr=` or `expect.blk.hang=`,
//! which get the fault tests instead). A scratch disk must have at least
//! [`MIN_SCRATCH_SECTORS`] sectors; its layout:
//!
//! ```text
//! sector 0 .. 64            never written (the probe scenarios keep a marker in sector 0)
//! 64 .. capacity/2          random writes of many sizes (may overlap: the last one wins)
//! capacity/2 ..             queue-depth regions, one per depth
//!   + QD_AREA               largest-request regions
//!   + 4096                  write-zeroes region, then discard region
//! ```
//!
//! Every region written is announced on the serial port, so `x.py test` can
//! check the image afterwards (`tests/qemu/blk.py`):
//!
//! ```text
//! blk: wrote serial=<serial> sector=<first> count=<sectors> seed=<hex> crc32=<hex>
//! blk: zeroed serial=<serial> sector=<first> count=<sectors>
//! blk: discarded serial=<serial> sector=<first> count=<sectors>
//! blk: write-failed serial=<serial> sector=<first> count=<sectors>
//! ```
//!
//! in the order the writes happened. `wrote` regions hold the pattern of
//! `seed` ([`super::pattern`]) whose CRC-32 is `crc32`; `zeroed` ones read
//! as zeroes; `discarded` ones hold their previous contents or zeroes;
//! `write-failed` ones were not changed. The base seed is `blk.seed=`
//! (default 1); each region's seed is derived from it.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use drivers::blk::{BlkError, BlkToken, BufferId};
use drivers::irq::wait_until_used;
use drivers::transport::DeviceType;
use hal::DmaBuffer;

use super::pattern::{self, Rng};
use super::{Disk, IoBuffer, SECTOR};
use crate::hal_impl::KernelHal;
use crate::println;
use crate::selftest_api::SelfTest;
use crate::virtio;

mod faults;
mod in_flight;
mod per_cpu;
mod queue_path;
mod queues;

/// The smallest scratch disk the write tests accept (8 MiB + the low area).
pub const MIN_SCRATCH_SECTORS: u64 = 16_640;
/// Sectors never written at the start of a scratch disk.
const LOW_RESERVED: u64 = 64;
/// Room for the queue-depth regions: every depth up to 1024, one sector per request.
const QD_AREA: u64 = 2048;
/// Sectors per page: the segment size of the largest-request test.
const PAGE_SECTORS: u64 = 8;
/// Transfer sizes (in sectors) of the full workload: around 1, a page, and
/// powers of two, so that every kind of boundary is crossed, up to 4 MiB in
/// one contiguous buffer (one request: QEMU sets no `size_max`).
const FULL_SIZES: [u64; 21] = [
    1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 63, 64, 65, 127, 128, 129, 255, 256, 511, 2048, 8192,
];
/// The quick workload's sizes (`blk.workload=quick`).
const QUICK_SIZES: [u64; 3] = [1, 9, 64];
/// Sectors of the write-zeroes and discard regions.
const RANGE_REGION: u64 = 256;

/// Seed tags (see `pattern::derive_seed`): one family per test.
const TAG_RANDOM: u64 = 0x1_0000;
const TAG_DEPTH: u64 = 0x2_0000;
const TAG_SEGMENTS: u64 = 0x3_0000;
const TAG_RANGES: u64 = 0x4_0000;
const TAG_CHOICES: u64 = 0x6_0000;

/// The block self-tests (see the module docs).
pub fn selftests() -> Vec<SelfTest> {
    let mut tests = vec![SelfTest {
        name: "block: data pattern and CRC-32 known answers",
        run: test_pattern,
    }];
    let any_blk = virtio::devices()
        .iter()
        .any(|d| d.device_type == DeviceType::Block && d.has_transport());
    if !any_blk {
        return tests;
    }
    tests.push(SelfTest {
        name: "block: one disk per virtio-blk device, named vda.. in discovery order",
        run: test_disks,
    });
    if crate::cmdline::get("expect.blk.serial").is_some() {
        tests.push(SelfTest {
            name: "block: disk serials (GET_ID) match expect.blk.serial=",
            run: test_serials,
        });
    }
    if crate::cmdline::get("expect.blk.ro").is_some() {
        tests.push(SelfTest {
            name: "block: read-only disks are exactly expect.blk.ro= and refuse writes",
            run: test_read_only,
        });
    }
    tests.push(SelfTest {
        name: "block: every disk reads; bad requests are refused before the device",
        run: test_reads,
    });
    if crate::iommu::strict() {
        tests.push(SelfTest {
            name: "block: a read on this CPU's queue during which the IOMMU blocked a DMA fails (DmaBlocked)",
            run: queue_path::test_dma_blocked_on_own_queue,
        });
    }
    if crate::cmdline::get("blk.verify").is_some() {
        tests.push(SelfTest {
            name: "block: host-filled disks hold the pattern blk.verify= names",
            run: test_host_filled,
        });
    }
    if workload() == Workload::None {
        log::info!("block: blk.workload=none: the scratch write tests are left out");
    } else {
        tests.extend(scratch_tests());
    }
    tests.extend(faults::selftests());
    tests.push(SelfTest {
        name: "block: request counters agree (completions, failures, nothing in flight)",
        run: test_counters,
    });
    tests
}

/// The write workload on scratch disks.
fn scratch_tests() -> [SelfTest; 7] {
    [
        SelfTest {
            name: "block: scratch: write, read back, verify at many offsets and sizes",
            run: test_offsets_and_sizes,
        },
        SelfTest {
            name: "block: scratch: queue depths from 1 to the queue size",
            run: in_flight::test_queue_depths,
        },
        SelfTest {
            name: "block: scratch: the largest request (seg_max page segments) is one request, one page more is two",
            run: test_segment_limit,
        },
        SelfTest {
            name: "block: scratch: flush, write-zeroes and discard",
            run: test_flush_zeroes_discard,
        },
        SelfTest {
            name: "block: scratch: every request queue of a multiqueue disk completes requests",
            run: queues::test_every_queue,
        },
        SelfTest {
            name: "block: scratch: every CPU writes and reads back on its own request queue (per-queue path)",
            run: per_cpu::test_every_cpu_on_its_queue,
        },
        SelfTest {
            name: "block: scratch: block::write and block::read on this CPU's queue keep the data, without the whole disk",
            run: queue_path::test_write_read_on_own_queue,
        },
    ]
}

// ---------------------------------------------------------------- helpers

/// `blk.seed=` (decimal or 0x-hex), default 1.
fn base_seed() -> u64 {
    crate::cmdline::get("blk.seed")
        .and_then(parse_u64)
        .unwrap_or(1)
}

fn parse_u64(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// How much the scratch tests do: `blk.workload=full` (the default),
/// `quick` or `none`, for accelerators on which guest CPU time is dear
/// (this project's nested KVM runs this code far slower than TCG). Quick
/// keeps every kind of check with fewer sizes and only the smallest and
/// deepest queue depths; none leaves the scratch tests out (disks are
/// still claimed, read and checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Full,
    Quick,
    None,
}

fn workload() -> Workload {
    match crate::cmdline::get("blk.workload") {
        Some("quick") => Workload::Quick,
        Some("none") => Workload::None,
        _ => Workload::Full,
    }
}

/// Disks the write workload runs on: writable scratch disks that are not
/// the target of injected errors.
fn is_workload_disk(disk: &Disk, faulty: &[String]) -> bool {
    disk.writable() && !faulty.iter().any(|serial| serial == disk.serial())
}

/// Runs `test` on every workload disk; `Ok` with a log line if there is none.
fn for_each_scratch(
    what: &str,
    mut test: impl FnMut(&mut Disk) -> Result<(), String>,
) -> Result<(), String> {
    let faulty = faults::faulty_serials()?;
    super::with_disks(|disks| {
        let mut tested = 0;
        for disk in disks.iter_mut().filter(|d| is_workload_disk(d, &faulty)) {
            if disk.capacity_sectors() < MIN_SCRATCH_SECTORS {
                return Err(format!(
                    "{} ({}): scratch disk of {} sectors is too small, need {MIN_SCRATCH_SECTORS}",
                    disk.name(),
                    disk.serial(),
                    disk.capacity_sectors()
                ));
            }
            test(disk).map_err(|e| format!("{} ({}): {e}", disk.name(), disk.serial()))?;
            tested += 1;
        }
        if tested == 0 {
            log::info!("block: {what}: no writable scratch disk, nothing written");
        }
        Ok(())
    })
}

/// Writes the pattern of `seed` to `sectors` sectors at `sector`, reads it
/// back into a poisoned buffer, compares, and announces the region.
fn write_verified(disk: &mut Disk, sector: u64, sectors: u64, seed: u64) -> Result<(), String> {
    let bytes = sectors as usize * SECTOR;
    let mut data = IoBuffer::new(bytes)?;
    pattern::fill(seed, sector * SECTOR as u64, data.as_mut_slice());
    let crc = pattern::crc32(data.as_slice());
    disk.write(sector, data.as_slice())
        .map_err(|e| format!("write of {sectors} sector(s) at {sector}: {e}"))?;
    announce_wrote(disk, sector, sectors, seed, crc);
    let mut back = IoBuffer::new(bytes)?;
    back.as_mut_slice().fill(0xa5);
    disk.read(sector, back.as_mut_slice())
        .map_err(|e| format!("read-back of {sectors} sector(s) at {sector}: {e}"))?;
    check_pattern(back.as_slice(), seed, sector)
        .map_err(|e| format!("read-back of {sectors} sector(s) at {sector}: {e}"))
}

fn announce_wrote(disk: &Disk, sector: u64, sectors: u64, seed: u64, crc: u32) {
    println!(
        "blk: wrote serial={} sector={sector} count={sectors} seed={seed:#x} crc32={crc:#010x}",
        disk.serial()
    );
}

fn announce(disk: &Disk, what: &str, sector: u64, sectors: u64) {
    println!(
        "blk: {what} serial={} sector={sector} count={sectors}",
        disk.serial()
    );
}

/// `data`, read from `sector` on, holds the pattern of `seed`.
fn check_pattern(data: &[u8], seed: u64, sector: u64) -> Result<(), String> {
    match pattern::first_mismatch(seed, sector * SECTOR as u64, data) {
        None => Ok(()),
        Some((at, found, expected)) => Err(format!(
            "byte {at} (sector {}, offset {}) is {found:#04x}, expected {expected:#04x}",
            sector + (at / SECTOR) as u64,
            at % SECTOR
        )),
    }
}

fn check_zero(data: &[u8], sector: u64) -> Result<(), String> {
    match pattern::first_nonzero(data) {
        None => Ok(()),
        Some((at, found)) => Err(format!(
            "byte {at} (sector {}, offset {}) is {found:#04x}, expected 0",
            sector + (at / SECTOR) as u64,
            at % SECTOR
        )),
    }
}

/// Requests the device has seen on this disk so far.
fn requests(disk: &mut Disk) -> u64 {
    disk.device().stats().requests
}

// ---------------------------------------------------------------- always

fn test_pattern() -> Result<(), String> {
    pattern::self_check()?;
    let names: Vec<String> = [0, 1, 25, 26, 27, 51, 52, 701, 702]
        .iter()
        .map(|&i| super::disk_name(i))
        .collect();
    let want = [
        "vda", "vdb", "vdz", "vdaa", "vdab", "vdaz", "vdba", "vdzz", "vdaaa",
    ];
    if names != want {
        return Err(format!("disk names {names:?}, want {want:?}"));
    }
    Ok(())
}

fn test_disks() -> Result<(), String> {
    // What probing found, in discovery order, before the bring-up.
    let found: Vec<(drivers::transport::Location, bool)> = virtio::devices()
        .iter()
        .filter(|d| d.device_type == DeviceType::Block)
        .map(|d| (d.location, d.has_transport()))
        .collect();
    super::init();
    let infos = super::disks();
    let expected: Vec<_> = found
        .iter()
        .filter(|(_, up)| *up)
        .map(|(l, _)| *l)
        .collect();
    let got: Vec<_> = infos.iter().map(|d| d.location).collect();
    if got != expected {
        return Err(format!(
            "disks at {got:?}, but the live blk devices were {expected:?} (in that order)"
        ));
    }
    for (index, info) in infos.iter().enumerate() {
        let name = super::disk_name(index);
        if info.name != name {
            return Err(format!("disk {index} is named {}, want {name}", info.name));
        }
        if info.capacity_sectors == 0 {
            return Err(format!("{name}: capacity 0"));
        }
        if info.block_size < SECTOR as u32 || !info.block_size.is_power_of_two() {
            return Err(format!("{name}: block size {}", info.block_size));
        }
        if info.queue_size == 0 || info.max_segments == 0 {
            return Err(format!(
                "{name}: queue size {}, {} segments per request",
                info.queue_size, info.max_segments
            ));
        }
    }
    super::with_disks(|disks| {
        for (disk, info) in disks.iter_mut().zip(&infos) {
            if disk.location() != info.location || disk.name() != info.name {
                return Err(format!(
                    "{}: registry and description disagree",
                    disk.name()
                ));
            }
            if disk.device().is_failed() {
                return Err(format!("{}: device failed", disk.name()));
            }
        }
        Ok(())
    })
}

fn test_serials() -> Result<(), String> {
    let value = crate::cmdline::get("expect.blk.serial").unwrap_or("");
    let mut expected: Vec<&str> = value.split(',').filter(|s| !s.is_empty()).collect();
    expected.sort_unstable();
    // Ask the device again (GET_ID through the driver), not the cached value.
    let mut found = super::with_disks(|disks| {
        disks
            .iter_mut()
            .map(|disk| {
                let mut wait = disk.new_wait();
                let serial = disk
                    .device()
                    .get_id(&mut wait)
                    .map_err(|e| format!("{}: GET_ID: {e}", disk.name()))?
                    .to_string();
                if serial != disk.serial() {
                    return Err(format!(
                        "{}: GET_ID says {serial:?} now, {:?} at claim time",
                        disk.name(),
                        disk.serial()
                    ));
                }
                Ok(serial)
            })
            .collect::<Result<Vec<String>, String>>()
    })?;
    found.sort_unstable();
    if found != expected {
        return Err(format!(
            "serials {found:?}, expect.blk.serial= says {expected:?}"
        ));
    }
    Ok(())
}

fn test_read_only() -> Result<(), String> {
    let value = crate::cmdline::get("expect.blk.ro").unwrap_or("");
    let expected: Vec<&str> = if value == "none" {
        Vec::new()
    } else {
        value.split(',').filter(|s| !s.is_empty()).collect()
    };
    super::with_disks(|disks| {
        for disk in disks.iter_mut() {
            let want = expected.contains(&disk.serial());
            if disk.read_only() != want {
                return Err(format!(
                    "{} ({}): read_only={}, expected {want}",
                    disk.name(),
                    disk.serial(),
                    disk.read_only()
                ));
            }
            if !want {
                continue;
            }
            refuses_writes(disk)
                .map_err(|e| format!("{} ({}): {e}", disk.name(), disk.serial()))?;
        }
        Ok(())
    })
}

/// A read-only disk: every modifying request is refused with `ReadOnly`
/// before it reaches the device, and reads still work.
fn refuses_writes(disk: &mut Disk) -> Result<(), String> {
    let before = requests(disk);
    let data = vec![0x5au8; SECTOR];
    let mut wait = disk.new_wait();
    let device = disk.device();
    let results = [
        ("write", device.write_blocks(1, &data, &mut wait)),
        ("discard", device.discard(1, 1, &mut wait)),
        ("write-zeroes", device.write_zeroes(1, 1, false, &mut wait)),
    ];
    for (what, result) in results {
        if result != Err(BlkError::ReadOnly) {
            return Err(format!("{what} returned {result:?}, expected ReadOnly"));
        }
    }
    if requests(disk) != before {
        return Err("a refused request reached the device".into());
    }
    // The block layer refuses too (scratch or not), with the driver's error.
    if disk.is_scratch() {
        match disk.write(1, &data) {
            Err(super::BlockError::Device(BlkError::ReadOnly)) => {}
            other => return Err(format!("Disk::write returned {other:?}, expected ReadOnly")),
        }
    }
    let mut sector = vec![0u8; SECTOR];
    disk.read(0, &mut sector)
        .map_err(|e| format!("read: {e}"))?;
    log::info!(
        "block: {}: read-only: write, discard and write-zeroes refused, reads work",
        disk.name()
    );
    Ok(())
}

fn test_reads() -> Result<(), String> {
    let mut rng = Rng::new(pattern::derive_seed(base_seed(), TAG_CHOICES));
    let first_sectors = super::with_disks(|disks| {
        let mut first_sectors = Vec::new();
        for disk in disks.iter_mut() {
            reads_work(disk, &mut rng)
                .map_err(|e| format!("{} ({}): {e}", disk.name(), disk.serial()))?;
            let mut sector = vec![0u8; SECTOR];
            disk.read(0, &mut sector)
                .map_err(|e| format!("{}: read of sector 0: {e}", disk.name()))?;
            first_sectors.push((disk.name().to_string(), sector));
        }
        Ok::<_, String>(first_sectors)
    })?;
    // The by-name entry point (the shell's `blk read`) reads the same data.
    for (name, expected) in &first_sectors {
        let mut sector = vec![0xa5u8; SECTOR];
        super::read(name, 0, &mut sector).map_err(|e| format!("block::read({name}): {e}"))?;
        if &sector != expected {
            return Err(format!(
                "block::read({name}, 0) differs from the disk's own read"
            ));
        }
    }
    let missing = super::disk_name(first_sectors.len());
    match super::read(&missing, 0, &mut [0u8; SECTOR]) {
        Err(super::BlockError::NoSuchDisk(name)) if name == missing => Ok(()),
        other => Err(format!(
            "block::read({missing}) returned {other:?}, expected NoSuchDisk"
        )),
    }
}

fn reads_work(disk: &mut Disk, rng: &mut Rng) -> Result<(), String> {
    let capacity = disk.capacity_sectors();
    let mut buffer = IoBuffer::new(8 * SECTOR)?;
    let mut sectors = vec![0, capacity - 1];
    for _ in 0..6 {
        sectors.push(rng.below(capacity));
    }
    for sector in sectors {
        let count = 8.min(capacity - sector) as usize;
        disk.read(sector, &mut buffer.as_mut_slice()[..count * SECTOR])
            .map_err(|e| format!("read of {count} sector(s) at {sector}: {e}"))?;
    }
    // Requests the driver must refuse without bothering the device.
    let before = requests(disk);
    let mut one = vec![0u8; SECTOR];
    match disk.read(capacity, &mut one) {
        Err(super::BlockError::Device(BlkError::OutOfRange { .. })) => {}
        other => {
            return Err(format!(
                "read past the end returned {other:?}, expected OutOfRange"
            ))
        }
    }
    let mut odd = vec![0u8; SECTOR + 1];
    match disk.read(0, &mut odd) {
        Err(super::BlockError::Device(BlkError::BadBufferLength { len })) if len == SECTOR + 1 => {}
        other => {
            return Err(format!(
                "read into 513 bytes returned {other:?}, expected BadBufferLength"
            ))
        }
    }
    if requests(disk) != before {
        return Err("a refused request reached the device".into());
    }
    if !disk.is_scratch() {
        match disk.write(0, &one) {
            Err(super::BlockError::WriteProtected { .. }) => {}
            other => return Err(format!("write to a non-scratch disk returned {other:?}")),
        }
    }
    Ok(())
}

fn test_host_filled() -> Result<(), String> {
    let value = crate::cmdline::get("blk.verify").unwrap_or("");
    for entry in value.split(',') {
        let mut fields = entry.split(':');
        let parsed = match (fields.next(), fields.next(), fields.next(), fields.next()) {
            (Some(serial), Some(seed), first, None) => parse_u64(seed)
                .and_then(|seed| Some((serial, seed, first.map_or(Some(0), parse_u64)?))),
            _ => None,
        };
        let (serial, seed, first) = parsed.ok_or_else(|| {
            format!("blk.verify entry {entry:?} is not <serial>:<seed>[:<first sector>]")
        })?;
        super::with_disks(|disks| {
            let disk = disks
                .iter_mut()
                .find(|d| d.serial() == serial)
                .ok_or_else(|| format!("no disk with serial {serial:?}"))?;
            verify_whole_disk(disk, seed, first)
                .map_err(|e| format!("{} ({serial}): {e}", disk.name()))
        })?;
    }
    Ok(())
}

/// Reads the disk from sector `first` to the end in chunks of changing
/// sizes and compares each with the pattern of `seed`.
fn verify_whole_disk(disk: &mut Disk, seed: u64, first: u64) -> Result<(), String> {
    let capacity = disk.capacity_sectors();
    if first >= capacity {
        return Err(format!(
            "first sector {first} is past the end ({capacity} sectors)"
        ));
    }
    let chunk_sizes = [1u64, 7, 8, 64, 255, 1024, 2048];
    let mut buffer = IoBuffer::new(2048 * SECTOR)?;
    let mut sector = first;
    let mut reads = 0u64;
    let mut crc = 0u32;
    while sector < capacity {
        let count = chunk_sizes[(reads % chunk_sizes.len() as u64) as usize].min(capacity - sector);
        let data = &mut buffer.as_mut_slice()[..count as usize * SECTOR];
        data.fill(0xa5);
        disk.read(sector, data)
            .map_err(|e| format!("read of {count} sector(s) at {sector}: {e}"))?;
        check_pattern(data, seed, sector)?;
        crc = pattern::crc32_update(crc, data);
        sector += count;
        reads += 1;
    }
    println!(
        "blk: verified serial={} sector={first} count={} seed={seed:#x} crc32={crc:#010x}",
        disk.serial(),
        capacity - first
    );
    log::info!(
        "block: {}: sectors {first} to {} hold pattern {seed:#x} ({reads} reads)",
        disk.name(),
        capacity - 1
    );
    Ok(())
}

// ---------------------------------------------------------------- scratch

fn test_offsets_and_sizes() -> Result<(), String> {
    let base = base_seed();
    for_each_scratch("offsets and sizes", |disk| {
        let capacity = disk.capacity_sectors();
        let area_end = capacity / 2;
        let sizes: &[u64] = match workload() {
            Workload::Full => &FULL_SIZES,
            Workload::Quick | Workload::None => &QUICK_SIZES,
        };
        let mut sizes: Vec<u64> = sizes
            .iter()
            .copied()
            .filter(|&s| s <= area_end - LOW_RESERVED)
            .collect();
        let largest = sizes.iter().copied().max().unwrap_or(1);
        let mut rng = Rng::new(pattern::derive_seed(base, TAG_CHOICES + 1));
        rng.shuffle(&mut sizes);
        for (i, &sectors) in sizes.iter().enumerate() {
            let sector = LOW_RESERVED + rng.below(area_end - LOW_RESERVED - sectors + 1);
            let seed = pattern::derive_seed(base, TAG_RANDOM + i as u64);
            write_verified(disk, sector, sectors, seed)?;
        }
        log::info!(
            "block: {}: {} transfers of 1 to {largest} sectors written and read back",
            disk.name(),
            sizes.len()
        );
        Ok(())
    })
}

fn test_segment_limit() -> Result<(), String> {
    let base = base_seed();
    for_each_scratch("largest request", |disk| {
        let max = disk.device().max_data_segments();
        if (2 * max as u64 + 1) * PAGE_SECTORS > 2048 {
            return Err(format!(
                "{max} segments per request: no room for the test region"
            ));
        }
        let mut sector = disk.capacity_sectors() / 2 + QD_AREA;
        for (i, buffers) in [max, max + 1].into_iter().enumerate() {
            let expected_requests = if buffers == max { 1 } else { 2 };
            let seed = pattern::derive_seed(base, TAG_SEGMENTS + i as u64);
            vectored(disk, sector, buffers, seed, expected_requests)
                .map_err(|e| format!("{buffers} page buffers (limit {max}): {e}"))?;
            sector += buffers as u64 * PAGE_SECTORS;
        }
        log::info!(
            "block: {}: the largest request, {max} page segments ({} KiB), went out as 1 request; {} pages as 2",
            disk.name(),
            max as u64 * PAGE_SECTORS * SECTOR as u64 / 1024,
            max + 1
        );
        Ok(())
    })
}

/// Writes `buffers` separate one-page buffers (every other page of one
/// allocation, so none is contiguous with the next and each is one
/// segment) with one vectored call, checks how many requests that took,
/// and reads them back the same way.
fn vectored(
    disk: &mut Disk,
    first: u64,
    buffers: usize,
    seed: u64,
    expected_requests: u64,
) -> Result<(), String> {
    let page = PAGE_SECTORS as usize * SECTOR;
    let mut data = IoBuffer::new(2 * buffers * page)?;
    for (i, piece) in data.as_mut_slice().chunks_exact_mut(2 * page).enumerate() {
        let at = (first + i as u64 * PAGE_SECTORS) * SECTOR as u64;
        pattern::fill(seed, at, &mut piece[..page]);
        piece[page..].fill(0xee);
    }
    let pieces: Vec<&[u8]> = data
        .as_slice()
        .chunks_exact(2 * page)
        .map(|p| &p[..page])
        .collect();
    let crc = pieces
        .iter()
        .fold(0, |crc, p| pattern::crc32_update(crc, p));
    let sectors = buffers as u64 * PAGE_SECTORS;
    let before = requests(disk);
    disk.write_vectored(first, &pieces)
        .map_err(|e| format!("write: {e}"))?;
    announce_wrote(disk, first, sectors, seed, crc);
    let sent = requests(disk) - before;
    if sent != expected_requests {
        return Err(format!(
            "write took {sent} requests, expected {expected_requests}"
        ));
    }
    let mut back = IoBuffer::new(2 * buffers * page)?;
    back.as_mut_slice().fill(0xa5);
    let before = requests(disk);
    {
        let mut pieces: Vec<&mut [u8]> = back
            .as_mut_slice()
            .chunks_exact_mut(2 * page)
            .map(|p| &mut p[..page])
            .collect();
        disk.read_vectored(first, &mut pieces)
            .map_err(|e| format!("read: {e}"))?;
    }
    let sent = requests(disk) - before;
    if sent != expected_requests {
        return Err(format!(
            "read took {sent} requests, expected {expected_requests}"
        ));
    }
    for (i, piece) in back.as_slice().chunks_exact(2 * page).enumerate() {
        check_pattern(&piece[..page], seed, first + i as u64 * PAGE_SECTORS)?;
        if piece[page..].iter().any(|&b| b != 0xa5) {
            return Err(format!("the gap after buffer {i} was written"));
        }
    }
    Ok(())
}

fn test_flush_zeroes_discard() -> Result<(), String> {
    let base = base_seed();
    for_each_scratch("flush, write-zeroes, discard", |disk| {
        let zeroes_at = disk.capacity_sectors() / 2 + QD_AREA + 2048;
        let discard_at = zeroes_at + RANGE_REGION;
        flush(disk)?;
        write_zeroes(disk, zeroes_at, pattern::derive_seed(base, TAG_RANGES))?;
        discard(disk, discard_at, pattern::derive_seed(base, TAG_RANGES + 1))?;
        Ok(())
    })
}

fn flush(disk: &mut Disk) -> Result<(), String> {
    let flush_supported = disk.device().info().flush;
    let before = requests(disk);
    match (disk.flush(), flush_supported) {
        (Ok(()), true) => {
            if requests(disk) != before + 1 {
                return Err("flush did not send exactly one request".into());
            }
            Ok(())
        }
        (Err(super::BlockError::Device(BlkError::NotNegotiated(_))), false) => Ok(()),
        (result, supported) => Err(format!(
            "flush (FLUSH negotiated: {supported}) returned {result:?}"
        )),
    }
}

/// Fills the region with a pattern, zeroes a part of it in the middle
/// (and, if the device may unmap, another part with UNMAP), and checks
/// that exactly those parts read back as zeroes.
fn write_zeroes(disk: &mut Disk, region: u64, seed: u64) -> Result<(), String> {
    let Some(limits) = disk.device().info().write_zeroes else {
        return match disk.write_zeroes(region, 1, false) {
            Err(super::BlockError::Device(BlkError::NotNegotiated(_))) => Ok(()),
            other => Err(format!(
                "write-zeroes without WRITE_ZEROES returned {other:?}"
            )),
        };
    };
    write_verified(disk, region, RANGE_REGION, seed)?;
    let mut zeroed = vec![(64, 64, false)];
    if limits.may_unmap {
        zeroed.push((160, 32, true));
    }
    for &(offset, sectors, unmap) in &zeroed {
        disk.write_zeroes(region + offset, sectors, unmap)
            .map_err(|e| format!("write-zeroes (unmap {unmap}): {e}"))?;
        announce(disk, "zeroed", region + offset, sectors);
    }
    let mut back = IoBuffer::new(RANGE_REGION as usize * SECTOR)?;
    back.as_mut_slice().fill(0xa5);
    disk.read(region, back.as_mut_slice())
        .map_err(|e| format!("read-back: {e}"))?;
    for s in 0..RANGE_REGION {
        let data = &back.as_slice()[s as usize * SECTOR..(s as usize + 1) * SECTOR];
        let in_zeroed = zeroed.iter().any(|&(o, n, _)| s >= o && s < o + n);
        if in_zeroed {
            check_zero(data, region + s).map_err(|e| format!("after write-zeroes: {e}"))?;
        } else {
            check_pattern(data, seed, region + s)
                .map_err(|e| format!("outside write-zeroes: {e}"))?;
        }
    }
    log::info!(
        "block: {}: write-zeroes read back as zeroes ({} range(s), UNMAP {}), neighbours intact",
        disk.name(),
        zeroed.len(),
        if limits.may_unmap {
            "tried"
        } else {
            "not offered"
        }
    );
    Ok(())
}

/// Fills the region with a pattern and discards an aligned part of it.
/// virtio promises nothing about what discarded sectors read (§5.2.6.2), so
/// each must hold either its old data or zeroes; everything else is intact.
fn discard(disk: &mut Disk, region: u64, seed: u64) -> Result<(), String> {
    let Some(limits) = disk.device().info().discard else {
        return match disk.discard(region, 1) {
            Err(super::BlockError::Device(BlkError::NotNegotiated(_))) => Ok(()),
            other => Err(format!("discard without DISCARD returned {other:?}")),
        };
    };
    write_verified(disk, region, RANGE_REGION, seed)?;
    let align = u64::from(limits.sector_alignment).clamp(1, 64);
    let offset = 64u64.next_multiple_of(align);
    let sectors = 128u64.next_multiple_of(align).min(RANGE_REGION - offset);
    disk.discard(region + offset, sectors)
        .map_err(|e| format!("discard: {e}"))?;
    announce(disk, "discarded", region + offset, sectors);
    let mut back = IoBuffer::new(RANGE_REGION as usize * SECTOR)?;
    back.as_mut_slice().fill(0xa5);
    disk.read(region, back.as_mut_slice())
        .map_err(|e| format!("read-back: {e}"))?;
    let mut zeroes = 0;
    for s in 0..RANGE_REGION {
        let data = &back.as_slice()[s as usize * SECTOR..(s as usize + 1) * SECTOR];
        let kept = check_pattern(data, seed, region + s);
        if s >= offset && s < offset + sectors {
            if kept.is_err() {
                check_zero(data, region + s)
                    .map_err(|e| format!("discarded sector is neither old data nor zeroes: {e}"))?;
                zeroes += 1;
            }
        } else {
            kept.map_err(|e| format!("outside the discard: {e}"))?;
        }
    }
    log::info!(
        "block: {}: discard of {sectors} sectors: {zeroes} read back as zeroes, the rest kept its data; neighbours intact",
        disk.name()
    );
    Ok(())
}

// ---------------------------------------------------------------- injected errors

// ---------------------------------------------------------------- counters

fn test_counters() -> Result<(), String> {
    super::with_disks(|disks| {
        for disk in disks.iter_mut() {
            let expected_failures = disk.expected_failures();
            let name = disk.name().to_string();
            let device = disk.device();
            let stats = device.stats();
            if device.in_flight() != 0 {
                return Err(format!(
                    "{name}: {} requests still in flight",
                    device.in_flight()
                ));
            }
            if stats.completions != stats.requests {
                return Err(format!(
                    "{name}: {} requests but {} completions",
                    stats.requests, stats.completions
                ));
            }
            if stats.failed != expected_failures {
                return Err(format!(
                    "{name}: {} failed requests, {expected_failures} failed on purpose",
                    stats.failed
                ));
            }
            // A reset (a request timed out) aborts what was in flight:
            // those completions never came through the ring.
            if stats.ring.completions + stats.aborted != stats.completions {
                return Err(format!(
                    "{name}: the ring returned {} chains and a reset aborted {} for {} completions",
                    stats.ring.completions, stats.aborted, stats.completions
                ));
            }
            log::info!(
                "block: {name}: {} requests, {} failed on purpose, {} KiB read, {} KiB written, {} notifications ({} suppressed), {} interrupts",
                stats.requests,
                stats.failed,
                stats.bytes_read / 1024,
                stats.bytes_written / 1024,
                stats.ring.notifications,
                stats.ring.notifications_suppressed,
                disk.interrupt_count()
            );
            if disk.queue_count() > 1 {
                for line in disk.queue_lines() {
                    log::info!("block: {name} {line}");
                }
            }
        }
        Ok(())
    })
}
