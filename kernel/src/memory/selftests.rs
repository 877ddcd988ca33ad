//! In-kernel tests of the frame allocator, DMA regions, the heap and the page
//! tables. Each checks data, counts and error values, so each can fail.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::ptr::NonNull;

use hal::{DmaOwner, DmaRegion, Hal, HalError, PortWidth, PAGE_SIZE};
use x86_64::registers::control::Cr3;
use x86_64::registers::model_specific::{Efer, EferFlags};
use x86_64::structures::paging::PageTableFlags;

use super::frames::{bitmap_words_for, FrameAllocator, FrameError, FRAME_SIZE};
use super::paging::{MapError, MapOutcome, PageTables, PAGE_2M, PAGE_4K};
use super::{heap, RAM_RANGES};
use crate::hal_impl::KernelHal;
use crate::selftest_api::SelfTest;

/// The memory self-tests.
pub fn selftests() -> Vec<SelfTest> {
    vec![
        SelfTest {
            name: "memory: frame runs are aligned, disjoint and in free RAM",
            run: test_machine_frames,
        },
        SelfTest {
            name: "memory: frame allocator contiguity, reuse, double free, exhaustion",
            run: test_private_frame_allocator,
        },
        SelfTest {
            name: "memory: DMA regions are zeroed, aligned, translated, freed on drop",
            run: test_dma_regions,
        },
        SelfTest {
            name: "memory: Hal share checks RAM, port I/O round-trips",
            run: test_share_and_ports,
        },
        SelfTest {
            name: "memory: heap Vec/Box/large allocations are freed and reused",
            run: test_heap,
        },
        SelfTest {
            name: "memory: heap exhaustion returns null and the heap stays usable",
            run: test_heap_exhaustion,
        },
        SelfTest {
            name: "memory: RAM identity-mapped, page 0 and wild addresses unmapped",
            run: test_identity_mapping,
        },
        SelfTest {
            name: "memory: map_mmio maps uncached, idempotently, and rejects bad ranges",
            run: test_map_mmio,
        },
        SelfTest {
            name: "memory: splitting a 2 MiB page keeps the other 511 mappings",
            run: test_split_large_page,
        },
    ]
}

/// `Err(message)` unless `condition`.
fn check(condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if condition {
        Ok(())
    } else {
        Err(message())
    }
}

fn test_machine_frames() -> Result<(), String> {
    let free_before = super::free_frame_count();
    let sizes = [1usize, 3, 8, 17, 64, 1];
    let mut runs: Vec<(u64, usize)> = Vec::new();
    for &count in &sizes {
        let start = super::allocate_frames(count).map_err(|e| format!("allocate({count}): {e}"))?;
        runs.push((start, count));
    }
    let result = (|| -> Result<(), String> {
        check(
            super::free_frame_count() == free_before - sizes.iter().sum::<usize>() as u64,
            || String::from("free-frame count did not drop by the frames allocated"),
        )?;
        let ram = RAM_RANGES.get().ok_or("no RAM ranges")?;
        for (i, &(start, count)) in runs.iter().enumerate() {
            let end = start + count as u64 * FRAME_SIZE;
            check(start % FRAME_SIZE == 0, || {
                format!("run at {start:#x} unaligned")
            })?;
            check(start >= super::LOW_MEMORY_END, || {
                format!("run at {start:#x} is in the first megabyte")
            })?;
            check(ram.contains(start, end), || {
                format!("run {start:#x}..{end:#x} not inside one RAM range")
            })?;
            check(!super::frame_is_free(start), || {
                format!("allocated frame {start:#x} still marked free")
            })?;
            for &(other, other_count) in &runs[i + 1..] {
                let other_end = other + other_count as u64 * FRAME_SIZE;
                check(end <= other || other_end <= start, || {
                    format!("runs {start:#x}..{end:#x} and {other:#x}..{other_end:#x} overlap")
                })?;
            }
        }
        Ok(())
    })();
    for &(start, count) in &runs {
        // SAFETY: allocated above, never used.
        unsafe { super::free_frames(start, count) }.map_err(|e| format!("free: {e}"))?;
    }
    result?;
    check(super::free_frame_count() == free_before, || {
        String::from("free-frame count not restored after freeing")
    })
}

