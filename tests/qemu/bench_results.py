"""`build/bench/results.json`: the latest run of every benchmark section, merged.

Each `x.py bench` run measures the sections it was asked for; results.json
keeps, per section, what its latest run found (`"latest"`: section name ->
when, accelerator and why, host load, command, and that section's entries),
so that `./x.py bench --section ring` no longer drops the comparison an
earlier full run wrote. The flat keys the book page and the README read
(`comparison`, `markdown`, `ring`, `cost`, `net_host`, ...) are rebuilt from
`latest` on every write. Every entry with a ratio becomes a bar of the plot
(`plot_entries`), whichever section it came from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import bench_compare, bench_cost, bench_net_host

#: The lists a section may contribute, in results.json.
ENTRY_KEYS = ("comparison", "ring", "cost", "net_host", "iommu", "scale")
#: Sections in the order the tables show them.
ORDER = ("blk", "net", "console", "ring", "boot", "net-echo", "cost", "net-host", "iommu", "scale")


def load(path: Path) -> dict[str, object]:
    """The previous results.json, or an empty one (missing, unreadable, or
    written before sections were kept apart)."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return previous if isinstance(previous, dict) and isinstance(previous.get("latest"), dict) else {}


def missing_sections(results: Mapping[str, object], wanted: Sequence[str]) -> list[str]:
    """The sections of `wanted` that `results` holds no run of. The book's page and the README's
    table are written only when this is empty: rendered from a results.json that lacks sections
    (a fresh clone's first `--section X` run), they would lose the tables of every other section."""
    latest = results.get("latest")
    have = latest if isinstance(latest, Mapping) else {}
    return [name for name in wanted if name not in have]


def _sorted_sections(latest: Mapping[str, object]) -> list[str]:
    return sorted(latest, key=lambda s: (ORDER.index(s) if s in ORDER else len(ORDER), s))


def merge(previous: Mapping[str, object], run: Mapping[str, Mapping[str, object]],
          header: Mapping[str, object]) -> dict[str, object]:
    """results.json after a run: `previous`'s sections, replaced by the
    run's (`run`: section -> its entry), and the flat keys rebuilt."""
    latest: dict[str, object] = dict(previous.get("latest", {}) or {})  # type: ignore[call-overload]
    latest.update(run)
    sections = _sorted_sections(latest)
    latest = {name: latest[name] for name in sections}
    flat: dict[str, list[object]] = {key: [] for key in ENTRY_KEYS}
    for name in sections:
        entry = latest[name]
        for key in ENTRY_KEYS:
            flat[key] += list(entry.get(key, []) or [])  # type: ignore[union-attr]
    accels = sorted({str(latest[s].get("accel")) for s in sections})  # type: ignore[union-attr]
    return {
        **header,
        "accel": ", ".join(accels),
        "sections": sections,
        "sections_this_run": sorted(run, key=lambda s: sections.index(s)),
        "latest": latest,
        **flat,
        "markdown": bench_compare.markdown_table(flat["comparison"]) if flat["comparison"] else "",  # type: ignore[arg-type]
        "ring_markdown": "",  # filled by x.py (it owns the ring table)
        "iommu_markdown": "",  # filled by x.py (tests/qemu/bench_iommu.py)
        "cost_markdown": "\n".join(bench_cost.table_lines(flat["cost"])) if flat["cost"] else "",  # type: ignore[arg-type]
        "net_host_markdown": "\n".join(bench_net_host.table_lines(flat["net_host"])) if flat["net_host"] else "",  # type: ignore[arg-type]
    }


def plot_entries(results: Mapping[str, object]) -> list[dict[str, object]]:
    """One bar per entry with a ratio, from every section (above 1: ours is
    better: faster, fewer instructions, packed faster than split)."""
    bars: list[dict[str, object]] = []
    for entry in results.get("comparison", []) or []:  # type: ignore[union-attr]
        if isinstance(entry, dict) and isinstance(entry.get("ratio"), float):
            bars.append({"workload": str(entry["workload"]), "ratio": entry["ratio"]})
    for entry in results.get("ring", []) or []:  # type: ignore[union-attr]
        if isinstance(entry, dict) and isinstance(entry.get("ratio"), float):
            bars.append({"workload": f"packed/split {entry['workload']}.{entry['mode']}", "ratio": entry["ratio"]})
    bars += bench_cost.plot_entries(results.get("cost", []) or [])  # type: ignore[arg-type]
    bars += bench_net_host.plot_entries(results.get("net_host", []) or [])  # type: ignore[arg-type]
    return bars


def section_entry(record: Mapping[str, object], header: Mapping[str, object],
                  ring_table: Sequence[dict[str, object]] = ()) -> dict[str, object]:
    """What one section's record contributes to results.json."""
    rows = list(record.get("results", []) or [])  # type: ignore[call-overload]
    return {
        **header,
        "accel": record.get("accel", header.get("accel")),
        "comparison": bench_compare.summarize(rows) + bench_compare.boot_summary(rows),
        "ring": list(ring_table),
        "cost": list(record.get("cost", []) or []),  # type: ignore[call-overload]
        "net_host": list(record.get("net_host", []) or []),  # type: ignore[call-overload]
        "iommu": list(record.get("iommu", []) or []),  # type: ignore[call-overload]
        "scale": list(record.get("scale", []) or []),  # type: ignore[call-overload]
    }
