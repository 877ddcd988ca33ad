//! PCI: configuration access, enumeration through bridges, BAR sizing and
//! assignment, capability walking, and virtio-pci probing, against the
//! register-level platform model in `tests::models::pci`.

use drivers::pci::{
    self, capability_list, BarError, BarKind, BarOrigin, Command, ConfigAccess, EcamConfig,
    PciAddress, PciError, PciFunction, PortIoConfig,
};
use drivers::transport::pci::{probe, probe_with, PciTransportError, TransportPreference};
use drivers::transport::{DeviceType, Location, Transport, TransportKind};
use tests::host_hal::HostHal;
use tests::models::pci::{
    attach, virtio_legacy, virtio_modern, virtio_transitional, Attach, BarSpec, FunctionModel,
    PciPlatform, PlatformLayout, SharedPlatform, LEGACY_BAR_SIZE, MODERN_BAR_SIZE,
};
use tests::models::virtio::{ModernLayout, SharedCore, VirtioCore};
use tests::models::{test_windows, trace_logging};

const BLK_MODERN_FEATURES: u64 = 0x101_3000_6e54;

fn core(device_id: u32, features: u64) -> SharedCore {
    VirtioCore::new(device_id, features, 2, 256, vec![0; 64]).shared()
}

fn port_io() -> PortIoConfig<HostHal> {
    tests::host_hal::port_io_config()
}

fn ecam() -> EcamConfig<HostHal> {
    EcamConfig::new(0xb000_0000, 0, 0, 255).expect("ECAM maps")
}

fn setup(platform: &SharedPlatform) {
    trace_logging();
    HostHal::clear_devices();
    attach(platform, &PlatformLayout::default());
}

fn find(functions: &[PciFunction], bus: u8, device: u8, function: u8) -> &PciFunction {
    functions
        .iter()
        .find(|f| f.address == PciAddress::new(bus, device, function))
        .unwrap_or_else(|| panic!("{bus:02x}:{device:02x}.{function} not enumerated"))
}

/// What `pc` + qboot looks like: a host bridge and three virtio devices, every BAR at 0.
struct Qboot {
    platform: SharedPlatform,
    blk: SharedCore,
    net: SharedCore,
    console: SharedCore,
}

fn qboot_pc() -> Qboot {
    let platform = PciPlatform::new();
    let blk = core(2, BLK_MODERN_FEATURES);
    let net = core(1, 0x101_30bf_8024);
    let console = core(3, 0x7900_0006);
    {
        let mut p = platform.borrow_mut();
        p.add(
            Attach::Root,
            0,
            0,
            FunctionModel::endpoint("host", 0x8086, 0x1237, 0x06_00_00, 2),
        );
        p.add(
            Attach::Root,
            3,
            0,
            virtio_transitional(0x1001, &blk, ModernLayout::default()),
        );
        p.add(
            Attach::Root,
            4,
            0,
            virtio_modern(&net, ModernLayout::default()),
        );
        p.add(Attach::Root, 5, 0, virtio_legacy(0x1003, &console));
    }
    setup(&platform);
    Qboot {
        platform,
        blk,
        net,
        console,
    }
}

