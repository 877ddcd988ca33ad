//! The console workload on the peer stack (`mode=bench bench=console`):
//! the same device, port, byte stream, chunk size and clock as the console
//! section of [`crate::bench`], driven through
//! `virtio_drivers::device::console` (virtio 1.2 §5.3.6: the transmit
//! queue of port 0).
//!
//! Each round writes with our driver first, then [`round`]: our driver
//! resets the device (§3.1.1 step 1), the peer brings it up
//! ([`super::pci::take_over`]) and writes the next part of the stream,
//! dropping the peer resets the device, and our driver brings it up again
//! (`ConsoleDevice::recover`, with the multiport handshake), so the next
//! round of ours runs on a device that went through the peer.
//!
//! ## Port 0 without MULTIPORT
//!
//! `VirtIOConsole` does not negotiate VIRTIO_CONSOLE_F_MULTIPORT: it knows
//! port 0's two queues only (§5.3.2) and never sees the control queues.
//! That works with QEMU's `virtio-serial-pci` + `virtconsole`: the first
//! `virtconsole` is port 0, and for a driver that did not negotiate
//! MULTIPORT QEMU marks port 0 open on the guest side as soon as the
//! driver sets DRIVER_OK (§5.3.6: without MULTIPORT the one port is always
//! there), so the bytes reach the same `-chardev` as ours do. `x.py bench`
//! checks that they all arrived, in order.
//!
//! ## How the peer is driven
//!
//! `VirtIOConsole` has one transmit call, `send_bytes`: it adds the whole
//! buffer as one descriptor, notifies (as VIRTIO_F_EVENT_IDX says) and
//! spins until the device has used it, one buffer in flight at a time (its
//! queues have 2 entries). So the peer writes the stream in the chunks
//! ours is given (16 KiB), each one sent and completed before the next is
//! built. Ours copies each chunk into its transmit buffers and keeps
//! several in flight. The peer's spin has no deadline: a device that never
//! completes a buffer would stop the boot there, and `x.py`'s QEMU timeout
//! is what ends it. The chunk comes from a DMA buffer (physically
//! contiguous), so the peer shares it with the device without a copy.
//!
//! ## Output
//!
//! ```text
//! bench: console.peer.setup stack=peer bringup_us=... size=none multiport=no chunk_bytes=16384
//! bench: console.write.peer stack=peer bytes=1048576 elapsed_us=... mb_per_s=... notifications_per_chunk=... chunk_bytes=16384
//! ```

use alloc::format;
use alloc::string::String;

use drivers::transport::Transport;
use virtio_drivers::device::console::VirtIOConsole;
use virtio_drivers::transport::pci::PciTransport;

use super::counted::Counted;
use super::hal::PeerHal;
use super::pci::{take_over, PeerError};
use crate::bench::{console_pattern, ConsoleStream, MegabytesPerSecond, CONSOLE_CHUNK_BYTES};
use crate::block::IoBuffer;
use crate::println;
use crate::shell::console::Console;

/// The peer's console driver on our machine, with its notifications counted.
type PeerConsole = VirtIOConsole<PeerHal, Counted<PciTransport>>;

/// Port 0's transmit queue (§5.3.2).
const TRANSMIT_QUEUE: u16 = 1;

/// Lends the console to the peer for `per_run` bytes of the stream, then
/// gives it back to our driver. Returns the bytes the peer wrote.
pub fn round(
    console: &mut Console,
    per_run: usize,
    stream: &mut ConsoleStream,
    print_setup: bool,
) -> Result<usize, String> {
    let location = console.location;
    console
        .device
        .transport_mut()
        .reset()
        .map_err(|e| format!("resetting {location} for the peer: {e}"))?;
    let outcome = on_peer(console, per_run, stream, print_setup);
    // The peer is gone (its transport reset the device): our driver sets
    // everything up again; its port reappears through the handshake, which
    // the next run of ours waits for.
    console
        .device
        .recover()
        .map_err(|e| format!("{location}: taking the console back from the peer: {e}"))?;
    outcome
}

fn on_peer(
    console: &Console,
    per_run: usize,
    stream: &mut ConsoleStream,
    print_setup: bool,
) -> Result<usize, String> {
    let location = console.location;
    let started = crate::clock::tsc();
    let (transport, notifications) = Counted::new(
        take_over(location).map_err(|e| format!("handing {location} to virtio-drivers: {e}"))?,
    );
    let mut peer =
        PeerConsole::new(transport).map_err(|e| format!("{location}: {}", PeerError::Device(e)))?;
    let bringup_us = crate::clock::ticks_to_ns(crate::clock::tsc() - started) / 1000;
    if print_setup {
        let size = match peer.size() {
            Ok(Some(size)) => format!("{size}"),
            Ok(None) => "none".into(),
            Err(e) => format!("error:{e}"),
        };
        println!(
            "bench: console.peer.setup stack=peer bringup_us={bringup_us} size={size} multiport=no chunk_bytes={CONSOLE_CHUNK_BYTES}"
        );
    }
    let mut chunk = IoBuffer::new(CONSOLE_CHUNK_BYTES)?;
    let before = notifications.of(TRANSMIT_QUEUE);
    let started = crate::clock::uptime_ns();
    let mut written = 0usize;
    let mut chunks = 0u64;
    while written < per_run {
        let length = CONSOLE_CHUNK_BYTES.min(per_run - written);
        let bytes = &mut chunk.as_mut_slice()[..length];
        console_pattern(bytes, stream.position);
        // Returns once the device has used the buffer: nothing is left in
        // flight afterwards, so the chunk may be refilled.
        peer.send_bytes(bytes)
            .map_err(|e| format!("send_bytes at byte {}: {e}", stream.position))?;
        stream.advance(bytes);
        written += length;
        chunks += 1;
    }
    let elapsed_ns = (crate::clock::uptime_ns() - started).max(1);
    let notified = notifications.of(TRANSMIT_QUEUE) - before;
    println!(
        "bench: console.write.peer stack=peer bytes={written} elapsed_us={} mb_per_s={} notifications_per_chunk={:.3} chunks={chunks} chunk_bytes={CONSOLE_CHUNK_BYTES}",
        elapsed_ns / 1000,
        MegabytesPerSecond::new(written, elapsed_ns),
        notified as f64 / chunks.max(1) as f64,
    );
    // The peer's drop resets the device before its queues are freed; the
    // chunk (in no queue any more) goes after it.
    drop(peer);
    drop(chunk);
    Ok(written)
}
