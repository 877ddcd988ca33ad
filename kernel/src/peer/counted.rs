//! A transport that counts the peer's notifications (virtio 1.2 §4.1.4.4:
//! a driver notifies a queue by writing its index to the notification
//! area).
//!
//! The peer decides on its own when to notify (with VIRTIO_F_EVENT_IDX,
//! §2.7.10, from the device's `avail_event`) and keeps that decision
//! inside its private queue type, so the only place the benchmark can see
//! it is the transport call it ends in. [`Counted`] wraps the peer's
//! `PciTransport`, passes every call through unchanged and counts
//! `notify` per queue: the peer's figure beside our driver's
//! `notifications_per_pkt`. Counting costs one add per notification, next
//! to an MMIO write that leaves the guest.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{PhysAddr, Result};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Queues whose notifications are counted one by one (higher ones share
/// the last counter); net and console use 0 and 1 here.
const COUNTED_QUEUES: usize = 4;

/// Notifications per queue, shared between a [`Counted`] transport (which
/// the peer's driver owns and does not give out again) and the benchmark.
#[derive(Default)]
pub struct Notifications([AtomicU64; COUNTED_QUEUES]);

impl Notifications {
    /// Notifications of `queue` so far.
    pub fn of(&self, queue: u16) -> u64 {
        self.0[usize::from(queue).min(COUNTED_QUEUES - 1)].load(Ordering::Relaxed)
    }
}

/// A transport that counts notifications (see the module docs).
pub struct Counted<T: Transport> {
    inner: T,
    notifications: Arc<Notifications>,
}

impl<T: Transport> Counted<T> {
    /// Wraps `inner`, with counters that start at 0; the second half of
    /// the pair reads them.
    pub fn new(inner: T) -> (Self, Arc<Notifications>) {
        let notifications = Arc::new(Notifications::default());
        (
            Counted {
                inner,
                notifications: notifications.clone(),
            },
            notifications,
        )
    }
}

impl<T: Transport> Transport for Counted<T> {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }

    fn read_device_features(&mut self) -> u64 {
        self.inner.read_device_features()
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.inner.write_driver_features(driver_features)
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }

    fn notify(&mut self, queue: u16) {
        self.notifications.0[usize::from(queue).min(COUNTED_QUEUES - 1)]
            .fetch_add(1, Ordering::Relaxed);
        self.inner.notify(queue)
    }

    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status)
    }

    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size)
    }

    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.inner
            .queue_set(queue, size, descriptors, driver_area, device_area)
    }

    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue)
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }

    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }

    fn read_config_space<V: FromBytes + IntoBytes>(&self, offset: usize) -> Result<V> {
        self.inner.read_config_space(offset)
    }

    fn write_config_space<V: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: V,
    ) -> Result<()> {
        self.inner.write_config_space(offset, value)
    }
}
