//! A virtio device at register level, behind three kinds of front-end.
//!
//! [`VirtioCore`] holds what the spec says a device has (§2): status,
//! features, configuration space and generation, queues, ISR. The front-ends
//! decode register accesses onto it:
//!
//! - [`ModernBar`]: a memory BAR holding the modern PCI structures (§4.1.4),
//!   by default in QEMU's layout (common 0x0, ISR 0x1000, device 0x2000,
//!   notify 0x3000, multiplier 4);
//! - [`LegacyBlock`]: the legacy I/O BAR 0 block (§4.1.4.8), with device
//!   configuration at 20 or, with MSI-X on, 24;
//! - [`MmioWindow`]: virtio-mmio version 1 or 2 (§4.2).
//!
//! Every access is appended to `VirtioCore::log`. Behaviour knobs let tests
//! make the device refuse FEATURES_OK, never finish a reset, change its
//! configuration in the middle of a read, or reject MSI-X vectors.

use std::cell::RefCell;
use std::rc::Rc;

use super::{Access, Region};
use crate::host_hal::RegisterDevice;

/// Status bits (§2.1).
pub const ACKNOWLEDGE: u8 = 1;
/// DRIVER.
pub const DRIVER: u8 = 2;
/// DRIVER_OK.
pub const DRIVER_OK: u8 = 4;
/// FEATURES_OK.
pub const FEATURES_OK: u8 = 8;
/// DEVICE_NEEDS_RESET.
pub const DEVICE_NEEDS_RESET: u8 = 64;
/// FAILED.
pub const FAILED: u8 = 128;

/// The MSI-X "no vector" value.
pub const NO_VECTOR: u16 = 0xffff;

/// One queue as the device sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueState {
    /// QueueNumMax / queue_size after reset.
    pub max_size: u16,
    /// The size the driver chose (starts at `max_size` for modern PCI).
    pub size: u16,
    /// Modern: queue_enable; MMIO v2: QueueReady.
    pub enabled: bool,
    /// Descriptor area.
    pub desc: u64,
    /// Driver area.
    pub driver: u64,
    /// Device area.
    pub device: u64,
    /// Modern: queue_notify_off.
    pub notify_off: u16,
    /// MSI-X vector.
    pub msix_vector: u16,
    /// Legacy / MMIO v1: page frame number.
    pub pfn: u32,
    /// MMIO v1: QueueAlign.
    pub align: u32,
}

impl QueueState {
    /// Whether the driver set the queue up: enabled (modern, MMIO v2) or
    /// given a page frame (legacy PCI, MMIO v1).
    pub fn is_live(&self) -> bool {
        self.enabled || self.pfn != 0
    }

    /// Where the driver put the queue: the legacy contiguous layout (§2.7.2)
    /// at `pfn` × 4096, aligned to `align` but at least 4096, or the three
    /// modern addresses.
    pub fn addresses(&self) -> drivers::queue::QueueAddresses {
        if self.pfn != 0 {
            super::contiguous_addresses(
                u64::from(self.pfn) * 4096,
                self.size,
                u64::from(self.align.max(4096)),
            )
        } else {
            drivers::queue::QueueAddresses {
                size: self.size,
                desc: self.desc,
                driver: self.driver,
                device: self.device,
            }
        }
    }
}

/// A scheduled configuration change: after `after_reads` device-config
/// reads, the contents become `new_config` and the generation moves on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    /// Reads before the change happens.
    pub after_reads: u32,
    /// The new configuration bytes.
    pub new_config: Vec<u8>,
}

