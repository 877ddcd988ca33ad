//! # Finding every virtio device, and the one path that brings it up
//!
//! Discovery and bring-up are two separate steps with two owners.
//!
//! **Discovery** ([`probe`], after interrupts are set up) looks for virtio
//! devices in the two places they can be on a QEMU machine and only
//! *records* what it found: type, location, transport flavour, interrupt
//! line, and the transport object itself. It writes no status byte (the
//! transport constructors only read identification registers).
//!
//! ```text
//!  pci::probe  ── ECAM (ACPI MCFG) or ports 0xCF8/0xCFC ── drivers::pci::enumerate
//!       │          (BAR windows from the memory map)          │ every function logged
//!       │                                                      ▼
//!       │                                  drivers::transport::pci::probe (modern first)
//!  mmio::probe ── virtio_mmio.device= on the command line,     │
//!       │          else the microvm window 0xfeb00000           │
//!       ▼                                                      ▼
//!  the registry ([`devices`]): one VirtioDevice per device, DeviceState::Found
//! ```
//!
//! **Bring-up** is done exactly once per device, by the driver of its type
//! (blk: `crate::block`, net: `crate::net::nic`, console:
//! `crate::shell::console`, rng: `crate::entropy`, 9p: `crate::ninep`,
//! balloon: `crate::balloon`), through one function,
//! [`bring_up`]:
//!
//! ```text
//!  virtio::take(type)          Found → Taken: the transport leaves the registry
//!  virtio::bring_up(found, …)
//!    irq::prepare              MSI-X on with the function masked, entry layout
//!                              handed to the MsixRouted transport (§4.1.5.1.2)
//!    driver's constructor      drivers::device::bring_up: §3.1.1 reset, ACKNOWLEDGE,
//!                              DRIVER, features, FEATURES_OK, queues (MsixRouted writes
//!                              queue_msix_vector before each queue is enabled, and
//!                              config_msix_vector before DRIVER_OK), DRIVER_OK
//!    irq::route                CPU vectors / line route / polling for the queues
//!                              the driver set up; function mask cleared
//!    registry                  Taken → Up, and the device's one `virtio:` line
//! ```
//!
//! Seen from QEMU (`-trace virtio_set_status`), a normal boot writes 0, 1,
//! 3, 11, 15 to each driven device and nothing else (the `bringup-once-*`
//! QEMU scenarios check this from QEMU's trace). Recovering a device
//! (`BlkDevice::recover`, ...) or lending it to the benchmark's peer
//! driver starts again from reset, on the same interrupt route.
//!
//! A device whose type no kernel driver takes ([`driver_for`] is `None`)
//! is left [`DeviceState::Unsupported`] at probe time: it gets its one
//! `virtio:` line then and is left reset (status 0 is written only if it
//! did not already read 0). A device of a driven type that its driver did
//! not take (a second console: the shell uses one) is left the same way
//! by [`leave_untaken`] before `kernel: ready`.
//!
//! ## The `virtio:` line (stable; docs/contract.md)
//!
//! ```text
//! virtio: <type> at <location> transport=<pci-modern|pci-legacy|mmio-v1|mmio-v2> ring=<split|packed> queues=<n> features=<NAME|NAME|...>
//! virtio: <type> at <location> FAILED: <error>
//! virtio: <type> at <location> transport=<transport>: no driver, left reset
//! ```
//!
//! `<type>` is `blk`, `net`, `console` (other types by their spec name, or
//! `type<id>`), `<location>` is `pci 0000:00:03.0` or `mmio@0xfeb00e00`,
//! `features` lists the negotiated feature bits by name, highest bit first
//! (`none` when nothing was negotiated). A device that fails to come up is
//! left with FAILED in its status byte and the boot continues.
//!
//! Every device prints **exactly one** such line, describing the state it
//! ends up in, through one function ([`VirtioDevice::report_up`],
//! [`VirtioDevice::fail`], [`VirtioDevice::leave_reset`]; a second call is
//! refused with a warning): a driven device's line comes from [`bring_up`]
//! with what its driver negotiated (features, ring layout, queue count) or
//! why it failed; a device without a transport gets its FAILED line at probe
//! time; a device no driver takes gets the third form.
//!
//! ## Self-tests
//!
//! In `mode=selftest` the raw-ring and interrupt self-tests
//! (`selftests.rs`, `irq_selftests.rs`) test the queue and interrupt code
//! without any device driver: `test_bringup.rs` lends every device still
//! waiting for its driver out of the registry, brings it up through the
//! same [`bring_up_routed`] path with a generic step 7 (only the shared ring
//! features, split queues), and after the tests resets it and puts it back,
//! so the drivers then bring it up for real. In that mode a device is
//! therefore brought up twice; the "exactly once" rule is the normal boot's.

