//! Ring memory: a DMA region holding fixed arrays of plain integers, indexed
//! modulo their power-of-two length, with no bounds check per access.
//!
//! A virtqueue's rings are arrays in DMA memory that the driver indexes with
//! free-running counters (virtio 1.2 §2.7: "Queue Size value is always a
//! power of 2", and ring indices wrap modulo the queue size). [`RingMemory`]
//! owns such a region and a few arrays per element type
//! ([`RingWord::SLOTS`]), each *placed* once ([`RingMemory::place`]): its offset and length are
//! checked against the region then, so that every later [`RingMemory::read`]
//! and [`RingMemory::write`] only masks the index (`index mod len`) and
//! touches memory. That is as cheap as a raw pointer and a mask, and safe:
//!
//! - an index can never leave its array, because the byte offset is taken
//!   modulo the array's byte length (a power of two);
//! - every element is aligned, because the array's offset was checked to be
//!   a multiple of the element size, the region is page-aligned, and the
//!   element size divides the array's byte length;
//! - the elements are plain integers ([`RingWord`]: `u16`, `u32`, `u64`,
//!   `u128`),
//!   valid for any bits the device may write;
//! - a [`RingArray`] handle is only a slot number: used with a memory it was
//!   never placed in, it reaches that memory's own slot (another checked
//!   array, or, if that slot was never placed, the region's first element),
//!   never anything outside the region;
//! - every access is volatile: the device reads and writes this memory
//!   behind the compiler's back.
//!
//! Values are stored as given; the caller converts to and from the device's
//! byte order (virtio: little-endian).

use core::marker::PhantomData;
use core::mem::size_of;
use core::ptr::NonNull;

use crate::{DmaRegion, Hal, HalError};

mod sealed {
    pub trait Sealed {}
    impl Sealed for u16 {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
    impl Sealed for u128 {}
}

/// An element type of a ring array: a plain unsigned integer, valid for any
/// bit pattern. Implemented for `u16`, `u32`, `u64` and `u128` only.
pub trait RingWord: sealed::Sealed + Copy {
    /// How many arrays of this type one [`RingMemory`] can hold.
    const SLOTS: usize;
    /// Where this type's table starts among [`RingMemory`]'s areas (one
    /// table per element size, so that an array is only ever accessed as the
    /// type it was placed for).
    #[doc(hidden)]
    const FIRST: usize;
}

/// Up to 8 arrays of `u16` (a split ring uses 7: its flags, indices, event
/// fields and the available ring).
impl RingWord for u16 {
    const SLOTS: usize = 8;
    const FIRST: usize = 0;
}
/// Up to 2 arrays of `u32`.
impl RingWord for u32 {
    const SLOTS: usize = 2;
    const FIRST: usize = 8;
}
/// Up to 2 arrays of `u64`.
impl RingWord for u64 {
    const SLOTS: usize = 2;
    const FIRST: usize = 10;
}
/// Up to 2 arrays of `u128` (16-byte elements such as virtqueue
/// descriptors: one access writes a whole descriptor).
impl RingWord for u128 {
    const SLOTS: usize = 2;
    const FIRST: usize = 12;
}

/// All tables together.
const AREAS: usize = 14;

/// Names one array of `T` in a [`RingMemory`]: a slot number, nothing more.
/// Make them constants (`const AVAIL_RING: RingArray<u16> = RingArray::slot(1);`)
/// so that each access compiles to a fixed offset into the memory's table.
pub struct RingArray<T: RingWord> {
    slot: usize,
    _element: PhantomData<T>,
}

impl<T: RingWord> RingArray<T> {
    /// The array in slot `slot` (taken modulo [`RingWord::SLOTS`]) of the
    /// table for `T`.
    pub const fn slot(slot: usize) -> Self {
        Self {
            slot: slot % T::SLOTS,
            _element: PhantomData,
        }
    }
}

impl<T: RingWord> Clone for RingArray<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: RingWord> Copy for RingArray<T> {}

impl<T: RingWord> core::fmt::Debug for RingArray<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "RingArray<u{}>({})", 8 * size_of::<T>(), self.slot)
    }
}

/// Where one placed array lives. Invariant (established by
/// [`RingMemory::new`] and [`RingMemory::place`], relied on by every access):
/// for the element type `T` of the table the area is in, `base` is aligned
/// for `T` and the `index_mask + 1` elements of `T` from `base` lie inside
/// the region; `index_mask + 1` is a power of two.
#[derive(Clone, Copy)]
struct Area {
    base: NonNull<u8>,
    index_mask: usize,
}

/// A DMA region with named arrays of ring words. See the module documentation.
pub struct RingMemory<H: Hal> {
    region: DmaRegion<H>,
    /// One table per [`RingWord`] type, from its [`RingWord::FIRST`] on.
    areas: [Area; AREAS],
}

// SAFETY: the area pointers point into `region`, which this value owns
// exclusively; moving it to another thread moves that ownership with it.
unsafe impl<H: Hal> Send for RingMemory<H> {}
// SAFETY: all access through `&self` is volatile reads and writes of plain
// integers, as for `DmaRegion`; callers order them between threads.
unsafe impl<H: Hal> Sync for RingMemory<H> {}

