//! The virtio-balloon driver (`drivers::balloon`) against the balloon model
//! (`tests/src/balloon_model.rs`) over virtio-mmio v1 and v2: it follows the
//! host's target up and down with pages from a page source that knows
//! which pages are in use, reports `actual`, answers statistics requests,
//! and survives a device that stalls or lies.

use std::collections::BTreeSet;

use drivers::balloon::{
    feature, Adjusted, BalloonDevice, BalloonError, MemoryStats, PageSource, StatTag,
    PFNS_PER_REQUEST,
};
use drivers::device::BoundedWait;
use drivers::features;
use drivers::transport::mmio::MmioTransport;
use drivers::transport::Transport;
use tests::balloon_model::{BalloonModel, SharedBalloonModel};
use tests::host_hal::HostHal;
use tests::models::trace_logging;
use tests::models::virtio::{MmioWindow, SharedCore};

type Driver = BalloonDevice<HostHal, MmioTransport<HostHal>>;

/// A pretend frame allocator: pages 0x1000.. of which some are "in use".
struct Frames {
    free: BTreeSet<u32>,
    in_use: BTreeSet<u32>,
    given_out: BTreeSet<u32>,
}

impl Frames {
    fn new(pages: u32) -> Self {
        let in_use: BTreeSet<u32> = (0x1000..0x1000 + pages).filter(|p| p % 3 == 0).collect();
        let free = (0x1000..0x1000 + pages)
            .filter(|p| !in_use.contains(p))
            .collect();
        Self {
            free,
            in_use,
            given_out: BTreeSet::new(),
        }
    }
}

impl PageSource for Frames {
    fn take(&mut self) -> Option<u32> {
        let pfn = self.free.pop_first()?;
        self.given_out.insert(pfn);
        Some(pfn)
    }

    fn give_back(&mut self, pfn: u32) {
        assert!(
            self.given_out.remove(&pfn),
            "page {pfn:#x} given back twice or never taken"
        );
        self.free.insert(pfn);
    }
}

const STATS: MemoryStats = MemoryStats {
    free: 100 << 20,
    total: 256 << 20,
};

fn attach(base: u64, version: u32) -> (Driver, SharedCore, SharedBalloonModel) {
    trace_logging();
    let offered = if version == 1 {
        BalloonModel::MODERN_FEATURES & !features::VERSION_1 | feature::MUST_TELL_HOST
    } else {
        BalloonModel::MODERN_FEATURES
    };
    let core = BalloonModel::core(offered).shared();
    HostHal::map_mmio(base, 0x200, MmioWindow::new(core.clone(), version));
    let transport = MmioTransport::<HostHal>::new(base, 0x200).expect("a virtio-mmio device");
    let model = BalloonModel::shared();
    let driver =
        BalloonDevice::new(transport, features::SHARED_RING_FEATURES, STATS).expect("bring-up");
    (driver, core, model)
}

fn runs(core: &SharedCore, model: &SharedBalloonModel, limit: u64) -> BoundedWait<impl FnMut()> {
    let (core, model) = (core.clone(), model.clone());
    BoundedWait::new(limit, move || {
        let mut m = model.borrow_mut();
        m.sync_with_core(&mut core.borrow_mut());
        m.step();
        m.sync_with_core(&mut core.borrow_mut());
    })
}

/// Adjusts until settled; returns the steps.
fn settle(
    driver: &mut Driver,
    frames: &mut Frames,
    core: &SharedCore,
    model: &SharedBalloonModel,
) -> Vec<Adjusted> {
    let mut steps = Vec::new();
    loop {
        let step = driver
            .adjust(frames, &mut runs(core, model, 10))
            .expect("adjust");
        steps.push(step);
        if matches!(step, Adjusted::Settled | Adjusted::NoFreePages) {
            return steps;
        }
    }
}

