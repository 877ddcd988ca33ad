//! virtio-blk feature bits and device configuration (virtio 1.2 §5.2.3
//! "Feature bits", §5.2.4 "Device configuration layout").
//!
//! The configuration space is one structure; which of its fields exist
//! depends on the negotiated features, so [`BlkInfo::read`] reads only those
//! (and all of them inside one consistent read: a generation-counter loop on
//! modern transports, read-twice on legacy ones, §2.5.1 / §2.5.4):
//!
//! ```text
//! offset  field                        present with
//! 0       le64 capacity                always (in 512-byte sectors)
//! 8       le32 size_max                SIZE_MAX
//! 12      le32 seg_max                 SEG_MAX
//! 16      geometry (le16, u8, u8)      GEOMETRY (not used by this driver)
//! 20      le32 blk_size                BLK_SIZE
//! 24      u8 physical_block_exp        TOPOLOGY
//! 25      u8 alignment_offset          TOPOLOGY
//! 26      le16 min_io_size             TOPOLOGY
//! 28      le32 opt_io_size             TOPOLOGY
//! 32      u8 writeback                 CONFIG_WCE
//! 34      le16 num_queues              MQ
//! 36      le32 max_discard_sectors     DISCARD
//! 40      le32 max_discard_seg         DISCARD
//! 44      le32 discard_sector_alignment DISCARD
//! 48      le32 max_write_zeroes_sectors WRITE_ZEROES
//! 52      le32 max_write_zeroes_seg    WRITE_ZEROES
//! 56      u8 write_zeroes_may_unmap    WRITE_ZEROES
//! ```

use core::fmt;

use crate::transport::{read_config_consistent, ConfigFields, Transport, TransportError};

/// virtio-blk feature bits (§5.2.3).
pub mod feature {
    /// Bit 1: the largest single segment is in `size_max`.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// Bit 2: the most data segments per request is in `seg_max`.
    pub const SEG_MAX: u64 = 1 << 2;
    /// Bit 4: legacy disk geometry in `geometry` (not used by this driver).
    pub const GEOMETRY: u64 = 1 << 4;
    /// Bit 5: the disk is read-only.
    pub const RO: u64 = 1 << 5;
    /// Bit 6: the disk's logical block size is in `blk_size`.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// Bit 9: VIRTIO_BLK_T_FLUSH is supported.
    pub const FLUSH: u64 = 1 << 9;
    /// Bit 10: I/O alignment hints in the topology fields.
    pub const TOPOLOGY: u64 = 1 << 10;
    /// Bit 11: the `writeback` field selects write-back or write-through caching.
    pub const CONFIG_WCE: u64 = 1 << 11;
    /// Bit 12: more than one request queue; how many is in `num_queues`.
    pub const MQ: u64 = 1 << 12;
    /// Bit 13: VIRTIO_BLK_T_DISCARD, with limits in the discard fields.
    pub const DISCARD: u64 = 1 << 13;
    /// Bit 14: VIRTIO_BLK_T_WRITE_ZEROES, with limits in the write-zeroes fields.
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// Every virtio-blk feature this driver implements: what it accepts when
/// offered (the ring features INDIRECT_DESC and EVENT_IDX, and VERSION_1,
/// are added by the shared code).
pub const SUPPORTED_FEATURES: u64 = feature::SIZE_MAX
    | feature::SEG_MAX
    | feature::RO
    | feature::BLK_SIZE
    | feature::FLUSH
    | feature::TOPOLOGY
    | feature::CONFIG_WCE
    | feature::MQ
    | feature::DISCARD
    | feature::WRITE_ZEROES;

/// Byte offsets of the configuration fields (§5.2.4).
pub mod offset {
    /// le64 capacity.
    pub const CAPACITY: usize = 0;
    /// le32 size_max.
    pub const SIZE_MAX: usize = 8;
    /// le32 seg_max.
    pub const SEG_MAX: usize = 12;
    /// le32 blk_size.
    pub const BLK_SIZE: usize = 20;
    /// u8 physical_block_exp.
    pub const PHYSICAL_BLOCK_EXP: usize = 24;
    /// u8 alignment_offset.
    pub const ALIGNMENT_OFFSET: usize = 25;
    /// le16 min_io_size.
    pub const MIN_IO_SIZE: usize = 26;
    /// le32 opt_io_size.
    pub const OPT_IO_SIZE: usize = 28;
    /// u8 writeback.
    pub const WRITEBACK: usize = 32;
    /// le16 num_queues.
    pub const NUM_QUEUES: usize = 34;
    /// le32 max_discard_sectors.
    pub const MAX_DISCARD_SECTORS: usize = 36;
    /// le32 max_discard_seg.
    pub const MAX_DISCARD_SEG: usize = 40;
    /// le32 discard_sector_alignment.
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    /// le32 max_write_zeroes_sectors.
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    /// le32 max_write_zeroes_seg.
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    /// u8 write_zeroes_may_unmap.
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
}

/// I/O alignment hints (VIRTIO_BLK_F_TOPOLOGY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// log2 of logical blocks per physical block.
    pub physical_block_exp: u8,
    /// Offset of the first aligned logical block.
    pub alignment_offset: u8,
    /// Suggested minimum I/O size, in logical blocks.
    pub min_io_size: u16,
    /// Optimal (and maximum suggested) I/O size, in logical blocks.
    pub opt_io_size: u32,
}