pub mod irq;
pub mod mmio;
pub mod pci;
#[cfg(feature = "selftest")]
mod selftests;
#[cfg(feature = "selftest")]
pub(crate) mod test_bringup;
pub mod view;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use drivers::features;
use drivers::features::RingPreference;
use drivers::irq::{MsixRouted, QueueSet};
use drivers::queue::RingKind;
use drivers::transport::{
    AnyTransport, DeviceStatus, DeviceType, Location, Transport, TransportKind,
};
use spin::{Mutex, MutexGuard};

use crate::hal_impl::KernelHal;
use crate::println;

#[cfg(feature = "selftest")]
pub use selftests::selftests;

/// The transport type the kernel stores (any flavour, on the kernel's Hal),
/// wrapped so that MSI-X entry numbers reach the device at the moments the
/// spec asks for during any bring-up (see [`irq`]).
pub type KernelTransport = MsixRouted<AnyTransport<KernelHal>>;

/// How a device can interrupt, as far as discovery knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptLine {
    /// A PCI function's INTx pin (1 = INTA .. 4 = INTD) and the line the
    /// firmware routed it to (0 or 0xff: not routed). MSI-X comes later.
    PciIntx { pin: u8, line: u8 },
    /// The GSI of a virtio-mmio device, from `virtio_mmio.device=`.
    Gsi(u32),
    /// Not known (a virtio-mmio slot found by probing the window: the GSI is
    /// only in the ACPI DSDT, which the kernel does not parse).
    Unknown,
}

/// Where a device is in its life (see the module docs).
pub enum DeviceState {
    /// Found by discovery and not brought up: waiting for the driver of its
    /// type ([`take`]). The transport is kept here.
    Found(KernelTransport),
    /// Taken out of the registry by `by` (a driver, or the self-tests), which
    /// holds the transport while it brings the device up.
    Taken {
        /// Who took it.
        by: &'static str,
    },
    /// Brought up by its driver, which owns the transport from now on.
    Up {
        /// Which driver (`blk`, `virtio-net`, `console`).
        driver: &'static str,
    },
    /// Nobody drives it: left reset, with its transport.
    Unsupported {
        /// The transport (status 0).
        transport: KernelTransport,
        /// Why, as printed on the `virtio:` line.
        why: &'static str,
    },
    /// No transport could be made, or its driver failed to bring it up (the
    /// device then has FAILED in its status byte).
    Failed {
        /// Why, as printed on the `virtio:` line.
        error: String,
    },
}

impl DeviceState {
    /// A word for listings: `found`, `taken`, `up`, `no driver`, `FAILED`.
    pub fn name(&self) -> &'static str {
        match self {
            DeviceState::Found(_) => "found, waiting for its driver",
            DeviceState::Taken { .. } => "being brought up",
            DeviceState::Up { .. } => "up",
            DeviceState::Unsupported { .. } => "left reset",
            DeviceState::Failed { .. } => "FAILED",
        }
    }
}

