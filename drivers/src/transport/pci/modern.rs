//! The modern virtio-pci interface (virtio 1.2 §4.1.4, §4.1.5).
//!
//! Four structures, each found through a vendor capability and mapped on its own:
//!
//! - **common configuration** (§4.1.4.3): features, status, and a window onto
//!   one queue at a time, chosen with `queue_select`:
//!
//! ```text
//! 0x00 le32 device_feature_select   0x16 le16 queue_select
//! 0x04 le32 device_feature          0x18 le16 queue_size
//! 0x08 le32 driver_feature_select   0x1a le16 queue_msix_vector
//! 0x0c le32 driver_feature          0x1c le16 queue_enable
//! 0x10 le16 config_msix_vector      0x1e le16 queue_notify_off
//! 0x12 le16 num_queues              0x20 le64 queue_desc
//! 0x14 u8   device_status           0x28 le64 queue_driver
//! 0x15 u8   config_generation       0x30 le64 queue_device
//! ```
//!
//! - **notifications** (§4.1.4.4): queue `q` is notified by writing its index
//!   at `notify_base + queue_notify_off(q) * notify_off_multiplier`. That
//!   address is computed once in `setup_queue`, so `notify` is one write.
//! - **ISR status** (§4.1.4.5): one byte, cleared by reading it.
//! - **device configuration** (§4.1.4.6): the device type's own fields.
//!
//! 64-bit fields are written as two 32-bit halves, low first (§4.1.3.1).

use alloc::vec::Vec;

use hal::Hal;

use super::{
    cfg_type, PciTransportError, VirtioCaps, VirtioPciCap, MIN_COMMON_LEN, MIN_ISR_LEN,
    MIN_NOTIFY_LEN,
};
use crate::irq::InterruptStatusRegister;
use crate::pci::PciFunction;
use crate::transport::{
    check_queue_addresses, reset_and_wait, trace_queue_setup, trace_status_write,
    ConfigConsistency, DeviceStatus, DeviceType, FieldWidth, InterruptStatus, Location,
    QueueAddresses, RegisterWindow, RingLayout, Transport, TransportError, TransportKind,
};

/// Offsets in the common configuration structure.
pub mod common {
    /// le32: which 32 feature bits `DEVICE_FEATURE` shows (0: 0-31, 1: 32-63).
    pub const DEVICE_FEATURE_SELECT: usize = 0x00;
    /// le32, read-only: the selected device feature bits.
    pub const DEVICE_FEATURE: usize = 0x04;
    /// le32: which 32 bits `DRIVER_FEATURE` writes.
    pub const DRIVER_FEATURE_SELECT: usize = 0x08;
    /// le32: the selected driver (accepted) feature bits.
    pub const DRIVER_FEATURE: usize = 0x0c;
    /// le16: MSI-X vector for configuration changes.
    pub const CONFIG_MSIX_VECTOR: usize = 0x10;
    /// le16, read-only: number of queues.
    pub const NUM_QUEUES: usize = 0x12;
    /// u8: the device status.
    pub const DEVICE_STATUS: usize = 0x14;
    /// u8, read-only: the configuration generation.
    pub const CONFIG_GENERATION: usize = 0x15;
    /// le16: the queue the `QUEUE_*` fields refer to.
    pub const QUEUE_SELECT: usize = 0x16;
    /// le16: queue size (reads the maximum after reset; the driver may lower it).
    pub const QUEUE_SIZE: usize = 0x18;
    /// le16: MSI-X vector for this queue.
    pub const QUEUE_MSIX_VECTOR: usize = 0x1a;
    /// le16: 1 = the queue is live.
    pub const QUEUE_ENABLE: usize = 0x1c;
    /// le16, read-only: this queue's notify offset, in multiplier units.
    pub const QUEUE_NOTIFY_OFF: usize = 0x1e;
    /// le64: descriptor area.
    pub const QUEUE_DESC: usize = 0x20;
    /// le64: driver (available) area.
    pub const QUEUE_DRIVER: usize = 0x28;
    /// le64: device (used) area.
    pub const QUEUE_DEVICE: usize = 0x30;
}

/// A virtio device driven through the modern PCI capabilities.
pub struct ModernPciTransport<H: Hal> {
    location: Location,
    device_type: DeviceType,
    common: RegisterWindow<H>,
    notify: RegisterWindow<H>,
    notify_off_multiplier: u32,
    isr: RegisterWindow<H>,
    device_config: Option<RegisterWindow<H>>,
    /// Per queue: the 2-byte window to write its index to, computed at setup.
    queue_notify: Vec<Option<RegisterWindow<H>>>,
}

