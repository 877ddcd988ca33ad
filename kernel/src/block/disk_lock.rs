//! # A disk's locks: one per request queue
//!
//! A multiqueue disk (virtio 1.2 §5.2.3, VIRTIO_BLK_F_MQ) is used by every
//! CPU at once, each on its own request queue (`drivers::cpu_queues`). If
//! the disk sat behind one lock, the CPUs would take turns however many
//! queues it has. [`DiskLock`] gives the disk one lock per request queue
//! instead (the "big reader" pattern):
//!
//! - [`DiskLock::lock_queue`]`(q)` takes lock `q` only and hands out a
//!   shared `&T`: the per-queue path (`drivers::blk::BlkQueue`, which locks
//!   queue `q`'s ring inside the driver) runs on it. Two CPUs on different
//!   queues take different locks, each on its own cache line, and never
//!   wait for each other.
//! - [`DiskLock::lock_all`] takes every lock, in queue order, and hands out
//!   `&mut T`: what changes the disk as a whole (bring-up, a configuration
//!   change, reset and recovery, the blocking helpers, which reset the
//!   device when they give up, buffer registration with the device's
//!   table, the shell's listings). It waits for every CPU to leave its queue.
//!
//! What each lock protects: lock `q` protects the right to use the disk
//! through `&T` while on queue `q` (so `lock_all` can know nobody does);
//! the data of queue `q` itself (ring, slots, counters, that queue's
//! buffers) is behind the driver's own lock for the queue. Both are per
//! queue: no lock is shared between queues on the request path.
//!
//! Rules: never call [`DiskLock::lock_all`] (or anything that does) while
//! holding a queue lock of the same disk: it would wait for itself. The
//! locks are spin locks taken with interrupts enabled; no interrupt handler
//! takes them.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

use spin::{Mutex, MutexGuard};

/// One lock on a cache line of its own, so CPUs spinning on or taking
/// different queues' locks do not bounce one line between them.
#[repr(align(64))]
struct QueueLock(Mutex<()>);

/// A value (a disk) with one lock per request queue: see the module docs.
pub struct DiskLock<T> {
    locks: Box<[QueueLock]>,
    value: UnsafeCell<T>,
}

// SAFETY: the value moves with the lock; sending it to another CPU is sound
// when the value itself may be sent.
unsafe impl<T: Send> Send for DiskLock<T> {}
// SAFETY: `&T` is handed to several CPUs at once (one per queue lock), which
// `T: Sync` makes sound; `&mut T` only to the holder of every lock, when no
// `&T` exists (each `&T` lives inside a guard that holds one of the locks).
unsafe impl<T: Send + Sync> Sync for DiskLock<T> {}

impl<T> DiskLock<T> {
    /// Wraps `value` with `queues` locks (at least one).
    pub fn new(value: T, queues: usize) -> Self {
        Self {
            locks: (0..queues.max(1))
                .map(|_| QueueLock(Mutex::new(())))
                .collect(),
            value: UnsafeCell::new(value),
        }
    }

    /// How many queue locks there are.
    pub fn queue_count(&self) -> usize {
        self.locks.len()
    }

    /// Takes the lock of queue `queue` (modulo the count) and gives shared
    /// access to the value.
    pub fn lock_queue(&self, queue: usize) -> QueueGuard<'_, T> {
        let lock = self.locks[queue % self.locks.len()].0.lock();
        QueueGuard {
            _lock: lock,
            // SAFETY: a `&mut T` exists only inside an `AllGuard`, which
            // holds this lock too, and we hold it now.
            value: unsafe { &*self.value.get() },
        }
    }

    /// Takes every lock, in order, and gives exclusive access.
    pub fn lock_all(&self) -> AllGuard<'_, T> {
        let locks = self.locks.iter().map(|l| l.0.lock()).collect();
        AllGuard {
            _locks: locks,
            // SAFETY: we hold every lock, so no `QueueGuard` (the only other
            // holder of a reference) and no other `AllGuard` exists.
            value: unsafe { &mut *self.value.get() },
        }
    }

    /// Like [`DiskLock::lock_all`], but `None` at once if any lock is taken
    /// (what it took so far is released).
    pub fn try_lock_all(&self) -> Option<AllGuard<'_, T>> {
        let mut locks = Vec::with_capacity(self.locks.len());
        for lock in self.locks.iter() {
            locks.push(lock.0.try_lock()?);
        }
        Some(AllGuard {
            _locks: locks,
            // SAFETY: as in `lock_all`: every lock is held.
            value: unsafe { &mut *self.value.get() },
        })
    }
}

/// Shared access on one queue's lock ([`DiskLock::lock_queue`]).
pub struct QueueGuard<'a, T> {
    _lock: MutexGuard<'a, ()>,
    value: &'a T,
}

impl<T> Deref for QueueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value
    }
}

/// Exclusive access with every lock held ([`DiskLock::lock_all`]).
pub struct AllGuard<'a, T> {
    _locks: Vec<MutexGuard<'a, ()>>,
    value: &'a mut T,
}

impl<T> Deref for AllGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value
    }
}

impl<T> DerefMut for AllGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.value
    }
}
