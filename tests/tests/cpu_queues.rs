//! The per-CPU queue mapping of multiqueue devices (`drivers::cpu_queues`).

use drivers::cpu_queues::{cpu_for_queue, queue_for_cpu, queues_of_cpu};

#[test]
fn as_many_queues_as_cpus_is_one_queue_each() {
    for n in 1..=16usize {
        let queues = n as u16;
        let mut seen: Vec<u16> = (0..n).map(|cpu| queue_for_cpu(cpu, n, queues)).collect();
        assert_eq!(seen, (0..queues).collect::<Vec<_>>(), "{n} CPUs");
        seen.dedup();
        assert_eq!(seen.len(), n);
        for cpu in 0..n {
            let q = queue_for_cpu(cpu, n, queues);
            assert_eq!(
                cpu_for_queue(q, n, queues),
                cpu,
                "queue {q} interrupts its submitter"
            );
            assert_eq!(queues_of_cpu(cpu, n, queues).collect::<Vec<_>>(), vec![q]);
        }
    }
}

#[test]
fn fewer_queues_than_cpus_share_evenly_and_interrupt_a_submitter() {
    for cpus in 1..=32usize {
        for queues in 1..=cpus as u16 {
            let mut users = vec![0usize; usize::from(queues)];
            for cpu in 0..cpus {
                let q = queue_for_cpu(cpu, cpus, queues);
                assert!(
                    q < queues,
                    "{cpus} CPUs, {queues} queues: CPU {cpu} -> queue {q}"
                );
                users[usize::from(q)] += 1;
            }
            // Every queue used, and no queue has more than one CPU above another.
            let (min, max) = (users.iter().min().unwrap(), users.iter().max().unwrap());
            assert!(
                *min >= 1 && max - min <= 1,
                "{cpus} CPUs, {queues} queues: {users:?}"
            );
            for q in 0..queues {
                let owner = cpu_for_queue(q, cpus, queues);
                assert!(owner < cpus);
                assert_eq!(
                    queue_for_cpu(owner, cpus, queues),
                    q,
                    "queue {q}'s interrupts go to CPU {owner}, which submits elsewhere"
                );
            }
        }
    }
}

#[test]
fn more_queues_than_cpus_give_every_queue_one_owner() {
    for cpus in 1..=8usize {
        for queues in cpus as u16..=16 {
            let mut owned: Vec<u16> = (0..cpus)
                .flat_map(|cpu| queues_of_cpu(cpu, cpus, queues))
                .collect();
            owned.sort_unstable();
            assert_eq!(
                owned,
                (0..queues).collect::<Vec<_>>(),
                "{cpus} CPUs, {queues} queues"
            );
            for cpu in 0..cpus {
                // A CPU's submission queue is one whose interrupts it takes.
                let q = queue_for_cpu(cpu, cpus, queues);
                assert!(queues_of_cpu(cpu, cpus, queues).any(|o| o == q));
            }
        }
    }
}

#[test]
fn degenerate_counts_do_not_panic() {
    assert_eq!(queue_for_cpu(3, 4, 0), 0);
    assert_eq!(cpu_for_queue(3, 0, 4), 0);
    assert_eq!(queues_of_cpu(0, 0, 0).count(), 0);
    // A CPU index beyond the online count still gets a queue.
    assert!(queue_for_cpu(9, 4, 4) < 4);
}
