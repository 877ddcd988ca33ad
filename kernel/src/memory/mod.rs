//! Memory: physical frames, the kernel's page tables, the heap, and MMIO
//! mapping.
//!
//! What [`init`] does, in order:
//!
//! 1. **Frames** ([`frames`]): a bitmap over the usable RAM of the PVH memory
//!    map (e820 type 1), minus the first megabyte (BIOS data, EBDA, option
//!    ROMs, and page 0, which stays unmapped) and minus every range the boot
//!    code reported as holding its structures. The bitmap itself lives in the
//!    first free stretch of RAM big enough for it.
//! 2. **Page tables** ([`paging`]): the boot code identity-mapped the first
//!    4 GiB with 2 MiB pages, cached, including MMIO holes and page 0. The
//!    kernel replaces that with its own tables that identity-map exactly the
//!    RAM of the memory map (usable and ACPI ranges, at any address, also above
//!    4 GiB) plus the boot structures, write-back cached, with 2 MiB pages
//!    where a whole aligned 2 MiB is RAM and 4 KiB pages at the edges. Nothing
//!    else is mapped: page 0 (see `collect_ram_ranges`) and unknown addresses
//!    fault. Device registers are
//!    added on request by [`map_mmio`], uncached (Intel SDM vol. 3A 4.9 and
//!    11.12: PCD|PWT select the UC memory type through the default PAT).
//! 3. **Heap** ([`heap`]): `linked_list_allocator` over one contiguous run of
//!    frames; after this `alloc` works.
//!
//! Because of the identity mapping, a virtual address of RAM *is* its
//! physical address. That fact is used in exactly two places,
//! [`phys_to_virt`] and [`virt_to_phys`], so the rest of the kernel keeps the
//! two kinds of address apart.

pub mod frames;
pub mod heap;
pub mod paging;
#[cfg(feature = "selftest")]
mod selftests;

use core::ptr::NonNull;

use spin::{Mutex, Once};
use x86_64::instructions::interrupts::without_interrupts;
use x86_64::registers::control::{Cr3, Cr3Flags, Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, EferFlags};
use x86_64::structures::paging::{PageTableFlags, PhysFrame};
use x86_64::PhysAddr;

use crate::bootinfo::{BootInfo, MemoryKind, MAX_MEMORY_REGIONS, MAX_RESERVED_RANGES};
use frames::{bitmap_words_for, FrameAllocator, FrameError, FRAME_SIZE};
use hal::HalError;
#[cfg(feature = "selftest")]
use paging::Translation;
use paging::{MapOutcome, PageTables, PAGE_2M, PAGE_4K};

#[cfg(feature = "selftest")]
pub use selftests::selftests;

/// Below this the frame allocator never hands out memory: real-mode
/// structures, the EBDA, VGA memory and the BIOS live there.
const LOW_MEMORY_END: u64 = 0x10_0000;
/// What the boot page tables reach; everything `init` touches before it
/// switches to its own tables must lie below this.
const BOOT_IDENTITY_LIMIT: u64 = 4 << 30;
/// The largest heap the kernel takes (less when RAM is small).
const HEAP_MAX_BYTES: u64 = 16 << 20;
/// Identity mapping puts virtual = physical, and virtual addresses in the
/// lower half must stay below 2^47 to be canonical (SDM 3.3.7.1).
const CANONICAL_LOWER_HALF_END: u64 = 1 << 47;

/// The machine's frames, once `init` has run. Taken with interrupts off, by any CPU.
static FRAMES: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);
/// The kernel's live page tables (what CR3 points to on every CPU), once `init` has run. Taken
/// with interrupts off. After the other CPUs start, the tables only gain mappings (`map_mmio`),
/// which needs no TLB shootdown (a non-present entry is never cached). The one exception, a
/// `map_mmio` that changes the attributes of a page already mapped, is flushed on the calling
/// CPU only: the kernel maps each device window once, at bring-up, before other CPUs use it.
static KERNEL_TABLES: Mutex<Option<PageTables>> = Mutex::new(None);
/// The physical ranges mapped as RAM, sorted and merged.
static RAM_RANGES: Once<RamRanges> = Once::new();
/// Page attributes for device registers (computed once: depends on EFER.NXE).
static MMIO_FLAGS: Once<PageTableFlags> = Once::new();
/// One past the highest physical address `map_mmio` accepts.
static MAPPABLE_LIMIT: Once<u64> = Once::new();

