//! # Self-tests of the interrupt path (`mode=selftest`)
//!
//! They run on the devices the self-tests brought up themselves
//! (`super::super::test_bringup`: generic queues, routed by [`super::route`]
//! like any driver's), so they test the queue and interrupt code without
//! any device driver:
//!
//! - every device up (the tests' own and those a driver brought up at boot)
//!   has an interrupt slot whose mode matches its polled flag, and with
//!   `expect.irq=` the modes are exactly those;
//! - MSI-X: every entry in use holds this CPU's message for its allocated
//!   vector, unmasked, and the function is enabled and unmasked;
//! - a request on each interrupt-driven device (blk: read sector 0; net: a
//!   frame; console: a line) completes by its queue's interrupt, and the
//!   waiting CPU halts until it arrives;
//! - self-IPIs on every device vector are counted as strays, not fatal;
//! - polled devices complete requests without interrupts or halts;
//! - the per-queue counters (logged) agree with what the tests did.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use drivers::device::Wait;
use drivers::irq::{QueueSet, WaitMode};
use drivers::pci::msix::MsixCapability;
use drivers::queue::{Ring, Segment};
use drivers::transport::{DeviceType, Location, Transport};
use hal::{DmaRegion, PAGE_SIZE};

use super::super::test_bringup::{lent, LiveDevice};
use super::super::{devices, type_name, DeviceState};
use super::{of, polling_requested, DeviceIrq, IrqMode, MsixVector, SlotInfo, SLOTS, STATES};
use crate::hal_impl::KernelHal;
use crate::interrupts;
use crate::selftest_api::SelfTest;
use crate::wait::{halt_count, watchdog_count, DEFAULT_TIMEOUT_NS};

/// How long a self-test lets a requested interrupt take to arrive after its
/// completion is already visible in the used ring.
const INTERRUPT_GRACE_NS: u64 = 100_000_000;

/// The interrupt self-tests for what was found.
pub fn selftests() -> Vec<SelfTest> {
    // Round trips need the device's queues: only devices the self-tests
    // brought up themselves have queues here (a driver that brought its
    // device up at boot, the network stack's, owns its queues).
    let unclaimed: Vec<Location> = lent()
        .iter()
        .filter(|d| d.is_live())
        .map(|d| d.location)
        .collect();
    let (any_interrupt, any_polled, any_msix, any_line) = {
        let slots = SLOTS.lock();
        let testable =
            |s: &&SlotInfo| round_trip_kind(s).is_some() && unclaimed.contains(&s.location);
        (
            slots
                .iter()
                .filter(testable)
                .any(|s| !matches!(s.mode, IrqMode::Polled(_))),
            slots
                .iter()
                .filter(testable)
                .any(|s| matches!(s.mode, IrqMode::Polled(_))),
            slots.iter().any(|s| matches!(s.mode, IrqMode::Msix { .. })),
            slots.iter().any(|s| matches!(s.mode, IrqMode::Line { .. })),
        )
    };
    let mut tests = vec![SelfTest {
        name: "virtio-irq: every live device has an interrupt route or a logged polling reason",
        run: test_every_device_accounted,
    }];
    if any_msix {
        tests.push(SelfTest {
            name: "virtio-irq: MSI-X entries hold this CPU's messages, unmasked, function unmasked",
            run: test_msix_readback,
        });
    }
    if any_interrupt {
        tests.push(SelfTest {
            name:
                "virtio-irq: a request on each interrupt-driven device completes by its interrupt",
            run: test_interrupt_round_trips,
        });
        tests.push(SelfTest {
            name: "virtio-irq: the waiting CPU halts until the completion interrupt",
            run: test_waits_halt,
        });
    }
    if any_line || any_msix {
        tests.push(SelfTest {
            name: "virtio-irq: stray interrupts on device vectors are counted, not fatal",
            run: test_stray_interrupts,
        });
    }
    if any_polled {
        tests.push(SelfTest {
            name: "virtio-irq: polled devices complete requests without interrupts",
            run: test_polled_round_trips,
        });
    }
    tests.push(SelfTest {
        name: "virtio-irq: per-queue counters (logged)",
        run: test_log_counters,
    });
    tests
}

