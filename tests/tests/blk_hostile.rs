//! The virtio-blk driver against a device that misbehaves and callers that
//! ask for the impossible: device status bytes and used lengths that are
//! wrong, and requests refused before the device sees them (read-only,
//! bad ranges and buffers, missing features).
//!
//! `RUST_LOG=trace cargo test -p tests --test blk_hostile -- --nocapture` shows
//! the driver's narration. Shared set-up: `blk_common/mod.rs`.

mod blk_common;

use blk_common::*;

// ---- device errors ---------------------------------------------------------

#[test]
fn ioerr_unsupp_and_unknown_status_bytes_become_typed_errors() {
    let (mut blk, model) = device(BlkModelConfig::default());
    let mut data = vec![0u8; 1024];

    model.borrow_mut().force_status = Some(status::IOERR);
    assert_eq!(
        blk.read_blocks(0, &mut data, &mut wait(&model)),
        Err(BlkError::Request(RequestError::IoError))
    );
    model.borrow_mut().force_status = Some(status::UNSUPP);
    assert_eq!(
        blk.flush(&mut wait(&model)),
        Err(BlkError::Request(RequestError::Unsupported))
    );
    model.borrow_mut().force_status = Some(7);
    assert_eq!(
        blk.write_blocks(0, &data, &mut wait(&model)),
        Err(BlkError::Request(RequestError::BadStatus(7)))
    );
    assert_eq!(
        disk(&model, 0, 1024),
        expected(0, 1024),
        "a failing device wrote nothing"
    );
    model.borrow_mut().force_status = None;
    model.borrow_mut().skip_status = true;
    assert_eq!(
        blk.get_id(&mut wait(&model)),
        Err(BlkError::Request(RequestError::BadStatus(0xff))),
        "a status never written is caught"
    );

    // The non-blocking path reports the same way.
    model.borrow_mut().skip_status = false;
    model.borrow_mut().force_status = Some(status::IOERR);
    let token = blk.submit_get_id().unwrap();
    let done = collect(&mut blk, &model, 1);
    assert_eq!(done[0].token, token);
    assert_eq!(done[0].result, Err(RequestError::IoError));

    // And the device works again once it behaves.
    model.borrow_mut().force_status = None;
    blk.read_blocks(0, &mut data, &mut wait(&model)).unwrap();
    assert_eq!(data, expected(0, 1024));
    let stats = blk.stats();
    assert_eq!((stats.requests, stats.completions, stats.failed), (6, 6, 5));
    assert_eq!(HostHal::live_shares(), 0);
}

#[test]
fn impossible_used_lengths_fail_the_request() {
    // On a modern transport a length above the writable bytes breaks
    // §2.7.8 ("MUST write at least len bytes") and fails the request.
    let (mut blk, model) = device(BlkModelConfig::default());
    let mut data = vec![0u8; 4096];
    let cases = [
        (LenOverride::BeyondWritable(4), 4097 + 4, 4097),
        (LenOverride::TotalChain, 4097 + 16, 4097),
    ];
    for (lie, written, expected_len) in cases {
        model.borrow_mut().len_override = Some(lie);
        assert_eq!(
            blk.read_blocks(8, &mut data, &mut wait(&model)),
            Err(BlkError::Request(RequestError::BadLength {
                written,
                expected: expected_len
            })),
            "{lie:?}"
        );
        assert_eq!(HostHal::live_shares(), 0, "{lie:?}: buffers released");
    }
    // A write reports only the status byte: length 1 is right, 2 is not.
    model.borrow_mut().len_override = Some(LenOverride::Exactly(1));
    blk.write_blocks(8, &data, &mut wait(&model)).unwrap();
    model.borrow_mut().len_override = Some(LenOverride::Exactly(2));
    assert_eq!(
        blk.write_blocks(8, &data, &mut wait(&model)),
        Err(BlkError::Request(RequestError::BadLength {
            written: 2,
            expected: 1
        }))
    );
    // Honest again: everything works and nothing was broken.
    model.borrow_mut().len_override = None;
    blk.read_blocks(8, &mut data, &mut wait(&model)).unwrap();
    assert_eq!(data, disk(&model, 8, 4096));
    assert!(!blk.is_failed());
}

