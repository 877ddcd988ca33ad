//! # virtio over MMIO (virtio 1.2 §4.2)
//!
//! A virtio-mmio device is a window of 32-bit registers (QEMU's `microvm`
//! uses 512-byte slots from 0xfeb00000), with no bus to discover it: the
//! kernel learns the address from the command line, from ACPI, or by probing
//! known slots (see [`crate::mmio_discovery`]).
//!
//! ```text
//! 0x000 MagicValue "virt"      0x030 QueueSel            0x070 Status
//! 0x004 Version (1 or 2)       0x034 QueueNumMax         0x080 QueueDescLow/High    (v2)
//! 0x008 DeviceID (0 = empty)   0x038 QueueNum            0x090 QueueDriverLow/High  (v2)
//! 0x00c VendorID               0x03c QueueAlign     (v1) 0x0a0 QueueDeviceLow/High  (v2)
//! 0x010 DeviceFeatures         0x040 QueuePFN       (v1) 0x0fc ConfigGeneration     (v2)
//! 0x014 DeviceFeaturesSel      0x044 QueueReady     (v2) 0x100 device configuration
//! 0x020 DriverFeatures         0x050 QueueNotify
//! 0x024 DriverFeaturesSel      0x060 InterruptStatus
//! 0x028 GuestPageSize     (v1) 0x064 InterruptACK
//! ```
//!
//! **Version 1** is the legacy interface (§4.2.4): the driver tells the device
//! its page size (GuestPageSize) and gives each queue as one page frame
//! number (QueuePFN) with the used ring at the next multiple of QueueAlign
//! ([`RingLayout::Contiguous`]); no FEATURES_OK, no generation counter.
//! **Version 2** takes three 64-bit addresses per queue and a QueueReady bit.
//! QEMU's virtio-mmio is version 1 unless `force-legacy=false`.

use hal::{Hal, HalError, MmioRegion};

use crate::irq::InterruptStatusRegister;
use crate::transport::{
    check_queue_addresses, reset_and_wait, trace_queue_setup, trace_status_write,
    ConfigConsistency, DeviceStatus, DeviceType, FieldWidth, InterruptStatus, Location,
    QueueAddresses, RingLayout, Transport, TransportError, TransportKind,
};

/// Register offsets (§4.2.2, legacy §4.2.4).
pub mod regs {
    /// "virt" in little endian.
    pub const MAGIC_VALUE: usize = 0x000;
    /// 1 (legacy) or 2.
    pub const VERSION: usize = 0x004;
    /// Virtio device type; 0 = no device in this slot.
    pub const DEVICE_ID: usize = 0x008;
    /// Subsystem vendor id.
    pub const VENDOR_ID: usize = 0x00c;
    /// The 32 feature bits chosen by DEVICE_FEATURES_SEL.
    pub const DEVICE_FEATURES: usize = 0x010;
    /// Which 32 feature bits DEVICE_FEATURES shows.
    pub const DEVICE_FEATURES_SEL: usize = 0x014;
    /// The 32 accepted feature bits chosen by DRIVER_FEATURES_SEL.
    pub const DRIVER_FEATURES: usize = 0x020;
    /// Which 32 bits DRIVER_FEATURES writes.
    pub const DRIVER_FEATURES_SEL: usize = 0x024;
    /// v1: the guest page size in bytes (the PFN unit).
    pub const GUEST_PAGE_SIZE: usize = 0x028;
    /// The queue the QUEUE_* registers refer to.
    pub const QUEUE_SEL: usize = 0x030;
    /// Largest size of the selected queue; 0 = no such queue.
    pub const QUEUE_NUM_MAX: usize = 0x034;
    /// The size the driver chose.
    pub const QUEUE_NUM: usize = 0x038;
    /// v1: used ring alignment in bytes.
    pub const QUEUE_ALIGN: usize = 0x03c;
    /// v1: queue page frame number; 0 = inactive.
    pub const QUEUE_PFN: usize = 0x040;
    /// v2: 1 = the queue is live.
    pub const QUEUE_READY: usize = 0x044;
    /// Write a queue index to notify it.
    pub const QUEUE_NOTIFY: usize = 0x050;
    /// Why the device interrupted (bit 0 queue, bit 1 config).
    pub const INTERRUPT_STATUS: usize = 0x060;
    /// Write the handled InterruptStatus bits back here.
    pub const INTERRUPT_ACK: usize = 0x064;
    /// Device status.
    pub const STATUS: usize = 0x070;
    /// v2: descriptor area, low 32 bits.
    pub const QUEUE_DESC_LOW: usize = 0x080;
    /// v2: descriptor area, high 32 bits.
    pub const QUEUE_DESC_HIGH: usize = 0x084;
    /// v2: driver area, low 32 bits.
    pub const QUEUE_DRIVER_LOW: usize = 0x090;
    /// v2: driver area, high 32 bits.
    pub const QUEUE_DRIVER_HIGH: usize = 0x094;
    /// v2: device area, low 32 bits.
    pub const QUEUE_DEVICE_LOW: usize = 0x0a0;
    /// v2: device area, high 32 bits.
    pub const QUEUE_DEVICE_HIGH: usize = 0x0a4;
    /// v2: configuration generation.
    pub const CONFIG_GENERATION: usize = 0x0fc;
    /// Device configuration starts here.
    pub const CONFIG: usize = 0x100;
}

