//! A [`Hal`] for host tests that makes driver mistakes visible.
//!
//! - **Device addresses are not CPU pointers.** Each DMA allocation and each
//!   shared buffer gets a device address from its own range starting at
//!   [`DEVICE_ADDR_BASE`], never reused, with an unmapped gap after it. A driver
//!   that hands the device a CPU pointer, or a stale address, is caught by the
//!   device model's [`HostHal::translate`] returning `None`.
//! - **Shared buffers are bounce-copied.** [`Hal::share`] copies the buffer into
//!   fresh memory (for `FromDevice` it fills the bounce buffer with
//!   [`POISON`]); [`Hal::unshare`] copies it back. A driver that reads its
//!   buffer before `unshare` sees the old contents, not the device's data.
//! - **Registers are device models.** [`HostHal::map_mmio`] and
//!   [`HostHal::map_ports`] attach a [`RegisterDevice`] to a physical range on
//!   the current thread; `mmio_map` then returns a *fake* pointer (never
//!   dereferenced: it points at no memory) and every `mmio_read`/`mmio_write` or
//!   port access is routed to the model, which can record it.
//! - **Leaks are countable**: [`HostHal::live_dma_pages`] and
//!   [`HostHal::live_shares`] count what the current thread holds.
//! - **Owners are recorded.** Every allocation and share keeps the
//!   [`DmaOwner`] it was made for; `dma_dealloc` and `unshare` must name the
//!   same one, and [`HostHal::owners_seen`] lists every owner this thread
//!   allocated or shared for, so a test can check that a driver passes its
//!   own transport's (what the kernel's IOMMU maps by).
//! - **Time is fake.** [`Hal::delay_us`] sleeps not at all: it advances a
//!   per-thread clock ([`HostHal::fake_clock_us`]), so a test of a device
//!   that never finishes a reset runs in no time and can still check how
//!   long the driver would have waited.
//!
//! Register devices are per thread, so parallel tests do not see each other's
//! devices. DMA memory is in a process-wide table so a device model running on
//! another thread can still translate addresses.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Mutex;
use std::thread::ThreadId;

use std::collections::BTreeSet;

use hal::{
    DeviceAddr, Direction, DmaOwner, Hal, HalError, PhysAddr, PortWidth, Register, PAGE_SIZE,
};

/// First device address handed out. Far from any heap pointer on Linux/x86_64
/// user space, so a CPU pointer given to a device never translates, yet below
/// 2^44 so that legacy transports (a 32-bit page frame number) can reach it.
pub const DEVICE_ADDR_BASE: u64 = 0x0e00_0000_0000;

/// The owner tests without a transport (queue tests, models sharing their
/// own buffers) allocate and share for: one device, never
/// [`DmaOwner::NO_DEVICE`].
pub const TEST_OWNER: DmaOwner = DmaOwner::new(0x7e57);

/// What a `FromDevice` bounce buffer holds before the device writes it.
pub const POISON: u8 = 0xa5;

/// Fake CPU addresses for MMIO windows: `FAKE_MMIO_BASE + phys`. Not mapped
/// memory; only meaningful to [`HostHal::mmio_read`]/`mmio_write`.
const FAKE_MMIO_BASE: usize = 0x5a00_0000_0000;

/// A register-level device model: gets every access to its window.
pub trait RegisterDevice {
    /// A read of `width` bytes (1, 2, 4 or 8) at `offset` from the window's start.
    fn read(&mut self, offset: u64, width: usize) -> u64;
    /// A write of `width` bytes at `offset`.
    fn write(&mut self, offset: u64, width: usize, value: u64);
}

/// A handle to a register device shared between a test and the Hal.
pub type SharedDevice = Rc<RefCell<dyn RegisterDevice>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dma,
    Share {
        direction: Direction,
        original: usize,
    },
}

#[derive(Debug, Clone, Copy)]
struct Allocation {
    cpu: usize,
    len: usize,
    kind: Kind,
    owner: ThreadId,
    /// The device it was allocated or shared for.
    device: DmaOwner,
}

