//! Receiving used buffers from the device: `pop_used` (virtio 1.2 §2.8.22
//! "Receiving Used Buffers From The Device", §2.8.1 for the AVAIL/USED test).
//!
//! The driver looks at exactly one place: the descriptor at its used
//! position ([`PackedQueue::next_used_position`]). If its flags say *used*
//! for the lap the driver expects, the device has written a buffer id and
//! a length there; both are checked against driver-private state (the
//! device is not trusted, see the module documentation of
//! [`super::PackedQueue`]), the id is freed, and the used position moves on
//! by as many slots as that buffer occupied.

use hal::Hal;
use log::{log_enabled, trace, warn, Level};

use super::trace::{DriverEventNote, FlagNames};
use super::{BufferState, PackedQueue};
use crate::queue::{QueueError, Token, Used};

impl<H: Hal> PackedQueue<H> {
    /// Takes the next completion, if the device has written a used
    /// descriptor at the driver's used position. Completions come in the
    /// order the device finished them, which need not be the order they
    /// were added.
    ///
    /// Errors: see the module documentation. After
    /// [`QueueError::UsedLengthTooLong`] the queue goes on; after an id
    /// error it is broken.
    pub(super) fn take_used(&mut self) -> Result<Option<Used>, QueueError> {
        if self.broken {
            return Err(QueueError::DeviceBroken);
        }
        if self.published_in_flight == 0 {
            // The slot holds the driver's own descriptors from an earlier lap.
            return Ok(None);
        }
        let at = self.last_used;
        let flags = self.read_descriptor_flags(at.offset);
        if !at.is_used(flags) {
            return Ok(None);
        }
        // Read id and length only after the flags that cover them (the
        // device writes them first, then a barrier, then the flags).
        self.order.after_index_read();
        let (id, len) = self.read_descriptor_id_len(at.offset);
        let (descriptors, writable_len) = match self.buffers.get(id as usize) {
            None => {
                return Err(self.break_queue(QueueError::UsedIdOutOfRange {
                    id: u32::from(id),
                    size: self.size,
                }))
            }
            Some(&BufferState::Published {
                descriptors,
                writable_len,
            }) => (descriptors, writable_len),
            Some(_) => return Err(self.break_queue(QueueError::UsedIdNotInFlight { id })),
        };
        self.buffers[id as usize] = BufferState::Free;
        self.free_ids.push(id);
        self.free_count += descriptors;
        self.in_flight -= 1;
        self.published_in_flight -= 1;
        self.last_used = at.advance(descriptors, self.size);
        self.publish_used_event();
        let token = Token(id);
        if len > writable_len {
            let error = QueueError::UsedLengthTooLong {
                token,
                len,
                max: writable_len,
            };
            self.counters.device_errors += 1;
            warn!(
                "vq{}: used descriptor at slot {} rejected: {}",
                self.index, at, error
            );
            return Err(error);
        }
        self.counters.completions += 1;
        if log_enabled!(Level::Trace) {
            trace!(
                "vq{}: desc[{}]: flags {:#06x} = {}: AVAIL = USED = {} = the device wrap counter we expect, so used: id {}, len {}: request {} done; skip its {} descriptor(s): next used position {}; {} descriptors free, {} in flight{}",
                self.index,
                at,
                flags,
                FlagNames(flags),
                u8::from(at.wrap),
                id,
                len,
                token,
                descriptors,
                self.last_used,
                self.free_count,
                self.in_flight,
                DriverEventNote(self),
            );
        }
        Ok(Some(Used { token, len }))
    }

    /// Marks the queue broken after a fatal violation and returns the error.
    fn break_queue(&mut self, error: QueueError) -> QueueError {
        self.broken = true;
        self.counters.device_errors += 1;
        warn!(
            "vq{}: used descriptor at slot {}: {}; the next used descriptor cannot be found, queue marked broken, the device needs a reset",
            self.index, self.last_used, error
        );
        error
    }
}
