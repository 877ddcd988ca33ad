//! # DMA isolation: the IOMMU between virtio devices and RAM
//!
//! Without an IOMMU a PCI device reaches every byte of RAM: the drivers check every index and
//! length a device hands back, but nothing stops a buggy or hostile device from writing where
//! no driver shared anything. An IOMMU (here Intel VT-d, QEMU's `-device intel-iommu` on q35,
//! found through the ACPI DMAR table) translates each device's DMA through page tables the
//! kernel writes, and blocks and records everything else.
//!
//! `iommu=` on the kernel command line picks the mode (one `iommu:` line per device, printed
//! whatever the log level like the `virtio:` lines, says which it got):
//!
//! - `strict` (the default when a DMAR table is present): every virtio device on the unit gets
//!   **a domain of its own**: a domain ID and a second-level page table (`page_table.rs`) that
//!   starts empty, and a context entry pointing its requester ID at them. `hal_impl.rs` maps a
//!   buffer, in the table of the device the driver shares it with, when the driver shares it
//!   (and DMA pages when they are allocated: rings) and unmaps it, with an IOTLB invalidation of
//!   that domain that has completed before `unshare` returns, when the driver ends the share.
//!   Any other address faults, including what other devices' drivers share. Devices the kernel
//!   does not drive get no context entry at all: all their DMA is blocked.
//! - `passthrough`: the unit is on, but virtio devices' context entries say "untranslated"
//!   (TT = 10b): DMA addresses are physical addresses, as without an IOMMU; other devices are
//!   still blocked. Costs nothing per request.
//! - `off`: the unit is left alone (translation off), as if there were none.
//!
//! Device addresses are physical addresses in every mode (IOVA = physical address), so the
//! drivers, the Hal's address translation and the rings are the same in all three; strict
//! mode only decides whether a mapping exists. virtio 1.2 §6.1 (`VIRTIO_F_ACCESS_PLATFORM`):
//! a device behind an IOMMU offers the bit and refuses FEATURES_OK unless the driver accepts it
//! (`drivers/src/features.rs` accepts it on every modern transport: the drivers never hand a
//! device an address that did not come from the Hal).
//!
//! ## One domain per device
//!
//! Every `hal::Hal` call that makes memory device-visible names the device: a `hal::DmaOwner`,
//! which a driver takes from its transport (`Transport::dma_owner`, made from the device's
//! `Location`: for PCI, segment, bus, device and function). [`map`] and [`unmap`] look the
//! owner up among the domains ([`Domain`]) and change that device's table only, then invalidate
//! that domain's IOTLB entries. So "the blk driver shares a buffer with the disk at 00:03.0"
//! becomes "a leaf entry in 00:03.0's table", and the network card at 00:01.0, whose context
//! entry points at another table, faults on the same address. An owner with no domain
//! (`DmaOwner::NO_DEVICE`, a virtio-mmio device, a device outside the unit) maps nothing.
//!
//! ## Faults
//!
//! A blocked access is recorded by the unit and raises the fault event interrupt; the handler
//! ([`on_fault_interrupt`]) logs each fault (`iommu: DMA fault: ...`: requester, address,
//! read/write, reason), counts it, and keeps the last few for the self-test. Nothing else
//! happens: the device sees an error for that access (QEMU's virtio devices then mark
//! themselves DEVICE_NEEDS_RESET), its request fails, and the kernel runs on.
//!
//! The book's chapter `docs/dma-isolation.md` walks through all of this.

#[cfg(feature = "bench")]
pub mod bench;
mod page_table;
#[cfg(feature = "selftest")]
mod selftests;
mod vtd;

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use drivers::transport::Location;
use hal::DmaOwner;
use spin::Mutex;
use x86_64::instructions::interrupts::without_interrupts;

use crate::println;

use page_table::SecondLevelTable;
pub use vtd::{reason_text, Fault};
use vtd::{ContextMode, Unit};

#[cfg(feature = "selftest")]
pub use selftests::{arm_fault, selftests, selftests_with_lent_devices};

