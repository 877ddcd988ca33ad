//! The virtio-9p driver and its 9P2000.L client (`drivers::p9`) against
//! the 9P server model (`tests/src/p9_model.rs`) through the register-level
//! virtio-mmio model: mount tag, msize, listing, streaming reads split into
//! msize pieces, create and replace, server errors by name, paths outside
//! the share, fids never leaked (counted on both sides), and hostile servers.

use drivers::device::{BoundedWait, WaitTimeout};
use drivers::features;
use drivers::p9::proto::ProtocolError;
use drivers::p9::{errno, split_path, P9Device, P9Error, MAX_MSIZE};
use drivers::transport::mmio::MmioTransport;
use drivers::transport::{Transport, TransportKind};
use tests::host_hal::HostHal;
use tests::models::trace_logging;
use tests::models::virtio::{MmioWindow, SharedCore};
use tests::p9_model::{P9Behaviour, P9Model, SharedP9Model};

type Driver = P9Device<HostHal, MmioTransport<HostHal>>;

fn big_file() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn share(behaviour: P9Behaviour) -> P9Model {
    let mut model = P9Model::new("hostshare", behaviour);
    model.add_file("top.txt", b"hello from the host\n");
    model.add_file("dir one/nested/deep.txt", b"deep\n");
    model.add_file("dir one/with space.txt", b"spaced\n");
    model.add_file("big.bin", &big_file());
    model
}

fn attach(base: u64, version: u32, model: P9Model) -> (Driver, SharedCore, SharedP9Model) {
    trace_logging();
    let offered = if version == 1 {
        P9Model::MODERN_FEATURES & !features::VERSION_1
    } else {
        P9Model::MODERN_FEATURES
    };
    let core = model.core(offered).shared();
    HostHal::map_mmio(base, 0x200, MmioWindow::new(core.clone(), version));
    let transport = MmioTransport::<HostHal>::new(base, 0x200).expect("a virtio-mmio device");
    let driver = P9Device::new(transport, features::SHARED_RING_FEATURES).expect("bring-up");
    (driver, core, model.shared())
}

fn runs(core: &SharedCore, model: &SharedP9Model, limit: u64) -> BoundedWait<impl FnMut()> {
    let (core, model) = (core.clone(), model.clone());
    BoundedWait::new(limit, move || {
        let mut m = model.borrow_mut();
        m.sync_with_core(&mut core.borrow_mut());
        m.step();
        m.sync_with_core(&mut core.borrow_mut());
    })
}

fn assert_clean(driver: &Driver, core: &SharedCore, model: &SharedP9Model) {
    let m = model.borrow();
    assert!(m.violations.is_empty(), "{:?}", m.violations);
    assert!(core.borrow().violations.is_empty());
    assert_eq!(driver.fids_in_use(), 1, "only the root's fid is open");
    assert_eq!(m.open_fids(), 1, "the server holds only the root's fid");
}

#[test]
fn mounts_lists_reads_and_writes_without_leaking_fids() {
    let base = 0xfeb0_4000;
    let (mut p9, core, model) = attach(base, 2, share(P9Behaviour::Correct));
    assert_eq!(p9.mount_tag(), "hostshare");
    assert_eq!(p9.transport().kind(), TransportKind::MmioV2);
    assert_ne!(p9.features() & drivers::p9::MOUNT_TAG, 0);
    assert_eq!(p9.features() & features::RING_INDIRECT_DESC, 0);
    p9.mount(&mut runs(&core, &model, 10))
        .expect("version + attach");
    assert_eq!(
        p9.msize(),
        64 * 1024,
        "the server lowered the offer of {MAX_MSIZE}"
    );

    let root = p9.list("", &mut runs(&core, &model, 100)).expect("ls /");
    let names: Vec<_> = root.iter().map(|e| (e.name.as_str(), e.is_dir)).collect();
    assert_eq!(
        names,
        [("big.bin", false), ("dir one", true), ("top.txt", false)],
        "sorted, without . and .."
    );
    assert_eq!(root[0].size, 300_000);
    let nested = p9.list("dir one", &mut runs(&core, &model, 100)).unwrap();
    assert_eq!(nested.len(), 2);

    let mut text = Vec::new();
    let n = p9
        .read_file(
            "dir one/with space.txt",
            &mut runs(&core, &model, 10),
            |c| {
                text.extend_from_slice(c);
                true
            },
        )
        .unwrap();
    assert_eq!((n, text.as_slice()), (7, &b"spaced\n"[..]));

    let before = model
        .borrow()
        .received
        .iter()
        .filter(|&&t| t == 116)
        .count();
    let mut big = Vec::new();
    let mut pieces = 0;
    p9.read_file("./dir one/../big.bin", &mut runs(&core, &model, 100), |c| {
        pieces += 1;
        big.extend_from_slice(c);
        true
    })
    .unwrap();
    assert_eq!(big, big_file(), "the whole file, in order");
    assert_eq!(pieces, 5, "300 000 bytes in reads of msize - 11");
    let reads = model
        .borrow()
        .received
        .iter()
        .filter(|&&t| t == 116)
        .count()
        - before;
    assert_eq!(reads, 6, "five with data and one that finds the end");

    let payload: Vec<u8> = (0..150_000u32).map(|i| (i % 253) as u8).collect();
    p9.write_file(
        "dir one/new file.txt",
        &payload,
        &mut runs(&core, &model, 100),
    )
    .expect("create");
    assert_eq!(model.borrow().file("dir one/new file.txt"), Some(payload));
    p9.write_file("top.txt", b"replaced", &mut runs(&core, &model, 10))
        .expect("replace");
    assert_eq!(
        model.borrow().file("top.txt").as_deref(),
        Some(&b"replaced"[..])
    );
    assert_clean(&p9, &core, &model);
    HostHal::assert_dma_only_for(p9.transport().dma_owner());
    drop(p9);
    HostHal::clear_devices();
}