#[test]
fn enumeration_assigns_every_bar_qboot_left_at_zero() {
    let q = qboot_pc();
    let windows = test_windows();
    let functions = pci::enumerate(&port_io(), &windows).expect("enumerates");
    assert_eq!(functions.len(), 4);

    let p = q.platform.borrow();
    let mut placed = 0;
    for f in &functions {
        assert!(f.bar_errors.is_empty(), "{}: {:?}", f.address, f.bar_errors);
        for bar in f.bars.iter().flatten() {
            placed += 1;
            assert_eq!(bar.origin, BarOrigin::Enumeration);
            assert_ne!(bar.address, 0);
            assert_eq!(bar.address % bar.size, 0, "{bar:?} not naturally aligned");
            let inside = match bar.kind {
                BarKind::Io => {
                    u64::from(windows.io.start) <= bar.address
                        && bar.address + bar.size <= u64::from(windows.io.end)
                }
                BarKind::Memory32 => {
                    windows.mem32.contains(&bar.address)
                        && bar.address + bar.size <= windows.mem32.end
                }
                BarKind::Memory64 => {
                    let w = windows.mem64.clone().unwrap();
                    w.contains(&bar.address) && bar.address + bar.size <= w.end
                }
            };
            assert!(inside, "{bar:?} outside its window");
        }
        // The model's registers hold what enumeration reports.
        let model = p
            .functions
            .iter()
            .find(|m| m.device == f.address.device)
            .unwrap();
        for bar in f.bars.iter().flatten() {
            assert_eq!(model.bar_address(usize::from(bar.index)), bar.address);
        }
    }
    // blk: BAR0, BAR1, BAR4; net: BAR1, BAR4; console: BAR0.
    assert_eq!(placed, 6);
    assert!(
        p.overlapping_bars().is_empty(),
        "{:?}",
        p.overlapping_bars()
    );

    let blk = find(&functions, 0, 3, 0);
    assert_eq!(blk.bar(0).unwrap().kind, BarKind::Io);
    assert_eq!(blk.bar(0).unwrap().size, u64::from(LEGACY_BAR_SIZE));
    assert_eq!(blk.bar(4).unwrap().kind, BarKind::Memory64);
    assert_eq!(blk.bar(4).unwrap().size, MODERN_BAR_SIZE);
    assert!(blk.bar(4).unwrap().prefetchable);
    assert!(blk.bar(5).is_none(), "upper half is not a BAR of its own");
    // 64-bit BARs go above 4 GiB when the kernel offers a window there.
    assert!(blk.bar(4).unwrap().address >= 1 << 32);

    // Decoding is on for every space with placed BARs; bus mastering is the driver's call.
    let command = |device: u8| {
        p.functions
            .iter()
            .find(|m| m.device == device)
            .unwrap()
            .command()
    };
    assert_eq!(command(3) & 0x7, 0x3);
    assert_eq!(command(4) & 0x7, 0x2);
    assert_eq!(command(5) & 0x7, 0x1);
    assert_eq!(command(0) & 0x7, 0x0, "no BARs, nothing to decode");
    assert!(p.violations.is_empty(), "{:?}", p.violations);
    let _ = (&q.blk, &q.net, &q.console);
}

#[test]
fn probe_picks_the_interface_and_enables_bus_mastering() {
    let q = qboot_pc();
    let access = port_io();
    let functions = pci::enumerate(&access, &test_windows()).unwrap();

    let blk = probe::<HostHal, _>(&access, find(&functions, 0, 3, 0)).expect("transitional blk");
    assert_eq!(
        blk.kind(),
        TransportKind::PciModern,
        "transitional: prefer modern"
    );
    assert_eq!(blk.device_type(), DeviceType::Block);
    assert_eq!(blk.location(), Location::Pci(PciAddress::new(0, 3, 0)));
    assert_eq!(blk.location().to_string(), "pci 0000:00:03.0");

    let net = probe::<HostHal, _>(&access, find(&functions, 0, 4, 0)).expect("modern net");
    assert_eq!(net.kind(), TransportKind::PciModern);
    assert_eq!(net.device_type(), DeviceType::Net);

    let console = probe::<HostHal, _>(&access, find(&functions, 0, 5, 0)).expect("legacy console");
    assert_eq!(console.kind(), TransportKind::PciLegacy);
    assert_eq!(console.device_type(), DeviceType::Console);

    let forced = probe_with::<HostHal, _>(
        &access,
        find(&functions, 0, 3, 0),
        TransportPreference::ForceLegacy,
    )
    .unwrap();
    assert_eq!(forced.kind(), TransportKind::PciLegacy);

    let host = probe::<HostHal, _>(&access, find(&functions, 0, 0, 0));
    assert!(matches!(
        host,
        Err(PciTransportError::NotVirtio {
            vendor_id: 0x8086,
            ..
        })
    ));

    let p = q.platform.borrow();
    for device in [3, 4, 5] {
        let command = p
            .functions
            .iter()
            .find(|m| m.device == device)
            .unwrap()
            .command();
        assert_eq!(
            command & Command::BUS_MASTER.bits(),
            Command::BUS_MASTER.bits(),
            "device {device}"
        );
    }
    // Both front-ends of the transitional device answer at the assigned addresses.
    drop(p);
    let mut blk = blk;
    assert!(blk.reset().is_ok());
    let mut forced = forced;
    assert!(forced.reset().is_ok());
    assert_eq!(q.blk.borrow().status_writes, vec![0, 0]);
    assert!(q.platform.borrow().violations.is_empty());
}

