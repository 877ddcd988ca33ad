//! # The interactive shell on the virtio console and the screen
//!
//! When the kernel is not in `mode=selftest` and a terminal came up, `main`
//! hands the CPU to [`run`] instead of idling. The shell runs on every
//! terminal at once ([`terminal`]): the console's port (the first console
//! port the device announced, port 0 without MULTIPORT) and the virtio-gpu
//! screen with a virtio-input keyboard (`crate::screen`). It edits lines as
//! a terminal user expects ([`line`]), and runs commands that show the
//! system: the devices and their queue counters, disks, the network card,
//! console ports, the log level. A command's output goes to the terminal
//! it was typed on.
//!
//! The commands are listed once, in the table [`COMMANDS`] (name, arguments,
//! one line of help, handler): `help` prints it and [`execute`] looks each
//! command up in it. Each handler's doc comment says more.
//!
//! The kernel log keeps going to the serial port from the first line on
//! (and to the screen once it is up); the console carries only the shell. A panic's report goes to the serial
//! port and, through VIRTIO_CONSOLE_F_EMERG_WRITE, to the console as well
//! ([`console::emergency_write`]), so the person at the shell sees it.
//!
//! The pattern `send` writes and the host checks is byte `i` =
//! `(i * 131 + seed + (i >> 8)) mod 256` ([`pattern_byte`]).
//!
//! ## Other subsystems
//!
//! `disks` and `blk read` use the block layer (`crate::block`); `net` and
//! `ping` the network driver and smoltcp (`crate::net`). The shell owns the
//! CPU loop while it runs, so it runs a network round
//! ([`crate::net::poll`]) whenever it idles.

mod blk_queues;
pub mod console;
pub mod cpus;
mod fs;
mod iommu;
pub mod line;
mod mem;
mod queues;
mod rng;
#[cfg(feature = "selftest")]
mod selftests;
mod sockets;
pub mod terminal;
mod words;

#[cfg(feature = "selftest")]
pub use selftests::selftests;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::{self, Write as _};

use drivers::console::QueueRole;
use drivers::features;
use drivers::transport::{DeviceType, Transport};

use crate::virtio::{self, DeviceState, FeatureList};

/// The prompt.
pub const PROMPT: &str = "kernel> ";

/// Value written to isa-debug-exit by `poweroff` (QEMU status 41).
pub const EXIT_POWEROFF: u32 = 0x14;

/// How long shell output may wait for room in the transmit queue.
const OUTPUT_TIMEOUT_NS: u64 = 5_000_000_000;
/// How long `read` waits for the first byte.
const READ_TIMEOUT_NS: u64 = 2_000_000_000;
/// How long `send`/`recv` wait without progress before giving up.
const STREAM_TIMEOUT_NS: u64 = 10_000_000_000;
/// How much `send` hands the driver at a time.
const SEND_CHUNK: usize = 64 * 1024;

/// Output of one command: text with `\n` turned into CR LF for the terminal.
#[derive(Default)]
pub struct Output {
    bytes: Vec<u8>,
}

impl Output {
    /// Raw bytes (already terminal-ready).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }
}

impl fmt::Write for Output {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if b == b'\n' {
                self.bytes.push(b'\r');
            }
            self.bytes.push(b);
        }
        Ok(())
    }
}

/// Runs the shell on every terminal there is (the virtio console, the
/// screen with a keyboard: [`terminal`]) for good. Returns only if there
/// is none (the caller then idles).
pub fn run() {
    terminal::run();
}

/// The console's location and shell port, once the device has announced one.
fn wait_for_console_port() -> Option<(drivers::transport::Location, u32)> {
    let deadline = crate::clock::uptime_ns().saturating_add(2_000_000_000);
    loop {
        let location = {
            let mut guard = console::lock();
            let c = guard.as_mut()?;
            let _ = c.device.poll();
            if let Some(port) = c.device.console_port() {
                return Some((c.location, port));
            }
            c.location
        };
        if crate::clock::uptime_ns() >= deadline {
            return None;
        }
        idle(location);
    }
}

/// Services the network, then sleeps until the console or a network card
/// interrupts, smoltcp's next timer, or [`IDLE_AT_MOST`]
/// (`crate::net::idle_with`, the same race-free round as the kernel's idle
/// loop: interrupts off, receive and console interrupts on, one more look
/// at the rings, `sti; hlt`, and the device interrupts off again, so that
/// input arriving while a command runs (a long `ping`, a stream) does not
/// interrupt a shell that is not waiting for it, §2.7.7). The console lock
/// is taken only to arm and disarm, not across the halt.
fn idle(_location: drivers::transport::Location) {
    crate::net::idle_with(
        IDLE_AT_MOST,
        || {
            console::lock()
                .as_mut()
                .is_some_and(|c| c.device.enable_interrupts())
        },
        || {
            if let Some(c) = console::lock().as_mut() {
                c.device.disable_interrupts();
            }
        },
    );
}

