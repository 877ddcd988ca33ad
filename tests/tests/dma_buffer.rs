//! `hal::DmaBuffer`: bytes while held, a device address (distinct from the
//! CPU address on the host Hal) only while lent, and the same bytes after
//! the loan.

use hal::DmaBuffer;
use tests::host_hal::{HostHal, TEST_OWNER};

#[test]
fn a_buffer_is_zeroed_and_exactly_as_long_as_asked() {
    let buffer = DmaBuffer::<HostHal>::new(TEST_OWNER, 1536).unwrap();
    assert_eq!(buffer.len(), 1536);
    assert_eq!(buffer.as_bytes().len(), 1536);
    assert!(buffer.as_bytes().iter().all(|&b| b == 0));
    assert!(DmaBuffer::<HostHal>::new(TEST_OWNER, 0).is_err());
}

#[test]
fn lending_gives_a_device_address_that_is_not_the_cpu_address_and_reclaim_keeps_the_bytes() {
    let mut buffer = DmaBuffer::<HostHal>::from_bytes(TEST_OWNER, &[7u8; 512]).unwrap();
    buffer.as_bytes_mut()[3] = 9;
    let cpu = buffer.as_bytes().as_ptr() as u64;
    let lent = buffer.lend();
    assert_eq!(lent.len(), 512);
    assert_ne!(lent.device_addr(), cpu, "the host Hal keeps the two apart");
    let buffer = lent.reclaim();
    assert_eq!(buffer.as_bytes()[3], 9);
    assert_eq!(buffer.as_bytes()[4], 7);
}
