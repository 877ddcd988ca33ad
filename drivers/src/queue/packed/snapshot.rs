//! A read-only look at a packed ring for the live queue view (virtio 1.2
//! §2.8.1 wrap counters, §2.8.13 descriptor ring, §2.8.10 and §2.8.14
//! event suppression); what each field means is in
//! [`crate::queue::snapshot`].
//!
//! The descriptors the driver's requests occupy are one stretch of the
//! ring, from the driver's next used position to its next available one
//! (every request takes its slots in ring order, and a completion frees as
//! many slots as the request took). So each slot's state follows from where
//! it lies: outside the stretch it is free; past the published position,
//! pending; inside, the flags in memory tell a descriptor the device has
//! marked used (AVAIL = USED = that lap's wrap counter) from one still
//! available, a head, an indirect one, or one a NEXT flag led to.
//!
//! How far the device has gone (`used_idx`) is found the way the driver
//! itself would collect completions, without collecting them: from the
//! driver's next used position, skip each used descriptor by its buffer's
//! descriptor count (the driver's own record, never the device's), at most
//! once per buffer the device can see. A garbage id or flags end the walk.

use hal::Hal;

use super::layout::{desc_flags, RingPosition};
use super::{BufferState, PackedQueue};
use crate::queue::ring::Ring;
use crate::queue::snapshot::{EventSuppression, LayoutSnapshot, PackedSnapshot};
use crate::queue::{DescriptorView, QueueSnapshot, RingKind};

impl<H: Hal> PackedQueue<H> {
    /// Fills `descriptors` (up to the queue size) and returns the rest.
    pub(super) fn take_snapshot(&self, descriptors: &mut [DescriptorView]) -> QueueSnapshot {
        let size = self.size;
        let laps = 2 * u32::from(size);
        let span = |from: RingPosition, to: RingPosition| {
            (to.linear(size) + laps - from.linear(size)) % laps
        };
        let occupied = span(self.last_used, self.next_avail);
        let visible = span(self.last_used, self.published);
        let shown = descriptors.len().min(usize::from(size));
        for (slot, view) in descriptors[..shown].iter_mut().enumerate() {
            let slot = slot as u16;
            let ahead = (u32::from(slot) + u32::from(size) - u32::from(self.last_used.offset))
                % u32::from(size);
            *view = if ahead >= occupied {
                DescriptorView::Free
            } else if ahead >= visible {
                DescriptorView::Pending
            } else {
                self.slot_view(slot, ahead as u16)
            };
        }
        let (off_wrap, flags) = self.read_driver_event();
        let driver_event = EventSuppression { off_wrap, flags };
        let (off_wrap, flags) = self.read_device_event();
        let device_event = EventSuppression { off_wrap, flags };
        let device_used = self.device_used_position();
        // An offset the device wrote may be past the ring: wrap, never panic.
        let linear = |p: RingPosition| p.linear(size) as u16;
        QueueSnapshot {
            index: self.index,
            size,
            kind: RingKind::Packed,
            avail_idx: linear(self.published),
            used_idx: linear(device_used),
            last_used_idx: linear(self.last_used),
            in_flight: self.in_flight,
            free_descriptors: self.free_count,
            unpublished: self.unpublished(),
            event_idx: self.event_idx,
            avail_event: linear(device_event.position()),
            used_event: linear(driver_event.position()),
            indirect_capacity: self.indirect_capacity(),
            interrupts_enabled: self.interrupts_enabled,
            broken: self.broken,
            counters: self.counters,
            layout: LayoutSnapshot::Packed(PackedSnapshot {
                next_avail: self.next_avail,
                published: self.published,
                next_used: self.last_used,
                device_used,
                driver_event,
                device_event,
            }),
            descriptors_shown: shown as u16,
        }
    }

    /// The state of a slot inside the published stretch, `ahead` slots past
    /// the driver's next used position.
    fn slot_view(&self, slot: u16, ahead: u16) -> DescriptorView {
        let position = self.last_used.advance(ahead, self.size);
        let flags = self.read_descriptor_flags(slot);
        if position.is_used(flags) {
            return DescriptorView::Used;
        }
        if flags & desc_flags::INDIRECT != 0 {
            return DescriptorView::Indirect;
        }
        if ahead > 0 {
            let before = self.last_used.advance(ahead - 1, self.size);
            let previous = self.read_descriptor_flags(before.offset);
            if previous & desc_flags::NEXT != 0 && !before.is_used(previous) {
                return DescriptorView::Chained;
            }
        }
        DescriptorView::Head
    }

    /// Where the device will write its next used descriptor, as far as the
    /// ring shows (see the module documentation).
    fn device_used_position(&self) -> RingPosition {
        let mut position = self.last_used;
        for _ in 0..self.published_in_flight {
            if !position.is_used(self.read_descriptor_flags(position.offset)) {
                break;
            }
            let (id, _) = self.read_descriptor_id_len(position.offset);
            match self.buffers.get(usize::from(id)) {
                Some(BufferState::Published { descriptors, .. }) if *descriptors <= self.size => {
                    position = position.advance(*descriptors, self.size);
                }
                _ => break,
            }
        }
        position
    }
}
