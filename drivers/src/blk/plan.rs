//! Splitting a transfer into requests the device accepts (virtio 1.2
//! §5.2.4: `size_max`, `seg_max`; §5.2.6.1: data length a multiple of 512).
//!
//! A caller hands the driver a list of buffers (each a multiple of 512
//! bytes) to read into or write from consecutive sectors. The device
//! limits each request:
//!
//! - no single data segment longer than `size_max` (VIRTIO_BLK_F_SIZE_MAX);
//! - no more than `seg_max` data segments (VIRTIO_BLK_F_SEG_MAX), and no
//!   more than one descriptor chain can hold (the queue size, or an
//!   indirect table's capacity, minus the header and the status);
//! - each request's data is a whole number of 512-byte sectors, because
//!   the next request starts at a sector number.
//!
//! The planner walks the buffers segment by segment: a buffer is cut into
//! pieces of at most `size_max` bytes, and a request takes pieces until it
//! has `seg_max` of them. If the request then does not end on a sector
//! boundary, its last piece is shortened to the boundary and the rest goes
//! to the next request. That last piece is always a full `size_max` piece
//! from the middle of a buffer (buffers end on sector boundaries), and
//! `size_max` is at least 512, so it never shrinks to nothing.
//!
//! ```text
//! one 4096-byte buffer, size_max 1000, seg_max 2:
//!   pieces:     [1000][1000][1000][1000][96]
//!   request 1:  [1000][ 536]               = 1536 bytes (3 sectors)
//!   request 2:        [1000][ 536]         = 1536 bytes
//!   request 3:              [1000][  24]   = 1024 bytes
//! ```
//!
//! Inside one request, the driver cuts each buffer's part the same way (at
//! `size_max` from where the part starts), so it produces exactly the
//! segments counted here.

/// A list of buffers, as far as the planner cares: their lengths.
pub trait BufferLengths {
    /// Length of buffer `index`, or `None` past the end of the list.
    fn length(&self, index: usize) -> Option<usize>;
}

impl BufferLengths for [usize] {
    fn length(&self, index: usize) -> Option<usize> {
        self.get(index).copied()
    }
}

impl BufferLengths for [core::ptr::NonNull<[u8]>] {
    fn length(&self, index: usize) -> Option<usize> {
        self.get(index).map(|buffer| buffer.len())
    }
}

/// A position in a list of buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    /// Which buffer.
    pub buffer: usize,
    /// Byte offset inside it.
    pub offset: usize,
}

/// What one request may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitLimits {
    /// Longest data segment in bytes (at least 512).
    pub max_segment_bytes: usize,
    /// Most data segments (at least 1).
    pub max_segments: usize,
    /// Most data bytes (a multiple of 512, at least 512).
    pub max_bytes: usize,
}

/// One request's share of the transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Where its data starts.
    pub start: Cursor,
    /// Data bytes, a multiple of 512.
    pub bytes: usize,
    /// Data segments it needs.
    pub segments: usize,
}

/// Number of segments a part of `len` bytes is cut into.
pub fn segments_for(len: usize, max_segment_bytes: usize) -> usize {
    len.div_ceil(max_segment_bytes)
}

/// Moves `cursor` forward by `bytes` through the buffers, stepping over
/// buffers it reaches the end of.
pub fn advance<L: BufferLengths + ?Sized>(
    lens: &L,
    mut cursor: Cursor,
    mut bytes: usize,
) -> Cursor {
    while let Some(len) = lens.length(cursor.buffer) {
        let left = len - cursor.offset.min(len);
        if bytes < left {
            cursor.offset += bytes;
            return cursor;
        }
        bytes -= left;
        cursor = Cursor {
            buffer: cursor.buffer + 1,
            offset: 0,
        };
    }
    cursor
}

/// The next request's chunk starting at `start`, or `None` when the
/// buffers (each a multiple of 512 bytes long) are used up.
pub fn next_chunk<L: BufferLengths + ?Sized>(
    lens: &L,
    start: Cursor,
    limits: SplitLimits,
) -> Option<Chunk> {
    let start = advance(lens, start, 0);
    let mut cursor = start;
    let mut bytes = 0usize;
    let mut segments = 0usize;
    while segments < limits.max_segments && bytes < limits.max_bytes {
        let Some(len) = lens.length(cursor.buffer) else {
            break;
        };
        let piece = (len - cursor.offset)
            .min(limits.max_segment_bytes)
            .min(limits.max_bytes - bytes);
        bytes += piece;
        segments += 1;
        cursor = advance(lens, cursor, piece);
    }
    // End on a sector boundary: shorten the last piece (see the module docs).
    bytes -= bytes % super::SECTOR_SIZE;
    if bytes == 0 {
        return None;
    }
    Some(Chunk {
        start,
        bytes,
        segments,
    })
}
