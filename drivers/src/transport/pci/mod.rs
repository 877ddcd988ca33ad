//! # virtio over PCI (virtio 1.2 §4.1)
//!
//! A virtio PCI function has vendor id 0x1AF4 and a device id that says both
//! the interface and the device type (§4.1.2):
//!
//! | device id         | interface                   | device type from        |
//! |-------------------|-----------------------------|-------------------------|
//! | 0x1000 - 0x103F   | transitional: legacy *and* modern | the subsystem id  |
//! | 0x1040 - 0x107F   | modern only                 | device id - 0x1040      |
//!
//! The **modern** interface (§4.1.4, [`ModernPciTransport`]) lives in
//! structures that *vendor-specific capabilities* point at: each says "my
//! structure of type T is in BAR b at offset o, length l". The **legacy**
//! interface (§4.1.4.8, [`LegacyPciTransport`]) is a fixed register block at
//! the start of I/O BAR 0. A transitional device offers both; [`probe`]
//! prefers modern, as the spec recommends, and falls back to legacy only when
//! the capabilities are absent (or when asked to with
//! [`TransportPreference::ForceLegacy`]).
//!
//! Every capability is validated before use: a reserved BAR number is
//! skipped (§4.1.4: "The driver MUST ignore any vendor-specific capability
//! structure which has a reserved bar value"); a BAR that does not exist, a
//! structure that does not fit in its BAR, or one shorter than its layout
//! makes that instance unusable, never an access outside the device's
//! registers. The next instance of the same type is then tried (§4.1.4:
//! the first instance "they can support", [`VirtioCaps`]); the probe fails
//! only when no instance of a needed type works.

pub mod legacy;
pub mod modern;

pub use legacy::LegacyPciTransport;
pub use modern::ModernPciTransport;

use alloc::vec::Vec;
use core::fmt;

use hal::{Hal, HalError, MmioRegion, PortRange};

use super::{AnyTransport, DeviceType, RegisterWindow};
use crate::pci::{capability_id, ConfigAccess, PciError, PciFunction, VIRTIO_VENDOR_ID};

/// `cfg_type` values of `struct virtio_pci_cap` (§4.1.4).
pub mod cfg_type {
    /// Common configuration.
    pub const COMMON: u8 = 1;
    /// Notifications.
    pub const NOTIFY: u8 = 2;
    /// ISR status.
    pub const ISR: u8 = 3;
    /// Device-specific configuration.
    pub const DEVICE: u8 = 4;
    /// PCI configuration access (a window into the BARs through config space).
    pub const PCI_CFG: u8 = 5;
    /// Shared memory region.
    pub const SHARED_MEMORY: u8 = 8;
    /// Vendor-specific data.
    pub const VENDOR: u8 = 9;
}

/// The name of a `cfg_type`, for messages.
pub fn cfg_type_name(cfg_type: u8) -> &'static str {
    match cfg_type {
        cfg_type::COMMON => "common",
        cfg_type::NOTIFY => "notify",
        cfg_type::ISR => "ISR",
        cfg_type::DEVICE => "device",
        cfg_type::PCI_CFG => "PCI config",
        cfg_type::SHARED_MEMORY => "shared memory",
        cfg_type::VENDOR => "vendor",
        _ => "unknown",
    }
}

/// Smallest structure sizes the driver relies on: the common configuration
/// up to `queue_device` (0x38 bytes), one 16-bit notify register, one ISR byte.
const MIN_COMMON_LEN: u32 = 0x38;
const MIN_NOTIFY_LEN: u32 = 2;
const MIN_ISR_LEN: u32 = 1;
/// `struct virtio_pci_cap` is 16 bytes; the notify variant adds a 32-bit multiplier.
const VIRTIO_CAP_LEN: u8 = 16;
const VIRTIO_NOTIFY_CAP_LEN: u8 = 20;
/// `struct virtio_pci_cfg_cap` adds 4 data bytes.
const VIRTIO_PCI_CFG_CAP_LEN: u8 = 20;

