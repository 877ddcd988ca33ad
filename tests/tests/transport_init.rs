//! The §3.1.1 initialisation sequence, register by register, on each
//! transport flavour; feature negotiation; the failure paths.

use drivers::features::{self, negotiate, FeatureNames};
use drivers::init::{self, InitError};
use drivers::pci::{self, PciAddress};
use drivers::transport::mmio::MmioTransport;
use drivers::transport::pci::probe_with;
use drivers::transport::pci::TransportPreference;
use drivers::transport::{
    AnyTransport, DeviceStatus, DeviceType, RingLayout, Transport, TransportError, TransportKind,
    TransportWrapper, RESET_MAX_PAUSE_US, RESET_TIMEOUT_US,
};
use tests::host_hal::HostHal;
use tests::models::pci::{
    attach, virtio_legacy, virtio_modern, Attach, PciPlatform, PlatformLayout,
};
use tests::models::virtio::{
    MmioWindow, ModernLayout, SharedCore, VirtioCore, ACKNOWLEDGE, DRIVER, DRIVER_OK, FAILED,
    FEATURES_OK,
};
use tests::models::{
    contiguous_addresses, separate_addresses, test_windows, trace_logging, Access, Dir, Region,
};

/// QEMU 7.2's modern virtio-blk offer (see shared/QEMU.md).
const BLK_MODERN: u64 = 0x101_3000_6e54;
/// A legacy offer with BAD_FEATURE (bit 30) set, as QEMU's legacy devices do.
const BLK_LEGACY: u64 = 0x7100_6ed4;
/// What a block driver might implement: SEG_MAX (2), BLK_SIZE (6), FLUSH (9).
const BLK_DRIVER: u64 = 1 << 2 | 1 << 6 | 1 << 9;
/// Where the tests pretend the ring memory is (transports never dereference it).
const RING: u64 = 0x1234_0000;

fn pci_transport(core: &SharedCore, modern: bool) -> AnyTransport<HostHal> {
    trace_logging();
    HostHal::clear_devices();
    let platform = PciPlatform::new();
    let model = if modern {
        virtio_modern(core, ModernLayout::default())
    } else {
        virtio_legacy(0x1001, core)
    };
    platform.borrow_mut().add(Attach::Root, 3, 0, model);
    attach(&platform, &PlatformLayout::default());
    let access = tests::host_hal::port_io_config();
    let functions = pci::enumerate(&access, &test_windows()).unwrap();
    let transport =
        probe_with::<HostHal, _>(&access, &functions[0], TransportPreference::PreferModern)
            .unwrap();
    assert_eq!(transport.location().to_string(), "pci 0000:00:03.0");
    core.borrow_mut().log.clear();
    transport
}

fn mmio_transport(core: &SharedCore, version: u32) -> MmioTransport<HostHal> {
    trace_logging();
    HostHal::clear_devices();
    HostHal::map_mmio(0xfeb0_0e00, 0x200, MmioWindow::new(core.clone(), version));
    let transport = MmioTransport::<HostHal>::new(0xfeb0_0e00, 0x200).unwrap();
    core.borrow_mut().log.clear();
    transport
}

fn assert_sequence(core: &SharedCore, expected: &[Access]) {
    let c = core.borrow();
    let actual = &c.log;
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(a, e, "access {i}: got `{a}`, expected `{e}`");
    }
    assert_eq!(
        actual.len(),
        expected.len(),
        "sequence length; extra: {:?}",
        &actual[actual.len().min(expected.len())..]
    );
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

/// Runs the whole sequence with one queue of `size`.
fn bring_up<T: Transport + ?Sized>(t: &mut T, driver: u64, size: u16) -> Result<u64, InitError> {
    let mut init = init::begin(t, driver)?;
    let addrs = match init.transport().ring_layout() {
        RingLayout::Separate => separate_addresses(RING, size),
        RingLayout::Contiguous { align } => contiguous_addresses(RING, size, u64::from(align)),
    };
    init.transport().setup_queue(0, &addrs)?;
    init.finish()
}

