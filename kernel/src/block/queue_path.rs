//! # Blocking requests on the calling CPU's own queue (virtio 1.2 §5.2.6)
//!
//! The normal way a read or a write reaches a disk: [`super::read`] (the
//! shell's `blk read`) and [`super::write`] (its `cp` to a disk) take only
//! the lock of the calling CPU's request queue (`drivers::cpu_queues`,
//! `per_queue_lock.rs`), so CPUs on different queues do not wait for each
//! other, and drive that queue through the driver's per-queue path
//! (`drivers::blk::BlkQueue`):
//!
//! 1. What needs the whole disk is handed over to it first (the whole-disk
//!    path, [`super::with_disk`], which takes every lock): a configuration
//!    change the interrupt handler flagged and nobody took yet (the
//!    capacity to read again, or DEVICE_NEEDS_RESET, §2.1.2, §2.5), a
//!    device down after a failure (to recover), a transfer the queue cannot
//!    carry as one request (more segments than the device takes, a full
//!    queue: the whole-disk helpers split it).
//! 2. The data moves through a DMA buffer registered with the queue: one
//!    request, published, then a sleep on the queue's interrupt (whose
//!    MSI-X message goes to this CPU) until its completion.
//! 3. As on the whole-disk path, a request during which the IOMMU blocked
//!    a DMA of the device fails with [`BlockError::DmaBlocked`]
//!    (`iommu::check_request`), whatever status the device wrote.
//! 4. A request that times out, or a queue that breaks, is handed over
//!    too: with every lock held, the device is reset
//!    (`BlkDevice::reset_after_failure`, which aborts the request and gives the
//!    buffer back to the queue), the error returned; the next call finds
//!    the device failed and the whole-disk path recovers it.
//!
//! A blocking call holds its queue for the whole request, so every
//! per-queue completion it meets on the queue is its own.

use drivers::blk::{BlkError, BufferId, Op};
use drivers::cpu_queues;
use drivers::irq::{wait_until_used, QueueSet};
use hal::DmaBuffer;

use super::{find, BlockError, Disk, KernelHal, SECTOR};
use crate::smp;
use crate::wait;

/// Which way the data goes.
pub(super) enum Transfer<'a> {
    /// Sectors into this buffer.
    Read(&'a mut [u8]),
    /// This data to sectors (scratch disks only).
    Write(&'a [u8]),
}

impl Transfer<'_> {
    fn len(&self) -> usize {
        match self {
            Transfer::Read(buffer) => buffer.len(),
            Transfer::Write(data) => data.len(),
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Transfer::Read(_) => "read",
            Transfer::Write(_) => "write",
        }
    }
}

/// How a per-queue call ended.
enum QueueOutcome {
    /// Done, well or not.
    Done(Result<(), BlockError>),
    /// Not started: the whole-disk path must do it (see the module docs).
    WholeDisk,
    /// Started and given up: the device must be reset (every lock held).
    GaveUp(Abandoned),
}

/// A request the per-queue path gave up on.
struct Abandoned {
    queue: u16,
    buffer: BufferId,
    error: BlkError,
}

/// Runs `transfer` at `sector` on disk `name` through the calling CPU's
/// queue, or the whole-disk path where the module docs say so.
pub(super) fn transfer(
    name: &str,
    sector: u64,
    mut transfer: Transfer<'_>,
) -> Result<(), BlockError> {
    let lock = find(name)?;
    let queues = u16::try_from(lock.queue_count()).unwrap_or(u16::MAX);
    let queue = cpu_queues::queue_for_cpu(smp::current_cpu(), smp::online_cpus(), queues);
    let outcome =
        lock.lock_queue(usize::from(queue))
            .transfer_on_queue(queue, sector, &mut transfer);
    match outcome {
        QueueOutcome::Done(result) => result,
        QueueOutcome::WholeDisk => {
            let mut disk = lock.lock_all();
            disk.handovers += 1;
            match transfer {
                Transfer::Read(buffer) => disk.read(sector, buffer),
                Transfer::Write(data) => disk.write(sector, data),
            }
        }
        QueueOutcome::GaveUp(abandoned) => {
            let sectors = (transfer.len() / SECTOR) as u64;
            Err(lock
                .lock_all()
                .abandon(abandoned, transfer.what(), sector, sectors))
        }
    }
}

