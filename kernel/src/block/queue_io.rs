//! # I/O on one request queue, from the CPU that owns it
//!
//! What the self-tests and the `scale` benchmark do on each CPU: hold the
//! disk by one queue lock ([`super::with_disk_queue`], `per_queue_lock.rs`), lock
//! that request queue in the driver (`drivers::blk::BlkQueue`, virtio 1.2
//! §5.2.6), keep requests in flight on it with buffers registered with
//! the queue, and sleep on that queue's interrupt (its MSI-X message goes
//! to this CPU, `drivers::cpu_queues`). Nothing here takes a lock another
//! queue's CPU takes.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use drivers::blk::{BlkQueue, BufferId};
#[cfg(feature = "selftest")]
use drivers::blk::{Completion, Op};
use drivers::irq::{wait_until_used, QueueSet, WaitMode};
use hal::DmaBuffer;

use super::Disk;
use crate::hal_impl::KernelHal;
use crate::virtio::KernelTransport;
use crate::wait::{self, KernelWait};

/// One request queue of a disk, locked by the calling CPU.
pub(crate) type Queue<'d> = BlkQueue<'d, KernelHal, KernelTransport>;

/// A wait for queue `queue`'s interrupt (or polling where the disk has no
/// interrupt route) that gives up after `timeout_ns`.
pub(crate) fn queue_wait(disk: &Disk, queue: u16, timeout_ns: u64) -> KernelWait {
    wait::for_device(disk.irq, QueueSet::single(queue), timeout_ns).with_mode(WaitMode::Interrupt)
}

/// Registers `count` DMA buffers of `bytes` each with the queue.
pub(crate) fn register(
    q: &mut Queue<'_>,
    count: usize,
    bytes: usize,
) -> Result<Vec<BufferId>, String> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let buffer = DmaBuffer::<KernelHal>::new(q.dma_owner(), bytes)
            .map_err(|e| format!("buffer: {e}"))?;
        match q.register_buffer(buffer) {
            Ok(id) => ids.push(id),
            Err(_) => {
                unregister(q, &ids);
                return Err("buffer table full".into());
            }
        }
    }
    Ok(ids)
}

/// Gives the queue's buffers `ids` back (those a request still holds stay
/// registered until a reset hands them back).
pub(crate) fn unregister(q: &mut Queue<'_>, ids: &[BufferId]) {
    for &id in ids {
        drop(q.unregister_buffer(id));
    }
}

/// Sleeps until the queue has used entries (its interrupt, armed here and
/// disarmed after), or finds on arming that it has some already.
pub(crate) fn next_completion_wait(q: &mut Queue<'_>, wait: &mut KernelWait) -> Result<(), String> {
    wait_until_used(
        wait,
        q,
        |q| q.enable_interrupts(),
        |q| q.disable_interrupts(),
    )
    .map(|_| ())
    .map_err(|t| format!("queue {}: the wait gave up ({t})", q.index()))
}

/// Collects the next completion of this queue, sleeping on its interrupt
/// while there is none.
#[cfg(feature = "selftest")]
pub(crate) fn next_completion(
    q: &mut Queue<'_>,
    wait: &mut KernelWait,
) -> Result<Completion, String> {
    loop {
        match q.poll() {
            Ok(Some(done)) => return Ok(done),
            Ok(None) => {}
            Err(e) => return Err(format!("queue {}: {e}", q.index())),
        }
        next_completion_wait(q, wait)?;
    }
}

/// Submits `op` on the queue, publishes it, and waits for its completion;
/// `Err` if it failed.
#[cfg(feature = "selftest")]
pub(crate) fn run_one(q: &mut Queue<'_>, op: Op<'_>, wait: &mut KernelWait) -> Result<(), String> {
    let index = q.index();
    let token = q
        .submit(op)
        .map_err(|e| format!("queue {index}: submit: {e}"))?;
    q.publish();
    loop {
        let done = next_completion(q, wait)?;
        if done.token == token {
            return done
                .result
                .map_err(|e| format!("queue {index}: {} at {}: {e}", done.request, done.sector));
        }
    }
}