/// The state of one virtio device.
#[derive(Debug)]
pub struct VirtioCore {
    /// Virtio device id (1 net, 2 block, ...).
    pub device_id: u32,
    /// Offered features.
    pub device_features: u64,
    /// Accepted features as written by the driver.
    pub driver_features: u64,
    /// The device status as the device holds it.
    pub status: u8,
    /// Every status value written, in order.
    pub status_writes: Vec<u8>,
    /// Device-specific configuration bytes.
    pub config: Vec<u8>,
    /// Configuration generation.
    pub generation: u32,
    /// Device-config reads so far (drives `config_change`).
    pub config_reads: u32,
    /// A pending configuration change.
    pub config_change: Option<ConfigChange>,
    /// ISR / InterruptStatus bits.
    pub isr: u8,
    /// Queues.
    pub queues: Vec<QueueState>,
    /// Selected queue.
    pub queue_select: u16,
    /// Modern/MMIO feature word selects.
    pub device_feature_select: u32,
    /// Driver feature word select.
    pub driver_feature_select: u32,
    /// Modern/legacy config MSI-X vector.
    pub config_msix_vector: u16,
    /// Legacy: MSI-X is enabled (moves the legacy device configuration).
    pub msix_enabled: bool,
    /// MSI-X vectors are accepted (else they read back NO_VECTOR).
    pub accept_msix_vectors: bool,
    /// Queue indices written to notify registers, in order.
    pub notifications: Vec<u16>,
    /// The device clears FEATURES_OK when the driver sets it.
    pub refuse_features_ok: bool,
    /// Feature bits the device insists on: FEATURES_OK is refused unless the
    /// driver accepted all of them (QEMU's `iommu_platform=on` insists on
    /// VIRTIO_F_ACCESS_PLATFORM).
    pub required_features: u64,
    /// Status reads after a reset that still return the old status
    /// (`u32::MAX`: the reset never completes).
    pub reset_delay_reads: u32,
    pending_reset_reads: u32,
    stale_status: u8,
    /// Set DEVICE_NEEDS_RESET when the driver sets DRIVER_OK.
    pub needs_reset_on_driver_ok: bool,
    /// MMIO v1: GuestPageSize.
    pub guest_page_size: u32,
    /// Every register access, in order.
    pub log: Vec<Access>,
    /// Things a correct driver never does.
    pub violations: Vec<String>,
}

/// A shared handle to a core.
pub type SharedCore = Rc<RefCell<VirtioCore>>;

impl VirtioCore {
    /// A device of type `device_id` offering `features`, with `queues`
    /// queues of `queue_max` entries and configuration `config`.
    pub fn new(
        device_id: u32,
        features: u64,
        queues: u16,
        queue_max: u16,
        config: Vec<u8>,
    ) -> Self {
        let queues = (0..queues)
            .map(|q| QueueState {
                max_size: queue_max,
                size: queue_max,
                notify_off: q,
                msix_vector: NO_VECTOR,
                ..QueueState::default()
            })
            .collect();
        Self {
            device_id,
            device_features: features,
            driver_features: 0,
            status: 0,
            status_writes: Vec::new(),
            config,
            generation: 0,
            config_reads: 0,
            config_change: None,
            isr: 0,
            queues,
            queue_select: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            config_msix_vector: NO_VECTOR,
            msix_enabled: false,
            accept_msix_vectors: true,
            notifications: Vec::new(),
            refuse_features_ok: false,
            required_features: 0,
            reset_delay_reads: 0,
            pending_reset_reads: 0,
            stale_status: 0,
            needs_reset_on_driver_ok: false,
            guest_page_size: 0,
            log: Vec::new(),
            violations: Vec::new(),
        }
    }

    /// Wraps the core for sharing between front-ends and the test.
    pub fn shared(self) -> SharedCore {
        Rc::new(RefCell::new(self))
    }

    /// Accesses to `region` only.
    pub fn log_of(&self, region: Region) -> Vec<Access> {
        self.log
            .iter()
            .copied()
            .filter(|a| a.region == region)
            .collect()
    }

    fn violation(&mut self, what: String) {
        self.violations.push(what);
    }

    fn reset(&mut self) {
        self.stale_status = self.status;
        self.status = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.config_msix_vector = NO_VECTOR;
        self.isr = 0;
        for q in &mut self.queues {
            *q = QueueState {
                max_size: q.max_size,
                size: q.max_size,
                notify_off: q.notify_off,
                msix_vector: NO_VECTOR,
                ..QueueState::default()
            };
        }
        self.pending_reset_reads = self.reset_delay_reads;
    }

