//! # Wrapping a transport: override only what changes (virtio 1.2 §4)
//!
//! Some types *are* a transport by holding one and changing a little of
//! what it does: [`crate::irq::MsixRouted`] writes MSI-X entry numbers at
//! two moments of the bring-up, [`super::AnyTransport`] picks one of three
//! flavours. Rather than forwarding all of [`Transport`] by hand, such a
//! type implements [`TransportWrapper`]: where its inner transport is, and
//! the hooks it needs. The blanket `impl<W: TransportWrapper> Transport for
//! W` below gives it every [`Transport`] method, each forwarding to the
//! inner transport after the hook for that moment, if there is one.
//!
//! The hooks are the moments at which a wrapper may want to act *before*
//! the inner transport does: a status write, a reset, a queue going live.
//! Everything else is a plain forward the compiler inlines. `notify`, the
//! one call on the per-request path, forwards through
//! [`TransportWrapper::forward_notify`], which a wrapper over `dyn
//! Transport` overrides to keep that call direct.
//!
//! ```ignore
//! struct CountingQueues<T> { inner: T, queues: u32 }
//!
//! impl<T: Transport> TransportWrapper for CountingQueues<T> {
//!     type Inner = T;
//!     fn inner(&self) -> &T { &self.inner }
//!     fn inner_mut(&mut self) -> &mut T { &mut self.inner }
//!     fn before_setup_queue(&mut self, _queue: u16) { self.queues += 1; }
//! }
//! // CountingQueues<T> is now a Transport.
//! ```

use super::{
    ConfigConsistency, DeviceStatus, DeviceType, FieldWidth, InterruptStatus, Location,
    QueueAddresses, RingLayout, Transport, TransportError, TransportKind,
};

/// A type that is a [`Transport`] by wrapping one; see the module docs.
///
/// Implement [`TransportWrapper::inner`], [`TransportWrapper::inner_mut`]
/// and the hooks for the moments the wrapper changes; the hooks do nothing
/// by default.
pub trait TransportWrapper {
    /// The wrapped transport (`dyn Transport` when it is chosen at run time).
    type Inner: Transport + ?Sized;

    /// The wrapped transport.
    fn inner(&self) -> &Self::Inner;
    /// The wrapped transport, mutably.
    fn inner_mut(&mut self) -> &mut Self::Inner;

    /// Runs before the inner [`Transport::set_status`] writes `status`.
    fn before_set_status(&mut self, status: DeviceStatus) {
        let _ = status;
    }
    /// Runs before the inner [`Transport::reset`].
    fn before_reset(&mut self) {}
    /// Runs before the inner [`Transport::setup_queue`] programs `queue`
    /// and makes it live.
    fn before_setup_queue(&mut self, queue: u16) {
        let _ = queue;
    }

    /// How [`Transport::notify`] reaches the inner transport: the one call
    /// on the per-request path. The default forwards through
    /// [`TransportWrapper::inner_mut`], which costs nothing when `Inner` is
    /// a concrete type. A wrapper whose `Inner` is `dyn Transport`
    /// overrides it to call the concrete `notify` directly, not through the
    /// vtable ([`super::AnyTransport`] does).
    #[inline]
    fn forward_notify(&self, queue: u16) {
        self.inner().notify(queue)
    }
}

/// Every [`Transport`] method of a wrapper: the hook for that moment (if
/// any), then the same call on the inner transport.
impl<W: TransportWrapper> Transport for W {
    #[inline]
    fn kind(&self) -> TransportKind {
        self.inner().kind()
    }
    #[inline]
    fn device_type(&self) -> DeviceType {
        self.inner().device_type()
    }
    #[inline]
    fn location(&self) -> Location {
        self.inner().location()
    }
    fn status(&self) -> DeviceStatus {
        self.inner().status()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.before_set_status(status);
        self.inner_mut().set_status(status)
    }
    fn reset(&mut self) -> Result<(), TransportError> {
        self.before_reset();
        self.inner_mut().reset()
    }
    fn device_features(&mut self) -> u64 {
        self.inner_mut().device_features()
    }
    fn set_driver_features(&mut self, features: u64) {
        self.inner_mut().set_driver_features(features)
    }
    fn ring_layout(&self) -> RingLayout {
        self.inner().ring_layout()
    }
    fn max_queue_size(&mut self, queue: u16) -> Result<u16, TransportError> {
        self.inner_mut().max_queue_size(queue)
    }
    fn queue_size_is_fixed(&self) -> bool {
        self.inner().queue_size_is_fixed()
    }
    fn setup_queue(&mut self, queue: u16, addrs: &QueueAddresses) -> Result<(), TransportError> {
        self.before_setup_queue(queue);
        self.inner_mut().setup_queue(queue, addrs)
    }
    #[inline]
    fn notify(&self, queue: u16) {
        self.forward_notify(queue)
    }
    fn config_generation(&mut self) -> u32 {
        self.inner_mut().config_generation()
    }
    fn config_consistency(&self) -> ConfigConsistency {
        self.inner().config_consistency()
    }
    fn config_space_size(&self) -> usize {
        self.inner().config_space_size()
    }
    fn read_config_field(
        &mut self,
        offset: usize,
        width: FieldWidth,
    ) -> Result<u32, TransportError> {
        self.inner_mut().read_config_field(offset, width)
    }
    fn write_config_field(
        &mut self,
        offset: usize,
        width: FieldWidth,
        value: u32,
    ) -> Result<(), TransportError> {
        self.inner_mut().write_config_field(offset, width, value)
    }
    fn read_config(&mut self, offset: usize, buf: &mut [u8]) -> Result<(), TransportError> {
        self.inner_mut().read_config(offset, buf)
    }
    fn write_config(&mut self, offset: usize, data: &[u8]) -> Result<(), TransportError> {
        self.inner_mut().write_config(offset, data)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner_mut().ack_interrupt()
    }
    fn set_config_msix_vector(&mut self, vector: u16) -> Result<(), TransportError> {
        self.inner_mut().set_config_msix_vector(vector)
    }
    fn set_queue_msix_vector(&mut self, queue: u16, vector: u16) -> Result<(), TransportError> {
        self.inner_mut().set_queue_msix_vector(queue, vector)
    }
    fn set_msix_enabled(&mut self, enabled: bool) {
        self.inner_mut().set_msix_enabled(enabled)
    }
}
