//! Four-level x86_64 page tables (Intel SDM vol. 3A, chapter 4.5 "4-level
//! paging", and 4.10 "Caching translation information").
//!
//! A virtual address is split into four 9-bit table indices and a 12-bit
//! offset: PML4 -> page-directory-pointer table (PDPT) -> page directory (PD)
//! -> page table (PT) -> 4 KiB page. A PD entry with the PS ("huge") bit maps a
//! whole 2 MiB page itself and there is no PT below it.
//!
//! This module only knows how to build and walk such a hierarchy. The kernel
//! uses it in one way: *identity mapping* (virtual address = physical
//! address), so every table, wherever it sits in RAM, can be reached by just
//! dereferencing its physical address. [`PageTables`] is a handle on one
//! hierarchy; the kernel's live one is in [`super`], and the self-tests build
//! private ones that are never loaded into CR3.
//!
//! Rules kept here:
//! - A new table is zeroed before it is linked in, so the MMU never sees garbage.
//! - Mapping a 4 KiB page inside a 2 MiB page with different attributes
//!   *splits* the large page into a page table of 512 small entries that keep
//!   the old mapping and attributes, then changes the one entry.
//! - Every entry that changes is followed by `invlpg` for its page (or a full
//!   flush after a split: the TLB may hold the large page in several pieces).
//! - An address is never silently remapped to another physical page: that is
//!   reported as [`MapError::Conflict`].

use x86_64::instructions::tlb;
use x86_64::structures::paging::page_table::PageTableEntry;
use x86_64::structures::paging::{PageTable, PageTableFlags};
use x86_64::{PhysAddr, VirtAddr};

use super::frames::{FrameError, FRAME_SIZE};

/// Size of a small page.
pub const PAGE_4K: u64 = 4096;
/// Size of a page mapped directly by a page-directory entry.
pub const PAGE_2M: u64 = 2 * 1024 * 1024;

/// Attributes that describe what a mapping *is* (as opposed to the accessed and
/// dirty bits, which the CPU sets as it goes).
const ATTRIBUTE_MASK: PageTableFlags = PageTableFlags::PRESENT
    .union(PageTableFlags::WRITABLE)
    .union(PageTableFlags::USER_ACCESSIBLE)
    .union(PageTableFlags::WRITE_THROUGH)
    .union(PageTableFlags::NO_CACHE)
    .union(PageTableFlags::GLOBAL)
    .union(PageTableFlags::NO_EXECUTE);

/// Flags of an entry that points at a lower-level table. Access rights are the
/// intersection of all levels (SDM 4.6), so the upper levels grant everything
/// and the leaf entry decides.
const TABLE_FLAGS: PageTableFlags = PageTableFlags::PRESENT.union(PageTableFlags::WRITABLE);

/// In a 2 MiB entry, bit 12 is the PAT bit, not an address bit (SDM table 4-17).
const HUGE_PAT_BIT: u64 = 1 << 12;
/// In a 4 KiB entry, the PAT bit is bit 7 (where a PD entry has PS).
const SMALL_PAT_FLAG: PageTableFlags = PageTableFlags::HUGE_PAGE;

/// Why a mapping could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// No frame for a new page table.
    OutOfFrames,
    /// The address is already mapped to a different physical page.
    Conflict,
    /// A 1 GiB page is in the way (this kernel never creates them).
    OneGigPage,
    /// The address is not canonical or not aligned to the page size.
    BadAddress,
}

impl From<FrameError> for MapError {
    fn from(_: FrameError) -> Self {
        MapError::OutOfFrames
    }
}

/// What one virtual address translates to.
#[cfg(feature = "selftest")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The physical address of the byte.
    pub phys: u64,
    /// Size of the page that maps it (4 KiB or 2 MiB).
    pub page_size: u64,
    /// The leaf entry's attributes (accessed/dirty stripped).
    pub flags: PageTableFlags,
}

/// What a map call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapOutcome {
    /// A new entry was written.
    Mapped,
    /// The page was already mapped exactly like that; nothing changed.
    AlreadyMapped,
    /// An existing entry for the same physical page got new attributes.
    AttributesChanged,
}