    /// A status write (any transport).
    pub fn write_status(&mut self, value: u8) {
        self.status_writes.push(value);
        if value == 0 {
            self.reset();
            return;
        }
        // Apart from a reset, the driver only ever adds status bits (§3.1.1).
        let dropped = self.status & !value & !DEVICE_NEEDS_RESET;
        if dropped != 0 {
            self.violation(format!(
                "status write {value:#x} clears bits {dropped:#x} of {:#x}",
                self.status
            ));
        }
        let mut value = value;
        let missing_required =
            self.driver_features & self.required_features != self.required_features;
        if value & FEATURES_OK != 0 && (self.refuse_features_ok || missing_required) {
            value &= !FEATURES_OK;
        }
        if value & DRIVER_OK != 0 && self.needs_reset_on_driver_ok {
            value |= DEVICE_NEEDS_RESET;
        }
        self.status = value;
    }

    /// A status read (any transport).
    pub fn read_status(&mut self) -> u8 {
        if self.pending_reset_reads > 0 {
            if self.pending_reset_reads != u32::MAX {
                self.pending_reset_reads -= 1;
            }
            return self.stale_status;
        }
        self.status
    }

    fn selected(&mut self) -> Option<&mut QueueState> {
        let q = usize::from(self.queue_select);
        self.queues.get_mut(q)
    }

    fn config_read(&mut self, offset: usize, width: usize) -> u64 {
        self.config_reads += 1;
        let mut value = 0u64;
        for i in 0..width {
            let byte = self.config.get(offset + i).copied().unwrap_or(0);
            value |= u64::from(byte) << (8 * i);
        }
        if let Some(change) = &self.config_change {
            if self.config_reads >= change.after_reads {
                self.config = change.new_config.clone();
                self.generation += 1;
                self.config_change = None;
            }
        }
        value
    }

    fn config_write(&mut self, offset: usize, width: usize, value: u64) {
        for i in 0..width {
            if let Some(byte) = self.config.get_mut(offset + i) {
                *byte = (value >> (8 * i)) as u8;
            } else {
                self.violations.push(format!(
                    "config write beyond config space at {:#x}",
                    offset + i
                ));
            }
        }
    }

    fn features_word(&self, select: u32) -> u32 {
        match select {
            0 => self.device_features as u32,
            1 => (self.device_features >> 32) as u32,
            _ => 0,
        }
    }

    fn set_driver_word(&mut self, select: u32, value: u32) {
        match select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            _ => {
                if value != 0 {
                    self.violation(format!("driver feature word {select} = {value:#x}"));
                }
            }
        }
    }

    fn msix_value(&self, requested: u16) -> u16 {
        if self.accept_msix_vectors {
            requested
        } else {
            NO_VECTOR
        }
    }

    fn width_check(&mut self, region: Region, offset: u64, width: usize, allowed: &[usize]) {
        if !allowed.contains(&width) {
            self.violation(format!(
                "{region:?}+{offset:#x}: {width}-byte access, field wants {allowed:?}"
            ));
        }
    }
}

fn set_low(value: &mut u64, low: u64) {
    *value = (*value & !0xffff_ffff) | (low & 0xffff_ffff);
}

fn set_high(value: &mut u64, high: u64) {
    *value = (*value & 0xffff_ffff) | (high << 32);
}

/// Where the modern structures sit in the BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModernLayout {
    /// Common configuration offset.
    pub common: u64,
    /// ISR offset.
    pub isr: u64,
    /// Device configuration offset.
    pub device: u64,
    /// Notify structure offset.
    pub notify: u64,
    /// Length of each structure.
    pub structure_len: u64,
    /// notify_off_multiplier.
    pub notify_multiplier: u32,
}

impl Default for ModernLayout {
    /// QEMU's layout.
    fn default() -> Self {
        Self {
            common: 0,
            isr: 0x1000,
            device: 0x2000,
            notify: 0x3000,
            structure_len: 0x1000,
            notify_multiplier: 4,
        }
    }
}

/// The modern PCI structures in one memory BAR.
pub struct ModernBar {
    /// The device.
    pub core: SharedCore,
    /// Where the structures are.
    pub layout: ModernLayout,
}

impl ModernBar {
    /// A BAR front-end for `core` in `layout`.
    pub fn new(core: SharedCore, layout: ModernLayout) -> Rc<RefCell<Self>> {
        Rc::new(RefCell::new(Self { core, layout }))
    }

    fn region_of(&self, offset: u64) -> Option<(Region, u64)> {
        let l = &self.layout;
        for (region, start) in [
            (Region::Common, l.common),
            (Region::Isr, l.isr),
            (Region::DeviceConfig, l.device),
            (Region::Notify, l.notify),
        ] {
            if offset >= start && offset < start + l.structure_len {
                return Some((region, offset - start));
            }
        }
        None
    }
}

