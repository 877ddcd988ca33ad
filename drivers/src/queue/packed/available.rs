//! Supplying buffers to the device: `add` and `publish` (virtio 1.2 §2.8.21
//! "Supplying Buffers to The Device", §2.8.6 "Next Flag: Descriptor
//! Chaining", §2.8.7 "Indirect Flag: Scatter-Gather Support").
//!
//! `add` ([`PackedQueue::add_buffer`]) takes a buffer id and writes the
//! request's descriptors in ring order from the driver's position, each
//! with the AVAIL/USED bits of its own lap, but holds back the *head*
//! descriptor's flags: the device only looks at the head, so the request
//! stays invisible. `publish` ([`PackedQueue::make_available`]) writes the
//! held-back head flags after a write barrier, the batch's first head last
//! (§2.8.21.1), so one store exposes the whole batch, then asks the device's
//! event suppression structure whether to notify (`packed/event.rs`).
//!
//! A long request may instead take one ring descriptor flagged INDIRECT,
//! pointing at a table preallocated per buffer id ([`IndirectTables`]).

use hal::{DeviceAddr, DmaOwner, DmaRegion, Hal};
use log::Level;
use log::{log_enabled, trace};

use super::layout::{desc_flags, PackedDescriptor, RingPosition, DESCRIPTOR_BYTES};
use super::trace::{trace_descriptor, trace_publish, Access, FlagNames};
use super::{BufferState, PackedQueue, PendingHead};
use crate::queue::ring::{check_segments, choose_chain, Ring};
use crate::queue::{NotifyDecision, QueueError, Segment, Token};

/// One indirect table per buffer id, preallocated in DMA memory (§2.8.7).
/// An id has at most one buffer in flight, so its table is free when it is.
pub(super) struct IndirectTables<H: Hal> {
    region: DmaRegion<H>,
    capacity: u16,
}

impl<H: Hal> IndirectTables<H> {
    pub(super) fn new(owner: DmaOwner, tables: u16, capacity: u16) -> Result<Self, QueueError> {
        if capacity == 0 {
            return Err(QueueError::InvalidIndirectCapacity(capacity));
        }
        let bytes = tables as usize * capacity as usize * DESCRIPTOR_BYTES;
        Ok(Self {
            region: DmaRegion::new(owner, bytes)?,
            capacity,
        })
    }

    /// Entries per table: the longest request that can go indirect.
    pub(super) fn capacity(&self) -> u16 {
        self.capacity
    }

    fn table_offset(&self, id: u16) -> usize {
        id as usize * self.capacity as usize * DESCRIPTOR_BYTES
    }

    pub(super) fn table_addr(&self, id: u16) -> DeviceAddr {
        self.region.device_addr() + self.table_offset(id) as u64
    }

    /// Writes entry `entry` of table `id`; `false` if out of range. As two
    /// 8-byte words ([`PackedDescriptor::to_words`]): plain integers, two
    /// stores instead of four.
    fn write(&self, id: u16, entry: u16, descriptor: PackedDescriptor) -> bool {
        let at = self.table_offset(id) + entry as usize * DESCRIPTOR_BYTES;
        let [addr, rest] = descriptor.to_words();
        entry < self.capacity && self.region.write(at, addr) && self.region.write(at + 8, rest)
    }
}

impl<H: Hal> PackedQueue<H> {
    /// Adds one request: `segments` (device-readable ones first, then
    /// device-writable ones) become a buffer of consecutive ring descriptors
    /// (or one descriptor pointing at an indirect table) under a fresh buffer
    /// id ([`Ring::add`]). The device does not see it until
    /// [`PackedQueue::make_available`]. The buffers must stay shared until
    /// the token comes back from [`Ring::pop_used`] (or [`Ring::reset`]).
    ///
    /// Direct or indirect: the same rule as the split ring
    /// ([`choose_chain`]). On error nothing was changed.
    pub(super) fn add_buffer(&mut self, segments: &[Segment]) -> Result<Token, QueueError> {
        if self.broken {
            return Err(QueueError::DeviceBroken);
        }
        let writable_len = check_segments(segments)?;
        let indirect = choose_chain(
            segments.len(),
            usize::from(self.free_count),
            usize::from(self.indirect_capacity()),
            usize::from(self.size),
        )?;
        // Every buffer in flight holds at least one descriptor, so with a
        // descriptor free an id is free too.
        let Some(id) = self.free_ids.pop() else {
            return Err(QueueError::QueueFull { needed: 1, free: 0 });
        };

        let head = self.next_avail;
        let descriptors = if indirect {
            self.write_indirect(id, head, segments, writable_len)
        } else {
            self.write_direct(id, head, segments, writable_len)
        };
        self.buffers[id as usize] = BufferState::Added {
            descriptors,
            writable_len,
        };
        self.next_avail = head.advance(descriptors, self.size);
        self.free_count -= descriptors;
        self.in_flight += 1;
        self.counters.added += 1;
        if indirect {
            self.counters.indirect += 1;
        }
        if log_enabled!(Level::Trace) {
            trace!(
                "vq{}: buffer id {} occupies {} descriptor(s) from slot {}; its head flags are held back until publish; next free slot {}; {} descriptors free, {} in flight",
                self.index,
                id,
                descriptors,
                head,
                self.next_avail,
                self.free_count,
                self.in_flight,
            );
        }
        Ok(Token(id))
    }