#[test]
fn modern_pci_sequence() {
    use Region::Common as C;
    let core = VirtioCore::new(2, BLK_MODERN, 1, 256, vec![0; 64]).shared();
    let mut t = pci_transport(&core, true);
    assert_eq!(t.kind(), TransportKind::PciModern);
    let features = bring_up(&mut t, BLK_DRIVER, 128).unwrap();
    // Offered & (driver | INDIRECT | EVENT_IDX | VERSION_1); RING_RESET (40) is not accepted.
    let accepted = 0x1_3000_0244;
    assert_eq!(features, accepted);
    let q = separate_addresses(RING, 128);
    assert_sequence(
        &core,
        &[
            Access::w(C, 0x14, 1, 0),
            Access::r(C, 0x14, 1, 0),
            Access::w(C, 0x14, 1, 0x01),
            Access::w(C, 0x14, 1, 0x03),
            Access::w(C, 0x00, 4, 0),
            Access::r(C, 0x04, 4, 0x3000_6e54),
            Access::w(C, 0x00, 4, 1),
            Access::r(C, 0x04, 4, 0x101),
            Access::w(C, 0x08, 4, 0),
            Access::w(C, 0x0c, 4, 0x3000_0244),
            Access::w(C, 0x08, 4, 1),
            Access::w(C, 0x0c, 4, 0x1),
            Access::w(C, 0x14, 1, 0x0b),
            Access::r(C, 0x14, 1, 0x0b),
            // queue 0
            Access::w(C, 0x16, 2, 0),
            Access::r(C, 0x18, 2, 256),
            Access::r(C, 0x1c, 2, 0),
            Access::w(C, 0x18, 2, 128),
            Access::w(C, 0x20, 4, q.desc & 0xffff_ffff),
            Access::w(C, 0x24, 4, q.desc >> 32),
            Access::w(C, 0x28, 4, q.driver & 0xffff_ffff),
            Access::w(C, 0x2c, 4, q.driver >> 32),
            Access::w(C, 0x30, 4, q.device & 0xffff_ffff),
            Access::w(C, 0x34, 4, q.device >> 32),
            Access::r(C, 0x1e, 2, 0),
            Access::w(C, 0x1c, 2, 1),
            Access::w(C, 0x14, 1, 0x0f),
            Access::r(C, 0x14, 1, 0x0f),
        ],
    );
    let c = core.borrow();
    assert_eq!(c.driver_features, accepted);
    assert_eq!(c.queues[0].size, 128);
    assert!(c.queues[0].enabled);
    assert_eq!(
        (c.queues[0].desc, c.queues[0].driver, c.queues[0].device),
        (q.desc, q.driver, q.device)
    );
}

#[test]
fn legacy_pci_sequence() {
    use Region::Legacy as L;
    let core = VirtioCore::new(2, BLK_LEGACY, 1, 256, vec![0; 32]).shared();
    let mut t = pci_transport(&core, false);
    assert_eq!(t.kind(), TransportKind::PciLegacy);
    assert_eq!(t.ring_layout(), RingLayout::Contiguous { align: 4096 });
    assert!(t.queue_size_is_fixed());
    let features = bring_up(&mut t, BLK_DRIVER, 256).unwrap();
    // No VERSION_1, no BAD_FEATURE (bit 30), no FEATURES_OK step.
    assert_eq!(features, 0x3000_0244);
    assert_sequence(
        &core,
        &[
            Access::w(L, 0x12, 1, 0),
            Access::r(L, 0x12, 1, 0),
            Access::w(L, 0x12, 1, 0x01),
            Access::w(L, 0x12, 1, 0x03),
            Access::r(L, 0x00, 4, BLK_LEGACY),
            Access::w(L, 0x04, 4, 0x3000_0244),
            // queue 0: size fixed at 256, PFN = address / 4096
            Access::w(L, 0x0e, 2, 0),
            Access::r(L, 0x0c, 2, 256),
            Access::r(L, 0x08, 4, 0),
            Access::w(L, 0x08, 4, RING >> 12),
            Access::w(L, 0x12, 1, 0x07),
            Access::r(L, 0x12, 1, 0x07),
        ],
    );
}