/// "virt" read as a little-endian u32.
pub const MAGIC: u32 = 0x7472_6976;
/// The page size and used-ring alignment this driver uses with version 1.
pub const LEGACY_PAGE_SIZE: u32 = 4096;

/// Why a virtio-mmio window could not become a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioError {
    /// Mapping the window failed.
    Map(HalError),
    /// The window is smaller than the 0x100-byte register block.
    TooSmall {
        /// Its size.
        size: usize,
    },
    /// MagicValue is not "virt": nothing (or something else) is there.
    BadMagic(u32),
    /// A version other than 1 or 2.
    UnsupportedVersion(u32),
    /// DeviceID 0: a transport slot with no device behind it.
    EmptySlot,
}

impl core::fmt::Display for MmioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            MmioError::Map(e) => write!(f, "mapping: {e}"),
            MmioError::TooSmall { size } => write!(f, "window of {size:#x} bytes is too small"),
            MmioError::BadMagic(m) => write!(f, "magic {m:#010x} is not \"virt\""),
            MmioError::UnsupportedVersion(v) => write!(f, "unsupported virtio-mmio version {v}"),
            MmioError::EmptySlot => write!(f, "empty slot (device id 0)"),
        }
    }
}

/// A virtio device driven through a virtio-mmio register window.
pub struct MmioTransport<H: Hal> {
    regs: MmioRegion<H>,
    base: u64,
    version: u32,
    device_type: DeviceType,
    vendor_id: u32,
}

impl<H: Hal> core::fmt::Debug for MmioTransport<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "MmioTransport(v{} {} at {:#x})",
            self.version, self.device_type, self.base
        )
    }
}

impl<H: Hal> MmioTransport<H> {
    /// Maps `size` bytes at `phys_base` and checks that a virtio device is
    /// there: magic "virt", version 1 or 2, a device id other than 0.
    pub fn new(phys_base: u64, size: usize) -> Result<Self, MmioError> {
        if size < regs::CONFIG {
            return Err(MmioError::TooSmall { size });
        }
        let regs = MmioRegion::<H>::map(phys_base, size).map_err(MmioError::Map)?;
        Self::from_region(regs, phys_base)
    }

    /// Like [`MmioTransport::new`] for an already mapped window.
    pub fn from_region(regs: MmioRegion<H>, phys_base: u64) -> Result<Self, MmioError> {
        if regs.len() < regs::CONFIG {
            return Err(MmioError::TooSmall { size: regs.len() });
        }
        let magic = regs.read::<u32>(regs::MAGIC_VALUE).unwrap_or(0);
        if magic != MAGIC {
            return Err(MmioError::BadMagic(magic));
        }
        let version = regs.read::<u32>(regs::VERSION).unwrap_or(0);
        if version != 1 && version != 2 {
            return Err(MmioError::UnsupportedVersion(version));
        }
        let device_id = regs.read::<u32>(regs::DEVICE_ID).unwrap_or(0);
        if device_id == 0 {
            return Err(MmioError::EmptySlot);
        }
        let vendor_id = regs.read::<u32>(regs::VENDOR_ID).unwrap_or(0);
        let device_type = DeviceType::from_id(device_id);
        log::debug!(
            "virtio-mmio@{phys_base:#x}: version {version}, {device_type} device, vendor {vendor_id:#x}"
        );
        Ok(Self {
            regs,
            base: phys_base,
            version,
            device_type,
            vendor_id,
        })
    }

