//! The soak workload (`soak=on`, self-test build only): block I/O on a
//! scratch disk while the network services serve the host, for as long as
//! `soak.seconds=` says, with the counters a leak or a stall would move
//! printed every second. `./x.py soak --minutes N` (and, briefly,
//! `./x.py test`'s `soak-short`) drives it from the host:
//! `tests/qemu/soak.py` has the host's side and the verdicts.
//!
//! What the guest does, in one loop:
//!
//! - one block round: write a region of 1 to 64 sectors (sizes and places
//!   from a seeded generator) with the pattern of a fresh seed, read it back
//!   and compare, and read back one earlier region too and compare it with
//!   what was last written there (data that survived later writes); a FLUSH
//!   every 16 rounds (virtio 1.2 §5.2.6). Each write is announced as the
//!   block self-tests do (`blk: wrote ...`), so the host checks the image
//!   afterwards (`tests/qemu/blk.py`);
//! - one network round ([`crate::net::poll`]): the echo and HTTP services
//!   serve whatever the host sends;
//! - once a second, a counters line:
//!
//! ```text
//! soak: start disk=vda serial=scratch0 seconds=20
//! soak: t=3 rounds=412 bytes=6733824 errors=0 heap_used=1052672 frames_free=52911 sockets=3 held=0 queued=5120
//! soak: blk done rounds=2733 errors=0
//! soak: t=21 rounds=2733 bytes=... errors=0 heap_used=1052672 frames_free=52911 sockets=0 held=0 queued=0
//! ```
//!
//! A failed or mismatching block request prints `soak: ERROR ...` and counts
//! in `errors`; the run goes on. After `soak.seconds` the block rounds stop
//! (`soak: blk done`), so that the host can stop QEMU without a write in
//! flight, and the network and the counters lines go on until the host
//! ends the run.
//!
//! The counters are the kernel's own: the heap's bytes in use
//! (`memory::heap::stats`) and free page frames (`memory::free_frame_count`),
//! the two pools every driver and socket buffer come from, and the network
//! services' connection slots in use and bytes held and queued
//! (`net::service_counters`). With no client connected and no request in
//! flight they must come back to where they were (the services' to 0); the
//! host compares them before and after its load.

use alloc::vec::Vec;

use crate::block::{self, pattern, Disk, IoBuffer, SECTOR};
use crate::println;

/// How long the block rounds run by default (`soak.seconds=`).
const DEFAULT_SECONDS: u64 = 20;
/// Regions the rounds write into, each [`REGION_SECTORS`] long, from
/// [`FIRST_SECTOR`] on.
const REGIONS: u64 = 64;
const REGION_SECTORS: u64 = 64;
const FIRST_SECTOR: u64 = 64;
/// A FLUSH every this many rounds.
const FLUSH_EVERY: u64 = 16;
/// Seed tag of the soak's data (see `pattern::derive_seed`).
const TAG_SOAK: u64 = 0x7_0000;

/// What the block side has done so far.
#[derive(Default)]
struct Progress {
    rounds: u64,
    bytes: u64,
    errors: u64,
}

/// Runs the soak if the command line says `soak=on`; does not return then.
pub fn run_if_asked() {
    if crate::cmdline::get("soak") != Some("on") {
        return;
    }
    let seconds = crate::cmdline::get("soak.seconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(DEFAULT_SECONDS);
    let base = crate::cmdline::get("blk.seed")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1);
    let disk_name = block::with_disks(|disks| {
        disks
            .iter()
            .find(|d| d.writable())
            .map(|d| (d.name().into(), d.serial().into()))
    });
    let Some((name, serial)) = disk_name else {
        println!("soak: ERROR no writable scratch disk");
        crate::exit::halt_forever()
    };
    let name: alloc::string::String = name;
    let serial: alloc::string::String = serial;
    println!("soak: start disk={name} serial={serial} seconds={seconds}");
    let mut rng = pattern::Rng::new(pattern::derive_seed(base, TAG_SOAK));
    // The seed last written to each region (0: never written).
    let mut written: Vec<u64> = alloc::vec![0; REGIONS as usize];
    let mut progress = Progress::default();
    let start = crate::clock::uptime_ns();
    let blk_until = start.saturating_add(seconds.saturating_mul(1_000_000_000));
    let mut next_report = start;
    let mut blk_running = true;
    loop {
        let now = crate::clock::uptime_ns();
        if blk_running && now >= blk_until {
            blk_running = false;
            println!(
                "soak: blk done rounds={} errors={}",
                progress.rounds, progress.errors
            );
        }
        if blk_running {
            let result = block::with_disk(&name, |disk| {
                round(disk, &mut rng, &mut written, &mut progress, base)
            });
            if let Err(error) = result {
                progress.errors += 1;
                println!("soak: ERROR {error}");
            }
        }
        crate::net::poll();
        if now >= next_report {
            report(now - start, &progress);
            next_report = now.saturating_add(1_000_000_000);
        }
        if !blk_running {
            // Nothing but the network: a network round every millisecond.
            let until = crate::clock::uptime_ns().saturating_add(1_000_000);
            while crate::clock::uptime_ns() < until {
                core::hint::spin_loop();
            }
        }
    }
}

