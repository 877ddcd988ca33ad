"""Short smoke runs of `x.py bench --section cost` and `--section net-host`.

They boot what the sections boot, with tiny amounts of work, and check that
every figure the section reports was produced and parses (instruction counts
for both stacks, an echo that came back intact, HTTP answers, ping replies).
They never judge a figure: benchmarks are reported, not asserted
(tests/qemu/bench_cost.py, tests/qemu/bench_net_host.py).
"""

from __future__ import annotations

from . import bench_compare, bench_cost, bench_net_host
from . import machine as qm
from .harness import Outcome, RunContext, Scenario


def _blk_icount_devices(ctx: RunContext) -> list[str]:
    return ["-drive", "if=none,id=bench0,driver=null-co,size=1073741824",
            "-device", "virtio-blk-pci,drive=bench0,serial=scratch-null0,disable-legacy=on",
            *bench_cost.ICOUNT_ARGS]  # fmt: skip


def _net_icount_devices(ctx: RunContext) -> list[str]:
    return ["-netdev", "hubport,id=h0,hubid=0", "-netdev", "hubport,id=h1,hubid=0",
            "-device", "virtio-net-pci,netdev=h0,mac=52:54:00:00:00:21,disable-legacy=on,romfile=",
            "-device", "virtio-net-pci,netdev=h1,mac=52:54:00:00:00:22,disable-legacy=on,romfile=",
            *bench_cost.ICOUNT_ARGS]  # fmt: skip


def check_cost(workloads: tuple[str, ...]):
    def check(outcome: Outcome) -> list[str]:
        _, rows, errors, _ = bench_compare.parse_bench_lines(outcome.log_text)
        entries = {str(e["workload"]): e for e in bench_cost.cost_entries(rows)}
        problems = list(errors)
        for workload in workloads:
            entry = entries.get(workload)
            if entry is None:
                problems.append(f"no cost entry for {workload}")
                continue
            for stack in ("ours", "peer"):
                value = entry.get(stack)
                if not isinstance(value, float) or value <= 0:
                    problems.append(f"{workload}: no instruction count for {stack} ({value!r})")
        return problems

    return check


def check_net_host(out: dict[str, object], keys: tuple[str, ...]):
    def check(outcome: Outcome) -> list[str]:
        return [f"net-host smoke: no {key}" for key in keys if not out.get(key)]

    return check


_session: dict[str, object] = {}

SCENARIOS: list[Scenario] = [
    Scenario(
        name="bench-cost-blk-smoke-tcg", machine="q35", accel="tcg", devices=_blk_icount_devices,
        append="mode=bench bench=compare bench.seconds=0.002 bench.repeat=1",
        expect_status=qm.EXIT_SELFTEST_PASS, expect_in_order=[r"^bench: blk\.peer\.setup ", r"^bench: done$"],
        timeout_s=90.0, check=check_cost(bench_cost.BLK_WORKLOADS),
    ),
    Scenario(
        name="bench-cost-net-smoke-tcg", machine="pc", accel="tcg", devices=_net_icount_devices,
        append="mode=bench bench=net bench.seconds=0.002 bench.repeat=1",
        expect_status=qm.EXIT_SELFTEST_PASS, expect_in_order=[r"^bench: net\.pps\.peer ", r"^bench: done$"],
        timeout_s=60.0, check=check_cost((f"{bench_cost.NET_WORKLOAD}.64b",)),
    ),
    bench_net_host.scenario(_session, "bench-net-host-smoke-tcg", "tcg", rounds=1, echo_bytes=256 * 1024,
                            http_seconds=0.5, ping_commands=1),
]
SCENARIOS[-1].check = check_net_host(_session, ("echo_mb_per_s_runs", "http_requests", "ping_ms_runs"))
