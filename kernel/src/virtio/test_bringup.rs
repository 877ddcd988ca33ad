//! # The self-tests' own bring-up: §3.1.1 with no device driver
//!
//! The raw-ring self-tests (`selftests.rs`) and the interrupt self-tests
//! (`irq_selftests.rs`) test the queue and interrupt code *without* the
//! blk, net and console drivers. So in `mode=selftest` they borrow every
//! device that is still waiting for its driver (or that no driver takes)
//! from the registry ([`lend_all`]) and bring each up themselves, through
//! the same path the drivers use ([`super::bring_up_routed`]: interrupt
//! preparation, §3.1.1, interrupt route), with a generic step 7:
//!
//! 1. `drivers::init::begin_with` runs steps 1-6 of virtio 1.2 §3.1.1
//!    (reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK) accepting **no
//!    device-specific feature**, only the shared ring features the queue
//!    code implements (`RING_INDIRECT_DESC`, `RING_EVENT_IDX`) and, on a
//!    modern transport, `VERSION_1`. A device must work without any of its
//!    optional features (§2.2: the driver may accept any subset), so this is
//!    a legitimate driver, just a dull one.
//! 2. Step 7: every queue the device has *with the features accepted*
//!    ([`queue_count`]), each a `drivers::queue::SplitQueue` of at most
//!    [`MAX_QUEUE_SIZE`] descriptors in the layout the transport asks for
//!    (separate areas, or the contiguous legacy block), its addresses
//!    programmed through the transport (the `MsixRouted` wrapper writes the
//!    queue's MSI-X entry first). Interrupts are suppressed on every queue
//!    until a test asks for one.
//! 3. Step 8: `DeviceInit::finish` sets DRIVER_OK and checks that the device
//!    does not need a reset. Then `virtio::irq::route` gives the queues
//!    their interrupt route, as for a driver.
//!
//! After the tests, [`give_back_all`] resets every borrowed device (so the
//! device lets go of the test rings before they are freed) and puts it back
//! in the registry, where its driver then takes it and brings it up again
//! from reset; its interrupt slot and vectors stay and are re-used.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use drivers::features;
use drivers::init::{self, InitError};
use drivers::irq::QueueSet;
use drivers::queue::{choose_queue_size, QueueConfig, QueueError, Ring, SplitQueue};
use drivers::transport::{DeviceStatus, DeviceType, Location, Transport, TransportError};
use spin::{Mutex, MutexGuard};

use super::{BroughtUp, DrivenDevice, KernelTransport};
use crate::hal_impl::KernelHal;

/// A split virtqueue on the kernel's Hal.
pub type KernelQueue = SplitQueue<KernelHal>;

/// The most descriptors a generic queue gets (the device may allow more;
/// QEMU's virtio-mmio says 1024 whatever the real limit is).
pub const MAX_QUEUE_SIZE: u16 = 256;
/// Entries per indirect table when RING_INDIRECT_DESC is negotiated.
pub const INDIRECT_CAPACITY: u16 = 8;
/// The most queues a device of a type without a known queue layout gets.
pub const MAX_GENERIC_QUEUES: u16 = 16;

/// A device the generic bring-up brought to DRIVER_OK.
pub struct LiveDevice {
    /// The transport, status DRIVER_OK.
    pub transport: KernelTransport,
    /// Every queue set up, by queue index.
    pub queues: Vec<KernelQueue>,
    /// The negotiated feature bits.
    pub features: u64,
}

impl DrivenDevice for LiveDevice {
    fn transport_for_routing(&mut self) -> &mut KernelTransport {
        &mut self.transport
    }

    fn queues_in_use(&self) -> QueueSet {
        let mut set = QueueSet::EMPTY;
        for queue in &self.queues {
            set.insert(queue.index());
        }
        set
    }

    fn brought_up(&self) -> BroughtUp {
        BroughtUp::new(self.transport.kind(), self.queues.len(), self.features)
    }
}

/// One device borrowed by the self-tests.
pub struct TestDevice {
    /// Its type.
    pub device_type: DeviceType,
    /// Where it is.
    pub location: Location,
    /// Live, or why the generic bring-up failed.
    pub state: TestState,
}

