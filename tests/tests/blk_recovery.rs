//! The virtio-blk driver when things go wrong at run time: timeouts and
//! the reset that follows, recovery, dropping the driver, configuration
//! changes (a resized disk, DEVICE_NEEDS_RESET) and a device that never
//! finishes a reset.
//!
//! `RUST_LOG=trace cargo test -p tests --test blk_recovery -- --nocapture` shows
//! the driver's narration. Shared set-up: `blk_common/mod.rs`.

mod blk_common;

use blk_common::*;

// ---- failure and recovery ----------------------------------------------------------

#[test]
fn a_blocking_call_sets_completions_of_earlier_submissions_aside_for_poll() {
    let (mut blk, model) = device(BlkModelConfig::default());
    let early = dma_buffer(&mut blk, 512);
    model.borrow_mut().fill_pattern();
    let token = blk.submit_read(7, &[early]).unwrap();
    let mut data = vec![0u8; 1024];
    blk.read_blocks(0, &mut data, &mut wait(&model)).unwrap();
    assert_eq!(data, expected(0, 1024));
    // The blocking call met the earlier request's completion and left it
    // for the caller, who alone knows its token.
    let done = blk.poll().unwrap().expect("set aside for poll");
    assert_eq!((done.token, done.result), (token, Ok(())));
    assert_eq!(bytes(&blk, early), expected(7, 512));
    assert_eq!(blk.poll(), Ok(None));
    assert_eq!(blk.stats().completions, 2);
    assert_model_clean(&model);
}

#[test]
fn a_timeout_resets_the_device_releases_buffers_and_recover_brings_it_back() {
    let (mut blk, model) = device(BlkModelConfig::default());
    let pending = dma_buffer(&mut blk, 512);
    model.borrow_mut().stalled = true;
    // A non-blocking request is in flight too; it is aborted with the rest.
    let token = blk.submit_read(5, &[pending]).unwrap();
    let mut data = vec![0u8; 4096];
    let mut w = stepper(&model, 5);
    assert_eq!(
        blk.read_blocks(0, &mut data, &mut w),
        Err(BlkError::Timeout { waits: 5 })
    );
    assert_eq!(w.waits(), 5);
    assert!(blk.is_failed());
    assert_eq!(
        HostHal::live_shares(),
        0,
        "every buffer released after the reset"
    );
    assert!(
        blk.buffer(pending).is_some(),
        "the registered buffer is back after the reset"
    );
    assert_eq!(blk.in_flight(), 0);
    {
        let m = model.borrow();
        let n = m.status_writes.len();
        assert_eq!(&m.status_writes[n - 2..], [0, FAILED], "reset, then FAILED");
    }
    let aborted = blk
        .poll()
        .unwrap()
        .expect("the pending request is reported");
    assert_eq!(
        (aborted.token, aborted.result),
        (token, Err(RequestError::Aborted))
    );
    assert_eq!(
        blk.poll(),
        Ok(None),
        "the blocking call's own aborted requests are not handed out"
    );
    // Two aborted (the pending read and the blocking call's one request),
    // counted as failures that never came back through the ring.
    let stats = blk.stats();
    assert_eq!((stats.aborted, stats.failed), (2, 2));
    assert_eq!(stats.ring.completions + stats.aborted, stats.completions);
    assert_eq!(
        blk.read_blocks(0, &mut data, &mut wait(&model)),
        Err(BlkError::DeviceFailed)
    );
    assert_eq!(blk.submit_flush(), Err(BlkError::DeviceFailed));

    model.borrow_mut().stalled = false;
    blk.recover().unwrap();
    assert!(!blk.is_failed());
    {
        let m = model.borrow();
        let n = m.status_writes.len();
        assert_eq!(
            &m.status_writes[n - 5..],
            [
                0,
                ACK,
                ACK | DRIVER,
                ACK | DRIVER | FEATURES_OK,
                ACK | DRIVER | FEATURES_OK | DRIVER_OK
            ]
        );
        assert_eq!(m.queue_setups.len(), 2, "the queue was programmed again");
        assert_eq!(m.queue_setups[0].1, m.queue_setups[1].1, "same ring memory");
    }
    blk.read_blocks(0, &mut data, &mut wait(&model)).unwrap();
    assert_eq!(data, expected(0, 4096));
    assert_model_clean(&model);
}