/// A private allocator over 256 made-up frames at 1 TiB (never touched: the
/// allocator only flips bits), with holes at frame 5 and frames 40..43.
fn test_private_frame_allocator() -> Result<(), String> {
    const BASE: u64 = 1 << 40;
    const FRAMES: u64 = 256;
    let frame = |i: u64| BASE + i * FRAME_SIZE;
    let mut bitmap = vec![0u64; bitmap_words_for(FRAMES)];
    let mut frames = FrameAllocator::new(&mut bitmap, BASE, FRAMES).map_err(|e| e.to_string())?;
    check(frames.free_frames() == 0, || {
        String::from("new allocator not all in use")
    })?;
    frames.release_range(BASE, FRAMES * FRAME_SIZE);
    frames.reserve_range(frame(5), 1);
    frames.reserve_range(frame(40), 3 * FRAME_SIZE);
    check(frames.free_frames() == FRAMES - 4, || {
        format!(
            "{} free frames, expected {}",
            frames.free_frames(),
            FRAMES - 4
        )
    })?;
    check(
        frames.allocate(0) == Err(FrameError::InvalidArgument),
        || String::from("allocate(0) accepted"),
    )?;

    // Next-fit with holes: each run must skip the reserved frames.
    let a = frames.allocate(4).map_err(|e| e.to_string())?;
    let b = frames.allocate(10).map_err(|e| e.to_string())?;
    let c = frames.allocate(30).map_err(|e| e.to_string())?;
    check(a == frame(0), || {
        format!("first run at {a:#x}, expected {:#x}", frame(0))
    })?;
    check(b == frame(6), || {
        format!("10-frame run at {b:#x} should skip hole 5 -> frame 6")
    })?;
    check(c == frame(43), || {
        format!("30-frame run at {c:#x} should skip hole 40..43")
    })?;
    let expected_free = [
        (3, false),
        (4, true),
        (5, false),
        (10, false),
        (20, true),
        (42, false),
    ];
    for (i, free) in expected_free {
        check(frames.is_free(frame(i)) == free, || {
            format!("bitmap says frame {i} free = {}, expected {free}", !free)
        })?;
    }

    // Double free and bad arguments change nothing.
    frames.free(b, 10).map_err(|e| format!("free(b): {e}"))?;
    check(frames.free(b, 10) == Err(FrameError::NotAllocated), || {
        String::from("double free not detected")
    })?;
    check(
        frames.free(a + 1, 1) == Err(FrameError::InvalidArgument),
        || String::from("unaligned free accepted"),
    )?;
    check(
        frames.free(frame(FRAMES), 1) == Err(FrameError::InvalidArgument),
        || String::from("free outside the span accepted"),
    )?;

    // Reuse: freeing the latest run pulls the cursor back onto it.
    frames.free(c, 30).map_err(|e| format!("free(c): {e}"))?;
    let c_again = frames.allocate(30).map_err(|e| e.to_string())?;
    check(c_again == c, || {
        format!("freed run {c:#x} not reused (got {c_again:#x})")
    })?;

    // A limit keeps runs below it.
    let low = frames
        .allocate_below(2, frame(16))
        .map_err(|e| e.to_string())?;
    check(low + 2 * FRAME_SIZE <= frame(16), || {
        format!("allocate_below gave {low:#x}, above the limit")
    })?;
    check(
        frames.allocate_below(8, frame(5)) == Err(FrameError::OutOfMemory),
        || String::from("allocate_below found 8 frames where only 1 is free"),
    )?;

    // Exhaustion: too long a run fails; taking every frame then fails cleanly;
    // one freed frame is usable again.
    check(
        frames.allocate(FRAMES) == Err(FrameError::OutOfMemory),
        || String::from("a run longer than free memory succeeded"),
    )?;
    let mut singles = 0;
    let mut last = 0;
    while let Ok(phys) = frames.allocate(1) {
        singles += 1;
        last = phys;
        if singles > FRAMES {
            return Err(String::from("allocator handed out more frames than it has"));
        }
    }
    check(frames.free_frames() == 0, || {
        String::from("frames left after exhaustion")
    })?;
    check(frames.allocate(1) == Err(FrameError::OutOfMemory), || {
        String::from("allocation after exhaustion did not fail")
    })?;
    frames.free(last, 1).map_err(|e| e.to_string())?;
    check(frames.allocate(1) == Ok(last), || {
        String::from("freed frame not handed out after exhaustion")
    })
}