/// Where a borrowed device's generic bring-up ended.
pub enum TestState {
    /// DRIVER_OK, queues live.
    Live(LiveDevice),
    /// The bring-up failed (FAILED is set); the transport is kept to be reset
    /// and given back.
    Failed {
        /// Why.
        error: String,
        /// The transport.
        transport: KernelTransport,
    },
}

impl TestDevice {
    /// `true` if the generic bring-up succeeded.
    pub fn is_live(&self) -> bool {
        matches!(self.state, TestState::Live(_))
    }

    /// The live part, if the generic bring-up succeeded.
    pub fn live(&mut self) -> Option<&mut LiveDevice> {
        match &mut self.state {
            TestState::Live(live) => Some(live),
            TestState::Failed { .. } => None,
        }
    }
}

/// The devices the self-tests borrowed, in discovery order.
static LENT: Mutex<Vec<TestDevice>> = Mutex::new(Vec::new());

/// The borrowed devices, locked. Do not hold the guard across a wait on
/// something else.
pub fn lent() -> MutexGuard<'static, Vec<TestDevice>> {
    LENT.lock()
}

/// Borrows every device still waiting for its driver (or that no driver
/// takes) and brings it up generically (see the module docs). Called once,
/// when the self-tests are gathered, so that they can look at the
/// interrupt routes.
pub fn lend_all() {
    let mut lent = LENT.lock();
    if !lent.is_empty() {
        return;
    }
    for found in super::lend_all("selftest") {
        let device_type = found.device_type;
        let location = found.location;
        let result = super::bring_up_routed(found, |mut transport| match generic(&mut transport) {
            Ok((queues, features)) => Ok(LiveDevice {
                transport,
                queues,
                features,
            }),
            // Boxed: the error path should not make every result large.
            Err(error) => Err((error, Box::new(transport))),
        });
        let state = match result {
            Ok(live) => {
                log::info!(
                    "virtio: {} at {location}: brought up for the self-tests ({} queue(s), features {:#x})",
                    super::type_name(device_type),
                    live.queues.len(),
                    live.features
                );
                TestState::Live(live)
            }
            Err((error, transport)) => TestState::Failed {
                error: error.to_string(),
                transport: *transport,
            },
        };
        lent.push(TestDevice {
            device_type,
            location,
            state,
        });
    }
}

/// Resets every borrowed device and puts it back in the registry for its
/// driver. Fails if a device does not read status 0 after the reset.
pub fn give_back_all() -> Result<usize, String> {
    let mut lent = LENT.lock();
    let mut problems = Vec::new();
    let count = lent.len();
    for device in lent.drain(..) {
        let (mut transport, queues) = match device.state {
            TestState::Live(live) => (live.transport, live.queues),
            TestState::Failed { transport, .. } => (transport, Vec::new()),
        };
        // The device lets go of the rings before they are freed.
        if let Err(error) = transport.reset() {
            problems.push(alloc::format!("{}: reset: {error}", device.location));
        }
        let status = transport.status();
        if status != DeviceStatus::empty() {
            problems.push(alloc::format!(
                "{}: status {status} after the reset",
                device.location
            ));
        }
        drop(queues);
        super::put_back(device.location, transport);
    }
    if problems.is_empty() {
        Ok(count)
    } else {
        Err(problems.join("; "))
    }
}

/// Why a generic bring-up failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BringUpError {
    /// The §3.1.1 sequence itself failed.
    Init(InitError),
    /// The device lacks a queue its type must have.
    MissingQueue(u16),
    /// Reading a queue's maximum size or programming it failed.
    Transport {
        /// The queue.
        queue: u16,
        /// Why.
        error: TransportError,
    },
    /// The queue could not be built (size, memory).
    Queue {
        /// The queue.
        queue: u16,
        /// Why.
        error: QueueError,
    },
}

impl core::fmt::Display for BringUpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BringUpError::Init(e) => write!(f, "{e}"),
            BringUpError::MissingQueue(q) => write!(f, "device has no queue {q}"),
            BringUpError::Transport { queue, error } => write!(f, "queue {queue}: {error}"),
            BringUpError::Queue { queue, error } => write!(f, "queue {queue}: {error}"),
        }
    }
}