#[test]
fn a_wait_that_gives_up_at_once_still_releases_everything() {
    struct Never;
    impl Wait for Never {
        fn wait(&mut self) -> Result<(), WaitTimeout> {
            Err(WaitTimeout { waits: 0 })
        }
    }
    let (mut blk, model) = device(BlkModelConfig::default());
    let mut data = vec![0u8; 1024];
    assert_eq!(
        blk.read_blocks(0, &mut data, &mut Never),
        Err(BlkError::Timeout { waits: 0 })
    );
    assert_eq!(HostHal::live_shares(), 0);
    assert_eq!(model.borrow().seen.len(), 0, "the device never ran");
}

#[test]
fn dropping_the_driver_resets_the_device_and_frees_lent_buffers() {
    let before = HostHal::live_dma_pages();
    let (mut blk, model) = device(BlkModelConfig::default());
    let registered = dma_buffer(&mut blk, 1024);
    model.borrow_mut().hold = true;
    blk.submit_read(0, &[registered]).unwrap();
    model.borrow_mut().step();
    assert_eq!(model.borrow().held(), 1, "the device holds the buffer");
    drop(blk);
    assert_eq!(
        HostHal::live_dma_pages(),
        before,
        "the lent buffer is freed with the driver"
    );
    assert_eq!(HostHal::live_shares(), 0);
    assert_eq!(model.borrow().status_writes.last(), Some(&0), "reset last");
}

#[test]
fn without_event_index_notifications_still_reach_a_sleeping_device() {
    let options = BlkOptions {
        ring_features: features::RING_INDIRECT_DESC,
        ..BlkOptions::default()
    };
    let (mut blk, model) = device_with(BlkModelConfig::default(), TransportKind::MmioV2, options);
    assert_eq!(blk.features() & features::RING_EVENT_IDX, 0);
    let mut data = vec![0u8; 64 * 1024];
    blk.read_blocks(0, &mut data, &mut wait(&model)).unwrap();
    assert_eq!(data, expected(0, 64 * 1024));
    let mut w = wait(&model);
    for i in 0..5 {
        blk.write_blocks(i * 16, &data[..8192], &mut w).unwrap();
    }
    assert_eq!(disk(&model, 64, 8192), data[..8192]);
    assert_model_clean(&model);
}

#[test]
fn a_disk_resized_at_run_time_is_seen_after_its_config_interrupt() {
    // QEMU's block_resize: the device changes `capacity` and raises a
    // configuration-change interrupt; the driver re-reads the
    // configuration (§2.5, config_generation §4.1.4.3) and checks requests
    // against the new size.
    let (mut blk, model) = device(BlkModelConfig::default());
    assert_eq!(blk.capacity_sectors(), 2048);
    let mut data = vec![0u8; 4096];
    assert_eq!(
        blk.read_blocks(2048, &mut data, &mut wait(&model)),
        Err(BlkError::OutOfRange {
            sector: 2048,
            sectors: 8
        })
    );
    model.borrow_mut().resize(4096);
    let status = blk.handle_interrupt().unwrap();
    assert!(status.contains(InterruptStatus::CONFIG));
    assert_eq!(blk.capacity_sectors(), 4096);
    assert_eq!(blk.info().capacity_sectors, 4096);
    assert_eq!(blk.config_changes(), 1);
    blk.read_blocks(4088, &mut data, &mut wait(&model)).unwrap();
    assert_eq!(data, vec![0u8; 4096], "the new sectors read as zeroes");
    // A notification without a change changes nothing; a shrink is seen too.
    assert_eq!(blk.handle_config_change().unwrap(), None);
    model.borrow_mut().resize(1024);
    assert_eq!(blk.handle_config_change().unwrap(), Some(1024));
    assert!(blk.read_blocks(1024, &mut data, &mut wait(&model)).is_err());
    assert_model_clean(&model);
}

