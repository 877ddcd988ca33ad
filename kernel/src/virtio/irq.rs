//! # Wiring virtio devices to the interrupt controllers
//!
//! (virtio 1.2 §4.1.4.5, §4.1.5.1.2, §4.2.2, §4.2.3.4; PCI 3.0 §6.2.4 and
//! §6.8.2; Intel SDM vol. 3A §11.11; 82093AA I/O APIC datasheet §3.2.4.)
//!
//! Every device gets its interrupt route as part of its one bring-up
//! ([`super::bring_up`], the driver's constructor in the middle), one of
//! three ways to tell the CPU that it used buffers, chosen in this order:
//!
//! 1. **MSI-X** (PCI functions with the capability). Before the driver's
//!    §3.1.1 sequence ([`prepare`]) MSI-X is switched on with the function
//!    mask set, so the device stops using INTx and holds every message back,
//!    and the transport is told the entry layout
//!    ([`drivers::irq::MsixLayout`]: the configuration event on entry 0,
//!    each queue on its own entry after it, sharing when the table is small).
//!    The transport wrapper ([`drivers::irq::MsixRouted`]) then writes each
//!    queue's entry number into the device before the queue is enabled and
//!    the configuration entry before DRIVER_OK, reading each back
//!    (§4.1.5.1.2). Once the driver has the device at DRIVER_OK
//!    ([`route`]) each entry the driver's queues use gets a CPU vector whose
//!    handler knows the entry's queues, the entry is filled with the message
//!    `interrupts::msi_message` gives for that vector and unmasked, and the
//!    function mask is cleared: a message held back meanwhile goes out now.
//!    (At most [`MAX_ENTRIES_PER_DEVICE`] entries per device get a vector.)
//! 2. **A line through the I/O APIC**: a PCI function's INTx pin, on the
//!    legacy IRQ the firmware wrote into its interrupt line register (routed
//!    level-triggered, with the polarity the MADT gives that IRQ), or a
//!    virtio-mmio device's GSI from `virtio_mmio.device=` (or, for a slot
//!    found by probing the microvm window, the GSI QEMU gives that slot).
//!    Lines are shared: one vector per GSI, whose handler reads and
//!    acknowledges the status register of every device on it. Firmware can
//!    be wrong about the line (qboot is, one slot off, on QEMU 7.2), so every
//!    IRQ the chipset routes PCI interrupts to is listened on, and a device
//!    that claims an interrupt on another line than it was put on is moved
//!    there ([`line_handler`]).
//! 3. **Polling**, when there is no way: `virtio.poll=1` on the command line
//!    (benchmarks compare both), a PCI INTx pin the firmware did not route
//!    (`virtio.intx=unrouted`, a self-test key, pretends that), a
//!    virtio-mmio slot with no known GSI, or no working local APIC. The
//!    reason is logged; waits on the device spin.
//!
//! Each device gets a slot in [`STATES`], a [`DeviceInterrupts`] the
//! handlers write (pending bits, counters) and the waits read. A device's
//! [`DeviceIrq`] handle makes the [`KernelWait`] that blocking helpers use
//! (`crate::wait`: `cli`, check the pending bits, `sti; hlt`, with a
//! one-shot local APIC timer as a watchdog so that a lost interrupt costs
//! 10 ms, not the whole run, and a deadline after which the wait gives up).
//!
//! A device brought up a second time (the self-tests bring it up before its
//! driver does, in `mode=selftest`) keeps its slot, its mode and its
//! vectors; [`route`] only changes which queues they carry.
//!
//! Device drivers get a device's [`DeviceIrq`] with [`of`] (by location) and
//! wait through [`DeviceIrq::wait`]; `docs/04-interrupts.md` tells the whole
//! story. One line per device says what was chosen, e.g.
//!
//! ```text
//! virtio-irq: blk at pci 0000:00:03.0: MSI-X, 2 of 2 entries: config -> vector 0x33, queues {0} -> vector 0x34
//! virtio-irq: net at pci 0000:00:04.0: INTx pin A, IRQ 11 -> GSI 11 (level, active high) -> vector 0x35
//! virtio-irq: blk at mmio@0xfeb00e00: GSI 12 (level, active high) -> vector 0x36
//! virtio-irq: blk at pci 0000:00:03.0: polling: INTx pin A not routed by the firmware (interrupt line 0x00)
//! ```

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use drivers::irq::{
    intx_line, pin_name, set_intx_disabled, DeviceInterrupts, EntryUse, InterruptStatusRegister,
    IntxLine, MsixLayout, QueueSet,
};
use drivers::mmio_discovery::{MICROVM_SLOT_SIZE, MICROVM_WINDOW_BASE};
use drivers::pci::msix::{MsixCapability, MsixTable};
use drivers::pci::{PciAddress, PciFunction};
use drivers::transport::{DeviceType, Location, Transport, TransportWrapper};
use spin::Mutex;
use x86_64::instructions::interrupts::without_interrupts;