/// One virtio device found at boot.
pub struct VirtioDevice {
    /// Its type (net, blk, console, ...).
    pub device_type: DeviceType,
    /// Where it is.
    pub location: Location,
    /// The transport flavour; `None` if no transport could be made.
    pub transport_kind: Option<TransportKind>,
    /// How it can interrupt.
    pub interrupt: InterruptLine,
    /// Found, taken, up, left reset or failed.
    pub state: DeviceState,
    /// What its driver negotiated (features, ring layout, queues), once a
    /// driver brought it up; kept for the status page and the queue view.
    pub negotiated: Option<BroughtUp>,
    /// Its `virtio:` line has been printed (see the module docs: once).
    reported: bool,
}

/// A device taken out of the registry to be brought up ([`take`]): what
/// discovery recorded, and the transport.
pub struct Found {
    /// Its type.
    pub device_type: DeviceType,
    /// Where it is.
    pub location: Location,
    /// How it can interrupt (from discovery).
    pub interrupt: InterruptLine,
    /// The transport, untouched since discovery (or reset).
    pub transport: KernelTransport,
}

/// What a device's `virtio:` line says once a driver has brought it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BroughtUp {
    /// The transport flavour.
    pub transport: TransportKind,
    /// The ring layout of its queues (packed exactly when RING_PACKED was negotiated).
    pub ring: RingKind,
    /// How many queues the driver set up.
    pub queues: usize,
    /// The negotiated feature bits.
    pub features: u64,
}

impl BroughtUp {
    /// The facts for a device whose driver negotiated `features` and set up
    /// `queues` queues on `transport` (the ring layout follows from the features).
    pub fn new(transport: TransportKind, queues: usize, features: u64) -> Self {
        Self {
            transport,
            ring: RingKind::from_features(features),
            queues,
            features,
        }
    }
}

/// What [`bring_up`] needs from a device driver once its constructor has
/// brought the device to DRIVER_OK: the transport (for the interrupt
/// route), the queues it set up, and the facts for the `virtio:` line.
/// Implemented by each kernel driver (`crate::block`, `crate::net::nic`,
/// `crate::shell::console`) and by the self-tests' generic device.
pub trait DrivenDevice {
    /// The transport the driver owns.
    fn transport_for_routing(&mut self) -> &mut KernelTransport;
    /// The queues the driver set up (they get interrupt routes).
    fn queues_in_use(&self) -> QueueSet;
    /// What the `virtio:` line says.
    fn brought_up(&self) -> BroughtUp;
    /// The CPU (`crate::smp` numbering) that submits on queue `queue` and
    /// should take its interrupts (the MSI-X message's destination). CPU 0
    /// for every queue unless the driver spreads its queues over the CPUs
    /// (multiqueue virtio-blk, `drivers::cpu_queues`).
    fn queue_cpu(&self, queue: u16) -> usize {
        let _ = queue;
        0
    }
}

/// Why a device no driver brought up was left reset.
pub const NO_DRIVER: &str = "no driver";
/// Why a device of a driven type was left reset ([`leave_untaken`]).
pub const NOT_TAKEN: &str = "not taken (its driver drives one device of this type)";

impl VirtioDevice {
    /// The error its bring-up failed with, if it did.
    pub fn failure(&self) -> Option<&str> {
        match &self.state {
            DeviceState::Failed { error } => Some(error),
            _ => None,
        }
    }

    /// `true` if a transport was made for it and nothing failed: it is
    /// waiting for its driver, being brought up, up, or left reset.
    #[cfg(feature = "selftest")]
    pub fn has_transport(&self) -> bool {
        !matches!(self.state, DeviceState::Failed { .. })
    }

    /// Prints the device's one `virtio:` line for a driver that brought it
    /// up (see the module docs).
    pub fn report_up(&mut self, up: &BroughtUp) {
        let name = type_name(self.device_type);
        let location = self.location;
        self.emit(format_args!(
            "virtio: {name} at {location} transport={} ring={} queues={} features={}",
            up.transport,
            up.ring,
            up.queues,
            FeatureList {
                device_type: self.device_type,
                bits: up.features,
            }
        ));
        crate::iommu::note_negotiated(name, location, up.features);
    }

