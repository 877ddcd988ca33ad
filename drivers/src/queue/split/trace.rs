//! What trace logging prints for the split ring: descriptors, the
//! event-index arithmetic of a publish, and small formatters for the words
//! in those lines (DESIGN.md: readable beside the spec, and off the hot path
//! unless trace logging is on).

use hal::Hal;
use log::trace;

use super::SplitQueue;
use crate::queue::Segment;

pub(super) fn trace_descriptor(
    queue: u16,
    table: &str,
    id: u16,
    segment: &Segment,
    next: Option<u16>,
) {
    match next {
        Some(next) => trace!(
            "vq{}:   {}[{}]: addr {:#x}, len {}, {} -> next {}",
            queue,
            table,
            id,
            segment.addr,
            segment.len,
            if segment.device_writable {
                "device-writable"
            } else {
                "device-readable"
            },
            next
        ),
        None => trace!(
            "vq{}:   {}[{}]: addr {:#x}, len {}, {} (end of chain)",
            queue,
            table,
            id,
            segment.addr,
            segment.len,
            if segment.device_writable {
                "device-writable"
            } else {
                "device-readable"
            },
        ),
    }
}

pub(super) fn trace_event_idx_decision(queue: u16, event: u16, new: u16, old: u16, notify: bool) {
    let behind = new.wrapping_sub(event).wrapping_sub(1);
    let published = new.wrapping_sub(old);
    trace!(
        "vq{}: publish: avail.idx {} -> {} ({} new); device's avail_event = {}; need_event: (new - avail_event - 1) mod 65536 = ({} - {} - 1) mod 65536 = {} {} (new - old) mod 65536 = ({} - {}) mod 65536 = {} -> {}",
        queue,
        old,
        new,
        published,
        event,
        new,
        event,
        behind,
        if notify { "<" } else { ">=" },
        new,
        old,
        published,
        if notify {
            "notify: the device asked to be woken once avail.idx passed avail_event, and this publish moved it past"
        } else {
            "suppressed: avail_event is not among the entries just published, so the device is still catching up and will find them itself"
        }
    );
}

/// Formats the indirect-table part of the queue's creation trace line.
pub(super) struct IndirectNote(pub(super) u16);

impl core::fmt::Display for IndirectNote {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            0 => f.write_str("none"),
            n => write!(f, "{n} entries each, one per descriptor"),
        }
    }
}

/// Formats the `used_event` part of a completion's trace line.
pub(super) struct UsedEventNote<'a, H: Hal>(pub(super) &'a SplitQueue<H>);

impl<H: Hal> core::fmt::Display for UsedEventNote<'_, H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let q = self.0;
        match (q.event_idx, q.interrupts_enabled) {
            (false, _) => Ok(()),
            (true, true) => write!(
                f,
                "; used_event := {} (interrupt when used.idx moves past {})",
                q.last_used, q.last_used
            ),
            (true, false) => write!(
                f,
                "; used_event := {} (interrupts off)",
                q.last_used.wrapping_sub(1)
            ),
        }
    }
}
