//! Self-tests of the ACPI tables (`mode=selftest`, feature `selftest`): what
//! the MADT and MCFG said, checked against what the machine shows by other
//! means (the host bridge and its PCIEXBAR register through configuration
//! mechanism #1), and the MADT entry-chain checks on hand-made tables.

use alloc::vec::Vec;

use super::{
    check_madt_entries, decode_inti_flags, ecam, platform, DefaultsReason, Ecam, InterruptSource,
    IoApicInfo, Polarity, Trigger, DEFAULT_IO_APIC_ADDRESS, DEFAULT_LOCAL_APIC_ADDRESS,
    ISA_IRQ_COUNT, MADT_FIXED_BYTES,
};
use crate::selftest_api::SelfTest;

/// Reads a PCI configuration dword of bus 0 through configuration mechanism #1 (ports 0xCF8 and
/// 0xCFC, PCI Local Bus Specification 3.0 §3.2.2.3.2). Used by the self-tests to recognise the
/// machine independently of ACPI.
fn pci_config_read_bus0(device: u8, function: u8, offset: u8) -> u32 {
    use x86_64::instructions::port::Port;
    let address = 0x8000_0000u32
        | (u32::from(device & 0x1f) << 11)
        | (u32::from(function & 0x7) << 8)
        | u32::from(offset & 0xfc);
    let mut address_port = Port::<u32>::new(0xcf8);
    let mut data_port = Port::<u32>::new(0xcfc);
    x86_64::instructions::interrupts::without_interrupts(|| {
        // SAFETY: 0xCF8/0xCFC are the PCI configuration ports on PC-compatible machines; reading
        // a vendor/device ID or the q35 PCIEXBAR register has no side effects. Interrupts are off
        // so no handler can move 0xCF8 between the two accesses.
        unsafe {
            address_port.write(address);
            data_port.read()
        }
    })
}

/// The host bridge the self-tests found at 00:00.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostBridge {
    /// Intel 82G33/Q35 MCH (QEMU `q35`): PCI Express, ECAM through PCIEXBAR.
    Q35,
    /// Intel 440FX (QEMU `pc`): conventional PCI only.
    I440fx,
    /// No PCI host bridge answers (QEMU `microvm`).
    None,
    /// Something else.
    Other(u32),
}

fn host_bridge() -> HostBridge {
    match pci_config_read_bus0(0, 0, 0) {
        0x29c0_8086 => HostBridge::Q35,
        0x1237_8086 => HostBridge::I440fx,
        0xffff_ffff | 0 => HostBridge::None,
        other => HostBridge::Other(other),
    }
}

/// Self-tests of the parsed tables against what the machine shows by other means. Run by
/// `interrupts::selftests()`.
pub fn selftests() -> Vec<SelfTest> {
    alloc::vec![
        SelfTest {
            name: "acpi: MADT or defaults consistent with boot info",
            run: test_madt_plausible
        },
        SelfTest {
            name: "acpi: MCFG matches the host bridge",
            run: test_mcfg_matches_host_bridge
        },
        SelfTest {
            name: "acpi: malformed MADT entry chains are rejected",
            run: test_madt_chain_checks
        },
    ]
}

fn test_madt_plausible() -> Result<(), alloc::string::String> {
    use alloc::format;
    let platform = platform();
    match platform.interrupt_source {
        InterruptSource::Defaults(DefaultsReason::NoRsdp) => {
            if platform.acpi_present {
                return Err("defaults for lack of an RSDP, yet ACPI marked present".into());
            }
            let expected = [IoApicInfo {
                id: 0,
                address: DEFAULT_IO_APIC_ADDRESS,
                gsi_base: 0,
            }];
            if platform.io_apics != expected
                || platform.local_apic_address != DEFAULT_LOCAL_APIC_ADDRESS
            {
                return Err(format!(
                    "defaults are not the documented ones: {:x?}, LAPIC {:#x}",
                    platform.io_apics, platform.local_apic_address
                ));
            }
            for irq in 0..ISA_IRQ_COUNT {
                let route = platform.isa_route(irq).ok_or("no ISA route")?;
                if route.gsi != u32::from(irq)
                    || route.trigger != Trigger::Edge
                    || route.polarity != Polarity::ActiveHigh
                {
                    return Err(format!("default ISA route for IRQ {irq} is {route:?}"));
                }
            }
            Ok(())
        }
        InterruptSource::Defaults(reason) => Err(format!(
            "the firmware's tables were not used ({reason:?}); QEMU's are valid"
        )),
        InterruptSource::Madt => {
            if !platform.acpi_present {
                return Err("MADT parsed but ACPI not marked present".into());
            }
            if !platform.local_apic_address.is_multiple_of(4096) || platform.local_apic_address == 0
            {
                return Err(format!(
                    "local APIC address {:#x}",
                    platform.local_apic_address
                ));
            }
            if !platform.processors.iter().any(|p| p.enabled) {
                return Err("MADT lists no enabled processor".into());
            }
            let mut gsi_ranges_start: Vec<u32> =
                platform.io_apics.iter().map(|a| a.gsi_base).collect();
            gsi_ranges_start.sort_unstable();
            if gsi_ranges_start.first() != Some(&0) {
                return Err(format!(
                    "no I/O APIC serves GSI 0: {:x?}",
                    platform.io_apics
                ));
            }
            if gsi_ranges_start.windows(2).any(|w| w[0] == w[1]) {
                return Err("two I/O APICs claim the same GSI base".into());
            }
            for route in &platform.isa_overrides {
                if platform
                    .isa_overrides
                    .iter()
                    .filter(|o| o.isa_irq == route.isa_irq)
                    .count()
                    != 1
                {
                    return Err(format!("ISA IRQ {} overridden twice", route.isa_irq));
                }
            }
            // Every ISA IRQ must land on some I/O APIC input.
            for irq in 0..ISA_IRQ_COUNT {
                let route = platform.isa_route(irq).ok_or("no ISA route")?;
                if !platform.io_apics.iter().any(|a| a.gsi_base <= route.gsi) {
                    return Err(format!(
                        "ISA IRQ {irq} -> GSI {} has no I/O APIC",
                        route.gsi
                    ));
                }
            }
            Ok(())
        }
    }
}