#[test]
fn firmware_assigned_bars_are_kept_and_avoided() {
    let platform = PciPlatform::new();
    let blk = core(2, BLK_MODERN_FEATURES);
    let net = core(1, 0x101_30bf_8024);
    // blk placed by firmware at the very start of both windows, decoding on.
    let firmware_blk = virtio_transitional(0x1001, &blk, ModernLayout::default())
        .with_bar_address(0, 0xc000)
        .with_bar_address(1, 0xc000_0000)
        .with_bar_address(4, 0x80_0000_0000)
        .with_command(0x7);
    {
        let mut p = platform.borrow_mut();
        p.add(Attach::Root, 3, 0, firmware_blk);
        p.add(
            Attach::Root,
            4,
            0,
            virtio_modern(&net, ModernLayout::default()),
        );
    }
    setup(&platform);
    let functions = pci::enumerate(&port_io(), &test_windows()).unwrap();
    let blk_fn = find(&functions, 0, 3, 0);
    for (index, address) in [(0u8, 0xc000u64), (1, 0xc000_0000), (4, 0x80_0000_0000)] {
        let bar = blk_fn.bar(index).unwrap();
        assert_eq!(bar.origin, BarOrigin::Firmware);
        assert_eq!(bar.address, address);
    }
    let net_fn = find(&functions, 0, 4, 0);
    for bar in net_fn.bars.iter().flatten() {
        assert_eq!(bar.origin, BarOrigin::Enumeration);
    }
    let p = platform.borrow();
    assert_eq!(p.functions[0].bar_address(0), 0xc000);
    assert_eq!(p.functions[0].bar_address(4), 0x80_0000_0000);
    assert!(
        p.overlapping_bars().is_empty(),
        "{:?}",
        p.overlapping_bars()
    );
    // The only writes to the firmware BARs are the sizing pattern and its restore.
    let bar_writes: Vec<u32> = p
        .config_log
        .iter()
        .filter(|r| r.device == 3 && r.dir == tests::models::Dir::W && r.offset == 0x10)
        .map(|r| r.value)
        .collect();
    assert_eq!(bar_writes, vec![0xffff_ffff, 0xc001]);
    assert!(p.violations.is_empty(), "{:?}", p.violations);
}

/// q35 + qboot with a bridge: bridge 00:01.0 (unconfigured) -> bus 1 with a
/// modern blk at 01:00.0 and a second bridge 01:02.0 -> bus 2 with a legacy console.
fn bridged_platform() -> (SharedPlatform, SharedCore, SharedCore) {
    let platform = PciPlatform::new();
    let blk = core(2, BLK_MODERN_FEATURES);
    let console = core(3, 0x7900_0006);
    {
        let mut p = platform.borrow_mut();
        p.add(
            Attach::Root,
            0,
            0,
            FunctionModel::endpoint("host", 0x8086, 0x29c0, 0x06_00_00, 0),
        );
        let outer = p.add(Attach::Root, 1, 0, FunctionModel::bridge("outer"));
        p.add(
            Attach::Behind(outer),
            0,
            0,
            virtio_modern(&blk, ModernLayout::default()),
        );
        let inner = p.add(Attach::Behind(outer), 2, 0, FunctionModel::bridge("inner"));
        p.add(Attach::Behind(inner), 0, 0, virtio_legacy(0x1003, &console));
    }
    setup(&platform);
    (platform, blk, console)
}

