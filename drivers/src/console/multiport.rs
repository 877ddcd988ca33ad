//! # The multiport protocol, driver side (virtio 1.2 §5.3.6.2)
//!
//! `control.rs` says what a control message looks like; this file does
//! what one means to the port table: [`ConsoleDevice::process_control`]
//! collects the device's messages and applies each
//! ([`ConsoleDevice::handle_control`]: PORT_ADD gives a port its buffers and
//! answers PORT_READY, PORT_NAME names it, PORT_OPEN opens it, ...), and
//! [`ConsoleDevice::flush_control`] sends the driver's waiting messages,
//! paced so that the device always has a receive buffer for its answers
//! (see the module documentation of `console`).

use crate::queue::Ring;
use alloc::string::String;

use hal::Hal;
use log::{debug, trace, warn};

use super::bringup::ensure_buffers;
use super::control::{event, parse_device_message, HEADER_BYTES, RECEIVE_BUFFER_BYTES};
use super::port::{discard_received, post_receive};
use super::{
    queue_error, ConsoleDevice, ConsoleError, ConsoleEvent, Control, ControlError, DeviceMessage,
    DriverMessage, PortState, REPLIES_PER_PORT_READY,
};
use crate::device;
use crate::queue::{QueueError, Segment};
use crate::transport::Transport;

impl<H: Hal, T: Transport> ConsoleDevice<H, T> {
    /// Collects control messages from the device, handles each and reposts
    /// its buffer. Returns how many arrived.
    pub(super) fn process_control(&mut self) -> Result<usize, ConsoleError> {
        let mut received = 0;
        while let Some(control) = self.control.as_mut() {
            let index = control.receive.index();
            let capacity = control.receive_pool.slot_bytes();
            let mut bytes = [0u8; RECEIVE_BUFFER_BYTES];
            let (token, message) = match control.receive.pop_used() {
                Ok(None) => break,
                Ok(Some(used)) => {
                    let len = (used.len as usize).min(capacity).min(RECEIVE_BUFFER_BYTES);
                    (used.token, Ok(len))
                }
                Err(QueueError::UsedLengthTooLong { token, len, max }) => {
                    (token, Err(ControlError::TooLong { len, capacity: max }))
                }
                Err(error) if control.receive.is_broken() => {
                    return Err(queue_error(index, error));
                }
                Err(error) => {
                    self.report.queue_error(index, error);
                    continue;
                }
            };
            let Some(slot) = control.receive_pool.take(token) else {
                continue;
            };
            if let Ok(len) = message {
                control.receive_pool.copy_out(slot, 0, &mut bytes[..len]);
            }
            received += 1;
            self.report.stats.control_received += 1;
            let result = message.and_then(|len| {
                let message = parse_device_message(&bytes[..len], capacity)?;
                self.handle_control(message)
            });
            if let Err(error) = result {
                self.report.stats.control_errors += 1;
                warn!(
                    "{}: virtio-console: control message refused: {error}",
                    self.transport.location()
                );
                self.report.push(ConsoleEvent::BadControl(error));
            }
            if let Some(control) = self.control.as_mut() {
                post_receive(&mut control.receive, &mut control.receive_pool, slot)
                    .map_err(|error| queue_error(index, error))?;
            }
        }
        if let Some(control) = self.control.as_mut() {
            device::kick(&mut self.transport, &mut control.receive);
        }
        Ok(received)
    }

