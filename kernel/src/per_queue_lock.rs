//! # One lock per queue: a value many CPUs use at once, each on its own queue
//!
//! A multiqueue disk (virtio 1.2 §5.2.3, VIRTIO_BLK_F_MQ) is used by every
//! CPU at once, each on its own request queue (`drivers::cpu_queues`). If
//! the disk sat behind one lock, the CPUs would take turns however many
//! queues it has. [`PerQueueLock`] gives the disk one lock per request queue
//! instead (the "big reader" pattern). The network cards use it too, with
//! one lock per CPU (`net/nic.rs`, each CPU sending on its own queue pair):
//!
//! - [`PerQueueLock::lock_queue`]`(q)` takes lock `q` only and hands out a
//!   shared `&T`: the per-queue path (`drivers::blk::BlkQueue`, which locks
//!   queue `q`'s ring inside the driver) runs on it. Two CPUs on different
//!   queues take different locks, each on its own cache line, and never
//!   wait for each other.
//! - [`PerQueueLock::lock_all`] takes every lock, in queue order, and hands out
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
//! Rules: never call [`PerQueueLock::lock_all`] (or anything that does) while
//! holding a queue lock of the same disk: it would wait for itself. The
//! locks are spin locks taken with interrupts enabled; no interrupt handler
//! takes them.

use alloc::boxed::Box;
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

use spin::{Mutex, MutexGuard};

/// One lock on a cache line of its own, so CPUs spinning on or taking
/// different queues' locks do not bounce one line between them.
#[repr(align(64))]
struct QueueLock(Mutex<()>);

/// A value (a disk) with one lock per request queue: see the module docs.
pub struct PerQueueLock<T> {
    locks: Box<[QueueLock]>,
    value: UnsafeCell<T>,
}

// SAFETY: the value moves with the lock; sending it to another CPU is sound
// when the value itself may be sent.
unsafe impl<T: Send> Send for PerQueueLock<T> {}
// SAFETY: `&T` is handed to several CPUs at once (one per queue lock), which
// `T: Sync` makes sound; `&mut T` only to the holder of every lock, when no
// `&T` exists (each `&T` lives inside a guard that holds one of the locks).
unsafe impl<T: Send + Sync> Sync for PerQueueLock<T> {}

impl<T> PerQueueLock<T> {
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
        for lock in self.locks.iter() {
            // Held until the `AllGuard` drops (it unlocks every lock): no
            // allocation to keep the guards in, on a path the network loop
            // runs every round.
            core::mem::forget(lock.0.lock());
        }
        AllGuard {
            locks: &self.locks,
            // SAFETY: we hold every lock, so no `QueueGuard` (the only other
            // holder of a reference) and no other `AllGuard` exists.
            value: unsafe { &mut *self.value.get() },
        }
    }

    /// Like [`PerQueueLock::lock_all`], but `None` at once if any lock is taken
    /// (what it took so far is released).
    pub fn try_lock_all(&self) -> Option<AllGuard<'_, T>> {
        for (taken, lock) in self.locks.iter().enumerate() {
            match lock.0.try_lock() {
                Some(guard) => core::mem::forget(guard),
                None => {
                    release(&self.locks[..taken]);
                    return None;
                }
            }
        }
        Some(AllGuard {
            locks: &self.locks,
            // SAFETY: as in `lock_all`: every lock is held.
            value: unsafe { &mut *self.value.get() },
        })
    }
}

/// Unlocks `locks`, each taken by this context with its guard forgotten.
fn release(locks: &[QueueLock]) {
    for lock in locks.iter().rev() {
        // SAFETY: `lock_all`/`try_lock_all` took this lock and forgot its
        // guard; the caller (an `AllGuard` dropping, or `try_lock_all`
        // backing out) is its only holder and releases it once.
        unsafe { lock.0.force_unlock() };
    }
}

/// Shared access on one queue's lock ([`PerQueueLock::lock_queue`]).
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

/// Exclusive access with every lock held ([`PerQueueLock::lock_all`]).
pub struct AllGuard<'a, T> {
    /// Every lock, held (their guards forgotten); released on drop.
    locks: &'a [QueueLock],
    value: &'a mut T,
}

impl<T> Drop for AllGuard<'_, T> {
    fn drop(&mut self) {
        release(self.locks);
    }
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