/// Limits of VIRTIO_BLK_T_DISCARD (VIRTIO_BLK_F_DISCARD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscardLimits {
    /// Most sectors one range may cover (0 read from the device means no limit).
    pub max_sectors: u32,
    /// Most ranges per request.
    pub max_segments: u32,
    /// Ranges should start and end on multiples of this many sectors.
    pub sector_alignment: u32,
}

/// Limits of VIRTIO_BLK_T_WRITE_ZEROES (VIRTIO_BLK_F_WRITE_ZEROES).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteZeroesLimits {
    /// Most sectors one range may cover (0 read from the device means no limit).
    pub max_sectors: u32,
    /// Most ranges per request.
    pub max_segments: u32,
    /// The device may deallocate (unmap) the range when asked to.
    pub may_unmap: bool,
}

/// Everything the driver learnt from the configuration space, all from one
/// consistent read. Fields of features that were not negotiated are `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkInfo {
    /// Size of the disk in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Largest single data segment in bytes (SIZE_MAX).
    pub size_max: Option<u32>,
    /// Most data segments per request (SEG_MAX), header and status not counted.
    pub seg_max: Option<u32>,
    /// Logical block size in bytes (BLK_SIZE): the unit the disk prefers.
    /// Requests are still addressed in 512-byte sectors.
    pub blk_size: Option<u32>,
    /// Alignment hints (TOPOLOGY).
    pub topology: Option<Topology>,
    /// The cache mode (CONFIG_WCE): `true` for write-back, `false` for write-through.
    pub writeback: Option<bool>,
    /// Request queues the device offers (MQ; 1 otherwise).
    pub num_queues: u16,
    /// Discard limits (DISCARD).
    pub discard: Option<DiscardLimits>,
    /// Write-zeroes limits (WRITE_ZEROES).
    pub write_zeroes: Option<WriteZeroesLimits>,
    /// The disk is read-only (RO).
    pub read_only: bool,
    /// VIRTIO_BLK_T_FLUSH may be used (FLUSH).
    pub flush: bool,
}

impl BlkInfo {
    /// Reads the configuration fields that `negotiated` says exist, in one
    /// consistent read (see [`read_config_consistent`]).
    pub fn read<T: Transport + ?Sized>(
        transport: &mut T,
        negotiated: u64,
    ) -> Result<Self, TransportError> {
        read_config_consistent(transport, |fields| read_fields(fields, negotiated))
    }

    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_sectors
            .saturating_mul(super::SECTOR_SIZE as u64)
    }
}