/// A parsed `struct virtio_pci_cap` (§4.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioPciCap {
    /// Where the capability is in configuration space.
    pub cap_offset: u8,
    /// Which structure it describes.
    pub cfg_type: u8,
    /// BAR number (0-5).
    pub bar: u8,
    /// Distinguishes several capabilities of one type (shared memory).
    pub id: u8,
    /// Offset of the structure in the BAR.
    pub offset: u32,
    /// Length of the structure.
    pub length: u32,
    /// Notify capabilities only: bytes between queues' notify addresses per `queue_notify_off`.
    pub notify_off_multiplier: u32,
}

/// Which interface [`probe_with`] uses on a transitional device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportPreference {
    /// Modern when the capabilities are there, legacy otherwise (the spec's advice).
    #[default]
    PreferModern,
    /// Legacy even when modern capabilities exist (to exercise the legacy path
    /// on QEMU's transitional devices).
    ForceLegacy,
}

/// Why a PCI function could not become a virtio transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciTransportError {
    /// Not a virtio function (vendor 0x1AF4, device 0x1000-0x107F).
    NotVirtio {
        /// Vendor id.
        vendor_id: u16,
        /// Device id.
        device_id: u16,
    },
    /// Transitional device whose subsystem id is 0 (no device type).
    NoDeviceType,
    /// Configuration access or capability walk failed (includes looping capability lists).
    Pci(PciError),
    /// A virtio capability shorter than its structure.
    CapabilityTooShort {
        /// Which structure.
        cfg_type: u8,
        /// Its `cap_len`.
        cap_len: u8,
    },
    /// A virtio capability names a BAR that does not exist or has no address.
    BarMissing {
        /// Which structure.
        cfg_type: u8,
        /// The BAR number.
        bar: u8,
    },
    /// A structure that does not fit inside its BAR.
    OutsideBar {
        /// Which structure.
        cfg_type: u8,
        /// BAR number.
        bar: u8,
        /// Offset in the BAR.
        offset: u32,
        /// Length.
        length: u32,
        /// Size of the BAR.
        bar_size: u64,
    },
    /// A structure shorter than the driver needs.
    StructureTooSmall {
        /// Which structure.
        cfg_type: u8,
        /// Its length.
        length: u32,
        /// What the driver needs.
        minimum: u32,
    },
    /// `notify_off_multiplier` is neither 0 nor an even power of two (§4.1.4.4).
    InvalidNotifyMultiplier(u32),
    /// A modern device without one of the structures the driver needs.
    MissingStructure {
        /// Which structure.
        cfg_type: u8,
    },
    /// Legacy interface: BAR 0 is missing, not an I/O BAR, or too small.
    NoLegacyBar,
    /// A structure in I/O space beyond port 0xFFFF, or outside the ports
    /// the Hal says belong to devices (`hal::Hal::DEVICE_IO_PORTS`).
    PortOutOfRange {
        /// The first port.
        port: u64,
    },
    /// Mapping a memory BAR failed.
    Map(HalError),
}

impl From<PciError> for PciTransportError {
    fn from(e: PciError) -> Self {
        PciTransportError::Pci(e)
    }
}