#[test]
fn enumeration_numbers_unconfigured_bridges_and_finds_devices_behind_them() {
    let (platform, blk, console) = bridged_platform();
    let access = ecam();
    let functions = pci::enumerate(&access, &test_windows()).unwrap();
    assert_eq!(functions.len(), 5, "{functions:#?}");

    let outer = find(&functions, 0, 1, 0);
    let info = outer.bridge.as_ref().unwrap();
    assert_eq!(
        (info.secondary_bus, info.subordinate_bus, info.renumbered),
        (1, 2, true)
    );
    let inner = find(&functions, 1, 2, 0);
    let inner_info = inner.bridge.as_ref().unwrap();
    assert_eq!(
        (inner_info.secondary_bus, inner_info.subordinate_bus),
        (2, 2)
    );
    assert_eq!(inner.parent_bridge, Some(outer.address));

    let blk_fn = find(&functions, 1, 0, 0);
    let console_fn = find(&functions, 2, 0, 0);
    assert_eq!(blk_fn.parent_bridge, Some(outer.address));

    // Behind a bridge everything goes through its 32-bit memory window, even a 64-bit BAR.
    let window = info.memory_window.clone().expect("outer memory window");
    assert_eq!(window.start % 0x10_0000, 0);
    assert_eq!(window.end % 0x10_0000, 0);
    for bar in blk_fn.bars.iter().flatten() {
        assert!(
            window.start <= bar.address && bar.address + bar.size <= window.end,
            "{bar:?}"
        );
    }
    let io_window = info
        .io_window
        .clone()
        .expect("outer I/O window for the console");
    let console_bar = console_fn.bar(0).unwrap();
    assert!(io_window.contains(&console_bar.address));
    let inner_io = inner_info.io_window.clone().unwrap();
    assert!(inner_io.start >= io_window.start && inner_io.end <= io_window.end);
    assert!(inner_info.prefetchable_window.is_none());

    {
        let p = platform.borrow();
        assert_eq!(p.functions[1].secondary(), 1);
        assert_eq!(p.functions[1].subordinate(), 2);
        // Forwarding and bus mastering on both bridges.
        assert_eq!(p.functions[1].command() & 0x7, 0x7);
        assert_eq!(
            p.functions[3].command() & 0x7,
            0x5,
            "inner bridge forwards I/O only"
        );
        assert!(p.overlapping_bars().is_empty());
        assert!(p.violations.is_empty(), "{:?}", p.violations);
    }

    // The devices work through the bridges: register accesses reach the models.
    let mut blk_t = probe::<HostHal, _>(&access, blk_fn).unwrap();
    let mut console_t = probe::<HostHal, _>(&access, console_fn).unwrap();
    assert_eq!(blk_t.kind(), TransportKind::PciModern);
    assert_eq!(console_t.kind(), TransportKind::PciLegacy);
    blk_t.reset().unwrap();
    console_t.reset().unwrap();
    assert_eq!(blk_t.max_queue_size(0).unwrap(), 256);
    assert_eq!(console_t.max_queue_size(1).unwrap(), 256);
    assert_eq!(blk.borrow().status_writes, vec![0]);
    assert_eq!(console.borrow().status_writes, vec![0]);
    assert!(
        platform.borrow().violations.is_empty(),
        "{:?}",
        platform.borrow().violations
    );
}

#[test]
fn firmware_bus_numbers_are_kept() {
    let platform = PciPlatform::new();
    let blk = core(2, BLK_MODERN_FEATURES);
    {
        let mut p = platform.borrow_mut();
        let bridge = p.add(
            Attach::Root,
            2,
            0,
            FunctionModel::bridge("fw")
                .with_bus_numbers(0, 5, 5)
                .with_memory_window(0xfe00_0000, 0xfe0f_ffff)
                .with_command(0x7),
        );
        p.add(
            Attach::Behind(bridge),
            0,
            0,
            virtio_modern(&blk, ModernLayout::default())
                .with_bar_address(1, 0xfe00_0000)
                .with_bar_address(4, 0xfe00_4000)
                .with_command(0x6),
        );
    }
    setup(&platform);
    let functions = pci::enumerate(&port_io(), &test_windows()).unwrap();
    let bridge = find(&functions, 0, 2, 0).bridge.clone().unwrap();
    assert_eq!(
        (
            bridge.secondary_bus,
            bridge.subordinate_bus,
            bridge.renumbered
        ),
        (5, 5, false)
    );
    assert_eq!(bridge.memory_window, Some(0xfe00_0000..0xfe10_0000));
    let dev = find(&functions, 5, 0, 0);
    assert_eq!(dev.bar(4).unwrap().address, 0xfe00_4000);
    assert_eq!(dev.bar(4).unwrap().origin, BarOrigin::Firmware);
    let p = platform.borrow();
    let bus_number_writes = p
        .config_log
        .iter()
        .filter(|r| {
            r.answered_by == Some(0)
                && r.dir == tests::models::Dir::W
                && (0x18..=0x1a).contains(&r.offset)
        })
        .count();
    assert_eq!(bus_number_writes, 0);
}