#[test]
fn device_needs_reset_at_run_time_fails_pending_requests_and_recovers() {
    // §2.1.2: a device that sets DEVICE_NEEDS_RESET sends a configuration
    // change notification; requests in flight fail, the driver resets the
    // device, and recover() brings it back.
    let (mut blk, model) = device(BlkModelConfig::default());
    model.borrow_mut().hold = true;
    let id = dma_buffer(&mut blk, 4096);
    let token = blk
        .submit(Request::new(Op::Read {
            sector: 0,
            buffers: &[id],
        }))
        .unwrap();
    model.borrow_mut().step();
    model.borrow_mut().needs_reset();
    assert!(matches!(
        blk.handle_interrupt(),
        Err(SetupError::Device(DeviceError::Init(
            drivers::init::InitError::DeviceNeedsReset { .. }
        )))
    ));
    assert!(blk.is_failed() && !blk.is_dead());
    let done = blk.poll().unwrap().expect("the pending request is failed");
    assert_eq!(
        (done.token, done.result),
        (token, Err(RequestError::Aborted))
    );
    assert!(blk.buffer(id).is_some(), "the buffer is back");
    let mut data = vec![0u8; 512];
    assert_eq!(
        blk.read_blocks(0, &mut data, &mut wait(&model)),
        Err(BlkError::DeviceFailed)
    );
    model.borrow_mut().hold = false;
    blk.recover().unwrap();
    blk.read_blocks(0, &mut data, &mut wait(&model)).unwrap();
    assert_eq!(data, expected(0, 512));
}

#[test]
fn a_device_that_never_finishes_a_reset_keeps_its_memory_and_is_dead() {
    // §2.1.2: only a reset that reads back 0 says the device stopped using
    // its memory. This one never does, so the driver must not free (or hand
    // back) anything the device was given: a use-after-free by DMA.
    let (mut blk, core, model) = mmio_device(2, 0xfeb0_0400);
    core.borrow_mut().reset_delay_reads = u32::MAX;
    model.borrow_mut().hold = true;
    let owner = blk.transport().dma_owner();
    let id = blk
        .register_buffer(DmaBuffer::new(owner, 4096).unwrap())
        .unwrap();
    let token = blk
        .submit(Request::new(Op::Read {
            sector: 0,
            buffers: &[id],
        }))
        .unwrap();
    {
        let mut m = model.borrow_mut();
        m.sync_with_core(&mut core.borrow_mut());
        m.step();
    }
    assert_eq!(model.borrow().held(), 1, "the device holds the request");
    // A blocking read whose wait gives up: the helper resets the device.
    let mut data = vec![0u8; 1024];
    let (kept_before, clock_before) = (hal::kept_forever(), HostHal::fake_clock_us());
    let live_before = HostHal::live_dma_pages();
    assert_eq!(
        blk.read_blocks(8, &mut data, &mut BoundedWait::new(3, || {})),
        Err(BlkError::Timeout { waits: 3 })
    );
    assert!(
        HostHal::fake_clock_us() - clock_before >= u64::from(RESET_TIMEOUT_US),
        "the reset was waited for in real time"
    );
    assert!(blk.is_dead() && blk.is_failed());
    assert!(
        hal::kept_forever() >= kept_before + 2,
        "rings and buffers kept"
    );
    // Both requests end, aborted; the lent buffer is not handed back and
    // the blocking read's share is not ended (its bounce buffer lives on).
    let done = blk.poll().unwrap().expect("the held request is aborted");
    assert_eq!(
        (done.token, done.result),
        (token, Err(RequestError::Aborted))
    );
    assert_eq!(blk.buffer(id), None, "still the device's");
    assert_eq!(HostHal::live_shares(), 1);
    // Dead: no recovery, no requests, and no status write beyond FAILED.
    assert_eq!(blk.recover(), Err(SetupError::Device(DeviceError::Dead)));
    assert_eq!(
        blk.read_blocks(0, &mut data, &mut BoundedWait::new(3, || {})),
        Err(BlkError::DeviceFailed)
    );
    let writes_before_drop = core.borrow().status_writes.len();
    drop(blk);
    assert_eq!(
        HostHal::live_dma_pages(),
        live_before,
        "nothing the device was given is freed"
    );
    let c = core.borrow();
    assert_eq!(
        c.status_writes.len(),
        writes_before_drop,
        "a dead device is left alone"
    );
    assert_eq!(
        c.status_writes[c.status_writes.len() - 2..],
        [0, FAILED | ACK | DRIVER | FEATURES_OK | DRIVER_OK]
    );
    drop(c);
    HostHal::clear_devices();
}
