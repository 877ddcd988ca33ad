//! `hal::Hal` for the bare-metal kernel: what the virtio drivers get from the
//! real machine.
//!
//! - DMA memory comes from the frame allocator (`memory::allocate_frames`), so
//!   it is physically contiguous and page-aligned; it is zeroed here.
//! - A device sees RAM at its physical address (the IOMMU, where there is one,
//!   maps I/O virtual address = physical address, `iommu/mod.rs`), and the
//!   kernel identity-maps RAM, so the CPU sees it there too. The two facts are
//!   kept apart in code: `memory::phys_to_virt` / `memory::virt_to_phys` are
//!   the CPU side, [`device_addr_of`] / [`phys_of_device_addr`] the bus side.
//! - With an IOMMU in strict mode (`iommu::strict`), a device reaches only
//!   what is mapped in its own domain: `dma_alloc` maps its pages (rings) in
//!   the page table of the device the caller names (`hal::DmaOwner`) and
//!   `dma_dealloc` unmaps them there; `share` maps the buffer's pages in that
//!   device's table (writable only if the device may write it) and `unshare`
//!   unmaps them and waits for the IOTLB invalidation. Another device's DMA to
//!   the same address faults. Without an IOMMU, each of these checks one flag
//!   and nothing else.
//! - Sharing a buffer is zero-copy: the device is given the buffer's own
//!   address, after checking that the whole buffer is identity-mapped RAM
//!   (hence physically contiguous). x86 DMA is cache-coherent, so beyond
//!   compiler/CPU ordering fences there is nothing to flush.
//! - MMIO goes through `memory::map_mmio` (uncached); port I/O through the
//!   `in`/`out` instructions.

use core::ptr::NonNull;
use core::sync::atomic::{fence, Ordering};

use hal::{DeviceAddr, Direction, DmaOwner, Hal, HalError, PhysAddr, PortWidth, PAGE_SIZE};
use x86_64::instructions::port::Port;

use crate::memory;

/// The kernel's Hal (see the module docs).
pub struct KernelHal;

/// The bus address at which a device reaches physical address `phys`. The
/// identity: without an IOMMU devices see physical addresses, and the IOMMU's
/// mappings (strict mode) are made at I/O virtual address = physical address.
pub fn device_addr_of(phys: u64) -> DeviceAddr {
    phys
}

/// The physical address behind a bus address from [`device_addr_of`].
pub fn phys_of_device_addr(device_addr: DeviceAddr) -> u64 {
    device_addr
}

// SAFETY: DMA memory is a fresh run of contiguous frames (never handed out
// twice, see `memory::frames`), zeroed before it is returned, identity-mapped
// and reachable by devices at its physical address (mapped there first in
// strict IOMMU mode, where a failed mapping fails the allocation); `mmio_map`
// maps uncached through `memory::map_mmio`; `share` returns the physical
// address of a buffer it has checked to be contiguous, identity-mapped RAM;
// `DEVICE_IO_PORTS` are the PCI I/O windows, where only BARs are decoded.
unsafe impl Hal for KernelHal {
    /// Where QEMU's `pc` and `q35` decode nothing but PCI I/O BARs (SeaBIOS's
    /// map of the port space, `pciinit.c`): 0x1000..0xA000 and
    /// 0xC000..=0xFFFF. SeaBIOS puts BARs at 0xC000 (at 0x1000 when they
    /// need more than 16 KiB), the kernel assigns unplaced ones from 0xC000
    /// (`virtio::pci::IO_WINDOW`). Left out: everything below 0x1000 (PIC,
    /// PIT, DMA controller, ICH9 power management at 0x600, PCI
    /// configuration at 0xCF8) and 0xA000..0xC000 (`pc`'s hotplug and PIIX4
    /// power management at 0xB000). `microvm` has no PCI and no I/O BARs.
    const DEVICE_IO_PORTS: &'static [core::ops::Range<u32>] = &[0x1000..0xa000, 0xc000..0x1_0000];

    fn dma_alloc(owner: DmaOwner, pages: usize) -> Result<(DeviceAddr, NonNull<u8>), HalError> {
        if pages == 0 {
            return Err(HalError::InvalidArgument);
        }
        let phys = memory::allocate_frames(pages).map_err(|_| HalError::OutOfMemory)?;
        let vaddr = NonNull::new(memory::phys_to_virt(phys)).ok_or(HalError::OutOfMemory)?;
        // SAFETY: the frames were just allocated to us, are RAM, identity-mapped
        // and writable, and `pages * PAGE_SIZE` bytes long.
        unsafe { core::ptr::write_bytes(vaddr.as_ptr(), 0, pages * PAGE_SIZE) };
        let device_addr = device_addr_of(phys);
        if crate::iommu::strict() {
            if let Err(error) = crate::iommu::map(owner, phys, pages * PAGE_SIZE, true) {
                // SAFETY: just allocated above, never handed out.
                let _ = unsafe { memory::free_frames(phys, pages) };
                return Err(error);
            }
        }
        if log::log_enabled!(log::Level::Trace) {
            log::trace!(
                "dma_alloc {pages} pages at {phys:#x} (device {device_addr:#x}) for {owner:?}"
            );
        }
        Ok((device_addr, vaddr))
    }

