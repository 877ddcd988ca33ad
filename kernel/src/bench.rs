//! `mode=bench`: run the benchmark sections the command line names and
//! leave QEMU. Built only with the cargo feature `bench` (which also links
//! the peer stack, [`crate::peer`]); `./x.py bench` builds it.
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
//! - `scale`: [`crate::block::bench_scale::run_scale`], `blk.randread.qd32` on
//!   a multiqueue disk, each submitting CPU on its own queue (`x.py bench
//!   --section scale` boots it with 1, 2 and 4 CPUs).
//! - `netscale`: [`crate::net::bench_scale::run`], its network half:
//!   64-byte frames sent on a multiqueue card, one pair per submitting CPU.
//! - `ready`: claims the disks and prints `bench: boot.ready uptime_us=`,
//!   for `x.py bench`'s boot-time rows (it times QEMU from the host).
//!
//! - `console`: [`console`], MiB through virtio-console port 0 (the
//!   shell's console driver), MB/s and a checksum the host compares; each
//!   round then the same on the peer stack ([`crate::peer::console`]).
//!
//! - `net`: [`crate::net::bench`], small frames between two cards on one
//!   QEMU hub: transmit and receive packets per second, loss,
//!   notifications and interrupts per packet; each round then the same on
//!   the peer stack ([`crate::peer::net`]).

use crate::println;

/// `mode=bench`, once every device has been found: the benchmarks bring
/// up the devices they drive (the disks here, the console in its section),
/// then [`run`].
pub fn run_mode() -> ! {
    crate::block::init();
    run()
}

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
            "iommu" => crate::iommu::bench::run(),
            // One queue per CPU: `x.py bench --section scale`.
            "scale" => crate::block::bench_scale::run_scale(),
            // Its network half: 64-byte frames on a multiqueue card.
            "netscale" => crate::net::bench_scale::run(),
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
                "unknown section {other:?} (known: blk, compare, console, net, iommu, scale, netscale, ready)"
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
pub(crate) const CONSOLE_CHUNK_BYTES: usize = 16 * 1024;
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

/// FNV-1a's starting value (offset basis).
pub(crate) const FNV1A_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Fills `chunk` with bytes `position..` of the console stream: byte `i`
/// is `i % 251`.
pub(crate) fn console_pattern(chunk: &mut [u8], position: usize) {
    for (offset, byte) in chunk.iter_mut().enumerate() {
        // `% 251` keeps the value below 256: the cast cannot truncate.
        *byte = ((position + offset) % 251) as u8;
    }
}

/// Where the console stream has got to: both stacks append to it, in turn.
pub(crate) struct ConsoleStream {
    /// Bytes written so far (by either stack).
    pub position: usize,
    /// FNV-1a of those bytes.
    pub hash: u64,
}

impl ConsoleStream {
    /// Notes that `bytes` (the stream from `position` on) reached the device.
    pub fn advance(&mut self, bytes: &[u8]) {
        self.hash = fnv1a(self.hash, bytes);
        self.position += bytes.len();
    }
}

/// `bench=console`: `bench.repeat=` rounds, each writing
/// `bench.console_mib=` MiB (default 4) through virtio-console port 0 with
/// the shell's console (the driver's `write_all` and `flush`, its transmit
/// path, virtio 1.2 §5.3.6), then as many again with the peer stack
/// ([`crate::peer::console`]) on the same device and into the same file.
/// Byte `i` of the whole stream is `i % 251`, so a lost, repeated or
/// reordered chunk of either stack shows in the checksum. Prints one
/// `bench: console.write` line per run of ours, one
/// `bench: console.write.peer` per run of the peer, and a
/// `bench: console.total` line with the byte count (all, ours, the
/// peer's) and the FNV-1a of everything written, in order.
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
    let mut stream = ConsoleStream {
        position: 0,
        hash: FNV1A_START,
    };
    let (mut ours, mut peer) = (0usize, 0usize);
    for round in 0..crate::peer::repeat_count() {
        ours += console_ours(console, per_run, &mut stream)?;
        peer += crate::peer::console::round(console, per_run, &mut stream, round == 0)
            .map_err(|e| alloc::format!("peer (virtio-drivers): {e}"))?;
    }
    println!(
        "bench: console.total stack=both bytes={} fnv1a=0x{:016x} ours_bytes={ours} peer_bytes={peer}",
        stream.position, stream.hash
    );
    Ok(())
}

