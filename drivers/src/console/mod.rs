//! # virtio-console: the console and serial-port driver (virtio 1.2 §5.3)
//!
//! A virtio console moves byte streams between the guest and the host over
//! *ports*. Each port has a receive queue (host to guest: the driver posts
//! empty buffers, the device fills them) and a transmit queue (guest to
//! host: the driver posts full buffers, the device empties them):
//!
//! ```text
//! queue  0       1       2          3          4       5       ...  2n+2    2n+3
//!        port 0  port 0  control    control    port 1  port 1       port n  port n
//!        receive transmit receive   transmit   receive transmit     receive transmit
//!                        (only with VIRTIO_CONSOLE_F_MULTIPORT ..................)
//! ```
//!
//! ## Features
//!
//! - **SIZE**: `cols`/`rows` in the configuration ([`ConsoleDevice::size`]);
//!   re-read on a configuration-change interrupt ([`ConsoleDevice::refresh_config`]).
//! - **MULTIPORT**: up to `max_nr_ports` ports that the device announces
//!   and withdraws over the control queues (the handshake below). Without
//!   it there is exactly one port, 0, always there and always open.
//! - **EMERG_WRITE**: a character written to the `emerg_wr` configuration
//!   field appears on port 0 at once, no queue involved
//!   ([`ConsoleDevice::emergency_write`], [`config::emergency_write`]): the
//!   panic path.
//!
//! ## The multiport handshake (§5.3.6.2)
//!
//! ```text
//! driver                                   device
//!   |-- DEVICE_READY 1 ---------------------->|
//!   |<---------------------- PORT_ADD id -----|   one per port
//!   |   (post the port's receive buffers)     |
//!   |-- PORT_READY id 1 --------------------->|
//!   |-- PORT_OPEN id 1 (guest side open) ---->|
//!   |<------------------ CONSOLE_PORT id -----|   if it is a console
//!   |<------------- PORT_NAME id "name" ------|   if it has a name
//!   |<------------------- PORT_OPEN id 1 -----|   if the host side is open
//!   |          ... later, at any time ...     |
//!   |<--------------- PORT_OPEN id 0/1 -------|   host closed / reopened
//!   |<------------------- PORT_REMOVE id -----|   hot-unplug
//!   |<----------------------- PORT_ADD id ----|   hotplug
//! ```
//!
//! Control messages come from an untrusted device: [`control`] checks
//! their shape and this module checks them against the port table. A bad
//! one is dropped, counted ([`ConsoleStats::control_errors`]) and reported
//! as [`ConsoleEvent::BadControl`]; it never stops the driver.
//!
//! Pacing: QEMU answers a PORT_READY at once with up to three messages
//! (CONSOLE_PORT, PORT_NAME, PORT_OPEN) and drops any it has no receive
//! buffer for. So the driver sends a PORT_READY only while enough control
//! receive buffers are posted for the answers of every PORT_READY in the
//! same notification ([`REPLIES_PER_PORT_READY`] each); the rest wait for
//! the next [`ConsoleDevice::poll`].
//!
//! ## Data
//!
//! The driver owns its buffers (module `buffers`): one DMA pool per
//! queue, one descriptor per buffer.
//!
//! - **Receive**: every receive buffer is posted to the device, except
//!   while it holds bytes nobody has read yet. [`ConsoleDevice::read`]
//!   copies bytes out and reposts each buffer the moment it is empty
//!   (one notification for all reposted). A reader that falls behind thus
//!   stops the device (it has nowhere to put more), which is back-pressure
//!   to the host, never loss.
//! - **Transmit**: [`ConsoleDevice::write`] copies as many bytes as fit into
//!   free buffers (up to a whole buffer per descriptor), makes them all
//!   available and notifies at most once. It returns how many bytes it
//!   took: when the queue is full that is fewer than asked, possibly 0, and
//!   the caller retries after the device has consumed some
//!   ([`ConsoleDevice::write_all`] does that, waiting in between). Bytes
//!   are never dropped or truncated. Transmit completions are collected
//!   lazily, so transmit interrupts stay off except while a writer waits.
//!
//! ## Two layers
//!
//! The non-blocking core is [`ConsoleDevice::poll`] (collect completions,
//! run the control protocol), [`ConsoleDevice::read`],
//! [`ConsoleDevice::write`] and [`ConsoleDevice::next_event`]. The blocking
//! helpers ([`ConsoleDevice::write_all`], [`ConsoleDevice::flush`],
//! [`ConsoleDevice::read_wait`], [`ConsoleDevice::wait_until`]) wait
//! through the caller's [`Wait`](crate::device::Wait) and give up with
//! [`ConsoleError::Timeout`], which says how far they got.
//!
//! [`ConsoleDevice::recover`] resets the device and brings it up from the
//! start (new queues and buffers, the handshake again), for a device that
//! was reset or used by another driver meanwhile.
//!
//! ## Files
//!
//! | file           | what it holds                                                        | spec |
//! |----------------|----------------------------------------------------------------------|------|
//! | `mod.rs`       | [`ConsoleDevice`], its state, the non-blocking core (`poll`, `read`, `write`), interrupts | §5.3 |
//! | `bringup.rs`   | [`ConsoleOptions`], bring-up and recovery, queue and buffer set-up, the reset on a fatal error | §3.1.1, §5.3.5 |
//! | `config.rs`    | [`ConsoleConfig`]: `cols`, `rows`, `max_nr_ports`, `emerg_wr`        | §5.3.4 |
//! | `port.rs`      | one port's data path: receive buffers in and out, transmit buffers  | §5.3.6, §5.3.6.1 |
//! | `control.rs`   | control messages: their layout, parsing and checks                  | §5.3.6.2 |
//! | `multiport.rs` | what a control message does to the port table, and pacing the driver's own | §5.3.6.2 |
//! | `blocking.rs`  | `write_all`, `flush`, `read_wait`, `wait_until`, on the core and [`crate::irq::wait_until_used`] | §2.7.7 |
//! | `buffers.rs`   | the DMA buffer pool of one queue                                     | §2.7 |
//! | `report.rs`    | counters, events, queue and port listings, [`ConsoleError`]          | |
//!
//! `docs/07-console.md` walks through them with a byte on its way in and out.

