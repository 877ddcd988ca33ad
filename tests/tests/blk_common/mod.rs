//! What the `blk_*` host tests share: the driver against the block device
//! model (`tests::blk_model`, on rust-vmm's `virtio-queue`) with a RAM disk,
//! waits that run the model, and the checks every test ends with. Each
//! test file uses part of it (`use blk_common::*`, a prelude: hence the
//! allowances for what one file leaves unused).

#![allow(dead_code, unused_imports)]

pub use drivers::blk::{
    feature, BlkDevice, BlkError, BlkOptions, BufferId, Completion, Op, Request, RequestError,
    RequestType, SetupError, SUPPORTED_FEATURES,
};
pub use drivers::device::{BoundedWait, DeviceError, Wait, WaitTimeout};
pub use drivers::features;
pub use drivers::queue::MemoryOrder;
pub use drivers::transport::mmio::MmioTransport;
pub use drivers::transport::{InterruptStatus, Transport, TransportKind, RESET_TIMEOUT_US};
pub use hal::{DmaBuffer, Hal};
pub use tests::blk_model::{
    pattern_byte, req, status, BlkModel, BlkModelConfig, LenOverride, ModelTransport,
    SharedBlkModel, OFFER_EVERYTHING,
};
pub use tests::host_hal::{HostHal, ZeroCopyHostHal};
pub use tests::models::virtio::{MmioWindow, SharedCore, VirtioCore};
pub use tests::vq_model::Rng;

pub type Blk = BlkDevice<HostHal, ModelTransport>;

pub const ACK: u8 = 1;
pub const DRIVER: u8 = 2;
pub const DRIVER_OK: u8 = 4;
pub const FEATURES_OK: u8 = 8;
pub const FAILED: u8 = 128;

pub fn device(config: BlkModelConfig) -> (Blk, SharedBlkModel) {
    device_with(config, TransportKind::MmioV2, BlkOptions::default())
}

pub fn device_with(
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
pub fn stepper(model: &SharedBlkModel, limit: u64) -> BoundedWait<impl FnMut()> {
    let model = model.clone();
    BoundedWait::new(limit, move || model.borrow_mut().step())
}

pub fn wait(model: &SharedBlkModel) -> BoundedWait<impl FnMut()> {
    stepper(model, 1000)
}

/// What the pattern-filled disk holds at `sector`, `len` bytes.
pub fn expected(sector: u64, len: usize) -> Vec<u8> {
    let start = sector as usize * 512;
    (start..start + len).map(pattern_byte).collect()
}

pub fn disk(model: &SharedBlkModel, sector: u64, len: usize) -> Vec<u8> {
    let start = sector as usize * 512;
    model.borrow().disk[start..start + len].to_vec()
}

pub fn assert_model_clean(model: &SharedBlkModel) {
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

pub fn data_lens(model: &SharedBlkModel) -> Vec<Vec<u32>> {
    model
        .borrow()
        .seen
        .iter()
        .map(|r| r.data_segment_lens())
        .collect()
}

/// Registers a zeroed DMA buffer of `len` bytes for the non-blocking API.
pub fn dma_buffer(blk: &mut Blk, len: usize) -> BufferId {
    let owner = blk.transport().dma_owner();
    blk.register_buffer(DmaBuffer::new(owner, len).unwrap())
        .unwrap()
}

/// The bytes of registered buffer `id` (held, not lent).
pub fn bytes(blk: &Blk, id: BufferId) -> Vec<u8> {
    blk.buffer(id).expect("the buffer is back").to_vec()
}

/// Collects completions until `count` have arrived, stepping the model.
pub fn collect(
    blk: &mut Blk,
    model: &SharedBlkModel,
    count: usize,
) -> Vec<drivers::blk::Completion> {
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
pub use tests::log_capture::{capture, install_logger};

// ---- through the register-level virtio-mmio model ----------------------------------

pub fn mmio_device(
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

pub fn mmio_wait(core: &SharedCore, model: &SharedBlkModel) -> BoundedWait<impl FnMut()> {
    let (core, model) = (core.clone(), model.clone());
    BoundedWait::new(100, move || {
        let mut m = model.borrow_mut();
        m.sync_with_core(&mut core.borrow_mut());
        m.step();
        m.sync_with_core(&mut core.borrow_mut());
    })
}
