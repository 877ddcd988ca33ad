//! The virtio-blk driver (`drivers::blk`) against the block device model
//! (`tests::blk_model`, on rust-vmm's `virtio-queue`) with a RAM disk.
//! Every test checks data against the backing store, request shapes the
//! device saw, counters or error values, and that the model saw no rule
//! broken.
//!
//! `RUST_LOG=trace cargo test -p tests --test blk -- --nocapture` shows the
//! driver's narration.

use drivers::blk::{
    feature, BlkDevice, BlkError, BlkOptions, BufferId, Completion, Op, Request, RequestError,
    RequestType, SetupError, SUPPORTED_FEATURES,
};
use drivers::device::{BoundedWait, DeviceError, Wait, WaitTimeout};
use drivers::features;
use drivers::queue::MemoryOrder;
use drivers::transport::mmio::MmioTransport;
use drivers::transport::{InterruptStatus, Transport, TransportKind, RESET_TIMEOUT_US};
use hal::{DmaBuffer, Hal};
use tests::blk_model::{
    pattern_byte, req, status, BlkModel, BlkModelConfig, LenOverride, ModelTransport,
    SharedBlkModel, OFFER_EVERYTHING,
};
use tests::host_hal::{HostHal, ZeroCopyHostHal};
use tests::models::virtio::{MmioWindow, SharedCore, VirtioCore};
use tests::vq_model::Rng;

type Blk = BlkDevice<HostHal, ModelTransport>;

const ACK: u8 = 1;
const DRIVER: u8 = 2;
const DRIVER_OK: u8 = 4;
const FEATURES_OK: u8 = 8;
const FAILED: u8 = 128;

fn device(config: BlkModelConfig) -> (Blk, SharedBlkModel) {
    device_with(config, TransportKind::MmioV2, BlkOptions::default())
}

fn device_with(
    config: BlkModelConfig,
    kind: TransportKind,
    options: BlkOptions,
) -> (Blk, SharedBlkModel) {
    install_logger();
    let model = BlkModel::new(config).shared();
    model.borrow_mut().fill_pattern();
    let blk = Blk::with_options(ModelTransport::new(model.clone(), kind), options)
        .expect("the device comes up");
    (blk, model)
}

/// A wait that lets the model run once per wait, at most `limit` times.
fn stepper(model: &SharedBlkModel, limit: u64) -> BoundedWait<impl FnMut()> {
    let model = model.clone();
    BoundedWait::new(limit, move || model.borrow_mut().step())
}

fn wait(model: &SharedBlkModel) -> BoundedWait<impl FnMut()> {
    stepper(model, 1000)
}

/// What the pattern-filled disk holds at `sector`, `len` bytes.
fn expected(sector: u64, len: usize) -> Vec<u8> {
    let start = sector as usize * 512;
    (start..start + len).map(pattern_byte).collect()
}

fn disk(model: &SharedBlkModel, sector: u64, len: usize) -> Vec<u8> {
    let start = sector as usize * 512;
    model.borrow().disk[start..start + len].to_vec()
}

fn assert_model_clean(model: &SharedBlkModel) {
    let m = model.borrow();
    assert!(
        m.violations.is_empty(),
        "driver broke rules: {:?}",
        m.violations
    );
    assert_eq!(
        m.missed_notifications, 0,
        "the device slept with work pending"
    );
}

fn data_lens(model: &SharedBlkModel) -> Vec<Vec<u32>> {
    model
        .borrow()
        .seen
        .iter()
        .map(|r| r.data_segment_lens())
        .collect()
}

/// Registers a zeroed DMA buffer of `len` bytes for the non-blocking API.
fn dma_buffer(blk: &mut Blk, len: usize) -> BufferId {
    let owner = blk.transport().dma_owner();
    blk.register_buffer(DmaBuffer::new(owner, len).unwrap())
        .unwrap()
}

/// The bytes of registered buffer `id` (held, not lent).
fn bytes(blk: &Blk, id: BufferId) -> Vec<u8> {
    blk.buffer(id).expect("the buffer is back").to_vec()
}

/// Collects completions until `count` have arrived, stepping the model.
fn collect(blk: &mut Blk, model: &SharedBlkModel, count: usize) -> Vec<drivers::blk::Completion> {
    let mut done = Vec::new();
    let mut w = wait(model);
    while done.len() < count {
        match blk.poll().expect("no ring errors") {
            Some(c) => done.push(c),
            None => w.wait().expect("completions arrive"),
        }
    }
    done
}