struct DmaTable {
    next_device_addr: u64,
    by_device_addr: BTreeMap<u64, Allocation>,
}

static DMA: Mutex<DmaTable> = Mutex::new(DmaTable {
    next_device_addr: DEVICE_ADDR_BASE,
    by_device_addr: BTreeMap::new(),
});

struct Window {
    phys: u64,
    len: u64,
    device: SharedDevice,
}

thread_local! {
    static MMIO: RefCell<Vec<Window>> = const { RefCell::new(Vec::new()) };
    static PORTS: RefCell<Vec<Window>> = const { RefCell::new(Vec::new()) };
    /// The fake clock [`Hal::delay_us`] advances (per thread, like the devices).
    static FAKE_CLOCK_US: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Every owner this thread allocated or shared for ([`HostHal::owners_seen`]).
    static OWNERS_SEEN: RefCell<BTreeSet<DmaOwner>> = const { RefCell::new(BTreeSet::new()) };
}

/// The host test Hal. See the module documentation.
pub struct HostHal;

fn lock() -> std::sync::MutexGuard<'static, DmaTable> {
    // A test that panicked while holding the lock must not poison every other test.
    DMA.lock().unwrap_or_else(|e| e.into_inner())
}

fn page_layout(len: usize) -> Layout {
    Layout::from_size_align(len.max(1), PAGE_SIZE).expect("page layout")
}

fn insert(cpu: usize, len: usize, kind: Kind, device: DmaOwner) -> DeviceAddr {
    OWNERS_SEEN.with(|seen| seen.borrow_mut().insert(device));
    let mut table = lock();
    let device_addr = table.next_device_addr;
    // Leave an unmapped page after each range so an overrun does not translate.
    let span = (len.div_ceil(PAGE_SIZE) + 1) * PAGE_SIZE;
    table.next_device_addr += span as u64;
    table.by_device_addr.insert(
        device_addr,
        Allocation {
            cpu,
            len,
            kind,
            owner: std::thread::current().id(),
            device,
        },
    );
    device_addr
}

fn find_window(windows: &[Window], addr: u64) -> Option<(SharedDevice, u64)> {
    windows
        .iter()
        .find(|w| addr >= w.phys && addr - w.phys < w.len)
        .map(|w| (w.device.clone(), addr - w.phys))
}

impl HostHal {
    /// The CPU pointer for `len` bytes the device wants at `device_addr`, or
    /// `None` if any part of that range was not given to the device (the
    /// device model treats that as a driver bug and fails the test).
    pub fn translate(device_addr: DeviceAddr, len: usize) -> Option<*mut u8> {
        let table = lock();
        let (&start, alloc) = table.by_device_addr.range(..=device_addr).next_back()?;
        let offset = device_addr - start;
        let end = offset.checked_add(len as u64)?;
        if end > alloc.len as u64 {
            return None;
        }
        Some((alloc.cpu + offset as usize) as *mut u8)
    }

    /// All live device-visible ranges: (device address, CPU pointer, length).
    pub fn device_ranges() -> Vec<(DeviceAddr, *mut u8, usize)> {
        lock()
            .by_device_addr
            .iter()
            .map(|(&d, a)| (d, a.cpu as *mut u8, a.len))
            .collect()
    }

    /// DMA pages currently allocated by this thread.
    pub fn live_dma_pages() -> usize {
        let me = std::thread::current().id();
        lock()
            .by_device_addr
            .values()
            .filter(|a| a.owner == me && a.kind == Kind::Dma)
            .map(|a| a.len / PAGE_SIZE)
            .sum()
    }

    /// Every [`DmaOwner`] this thread has allocated DMA memory or shared a
    /// buffer for since the last [`HostHal::forget_owners_seen`].
    pub fn owners_seen() -> BTreeSet<DmaOwner> {
        OWNERS_SEEN.with(|seen| seen.borrow().clone())
    }

