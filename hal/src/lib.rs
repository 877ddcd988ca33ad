//! # hal: what a driver may ask of the machine
//!
//! This crate is the line between the virtio drivers (`drivers/`) and whatever
//! they run on: the bare-metal kernel (`kernel/`) or a host test harness
//! (`tests/`). It never names virtio, and the drivers never name x86 or the
//! kernel. Everything a driver needs from the machine goes through the [`Hal`]
//! trait:
//!
//! - **DMA memory** ([`DmaRegion`]): physically contiguous, page-aligned,
//!   zeroed pages the device may read and write, freed on drop; and
//!   [`RingMemory`], such a region holding ring arrays indexed modulo their
//!   power-of-two length, for the hot paths of a virtqueue.
//! - **Address translation**: a DMA region has two addresses, the one the CPU
//!   dereferences ([`DmaRegion::as_ptr`]) and the one the device is given
//!   ([`DmaRegion::device_addr`]). The kernel identity-maps RAM so they happen to
//!   be equal there; the host test Hal makes them differ on purpose, so a driver
//!   that confuses them fails its tests.
//! - **Sharing a buffer** for one request ([`Hal::share`] / [`Hal::unshare`]):
//!   zero-copy in the kernel; a host Hal may bounce-copy and poison to catch a
//!   driver that reads a buffer before the device is done with it.
//! - **Whose DMA it is** ([`DmaOwner`]): every allocation and every share
//!   names the one device that may reach it, so that a Hal with an IOMMU can
//!   map it for that device alone (the kernel keeps one I/O page table per
//!   device). A driver passes its transport's owner (`Transport::dma_owner`
//!   in `drivers`); memory with no device yet says [`DmaOwner::NO_DEVICE`].
//! - **MMIO mapping** ([`Hal::mmio_map`]) of device registers, uncached, and
//!   typed volatile access to them ([`MmioRegion`]). Every register access goes
//!   through [`Hal::mmio_read`] / [`Hal::mmio_write`], plain volatile loads and
//!   stores in the kernel, so that a host Hal can hand them to a device model.
//! - **Port I/O** ([`Hal::port_read`] / [`Hal::port_write`]), which legacy
//!   virtio-pci and PCI configuration mechanism #1 need, reached by drivers
//!   only through a [`PortRange`]: a range of ports somebody promised (once,
//!   with `unsafe`) belongs to the devices the drivers own.
//! - **Packet buffers** ([`DmaBufferPool`]): one DMA region cut into equal
//!   buffers, each either lent to the device or held by the driver; only a
//!   held buffer can be seen as a plain byte slice.
//! - **Data buffers that travel with a request** ([`DmaBuffer`]): DMA memory
//!   its owner reads and writes as bytes, lent to the device by value
//!   ([`DmaBuffer::lend`] → [`LentDmaBuffer`], which has a device address and
//!   no bytes) and reclaimed when the device is done; zero-copy, no
//!   [`Hal::share`] needed.
//!
//! ## Where the `unsafe` is
//!
//! Raw memory and port access live here, so that `drivers` can deny
//! `unsafe_code`. Every `unsafe` block carries a `// SAFETY:` comment (the
//! workspace denies `clippy::undocumented_unsafe_blocks` and
//! `unsafe_op_in_unsafe_fn`). Device-visible memory is only ever read as a
//! [`DmaValue`] (valid for any bit pattern) or, for a buffer the device has
//! handed back, as bytes.
//!
//! The virtio specification (1.2, section 2.7 and 2.6 "Virtqueues") requires
//! that ring memory is in "guest physical memory" the device can reach; this is
//! the crate that makes that promise concrete.

#![no_std]

extern crate alloc;

pub mod barrier;
mod dma;
mod dma_buffer;
mod dma_pool;
mod keep;
mod mmio;
mod port;
mod ring_memory;

pub use dma::{DmaRegion, DmaValue};
pub use dma_buffer::{DmaBuffer, LentDmaBuffer};
pub use dma_pool::DmaBufferPool;
pub use keep::{kept_forever, DeviceVisible};
pub use mmio::{MmioRegion, Register};
pub use port::{PortRange, PortValue};
pub use ring_memory::{RingArray, RingMemory, RingWord};

use core::ptr::NonNull;

/// Size of a page, the unit of DMA allocation.
pub const PAGE_SIZE: usize = 4096;

/// An address as the *device* sees it (a bus address). Never dereference it.
pub type DeviceAddr = u64;

/// A CPU physical address (of MMIO registers, before they are mapped).
pub type PhysAddr = u64;