// ---- bring-up ----------------------------------------------------------

#[test]
fn bring_up_accepts_exactly_the_supported_features_and_reads_the_configuration() {
    let config = BlkModelConfig {
        features: OFFER_EVERYTHING | features::RING_PACKED | features::IN_ORDER | 1, // + BARRIER
        size_max: 65536,
        seg_max: 30,
        blk_size: 4096,
        topology: (3, 1, 8, 256),
        writeback: 0,
        num_queues: 2,
        discard: (1024, 1, 8),
        write_zeroes: (2048, 1, 1),
        ..BlkModelConfig::default()
    };
    let (mut blk, model) = device(config);
    let m = model.borrow();
    assert_eq!(
        m.driver_features,
        SUPPORTED_FEATURES
            | features::RING_INDIRECT_DESC
            | features::RING_EVENT_IDX
            | features::VERSION_1,
        "GEOMETRY, LIFETIME, SECURE_ERASE, BARRIER, PACKED and IN_ORDER are not implemented"
    );
    assert_eq!(blk.features(), m.driver_features);
    assert_eq!(
        m.status_writes,
        [
            0,
            ACK,
            ACK | DRIVER,
            ACK | DRIVER | FEATURES_OK,
            ACK | DRIVER | FEATURES_OK | DRIVER_OK
        ]
    );
    let info = blk.info();
    assert_eq!(info.capacity_sectors, 2048);
    assert_eq!(info.size_max, Some(65536));
    assert_eq!(info.seg_max, Some(30));
    assert_eq!(info.blk_size, Some(4096));
    let topology = info.topology.unwrap();
    assert_eq!(
        (
            topology.physical_block_exp,
            topology.alignment_offset,
            topology.min_io_size,
            topology.opt_io_size
        ),
        (3, 1, 8, 256)
    );
    assert_eq!(info.writeback, Some(false));
    assert_eq!(info.num_queues, 2);
    let discard = info.discard.unwrap();
    assert_eq!(
        (
            discard.max_sectors,
            discard.max_segments,
            discard.sector_alignment
        ),
        (1024, 1, 8)
    );
    let wz = info.write_zeroes.unwrap();
    assert_eq!(
        (wz.max_sectors, wz.max_segments, wz.may_unmap),
        (2048, 1, true)
    );
    assert!(info.flush);
    assert!(info.read_only, "RO is part of the offer");
    assert_eq!(blk.logical_block_size(), 4096);
    assert_eq!(blk.queue_count(), 2);
    assert_eq!(m.live_queues(), 2);
    assert_eq!(blk.queue_size(0), Some(64));
    assert_eq!(
        blk.max_data_segments(),
        30,
        "seg_max is below the driver's 32"
    );
    assert_eq!(blk.max_segment_bytes(), 65536);
}

#[test]
fn fields_of_features_not_offered_are_absent() {
    let config = BlkModelConfig {
        features: features::VERSION_1,
        ..BlkModelConfig::default()
    };
    let (blk, model) = device(config);
    let info = blk.info();
    assert_eq!(
        (info.size_max, info.seg_max, info.blk_size, info.writeback),
        (None, None, None, None)
    );
    assert!(info.topology.is_none() && info.discard.is_none() && info.write_zeroes.is_none());
    assert_eq!(info.num_queues, 1);
    assert_eq!(blk.logical_block_size(), 512);
    assert_eq!(model.borrow().driver_features, features::VERSION_1);
    // Without indirect tables a chain is the whole ring: 64 - header - status,
    // capped by the driver's 32.
    assert_eq!(blk.max_data_segments(), 32);
}

#[test]
fn size_max_zero_means_no_limit_and_below_a_sector_fails_bring_up() {
    let config = BlkModelConfig {
        features: BlkModelConfig::default().features | feature::SIZE_MAX,
        size_max: 0,
        ..BlkModelConfig::default()
    };
    let (blk, _model) = device(config.clone());
    assert_eq!(blk.max_segment_bytes(), drivers::blk::MAX_REQUEST_BYTES);

    let model = BlkModel::new(BlkModelConfig {
        size_max: 100,
        ..config
    })
    .shared();
    let refused = Blk::new(ModelTransport::new(model.clone(), TransportKind::MmioV2));
    assert!(matches!(refused, Err(SetupError::BadConfig(_))));
    let m = model.borrow();
    let last = *m.status_writes.last().unwrap();
    assert_eq!(last & FAILED, FAILED, "the device is marked FAILED");
    assert_eq!(last & DRIVER_OK, 0, "and never went live");
}

