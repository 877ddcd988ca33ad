"""The `log=trace` excerpts in the book: captured from a real boot, checked for drift.

The chapters show what the drivers narrate at trace level by including files from `docs/traces/`
(`{{#include traces/<name>.txt}}`). Those files are not typed by hand: they are cut out of the
serial log of one real boot (`TRACE_BOOT`: q35 + qboot under TCG, a modern-only virtio-blk disk,
`log=trace`), by the rules in `EXCERPTS`:

    ./x.py docs --capture-traces      # boot once, rewrite docs/traces/*.txt

`./x.py test` boots the same way (scenario `docs-trace-excerpts`) and compares each fresh excerpt
with the stored one, on the parts that do not vary between boots: status values, feature names,
queue sizes, descriptor chains, index movements and notification decisions must be the same;
timestamps (dropped when captured) and addresses, which depend on the frame allocator, are
masked. A difference fails the test with a diff and the command that refreshes the files; look at
the diff first: the book's prose around the excerpt may need to change too.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRACES_DIR = REPO / "docs" / "traces"
SCENARIO_NAME = "docs-trace-excerpts"
REFRESH_COMMAND = "./x.py docs --capture-traces"

#: `[   1.234567] ` at the start of a log line.
TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s")
#: What varies from boot to boot and is masked before comparing.
VARYING = [
    (re.compile(r"0x[0-9a-f]{5,}"), "0x…"),  # addresses (DMA pages, BARs placed at boot)
    (re.compile(r"\b\d+(\.\d+)?\s?(ns|us|µs|ms|s)\b"), "… time"),  # durations
]


@dataclass(frozen=True)
class Excerpt:
    """Which lines of the boot's log one excerpt holds."""

    #: File name in docs/traces/ (without `.txt`).
    name: str
    #: What it shows (the chapter that includes it says more).
    description: str
    #: The first line (regex, searched after the timestamp is dropped).
    start: str
    #: The last line (regex, inclusive); the excerpt is cut there or at `max_lines`.
    stop: str
    #: Only lines matching this are kept (e.g. one device's, one queue's).
    keep: str = r""
    #: Lines matching this are left out: what depends on timing, not on the code (whether the
    #: device answered before the driver started to wait, say).
    drop: str = r""
    max_lines: int = 40


EXCERPTS: list[Excerpt] = [
    Excerpt(
        name="blk-bring-up",
        description="virtio-blk on modern virtio-pci: §3.1.1 from reset to DRIVER_OK",
        start=r"status <- 0x00 \(reset\)",
        stop=r"status <- 0x0f",
        keep=r"^(TRACE|DEBUG|INFO) (drivers|kernel)::[\w:]+: pci 0000:00:0[0-9a-f]\.0|^(TRACE|DEBUG|INFO) drivers::(features|init|queue)",
    ),
    Excerpt(
        name="blk-first-request",
        description="the first block request through the split ring: chain, avail, notify, used",
        start=r"vq0: request of \d+ segment\(s\)",
        stop=r"used\.idx = 1, consumed 0 -> 1",
        keep=r"vq0: ",
        # The wait arms the queue's interrupts only if the device has not answered yet (a race
        # the device wins or loses from boot to boot under TCG).
        drop=r"vq0: interrupts (on|off):",
    ),
]


def strip_timestamp(line: str) -> str:
    return TIMESTAMP.sub("", line.rstrip())


def extract(log_text: str, excerpt: Excerpt) -> list[str] | None:
    """The excerpt's lines in a serial log (timestamps dropped), or None if it does not start."""
    lines = [strip_timestamp(line) for line in log_text.splitlines()]
    start = re.compile(excerpt.start)
    stop = re.compile(excerpt.stop)
    keep = re.compile(excerpt.keep) if excerpt.keep else None
    drop = re.compile(excerpt.drop) if excerpt.drop else None
    for first, line in enumerate(lines):
        if start.search(line) and (keep is None or keep.search(line)):
            break
    else:
        return None
    taken: list[str] = []
    for line in lines[first:]:
        if keep is not None and not keep.search(line):
            continue
        if drop is not None and drop.search(line):
            continue
        taken.append(line)
        if stop.search(line) or len(taken) >= excerpt.max_lines:
            break
    return taken


def normalise(lines: Iterable[str]) -> list[str]:
    """The lines with what varies between boots masked."""
    out = []
    for line in lines:
        for pattern, replacement in VARYING:
            line = pattern.sub(replacement, line)
        out.append(line)
    return out


def stored(excerpt: Excerpt, directory: Path = TRACES_DIR) -> list[str] | None:
    path = directory / f"{excerpt.name}.txt"
    return path.read_text().splitlines() if path.is_file() else None


def drift(log_text: str, excerpts: Sequence[Excerpt] = tuple(EXCERPTS),
          directory: Path = TRACES_DIR) -> list[str]:
    """Problems: excerpts missing from the log or from docs/traces/, or different from it."""
    problems: list[str] = []
    for excerpt in excerpts:
        fresh = extract(log_text, excerpt)
        kept = stored(excerpt, directory)
        if fresh is None:
            problems.append(f"trace excerpt {excerpt.name}: the boot printed no line matching "
                            f"{excerpt.start!r} (tests/book/traces.py says where it starts)")
            continue
        if kept is None:
            problems.append(f"trace excerpt {excerpt.name}: docs/traces/{excerpt.name}.txt is "
                            f"missing; run {REFRESH_COMMAND}")
            continue
        if normalise(fresh) != normalise(kept):
            diff = difflib.unified_diff(normalise(kept), normalise(fresh), "in the book", "this boot",
                                        lineterm="", n=1)
            problems.append(f"trace excerpt {excerpt.name} drifted from docs/traces/{excerpt.name}.txt "
                            f"(run {REFRESH_COMMAND}, then reread the chapter around it):\n"
                            + "\n".join(diff))
    return problems


def write(log_text: str, excerpts: Sequence[Excerpt] = tuple(EXCERPTS),
          directory: Path = TRACES_DIR) -> list[Path]:
    """Writes each excerpt found in the log to docs/traces/; raises if one is missing."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for excerpt in excerpts:
        lines = extract(log_text, excerpt)
        if lines is None:
            raise ValueError(f"trace excerpt {excerpt.name}: no line matching {excerpt.start!r}")
        path = directory / f"{excerpt.name}.txt"
        path.write_text("\n".join(lines) + "\n")
        written.append(path)
    return written


def scenario():
    """The boot both the capture and the drift check use (a `Scenario` of tests/qemu/harness.py)."""
    sys.path.insert(0, str(REPO / "tests"))
    from qemu import machine as qm
    from qemu.harness import DEFAULT_FORBID, KILLED, Outcome, RunContext, Scenario

    def devices(ctx: RunContext) -> list[str]:
        return [
            "-drive", f"if=none,id=d0,format=raw,file={ctx.file('disk.img')}",
            "-device", "virtio-blk-pci,drive=d0,serial=docs0,disable-legacy=on",
        ]  # fmt: skip

    def check(outcome: Outcome) -> list[str]:
        return drift(outcome.log_text)

    return Scenario(
        name=SCENARIO_NAME,
        machine="q35",
        firmware="qboot",
        accel="tcg",
        devices=devices,
        files={"disk.img": lambda path: qm.create_raw_image(path, 1024 * 1024)},
        append="log=trace",
        expect_status=KILLED,
        stop_on=r"^kernel: ready",
        expect_in_order=[r"^kernel: booting \(PVH\)", r"^kernel: ready"],
        forbid=DEFAULT_FORBID,
        check=check,
        timeout_s=60,
    )
