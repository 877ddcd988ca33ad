//! A virtio-rng device model (virtio 1.2 §5.4), for testing `drivers::rng`
//! on the host, through the register-level models of
//! [`crate::models::virtio`] (virtio-mmio v1/v2, modern and legacy PCI).
//!
//! The device side of requestq is [`VqModel`] (rust-vmm's `virtio-queue`,
//! independent of the driver's ring code). On top of it [`RngModel`] does
//! what an entropy device does: fills every device-writable buffer of each
//! chain with bytes from a seeded stream and reports how many it wrote
//! (§5.4.6.2: "the device MUST place one or more random bytes into the
//! buffer"). Every byte handed out is kept in [`RngModel::given`], so a test
//! can check the driver returned exactly those, in order.
//!
//! It checks the driver: a device-readable descriptor in requestq breaks
//! §5.4.6.1 ("MUST NOT place driver-readable buffers into the queue") and
//! is recorded in [`RngModel::violations`]; so is a notification of a queue
//! that is not set up.
//!
//! And it can misbehave ([`RngBehaviour`]): answer fewer bytes than asked,
//! answer 0 bytes, report a length beyond the buffer, complete a descriptor
//! the driver never made available, or never answer.

use std::cell::RefCell;
use std::rc::Rc;

use drivers::features;

use crate::models::virtio::VirtioCore;
use crate::vq_model::{Rng, VqModel};

/// How the model answers each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RngBehaviour {
    /// Fills the whole buffer (what QEMU does).
    Fill,
    /// Writes at most this many bytes per request (a device short of entropy).
    AtMost(u32),
    /// Reports 0 bytes (§5.4.6.2 forbids it).
    ZeroLength,
    /// Reports this many bytes more than the buffer holds.
    LengthBeyondBuffer(u32),
    /// Puts a descriptor id in the used ring that the driver did not make
    /// available (the chain's head plus one, modulo the queue size).
    WrongId,
    /// Takes requests and never answers.
    Stall,
}

/// The device model; see the module docs.
pub struct RngModel {
    /// How it answers.
    pub behaviour: RngBehaviour,
    queue: Option<VqModel>,
    event_idx: bool,
    stream: Rng,
    /// Every random byte written into a buffer and reported, in order.
    pub given: Vec<u8>,
    /// Requests seen, with their writable length.
    pub requests: Vec<u32>,
    /// Rules the driver broke.
    pub violations: Vec<String>,
    /// Interrupt status to raise on the transport at the next sync.
    isr: u8,
}

/// A shared handle to a model.
pub type SharedRngModel = Rc<RefCell<RngModel>>;

impl RngModel {
    /// A model that answers with `behaviour`, its bytes from `seed`.
    pub fn new(behaviour: RngBehaviour, seed: u64) -> Self {
        Self {
            behaviour,
            queue: None,
            event_idx: false,
            stream: Rng::new(seed),
            given: Vec::new(),
            requests: Vec::new(),
            violations: Vec::new(),
            isr: 0,
        }
    }

    /// Wraps the model for sharing with a test's wait closure.
    pub fn shared(self) -> SharedRngModel {
        Rc::new(RefCell::new(self))
    }

    /// A register-level core for this device: type 4, one queue of
    /// `queue_max` entries, no configuration (§5.4.4), offering `features`.
    pub fn core(features: u64, queue_max: u16) -> VirtioCore {
        VirtioCore::new(4, features, 1, queue_max, Vec::new())
    }

    /// What QEMU 7.2's virtio-rng offers on a modern transport: ring
    /// features and VERSION_1 (and nothing device-specific, §5.4.3).
    pub const MODERN_FEATURES: u64 =
        features::RING_INDIRECT_DESC | features::RING_EVENT_IDX | features::VERSION_1;

    /// `true` once requestq is live.
    pub fn is_live(&self) -> bool {
        self.queue.is_some()
    }

    /// Picks up what the driver did on the registers: requestq's addresses
    /// once it is live, its notifications; raises the interrupt status the
    /// last step produced. Before DRIVER_OK (or after a reset) the device
    /// forgets its queue, as a real one does.
    pub fn sync_with_core(&mut self, core: &mut VirtioCore) {
        if core.status & 4 == 0 {
            self.queue = None;
            core.notifications.clear();
            return;
        }
        self.event_idx = core.driver_features & features::RING_EVENT_IDX != 0;
        if self.queue.is_none() {
            if let Some(q) = core.queues.first() {
                let live = q.is_live();
                if live {
                    let addrs = q.addresses();
                    self.queue = Some(VqModel::new(addrs, self.event_idx));
                }
            }
        }
        for queue in std::mem::take(&mut core.notifications) {
            match (queue, self.queue.as_mut()) {
                (0, Some(vq)) => vq.driver_published(true),
                _ => self
                    .violations
                    .push(format!("notify of queue {queue}, which is not set up")),
            }
        }
        core.isr |= std::mem::take(&mut self.isr);
    }

    /// The device runs once: takes every available chain and answers it
    /// the way [`RngModel::behaviour`] says.
    pub fn step(&mut self) {
        let Some(vq) = self.queue.as_mut() else {
            return;
        };
        if vq.is_asleep() || self.behaviour == RngBehaviour::Stall {
            return;
        }
        let size = vq.addresses().size;
        let mut completed = 0;
        for chain in vq.take_available() {
            if !chain.readable.is_empty() {
                self.violations.push(format!(
                    "chain {}: {} device-readable bytes in requestq (§5.4.6.1)",
                    chain.head,
                    chain.readable.len()
                ));
            }
            let room = chain.writable_len();
            self.requests.push(room);
            let fill = |stream: &mut Rng, n: u32| -> Vec<u8> {
                (0..n).map(|_| stream.next_u64() as u8).collect()
            };
            match self.behaviour {
                RngBehaviour::Fill | RngBehaviour::AtMost(_) => {
                    let n = match self.behaviour {
                        RngBehaviour::AtMost(most) => room.min(most),
                        _ => room,
                    };
                    let bytes = fill(&mut self.stream, n);
                    vq.complete(&chain, &bytes);
                    self.given.extend_from_slice(&bytes);
                }
                RngBehaviour::ZeroLength => vq.complete_with_len(chain.head, 0),
                RngBehaviour::LengthBeyondBuffer(extra) => {
                    vq.complete_with_len(chain.head, room + extra);
                }
                RngBehaviour::WrongId => {
                    vq.complete_with_len((chain.head + 1) % size, room);
                }
                RngBehaviour::Stall => unreachable!("a stalled model takes nothing"),
            }
            completed += 1;
        }
        if completed > 0 && vq.signal_used() {
            self.isr |= 1;
        }
        vq.try_sleep();
    }
}
