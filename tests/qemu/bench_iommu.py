"""`x.py bench --section iommu`: the cost of DMA isolation, back to back.

Two boots of `mode=bench bench=iommu` (kernel/src/iommu/bench.rs) on q35 with a
null-co virtio-blk disk (modern, `iommu_platform=on`): one with QEMU's
`-device intel-iommu` (the kernel runs it in strict mode), one without an
IOMMU. The table puts each workload's rows side by side: IOPS (or ns per
share/unshare pair), the ratio strict/none, and the IOMMU work per request
(pages mapped, IOTLB invalidations) the guest counted.
"""

from __future__ import annotations

from collections.abc import Sequence

from .harness import RunContext

#: The two boots: (label, whether QEMU gets `-device intel-iommu`).
BOOTS = (("strict", True), ("none", False))


def devices(with_iommu: bool):
    """The QEMU devices of one boot."""

    def make(ctx: RunContext) -> list[str]:
        args = ["-device", "intel-iommu"] if with_iommu else []
        return args + [
            "-drive", "if=none,id=bench0,driver=null-co,size=1073741824",
            "-device", "virtio-blk-pci,drive=bench0,serial=scratch-null0,disable-legacy=on,iommu_platform=on",
        ]  # fmt: skip

    return make


def merit(row: dict[str, object]) -> tuple[str, float] | None:
    """(unit, value): IOPS for block rows, ns per pair for share/unshare rows."""
    for key, unit in (("iops", "IOPS"), ("ns_per_pair", "ns/pair")):
        value = row.get(key)
        if isinstance(value, (int, float)):
            return unit, float(value)
    return None


def side_by_side(strict: Sequence[dict[str, object]], none: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """One row per workload present in both boots (medians already picked)."""
    by_none = {str(r["name"]): r for r in none}
    table = []
    for s in strict:
        n = by_none.get(str(s["name"]))
        ms, mn = merit(s), (merit(n) if n else None)
        if n is None or ms is None or mn is None:
            continue
        table.append({
            "workload": s["name"], "unit": ms[0], "strict": ms[1], "none": mn[1],
            "ratio": ms[1] / mn[1] if mn[1] else None,
            "pages_mapped_per_req": s.get("pages_mapped_per_req"),
            "invalidations_per_req": s.get("invalidations_per_req", s.get("invalidations_per_pair")),
        })
    return table


def table_lines(table: Sequence[dict[str, object]]) -> list[str]:
    """A Markdown table of `side_by_side`."""

    def num(value: object, fmt: str) -> str:
        return fmt.format(value) if isinstance(value, (int, float)) else "-"

    lines = ["| workload | unit | strict IOMMU | no IOMMU | strict/none | pages mapped/req | invalidations/req |",
             "|---|---|--:|--:|--:|--:|--:|"]
    for r in table:
        lines.append(f"| {r['workload']} | {r['unit']} | {num(r['strict'], '{:.0f}')} | {num(r['none'], '{:.0f}')} | "
                     f"{num(r['ratio'], '{:.2f}')} | {num(r['pages_mapped_per_req'], '{:.2f}')} | "
                     f"{num(r['invalidations_per_req'], '{:.2f}')} |")
    return lines
