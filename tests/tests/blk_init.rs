//! Bringing the virtio-blk driver (`drivers::blk`) up against the block
//! device model: which features it accepts, what it reads from the
//! configuration, legacy and modern transports, the register-level
//! virtio-mmio model (versions 1 and 2), and VIRTIO_F_ORDER_PLATFORM.
//!
//! `RUST_LOG=trace cargo test -p tests --test blk_init -- --nocapture` shows
//! the driver's narration. Shared set-up: `blk_common/mod.rs`.

mod blk_common;

use blk_common::*;

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
