//! The virtio-blk driver's requests against the block device model: data
//! to and from the disk, splitting by the device's limits, many requests in
//! flight, flush / discard / write-zeroes / GET_ID, multiqueue, interrupt
//! hooks, counters, and a zero-copy Hal. Every test checks the data against
//! the backing store, request shapes the device saw, or counters.
//!
//! `RUST_LOG=trace cargo test -p tests --test blk_requests -- --nocapture` shows
//! the driver's narration. Shared set-up: `blk_common/mod.rs`.

mod blk_common;

use blk_common::*;

// ---- data ----------------------------------------------------------------

#[test]
fn reads_and_writes_move_the_right_bytes_to_and_from_the_disk() {
    let (mut blk, model) = device(BlkModelConfig::default());
    let mut w = wait(&model);

    let mut single = vec![0u8; 8 * 512];
    blk.read_blocks(10, &mut single, &mut w).unwrap();
    assert_eq!(single, expected(10, 8 * 512));

    let data: Vec<u8> = (0..3 * 512).map(|i| (i % 251) as u8).collect();
    blk.write_blocks(100, &data, &mut w).unwrap();
    assert_eq!(disk(&model, 100, 3 * 512), data);
    assert_eq!(
        disk(&model, 99, 512),
        expected(99, 512),
        "neighbours untouched"
    );
    assert_eq!(
        disk(&model, 103, 512),
        expected(103, 512),
        "neighbours untouched"
    );

    // Scatter-gather: three buffers, one request, consecutive sectors.
    let a = vec![0x11u8; 512];
    let b = vec![0x22u8; 2048];
    let c = vec![0x33u8; 1024];
    blk.write_blocks_vectored(200, &[&a, &b, &c], &mut w)
        .unwrap();
    assert_eq!(disk(&model, 200, 512), a);
    assert_eq!(disk(&model, 201, 2048), b);
    assert_eq!(disk(&model, 205, 1024), c);
    let last = model.borrow().seen.last().cloned().unwrap();
    assert_eq!(last.request_type, req::OUT);
    assert_eq!(last.sector, 200);
    assert_eq!(last.data_segment_lens(), [512, 2048, 1024]);

    let mut x = vec![0u8; 1024];
    let mut y = vec![0u8; 512];
    blk.read_blocks_vectored(1000, &mut [&mut x, &mut y], &mut w)
        .unwrap();
    assert_eq!(x, expected(1000, 1024));
    assert_eq!(y, expected(1002, 512));

    // The last sector of the disk is reachable.
    let mut tail = vec![0u8; 512];
    blk.read_blocks(2047, &mut tail, &mut w).unwrap();
    assert_eq!(tail, expected(2047, 512));

    assert_eq!(HostHal::live_shares(), 0, "every buffer unshared");
    assert_model_clean(&model);
    // Every bounce-shared buffer and all ring memory named the disk.
    HostHal::assert_dma_only_for(blk.transport().dma_owner());
}

#[test]
fn a_buffer_allocated_for_another_device_is_not_registered() {
    // Behind an IOMMU the disk could not reach another device's memory, so
    // the driver gives such a buffer back instead of lending it.
    let (mut blk, model) = device(BlkModelConfig::default());
    let other = drivers::transport::Location::Mmio { base: 0xfeb0_7000 }.dma_owner();
    assert_ne!(other, blk.transport().dma_owner());
    let foreign = DmaBuffer::<HostHal>::new(other, 4096).unwrap();
    let back = blk.register_buffer(foreign).expect_err("refused");
    assert_eq!(back.owner(), other);
    let unowned = DmaBuffer::<HostHal>::new(hal::DmaOwner::NO_DEVICE, 512).unwrap();
    assert!(
        blk.register_buffer(unowned).is_err(),
        "NO_DEVICE refused too"
    );
    let own = dma_buffer(&mut blk, 4096);
    let token = blk.submit_read(8, &[own]).unwrap();
    let done = collect(&mut blk, &model, 1);
    assert_eq!((done[0].token, done[0].result), (token, Ok(())));
    assert_eq!(bytes(&blk, own), expected(8, 4096));
}