/// Where new page tables come from: a function returning one zeroable frame.
pub type TableFrameSource<'a> = &'a mut dyn FnMut() -> Result<u64, FrameError>;

/// One page-table hierarchy, named by the physical address of its PML4.
pub struct PageTables {
    root: u64,
}

/// The table at physical address `phys`.
///
/// # Safety
/// `phys` must be a page table of a hierarchy the caller has exclusive access
/// to, and must be reachable at virtual address `phys` (identity mapping).
unsafe fn table_at<'t>(phys: u64) -> &'t mut PageTable {
    // SAFETY: forwarded to the caller.
    unsafe { &mut *(phys as *mut PageTable) }
}

/// The four table indices of `virt`, top level first.
fn indices(virt: u64) -> [usize; 4] {
    [
        ((virt >> 39) & 0x1ff) as usize,
        ((virt >> 30) & 0x1ff) as usize,
        ((virt >> 21) & 0x1ff) as usize,
        ((virt >> 12) & 0x1ff) as usize,
    ]
}

fn is_canonical(virt: u64) -> bool {
    VirtAddr::try_new(virt).is_ok()
}

/// Takes a frame from `source` and zeroes it as an empty table.
fn new_table(source: TableFrameSource<'_>) -> Result<u64, MapError> {
    let phys = source()?;
    // SAFETY: the frame was just allocated for us, so nobody else uses it, and
    // it is RAM the identity mapping reaches.
    unsafe { table_at(phys) }.zero();
    Ok(phys)
}

impl PageTables {
    /// A new, empty hierarchy (one zeroed PML4).
    pub fn new(source: TableFrameSource<'_>) -> Result<Self, MapError> {
        Ok(Self {
            root: new_table(source)?,
        })
    }

    /// Physical address of the PML4 (what CR3 holds when this is live).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Walks the tables for `virt`. `None` if it is not mapped.
    #[cfg(feature = "selftest")]
    pub fn translate(&self, virt: u64) -> Option<Translation> {
        if !is_canonical(virt) {
            return None;
        }
        let [l4, l3, l2, l1] = indices(virt);
        // SAFETY: `root` is this hierarchy's PML4, in identity-mapped RAM;
        // `&self` keeps writers out while the walk reads it.
        let pml4 = unsafe { table_at(self.root) };
        let entry = &pml4[l4];
        if !entry.flags().contains(PageTableFlags::PRESENT) {
            return None;
        }
        // SAFETY: a present PML4 entry of this hierarchy points at one of its
        // PDPTs (identity-mapped RAM); `&self` keeps writers out.
        let pdpt = unsafe { table_at(entry.addr().as_u64()) };
        let entry = &pdpt[l3];
        let flags = entry.flags();
        if !flags.contains(PageTableFlags::PRESENT) {
            return None;
        }
        if flags.contains(PageTableFlags::HUGE_PAGE) {
            let base = entry.addr().as_u64() & !(0x4000_0000 - 1);
            return Some(Translation {
                phys: base + (virt & (0x4000_0000 - 1)),
                page_size: 0x4000_0000,
                flags: flags & ATTRIBUTE_MASK,
            });
        }
        // SAFETY: a present, non-huge PDPT entry points at one of this
        // hierarchy's page directories; `&self` keeps writers out.
        let pd = unsafe { table_at(entry.addr().as_u64()) };
        let entry = &pd[l2];
        let flags = entry.flags();
        if !flags.contains(PageTableFlags::PRESENT) {
            return None;
        }
        if flags.contains(PageTableFlags::HUGE_PAGE) {
            let base = entry.addr().as_u64() & !(PAGE_2M - 1);
            return Some(Translation {
                phys: base + (virt & (PAGE_2M - 1)),
                page_size: PAGE_2M,
                flags: flags & ATTRIBUTE_MASK,
            });
        }
        // SAFETY: a present, non-huge PD entry points at one of this
        // hierarchy's page tables; `&self` keeps writers out.
        let pt = unsafe { table_at(entry.addr().as_u64()) };
        let entry = &pt[l1];
        let flags = entry.flags();
        if !flags.contains(PageTableFlags::PRESENT) {
            return None;
        }
        Some(Translation {
            phys: entry.addr().as_u64() + (virt & (PAGE_4K - 1)),
            page_size: PAGE_4K,
            // Bit 7 of a 4 KiB entry is PAT, not "huge"; this kernel never sets it.
            flags: flags & ATTRIBUTE_MASK,
        })
    }

