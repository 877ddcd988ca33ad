//! # Wiring virtio devices to the interrupt controllers
//!
//! (virtio 1.2 §4.1.4.5, §4.1.5.1.2, §4.2.2, §4.2.3.4; PCI 3.0 §6.2.4 and
//! §6.8.2; Intel SDM vol. 3A §11.11; 82093AA I/O APIC datasheet §3.2.4.)
//!
//! Every device [`super::probe`] brings up gets one of three ways to tell the
//! CPU that it used buffers, chosen in this order:
//!
//! 1. **MSI-X** (PCI functions with the capability). Before the bring-up
//!    ([`before_bring_up`]) MSI-X is switched on with the function mask set,
//!    so the device stops using INTx and holds every message back, and the
//!    transport is told the entry layout ([`drivers::irq::MsixLayout`]: the
//!    configuration event on entry 0, each queue on its own entry after it,
//!    sharing when the table is small). The transport wrapper
//!    ([`drivers::irq::MsixRouted`]) writes each queue's entry number into
//!    the device before the queue goes live and the configuration entry
//!    before DRIVER_OK, reading each back. After the bring-up
//!    ([`after_bring_up`]) each entry in use gets a CPU vector whose handler
//!    knows the entry's queues, the entry is filled with the message
//!    `interrupts::msi_message` gives for that vector and unmasked, and the
//!    function mask is cleared: a message held back meanwhile goes out now.
//!    Every entry the layout gives a queue gets a vector (up to
//!    [`MAX_ENTRIES_PER_DEVICE`]), not only those of the queues set up so far,
//!    because a device driver that takes the device over may add queues.
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
//!    (`virtio.intx=unrouted` pretends that, to exercise this path), a
//!    virtio-mmio slot with no known GSI, or no working local APIC. The
//!    reason is logged; waits on the device spin.
//!
//! Each device gets a slot in [`STATES`], a [`DeviceInterrupts`] the
//! handlers write (pending bits, counters) and the waits read. A device's
//! [`DeviceIrq`] handle makes the [`KernelWait`] that blocking helpers use:
//! `cli`, check the pending bits, `sti; hlt` ([`KernelIdle`]), with a
//! one-shot local APIC timer as a watchdog so that a lost interrupt costs
//! 10 ms, not the whole run, and a deadline after which the wait gives up.
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
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use drivers::device::Wait;
use drivers::irq::{
    intx_line, pin_name, set_intx_disabled, DeviceInterrupts, EntryUse, Idle,
    InterruptStatusRegister, InterruptWait, IntxLine, MsixLayout, QueueSet, WaitMode, MAX_QUEUES,
};
use drivers::mmio_discovery::{MICROVM_SLOT_SIZE, MICROVM_WINDOW_BASE};
use drivers::pci::msix::{MsixCapability, MsixTable};
use drivers::pci::{PciAddress, PciFunction};
use drivers::queue::Segment;
use drivers::transport::{DeviceType, Location, Transport};
use hal::{DmaRegion, PAGE_SIZE};
use spin::{Mutex, Once};
use x86_64::instructions::interrupts::without_interrupts;

use super::pci::PciConfig;
use super::{type_name, DeviceState, Discovered, InterruptLine, LiveDevice, VirtioDevice};
use crate::hal_impl::KernelHal;
use crate::interrupts::{self, Polarity, Trigger};
use crate::selftest_api::SelfTest;