impl fmt::Display for PciTransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PciTransportError::NotVirtio {
                vendor_id,
                device_id,
            } => write!(f, "{vendor_id:04x}:{device_id:04x} is not a virtio device"),
            PciTransportError::NoDeviceType => {
                write!(f, "transitional device with subsystem id 0")
            }
            PciTransportError::Pci(e) => write!(f, "{e}"),
            PciTransportError::CapabilityTooShort { cfg_type, cap_len } => write!(
                f,
                "{} capability is only {cap_len} bytes",
                cfg_type_name(cfg_type)
            ),
            PciTransportError::BarMissing { cfg_type, bar } => write!(
                f,
                "{} structure is in BAR{bar}, which has no address",
                cfg_type_name(cfg_type)
            ),
            PciTransportError::OutsideBar {
                cfg_type,
                bar,
                offset,
                length,
                bar_size,
            } => write!(
                f,
                "{} structure {offset:#x}+{length:#x} lies outside BAR{bar} ({bar_size:#x} bytes)",
                cfg_type_name(cfg_type)
            ),
            PciTransportError::StructureTooSmall {
                cfg_type,
                length,
                minimum,
            } => write!(
                f,
                "{} structure is {length} bytes, at least {minimum} needed",
                cfg_type_name(cfg_type)
            ),
            PciTransportError::InvalidNotifyMultiplier(m) => {
                write!(
                    f,
                    "notify_off_multiplier {m} is not 0 or an even power of two"
                )
            }
            PciTransportError::MissingStructure { cfg_type } => {
                write!(f, "no {} capability", cfg_type_name(cfg_type))
            }
            PciTransportError::NoLegacyBar => write!(f, "BAR0 is not a usable legacy I/O BAR"),
            PciTransportError::PortOutOfRange { port } => {
                write!(
                    f,
                    "I/O structure at port {port:#x} outside the device port window"
                )
            }
            PciTransportError::Map(e) => write!(f, "mapping a BAR: {e}"),
        }
    }
}

/// The virtio device type of a PCI function, or `None` if it is not virtio.
pub fn virtio_device_type(function: &PciFunction) -> Option<DeviceType> {
    if function.vendor_id != VIRTIO_VENDOR_ID {
        return None;
    }
    match function.device_id {
        0x1000..=0x103f if function.subsystem_id != 0 => {
            Some(DeviceType::from_id(u32::from(function.subsystem_id)))
        }
        0x1040..=0x107f => Some(DeviceType::from_id(u32::from(function.device_id - 0x1040))),
        _ => None,
    }
}

/// `true` for a transitional device id (offers the legacy interface too).
pub fn is_transitional(function: &PciFunction) -> bool {
    function.vendor_id == VIRTIO_VENDOR_ID && (0x1000..=0x103f).contains(&function.device_id)
}

/// Makes a transport for a virtio PCI function: modern if it has the
/// capabilities, legacy if it is transitional without them. Enables bus
/// mastering (and decoding) on the function.
pub fn probe<H: Hal, C: ConfigAccess + ?Sized>(
    access: &C,
    function: &PciFunction,
) -> Result<AnyTransport<H>, PciTransportError> {
    probe_with(access, function, TransportPreference::PreferModern)
}

/// [`probe`] with a choice of interface for transitional devices.
pub fn probe_with<H: Hal, C: ConfigAccess + ?Sized>(
    access: &C,
    function: &PciFunction,
    preference: TransportPreference,
) -> Result<AnyTransport<H>, PciTransportError> {
    let not_virtio = PciTransportError::NotVirtio {
        vendor_id: function.vendor_id,
        device_id: function.device_id,
    };
    if function.vendor_id != VIRTIO_VENDOR_ID || !(0x1000..=0x107f).contains(&function.device_id) {
        return Err(not_virtio);
    }
    let device_type = virtio_device_type(function).ok_or(PciTransportError::NoDeviceType)?;
    let caps = VirtioCaps::find(access, function)?;
    let transitional = is_transitional(function);

    let transport: AnyTransport<H> = match (preference, caps.has(cfg_type::COMMON), transitional) {
        (TransportPreference::ForceLegacy, _, true) | (_, false, true) => {
            let msix_enabled = msix_enabled(access, function)?;
            LegacyPciTransport::new(function, device_type, msix_enabled)?.into()
        }
        _ => ModernPciTransport::new(function, device_type, &caps)?.into(),
    };
    function.enable_bus_mastering(access)?;
    log::debug!(
        "virtio-pci {}: {} device, {} interface",
        function.address,
        device_type,
        crate::transport::Transport::kind(&transport)
    );
    Ok(transport)
}

