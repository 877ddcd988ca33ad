//! The `iommu` benchmark section (`mode=bench bench=iommu`; `x.py bench --section iommu` boots
//! it twice, with QEMU's intel-iommu in strict mode and without an IOMMU, and puts the rows side
//! by side).
//!
//! | name | what |
//! | --- | --- |
//! | `blk.randread.qd1.irq`, `blk.randread.qd32.irq` | the block benchmark's 4 KiB random reads on registered DMA buffers (`block/bench.rs`): mapped once when allocated, so strict mode adds nothing per request in the guest; what changes is QEMU translating every access |
//! | `blk.randread.qd1.shared.irq` | the same reads through the blocking `Disk::read` on an ordinary heap buffer: each request shares (maps) and unshares (unmaps, invalidates the IOTLB, waits) the buffer |
//! | `iommu.share_unshare_4k.poll` | `Hal::share` + `Hal::unshare` of one 4 KiB page, no device: the guest's cost of one mapping's life |
//! | `iommu.share_unshare_64k.poll` | the same for 16 pages: still one IOTLB invalidation (one page-selective descriptor with address mask 4), so the wait is paid once per buffer, not per page |
//! | `iommu.share_unshare_64k_per_page.poll` | the same, invalidating page by page (16 descriptors and 16 waits): what the batching saves |
//!
//! Each line carries `iommu=strict|none` and, where it applies, the pages mapped and the IOTLB
//! invalidations per request (from the `iommu` counters).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use hal::{Direction, DmaOwner, Hal};

use crate::block::bench::{bench_seconds, run_selected};
use crate::block::pattern::Rng;
use crate::hal_impl::KernelHal;
use crate::println;

/// Pairs timed in the share/unshare micro-benchmark.
const PAIRS: u64 = 20_000;

/// Set while the `_per_page` row runs: `iommu::release` then invalidates page by page.
pub static PER_PAGE_INVALIDATION: AtomicBool = AtomicBool::new(false);

/// Runs the section (see the module docs).
pub fn run() -> Result<(), String> {
    let mode = if super::strict() { "strict" } else { "none" };
    println!(
        "bench: iommu.setup iommu={mode} active={}",
        super::active_mode().map_or("none", super::Mode::name)
    );
    run_selected(&["blk.randread.qd1", "blk.randread.qd32"])?;
    shared_reads(mode)?;
    share_unshare(mode, 1, "")?;
    share_unshare(mode, 16, "")?;
    PER_PAGE_INVALIDATION.store(true, Ordering::Relaxed);
    let per_page = share_unshare(mode, 16, "_per_page");
    PER_PAGE_INVALIDATION.store(false, Ordering::Relaxed);
    per_page
}

fn ticks_to_us(ticks: u64) -> f64 {
    crate::clock::ticks_to_ns(ticks) as f64 / 1000.0
}

/// 4 KiB random reads, one at a time, into a heap buffer the driver shares per request.
fn shared_reads(mode: &str) -> Result<(), String> {
    let seconds = bench_seconds();
    crate::block::with_disks(|disks| {
        let disk = disks.first_mut().ok_or("no disk to measure")?;
        let slots = disk.capacity_sectors() / 8;
        if slots == 0 {
            return Err(String::from("disk too small"));
        }
        let mut buffer = vec![0u8; 4096];
        let mut rng = Rng::new(0x10_33u64);
        let duration = (seconds * crate::clock::tsc_hz() as f64) as u64;
        for _ in 0..crate::block::bench::WARMUP_REQUESTS {
            disk.read((rng.next_u64() % slots) * 8, &mut buffer)
                .map_err(|e| format!("warm-up read: {e}"))?;
        }
        let before = super::counters();
        let start = crate::clock::tsc();
        let mut requests = 0u64;
        while crate::clock::tsc() - start < duration {
            disk.read((rng.next_u64() % slots) * 8, &mut buffer)
                .map_err(|e| format!("read: {e}"))?;
            requests += 1;
        }
        let ticks = crate::clock::tsc() - start;
        let after = super::counters();
        let per_req = |n: u64| n as f64 / requests.max(1) as f64;
        println!(
            "bench: blk.randread.qd1.shared.irq stack=ours iommu={mode} iops={:.0} us_per_req={:.2} pages_mapped_per_req={:.3} invalidations_per_req={:.3} requests={requests} seconds={:.3} depth=1 request_bytes=4096",
            requests as f64 / (ticks_to_us(ticks) / 1e6),
            ticks_to_us(ticks) / requests.max(1) as f64,
            per_req(after.pages_mapped - before.pages_mapped),
            per_req(after.invalidations - before.invalidations),
            ticks_to_us(ticks) / 1e6
        );
        Ok(())
    })
}

/// Shares and unshares `pages` pages `PAIRS` times, no device involved.
fn share_unshare(mode: &str, pages: usize, variant: &str) -> Result<(), String> {
    // Shared with the first translated device (mapped in its domain); no IOMMU: any owner.
    let owner = super::domains()
        .first()
        .map_or(DmaOwner::NO_DEVICE, |(location, _)| location.dma_owner());
    let phys = crate::memory::allocate_frames(pages).map_err(|e| format!("frames: {e:?}"))?;
    let start_ptr = NonNull::new(crate::memory::phys_to_virt(phys)).ok_or("null frame")?;
    let buffer = NonNull::slice_from_raw_parts(start_ptr, pages * 4096);
    let before = super::counters();
    let start = crate::clock::tsc();
    let mut result = Ok(());
    for _ in 0..PAIRS {
        // SAFETY: our own frame, untouched by the CPU while shared, never given to a device.
        match unsafe { KernelHal::share(owner, buffer, Direction::FromDevice) } {
            // SAFETY: the share just made; no device was told about it.
            Ok(address) => unsafe {
                KernelHal::unshare(owner, address, buffer, Direction::FromDevice)
            },
            Err(e) => {
                result = Err(format!("share: {e}"));
                break;
            }
        }
    }
    let ticks = crate::clock::tsc() - start;
    let after = super::counters();
    // SAFETY: unshared above; nothing uses the frames any more.
    let _ = unsafe { crate::memory::free_frames(phys, pages) };
    result?;
    println!(
        "bench: iommu.share_unshare_{}k{variant}.poll stack=ours iommu={mode} ns_per_pair={:.0} invalidations_per_pair={:.3} pairs={PAIRS}",
        pages * 4,
        crate::clock::ticks_to_ns(ticks) as f64 / PAIRS as f64,
        (after.invalidations - before.invalidations) as f64 / PAIRS as f64
    );
    Ok(())
}
