//! The virtio-rng driver (`drivers::rng`) against the entropy device model
//! (`tests/src/rng_model.rs`), through the register-level transports:
//! virtio-mmio v1 and v2, modern and legacy PCI. The driver writes real
//! registers; the model (rust-vmm's `virtio-queue` underneath) reads the
//! ring it set up, fills the buffers and checks §5.4.6.1. Hostile variants
//! answer short, answer nothing, lie about the length, complete the wrong
//! descriptor or stall.

use drivers::device::{BoundedWait, DeviceError, Wait, WaitTimeout};
use drivers::features;
use drivers::pci::{self, PciAddress};
use drivers::queue::{QueueError, Ring};
use drivers::rng::{RngDevice, RngError, REQUEST_BYTES};
use drivers::transport::mmio::MmioTransport;
use drivers::transport::{DeviceType, Transport, TransportKind};
use tests::host_hal::HostHal;
use tests::models::pci::{
    attach, virtio_legacy, virtio_modern, Attach, PciPlatform, PlatformLayout,
};
use tests::models::virtio::{MmioWindow, ModernLayout, SharedCore, VirtioCore};
use tests::models::{test_windows, trace_logging};
use tests::rng_model::{RngBehaviour, RngModel, SharedRngModel};

const ACK: u8 = 1;
const DRIVER: u8 = 2;
const DRIVER_OK: u8 = 4;
const FEATURES_OK: u8 = 8;
/// A legacy device has no FEATURES_OK step (§3.1.2).
const ONE_LEGACY_BRING_UP: [u8; 4] = [0, ACK, ACK | DRIVER, ACK | DRIVER | DRIVER_OK];
const ONE_BRING_UP: [u8; 5] = [
    0,
    ACK,
    ACK | DRIVER,
    ACK | DRIVER | FEATURES_OK,
    ACK | DRIVER | FEATURES_OK | DRIVER_OK,
];

/// A virtio-mmio window at `base` (version 1 or 2) with an entropy model
/// behind it.
fn mmio_rng<T: Transport>(
    base: u64,
    version: u32,
    behaviour: RngBehaviour,
    make: impl FnOnce(u64) -> T,
) -> (T, SharedCore, SharedRngModel) {
    trace_logging();
    let offered = if version == 1 {
        features::RING_INDIRECT_DESC | features::RING_EVENT_IDX
    } else {
        RngModel::MODERN_FEATURES
    };
    let core = RngModel::core(offered, 64).shared();
    HostHal::map_mmio(base, 0x200, MmioWindow::new(core.clone(), version));
    let model = RngModel::new(behaviour, base).shared();
    (make(base), core, model)
}

fn mmio(base: u64) -> MmioTransport<HostHal> {
    MmioTransport::<HostHal>::new(base, 0x200).expect("a virtio-mmio device")
}

/// The device runs between two looks of the driver.
fn device_runs(core: &SharedCore, model: &SharedRngModel, limit: u64) -> BoundedWait<impl FnMut()> {
    let (core, model) = (core.clone(), model.clone());
    BoundedWait::new(limit, move || {
        let mut m = model.borrow_mut();
        m.sync_with_core(&mut core.borrow_mut());
        m.step();
        m.sync_with_core(&mut core.borrow_mut());
    })
}

/// A wait that "sleeps until an interrupt": the driver must arm the
/// queue's interrupts before each wait; the device then runs.
struct InterruptingWait<F: FnMut()> {
    inner: BoundedWait<F>,
}

impl<F: FnMut()> Wait for InterruptingWait<F> {
    fn wait(&mut self) -> Result<(), WaitTimeout> {
        self.inner.wait()
    }

    fn sleeps_until_interrupt(&self) -> bool {
        true
    }
}

fn assert_clean(core: &SharedCore, model: &SharedRngModel) {
    let m = model.borrow();
    assert!(m.violations.is_empty(), "{:?}", m.violations);
    assert!(
        core.borrow().violations.is_empty(),
        "{:?}",
        core.borrow().violations
    );
}

