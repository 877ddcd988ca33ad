//! Device configuration access (§2.5, §4.1.4.8, §4.2.2), notifications,
//! interrupts, MSI-X vectors and queue-setup checks on every transport.

use drivers::pci;
use drivers::transport::mmio::MmioTransport;
use drivers::transport::pci::{probe_with, TransportPreference};
use drivers::transport::{
    read_config_consistent, AnyTransport, InterruptStatus, Transport, TransportError,
    CONFIG_READ_ATTEMPTS, NO_VECTOR,
};
use tests::host_hal::HostHal;
use tests::models::pci::{
    attach, virtio_legacy, virtio_modern, virtio_transitional, Attach, PciPlatform, PlatformLayout,
};
use tests::models::virtio::{ConfigChange, MmioWindow, ModernLayout, SharedCore, VirtioCore};
use tests::models::{
    contiguous_addresses, separate_addresses, test_windows, trace_logging, Access, Dir, Region,
};

const OLD_CAPACITY: u64 = 0x0000_0001_0000_0000;
const NEW_CAPACITY: u64 = 0x0000_0002_ffff_ffff;

/// A virtio-blk configuration: capacity (u64 at 0), blk_size (u32 at 20).
fn blk_config(capacity: u64, blk_size: u32) -> Vec<u8> {
    let mut config = vec![0u8; 64];
    config[0..8].copy_from_slice(&capacity.to_le_bytes());
    config[20..24].copy_from_slice(&blk_size.to_le_bytes());
    config
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flavour {
    Modern,
    Legacy,
    Transitional,
    MmioV1,
    MmioV2,
}

fn transport(core: &SharedCore, flavour: Flavour) -> AnyTransport<HostHal> {
    trace_logging();
    HostHal::clear_devices();
    let t: AnyTransport<HostHal> = match flavour {
        Flavour::MmioV1 | Flavour::MmioV2 => {
            let version = if flavour == Flavour::MmioV1 { 1 } else { 2 };
            HostHal::map_mmio(0xfeb0_0000, 0x200, MmioWindow::new(core.clone(), version));
            MmioTransport::<HostHal>::new(0xfeb0_0000, 0x200)
                .unwrap()
                .into()
        }
        _ => {
            let platform = PciPlatform::new();
            let model = match flavour {
                Flavour::Modern => virtio_modern(core, ModernLayout::default()),
                Flavour::Legacy => virtio_legacy(0x1001, core),
                _ => virtio_transitional(0x1001, core, ModernLayout::default()),
            };
            platform.borrow_mut().add(Attach::Root, 3, 0, model);
            attach(&platform, &PlatformLayout::default());
            let access = tests::host_hal::port_io_config();
            let functions = pci::enumerate(&access, &test_windows()).unwrap();
            let preference = if flavour == Flavour::Transitional {
                TransportPreference::ForceLegacy
            } else {
                TransportPreference::PreferModern
            };
            probe_with::<HostHal, _>(&access, &functions[0], preference).unwrap()
        }
    };
    core.borrow_mut().log.clear();
    t
}

fn config_reads(core: &SharedCore, region: Region) -> Vec<Access> {
    core.borrow()
        .log
        .iter()
        .copied()
        .filter(|a| a.region == region && a.dir == Dir::R)
        .collect()
}

#[test]
fn generation_counter_catches_a_change_in_the_middle_of_a_read() {
    for flavour in [Flavour::Modern, Flavour::MmioV2] {
        let core = VirtioCore::new(2, 0, 1, 256, blk_config(OLD_CAPACITY, 512)).shared();
        // The device changes its configuration right after the low half is read.
        core.borrow_mut().config_change = Some(ConfigChange {
            after_reads: 1,
            new_config: blk_config(NEW_CAPACITY, 4096),
        });
        let mut t = transport(&core, flavour);
        let (capacity, blk_size) =
            read_config_consistent(&mut t, |c| Ok((c.u64(0)?, c.u32(20)?))).unwrap();
        // A torn read would give 0x2_0000_0000 (old low half, new high half).
        assert_eq!((capacity, blk_size), (NEW_CAPACITY, 4096), "{flavour:?}");

        let log = core.borrow().log.clone();
        let (generation_reads, field_reads): (Vec<Access>, Vec<Access>) = match flavour {
            Flavour::Modern => (
                log.iter()
                    .copied()
                    .filter(|a| a.region == Region::Common && a.offset == 0x15)
                    .collect(),
                log.iter()
                    .copied()
                    .filter(|a| a.region == Region::DeviceConfig)
                    .collect(),
            ),
            _ => (
                log.iter().copied().filter(|a| a.offset == 0xfc).collect(),
                log.iter().copied().filter(|a| a.offset >= 0x100).collect(),
            ),
        };
        // before, after (moved: retry), before, after (equal).
        let generations: Vec<u64> = generation_reads.iter().map(|a| a.value).collect();
        assert_eq!(generations, vec![0, 1, 1, 1], "{flavour:?}");
        // Two passes of low, high, blk_size, all 32-bit accesses.
        let offsets: Vec<(u64, usize)> = field_reads
            .iter()
            .map(|a| (a.offset & 0xff, a.width))
            .collect();
        assert_eq!(offsets, [(0, 4), (4, 4), (20, 4)].repeat(2), "{flavour:?}");
    }
}

#[test]
fn legacy_config_is_read_bytewise_until_two_reads_agree() {
    for flavour in [Flavour::Legacy, Flavour::MmioV1] {
        let core = VirtioCore::new(2, 0, 1, 256, blk_config(0x1122_3344, 512)).shared();
        core.borrow_mut().config_change = Some(ConfigChange {
            after_reads: 2,
            new_config: blk_config(0xaabb_ccdd, 512),
        });
        let mut t = transport(&core, flavour);
        let capacity_low = read_config_consistent(&mut t, |c| c.u32(0)).unwrap();
        assert_eq!(capacity_low, 0xaabb_ccdd, "{flavour:?}");
        let region = if flavour == Flavour::Legacy {
            Region::Legacy
        } else {
            Region::Mmio
        };
        let reads = config_reads(&core, region);
        // Three passes of four single bytes: torn (0xaabb3344), new, new.
        assert_eq!(reads.len(), 12, "{flavour:?}: {reads:?}");
        assert!(reads.iter().all(|a| a.width == 1));
        assert!(
            !core.borrow().log.iter().any(|a| a.offset == 0xfc),
            "no generation register in v1"
        );
    }
}

#[test]
fn a_configuration_that_never_settles_is_an_error() {
    let core = VirtioCore::new(2, 0, 1, 256, blk_config(1, 512)).shared();
    let mut t = transport(&core, Flavour::Modern);
    let mut calls = 0;
    let result = read_config_consistent(&mut t, |c| {
        calls += 1;
        // Simulate a device that changes on every pass.
        core.borrow_mut().generation += 1;
        c.u32(20)
    });
    assert_eq!(
        result,
        Err(TransportError::ConfigUnstable {
            attempts: CONFIG_READ_ATTEMPTS
        })
    );
    assert_eq!(calls, CONFIG_READ_ATTEMPTS);
}

#[test]
fn legacy_device_config_moves_when_msix_is_enabled() {
    let mut config = vec![0u8; 32];
    config[..6].copy_from_slice(&[0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    let core = VirtioCore::new(1, 0, 2, 256, config).shared();
    let mut t = transport(&core, Flavour::Transitional);
    let mut mac = [0u8; 6];
    t.read_config(0, &mut mac).unwrap();
    assert_eq!(mac, [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    let first = config_reads(&core, Region::Legacy)[0];
    assert_eq!((first.offset, first.width), (20, 1));
    // Without MSI-X there are no vector registers.
    assert!(matches!(
        t.set_config_msix_vector(1),
        Err(TransportError::Unsupported(_))
    ));

    core.borrow_mut().msix_enabled = true;
    t.set_msix_enabled(true);
    core.borrow_mut().log.clear();
    let mut mac = [0u8; 6];
    t.read_config(0, &mut mac).unwrap();
    assert_eq!(mac, [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    let first = config_reads(&core, Region::Legacy)[0];
    assert_eq!((first.offset, first.width), (24, 1));
    assert_eq!(t.config_space_size(), 0x40 - 24);

    // With MSI-X: vectors at 0x14 / 0x16, checked by reading back.
    t.set_config_msix_vector(0).unwrap();
    t.set_queue_msix_vector(1, 1).unwrap();
    assert_eq!(core.borrow().config_msix_vector, 0);
    assert_eq!(core.borrow().queues[1].msix_vector, 1);
    core.borrow_mut().accept_msix_vectors = false;
    assert_eq!(
        t.set_queue_msix_vector(0, 1),
        Err(TransportError::MsixVectorRejected {
            requested: 1,
            read_back: NO_VECTOR
        })
    );
}

#[test]
fn modern_field_widths_and_bounds() {
    let mut config = blk_config(0x1_0000_0200, 512);
    config[34..36].copy_from_slice(&0x0102u16.to_le_bytes());
    let core = VirtioCore::new(2, 0, 1, 256, config).shared();
    let mut t = transport(&core, Flavour::Modern);
    let mut buf = [0u8; 2];
    t.read_config(34, &mut buf).unwrap();
    assert_eq!(u16::from_le_bytes(buf), 0x0102);
    let mut buf8 = [0u8; 8];
    t.read_config(0, &mut buf8).unwrap();
    assert_eq!(u64::from_le_bytes(buf8), 0x1_0000_0200);
    let widths: Vec<(u64, usize)> = config_reads(&core, Region::DeviceConfig)
        .iter()
        .map(|a| (a.offset, a.width))
        .collect();
    assert_eq!(widths, vec![(34, 2), (0, 4), (4, 4)]);

    // The modern device config structure is 0x1000 bytes long in QEMU's layout.
    let size = t.config_space_size();
    assert_eq!(size, 0x1000);
    let mut big = [0u8; 4];
    assert_eq!(
        t.read_config(size - 2, &mut big),
        Err(TransportError::ConfigOutOfRange {
            offset: size - 2,
            len: 4,
            size
        })
    );
    assert!(
        read_config_consistent(&mut t, |c| c.u32(2)).is_err(),
        "misaligned field"
    );

    t.write_config(20, &4096u32.to_le_bytes()).unwrap();
    assert_eq!(&core.borrow().config[20..24], &4096u32.to_le_bytes());
    assert!(
        core.borrow().violations.is_empty(),
        "{:?}",
        core.borrow().violations
    );
}

#[test]
fn notify_writes_the_precomputed_address() {
    for flavour in [Flavour::Modern, Flavour::Legacy, Flavour::MmioV2] {
        let core = VirtioCore::new(1, 0, 3, 256, vec![0; 16]).shared();
        // Queue 2's notify_off is 7 (multiplier 4): notify lands at 0x1c.
        core.borrow_mut().queues[2].notify_off = 7;
        let mut t = transport(&core, flavour);
        for queue in 0..3u16 {
            let addrs = if t.queue_size_is_fixed() {
                contiguous_addresses(0x10_0000 * (u64::from(queue) + 1), 256, 4096)
            } else {
                separate_addresses(0x10_0000 * (u64::from(queue) + 1), 64)
            };
            t.setup_queue(queue, &addrs).unwrap();
        }
        core.borrow_mut().log.clear();
        t.notify(2);
        t.notify(0);
        let c = core.borrow();
        assert_eq!(c.notifications, vec![2, 0], "{flavour:?}");
        let writes: Vec<Access> = c.log.clone();
        assert_eq!(writes.len(), 2, "one register write per notify: {writes:?}");
        if flavour == Flavour::Modern {
            assert_eq!(writes[0], Access::w(Region::Notify, 0x1c, 2, 2));
            assert_eq!(writes[1], Access::w(Region::Notify, 0x0, 2, 0));
        }
        assert!(c.violations.is_empty(), "{flavour:?}: {:?}", c.violations);
    }
}

#[test]
fn a_notify_offset_outside_the_notify_structure_is_an_error() {
    let core = VirtioCore::new(1, 0, 1, 256, vec![0; 16]).shared();
    core.borrow_mut().queues[0].notify_off = 0x400; // * 4 = 0x1000: one past the end
    let mut t = transport(&core, Flavour::Modern);
    let err = t
        .setup_queue(0, &separate_addresses(0x10_0000, 64))
        .unwrap_err();
    assert_eq!(
        err,
        TransportError::NotifyOutOfRange {
            queue: 0,
            offset: 0x1000,
            len: 0x1000
        }
    );
    // The queue was not enabled, and notifying it writes nothing.
    assert!(!core.borrow().queues[0].enabled);
    core.borrow_mut().log.clear();
    t.notify(0);
    assert!(core.borrow().log.is_empty());
}

#[test]
fn queue_setup_checks_sizes_and_layouts() {
    let core = VirtioCore::new(1, 0, 1, 256, vec![0; 16]).shared();
    let mut legacy = transport(&core, Flavour::Legacy);
    assert_eq!(
        legacy.setup_queue(0, &contiguous_addresses(0x10_0000, 128, 4096)),
        Err(TransportError::FixedQueueSize {
            queue: 0,
            requested: 128,
            required: 256
        })
    );
    let mut wrong = contiguous_addresses(0x10_0000, 256, 4096);
    wrong.device += 4096;
    assert!(matches!(
        legacy.setup_queue(0, &wrong),
        Err(TransportError::LayoutMismatch {
            what: "device area",
            ..
        })
    ));
    assert_eq!(
        legacy.setup_queue(0, &contiguous_addresses(0x1_0000_0000_0000, 256, 4096)),
        Err(TransportError::AddressTooHigh {
            what: "legacy queue",
            addr: 0x1_0000_0000_0000
        })
    );
    assert_eq!(legacy.max_queue_size(1), Ok(0));
    assert_eq!(
        legacy.setup_queue(1, &contiguous_addresses(0x10_0000, 256, 4096)),
        Err(TransportError::NoSuchQueue(1))
    );
    legacy
        .setup_queue(0, &contiguous_addresses(0x10_0000, 256, 4096))
        .unwrap();
    assert_eq!(
        legacy.setup_queue(0, &contiguous_addresses(0x20_0000, 256, 4096)),
        Err(TransportError::QueueAlreadyActive(0))
    );

    let core = VirtioCore::new(1, 0, 1, 256, vec![0; 16]).shared();
    let mut modern = transport(&core, Flavour::Modern);
    let mut misaligned = separate_addresses(0x10_0000, 64);
    misaligned.desc += 8;
    assert_eq!(
        modern.setup_queue(0, &misaligned),
        Err(TransportError::Misaligned {
            what: "descriptor table",
            addr: 0x10_0008,
            align: 16
        })
    );
    assert_eq!(
        modern.setup_queue(0, &separate_addresses(0x10_0000, 512)),
        Err(TransportError::InvalidQueueSize {
            queue: 0,
            requested: 512,
            max: 256
        })
    );
    assert!(
        core.borrow()
            .log
            .iter()
            .all(|a| a.dir == Dir::R || a.offset == 0x16),
        "nothing programmed"
    );
}

#[test]
fn interrupts_are_acknowledged() {
    let core = VirtioCore::new(1, 0, 1, 256, vec![0; 16]).shared();
    let mut t = transport(&core, Flavour::Modern);
    core.borrow_mut().isr = 0x3;
    assert_eq!(
        t.ack_interrupt(),
        InterruptStatus::QUEUE | InterruptStatus::CONFIG
    );
    assert_eq!(
        t.ack_interrupt(),
        InterruptStatus::empty(),
        "ISR clears on read"
    );

    let core = VirtioCore::new(1, 0, 1, 256, vec![0; 16]).shared();
    let mut t = transport(&core, Flavour::MmioV2);
    core.borrow_mut().isr = 0x1;
    assert_eq!(t.ack_interrupt(), InterruptStatus::QUEUE);
    assert_eq!(
        core.borrow().log,
        vec![
            Access::r(Region::Mmio, 0x60, 4, 1),
            Access::w(Region::Mmio, 0x64, 4, 1)
        ]
    );
    assert_eq!(core.borrow().isr, 0);
    assert!(matches!(
        t.set_config_msix_vector(0),
        Err(TransportError::Unsupported(_))
    ));
}

#[test]
fn modern_msix_vectors_are_checked() {
    let core = VirtioCore::new(1, 0, 2, 256, vec![0; 16]).shared();
    let mut any = transport(&core, Flavour::Modern);
    // Device drivers may also hold a `dyn Transport`.
    let t: &mut dyn Transport = &mut any;
    let mut four = [0u8; 4];
    t.read_config(0, &mut four).unwrap();
    t.set_config_msix_vector(0).unwrap();
    t.set_queue_msix_vector(1, 2).unwrap();
    assert_eq!(core.borrow().queues[1].msix_vector, 2);
    core.borrow_mut().accept_msix_vectors = false;
    assert_eq!(
        t.set_config_msix_vector(3),
        Err(TransportError::MsixVectorRejected {
            requested: 3,
            read_back: NO_VECTOR
        })
    );
}