    /// Panics unless `owner` is the only device this thread allocated DMA
    /// memory or shared a buffer for (since [`HostHal::forget_owners_seen`]):
    /// a driver must name its own transport's owner every time, or behind
    /// the kernel's IOMMU its device could not reach the memory.
    pub fn assert_dma_only_for(owner: DmaOwner) {
        let seen = Self::owners_seen();
        assert_eq!(
            seen,
            BTreeSet::from([owner]),
            "DMA allocated or shared for other owners than the driver's transport's"
        );
    }

    /// Starts [`HostHal::owners_seen`] afresh.
    pub fn forget_owners_seen() {
        OWNERS_SEEN.with(|seen| seen.borrow_mut().clear());
    }

    /// The owner of the live allocation or share that holds `device_addr`.
    pub fn owner_of(device_addr: DeviceAddr) -> Option<DmaOwner> {
        let table = lock();
        let (&start, alloc) = table.by_device_addr.range(..=device_addr).next_back()?;
        (device_addr - start < alloc.len as u64).then_some(alloc.device)
    }

    /// Microseconds this thread has waited in [`Hal::delay_us`] (a fake
    /// clock: nothing sleeps, the count goes up).
    pub fn fake_clock_us() -> u64 {
        FAKE_CLOCK_US.with(|c| c.get())
    }

    /// Buffers currently shared (not yet unshared) by this thread.
    pub fn live_shares() -> usize {
        let me = std::thread::current().id();
        lock()
            .by_device_addr
            .values()
            .filter(|a| a.owner == me && matches!(a.kind, Kind::Share { .. }))
            .count()
    }

    /// Attaches a register device to physical MMIO `phys..phys+len` on this thread.
    pub fn map_mmio(phys: PhysAddr, len: u64, device: SharedDevice) {
        MMIO.with(|m| m.borrow_mut().push(Window { phys, len, device }));
    }

    /// Attaches a register device to I/O ports `base..base+len` on this thread.
    pub fn map_ports(base: u16, len: u16, device: SharedDevice) {
        PORTS.with(|p| {
            p.borrow_mut().push(Window {
                phys: base as u64,
                len: len as u64,
                device,
            })
        });
    }

    /// Removes every register device of this thread.
    pub fn clear_devices() {
        MMIO.with(|m| m.borrow_mut().clear());
        PORTS.with(|p| p.borrow_mut().clear());
    }

    fn mmio_target(addr: usize) -> (SharedDevice, u64) {
        let phys = (addr - FAKE_MMIO_BASE) as u64;
        MMIO.with(|m| find_window(&m.borrow(), phys))
            .unwrap_or_else(|| panic!("MMIO access at {phys:#x}: no device model mapped there"))
    }
}

// SAFETY: allocations are zeroed, page-aligned, exclusively owned and stay
// valid until dealloc; device addresses translate back to them through the
// table; shares are bounce buffers valid until unshare; every port is a
// device model (or unanswered), so no port access can touch host memory.
unsafe impl Hal for HostHal {
    /// All of them: port I/O reaches only the device models a test registered.
    // One window (all 64 Ki ports), not a list of the numbers in it.
    #[allow(clippy::single_range_in_vec_init)]
    const DEVICE_IO_PORTS: &'static [core::ops::Range<u32>] = &[0..0x1_0000];

    fn delay_us(micros: u32) {
        FAKE_CLOCK_US.with(|c| c.set(c.get() + u64::from(micros)));
    }

    fn dma_alloc(owner: DmaOwner, pages: usize) -> Result<(DeviceAddr, NonNull<u8>), HalError> {
        if pages == 0 {
            return Err(HalError::InvalidArgument);
        }
        let len = pages * PAGE_SIZE;
        // SAFETY: the layout has a non-zero size.
        let cpu =
            NonNull::new(unsafe { alloc_zeroed(page_layout(len)) }).ok_or(HalError::OutOfMemory)?;
        let device_addr = insert(cpu.as_ptr() as usize, len, Kind::Dma, owner);
        Ok((device_addr, cpu))
    }