#[test]
fn a_split_only_driver_refuses_a_negotiated_packed_ring_and_fails_the_device() {
    install_logger();
    let model = BlkModel::new(BlkModelConfig {
        features: BlkModelConfig::default().features | features::RING_PACKED,
        ..BlkModelConfig::default()
    })
    .shared();
    let mut transport = ModelTransport::new(model.clone(), TransportKind::MmioV2);
    let result = drivers::device::bring_up(
        &mut transport,
        0,
        features::SHARED_RING_FEATURES | features::RING_PACKED,
        |t, negotiated| {
            assert_ne!(negotiated & features::RING_PACKED, 0);
            drivers::device::setup_split_queue::<HostHal, _>(t, 0, 64, negotiated)
        },
    );
    assert_eq!(result.err(), Some(DeviceError::SplitRingOnly { queue: 0 }));
    let m = model.borrow();
    assert!(m.queue_setups.is_empty(), "no ring was programmed");
    assert_eq!(
        m.status_writes.last().map(|s| s & (FAILED | DRIVER_OK)),
        Some(FAILED)
    );
}

#[test]
fn capacity_is_read_consistently_when_the_device_changes_it_mid_read() {
    install_logger();
    let new_capacity = (1u64 << 32) + 4096;
    let model = BlkModel::new(BlkModelConfig::default()).shared();
    model.borrow_mut().config_change = Some((
        1,
        BlkModelConfig {
            capacity_sectors: new_capacity,
            ..BlkModelConfig::default()
        },
    ));
    let blk = Blk::new(ModelTransport::new(model.clone(), TransportKind::MmioV2)).unwrap();
    // The first read saw the low half of the old capacity (2048), the
    // second the high half of the new one: a torn (1 << 32) + 2048 unless
    // the generation loop reads again.
    assert_eq!(blk.capacity_sectors(), new_capacity);
    assert_eq!(model.borrow().generation, 1);
}

#[test]
fn a_legacy_transport_skips_features_ok_and_uses_the_contiguous_layout() {
    let (mut blk, model) = device_with(
        BlkModelConfig::default(),
        TransportKind::MmioV1,
        BlkOptions::default(),
    );
    {
        let m = model.borrow();
        assert_eq!(
            m.status_writes,
            [0, ACK, ACK | DRIVER, ACK | DRIVER | DRIVER_OK]
        );
        assert_eq!(m.driver_features & features::VERSION_1, 0);
        let (queue, addrs) = m.queue_setups[0];
        assert_eq!(queue, 0);
        assert_eq!(addrs.driver, addrs.desc + 16 * u64::from(addrs.size));
        assert_eq!(addrs.device % 4096, 0);
        assert_eq!(addrs.desc % 4096, 0);
    }
    let data: Vec<u8> = (0..4096).map(|i| (i * 3) as u8).collect();
    blk.write_blocks(40, &data, &mut wait(&model)).unwrap();
    assert_eq!(disk(&model, 40, 4096), data);
    let mut back = vec![0u8; 4096];
    blk.read_blocks(40, &mut back, &mut wait(&model)).unwrap();
    assert_eq!(back, data);
    assert_model_clean(&model);
}

#[test]
fn legacy_pci_uses_the_fixed_queue_size_and_only_32_feature_bits() {
    let options = BlkOptions {
        max_queue_size: 16,
        ..BlkOptions::default()
    };
    let (mut blk, model) =
        device_with(BlkModelConfig::default(), TransportKind::PciLegacy, options);
    assert_eq!(blk.queue_size(0), Some(64), "legacy PCI cannot choose");
    assert_eq!(model.borrow().driver_features >> 32, 0);
    let mut back = vec![0u8; 1024];
    blk.read_blocks(3, &mut back, &mut wait(&model)).unwrap();
    assert_eq!(back, expected(3, 1024));
}

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

// ---- through the register-level virtio-mmio model ----------------------------------