/// Up to this many disjoint RAM ranges (memory-map entries plus boot ranges).
const MAX_RAM_RANGES: usize = MAX_MEMORY_REGIONS + MAX_RESERVED_RANGES;

/// The sorted, merged list of physical ranges `[start, end)` mapped as RAM.
struct RamRanges {
    ranges: [(u64, u64); MAX_RAM_RANGES],
    len: usize,
}

impl RamRanges {
    fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges[..self.len].iter().copied()
    }

    /// True if all of `start .. end` lies inside one mapped RAM range.
    fn contains(&self, start: u64, end: u64) -> bool {
        self.iter().any(|(s, e)| s <= start && end <= e)
    }
}

/// The CPU pointer for a physical address of RAM (identity mapping).
pub fn phys_to_virt(phys: u64) -> *mut u8 {
    phys as *mut u8
}

/// The physical address behind a CPU pointer into RAM (identity mapping).
pub fn virt_to_phys(ptr: *const u8) -> u64 {
    ptr as u64
}

/// Sets up frames, the kernel's own page tables and the heap (see the module
/// docs). Must run once, after `clock::init` and before anything allocates.
pub fn init(boot: &BootInfo) {
    let allocator = build_frame_allocator(boot);
    log::info!(
        "{} MiB usable RAM in frames ({} free frames, bitmap over {:#x}..{:#x})",
        (allocator.free_frames() * FRAME_SIZE) >> 20,
        allocator.free_frames(),
        allocator.first_phys(),
        allocator.first_phys() + allocator.frame_count() * FRAME_SIZE
    );
    MANAGED_FRAMES.call_once(|| allocator.free_frames());
    *FRAMES.lock() = Some(allocator);

    let ram = collect_ram_ranges(boot);
    let mmio_flags = mmio_page_flags();
    MMIO_FLAGS.call_once(|| mmio_flags);
    MAPPABLE_LIMIT.call_once(|| physical_address_limit().min(CANONICAL_LOWER_HALF_END));
    switch_to_kernel_tables(&ram);
    RAM_RANGES.call_once(|| ram);

    init_heap();
}

/// Finds `bytes` of usable RAM below `limit` that is not the first megabyte and
/// not a boot structure, page-aligned. First fit over the memory map.
fn find_free_stretch(boot: &BootInfo, bytes: u64, limit: u64) -> Option<u64> {
    for region in boot.memory.iter() {
        if region.kind != MemoryKind::Usable {
            continue;
        }
        let region_end = (region.start + region.len).min(limit);
        let mut candidate = region
            .start
            .max(LOW_MEMORY_END)
            .next_multiple_of(FRAME_SIZE);
        // Step past every boot structure in the way; each step moves forward,
        // so this ends after at most one step per reserved range.
        'retry: while candidate + bytes <= region_end {
            for (start, len) in boot.reserved.iter() {
                if start < candidate + bytes && candidate < start + len {
                    candidate = (start + len).next_multiple_of(FRAME_SIZE);
                    continue 'retry;
                }
            }
            return Some(candidate);
        }
    }
    None
}

fn build_frame_allocator(boot: &BootInfo) -> FrameAllocator<'static> {
    let usable = || {
        boot.memory
            .iter()
            .filter(|region| region.kind == MemoryKind::Usable)
    };
    let span_start = usable()
        .map(|region| region.start)
        .min()
        .unwrap_or(0)
        .max(LOW_MEMORY_END);
    let span_end = usable()
        .map(|region| region.start + region.len)
        .max()
        .unwrap_or(0);
    if span_end <= span_start {
        // Nothing the kernel can do without RAM; the memory map comes from
        // QEMU itself, so this is a broken setup, not a runtime condition.
        panic!("memory: the memory map has no usable RAM above 1 MiB");
    }
    let span_start = span_start / FRAME_SIZE * FRAME_SIZE;
    let frame_count = span_end.div_ceil(FRAME_SIZE) - span_start / FRAME_SIZE;
    let words = bitmap_words_for(frame_count);
    let bitmap_bytes = (words as u64 * 8).next_multiple_of(FRAME_SIZE);
    let Some(bitmap_phys) = find_free_stretch(boot, bitmap_bytes, BOOT_IDENTITY_LIMIT) else {
        panic!("memory: no {bitmap_bytes} bytes of free RAM below 4 GiB for the frame bitmap");
    };
    // SAFETY: `bitmap_phys .. + bitmap_bytes` is usable RAM below 4 GiB (so the
    // boot tables map it), outside every boot structure, and it is reserved in
    // the allocator below, so this slice is its only user for the whole run.
    let bitmap: &'static mut [u64] =
        unsafe { core::slice::from_raw_parts_mut(phys_to_virt(bitmap_phys).cast::<u64>(), words) };
    let Ok(mut allocator) = FrameAllocator::new(bitmap, span_start, frame_count) else {
        panic!("memory: frame bitmap set-up rejected (span {span_start:#x}, {frame_count} frames)");
    };
    for region in usable() {
        allocator.release_range(region.start, region.len);
    }
    allocator.reserve_range(0, LOW_MEMORY_END);
    for (start, len) in boot.reserved.iter() {
        allocator.reserve_range(start, len);
    }
    allocator.reserve_range(bitmap_phys, bitmap_bytes);
    allocator
}

