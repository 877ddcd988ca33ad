//! # Second-level page tables: what a device may reach (Intel VT-d 4.1 §3.7, §9.8)
//!
//! A VT-d domain's address space is a radix tree like the CPU's: 512 eight-byte entries per
//! 4 KiB table, 9 bits of the I/O virtual address (IOVA) per level, 3 levels for a 39-bit
//! address width (AGAW 39) or 4 for 48 bits. An entry holds the physical address of the next
//! table (or, at the last level, of the page) and two permission bits, **Read** (bit 0) and
//! **Write** (bit 1). An entry with neither bit is not present: a device access through it is
//! blocked and recorded as a fault.
//!
//! ```text
//! IOVA  | 38..30 | 29..21 | 20..12 | 11..0 |      (3 levels, AGAW 39)
//!          root  ->  mid  ->  leaf  -> page + offset
//! ```
//!
//! The kernel maps every shared page at its own physical address (IOVA = physical address), so
//! that a device address means the same thing with the IOMMU off, in pass-through and in strict
//! mode; the only thing strict mode changes is *whether a mapping exists*. Two buffers can share
//! a page (two small heap buffers, a ring and its neighbour), so each leaf entry counts its
//! shares in bits 61:52, which VT-d leaves to software ("ignored", §9.8): the page stays mapped
//! until the last share of it ends. Its permissions are the union of the live shares' (a page
//! one buffer lets the device write stays writable until every share of it is gone).
//!
//! Intermediate tables are never freed: they cost 4 KiB per 1 GiB (or 2 MiB) of address space
//! ever shared, and freeing them would need an invalidation of the paging-structure caches.

use crate::memory;

/// Entry bit 0: the device may read through this entry.
pub const READ: u64 = 1 << 0;
/// Entry bit 1: the device may write through this entry.
pub const WRITE: u64 = 1 << 1;
/// Bits 51:12: the physical address of the next table or the page.
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Bits 61:52 (ignored by hardware): how many live shares hold this page mapped.
const SHARE_SHIFT: u32 = 52;
const SHARE_MASK: u64 = 0x3ff << SHARE_SHIFT;
const MAX_SHARES: u64 = 0x3ff;
const ENTRIES: u64 = 512;
const PAGE: u64 = 4096;

/// Why a page could not be mapped or unmapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    /// No frame for a new table.
    OutOfMemory,
    /// The IOVA is beyond the domain's address width.
    OutOfRange,
    /// The IOVA is already mapped to another physical page (IOVA = phys makes this a bug).
    Conflict,
    /// 1023 shares of one page at once.
    TooManyShares,
    /// Unmapping a page that is not mapped.
    NotMapped,
}

/// What a leaf entry says about one IOVA page (for tests and the shell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The physical page.
    pub phys: u64,
    /// Read permission.
    pub read: bool,
    /// Write permission.
    pub write: bool,
    /// Live shares.
    pub shares: u64,
}

/// A domain's second-level page table.
pub struct SecondLevelTable {
    /// Physical address of the top-level table.
    root: u64,
    /// 3 (39-bit) or 4 (48-bit).
    levels: u32,
    /// ECAP.C: the unit snoops the CPU caches on page-walks. If not, every entry written is
    /// flushed from the cache with `clflush` (§6.2.7 "Page-Walk Coherency").
    coherent: bool,
}

impl SecondLevelTable {
    /// An empty table of `levels` levels (nothing mapped: every device access faults).
    pub fn new(levels: u32, coherent: bool) -> Result<Self, TableError> {
        Ok(Self {
            root: new_table()?,
            levels,
            coherent,
        })
    }

    /// Physical address of the top table (the context entry's SLPTPTR).
    pub fn root(&self) -> u64 {
        self.root
    }

    fn check_range(&self, iova: u64) -> Result<(), TableError> {
        if iova >> (12 + 9 * self.levels) != 0 {
            return Err(TableError::OutOfRange);
        }
        Ok(())
    }

    /// The leaf entry for `iova`, creating missing tables if `create`.
    fn leaf(&self, iova: u64, create: bool) -> Result<*mut u64, TableError> {
        self.check_range(iova)?;
        let mut table = self.root;
        for level in (2..=self.levels).rev() {
            let slot = entry(table, index(iova, level));
            // SAFETY: `slot` is inside a table page this domain owns (identity-mapped RAM).
            let value = unsafe { slot.read_volatile() };
            table = if value & (READ | WRITE) != 0 {
                value & ADDRESS_MASK
            } else if create {
                let next = new_table()?;
                // Non-leaf entries grant both rights; the leaf decides (§9.8).
                self.store(slot, next | READ | WRITE);
                next
            } else {
                return Err(TableError::NotMapped);
            };
        }
        Ok(entry(table, index(iova, 1)))
    }