/// Reads the q35 MCH's PCIEXBAR (offset 0x60, 82G33 datasheet §5.1.13): bit 0 enables ECAM,
/// bits 2:1 give its size (256, 128 or 64 buses), the base is 64 MiB aligned at least.
fn q35_pciexbar() -> Option<(u64, u16)> {
    let low = pci_config_read_bus0(0, 0, 0x60);
    let high = pci_config_read_bus0(0, 0, 0x64);
    if low & 1 == 0 {
        return None;
    }
    let buses = match (low >> 1) & 0b11 {
        0 => 256,
        1 => 128,
        2 => 64,
        _ => return None,
    };
    let base = (u64::from(high) << 32 | u64::from(low)) & 0x0000_000f_fc00_0000;
    Some((base, buses))
}

fn test_mcfg_matches_host_bridge() -> Result<(), alloc::string::String> {
    use alloc::format;
    let platform = platform();
    let bridge = host_bridge();
    match bridge {
        HostBridge::Q35 if platform.acpi_present => match (q35_pciexbar(), ecam()) {
            (Some((base, buses)), Some(window)) => {
                let expected = Ecam {
                    base,
                    segment: 0,
                    bus_start: 0,
                    bus_end: (buses - 1) as u8,
                };
                if window == expected && platform.ecam.len() == 1 {
                    Ok(())
                } else {
                    Err(format!(
                        "MCFG says {:x?}, the MCH's PCIEXBAR says {expected:x?}",
                        platform.ecam
                    ))
                }
            }
            (None, None) => Ok(()),
            (pciexbar, window) => Err(format!(
                "PCIEXBAR {pciexbar:x?} but MCFG window {window:x?}"
            )),
        },
        HostBridge::I440fx | HostBridge::None => {
            if platform.ecam.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{bridge:?} host bridge has no ECAM, yet MCFG lists {:x?}",
                    platform.ecam
                ))
            }
        }
        // Without ACPI (or on an unknown bridge) there is nothing independent to compare with;
        // an MCFG must then at least not be invented.
        _ => {
            if !platform.acpi_present && !platform.ecam.is_empty() {
                Err("ECAM windows without ACPI tables".into())
            } else {
                Ok(())
            }
        }
    }
}

fn test_madt_chain_checks() -> Result<(), alloc::string::String> {
    use alloc::format;
    // A MADT body with one I/O APIC entry (type 1, 12 bytes) and one override (type 2, 10 bytes).
    let mut good = alloc::vec![0u8; MADT_FIXED_BYTES];
    good.extend_from_slice(&[1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]);
    good.extend_from_slice(&[2, 10, 0, 0, 2, 0, 0, 0, 0, 0]);
    if check_madt_entries(&good) != Ok(2) {
        return Err(format!(
            "a well-formed chain was rejected: {:?}",
            check_madt_entries(&good)
        ));
    }
    type Corruption = fn(&mut Vec<u8>);
    let cases: [(&str, Corruption); 4] = [
        ("zero-length entry", |t| t[MADT_FIXED_BYTES + 1] = 0),
        ("entry past the end", |t| t[MADT_FIXED_BYTES + 13] = 40),
        ("I/O APIC entry too short", |t| t[MADT_FIXED_BYTES + 1] = 6),
        ("dangling byte", |t| t.push(1)),
    ];
    for (what, corrupt) in cases {
        let mut table = good.clone();
        corrupt(&mut table);
        if check_madt_entries(&table).is_ok() {
            return Err(format!("{what} was accepted"));
        }
    }
    if decode_inti_flags(0x000d) != (Polarity::ActiveHigh, Trigger::Level)
        || decode_inti_flags(0x000f) != (Polarity::ActiveLow, Trigger::Level)
        || decode_inti_flags(0) != (Polarity::ActiveHigh, Trigger::Edge)
    {
        return Err("INTI flags decoded wrongly".into());
    }
    Ok(())
}
