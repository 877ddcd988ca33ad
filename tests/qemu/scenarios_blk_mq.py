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
- `bench-scale-smoke-tcg`: a short `x.py bench --section scale` boot (2 vCPUs,
  `num-queues=2`): the `scale.setup` line and an IOPS figure are produced and
  parse into a `"scale"` entry (tests/qemu/bench_scale.py). Never judged.

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


def mq_scenario(name: str, machine: str, transport: str, queues: int, props: str, append: str = "") -> Scenario:
    scenario = blk_scenario(
        name, machine, transport,
        [BlkDrive("scratch0", props=f"{props},num-queues={queues}")],
        append=f"blk.workload=quick {append}".strip(),
        expect_anywhere=[
            rf"^virtio: blk at pci \S+ transport={transport} ring=\S+ queues={queues} features=\S*MQ",
            rf"^\[.*\] INFO .*virtio-irq: blk at pci \S+: (re-routed: )?MSI-X, {queues + 1} of \d+ entries: config -> vector 0x[0-9a-f]+, "
            + ", ".join(f"queues \\{{{q}\\}} -> vector 0x[0-9a-f]+" for q in range(queues)),
            r"^selftest: PASS block: scratch: every request queue of a multiqueue disk completes requests$",
        ],
    )  # fmt: skip
    disk_check = scenario.check
    queue_check = every_queue_completed("vda", queues)

    def check(outcome: Outcome) -> Iterable[str]:
        problems = list(disk_check(outcome) or []) if disk_check else []
        return problems + list(queue_check(outcome))

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
        return problems

    return check


BLK_MQ_SCENARIOS: list[Scenario] = [
    mq_scenario("blk-mq4-q35", "q35", "pci-modern", 4, MODERN),
    mq_scenario("blk-mq2-pc", "pc", "pci-modern", 2, ",packed=on", append="virtio.ring=packed"),
    Scenario(
        name="bench-scale-smoke-tcg", machine="q35", accel="tcg", devices=bench_scale.devices(2),
        append="mode=bench bench=scale bench.seconds=0.02 bench.repeat=1",
        expect_status=qm.EXIT_SELFTEST_PASS, expect_in_order=[r"^bench: scale\.setup ", r"^bench: done$"],
        timeout_s=60.0, check=check_scale_smoke(2),
    ),
]  # fmt: skip