#[test]
fn a_long_vectored_list_is_done_in_groups_of_buffers() {
    let (mut blk, model) = device(BlkModelConfig::default());
    let mut buffers: Vec<Vec<u8>> = (0..40).map(|_| vec![0u8; 512]).collect();
    let mut refs: Vec<&mut [u8]> = buffers.iter_mut().map(|b| &mut b[..]).collect();
    blk.read_blocks_vectored(300, &mut refs, &mut wait(&model))
        .unwrap();
    for (i, b) in buffers.iter().enumerate() {
        assert_eq!(b, &expected(300 + i as u64, 512), "buffer {i}");
    }
    // 32 buffers, then 8: the driver's segment limit (32) and the group size agree.
    assert_eq!(data_lens(&model), [vec![512u32; 32], vec![512u32; 8]]);
    assert_eq!(model.borrow().seen[1].sector, 332);
}

// ---- splitting -------------------------------------------------------------

#[test]
fn reads_are_split_by_seg_max_and_size_max() {
    let config = BlkModelConfig {
        features: BlkModelConfig::default().features | feature::SIZE_MAX,
        size_max: 4096,
        seg_max: 4,
        ..BlkModelConfig::default()
    };
    let (mut blk, model) = device(config);
    let mut data = vec![0u8; 64 * 1024];
    blk.read_blocks(0, &mut data, &mut wait(&model)).unwrap();
    assert_eq!(data, expected(0, 64 * 1024));
    let m = model.borrow();
    let sectors: Vec<u64> = m.seen.iter().map(|r| r.sector).collect();
    assert_eq!(sectors, [0, 32, 64, 96], "four requests of 16 KiB");
    for r in &m.seen {
        assert_eq!(r.request_type, req::IN);
        assert_eq!(r.data_segment_lens(), [4096; 4]);
        assert_eq!(r.segments.first().map(|s| s.len), Some(16));
        assert_eq!(
            r.segments.last().map(|s| (s.len, s.writable)),
            Some((1, true))
        );
    }
    assert!(m.violations.is_empty(), "{:?}", m.violations);
}

#[test]
fn a_size_max_that_is_not_a_sector_multiple_still_gives_whole_sector_requests() {
    let config = BlkModelConfig {
        features: BlkModelConfig::default().features | feature::SIZE_MAX,
        size_max: 1000,
        seg_max: 2,
        ..BlkModelConfig::default()
    };
    let (mut blk, model) = device(config);
    let mut data = vec![0u8; 4096];
    blk.read_blocks(10, &mut data, &mut wait(&model)).unwrap();
    assert_eq!(data, expected(10, 4096));
    assert_eq!(
        data_lens(&model),
        [vec![1000, 536], vec![1000, 536], vec![1000, 24]],
        "each request ends on a sector boundary (docs in drivers/src/blk/plan.rs)"
    );
    let sectors: Vec<u64> = model.borrow().seen.iter().map(|r| r.sector).collect();
    assert_eq!(sectors, [10, 13, 16]);
    assert_model_clean(&model);
}

#[test]
fn writes_from_several_buffers_are_split_across_requests() {
    let config = BlkModelConfig {
        features: BlkModelConfig::default().features | feature::SIZE_MAX,
        size_max: 1024,
        seg_max: 2,
        ..BlkModelConfig::default()
    };
    let (mut blk, model) = device(config);
    let a: Vec<u8> = (0..1536).map(|i| (i % 97) as u8).collect();
    let b = vec![0xb0u8; 512];
    let c: Vec<u8> = (0..2048).map(|i| (i % 89) as u8).collect();
    blk.write_blocks_vectored(500, &[&a, &b, &c], &mut wait(&model))
        .unwrap();
    assert_eq!(disk(&model, 500, 1536), a);
    assert_eq!(disk(&model, 503, 512), b);
    assert_eq!(disk(&model, 504, 2048), c);
    assert_eq!(
        data_lens(&model),
        [vec![1024, 512], vec![512, 1024], vec![1024]]
    );
    let sectors: Vec<u64> = model.borrow().seen.iter().map(|r| r.sector).collect();
    assert_eq!(sectors, [500, 503, 506]);
    assert_model_clean(&model);
}

