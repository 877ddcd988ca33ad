//! Supplying buffers to the device: `add` and `publish` (virtio 1.2 §2.7.13
//! "Supplying Buffers to The Device", §2.7.5 "The Virtqueue Descriptor
//! Table", §2.7.5.3 "Indirect Descriptors", §2.7.10 "Available Buffer
//! Notification Suppression").
//!
//! `add` ([`SplitQueue::add_buffer`]) takes descriptors from the free list,
//! writes one per segment (or one INDIRECT descriptor pointing at a
//! preallocated table) and puts the chain's head in the next slot of the
//! available ring; the device cannot see it yet. `publish`
//! ([`SplitQueue::make_available`]) stores the new `avail.idx` once for
//! everything added since the last publish, after a write barrier (§2.7.13.3),
//! then, after a full barrier, reads the device's suppression state
//! (`avail_event` with VIRTIO_F_EVENT_IDX, otherwise the used ring's
//! NO_NOTIFY flag) and says whether to notify (§2.7.13.4).

use hal::Hal;
use log::{log_enabled, trace, Level};

use super::event_idx::need_event;
use super::layout::{desc_flags, Descriptor, DESCRIPTOR_BYTES};
use super::memory::USED_F_NO_NOTIFY;
use super::trace::{trace_descriptor, trace_event_idx_decision};
use super::{DescriptorState, SplitQueue};
use crate::queue::ring::{check_segments, choose_chain, Ring};
use crate::queue::{NotifyDecision, QueueError, Segment, Token};

impl<H: Hal> SplitQueue<H> {
    /// Adds one request: `segments` (device-readable ones first, then
    /// device-writable ones) become a descriptor chain and its head goes into
    /// the next available-ring slot. The device does not see it until
    /// [`Ring::publish`]. The buffers must stay shared until the token
    /// comes back from [`Ring::pop_used`] (or [`Ring::reset`]).
    ///
    /// Direct or indirect: see [`DIRECT_MAX_SEGMENTS`]. On error nothing was
    /// changed.
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

        let head = if indirect {
            self.write_indirect_chain(segments, writable_len)
        } else {
            self.write_direct_chain(segments, writable_len)
        };