    /// Applies one well-formed device message to the port table.
    pub(super) fn handle_control(
        &mut self,
        message: DeviceMessage<'_>,
    ) -> Result<(), ControlError> {
        let location = self.transport.location();
        let owner = self.transport.dma_owner();
        trace!("{location}: virtio-console: control <- {message}");
        let id = message.id();
        let max_nr_ports = self.config.max_nr_ports;
        if id >= max_nr_ports {
            return Err(ControlError::PortOutOfRange { id, max_nr_ports });
        }
        let handled = self.ports.len();
        let Some(control) = self.control.as_mut() else {
            return Ok(());
        };
        let Some(port) = self.ports.get_mut(id as usize) else {
            if let DeviceMessage::PortAdd { .. } = message {
                // A real port, but beyond the queues this driver set up.
                debug!(
                    "{location}: virtio-console: port {id} is beyond the {handled} port(s) this driver handles; answering PORT_READY 0"
                );
                control
                    .pending
                    .push_back(DriverMessage::port_ready(id, false));
                self.report.push(ConsoleEvent::PortRejected { id });
                return Ok(());
            }
            return Err(ControlError::UnknownPort {
                id,
                event: message.event(),
            });
        };
        if let DeviceMessage::PortAdd { .. } = message {
            if port.state.present {
                return Err(ControlError::AlreadyAdded { id });
            }
            let options = &self.options;
            if let Err(error) = ensure_buffers(port, options, owner) {
                warn!("{location}: virtio-console: port {id}: {error}; answering PORT_READY 0");
                control
                    .pending
                    .push_back(DriverMessage::port_ready(id, false));
                self.report.push(ConsoleEvent::PortRejected { id });
                return Ok(());
            }
            // The receive buffers go to the device before PORT_READY says
            // the port can take data.
            device::kick(&mut self.transport, &mut port.receive);
            control
                .pending
                .push_back(DriverMessage::port_ready(id, true));
            port.state = PortState {
                present: true,
                // Port 0's size comes from the configuration (SIZE).
                size: if id == 0 { self.config.size } else { None },
                ..PortState::default()
            };
            if options.open_ports {
                port.state.guest_open = true;
                control
                    .pending
                    .push_back(DriverMessage::port_open(id, true));
            }
            debug!("{location}: virtio-console: port {id} added");
            self.report.push(ConsoleEvent::PortAdded { id });
            return Ok(());
        }
        if !port.state.present {
            return Err(ControlError::UnknownPort {
                id,
                event: message.event(),
            });
        }
        let event = match message {
            DeviceMessage::PortAdd { .. } => return Ok(()),
            DeviceMessage::PortRemove { .. } => {
                port.state = PortState::default();
                if let Err(error) = discard_received(port, &mut self.transport) {
                    warn!("{location}: virtio-console: port {id}: reposting its buffers: {error}");
                }
                debug!("{location}: virtio-console: port {id} removed");
                ConsoleEvent::PortRemoved { id }
            }
            DeviceMessage::ConsolePort { .. } => {
                port.state.console = true;
                ConsoleEvent::ConsolePort { id }
            }
            DeviceMessage::Resize { cols, rows, .. } => {
                port.state.size = Some((cols, rows));
                ConsoleEvent::Resized { id, cols, rows }
            }
            DeviceMessage::PortOpen { open, .. } => {
                port.state.host_open = open;
                ConsoleEvent::HostConnection { id, open }
            }
            DeviceMessage::PortName { name, .. } => {
                if port.state.name.is_some() {
                    return Err(ControlError::NameAlreadySet { id });
                }
                debug!("{location}: virtio-console: port {id} is called {name:?}");
                port.state.name = Some(String::from(name));
                ConsoleEvent::PortNamed { id }
            }
        };
        self.report.push(event);
        Ok(())
    }

    /// Sends waiting control messages while transmit slots last, keeping
    /// room for the answers to PORT_READY (see the module documentation).
    /// Returns how many were sent.
    pub(super) fn flush_control(&mut self) -> Result<usize, ConsoleError> {
        let Some(control) = self.control.as_mut() else {
            return Ok(0);
        };
        reclaim_control_transmit(control)?;
        let mut sent = 0;
        let mut answers_expected = 0;
        while let Some(&message) = control.pending.front() {
            let answers = if message.event == event::PORT_READY && message.value == 1 {
                REPLIES_PER_PORT_READY
            } else {
                0
            };
            // Room for the answers: posted control receive buffers. The
            // first PORT_READY always goes, or a tiny queue would stall.
            let room = control.receive.in_flight() as usize;
            if answers > 0 && answers_expected > 0 && answers_expected + answers > room {
                break;
            }
            let Some(slot) = control.transmit_free.pop() else {
                break;
            };
            control.transmit_pool.fill(slot, &message.encode());
            let segment = Segment::readable(control.transmit_pool.addr(slot), HEADER_BYTES as u32);
            match control.transmit.add(&[segment]) {
                Ok(token) => control.transmit_pool.bind(token, slot),
                Err(error) => {
                    control.transmit_free.push(slot);
                    if matches!(error, QueueError::QueueFull { .. }) {
                        break;
                    }
                    return Err(queue_error(control.transmit.index(), error));
                }
            }
            trace!(
                "{}: virtio-console: control -> {message}",
                self.transport.location()
            );
            control.pending.pop_front();
            answers_expected += answers;
            sent += 1;
        }
        if sent > 0 {
            device::kick(&mut self.transport, &mut control.transmit);
            self.report.stats.control_sent += sent as u64;
        }
        Ok(sent)
    }
}

pub(super) fn reclaim_control_transmit<H: Hal>(
    control: &mut Control<H>,
) -> Result<(), ConsoleError> {
    loop {
        let token = match control.transmit.pop_used() {
            Ok(None) => return Ok(()),
            Ok(Some(used)) => used.token,
            Err(QueueError::UsedLengthTooLong { token, .. }) => token,
            Err(error) if control.transmit.is_broken() => {
                return Err(queue_error(control.transmit.index(), error))
            }
            Err(_) => continue,
        };
        if let Some(slot) = control.transmit_pool.take(token) {
            control.transmit_free.push(slot);
        }
    }
}