    /// The page directory that covers `virt`, creating the PDPT and PD on the way.
    fn page_directory(
        &mut self,
        virt: u64,
        source: TableFrameSource<'_>,
    ) -> Result<&'static mut PageTable, MapError> {
        let [l4, l3, _, _] = indices(virt);
        // SAFETY: identity-mapped tables of this hierarchy; `&mut self` gives
        // exclusive access.
        let pml4 = unsafe { table_at(self.root) };
        let pdpt_phys = next_table(&mut pml4[l4], source)?;
        // SAFETY: as above; `next_table` returned a table of this hierarchy.
        let pdpt = unsafe { table_at(pdpt_phys) };
        if pdpt[l3].flags().contains(PageTableFlags::HUGE_PAGE) {
            return Err(MapError::OneGigPage);
        }
        let pd_phys = next_table(&mut pdpt[l3], source)?;
        // SAFETY: as above.
        Ok(unsafe { table_at(pd_phys) })
    }

    /// Maps the 2 MiB page at `virt` to `phys` with `flags` (HUGE_PAGE is added).
    /// Fails with [`MapError::Conflict`] if anything else is mapped there.
    pub fn map_2m(
        &mut self,
        virt: u64,
        phys: u64,
        flags: PageTableFlags,
        source: TableFrameSource<'_>,
    ) -> Result<MapOutcome, MapError> {
        if !is_canonical(virt) || !virt.is_multiple_of(PAGE_2M) || !phys.is_multiple_of(PAGE_2M) {
            return Err(MapError::BadAddress);
        }
        let pd = self.page_directory(virt, source)?;
        let entry = &mut pd[indices(virt)[2]];
        let wanted = flags | PageTableFlags::HUGE_PAGE | PageTableFlags::PRESENT;
        if entry.is_unused() {
            entry.set_addr(PhysAddr::new(phys), wanted);
            tlb::flush(VirtAddr::new(virt));
            return Ok(MapOutcome::Mapped);
        }
        let existing = entry.flags();
        if existing.contains(PageTableFlags::HUGE_PAGE)
            && entry.addr().as_u64() == phys
            && existing & ATTRIBUTE_MASK == wanted & ATTRIBUTE_MASK
        {
            return Ok(MapOutcome::AlreadyMapped);
        }
        Err(MapError::Conflict)
    }

    /// Maps the 4 KiB page at `virt` to `phys` with `flags`, splitting a 2 MiB
    /// page that covers it if its attributes differ.
    pub fn map_4k(
        &mut self,
        virt: u64,
        phys: u64,
        flags: PageTableFlags,
        source: TableFrameSource<'_>,
    ) -> Result<MapOutcome, MapError> {
        if !is_canonical(virt) || !virt.is_multiple_of(PAGE_4K) || !phys.is_multiple_of(PAGE_4K) {
            return Err(MapError::BadAddress);
        }
        let wanted = (flags | PageTableFlags::PRESENT) & ATTRIBUTE_MASK;
        let [_, _, l2, l1] = indices(virt);
        let pd = self.page_directory(virt, source)?;
        let pd_entry = &mut pd[l2];
        if pd_entry.flags().contains(PageTableFlags::HUGE_PAGE) {
            let large_base = pd_entry.addr().as_u64() & !(PAGE_2M - 1);
            let covers_same_page = large_base + (virt & (PAGE_2M - 1)) == phys;
            if covers_same_page && pd_entry.flags() & ATTRIBUTE_MASK == wanted {
                return Ok(MapOutcome::AlreadyMapped);
            }
            split_large_page(pd_entry, virt & !(PAGE_2M - 1), source)?;
        }
        let pt_phys = next_table(pd_entry, source)?;
        // SAFETY: a page table of this hierarchy, identity-mapped; exclusive via `&mut self`.
        let pt = unsafe { table_at(pt_phys) };
        let entry = &mut pt[l1];
        if entry.is_unused() {
            entry.set_addr(PhysAddr::new(phys), wanted);
            tlb::flush(VirtAddr::new(virt));
            return Ok(MapOutcome::Mapped);
        }
        if entry.addr().as_u64() != phys {
            return Err(MapError::Conflict);
        }
        if entry.flags() & ATTRIBUTE_MASK == wanted {
            return Ok(MapOutcome::AlreadyMapped);
        }
        entry.set_addr(PhysAddr::new(phys), wanted);
        tlb::flush(VirtAddr::new(virt));
        Ok(MapOutcome::AttributesChanged)
    }

    /// Frees every table frame of this hierarchy (not the pages it maps)
    /// through `free`. For private hierarchies only: never the live one.
    #[cfg(feature = "selftest")]
    pub fn destroy(self, free: &mut dyn FnMut(u64)) {
        // SAFETY: this hierarchy's PML4, identity-mapped; `self` is consumed,
        // so nobody walks these tables again.
        let pml4 = unsafe { table_at(self.root) };
        for l4 in pml4.iter().filter(|e| !e.is_unused()) {
            // SAFETY: a used PML4 entry of this (consumed) hierarchy points at
            // one of its PDPTs.
            let pdpt = unsafe { table_at(l4.addr().as_u64()) };
            for l3 in pdpt.iter().filter(|e| !e.is_unused()) {
                if l3.flags().contains(PageTableFlags::HUGE_PAGE) {
                    continue;
                }
                // SAFETY: a used, non-huge PDPT entry of this (consumed)
                // hierarchy points at one of its page directories.
                let pd = unsafe { table_at(l3.addr().as_u64()) };
                for l2 in pd.iter().filter(|e| !e.is_unused()) {
                    if !l2.flags().contains(PageTableFlags::HUGE_PAGE) {
                        free(l2.addr().as_u64());
                    }
                }
                free(l3.addr().as_u64());
            }
            free(l4.addr().as_u64());
        }
        free(self.root);
    }
}

