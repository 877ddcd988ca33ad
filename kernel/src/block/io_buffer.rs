//! Large I/O buffers for the self-tests and the benchmarks.
//!
//! They move several MiB per request, more than the kernel heap should
//! hold, so their buffers come from DMA memory (`hal::DmaRegion`, physically
//! contiguous and page-aligned) instead. The kernel people boot has none of
//! this: the module exists with feature `selftest` or `bench`.

use alloc::format;
use alloc::string::String;

use hal::DmaRegion;

use crate::hal_impl::KernelHal;

/// A page-aligned, physically contiguous buffer from DMA memory, for
/// transfers too large for the kernel heap (the self-tests and the
/// benchmark move several MiB at once). Zeroed when made.
pub struct IoBuffer {
    region: DmaRegion<KernelHal>,
    len: usize,
}

impl IoBuffer {
    /// A buffer of `len` bytes.
    pub fn new(len: usize) -> Result<Self, String> {
        let region = DmaRegion::<KernelHal>::new(len.max(1))
            .map_err(|e| format!("{len} bytes of DMA memory: {e}"))?;
        Ok(Self { region, len })
    }

    /// The bytes.
    #[cfg(feature = "selftest")]
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the region is `len` (or more) bytes of RAM owned by this
        // buffer alone, mapped for the CPU; a device only touches it while a
        // driver call borrows it (the borrow checker then forbids this one).
        unsafe { core::slice::from_raw_parts(self.region.as_ptr().as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only view.
        unsafe { core::slice::from_raw_parts_mut(self.region.as_ptr().as_ptr(), self.len) }
    }
}
