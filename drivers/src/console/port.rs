//! # The data path of a port (virtio 1.2 §5.3.6, §5.3.6.1)
//!
//! Each port has a receive queue the device fills and a transmit queue it
//! empties (port 0: queues 0 and 1, port `n`: `2n+2` and `2n+3`). The
//! driver owns the buffers (`buffers.rs`: one DMA pool per queue, one
//! descriptor per buffer):
//!
//! - **receive**: every buffer is posted to the device except while it
//!   holds unread bytes; [`collect_received`] moves filled ones into the
//!   port's list, [`read_port`] copies bytes out and reposts each buffer
//!   the moment it is empty (one notification for all reposted);
//! - **transmit**: [`write_port`] fills free buffers, makes them available
//!   and notifies at most once; [`reclaim_transmit`] takes back what the
//!   device has consumed.
//!
//! These are free functions over a port's pieces, so that a caller can
//! lend the port and the transport at the same time.

use crate::queue::Ring;
use hal::Hal;
use log::{log_enabled, trace, Level};

use super::buffers::BufferPool;
use super::{queue_error, ConsoleError, Filled, Port, PortInfo, Reporter};
use crate::device;
use crate::queue::{QueueError, Segment, Virtqueue};
use crate::transport::Transport;

/// Makes receive buffer `slot` available to the device (published by the
/// caller's next kick).
pub(super) fn post_receive<H: Hal>(
    queue: &mut Virtqueue<H>,
    pool: &mut BufferPool<H>,
    slot: u16,
) -> Result<(), QueueError> {
    let segment = Segment::writable(pool.addr(slot), pool.slot_bytes() as u32);
    let token = queue.add(&[segment])?;
    pool.bind(token, slot);
    Ok(())
}

/// Moves what the device delivered on `port` into its filled list.
/// Buffers of a port that is gone, empty ones and ones with an impossible
/// length go straight back to the device.
pub(super) fn collect_received<H: Hal, T: Transport>(
    port: &mut Port<H>,
    transport: &mut T,
    report: &mut Reporter,
) -> Result<(), ConsoleError> {
    let Some(buffers) = port.buffers.as_mut() else {
        return Ok(());
    };
    let index = port.receive.index();
    let mut reposted = 0;
    loop {
        let (token, len) = match port.receive.pop_used() {
            Ok(None) => break,
            Ok(Some(used)) => (used.token, Some(used.len as usize)),
            Err(QueueError::UsedLengthTooLong { token, len, max }) => {
                port.stats.bad_lengths += 1;
                report.queue_error(index, QueueError::UsedLengthTooLong { token, len, max });
                (token, None)
            }
            Err(error) if port.receive.is_broken() => return Err(queue_error(index, error)),
            Err(error) => {
                report.queue_error(index, error);
                continue;
            }
        };
        let Some(slot) = buffers.receive.take(token) else {
            continue;
        };
        match len {
            Some(len) if len > 0 && port.state.present => {
                port.stats.bytes_received += len as u64;
                port.stats.receive_buffers_filled += 1;
                buffers.filled.push_back(Filled { slot, len, read: 0 });
                if log_enabled!(Level::Trace) {
                    trace!("console port {}: received {len} bytes", port.id);
                }
            }
            other => {
                if let Some(len) = other {
                    port.stats.bytes_discarded += len as u64;
                }
                post_receive(&mut port.receive, &mut buffers.receive, slot)
                    .map_err(|e| queue_error(index, e))?;
                reposted += 1;
            }
        }
    }
    if reposted > 0 {
        device::kick(transport, &mut port.receive);
    }
    Ok(())
}

/// Throws away unread data of a removed port and reposts its buffers.
pub(super) fn discard_received<H: Hal, T: Transport>(
    port: &mut Port<H>,
    transport: &mut T,
) -> Result<(), QueueError> {
    let Some(buffers) = port.buffers.as_mut() else {
        return Ok(());
    };
    let mut reposted = 0;
    while let Some(filled) = buffers.filled.pop_front() {
        port.stats.bytes_discarded += (filled.len - filled.read) as u64;
        post_receive(&mut port.receive, &mut buffers.receive, filled.slot)?;
        reposted += 1;
    }
    if reposted > 0 {
        device::kick(transport, &mut port.receive);
    }
    Ok(())
}

