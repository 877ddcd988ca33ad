//! The block driver's per-queue path under concurrency (virtio 1.2 §5.2.3,
//! §5.2.6, §2.7.13 and §2.7.14 on several queues at once).
//!
//! One [`BlkDevice`] with four request queues is shared by reference between
//! four driver threads, each submitting and completing only on its own queue
//! through [`BlkDevice::lock_queue`] (`drivers/src/blk/per_queue.rs`), while
//! a device thread runs the blk model (`tests::blk_model`, its queues served
//! by rust-vmm's `virtio-queue`) over the same rings: submissions,
//! publishes, notifications and completions of different queues really
//! overlap, on shared memory, as on a machine with a CPU per queue. Each
//! thread writes blocks of its own region, reads them back into other
//! buffers, and checks every byte; afterwards the per-queue counters, the
//! model's record of which queue carried what, and the disk itself are
//! checked.
//!
//! The model is one device behind one mutex (its side, not the driver's):
//! the driver threads share nothing but `&BlkDevice`, and take no lock
//! another queue's thread takes.
//!
//! A second test drives one queue through both APIs in turn (the device's
//! `&mut` one and the per-queue one): each request's completion reaches the
//! API that submitted it, whichever collected it from the ring, and a reset
//! aborts each into its own list and hands every buffer back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use drivers::blk::{feature, BlkDevice, BlkOptions, BufferId, Op, Request, RequestError};
use drivers::transport::{Transport, TransportKind};
use hal::DmaBuffer;
use tests::blk_model::{
    pattern_byte, BlkModel, BlkModelConfig, ModelTransport, SharedBlkModel, SyncBlkModel,
};
use tests::host_hal::HostHal;
use tests::log_capture::install_logger;

type Blk = BlkDevice<HostHal, ModelTransport<SyncBlkModel>>;

const QUEUES: u16 = 4;
/// Bytes per request.
const BLOCK: usize = 4096;
/// Requests in flight per thread.
const DEPTH: usize = 8;
/// Rounds of DEPTH writes and DEPTH reads per thread.
const ROUNDS: usize = 40;
/// Blocks in each thread's region of the disk.
const REGION_BLOCKS: u64 = 64;
/// Sectors per block.
const BLOCK_SECTORS: u64 = (BLOCK / 512) as u64;
/// How long a thread waits for its requests before it calls the driver
/// stuck (a lost notification or completion hangs, it does not fail).
const STUCK: Duration = Duration::from_secs(20);

/// The byte a thread writes at offset `i` of block `block` in round `round`.
fn written(queue: u16, round: usize, block: u64, i: usize) -> u8 {
    (usize::from(queue) * 31 + round * 7 + block as usize * 13 + i) as u8 ^ 0xa7
}

fn device() -> (Blk, SyncBlkModel) {
    install_logger();
    let defaults = BlkModelConfig::default();
    let config = BlkModelConfig {
        features: defaults.features | feature::MQ,
        num_queues: QUEUES,
        capacity_sectors: u64::from(QUEUES) * REGION_BLOCKS * BLOCK_SECTORS,
        queue_max: 64,
        ..defaults
    };
    let model: SyncBlkModel = Arc::new(Mutex::new(BlkModel::new(config)));
    let options = BlkOptions {
        max_queues: QUEUES,
        ..BlkOptions::default()
    };
    let blk = Blk::with_options(
        ModelTransport::new(model.clone(), TransportKind::PciModern),
        options,
    )
    .expect("the device comes up");
    (blk, model)
}

