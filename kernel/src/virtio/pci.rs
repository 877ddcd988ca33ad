//! # virtio devices on PCI: choosing config access, BAR windows, probing
//!
//! (PCI Local Bus 3.0 §3.2.2.3.2 and §6, PCI Express Base §7.2 (ECAM),
//! PCI Firmware 3.3 §4.1.2 (MCFG), virtio 1.2 §4.1.)
//!
//! ## Reaching configuration space
//!
//! If the ACPI MCFG table lists an ECAM window for segment 0
//! ([`crate::acpi_tables::ecam`], what `q35` has), configuration space is
//! reached through it: `drivers::pci::EcamConfig` maps exactly the buses the
//! table lists (1 MiB each: 256 MiB for QEMU's 256 buses, mapped uncached
//! with 4 KiB pages by `memory::map_mmio`). Otherwise the kernel uses
//! configuration mechanism #1 (ports 0xCF8/0xCFC, what `pc` has), but only
//! after checking that it is there: a host bridge that implements it latches
//! the enable bit written to 0xCF8 and reads it back (Linux's
//! `pci_check_type1` does the same). `microvm` has no PCI at all, and the
//! check keeps the kernel from enumerating 0xFFFF on 32 devices for nothing
//! and tells [`super::mmio`] that probing the microvm window is safe.
//!
//! ## Where unassigned BARs go
//!
//! SeaBIOS assigns every BAR; qboot assigns none. `drivers::pci::enumerate`
//! places the ones left at 0 inside [`BarWindows`] this module derives from
//! what the kernel knows about the machine ([`bar_windows`]):
//!
//! - **32-bit memory**: the largest gap between the top of RAM below 4 GiB
//!   (rounded up to 1 MiB) and 0xFEB0_0000 that overlaps no memory-map entry
//!   of any type and not the ECAM window. From 0xFEB0_0000 up to 4 GiB is
//!   chipset territory on every QEMU x86 machine: the microvm virtio-mmio
//!   window (0xFEB0_0000), the IOAPIC (0xFEC0_0000), the HPET (0xFED0_0000),
//!   the LAPIC (0xFEE0_0000) and the firmware flash below 4 GiB. QEMU routes
//!   every address that is neither RAM nor a chipset device to the PCI bus
//!   (its PCI address space sits under the whole of system memory at lower
//!   priority), so any such gap decodes. On `q35` with 256 MiB that is
//!   0x1000_0000..0xB000_0000, below the ECAM window at 0xB000_0000.
//! - **I/O ports**: 0xC000..0x10000, above every legacy ISA and chipset port
//!   (QEMU's ACPI PM block is at 0x600 or 0xB000, PCI config at 0xCF8); it is
//!   also where SeaBIOS puts I/O BARs.
//! - **64-bit memory**: only when RAM reaches above 4 GiB: a 64 GiB window
//!   starting at the next GiB above the highest RAM address, shortened to
//!   stop before any memory-map entry (QEMU reserves 0xFD_0000_0000.. for
//!   HyperTransport). Otherwise 64-bit BARs fit below 4 GiB and go there.
//!
//! BARs the firmware placed are kept where they are; the allocator avoids
//! them.
//!
//! ## What is logged
//!
//! Every function found, at info: address, vendor:device, class, and what
//! it is; for virtio functions also the BARs and who placed them.

use alloc::format;
use alloc::string::ToString;
use alloc::vec::Vec;
use core::ops::{Range, RangeInclusive};

use drivers::pci::{
    self, BarKind, BarOrigin, BarWindows, ConfigAccess, ConfigWidth, EcamConfig, PciAddress,
    PciError, PciFunction, PortIoConfig,
};
use drivers::transport::pci as virtio_pci;
use drivers::transport::{DeviceType, Location};
use hal::{Hal, PortRange, PortWidth};
use spin::{Mutex, MutexGuard};

use super::{Discovered, InterruptLine};
use crate::bootinfo::{MemoryKind, MemoryRegion};
use crate::hal_impl::KernelHal;

/// Where the chipset's fixed devices begin below 4 GiB (see the module docs).
pub const CHIPSET_RESERVED_START: u64 = 0xfeb0_0000;
/// The I/O port window for unassigned I/O BARs.
pub const IO_WINDOW: Range<u32> = 0xc000..0x1_0000;
/// Size of the 64-bit window when RAM reaches above 4 GiB.
pub const MEM64_WINDOW_SIZE: u64 = 64 << 30;
const FOUR_GIB: u64 = 1 << 32;
const ONE_MIB: u64 = 1 << 20;
const ONE_GIB: u64 = 1 << 30;

