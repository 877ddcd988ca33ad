//! # Bringing the console up, and down (virtio 1.2 §3.1.1, §5.3.5)
//!
//! The §3.1.1 sequence for a console: negotiate, read the configuration
//! (§5.3.4), set up the port queues and, with MULTIPORT, the control
//! queues, post receive buffers, DRIVER_OK; then transmit interrupts off,
//! the receive buffers published and, with MULTIPORT, DEVICE_READY sent
//! (§5.3.6.2). [`ConsoleDevice::recover`] runs it again after a reset;
//! [`ConsoleDevice::stop_device`] resets a device the driver can no longer
//! trust. [`ConsoleOptions`] are the choices the driver makes that the
//! device does not dictate.

use crate::queue::Ring;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

use hal::{DeviceVisible, DmaOwner, Hal};
use log::{debug, trace, warn};

use super::buffers::BufferPool;
use super::control::{HEADER_BYTES, RECEIVE_BUFFER_BYTES};
use super::port::post_receive;
use super::{
    feature, queue_error, receive_queue, transmit_queue, ConsoleConfig, ConsoleDevice,
    ConsoleError, ConsoleStats, Control, DriverMessage, Port, PortBuffers, PortState, PortStats,
    Reporter, CONTROL_RECEIVE_QUEUE, CONTROL_TRANSMIT_QUEUE, MAX_PENDING_EVENTS,
    SUPPORTED_FEATURES,
};
use crate::device::{self, DeviceError, QueueSpec};
use crate::features;
use crate::transport::{DeviceStatus, DeviceType, Transport};

/// Choices the driver makes that the device does not dictate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleOptions {
    /// Console features to accept when offered (a subset of [`SUPPORTED_FEATURES`]).
    pub features: u64,
    /// Ring features to accept when offered. Default: event indices and
    /// the packed ring ([`features::RingPreference::Auto`]) but not
    /// indirect descriptors, which single-buffer chains never need.
    pub ring_features: u64,
    /// Most ports to set queues up for (the device's `max_nr_ports` may be
    /// smaller). A PORT_ADD for a higher id is answered PORT_READY 0.
    pub max_ports: u32,
    /// Most descriptors per queue.
    pub max_queue_size: u16,
    /// Receive buffers per port.
    pub receive_buffers: u16,
    /// Bytes per receive buffer.
    pub receive_buffer_bytes: usize,
    /// Transmit buffers per port (the most descriptors in flight).
    pub transmit_buffers: u16,
    /// Bytes per transmit buffer (the most bytes per descriptor).
    pub transmit_buffer_bytes: usize,
    /// Control receive buffers posted (at most the control queue's size).
    pub control_buffers: u16,
    /// Open every port from the guest side (PORT_OPEN 1) as soon as it is
    /// ready. QEMU passes host data to a multiport port only once the guest
    /// has opened it.
    pub open_ports: bool,
}

impl Default for ConsoleOptions {
    fn default() -> Self {
        Self {
            features: SUPPORTED_FEATURES,
            ring_features: features::RingPreference::Auto.ring_features()
                & !features::RING_INDIRECT_DESC,
            max_ports: 16,
            max_queue_size: 128,
            receive_buffers: 16,
            receive_buffer_bytes: 4096,
            transmit_buffers: 32,
            transmit_buffer_bytes: 4096,
            control_buffers: 32,
            open_ports: true,
        }
    }
}

impl<H: Hal, T: Transport> ConsoleDevice<H, T> {
    /// Brings up the console behind `transport` with default options.
    pub fn new(transport: T) -> Result<Self, ConsoleError> {
        Self::with_options(transport, ConsoleOptions::default())
    }