/// [`ConsoleDevice::read`](super::ConsoleDevice::read) on the split-out pieces.
pub(super) fn read_port<H: Hal, T: Transport>(
    ports: &mut [Port<H>],
    transport: &mut T,
    id: u32,
    buf: &mut [u8],
) -> Result<usize, ConsoleError> {
    let port = live_port_mut(ports, id)?;
    let Some(buffers) = port.buffers.as_mut() else {
        return Ok(0);
    };
    let mut copied = 0;
    let mut reposted = 0;
    while copied < buf.len() {
        let Some(front) = buffers.filled.front_mut() else {
            break;
        };
        let n = (front.len - front.read).min(buf.len() - copied);
        // Lengths were checked against the slot size when collected.
        buffers
            .receive
            .copy_out(front.slot, front.read, &mut buf[copied..copied + n]);
        copied += n;
        front.read += n;
        if front.read == front.len {
            let slot = front.slot;
            buffers.filled.pop_front();
            post_receive(&mut port.receive, &mut buffers.receive, slot)
                .map_err(|error| queue_error(port.receive.index(), error))?;
            reposted += 1;
        }
    }
    if reposted > 0 {
        device::kick(transport, &mut port.receive);
    }
    if copied > 0 && log_enabled!(Level::Trace) {
        trace!("console port {id}: read {copied} bytes, {reposted} receive buffer(s) reposted");
    }
    Ok(copied)
}

/// [`ConsoleDevice::write`](super::ConsoleDevice::write) on the split-out pieces.
pub(super) fn write_port<H: Hal, T: Transport>(
    ports: &mut [Port<H>],
    transport: &mut T,
    id: u32,
    data: &[u8],
    multiport: bool,
) -> Result<usize, ConsoleError> {
    let port = live_port_mut(ports, id)?;
    if multiport && !port.state.console && !port.state.host_open {
        return Err(ConsoleError::PortClosed(id));
    }
    reclaim_transmit(port)?;
    let Some(buffers) = port.buffers.as_mut() else {
        return Ok(0);
    };
    let slot_bytes = buffers.transmit.slot_bytes();
    let mut taken = 0;
    let mut descriptors = 0u64;
    while taken < data.len() {
        let Some(slot) = buffers.transmit_free.pop() else {
            break;
        };
        let chunk = &data[taken..data.len().min(taken + slot_bytes)];
        buffers.transmit.fill(slot, chunk);
        let segment = Segment::readable(buffers.transmit.addr(slot), chunk.len() as u32);
        match port.transmit.add(&[segment]) {
            Ok(token) => buffers.transmit.bind(token, slot),
            Err(error) => {
                buffers.transmit_free.push(slot);
                if matches!(error, QueueError::QueueFull { .. }) {
                    break;
                }
                // What was added so far goes out with the next kick.
                return Err(queue_error(port.transmit.index(), error));
            }
        }
        taken += chunk.len();
        descriptors += 1;
    }
    if descriptors > 0 {
        let notified = device::kick(transport, &mut port.transmit);
        port.stats.bytes_sent += taken as u64;
        port.stats.transmit_buffers_sent += descriptors;
        if log_enabled!(Level::Trace) {
            trace!(
                "console port {id}: {taken} of {} bytes in {descriptors} buffer(s), {}",
                data.len(),
                if notified {
                    "device notified"
                } else {
                    "notification suppressed"
                }
            );
        }
    }
    Ok(taken)
}

/// Returns the transmit buffers the device is done with to the free stack.
pub(super) fn reclaim_transmit<H: Hal>(port: &mut Port<H>) -> Result<(), ConsoleError> {
    let Some(buffers) = port.buffers.as_mut() else {
        return Ok(());
    };
    loop {
        let token = match port.transmit.pop_used() {
            Ok(None) => return Ok(()),
            Ok(Some(used)) => used.token,
            // A device that "wrote" into a read-only buffer: the buffer is
            // finished all the same and can be reused.
            Err(QueueError::UsedLengthTooLong { token, .. }) => {
                port.stats.bad_lengths += 1;
                token
            }
            Err(error) if port.transmit.is_broken() => {
                return Err(queue_error(port.transmit.index(), error))
            }
            Err(_) => continue,
        };
        if let Some(slot) = buffers.transmit.take(token) {
            buffers.transmit_free.push(slot);
        }
    }
}

pub(super) fn live_port_mut<H: Hal>(
    ports: &mut [Port<H>],
    id: u32,
) -> Result<&mut Port<H>, ConsoleError> {
    ports
        .get_mut(id as usize)
        .filter(|p| p.state.present)
        .ok_or(ConsoleError::NoSuchPort(id))
}

pub(super) fn unread_bytes<H: Hal>(port: &Port<H>) -> usize {
    port.buffers
        .as_ref()
        .map_or(0, |b| b.filled.iter().map(|f| f.len - f.read).sum())
}

pub(super) fn port_info<H: Hal>(port: &Port<H>) -> PortInfo<'_> {
    PortInfo {
        id: port.id,
        name: port.state.name.as_deref(),
        console: port.state.console,
        host_open: port.state.host_open,
        guest_open: port.state.guest_open,
        size: port.state.size,
        readable: unread_bytes(port),
        transmit_in_flight: port.transmit.in_flight(),
        stats: port.stats,
    }
}