/// The way the kernel reaches PCI configuration space.
pub enum PciConfig {
    /// Memory-mapped (from the MCFG).
    Ecam(EcamConfig<KernelHal>),
    /// Ports 0xCF8/0xCFC.
    PortIo(PortIoConfig<KernelHal>),
}

impl PciConfig {
    /// "ECAM" or "port I/O", for messages.
    pub fn mechanism(&self) -> &'static str {
        match self {
            PciConfig::Ecam(_) => "ECAM",
            PciConfig::PortIo(_) => "port I/O (mechanism #1)",
        }
    }
}

impl ConfigAccess for PciConfig {
    fn segment(&self) -> u16 {
        match self {
            PciConfig::Ecam(c) => c.segment(),
            PciConfig::PortIo(c) => c.segment(),
        }
    }
    fn bus_range(&self) -> RangeInclusive<u8> {
        match self {
            PciConfig::Ecam(c) => c.bus_range(),
            PciConfig::PortIo(c) => c.bus_range(),
        }
    }
    fn config_size(&self) -> u16 {
        match self {
            PciConfig::Ecam(c) => c.config_size(),
            PciConfig::PortIo(c) => c.config_size(),
        }
    }
    fn read(&self, address: PciAddress, offset: u16, width: ConfigWidth) -> Result<u32, PciError> {
        match self {
            PciConfig::Ecam(c) => c.read(address, offset, width),
            PciConfig::PortIo(c) => c.read(address, offset, width),
        }
    }
    fn write(
        &self,
        address: PciAddress,
        offset: u16,
        width: ConfigWidth,
        value: u32,
    ) -> Result<(), PciError> {
        match self {
            PciConfig::Ecam(c) => c.write(address, offset, width, value),
            PciConfig::PortIo(c) => c.write(address, offset, width, value),
        }
    }
}

/// What the PCI probe leaves for later code (MSI-X set-up, the shell).
#[allow(
    dead_code,
    reason = "kept for the MSI-X set-up and the shell, which read it later"
)]
pub struct PciBus {
    /// How configuration space is reached.
    pub config: PciConfig,
    /// Every function enumeration found, bridges included.
    pub functions: Vec<PciFunction>,
    /// The windows unassigned BARs were placed in.
    pub windows: BarWindows,
}

/// The PCI bus, once [`probe`] found one. Holding the lock also serialises
/// mechanism #1, whose two-port accesses must not interleave.
static BUS: Mutex<Option<PciBus>> = Mutex::new(None);

/// The PCI bus [`probe`] found (`None` inside: no PCI on this machine).
#[allow(dead_code, reason = "API for the MSI-X set-up and the shell")]
pub fn bus() -> MutexGuard<'static, Option<PciBus>> {
    BUS.lock()
}

/// What [`probe`] found.
pub struct PciProbe {
    /// A host bridge answered (ECAM from the MCFG, or mechanism #1 present).
    pub host_bridge_present: bool,
    /// The virtio functions, each with a transport or the reason it has none.
    pub devices: Vec<Discovered>,
}

/// Finds the configuration mechanism, enumerates the bus, logs every
/// function and makes a transport for every virtio one.
pub fn probe() -> PciProbe {
    let Some(config) = config_access() else {
        log::info!("pci: no ECAM and no configuration mechanism #1: no PCI bus");
        return PciProbe {
            host_bridge_present: false,
            devices: Vec::new(),
        };
    };
    let windows = bar_windows(
        crate::boot::info()
            .map(|info| info.memory.iter().collect::<Vec<_>>())
            .unwrap_or_default()
            .as_slice(),
        crate::acpi_tables::ecam().map(|e| ecam_range(&e)),
    );
    log::info!(
        "pci: config access by {}; windows for unassigned BARs: mem32 {:#x}..{:#x}, io {:#x}..{:#x}, mem64 {}",
        config.mechanism(),
        windows.mem32.start,
        windows.mem32.end,
        windows.io.start,
        windows.io.end,
        match &windows.mem64 {
            Some(w) => format!("{:#x}..{:#x}", w.start, w.end),
            None => "none (RAM ends below 4 GiB)".to_string(),
        }
    );
    let functions = match pci::enumerate(&config, &windows) {
        Ok(functions) => functions,
        Err(error) => {
            log::error!("pci: enumeration failed: {error}");
            *BUS.lock() = Some(PciBus {
                config,
                functions: Vec::new(),
                windows,
            });
            return PciProbe {
                host_bridge_present: true,
                devices: Vec::new(),
            };
        }
    };
    let mut devices = Vec::new();
    for function in &functions {
        log_function(function);
        if let Some(device_type) = virtio_pci::virtio_device_type(function) {
            log_virtio_function(function, device_type);
            devices.push(Discovered {
                device_type,
                location: Location::Pci(function.address),
                interrupt: InterruptLine::PciIntx {
                    pin: function.interrupt_pin,
                    line: function.interrupt_line,
                },
                transport: virtio_pci::probe::<KernelHal, _>(&config, function)
                    .map(super::KernelTransport::from)
                    .map_err(|e| e.to_string()),
            });
        } else if function.vendor_id == pci::VIRTIO_VENDOR_ID
            && (0x1000..=0x107f).contains(&function.device_id)
        {
            // A transitional id with subsystem id 0 names no device type.
            devices.push(Discovered {
                device_type: DeviceType::Other(0),
                location: Location::Pci(function.address),
                interrupt: InterruptLine::Unknown,
                transport: Err("transitional device with subsystem id 0 (no device type)".into()),
            });
        }
    }
    log::info!(
        "pci: {} function(s), {} virtio",
        functions.len(),
        devices.len()
    );
    *BUS.lock() = Some(PciBus {
        config,
        functions,
        windows,
    });
    PciProbe {
        host_bridge_present: true,
        devices,
    }
}