    /// Brings up the console behind `transport` (§3.1.1, §5.3.5): negotiate,
    /// read the configuration, set up the port queues (and the control
    /// queues with MULTIPORT), post receive buffers, DRIVER_OK; then, with
    /// MULTIPORT, send DEVICE_READY and run the handshake as far as the
    /// device answers at once.
    pub fn with_options(mut transport: T, options: ConsoleOptions) -> Result<Self, ConsoleError> {
        device::expect_device_type(&transport, DeviceType::Console)?;
        check_options(&options)?;
        let (parts, negotiated) = bring_up_parts::<H, T>(&mut transport, &options)?;
        let mut console = Self {
            transport,
            options,
            features: negotiated,
            config: parts.config,
            ports: parts.ports,
            control: parts.control,
            report: Reporter {
                events: VecDeque::with_capacity(MAX_PENDING_EVENTS),
                stats: ConsoleStats::default(),
            },
            failed: false,
            dead: false,
        };
        console.start()?;
        Ok(console)
    }

    /// Resets the device and brings it up again from the start with the
    /// same features: new queues and buffers, and with MULTIPORT the
    /// handshake again (ports reappear through PORT_ADD). Bytes not yet
    /// read, or written but not yet taken by the device, are lost; the
    /// counters carry on. For a device that was reset, or used by someone
    /// else, behind the driver's back (the benchmark lends it to another
    /// driver and takes it back this way).
    pub fn recover(&mut self) -> Result<(), ConsoleError> {
        debug!(
            "{}: virtio-console: recovery requested",
            self.transport.location()
        );
        // The device lets go of the old rings and buffers before they are
        // replaced (and freed) below.
        self.halt();
        if self.dead {
            return Err(DeviceError::Dead.into());
        }
        let before = self.features;
        let (parts, negotiated) = bring_up_parts::<H, T>(&mut self.transport, &self.options)?;
        if negotiated != before {
            // Drop the new parts only after the device has let go of them.
            if device::reset_or_keep(&mut self.transport, "virtio-console").is_err() {
                DeviceVisible::new(parts).keep_forever();
                self.dead = true;
                return Err(DeviceError::Dead.into());
            }
            self.transport.set_status(DeviceStatus::FAILED);
            drop(parts);
            return Err(ConsoleError::BadConfig(
                "the device offers other features after a reset",
            ));
        }
        self.config = parts.config;
        self.ports = parts.ports;
        self.control = parts.control;
        self.failed = false;
        self.start()
    }

    /// The end of every bring-up, once DRIVER_OK is set: transmit
    /// interrupts off, receive buffers published, DEVICE_READY queued and
    /// the handshake run as far as the device answers at once.
    pub(super) fn start(&mut self) -> Result<(), ConsoleError> {
        // Transmit completions are collected lazily; no interrupts for them.
        for port in &mut self.ports {
            port.transmit.disable_interrupts();
        }
        if let Some(control) = &mut self.control {
            control.transmit.disable_interrupts();
        }
        let location = self.transport.location();
        debug!(
            "{location}: virtio-console: {}; {}; queues for {} port(s)",
            self.config,
            if self.control.is_some() {
                "multiport"
            } else {
                "single port"
            },
            self.ports.len()
        );
        // The buffers posted during setup become visible now (no
        // notification may precede DRIVER_OK, §3.1.1).
        for port in &mut self.ports {
            device::kick(&mut self.transport, &mut port.receive);
        }
        if let Some(control) = &mut self.control {
            device::kick(&mut self.transport, &mut control.receive);
            control.pending.push_back(DriverMessage::device_ready(true));
        }
        self.poll()
    }

    /// Resets the device (it must stop touching the buffers) and refuses
    /// service from now on.
    pub(super) fn stop_device(&mut self, why: &str) {
        let location = self.transport.location();
        warn!("{location}: virtio-console: resetting the device: {why}");
        self.halt();
    }

    /// [`Self::stop_device`] without the warning. If the device does not
    /// acknowledge the reset it may still write the rings and buffers
    /// (§2.1.2): they are kept for ever (`hal::DeviceVisible`), never
    /// freed, and the device is dead ([`ConsoleDevice::is_dead`]).
    pub(super) fn halt(&mut self) {
        if self.dead {
            return;
        }
        if device::reset_or_keep(&mut self.transport, "virtio-console").is_err() {
            self.keep_memory_forever();
            return;
        }
        self.transport.set_status(DeviceStatus::FAILED);
        for port in &mut self.ports {
            port.receive.reset(|_| {});
            port.transmit.reset(|_| {});
            port.state = PortState::default();
        }
        if let Some(control) = &mut self.control {
            control.receive.reset(|_| {});
            control.transmit.reset(|_| {});
            control.pending.clear();
        }
        self.failed = true;
    }

