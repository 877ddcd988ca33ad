//! The safe views `hal` gives drivers so that `drivers` needs no `unsafe`:
//! `DmaBufferPool` (slices only of buffers the device does not hold) and
//! `PortRange` (port I/O inside a range somebody vouched for, nothing
//! outside it). `DmaRegion`'s type restriction (`DmaValue`) is proved by the
//! `compile_fail` doc-tests in `hal/src/dma.rs`.

use std::cell::RefCell;
use std::rc::Rc;

use hal::{DmaBufferPool, HalError, PortRange};
use tests::host_hal::{HostHal, RegisterDevice, TEST_OWNER};

#[test]
fn a_lent_buffer_has_no_slices_until_it_is_reclaimed() {
    let mut pool = DmaBufferPool::<HostHal>::new(TEST_OWNER, 4, 100).unwrap();
    assert_eq!(pool.count(), 4);
    assert!(pool.bytes(1, 0, 100).is_some(), "held at first");

    let addr = pool.lend(1).expect("a held buffer can be lent");
    assert_eq!(
        addr,
        pool.device_addr() + 100,
        "buffer 1 starts 100 bytes in"
    );
    assert!(pool.is_lent(1));
    assert!(pool.bytes(1, 0, 1).is_none(), "no slice of a lent buffer");
    assert!(pool.bytes_mut(1, 0, 1).is_none());
    assert!(pool.lend(1).is_none(), "lent twice");
    assert!(
        pool.bytes(0, 0, 100).is_some(),
        "its neighbours stay usable"
    );

    assert!(pool.reclaim(1));
    assert!(!pool.reclaim(1), "reclaimed twice");
    pool.bytes_mut(1, 10, 3).unwrap().copy_from_slice(b"abc");
    assert_eq!(pool.bytes(1, 10, 3), Some(&b"abc"[..]));
}

#[test]
fn pool_slices_stay_inside_their_buffer() {
    let mut pool = DmaBufferPool::<HostHal>::new(TEST_OWNER, 2, 64).unwrap();
    assert!(pool.bytes(0, 0, 64).is_some());
    assert!(
        pool.bytes(0, 1, 64).is_none(),
        "one byte into the next buffer"
    );
    assert!(pool.bytes(0, usize::MAX, 2).is_none(), "offset overflow");
    assert!(pool.bytes(2, 0, 1).is_none(), "no buffer 2");
    assert!(pool.lend(2).is_none());
    assert!(!pool.reclaim(2));

    pool.lend(0).unwrap();
    pool.lend(1).unwrap();
    pool.reclaim_all();
    assert!(
        !pool.is_lent(0) && !pool.is_lent(1),
        "a reset takes all back"
    );
    assert_eq!(
        DmaBufferPool::<HostHal>::new(TEST_OWNER, 0, 64).err(),
        Some(HalError::InvalidArgument)
    );
}

/// Records every port access, answering reads with the offset.
#[derive(Default)]
struct Recorder {
    accesses: Vec<(char, u64, usize, u64)>,
}

impl RegisterDevice for Recorder {
    fn read(&mut self, offset: u64, width: usize) -> u64 {
        self.accesses.push(('r', offset, width, 0));
        offset
    }
    fn write(&mut self, offset: u64, width: usize, value: u64) {
        self.accesses.push(('w', offset, width, value));
    }
}

#[test]
fn a_port_range_reaches_its_ports_and_nothing_else() {
    HostHal::clear_devices();
    let device = Rc::new(RefCell::new(Recorder::default()));
    HostHal::map_ports(0xc000, 0x20, device.clone());
    let ports = PortRange::<HostHal>::device_ports(0xc000, 0x20).unwrap();
    let registers = ports.subrange(0x10, 8).unwrap();
    assert_eq!(registers.base(), 0xc010);

    assert_eq!(registers.read::<u16>(2), Ok(0x12));
    assert!(registers.write::<u32>(4, 0xdead_beef).is_ok());
    assert_eq!(
        registers.read::<u32>(8),
        Err(HalError::InvalidArgument),
        "past the end"
    );
    assert_eq!(
        registers.read::<u32>(2),
        Err(HalError::InvalidArgument),
        "misaligned"
    );
    assert!(registers.write::<u8>(8, 1).is_err(), "past the end");
    assert!(ports.subrange(0x18, 9).is_none());
    assert_eq!(
        device.borrow().accesses,
        vec![('r', 0x12, 2, 0), ('w', 0x14, 4, 0xdead_beef)],
        "only the two in-range accesses reached the device"
    );
}

