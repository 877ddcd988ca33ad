//! # Handing a request's data to the device (virtio 1.2 §5.2.6, the data part)
//!
//! The two ways a request's data reaches its chain, split out of
//! `blk/core.rs`: registered buffers are lent ([`lend_data`], no copy, no
//! share), a blocking helper's caller slices shared through
//! [`hal::Hal::share`] ([`share_data`]); both cut what they hand over into
//! segments of at most `size_max` bytes ([`push_segments`], §5.2.4). Each
//! loan is recorded in the request's pool slot first, so releasing the
//! slot gives back exactly what was handed over.

use alloc::vec::Vec;
use core::ptr::NonNull;

use hal::{DeviceAddr, Direction, Hal};

use super::buffers::{BufferId, BufferTable};
use super::core::{Loan, RequestQueue};
use super::error::count_u32;
use super::plan::Cursor;
use super::BlkError;
use crate::queue::Segment;

/// The data of one request: `bytes` bytes of `buffers` from `start`.
pub(super) struct DataPart<'a> {
    pub(super) buffers: &'a [NonNull<[u8]>],
    pub(super) start: Cursor,
    pub(super) bytes: usize,
    pub(super) direction: Direction,
    /// Where segments are cut (`size_max`).
    pub(super) max_segment_bytes: usize,
}

/// Shares the data `part` and appends its segments, cut at
/// `max_segment_bytes`. On error, what was shared is recorded in the slot,
/// so releasing the slot unshares it.
pub(super) fn share_data<H: Hal>(
    rq: &mut RequestQueue<H>,
    slot: usize,
    segments: &mut Vec<Segment>,
    part: DataPart<'_>,
) -> Result<(), BlkError> {
    let DataPart {
        buffers,
        start,
        bytes,
        direction,
        max_segment_bytes,
    } = part;
    let writable = direction == Direction::FromDevice;
    let mut cursor = start;
    let mut left = bytes;
    while left > 0 {
        let Some(buffer) = buffers.get(cursor.buffer) else {
            return Err(BlkError::EmptyRequest);
        };
        let available = buffer.len() - cursor.offset.min(buffer.len());
        if available == 0 {
            cursor = Cursor {
                buffer: cursor.buffer + 1,
                offset: 0,
            };
            continue;
        }
        let part_len = available.min(left);
        let shares = rq.slots[slot].shares as usize;
        if !H::unshare_is_noop() && shares >= rq.max_shares {
            return Err(BlkError::TooManySegments {
                needed: count_u32(shares + 1),
                max: count_u32(rq.max_shares),
            });
        }
        // SAFETY: `cursor.offset < buffer.len()` (available > 0), so the
        // pointer stays inside the caller's buffer.
        let part_start = unsafe { buffer.cast::<u8>().add(cursor.offset) };
        let part = NonNull::slice_from_raw_parts(part_start, part_len);
        // SAFETY: the caller of `submit` (or the blocking helper, which holds
        // the borrow until every request is done or the device is reset)
        // guarantees the buffer stays valid and untouched until the request
        // completes; the slot records the share so it is ended exactly once.
        let addr = unsafe { H::share(rq.owner, part, direction) }.map_err(BlkError::Share)?;
        // A share is recorded only so that its `unshare` can be called; a
        // zero-copy Hal needs none (`Hal::unshare_is_noop`). Measured: the
        // records cost a 4 KiB request about 70 instructions (module docs).
        if !H::unshare_is_noop() {
            rq.shares[slot * rq.max_shares + shares] = Loan::Shared {
                addr,
                buffer: part,
                direction,
            };
            rq.slots[slot].shares += 1;
        }
        push_segments(segments, addr, part_len, writable, max_segment_bytes);
        left -= part_len;
        cursor.offset += part_len;
    }
    Ok(())
}

/// Lends the registered buffers `ids` to the device for the request in
/// `slot` and appends their segments, cut at `max_segment_bytes`. Each loan
/// is recorded in the slot first, so releasing the slot on error reclaims
/// what was lent.
#[inline(always)]
pub(super) fn lend_data<H: Hal>(
    rq: &mut RequestQueue<H>,
    slot: usize,
    segments: &mut Vec<Segment>,
    ids: &[BufferId],
    registered: &mut BufferTable<H>,
    direction: Direction,
    max_segment_bytes: usize,
) -> Result<(), BlkError> {
    let writable = direction == Direction::FromDevice;
    // Validation allowed at most `max_segments` (= `max_shares`) segments,
    // so there is a record for each buffer; checked anyway.
    if ids.len() > rq.max_shares {
        return Err(BlkError::TooManySegments {
            needed: count_u32(ids.len()),
            max: count_u32(rq.max_shares),
        });
    }
    let first = slot * rq.max_shares;
    for (at, &id) in (first..).zip(ids) {
        // Validation saw it held; the same id twice in one request is
        // caught here (already lent).
        let (addr, len) = registered.lend(id).ok_or(BlkError::BufferUnavailable(id))?;
        rq.shares[at] = Loan::Lent(id);
        rq.slots[slot].shares += 1;
        push_segments(segments, addr, len, writable, max_segment_bytes);
    }
    Ok(())
}

/// Appends `len` bytes at device address `addr` as segments of at most
/// `max_segment_bytes` (`size_max`, §5.2.4).
pub(super) fn push_segments(
    segments: &mut Vec<Segment>,
    addr: DeviceAddr,
    len: usize,
    writable: bool,
    max_segment_bytes: usize,
) {
    let mut offset = 0usize;
    while offset < len {
        let piece = (len - offset).min(max_segment_bytes);
        let at = addr + offset as u64;
        segments.push(if writable {
            Segment::writable(at, piece as u32)
        } else {
            Segment::readable(at, piece as u32)
        });
        offset += piece;
    }
}