use super::pci::PciConfig;
use super::{type_name, Found, InterruptLine, KernelTransport};
use crate::hal_impl::KernelHal;
use crate::interrupts::{self, Polarity, Trigger};
use crate::wait::KernelWait;

/// Devices whose interrupts are tracked.
pub const MAX_DEVICES: usize = 32;
/// MSI-X entries given a vector per device (the configuration entry and 15
/// queue entries; beyond that, queues share).
const MAX_ENTRIES_PER_DEVICE: usize = 16;
/// Consecutive line interrupts no device on the line claims before the line
/// is masked and its devices polled (a stuck level-triggered line would
/// otherwise leave no CPU time for anything else).
const STORM_LIMIT: u32 = 100_000;

/// Per-device interrupt state, written by the handlers.
static STATES: [DeviceInterrupts; MAX_DEVICES] = [const { DeviceInterrupts::new() }; MAX_DEVICES];

/// Where one MSI-X vector's interrupts go: a device slot, its queues on
/// that entry, and whether the configuration event is on it. The vector's
/// handler context is the index into [`TARGETS`]; atomics, so the handler
/// needs no lock, and a later bring-up of the same device can change them.
struct VectorTarget {
    device: AtomicUsize,
    /// Queues on this entry: woken and counted.
    queues: AtomicU64,
    config: AtomicBool,
}

const MAX_TARGETS: usize = 192;
static TARGETS: [VectorTarget; MAX_TARGETS] = [const {
    VectorTarget {
        device: AtomicUsize::new(0),
        queues: AtomicU64::new(0),
        config: AtomicBool::new(false),
    }
}; MAX_TARGETS];
static NEXT_TARGET: AtomicUsize = AtomicUsize::new(0);

/// One device whose interrupts arrive on a line.
struct LineSource {
    slot: usize,
    status: InterruptStatusRegister<KernelHal>,
    queues: QueueSet,
    /// Index into [`LineTable::lines`] of the line it interrupts on.
    line: usize,
    /// A PCI INTx source, whose line came from the firmware and may be wrong
    /// (see [`line_handler`]); virtio-mmio GSIs are never second-guessed.
    follows_hardware: bool,
    /// For the message when it moves.
    device_type: DeviceType,
    location: Location,
}

/// One routed GSI. The vector's handler context is its index.
struct SharedLine {
    gsi: u32,
    vector: u8,
    unclaimed_streak: u32,
    masked: bool,
}

/// Every routed line and every device on one.
struct LineTable {
    lines: Vec<SharedLine>,
    sources: Vec<LineSource>,
}

/// Every routed line and the devices on it. Taken by the line handler
/// (interrupts off) and, outside interrupt context, only with interrupts
/// off, so the handler never finds it held by the code it interrupted on its
/// own CPU; another CPU may hold it for a moment (routing a device), and then
/// the handler waits for it. Nothing is allocated while the handler holds it.
static LINES: Mutex<LineTable> = Mutex::new(LineTable {
    lines: Vec::new(),
    sources: Vec::new(),
});

/// Why a device is polled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollReason {
    /// `virtio.poll=1`.
    Requested,
    /// No usable local APIC.
    NoInterruptController,
    /// A PCI INTx pin the firmware did not route (or, with the self-test
    /// key `virtio.intx=unrouted`, that the kernel was told to treat so).
    IntxNotRouted { pin: u8, line: u8, pretended: bool },
    /// A PCI function with neither MSI-X nor an interrupt pin.
    NoInterruptPin,
    /// A virtio-mmio device whose GSI is unknown.
    NoGsi,
    /// Setting up the route failed.
    SetupFailed(String),
}

impl fmt::Display for PollReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PollReason::Requested => f.write_str("virtio.poll=1"),
            PollReason::NoInterruptController => f.write_str("no usable local APIC"),
            PollReason::IntxNotRouted {
                pin,
                line,
                pretended,
            } => write!(
                f,
                "INTx pin {} not routed by the firmware (interrupt line {line:#04x}{})",
                pin_name(*pin),
                if *pretended {
                    ", as virtio.intx=unrouted pretends"
                } else {
                    ""
                }
            ),
            PollReason::NoInterruptPin => f.write_str("no MSI-X and no INTx pin"),
            PollReason::NoGsi => f.write_str("no GSI known for this virtio-mmio slot"),
            PollReason::SetupFailed(why) => write!(f, "interrupt set-up failed: {why}"),
        }
    }
}

