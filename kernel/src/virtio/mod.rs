//! # Finding every virtio device and bringing it up
//!
//! After interrupts are set up, [`probe`] looks for virtio devices in the two
//! places they can be on a QEMU machine and brings each one up through the
//! shared code in `drivers/`:
//!
//! ```text
//!  pci::probe  ── ECAM (ACPI MCFG) or ports 0xCF8/0xCFC ── drivers::pci::enumerate
//!       │          (BAR windows from the memory map)          │ every function logged
//!       │                                                      ▼
//!       │                                  drivers::transport::pci::probe (modern first)
//!  mmio::probe ── virtio_mmio.device= on the command line,     │
//!       │          else the microvm window 0xfeb00000           │
//!       ▼                                                      ▼
//!  bringup::bring_up: drivers::init::begin → every queue (SplitQueue) → finish (DRIVER_OK)
//!       │
//!       ▼
//!  one `virtio:` line per device, and the device in the registry ([`devices`])
//! ```
//!
//! ## The `virtio:` line (stable; README "The stable contract")
//!
//! ```text
//! virtio: <type> at <location> transport=<pci-modern|pci-legacy|mmio-v1|mmio-v2> ring=<split|packed> queues=<n> features=<NAME|NAME|...>
//! virtio: <type> at <location> FAILED: <error>
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
//! [`VirtioDevice::fail`], [`VirtioDevice::report_generic`]; a second call
//! is refused with a warning):
//!
//! - a device the generic bring-up could not bring up: its FAILED line, at
//!   probe time;
//! - a device of a type no kernel driver takes ([`driver_for`] is `None`):
//!   the generic bring-up's line, at probe time (`ring=split`, no
//!   device-specific feature);
//! - a blk, net or console device: the line of its **driver**, when the
//!   driver has brought it up (its features, its ring layout, its queue
//!   count) or failed to. The network driver claims at boot; the block
//!   layer and the console driver after the raw-ring self-tests in
//!   `mode=selftest` and before `kernel: ready` otherwise. A device of such
//!   a type that no driver ends up claiming (a second console, the console
//!   in `mode=bench`) gets the generic line from [`report_unclaimed`].
//!
//! ## What "brought up" means here
//!
//! Probing knows no device driver, so the bring-up is the
//! generic one of [`bringup`]: the initialisation sequence of virtio 1.2
//! §3.1.1 accepting only the shared ring features (indirect descriptors,
//! event index, and VERSION_1 on modern transports), no device-specific
//! feature, and every queue the device has with those features (net: rx and
//! tx; blk: one; console: receive and transmit of port 0). The queues are
//! live and kept in the registry with the transport, so later code (the
//! device drivers, the shell, the self-tests) can reach them. A device
//! driver then claims its device ([`VirtioDevice::claim`], leaving
//! [`DeviceState::Claimed`]) and brings it up again with its own features
//! (blk: `crate::block`).
//!
//! ## Why blk, net and console are initialised twice
//!
//! Skipping the generic bring-up for types a driver will claim would save
//! one reset and one §3.1.1 sequence per device, but it is not simple:
//! the interrupt set-up ([`irq::after_bring_up`]) programs MSI-X vectors
//! and line routes through a live device and its queue count, which only
//! exists after a bring-up; and in `mode=selftest` the raw-ring self-tests
//! (the blk and console round trips here, the interrupt round trips of
//! [`irq`]) run on the generic queues *before* the drivers claim the
//! devices, which is what lets them test the queue and interrupt code
//! independently of any driver. So the generic bring-up stays, and only
//! its `virtio:` line is left to the driver. The driver's reset (§3.1.1
//! step 1) is the one safe way to take a device over; the MSI-X entries
//! stay programmed across it.

pub mod bringup;
pub mod irq;
pub mod mmio;
pub mod pci;
mod selftests;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use drivers::features;
use drivers::features::RingPreference;
use drivers::irq::MsixRouted;
use drivers::queue::{RingKind, SplitQueue};
use drivers::transport::{AnyTransport, DeviceType, Location, Transport, TransportKind};
use spin::{Mutex, MutexGuard};

use crate::hal_impl::KernelHal;
use crate::println;

pub use selftests::selftests;

/// The transport type the kernel stores (any flavour, on the kernel's Hal),
/// wrapped so that MSI-X entry numbers reach the device at the moments the
/// spec asks for during any bring-up (see [`irq`]).
pub type KernelTransport = MsixRouted<AnyTransport<KernelHal>>;
/// A split virtqueue on the kernel's Hal.
pub type KernelQueue = SplitQueue<KernelHal>;

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

/// A device that came up: its transport, its live queues and what was negotiated.
pub struct LiveDevice {
    /// The transport, status DRIVER_OK.
    pub transport: KernelTransport,
    /// Every queue set up, by queue index.
    pub queues: Vec<KernelQueue>,
    /// The negotiated feature bits.
    pub features: u64,
}