/// ECAM when the MCFG has it, else mechanism #1 if a host bridge answers.
fn config_access() -> Option<PciConfig> {
    if let Some(ecam) = crate::acpi_tables::ecam() {
        match EcamConfig::<KernelHal>::new(ecam.base, ecam.segment, ecam.bus_start, ecam.bus_end) {
            Ok(config) => {
                log::info!(
                    "pci: ECAM at {:#x}, segment {}, buses {:#04x}..={:#04x}",
                    ecam.base,
                    ecam.segment,
                    ecam.bus_start,
                    ecam.bus_end
                );
                return Some(PciConfig::Ecam(config));
            }
            Err(error) => {
                log::warn!(
                    "pci: cannot map ECAM at {:#x} ({error}); trying port I/O",
                    ecam.base
                )
            }
        }
    }
    if mechanism_one_present() {
        // SAFETY: ports 0xCF8-0xCFF belong to PCI configuration; the only
        // user is this `PortIoConfig`, kept behind the `BUS` lock.
        let ports = unsafe { PortRange::new(pci::CONFIG_ADDRESS_PORT, pci::CONFIG_PORTS as u16) };
        PortIoConfig::new(ports.ok()?).ok().map(PciConfig::PortIo)
    } else {
        None
    }
}

/// Is configuration mechanism #1 there? A host bridge that implements it
/// keeps the enable bit (bit 31) written to CONFIG_ADDRESS and reads it back;
/// with nothing at port 0xCF8 the read returns all ones.
fn mechanism_one_present() -> bool {
    const CONFIG_ADDRESS: u16 = 0xcf8;
    const ENABLE: u32 = 0x8000_0000;
    // SAFETY: nothing else uses 0xCF8 yet (the PCI bus is not set up); the
    // old value is put back.
    unsafe {
        let Ok(saved) = KernelHal::port_read(CONFIG_ADDRESS, PortWidth::Dword) else {
            return false;
        };
        let _ = KernelHal::port_write(CONFIG_ADDRESS, PortWidth::Dword, ENABLE);
        let read_back = KernelHal::port_read(CONFIG_ADDRESS, PortWidth::Dword).unwrap_or(0);
        let _ = KernelHal::port_write(CONFIG_ADDRESS, PortWidth::Dword, saved);
        log::debug!(
            "pci: CONFIG_ADDRESS reads back {read_back:#010x} after writing {ENABLE:#010x}"
        );
        read_back == ENABLE
    }
}

/// The physical range an ECAM window's buses occupy.
fn ecam_range(ecam: &crate::acpi_tables::Ecam) -> Range<u64> {
    let start = ecam.base + (u64::from(ecam.bus_start) << 20);
    let end = ecam.base + ((u64::from(ecam.bus_end) + 1) << 20);
    start..end
}