fn common_read(core: &mut VirtioCore, offset: u64, width: usize) -> u64 {
    let r = Region::Common;
    match offset {
        0x00 => {
            core.width_check(r, offset, width, &[4]);
            u64::from(core.device_feature_select)
        }
        0x04 => {
            core.width_check(r, offset, width, &[4]);
            u64::from(core.features_word(core.device_feature_select))
        }
        0x08 => {
            core.width_check(r, offset, width, &[4]);
            u64::from(core.driver_feature_select)
        }
        0x0c => {
            core.width_check(r, offset, width, &[4]);
            (core.driver_features >> (32 * core.driver_feature_select.min(1))) & 0xffff_ffff
        }
        0x10 => {
            core.width_check(r, offset, width, &[2]);
            u64::from(core.config_msix_vector)
        }
        0x12 => {
            core.width_check(r, offset, width, &[2]);
            core.queues.len() as u64
        }
        0x14 => {
            core.width_check(r, offset, width, &[1]);
            u64::from(core.read_status())
        }
        0x15 => {
            core.width_check(r, offset, width, &[1]);
            u64::from(core.generation as u8)
        }
        0x16 => {
            core.width_check(r, offset, width, &[2]);
            u64::from(core.queue_select)
        }
        0x18..=0x37 => {
            let Some(q) = core.selected().copied() else {
                return 0;
            };
            match offset {
                0x18 => u64::from(q.size),
                0x1a => u64::from(q.msix_vector),
                0x1c => u64::from(q.enabled),
                0x1e => u64::from(q.notify_off),
                0x20 => q.desc & 0xffff_ffff,
                0x24 => q.desc >> 32,
                0x28 => q.driver & 0xffff_ffff,
                0x2c => q.driver >> 32,
                0x30 => q.device & 0xffff_ffff,
                0x34 => q.device >> 32,
                _ => 0,
            }
        }
        _ => 0,
    }
}

fn common_write(core: &mut VirtioCore, offset: u64, width: usize, value: u64) {
    let r = Region::Common;
    match offset {
        0x00 => {
            core.width_check(r, offset, width, &[4]);
            core.device_feature_select = value as u32;
        }
        0x08 => {
            core.width_check(r, offset, width, &[4]);
            core.driver_feature_select = value as u32;
        }
        0x0c => {
            core.width_check(r, offset, width, &[4]);
            let select = core.driver_feature_select;
            core.set_driver_word(select, value as u32);
        }
        0x10 => {
            core.width_check(r, offset, width, &[2]);
            core.config_msix_vector = core.msix_value(value as u16);
        }
        0x14 => {
            core.width_check(r, offset, width, &[1]);
            core.write_status(value as u8);
        }
        0x16 => {
            core.width_check(r, offset, width, &[2]);
            core.queue_select = value as u16;
        }
        0x18..=0x37 => {
            let wanted: &[usize] = if offset < 0x20 { &[2] } else { &[4] };
            core.width_check(r, offset, width, wanted);
            let vector = core.msix_value(value as u16);
            let Some(q) = core.selected() else {
                core.violation(format!("queue register {offset:#x} with no queue selected"));
                return;
            };
            match offset {
                0x18 => q.size = value as u16,
                0x1a => q.msix_vector = vector,
                0x1c => q.enabled = value != 0,
                0x20 => set_low(&mut q.desc, value),
                0x24 => set_high(&mut q.desc, value),
                0x28 => set_low(&mut q.driver, value),
                0x2c => set_high(&mut q.driver, value),
                0x30 => set_low(&mut q.device, value),
                0x34 => set_high(&mut q.device, value),
                _ => core
                    .violations
                    .push(format!("write to read-only common {offset:#x}")),
            }
        }
        _ => core
            .violations
            .push(format!("write to read-only common {offset:#x}")),
    }
}