fn test_every_device_accounted() -> Result<(), String> {
    // Every device up: the self-tests' own and those a driver brought up.
    let mut live: Vec<Location> = lent()
        .iter()
        .filter(|d| d.is_live())
        .map(|d| d.location)
        .collect();
    live.extend(
        devices()
            .iter()
            .filter(|d| matches!(d.state, DeviceState::Up { .. }))
            .map(|d| d.location),
    );
    let slots = SLOTS.lock();
    let mut problems = Vec::new();
    for location in &live {
        let Some(slot) = slots.iter().position(|s| s.location == *location) else {
            problems.push(format!("{location}: no interrupt slot"));
            continue;
        };
        let mode = &slots[slot].mode;
        let polled = STATES[slot].is_polled();
        if polled != matches!(mode, IrqMode::Polled(_)) {
            problems.push(format!("{location}: mode {mode} but polled={polled}"));
        }
        if polling_requested() && !polled {
            problems.push(format!("{location}: virtio.poll=1 but {mode}"));
        }
    }
    if let Some(expected) = crate::cmdline::get("expect.irq") {
        // `expect.irq=msix,intx,...`: the modes, sorted, must be exactly these.
        let mut want: Vec<&str> = expected.split(',').collect();
        want.sort_unstable();
        let mut got: Vec<&str> = slots.iter().map(|s| s.mode.name()).collect();
        got.sort_unstable();
        if got != want {
            problems.push(format!("modes {got:?}, expect.irq= says {want:?}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn test_msix_readback() -> Result<(), String> {
    let slots = SLOTS.lock();
    let bus = super::super::pci::bus();
    let bus = bus.as_ref().ok_or("MSI-X devices but no PCI bus")?;
    let mut checked = 0;
    for s in slots.iter() {
        let IrqMode::Msix { table, entries, .. } = &s.mode else {
            continue;
        };
        let Location::Pci(address) = s.location else {
            continue;
        };
        let function = bus
            .functions
            .iter()
            .find(|f| f.address == address)
            .ok_or_else(|| format!("{address}: function not found"))?;
        let cap = MsixCapability::find(&bus.config, function)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{address}: MSI-X capability gone"))?;
        let control = cap.control(&bus.config).map_err(|e| e.to_string())?;
        if control & drivers::pci::msix::CONTROL_ENABLE == 0
            || control & drivers::pci::msix::CONTROL_FUNCTION_MASK != 0
        {
            return Err(format!(
                "{address}: message control {control:#06x}: want enabled, not function-masked"
            ));
        }
        for MsixVector { entry, vector, .. } in entries {
            let (address_want, data_want) =
                interrupts::msi_message(*vector).map_err(|e| e.to_string())?;
            let got = table.entry(entry.entry).map_err(|e| e.to_string())?;
            if got.address != address_want || got.data != data_want || got.masked {
                return Err(format!(
                    "{address}: entry {}: {got:x?}, want address {address_want:#x} data {data_want:#x} unmasked",
                    entry.entry
                ));
            }
            if !interrupts::is_vector_allocated(*vector) {
                return Err(format!("{address}: vector {vector:#04x} not allocated"));
            }
        }
        checked += 1;
    }
    if checked == 0 {
        return Err("no MSI-X device checked".into());
    }
    Ok(())
}

/// What a round trip on a device sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoundTrip {
    /// virtio-blk: read sector 0 on queue 0 (completes asynchronously in QEMU).
    BlkRead,
    /// virtio-net: one frame on transmitq1 (queue 1).
    NetTransmit,
    /// virtio-console: one line on port 0's transmitq (queue 1).
    ConsoleTransmit,
}

fn round_trip_kind(slot: &SlotInfo) -> Option<RoundTrip> {
    match slot.device_type {
        DeviceType::Block if slot.queues.contains(0) => Some(RoundTrip::BlkRead),
        DeviceType::Net if slot.queues.contains(1) => Some(RoundTrip::NetTransmit),
        DeviceType::Console if slot.queues.contains(1) => Some(RoundTrip::ConsoleTransmit),
        _ => None,
    }
}

/// What one round trip observed.
struct Observed {
    interrupts: u64,
    halts: u64,
    /// Waits that found the interrupt already taken (it came before `cli`).
    already_pending: u64,
    /// Waits at all (0: the completion was there at the first look).
    waits: u64,
    /// Halts that this queue's interrupt ended.
    woken_by_queue: u64,
    mode: WaitMode,
}

/// Sends one request of `kind` on `live`, waits for it through the device's
/// [`KernelWait`] (arming the queue's interrupt, re-checking the ring), and
/// checks the completion. The queue's interrupts are off again afterwards.
fn round_trip(
    irq: DeviceIrq,
    live: &mut LiveDevice,
    kind: RoundTrip,
    location: Location,
) -> Result<Observed, String> {
    round_trip_with(irq, live, kind, location, false)
}

/// [`round_trip`]; with `halt_first`, the request goes out with interrupts
/// disabled and the first wait comes before the first look at the ring.
fn round_trip_with(
    irq: DeviceIrq,
    live: &mut LiveDevice,
    kind: RoundTrip,
    location: Location,
    halt_first: bool,
) -> Result<Observed, String> {
    const STATUS_AT: usize = 16;
    const DATA_AT: usize = 512;
    let queue_index: u16 = match kind {
        RoundTrip::BlkRead => 0,
        RoundTrip::NetTransmit | RoundTrip::ConsoleTransmit => 1,
    };
    let data_bytes = 512;
    let buffer = DmaRegion::<KernelHal>::new(
        live.transport.dma_owner(),
        DATA_AT + data_bytes.max(PAGE_SIZE),
    )
    .map_err(|e| format!("DMA memory: {e}"))?;
    let base = buffer.device_addr();
    let segments: Vec<Segment> = match kind {
        RoundTrip::BlkRead => {
            // virtio 1.2 §5.2.6: type VIRTIO_BLK_T_IN, reserved, sector 0.
            buffer.write::<u32>(0, 0);
            buffer.write::<u32>(4, 0);
            buffer.write::<u64>(8, 0);
            buffer.write::<u8>(STATUS_AT, 0xff);
            vec![
                Segment::readable(base, 16),
                Segment::writable(base + DATA_AT as u64, data_bytes as u32),
                Segment::writable(base + STATUS_AT as u64, 1),
            ]
        }
        RoundTrip::NetTransmit => {
            // struct virtio_net_hdr, all zero (no offloads): 12 bytes with
            // VERSION_1 (num_buffers is always there), 10 without (§5.1.6).
            let header = if live.features & drivers::features::VERSION_1 != 0 {
                12
            } else {
                10
            };
            // A broadcast frame of the local experimental EtherType 0x88b5.
            let frame_at = header;
            buffer.write_bytes(frame_at, &[0xff; 6]);
            buffer.write_bytes(frame_at + 6, &[0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
            buffer.write_bytes(frame_at + 12, &[0x88, 0xb5]);
            buffer.write_bytes(frame_at + 14, b"virtio-irq self-test");
            vec![Segment::readable(base, (header + 60) as u32)]
        }
        RoundTrip::ConsoleTransmit => {
            let line = format!("virtio-irq: console at {location} interrupt round trip\n");
            buffer.write_bytes(0, line.as_bytes());
            vec![Segment::readable(base, line.len() as u32)]
        }
    };
    let interrupts_before = irq.state().queue_interrupt_count(queue_index);
    // A pending bit left by the previous request's interrupt (taken after
    // its completion was already collected) says nothing about this one.
    irq.state().take_pending(QueueSet::single(queue_index));
    let mut wait = irq.wait(QueueSet::single(queue_index), DEFAULT_TIMEOUT_NS);
    let interrupt_driven = wait.sleeps_until_interrupt();
    let queue = live
        .queues
        .get_mut(usize::from(queue_index))
        .ok_or_else(|| format!("no queue {queue_index}"))?;
    // Armed before the request goes out, and kept armed until it is back, so
    // the device must interrupt for this completion (drivers re-arm only
    // right before each wait, see `drivers::irq::wait_until_used`, which
    // saves interrupts but lets a completion slip in unannounced).
    if interrupt_driven {
        let _ = queue.enable_interrupts();
    }
    let halt_first = halt_first && interrupt_driven;
    if halt_first {
        interrupts::disable();
    }
    let token = queue.add(&segments).map_err(|e| format!("add: {e}"))?;
    if queue.publish().should_notify() {
        live.transport.notify(queue_index);
    }
    // With `halt_first`: wait (the first wait always halts: interrupts have
    // been off since before the notify) until a wait has seen this queue's
    // interrupt, whether it ended a halt or arrived between two of them
    // (after the watchdog ended one); only then look at the ring.
    let mut waiting_for_interrupt = halt_first;
    let used = loop {
        if waiting_for_interrupt {
            let stats = wait.stats();
            waiting_for_interrupt = stats.woken_by_queue + stats.already_pending == 0;
        }
        if !waiting_for_interrupt {
            match queue.pop_used() {
                Ok(Some(used)) => break used,
                Ok(None) => {}
                Err(error) => {
                    queue.disable_interrupts();
                    return Err(format!("queue {queue_index}: {error}"));
                }
            }
        }
        if wait.wait().is_err() {
            queue.disable_interrupts();
            let _ = live.transport.reset();
            queue.reset(|_| {});
            return Err(format!(
                "queue {queue_index}: no completion within {} ms ({} mode); device reset",
                DEFAULT_TIMEOUT_NS / 1_000_000,
                irq.mode_name()
            ));
        }
    };
    if interrupt_driven {
        // The entry can be seen before the interrupt announcing it is taken
        // (the CPU had interrupts off, or the message is in flight): give it
        // a moment with interrupts on.
        let deadline = crate::clock::uptime_ns() + INTERRUPT_GRACE_NS;
        interrupts::enable();
        while irq.state().queue_interrupt_count(queue_index) == interrupts_before
            && crate::clock::uptime_ns() < deadline
        {
            core::hint::spin_loop();
        }
    }
    queue.disable_interrupts();
    if used.token != token {
        return Err(format!(
            "completion for {} but {} was sent",
            used.token, token
        ));
    }
    if kind == RoundTrip::BlkRead {
        let status = buffer.read::<u8>(STATUS_AT).unwrap_or(0xff);
        if status != 0 || used.len as usize != data_bytes + 1 {
            return Err(format!(
                "read of {data_bytes} bytes at sector 0: status {status:#04x}, used length {} (want 0, {})",
                used.len,
                data_bytes + 1
            ));
        }
    }
    let stats = wait.stats();
    Ok(Observed {
        interrupts: irq.state().queue_interrupt_count(queue_index) - interrupts_before,
        halts: stats.halts,
        already_pending: stats.already_pending,
        waits: stats.waits,
        woken_by_queue: stats.woken_by_queue,
        mode: wait.mode(),
    })
}

/// Runs `check` on every live device with a round trip whose mode matches.
fn for_each_device(
    want_polled: bool,
    mut check: impl FnMut(&str, DeviceIrq, &mut LiveDevice, RoundTrip, Location) -> Result<(), String>,
) -> Result<usize, String> {
    let plan: Vec<(Location, RoundTrip, DeviceIrq)> = {
        let slots = SLOTS.lock();
        slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.mode, IrqMode::Polled(_)) == want_polled)
            .filter_map(|(slot, s)| round_trip_kind(s).map(|k| (s.location, k, DeviceIrq { slot })))
            .collect()
    };
    let mut devices = lent();
    let mut problems = Vec::new();
    let mut done = 0;
    for (location, kind, irq) in plan {
        let Some(device) = devices.iter_mut().find(|d| d.location == location) else {
            continue;
        };
        let label = format!(
            "{} at {location} ({})",
            type_name(device.device_type),
            irq.mode_name()
        );
        let Some(live) = device.live() else { continue };
        match check(&label, irq, live, kind, location) {
            Ok(()) => done += 1,
            Err(why) => problems.push(format!("{label}: {why}")),
        }
    }
    if problems.is_empty() {
        Ok(done)
    } else {
        Err(problems.join("; "))
    }
}

fn test_interrupt_round_trips() -> Result<(), String> {
    let done = for_each_device(false, |label, irq, live, kind, location| {
        let seen = round_trip(irq, live, kind, location)?;
        if seen.mode != WaitMode::Interrupt {
            return Err("waited by polling".into());
        }
        if seen.interrupts == 0 {
            return Err("completed, but no interrupt was counted for the queue".into());
        }
        log::info!(
            "virtio-irq: {label}: {kind:?} completed, {} interrupt(s), {} wait(s): {} halt(s), {} found the interrupt already taken",
            seen.interrupts,
            seen.waits,
            seen.halts,
            seen.already_pending
        );
        Ok(())
    })?;
    if done == 0 {
        return Err("no interrupt-driven device to test".into());
    }
    Ok(())
}

fn test_waits_halt() -> Result<(), String> {
    // Whether a completion beats the waiter to its `hlt` is up to QEMU's
    // threads (under TCG it often does: the interrupt is then already taken
    // when the wait looks, which is the race the design handles). To watch
    // the halt itself, each request here goes out with interrupts off, and
    // the ring is only looked at once a wait has seen the queue's interrupt:
    // the CPU halts (each halt bounded by the watchdog) until the completion
    // interrupt arrives, at once if it is already pending at the local APIC.
    let before = halt_count();
    let mut halted = 0;
    for_each_device(false, |label, irq, live, kind, location| {
        let seen = round_trip_with(irq, live, kind, location, true)?;
        if seen.halts == 0 || seen.interrupts == 0 {
            return Err(format!(
                "{} halt(s), {} interrupt(s)",
                seen.halts, seen.interrupts
            ));
        }
        log::info!(
            "virtio-irq: {label}: {kind:?}: the CPU halted {} time(s) until the completion interrupt ({} halt(s) ended by it)",
            seen.halts,
            seen.woken_by_queue
        );
        halted += 1;
        Ok(())
    })?;
    if halted == 0 || halt_count() == before {
        return Err(format!(
            "no halt observed (global halt count {before} -> {})",
            halt_count()
        ));
    }
    log::info!(
        "virtio-irq: {halted} device(s) completed while the CPU halted ({} halts so far, {} ended by the watchdog)",
        halt_count(),
        watchdog_count()
    );
    Ok(())
}

fn test_stray_interrupts() -> Result<(), String> {
    // Raise every device vector once by a self-IPI, with nothing for it to
    // report: MSI-X handlers count a queue interrupt the waiter finds empty;
    // line handlers read status 0 and count "not for this device". Then a
    // real request must still complete.
    let targets: Vec<(usize, u8, bool)> = {
        let slots = SLOTS.lock();
        let mut v = Vec::new();
        for (slot, s) in slots.iter().enumerate() {
            match &s.mode {
                IrqMode::Msix { entries, .. } => v.extend(
                    entries
                        .iter()
                        .filter(|v| v.entry.config || !v.entry.queues.is_empty())
                        .map(|v| (slot, v.vector, false)),
                ),
                IrqMode::Line { vector, .. } => v.push((slot, *vector, true)),
                IrqMode::Polled(_) => {}
            }
        }
        v
    };
    // Whether anything ran `sti` before this test depends on which drivers
    // brought devices up; the self-IPIs are only taken with interrupts on.
    interrupts::enable();
    for (slot, vector, line) in &targets {
        let before = STATES[*slot].counters();
        interrupts::send_self_ipi(*vector).map_err(|e| e.to_string())?;
        // The IPI is taken as soon as interrupts are on; a short spin is enough.
        let deadline = crate::clock::uptime_ns() + 50_000_000;
        loop {
            let now = STATES[*slot].counters();
            let moved = if *line {
                now.line_unclaimed > before.line_unclaimed || now.line_claimed > before.line_claimed
            } else {
                now.queue_interrupts > before.queue_interrupts
                    || now.config_interrupts > before.config_interrupts
            };
            if moved {
                break;
            }
            if crate::clock::uptime_ns() > deadline {
                return Err(format!("self-IPI on vector {vector:#04x} was not counted"));
            }
            core::hint::spin_loop();
        }
    }
    // Stale pending bits from the strays must not break the next request.
    for_each_device(false, |_, irq, live, kind, location| {
        round_trip(irq, live, kind, location).map(|_| ())
    })?;
    log::info!(
        "virtio-irq: {} stray interrupt(s) on device vectors counted; devices still work",
        targets.len()
    );
    Ok(())
}

fn test_polled_round_trips() -> Result<(), String> {
    let done = for_each_device(true, |label, irq, live, kind, location| {
        let seen = round_trip(irq, live, kind, location)?;
        if seen.mode != WaitMode::Poll || seen.halts != 0 {
            return Err(format!(
                "mode {:?}, {} halts: a polled device must not halt",
                seen.mode, seen.halts
            ));
        }
        if seen.interrupts != 0 {
            return Err(format!(
                "{} interrupt(s) counted on a polled device",
                seen.interrupts
            ));
        }
        log::info!("virtio-irq: {label}: {kind:?} completed by polling");
        Ok(())
    })?;
    if done == 0 {
        return Err("no polled device to test".into());
    }
    Ok(())
}

fn test_log_counters() -> Result<(), String> {
    log_counters();
    // The counters must agree with what the self-tests did: every live
    // interrupt-driven device with a round trip completed at least one
    // request and counted at least one interrupt on that queue.
    let slots = SLOTS.lock();
    let mut devices = lent();
    for (slot, s) in slots.iter().enumerate() {
        let Some(kind) = round_trip_kind(s) else {
            continue;
        };
        let queue = if kind == RoundTrip::BlkRead { 0 } else { 1 };
        let Some(device) = devices.iter_mut().find(|d| d.location == s.location) else {
            continue;
        };
        let Some(live) = device.live() else { continue };
        let Some(q) = live.queues.get(queue) else {
            continue;
        };
        let completions = q.counters().completions;
        let interrupts = STATES[slot].queue_interrupt_count(queue as u16);
        if completions == 0 {
            return Err(format!(
                "{}: queue {queue}: no completions counted",
                s.location
            ));
        }
        let polled = matches!(s.mode, IrqMode::Polled(_));
        if !polled && interrupts == 0 {
            return Err(format!(
                "{}: queue {queue}: no interrupts counted",
                s.location
            ));
        }
        if polled && interrupts != 0 {
            return Err(format!(
                "{}: queue {queue}: {interrupts} interrupts on a polled device",
                s.location
            ));
        }
    }
    Ok(())
}

/// Logs, per device the self-tests brought up and per queue: notifications sent (and suppressed),
/// interrupts received, completions collected.
pub fn log_counters() {
    let mut devices = lent();
    for device in devices.iter_mut() {
        let location = device.location;
        let name = type_name(device.device_type);
        let Some(irq) = of(location) else { continue };
        let Some(live) = device.live() else { continue };
        let state = irq.state();
        for queue in &live.queues {
            let c = queue.counters();
            log::info!(
                "virtio-irq: {name} at {location} ({}) queue {}: notifications {} (suppressed {}), interrupts {}, completions {}",
                irq.mode_name(),
                queue.index(),
                c.notifications,
                c.notifications_suppressed,
                state.queue_interrupt_count(queue.index()),
                c.completions
            );
        }
        let counters = state.counters();
        if counters.config_interrupts + counters.line_unclaimed != 0 {
            log::info!(
                "virtio-irq: {name} at {location}: config interrupts {}, line interrupts not for this device {}",
                counters.config_interrupts,
                counters.line_unclaimed
            );
        }
    }
    log::info!(
        "virtio-irq: {} halts, {} ended by the watchdog; {} unexpected and {} spurious interrupts",
        halt_count(),
        watchdog_count(),
        interrupts::unexpected_count(),
        interrupts::spurious_count()
    );
}