fn report(elapsed_ns: u64, progress: &Progress) {
    let heap = crate::memory::heap::stats();
    // The services' connection slots in use (serving or refusing) and the
    // bytes they hold and have queued, over every card and both services.
    let (mut sockets, mut held, mut queued) = (0usize, 0usize, 0usize);
    for (_, services) in crate::net::service_counters() {
        for service in services {
            sockets += service.in_use + service.refusing;
            held += service.held;
            queued += service.queued;
        }
    }
    println!(
        "soak: t={} rounds={} bytes={} errors={} heap_used={} frames_free={} sockets={sockets} held={held} queued={queued}",
        elapsed_ns / 1_000_000_000,
        progress.rounds,
        progress.bytes,
        progress.errors,
        heap.used,
        crate::memory::free_frame_count()
    );
}

/// One block round (see the module docs). A mismatch or a failed request
/// is an error the caller prints.
fn round(
    disk: &mut Disk,
    rng: &mut pattern::Rng,
    written: &mut [u64],
    progress: &mut Progress,
    base: u64,
) -> Result<(), alloc::string::String> {
    progress.rounds += 1;
    let region = rng.below(REGIONS);
    let sectors = 1 + rng.below(REGION_SECTORS);
    let sector = FIRST_SECTOR + region * REGION_SECTORS;
    let seed = pattern::derive_seed(base, TAG_SOAK + progress.rounds);
    let bytes = sectors as usize * SECTOR;
    let mut data = IoBuffer::new(bytes)?;
    pattern::fill(seed, sector * SECTOR as u64, data.as_mut_slice());
    let crc = pattern::crc32(data.as_slice());
    disk.write(sector, data.as_slice())
        .map_err(|e| alloc::format!("write of {sectors} sector(s) at {sector}: {e}"))?;
    println!(
        "blk: wrote serial={} sector={sector} count={sectors} seed={seed:#x} crc32={crc:#010x}",
        disk.serial()
    );
    // The region now holds this seed from its start for `sectors`, and
    // the older seed after that: remember only a whole-region write.
    written[region as usize] = if sectors == REGION_SECTORS { seed } else { 0 };
    verify(disk, sector, bytes, seed)?;
    progress.bytes += 2 * bytes as u64;
    // An older region, written whole: still what it was.
    let other = rng.below(REGIONS);
    let old = written[other as usize];
    if old != 0 {
        let at = FIRST_SECTOR + other * REGION_SECTORS;
        verify(disk, at, REGION_SECTORS as usize * SECTOR, old)?;
        progress.bytes += REGION_SECTORS * SECTOR as u64;
    }
    if progress.rounds.is_multiple_of(FLUSH_EVERY) {
        disk.flush().map_err(|e| alloc::format!("flush: {e}"))?;
    }
    Ok(())
}

/// Reads `bytes` at `sector` and compares them with the pattern of `seed`.
fn verify(
    disk: &mut Disk,
    sector: u64,
    bytes: usize,
    seed: u64,
) -> Result<(), alloc::string::String> {
    let mut back = IoBuffer::new(bytes)?;
    back.as_mut_slice().fill(0xa5);
    disk.read(sector, back.as_mut_slice())
        .map_err(|e| alloc::format!("read of {} sector(s) at {sector}: {e}", bytes / SECTOR))?;
    match pattern::first_mismatch(seed, sector * SECTOR as u64, back.as_slice()) {
        None => Ok(()),
        Some((at, found, expected)) => Err(alloc::format!(
            "sector {} offset {} reads {found:#04x}, expected {expected:#04x} (seed {seed:#x})",
            sector + (at / SECTOR) as u64,
            at % SECTOR
        )),
    }
}