/// How a device interrupts.
pub enum IrqMode {
    /// MSI-X: each entry in use, with its CPU vector.
    Msix {
        /// The mapped table (for read-back checks).
        table: MsixTable<KernelHal>,
        /// Entries in the table.
        table_size: u16,
        /// The entries in use and their vectors.
        entries: Vec<MsixVector>,
    },
    /// A line through the I/O APIC.
    Line {
        /// What the line is.
        source: LineKind,
        /// The GSI.
        gsi: u32,
        /// The vector the GSI is routed to.
        vector: u8,
        /// Polarity programmed.
        polarity: Polarity,
    },
    /// Polled.
    Polled(PollReason),
}

/// One MSI-X table entry in use, with its CPU vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixVector {
    /// The entry and what it carries.
    pub entry: EntryUse,
    /// The CPU vector its message raises.
    pub vector: u8,
    /// The CPU its message is addressed to (`crate::smp` numbering): the
    /// CPU that owns the entry's first queue ([`DrivenDevice::queue_cpu`](super::DrivenDevice::queue_cpu)).
    pub cpu: usize,
    /// Its handler's index into [`TARGETS`].
    target: usize,
}

/// Which kind of line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// A PCI INTx pin on a legacy IRQ.
    Intx { pin: u8, isa_irq: u8 },
    /// A virtio-mmio interrupt.
    Mmio {
        /// `true` if the GSI was derived from the microvm slot, not given.
        guessed: bool,
    },
}

impl IrqMode {
    /// `msix`, `intx`, `mmio` or `polled`.
    pub fn name(&self) -> &'static str {
        match self {
            IrqMode::Msix { .. } => "msix",
            IrqMode::Line {
                source: LineKind::Intx { .. },
                ..
            } => "intx",
            IrqMode::Line {
                source: LineKind::Mmio { .. },
                ..
            } => "mmio",
            IrqMode::Polled(_) => "polled",
        }
    }
}

impl fmt::Display for IrqMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let polarity = |p: &Polarity| match p {
            Polarity::ActiveHigh => "active high",
            Polarity::ActiveLow => "active low",
        };
        match self {
            IrqMode::Msix {
                table_size,
                entries,
                ..
            } => {
                write!(f, "MSI-X, {} of {table_size} entries:", entries.len())?;
                for (
                    i,
                    MsixVector {
                        entry, vector, cpu, ..
                    },
                ) in entries.iter().enumerate()
                {
                    f.write_str(if i == 0 { " " } else { ", " })?;
                    match (entry.config, entry.queues.is_empty()) {
                        (true, true) => write!(f, "config")?,
                        (true, false) => write!(f, "config+queues {}", entry.queues)?,
                        (false, false) => write!(f, "queues {}", entry.queues)?,
                        (false, true) => write!(f, "spare entry {}", entry.entry)?,
                    }
                    write!(f, " -> vector {vector:#04x}")?;
                    // CPU 0 is every single-queue device's: said only otherwise.
                    if *cpu != 0 {
                        write!(f, " on cpu {cpu}")?;
                    }
                }
                Ok(())
            }
            IrqMode::Line {
                source,
                gsi,
                vector,
                polarity: p,
            } => {
                match source {
                    LineKind::Intx { pin, isa_irq } => {
                        write!(f, "INTx pin {}, IRQ {isa_irq} -> ", pin_name(*pin))?
                    }
                    LineKind::Mmio { guessed: true } => f.write_str("microvm slot ")?,
                    LineKind::Mmio { guessed: false } => {}
                }
                write!(
                    f,
                    "GSI {gsi} (level, {}) -> vector {vector:#04x}",
                    polarity(p)
                )
            }
            IrqMode::Polled(reason) => write!(f, "polling: {reason}"),
        }
    }
}

/// What is known about one device's interrupts.
struct SlotInfo {
    location: Location,
    /// What the interrupt self-tests check the route against.
    #[cfg(feature = "selftest")]
    device_type: DeviceType,
    #[cfg(feature = "selftest")]
    queues: QueueSet,
    mode: IrqMode,
}

/// Each device's interrupt set-up (mode, vectors, queues), by slot; written at
/// bring-up and teardown, read by the shell and self-tests. Never taken in an
/// interrupt handler (those use the lock-free `STATES`/`TARGETS`).
static SLOTS: Mutex<Vec<SlotInfo>> = Mutex::new(Vec::new());

/// A device's interrupt slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceIrq {
    slot: usize,
}