    /// Gives up the device's rings and buffers without freeing them: the
    /// device did not acknowledge a reset and may still write them.
    pub(super) fn keep_memory_forever(&mut self) {
        DeviceVisible::new(core::mem::take(&mut self.ports)).keep_forever();
        DeviceVisible::new(self.control.take()).keep_forever();
        self.dead = true;
        self.failed = true;
    }
}

pub(super) fn check_options(options: &ConsoleOptions) -> Result<(), ConsoleError> {
    let sizes = [options.receive_buffer_bytes, options.transmit_buffer_bytes];
    if sizes.iter().any(|&b| b == 0 || b > u32::MAX as usize) {
        return Err(ConsoleError::BadOptions(
            "buffer sizes must be 1 ..= 2^32 - 1 bytes",
        ));
    }
    let counts = [
        options.receive_buffers,
        options.transmit_buffers,
        options.control_buffers,
    ];
    if counts.iter().any(|&c| c == 0 || c == u16::MAX) {
        return Err(ConsoleError::BadOptions(
            "buffer counts must be 1 ..= 65534",
        ));
    }
    if options.max_ports == 0 {
        return Err(ConsoleError::BadOptions("max_ports must not be 0"));
    }
    Ok(())
}

/// What a bring-up builds between FEATURES_OK and DRIVER_OK.
pub(super) struct Parts<H: Hal> {
    config: ConsoleConfig,
    ports: Vec<Port<H>>,
    control: Option<Control<H>>,
}

/// Steps 1 to 8 of §3.1.1 for a console (§5.3.5): negotiate, read the
/// configuration, set up the port queues (and the control queues with
/// MULTIPORT), post receive buffers, DRIVER_OK.
pub(super) fn bring_up_parts<H: Hal, T: Transport>(
    transport: &mut T,
    options: &ConsoleOptions,
) -> Result<(Parts<H>, u64), ConsoleError> {
    let driver_features = options.features & SUPPORTED_FEATURES;
    device::bring_up(
        transport,
        driver_features,
        options.ring_features,
        |t: &mut T, negotiated| -> Result<_, ConsoleError> {
            let config = ConsoleConfig::read(t, negotiated)?;
            let multiport = negotiated & feature::MULTIPORT != 0;
            if multiport && config.max_nr_ports == 0 {
                return Err(ConsoleError::BadConfig("MULTIPORT with max_nr_ports = 0"));
            }
            let control = if multiport {
                Some(create_control::<H, T>(t, options, negotiated)?)
            } else {
                None
            };
            let ports = create_ports::<H, T>(t, options, &config, negotiated)?;
            Ok(Parts {
                config,
                ports,
                control,
            })
        },
    )
}

pub(super) fn spec(options: &ConsoleOptions) -> QueueSpec {
    QueueSpec::new(options.max_queue_size).with_indirect_capacity(0)
}

pub(super) fn create_control<H: Hal, T: Transport>(
    t: &mut T,
    options: &ConsoleOptions,
    negotiated: u64,
) -> Result<Control<H>, ConsoleError> {
    let mut receive =
        device::setup_queue_with::<H, T>(t, CONTROL_RECEIVE_QUEUE, spec(options), negotiated)?;
    let transmit =
        device::setup_queue_with::<H, T>(t, CONTROL_TRANSMIT_QUEUE, spec(options), negotiated)?;
    let receive_slots = options.control_buffers.min(receive.size());
    let mut receive_pool = BufferPool::new(
        t.dma_owner(),
        receive_slots,
        RECEIVE_BUFFER_BYTES,
        receive.size(),
    )
    .map_err(ConsoleError::Dma)?;
    for slot in 0..receive_slots {
        post_receive(&mut receive, &mut receive_pool, slot)
            .map_err(|e| queue_error(CONTROL_RECEIVE_QUEUE, e))?;
    }
    let transmit_slots = options.control_buffers.min(transmit.size());
    let transmit_pool =
        BufferPool::new(t.dma_owner(), transmit_slots, HEADER_BYTES, transmit.size())
            .map_err(ConsoleError::Dma)?;
    Ok(Control {
        receive,
        receive_pool,
        transmit,
        transmit_pool,
        transmit_free: (0..transmit_slots).rev().collect(),
        pending: VecDeque::new(),
    })
}

