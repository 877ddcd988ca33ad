"""Our drivers against the virtio-drivers crate: the comparison `x.py bench` prints.

The kernel's `mode=bench bench=compare` boot runs `bench.repeat` rounds; each
round measures every workload on our stack (lines `bench: <workload>.poll ...`
and `.irq`, field `stack=ours`) and then, after resetting the device, on
virtio-drivers (`bench: <workload>.peer ... stack=peer`).
This module reduces those rows to min / median / max per workload and
stack, prints the table (workload, ours, virtio-drivers, ratio), and draws
the ratios as an SVG with the standard library only.

The ratio is ours / virtio-drivers on the workload's figure of merit (IOPS,
or MB/s for the 128 KiB workloads): above 1 means our stack is faster.
"ours" is our polling mode, because virtio-drivers' block driver only polls;
our interrupt-driven figures are shown beside it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

#: Our wait modes and the peer, in the order the table shows them.
STACKS = ("poll", "irq", "peer")


def merit(row: dict[str, object]) -> tuple[str, float] | None:
    """(unit, value) a row is judged by: MB/s for large requests, else IOPS."""
    iops = row.get("iops")
    size = row.get("request_bytes")
    if not isinstance(iops, (int, float)):
        return None
    if isinstance(size, int) and size >= 64 * 1024:
        return "MB/s", float(iops) * size / 1e6
    return "IOPS", float(iops)


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "runs": len(values)}


def summarize(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """One entry per workload: unit, and per stack the spread of the figure
    of merit plus (ours) notifications and interrupts per request."""
    by_workload: dict[str, dict[str, object]] = {}
    for row in rows:
        mode = str(row.get("mode", ""))
        if mode not in STACKS:
            continue
        judged = merit(row)
        if judged is None:
            continue
        unit, value = judged
        entry = by_workload.setdefault(str(row["workload"]), {"workload": row["workload"], "unit": unit})
        stack = entry.setdefault(mode, {"values": [], "notify": [], "irq": [], "depth": row.get("depth")})
        stack["values"].append(value)
        for key, out in (("notifications_per_req", "notify"), ("interrupts_per_req", "irq")):
            if isinstance(row.get(key), (int, float)):
                stack[out].append(float(row[key]))
        if mode == "peer":
            stack["depth_wanted"] = row.get("depth_wanted")
    summary = []
    for entry in by_workload.values():
        for mode in STACKS:
            stack = entry.get(mode)
            if not isinstance(stack, dict):
                continue
            stack.update(spread(stack.pop("values")))
            for key in ("notify", "irq"):
                values = stack.pop(key)
                if values:
                    stack[f"{key}_per_req"] = statistics.median(values)
        ours, peer = entry.get("poll"), entry.get("peer")
        if isinstance(ours, dict) and isinstance(peer, dict) and peer["median"] > 0:
            entry["ratio"] = ours["median"] / peer["median"]
        summary.append(entry)
    return summary


def boot_summary(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Boot-time entries (`mode` "boot"): QEMU start to every device ready,
    in ms, ours only (virtio-drivers has no discovery of its own here)."""
    by_machine: dict[str, list[float]] = {}
    for row in rows:
        if row.get("mode") == "boot" and isinstance(row.get("wall_ms"), (int, float)):
            by_machine.setdefault(str(row["workload"]), []).append(float(row["wall_ms"]))  # type: ignore[arg-type]
    return [{"workload": name, "unit": "ms", "boot": spread(values)} for name, values in by_machine.items()]


def _cell(stack: object, unit: str) -> str:
    if not isinstance(stack, dict):
        return "n/a"
    digits = 1 if unit == "MB/s" else 0
    return f"{stack['median']:.{digits}f} [{stack['min']:.{digits}f}-{stack['max']:.{digits}f}]"


