//! Self-tests of DMA isolation (`mode=selftest`).
//!
//! - The DMAR parser against good and hostile tables (always).
//! - `expect.iommu=MODE`: the mode in force is MODE (so a scenario that wants strict mode
//!   fails if the IOMMU was not found or not set up).
//! - In strict mode: a share maps exactly its pages, in the page table of the device it is
//!   shared with only, with the right rights, and an unshare unmaps them; and the **stray DMA**
//!   test: a virtio-blk read whose data descriptor points
//!   at a page that was never shared (a canary page filled with a pattern). The IOMMU must
//!   block the device's write, record a fault naming the device, the page and "write", the
//!   request must not complete successfully, and the canary must be unchanged.
//! - In strict mode, **use after unshare**: a page is shared, the device reads into it (the
//!   unit caches the translation), the page is unshared, and the same read is sent again: the
//!   IOTLB invalidation at unshare must make the second write fault like a stray one.
//! - In strict mode, **another device's buffer**: a page is shared (writable) with a second
//!   translated device B, and the blk device A is made to read a sector into it. The page is
//!   mapped, but in B's domain, not A's: the write must fault naming A, A's request must fail,
//!   and B's buffer must be unchanged. With one domain for all devices (as before per-device
//!   domains) the write would land.
//!
//! - [`arm_fault`]: for the net and console self-tests, a fault "reported" for a device at its
//!   next `iommu::check_request`, as if the unit had blocked one of its DMAs during the request
//!   being checked: it proves those paths fail the request, without breaking the device.
//!
//! The stray-DMA test uses a blk device the virtio self-tests borrowed
//! (`virtio/test_bringup.rs`), so it runs from their list, just before they hand the devices
//! back (the device is reset at the end of the test, as after any failed request).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;

use drivers::queue::{Ring, Segment};
use drivers::transport::{DeviceStatus, DeviceType, Location, Transport};
use hal::{Direction, DmaOwner, DmaRegion, Hal};

use super::{Fault, Mode};
use crate::hal_impl::KernelHal;
use crate::memory;
use crate::selftest_api::SelfTest;
use crate::virtio::test_bringup::{lent, LiveDevice, TestState};

/// How long the stray request may take to fail.
const STRAY_TIMEOUT_NS: u64 = 2_000_000_000;
/// The canary page's pattern.
const CANARY: u8 = 0x5a;

/// The self-tests that need no borrowed device (see the module docs).
pub fn selftests() -> Vec<SelfTest> {
    let mut tests = vec![SelfTest {
        name: "iommu: DMAR parser takes a good table and rejects bad lengths",
        run: crate::acpi_tables::dmar_selftests::test_parse,
    }];
    if crate::cmdline::get("expect.iommu").is_some() {
        tests.push(SelfTest {
            name: "iommu: the mode in force is expect.iommu=",
            run: test_expected_mode,
        });
    }
    if super::strict() {
        tests.push(SelfTest {
            name: "iommu: share maps the buffer's pages, unshare unmaps them (strict)",
            run: test_share_maps,
        });
    }
    tests
}

/// The stray-DMA test, for the virtio self-tests' list (it needs their borrowed devices).
pub fn selftests_with_lent_devices() -> Vec<SelfTest> {
    if !super::strict() {
        return Vec::new();
    }
    vec![
        SelfTest {
            name: "iommu: a blk DMA to a never-shared page faults, fails, and leaves it unchanged",
            run: test_stray_dma,
        },
        SelfTest {
            name: "iommu: after unshare the device cannot reach the page (IOTLB invalidated)",
            run: test_use_after_unshare,
        },
        SelfTest {
            name:
                "iommu: a blk DMA to a page shared with another device faults (a domain per device)",
            run: test_other_devices_buffer,
        },
    ]
}

fn test_expected_mode() -> Result<(), String> {
    let wanted = crate::cmdline::get("expect.iommu").unwrap_or_default();
    let active = super::active_mode();
    let matches = match (wanted, active) {
        ("none", None) => true,
        (text, Some(mode)) => Mode::parse(text) == Some(mode),
        _ => false,
    };
    if matches {
        Ok(())
    } else {
        Err(format!(
            "expect.iommu={wanted}, but the mode is {}",
            active.map_or("none (no IOMMU set up)", Mode::name)
        ))
    }
}