    /// Marks the device failed with `error` (its transport, if any, is
    /// gone with the driver that failed) and prints its FAILED line.
    pub fn fail(&mut self, error: String) {
        let name = type_name(self.device_type);
        let location = self.location;
        self.emit(format_args!("virtio: {name} at {location} FAILED: {error}"));
        self.state = DeviceState::Failed { error };
    }

    /// Leaves the device reset because `why` (no driver takes it): writes
    /// status 0 only if it does not read 0 already (the firmware may have
    /// used it), and prints its line.
    pub fn leave_reset(&mut self, mut transport: KernelTransport, why: &'static str) {
        if transport.status() != DeviceStatus::empty() {
            if let Err(error) = transport.reset() {
                log::warn!(
                    "virtio: {} at {}: reset failed: {error}",
                    type_name(self.device_type),
                    self.location
                );
            }
        }
        let name = type_name(self.device_type);
        let location = self.location;
        let kind = transport.kind();
        self.emit(format_args!(
            "virtio: {name} at {location} transport={kind}: {why}, left reset"
        ));
        self.state = DeviceState::Unsupported { transport, why };
    }

    /// Prints a `virtio:` line unless the device already has one.
    fn emit(&mut self, line: fmt::Arguments<'_>) {
        if self.reported {
            log::warn!(
                "virtio: {} at {}: a second `virtio:` line was not printed: {line}",
                type_name(self.device_type),
                self.location
            );
            return;
        }
        self.reported = true;
        println!("{line}");
    }
}

/// The kernel driver that brings up devices of `device_type`, if there is
/// one (`crate::block`, `crate::net`, `crate::shell::console`,
/// `crate::screen` for the GPU and input devices, `crate::entropy`,
/// `crate::ninep`, `crate::balloon`).
pub fn driver_for(device_type: DeviceType) -> Option<&'static str> {
    match device_type {
        DeviceType::Block => Some("blk"),
        DeviceType::Net => Some("virtio-net"),
        DeviceType::Console => Some("console"),
        DeviceType::Gpu => Some("gpu"),
        DeviceType::Input => Some("input"),
        DeviceType::Entropy => Some("rng"),
        DeviceType::NineP => Some("9p"),
        DeviceType::Balloon => Some("balloon"),
        _ => None,
    }
}

/// Takes the first device of `device_type` that is waiting for its driver
/// (discovery order) out of the registry, for `by` to bring up with
/// [`bring_up`]. `None` when there is none left.
pub fn take(device_type: DeviceType, by: &'static str) -> Option<Found> {
    let mut registry = REGISTRY.lock();
    let device = registry
        .iter_mut()
        .find(|d| d.device_type == device_type && matches!(d.state, DeviceState::Found(_)))?;
    take_out(device, by)
}

/// Moves the transport of a Found or Unsupported device out, leaving
/// [`DeviceState::Taken`].
fn take_out(device: &mut VirtioDevice, by: &'static str) -> Option<Found> {
    let transport = match core::mem::replace(&mut device.state, DeviceState::Taken { by }) {
        DeviceState::Found(transport) | DeviceState::Unsupported { transport, .. } => transport,
        other => {
            device.state = other;
            return None;
        }
    };
    Some(Found {
        device_type: device.device_type,
        location: device.location,
        interrupt: device.interrupt,
        transport,
    })
}