/// Is MSI-X switched on in the function's MSI-X capability (message control bit 15)?
pub fn msix_enabled<C: ConfigAccess + ?Sized>(
    access: &C,
    function: &PciFunction,
) -> Result<bool, PciError> {
    for cap in function.capabilities(access) {
        let cap = cap?;
        if cap.id == capability_id::MSIX {
            let control = access.read16(function.address, u16::from(cap.offset) + 2)?;
            return Ok(control & 0x8000 != 0);
        }
    }
    Ok(false)
}

/// Every virtio vendor capability of the types the driver uses, in list
/// order, each parsed or with the reason it is unusable.
///
/// §4.1.4: "The device MAY offer more than one structure of any type ...
/// The order of the capabilities in the capability list specifies the order
/// of preference suggested by the device", and "The driver SHOULD use the
/// first instance of each virtio structure type they can support." So an
/// instance that is malformed (too short here, or outside its BAR, too
/// small, a bad multiplier when [`ModernPciTransport::new`] maps it) is
/// skipped and the next instance of the same type tried; only when no
/// instance of a needed type works does the probe fail, with the first
/// instance's error.
#[derive(Debug, Clone, Default)]
pub struct VirtioCaps {
    instances: Vec<(u8, Result<VirtioPciCap, PciTransportError>)>,
}

impl VirtioCaps {
    /// Walks the capability list and reads every virtio vendor capability.
    /// Errors only when the list itself cannot be walked (a loop, a bad
    /// pointer, a failed configuration access).
    pub fn find<C: ConfigAccess + ?Sized>(
        access: &C,
        function: &PciFunction,
    ) -> Result<Self, PciTransportError> {
        let mut found = VirtioCaps::default();
        for cap in function.capabilities(access) {
            let cap = cap?;
            if cap.id != capability_id::VENDOR_SPECIFIC {
                continue;
            }
            let address = function.address;
            let at = u16::from(cap.offset);
            let cap_len = access.read8(address, at + 2)?;
            let cfg_type = access.read8(address, at + 3)?;
            let bar = access.read8(address, at + 4)?;
            if bar > 5 {
                log::debug!(
                    "virtio-pci {address}: ignoring {} capability with reserved BAR {bar}",
                    cfg_type_name(cfg_type)
                );
                continue;
            }
            let needed = match cfg_type {
                cfg_type::COMMON | cfg_type::ISR | cfg_type::DEVICE => VIRTIO_CAP_LEN,
                cfg_type::NOTIFY => VIRTIO_NOTIFY_CAP_LEN,
                cfg_type::PCI_CFG => VIRTIO_PCI_CFG_CAP_LEN,
                _ => continue,
            };
            // The capability must fit in the 256 bytes of standard config space.
            if cap_len < needed || usize::from(cap.offset) + usize::from(cap_len) > 256 {
                log::debug!(
                    "virtio-pci {address}: {} capability at {:#x} is only {cap_len} bytes; trying the next instance",
                    cfg_type_name(cfg_type),
                    cap.offset
                );
                let error = PciTransportError::CapabilityTooShort { cfg_type, cap_len };
                found.instances.push((cfg_type, Err(error)));
                continue;
            }
            let notify_off_multiplier = if cfg_type == cfg_type::NOTIFY {
                access.read32(address, at + 16)?
            } else {
                0
            };
            let parsed = VirtioPciCap {
                cap_offset: cap.offset,
                cfg_type,
                bar,
                id: access.read8(address, at + 5)?,
                offset: access.read32(address, at + 8)?,
                length: access.read32(address, at + 12)?,
                notify_off_multiplier,
            };
            log::trace!(
                "virtio-pci {address}: {} structure in BAR{} at {:#x}, {:#x} bytes",
                cfg_type_name(cfg_type),
                parsed.bar,
                parsed.offset,
                parsed.length
            );
            found.instances.push((cfg_type, Ok(parsed)));
        }
        Ok(found)
    }

