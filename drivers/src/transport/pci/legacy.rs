//! The legacy virtio-pci interface (virtio 1.2 §4.1.4.8 "Legacy Interfaces:
//! A Note on PCI Device Layout", §4.1.5.1.3.1, §2.7.2).
//!
//! Before virtio 1.0 a PCI device had one register block at the start of I/O
//! BAR 0:
//!
//! ```text
//! 0x00 le32 host (device) features, bits 0-31 only   0x10 le16 queue notify
//! 0x04 le32 guest (driver) features                  0x12 u8   device status
//! 0x08 le32 queue address (page frame number)        0x13 u8   ISR status
//! 0x0c le16 queue size (read-only)                   with MSI-X enabled:
//! 0x0e le16 queue select                             0x14 le16 config MSI-X vector
//!                                                    0x16 le16 queue MSI-X vector
//! device configuration: at 0x14, or at 0x18 when MSI-X is enabled
//! ```
//!
//! What that means for a driver:
//!
//! - only 32 feature bits, and no FEATURES_OK step (§3.1.2);
//! - the queue size is the device's, not chosen ([`Transport::queue_size_is_fixed`]);
//! - a queue is one page frame number: descriptor table, available ring, then
//!   the used ring at the next 4096-byte boundary, all physically contiguous
//!   ([`RingLayout::Contiguous`] with `align: 4096`);
//! - device configuration moves by 4 bytes when MSI-X is switched on, so the
//!   interrupt code must call [`Transport::set_msix_enabled`];
//! - there is no configuration generation: fields are read byte by byte, and
//!   everything twice until two reads agree (§2.5.4).

use hal::{Hal, PortRange};

use super::PciTransportError;
use crate::irq::InterruptStatusRegister;
use crate::pci::{BarKind, PciFunction};
use crate::transport::{
    check_queue_addresses, reset_and_wait, trace_queue_setup, trace_status_write,
    ConfigConsistency, DeviceStatus, DeviceType, FieldWidth, InterruptStatus, Location,
    QueueAddresses, RegisterWindow, RingLayout, Transport, TransportError, TransportKind,
};

/// Register offsets in legacy I/O BAR 0.
pub mod regs {
    /// le32, read-only: device features 0-31.
    pub const HOST_FEATURES: usize = 0x00;
    /// le32: accepted features 0-31.
    pub const GUEST_FEATURES: usize = 0x04;
    /// le32: the selected queue's page frame number (address / 4096); 0 = inactive.
    pub const QUEUE_PFN: usize = 0x08;
    /// le16, read-only: the selected queue's size (0 = no such queue).
    pub const QUEUE_SIZE: usize = 0x0c;
    /// le16: which queue QUEUE_PFN / QUEUE_SIZE refer to.
    pub const QUEUE_SELECT: usize = 0x0e;
    /// le16: write a queue index to notify it.
    pub const QUEUE_NOTIFY: usize = 0x10;
    /// u8: device status.
    pub const DEVICE_STATUS: usize = 0x12;
    /// u8: ISR status, cleared by reading.
    pub const ISR_STATUS: usize = 0x13;
    /// le16, MSI-X only: configuration change vector.
    pub const CONFIG_MSIX_VECTOR: usize = 0x14;
    /// le16, MSI-X only: the selected queue's vector.
    pub const QUEUE_MSIX_VECTOR: usize = 0x16;
    /// Device configuration without MSI-X.
    pub const CONFIG_WITHOUT_MSIX: usize = 0x14;
    /// Device configuration with MSI-X enabled.
    pub const CONFIG_WITH_MSIX: usize = 0x18;
}

/// Legacy queues use 4096-byte pages and used-ring alignment (§2.7.2).
pub const LEGACY_QUEUE_ALIGN: u32 = 4096;
const PFN_SHIFT: u32 = 12;

/// A virtio device driven through the legacy I/O register block.
pub struct LegacyPciTransport<H: Hal> {
    location: Location,
    device_type: DeviceType,
    io: RegisterWindow<H>,
    /// The ISR status byte inside `io`, for [`Self::interrupt_status`].
    isr: RegisterWindow<H>,
    msix_enabled: bool,
}