#[test]
fn without_indirect_tables_requests_are_split_to_fit_the_ring() {
    let options = BlkOptions {
        ring_features: features::RING_EVENT_IDX,
        ..BlkOptions::default()
    };
    let config = BlkModelConfig {
        queue_max: 8,
        ..BlkModelConfig::default()
    };
    let (mut blk, model) = device_with(config, TransportKind::MmioV2, options);
    assert_eq!(
        blk.max_data_segments(),
        6,
        "8 descriptors - header - status"
    );
    let mut buffers: Vec<Vec<u8>> = (0..10).map(|_| vec![0u8; 512]).collect();
    let mut refs: Vec<&mut [u8]> = buffers.iter_mut().map(|b| &mut b[..]).collect();
    blk.read_blocks_vectored(64, &mut refs, &mut wait(&model))
        .unwrap();
    for (i, b) in buffers.iter().enumerate() {
        assert_eq!(b, &expected(64 + i as u64, 512));
    }
    assert_eq!(data_lens(&model), [vec![512u32; 6], vec![512u32; 4]]);
    assert!(model.borrow().seen.iter().all(|r| !r.indirect));
    assert_model_clean(&model);
}

// ---- many in flight --------------------------------------------------------

#[test]
fn a_full_queue_pushes_back_and_completions_arrive_out_of_order() {
    let config = BlkModelConfig {
        queue_max: 16,
        ..BlkModelConfig::default()
    };
    let (mut blk, model) = device(config);
    let buffers: Vec<BufferId> = (0..17).map(|_| dma_buffer(&mut blk, 1024)).collect();
    model.borrow_mut().hold = true;
    let mut tokens = Vec::new();
    for (i, &b) in buffers.iter().take(16).enumerate() {
        let token = blk.submit_read(i as u64 * 2, &[b]).unwrap();
        assert_eq!(token.queue(), 0);
        tokens.push(token);
        assert!(blk.buffer(b).is_none(), "lent to the device");
    }
    assert_eq!(blk.in_flight(), 16);
    let extra = buffers[16];
    let refused = blk.submit_read(100, &[extra]);
    assert_eq!(refused, Err(BlkError::QueueFull));
    assert!(
        blk.buffer(extra).is_some(),
        "the refused request holds nothing"
    );
    assert_eq!(
        blk.submit_read(100, &[buffers[0]]),
        Err(BlkError::BufferUnavailable(buffers[0])),
        "a lent buffer cannot be lent again"
    );
    assert_eq!(HostHal::live_shares(), 0, "nothing is shared: no copies");
    assert_eq!(blk.poll(), Ok(None), "nothing finished yet");

    model.borrow_mut().step();
    assert_eq!(model.borrow().held(), 16);
    let order = model.borrow_mut().release_held_shuffled(&mut Rng::new(7));
    let done = collect(&mut blk, &model, 16);
    let got: Vec<_> = done.iter().map(|c| c.token).collect();
    let want: Vec<_> = order.iter().map(|&i| tokens[i]).collect();
    assert_eq!(got, want, "completions come in the device's order");
    assert_ne!(got, tokens, "the shuffle really reordered them");
    for c in &done {
        assert_eq!(c.result, Ok(()));
        assert_eq!(c.request, RequestType::Read);
    }
    for (i, &b) in buffers.iter().take(16).enumerate() {
        assert_eq!(bytes(&blk, b), expected(i as u64 * 2, 1024), "buffer {i}");
    }
    assert_eq!(HostHal::live_shares(), 0);
    assert_eq!(blk.in_flight(), 0);

    // The slots are free again: the refused request goes through now.
    model.borrow_mut().hold = false;
    let token = blk.submit_read(100, &[extra]).unwrap();
    let done = collect(&mut blk, &model, 1);
    assert_eq!(done[0].token, token);
    assert_eq!(bytes(&blk, extra), expected(100, 1024));
    assert_model_clean(&model);
}