impl From<InitError> for BringUpError {
    fn from(e: InitError) -> Self {
        BringUpError::Init(e)
    }
}

/// The generic bring-up (see the module docs); returns the live queues and
/// the negotiated features.
pub fn generic(transport: &mut KernelTransport) -> Result<(Vec<KernelQueue>, u64), BringUpError> {
    let mut device = init::begin_with(&mut *transport, 0, features::SHARED_RING_FEATURES)?;
    let negotiated = device.features();
    let device_type = device.transport().device_type();
    let count = queue_count(device_type, negotiated, device.transport())?;
    let mut queues = Vec::with_capacity(usize::from(count));
    for index in 0..count {
        // An error here drops `device` unfinished, which sets FAILED.
        queues.push(setup_queue(device.transport(), index, negotiated)?);
    }
    let negotiated = device.finish()?;
    Ok((queues, negotiated))
}

/// How many queues a device has with the features accepted here (none
/// device-specific): virtio 1.2 §5.1.2 (net: receiveq1 and transmitq1;
/// controlq only with VIRTIO_NET_F_CTRL_VQ, more pairs only with MQ),
/// §5.2.2 (blk: one, more only with VIRTIO_BLK_F_MQ), §5.3.2 (console:
/// port 0's receiveq and transmitq; the control queues and other ports only
/// with VIRTIO_CONSOLE_F_MULTIPORT). Other types: every queue whose maximum
/// size is not 0, up to [`MAX_GENERIC_QUEUES`].
pub fn queue_count<T: Transport + ?Sized>(
    device_type: DeviceType,
    negotiated: u64,
    transport: &mut T,
) -> Result<u16, BringUpError> {
    // No device-specific bit is ever negotiated by the generic path; if one
    // were, the counts below would be wrong, so say so loudly.
    if negotiated & 0x00ff_ffff != 0 {
        log::warn!("generic bring-up negotiated device-specific features {negotiated:#x}");
    }
    let fixed = match device_type {
        DeviceType::Net | DeviceType::Console => Some(2),
        DeviceType::Block => Some(1),
        _ => None,
    };
    let max = |transport: &mut T, queue| {
        transport
            .max_queue_size(queue)
            .map_err(|error| BringUpError::Transport { queue, error })
    };
    match fixed {
        Some(count) => {
            for queue in 0..count {
                if max(transport, queue)? == 0 {
                    return Err(BringUpError::MissingQueue(queue));
                }
            }
            Ok(count)
        }
        None => {
            let mut count = 0;
            while count < MAX_GENERIC_QUEUES && max(transport, count)? != 0 {
                count += 1;
            }
            Ok(count)
        }
    }
}

/// One queue: size, ring memory in the transport's layout, addresses
/// programmed, interrupts suppressed.
fn setup_queue<T: Transport + ?Sized>(
    transport: &mut T,
    index: u16,
    negotiated: u64,
) -> Result<KernelQueue, BringUpError> {
    let transport_error = |error| BringUpError::Transport {
        queue: index,
        error,
    };
    let queue_error = |error| BringUpError::Queue {
        queue: index,
        error,
    };
    let device_max = transport.max_queue_size(index).map_err(transport_error)?;
    let size = choose_queue_size(device_max, MAX_QUEUE_SIZE, transport.queue_size_is_fixed())
        .map_err(queue_error)?;
    let indirect = if negotiated & features::RING_INDIRECT_DESC != 0 {
        INDIRECT_CAPACITY.min(size)
    } else {
        0
    };
    let config = QueueConfig::new(index, size, transport.ring_layout())
        .with_owner(transport.dma_owner())
        .with_event_idx(negotiated & features::RING_EVENT_IDX != 0)
        .with_indirect(indirect);
    let mut queue = KernelQueue::new(config).map_err(queue_error)?;
    queue.disable_interrupts();
    transport
        .setup_queue(index, &queue.addresses())
        .map_err(transport_error)?;
    log::debug!(
        "{}: queue {index}: {size} descriptors (device allows {device_max}), {:?}",
        transport.location(),
        transport.ring_layout()
    );
    Ok(queue)
}