    /// Writes `segments` into consecutive ring slots from `head`, each with
    /// the AVAIL/USED bits of its own lap, the id in every one (the spec
    /// requires it in the last), and records the head's flags for `publish`.
    fn write_direct(
        &mut self,
        id: u16,
        head: RingPosition,
        segments: &[Segment],
        writable_len: u32,
    ) -> u16 {
        let tracing = log_enabled!(Level::Trace);
        if tracing {
            trace!(
                "vq{}: request of {} segment(s) as buffer id {}, a direct chain ({} bytes device-writable):",
                self.index,
                segments.len(),
                id,
                writable_len
            );
        }
        let mut position = head;
        for (i, segment) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let mut flags = position.available_bits();
            if segment.device_writable {
                flags |= desc_flags::WRITE;
            }
            if !last {
                flags |= desc_flags::NEXT;
            }
            self.write_descriptor_body(position.offset, segment.addr, segment.len, id);
            if i == 0 {
                self.pending.push(PendingHead {
                    slot: position.offset,
                    flags,
                    id,
                });
            } else {
                self.write_descriptor_flags(position.offset, flags);
            }
            if tracing {
                trace_descriptor(self.index, position, segment, id, flags, i == 0);
            }
            position = position.advance(1, self.size);
        }
        segments.len() as u16
    }

    /// Fills table `id` with `segments` and writes one INDIRECT ring
    /// descriptor pointing at it (its flags held back for `publish`).
    fn write_indirect(
        &mut self,
        id: u16,
        head: RingPosition,
        segments: &[Segment],
        writable_len: u32,
    ) -> u16 {
        let tracing = log_enabled!(Level::Trace);
        let Some(tables) = &self.indirect else {
            // `add` only chooses indirect when tables exist.
            return self.write_direct(id, head, segments, writable_len);
        };
        let table = tables.table_addr(id);
        let table_len = (segments.len() * DESCRIPTOR_BYTES) as u32;
        if tracing {
            trace!(
                "vq{}: request of {} segment(s) as buffer id {} through an indirect table ({} bytes device-writable):",
                self.index,
                segments.len(),
                id,
                writable_len
            );
        }
        for (i, segment) in segments.iter().enumerate() {
            // §2.8.7: WRITE is the only valid flag in a table; no NEXT, the
            // entries simply follow each other; the id is ignored.
            let flags = if segment.device_writable {
                desc_flags::WRITE
            } else {
                0
            };
            let written = tables.write(
                id,
                i as u16,
                PackedDescriptor::new(segment.addr, segment.len, 0, flags),
            );
            debug_assert!(written, "indirect table entry out of range");
            if tracing {
                trace!(
                    "vq{}:     table[{}]: addr {:#x}, len {}, {}",
                    self.index,
                    i,
                    segment.addr,
                    segment.len,
                    Access(segment.device_writable)
                );
            }
        }
        let flags = head.available_bits() | desc_flags::INDIRECT;
        self.write_descriptor_body(head.offset, table, table_len, id);
        self.pending.push(PendingHead {
            slot: head.offset,
            flags,
            id,
        });
        if tracing {
            trace!(
                "vq{}:   desc[{}]: INDIRECT, table at {:#x}, {} bytes = {} entries, id {}, flags {:#06x} = {} (head: flags held back until publish)",
                self.index,
                head,
                table,
                table_len,
                segments.len(),
                id,
                flags,
                FlagNames(flags),
            );
        }
        1
    }

    /// Makes everything added since the last publish available (the held-back
    /// head flags, first head last) and decides whether the device must be
    /// notified. The caller then calls the transport's `notify(queue)` if the
    /// answer is [`NotifyDecision::Notify`].
    pub(super) fn make_available(&mut self) -> NotifyDecision {
        if self.pending.is_empty() || self.broken {
            return NotifyDecision::NothingNew;
        }
        let old = self.published;
        let new = self.next_avail;
        // §2.8.21.1.1 "Updating flags": the descriptors must be visible before the flags that
        // expose them.
        self.order.before_publish();
        let (first, rest) = self.pending.split_at(1);
        for head in rest.iter().rev() {
            self.write_descriptor_flags(head.slot, head.flags);
        }
        // The later heads before the first: a device that sees the first one
        // finds the rest of the batch behind it.
        self.order.before_publish();
        let first = first[0];
        self.write_descriptor_flags(first.slot, first.flags);
        let published_now = self.pending.len() as u16;
        for head in &self.pending {
            if let BufferState::Added {
                descriptors,
                writable_len,
            } = self.buffers[head.id as usize]
            {
                self.buffers[head.id as usize] = BufferState::Published {
                    descriptors,
                    writable_len,
                };
            }
        }
        self.pending.clear();
        self.published = new;
        self.published_in_flight += published_now;
        // §2.8.21.3.1 (driver requirements, "Sending Available Buffer
        // Notifications"): a full barrier between exposing the flags and reading
        // the device's suppression state, or both sides may decide to wait
        // for the other.
        self.order.full();
        self.counters.publishes += 1;
        let (off_wrap, flags) = self.read_device_event();
        let notify = self.wants_notification(off_wrap, flags, old, new);
        if log_enabled!(Level::Trace) {
            trace_publish(self, old, new, published_now, off_wrap, flags, notify);
        }
        if notify {
            self.counters.notifications += 1;
            NotifyDecision::Notify
        } else {
            self.counters.notifications_suppressed += 1;
            NotifyDecision::Suppressed
        }
    }
}