#[test]
fn mmio_v2_sequence() {
    use Region::Mmio as M;
    let core = VirtioCore::new(2, BLK_MODERN, 1, 1024, vec![0; 64]).shared();
    let mut t = mmio_transport(&core, 2);
    assert_eq!(t.kind(), TransportKind::MmioV2);
    let features = bring_up(&mut t, BLK_DRIVER, 256).unwrap();
    assert_eq!(features, 0x1_3000_0244);
    let q = separate_addresses(RING, 256);
    assert_sequence(
        &core,
        &[
            Access::w(M, 0x70, 4, 0),
            Access::r(M, 0x70, 4, 0),
            Access::w(M, 0x70, 4, 0x01),
            Access::w(M, 0x70, 4, 0x03),
            Access::w(M, 0x14, 4, 0),
            Access::r(M, 0x10, 4, 0x3000_6e54),
            Access::w(M, 0x14, 4, 1),
            Access::r(M, 0x10, 4, 0x101),
            Access::w(M, 0x24, 4, 0),
            Access::w(M, 0x20, 4, 0x3000_0244),
            Access::w(M, 0x24, 4, 1),
            Access::w(M, 0x20, 4, 0x1),
            Access::w(M, 0x70, 4, 0x0b),
            Access::r(M, 0x70, 4, 0x0b),
            Access::w(M, 0x30, 4, 0),
            Access::r(M, 0x44, 4, 0),
            Access::r(M, 0x34, 4, 1024),
            Access::w(M, 0x38, 4, 256),
            Access::w(M, 0x80, 4, q.desc & 0xffff_ffff),
            Access::w(M, 0x84, 4, q.desc >> 32),
            Access::w(M, 0x90, 4, q.driver & 0xffff_ffff),
            Access::w(M, 0x94, 4, q.driver >> 32),
            Access::w(M, 0xa0, 4, q.device & 0xffff_ffff),
            Access::w(M, 0xa4, 4, q.device >> 32),
            Access::w(M, 0x44, 4, 1),
            Access::w(M, 0x70, 4, 0x0f),
            Access::r(M, 0x70, 4, 0x0f),
        ],
    );
    assert!(core.borrow().queues[0].enabled);
}

#[test]
fn mmio_v1_sequence() {
    use Region::Mmio as M;
    // A legacy MMIO device may still show VERSION_1 in its high word; a
    // legacy driver must not accept it.
    let core = VirtioCore::new(2, BLK_LEGACY | features::VERSION_1, 1, 1024, vec![0; 64]).shared();
    let mut t = mmio_transport(&core, 1);
    assert_eq!(t.kind(), TransportKind::MmioV1);
    assert_eq!(t.ring_layout(), RingLayout::Contiguous { align: 4096 });
    let features = bring_up(&mut t, BLK_DRIVER, 128).unwrap();
    assert_eq!(features, 0x3000_0244);
    assert_sequence(
        &core,
        &[
            Access::w(M, 0x70, 4, 0),
            Access::r(M, 0x70, 4, 0),
            Access::w(M, 0x70, 4, 0x01),
            Access::w(M, 0x70, 4, 0x03),
            Access::w(M, 0x14, 4, 0),
            Access::r(M, 0x10, 4, BLK_LEGACY),
            Access::w(M, 0x14, 4, 1),
            Access::r(M, 0x10, 4, 0x1),
            Access::w(M, 0x24, 4, 0),
            Access::w(M, 0x20, 4, 0x3000_0244),
            Access::w(M, 0x24, 4, 1),
            Access::w(M, 0x20, 4, 0),
            // no FEATURES_OK on a legacy device
            Access::w(M, 0x28, 4, 4096),
            Access::w(M, 0x30, 4, 0),
            Access::r(M, 0x40, 4, 0),
            Access::r(M, 0x34, 4, 1024),
            Access::w(M, 0x38, 4, 128),
            Access::w(M, 0x3c, 4, 4096),
            Access::w(M, 0x40, 4, RING >> 12),
            Access::w(M, 0x70, 4, 0x07),
            Access::r(M, 0x70, 4, 0x07),
        ],
    );
    let c = core.borrow();
    assert_eq!(
        (c.guest_page_size, c.queues[0].align, c.queues[0].pfn),
        (4096, 4096, (RING >> 12) as u32)
    );
}

