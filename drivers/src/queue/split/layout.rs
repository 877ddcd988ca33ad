//! Where the three parts of a split virtqueue live in memory
//! (virtio 1.2 §2.7 "Split Virtqueues", §2.7.2 "Legacy Interfaces: A Note on
//! Virtqueue Layout").
//!
//! A split queue of `size` descriptors has three parts, each written by only
//! one side:
//!
//! | part              | written by | alignment | bytes          |
//! |-------------------|------------|-----------|----------------|
//! | descriptor table  | driver     | 16        | 16 * size      |
//! | available ring    | driver     | 2         | 6 + 2 * size   |
//! | used ring         | device     | 4         | 6 + 8 * size   |
//!
//! Modern transports take three addresses, so the parts may be anywhere; this
//! driver still puts them in one DMA allocation (fewer pages) and starts the
//! used ring on a fresh 64-byte cache line, so the line the device writes is
//! never one the driver writes ([`RingLayout::Separate`]).
//!
//! Legacy transports take one page frame number, so the layout is fixed:
//! descriptor table, available ring right behind it, then the used ring at the
//! next multiple of the alignment (4096 for legacy PCI, `QueueAlign` for MMIO
//! v1) ([`RingLayout::Contiguous`]).
//!
//! ```text
//!  offset 0                16*size          16*size+6+2*size    used_offset
//!  +-----------------------+----------------+-------------+-----+-------------------+
//!  | descriptor table      | available ring | (padding to | ... | used ring         |
//!  | 16 bytes x size       | flags idx ring | alignment)  |     | flags idx ring    |
//!  |                       | [size] used_evt|             |     | [size] avail_evt  |
//!  +-----------------------+----------------+-------------+-----+-------------------+
//! ```

use crate::queue::{is_valid_size, QueueError, RingLayout};

/// Bytes per descriptor (`struct virtq_desc`: le64 addr, le32 len, le16 flags, le16 next).
pub const DESCRIPTOR_BYTES: usize = 16;
/// Bytes per used-ring element (`struct virtq_used_elem`: le32 id, le32 len).
pub const USED_ELEM_BYTES: usize = 8;
/// Where the modern layout starts the used ring: a cache line of its own.
pub const SEPARATE_USED_ALIGN: usize = 64;

/// Descriptor flag bits (§2.7.5 "The Virtqueue Descriptor Table").
pub mod desc_flags {
    /// The chain continues with the descriptor named in `next`.
    pub const NEXT: u16 = 1;
    /// The device writes this buffer (otherwise it only reads it).
    pub const WRITE: u16 = 2;
    /// The buffer is a table of descriptors (§2.7.5.3 "Indirect Descriptors").
    pub const INDIRECT: u16 = 4;
}

/// One descriptor exactly as the device reads it (`struct virtq_desc`).
/// Fields are stored little-endian; [`Descriptor::new`] converts.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// Device address of the buffer.
    pub addr: u64,
    /// Length of the buffer in bytes.
    pub len: u32,
    /// [`desc_flags`] bits.
    pub flags: u16,
    /// Index of the next descriptor when `flags` has NEXT.
    pub next: u16,
}

impl Descriptor {
    /// A descriptor in device (little-endian) byte order.
    #[inline(always)]
    pub const fn new(addr: u64, len: u32, flags: u16, next: u16) -> Self {
        Self {
            addr: addr.to_le(),
            len: len.to_le(),
            flags: flags.to_le(),
            next: next.to_le(),
        }
    }
}

impl Descriptor {
    /// The descriptor's 16 bytes as two 8-byte words with the same memory
    /// image. Storing a descriptor field by field takes four stores; as
    /// words, two (stores are what a descriptor costs, and device-visible
    /// memory is written with volatile stores, which the compiler never
    /// merges by itself).
    #[inline(always)]
    pub fn to_words(self) -> [u64; 2] {
        // `len`, `flags` and `next` already hold device byte order, so their
        // in-memory bytes go side by side, in field order: the first field
        // in the low bytes of a little-endian word, the high ones of a
        // big-endian one.
        let (len, flags, next) = (
            u64::from(self.len),
            u64::from(self.flags),
            u64::from(self.next),
        );
        let tail = if cfg!(target_endian = "little") {
            len | flags << 32 | next << 48
        } else {
            len << 32 | flags << 16 | next
        };
        [self.addr, tail]
    }
}

impl Descriptor {
    /// The descriptor's 16 bytes as one 16-byte integer with the same memory
    /// image, so that one plain-integer access writes it whole (the compiler
    /// emits the two 8-byte stores of [`Descriptor::to_words`]).
    #[inline(always)]
    pub fn to_u128(self) -> u128 {
        let [addr, tail] = self.to_words();
        if cfg!(target_endian = "little") {
            u128::from(addr) | u128::from(tail) << 64
        } else {
            u128::from(addr) << 64 | u128::from(tail)
        }
    }
}

const _: () = assert!(core::mem::size_of::<Descriptor>() == DESCRIPTOR_BYTES);

/// Byte offsets inside the available ring (the driver area).
pub mod avail {
    /// `le16 flags`: bit 0 is VIRTQ_AVAIL_F_NO_INTERRUPT.
    pub const FLAGS: usize = 0;
    /// `le16 idx`: where the driver will put the next entry (free-running).
    pub const IDX: usize = 2;
    /// `le16 ring[size]` starts here.
    pub const RING: usize = 4;
    /// Offset of `le16 used_event`, right after the ring (VIRTIO_F_EVENT_IDX).
    pub const fn used_event(size: u16) -> usize {
        RING + 2 * size as usize
    }
}

