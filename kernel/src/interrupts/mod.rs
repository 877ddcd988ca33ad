//! # Interrupts: from a device's signal to a Rust function
//!
//! This module owns every interrupt controller the kernel talks to and the table of who handles
//! which vector. The path of one interrupt, end to end:
//!
//! 1. **A source signals.** A device behind an I/O APIC raises its line (a global system
//!    interrupt, GSI); a PCI device with MSI/MSI-X writes a 32-bit message to an address in
//!    0xFEEx_xxxx (Intel SDM vol. 3A §11.11); or software writes the local APIC's interrupt
//!    command register (an IPI, §11.6).
//! 2. **The I/O APIC translates.** For line interrupts, the pin's redirection entry (Intel
//!    82093AA I/O APIC datasheet §3.2.4; see [`ioapic`]) names the vector, the destination APIC,
//!    trigger mode and polarity. [`route_gsi`] writes it; [`mask_gsi`] silences it. Legacy ISA
//!    IRQs first pass through the ACPI MADT's interrupt source overrides ([`route_isa_irq`]).
//! 3. **The local APIC queues and prioritises.** The message sets the vector's bit in the local
//!    APIC's IRR; when the CPU has interrupts enabled and nothing of equal or higher priority
//!    class is in service, the APIC moves it to the ISR and the CPU takes it (SDM §11.8.3-4).
//!    See [`lapic`].
//! 4. **The CPU vectors through the IDT** to the BOOT helper's stub for that vector, which saves
//!    the caller-saved registers and calls [`dispatch`] with interrupts disabled.
//! 5. **[`dispatch`]** counts the interrupt, looks up the handler ([`vectors`]) and calls it, then
//!    writes the local APIC's EOI register, in exactly one place, so the APIC clears the ISR bit
//!    and (for level-triggered lines) tells the I/O APIC the line may be sampled again (§11.8.5).
//!    A vector with no handler is counted, logged (rate-limited) and acknowledged; the APIC's
//!    spurious vector (§11.9) is counted and *not* acknowledged; a stray from the masked 8259
//!    ([`pic`]) is acknowledged at the 8259 if it was real.
//!
//! [`init`] puts the machine in that state: 8259s remapped and masked, local APIC enabled in
//! xAPIC mode with its spurious vector and error interrupt set and every other local source
//! masked, every I/O APIC entry masked. Nothing is routed until a driver asks.
//!
//! ## Handlers and context
//!
//! [`allocate_vector`] takes a `fn(u8)` (it gets its vector number);
//! [`allocate_vector_with_context`] takes a `fn(u8, usize)` and a `usize` that comes back on
//! every call: an index into the driver's own table, or the address of a driver structure that
//! the driver keeps alive until it calls [`free_vector`]. Handlers run with interrupts disabled,
//! must be short, must not block, and must not take a lock that non-interrupt code holds with
//! interrupts enabled.
//!
//! ## Idling without losing a wake-up
//!
//! Checking "is there work?" and then halting races with an interrupt that arrives in between:
//! its handler runs, and then the CPU halts anyway, waiting for an interrupt that already came.
//! The fix is architectural: `sti` enables interrupts only after the *next* instruction, so
//! `sti; hlt` halts before any interrupt can be taken, and a pending one wakes the `hlt` at once
//! (SDM vol. 2B, STI). So: [`disable`], check for work, then [`wait_for_interrupt`].

mod ioapic;
mod lapic;
mod pic;
#[cfg(feature = "selftest")]
mod selftests;
mod vectors;

pub use crate::acpi_tables::{IsaRoute, Polarity, Trigger};
pub use ioapic::RedirectionEntry;
#[cfg(feature = "selftest")]
pub use selftests::selftests;
#[cfg(feature = "selftest")]
pub use vectors::LAST_ALLOCATABLE;
pub use vectors::{
    Handler, APIC_ERROR_VECTOR, FIRST_ALLOCATABLE, SPURIOUS_VECTOR, WORK_IPI_VECTOR,
};

use crate::acpi_tables;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use ioapic::IoApic;
use lapic::LocalApic;
use spin::{Mutex, Once};
use x86_64::instructions::interrupts::without_interrupts;