fn test_share_maps() -> Result<(), String> {
    // Shared with the first translated device; every other one must not see it.
    let domains = super::domains();
    let (location, _) = *domains
        .first()
        .ok_or("strict mode, but no device has a domain")?;
    let owner = location.dma_owner();
    // Two pages of our own, so that nothing else shares them.
    let phys = memory::allocate_frames(2).map_err(|e| format!("frames: {e:?}"))?;
    let result = (|| {
        let start = NonNull::new(memory::phys_to_virt(phys + 100)).ok_or("null")?;
        let buffer = NonNull::slice_from_raw_parts(start, 4096);
        let before = super::counters();
        // SAFETY: our own frames, untouched until the unshare below.
        let address = unsafe { KernelHal::share(owner, buffer, Direction::ToDevice) }
            .map_err(|e| format!("share: {e}"))?;
        let mapped: Vec<_> = [phys, phys + 4096]
            .iter()
            .map(|&page| super::translation(owner, page))
            .collect();
        let elsewhere: Vec<Location> = domains
            .iter()
            .skip(1)
            .filter(|(other, _)| super::translation(other.dma_owner(), phys).is_some())
            .map(|(other, _)| *other)
            .collect();
        // SAFETY: the share above, the device never saw it.
        unsafe { KernelHal::unshare(owner, address, buffer, Direction::ToDevice) };
        if !elsewhere.is_empty() {
            return Err(format!(
                "shared with {location}, but also mapped for {elsewhere:?}"
            ));
        }
        let after = super::counters();
        for (page, t) in [phys, phys + 4096].iter().zip(&mapped) {
            match t {
                Some((p, true, false, 1)) if p == page => {}
                other => {
                    return Err(format!(
                        "page {page:#x} while shared to-device: {other:?}, want read-only, 1 share"
                    ))
                }
            }
            if let Some(left) = super::translation(owner, *page) {
                return Err(format!(
                    "page {page:#x} still mapped after unshare: {left:?}"
                ));
            }
        }
        if after.pages_mapped - before.pages_mapped != 2
            || after.pages_unmapped - before.pages_unmapped != 2
            || after.invalidations - before.invalidations != 1
        {
            return Err(format!(
                "counters moved {before:?} -> {after:?}: want 2 mapped, 2 unmapped, 1 invalidation"
            ));
        }
        Ok(())
    })();
    // SAFETY: our frames, unmapped (or the test failed, and a leak would be no safer).
    let _ = unsafe { memory::free_frames(phys, 2) };
    result
}

/// What became of one hand-built blk read.
struct ReadOutcome {
    /// The device put it in the used ring.
    completed: bool,
    /// The device set DEVICE_NEEDS_RESET instead.
    needs_reset: bool,
    /// The status byte the device wrote (0xff: none).
    status: u8,
}

/// One VIRTIO_BLK_T_IN of sector 0's first 512 bytes into device address `data` on the borrowed
/// device's queue 0; header and status live in DMA memory of their own (mapped). Waits until the
/// device completes it or says it needs a reset (or 2 s); in the last two cases the device is
/// reset, so that it lets go of the request before its memory is freed.
fn read_sector_to(live: &mut LiveDevice, data: u64) -> Result<ReadOutcome, String> {
    let request = DmaRegion::<KernelHal>::new(live.transport.dma_owner(), 64)
        .map_err(|e| format!("DMA memory: {e}"))?;
    request.write::<u32>(0, 0u32.to_le()); // VIRTIO_BLK_T_IN: the device writes the data
    request.write::<u64>(8, 0u64.to_le());
    request.write::<u8>(16, 0xff);
    let base = request.device_addr();
    let segments = [
        Segment::readable(base, 16),
        Segment::writable(data, 512),
        Segment::writable(base + 16, 1),
    ];
    let queue = live.queues.get_mut(0).ok_or("no queue 0")?;
    queue.add(&segments).map_err(|e| format!("add: {e}"))?;
    let index = queue.index();
    if queue.publish().should_notify() {
        live.transport.notify(index);
    }
    let deadline = crate::clock::uptime_ns() + STRAY_TIMEOUT_NS;
    let (completed, needs_reset) = loop {
        let completed = matches!(live.queues[0].pop_used(), Ok(Some(_)));
        let needs_reset = live
            .transport
            .status()
            .contains(DeviceStatus::DEVICE_NEEDS_RESET);
        if completed || needs_reset || crate::clock::uptime_ns() > deadline {
            break (completed, needs_reset);
        }
        core::hint::spin_loop();
    };
    if !completed {
        let _ = live.transport.reset();
        live.queues[0].reset(|_| {});
    }
    // Read the fault records now rather than wait for the interrupt.
    super::on_fault_interrupt();
    Ok(ReadOutcome {
        completed,
        needs_reset,
        status: request.read::<u8>(16).unwrap_or(0xff),
    })
}

/// A fresh page filled with [`CANARY`] (never shared).
fn canary_page() -> Result<u64, String> {
    let page = memory::allocate_frames(1).map_err(|e| format!("frames: {e:?}"))?;
    fill_canary(page);
    Ok(page)
}

