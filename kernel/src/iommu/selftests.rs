//! Self-tests of DMA isolation (`mode=selftest`).
//!
//! - The DMAR parser against good and hostile tables (always).
//! - `expect.iommu=MODE`: the mode in force is MODE (so a scenario that wants strict mode
//!   fails if the IOMMU was not found or not set up).
//! - In strict mode: a share maps exactly its pages with the right rights and an unshare
//!   unmaps them; and the **stray DMA** test: a virtio-blk read whose data descriptor points
//!   at a page that was never shared (a canary page filled with a pattern). The IOMMU must
//!   block the device's write, record a fault naming the device, the page and "write", the
//!   request must not complete successfully, and the canary must be unchanged.
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
use hal::{Direction, DmaRegion, Hal};

use super::Mode;
use crate::hal_impl::KernelHal;
use crate::memory;
use crate::selftest_api::SelfTest;
use crate::virtio::test_bringup::lent;

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
    vec![SelfTest {
        name: "iommu: a blk DMA to a never-shared page faults, fails, and leaves it unchanged",
        run: test_stray_dma,
    }]
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
    // Two pages of our own, so that nothing else shares them.
    let phys = memory::allocate_frames(2).map_err(|e| format!("frames: {e:?}"))?;
    let result = (|| {
        let start = NonNull::new(memory::phys_to_virt(phys + 100)).ok_or("null")?;
        let buffer = NonNull::slice_from_raw_parts(start, 4096);
        let before = super::counters();
        // SAFETY: our own frames, untouched until the unshare below.
        let address = unsafe { KernelHal::share(buffer, Direction::ToDevice) }
            .map_err(|e| format!("share: {e}"))?;
        let mapped: Vec<_> = [phys, phys + 4096]
            .iter()
            .map(|&page| super::translation(page))
            .collect();
        // SAFETY: the share above, the device never saw it.
        unsafe { KernelHal::unshare(address, buffer, Direction::ToDevice) };
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
            if let Some(left) = super::translation(*page) {
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

fn test_stray_dma() -> Result<(), String> {
    let mut devices = lent();
    let Some(device) = devices
        .iter_mut()
        .find(|d| d.device_type == DeviceType::Block && d.is_live())
    else {
        return Err("no live blk device to test with".into());
    };
    let Location::Pci(pci) = device.location else {
        return Err(format!("blk at {} is not on PCI", device.location));
    };
    let location = device.location;
    let source = super::source_of(location).unwrap_or(0);
    let live = device.live().ok_or("not live")?;

    let canary = memory::allocate_frames(1).map_err(|e| format!("frames: {e:?}"))?;
    let canary_ptr = memory::phys_to_virt(canary);
    // SAFETY: a frame just allocated to us, identity-mapped.
    unsafe { core::ptr::write_bytes(canary_ptr, CANARY, 4096) };
    let request = DmaRegion::<KernelHal>::new(64).map_err(|e| format!("DMA memory: {e}"))?;
    request.write::<u32>(0, 0u32.to_le()); // VIRTIO_BLK_T_IN: the device writes the data
    request.write::<u64>(8, 0u64.to_le());
    request.write::<u8>(16, 0xff);
    let base = request.device_addr();
    let segments = [
        Segment::readable(base, 16),
        // The stray part: a device address nobody shared.
        Segment::writable(crate::hal_impl::device_addr_of(canary), 512),
        Segment::writable(base + 16, 1),
    ];
    let faults_before = super::counters().faults;
    let device_faults_before = super::faults_of(location);
    let queue = live.queues.get_mut(0).ok_or("no queue 0")?;
    queue.add(&segments).map_err(|e| format!("add: {e}"))?;
    let index = queue.index();
    if queue.publish().should_notify() {
        live.transport.notify(index);
    }
    let deadline = crate::clock::uptime_ns() + STRAY_TIMEOUT_NS;
    let mut completed = None;
    let mut needs_reset;
    loop {
        super::on_fault_interrupt();
        if let Ok(Some(used)) = live.queues[0].pop_used() {
            completed = Some(used);
        }
        needs_reset = live
            .transport
            .status()
            .contains(DeviceStatus::DEVICE_NEEDS_RESET);
        let faulted = super::counters().faults > faults_before;
        if (faulted && (needs_reset || completed.is_some())) || crate::clock::uptime_ns() > deadline
        {
            break;
        }
        core::hint::spin_loop();
    }
    // Whatever happened, the device lets go of the request before its memory is freed.
    let _ = live.transport.reset();
    live.queues[0].reset(|_| {});
    drop(devices);

    let status = request.read::<u8>(16).unwrap_or(0xff);
    let mut changed = 0usize;
    for offset in 0..4096 {
        // SAFETY: our canary frame.
        if unsafe { canary_ptr.add(offset).read_volatile() } != CANARY {
            changed += 1;
        }
    }
    // SAFETY: nobody (CPU or device: it was reset) uses the canary any more.
    let _ = unsafe { memory::free_frames(canary, 1) };

    let fault = super::recent_faults()
        .into_iter()
        .rev()
        .find(|f| f.address == canary);
    let mut problems = Vec::new();
    match fault {
        None => problems.push(format!(
            "no fault recorded at {canary:#x} (faults: {:?})",
            super::recent_faults()
        )),
        Some(f) => {
            if f.source != source {
                problems.push(format!(
                    "fault names device {} instead of {pci}",
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
            "the request counts as successful (status {status:#04x}, completed: {})",
            completed.is_some()
        ));
    }
    if changed != 0 {
        problems.push(format!("{changed} canary bytes changed"));
    }
    log::info!(
        "iommu: stray DMA test: fault recorded: {} ({} fault interrupt(s) so far), request: {}, canary intact: {}",
        fault.is_some(),
        super::counters().fault_interrupts,
        match (completed, needs_reset) {
            (Some(_), _) => format!(
                "device said status {status:#04x}, failed by the IOMMU check: {}",
                verdict.is_err()
            ),
            (None, true) => "failed (device set DEVICE_NEEDS_RESET)".into(),
            (None, false) => "never completed (timed out)".into(),
        },
        changed == 0
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