impl DeviceIrq {
    /// What the handlers recorded for this device.
    pub fn state(self) -> &'static DeviceInterrupts {
        &STATES[self.slot]
    }

    /// `msix`, `intx`, `mmio` or `polled`.
    pub fn mode_name(self) -> &'static str {
        SLOTS
            .lock()
            .get(self.slot)
            .map_or("polled", |s| s.mode.name())
    }

    /// A wait for `queues` of this device that gives up after `timeout_ns`
    /// (the kernel's one wait, `crate::wait`).
    pub fn wait(self, queues: QueueSet, timeout_ns: u64) -> KernelWait {
        KernelWait::new(self.state(), queues, timeout_ns)
    }

    /// The CPU the MSI-X message of the entry carrying `queue` is addressed
    /// to (as programmed into the table); `None` without MSI-X or for a
    /// queue no entry carries. For the network scale bench's per-pair lines.
    #[cfg(feature = "bench")]
    pub fn msix_cpu_of_queue(self, queue: u16) -> Option<usize> {
        let bit = 1u64.checked_shl(u32::from(queue))?;
        let slots = SLOTS.lock();
        let IrqMode::Msix { entries, .. } = &slots.get(self.slot)?.mode else {
            return None;
        };
        entries
            .iter()
            .find(|e| {
                TARGETS
                    .get(e.target)
                    .is_some_and(|t| t.queues.load(Ordering::Relaxed) & bit != 0)
            })
            .map(|e| e.cpu)
    }
}

/// The interrupt slot of the device at `location`, if it has one.
pub fn of(location: Location) -> Option<DeviceIrq> {
    SLOTS
        .lock()
        .iter()
        .position(|s| s.location == location)
        .map(|slot| DeviceIrq { slot })
}

/// Whether the command line asks for polling (`virtio.poll=1`).
pub fn polling_requested() -> bool {
    matches!(crate::cmdline::get("virtio.poll"), Some("1" | "on" | "yes"))
}

// ---------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------

/// An MSI-X vector fired: its entry's queues have news (and/or the config).
fn msix_handler(_vector: u8, target: usize) {
    let Some(target) = TARGETS.get(target) else {
        return;
    };
    let Some(device) = STATES.get(target.device.load(Ordering::Acquire)) else {
        return;
    };
    let queues = QueueSet::from_bits(target.queues.load(Ordering::Acquire));
    if !queues.is_empty() {
        device.queue_interrupt(queues);
    }
    if target.config.load(Ordering::Acquire) {
        device.config_interrupt();
    }
}

/// A line fired: ask every device on it whether it was them (reading their
/// status register acknowledges and drops their line).
///
/// If none was, the firmware may have lied: the interrupt line register is
/// only what the firmware *believes* the board wiring to be, and qboot's
/// belief is off by one slot on QEMU's `pc` and `q35`. So the other PCI INTx
/// devices are asked too, and one that claims the interrupt is moved to the
/// line it really uses (with a warning). Only when nobody claims it is the
/// interrupt counted as unclaimed; a line that keeps firing unclaimed is
/// masked and its devices polled.
fn line_handler(_vector: u8, index: usize) {
    // Never held by the code this interrupted (see LINES): at worst another
    // CPU holds it, briefly, with interrupts off.
    let mut table = LINES.lock();
    let LineTable { lines, sources } = &mut *table;
    if index >= lines.len() {
        return;
    }
    let mut claimed = false;
    for source in sources.iter().filter(|s| s.line == index) {
        let status = source.status.read_and_acknowledge();
        claimed |= STATES[source.slot].line_interrupt(status, source.queues);
    }
    if !claimed {
        for source in sources.iter_mut().filter(|s| s.line != index) {
            let status = source.status.read_and_acknowledge();
            let theirs = STATES[source.slot].line_interrupt(status, source.queues);
            if theirs && source.follows_hardware {
                log::warn!(
                    "virtio-irq: {} at {}: the firmware routed it to GSI {}, but it interrupts on GSI {}: following the hardware",
                    type_name(source.device_type),
                    source.location,
                    lines[source.line].gsi,
                    lines[index].gsi
                );
                source.line = index;
            }
            claimed |= theirs;
        }
    }
    let line = &mut lines[index];
    if claimed {
        line.unclaimed_streak = 0;
        return;
    }
    line.unclaimed_streak += 1;
    if line.unclaimed_streak >= STORM_LIMIT && !line.masked {
        line.masked = true;
        let _ = interrupts::mask_gsi(line.gsi);
        for source in sources.iter().filter(|s| s.line == index) {
            STATES[source.slot].set_polled(true);
        }
        log::error!(
            "virtio-irq: GSI {} fired {} times in a row with no device claiming it: masked, its devices are polled from now on",
            line.gsi,
            STORM_LIMIT
        );
    }
}

// ---------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------