/// Reads `n` bytes and checks they are exactly the model's next `n`.
fn read_and_compare<T: Transport>(
    rng: &mut RngDevice<HostHal, T>,
    core: &SharedCore,
    model: &SharedRngModel,
    n: usize,
) -> Vec<u8> {
    let before = model.borrow().given.len();
    let mut out = vec![0u8; n];
    rng.fill(&mut out, &mut device_runs(core, model, 100))
        .expect("the device answers");
    let m = model.borrow();
    assert_eq!(
        &m.given[before..],
        &out[..],
        "the bytes are the device's, in order"
    );
    out
}

#[test]
fn mmio_v2_brings_up_with_one_queue_and_returns_the_devices_bytes() {
    let base = 0xfeb0_2000;
    let (transport, core, model) = mmio_rng(base, 2, RngBehaviour::Fill, mmio);
    let mut rng = RngDevice::<HostHal, _>::new(transport, features::SHARED_RING_FEATURES)
        .expect("the device comes up");
    assert_eq!(core.borrow().status_writes, ONE_BRING_UP, "§3.1.1, once");
    assert_eq!(
        rng.features(),
        features::VERSION_1 | features::RING_EVENT_IDX,
        "no device bits exist (§5.4.3): VERSION_1 and event indices; no indirect tables for one-descriptor requests"
    );
    assert_eq!(rng.transport().kind(), TransportKind::MmioV2);
    assert_eq!(rng.queue().size(), 4, "a small ring: one request in flight");

    let first = read_and_compare(&mut rng, &core, &model, 1000);
    let second = read_and_compare(&mut rng, &core, &model, 1000);
    assert_ne!(first, second, "two reads give different bytes");
    assert_eq!(
        model.borrow().requests[..4],
        [REQUEST_BYTES as u32, 256, 256, 232],
        "1000 bytes: requests of at most REQUEST_BYTES (256)"
    );
    assert_eq!(rng.stats().bytes, 2000);
    assert_eq!(rng.stats().requests, 8);
    assert_eq!(core.borrow().isr, 0, "polling: interrupts stay off");
    assert_clean(&core, &model);
    // Its ring and request buffer are its device's (behind an IOMMU, no other can reach them).
    HostHal::assert_dma_only_for(rng.transport().dma_owner());
    drop(rng);
    assert_eq!(
        core.borrow().status_writes.last(),
        Some(&0),
        "dropped: reset"
    );
    HostHal::clear_devices();
}

#[test]
fn mmio_v1_legacy_works_without_version_1() {
    let base = 0xfeb0_2200;
    let (transport, core, model) = mmio_rng(base, 1, RngBehaviour::Fill, mmio);
    let mut rng = RngDevice::<HostHal, _>::new(transport, features::SHARED_RING_FEATURES)
        .expect("the legacy device comes up");
    assert_eq!(core.borrow().status_writes, ONE_LEGACY_BRING_UP);
    assert_eq!(rng.features() & features::VERSION_1, 0);
    assert_eq!(rng.transport().kind(), TransportKind::MmioV1);
    read_and_compare(&mut rng, &core, &model, 300);
    assert_clean(&core, &model);
    drop(rng);
    HostHal::clear_devices();
}