#[test]
fn device_ports_outside_the_hals_windows_are_refused() {
    assert_eq!(
        PortRange::<HostHal>::device_ports(0xfff0, 0x20).err(),
        Some(HalError::InvalidArgument),
        "runs past port 0xffff"
    );
    assert!(PortRange::<HostHal>::device_ports(0x1000, 0).is_err());
    assert!(PortRange::<HostHal>::device_ports(u64::MAX, 2).is_err());
    // A Hal that declares no device ports vouches for nothing.
    assert!(PortRange::<NoPorts>::device_ports(0xc000, 1).is_err());
    // With two windows, a range must lie inside one of them.
    assert!(PortRange::<TwoWindows>::device_ports(0x1000, 0x1000).is_ok());
    assert!(PortRange::<TwoWindows>::device_ports(0xc000, 0x4000).is_ok());
    assert!(
        PortRange::<TwoWindows>::device_ports(0x1ff0, 0x20).is_err(),
        "runs out of the first"
    );
    assert!(
        PortRange::<TwoWindows>::device_ports(0xb000, 0x10).is_err(),
        "in the gap"
    );
    assert!(
        PortRange::<TwoWindows>::device_ports(0x0cf8, 8).is_err(),
        "below both"
    );
}

/// A Hal that forwards to `HostHal` but declares its own device port
/// windows, and has no ports to reach.
macro_rules! windowed_hal {
    ($name:ident, $windows:expr) => {
        struct $name;

        // SAFETY: every function forwards to `HostHal`, whose promises hold;
        // port I/O reaches nothing at all, so any window is honest.
        unsafe impl hal::Hal for $name {
            const DEVICE_IO_PORTS: &'static [std::ops::Range<u32>] = $windows;

            fn delay_us(micros: u32) {
                HostHal::delay_us(micros)
            }

            fn dma_alloc(
                owner: hal::DmaOwner,
                pages: usize,
            ) -> Result<(hal::DeviceAddr, std::ptr::NonNull<u8>), HalError> {
                HostHal::dma_alloc(owner, pages)
            }
            unsafe fn dma_dealloc(
                owner: hal::DmaOwner,
                device_addr: hal::DeviceAddr,
                vaddr: std::ptr::NonNull<u8>,
                pages: usize,
            ) {
                // SAFETY: passed on from the caller.
                unsafe { HostHal::dma_dealloc(owner, device_addr, vaddr, pages) }
            }
            fn mmio_map(
                phys: hal::PhysAddr,
                size: usize,
            ) -> Result<std::ptr::NonNull<u8>, HalError> {
                HostHal::mmio_map(phys, size)
            }
            unsafe fn share(
                owner: hal::DmaOwner,
                buffer: std::ptr::NonNull<[u8]>,
                direction: hal::Direction,
            ) -> Result<hal::DeviceAddr, HalError> {
                // SAFETY: passed on from the caller.
                unsafe { HostHal::share(owner, buffer, direction) }
            }
            unsafe fn unshare(
                owner: hal::DmaOwner,
                device_addr: hal::DeviceAddr,
                buffer: std::ptr::NonNull<[u8]>,
                direction: hal::Direction,
            ) {
                // SAFETY: passed on from the caller.
                unsafe { HostHal::unshare(owner, device_addr, buffer, direction) }
            }
            unsafe fn port_read(_port: u16, _width: hal::PortWidth) -> Result<u32, HalError> {
                Err(HalError::Unsupported)
            }
            unsafe fn port_write(
                _port: u16,
                _width: hal::PortWidth,
                _value: u32,
            ) -> Result<(), HalError> {
                Err(HalError::Unsupported)
            }
        }
    };
}

windowed_hal!(NoPorts, &[]);
windowed_hal!(TwoWindows, &[0x1000..0x2000, 0xc000..0x1_0000]);