/// Every physical range the kernel maps as RAM: memory-map RAM (usable and
/// ACPI) and the boot structures, page-aligned outward, sorted and merged.
/// Page 0 is left out, so that null-pointer accesses fault, unless the
/// command line sits in it: of the boot structures only the command line is
/// still read after boot (`BootInfo::cmdline` points into it); the start
/// info and the memory map were copied into `BootInfo` when it was parsed.
fn collect_ram_ranges(boot: &BootInfo) -> RamRanges {
    let mut ranges = RamRanges {
        ranges: [(0, 0); MAX_RAM_RANGES],
        len: 0,
    };
    let is_ram = |kind| {
        matches!(
            kind,
            MemoryKind::Usable | MemoryKind::AcpiReclaimable | MemoryKind::AcpiNvs
        )
    };
    let cmdline_in_page_zero =
        !boot.cmdline.is_empty() && virt_to_phys(boot.cmdline.as_ptr()) < PAGE_4K;
    if cmdline_in_page_zero {
        log::warn!("the command line lies in page 0, so page 0 stays mapped");
    }
    let ram = boot
        .memory
        .iter()
        .filter(|region| is_ram(region.kind))
        .map(|region| (region.start, region.len));
    for (start, len) in ram.chain(boot.reserved.iter()) {
        let end = (start + len).next_multiple_of(PAGE_4K);
        let mut start = start / PAGE_4K * PAGE_4K;
        if start == 0 && !cmdline_in_page_zero {
            start = PAGE_4K;
        }
        if start < end && ranges.len < MAX_RAM_RANGES {
            ranges.ranges[ranges.len] = (start, end);
            ranges.len += 1;
        }
    }
    let list = &mut ranges.ranges[..ranges.len];
    list.sort_unstable();
    // Merge overlapping or touching ranges in place.
    let mut merged = 0;
    for i in 0..list.len() {
        let (start, end) = list[i];
        if merged > 0 && start <= list[merged - 1].1 {
            list[merged - 1].1 = list[merged - 1].1.max(end);
        } else {
            list[merged] = (start, end);
            merged += 1;
        }
    }
    ranges.len = merged;
    ranges
}

/// PCD|PWT (uncached), writable, and no-execute if EFER.NXE allows the bit.
fn mmio_page_flags() -> PageTableFlags {
    let mut flags = PageTableFlags::PRESENT
        | PageTableFlags::WRITABLE
        | PageTableFlags::NO_CACHE
        | PageTableFlags::WRITE_THROUGH;
    if Efer::read().contains(EferFlags::NO_EXECUTE_ENABLE) {
        flags |= PageTableFlags::NO_EXECUTE;
    }
    flags
}

/// 2^MAXPHYADDR from CPUID leaf 0x8000_0008 (SDM vol. 2A, CPUID), or 2^36 on a
/// CPU too old to report it.
fn physical_address_limit() -> u64 {
    let max_extended = core::arch::x86_64::__cpuid(0x8000_0000).eax;
    let bits = if max_extended >= 0x8000_0008 {
        core::arch::x86_64::__cpuid(0x8000_0008).eax & 0xff
    } else {
        36
    };
    1u64 << bits.clamp(32, 52)
}

/// Takes one frame for a page table. Before the switch to the kernel's tables
/// it must be below 4 GiB, where the boot tables map it.
fn table_frame_below(limit: u64) -> Result<u64, FrameError> {
    without_interrupts(|| {
        FRAMES
            .lock()
            .as_mut()
            .ok_or(FrameError::OutOfMemory)?
            .allocate_below(1, limit)
    })
}

