//! # virtio devices on virtio-mmio: where to look (virtio 1.2 §4.2)
//!
//! virtio-mmio has no bus to enumerate; the kernel learns where devices are
//! in one of two ways (the parser and the prober are in
//! `drivers::mmio_discovery`):
//!
//! 1. **The command line.** Every `virtio_mmio.device=<size>@<base>:<irq>`
//!    word names one device and its GSI. QEMU's `microvm` with `acpi=off`
//!    appends one per device. If there is at least one such word, only
//!    those devices are used (as Linux does).
//! 2. **Probing the microvm window**, when the command line names none and
//!    the machine has no PCI host bridge: `microvm` with ACPI on lists its
//!    devices only in the DSDT (which the kernel does not parse) and adds
//!    nothing to the command line. Its slots are 512 bytes apart from
//!    0xFEB0_0000: 8 of them with `acpi=off`, 24 with ACPI on (QEMU then
//!    has a second IOAPIC and gives every slot a pin of it, GSI 24 + slot).
//!    [`WINDOW_SLOTS`] covers both. A slot whose magic is not "virt" or
//!    whose device id is 0 holds nothing. On `pc`/`q35` the window is never
//!    probed: SeaBIOS may have put PCI BARs at those addresses.
//!
//! QEMU fills slots from the top: the first `-device` lands in the highest
//! free one. The kernel lists devices in address order.

use alloc::string::ToString;
use alloc::vec::Vec;

use drivers::mmio_discovery::{self, MICROVM_SLOT_SIZE, MICROVM_WINDOW_BASE};
use drivers::transport::mmio::MmioTransport;
use drivers::transport::{DeviceType, Location, Transport};

use super::{Discovered, InterruptLine};
use crate::hal_impl::KernelHal;

/// How many microvm slots are probed: QEMU 7.2 has 8 with `acpi=off` and
/// 24 (one per pin of the second IOAPIC) with ACPI on.
pub const WINDOW_SLOTS: u32 = 24;

/// Finds the virtio-mmio devices: from the command line, else (only if
/// `pci_present` is false) by probing the microvm window.
pub fn probe(pci_present: bool) -> Vec<Discovered> {
    let mut found = Vec::new();
    let mut entries = 0usize;
    for entry in crate::cmdline::values("virtio_mmio.device") {
        entries += 1;
        let spec = match mmio_discovery::parse_device(entry) {
            Ok(spec) => spec,
            Err(kind) => {
                log::warn!("virtio-mmio: ignoring virtio_mmio.device={entry}: {kind}");
                continue;
            }
        };
        log::info!(
            "virtio-mmio: command line names {:#x} bytes at {:#x}, GSI {}",
            spec.size,
            spec.base,
            spec.irq
        );
        let Ok(size) = usize::try_from(spec.size) else {
            log::warn!("virtio-mmio: window size {:#x} too large", spec.size);
            continue;
        };
        let transport = MmioTransport::<KernelHal>::new(spec.base, size);
        found.push(match transport {
            Ok(transport) => discovered(transport, InterruptLine::Gsi(spec.irq)),
            Err(error) => Discovered {
                device_type: DeviceType::Other(0),
                location: Location::Mmio { base: spec.base },
                interrupt: InterruptLine::Gsi(spec.irq),
                transport: Err(error.to_string()),
            },
        });
    }
    if entries > 0 {
        found.sort_by_key(|d| location_key(&d.location));
        return found;
    }
    if pci_present {
        log::debug!("virtio-mmio: no virtio_mmio.device= and a PCI bus: window not probed");
        return found;
    }
    log::info!(
        "virtio-mmio: nothing on the command line; probing {} slots of {} bytes at {:#x}",
        WINDOW_SLOTS,
        MICROVM_SLOT_SIZE,
        MICROVM_WINDOW_BASE
    );
    for slot in mmio_discovery::probe_window::<KernelHal>(
        MICROVM_WINDOW_BASE,
        MICROVM_SLOT_SIZE,
        WINDOW_SLOTS,
    ) {
        log::info!(
            "virtio-mmio: slot {} at {:#x} answers",
            slot.index,
            slot.base
        );
        found.push(match slot.result {
            Ok(transport) => discovered(transport, InterruptLine::Unknown),
            Err(error) => Discovered {
                device_type: DeviceType::Other(0),
                location: Location::Mmio { base: slot.base },
                interrupt: InterruptLine::Unknown,
                transport: Err(error.to_string()),
            },
        });
    }
    found
}

fn discovered(transport: MmioTransport<KernelHal>, interrupt: InterruptLine) -> Discovered {
    Discovered {
        device_type: transport.device_type(),
        location: transport.location(),
        interrupt,
        transport: Ok(transport.into()),
    }
}

fn location_key(location: &Location) -> u64 {
    match location {
        Location::Mmio { base } => *base,
        Location::Pci(_) => 0,
    }
}