impl<H: Hal> LegacyPciTransport<H> {
    /// Uses BAR 0 of `function`, which must be an I/O BAR holding at least the
    /// 20-byte register block. `msix_enabled` is the MSI-X capability's
    /// current enable bit.
    pub fn new(
        function: &PciFunction,
        device_type: DeviceType,
        msix_enabled: bool,
    ) -> Result<Self, PciTransportError> {
        let bar = function.bar(0).ok_or(PciTransportError::NoLegacyBar)?;
        if bar.kind != BarKind::Io || bar.size < regs::CONFIG_WITHOUT_MSIX as u64 {
            return Err(PciTransportError::NoLegacyBar);
        }
        let ports = PortRange::device_ports(bar.address, bar.size)
            .map_err(|_| PciTransportError::PortOutOfRange { port: bar.address })?;
        let io = RegisterWindow::Ports(ports);
        let isr = io
            .subwindow(regs::ISR_STATUS, 1)
            .ok_or(PciTransportError::NoLegacyBar)?;
        Ok(Self {
            location: Location::Pci(function.address),
            device_type,
            io,
            isr,
            msix_enabled,
        })
    }

    /// The ISR status byte (offset 0x13, §4.1.4.8), for an interrupt
    /// handler: a copy of this transport's own window onto it.
    pub fn interrupt_status(&self) -> InterruptStatusRegister<H> {
        InterruptStatusRegister::Pci(self.isr.clone())
    }

    /// Where device configuration starts in the register block right now.
    pub fn config_offset(&self) -> usize {
        if self.msix_enabled {
            regs::CONFIG_WITH_MSIX
        } else {
            regs::CONFIG_WITHOUT_MSIX
        }
    }

    fn select_queue(&self, queue: u16) -> Result<(), TransportError> {
        if self.io.write16(regs::QUEUE_SELECT, queue) {
            Ok(())
        } else {
            Err(TransportError::RegisterAccess {
                what: "queue select",
            })
        }
    }

    fn read_queue_size(&self) -> Result<u16, TransportError> {
        self.io
            .read16(regs::QUEUE_SIZE)
            .ok_or(TransportError::RegisterAccess { what: "queue size" })
    }

    fn config_byte_offset(
        &self,
        offset: usize,
        width: FieldWidth,
    ) -> Result<usize, TransportError> {
        let size = self.config_space_size();
        crate::transport::check_config_range(offset, width.bytes(), size)?;
        Ok(self.config_offset() + offset)
    }

    fn check_vector(&self, register: usize, vector: u16) -> Result<(), TransportError> {
        self.io.write16(register, vector);
        let read_back = self.io.read16(register).unwrap_or(0xffff);
        if read_back == vector {
            Ok(())
        } else {
            Err(TransportError::MsixVectorRejected {
                requested: vector,
                read_back,
            })
        }
    }
}

impl<H: Hal> Transport for LegacyPciTransport<H> {
    fn kind(&self) -> TransportKind {
        TransportKind::PciLegacy
    }

    fn device_type(&self) -> DeviceType {
        self.device_type
    }

    fn location(&self) -> Location {
        self.location
    }