    /// 1 (legacy) or 2.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// InterruptStatus and InterruptACK (§4.2.2), for an interrupt handler:
    /// a copy of this transport's own mapping of the window.
    pub fn interrupt_status(&self) -> InterruptStatusRegister<H> {
        InterruptStatusRegister::Mmio(self.regs)
    }

    /// The VendorID register.
    pub fn vendor_id(&self) -> u32 {
        self.vendor_id
    }

    fn read(&self, offset: usize) -> u32 {
        // Offsets are constants inside the checked 0x100-byte block.
        self.regs.read::<u32>(offset).unwrap_or(u32::MAX)
    }

    fn write(&self, offset: usize, value: u32) {
        self.regs.write::<u32>(offset, value);
    }

    fn location_value(&self) -> Location {
        Location::Mmio { base: self.base }
    }

    fn config_offset(&self, offset: usize, width: FieldWidth) -> Result<usize, TransportError> {
        crate::transport::check_config_range(offset, width.bytes(), self.config_space_size())?;
        Ok(regs::CONFIG + offset)
    }
}

impl<H: Hal> Transport for MmioTransport<H> {
    fn kind(&self) -> TransportKind {
        if self.version == 1 {
            TransportKind::MmioV1
        } else {
            TransportKind::MmioV2
        }
    }

    fn device_type(&self) -> DeviceType {
        self.device_type
    }

    fn location(&self) -> Location {
        self.location_value()
    }