/// The domain ID of the first device's domain; the others follow (domain 0 is reserved when the
/// unit caches not-present entries, §11.4.2 CAP.CM).
const FIRST_DOMAIN_ID: u16 = 1;
/// How many faults [`recent_faults`] keeps.
const RECENT_FAULTS: usize = 16;
const PAGE: u64 = 4096;

/// What `iommu=` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Map at share, unmap and invalidate at unshare.
    Strict,
    /// Translation on, virtio devices untranslated.
    PassThrough,
    /// Leave the unit off.
    Off,
}

impl Mode {
    /// Parses `strict`, `passthrough` or `off`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "strict" => Some(Mode::Strict),
            "passthrough" | "pt" => Some(Mode::PassThrough),
            "off" => Some(Mode::Off),
            _ => None,
        }
    }

    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Strict => "strict",
            Mode::PassThrough => "passthrough",
            Mode::Off => "off",
        }
    }
}

/// One device's translation domain: what its context entry points at.
struct Domain {
    /// The device, as its driver names it to the Hal.
    owner: DmaOwner,
    /// The device, as the log names it.
    location: Location,
    /// The domain ID in its context entry, which tags its IOTLB entries.
    id: u16,
    /// Its second-level page table: what this device can reach.
    table: SecondLevelTable,
}

/// The unit and the domains of the translated devices, once translation is on.
struct Remapping {
    unit: Unit,
    domains: Vec<Domain>,
}

impl Remapping {
    /// The domain of device `owner`, if it has one.
    fn domain_of(&self, owner: DmaOwner) -> Option<&Domain> {
        self.domains.iter().find(|d| d.owner == owner)
    }
}

/// The remapping unit and the one second-level table all virtio devices share: every `map` /
/// `unmap` (each DMA share in strict mode, from any CPU) and the fault handler take it, always
/// with interrupts off. A global lock on the strict-mode hot path: one table per CPU is not
/// possible with one domain per device set.
static REMAPPING: Mutex<Option<Remapping>> = Mutex::new(None);
/// `true` once strict translation is on: the Hal maps and unmaps. Checked first on every share,
/// so that a machine without an IOMMU pays one relaxed load.
static STRICT: AtomicBool = AtomicBool::new(false);
/// The mode in force, for the shell and the self-tests.
static ACTIVE: Mutex<Option<Mode>> = Mutex::new(None);

/// Counters, readable at any time (shell `iommu`, bench, self-tests).
static PAGES_MAPPED: AtomicU64 = AtomicU64::new(0);
static PAGES_UNMAPPED: AtomicU64 = AtomicU64::new(0);
static INVALIDATIONS: AtomicU64 = AtomicU64::new(0);
static FAULTS: AtomicU64 = AtomicU64::new(0);
static FAULT_INTERRUPTS: AtomicU64 = AtomicU64::new(0);
/// The last faults read from the unit (taken with interrupts off; the fault handler fills it).
static RECENT: Mutex<Vec<Fault>> = Mutex::new(Vec::new());
/// The devices given a translating context entry (strict mode).
static TRANSLATED: Mutex<Vec<Location>> = Mutex::new(Vec::new());
/// Faults per requester (source ID), for [`faults_of`]: (source + 1, count); 0 = free slot.
static PER_DEVICE: [(AtomicU64, AtomicU64); 32] =
    [const { (AtomicU64::new(0), AtomicU64::new(0)) }; 32];

/// Faults recorded so far for the PCI function at `location` (0 for anything else).
///
/// A request's owner reads it before and after the request: if it moved, the device made a DMA
/// the IOMMU blocked while the request was in flight, and the request must be treated as failed
/// even if the device says it succeeded (QEMU's devices do: a blocked write is dropped and the
/// device never learns). See [`check_request`].
pub fn faults_of(location: Location) -> u64 {
    if !strict() {
        return 0;
    }
    let Some(source) = source_of(location) else {
        return 0;
    };
    PER_DEVICE
        .iter()
        .find(|(key, _)| key.load(Ordering::Relaxed) == u64::from(source) + 1)
        .map_or(0, |(_, count)| count.load(Ordering::Relaxed))
}