#[test]
fn server_errors_come_back_by_name_and_paths_cannot_leave_the_share() {
    let base = 0xfeb0_4200;
    let (mut p9, core, model) = attach(base, 1, share(P9Behaviour::Correct));
    assert_eq!(p9.transport().kind(), TransportKind::MmioV1);
    p9.mount(&mut runs(&core, &model, 10)).unwrap();
    let missing = p9.stat("dir one/nope", &mut runs(&core, &model, 10));
    assert_eq!(missing, Err(P9Error::Server(errno::ENOENT)));
    assert_eq!(
        missing.unwrap_err().to_string(),
        "ENOENT (no such file or directory)"
    );
    let partial = p9.stat(
        "dir one/nested/missing/deeper",
        &mut runs(&core, &model, 10),
    );
    assert_eq!(
        partial,
        Err(P9Error::Server(errno::ENOENT)),
        "a walk that stops early"
    );
    assert_eq!(
        p9.read_file("dir one", &mut runs(&core, &model, 10), |_| true),
        Err(P9Error::Server(errno::EISDIR)),
        "reading a directory: EISDIR, without a Tread"
    );
    assert_eq!(
        p9.list("..", &mut runs(&core, &model, 10)),
        Err(P9Error::OutsideMount)
    );
    assert_eq!(
        p9.stat("dir one/../../etc/passwd", &mut runs(&core, &model, 10)),
        Err(P9Error::OutsideMount)
    );
    assert_clean(&p9, &core, &model);
    drop(p9);

    // EACCES from the server, on the open.
    HostHal::clear_devices();
    let (mut p9, core, model) = attach(base, 2, share(P9Behaviour::ErrorOn(12, errno::EACCES.0)));
    p9.mount(&mut runs(&core, &model, 10)).unwrap();
    let denied = p9.read_file("top.txt", &mut runs(&core, &model, 10), |_| true);
    assert_eq!(denied, Err(P9Error::Server(errno::EACCES)));
    assert!(denied.unwrap_err().to_string().starts_with("EACCES"));
    assert_clean(&p9, &core, &model);
    drop(p9);
    HostHal::clear_devices();
}

#[test]
fn split_path_resolves_dots_and_refuses_escapes() {
    assert_eq!(split_path("/a//b/./c/").unwrap(), ["a", "b", "c"]);
    assert_eq!(split_path("a/b/../c").unwrap(), ["a", "c"]);
    assert_eq!(split_path("").unwrap(), Vec::<&str>::new());
    assert_eq!(split_path("a/../.."), Err(P9Error::OutsideMount));
    assert_eq!(split_path(&"x".repeat(256)), Err(P9Error::BadName));
}

#[test]
fn fids_run_out_cleanly_and_deep_paths_walk_in_pieces() {
    let base = 0xfeb0_4400;
    let mut model = share(P9Behaviour::Correct);
    let deep: Vec<String> = (0..20).map(|i| format!("d{i}")).collect();
    model.add_file(&format!("{}/leaf", deep.join("/")), b"leaf");
    let (mut p9, core, model) = attach(base, 2, model);
    p9.mount(&mut runs(&core, &model, 10)).unwrap();
    let attr = p9
        .stat(
            &format!("{}/leaf", deep.join("/")),
            &mut runs(&core, &model, 10),
        )
        .expect("21 names: two Twalks");
    assert_eq!(attr.size, 4);
    let missing = p9.stat(
        &format!("{}/nope", deep.join("/")),
        &mut runs(&core, &model, 10),
    );
    assert_eq!(missing, Err(P9Error::Server(errno::ENOENT)));
    assert_clean(&p9, &core, &model);
    drop(p9);
    HostHal::clear_devices();
}

