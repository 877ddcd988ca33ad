//! A read-only look at a split ring for the live queue view (virtio 1.2
//! §2.7.5 descriptor table, §2.7.6 available ring, §2.7.8 used ring, §2.7.7
//! and §2.7.10 event indices); what each field means is in
//! [`crate::queue::snapshot`].
//!
//! Descriptor states come from the driver's private bookkeeping (free,
//! head, inside a chain), refined from memory the driver wrote: a head
//! whose descriptor has VIRTQ_DESC_F_INDIRECT is an indirect request, and a
//! head in an available-ring slot past the published `avail.idx` is still
//! pending. The device-written fields (`used.idx`, `used.flags`,
//! `avail_event`) are only copied into the snapshot.

use hal::Hal;

use super::layout::desc_flags;
use super::{DescriptorState, SplitQueue};
use crate::queue::ring::Ring;
use crate::queue::snapshot::{LayoutSnapshot, SplitSnapshot};
use crate::queue::{DescriptorView, QueueSnapshot, RingKind};

impl<H: Hal> SplitQueue<H> {
    /// Fills `descriptors` (up to the queue size) and returns the rest.
    pub(super) fn take_snapshot(&self, descriptors: &mut [DescriptorView]) -> QueueSnapshot {
        let shown = descriptors.len().min(usize::from(self.size));
        for (id, view) in descriptors[..shown].iter_mut().enumerate() {
            *view = match self.states[id] {
                DescriptorState::Free => DescriptorView::Free,
                DescriptorState::Body => DescriptorView::Chained,
                DescriptorState::Head { .. } => {
                    let flags = self.ring.read_descriptor_flags(id as u16);
                    if flags & desc_flags::INDIRECT != 0 {
                        DescriptorView::Indirect
                    } else {
                        DescriptorView::Head
                    }
                }
            };
        }
        // Heads added since the last publish sit in the available-ring slots
        // from the published index on (at most `size` of them).
        for k in 0..self.unpublished().min(self.size) {
            let head = self
                .ring
                .read_avail_slot(self.published_idx.wrapping_add(k));
            if let Some(view) = descriptors[..shown].get_mut(usize::from(head)) {
                if matches!(view, DescriptorView::Head | DescriptorView::Indirect) {
                    *view = DescriptorView::Pending;
                }
            }
        }
        QueueSnapshot {
            index: self.index,
            size: self.size,
            kind: RingKind::Split,
            avail_idx: self.ring.read_avail_idx(),
            used_idx: self.ring.read_used_idx(),
            last_used_idx: self.last_used,
            in_flight: self.in_flight,
            free_descriptors: self.free_count,
            unpublished: self.unpublished(),
            event_idx: self.event_idx,
            avail_event: self.ring.read_avail_event(),
            used_event: self.ring.read_used_event(),
            indirect_capacity: self.indirect_capacity(),
            interrupts_enabled: self.interrupts_enabled,
            broken: self.broken,
            counters: self.counters,
            layout: LayoutSnapshot::Split(SplitSnapshot {
                avail_flags: self.ring.read_avail_flags(),
                used_flags: self.ring.read_used_flags(),
            }),
            descriptors_shown: shown as u16,
        }
    }
}