#[test]
fn multifunction_devices_are_scanned() {
    let platform = PciPlatform::new();
    {
        let mut p = platform.borrow_mut();
        p.add(
            Attach::Root,
            6,
            0,
            FunctionModel::endpoint("f0", 0x8086, 0x7000, 0x06_01_00, 0).multifunction(),
        );
        p.add(
            Attach::Root,
            6,
            3,
            FunctionModel::endpoint("f3", 0x8086, 0x7113, 0x06_80_00, 0),
        );
        // Function 1 of a single-function device must not be looked at.
        p.add(
            Attach::Root,
            7,
            0,
            FunctionModel::endpoint("single", 0x8086, 0x1111, 0x08_80_00, 0),
        );
        p.add(
            Attach::Root,
            7,
            1,
            FunctionModel::endpoint("ghost", 0x8086, 0x2222, 0x08_80_00, 0),
        );
    }
    setup(&platform);
    let functions = pci::enumerate(&port_io(), &test_windows()).unwrap();
    let addresses: Vec<_> = functions.iter().map(|f| f.address).collect();
    assert_eq!(
        addresses,
        vec![
            PciAddress::new(0, 6, 0),
            PciAddress::new(0, 6, 3),
            PciAddress::new(0, 7, 0)
        ]
    );
    assert!(functions[0].multifunction);
    assert_eq!((functions[1].class, functions[1].subclass), (0x06, 0x80));
}

#[test]
fn implausible_bar_sizes_are_rejected_not_allocated() {
    let platform = PciPlatform::new();
    {
        let mut p = platform.borrow_mut();
        p.add(
            Attach::Root,
            8,
            0,
            FunctionModel::endpoint("hostile", 0x1234, 0x5678, 0xff_00_00, 0)
                // Non-contiguous size mask.
                .with_bar(0, BarSpec::Raw { mask: 0xffff_0f00 }, None)
                // An I/O BAR of 4 KiB (the spec allows at most 256 bytes).
                .with_bar(1, BarSpec::Raw { mask: 0xffff_f001 }, None)
                // A 64-bit BAR in the last slot.
                .with_bar(5, BarSpec::Raw { mask: 0xffff_f004 }, None)
                // A sane one that must still be placed.
                .with_bar(
                    2,
                    BarSpec::Mem32 {
                        size: 0x1000,
                        prefetchable: false,
                    },
                    None,
                ),
        );
    }
    setup(&platform);
    let functions = pci::enumerate(&port_io(), &test_windows()).unwrap();
    let f = &functions[0];
    assert_eq!(
        f.bar_errors,
        vec![
            BarError::AbsurdSize {
                index: 0,
                mask: 0xffff_ffff_ffff_0f00
            },
            BarError::AbsurdSize {
                index: 1,
                mask: 0xffff_f001
            },
            BarError::SixtyFourBitInLastSlot { index: 5 },
        ]
    );
    assert!(f.bar(0).is_none() && f.bar(1).is_none() && f.bar(5).is_none());
    let good = f.bar(2).unwrap();
    assert_eq!((good.size, good.address % 0x1000), (0x1000, 0));
}

#[test]
fn a_full_window_is_an_error_per_bar() {
    let platform = PciPlatform::new();
    let a = core(2, BLK_MODERN_FEATURES);
    let b = core(2, BLK_MODERN_FEATURES);
    {
        let mut p = platform.borrow_mut();
        p.add(
            Attach::Root,
            3,
            0,
            virtio_modern(&a, ModernLayout::default()),
        );
        p.add(
            Attach::Root,
            4,
            0,
            virtio_modern(&b, ModernLayout::default()),
        );
    }
    setup(&platform);
    // Room for one 16 KiB BAR and one 4 KiB BAR, no 64-bit window.
    let windows = pci::BarWindows {
        io: 0xc000..0xc100,
        mem32: 0xc000_0000..0xc000_5000,
        mem64: None,
    };
    let functions = pci::enumerate(&port_io(), &windows).unwrap();
    let errors: Vec<_> = functions
        .iter()
        .flat_map(|f| f.bar_errors.clone())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().all(|e| matches!(e, BarError::NoSpace { .. })));
    // A device with an unplaced memory BAR must not decode memory.
    let p = platform.borrow();
    assert_eq!(p.functions[1].command() & 0x2, 0);
    assert!(p.overlapping_bars().is_empty());
}

