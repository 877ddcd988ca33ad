//! What the boot code hands to the rest of the kernel, parsed from the PVH
//! `hvm_start_info` (see `boot/pvh.rs`). Everything here is plain data that
//! lives for the whole run.

/// An e820 memory-map entry type, as the PVH start info reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// Type 1: RAM the kernel may use.
    Usable,
    /// Type 2: reserved (firmware, MMIO holes).
    Reserved,
    /// Type 3: ACPI tables, reclaimable after they are parsed.
    AcpiReclaimable,
    /// Type 4: ACPI non-volatile storage.
    AcpiNvs,
    /// Any other type number.
    Other(u32),
}

/// One range of the physical memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    pub start: u64,
    pub len: u64,
    pub kind: MemoryKind,
}

/// The most memory-map entries the kernel keeps (QEMU reports fewer than ten).
pub const MAX_MEMORY_REGIONS: usize = 64;
/// The most "do not touch" ranges the boot code reports.
pub const MAX_RESERVED_RANGES: usize = 8;

/// Everything the kernel learnt at boot.
#[derive(Debug, Clone)]
pub struct BootInfo {
    /// The kernel command line (`-append`), empty if none.
    pub cmdline: &'static str,
    /// The physical memory map, zero-size entries already dropped.
    pub memory: heapless_regions::Regions<MemoryRegion, MAX_MEMORY_REGIONS>,
    /// Physical ranges (start, len) that hold boot structures the frame
    /// allocator must never hand out: the kernel image with its stacks and boot
    /// page tables, the start info, the memory map and the command line.
    pub reserved: heapless_regions::Regions<(u64, u64), MAX_RESERVED_RANGES>,
    /// Physical address of the ACPI RSDP, if firmware gave one.
    pub rsdp: Option<u64>,
}

/// A tiny fixed-capacity list, so boot can fill it before the heap exists.
pub mod heapless_regions {
    /// Up to `N` items of `T` without allocation.
    #[derive(Debug, Clone)]
    pub struct Regions<T: Copy, const N: usize> {
        items: [Option<T>; N],
        len: usize,
    }

    impl<T: Copy, const N: usize> Default for Regions<T, N> {
        fn default() -> Self {
            Self::new()
        }
    }

    impl<T: Copy, const N: usize> Regions<T, N> {
        /// An empty list.
        pub const fn new() -> Self {
            Self {
                items: [None; N],
                len: 0,
            }
        }

        /// Appends `item`; returns `false` (and drops it) when full.
        pub fn push(&mut self, item: T) -> bool {
            if self.len == N {
                return false;
            }
            self.items[self.len] = Some(item);
            self.len += 1;
            true
        }

        /// The items in insertion order.
        pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
            self.items[..self.len].iter().filter_map(|x| *x)
        }

        /// Number of items.
        pub fn len(&self) -> usize {
            self.len
        }

        /// True when empty.
        pub fn is_empty(&self) -> bool {
            self.len == 0
        }
    }
}