#[test]
fn complete_finds_one_token_and_leaves_the_others_for_poll() {
    let (mut blk, model) = device(BlkModelConfig::default());
    let a = dma_buffer(&mut blk, 512);
    let b = dma_buffer(&mut blk, 512);
    model.borrow_mut().hold = true;
    let (ta, tb) = (
        blk.submit_read(1, &[a]).unwrap(),
        blk.submit_read(2, &[b]).unwrap(),
    );
    assert_ne!(ta, tb);
    assert_eq!(blk.complete(tb), Ok(None), "still in flight");
    model.borrow_mut().step();
    model.borrow_mut().release_held_in(&[0, 1]);
    let done_b = blk.complete(tb).unwrap().expect("b finished");
    assert_eq!((done_b.token, done_b.sector), (tb, 2));
    let done_a = blk.poll().unwrap().expect("a waits for poll");
    assert_eq!((done_a.token, done_a.sector), (ta, 1));
    assert_eq!(blk.poll(), Ok(None));
    assert_eq!(
        blk.complete(ta),
        Err(BlkError::UnknownToken),
        "already collected"
    );
    assert_eq!(bytes(&blk, a), expected(1, 512));
    assert_eq!(bytes(&blk, b), expected(2, 512));
}

#[test]
fn a_batch_is_published_with_one_notification() {
    let (mut blk, model) = device(BlkModelConfig::default());
    let buffers: Vec<BufferId> = (0..8).map(|_| dma_buffer(&mut blk, 512)).collect();
    blk.start_batch();
    for (i, &b) in buffers.iter().enumerate() {
        blk.submit_read(i as u64, &[b]).unwrap();
    }
    assert!(
        model.borrow().notifications.is_empty(),
        "nothing published yet"
    );
    assert_eq!(blk.finish_batch(), 1);
    assert_eq!(model.borrow().notifications, [0]);
    let done = collect(&mut blk, &model, 8);
    assert!(done.iter().all(|c| c.result == Ok(())));
    for (i, &b) in buffers.iter().enumerate() {
        assert_eq!(bytes(&blk, b), expected(i as u64, 512));
    }
    let stats = blk.queue_stats(0).unwrap();
    assert_eq!(
        (stats.requests, stats.completions, stats.notifications()),
        (8, 8, 1)
    );
    assert_model_clean(&model);
}

// ---- the other request types -------------------------------------------------

#[test]
fn get_id_returns_the_serial_without_padding() {
    let config = BlkModelConfig {
        serial: *b"scratch-0123456789AB",
        ..BlkModelConfig::default()
    };
    let (mut blk, model) = device(config);
    let serial = blk.get_id(&mut wait(&model)).unwrap();
    assert_eq!(
        serial.as_bytes(),
        b"scratch-0123456789AB",
        "20 bytes, no NUL"
    );
    assert_eq!(serial.len(), 20);
    assert_eq!(serial.as_str(), Some("scratch-0123456789AB"));
    let seen = model.borrow().seen[0].clone();
    assert_eq!((seen.request_type, seen.sector), (req::GET_ID, 0));
    assert_eq!(seen.data_segment_lens(), [20]);

    let mut padded = *b"abc\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
    model.borrow_mut().config.serial = padded;
    let token = blk.submit_get_id().unwrap();
    let done = collect(&mut blk, &model, 1);
    assert_eq!(done[0].token, token);
    assert_eq!(done[0].result, Ok(()), "GET_ID succeeds");
    let short = blk
        .last_serial()
        .expect("a successful GET_ID keeps its serial");
    assert_eq!(short.as_bytes(), b"abc");
    assert_eq!(short.to_string(), "abc");

    padded[1] = 0x07;
    model.borrow_mut().config.serial = padded;
    let odd = blk.get_id(&mut wait(&model)).unwrap();
    assert_eq!(odd.as_bytes(), b"a\x07c");
    assert_eq!(
        odd.to_string(),
        "a\\x07c",
        "non-printable bytes are escaped"
    );
}

#[test]
fn a_short_get_id_answer_reads_as_padding_not_as_an_earlier_range() {
    // A request's pool slot is its token's slot, so a write-zeroes and the
    // GET_ID after it share a slot; the write-zeroes leaves its range in
    // the payload area (flags, UNMAP = 1, at byte 12), and a device that
    // writes only 12 bytes of the serial must not make that byte part of it.
    let config = BlkModelConfig {
        serial: *b"abcdefghijklmnopqrst",
        ..BlkModelConfig::default()
    };
    let (mut blk, model) = device(config);
    model.borrow_mut().id_bytes = Some(12);
    let zeroes = blk.submit_write_zeroes(8, 0x0101, true).unwrap();
    let done = collect(&mut blk, &model, 1);
    assert_eq!((done[0].token, done[0].result), (zeroes, Ok(())));
    assert_eq!(model.borrow().seen[0].ranges, [(8, 0x0101, 1)]);

    let get_id = blk.submit_get_id().unwrap();
    assert_eq!(get_id.slot(), zeroes.slot(), "the same pool slot");
    let done = collect(&mut blk, &model, 1);
    assert_eq!(done[0].result, Ok(()), "GET_ID succeeds");
    let serial = blk
        .last_serial()
        .expect("a successful GET_ID keeps its serial");
    assert_eq!(
        serial.as_bytes(),
        b"abcdefghijkl",
        "the rest of the buffer is padding"
    );
    assert_model_clean(&model);
}

