//! Packet buffers: one DMA allocation cut into equal buffers, owned by the
//! driver for the device's whole life.
//!
//! Receive and transmit both use a [`BufferPool`] (`hal::DmaBufferPool`):
//! the receive queue posts its buffers to the device and gets them back
//! full; the transmit queue fills one, posts it, and gets it back empty.
//! Because the pool is allocated once, at bring-up, nothing is allocated per
//! packet, and the device addresses never change (§2.7.13: a buffer made
//! available must be memory the device can reach, which is exactly what a
//! `hal::DmaRegion` is).
//!
//! ## Who may touch a buffer when
//!
//! A buffer is either *lent* (in a descriptor chain the device owns) or
//! *held* by the driver. The device only reads or writes a lent buffer, and
//! hands it back through the used ring; `Virtqueue::pop_used` reads the used
//! entry after an acquire barrier, so everything the device wrote is visible
//! once the queue [`reclaim`](BufferPool::reclaim)s the buffer. The pool
//! itself keeps track: [`lend`](BufferPool::lend) is the only way to get a
//! buffer's device address and takes `&mut` pool, and byte slices
//! ([`bytes`](BufferPool::bytes), [`bytes_mut`](BufferPool::bytes_mut)) exist
//! only of held buffers, so the borrow checker, not a `// SAFETY:` comment,
//! keeps the driver from reading a buffer the device may be writing. The
//! `unsafe` slice construction lives in `hal` (`hal/src/dma_pool.rs`); this
//! crate has none.

pub use hal::DmaBufferPool as BufferPool;

/// A stack of free buffer ids, preallocated, so taking and returning one
/// never allocates.
#[derive(Debug, Clone)]
pub struct FreeList {
    ids: alloc::vec::Vec<u16>,
}

impl FreeList {
    /// All of `0..count` free.
    pub fn full(count: u16) -> Self {
        // Reversed, so ids are handed out from 0 upwards (easier to follow in a trace).
        Self {
            ids: (0..count).rev().collect(),
        }
    }

    /// Takes a free id.
    pub fn take(&mut self) -> Option<u16> {
        self.ids.pop()
    }

    /// Returns an id. Never grows past the capacity reserved at creation
    /// unless the caller returns an id twice, which the queues prevent.
    pub fn put(&mut self, id: u16) {
        self.ids.push(id);
    }

    /// Free ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// `true` if no id is free.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// "No buffer": the value in a token-to-buffer map for a token that carries none.
pub const NO_BUFFER: u16 = u16::MAX;