fn switch_to_kernel_tables(ram: &RamRanges) {
    let mut source = || table_frame_below(BOOT_IDENTITY_LIMIT);
    let Ok(mut tables) = PageTables::new(&mut source) else {
        panic!("memory: no frame for the kernel's PML4");
    };
    let ram_flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
    let (mut large, mut small) = (0u64, 0u64);
    for (start, end) in ram.iter() {
        let mut addr = start;
        while addr < end {
            let result = if addr % PAGE_2M == 0 && addr + PAGE_2M <= end {
                large += 1;
                tables
                    .map_2m(addr, addr, ram_flags, &mut source)
                    .map(|_| PAGE_2M)
            } else {
                small += 1;
                tables
                    .map_4k(addr, addr, ram_flags, &mut source)
                    .map(|_| PAGE_4K)
            };
            match result {
                Ok(step) => addr += step,
                Err(error) => panic!("memory: cannot map RAM at {addr:#x}: {error:?}"),
            }
        }
        log::debug!("identity-mapped RAM {:#x}..{:#x}", start, end);
    }
    let Ok(root) = PhysFrame::from_start_address(PhysAddr::new(tables.root())) else {
        panic!("memory: PML4 at {:#x} is not page-aligned", tables.root());
    };
    // SAFETY: the new tables map all RAM the kernel uses (its image, stacks
    // and boot structures are in `ram`) at the same addresses as before, so
    // execution continues seamlessly. The old tables stay where they are.
    unsafe { Cr3::write(root, Cr3Flags::empty()) };
    // A CR3 write keeps global TLB entries; toggling CR4.PGE drops them too
    // (SDM 4.10.4.1), in case the boot code marked its pages global.
    let cr4 = Cr4::read();
    if cr4.contains(Cr4Flags::PAGE_GLOBAL) {
        // SAFETY: only the PGE bit changes, and back again.
        unsafe {
            Cr4::write(cr4 - Cr4Flags::PAGE_GLOBAL);
            Cr4::write(cr4);
        }
    }
    log::info!(
        "kernel page tables live (PML4 at {:#x}): {} x 2 MiB + {} x 4 KiB pages of RAM",
        tables.root(),
        large,
        small
    );
    *KERNEL_TABLES.lock() = Some(tables);
}

fn init_heap() {
    let free = free_frame_count();
    let heap_frames = (HEAP_MAX_BYTES / FRAME_SIZE).min(free / 4).max(1);
    let Ok(start) = allocate_frames(heap_frames as usize) else {
        panic!("memory: no {heap_frames} contiguous frames for the heap");
    };
    let size = (heap_frames * FRAME_SIZE) as usize;
    // SAFETY: the frames were just allocated for the heap and never freed;
    // they are RAM, identity-mapped and writable.
    unsafe { heap::init(start, size) };
    log::info!(
        "heap {:#x}..{:#x} ({} KiB)",
        start,
        start + size as u64,
        size >> 10
    );
}

/// Allocates `count` physically contiguous, page-aligned frames; returns the
/// physical address of the first. The memory is *not* zeroed.
pub fn allocate_frames(count: usize) -> Result<u64, FrameError> {
    without_interrupts(|| {
        FRAMES
            .lock()
            .as_mut()
            .ok_or(FrameError::OutOfMemory)?
            .allocate(count as u64)
    })
}

/// Returns frames from [`allocate_frames`].
///
/// # Safety
/// Nothing (CPU or device) may use the memory afterwards.
pub unsafe fn free_frames(phys: u64, count: usize) -> Result<(), FrameError> {
    without_interrupts(|| {
        FRAMES
            .lock()
            .as_mut()
            .ok_or(FrameError::InvalidArgument)?
            .free(phys, count as u64)
    })
}

/// The frames the allocator manages: usable RAM less what boot reserved,
/// counted once at `init` (the "total" of the shell's `mem` and the
/// balloon's statistics).
static MANAGED_FRAMES: spin::Once<u64> = spin::Once::new();

/// Frames the allocator manages (see [`MANAGED_FRAMES`]; 0 before `init`).
pub fn managed_frame_count() -> u64 {
    MANAGED_FRAMES.get().copied().unwrap_or(0)
}

/// Frames currently free (0 before `init`).
pub fn free_frame_count() -> u64 {
    without_interrupts(|| {
        FRAMES
            .lock()
            .as_ref()
            .map_or(0, |frames| frames.free_frames())
    })
}

/// True if the frame containing `phys` is currently free.
#[cfg(feature = "selftest")]
pub fn frame_is_free(phys: u64) -> bool {
    without_interrupts(|| FRAMES.lock().as_ref().is_some_and(|f| f.is_free(phys)))
}