mod blocking;
mod bringup;
mod buffers;
pub mod config;
pub mod control;
mod multiport;
mod port;
mod report;

pub use bringup::ConsoleOptions;
pub use config::{feature, ConsoleConfig, SUPPORTED_FEATURES};
pub use control::{ControlError, DeviceMessage, DriverMessage, NameError};
pub use report::{
    ConsoleError, ConsoleEvent, ConsoleStats, PortInfo, PortStats, QueueInfo, QueueRole,
};

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use hal::Hal;
use log::warn;

use crate::queue::{QueueError, Ring, Virtqueue};
use crate::transport::{InterruptStatus, Transport};
use buffers::BufferPool;
use port::{
    collect_received, live_port_mut, port_info, read_port, reclaim_transmit, unread_bytes,
    write_port,
};

/// Queue index of the control receive queue (device to driver).
pub const CONTROL_RECEIVE_QUEUE: u16 = 2;
/// Queue index of the control transmit queue (driver to device).
pub const CONTROL_TRANSMIT_QUEUE: u16 = 3;

/// How many control messages the device may send in answer to one
/// PORT_READY (CONSOLE_PORT, PORT_NAME, PORT_OPEN).
pub const REPLIES_PER_PORT_READY: usize = 3;

/// Most events kept for [`ConsoleDevice::next_event`]; older ones are
/// dropped (and counted) when nobody collects them.
pub const MAX_PENDING_EVENTS: usize = 64;

/// How many rounds of "collect control messages, answer them" one
/// [`ConsoleDevice::poll`] runs at most (QEMU answers synchronously, so a
/// handshake settles in two or three).
const CONTROL_ROUNDS: usize = 8;

