//! Large I/O buffers for the self-tests and the benchmarks.
//!
//! They move several MiB per request, more than the kernel heap should
//! hold, so their buffers come from DMA memory (`hal::DmaBuffer`, physically
//! contiguous and page-aligned) instead. The kernel people boot has none of
//! this: the module exists with feature `selftest` or `bench`.

use alloc::format;
use alloc::string::String;

use hal::{DmaBuffer, DmaOwner};

use crate::hal_impl::KernelHal;

/// A page-aligned, physically contiguous buffer from DMA memory, for
/// transfers too large for the kernel heap (the self-tests and the
/// benchmark move several MiB at once). Zeroed when made. The memory and
/// its byte views are `hal::DmaBuffer`'s; this adds a length of 0 and an
/// error the self-tests can print.
pub struct IoBuffer {
    buffer: DmaBuffer<KernelHal>,
    len: usize,
}

impl IoBuffer {
    /// A buffer of `len` bytes.
    pub fn new(len: usize) -> Result<Self, String> {
        // No device's yet: a driver shares (maps) it for its device per request.
        let buffer = DmaBuffer::new(DmaOwner::NO_DEVICE, len.max(1))
            .map_err(|e| format!("{len} bytes of DMA memory: {e}"))?;
        Ok(Self { buffer, len })
    }

    /// The bytes.
    #[cfg(feature = "selftest")]
    pub fn as_slice(&self) -> &[u8] {
        &self.buffer.as_bytes()[..self.len]
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buffer.as_bytes_mut()[..self.len]
    }
}