    /// Maps IOVA page `iova` to physical page `phys` (both 4 KiB aligned) with read, and write
    /// if `writable`, or adds one share to an existing mapping. Returns `true` if the entry was
    /// not present before (a caching-mode unit then needs an invalidation, §6.1).
    pub fn map_page(&mut self, iova: u64, phys: u64, writable: bool) -> Result<bool, TableError> {
        let slot = self.leaf(iova, true)?;
        // SAFETY: `slot` is a leaf entry in a table page this domain owns.
        let value = unsafe { slot.read_volatile() };
        let rights = READ | if writable { WRITE } else { 0 };
        if value & (READ | WRITE) == 0 {
            self.store(slot, (phys & ADDRESS_MASK) | rights | (1 << SHARE_SHIFT));
            return Ok(true);
        }
        if value & ADDRESS_MASK != phys & ADDRESS_MASK {
            return Err(TableError::Conflict);
        }
        let shares = (value & SHARE_MASK) >> SHARE_SHIFT;
        if shares >= MAX_SHARES {
            return Err(TableError::TooManyShares);
        }
        self.store(
            slot,
            (value & !SHARE_MASK) | rights | ((shares + 1) << SHARE_SHIFT),
        );
        Ok(false)
    }

    /// Ends one share of IOVA page `iova`. Returns `true` if that was the last one and the
    /// entry is now cleared (the caller must then invalidate the IOTLB before reusing the page).
    pub fn unmap_page(&mut self, iova: u64) -> Result<bool, TableError> {
        let slot = self.leaf(iova, false)?;
        // SAFETY: `slot` is a leaf entry in a table page this domain owns.
        let value = unsafe { slot.read_volatile() };
        if value & (READ | WRITE) == 0 {
            return Err(TableError::NotMapped);
        }
        let shares = (value & SHARE_MASK) >> SHARE_SHIFT;
        if shares <= 1 {
            self.store(slot, 0);
            Ok(true)
        } else {
            self.store(slot, (value & !SHARE_MASK) | ((shares - 1) << SHARE_SHIFT));
            Ok(false)
        }
    }

    /// What the table says about IOVA page `iova`, if it is mapped.
    pub fn translate(&self, iova: u64) -> Option<Translation> {
        let slot = self.leaf(iova, false).ok()?;
        // SAFETY: `slot` is a leaf entry in a table page this domain owns.
        let value = unsafe { slot.read_volatile() };
        (value & (READ | WRITE) != 0).then_some(Translation {
            phys: value & ADDRESS_MASK,
            read: value & READ != 0,
            write: value & WRITE != 0,
            shares: (value & SHARE_MASK) >> SHARE_SHIFT,
        })
    }

    /// Writes one entry where the unit will see it.
    fn store(&self, slot: *mut u64, value: u64) {
        // SAFETY: `slot` is an 8-byte aligned entry in a table page this domain owns; volatile
        // because the remapping unit reads it behind the compiler's back.
        unsafe { slot.write_volatile(value) };
        if !self.coherent {
            // SAFETY: `clflush` on a mapped address has no effect but writing the line back.
            unsafe { core::arch::x86_64::_mm_clflush(slot.cast::<u8>()) };
        }
    }
}

/// The 9-bit index of `iova` at `level` (1 = leaf).
fn index(iova: u64, level: u32) -> u64 {
    (iova >> (12 + 9 * (level - 1))) & (ENTRIES - 1)
}

/// Pointer to entry `index` of the table page at physical `table`.
fn entry(table: u64, index: u64) -> *mut u64 {
    memory::phys_to_virt(table + index * 8).cast::<u64>()
}

/// Frames taken for IOMMU tables so far (root, context, page tables, queue), for tests that
/// count the frame allocator's frames around a DMA allocation (`iommu::table_frames`).
pub static TABLE_FRAMES: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// A zeroed page for a table (all entries not present).
pub fn new_table() -> Result<u64, TableError> {
    let phys = memory::allocate_frames(1).map_err(|_| TableError::OutOfMemory)?;
    TABLE_FRAMES.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    // SAFETY: a frame just allocated to us: RAM, identity-mapped, 4 KiB, unused by anyone else.
    unsafe { core::ptr::write_bytes(memory::phys_to_virt(phys), 0, PAGE as usize) };
    // A unit that does not snoop caches must see the zeroes in memory, not stale contents.
    for line in (0..PAGE).step_by(64) {
        // SAFETY: `clflush` on a mapped address only writes the cache line back.
        unsafe { core::arch::x86_64::_mm_clflush(memory::phys_to_virt(phys + line)) };
    }
    Ok(phys)
}
