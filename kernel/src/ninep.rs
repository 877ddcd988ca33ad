//! # Host folders: every virtio-9p device, mounted at `/<mount_tag>`
//!
//! QEMU shares a host directory with
//! `-fsdev local,id=f0,path=DIR,security_model=none -device
//! virtio-9p-pci,fsdev=f0,mount_tag=TAG` (`virtio-9p-device` on
//! virtio-mmio). [`init`] takes each such device from the registry, brings
//! it up through [`virtio::bring_up`] (`drivers::p9` does the work: its
//! `virtio:` line names the device and `9P_MOUNT_TAG`), starts the 9P2000.L
//! session (msize, attach) and mounts it at `/<tag>` (`/9p<n>` if the device
//! has no tag, or a second device has the same one), with one line:
//!
//! ```text
//! 9p: /hostshare mounted from pci 0000:00:04.0 (msize 131072)
//! ```
//!
//! The shell's `ls`, `cat`, `sha256`, `write` and `cp`
//! (`kernel/src/shell/fs.rs`) reach a file by its full path,
//! `/<tag>/dir/file`: [`with_mount`] finds the mount and hands the rest of
//! the path to the driver, which refuses any `..` that would leave the
//! share.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use drivers::irq::QueueSet;
use drivers::p9::{P9Device, P9Error};
use drivers::transport::{DeviceType, Location, Transport};
use spin::{Mutex, MutexGuard};

use crate::hal_impl::KernelHal;
use crate::println;
use crate::virtio::{self, BroughtUp, DrivenDevice, KernelTransport};
use crate::wait::{self, KernelWait};

/// The virtio-9p driver on the kernel's Hal and transport.
pub type KernelP9 = P9Device<KernelHal, KernelTransport>;

impl DrivenDevice for KernelP9 {
    fn transport_for_routing(&mut self) -> &mut KernelTransport {
        self.transport_mut()
    }

    fn queues_in_use(&self) -> QueueSet {
        QueueSet::single(drivers::p9::REQUEST_QUEUE)
    }

    fn brought_up(&self) -> BroughtUp {
        BroughtUp::new(self.transport().kind(), 1, self.features())
    }
}

/// The driver's name in the registry.
pub const DRIVER_NAME: &str = "9p";

/// How long one 9P request may take (a large read of a host file included).
const REQUEST_TIMEOUT_NS: u64 = 10_000_000_000;

/// One mounted share.
pub struct Mount {
    /// Where it is mounted: `/<name>`.
    pub name: String,
    /// The device.
    pub location: Location,
    /// The driver and its 9P session.
    pub device: KernelP9,
}

impl Mount {
    /// A wait for one request on this share.
    pub fn wait(&self) -> KernelWait {
        wait::for_device(
            virtio::irq::of(self.location),
            QueueSet::single(drivers::p9::REQUEST_QUEUE),
            REQUEST_TIMEOUT_NS,
        )
    }
}

/// The mounted 9p shares and their drivers: one request at a time per mount (the shell's file
/// commands, from thread context; never from an interrupt handler).
static MOUNTS: Mutex<Vec<Mount>> = Mutex::new(Vec::new());

/// Brings up and mounts every virtio-9p device (see the module docs).
pub fn init() {
    let rings = virtio::ring_preference().ring_features();
    while let Some(found) = virtio::take(DeviceType::NineP, DRIVER_NAME) {
        let location = found.location;
        let mut device = match virtio::bring_up(found, DRIVER_NAME, |transport| {
            P9Device::new(transport, rings)
        }) {
            Ok(device) => device,
            Err(error) => {
                log::error!("9p: {location}: bring-up failed: {error}");
                continue;
            }
        };
        let mut mounts = MOUNTS.lock();
        let tag = device.mount_tag();
        let name = if tag.is_empty() || tag.contains('/') || mounts.iter().any(|m| m.name == tag) {
            format!("9p{}", mounts.len())
        } else {
            String::from(tag)
        };
        let mut wait = wait::for_device(
            virtio::irq::of(location),
            QueueSet::single(drivers::p9::REQUEST_QUEUE),
            REQUEST_TIMEOUT_NS,
        );
        match device.mount(&mut wait) {
            Ok(()) => {
                println!(
                    "9p: /{name} mounted from {location} (msize {})",
                    device.msize()
                );
                mounts.push(Mount {
                    name,
                    location,
                    device,
                });
            }
            Err(error) => println!("9p: /{name} from {location}: mount failed: {error}"),
        }
    }
}

/// Hands the rings of the virtio-9p device at `location` to `visit` (the live queue
/// view, `crate::virtio::view`); `None` if the driver is in use right now
/// (the view never waits).
pub fn try_visit_rings(
    location: Location,
    visit: impl FnMut(&dyn core::fmt::Display, &drivers::queue::Virtqueue<KernelHal>),
) -> Option<()> {
    if let Some(mount) = MOUNTS.try_lock()?.iter().find(|m| m.location == location) {
        mount.device.visit_rings(visit);
    }
    Some(())
}

/// The mounts, locked.
pub fn mounts() -> MutexGuard<'static, Vec<Mount>> {
    MOUNTS.lock()
}

/// What went wrong reaching a file by its full path.
#[derive(Debug)]
pub enum PathError {
    /// Not of the form `/<mount>/...`.
    NotAbsolute,
    /// No mount of that name.
    NoMount(String),
    /// The driver or the server said no.
    P9(P9Error),
}

impl core::fmt::Display for PathError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PathError::NotAbsolute => f.write_str("paths start with /<mount>, e.g. /host/file"),
            PathError::NoMount(name) => write!(f, "no mount /{name} (see `ls /`)"),
            PathError::P9(e) => write!(f, "{e}"),
        }
    }
}

impl From<P9Error> for PathError {
    fn from(e: P9Error) -> Self {
        PathError::P9(e)
    }
}

/// Finds the mount `path` starts with (`/<mount>/rest`) and runs `f` on
/// it with the rest of the path.
pub fn with_mount<R>(
    path: &str,
    f: impl FnOnce(&mut Mount, &str) -> Result<R, P9Error>,
) -> Result<R, PathError> {
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let (name, inner) = rest.split_once('/').unwrap_or((rest, ""));
    let mut mounts = MOUNTS.lock();
    let mount = mounts
        .iter_mut()
        .find(|m| m.name == name)
        .ok_or_else(|| PathError::NoMount(String::from(name)))?;
    Ok(f(mount, inner)?)
}