#[test]
fn a_used_entry_for_a_descriptor_not_in_flight_is_rejected_and_the_disk_goes_on() {
    let (mut blk, model) = device(BlkModelConfig::default());
    // Nothing in flight: descriptor 5 is free.
    model.borrow_mut().forge_used(0, 5, 513);
    assert_eq!(blk.poll(), Err(BlkError::Ring { queue: 0 }));
    assert_eq!(
        blk.ring_fault(0),
        Some(drivers::queue::QueueError::UsedIdNotInFlight { id: 5 }),
        "the ring's own error is kept"
    );
    assert_eq!(blk.poll(), Ok(None), "the bad entry was consumed");
    assert_eq!(blk.stats().ring.device_errors, 1);
    assert_eq!(blk.stats().completions, 0, "no request was completed by it");

    // The same slot's real request still works and lands in its buffer.
    let data = dma_buffer(&mut blk, 512);
    let token = blk.submit_read(40, &[data]).unwrap();
    let done = collect(&mut blk, &model, 1);
    assert_eq!((done[0].token, done[0].result), (token, Ok(())));
    assert_eq!(bytes(&blk, data), expected(40, 512));
    assert_eq!(HostHal::live_shares(), 0);
    assert!(!blk.is_failed());
}

#[test]
fn flush_discard_and_write_zeroes_reach_the_device_with_the_right_ranges() {
    let config = BlkModelConfig {
        discard: (8, 1, 1),
        ..BlkModelConfig::default()
    };
    let (mut blk, model) = device(config);
    let mut w = wait(&model);
    blk.flush(&mut w).unwrap();
    assert_eq!(model.borrow().flushes, 1);
    {
        let m = model.borrow();
        let flush = &m.seen[0];
        assert_eq!((flush.request_type, flush.sector), (req::FLUSH, 0));
        assert_eq!(flush.data_segment_lens(), Vec::<u32>::new());
    }

    blk.discard(100, 20, &mut w).unwrap();
    let ranges: Vec<_> = model.borrow().seen[1..]
        .iter()
        .map(|r| {
            assert_eq!(r.request_type, req::DISCARD);
            assert_eq!(r.sector, 0, "§5.2.6: the header's sector is 0");
            assert_eq!(r.data_segment_lens(), [16]);
            r.ranges.clone()
        })
        .collect();
    assert_eq!(
        ranges,
        [vec![(100, 8, 0)], vec![(108, 8, 0)], vec![(116, 4, 0)]],
        "split at max_discard_sectors"
    );
    assert_eq!(disk(&model, 100, 20 * 512), vec![0u8; 20 * 512]);
    assert_eq!(disk(&model, 99, 512), expected(99, 512));
    assert_eq!(disk(&model, 120, 512), expected(120, 512));

    blk.write_zeroes(200, 3, true, &mut w).unwrap();
    blk.write_zeroes(300, 2, false, &mut w).unwrap();
    {
        let m = model.borrow();
        let n = m.seen.len();
        assert_eq!(m.seen[n - 2].request_type, req::WRITE_ZEROES);
        assert_eq!(m.seen[n - 2].ranges, [(200, 3, 1)], "UNMAP flag set");
        assert_eq!(m.seen[n - 2].sector, 0, "§5.2.6: the header's sector is 0");
        assert_eq!(m.seen[n - 1].ranges, [(300, 2, 0)], "UNMAP flag clear");
    }
    assert_eq!(disk(&model, 200, 3 * 512), vec![0u8; 3 * 512]);
    assert_eq!(disk(&model, 300, 2 * 512), vec![0u8; 2 * 512]);
    assert_eq!(disk(&model, 203, 512), expected(203, 512));

    let token = blk.submit_write_zeroes(400, 1, false).unwrap();
    let done = collect(&mut blk, &model, 1);
    assert_eq!(
        (done[0].token, done[0].request),
        (token, RequestType::WriteZeroes)
    );
    assert_eq!(done[0].result, Ok(()));
    assert_model_clean(&model);
}