def table_lines(summary: Sequence[dict[str, object]]) -> list[str]:
    """The comparison as aligned text (also pasted into the README)."""
    headers = ["workload", "unit", "ours (poll)", "virtio-drivers", "ratio", "ours (irq)",
               "notify/req", "irq/req", "note"]
    table = []
    for entry in summary:
        unit = str(entry["unit"])
        peer, irq, poll = entry.get("peer"), entry.get("irq"), entry.get("poll") or entry.get("boot")
        notes = ["QEMU start to all devices ready (lower is better)"] if "boot" in entry else []
        if isinstance(peer, dict) and peer.get("depth_wanted") not in (None, peer.get("depth")):
            notes.append(f"peer depth {peer.get('depth')} (its queue has 16 entries)")
        if not isinstance(peer, dict):
            notes.append("no virtio-drivers figure")
        ratio = entry.get("ratio")
        table.append([
            str(entry["workload"]), unit, _cell(poll, unit), _cell(peer, unit),
            f"{ratio:.2f}" if isinstance(ratio, float) else "n/a",
            _cell(irq, unit),
            f"{irq['notify_per_req']:.3f}" if isinstance(irq, dict) and "notify_per_req" in irq else "-",
            f"{irq['irq_per_req']:.3f}" if isinstance(irq, dict) and "irq_per_req" in irq else "-",
            "; ".join(notes),
        ])
    widths = [max(len(h), *(len(r[i]) for r in table)) if table else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for cells in table:
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return lines


def markdown_table(summary: Sequence[dict[str, object]]) -> str:
    """The comparison as a Markdown table."""
    out = ["| workload | unit | ours (poll) median [min-max] | virtio-drivers | ratio | ours (irq) | notify/req (irq) | irq/req |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for entry in summary:
        unit = str(entry["unit"])
        irq = entry.get("irq")
        ratio = entry.get("ratio")
        out.append("| " + " | ".join([
            f"`{entry['workload']}`", unit, _cell(entry.get("poll") or entry.get("boot"), unit),
            _cell(entry.get("peer"), unit),
            f"{ratio:.2f}" if isinstance(ratio, float) else "n/a", _cell(irq, unit),
            f"{irq['notify_per_req']:.3f}" if isinstance(irq, dict) and "notify_per_req" in irq else "-",
            f"{irq['irq_per_req']:.3f}" if isinstance(irq, dict) and "irq_per_req" in irq else "-",
        ]) + " |")
    return "\n".join(out)


def write_svg(summary: Sequence[dict[str, object]], path: Path, title: str) -> None:
    """A horizontal bar per workload: ours / virtio-drivers (1.0 marked)."""
    entries = [(str(e["workload"]), float(e["ratio"])) for e in summary if isinstance(e.get("ratio"), float)]
    row_h, left, width, top = 28, 190, 420, 50
    height = top + row_h * max(len(entries), 1) + 40
    top_ratio = max([2.0, *(r * 1.1 for _, r in entries)])
    scale = width / top_ratio
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="20" font-size="14">{escape(title)}</text>',
        f'<text x="10" y="38" fill="#555">ours (polling) / virtio-drivers, median of runs; '
        f'&gt; 1 means ours is faster</text>',
    ]
    for i, (name, ratio) in enumerate(entries):
        y = top + i * row_h
        colour = "#3a7" if ratio >= 1 else "#c53"
        parts.append(f'<text x="{left - 8}" y="{y + 17}" text-anchor="end">{escape(name)}</text>')
        parts.append(f'<rect x="{left}" y="{y + 4}" width="{ratio * scale:.1f}" height="{row_h - 8}" fill="{colour}"/>')
        parts.append(f'<text x="{left + ratio * scale + 4:.1f}" y="{y + 17}">{ratio:.2f}</text>')
    one = left + scale
    bottom = top + row_h * max(len(entries), 1)
    parts.append(f'<line x1="{one:.1f}" y1="{top - 4}" x2="{one:.1f}" y2="{bottom + 4}" stroke="black" '
                 f'stroke-dasharray="4,3"/>')
    parts.append(f'<text x="{one:.1f}" y="{bottom + 18}" text-anchor="middle">1.0</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")
