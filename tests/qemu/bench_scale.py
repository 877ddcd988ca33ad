"""`x.py bench --section scale`: block IOPS with 1, 2 and 4 vCPUs.

One boot per CPU count N of `mode=bench bench=scale` (kernel/src/block/bench.rs
`run_scale`) on q35 with `-smp N` and a null-co virtio-blk disk of
`num-queues=N` (modern), so every CPU has a request queue of its own whose
MSI-X vector targets it. The workload is `blk.randread.qd32` (4 KiB random
reads, 32 in flight per submitting CPU), interrupt-driven. Each boot's
`bench: scale.setup` line says how many CPUs were online, how many queues the
disk got and how many CPUs submitted. TCG runs each vCPU on a host thread;
this host has 2 cores, shared with QEMU's own I/O thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .harness import RunContext

#: The CPU counts measured, one boot each.
CPU_COUNTS = (1, 2, 4)
#: The workload measured.
WORKLOAD = "blk.randread.qd32"


def devices(cpus: int):
    """The QEMU arguments of the boot with `cpus` vCPUs (the last `-smp` wins)."""

    def make(ctx: RunContext) -> list[str]:
        return [
            "-smp", str(cpus),
            "-drive", "if=none,id=bench0,driver=null-co,size=1073741824",
            "-device", f"virtio-blk-pci,drive=bench0,serial=scratch-null0,disable-legacy=on,num-queues={cpus}",
        ]  # fmt: skip

    return make


def entry(cpus: int, rows: Sequence[Mapping[str, object]], setup: Mapping[str, str]) -> dict[str, object]:
    """One `"scale"` entry: the median, min and max IOPS of the boot's runs."""
    iops = sorted(float(r["iops"]) for r in rows  # type: ignore[arg-type]
                  if r.get("workload") == WORKLOAD and r.get("mode") == "irq" and isinstance(r.get("iops"), (int, float)))
    if not iops:
        return {"workload": WORKLOAD, "cpus": cpus, "median": None, "runs": 0}
    return {
        "workload": WORKLOAD, "cpus": cpus, "unit": "IOPS",
        "median": iops[(len(iops) - 1) // 2], "min": iops[0], "max": iops[-1], "runs": len(iops),
        "online_cpus": _int(setup.get("cpus")), "queues": _int(setup.get("queues")),
        "submitting_cpus": _int(setup.get("submitting_cpus")),
    }


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def with_speedup(entries: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """The entries with `speedup`: median over the 1-CPU median."""
    base = next((e["median"] for e in entries if e.get("cpus") == 1), None)
    out = []
    for e in entries:
        m = e.get("median")
        speedup = m / base if isinstance(m, float) and isinstance(base, float) and base else None
        out.append({**e, "speedup": speedup})
    return out


def table_lines(entries: Sequence[Mapping[str, object]]) -> list[str]:
    """A Markdown table of the entries."""

    def num(value: object, fmt: str) -> str:
        return fmt.format(value) if isinstance(value, (int, float)) else "-"

    lines = ["| workload | vCPUs | queues | submitting CPUs | IOPS (median) | min | max | vs 1 vCPU |",
             "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for e in entries:
        lines.append(f"| {e['workload']} | {e['cpus']} | {num(e.get('queues'), '{}')} | "
                     f"{num(e.get('submitting_cpus'), '{}')} | {num(e.get('median'), '{:.0f}')} | "
                     f"{num(e.get('min'), '{:.0f}')} | {num(e.get('max'), '{:.0f}')} | {num(e.get('speedup'), '{:.2f}x')} |")
    return lines
