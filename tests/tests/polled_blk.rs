//! The book's chapter-0 driver (`drivers::polled_blk`) against the block
//! device model, through the register-level virtio-mmio model: the driver
//! writes real registers (`MmioTransport`), the model (rust-vmm's
//! `virtio-queue` underneath) reads the ring it set up.
//!
//! `cargo test -p tests --test polled_blk -- --nocapture` also prints the
//! driver's trace narration of one bring-up and one read (the chapter shows
//! such an excerpt).

use drivers::device::BoundedWait;
use drivers::features;
use drivers::polled_blk::{PolledBlk, PolledBlkError, SECTOR_SIZE};
use drivers::transport::mmio::MmioTransport;
use tests::blk_model::{pattern_byte, BlkModel, BlkModelConfig, SharedBlkModel};
use tests::host_hal::HostHal;
use tests::log_capture::capture;
use tests::models::virtio::{MmioWindow, SharedCore, VirtioCore};

type Driver = PolledBlk<HostHal, MmioTransport<HostHal>>;

/// A virtio-mmio window at `base` with a block device model behind it
/// offering `offered`; returns the driver's result and both models.
fn attach(
    base: u64,
    version: u32,
    offered: u64,
    prepare: impl FnOnce(&mut VirtioCore),
) -> (Result<Driver, PolledBlkError>, SharedCore, SharedBlkModel) {
    let config = BlkModelConfig {
        features: offered,
        ..BlkModelConfig::default()
    };
    let model = BlkModel::new(config.clone()).shared();
    model.borrow_mut().fill_pattern();
    let mut core = VirtioCore::new(
        2,
        config.features,
        config.num_queues,
        config.queue_max,
        config.config_bytes(),
    );
    prepare(&mut core);
    let core = core.shared();
    HostHal::map_mmio(base, 0x200, MmioWindow::new(core.clone(), version));
    let transport = MmioTransport::<HostHal>::new(base, 0x200).expect("a virtio-mmio device");
    (PolledBlk::new(transport), core, model)
}

/// The device runs between two polls of the driver: the model picks up the
/// registers, serves what is available, writes the used ring.
fn device_runs(core: &SharedCore, model: &SharedBlkModel) -> BoundedWait<impl FnMut()> {
    let (core, model) = (core.clone(), model.clone());
    BoundedWait::new(100, move || {
        let mut m = model.borrow_mut();
        m.sync_with_core(&mut core.borrow_mut());
        m.step();
        m.sync_with_core(&mut core.borrow_mut());
    })
}

fn expected_sector(sector: u64) -> Vec<u8> {
    let start = sector as usize * SECTOR_SIZE;
    (start..start + SECTOR_SIZE).map(pattern_byte).collect()
}

const ACK: u8 = 1;
const DRIVER: u8 = 2;
const DRIVER_OK: u8 = 4;
const FEATURES_OK: u8 = 8;
const FAILED: u8 = 128;

#[test]
fn reads_sectors_and_the_device_id_after_the_spec_init_sequence() {
    let base = 0xfeb0_1000;
    let ((), narration) = capture(|| {
        let (driver, core, model) = attach(base, 2, BlkModelConfig::default().features, |_| {});
        let mut blk = driver.expect("the device comes up");
        {
            let c = core.borrow();
            assert_eq!(
                c.status_writes,
                [
                    0,
                    ACK,
                    ACK | DRIVER,
                    ACK | DRIVER | FEATURES_OK,
                    ACK | DRIVER | FEATURES_OK | DRIVER_OK
                ],
                "§3.1.1 steps 1, 2, 3, 5 and 8, in order and nothing else"
            );
            assert_eq!(c.driver_features, features::VERSION_1, "VERSION_1 only");
        }
        assert_eq!(blk.capacity(), BlkModelConfig::default().capacity_sectors);

        for sector in [0, 5, blk.capacity() - 1] {
            let mut buf = [0u8; SECTOR_SIZE];
            blk.read_sector(sector, &mut buf, &mut device_runs(&core, &model))
                .expect("the read completes");
            assert_eq!(buf.to_vec(), expected_sector(sector), "sector {sector}");
        }
        let id = blk
            .get_id(&mut device_runs(&core, &model))
            .expect("GET_ID completes");
        assert_eq!(&id, b"model-disk\0\0\0\0\0\0\0\0\0\0");

        let m = model.borrow();
        assert_eq!(m.seen.len(), 4, "one request per call");
        assert!(m.violations.is_empty(), "{:?}", m.violations);
        assert_eq!(m.missed_notifications, 0, "every request was notified");
        assert_eq!(
            m.isr, 0,
            "VIRTQ_AVAIL_F_NO_INTERRUPT: the device never interrupted"
        );
        assert!(
            core.borrow().violations.is_empty(),
            "{:?}",
            core.borrow().violations
        );
        drop(m);
        HostHal::assert_dma_only_for(drivers::transport::Location::Mmio { base }.dma_owner());
        drop(blk);
        assert_eq!(
            core.borrow().status_writes.last(),
            Some(&0),
            "dropped: reset"
        );
    });
    HostHal::clear_devices();
    for line in &narration {
        println!("{line}");
    }
    assert!(
        narration
            .iter()
            .any(|l| l.contains("FEATURES_OK") || l.contains("0x0b")),
        "the transport narrates the status writes"
    );
    book_excerpt_matches(&narration);
}