        let slot = self.avail_idx;
        self.ring.write_avail_slot(slot, head);
        self.avail_idx = slot.wrapping_add(1);
        self.in_flight += 1;
        self.counters.added += 1;
        if indirect {
            self.counters.indirect += 1;
        }
        if log_enabled!(Level::Trace) {
            trace!(
                "vq{}: avail.ring[{}] = {} (slot {} of {}); avail.idx becomes {} at the next publish; {} descriptors free, {} in flight",
                self.index,
                slot,
                head,
                self.slot_of(slot),
                self.size,
                self.avail_idx,
                self.free_count,
                self.in_flight,
            );
        }
        Ok(Token(head))
    }

    /// Takes `segments.len()` descriptors off the free list and writes them as
    /// one chain. The caller checked that enough are free.
    fn write_direct_chain(&mut self, segments: &[Segment], writable_len: u32) -> u16 {
        let tracing = log_enabled!(Level::Trace);
        if tracing {
            trace!(
                "vq{}: request of {} segment(s) as a direct chain ({} bytes device-writable):",
                self.index,
                segments.len(),
                writable_len
            );
        }
        let head = self.free_head;
        let mut id = head;
        let mut tail = head;
        for (i, segment) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let next = self.next[id as usize];
            let mut flags = if segment.device_writable {
                desc_flags::WRITE
            } else {
                0
            };
            if !last {
                flags |= desc_flags::NEXT;
            }
            let link = if last { 0 } else { next };
            self.ring
                .write_descriptor(id, Descriptor::new(segment.addr, segment.len, flags, link));
            self.states[id as usize] = DescriptorState::Body;
            if tracing {
                trace_descriptor(self.index, "desc", id, segment, (!last).then_some(link));
            }
            tail = id;
            id = next;
        }
        self.free_head = id;
        self.free_count -= segments.len() as u16;
        self.states[head as usize] = DescriptorState::Head {
            tail,
            descriptors: segments.len() as u16,
            writable_len,
        };
        head
    }

    /// Takes one descriptor off the free list, fills its indirect table with
    /// `segments` and points the descriptor at it. The caller checked that a
    /// descriptor is free and the segments fit in a table.
    fn write_indirect_chain(&mut self, segments: &[Segment], writable_len: u32) -> u16 {
        let head = self.free_head;
        self.free_head = self.next[head as usize];
        self.free_count -= 1;
        let tracing = log_enabled!(Level::Trace);
        if let Some(pool) = &self.indirect {
            let table = pool.table_addr(head);
            let table_len = (segments.len() * DESCRIPTOR_BYTES) as u32;
            if tracing {
                trace!(
                    "vq{}: request of {} segment(s) through an indirect table ({} bytes device-writable):",
                    self.index,
                    segments.len(),
                    writable_len
                );
                trace!(
                    "vq{}:   desc[{}] INDIRECT: table at {:#x}, {} bytes = {} descriptors",
                    self.index,
                    head,
                    table,
                    table_len,
                    segments.len()
                );
            }
            for (i, segment) in segments.iter().enumerate() {
                let last = i + 1 == segments.len();
                let mut flags = if segment.device_writable {
                    desc_flags::WRITE
                } else {
                    0
                };
                if !last {
                    flags |= desc_flags::NEXT;
                }
                let link = if last { 0 } else { i as u16 + 1 };
                let written = pool.write(
                    head,
                    i as u16,
                    Descriptor::new(segment.addr, segment.len, flags, link),
                );
                debug_assert!(written, "indirect table entry out of range");
                if tracing {
                    trace_descriptor(
                        self.index,
                        "  table",
                        i as u16,
                        segment,
                        (!last).then_some(link),
                    );
                }
            }
            self.ring.write_descriptor(
                head,
                Descriptor::new(table, table_len, desc_flags::INDIRECT, 0),
            );
        }
        self.states[head as usize] = DescriptorState::Head {
            tail: head,
            descriptors: 1,
            writable_len,
        };
        head
    }

    /// Makes everything added since the last publish visible to the device
    /// (one store to `avail.idx`) and decides whether the device must be
    /// notified. The caller then calls the transport's `notify(queue)` if the
    /// answer is [`NotifyDecision::Notify`].
    pub(super) fn make_available(&mut self) -> NotifyDecision {
        let old = self.published_idx;
        let new = self.avail_idx;
        if old == new || self.broken {
            return NotifyDecision::NothingNew;
        }
        // §2.7.13.3: the descriptors and ring slots must be visible before the
        // index that tells the device they are there.
        self.order.before_publish();
        self.ring.write_avail_idx(new);
        self.published_idx = new;
        // §2.7.13.4: the device may have decided to sleep just before it saw
        // the new index; only a full barrier between our store of avail.idx and
        // our load of its suppression state guarantees one of us sees the other.
        self.order.full();
        self.counters.publishes += 1;
        let notify = if self.event_idx {
            let event = self.ring.read_avail_event();
            let notify = need_event(event, new, old);
            if log_enabled!(Level::Trace) {
                trace_event_idx_decision(self.index, event, new, old, notify);
            }
            notify
        } else {
            let flags = self.ring.read_used_flags();
            let notify = flags & USED_F_NO_NOTIFY == 0;
            if log_enabled!(Level::Trace) {
                trace!(
                    "vq{}: publish: avail.idx {} -> {} ({} new); used.flags = {:#x}: NO_NOTIFY {} -> {}",
                    self.index,
                    old,
                    new,
                    new.wrapping_sub(old),
                    flags,
                    if notify { "clear" } else { "set (the device is busy and will look itself)" },
                    if notify { "notify" } else { "suppressed" },
                );
            }
            notify
        };
        if notify {
            self.counters.notifications += 1;
            NotifyDecision::Notify
        } else {
            self.counters.notifications_suppressed += 1;
            NotifyDecision::Suppressed
        }
    }
}
