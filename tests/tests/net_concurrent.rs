//! The network driver's per-pair path under concurrency (virtio 1.2
//! §5.1.6.2 on several transmit queues at once, §2.7.13 publishing and
//! notifying from several threads).
//!
//! One [`NetDevice`] with four queue pairs is shared by reference between
//! four driver threads, each sending only on its own pair's transmit queue
//! through [`NetDevice::lock_tx`] (`drivers/src/net/per_pair.rs`): reserve,
//! fill, publish, reclaim, all on that queue's lock alone. The device model
//! (`tests::net_model`, rust-vmm's `virtio-queue` underneath) runs on the
//! test's main thread over the same rings at the same time, so adding,
//! publishing and the device's reading and completing of different queues
//! really overlap on shared memory.
//!
//! The model's registers live on the thread that mapped them (the host
//! Hal's MMIO windows are per thread), so the transport is wrapped: a
//! notification from a driver thread is recorded in a mutex-protected
//! list (the "doorbell"), and the device thread rings the real register for
//! it before it looks at the queues. A driver thread that touched any other
//! register would panic: the per-pair path touches only its queue's memory
//! and the doorbell.
//!
//! Checked afterwards: every frame of every thread arrived, on its own
//! pair's transmit queue, in order, byte for byte; the per-pair counters;
//! no publish left without its notification once the senders are done, and
//! no ring rule broken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use drivers::net::{tx_queue_of, NetDevice, NetError, NetOptions};
use drivers::transport::{Transport, TransportWrapper};
use tests::host_hal::HostHal;
use tests::models::trace_logging;
use tests::net_model::{bits, net_config_mq, NetModel, StepModel, QEMU_MODERN_FEATURES};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const PAIRS: u16 = 4;
/// Frames each thread sends.
const FRAMES: u32 = 600;
/// Frames per publish.
const BATCH: u32 = 7;
/// How long a thread may find its queue full before it calls the driver
/// stuck (a lost notification hangs, it does not fail).
const STUCK: Duration = Duration::from_secs(20);

/// A transport whose notifications are queued for the device thread
/// while `queued` is set (the concurrent phase), and rung at once
/// otherwise (bring-up and VQ_PAIRS_SET, on the main thread).
struct Doorbell<T> {
    inner: T,
    queued: AtomicBool,
    rung: Mutex<Vec<u16>>,
}

impl<T: Transport> TransportWrapper for Doorbell<T> {
    type Inner = T;
    fn inner(&self) -> &T {
        &self.inner
    }
    fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }
    fn forward_notify(&self, queue: u16) {
        if self.queued.load(Ordering::Acquire) {
            self.rung.lock().unwrap().push(queue);
        } else {
            self.inner.notify(queue);
        }
    }
}

impl<T: Transport> Doorbell<T> {
    /// Rings, on this (the device's) thread, every notification recorded.
    fn deliver(&self) -> usize {
        let rung: Vec<u16> = std::mem::take(&mut *self.rung.lock().unwrap());
        for &queue in &rung {
            self.inner.notify(queue);
        }
        rung.len()
    }
}

/// The frame thread `pair` sends as its `n`th: a 64-byte frame naming both.
fn frame(pair: u16, n: u32) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0x5e, 0, 0, 0x64];
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(&pair.to_be_bytes());
    f.extend_from_slice(&n.to_be_bytes());
    while f.len() < 64 {
        f.push((f.len() as u32 * 7 + n * 3 + u32::from(pair) * 11) as u8);
    }
    f
}

/// One driver thread: sends [`FRAMES`] frames on pair `pair` through the
/// per-pair path. Returns the notifications it sent.
fn sender<T: Transport>(net: &NetDevice<HostHal, T>, pair: u16) -> u64 {
    let mut notified = 0;
    let mut n = 0;
    let mut stuck_since: Option<Instant> = None;
    while n < FRAMES {
        let mut tx = net.lock_tx(pair).expect("the pair exists");
        assert_eq!(tx.queue_index(), tx_queue_of(pair));
        let mut added = 0;
        while added < BATCH && n < FRAMES {
            let expected = frame(pair, n);
            match tx.send_with(expected.len(), |buffer| buffer.copy_from_slice(&expected)) {
                Ok(()) => {
                    n += 1;
                    added += 1;
                }
                Err(NetError::TxQueueFull) => break,
                Err(e) => panic!("pair {pair}: send: {e}"),
            }
        }
        notified += u64::from(tx.publish());
        drop(tx);
        if added == 0 {
            let since = *stuck_since.get_or_insert_with(Instant::now);
            assert!(
                since.elapsed() < STUCK,
                "pair {pair}: queue full for good after {n} frames"
            );
            thread::yield_now();
        } else {
            stuck_since = None;
        }
    }
    notified
}