impl RegisterDevice for ModernBar {
    fn read(&mut self, offset: u64, width: usize) -> u64 {
        let located = self.region_of(offset);
        let mut core = self.core.borrow_mut();
        let Some((region, at)) = located else {
            core.violations
                .push(format!("read of BAR gap at {offset:#x}"));
            return u64::MAX;
        };
        let value = match region {
            Region::Common => common_read(&mut core, at, width),
            Region::Isr => {
                let isr = core.isr;
                core.isr = 0;
                u64::from(isr)
            }
            Region::DeviceConfig => core.config_read(at as usize, width),
            _ => {
                core.violations.push("read of the notify structure".into());
                0
            }
        };
        core.log.push(Access::r(region, at, width, value));
        value
    }

    fn write(&mut self, offset: u64, width: usize, value: u64) {
        let located = self.region_of(offset);
        let multiplier = u64::from(self.layout.notify_multiplier);
        let mut core = self.core.borrow_mut();
        let Some((region, at)) = located else {
            core.violations
                .push(format!("write to BAR gap at {offset:#x}"));
            return;
        };
        core.log.push(Access::w(region, at, width, value));
        match region {
            Region::Common => common_write(&mut core, at, width, value),
            Region::DeviceConfig => core.config_write(at as usize, width, value),
            Region::Notify => {
                let queue = value as u16;
                let expected = core
                    .queues
                    .get(usize::from(queue))
                    .map(|q| u64::from(q.notify_off) * multiplier);
                if width != 2 || expected != Some(at) {
                    core.violations.push(format!(
                        "notify of queue {queue} at {at:#x} (u{}), expected {expected:?}",
                        width * 8
                    ));
                }
                core.notifications.push(queue);
            }
            Region::Isr => core.violations.push("write to ISR".into()),
            _ => {}
        }
    }
}

/// The legacy I/O BAR 0 register block.
pub struct LegacyBlock {
    /// The device.
    pub core: SharedCore,
}

impl LegacyBlock {
    /// A legacy front-end for `core`.
    pub fn new(core: SharedCore) -> Rc<RefCell<Self>> {
        Rc::new(RefCell::new(Self { core }))
    }
}

impl RegisterDevice for LegacyBlock {
    fn read(&mut self, offset: u64, width: usize) -> u64 {
        let mut core = self.core.borrow_mut();
        let config_start = if core.msix_enabled { 0x18 } else { 0x14 };
        let r = Region::Legacy;
        let value = match offset {
            _ if offset >= config_start => {
                core.config_read((offset - config_start) as usize, width)
            }
            0x00 => {
                core.width_check(r, offset, width, &[4]);
                u64::from(core.device_features as u32)
            }
            0x04 => u64::from(core.driver_features as u32),
            0x08 => core.selected().map_or(0, |q| u64::from(q.pfn)),
            0x0c => {
                core.width_check(r, offset, width, &[2]);
                core.selected().map_or(0, |q| u64::from(q.max_size))
            }
            0x0e => u64::from(core.queue_select),
            0x12 => {
                core.width_check(r, offset, width, &[1]);
                u64::from(core.read_status())
            }
            0x13 => {
                let isr = core.isr;
                core.isr = 0;
                u64::from(isr)
            }
            0x14 => u64::from(core.config_msix_vector),
            0x16 => core
                .selected()
                .map_or(NO_VECTOR as u64, |q| u64::from(q.msix_vector)),
            _ => 0,
        };
        core.log.push(Access::r(r, offset, width, value));
        value
    }

    fn write(&mut self, offset: u64, width: usize, value: u64) {
        let mut core = self.core.borrow_mut();
        let r = Region::Legacy;
        core.log.push(Access::w(r, offset, width, value));
        let config_start = if core.msix_enabled { 0x18 } else { 0x14 };
        match offset {
            _ if offset >= config_start => {
                core.config_write((offset - config_start) as usize, width, value)
            }
            0x04 => {
                core.width_check(r, offset, width, &[4]);
                core.set_driver_word(0, value as u32);
            }
            0x08 => {
                core.width_check(r, offset, width, &[4]);
                if let Some(q) = core.selected() {
                    q.pfn = value as u32;
                    q.size = q.max_size;
                }
            }
            0x0e => {
                core.width_check(r, offset, width, &[2]);
                core.queue_select = value as u16;
            }
            0x10 => {
                core.width_check(r, offset, width, &[2]);
                core.notifications.push(value as u16);
            }
            0x12 => {
                core.width_check(r, offset, width, &[1]);
                core.write_status(value as u8);
            }
            0x14 => core.config_msix_vector = core.msix_value(value as u16),
            0x16 => {
                let vector = core.msix_value(value as u16);
                if let Some(q) = core.selected() {
                    q.msix_vector = vector;
                }
            }
            _ => core
                .violations
                .push(format!("legacy write to read-only {offset:#x}")),
        }
    }
}