impl Disk {
    /// `true` if the per-queue path must leave this call to the
    /// whole-disk path before starting it (see the module docs).
    fn needs_whole_disk(&self) -> bool {
        // A polled disk's configuration changes are read from its status
        // register by the whole-disk path's listings (`check_config`), as
        // before; an interrupt-driven one's handler set this flag.
        let config_changed = self
            .irq
            .is_some_and(|irq| irq.state().config_change_pending());
        config_changed || self.device.is_failed()
    }

    /// One request on queue `queue`, whose disk lock the caller holds.
    fn transfer_on_queue(
        &self,
        queue: u16,
        sector: u64,
        transfer: &mut Transfer<'_>,
    ) -> QueueOutcome {
        if self.needs_whole_disk() {
            return QueueOutcome::WholeDisk;
        }
        if matches!(transfer, Transfer::Write(_)) {
            if let Err(e) = self.ensure_writable() {
                return QueueOutcome::Done(Err(e));
            }
        }
        let what = transfer.what();
        let sectors = (transfer.len() / SECTOR) as u64;
        let Ok(mut q) = self.device.lock_queue(queue) else {
            return QueueOutcome::WholeDisk;
        };
        let Ok(dma) = DmaBuffer::<KernelHal>::new(q.dma_owner(), transfer.len()) else {
            return QueueOutcome::WholeDisk;
        };
        let Ok(id) = q.register_buffer(dma) else {
            return QueueOutcome::WholeDisk;
        };
        let ids = [id];
        let op = match transfer {
            Transfer::Read(_) => Op::Read {
                sector,
                buffers: &ids,
            },
            Transfer::Write(data) => {
                if let Some(bytes) = q.buffer_mut(id) {
                    bytes.copy_from_slice(data);
                }
                Op::Write {
                    sector,
                    buffers: &ids,
                }
            }
        };
        let faults = crate::iommu::faults_of(self.location);
        let token = match q.submit(op) {
            Ok(token) => token,
            Err(error) => {
                drop(q.unregister_buffer(id));
                return match error {
                    BlkError::QueueFull
                    | BlkError::TooManySegments { .. }
                    | BlkError::DeviceFailed => QueueOutcome::WholeDisk,
                    other => QueueOutcome::Done(Err(self.report(what, sector, sectors, other))),
                };
            }
        };
        q.publish();
        let mut wait = wait::for_device(self.irq, QueueSet::single(queue), self.call_timeout_ns)
            .with_mode(self.wait_mode);
        let give_up = |error| {
            QueueOutcome::GaveUp(Abandoned {
                queue,
                buffer: id,
                error,
            })
        };
        let result = loop {
            match q.poll() {
                Ok(Some(done)) if done.token == token => break done.result,
                // Not ours: left by a holder of the queue that gave up on it.
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(error) => return give_up(error),
            }
            let waited = wait_until_used(
                &mut wait,
                &mut q,
                |q| q.enable_interrupts(),
                |q| q.disable_interrupts(),
            );
            if let Err(timeout) = waited {
                return give_up(BlkError::Timeout {
                    waits: timeout.waits,
                });
            }
        };
        let mut result = result.map_err(BlkError::from);
        if let (Ok(()), Transfer::Read(buffer)) = (result, &mut *transfer) {
            match q.buffer(id) {
                Some(bytes) => buffer.copy_from_slice(bytes),
                None => result = Err(BlkError::BufferUnavailable(id)),
            }
        }
        drop(q.unregister_buffer(id));
        drop(q);
        let result = result.map_err(|e| self.report(what, sector, sectors, e));
        QueueOutcome::Done(self.dma_checked(what, faults, result))
    }

    /// Resets the device after the per-queue path gave up on a request
    /// (every lock held), takes its buffer back, and returns the error.
    fn abandon(
        &mut self,
        abandoned: Abandoned,
        what: &str,
        sector: u64,
        sectors: u64,
    ) -> BlockError {
        let why = match abandoned.error {
            BlkError::Timeout { .. } => "a request on the per-queue path timed out",
            _ => "a request queue broke on the per-queue path",
        };
        self.device.reset_after_failure(why);
        if let Ok(mut q) = self.device.lock_queue(abandoned.queue) {
            // The reset aborted the request into the queue's own list.
            while let Ok(Some(_aborted)) = q.poll() {}
            drop(q.unregister_buffer(abandoned.buffer));
        }
        self.report(what, sector, sectors, abandoned.error)
    }
}