/// Mounts a hostile server and returns the first error.
fn hostile(
    base: u64,
    behaviour: P9Behaviour,
    op: impl FnOnce(&mut Driver, &SharedCore, &SharedP9Model) -> P9Error,
) -> (P9Error, Driver, SharedP9Model) {
    let (mut p9, core, model) = attach(base, 2, share(behaviour));
    let error = op(&mut p9, &core, &model);
    assert!(
        model.borrow().violations.is_empty(),
        "{:?}",
        model.borrow().violations
    );
    (error, p9, model)
}

#[test]
fn hostile_replies_are_errors_not_panics() {
    let (e, p9, _m) = hostile(0xfeb0_5000, P9Behaviour::SizeBeyondWritten, |p9, c, m| {
        p9.mount(&mut runs(c, m, 10)).unwrap_err()
    });
    assert!(
        matches!(e, P9Error::Protocol(ProtocolError::BadSize { .. })),
        "{e:?}"
    );
    drop(p9);
    HostHal::clear_devices();

    let (e, p9, _m) = hostile(0xfeb0_5200, P9Behaviour::WrongTag, |p9, c, m| {
        p9.mount(&mut runs(c, m, 10)).unwrap_err()
    });
    assert!(
        matches!(e, P9Error::Protocol(ProtocolError::WrongTag { .. })),
        "{e:?}"
    );
    drop(p9);
    HostHal::clear_devices();

    let (e, p9, _m) = hostile(0xfeb0_5400, P9Behaviour::MsizeAboveOffer, |p9, c, m| {
        p9.mount(&mut runs(c, m, 10)).unwrap_err()
    });
    assert_eq!(
        e,
        P9Error::Protocol(ProtocolError::BadMsize(MAX_MSIZE + 4096))
    );
    drop(p9);
    HostHal::clear_devices();

    let (e, p9, m) = hostile(0xfeb0_5600, P9Behaviour::ReadTooMuch, |p9, c, m| {
        p9.mount(&mut runs(c, m, 10)).unwrap();
        p9.read_file("top.txt", &mut runs(c, m, 10), |_| true)
            .unwrap_err()
    });
    assert!(
        matches!(e, P9Error::Protocol(ProtocolError::TooMuchData { .. })),
        "{e:?}"
    );
    assert_eq!(
        p9.fids_in_use(),
        1,
        "the file's fid was clunked after the bad read"
    );
    assert_eq!(m.borrow().open_fids(), 1);
    drop(p9);
    HostHal::clear_devices();

    let (e, p9, _m) = hostile(0xfeb0_5800, P9Behaviour::Stall, |p9, c, m| {
        p9.mount(&mut runs(c, m, 10)).unwrap_err()
    });
    assert_eq!(e, P9Error::TimedOut(WaitTimeout { waits: 10 }));
    assert!(p9.is_stopped());
    drop(p9);
    HostHal::clear_devices();
}

#[test]
fn a_stopped_device_refuses_everything_after_its_reset() {
    let base = 0xfeb0_5a00;
    let (mut p9, core, model) = attach(base, 2, share(P9Behaviour::Correct));
    p9.mount(&mut runs(&core, &model, 10)).unwrap();
    model.borrow_mut().behaviour = P9Behaviour::Stall;
    assert!(matches!(
        p9.stat("top.txt", &mut runs(&core, &model, 5)),
        Err(P9Error::TimedOut(_))
    ));
    assert_eq!(core.borrow().status_writes.last(), Some(&0), "reset");
    assert_eq!(p9.fids_in_use(), 0, "a reset device holds no fids");
    assert_eq!(
        p9.stat("top.txt", &mut runs(&core, &model, 5)),
        Err(P9Error::Stopped)
    );
    drop(p9);
    HostHal::clear_devices();
}

#[test]
fn a_device_that_never_finishes_a_reset_keeps_its_memory() {
    let base = 0xfeb0_4e00;
    let (mut p9, core, model) = attach(base, 2, share(P9Behaviour::Correct));
    p9.mount(&mut runs(&core, &model, 10))
        .expect("version + attach");
    let live = HostHal::live_dma_pages();
    core.borrow_mut().reset_delay_reads = u32::MAX;
    let kept = hal::kept_forever();
    drop(p9);
    assert_eq!(
        HostHal::live_dma_pages(),
        live,
        "ring and messages not freed: the device may still use them"
    );
    assert!(hal::kept_forever() >= kept + 3, "ring, request, reply kept");
    HostHal::clear_devices();
}