/// The longest the shell sleeps with nothing to do (the pace of the old
/// watchdog: a lost interrupt costs at most this much).
const IDLE_AT_MOST: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(10);

/// What a command gets: the whole line (for commands that take free text)
/// and its words after the command's name.
pub struct Call<'a> {
    /// The line as typed (trimmed).
    pub line: &'a str,
    /// The words after the command's name.
    pub args: &'a [&'a str],
}

type CommandResult = Result<(), String>;

/// One shell command: its name, its arguments as `help` shows them, one line
/// of help, and the function that runs it.
pub struct Command {
    /// What the user types first.
    pub name: &'static str,
    /// The arguments, in `help`'s notation (`<needed> [optional]`).
    pub args: &'static str,
    /// What `help` says it does.
    pub help: &'static str,
    /// Runs it; an `Err` is printed as `error: <message>`.
    pub run: fn(&Call<'_>, &mut Output) -> CommandResult,
}

/// Every shell command, in the order `help` lists them (a `static`, so each
/// entry has one address: [`command`] hands out references into it).
pub static COMMANDS: &[Command] = &[
    Command {
        name: "help",
        args: "",
        help: "this list",
        run: |_, out| help(out),
    },
    Command {
        name: "devices",
        args: "",
        help: "virtio devices: location, transport, ring, features, queue counters",
        run: |_, out| devices(out),
    },
    Command {
        name: "queues",
        args: "",
        help: "every queue: size, indices, in flight, notifications, interrupts",
        run: |_, out| queues::queues(out),
    },
    Command {
        name: "cpus",
        args: "",
        help: "every CPU: APIC ID, state, interrupts, work items run, its queues",
        run: |_, out| cpus::cpus(out),
    },
    Command {
        name: "ring",
        args: "<device> <queue>",
        help: "draw one ring (e.g. `ring blk 0`, `ring net transmitq`)",
        run: |call, out| queues::ring(call.args, out),
    },
    Command {
        name: "disks",
        args: "",
        help: "block devices",
        run: |_, out| disks(out),
    },
    Command {
        name: "iommu",
        args: "[address]",
        help: "DMA isolation: mode, mappings, faults; or one device address's mapping",
        run: iommu::run,
    },
    Command {
        name: "blk",
        args: "read <disk> <lba> [n]",
        help: "hex dump of n sectors (default 1)",
        run: |call, out| blk(call.args, out),
    },
    Command {
        name: "net",
        args: "",
        help: "network card: address, MAC, link",
        run: |_, out| net(out),
    },
    Command {
        name: "sockets",
        args: "",
        help: "echo and HTTP servers: connections in use, refused, timed out",
        run: |_, out| sockets::sockets(out),
    },
    Command {
        name: "ping",
        args: "<ip>",
        help: "ICMP echo",
        run: |call, out| ping(call.args, out),
    },
    Command {
        name: "ports",
        args: "",
        help: "console ports and their state",
        run: |_, out| ports(out),
    },
    Command {
        name: "write",
        args: "<port|/file> <text>",
        help: "send a line on a port (name or number), or make it a file's contents",
        run: |call, out| fs::write(call, out),
    },
    Command {
        name: "read",
        args: "<port>",
        help: "show what arrived on a port",
        run: |call, out| read_port(call.args, out),
    },
    Command {
        name: "send",
        args: "<port> <n> [seed]",
        help: "send n pattern bytes on a port",
        run: |call, out| send(call.args, out),
    },
    Command {
        name: "recv",
        args: "<port> <n>",
        help: "receive n bytes, print their FNV-1a 64 hash",
        run: |call, out| recv(call.args, out),
    },
    Command {
        name: "log",
        args: "<level>",
        help: "off|error|warn|info|debug|trace",
        run: |call, out| set_log(call.args, out),
    },
    Command {
        name: "ls",
        args: "[/mount/dir]",
        help: "the mounted host folders (virtio-9p), or a directory in one",
        run: |call, out| fs::ls(call.args, out),
    },
    Command {
        name: "cat",
        args: "<file>",
        help: "print a file (the first 64 KiB)",
        run: |call, out| fs::cat(call.args, out),
    },
    Command {
        name: "sha256",
        args: "<file>",
        help: "SHA-256 of a file of any size, read in msize pieces",
        run: |call, out| fs::sha256(call.args, out),
    },
    Command {
        name: "cp",
        args: "<file> <disk>:<lba>",
        help: "copy a file onto a scratch disk from sector lba",
        run: |call, out| fs::cp(call.args, out),
    },
    Command {
        name: "blkq",
        args: "",
        help: "each disk's request queues: CPU, requests, completions, interrupts",
        run: |_, out| blk_queues::blk_queues(out),
    },
    Command {
        name: "mem",
        args: "",
        help: "free and total memory, the balloon's size and target",
        run: |_, out| mem::mem(out),
    },
    Command {
        name: "rng",
        args: "<n>",
        help: "n random bytes (hex) from the entropy source",
        run: |call, out| rng::rng(call.args, out),
    },
    Command {
        name: "uptime",
        args: "",
        help: "time since boot",
        run: |_, out| uptime(out),
    },
    Command {
        name: "poweroff",
        args: "",
        help: "leave QEMU",
        run: |_, out| poweroff(out),
    },
    Command {
        name: "panic",
        args: "<text>",
        help: "a deliberate panic (shows the panic path)",
        run: |call, _| deliberate_panic(call.line),
    },
];

/// The command called `name`, if there is one.
pub fn command(name: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// Runs one command line.
pub fn execute(line: &str, out: &mut Output) {
    let words = match words::split(line) {
        Ok(words) => words,
        Err(message) => {
            let _ = writeln!(out, "error: {message}");
            return;
        }
    };
    let Some((name, args)) = words.split_first() else {
        return;
    };
    let name = name.as_str();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match command(name) {
        Some(command) => (command.run)(&Call { line, args: &args }, out),
        None => Err(format!("unknown command `{name}`; try `help`")),
    };
    if let Err(message) = result {
        let _ = writeln!(out, "error: {message}");
    }
}

/// Width of the usage column in `help` (the longest usage fits).
const USAGE_WIDTH: usize = 25;

/// `help`: every command of [`COMMANDS`] with its arguments and help line.
fn help(out: &mut Output) -> CommandResult {
    let _ = writeln!(out, "commands:");
    for command in COMMANDS {
        let usage = if command.args.is_empty() {
            String::from(command.name)
        } else {
            format!("{} {}", command.name, command.args)
        };
        let _ = writeln!(out, "  {usage:<USAGE_WIDTH$} {}", command.help);
    }
    let _ = writeln!(
        out,
        "editing: Backspace, Ctrl-U (erase line), Ctrl-C (abandon line)"
    );
    Ok(())
}

fn counters_line(
    out: &mut Output,
    index: u16,
    role: &str,
    size: u16,
    c: &drivers::queue::QueueCounters,
) {
    let _ = writeln!(
        out,
        "    queue {index:>2} {role:<11} size {size:>4}: added {}, notifications {} (suppressed {}), completions {}, device errors {}",
        c.added, c.notifications, c.notifications_suppressed, c.completions, c.device_errors
    );
}

fn ring_name(features: u64) -> &'static str {
    if features & features::RING_PACKED != 0 {
        "packed"
    } else {
        "split"
    }
}

/// One registry entry, noted while the registry is locked and printed after
/// (a driver's own lock is never taken while the registry's is held).
enum DeviceRow {
    Text(String),
    Claimed {
        device_type: DeviceType,
        location: drivers::transport::Location,
        driver: &'static str,
        irq: &'static str,
        kind: Option<drivers::transport::TransportKind>,
    },
}

/// `devices`: every virtio device: location, transport, ring, negotiated
/// features, irq mode, the driver that took it and per-queue counters.
fn devices(out: &mut Output) -> CommandResult {
    let mut rows = Vec::new();
    {
        let registry = virtio::devices();
        for device in registry.iter() {
            let name = virtio::type_name(device.device_type);
            let irq = virtio::irq::of(device.location).map_or("none", |i| i.mode_name());
            let mut text = Output::default();
            match &device.state {
                DeviceState::Up { driver } => {
                    rows.push(DeviceRow::Claimed {
                        device_type: device.device_type,
                        location: device.location,
                        driver,
                        irq,
                        kind: device.transport_kind,
                    });
                    continue;
                }
                DeviceState::Failed { error } => {
                    let _ = writeln!(text, "{name} at {}: FAILED: {error}", device.location);
                }
                other => {
                    let _ = writeln!(
                        text,
                        "{name} at {}: transport={}: {}",
                        device.location,
                        device.transport_kind.map_or("?", |k| k.name()),
                        match other {
                            DeviceState::Unsupported { why, .. } => why,
                            DeviceState::Taken { by } => by,
                            _ => other.name(),
                        }
                    );
                }
            }
            rows.push(DeviceRow::Text(
                String::from_utf8_lossy(&text.bytes).into_owned(),
            ));
        }
    }
    if rows.is_empty() {
        let _ = writeln!(out, "no virtio devices");
    }
    for row in rows {
        match row {
            DeviceRow::Text(text) => out.raw(text.as_bytes()),
            DeviceRow::Claimed {
                device_type,
                location,
                driver,
                irq,
                kind,
            } => {
                let shown = match device_type {
                    DeviceType::Console => console_details(out, location, irq),
                    DeviceType::Block => blk_details(out, location, irq),
                    DeviceType::Net => net_details(out, location, irq),
                    _ => false,
                };
                if !shown {
                    let _ = writeln!(
                        out,
                        "{} at {location}: transport={} irq={irq}\n  driver: {driver}",
                        virtio::type_name(device_type),
                        kind.map_or("?", |k| k.name())
                    );
                }
            }
        }
    }
    Ok(())
}

/// The console driver's view of the console at `location`.
fn console_details(out: &mut Output, location: drivers::transport::Location, irq: &str) -> bool {
    let guard = console::lock();
    let Some(c) = guard.as_ref().filter(|c| c.location == location) else {
        return false;
    };
    let d = &c.device;
    let _ = writeln!(
        out,
        "console at {location}: transport={} ring={} irq={irq} features={}\n  driver: console ({}, {} port(s) up)",
        d.transport().kind(),
        ring_name(d.features()),
        FeatureList {
            device_type: DeviceType::Console,
            bits: d.features()
        },
        d.config(),
        d.ports().count()
    );
    // Queues of ports that exist now, the control queues, and a count of
    // the rest (set up for ports the device may add later).
    let mut idle = 0;
    for q in d.queues() {
        let role = match q.role {
            QueueRole::Receive(p) | QueueRole::Transmit(p) if d.port(p).is_none() => {
                idle += 1;
                continue;
            }
            QueueRole::Receive(p) => format!("port{p}-rx"),
            QueueRole::Transmit(p) => format!("port{p}-tx"),
            QueueRole::ControlReceive => "control-rx".to_string(),
            QueueRole::ControlTransmit => "control-tx".to_string(),
        };
        counters_line(out, q.index, &role, q.size, &q.counters);
    }
    if idle > 0 {
        let _ = writeln!(
            out,
            "    ({idle} more queues, set up for ports the device has not added)"
        );
    }
    let s = d.stats();
    let _ = writeln!(
        out,
        "    control messages: {} received, {} sent, {} refused; used-ring entries refused: {}",
        s.control_received, s.control_sent, s.control_errors, s.queue_errors
    );
    true
}

/// The block driver's view of the disk at `location`.
fn blk_details(out: &mut Output, location: drivers::transport::Location, irq: &str) -> bool {
    crate::block::with_disks(|disks| {
        let Some(disk) = disks.iter_mut().find(|d| d.location() == location) else {
            return false;
        };
        let name = disk.name().to_string();
        let device = disk.device();
        let features = device.features();
        let _ = writeln!(
            out,
            "blk at {location}: transport={} ring={} irq={irq} features={}\n  driver: blk ({name})",
            device.transport().kind(),
            ring_name(features),
            FeatureList {
                device_type: DeviceType::Block,
                bits: features
            }
        );
        for q in 0..device.queue_count() as u16 {
            if let (Some(stats), Some(size)) = (device.queue_stats(q), device.queue_size(q)) {
                counters_line(out, q, "requests", size, &stats.ring);
            }
        }
        true
    })
}

/// The network driver's view of the card at `location`.
fn net_details(out: &mut Output, location: drivers::transport::Location, irq: &str) -> bool {
    let mut nics = crate::net::nic::nics();
    let Some(nic) = nics.iter_mut().find(|n| n.location == location) else {
        return false;
    };
    let features = nic.device.features();
    let _ = writeln!(
        out,
        "net at {location}: transport={} ring={} irq={irq} features={}\n  driver: virtio-net ({})",
        nic.device.transport().kind(),
        ring_name(features),
        FeatureList {
            device_type: DeviceType::Net,
            bits: features
        },
        nic.name
    );
    let pairs = nic.device.queue_pairs();
    for pair in 0..pairs {
        let Some((rx, tx)) = nic.device.pair(pair) else {
            continue;
        };
        let (rx_size, rx_counters, rx_packets) =
            (rx.size(), rx.ring_counters(), rx.stats().packets);
        let (tx_size, tx_counters, tx_packets) =
            (tx.size(), tx.ring_counters(), tx.stats().packets);
        let (rx_name, tx_name) = if pairs > 1 {
            (
                format!("receiveq{}", pair + 1),
                format!("transmitq{}", pair + 1),
            )
        } else {
            ("receiveq".to_string(), "transmitq".to_string())
        };
        counters_line(out, 2 * pair, &rx_name, rx_size, &rx_counters);
        counters_line(out, 2 * pair + 1, &tx_name, tx_size, &tx_counters);
        if pairs > 1 {
            let _ = writeln!(
                out,
                "    pair {pair}: {rx_packets} packets received, {tx_packets} sent"
            );
        }
    }
    if let Some(ctrl) = nic.device.ctrl() {
        let index = nic.device.queue_indices().last().unwrap_or(2);
        counters_line(out, index, "controlq", ctrl.size(), &ctrl.ring_counters());
    }
    true
}

/// Lists the devices of `device_type` the registry knows, for the placeholders.
fn registry_devices(device_type: DeviceType, out: &mut Output) -> usize {
    let registry = virtio::devices();
    let mut count = 0;
    for device in registry.iter().filter(|d| d.device_type == device_type) {
        count += 1;
        let state = device.state.name();
        let _ = writeln!(
            out,
            "  {} at {} ({}): {state}",
            virtio::type_name(device.device_type),
            device.location,
            device.transport_kind.map_or("?", |k| k.name())
        );
    }
    count
}

/// `disks`: each disk's name, location, transport, serial and size (or the
/// block devices the probe found, if no disk came up).
fn disks(out: &mut Output) -> CommandResult {
    let disks = crate::block::disks();
    if disks.is_empty() {
        let _ = writeln!(out, "no disks; block devices the probe found:");
        if registry_devices(DeviceType::Block, out) == 0 {
            let _ = writeln!(out, "  none");
        }
        return Ok(());
    }
    for disk in &disks {
        let _ = writeln!(
            out,
            "{} at {} ({}): serial {:?}, {} sectors ({} KiB), block size {}, {}{}",
            disk.name,
            disk.location,
            disk.transport,
            disk.serial,
            disk.capacity_sectors,
            disk.capacity_bytes() / 1024,
            disk.block_size,
            if disk.read_only {
                "read-only"
            } else {
                "read-write"
            },
            if disk.writable {
                ", the kernel may write it"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// The most sectors `blk read` dumps at once.
const MAX_DUMP_SECTORS: u64 = 16;

/// `blk read <disk> <lba> [n]`: a hex dump of `n` (1-16) sectors.
fn blk(args: &[&str], out: &mut Output) -> CommandResult {
    let (disk, lba, count) = match args {
        ["read", disk, lba] => (*disk, *lba, "1"),
        ["read", disk, lba, count] => (*disk, *lba, *count),
        _ => return Err("usage: blk read <disk> <lba> [count]".into()),
    };
    let lba = lba
        .parse::<u64>()
        .map_err(|_| format!("`{lba}` is not a sector number"))?;
    let count = count
        .parse::<u64>()
        .ok()
        .filter(|c| (1..=MAX_DUMP_SECTORS).contains(c))
        .ok_or_else(|| format!("count must be 1..={MAX_DUMP_SECTORS}"))?;
    let mut buffer = vec![0u8; count as usize * 512];
    crate::block::read(disk, lba, &mut buffer).map_err(|e| e.to_string())?;
    for (i, line) in buffer.chunks(16).enumerate() {
        let offset = lba * 512 + (i * 16) as u64;
        let _ = write!(out, "{offset:08x} ");
        for (j, byte) in line.iter().enumerate() {
            let _ = write!(out, "{}{byte:02x}", if j == 8 { "  " } else { " " });
        }
        let _ = write!(out, "  |");
        for &byte in line {
            let c = if (0x20..0x7f).contains(&byte) {
                char::from(byte)
            } else {
                '.'
            };
            let _ = write!(out, "{c}");
        }
        let _ = writeln!(out, "|");
    }
    Ok(())
}

/// `net`: each card's location, MAC, MTU, link and DHCP address.
fn net(out: &mut Output) -> CommandResult {
    let nics = crate::net::nic::nics();
    if nics.is_empty() {
        let _ = writeln!(out, "network devices found:");
        drop(nics);
        if registry_devices(DeviceType::Net, out) == 0 {
            let _ = writeln!(out, "  none");
        }
        return Err("no network card is driven by the network driver".into());
    }
    for nic in nics.iter() {
        let lease = nic.stack.as_ref().and_then(|s| s.lease.as_ref());
        let _ = writeln!(
            out,
            "{}: {} mac {} mtu {} link {}",
            nic.name,
            nic.location,
            nic.device.mac(),
            nic.device.mtu(),
            if nic.device.link_up() { "up" } else { "down" }
        );
        match lease {
            Some(lease) => {
                let _ = write!(out, "  address {}", lease.address);
                if let Some(gateway) = lease.gateway {
                    let _ = write!(out, " gateway {gateway}");
                }
                let _ = writeln!(out);
            }
            None => {
                let _ = writeln!(out, "  address none (no DHCP lease yet)");
            }
        }
    }
    Ok(())
}

/// `ping <ip>`: three ICMP echo requests from the first card with an
/// interface, one second each for the reply.
fn ping(args: &[&str], out: &mut Output) -> CommandResult {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::socket::icmp;
    use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress, Ipv4Address};

    let [target] = args else {
        return Err("usage: ping <ip>".into());
    };
    let target: Ipv4Address = target
        .parse()
        .map_err(|_| format!("`{target}` is not an IPv4 address"))?;
    let ident = 0x5e11;
    let payload: Vec<u8> = (0..32u8).map(|i| i ^ 0xa5).collect();
    let caps = ChecksumCapabilities::default();
    // The ICMP socket goes on the first card with an interface.
    let (index, handle) = {
        let mut nics = crate::net::nic::nics();
        let Some((index, stack)) = nics
            .iter_mut()
            .enumerate()
            .find_map(|(i, n)| n.stack.as_mut().map(|s| (i, s)))
        else {
            return Err("no network card with an interface (no network driver?)".into());
        };
        if stack.lease.is_none() {
            return Err("no address yet (DHCP has not answered)".into());
        }
        let socket = icmp::Socket::new(
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 512]),
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 512]),
        );
        let handle = stack.sockets.add(socket);
        stack
            .sockets
            .get_mut::<icmp::Socket>(handle)
            .bind(icmp::Endpoint::Ident(ident))
            .map_err(|e| format!("bind: {e:?}"))?;
        (index, handle)
    };
    let with_socket = |f: &mut dyn FnMut(&mut icmp::Socket<'static>) -> CommandResult| {
        let mut nics = crate::net::nic::nics();
        let stack = nics
            .get_mut(index)
            .and_then(|n| n.stack.as_mut())
            .ok_or("the card lost its interface")?;
        f(stack.sockets.get_mut::<icmp::Socket>(handle))
    };
    let mut replies = 0;
    for seq_no in 1..=3u16 {
        let sent_ns = crate::clock::uptime_ns();
        with_socket(&mut |socket| {
            let repr = Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data: &payload,
            };
            let buffer = socket
                .send(repr.buffer_len(), IpAddress::Ipv4(target))
                .map_err(|e| format!("send: {e:?}"))?;
            repr.emit(&mut Icmpv4Packet::new_unchecked(buffer), &caps);
            Ok(())
        })?;
        let deadline = sent_ns.saturating_add(1_000_000_000);
        let mut answered = false;
        while !answered && crate::clock::uptime_ns() < deadline {
            // Sleeps until the reply's interrupt (or 1 ms), then polls.
            crate::net::poll_and_wait(smoltcp::time::Duration::from_millis(1));
            with_socket(&mut |socket| {
                while socket.can_recv() {
                    let (bytes, from) = socket.recv().map_err(|e| format!("recv: {e:?}"))?;
                    let Ok(packet) = Icmpv4Packet::new_checked(bytes) else {
                        continue;
                    };
                    if let Ok(Icmpv4Repr::EchoReply {
                        ident: i,
                        seq_no: s,
                        data,
                    }) = Icmpv4Repr::parse(&packet, &caps)
                    {
                        if i == ident
                            && s == seq_no
                            && from == IpAddress::Ipv4(target)
                            && data == payload.as_slice()
                        {
                            answered = true;
                        }
                    }
                }
                Ok(())
            })?;
        }
        if answered {
            replies += 1;
            let us = crate::clock::uptime_ns().saturating_sub(sent_ns) / 1000;
            let _ = writeln!(out, "reply from {target}: seq {seq_no} time {us} us");
        } else {
            let _ = writeln!(out, "no reply from {target}: seq {seq_no}");
        }
    }
    if let Some(stack) = crate::net::nic::nics()
        .get_mut(index)
        .and_then(|n| n.stack.as_mut())
    {
        stack.sockets.remove(handle);
    }
    let _ = writeln!(out, "{target}: 3 sent, {replies} received");
    Ok(())
}