    unsafe fn dma_dealloc(
        owner: DmaOwner,
        device_addr: DeviceAddr,
        vaddr: NonNull<u8>,
        pages: usize,
    ) {
        let phys = memory::virt_to_phys(vaddr.as_ptr());
        if phys_of_device_addr(device_addr) != phys {
            // Freeing the wrong frames would corrupt someone else's memory;
            // leaking them is the safe failure.
            log::error!(
                "dma_dealloc with device address {device_addr:#x} but CPU address {phys:#x}; leaking {pages} pages"
            );
            return;
        }
        if crate::iommu::strict() {
            // The device loses the pages before anyone else gets them.
            crate::iommu::unmap(owner, phys, pages * PAGE_SIZE);
        }
        // SAFETY: the caller promises these are the pages of one `dma_alloc`
        // that nothing uses any more.
        if let Err(error) = unsafe { memory::free_frames(phys, pages) } {
            log::error!("dma_dealloc of {pages} pages at {phys:#x} failed: {error}");
        } else if log::log_enabled!(log::Level::Trace) {
            log::trace!("dma_dealloc {pages} pages at {phys:#x}");
        }
    }

    fn mmio_map(phys: PhysAddr, size: usize) -> Result<NonNull<u8>, HalError> {
        memory::map_mmio(phys, size)
    }

    // Sharing is zero-copy (RAM is identity-mapped and DMA is cache-coherent
    // on x86), so `unshare` below only orders memory, which a driver's
    // acquire read of the used ring already does...
    const UNSHARE_IS_NOOP: bool = true;

    // ...unless an IOMMU in strict mode maps each share and must unmap it.
    // Decided once at boot, before any device is brought up.
    #[inline(always)]
    fn unshare_is_noop() -> bool {
        !crate::iommu::strict()
    }

    unsafe fn share(
        owner: DmaOwner,
        buffer: NonNull<[u8]>,
        direction: Direction,
    ) -> Result<DeviceAddr, HalError> {
        let len = buffer.len();
        if len == 0 {
            return Err(HalError::InvalidArgument);
        }
        let start = buffer.as_ptr().cast::<u8>();
        let Some(phys) = memory::ram_phys_range(start, len) else {
            log::debug!(
                "cannot share {len} bytes at {start:p}: not inside one identity-mapped RAM range"
            );
            return Err(HalError::InvalidArgument);
        };
        // Make the CPU's earlier writes to the buffer visible before the
        // driver tells the device about it.
        fence(Ordering::SeqCst);
        let device_addr = device_addr_of(phys);
        if crate::iommu::strict() {
            crate::iommu::map(owner, phys, len, direction != Direction::ToDevice)?;
        }
        if log::log_enabled!(log::Level::Trace) {
            log::trace!("share {len} bytes at {phys:#x} ({direction:?}) with {owner:?}, zero-copy");
        }
        Ok(device_addr)
    }

    unsafe fn unshare(
        owner: DmaOwner,
        device_addr: DeviceAddr,
        buffer: NonNull<[u8]>,
        direction: Direction,
    ) {
        // Zero-copy: the data is already in place. The fence keeps the CPU's
        // later reads of the buffer after whatever told it the device is done.
        fence(Ordering::SeqCst);
        if crate::iommu::strict() {
            crate::iommu::unmap(owner, phys_of_device_addr(device_addr), buffer.len());
        }
        if log::log_enabled!(log::Level::Trace) {
            log::trace!(
                "unshare {} bytes at device {device_addr:#x} ({direction:?})",
                buffer.len()
            );
        }
    }

    unsafe fn port_read(port: u16, width: PortWidth) -> Result<u32, HalError> {
        // SAFETY: the caller owns the device behind `port`.
        let value = unsafe {
            match width {
                PortWidth::Byte => Port::<u8>::new(port).read() as u32,
                PortWidth::Word => Port::<u16>::new(port).read() as u32,
                PortWidth::Dword => Port::<u32>::new(port).read(),
            }
        };
        Ok(value)
    }

    unsafe fn port_write(port: u16, width: PortWidth, value: u32) -> Result<(), HalError> {
        // SAFETY: the caller owns the device behind `port`.
        unsafe {
            match width {
                PortWidth::Byte => Port::<u8>::new(port).write(value as u8),
                PortWidth::Word => Port::<u16>::new(port).write(value as u16),
                PortWidth::Dword => Port::<u32>::new(port).write(value),
            }
        }
        Ok(())
    }

    /// Spins on the calibrated TSC (`crate::clock`). Before calibration,
    /// or if it failed, one write per microsecond to port 0x80, the POST
    /// code port that PC firmware and Linux (`io_delay`) use as a delay:
    /// roughly a microsecond on real hardware, a VM exit under KVM.
    fn delay_us(micros: u32) {
        let hz = crate::clock::tsc_hz();
        if hz == 0 {
            for _ in 0..micros {
                // SAFETY: port 0x80 is the POST diagnostic port; writing it
                // has no effect beyond the time it takes.
                unsafe { Port::<u8>::new(0x80).write(0) };
            }
            return;
        }
        let ticks = (u128::from(hz) * u128::from(micros)).div_ceil(1_000_000) as u64;
        let start = crate::clock::tsc();
        while crate::clock::tsc().wrapping_sub(start) < ticks {
            core::hint::spin_loop();
        }
    }
}
