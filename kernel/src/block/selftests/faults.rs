//! Faults below the driver: what the block layer does when the host's
//! storage fails a request or stops answering.
//!
//! The scenarios (`tests/qemu/scenarios_faults.py`) put QEMU's `blkdebug`
//! driver between the virtio-blk device and the image, with rules that fail
//! chosen requests with EIO, or throttle a disk through QMP until it stops
//! answering. The device then does what virtio 1.2 §5.2.6 lets it do: a
//! failed request completes with status VIRTIO_BLK_S_IOERR; a request the
//! backend never finishes is simply never used. The driver must turn the
//! first into [`RequestError::IoError`] for that request alone, and the
//! second into a timeout: reset the device (§2.4: the only way to take
//! buffers back from it), fail the request with [`BlkError::Timeout`], and
//! bring the device up again on the next call (`Disk::ensure_live`,
//! `BlkDevice::recover`, §3.1.1). Nobody waits forever.
//!
//! | key | test |
//! | --- | --- |
//! | `expect.blk.ioerr=<serial>:<op>[:<sector>],..` | each named request fails with IOERR as injected; the disk keeps serving |
//! | `expect.blk.hang=<serial>` | the host makes the disk stop answering: a read times out, the device is reset, recovered, and serves again once the host lets it |
//!
//! `<op>` is one of
//!
//! - `read`, `write` (with a sector): every request touching that sector
//!   fails (three are tried, one of them spanning the sector);
//! - `read-once`, `write-once` (with a sector): the first request fails,
//!   the same request again succeeds and moves the right data;
//! - `flush`: every FLUSH (after a write) fails; writes and reads still
//!   work;
//! - `flush-once`: the first FLUSH fails, the next succeeds.
//!
//! For `expect.blk.hang=` the guest and the host take turns through the
//! serial log:
//!
//! ```text
//! guest: block: vdb: waiting for the device to stop answering
//! host:  (QMP block_set_io_throttle: 1 byte/s; every later request waits)
//! guest: block: vdb: a read timed out after 2001 ms: the device stopped answering and was reset
//! host:  (QMP block_set_io_throttle: no limit)
//! guest: block: vdb: serving again after 2 attempt(s), the device recovered
//! ```
//!
//! Every request failed on purpose is counted (`Disk::expect_failure`), so
//! the counters test afterwards proves no other request failed; every write
//! is announced (`blk: wrote` / `blk: write-failed`) so the host checks the
//! image as for the other block scenarios.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use drivers::blk::{BlkError, RequestError};

use super::super::{BlockError, Disk, IoBuffer, SECTOR};
use super::{announce, announce_wrote, base_seed, check_pattern, parse_u64, write_verified};
use crate::block::pattern;
use crate::println;
use crate::selftest_api::SelfTest;

/// Seed tag of the data the fault tests write (see `pattern::derive_seed`).
const TAG_FAULT: u64 = 0x5_0000;
/// Where the flush tests write before each flush.
const FLUSH_AREA: u64 = 6000;
/// How long a call waits for a disk the host stopped (instead of
/// `block::CALL_TIMEOUT_NS`): long enough for any request of a working
/// disk under TCG on a loaded host, short enough for a test.
const HANG_TIMEOUT_NS: u64 = 2_000_000_000;
/// How long the host may take to stop the disk, and to let it go again.
const HANG_PATIENCE_NS: u64 = 60_000_000_000;
/// Where the hang test keeps the data it reads.
const HANG_AREA: u64 = 2048;

/// The tests this module adds, by the keys on the command line.
pub(super) fn selftests() -> Vec<SelfTest> {
    let mut tests = Vec::new();
    if crate::cmdline::get("expect.blk.ioerr").is_some() {
        tests.push(SelfTest {
            name: "block: injected I/O errors are reported (IOERR) and the disk keeps working",
            run: test_injected_errors,
        });
    }
    if crate::cmdline::get("expect.blk.hang").is_some() {
        tests.push(SelfTest {
            name: "block: a disk that stops answering times out, is reset and recovered, and serves again",
            run: test_hang,
        });
    }
    tests
}

/// Which request an injected fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Flush,
}