/// `ports`: console ports: id, name, console or not, host/guest open,
/// bytes received and sent, bytes waiting to be read.
fn ports(out: &mut Output) -> CommandResult {
    let guard = console::lock();
    let Some(c) = guard.as_ref() else {
        return Err("no console".into());
    };
    let _ = writeln!(
        out,
        "{:>4}  {:<24} {:<7} {:<6} {:<6} {:>10} {:>10} {:>7}",
        "port", "name", "console", "host", "guest", "received", "sent", "unread"
    );
    for p in c.device.ports() {
        let open = |b: bool| if b { "open" } else { "closed" };
        let _ = writeln!(
            out,
            "{:>4}  {:<24} {:<7} {:<6} {:<6} {:>10} {:>10} {:>7}",
            p.id,
            p.name.unwrap_or("-"),
            if p.console { "yes" } else { "no" },
            open(p.host_open),
            open(p.guest_open),
            p.stats.bytes_received,
            p.stats.bytes_sent,
            p.readable
        );
    }
    Ok(())
}

/// A port by name or number.
fn resolve_port(spec: &str) -> Result<u32, String> {
    let guard = console::lock();
    let c = guard.as_ref().ok_or("no console")?;
    if let Some(id) = c.device.port_by_name(spec) {
        return Ok(id);
    }
    match spec.parse::<u32>() {
        Ok(id) if c.device.port(id).is_some() => Ok(id),
        _ => Err(format!("no port `{spec}` (see `ports`)")),
    }
}

