//! Register-level device models for the transport tests.
//!
//! Each model implements [`crate::host_hal::RegisterDevice`] and is attached
//! to the host Hal with `HostHal::map_mmio` / `map_ports`, so it sees every
//! register access the real transport code makes, and records it in order.
//!
//! - [`virtio`]: one virtio device's state ([`virtio::VirtioCore`]) and the
//!   three register front-ends onto it: the modern PCI structures
//!   ([`virtio::ModernBar`]), the legacy I/O block ([`virtio::LegacyBlock`])
//!   and virtio-mmio versions 1 and 2 ([`virtio::MmioWindow`]). A transitional
//!   device is one core with a legacy and a modern front-end.
//! - [`pci`]: a PCI platform: configuration space for functions and bridges
//!   (reached through mechanism #1 ports and through ECAM), and memory / I/O
//!   space routers that deliver a BAR access to the function that decodes
//!   it, through the bridges in front of it, exactly as the programmed BARs,
//!   bridge windows and command registers say.
//!
//! Besides the access log, models keep a list of *violations*: things a
//! correct driver never does (a wrong access width, a write to a read-only
//! register, an access nobody decodes). Tests assert it is empty.

pub mod msix;
pub mod pci;
pub mod virtio;

/// Which register block an access went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Region {
    /// Modern PCI common configuration.
    Common,
    /// Modern PCI ISR status.
    Isr,
    /// Modern PCI device configuration.
    DeviceConfig,
    /// Modern PCI notify structure.
    Notify,
    /// Legacy PCI I/O register block.
    Legacy,
    /// virtio-mmio window.
    Mmio,
}

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// A read; `value` is what the model returned.
    R,
    /// A write; `value` is what the driver wrote.
    W,
}

/// One register access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Access {
    /// Where.
    pub region: Region,
    /// Offset inside the region.
    pub offset: u64,
    /// Width in bytes.
    pub width: usize,
    /// Read or write.
    pub dir: Dir,
    /// The value.
    pub value: u64,
}

impl Access {
    /// A read of `width` bytes at `offset` that returned `value`.
    pub const fn r(region: Region, offset: u64, width: usize, value: u64) -> Self {
        Self {
            region,
            offset,
            width,
            dir: Dir::R,
            value,
        }
    }

    /// A write of `value` (`width` bytes) at `offset`.
    pub const fn w(region: Region, offset: u64, width: usize, value: u64) -> Self {
        Self {
            region,
            offset,
            width,
            dir: Dir::W,
            value,
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = match self.dir {
            Dir::R => "R",
            Dir::W => "W",
        };
        write!(
            f,
            "{dir} {:?}+{:#05x} u{} = {:#x}",
            self.region,
            self.offset,
            self.width * 8,
            self.value
        )
    }
}

/// The BAR windows that match [`pci::PlatformLayout::default`].
pub fn test_windows() -> drivers::pci::BarWindows {
    drivers::pci::BarWindows {
        io: 0xc000..0x1_0000,
        mem32: 0xc000_0000..0xfe00_0000,
        mem64: Some(0x80_0000_0000..0x90_0000_0000),
    }
}

/// Queue addresses in the modern (separate) layout starting at `base`: the
/// descriptor table, the available ring right after it, the used ring on the
/// next 64-byte line. The transport never dereferences them.
pub fn separate_addresses(base: u64, size: u16) -> drivers::queue::QueueAddresses {
    let driver = base + 16 * u64::from(size);
    let device = (driver + 6 + 2 * u64::from(size)).next_multiple_of(64);
    drivers::queue::QueueAddresses {
        size,
        desc: base,
        driver,
        device,
    }
}

/// Queue addresses in the legacy contiguous layout (§2.7.2) at `base`.
pub fn contiguous_addresses(base: u64, size: u16, align: u64) -> drivers::queue::QueueAddresses {
    let driver = base + 16 * u64::from(size);
    let device = (driver + 6 + 2 * u64::from(size)).next_multiple_of(align);
    drivers::queue::QueueAddresses {
        size,
        desc: base,
        driver,
        device,
    }
}

struct FormattingLogger;

impl log::Log for FormattingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        // Format every message, so the narration's Display code runs in
        // tests; print it when TRANSPORT_LOG is set.
        let line = format!("{:5} {}", record.level(), record.args());
        if std::env::var_os("TRANSPORT_LOG").is_some() {
            eprintln!("{line}");
        }
    }

    fn flush(&self) {}
}

static LOGGER: FormattingLogger = FormattingLogger;

/// Installs a logger at trace level that formats every record (and prints it
/// when `TRANSPORT_LOG` is set). Harmless if another logger is installed.
pub fn trace_logging() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}