#[test]
fn a_device_behind_an_iommu_comes_up() {
    // QEMU's `iommu_platform=on`: ACCESS_PLATFORM offered, and FEATURES_OK
    // refused unless the driver accepts it (virtio 1.2 §6.1).
    for flavour in ["pci", "mmio"] {
        let offer = BLK_MODERN | features::ACCESS_PLATFORM;
        let core = VirtioCore::new(2, offer, 1, 256, vec![0; 64]).shared();
        core.borrow_mut().required_features = features::ACCESS_PLATFORM;
        let result = if flavour == "pci" {
            let mut t = pci_transport(&core, true);
            bring_up(&mut t, BLK_DRIVER, 64)
        } else {
            let mut t = mmio_transport(&core, 2);
            bring_up(&mut t, BLK_DRIVER, 64)
        };
        let accepted = result.unwrap_or_else(|e| panic!("{flavour}: {e:?}"));
        assert_ne!(accepted & features::ACCESS_PLATFORM, 0, "{flavour}");
        assert_ne!(core.borrow().status & FEATURES_OK, 0, "{flavour}");
    }
}

#[test]
fn refused_features_set_failed_and_return_an_error() {
    for flavour in ["pci", "mmio"] {
        let core = VirtioCore::new(2, BLK_MODERN, 1, 256, vec![0; 64]).shared();
        core.borrow_mut().refuse_features_ok = true;
        let result = if flavour == "pci" {
            let mut t = pci_transport(&core, true);
            bring_up(&mut t, BLK_DRIVER, 64)
        } else {
            let mut t = mmio_transport(&core, 2);
            bring_up(&mut t, BLK_DRIVER, 64)
        };
        let status = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER;
        assert_eq!(
            result,
            Err(InitError::FeaturesRefused {
                accepted: 0x1_3000_0244,
                status
            }),
            "{flavour}"
        );
        let c = core.borrow();
        // Reset, ACK, DRIVER, FEATURES_OK (refused), then FAILED on top of what the device shows.
        assert_eq!(
            c.status_writes,
            vec![
                0,
                ACKNOWLEDGE,
                ACKNOWLEDGE | DRIVER,
                ACKNOWLEDGE | DRIVER | FEATURES_OK,
                ACKNOWLEDGE | DRIVER | FAILED
            ],
            "{flavour}"
        );
        assert!(
            c.queues.iter().all(|q| !q.enabled),
            "no queue set up after a refusal"
        );
        assert!(c.violations.is_empty(), "{:?}", c.violations);
    }
}

#[test]
fn a_reset_that_never_finishes_times_out() {
    let core = VirtioCore::new(2, BLK_MODERN, 1, 256, vec![0; 64]).shared();
    {
        let mut c = core.borrow_mut();
        c.status = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
        c.reset_delay_reads = u32::MAX;
    }
    let mut t = mmio_transport(&core, 2);
    let clock_before = HostHal::fake_clock_us();
    let result = init::begin(&mut t, BLK_DRIVER).map(|_| ());
    let waited = HostHal::fake_clock_us() - clock_before;
    let Err(InitError::Transport(TransportError::ResetTimeout {
        polls,
        waited_us,
        last_status,
    })) = result
    else {
        panic!("expected a reset timeout, got {result:?}");
    };
    assert_eq!(last_status, 0x0f);
    // Real pauses through the Hal (a fake clock here), adding up to the
    // timeout: not a count of reads that a fast CPU gets through at once.
    assert_eq!(
        u64::from(waited_us),
        waited,
        "every pause went through Hal::delay_us"
    );
    assert!(
        (RESET_TIMEOUT_US..RESET_TIMEOUT_US + RESET_MAX_PAUSE_US).contains(&waited_us),
        "waited {waited_us} us"
    );
    // Pauses double from 1 us to RESET_MAX_PAUSE_US: about one read per
    // millisecond once the device is slow.
    let expected_polls = RESET_TIMEOUT_US / RESET_MAX_PAUSE_US + 11;
    assert!(
        (expected_polls - 2..=expected_polls + 2).contains(&polls),
        "{polls} reads"
    );
    let c = core.borrow();
    let status_reads = c
        .log
        .iter()
        .filter(|a| a.offset == 0x70 && a.dir == Dir::R)
        .count();
    // The polls, then one read to set FAILED on top of the status.
    assert_eq!(status_reads as u32, polls + 1);
    assert_eq!(c.status_writes, vec![0, 0x0f | FAILED]);
}

