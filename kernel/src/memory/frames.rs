//! The physical frame allocator: which 4 KiB frames of RAM are free.
//!
//! One bit per frame (1 = in use, 0 = free) over the span from the lowest to the
//! highest usable frame of the memory map. Holes in the map (MMIO windows, the
//! gap below 4 GiB) are simply bits that are never cleared. The bitmap is kept
//! in a free run of RAM chosen at boot, so the allocator needs no heap.
//!
//! Allocation is *next-fit*: the search for a run of `n` free frames starts
//! where the previous one ended and wraps around once. That keeps successive
//! allocations close together and avoids rescanning the busy low frames on
//! every call. Freeing the run that ends exactly at the cursor pulls the
//! cursor back, so an allocate/free pair leaves the allocator as it found it
//! (and the next allocation reuses those frames).
//!
//! Runs are *physically contiguous* and page-aligned by construction, which is
//! what DMA needs (virtio 1.2 section 2.7: a virtqueue's parts live in
//! guest-physical memory the device reads directly).
//!
//! The same [`FrameAllocator`] type manages the machine's RAM (through
//! [`super::allocate_frames`] and friends) and, in the self-tests, private
//! little instances over made-up ranges whose frames are never touched.

use core::fmt;

/// Size of one frame (and of a small page).
pub const FRAME_SIZE: u64 = 4096;

/// Why a frame request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// No free run of the requested length exists (or would exist below the limit).
    OutOfMemory,
    /// Zero frames, an unaligned address, or a range outside the managed span.
    InvalidArgument,
    /// Some frame of a run being freed was not allocated (a double free).
    NotAllocated,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameError::OutOfMemory => "no free run of frames that long",
            FrameError::InvalidArgument => "invalid frame range",
            FrameError::NotAllocated => "frame was not allocated (double free?)",
        })
    }
}

/// Words of bitmap needed to track `frames` frames.
pub const fn bitmap_words_for(frames: u64) -> usize {
    frames.div_ceil(64) as usize
}

/// A bitmap allocator over the frames `first_frame .. first_frame + frame_count`
/// (frame numbers, i.e. physical address / 4096).
pub struct FrameAllocator<'a> {
    /// Bit `i` describes frame `first_frame + i`; 1 = in use or not RAM.
    bitmap: &'a mut [u64],
    first_frame: u64,
    frame_count: u64,
    /// Index (relative to `first_frame`) where the next search starts.
    cursor: u64,
    free_frames: u64,
}

impl<'a> FrameAllocator<'a> {
    /// An allocator over `frame_count` frames starting at physical address
    /// `first_phys`, with every frame marked in use. Call [`Self::release_range`]
    /// for the RAM it may hand out. `bitmap` must hold at least
    /// [`bitmap_words_for`]`(frame_count)` words.
    pub fn new(
        bitmap: &'a mut [u64],
        first_phys: u64,
        frame_count: u64,
    ) -> Result<Self, FrameError> {
        if !first_phys.is_multiple_of(FRAME_SIZE) || bitmap.len() < bitmap_words_for(frame_count) {
            return Err(FrameError::InvalidArgument);
        }
        bitmap.fill(u64::MAX);
        Ok(Self {
            bitmap,
            first_frame: first_phys / FRAME_SIZE,
            frame_count,
            cursor: 0,
            free_frames: 0,
        })
    }

    /// Frames currently free.
    pub fn free_frames(&self) -> u64 {
        self.free_frames
    }

    /// Frames the bitmap spans (free, used and holes).
    pub fn frame_count(&self) -> u64 {
        self.frame_count
    }

    /// Physical address of the first frame the bitmap spans.
    pub fn first_phys(&self) -> u64 {
        self.first_frame * FRAME_SIZE
    }

    /// Marks every whole frame inside `start .. start + len` free (the range is
    /// shrunk inward to frame boundaries and clipped to the managed span).
    /// Used once per usable memory-map entry.
    pub fn release_range(&mut self, start: u64, len: u64) {
        let first = start.div_ceil(FRAME_SIZE);
        let end = start.saturating_add(len) / FRAME_SIZE;
        if let Some((from, to)) = self.clip(first, end) {
            let changed = self.set_bits(from, to, false);
            self.free_frames += changed;
        }
    }

    /// Marks every frame that overlaps `start .. start + len` in use (the range is
    /// widened outward to frame boundaries). Used for the boot structures, the
    /// first megabyte and the bitmap itself. Frames outside the span are ignored.
    pub fn reserve_range(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = start / FRAME_SIZE;
        let end = start.saturating_add(len).div_ceil(FRAME_SIZE);
        if let Some((from, to)) = self.clip(first, end) {
            let changed = self.set_bits(from, to, true);
            self.free_frames -= changed;
        }
    }

    /// Frame numbers `first .. end` clipped to the span, as bitmap indices.
    fn clip(&self, first: u64, end: u64) -> Option<(u64, u64)> {
        let from = first.max(self.first_frame) - self.first_frame;
        let to = end.min(self.first_frame + self.frame_count);
        let to = to.checked_sub(self.first_frame)?;
        (from < to).then_some((from, to))
    }