/// The windows for unassigned BARs, from the memory map and the ECAM range
/// (see the module docs). Pure: the self-tests feed it made-up machines.
pub fn bar_windows(memory: &[MemoryRegion], ecam: Option<Range<u64>>) -> BarWindows {
    let is_ram = |r: &MemoryRegion| {
        matches!(
            r.kind,
            MemoryKind::Usable | MemoryKind::AcpiReclaimable | MemoryKind::AcpiNvs
        )
    };
    let end_of = |r: &MemoryRegion| r.start.saturating_add(r.len);
    let top_of_low_ram = memory
        .iter()
        .filter(|r| is_ram(r) && r.start < FOUR_GIB)
        .map(|r| end_of(r).min(FOUR_GIB))
        .max()
        .unwrap_or(0);
    let floor = top_of_low_ram.next_multiple_of(ONE_MIB);
    let mut obstacles: Vec<Range<u64>> = memory.iter().map(|r| r.start..end_of(r)).collect();
    obstacles.extend(ecam);
    let mem32 = largest_gap(floor..CHIPSET_RESERVED_START, &obstacles);

    let top_of_ram = memory
        .iter()
        .filter(|r| is_ram(r))
        .map(end_of)
        .max()
        .unwrap_or(0);
    let mem64 = (top_of_ram > FOUR_GIB)
        .then(|| {
            let start = top_of_ram.next_multiple_of(ONE_GIB);
            let mut end = start.saturating_add(MEM64_WINDOW_SIZE);
            for obstacle in &obstacles {
                if obstacle.end > start && obstacle.start < end {
                    end = end.min(obstacle.start.max(start));
                }
            }
            start..end
        })
        .filter(|w| !w.is_empty());
    BarWindows {
        io: IO_WINDOW,
        mem32,
        mem64,
    }
}

/// The largest part of `range` that overlaps none of `obstacles` (empty if
/// none is left).
fn largest_gap(range: Range<u64>, obstacles: &[Range<u64>]) -> Range<u64> {
    let mut sorted: Vec<Range<u64>> = obstacles
        .iter()
        .filter(|o| o.start < range.end && o.end > range.start && !o.is_empty())
        .cloned()
        .collect();
    sorted.sort_by_key(|o| o.start);
    let mut best = range.start..range.start;
    let mut cursor = range.start;
    for obstacle in sorted
        .iter()
        .chain(core::iter::once(&(range.end..range.end)))
    {
        let gap = cursor..obstacle.start.min(range.end);
        if gap.end > gap.start && gap.end - gap.start > best.end - best.start {
            best = gap;
        }
        cursor = cursor.max(obstacle.end);
    }
    best
}

/// A short description of a PCI class code (PCI Code and ID Assignment 1.12 §1).
fn class_name(class: u8, subclass: u8) -> &'static str {
    match (class, subclass) {
        (0x01, 0x00) => "SCSI storage",
        (0x01, 0x01) => "IDE storage",
        (0x01, 0x06) => "SATA storage",
        (0x01, _) => "storage",
        (0x02, _) => "network",
        (0x03, _) => "display",
        (0x06, 0x00) => "host bridge",
        (0x06, 0x01) => "ISA bridge",
        (0x06, 0x04) => "PCI-to-PCI bridge",
        (0x06, _) => "bridge",
        (0x07, _) => "communication",
        (0x08, _) => "system peripheral",
        (0x0c, 0x05) => "SMBus",
        (0x0c, _) => "serial bus",
        (0x00, _) => "unclassified",
        (0xff, _) => "vendor-specific",
        _ => "other",
    }
}

fn log_function(function: &PciFunction) {
    let behind = match (&function.bridge, function.parent_bridge) {
        (Some(bridge), _) => format!(
            ", buses {:#04x}..={:#04x}{}",
            bridge.secondary_bus,
            bridge.subordinate_bus,
            if bridge.renumbered {
                " (numbered by the kernel)"
            } else {
                ""
            }
        ),
        (None, Some(parent)) => format!(", behind bridge {parent}"),
        (None, None) => alloc::string::String::new(),
    };
    log::info!(
        "pci {}: {:04x}:{:04x} class {:02x}.{:02x}.{:02x} ({}){}",
        function.address,
        function.vendor_id,
        function.device_id,
        function.class,
        function.subclass,
        function.prog_if,
        class_name(function.class, function.subclass),
        behind
    );
    for error in &function.bar_errors {
        log::warn!("pci {}: {error}", function.address);
    }
}

fn log_virtio_function(function: &PciFunction, device_type: DeviceType) {
    let flavour = if virtio_pci::is_transitional(function) {
        "transitional"
    } else {
        "modern-only"
    };
    let mut bars = alloc::string::String::new();
    for bar in function.bars.iter().flatten() {
        let kind = match bar.kind {
            BarKind::Io => "io",
            BarKind::Memory32 => "mem32",
            BarKind::Memory64 => "mem64",
        };
        let origin = match bar.origin {
            BarOrigin::Firmware => "firmware",
            BarOrigin::Enumeration => "kernel",
        };
        bars += &format!(
            " BAR{}={} {:#x}+{:#x} ({origin})",
            bar.index, kind, bar.address, bar.size
        );
    }
    log::info!(
        "virtio-pci {}: {} device ({flavour}, id {:04x}:{:04x} rev {}){}",
        function.address,
        super::type_name(device_type),
        function.vendor_id,
        function.device_id,
        function.revision,
        bars
    );
}