/// `Err` with the latest fault if the device at `location` faulted since [`faults_of`] said
/// `before`: the request in flight in between failed.
pub fn check_request(location: Location, before: u64) -> Result<(), Fault> {
    // The self-tests' stand-in for a fault the unit reports during a request.
    #[cfg(feature = "selftest")]
    selftests::fire_armed_fault(location);
    if !strict() || faults_of(location) == before {
        return Ok(());
    }
    on_fault_interrupt();
    let source = source_of(location).unwrap_or(0);
    let latest = recent_faults()
        .into_iter()
        .rev()
        .find(|f| f.source == source);
    Err(latest.unwrap_or(Fault {
        source,
        address: 0,
        read: false,
        reason: 0,
    }))
}

/// The requester ID of a PCI function: bus in 15:8, device in 7:3, function in 2:0.
pub fn source_of(location: Location) -> Option<u16> {
    match location {
        Location::Pci(a) => Some(
            (u16::from(a.bus) << 8) | (u16::from(a.device & 0x1f) << 3) | u16::from(a.function & 7),
        ),
        Location::Mmio { .. } => None,
    }
}

/// Counts one fault against its requester.
fn count_for_device(source: u16) {
    let key = u64::from(source) + 1;
    for (slot, count) in &PER_DEVICE {
        if slot.load(Ordering::Relaxed) == key
            || slot
                .compare_exchange(0, key, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            count.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Leaf entries made present (first share of a page).
    pub pages_mapped: u64,
    /// Leaf entries cleared (last share of a page ended).
    pub pages_unmapped: u64,
    /// IOTLB invalidations waited for (one per unshare that cleared entries).
    pub invalidations: u64,
    /// Faults recorded.
    pub faults: u64,
    /// Fault event interrupts taken.
    pub fault_interrupts: u64,
}

/// The counters now.
pub fn counters() -> Counters {
    Counters {
        pages_mapped: PAGES_MAPPED.load(Ordering::Relaxed),
        pages_unmapped: PAGES_UNMAPPED.load(Ordering::Relaxed),
        invalidations: INVALIDATIONS.load(Ordering::Relaxed),
        faults: FAULTS.load(Ordering::Relaxed),
        fault_interrupts: FAULT_INTERRUPTS.load(Ordering::Relaxed),
    }
}

/// Frames the IOMMU code has taken for its tables so far: a DMA allocation in strict mode may
/// take one more (a new page table) besides its own.
#[cfg(feature = "selftest")]
pub fn table_frames() -> u64 {
    page_table::TABLE_FRAMES.load(Ordering::Relaxed)
}

/// The mode in force: `None` when there is no IOMMU (or it could not be set up).
pub fn active_mode() -> Option<Mode> {
    *ACTIVE.lock()
}

/// The last faults recorded (oldest first).
pub fn recent_faults() -> Vec<Fault> {
    without_interrupts(|| RECENT.lock().clone())
}

/// `true` while strict translation is on: shares must be mapped.
#[inline]
pub fn strict() -> bool {
    STRICT.load(Ordering::Relaxed)
}

/// Finds the DMAR unit, applies `iommu=` and prints one line per virtio device. Call after
/// `virtio::probe` (the devices must be known) and before any driver brings a device up.
pub fn init() {
    let Some(dmar) = crate::acpi_tables::dmar() else {
        if let Some(asked) = crate::cmdline::get("iommu") {
            log::warn!("iommu={asked}: no DMAR table on this machine, nothing to do");
        }
        return;
    };
    let mode = match crate::cmdline::get("iommu") {
        None => Mode::Strict,
        Some(text) => Mode::parse(text).unwrap_or_else(|| {
            log::warn!("unknown iommu={text:?} (want strict, passthrough or off): using strict");
            Mode::Strict
        }),
    };
    let devices: Vec<(Location, String)> = crate::virtio::devices()
        .iter()
        .map(|d| {
            (
                d.location,
                crate::virtio::type_name(d.device_type).to_string(),
            )
        })
        .collect();
    // The unit that covers the virtio devices (QEMU has exactly one, INCLUDE_PCI_ALL).
    let unit_index = devices.iter().find_map(|(location, _)| match location {
        Location::Pci(a) => dmar.unit_for(a.segment, a.bus, a.device, a.function),
        Location::Mmio { .. } => None,
    });
    let Some(unit_index) = unit_index else {
        log::info!("iommu: no virtio device behind a DMA-remapping unit");
        return;
    };
    let base = dmar.units[unit_index].register_base;
    if mode == Mode::Off {
        for (location, name) in &devices {
            println!("iommu: {name} at {location}: off (iommu=off), reaches all of RAM");
        }
        *ACTIVE.lock() = Some(Mode::Off);
        return;
    }
    match without_interrupts(|| bring_up(base, mode, unit_index, dmar, &devices)) {
        Ok(()) => {
            *ACTIVE.lock() = Some(mode);
            STRICT.store(mode == Mode::Strict, Ordering::SeqCst);
        }
        Err(error) => {
            log::error!("iommu: VT-d unit at {base:#x} unusable ({error}): DMA is not isolated");
        }
    }
}

/// Sets the unit up in `mode` with a context entry for every virtio device it covers, turns the
/// fault interrupt and translation on.
fn bring_up(
    base: u64,
    mode: Mode,
    unit_index: usize,
    dmar: &crate::acpi_tables::DmarInfo,
    devices: &[(Location, String)],
) -> Result<(), vtd::VtdError> {
    let mut unit = Unit::new(base)?;
    let mut domains = Vec::new();
    let mut next_id = FIRST_DOMAIN_ID;
    let pass_through = mode == Mode::PassThrough && unit.supports_pass_through();
    if mode == Mode::PassThrough && !pass_through {
        log::warn!("iommu: unit has no pass-through (ECAP.PT): using strict instead");
    }
    unit.invalidate_all()?;
    let mut lines = Vec::new();
    for (location, name) in devices {
        let Location::Pci(address) = location else {
            lines.push(alloc::format!(
                "iommu: {name} at {location}: not behind the IOMMU (virtio-mmio)"
            ));
            continue;
        };
        if dmar.unit_for(
            address.segment,
            address.bus,
            address.device,
            address.function,
        ) != Some(unit_index)
        {
            lines.push(alloc::format!(
                "iommu: {name} at {location}: not behind unit {base:#x}, untranslated"
            ));
            continue;
        }
        let devfn = (address.device << 3) | address.function;
        let id = next_id;
        if u32::from(id) >= unit.domain_ids() {
            // No domain ID left: no context entry, so the unit blocks all its DMA.
            lines.push(alloc::format!(
                "iommu: {name} at {location}: no domain ID left (the unit has {}), all its DMA is blocked",
                unit.domain_ids()
            ));
            continue;
        }
        next_id += 1;
        if pass_through {
            unit.set_context(address.bus, devfn, ContextMode::PassThrough { domain: id })?;
            lines.push(alloc::format!(
                "iommu: {name} at {location}: passthrough (untranslated, reaches all of RAM), domain {id}"
            ));
            continue;
        }
        // Its own table: it starts empty, and only this device's driver fills it.
        let table = SecondLevelTable::new(unit.levels, unit.coherent())?;
        unit.set_context(
            address.bus,
            devfn,
            ContextMode::Translate {
                domain: id,
                table: table.root(),
            },
        )?;
        domains.push(Domain {
            owner: location.dma_owner(),
            location: *location,
            id,
            table,
        });
        TRANSLATED.lock().push(*location);
        lines.push(alloc::format!(
            "iommu: {name} at {location}: strict (reaches only what its driver shares), domain {id}"
        ));
    }
    match crate::interrupts::allocate_vector(fault_vector_handler)
        .and_then(|vector| crate::interrupts::msi_message(vector).map(|m| (vector, m)))
    {
        Ok((vector, (address, data))) => {
            unit.enable_fault_interrupt(address, data);
            log::debug!("iommu: fault events on vector {vector:#x}");
        }
        Err(error) => {
            log::warn!("iommu: no vector for fault events ({error:?}): faults are read when polled")
        }
    }
    unit.enable_translation()?;
    println!(
        "iommu: VT-d at {base:#x} on, {} mode, {}-level tables, {} (devices without an entry are blocked)",
        if pass_through { "passthrough" } else { "strict" },
        unit.levels,
        if unit.coherent() { "coherent" } else { "non-coherent (clflush)" },
    );
    for line in lines {
        println!("{line}");
    }
    *REMAPPING.lock() = Some(Remapping { unit, domains });
    Ok(())
}

/// Called with each device's negotiated features when its driver has brought it up: a device
/// with a translating context entry that did not negotiate `VIRTIO_F_ACCESS_PLATFORM` (QEMU:
/// `iommu_platform=off`, or a legacy transport) bypasses the platform's translation (§6.1: it
/// uses physical addresses), so its `iommu:` line overstated what is enforced: say so.
pub fn note_negotiated(device: impl core::fmt::Display, location: Location, features: u64) {
    if features & drivers::features::ACCESS_PLATFORM != 0 || !strict() {
        return;
    }
    if TRANSLATED.lock().contains(&location) {
        println!(
            "iommu: {device} at {location}: ACCESS_PLATFORM not negotiated, so its DMA bypasses the IOMMU (QEMU: iommu_platform=off): not isolated"
        );
    }
}

/// Maps `len` bytes at physical `phys` for device `owner` alone (device address = `phys`, in
/// `owner`'s page table), readable, and writable if `writable`. On failure nothing stays
/// mapped. Nothing to do for an owner without a domain (not translated, or `NO_DEVICE`).
pub fn map(owner: DmaOwner, phys: u64, len: usize, writable: bool) -> Result<(), hal::HalError> {
    if len == 0 {
        return Err(hal::HalError::InvalidArgument);
    }
    let first = phys / PAGE;
    let last = (phys + len as u64 - 1) / PAGE;
    without_interrupts(|| {
        let mut guard = REMAPPING.lock();
        let Some(remapping) = guard.as_mut() else {
            return Ok(());
        };
        let Remapping { unit, domains } = remapping;
        let Some(domain) = domains.iter_mut().find(|d| d.owner == owner) else {
            return Ok(());
        };
        let mut newly_present = false;
        for page in first..=last {
            match domain.table.map_page(page * PAGE, page * PAGE, writable) {
                Ok(new) => {
                    if new {
                        PAGES_MAPPED.fetch_add(1, Ordering::Relaxed);
                    }
                    newly_present |= new;
                }
                Err(error) => {
                    log::error!(
                        "iommu: cannot map page {:#x} for {}: {error:?}",
                        page * PAGE,
                        domain.location
                    );
                    if page > first {
                        release(unit, domain, first, page - 1);
                    }
                    return Err(hal::HalError::MapFailed);
                }
            }
        }
        // A caching-mode unit may cache "not present": tell it (§6.1).
        if newly_present && unit.caching_mode() {
            invalidate(unit, domain.id, first, last);
        }
        Ok(())
    })
}

/// Ends the share of `len` bytes at physical `phys` that [`map`] made for `owner`. When that
/// was the last share of a page in `owner`'s table, the page is unmapped there and the
/// domain's IOTLB entries for it invalidated before this returns (strict).
pub fn unmap(owner: DmaOwner, phys: u64, len: usize) {
    if len == 0 {
        return;
    }
    let first = phys / PAGE;
    let last = (phys + len as u64 - 1) / PAGE;
    without_interrupts(|| {
        if let Some(remapping) = REMAPPING.lock().as_mut() {
            let Remapping { unit, domains } = remapping;
            if let Some(domain) = domains.iter_mut().find(|d| d.owner == owner) {
                release(unit, domain, first, last);
            }
        }
    });
}

/// Unshares pages `first..=last` in `domain`, then one invalidation for the cleared ones.
fn release(unit: &mut Unit, domain: &mut Domain, first: u64, last: u64) {
    let mut cleared: Option<(u64, u64)> = None;
    for page in first..=last {
        match domain.table.unmap_page(page * PAGE) {
            Ok(true) => {
                PAGES_UNMAPPED.fetch_add(1, Ordering::Relaxed);
                cleared = Some(cleared.map_or((page, page), |(lo, _)| (lo, page)));
            }
            Ok(false) => {}
            Err(error) => log::error!("iommu: unshare of page {:#x}: {error:?}", page * PAGE),
        }
    }
    if let Some((lo, hi)) = cleared {
        // The benchmark's comparison: one invalidation per page instead of one per buffer.
        #[cfg(feature = "bench")]
        if bench::PER_PAGE_INVALIDATION.load(Ordering::Relaxed) {
            for page in lo..=hi {
                invalidate(unit, domain.id, page, page);
            }
            return;
        }
        invalidate(unit, domain.id, lo, hi);
    }
}

/// Makes the unit forget domain `domain`'s cached translations of pages `first..=last`.
fn invalidate(unit: &mut Unit, domain: u16, first: u64, last: u64) {
    INVALIDATIONS.fetch_add(1, Ordering::Relaxed);
    if let Err(error) = unit.invalidate_pages(domain, first, last) {
        log::error!(
            "iommu: IOTLB invalidation of domain {domain} failed ({error}); stale translations possible"
        );
    }
}

/// What device `owner`'s page table says about device address `iova`: (physical page, read,
/// write, live shares); `None` if not mapped there (tests, shell).
pub fn translation(owner: DmaOwner, iova: u64) -> Option<(u64, bool, bool, u64)> {
    without_interrupts(|| {
        let guard = REMAPPING.lock();
        let t = guard
            .as_ref()?
            .domain_of(owner)?
            .table
            .translate(iova & !(PAGE - 1))?;
        Some((t.phys, t.read, t.write, t.shares))
    })
}

/// The translated devices (strict mode), each with its domain ID, in bring-up order.
pub fn domains() -> Vec<(Location, u16)> {
    without_interrupts(|| {
        REMAPPING
            .lock()
            .as_ref()
            .map(|r| r.domains.iter().map(|d| (d.location, d.id)).collect())
            .unwrap_or_default()
    })
}

/// The fault event interrupt.
fn fault_vector_handler(_vector: u8) {
    FAULT_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    on_fault_interrupt();
}

/// Reads, logs and counts every pending fault. Also called by code that wants the records now
/// (the self-test polls it, in case the interrupt is late or was not set up).
pub fn on_fault_interrupt() {
    without_interrupts(|| {
        // Everyone takes it with interrupts off, so this CPU does not hold it; another CPU
        // may, for the length of one map or unmap.
        let mut guard = REMAPPING.lock();
        let Some(remapping) = guard.as_mut() else {
            return;
        };
        let (faults, overflow) = remapping.unit.take_faults();
        drop(guard);
        if overflow {
            log::warn!("iommu: fault records overflowed: some faults were not recorded");
        }
        for fault in faults {
            record(fault);
        }
    });
}

/// Logs and counts one fault (in total and for its requester) and keeps it among the recent.
fn record(fault: Fault) {
    FAULTS.fetch_add(1, Ordering::Relaxed);
    count_for_device(fault.source);
    log::warn!(
        "iommu: DMA fault: device {} {} at {:#x} blocked: {} (reason {:#x})",
        fault.source_text(),
        if fault.read { "read" } else { "write" },
        fault.address,
        vtd::reason_text(fault.reason),
        fault.reason
    );
    without_interrupts(|| {
        let mut recent = RECENT.lock();
        if recent.len() == RECENT_FAULTS {
            recent.remove(0);
        }
        recent.push(fault);
    });
}
