"""Multiqueue virtio-blk (VIRTIO_BLK_F_MQ, `-device virtio-blk-pci,num-queues=N`).

- `blk-mq4-q35`: a modern scratch disk with 4 request queues. Its `virtio:` line
  says `queues=4`; the `virtio-irq:` line gives each queue its own MSI-X entry
  and vector; the self-test "every request queue of a multiqueue disk completes
  requests" writes, reads back and verifies regions through each queue in turn
  (pinned from the CPU running the self-tests: `Disk::pin_queue`) and checks
  that only that queue's completions grew; the per-queue counter lines logged
  at the end (`block: vda queue <q> cpu=<c> requests=.. completions=..`) must
  show completions on every queue; and the image holds what was announced.
- `blk-mq2-pc`: the same on `pc` with a transitional device (modern interface)
  and 2 queues, ring layout packed: the mapping is not tied to 4.
- `blk-mq4-smp4-q35`: 4 vCPUs and 4 queues. The self-test "every CPU writes and
  reads back on its own request queue" runs on all four CPUs at once
  (`smp::run_on_all`), each on its own queue through the per-queue path
  (kernel/src/block/selftests/per_cpu.rs checks each queue completed exactly its
  CPU's requests); the counter lines must name CPU q for queue q (its MSI-X
  message goes there) and the image must hold every region announced.
- `blk-mq2-smp4-q35`: 4 vCPUs sharing 2 queues (CPUs 0 and 2 on queue 0, 1 and 3
  on queue 1): the CPUs on one queue take turns, each queue completes the
  requests of both its CPUs.
- `bench-scale-smoke-tcg`: a short `x.py bench --section scale` boot (2 vCPUs,
  `num-queues=2`): the `scale.setup` line says both CPUs submitted, an IOPS
  figure is produced and parses into a `"scale"` entry
  (tests/qemu/bench_scale.py), and both queues' counters moved. Never judged.

The kernel side is kernel/src/block/ (queue per CPU, `drivers::cpu_queues`),
the book chapter docs/14-multiqueue.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace

from . import bench_compare, bench_scale
from . import machine as qm
from .harness import Outcome, Scenario
from .scenarios import MODERN, BlkDrive, blk_scenario

#: One per-queue counter line (kernel/src/block/mod.rs `Disk::queue_lines`).
QUEUE_LINE = re.compile(
    r"^\[.*\] INFO .*block: (vd[a-z]+) queue (\d+) cpu=(\d+) requests=(\d+) completions=(\d+) failed=(\d+) interrupts=(\d+)$",
    re.M,
)


def queue_counters(log: str) -> dict[tuple[str, int], tuple[int, int]]:
    """(disk, queue) -> (requests, completions), from the last line logged for each."""
    found: dict[tuple[str, int], tuple[int, int]] = {}
    for m in QUEUE_LINE.finditer(log):
        found[(m.group(1), int(m.group(2)))] = (int(m.group(4)), int(m.group(5)))
    return found


def every_queue_completed(disk: str, queues: int):
    """A check: the last counter line of each of `disk`'s queues shows completions."""

    def check(outcome: Outcome) -> Iterable[str]:
        counters = queue_counters(outcome.log_text)
        problems = []
        for q in range(queues):
            requests, completions = counters.get((disk, q), (0, 0))
            if completions == 0:
                problems.append(f"{disk} queue {q}: no completions logged")
            elif completions != requests:
                problems.append(f"{disk} queue {q}: {requests} requests, {completions} completions")
        if any(q >= queues for (d, q) in counters if d == disk):
            problems.append(f"{disk}: counter lines for more than {queues} queues")
        return problems

    return check


def queues_on_their_cpus(disk: str, queues: int, cpus: int):
    """A check: each of `disk`'s counter lines names CPU `q mod cpus` for queue `q`."""
    line = re.compile(rf"^\[.*\] INFO .*block: {disk} queue (\d+) cpu=(\d+) ", re.M)

    def check(outcome: Outcome) -> Iterable[str]:
        seen = {int(m.group(1)): int(m.group(2)) for m in line.finditer(outcome.log_text)}
        return [f"{disk} queue {q}: cpu={seen.get(q)}, expected {q % cpus}"
                for q in range(queues) if seen.get(q) != q % cpus]

    return check


