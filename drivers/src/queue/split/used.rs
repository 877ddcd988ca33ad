//! Receiving used buffers from the device: `pop_used` (virtio 1.2 §2.7.14
//! "Receiving Used Buffers From The Device", §2.7.8 "The Virtqueue Used
//! Ring").
//!
//! Read `used.idx`; if it moved, read the entry it covers (after an acquire
//! barrier), check both against what the driver knows (the device is not
//! trusted: see the module documentation of [`super::SplitQueue`] for what
//! is skipped and what breaks the queue), return the chain's descriptors to
//! the free list, and with EVENT_IDX publish `used_event` so the device
//! knows where the driver is.

use hal::Hal;
use log::{log_enabled, trace, warn, Level};

use super::trace::UsedEventNote;
use super::{DescriptorState, SplitQueue};
use crate::queue::{QueueError, Token, Used};

impl<H: Hal> SplitQueue<H> {
    /// Takes the next completion from the used ring, if the device has put
    /// one there. Completions come in the order the device finished them,
    /// which need not be the order they were added.
    ///
    /// Errors: see the module documentation. After an entry error
    /// (`UsedId*`, `UsedLengthTooLong`) the bad entry is consumed and the
    /// next call continues with the following one; after an index error
    /// (`UsedIndex*`) the queue is broken.
    pub(super) fn take_used(&mut self) -> Result<Option<Used>, QueueError> {
        if self.broken {
            return Err(QueueError::DeviceBroken);
        }
        let device_idx = self.ring.read_used_idx();
        if device_idx == self.last_used && device_idx == self.used_idx_seen {
            // Nothing new, and nothing `check_used_idx` could object to (the
            // index is where it was): the usual answer of a poll, cheaply.
            return Ok(None);
        }
        self.check_used_idx(device_idx)?;
        if device_idx == self.last_used {
            return Ok(None);
        }
        // Read the entry only after the index that covers it (§2.7.14: the
        // device writes the entry, then a barrier, then the index).
        self.order.after_index_read();
        let slot = self.last_used;
        let (id, len) = self.ring.read_used_elem(slot);
        self.last_used = slot.wrapping_add(1);
        self.publish_used_event();
        let result = self.complete(id, len);
        match &result {
            Ok(done) => {
                self.counters.completions += 1;
                if log_enabled!(Level::Trace) {
                    trace!(
                        "vq{}: used.idx = {}, consumed {} -> {}: used.ring[{}] = {{id {}, len {}}}: request {} done; {} descriptors free, {} in flight{}",
                        self.index,
                        device_idx,
                        slot,
                        self.last_used,
                        self.slot_of(slot),
                        id,
                        len,
                        done.token,
                        self.free_count,
                        self.in_flight,
                        UsedEventNote(self),
                    );
                }
            }
            Err(e) => {
                self.counters.device_errors += 1;
                warn!(
                    "vq{}: used.ring[{}] = {{id {}, len {}}} rejected: {}",
                    self.index,
                    self.slot_of(slot),
                    id,
                    len,
                    e
                );
            }
        }
        result.map(Some)
    }

    /// Checks a freshly read `used.idx` against what the driver knows; on a
    /// violation marks the queue broken.
    fn check_used_idx(&mut self, device_idx: u16) -> Result<(), QueueError> {
        let ahead = device_idx.wrapping_sub(self.last_used);
        let error = if ahead > self.size {
            // Outside the window the device may use. Behind what we saw, or far ahead?
            if (device_idx.wrapping_sub(self.used_idx_seen) as i16) < 0 {
                Some(QueueError::UsedIndexBackward {
                    seen: self.used_idx_seen,
                    device_idx,
                })
            } else {
                Some(QueueError::UsedIndexTooFar {
                    consumed: self.last_used,
                    device_idx,
                    size: self.size,
                })
            }
        } else if device_idx.wrapping_sub(self.used_idx_seen) > self.size {
            // Inside the window but behind a value already seen.
            Some(QueueError::UsedIndexBackward {
                seen: self.used_idx_seen,
                device_idx,
            })
        } else {
            None
        };
        match error {
            Some(e) => {
                self.broken = true;
                self.counters.device_errors += 1;
                warn!(
                    "vq{}: {}; queue marked broken, the device needs a reset",
                    self.index, e
                );
                Err(e)
            }
            None => {
                self.used_idx_seen = device_idx;
                Ok(())
            }
        }
    }

    /// Validates a used entry and returns its chain to the free list.
    fn complete(&mut self, id: u32, len: u32) -> Result<Used, QueueError> {
        if id >= self.size as u32 {
            return Err(QueueError::UsedIdOutOfRange {
                id,
                size: self.size,
            });
        }
        let head = id as u16;
        let (tail, descriptors, writable_len) = match self.states[head as usize] {
            DescriptorState::Free => return Err(QueueError::UsedIdNotInFlight { id: head }),
            DescriptorState::Body => return Err(QueueError::UsedIdNotHead { id: head }),
            DescriptorState::Head {
                tail,
                descriptors,
                writable_len,
            } => (tail, descriptors, writable_len),
        };
        // The chain's links are in `next` already; mark it free and splice it
        // onto the front of the free list.
        let mut id = head;
        for _ in 0..descriptors {
            self.states[id as usize] = DescriptorState::Free;
            id = self.next[id as usize];
        }
        self.next[tail as usize] = self.free_head;
        self.free_head = head;
        self.free_count += descriptors;
        self.in_flight -= 1;
        let token = Token(head);
        if len > writable_len {
            return Err(QueueError::UsedLengthTooLong {
                token,
                len,
                max: writable_len,
            });
        }
        Ok(Used { token, len })
    }
}