impl<H: Hal> RingMemory<H> {
    /// Takes over `region`. No array is placed yet: every slot names the
    /// region's first element until [`RingMemory::place`] gives it a place.
    pub fn new(region: DmaRegion<H>) -> Self {
        // With `index_mask = 0` every index is 0: the region's first
        // element, in bounds (a region is at least a page, an element at most
        // 16 bytes) and page-aligned, so this satisfies the `Area` invariant
        // for every element type.
        let first = Area {
            base: region.as_ptr(),
            index_mask: 0,
        };
        Self {
            region,
            areas: [first; AREAS],
        }
    }

    /// Places `array` at byte `offset` of the region, `len` elements long.
    /// Fails with [`HalError::InvalidArgument`] (and changes nothing) unless
    /// `len` is a power of two, `offset` is a multiple of the element size,
    /// and the array lies inside the region.
    pub fn place<T: RingWord>(
        &mut self,
        array: RingArray<T>,
        offset: usize,
        len: usize,
    ) -> Result<(), HalError> {
        let bytes = len
            .checked_mul(size_of::<T>())
            .ok_or(HalError::InvalidArgument)?;
        let end = offset.checked_add(bytes).ok_or(HalError::InvalidArgument)?;
        if !len.is_power_of_two()
            || !offset.is_multiple_of(size_of::<T>())
            || end > self.region.len()
        {
            return Err(HalError::InvalidArgument);
        }
        // SAFETY: `offset + bytes <= region.len()` (checked above), so the
        // pointer stays inside the allocation.
        let base = unsafe { self.region.as_ptr().add(offset) };
        self.areas[Self::area_index(array)] = Area {
            base,
            index_mask: len - 1,
        };
        Ok(())
    }

    /// Where `array`'s area is kept: constant for a constant handle.
    #[inline]
    fn area_index<T: RingWord>(array: RingArray<T>) -> usize {
        (T::FIRST + array.slot % T::SLOTS) % AREAS
    }

    /// Volatile read of element `index mod len` of `array`.
    #[inline]
    pub fn read<T: RingWord>(&self, array: RingArray<T>, index: usize) -> T {
        let area = self.areas[Self::area_index(array)];
        // SAFETY: by the `Area` invariant (this area is in `T`'s table), the
        // masked index names one of the array's elements, which lies inside
        // the region this value owns and is aligned for `T`; `T` is a plain
        // integer, valid for any bits the device wrote.
        unsafe {
            area.base
                .cast::<T>()
                .add(index & area.index_mask)
                .read_volatile()
        }
    }

    /// Volatile write of element `index mod len` of `array`.
    #[inline]
    pub fn write<T: RingWord>(&self, array: RingArray<T>, index: usize, value: T) {
        let area = self.areas[Self::area_index(array)];
        // SAFETY: as for `read`: in bounds, aligned, a plain integer.
        unsafe {
            area.base
                .cast::<T>()
                .add(index & area.index_mask)
                .write_volatile(value)
        }
    }

    /// The whole region (its device address, length, and checked access to
    /// anything that is not one of the arrays).
    pub fn region(&self) -> &DmaRegion<H> {
        &self.region
    }
}