    unsafe fn dma_dealloc(
        owner: DmaOwner,
        device_addr: DeviceAddr,
        vaddr: NonNull<u8>,
        pages: usize,
    ) {
        let alloc = lock().by_device_addr.remove(&device_addr);
        match alloc {
            Some(a) if a.kind == Kind::Dma && a.cpu == vaddr.as_ptr() as usize && a.len == pages * PAGE_SIZE && a.device == owner => {
                // SAFETY: allocated in dma_alloc with this layout.
                unsafe { dealloc(vaddr.as_ptr(), page_layout(a.len)) }
            }
            other => panic!("dma_dealloc({device_addr:#x}, {pages} pages) does not match an allocation: {other:?}"),
        }
    }

    fn mmio_map(phys: PhysAddr, size: usize) -> Result<NonNull<u8>, HalError> {
        let covered = MMIO.with(|m| {
            m.borrow()
                .iter()
                .any(|w| phys >= w.phys && phys + size as u64 <= w.phys + w.len)
        });
        if !covered {
            return Err(HalError::MapFailed);
        }
        NonNull::new((FAKE_MMIO_BASE + phys as usize) as *mut u8).ok_or(HalError::MapFailed)
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
        // SAFETY: non-zero layout.
        let bounce = unsafe { alloc_zeroed(page_layout(len)) };
        if bounce.is_null() {
            return Err(HalError::OutOfMemory);
        }
        let original = buffer.as_ptr() as *mut u8;
        // SAFETY: `bounce` has `len` bytes; the caller guarantees `buffer` is valid.
        unsafe {
            match direction {
                Direction::FromDevice => bounce.write_bytes(POISON, len),
                _ => bounce.copy_from_nonoverlapping(original, len),
            }
        }
        Ok(insert(
            bounce as usize,
            len,
            Kind::Share {
                direction,
                original: original as usize,
            },
            owner,
        ))
    }

    unsafe fn unshare(
        owner: DmaOwner,
        device_addr: DeviceAddr,
        buffer: NonNull<[u8]>,
        direction: Direction,
    ) {
        let alloc = lock().by_device_addr.remove(&device_addr);
        let Some(a) = alloc else {
            panic!("unshare({device_addr:#x}): not a shared buffer");
        };
        assert_eq!(a.device, owner, "unshare names another device than share");
        let original = buffer.as_ptr() as *mut u8;
        assert_eq!(
            a.kind,
            Kind::Share {
                direction,
                original: original as usize
            },
            "unshare arguments differ from share"
        );
        assert_eq!(a.len, buffer.len(), "unshare length differs from share");
        let bounce = a.cpu as *mut u8;
        // SAFETY: both ranges are `a.len` bytes and valid (bounce is ours,
        // `buffer` by the caller's contract).
        unsafe {
            if direction != Direction::ToDevice {
                original.copy_from_nonoverlapping(bounce, a.len);
            }
            // Poison before freeing so a use-after-unshare by a model is noticed.
            bounce.write_bytes(POISON, a.len);
            dealloc(bounce, page_layout(a.len));
        }
    }

    unsafe fn port_read(port: u16, width: PortWidth) -> Result<u32, HalError> {
        let (device, offset) = PORTS
            .with(|p| find_window(&p.borrow(), port as u64))
            .ok_or(HalError::Unsupported)?;
        let value = device.borrow_mut().read(offset, port_width(width));
        Ok(value as u32)
    }

    unsafe fn port_write(port: u16, width: PortWidth, value: u32) -> Result<(), HalError> {
        let (device, offset) = PORTS
            .with(|p| find_window(&p.borrow(), port as u64))
            .ok_or(HalError::Unsupported)?;
        device
            .borrow_mut()
            .write(offset, port_width(width), value as u64);
        Ok(())
    }

    unsafe fn mmio_read<T: Register>(addr: NonNull<T>) -> T {
        let (device, offset) = Self::mmio_target(addr.as_ptr() as usize);
        let value = device.borrow_mut().read(offset, T::WIDTH);
        T::from_u64(value)
    }