fn fill_canary(page: u64) {
    // SAFETY: a frame of ours, identity-mapped, not shared with any device.
    unsafe { core::ptr::write_bytes(memory::phys_to_virt(page), CANARY, 4096) };
}

/// How many bytes of the canary page changed.
fn canary_changes(page: u64) -> usize {
    let base = memory::phys_to_virt(page);
    (0..4096)
        // SAFETY: our frame, identity-mapped.
        .filter(|&offset| unsafe { base.add(offset).read_volatile() } != CANARY)
        .count()
}

/// The checks both DMA tests make after a device wrote (or tried to) to `page`, which it must
/// not reach: a fault naming `location`, `page` and "write"; the request failed by
/// `iommu::check_request`; not one canary byte changed.
fn blocked_write_problems(
    location: Location,
    device_faults_before: u64,
    page: u64,
    outcome: &ReadOutcome,
) -> Vec<String> {
    let source = super::source_of(location).unwrap_or(0);
    // Only faults recorded during this request count (an older one may name the same page).
    let new_faults = super::faults_of(location).saturating_sub(device_faults_before);
    let fault = super::recent_faults()
        .into_iter()
        .rev()
        .take(new_faults as usize)
        .find(|f| f.address == page);
    let mut problems = Vec::new();
    match fault {
        None => problems.push(format!(
            "no fault recorded at {page:#x} (faults: {:?})",
            super::recent_faults()
        )),
        Some(f) => {
            if f.source != source {
                problems.push(format!(
                    "fault names device {} instead of {location}",
                    f.source_text()
                ));
            }
            if f.read {
                problems.push("fault says read; the device was writing".into());
            }
        }
    }
    // The kernel's rule (the block layer applies it to every request): a request during
    // which its device faulted has failed, whatever status the device wrote.
    let verdict = super::check_request(location, device_faults_before);
    if verdict.is_ok() {
        problems.push(format!(
            "the request counts as successful (status {:#04x}, completed: {})",
            outcome.status, outcome.completed
        ));
    }
    let changed = canary_changes(page);
    if changed != 0 {
        problems.push(format!("{changed} canary bytes changed"));
    }
    log::info!(
        "iommu: blocked-write check: fault recorded: {} ({} fault interrupt(s) so far), request: {}, canary intact: {}",
        fault.is_some(),
        super::counters().fault_interrupts,
        match (outcome.completed, outcome.needs_reset) {
            (true, _) => format!(
                "device said status {:#04x}, failed by the IOMMU check: {}",
                outcome.status,
                verdict.is_err()
            ),
            (false, true) => "failed (device set DEVICE_NEEDS_RESET)".into(),
            (false, false) => "never completed (timed out)".into(),
        },
        changed == 0
    );
    problems
}

/// The first live blk device the virtio self-tests borrowed that negotiated
/// VIRTIO_F_ACCESS_PLATFORM (one that did not bypasses the IOMMU), with its location.
fn with_lent_blk(
    test: impl FnOnce(Location, &mut LiveDevice) -> Result<(), String>,
) -> Result<(), String> {
    let mut devices = lent();
    let device = devices
        .iter_mut()
        .filter(|d| d.device_type == DeviceType::Block)
        .find(|d| {
            matches!(&d.state, TestState::Live(l)
                if l.features & drivers::features::ACCESS_PLATFORM != 0)
        })
        .ok_or("no live blk device behind the IOMMU (ACCESS_PLATFORM negotiated) to test with")?;
    let location = device.location;
    if !matches!(location, Location::Pci(_)) {
        return Err(format!("blk at {location} is not on PCI"));
    }
    test(location, device.live().ok_or("not live")?)
}

fn test_stray_dma() -> Result<(), String> {
    with_lent_blk(|location, live| {
        let canary = canary_page()?;
        let before = super::faults_of(location);
        // The stray part: a device address nobody shared.
        let outcome = read_sector_to(live, crate::hal_impl::device_addr_of(canary));
        let problems = outcome.map(|o| blocked_write_problems(location, before, canary, &o));
        // SAFETY: nobody uses the canary any more (the device completed or was reset).
        let _ = unsafe { memory::free_frames(canary, 1) };
        let problems = problems?;
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    })
}