    /// True if the frame containing `phys` is free. Addresses outside the span
    /// are never free.
    #[cfg(feature = "selftest")]
    pub fn is_free(&self, phys: u64) -> bool {
        let frame = phys / FRAME_SIZE;
        frame >= self.first_frame
            && frame < self.first_frame + self.frame_count
            && !self.is_used(frame - self.first_frame)
    }

    /// Allocates `count` contiguous frames and returns the physical address of
    /// the first.
    pub fn allocate(&mut self, count: u64) -> Result<u64, FrameError> {
        self.allocate_below(count, u64::MAX)
    }

    /// Like [`Self::allocate`], but the whole run must end at or below the
    /// physical address `limit` (boot needs memory the boot page tables reach).
    pub fn allocate_below(&mut self, count: u64, limit: u64) -> Result<u64, FrameError> {
        if count == 0 {
            return Err(FrameError::InvalidArgument);
        }
        if count > self.free_frames {
            return Err(FrameError::OutOfMemory);
        }
        let limit_index = (limit / FRAME_SIZE)
            .saturating_sub(self.first_frame)
            .min(self.frame_count);
        // Next-fit: from the cursor to the end, then once more from the start.
        let found = self
            .find_run(self.cursor, limit_index, count)
            .or_else(|| self.find_run(0, limit_index, count));
        let Some(index) = found else {
            return Err(FrameError::OutOfMemory);
        };
        self.set_bits(index, index + count, true);
        self.free_frames -= count;
        self.cursor = index + count;
        if self.cursor >= self.frame_count {
            self.cursor = 0;
        }
        Ok((self.first_frame + index) * FRAME_SIZE)
    }

    /// Returns `count` frames starting at `phys`, which one earlier
    /// [`Self::allocate`] returned. Nothing changes if any of them is not
    /// allocated (so a double free is reported, not silently absorbed).
    pub fn free(&mut self, phys: u64, count: u64) -> Result<(), FrameError> {
        if count == 0 || !phys.is_multiple_of(FRAME_SIZE) {
            return Err(FrameError::InvalidArgument);
        }
        let frame = phys / FRAME_SIZE;
        if frame < self.first_frame || frame + count > self.first_frame + self.frame_count {
            return Err(FrameError::InvalidArgument);
        }
        let index = frame - self.first_frame;
        if self.count_used(index, index + count) != count {
            return Err(FrameError::NotAllocated);
        }
        self.set_bits(index, index + count, false);
        self.free_frames += count;
        if index + count == self.cursor || (self.cursor == 0 && index + count == self.frame_count) {
            self.cursor = index;
        }
        Ok(())
    }

    /// First index in `from .. to` that starts `count` free frames ending by `to`.
    /// Whole words that are all used or all free are stepped over at once.
    fn find_run(&self, from: u64, to: u64, count: u64) -> Option<u64> {
        let mut run_start = from;
        let mut run_len = 0;
        let mut index = from;
        while index < to {
            if index.is_multiple_of(64) && to - index >= 64 {
                match self.bitmap[(index / 64) as usize] {
                    u64::MAX => {
                        run_len = 0;
                        index += 64;
                        run_start = index;
                        continue;
                    }
                    0 => {
                        run_len += 64;
                        if run_len >= count {
                            return Some(run_start);
                        }
                        index += 64;
                        continue;
                    }
                    _ => {}
                }
            }
            if self.is_used(index) {
                run_len = 0;
                run_start = index + 1;
            } else {
                run_len += 1;
                if run_len == count {
                    return Some(run_start);
                }
            }
            index += 1;
        }
        None
    }

    fn is_used(&self, index: u64) -> bool {
        self.bitmap[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    /// The mask of bits `from .. to` within the word holding `from` (which
    /// must not extend past that word), and how many bits it covers.
    fn word_mask(from: u64, to: u64) -> (u64, u64) {
        let bit = from % 64;
        let bits = (64 - bit).min(to - from);
        let mask = if bits == 64 {
            u64::MAX
        } else {
            ((1u64 << bits) - 1) << bit
        };
        (mask, bits)
    }

    /// Sets (used) or clears (free) bits `from .. to`, a word at a time;
    /// returns how many bits actually changed.
    fn set_bits(&mut self, from: u64, to: u64, used: bool) -> u64 {
        let mut changed = 0;
        let mut index = from;
        while index < to {
            let (mask, bits) = Self::word_mask(index, to);
            let word = &mut self.bitmap[(index / 64) as usize];
            let before = *word;
            if used {
                *word |= mask;
            } else {
                *word &= !mask;
            }
            changed += u64::from((before ^ *word).count_ones());
            index += bits;
        }
        changed
    }

    /// How many of bits `from .. to` are set (in use).
    fn count_used(&self, from: u64, to: u64) -> u64 {
        let mut used = 0;
        let mut index = from;
        while index < to {
            let (mask, bits) = Self::word_mask(index, to);
            used += u64::from((self.bitmap[(index / 64) as usize] & mask).count_ones());
            index += bits;
        }
        used
    }
}
