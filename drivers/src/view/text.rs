//! The live queue view as text, for the shell on the virtio console:
//! one line per queue (`queues`) and a drawing of one ring (`ring <device>
//! <queue>`), the same picture the `/queues` page draws as SVG (virtio 1.2
//! §2.7 split ring: descriptor table, available ring, used ring and their
//! indices; §2.8 packed ring: one descriptor ring, wrap counters, event
//! suppression structures).
//!
//! ```text
//! blk at pci 0000:00:04.0, queue 0 "requestq": split ring, 8 descriptors, event index on, indirect tables 4
//! descriptor table (. free  H head  c chained  I indirect  p pending  u used)
//!      0  I p . H . . . .
//! available ring  avail.idx 3 (slot 3, A; + published, not yet used), avail.flags 0x0
//!      0  . + + A . . . .
//! used ring       used.idx 1 (slot 1, U), driver consumed 1 (slot 1, L; * both; + used, not yet collected), used.flags 0x0
//!      0  . * . . . . . .
//! events          used_event 1 (interrupt the driver when used.idx passes it), avail_event 0 (...)
//! counters        in flight 3, free 5, unpublished 1, added 4, notifications 1 (suppressed 0), ...
//! ```

use core::fmt::{self, Write};

use super::{DeviceRecord, QueueRecord};
use crate::queue::snapshot::{LayoutSnapshot, PackedSnapshot, QueueSnapshot};
use crate::queue::DescriptorView;

/// Cells per row of a drawing.
const ROW: usize = 32;

/// The header of [`write_queue_line`]'s table.
pub fn write_queue_header(out: &mut impl Write) -> fmt::Result {
    writeln!(
        out,
        "device  location          q  name         ring    size  avail   used   last  flight  free  notified  suppressed  interrupts"
    )
}

/// One line for one queue: size, indices, requests in flight,
/// notifications sent and suppressed, interrupts.
pub fn write_queue_line(
    out: &mut impl Write,
    device: &DeviceRecord,
    queue: &QueueRecord,
) -> fmt::Result {
    let s = &queue.snapshot;
    write!(
        out,
        "{:<7} {:<17} {:>2}  {:<12} {:<6} {:>5}  {:>5}  {:>5}  {:>5}  {:>6}  {:>4}  {:>8}  {:>10}  ",
        device.type_name,
        device.location,
        s.index,
        queue.name,
        s.kind.name(),
        s.size,
        s.avail_idx,
        s.used_idx,
        s.last_used_idx,
        s.in_flight,
        s.free_descriptors,
        s.counters.notifications,
        s.counters.notifications_suppressed
    )?;
    match queue.interrupts {
        Some(n) => write!(out, "{n:>10}")?,
        None => write!(out, "{:>10}", "polled")?,
    }
    if s.broken {
        out.write_str("  BROKEN")?;
    }
    out.write_char('\n')
}

