//! Event suppression, both ways (virtio 1.2 §2.8.10 "Driver and Device
//! Event Suppression", §2.8.14 "Event Suppression Structure Format",
//! §2.8.21.3 "Sending Available Buffer Notifications").
//!
//! Each side publishes a `struct pvirtq_event_suppress { le16 off_wrap; le16
//! flags }` telling the other whether to send notifications: ENABLE,
//! DISABLE, or (with VIRTIO_F_RING_EVENT_IDX) DESC: "only when the
//! descriptor at offset `off_wrap & 0x7fff` with wrap counter `off_wrap >>
//! 15` is made available / used".
//!
//! - Driver to device (after `publish`): [`PackedQueue::wants_notification`]
//!   reads the device's structure; for DESC it runs the split ring's
//!   event-index test on positions modulo `2 * size`
//!   ([`need_event_in_ring`]).
//! - Device to driver: the driver's structure says DISABLE while interrupts
//!   are off, ENABLE (or DESC at the next used position, moved after every
//!   completion like the split ring's `used_event`) while they are on.

use hal::Hal;
use log::{log_enabled, trace, Level};

use super::layout::{event_flags, RingPosition};
use super::trace::PendingNote;
use super::PackedQueue;

/// The event-index test on positions modulo `modulus` (`2 * size` for the
/// packed ring): `true` if moving from `old` to `new` (at most `modulus - 1`
/// slots) passed `event`, i.e. `event` lies among the slots just
/// made available (or used). All three must be below `modulus`.
///
/// ```text
///   (new - event - 1) mod modulus  <  (new - old) mod modulus
/// ```
///
/// This is the split ring's `vring_need_event` (see [`crate::queue::event_idx`])
/// with `2 * size` in place of 2^16: the split ring's indices are
/// free-running 16-bit counters, the packed ring's positions are offsets
/// plus one bit of lap, i.e. counters modulo two laps.
pub fn need_event_in_ring(event: u32, new: u32, old: u32, modulus: u32) -> bool {
    let behind = (new + 2 * modulus - event - 1) % modulus;
    let published = (new + modulus - old) % modulus;
    behind < published
}

impl<H: Hal> PackedQueue<H> {
    /// The device event suppression answer for a publish that moved the
    /// driver's position from `old` to `new`.
    pub(super) fn wants_notification(
        &self,
        off_wrap: u16,
        flags: u16,
        old: RingPosition,
        new: RingPosition,
    ) -> bool {
        match flags & event_flags::MASK {
            event_flags::DISABLE => false,
            event_flags::DESC if self.event_idx => {
                let event = RingPosition::from_event_word(off_wrap);
                if event.offset >= self.size {
                    return true; // not a slot of this ring: notify, to be safe
                }
                let modulus = 2 * u32::from(self.size);
                need_event_in_ring(
                    event.linear(self.size),
                    new.linear(self.size),
                    old.linear(self.size),
                    modulus,
                )
            }
            // ENABLE, DESC without EVENT_IDX (invalid), the reserved value 3.
            _ => true,
        }
    }

    /// With EVENT_IDX and interrupts on, moves the DESC event to the next
    /// used position, so the device interrupts for the next completion only.
    pub(super) fn publish_used_event(&self) {
        if self.event_idx && self.interrupts_enabled {
            self.write_driver_event(self.last_used.event_word(), event_flags::DESC);
            // The next pop reads the ring; that read must not pass this
            // store, or the device could miss the event while we miss its
            // descriptor.
            self.order.full();
        }
    }

    /// The driver area as a new (or reset) queue sets it: with EVENT_IDX,
    /// DESC at the first used position; otherwise ENABLE (zero, as allocated).
    pub(super) fn write_initial_driver_event(&self) {
        if self.event_idx {
            self.write_driver_event(RingPosition::START.event_word(), event_flags::DESC);
        } else {
            self.write_driver_event(0, event_flags::ENABLE);
        }
    }

    /// Asks the device not to interrupt for this queue (a hint: an
    /// interrupt may still arrive): driver event flags DISABLE.
    pub(super) fn suppress_interrupts(&mut self) {
        self.interrupts_enabled = false;
        self.write_driver_event(self.last_used.event_word(), event_flags::DISABLE);
        if log_enabled!(Level::Trace) {
            trace!(
                "vq{}: interrupts off: driver event suppression flags := DISABLE",
                self.index
            );
        }
    }

    /// Asks the device to interrupt for the next completion (DESC at the next
    /// used position with EVENT_IDX, ENABLE without), then checks whether a
    /// completion arrived meanwhile. Returns `true` if one is pending: the
    /// caller must then poll again, because the device may have written it
    /// before it saw the request and will not interrupt for it.
    pub(super) fn request_interrupts(&mut self) -> bool {
        self.interrupts_enabled = true;
        if self.event_idx {
            self.write_driver_event(self.last_used.event_word(), event_flags::DESC);
        } else {
            self.write_driver_event(0, event_flags::ENABLE);
        }
        // Our store must be visible before we look at the ring (the mirror
        // of the barrier in `publish`).
        self.order.full();
        let flags = self.read_descriptor_flags(self.last_used.offset);
        let pending = !self.broken && self.published_in_flight > 0 && self.last_used.is_used(flags);
        if log_enabled!(Level::Trace) {
            if self.event_idx {
                trace!(
                    "vq{}: interrupts on: driver event suppression := DESC at {} (interrupt when the device uses the descriptor there); desc[{}] flags {:#06x}: {}",
                    self.index,
                    self.last_used,
                    self.last_used.offset,
                    flags,
                    PendingNote(pending)
                );
            } else {
                trace!(
                    "vq{}: interrupts on: driver event suppression flags := ENABLE; desc[{}] flags {:#06x}: {}",
                    self.index,
                    self.last_used.offset,
                    flags,
                    PendingNote(pending)
                );
            }
        }
        pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_in_ring_works_across_the_two_lap_wrap() {
        let size = 5u16;
        let m = 2 * u32::from(size);
        let pos = |offset, wrap| RingPosition { offset, wrap }.linear(size);
        // Published 4 slots: 3 (wrap 0), 4 (wrap 0), 0 (wrap 1), 1 (wrap 1).
        let old = pos(3, false);
        let new = pos(2, true);
        assert!(need_event_in_ring(pos(0, true), new, old, m));
        assert!(need_event_in_ring(pos(3, false), new, old, m));
        assert!(need_event_in_ring(pos(1, true), new, old, m));
        assert!(
            !need_event_in_ring(pos(2, true), new, old, m),
            "not reached yet"
        );
        assert!(!need_event_in_ring(pos(0, false), new, old, m), "other lap");
        assert!(
            !need_event_in_ring(pos(2, false), new, old, m),
            "already passed"
        );
    }
}