/// Step 1 of a device's interrupt set-up, before its bring-up (§4.1.5.1.2:
/// the vectors must be known when the queues are set up): MSI-X on with the
/// function masked, and the entry layout handed to the transport (see the
/// module docs). Does nothing for virtio-mmio, for functions without MSI-X,
/// or with `virtio.poll=1`.
pub fn prepare(found: &mut Found) {
    if polling_requested() {
        return;
    }
    let Location::Pci(address) = found.location else {
        return;
    };
    let transport = &mut found.transport;
    let bus = super::pci::bus();
    let Some(bus) = bus.as_ref() else { return };
    let Some(function) = bus.functions.iter().find(|f| f.address == address) else {
        return;
    };
    match MsixCapability::find(&bus.config, function) {
        Ok(Some(cap)) => {
            if let Err(error) = cap.enable_masked(&bus.config) {
                log::warn!("virtio-irq: {address}: cannot enable MSI-X: {error}");
                return;
            }
            // Legacy devices move their configuration when MSI-X is on.
            transport.set_msix_enabled(true);
            transport.set_layout(Some(MsixLayout::new(cap.table_size)));
            log::debug!(
                "virtio-irq: {address}: MSI-X enabled with the function masked ({} table entries)",
                cap.table_size
            );
        }
        Ok(None) => {}
        Err(error) => log::warn!("virtio-irq: {address}: MSI-X capability unusable: {error}"),
    }
}

/// Step 2, once the driver has brought the device to DRIVER_OK with
/// `queues` set up: vectors for MSI-X, a line, or polling; one
/// `virtio-irq:` line saying which. A device that already has a route (the
/// self-tests brought it up before its driver) keeps its slot and mode; its
/// route is extended to the queues of this bring-up.
pub fn route(
    device_type: DeviceType,
    location: Location,
    interrupt: InterruptLine,
    transport: &mut KernelTransport,
    queues: QueueSet,
    queue_cpus: &[usize],
) -> Option<DeviceIrq> {
    let (slot, previous) = {
        let mut slots = SLOTS.lock();
        match slots.iter().position(|s| s.location == location) {
            Some(slot) => {
                // Taken out while the route is redone; put back below.
                let mode = core::mem::replace(
                    &mut slots[slot].mode,
                    IrqMode::Polled(PollReason::SetupFailed("being re-routed".into())),
                );
                (slot, Some(mode))
            }
            None => {
                if slots.len() >= MAX_DEVICES {
                    log::warn!("virtio-irq: more than {MAX_DEVICES} devices: {location} stays polled without bookkeeping");
                    return None;
                }
                (slots.len(), None)
            }
        }
    };
    let rerouted = previous.is_some();
    // What the earlier route said, to tell whether this one differs.
    let previous_text = previous.as_ref().map(|mode| mode.to_string());
    if !rerouted {
        STATES[slot].reset();
    }
    let target = RouteTarget {
        slot,
        device_type,
        location,
        interrupt,
        queues,
        queue_cpus,
    };
    let mode = choose_mode(&target, transport, previous);
    STATES[slot].set_polled(matches!(mode, IrqMode::Polled(_)));
    let name = type_name(device_type);
    if rerouted {
        if previous_text.is_some_and(|text| text != mode.to_string()) {
            // More queues (or other CPUs) than the earlier bring-up had.
            log::info!("virtio-irq: {name} at {location}: re-routed: {mode}");
        } else {
            log::debug!("virtio-irq: {name} at {location}: route kept for queues {queues}: {mode}");
        }
    } else {
        match &mode {
            IrqMode::Polled(PollReason::Requested) => {
                log::info!("virtio-irq: {name} at {location}: {mode}")
            }
            IrqMode::Polled(_) => log::warn!("virtio-irq: {name} at {location}: {mode}"),
            _ => log::info!("virtio-irq: {name} at {location}: {mode}"),
        }
    }
    let mut slots = SLOTS.lock();
    let info = SlotInfo {
        location,
        #[cfg(feature = "selftest")]
        device_type,
        #[cfg(feature = "selftest")]
        queues,
        mode,
    };
    match slots.get_mut(slot) {
        Some(existing) => *existing = info,
        None => slots.push(info),
    }
    Some(DeviceIrq { slot })
}

/// The device a route is being made for.
struct RouteTarget<'a> {
    slot: usize,
    device_type: DeviceType,
    location: Location,
    interrupt: InterruptLine,
    queues: QueueSet,
    /// The CPU each queue's interrupts go to, by queue index (CPU 0 for a
    /// queue past the end); only MSI-X can steer them.
    queue_cpus: &'a [usize],
}