/// One `expect.blk.ioerr=` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fault {
    serial: String,
    op: Op,
    /// Only the first request fails (blkdebug `once = "on"`).
    once: bool,
    /// The sector (reads and writes).
    sector: u64,
}

/// `expect.blk.ioerr=` entries.
fn injected_errors() -> Result<Vec<Fault>, String> {
    let Some(value) = crate::cmdline::get("expect.blk.ioerr") else {
        return Ok(Vec::new());
    };
    value.split(',').map(parse_fault).collect()
}

fn parse_fault(entry: &str) -> Result<Fault, String> {
    let bad = || format!("expect.blk.ioerr entry {entry:?} is not <serial>:<op>[:<sector>]");
    let mut parts = entry.split(':');
    let (Some(serial), Some(op)) = (parts.next(), parts.next()) else {
        return Err(bad());
    };
    let sector = parts.next();
    if parts.next().is_some() {
        return Err(bad());
    }
    let (name, once) = match op.strip_suffix("-once") {
        Some(name) => (name, true),
        None => (op, false),
    };
    let op = match name {
        "read" => Op::Read,
        "write" => Op::Write,
        "flush" => Op::Flush,
        _ => {
            return Err(format!(
                "expect.blk.ioerr entry {entry:?}: op must be read, write or flush, with or without -once"
            ))
        }
    };
    let sector = match (op, sector) {
        (Op::Flush, None) => 0,
        (Op::Flush, Some(_)) => {
            return Err(format!(
                "expect.blk.ioerr entry {entry:?}: a flush has no sector"
            ))
        }
        (_, None) => return Err(bad()),
        (_, Some(text)) => parse_u64(text)
            .ok_or_else(|| format!("expect.blk.ioerr entry {entry:?}: bad sector"))?,
    };
    Ok(Fault {
        serial: serial.to_string(),
        op,
        once,
        sector,
    })
}

/// Serials of the disks the fault tests own (the write workload leaves them alone).
pub(super) fn faulty_serials() -> Result<Vec<String>, String> {
    let mut serials: Vec<String> = injected_errors()?.into_iter().map(|f| f.serial).collect();
    if let Some(hang) = crate::cmdline::get("expect.blk.hang") {
        serials.extend(hang.split(',').map(ToString::to_string));
    }
    Ok(serials)
}

fn test_injected_errors() -> Result<(), String> {
    let base = base_seed();
    for (i, fault) in injected_errors()?.iter().enumerate() {
        super::super::with_disks(|disks| {
            let disk = disks
                .iter_mut()
                .find(|d| d.serial() == fault.serial)
                .ok_or_else(|| format!("no disk with serial {:?}", fault.serial))?;
            let seed = pattern::derive_seed(base, TAG_FAULT + i as u64);
            let failed_before = disk.device().stats().failed;
            let expected_before = disk.expected_failures();
            let result = match (fault.op, fault.once) {
                (Op::Flush, once) => injected_flush(disk, once, seed, i as u64),
                (op, false) => injected_always(disk, op == Op::Write, fault.sector, seed),
                (op, true) => injected_once(disk, op == Op::Write, fault.sector, seed),
            };
            result.map_err(|e| format!("{} ({}): {e}", disk.name(), fault.serial))?;
            let failed = disk.device().stats().failed - failed_before;
            let expected = disk.expected_failures() - expected_before;
            if failed != expected {
                return Err(format!(
                    "{}: {failed} requests counted as failed, {expected} failed on purpose",
                    disk.name()
                ));
            }
            if disk.device().is_failed() {
                return Err(format!(
                    "{}: an I/O error took the whole device down",
                    disk.name()
                ));
            }
            keeps_working(disk, fault.sector, seed)
        })?;
    }
    Ok(())
}

/// `result` must be the IOERR the host injected; counts it.
fn expect_ioerr(disk: &mut Disk, what: &str, result: Result<(), BlockError>) -> Result<(), String> {
    match result {
        Err(BlockError::Device(BlkError::Request(RequestError::IoError))) => {
            disk.expect_failure();
            Ok(())
        }
        other => Err(format!("{what} returned {other:?}, expected an I/O error")),
    }
}