/// Where a device's bring-up ended.
pub enum DeviceState {
    /// DRIVER_OK, queues live; no device driver has claimed it yet.
    Live(LiveDevice),
    /// A device driver took the transport and queues ([`VirtioDevice::claim`])
    /// and drives the device from its own registry (blk: `crate::block`).
    Claimed {
        /// Which driver (`blk`, ...).
        driver: &'static str,
    },
    /// Bring-up failed; the transport (if one could be made) has FAILED set.
    Failed {
        /// The transport, if discovery got that far.
        transport: Option<KernelTransport>,
        /// Why, as printed on the `virtio:` line.
        error: String,
    },
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
    /// Live or failed.
    pub state: DeviceState,
    /// Its `virtio:` line has been printed (see the module docs: once).
    reported: bool,
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

impl VirtioDevice {
    /// The live part, if the device came up and no driver claimed it.
    pub fn live(&mut self) -> Option<&mut LiveDevice> {
        match &mut self.state {
            DeviceState::Live(live) => Some(live),
            DeviceState::Claimed { .. } | DeviceState::Failed { .. } => None,
        }
    }

    /// The error its bring-up failed with, if it did.
    pub fn failure(&self) -> Option<&str> {
        match &self.state {
            DeviceState::Live(_) | DeviceState::Claimed { .. } => None,
            DeviceState::Failed { error, .. } => Some(error),
        }
    }

    /// Hands the live device (transport and generic queues) to the device
    /// driver `driver`, leaving [`DeviceState::Claimed`] behind; `None` if it
    /// is not live. The driver resets the device before building its own
    /// queues, and only then drops the generic ones (the device must not
    /// touch ring memory that is being freed). The interrupt route set up
    /// by [`irq`] stays with the device's location.
    pub fn claim(&mut self, driver: &'static str) -> Option<LiveDevice> {
        if !matches!(self.state, DeviceState::Live(_)) {
            return None;
        }
        match core::mem::replace(&mut self.state, DeviceState::Claimed { driver }) {
            DeviceState::Live(live) => Some(live),
            // Checked just above; put back whatever it was.
            other => {
                self.state = other;
                None
            }
        }
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
    }

    /// Marks the device failed with `error` (its transport, if any, is
    /// gone with the driver that failed) and prints its FAILED line.
    pub fn fail(&mut self, error: String) {
        let name = type_name(self.device_type);
        let location = self.location;
        self.emit(format_args!("virtio: {name} at {location} FAILED: {error}"));
        self.state = DeviceState::Failed {
            transport: None,
            error,
        };
    }

    /// Prints the line for the state the generic bring-up left: the
    /// generic features and split rings, or FAILED. Nothing for a device a
    /// driver claimed (its driver reports it).
    pub fn report_generic(&mut self) {
        let name = type_name(self.device_type);
        let location = self.location;
        match &self.state {
            DeviceState::Live(live) => {
                let up = BroughtUp {
                    transport: live.transport.kind(),
                    // The generic bring-up builds `SplitQueue`s only and
                    // never accepts RING_PACKED.
                    ring: RingKind::Split,
                    queues: live.queues.len(),
                    features: live.features,
                };
                self.report_up(&up);
            }
            DeviceState::Failed { error, .. } => {
                let error = error.clone();
                self.emit(format_args!("virtio: {name} at {location} FAILED: {error}"));
            }
            DeviceState::Claimed { .. } => {}
        }
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

/// The kernel driver that claims devices of `device_type`, if there is
/// one (`crate::block`, `crate::net`, `crate::shell::console`). Probing
/// leaves the `virtio:` line of such devices to the driver.
pub fn driver_for(device_type: DeviceType) -> Option<&'static str> {
    match device_type {
        DeviceType::Block => Some("blk"),
        DeviceType::Net => Some("virtio-net"),
        DeviceType::Console => Some("console"),
        _ => None,
    }
}

/// Prints the generic `virtio:` line of every device (of `only`, if
/// given) that has none yet and that no driver claimed: for code that
/// knows no driver will claim them any more (see the module docs).
pub fn report_unclaimed(only: Option<DeviceType>) {
    for device in devices()
        .iter_mut()
        .filter(|d| !d.reported && only.is_none_or(|t| t == d.device_type))
    {
        device.report_generic();
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

/// Every virtio device found at boot, in discovery order (PCI, then MMIO).
static REGISTRY: Mutex<Vec<VirtioDevice>> = Mutex::new(Vec::new());

/// The registry of devices [`probe`] found, locked. Device drivers take
/// their device out of it (`swap_remove`) or drive it in place; the shell
/// and the self-tests walk it. Do not hold the guard across a wait.
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

/// Finds every virtio device (PCI first, then virtio-mmio), brings each up,
/// prints its `virtio:` line and records it in the registry. Call once,
/// after `interrupts::init`. Never panics on what a device does.
pub fn probe() {
    let started = crate::clock::uptime_ns();
    let pci_found = pci::probe();
    let mmio_found = mmio::probe(pci_found.host_bridge_present);
    let found = pci_found.devices.into_iter().chain(mmio_found);
    let mut registry = REGISTRY.lock();
    for mut discovered in found {
        irq::before_bring_up(&mut discovered);
        let mut device = bringup::bring_up(discovered);
        // A driver's device gets its line from the driver (module docs).
        if device.failure().is_some() || driver_for(device.device_type).is_none() {
            device.report_generic();
        }
        irq::after_bring_up(&mut device);
        log::debug!(
            "{} at {}: interrupt {:?}",
            type_name(device.device_type),
            device.location,
            device.interrupt
        );
        registry.push(device);
    }
    let live = registry
        .iter()
        .filter(|d| matches!(d.state, DeviceState::Live(_)))
        .count();
    log::info!(
        "virtio: {} device(s) found, {} live, {} failed, in {} us",
        registry.len(),
        live,
        registry.len() - live,
        (crate::clock::uptime_ns() - started) / 1000
    );
}

/// A device discovery found, before bring-up.
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