/// The device a piece of DMA memory or a shared buffer is for: only that
/// device may reach it. An opaque number the transport layer chooses (the
/// drivers derive it from where the device is, `Location::dma_owner`), so
/// that the Hal can tell devices apart without knowing what a bus is.
///
/// A Hal without an IOMMU ignores it; the kernel's, in strict IOMMU mode,
/// maps an allocation or share into the I/O page table of this device only,
/// so another device's DMA to it faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DmaOwner(u64);

impl DmaOwner {
    /// Memory no device may reach yet: a CPU buffer that is later shared for
    /// one request ([`Hal::share`] with the device's owner). Never mapped
    /// for a device at allocation.
    pub const NO_DEVICE: DmaOwner = DmaOwner(0);

    /// The owner numbered `id` (0 is [`DmaOwner::NO_DEVICE`]).
    pub const fn new(id: u64) -> Self {
        Self(id)
    }

    /// The number it was made from.
    pub const fn id(self) -> u64 {
        self.0
    }
}

/// Who writes a shared buffer during a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The driver fills it, the device only reads it (a request header, write data).
    ToDevice,
    /// The device fills it, the driver reads it afterwards (read data, a status byte).
    FromDevice,
    /// Both read and write it.
    Bidirectional,
}

/// Width of a port I/O access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortWidth {
    /// 8 bits (`in al, dx` / `out dx, al`).
    Byte,
    /// 16 bits.
    Word,
    /// 32 bits.
    Dword,
}

/// What can go wrong when asking the machine for something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalError {
    /// No memory (or no physically contiguous run of it) large enough is left.
    OutOfMemory,
    /// A size of zero, an address that is not aligned, a range that overflows.
    InvalidArgument,
    /// The region could not be mapped (outside what the page tables can reach).
    MapFailed,
    /// This machine has no such facility (e.g. port I/O on a host Hal that does not model it).
    Unsupported,
}

impl core::fmt::Display for HalError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let text = match self {
            HalError::OutOfMemory => "out of DMA memory",
            HalError::InvalidArgument => "invalid argument",
            HalError::MapFailed => "mapping failed",
            HalError::Unsupported => "unsupported on this machine",
        };
        f.write_str(text)
    }
}