/// A drawing of one ring: its descriptors by state, where each index
/// points, the event fields and the counters.
pub fn write_ring(out: &mut impl Write, device: &DeviceRecord, queue: &QueueRecord) -> fmt::Result {
    let s = &queue.snapshot;
    writeln!(
        out,
        "{} at {}, queue {} \"{}\": {} ring, {} descriptors, event index {}, indirect tables {}{}",
        device.type_name,
        device.location,
        s.index,
        queue.name,
        s.kind.name(),
        s.size,
        if s.event_idx { "on" } else { "off" },
        s.indirect_capacity,
        if s.broken {
            ", BROKEN by the device"
        } else {
            ""
        }
    )?;
    let title = match s.layout {
        LayoutSnapshot::Split(_) => "descriptor table",
        LayoutSnapshot::Packed(_) => "descriptor ring",
    };
    write!(out, "{title} (")?;
    for (i, state) in DescriptorView::ALL.iter().enumerate() {
        if i > 0 {
            out.write_str("  ")?;
        }
        write!(out, "{} {}", state.code(), state.name())?;
    }
    out.write_str(")\n")?;
    write_cells(out, queue.descriptors.len(), |i| {
        queue.descriptors[i].code()
    })?;
    if queue.descriptors.len() < usize::from(s.size) {
        writeln!(
            out,
            "     (the first {} of {} shown)",
            queue.descriptors.len(),
            s.size
        )?;
    }
    let shown = queue.descriptors.len();
    match s.layout {
        LayoutSnapshot::Split(split) => {
            let avail_slot = usize::from(s.slot_of(s.avail_idx));
            writeln!(
                out,
                "available ring  avail.idx {} (slot {avail_slot}, A; + published, not yet used), avail.flags {:#x}{}",
                s.avail_idx,
                split.avail_flags,
                if split.avail_flags & 1 != 0 {
                    " NO_INTERRUPT"
                } else {
                    ""
                }
            )?;
            // `+`: published, not yet used by the device (from used.idx on).
            let waiting =
                usize::from(s.avail_idx.wrapping_sub(s.used_idx)).min(usize::from(s.size));
            let used_slot = usize::from(s.slot_of(s.used_idx));
            write_cells(out, shown, |i| {
                if i == avail_slot {
                    'A'
                } else if in_stretch(i, used_slot, waiting, s.size) {
                    '+'
                } else {
                    '.'
                }
            })?;
            let last_slot = usize::from(s.slot_of(s.last_used_idx));
            let uncollected =
                usize::from(s.used_idx.wrapping_sub(s.last_used_idx)).min(usize::from(s.size));
            writeln!(
                out,
                "used ring       used.idx {} (slot {used_slot}, U), driver consumed {} (slot {last_slot}, L; * both; + used, not yet collected), used.flags {:#x}{}",
                s.used_idx,
                s.last_used_idx,
                split.used_flags,
                if split.used_flags & 1 != 0 {
                    " NO_NOTIFY"
                } else {
                    ""
                }
            )?;
            write_cells(out, shown, |i| match (i == used_slot, i == last_slot) {
                (true, true) => '*',
                (true, false) => 'U',
                (false, true) => 'L',
                _ if in_stretch(i, last_slot, uncollected, s.size) => '+',
                _ => '.',
            })?;
            if s.event_idx {
                writeln!(
                    out,
                    "events          used_event {} (interrupt the driver when used.idx passes it), avail_event {} (notify the device when avail.idx passes it)",
                    s.used_event, s.avail_event
                )?;
            } else {
                writeln!(
                    out,
                    "events          no event index: the flags above suppress notifications"
                )?;
            }
        }
        LayoutSnapshot::Packed(p) => write_packed(out, s, &p, shown)?,
    }
    let c = &s.counters;
    write!(
        out,
        "counters        in flight {}, free {}, unpublished {}, added {}, notifications {} (suppressed {}), completions {}, device errors {}, interrupts ",
        s.in_flight,
        s.free_descriptors,
        s.unpublished,
        c.added,
        c.notifications,
        c.notifications_suppressed,
        c.completions,
        c.device_errors
    )?;
    match queue.interrupts {
        Some(n) => writeln!(out, "{n}"),
        None => writeln!(out, "(polled)"),
    }
}

fn write_packed(
    out: &mut impl Write,
    s: &QueueSnapshot,
    p: &PackedSnapshot,
    shown: usize,
) -> fmt::Result {
    writeln!(
        out,
        "positions       A next avail {} (driver wrap counter {}), P published {}, D device used {}, L driver's next used {} (device wrap counter {})",
        p.next_avail.offset,
        u8::from(p.next_avail.wrap),
        p.published.offset,
        p.device_used.offset,
        p.next_used.offset,
        u8::from(p.next_used.wrap)
    )?;
    let at = |position: crate::queue::packed::RingPosition| usize::from(position.offset);
    write_cells(out, shown, |i| {
        if i == at(p.next_avail) {
            'A'
        } else if i == at(p.published) {
            'P'
        } else if i == at(p.device_used) {
            'D'
        } else if i == at(p.next_used) {
            'L'
        } else {
            '.'
        }
    })?;
    writeln!(
        out,
        "events          driver event {} at {} wrap {} (used_event {}), device event {} at {} wrap {} (avail_event {})",
        p.driver_event.mode(),
        p.driver_event.position().offset,
        u8::from(p.driver_event.position().wrap),
        s.used_event,
        p.device_event.mode(),
        p.device_event.position().offset,
        u8::from(p.device_event.position().wrap),
        s.avail_event
    )
}

/// `true` if `slot` is one of the `count` slots from `first` on, in a ring
/// of `size` slots.
fn in_stretch(slot: usize, first: usize, count: usize, size: u16) -> bool {
    let size = usize::from(size).max(1);
    (slot + size - first % size) % size < count
}

/// `count` cells, [`ROW`] per row, each row led by its first index.
fn write_cells(out: &mut impl Write, count: usize, cell: impl Fn(usize) -> char) -> fmt::Result {
    for start in (0..count).step_by(ROW) {
        write!(out, "  {start:>4} ")?;
        for i in start..(start + ROW).min(count) {
            out.write_char(' ')?;
            out.write_char(cell(i))?;
        }
        out.write_char('\n')?;
    }
    Ok(())
}