fn mmio_device(
    version: u32,
    base: u64,
) -> (
    BlkDevice<HostHal, MmioTransport<HostHal>>,
    SharedCore,
    SharedBlkModel,
) {
    install_logger();
    let config = BlkModelConfig {
        features: if version == 1 {
            BlkModelConfig::default().features & !features::VERSION_1
        } else {
            BlkModelConfig::default().features
        },
        ..BlkModelConfig::default()
    };
    let model = BlkModel::new(config.clone()).shared();
    model.borrow_mut().fill_pattern();
    let core = VirtioCore::new(
        2,
        config.features,
        config.num_queues,
        config.queue_max,
        config.config_bytes(),
    )
    .shared();
    HostHal::map_mmio(base, 0x200, MmioWindow::new(core.clone(), version));
    let transport = MmioTransport::<HostHal>::new(base, 0x200).expect("a virtio-mmio device");
    let blk = BlkDevice::new(transport).expect("the device comes up");
    (blk, core, model)
}

fn mmio_wait(core: &SharedCore, model: &SharedBlkModel) -> BoundedWait<impl FnMut()> {
    let (core, model) = (core.clone(), model.clone());
    BoundedWait::new(100, move || {
        let mut m = model.borrow_mut();
        m.sync_with_core(&mut core.borrow_mut());
        m.step();
        m.sync_with_core(&mut core.borrow_mut());
    })
}

#[test]
fn the_driver_works_over_virtio_mmio_registers_version_1_and_2() {
    for (version, base) in [(2u32, 0xfeb0_0000u64), (1, 0xfeb0_0200)] {
        let (mut blk, core, model) = mmio_device(version, base);
        let data: Vec<u8> = (0..8192)
            .map(|i| (i * 5 + version as usize) as u8)
            .collect();
        blk.write_blocks(64, &data, &mut mmio_wait(&core, &model))
            .unwrap();
        assert_eq!(disk(&model, 64, 8192), data, "v{version}");
        let mut back = vec![0u8; 8192];
        blk.read_blocks(64, &mut back, &mut mmio_wait(&core, &model))
            .unwrap();
        assert_eq!(back, data, "v{version}");
        let serial = blk.get_id(&mut mmio_wait(&core, &model)).unwrap();
        assert_eq!(serial.as_str(), Some("model-disk"));
        let c = core.borrow();
        assert!(c.violations.is_empty(), "v{version}: {:?}", c.violations);
        let expected_status = if version == 1 {
            vec![0, ACK, ACK | DRIVER, ACK | DRIVER | DRIVER_OK]
        } else {
            vec![
                0,
                ACK,
                ACK | DRIVER,
                ACK | DRIVER | FEATURES_OK,
                ACK | DRIVER | FEATURES_OK | DRIVER_OK,
            ]
        };
        assert_eq!(c.status_writes, expected_status, "v{version}");
        drop(c);
        assert_model_clean(&model);
        assert_eq!(model.borrow().seen.len(), 3);
    }
    HostHal::clear_devices();
}

#[test]
fn order_platform_is_accepted_and_the_queues_use_the_platforms_barriers() {
    // §6.1 VIRTIO_F_ORDER_PLATFORM: a hardware device asks for it; the
    // driver accepts it and its queues then use the platform's device
    // barriers (hal::barrier). (The packed ring's barriers go through the
    // same `MemoryOrder`; its tests are in tests/tests/packed_queue.rs.)
    for extra in [features::ORDER_PLATFORM, 0] {
        let config = BlkModelConfig {
            features: BlkModelConfig::default().features | extra,
            ..BlkModelConfig::default()
        };
        let (mut blk, model) = device_with(config, TransportKind::PciModern, BlkOptions::default());
        let platform = extra & features::ORDER_PLATFORM != 0;
        assert_eq!(blk.features() & features::ORDER_PLATFORM != 0, platform);
        let want = if platform {
            MemoryOrder::Platform
        } else {
            MemoryOrder::Smp
        };
        assert_eq!(blk.queue_memory_order(0), Some(want));
        let mut data = vec![0u8; 8192];
        blk.read_blocks(16, &mut data, &mut wait(&model)).unwrap();
        assert_eq!(data, expected(16, 8192));
        blk.write_blocks(16, &data, &mut wait(&model)).unwrap();
        assert_model_clean(&model);
    }
    // Never on a legacy transport (bit 36 is beyond its 32 feature bits).
    let config = BlkModelConfig {
        features: BlkModelConfig::default().features | features::ORDER_PLATFORM,
        ..BlkModelConfig::default()
    };
    let (mut blk, _model) = device_with(config, TransportKind::PciLegacy, BlkOptions::default());
    assert_eq!(blk.queue_memory_order(0), Some(MemoryOrder::Smp));
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

// ---- trace capture ---------------------------------------------------------------------

use tests::log_capture::{capture, install_logger};

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