#[test]
fn modern_and_legacy_pci_bring_up_and_read() {
    trace_logging();
    HostHal::clear_devices();
    let modern = RngModel::core(RngModel::MODERN_FEATURES, 256).shared();
    let legacy = RngModel::core(features::RING_EVENT_IDX | (1 << 30), 256).shared();
    let platform = PciPlatform::new();
    {
        let mut p = platform.borrow_mut();
        p.add(
            Attach::Root,
            3,
            0,
            virtio_modern(&modern, ModernLayout::default()),
        );
        p.add(Attach::Root, 4, 0, virtio_legacy(0x1005, &legacy));
    }
    attach(&platform, &PlatformLayout::default());
    let access = tests::host_hal::port_io_config();
    let functions = pci::enumerate(&access, &test_windows()).expect("enumeration");
    for (device, core, kind) in [
        (3, &modern, TransportKind::PciModern),
        (4, &legacy, TransportKind::PciLegacy),
    ] {
        let function = functions
            .iter()
            .find(|f| f.address == PciAddress::new(0, device, 0))
            .expect("enumerated");
        let transport = drivers::transport::pci::probe::<HostHal, _>(&access, function)
            .expect("a virtio-pci transport");
        assert_eq!(transport.device_type(), DeviceType::Entropy);
        let model = RngModel::new(RngBehaviour::Fill, u64::from(device)).shared();
        let mut rng = RngDevice::<HostHal, _>::new(transport, features::SHARED_RING_FEATURES)
            .expect("the device comes up");
        assert_eq!(rng.transport().kind(), kind);
        let expected: &[u8] = if kind == TransportKind::PciLegacy {
            &ONE_LEGACY_BRING_UP
        } else {
            &ONE_BRING_UP
        };
        assert_eq!(core.borrow().status_writes, expected, "{kind}");
        assert_eq!(
            rng.features() & (1 << 30),
            0,
            "{kind}: BAD_FEATURE never accepted"
        );
        if kind == TransportKind::PciLegacy {
            assert_eq!(rng.queue().size(), 256, "legacy PCI: the device's size");
        }
        read_and_compare(&mut rng, core, &model, 600);
        assert_clean(core, &model);
    }
    assert!(platform.borrow().violations.is_empty());
    HostHal::clear_devices();
}

#[test]
fn a_packed_ring_is_used_when_allowed_and_offered() {
    let base = 0xfeb0_2400;
    let (transport, core, _model) = mmio_rng(base, 2, RngBehaviour::Fill, mmio);
    core.borrow_mut().device_features |= features::RING_PACKED;
    let rng = RngDevice::<HostHal, _>::new(
        transport,
        features::SHARED_RING_FEATURES | features::RING_PACKED,
    )
    .expect("the device comes up");
    assert_ne!(rng.features() & features::RING_PACKED, 0);
    assert_eq!(rng.queue().kind(), drivers::queue::RingKind::Packed);
    drop(rng);
    HostHal::clear_devices();
}

#[test]
fn an_interrupt_driven_wait_arms_the_queue_and_the_device_interrupts() {
    let base = 0xfeb0_2600;
    let (transport, core, model) = mmio_rng(base, 2, RngBehaviour::Fill, mmio);
    let mut rng = RngDevice::<HostHal, _>::new(transport, features::SHARED_RING_FEATURES)
        .expect("the device comes up");
    let mut out = [0u8; 64];
    let mut wait = InterruptingWait {
        inner: device_runs(&core, &model, 100),
    };
    rng.fill(&mut out, &mut wait).expect("the device answers");
    assert_eq!(&model.borrow().given[..], &out[..]);
    assert_ne!(core.borrow().isr, 0, "armed: the device interrupted");
    assert_clean(&core, &model);
    drop(rng);
    HostHal::clear_devices();
}

#[test]
fn a_device_short_of_entropy_is_asked_again_until_the_read_is_full() {
    let base = 0xfeb0_2800;
    let (transport, core, model) = mmio_rng(base, 2, RngBehaviour::AtMost(7), mmio);
    let mut rng = RngDevice::<HostHal, _>::new(transport, features::SHARED_RING_FEATURES)
        .expect("the device comes up");
    read_and_compare(&mut rng, &core, &model, 100);
    assert_eq!(rng.stats().requests, 15, "ceil(100 / 7) requests");
    assert_clean(&core, &model);
    drop(rng);
    HostHal::clear_devices();
}

/// Brings a device with `behaviour` up, reads once and returns the error,
/// checking the device was reset and further reads are refused.
fn hostile(base: u64, behaviour: RngBehaviour) -> RngError {
    let (transport, core, model) = mmio_rng(base, 2, behaviour, mmio);
    let mut rng = RngDevice::<HostHal, _>::new(transport, features::SHARED_RING_FEATURES)
        .expect("the device comes up");
    let mut out = [0u8; 32];
    let error = rng
        .fill(&mut out, &mut device_runs(&core, &model, 20))
        .expect_err("a hostile device gives an error");
    assert!(rng.is_stopped());
    assert_eq!(
        core.borrow().status_writes.last(),
        Some(&0),
        "{behaviour:?}: the device was reset before the buffer could be reused"
    );
    assert_eq!(rng.queue().in_flight(), 0, "nothing left in flight");
    assert_eq!(
        rng.fill(&mut out, &mut device_runs(&core, &model, 20)),
        Err(RngError::Stopped),
        "no more reads from a stopped device"
    );
    assert_eq!(model.borrow().violations, Vec::<String>::new());
    drop(rng);
    HostHal::clear_devices();
    error
}