#[test]
fn the_cache_mode_can_be_switched_with_config_wce() {
    let (mut blk, model) = device(BlkModelConfig::default());
    assert_eq!(blk.info().writeback, Some(true));
    blk.set_writeback(false).unwrap();
    assert_eq!(model.borrow().config_writes, [(32, 0)]);
    assert_eq!(blk.info().writeback, Some(false));

    let config = BlkModelConfig {
        features: BlkModelConfig::default().features & !feature::CONFIG_WCE,
        ..BlkModelConfig::default()
    };
    let (mut fixed, fixed_model) = device(config);
    assert!(matches!(
        fixed.set_writeback(true),
        Err(SetupError::BadConfig(_))
    ));
    assert!(fixed_model.borrow().config_writes.is_empty());
}

// ---- multiqueue ---------------------------------------------------------------

#[test]
fn multiqueue_spreads_requests_round_robin_and_honours_a_chosen_queue() {
    let config = BlkModelConfig {
        features: BlkModelConfig::default().features | feature::MQ,
        num_queues: 3,
        seg_max: 1,
        ..BlkModelConfig::default()
    };
    let (mut blk, model) = device(config.clone());
    assert_eq!(blk.queue_count(), 3);
    assert_eq!(model.borrow().live_queues(), 3);
    let mut a = vec![0u8; 4096];
    let mut b = vec![0u8; 4096];
    let mut c = vec![0u8; 4096];
    blk.read_blocks_vectored(16, &mut [&mut a, &mut b, &mut c], &mut wait(&model))
        .unwrap();
    assert_eq!(a, expected(16, 4096));
    assert_eq!(b, expected(24, 4096));
    assert_eq!(c, expected(32, 4096));
    {
        let m = model.borrow();
        assert_eq!((m.seen_on(0), m.seen_on(1), m.seen_on(2)), (1, 1, 1));
    }
    for q in 0..3 {
        let stats = blk.queue_stats(q).unwrap();
        assert_eq!((stats.requests, stats.completions), (1, 1), "queue {q}");
        assert_eq!(stats.bytes_read, 4096);
    }
    assert_eq!(blk.stats().requests, 3);

    let token = blk.submit(Request::new(Op::GetId).on_queue(2)).unwrap();
    assert_eq!(token.queue(), 2);
    assert_eq!(blk.poll_queue(2), Ok(None));
    model.borrow_mut().step();
    assert_eq!(blk.poll_queue(1), Ok(None), "nothing on queue 1");
    let done = blk.poll_queue(2).unwrap().expect("done on queue 2");
    assert_eq!(done.token, token);
    assert_eq!(blk.poll_queue(3), Err(BlkError::NoSuchQueue(3)));
    assert_eq!(model.borrow().seen.last().unwrap().queue, 2);
    assert_model_clean(&model);

    // The driver uses no more queues than it was told to.
    let options = BlkOptions {
        max_queues: 2,
        ..BlkOptions::default()
    };
    let (two, two_model) = device_with(config, TransportKind::MmioV2, options);
    assert_eq!(two.queue_count(), 2);
    assert_eq!(two_model.borrow().live_queues(), 2);
}

// ---- interrupts ------------------------------------------------------------

#[test]
fn the_interrupt_hooks_switch_used_buffer_notifications_on_and_off() {
    let (mut blk, model) = device(BlkModelConfig::default());
    assert!(!blk.enable_interrupts(), "nothing pending");
    let token = blk.submit_flush().unwrap();
    model.borrow_mut().step();
    assert_eq!(blk.ack_interrupt(), InterruptStatus::QUEUE);
    assert_eq!(
        blk.ack_interrupt(),
        InterruptStatus::empty(),
        "read clears it"
    );
    assert!(blk.enable_interrupts(), "the completion is waiting");
    assert_eq!(blk.poll().unwrap().map(|c| c.token), Some(token));
    assert_eq!(model.borrow().interrupts_sent(), [1]);

    blk.disable_interrupts();
    let token = blk.submit_flush().unwrap();
    model.borrow_mut().step();
    assert_eq!(blk.ack_interrupt(), InterruptStatus::empty(), "suppressed");
    assert_eq!(model.borrow().interrupts_sent(), [1]);
    assert_eq!(blk.poll().unwrap().map(|c| c.token), Some(token));
}