/// The receive queue of port `port` (§5.3.2).
pub fn receive_queue(port: u32) -> Option<u16> {
    match port {
        0 => Some(0),
        _ => u16::try_from(port.checked_mul(2)?.checked_add(2)?).ok(),
    }
}

/// The transmit queue of port `port`.
pub fn transmit_queue(port: u32) -> Option<u16> {
    receive_queue(port)?.checked_add(1)
}

/// A receive buffer the device filled that still holds unread bytes.
#[derive(Debug, Clone, Copy)]
struct Filled {
    slot: u16,
    len: usize,
    read: usize,
}

/// The buffers of one port, allocated when the port first appears.
struct PortBuffers<H: Hal> {
    receive: BufferPool<H>,
    /// Filled receive buffers in arrival order.
    filled: VecDeque<Filled>,
    transmit: BufferPool<H>,
    /// Transmit slots not in flight (a stack).
    transmit_free: Vec<u16>,
}

/// The state the protocol gives a port.
#[derive(Debug, Clone, Default)]
struct PortState {
    present: bool,
    console: bool,
    name: Option<String>,
    host_open: bool,
    guest_open: bool,
    size: Option<(u16, u16)>,
}

/// One port's queues, buffers and state.
struct Port<H: Hal> {
    id: u32,
    receive: Virtqueue<H>,
    transmit: Virtqueue<H>,
    buffers: Option<PortBuffers<H>>,
    state: PortState,
    stats: PortStats,
}

/// The control queues (MULTIPORT only).
struct Control<H: Hal> {
    receive: Virtqueue<H>,
    receive_pool: BufferPool<H>,
    transmit: Virtqueue<H>,
    transmit_pool: BufferPool<H>,
    transmit_free: Vec<u16>,
    /// Messages waiting for a transmit slot or for answer room.
    pending: VecDeque<DriverMessage>,
}

/// A virtio console device. See the module documentation.
pub struct ConsoleDevice<H: Hal, T: Transport> {
    transport: T,
    options: ConsoleOptions,
    features: u64,
    config: ConsoleConfig,
    ports: Vec<Port<H>>,
    control: Option<Control<H>>,
    report: Reporter,
    failed: bool,
    /// The device never acknowledged a reset (see [`ConsoleDevice::is_dead`]).
    dead: bool,
}

/// Where events and counters go.
struct Reporter {
    events: VecDeque<ConsoleEvent>,
    stats: ConsoleStats,
}

impl Reporter {
    fn push(&mut self, event: ConsoleEvent) {
        if self.events.len() >= MAX_PENDING_EVENTS {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(event);
    }

    fn queue_error(&mut self, queue: u16, error: QueueError) {
        self.stats.queue_errors += 1;
        warn!("virtio-console: queue {queue}: used entry rejected: {error}");
        self.push(ConsoleEvent::QueueError { queue, error });
    }
}

impl<H: Hal, T: Transport> ConsoleDevice<H, T> {
    // ----- what the device is --------------------------------------------

    /// The negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The configuration read at bring-up (or by [`ConsoleDevice::refresh_config`]).
    pub fn config(&self) -> &ConsoleConfig {
        &self.config
    }

    /// `true` with VIRTIO_CONSOLE_F_MULTIPORT.
    pub fn is_multiport(&self) -> bool {
        self.control.is_some()
    }

    /// Port 0's size (VIRTIO_CONSOLE_F_SIZE, or a RESIZE for port 0).
    pub fn size(&self) -> Option<(u16, u16)> {
        self.ports.first().and_then(|p| p.state.size)
    }

    /// The options the device was brought up with.
    pub fn options(&self) -> &ConsoleOptions {
        &self.options
    }

    /// Whole-device counters.
    pub fn stats(&self) -> ConsoleStats {
        self.report.stats
    }