/// What can go wrong when asking for interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqError {
    /// [`init`] has not run, or could not map the local APIC.
    NotInitialized,
    /// All vectors 0x30..=0xEF are taken.
    NoFreeVector,
    /// The vector is outside the allocatable range 0x30..=0xEF.
    VectorNotAllocatable(u8),
    /// The vector is allocatable but nobody holds it.
    VectorNotAllocated(u8),
    /// No I/O APIC serves this GSI.
    NoIoApicForGsi(u32),
    /// ISA IRQs are 0..=15.
    IsaIrqOutOfRange(u8),
    /// The local APIC ID does not fit the 8-bit xAPIC destination field.
    DestinationOutOfRange(u32),
    /// The local APIC kept its ICR delivery-status bit set.
    IpiNotDelivered,
}

impl fmt::Display for IrqError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IrqError::NotInitialized => f.write_str("interrupt controllers not initialised"),
            IrqError::NoFreeVector => f.write_str("no free interrupt vector"),
            IrqError::VectorNotAllocatable(v) => write!(f, "vector {v:#04x} is not allocatable"),
            IrqError::VectorNotAllocated(v) => write!(f, "vector {v:#04x} is not allocated"),
            IrqError::NoIoApicForGsi(gsi) => write!(f, "no I/O APIC serves GSI {gsi}"),
            IrqError::IsaIrqOutOfRange(irq) => write!(f, "ISA IRQ {irq} out of range 0..=15"),
            IrqError::DestinationOutOfRange(id) => write!(f, "APIC ID {id} exceeds xAPIC's 8 bits"),
            IrqError::IpiNotDelivered => f.write_str("local APIC did not accept the IPI"),
        }
    }
}

/// Physical address window MSI writes go to (SDM vol. 3A §11.11.1): 0xFEE in bits 31:20.
const MSI_ADDRESS_BASE: u64 = 0xfee0_0000;
/// MSI address bits 19:12 hold the destination APIC ID.
const MSI_DESTINATION_SHIFT: u32 = 12;

static LOCAL_APIC: Once<LocalApic> = Once::new();
/// One lock per I/O APIC: its select-then-access register window (IOREGSEL, IOWIN) must not
/// interleave between CPUs. Taken with interrupts off.
static IO_APICS: Once<Vec<Mutex<IoApic>>> = Once::new();

/// How many times each vector was dispatched. One cache line per counter: with a queue per CPU,
/// neighbouring vectors belong to queues whose interrupts go to different CPUs, and counters
/// packed eight to a line would bounce that line between them on every interrupt.
static PER_VECTOR: [LineCounter; 256] = [const { LineCounter(AtomicU64::new(0)) }; 256];

/// An atomic counter alone on its 64-byte cache line.
#[repr(align(64))]
struct LineCounter(AtomicU64);