fn region_is_zero(region: &DmaRegion<KernelHal>) -> bool {
    let mut chunk = [0u8; 512];
    (0..region.len())
        .step_by(chunk.len())
        .all(|offset| region.read_bytes(offset, &mut chunk) && chunk.iter().all(|&b| b == 0))
}

fn test_dma_regions() -> Result<(), String> {
    let free_before = super::free_frame_count();
    // In strict IOMMU mode mapping the region may take a page-table frame too.
    let tables_before = crate::iommu::table_frames();
    let region = DmaRegion::<KernelHal>::new(DmaOwner::NO_DEVICE, 3 * PAGE_SIZE + 1)
        .map_err(|e| e.to_string())?;
    let tables = crate::iommu::table_frames() - tables_before;
    let device_addr = region.device_addr();
    check(region.pages() == 4, || {
        format!("{} pages for 3 pages + 1 byte", region.pages())
    })?;
    check(device_addr % PAGE_SIZE as u64 == 0, || {
        format!("device address {device_addr:#x} unaligned")
    })?;
    check(
        super::free_frame_count() == free_before - 4 - tables,
        || String::from("4 frames not taken from the allocator"),
    )?;
    let cpu = region.as_ptr().as_ptr() as u64;
    let walked = super::translate(cpu).ok_or("DMA memory is not mapped")?;
    check(
        walked.phys == crate::hal_impl::phys_of_device_addr(device_addr),
        || {
            format!(
                "CPU {cpu:#x} maps to {:#x}, device told {device_addr:#x}",
                walked.phys
            )
        },
    )?;
    let last = super::translate(cpu + region.len() as u64 - 1).ok_or("end not mapped")?;
    check(last.phys == walked.phys + region.len() as u64 - 1, || {
        String::from("DMA region not physically contiguous")
    })?;
    check(region_is_zero(&region), || {
        String::from("fresh DMA region not zeroed")
    })?;

    // Dirty it, free it, and allocate the same size: the same frames come back
    // (the allocator reuses the latest freed run) and must be zero again.
    for offset in (0..region.len()).step_by(8) {
        region.write(offset, 0xa5a5_a5a5_a5a5_a5a5u64);
    }
    check(region.read::<u32>(100) == Some(0xa5a5_a5a5), || {
        String::from("write to DMA region did not stick")
    })?;
    drop(region);
    // IOMMU page tables stay (`iommu/page_table.rs`): only the region's frames come back.
    check(super::free_frame_count() == free_before - tables, || {
        String::from("dropping the region did not return its frames")
    })?;
    check(super::frame_is_free(device_addr), || {
        String::from("freed frame not free")
    })?;
    let again = DmaRegion::<KernelHal>::new(DmaOwner::NO_DEVICE, 4 * PAGE_SIZE)
        .map_err(|e| e.to_string())?;
    // The allocator hands out the run after its latest allocation, so the dirty frames come
    // back only if nothing was allocated after them: not so when strict IOMMU mode took a
    // page-table frame to map them (then only the zeroing below is checked).
    check(tables != 0 || again.device_addr() == device_addr, || {
        format!(
            "dirty frames {device_addr:#x} not reused (got {:#x})",
            again.device_addr()
        )
    })?;
    check(region_is_zero(&again), || {
        String::from("reused DMA frames not zeroed")
    })?;
    drop(again);

    check(
        matches!(
            DmaRegion::<KernelHal>::new(DmaOwner::NO_DEVICE, 0),
            Err(HalError::InvalidArgument)
        ),
        || String::from("zero-byte DMA region accepted"),
    )?;
    let too_many = (super::free_frame_count() as usize + 1) * PAGE_SIZE;
    check(
        matches!(
            DmaRegion::<KernelHal>::new(DmaOwner::NO_DEVICE, too_many),
            Err(HalError::OutOfMemory)
        ),
        || String::from("DMA region larger than free memory did not fail"),
    )?;
    let after =
        DmaRegion::<KernelHal>::new(DmaOwner::NO_DEVICE, PAGE_SIZE).map_err(|e| e.to_string())?;
    drop(after);
    let tables = crate::iommu::table_frames() - tables_before;
    check(super::free_frame_count() == free_before - tables, || {
        String::from("free-frame count changed across the test")
    })
}