    unsafe fn mmio_write<T: Register>(addr: NonNull<T>, value: T) {
        let (device, offset) = Self::mmio_target(addr.as_ptr() as usize);
        device.borrow_mut().write(offset, T::WIDTH, value.to_u64());
    }
}

fn port_width(width: PortWidth) -> usize {
    match width {
        PortWidth::Byte => 1,
        PortWidth::Word => 2,
        PortWidth::Dword => 4,
    }
}

#[cfg(test)]
mod self_tests {
    use super::*;
    use hal::{DmaRegion, MmioRegion};

    #[test]
    fn device_addresses_differ_from_cpu_pointers_and_translate_back() {
        let region = DmaRegion::<HostHal>::new(DmaOwner::new(7), 3 * PAGE_SIZE).unwrap();
        assert_eq!(
            HostHal::owner_of(region.device_addr() + 5),
            Some(DmaOwner::new(7))
        );
        assert_ne!(region.device_addr(), region.as_ptr().as_ptr() as u64);
        assert_eq!(
            HostHal::translate(region.device_addr() + 8, 8),
            Some(region.as_ptr().as_ptr().wrapping_add(8))
        );
        assert_eq!(
            HostHal::translate(region.device_addr() + 3 * PAGE_SIZE as u64 - 4, 8),
            None
        );
        assert_eq!(HostHal::translate(region.as_ptr().as_ptr() as u64, 1), None);
        assert_eq!(HostHal::live_dma_pages(), 3);
        drop(region);
        assert_eq!(HostHal::live_dma_pages(), 0);
    }

    #[test]
    fn from_device_share_is_poisoned_until_unshare() {
        let mut buffer = [0u8; 16];
        let ptr = NonNull::from(&mut buffer[..]);
        // SAFETY: `buffer` outlives the share and is not touched until unshare.
        let device_addr =
            unsafe { HostHal::share(DmaOwner::new(3), ptr, Direction::FromDevice) }.unwrap();
        let bounce = HostHal::translate(device_addr, 16).unwrap();
        // SAFETY: the bounce buffer is 16 bytes.
        unsafe {
            assert_eq!(*bounce, POISON);
            *bounce = 42;
        }
        assert_eq!(
            buffer[0], 0,
            "the driver's buffer must not change before unshare"
        );
        // SAFETY: same arguments as the share.
        unsafe { HostHal::unshare(DmaOwner::new(3), device_addr, ptr, Direction::FromDevice) };
        assert_eq!(buffer[0], 42);
        assert_eq!(HostHal::live_shares(), 0);
    }

    struct Recorder(Vec<(u64, usize, Option<u64>)>);
    impl RegisterDevice for Recorder {
        fn read(&mut self, offset: u64, width: usize) -> u64 {
            self.0.push((offset, width, None));
            0x1234
        }
        fn write(&mut self, offset: u64, width: usize, value: u64) {
            self.0.push((offset, width, Some(value)));
        }
    }

    #[test]
    fn register_accesses_reach_the_device_model() {
        let rec = Rc::new(RefCell::new(Recorder(Vec::new())));
        HostHal::map_mmio(0xfeb0_0000, 0x200, rec.clone());
        let regs = MmioRegion::<HostHal>::map(0xfeb0_0000, 0x200).unwrap();
        assert_eq!(regs.read::<u32>(0x10), Some(0x1234));
        assert!(regs.write::<u16>(0x20, 7));
        assert_eq!(regs.read::<u32>(0x200), None, "out of window");
        assert_eq!(rec.borrow().0, vec![(0x10, 4, None), (0x20, 2, Some(7))]);
        assert!(MmioRegion::<HostHal>::map(0x1000, 4).is_err());
        HostHal::clear_devices();
    }
}

