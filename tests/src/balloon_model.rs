//! A virtio-balloon device model (virtio 1.2 §5.5) for testing
//! `drivers::balloon` through the register-level transports.
//!
//! inflateq, deflateq and statsq are [`VqModel`]s (rust-vmm's
//! `virtio-queue`). The model keeps the set of pages the driver has put in
//! the balloon, and records as violations what a correct driver never
//! does: a page inflated twice, a page deflated that was not in the
//! balloon, a PFN list that is not a whole number of `le32`s, a writable
//! descriptor. The test sets the host's target with
//! [`BalloonModel::set_target`] (the `num_pages` config field) and reads
//! the driver's `actual` back from the configuration. Statistics: the model
//! holds the driver's stats buffer, like QEMU, until
//! [`BalloonModel::request_stats`] hands it back, and it decodes what the
//! buffer said. Knobs: never answer ([`BalloonModel::stall`]), or report a
//! used length on a read-only buffer ([`BalloonModel::lie_about_length`]).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use drivers::features;

use crate::models::virtio::VirtioCore;
use crate::vq_model::{Chain, VqModel};

/// The model; see the module docs.
#[derive(Default)]
pub struct BalloonModel {
    queues: [Option<VqModel>; 3],
    /// Pages in the balloon, as the device knows them.
    pub held: BTreeSet<u32>,
    /// Rules the driver broke.
    pub violations: Vec<String>,
    /// The stats buffer the device holds, if any.
    stats_chain: Option<Chain>,
    /// The statistics the driver last sent: (tag, value).
    pub last_stats: Vec<(u16, u64)>,
    /// Never complete inflate / deflate requests.
    pub stall: bool,
    /// Complete inflate / deflate with a used length of 4 (the buffers are read-only).
    pub lie_about_length: bool,
    isr: u8,
}

/// Shared handle.
pub type SharedBalloonModel = Rc<RefCell<BalloonModel>>;

impl BalloonModel {
    /// What QEMU 7.2 offers on a modern transport: MUST_TELL_HOST? no;
    /// STATS_VQ, DEFLATE_ON_OOM off by default; ring features; VERSION_1.
    pub const MODERN_FEATURES: u64 =
        (1 << 1) | features::RING_INDIRECT_DESC | features::RING_EVENT_IDX | features::VERSION_1;

    /// A shareable model.
    pub fn shared() -> SharedBalloonModel {
        Rc::new(RefCell::new(Self::default()))
    }

    /// The register-level core: type 5, three queues, `num_pages` and `actual`.
    pub fn core(features: u64) -> VirtioCore {
        VirtioCore::new(5, features, 3, 64, vec![0; 8])
    }

    /// Sets the host's target (`num_pages`).
    pub fn set_target(core: &mut VirtioCore, pages: u32) {
        core.config[0..4].copy_from_slice(&pages.to_le_bytes());
    }

    /// The driver's `actual`.
    pub fn actual(core: &VirtioCore) -> u32 {
        u32::from_le_bytes([
            core.config[4],
            core.config[5],
            core.config[6],
            core.config[7],
        ])
    }

    /// Gives the stats buffer back to the driver (asking for new numbers).
    pub fn request_stats(&mut self) -> bool {
        let Some(chain) = self.stats_chain.take() else {
            return false;
        };
        if let Some(vq) = self.queues[2].as_mut() {
            vq.complete_with_len(chain.head, 0);
            if vq.signal_used() {
                self.isr |= 1;
            }
        }
        true
    }

    /// Picks up queues and notifications from the registers.
    pub fn sync_with_core(&mut self, core: &mut VirtioCore) {
        if core.status & 4 == 0 {
            self.queues = Default::default();
            core.notifications.clear();
            return;
        }
        let event_idx = core.driver_features & features::RING_EVENT_IDX != 0;
        for (i, q) in core.queues.iter().enumerate() {
            if self.queues[i].is_none() && (q.is_live()) {
                let addrs = q.addresses();
                self.queues[i] = Some(VqModel::new(addrs, event_idx));
            }
        }
        for queue in std::mem::take(&mut core.notifications) {
            match self
                .queues
                .get_mut(usize::from(queue))
                .and_then(Option::as_mut)
            {
                Some(vq) => vq.driver_published(true),
                None => self
                    .violations
                    .push(format!("notify of queue {queue}, which is not set up")),
            }
        }
        core.isr |= std::mem::take(&mut self.isr);
    }

    /// The device runs once.
    pub fn step(&mut self) {
        for q in 0..3 {
            let Some(mut vq) = self.queues[q].take() else {
                continue;
            };
            if q < 2 && self.stall {
                self.queues[q] = Some(vq);
                continue;
            }
            let mut completed = 0;
            for chain in vq.take_available() {
                if !chain.writable.is_empty() {
                    self.violations
                        .push(format!("queue {q}: a device-writable descriptor"));
                }
                if q == 2 {
                    self.last_stats = chain
                        .readable
                        .chunks(10)
                        .filter(|c| c.len() == 10)
                        .map(|c| {
                            let mut v = [0u8; 8];
                            v.copy_from_slice(&c[2..]);
                            (u16::from_le_bytes([c[0], c[1]]), u64::from_le_bytes(v))
                        })
                        .collect();
                    if self.stats_chain.replace(chain).is_some() {
                        self.violations
                            .push("a second stats buffer while the device holds one".into());
                    }
                    continue;
                }
                if chain.readable.len() % 4 != 0 {
                    self.violations
                        .push(format!("queue {q}: {} bytes of PFNs", chain.readable.len()));
                }
                for pfn in chain.readable.chunks_exact(4) {
                    let pfn = u32::from_le_bytes([pfn[0], pfn[1], pfn[2], pfn[3]]);
                    let ok = if q == 0 {
                        self.held.insert(pfn)
                    } else {
                        self.held.remove(&pfn)
                    };
                    if !ok {
                        self.violations.push(format!(
                            "{} page {pfn:#x}, which is {} the balloon",
                            if q == 0 { "inflated" } else { "deflated" },
                            if q == 0 { "already in" } else { "not in" }
                        ));
                    }
                }
                let len = if self.lie_about_length { 4 } else { 0 };
                vq.complete_with_len(chain.head, len);
                completed += 1;
            }
            if completed > 0 && vq.signal_used() {
                self.isr |= 1;
            }
            vq.try_sleep();
            self.queues[q] = Some(vq);
        }
    }
}