fn test_share_and_ports() -> Result<(), String> {
    use hal::Direction;
    let buffer = vec![7u8; 10_000];
    let slice = NonNull::from(buffer.as_slice());
    // SAFETY: the buffer outlives the share and is not touched in between.
    let device_addr = unsafe { KernelHal::share(DmaOwner::NO_DEVICE, slice, Direction::ToDevice) }
        .map_err(|e| format!("share of a heap buffer: {e}"))?;
    let cpu = buffer.as_ptr() as u64;
    let walked = super::translate(cpu).ok_or("heap buffer not mapped")?;
    check(
        walked.phys == crate::hal_impl::phys_of_device_addr(device_addr),
        || {
            format!(
                "shared at device {device_addr:#x}, CPU address maps to {:#x}",
                walked.phys
            )
        },
    )?;
    // SAFETY: matching the share above.
    unsafe { KernelHal::unshare(DmaOwner::NO_DEVICE, device_addr, slice, Direction::ToDevice) };

    let on_stack = [1u8; 64];
    // SAFETY: as above; the stack buffer lives across both calls.
    let stack_addr = unsafe {
        KernelHal::share(
            DmaOwner::NO_DEVICE,
            NonNull::from(&on_stack[..]),
            Direction::FromDevice,
        )
    }
    .map_err(|e| format!("share of a stack buffer: {e}"))?;
    // SAFETY: matching the share above.
    unsafe {
        KernelHal::unshare(
            DmaOwner::NO_DEVICE,
            stack_addr,
            NonNull::from(&on_stack[..]),
            Direction::FromDevice,
        )
    };

    let not_ram = |addr: u64, len: usize| {
        let fake = core::ptr::slice_from_raw_parts_mut(addr as *mut u8, len);
        NonNull::new(fake).map(|buffer| {
            // SAFETY: `share` must refuse these without touching them.
            unsafe { KernelHal::share(DmaOwner::NO_DEVICE, buffer, Direction::Bidirectional) }
        })
    };
    check(matches!(not_ram(0xfee0_0000, 16), Some(Err(_))), || {
        String::from("sharing the LAPIC MMIO page was accepted")
    })?;
    let (_, ram_end) = RAM_RANGES
        .get()
        .ok_or("no RAM ranges")?
        .iter()
        .last()
        .ok_or("no RAM")?;
    check(matches!(not_ram(ram_end - 8, 16), Some(Err(_))), || {
        String::from("a buffer running off the end of RAM was accepted")
    })?;
    check(
        matches!(not_ram(cpu, 0), Some(Err(HalError::InvalidArgument))),
        || String::from("an empty buffer was accepted"),
    )?;

    // Port I/O: the 16550 scratch register (COM1 + 7) keeps what is written.
    const COM1_SCRATCH: u16 = 0x3f8 + 7;
    for pattern in [0x5au32, 0xa5] {
        // SAFETY: the scratch register has no function; nothing else uses it.
        let read = unsafe {
            KernelHal::port_write(COM1_SCRATCH, PortWidth::Byte, pattern)
                .and_then(|()| KernelHal::port_read(COM1_SCRATCH, PortWidth::Byte))
        }
        .map_err(|e| e.to_string())?;
        check(read == pattern, || {
            format!("serial scratch register read {read:#x} after writing {pattern:#x}")
        })?;
    }
    Ok(())
}