    /// The instances of `cfg_type`, in the device's order of preference.
    pub fn instances(
        &self,
        cfg_type: u8,
    ) -> impl Iterator<Item = &Result<VirtioPciCap, PciTransportError>> + '_ {
        self.instances
            .iter()
            .filter(move |(t, _)| *t == cfg_type)
            .map(|(_, instance)| instance)
    }

    /// `true` if the device has at least one capability of `cfg_type`
    /// (usable or not).
    pub fn has(&self, cfg_type: u8) -> bool {
        self.instances(cfg_type).next().is_some()
    }

    /// The first well-formed capability of `cfg_type`.
    pub fn first(&self, cfg_type: u8) -> Option<VirtioPciCap> {
        self.instances(cfg_type).find_map(|i| i.ok())
    }

    /// Maps the first instance of `cfg_type` that passes `check` and
    /// [`map_structure`]; `Ok(None)` if the device has none of that type;
    /// the first instance's error if none works.
    pub(crate) fn map_first_usable<H: Hal>(
        &self,
        function: &PciFunction,
        cfg_type: u8,
        minimum: u32,
        check: impl Fn(&VirtioPciCap) -> Result<(), PciTransportError>,
    ) -> Result<Option<(VirtioPciCap, RegisterWindow<H>)>, PciTransportError> {
        let mut first_error = None;
        for instance in self.instances(cfg_type) {
            let mapped = instance.and_then(|cap| {
                check(&cap)?;
                map_structure::<H>(function, &cap, minimum).map(|window| (cap, window))
            });
            match mapped {
                Ok(found) => {
                    if let Some(skipped) = first_error {
                        log::warn!(
                            "virtio-pci {}: skipped a bad {} capability ({skipped}); using the one at {:#x} (§4.1.4)",
                            function.address,
                            cfg_type_name(cfg_type),
                            found.0.cap_offset
                        );
                    }
                    return Ok(Some(found));
                }
                Err(error) => {
                    log::debug!(
                        "virtio-pci {}: {} capability unusable ({error}); trying the next instance",
                        function.address,
                        cfg_type_name(cfg_type)
                    );
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(None), Err)
    }
}

/// Validates a capability against its BAR and maps the structure:
/// memory BARs through the Hal, I/O BARs as a port window.
pub(crate) fn map_structure<H: Hal>(
    function: &PciFunction,
    cap: &VirtioPciCap,
    minimum: u32,
) -> Result<RegisterWindow<H>, PciTransportError> {
    let bar = function.bar(cap.bar).ok_or(PciTransportError::BarMissing {
        cfg_type: cap.cfg_type,
        bar: cap.bar,
    })?;
    if !bar.contains(u64::from(cap.offset), u64::from(cap.length)) {
        return Err(PciTransportError::OutsideBar {
            cfg_type: cap.cfg_type,
            bar: cap.bar,
            offset: cap.offset,
            length: cap.length,
            bar_size: bar.size,
        });
    }
    if cap.length < minimum || cap.length == 0 {
        return Err(PciTransportError::StructureTooSmall {
            cfg_type: cap.cfg_type,
            length: cap.length,
            minimum: minimum.max(1),
        });
    }
    let start = bar.address + u64::from(cap.offset);
    if bar.is_io() {
        let ports = PortRange::device_ports(start, u64::from(cap.length))
            .map_err(|_| PciTransportError::PortOutOfRange { port: start })?;
        Ok(RegisterWindow::Ports(ports))
    } else {
        let region =
            MmioRegion::<H>::map(start, cap.length as usize).map_err(PciTransportError::Map)?;
        Ok(RegisterWindow::Memory(region))
    }
}