impl<H: Hal> ModernPciTransport<H> {
    /// Validates and maps the structures `caps` describe. Common, notify and
    /// ISR are required; device configuration is optional (some device types
    /// have none).
    pub fn new(
        function: &PciFunction,
        device_type: DeviceType,
        caps: &VirtioCaps,
    ) -> Result<Self, PciTransportError> {
        let missing = |cfg_type| PciTransportError::MissingStructure { cfg_type };
        let no_check = |_: &VirtioPciCap| Ok(());
        // §4.1.4: the first instance of each type the driver can use; a
        // malformed one is skipped for the next (`VirtioCaps`).
        let (_, common) = caps
            .map_first_usable::<H>(function, cfg_type::COMMON, MIN_COMMON_LEN, no_check)?
            .ok_or(missing(cfg_type::COMMON))?;
        let (notify_cap, notify) = caps
            .map_first_usable::<H>(function, cfg_type::NOTIFY, MIN_NOTIFY_LEN, |cap| {
                // §4.1.4.4: 0, or an even power of two.
                let multiplier = cap.notify_off_multiplier;
                if multiplier != 0 && !(multiplier.is_power_of_two() && multiplier >= 2) {
                    return Err(PciTransportError::InvalidNotifyMultiplier(multiplier));
                }
                Ok(())
            })?
            .ok_or(missing(cfg_type::NOTIFY))?;
        let multiplier = notify_cap.notify_off_multiplier;
        let (_, isr) = caps
            .map_first_usable::<H>(function, cfg_type::ISR, MIN_ISR_LEN, no_check)?
            .ok_or(missing(cfg_type::ISR))?;
        let device_config = caps
            .map_first_usable::<H>(function, cfg_type::DEVICE, 1, no_check)?
            .map(|(_, window)| window);
        if let Some(cap) = caps.first(cfg_type::PCI_CFG) {
            // Read but not used: every structure is reachable directly.
            log::trace!(
                "virtio-pci {}: PCI_CFG access capability at {:#x}",
                function.address,
                cap.cap_offset
            );
        }
        Ok(Self {
            location: Location::Pci(function.address),
            device_type,
            common,
            notify,
            notify_off_multiplier: multiplier,
            isr,
            device_config,
            queue_notify: Vec::new(),
        })
    }

    /// The number of queues the device has (`num_queues`).
    pub fn num_queues(&self) -> u16 {
        self.common.read16(common::NUM_QUEUES).unwrap_or(0)
    }

    /// `notify_off_multiplier` from the notify capability.
    pub fn notify_off_multiplier(&self) -> u32 {
        self.notify_off_multiplier
    }

    /// The ISR byte (§4.1.4.5), for an interrupt handler: a copy of this
    /// transport's own mapping of the ISR structure.
    pub fn interrupt_status(&self) -> InterruptStatusRegister<H> {
        InterruptStatusRegister::Pci(self.isr.clone())
    }

    fn select_queue(&self, queue: u16) -> Result<(), TransportError> {
        if self.common.write16(common::QUEUE_SELECT, queue) {
            Ok(())
        } else {
            Err(TransportError::RegisterAccess {
                what: "queue_select",
            })
        }
    }

    fn write64(&self, offset: usize, value: u64) -> bool {
        self.common.write32(offset, value as u32)
            && self.common.write32(offset + 4, (value >> 32) as u32)
    }

    fn device_config(&self) -> Result<&RegisterWindow<H>, TransportError> {
        self.device_config
            .as_ref()
            .ok_or(TransportError::ConfigOutOfRange {
                offset: 0,
                len: 1,
                size: 0,
            })
    }
}

impl<H: Hal> Transport for ModernPciTransport<H> {
    fn kind(&self) -> TransportKind {
        TransportKind::PciModern
    }

    fn device_type(&self) -> DeviceType {
        self.device_type
    }

    fn location(&self) -> Location {
        self.location
    }

    fn status(&self) -> DeviceStatus {
        let raw = self.common.read8(common::DEVICE_STATUS).unwrap_or(0xff);
        DeviceStatus::from_bits_retain(raw)
    }

    fn set_status(&mut self, status: DeviceStatus) {
        trace_status_write(self.location, status);
        self.common.write8(common::DEVICE_STATUS, status.bits());
    }

    fn reset(&mut self) -> Result<(), TransportError> {
        let common = self.common.clone();
        let result = reset_and_wait::<H>(
            self.location,
            || {
                common.write8(common::DEVICE_STATUS, 0);
            },
            || common.read8(common::DEVICE_STATUS).unwrap_or(0xff),
        );
        self.queue_notify.clear();
        result
    }

    fn device_features(&mut self) -> u64 {
        let mut features = 0u64;
        for half in 0..2u32 {
            self.common.write32(common::DEVICE_FEATURE_SELECT, half);
            let bits = self.common.read32(common::DEVICE_FEATURE).unwrap_or(0);
            features |= u64::from(bits) << (32 * half);
        }
        features
    }

    fn set_driver_features(&mut self, features: u64) {
        for half in 0..2u32 {
            self.common.write32(common::DRIVER_FEATURE_SELECT, half);
            self.common
                .write32(common::DRIVER_FEATURE, (features >> (32 * half)) as u32);
        }
    }

    fn ring_layout(&self) -> RingLayout {
        RingLayout::Separate
    }

    fn max_queue_size(&mut self, queue: u16) -> Result<u16, TransportError> {
        self.select_queue(queue)?;
        self.common
            .read16(common::QUEUE_SIZE)
            .ok_or(TransportError::RegisterAccess { what: "queue_size" })
    }