fn test_heap() -> Result<(), String> {
    let before = heap::stats();
    let in_heap = |ptr: *const u8| {
        let addr = ptr as u64;
        addr >= before.bottom && addr < before.bottom + before.size as u64
    };
    {
        let boxed = Box::new([0x1234_5678u32; 1024]);
        check(boxed.iter().all(|&v| v == 0x1234_5678), || {
            String::from("Box contents")
        })?;
        check(in_heap(boxed.as_ptr().cast()), || {
            String::from("Box outside the heap")
        })?;

        // Growing a Vec moves it through ever larger blocks.
        let mut numbers: Vec<u64> = Vec::new();
        for i in 0..5_000u64 {
            numbers.push(i * 3);
        }
        let sum: u64 = numbers.iter().sum();
        check(sum == 3 * (4_999 * 5_000 / 2), || format!("Vec sum {sum}"))?;

        // A large block: filled by memset, then checked at a prime stride
        // (every byte would take minutes on a slow emulated CPU).
        let mut large = vec![0xc3u8; 4 << 20];
        large[(4 << 20) - 1] = 0x3c;
        let sampled_ok = (0..(4 << 20) - 1).step_by(4093).all(|i| large[i] == 0xc3);
        check(
            sampled_ok && large.len() == 4 << 20 && large[(4 << 20) - 1] == 0x3c,
            || String::from("4 MiB Vec contents"),
        )?;
        check(heap::stats().used >= before.used + (4 << 20), || {
            String::from("heap usage did not grow by the 4 MiB allocation")
        })?;
        let text = format!("{}-{}", "heap", 42);
        check(text == "heap-42", || format!("format! gave {text}"))?;
    }
    let after = heap::stats();
    check(after.used == before.used, || {
        format!(
            "heap used {} bytes before, {} after freeing",
            before.used, after.used
        )
    })?;

    // First-fit: a block freed is the block handed out next for the same size.
    let first = vec![1u8; 1 << 20];
    let first_addr = first.as_ptr();
    drop(first);
    let second = vec![2u8; 1 << 20];
    check(second.as_ptr() == first_addr, || {
        format!(
            "freed 1 MiB at {first_addr:p} not reused (got {:p})",
            second.as_ptr()
        )
    })
}

fn test_heap_exhaustion() -> Result<(), String> {
    let before = heap::stats();
    let too_big = Layout::from_size_align(before.size + 1, 8).map_err(|e| format!("{e}"))?;
    if let Some(ptr) = heap::try_allocate_raw(too_big) {
        // SAFETY: just allocated with this layout.
        unsafe { heap::free_raw(ptr, too_big) };
        return Err(String::from(
            "allocating more than the whole heap succeeded",
        ));
    }
    let after = heap::stats();
    check(after.failures == before.failures + 1, || {
        String::from("failed allocation was not counted")
    })?;
    check(after.used == before.used, || {
        String::from("failed allocation changed usage")
    })?;
    let still_works = Box::new(0x55aa_u64);
    check(*still_works == 0x55aa, || {
        String::from("heap unusable after a failure")
    })
}

fn test_identity_mapping() -> Result<(), String> {
    let (root, _) = Cr3::read();
    let live_root = super::KERNEL_TABLES
        .lock()
        .as_ref()
        .map(|tables| tables.root())
        .ok_or("no kernel page tables")?;
    check(root.start_address().as_u64() == live_root, || {
        format!(
            "CR3 holds {:#x}, kernel tables at {live_root:#x}",
            root.start_address()
        )
    })?;

    let on_stack = 0u64;
    let code = test_identity_mapping as *const () as usize as u64;
    let heap_box = Box::new(1u8);
    let samples = [
        ("stack", &on_stack as *const u64 as u64),
        ("code", code),
        ("heap", &*heap_box as *const u8 as u64),
    ];
    for (what, addr) in samples {
        let walked = super::translate(addr).ok_or_else(|| format!("{what} {addr:#x} unmapped"))?;
        check(walked.phys == addr, || {
            format!("{what} {addr:#x} maps to {:#x}", walked.phys)
        })?;
        check(!walked.flags.contains(PageTableFlags::NO_CACHE), || {
            format!("{what} memory mapped uncached")
        })?;
    }
    for (start, end) in RAM_RANGES.get().ok_or("no RAM ranges")?.iter() {
        for addr in [start, end - 1, start + (end - start) / 2] {
            let phys = super::translate(addr).map(|t| t.phys);
            check(phys == Some(addr), || {
                format!("RAM byte {addr:#x} maps to {phys:x?}")
            })?;
        }
    }
    for wild in [0u64, 0x10, 0xdead_beef_0000, 0x7ead_beef_0000, u64::MAX] {
        check(super::translate(wild).is_none(), || {
            format!("{wild:#x} is mapped")
        })?;
    }
    Ok(())
}

