//! The kernel heap: `alloc` (Box, Vec, String, ...) on top of one contiguous
//! run of frames, managed by `linked_list_allocator` (a first-fit free list).
//!
//! The heap is small and fixed-size (see [`super::init`] for how big). A
//! failed allocation returns null to the caller; the standard library's
//! default handler then reports "memory allocation of N bytes failed" through
//! the panic handler, so an exhausted heap is never silent. The allocator also
//! counts failures so the self-tests can see them.
//!
//! The lock inside the heap is a spin lock, so an interrupt handler that
//! allocated while the interrupted code held it would spin forever. Every
//! heap operation therefore runs with interrupts off.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};

use linked_list_allocator::LockedHeap;
use x86_64::instructions::interrupts::without_interrupts;

/// The global allocator: a locked first-fit heap plus a failure counter.
pub struct KernelHeap {
    heap: LockedHeap,
    failures: AtomicUsize,
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap {
    heap: LockedHeap::empty(),
    failures: AtomicUsize::new(0),
};

// SAFETY: all work is delegated to `LockedHeap`, which is a correct
// `GlobalAlloc`; the wrapper only adds a counter and masks interrupts.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours, forwarded.
        let ptr = without_interrupts(|| unsafe { self.heap.alloc(layout) });
        if ptr.is_null() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours, forwarded.
        without_interrupts(|| unsafe { self.heap.dealloc(ptr, layout) });
    }
}

/// Hands the memory `start .. start + size` to the heap. Called once.
///
/// # Safety
/// The range must be RAM that is mapped, writable and used by nothing else for
/// the rest of the run.
pub unsafe fn init(start: u64, size: usize) {
    without_interrupts(|| {
        // SAFETY: forwarded to our caller.
        unsafe { HEAP.heap.lock().init(start as *mut u8, size) }
    });
}

/// A snapshot of the heap's bookkeeping.
#[cfg(feature = "selftest")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes handed to the heap at init.
    pub size: usize,
    /// Bytes currently allocated (including the allocator's rounding).
    pub used: usize,
    /// Allocations that returned null since boot.
    pub failures: usize,
    /// Where the heap starts.
    pub bottom: u64,
}

/// Current heap statistics.
#[cfg(feature = "selftest")]
pub fn stats() -> HeapStats {
    without_interrupts(|| {
        let heap = HEAP.heap.lock();
        HeapStats {
            size: heap.size(),
            used: heap.used(),
            failures: HEAP.failures.load(Ordering::Relaxed),
            bottom: heap.bottom() as u64,
        }
    })
}

/// Allocates through the global allocator without the infallible wrappers,
/// so a test can watch a failure come back as null.
#[cfg(feature = "selftest")]
pub fn try_allocate_raw(layout: Layout) -> Option<core::ptr::NonNull<u8>> {
    if layout.size() == 0 {
        return None;
    }
    // SAFETY: `layout` has a non-zero size (checked); the result is checked for null.
    core::ptr::NonNull::new(unsafe { HEAP.alloc(layout) })
}

/// Frees what [`try_allocate_raw`] returned.
///
/// # Safety
/// `ptr` and `layout` must come from one successful `try_allocate_raw`.
#[cfg(feature = "selftest")]
pub unsafe fn free_raw(ptr: core::ptr::NonNull<u8>, layout: Layout) {
    // SAFETY: forwarded to our caller.
    unsafe { HEAP.dealloc(ptr.as_ptr(), layout) }
}
