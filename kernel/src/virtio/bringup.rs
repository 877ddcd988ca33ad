//! # Generic bring-up: the §3.1.1 sequence with no device driver
//!
//! Until a device driver exists for a type, every device is brought up the
//! same way, so that probing can be tested end to end on every transport:
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
//!    programmed through the transport. Interrupts are suppressed on every
//!    queue: nothing handles them yet, the self-tests poll.
//! 3. Step 8: `DeviceInit::finish` sets DRIVER_OK and checks that the device
//!    does not need a reset.
//!
//! Any error on the way leaves FAILED in the status byte (dropping an
//! unfinished `DeviceInit` does that) and the device in the registry as
//! failed; the boot goes on.
//!
//! **Where device drivers plug in**: after probing (and after the interrupt
//! code has routed the device), a device driver *claims* the live device
//! from the registry (`VirtioDevice::claim`), which leaves
//! `DeviceState::Claimed` behind, and brings it up again with its own
//! features: blk in `crate::block` (disks vda, vdb, ...), net in
//! `crate::net`, the console in `crate::shell::console`; the driver then
//! prints the device's `virtio:` line (`super` module docs). Claiming later
//! rather than replacing this path keeps one interrupt set-up for every
//! device and lets the raw-ring self-tests run before the driver takes over.

use alloc::string::ToString;
use alloc::vec::Vec;

use drivers::features;
use drivers::init::{self, InitError};
use drivers::queue::{choose_queue_size, QueueConfig, QueueError};
use drivers::transport::{DeviceType, Transport, TransportError};

use super::{DeviceState, Discovered, KernelQueue, KernelTransport, LiveDevice, VirtioDevice};

/// The most descriptors a generic queue gets (the device may allow more;
/// QEMU's virtio-mmio says 1024 whatever the real limit is).
pub const MAX_QUEUE_SIZE: u16 = 256;
/// Entries per indirect table when RING_INDIRECT_DESC is negotiated.
pub const INDIRECT_CAPACITY: u16 = 8;
/// The most queues a device of a type without a known queue layout gets.
pub const MAX_GENERIC_QUEUES: u16 = 16;

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

/// Brings one discovered device up and returns its registry entry.
pub fn bring_up(discovered: Discovered) -> VirtioDevice {
    let Discovered {
        device_type,
        location,
        interrupt,
        transport,
    } = discovered;
    let state = match transport {
        Err(error) => DeviceState::Failed {
            transport: None,
            error,
        },
        Ok(mut transport) => {
            // Device drivers claim the device afterwards (module docs).
            match generic(&mut transport) {
                Ok((queues, features)) => DeviceState::Live(LiveDevice {
                    transport,
                    queues,
                    features,
                }),
                Err(error) => DeviceState::Failed {
                    transport: Some(transport),
                    error: error.to_string(),
                },
            }
        }
    };
    let transport_kind = match &state {
        DeviceState::Live(live) => Some(live.transport.kind()),
        DeviceState::Failed {
            transport: Some(t), ..
        } => Some(t.kind()),
        DeviceState::Claimed { .. } | DeviceState::Failed { .. } => None,
    };
    VirtioDevice {
        device_type,
        location,
        transport_kind,
        interrupt,
        state,
        reported: false,
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