#[test]
fn a_slow_reset_is_waited_for() {
    let core = VirtioCore::new(2, BLK_MODERN, 1, 256, vec![0; 64]).shared();
    {
        let mut c = core.borrow_mut();
        c.status = ACKNOWLEDGE;
        c.reset_delay_reads = 3;
    }
    let mut t = pci_transport(&core, true);
    let clock_before = HostHal::fake_clock_us();
    t.reset().unwrap();
    // Pauses of 1, 2 and 4 us between the four reads.
    assert_eq!(HostHal::fake_clock_us() - clock_before, 7);
    let c = core.borrow();
    let reads: Vec<u64> = c
        .log
        .iter()
        .filter(|a| a.dir == Dir::R)
        .map(|a| a.value)
        .collect();
    assert_eq!(reads, vec![1, 1, 1, 0]);
}

#[test]
fn modern_without_version_1_fails() {
    let core = VirtioCore::new(2, 0x3000_6e54, 1, 256, vec![0; 64]).shared();
    let mut t = pci_transport(&core, true);
    let err = bring_up(&mut t, BLK_DRIVER, 64).unwrap_err();
    assert_eq!(
        err,
        InitError::Version1NotOffered {
            offered: 0x3000_6e54
        }
    );
    assert_eq!(
        core.borrow().status_writes.last(),
        Some(&(ACKNOWLEDGE | DRIVER | FAILED))
    );
    assert_eq!(core.borrow().driver_features, 0, "nothing accepted");
}

#[test]
fn needs_reset_after_driver_ok_is_reported() {
    let core = VirtioCore::new(2, BLK_MODERN, 1, 256, vec![0; 64]).shared();
    core.borrow_mut().needs_reset_on_driver_ok = true;
    let mut t = mmio_transport(&core, 2);
    let err = bring_up(&mut t, BLK_DRIVER, 64).unwrap_err();
    assert!(
        matches!(err, InitError::DeviceNeedsReset { status } if status.contains(DeviceStatus::DEVICE_NEEDS_RESET))
    );
    assert_eq!(
        core.borrow().status_writes.last().copied().unwrap() & FAILED,
        FAILED
    );
    assert!(init::check_device_status(&t).is_err());
}

#[test]
fn abandoning_setup_marks_the_device_failed() {
    let core = VirtioCore::new(2, BLK_MODERN, 1, 256, vec![0; 64]).shared();
    let mut t = mmio_transport(&core, 2);
    {
        let mut init = init::begin(&mut t, BLK_DRIVER).unwrap();
        // Queue 5 does not exist: the driver bails out with `?`, dropping `init`.
        let err = init
            .transport()
            .setup_queue(5, &separate_addresses(RING, 8));
        assert_eq!(err, Err(TransportError::NoSuchQueue(5)));
    }
    let writes = core.borrow().status_writes.clone();
    assert_eq!(
        writes.last(),
        Some(&(ACKNOWLEDGE | DRIVER | FEATURES_OK | FAILED))
    );
    assert!(!writes.iter().any(|s| s & DRIVER_OK != 0));
}

