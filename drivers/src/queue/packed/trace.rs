//! What trace logging prints for the packed ring: descriptors, publish
//! decisions with their event-index arithmetic, and small formatters for
//! the words in those lines (DESIGN.md: readable beside the spec, and off
//! the hot path unless trace logging is on).

use core::fmt;

use hal::Hal;
use log::trace;

use super::layout::{desc_flags, event_flags, RingPosition};
use super::PackedQueue;
use crate::queue::Segment;

pub(super) fn trace_descriptor(
    queue: u16,
    position: RingPosition,
    segment: &Segment,
    id: u16,
    flags: u16,
    head: bool,
) {
    trace!(
        "vq{}:   desc[{}]: addr {:#x}, len {}, {}, id {}, flags {:#06x} = {}{}",
        queue,
        position,
        segment.addr,
        segment.len,
        Access(segment.device_writable),
        id,
        flags,
        FlagNames(flags),
        if head {
            " (head: flags held back until publish)"
        } else {
            ""
        }
    );
}

pub(super) fn trace_publish<H: Hal>(
    queue: &PackedQueue<H>,
    old: RingPosition,
    new: RingPosition,
    buffers: u16,
    off_wrap: u16,
    flags: u16,
    notify: bool,
) {
    let size = queue.size;
    let mode = flags & event_flags::MASK;
    let verdict = if notify { "notify" } else { "suppressed" };
    match mode {
        event_flags::DISABLE => trace!(
            "vq{}: publish: {} buffer(s) made available, driver position {} -> {}; device event suppression flags = DISABLE -> {verdict} (the device is busy and will look itself)",
            queue.index, buffers, old, new
        ),
        event_flags::DESC if queue.event_idx => {
            let event = RingPosition::from_event_word(off_wrap);
            if event.offset >= size {
                trace!(
                    "vq{}: publish: {} buffer(s) made available, driver position {} -> {}; device event suppression = DESC at offset {} (not a slot of a {}-entry ring) -> {verdict}, to be safe",
                    queue.index, buffers, old, new, event.offset, size
                );
                return;
            }
            let modulus = 2 * u32::from(size);
            let (e, n, o) = (event.linear(size), new.linear(size), old.linear(size));
            let behind = (n + 2 * modulus - e - 1) % modulus;
            let published = (n + modulus - o) % modulus;
            trace!(
                "vq{}: publish: {} buffer(s) made available, driver position {} -> {}; device event suppression = DESC at {}; as positions mod 2*size = {} (offset, + size when the wrap counter is 0): old {}, new {}, event {}; need_event: (new - event - 1) mod {} = ({} - {} - 1) mod {} = {} {} (new - old) mod {} = ({} - {}) mod {} = {} -> {}",
                queue.index,
                buffers,
                old,
                new,
                event,
                modulus,
                o,
                n,
                e,
                modulus,
                n,
                e,
                modulus,
                behind,
                if notify { "<" } else { ">=" },
                modulus,
                n,
                o,
                modulus,
                published,
                if notify {
                    "notify: the device asked to hear about a descriptor among those just made available"
                } else {
                    "suppressed: the device's event descriptor is not among those just made available"
                }
            );
        }
        _ => trace!(
            "vq{}: publish: {} buffer(s) made available, driver position {} -> {}; device event suppression flags = {:#x} ({}) -> {verdict}",
            queue.index,
            buffers,
            old,
            new,
            mode,
            match mode {
                event_flags::ENABLE => "ENABLE",
                event_flags::DESC => "DESC, but EVENT_IDX was not negotiated",
                _ => "reserved value",
            }
        ),
    }
}

/// "device-readable" / "device-writable".
pub(super) struct Access(pub(super) bool);

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 {
            "device-writable"
        } else {
            "device-readable"
        })
    }
}

/// Descriptor flags as words: `AVAIL=1 USED=0 | NEXT | WRITE`.
pub(super) struct FlagNames(pub(super) u16);

impl fmt::Display for FlagNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = self.0;
        write!(
            f,
            "AVAIL={} USED={}",
            u8::from(flags & desc_flags::AVAIL != 0),
            u8::from(flags & desc_flags::USED != 0)
        )?;
        for (bit, name) in [
            (desc_flags::NEXT, "NEXT"),
            (desc_flags::WRITE, "WRITE"),
            (desc_flags::INDIRECT, "INDIRECT"),
        ] {
            if flags & bit != 0 {
                write!(f, " | {name}")?;
            }
        }
        Ok(())
    }
}

/// Formats the indirect-table part of the queue's creation trace line.
pub(super) enum IndirectNote {
    None,
    PerId(u16),
}

impl fmt::Display for IndirectNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndirectNote::None => f.write_str("none"),
            IndirectNote::PerId(n) => write!(f, "{n} entries each, one per buffer id"),
        }
    }
}

/// Formats the driver-event part of a completion's trace line.
pub(super) struct DriverEventNote<'a, H: Hal>(pub(super) &'a PackedQueue<H>);

impl<H: Hal> fmt::Display for DriverEventNote<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = self.0;
        match (q.event_idx, q.interrupts_enabled) {
            (true, true) => write!(
                f,
                "; driver event suppression := DESC at {} (interrupt when the device uses it)",
                q.last_used
            ),
            _ => Ok(()),
        }
    }
}

/// "entries already pending, poll again" / "nothing pending".
pub(super) struct PendingNote(pub(super) bool);

impl fmt::Display for PendingNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 {
            "a used descriptor is already there, poll again"
        } else {
            "nothing pending"
        })
    }
}