impl LineCounter {
    fn increment(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg(feature = "selftest")]
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
static SPURIOUS: AtomicU64 = AtomicU64::new(0);
static UNEXPECTED: AtomicU64 = AtomicU64::new(0);
static APIC_ERRORS: AtomicU64 = AtomicU64::new(0);
/// Vectors that [`route_gsi`] has pointed an I/O APIC pin at since they were allocated, so that
/// [`free_vector`] only scans the redirection tables when a pin may still target the vector.
static ROUTED_SINCE_ALLOCATION: [AtomicBool; 256] = [const { AtomicBool::new(false) }; 256];

/// Logs the 1st, 2nd, 4th, 8th, ... occurrence of something that should not happen: loud
/// enough to be seen, quiet enough that an interrupt storm cannot drown the console.
fn worth_logging(occurrence: u64) -> bool {
    occurrence.is_power_of_two()
}

/// Sets up the interrupt controllers (see the module docs). Call once, after
/// `acpi_tables::init`, with interrupts disabled. Failures are logged; afterwards
/// [`is_initialized`] tells whether the local APIC is usable.
pub fn init() {
    let platform = acpi_tables::platform();

    if platform.has_8259 {
        pic::remap_and_mask();
        log::debug!(
            "8259 PICs remapped to {:#x}..{:#x} and masked",
            pic::VECTORS.start,
            pic::VECTORS.end - 1
        );
    } else {
        log::debug!("MADT says there is no 8259 PIC: leaving ports 0x20/0xA0 alone");
    }

    let base = lapic::enable_xapic_mode();
    if base.was_x2apic {
        log::warn!("local APIC was in x2APIC mode: switched back to xAPIC");
    }
    if base.was_disabled {
        log::info!("local APIC was globally disabled in IA32_APIC_BASE: enabled it");
    }
    if base.physical_address != platform.local_apic_address {
        log::warn!(
            "IA32_APIC_BASE says {:#x}, ACPI says {:#x}: using the MSR (where the CPU decodes it)",
            base.physical_address,
            platform.local_apic_address
        );
    }
    let registers = match crate::memory::map_mmio(base.physical_address, 4096) {
        Ok(pointer) => pointer,
        Err(error) => {
            log::error!(
                "cannot map the local APIC at {:#x}: {error}; interrupts unavailable",
                base.physical_address
            );
            return;
        }
    };
    // SAFETY: `registers` maps this CPU's xAPIC page uncached for the rest of the run, and
    // `enable_xapic_mode` put the APIC in xAPIC mode.
    let apic = LOCAL_APIC.call_once(|| unsafe { LocalApic::new(registers) });
    configure_local_apic(apic, platform);

    let mut io_apics = Vec::new();
    for info in &platform.io_apics {
        let registers = match crate::memory::map_mmio(info.address, ioapic::WINDOW_BYTES) {
            Ok(pointer) => pointer,
            Err(error) => {
                log::error!(
                    "cannot map I/O APIC {} at {:#x}: {error}; skipping it",
                    info.id,
                    info.address
                );
                continue;
            }
        };
        // SAFETY: the window maps this I/O APIC's registers uncached for the rest of the run
        // and only this `IoApic` accesses them.
        let mut io_apic = unsafe { IoApic::new(registers, info.id, info.gsi_base) };
        if io_apic.pin_count == 0 {
            log::error!(
                "no I/O APIC answers at {:#x} (version register reads all ones); skipping it",
                info.address
            );
            continue;
        }
        let hardware_id = io_apic.hardware_id();
        if hardware_id != info.id & 0x0f {
            // Harmless for this kernel: the I/O APIC ID only addressed messages on the
            // pre-Pentium 4 serial APIC bus. (QEMU's second microvm I/O APIC reads 0.)
            log::info!(
                "I/O APIC at {:#x}: ID register says {hardware_id}, MADT says {}",
                info.address,
                info.id
            );
        }
        // Mask every pin. The destination is filled in already so that a later unmask of a
        // half-written entry could at worst reach this CPU.
        let destination = apic.id() as u8;
        let masked =
            RedirectionEntry::new(0, destination, Trigger::Edge, Polarity::ActiveHigh, true);
        for pin in 0..io_apic.pin_count {
            let gsi = info.gsi_base + pin;
            if let Err(error) = io_apic.write_entry(gsi, masked) {
                log::error!("I/O APIC {}: cannot mask GSI {gsi}: {error}", info.id);
            }
        }
        log::info!(
            "I/O APIC id {} version {:#04x} at {:#x}: GSIs {}..={}, all masked",
            info.id,
            io_apic.version,
            info.address,
            info.gsi_base,
            info.gsi_base + io_apic.pin_count - 1
        );
        io_apics.push(Mutex::new(io_apic));
    }
    IO_APICS.call_once(|| io_apics);
}

/// Programs the local APIC: every local source masked except LINT1 NMIs (as the MADT says) and
/// the error interrupt, task priority 0 (accept every class), spurious vector set, software
/// enabled (SDM vol. 3A §11.4.3, §11.5.1, §11.8.3.1, §11.9).
fn configure_local_apic(apic: &LocalApic, platform: &acpi_tables::Platform) {
    use lapic::{lvt, reg};
    let max_lvt = apic.max_lvt_entry();
    for register in [
        reg::LVT_TIMER,
        reg::LVT_LINT0,
        reg::LVT_LINT1,
        reg::LVT_ERROR,
        reg::LVT_PERFORMANCE,
    ] {
        apic.write(register, lvt::MASKED);
    }
    if max_lvt >= 5 {
        apic.write(reg::LVT_THERMAL, lvt::MASKED);
    }
    if max_lvt >= 6 {
        apic.write(reg::LVT_CMCI, lvt::MASKED);
    }
    apic.write(reg::TIMER_INITIAL_COUNT, 0);

    // LINT0 stays masked: it carries the 8259 in "virtual wire" mode, which we do not use.
    // NMIs arrive on the LINT input the MADT names for this CPU (by ACPI processor UID), or by
    // MP-specification convention on LINT1 when there is no MADT.
    let my_uid = platform
        .processors
        .iter()
        .find(|p| p.apic_id == apic.id())
        .map(|p| p.uid);
    let nmi_lines: Vec<_> = match platform.interrupt_source {
        acpi_tables::InterruptSource::Madt => platform
            .local_apic_nmis
            .iter()
            .filter(|nmi| nmi.processor_uid.is_none() || nmi.processor_uid == my_uid)
            .map(|nmi| (nmi.lint, nmi.polarity))
            .collect(),
        acpi_tables::InterruptSource::Defaults(_) => alloc::vec![(1, Polarity::ActiveHigh)],
    };
    for (lint, polarity) in nmi_lines {
        let register = if lint == 0 {
            reg::LVT_LINT0
        } else {
            reg::LVT_LINT1
        };
        // NMI delivery is always edge-sensitive (SDM §11.5.1), so only polarity matters.
        let mut entry = lvt::DELIVERY_NMI;
        if polarity == Polarity::ActiveLow {
            entry |= lvt::ACTIVE_LOW;
        }
        apic.write(register, entry);
        log::debug!("local APIC: LINT{lint} delivers NMI");
    }

    apic.write(reg::TASK_PRIORITY, 0);
    apic.write(
        reg::SPURIOUS_VECTOR,
        u32::from(SPURIOUS_VECTOR) | lapic::SVR_APIC_ENABLE,
    );
    apic.write(reg::LVT_ERROR, u32::from(APIC_ERROR_VECTOR));
    let stale_errors = apic.take_errors();
    if stale_errors != 0 {
        log::debug!("local APIC: cleared stale error status {stale_errors:#x}");
    }
    // Firmware may have left an interrupt in service (it never sent the EOI). One EOI clears
    // the highest in-service bit; repeat until none is left (at most one per vector).
    let mut stale_eois = 0;
    while apic.any_in_service() && stale_eois < 256 {
        apic.end_of_interrupt();
        stale_eois += 1;
    }
    if stale_eois != 0 {
        log::warn!("local APIC: {stale_eois} interrupt(s) were left in service by firmware");
    }
    apic.write(reg::TIMER_DIVIDE, lapic::TIMER_DIVIDE_BY_16);
    log::info!(
        "local APIC id {} version {:#04x} ({} LVT entries): enabled, spurious vector {:#04x}",
        apic.id(),
        apic.version() & 0xff,
        max_lvt + 1,
        SPURIOUS_VECTOR
    );
}

/// Sets up the calling application processor's local APIC the way [`init`] set up the
/// bootstrap processor's (xAPIC mode, local sources masked, LINT NMIs as the MADT says,
/// spurious vector, error interrupt). The I/O APICs and the vector table are shared and need
/// nothing. Returns the CPU's local APIC ID.
pub fn init_this_cpu() -> Result<u32, IrqError> {
    let apic = LOCAL_APIC.get().ok_or(IrqError::NotInitialized)?;
    let base = lapic::enable_xapic_mode();
    if base.physical_address != acpi_tables::platform().local_apic_address {
        // The shared mapping is of the bootstrap processor's base: one APIC page for all CPUs
        // is what this kernel relies on (and what every PC does).
        log::warn!(
            "this CPU's IA32_APIC_BASE says {:#x}: its local APIC is not where the others' is",
            base.physical_address
        );
    }
    configure_local_apic(apic, acpi_tables::platform());
    Ok(apic.id())
}

/// Whether [`init`] mapped and enabled the local APIC.
pub fn is_initialized() -> bool {
    LOCAL_APIC.get().is_some()
}

/// The local APIC ID of the calling CPU (the destination of routed interrupts and MSIs), read
/// from its ID register.
pub fn local_apic_id() -> Option<u32> {
    LOCAL_APIC.get().map(LocalApic::id)
}

/// Handles interrupt `vector` (32..=255). Called by the IDT stubs with interrupts disabled.
///
/// On several CPUs at once: the counters are atomics (the per-vector ones shared by all CPUs, each
/// on its own cache line; the per-CPU total in the CPU's own `smp` entry), the handler registry
/// lock is held only to copy the handler out, and the EOI goes to the calling CPU's own local APIC.
pub fn dispatch(vector: u8) {
    PER_VECTOR[usize::from(vector)].increment();
    crate::smp::count_interrupt();
    let apic = LOCAL_APIC.get();

    if vector == WORK_IPI_VECTOR {
        crate::smp::work_ipi_arrived();
        if let Some(apic) = apic {
            apic.end_of_interrupt();
        }
        return;
    }

    if vector == SPURIOUS_VECTOR {
        let occurrence = SPURIOUS.fetch_add(1, Ordering::Relaxed) + 1;
        // A genuine spurious interrupt sets no in-service bit and must not be acknowledged
        // (SDM §11.9). A real interrupt sent to 0xFF by mistake does, and would block every
        // lower class forever without its EOI.
        if let Some(apic) = apic {
            if apic.in_service(vector) {
                apic.end_of_interrupt();
            }
        }
        if worth_logging(occurrence) {
            log::warn!("spurious APIC interrupt (#{occurrence})");
        }
        return;
    }

    if vector < FIRST_ALLOCATABLE {
        let occurrence = UNEXPECTED.fetch_add(1, Ordering::Relaxed) + 1;
        // Something the local APIC delivered (an MSI or IPI to a low vector) needs the APIC's
        // EOI; otherwise it can only be the masked 8259, which has its own acknowledgement.
        let apic_in_service = apic.filter(|apic| apic.in_service(vector));
        let from_apic = apic_in_service.is_some();
        let real = match apic_in_service {
            Some(apic) => {
                apic.end_of_interrupt();
                true
            }
            None => pic::acknowledge_stray(vector),
        };
        if worth_logging(occurrence) {
            log::warn!(
                "unexpected interrupt on vector {vector:#04x} ({}, #{occurrence})",
                match (from_apic, real) {
                    (true, _) => "from the local APIC",
                    (false, true) => "8259 PIC, despite the mask",
                    (false, false) => "spurious 8259 IRQ",
                }
            );
        }
        return;
    }

    if vector == APIC_ERROR_VECTOR {
        let occurrence = APIC_ERRORS.fetch_add(1, Ordering::Relaxed) + 1;
        let status = apic.map_or(0, LocalApic::take_errors);
        if worth_logging(occurrence) {
            log::error!("local APIC error interrupt: ESR {status:#x} (#{occurrence})");
        }
    } else {
        match vectors::handler_of(vector) {
            Some(handler) => handler.call(vector),
            None => {
                let occurrence = UNEXPECTED.fetch_add(1, Ordering::Relaxed) + 1;
                if worth_logging(occurrence) {
                    log::warn!(
                        "interrupt on vector {vector:#04x}, which has no handler (#{occurrence})"
                    );
                }
            }
        }
    }
    if let Some(apic) = apic {
        apic.end_of_interrupt();
    }
}

/// Enables interrupts (`sti`).
pub fn enable() {
    x86_64::instructions::interrupts::enable();
}

/// Disables interrupts (`cli`).
pub fn disable() {
    x86_64::instructions::interrupts::disable();
}

/// Whether interrupts are enabled (RFLAGS.IF).
#[cfg(feature = "selftest")]
pub fn are_enabled() -> bool {
    x86_64::instructions::interrupts::are_enabled()
}

/// Enables interrupts and halts until one arrives, atomically (`sti; hlt`: `sti` takes effect
/// after `hlt` has started, so an interrupt pending at this point wakes the `hlt` instead of
/// being taken before it). Returns after the interrupt's handler ran, with interrupts enabled.
/// The race-free idle loop is: [`disable`]; if there is no work, `wait_for_interrupt()`.
pub fn wait_for_interrupt() {
    x86_64::instructions::interrupts::enable_and_hlt();
}

/// Allocates a vector in 0x30..=0xEF for `handler`, which is called with the vector number.
pub fn allocate_vector(handler: fn(u8)) -> Result<u8, IrqError> {
    vectors::allocate(Handler::Plain(handler))
}

/// Allocates a vector for `handler`, which is called with the vector number and `context`.
pub fn allocate_vector_with_context(
    handler: fn(u8, usize),
    context: usize,
) -> Result<u8, IrqError> {
    vectors::allocate(Handler::WithContext(handler, context))
}

/// Frees a vector. Any I/O APIC pin still routed to it is masked first (with a warning: the
/// caller should have done it); an MSI still aimed at it would arrive as "unexpected".
pub fn free_vector(vector: u8) -> Result<(), IrqError> {
    if !vectors::is_allocated(vector) {
        return Err(if vectors::is_allocatable(vector) {
            IrqError::VectorNotAllocated(vector)
        } else {
            IrqError::VectorNotAllocatable(vector)
        });
    }
    let may_be_routed = ROUTED_SINCE_ALLOCATION[usize::from(vector)].swap(false, Ordering::Relaxed);
    let io_apics = if may_be_routed { IO_APICS.get() } else { None };
    for io_apic in io_apics.map(Vec::as_slice).unwrap_or_default() {
        without_interrupts(|| {
            let mut io_apic = io_apic.lock();
            for gsi in io_apic.gsi_base..io_apic.gsi_base + io_apic.pin_count {
                if let Ok(entry) = io_apic.read_entry(gsi) {
                    if !entry.is_masked() && entry.vector() == vector {
                        log::warn!("freeing vector {vector:#04x} while GSI {gsi} still targets it: masking the GSI");
                        let _ = io_apic.write_entry(gsi, entry.with_mask(true));
                    }
                }
            }
        });
    }
    vectors::free(vector)
}

/// Runs `f` on the I/O APIC that serves `gsi`, under its lock, with interrupts disabled.
fn with_io_apic<R>(
    gsi: u32,
    f: impl FnOnce(&mut IoApic) -> Result<R, IrqError>,
) -> Result<R, IrqError> {
    let io_apics = IO_APICS.get().ok_or(IrqError::NotInitialized)?;
    without_interrupts(|| {
        for io_apic in io_apics {
            let mut io_apic = io_apic.lock();
            if io_apic.serves(gsi) {
                return f(&mut io_apic);
            }
        }
        Err(IrqError::NoIoApicForGsi(gsi))
    })
}

/// Routes `gsi` to `vector` on this CPU (fixed delivery, physical destination) and unmasks it.
/// `vector` must be allocated.
pub fn route_gsi(
    gsi: u32,
    vector: u8,
    trigger: Trigger,
    polarity: Polarity,
) -> Result<(), IrqError> {
    if !vectors::is_allocatable(vector) {
        return Err(IrqError::VectorNotAllocatable(vector));
    }
    if !vectors::is_allocated(vector) {
        return Err(IrqError::VectorNotAllocated(vector));
    }
    let apic_id = local_apic_id().ok_or(IrqError::NotInitialized)?;
    let destination =
        u8::try_from(apic_id).map_err(|_| IrqError::DestinationOutOfRange(apic_id))?;
    let entry = RedirectionEntry::new(vector, destination, trigger, polarity, false);
    ROUTED_SINCE_ALLOCATION[usize::from(vector)].store(true, Ordering::Relaxed);
    let io_apic_id = with_io_apic(gsi, |io_apic| {
        io_apic.write_entry(gsi, entry)?;
        Ok(io_apic.id)
    })?;
    log::debug!("GSI {gsi} (I/O APIC {io_apic_id}) -> vector {vector:#04x} ({trigger:?}, {polarity:?}) on APIC {apic_id}");
    Ok(())
}

/// Masks `gsi` (its routing is kept, so [`unmask_gsi`] restores it).
pub fn mask_gsi(gsi: u32) -> Result<(), IrqError> {
    with_io_apic(gsi, |io_apic| {
        let entry = io_apic.read_entry(gsi)?;
        io_apic.write_entry(gsi, entry.with_mask(true))
    })
}

/// Unmasks `gsi` with its current routing.
#[cfg(feature = "selftest")]
pub fn unmask_gsi(gsi: u32) -> Result<(), IrqError> {
    with_io_apic(gsi, |io_apic| {
        let entry = io_apic.read_entry(gsi)?;
        io_apic.write_entry(gsi, entry.with_mask(false))
    })
}

/// Reads back the redirection entry of `gsi` (for diagnostics and tests).
#[cfg(feature = "selftest")]
pub fn gsi_entry(gsi: u32) -> Result<RedirectionEntry, IrqError> {
    with_io_apic(gsi, |io_apic| io_apic.read_entry(gsi))
}

/// Writes a raw redirection entry (to restore one saved with [`gsi_entry`]).
#[cfg(feature = "selftest")]
pub fn set_gsi_entry(gsi: u32, entry: RedirectionEntry) -> Result<(), IrqError> {
    with_io_apic(gsi, |io_apic| io_apic.write_entry(gsi, entry))
}

/// How ISA IRQ `isa_irq` reaches the I/O APICs: the MADT's interrupt source override for it, or
/// the same-numbered GSI, edge-triggered, active high.
pub fn isa_route(isa_irq: u8) -> Result<IsaRoute, IrqError> {
    acpi_tables::platform()
        .isa_route(isa_irq)
        .ok_or(IrqError::IsaIrqOutOfRange(isa_irq))
}

/// Routes legacy ISA IRQ `isa_irq` to `vector`, applying the MADT's override (GSI, trigger,
/// polarity). Returns the route used.
#[cfg(feature = "selftest")]
pub fn route_isa_irq(isa_irq: u8, vector: u8) -> Result<IsaRoute, IrqError> {
    let route = isa_route(isa_irq)?;
    route_gsi(route.gsi, vector, route.trigger, route.polarity)?;
    Ok(route)
}

/// The MSI / MSI-X message that delivers `vector` to this CPU: fixed delivery, physical
/// destination, edge-triggered (SDM vol. 3A §11.11.1-2). Returns `(address, data)`; for plain
/// MSI the device takes the low 16 bits of `data`. `vector` must be allocated.
pub fn msi_message(vector: u8) -> Result<(u64, u32), IrqError> {
    let apic_id = local_apic_id().ok_or(IrqError::NotInitialized)?;
    msi_message_to(vector, apic_id)
}

/// The MSI / MSI-X message that delivers `vector` to the CPU whose local APIC ID is `apic_id`
/// (see [`crate::smp::apic_id`] for a CPU's ID); otherwise as [`msi_message`].
pub fn msi_message_to(vector: u8, apic_id: u32) -> Result<(u64, u32), IrqError> {
    if !vectors::is_allocatable(vector) {
        return Err(IrqError::VectorNotAllocatable(vector));
    }
    if !vectors::is_allocated(vector) {
        return Err(IrqError::VectorNotAllocated(vector));
    }
    let destination =
        u8::try_from(apic_id).map_err(|_| IrqError::DestinationOutOfRange(apic_id))?;
    // Address: 0xFEE in 31:20, destination ID in 19:12, redirection hint (bit 3) and destination
    // mode (bit 2) both 0 = "exactly this APIC, physical".
    let address = MSI_ADDRESS_BASE | u64::from(destination) << MSI_DESTINATION_SHIFT;
    // Data: vector in 7:0, delivery mode 000 (fixed) in 10:8, trigger (bit 15) 0 = edge.
    let data = u32::from(vector);
    Ok((address, data))
}

/// Sends a fixed interrupt with `vector` to the CPU whose local APIC ID is `apic_id`
/// (SDM vol. 3A §11.6.1: fixed delivery, physical destination, edge).
pub fn send_ipi(apic_id: u32, vector: u8) -> Result<(), IrqError> {
    let apic = LOCAL_APIC.get().ok_or(IrqError::NotInitialized)?;
    if apic_id > 0xff {
        return Err(IrqError::DestinationOutOfRange(apic_id));
    }
    let command = u32::from(vector) | lapic::icr::DELIVERY_FIXED | lapic::icr::LEVEL_ASSERT;
    without_interrupts(|| apic.send_ipi(apic_id, command))
}

/// Sends an INIT IPI to `apic_id`: the target CPU resets and waits for a start-up IPI (SDM vol.
/// 3A §9.4.4.1 / §11.6.1).
pub fn send_init(apic_id: u32) -> Result<(), IrqError> {
    let apic = LOCAL_APIC.get().ok_or(IrqError::NotInitialized)?;
    if apic_id > 0xff {
        return Err(IrqError::DestinationOutOfRange(apic_id));
    }
    let command = lapic::icr::DELIVERY_INIT | lapic::icr::LEVEL_ASSERT;
    without_interrupts(|| apic.send_ipi(apic_id, command))
}

/// Sends a start-up IPI to `apic_id`: a CPU waiting for one starts in real mode at CS:IP =
/// `page << 8`:0, i.e. at physical address `page << 12` (SDM vol. 3A §9.4.4.1).
pub fn send_startup(apic_id: u32, page: u8) -> Result<(), IrqError> {
    let apic = LOCAL_APIC.get().ok_or(IrqError::NotInitialized)?;
    if apic_id > 0xff {
        return Err(IrqError::DestinationOutOfRange(apic_id));
    }
    let command = u32::from(page) | lapic::icr::DELIVERY_STARTUP | lapic::icr::LEVEL_ASSERT;
    without_interrupts(|| apic.send_ipi(apic_id, command))
}

/// Sends an NMI to the CPU whose local APIC ID is `apic_id` (a crash report stopping the
/// others: an NMI arrives even where interrupts are disabled). Lock-free, for the panic path.
pub fn send_nmi(apic_id: u32) -> Result<(), IrqError> {
    let apic = LOCAL_APIC.get().ok_or(IrqError::NotInitialized)?;
    if apic_id > 0xff {
        return Err(IrqError::DestinationOutOfRange(apic_id));
    }
    let command = lapic::icr::DELIVERY_NMI | lapic::icr::LEVEL_ASSERT;
    without_interrupts(|| apic.send_ipi(apic_id, command))
}

/// Sends interrupt `vector` to this CPU through the local APIC (a self-IPI).
#[cfg(feature = "selftest")]
pub fn send_self_ipi(vector: u8) -> Result<(), IrqError> {
    let apic = LOCAL_APIC.get().ok_or(IrqError::NotInitialized)?;
    without_interrupts(|| apic.send_self_ipi(vector))
}

/// Starts the local APIC timer in one-shot mode (SDM §11.5.4): after `initial_count` ticks of
/// the APIC timer clock divided by 16 it raises `vector` once. `vector` must be allocated.
pub fn start_timer_oneshot(vector: u8, initial_count: u32) -> Result<(), IrqError> {
    use lapic::{lvt, reg};
    if !vectors::is_allocated(vector) {
        return Err(IrqError::VectorNotAllocated(vector));
    }
    let apic = LOCAL_APIC.get().ok_or(IrqError::NotInitialized)?;
    apic.write(reg::TIMER_DIVIDE, lapic::TIMER_DIVIDE_BY_16);
    apic.write(reg::LVT_TIMER, u32::from(vector) | lvt::TIMER_ONE_SHOT);
    // Writing the initial count starts the countdown.
    apic.write(reg::TIMER_INITIAL_COUNT, initial_count);
    Ok(())
}

/// Measures the calling CPU's local APIC timer: ticks of its divide-by-16 clock per second,
/// counted against the TSC over about a millisecond with the timer's LVT entry masked (so no
/// interrupt). 0 without a calibrated TSC or a local APIC. Leaves the timer stopped.
pub fn measure_timer_hz() -> u64 {
    use lapic::{lvt, reg};
    let (Some(apic), hz) = (LOCAL_APIC.get(), crate::clock::tsc_hz()) else {
        return 0;
    };
    if hz == 0 {
        return 0;
    }
    without_interrupts(|| {
        apic.write(reg::TIMER_DIVIDE, lapic::TIMER_DIVIDE_BY_16);
        apic.write(reg::LVT_TIMER, lvt::MASKED);
        apic.write(reg::TIMER_INITIAL_COUNT, u32::MAX);
        let start = crate::clock::tsc();
        let window = hz / 1000;
        while crate::clock::tsc().wrapping_sub(start) < window {
            core::hint::spin_loop();
        }
        let remaining = apic.read(reg::TIMER_CURRENT_COUNT);
        let elapsed = crate::clock::tsc().wrapping_sub(start).max(1);
        apic.write(reg::TIMER_INITIAL_COUNT, 0);
        let ticks = u64::from(u32::MAX - remaining);
        (u128::from(ticks) * u128::from(hz) / u128::from(elapsed)) as u64
    })
}

/// Stops the local APIC timer and masks its LVT entry.
pub fn stop_timer() {
    use lapic::{lvt, reg};
    if let Some(apic) = LOCAL_APIC.get() {
        apic.write(reg::LVT_TIMER, lvt::MASKED);
        apic.write(reg::TIMER_INITIAL_COUNT, 0);
    }
}

/// The local APIC timer's current count (0 when stopped or expired).
pub fn timer_current_count() -> u32 {
    LOCAL_APIC
        .get()
        .map_or(0, |apic| apic.read(lapic::reg::TIMER_CURRENT_COUNT))
}

/// How many times `vector` was dispatched (handled, unexpected or spurious alike).
#[cfg(feature = "selftest")]
pub fn interrupt_count(vector: u8) -> u64 {
    PER_VECTOR[usize::from(vector)].get()
}

/// How many APIC spurious interrupts arrived.
#[cfg(feature = "selftest")]
pub fn spurious_count() -> u64 {
    SPURIOUS.load(Ordering::Relaxed)
}

/// How many interrupts arrived on a vector with no handler (including 8259 strays).
#[cfg(feature = "selftest")]
pub fn unexpected_count() -> u64 {
    UNEXPECTED.load(Ordering::Relaxed)
}

/// How many local APIC error interrupts arrived.
#[cfg(feature = "selftest")]
pub fn apic_error_count() -> u64 {
    APIC_ERRORS.load(Ordering::Relaxed)
}

/// How many allocatable vectors are free.
#[cfg(feature = "selftest")]
pub fn free_vector_count() -> usize {
    vectors::free_count()
}

/// Whether `vector` is currently allocated.
#[cfg(feature = "selftest")]
pub fn is_vector_allocated(vector: u8) -> bool {
    vectors::is_allocated(vector)
}
