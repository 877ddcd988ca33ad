//! `virtio_drivers::Hal` on this kernel's memory management: how the peer
//! stack gets DMA memory, MMIO mappings and bus addresses.
//!
//! It is the same machine as [`crate::hal_impl::KernelHal`] sees, told in
//! the peer crate's words:
//!
//! - DMA pages come from the frame allocator (`memory::allocate_frames`):
//!   physically contiguous, page-aligned, identity-mapped, zeroed here.
//!   The peer's `dma_alloc` cannot return an error; it reports one with
//!   physical address 0, which its `Dma::new` turns into `Error::DmaError`
//!   (frame 0 is never handed out by the allocator).
//! - No IOMMU: a device reaches RAM at its physical address, so sharing a
//!   buffer is zero-copy, as in `KernelHal::share`. x86 DMA is
//!   cache-coherent: fences order the CPU's accesses, nothing is flushed.
//! - MMIO is mapped uncached by `memory::map_mmio`. The peer's
//!   `mmio_phys_to_virt` cannot fail either, so [`super::pci`] maps every
//!   BAR of the function before the peer looks at it; the call here then
//!   only finds the mapping again.

use core::ptr::NonNull;
use core::sync::atomic::{fence, Ordering};

use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

use crate::memory;

/// The peer stack's Hal (see the module docs).
pub struct PeerHal;

// SAFETY: `dma_alloc` returns fresh, zeroed, contiguous frames that nobody
// else owns, identity-mapped, at the address a device uses for them (no
// IOMMU), or physical address 0 for failure; `dma_dealloc` frees exactly
// those frames; `mmio_phys_to_virt` returns the identity mapping that
// `memory::map_mmio` made uncached; `share` returns the physical address of
// memory that is identity-mapped, so the device sees the very bytes the CPU
// wrote (x86 DMA is coherent; the fence orders the writes first).
unsafe impl Hal for PeerHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let failed = (0, NonNull::dangling());
        if pages == 0 {
            return failed;
        }
        let Ok(phys) = memory::allocate_frames(pages) else {
            log::warn!("peer: dma_alloc of {pages} pages: out of frames");
            return failed;
        };
        let Some(vaddr) = NonNull::new(memory::phys_to_virt(phys)) else {
            return failed;
        };
        // SAFETY: the frames were just allocated to us; they are RAM,
        // identity-mapped, writable and `pages * PAGE_SIZE` bytes long.
        unsafe { core::ptr::write_bytes(vaddr.as_ptr(), 0, pages * PAGE_SIZE) };
        (phys, vaddr)
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        if memory::virt_to_phys(vaddr.as_ptr()) != paddr {
            log::error!("peer: dma_dealloc of {paddr:#x} with a foreign pointer; leaking");
            return -1;
        }
        // SAFETY: the peer frees what one `dma_alloc` gave it, once, after
        // the device stopped using it.
        match unsafe { memory::free_frames(paddr, pages) } {
            Ok(()) => 0,
            Err(error) => {
                log::error!("peer: dma_dealloc of {pages} pages at {paddr:#x}: {error}");
                -1
            }
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        match memory::map_mmio(paddr, size) {
            Ok(pointer) => pointer,
            Err(error) => {
                // `super::pci` mapped every BAR beforehand, so this is not
                // expected; the identity address is where that mapping is.
                log::error!("peer: map_mmio({paddr:#x}, {size}) failed: {error}");
                NonNull::new(memory::phys_to_virt(paddr)).unwrap_or(NonNull::dangling())
            }
        }
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let start = buffer.as_ptr().cast::<u8>();
        let phys = memory::ram_phys_range(start, buffer.len()).unwrap_or_else(|| {
            // Everything the benchmark hands the peer lives in RAM the
            // kernel identity-maps (DMA buffers, heap, stack), so this is
            // not expected; the identity address is the best answer left.
            log::error!(
                "peer: share of {} bytes at {start:p}: not one identity-mapped RAM range",
                buffer.len()
            );
            memory::virt_to_phys(start)
        });
        fence(Ordering::SeqCst);
        phys
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {
        // Zero-copy: the data is in place; keep later reads after the
        // completion that said the device is done.
        fence(Ordering::SeqCst);
    }
}