/// The one bring-up of a device by its driver (see the module docs):
/// interrupt preparation, the driver's constructor `bring_up` (which runs
/// §3.1.1 through `drivers::device::bring_up`), the interrupt route for the
/// queues it set up, and the device's `virtio:` line. A failure leaves the
/// device FAILED in the registry, with its line, and hands the driver's
/// error back (`driver` names it on the line: `<driver> driver: <error>`).
pub fn bring_up<D, E>(
    found: Found,
    driver: &'static str,
    bring_up: impl FnOnce(KernelTransport) -> Result<D, E>,
) -> Result<D, E>
where
    D: DrivenDevice,
    E: fmt::Display,
{
    let location = found.location;
    let result = bring_up_routed(found, bring_up);
    let mut registry = REGISTRY.lock();
    let entry = registry.iter_mut().find(|d| d.location == location);
    match (&result, entry) {
        (Ok(device), Some(entry)) => {
            let up = device.brought_up();
            entry.report_up(&up);
            entry.negotiated = Some(up);
            entry.state = DeviceState::Up { driver };
        }
        (Err(error), Some(entry)) => entry.fail(format!("{driver} driver: {error}")),
        (_, None) => log::warn!("virtio: {location} is not in the registry"),
    }
    result
}

/// [`bring_up`] without the registry and the `virtio:` line: interrupt
/// preparation, `bring_up`, interrupt route. The self-tests bring their
/// own devices up through this, so they test the same path.
pub fn bring_up_routed<D, E>(
    mut found: Found,
    bring_up: impl FnOnce(KernelTransport) -> Result<D, E>,
) -> Result<D, E>
where
    D: DrivenDevice,
{
    irq::prepare(&mut found);
    let Found {
        device_type,
        location,
        interrupt,
        transport,
    } = found;
    let mut device = bring_up(transport)?;
    let queues = device.queues_in_use();
    let last = queues.iter().last().map_or(0, |q| usize::from(q) + 1);
    let queue_cpus: Vec<usize> = (0..last)
        .map(|q| device.queue_cpu(u16::try_from(q).unwrap_or(u16::MAX)))
        .collect();
    irq::route(
        device_type,
        location,
        interrupt,
        device.transport_for_routing(),
        queues,
        &queue_cpus,
    );
    Ok(device)
}

/// Lends every device waiting for its driver, or left reset, to the
/// self-tests (`test_bringup.rs`), which bring it up themselves.
#[cfg(feature = "selftest")]
fn lend_all(by: &'static str) -> Vec<Found> {
    REGISTRY
        .lock()
        .iter_mut()
        .filter_map(|device| take_out(device, by))
        .collect()
}

/// Puts a device the self-tests borrowed (and reset) back: waiting for its
/// driver again, or left reset if no driver takes its type (its `virtio:`
/// line was printed at probe time).
#[cfg(feature = "selftest")]
fn put_back(location: Location, transport: KernelTransport) {
    let mut registry = REGISTRY.lock();
    let Some(device) = registry.iter_mut().find(|d| d.location == location) else {
        return;
    };
    device.state = match driver_for(device.device_type) {
        Some(_) => DeviceState::Found(transport),
        None => DeviceState::Unsupported {
            transport,
            why: NO_DRIVER,
        },
    };
}

/// Leaves every device still waiting for its driver (of `only`, if given)
/// reset, with its `virtio:` line: for code that knows no driver will take
/// them any more (the console driver for other consoles; `main` before
/// `kernel: ready`).
pub fn leave_untaken(only: Option<DeviceType>) {
    let mut registry = REGISTRY.lock();
    for device in registry.iter_mut().filter(|d| {
        only.is_none_or(|t| t == d.device_type) && matches!(d.state, DeviceState::Found(_))
    }) {
        if let Some(found) = take_out(device, "nobody") {
            device.leave_reset(found.transport, NOT_TAKEN);
        }
    }
}

/// The ring layout the command line asks every driver for
/// (`virtio.ring=split|packed|auto`, default `auto`); an unknown value is
/// reported and ignored.
pub fn ring_preference() -> RingPreference {
    match crate::cmdline::get("virtio.ring") {
        None => RingPreference::default(),
        Some(text) => RingPreference::parse(text).unwrap_or_else(|| {
            log::warn!("virtio.ring={text:?} is not split, packed or auto: using auto");
            RingPreference::default()
        }),
    }
}

/// Every virtio device found at boot, in discovery order (PCI, then MMIO). The lock guards
/// claiming a device (one driver per device); thread context only.
static REGISTRY: Mutex<Vec<VirtioDevice>> = Mutex::new(Vec::new());

