"""Our drivers against the virtio-drivers crate: the comparison `x.py bench` prints.

Three kernel sections alternate our stack and virtio-drivers in one boot,
on the same device, `bench.repeat` rounds each (the peer gets the device
after our driver reset it, and gives it back the same way):

- `bench=compare` (blk): every block workload on our stack (lines
  `bench: <workload>.poll ...` and `.irq`, field `stack=ours`), then on
  virtio-drivers (`bench: <workload>.peer ... stack=peer`);
- `bench=net`: `bench: net.pps.poll` (ours, polled) then `net.pps.peer`;
- `bench=console`: `bench: console.write` (ours: no wait-mode suffix, it
  waits for transmit room by interrupt) then `console.write.peer`.

This module reduces those rows to min / median / max per workload and
stack, prints the table (workload, ours, virtio-drivers, ratio), and draws
the ratios as an SVG with the standard library only.

The ratio is ours / virtio-drivers on the workload's figure of merit:
IOPS (MB/s for the 128 KiB block workloads), received packets per second
for net (a frame counts once it has arrived), MB/s for console. Above 1
means our stack is faster. "ours" is our polling mode where there is one,
because virtio-drivers' block and net drivers only poll; our
interrupt-driven block figures are shown beside it. A row without a wait
mode (console) is ours' only figure for its workload and is compared when
the same workload has a peer row.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

#: What starts every line the kernel's `mode=bench` prints (kernel/src/bench.rs).
LINE_PREFIX = "bench: "


def parse_bench_lines(log: str) -> tuple[dict[str, dict[str, str]], list[dict[str, object]], list[str], bool]:
    """(setup lines by name, result rows, errors, done) from a bench boot's serial log."""
    setups: dict[str, dict[str, str]] = {}
    rows: list[dict[str, object]] = []
    errors: list[str] = []
    done = False
    for line in log.splitlines():
        if not line.startswith(LINE_PREFIX):
            continue
        body = line[len(LINE_PREFIX):].strip()
        if body == "done":
            done = True
            continue
        if body.startswith("error "):
            errors.append(body[len("error "):])
            continue
        name, _, rest = body.partition(" ")
        fields = dict(word.split("=", 1) for word in rest.split() if "=" in word)
        if name.endswith(".setup"):
            setups[name] = fields
            continue
        workload, mode = name, ""
        if name.rsplit(".", 1)[-1] in ("irq", "poll", "peer"):
            workload, mode = name.rsplit(".", 1)
        driver = "virtio-drivers" if fields.get("stack") == "peer" else "ours"
        row: dict[str, object] = {"name": name, "workload": workload, "mode": mode, "driver": driver}
        for key, value in fields.items():
            try:
                row[key] = float(value) if any(c in value for c in ".e") else int(value)
            except ValueError:
                row[key] = value
        rows.append(row)
    return setups, rows, errors, done


#: Our wait modes, ours without one, and the peer, in the order the table shows them.
STACKS = ("poll", "irq", "ours", "peer")


def merit(row: dict[str, object]) -> tuple[str, float] | None:
    """(unit, value) a row is judged by: received packets per second (net),
    MB/s (console, and block requests of 64 KiB and more), else IOPS."""
    if isinstance(row.get("rx_pps"), (int, float)):
        return "pps", float(row["rx_pps"])  # type: ignore[arg-type]
    iops = row.get("iops")
    size = row.get("request_bytes")
    if not isinstance(iops, (int, float)):
        if isinstance(row.get("mb_per_s"), (int, float)):
            return "MB/s", float(row["mb_per_s"])  # type: ignore[arg-type]
        return None
    if isinstance(size, int) and size >= 64 * 1024:
        return "MB/s", float(iops) * size / 1e6
    return "IOPS", float(iops)


def stack_of(row: dict[str, object], peered: set[str]) -> str:
    """Which column a row belongs to: its wait mode (`poll`, `irq`, `peer`),
    or `ours` for our row without one whose workload has a peer row."""
    mode = str(row.get("mode", ""))
    if mode in STACKS:
        return mode
    if mode == "" and row.get("driver", "ours") == "ours" and str(row.get("workload")) in peered:
        return "ours"
    return ""


#: Notifications per packet or chunk, by the key each section prints.
NOTIFY_KEYS = ("tx_notifications_per_pkt", "notifications_per_chunk")


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "runs": len(values)}