/// Devices whose interrupts are tracked.
pub const MAX_DEVICES: usize = 32;
/// MSI-X entries given a vector per device (the configuration entry and 15
/// queue entries; beyond that, queues share).
const MAX_ENTRIES_PER_DEVICE: usize = 16;
/// How long the local APIC watchdog lets a halt last: 625 000 ticks of the
/// APIC timer divided by 16, 10 ms at QEMU's 1 GHz APIC clock.
const WATCHDOG_TICKS: u32 = 625_000;
/// Consecutive line interrupts no device on the line claims before the line
/// is masked and its devices polled (a stuck level-triggered line would
/// otherwise leave no CPU time for anything else).
const STORM_LIMIT: u32 = 100_000;
/// How long a self-test lets a requested interrupt take to arrive after its
/// completion is already visible in the used ring.
const INTERRUPT_GRACE_NS: u64 = 100_000_000;
/// Default patience of a [`KernelWait`].
pub const DEFAULT_TIMEOUT_NS: u64 = 2_000_000_000;

/// Per-device interrupt state, written by the handlers.
static STATES: [DeviceInterrupts; MAX_DEVICES] = [const { DeviceInterrupts::new() }; MAX_DEVICES];

/// Where one MSI-X vector's interrupts go: a device slot, its queues on
/// that entry, and whether the configuration event is on it. The vector's
/// handler context is the index into [`TARGETS`]; atomics, so the handler
/// needs no lock.
struct VectorTarget {
    device: AtomicUsize,
    /// Queues in use on this entry: woken and counted.
    queues: AtomicU64,
    /// Every queue the layout puts on this entry: woken (a driver may set
    /// up more queues than the generic bring-up did).
    wakes: AtomicU64,
    config: AtomicBool,
}

