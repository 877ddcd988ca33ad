//! # The memory balloon: pages the host may take back (virtio 1.2 §5.5)
//!
//! [`init`] takes the first virtio-balloon device (`-device
//! virtio-balloon-pci`, `virtio-balloon-device` on virtio-mmio) and brings
//! it up through [`virtio::bring_up`]; `drivers::balloon` does the device's
//! side. The pages come from the kernel's frame allocator
//! (`crate::memory`): [`FramePages`] takes free frames one at a time, so no
//! page in use can ever go into the balloon, and frees them when the
//! device has acknowledged their deflation.
//!
//! The host moves the target whenever it likes (QMP `balloon`). [`poll`],
//! called from the kernel's idle loops (the shell's `idle`, `net::run`),
//! follows it: up to [`STEPS_PER_POLL`] requests of 1024 pages each per
//! call, so half of a 256 MiB guest (32768 pages) goes in well under a
//! second; and it answers the device's statistics requests (free and total
//! memory, QMP `qom-get ... guest-stats`). The shell's `mem` shows the
//! numbers (`kernel/src/shell/mem.rs`).

use drivers::balloon::{Adjusted, BalloonDevice, MemoryStats, PageSource};
use drivers::irq::QueueSet;
use drivers::transport::{DeviceType, Location, Transport};
use spin::Mutex;

use crate::hal_impl::KernelHal;
use crate::memory::{self, frames::FRAME_SIZE};
use crate::println;
use crate::virtio::{self, BroughtUp, DrivenDevice, KernelTransport};
use crate::wait;

/// The virtio-balloon driver on the kernel's Hal and transport.
pub type KernelBalloon = BalloonDevice<KernelHal, KernelTransport>;

impl DrivenDevice for KernelBalloon {
    fn transport_for_routing(&mut self) -> &mut KernelTransport {
        self.transport_mut()
    }

    fn queues_in_use(&self) -> QueueSet {
        QueueSet::first(self.queue_count() as u16)
    }

    fn brought_up(&self) -> BroughtUp {
        BroughtUp::new(self.transport().kind(), self.queue_count(), self.features())
    }
}

/// The driver's name in the registry.
pub const DRIVER_NAME: &str = "balloon";
/// Inflate / deflate requests per [`poll`].
pub const STEPS_PER_POLL: usize = 64;
/// How long one request may wait for the device.
const REQUEST_TIMEOUT_NS: u64 = 1_000_000_000;

struct Balloon {
    location: Location,
    driver: KernelBalloon,
    /// The last target reached (to log each once).
    settled_at: Option<usize>,
}

/// The balloon driver and its state (followed from the idle loops; thread context only).
static BALLOON: Mutex<Option<Balloon>> = Mutex::new(None);

/// Pages from and to the frame allocator. Frames are identity-mapped and the
/// kernel's device addresses are physical (`hal_impl.rs`), so a frame's
/// PFN is what the device expects.
pub struct FramePages;

impl PageSource for FramePages {
    fn take(&mut self) -> Option<u32> {
        let phys = memory::allocate_frames(1).ok()?;
        match u32::try_from(phys / FRAME_SIZE) {
            Ok(pfn) => Some(pfn),
            Err(_) => {
                // Above 16 TiB a 32-bit PFN cannot name it: keep it free.
                // SAFETY: just allocated, never used or given to anyone.
                let _ = unsafe { memory::free_frames(phys, 1) };
                None
            }
        }
    }

    fn give_back(&mut self, pfn: u32) {
        // SAFETY: `pfn` was allocated by `take` for the balloon, and the
        // driver gives it back only once the device has acknowledged the
        // deflate (or was reset): neither the CPU nor the device uses it.
        if let Err(error) = unsafe { memory::free_frames(u64::from(pfn) * FRAME_SIZE, 1) } {
            log::error!("balloon: freeing page {pfn:#x}: {error}");
        }
    }
}

/// Free and total memory as the balloon reports them.
pub fn memory_stats() -> MemoryStats {
    MemoryStats {
        free: memory::free_frame_count() * FRAME_SIZE,
        total: memory::managed_frame_count() * FRAME_SIZE,
    }
}

/// Brings up the first balloon device, if any; any other is left reset.
pub fn init() {
    if let Some(found) = virtio::take(DeviceType::Balloon, DRIVER_NAME) {
        let location = found.location;
        let rings = virtio::ring_preference().ring_features();
        match virtio::bring_up(found, DRIVER_NAME, |transport| {
            BalloonDevice::new(transport, rings, memory_stats())
        }) {
            Ok(driver) => {
                println!("balloon: at {location}, empty; following the host's target");
                *BALLOON.lock() = Some(Balloon {
                    location,
                    driver,
                    settled_at: Some(0),
                });
            }
            Err(error) => log::error!("balloon: {location}: bring-up failed: {error}"),
        }
    }
    virtio::leave_untaken(Some(DeviceType::Balloon));
}

/// Follows the host's target and answers statistics requests (see the
/// module docs). Cheap when there is nothing to do: one config read.
pub fn poll() {
    // Never wait for the lock: a caller inside `mem` already holds it.
    let Some(mut guard) = BALLOON.try_lock() else {
        return;
    };
    let Some(balloon) = guard.as_mut() else {
        return;
    };
    if balloon.driver.is_stopped() {
        return;
    }
    if let Err(error) = balloon.driver.answer_stats(memory_stats) {
        log::warn!("balloon: statistics: {error}");
    }
    let irq = virtio::irq::of(balloon.location);
    for _ in 0..STEPS_PER_POLL {
        let mut wait = wait::for_device(irq, QueueSet::first(2), REQUEST_TIMEOUT_NS);
        match balloon.driver.adjust(&mut FramePages, &mut wait) {
            Ok(Adjusted::Inflated(_) | Adjusted::Deflated(_)) => balloon.settled_at = None,
            Ok(Adjusted::Settled) | Ok(Adjusted::NoFreePages) => {
                let pages = balloon.driver.pages();
                if balloon.settled_at != Some(pages) {
                    balloon.settled_at = Some(pages);
                    log::info!(
                        "balloon: {pages} pages ({} MiB) in the balloon; {} MiB free",
                        (pages as u64 * FRAME_SIZE) >> 20,
                        memory_stats().free >> 20
                    );
                }
                return;
            }
            Err(error) => {
                log::error!("balloon: {error}; giving every page back");
                for pfn in balloon.driver.take_pages_after_reset() {
                    FramePages.give_back(pfn);
                }
                return;
            }
        }
    }
}

/// Hands the rings of the balloon at `location` to `visit` (the live queue
/// view, `crate::virtio::view`); `None` if the driver is in use right now
/// (the view never waits).
pub fn try_visit_rings(
    location: Location,
    visit: impl FnMut(&dyn core::fmt::Display, &drivers::queue::Virtqueue<KernelHal>),
) -> Option<()> {
    if let Some(balloon) = BALLOON
        .try_lock()?
        .as_ref()
        .filter(|b| b.location == location)
    {
        balloon.driver.visit_rings(visit);
    }
    Some(())
}

/// What `mem` shows about the balloon: pages held, the host's target, stats
/// requests answered, and whether it stopped.
pub fn summary() -> Option<(Location, usize, Option<u32>, u64, bool)> {
    let mut guard = BALLOON.lock();
    let balloon = guard.as_mut()?;
    let target = balloon.driver.target().ok();
    Some((
        balloon.location,
        balloon.driver.pages(),
        target,
        balloon.driver.stats_answered(),
        balloon.driver.is_stopped(),
    ))
}