/// Submits `ops` on `queue` under one publish, then polls (taking the
/// queue's lock per poll) until all of them completed successfully.
fn run_batch(blk: &Blk, queue: u16, ops: &[Op<'_>]) {
    {
        let mut q = blk.lock_queue(queue).unwrap();
        for op in ops {
            q.submit(*op)
                .unwrap_or_else(|e| panic!("queue {queue}: submit: {e}"));
        }
        q.publish();
    }
    let mut left = ops.len();
    let started = Instant::now();
    while left > 0 {
        let done = blk.lock_queue(queue).unwrap().poll();
        match done {
            Ok(Some(c)) => {
                assert_eq!(c.token.queue(), queue, "a completion of another queue");
                c.result.unwrap_or_else(|e| {
                    panic!("queue {queue}: {} at {}: {e}", c.request, c.sector)
                });
                left -= 1;
            }
            Ok(None) => {
                assert!(
                    started.elapsed() < STUCK,
                    "queue {queue}: {left} request(s) never completed"
                );
                thread::yield_now();
            }
            Err(e) => panic!("queue {queue}: poll: {e}"),
        }
    }
}

/// A one-buffer read at `sector`.
fn read(sector: u64, id: &BufferId) -> Op<'_> {
    Op::Read {
        sector,
        buffers: std::slice::from_ref(id),
    }
}

/// One driver thread: see the module docs. Returns the requests it made.
fn worker(blk: &Blk, queue: u16) -> u64 {
    let (data, back): (Vec<BufferId>, Vec<BufferId>) = {
        let mut q = blk.lock_queue(queue).unwrap();
        let owner = q.dma_owner();
        let mut register = || {
            q.register_buffer(DmaBuffer::<HostHal>::new(owner, BLOCK).unwrap())
                .unwrap_or_else(|_| panic!("buffer table full"))
        };
        let data = (0..DEPTH).map(|_| register()).collect();
        let back = (0..DEPTH).map(|_| register()).collect();
        (data, back)
    };
    let first = u64::from(queue) * REGION_BLOCKS;
    let mut requests = 0;
    for round in 0..ROUNDS {
        let blocks: Vec<u64> = (0..DEPTH as u64)
            .map(|i| (round as u64 * 5 + i * 3) % REGION_BLOCKS)
            .collect();
        // Distinct blocks within the batch (3 and 64 are coprime, DEPTH < 64).
        {
            let mut q = blk.lock_queue(queue).unwrap();
            for (&id, &block) in data.iter().zip(&blocks) {
                let bytes = q.buffer_mut(id).expect("data buffer held");
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = written(queue, round, block, i);
                }
            }
            for &id in &back {
                q.buffer_mut(id).expect("read-back buffer held").fill(0xee);
            }
        }
        let sector = |block: u64| (first + block) * BLOCK_SECTORS;
        let writes: Vec<Op<'_>> = data
            .iter()
            .zip(&blocks)
            .map(|(id, &block)| Op::Write {
                sector: sector(block),
                buffers: std::slice::from_ref(id),
            })
            .collect();
        run_batch(blk, queue, &writes);
        let reads: Vec<Op<'_>> = back
            .iter()
            .zip(&blocks)
            .map(|(id, &block)| Op::Read {
                sector: sector(block),
                buffers: std::slice::from_ref(id),
            })
            .collect();
        run_batch(blk, queue, &reads);
        requests += (writes.len() + reads.len()) as u64;
        let q = blk.lock_queue(queue).unwrap();
        for (&id, &block) in back.iter().zip(&blocks) {
            let bytes = q.buffer(id).expect("read-back buffer held");
            for (i, &b) in bytes.iter().enumerate() {
                assert_eq!(
                    b,
                    written(queue, round, block, i),
                    "queue {queue}, round {round}: byte {i} of block {block} read back wrong"
                );
            }
        }
    }
    requests
}