/// Walks the kernel's live page tables for `virt`.
#[cfg(feature = "selftest")]
pub fn translate(virt: u64) -> Option<Translation> {
    without_interrupts(|| KERNEL_TABLES.lock().as_ref()?.translate(virt))
}

/// The physical address of `len` bytes of RAM at CPU address `virt`, if they
/// all lie in one identity-mapped RAM range (so they are physically
/// contiguous too). `None` for MMIO, unmapped memory, or a range that
/// crosses a hole.
pub fn ram_phys_range(virt: *const u8, len: usize) -> Option<u64> {
    let start = virt_to_phys(virt);
    let end = start.checked_add(len as u64)?;
    RAM_RANGES.get()?.contains(start, end).then_some(start)
}

/// Maps `size` bytes of device registers at physical address `phys`, uncached
/// (PCD|PWT, no-execute when EFER.NXE is on), at the identical virtual
/// address, and returns the pointer to `phys`. Mapping a range again is fine.
/// Pages that are RAM stay mapped as RAM (write-back): giving one physical
/// page two memory types is what the SDM (11.12.4) warns against, and RAM
/// (e.g. ACPI tables) is not device registers.
pub fn map_mmio(phys: u64, size: usize) -> Result<NonNull<u8>, HalError> {
    if size == 0 {
        return Err(HalError::InvalidArgument);
    }
    let end = phys
        .checked_add(size as u64)
        .ok_or(HalError::InvalidArgument)?;
    let first_page = phys / PAGE_4K * PAGE_4K;
    let end_page = end.next_multiple_of(PAGE_4K);
    let (Some(&limit), Some(&flags), Some(ram)) =
        (MAPPABLE_LIMIT.get(), MMIO_FLAGS.get(), RAM_RANGES.get())
    else {
        log::error!("map_mmio({phys:#x}) before memory::init");
        return Err(HalError::MapFailed);
    };
    if first_page == 0 || end_page > limit {
        log::debug!(
            "refusing to map MMIO {:#x}..{:#x} (page 0 stays unmapped; limit {:#x})",
            phys,
            end,
            limit
        );
        return Err(HalError::MapFailed);
    }
    let (mut mapped, mut kept, mut ram_pages) = (0u32, 0u32, 0u32);
    let result = without_interrupts(|| {
        let mut tables = KERNEL_TABLES.lock();
        let tables = tables.as_mut().ok_or(paging::MapError::OutOfFrames)?;
        let mut source = || {
            FRAMES
                .lock()
                .as_mut()
                .ok_or(FrameError::OutOfMemory)?
                .allocate(1)
        };
        let mut page = first_page;
        while page < end_page {
            // A whole aligned 2 MiB of device registers takes one entry
            // instead of 512: ECAM is 256 MiB, and under nested KVM every
            // page-table update costs a VM exit. Where 4 KiB pages already
            // cover part of it (a page table in the way), map_2m refuses and
            // the 4 KiB path below takes over.
            let chunk_end = page + PAGE_2M;
            if page.is_multiple_of(PAGE_2M)
                && chunk_end <= end_page
                && !ram.iter().any(|(s, e)| s < chunk_end && page < e)
            {
                match tables.map_2m(page, page, flags, &mut source) {
                    Ok(outcome) => {
                        let pages = (PAGE_2M / PAGE_4K) as u32;
                        match outcome {
                            MapOutcome::AlreadyMapped => kept += pages,
                            _ => mapped += pages,
                        }
                        page = chunk_end;
                        continue;
                    }
                    Err(paging::MapError::Conflict) => {}
                    Err(error) => return Err(error),
                }
            }
            if ram.contains(page, page + PAGE_4K) {
                ram_pages += 1;
            } else {
                match tables.map_4k(page, page, flags, &mut source)? {
                    MapOutcome::Mapped | MapOutcome::AttributesChanged => mapped += 1,
                    MapOutcome::AlreadyMapped => kept += 1,
                }
            }
            page += PAGE_4K;
        }
        Ok(())
    });
    if let Err(error) = result {
        log::debug!("mapping MMIO {phys:#x}..{end:#x} failed: {error:?}");
        return Err(match error {
            paging::MapError::OutOfFrames => HalError::OutOfMemory,
            _ => HalError::MapFailed,
        });
    }
    log::debug!(
        "MMIO {:#x}..{:#x} uncached: {} pages mapped, {} already mapped, {} are RAM (left cached)",
        phys,
        end,
        mapped,
        kept,
        ram_pages
    );
    NonNull::new(phys_to_virt(phys)).ok_or(HalError::MapFailed)
}