fn hostile_virtio(mutate: impl FnOnce(&mut FunctionModel)) -> (SharedPlatform, Vec<PciFunction>) {
    let platform = PciPlatform::new();
    let net = core(1, 0x101_30bf_8024);
    let mut f = virtio_modern(&net, ModernLayout::default());
    mutate(&mut f);
    platform.borrow_mut().add(Attach::Root, 3, 0, f);
    setup(&platform);
    let functions = pci::enumerate(&port_io(), &test_windows()).unwrap();
    (platform, functions)
}

#[test]
fn a_looping_capability_list_is_an_error_not_a_hang() {
    let (_p, functions) = hostile_virtio(|f| {
        // The last capability points back at the first.
        let last = (0x40..0x100)
            .rev()
            .step_by(1)
            .find(|&at: &usize| f.config[at] == 0x09 && f.config[at + 1] == 0)
            .unwrap();
        f.config[last + 1] = 0x40;
    });
    let access = port_io();
    let err = capability_list(&access, functions[0].address).unwrap_err();
    assert_eq!(
        err,
        PciError::CapabilityLoop {
            address: PciAddress::new(0, 3, 0),
            offset: 0x40
        }
    );
    let probed = probe::<HostHal, _>(&access, &functions[0]);
    assert!(matches!(
        probed,
        Err(PciTransportError::Pci(PciError::CapabilityLoop { .. }))
    ));
}

#[test]
fn a_capability_pointer_into_the_header_is_an_error() {
    let (_p, functions) = hostile_virtio(|f| f.config[0x41] = 0x10);
    let err = capability_list(&port_io(), functions[0].address).unwrap_err();
    assert!(matches!(
        err,
        PciError::CapabilityPointerInvalid { pointer: 0x10, .. }
    ));
}

/// Offset of the virtio capability of `cfg_type` in the model's config space.
fn virtio_cap(f: &FunctionModel, cfg_type: u8) -> usize {
    (0x40..0xf0)
        .find(|&at| f.config[at] == 0x09 && f.config[at + 3] == cfg_type)
        .unwrap()
}

#[test]
fn a_capability_outside_its_bar_is_an_error() {
    let (_p, functions) = hostile_virtio(|f| {
        let notify = virtio_cap(f, 2);
        // offset 0x3000 + length 0x2000 > the 0x4000-byte BAR.
        f.config[notify + 12..notify + 16].copy_from_slice(&0x2000u32.to_le_bytes());
    });
    let err = probe::<HostHal, _>(&port_io(), &functions[0]).unwrap_err();
    assert_eq!(
        err,
        PciTransportError::OutsideBar {
            cfg_type: 2,
            bar: 4,
            offset: 0x3000,
            length: 0x2000,
            bar_size: MODERN_BAR_SIZE
        }
    );
}