#[test]
fn threads_submit_and_complete_on_their_own_queues_at_once() {
    let (mut blk, model) = device();
    assert_eq!(blk.queue_count(), usize::from(QUEUES));
    let stop = AtomicBool::new(false);
    let requests: Vec<u64> = thread::scope(|s| {
        let device = s.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                model.lock().unwrap().step();
                thread::yield_now();
            }
        });
        let workers: Vec<_> = (0..QUEUES)
            .map(|q| {
                let blk = &blk;
                s.spawn(move || worker(blk, q))
            })
            .collect();
        let joined: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
        // Stop the device before looking at the results, so a failed
        // driver thread fails the test instead of leaving it waiting.
        stop.store(true, Ordering::Release);
        device.join().expect("the device thread failed");
        joined
            .into_iter()
            .map(|r| r.expect("a driver thread failed"))
            .collect()
    });
    let m = model.lock().unwrap();
    assert!(
        m.violations.is_empty(),
        "driver broke rules: {:?}",
        m.violations
    );
    for q in 0..QUEUES {
        let made = requests[usize::from(q)];
        assert_eq!(made, (ROUNDS * DEPTH * 2) as u64);
        let stats = blk.queue_stats(q).unwrap();
        assert_eq!(
            (stats.requests, stats.completions, stats.failed),
            (made, made, 0),
            "queue {q}: its thread's requests, all completed, on it alone"
        );
        assert_eq!(stats.bytes_written, made / 2 * BLOCK as u64, "queue {q}");
        assert_eq!(stats.bytes_read, made / 2 * BLOCK as u64, "queue {q}");
        assert_eq!(
            m.seen_on(q),
            made as usize,
            "the device saw them on queue {q}"
        );
        // The disk holds each block's last write.
        let first = u64::from(q) * REGION_BLOCKS;
        for round in ROUNDS.saturating_sub(8)..ROUNDS {
            for i in 0..DEPTH as u64 {
                let block = (round as u64 * 5 + i * 3) % REGION_BLOCKS;
                let last = (0..ROUNDS)
                    .rev()
                    .find(|&r| {
                        (0..DEPTH as u64).any(|j| (r as u64 * 5 + j * 3) % REGION_BLOCKS == block)
                    })
                    .unwrap();
                let at = ((first + block) * BLOCK_SECTORS) as usize * 512;
                let on_disk = &m.disk[at..at + BLOCK];
                assert!(
                    on_disk
                        .iter()
                        .enumerate()
                        .all(|(k, &b)| b == written(q, last, block, k)),
                    "queue {q}: block {block} on the disk is not its last write (round {last})"
                );
            }
        }
    }
    assert_eq!(blk.in_flight(), 0);
}