/// One run of ours: `per_run` bytes of the stream through port 0, timed
/// until the device has taken the last one. Returns the bytes written.
fn console_ours(
    console: &mut crate::shell::console::Console,
    per_run: usize,
    stream: &mut ConsoleStream,
) -> Result<usize, alloc::string::String> {
    let location = console.location;
    let mut wait = crate::shell::console::waiter(location, CONSOLE_CHUNK_TIMEOUT_NS);
    // With MULTIPORT the console port appears (PORT_ADD, CONSOLE_PORT) and
    // opens (PORT_OPEN) in control messages after bring-up (and again after
    // the device came back from the peer): wait for both.
    console
        .device
        .wait_until(&mut wait, |d| {
            Ok(d.console_port()
                .and_then(|p| d.port(p))
                .is_some_and(|p| p.host_open))
        })
        .map_err(|e| alloc::format!("no console port open on the host side: {e}"))?;
    let port = console.device.console_port().ok_or("no console port")?;
    let transmit_notifications = |device: &crate::shell::console::KernelConsole| {
        device
            .queues()
            .iter()
            .find(|q| q.role == drivers::console::QueueRole::Transmit(port))
            .map_or(0, |q| q.counters.notifications)
    };
    let notified_before = transmit_notifications(&console.device);
    let mut chunk = alloc::vec![0u8; CONSOLE_CHUNK_BYTES];
    let started = crate::clock::uptime_ns();
    let mut written = 0usize;
    let mut chunks = 0u64;
    while written < per_run {
        let length = CONSOLE_CHUNK_BYTES.min(per_run - written);
        console_pattern(&mut chunk[..length], stream.position);
        // A fresh deadline per chunk: the waiter's timeout is absolute.
        let mut wait = crate::shell::console::waiter(location, CONSOLE_CHUNK_TIMEOUT_NS);
        console
            .device
            .write_all(port, &chunk[..length], &mut wait)
            .map_err(|error| alloc::format!("write at byte {}: {error}", stream.position))?;
        stream.advance(&chunk[..length]);
        written += length;
        chunks += 1;
    }
    // The run ends when the device has taken every byte, not when the
    // last one was queued.
    let mut wait = crate::shell::console::waiter(location, CONSOLE_CHUNK_TIMEOUT_NS);
    console
        .device
        .flush(port, &mut wait)
        .map_err(|error| alloc::format!("flush: {error}"))?;
    let elapsed_ns = (crate::clock::uptime_ns() - started).max(1);
    let notified = transmit_notifications(&console.device) - notified_before;
    println!(
        "bench: console.write stack=ours port={port} bytes={per_run} elapsed_us={} mb_per_s={} notifications_per_chunk={:.3} chunks={chunks} chunk_bytes={CONSOLE_CHUNK_BYTES}",
        elapsed_ns / 1000,
        MegabytesPerSecond::new(per_run, elapsed_ns),
        notified as f64 / chunks.max(1) as f64,
    );
    Ok(per_run)
}

/// MB/s (10^6 bytes per second) with three decimals, in integer arithmetic.
pub(crate) struct MegabytesPerSecond(u128);

impl MegabytesPerSecond {
    /// The rate of `bytes` in `elapsed_ns` (at least 1 ns).
    pub fn new(bytes: usize, elapsed_ns: u64) -> Self {
        // MB/s = bytes / elapsed_ns * 1e9 / 1e6, in integer thousandths.
        MegabytesPerSecond((bytes as u128 * 1_000_000) / u128::from(elapsed_ns.max(1)))
    }
}

impl core::fmt::Display for MegabytesPerSecond {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}