/// The table an upper-level `entry` points to, creating it if the entry is empty.
fn next_table(entry: &mut PageTableEntry, source: TableFrameSource<'_>) -> Result<u64, MapError> {
    if entry.is_unused() {
        let table = new_table(source)?;
        entry.set_addr(PhysAddr::new(table), TABLE_FLAGS);
    }
    Ok(entry.addr().as_u64())
}

/// Replaces the 2 MiB mapping in `pd_entry` (covering `virt_base`) by a page
/// table of 512 small pages that map the same memory with the same attributes.
fn split_large_page(
    pd_entry: &mut PageTableEntry,
    virt_base: u64,
    source: TableFrameSource<'_>,
) -> Result<(), MapError> {
    let raw_addr = pd_entry.addr().as_u64();
    let large_base = raw_addr & !(PAGE_2M - 1);
    let mut small_flags = (pd_entry.flags() & ATTRIBUTE_MASK) - PageTableFlags::HUGE_PAGE;
    if raw_addr & HUGE_PAT_BIT != 0 {
        small_flags |= SMALL_PAT_FLAG;
    }
    let pt_phys = new_table(source)?;
    // SAFETY: the frame was just allocated and zeroed; it is not linked yet.
    let pt = unsafe { table_at(pt_phys) };
    for (i, entry) in pt.iter_mut().enumerate() {
        entry.set_addr(
            PhysAddr::new(large_base + i as u64 * FRAME_SIZE),
            small_flags,
        );
    }
    let mut table_flags = TABLE_FLAGS;
    if small_flags.contains(PageTableFlags::USER_ACCESSIBLE) {
        table_flags |= PageTableFlags::USER_ACCESSIBLE;
    }
    pd_entry.set_addr(PhysAddr::new(pt_phys), table_flags);
    log::trace!(
        "split the 2 MiB page at {:#x} into 512 small pages (table at {:#x})",
        virt_base,
        pt_phys
    );
    // The TLB may hold the old large page as several smaller entries (SDM
    // 4.10.2.3), so invlpg of one address is not enough: flush everything.
    tlb::flush_all();
    Ok(())
}
