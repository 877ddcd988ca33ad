//! Used-buffer notification suppression: interrupts on and off (virtio 1.2
//! §2.7.7 "Used Buffer Notification Suppression").
//!
//! Without VIRTIO_F_EVENT_IDX the driver sets or clears the available ring's
//! NO_INTERRUPT flag. With it, the driver writes `used_event`: the used index
//! whose arrival should interrupt. While interrupts are on that is the next
//! entry, moved after every completion; while they are off, one the device
//! has already passed, so its `need_event` test stays false.

use hal::Hal;
use log::{log_enabled, trace, Level};

use super::memory::AVAIL_F_NO_INTERRUPT;
use super::SplitQueue;

impl<H: Hal> SplitQueue<H> {
    /// With EVENT_IDX, tells the device which used index should interrupt:
    /// the next one while interrupts are on, one that will never come (the
    /// entry just consumed) while they are off (§2.7.7.2).
    pub(super) fn publish_used_event(&self) {
        if !self.event_idx {
            return;
        }
        if self.interrupts_enabled {
            self.ring.write_used_event(self.last_used);
            // The next pop reads used.idx; that read must not pass this store,
            // or the device could miss the new event while we miss its entry.
            self.order.full();
        } else {
            self.ring.write_used_event(self.last_used.wrapping_sub(1));
        }
    }

    /// Asks the device not to interrupt for this queue (a hint: an interrupt
    /// may still arrive). With EVENT_IDX: `used_event` = the last consumed
    /// index, which the device has already passed; without: the
    /// VIRTQ_AVAIL_F_NO_INTERRUPT flag (§2.7.7).
    pub(super) fn suppress_interrupts(&mut self) {
        self.interrupts_enabled = false;
        if self.event_idx {
            self.ring.write_used_event(self.last_used.wrapping_sub(1));
        } else {
            self.ring.write_avail_flags(AVAIL_F_NO_INTERRUPT);
        }
        if log_enabled!(Level::Trace) {
            if self.event_idx {
                trace!(
                    "vq{}: interrupts off: used_event := {} (already passed, so the device's need_event test stays false)",
                    self.index,
                    self.last_used.wrapping_sub(1)
                );
            } else {
                trace!(
                    "vq{}: interrupts off: avail.flags := NO_INTERRUPT",
                    self.index
                );
            }
        }
    }

    /// Asks the device to interrupt for the next completion, then checks
    /// whether completions arrived meanwhile. Returns `true` if entries are
    /// pending: the caller must then poll again, because the device may have
    /// added them before it saw the request and will not interrupt for them.
    pub(super) fn request_interrupts(&mut self) -> bool {
        self.interrupts_enabled = true;
        if self.event_idx {
            self.ring.write_used_event(self.last_used);
        } else {
            self.ring.write_avail_flags(0);
        }
        // Our store must be visible before we look at used.idx (the mirror of
        // the barrier in `publish`).
        self.order.full();
        let device_idx = self.ring.read_used_idx();
        let pending = !self.broken && device_idx != self.last_used;
        if log_enabled!(Level::Trace) {
            if self.event_idx {
                trace!(
                    "vq{}: interrupts on: used_event := {} (interrupt when used.idx moves past {}); used.idx = {}: {}",
                    self.index,
                    self.last_used,
                    self.last_used,
                    device_idx,
                    if pending { "entries already pending, poll again" } else { "nothing pending" }
                );
            } else {
                trace!(
                    "vq{}: interrupts on: avail.flags := 0; used.idx = {}: {}",
                    self.index,
                    device_idx,
                    if pending {
                        "entries already pending, poll again"
                    } else {
                        "nothing pending"
                    }
                );
            }
        }
        pending
    }
}