const MAX_TARGETS: usize = 192;
static TARGETS: [VectorTarget; MAX_TARGETS] = [const {
    VectorTarget {
        device: AtomicUsize::new(0),
        queues: AtomicU64::new(0),
        wakes: AtomicU64::new(0),
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

/// Taken by the line handler (interrupts off) and, outside interrupt
/// context, only with interrupts off, so on this one CPU the handler never
/// finds it held. Nothing is allocated while the handler holds it.
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
    /// A PCI INTx pin the firmware did not route (or, with
    /// `virtio.intx=unrouted`, that the kernel was told to treat so).
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
        entries: Vec<(EntryUse, u8)>,
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
                for (i, (entry, vector)) in entries.iter().enumerate() {
                    f.write_str(if i == 0 { " " } else { ", " })?;
                    match (entry.config, entry.queues.is_empty()) {
                        (true, true) => write!(f, "config")?,
                        (true, false) => write!(f, "config+queues {}", entry.queues)?,
                        (false, false) => write!(f, "queues {}", entry.queues)?,
                        (false, true) => write!(f, "spare entry {}", entry.entry)?,
                    }
                    write!(f, " -> vector {vector:#04x}")?;
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
    device_type: DeviceType,
    queues: QueueSet,
    mode: IrqMode,
}

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

    /// A wait for `queues` of this device that gives up after `timeout_ns`.
    pub fn wait(self, queues: QueueSet, timeout_ns: u64) -> KernelWait {
        InterruptWait::new(self.state(), queues, KernelIdle::new(timeout_ns))
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
// Waiting
// ---------------------------------------------------------------------------

/// How many times a [`KernelIdle`] halted the CPU.
static HALTS: AtomicU64 = AtomicU64::new(0);
/// How many times the watchdog timer fired while the CPU was halted in a
/// wait (the timer keeps running after a device interrupt ended the halt,
/// and a later expiry outside a halt is not counted).
static WATCHDOG_WAKES: AtomicU64 = AtomicU64::new(0);
/// Set while a wait is in `hlt`.
static IN_HALT: AtomicBool = AtomicBool::new(false);
static WATCHDOG_VECTOR: Once<Option<u8>> = Once::new();

fn watchdog_fired(_vector: u8) {
    if IN_HALT.load(Ordering::Relaxed) {
        WATCHDOG_WAKES.fetch_add(1, Ordering::Relaxed);
    }
}

fn watchdog_vector() -> Option<u8> {
    *WATCHDOG_VECTOR.call_once(|| match interrupts::allocate_vector(watchdog_fired) {
        Ok(vector) => Some(vector),
        Err(error) => {
            log::warn!(
                "virtio-irq: no vector for the wait watchdog ({error}): halts are unbounded"
            );
            None
        }
    })
}

/// Halts performed by interrupt-driven waits since boot.
pub fn halt_count() -> u64 {
    HALTS.load(Ordering::Relaxed)
}

/// Halts the watchdog ended since boot.
pub fn watchdog_count() -> u64 {
    WATCHDOG_WAKES.load(Ordering::Relaxed)
}

/// The CPU side of a wait: `cli`, `sti; hlt` with a watchdog, a deadline.
pub struct KernelIdle {
    deadline_ns: u64,
    /// Used instead of the deadline when the TSC is not calibrated.
    steps_left: u64,
    /// Polls since the clock was last read. Reading the clock (`rdtsc`) is
    /// the dearest thing a poll does (microseconds under an emulating
    /// hypervisor), so a polling wait reads it only every
    /// [`POLLS_PER_CLOCK_READ`] polls; a halting wait never calls `pause`
    /// and so reads it on every step.
    polls_since_clock: u32,
}

/// How many polls share one clock read: a timeout is noticed at most this
/// many `spin_loop` hints late, which is far below any timeout we use.
const POLLS_PER_CLOCK_READ: u32 = 64;

impl KernelIdle {
    /// Gives up `timeout_ns` from now.
    pub fn new(timeout_ns: u64) -> Self {
        KernelIdle {
            deadline_ns: crate::clock::uptime_ns().saturating_add(timeout_ns),
            // A halt lasts at most one watchdog period (10 ms).
            steps_left: (timeout_ns / 10_000_000).max(1) * 100,
            polls_since_clock: 0,
        }
    }
}

impl Idle for KernelIdle {
    fn disable_interrupts(&mut self) {
        interrupts::disable();
    }

    fn enable_interrupts(&mut self) {
        interrupts::enable();
    }

    fn enable_interrupts_and_halt(&mut self) {
        if let Some(vector) = watchdog_vector() {
            let _ = interrupts::start_timer_oneshot(vector, WATCHDOG_TICKS);
        }
        HALTS.fetch_add(1, Ordering::Relaxed);
        IN_HALT.store(true, Ordering::Relaxed);
        interrupts::wait_for_interrupt();
        IN_HALT.store(false, Ordering::Relaxed);
    }

    fn pause(&mut self) {
        self.polls_since_clock = self.polls_since_clock.wrapping_add(1);
        core::hint::spin_loop();
    }

    fn expired(&mut self) -> bool {
        if self.polls_since_clock != 0 && self.polls_since_clock < POLLS_PER_CLOCK_READ {
            return false;
        }
        self.polls_since_clock = 0;
        if crate::clock::tsc_hz() != 0 {
            return crate::clock::uptime_ns() >= self.deadline_ns;
        }
        self.steps_left = self.steps_left.saturating_sub(1);
        self.steps_left == 0
    }
}

/// The wait a blocking helper gets for a device.
pub type KernelWait = InterruptWait<'static, KernelIdle>;

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
    device.wake(QueueSet::from_bits(target.wakes.load(Ordering::Acquire)));
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
    let Some(mut table) = LINES.try_lock() else {
        // Cannot happen (see LINES); returning still lets the EOI through,
        // and a level-triggered line that is still up simply fires again.
        return;
    };
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

/// Step 1, before the bring-up: MSI-X on with the function masked, and the
/// entry layout handed to the transport (see the module docs). Does nothing
/// for virtio-mmio, for functions without MSI-X, or with `virtio.poll=1`.
pub fn before_bring_up(discovered: &mut Discovered) {
    if polling_requested() {
        return;
    }
    let (Location::Pci(address), Ok(transport)) =
        (discovered.location, discovered.transport.as_mut())
    else {
        return;
    };
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

/// Step 2, after the bring-up: vectors for MSI-X, a line, or polling; one
/// `virtio-irq:` line saying which.
pub fn after_bring_up(device: &mut VirtioDevice) {
    let location = device.location;
    let device_type = device.device_type;
    let interrupt = device.interrupt;
    let DeviceState::Live(live) = &mut device.state else {
        return;
    };
    let queue_count = u16::try_from(live.queues.len()).unwrap_or(MAX_QUEUES);
    let queues = QueueSet::first(queue_count.min(MAX_QUEUES));
    let slot = {
        let slots = SLOTS.lock();
        if slots.len() >= MAX_DEVICES {
            log::warn!("virtio-irq: more than {MAX_DEVICES} devices: {location} stays polled without bookkeeping");
            return;
        }
        slots.len()
    };
    STATES[slot].reset();
    let mode = choose_mode(slot, location, interrupt, live, queues);
    STATES[slot].set_polled(matches!(mode, IrqMode::Polled(_)));
    let name = type_name(device_type);
    match &mode {
        IrqMode::Polled(PollReason::Requested) => {
            log::info!("virtio-irq: {name} at {location}: {mode}")
        }
        IrqMode::Polled(_) => log::warn!("virtio-irq: {name} at {location}: {mode}"),
        _ => log::info!("virtio-irq: {name} at {location}: {mode}"),
    }
    SLOTS.lock().push(SlotInfo {
        location,
        device_type,
        queues,
        mode,
    });
}

fn choose_mode(
    slot: usize,
    location: Location,
    interrupt: InterruptLine,
    live: &mut LiveDevice,
    queues: QueueSet,
) -> IrqMode {
    let requested = polling_requested();
    let working = interrupts::is_initialized();
    match location {
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
            if live.transport.layout().is_some() {
                match setup_msix(slot, access, function, live, queues) {
                    Ok(mode) => return mode,
                    Err(why) => {
                        log::warn!("virtio-irq: {address}: MSI-X set-up failed ({why}); falling back to INTx");
                        if let Ok(Some(cap)) = MsixCapability::find(access, function) {
                            let _ = cap.disable(access);
                        }
                        live.transport.set_layout(None);
                        live.transport.set_msix_enabled(false);
                    }
                }
            }
            setup_intx(slot, access, &bus.functions, function, live, queues)
        }
        Location::Mmio { base } => {
            if requested || !working {
                return IrqMode::Polled(if requested {
                    PollReason::Requested
                } else {
                    PollReason::NoInterruptController
                });
            }
            let (gsi, guessed) = match interrupt {
                InterruptLine::Gsi(gsi) => (gsi, false),
                _ => match microvm_slot_gsi(base) {
                    Some(gsi) => (gsi, true),
                    None => return IrqMode::Polled(PollReason::NoGsi),
                },
            };
            let status = match InterruptStatusRegister::mmio(base) {
                Ok(status) => status,
                Err(error) => return IrqMode::Polled(PollReason::SetupFailed(error.to_string())),
            };
            // virtio-mmio holds its line up while InterruptStatus is not 0:
            // a level, asserted high (QEMU models the pin that way).
            let polarity = Polarity::ActiveHigh;
            let source = LineSource {
                slot,
                status,
                queues,
                line: 0,
                follows_hardware: false,
                device_type: live.transport.device_type(),
                location,
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
/// now each entry in use gets a vector and a message, then the function
/// mask goes.
fn setup_msix(
    slot: usize,
    access: &PciConfig,
    function: &PciFunction,
    live: &mut LiveDevice,
    queues: QueueSet,
) -> Result<IrqMode, String> {
    let transport = &live.transport;
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
    let table = cap
        .map_table::<KernelHal>(function)
        .map_err(|e| e.to_string())?;
    let mut entries: Vec<(EntryUse, u8)> = Vec::new();
    let result = (|| {
        // Every entry the layout gives a queue (up to a limit), not only
        // those of the queues set up so far: a device driver that takes the
        // device over may add queues (a network card's control queue).
        for entry in layout.entries(QueueSet::ALL).take(MAX_ENTRIES_PER_DEVICE) {
            let in_use = EntryUse {
                queues: entry.queues.intersection(queues),
                ..entry
            };
            let target = NEXT_TARGET.fetch_add(1, Ordering::Relaxed);
            let t = TARGETS.get(target).ok_or("out of MSI-X vector targets")?;
            t.device.store(slot, Ordering::Release);
            t.queues.store(in_use.queues.bits(), Ordering::Release);
            t.wakes.store(entry.queues.bits(), Ordering::Release);
            t.config.store(entry.config, Ordering::Release);
            let vector = interrupts::allocate_vector_with_context(msix_handler, target)
                .map_err(|e| e.to_string())?;
            entries.push((in_use, vector));
            let (address, data) = interrupts::msi_message(vector).map_err(|e| e.to_string())?;
            table
                .program(entry.entry, address, data)
                .map_err(|e| e.to_string())?;
            table.unmask(entry.entry).map_err(|e| e.to_string())?;
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
            for (entry, vector) in entries {
                let _ = table.mask(entry.entry);
                let _ = interrupts::free_vector(vector);
            }
            Err(why)
        }
    }
}

/// INTx through the I/O APIC, on the IRQ the firmware routed.
fn setup_intx(
    slot: usize,
    access: &PciConfig,
    functions: &[PciFunction],
    function: &PciFunction,
    live: &mut LiveDevice,
    queues: QueueSet,
) -> IrqMode {
    let address: PciAddress = function.address;
    // `virtio.intx=unrouted` exercises the fallback for firmware that routes
    // nothing (QEMU's SeaBIOS and qboot both write interrupt lines).
    let pretended = crate::cmdline::get("virtio.intx") == Some("unrouted");
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
    let status = match InterruptStatusRegister::pci(access, function, live.transport.kind()) {
        Ok(status) => status,
        Err(error) => return IrqMode::Polled(PollReason::SetupFailed(error.to_string())),
    };
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
        slot,
        status,
        queues,
        line: 0,
        follows_hardware: true,
        device_type: live.transport.device_type(),
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
// Counters in the log
// ---------------------------------------------------------------------------

/// Logs, per device and queue: notifications sent (and suppressed),
/// interrupts received, completions collected.
pub fn log_counters() {
    let mut devices = super::devices();
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

// ---------------------------------------------------------------------------
// Self-tests
// ---------------------------------------------------------------------------

/// The interrupt self-tests for what was found.
pub fn selftests() -> Vec<SelfTest> {
    // Round trips need the device's queues, which a device driver that
    // claimed the device (the network stack does at boot) now owns.
    let unclaimed: Vec<Location> = super::devices()
        .iter()
        .filter(|d| matches!(d.state, DeviceState::Live(_)))
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
    let live: Vec<Location> = super::devices()
        .iter()
        .filter(|d| matches!(d.state, DeviceState::Live(_)))
        .map(|d| d.location)
        .collect();
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
    let bus = super::pci::bus();
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
        for (entry, vector) in entries {
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
    let buffer = DmaRegion::<KernelHal>::new(DATA_AT + data_bytes.max(PAGE_SIZE))
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
    // right before each wait, see `drivers::irq::wait_for_used`, which
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
    let mut devices = super::devices();
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
                        .filter(|(entry, _)| entry.config || !entry.queues.is_empty())
                        .map(|(_, vector)| (slot, *vector, false)),
                ),
                IrqMode::Line { vector, .. } => v.push((slot, *vector, true)),
                IrqMode::Polled(_) => {}
            }
        }
        v
    };
    // Whether anything ran `sti` before this test depends on which drivers
    // claimed devices; the self-IPIs are only taken with interrupts on.
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
    let mut devices = super::devices();
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