/// Every request at `sector` fails with IOERR (twice: the fault stays), a
/// request spanning it too.
fn injected_always(disk: &mut Disk, is_write: bool, sector: u64, seed: u64) -> Result<(), String> {
    check_room(disk, sector)?;
    let what = if is_write { "write" } else { "read" };
    let mut buffer = IoBuffer::new(8 * SECTOR)?;
    for (first, count) in [(sector, 1u64), (sector, 1), (sector - 4, 8)] {
        let data = &mut buffer.as_mut_slice()[..count as usize * SECTOR];
        let result = if is_write {
            pattern::fill(seed, first * SECTOR as u64, data);
            disk.write(first, data)
        } else {
            disk.read(first, data)
        };
        expect_ioerr(
            disk,
            &format!("{what} of {count} sector(s) at {first}"),
            result,
        )?;
        if is_write {
            announce(disk, "write-failed", first, count);
        }
    }
    log::info!(
        "block: {}: {what} at sector {sector} failed with IOERR as injected (3 times); the disk keeps working",
        disk.name()
    );
    Ok(())
}

/// The first request at `sector` fails with IOERR, the same request again
/// succeeds: a transient fault costs one request, nothing more.
fn injected_once(disk: &mut Disk, is_write: bool, sector: u64, seed: u64) -> Result<(), String> {
    check_room(disk, sector)?;
    let mut data = IoBuffer::new(SECTOR)?;
    pattern::fill(seed, sector * SECTOR as u64, data.as_mut_slice());
    let crc = pattern::crc32(data.as_slice());
    if is_write {
        let first = disk.write(sector, data.as_slice());
        expect_ioerr(disk, &format!("the first write at {sector}"), first)?;
        announce(disk, "write-failed", sector, 1);
        disk.write(sector, data.as_slice())
            .map_err(|e| format!("the second write at {sector} (the fault was once only): {e}"))?;
        announce_wrote(disk, sector, 1, seed, crc);
    } else {
        // Something known to read back (the rule is on reads only).
        disk.write(sector, data.as_slice())
            .map_err(|e| format!("write at {sector} before the read fault: {e}"))?;
        announce_wrote(disk, sector, 1, seed, crc);
        let mut back = vec![0xa5u8; SECTOR];
        let first = disk.read(sector, &mut back);
        expect_ioerr(disk, &format!("the first read at {sector}"), first)?;
    }
    let mut back = vec![0xa5u8; SECTOR];
    disk.read(sector, &mut back)
        .map_err(|e| format!("read at {sector} after the one-time fault: {e}"))?;
    check_pattern(&back, seed, sector)
        .map_err(|e| format!("read at {sector} after the one-time fault: {e}"))?;
    log::info!(
        "block: {}: the first {} at sector {sector} failed with IOERR as injected, the second went through",
        disk.name(),
        if is_write { "write" } else { "read" }
    );
    Ok(())
}

/// FLUSH fails (once, or every time); the data written before it is still
/// readable, and reads and writes go on.
fn injected_flush(disk: &mut Disk, once: bool, seed: u64, index: u64) -> Result<(), String> {
    let sector = FLUSH_AREA + index * 16;
    check_room(disk, sector)?;
    let attempts = if once { 1 } else { 2 };
    for attempt in 0..attempts {
        // A flush with nothing written since the last one never reaches
        // the image (QEMU skips it), so write first.
        write_verified(disk, sector + attempt, 1, seed)?;
        let flushed = disk.flush();
        expect_ioerr(disk, &format!("flush #{}", attempt + 1), flushed)?;
    }
    if once {
        write_verified(disk, sector + 1, 1, seed)?;
        disk.flush()
            .map_err(|e| format!("the flush after the one-time fault: {e}"))?;
    }
    log::info!(
        "block: {}: FLUSH failed with IOERR as injected ({}); the disk keeps working",
        disk.name(),
        if once {
            "once, then succeeded"
        } else {
            "every time"
        }
    );
    Ok(())
}

fn check_room(disk: &Disk, sector: u64) -> Result<(), String> {
    if sector + 64 + 8 > disk.capacity_sectors() || sector < 8 {
        return Err(format!(
            "sector {sector} is too close to an end of the disk"
        ));
    }
    Ok(())
}