#[test]
fn follows_the_target_down_and_up_with_free_pages_only() {
    for (base, version) in [(0xfeb0_6000, 2), (0xfeb0_6200, 1)] {
        let (mut balloon, core, model) = attach(base, version);
        assert_eq!(balloon.queue_count(), 3, "statsq with STATS_VQ");
        let mut frames = Frames::new(6000);
        let free_before = frames.free.len();

        BalloonModel::set_target(&mut core.borrow_mut(), 2500);
        let steps = settle(&mut balloon, &mut frames, &core, &model);
        assert_eq!(
            steps,
            [
                Adjusted::Inflated(PFNS_PER_REQUEST),
                Adjusted::Inflated(PFNS_PER_REQUEST),
                Adjusted::Inflated(2500 - 2 * PFNS_PER_REQUEST),
                Adjusted::Settled
            ]
        );
        assert_eq!(balloon.pages(), 2500);
        assert_eq!(BalloonModel::actual(&core.borrow()), 2500, "actual written");
        assert_eq!(
            frames.free.len(),
            free_before - 2500,
            "free pages went down by the balloon"
        );
        let m = model.borrow();
        assert_eq!(m.held.len(), 2500);
        assert!(
            m.held.is_disjoint(&frames.in_use),
            "no page in use was given away"
        );
        drop(m);

        BalloonModel::set_target(&mut core.borrow_mut(), 1000);
        settle(&mut balloon, &mut frames, &core, &model);
        assert_eq!(balloon.pages(), 1000);
        assert_eq!(BalloonModel::actual(&core.borrow()), 1000);
        BalloonModel::set_target(&mut core.borrow_mut(), 0);
        settle(&mut balloon, &mut frames, &core, &model);
        assert_eq!(frames.free.len(), free_before, "every page came back");
        assert!(model.borrow().held.is_empty());
        assert!(
            model.borrow().violations.is_empty(),
            "{:?}",
            model.borrow().violations
        );
        assert!(core.borrow().violations.is_empty());
        HostHal::assert_dma_only_for(balloon.transport().dma_owner());
        drop(balloon);
        HostHal::forget_owners_seen();
        HostHal::clear_devices();
    }
}

#[test]
fn the_host_cannot_have_more_than_is_free() {
    let (mut balloon, core, model) = attach(0xfeb0_6400, 2);
    let mut frames = Frames::new(300);
    let free = frames.free.len();
    BalloonModel::set_target(&mut core.borrow_mut(), 1000);
    let steps = settle(&mut balloon, &mut frames, &core, &model);
    assert_eq!(steps, [Adjusted::Inflated(free), Adjusted::NoFreePages]);
    assert_eq!(balloon.pages(), free);
    assert!(model.borrow().held.is_disjoint(&frames.in_use));
    balloon
        .empty(&mut frames, &mut runs(&core, &model, 10))
        .expect("deflate everything");
    assert_eq!(frames.free.len(), free);
    assert_eq!(BalloonModel::actual(&core.borrow()), 0);
    drop(balloon);
    HostHal::clear_devices();
}

#[test]
fn statistics_are_offered_at_start_and_refreshed_on_request() {
    let (mut balloon, core, model) = attach(0xfeb0_6600, 2);
    // The device picks the first buffer up.
    {
        let mut m = model.borrow_mut();
        m.sync_with_core(&mut core.borrow_mut());
        m.step();
    }
    let expect = |free: u64, total: u64| {
        vec![
            (StatTag::MemFree as u16, free),
            (StatTag::MemTotal as u16, total),
            (StatTag::Available as u16, free),
        ]
    };
    assert_eq!(model.borrow().last_stats, expect(STATS.free, STATS.total));
    assert_eq!(
        balloon.answer_stats(|| unreachable!()),
        Ok(false),
        "not asked yet"
    );
    assert!(model.borrow_mut().request_stats());
    model.borrow_mut().sync_with_core(&mut core.borrow_mut());
    let fresh = MemoryStats {
        free: 42 << 20,
        total: STATS.total,
    };
    assert_eq!(balloon.answer_stats(|| fresh), Ok(true));
    {
        let mut m = model.borrow_mut();
        m.sync_with_core(&mut core.borrow_mut());
        m.step();
    }
    assert_eq!(model.borrow().last_stats, expect(42 << 20, STATS.total));
    assert_eq!(balloon.stats_answered(), 1);
    assert!(
        model.borrow().violations.is_empty(),
        "{:?}",
        model.borrow().violations
    );
    drop(balloon);
    HostHal::clear_devices();
}