/// The machine, as a driver sees it.
///
/// All functions are associated functions (no `self`): a machine has one Hal,
/// and drivers are generic over `H: Hal`, which costs nothing at run time.
///
/// # Safety
///
/// Implementors promise that:
/// - `dma_alloc` returns memory that is zeroed, page-aligned, `pages * PAGE_SIZE`
///   bytes long, physically contiguous, not aliased by any other allocation, and
///   reachable by the `owner` device at the returned device address until
///   `dma_dealloc`;
/// - `mmio_map` returns a pointer through which volatile accesses reach the
///   device registers at the given physical address, uncached;
/// - `share` returns a device address at which the `owner` device sees the
///   buffer's contents (or a bounce copy of them) until `unshare`;
/// - [`Hal::DEVICE_IO_PORTS`] holds only ports of devices the drivers may
///   drive (PCI I/O BARs), never a chipset, firmware or PCI configuration
///   port.
pub unsafe trait Hal: 'static {
    /// Allocates `pages` physically contiguous, zeroed pages that device
    /// `owner` may reach (and, behind an IOMMU, no other device).
    /// Returns the device address and the CPU pointer of the first byte.
    fn dma_alloc(owner: DmaOwner, pages: usize) -> Result<(DeviceAddr, NonNull<u8>), HalError>;

    /// Frees pages from [`Hal::dma_alloc`].
    ///
    /// # Safety
    /// `owner`, `device_addr`, `vaddr` and `pages` must be exactly what one
    /// earlier `dma_alloc` returned and was asked for, and the memory must
    /// not be used (by the CPU or the device) afterwards.
    unsafe fn dma_dealloc(
        owner: DmaOwner,
        device_addr: DeviceAddr,
        vaddr: NonNull<u8>,
        pages: usize,
    );

    /// Maps `size` bytes of device registers at physical address `phys`,
    /// uncached, and returns the CPU pointer to the first byte.
    fn mmio_map(phys: PhysAddr, size: usize) -> Result<NonNull<u8>, HalError>;

    /// `true` if [`Hal::share`] is zero-copy and [`Hal::unshare`] has nothing
    /// to do: the device works on the caller's buffer itself (identity-mapped
    /// DMA, coherent caches), so when the device says it is done the data is
    /// already in place. A driver may then skip `unshare`, and the records it
    /// keeps only to call it, provided it reads the device's "done" (a used
    /// ring entry) with acquire ordering before handing the buffer back.
    ///
    /// `false` (the default) for a Hal that bounces or maps buffers: every
    /// share must be ended by its own `unshare`.
    ///
    /// Drivers read it through [`Hal::unshare_is_noop`], which a Hal whose
    /// answer depends on the machine (an IOMMU found at boot) overrides.
    const UNSHARE_IS_NOOP: bool = false;

    /// Whether [`Hal::share`] / [`Hal::unshare`] are zero-copy no-ops *right now*: by default
    /// [`Hal::UNSHARE_IS_NOOP`]. A Hal whose answer is decided at boot overrides it (the
    /// kernel's is `true` unless an IOMMU in strict mode maps every share and must see every
    /// unshare). Drivers ask this, not the constant. The answer must not change while any
    /// share is live.
    #[inline(always)]
    fn unshare_is_noop() -> bool {
        Self::UNSHARE_IS_NOOP
    }

    /// The I/O port windows decoded only by devices the drivers may drive
    /// (where PCI I/O BARs live), so that a driver reaching a port in them
    /// reaches a device's registers, as it does through a memory BAR with
    /// [`MmioRegion`], and nothing else: no interrupt controller, DMA
    /// controller, PCI configuration, power-management or firmware port is
    /// in them. [`PortRange::device_ports`] hands out ranges inside one of
    /// them without `unsafe`; everything else needs [`PortRange::new`]'s
    /// promise.
    ///
    /// Empty by default (a Hal without port I/O).
    const DEVICE_IO_PORTS: &'static [core::ops::Range<u32>] = &[];

    /// Makes `buffer` visible to device `owner` (and, behind an IOMMU, to no
    /// other device) for one request and returns the address it must use.
    ///
    /// # Safety
    /// `buffer` must stay valid, and must not be accessed by the CPU, until the
    /// matching [`Hal::unshare`].
    unsafe fn share(
        owner: DmaOwner,
        buffer: NonNull<[u8]>,
        direction: Direction,
    ) -> Result<DeviceAddr, HalError>;

    /// Ends a [`Hal::share`]: after it returns, data the device wrote is in
    /// `buffer` and the device address is no longer valid.
    ///
    /// # Safety
    /// The arguments must be those of one earlier `share` (and its result), and
    /// the device must be done with the buffer.
    unsafe fn unshare(
        owner: DmaOwner,
        device_addr: DeviceAddr,
        buffer: NonNull<[u8]>,
        direction: Direction,
    );

    /// Reads an I/O port. The value is zero-extended to 32 bits.
    ///
    /// # Safety
    /// Reading a port can have side effects on the device behind it; the caller
    /// must own that device.
    unsafe fn port_read(port: u16, width: PortWidth) -> Result<u32, HalError>;

    /// Writes an I/O port (only the low `width` bits of `value`).
    ///
    /// # Safety
    /// As for [`Hal::port_read`].
    unsafe fn port_write(port: u16, width: PortWidth, value: u32) -> Result<(), HalError>;

    /// Volatile read of one device register at `addr` (a pointer inside a
    /// window from [`Hal::mmio_map`]). The default is a plain volatile load;
    /// a host Hal overrides it to route the access to a device model, which is
    /// how host tests see every register access a transport makes.
    ///
    /// # Safety
    /// `addr` must lie inside a window returned by `mmio_map`, aligned for `T`.
    unsafe fn mmio_read<T: Register>(addr: NonNull<T>) -> T {
        // SAFETY: the caller guarantees `addr` is a mapped, aligned register.
        unsafe { addr.as_ptr().read_volatile() }
    }

    /// Volatile write of one device register; see [`Hal::mmio_read`].
    ///
    /// # Safety
    /// As for [`Hal::mmio_read`].
    unsafe fn mmio_write<T: Register>(addr: NonNull<T>, value: T) {
        // SAFETY: the caller guarantees `addr` is a mapped, aligned register.
        unsafe { addr.as_ptr().write_volatile(value) }
    }

    /// Waits at least `micros` microseconds; a busy wait is fine. Drivers
    /// call it where the specification makes them wait for the device with
    /// nothing to be woken by, such as a reset (virtio 1.2 §2.1.2: "the
    /// driver MUST wait for a read of device_status to return 0"). A host
    /// test Hal advances a fake clock instead of sleeping.
    fn delay_us(micros: u32);
}

/// The number of pages needed to hold `bytes` bytes.
pub const fn pages_for(bytes: usize) -> usize {
    bytes.div_ceil(PAGE_SIZE)
}