impl<H: Hal> core::fmt::Debug for RingMemory<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RingMemory")
            .field("region", &self.region)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::{DeviceAddr, Direction, DmaOwner, PhysAddr, PortWidth, PAGE_SIZE};
    use std::alloc::{alloc_zeroed, dealloc, Layout};

    /// Page-aligned heap memory; device address = CPU address + 1 TiB.
    struct TestHal;

    const OFFSET: u64 = 1 << 40;

    fn layout(pages: usize) -> Layout {
        Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).unwrap()
    }

    // SAFETY: `dma_alloc` returns zeroed, page-aligned, exclusively owned
    // memory of the asked size; the other functions refuse.
    unsafe impl Hal for TestHal {
        fn dma_alloc(
            _owner: DmaOwner,
            pages: usize,
        ) -> Result<(DeviceAddr, NonNull<u8>), HalError> {
            // SAFETY: the layout has a non-zero size (pages >= 1).
            let ptr = NonNull::new(unsafe { alloc_zeroed(layout(pages)) })
                .ok_or(HalError::OutOfMemory)?;
            Ok((ptr.as_ptr() as u64 + OFFSET, ptr))
        }
        unsafe fn dma_dealloc(
            _owner: DmaOwner,
            _device_addr: DeviceAddr,
            vaddr: NonNull<u8>,
            pages: usize,
        ) {
            // SAFETY: the caller passes what `dma_alloc` returned, with the same layout.
            unsafe { dealloc(vaddr.as_ptr(), layout(pages)) }
        }
        fn mmio_map(_phys: PhysAddr, _size: usize) -> Result<NonNull<u8>, HalError> {
            Err(HalError::Unsupported)
        }
        unsafe fn share(
            _owner: DmaOwner,
            _buffer: NonNull<[u8]>,
            _direction: Direction,
        ) -> Result<DeviceAddr, HalError> {
            Err(HalError::Unsupported)
        }
        unsafe fn unshare(
            _owner: DmaOwner,
            _device_addr: DeviceAddr,
            _buffer: NonNull<[u8]>,
            _direction: Direction,
        ) {
        }
        unsafe fn port_read(_port: u16, _width: PortWidth) -> Result<u32, HalError> {
            Err(HalError::Unsupported)
        }
        unsafe fn port_write(_port: u16, _width: PortWidth, _value: u32) -> Result<(), HalError> {
            Err(HalError::Unsupported)
        }
        fn delay_us(_micros: u32) {}
    }

    const WORDS: RingArray<u16> = RingArray::slot(0);
    const OTHER: RingArray<u16> = RingArray::slot(1);
    const QUADS: RingArray<u64> = RingArray::slot(0);
    const PAIRS: RingArray<u128> = RingArray::slot(0);

    fn memory(pages: usize) -> RingMemory<TestHal> {
        RingMemory::new(DmaRegion::new(DmaOwner::new(1), pages * PAGE_SIZE).unwrap())
    }

    #[test]
    fn indices_wrap_modulo_the_array_length() {
        let mut m = memory(1);
        m.place(WORDS, 64, 8).unwrap();
        m.write(WORDS, 3, 0xabcd);
        assert_eq!(m.read(WORDS, 3), 0xabcd);
        assert_eq!(m.read(WORDS, 8 + 3), 0xabcd, "index 11 is element 3");
        m.write(WORDS, usize::MAX, 7);
        assert_eq!(m.read(WORDS, 7), 7, "the largest index is element 7");
        assert_eq!(
            m.region().read::<u16>(64 + 6),
            Some(0xabcd),
            "element 3 at byte 6"
        );
        assert_eq!(
            m.region().read::<u16>(64 + 16),
            Some(0),
            "nothing past the end"
        );
    }

    #[test]
    fn arrays_of_different_types_are_separate() {
        let mut m = memory(1);
        m.place(WORDS, 0, 4).unwrap();
        m.place(QUADS, 256, 2).unwrap();
        m.write(QUADS, 1, 0x1122_3344_5566_7788);
        assert_eq!(m.region().read::<u64>(264), Some(0x1122_3344_5566_7788));
        assert_eq!(m.read(WORDS, 0), 0);
    }

    #[test]
    fn sixteen_byte_elements_are_written_whole() {
        let mut m = memory(1);
        m.place(PAIRS, 32, 4).unwrap();
        m.write(PAIRS, 5, 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff);
        let bytes = 0x0011_2233_4455_6677_8899_aabb_ccdd_eeffu128.to_ne_bytes();
        let mut seen = [0u8; 16];
        assert!(m.region().read_bytes(32 + 16, &mut seen), "element 1");
        assert_eq!(seen, bytes);
        assert_eq!(
            m.place(PAIRS, 8, 1),
            Err(HalError::InvalidArgument),
            "16-aligned only"
        );
    }

    #[test]
    fn placements_outside_the_region_or_misaligned_or_not_a_power_of_two_fail() {
        let mut m = memory(1);
        assert_eq!(
            m.place(WORDS, PAGE_SIZE - 2, 2),
            Err(HalError::InvalidArgument)
        );
        assert_eq!(m.place(WORDS, 1, 2), Err(HalError::InvalidArgument));
        assert_eq!(m.place(QUADS, 4, 1), Err(HalError::InvalidArgument));
        assert_eq!(m.place(WORDS, 0, 6), Err(HalError::InvalidArgument));
        assert_eq!(m.place(WORDS, 0, 0), Err(HalError::InvalidArgument));
        assert_eq!(
            m.place(WORDS, usize::MAX - 1, 2),
            Err(HalError::InvalidArgument)
        );
        assert!(
            m.place(WORDS, PAGE_SIZE - 4, 2).is_ok(),
            "the last bytes fit"
        );
    }

    #[test]
    fn an_unplaced_slot_or_a_foreign_handle_stays_inside_the_region() {
        let small = memory(1);
        small.write(OTHER, 1000, 0x55aa);
        assert_eq!(
            small.region().read::<u16>(0),
            Some(0x55aa),
            "unplaced: element 0"
        );
        let mut big = memory(4);
        big.place(WORDS, 0, 4096).unwrap();
        // `WORDS` reaches 4096 elements in `big` but only `small`'s own
        // (unplaced) slot 0 there.
        small.write(WORDS, 4000, 1);
        assert_eq!(small.read(WORDS, 0), 1);
    }

    #[test]
    fn slots_wrap_modulo_the_table_size() {
        let mut m = memory(1);
        m.place(RingArray::<u32>::slot(u32::SLOTS + 1), 8, 1)
            .unwrap();
        m.write(RingArray::<u32>::slot(1), 0, 9);
        assert_eq!(m.region().read::<u32>(8), Some(9));
        // The u32 table does not reach into the u64 one.
        m.place(RingArray::<u64>::slot(0), 16, 1).unwrap();
        m.write(RingArray::<u64>::slot(0), 0, 3);
        assert_eq!(m.read(RingArray::<u32>::slot(1), 0), 9);
    }
}
