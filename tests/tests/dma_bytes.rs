//! `DmaRegion::read_bytes` / `write_bytes`: the word-sized fast path must copy
//! exactly the bytes asked for, at every alignment and length, and never
//! touch a byte outside the range.

use hal::{DmaRegion, PAGE_SIZE};
use tests::host_hal::{HostHal, TEST_OWNER};

/// A byte that no copy in these tests writes, to spot stray stores.
const SENTINEL: u8 = 0xa5;

#[test]
fn copies_round_trip_at_every_alignment_and_length_without_touching_neighbours() {
    let region = DmaRegion::<HostHal>::new(TEST_OWNER, PAGE_SIZE).unwrap();
    for offset in 0..17 {
        for len in 0..41 {
            let filler = vec![SENTINEL; 64];
            assert!(region.write_bytes(0, &filler));
            let src: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ 0x3c).collect();
            assert!(region.write_bytes(offset, &src));

            let mut whole = [0u8; 64];
            assert!(region.read_bytes(0, &mut whole));
            for (at, &byte) in whole.iter().enumerate() {
                let expected = if (offset..offset + len).contains(&at) {
                    src[at - offset]
                } else {
                    SENTINEL
                };
                assert_eq!(byte, expected, "offset {offset} len {len} byte {at}");
            }

            let mut back = vec![0u8; len];
            assert!(region.read_bytes(offset, &mut back));
            assert_eq!(back, src, "offset {offset} len {len}");
        }
    }
}

#[test]
fn copies_past_the_end_are_refused_and_write_nothing() {
    let region = DmaRegion::<HostHal>::new(TEST_OWNER, PAGE_SIZE).unwrap();
    let len = region.len();
    assert!(region.write_bytes(len - 16, &[SENTINEL; 16]));
    assert!(!region.write_bytes(len - 8, &[0u8; 16]));
    assert!(!region.write_bytes(usize::MAX, &[0u8; 2]));
    let mut tail = [0u8; 16];
    assert!(region.read_bytes(len - 16, &mut tail));
    assert_eq!(tail, [SENTINEL; 16]);
    assert!(!region.read_bytes(len - 8, &mut tail));
}