/// Reads, writes, flush and GET_ID against a device that reports `lie`
/// for every request; all must succeed with the right data.
fn every_request_works_with(kind: TransportKind, lie: LenOverride) {
    let (mut blk, model) = device_with(BlkModelConfig::default(), kind, BlkOptions::default());
    model.borrow_mut().len_override = Some(lie);
    let mut data = vec![0u8; 4096];
    blk.read_blocks(8, &mut data, &mut wait(&model))
        .unwrap_or_else(|e| panic!("{kind:?} {lie:?}: read: {e}"));
    assert_eq!(data, expected(8, 4096), "{kind:?} {lie:?}");
    let written = vec![0xa5u8; 1024];
    blk.write_blocks(40, &written, &mut wait(&model))
        .unwrap_or_else(|e| panic!("{kind:?} {lie:?}: write: {e}"));
    assert_eq!(disk(&model, 40, 1024), written, "{kind:?} {lie:?}");
    blk.flush(&mut wait(&model))
        .unwrap_or_else(|e| panic!("{kind:?} {lie:?}: flush: {e}"));
    let serial = blk
        .get_id(&mut wait(&model))
        .unwrap_or_else(|e| panic!("{kind:?} {lie:?}: GET_ID: {e}"));
    assert_eq!(serial.as_str(), Some("model-disk"), "{kind:?} {lie:?}");
    // The device still failing a request is still seen: the status byte,
    // not the length, says how a request went.
    model.borrow_mut().force_status = Some(status::IOERR);
    assert_eq!(
        blk.read_blocks(8, &mut data, &mut wait(&model)),
        Err(BlkError::Request(RequestError::IoError)),
        "{kind:?} {lie:?}"
    );
    model.borrow_mut().force_status = None;
    assert!(!blk.is_failed(), "{kind:?} {lie:?}");
    assert!(
        blk.stats().inexact_used_lengths > 0,
        "{kind:?} {lie:?}: {:?}",
        blk.stats()
    );
    assert_eq!(HostHal::live_shares(), 0, "{kind:?} {lie:?}");
    assert_model_clean(&model);
}

#[test]
fn under_reported_used_lengths_are_accepted() {
    // §2.7.8: "The device MAY write more than len bytes"; the driver judges
    // by the status byte, which it preset to a value no device writes.
    for kind in [TransportKind::MmioV2, TransportKind::PciModern] {
        for lie in [
            LenOverride::WithoutStatus,
            LenOverride::Exactly(0),
            LenOverride::Exactly(1),
        ] {
            every_request_works_with(kind, lie);
        }
    }
}

#[test]
fn legacy_devices_unreliable_used_lengths_are_ignored() {
    // §5.2.6 "Legacy Interface: Device Operation": legacy devices may
    // report the total descriptor length; "transitional drivers SHOULD
    // ignore the len value in used ring entries". Bounds stay: nothing is
    // read by the length.
    for kind in [TransportKind::PciLegacy, TransportKind::MmioV1] {
        for lie in [
            LenOverride::TotalChain,
            LenOverride::BeyondWritable(4),
            LenOverride::WithoutStatus,
            LenOverride::Exactly(0),
        ] {
            every_request_works_with(kind, lie);
        }
    }
}

// ---- error and completion sizes --------------------------------------------

#[test]
fn blk_errors_and_completions_are_small() {
    use core::mem::size_of;
    // Returned by value once per request: two registers for a submit's
    // result, half a cache line for a completion.
    assert!(
        size_of::<RequestError>() <= 12,
        "{}",
        size_of::<RequestError>()
    );
    assert!(size_of::<BlkError>() <= 16, "{}", size_of::<BlkError>());
    assert!(
        size_of::<Result<drivers::blk::BlkToken, BlkError>>() <= 16,
        "{}",
        size_of::<Result<drivers::blk::BlkToken, BlkError>>()
    );
    assert!(size_of::<Completion>() <= 32, "{}", size_of::<Completion>());
    assert!(
        size_of::<Result<Option<Completion>, BlkError>>() <= 40,
        "{}",
        size_of::<Result<Option<Completion>, BlkError>>()
    );
}

// ---- refused before the device ----------------------------------------------

#[test]
fn a_read_only_disk_refuses_writes_before_the_device_sees_them() {
    let config = BlkModelConfig {
        features: BlkModelConfig::default().features | feature::RO,
        ..BlkModelConfig::default()
    };
    let (mut blk, model) = device(config);
    let owned = dma_buffer(&mut blk, 512);
    assert!(blk.read_only());
    assert_ne!(model.borrow().driver_features & feature::RO, 0);
    let data = vec![0xeeu8; 1024];
    let mut w = wait(&model);
    assert_eq!(blk.write_blocks(0, &data, &mut w), Err(BlkError::ReadOnly));
    assert_eq!(
        blk.write_blocks_vectored(0, &[&data, &data], &mut w),
        Err(BlkError::ReadOnly)
    );
    assert_eq!(blk.submit_write(0, &[owned]), Err(BlkError::ReadOnly));
    assert!(blk.buffer(owned).is_some(), "refused before lending");
    assert_eq!(blk.discard(0, 8, &mut w), Err(BlkError::ReadOnly));
    assert_eq!(
        blk.write_zeroes(0, 8, true, &mut w),
        Err(BlkError::ReadOnly)
    );
    assert_eq!(blk.submit_discard(0, 8), Err(BlkError::ReadOnly));
    assert_eq!(
        blk.submit_write_zeroes(0, 8, false),
        Err(BlkError::ReadOnly)
    );
    {
        let m = model.borrow();
        assert_eq!(m.seen.len(), 0, "the device saw no request");
        assert!(m.notifications.is_empty());
    }
    assert_eq!(HostHal::live_shares(), 0);
    assert_eq!(disk(&model, 0, 1024), expected(0, 1024));
    // Reading is fine.
    let mut back = vec![0u8; 512];
    blk.read_blocks(0, &mut back, &mut w).unwrap();
    assert_eq!(back, expected(0, 512));
    assert_eq!(model.borrow().seen.len(), 1);
}