#[test]
fn the_driver_never_accepts_more_than_offered() {
    // Each bit: offered or not, implemented or not; on every transport kind.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let kinds = [
        TransportKind::PciModern,
        TransportKind::PciLegacy,
        TransportKind::MmioV1,
        TransportKind::MmioV2,
    ];
    for _ in 0..2000 {
        let (offered, driver) = (next(), next());
        for kind in kinds {
            let accepted = negotiate(offered, driver, features::SHARED_RING_FEATURES, kind);
            assert_eq!(accepted & !offered, 0, "accepted a bit not offered");
            assert_eq!(accepted & features::BAD_FEATURE, 0);
            // ORDER_PLATFORM: the queue code implements it (queue/order.rs).
            let implemented = driver
                | features::SHARED_RING_FEATURES
                | features::VERSION_1
                | features::ORDER_PLATFORM
                | features::ACCESS_PLATFORM;
            assert_eq!(
                accepted & !implemented,
                0,
                "accepted a bit nobody implements"
            );
            if !kind.is_legacy() {
                assert_eq!(
                    accepted & features::ORDER_PLATFORM,
                    offered & features::ORDER_PLATFORM,
                    "ORDER_PLATFORM is accepted whenever a modern device offers it"
                );
            }
            if kind.is_legacy() {
                assert_eq!(accepted & features::VERSION_1, 0);
                // The packed ring needs VERSION_1: never on a legacy transport.
                assert_eq!(accepted & features::RING_PACKED, 0);
                assert_eq!(accepted & features::ACCESS_PLATFORM, 0);
            } else {
                assert_eq!(
                    accepted & features::VERSION_1,
                    offered & features::VERSION_1
                );
                // Every address comes from the Hal, so a device behind an IOMMU is welcome.
                assert_eq!(
                    accepted & features::ACCESS_PLATFORM,
                    offered & features::ACCESS_PLATFORM
                );
            }
            // Everything offered and implemented is accepted.
            let wanted = offered
                & (driver | features::SHARED_RING_FEATURES)
                & !features::BAD_FEATURE
                & !features::VERSION_1
                & if kind.is_legacy() {
                    !(features::RING_PACKED | features::ACCESS_PLATFORM)
                } else {
                    !0
                };
            assert_eq!(accepted & wanted, wanted);
        }
    }
}

#[test]
fn bad_feature_is_refused_even_if_the_driver_claims_it() {
    let core = VirtioCore::new(3, 0x7900_0006, 2, 256, vec![0; 12]).shared();
    let mut t = pci_transport(&core, false);
    let features = bring_up(&mut t, u64::MAX, 256).unwrap();
    assert_eq!(features, 0x3900_0006);
    assert_eq!(core.borrow().driver_features, 0x3900_0006);
}

#[test]
fn feature_names_for_logs() {
    let names = FeatureNames::new(DeviceType::Block, 0x1_3000_0244 | 1 << 45).to_string();
    assert_eq!(
        names,
        "BLK_SEG_MAX | BLK_BLK_SIZE | BLK_FLUSH | RING_INDIRECT_DESC | RING_EVENT_IDX | VERSION_1 | bit 45"
    );
    let net = FeatureNames::new(DeviceType::Net, 1 << 5 | 1 << 16).to_string();
    assert_eq!(net, "NET_MAC | NET_STATUS");
    assert_eq!(
        FeatureNames::new(DeviceType::Console, 0).to_string(),
        "(none)"
    );
    assert_eq!(
        DeviceStatus::from_bits_retain(0x8b).to_string(),
        "0x8b (ACKNOWLEDGE|DRIVER|FEATURES_OK|FAILED)"
    );
    let _ = PciAddress::new(0, 0, 0);
}

// ----- wrapping a transport (drivers/src/transport/wrapper.rs) -------------

/// A wrapper that changes one moment (it counts queues going live and
/// remembers the last status written) and nothing else.
struct CountingQueues<T> {
    inner: T,
    queues_set_up: Vec<u16>,
    statuses: Vec<DeviceStatus>,
}