#[test]
fn an_interrupt_driven_wait_is_armed_before_every_sleep() {
    /// Sleeps until the device interrupts: runs the model until it raises
    /// its interrupt line, at most 3 steps per wait (a device that was told
    /// not to interrupt never wakes it).
    struct SleepUntilInterrupt {
        model: SharedBlkModel,
        waits: u64,
    }
    impl Wait for SleepUntilInterrupt {
        fn wait(&mut self) -> Result<(), WaitTimeout> {
            self.waits += 1;
            for _ in 0..3 {
                let mut m = self.model.borrow_mut();
                m.step();
                if std::mem::take(&mut m.isr) != 0 {
                    return Ok(());
                }
            }
            Err(WaitTimeout { waits: self.waits })
        }
        fn sleeps_until_interrupt(&self) -> bool {
            true
        }
    }
    let config = BlkModelConfig {
        features: BlkModelConfig::default().features | feature::SIZE_MAX,
        size_max: 4096,
        seg_max: 2,
        ..BlkModelConfig::default()
    };
    let (mut blk, model) = device(config);
    // Left over from polling mode: the helper must re-arm before sleeping.
    blk.disable_interrupts();
    let mut irq = SleepUntilInterrupt {
        model: model.clone(),
        waits: 0,
    };
    let mut data = vec![0u8; 8 * 4096];
    blk.read_blocks(0, &mut data, &mut irq).unwrap();
    assert_eq!(data, expected(0, 8 * 4096));
    assert_eq!(
        model.borrow().seen.len(),
        4,
        "2 segments of 4 KiB per request"
    );
    assert_eq!(
        irq.waits, 1,
        "all four were published at once, one interrupt"
    );
    assert_eq!(model.borrow().interrupts_sent(), [1]);

    // Afterwards the device interrupts for a caller of the non-blocking API.
    let token = blk.submit_flush().unwrap();
    model.borrow_mut().step();
    assert_eq!(blk.ack_interrupt(), InterruptStatus::QUEUE);
    assert_eq!(blk.poll().unwrap().map(|c| c.token), Some(token));
}

// ---- counters, memory, narration ------------------------------------------------

#[test]
fn counters_count_requests_notifications_and_completions() {
    let (mut blk, model) = device(BlkModelConfig::default());
    let mut data = vec![0u8; 4096];
    for i in 0..10 {
        blk.read_blocks(i * 8, &mut data, &mut wait(&model))
            .unwrap();
    }
    let stats = blk.queue_stats(0).unwrap();
    assert_eq!(stats.requests, 10);
    assert_eq!(stats.completions, 10);
    assert_eq!(stats.failed, 0);
    assert_eq!(stats.bytes_read, 10 * 4096);
    assert_eq!(stats.bytes_written, 0);
    // One request at a time, and the device sleeps in between: each needs a
    // notification, and the model saw exactly those.
    assert_eq!(stats.notifications(), 10);
    assert_eq!(model.borrow().notifications.len(), 10);
    assert_eq!(stats.ring.added, 10);
    assert_eq!(
        stats.ring.indirect, 10,
        "header + data + status is 3 segments: indirect"
    );
    assert_eq!(blk.queue_stats(1), None);
    assert_model_clean(&model);
}

#[test]
fn requests_allocate_no_dma_memory_and_leave_no_shares() {
    let (mut blk, model) = device(BlkModelConfig::default());
    let pages = HostHal::live_dma_pages();
    assert!(pages > 0);
    let mut data = vec![0u8; 2048];
    for i in 0..50 {
        blk.read_blocks(i, &mut data, &mut wait(&model)).unwrap();
        blk.write_blocks(1000 + i, &data, &mut wait(&model))
            .unwrap();
        assert_eq!(HostHal::live_dma_pages(), pages, "round {i}");
    }
    blk.get_id(&mut wait(&model)).unwrap();
    blk.flush(&mut wait(&model)).unwrap();
    assert_eq!(HostHal::live_dma_pages(), pages);
    assert_eq!(HostHal::live_shares(), 0);
    drop(blk);
    assert_eq!(
        HostHal::live_dma_pages(),
        0,
        "dropping the driver frees everything"
    );
}