    fn queue_size_is_fixed(&self) -> bool {
        false
    }

    fn setup_queue(&mut self, queue: u16, addrs: &QueueAddresses) -> Result<(), TransportError> {
        check_queue_addresses(RingLayout::Separate, addrs)?;
        self.select_queue(queue)?;
        let max = self
            .common
            .read16(common::QUEUE_SIZE)
            .ok_or(TransportError::RegisterAccess { what: "queue_size" })?;
        if max == 0 {
            return Err(TransportError::NoSuchQueue(queue));
        }
        if addrs.size == 0 || addrs.size > max {
            return Err(TransportError::InvalidQueueSize {
                queue,
                requested: addrs.size,
                max,
            });
        }
        if self.common.read16(common::QUEUE_ENABLE) != Some(0) {
            return Err(TransportError::QueueAlreadyActive(queue));
        }
        trace_queue_setup(self.location, queue, addrs);
        let written = self.common.write16(common::QUEUE_SIZE, addrs.size)
            && self.write64(common::QUEUE_DESC, addrs.desc)
            && self.write64(common::QUEUE_DRIVER, addrs.driver)
            && self.write64(common::QUEUE_DEVICE, addrs.device);
        if !written {
            return Err(TransportError::RegisterAccess {
                what: "queue addresses",
            });
        }
        let notify_off =
            self.common
                .read16(common::QUEUE_NOTIFY_OFF)
                .ok_or(TransportError::RegisterAccess {
                    what: "queue_notify_off",
                })?;
        let offset = u64::from(notify_off) * u64::from(self.notify_off_multiplier);
        let target = usize::try_from(offset)
            .ok()
            .and_then(|at| self.notify.subwindow(at, 2))
            .ok_or(TransportError::NotifyOutOfRange {
                queue,
                offset,
                len: self.notify.len() as u64,
            })?;
        log::trace!(
            "{}: queue {queue}: notify at notify structure + {offset:#x} (queue_notify_off {notify_off} x multiplier {})",
            self.location,
            self.notify_off_multiplier
        );
        if !self.common.write16(common::QUEUE_ENABLE, 1) {
            return Err(TransportError::RegisterAccess {
                what: "queue_enable",
            });
        }
        let index = usize::from(queue);
        if self.queue_notify.len() <= index {
            self.queue_notify.resize(index + 1, None);
        }
        self.queue_notify[index] = Some(target);
        Ok(())
    }

    #[inline]
    fn notify(&self, queue: u16) {
        match self.queue_notify.get(usize::from(queue)) {
            Some(Some(target)) => {
                target.write16(0, queue);
            }
            _ => log::warn!(
                "{}: notify for queue {queue}, which is not set up",
                self.location
            ),
        }
    }

    fn config_generation(&mut self) -> u32 {
        u32::from(self.common.read8(common::CONFIG_GENERATION).unwrap_or(0))
    }

    fn config_consistency(&self) -> ConfigConsistency {
        ConfigConsistency::Generation
    }

    fn config_space_size(&self) -> usize {
        self.device_config.as_ref().map_or(0, |w| w.len())
    }

    fn read_config_field(
        &mut self,
        offset: usize,
        width: FieldWidth,
    ) -> Result<u32, TransportError> {
        let window = self.device_config()?;
        let value = match width {
            FieldWidth::U8 => window.read8(offset).map(u32::from),
            FieldWidth::U16 => window.read16(offset).map(u32::from),
            FieldWidth::U32 => window.read32(offset),
        };
        value.ok_or(TransportError::ConfigOutOfRange {
            offset,
            len: width.bytes(),
            size: window.len(),
        })
    }

    fn write_config_field(
        &mut self,
        offset: usize,
        width: FieldWidth,
        value: u32,
    ) -> Result<(), TransportError> {
        let window = self.device_config()?;
        let written = match width {
            FieldWidth::U8 => window.write8(offset, value as u8),
            FieldWidth::U16 => window.write16(offset, value as u16),
            FieldWidth::U32 => window.write32(offset, value),
        };
        if written {
            Ok(())
        } else {
            Err(TransportError::ConfigOutOfRange {
                offset,
                len: width.bytes(),
                size: window.len(),
            })
        }
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        // Reading the ISR byte clears it (§4.1.4.5).
        self.interrupt_status().read_and_acknowledge()
    }

    fn set_config_msix_vector(&mut self, vector: u16) -> Result<(), TransportError> {
        self.common.write16(common::CONFIG_MSIX_VECTOR, vector);
        let read_back = self
            .common
            .read16(common::CONFIG_MSIX_VECTOR)
            .unwrap_or(0xffff);
        if read_back == vector {
            Ok(())
        } else {
            Err(TransportError::MsixVectorRejected {
                requested: vector,
                read_back,
            })
        }
    }

    fn set_queue_msix_vector(&mut self, queue: u16, vector: u16) -> Result<(), TransportError> {
        self.select_queue(queue)?;
        self.common.write16(common::QUEUE_MSIX_VECTOR, vector);
        let read_back = self
            .common
            .read16(common::QUEUE_MSIX_VECTOR)
            .unwrap_or(0xffff);
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