fn choose_mode(
    target: &RouteTarget,
    transport: &mut KernelTransport,
    previous: Option<IrqMode>,
) -> IrqMode {
    let requested = polling_requested();
    let working = interrupts::is_initialized();
    let (slot, queues) = (target.slot, target.queues);
    // A device routed before keeps its line (only the queues it carries
    // change) or stays polled; an MSI-X route is redone below, reusing its
    // vectors.
    let previous_msix = match previous {
        Some(IrqMode::Line {
            source,
            gsi,
            vector,
            polarity,
        }) => {
            without_interrupts(|| {
                let mut table = LINES.lock();
                for line_source in table.sources.iter_mut().filter(|s| s.slot == slot) {
                    line_source.queues = queues;
                }
            });
            return IrqMode::Line {
                source,
                gsi,
                vector,
                polarity,
            };
        }
        Some(IrqMode::Polled(reason)) => return IrqMode::Polled(reason),
        Some(IrqMode::Msix { table, entries, .. }) => Some((table, entries)),
        None => None,
    };
    match target.location {
        Location::Pci(address) => {
            let bus = super::pci::bus();
            let Some(bus) = bus.as_ref() else {
                return IrqMode::Polled(PollReason::SetupFailed("no PCI bus".into()));
            };
            let Some(function) = bus.functions.iter().find(|f| f.address == address) else {
                return IrqMode::Polled(PollReason::SetupFailed("function vanished".into()));
            };
            let access = &bus.config;
            if requested || !working {
                let _ = set_intx_disabled(access, address, true);
                return IrqMode::Polled(if requested {
                    PollReason::Requested
                } else {
                    PollReason::NoInterruptController
                });
            }
            if transport.layout().is_some() {
                match setup_msix(
                    slot,
                    access,
                    function,
                    transport,
                    (queues, target.queue_cpus),
                    previous_msix,
                ) {
                    Ok(mode) => return mode,
                    Err(why) => {
                        log::warn!("virtio-irq: {address}: MSI-X set-up failed ({why}); falling back to INTx");
                        if let Ok(Some(cap)) = MsixCapability::find(access, function) {
                            let _ = cap.disable(access);
                        }
                        transport.set_layout(None);
                        transport.set_msix_enabled(false);
                    }
                }
            }
            setup_intx(target, access, &bus.functions, function, transport)
        }
        Location::Mmio { base } => {
            if requested || !working {
                return IrqMode::Polled(if requested {
                    PollReason::Requested
                } else {
                    PollReason::NoInterruptController
                });
            }
            let (gsi, guessed) = match target.interrupt {
                InterruptLine::Gsi(gsi) => (gsi, false),
                _ => match microvm_slot_gsi(base) {
                    Some(gsi) => (gsi, true),
                    None => return IrqMode::Polled(PollReason::NoGsi),
                },
            };
            let status = transport.inner().interrupt_status();
            // virtio-mmio holds its line up while InterruptStatus is not 0:
            // a level, asserted high (QEMU models the pin that way).
            let polarity = Polarity::ActiveHigh;
            let source = LineSource {
                slot,
                status,
                queues,
                line: 0,
                follows_hardware: false,
                device_type: target.device_type,
                location: target.location,
            };
            match attach_line(gsi, polarity, source) {
                Ok(vector) => IrqMode::Line {
                    source: LineKind::Mmio { guessed },
                    gsi,
                    vector,
                    polarity,
                },
                Err(why) => IrqMode::Polled(PollReason::SetupFailed(why)),
            }
        }
    }
}

/// The GSI QEMU's microvm wires to the virtio-mmio slot at `base`: with a
/// second I/O APIC (ACPI on, GSIs 24..) slot `n` is on GSI 24 + n, otherwise
/// on GSI 5 + n (hw/i386/microvm.c). Only used when the command line did not
/// say, i.e. for slots found by probing the window.
fn microvm_slot_gsi(base: u64) -> Option<u32> {
    let offset = base.checked_sub(MICROVM_WINDOW_BASE)?;
    if offset % MICROVM_SLOT_SIZE != 0 {
        return None;
    }
    let slot = u32::try_from(offset / MICROVM_SLOT_SIZE).ok()?;
    let second_io_apic = crate::acpi_tables::platform()
        .io_apics
        .iter()
        .any(|io| io.gsi_base == 24);
    let gsi = if second_io_apic { 24 + slot } else { 5 + slot };
    (gsi < 24 || second_io_apic).then_some(gsi)
}