/// Right next to the fault and far from it, the disk reads (and writes).
fn keeps_working(disk: &mut Disk, sector: u64, seed: u64) -> Result<(), String> {
    let mut one = vec![0u8; SECTOR];
    for other in [sector + 1, sector + 64, 0] {
        disk.read(other, &mut one)
            .map_err(|e| format!("{}: read at {other} after the error: {e}", disk.name()))?;
    }
    if disk.writable() {
        write_verified(disk, sector + 64, 8, seed)
            .map_err(|e| format!("{}: after the error: {e}", disk.name()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- hang

fn test_hang() -> Result<(), String> {
    let Some(serials) = crate::cmdline::get("expect.blk.hang") else {
        return Ok(());
    };
    let seed = pattern::derive_seed(base_seed(), TAG_FAULT + 0x100);
    for serial in serials.split(',') {
        super::super::with_disks(|disks| {
            let disk = disks
                .iter_mut()
                .find(|d| d.serial() == serial)
                .ok_or_else(|| format!("no disk with serial {serial:?}"))?;
            disk.set_call_timeout(HANG_TIMEOUT_NS);
            let outcome = hang(disk, seed);
            disk.set_call_timeout(super::super::CALL_TIMEOUT_NS);
            outcome.map_err(|e| format!("{} ({serial}): {e}", disk.name()))
        })?;
    }
    Ok(())
}

/// The turns described in the module docs.
fn hang(disk: &mut Disk, seed: u64) -> Result<(), String> {
    const COUNT: u64 = 8;
    write_verified(disk, HANG_AREA, COUNT, seed)?;
    let mut buffer = IoBuffer::new(COUNT as usize * SECTOR)?;
    println!(
        "block: {}: waiting for the device to stop answering",
        disk.name()
    );
    // 1. Read until a read times out: the host has stopped the disk.
    let start = crate::clock::uptime_ns();
    let reads = loop {
        let asked = crate::clock::uptime_ns();
        match disk.read(HANG_AREA, buffer.as_mut_slice()) {
            Ok(()) => {}
            Err(BlockError::Device(BlkError::Timeout { .. })) => {
                disk.expect_failure();
                break crate::clock::uptime_ns() - asked;
            }
            Err(other) => return Err(format!("read while waiting for the stop: {other}")),
        }
        if crate::clock::uptime_ns() - start > HANG_PATIENCE_NS {
            return Err("the device never stopped answering".into());
        }
        pause_ms(20);
    };
    if !disk.device().is_failed() {
        return Err("a read timed out but the driver did not reset the device".into());
    }
    println!(
        "block: {}: a read timed out after {} ms: the device stopped answering and was reset",
        disk.name(),
        reads / 1_000_000
    );
    // 2. Read again until the host lets the disk go: each call first
    // brings the device back (recovery), and times out while it is stopped.
    let start = crate::clock::uptime_ns();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        buffer.as_mut_slice().fill(0xa5);
        match disk.read(HANG_AREA, buffer.as_mut_slice()) {
            Ok(()) => break,
            Err(BlockError::Device(BlkError::Timeout { .. })) => disk.expect_failure(),
            Err(other) => return Err(format!("read after the stop, attempt {attempts}: {other}")),
        }
        if crate::clock::uptime_ns() - start > HANG_PATIENCE_NS {
            return Err(format!("still not serving after {attempts} attempts"));
        }
        pause_ms(100);
    }
    check_pattern(buffer.as_slice(), seed, HANG_AREA)
        .map_err(|e| format!("the data read after recovery: {e}"))?;
    println!(
        "block: {}: serving again after {attempts} attempt(s), the device recovered",
        disk.name()
    );
    // Writes too, and nothing is left in flight.
    write_verified(disk, HANG_AREA + COUNT, COUNT, seed)?;
    disk.flush()
        .map_err(|e| format!("flush after recovery: {e}"))?;
    if disk.device().in_flight() != 0 {
        return Err(format!(
            "{} requests in flight after recovery",
            disk.device().in_flight()
        ));
    }
    Ok(())
}

/// Spins `ms` milliseconds on the clock.
fn pause_ms(ms: u64) {
    let until = crate::clock::uptime_ns() + ms * 1_000_000;
    while crate::clock::uptime_ns() < until {
        core::hint::spin_loop();
    }
}