#[test]
fn zero_bytes_is_an_error_not_an_endless_retry() {
    assert_eq!(
        hostile(0xfeb0_3000, RngBehaviour::ZeroLength),
        RngError::NoBytes
    );
}

#[test]
fn a_length_beyond_the_buffer_is_refused() {
    let error = hostile(0xfeb0_3200, RngBehaviour::LengthBeyondBuffer(1));
    assert!(matches!(error, RngError::Queue(_)), "{error:?}");
}

#[test]
fn a_descriptor_never_made_available_is_refused() {
    let error = hostile(0xfeb0_3400, RngBehaviour::WrongId);
    assert!(
        matches!(error, RngError::Queue(_) | RngError::WrongCompletion),
        "{error:?}"
    );
}

#[test]
fn a_device_that_never_answers_times_out() {
    let error = hostile(0xfeb0_3600, RngBehaviour::Stall);
    assert_eq!(error, RngError::TimedOut(WaitTimeout { waits: 20 }));
}

#[test]
fn another_device_type_is_refused_before_any_status_write() {
    let base = 0xfeb0_3800;
    trace_logging();
    let core = VirtioCore::new(2, RngModel::MODERN_FEATURES, 1, 64, vec![0; 60]).shared();
    HostHal::map_mmio(base, 0x200, MmioWindow::new(core.clone(), 2));
    let result = RngDevice::<HostHal, _>::new(mmio(base), features::SHARED_RING_FEATURES);
    assert_eq!(
        result.err(),
        Some(RngError::Device(DeviceError::WrongDeviceType {
            expected: DeviceType::Entropy,
            found: DeviceType::Block,
        }))
    );
    assert!(core.borrow().status_writes.is_empty());
    HostHal::clear_devices();
}

#[test]
fn a_device_without_a_queue_fails_and_is_marked_failed() {
    let base = 0xfeb0_3a00;
    trace_logging();
    let core = RngModel::core(RngModel::MODERN_FEATURES, 0).shared();
    HostHal::map_mmio(base, 0x200, MmioWindow::new(core.clone(), 2));
    let result = RngDevice::<HostHal, _>::new(mmio(base), features::SHARED_RING_FEATURES);
    assert!(
        matches!(
            result,
            Err(RngError::Device(DeviceError::Queue {
                queue: 0,
                error: QueueError::NoSuchQueue
            }))
        ),
        "{:?}",
        result.err()
    );
    let last = core.borrow().status_writes.last().copied();
    assert_eq!(last.map(|s| s & 0x80), Some(0x80), "FAILED set");
    HostHal::clear_devices();
}

#[test]
fn a_device_that_never_finishes_a_reset_keeps_its_memory() {
    // §2.1.2: only a reset that reads back 0 says the device stopped using
    // its ring and buffer; freeing them otherwise is a use-after-free by DMA.
    let base = 0xfeb0_2e00;
    let (transport, core, model) = mmio_rng(base, 2, RngBehaviour::Fill, mmio);
    let mut rng = RngDevice::<HostHal, _>::new(transport, features::SHARED_RING_FEATURES)
        .expect("the device comes up");
    read_and_compare(&mut rng, &core, &model, 100);
    let live = HostHal::live_dma_pages();
    assert!(live > 0);
    core.borrow_mut().reset_delay_reads = u32::MAX;
    let kept = hal::kept_forever();
    drop(rng);
    assert_eq!(
        HostHal::live_dma_pages(),
        live,
        "nothing freed: the device may still write it"
    );
    assert!(
        hal::kept_forever() >= kept + 2,
        "ring and buffer kept, counted"
    );
    HostHal::clear_devices();
}