def mq_scenario(name: str, machine: str, transport: str, queues: int, props: str, append: str = "",
                cpus: int = 1) -> Scenario:
    smp_args = ["-smp", str(cpus)] if cpus > 1 else []
    scenario = blk_scenario(
        name, machine, transport,
        [BlkDrive("scratch0", props=f"{props},num-queues={queues}")],
        extra_args=smp_args,
        append=f"blk.workload=quick {append}".strip(),
        expect_anywhere=[
            rf"^virtio: blk at pci \S+ transport={transport} ring=\S+ queues={queues} features=\S*MQ",
            rf"^\[.*\] INFO .*virtio-irq: blk at pci \S+: (re-routed: )?MSI-X, {queues + 1} of \d+ entries: config -> vector 0x[0-9a-f]+, "
            + ", ".join(f"queues \\{{{q}\\}} -> vector 0x[0-9a-f]+( on cpu {q % cpus})?" for q in range(queues)),
            r"^selftest: PASS block: scratch: every request queue of a multiqueue disk completes requests$",
            r"^selftest: PASS block: scratch: every CPU writes and reads back on its own request queue \(per-queue path\)$",
            rf"^\[.*\] INFO .*block: vda: {cpus} CPU\(s\) wrote and read back on their own queues$",
            rf"^cpus: {cpus} online",
        ],
    )  # fmt: skip
    disk_check = scenario.check
    queue_check = every_queue_completed("vda", queues)
    cpu_check = queues_on_their_cpus("vda", queues, cpus)

    def check(outcome: Outcome) -> Iterable[str]:
        problems = list(disk_check(outcome) or []) if disk_check else []
        return problems + list(queue_check(outcome)) + list(cpu_check(outcome))

    return replace(scenario, check=check, timeout_s=60.0)


def check_scale_smoke(cpus: int):
    """A check: the boot produced a parsable `"scale"` entry for `cpus` vCPUs."""

    def check(outcome: Outcome) -> Iterable[str]:
        setups, rows, errors, _ = bench_compare.parse_bench_lines(outcome.log_text)
        entry = bench_scale.entry(cpus, rows, setups.get("scale.setup", {}))
        problems = list(errors)
        if not isinstance(entry.get("median"), float) or entry["median"] <= 0:
            problems.append(f"no IOPS figure: {entry}")
        if entry.get("queues") != cpus:
            problems.append(f"scale.setup says queues={entry.get('queues')}, the disk has {cpus}")
        if entry.get("submitting_cpus") != cpus:
            problems.append(f"scale.setup says submitting_cpus={entry.get('submitting_cpus')}, not {cpus}")
        for cpu in range(cpus):
            if not re.search(rf"^\[.*\] INFO .*scale: cpu {cpu} queue {cpu} iops=\d+ requests=[1-9]", outcome.log_text, re.M):
                problems.append(f"no requests measured from cpu {cpu} on queue {cpu}")
        return problems

    return check


BLK_MQ_SCENARIOS: list[Scenario] = [
    mq_scenario("blk-mq4-q35", "q35", "pci-modern", 4, MODERN),
    mq_scenario("blk-mq2-pc", "pc", "pci-modern", 2, ",packed=on", append="virtio.ring=packed"),
    mq_scenario("blk-mq4-smp4-q35", "q35", "pci-modern", 4, MODERN, cpus=4),
    mq_scenario("blk-mq2-smp4-q35", "q35", "pci-modern", 2, MODERN, cpus=4),
    Scenario(
        name="bench-scale-smoke-tcg", machine="q35", accel="tcg", devices=bench_scale.devices(2),
        append="mode=bench bench=scale bench.seconds=0.02 bench.repeat=1",
        expect_status=qm.EXIT_SELFTEST_PASS, expect_in_order=[r"^bench: scale\.setup ", r"^bench: done$"],
        timeout_s=60.0, check=check_scale_smoke(2),
    ),
]  # fmt: skip