    fn status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_retain(self.read(regs::STATUS) as u8)
    }

    fn set_status(&mut self, status: DeviceStatus) {
        trace_status_write(self.location_value(), status);
        self.write(regs::STATUS, u32::from(status.bits()));
    }

    fn reset(&mut self) -> Result<(), TransportError> {
        reset_and_wait::<H>(
            self.location_value(),
            || self.write(regs::STATUS, 0),
            || self.read(regs::STATUS) as u8,
        )
    }

    fn device_features(&mut self) -> u64 {
        let mut features = 0u64;
        for half in 0..2u32 {
            self.write(regs::DEVICE_FEATURES_SEL, half);
            features |= u64::from(self.read(regs::DEVICE_FEATURES)) << (32 * half);
        }
        features
    }

    fn set_driver_features(&mut self, features: u64) {
        for half in 0..2u32 {
            self.write(regs::DRIVER_FEATURES_SEL, half);
            self.write(regs::DRIVER_FEATURES, (features >> (32 * half)) as u32);
        }
    }

    fn ring_layout(&self) -> RingLayout {
        if self.version == 1 {
            RingLayout::Contiguous {
                align: LEGACY_PAGE_SIZE,
            }
        } else {
            RingLayout::Separate
        }
    }

    fn max_queue_size(&mut self, queue: u16) -> Result<u16, TransportError> {
        self.write(regs::QUEUE_SEL, u32::from(queue));
        // A device may claim more than 2^16; no split ring can use that many.
        Ok(self.read(regs::QUEUE_NUM_MAX).min(u32::from(u16::MAX)) as u16)
    }

    fn queue_size_is_fixed(&self) -> bool {
        false
    }

    fn setup_queue(&mut self, queue: u16, addrs: &QueueAddresses) -> Result<(), TransportError> {
        let layout = self.ring_layout();
        check_queue_addresses(layout, addrs)?;
        let location = self.location_value();
        if self.version == 1 {
            let pfn = u32::try_from(addrs.desc / u64::from(LEGACY_PAGE_SIZE)).map_err(|_| {
                TransportError::AddressTooHigh {
                    what: "legacy queue",
                    addr: addrs.desc,
                }
            })?;
            // §4.2.4: the page size must be known before any queue is set up.
            self.write(regs::GUEST_PAGE_SIZE, LEGACY_PAGE_SIZE);
            self.write(regs::QUEUE_SEL, u32::from(queue));
            if self.read(regs::QUEUE_PFN) != 0 {
                return Err(TransportError::QueueAlreadyActive(queue));
            }
            let max = self.read(regs::QUEUE_NUM_MAX);
            check_size(queue, addrs.size, max)?;
            trace_queue_setup(location, queue, addrs);
            log::trace!(
                "{location}: queue {queue}: page frame number {pfn:#x}, align {LEGACY_PAGE_SIZE}"
            );
            self.write(regs::QUEUE_NUM, u32::from(addrs.size));
            self.write(regs::QUEUE_ALIGN, LEGACY_PAGE_SIZE);
            self.write(regs::QUEUE_PFN, pfn);
        } else {
            self.write(regs::QUEUE_SEL, u32::from(queue));
            if self.read(regs::QUEUE_READY) != 0 {
                return Err(TransportError::QueueAlreadyActive(queue));
            }
            let max = self.read(regs::QUEUE_NUM_MAX);
            check_size(queue, addrs.size, max)?;
            trace_queue_setup(location, queue, addrs);
            self.write(regs::QUEUE_NUM, u32::from(addrs.size));
            for (low, value) in [
                (regs::QUEUE_DESC_LOW, addrs.desc),
                (regs::QUEUE_DRIVER_LOW, addrs.driver),
                (regs::QUEUE_DEVICE_LOW, addrs.device),
            ] {
                self.write(low, value as u32);
                self.write(low + 4, (value >> 32) as u32);
            }
            self.write(regs::QUEUE_READY, 1);
        }
        Ok(())
    }

    #[inline]
    fn notify(&self, queue: u16) {
        self.write(regs::QUEUE_NOTIFY, u32::from(queue));
    }

    fn config_generation(&mut self) -> u32 {
        if self.version == 1 {
            0
        } else {
            self.read(regs::CONFIG_GENERATION)
        }
    }

    fn config_consistency(&self) -> ConfigConsistency {
        if self.version == 1 {
            ConfigConsistency::ReadTwice
        } else {
            ConfigConsistency::Generation
        }
    }

    fn config_space_size(&self) -> usize {
        self.regs.len() - regs::CONFIG
    }

    fn read_config_field(
        &mut self,
        offset: usize,
        width: FieldWidth,
    ) -> Result<u32, TransportError> {
        let at = self.config_offset(offset, width)?;
        // Legacy devices are read byte by byte (as Linux does for version 1);
        // version 2 with the field's own width (§4.2.2.2).
        let value = if self.version == 1 {
            let mut value = 0u32;
            for i in 0..width.bytes() {
                let byte = self.regs.read::<u8>(at + i);
                value |= u32::from(byte.unwrap_or(0xff)) << (8 * i);
            }
            Some(value)
        } else {
            match width {
                FieldWidth::U8 => self.regs.read::<u8>(at).map(u32::from),
                FieldWidth::U16 => self.regs.read::<u16>(at).map(u32::from),
                FieldWidth::U32 => self.regs.read::<u32>(at),
            }
        };
        value.ok_or(TransportError::ConfigMisaligned {
            offset,
            width: width.bytes(),
        })
    }

    fn write_config_field(
        &mut self,
        offset: usize,
        width: FieldWidth,
        value: u32,
    ) -> Result<(), TransportError> {
        let at = self.config_offset(offset, width)?;
        let written = if self.version == 1 {
            (0..width.bytes()).all(|i| self.regs.write::<u8>(at + i, (value >> (8 * i)) as u8))
        } else {
            match width {
                FieldWidth::U8 => self.regs.write::<u8>(at, value as u8),
                FieldWidth::U16 => self.regs.write::<u16>(at, value as u16),
                FieldWidth::U32 => self.regs.write::<u32>(at, value),
            }
        };
        if written {
            Ok(())
        } else {
            Err(TransportError::ConfigMisaligned {
                offset,
                width: width.bytes(),
            })
        }
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.interrupt_status().read_and_acknowledge()
    }

    fn set_config_msix_vector(&mut self, _vector: u16) -> Result<(), TransportError> {
        Err(TransportError::Unsupported("MSI-X on virtio-mmio"))
    }

    fn set_queue_msix_vector(&mut self, _queue: u16, _vector: u16) -> Result<(), TransportError> {
        Err(TransportError::Unsupported("MSI-X on virtio-mmio"))
    }
}

fn check_size(queue: u16, requested: u16, max: u32) -> Result<(), TransportError> {
    if max == 0 {
        return Err(TransportError::NoSuchQueue(queue));
    }
    if requested == 0 || u32::from(requested) > max {
        return Err(TransportError::InvalidQueueSize {
            queue,
            requested,
            max: max.min(u32::from(u16::MAX)) as u16,
        });
    }
    Ok(())
}
