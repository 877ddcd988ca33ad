"""The `crash-*` scenarios: does data the kernel reported flushed survive a kill?

The guest runs the crash workload (`crash=records`, kernel/src/block/crash.rs):
numbered, checksummed records, one per sector, written to the scratch disk
in commits of 1 to 8, each commit followed by a FLUSH and announced as
`crash: committed N` once the flush completed. The disk is a qcow2 image
with `cache=writeback`: QEMU keeps the mappings of newly written clusters in
memory until a FLUSH, so a commit announced before its flush completed is
lost in the kill (`crash-no-flush-caught` proves the check sees that, with
`crash.flush=skip`); a raw image would keep every write in the host's page
cache and hide it. The host lets it run for a
random time after the first commit, kills QEMU with SIGKILL (the harness's
`stop_after_interact`), and then reads the image: every record up to the
highest N the guest announced must be there, intact (magic, number,
FNV-1a checksum). Records after it may be anything.

`CRASH_SCENARIOS` (a handful, in `./x.py test`) covers the split ring on PCI,
the packed ring on PCI and virtio-mmio on microvm; `soak_scenarios(n)` makes
`n` more with other kill points for a long run (`python3 -m qemu.scenarios_crash N`
from tests/ runs them). Each run writes what it tried
(kill delay, records committed, records checked) to `crash-summary.txt` in
its work directory.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from collections.abc import Iterable

from . import machine as qm
from .harness import KILLED, Outcome, RunContext, Scenario

IMAGE = "scratch.img"
IMAGE_SIZE = 16 * 1024 * 1024
SECTOR = 512
MAGIC = b"CRASHREC"
COMMITTED = re.compile(r"^crash: committed (\d+)$", re.MULTILINE)
#: Kill points: this many seconds after the first commit, uniformly.
KILL_WINDOW_S = (0.0, 1.5)


def fnv1a(data: bytes) -> int:
    """FNV-1a 64, as the guest computes it."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def record_problem(image: bytes, n: int) -> str | None:
    """What is wrong with record `n` in `image`, or None if it is intact."""
    rec = image[n * SECTOR:(n + 1) * SECTOR]
    if len(rec) < SECTOR:
        return "beyond the end of the image"
    if rec[:8] != MAGIC:
        return f"no magic (starts {rec[:16].hex()})"
    number = int.from_bytes(rec[8:16], "little")
    if number != n:
        return f"holds record {number}"
    if fnv1a(rec[:504]) != int.from_bytes(rec[504:512], "little"):
        return "checksum mismatch"
    return None


def check_records(image: bytes, log_text: str) -> tuple[int, list[str]]:
    """The highest record committed, and the problems with records 0 to it."""
    failed = [line for line in log_text.splitlines() if line.startswith("crash: FAILED")]
    if failed:
        return -1, failed
    committed = [int(n) for n in COMMITTED.findall(log_text)]
    if not committed:
        return -1, ["no `crash: committed` line before the kill"]
    last = max(committed)
    problems = []
    for n in range(last + 1):
        problem = record_problem(image, n)
        if problem is not None:
            problems.append(f"record {n} of 0..{last} committed: {problem}")
            if len(problems) >= 5:
                break
    return last, problems


def kill_at_random(ctx: RunContext) -> Iterable[str]:
    """Waits a random time after the first commit; returning kills QEMU."""
    delay = random.uniform(*KILL_WINDOW_S)
    ctx.crash_delay = delay  # type: ignore[attr-defined]  (read by the check)
    time.sleep(delay)
    return []


def check_crash(outcome: Outcome) -> Iterable[str]:
    assert outcome.ctx is not None
    raw = outcome.ctx.file("scratch-after-kill.raw")
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(outcome.ctx.file(IMAGE)), str(raw)],
                   check=True)
    image = raw.read_bytes()
    last, problems = check_records(image, outcome.log_text)
    delay = getattr(outcome.ctx, "crash_delay", None)
    summary = f"kill {delay:.3f} s after the first commit; " if delay is not None else ""
    summary += f"records committed 0..{last}; {len(problems)} problem(s)\n"
    outcome.ctx.file("crash-summary.txt").write_text(summary)
    return [f"{p} ({summary.strip()})" for p in problems]