/// Byte offsets inside the used ring (the device area).
pub mod used {
    /// `le16 flags`: bit 0 is VIRTQ_USED_F_NO_NOTIFY.
    pub const FLAGS: usize = 0;
    /// `le16 idx`: where the device will put the next entry (free-running).
    pub const IDX: usize = 2;
    /// `struct virtq_used_elem ring[size]` starts here.
    pub const RING: usize = 4;
    /// Offset of `le16 avail_event`, right after the ring (VIRTIO_F_EVENT_IDX).
    pub const fn avail_event(size: u16) -> usize {
        RING + super::USED_ELEM_BYTES * size as usize
    }
}

/// The byte offsets of a split ring's three parts within one allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitRingLayout {
    /// Number of descriptors.
    pub size: u16,
    /// Offset of the descriptor table (always 0: it needs the strictest alignment).
    pub desc_offset: usize,
    /// Offset of the available ring.
    pub avail_offset: usize,
    /// Offset of the used ring.
    pub used_offset: usize,
    /// Bytes the whole block needs.
    pub total_bytes: usize,
}

impl SplitRingLayout {
    /// Computes the layout a transport asks for. Fails for an invalid size or
    /// a legacy alignment that is not a power of two of at least 4 (the used
    /// ring's own alignment).
    pub fn new(size: u16, layout: RingLayout) -> Result<Self, QueueError> {
        if !is_valid_size(size) {
            return Err(QueueError::InvalidSize(size));
        }
        let desc_bytes = desc_table_bytes(size);
        let avail_offset = desc_bytes;
        let driver_end = avail_offset + avail_ring_bytes(size);
        let used_bytes = used_ring_bytes(size);
        let (used_offset, total_bytes) = match layout {
            RingLayout::Separate => {
                let used_offset = align_up(driver_end, SEPARATE_USED_ALIGN)
                    .ok_or(QueueError::InvalidSize(size))?;
                (used_offset, used_offset + used_bytes)
            }
            RingLayout::Contiguous { align } => {
                if !align.is_power_of_two() || align < 4 {
                    return Err(QueueError::InvalidAlignment(align));
                }
                let align = align as usize;
                let bad = QueueError::InvalidAlignment(align as u32);
                // §2.7.2: ALIGN(desc + avail) + ALIGN(used).
                let used_offset = align_up(driver_end, align).ok_or(bad)?;
                let total = align_up(used_bytes, align)
                    .and_then(|u| used_offset.checked_add(u))
                    .ok_or(bad)?;
                (used_offset, total)
            }
        };
        Ok(Self {
            size,
            desc_offset: 0,
            avail_offset,
            used_offset,
            total_bytes,
        })
    }
}

/// Bytes of the descriptor table.
pub const fn desc_table_bytes(size: u16) -> usize {
    DESCRIPTOR_BYTES * size as usize
}

/// Bytes of the available ring, including `used_event`.
pub const fn avail_ring_bytes(size: u16) -> usize {
    6 + 2 * size as usize
}

/// Bytes of the used ring, including `avail_event`.
pub const fn used_ring_bytes(size: u16) -> usize {
    6 + USED_ELEM_BYTES * size as usize
}

/// Rounds `value` up to a multiple of `align` (a power of two).
fn align_up(value: usize, align: usize) -> Option<usize> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_as_u128_has_the_same_bytes_as_the_struct() {
        let d = Descriptor::new(0x1122_3344_5566_7788, 0x99aa_bbcc, 0xddee, 0x0f1e);
        let mut fields = [0u8; 16];
        fields[..8].copy_from_slice(&d.addr.to_ne_bytes());
        fields[8..12].copy_from_slice(&d.len.to_ne_bytes());
        fields[12..14].copy_from_slice(&d.flags.to_ne_bytes());
        fields[14..].copy_from_slice(&d.next.to_ne_bytes());
        assert_eq!(d.to_u128().to_ne_bytes(), fields);
    }

    #[test]
    fn legacy_layout_matches_the_spec_formula_for_size_256() {
        // §2.7.2 for qsz 256, align 4096: desc 4096 + avail 518 -> 8192, used 2054 -> 4096.
        let l = SplitRingLayout::new(256, RingLayout::Contiguous { align: 4096 }).unwrap();
        assert_eq!(
            (l.avail_offset, l.used_offset, l.total_bytes),
            (4096, 8192, 12288)
        );
    }

    #[test]
    fn separate_layout_starts_the_used_ring_on_its_own_cache_line() {
        let l = SplitRingLayout::new(8, RingLayout::Separate).unwrap();
        // desc 128, avail 128..150, used at 192.
        assert_eq!(
            (l.avail_offset, l.used_offset, l.total_bytes),
            (128, 192, 192 + 70)
        );
    }

    #[test]
    fn invalid_sizes_and_alignments_are_rejected() {
        assert_eq!(
            SplitRingLayout::new(12, RingLayout::Separate),
            Err(QueueError::InvalidSize(12))
        );
        assert_eq!(
            SplitRingLayout::new(8, RingLayout::Contiguous { align: 3000 }),
            Err(QueueError::InvalidAlignment(3000))
        );
        assert_eq!(
            SplitRingLayout::new(8, RingLayout::Contiguous { align: 2 }),
            Err(QueueError::InvalidAlignment(2))
        );
    }
}