/// Shares a page, lets the device read into it (so the unit caches the translation in its
/// IOTLB), unshares it, and aims the same read at the same device address again: the
/// invalidation at unshare must have removed the cached translation, so the second write is
/// blocked. Without the invalidation QEMU's IOTLB would still let it through.
fn test_use_after_unshare() -> Result<(), String> {
    with_lent_blk(|location, live| {
        let page = canary_page()?;
        let result = (|| {
            let start = NonNull::new(memory::phys_to_virt(page)).ok_or("null")?;
            let buffer = NonNull::slice_from_raw_parts(start, 4096);
            let owner = live.transport.dma_owner();
            // SAFETY: our own frame; the CPU leaves it alone until the unshare.
            let address = unsafe { KernelHal::share(owner, buffer, Direction::FromDevice) }
                .map_err(|e| format!("share: {e}"))?;
            let before = super::faults_of(location);
            let first = read_sector_to(live, address);
            // SAFETY: the share above; the device completed the request or was reset.
            unsafe { KernelHal::unshare(owner, address, buffer, Direction::FromDevice) };
            let first = first?;
            if !first.completed || first.status != 0 || super::faults_of(location) != before {
                return Err(format!(
                    "the read into the shared page failed (completed {}, status {:#04x})",
                    first.completed, first.status
                ));
            }
            fill_canary(page);
            let before = super::faults_of(location);
            let second = read_sector_to(live, address)?;
            let problems = blocked_write_problems(location, before, page, &second);
            if problems.is_empty() {
                Ok(())
            } else {
                Err(format!("after unshare: {}", problems.join("; ")))
            }
        })();
        // SAFETY: unshared; the device completed or was reset.
        let _ = unsafe { memory::free_frames(page, 1) };
        result
    })
}

/// Shares a page, writable, with another translated device B (as B's driver would share a
/// receive buffer) and aims the blk device A's read at it. The page is mapped, but only in B's
/// domain: A's write must be blocked and recorded against A, A's request must fail, and B's
/// buffer must keep its contents. In one domain shared by all devices the write would land.
fn test_other_devices_buffer() -> Result<(), String> {
    with_lent_blk(|location, live| {
        let other = super::domains()
            .into_iter()
            .map(|(l, _)| l)
            .find(|l| *l != location)
            .ok_or("no second translated device to share a buffer with")?;
        let page = canary_page()?;
        let result = (|| {
            let start = NonNull::new(memory::phys_to_virt(page)).ok_or("null")?;
            let buffer = NonNull::slice_from_raw_parts(start, 4096);
            let b: DmaOwner = other.dma_owner();
            // SAFETY: our own frame; the CPU leaves it alone until the unshare, and device B
            // is never told about it.
            let address = unsafe { KernelHal::share(b, buffer, Direction::FromDevice) }
                .map_err(|e| format!("share with {other}: {e}"))?;
            let in_b = super::translation(b, page);
            let in_a = super::translation(live.transport.dma_owner(), page);
            let before = super::faults_of(location);
            let outcome = read_sector_to(live, address);
            // SAFETY: the share above; A completed its request or was reset, B never saw it.
            unsafe { KernelHal::unshare(b, address, buffer, Direction::FromDevice) };
            let outcome = outcome?;
            let mut problems = Vec::new();
            if !matches!(in_b, Some((_, true, true, _))) {
                problems.push(format!("not mapped writable in {other}'s domain: {in_b:?}"));
            }
            if in_a.is_some() {
                problems.push(format!("also mapped in {location}'s domain: {in_a:?}"));
            }
            problems.extend(blocked_write_problems(location, before, page, &outcome));
            if problems.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "page shared with {other}, written by {location}: {}",
                    problems.join("; ")
                ))
            }
        })();
        // SAFETY: unshared; the device completed or was reset.
        let _ = unsafe { memory::free_frames(page, 1) };
        result
    })
}

/// A fault [`arm_fault`] armed, for the device with this source ID.
static ARMED: spin::Mutex<Option<Fault>> = spin::Mutex::new(None);

/// Makes the next `iommu::check_request` for the PCI device at `location` find a fault (a read
/// or a write at `address`), recorded and counted as the fault interrupt would, as if the unit
/// had blocked a DMA of the device during the request being checked. For the self-tests of the
/// paths that check (net, console). `false` if `location` has no source ID.
pub fn arm_fault(location: Location, read: bool, address: u64) -> bool {
    let Some(source) = super::source_of(location) else {
        return false;
    };
    *ARMED.lock() = Some(Fault {
        source,
        address,
        read,
        // What the unit says for an access to a page that is not mapped (§7.1.3).
        reason: if read { 0x6 } else { 0x5 },
    });
    true
}

/// Called by `check_request`: records the armed fault if it is for `location`.
pub(super) fn fire_armed_fault(location: Location) {
    let Some(source) = super::source_of(location) else {
        return;
    };
    let fault = {
        let mut armed = ARMED.lock();
        match *armed {
            Some(f) if f.source == source => armed.take(),
            _ => None,
        }
    };
    if let Some(fault) = fault {
        log::info!("iommu: self-test: reporting the armed fault for {location}");
        super::record(fault);
    }
}