/// [`HostHal`] without the bounce buffers: only buffers inside a DMA
/// allocation can be shared, at their own device address (the device
/// reaches the caller's buffer itself), and the Hal says
/// [`Hal::UNSHARE_IS_NOOP`], as the kernel's identity-mapped Hal does, so
/// drivers may skip `unshare`. Tests the drivers' zero-copy path: data
/// must arrive without an `unshare` copying it back.
#[derive(Debug)]
pub struct ZeroCopyHostHal;

// SAFETY: as for `HostHal`, except that a share is the caller's buffer
// itself, inside a live DMA allocation.
unsafe impl Hal for ZeroCopyHostHal {
    const UNSHARE_IS_NOOP: bool = true;
    const DEVICE_IO_PORTS: &'static [core::ops::Range<u32>] = HostHal::DEVICE_IO_PORTS;

    fn delay_us(micros: u32) {
        HostHal::delay_us(micros)
    }

    fn dma_alloc(owner: DmaOwner, pages: usize) -> Result<(DeviceAddr, NonNull<u8>), HalError> {
        HostHal::dma_alloc(owner, pages)
    }

    unsafe fn dma_dealloc(
        owner: DmaOwner,
        device_addr: DeviceAddr,
        vaddr: NonNull<u8>,
        pages: usize,
    ) {
        // SAFETY: passed on from the caller.
        unsafe { HostHal::dma_dealloc(owner, device_addr, vaddr, pages) }
    }

    fn mmio_map(phys: PhysAddr, size: usize) -> Result<NonNull<u8>, HalError> {
        HostHal::mmio_map(phys, size)
    }

    unsafe fn share(
        owner: DmaOwner,
        buffer: NonNull<[u8]>,
        _direction: Direction,
    ) -> Result<DeviceAddr, HalError> {
        OWNERS_SEEN.with(|seen| seen.borrow_mut().insert(owner));
        // Like the kernel's identity map: only memory the device can reach
        // (here, a DMA allocation) can be shared, at its own device address.
        let (start, len) = (buffer.as_ptr() as *mut u8 as usize, buffer.len());
        if len == 0 {
            return Err(HalError::InvalidArgument);
        }
        lock()
            .by_device_addr
            .iter()
            .find(|(_, a)| a.kind == Kind::Dma && start >= a.cpu && start + len <= a.cpu + a.len)
            .map(|(&device_addr, a)| device_addr + (start - a.cpu) as u64)
            .ok_or(HalError::InvalidArgument)
    }

    unsafe fn unshare(
        _owner: DmaOwner,
        device_addr: DeviceAddr,
        _buffer: NonNull<[u8]>,
        _direction: Direction,
    ) {
        panic!("unshare({device_addr:#x}) on a Hal that said it need not be called");
    }

    unsafe fn port_read(port: u16, width: PortWidth) -> Result<u32, HalError> {
        // SAFETY: passed on from the caller.
        unsafe { HostHal::port_read(port, width) }
    }

    unsafe fn port_write(port: u16, width: PortWidth, value: u32) -> Result<(), HalError> {
        // SAFETY: passed on from the caller.
        unsafe { HostHal::port_write(port, width, value) }
    }

    unsafe fn mmio_read<T: Register>(addr: NonNull<T>) -> T {
        // SAFETY: passed on from the caller.
        unsafe { HostHal::mmio_read(addr) }
    }

    unsafe fn mmio_write<T: Register>(addr: NonNull<T>, value: T) {
        // SAFETY: passed on from the caller.
        unsafe { HostHal::mmio_write(addr, value) }
    }
}

/// PCI configuration mechanism #1 (ports 0xCF8..=0xCFF) through the host
/// Hal's port models: safe here, because every host port is a model.
pub fn port_io_config() -> drivers::pci::PortIoConfig<HostHal> {
    let ports = hal::PortRange::device_ports(
        u64::from(drivers::pci::CONFIG_ADDRESS_PORT),
        drivers::pci::CONFIG_PORTS as u64,
    )
    .expect("the host Hal's device ports cover 0xCF8..=0xCFF");
    drivers::pci::PortIoConfig::new(ports).expect("0xCF8..=0xCFF is mechanism #1")
}