#[test]
fn a_stalled_device_is_reset_and_its_pages_come_back() {
    let (mut balloon, core, model) = attach(0xfeb0_6800, 2);
    let mut frames = Frames::new(3000);
    let free = frames.free.len();
    BalloonModel::set_target(&mut core.borrow_mut(), 1500);
    balloon
        .adjust(&mut frames, &mut runs(&core, &model, 10))
        .unwrap();
    model.borrow_mut().stall = true;
    let error = balloon.adjust(&mut frames, &mut runs(&core, &model, 10));
    assert!(matches!(error, Err(BalloonError::TimedOut(_))), "{error:?}");
    assert_eq!(core.borrow().status_writes.last(), Some(&0), "reset");
    assert_eq!(
        frames.free.len(),
        free - PFNS_PER_REQUEST,
        "the unsent batch was given back"
    );
    for pfn in balloon.take_pages_after_reset() {
        frames.give_back(pfn);
    }
    assert_eq!(
        frames.free.len(),
        free,
        "after the reset every page is free again"
    );
    assert_eq!(
        balloon.adjust(&mut frames, &mut runs(&core, &model, 10)),
        Err(BalloonError::Stopped)
    );
    drop(balloon);
    HostHal::clear_devices();
}

#[test]
fn a_used_length_on_a_read_only_buffer_is_refused() {
    let (mut balloon, core, model) = attach(0xfeb0_6a00, 2);
    let mut frames = Frames::new(100);
    model.borrow_mut().lie_about_length = true;
    BalloonModel::set_target(&mut core.borrow_mut(), 10);
    let error = balloon.adjust(&mut frames, &mut runs(&core, &model, 10));
    assert!(matches!(error, Err(BalloonError::Queue(_))), "{error:?}");
    assert!(balloon.is_stopped());
    drop(balloon);
    HostHal::clear_devices();
}

#[test]
fn a_device_that_never_finishes_a_reset_keeps_its_memory_and_its_pages() {
    let base = 0xfeb0_6e00;
    let (mut balloon, core, model) = attach(base, 2);
    let mut frames = Frames::new(600);
    BalloonModel::set_target(&mut core.borrow_mut(), 100);
    settle(&mut balloon, &mut frames, &core, &model);
    assert_eq!(balloon.pages(), 100);
    let live = HostHal::live_dma_pages();
    core.borrow_mut().reset_delay_reads = u32::MAX;
    let kept = hal::kept_forever();
    drop(balloon);
    assert_eq!(
        HostHal::live_dma_pages(),
        live,
        "rings and buffers not freed: the device may still use them"
    );
    assert!(
        hal::kept_forever() >= kept + 5,
        "three rings, two buffers kept"
    );
    HostHal::clear_devices();
}

#[test]
fn a_stalled_device_that_never_finishes_its_reset_keeps_the_pages_it_holds() {
    // Unlike a reset device, this one never confirmed it let go of the
    // balloon's pages: giving them back could hand the host's pages to the
    // guest again. They stay in the balloon, and its memory is kept.
    let (mut balloon, core, model) = attach(0xfeb0_6a00, 2);
    let mut frames = Frames::new(3000);
    BalloonModel::set_target(&mut core.borrow_mut(), 1500);
    balloon
        .adjust(&mut frames, &mut runs(&core, &model, 10))
        .unwrap();
    let held = balloon.pages();
    assert!(held > 0);
    model.borrow_mut().stall = true;
    core.borrow_mut().reset_delay_reads = u32::MAX;
    let live = HostHal::live_dma_pages();
    let error = balloon.adjust(&mut frames, &mut runs(&core, &model, 10));
    assert!(matches!(error, Err(BalloonError::TimedOut(_))), "{error:?}");
    assert!(balloon.is_dead());
    assert!(
        balloon.take_pages_after_reset().is_empty(),
        "no page comes back from a device that was never reset"
    );
    assert_eq!(balloon.pages(), held);
    drop(balloon);
    assert_eq!(HostHal::live_dma_pages(), live, "nothing freed");
    HostHal::clear_devices();
}