fn console_error(error: impl core::fmt::Display) -> String {
    error.to_string()
}

/// `write <port> <text>`: sends the text (spaces kept) and a newline on a
/// port given by name or number.
fn write_port(line: &str, args: &[&str], out: &mut Output) -> CommandResult {
    let [spec, ..] = args else {
        return Err("usage: write <port> <text>".into());
    };
    let port = resolve_port(spec)?;
    // The text is everything after the port word, spaces kept.
    let rest = line
        .trim_start()
        .strip_prefix("write")
        .map(str::trim_start)
        .and_then(|r| r.strip_prefix(spec))
        .map(|r| r.strip_prefix(' ').unwrap_or(r))
        .unwrap_or("");
    let mut bytes = Vec::with_capacity(rest.len() + 1);
    bytes.extend_from_slice(rest.as_bytes());
    bytes.push(b'\n');
    console::write_all(port, &bytes, OUTPUT_TIMEOUT_NS).map_err(console_error)?;
    let _ = writeln!(out, "wrote {} bytes to port {port}", bytes.len());
    Ok(())
}

/// Polls the console and reads what is there on `port` into `buf`.
fn read_some(port: u32, buf: &mut [u8]) -> Result<usize, String> {
    let mut guard = console::lock();
    let c = guard.as_mut().ok_or("no console")?;
    c.device.poll().map_err(console_error)?;
    c.device.read(port, buf).map_err(console_error)
}