impl<T: Transport> TransportWrapper for CountingQueues<T> {
    type Inner = T;

    fn inner(&self) -> &T {
        &self.inner
    }

    fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    fn before_setup_queue(&mut self, queue: u16) {
        self.queues_set_up.push(queue);
    }

    fn before_set_status(&mut self, status: DeviceStatus) {
        self.statuses.push(status);
    }
}

/// Runs a bring-up, a notify, a config read and an interrupt acknowledge,
/// returning the register accesses they made.
fn exercise<T: Transport>(t: &mut T, core: &SharedCore) -> Vec<Access> {
    // Legacy PCI takes only the device's own size (256 here).
    let size = if t.queue_size_is_fixed() { 256 } else { 128 };
    bring_up(t, BLK_DRIVER, size).unwrap();
    t.notify(0);
    let mut config = [0u8; 8];
    t.read_config(0, &mut config).unwrap();
    core.borrow_mut().isr = 1;
    assert_eq!(
        t.ack_interrupt(),
        drivers::transport::InterruptStatus::QUEUE
    );
    let log = core.borrow().log.clone();
    assert!(core.borrow().violations.is_empty());
    log
}

#[test]
fn a_wrapper_runs_its_hooks_and_delegates_everything_else_unchanged() {
    for version in [1, 2] {
        let core = VirtioCore::new(2, BLK_MODERN, 1, 256, vec![7; 64]).shared();
        let mut bare = mmio_transport(&core, version);
        let expected = exercise(&mut bare, &core);

        let core = VirtioCore::new(2, BLK_MODERN, 1, 256, vec![7; 64]).shared();
        let mut wrapped = CountingQueues {
            inner: mmio_transport(&core, version),
            queues_set_up: Vec::new(),
            statuses: Vec::new(),
        };
        assert_eq!(wrapped.kind(), bare_kind(version));
        assert_eq!(wrapped.device_type(), DeviceType::Block);
        let actual = exercise(&mut wrapped, &core);
        assert_eq!(
            actual, expected,
            "mmio v{version}: the same register accesses"
        );
        assert_eq!(
            wrapped.queues_set_up,
            vec![0],
            "the hook ran once per queue"
        );
        let last = wrapped.statuses.last().copied();
        assert!(
            last.is_some_and(|s| s.contains(DeviceStatus::DRIVER_OK)),
            "the status hook saw DRIVER_OK: {:?}",
            wrapped.statuses
        );
    }
}

fn bare_kind(version: u32) -> TransportKind {
    if version == 1 {
        TransportKind::MmioV1
    } else {
        TransportKind::MmioV2
    }
}

#[test]
fn any_transport_reaches_each_flavour_with_the_same_accesses() {
    // One bring-up through AnyTransport and one on the flavour itself make
    // the same accesses, notify (the direct per-request path) included.
    let core = VirtioCore::new(2, BLK_MODERN, 1, 256, vec![7; 64]).shared();
    let mut bare = mmio_transport(&core, 2);
    let expected = exercise(&mut bare, &core);
    let core = VirtioCore::new(2, BLK_MODERN, 1, 256, vec![7; 64]).shared();
    let mut any = AnyTransport::from(mmio_transport(&core, 2));
    assert_eq!(exercise(&mut any, &core), expected);
    assert!(matches!(
        any.interrupt_status(),
        drivers::irq::InterruptStatusRegister::Mmio(_)
    ));
    for modern in [true, false] {
        let core = VirtioCore::new(2, BLK_MODERN, 1, 256, vec![7; 64]).shared();
        let mut any = pci_transport(&core, modern);
        let log = exercise(&mut any, &core);
        let notify = log
            .iter()
            .filter(|a| a.dir == Dir::W && matches!(a.region, Region::Notify | Region::Legacy))
            .filter(|a| a.region == Region::Notify || a.offset == 0x10)
            .count();
        assert_eq!(notify, 1, "modern={modern}: one notify write: {log:?}");
    }
}