    /// `true` after a fatal error (a broken queue): the device was reset.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// `true` after the device did not acknowledge a reset (§2.1.2): its
    /// rings and buffers were kept for ever rather than freed (it may still
    /// write them), and the device is not used again;
    /// [`ConsoleDevice::recover`] refuses with
    /// [`DeviceError::Dead`](crate::device::DeviceError::Dead).
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// The transport (location, MSI-X vectors).
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably (MSI-X set-up). A reset through it must be
    /// followed by [`Self::recover`] before the driver is used again.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Every queue with its role, size and counters, in index order.
    pub fn queues(&self) -> Vec<QueueInfo> {
        let mut list = Vec::with_capacity(2 * self.ports.len() + 2);
        let info = |role, queue: &Virtqueue<H>| QueueInfo {
            index: queue.index(),
            role,
            size: queue.size(),
            counters: queue.counters(),
        };
        for port in &self.ports {
            list.push(info(QueueRole::Receive(port.id), &port.receive));
            list.push(info(QueueRole::Transmit(port.id), &port.transmit));
        }
        if let Some(control) = &self.control {
            list.push(info(QueueRole::ControlReceive, &control.receive));
            list.push(info(QueueRole::ControlTransmit, &control.transmit));
        }
        list.sort_by_key(|q| q.index);
        list
    }

    /// Hands the rings of the ports that exist now and of the control
    /// queues, in index order, with their names (`port0-rx`, ...,
    /// `control-rx`, `control-tx`), to `visit`: a read-only look for the
    /// live queue view ([`crate::view`]). Queues set up for ports the device
    /// has not added are left out.
    pub fn visit_rings(&self, mut visit: impl FnMut(&dyn fmt::Display, &Virtqueue<H>)) {
        let mut rings: Vec<(QueueRole, &Virtqueue<H>)> =
            Vec::with_capacity(2 * self.ports.len() + 2);
        for port in self.ports.iter().filter(|p| p.state.present) {
            rings.push((QueueRole::Receive(port.id), &port.receive));
            rings.push((QueueRole::Transmit(port.id), &port.transmit));
        }
        if let Some(control) = &self.control {
            rings.push((QueueRole::ControlReceive, &control.receive));
            rings.push((QueueRole::ControlTransmit, &control.transmit));
        }
        rings.sort_by_key(|(_, ring)| ring.index());
        for (role, ring) in rings {
            visit(&role, ring);
        }
    }

    /// The ports that exist now, in id order.
    pub fn ports(&self) -> impl Iterator<Item = PortInfo<'_>> + '_ {
        self.ports.iter().filter(|p| p.state.present).map(port_info)
    }

    /// Port `id`, if it exists now.
    pub fn port(&self, id: u32) -> Option<PortInfo<'_>> {
        self.live_port(id).map(port_info)
    }

    /// The first port called `name`.
    pub fn port_by_name(&self, name: &str) -> Option<u32> {
        self.ports().find(|p| p.name == Some(name)).map(|p| p.id)
    }

    /// The port a shell should use: the first console port, else port 0 if
    /// it exists.
    pub fn console_port(&self) -> Option<u32> {
        self.ports()
            .find(|p| p.console)
            .or_else(|| self.port(0))
            .map(|p| p.id)
    }

    /// The next event, oldest first.
    pub fn next_event(&mut self) -> Option<ConsoleEvent> {
        self.report.events.pop_front()
    }

    // ----- interrupts and configuration ----------------------------------

    /// Reads and acknowledges the interrupt status.
    pub fn ack_interrupt(&mut self) -> InterruptStatus {
        self.transport.ack_interrupt()
    }

    /// Reads and acknowledges the interrupt status and, on a configuration
    /// change, handles it ([`ConsoleDevice::handle_config_change`]): for a
    /// console that is polled. Returns the status.
    pub fn handle_interrupt(&mut self) -> Result<InterruptStatus, ConsoleError> {
        let status = self.transport.ack_interrupt();
        if status.contains(InterruptStatus::CONFIG) {
            self.handle_config_change()?;
        }
        Ok(status)
    }

