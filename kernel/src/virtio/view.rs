//! The live queue view's data: every device in the registry and, for each
//! queue its driver set up, a snapshot taken now (virtio 1.2 §2.7, §2.8;
//! [`drivers::view`] renders them, `Ring::snapshot` takes them).
//!
//! Served three ways: `GET /api/queues` and the `/queues` page
//! (`crate::net::queue_page`), and the shell's `queues` and `ring`
//! (`crate::shell::queues`). Chapter `docs/queue-view.md` explains how to
//! read it.
//!
//! ## Locks
//!
//! The registry's lock is taken first, alone, to list the devices; then
//! each driver's own lock, one at a time. The HTTP server asks for the view
//! from inside a network poll, which a shell command (or a disk user) may
//! have started while holding the console, the disks or the screen: so
//! those (and the keyboards, the rng, the 9p mounts, the balloon) are only *tried*. A driver that is busy gets its facts and no queues, with
//! `(driver busy)` in its state, instead of a deadlock. The network cards
//! are handed in by the caller, who holds their lock already.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

use drivers::queue::{Ring, Virtqueue};
use drivers::transport::{DeviceType, Location};
use drivers::view::{DeviceRecord, QueueRecord};

use super::{irq, DeviceState};
use crate::hal_impl::KernelHal;
use crate::net::nic::Nic;

/// Every device, with the queues of those a driver brought up.
pub fn collect(nics: &[Nic]) -> Vec<DeviceRecord> {
    let mut records = Vec::new();
    let mut up = Vec::new();
    {
        let registry = super::devices();
        for device in registry.iter() {
            let mut record = DeviceRecord::new(
                super::type_name(device.device_type),
                device.device_type,
                device.location,
            );
            record.transport = device.transport_kind;
            if let Some(negotiated) = device.negotiated {
                record.ring = Some(negotiated.ring);
                record.features = Some(negotiated.features);
            }
            match &device.state {
                DeviceState::Up { driver } => {
                    let _ = write!(record.state, "up, driven by {driver}");
                    up.push((records.len(), device.location));
                }
                DeviceState::Failed { error } => {
                    let _ = write!(record.state, "FAILED: {error}");
                }
                DeviceState::Unsupported { why, .. } => {
                    let _ = write!(record.state, "left reset: {why}");
                }
                other => record.state = String::from(other.name()),
            }
            records.push(record);
        }
    }
    for (index, location) in up {
        let record = &mut records[index];
        let interrupts = InterruptCounts::of(location);
        let mut queues = Vec::new();
        let mut take = |name: &dyn core::fmt::Display, ring: &Virtqueue<KernelHal>| {
            queues.push(QueueRecord::capture(name, ring, interrupts.queue(ring)));
        };
        let visited = match record.device_type {
            DeviceType::Block => crate::block::try_with_disks(|disks| {
                if let Some(disk) = disks.iter_mut().find(|d| d.location() == location) {
                    disk.device().visit_rings(&mut take);
                }
            })
            .is_some(),
            DeviceType::Net => {
                if let Some(nic) = nics.iter().find(|n| n.location == location) {
                    nic.device.visit_rings(&mut take);
                }
                true
            }
            DeviceType::Console => crate::shell::console::try_lock()
                .map(|guard| {
                    if let Some(console) = guard.as_ref().filter(|c| c.location == location) {
                        console.device.visit_rings(&mut take);
                    }
                })
                .is_some(),
            DeviceType::Gpu | DeviceType::Input => {
                crate::screen::try_visit_rings(location, &mut take).is_some()
            }
            DeviceType::Entropy => crate::entropy::try_visit_rings(location, &mut take).is_some(),
            DeviceType::NineP => crate::ninep::try_visit_rings(location, &mut take).is_some(),
            DeviceType::Balloon => crate::balloon::try_visit_rings(location, &mut take).is_some(),
            _ => true,
        };
        if !visited {
            record.state.push_str(" (driver busy)");
        }
        record.queues = queues;
    }
    records
}

/// Where a device's per-queue interrupt counts come from: the interrupt
/// code's own counters (`crate::virtio::irq`), none for a polled device.
struct InterruptCounts(Option<irq::DeviceIrq>);

impl InterruptCounts {
    fn of(location: Location) -> Self {
        Self(irq::of(location).filter(|irq| irq.mode_name() != "polled"))
    }

    fn queue(&self, ring: &impl Ring) -> Option<u64> {
        self.0
            .map(|irq| irq.state().queue_interrupt_count(ring.index()))
    }
}