/// The registry of devices [`probe`] found, locked. Device drivers take
/// their device out of it with [`take`]; the shell and the self-tests walk
/// it. Do not hold the guard across a wait or a bring-up.
pub fn devices() -> MutexGuard<'static, Vec<VirtioDevice>> {
    REGISTRY.lock()
}

/// The short name of a device type on the `virtio:` line and in
/// `expect.virtio=`: the names Linux and QEMU use (`blk`, `net`, `console`).
pub fn type_name(device_type: DeviceType) -> TypeName {
    TypeName(device_type)
}

/// Display wrapper for [`type_name`]: never contains a space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeName(DeviceType);

impl fmt::Display for TypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            DeviceType::Block => f.write_str("blk"),
            DeviceType::Entropy => f.write_str("rng"),
            DeviceType::Other(id) => write!(f, "type{id}"),
            other => write!(f, "{other}"),
        }
    }
}

/// Feature bits as `NAME|NAME|...`, highest bit first, `none` for no bits;
/// bits without a name print as `bit<n>`.
pub struct FeatureList {
    /// The device type that names bits 0-23.
    pub device_type: DeviceType,
    /// The bits.
    pub bits: u64,
}

impl fmt::Display for FeatureList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bits == 0 {
            return f.write_str("none");
        }
        let mut first = true;
        for bit in (0..64u32).rev().filter(|bit| self.bits & (1 << bit) != 0) {
            if !first {
                f.write_str("|")?;
            }
            first = false;
            match features::feature_name(self.device_type, bit) {
                Some(name) => f.write_str(name)?,
                None => write!(f, "bit{bit}")?,
            }
        }
        Ok(())
    }
}

/// Finds every virtio device (PCI first, then virtio-mmio) and records it
/// in the registry; brings nothing up (see the module docs). A device
/// without a transport gets its FAILED line, one of a type no driver takes
/// its "no driver" line. Call once, after `interrupts::init`. Never panics
/// on what a device does.
pub fn probe() {
    let started = crate::clock::uptime_ns();
    let pci_found = pci::probe();
    let mmio_found = mmio::probe(pci_found.host_bridge_present);
    let found = pci_found.devices.into_iter().chain(mmio_found);
    let mut registry = REGISTRY.lock();
    for discovered in found {
        let Discovered {
            device_type,
            location,
            interrupt,
            transport,
        } = discovered;
        let mut device = VirtioDevice {
            device_type,
            location,
            transport_kind: transport.as_ref().ok().map(|t| t.kind()),
            interrupt,
            state: DeviceState::Failed {
                error: String::new(),
            },
            negotiated: None,
            reported: false,
        };
        match transport {
            Err(error) => device.fail(error),
            Ok(transport) if driver_for(device_type).is_none() => {
                device.leave_reset(transport, NO_DRIVER)
            }
            Ok(transport) => device.state = DeviceState::Found(transport),
        }
        log::debug!(
            "{} at {}: {}, interrupt {:?}",
            type_name(device.device_type),
            device.location,
            device.state.name(),
            device.interrupt
        );
        registry.push(device);
    }
    let waiting = registry
        .iter()
        .filter(|d| matches!(d.state, DeviceState::Found(_)))
        .count();
    let failed = registry.iter().filter(|d| d.failure().is_some()).count();
    log::info!(
        "virtio: {} device(s) found, {} for a driver, {} without one, {} failed, in {} us",
        registry.len(),
        waiting,
        registry.len() - waiting - failed,
        failed,
        (crate::clock::uptime_ns() - started) / 1000
    );
}

/// A device discovery found: what [`probe`] records.
pub struct Discovered {
    /// Its type, as far as discovery could tell.
    pub device_type: DeviceType,
    /// Where it is.
    pub location: Location,
    /// How it can interrupt.
    pub interrupt: InterruptLine,
    /// The transport, or why none could be made.
    pub transport: Result<KernelTransport, String>,
}
