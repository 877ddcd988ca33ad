"""`x.py bench --section scale`: block IOPS and network frames with 1, 2 and 4 vCPUs.

One boot per CPU count N of `mode=bench bench=scale` (kernel/src/block/bench.rs
`run_scale`) on q35 with `-smp N` and a null-co virtio-blk disk of
`num-queues=N` (modern), so every CPU has a request queue of its own whose
MSI-X vector targets it. The workload is `blk.randread.qd32` (4 KiB random
reads, 32 in flight per submitting CPU), interrupt-driven. Each boot's
`bench: scale.setup` line says how many CPUs were online, how many queues the
disk got and how many CPUs submitted. TCG runs each vCPU on a host thread;
this host has 2 cores, shared with QEMU's own I/O thread.

The network rows (`net.tx64`) boot `mode=bench bench=netscale`
(kernel/src/net/bench_scale.rs) with `-smp N` and a virtio-net card of N
queue pairs on a multiqueue tap in a network namespace
(`scenarios_net_mq.TapNetwork`, `net.pairs=N`): 64-byte frames sent as fast
as the transmit queue takes them, one pair per submitting CPU, in frames per
second. They are measured where the host can make such a network (root, `ip
netns`, /dev/net/tun) and left out, with a note, elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .harness import RunContext

#: The CPU counts measured, one boot each.
CPU_COUNTS = (1, 2, 4)
#: The block workload measured.
WORKLOAD = "blk.randread.qd32"
#: The network workload measured.
NET_WORKLOAD = "net.tx64"
#: Per workload: the mode of its rows, the key of its figure, its unit.
FIGURES = {WORKLOAD: ("irq", "iops", "IOPS"), NET_WORKLOAD: ("irq", "pps", "frames/s")}


def devices(cpus: int):
    """The QEMU arguments of the boot with `cpus` vCPUs (the last `-smp` wins)."""

    def make(ctx: RunContext) -> list[str]:
        return [
            "-smp", str(cpus),
            "-drive", "if=none,id=bench0,driver=null-co,size=1073741824",
            "-device", f"virtio-blk-pci,drive=bench0,serial=scratch-null0,disable-legacy=on,num-queues={cpus}",
        ]  # fmt: skip

    return make


def net_devices(cpus: int, network):
    """The QEMU arguments of the network boot with `cpus` vCPUs: a card of
    `cpus` queue pairs on `network` (a `scenarios_net_mq.TapNetwork` of as many queues)."""

    def make(ctx: RunContext) -> list[str]:
        return ["-smp", str(cpus), *network.device_args()]

    return make


def entry(cpus: int, rows: Sequence[Mapping[str, object]], setup: Mapping[str, str],
          workload: str = WORKLOAD) -> dict[str, object]:
    """One `"scale"` entry: the median, min and max of the boot's runs of `workload`."""
    mode, key, unit = FIGURES[workload]
    values = sorted(float(r[key]) for r in rows  # type: ignore[arg-type]
                    if r.get("workload") == workload and r.get("mode") == mode and isinstance(r.get(key), (int, float)))
    if not values:
        return {"workload": workload, "cpus": cpus, "median": None, "runs": 0}
    return {
        "workload": workload, "cpus": cpus, "unit": unit,
        "median": values[(len(values) - 1) // 2], "min": values[0], "max": values[-1], "runs": len(values),
        "online_cpus": _int(setup.get("cpus")), "queues": _int(setup.get("queues", setup.get("pairs"))),
        "submitting_cpus": _int(setup.get("submitting_cpus")),
    }


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def with_speedup(entries: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """The entries with `speedup`: median over the 1-CPU median of the same workload."""
    out = []
    for e in entries:
        base = next((b["median"] for b in entries
                     if b.get("cpus") == 1 and b.get("workload") == e.get("workload")), None)
        m = e.get("median")
        speedup = m / base if isinstance(m, float) and isinstance(base, float) and base else None
        out.append({**e, "speedup": speedup})
    return out


def table_lines(entries: Sequence[Mapping[str, object]]) -> list[str]:
    """A Markdown table of the entries."""

    def num(value: object, fmt: str) -> str:
        return fmt.format(value) if isinstance(value, (int, float)) else "-"

    lines = ["| workload | vCPUs | queues | submitting CPUs | median | unit | min | max | vs 1 vCPU |",
             "|---|--:|--:|--:|--:|---|--:|--:|--:|"]
    for e in entries:
        lines.append(f"| {e['workload']} | {e['cpus']} | {num(e.get('queues'), '{}')} | "
                     f"{num(e.get('submitting_cpus'), '{}')} | {num(e.get('median'), '{:.0f}')} | "
                     f"{e.get('unit', FIGURES.get(str(e['workload']), ('', '', '-'))[2])} | "
                     f"{num(e.get('min'), '{:.0f}')} | {num(e.get('max'), '{:.0f}')} | {num(e.get('speedup'), '{:.2f}x')} |")
    return lines