/// The book's chapter 0 shows the start of this narration
/// (`docs/traces/polled-blk.txt`): bring-up and the first read. It must
/// still be what the driver says, apart from addresses. To refresh it:
/// `CAPTURE_TRACES=1 cargo test -p tests --test polled_blk`.
fn book_excerpt_matches(narration: &[String]) {
    const EXCERPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/traces/polled-blk.txt");
    let end = narration
        .iter()
        .position(|l| l.contains("used.idx = 1,"))
        .expect("the first read completes in the narration");
    let fresh = &narration[..=end];
    if std::env::var_os("CAPTURE_TRACES").is_some() {
        std::fs::write(EXCERPT, fresh.join("\n") + "\n").expect("docs/traces is writable");
        return;
    }
    let stored = std::fs::read_to_string(EXCERPT).expect("docs/traces/polled-blk.txt exists");
    let stored: Vec<String> = stored.lines().map(mask_addresses).collect();
    let fresh: Vec<String> = fresh.iter().map(|l| mask_addresses(l)).collect();
    assert_eq!(
        fresh, stored,
        "the driver's narration drifted from the book's excerpt; rerun with CAPTURE_TRACES=1 and reread docs/00-one-request.md"
    );
}

/// Hex numbers of five digits or more (addresses) become `0x…`.
fn mask_addresses(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find("0x") {
        out.push_str(&rest[..at]);
        let digits = rest[at + 2..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        if digits >= 5 {
            out.push_str("0x…");
        } else {
            out.push_str(&rest[at..at + 2 + digits]);
        }
        rest = &rest[at + 2 + digits..];
    }
    out.push_str(rest);
    out
}

#[test]
fn a_device_without_version_1_is_refused_and_marked_failed() {
    let base = 0xfeb0_1200;
    let offered = BlkModelConfig::default().features & !features::VERSION_1;
    let (driver, core, _model) = attach(base, 2, offered, |_| {});
    assert_eq!(driver.err(), Some(PolledBlkError::NoVersion1));
    let last = core.borrow().status_writes.last().copied();
    assert_eq!(last, Some(ACK | DRIVER | FAILED));
    HostHal::clear_devices();
}

#[test]
fn a_device_that_refuses_features_ok_is_marked_failed() {
    let base = 0xfeb0_1400;
    let (driver, core, _model) = attach(base, 2, BlkModelConfig::default().features, |c| {
        c.refuse_features_ok = true
    });
    assert_eq!(driver.err(), Some(PolledBlkError::FeaturesRefused));
    let c = core.borrow();
    assert!(!c
        .status_writes
        .contains(&(ACK | DRIVER | FEATURES_OK | DRIVER_OK)));
    assert_eq!(c.status_writes.last().map(|s| s & FAILED), Some(FAILED));
    drop(c);
    HostHal::clear_devices();
}

#[test]
fn an_error_status_and_a_silent_device_are_errors_not_hangs() {
    let base = 0xfeb0_1600;
    let (driver, core, model) = attach(base, 2, BlkModelConfig::default().features, |_| {});
    let mut blk = driver.expect("the device comes up");
    let mut buf = [0u8; SECTOR_SIZE];

    model.borrow_mut().force_status = Some(1);
    assert_eq!(
        blk.read_sector(1, &mut buf, &mut device_runs(&core, &model)),
        Err(PolledBlkError::Status(1)),
        "VIRTIO_BLK_S_IOERR"
    );
    model.borrow_mut().force_status = None;

    assert_eq!(
        blk.read_sector(blk.capacity(), &mut buf, &mut device_runs(&core, &model)),
        Err(PolledBlkError::OutOfRange)
    );

    model.borrow_mut().stalled = true;
    assert!(matches!(
        blk.read_sector(2, &mut buf, &mut device_runs(&core, &model)),
        Err(PolledBlkError::TimedOut(_))
    ));
    drop(blk);
    HostHal::clear_devices();
}
