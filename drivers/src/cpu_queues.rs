//! # Which queue a CPU submits on, and which CPU a queue interrupts
//!
//! A multiqueue device (virtio-blk with VIRTIO_BLK_F_MQ, virtio 1.2
//! §5.2.3 and §5.2.4 `num_queues`) is fastest when every CPU has a request
//! queue of its own: a CPU submits on its queue, the queue's MSI-X vector
//! (§4.1.5.1.2, one entry per queue) is steered to that same CPU, and the
//! completion is handled where the request started, with nothing shared
//! between CPUs. When the device has fewer queues than there are CPUs,
//! CPUs share queues; when it has more, a CPU owns several.
//!
//! The mapping is three pure functions of the CPU index (dense, `0..cpus`),
//! the number of CPUs and the number of queues, so it is the same wherever
//! it is asked and can be tested on the host:
//!
//! - [`queue_for_cpu`]: CPU `c` submits on queue `c mod queues`. With as
//!   many queues as CPUs that is the identity; with fewer, CPUs `c`,
//!   `c + queues`, `c + 2 queues`, ... share queue `c mod queues`.
//! - [`cpu_for_queue`]: queue `q` interrupts CPU `q mod cpus`. For every
//!   queue some CPU submits on, that is the lowest such CPU (so the
//!   completion lands on a submitter); a queue no CPU submits on by default
//!   (more queues than CPUs) still gets an owner, spread round robin.
//! - [`queues_of_cpu`]: the queues whose interrupts a CPU takes.
//!
//! Linux's `blk_mq_map_queues` spreads the same way when it knows nothing
//! about the CPU topology.

/// The queue CPU `cpu` submits on, out of `queues` (at least 1 is assumed:
/// 0 queues answers 0). `cpus` is the number of online CPUs; a CPU index
/// beyond it still gets a queue.
pub const fn queue_for_cpu(cpu: usize, cpus: usize, queues: u16) -> u16 {
    let _ = cpus;
    if queues == 0 {
        return 0;
    }
    (cpu % queues as usize) as u16
}

/// The CPU whose interrupts queue `queue` raises (the destination of its
/// MSI-X message), out of `cpus` online CPUs (at least 1 is assumed: 0
/// answers CPU 0).
pub const fn cpu_for_queue(queue: u16, cpus: usize, queues: u16) -> usize {
    let _ = queues;
    if cpus == 0 {
        return 0;
    }
    queue as usize % cpus
}

/// The queues (out of `queues`) whose interrupts CPU `cpu` takes, in
/// ascending order.
pub fn queues_of_cpu(cpu: usize, cpus: usize, queues: u16) -> impl Iterator<Item = u16> {
    (0..queues).filter(move |&q| cpu_for_queue(q, cpus, queues) == cpu)
}