    fn status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_retain(self.io.read8(regs::DEVICE_STATUS).unwrap_or(0xff))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        trace_status_write(self.location, status);
        self.io.write8(regs::DEVICE_STATUS, status.bits());
    }

    fn reset(&mut self) -> Result<(), TransportError> {
        let io = self.io.clone();
        reset_and_wait::<H>(
            self.location,
            || {
                io.write8(regs::DEVICE_STATUS, 0);
            },
            || io.read8(regs::DEVICE_STATUS).unwrap_or(0xff),
        )
    }

    fn device_features(&mut self) -> u64 {
        u64::from(self.io.read32(regs::HOST_FEATURES).unwrap_or(0))
    }

    fn set_driver_features(&mut self, features: u64) {
        if features >> 32 != 0 {
            log::warn!(
                "{}: legacy interface cannot accept feature bits above 31 ({features:#x}); dropped",
                self.location
            );
        }
        self.io.write32(regs::GUEST_FEATURES, features as u32);
    }

    fn ring_layout(&self) -> RingLayout {
        RingLayout::Contiguous {
            align: LEGACY_QUEUE_ALIGN,
        }
    }

    fn max_queue_size(&mut self, queue: u16) -> Result<u16, TransportError> {
        self.select_queue(queue)?;
        self.read_queue_size()
    }

    fn queue_size_is_fixed(&self) -> bool {
        true
    }

    fn setup_queue(&mut self, queue: u16, addrs: &QueueAddresses) -> Result<(), TransportError> {
        check_queue_addresses(self.ring_layout(), addrs)?;
        let pfn = addrs.desc >> PFN_SHIFT;
        let pfn = u32::try_from(pfn).map_err(|_| TransportError::AddressTooHigh {
            what: "legacy queue",
            addr: addrs.desc,
        })?;
        self.select_queue(queue)?;
        let required = self.read_queue_size()?;
        if required == 0 {
            return Err(TransportError::NoSuchQueue(queue));
        }
        if addrs.size != required {
            return Err(TransportError::FixedQueueSize {
                queue,
                requested: addrs.size,
                required,
            });
        }
        if self.io.read32(regs::QUEUE_PFN) != Some(0) {
            return Err(TransportError::QueueAlreadyActive(queue));
        }
        trace_queue_setup(self.location, queue, addrs);
        log::trace!(
            "{}: queue {queue}: page frame number {pfn:#x}",
            self.location
        );
        if self.io.write32(regs::QUEUE_PFN, pfn) {
            Ok(())
        } else {
            Err(TransportError::RegisterAccess { what: "queue PFN" })
        }
    }

    #[inline]
    fn notify(&self, queue: u16) {
        self.io.write16(regs::QUEUE_NOTIFY, queue);
    }

    fn config_generation(&mut self) -> u32 {
        0
    }

    fn config_consistency(&self) -> ConfigConsistency {
        ConfigConsistency::ReadTwice
    }

    fn config_space_size(&self) -> usize {
        self.io.len().saturating_sub(self.config_offset())
    }

    fn read_config_field(
        &mut self,
        offset: usize,
        width: FieldWidth,
    ) -> Result<u32, TransportError> {
        let base = self.config_byte_offset(offset, width)?;
        let mut value = 0u32;
        for i in 0..width.bytes() {
            let byte = self
                .io
                .read8(base + i)
                .ok_or(TransportError::RegisterAccess {
                    what: "device config",
                })?;
            value |= u32::from(byte) << (8 * i);
        }
        Ok(value)
    }

    fn write_config_field(
        &mut self,
        offset: usize,
        width: FieldWidth,
        value: u32,
    ) -> Result<(), TransportError> {
        let base = self.config_byte_offset(offset, width)?;
        for i in 0..width.bytes() {
            if !self.io.write8(base + i, (value >> (8 * i)) as u8) {
                return Err(TransportError::RegisterAccess {
                    what: "device config",
                });
            }
        }
        Ok(())
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        // Reading the ISR byte clears it (§4.1.4.5).
        self.interrupt_status().read_and_acknowledge()
    }

    fn set_config_msix_vector(&mut self, vector: u16) -> Result<(), TransportError> {
        if !self.msix_enabled {
            return Err(TransportError::Unsupported(
                "MSI-X vectors while MSI-X is disabled",
            ));
        }
        self.check_vector(regs::CONFIG_MSIX_VECTOR, vector)
    }

    fn set_queue_msix_vector(&mut self, queue: u16, vector: u16) -> Result<(), TransportError> {
        if !self.msix_enabled {
            return Err(TransportError::Unsupported(
                "MSI-X vectors while MSI-X is disabled",
            ));
        }
        self.select_queue(queue)?;
        self.check_vector(regs::QUEUE_MSIX_VECTOR, vector)
    }

    fn set_msix_enabled(&mut self, enabled: bool) {
        if enabled != self.msix_enabled {
            log::trace!(
                "{}: MSI-X {}: device config now at offset {}",
                self.location,
                if enabled { "enabled" } else { "disabled" },
                if enabled {
                    regs::CONFIG_WITH_MSIX
                } else {
                    regs::CONFIG_WITHOUT_MSIX
                }
            );
        }
        self.msix_enabled = enabled;
    }
}