def summarize(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """One entry per workload: unit, and per stack the spread of the figure
    of merit plus (ours) notifications and interrupts per request."""
    by_workload: dict[str, dict[str, object]] = {}
    peered = {str(row.get("workload")) for row in rows if row.get("mode") == "peer"}
    for row in rows:
        mode = stack_of(row, peered)
        if not mode:
            continue
        judged = merit(row)
        if judged is None:
            continue
        unit, value = judged
        entry = by_workload.setdefault(str(row["workload"]), {"workload": row["workload"], "unit": unit})
        stack = entry.setdefault(mode, {"values": [], "notify": [], "irq": [], "notify_out": [],
                                        "depth": row.get("depth")})
        stack["values"].append(value)
        for key, out in (("notifications_per_req", "notify"), ("interrupts_per_req", "irq"),
                         *((k, "notify_out") for k in NOTIFY_KEYS)):
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
            sent = stack.pop("notify_out")
            if sent:
                stack["notify_per_unit"] = statistics.median(sent)
        ours, peer = entry.get("poll") or entry.get("ours"), entry.get("peer")
        if isinstance(ours, dict) and isinstance(peer, dict) and peer["median"] > 0:
            entry["ratio"] = ours["median"] / peer["median"]
        summary.append(entry)
    return summary


#: Boot-time entries: (row `mode`, the row's figure, suffix of the entry's
#: name, what it measures).
BOOT_FIGURES = [
    ("boot", "wall_ms", "", "QEMU start to all devices ready (lower is better)"),
    ("boot-ready", "first_line_to_ready_ms", "",
     "first serial line to kernel: ready, normal boot (lower is better)"),
    ("boot-ready", "first_line_to_ready_cpu_ms", ".cpu",
     "QEMU's CPU time over the same span (lower is better; barely moved by other load on the host)"),
]


def boot_summary(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Boot-time entries, in ms, ours only (virtio-drivers has no discovery of
    its own here): `mode` "boot", QEMU start to every device ready (bench
    mode); `mode` "boot-ready", a normal boot's first serial line to
    `kernel: ready`, in wall time and in QEMU's CPU time."""
    by_workload: dict[str, tuple[str, list[float]]] = {}
    for row in rows:
        for mode, field, suffix, note in BOOT_FIGURES:
            if row.get("mode") == mode and isinstance(row.get(field), (int, float)):
                entry = by_workload.setdefault(f"{row['workload']}{suffix}", (note, []))
                entry[1].append(float(row[field]))  # type: ignore[arg-type]
    return [{"workload": name, "unit": "ms", "boot": spread(values), "note": note}
            for name, (note, values) in by_workload.items()]


def _cell(stack: object, unit: str) -> str:
    if not isinstance(stack, dict):
        return "n/a"
    # MB/s with one decimal, or three below 10 MB/s (the console under
    # nested KVM moves a few tens of kB/s); counts and ms as integers (ms
    # below 100 with one decimal).
    digits = (1 if stack["median"] >= 10 else 3) if unit == "MB/s" else 0
    if unit == "ms" and stack["median"] < 100:
        digits = 1  # a boot to `kernel: ready` takes tens of ms
    return f"{stack['median']:.{digits}f} [{stack['min']:.{digits}f}-{stack['max']:.{digits}f}]"


def table_lines(summary: Sequence[dict[str, object]]) -> list[str]:
    """The comparison as aligned text (the README shows its ratio column)."""
    headers = ["workload", "unit", "ours (poll)", "virtio-drivers", "ratio", "ours (irq)",
               "notify/req", "irq/req", "note"]
    table = []
    for entry in summary:
        unit = str(entry["unit"])
        peer, irq = entry.get("peer"), entry.get("irq")
        poll = entry.get("poll") or entry.get("ours") or entry.get("boot")
        notes = [str(entry["note"])] if "boot" in entry and "note" in entry else []
        if "poll" not in entry and isinstance(entry.get("ours"), dict):
            notes.append("ours has no polling mode: it waits for room by interrupt")
        notes += notification_notes(entry)
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


def notification_notes(entry: dict[str, object]) -> list[str]:
    """Notifications per packet (net, transmit) or per chunk (console) of
    each stack, where the rows carry them."""
    ours = entry.get("poll") or entry.get("ours")
    peer = entry.get("peer")
    if not isinstance(ours, dict) or not isinstance(peer, dict):
        return []
    if "notify_per_unit" not in ours and "notify_per_unit" not in peer:
        return []
    unit = "pkt" if entry.get("unit") == "pps" else "chunk"
    cells = [f"{name} {stack['notify_per_unit']:.3f}" for name, stack in (("ours", ours), ("peer", peer))
             if "notify_per_unit" in stack]
    return [f"notify/{unit}: " + ", ".join(cells)]


def markdown_table(summary: Sequence[dict[str, object]]) -> str:
    """The comparison as a Markdown table."""
    out = ["| workload | unit | ours (poll) median [min-max] | virtio-drivers | ratio | ours (irq) | notify/req (irq) | irq/req |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for entry in summary:
        unit = str(entry["unit"])
        irq = entry.get("irq")
        ratio = entry.get("ratio")
        out.append("| " + " | ".join([
            f"`{entry['workload']}`", unit,
            _cell(entry.get("poll") or entry.get("ours") or entry.get("boot"), unit),
            _cell(entry.get("peer"), unit),
            f"{ratio:.2f}" if isinstance(ratio, float) else "n/a", _cell(irq, unit),
            f"{irq['notify_per_req']:.3f}" if isinstance(irq, dict) and "notify_per_req" in irq else "-",
            f"{irq['irq_per_req']:.3f}" if isinstance(irq, dict) and "irq_per_req" in irq else "-",
        ]) + " |")
    return "\n".join(out)


def write_svg(summary: Sequence[dict[str, object]], path: Path, title: str) -> None:
    """A horizontal bar per entry with a `ratio` (1.0 marked); above 1: ours is better."""
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
        f'<text x="10" y="38" fill="#555">ours / the other side (virtio-drivers, Linux; peer / ours for '
        f'instruction counts), medians; &gt; 1 means ours is better</text>',
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


# --- console: the host's copy of the stream both stacks wrote -------------------


def fnv1a64(data: bytes, value: int = 0xCBF29CE484222325) -> int:
    """The guest's checksum (kernel/src/bench.rs `fnv1a`)."""
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


def console_segments(rows: Sequence[dict[str, object]]) -> list[tuple[str, int]]:
    """(stack, bytes) of every console run, in the order the guest wrote them."""
    return [(str(r.get("stack")), int(r["bytes"]))  # type: ignore[call-overload]
            for r in rows if r["name"] in ("console.write", "console.write.peer")]


def check_console_file(data: bytes, rows: Sequence[dict[str, object]]) -> list[str]:
    """What is wrong with the host's copy of the console stream (empty: all
    good). The guest wrote byte `i` as `i % 251`, our stack and the peer in
    turn (`console_segments`); the file must hold exactly those bytes, and
    match the guest's `console.total` (size, per-stack counts and FNV-1a)."""
    total = next((r for r in rows if r["name"] == "console.total"), None)
    segments = console_segments(rows)
    if total is None or not segments:
        return ["the guest printed no console.write / console.total lines"]
    problems = []
    per_stack = {stack: sum(n for s, n in segments if s == stack) for stack in ("ours", "peer")}
    for stack, key in (("ours", "ours_bytes"), ("peer", "peer_bytes")):
        if total.get(key) != per_stack[stack]:
            problems.append(f"the guest's total says {key}={total.get(key)}, its {stack} runs add up to "
                            f"{per_stack[stack]}")
    expected_len = sum(n for _, n in segments)
    if total.get("bytes") != expected_len:
        problems.append(f"the guest's total says bytes={total.get('bytes')}, its runs add up to {expected_len}")
    host_sum = f"0x{fnv1a64(data):016x}"
    if len(data) != expected_len or host_sum != str(total.get("fnv1a")):
        pattern = bytes(range(251)) * (len(data) // 251 + 1)
        first_bad = next((i for i, (a, b) in enumerate(zip(data, pattern)) if a != b), min(len(data), expected_len))
        offset, where = 0, "past the end of the stream"
        for stack, length in segments:
            if offset <= first_bad < offset + length:
                where = f"in a run of {stack} (bytes {offset}..{offset + length})"
                break
            offset += length
        problems.append(f"the host file holds {len(data)} bytes, FNV-1a {host_sum}; the guest wrote "
                        f"{expected_len} bytes, FNV-1a {total.get('fnv1a')}; first wrong or missing byte at "
                        f"{first_bad}, {where}")
    return problems