fn has(negotiated: u64, bit: u64) -> bool {
    negotiated & bit != 0
}

fn read_fields<T: Transport + ?Sized>(
    c: &mut ConfigFields<'_, T>,
    negotiated: u64,
) -> Result<BlkInfo, TransportError> {
    let capacity_sectors = c.u64(offset::CAPACITY)?;
    let size_max = if has(negotiated, feature::SIZE_MAX) {
        Some(c.u32(offset::SIZE_MAX)?)
    } else {
        None
    };
    let seg_max = if has(negotiated, feature::SEG_MAX) {
        Some(c.u32(offset::SEG_MAX)?)
    } else {
        None
    };
    let blk_size = if has(negotiated, feature::BLK_SIZE) {
        Some(c.u32(offset::BLK_SIZE)?)
    } else {
        None
    };
    let topology = if has(negotiated, feature::TOPOLOGY) {
        Some(Topology {
            physical_block_exp: c.u8(offset::PHYSICAL_BLOCK_EXP)?,
            alignment_offset: c.u8(offset::ALIGNMENT_OFFSET)?,
            min_io_size: c.u16(offset::MIN_IO_SIZE)?,
            opt_io_size: c.u32(offset::OPT_IO_SIZE)?,
        })
    } else {
        None
    };
    let writeback = if has(negotiated, feature::CONFIG_WCE) {
        Some(c.u8(offset::WRITEBACK)? != 0)
    } else {
        None
    };
    let num_queues = if has(negotiated, feature::MQ) {
        c.u16(offset::NUM_QUEUES)?
    } else {
        1
    };
    let discard = if has(negotiated, feature::DISCARD) {
        Some(DiscardLimits {
            max_sectors: c.u32(offset::MAX_DISCARD_SECTORS)?,
            max_segments: c.u32(offset::MAX_DISCARD_SEG)?,
            sector_alignment: c.u32(offset::DISCARD_SECTOR_ALIGNMENT)?,
        })
    } else {
        None
    };
    let write_zeroes = if has(negotiated, feature::WRITE_ZEROES) {
        Some(WriteZeroesLimits {
            max_sectors: c.u32(offset::MAX_WRITE_ZEROES_SECTORS)?,
            max_segments: c.u32(offset::MAX_WRITE_ZEROES_SEG)?,
            may_unmap: c.u8(offset::WRITE_ZEROES_MAY_UNMAP)? != 0,
        })
    } else {
        None
    };
    Ok(BlkInfo {
        capacity_sectors,
        size_max,
        seg_max,
        blk_size,
        topology,
        writeback,
        num_queues,
        discard,
        write_zeroes,
        read_only: has(negotiated, feature::RO),
        flush: has(negotiated, feature::FLUSH),
    })
}

impl fmt::Display for BlkInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sectors ({} KiB)",
            self.capacity_sectors,
            self.capacity_sectors / 2
        )?;
        if let Some(b) = self.blk_size {
            write!(f, ", block size {b}")?;
        }
        if let Some(s) = self.seg_max {
            write!(f, ", seg_max {s}")?;
        }
        if let Some(s) = self.size_max {
            write!(f, ", size_max {s}")?;
        }
        write!(f, ", {} queue(s)", self.num_queues)?;
        if self.read_only {
            f.write_str(", read-only")?;
        }
        if let Some(wb) = self.writeback {
            f.write_str(if wb {
                ", write-back cache"
            } else {
                ", write-through cache"
            })?;
        }
        if self.flush {
            f.write_str(", flush")?;
        }
        if let Some(d) = self.discard {
            write!(
                f,
                ", discard (max {} sectors, {} ranges, align {})",
                d.max_sectors, d.max_segments, d.sector_alignment
            )?;
        }
        if let Some(w) = self.write_zeroes {
            write!(
                f,
                ", write-zeroes (max {} sectors, {} ranges{})",
                w.max_sectors,
                w.max_segments,
                if w.may_unmap { ", may unmap" } else { "" }
            )?;
        }
        Ok(())
    }
}