fn location() -> Result<drivers::transport::Location, String> {
    console::lock()
        .as_ref()
        .map(|c| c.location)
        .ok_or_else(|| "no console".into())
}

/// `read <port>`: shows what arrived on a port; waits up to 2 s for the
/// first byte, then stops when the line goes quiet.
fn read_port(args: &[&str], out: &mut Output) -> CommandResult {
    let [spec] = args else {
        return Err("usage: read <port>".into());
    };
    let port = resolve_port(spec)?;
    let location = location()?;
    let deadline = crate::clock::uptime_ns().saturating_add(READ_TIMEOUT_NS);
    let mut data = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = read_some(port, &mut buf)?;
        data.extend_from_slice(&buf[..n]);
        if n == 0 {
            // Stop once something arrived and the line went quiet, or at the deadline.
            if !data.is_empty() || crate::clock::uptime_ns() >= deadline {
                break;
            }
            idle(location);
        }
    }
    if data.is_empty() {
        let _ = writeln!(out, "(nothing received on port {port})");
    } else {
        let _ = writeln!(out, "{} bytes from port {port}:", data.len());
        out.raw(&console::escaped(&data));
        if !data.ends_with(b"\n") {
            let _ = writeln!(out);
        }
    }
    Ok(())
}

/// Byte `i` of the pattern `send` writes (the host computes the same).
pub fn pattern_byte(i: usize, seed: u8) -> u8 {
    (i.wrapping_mul(131)
        .wrapping_add(usize::from(seed))
        .wrapping_add(i >> 8)) as u8
}