#[test]
fn capability_offset_overflow_is_outside_the_bar() {
    let (_p, functions) = hostile_virtio(|f| {
        let common = virtio_cap(f, 1);
        f.config[common + 8..common + 12].copy_from_slice(&0xffff_ff00u32.to_le_bytes());
    });
    let err = probe::<HostHal, _>(&port_io(), &functions[0]).unwrap_err();
    assert!(
        matches!(err, PciTransportError::OutsideBar { cfg_type: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn a_capability_in_a_missing_bar_or_too_small_is_an_error() {
    let (_p, functions) = hostile_virtio(|f| {
        let isr = virtio_cap(f, 3);
        f.config[isr + 4] = 2; // BAR2 is not implemented
    });
    let err = probe::<HostHal, _>(&port_io(), &functions[0]).unwrap_err();
    assert_eq!(
        err,
        PciTransportError::BarMissing {
            cfg_type: 3,
            bar: 2
        }
    );

    let (_p, functions) = hostile_virtio(|f| {
        let common = virtio_cap(f, 1);
        f.config[common + 12..common + 16].copy_from_slice(&0x20u32.to_le_bytes());
    });
    let err = probe::<HostHal, _>(&port_io(), &functions[0]).unwrap_err();
    assert_eq!(
        err,
        PciTransportError::StructureTooSmall {
            cfg_type: 1,
            length: 0x20,
            minimum: 0x38
        }
    );

    let (_p, functions) = hostile_virtio(|f| {
        let notify = virtio_cap(f, 2);
        f.config[notify + 16..notify + 20].copy_from_slice(&3u32.to_le_bytes());
    });
    let err = probe::<HostHal, _>(&port_io(), &functions[0]).unwrap_err();
    assert_eq!(err, PciTransportError::InvalidNotifyMultiplier(3));
}

/// Appends a copy of the virtio capability of `cfg_type` (a second,
/// later instance of the same structure) and returns the first's offset.
fn duplicate_virtio_cap(f: &mut FunctionModel, cfg_type: u8) -> usize {
    let first = virtio_cap(f, cfg_type);
    let cap_len = usize::from(f.config[first + 2]);
    let body = f.config[first + 2..first + cap_len].to_vec();
    f.add_capability(0x09, &body);
    first
}

#[test]
fn a_bad_capability_instance_is_skipped_for_the_next_of_its_type() {
    // §4.1.4: "The driver SHOULD use the first instance of each virtio
    // structure type they can support": each case breaks the first
    // instance of one type and appends a good one after it.
    type Break = fn(&mut FunctionModel);
    let cases: [(&str, Break); 5] = [
        ("common too small", |f| {
            let first = duplicate_virtio_cap(f, 1);
            f.config[first + 12..first + 16].copy_from_slice(&0x20u32.to_le_bytes());
        }),
        ("common outside its BAR", |f| {
            let first = duplicate_virtio_cap(f, 1);
            f.config[first + 8..first + 12].copy_from_slice(&0xffff_ff00u32.to_le_bytes());
        }),
        ("notify multiplier 3", |f| {
            let first = duplicate_virtio_cap(f, 2);
            f.config[first + 16..first + 20].copy_from_slice(&3u32.to_le_bytes());
        }),
        ("ISR in a missing BAR", |f| {
            let first = duplicate_virtio_cap(f, 3);
            f.config[first + 4] = 2;
        }),
        ("device capability too short", |f| {
            let first = duplicate_virtio_cap(f, 4);
            f.config[first + 2] = 8;
        }),
    ];
    for (what, break_first) in cases {
        let (_p, functions) = hostile_virtio(break_first);
        let mut transport = probe::<HostHal, _>(&port_io(), &functions[0])
            .unwrap_or_else(|e| panic!("{what}: the probe gave up: {e}"));
        assert_eq!(transport.kind(), TransportKind::PciModern, "{what}");
        // The structures of the good instances answer.
        assert_eq!(transport.device_features(), 0x101_30bf_8024, "{what}");
        assert!(transport.config_space_size() > 0, "{what}");
    }

    // With no good instance left the first one's error is the answer.
    let (_p, functions) = hostile_virtio(|f| {
        let first = duplicate_virtio_cap(f, 1);
        let second = (first + 1..0x100)
            .find(|&at| f.config[at] == 0x09 && f.config[at + 3] == 1)
            .unwrap();
        f.config[first + 12..first + 16].copy_from_slice(&0x20u32.to_le_bytes());
        f.config[second + 4] = 2;
    });
    assert_eq!(
        probe::<HostHal, _>(&port_io(), &functions[0]).unwrap_err(),
        PciTransportError::StructureTooSmall {
            cfg_type: 1,
            length: 0x20,
            minimum: 0x38
        }
    );
}

#[test]
fn a_reserved_bar_number_is_ignored_and_a_modern_device_without_common_fails() {
    let (_p, functions) = hostile_virtio(|f| {
        let common = virtio_cap(f, 1);
        f.config[common + 4] = 7; // reserved: the driver must ignore this capability
    });
    let err = probe::<HostHal, _>(&port_io(), &functions[0]).unwrap_err();
    assert_eq!(err, PciTransportError::MissingStructure { cfg_type: 1 });
}

#[test]
fn port_io_and_ecam_read_the_same_configuration() {
    let q = qboot_pc();
    let port = port_io();
    let ecam = ecam();
    for device in [0u8, 3, 4, 5, 9] {
        let a = PciAddress::new(0, device, 0);
        for offset in (0..0x40).step_by(4) {
            assert_eq!(
                port.read32(a, offset).unwrap(),
                ecam.read32(a, offset).unwrap()
            );
        }
        assert_eq!(port.read8(a, 0x0e).unwrap(), ecam.read8(a, 0x0e).unwrap());
        assert_eq!(port.read16(a, 0x2e).unwrap(), ecam.read16(a, 0x2e).unwrap());
    }
    // An absent function reads as all ones.
    assert_eq!(
        port.read32(PciAddress::new(0, 9, 0), 0).unwrap(),
        0xffff_ffff
    );
    // Mechanism #1 stops at 256 bytes, ECAM at 4096; misaligned accesses are refused.
    let a = PciAddress::new(0, 3, 0);
    assert_eq!(
        port.read32(a, 0x100),
        Err(PciError::OffsetOutOfRange {
            offset: 0x100,
            size: 256
        })
    );
    assert!(ecam.read32(a, 0x100).is_ok());
    assert_eq!(
        ecam.read32(a, 0x1000),
        Err(PciError::OffsetOutOfRange {
            offset: 0x1000,
            size: 4096
        })
    );
    assert_eq!(
        port.read32(a, 2),
        Err(PciError::Misaligned {
            offset: 2,
            width: 4
        })
    );
    assert_eq!(
        port.read8(PciAddress::new(0, 32, 0), 0),
        Err(PciError::InvalidAddress(PciAddress::new(0, 32, 0)))
    );
    // Mechanism #1 puts the register's low bits on the data port.
    let before = q.platform.borrow().config_log.len();
    assert_eq!(port.read8(a, 0x0b).unwrap(), 0x02);
    let p = q.platform.borrow();
    let last = p.config_log.last().unwrap();
    assert_eq!(p.config_log.len(), before + 1);
    assert_eq!((last.offset, last.width, last.value), (0x0b, 1, 0x02));
}

#[test]
fn ecam_bus_range_is_respected() {
    let platform = PciPlatform::new();
    setup(&platform);
    let ecam = EcamConfig::<HostHal>::new(0xb000_0000, 0, 0, 3).unwrap();
    assert_eq!(
        ecam.read32(PciAddress::new(4, 0, 0), 0),
        Err(PciError::BusOutOfRange { bus: 4 })
    );
    assert_eq!(
        EcamConfig::<HostHal>::new(0xb000_0000, 0, 5, 3).unwrap_err(),
        PciError::InvalidBusRange { start: 5, end: 3 }
    );
}

#[test]
fn modern_structures_in_an_io_bar_work_through_ports() {
    use drivers::init;
    use tests::models::virtio::ModernBar;
    let platform = PciPlatform::new();
    let blk = core(2, BLK_MODERN_FEATURES);
    let layout = ModernLayout {
        common: 0,
        isr: 0x40,
        device: 0x80,
        notify: 0xc0,
        structure_len: 0x40,
        notify_multiplier: 2,
    };
    let mut f = FunctionModel::endpoint("io-modern", 0x1af4, 0x1042, 0x01_00_00, 1)
        .with_subsystem(0x1af4, 2)
        .with_bar(
            2,
            BarSpec::Io(0x100),
            Some(ModernBar::new(blk.clone(), layout)),
        );
    f.add_virtio_cap(1, 2, 0, 0x40, None);
    f.add_virtio_cap(3, 2, 0x40, 0x40, None);
    f.add_virtio_cap(4, 2, 0x80, 0x40, None);
    f.add_virtio_cap(2, 2, 0xc0, 0x40, Some(2));
    platform.borrow_mut().add(Attach::Root, 3, 0, f);
    setup(&platform);
    let access = port_io();
    let functions = pci::enumerate(&access, &test_windows()).unwrap();
    let mut t = probe::<HostHal, _>(&access, &functions[0]).unwrap();
    assert_eq!(t.kind(), TransportKind::PciModern);

    let mut device = init::begin(&mut t, 0).unwrap();
    let addrs = tests::models::separate_addresses(0x10_0000, 16);
    device.transport().setup_queue(1, &addrs).unwrap();
    assert_eq!(device.finish().unwrap(), 0x1_3000_0000);
    t.notify(1);

    let c = blk.borrow();
    assert!(c.queues[1].enabled);
    assert_eq!(c.notifications, vec![1]);
    assert_eq!(c.status_writes, vec![0, 1, 3, 0xb, 0xf]);
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    let p = platform.borrow();
    let io_base = functions[0].bar(2).unwrap().address;
    let last = p.space_log.last().unwrap();
    // The notify went to port BAR + 0xc0 + queue_notify_off (1) * multiplier (2).
    assert_eq!(
        (last.address, last.width, last.value),
        (io_base + 0xc2, 2, 1)
    );
    assert!(p
        .space_log
        .iter()
        .all(|r| r.space == tests::models::pci::SpaceKind::Io));
    assert!(p.violations.is_empty(), "{:?}", p.violations);
}