    /// Acts on a configuration-change notification (an MSI-X configuration
    /// vector, or the ISR's CONFIG bit). The device sends one when its
    /// configuration changed (§2.5; for a console, §5.3.4: `cols` and `rows`
    /// with VIRTIO_CONSOLE_F_SIZE) and when it set DEVICE_NEEDS_RESET
    /// (§2.1.2). DEVICE_NEEDS_RESET stops the device (logged; reads and
    /// writes fail with [`ConsoleError::DeviceFailed`] until
    /// [`ConsoleDevice::recover`]) and is returned as the error; otherwise
    /// the configuration is read again ([`ConsoleDevice::refresh_config`]),
    /// so a new size is applied to port 0 and reported as
    /// [`ConsoleEvent::Resized`].
    pub fn handle_config_change(&mut self) -> Result<(), ConsoleError> {
        self.check_live()?;
        if let Err(error) = crate::init::check_device_status(&self.transport) {
            self.stop_device("the device set DEVICE_NEEDS_RESET (§2.1.2)");
            return Err(crate::device::DeviceError::Init(error).into());
        }
        self.refresh_config().map(|_| ())
    }

    /// Asks for interrupts on every receive queue (data and control).
    /// Returns `true` if something is already waiting: poll before sleeping.
    pub fn enable_interrupts(&mut self) -> bool {
        let mut pending = false;
        for port in &mut self.ports {
            pending |= port.receive.enable_interrupts();
        }
        if let Some(control) = &mut self.control {
            pending |= control.receive.enable_interrupts();
        }
        pending
    }

    /// Asks every queue not to interrupt (polling mode).
    pub fn disable_interrupts(&mut self) {
        for port in &mut self.ports {
            port.receive.disable_interrupts();
            port.transmit.disable_interrupts();
        }
        if let Some(control) = &mut self.control {
            control.receive.disable_interrupts();
            control.transmit.disable_interrupts();
        }
    }

    /// Re-reads the configuration (after a configuration-change interrupt);
    /// a new size for port 0 is reported as [`ConsoleEvent::Resized`].
    pub fn refresh_config(&mut self) -> Result<&ConsoleConfig, ConsoleError> {
        let now = ConsoleConfig::read(&mut self.transport, self.features)?;
        if now.size != self.config.size {
            if let Some((cols, rows)) = now.size {
                if let Some(port) = self.ports.first_mut() {
                    port.state.size = Some((cols, rows));
                }
                self.report
                    .push(ConsoleEvent::Resized { id: 0, cols, rows });
            }
        }
        // The number of ports cannot change under the driver's queues.
        self.config = ConsoleConfig {
            max_nr_ports: self.config.max_nr_ports,
            ..now
        };
        Ok(&self.config)
    }

    /// Writes `bytes` through `emerg_wr` (VIRTIO_CONSOLE_F_EMERG_WRITE): no
    /// queue, no waiting, works even after a failure. Returns the bytes written.
    pub fn emergency_write(&mut self, bytes: &[u8]) -> Result<usize, ConsoleError> {
        if !self.config.emergency_write {
            return Err(ConsoleError::NotNegotiated("VIRTIO_CONSOLE_F_EMERG_WRITE"));
        }
        Ok(config::emergency_write(&mut self.transport, bytes)?)
    }

    // ----- the non-blocking core ------------------------------------------

    /// Collects everything the device has done: runs the control protocol
    /// (answering PORT_ADDs, recording names and connections, sending what
    /// waits), frees transmitted buffers and queues received data for
    /// [`ConsoleDevice::read`].
    ///
    /// Bad control messages and bad used-ring entries become events, not
    /// errors; `Err` means a queue broke, after which the device was reset.
    pub fn poll(&mut self) -> Result<(), ConsoleError> {
        self.check_live()?;
        let result = self.poll_inner();
        self.guard(result)
    }

    /// Bytes received on port `id` and not read yet.
    pub fn readable(&self, id: u32) -> usize {
        self.live_port(id).map_or(0, unread_bytes)
    }

    /// Copies received bytes of port `id` into `buf` and returns how many
    /// (0: nothing there; call [`ConsoleDevice::poll`] first to collect
    /// what the device delivered). Every buffer emptied goes back to the
    /// device at once, all under one notification.
    pub fn read(&mut self, id: u32, buf: &mut [u8]) -> Result<usize, ConsoleError> {
        self.check_live()?;
        let result = read_port(&mut self.ports, &mut self.transport, id, buf);
        self.guard(result)
    }

