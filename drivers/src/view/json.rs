//! The `GET /api/queues` document: every device and every queue, as JSON
//! (RFC 8259). The schema, field by field, is in `docs/queue-view.md`;
//! field names are stable once published (DESIGN.md, "What every boot can
//! be asked to show"), new fields may be added.
//!
//! ```text
//! {"schema": 1, "uptime_ms": 1234,
//!  "descriptor_states": {".": "free", "H": "head", ...},
//!  "devices": [{"type": "blk", "location": "pci 0000:00:04.0",
//!               "transport": "pci-modern", "ring": "split", "state": "up",
//!               "features": ["VERSION_1", ...],
//!               "queues": [{"index": 0, "name": "requestq", "size": 256,
//!                           "avail_idx": 12, "used_idx": 12, ..., "descriptors": "HccH...."}]}]}
//! ```
//!
//! Written straight into any [`fmt::Write`], in one pass, with no
//! allocation of its own. Every string is escaped ([`JsonStr`]), so a
//! device name or error text cannot break the document; every number comes
//! from a snapshot, whatever the device wrote, so the document is valid
//! JSON for a broken queue too.

use core::fmt::{self, Write};

use super::{DeviceRecord, QueueRecord};
use crate::features::feature_name;
use crate::queue::packed::RingPosition;
use crate::queue::snapshot::{EventSuppression, LayoutSnapshot};
use crate::queue::DescriptorView;

/// The document's `schema` number: raised only if a published field
/// changes meaning (adding fields does not).
pub const SCHEMA: u32 = 1;

/// Writes the whole document.
pub fn write_document(
    out: &mut impl Write,
    uptime_ms: u64,
    devices: &[DeviceRecord],
) -> fmt::Result {
    write!(
        out,
        "{{\"schema\":{SCHEMA},\"uptime_ms\":{uptime_ms},\"descriptor_states\":{{"
    )?;
    for (i, state) in DescriptorView::ALL.iter().enumerate() {
        if i > 0 {
            out.write_char(',')?;
        }
        write!(out, "\"{}\":\"{}\"", state.code(), state.name())?;
    }
    out.write_str("},\"devices\":[")?;
    for (i, device) in devices.iter().enumerate() {
        if i > 0 {
            out.write_char(',')?;
        }
        write_device(out, device)?;
    }
    out.write_str("]}\n")
}

/// Writes one device object.
pub fn write_device(out: &mut impl Write, device: &DeviceRecord) -> fmt::Result {
    write!(
        out,
        "{{\"type\":{},\"location\":{},\"transport\":",
        JsonStr(&device.type_name),
        JsonStr(&device.location)
    )?;
    match device.transport {
        Some(kind) => write!(out, "{}", JsonStr(kind.name()))?,
        None => out.write_str("null")?,
    }
    out.write_str(",\"ring\":")?;
    match device.ring {
        Some(kind) => write!(out, "{}", JsonStr(kind.name()))?,
        None => out.write_str("null")?,
    }
    write!(out, ",\"state\":{},\"features\":", JsonStr(&device.state))?;
    match device.features {
        Some(bits) => {
            out.write_char('[')?;
            let mut first = true;
            for bit in (0..64u32).filter(|b| bits & (1 << b) != 0) {
                if !first {
                    out.write_char(',')?;
                }
                first = false;
                match feature_name(device.device_type, bit) {
                    Some(name) => write!(out, "\"{name}\"")?,
                    None => write!(out, "\"bit{bit}\"")?,
                }
            }
            out.write_char(']')?;
        }
        None => out.write_str("null")?,
    }
    out.write_str(",\"queues\":[")?;
    for (i, queue) in device.queues.iter().enumerate() {
        if i > 0 {
            out.write_char(',')?;
        }
        write_queue(out, queue)?;
    }
    out.write_str("]}")
}

/// Writes one queue object.
pub fn write_queue(out: &mut impl Write, queue: &QueueRecord) -> fmt::Result {
    let s = &queue.snapshot;
    let c = &s.counters;
    write!(
        out,
        "{{\"index\":{},\"name\":{},\"size\":{},\"avail_idx\":{},\"used_idx\":{},\"last_used_idx\":{},\"in_flight\":{},\"free_descriptors\":{},\"unpublished\":{}",
        s.index,
        JsonStr(&queue.name),
        s.size,
        s.avail_idx,
        s.used_idx,
        s.last_used_idx,
        s.in_flight,
        s.free_descriptors,
        s.unpublished
    )?;
    write!(
        out,
        ",\"avail_slot\":{},\"used_slot\":{},\"last_used_slot\":{}",
        s.slot_of(s.avail_idx),
        s.slot_of(s.used_idx),
        s.slot_of(s.last_used_idx)
    )?;
    if s.event_idx {
        write!(
            out,
            ",\"avail_event\":{},\"used_event\":{}",
            s.avail_event, s.used_event
        )?;
    } else {
        out.write_str(",\"avail_event\":null,\"used_event\":null")?;
    }
    write!(
        out,
        ",\"notifications\":{},\"suppressed\":{},\"interrupts\":",
        c.notifications, c.notifications_suppressed
    )?;
    match queue.interrupts {
        Some(n) => write!(out, "{n}")?,
        None => out.write_str("null")?,
    }
    write!(
        out,
        ",\"added\":{},\"publishes\":{},\"completions\":{},\"indirect\":{},\"device_errors\":{},\"event_idx\":{},\"indirect_capacity\":{},\"interrupts_enabled\":{},\"broken\":{}",
        c.added,
        c.publishes,
        c.completions,
        c.indirect,
        c.device_errors,
        s.event_idx,
        s.indirect_capacity,
        s.interrupts_enabled,
        s.broken
    )?;
    match s.layout {
        LayoutSnapshot::Split(split) => write!(
            out,
            ",\"split\":{{\"avail_flags\":{},\"used_flags\":{}}}",
            split.avail_flags, split.used_flags
        )?,
        LayoutSnapshot::Packed(p) => {
            write!(
                out,
                ",\"packed\":{{\"driver_wrap_counter\":{},\"device_wrap_counter\":{},\"next_avail\":{},\"published\":{},\"next_used\":{},\"device_used\":{},\"driver_event\":{},\"device_event\":{}}}",
                u8::from(p.next_avail.wrap),
                u8::from(p.next_used.wrap),
                Position(p.next_avail),
                Position(p.published),
                Position(p.next_used),
                Position(p.device_used),
                Event(p.driver_event),
                Event(p.device_event),
            )?;
        }
    }
    out.write_str(",\"descriptors\":\"")?;
    for view in &queue.descriptors {
        out.write_char(view.code())?;
    }
    out.write_str("\"}")
}

/// `{"offset": n, "wrap": 0|1}`.
struct Position(RingPosition);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{\"offset\":{},\"wrap\":{}}}",
            self.0.offset,
            u8::from(self.0.wrap)
        )
    }
}

/// `{"flags": "enable|disable|desc|reserved", "offset": n, "wrap": 0|1}`.
struct Event(EventSuppression);

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let position = self.0.position();
        write!(
            f,
            "{{\"flags\":\"{}\",\"offset\":{},\"wrap\":{}}}",
            self.0.mode(),
            position.offset,
            u8::from(position.wrap)
        )
    }
}

/// A JSON string literal: quotes, and `"`, `\` and control characters escaped.
pub struct JsonStr<'a>(pub &'a str);

impl fmt::Display for JsonStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}