#[test]
fn bad_ranges_and_buffers_are_refused_before_the_device_sees_them() {
    let config = BlkModelConfig {
        seg_max: 4,
        discard: (8, 1, 1),
        ..BlkModelConfig::default()
    };
    let (mut blk, model) = device(config);
    let ids: Vec<BufferId> = (0..5).map(|_| dma_buffer(&mut blk, 512)).collect();
    let mut w = wait(&model);
    let mut two = vec![0u8; 1024];
    assert_eq!(
        blk.read_blocks(2047, &mut two, &mut w),
        Err(BlkError::OutOfRange {
            sector: 2047,
            sectors: 2,
        })
    );
    assert_eq!(
        blk.read_blocks(u64::MAX, &mut two, &mut w),
        Err(BlkError::OutOfRange {
            sector: u64::MAX,
            sectors: 2,
        })
    );
    let mut odd = vec![0u8; 100];
    assert_eq!(
        blk.read_blocks(0, &mut odd, &mut w),
        Err(BlkError::BadBufferLength { len: 100 })
    );
    assert_eq!(
        blk.write_blocks_vectored(0, &[&two[..], &[]], &mut w),
        Err(BlkError::BadBufferLength { len: 0 })
    );
    assert_eq!(
        blk.read_blocks_vectored(0, &mut [], &mut w),
        Err(BlkError::EmptyRequest)
    );
    assert_eq!(
        blk.submit_read(0, &ids),
        Err(BlkError::TooManySegments { needed: 5, max: 4 }),
        "one non-blocking request may not exceed seg_max"
    );
    assert!(
        ids.iter().all(|&id| blk.buffer(id).is_some()),
        "refused before lending"
    );
    assert_eq!(
        blk.submit_read(0, &[ids[0], ids[0]]),
        Err(BlkError::BufferUnavailable(ids[0])),
        "one buffer named twice is lent once, then refused"
    );
    assert!(blk.buffer(ids[0]).is_some(), "and given back");
    let unregistered = blk.unregister_buffer(ids[4]).expect("held");
    assert_eq!(unregistered.len(), 512);
    assert_eq!(
        blk.submit_read(0, &[ids[4]]),
        Err(BlkError::BufferUnavailable(ids[4])),
        "an unregistered buffer is refused"
    );
    assert_eq!(
        blk.submit_discard(0, 9),
        Err(BlkError::TooManySectors { sectors: 9, max: 8 })
    );
    assert_eq!(blk.submit_discard(0, 0), Err(BlkError::EmptyRequest));
    assert_eq!(
        blk.submit_write_zeroes(2040, 9, false),
        Err(BlkError::OutOfRange {
            sector: 2040,
            sectors: 9,
        })
    );
    let no_queue = blk.submit(Request::new(Op::GetId).on_queue(1));
    assert_eq!(no_queue, Err(BlkError::NoSuchQueue(1)));
    assert_eq!(model.borrow().seen.len(), 0);
    assert!(model.borrow().notifications.is_empty());
    assert_eq!(HostHal::live_shares(), 0);
}

#[test]
fn requests_that_need_a_missing_feature_are_refused() {
    let config = BlkModelConfig {
        features: BlkModelConfig::default().features
            & !(feature::FLUSH | feature::DISCARD | feature::WRITE_ZEROES),
        ..BlkModelConfig::default()
    };
    let (mut blk, model) = device(config);
    let mut w = wait(&model);
    assert_eq!(
        blk.flush(&mut w),
        Err(BlkError::NotNegotiated(RequestType::Flush))
    );
    assert_eq!(
        blk.submit_flush(),
        Err(BlkError::NotNegotiated(RequestType::Flush))
    );
    assert_eq!(
        blk.discard(0, 1, &mut w),
        Err(BlkError::NotNegotiated(RequestType::Discard))
    );
    assert_eq!(
        blk.write_zeroes(0, 1, false, &mut w),
        Err(BlkError::NotNegotiated(RequestType::WriteZeroes))
    );
    assert_eq!(model.borrow().seen.len(), 0);
}
