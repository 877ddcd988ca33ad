//! `mode=bench`: run the benchmark sections the command line names and
//! leave QEMU.
//!
//! `bench=blk[,...]` (default `blk`) picks the sections; each prints
//! machine-readable lines of the form
//!
//! ```text
//! bench: <section>.<workload>[.<mode>] key=value key=value ...
//! ```
//!
//! that `x.py bench` parses, and the run ends with `bench: done` (QEMU exit
//! status 33) or `bench: error <section>: <why>` (status 35). Sections:
//!
//! - `blk`: [`crate::block::bench`] (IOPS, throughput, notifications and
//!   interrupts per request, interrupt-driven and polling).
//! - `compare`: [`crate::peer::bench::compare`], `bench.repeat=` rounds of
//!   the `blk` workloads on our stack and then on the `virtio-drivers`
//!   crate, on the same device, handed over with a reset each way.
//! - `ready`: claims the disks and prints `bench: boot.ready uptime_us=`,
//!   for `x.py bench`'s boot-time rows (it times QEMU from the host).
//!
//! - `console`: [`console`], MiB through virtio-console port 0 (the
//!   shell's console driver), MB/s and a checksum the host compares.
//!
//! - `net`: [`crate::net::bench`], small frames between two cards on one
//!   QEMU hub: transmit and receive packets per second, loss,
//!   notifications and interrupts per packet.

use crate::println;

/// Runs the sections `bench=` names and exits QEMU.
pub fn run() -> ! {
    let sections = crate::cmdline::get("bench").unwrap_or("blk");
    let mut failed = false;
    for section in sections.split(',').filter(|s| !s.is_empty()) {
        let started = crate::clock::uptime_ns();
        let result = match section {
            // `bench.repeat=` runs of every workload, for min / median / max.
            "blk" => (0..crate::peer::repeat_count()).try_for_each(|_| crate::block::bench::run()),
            "compare" => crate::peer::bench::compare(),
            "console" => console(),
            "net" => crate::net::bench::run(),
            // Boot time: every device up (probe and net ran before `bench`).
            "ready" => {
                crate::block::init();
                println!(
                    "bench: boot.ready stack=ours uptime_us={}",
                    crate::clock::uptime_ns() / 1000
                );
                Ok(())
            }
            other => Err(alloc::format!(
                "unknown section {other:?} (known: blk, compare, console, net, ready)"
            )),
        };
        match result {
            Ok(()) => log::info!(
                "bench: section {section} took {} ms",
                (crate::clock::uptime_ns() - started) / 1_000_000
            ),
            Err(why) => {
                println!("bench: error {section}: {why}");
                failed = true;
            }
        }
    }
    if failed {
        crate::exit::qemu_exit(crate::exit::EXIT_SELFTEST_FAILED)
    }
    println!("bench: done");
    crate::exit::qemu_exit(crate::exit::EXIT_SELFTEST_PASSED)
}

/// Bytes per `write_all` call of the console section: a few pages, so that
/// the driver's chaining and transmit interrupts both get exercised.
const CONSOLE_CHUNK_BYTES: usize = 16 * 1024;
/// How long one chunk may wait for transmit room before the section fails.
const CONSOLE_CHUNK_TIMEOUT_NS: u64 = 5_000_000_000;

/// FNV-1a (64-bit) over `bytes`, continuing from `hash`: cheap, and easy to
/// recompute on the host (`x.py bench --section console` does).
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// `bench=console`: `bench.repeat=` runs, each writing `bench.console_mib=`
/// MiB (default 4) through virtio-console port 0 with the shell's console
/// (the driver's `write_all` and `flush`, its transmit path,
/// virtio 1.2 §5.3.6). Byte `i` of the stream is `i % 251`, so a lost,
/// repeated or reordered chunk shows in the checksum. Prints one
/// `bench: console.write` line per run and a `bench: console.total` line
/// with the byte count and FNV-1a of everything written.
fn console() -> Result<(), alloc::string::String> {
    if !crate::shell::console::init() {
        return Err("no virtio console came up".into());
    }
    let mib = crate::cmdline::get("bench.console_mib")
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|n| (1..=256).contains(n))
        .unwrap_or(4);
    let per_run = mib * 1024 * 1024;
    let mut guard = crate::shell::console::lock();
    let console = guard.as_mut().ok_or("no console after init")?;
    let location = console.location;
    let mut wait = crate::shell::console::waiter(location, CONSOLE_CHUNK_TIMEOUT_NS);
    // With MULTIPORT the console port appears (PORT_ADD, CONSOLE_PORT) and
    // opens (PORT_OPEN) in control messages after bring-up: wait for both.
    console
        .device
        .wait_until(&mut wait, |d| {
            Ok(d.console_port()
                .and_then(|p| d.port(p))
                .is_some_and(|p| p.host_open))
        })
        .map_err(|e| alloc::format!("no console port open on the host side: {e}"))?;
    let port = console.device.console_port().ok_or("no console port")?;
    let mut chunk = alloc::vec![0u8; CONSOLE_CHUNK_BYTES];
    let mut position = 0usize;
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for _ in 0..crate::peer::repeat_count() {
        let started = crate::clock::uptime_ns();
        let mut written = 0usize;
        while written < per_run {
            let length = CONSOLE_CHUNK_BYTES.min(per_run - written);
            for (offset, byte) in chunk[..length].iter_mut().enumerate() {
                // `% 251` keeps the value below 256: the cast cannot truncate.
                *byte = ((position + offset) % 251) as u8;
            }
            // A fresh deadline per chunk: the waiter's timeout is absolute.
            let mut wait = crate::shell::console::waiter(location, CONSOLE_CHUNK_TIMEOUT_NS);
            console
                .device
                .write_all(port, &chunk[..length], &mut wait)
                .map_err(|error| alloc::format!("write at byte {position}: {error}"))?;
            hash = fnv1a(hash, &chunk[..length]);
            position += length;
            written += length;
        }
        // The run ends when the device has taken every byte, not when the
        // last one was queued.
        let mut wait = crate::shell::console::waiter(location, CONSOLE_CHUNK_TIMEOUT_NS);
        console
            .device
            .flush(port, &mut wait)
            .map_err(|error| alloc::format!("flush: {error}"))?;
        let elapsed_ns = (crate::clock::uptime_ns() - started).max(1);
        // MB/s = bytes / elapsed_ns * 1e9 / 1e6, in integer thousandths.
        let milli_mb_per_s = (per_run as u128 * 1_000_000) / u128::from(elapsed_ns);
        println!(
            "bench: console.write stack=ours port={port} bytes={per_run} elapsed_us={} mb_per_s={}.{:03}",
            elapsed_ns / 1000,
            milli_mb_per_s / 1000,
            milli_mb_per_s % 1000
        );
    }
    println!("bench: console.total stack=ours bytes={position} fnv1a=0x{hash:016x}");
    Ok(())
}
