//! Handing one of our PCI functions to the peer's modern virtio-pci
//! transport (virtio 1.2 §4.1.4: the capabilities that locate common,
//! notify, ISR and device configuration inside the BARs).
//!
//! The kernel has already enumerated the bus and placed every BAR
//! (`crate::virtio::pci`), so the peer's own enumeration (`PciRoot`) is not
//! used for discovery: it only gets a [`KernelCam`], a
//! `ConfigurationAccess` that forwards each dword to the kernel's
//! configuration mechanism (ECAM or ports 0xCF8/0xCFC), under the same lock
//! the kernel uses, so accesses never interleave. `virtio_drivers`'
//! `PciTransport::new` then walks the vendor capabilities itself.
//!
//! Order matters: our driver must have reset the device (status 0, §3.1.1
//! step 1) before [`take_over`] runs, so that no request of ours is still
//! in the device's hands when the peer writes its own rings.

use alloc::vec::Vec;
use core::fmt;

use drivers::pci::{ConfigAccess, ConfigWidth, PciAddress};
use drivers::transport::Location;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{PciTransport, VirtioPciError};

use super::hal::PeerHal;

/// Why a device could not be handed to the peer stack.
#[derive(Debug)]
pub enum PeerError {
    /// The peer only gets PCI devices here (its MMIO transport is not wired up).
    NotPci(Location),
    /// The kernel's enumeration has no such function (or no PCI bus).
    NoSuchFunction(Location),
    /// A BAR could not be mapped.
    Map(hal::HalError),
    /// The peer's transport refused the function.
    Transport(VirtioPciError),
    /// The peer's device driver failed.
    Device(virtio_drivers::Error),
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerError::NotPci(location) => write!(f, "{location} is not a PCI function"),
            PeerError::NoSuchFunction(location) => write!(f, "no PCI function at {location}"),
            PeerError::Map(error) => write!(f, "mapping a BAR: {error}"),
            PeerError::Transport(error) => write!(f, "virtio-drivers PciTransport: {error}"),
            PeerError::Device(error) => write!(f, "virtio-drivers device: {error}"),
        }
    }
}

/// The kernel's PCI configuration access, as the peer crate wants it.
/// Stateless: every access takes the kernel's PCI bus lock.
pub struct KernelCam {
    segment: u16,
}

impl KernelCam {
    fn address(&self, function: DeviceFunction) -> PciAddress {
        PciAddress {
            segment: self.segment,
            bus: function.bus,
            device: function.device,
            function: function.function,
        }
    }
}

impl ConfigurationAccess for KernelCam {
    fn read_word(&self, function: DeviceFunction, register_offset: u8) -> u32 {
        let address = self.address(function);
        match crate::virtio::pci::bus().as_ref() {
            Some(bus) => bus
                .config
                .read(address, u16::from(register_offset), ConfigWidth::Dword)
                // What a missing function reads as (PCI 3.0 §6.1).
                .unwrap_or(u32::MAX),
            None => u32::MAX,
        }
    }

    fn write_word(&mut self, function: DeviceFunction, register_offset: u8, data: u32) {
        let address = self.address(function);
        if let Some(bus) = crate::virtio::pci::bus().as_ref() {
            if let Err(error) = bus.config.write(
                address,
                u16::from(register_offset),
                ConfigWidth::Dword,
                data,
            ) {
                log::warn!("peer: config write {address} +{register_offset:#x}: {error}");
            }
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        KernelCam {
            segment: self.segment,
        }
    }
}

/// Makes the peer's `PciTransport` for the (already reset) PCI function at
/// `location`: maps its memory BARs, then lets the peer parse its
/// capabilities.
pub fn take_over(location: Location) -> Result<PciTransport, PeerError> {
    let Location::Pci(address) = location else {
        return Err(PeerError::NotPci(location));
    };
    let bars: Vec<(u64, u64)> = {
        let bus = crate::virtio::pci::bus();
        let function = bus
            .as_ref()
            .and_then(|bus| bus.functions.iter().find(|f| f.address == address))
            .ok_or(PeerError::NoSuchFunction(location))?;
        function
            .bars
            .iter()
            .flatten()
            .filter(|bar| !bar.is_io() && bar.address != 0)
            .map(|bar| (bar.address, bar.size))
            .collect()
    };
    for (base, size) in bars {
        // `PeerHal::mmio_phys_to_virt` cannot fail; mapping here can.
        let size =
            usize::try_from(size).map_err(|_| PeerError::Map(hal::HalError::InvalidArgument))?;
        crate::memory::map_mmio(base, size).map_err(PeerError::Map)?;
    }
    let mut root = PciRoot::new(KernelCam {
        segment: address.segment,
    });
    let function = DeviceFunction {
        bus: address.bus,
        device: address.device,
        function: address.function,
    };
    PciTransport::new::<PeerHal, _>(&mut root, function).map_err(PeerError::Transport)
}
