//! The event-index test (virtio 1.2 §2.7.10 "Available Buffer Notification
//! Suppression", §2.7.7 "Used Buffer Notification Suppression", both with
//! VIRTIO_F_EVENT_IDX).
//!
//! With VIRTIO_F_EVENT_IDX each side publishes an *event index* telling the
//! other "wake me when your index moves past this value":
//!
//! - the device writes `avail_event` (after the used ring): the driver notifies
//!   only if publishing moved `avail.idx` past it;
//! - the driver writes `used_event` (after the available ring): the device
//!   interrupts only if adding used entries moved `used.idx` past it.
//!
//! "Moved past" is decided by [`need_event`]. The indices are free-running
//! 16-bit counters, so the test is done in wrapping arithmetic: it asks whether
//! `event` lies in the half-open window `[old, new)` of indices just published,
//! measured backwards from `new`:
//!
//! ```text
//!   (new - event - 1) mod 2^16  <  (new - old) mod 2^16
//! ```
//!
//! The left side is how far behind `new` the event index is (minus one, so
//! `event == new - 1` gives 0); the right side is how many entries were just
//! published. Example across the wrap: old = 65534, new = 2 (4 entries:
//! 65534, 65535, 0, 1), event = 0: `(2 - 0 - 1) = 1 < (2 - 65534) mod 2^16 = 4`,
//! so notify. With event = 2 (the device wants to hear only after entry 2):
//! `(2 - 2 - 1) mod 2^16 = 65535`, not `< 4`, so stay quiet.

/// `true` if moving an index from `old` to `new` crossed `event`, i.e. the
/// other side asked to be told (the spec's `vring_need_event`).
#[inline]
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::need_event;

    #[test]
    fn event_inside_the_published_window_needs_a_notification() {
        assert!(need_event(0, 1, 0));
        assert!(need_event(5, 8, 3));
        assert!(need_event(7, 8, 3), "the last published entry counts");
        assert!(need_event(3, 8, 3), "the first published entry counts");
    }

    #[test]
    fn event_outside_the_window_does_not() {
        assert!(!need_event(8, 8, 3), "event not yet reached");
        assert!(!need_event(2, 8, 3), "event already passed earlier");
        assert!(!need_event(0, 5, 5), "nothing published");
    }

    #[test]
    fn the_test_is_wrap_safe() {
        assert!(need_event(0, 2, 65534));
        assert!(need_event(65535, 2, 65534));
        assert!(!need_event(2, 2, 65534));
        assert!(!need_event(65533, 2, 65534));
    }
}