#[test]
fn each_request_is_narrated_at_trace_level() {
    let (mut blk, model) = device(BlkModelConfig::default());
    let mut data = vec![0u8; 4096];
    let (result, lines) = capture(|| blk.read_blocks(8, &mut data, &mut wait(&model)));
    result.unwrap();
    let submitted = lines
        .iter()
        .find(|l| l.starts_with("blk q0/") && l.contains("IN (read) sector 8, 8 sector(s)"))
        .unwrap_or_else(|| panic!("no submission line in {lines:#?}"));
    assert!(
        submitted.contains("3 segment(s): 16 R + 4096 W + 1 W"),
        "{submitted}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l
                .contains("IN (read) sector 8 complete: status 0x00 (OK), used length 4097: ok")),
        "no completion line in {lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("publish: avail.idx")),
        "the queue narrates too"
    );
}

// ---- trace capture ---------------------------------------------------------------------

#[test]
fn with_a_zero_copy_hal_data_arrives_without_unshare() {
    // `ZeroCopyHostHal` panics in `unshare`, and the device writes the
    // caller's buffer itself: the driver must skip the share records and
    // still hand back the device's data (and take the written data).
    install_logger();
    let model = BlkModel::new(BlkModelConfig::default()).shared();
    model.borrow_mut().fill_pattern();
    let mut blk = BlkDevice::<ZeroCopyHostHal, ModelTransport>::with_options(
        ModelTransport::new(model.clone(), TransportKind::MmioV2),
        BlkOptions::default(),
    )
    .expect("the device comes up");
    let mut w = wait(&model);
    // Buffers the device can reach as they are: inside DMA memory.
    let owner = blk.transport().dma_owner();
    let (device_addr, pages) = ZeroCopyHostHal::dma_alloc(owner, 2).unwrap();
    // SAFETY: two zeroed pages, ours until freed below.
    let memory = unsafe { std::slice::from_raw_parts_mut(pages.as_ptr(), 2 * 4096) };
    let (_, rest) = memory.split_at_mut(4096);

    // The non-blocking API reads into a registered DMA buffer in place.
    let data = blk
        .register_buffer(DmaBuffer::new(owner, 4096).unwrap())
        .unwrap();
    let token = blk.submit_read(40, &[data]).unwrap();
    let done = loop {
        match blk.poll().expect("no ring errors") {
            Some(c) => break c,
            None => w.wait().expect("the read completes"),
        }
    };
    assert_eq!(done.token, token);
    assert_eq!(done.result, Ok(()));
    assert_eq!(blk.buffer(data).unwrap(), &expected(40, 4096)[..]);

    let (written, back) = rest.split_at_mut(2 * 512);
    for (i, byte) in written.iter_mut().enumerate() {
        *byte = (i % 253) as u8;
    }
    blk.write_blocks(300, written, &mut w).unwrap();
    assert_eq!(disk(&model, 300, 2 * 512), written);
    let back = &mut back[..3 * 512];
    blk.read_blocks(299, back, &mut w).unwrap();
    assert_eq!(&back[..512], &expected(299, 512)[..]);
    assert_eq!(&back[512..], &written[..]);
    // A buffer the device cannot reach is refused, not handed over.
    let mut outside = vec![0u8; 512];
    assert!(matches!(
        blk.read_blocks(0, &mut outside, &mut w),
        Err(BlkError::Share(_))
    ));
    assert_eq!(blk.stats().bytes_read, 4096 + 3 * 512);
    assert_model_clean(&model);
    // Rings, request pool, the registered buffer and every share: the disk's own.
    HostHal::assert_dma_only_for(owner);
    drop(blk);
    // SAFETY: what dma_alloc returned; the device is gone.
    unsafe { ZeroCopyHostHal::dma_dealloc(owner, device_addr, pages, 2) };
}