/// A virtio-mmio register window, version 1 or 2.
pub struct MmioWindow {
    /// The device.
    pub core: SharedCore,
    /// 1 or 2.
    pub version: u32,
    /// MagicValue to report (tests use a wrong one for "no device").
    pub magic: u32,
    /// VendorID to report.
    pub vendor_id: u32,
}

impl MmioWindow {
    /// A version-`version` window onto `core`.
    pub fn new(core: SharedCore, version: u32) -> Rc<RefCell<Self>> {
        Rc::new(RefCell::new(Self {
            core,
            version,
            magic: 0x7472_6976,
            vendor_id: 0x554d_4551,
        }))
    }
}

impl RegisterDevice for MmioWindow {
    fn read(&mut self, offset: u64, width: usize) -> u64 {
        let mut core = self.core.borrow_mut();
        let r = Region::Mmio;
        if offset < 0x100 {
            core.width_check(r, offset, width, &[4]);
        }
        let v1 = self.version == 1;
        let value = match offset {
            0x000 => u64::from(self.magic),
            0x004 => u64::from(self.version),
            0x008 => u64::from(core.device_id),
            0x00c => u64::from(self.vendor_id),
            0x010 => u64::from(core.features_word(core.device_feature_select)),
            0x034 => core.selected().map_or(0, |q| u64::from(q.max_size)),
            0x040 if v1 => core.selected().map_or(0, |q| u64::from(q.pfn)),
            0x044 if !v1 => core.selected().map_or(0, |q| u64::from(q.enabled)),
            0x060 => u64::from(core.isr),
            0x070 => u64::from(core.read_status()),
            0x0fc if !v1 => u64::from(core.generation),
            _ if offset >= 0x100 => core.config_read((offset - 0x100) as usize, width),
            _ => {
                core.violations
                    .push(format!("mmio v{} read of {offset:#x}", self.version));
                0
            }
        };
        core.log.push(Access::r(r, offset, width, value));
        value
    }

    fn write(&mut self, offset: u64, width: usize, value: u64) {
        let mut core = self.core.borrow_mut();
        let r = Region::Mmio;
        core.log.push(Access::w(r, offset, width, value));
        if offset < 0x100 {
            core.width_check(r, offset, width, &[4]);
        }
        let v1 = self.version == 1;
        let value32 = value as u32;
        match offset {
            0x014 => core.device_feature_select = value32,
            0x020 => {
                let select = core.driver_feature_select;
                core.set_driver_word(select, value32);
            }
            0x024 => core.driver_feature_select = value32,
            0x028 if v1 => core.guest_page_size = value32,
            0x030 => core.queue_select = value as u16,
            0x038 => {
                if let Some(q) = core.selected() {
                    q.size = value as u16;
                }
            }
            0x03c if v1 => {
                if let Some(q) = core.selected() {
                    q.align = value32;
                }
            }
            0x040 if v1 => {
                if core.guest_page_size == 0 {
                    core.violations.push("QueuePFN before GuestPageSize".into());
                }
                if let Some(q) = core.selected() {
                    q.pfn = value32;
                }
            }
            0x044 if !v1 => {
                if let Some(q) = core.selected() {
                    q.enabled = value != 0;
                }
            }
            0x050 => core.notifications.push(value as u16),
            0x064 => core.isr &= !(value as u8),
            0x070 => core.write_status(value as u8),
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 if !v1 => {
                let Some(q) = core.selected() else { return };
                let field = match offset & !0xf {
                    0x080 => &mut q.desc,
                    0x090 => &mut q.driver,
                    _ => &mut q.device,
                };
                if offset & 0x4 == 0 {
                    set_low(field, value);
                } else {
                    set_high(field, value);
                }
            }
            _ if offset >= 0x100 => core.config_write((offset - 0x100) as usize, width, value),
            _ => core
                .violations
                .push(format!("mmio v{} write of {offset:#x}", self.version)),
        }
    }
}