/// MSI-X, step 2: the device accepted its entry numbers during the bring-up;
/// now each entry the queues set up (and the configuration event) use gets
/// a vector and a message, then the function mask goes. `previous` is the
/// route of an earlier bring-up of the same device: its table mapping and
/// vectors are reused (the handler's queue sets are updated), entries no
/// longer used are masked and their vectors freed.
fn setup_msix(
    slot: usize,
    access: &PciConfig,
    function: &PciFunction,
    transport: &KernelTransport,
    (queues, queue_cpus): (QueueSet, &[usize]),
    previous: Option<(MsixTable<KernelHal>, Vec<MsixVector>)>,
) -> Result<IrqMode, String> {
    if let Some(rejection) = transport.rejection() {
        return Err(rejection.to_string());
    }
    let layout = transport.layout().ok_or("no MSI-X layout")?;
    if transport.routed_queues() != queues {
        return Err(format!(
            "queues {} set up, only {} routed",
            queues,
            transport.routed_queues()
        ));
    }
    if !transport.config_routed() {
        return Err("configuration vector not programmed".into());
    }
    let cap = MsixCapability::find(access, function)
        .map_err(|e| e.to_string())?
        .ok_or("MSI-X capability vanished")?;
    let (table, mut reusable) = match previous {
        Some((table, vectors)) => (table, vectors),
        None => (
            cap.map_table::<KernelHal>(function)
                .map_err(|e| e.to_string())?,
            Vec::new(),
        ),
    };
    let mut entries: Vec<MsixVector> = Vec::new();
    let result = (|| {
        for entry in layout.entries(queues).take(MAX_ENTRIES_PER_DEVICE) {
            let reused = reusable
                .iter()
                .position(|v| v.entry.entry == entry.entry)
                .map(|at| reusable.swap_remove(at));
            let (target, vector) = match reused {
                Some(old) => (old.target, old.vector),
                None => {
                    let target = NEXT_TARGET.fetch_add(1, Ordering::Relaxed);
                    if target >= MAX_TARGETS {
                        return Err("out of MSI-X vector targets".to_string());
                    }
                    let vector = interrupts::allocate_vector_with_context(msix_handler, target)
                        .map_err(|e| e.to_string())?;
                    (target, vector)
                }
            };
            let t = TARGETS.get(target).ok_or("out of MSI-X vector targets")?;
            t.device.store(slot, Ordering::Release);
            t.queues.store(entry.queues.bits(), Ordering::Release);
            t.config.store(entry.config, Ordering::Release);
            // The message goes to the CPU that owns the entry's first queue
            // (the one that submits on it): its completion is handled where
            // the request started. Configuration-only entries go to CPU 0.
            let cpu = entry
                .queues
                .iter()
                .next()
                .and_then(|q| queue_cpus.get(usize::from(q)).copied())
                .unwrap_or(0);
            let message = match crate::smp::apic_id(cpu) {
                Some(apic_id) => interrupts::msi_message_to(vector, apic_id),
                // Not online (cannot happen for a CPU the mapping named):
                // the CPU running this.
                None => interrupts::msi_message(vector),
            };
            entries.push(MsixVector {
                entry,
                vector,
                cpu,
                target,
            });
            let (address, data) = message.map_err(|e| e.to_string())?;
            table
                .program(entry.entry, address, data)
                .map_err(|e| e.to_string())?;
            table.unmask(entry.entry).map_err(|e| e.to_string())?;
        }
        // Entries an earlier bring-up used and this one does not.
        for unused in reusable.drain(..) {
            let _ = table.mask(unused.entry.entry);
            if let Some(t) = TARGETS.get(unused.target) {
                t.queues.store(0, Ordering::Release);
                t.config.store(false, Ordering::Release);
            }
            let _ = interrupts::free_vector(unused.vector);
        }
        cap.unmask_function(access).map_err(|e| e.to_string())?;
        set_intx_disabled(access, function.address, true).map_err(|e| e.to_string())
    })();
    match result {
        Ok(()) => Ok(IrqMode::Msix {
            table,
            table_size: cap.table_size,
            entries,
        }),
        Err(why) => {
            for v in entries.into_iter().chain(reusable) {
                let _ = table.mask(v.entry.entry);
                let _ = interrupts::free_vector(v.vector);
            }
            Err(why)
        }
    }
}

/// `virtio.intx=unrouted`, a self-test key: treat every INTx pin as not
/// routed, to exercise the polling fallback for firmware that routes
/// nothing (QEMU's SeaBIOS and qboot both write interrupt lines). The
/// kernel people boot does not read it.
#[cfg(feature = "selftest")]
fn intx_unrouted_pretended() -> bool {
    crate::cmdline::get("virtio.intx") == Some("unrouted")
}

/// Without the self-tests the firmware's word is taken.
#[cfg(not(feature = "selftest"))]
fn intx_unrouted_pretended() -> bool {
    false
}

/// INTx through the I/O APIC, on the IRQ the firmware routed.
fn setup_intx(
    target: &RouteTarget,
    access: &PciConfig,
    functions: &[PciFunction],
    function: &PciFunction,
    transport: &KernelTransport,
) -> IrqMode {
    let address: PciAddress = function.address;
    let pretended = intx_unrouted_pretended();
    let mut seen = function.clone();
    if pretended {
        seen.interrupt_line = 0xff;
    }
    let (pin, isa_irq) = match intx_line(&seen) {
        IntxLine::Routed { pin, isa_irq } => (pin, isa_irq),
        IntxLine::NotRouted { pin, line } => {
            let _ = set_intx_disabled(access, address, true);
            return IrqMode::Polled(PollReason::IntxNotRouted {
                pin,
                line,
                pretended,
            });
        }
        IntxLine::NoPin => return IrqMode::Polled(PollReason::NoInterruptPin),
    };
    let status = transport.inner().interrupt_status();
    let route = match interrupts::isa_route(isa_irq) {
        Ok(route) => route,
        Err(error) => return IrqMode::Polled(PollReason::SetupFailed(error.to_string())),
    };
    // Listen on every IRQ the chipset can send a PCI interrupt to, so that a
    // device whose line register is wrong is still heard (see line_handler).
    for irq in pirq_targets(access, functions) {
        if let Ok(target) = interrupts::isa_route(irq) {
            if let Err(why) = ensure_line(target.gsi, target.polarity) {
                log::warn!(
                    "virtio-irq: cannot route IRQ {irq} (GSI {}): {why}",
                    target.gsi
                );
            }
        }
    }
    // PCI INTx is level-triggered whatever the ISA default says; the
    // polarity is the MADT's for this IRQ (QEMU: active high).
    let source = LineSource {
        slot: target.slot,
        status,
        queues: target.queues,
        line: 0,
        follows_hardware: true,
        device_type: target.device_type,
        location: Location::Pci(address),
    };
    match attach_line(route.gsi, route.polarity, source) {
        Ok(vector) => {
            if let Err(error) = set_intx_disabled(access, address, false) {
                return IrqMode::Polled(PollReason::SetupFailed(error.to_string()));
            }
            IrqMode::Line {
                source: LineKind::Intx { pin, isa_irq },
                gsi: route.gsi,
                vector,
                polarity: route.polarity,
            }
        }
        Err(why) => IrqMode::Polled(PollReason::SetupFailed(why)),
    }
}