/// Sets up the queues of every port the driver will handle: all of
/// `min(max_nr_ports, options.max_ports)`, or fewer if the device runs out
/// of queues. Without MULTIPORT, port 0 also gets its buffers and state now.
pub(super) fn create_ports<H: Hal, T: Transport>(
    t: &mut T,
    options: &ConsoleOptions,
    config: &ConsoleConfig,
    negotiated: u64,
) -> Result<Vec<Port<H>>, ConsoleError> {
    let wanted = config.max_nr_ports.min(options.max_ports);
    let mut ports = Vec::new();
    for id in 0..wanted {
        let (Some(rx), Some(tx)) = (receive_queue(id), transmit_queue(id)) else {
            break;
        };
        if id > 0 && (t.max_queue_size(rx)? == 0 || t.max_queue_size(tx)? == 0) {
            warn!(
                "{}: virtio-console: max_nr_ports is {} but queues {rx}/{tx} are missing; handling {id} port(s)",
                t.location(),
                config.max_nr_ports
            );
            break;
        }
        let receive = device::setup_queue_with::<H, T>(t, rx, spec(options), negotiated)?;
        let transmit = device::setup_queue_with::<H, T>(t, tx, spec(options), negotiated)?;
        ports.push(Port {
            id,
            receive,
            transmit,
            buffers: None,
            state: PortState::default(),
            stats: PortStats::default(),
        });
    }
    let Some(port0) = ports.first_mut() else {
        return Err(ConsoleError::BadConfig("no queues for port 0"));
    };
    if negotiated & feature::MULTIPORT == 0 {
        // The one port exists from the start, open on both sides (§5.3.6).
        ensure_buffers(port0, options, t.dma_owner())?;
        port0.state = PortState {
            present: true,
            console: true,
            name: None,
            host_open: true,
            guest_open: true,
            size: config.size,
        };
    }
    Ok(ports)
}

/// Gives `port` its buffers the first time it appears, and posts every
/// receive buffer (the caller's next kick publishes them). A port that
/// comes back keeps its buffers: the device still holds the posted ones.
pub(super) fn ensure_buffers<H: Hal>(
    port: &mut Port<H>,
    options: &ConsoleOptions,
    owner: DmaOwner,
) -> Result<(), ConsoleError> {
    if port.buffers.is_some() {
        return Ok(());
    }
    let receive_slots = options.receive_buffers.min(port.receive.size());
    let transmit_slots = options.transmit_buffers.min(port.transmit.size());
    let mut receive = BufferPool::new(
        owner,
        receive_slots,
        options.receive_buffer_bytes,
        port.receive.size(),
    )
    .map_err(ConsoleError::Dma)?;
    let transmit = BufferPool::new(
        owner,
        transmit_slots,
        options.transmit_buffer_bytes,
        port.transmit.size(),
    )
    .map_err(ConsoleError::Dma)?;
    for slot in 0..receive_slots {
        post_receive(&mut port.receive, &mut receive, slot)
            .map_err(|e| queue_error(port.receive.index(), e))?;
    }
    trace!(
        "console port {}: {receive_slots} receive buffers of {} bytes posted, {transmit_slots} transmit buffers of {} bytes ready",
        port.id,
        options.receive_buffer_bytes,
        options.transmit_buffer_bytes
    );
    port.buffers = Some(PortBuffers {
        receive,
        filled: VecDeque::with_capacity(receive_slots as usize),
        transmit,
        transmit_free: (0..transmit_slots).rev().collect(),
    });
    Ok(())
}
