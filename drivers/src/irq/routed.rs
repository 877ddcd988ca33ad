//! # Programming MSI-X entry numbers into the device (virtio 1.2 §4.1.4.3.2, §4.1.5.1.2, §4.1.5.1.3)
//!
//! [`MsixRouted`] wraps any [`Transport`] and changes three moments
//! of the bring-up; everything else reaches the wrapped transport unchanged
//! through [`TransportWrapper`], the one delegation mechanism for
//! transports (`drivers/src/transport/wrapper.rs`):
//!
//! - before a queue is made live (§4.1.4.3.2: "The driver MUST configure
//!   the other virtqueue fields before enabling the virtqueue"), its
//!   `queue_msix_vector` is written and read back;
//! - before the status write that adds DRIVER_OK, `config_msix_vector` is
//!   written and read back;
//! - a reset forgets both (a reset sets every vector back to NO_VECTOR,
//!   §4.1.5.1.2).
//!
//! The device says no by reading back NO_VECTOR (§4.1.5.1.2.1); that is
//! kept as an [`MsixRejection`] for the interrupt code, which then falls
//! back to INTx or polling.

use core::fmt;

use hal::Hal;

use super::msix_layout::MsixLayout;
use super::queue_set::QueueSet;
use crate::transport::{AnyTransport, DeviceStatus, Transport, TransportError, TransportWrapper};

/// Which event a device refused an MSI-X entry for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixEvent {
    /// The configuration-change event.
    Config,
    /// Queue `n`.
    Queue(u16),
}

impl fmt::Display for MsixEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MsixEvent::Config => f.write_str("configuration change"),
            MsixEvent::Queue(q) => write!(f, "queue {q}"),
        }
    }
}

/// A vector the device did not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixRejection {
    /// For which event.
    pub event: MsixEvent,
    /// The transport's error (normally [`TransportError::MsixVectorRejected`]).
    pub error: TransportError,
}

impl fmt::Display for MsixRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MSI-X entry for the {}: {}", self.event, self.error)
    }
}

/// A [`Transport`] that programs MSI-X entry numbers into the device when the
/// spec wants them there; otherwise it passes every call through unchanged.
///
/// With a layout ([`MsixRouted::set_layout`], after MSI-X was enabled in the
/// PCI capability):
///
/// - `setup_queue(q)` first writes `queue_msix_vector` for `q` (read back by
///   the transport), then lets the transport make the queue live;
/// - the `set_status` that adds DRIVER_OK first writes `config_msix_vector`;
/// - `reset` forgets what was programmed (a reset sets every vector back to
///   NO_VECTOR, §4.1.5.1.2).
///
/// A refusal does not stop the bring-up (the queue works, it just cannot
/// interrupt through MSI-X); it is kept in [`MsixRouted::rejection`] for
/// the interrupt code, which then falls back to INTx or polling.
pub struct MsixRouted<T> {
    inner: T,
    layout: Option<MsixLayout>,
    routed_queues: QueueSet,
    config_routed: bool,
    rejection: Option<MsixRejection>,
}

impl<T: Transport> MsixRouted<T> {
    /// Wraps `inner` with no MSI-X layout (a pure pass-through until
    /// [`MsixRouted::set_layout`]).
    pub fn new(inner: T) -> Self {
        MsixRouted {
            inner,
            layout: None,
            routed_queues: QueueSet::EMPTY,
            config_routed: false,
            rejection: None,
        }
    }

    /// Uses `layout` from now on (`None`: stop programming vectors).
    pub fn set_layout(&mut self, layout: Option<MsixLayout>) {
        self.layout = layout;
    }

    /// The layout in use.
    pub fn layout(&self) -> Option<MsixLayout> {
        self.layout
    }

    /// The queues whose vector the device accepted since the last reset.
    pub fn routed_queues(&self) -> QueueSet {
        self.routed_queues
    }

    /// Whether the configuration vector was accepted since the last reset.
    pub fn config_routed(&self) -> bool {
        self.config_routed
    }

    /// The first vector the device refused since the last reset.
    pub fn rejection(&self) -> Option<MsixRejection> {
        self.rejection
    }

    /// Unwraps the transport.
    pub fn into_inner(self) -> T {
        self.inner
    }

    fn route(&mut self, event: MsixEvent, entry: u16) {
        let result = match event {
            MsixEvent::Config => self.inner.set_config_msix_vector(entry),
            MsixEvent::Queue(q) => self.inner.set_queue_msix_vector(q, entry),
        };
        let location = self.inner.location();
        match result {
            Ok(()) => {
                log::trace!("{location}: {event} -> MSI-X entry {entry} (device accepted it)");
                match event {
                    MsixEvent::Config => self.config_routed = true,
                    MsixEvent::Queue(q) => self.routed_queues.insert(q),
                }
            }
            Err(error) => {
                log::warn!("{location}: {event}: device refused MSI-X entry {entry}: {error}");
                self.rejection.get_or_insert(MsixRejection { event, error });
            }
        }
    }
}

impl<T: Transport> From<T> for MsixRouted<T> {
    fn from(inner: T) -> Self {
        MsixRouted::new(inner)
    }
}

/// So that code holding `MsixRouted<AnyTransport<H>>` can take any concrete
/// transport with `.into()`.
macro_rules! routed_from_concrete {
    ($($concrete:ty),*) => {$(
        impl<H: Hal> From<$concrete> for MsixRouted<AnyTransport<H>> {
            fn from(transport: $concrete) -> Self {
                MsixRouted::new(AnyTransport::from(transport))
            }
        }
    )*};
}
routed_from_concrete!(
    crate::transport::pci::ModernPciTransport<H>,
    crate::transport::pci::LegacyPciTransport<H>,
    crate::transport::mmio::MmioTransport<H>
);

impl<T: Transport + fmt::Debug> fmt::Debug for MsixRouted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsixRouted")
            .field("inner", &self.inner)
            .field("layout", &self.layout)
            .field("routed_queues", &self.routed_queues)
            .field("config_routed", &self.config_routed)
            .finish()
    }
}

/// The three moments MSI-X routing changes; every other [`Transport`] call
/// (notify included) goes to the wrapped transport unchanged.
impl<T: Transport> TransportWrapper for MsixRouted<T> {
    type Inner = T;

    #[inline]
    fn inner(&self) -> &T {
        &self.inner
    }

    #[inline]
    fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    fn before_setup_queue(&mut self, queue: u16) {
        if let Some(layout) = self.layout {
            self.route(MsixEvent::Queue(queue), layout.queue_entry(queue));
        }
    }

    fn before_set_status(&mut self, status: DeviceStatus) {
        let going_live =
            status.contains(DeviceStatus::DRIVER_OK) && !status.contains(DeviceStatus::FAILED);
        if let (true, false, Some(layout)) = (going_live, self.config_routed, self.layout) {
            self.route(MsixEvent::Config, layout.config_entry());
        }
    }

    fn before_reset(&mut self) {
        self.routed_queues = QueueSet::EMPTY;
        self.config_routed = false;
        self.rejection = None;
    }
}