/// Adds `source` to the line of `gsi`, routing the GSI first if it is new.
/// Returns the line's vector.
fn attach_line(gsi: u32, polarity: Polarity, mut source: LineSource) -> Result<u8, String> {
    without_interrupts(|| {
        let mut table = LINES.lock();
        let index = ensure_line_locked(&mut table, gsi, polarity)?;
        source.line = index;
        table.sources.push(source);
        Ok(table.lines[index].vector)
    })
}

/// Routes `gsi` (level-triggered, `polarity`) to a line vector unless it is
/// routed already. Returns the line's index.
fn ensure_line(gsi: u32, polarity: Polarity) -> Result<usize, String> {
    without_interrupts(|| ensure_line_locked(&mut LINES.lock(), gsi, polarity))
}

fn ensure_line_locked(
    table: &mut LineTable,
    gsi: u32,
    polarity: Polarity,
) -> Result<usize, String> {
    if let Some(index) = table.lines.iter().position(|l| l.gsi == gsi) {
        return Ok(index);
    }
    let index = table.lines.len();
    let vector =
        interrupts::allocate_vector_with_context(line_handler, index).map_err(|e| e.to_string())?;
    table.lines.push(SharedLine {
        gsi,
        vector,
        unclaimed_streak: 0,
        masked: false,
    });
    if let Err(error) = interrupts::route_gsi(gsi, vector, Trigger::Level, polarity) {
        table.lines.pop();
        let _ = interrupts::free_vector(vector);
        return Err(error.to_string());
    }
    log::debug!("virtio-irq: GSI {gsi} -> vector {vector:#04x} (level) for PCI/virtio-mmio lines");
    Ok(index)
}

/// The legacy IRQs the chipset's PCI interrupt router sends PIRQ lines to,
/// as the firmware programmed it: PIIX3/PIIX4 (`pc`) has PIRQA-D route
/// registers at 0x60-0x63 of its ISA bridge, ICH9 (`q35`) also PIRQE-H at
/// 0x68-0x6B of its LPC bridge (Intel 82371AB datasheet §3.2.9, ICH9
/// datasheet §13.1.10). Bit 7 set: not routed; bits 3:0: the IRQ.
fn pirq_targets(access: &PciConfig, functions: &[PciFunction]) -> Vec<u8> {
    use drivers::pci::ConfigAccess;
    const PIIX_ISA: [(u16, u16); 2] = [(0x8086, 0x7000), (0x8086, 0x7110)];
    const ICH9_LPC: (u16, u16) = (0x8086, 0x2918);
    let mut targets = Vec::new();
    for function in functions.iter().filter(|f| f.address.bus == 0) {
        let id = (function.vendor_id, function.device_id);
        let registers: &[u16] = if PIIX_ISA.contains(&id) {
            &[0x60, 0x61, 0x62, 0x63]
        } else if id == ICH9_LPC {
            &[0x60, 0x61, 0x62, 0x63, 0x68, 0x69, 0x6a, 0x6b]
        } else {
            continue;
        };
        for &register in registers {
            let Ok(route) = access.read8(function.address, register) else {
                continue;
            };
            let irq = route & 0x0f;
            if route & 0x80 == 0 && irq > 2 && !targets.contains(&irq) {
                targets.push(irq);
            }
        }
    }
    targets
}

// ---------------------------------------------------------------------------
// Self-tests (mode=selftest): irq_selftests.rs, beside this file
// ---------------------------------------------------------------------------

#[cfg(feature = "selftest")]
#[path = "irq_selftests.rs"]
mod selftests;
#[cfg(feature = "selftest")]
pub use selftests::selftests;