#[test]
fn threads_send_on_their_own_pairs_at_once() {
    trace_logging();
    let mut model = NetModel::with_queue_pairs(
        QEMU_MODERN_FEATURES | bits::MQ,
        net_config_mq(MAC, 1, 0, PAIRS),
        32,
        PAIRS,
    );
    let options = NetOptions {
        max_queue_pairs: PAIRS,
        rx_queue_size: 16,
        tx_queue_size: 32,
        ..NetOptions::default()
    };
    let transport = Doorbell {
        inner: model.mmio(2),
        queued: AtomicBool::new(false),
        rung: Mutex::new(Vec::new()),
    };
    let mut net = NetDevice::<HostHal, _>::with_options(transport, options).expect("bring-up");
    model.attach_queues();
    let active = net.start_multiqueue(&mut StepModel::new(&mut model));
    assert_eq!(active, Ok(PAIRS), "VQ_PAIRS_SET acknowledged");
    net.transport().queued.store(true, Ordering::Release);
    let bell = |net: &NetDevice<HostHal, Doorbell<_>>| net.transport().deliver();
    let before: Vec<_> = (0..PAIRS).map(|p| net.pair_stats(p).unwrap()).collect();
    let net = &net;
    let done = AtomicBool::new(false);
    let notified: Vec<u64> = thread::scope(|s| {
        let workers: Vec<_> = (0..PAIRS)
            .map(|pair| s.spawn(move || sender(net, pair)))
            .collect();
        // The device, on this thread, while the senders run.
        let started = Instant::now();
        while !workers.iter().all(|w| w.is_finished()) {
            bell(net);
            model.process_tx();
            assert!(started.elapsed() < STUCK * 2, "the senders never finished");
            thread::yield_now();
        }
        done.store(true, Ordering::Release);
        workers
            .into_iter()
            .map(|w| w.join().expect("a sender thread failed"))
            .collect()
    });
    // While the senders ran, the device could see a publish before the
    // doorbell delivered its notification (the queued doorbell widens that
    // window; it is not a miss). Now, with every sender done and every
    // notification delivered, a queue left with frames and never notified
    // would be counted here, and its frames missing below.
    let missed_while_running = model.missed_notifications;
    bell(net);
    model.process_tx();
    assert!(done.load(Ordering::Acquire));
    for pair in 0..PAIRS {
        let queue = tx_queue_of(pair);
        let got: Vec<&Vec<u8>> = model
            .sent
            .iter()
            .filter(|f| f.queue == queue)
            .map(|f| &f.frame)
            .collect();
        assert_eq!(
            got.len(),
            FRAMES as usize,
            "pair {pair}: frames the device read"
        );
        for (n, f) in got.iter().enumerate() {
            assert_eq!(
                **f,
                frame(pair, n as u32),
                "pair {pair}: frame {n} wrong or out of order"
            );
        }
        let stats = net.pair_stats(pair).unwrap();
        assert_eq!(
            stats.tx.packets - before[usize::from(pair)].tx.packets,
            u64::from(FRAMES),
            "pair {pair}: counted on its own queue"
        );
        assert_eq!(
            stats.tx_ring.notifications - before[usize::from(pair)].tx_ring.notifications,
            notified[usize::from(pair)],
            "pair {pair}: notifications counted where they were sent"
        );
    }
    assert_eq!(
        model.sent.len(),
        (FRAMES * u32::from(PAIRS)) as usize,
        "nothing else sent"
    );
    model.process_tx();
    assert_eq!(
        model.missed_notifications, missed_while_running,
        "a publish the device was never told about"
    );
    assert_eq!(model.dropped_inactive_tx, 0);
    let core = model.core.borrow();
    assert!(
        core.violations.is_empty(),
        "driver broke rules: {:?}",
        core.violations
    );
}