/// A page that is not RAM on pc, q35 and microvm: the HPET's register page
/// (no accesses are made if the machine has no HPET besides one read).
const TEST_MMIO_PAGE: u64 = 0xfed0_0000;

fn test_map_mmio() -> Result<(), String> {
    let nx = Efer::read().contains(EferFlags::NO_EXECUTE_ENABLE);
    let ptr = super::map_mmio(TEST_MMIO_PAGE, 0x400).map_err(|e| e.to_string())?;
    check(ptr.as_ptr() as u64 == TEST_MMIO_PAGE, || {
        format!("map_mmio returned {ptr:p} for {TEST_MMIO_PAGE:#x}")
    })?;
    let walked = super::translate(TEST_MMIO_PAGE + 0x10).ok_or("MMIO page not mapped")?;
    check(
        walked.phys == TEST_MMIO_PAGE + 0x10 && walked.page_size == PAGE_4K,
        || format!("MMIO page walks to {walked:x?}"),
    )?;
    let uncached = PageTableFlags::NO_CACHE | PageTableFlags::WRITE_THROUGH;
    check(
        walked.flags.contains(uncached | PageTableFlags::WRITABLE),
        || format!("MMIO flags {:?} lack PCD|PWT|RW", walked.flags),
    )?;
    check(
        walked.flags.contains(PageTableFlags::NO_EXECUTE) == nx,
        || format!("MMIO NX bit {:?} but EFER.NXE = {nx}", walked.flags),
    )?;
    // The mapping is live in CR3: this read must not fault. The HPET's
    // capabilities register is read-only and side-effect free.
    // SAFETY: mapped uncached just above; a read of this register has no effect.
    let capabilities = unsafe { ptr.as_ptr().cast::<u32>().read_volatile() };
    log::debug!("HPET capabilities read through the new mapping: {capabilities:#x}");

    let free_before = super::free_frame_count();
    let again = super::map_mmio(TEST_MMIO_PAGE, 0x1000).map_err(|e| e.to_string())?;
    check(
        again == ptr && super::free_frame_count() == free_before,
        || String::from("mapping the same MMIO twice changed something"),
    )?;

    // An unaligned window crossing a page boundary maps both pages.
    let across = super::map_mmio(TEST_MMIO_PAGE + 0x1ff0, 0x20).map_err(|e| e.to_string())?;
    check(across.as_ptr() as u64 == TEST_MMIO_PAGE + 0x1ff0, || {
        String::from("unaligned MMIO pointer lost its offset")
    })?;
    for page in [TEST_MMIO_PAGE + 0x1000, TEST_MMIO_PAGE + 0x2000] {
        let flags = super::translate(page)
            .map(|t| t.flags)
            .unwrap_or(PageTableFlags::empty());
        check(flags.contains(uncached), || {
            format!("{page:#x} not mapped uncached")
        })?;
    }

    // RAM stays RAM: asking for a heap page returns it, still cached.
    let heap_box = Box::new([0u8; 64]);
    let heap_addr = heap_box.as_ptr() as u64;
    super::map_mmio(heap_addr, 64).map_err(|e| e.to_string())?;
    let heap_flags = super::translate(heap_addr)
        .map(|t| t.flags)
        .unwrap_or(PageTableFlags::empty());
    check(!heap_flags.contains(PageTableFlags::NO_CACHE), || {
        String::from("map_mmio made RAM uncached")
    })?;

    let rejected = [
        (0u64, 16usize, HalError::MapFailed, "page 0"),
        (
            1 << 48,
            4096,
            HalError::MapFailed,
            "beyond the physical address width",
        ),
        (
            u64::MAX - 10,
            100,
            HalError::InvalidArgument,
            "overflowing range",
        ),
        (TEST_MMIO_PAGE, 0, HalError::InvalidArgument, "zero size"),
    ];
    for (phys, size, expected, what) in rejected {
        let result = super::map_mmio(phys, size);
        check(result == Err(expected), || {
            format!("{what}: got {result:?}, expected {expected:?}")
        })?;
    }
    check(super::translate(0).is_none(), || {
        String::from("page 0 got mapped")
    })
}