/// FNV-1a, 64 bits.
pub struct Fnv1a(u64);

impl Fnv1a {
    /// The offset basis.
    pub const fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    /// Hashes `bytes` in.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// The hash so far.
    pub fn value(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a {
    fn default() -> Self {
        Self::new()
    }
}

fn parse_count(text: &str) -> Result<usize, String> {
    let (digits, scale) = match text.as_bytes().last() {
        Some(b'k' | b'K') => (&text[..text.len() - 1], 1024),
        Some(b'm' | b'M') => (&text[..text.len() - 1], 1024 * 1024),
        _ => (text, 1),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|&n| n <= 1 << 30)
        .ok_or_else(|| format!("`{text}` is not a byte count (up to 1G; k and M suffixes)"))
}

/// `send <port> <n> [seed]`: sends `n` bytes of [`pattern_byte`] (k and M
/// suffixes), for throughput and integrity tests; prints time and hash.
fn send(args: &[&str], out: &mut Output) -> CommandResult {
    let (spec, count, seed) = match args {
        [spec, count] => (spec, count, "0"),
        [spec, count, seed] => (spec, count, *seed),
        _ => return Err("usage: send <port> <count> [seed]".into()),
    };
    let port = resolve_port(spec)?;
    let count = parse_count(count)?;
    let seed = seed.parse::<u8>().map_err(|_| "seed must be 0-255")?;
    let started = crate::clock::uptime_ns();
    let mut chunk = Vec::with_capacity(SEND_CHUNK);
    let mut sent = 0;
    let mut hash = Fnv1a::new();
    while sent < count {
        let n = SEND_CHUNK.min(count - sent);
        chunk.clear();
        chunk.extend((sent..sent + n).map(|i| pattern_byte(i, seed)));
        hash.update(&chunk);
        console::write_all(port, &chunk, STREAM_TIMEOUT_NS)
            .map_err(|e| format!("after {sent} bytes: {e}"))?;
        sent += n;
    }
    let ns = crate::clock::uptime_ns().saturating_sub(started).max(1);
    let _ = writeln!(
        out,
        "sent {sent} bytes to port {port} in {} us ({} KiB/s), fnv1a64={:#018x}",
        ns / 1000,
        (sent as u64).saturating_mul(1_000_000_000) / ns / 1024,
        hash.value()
    );
    Ok(())
}

/// `recv <port> <n>`: reads `n` bytes and prints their FNV-1a 64 hash.
fn recv(args: &[&str], out: &mut Output) -> CommandResult {
    let [spec, count] = args else {
        return Err("usage: recv <port> <count>".into());
    };
    let port = resolve_port(spec)?;
    let count = parse_count(count)?;
    let location = location()?;
    let started = crate::clock::uptime_ns();
    let mut deadline = started.saturating_add(STREAM_TIMEOUT_NS);
    let mut buf = vec![0u8; 16 * 1024];
    let mut got = 0;
    let mut hash = Fnv1a::new();
    while got < count {
        let want = buf.len().min(count - got);
        let n = read_some(port, &mut buf[..want])?;
        if n > 0 {
            hash.update(&buf[..n]);
            got += n;
            deadline = crate::clock::uptime_ns().saturating_add(STREAM_TIMEOUT_NS);
            continue;
        }
        if crate::clock::uptime_ns() >= deadline {
            return Err(format!(
                "only {got} of {count} bytes arrived on port {port}"
            ));
        }
        idle(location);
    }
    let ns = crate::clock::uptime_ns().saturating_sub(started).max(1);
    let _ = writeln!(
        out,
        "received {got} bytes from port {port} in {} us, fnv1a64={:#018x}",
        ns / 1000,
        hash.value()
    );
    Ok(())
}

/// `log <level>`: sets the log level (`off`, `error` ... `trace`).
fn set_log(args: &[&str], out: &mut Output) -> CommandResult {
    let [level] = args else {
        return Err("usage: log <off|error|warn|info|debug|trace>".into());
    };
    let filter =
        crate::logger::parse_level(level).ok_or_else(|| format!("unknown level `{level}`"))?;
    log::set_max_level(filter);
    let _ = writeln!(out, "log level is now {filter}");
    Ok(())
}

/// `uptime`: time since boot, from the TSC.
fn uptime(out: &mut Output) -> CommandResult {
    let ns = crate::clock::uptime_ns();
    let _ = writeln!(
        out,
        "up {}.{:06} s",
        ns / 1_000_000_000,
        (ns % 1_000_000_000) / 1000
    );
    Ok(())
}

/// `poweroff`: leaves QEMU through isa-debug-exit ([`EXIT_POWEROFF`], QEMU
/// status 41), after the output has reached the host.
fn poweroff(out: &mut Output) -> CommandResult {
    let _ = writeln!(out, "powering off");
    // (Not `if let` on the lock: its guard would live through the block.)
    let port = console::lock()
        .as_ref()
        .and_then(|c| c.device.console_port());
    if let Some(port) = port {
        let bytes = core::mem::take(&mut out.bytes);
        let _ = console::write_all(port, &bytes, OUTPUT_TIMEOUT_NS);
        if let Some(c) = console::lock().as_mut() {
            let _ = c
                .device
                .flush(port, &mut console::waiter(c.location, OUTPUT_TIMEOUT_NS));
        }
    }
    crate::println!("shell: poweroff");
    crate::exit::qemu_exit(EXIT_POWEROFF)
}

/// `panic <text>`: a deliberate panic, to show the panic path (serial and,
/// through EMERG_WRITE, the console).
fn deliberate_panic(line: &str) -> CommandResult {
    let text = line.trim_start().strip_prefix("panic").unwrap_or("").trim();
    // Deliberate, like `fail=panic`: the user asked to see the panic path.
    panic!("shell: deliberate panic: {text}");
}
