"""`x.py bench --section cost`: guest instructions per request, counted exactly.

Wall-clock figures on a shared host move with the load; instruction counts do
not. QEMU's `-icount shift=0` (TCG only) makes the guest's clock, and so its
TSC, advance by exactly one tick per guest instruction executed (plus the
time it jumps while the CPU is halted). The benchmark build already brackets
each request's work with TSC reads and prints the raw ticks
(kernel/src/block/bench.rs, kernel/src/peer/bench.rs, kernel/src/net/bench.rs),
so under `-icount shift=0` those fields are instruction counts:

- `turn_ticks_per_req` (blk, ours and virtio-drivers): from the poll that
  finds a completion to the end of the resubmission and its notification: the
  driver's whole per-request path at that depth, waiting excluded;
- `busy_ticks_per_req` (blk, ours): the run's ticks minus those spent halted,
  per request. For the interrupt-driven mode this is the whole CPU cost of a
  request: the driver's path plus arming interrupts, the spin before a halt,
  the interrupt handler and the wake-up (polling modes spin instead, so it
  is not used for them);
- `ticks_per_pkt` (net, both stacks): the polled send/receive loop's ticks
  per 64-byte frame sent, which includes receiving it on the other card.

`cost_entries` turns the bench lines of those boots into the
`"cost": [{"workload", "ours", "peer", "unit", ...}]` list of results.json,
with notifications and interrupts per request beside the counts.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

#: QEMU arguments that make the guest clock count instructions (TCG only).
ICOUNT_ARGS = ["-icount", "shift=0"]

#: (workload, its unit) of every cost entry, in the order they are shown.
BLK_WORKLOADS = ("blk.randread.qd1", "blk.randwrite.qd1")
NET_WORKLOAD = "net.pps"
UNIT_REQUEST = "instructions/request"
UNIT_FRAME = "instructions/frame"


def _median(rows: Sequence[dict[str, object]], name: str, key: str) -> float | None:
    values = [float(r[key]) for r in rows  # type: ignore[arg-type]
              if r.get("name") == name and isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None


def cost_entries(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """The cost list from the parsed `bench:` rows of the icount boots
    (`bench_compare.parse_bench_lines`); medians where runs repeat."""
    entries: list[dict[str, object]] = []
    for workload in BLK_WORKLOADS:
        ours = _median(rows, f"{workload}.poll", "turn_ticks_per_req")
        peer = _median(rows, f"{workload}.peer", "turn_ticks_per_req")
        if ours is None and peer is None:
            continue
        entries.append({
            "workload": workload, "unit": UNIT_REQUEST, "ours": ours, "peer": peer,
            "ratio": ours / peer if ours and peer else None,
            "ours_irq": _median(rows, f"{workload}.irq", "busy_ticks_per_req"),
            "ours_irq_driver": _median(rows, f"{workload}.irq", "turn_ticks_per_req"),
            "notifications_per_req": _median(rows, f"{workload}.poll", "notifications_per_req"),
            "irq_notifications_per_req": _median(rows, f"{workload}.irq", "notifications_per_req"),
            "interrupts_per_req": _median(rows, f"{workload}.irq", "interrupts_per_req"),
            "halts_per_req": _median(rows, f"{workload}.irq", "halts_per_req"),
            "spun_per_req": _median(rows, f"{workload}.irq", "spun_per_req"),
        })
    ours = _median(rows, f"{NET_WORKLOAD}.poll", "ticks_per_pkt")
    peer = _median(rows, f"{NET_WORKLOAD}.peer", "ticks_per_pkt")
    if ours is not None or peer is not None:
        entries.append({
            "workload": f"{NET_WORKLOAD}.64b", "unit": UNIT_FRAME, "ours": ours, "peer": peer,
            "ratio": ours / peer if ours and peer else None,
            "notifications_per_req": _median(rows, f"{NET_WORKLOAD}.poll", "tx_notifications_per_pkt"),
            "rx_notifications_per_req": _median(rows, f"{NET_WORKLOAD}.poll", "rx_notifications_per_pkt"),
            "interrupts_per_req": _median(rows, f"{NET_WORKLOAD}.poll", "rx_interrupts_per_pkt"),
            "peer_notifications_per_req": _median(rows, f"{NET_WORKLOAD}.peer", "tx_notifications_per_pkt"),
        })
    return entries


def _num(value: object, digits: int = 0) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def table_lines(entries: Sequence[dict[str, object]]) -> list[str]:
    """The cost list as a Markdown table (terminal and book)."""
    lines = ["| workload | unit | ours (poll) | virtio-drivers | ours / peer | ours (irq, whole CPU) "
             "| notify/req | irq/req (irq mode) |",
             "| --- | --- | --: | --: | --: | --: | --: | --: |"]
    for e in entries:
        lines.append(f"| `{e['workload']}` | {e['unit']} | {_num(e.get('ours'))} | {_num(e.get('peer'))} | "
                     f"{_num(e.get('ratio'), 2)} | {_num(e.get('ours_irq'))} | "
                     f"{_num(e.get('notifications_per_req'), 3)} | {_num(e.get('interrupts_per_req'), 3)} |")
    return lines


def plot_entries(entries: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Bars for the ratio plot: peer / ours (above 1: ours needs fewer instructions)."""
    return [{"workload": f"cost {e['workload']}", "ratio": float(e["peer"]) / float(e["ours"])}  # type: ignore[arg-type]
            for e in entries if isinstance(e.get("ours"), (int, float)) and isinstance(e.get("peer"), (int, float))
            and e["ours"]]