/// On a private hierarchy (never loaded into CR3): map a 2 MiB page, then give
/// one 4 KiB page inside it other attributes; the rest must be unchanged.
fn test_split_large_page() -> Result<(), String> {
    const BASE: u64 = 0x4000_0000;
    let free_before = super::free_frame_count();
    let mut source = || super::allocate_frames(1);
    let mut tables = PageTables::new(&mut source).map_err(|e| format!("{e:?}"))?;
    let ram_flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
    let mmio_flags = ram_flags | PageTableFlags::NO_CACHE | PageTableFlags::WRITE_THROUGH;
    let result = (|| -> Result<(), String> {
        let outcome = tables.map_2m(BASE, BASE, ram_flags, &mut source);
        check(outcome == Ok(MapOutcome::Mapped), || {
            format!("map_2m: {outcome:?}")
        })?;
        let large = tables
            .translate(BASE + 0x12345)
            .ok_or("2 MiB page not mapped")?;
        check(
            large.page_size == PAGE_2M && large.phys == BASE + 0x12345,
            || format!("2 MiB page walks to {large:x?}"),
        )?;

        let target = BASE + 0x5000;
        let outcome = tables.map_4k(target, target, mmio_flags, &mut source);
        check(outcome == Ok(MapOutcome::AttributesChanged), || {
            format!("map_4k inside the large page: {outcome:?}")
        })?;
        let small = tables.translate(target + 8).ok_or("split page unmapped")?;
        check(
            small.page_size == PAGE_4K
                && small.phys == target + 8
                && small.flags.contains(PageTableFlags::NO_CACHE),
            || format!("changed page walks to {small:x?}"),
        )?;
        for i in (0..512u64).filter(|&i| i != 5) {
            let virt = BASE + i * PAGE_4K;
            let walked = tables
                .translate(virt)
                .ok_or_else(|| format!("{virt:#x} lost"))?;
            check(
                walked.phys == virt && walked.page_size == PAGE_4K && walked.flags == ram_flags,
                || format!("neighbour {virt:#x} walks to {walked:x?}"),
            )?;
        }
        let again = tables.map_4k(target, target, mmio_flags, &mut source);
        check(again == Ok(MapOutcome::AlreadyMapped), || {
            format!("remap: {again:?}")
        })?;
        let elsewhere = tables.map_4k(target, target + PAGE_4K, mmio_flags, &mut source);
        check(elsewhere == Err(MapError::Conflict), || {
            format!("remapping to another frame: {elsewhere:?}")
        })?;
        let over = tables.map_2m(BASE, BASE, ram_flags, &mut source);
        check(over == Err(MapError::Conflict), || {
            format!("2 MiB over a table: {over:?}")
        })?;
        check(tables.translate(BASE + PAGE_2M).is_none(), || {
            String::from("the next 2 MiB got mapped")
        })
    })();
    tables.destroy(&mut |frame| {
        // SAFETY: a table frame of this private hierarchy, which is gone now.
        if let Err(error) = unsafe { super::free_frames(frame, 1) } {
            log::error!("freeing test table {frame:#x}: {error}");
        }
    });
    result?;
    check(super::free_frame_count() == free_before, || {
        String::from("private page tables leaked frames")
    })
}