def check_lost_without_flush(outcome: Outcome) -> Iterable[str]:
    """The negative control: with `crash.flush=skip` the guest announces
    commits it never flushed, and the qcow2 image, whose new cluster
    mappings QEMU keeps in memory until a FLUSH, loses them in the kill. The
    check above must report it; if it finds nothing wrong, it could not fail."""
    if list(check_crash(outcome)):
        return []
    return ["commits announced without a FLUSH all survived the kill: the crash check cannot tell"]


def crash_scenario(name: str, machine: str, append: str = "", check=check_crash) -> Scenario:
    def make_image(path) -> None:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(IMAGE_SIZE)], check=True)

    def devices(ctx: RunContext) -> list[str]:
        return [
            "-drive", f"if=none,id=scratch0,format=qcow2,cache=writeback,file={ctx.file(IMAGE)}",
            "-device", f"{qm.virtio_device('virtio-blk', machine)},drive=scratch0,serial=scratch0",
        ]  # fmt: skip

    return Scenario(
        name=name,
        machine=machine,
        firmware=None if machine == "microvm" else "qboot",
        accel="tcg",
        files={IMAGE: make_image},
        devices=devices,
        append=f"crash=records {append}".strip(),
        kernel_features=("selftest",),
        expect_status=KILLED,
        expect_in_order=[r"^crash: writing records to ", r"^crash: committed \d+$"],
        interact=kill_at_random,
        interact_after=r"^crash: committed",
        stop_after_interact=True,
        check=check,
        timeout_s=60.0,
    )


CRASH_SCENARIOS: list[Scenario] = [
    # Commits announced without a FLUSH must be caught (the check can fail).
    crash_scenario("crash-no-flush-caught", "q35", "crash.flush=skip", check=check_lost_without_flush),
    crash_scenario("crash-pc-split", "pc", "virtio.ring=split"),
    crash_scenario("crash-q35-packed", "q35", "virtio.ring=packed"),
    crash_scenario("crash-microvm-mmio", "microvm"),
]


def soak_scenarios(count: int) -> list[Scenario]:
    """`count` more crash runs, cycling through the three set-ups (for `soak`)."""
    base = [("pc", "virtio.ring=split"), ("q35", "virtio.ring=packed"), ("microvm", "")]
    return [crash_scenario(f"crash-soak-{i}", *base[i % len(base)]) for i in range(count)]


def main(argv: list[str]) -> int:
    """`python3 -m qemu.scenarios_crash [N]` (from tests/, after `./x.py build`):
    N crash runs (default 30) under TCG, one at a time, each with its kill
    point and the records checked; the soak's share until `x.py soak` runs them."""
    from pathlib import Path

    from . import harness

    count = int(argv[0]) if argv else 30
    repo = Path(__file__).resolve().parents[2]
    kernel = repo / "build" / "kernel-selftest.elf"
    if not kernel.exists():
        print(f"{kernel} is missing: run ./x.py build first", file=sys.stderr)
        return 2
    outcomes = harness.run_scenarios(soak_scenarios(count), {("selftest",): kernel}, repo / "build",
                                     jobs=1, tcg_only=True)
    for outcome in outcomes:
        assert outcome.ctx is not None
        summary = outcome.ctx.file("crash-summary.txt")
        print(f"{outcome.scenario.name}: {summary.read_text().strip() if summary.exists() else '-'}")
        if not outcome.passed:
            print(harness.failure_report(outcome))
    passed = sum(o.passed for o in outcomes)
    print(f"crash runs: {passed} of {len(outcomes)} passed")
    return 0 if passed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