    /// Sends as much of `data` on port `id` as free transmit buffers hold
    /// and returns how many bytes that was: fewer than `data.len()`, maybe
    /// 0, when the queue is full (call again after the device has consumed
    /// some; [`ConsoleDevice::write_all`] does). Each buffer is one
    /// descriptor of up to [`ConsoleOptions::transmit_buffer_bytes`], and
    /// all descriptors of one call share one notification.
    pub fn write(&mut self, id: u32, data: &[u8]) -> Result<usize, ConsoleError> {
        self.check_live()?;
        let multiport = self.control.is_some();
        let result = write_port(&mut self.ports, &mut self.transport, id, data, multiport);
        self.guard(result)
    }

    /// Opens (`true`) or closes port `id` from the guest side (PORT_OPEN).
    /// Without MULTIPORT port 0 is always open and this does nothing.
    pub fn set_open(&mut self, id: u32, open: bool) -> Result<(), ConsoleError> {
        self.check_live()?;
        let port = live_port_mut(&mut self.ports, id)?;
        let Some(control) = self.control.as_mut() else {
            return Ok(());
        };
        port.state.guest_open = open;
        control
            .pending
            .push_back(DriverMessage::port_open(id, open));
        let result = self.flush_control().map(|_| ());
        self.guard(result)
    }

    // ----- internals ---------------------------------------------------------

    fn check_live(&self) -> Result<(), ConsoleError> {
        if self.failed {
            Err(ConsoleError::DeviceFailed)
        } else {
            Ok(())
        }
    }

    fn live_port(&self, id: u32) -> Option<&Port<H>> {
        self.ports.get(id as usize).filter(|p| p.state.present)
    }

    /// Passes `result` on; if it is a queue error and the queue is broken,
    /// resets the device first (the queue cannot be trusted any more).
    fn guard<R>(&mut self, result: Result<R, ConsoleError>) -> Result<R, ConsoleError> {
        if let Err(ConsoleError::Queue { queue, .. }) = result {
            if self.queue_is_broken(queue) {
                self.stop_device("a queue is broken");
            }
        }
        result
    }

    fn queue_is_broken(&self, queue: u16) -> bool {
        let broken = |q: &Virtqueue<H>| q.index() == queue && q.is_broken();
        self.ports
            .iter()
            .any(|p| broken(&p.receive) || broken(&p.transmit))
            || self
                .control
                .as_ref()
                .is_some_and(|c| broken(&c.receive) || broken(&c.transmit))
    }

    fn poll_inner(&mut self) -> Result<(), ConsoleError> {
        if self.control.is_some() {
            for _ in 0..CONTROL_ROUNDS {
                let received = self.process_control()?;
                let sent = self.flush_control()?;
                if received == 0 && sent == 0 {
                    break;
                }
            }
        }
        for port in &mut self.ports {
            reclaim_transmit(port)?;
            collect_received(port, &mut self.transport, &mut self.report)?;
        }
        Ok(())
    }
}

impl<H: Hal, T: Transport> Drop for ConsoleDevice<H, T> {
    /// Resets the device before its rings and buffers are freed: the device
    /// must not write into memory that is given to someone else.
    fn drop(&mut self) {
        if !self.failed
            && crate::device::reset_or_keep(&mut self.transport, "virtio-console").is_err()
        {
            self.keep_memory_forever();
        }
    }
}

impl<H: Hal, T: Transport> fmt::Debug for ConsoleDevice<H, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsoleDevice")
            .field("location", &self.transport.location())
            .field("features", &format_args!("{:#x}", self.features))
            .field("config", &self.config)
            .field("ports", &self.ports().count())
            .field("failed", &self.failed)
            .finish()
    }
}

fn queue_error(queue: u16, error: QueueError) -> ConsoleError {
    ConsoleError::Queue { queue, error }
}