#[test]
fn both_apis_on_one_queue_each_get_their_own_completions_and_aborts() {
    install_logger();
    let defaults = BlkModelConfig::default();
    let model: SharedBlkModel = BlkModel::new(BlkModelConfig {
        features: defaults.features | feature::MQ,
        num_queues: 2,
        ..defaults
    })
    .shared();
    model.borrow_mut().fill_pattern();
    let mut blk =
        BlkDevice::<HostHal, _>::new(ModelTransport::new(model.clone(), TransportKind::PciModern))
            .expect("the device comes up");
    let owner = blk.transport().dma_owner();
    let new_buffer = || DmaBuffer::<HostHal>::new(owner, 512).unwrap();
    let device_buffer = blk.register_buffer(new_buffer()).unwrap();
    let queue_buffer = {
        let mut q = blk.lock_queue(1).unwrap();
        q.register_buffer(new_buffer()).unwrap()
    };
    let expected = |sector: u64| -> Vec<u8> {
        (sector as usize * 512..sector as usize * 512 + 512)
            .map(pattern_byte)
            .collect()
    };
    // 1. The per-queue API collects first: it leaves the device API's
    //    request for `BlkDevice::poll`.
    let from_device = blk
        .submit(Request::new(read(3, &device_buffer)).on_queue(1))
        .unwrap();
    let from_queue = {
        let mut q = blk.lock_queue(1).unwrap();
        let token = q.submit(read(5, &queue_buffer)).unwrap();
        q.publish();
        token
    };
    model.borrow_mut().step();
    {
        let mut q = blk.lock_queue(1).unwrap();
        let done = q.poll().unwrap().expect("the per-queue request is done");
        assert_eq!((done.token, done.result), (from_queue, Ok(())));
        assert_eq!(
            q.poll(),
            Ok(None),
            "the device API's request is not handed out here"
        );
        assert_eq!(q.buffer(queue_buffer).unwrap(), &expected(5)[..]);
    }
    let done = blk
        .poll()
        .unwrap()
        .expect("the device API's request is done");
    assert_eq!((done.token, done.result), (from_device, Ok(())));
    assert_eq!(blk.buffer(device_buffer).unwrap(), &expected(3)[..]);
    assert_eq!(blk.poll(), Ok(None));

    // 2. The device API collects first: the per-queue request waits in the
    //    queue's own list.
    let from_device = blk
        .submit(Request::new(read(7, &device_buffer)).on_queue(1))
        .unwrap();
    let from_queue = {
        let mut q = blk.lock_queue(1).unwrap();
        let token = q.submit(read(9, &queue_buffer)).unwrap();
        q.publish();
        token
    };
    model.borrow_mut().step();
    let done = blk
        .poll()
        .unwrap()
        .expect("the device API's request is done");
    assert_eq!((done.token, done.result), (from_device, Ok(())));
    assert_eq!(
        blk.poll(),
        Ok(None),
        "the per-queue request is not handed out here"
    );
    {
        let mut q = blk.lock_queue(1).unwrap();
        let done = q.poll().unwrap().expect("kept for the per-queue API");
        assert_eq!((done.token, done.result), (from_queue, Ok(())));
        assert_eq!(q.buffer(queue_buffer).unwrap(), &expected(9)[..]);
    }

    // 3. A reset aborts both, each into its own list, and gives both
    //    buffers back.
    let from_device = blk
        .submit(Request::new(read(11, &device_buffer)).on_queue(1))
        .unwrap();
    let from_queue = {
        let mut q = blk.lock_queue(1).unwrap();
        let token = q.submit(read(13, &queue_buffer)).unwrap();
        q.publish();
        assert!(q.buffer(queue_buffer).is_none(), "lent while in flight");
        token
    };
    blk.recover().expect("the device comes back");
    let done = blk.poll().unwrap().expect("aborted");
    assert_eq!(
        (done.token, done.result),
        (from_device, Err(RequestError::Aborted))
    );
    assert_eq!(blk.poll(), Ok(None));
    assert!(
        blk.buffer(device_buffer).is_some(),
        "handed back by the reset"
    );
    let mut q = blk.lock_queue(1).unwrap();
    let done = q.poll().unwrap().expect("aborted");
    assert_eq!(
        (done.token, done.result),
        (from_queue, Err(RequestError::Aborted))
    );
    assert!(q.buffer(queue_buffer).is_some(), "handed back by the reset");
    assert_eq!(q.in_flight(), 0);
    let stats = q.stats();
    assert_eq!(
        (stats.requests, stats.completions, stats.aborted),
        (6, 6, 2)
    );
    drop(q);
    assert!(model.borrow().violations.is_empty());
}

#[test]
fn printing_the_device_while_holding_one_of_its_queues_does_not_wait_for_it() {
    // The counters that need every queue take `&mut BlkDevice` (so they
    // cannot be called while a `BlkQueue` lives); `Debug` takes `&self` and
    // must not lock the queue its caller holds (a spin lock: it would wait
    // for ever).
    let (blk, _model) = device();
    let held = blk.lock_queue(1).unwrap();
    let printed = format!("{blk:?}");
    assert!(
        printed.contains("in_flight: None"),
        "a held queue's count is not waited for: {printed}"
    );
    assert_eq!(held.in_flight(), 0);
    drop(held);
    let printed = format!("{blk:?}");
    assert!(printed.contains("in_flight: Some(0)"), "{printed}");
}
